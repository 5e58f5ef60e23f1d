//! Migrations are history. The frozen SQL of every step makes the schema today's entities
//! describe (columns, types, nullability, defaults, primary keys; SQLite and Postgres); migrators
//! started at once apply each step once; and a database a hub on migration 0001 left — the
//! committed `tests/fixtures/orders-0001.sqlite`, and the same rows on Postgres — migrates to
//! today's schema, and a hub serves its orders: `get` and `query` as their partner and user, the
//! relay's sweep of the rows still in the outbox, a result for the dispatched order, a retried
//! submit answered `duplicate`, a new order.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_nats::Client;
use entities::{Migrator, aux_records, order_facts, order_results, order_state, orders, outbox};
use sea_orm::sea_query::TableCreateStatement;
use sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, DbBackend, EntityTrait, Schema, Statement,
};
use serde_json::{Value, json};

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(30);
const FIRST_STEP: &str = "0001_orders_results_outbox";
/// The rows of the fixture, as plain SQL both backends take.
const FIXTURE_ROWS: &str = include_str!("../fixtures/orders-0001.sql");

fn fixture_db() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/orders-0001.sqlite"
    ))
}

async fn connect(url: &str) -> DatabaseConnection {
    Database::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

fn sqlite_url(dir: &Path, file: &str) -> String {
    format!("sqlite://{}/{file}?mode=rwc", dir.display())
}

/// One column as the database describes it.
#[derive(Debug, PartialEq)]
struct Column {
    name: String,
    ty: String,
    not_null: i64,
    default: Option<String>,
    /// Position in the primary key, 0 outside it.
    pk: i64,
}

/// Every table but the ledger, with its columns by name.
async fn schema(db: &DatabaseConnection) -> BTreeMap<String, Vec<Column>> {
    let backend = db.get_database_backend();
    let (tables, columns) = match backend {
        DbBackend::Postgres => (
            "SELECT table_name::text AS name FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name <> 'orderhub_migrations' \
               AND table_type = 'BASE TABLE'",
            "SELECT c.column_name::text AS name, c.data_type::text AS ty, \
                    CASE WHEN c.is_nullable = 'NO' THEN 1 ELSE 0 END::int8 AS not_null, \
                    c.column_default::text AS dflt, \
                    COALESCE((SELECT k.ordinal_position FROM information_schema.table_constraints t \
                              JOIN information_schema.key_column_usage k \
                                ON k.constraint_name = t.constraint_name \
                               AND k.table_schema = t.table_schema AND k.table_name = t.table_name \
                              WHERE t.constraint_type = 'PRIMARY KEY' \
                                AND t.table_schema = c.table_schema \
                                AND t.table_name = c.table_name \
                                AND k.column_name = c.column_name), 0)::int8 AS pk \
             FROM information_schema.columns c \
             WHERE c.table_schema = current_schema() AND c.table_name = $1",
        ),
        _ => (
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite_%' AND name <> 'orderhub_migrations'",
            "SELECT name, type AS ty, \"notnull\" AS not_null, dflt_value AS dflt, pk \
             FROM pragma_table_info(?)",
        ),
    };
    let mut out = BTreeMap::new();
    for row in db
        .query_all_raw(Statement::from_string(backend, tables))
        .await
        .expect("list tables")
    {
        let table: String = row.try_get("", "name").expect("table name");
        let mut cols: Vec<Column> = db
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                columns,
                [table.clone().into()],
            ))
            .await
            .unwrap_or_else(|e| panic!("columns of {table}: {e}"))
            .iter()
            .map(|r| Column {
                name: r.try_get("", "name").expect("name"),
                ty: r.try_get("", "ty").expect("ty"),
                not_null: r.try_get("", "not_null").expect("not_null"),
                default: r.try_get("", "dflt").expect("dflt"),
                pk: r.try_get("", "pk").expect("pk"),
            })
            .collect();
        cols.sort_by(|a, b| a.name.cmp(&b.name));
        out.insert(table, cols);
    }
    out
}

/// The names and types of the columns of `relation`, a table or a view, by name.
async fn column_types(db: &DatabaseConnection, relation: &str) -> Vec<(String, String)> {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "SELECT column_name::text AS name, data_type::text AS ty FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1"
        }
        _ => "SELECT name, type AS ty FROM pragma_table_info(?)",
    };
    let mut cols: Vec<(String, String)> = db
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [relation.into()],
        ))
        .await
        .unwrap_or_else(|e| panic!("columns of {relation}: {e}"))
        .iter()
        .map(|r| {
            (
                r.try_get("", "name").expect("name"),
                r.try_get("", "ty").expect("ty"),
            )
        })
        .collect();
    cols.sort();
    cols
}

/// Every table of the order database, as `Schema::create_table_from_entity` makes it from its
/// entity (`orders` is a view of `order_facts` and `order_state`).
fn order_entities(backend: DbBackend) -> Vec<TableCreateStatement> {
    let s = Schema::new(backend);
    vec![
        s.create_table_from_entity(order_facts::Entity),
        s.create_table_from_entity(order_state::Entity),
        s.create_table_from_entity(order_results::Entity),
        s.create_table_from_entity(outbox::Entity),
    ]
}

/// Every entity of the auxiliary database.
fn aux_entities(backend: DbBackend) -> Vec<TableCreateStatement> {
    vec![Schema::new(backend).create_table_from_entity(aux_records::Entity)]
}

async fn create_tables(db: &DatabaseConnection, tables: Vec<TableCreateStatement>) {
    let backend = db.get_database_backend();
    for table in tables {
        db.execute_raw(backend.build(&table))
            .await
            .expect("create a table from its entity");
    }
}

/// `migrated` (order and aux database) through the migrations, `built` from the entities: the
/// same tables with the same columns.
async fn steps_make_the_schema_of_the_entities(migrated: [&str; 2], built: [&str; 2]) {
    let (order, aux) = (connect(migrated[0]).await, connect(migrated[1]).await);
    Migrator::up(&order).await.expect("order migrations");
    Migrator::up_aux(&aux).await.expect("aux migrations");
    let (e_order, e_aux) = (connect(built[0]).await, connect(built[1]).await);
    let backend = e_order.get_database_backend();
    create_tables(&e_order, order_entities(backend)).await;
    create_tables(&e_aux, aux_entities(backend)).await;
    for (db, from_entities, which) in [
        (&order, &e_order, "order database"),
        (&aux, &e_aux, "auxiliary database"),
    ] {
        let (ours, theirs) = (schema(db).await, schema(from_entities).await);
        assert!(!theirs.is_empty(), "{which}: the entities make tables");
        assert_eq!(
            ours, theirs,
            "{which}: the migrations (left) and the entities (right) disagree"
        );
    }
    // The `orders` view has the columns of its entity, each of the type the entity gives it.
    create_tables(
        &e_order,
        vec![Schema::new(backend).create_table_from_entity(orders::Entity)],
    )
    .await;
    let (view, entity) = (
        column_types(&order, "orders").await,
        column_types(&e_order, "orders").await,
    );
    assert_eq!(entity.len(), 20, "{entity:?}");
    assert_eq!(
        view, entity,
        "the view `orders` (left) and its entity (right)"
    );
}

#[tokio::test]
async fn sqlite_steps_make_the_schema_of_the_entities() {
    let dir = tempfile::tempdir().unwrap();
    let url = |f| sqlite_url(dir.path(), f);
    steps_make_the_schema_of_the_entities(
        [&url("m.db"), &url("m-aux.db")],
        [&url("e.db"), &url("e-aux.db")],
    )
    .await;
}

#[tokio::test]
async fn postgres_steps_make_the_schema_of_the_entities() {
    let (m, e) = (
        shared_pg().create_database().await,
        shared_pg().create_database().await,
    );
    steps_make_the_schema_of_the_entities(
        [&m.primary_url, &m.aux_url],
        [&e.primary_url, &e.aux_url],
    )
    .await;
}

/// The ledger's step names, in order.
async fn ledger(db: &DatabaseConnection) -> Vec<String> {
    db.query_all_raw(Statement::from_string(
        db.get_database_backend(),
        "SELECT name FROM orderhub_migrations ORDER BY name",
    ))
    .await
    .expect("read the ledger")
    .iter()
    .map(|r| r.try_get("", "name").expect("name"))
    .collect()
}

/// Four migrators on their own connections at once: every step applied by exactly one of them,
/// and a fifth finds nothing left to do.
async fn concurrent_migrators_apply_each_step_once(url: &str) {
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(connect(url).await);
    }
    let runs = futures::future::join_all(conns.iter().map(Migrator::up)).await;
    let mut applied: Vec<&str> = runs
        .into_iter()
        .flat_map(|r| r.expect("every migrator succeeds"))
        .collect();
    applied.sort_unstable();
    let recorded = ledger(&conns[0]).await;
    assert_eq!(applied, recorded, "each step applied once, and recorded");
    assert_eq!(recorded.first().map(String::as_str), Some(FIRST_STEP));
    assert!(recorded.len() >= 4, "{recorded:?}");
    assert_eq!(
        Migrator::up(&conns[0]).await.expect("again"),
        Vec::<&str>::new()
    );
}

#[tokio::test]
async fn sqlite_concurrent_migrators_apply_each_step_once() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_migrators_apply_each_step_once(&sqlite_url(dir.path(), "o.db")).await;
}

#[tokio::test]
async fn postgres_concurrent_migrators_apply_each_step_once() {
    let db = shared_pg().create_database().await;
    concurrent_migrators_apply_each_step_once(&db.primary_url).await;
}

#[tokio::test]
async fn up_to_an_unknown_step_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = connect(&sqlite_url(dir.path(), "o.db")).await;
    let err = Migrator::up_to(&db, "0000_nothing").await.unwrap_err();
    assert!(err.to_string().contains("0000_nothing"), "{err}");
}

/// Tables and indexes exactly as their statements made them, ledger excluded.
async fn sqlite_objects(db: &DatabaseConnection) -> Vec<(String, String, Option<String>)> {
    db.query_all_raw(Statement::from_string(
        DbBackend::Sqlite,
        "SELECT type, name, sql FROM sqlite_master \
         WHERE tbl_name <> 'orderhub_migrations' ORDER BY name",
    ))
    .await
    .expect("read sqlite_master")
    .iter()
    .map(|r| {
        (
            r.try_get("", "type").expect("type"),
            r.try_get("", "name").expect("name"),
            r.try_get("", "sql").expect("sql"),
        )
    })
    .collect()
}

/// The committed fixture is what the frozen step 0001 makes, statement for statement: an edit of
/// that step's SQL, or a fixture made otherwise, fails here.
#[tokio::test]
async fn sqlite_fixture_is_what_step_0001_made() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture_db(), dir.path().join("fixture.db")).expect("copy the fixture");
    let fixture = connect(&sqlite_url(dir.path(), "fixture.db")).await;
    let fresh = connect(&sqlite_url(dir.path(), "fresh.db")).await;
    assert_eq!(
        Migrator::up_to(&fresh, FIRST_STEP).await.expect("0001"),
        [FIRST_STEP]
    );
    assert_eq!(ledger(&fixture).await, [FIRST_STEP]);
    let objects = sqlite_objects(&fixture).await;
    assert!(objects.iter().any(|(_, name, _)| name == "orders"));
    assert_eq!(objects, sqlite_objects(&fresh).await);
}

/// One order of the fixture, and what a hub on the migrated database shows of it.
struct Old {
    id: &'static str,
    user: &'static str,
    partner: &'static str,
    request_id: &'static str,
    /// Its status once the hub has swept the outbox.
    status: &'static str,
    version: i64,
    created_at: &'static str,
    /// `result_id`, `outcome`, `partner_ref`, `detail`, `received_at`.
    result: Option<(&'static str, &'static str, Value, Value, &'static str)>,
}

const ACCEPTED: &str = "01a21c3b-a2fb-7d8e-91b7-584a2265b1f5";
const ACCEPTED_EVENT: &str = "01a21c3b-a2fb-7103-8386-bbc4cd613e30";
const DISPATCHED: &str = "01a21c42-0b9c-77ec-9e2f-eb89414c343c";
const RESULT_STORED: &str = "01a21c48-743d-7c9d-a12e-7696a6cecc1b";
const RESULT_STORED_EVENT: &str = "01a21c48-a45a-7d5f-a4b0-6ce60741c7a8";
const NOTIFIED: &str = "01a21c4e-dcde-79b9-aec9-d28663ca828d";
const TIMED_OUT: &str = "01a21c55-457f-73ab-8d44-7e35b8b6d8fe";

fn old_orders() -> Vec<Old> {
    vec![
        // Its stored event waited in the outbox: the sweep publishes it.
        Old {
            id: ACCEPTED,
            user: "u-7001",
            partner: "acme-air",
            request_id: "fx-accepted",
            status: "dispatched",
            version: 2,
            created_at: "2026-11-27T09:00:00.123Z",
            result: None,
        },
        Old {
            id: DISPATCHED,
            user: "u-7001",
            partner: "acme-air",
            request_id: "fx-dispatched",
            status: "dispatched",
            version: 2,
            created_at: "2026-11-27T09:07:00.124Z",
            result: None,
        },
        // Its result event waited in the outbox: the sweep publishes it.
        Old {
            id: RESULT_STORED,
            user: "u-7002",
            partner: "globex-hotels",
            request_id: "fx-result-stored",
            status: "notified",
            version: 4,
            created_at: "2026-11-27T09:14:00.125Z",
            result: Some((
                "globex-r-1042",
                "confirmed",
                json!("GX-1042"),
                json!({"room": "1208"}),
                "2026-11-27T09:14:12.442Z",
            )),
        },
        Old {
            id: NOTIFIED,
            user: "u-7002",
            partner: "acme-air",
            request_id: "fx-notified",
            status: "notified",
            version: 4,
            created_at: "2026-11-27T09:21:00.126Z",
            result: Some((
                "acme-r-77",
                "rejected",
                Value::Null,
                json!({"reason": "sold out"}),
                "2026-11-27T09:21:12.443Z",
            )),
        },
        Old {
            id: TIMED_OUT,
            user: "u-7001",
            partner: "globex-hotels",
            request_id: "fx-timeout",
            status: "notified",
            version: 4,
            created_at: "2026-11-27T09:28:00.127Z",
            result: Some((
                "orderhub-timeout",
                "timeout",
                Value::Null,
                json!({"reason": "partner `globex-hotels` did not answer within 30s"}),
                "2026-11-27T09:28:30.444Z",
            )),
        },
    ]
}

/// `get` as the order's partner.
async fn partner_get(partner: &Client, partner_id: &str, order_id: &str) -> Reply {
    request(
        partner,
        &format!("orders.partner.{partner_id}.get"),
        json!({"order_id": order_id}),
    )
    .await
}

/// What a hub on a database migrated from 0001 (`primary_url`) serves of the fixture's orders,
/// and that it takes new work on them.
async fn old_orders_are_served(hub: &TestHub, primary_url: &str) {
    let db = connect(primary_url).await;
    let steps = ledger(&db).await;
    assert_eq!(steps.first().map(String::as_str), Some(FIRST_STEP));
    assert!(steps.len() >= 4, "migrated to today's schema: {steps:?}");

    let gateway = hub.client("gateway").await;
    for old in old_orders() {
        let q = eventually(
            WAIT,
            &format!("order {} {}", old.id, old.status),
            || async {
                let q = query_order(&gateway, old.id, old.user).await;
                (q.body["order"]["status"] == old.status).then_some(q)
            },
        )
        .await;
        let body = q.assert_ok();
        let o = &body["order"];
        assert_eq!(o["order_id"], old.id);
        assert_eq!(o["user_id"], old.user);
        assert_eq!(o["partner_id"], old.partner);
        assert_eq!(o["request_id"], old.request_id);
        assert_eq!(o["version"], old.version, "{body}");
        assert_eq!(o["created_at"], old.created_at);
        assert_eq!(o["currency"], "CNY");
        match old.partner {
            "acme-air" => {
                assert_eq!(o["product"], "flight");
                assert_eq!(o["amount_minor"], 129900);
                assert_eq!(o["items"], json!([{"sku": "MU5101", "qty": 1}]));
                assert_eq!(o["payload"], json!({"seat": "12A"}));
            }
            _ => {
                assert_eq!(o["product"], "hotel");
                assert_eq!(o["amount_minor"], 56000);
                assert_eq!(o["items"], json!([{"sku": "GX-DLX-KING", "qty": 2}]));
                assert_eq!(o["payload"], json!({"guest": "Li Wei"}));
            }
        }
        match &old.result {
            None => assert!(body["result"].is_null(), "{body}"),
            Some((result_id, outcome, partner_ref, detail, received_at)) => assert_eq!(
                body["result"],
                json!({"order_id": old.id, "result_id": result_id, "outcome": outcome,
                       "partner_ref": partner_ref, "detail": detail, "received_at": received_at}),
            ),
        }
        assert!(
            body["late_result"].is_null() && body["settled_at"].is_null(),
            "{body}"
        );

        // Its partner gets it; the other partner and the other user are told it does not exist.
        let partner = hub.client(&format!("partner-{}", old.partner)).await;
        let got = partner_get(&partner, old.partner, old.id).await;
        assert_eq!(got.assert_ok()["order"]["status"], old.status);
        let other_partner = match old.partner {
            "acme-air" => "globex-hotels",
            _ => "acme-air",
        };
        let other = hub.client(&format!("partner-{other_partner}")).await;
        partner_get(&other, other_partner, old.id)
            .await
            .assert_error("not_found", 404);
        query_order(&gateway, old.id, "u-7003")
            .await
            .assert_error("not_found", 404);
    }

    // The user's list, newest first.
    let list = request(&gateway, "orders.query", json!({"user_id": "u-7001"})).await;
    let ids: Vec<&str> = list.assert_ok()["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| o["order_id"].as_str().expect("order_id"))
        .collect();
    assert_eq!(ids, [TIMED_OUT, DISPATCHED, ACCEPTED]);

    // The sweep published the outbox rows 0001 left unpublished, each as the event it was.
    let events = stream_subjects(&hub.client("hub").await).await;
    for (subject, event_id) in [
        (
            format!("orders.events.stored.acme-air.{ACCEPTED}"),
            ACCEPTED_EVENT,
        ),
        (
            format!("orders.events.result.u-7002.{RESULT_STORED}"),
            RESULT_STORED_EVENT,
        ),
    ] {
        let (_, payload) = events
            .iter()
            .find(|(s, _)| *s == subject)
            .unwrap_or_else(|| panic!("no event on {subject}: {events:?}"));
        let payload: Value = serde_json::from_str(payload).expect("event JSON");
        assert_eq!(payload["id"], event_id, "{payload}");
    }

    // The dispatched order takes its partner's result.
    let acme = hub.client("partner-acme-air").await;
    let stored = request(
        &acme,
        "orders.partner.acme-air.result",
        json!({"order_id": DISPATCHED, "result_id": "acme-r-5101", "outcome": "confirmed",
               "partner_ref": "PNR-FX2", "detail": {"fare": "Y"}}),
    )
    .await;
    assert_eq!(
        stored.assert_ok(),
        &json!({"order_id": DISPATCHED, "status": "result_stored", "duplicate": false})
    );
    let notified = eventually(WAIT, "the result is out", || async {
        let q = query_order(&gateway, DISPATCHED, "u-7001").await;
        (q.body["order"]["status"] == "notified").then_some(q.body)
    })
    .await;
    assert_eq!(notified["result"]["result_id"], "acme-r-5101");
    assert_eq!(notified["result"]["partner_ref"], "PNR-FX2");

    // A retry of an old submit is the old order; a new one is stored and dispatched.
    let retry = request(
        &gateway,
        "orders.submit",
        order("u-7001", "fx-accepted", "acme-air"),
    )
    .await;
    assert_eq!(
        retry.assert_ok(),
        &json!({"order_id": ACCEPTED, "status": "accepted", "duplicate": true})
    );
    let new = submit(&gateway, "u-7001", "fx-new", "acme-air").await;
    assert_ne!(new, ACCEPTED);
    eventually(WAIT, "the new order is dispatched", || async {
        let got = partner_get(&acme, "acme-air", &new).await;
        (got.body["order"]["status"] == "dispatched").then_some(())
    })
    .await;
}

#[tokio::test]
async fn sqlite_fixture_migrates_and_its_orders_are_served() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture_db(), dir.path().join("orders.db")).expect("copy the fixture");
    let url = sqlite_url(dir.path(), "orders.db");
    let hub = TestHub::start_with(|s| s.database.primary_url = url.clone()).await;
    old_orders_are_served(&hub, &url).await;
}

#[tokio::test]
async fn postgres_database_from_step_0001_migrates_and_its_orders_are_served() {
    let db = shared_pg().create_database().await;
    let conn = connect(&db.primary_url).await;
    assert_eq!(
        Migrator::up_to(&conn, FIRST_STEP).await.expect("0001"),
        [FIRST_STEP]
    );
    conn.execute_unprepared(FIXTURE_ROWS)
        .await
        .expect("load the fixture's rows");
    conn.close().await.expect("close");
    let hub = TestHub::start_postgres_with(|s| {
        s.database.primary_url = db.primary_url.clone();
        s.database.replica_url = db.replica_url.clone();
        s.database.aux_url = db.aux_url.clone();
    })
    .await;
    old_orders_are_served(&hub, &db.primary_url).await;
}

/// Step 0005 moves an order's story into its row: each transition's time into its column, and
/// the late result into `order_results` (`late`), beside the result, which stays.
async fn story_moves_into_the_order(url: &str) {
    let db = connect(url).await;
    Migrator::up_to(&db, "0004_pending_by_partner")
        .await
        .expect("migrate to 0004");
    let backend = db.get_database_backend();
    let at = |s: u32| format!("'2026-11-27T09:00:0{s}.000000+00:00'");
    let mut rows = vec![format!(
        "INSERT INTO orders (id, user_id, request_id, partner_id, product, amount_minor, currency, \
         items, payload, status, version, result_deadline, created_at, updated_at, settled_at) \
         VALUES ('o-late', 'u-1', 'r-1', 'acme-air', 'flight', 1, 'CNY', '[]', '{{}}', \
         'late_notified', 6, NULL, {}, {}, NULL)",
        at(1),
        at(6)
    )];
    for (version, status) in [
        (1, "accepted"),
        (2, "dispatched"),
        (3, "result_stored"),
        (4, "notified"),
        (5, "late_result_stored"),
        (6, "late_notified"),
    ] {
        rows.push(format!(
            "INSERT INTO order_transitions (order_id, version, status, at) VALUES \
             ('o-late', {version}, '{status}', {})",
            at(version)
        ));
    }
    for (table, result_id, outcome) in [
        ("order_results", "orderhub-timeout", "timeout"),
        ("order_late_results", "late-1", "confirmed"),
    ] {
        rows.push(format!(
            "INSERT INTO {table} (order_id, result_id, outcome, partner_ref, detail, received_at) \
             VALUES ('o-late', '{result_id}', '{outcome}', NULL, '{{}}', {})",
            at(3)
        ));
    }
    for sql in rows {
        db.execute_unprepared(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    Migrator::up(&db).await.expect("migrate to today");

    let order = orders::Entity::find_by_id("o-late".to_owned())
        .one(&db)
        .await
        .expect("read the order")
        .expect("the order is kept");
    let times = [
        order.dispatched_at,
        order.result_stored_at,
        order.notified_at,
        order.late_result_stored_at,
        order.late_notified_at,
    ];
    for (i, time) in times.iter().enumerate() {
        let second = i as u32 + 2;
        let want = chrono::DateTime::parse_from_rfc3339(&format!("2026-11-27T09:00:0{second}Z"))
            .expect("a time");
        assert_eq!(
            time.map(|t| t.timestamp()),
            Some(want.timestamp()),
            "the time of version {second}"
        );
    }
    let mut results: Vec<(bool, String, String)> = order_results::Entity::find()
        .all(&db)
        .await
        .expect("read the results")
        .into_iter()
        .map(|r| (r.late, r.result_id, r.outcome))
        .collect();
    results.sort();
    assert_eq!(
        results,
        [
            (false, "orderhub-timeout".into(), "timeout".into()),
            (true, "late-1".into(), "confirmed".into()),
        ]
    );
    for gone in ["order_transitions", "order_late_results"] {
        let query = match backend {
            DbBackend::Postgres => format!("SELECT to_regclass('{gone}')::text AS t"),
            _ => format!("SELECT name AS t FROM sqlite_master WHERE name = '{gone}'"),
        };
        let row = db
            .query_one_raw(Statement::from_string(backend, query))
            .await
            .expect("look the table up");
        let name: Option<String> = row.and_then(|r| r.try_get("", "t").ok());
        assert_eq!(name, None, "{gone} is dropped");
    }
}

#[tokio::test]
async fn sqlite_story_moves_into_the_order() {
    let dir = tempfile::tempdir().expect("a temp dir");
    story_moves_into_the_order(&sqlite_url(dir.path(), "orders.db")).await;
}

#[tokio::test]
async fn postgres_story_moves_into_the_order() {
    let db = shared_pg().create_database().await;
    story_moves_into_the_order(&db.primary_url).await;
}

/// On Postgres each scan of live rows reads its partial index (migration 0006, on `order_state`
/// since 0007) in index order even in a generic plan, the one a prepared statement may settle on,
/// which knows none of the bound values: the index's condition is written into the query as a
/// literal. The scans go through the `orders` view. The state table holds 20,000 orders, a tenth
/// of them live, with statistics, as a hub's database soon has.
#[tokio::test]
async fn postgres_scans_of_live_rows_read_their_partial_indexes_in_generic_plans() {
    use sea_orm::TransactionTrait;
    use sea_orm::sea_query::{PostgresQueryBuilder, QueryBuilder};
    let db = shared_pg().create_database().await;
    let conn = connect(&db.primary_url).await;
    Migrator::up(&conn).await.expect("migrate");
    conn.execute_unprepared(
        "INSERT INTO order_state (id, partner_id, status, version, result_deadline, settled_at, \
                                  updated_at) \
         SELECT md5(i::text), 'p' || (i % 7), 'any', CASE WHEN i % 10 = 0 THEN 1 + i % 4 ELSE 4 END, \
                now() + i * interval '1 ms', CASE WHEN i % 10 = 0 THEN NULL ELSE now() END, now() \
         FROM generate_series(1, 20000) AS i; \
         ANALYZE order_state",
    )
    .await
    .expect("orders");
    let backend = DbBackend::Postgres;
    for (i, (index, scan)) in actors::store::live_row_scans(backend)
        .into_iter()
        .enumerate()
    {
        let args: Vec<String> = scan
            .values
            .iter()
            .flat_map(|v| v.0.iter())
            .map(|v| PostgresQueryBuilder.value_to_string(v))
            .collect();
        // One connection for the settings and the prepared statement: a transaction's.
        let txn = conn.begin().await.expect("begin");
        txn.execute_unprepared(&format!(
            "SET LOCAL plan_cache_mode = force_generic_plan; \
             SET LOCAL enable_seqscan = off; \
             PREPARE scan_{i} AS {}",
            scan.sql
        ))
        .await
        .expect("prepare");
        let plan: Vec<String> = txn
            .query_all_raw(Statement::from_string(
                backend,
                format!("EXPLAIN EXECUTE scan_{i}({})", args.join(", ")),
            ))
            .await
            .expect("explain")
            .iter()
            .map(|r| r.try_get("", "QUERY PLAN").expect("a plan line"))
            .collect();
        txn.rollback().await.expect("rollback");
        let plan = plan.join("\n");
        assert!(plan.contains(index), "{index}:\n{plan}\n({})", scan.sql);
        assert!(!plan.contains("Sort"), "{index} sorts:\n{plan}");
    }
}
