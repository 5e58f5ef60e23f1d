//! Orders, their results and their outbox events: what the order actors, the settler, the
//! deadline actor, the replication actor's sweep, `get`, `query` and `trace` read.

use entities::{order_facts, order_results, orders, outbox};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, DbBackend, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    QueryTrait, Select, Statement,
};

use super::{Db, StoreError, by_key, local, shapes};
use crate::lifecycle;
use crate::protocol::OrderStatus;
use std::collections::HashMap;

impl Db {
    /// An order, read from the read node.
    pub async fn order(&self, id: &str) -> Result<Option<orders::Model>, StoreError> {
        if self.local.orders.is_some() {
            return Ok(self.orders_by_ids(&[id.to_owned()]).await?.pop());
        }
        Ok(by_key(orders::Entity::find_by_id(id.to_owned()), self.reader()).await?)
    }

    /// The orders of `ids` that exist, read from the read node.
    pub async fn orders_by_ids(&self, ids: &[String]) -> Result<Vec<orders::Model>, StoreError> {
        if let Some(local) = &self.local.orders {
            let sql = format!(
                "SELECT {} FROM orders WHERE id IN (SELECT value FROM json_each(?1))",
                local::ORDER_COLUMNS
            );
            let read = local.rows(sql, ids, Vec::new(), local::order_row).await;
            if let Some(orders) = local::decoded(read)? {
                return Ok(orders);
            }
        }
        Ok(orders::Entity::find()
            .filter(shapes::id_in(self.backend(), orders::Column::Id, ids))
            .all(self.reader())
            .await?)
    }

    /// The orders of `ids` that exist, read from the read node: their ids, from the submitted
    /// fields alone.
    pub async fn known_ids(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        if let Some(local) = &self.local.orders {
            let sql = "SELECT id FROM order_facts WHERE id IN (SELECT value FROM json_each(?1))";
            let read = local.rows(sql, ids, Vec::new(), |row| row.get(0)).await;
            if let Some(read) = read {
                return Ok(read?);
            }
        }
        Ok(order_facts::Entity::find()
            .select_only()
            .column(order_facts::Column::Id)
            .filter(shapes::id_in(self.backend(), order_facts::Column::Id, ids))
            .into_tuple()
            .all(self.reader())
            .await?)
    }

    /// An order's result and late result, read from the read node.
    pub async fn results(&self, id: &str) -> Result<Results, StoreError> {
        if let Some(local) = &self.local.orders {
            let sql = format!(
                "SELECT {} FROM order_results WHERE order_id IN (SELECT value FROM json_each(?1))",
                local::RESULT_COLUMNS
            );
            let read = local
                .rows(sql, &[id.to_owned()], Vec::new(), local::result_row)
                .await;
            if let Some(rows) = local::decoded(read)? {
                return Ok(Results::from_rows(rows));
            }
        }
        let rows = order_results::Entity::find()
            .filter(order_results::Column::OrderId.eq(id))
            .all(self.reader())
            .await?;
        Ok(Results::from_rows(rows))
    }

    /// What a built-in auxiliary system needs of each order of `ids` that has a result (the
    /// late one with `late`), read from the read node: only those columns, nothing parsed, and
    /// from the order's submitted fields alone (`order_facts`), which never change.
    pub async fn with_results(
        &self,
        ids: &[String],
        late: bool,
    ) -> Result<Vec<RecordFacts>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(local) = &self.local.orders {
            let sql = "SELECT o.id, o.amount_minor, o.currency, r.outcome, r.result_id \
                 FROM order_facts o JOIN order_results r ON r.order_id = o.id \
                 WHERE o.id IN (SELECT value FROM json_each(?1)) AND r.late = ?2";
            let late = vec![local::Sql::Integer(i64::from(late))];
            let read = local.rows(sql, ids, late, |row| {
                Ok(RecordFacts {
                    order_id: row.get(0)?,
                    amount_minor: row.get(1)?,
                    currency: row.get(2)?,
                    outcome: row.get(3)?,
                    result_id: row.get(4)?,
                })
            });
            if let Some(read) = read.await {
                return Ok(read?);
            }
        }
        let mut by_order: HashMap<String, (String, String)> =
            shapes::rows_by_key::<(String, String, String), _>(
                self.reader(),
                ("order_results", &["order_id", "outcome", "result_id"]),
                "order_id",
                ids,
                &[("late", late.into())],
            )
            .await?
            .into_iter()
            .map(|(id, outcome, result_id)| (id, (outcome, result_id)))
            .collect();
        let orders: Vec<(String, i64, String)> = order_facts::Entity::find()
            .select_only()
            .columns([
                order_facts::Column::Id,
                order_facts::Column::AmountMinor,
                order_facts::Column::Currency,
            ])
            .filter(shapes::id_in(self.backend(), order_facts::Column::Id, ids))
            .into_tuple()
            .all(self.reader())
            .await?;
        Ok(orders
            .into_iter()
            .filter_map(|(order_id, amount_minor, currency)| {
                let (outcome, result_id) = by_order.remove(&order_id)?;
                Some(RecordFacts {
                    order_id,
                    amount_minor,
                    currency,
                    outcome,
                    result_id,
                })
            })
            .collect())
    }

    /// The current state of an order on the primary, with its result and late result: what its
    /// actor starts from, and what `trace` shows.
    pub async fn order_on_primary(&self, id: &str) -> Result<Option<OrderState>, StoreError> {
        let Some(order) = by_key(orders::Entity::find_by_id(id.to_owned()), &self.primary).await?
        else {
            return Ok(None);
        };
        let rows = order_results::Entity::find()
            .filter(order_results::Column::OrderId.eq(id))
            .all(&self.primary)
            .await?;
        let Results { result, late } = Results::from_rows(rows);
        Ok(Some(OrderState {
            order,
            result,
            late,
        }))
    }

    /// Whether the read node holds an order under `(user_id, request_id)`: a retried submit is
    /// answered as one even while the hub refuses new orders. Asked of the read node, not the
    /// primary: under overload every refused attempt asks, and the primary's connections are for
    /// the writes that drain the overload. A key taken so recently that the read node has not
    /// replayed it yet is refused once more, and found at the client's next retry.
    pub async fn key_used(&self, user_id: &str, request_id: &str) -> Result<bool, StoreError> {
        let found = by_key(
            orders::Entity::find()
                .filter(orders::Column::UserId.eq(user_id))
                .filter(orders::Column::RequestId.eq(request_id)),
            self.reader(),
        )
        .await?;
        Ok(found.is_some())
    }

    /// An order's outbox events, oldest first (primary).
    pub async fn events_of(&self, id: &str) -> Result<Vec<outbox::Model>, StoreError> {
        Ok(outbox::Entity::find()
            .filter(outbox::Column::OrderId.eq(id))
            .order_by_asc(outbox::Column::Id)
            .all(&self.primary)
            .await?)
    }

    /// What the settler needs of each order of `ids` that is unsettled and whose result event is
    /// out (primary): only those columns, nothing parsed.
    pub async fn unsettled(&self, ids: &[String]) -> Result<Vec<Unsettled>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(local) = &self.local.orders {
            let sql = "SELECT o.id, o.user_id, o.partner_id, o.version, r.outcome \
                 FROM orders o JOIN order_results r ON r.order_id = o.id AND r.late = 0 \
                 WHERE o.id IN (SELECT value FROM json_each(?1)) \
                 AND o.settled_at IS NULL AND o.version >= ?2";
            let from = vec![local::Sql::Integer(i64::from(settleable_from()))];
            let read = local.rows(sql, ids, from, |row| {
                Ok(Unsettled {
                    id: row.get(0)?,
                    user_id: row.get(1)?,
                    partner_id: row.get(2)?,
                    version: row.get(3)?,
                    outcome: row.get(4)?,
                })
            });
            if let Some(read) = read.await {
                return Ok(read?);
            }
        }
        let orders: Vec<(String, String, String, i32)> = orders::Entity::find()
            .select_only()
            .columns([
                orders::Column::Id,
                orders::Column::UserId,
                orders::Column::PartnerId,
                orders::Column::Version,
            ])
            .filter(shapes::id_in(self.backend(), orders::Column::Id, ids))
            .filter(orders::Column::SettledAt.is_null())
            .filter(orders::Column::Version.gte(settleable_from()))
            .into_tuple()
            .all(&self.primary)
            .await?;
        if orders.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = orders.iter().map(|o| o.0.as_str()).collect();
        let mut outcomes: HashMap<String, String> = shapes::rows_by_key::<(String, String), _>(
            &self.primary,
            ("order_results", &["order_id", "outcome"]),
            "order_id",
            &ids,
            &[("late", false.into())],
        )
        .await?
        .into_iter()
        .collect();
        Ok(orders
            .into_iter()
            .filter_map(|(id, user_id, partner_id, version)| {
                let outcome = outcomes.remove(&id)?;
                Some(Unsettled {
                    id,
                    user_id,
                    partner_id,
                    version,
                    outcome,
                })
            })
            .collect())
    }

    /// A page of unsettled orders whose result event is out, by id after `after` (primary).
    pub async fn unsettled_page(
        &self,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(unsettled_scan(after, limit)
            .into_tuple::<String>()
            .all(&self.primary)
            .await?)
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

    /// Outbox rows not yet published, oldest first.
    pub async fn unpublished(&self, limit: u64) -> Result<Vec<outbox::Model>, StoreError> {
        Ok(unpublished_scan(limit).all(&self.primary).await?)
    }

    /// How many outbox rows wait to be published.
    pub async fn outbox_pending(&self) -> Result<u64, StoreError> {
        Ok(outbox::Entity::find()
            .filter(outbox::Column::PublishedAt.is_null())
            .count(&self.primary)
            .await?)
    }

    /// How old the oldest unpublished outbox row is, in ms (primary); `None` when there is none.
    /// The first by id is the oldest (ids are UUIDv7, in the order they were made): one entry
    /// of the partial index, where ordering by `created_at` sorted every unpublished row, and
    /// `status` asks this while a NATS outage holds them by the thousand.
    pub async fn outbox_oldest_ms(&self) -> Result<Option<u64>, StoreError> {
        let oldest = unpublished_scan(1).one(&self.primary).await?;
        Ok(oldest.map(|row| {
            (chrono::Utc::now() - row.created_at)
                .num_milliseconds()
                .max(0) as u64
        }))
    }

    /// Of each of these partners, the accepted orders that have no result yet (primary): one
    /// range of `ix_orders_pending_by_partner` each.
    pub async fn pending_counts(
        &self,
        partners: impl IntoIterator<Item = &str>,
    ) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        let mut counts = std::collections::HashMap::new();
        for partner in partners {
            let n = pending_scan(partner).count(&self.primary).await?;
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
        Ok(overdue_scan(now, limit)
            .into_tuple::<String>()
            .all(&self.primary)
            .await?)
    }
}

/// The condition of `ix_orders_dispatched_by_deadline`: the orders
/// [`lifecycle::Trigger::Timeout`] moves from. The predicates of the partial indexes (migration
/// `0006_partial_indexes`) are written into the queries as they are in the indexes, literals and
/// not bound values: a planner uses a partial index only where the query's condition implies the
/// index's, and Postgres's generic plan of a prepared statement knows no bound value.
const DISPATCHED: &str = "version = 2";
/// The condition of `ix_orders_pending_by_partner`: the orders [`lifecycle::Trigger::Result`]
/// moves from.
const PENDING: &str = "version < 3";
/// The condition of `ix_orders_settleable_ids` (migration `0008_settleable_ids`): unsettled orders
/// whose result event is out, from [`settleable_from`] on.
const SETTLEABLE: &str = "settled_at IS NULL AND version >= 4";

/// The ids of dispatched orders whose deadline is `now` or earlier, soonest first.
fn overdue_scan(now: chrono::DateTime<chrono::Utc>, limit: u64) -> Select<orders::Entity> {
    orders::Entity::find()
        .select_only()
        .column(orders::Column::Id)
        .filter(Expr::cust(DISPATCHED))
        .filter(orders::Column::ResultDeadline.lte(now))
        .order_by_asc(orders::Column::ResultDeadline)
        .limit(limit)
}

/// The pending orders of a partner.
fn pending_scan(partner: &str) -> Select<orders::Entity> {
    orders::Entity::find()
        .filter(orders::Column::PartnerId.eq(partner))
        .filter(Expr::cust(PENDING))
}

/// The ids of unsettled orders whose result event is out, by id after `after`.
fn unsettled_scan(after: Option<&str>, limit: u64) -> Select<orders::Entity> {
    let mut q = orders::Entity::find()
        .select_only()
        .column(orders::Column::Id)
        .filter(Expr::cust(SETTLEABLE));
    if let Some(after) = after {
        q = q.filter(orders::Column::Id.gt(after));
    }
    q.order_by_asc(orders::Column::Id).limit(limit)
}

/// Outbox rows not yet published, by id.
fn unpublished_scan(limit: u64) -> Select<outbox::Entity> {
    outbox::Entity::find()
        .filter(outbox::Column::PublishedAt.is_null())
        .order_by_asc(outbox::Column::Id)
        .limit(limit)
}

/// Each scan of live rows as `backend` runs it, with the partial index it is written to read:
/// what a check of the plans (`EXPLAIN`) needs.
pub fn live_row_scans(backend: DbBackend) -> Vec<(&'static str, Statement)> {
    vec![
        (
            "ix_orders_dispatched_by_deadline",
            overdue_scan(chrono::Utc::now(), 100).build(backend),
        ),
        (
            "ix_orders_pending_by_partner",
            pending_scan("p").build(backend),
        ),
        (
            "ix_orders_settleable_ids",
            unsettled_scan(None, 100).build(backend),
        ),
        (
            "ix_orders_settleable_ids",
            unsettled_scan(Some("x"), 100).build(backend),
        ),
        (
            "ix_outbox_unpublished_ids",
            unpublished_scan(100).build(backend),
        ),
    ]
}

/// An order's result and late result.
#[derive(Clone, Debug, Default)]
pub struct Results {
    pub result: Option<order_results::Model>,
    pub late: Option<order_results::Model>,
}

impl Results {
    fn from_rows(rows: Vec<order_results::Model>) -> Self {
        let mut out = Self::default();
        for row in rows {
            if row.late {
                out.late = Some(row);
            } else {
                out.result = Some(row);
            }
        }
        out
    }
}

/// An order as the primary has it, with its result and late result.
#[derive(Clone, Debug)]
pub struct OrderState {
    pub order: orders::Model,
    pub result: Option<order_results::Model>,
    pub late: Option<order_results::Model>,
}

/// The least version [`lifecycle::settleable`] takes: the settler's scans read from there on.
fn settleable_from() -> i32 {
    OrderStatus::ALL
        .into_iter()
        .find(|s| lifecycle::settleable(*s))
        .map_or(i32::MAX, OrderStatus::version)
}

/// What a built-in auxiliary system records from: an order and its result (or late result).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFacts {
    pub order_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub outcome: String,
    pub result_id: String,
}

/// What a settled event is made of: an unsettled order whose result event is out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsettled {
    pub id: String,
    pub user_id: String,
    pub partner_id: String,
    /// The version the settlement is conditional on.
    pub version: i32,
    pub outcome: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Trigger;

    #[test]
    fn partial_index_conditions_are_the_lifecycle_s() {
        let versions = |t| {
            let mut v = lifecycle::from_versions(t);
            v.sort();
            v
        };
        assert_eq!(versions(Trigger::Timeout), [2], "{DISPATCHED}");
        let below_3: Vec<i32> = OrderStatus::ALL
            .iter()
            .map(|s| s.version())
            .filter(|v| *v < 3)
            .collect();
        assert_eq!(versions(Trigger::Result), below_3, "{PENDING}");
        assert!(
            SETTLEABLE.ends_with(&format!(">= {}", settleable_from())),
            "{SETTLEABLE}"
        );
    }

    /// On SQLite, which keeps no statistics, each scan of live rows reads its partial index, in
    /// the order it returns rows.
    #[tokio::test]
    async fn scans_of_live_rows_read_their_partial_indexes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = super::super::on_sqlite_files(dir.path()).await;
        // A connection opened after the migrations: a pooled one opened before them would plan
        // an EXPLAIN, which reads no table and so never checks the schema, on the old schema.
        let file = local::file_of(&db.primary).await.expect("a file");
        let conn = local::connect(&file, false).expect("connection");
        for (index, scan) in live_row_scans(DbBackend::Sqlite) {
            let values: Vec<local::Sql> = scan
                .values
                .iter()
                .flat_map(|v| v.0.iter())
                .map(|v| match v {
                    // A LIMIT's value, which the hub's own reads never bind.
                    sea_orm::Value::BigUnsigned(Some(n)) => local::Sql::Integer(*n as i64),
                    v => local::bind(v).expect("bind"),
                })
                .collect();
            let mut stmt = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {}", scan.sql))
                .expect("explain");
            let plan = stmt
                .query_map(rusqlite::params_from_iter(values), |r| {
                    r.get::<_, String>(3)
                })
                .expect("plan")
                .collect::<rusqlite::Result<Vec<_>>>()
                .expect("plan")
                .join("; ");
            assert!(plan.contains(index), "{index}: {plan} ({})", scan.sql);
            assert!(!plan.contains("TEMP B-TREE"), "{index} sorts: {plan}");
        }
    }

    /// The oldest unpublished outbox row is the first by id; published rows do not count.
    #[tokio::test]
    async fn the_oldest_unpublished_event_is_the_first_by_id() {
        use sea_orm::{ActiveModelTrait, IntoActiveModel};
        let dir = tempfile::tempdir().expect("tempdir");
        let db = super::super::on_sqlite_files(dir.path()).await;
        assert_eq!(db.outbox_oldest_ms().await.expect("read"), None);
        let now = chrono::Utc::now();
        let row = |ago_s: i64, published: bool| outbox::Model {
            id: uuid::Uuid::now_v7().to_string(),
            order_id: "o".into(),
            subject: "orders.events.stored.p".into(),
            payload: "{}".into(),
            created_at: now - chrono::Duration::seconds(ago_s),
            published_at: published.then_some(now),
        };
        // Made in this order: a published one, the oldest unpublished, a newer unpublished.
        for r in [row(60, true), row(5, false), row(1, false)] {
            r.into_active_model()
                .insert(&db.primary)
                .await
                .expect("outbox row");
        }
        let oldest = db.outbox_oldest_ms().await.expect("read").expect("some");
        assert!((5_000..60_000).contains(&oldest), "{oldest} ms");
        assert_eq!(db.outbox_pending().await.expect("count"), 2);
    }
}
