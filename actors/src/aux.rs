//! AuxSubscriber: a built-in auxiliary system (`invoice`, `loyalty`, …). Each one pulls result
//! and late events from its own durable consumer `aux-<system>`, reads what it needs from the read
//! node, and writes its record to the auxiliary database, a batch per transaction; it acknowledges
//! only what is written, so a crash loses nothing (delivery is at least once and the write is an
//! upsert). A late event replaces the record with what the system did with the late outcome. A
//! restarted subscriber opens a new pull stream on its durable consumer, where everything it had
//! not acknowledged is redelivered. A durable consumer the server reports gone (deleted, or no
//! longer answering pulls) is bound again, and created again with its old configuration if it
//! no longer exists. Every record written is a hint to the settler.

use std::time::Duration;

use std::collections::HashMap;

use async_nats::jetstream;
use async_nats::jetstream::consumer::pull::MessagesErrorKind;
use async_nats::jetstream::consumer::{FromConsumer, PullConsumer, pull};
use entities::aux_records;
use futures::{FutureExt, StreamExt};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::json;

use crate::link::Link;
use crate::outbox::{Committed, Hint, SettleCheck};
use crate::protocol::{EventKind, EventRef};
use crate::reads::OrderReads;
use crate::replication::await_replay;
use crate::store::{Db, RecordFacts, StoreError};
use tokio::sync::{mpsc, oneshot};

const BATCH: usize = 256;
const WAIT: Duration = Duration::from_millis(500);
/// How soon a batch that could not be written comes back.
const NAK_DELAY: Duration = Duration::from_secs(1);
/// Deliveries of an event whose order the read node does not have before it is dropped.
const MAX_DELIVERIES: i64 = 10;
/// How long an auxiliary write waits for the read nodes to replay it (see [`upsert`]).
const CONFIRM_WITHIN: Duration = Duration::from_secs(2);

/// Writes auxiliary records in one transaction. With `confirm` (`ack_after = "replica"`, and the
/// auxiliary database on the primary's server, whose WAL carries its writes to the standbys), a
/// write counts as done (its event acknowledged, an external system answered `recorded`) only
/// once the read nodes have replayed it, so a failover loses no auxiliary record either:
/// [`StoreError::Unconfirmed`] if they have not within [`CONFIRM_WITHIN`] (the write stays, and
/// writing it again is harmless).
pub async fn upsert(
    db: &Db,
    confirm: Option<&Link<Committed>>,
    records: Vec<aux_records::Model>,
) -> Result<(), StoreError> {
    db.upsert_aux(records).await?;
    match confirm {
        Some(replication)
            if !await_replay(replication, std::time::Instant::now() + CONFIRM_WITHIN).await =>
        {
            Err(StoreError::Unconfirmed)
        }
        _ => Ok(()),
    }
}

/// Why a batch was not recorded; either way nothing is acknowledged and the batch comes back.
#[derive(Debug, thiserror::Error)]
pub enum AuxError {
    /// The fetch from the durable consumer failed.
    #[error("fetch from the durable consumer failed: {0}")]
    Fetch(String),
    /// The durable consumer could not be bound again (or created again).
    #[error("binding the durable consumer again failed: {0}")]
    Bind(String),
    /// The read node or the auxiliary database did not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub enum AuxMsg {
    Pull,
}

pub struct AuxSubscriber;

pub struct AuxArgs {
    pub system: String,
    pub consumer: PullConsumer,
    /// To bind the consumer again (or create it again) when the server reports it gone.
    pub jetstream: jetstream::Context,
    pub db: Db,
    /// Who hears of orders that got a record: the settler.
    pub settle: Link<SettleCheck>,
    /// The replication actor, when a write waits for the read nodes (see [`upsert`]).
    pub confirm: Option<Link<Committed>>,
}

pub struct AuxState {
    system: String,
    consumer: PullConsumer,
    jetstream: jetstream::Context,
    /// The consumer's continuous pull stream, opened on first use.
    messages: Option<pull::Stream>,
    /// The server reported the consumer gone: bind it again before the next pull.
    rebind: bool,
    db: Db,
    settle: Link<SettleCheck>,
    confirm: Option<Link<Committed>>,
}

impl Actor for AuxSubscriber {
    type Msg = AuxMsg;
    type State = AuxState;
    type Arguments = AuxArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: AuxArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.cast(AuxMsg::Pull)?;
        Ok(AuxState {
            system: args.system,
            consumer: args.consumer,
            jetstream: args.jetstream,
            messages: None,
            rebind: false,
            db: args.db,
            settle: args.settle,
            confirm: args.confirm,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        _msg: AuxMsg,
        state: &mut AuxState,
    ) -> Result<(), ActorProcessingErr> {
        if let Err(e) = state.pull().await {
            tracing::warn!(system = %state.system, error = %e, "aux batch failed; it is redelivered");
            myself.send_after(Duration::from_millis(500), || AuxMsg::Pull);
        } else {
            myself.cast(AuxMsg::Pull)?;
        }
        Ok(())
    }
}

impl AuxState {
    /// Waits up to [`WAIT`] for the first event, then takes whatever else is already here.
    async fn next_batch(&mut self) -> Result<Vec<jetstream::Message>, AuxError> {
        if self.rebind {
            self.consumer = self.bind_again().await?;
            self.rebind = false;
            tracing::info!(system = %self.system, "durable consumer bound again");
        }
        if self.messages.is_none() {
            let stream = self
                .consumer
                .messages()
                .await
                .map_err(|e| AuxError::Fetch(e.to_string()))?;
            self.messages = Some(stream);
        }
        let Some(stream) = self.messages.as_mut() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        match tokio::time::timeout(WAIT, stream.next()).await {
            Err(_) => return Ok(out),
            Ok(None) => {
                self.messages = None;
                return Ok(out);
            }
            Ok(Some(Err(e))) => {
                self.notice(&e);
                return Ok(out);
            }
            Ok(Some(Ok(m))) => out.push(m),
        }
        while out.len() < BATCH {
            match stream.next().now_or_never() {
                Some(Some(Ok(m))) => out.push(m),
                Some(Some(Err(e))) => {
                    self.notice(&e);
                    break;
                }
                _ => break,
            }
        }
        Ok(out)
    }

    /// Heartbeats and reconnect notices surface as errors and the stream carries on; a consumer
    /// deleted, or one whose pulls nobody answers, is bound again before the next pull.
    fn notice(&mut self, e: &pull::MessagesError) {
        match e.kind() {
            MessagesErrorKind::ConsumerDeleted | MessagesErrorKind::NoResponders => {
                tracing::warn!(system = %self.system, error = %e, "durable consumer gone; binding it again");
                self.messages = None;
                self.rebind = true;
            }
            _ => tracing::debug!(error = %e, "consumer stream notice"),
        }
    }

    /// The durable consumer again: as it is on the server, or created again with the
    /// configuration it had when this subscriber was started.
    async fn bind_again(&self) -> Result<PullConsumer, AuxError> {
        let info = self.consumer.cached_info();
        let config = pull::Config::try_from_consumer_config(info.config.clone())
            .map_err(|e| AuxError::Bind(e.to_string()))?;
        self.jetstream
            .get_stream_no_info(&info.stream_name)
            .await
            .map_err(|e| AuxError::Bind(e.to_string()))?
            .get_or_create_consumer(&info.name, config)
            .await
            .map_err(|e| AuxError::Bind(e.to_string()))
    }

    async fn pull(&mut self) -> Result<(), AuxError> {
        let messages = self.next_batch().await?;
        if messages.is_empty() {
            return Ok(());
        }
        let (mut wanted, mut wanted_late) = (Vec::new(), Vec::new());
        let mut events = Vec::with_capacity(messages.len());
        for m in messages {
            let decoded =
                EventRef::parse(&m.payload).map(|(kind, e)| (kind, e.data.order_id.into_owned()));
            match decoded {
                Some((kind @ (EventKind::ResultStored | EventKind::Late), order_id)) => {
                    if kind == EventKind::Late {
                        wanted_late.push(order_id.clone());
                    } else {
                        wanted.push(order_id.clone());
                    }
                    events.push((kind, order_id, m));
                }
                _ => {
                    tracing::warn!(subject = %m.subject, "not an orderhub result or late event; dropping it");
                    let _ = m.ack().await;
                }
            }
        }
        let by_id = |rows: Vec<RecordFacts>| {
            rows.into_iter()
                .map(|f| (f.order_id.clone(), f))
                .collect::<HashMap<_, _>>()
        };
        let results = by_id(self.db.with_results(&wanted, false).await?);
        let late = by_id(self.db.with_results(&wanted_late, true).await?);
        let mut records = Vec::with_capacity(events.len());
        let mut done = Vec::with_capacity(events.len());
        for (kind, order_id, m) in events {
            let found = match kind {
                EventKind::Late => late.get(&order_id),
                _ => results.get(&order_id),
            };
            match found {
                Some(facts) => {
                    records.push(if kind == EventKind::Late {
                        record_late(&self.system, facts)
                    } else {
                        record(&self.system, facts)
                    });
                    done.push(m);
                }
                // Not on the read node. Once released it is there, so this is a read node
                // behind (it comes back shortly) or an event of another database (a stream
                // kept across a database reset, a replica rebuilt): after a few deliveries it
                // is dropped, loudly, so it cannot fill the consumer's unacknowledged window.
                None => unreadable(&self.system, &order_id, &m).await,
            }
        }
        let (ids, statuses): (Vec<String>, Vec<String>) = records
            .iter()
            .map(|r| (r.order_id.clone(), r.status.clone()))
            .unzip();
        if let Err(e) = upsert(&self.db, self.confirm.as_ref(), records).await {
            // Hand the batch back soon rather than after the ack wait.
            for m in &done {
                let _ = m.ack_with(jetstream::AckKind::Nak(Some(NAK_DELAY))).await;
            }
            return Err(e.into());
        }
        for m in done {
            if let Err(e) = m.ack().await {
                tracing::debug!(error = %e, "ack lost; the event is redelivered and rewritten");
            }
        }
        if let Err(e) = self.settle.cast(SettleCheck {
            orders: ids,
            hint: Hint::Recorded {
                system: self.system.clone(),
                statuses,
            },
        }) {
            tracing::debug!(error = %e, "the settler's scan will find these orders");
        }
        Ok(())
    }
}

/// An event whose order the read node does not have: offered again in [`NAK_DELAY`], and
/// terminated after [`MAX_DELIVERIES`].
async fn unreadable(system: &str, order_id: &str, m: &jetstream::Message) {
    let delivered = m.info().map(|i| i.delivered).unwrap_or(1);
    let kind = if delivered >= MAX_DELIVERIES {
        tracing::error!(
            system,
            order_id,
            delivered,
            "the read node does not have this order; the event is dropped (is the stream from \
             another database?)"
        );
        jetstream::AckKind::Term
    } else {
        tracing::warn!(
            system,
            order_id,
            delivered,
            "order not readable yet; it is redelivered"
        );
        jetstream::AckKind::Nak(Some(NAK_DELAY))
    };
    if let Err(e) = m.ack_with(kind).await {
        tracing::debug!(error = %e, "nak/term lost; the event comes back after the ack wait");
    }
}

/// What a built-in system records for an order with a result.
pub fn record(system: &str, facts: &RecordFacts) -> aux_records::Model {
    let confirmed = facts.outcome == "confirmed";
    let (status, data) = match system {
        "invoice" if confirmed => (
            "invoiced",
            json!({"amount_minor": facts.amount_minor, "currency": facts.currency,
                   "invoice_no": format!("INV-{}", &facts.order_id[..8])}),
        ),
        "invoice" => ("void", json!({"outcome": facts.outcome})),
        "loyalty" if confirmed => ("credited", json!({"points": facts.amount_minor / 100})),
        "loyalty" => ("skipped", json!({"points": 0, "outcome": facts.outcome})),
        _ => ("seen", json!({"outcome": facts.outcome})),
    };
    aux_records::Model {
        order_id: facts.order_id.clone(),
        system: system.to_owned(),
        status: status.into(),
        data,
        updated_at: chrono::Utc::now(),
    }
}

/// What a built-in system records for a late result (`facts` carry the late result): the late
/// outcome replaces the timeout's.
pub fn record_late(system: &str, facts: &RecordFacts) -> aux_records::Model {
    let mut r = record(system, facts);
    if let Some(data) = r.data.as_object_mut() {
        data.insert("late".into(), json!(true));
        data.insert("late_outcome".into(), json!(facts.outcome));
        data.insert("late_result_id".into(), json!(facts.result_id));
    }
    r
}

/// Records of many external systems' requests in one transaction: while one commits, the next
/// ones gather (up to [`WRITES_BATCH`]), so the auxiliary database commits (and syncs) once per
/// batch, not once per record.
#[derive(Clone)]
pub struct AuxWrites {
    tx: mpsc::UnboundedSender<(aux_records::Model, oneshot::Sender<Result<(), String>>)>,
}

/// Most records of one [`AuxWrites`] transaction.
const WRITES_BATCH: usize = 512;

impl AuxWrites {
    /// Starts the writer; `confirm` as for [`upsert`]. It ends when the last handle is dropped.
    pub fn start(db: Db, confirm: Option<Link<Committed>>) -> Self {
        let (tx, mut rx) =
            mpsc::unbounded_channel::<(aux_records::Model, oneshot::Sender<Result<(), String>>)>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < WRITES_BATCH {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (records, answers): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                let done = upsert(&db, confirm.as_ref(), records)
                    .await
                    .map_err(|e| e.to_string());
                for answer in answers {
                    let _ = answer.send(done.clone());
                }
            }
        });
        Self { tx }
    }

    /// Stores or replaces `record`; returns once its transaction committed (and, with
    /// `confirm`, the read nodes replayed it).
    pub async fn record(&self, record: aux_records::Model) -> Result<(), String> {
        let (answer, done) = oneshot::channel();
        self.tx
            .send((record, answer))
            .map_err(|_| "the auxiliary writer stopped".to_owned())?;
        done.await
            .map_err(|_| "the auxiliary writer stopped".to_owned())?
    }
}

/// `orders.aux.<system>.record` from an external system: stores or replaces its record of an
/// order. A built-in system's name is refused (only the hub writes those records), and an order
/// the read node does not know is `not_found`.
pub async fn record_external(
    reads: &OrderReads,
    writes: &AuxWrites,
    built_in: &[String],
    system: &str,
    request: crate::protocol::AuxRecordRequest,
) -> Result<crate::protocol::RecordReply, crate::protocol::ApiError> {
    use crate::protocol::{ApiError, RecordReply};
    if built_in.iter().any(|b| b == system) {
        return Err(ApiError::invalid(format!(
            "`{system}` is an auxiliary system built into the hub; an external system records \
             under its own name"
        )));
    }
    if !reads
        .exists(&request.order_id)
        .await
        .map_err(crate::reads::read_failed)?
    {
        return Err(ApiError::not_found(&request.order_id));
    }
    let record = aux_records::Model {
        order_id: request.order_id.clone(),
        system: system.to_owned(),
        status: request.status,
        data: request.data,
        updated_at: chrono::Utc::now(),
    };
    writes.record(record).await.map_err(|e| {
        tracing::warn!(error = %e, "aux write failed");
        ApiError::unavailable("the auxiliary database is not available; retry later")
    })?;
    Ok(RecordReply {
        order_id: request.order_id,
        system: system.to_owned(),
        status: "recorded".into(),
    })
}
