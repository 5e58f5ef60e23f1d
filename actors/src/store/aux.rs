//! The auxiliary records: written by the built-in auxiliary systems and the external systems'
//! `record` endpoint, read by the settler, `get` and `trace`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use entities::aux_records;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};

use super::{Db, StoreError, local, shapes};

/// How long a query waits for the auxiliary database before it reads `aux_standby` instead.
const AUX_READ_TIMEOUT: Duration = Duration::from_millis(500);
/// After the auxiliary database failed a read, queries go straight to `aux_standby` this long.
const AUX_DOWN_FOR: Duration = Duration::from_secs(2);

impl Db {
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
        if let Some(local) = &self.local.aux_reads {
            let sql = "SELECT order_id, system, status FROM aux_records \
                 WHERE order_id IN (SELECT value FROM json_each(?1))";
            let read = local.rows(sql, ids, Vec::new(), |row| {
                Ok((row.get::<_, String>(0)?, row.get(1)?, row.get(2)?))
            });
            if let Some(read) = read.await {
                for (order_id, system, status) in read? {
                    out.entry(order_id).or_default().insert(system, status);
                }
                return Ok(out);
            }
        }
        let rows: Vec<(String, String, String)> = shapes::rows_by_key(
            &self.aux,
            ("aux_records", &["order_id", "system", "status"]),
            "order_id",
            ids,
            &[],
        )
        .await?;
        for (order_id, system, status) in rows {
            out.entry(order_id).or_default().insert(system, status);
        }
        Ok(out)
    }

    /// Every auxiliary record of an order, by system name: from the auxiliary database (on its
    /// own connection when it is a SQLite file), or while it does not answer, from its copy on
    /// the replica (`aux_standby`) when there is one.
    pub async fn aux_records(&self, order_id: &str) -> Result<Vec<aux_records::Model>, StoreError> {
        if let Some(local) = &self.local.aux_reads {
            let sql = format!(
                "SELECT {} FROM aux_records WHERE order_id IN (SELECT value FROM json_each(?1)) \
                 ORDER BY system",
                local::AUX_COLUMNS
            );
            let read = local
                .rows(sql, &[order_id.to_owned()], Vec::new(), local::aux_row)
                .await;
            if let Some(records) = local::decoded(read)? {
                return Ok(records);
            }
        }
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

    /// Stores or replaces records in the auxiliary database, in one transaction, each kind of
    /// statement of one shape ([`shapes::inserts`]). Waiting for the replica to replay the write,
    /// where that is asked, is the caller's: the auxiliary systems' `upsert`.
    pub async fn upsert_aux(&self, records: Vec<aux_records::Model>) -> Result<(), StoreError> {
        use sea_orm::sea_query::OnConflict;
        use sea_orm::{ConnectionTrait, TransactionTrait};
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
        let rows: Vec<&aux_records::Model> = records.iter().collect();
        let conflict =
            OnConflict::columns([aux_records::Column::OrderId, aux_records::Column::System])
                .update_columns([
                    aux_records::Column::Status,
                    aux_records::Column::Data,
                    aux_records::Column::UpdatedAt,
                ])
                .to_owned();
        let statements = shapes::inserts::<aux_records::Entity>(
            self.aux.get_database_backend(),
            &rows,
            Some(&conflict),
            None,
        )?;
        let statements = std::sync::Arc::new(statements);
        if let Some(local) = &self.local.aux_writes {
            let batch = statements.clone();
            let write = local.run(move |c| {
                let txn = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                for stmt in batch.iter() {
                    local::execute(&txn, stmt)?;
                }
                txn.commit()
            });
            if let Some(write) = write.await {
                return Ok(write?);
            }
        }
        let txn = self.aux.begin().await?;
        for stmt in statements.iter() {
            txn.execute_raw(stmt.clone()).await?;
        }
        txn.commit().await?;
        Ok(())
    }
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
