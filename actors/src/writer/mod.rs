//! Writer: the group-commit actor. Order actors hand it [`WriteOp`]s and the relay hands it
//! published events; it buffers everything that arrives while a transaction runs and commits the
//! next batch in one transaction ([`commit`]), so a thousand orders cost one commit, not a
//! thousand. The hub runs a small pool of writers ([`WriterPool`]) and routes each order to one
//! of them by id, so no single actor carries every order.
//!
//! After a commit the writer hands the batch's new events on ([`Committed`], to the replication
//! actor), then answers each op.
//!
//! The writer runs its commits on a connection of its own, on a thread of its own ([`direct`]):
//! a SQLite file's, or a Postgres primary's.

mod commit;
mod direct;

pub use commit::lock_key;
use commit::{Batch, Done};
use direct::Direct;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use entities::{order_results, orders};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sea_orm::{DatabaseConnection, DbErr};

use crate::link::Link;
use crate::outbox::{Committed, Hint, PendingEvent, Published, SettleCheck, Waiter};
use crate::partners::Partners;
use crate::protocol::TIMEOUT_RESULT_ID;
use crate::store::{PrimaryGuard, StoreError};

/// Most ops in one transaction.
const MAX_BATCH: usize = 512;
/// How long after its write reached the writer a caller waits for the replica to confirm the
/// commit (`ack_after = "replica"`), so that the answer comes within 2 s of the request.
const CONFIRM_WITHIN: Duration = Duration::from_millis(1300);
/// The least time the replica gets after a slow commit.
const MIN_CONFIRM: Duration = Duration::from_millis(100);
/// After the primary could not be reached, ops fail at once for this long before the next real
/// attempt: a down primary costs each caller milliseconds, not a connection timeout each.
const DOWN_RETRY: Duration = Duration::from_millis(250);

/// One change to the order database, made atomically with its outbox event.
#[derive(Debug)]
pub enum WriteOp {
    /// A new order and its stored event; an existing `(user_id, request_id)` wins.
    InsertOrder {
        order: Box<orders::Model>,
        event: PendingEvent,
    },
    /// A result, the order's move to `result_stored` ([`Trigger::Result`], or
    /// [`Trigger::Timeout`] for the hub's own), and the result event.
    ///
    /// [`Trigger::Result`]: crate::lifecycle::Trigger::Result
    /// [`Trigger::Timeout`]: crate::lifecycle::Trigger::Timeout
    StoreResult {
        result: order_results::Model,
        event: PendingEvent,
    },
    /// A partner's result for an order the hub closed as `timeout`, and the late event.
    StoreLateResult {
        late: order_results::Model,
        event: PendingEvent,
    },
}

impl WriteOp {
    /// The lifecycle trigger the op applies (see [`crate::lifecycle`]).
    pub fn trigger(&self) -> crate::lifecycle::Trigger {
        use crate::lifecycle::Trigger;
        match self {
            Self::InsertOrder { .. } => Trigger::Submit,
            Self::StoreResult { result, .. } if result.result_id == TIMEOUT_RESULT_ID => {
                Trigger::Timeout
            }
            Self::StoreResult { .. } => Trigger::Result,
            Self::StoreLateResult { .. } => Trigger::LateResult,
        }
    }
}

/// How an op went.
#[derive(Debug)]
pub enum WriteOutcome {
    /// Committed as asked.
    Done,
    /// `InsertOrder` found the idempotency key taken; this is the order that holds it.
    DuplicateOrder(Box<orders::Model>),
    /// `StoreResult` (`StoreLateResult`) found a result (a late result) already there.
    ResultExists(Box<order_results::Model>),
    /// The order is not where the op expected it (gone): reload and retry.
    Stale,
}

/// The answer port of a write.
pub type WriteReply = RpcReplyPort<Result<WriteOutcome, StoreError>>;

/// Who waits for a write.
pub struct Caller {
    reply: WriteReply,
    /// Answer only once the replica has the commit (when the hub acknowledges after the
    /// replica): a caller that answers a client. The hub's own writes (a timeout) need not wait.
    confirm: bool,
    arrived: Instant,
}

pub enum WriterMsg {
    /// A write; `confirm` as in [`Caller`]. Boxed: ops carry whole rows, and the mailbox should
    /// not size every message for them.
    Write {
        op: Box<WriteOp>,
        reply: WriteReply,
        confirm: bool,
    },
    /// Events JetStream acknowledged: mark them released in the next commit.
    Published(Vec<PendingEvent>),
    /// Settled events to make, each with the order version it was checked at.
    Settle(Vec<(PendingEvent, i32)>),
    /// Commit what is buffered.
    Flush,
}

impl From<Published> for WriterMsg {
    fn from(p: Published) -> Self {
        Self::Published(p.0)
    }
}

pub struct Writer;

pub struct WriterArgs {
    pub primary: DatabaseConnection,
    /// The options of the writer's own connection to a Postgres primary
    /// ([`crate::store::Db::writer_options`]); on SQLite the writer opens the primary's file.
    pub own_connection: Option<sea_orm::ConnectOptions>,
    /// Told of every failed write: one on a demoted primary gets its connections checked.
    pub guard: PrimaryGuard,
    pub partners: Arc<Partners>,
    /// Where committed events go: the replication actor.
    pub committed: Link<Committed>,
    /// Who hears of orders whose result event is out: the settler.
    pub settle: Link<SettleCheck>,
    /// Answer a write only once the read node has replayed it (`ack_after = "replica"`).
    pub ack_after_replica: bool,
}

pub struct WriterState {
    primary: DatabaseConnection,
    guard: PrimaryGuard,
    partners: Arc<Partners>,
    committed: Link<Committed>,
    settle: Link<SettleCheck>,
    ack_after_replica: bool,
    buffer: Vec<(WriteOp, Caller)>,
    published: Vec<PendingEvent>,
    settlements: Vec<(PendingEvent, i32)>,
    flush_scheduled: bool,
    /// When the primary last could not be reached; cleared by the next commit.
    primary_down_at: Option<Instant>,
    /// The writer's own connection, on a thread of its own ([`direct`]); without it (it could not
    /// start), the writer commits through the primary's pool.
    direct: Option<Direct>,
}

impl Actor for Writer {
    type Msg = WriterMsg;
    type State = WriterState;
    type Arguments = WriterArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: WriterArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let direct = match crate::store::local::file_of(&args.primary).await {
            Some(file) => Some(Direct::sqlite(&file)),
            None => args.own_connection.map(Direct::postgres),
        };
        let direct = direct.and_then(|d| {
            d.inspect_err(|e| tracing::warn!(error = %e, "writing through the pool instead"))
                .ok()
        });
        Ok(WriterState {
            direct,
            primary: args.primary,
            guard: args.guard,
            partners: args.partners,
            committed: args.committed,
            settle: args.settle,
            ack_after_replica: args.ack_after_replica,
            buffer: Vec::with_capacity(MAX_BATCH),
            published: Vec::new(),
            settlements: Vec::new(),
            flush_scheduled: false,
            primary_down_at: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: WriterMsg,
        state: &mut WriterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WriterMsg::Write { op, reply, confirm } => state.buffer.push((
                *op,
                Caller {
                    reply,
                    confirm,
                    arrived: Instant::now(),
                },
            )),
            WriterMsg::Published(events) => state.published.extend(events),
            WriterMsg::Settle(events) => state.settlements.extend(events),
            WriterMsg::Flush => {
                state.flush_scheduled = false;
                state.flush().await;
            }
        }
        if state.pending() >= MAX_BATCH {
            state.flush().await;
        }
        if state.pending() > 0 && !state.flush_scheduled {
            // Everything already in the mailbox is handled before this Flush: that is the
            // group-commit window, and it costs no timer.
            state.flush_scheduled = true;
            myself.cast(WriterMsg::Flush)?;
        }
        Ok(())
    }
}

/// The first `n` of `items`, taken out; the rest stay.
fn take_first<T>(items: &mut Vec<T>, n: usize) -> Vec<T> {
    if items.len() <= n {
        std::mem::take(items)
    } else {
        items.drain(..n).collect()
    }
}

impl WriterState {
    fn pending(&self) -> usize {
        self.buffer.len() + self.published.len() + self.settlements.len()
    }

    async fn flush(&mut self) {
        if self.pending() == 0 {
            return;
        }
        // Drained, not taken: the buffer keeps its capacity for the next batch.
        let (ops, callers): (Vec<_>, Vec<_>) = self.buffer.drain(..).unzip();
        if self
            .primary_down_at
            .is_some_and(|at| at.elapsed() < DOWN_RETRY)
        {
            // Published rows stay unpublished in the outbox (the sweep brings them back), and
            // settlements are found again by the settler's scan.
            self.published.clear();
            self.settlements.clear();
            answer(callers, |_| Err(primary_down()));
            return;
        }
        let started = Instant::now();
        // At most MAX_BATCH of each kind (the rest go in the next batch): bounds a transaction's
        // statements and the order locks it holds (`commit::lock_orders`).
        let batch = Batch {
            ops,
            published: take_first(&mut self.published, MAX_BATCH),
            settle: take_first(&mut self.settlements, MAX_BATCH),
        };
        let (released, settled) = (batch.published.len(), batch.settle.len());
        let (ops, committed) = self.commit(batch).await;
        metrics::histogram!("orderhub_group_commit_ops").record(ops.len() as f64);
        tracing::debug!(
            ops = ops.len(),
            released,
            settled,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "group commit"
        );
        match committed {
            Ok(done) => self.finish(&ops, callers, done),
            // A lone op, or a primary out of reach: retrying one by one would only wait again.
            Err(e) if ops.len() <= 1 || self.primary_down_at.is_some() => {
                tracing::warn!(error = %e, ops = ops.len(), "write failed");
                answer(callers, |_| Err(StoreError::Unavailable(clone_err(&e))));
            }
            Err(e) => {
                tracing::warn!(error = %e, ops = ops.len(), "batch failed; retrying ops one by one");
                self.one_by_one(ops, callers).await;
            }
        }
    }

    /// Commits a batch and finds what its ops ran into; hands the ops back (none if the writer's
    /// thread is gone). Notes a primary that could not be reached.
    async fn commit(&mut self, batch: Batch) -> (Vec<WriteOp>, Result<Done, DbErr>) {
        let (ops, committed) = match &self.direct {
            Some(direct) => match direct.commit(batch, self.partners.clone()).await {
                Some((batch, committed)) => (batch.ops, committed),
                None => {
                    // Its batch is lost with it; the next batch gets a new thread.
                    match direct.reopen() {
                        Ok(new) => self.direct = Some(new),
                        Err(e) => {
                            tracing::warn!(error = %e, "the writer's thread could not start again")
                        }
                    }
                    (Vec::new(), Err(writer_gone()))
                }
            },
            None => {
                let committed = commit::commit(&self.primary, &batch, &self.partners).await;
                (batch.ops, committed)
            }
        };
        let done = match committed {
            Ok(committed) => commit::resolve(&self.primary, &ops, committed).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &done {
            self.guard.note(e);
        }
        self.primary_down_at = done
            .as_ref()
            .err()
            .filter(|e| unreachable(e))
            .map(|_| Instant::now());
        (ops, done)
    }

    /// One bad op must not fail its neighbours: each op alone. Release marks and settlements of
    /// the failed batch are not retried here: the sweep and the settler's scan bring them back.
    async fn one_by_one(&mut self, ops: Vec<WriteOp>, callers: Vec<Caller>) {
        let mut callers = callers.into_iter();
        for op in ops {
            let Some(caller) = callers.next() else { break };
            if self.primary_down_at.is_some() {
                let _ = caller.reply.send(Err(primary_down()));
                continue;
            }
            let batch = Batch {
                ops: vec![op],
                ..Batch::default()
            };
            match self.commit(batch).await {
                (one, Ok(done)) => self.finish(&one, vec![caller], done),
                (_, Err(e)) => {
                    let _ = caller.reply.send(Err(StoreError::Unavailable(e)));
                }
            }
        }
        // Ops lost with the writer's thread: their callers hear it.
        answer(callers.collect(), |_| {
            Err(StoreError::Unavailable(writer_gone()))
        });
    }

    /// Hands new events to the replication actor and newly notified orders to the settler, then
    /// answers the callers.
    fn finish(&self, ops: &[WriteOp], callers: Vec<Caller>, done: Done) {
        let mut events: Vec<PendingEvent> = ops
            .iter()
            .zip(&done.outcomes)
            .filter(|(_, outcome)| matches!(outcome, WriteOutcome::Done))
            .map(|(op, _)| match op {
                WriteOp::InsertOrder { event, .. }
                | WriteOp::StoreResult { event, .. }
                | WriteOp::StoreLateResult { event, .. } => event.clone(),
            })
            .collect();
        events.extend(done.settled);
        if !done.notified.ids.is_empty()
            && let Err(e) = self.settle.cast(SettleCheck {
                orders: done.notified.ids,
                hint: Hint::ResultOut(done.notified.known),
            })
        {
            tracing::debug!(error = %e, "the settler's scan will find these orders");
        }
        let mut outcomes = done.outcomes.into_iter();
        let mut answers = Vec::with_capacity(callers.len());
        let mut waiters = Vec::new();
        let now = Instant::now();
        for caller in callers {
            let outcome = outcomes
                .next()
                .ok_or_else(|| StoreError::Unavailable(DbErr::Custom("missing outcome".into())));
            if !(self.ack_after_replica && caller.confirm) {
                answers.push((caller.reply, outcome));
                continue;
            }
            // Answered by the replication actor once the replica has the commit (a dropped
            // waiter drops its port: the caller hears `unavailable` at once).
            let reply = caller.reply;
            waiters.push(Waiter {
                until: (caller.arrived + CONFIRM_WITHIN).max(now + MIN_CONFIRM),
                answer: Box::new(move |confirmed| {
                    let _ = reply.send(if confirmed {
                        outcome
                    } else {
                        Err(StoreError::Unconfirmed)
                    });
                }),
            });
        }
        if (!events.is_empty() || !waiters.is_empty())
            && let Err(e) = self.committed.cast(Committed { events, waiters })
        {
            // The outbox rows are committed: the periodic sweep publishes them.
            tracing::warn!(error = %e, "events wait for the sweep");
        }
        for (reply, outcome) in answers {
            // A caller that timed out has dropped its port: nothing to do.
            let _ = reply.send(outcome);
        }
    }
}

fn answer(callers: Vec<Caller>, mut f: impl FnMut(usize) -> Result<WriteOutcome, StoreError>) {
    for (i, caller) in callers.into_iter().enumerate() {
        // A caller that timed out has dropped its port: nothing to do.
        let _ = caller.reply.send(f(i));
    }
}

/// `true` when the error says the primary cannot be reached (no connection, connection lost,
/// server shutting down), as opposed to a statement the primary refused.
fn unreachable(e: &DbErr) -> bool {
    use sea_orm::{RuntimeErr, sqlx};
    match e {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            match &**e {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                // Postgres class 08 (connection exception) and 57P01-03 (shutting down, cannot connect now).
                sqlx::Error::Database(d) => d
                    .code()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
                _ => false,
            }
        }
        _ => false,
    }
}

fn primary_down() -> StoreError {
    StoreError::Unavailable(DbErr::Custom(
        "the primary database could not be reached moments ago".into(),
    ))
}

fn writer_gone() -> DbErr {
    DbErr::Custom("the writer's thread is gone".into())
}

fn clone_err(e: &DbErr) -> DbErr {
    DbErr::Custom(e.to_string())
}

/// The hub's writers; each order always goes to the same one. Cheap to clone.
#[derive(Clone)]
pub struct WriterPool {
    writers: Arc<[Link<WriterMsg>]>,
}

impl WriterPool {
    pub fn new(writers: Vec<Link<WriterMsg>>) -> Self {
        Self {
            writers: writers.into(),
        }
    }

    pub fn for_order(&self, order_id: &str) -> &Link<WriterMsg> {
        &self.writers[self.index_of(order_id)]
    }

    /// The position of an order's writer in the pool.
    pub fn index_of(&self, order_id: &str) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        order_id.hash(&mut h);
        (h.finish() as usize) % self.writers.len()
    }

    pub fn get(&self, index: usize) -> &Link<WriterMsg> {
        &self.writers[index]
    }
}

#[cfg(test)]
mod tests {
    use super::take_first;

    #[test]
    fn a_batch_takes_the_first_of_each_kind_and_leaves_the_rest_in_order() {
        let mut items: Vec<u32> = (0..5).collect();
        assert_eq!(take_first(&mut items, 3), [0, 1, 2]);
        assert_eq!(items, [3, 4]);
        assert_eq!(take_first(&mut items, 3), [3, 4]);
        assert!(items.is_empty());
    }
}
