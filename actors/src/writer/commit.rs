//! The statements of one group commit. The ops of a batch always concern distinct orders (an
//! order actor awaits each write), so each kind of op goes out as one multi-row statement per
//! chunk, and `RETURNING id` tells which rows it touched. Three parts, in this order, in one
//! transaction: new orders, results, and the release marks of published events.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use entities::{order_results, orders, outbox};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait,
    IntoActiveModel, QueryFilter, QueryTrait, TransactionTrait,
};

use super::{WriteOp, WriteOutcome};
use crate::outbox::PendingEvent;
use crate::partners::Partners;
use crate::protocol::{EventKind, OrderStatus};

/// Rows per multi-row statement: well under SQLite's bind-parameter limit.
const CHUNK: usize = 256;

/// Runs the ops and the release marks in one transaction; one outcome per op.
pub(super) async fn commit(
    db: &DatabaseConnection,
    ops: &[WriteOp],
    published: &[PendingEvent],
    partners: &Partners,
) -> Result<Vec<WriteOutcome>, DbErr> {
    let txn = db.begin().await?;
    let now = Utc::now();
    let mut outcomes: Vec<Option<WriteOutcome>> = ops.iter().map(|_| None).collect();
    let mut events = insert_orders(&txn, ops, &mut outcomes).await?;
    events.extend(store_results(&txn, ops, now, &mut outcomes).await?);
    for chunk in events.chunks(CHUNK) {
        outbox::Entity::insert_many(chunk.iter().map(|e| e.row(now).into_active_model()))
            .exec_without_returning(&txn)
            .await?;
    }
    mark_released(&txn, published, partners, now).await?;
    txn.commit().await?;
    outcomes
        .into_iter()
        .map(|o| o.ok_or_else(|| DbErr::Custom("an op of the batch was not applied".into())))
        .collect()
}

/// New orders: one `INSERT … ON CONFLICT DO NOTHING RETURNING id` per chunk; an order whose id
/// is missing lost to an existing idempotency key. Returns the events of the inserted orders.
async fn insert_orders<'a>(
    txn: &DatabaseTransaction,
    ops: &'a [WriteOp],
    outcomes: &mut [Option<WriteOutcome>],
) -> Result<Vec<&'a PendingEvent>, DbErr> {
    let inserts: Vec<(usize, &orders::Model, &PendingEvent)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match op {
            WriteOp::InsertOrder { order, event } => Some((i, order, event)),
            _ => None,
        })
        .collect();
    let mut events = Vec::with_capacity(inserts.len());
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
        let inserted = returned_ids(txn, &stmt).await?;
        for (i, order, event) in chunk {
            if inserted.contains(order.id.as_str()) {
                outcomes[*i] = Some(WriteOutcome::Done);
                events.push(*event);
            } else {
                let existing = orders::Entity::find()
                    .filter(orders::Column::UserId.eq(order.user_id.as_str()))
                    .filter(orders::Column::RequestId.eq(order.request_id.as_str()))
                    .one(txn)
                    .await?
                    .ok_or_else(|| DbErr::RecordNotFound("idempotency key holder".into()))?;
                outcomes[*i] = Some(WriteOutcome::DuplicateOrder(Box::new(existing)));
            }
        }
    }
    Ok(events)
}

/// Results: each order moves to `result_stored` if it has no result yet (`accepted` or
/// `dispatched`); one that moved meanwhile either has a result already or is gone. Returns the
/// events of the stored results.
async fn store_results<'a>(
    txn: &DatabaseTransaction,
    ops: &'a [WriteOp],
    now: DateTime<Utc>,
    outcomes: &mut [Option<WriteOutcome>],
) -> Result<Vec<&'a PendingEvent>, DbErr> {
    let wanted: Vec<(usize, &order_results::Model, &PendingEvent)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match op {
            WriteOp::StoreResult { result, event } => Some((i, result, event)),
            _ => None,
        })
        .collect();
    let status = OrderStatus::ResultStored;
    let mut stored = Vec::with_capacity(wanted.len());
    let mut events = Vec::with_capacity(wanted.len());
    for chunk in wanted.chunks(CHUNK) {
        let mut stmt = orders::Entity::update_many()
            .col_expr(orders::Column::Status, Expr::value(status.as_str()))
            .col_expr(orders::Column::Version, Expr::value(status.version()))
            .col_expr(orders::Column::UpdatedAt, Expr::value(now))
            .filter(orders::Column::Version.lt(status.version()))
            .filter(orders::Column::Id.is_in(chunk.iter().map(|(_, r, _)| r.order_id.clone())))
            .into_query();
        stmt.returning_col(orders::Column::Id);
        let moved = returned_ids(txn, &stmt).await?;
        for (i, result, event) in chunk {
            if moved.contains(result.order_id.as_str()) {
                outcomes[*i] = Some(WriteOutcome::Done);
                stored.push(*result);
                events.push(*event);
                continue;
            }
            let existing = order_results::Entity::find_by_id(result.order_id.clone())
                .one(txn)
                .await?;
            outcomes[*i] = Some(match existing {
                Some(existing) => WriteOutcome::ResultExists(Box::new(existing)),
                None => WriteOutcome::Stale,
            });
        }
    }
    for chunk in stored.chunks(CHUNK) {
        order_results::Entity::insert_many(chunk.iter().map(|r| (*r).clone().into_active_model()))
            .exec_without_returning(txn)
            .await?;
    }
    Ok(events)
}

/// The release step of published events: marks their outbox rows, and records the release in
/// each order's status — `accepted → dispatched` (starting the partner's deadline) for a stored
/// event, `result_stored → notified` for a result event. The order actor decided the change when
/// it made the event; this step only records that the event is out, and the version condition
/// makes a repeated mark (a sweep, a peer instance) a no-op.
async fn mark_released(
    txn: &DatabaseTransaction,
    published: &[PendingEvent],
    partners: &Partners,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    for chunk in published.chunks(CHUNK) {
        outbox::Entity::update_many()
            .col_expr(outbox::Column::PublishedAt, Expr::value(now))
            .filter(outbox::Column::Id.is_in(chunk.iter().map(|e| e.id.as_str())))
            .filter(outbox::Column::PublishedAt.is_null())
            .exec(txn)
            .await?;
    }
    let mut dispatched: HashMap<Duration, Vec<&str>> = HashMap::new();
    let mut notified = Vec::new();
    for e in published {
        match e.kind {
            EventKind::Stored => dispatched
                .entry(partners.result_timeout(&e.partner_id))
                .or_default()
                .push(e.order_id.as_str()),
            EventKind::ResultStored => notified.push(e.order_id.as_str()),
        }
    }
    for (timeout, ids) in dispatched {
        let deadline = now + chrono::Duration::from_std(timeout).unwrap_or_default();
        let to = OrderStatus::Dispatched;
        for chunk in ids.chunks(CHUNK) {
            orders::Entity::update_many()
                .col_expr(orders::Column::Status, Expr::value(to.as_str()))
                .col_expr(orders::Column::Version, Expr::value(to.version()))
                .col_expr(orders::Column::UpdatedAt, Expr::value(now))
                .col_expr(orders::Column::ResultDeadline, Expr::value(deadline))
                .filter(orders::Column::Version.eq(OrderStatus::Accepted.version()))
                .filter(orders::Column::Id.is_in(chunk.iter().copied()))
                .exec(txn)
                .await?;
        }
    }
    let to = OrderStatus::Notified;
    for chunk in notified.chunks(CHUNK) {
        orders::Entity::update_many()
            .col_expr(orders::Column::Status, Expr::value(to.as_str()))
            .col_expr(orders::Column::Version, Expr::value(to.version()))
            .col_expr(orders::Column::UpdatedAt, Expr::value(now))
            .filter(orders::Column::Version.eq(OrderStatus::ResultStored.version()))
            .filter(orders::Column::Id.is_in(chunk.iter().copied()))
            .exec(txn)
            .await?;
    }
    Ok(())
}

/// Runs a statement with `RETURNING id` and collects the ids.
async fn returned_ids<S: sea_orm::StatementBuilder>(
    txn: &DatabaseTransaction,
    stmt: &S,
) -> Result<HashSet<String>, DbErr> {
    let rows = txn.query_all(stmt).await?;
    rows.iter().map(|r| r.try_get::<String>("", "id")).collect()
}
