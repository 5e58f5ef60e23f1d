//! AuxSubscriber: a built-in auxiliary system (`invoice`, `loyalty`, …). Each one pulls result
//! and late events from its own durable consumer `aux-<system>`, reads what it needs from the read
//! node, and writes its records to the auxiliary database a batch at a time, in transactions
//! shared with the other systems' records ([`AuxWrites`]). It acknowledges only what is written,
//! so a crash loses nothing (delivery is at least once and the write is an upsert). A late event
//! replaces the record with what the system did with the late outcome. A restarted subscriber
//! opens a new pull stream on its durable consumer, where everything it had not acknowledged is
//! redelivered. A durable consumer the server reports gone (deleted, or no longer answering
//! pulls) is bound again, and created again with its old configuration if it no longer exists.
//! Every record written is a hint to the settler.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
use tokio::sync::{mpsc, oneshot, watch};

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
async fn upsert(
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
    /// The records could not be written ([`AuxWrites`]).
    #[error("writing the records failed: {0}")]
    Write(String),
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
    /// Where its records are written, in transactions shared with the other systems' records.
    pub writes: AuxWrites,
    /// What the built-in systems read of orders, shared among them.
    pub facts: SharedFacts,
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
    writes: AuxWrites,
    facts: SharedFacts,
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
            writes: args.writes,
            facts: args.facts,
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
        let results = by_id(self.facts.read(&self.db, &wanted, false).await?);
        let late = by_id(self.facts.read(&self.db, &wanted_late, true).await?);
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
        if let Err(e) = self.writes.record_all(records).await {
            // Hand the batch back soon rather than after the ack wait.
            for m in &done {
                let _ = m.ack_with(jetstream::AckKind::Nak(Some(NAK_DELAY))).await;
            }
            return Err(AuxError::Write(e));
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

/// How long an order's facts wait for the built-in systems that have not read them yet.
const SHARED_FOR: Duration = Duration::from_secs(30);
/// Most orders' facts held for the built-in systems at once.
const SHARED_MOST: usize = 100_000;

/// What the built-in systems read of orders with results, shared among them. Every built-in
/// system records every result, from the same facts: the order's submitted fields and its result,
/// which never change once the read node has them. So one system's read from the read node
/// serves the others, and the read node reads each order once, not once per system: a system
/// that wants facts another is reading right now waits for that read. An order's facts leave
/// once every built-in system has had them, or after [`SHARED_FOR`] (a system that is down or
/// behind reads them itself); at most [`SHARED_MOST`] are held.
#[derive(Clone)]
pub struct SharedFacts {
    /// How many built-in systems read each order.
    systems: usize,
    held: Arc<Mutex<Held>>,
}

type Key = (String, bool);

enum Slot {
    /// A system is reading them; the flag turns `true` when it is done.
    Reading(watch::Receiver<bool>),
    /// Read, with how many systems have yet to take them.
    Ready(RecordFacts, usize),
}

#[derive(Default)]
struct Held {
    /// By order and lateness, with when the entry came.
    slots: HashMap<Key, (Slot, Instant)>,
    /// When each entry came, oldest first.
    came: VecDeque<(Instant, Key)>,
}

/// What [`SharedFacts::take`] found.
#[derive(Default)]
struct Taken {
    found: Vec<RecordFacts>,
    /// Ids another system is reading, and the reads to wait for.
    reading: Vec<String>,
    waits: Vec<watch::Receiver<bool>>,
    /// Ids to read now; `done` says when they are.
    missing: Vec<String>,
    done: Option<watch::Sender<bool>>,
}

impl SharedFacts {
    pub fn new(systems: usize) -> Self {
        Self {
            systems,
            held: Arc::default(),
        }
    }

    /// The facts of each order of `ids` that has a result (the late one with `late`): those
    /// another system read, and the rest from the read node, left for the systems still to come.
    pub async fn read(
        &self,
        db: &Db,
        ids: &[String],
        late: bool,
    ) -> Result<Vec<RecordFacts>, StoreError> {
        if self.systems < 2 {
            return db.with_results(ids, late).await;
        }
        let mut taken = self.take(ids, late, Instant::now());
        let read = self.read_through(db, &taken.missing, &taken.missing, taken.done.take(), late);
        taken.found.extend(read.await?);
        if !taken.reading.is_empty() {
            for mut wait in taken.waits {
                // An error: the reading system is gone; its ids are read below.
                let _ = wait.wait_for(|done| *done).await;
            }
            let mut again = self.take(&taken.reading, late, Instant::now());
            taken.found.append(&mut again.found);
            // Ids a third system is still reading are read here too, and left to it.
            let mut rest = again.missing.clone();
            rest.append(&mut again.reading);
            let read = self.read_through(db, &rest, &again.missing, again.done, late);
            taken.found.extend(read.await?);
        }
        Ok(taken.found)
    }

    /// Reads `ids` from the read node, leaves what it found of `marked` (the ids marked as read
    /// by this caller) for the other systems, and lets those waiting for it go on, whatever came
    /// of the read (those it did not serve read again).
    async fn read_through(
        &self,
        db: &Db,
        ids: &[String],
        marked: &[String],
        done: Option<watch::Sender<bool>>,
        late: bool,
    ) -> Result<Vec<RecordFacts>, StoreError> {
        let read = db.with_results(ids, late).await;
        self.leave(marked, read.as_deref().unwrap_or_default(), late);
        if let Some(done) = done {
            let _ = done.send(true);
        }
        read
    }

    /// The held facts of `ids` (each taken once more), the ids another system is reading, and
    /// the rest, now marked as read by the caller.
    fn take(&self, ids: &[String], late: bool, now: Instant) -> Taken {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.expire(now);
        let mut taken = Taken::default();
        for id in ids {
            let key = (id.clone(), late);
            match held.slots.get_mut(&key) {
                Some((Slot::Ready(facts, left), _)) => {
                    taken.found.push(facts.clone());
                    *left -= 1;
                    if *left == 0 {
                        held.slots.remove(&key);
                    }
                }
                Some((Slot::Reading(wait), _)) if wait.has_changed().is_ok() && !*wait.borrow() => {
                    if !taken.waits.iter().any(|w| w.same_channel(wait)) {
                        taken.waits.push(wait.clone());
                    }
                    taken.reading.push(id.clone());
                }
                _ => {
                    let wait = match &taken.done {
                        Some(done) => done.subscribe(),
                        None => {
                            let (done, wait) = watch::channel(false);
                            taken.done = Some(done);
                            wait
                        }
                    };
                    held.came.push_back((now, key.clone()));
                    held.slots.insert(key, (Slot::Reading(wait), now));
                    taken.missing.push(id.clone());
                }
            }
        }
        taken
    }

    /// Leaves `read` for the other systems; of the rest of `asked`, the read node had nothing.
    fn leave(&self, asked: &[String], read: &[RecordFacts], late: bool) {
        if asked.is_empty() {
            return;
        }
        let read: HashMap<&str, &RecordFacts> =
            read.iter().map(|f| (f.order_id.as_str(), f)).collect();
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        for id in asked {
            let key = (id.clone(), late);
            let Some((slot @ Slot::Reading(_), _)) = held.slots.get_mut(&key) else {
                continue;
            };
            match read.get(id.as_str()) {
                Some(facts) => *slot = Slot::Ready((*facts).clone(), self.systems - 1),
                None => {
                    held.slots.remove(&key);
                }
            }
        }
        while held.slots.len() > SHARED_MOST {
            if !held.drop_oldest() {
                break;
            }
        }
    }
}

impl Held {
    fn expire(&mut self, now: Instant) {
        while self
            .came
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= SHARED_FOR)
        {
            self.drop_oldest();
        }
    }

    /// Drops the oldest entry, unless it came again since; `false` when none is left.
    fn drop_oldest(&mut self) -> bool {
        let Some((at, key)) = self.came.pop_front() else {
            return false;
        };
        if self.slots.get(&key).is_some_and(|(_, came)| *came == at) {
            self.slots.remove(&key);
        }
        true
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

/// Records of every auxiliary system in shared transactions: the built-in systems' batches and
/// the external systems' requests. While one transaction commits, the next records gather (up
/// to [`WRITES_BATCH`]), so the auxiliary database commits (and syncs, and on Postgres sends to
/// its standbys) once per gathering, not once per system's batch or per record.
#[derive(Clone)]
pub struct AuxWrites {
    tx: mpsc::UnboundedSender<Records>,
}

/// Records to write, and where to say how their transaction went.
type Records = (Vec<aux_records::Model>, oneshot::Sender<Result<(), String>>);

/// Most records of one [`AuxWrites`] transaction (a first batch larger than this goes alone).
const WRITES_BATCH: usize = 512;

impl AuxWrites {
    /// Starts the writer; `confirm` as for [`upsert`]. It ends when the last handle is dropped.
    pub fn start(db: Db, confirm: Option<Link<Committed>>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Records>();
        tokio::spawn(async move {
            while let Some((mut records, first)) = rx.recv().await {
                let mut answers = vec![first];
                while records.len() < WRITES_BATCH {
                    match rx.try_recv() {
                        Ok((more, answer)) => {
                            records.extend(more);
                            answers.push(answer);
                        }
                        Err(_) => break,
                    }
                }
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
        self.record_all(vec![record]).await
    }

    /// Stores or replaces every record of `records`, in one transaction.
    pub async fn record_all(&self, records: Vec<aux_records::Model>) -> Result<(), String> {
        let (answer, done) = oneshot::channel();
        self.tx
            .send((records, answer))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(id: &str) -> RecordFacts {
        RecordFacts {
            order_id: id.into(),
            amount_minor: 100,
            currency: "EUR".into(),
            outcome: "confirmed".into(),
            result_id: format!("r-{id}"),
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_built_in_system_after_the_first_takes_the_facts_once() {
        let shared = SharedFacts::new(3);
        let now = Instant::now();
        let first = shared.take(&ids(&["a", "b"]), false, now);
        assert!(first.found.is_empty());
        assert_eq!(
            first.missing,
            ids(&["a", "b"]),
            "the first system reads them"
        );
        let mut second = shared.take(&ids(&["a", "c"]), false, now);
        assert_eq!(second.reading, ids(&["a"]), "a is being read: wait for it");
        assert_eq!(second.missing, ids(&["c"]));
        assert!(!*second.waits[0].borrow());
        shared.leave(&first.missing, &[facts("a"), facts("b")], false);
        first.done.expect("a read to announce").send(true).unwrap();
        assert!(*second.waits[0].borrow_and_update(), "the wait is over");
        let again = shared.take(&second.reading, false, now);
        assert_eq!(again.found, vec![facts("a")]);
        let late = shared.take(&ids(&["a", "b"]), true, now);
        assert!(late.found.is_empty(), "a late result's facts are others");
        let third = shared.take(&ids(&["a", "b"]), false, now);
        assert_eq!(third.found, vec![facts("a"), facts("b")]);
        let fourth = shared.take(&ids(&["a"]), false, now);
        assert!(fourth.found.is_empty(), "a left with the third system");
        assert_eq!(fourth.missing, ids(&["a"]));
    }

    #[test]
    fn what_the_read_node_lacks_or_a_vanished_reader_left_is_read_again() {
        let shared = SharedFacts::new(2);
        let now = Instant::now();
        let first = shared.take(&ids(&["x"]), false, now);
        shared.leave(&first.missing, &[], false);
        let next = shared.take(&ids(&["x"]), false, now);
        assert_eq!(
            next.missing,
            ids(&["x"]),
            "x was not there: nobody waits for it"
        );
        drop(next.done);
        let after = shared.take(&ids(&["x"]), false, now);
        assert!(after.reading.is_empty(), "its reader is gone");
        assert_eq!(after.missing, ids(&["x"]));
    }

    #[test]
    fn facts_no_system_came_back_for_leave_after_a_while() {
        let shared = SharedFacts::new(2);
        let start = Instant::now();
        let a = shared.take(&ids(&["a"]), false, start);
        shared.leave(&a.missing, &[facts("a")], false);
        let b = shared.take(&ids(&["b"]), false, start + SHARED_FOR / 2);
        shared.leave(&b.missing, &[facts("b")], false);
        let later = shared.take(&ids(&["a", "b"]), false, start + SHARED_FOR);
        assert_eq!(later.found, vec![facts("b")], "a expired, b had not");
        assert_eq!(later.missing, ids(&["a"]));
    }
}
