//! The order's whole story, driven from outside as each role: the settled event (once, after the
//! last auxiliary record, with two hubs too), late results after a timeout (stored, released as
//! late events, idempotent), the strict chain when a late result beats the timeout's result event,
//! `orders.admin.trace` (and its refusal to every other role), `/metrics`, admission control per
//! partner, and order actors that passivate while their order waits.

use std::collections::HashMap;
use std::time::Duration;

use actors::writer::lock_key;
use async_nats::Client;
use sea_orm::sqlx::{self, Connection, PgConnection, PgPool};
use serde_json::{Value, json};

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(30);

fn quick_globex(s: &mut Settings) {
    for p in &mut s.partners {
        if p.id == "globex-hotels" {
            p.result_timeout = Duration::from_secs(1);
        }
    }
}

both_backends!(
    settled_arrives_once_after_the_last_aux_record,
    settled_says_what_each_system_recorded_when_all_record_at_once,
    late_result_after_a_timeout_is_stored_and_released => quick_globex,
    trace_shows_every_transition_and_event_with_its_consumers,
);

/// The next events on a durable consumer (acknowledged), at most `n`, within `wait`.
async fn next_events(client: &Client, consumer: &str, n: usize, wait: Duration) -> Vec<Value> {
    let c = durable(client, consumer).await;
    pull(&c, n, wait).await.iter().map(event).collect()
}

/// Answers the order's stored event as the partner (pulling it from the partner's consumer).
async fn answer(partner: &Client, partner_id: &str, order_id: &str, outcome: &str) -> Reply {
    let stored = next_events(partner, &format!("partner-{partner_id}"), 1, WAIT).await;
    assert_eq!(stored.len(), 1, "the stored event reached {partner_id}");
    assert_eq!(stored[0]["data"]["order_id"], order_id);
    request(
        partner,
        &format!("orders.partner.{partner_id}.result"),
        json!({"order_id": order_id, "result_id": format!("r-{order_id}"), "outcome": outcome}),
    )
    .await
}

/// Waits until `query` shows what `done` wants, and returns that reply's body.
async fn query_until(
    gateway: &Client,
    order_id: &str,
    user: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    eventually(WAIT, what, || async {
        let r = query_order(gateway, order_id, user).await;
        done(&r.body).then_some(r.body)
    })
    .await
}

fn aux_systems(q: &Value) -> Vec<String> {
    q["aux"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["system"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn settled_arrives_once_after_the_last_aux_record(hub: TestHub) {
    let gateway = hub.client("gateway").await;
    let acme = hub.client("partner-acme-air").await;
    let audit = hub.client("aux").await;
    let id = submit(&gateway, "u-s", "s-1", "acme-air").await;
    answer(&acme, "acme-air", &id, "confirmed")
        .await
        .assert_ok();

    // The built-in systems record the result; the external `audit` has not yet: no settled event.
    query_until(&gateway, &id, "u-s", "invoice and loyalty records", |q| {
        let s = aux_systems(q);
        s.contains(&"invoice".into()) && s.contains(&"loyalty".into())
    })
    .await;
    let first = next_events(&gateway, "gateway", 5, Duration::from_secs(2)).await;
    let types: Vec<&str> = first.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        types,
        ["orderhub.order.result_stored"],
        "no settled event before audit's record"
    );
    assert!(query_order(&gateway, &id, "u-s").await.body["settled_at"].is_null());

    // The external system records: the order settles, once.
    let seen = next_events(&audit, "aux-audit", 1, WAIT).await;
    assert_eq!(seen[0]["data"]["order_id"], id.as_str());
    request(
        &audit,
        "orders.aux.audit.record",
        json!({"order_id": id, "status": "done", "data": {"checked": true}}),
    )
    .await
    .assert_ok();
    let settled = next_events(&gateway, "gateway", 1, WAIT).await;
    assert_eq!(settled.len(), 1, "the settled event reached the gateway");
    let s = &settled[0];
    assert_eq!(s["type"], "orderhub.order.settled");
    assert_eq!(s["data"]["order_id"], id.as_str());
    assert_eq!(s["data"]["user_id"], "u-s");
    assert_eq!(s["data"]["partner_id"], "acme-air");
    assert_eq!(s["data"]["outcome"], "confirmed");
    assert_eq!(s["data"]["version"], 4);
    assert_eq!(
        s["data"]["aux"],
        json!({"audit": "done", "invoice": "invoiced", "loyalty": "credited"})
    );
    let q = query_order(&gateway, &id, "u-s").await;
    assert!(q.assert_ok()["settled_at"].is_string(), "{}", q.body);

    // Recording again replaces the record but settles nothing twice.
    request(
        &audit,
        "orders.aux.audit.record",
        json!({"order_id": id, "status": "rechecked"}),
    )
    .await
    .assert_ok();
    let more = next_events(&gateway, "gateway", 1, Duration::from_secs(4)).await;
    assert!(more.is_empty(), "a second settled event: {more:?}");
}

/// Every system records as soon as the result event is out, so the settled event is made from
/// what the writer and the records told the settler, without reading them back: it says the
/// same as the records, the external system's status included.
async fn settled_says_what_each_system_recorded_when_all_record_at_once(hub: TestHub) {
    let gateway = hub.client("gateway").await;
    let acme = hub.client("partner-acme-air").await;
    let audit = hub.client("aux").await;
    for (n, outcome) in ["rejected", "confirmed"].into_iter().enumerate() {
        let user = format!("u-q{n}");
        let id = submit(&gateway, &user, &format!("q-{n}"), "acme-air").await;
        answer(&acme, "acme-air", &id, outcome).await.assert_ok();
        let seen = next_events(&audit, "aux-audit", 1, WAIT).await;
        assert_eq!(seen[0]["data"]["order_id"], id.as_str());
        let status = format!("checked-{n}");
        request(
            &audit,
            "orders.aux.audit.record",
            json!({"order_id": id, "status": status}),
        )
        .await
        .assert_ok();
        let events = next_events(&gateway, "gateway", 2, WAIT).await;
        let settled: Vec<&Value> = events
            .iter()
            .filter(|e| e["type"] == "orderhub.order.settled")
            .collect();
        assert_eq!(settled.len(), 1, "one settled event: {events:?}");
        let data = &settled[0]["data"];
        assert_eq!(data["order_id"], id.as_str());
        assert_eq!(data["user_id"], user.as_str());
        assert_eq!(data["partner_id"], "acme-air");
        assert_eq!(data["outcome"], outcome);
        assert_eq!(data["version"], 4);
        let (invoice, loyalty) = match outcome {
            "confirmed" => ("invoiced", "credited"),
            _ => ("void", "skipped"),
        };
        assert_eq!(
            data["aux"],
            json!({"audit": status, "invoice": invoice, "loyalty": loyalty})
        );
    }
}

async fn late_result_after_a_timeout_is_stored_and_released(hub: TestHub) {
    let gateway = hub.client("gateway").await;
    let globex = hub.client("partner-globex-hotels").await;
    let audit = hub.client("aux").await;
    let id = submit(&gateway, "u-l", "l-1", "globex-hotels").await;
    let stored = next_events(&globex, "partner-globex-hotels", 1, WAIT).await;
    assert_eq!(stored[0]["data"]["order_id"], id.as_str());

    // The partner misses its 1 s: the hub closes the order as timeout.
    let timeout = next_events(&gateway, "gateway", 1, WAIT).await;
    assert_eq!(timeout[0]["type"], "orderhub.order.result_stored");
    assert_eq!(timeout[0]["data"]["outcome"], "timeout");

    // Then it answers: a late result, not a conflict.
    let body = json!({"order_id": id, "result_id": "g-late-1", "outcome": "confirmed",
                      "partner_ref": "HTL-9", "detail": {"room": "1204"}});
    let r = request(&globex, "orders.partner.globex-hotels.result", body.clone()).await;
    assert_eq!(
        r.assert_ok(),
        &json!({"order_id": id, "status": "late_result_stored", "duplicate": false})
    );
    let again = request(&globex, "orders.partner.globex-hotels.result", body.clone()).await;
    assert_eq!(
        again.assert_ok(),
        &json!({"order_id": id, "status": "late_result_stored", "duplicate": true})
    );
    let mut other = body.clone();
    other["outcome"] = json!("rejected");
    request(&globex, "orders.partner.globex-hotels.result", other)
        .await
        .assert_error("conflict", 409);
    let second = json!({"order_id": id, "result_id": "g-late-2", "outcome": "failed"});
    request(&globex, "orders.partner.globex-hotels.result", second)
        .await
        .assert_error("conflict", 409);

    // The late event reaches the gateway and the external aux system, after the result event.
    let late = next_events(&gateway, "gateway", 1, WAIT).await;
    assert_eq!(late[0]["type"], "orderhub.order.late_result_stored");
    assert_eq!(late[0]["data"]["version"], 5);
    assert_eq!(late[0]["data"]["outcome"], "confirmed");
    assert_eq!(late[0]["data"]["partner_ref"], "HTL-9");
    let aux_events = next_events(&audit, "aux-audit", 2, WAIT).await;
    let types: Vec<&str> = aux_events
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(
        types,
        [
            "orderhub.order.result_stored",
            "orderhub.order.late_result_stored"
        ]
    );

    // Query shows both results; the order ends `late_notified`; the built-in systems record
    // what they did with the late outcome.
    let q = query_until(
        &gateway,
        &id,
        "u-l",
        "late_notified with late records",
        |q| {
            q["order"]["status"] == "late_notified"
                && q["aux"]
                    .as_array()
                    .is_some_and(|a| a.iter().filter(|r| r["data"]["late"] == true).count() == 2)
        },
    )
    .await;
    assert_eq!(q["order"]["version"], 6);
    assert_eq!(q["result"]["outcome"], "timeout");
    assert_eq!(q["late_result"]["result_id"], "g-late-1");
    assert_eq!(q["late_result"]["outcome"], "confirmed");
    let invoice = q["aux"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["system"] == "invoice")
        .expect("invoice record")
        .clone();
    assert_eq!(invoice["status"], "invoiced", "{invoice}");
    assert_eq!(invoice["data"]["late_outcome"], "confirmed");
}

async fn trace_shows_every_transition_and_event_with_its_consumers(hub: TestHub) {
    let gateway = hub.client("gateway").await;
    let acme = hub.client("partner-acme-air").await;
    let audit = hub.client("aux").await;
    let operator = hub.client("operator").await;
    let id = submit(&gateway, "u-t", "t-1", "acme-air").await;
    answer(&acme, "acme-air", &id, "confirmed")
        .await
        .assert_ok();
    next_events(&audit, "aux-audit", 1, WAIT).await;
    request(
        &audit,
        "orders.aux.audit.record",
        json!({"order_id": id, "status": "done"}),
    )
    .await
    .assert_ok();
    // The gateway acknowledges the result and the settled event.
    let got = next_events(&gateway, "gateway", 2, WAIT).await;
    assert_eq!(got.len(), 2, "{got:?}");

    let t = eventually(WAIT, "every consumer has acknowledged", || async {
        let r = request(&operator, "orders.admin.trace", json!({"order_id": id})).await;
        let t = r.assert_ok().clone();
        let all_acked = t["events"].as_array().is_some_and(|events| {
            events.len() == 3
                && events.iter().all(|e| {
                    e["consumers"]
                        .as_array()
                        .is_some_and(|c| !c.is_empty() && c.iter().all(|c| c["acked"] == true))
                })
        });
        all_acked.then_some(t)
    })
    .await;
    let versions: Vec<(i64, &str)> = t["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["version"].as_i64().unwrap(),
                x["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        [
            (1, "accepted"),
            (2, "dispatched"),
            (3, "result_stored"),
            (4, "notified")
        ]
    );
    let events = t["events"].as_array().unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "orderhub.order.stored",
            "orderhub.order.result_stored",
            "orderhub.order.settled"
        ]
    );
    let mut last_seq = 0;
    for e in events {
        let seq = e["stream_seq"].as_u64().expect("a stream sequence");
        assert!(seq > last_seq, "stream order follows the story: {t}");
        last_seq = seq;
        assert!(e["published_at"].is_string());
        assert_eq!(e["commit_lsn"].is_string(), hub.is_postgres(), "{e}");
    }
    let names = |e: &Value| -> Vec<String> {
        let mut n: Vec<String> = e["consumers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&events[0]), ["partner-acme-air"]);
    assert_eq!(
        names(&events[1]),
        ["aux-audit", "aux-invoice", "aux-loyalty", "gateway"]
    );
    assert_eq!(names(&events[2]), ["gateway"]);
    assert_eq!(t["aux_missing"], json!([]));
    assert!(t["settled_at"].is_string());
    assert_eq!(t["result"]["outcome"], "confirmed");

    // Unknown order: not_found. A person's view: `orderhub trace` renders the same reply.
    let unknown = uuid::Uuid::now_v7().to_string();
    request(
        &operator,
        "orders.admin.trace",
        json!({"order_id": unknown}),
    )
    .await
    .assert_error("not_found", 404);
    let text = orderhub::trace::render(&serde_json::from_value(t).expect("a trace reply"));
    for needle in [
        "v1 accepted",
        "v4 notified",
        "orderhub.order.settled",
        "gateway acked",
    ] {
        assert!(text.contains(needle), "{needle} in:\n{text}");
    }
}

#[tokio::test]
async fn trace_is_refused_to_every_role_but_the_operator() {
    let hub = TestHub::start().await;
    let gateway = hub.client("gateway").await;
    let id = submit(&gateway, "u-r", "r-1", "acme-air").await;
    for user in [
        "gateway",
        "partner-acme-air",
        "partner-globex-hotels",
        "aux",
    ] {
        let client = hub.client(user).await;
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            client.request(
                "orders.admin.trace",
                serde_json::to_vec(&json!({"order_id": id})).unwrap().into(),
            ),
        )
        .await;
        assert!(
            !matches!(answer, Ok(Ok(ref m)) if m.status.is_none()),
            "{user} got a trace: {answer:?}"
        );
    }
    let stats = request(
        &hub.client("operator").await,
        "$SRV.STATS.orderhub",
        json!({}),
    )
    .await;
    let trace = stats.body["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "trace")
        .expect("trace endpoint")
        .clone();
    assert_eq!(
        trace["num_requests"], 0,
        "no refused request reached the hub: {trace}"
    );
}

#[tokio::test]
async fn a_late_result_before_the_timeouts_event_still_gives_the_strict_chain() {
    // A pair of its own: replay is paused to hold the timeout's result event back.
    let pair = PgPair::start().await;
    let hub = TestHub::start_postgres_on(&pair.env, quick_globex).await;
    let gateway = hub.client("gateway").await;
    let globex = hub.client("partner-globex-hotels").await;
    let operator = hub.client("operator").await;
    let id = submit(&gateway, "u-c", "c-1", "globex-hotels").await;
    next_events(&globex, "partner-globex-hotels", 1, WAIT).await;
    pair.pause_replay().await;
    let trace = |id: String| {
        let operator = operator.clone();
        async move {
            request(&operator, "orders.admin.trace", json!({"order_id": id}))
                .await
                .assert_ok()
                .clone()
        }
    };
    // The timeout is committed on the primary; its event waits for the replica.
    eventually(WAIT, "the timeout result committed", || async {
        let t = trace(id.clone()).await;
        (t["order"]["status"] == "result_stored").then_some(())
    })
    .await;
    // With `ack_after = "replica"` the late result is committed but cannot be confirmed while
    // replay is paused: `unavailable` within 2 s, and it stays stored.
    let late = json!({"order_id": id, "result_id": "early-late", "outcome": "confirmed"});
    let started = std::time::Instant::now();
    let r = request(&globex, "orders.partner.globex-hotels.result", late.clone()).await;
    r.assert_error("unavailable", 503);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("replica"),
        "{}",
        r.body
    );
    let t = trace(id.clone()).await;
    assert_eq!(
        t["order"]["status"], "result_stored",
        "notified must come first: {t}"
    );
    assert_eq!(t["late_result"]["result_id"], "early-late");

    pair.resume_replay().await;
    // The retry with the same result gets the normal answer once the replica has it.
    let r = request(&globex, "orders.partner.globex-hotels.result", late).await;
    assert_eq!(
        r.assert_ok(),
        &json!({"order_id": id, "status": "late_result_stored", "duplicate": true})
    );
    let events = next_events(&gateway, "gateway", 2, WAIT).await;
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        types,
        [
            "orderhub.order.result_stored",
            "orderhub.order.late_result_stored"
        ]
    );
    let t = eventually(WAIT, "late_notified", || async {
        let t = trace(id.clone()).await;
        (t["order"]["status"] == "late_notified").then_some(t)
    })
    .await;
    let versions: Vec<i64> = t["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn two_hubs_settle_each_order_once() {
    const ORDERS: usize = 30;
    let mut hub = TestHub::start_postgres().await;
    let second = App::start(hub.settings.clone())
        .await
        .expect("second hub starts");
    let gateway = hub.client("gateway").await;
    let acme = hub.client("partner-acme-air").await;
    let audit = hub.client("aux").await;
    let operator = hub.client("operator").await;
    let partner = run_partner(acme);
    let mut ids = Vec::new();
    for i in 0..ORDERS {
        ids.push(submit(&gateway, "u-2h", &format!("2h-{i}"), "acme-air").await);
    }
    // The external system records every order as its result events arrive.
    let mut recorded = 0;
    while recorded < ORDERS {
        for e in next_events(&audit, "aux-audit", ORDERS - recorded, WAIT).await {
            request(
                &audit,
                "orders.aux.audit.record",
                json!({"order_id": e["data"]["order_id"], "status": "done"}),
            )
            .await
            .assert_ok();
            recorded += 1;
        }
    }
    let mut settled: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while settled.len() < ORDERS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {ORDERS} orders settled",
            settled.len()
        );
        for e in next_events(&gateway, "gateway", 2 * ORDERS, Duration::from_millis(500)).await {
            if e["type"] == "orderhub.order.settled" {
                *settled
                    .entry(e["data"]["order_id"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
        }
    }
    // Anything still on its way would show as a second delivery.
    for e in next_events(&gateway, "gateway", ORDERS, Duration::from_secs(2)).await {
        if e["type"] == "orderhub.order.settled" {
            *settled
                .entry(e["data"]["order_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    // Both hubs had a chance to settle twice; the stream holds one settled event per order.
    let s = status(&operator).await;
    assert_eq!(s["outbox_pending"], 0, "{s}");
    // Both hubs did the work: the endpoints share a queue group, so each instance took some of
    // the submits, results and records, and each record hints its instance's settler.
    let instances = every_instance(&operator, "STATS", 2).await;
    for stats in &instances {
        let handled = |endpoint: &str| {
            stats["endpoints"]
                .as_array()
                .unwrap_or_else(|| panic!("stats: {stats}"))
                .iter()
                .find(|e| e["name"] == endpoint)
                .and_then(|e| e["num_requests"].as_u64())
                .unwrap_or(0)
        };
        for endpoint in ["submit", "partner_result", "aux_record"] {
            assert!(
                handled(endpoint) > 0,
                "instance {} handled no {endpoint} request: {stats}",
                stats["id"]
            );
        }
    }
    let stream = stream_subjects(&hub.client("hub").await).await;
    let per_order = stream
        .iter()
        .filter(|(subject, _)| subject.starts_with("orders.events.settled."))
        .fold(HashMap::<String, usize>::new(), |mut m, (subject, _)| {
            *m.entry(subject.rsplit('.').next().unwrap().to_owned())
                .or_default() += 1;
            m
        });
    assert_eq!(per_order.len(), ORDERS);
    for id in &ids {
        assert_eq!(per_order.get(id), Some(&1), "order {id}");
        assert_eq!(
            settled.get(id),
            Some(&1),
            "order {id} delivered to the gateway once"
        );
    }
    partner.abort();
    second.stop().await.expect("second hub stops");
    hub.stop().await;
}

/// Instances keep out of each other's way on an order by a transaction-scoped advisory lock
/// under the order's key (`writer::lock_key`): while another session holds that lock, the
/// partner's result for the order waits, uncommitted, and is stored once the session lets go.
#[tokio::test]
async fn a_result_waits_while_another_session_holds_its_orders_lock() {
    let hub = TestHub::start_postgres().await;
    let Store::Postgres(db) = &hub.store else {
        unreachable!("a Postgres hub")
    };
    let gateway = hub.client("gateway").await;
    let acme = hub.client("partner-acme-air").await;
    let id = submit(&gateway, "u-lock", "lock-1", "acme-air").await;
    let stored = next_events(&acme, "partner-acme-air", 1, WAIT).await;
    assert_eq!(stored.len(), 1, "the stored event reached acme-air");
    query_until(&gateway, &id, "u-lock", "the order dispatched", |o| {
        o["order"]["status"] == "dispatched"
    })
    .await;

    let mut holder = PgConnection::connect(&db.primary_url)
        .await
        .expect("connect to the primary");
    let watcher = PgPool::connect(&db.primary_url)
        .await
        .expect("connect to the primary");
    let mut held = holder.begin().await.expect("begin");
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock_key(&id))
        .execute(&mut *held)
        .await
        .expect("take the order's lock");
    let result = tokio::spawn({
        let (acme, id) = (acme.clone(), id.clone());
        async move {
            request(
                &acme,
                "orders.partner.acme-air.result",
                json!({"order_id": id, "result_id": "r-lock", "outcome": "confirmed"}),
            )
            .await
        }
    });
    eventually(WAIT, "a session waiting for the order's lock", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        )
        .fetch_one(&watcher)
        .await
        .expect("read pg_locks");
        (waiting > 0).then_some(())
    })
    .await;
    let version: i32 = sqlx::query_scalar("SELECT version FROM order_state WHERE id = $1")
        .bind(&id)
        .fetch_one(&watcher)
        .await
        .expect("read the order's state");
    assert_eq!(version, 2, "nothing committed past the lock");
    assert!(
        !result.is_finished(),
        "the result was answered under the lock"
    );

    held.commit().await.expect("let go of the lock");
    let reply = result.await.expect("the request's task");
    assert_eq!(reply.assert_ok()["status"], "result_stored", "{reply:?}");
    let version: i32 = sqlx::query_scalar("SELECT version FROM order_state WHERE id = $1")
        .bind(&id)
        .fetch_one(&watcher)
        .await
        .expect("read the order's state");
    assert!(version >= 3, "the result was stored: version {version}");
}

#[tokio::test]
async fn a_saturated_partner_is_refused_while_others_are_accepted() {
    let hub = TestHub::start_with(|s| {
        for p in &mut s.partners {
            if p.id == "globex-hotels" {
                p.max_pending = 3;
                p.result_timeout = Duration::from_secs(5);
            }
        }
    })
    .await;
    let gateway = hub.client("gateway").await;
    let operator = hub.client("operator").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(submit(&gateway, "u-a", &format!("a-{i}"), "globex-hotels").await);
    }
    let refused = request(
        &gateway,
        "orders.submit",
        order("u-a", "a-3", "globex-hotels"),
    )
    .await;
    refused.assert_error("unavailable", 503);
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("globex-hotels"), "{message}");
    // The wait it suggests: a tenth of the partner's 5 s result_timeout.
    assert_eq!(
        refused.header("Orderhub-Retry-After-Ms").as_deref(),
        Some("500"),
        "{refused:?}"
    );
    // A retry of an order already taken gets its answer, saturated or not: the same order as a
    // duplicate, or a conflict for another body under its key.
    let again = request(
        &gateway,
        "orders.submit",
        order("u-a", "a-0", "globex-hotels"),
    )
    .await;
    assert_eq!(
        again.assert_ok(),
        &json!({"order_id": ids[0], "status": "accepted", "duplicate": true})
    );
    let mut other = order("u-a", "a-1", "globex-hotels");
    other["amount_minor"] = json!(1);
    request(&gateway, "orders.submit", other)
        .await
        .assert_error("conflict", 409);
    // Still saturated after those answers: a new key is refused again.
    request(
        &gateway,
        "orders.submit",
        order("u-a", "a-4", "globex-hotels"),
    )
    .await
    .assert_error("unavailable", 503);
    assert_eq!(
        status(&operator).await["partners_pending"]["globex-hotels"],
        3
    );
    // Another partner is not affected.
    submit(&gateway, "u-a", "a-acme", "acme-air").await;
    // The silent partner's orders time out: it takes orders again, and the refused key works.
    let accepted = eventually(WAIT, "globex accepts again", || async {
        let r = request(
            &gateway,
            "orders.submit",
            order("u-a", "a-3", "globex-hotels"),
        )
        .await;
        (r.error_code().is_none()).then_some(r.body)
    })
    .await;
    assert_eq!(
        accepted["duplicate"], false,
        "the refused order was not stored: {accepted}"
    );
}

#[tokio::test]
async fn a_passivated_order_wakes_up_for_its_result_and_for_its_deadline() {
    let hub = TestHub::start_with(quick_globex_slow).await;
    let gateway = hub.client("gateway").await;
    let acme = hub.client("partner-acme-air").await;
    let operator = hub.client("operator").await;
    let answered = submit(&gateway, "u-p", "p-1", "acme-air").await;
    let expiring = submit(&gateway, "u-p", "p-2", "globex-hotels").await;
    let stored = next_events(&acme, "partner-acme-air", 1, WAIT).await;
    assert_eq!(stored[0]["data"]["order_id"], answered.as_str());
    eventually(WAIT, "both order actors passivated", || async {
        (status(&operator).await["actors_live"] == 0).then_some(())
    })
    .await;
    // Passivated while they wait: neither order has a result yet (the globex order's deadline is
    // still ahead), so each actor stopped idle, not after closing its order.
    for id in [&answered, &expiring] {
        let q = query_order(&gateway, id, "u-p").await;
        let q = q.assert_ok();
        assert_eq!(q["order"]["status"], "dispatched", "{q}");
        assert!(q["result"].is_null(), "{q}");
    }
    request(
        &acme,
        "orders.partner.acme-air.result",
        json!({"order_id": answered, "result_id": "p-r", "outcome": "confirmed"}),
    )
    .await
    .assert_ok();
    let q = query_until(&gateway, &answered, "u-p", "the result", |q| {
        q["order"]["status"] == "notified"
    })
    .await;
    assert_eq!(q["result"]["result_id"], "p-r");
    let q = query_until(&gateway, &expiring, "u-p", "the deadline", |q| {
        q["order"]["status"] == "notified"
    })
    .await;
    assert_eq!(q["result"]["outcome"], "timeout");
}

/// `globex-hotels` times out after 6 s: long enough for its order's actor to passivate first.
fn quick_globex_slow(s: &mut Settings) {
    for p in &mut s.partners {
        if p.id == "globex-hotels" {
            p.result_timeout = Duration::from_secs(6);
        }
    }
}

#[tokio::test]
async fn metrics_are_served_and_move() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("metrics.toml");
    std::fs::write(
        &config,
        format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let mut child =
        spawn_hub_with(&nats, dir.path(), &["--config", config.to_str().unwrap()]).await;
    let gateway = nats.client("gateway").await;
    let before = scrape(port).await;
    for i in 0..5 {
        submit(&gateway, "u-m", &format!("m-{i}"), "acme-air").await;
    }
    request(&gateway, "orders.submit", json!({"nonsense": true}))
        .await
        .assert_error("invalid_request", 400);
    let after = eventually(WAIT, "the counters moved", || async {
        let text = scrape(port).await;
        (sample(
            &text,
            "orderhub_requests_total{endpoint=\"submit\",code=\"ok\"}",
        ) >= 5.0
            && sample(
                &text,
                "orderhub_events_published_total{stage=\"stored_event\"}",
            ) >= 5.0)
            .then_some(text)
    })
    .await;
    assert!(
        sample(
            &after,
            "orderhub_requests_total{endpoint=\"submit\",code=\"ok\"}"
        ) > sample(
            &before,
            "orderhub_requests_total{endpoint=\"submit\",code=\"ok\"}"
        )
    );
    assert_eq!(
        sample(
            &after,
            "orderhub_requests_total{endpoint=\"submit\",code=\"invalid_request\"}"
        ),
        1.0
    );
    for family in [
        "orderhub_lifecycle_seconds_bucket{stage=\"accepted\"",
        "orderhub_lifecycle_seconds_bucket{stage=\"stored_event\"",
        "orderhub_group_commit_ops_bucket",
        "orderhub_actors_live",
        "orderhub_outbox_pending",
        "orderhub_outbox_oldest_seconds",
        "orderhub_replica_events_waiting",
        "orderhub_actor_restarts{actor=\"relay\"}",
        "orderhub_partner_pending{partner=\"acme-air\"}",
    ] {
        assert!(after.contains(family), "{family} in:\n{after}");
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// `GET /metrics` over plain HTTP/1.1.
async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    eventually(WAIT, "the metrics endpoint answers", || async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        out.starts_with("HTTP/1.1 200").then_some(out)
    })
    .await
}

/// The value of one sample line (`name{labels} value`), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(str::trim))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
