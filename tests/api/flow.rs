//! The order flow of `docs/protocol.md` "Overview" end to end, driven as the gateway, a partner
//! and an operator, on both backends: each `async fn x(hub)` runs as `sqlite::x` and
//! `postgres::x`.
//!
//! On Postgres `get` and `query` read the streaming replica, so a read right after a write polls
//! until the replica has it; every event carries `Orderhub-Commit-Lsn`.

use std::time::{Duration, Instant};

use actors::wal::Lsn;
use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use sea_orm::sqlx::{self, Connection, PgConnection};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::roles::Probe;

both_backends!(
    happy_path_with_every_event_field,
    idempotent_submit_and_conflicting_reuse,
    idempotent_result_and_second_result_conflict,
    ownership_hides_other_callers_orders,
    partner_timeout_closes_the_order => globex_answers_within_1s,
    external_aux_record_is_stored_and_queried,
    query_lists_newest_first_with_pages,
    service_discovery_lists_every_endpoint,
);

fn is_uuid_v7(s: &str) -> bool {
    uuid::Uuid::try_parse(s)
        .is_ok_and(|u| u.get_version_num() == 7 && u.hyphenated().to_string() == s)
}

fn is_rfc3339_utc(s: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(s).is_ok() && s.ends_with('Z')
}

/// On Postgres, open connections to the hub's primary and replica, so that a WAL position is one
/// query away when an event arrives (no connection set-up between receipt and reading).
struct Wal {
    primary: PgConnection,
    replica: PgConnection,
}

impl Wal {
    /// `None` on SQLite, which has no WAL positions to compare.
    async fn open(hub: &TestHub) -> Option<Self> {
        let Store::Postgres(db) = &hub.store else {
            return None;
        };
        let connect = |url: String| async move {
            PgConnection::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
        };
        Some(Self {
            primary: connect(db.primary_url.clone()).await,
            replica: connect(db.replica_url.clone()).await,
        })
    }

    async fn lsn(conn: &mut PgConnection, sql: &str) -> Lsn {
        let text: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        Lsn::parse(&text).unwrap_or_else(|| panic!("{sql}: bad LSN {text:?}"))
    }

    /// The primary's WAL position now: every commit after this point lies beyond it.
    async fn primary_lsn(&mut self) -> Lsn {
        Self::lsn(&mut self.primary, "SELECT pg_current_wal_lsn()::text").await
    }

    /// How far the replica has replayed, now.
    async fn replay_lsn(&mut self) -> Lsn {
        Self::lsn(&mut self.replica, "SELECT pg_last_wal_replay_lsn()::text").await
    }
}

/// The primary's WAL position now, on Postgres.
async fn primary_lsn(wal: &mut Option<Wal>) -> Option<Lsn> {
    match wal {
        Some(w) => Some(w.primary_lsn().await),
        None => None,
    }
}

/// The next message of `consumer` within 10 s and, on Postgres, the replica's replay position
/// read the moment it arrived: before it is acknowledged, before anything else waits. The replica
/// only moves forward, so a position read any later could cover an event that was released too
/// early.
async fn receive(
    consumer: &PullConsumer,
    wal: &mut Option<Wal>,
) -> (jetstream::Message, Option<Lsn>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no event within 10 s");
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_millis(300))
            .messages()
            .await
            .expect("fetch");
        if let Some(m) = batch.next().await {
            let m = m.expect("message");
            let replay = match wal {
                Some(w) => Some(w.replay_lsn().await),
                None => None,
            };
            m.ack().await.expect("ack");
            return (m, replay);
        }
    }
}

/// On Postgres: the event's `Orderhub-Commit-Lsn` lies between the primary's position before the
/// request that caused it and the replica's replay position when the event arrived.
#[track_caller]
fn check_fence(
    hub: &TestHub,
    m: &jetstream::Message,
    before: Option<Lsn>,
    replay: Option<Lsn>,
) -> Option<Lsn> {
    let fence = hub.check_commit_lsn(m, replay);
    if let (Some(fence), Some(before)) = (fence, before) {
        assert!(
            fence >= before,
            "event {} fenced at {fence}, before the commit it announces (the primary was at {before} when the request was sent)",
            m.subject
        );
    }
    fence
}

async fn happy_path_with_every_event_field(hub: TestHub) {
    let gateway = hub.client("gateway").await;
    let partner = hub.client("partner-acme-air").await;
    let stored_events = durable(&partner, "partner-acme-air").await;
    let result_events = durable(&gateway, "gateway").await;
    let mut wal = Wal::open(&hub).await;

    let before_submit = primary_lsn(&mut wal).await;
    let r = request(
        &gateway,
        "orders.submit",
        order("u-1001", "gw-7f3a", "acme-air"),
    )
    .await;
    let body = r.assert_ok();
    assert_eq!(body["status"], "accepted");
    assert_eq!(body["duplicate"], false);
    let order_id = body["order_id"].as_str().unwrap().to_owned();
    assert!(is_uuid_v7(&order_id), "{order_id}");

    // The partner's durable consumer carries the stored event.
    let (stored, replay) = receive(&stored_events, &mut wal).await;
    let m = &stored;
    assert_eq!(
        m.subject.as_str(),
        format!("orders.events.stored.acme-air.{order_id}")
    );
    let ev = event(m);
    let headers = m.headers.as_ref().expect("headers");
    assert_eq!(
        headers.get("Nats-Msg-Id").unwrap().as_str(),
        ev["id"].as_str().unwrap()
    );
    // Postgres: the fence covers the order's commit, and the replica had replayed past it when
    // the event arrived.
    let fence = check_fence(&hub, m, before_submit, replay);
    assert_eq!(ev["specversion"], "1.0");
    assert!(is_uuid_v7(ev["id"].as_str().unwrap()));
    assert_eq!(ev["source"], "orderhub");
    assert_eq!(ev["type"], "orderhub.order.stored");
    assert_eq!(ev["subject"], order_id.as_str());
    assert!(
        is_rfc3339_utc(ev["time"].as_str().unwrap()),
        "{}",
        ev["time"]
    );
    assert_eq!(ev["datacontenttype"], "application/json");
    assert_eq!(
        ev["data"],
        json!({"order_id": order_id, "user_id": "u-1001", "partner_id": "acme-air", "version": 1})
    );

    // It pulls the order from the read node: every submitted field plus the bookkeeping.
    let got = request(
        &partner,
        "orders.partner.acme-air.get",
        json!({"order_id": order_id}),
    )
    .await;
    let o = &got.assert_ok()["order"];
    for (k, v) in order("u-1001", "gw-7f3a", "acme-air").as_object().unwrap() {
        assert_eq!(&o[k], v, "field {k}");
    }
    assert_eq!(o["order_id"], order_id.as_str());
    assert!(is_rfc3339_utc(o["created_at"].as_str().unwrap()));
    assert!(is_rfc3339_utc(o["updated_at"].as_str().unwrap()));
    // The stored event is out, so the order is (or is about to be) dispatched.
    eventually(
        Duration::from_secs(5),
        "order dispatched (version 2)",
        || async {
            let got = request(
                &partner,
                "orders.partner.acme-air.get",
                json!({"order_id": order_id}),
            )
            .await;
            (got.body["order"]["status"] == "dispatched" && got.body["order"]["version"] == 2)
                .then_some(())
        },
    )
    .await;

    let before_result = primary_lsn(&mut wal).await;
    let res = request(
        &partner,
        "orders.partner.acme-air.result",
        json!({"order_id": order_id, "result_id": "acme-r-991", "outcome": "confirmed",
               "partner_ref": "PNR4XK", "detail": {"fare": "Y"}}),
    )
    .await;
    assert_eq!(
        res.assert_ok(),
        &json!({"order_id": order_id, "status": "result_stored", "duplicate": false})
    );

    // The gateway's durable consumer carries the result event.
    let (result, replay) = receive(&result_events, &mut wal).await;
    let m = &result;
    assert_eq!(
        m.subject.as_str(),
        format!("orders.events.result.u-1001.{order_id}")
    );
    let ev = event(m);
    assert_eq!(
        m.headers
            .as_ref()
            .unwrap()
            .get("Nats-Msg-Id")
            .unwrap()
            .as_str(),
        ev["id"].as_str().unwrap()
    );
    let result_fence = check_fence(&hub, m, before_result, replay);
    assert!(
        result_fence >= fence,
        "the result's fence {result_fence:?} precedes the stored one {fence:?}"
    );
    assert_eq!(ev["type"], "orderhub.order.result_stored");
    assert_eq!(ev["subject"], order_id.as_str());
    assert_eq!(ev["source"], "orderhub");
    assert_eq!(ev["specversion"], "1.0");
    assert_eq!(
        ev["data"],
        json!({"order_id": order_id, "user_id": "u-1001", "partner_id": "acme-air", "version": 3,
               "outcome": "confirmed", "partner_ref": "PNR4XK"})
    );

    // The user sees the whole picture: order notified, result, both built-in aux records.
    let q = eventually(
        Duration::from_secs(10),
        "order notified with invoice and loyalty records",
        || async {
            let q = query_order(&gateway, &order_id, "u-1001").await;
            let aux = q.body["aux"].as_array().map(|a| a.len()).unwrap_or(0);
            (q.body["order"]["status"] == "notified" && aux == 2).then_some(q)
        },
    )
    .await;
    let b = q.assert_ok();
    assert_eq!(b["order"]["version"], 4);
    assert_eq!(b["result"]["outcome"], "confirmed");
    assert_eq!(b["result"]["result_id"], "acme-r-991");
    assert_eq!(b["result"]["partner_ref"], "PNR4XK");
    assert_eq!(b["result"]["detail"], json!({"fare": "Y"}));
    assert!(is_rfc3339_utc(b["result"]["received_at"].as_str().unwrap()));
    let aux = b["aux"].as_array().unwrap();
    assert_eq!(aux[0]["system"], "invoice");
    assert_eq!(aux[0]["status"], "invoiced");
    assert_eq!(aux[0]["data"]["amount_minor"], 129900);
    assert_eq!(aux[1]["system"], "loyalty");
    assert_eq!(aux[1]["status"], "credited");
    assert_eq!(aux[1]["data"]["points"], 1299);
    assert!(is_rfc3339_utc(aux[1]["updated_at"].as_str().unwrap()));
}

async fn idempotent_submit_and_conflicting_reuse(hub: TestHub) {
    let gateway = hub.client("gateway").await;
    let first = submit(&gateway, "u-1", "k-1", "acme-air").await;

    let again = request(&gateway, "orders.submit", order("u-1", "k-1", "acme-air")).await;
    assert_eq!(
        again.assert_ok(),
        &json!({"order_id": first, "status": "accepted", "duplicate": true})
    );

    // Same key, other user: a different order.
    let other = submit(&gateway, "u-2", "k-1", "acme-air").await;
    assert_ne!(other, first);

    // Same key, same user, another body: conflict, and nothing new is stored.
    let mut changed = order("u-1", "k-1", "acme-air");
    changed["amount_minor"] = json!(1);
    request(&gateway, "orders.submit", changed)
        .await
        .assert_error("conflict", 409);
    let orders = eventually(
        Duration::from_secs(10),
        "u-1's order on the read node",
        || async {
            let list = request(&gateway, "orders.query", json!({"user_id": "u-1"})).await;
            let orders = list.assert_ok()["orders"].as_array().unwrap().clone();
            (!orders.is_empty()).then_some(orders)
        },
    )
    .await;
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0]["order_id"], first.as_str());
    assert_eq!(orders[0]["amount_minor"], 129900);

    // Concurrent retries of one key all get the same order: each one accepted, exactly one of
    // them as the original and every other as a duplicate of it. The key holds every character
    // a list of keys in one bound value escapes or splits on (quotes, a backslash, a comma,
    // braces), and the retries that lose the race find the holder by such a list.
    let key = r#"b"u,r{s}t\1"#;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let g = gateway.clone();
        tasks.push(tokio::spawn(async move {
            request(&g, "orders.submit", order("u-3", key, "globex-hotels")).await
        }));
    }
    let mut ids = Vec::new();
    let mut originals = 0;
    for t in tasks {
        let r = t.await.unwrap();
        let body = r.assert_ok();
        assert_eq!(body["status"], "accepted", "{body}");
        let id = body["order_id"].as_str().expect("order_id").to_owned();
        assert!(is_uuid_v7(&id), "{body}");
        match &body["duplicate"] {
            Value::Bool(false) => originals += 1,
            Value::Bool(true) => {}
            other => panic!("duplicate must be a boolean, got {other}: {body}"),
        }
        ids.push(id);
    }
    assert_eq!(originals, 1, "exactly one submit stores the order");
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_ne!(ids[0], first);
    assert_ne!(ids[0], other);
}

async fn idempotent_result_and_second_result_conflict(hub: TestHub) {
    let gateway = hub.client("gateway").await;
    let partner = hub.client("partner-acme-air").await;
    let id = submit(&gateway, "u-1", "k-1", "acme-air").await;
    let result =
        json!({"order_id": id, "result_id": "r-1", "outcome": "rejected", "partner_ref": "X"});

    let first = request(&partner, "orders.partner.acme-air.result", result.clone()).await;
    assert_eq!(first.assert_ok()["duplicate"], false);
    let again = request(&partner, "orders.partner.acme-air.result", result.clone()).await;
    assert_eq!(
        again.assert_ok(),
        &json!({"order_id": id, "status": "result_stored", "duplicate": true})
    );

    let mut other = result.clone();
    other["result_id"] = json!("r-2");
    other["outcome"] = json!("confirmed");
    request(&partner, "orders.partner.acme-air.result", other)
        .await
        .assert_error("conflict", 409);
    let mut same_key = result.clone();
    same_key["outcome"] = json!("failed");
    request(&partner, "orders.partner.acme-air.result", same_key)
        .await
        .assert_error("conflict", 409);

    // The first result stands. Whether it overtook the `dispatched` mark or not, the order's
    // version is its status's place in accepted → dispatched → result_stored → notified: the
    // stored event says 1, the result event 3, and the order ends notified at 4; anything seen on
    // the way is one of those pairs, never going back.
    let chain = [
        ("accepted", 1),
        ("dispatched", 2),
        ("result_stored", 3),
        ("notified", 4),
    ];
    let seen = std::cell::RefCell::new(Vec::new());
    let q = eventually(Duration::from_secs(10), "order notified", || {
        let (seen, gateway, id) = (&seen, &gateway, &id);
        async move {
            let q = query_order(gateway, id, "u-1").await;
            let o = &q.body["order"];
            if let (Some(status), Some(version)) = (o["status"].as_str(), o["version"].as_i64()) {
                let step = chain
                    .iter()
                    .position(|&(s, v)| s == status && v == version)
                    .unwrap_or_else(|| panic!("status {status} at version {version}: {o}"));
                let mut seen = seen.borrow_mut();
                if seen.last() != Some(&step) {
                    seen.push(step);
                }
            }
            (o["status"] == "notified").then_some(q)
        }
    })
    .await;
    let seen = seen.into_inner();
    assert!(seen.is_sorted(), "the order went back: {seen:?}");
    assert_eq!(q.body["order"]["version"], 4);
    assert_eq!(q.body["result"]["outcome"], "rejected");
    assert_eq!(q.body["result"]["result_id"], "r-1");
    assert_eq!(q.body["result"]["partner_ref"], "X");

    // Exactly one stored and one result event: the stream holds two messages, the partner's
    // consumer delivers the stored one, the gateway's the result one.
    let operator = hub.client("operator").await;
    Probe(&operator).wait_messages(2).await;
    let stored = pull(
        &durable(&partner, "partner-acme-air").await,
        10,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(stored.len(), 1, "one stored event");
    let ev = event(&stored[0]);
    assert_eq!(
        stored[0].subject.as_str(),
        format!("orders.events.stored.acme-air.{id}")
    );
    assert_eq!(ev["type"], "orderhub.order.stored");
    assert_eq!(ev["data"]["version"], 1);
    let results = pull(
        &durable(&gateway, "gateway").await,
        10,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(results.len(), 1, "one result event");
    let ev = event(&results[0]);
    assert_eq!(
        results[0].subject.as_str(),
        format!("orders.events.result.u-1.{id}")
    );
    assert_eq!(ev["type"], "orderhub.order.result_stored");
    assert_eq!(ev["data"]["outcome"], "rejected");
    assert_eq!(ev["data"]["partner_ref"], "X");
    assert_eq!(ev["data"]["version"], 3);
    assert_eq!(
        Probe(&operator).messages().await,
        2,
        "nothing else was published"
    );
}

async fn ownership_hides_other_callers_orders(hub: TestHub) {
    let gateway = hub.client("gateway").await;
    let acme = hub.client("partner-acme-air").await;
    let globex = hub.client("partner-globex-hotels").await;
    let id = submit(&gateway, "u-1", "k-1", "acme-air").await;
    eventually(Duration::from_secs(5), "acme can read it", || async {
        let r = request(
            &acme,
            "orders.partner.acme-air.get",
            json!({"order_id": id}),
        )
        .await;
        r.body.get("order").map(|_| ())
    })
    .await;

    // Another partner: not found, for reads and results alike, and nothing is stored.
    request(
        &globex,
        "orders.partner.globex-hotels.get",
        json!({"order_id": id}),
    )
    .await
    .assert_error("not_found", 404);
    request(
        &globex,
        "orders.partner.globex-hotels.result",
        json!({"order_id": id, "result_id": "g-1", "outcome": "confirmed"}),
    )
    .await
    .assert_error("not_found", 404);
    // Another user: not found; their list is empty.
    query_order(&gateway, &id, "u-2")
        .await
        .assert_error("not_found", 404);
    let list = request(&gateway, "orders.query", json!({"user_id": "u-2"})).await;
    assert_eq!(
        list.assert_ok(),
        &json!({"orders": [], "next_before": null})
    );
    // An order that does not exist at all.
    let ghost = uuid::Uuid::now_v7().to_string();
    request(
        &acme,
        "orders.partner.acme-air.get",
        json!({"order_id": ghost}),
    )
    .await
    .assert_error("not_found", 404);

    let q = query_order(&gateway, &id, "u-1").await;
    assert!(
        q.assert_ok()["result"].is_null(),
        "globex's result must not have been stored"
    );
}

fn globex_answers_within_1s(s: &mut orderhub::Settings) {
    for p in &mut s.partners {
        if p.id == "globex-hotels" {
            p.result_timeout = Duration::from_secs(1);
        }
    }
}

async fn partner_timeout_closes_the_order(hub: TestHub) {
    let gateway = hub.client("gateway").await;
    let globex = hub.client("partner-globex-hotels").await;
    let id = submit(&gateway, "u-9", "slow-1", "globex-hotels").await;

    let results = pull(
        &durable(&gateway, "gateway").await,
        1,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        results.len(),
        1,
        "the hub closes the order after the partner's timeout"
    );
    let ev = event(&results[0]);
    assert_eq!(ev["type"], "orderhub.order.result_stored");
    assert_eq!(ev["data"]["order_id"], id.as_str());
    assert_eq!(ev["data"]["outcome"], "timeout");
    assert!(ev["data"]["partner_ref"].is_null());

    let q = query_order(&gateway, &id, "u-9").await;
    assert_eq!(q.assert_ok()["result"]["outcome"], "timeout");
    // A late answer from the partner is not lost: it is the order's late result (see
    // story.rs for the whole late path).
    let late = request(
        &globex,
        "orders.partner.globex-hotels.result",
        json!({"order_id": id, "result_id": "late", "outcome": "confirmed"}),
    )
    .await;
    assert_eq!(late.assert_ok()["status"], "late_result_stored");

    // A second timeout never comes. It would come from the deadline actor closing the order
    // again: restarted, it has forgotten which orders it told and looks at once, and a later
    // order's timeout shows that it has looked since. By then, and once every committed event is
    // out, the gateway has had nothing of the order beyond its timeout result but its late event.
    let operator = hub.client("operator").await;
    restart_actor(&operator, "deadline").await;
    let later = submit(&gateway, "u-9", "slow-2", "globex-hotels").await;
    let consumer = durable(&gateway, "gateway").await;
    let mut events: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !events
        .iter()
        .any(|e| e["data"]["order_id"] == later.as_str() && e["data"]["outcome"] == "timeout")
    {
        assert!(
            Instant::now() < deadline,
            "the later order timed out: {events:?}"
        );
        let got = pull(&consumer, 10, Duration::from_millis(300)).await;
        events.extend(got.iter().map(event));
    }
    outbox_drained(&operator, Duration::from_secs(15)).await;
    events.extend(
        drain(&consumer, Duration::from_secs(15))
            .await
            .iter()
            .map(event),
    );
    let of_order: Vec<&str> = events
        .iter()
        .filter(|e| e["data"]["order_id"] == id.as_str())
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(
        of_order,
        ["orderhub.order.late_result_stored"],
        "after its timeout result, only the late result's event: {events:?}"
    );
    let q = query_order(&gateway, &id, "u-9").await;
    assert_eq!(q.assert_ok()["result"]["result_id"], "orderhub-timeout");
}

async fn external_aux_record_is_stored_and_queried(hub: TestHub) {
    let gateway = hub.client("gateway").await;
    let aux = hub.client("aux").await;
    let id = submit(&gateway, "u-1", "k-1", "acme-air").await;

    // The hub checks the order on the read node: on Postgres, once the replica has it.
    let r = eventually(
        Duration::from_secs(10),
        "the order is on the read node",
        || async {
            let r = request(
                &aux,
                "orders.aux.audit.record",
                json!({"order_id": id, "status": "done", "data": {"by": "audit-7"}}),
            )
            .await;
            (r.error_code() != Some("not_found")).then_some(r)
        },
    )
    .await;
    assert_eq!(
        r.assert_ok(),
        &json!({"order_id": id, "system": "audit", "status": "recorded"})
    );
    // Replacing it.
    let r = request(
        &aux,
        "orders.aux.audit.record",
        json!({"order_id": id, "status": "reviewed"}),
    )
    .await;
    r.assert_ok();
    let q = query_order(&gateway, &id, "u-1").await;
    let aux_list = q.assert_ok()["aux"].as_array().unwrap().clone();
    let audit: Vec<&Value> = aux_list.iter().filter(|a| a["system"] == "audit").collect();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["status"], "reviewed");
    assert_eq!(audit[0]["data"], json!({}));

    // The built-in systems' records are the hub's alone: the audit system's account cannot even
    // reach their subjects, and the hub refuses them to any connection that can.
    let aux_role = crate::roles::Role::connect(&hub.nats, "aux").await;
    aux_role
        .deny_requests(&[(
            "orders.aux.invoice.record",
            json!({"order_id": id, "status": "forged"}),
        )])
        .await;
    request(
        &hub.client("hub").await,
        "orders.aux.invoice.record",
        json!({"order_id": id, "status": "forged"}),
    )
    .await
    .assert_error("invalid_request", 400);
    let q = query_order(&gateway, &id, "u-1").await;
    assert!(
        q.assert_ok()["aux"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["status"] != "forged"),
        "{:?}",
        q.body
    );

    let ghost = uuid::Uuid::now_v7().to_string();
    request(
        &aux,
        "orders.aux.audit.record",
        json!({"order_id": ghost, "status": "done"}),
    )
    .await
    .assert_error("not_found", 404);
}

async fn query_lists_newest_first_with_pages(hub: TestHub) {
    let gateway = hub.client("gateway").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(submit(&gateway, "u-list", &format!("k-{i}"), "acme-air").await);
    }
    ids.reverse();
    eventually(
        Duration::from_secs(10),
        "all five orders on the read node",
        || async {
            let all = request(&gateway, "orders.query", json!({"user_id": "u-list"})).await;
            (all.body["orders"].as_array().map(Vec::len) == Some(5)).then_some(())
        },
    )
    .await;
    let page1 = request(
        &gateway,
        "orders.query",
        json!({"user_id": "u-list", "limit": 2}),
    )
    .await;
    let b = page1.assert_ok();
    let got: Vec<&str> = b["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[0].as_str(), ids[1].as_str()]);
    assert_eq!(b["next_before"], ids[1].as_str());
    let page2 = request(
        &gateway,
        "orders.query",
        json!({"user_id": "u-list", "limit": 2, "before": ids[1]}),
    )
    .await;
    let b2 = page2.assert_ok();
    assert_eq!(b2["orders"][0]["order_id"], ids[2].as_str());
    let page3 = request(
        &gateway,
        "orders.query",
        json!({"user_id": "u-list", "limit": 2, "before": ids[3]}),
    )
    .await;
    let b3 = page3.assert_ok();
    assert_eq!(b3["orders"].as_array().unwrap().len(), 1);
    assert!(b3["next_before"].is_null());
    // Default limit 20 covers all five.
    let all = request(&gateway, "orders.query", json!({"user_id": "u-list"})).await;
    assert_eq!(all.assert_ok()["orders"].as_array().unwrap().len(), 5);
}

async fn service_discovery_lists_every_endpoint(hub: TestHub) {
    let operator = hub.client("operator").await;
    let info = request(&operator, "$SRV.INFO.orderhub", json!({})).await;
    let b = &info.body;
    assert_eq!(b["type"], "io.nats.micro.v1.info_response");
    assert_eq!(b["name"], "orderhub");
    let mut subjects: Vec<(String, String)> = b["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["queue_group"], "orderhub");
            (
                e["name"].as_str().unwrap().to_owned(),
                e["subject"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    subjects.sort();
    let want = [
        ("aux_record", "orders.aux.*.record"),
        ("partner_get", "orders.partner.*.get"),
        ("partner_result", "orders.partner.*.result"),
        ("query", "orders.query"),
        ("status", "orders.admin.status"),
        ("submit", "orders.submit"),
        ("trace", "orders.admin.trace"),
    ];
    assert_eq!(
        subjects,
        want.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    );

    // Errors count in $SRV.STATS.
    let gateway = hub.client("gateway").await;
    request_raw(&gateway, "orders.submit", b"not json".to_vec())
        .await
        .assert_error("invalid_request", 400);
    let stats = request(&operator, "$SRV.STATS.orderhub", json!({})).await;
    let submit = stats.body["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "submit")
        .unwrap()
        .clone();
    assert_eq!(submit["num_requests"], 1);
    assert_eq!(submit["num_errors"], 1);

    // Postgres: the replication actor probes the replica even with nothing to confirm.
    let s = eventually(
        Duration::from_secs(10),
        "the replica is known to be available",
        || async {
            let s = status(&operator).await;
            (s["replica"]["available"] == true).then_some(s)
        },
    )
    .await;
    let s = &s;
    if hub.is_postgres() {
        assert_eq!(s["replica"]["mode"], "postgres");
        assert!(s["replica"]["lag_bytes"].is_u64(), "{s}");
        assert!(s["replica"]["lag_ms"].is_u64(), "{s}");
    } else {
        assert_eq!(s["replica"]["mode"], "same-as-primary");
        assert_eq!(s["replica"]["lag_bytes"], 0);
        assert!(s["replica"]["confirmed_lsn"].is_null());
    }
    assert_eq!(s["replica"]["events_waiting"], 0);
    assert_eq!(s["nats"]["connected"], true);
    assert_eq!(s["database"]["primary_ok"], true);
    assert_eq!(s["database"]["aux_ok"], true);
    assert_eq!(s["outbox_pending"], 0);
    for key in [
        "instance_id",
        "version",
        "uptime_s",
        "actors_live",
        "in_flight",
    ] {
        assert!(s.get(key).is_some(), "status has {key}");
    }
}

/// A result event whose order the read node does not have (a stream kept across a database
/// reset) is offered to the built-in systems again a few times and then dropped, so it cannot
/// fill their consumers' unacknowledged windows.
#[tokio::test]
async fn an_event_of_an_order_the_read_node_lacks_is_retried_then_dropped() {
    let hub = TestHub::start().await;
    let js = jetstream::new(hub.client("hub").await);
    let ghost = uuid::Uuid::now_v7().to_string();
    let subject = format!("orders.events.result.u-ghost.{ghost}");
    let event = json!({
        "specversion": "1.0",
        "id": uuid::Uuid::now_v7().to_string(),
        "source": "orderhub",
        "type": "orderhub.order.result_stored",
        "subject": subject,
        "time": "2026-11-29T00:00:00Z",
        "datacontenttype": "application/json",
        "data": {"order_id": ghost, "user_id": "u-ghost", "partner_id": "acme-air",
                 "version": 3, "outcome": "confirmed", "partner_ref": null},
    });
    let published = Instant::now();
    js.publish(subject, serde_json::to_vec(&event).unwrap().into())
        .await
        .expect("publish")
        .await
        .expect("stored in the stream");
    for system in ["invoice", "loyalty"] {
        let consumer = hub_durable(&hub.client("hub").await, &format!("aux-{system}")).await;
        let info = eventually(
            Duration::from_secs(60),
            "the built-in system gives the event up",
            || {
                let mut consumer = consumer.clone();
                async move {
                    let info = consumer.info().await.ok()?.clone();
                    (info.num_pending == 0
                        && info.num_ack_pending == 0
                        && info.delivered.stream_sequence >= 1)
                        .then_some(info)
                }
            },
        )
        .await;
        assert!(
            info.delivered.consumer_sequence >= 10,
            "aux-{system}: offered 10 times before it was dropped: {info:?}"
        );
    }
    assert!(
        published.elapsed() >= Duration::from_secs(8),
        "each retry waits a second: dropped after {:?}",
        published.elapsed()
    );
    // The built-in systems go on with orders they can read.
    let gateway = hub.client("gateway").await;
    let order_id = submit(&gateway, "u-after", "r-1", "acme-air").await;
    let partner = hub.client("partner-acme-air").await;
    let r = request(
        &partner,
        "orders.partner.acme-air.result",
        json!({"order_id": order_id, "result_id": "r-1", "outcome": "confirmed", "partner_ref": "A-1"}),
    )
    .await;
    r.assert_ok();
    eventually(
        Duration::from_secs(30),
        "invoice and loyalty records",
        || {
            let (gateway, order_id) = (&gateway, &order_id);
            async move {
                let q = query_order(gateway, order_id, "u-after").await;
                (q.body["aux"].as_array().map(|a| a.len()) == Some(2)).then_some(())
            }
        },
    )
    .await;
}
