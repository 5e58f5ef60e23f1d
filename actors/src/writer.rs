//! Writer: the group-commit actor. Order actors hand it [`WriteOp`]s; it buffers every op that
//! arrives while a transaction is running and commits the next batch in one transaction, so a
//! thousand orders cost one commit, not a thousand. The hub runs a small pool of writers and
//! routes each order to one of them by id, so no single actor carries every order.
//!
//! After a commit the writer hands the batch's new outbox events to the replication actor, then
//! answers each op.

use std::hash::{Hash, Hasher};

use chrono::{DateTime, Utc};
use entities::{order_results, orders, outbox};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait,
    IntoActiveModel, QueryFilter, TransactionTrait,
};

use crate::replication::{PendingEvent, ReplicationMsg};
use crate::store::StoreError;

/// Most ops in one transaction.
const MAX_BATCH: usize = 512;

/// One change to the order database, made atomically with its outbox event.
#[derive(Debug)]
pub enum WriteOp {
    /// A new order and its stored event; an existing `(user_id, request_id)` wins.
    InsertOrder { order: orders::Model, event: outbox::Model },
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
    MarkReleased { event_id: String, order_id: String, transition: Option<Transition> },
}

/// A conditional move of an order: from `from_version` to `status`/`version`.
#[derive(Debug, Clone)]
pub struct Transition {
    pub from_version: i32,
    pub status: &'static str,
    pub version: i32,
    /// Set `result_deadline` too.
    pub deadline: Option<DateTime<Utc>>,
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

pub enum WriterMsg {
    Write(WriteOp, RpcReplyPort<Result<WriteOutcome, StoreError>>),
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
    buffer: Vec<(WriteOp, RpcReplyPort<Result<WriteOutcome, StoreError>>)>,
    flush_scheduled: bool,
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
                state.buffer.push((op, reply));
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
        match commit(&self.primary, &ops).await {
            Ok(outcomes) => self.finish(&ops, replies, outcomes),
            Err(e) if ops.len() == 1 => {
                tracing::warn!(error = %e, "write failed");
                answer(replies, |_| Err(StoreError::Unavailable(clone_err(&e))));
            }
            Err(e) => {
                // One bad op must not fail its neighbours: retry each alone.
                tracing::warn!(error = %e, ops = ops.len(), "batch failed; retrying ops one by one");
                for (op, reply) in ops.into_iter().zip(replies) {
                    let one = [op];
                    match commit(&self.primary, &one).await {
                        Ok(outcomes) => self.finish(&one, vec![reply], outcomes),
                        Err(e) => {
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
        if !events.is_empty() {
            if let Err(e) = self.replication.cast(ReplicationMsg::Committed(events)) {
                // The outbox rows are committed: the periodic sweep publishes them.
                tracing::error!(error = %e, "replication actor gone; events wait for the sweep");
            }
        }
        let mut outcomes = outcomes.into_iter();
        answer(replies, |_| outcomes.next().ok_or_else(|| StoreError::Unavailable(sea_orm::DbErr::Custom("missing outcome".into()))));
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

fn clone_err(e: &sea_orm::DbErr) -> sea_orm::DbErr {
    sea_orm::DbErr::Custom(e.to_string())
}

/// Runs the ops in one transaction.
async fn commit(db: &DatabaseConnection, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>, sea_orm::DbErr> {
    let txn = db.begin().await?;
    let mut outcomes = Vec::with_capacity(ops.len());
    for op in ops {
        outcomes.push(apply(&txn, op).await?);
    }
    txn.commit().await?;
    Ok(outcomes)
}

async fn apply(txn: &DatabaseTransaction, op: &WriteOp) -> Result<WriteOutcome, sea_orm::DbErr> {
    match op {
        WriteOp::InsertOrder { order, event } => {
            let inserted = orders::Entity::insert(order.clone().into_active_model())
                .on_conflict(
                    OnConflict::columns([orders::Column::UserId, orders::Column::RequestId])
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(txn)
                .await?;
            if inserted == 0 {
                let existing = orders::Entity::find()
                    .filter(orders::Column::UserId.eq(order.user_id.as_str()))
                    .filter(orders::Column::RequestId.eq(order.request_id.as_str()))
                    .one(txn)
                    .await?
                    .ok_or_else(|| sea_orm::DbErr::RecordNotFound("idempotency key holder".into()))?;
                return Ok(WriteOutcome::DuplicateOrder(Box::new(existing)));
            }
            outbox::Entity::insert(event.clone().into_active_model()).exec_without_returning(txn).await?;
            Ok(WriteOutcome::Done)
        }
        WriteOp::StoreResult { result, expected_version, status, version, event } => {
            let moved = orders::Entity::update_many()
                .col_expr(orders::Column::Status, Expr::value(*status))
                .col_expr(orders::Column::Version, Expr::value(*version))
                .col_expr(orders::Column::UpdatedAt, Expr::value(result.received_at))
                .filter(orders::Column::Id.eq(result.order_id.as_str()))
                .filter(orders::Column::Version.eq(*expected_version))
                .exec(txn)
                .await?;
            if moved.rows_affected == 0 {
                return Ok(match order_results::Entity::find_by_id(result.order_id.clone()).one(txn).await? {
                    Some(existing) => WriteOutcome::ResultExists(Box::new(existing)),
                    None => WriteOutcome::Stale,
                });
            }
            order_results::Entity::insert(result.clone().into_active_model()).exec_without_returning(txn).await?;
            outbox::Entity::insert(event.clone().into_active_model()).exec_without_returning(txn).await?;
            Ok(WriteOutcome::Done)
        }
        WriteOp::MarkReleased { event_id, order_id, transition } => {
            let now = Utc::now();
            outbox::Entity::update_many()
                .col_expr(outbox::Column::PublishedAt, Expr::value(now))
                .filter(outbox::Column::Id.eq(event_id.as_str()))
                .filter(outbox::Column::PublishedAt.is_null())
                .exec(txn)
                .await?;
            let Some(t) = transition else { return Ok(WriteOutcome::Done) };
            let mut update = orders::Entity::update_many()
                .col_expr(orders::Column::Status, Expr::value(t.status))
                .col_expr(orders::Column::Version, Expr::value(t.version))
                .col_expr(orders::Column::UpdatedAt, Expr::value(now));
            if let Some(deadline) = t.deadline {
                update = update.col_expr(orders::Column::ResultDeadline, Expr::value(deadline));
            }
            let moved = update
                .filter(orders::Column::Id.eq(order_id.as_str()))
                .filter(orders::Column::Version.eq(t.from_version))
                .exec(txn)
                .await?;
            Ok(if moved.rows_affected == 0 { WriteOutcome::Stale } else { WriteOutcome::Done })
        }
    }
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
