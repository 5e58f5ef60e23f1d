//! orderhub's behaviour: the actors that store, confirm, relay and settle orders.
//!
//! # Layout
//!
//! - [`protocol`]: the wire contract, once: subjects, request validation, replies, events, errors.
//! - [`store`]: the three databases (primary, read node, auxiliary) and every read.
//! - [`writer`]: group commit: one transaction for the changes of many orders.
//! - [`supervisor`]: OrderSupervisor and [`Orders`], which finds or spawns an order's actor.
//! - [`order`]: OrderActor, the only writer of its order's state machine.
//! - [`replication`]: ReplicationActor, which releases events once the read node has their data.
//! - [`relay`]: OutboxRelay, which publishes released events to JetStream with `Nats-Msg-Id`.
//! - [`deadline`]: DeadlineActor, which closes orders whose partner missed `result_timeout`.
//! - [`aux`]: AuxSubscriber, a built-in auxiliary system on its own durable consumer.
//!
//! A submit travels endpoint → [`Orders::submit`] → OrderActor → Writer (commit with the outbox
//! row) → ReplicationActor (read node confirms) → OutboxRelay (publish) → OrderActor (`dispatched`).

pub mod aux;
pub mod deadline;
pub mod order;
pub mod protocol;
pub mod relay;
pub mod replication;
pub mod store;
pub mod supervisor;
pub mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream;
use ractor::{Actor, ActorRef};

pub use supervisor::Orders;

use crate::protocol::{ReplicaStatus, Subjects};
use crate::store::Db;
use crate::writer::WriterPool;

/// Timings of the actors; the defaults suit production and tests alike.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// A settled order's actor stops after this long without messages.
    pub settle_linger: Duration,
    /// Any order's actor stops after this long without messages (it reloads on demand).
    pub idle_stop: Duration,
    /// How long an endpoint waits for an order actor's answer.
    pub call_timeout: Duration,
    /// How long an order actor waits for its writer's commit.
    pub write_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            settle_linger: Duration::from_millis(500),
            idle_stop: Duration::from_secs(60),
            call_timeout: Duration::from_secs(8),
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// Counters the status endpoint reports.
#[derive(Debug, Default)]
pub struct Metrics {
    actors_live: AtomicU64,
}

impl Metrics {
    fn actor_started(&self) {
        self.actors_live.fetch_add(1, Ordering::Relaxed);
    }
    fn actor_stopped(&self) {
        self.actors_live.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn actors_live(&self) -> u64 {
        self.actors_live.load(Ordering::Relaxed)
    }
}

/// What every order actor shares.
pub struct Context {
    pub db: Db,
    pub subjects: Subjects,
    /// Configured partners and their `result_timeout`.
    pub partners: HashMap<String, Duration>,
    pub writers: WriterPool,
    pub metrics: Metrics,
    pub tuning: Tuning,
}

/// Used for orders of a partner no longer in the configuration.
const DEFAULT_RESULT_TIMEOUT: Duration = Duration::from_secs(30);

impl Context {
    pub fn result_timeout(&self, partner_id: &str) -> Duration {
        self.partners
            .get(partner_id)
            .copied()
            .unwrap_or(DEFAULT_RESULT_TIMEOUT)
    }
}

/// What the hub's actors need to start.
pub struct HubConfig {
    pub db: Db,
    pub subjects: Subjects,
    pub partners: HashMap<String, Duration>,
    /// Built-in auxiliary systems and their durable consumers.
    pub aux: Vec<(String, jetstream::consumer::PullConsumer)>,
    pub jetstream: jetstream::Context,
    /// Group-commit writers (SQLite: 1).
    pub writers: usize,
    pub tuning: Tuning,
}

/// The running actors.
pub struct Hub {
    pub ctx: Arc<Context>,
    pub orders: Orders,
    replication: ActorRef<replication::ReplicationMsg>,
    supervisor: ActorRef<supervisor::SupervisorMsg>,
    others: Vec<ractor::ActorCell>,
}

/// Why the hub's actors could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("actor `{0}` failed to start: {1}")]
    Spawn(&'static str, #[source] ractor::SpawnErr),
}

impl Hub {
    pub async fn start(config: HubConfig) -> Result<Self, StartError> {
        let orders_slot = Arc::new(OnceLock::new());
        let (relay, _) = Actor::spawn(
            None,
            relay::OutboxRelay,
            relay::RelayArgs {
                jetstream: config.jetstream.clone(),
                orders: orders_slot.clone(),
                stored_marker: format!("{}.events.stored.", config.subjects.prefix()),
            },
        )
        .await
        .map_err(|e| StartError::Spawn("relay", e))?;
        let (replication, _) = Actor::spawn(
            None,
            replication::ReplicationActor,
            replication::ReplicationArgs {
                db: config.db.clone(),
                relay: relay.clone(),
            },
        )
        .await
        .map_err(|e| StartError::Spawn("replication", e))?;
        let mut writers = Vec::new();
        for _ in 0..config.writers.max(1) {
            let (w, _) = Actor::spawn(
                None,
                writer::Writer,
                writer::WriterArgs {
                    primary: config.db.primary.clone(),
                    replication: replication.clone(),
                },
            )
            .await
            .map_err(|e| StartError::Spawn("writer", e))?;
            writers.push(w);
        }
        let ctx = Arc::new(Context {
            db: config.db.clone(),
            subjects: config.subjects,
            partners: config.partners,
            writers: WriterPool::new(writers.clone()),
            metrics: Metrics::default(),
            tuning: config.tuning,
        });
        let (supervisor, _) = Actor::spawn(None, supervisor::OrderSupervisor, ())
            .await
            .map_err(|e| StartError::Spawn("supervisor", e))?;
        let orders = Orders::new(ctx.clone(), supervisor.get_cell());
        let _ = orders_slot.set(orders.clone());
        let (deadline, _) = Actor::spawn(
            None,
            deadline::DeadlineActor,
            deadline::DeadlineArgs {
                db: config.db.clone(),
                orders: orders.clone(),
            },
        )
        .await
        .map_err(|e| StartError::Spawn("deadline", e))?;
        let mut others = vec![deadline.get_cell()];
        for (system, consumer) in config.aux {
            let (a, _) = Actor::spawn(
                None,
                aux::AuxSubscriber,
                aux::AuxArgs {
                    system,
                    consumer,
                    db: config.db.clone(),
                },
            )
            .await
            .map_err(|e| StartError::Spawn("aux", e))?;
            others.push(a.get_cell());
        }
        others.push(relay.get_cell());
        others.extend(writers.iter().map(|w| w.get_cell()));
        Ok(Self {
            ctx,
            orders,
            replication,
            supervisor,
            others,
        })
    }

    /// The replication actor's view of the read node.
    pub async fn replica_status(&self) -> Option<ReplicaStatus> {
        match self
            .replication
            .call(
                replication::ReplicationMsg::Status,
                Some(Duration::from_secs(2)),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(s)) => Some(s),
            _ => None,
        }
    }

    /// Stops every actor: orders first, then the pipeline. Unpublished events stay in the outbox
    /// for the next start.
    pub async fn stop(self) {
        self.supervisor
            .stop_children_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        self.supervisor.stop(None);
        self.replication.stop(None);
        for cell in self.others {
            cell.stop(None);
        }
    }
}
