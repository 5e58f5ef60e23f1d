//! Migrations for both databases, applied in order and recorded in `orderhub_migrations`.
//!
//! Each step is idempotent (`IF NOT EXISTS`), so several hub instances starting at once against the
//! same Postgres converge instead of failing.

use sea_orm::sea_query::{Index, TableCreateStatement};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, Schema};

use crate::constraints;
use crate::entity::{aux_records, order_results, orders, outbox};

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
}

/// One migration: a name and the statements that make it.
struct Step {
    name: &'static str,
    build: fn(DbBackend) -> Vec<String>,
}

const ORDER_STEPS: &[Step] = &[Step {
    name: "0001_orders_results_outbox",
    build: order_schema,
}];

const AUX_STEPS: &[Step] = &[Step {
    name: "0001_aux_records",
    build: aux_schema,
}];

/// Applies the migrations of the order database and of the auxiliary database.
pub struct Migrator;

impl Migrator {
    /// Brings the order database (primary) up to date.
    pub async fn up(db: &DatabaseConnection) -> Result<Vec<&'static str>, MigrationError> {
        apply(db, ORDER_STEPS).await
    }

    /// Brings the auxiliary database up to date.
    pub async fn up_aux(db: &DatabaseConnection) -> Result<Vec<&'static str>, MigrationError> {
        apply(db, AUX_STEPS).await
    }
}

async fn apply(
    db: &DatabaseConnection,
    steps: &[Step],
) -> Result<Vec<&'static str>, MigrationError> {
    let backend = db.get_database_backend();
    let ledger = "CREATE TABLE IF NOT EXISTS orderhub_migrations \
                  (name VARCHAR(128) PRIMARY KEY, applied_at VARCHAR(64) NOT NULL)";
    db.execute_unprepared(ledger)
        .await
        .map_err(|source| MigrationError::Step {
            step: "ledger",
            source,
        })?;
    let mut applied = Vec::new();
    for step in steps {
        let done = db
            .query_one_raw(sea_orm::Statement::from_sql_and_values(
                backend,
                match backend {
                    DbBackend::Postgres => "SELECT name FROM orderhub_migrations WHERE name = $1",
                    _ => "SELECT name FROM orderhub_migrations WHERE name = ?",
                },
                [step.name.into()],
            ))
            .await
            .map_err(|source| MigrationError::Step {
                step: step.name,
                source,
            })?
            .is_some();
        if done {
            continue;
        }
        for sql in (step.build)(backend) {
            db.execute_unprepared(&sql)
                .await
                .map_err(|source| MigrationError::Step {
                    step: step.name,
                    source,
                })?;
        }
        let record = format!(
            "INSERT INTO orderhub_migrations (name, applied_at) VALUES ('{}', '{}') \
             ON CONFLICT (name) DO NOTHING",
            step.name,
            chrono::Utc::now().to_rfc3339()
        );
        db.execute_unprepared(&record)
            .await
            .map_err(|source| MigrationError::Step {
                step: step.name,
                source,
            })?;
        tracing::info!(step = step.name, "migration applied");
        applied.push(step.name);
    }
    Ok(applied)
}

fn create<E: EntityTrait>(backend: DbBackend, entity: E) -> String {
    let mut table: TableCreateStatement = Schema::new(backend).create_table_from_entity(entity);
    backend.build(table.if_not_exists()).to_string()
}

fn order_schema(backend: DbBackend) -> Vec<String> {
    vec![
        create(backend, orders::Entity),
        create(backend, order_results::Entity),
        create(backend, outbox::Entity),
        backend
            .build(
                Index::create()
                    .if_not_exists()
                    .name(constraints::ORDERS_USER_REQUEST)
                    .table(orders::Entity)
                    .col(orders::Column::UserId)
                    .col(orders::Column::RequestId)
                    .unique(),
            )
            .to_string(),
        backend
            .build(
                Index::create()
                    .if_not_exists()
                    .name("ix_orders_user_id")
                    .table(orders::Entity)
                    .col(orders::Column::UserId)
                    .col(orders::Column::Id),
            )
            .to_string(),
        backend
            .build(
                Index::create()
                    .if_not_exists()
                    .name("ix_orders_deadline")
                    .table(orders::Entity)
                    .col(orders::Column::Status)
                    .col(orders::Column::ResultDeadline),
            )
            .to_string(),
        backend
            .build(
                Index::create()
                    .if_not_exists()
                    .name("ix_outbox_unpublished")
                    .table(outbox::Entity)
                    .col(outbox::Column::PublishedAt)
                    .col(outbox::Column::Id),
            )
            .to_string(),
    ]
}

fn aux_schema(backend: DbBackend) -> Vec<String> {
    vec![create(backend, aux_records::Entity)]
}
