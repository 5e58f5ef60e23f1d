//! Migrations for both databases, applied in order and recorded in `orderhub_migrations`.
//!
//! Each step is literal SQL per backend, in `entities/migrations/<database>/<step>.<backend>.sql`,
//! frozen as it was written: a later change to an entity is a new step, never an edit of an old
//! one, so a database made by any earlier release migrates to today's schema.
//!
//! A step runs in one transaction together with its ledger row; on Postgres that transaction first
//! takes an advisory lock, and on SQLite it begins `IMMEDIATE` (the single writer), so of several
//! hub instances starting at once against one database exactly one applies each step and the
//! others find it recorded.

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
};

/// What `migrate` reports when it cannot bring a database up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The database refused a migration step; the step's name is given.
    #[error("migration `{step}` failed: {source}")]
    Step {
        step: &'static str,
        #[source]
        source: DbErr,
    },
    /// [`Migrator::up_to`] was asked for a step the order database does not have.
    #[error("no migration step `{0}`")]
    UnknownStep(String),
}

/// One migration: its name in the ledger and its SQL for each backend.
struct Step {
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

impl Step {
    fn sql(&self, backend: DbBackend) -> &'static str {
        match backend {
            DbBackend::Postgres => self.postgres,
            _ => self.sqlite,
        }
    }
}

/// The step `$name` of database `$db`: `migrations/$db/$name.sqlite.sql` and `.postgres.sql`.
macro_rules! step {
    ($db:literal, $name:literal) => {
        Step {
            name: $name,
            sqlite: include_str!(concat!("../migrations/", $db, "/", $name, ".sqlite.sql")),
            postgres: include_str!(concat!("../migrations/", $db, "/", $name, ".postgres.sql")),
        }
    };
}

const ORDER_STEPS: &[Step] = &[
    step!("orders", "0001_orders_results_outbox"),
    step!("orders", "0002_transitions_late_results_settled"),
    step!("orders", "0003_unsettled_by_id"),
    step!("orders", "0004_pending_by_partner"),
    step!("orders", "0005_story_in_the_order"),
    step!("orders", "0006_partial_indexes"),
    step!("orders", "0007_order_state"),
    step!("orders", "0008_settleable_ids"),
];

const AUX_STEPS: &[Step] = &[step!("aux", "0001_aux_records")];

/// The ledger of applied steps, the same in every release.
const LEDGER: &str = "CREATE TABLE IF NOT EXISTS orderhub_migrations \
                      (name VARCHAR(128) PRIMARY KEY, applied_at VARCHAR(64) NOT NULL)";

/// The Postgres advisory lock every migration transaction takes ("orderhub" in ASCII).
const PG_LOCK: i64 = 0x6f72_6465_7268_7562;

/// Applies the migrations of the order database and of the auxiliary database.
pub struct Migrator;

impl Migrator {
    /// Brings the order database (primary) up to date. Returns the steps it applied.
    pub async fn up(db: &DatabaseConnection) -> Result<Vec<&'static str>, MigrationError> {
        apply(db, ORDER_STEPS).await
    }

    /// Brings the order database up to step `last` (included) and no further: a database as the
    /// release that ended with `last` left it.
    pub async fn up_to(
        db: &DatabaseConnection,
        last: &str,
    ) -> Result<Vec<&'static str>, MigrationError> {
        let end = ORDER_STEPS
            .iter()
            .position(|s| s.name == last)
            .ok_or_else(|| MigrationError::UnknownStep(last.to_owned()))?;
        apply(db, &ORDER_STEPS[..=end]).await
    }

    /// Brings the auxiliary database up to date. Returns the steps it applied.
    pub async fn up_aux(db: &DatabaseConnection) -> Result<Vec<&'static str>, MigrationError> {
        apply(db, AUX_STEPS).await
    }
}

async fn apply(
    db: &DatabaseConnection,
    steps: &[Step],
) -> Result<Vec<&'static str>, MigrationError> {
    let mut applied = Vec::new();
    for step in steps {
        let failed = |source| MigrationError::Step {
            step: step.name,
            source,
        };
        let txn = locked(db).await.map_err(failed)?;
        if recorded(&txn, step.name).await.map_err(failed)? {
            txn.commit().await.map_err(failed)?;
            continue;
        }
        txn.execute_unprepared(step.sql(db.get_database_backend()))
            .await
            .map_err(failed)?;
        record(&txn, step.name).await.map_err(failed)?;
        txn.commit().await.map_err(failed)?;
        tracing::info!(step = step.name, "migration applied");
        applied.push(step.name);
    }
    Ok(applied)
}

/// A transaction no other migrating instance runs at the same time, with the ledger in place.
async fn locked(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    let txn = db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?;
    if db.get_database_backend() == DbBackend::Postgres {
        txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({PG_LOCK})"))
            .await?;
    }
    txn.execute_unprepared(LEDGER).await?;
    Ok(txn)
}

async fn recorded(txn: &DatabaseTransaction, name: &str) -> Result<bool, DbErr> {
    let backend = txn.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => "SELECT name FROM orderhub_migrations WHERE name = $1",
        _ => "SELECT name FROM orderhub_migrations WHERE name = ?",
    };
    Ok(txn
        .query_one_raw(Statement::from_sql_and_values(backend, sql, [name.into()]))
        .await?
        .is_some())
}

async fn record(txn: &DatabaseTransaction, name: &str) -> Result<(), DbErr> {
    let backend = txn.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => "INSERT INTO orderhub_migrations (name, applied_at) VALUES ($1, $2)",
        _ => "INSERT INTO orderhub_migrations (name, applied_at) VALUES (?, ?)",
    };
    let at = chrono::Utc::now().to_rfc3339();
    txn.execute_raw(Statement::from_sql_and_values(
        backend,
        sql,
        [name.into(), at.into()],
    ))
    .await?;
    Ok(())
}
