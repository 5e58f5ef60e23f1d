//! ReplicationActor: releases committed events only once the read node can serve their data.
//!
//! On Postgres it fences each group of committed events with the primary's WAL position
//! (`pg_current_wal_lsn()`, taken after their commits) and releases the group once the replica's
//! `pg_last_wal_replay_lsn()` has passed it: one probe confirms every event committed before the
//! fence. A probe runs as its own task and reports back, so `status` is answered at once even
//! while a node hangs. The cadence adapts ([`fences::Fences::next_probe`]). On SQLite the read
//! node is a read-only pool on the same file, so a commit is readable at once and events pass
//! straight through.
//!
//! Callers that must not be answered before the replica has their commit (`ack_after =
//! "replica"`) ride along with their commit's events and are answered when its fence is passed,
//! or told `unavailable` once their time is up. Every other wait for the replica joins the same
//! fences through [`await_replay`]: a repeated answer, an auxiliary write, the hub's start.
//!
//! A periodic sweep hands over outbox rows nobody is carrying (left by a crash, a NATS outage, a
//! primary outage, a restarted actor or a peer instance), oldest first; JetStream's `Nats-Msg-Id`
//! dedupe makes a second publish harmless. A (re)started replication actor probes at once and
//! sweeps every unpublished row, young or old: it starts with nothing in memory.

mod fences;

use std::time::{Duration, Instant};

use entities::outbox;
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::link::Link;
use crate::outbox::{Committed, PendingEvent, Released, Waiter};
use crate::protocol::ReplicaStatus;
use crate::store::Db;
use crate::wal::{PrimaryPosition, Replay, primary_position, replay_position};
use fences::{Batch, Fences, NextProbe, ProbeReport};

/// A node that takes longer than this to answer a probe counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const SWEEP_EVERY: Duration = Duration::from_secs(3);
const SWEEP_TIMEOUT: Duration = Duration::from_secs(2);
/// Rows younger than this are still travelling the normal path.
const SWEEP_GRACE: chrono::Duration = chrono::Duration::seconds(10);
/// Most rows one sweep reads.
const SWEEP_ROWS: usize = 5_000;

pub enum ReplicationMsg {
    /// Events whose transactions have committed on the primary, and the callers waiting for the
    /// replica to confirm those commits.
    Committed(Committed),
    Probe,
    /// A probe task's findings; `batch` is what it fenced (or tried to): the primary's position
    /// and the node it reached, and each read node's replay position.
    Probed {
        batch: Batch,
        primary: Result<PrimaryPosition, String>,
        nodes: Vec<Result<Replay, String>>,
    },
    /// Read the outbox for rows nobody carries; `all` takes young rows too.
    Sweep {
        all: bool,
    },
    /// Unpublished outbox rows the sweep task read.
    Swept {
        rows: Vec<outbox::Model>,
        all: bool,
    },
    Status(RpcReplyPort<ReplicaStatus>),
}

impl From<Committed> for ReplicationMsg {
    fn from(c: Committed) -> Self {
        Self::Committed(c)
    }
}

impl TryFrom<ReplicationMsg> for Committed {
    type Error = ();
    fn try_from(m: ReplicationMsg) -> Result<Self, ()> {
        match m {
            ReplicationMsg::Committed(c) => Ok(c),
            _ => Err(()),
        }
    }
}

/// Waits until the read nodes have replayed everything committed on the primary before this
/// call: the caller joins the replication actor's next fence, as the callers of a commit do, so
/// every wait for the replica goes through one probe loop. `false` when the fence is not passed
/// by `until`, or the replication actor is not running. Without a separate replica (SQLite, or
/// reads from the primary) it returns `true` at once.
pub async fn await_replay(replication: &Link<Committed>, until: Instant) -> bool {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let waiter = Waiter {
        until,
        answer: Box::new(move |replayed| {
            let _ = tx.send(replayed);
        }),
    };
    let joined = replication.cast(Committed {
        events: Vec::new(),
        waiters: vec![waiter],
    });
    joined.is_ok() && rx.await.unwrap_or(false)
}

pub struct ReplicationActor;

pub struct ReplicationArgs {
    pub db: Db,
    /// Where released events go: the relay.
    pub released: Link<Released>,
}

pub struct ReplicationState {
    db: Db,
    released: Link<Released>,
    fences: Fences,
    /// A probe task is running.
    probing: bool,
    /// The next probe's timer.
    timer: Option<JoinHandle<Result<(), ractor::MessagingErr<ReplicationMsg>>>>,
    sweeping: bool,
}

impl Actor for ReplicationActor {
    type Msg = ReplicationMsg;
    type State = ReplicationState;
    type Arguments = ReplicationArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ReplicationArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Whatever an earlier run (or incarnation) left unpublished goes out now; and the replica
        // is looked at at once, so `status` knows it before the first event.
        myself.cast(ReplicationMsg::Sweep { all: true })?;
        myself.send_after(SWEEP_EVERY, || ReplicationMsg::Sweep { all: false });
        if args.db.separate_replica {
            myself.cast(ReplicationMsg::Probe)?;
        }
        Ok(ReplicationState {
            fences: Fences::new(args.db.separate_replica),
            db: args.db,
            released: args.released,
            probing: false,
            timer: None,
            sweeping: false,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut ReplicationState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.timer.take() {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: ReplicationMsg,
        state: &mut ReplicationState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ReplicationMsg::Committed(Committed { events, waiters }) => {
                let now = state.fences.accept(events, waiters);
                state.release(now);
                state.kick(&myself);
            }
            ReplicationMsg::Probe => {
                state.timer = None;
                state.fences.expire(Instant::now());
                state.start_probe(&myself);
            }
            ReplicationMsg::Probed {
                batch,
                primary,
                nodes,
            } => {
                state.probing = false;
                if let Ok(p) = &primary
                    && let Some(node) = &p.node
                {
                    state.db.primary_watch.saw(node);
                }
                let primary = primary.map(|p| p.lsn);
                // The read set first: the fence is the lowest replay of the nodes that stay in it.
                let replica = state.db.reads.update(
                    primary.as_ref().ok().copied(),
                    &nodes,
                    state.fences.confirmed(),
                );
                let out = state.fences.apply(batch, ProbeReport { primary, replica });
                state.fences.expire(Instant::now());
                let progress = !out.is_empty();
                state.release(out);
                state.schedule(&myself, progress);
            }
            ReplicationMsg::Sweep { all } => {
                state.start_sweep(&myself, all);
                if !all {
                    myself.send_after(SWEEP_EVERY, || ReplicationMsg::Sweep { all: false });
                }
            }
            ReplicationMsg::Swept { rows, all } => {
                state.sweeping = false;
                state.swept(rows, all);
                state.kick(&myself);
            }
            ReplicationMsg::Status(reply) => {
                let _ = reply.send(state.fences.status());
            }
        }
        Ok(())
    }
}

impl ReplicationState {
    /// New events wait: probe now unless a probe is running (its report schedules the next one).
    fn kick(&mut self, myself: &ActorRef<ReplicationMsg>) {
        if !self.fences.fresh() || self.probing {
            return;
        }
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        self.start_probe(myself);
    }

    /// Takes the unfenced events and probes the primary and every read node in a task of its own.
    fn start_probe(&mut self, myself: &ActorRef<ReplicationMsg>) {
        if self.probing || !self.db.separate_replica {
            return;
        }
        self.probing = true;
        let batch = self.fences.take_batch();
        let primary = self.db.primary.clone();
        let reads = self.db.reads.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            // Fence and replay positions are independent reads: the fence is taken after every
            // commit of the batch, and each replay is compared with it whichever answers first.
            let replays = futures::future::join_all(
                reads
                    .nodes()
                    .iter()
                    .map(|node| within(replay_position(&node.conn))),
            );
            let (primary, nodes) = tokio::join!(within(primary_position(&primary)), replays);
            let _ = myself.cast(ReplicationMsg::Probed {
                batch,
                primary,
                nodes,
            });
        });
    }

    /// Sets the timer of the next probe.
    fn schedule(&mut self, myself: &ActorRef<ReplicationMsg>, progress: bool) {
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        match self.fences.next_probe(progress) {
            NextProbe::Now => self.start_probe(myself),
            NextProbe::After(next) => {
                self.timer = Some(myself.send_after(next, || ReplicationMsg::Probe));
            }
        }
    }

    fn release(&mut self, events: Vec<PendingEvent>) {
        if events.is_empty() {
            return;
        }
        if let Err(e) = self.released.cast(Released(events)) {
            tracing::warn!(error = %e, "events wait for the sweep");
        }
    }

    /// Reads unpublished outbox rows in a task of its own (the primary may be slow or down).
    fn start_sweep(&mut self, myself: &ActorRef<ReplicationMsg>, all: bool) {
        let room = self.fences.room().min(SWEEP_ROWS) as u64;
        if self.sweeping || room == 0 {
            return;
        }
        self.sweeping = true;
        let db = self.db.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            let rows = match tokio::time::timeout(SWEEP_TIMEOUT, db.unpublished(room)).await {
                Ok(Ok(rows)) => rows,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "sweep could not read the outbox");
                    Vec::new()
                }
                Err(_) => {
                    tracing::warn!("sweep: the primary did not answer in time");
                    Vec::new()
                }
            };
            let _ = myself.cast(ReplicationMsg::Swept { rows, all });
        });
    }

    fn swept(&mut self, rows: Vec<outbox::Model>, all: bool) {
        let cutoff = chrono::Utc::now() - SWEEP_GRACE;
        let stale: Vec<PendingEvent> = rows
            .iter()
            .filter(|r| all || r.created_at <= cutoff)
            .filter(|r| !self.fences.holds(&r.id))
            .filter_map(|r| {
                let event = PendingEvent::from_row(r);
                if event.is_none() {
                    tracing::error!(event_id = %r.id, "outbox row is not an orderhub event; left in place");
                }
                event
            })
            .collect();
        if !stale.is_empty() {
            tracing::info!(
                events = stale.len(),
                "sweep: republishing unpublished outbox rows"
            );
        }
        let now = self.fences.accept(stale, Vec::new());
        self.release(now);
    }
}

/// A probe query, or an error once [`PROBE_TIMEOUT`] has passed.
async fn within<T>(query: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(PROBE_TIMEOUT, query)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} ms", PROBE_TIMEOUT.as_millis())))
}
