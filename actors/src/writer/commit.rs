//! The statements of one group commit. Each kind of op goes out as one statement per chunk of
//! rows (inserts as [`shapes::inserts`], ids as [`Tx::ids_in`]: one shape whatever the rows), and
//! `RETURNING id` tells which rows it touched. In one transaction, in this order: new orders,
//! results, late results, settlements, the release of published events in their orders' status,
//! and the outbox: the new events' rows and the published ones' marks. On Postgres, where each
//! statement is a round trip, steps that touch different rows go as one statement where they can
//! (common table expressions: [`shapes::new_orders`], [`shapes::insert_after`],
//! [`shapes::after`]).
//!
//! Every status change is a conditional update built from [`crate::lifecycle`]: `version IN` the
//! statuses its trigger moves from, so a move that lost a race (a peer instance, a repeated
//! release mark, a sweep) changes nothing. The move also sets the time of the status it reaches
//! (`dispatched_at`, `result_stored_at`, …) in the same row: no row per transition. Status
//! changes write the order's narrow `order_state` row; its submitted fields (`order_facts`) are
//! written once, at submit.
//!
//! The statements run on a [`Tx`]: a transaction through sea-orm (Postgres), or the SQLite
//! writer's own connection ([`super::direct`]). Finding the order that holds a
//! taken key, or the result that beat an op, is left to [`resolve`], after the commit: such rows
//! are never deleted, so a read after the commit finds them.
//!
//! The ops of a batch concern distinct orders (an order actor awaits each write), except when an
//! order actor gave up waiting (`write_timeout`) and its retry joined the first op in the same
//! batch. Such a pair still makes one row and one event: two results collide on the results' key,
//! which fails the batch, and the writer goes one op at a time; of two late results only the first
//! makes an event. The settler, too, may hand over one order twice (see [`settle`]).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use entities::{order_facts, order_results, order_state, orders, outbox};
use sea_orm::sea_query::{Expr, Func, OnConflict, SimpleExpr, UpdateStatement};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, IntoActiveModel, QueryFilter, QuerySelect, QueryTrait, Statement,
    StatementBuilder, TransactionTrait,
};

use super::{WriteOp, WriteOutcome};
use crate::lifecycle::{self, Trigger};
use crate::outbox::PendingEvent;
use crate::partners::Partners;
use crate::protocol::{EventKind, OrderStatus, Outcome};
use crate::store::{Unsettled, shapes, status_time_column};

/// Ids per statement of a group commit, and per read after a commit: the ids go as one bound
/// value ([`Tx::ids_in`]), so this only bounds the work and the size of each statement.
const CHUNK: usize = 256;

/// Where a group commit's statements run, inside an open transaction.
pub(super) trait Tx {
    fn backend(&self) -> DbBackend;
    /// Runs a statement and returns the first column of the rows it returns, as text.
    async fn strings(&self, stmt: Statement) -> Result<Vec<String>, DbErr>;
    async fn execute(&self, stmt: Statement) -> Result<(), DbErr>;

    /// `column IN (ids)`, with the ids as one bound value, so the statement has one shape,
    /// prepared once, whatever the number of ids ([`shapes::id_in`]).
    fn ids_in<'i, C: ColumnTrait>(
        &self,
        column: C,
        ids: impl IntoIterator<Item = &'i str>,
    ) -> SimpleExpr {
        let ids: Vec<&str> = ids.into_iter().collect();
        shapes::id_in(self.backend(), column, &ids)
    }

    fn build<S: StatementBuilder>(&self, stmt: &S) -> Statement {
        self.backend().build(stmt)
    }

    /// Whether each statement costs a round trip (Postgres, over the network): then steps that
    /// touch different rows go as one statement where they can, as common table expressions.
    /// On SQLite, in the writer's own process, each statement runs alone.
    fn round_trips(&self) -> bool {
        self.backend() == DbBackend::Postgres
    }

    /// Two steps' statements that touch different rows, to run `before` then `after`: where a
    /// statement costs a round trip, the last of `before` joins the first of `after`
    /// ([`shapes::after`], its rows named `name`), which then returns what that one returns.
    fn join_steps(&self, before: &mut Vec<Statement>, name: &str, after: &mut Vec<Statement>) {
        if self.round_trips()
            && !after.is_empty()
            && let Some(last) = before.pop()
        {
            let first = after.remove(0);
            after.insert(0, shapes::after(last, name, first));
        }
    }

    /// Runs a statement with `RETURNING id` (or one selecting ids) and collects the ids.
    async fn ids<S: StatementBuilder>(&self, stmt: &S) -> Result<HashSet<String>, DbErr> {
        Ok(self.strings(self.build(stmt)).await?.into_iter().collect())
    }
}

impl Tx for DatabaseTransaction {
    fn backend(&self) -> DbBackend {
        self.get_database_backend()
    }

    async fn strings(&self, stmt: Statement) -> Result<Vec<String>, DbErr> {
        self.query_all_raw(stmt)
            .await?
            .iter()
            .map(|row| row.try_get_by_index::<String>(0))
            .collect()
    }

    async fn execute(&self, stmt: Statement) -> Result<(), DbErr> {
        self.execute_raw(stmt).await.map(drop)
    }
}

/// What one group commit is asked to do.
#[derive(Default)]
pub(super) struct Batch {
    pub ops: Vec<WriteOp>,
    /// Events JetStream acknowledged: their release step.
    pub published: Vec<PendingEvent>,
    /// Settled events to make, each for the order version it was checked at.
    pub settle: Vec<(PendingEvent, i32)>,
}

/// How an op went, as the transaction saw it.
pub(super) enum Applied {
    Done,
    /// `InsertOrder` found its idempotency key taken.
    KeyTaken,
    /// `StoreResult` (`late: false`) or `StoreLateResult` (`late: true`) did not move the order:
    /// a result is there already, or the order is not where the op expected it.
    NotMoved {
        late: bool,
    },
}

/// What a group commit did, before [`resolve`].
pub(super) struct Committed {
    /// One per op.
    pub applied: Vec<Applied>,
    /// Settled events made (the rest were settled already, or moved on meanwhile).
    pub settled: Vec<PendingEvent>,
    /// Orders whose result event is now released: their settlement may be due.
    pub notified: Notified,
}

/// Orders whose result event a group commit released.
#[derive(Default)]
pub(super) struct Notified {
    pub ids: Vec<String>,
    /// Those left `notified` (not moved on by a late result): what their settled event says of
    /// them, from their result event.
    pub known: Vec<Unsettled>,
}

/// What a group commit did.
pub(super) struct Done {
    /// One per op.
    pub outcomes: Vec<WriteOutcome>,
    pub settled: Vec<PendingEvent>,
    pub notified: Notified,
}

/// Runs a batch in one transaction through sea-orm.
pub(super) async fn commit(
    db: &DatabaseConnection,
    batch: &Batch,
    partners: &Partners,
) -> Result<Committed, DbErr> {
    let txn = db.begin().await?;
    let committed = apply(&txn, batch, partners).await?;
    txn.commit().await?;
    Ok(committed)
}

/// The statements of a batch, in the transaction `tx` has open.
pub(super) async fn apply<T: Tx>(
    tx: &T,
    batch: &Batch,
    partners: &Partners,
) -> Result<Committed, DbErr> {
    let now = Utc::now();
    let ops = &batch.ops[..];
    let mut applied: Vec<Option<Applied>> = ops.iter().map(|_| None).collect();
    lock_orders(tx, &existing_orders(batch)).await?;
    let mut events = insert_orders(tx, ops, &mut applied).await?;
    events.extend(store_results(tx, ops, now, &mut applied).await?);
    events.extend(store_late_results(tx, ops, now, &mut applied).await?);
    let settled = settle(tx, &batch.settle, now).await?;
    events.extend(settled.iter());
    let (notified, marked) = mark_released(tx, &batch.published, partners, now).await?;
    let rows: Vec<outbox::Model> = events.iter().map(|e| e.row(now)).collect();
    write_outbox(tx, &rows.iter().collect::<Vec<_>>(), &marked, now).await?;
    let applied = applied
        .into_iter()
        .map(|o| o.ok_or_else(|| DbErr::Custom("an op of the batch was not applied".into())))
        .collect::<Result<_, _>>()?;
    Ok(Committed {
        applied,
        settled: settled.into_iter().cloned().collect(),
        notified,
    })
}

/// After the commit: the order that holds a taken key, and the result that beat an op (or
/// [`WriteOutcome::Stale`] when there is none: the order moved elsewhere). One read per kind for
/// the whole batch: under overload most of a batch can be retries of taken keys.
pub(super) async fn resolve(
    db: &DatabaseConnection,
    ops: &[WriteOp],
    committed: Committed,
) -> Result<Done, DbErr> {
    let mut keys = Vec::new();
    let mut results = Vec::new();
    for (op, applied) in ops.iter().zip(&committed.applied) {
        match (applied, op) {
            (Applied::KeyTaken, WriteOp::InsertOrder { order, .. }) => {
                keys.push((order.user_id.as_str(), order.request_id.as_str()));
            }
            (
                Applied::NotMoved { .. },
                WriteOp::StoreResult { result: r, .. } | WriteOp::StoreLateResult { late: r, .. },
            ) => results.push(r.order_id.as_str()),
            _ => {}
        }
    }
    let backend = db.get_database_backend();
    let mut holders: HashMap<(String, String), orders::Model> = HashMap::new();
    for chunk in keys.chunks(CHUNK) {
        let (users, requests): (Vec<&str>, Vec<&str>) = chunk.iter().copied().unzip();
        // Users and request ids apart: a superset of the pairs, matched below.
        let rows = orders::Entity::find()
            .filter(shapes::id_in(backend, orders::Column::UserId, &users))
            .filter(shapes::id_in(backend, orders::Column::RequestId, &requests))
            .all(db)
            .await?;
        holders.extend(
            rows.into_iter()
                .map(|o| ((o.user_id.clone(), o.request_id.clone()), o)),
        );
    }
    let mut existing: HashMap<(String, bool), order_results::Model> = HashMap::new();
    for chunk in results.chunks(CHUNK) {
        let rows = order_results::Entity::find()
            .filter(shapes::id_in(
                backend,
                order_results::Column::OrderId,
                chunk,
            ))
            .all(db)
            .await?;
        existing.extend(rows.into_iter().map(|r| ((r.order_id.clone(), r.late), r)));
    }
    let mut outcomes = Vec::with_capacity(ops.len());
    for (op, applied) in ops.iter().zip(committed.applied) {
        outcomes.push(match (applied, op) {
            (Applied::Done, _) => WriteOutcome::Done,
            (Applied::KeyTaken, WriteOp::InsertOrder { order, .. }) => {
                let key = (order.user_id.clone(), order.request_id.clone());
                let holder = holders
                    .get(&key)
                    .ok_or_else(|| DbErr::RecordNotFound("idempotency key holder".into()))?;
                WriteOutcome::DuplicateOrder(Box::new(holder.clone()))
            }
            (
                Applied::NotMoved { late },
                WriteOp::StoreResult { result: r, .. } | WriteOp::StoreLateResult { late: r, .. },
            ) => match existing.get(&(r.order_id.clone(), late)) {
                Some(found) => WriteOutcome::ResultExists(Box::new(found.clone())),
                None => WriteOutcome::Stale,
            },
            _ => return Err(DbErr::Custom("an op's outcome does not fit the op".into())),
        });
    }
    Ok(Done {
        outcomes,
        settled: committed.settled,
        notified: committed.notified,
    })
}

/// New orders ([`Trigger::Submit`]): their facts, one `INSERT … ON CONFLICT DO NOTHING RETURNING
/// id` per chunk (an order whose id is missing lost to an existing idempotency key), then the
/// state of those inserted. Returns the events of the inserted orders.
async fn insert_orders<'a, T: Tx>(
    tx: &T,
    ops: &'a [WriteOp],
    outcomes: &mut [Option<Applied>],
) -> Result<Vec<&'a PendingEvent>, DbErr> {
    let inserts: Vec<(usize, &orders::Model, &PendingEvent)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match op {
            WriteOp::InsertOrder { order, event } => Some((i, order.as_ref(), event)),
            _ => None,
        })
        .collect();
    let facts: Vec<order_facts::Model> = inserts.iter().map(|(_, o, _)| o.facts()).collect();
    let facts: Vec<&order_facts::Model> = facts.iter().collect();
    let key_taken =
        OnConflict::columns([order_facts::Column::UserId, order_facts::Column::RequestId])
            .do_nothing()
            .to_owned();
    let inserted = if tx.round_trips() {
        // Both rows of each order in one statement: a round trip less per group commit.
        let states: Vec<order_state::Model> = inserts.iter().map(|(_, o, _)| o.state()).collect();
        let states: Vec<&order_state::Model> = states.iter().collect();
        let mut inserted = HashSet::new();
        for stmt in shapes::new_orders(&facts, &states, &key_taken)? {
            inserted.extend(tx.strings(stmt).await?);
        }
        inserted
    } else {
        let inserted = insert_rows::<_, order_facts::Entity>(
            tx,
            &facts,
            Some(&key_taken),
            Some(order_facts::Column::Id),
        )
        .await?;
        let states: Vec<order_state::Model> = inserts
            .iter()
            .filter(|(_, o, _)| inserted.contains(o.id.as_str()))
            .map(|(_, o, _)| o.state())
            .collect();
        insert_rows::<_, order_state::Entity>(tx, &states.iter().collect::<Vec<_>>(), None, None)
            .await?;
        inserted
    };
    let mut events = Vec::with_capacity(inserts.len());
    for (i, order, event) in inserts {
        if inserted.contains(order.id.as_str()) {
            outcomes[i] = Some(Applied::Done);
            events.push(event);
        } else {
            outcomes[i] = Some(Applied::KeyTaken);
        }
    }
    Ok(events)
}

/// Results ([`Trigger::Result`], or [`Trigger::Timeout`] for the hub's own): each order moves to
/// `result_stored` if it is where its trigger moves from. One that moved meanwhile either has a
/// result already or is gone. An order that was still `accepted` gets its `dispatched_at` too, so
/// its story has no gap. Returns the events of the stored results.
async fn store_results<'a, T: Tx>(
    tx: &T,
    ops: &'a [WriteOp],
    now: DateTime<Utc>,
    outcomes: &mut [Option<Applied>],
) -> Result<Vec<&'a PendingEvent>, DbErr> {
    let mut by_trigger: HashMap<Trigger, Vec<(usize, &order_results::Model, &PendingEvent)>> =
        HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        if let WriteOp::StoreResult { result, event } = op {
            by_trigger
                .entry(op.trigger())
                .or_default()
                .push((i, result, event));
        }
    }
    let mut events = Vec::new();
    for (trigger, wanted) in by_trigger {
        for chunk in wanted.chunks(CHUNK) {
            let ids: Vec<&str> = chunk.iter().map(|(_, r, _)| r.order_id.as_str()).collect();
            let dispatched_at: SimpleExpr = Func::coalesce([
                Expr::col(order_state::Column::DispatchedAt),
                Expr::value(now),
            ])
            .into();
            let also = [(order_state::Column::DispatchedAt, dispatched_at)];
            let moved: HashSet<String> = if tx.round_trips() {
                // The move and the insert of the moved orders' results in one round trip.
                let results: Vec<&order_results::Model> =
                    chunk.iter().map(|(_, r, _)| *r).collect();
                let stmt = shapes::insert_after::<order_results::Entity>(
                    tx.build(&move_statement(tx, &ids, trigger, &also, now)),
                    "moved",
                    "order_id",
                    &results,
                    order_results::Column::OrderId,
                )?;
                tx.strings(stmt).await?.into_iter().collect()
            } else {
                let moved: HashSet<String> = move_orders(tx, &ids, trigger, &also, now)
                    .await?
                    .into_iter()
                    .collect();
                let results: Vec<&order_results::Model> = chunk
                    .iter()
                    .map(|(_, r, _)| *r)
                    .filter(|r| moved.contains(r.order_id.as_str()))
                    .collect();
                insert_rows::<_, order_results::Entity>(tx, &results, None, None).await?;
                moved
            };
            for (i, result, event) in chunk {
                if moved.contains(result.order_id.as_str()) {
                    outcomes[*i] = Some(Applied::Done);
                    events.push(*event);
                } else {
                    outcomes[*i] = Some(Applied::NotMoved { late: false });
                }
            }
        }
    }
    Ok(events)
}

/// Late results (the order actor checked that the order's result is the hub's timeout): each is
/// inserted unless the order has one already. An order whose timeout result event is out
/// (`notified`) moves to `late_result_stored` now ([`Trigger::LateResult`]); one still at
/// `result_stored` moves when that event is released (see [`mark_released`]).
async fn store_late_results<'a, T: Tx>(
    tx: &T,
    ops: &'a [WriteOp],
    now: DateTime<Utc>,
    outcomes: &mut [Option<Applied>],
) -> Result<Vec<&'a PendingEvent>, DbErr> {
    let wanted: Vec<(usize, &order_results::Model, &PendingEvent)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match op {
            WriteOp::StoreLateResult { late, event } => Some((i, late, event)),
            _ => None,
        })
        .collect();
    let mut events = Vec::with_capacity(wanted.len());
    let mut inserted_ids = Vec::with_capacity(wanted.len());
    let mut taken = HashSet::new();
    let rows: Vec<&order_results::Model> = wanted.iter().map(|(_, r, _)| *r).collect();
    let taken_already =
        OnConflict::columns([order_results::Column::OrderId, order_results::Column::Late])
            .do_nothing()
            .to_owned();
    let inserted = insert_rows::<_, order_results::Entity>(
        tx,
        &rows,
        Some(&taken_already),
        Some(order_results::Column::OrderId),
    )
    .await?;
    for (i, late, event) in wanted {
        // Two ops for one order can share a batch when an order actor gave up waiting for the
        // first and sent its retry: only the first of them inserted the row and has an event.
        if inserted.contains(late.order_id.as_str()) && taken.insert(late.order_id.as_str()) {
            outcomes[i] = Some(Applied::Done);
            events.push(event);
            inserted_ids.push(late.order_id.as_str());
        } else {
            outcomes[i] = Some(Applied::NotMoved { late: true });
        }
    }
    move_orders(tx, &inserted_ids, Trigger::LateResult, &[], now).await?;
    Ok(events)
}

/// Inserts `rows` of one entity, with `conflict` when given, and returns the `returning` column of
/// the rows inserted (nothing without `returning`); the statements are [`shapes::inserts`].
async fn insert_rows<T: Tx, E: EntityTrait>(
    tx: &T,
    rows: &[&E::Model],
    conflict: Option<&OnConflict>,
    returning: Option<E::Column>,
) -> Result<HashSet<String>, DbErr>
where
    E::Model: IntoActiveModel<E::ActiveModel>,
{
    let mut out = HashSet::new();
    for stmt in shapes::inserts::<E>(tx.backend(), rows, conflict, returning)? {
        if returning.is_some() {
            out.extend(tx.strings(stmt).await?);
        } else {
            tx.execute(stmt).await?;
        }
    }
    Ok(out)
}

/// Every existing order whose state a batch changes: those of its results and late results, of
/// the events whose release moves their order, and of its settlements (new orders are rows of
/// their own). The release of a settled event marks only its outbox row.
fn existing_orders(batch: &Batch) -> Vec<&str> {
    let mut ids: Vec<&str> = batch
        .ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::StoreResult { result, .. } => Some(result.order_id.as_str()),
            WriteOp::StoreLateResult { late, .. } => Some(late.order_id.as_str()),
            WriteOp::InsertOrder { .. } => None,
        })
        .chain(
            batch
                .published
                .iter()
                .filter(|e| e.kind != EventKind::Settled)
                .map(|e| e.order_id.as_str()),
        )
        .chain(batch.settle.iter().map(|(e, _)| e.order_id.as_str()))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Locks the orders until the commit (Postgres; SQLite has one writer at a time anyway): one
/// transaction-scoped advisory lock per order, under its [`lock_key`], taken in key order.
/// Several instances commit batches that touch the same orders (one stores a result while another
/// records the release of the order's stored event): taking every lock up front, in one order,
/// keeps them from deadlocking. It also keeps each from missing the other's change: a late result
/// and the release of its order's timeout result event committed at once would otherwise each
/// miss the other (the late result inserted while the order is still `result_stored`, the order
/// moved to `notified` without seeing it), and the order would stay `notified` for good. Each
/// statement after the lock sees what the holder before it committed (read committed).
///
/// Advisory locks, not row locks (`SELECT … FOR UPDATE`): a row lock writes the row and a WAL
/// record per order, which every standby replays; an advisory lock lives in the server's lock
/// table alone. Every instance must lock this way, or they would not exclude each other. A batch
/// holds at most one lock per order it touches, bounded by the batch ([`super::MAX_BATCH`] ops and
/// as many releases and settlements), well within the lock table's default size.
async fn lock_orders<T: Tx>(tx: &T, ids: &[&str]) -> Result<(), DbErr> {
    if tx.backend() != DbBackend::Postgres || ids.is_empty() {
        return Ok(());
    }
    let mut keys: Vec<i64> = ids.iter().map(|id| lock_key(id)).collect();
    keys.sort_unstable();
    keys.dedup();
    tx.execute(shapes::advisory_locks(&keys)).await
}

/// The key of an order's advisory lock: the 64-bit FNV-1a hash of its id. Fixed by its
/// definition, so every instance, of any build, locks an order under the same key; two orders that
/// share a key only wait for each other.
pub fn lock_key(order_id: &str) -> i64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let hash = order_id
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    hash as i64
}

/// Settlements: `settled_at` is set once, by whichever instance gets there first, and only while
/// the order is still at the version the settler checked; the settled event goes with it.
///
/// The settler may hand the same order over more than once before the writer commits (a hint per
/// auxiliary record, and the scan): only one of them, the one checked at the highest version,
/// makes an event, or each copy would ride on the one row the update moved.
async fn settle<'a, T: Tx>(
    tx: &T,
    settle: &'a [(PendingEvent, i32)],
    now: DateTime<Utc>,
) -> Result<Vec<&'a PendingEvent>, DbErr> {
    let mut latest: HashMap<&str, (&PendingEvent, i32)> = HashMap::new();
    for (event, version) in settle {
        let slot = latest
            .entry(event.order_id.as_str())
            .or_insert((event, *version));
        if *version > slot.1 {
            *slot = (event, *version);
        }
    }
    let mut by_version: HashMap<i32, Vec<&PendingEvent>> = HashMap::new();
    for (event, version) in latest.into_values() {
        by_version.entry(version).or_default().push(event);
    }
    let mut made = Vec::new();
    for (version, events) in by_version {
        for chunk in events.chunks(CHUNK) {
            let mut stmt = order_state::Entity::update_many()
                .col_expr(order_state::Column::SettledAt, Expr::value(now))
                .filter(order_state::Column::SettledAt.is_null())
                .filter(order_state::Column::Version.eq(version))
                .filter(tx.ids_in(
                    order_state::Column::Id,
                    chunk.iter().map(|e| e.order_id.as_str()),
                ))
                .into_query();
            stmt.returning_col(order_state::Column::Id);
            let moved = tx.ids(&stmt).await?;
            made.extend(chunk.iter().filter(|e| moved.contains(e.order_id.as_str())));
        }
    }
    Ok(made)
}

/// The release step of published events: records the release in each order's status
/// ([`Trigger::StoredOut`], which starts the partner's deadline; [`Trigger::ResultOut`], then
/// [`Trigger::LateResult`] for an order whose late result is waiting; [`Trigger::LateOut`]). The
/// order actor decided the change when it made the event; this step only records that the event
/// is out. Returns the orders now `notified`, and the events whose outbox rows to mark published
/// ([`write_outbox`]).
///
/// A late event can be out before its order is `late_result_stored`: the timeout's result event
/// went out first, but its release is recorded elsewhere (a peer instance, or the sweep after a
/// failed batch) and later. Such a late event is left unmarked, so the sweep brings it back
/// (JetStream drops the copy) and its release is recorded once the order can take it.
async fn mark_released<'a, T: Tx>(
    tx: &T,
    published: &'a [PendingEvent],
    partners: &Partners,
    now: DateTime<Utc>,
) -> Result<(Notified, Vec<&'a str>), DbErr> {
    let mut dispatched: HashMap<Duration, Vec<&str>> = HashMap::new();
    let (mut notified, mut late) = (Vec::new(), Vec::new());
    for e in published {
        match e.kind {
            EventKind::Stored => dispatched
                .entry(partners.result_timeout(&e.partner_id))
                .or_default()
                .push(e.order_id.as_str()),
            EventKind::ResultStored => notified.push(e.order_id.as_str()),
            EventKind::Late => late.push(e.order_id.as_str()),
            EventKind::Settled => {}
        }
    }
    // The stored events' releases move orders from `accepted`, the result events' from
    // `result_stored`: never the same row, so the two steps may share a statement.
    let mut dispatched: Vec<Statement> = dispatched
        .into_iter()
        .flat_map(|(timeout, ids)| {
            let deadline = now + chrono::Duration::from_std(timeout).unwrap_or_default();
            let deadline = [(order_state::Column::ResultDeadline, Expr::value(deadline))];
            ids.chunks(CHUNK)
                .map(|chunk| {
                    tx.build(&move_statement(
                        tx,
                        chunk,
                        Trigger::StoredOut,
                        &deadline,
                        now,
                    ))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let mut notify: Vec<Statement> = notified
        .chunks(CHUNK)
        .map(|chunk| tx.build(&move_statement(tx, chunk, Trigger::ResultOut, &[], now)))
        .collect();
    tx.join_steps(&mut dispatched, "dispatched", &mut notify);
    for stmt in dispatched {
        // Read, not executed: the statement returns the ids it moved (SQLite refuses to execute
        // a statement that returns rows).
        tx.strings(stmt).await?;
    }
    let mut notified = Vec::new();
    for stmt in notify {
        notified.extend(tx.strings(stmt).await?);
    }
    let mut waiting = Vec::new();
    // A late result stored while its timeout's result event was still on its way. Only an order
    // closed as `timeout` takes a late result, so only those are looked up: most batches have none.
    let closed_as_timeout = may_have_a_late_result(published, &notified);
    if let Some(then) = lifecycle::transition(Trigger::ResultOut).then {
        for chunk in closed_as_timeout.chunks(CHUNK) {
            let select = order_results::Entity::find()
                .select_only()
                .column(order_results::Column::OrderId)
                .filter(order_results::Column::Late.eq(true))
                .filter(tx.ids_in(order_results::Column::OrderId, chunk.iter().copied()))
                .into_query();
            waiting.extend(tx.strings(tx.build(&select)).await?);
        }
        let waiting: Vec<&str> = waiting.iter().map(String::as_str).collect();
        move_orders(tx, &waiting, then, &[], now).await?;
    }
    let notified = Notified {
        known: known_notified(published, &notified, &waiting),
        ids: notified,
    };
    let moved: HashSet<String> = move_orders(tx, &late, Trigger::LateOut, &[], now)
        .await?
        .into_iter()
        .collect();
    let not_moved: Vec<&str> = late
        .iter()
        .copied()
        .filter(|id| !moved.contains(*id))
        .collect();
    let mut early = HashSet::new();
    for chunk in not_moved.chunks(CHUNK) {
        let select = order_state::Entity::find()
            .select_only()
            .column(order_state::Column::Id)
            .filter(tx.ids_in(order_state::Column::Id, chunk.iter().copied()))
            .filter(order_state::Column::Version.lt(OrderStatus::LateResultStored.version()))
            .into_query();
        early.extend(tx.strings(tx.build(&select)).await?);
    }
    let marked: Vec<&str> = published
        .iter()
        .filter(|e| !(e.kind == EventKind::Late && early.contains(&e.order_id)))
        .map(|e| e.id.as_str())
        .collect();
    Ok((notified, marked))
}

/// The batch's new outbox rows, and the release marks of the published events in `marked`. The
/// two steps may share a statement ([`Tx::join_steps`]): they touch different rows, since an
/// event is published only after the commit that made it.
async fn write_outbox<T: Tx>(
    tx: &T,
    rows: &[&outbox::Model],
    marked: &[&str],
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let mut marks: Vec<Statement> = marked
        .chunks(CHUNK)
        .map(|chunk| {
            tx.build(
                &outbox::Entity::update_many()
                    .col_expr(outbox::Column::PublishedAt, Expr::value(now))
                    .filter(tx.ids_in(outbox::Column::Id, chunk.iter().copied()))
                    .filter(outbox::Column::PublishedAt.is_null())
                    .into_query(),
            )
        })
        .collect();
    let mut inserts = shapes::inserts::<outbox::Entity>(tx.backend(), rows, None, None)?;
    tx.join_steps(&mut marks, "marked", &mut inserts);
    for stmt in marks.into_iter().chain(inserts) {
        tx.execute(stmt).await?;
    }
    Ok(())
}

/// The orders of `notified` whose result event in `published` says `timeout` (or says no
/// outcome): the only ones a late result may be waiting for.
fn may_have_a_late_result<'a>(published: &'a [PendingEvent], notified: &[String]) -> Vec<&'a str> {
    let notified: HashSet<&str> = notified.iter().map(String::as_str).collect();
    let mut ids: Vec<&str> = published
        .iter()
        .filter(|e| e.kind == EventKind::ResultStored)
        .filter(|e| notified.contains(e.order_id.as_str()))
        .filter(|e| {
            e.outcome
                .as_deref()
                .is_none_or(|o| o == Outcome::Timeout.as_str())
        })
        .map(|e| e.order_id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// What the settled events of the orders of `notified` that stayed `notified` (none of
/// `moved_on`) say of them, from their result events in `published`.
fn known_notified(
    published: &[PendingEvent],
    notified: &[String],
    moved_on: &[String],
) -> Vec<Unsettled> {
    let notified: HashSet<&str> = notified.iter().map(String::as_str).collect();
    let moved_on: HashSet<&str> = moved_on.iter().map(String::as_str).collect();
    let version = lifecycle::transition(Trigger::ResultOut).to.version();
    published
        .iter()
        .filter(|e| e.kind == EventKind::ResultStored)
        .filter(|e| notified.contains(e.order_id.as_str()))
        .filter(|e| !moved_on.contains(e.order_id.as_str()))
        .filter_map(|e| {
            Some(Unsettled {
                id: e.order_id.clone(),
                user_id: e.user_id.clone(),
                partner_id: e.partner_id.clone(),
                version,
                outcome: e.outcome.clone()?,
            })
        })
        .collect()
}

/// Applies `trigger` to the orders of `ids` that are where it moves from (see
/// [`lifecycle::TABLE`]): the new status and version, the time of the status reached, and
/// `also`, in each order's `order_state` row. Returns the ids that moved.
async fn move_orders<T: Tx>(
    tx: &T,
    ids: &[&str],
    trigger: Trigger,
    also: &[(order_state::Column, SimpleExpr)],
    now: DateTime<Utc>,
) -> Result<Vec<String>, DbErr> {
    let mut moved = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        moved.extend(
            tx.ids(&move_statement(tx, chunk, trigger, also, now))
                .await?,
        );
    }
    Ok(moved)
}

/// The statement of [`move_orders`] for one chunk of ids, returning the ids that moved.
fn move_statement<T: Tx>(
    tx: &T,
    ids: &[&str],
    trigger: Trigger,
    also: &[(order_state::Column, SimpleExpr)],
    now: DateTime<Utc>,
) -> UpdateStatement {
    let to = lifecycle::transition(trigger).to;
    let from = lifecycle::from_versions(trigger);
    let mut update = order_state::Entity::update_many()
        .col_expr(order_state::Column::Status, Expr::value(to.as_str()))
        .col_expr(order_state::Column::Version, Expr::value(to.version()))
        .col_expr(order_state::Column::UpdatedAt, Expr::value(now));
    if let Some(reached) = status_time_column(to) {
        update = update.col_expr(reached, Expr::value(now));
    }
    for (column, value) in also {
        update = update.col_expr(*column, value.clone());
    }
    let mut stmt = update
        .filter(order_state::Column::Version.is_in(from.iter().copied()))
        .filter(tx.ids_in(order_state::Column::Id, ids.iter().copied()))
        .into_query();
    stmt.returning_col(order_state::Column::Id);
    stmt
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Subjects;

    fn event(kind: EventKind, id: &str, outcome: &str) -> PendingEvent {
        let now = Utc::now();
        let mut order = crate::testing::order(id, now);
        order.user_id = format!("u-{id}");
        let result = order_results::Model {
            order_id: id.into(),
            late: false,
            result_id: format!("r-{id}"),
            outcome: outcome.into(),
            partner_ref: None,
            detail: serde_json::json!({}),
            received_at: now,
        };
        PendingEvent::new(
            kind,
            &Subjects::new("orders"),
            &order,
            3,
            Some(&result),
            now,
        )
    }

    #[test]
    fn an_orders_lock_key_is_the_fnv_1a_hash_of_its_id() {
        // The published test vectors of 64-bit FNV-1a: the key may never change.
        assert_eq!(lock_key(""), 0xcbf2_9ce4_8422_2325_u64 as i64);
        assert_eq!(lock_key("a"), 0xaf63_dc4c_8601_ec8c_u64 as i64);
        assert_eq!(lock_key("foobar"), 0x8594_4171_f739_67e8_u64 as i64);
    }

    #[test]
    fn only_orders_closed_as_timeout_are_looked_up_for_a_late_result() {
        let mut unknown = event(EventKind::ResultStored, "e", "confirmed");
        unknown.outcome = None;
        let published = [
            event(EventKind::ResultStored, "a", "confirmed"),
            event(EventKind::ResultStored, "b", "timeout"),
            event(EventKind::ResultStored, "c", "timeout"),
            event(EventKind::Late, "d", "timeout"),
            unknown,
        ];
        let notified = ["a", "b", "d", "e"].map(String::from);
        assert_eq!(
            may_have_a_late_result(&published, &notified),
            ["b", "e"],
            "a's result was the partner's, c did not move, d's event is a late one, e's says nothing"
        );
    }

    #[test]
    fn the_settler_learns_only_orders_left_notified_from_their_result_events() {
        let published = [
            event(EventKind::ResultStored, "a", "rejected"),
            event(EventKind::ResultStored, "b", "confirmed"),
            event(EventKind::ResultStored, "c", "timeout"),
            event(EventKind::Stored, "d", "confirmed"),
        ];
        let notified = ["a", "b", "d"].map(String::from);
        let moved_on = ["b".to_owned()];
        let known = known_notified(&published, &notified, &moved_on);
        let notified_version = OrderStatus::Notified.version();
        assert_eq!(
            known,
            [Unsettled {
                id: "a".into(),
                user_id: "u-a".into(),
                partner_id: "acme-air".into(),
                version: notified_version,
                outcome: "rejected".into(),
            }],
            "b moved on to its late result, c did not move, d's event is not a result's"
        );
    }
}
