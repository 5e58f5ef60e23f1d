//! [`Hub`]: the running actors, and the one surface the NATS endpoints call. Each method takes a
//! validated request and returns the reply or an [`ApiError`]; the endpoints only decode, call and
//! encode.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use ractor::{Actor, ActorRef};
use tracing::Instrument;

use crate::aux::{self, AuxArgs, AuxSubscriber, SharedFacts};
use crate::backlog::Backlog;
use crate::context::{Context, Metrics, Tuning};
use crate::deadline::{DeadlineActor, DeadlineArgs};
use crate::link::Link;
use crate::outbox::{Committed, Hint, Released, SettleCheck};
use crate::partners::Partners;
use crate::pipeline::{
    PipelineArgs, PipelineMsg, PipelineSupervisor, Restarts, registry_name, supervised,
};
use crate::protocol::{
    ApiError, AuxRecordRequest, DatabaseStatus, GetRequest, OrderReply, QueryAnswer, QueryRequest,
    RecordReply, ReplicaStatus, ResultRequest, Subjects, SubmitReply, SubmitRequest, TraceReply,
};
use crate::reads;
use crate::relay::{OutboxRelay, RelayArgs};
use crate::replication::{ReplicationActor, ReplicationArgs, ReplicationMsg};
use crate::settle::{Settler, SettlerArgs};
use crate::store::Db;
use crate::supervisor::{OrderSupervisor, Orders, SupervisorMsg};
use crate::writer::{Writer, WriterArgs, WriterMsg, WriterPool};

/// Refused submits that ask the read node at once whether their key is taken: overload must not
/// take the read node's connections from the partners' `get`s and the auxiliary systems.
const REFUSAL_LOOKUPS: usize = 2;

/// What the hub's actors need to start.
pub struct HubConfig {
    /// This hub instance's id: its actors are registered as `<instance>:<role>`.
    pub instance: String,
    pub db: Db,
    pub subjects: Subjects,
    pub partners: Partners,
    /// Built-in auxiliary systems and their durable consumers.
    pub aux: Vec<(String, jetstream::consumer::PullConsumer)>,
    /// Every configured auxiliary system, built-in and external: an order settles once each has
    /// a record.
    pub aux_systems: Vec<String>,
    pub jetstream: jetstream::Context,
    /// The event stream's name (`ORDER_EVENTS`), for `trace`.
    pub stream: String,
    /// Group-commit writers (SQLite: 1).
    pub writers: usize,
    /// Answer `accepted`, `result_stored` and `late_result_stored` only once the read node has
    /// replayed the commit (`database.ack_after = "replica"`).
    pub ack_after_replica: bool,
    /// New orders wait while more results than this wait for the built-in auxiliary systems and
    /// the settler (see [`crate::backlog`]); 0: no bound.
    pub max_story_backlog: u64,
    pub tuning: Tuning,
}

/// Why the hub's actors could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("actor `{0}` failed to start: {1}")]
    Spawn(&'static str, #[source] ractor::SpawnErr),
}

/// What the hub's actors report to `orders.admin.status`.
#[derive(Debug)]
pub struct HubStatus {
    pub actors_live: u64,
    pub outbox_pending: Option<u64>,
    /// How old the oldest unpublished outbox row is, in ms.
    pub outbox_oldest_ms: Option<u64>,
    pub replica: ReplicaStatus,
    pub database: DatabaseStatus,
    pub restarts: BTreeMap<String, u64>,
    /// Per partner: accepted orders waiting for its result.
    pub pending: BTreeMap<String, u64>,
}

/// The running actors.
pub struct Hub {
    ctx: Arc<Context>,
    orders: Orders,
    built_in_aux: Vec<String>,
    /// External systems' records, written in batches.
    aux_writes: aux::AuxWrites,
    /// Admission by the whole story.
    backlog: Arc<Backlog>,
    /// Key lookups of refused submits running now (see [`REFUSAL_LOOKUPS`]).
    refusal_lookups: Arc<tokio::sync::Semaphore>,
    /// The partners' `get`s, read in batches.
    order_reads: reads::OrderReads,
    backlog_watch: tokio::task::JoinHandle<()>,
    aux_systems: Vec<String>,
    jetstream: jetstream::Context,
    stream: String,
    replication: Link<ReplicationMsg>,
    settle: Link<SettleCheck>,
    restarts: Arc<Restarts>,
    pipeline: ActorRef<PipelineMsg>,
    supervisor: ActorRef<SupervisorMsg>,
}

impl Hub {
    pub async fn start(config: HubConfig) -> Result<Self, StartError> {
        let instance = config.instance.clone();
        let partners = Arc::new(config.partners);
        let replication: Link<ReplicationMsg> = Link::new("replication");
        let committed: Link<Committed> = Link::new("replication");
        let released: Link<Released> = Link::new("relay");
        let settle: Link<SettleCheck> = Link::new("settler");
        let writer_links: Vec<Link<WriterMsg>> = (0..config.writers.max(1))
            .map(|_| Link::new("writer"))
            .collect();
        let writers = WriterPool::new(writer_links.clone());
        let ctx = Arc::new(Context {
            db: config.db.clone(),
            subjects: config.subjects,
            partners: partners.clone(),
            writers: writers.clone(),
            metrics: Metrics::default(),
            tuning: config.tuning,
            ack_after_replica: config.ack_after_replica,
            replication: committed.clone(),
        });
        // The auxiliary database on the primary's server travels in its WAL: with `ack_after =
        // "replica"` an auxiliary write waits for the read nodes too.
        let aux_confirm = (config.ack_after_replica && config.db.aux_standby.is_some())
            .then(|| committed.clone());
        let (supervisor, _) = Actor::spawn(None, OrderSupervisor, ())
            .await
            .map_err(|e| StartError::Spawn("order supervisor", e))?;
        let orders = Orders::new(ctx.clone(), supervisor.get_cell());

        // A restarted writer or relay may have dropped committed events: the replication actor
        // sweeps every unpublished row.
        let sweep_all = {
            let replication = replication.clone();
            move || {
                let _ = replication.cast(ReplicationMsg::Sweep { all: true });
            }
        };
        let mut children = Vec::new();
        {
            let (js, writers, released) =
                (config.jetstream.clone(), writers.clone(), released.clone());
            let sweep_all = sweep_all.clone();
            children.push(supervised(
                &instance,
                "relay",
                || OutboxRelay,
                move || RelayArgs {
                    jetstream: js.clone(),
                    writers: writers.clone(),
                },
                move |actor, restarted| {
                    released.set(actor.get_derived());
                    if restarted {
                        sweep_all();
                    }
                },
            ));
        }
        {
            let (db, replication, committed, released) = (
                config.db.clone(),
                replication.clone(),
                committed.clone(),
                released.clone(),
            );
            children.push(supervised(
                &instance,
                "replication",
                || ReplicationActor,
                move || ReplicationArgs {
                    db: db.clone(),
                    released: released.clone(),
                },
                move |actor, _| {
                    committed.set(actor.get_derived());
                    replication.set(actor.get_derived());
                },
            ));
        }
        for (i, link) in writer_links.into_iter().enumerate() {
            let ack_after_replica = config.ack_after_replica;
            let guard = config.db.primary_guard.clone();
            let own_connection = config.db.writer_options();
            let (primary, partners, committed, settle) = (
                config.db.primary.clone(),
                partners.clone(),
                committed.clone(),
                settle.clone(),
            );
            let sweep_all = sweep_all.clone();
            children.push(supervised(
                &instance,
                &format!("writer-{i}"),
                || Writer,
                move || WriterArgs {
                    primary: primary.clone(),
                    own_connection: own_connection.clone(),
                    guard: guard.clone(),
                    partners: partners.clone(),
                    committed: committed.clone(),
                    settle: settle.clone(),
                    ack_after_replica,
                },
                move |actor, restarted| {
                    link.set(actor.get_derived());
                    if restarted {
                        sweep_all();
                    }
                },
            ));
        }
        {
            let (db, orders, partners) = (config.db.clone(), orders.clone(), partners.clone());
            children.push(supervised(
                &instance,
                "deadline",
                || DeadlineActor,
                move || DeadlineArgs {
                    db: db.clone(),
                    orders: orders.clone(),
                    partners: partners.clone(),
                },
                |_, _| {},
            ));
        }
        let backlog = Arc::new(Backlog::new(config.max_story_backlog));
        let backlog_watch = backlog.watch(config.aux.iter().map(|(_, c)| c.clone()).collect());
        {
            let (db, subjects, systems, writers, settle, backlog) = (
                config.db.clone(),
                ctx.subjects.clone(),
                config.aux_systems.clone(),
                writers.clone(),
                settle.clone(),
                backlog.clone(),
            );
            children.push(supervised(
                &instance,
                "settler",
                || Settler,
                move || SettlerArgs {
                    db: db.clone(),
                    subjects: subjects.clone(),
                    systems: systems.clone(),
                    writers: writers.clone(),
                    backlog: backlog.clone(),
                },
                move |actor, _| settle.set(actor.get_derived()),
            ));
        }
        let mut built_in_aux = Vec::new();
        let facts = SharedFacts::new(config.aux.len());
        let aux_writes = aux::AuxWrites::start(config.db.clone(), aux_confirm);
        for (system, consumer) in config.aux {
            built_in_aux.push(system.clone());
            let role = format!("aux-{system}");
            let (db, settle, js) = (config.db.clone(), settle.clone(), config.jetstream.clone());
            let (writes, facts) = (aux_writes.clone(), facts.clone());
            children.push(supervised(
                &instance,
                &role,
                || AuxSubscriber,
                move || AuxArgs {
                    system: system.clone(),
                    consumer: consumer.clone(),
                    jetstream: js.clone(),
                    db: db.clone(),
                    settle: settle.clone(),
                    writes: writes.clone(),
                    facts: facts.clone(),
                },
                |_, _| {},
            ));
        }
        let restarts = Arc::new(Restarts::default());
        let (pipeline, _) = Actor::spawn(
            Some(registry_name(&instance, "pipeline")),
            PipelineSupervisor,
            PipelineArgs {
                children,
                restarts: restarts.clone(),
            },
        )
        .await
        .map_err(|e| StartError::Spawn("pipeline", e))?;
        Ok(Self {
            ctx,
            orders,
            built_in_aux,
            aux_writes,
            backlog,
            refusal_lookups: Arc::new(tokio::sync::Semaphore::new(REFUSAL_LOOKUPS)),
            backlog_watch,
            order_reads: reads::OrderReads::start(config.db.clone()),
            aux_systems: config.aux_systems,
            jetstream: config.jetstream,
            stream: config.stream,
            replication,
            settle,
            restarts,
            pipeline,
            supervisor,
        })
    }

    /// `true` when `partner_id` is a configured partner.
    pub fn is_partner(&self, partner_id: &str) -> bool {
        self.ctx.partners.contains(partner_id)
    }

    pub fn subjects(&self) -> &Subjects {
        &self.ctx.subjects
    }

    /// `orders.submit`: stores a new order under a fresh UUIDv7.
    pub async fn submit(&self, request: SubmitRequest) -> Result<SubmitReply, ApiError> {
        if !self.is_partner(&request.partner_id) {
            return Err(ApiError::unknown_partner(&request.partner_id));
        }
        let refusal = self
            .ctx
            .partners
            .saturated(&request.partner_id)
            .or_else(|| self.backlog.full());
        if let Some((why, wait)) = refusal {
            // A retry of an order already taken is answered as before (`duplicate` or
            // `conflict`): it adds nothing to the partner's pending orders or the backlog. Under
            // a flood of refused attempts only a few ask at once; the rest are refused without
            // asking, and a retry finds its key at a later attempt.
            let retry = match self.refusal_lookups.try_acquire() {
                Ok(_asking) => self
                    .ctx
                    .db
                    .key_used(&request.user_id, &request.request_id)
                    .await
                    .unwrap_or(false),
                Err(_) => false,
            };
            if !retry {
                return Err(ApiError::unavailable(why).retry_after(wait));
            }
        }
        let order_id = uuid::Uuid::now_v7().to_string();
        let span = tracing::debug_span!("order", order_id = %order_id);
        self.orders
            .submit(&order_id, request)
            .instrument(span)
            .await
    }

    /// `orders.partner.<partner_id>.result`.
    pub async fn record_result(
        &self,
        partner_id: &str,
        request: ResultRequest,
    ) -> Result<SubmitReply, ApiError> {
        let span = tracing::debug_span!("order", order_id = %request.order_id);
        self.orders
            .record_result(partner_id, request)
            .instrument(span)
            .await
    }

    /// `orders.partner.<partner_id>.get`.
    pub async fn partner_get(
        &self,
        partner_id: &str,
        request: GetRequest,
    ) -> Result<OrderReply, ApiError> {
        reads::partner_get(&self.order_reads, partner_id, &request.order_id).await
    }

    /// `orders.query`, either form.
    pub async fn query(&self, request: QueryRequest) -> Result<QueryAnswer, ApiError> {
        reads::query(&self.ctx.db, request).await
    }

    /// `orders.aux.<system>.record` from an external system.
    pub async fn record_aux(
        &self,
        system: &str,
        request: AuxRecordRequest,
    ) -> Result<RecordReply, ApiError> {
        let status = request.status.clone();
        let reply = aux::record_external(
            &self.order_reads,
            &self.aux_writes,
            &self.built_in_aux,
            system,
            request,
        )
        .await?;
        if let Err(e) = self.settle.cast(SettleCheck {
            orders: vec![reply.order_id.clone()],
            hint: Hint::Recorded {
                system: reply.system.clone(),
                statuses: vec![status],
            },
        }) {
            tracing::debug!(error = %e, "the settler's scan will find this order");
        }
        Ok(reply)
    }

    /// Waits until the read nodes have replayed everything the primary has so far (above all
    /// the schema the migrations just made), through the replication actor's fences. `false`: not
    /// within `timeout` (the replica is down or far behind); reads answer `unavailable` and events
    /// wait until it has.
    pub async fn await_replica(&self, timeout: std::time::Duration) -> bool {
        crate::replication::await_replay(&self.ctx.replication, std::time::Instant::now() + timeout)
            .await
    }

    /// `orders.admin.trace`: the order's whole story.
    pub async fn trace(&self, request: GetRequest) -> Result<TraceReply, ApiError> {
        let stream = self.jetstream.get_stream(&self.stream).await;
        if let Err(e) = &stream {
            tracing::warn!(error = %e, "trace: the stream is not available; events show no stream side");
        }
        crate::trace::trace(
            &self.ctx.db,
            stream.as_ref().ok(),
            &self.aux_systems,
            &request.order_id,
        )
        .await
    }

    /// The actors' part of `orders.admin.status`.
    pub async fn status(&self) -> HubStatus {
        let db = &self.ctx.db;
        let (mut replica, outbox_pending, outbox_oldest, primary_ok, aux_ok, sync_standby) = tokio::join!(
            self.replica_status(),
            db.outbox_pending(),
            db.outbox_oldest_ms(),
            Db::ping(&db.primary),
            Db::ping(&db.aux),
            db.sync_standby(),
        );
        if db.separate_replica {
            replica.nodes = db.reads.status();
        }
        HubStatus {
            actors_live: self.ctx.metrics.actors_live(),
            outbox_pending: outbox_pending.ok(),
            outbox_oldest_ms: outbox_oldest.ok().flatten(),
            replica,
            database: DatabaseStatus {
                primary_ok: Some(primary_ok),
                aux_ok: Some(aux_ok),
                primary: db.primary_watch.current(),
                sync_standby,
                failovers: db.primary_watch.failovers(),
            },
            restarts: self.restarts.snapshot(),
            pending: self.ctx.partners.pending_all(),
        }
    }

    /// The replication actor's view of the read node.
    async fn replica_status(&self) -> ReplicaStatus {
        match self
            .replication
            .call(ReplicationMsg::Status, Duration::from_secs(2))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(s)) => s,
            _ => ReplicaStatus {
                mode: if self.ctx.db.separate_replica {
                    "postgres"
                } else {
                    "same-as-primary"
                }
                .into(),
                available: None,
                lag_bytes: None,
                lag_ms: None,
                confirmed_lsn: None,
                events_waiting: 0,
                reason: Some("the replication actor did not answer".into()),
                nodes: Vec::new(),
            },
        }
    }

    /// Stops every actor: orders first, then the pipeline. Unpublished events stay in the outbox
    /// for the next start.
    pub async fn stop(self) {
        self.backlog_watch.abort();
        self.supervisor
            .stop_children_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        self.supervisor.stop(None);
        let _ = self
            .pipeline
            .call(PipelineMsg::Shutdown, Some(Duration::from_secs(10)))
            .await;
        self.pipeline.stop(None);
    }
}
