//! Writer: the group-commit actor. Order actors hand it [`WriteOp`]s; it buffers every op that
//! arrives while a transaction is running and commits the next batch in one transaction, so a
//! thousand orders cost one commit, not a thousand. The hub runs a small pool of writers and
//! routes each order to one of them by id, so no single actor carries every order.
//!
//! After a commit the writer hands the batch's new outbox events to the replication actor, then
//! answers each op.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use chrono::Utc;
use entities::{order_results, orders, outbox};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait,
    IntoActiveModel, QueryFilter, QueryTrait, TransactionTrait,
};

use crate::replication::{PendingEvent, ReplicationMsg};
use crate::store::StoreError;

/// Most ops in one transaction.
const MAX_BATCH: usize = 512;
/// After the primary could not be reached, ops fail at once for this long before the next real
/// attempt: a down primary costs each caller milliseconds, not a connection timeout each.
const DOWN_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// One change to the order database, made atomically with its outbox event.
#[derive(Debug)]
pub enum WriteOp {
    /// A new order and its stored event; an existing `(user_id, request_id)` wins.
    InsertOrder {
        order: orders::Model,
        event: outbox::Model,
    },
    /// A result, the order's move to `result_stored` (from `expected_version`), and the result event.
    StoreResult {
        result: order_results::Model,
        expected_version: i32,
        status: &'static str,
        version: i32,
        event: outbox::Model,
    },
    /// An event was published: mark its outbox row, and move the order on if it is still at
    /// `from_version`.
    MarkReleased {
        event_id: String,
        order_id: String,
        transition: Option<Transition>,
    },
}

/// A conditional move of an order: from `from_version` to `status`/`version`.
#[derive(Debug, Clone)]
pub struct Transition {
    pub from_version: i32,
    pub status: &'static str,
    pub version: i32,
    /// Set `result_deadline` to the commit time plus this.
    pub deadline_after: Option<std::time::Duration>,
}

/// How an op went.
#[derive(Debug)]
pub enum WriteOutcome {
    /// Committed as asked.
    Done,
    /// `InsertOrder` found the idempotency key taken; this is the order that holds it.
    DuplicateOrder(Box<orders::Model>),
    /// `StoreResult` found a result already there.
    ResultExists(Box<order_results::Model>),
    /// The order was not at the expected version: another writer moved it. Reload and retry.
    Stale,
}

/// The answer port of a write.
pub type WriteReply = RpcReplyPort<Result<WriteOutcome, StoreError>>;

pub enum WriterMsg {
    /// Boxed: ops carry whole rows, and the mailbox should not size every message for them.
    Write(Box<WriteOp>, WriteReply),
    /// Commit what is buffered.
    Flush,
}

pub struct Writer;

pub struct WriterArgs {
    pub primary: DatabaseConnection,
    pub replication: ActorRef<ReplicationMsg>,
}

pub struct WriterState {
    primary: DatabaseConnection,
    replication: ActorRef<ReplicationMsg>,
    buffer: Vec<(WriteOp, WriteReply)>,
    flush_scheduled: bool,
    /// When the primary last could not be reached; cleared by the next commit.
    primary_down_at: Option<std::time::Instant>,
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
        Ok(WriterState {
            primary: args.primary,
            replication: args.replication,
            buffer: Vec::with_capacity(MAX_BATCH),
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
            WriterMsg::Write(op, reply) => {
                state.buffer.push((*op, reply));
                if state.buffer.len() >= MAX_BATCH {
                    state.flush().await;
                } else if !state.flush_scheduled {
                    // Everything already in the mailbox is handled before this Flush: that is the
                    // group-commit window, and it costs no timer.
                    state.flush_scheduled = true;
                    myself.cast(WriterMsg::Flush)?;
                }
            }
            WriterMsg::Flush => {
                state.flush_scheduled = false;
                state.flush().await;
            }
        }
        Ok(())
    }
}

impl WriterState {
    async fn flush(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.buffer);
        let (ops, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        if self
            .primary_down_at
            .is_some_and(|at| at.elapsed() < DOWN_RETRY)
        {
            answer(replies, |_| Err(primary_down()));
            return;
        }
        let started = std::time::Instant::now();
        let committed = commit(&self.primary, &ops).await;
        self.primary_down_at = committed
            .as_ref()
            .err()
            .filter(|e| unreachable(e))
            .map(|_| std::time::Instant::now());
        tracing::debug!(
            ops = ops.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "group commit"
        );
        match committed {
            Ok(outcomes) => self.finish(&ops, replies, outcomes),
            // A lone op, or a primary out of reach: retrying one by one would only wait again.
            Err(e) if ops.len() == 1 || self.primary_down_at.is_some() => {
                tracing::warn!(error = %e, ops = ops.len(), "write failed");
                answer(replies, |_| Err(StoreError::Unavailable(clone_err(&e))));
            }
            Err(e) => {
                // One bad op must not fail its neighbours: retry each alone.
                tracing::warn!(error = %e, ops = ops.len(), "batch failed; retrying ops one by one");
                for (op, reply) in ops.into_iter().zip(replies) {
                    if self.primary_down_at.is_some() {
                        let _ = reply.send(Err(primary_down()));
                        continue;
                    }
                    let one = [op];
                    match commit(&self.primary, &one).await {
                        Ok(outcomes) => self.finish(&one, vec![reply], outcomes),
                        Err(e) => {
                            if unreachable(&e) {
                                self.primary_down_at = Some(std::time::Instant::now());
                            }
                            let _ = reply.send(Err(StoreError::Unavailable(e)));
                        }
                    }
                }
            }
        }
    }

    /// Hands new events to the replication actor, then answers the callers.
    fn finish(
        &self,
        ops: &[WriteOp],
        replies: Vec<RpcReplyPort<Result<WriteOutcome, StoreError>>>,
        outcomes: Vec<WriteOutcome>,
    ) {
        let events: Vec<PendingEvent> = ops
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| matches!(outcome, WriteOutcome::Done))
            .filter_map(|(op, _)| match op {
                WriteOp::InsertOrder { event, .. } | WriteOp::StoreResult { event, .. } => {
                    Some(PendingEvent::from(event))
                }
                WriteOp::MarkReleased { .. } => None,
            })
            .collect();
        if !events.is_empty()
            && let Err(e) = self.replication.cast(ReplicationMsg::Committed(events))
        {
            // The outbox rows are committed: the periodic sweep publishes them.
            tracing::error!(error = %e, "replication actor gone; events wait for the sweep");
        }
        let mut outcomes = outcomes.into_iter();
        answer(replies, |_| {
            outcomes.next().ok_or_else(|| {
                StoreError::Unavailable(sea_orm::DbErr::Custom("missing outcome".into()))
            })
        });
    }
}

fn answer(
    replies: Vec<RpcReplyPort<Result<WriteOutcome, StoreError>>>,
    mut f: impl FnMut(usize) -> Result<WriteOutcome, StoreError>,
) {
    for (i, reply) in replies.into_iter().enumerate() {
        // A caller that timed out has dropped its port: nothing to do.
        let _ = reply.send(f(i));
    }
}

/// `true` when the error says the primary cannot be reached (no connection, connection lost,
/// server shutting down), as opposed to a statement the primary refused.
fn unreachable(e: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, RuntimeErr, sqlx};
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
    StoreError::Unavailable(sea_orm::DbErr::Custom(
        "the primary database could not be reached moments ago".into(),
    ))
}

fn clone_err(e: &sea_orm::DbErr) -> sea_orm::DbErr {
    sea_orm::DbErr::Custom(e.to_string())
}

/// Runs the ops in one transaction, a handful of statements per batch rather than per op: the
/// ops of one batch always concern distinct orders (an order actor awaits each write), so each kind
/// of op goes out as one multi-row statement, and `RETURNING` tells which rows it touched.
async fn commit(
    db: &DatabaseConnection,
    ops: &[WriteOp],
) -> Result<Vec<WriteOutcome>, sea_orm::DbErr> {
    let txn = db.begin().await?;
    let now = Utc::now();
    let mut outcomes: Vec<Option<WriteOutcome>> = ops.iter().map(|_| None).collect();
    let mut events = Vec::new();

    // New orders: one INSERT … ON CONFLICT DO NOTHING RETURNING id; a missing id lost to an
    // existing idempotency key.
    let inserts: Vec<(usize, &orders::Model, &outbox::Model)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match op {
            WriteOp::InsertOrder { order, event } => Some((i, order, event)),
            _ => None,
        })
        .collect();
    for chunk in inserts.chunks(CHUNK) {
        let mut stmt = orders::Entity::insert_many(
            chunk
                .iter()
                .map(|(_, o, _)| (*o).clone().into_active_model()),
        )
        .on_conflict(
            OnConflict::columns([orders::Column::UserId, orders::Column::RequestId])
                .do_nothing()
                .to_owned(),
        )
        .into_query();
        stmt.returning_col(orders::Column::Id);
        let inserted = returned_ids(&txn, &stmt).await?;
        for (i, order, event) in chunk {
            if inserted.contains(order.id.as_str()) {
                outcomes[*i] = Some(WriteOutcome::Done);
                events.push((*event).clone());
            } else {
                let existing = orders::Entity::find()
                    .filter(orders::Column::UserId.eq(order.user_id.as_str()))
                    .filter(orders::Column::RequestId.eq(order.request_id.as_str()))
                    .one(&txn)
                    .await?
                    .ok_or_else(|| {
                        sea_orm::DbErr::RecordNotFound("idempotency key holder".into())
                    })?;
                outcomes[*i] = Some(WriteOutcome::DuplicateOrder(Box::new(existing)));
            }
        }
    }

    // Results: move each order from the version its actor saw; an order that moved meanwhile
    // either has a result already or is stale.
    let mut results = Vec::new();
    type ResultGroup<'a> = Vec<(usize, &'a order_results::Model, &'a outbox::Model)>;
    let mut by_version: HashMap<(i32, &'static str, i32), ResultGroup> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        if let WriteOp::StoreResult {
            result,
            expected_version,
            status,
            version,
            event,
        } = op
        {
            by_version
                .entry((*expected_version, *status, *version))
                .or_default()
                .push((i, result, event));
        }
    }
    for ((from, status, version), group) in by_version {
        for chunk in group.chunks(CHUNK) {
            let ids = chunk.iter().map(|(_, r, _)| r.order_id.clone());
            let mut stmt = orders::Entity::update_many()
                .col_expr(orders::Column::Status, Expr::value(status))
                .col_expr(orders::Column::Version, Expr::value(version))
                .col_expr(orders::Column::UpdatedAt, Expr::value(now))
                .filter(orders::Column::Version.eq(from))
                .filter(orders::Column::Id.is_in(ids))
                .into_query();
            stmt.returning_col(orders::Column::Id);
            let moved = returned_ids(&txn, &stmt).await?;
            for (i, result, event) in chunk {
                if moved.contains(result.order_id.as_str()) {
                    outcomes[*i] = Some(WriteOutcome::Done);
                    results.push((*result).clone());
                    events.push((*event).clone());
                } else {
                    outcomes[*i] = Some(
                        match order_results::Entity::find_by_id(result.order_id.clone())
                            .one(&txn)
                            .await?
                        {
                            Some(existing) => WriteOutcome::ResultExists(Box::new(existing)),
                            None => WriteOutcome::Stale,
                        },
                    );
                }
            }
        }
    }
    for chunk in results.chunks(CHUNK) {
        order_results::Entity::insert_many(chunk.iter().map(|r| r.clone().into_active_model()))
            .exec_without_returning(&txn)
            .await?;
    }
    for chunk in events.chunks(CHUNK) {
        outbox::Entity::insert_many(chunk.iter().map(|e| e.clone().into_active_model()))
            .exec_without_returning(&txn)
            .await?;
    }

    // Published events: mark the outbox rows, then move each order on if still where it was.
    let published: Vec<&str> = ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::MarkReleased { event_id, .. } => Some(event_id.as_str()),
            _ => None,
        })
        .collect();
    for chunk in published.chunks(CHUNK) {
        outbox::Entity::update_many()
            .col_expr(outbox::Column::PublishedAt, Expr::value(now))
            .filter(outbox::Column::Id.is_in(chunk.iter().copied()))
            .filter(outbox::Column::PublishedAt.is_null())
            .exec(&txn)
            .await?;
    }
    type MoveKey = (i32, &'static str, i32, Option<std::time::Duration>);
    let mut moves: HashMap<MoveKey, Vec<(usize, &str)>> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        if let WriteOp::MarkReleased {
            order_id,
            transition,
            ..
        } = op
        {
            match transition {
                Some(t) => moves
                    .entry((t.from_version, t.status, t.version, t.deadline_after))
                    .or_default()
                    .push((i, order_id.as_str())),
                None => outcomes[i] = Some(WriteOutcome::Done),
            }
        }
    }
    for ((from, status, version, after), group) in moves {
        for chunk in group.chunks(CHUNK) {
            let mut update = orders::Entity::update_many()
                .col_expr(orders::Column::Status, Expr::value(status))
                .col_expr(orders::Column::Version, Expr::value(version))
                .col_expr(orders::Column::UpdatedAt, Expr::value(now));
            if let Some(after) = after {
                let deadline = now + chrono::Duration::from_std(after).unwrap_or_default();
                update = update.col_expr(orders::Column::ResultDeadline, Expr::value(deadline));
            }
            let mut stmt = update
                .filter(orders::Column::Version.eq(from))
                .filter(orders::Column::Id.is_in(chunk.iter().map(|(_, id)| *id)))
                .into_query();
            stmt.returning_col(orders::Column::Id);
            let moved = returned_ids(&txn, &stmt).await?;
            for (i, id) in chunk {
                outcomes[*i] = Some(if moved.contains(*id) {
                    WriteOutcome::Done
                } else {
                    WriteOutcome::Stale
                });
            }
        }
    }

    txn.commit().await?;
    outcomes
        .into_iter()
        .map(|o| {
            o.ok_or_else(|| sea_orm::DbErr::Custom("an op of the batch was not applied".into()))
        })
        .collect()
}

/// Rows per multi-row statement: well under SQLite's bind-parameter limit.
const CHUNK: usize = 256;

/// Runs a statement with `RETURNING id` and collects the ids.
async fn returned_ids<S: sea_orm::StatementBuilder>(
    txn: &DatabaseTransaction,
    stmt: &S,
) -> Result<HashSet<String>, sea_orm::DbErr> {
    let rows = txn.query_all(stmt).await?;
    rows.iter().map(|r| r.try_get::<String>("", "id")).collect()
}

/// The hub's writers; each order always goes to the same one.
#[derive(Clone)]
pub struct WriterPool {
    writers: Vec<ActorRef<WriterMsg>>,
}

impl WriterPool {
    pub fn new(writers: Vec<ActorRef<WriterMsg>>) -> Self {
        Self { writers }
    }

    pub fn all(&self) -> &[ActorRef<WriterMsg>] {
        &self.writers
    }

    pub fn for_order(&self, order_id: &str) -> &ActorRef<WriterMsg> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        order_id.hash(&mut h);
        &self.writers[(h.finish() as usize) % self.writers.len()]
    }
}
