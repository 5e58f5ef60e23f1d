//! The databases: the primary (written only by the writer actors), the read nodes (the
//! [`ReadSet`] of standbys, or a read-only pool on the SQLite file), and the auxiliary database;
//! plus every read the endpoints and subscribers make, by concern:
//!
//! - [`connect`]: the pools, and how the primary's pool follows the primary when it moves;
//! - [`orders`]: orders, results and the outbox, as the order actors, the settler, the deadline
//!   actor, the relay's sweep, `get`, `query` and `trace` read them;
//! - [`aux`]: the auxiliary records.

mod aux;
mod connect;
mod orders;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::readset::ReadSet;

use entities::orders as order_rows;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, Select};

pub use connect::{PrimaryGuard, PrimaryWatch, primary_may_have_moved};
pub use orders::{OrderState, RecordFacts, Results, Unsettled};

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

/// The column of `orders` that holds when an order reached `status`.
pub fn status_time_column(status: crate::protocol::OrderStatus) -> order_rows::Column {
    use crate::protocol::OrderStatus::*;
    match status {
        Accepted => order_rows::Column::CreatedAt,
        Dispatched => order_rows::Column::DispatchedAt,
        ResultStored => order_rows::Column::ResultStoredAt,
        Notified => order_rows::Column::NotifiedAt,
        LateResultStored => order_rows::Column::LateResultStoredAt,
        LateNotified => order_rows::Column::LateNotifiedAt,
    }
}
