//! The databases: the primary (written only by the writer actors), the read nodes (the
//! [`ReadSet`] of standbys, or a read-only pool on the SQLite file), and the auxiliary database;
//! plus every read the endpoints and subscribers make.
//!
//! The primary may move (an HA manager promotes a standby, and the primary URL routes to the new
//! leader): a connection is refused if the server it reaches is in recovery, and after a write
//! failed as a standby's would (read-only, shut down, connection lost), each pooled connection is
//! checked again before use for a while, so no connection keeps writing to a node that is no
//! longer the primary.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::readset::ReadSet;

use entities::{aux_records, order_late_results, order_results, order_transitions, orders, outbox};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Select,
};

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
    /// `ack_after = "replica"`: an auxiliary write counts as done (its event acknowledged, an
    /// external system answered `recorded`) only once `aux_standby` has replayed it, so a
    /// failover loses no auxiliary record either.
    pub aux_ack_after_replica: bool,
    /// Checks the primary's pooled connections after a write failed as on a demoted primary.
    pub primary_guard: PrimaryGuard,
    /// Which node the primary URL reaches, and how often that changed.
    pub primary_watch: Arc<PrimaryWatch>,
}

/// After a write failed as a standby's would, the primary's pooled connections are checked for
/// recovery before use for a while ([`SUSPECT_FOR`]).
#[derive(Clone, Debug, Default)]
pub struct PrimaryGuard(Arc<AtomicU64>);

impl PrimaryGuard {
    /// A write failed with `e`: when it looks like the primary moved, start checking.
    pub fn note(&self, e: &DbErr) {
        if primary_may_have_moved(e) {
            let now = now_ms();
            if self
                .0
                .swap(now + SUSPECT_FOR.as_millis() as u64, Ordering::Relaxed)
                < now
            {
                tracing::warn!(error = %e, "a write failed as if the primary moved: checking its connections");
            }
        }
    }

    fn active(&self) -> bool {
        self.0.load(Ordering::Relaxed) > now_ms()
    }
}

/// The node the primary URL reached at each probe: a change is a failover (or switchover).
#[derive(Debug, Default)]
pub struct PrimaryWatch {
    node: std::sync::Mutex<Option<String>>,
    failovers: AtomicU64,
}

impl PrimaryWatch {
    /// The primary answered from `node`.
    pub fn saw(&self, node: &str) {
        let Ok(mut current) = self.node.lock() else {
            return;
        };
        if current.as_deref() == Some(node) {
            return;
        }
        if let Some(old) = current.replace(node.to_owned()) {
            self.failovers.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("orderhub_failovers_total").increment(1);
            tracing::warn!(from = %old, to = %node, "the primary moved");
        }
    }

    /// The node the primary URL reached last, if known.
    pub fn current(&self) -> Option<String> {
        self.node.lock().ok().and_then(|n| n.clone())
    }

    /// How often the primary moved since the hub started.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }
}

/// How long after a write failed as on a demoted primary its pooled connections are checked.
const SUSPECT_FOR: Duration = Duration::from_secs(10);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `host:port` of a Postgres URL, as status names a node.
fn node_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
}

/// The SQLSTATE of a failed statement, when the database sent one.
fn sqlstate(e: &DbErr) -> Option<String> {
    match e {
        DbErr::Exec(sea_orm::RuntimeErr::SqlxError(err))
        | DbErr::Query(sea_orm::RuntimeErr::SqlxError(err))
        | DbErr::Conn(sea_orm::RuntimeErr::SqlxError(err)) => err
            .as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.into_owned()),
        _ => None,
    }
}

/// Whether a failed write looks like the primary moved: a read-only transaction (the node is a
/// standby now), an administrator's shutdown, a server that cannot take connections, or a lost
/// connection (class 08, or no SQLSTATE at all on a Postgres connection error).
pub fn primary_may_have_moved(e: &DbErr) -> bool {
    match sqlstate(e) {
        Some(code) => {
            matches!(code.as_str(), "25006" | "57P01" | "57P02" | "57P03") || code.starts_with("08")
        }
        None => matches!(e, DbErr::Conn(_) | DbErr::ConnectionAcquire(_)),
    }
}
/// How long a request may wait for a connection or a statement before it is answered `unavailable`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(1500);
/// The same on Postgres, where a server that is down refuses at once but sqlx keeps retrying until
/// this passes: short enough that a write reaching a down primary still answers `unavailable`
/// within 2 s (the writers then fail fast, see the writer's `DOWN_RETRY`).
const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long a query waits for the auxiliary database before it reads `aux_standby` instead.
const AUX_READ_TIMEOUT: Duration = Duration::from_millis(500);
/// After the auxiliary database failed a read, queries go straight to `aux_standby` this long.
const AUX_DOWN_FOR: Duration = Duration::from_secs(2);
/// How long an auxiliary write waits for the replica to replay it (`aux_ack_after_replica`).
const AUX_CONFIRM_WITHIN: Duration = Duration::from_secs(2);
/// Auxiliary records per statement (five bound values each).
const AUX_CHUNK: usize = 1000;

/// The primary's pool on Postgres: a new connection that reaches a server in recovery is
/// refused, and while `guard` is active each pooled connection is checked the same way
/// before use (one that is not a primary any more, or does not answer, is closed).
fn primary_options(url: &str, max: u32, guard: PrimaryGuard) -> ConnectOptions {
    let mut opt = options(url, max, false);
    if !url.starts_with("postgres") {
        return opt;
    }
    opt.map_sqlx_postgres_pool_opts(move |pool| {
        let guard = guard.clone();
        pool.after_connect(|conn, _| {
            Box::pin(async move {
                if in_recovery(conn).await? {
                    return Err(sea_orm::sqlx::Error::Configuration(
                        "the primary URL reached a standby (in recovery); the primary has moved"
                            .into(),
                    ));
                }
                Ok(())
            })
        })
        .before_acquire(move |conn, _| {
            let check = guard.active();
            Box::pin(async move {
                if !check {
                    return Ok(true);
                }
                Ok(matches!(in_recovery(conn).await, Ok(false)))
            })
        })
    });
    opt
}

async fn in_recovery(conn: &mut sea_orm::sqlx::PgConnection) -> Result<bool, sea_orm::sqlx::Error> {
    sea_orm::sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()")
        .fetch_one(conn)
        .await
}

fn options(url: &str, max: u32, read_only: bool) -> ConnectOptions {
    let mut opt = ConnectOptions::new(url.to_owned());
    opt.max_connections(max)
        .min_connections(0)
        .connect_timeout(Duration::from_secs(1))
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .idle_timeout(Duration::from_secs(60))
        .sqlx_logging(false);
    if url.starts_with("postgres") {
        opt.acquire_timeout(PG_ACQUIRE_TIMEOUT)
            .test_before_acquire(true);
    }
    opt.map_sqlx_sqlite_opts(move |o| {
        let o = o
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(false)
            .read_only(read_only);
        if read_only {
            o
        } else {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .create_if_missing(true)
        }
    });
    opt
}

/// Creates the parent directory of a `sqlite://path?...` URL, so `data/` need not exist.
fn ensure_sqlite_dir(url: &str) {
    if let Some(rest) = url.strip_prefix("sqlite://") {
        let path = rest.split('?').next().unwrap_or_default();
        if let Some(parent) = std::path::Path::new(path).parent()
            && !parent.as_os_str().is_empty()
        {
            let _ = std::fs::create_dir_all(parent);
        }
    }
}

impl Db {
    /// Connects all three pools. The primary must answer; the replica and aux pools connect lazily
    /// so a hub can start while its replica is down.
    pub async fn connect(urls: &DbUrls) -> Result<Self, DbErr> {
        ensure_sqlite_dir(&urls.primary);
        ensure_sqlite_dir(&urls.aux);
        let sqlite = urls.primary.starts_with("sqlite:");
        let guard = PrimaryGuard::default();
        // SQLite has one writer at a time: the writer actor holds the only write connection.
        let primary = Database::connect(primary_options(
            &urls.primary,
            if sqlite { 2 } else { 16 },
            guard.clone(),
        ))
        .await?;
        let replicas: Vec<&str> = urls
            .replica
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let (nodes, separate_replica) = if replicas.is_empty() {
            let node = if sqlite {
                Database::connect(options(&urls.primary, 8, true)).await?
            } else {
                primary.clone()
            };
            (vec![(node_name(&urls.primary), node)], false)
        } else {
            let per_node = (16 / replicas.len() as u32).max(4);
            let mut nodes = Vec::with_capacity(replicas.len());
            for url in replicas {
                let mut o = options(url, per_node, !url.starts_with("postgres"));
                o.connect_lazy(true);
                nodes.push((node_name(url), Database::connect(o).await?));
            }
            (nodes, true)
        };
        let reads = Arc::new(ReadSet::new(nodes, urls.max_read_lag_bytes));
        let aux = Database::connect(options(
            &urls.aux,
            if urls.aux.starts_with("sqlite:") {
                4
            } else {
                8
            },
            false,
        ))
        .await?;
        let aux_standby = match &urls.aux_standby {
            Some(url) if separate_replica => {
                let mut o = options(url, 4, false);
                o.connect_lazy(true);
                Some(Database::connect(o).await?)
            }
            _ => None,
        };
        Ok(Self {
            primary,
            reads,
            aux,
            aux_standby,
            separate_replica,
            aux_down_until: Arc::default(),
            aux_ack_after_replica: false,
            primary_guard: guard,
            primary_watch: Arc::default(),
        })
    }

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

    /// Waits until the read node has replayed everything the primary has written so far (above
    /// all the schema the migrations just made), polling until `timeout`. `false`: it has not
    /// (the replica is down or far behind); reads then answer `unavailable` until it has.
    pub async fn await_replica(&self, timeout: Duration) -> bool {
        use crate::wal::{current_lsn, replay_position};
        if !self.separate_replica {
            return true;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let target = loop {
            match current_lsn(&self.primary).await {
                Ok(lsn) => break lsn,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    tracing::warn!(error = %e, "the primary's WAL position is unknown");
                    return false;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        // Any node of the read set will do: the replication actor's probes sort out the rest.
        loop {
            for node in self.reads.nodes() {
                if let Ok(Ok(replay)) =
                    tokio::time::timeout(Duration::from_secs(1), replay_position(&node.conn)).await
                    && replay.lsn >= target
                {
                    return true;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An order, read from the read node.
    pub async fn order(&self, id: &str) -> Result<Option<orders::Model>, StoreError> {
        Ok(by_key(orders::Entity::find_by_id(id.to_owned()), self.reader()).await?)
    }

    /// An order's result, read from the read node.
    pub async fn result(&self, id: &str) -> Result<Option<order_results::Model>, StoreError> {
        Ok(by_key(
            order_results::Entity::find_by_id(id.to_owned()),
            self.reader(),
        )
        .await?)
    }

    /// Orders that have a result, with it, read from the read node.
    pub async fn settled_orders(
        &self,
        ids: &[String],
    ) -> Result<Vec<(orders::Model, order_results::Model)>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let results = order_results::Entity::find()
            .filter(order_results::Column::OrderId.is_in(ids.iter().cloned()))
            .all(self.reader())
            .await?;
        self.with_orders(ids, results).await
    }

    /// An order's late result, read from the read node.
    pub async fn late_result(&self, id: &str) -> Result<Option<order_results::Model>, StoreError> {
        Ok(by_key(
            order_late_results::Entity::find_by_id(id.to_owned()),
            self.reader(),
        )
        .await?
        .map(late_as_result))
    }

    /// Orders that have a late result, with it, read from the read node.
    pub async fn late_orders(
        &self,
        ids: &[String],
    ) -> Result<Vec<(orders::Model, order_results::Model)>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let late = order_late_results::Entity::find()
            .filter(order_late_results::Column::OrderId.is_in(ids.iter().cloned()))
            .all(self.reader())
            .await?
            .into_iter()
            .map(late_as_result)
            .collect();
        self.with_orders(ids, late).await
    }

    /// Each of `results` with its order (read node); results without one are left out.
    async fn with_orders(
        &self,
        ids: &[String],
        results: Vec<order_results::Model>,
    ) -> Result<Vec<(orders::Model, order_results::Model)>, StoreError> {
        let mut by_order: std::collections::HashMap<String, order_results::Model> = results
            .into_iter()
            .map(|r| (r.order_id.clone(), r))
            .collect();
        let orders = orders::Entity::find()
            .filter(orders::Column::Id.is_in(ids.iter().cloned()))
            .all(self.reader())
            .await?;
        Ok(orders
            .into_iter()
            .filter_map(|o| by_order.remove(&o.id).map(|r| (o, r)))
            .collect())
    }

    /// The current state of an order on the primary, with its result and late result: what its
    /// actor starts from, and what `trace` shows.
    pub async fn order_on_primary(&self, id: &str) -> Result<Option<OrderState>, StoreError> {
        let Some(order) = by_key(orders::Entity::find_by_id(id.to_owned()), &self.primary).await?
        else {
            return Ok(None);
        };
        let result = by_key(
            order_results::Entity::find_by_id(id.to_owned()),
            &self.primary,
        )
        .await?;
        let late = by_key(
            order_late_results::Entity::find_by_id(id.to_owned()),
            &self.primary,
        )
        .await?
        .map(late_as_result);
        Ok(Some(OrderState {
            order,
            result,
            late,
        }))
    }

    /// Whether the primary holds an order under `(user_id, request_id)`: a retried submit is
    /// answered as one even while its partner is at `max_pending`.
    pub async fn key_used(&self, user_id: &str, request_id: &str) -> Result<bool, StoreError> {
        let found = by_key(
            orders::Entity::find()
                .filter(orders::Column::UserId.eq(user_id))
                .filter(orders::Column::RequestId.eq(request_id)),
            &self.primary,
        )
        .await?;
        Ok(found.is_some())
    }

    /// An order's transitions, oldest first, and its outbox events, oldest first (primary).
    pub async fn story(
        &self,
        id: &str,
    ) -> Result<(Vec<order_transitions::Model>, Vec<outbox::Model>), StoreError> {
        let transitions = order_transitions::Entity::find()
            .filter(order_transitions::Column::OrderId.eq(id))
            .order_by_asc(order_transitions::Column::Version)
            .all(&self.primary)
            .await?;
        let events = outbox::Entity::find()
            .filter(outbox::Column::OrderId.eq(id))
            .order_by_asc(outbox::Column::Id)
            .all(&self.primary)
            .await?;
        Ok((transitions, events))
    }

    /// Of `ids`, the orders whose result event is out and that are not settled yet, with their
    /// result's outcome (primary).
    pub async fn unsettled(
        &self,
        ids: &[String],
    ) -> Result<Vec<(orders::Model, String)>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let orders = orders::Entity::find()
            .filter(orders::Column::Id.is_in(ids.iter().cloned()))
            .filter(orders::Column::SettledAt.is_null())
            .filter(orders::Column::Version.gte(crate::protocol::OrderStatus::Notified.version()))
            .all(&self.primary)
            .await?;
        if orders.is_empty() {
            return Ok(Vec::new());
        }
        let mut outcomes: std::collections::HashMap<String, String> = order_results::Entity::find()
            .filter(order_results::Column::OrderId.is_in(orders.iter().map(|o| o.id.clone())))
            .all(&self.primary)
            .await?
            .into_iter()
            .map(|r| (r.order_id, r.outcome))
            .collect();
        Ok(orders
            .into_iter()
            .filter_map(|o| outcomes.remove(&o.id).map(|outcome| (o, outcome)))
            .collect())
    }

    /// A page of unsettled orders whose result event is out, by id after `after` (primary).
    pub async fn unsettled_page(
        &self,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<String>, StoreError> {
        let mut q = orders::Entity::find()
            .select_only()
            .column(orders::Column::Id)
            .filter(orders::Column::SettledAt.is_null())
            .filter(orders::Column::Version.gte(crate::protocol::OrderStatus::Notified.version()));
        if let Some(after) = after {
            q = q.filter(orders::Column::Id.gt(after));
        }
        Ok(q.order_by_asc(orders::Column::Id)
            .limit(limit)
            .into_tuple::<String>()
            .all(&self.primary)
            .await?)
    }

    /// Each order's auxiliary records, as `system → status` (auxiliary database).
    pub async fn aux_statuses(
        &self,
        ids: &[String],
    ) -> Result<
        std::collections::HashMap<String, std::collections::BTreeMap<String, String>>,
        StoreError,
    > {
        let mut out: std::collections::HashMap<String, std::collections::BTreeMap<String, String>> =
            std::collections::HashMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        for r in aux_records::Entity::find()
            .filter(aux_records::Column::OrderId.is_in(ids.iter().cloned()))
            .all(&self.aux)
            .await?
        {
            out.entry(r.order_id)
                .or_default()
                .insert(r.system, r.status);
        }
        Ok(out)
    }

    /// A page of a user's orders, newest first, strictly older than `before`.
    pub async fn orders_of(
        &self,
        user_id: &str,
        limit: u64,
        before: Option<&str>,
    ) -> Result<Vec<orders::Model>, StoreError> {
        let mut q = orders::Entity::find().filter(orders::Column::UserId.eq(user_id));
        if let Some(before) = before {
            q = q.filter(orders::Column::Id.lt(before));
        }
        Ok(q.order_by_desc(orders::Column::Id)
            .limit(limit)
            .all(self.reader())
            .await?)
    }

    /// Every auxiliary record of an order, by system name: from the auxiliary database, or while
    /// it does not answer, from its copy on the replica (`aux_standby`) when there is one.
    pub async fn aux_records(&self, order_id: &str) -> Result<Vec<aux_records::Model>, StoreError> {
        let Some(standby) = &self.aux_standby else {
            return aux_records_on(&self.aux, order_id).await;
        };
        let now = epoch_ms();
        if self.aux_down_until.load(Ordering::Relaxed) <= now {
            match tokio::time::timeout(AUX_READ_TIMEOUT, aux_records_on(&self.aux, order_id)).await
            {
                Ok(Ok(records)) => return Ok(records),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "auxiliary database failed; reading its replica copy")
                }
                Err(_) => {
                    tracing::warn!("auxiliary database did not answer; reading its replica copy")
                }
            }
            self.aux_down_until
                .store(now + AUX_DOWN_FOR.as_millis() as u64, Ordering::Relaxed);
        }
        aux_records_on(standby, order_id).await
    }

    /// Stores or replaces records in the auxiliary database, in one transaction; with
    /// [`Db::aux_ack_after_replica`], returns only once the replica has replayed it
    /// ([`StoreError::Unconfirmed`] if it has not within [`AUX_CONFIRM_WITHIN`]: the write
    /// stays, and writing it again is harmless).
    pub async fn upsert_aux(&self, records: Vec<aux_records::Model>) -> Result<(), StoreError> {
        use sea_orm::sea_query::OnConflict;
        use sea_orm::{IntoActiveModel, TransactionTrait};
        if records.is_empty() {
            return Ok(());
        }
        // One record per (order, system) in a statement: Postgres refuses to update a row twice
        // in one INSERT … ON CONFLICT. The last one wins, as it would one after the other.
        let mut latest: std::collections::HashMap<(String, String), aux_records::Model> =
            std::collections::HashMap::with_capacity(records.len());
        for r in records {
            latest.insert((r.order_id.clone(), r.system.clone()), r);
        }
        let records: Vec<aux_records::Model> = latest.into_values().collect();
        let txn = self.aux.begin().await?;
        for chunk in records.chunks(AUX_CHUNK) {
            aux_records::Entity::insert_many(chunk.iter().cloned().map(|r| r.into_active_model()))
                .on_conflict(
                    OnConflict::columns([
                        aux_records::Column::OrderId,
                        aux_records::Column::System,
                    ])
                    .update_columns([
                        aux_records::Column::Status,
                        aux_records::Column::Data,
                        aux_records::Column::UpdatedAt,
                    ])
                    .to_owned(),
                )
                .exec_without_returning(&txn)
                .await?;
        }
        txn.commit().await?;
        self.confirm_aux().await
    }

    /// Waits until every node of the read set has replayed every auxiliary write made so far,
    /// when [`Db::aux_ack_after_replica`] asks for it. The auxiliary database lives on the
    /// primary's server then (`aux_standby` is its copy), so its writes travel in the same WAL as
    /// the orders' and the read nodes' replay positions tell.
    async fn confirm_aux(&self) -> Result<(), StoreError> {
        use crate::wal::current_lsn;
        if self.aux_standby.is_none() || !self.aux_ack_after_replica {
            return Ok(());
        }
        let target = current_lsn(&self.aux)
            .await
            .map_err(|e| StoreError::Unavailable(DbErr::Custom(e)))?;
        let deadline = tokio::time::Instant::now() + AUX_CONFIRM_WITHIN;
        let mut pause = Duration::from_millis(1);
        loop {
            match tokio::time::timeout(Duration::from_millis(500), self.reads.replayed(target))
                .await
            {
                Ok(true) => return Ok(()),
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(StoreError::Unconfirmed);
                }
                _ => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        }
    }

    /// Outbox rows not yet published, oldest first.
    pub async fn unpublished(&self, limit: u64) -> Result<Vec<outbox::Model>, StoreError> {
        Ok(outbox::Entity::find()
            .filter(outbox::Column::PublishedAt.is_null())
            .order_by_asc(outbox::Column::Id)
            .limit(limit)
            .all(&self.primary)
            .await?)
    }

    /// How many outbox rows wait to be published.
    pub async fn outbox_pending(&self) -> Result<u64, StoreError> {
        Ok(outbox::Entity::find()
            .filter(outbox::Column::PublishedAt.is_null())
            .count(&self.primary)
            .await?)
    }

    /// How old the oldest unpublished outbox row is, in ms (primary); `None` when there is none.
    pub async fn outbox_oldest_ms(&self) -> Result<Option<u64>, StoreError> {
        let oldest = outbox::Entity::find()
            .filter(outbox::Column::PublishedAt.is_null())
            .order_by_asc(outbox::Column::CreatedAt)
            .limit(1)
            .one(&self.primary)
            .await?;
        Ok(oldest.map(|row| {
            (chrono::Utc::now() - row.created_at)
                .num_milliseconds()
                .max(0) as u64
        }))
    }

    /// Whether a synchronous standby is attached to the primary (`pg_stat_replication`);
    /// `None` on SQLite, when the primary does not answer, or when the hub's login may not see
    /// the standbys' sync state (it needs `pg_read_all_stats` or to be their replication user).
    pub async fn sync_standby(&self) -> Option<bool> {
        if self.backend() != DbBackend::Postgres {
            return None;
        }
        let row = self
            .primary
            .query_one_raw(sea_orm::Statement::from_string(
                DbBackend::Postgres,
                "SELECT count(*) FILTER (WHERE sync_state IN ('sync', 'quorum')) AS sync, \
                 count(*) FILTER (WHERE sync_state IS NULL) AS hidden FROM pg_stat_replication",
            ))
            .await
            .ok()??;
        let sync: i64 = row.try_get("", "sync").ok()?;
        let hidden: i64 = row.try_get("", "hidden").ok()?;
        if sync > 0 {
            Some(true)
        } else if hidden > 0 {
            None
        } else {
            Some(false)
        }
    }

    /// Of each of these partners, the accepted orders that have no result yet (primary): one
    /// range of `ix_orders_pending` each.
    pub async fn pending_counts(
        &self,
        partners: impl IntoIterator<Item = &str>,
    ) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        let mut counts = std::collections::HashMap::new();
        for partner in partners {
            let n = orders::Entity::find()
                .filter(orders::Column::PartnerId.eq(partner))
                .filter(
                    orders::Column::Version
                        .lt(crate::protocol::OrderStatus::ResultStored.version()),
                )
                .count(&self.primary)
                .await?;
            counts.insert(partner.to_owned(), n);
        }
        Ok(counts)
    }

    /// Orders whose partner missed the deadline, soonest first.
    pub async fn overdue(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        limit: u64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(orders::Entity::find()
            .select_only()
            .column(orders::Column::Id)
            .filter(orders::Column::Status.eq(crate::protocol::OrderStatus::Dispatched.as_str()))
            .filter(orders::Column::ResultDeadline.lte(now))
            .order_by_asc(orders::Column::ResultDeadline)
            .limit(limit)
            .into_tuple::<String>()
            .all(&self.primary)
            .await?)
    }

    /// `true` when the pool answers a trivial query within the acquire timeout.
    pub async fn ping(conn: &DatabaseConnection) -> bool {
        let backend = conn.get_database_backend();
        let q = sea_orm::Statement::from_string(backend, "SELECT 1");
        tokio::time::timeout(ACQUIRE_TIMEOUT, conn.query_one_raw(q))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
    }
}

/// A late result has the columns of a result.
/// The row a unique key selects. `.one()` would add a bound `LIMIT ?`, which SQLite plans by
/// its value, so the statement is prepared again on every call; a key lookup needs no limit.
pub(crate) async fn by_key<E: EntityTrait>(
    select: Select<E>,
    db: &impl ConnectionTrait,
) -> Result<Option<E::Model>, DbErr> {
    Ok(select.all(db).await?.into_iter().next())
}

fn late_as_result(r: order_late_results::Model) -> order_results::Model {
    order_results::Model {
        order_id: r.order_id,
        result_id: r.result_id,
        outcome: r.outcome,
        partner_ref: r.partner_ref,
        detail: r.detail,
        received_at: r.received_at,
    }
}

/// An order as the primary has it, with its result and late result.
#[derive(Clone, Debug)]
pub struct OrderState {
    pub order: orders::Model,
    pub result: Option<order_results::Model>,
    pub late: Option<order_results::Model>,
}

async fn aux_records_on(
    conn: &DatabaseConnection,
    order_id: &str,
) -> Result<Vec<aux_records::Model>, StoreError> {
    Ok(aux_records::Entity::find()
        .filter(aux_records::Column::OrderId.eq(order_id))
        .order_by_asc(aux_records::Column::System)
        .all(conn)
        .await?)
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
