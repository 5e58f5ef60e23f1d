//! The databases: the primary (written only by the [`crate::writer`] actors), the read node
//! (replica, or a read-only pool on the SQLite file), and the auxiliary database; plus every read
//! the endpoints and subscribers make.

use std::time::Duration;

use entities::{aux_records, order_results, orders, outbox};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};

/// What callers of the store see when a database does not answer as it should.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or refused the statement: the caller answers `unavailable`.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] DbErr),
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
    /// Empty: the read node is a read-only pool on the primary (SQLite) or the primary itself.
    pub replica: String,
    pub aux: String,
}

/// The hub's three connection pools.
#[derive(Clone, Debug)]
pub struct Db {
    pub primary: DatabaseConnection,
    pub replica: DatabaseConnection,
    pub aux: DatabaseConnection,
    /// `true` when the read node is a separate Postgres streaming replica.
    pub separate_replica: bool,
}

/// How long a request may wait for a connection or a statement before it is answered `unavailable`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(1500);

fn options(url: &str, max: u32, read_only: bool) -> ConnectOptions {
    let mut opt = ConnectOptions::new(url.to_owned());
    opt.max_connections(max)
        .min_connections(0)
        .connect_timeout(Duration::from_secs(1))
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .idle_timeout(Duration::from_secs(60))
        .sqlx_logging(false);
    if url.starts_with("postgres") {
        opt.test_before_acquire(true);
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
        if let Some(parent) = std::path::Path::new(path).parent() {
            if !parent.as_os_str().is_empty() {
                let _ = std::fs::create_dir_all(parent);
            }
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
        // SQLite has one writer at a time: the writer actor holds the only write connection.
        let primary = Database::connect(options(&urls.primary, if sqlite { 2 } else { 16 }, false)).await?;
        let (replica, separate_replica) = if urls.replica.is_empty() {
            if sqlite {
                (Database::connect(options(&urls.primary, 8, true)).await?, false)
            } else {
                (primary.clone(), false)
            }
        } else {
            let mut o = options(&urls.replica, 16, !urls.replica.starts_with("postgres"));
            o.connect_lazy(true);
            (Database::connect(o).await?, true)
        };
        let aux = Database::connect(options(&urls.aux, if urls.aux.starts_with("sqlite:") { 4 } else { 8 }, false)).await?;
        Ok(Self { primary, replica, aux, separate_replica })
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

    /// An order, read from the read node.
    pub async fn order(&self, id: &str) -> Result<Option<orders::Model>, StoreError> {
        Ok(orders::Entity::find_by_id(id.to_owned()).one(&self.replica).await?)
    }

    /// An order's result, read from the read node.
    pub async fn result(&self, id: &str) -> Result<Option<order_results::Model>, StoreError> {
        Ok(order_results::Entity::find_by_id(id.to_owned()).one(&self.replica).await?)
    }

    /// Orders that have a result, with it, read from the read node.
    pub async fn settled_orders(
        &self,
        ids: &[String],
    ) -> Result<Vec<(orders::Model, order_results::Model)>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let orders = orders::Entity::find()
            .filter(orders::Column::Id.is_in(ids.iter().cloned()))
            .all(&self.replica)
            .await?;
        let mut results: std::collections::HashMap<String, order_results::Model> = order_results::Entity::find()
            .filter(order_results::Column::OrderId.is_in(ids.iter().cloned()))
            .all(&self.replica)
            .await?
            .into_iter()
            .map(|r| (r.order_id.clone(), r))
            .collect();
        Ok(orders.into_iter().filter_map(|o| results.remove(&o.id).map(|r| (o, r))).collect())
    }

    /// The current state of an order on the primary: what its writer starts from.
    pub async fn order_on_primary(
        &self,
        id: &str,
    ) -> Result<Option<(orders::Model, Option<order_results::Model>)>, StoreError> {
        let Some(order) = orders::Entity::find_by_id(id.to_owned()).one(&self.primary).await? else {
            return Ok(None);
        };
        let result = order_results::Entity::find_by_id(id.to_owned()).one(&self.primary).await?;
        Ok(Some((order, result)))
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
        Ok(q.order_by_desc(orders::Column::Id).limit(limit).all(&self.replica).await?)
    }

    /// Every auxiliary record of an order, by system name.
    pub async fn aux_records(&self, order_id: &str) -> Result<Vec<aux_records::Model>, StoreError> {
        Ok(aux_records::Entity::find()
            .filter(aux_records::Column::OrderId.eq(order_id))
            .order_by_asc(aux_records::Column::System)
            .all(&self.aux)
            .await?)
    }

    /// Stores or replaces records in the auxiliary database, in one transaction.
    pub async fn upsert_aux(&self, records: Vec<aux_records::Model>) -> Result<(), StoreError> {
        use sea_orm::sea_query::OnConflict;
        use sea_orm::{IntoActiveModel, TransactionTrait};
        if records.is_empty() {
            return Ok(());
        }
        let txn = self.aux.begin().await?;
        for r in records {
            aux_records::Entity::insert(r.into_active_model())
                .on_conflict(
                    OnConflict::columns([aux_records::Column::OrderId, aux_records::Column::System])
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
        Ok(())
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
