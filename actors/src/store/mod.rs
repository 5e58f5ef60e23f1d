//! The databases: the primary (written only by the writer actors), the read nodes (the
//! [`ReadSet`] of standbys, or a read-only pool on the SQLite file), and the auxiliary database;
//! plus every read the endpoints and subscribers make, by concern:
//!
//! - [`connect`]: the pools, and how the primary's pool follows the primary when it moves;
//! - [`orders`]: orders, results and the outbox, as the order actors, the settler, the deadline
//!   actor, the relay's sweep, `get`, `query` and `trace` read them;
//! - [`aux`]: the auxiliary records;
//! - [`local`]: on SQLite, the hot reads and the auxiliary records' writes on connections of
//!   their own;
//! - [`shapes`]: lists of ids and rows bound as one value, so a statement keeps one shape
//!   whatever their length.

mod aux;
mod connect;
pub mod local;
mod orders;
pub(crate) mod shapes;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::readset::ReadSet;

use entities::order_state;
use entities::orders as order_rows;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, Select};

pub use connect::{PrimaryGuard, PrimaryWatch, primary_may_have_moved};
pub use orders::{OrderState, RecordFacts, Results, Unsettled, live_row_scans};

/// What callers of the store see when a database does not answer as it should.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or refused the statement: the caller answers `unavailable`.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] DbErr),
    /// Committed on the primary, but the replica did not confirm it in time (`ack_after =
    /// "replica"`): the caller answers `unavailable`, and a retry with the same key finds it.
    #[error("committed on the primary; the replica has not confirmed it yet")]
    Unconfirmed,
}

impl From<DbErr> for StoreError {
    fn from(e: DbErr) -> Self {
        Self::Unavailable(e)
    }
}

/// Where the hub's databases are.
#[derive(Clone, Debug)]
pub struct DbUrls {
    pub primary: String,
    /// The read nodes, comma-separated. Empty: the read node is a read-only pool on the primary
    /// (SQLite) or the primary itself.
    pub replica: String,
    /// A read node lagging the primary by more than this leaves the read set.
    pub max_read_lag_bytes: u64,
    pub aux: String,
    /// The auxiliary database as the streaming replica serves it, when it has a copy.
    pub aux_standby: Option<String>,
}

/// The hub's three connection pools.
#[derive(Clone, Debug)]
pub struct Db {
    pub primary: DatabaseConnection,
    /// The read nodes; [`Db::reader`] picks one of the read set.
    pub reads: Arc<ReadSet>,
    pub aux: DatabaseConnection,
    /// The auxiliary database as the streaming replica serves it, when the auxiliary database
    /// lives on the primary's server (physical replication carries every database of a server):
    /// queries read auxiliary records there while the auxiliary database does not answer.
    pub aux_standby: Option<DatabaseConnection>,
    /// `true` when the read node is a separate Postgres streaming replica.
    pub separate_replica: bool,
    /// Until when (ms since the epoch) reads skip the auxiliary database for `aux_standby`.
    aux_down_until: Arc<AtomicU64>,
    /// Checks the primary's pooled connections after a write failed as on a demoted primary.
    pub primary_guard: PrimaryGuard,
    /// Which node the primary URL reaches, and how often that changed.
    pub primary_watch: Arc<PrimaryWatch>,
    /// On SQLite, connections of their own for the hot reads and the auxiliary writes.
    local: Arc<LocalFiles>,
    /// On Postgres, the options of a writer's own connection to the primary.
    writer: Option<sea_orm::ConnectOptions>,
}

/// The SQLite files' own connections (see [`local`]), each where its file is SQLite.
#[derive(Debug, Default)]
struct LocalFiles {
    /// Read-only, on the orders' file.
    orders: Option<local::Local>,
    /// Read-only, on the auxiliary file.
    aux_reads: Option<local::Local>,
    /// The auxiliary file's writer.
    aux_writes: Option<local::Local>,
}

impl LocalFiles {
    /// Threads reading the orders' file.
    const ORDER_READERS: usize = 2;

    /// Connections on the files behind `primary` and `aux` where they are SQLite files. One that
    /// cannot be opened is left out, with a warning: its reads and writes go through the pools.
    async fn open(primary: &DatabaseConnection, aux: &DatabaseConnection) -> Self {
        let open = |file: &std::path::Path, threads, write, name: &str| {
            local::Local::open(file, threads, write, name)
                .inspect_err(|e| {
                    tracing::warn!(error = %e, file = %file.display(), "SQLite connection of its own not opened; using the pool")
                })
                .ok()
        };
        let mut files = Self::default();
        if let Some(file) = local::file_of(primary).await {
            files.orders = open(&file, Self::ORDER_READERS, false, "sqlite-reader");
        }
        if let Some(file) = local::file_of(aux).await {
            files.aux_reads = open(&file, 1, false, "sqlite-aux-reader");
            files.aux_writes = open(&file, 1, true, "sqlite-aux-writer");
        }
        files
    }
}

impl Db {
    /// The pool a read goes to: a node of the read set.
    pub fn reader(&self) -> &DatabaseConnection {
        self.reads.pick()
    }

    pub fn backend(&self) -> DbBackend {
        self.primary.get_database_backend()
    }

    /// Applies the migrations of both databases.
    pub async fn migrate(&self) -> Result<Vec<&'static str>, entities::MigrationError> {
        let mut applied = entities::Migrator::up(&self.primary).await?;
        applied.extend(entities::Migrator::up_aux(&self.aux).await?);
        Ok(applied)
    }
}

/// The row a unique key selects. `.one()` would add a bound `LIMIT ?`, which SQLite plans by
/// its value, so the statement is prepared again on every call; a key lookup needs no limit.
pub(crate) async fn by_key<E: EntityTrait>(
    select: Select<E>,
    db: &impl ConnectionTrait,
) -> Result<Option<E::Model>, DbErr> {
    Ok(select.all(db).await?.into_iter().next())
}

/// When `order` reached each status it has been in, oldest first.
pub fn transition_times(
    order: &order_rows::Model,
) -> Vec<(crate::protocol::OrderStatus, chrono::DateTime<chrono::Utc>)> {
    use crate::protocol::OrderStatus::*;
    [
        (Accepted, Some(order.created_at)),
        (Dispatched, order.dispatched_at),
        (ResultStored, order.result_stored_at),
        (Notified, order.notified_at),
        (LateResultStored, order.late_result_stored_at),
        (LateNotified, order.late_notified_at),
    ]
    .into_iter()
    .filter_map(|(status, at)| at.map(|at| (status, at)))
    .collect()
}

/// The column of `order_state` that holds when an order reached `status`; `accepted` is the
/// order's `created_at`, written once with its facts.
pub fn status_time_column(status: crate::protocol::OrderStatus) -> Option<order_state::Column> {
    use crate::protocol::OrderStatus::*;
    match status {
        Accepted => None,
        Dispatched => Some(order_state::Column::DispatchedAt),
        ResultStored => Some(order_state::Column::ResultStoredAt),
        Notified => Some(order_state::Column::NotifiedAt),
        LateResultStored => Some(order_state::Column::LateResultStoredAt),
        LateNotified => Some(order_state::Column::LateNotifiedAt),
    }
}

/// A store on SQLite files `orders.db` and `aux.db` in `dir`, migrated.
#[cfg(test)]
async fn on_sqlite_files(dir: &std::path::Path) -> Db {
    let url = |name: &str| format!("sqlite://{}/{name}.db?mode=rwc", dir.display());
    let db = Db::connect(&DbUrls {
        primary: url("orders"),
        replica: String::new(),
        max_read_lag_bytes: 0,
        aux: url("aux"),
        aux_standby: None,
    })
    .await
    .expect("connect");
    db.migrate().await.expect("migrate");
    db
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use entities::{aux_records, order_results};
    use sea_orm::{ActiveModelTrait, ConnectionTrait, IntoActiveModel};

    /// Every row of `table`, `columns` of it decoded by `row` on one of `local`'s connections.
    async fn every_row<T: Send + 'static>(
        local: &local::Local,
        columns: &'static str,
        table: &'static str,
        row: fn(&rusqlite::Row<'_>) -> rusqlite::Result<Option<T>>,
    ) -> Vec<Option<T>> {
        local
            .run(move |c| {
                let mut stmt = c.prepare(&format!("SELECT {columns} FROM {table}"))?;
                let rows = stmt.query_map([], row)?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await
            .expect("thread")
            .expect("read")
    }

    fn order(id: &str, version: i32, settled: bool) -> order_rows::Model {
        let now = Utc::now();
        order_rows::Model {
            user_id: format!("user-{id}"),
            amount_minor: 12_345 + i64::from(version),
            status: "notified".into(),
            version,
            settled_at: settled.then_some(now),
            ..crate::testing::order(id, now)
        }
    }

    fn result(order_id: &str, late: bool, outcome: &str) -> order_results::Model {
        order_results::Model {
            order_id: order_id.into(),
            late,
            result_id: format!("r-{order_id}-{late}"),
            outcome: outcome.into(),
            partner_ref: None,
            detail: serde_json::json!({}),
            received_at: Utc::now(),
        }
    }

    /// The reads on SQLite's own connections give what the same reads through the pools give,
    /// and the auxiliary records they write read back through the pool.
    #[tokio::test]
    async fn own_connections_read_what_the_pools_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = on_sqlite_files(dir.path()).await;
        assert!(db.local.orders.is_some() && db.local.aux_writes.is_some());
        let pools = Db {
            local: Arc::default(),
            ..db.clone()
        };

        // a: due; b: settled already; c: a late result only; d: not yet notified.
        for o in [
            order("a", 4, false),
            order("b", 4, true),
            order("c", 5, false),
            order("d", 3, false),
        ] {
            crate::testing::insert(&db.primary, &o).await;
        }
        for r in [
            result("a", false, "confirmed"),
            result("b", false, "rejected"),
            result("c", false, "timeout"),
            result("c", true, "confirmed"),
            result("d", false, "confirmed"),
        ] {
            r.into_active_model()
                .insert(&db.primary)
                .await
                .expect("result");
        }
        let at = Utc::now();
        let record = |order_id: &str, system: &str, status: &str| aux_records::Model {
            order_id: order_id.into(),
            system: system.into(),
            status: status.into(),
            data: serde_json::json!({"x": [1, "two"]}),
            updated_at: at,
        };
        db.upsert_aux(vec![
            record("a", "invoice", "invoiced"),
            record("a", "loyalty", "credited"),
            record("c", "invoice", "void"),
        ])
        .await
        .expect("aux on its own connection");
        db.upsert_aux(vec![record("a", "invoice", "reissued")])
            .await
            .expect("aux replaced");
        let stored = pools.aux_records("a").await.expect("aux through the pool");
        assert_eq!(
            stored,
            vec![
                record("a", "invoice", "reissued"),
                record("a", "loyalty", "credited")
            ]
        );

        let ids: Vec<String> = ["a", "b", "c", "d", "missing"].map(String::from).to_vec();
        let sorted = |mut v: Vec<Unsettled>| {
            v.sort_by(|x, y| x.id.cmp(&y.id));
            v
        };
        let unsettled = sorted(db.unsettled(&ids).await.expect("local"));
        assert_eq!(
            unsettled,
            sorted(pools.unsettled(&ids).await.expect("pool"))
        );
        assert_eq!(
            unsettled
                .iter()
                .map(|u| (u.id.as_str(), u.outcome.as_str()))
                .collect::<Vec<_>>(),
            [("a", "confirmed"), ("c", "timeout")]
        );
        for late in [false, true] {
            let by_id = |mut v: Vec<RecordFacts>| {
                v.sort_by(|x, y| x.order_id.cmp(&y.order_id));
                v
            };
            let local = by_id(db.with_results(&ids, late).await.expect("local"));
            assert_eq!(
                local,
                by_id(pools.with_results(&ids, late).await.expect("pool"))
            );
            assert_eq!(local.len(), if late { 1 } else { 4 }, "late: {late}");
        }
        // Every time set, in sqlx's form and in the naive form SQL defaults would write.
        let mut every = order("e", 4, true);
        let t = every.created_at + chrono::Duration::nanoseconds(1_234_567);
        every.result_deadline = Some(t);
        (
            every.dispatched_at,
            every.result_stored_at,
            every.notified_at,
        ) = (Some(t), Some(t), Some(t));
        (every.late_result_stored_at, every.late_notified_at) = (Some(t), Some(t));
        every.payload = serde_json::json!({"note": "é \"quoted\"", "n": [1.5, null]});
        crate::testing::insert(&db.primary, &every).await;
        db.primary
            .execute_unprepared(
                "UPDATE order_state SET updated_at = '2026-01-02 03:04:05.678' WHERE id = 'a'",
            )
            .await
            .expect("naive time");
        let by_id = |mut v: Vec<order_rows::Model>| {
            v.sort_by(|x, y| x.id.cmp(&y.id));
            v
        };
        let all: Vec<String> = ["a", "b", "e", "missing"].map(String::from).to_vec();
        let local = by_id(db.orders_by_ids(&all).await.expect("local"));
        assert_eq!(local, by_id(pools.orders_by_ids(&all).await.expect("pool")));
        assert_eq!(local.len(), 3);
        let mut known = db.known_ids(&all).await.expect("local");
        known.sort();
        assert_eq!(known, ["a", "b", "e"]);
        let mut known_by_pool = pools.known_ids(&all).await.expect("pool");
        known_by_pool.sort();
        assert_eq!(known, known_by_pool);
        assert_eq!(
            local[0].updated_at.to_rfc3339(),
            "2026-01-02T03:04:05.678+00:00"
        );
        // Decoded on the reader's own connection, not by falling back to the pool.
        let reader = db.local.orders.as_ref().expect("reader");
        let decoded = every_row(reader, local::ORDER_COLUMNS, "orders", local::order_row).await;
        assert!(decoded.iter().all(Option::is_some), "{decoded:?}");

        for id in ["a", "c", "e", "missing"] {
            let local = db.order(id).await.expect("local");
            assert_eq!(local, pools.order(id).await.expect("pool"), "{id}");
            assert_eq!(local.is_some(), id != "missing");
            let (here, there) = (
                db.results(id).await.expect("local"),
                pools.results(id).await.expect("pool"),
            );
            assert_eq!((&here.result, &here.late), (&there.result, &there.late));
            assert_eq!(
                db.aux_records(id).await.expect("local"),
                pools.aux_records(id).await.expect("pool")
            );
        }
        let both = db.results("c").await.expect("local");
        assert_eq!(
            (both.result.map(|r| r.outcome), both.late.map(|r| r.outcome)),
            (Some("timeout".into()), Some("confirmed".into()))
        );
        assert_eq!(db.aux_records("a").await.expect("local").len(), 2);
        // Results and records decoded on their own connections too.
        let results = every_row(
            reader,
            local::RESULT_COLUMNS,
            "order_results",
            local::result_row,
        );
        let results = results.await;
        assert!(results.len() == 5 && results.iter().all(Option::is_some));
        let aux_reader = db.local.aux_reads.as_ref().expect("aux reader");
        let records = every_row(
            aux_reader,
            local::AUX_COLUMNS,
            "aux_records",
            local::aux_row,
        );
        let records = records.await;
        assert!(records.len() == 3 && records.iter().all(Option::is_some));

        let statuses = db.aux_statuses(&ids).await.expect("local");
        assert_eq!(statuses, pools.aux_statuses(&ids).await.expect("pool"));
        assert_eq!(statuses["a"]["invoice"], "reissued");
        assert_eq!(statuses.len(), 2);
    }
}
