//! The replica guarantees (`docs/protocol.md`, "Guarantees") on a real Postgres primary + streaming
//! replica: no event before the replica can serve its data, `status` says why events wait,
//! everything flows once the replica is back, and a primary outage is answered `unavailable`
//! promptly and survived without a restart. With `ack_after = "replica"` (the default) a write the
//! replica cannot confirm is answered `unavailable` within 2 s, stays committed, and its retry
//! gets the normal answer once the replica is back; the tests of held events run with
//! `ack_after = "primary"`, where writes are accepted while the replica lags. Each test stops or
//! pauses nodes, so each has a pair of its own.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use actors::wal::Lsn;
use async_nats::Client;
use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;
use sea_orm::sqlx::{self, Connection, PgConnection};
use serde_json::{Value, json};

use crate::helpers::*;
use orderhub::settings::AckAfter;

/// A WAL position `sql` reads on `conn`.
async fn lsn(conn: &mut PgConnection, sql: &str) -> Lsn {
    let text: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    Lsn::parse(&text).unwrap_or_else(|| panic!("{sql}: bad LSN {text:?}"))
}

/// How long the tests watch a consumer to see that nothing arrives.
const QUIET_WINDOW: Duration = Duration::from_secs(3);
/// `submit` and `result` must answer this fast while the primary is down.
const PROMPT: Duration = Duration::from_secs(2);
/// How long waiting events may take to arrive once the replica (or primary) is back.
const CATCH_UP: Duration = Duration::from_secs(30);

/// A hub on a pair of the test's own, and the roles the tests act as.
struct Rig {
    // Field order is drop order: the hub goes before the pair it uses.
    hub: TestHub,
    pair: PgPair,
    gateway: Client,
    partner: Client,
    operator: Client,
}

impl Rig {
    /// A rig whose hub acknowledges after the replica (the default).
    async fn start() -> Self {
        Self::start_with(AckAfter::Replica).await
    }

    async fn start_with(ack_after: AckAfter) -> Self {
        let pair = PgPair::start().await;
        let hub = TestHub::start_postgres_on(&pair.env, |s| s.database.ack_after = ack_after).await;
        let gateway = hub.client("gateway").await;
        let partner = hub.client("partner-acme-air").await;
        let operator = hub.client("operator").await;
        Self {
            hub,
            pair,
            gateway,
            partner,
            operator,
        }
    }

    async fn stored_consumer(&self) -> PullConsumer {
        durable(&self.partner, "partner-acme-air").await
    }

    async fn result_consumer(&self) -> PullConsumer {
        durable(&self.gateway, "gateway").await
    }

    async fn status(&self) -> Value {
        status(&self.operator).await
    }

    async fn result(&self, order_id: &str, result_id: &str) -> Reply {
        request(
            &self.partner,
            "orders.partner.acme-air.result",
            json!({"order_id": order_id, "result_id": result_id, "outcome": "confirmed"}),
        )
        .await
    }

    /// Receives events for exactly `want` (order ids) from `consumer`; as each arrives, checks that
    /// its `Orderhub-Commit-Lsn` is at or below the replica's replay position read the moment it
    /// arrived (on a connection opened beforehand, before the message is acknowledged or anything
    /// else waits: the replica only moves forward, so a later reading could cover an event
    /// released too early), and at or above `before` (the primary's position before the
    /// requests that caused the events); and (stored events) that the partner can `get` the order
    /// at that moment; and that, once the hub has nothing left to publish, the consumer holds no
    /// further event. Returns each order's stream sequence.
    async fn receive_fresh(
        &self,
        consumer: &PullConsumer,
        want: &HashSet<String>,
        before: Lsn,
    ) -> HashMap<String, u64> {
        let mut replica = self.replica_connection().await;
        let deadline = Instant::now() + CATCH_UP;
        let mut seen = HashMap::new();
        while seen.len() < want.len() {
            assert!(
                Instant::now() < deadline,
                "only {} of {} events arrived: {seen:?}",
                seen.len(),
                want.len()
            );
            let mut batch = consumer
                .fetch()
                .max_messages(1)
                .expires(Duration::from_millis(500))
                .messages()
                .await
                .expect("fetch");
            while let Some(m) = batch.next().await {
                let m = m.expect("message");
                let replay = lsn(&mut replica, "SELECT pg_last_wal_replay_lsn()::text").await;
                m.ack().await.expect("ack");
                let fence = self
                    .hub
                    .check_commit_lsn(&m, Some(replay))
                    .expect("a fence on Postgres");
                assert!(
                    fence >= before,
                    "event {} fenced at {fence}, before the commit it announces (the primary was at {before} before the requests)",
                    m.subject
                );
                let ev = event(&m);
                let order_id = ev["data"]["order_id"]
                    .as_str()
                    .expect("order_id")
                    .to_owned();
                assert!(want.contains(&order_id), "unexpected event for {order_id}");
                // The data the event announces is on the replica at that moment: the order for a
                // stored event, its result (version 3 on) for a result event.
                let got = request(
                    &self.partner,
                    "orders.partner.acme-air.get",
                    json!({"order_id": order_id}),
                )
                .await;
                let o = &got.assert_ok()["order"];
                assert_eq!(
                    o["order_id"],
                    order_id.as_str(),
                    "readable when its event arrives"
                );
                assert!(
                    o["version"].as_i64() >= ev["data"]["version"].as_i64(),
                    "the replica serves version {} when the event of version {} arrives",
                    o["version"],
                    ev["data"]["version"]
                );
                let seq = m.info().expect("JetStream message").stream_sequence;
                assert!(
                    seen.insert(order_id.clone(), seq).is_none(),
                    "a second event for {order_id}"
                );
            }
        }
        // Once the hub has published everything it committed, a second copy of any of these
        // events would still be on the consumer.
        outbox_drained(&self.operator, CATCH_UP).await;
        let extra: Vec<String> = drain(consumer, CATCH_UP)
            .await
            .iter()
            .map(|m| format!("{} {}", m.subject, event(m)["data"]["order_id"]))
            .collect();
        assert!(
            extra.is_empty(),
            "events beyond one per order of {want:?}: {extra:?}"
        );
        seen
    }

    /// A connection to the hub's database on the replica.
    async fn replica_connection(&self) -> PgConnection {
        let Store::Postgres(db) = &self.hub.store else {
            panic!("the rig runs on Postgres");
        };
        PgConnection::connect(&db.replica_url)
            .await
            .unwrap_or_else(|e| panic!("connect to the replica: {e}"))
    }

    /// The id of the order `user` stored under `request_id`, read on the primary.
    async fn stored_on_primary(&self, user: &str, request_id: &str) -> Option<String> {
        let Store::Postgres(db) = &self.hub.store else {
            panic!("the rig runs on Postgres");
        };
        let mut conn = PgConnection::connect(&db.primary_url)
            .await
            .unwrap_or_else(|e| panic!("connect to the primary: {e}"));
        let id: Option<String> =
            sqlx::query_scalar("SELECT id FROM orders WHERE user_id = $1 AND request_id = $2")
                .bind(user)
                .bind(request_id)
                .fetch_optional(&mut conn)
                .await
                .expect("orders on the primary");
        let _ = conn.close().await;
        id
    }

    /// The primary's WAL position now: every later commit lies beyond it.
    async fn primary_lsn(&self) -> Lsn {
        let Store::Postgres(db) = &self.hub.store else {
            panic!("the rig runs on Postgres");
        };
        let mut conn = PgConnection::connect(&db.primary_url)
            .await
            .unwrap_or_else(|e| panic!("connect to the primary: {e}"));
        let at = lsn(&mut conn, "SELECT pg_current_wal_lsn()::text").await;
        let _ = conn.close().await;
        at
    }

    /// Waits until every order is `notified` on the read node.
    async fn all_notified(&self, user: &str, ids: &[String]) {
        for id in ids {
            eventually(CATCH_UP, &format!("order {id} notified"), || async {
                let q = query_order(&self.gateway, id, user).await;
                (q.body["order"]["status"] == "notified").then_some(())
            })
            .await;
        }
    }
}

/// Nothing at all arrives on `consumer` for [`QUIET_WINDOW`].
async fn assert_quiet(consumer: &PullConsumer, what: &str) {
    let got = pull(consumer, 1, QUIET_WINDOW).await;
    assert!(
        got.is_empty(),
        "{what}: an event was published before the replica had its data: {:?}",
        got[0].subject
    );
}

/// The replica's part of `status`, checked as far as every state shares it.
fn replica_of(s: &Value) -> &Value {
    let r = &s["replica"];
    assert_eq!(r["mode"], "postgres", "{s}");
    r
}

/// Submits orders of `user` as `keys`, each accepted.
async fn submit_all(gateway: &Client, user: &str, keys: &[&str]) -> Vec<String> {
    let mut ids = Vec::new();
    for k in keys {
        let r = request(gateway, "orders.submit", order(user, k, "acme-air")).await;
        let body = r.assert_ok();
        assert_eq!(body["status"], "accepted");
        ids.push(body["order_id"].as_str().expect("order_id").to_owned());
    }
    ids
}

/// Stored events, then a result on the first order, then its result event after the stored one;
/// `before` is the primary's WAL position before the orders were submitted.
async fn flows_after_the_replica_returns(rig: &Rig, ids: &[String], before: Lsn) {
    let stored = rig
        .receive_fresh(
            &rig.stored_consumer().await,
            &ids.iter().cloned().collect(),
            before,
        )
        .await;
    let first = &ids[0];
    let results = rig
        .receive_fresh(
            &rig.result_consumer().await,
            &HashSet::from([first.clone()]),
            before,
        )
        .await;
    assert!(
        stored[first] < results[first],
        "per order, the stored event precedes the result event"
    );
    let s = eventually(Duration::from_secs(10), "status: nothing waits", || async {
        let s = rig.status().await;
        (s["replica"]["events_waiting"] == 0 && s["replica"]["reason"].is_null()).then_some(s)
    })
    .await;
    let r = replica_of(&s);
    assert_eq!(r["available"], true, "{s}");
    assert!(r["confirmed_lsn"].is_string(), "{s}");
}

#[tokio::test]
async fn acknowledged_means_replicated_and_a_retry_gets_the_normal_answer() {
    let rig = Rig::start().await;
    let user = "u-ack";
    // Before: accepted as usual, once the replica has it.
    let ok = submit_all(&rig.gateway, user, &["a-0"]).await;
    rig.pair.pause_replay().await;

    // The replica cannot confirm: `unavailable` within 2 s, and the order is committed.
    let started = Instant::now();
    let r = request(
        &rig.gateway,
        "orders.submit",
        order(user, "a-1", "acme-air"),
    )
    .await;
    r.assert_error("unavailable", 503);
    assert!(
        started.elapsed() < PROMPT,
        "answered in {:?}",
        started.elapsed()
    );
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("replica"),
        "the message says why: {message}"
    );
    let stored = rig
        .stored_on_primary(user, "a-1")
        .await
        .expect("the refused write stays committed on the primary");
    // A result the replica cannot confirm is answered the same way.
    let started = Instant::now();
    rig.result(&ok[0], "r-ack")
        .await
        .assert_error("unavailable", 503);
    assert!(
        started.elapsed() < PROMPT,
        "answered in {:?}",
        started.elapsed()
    );
    // Once the order's actor has stopped (idle), a retry reaches a fresh actor that reads the
    // order, result included, from the primary: the repeated answer waits for the replica too.
    eventually(CATCH_UP, "the order actors stop while idle", || async {
        (rig.status().await["actors_live"] == 0).then_some(())
    })
    .await;
    rig.result(&ok[0], "r-ack")
        .await
        .assert_error("unavailable", 503);
    // Retrying while replay is still paused: still not acknowledged.
    request(
        &rig.gateway,
        "orders.submit",
        order(user, "a-1", "acme-air"),
    )
    .await
    .assert_error("unavailable", 503);

    // Once the replica is back, the retries get the normal answers.
    rig.pair.resume_replay().await;
    let again = request(
        &rig.gateway,
        "orders.submit",
        order(user, "a-1", "acme-air"),
    )
    .await;
    assert_eq!(
        again.assert_ok(),
        &json!({"order_id": stored, "status": "accepted", "duplicate": true})
    );
    let result = rig.result(&ok[0], "r-ack").await;
    assert_eq!(
        result.assert_ok(),
        &json!({"order_id": ok[0], "status": "result_stored", "duplicate": true})
    );
    // Both orders flow on: the first settles, the retried one is dispatched to its partner.
    rig.all_notified(user, &ok).await;
    eventually(CATCH_UP, "the retried order is dispatched", || async {
        let q = query_order(&rig.gateway, &stored, user).await;
        (q.body["order"]["status"] == "dispatched").then_some(())
    })
    .await;
}

#[tokio::test]
async fn replay_paused_holds_events_until_resumed() {
    let rig = Rig::start_with(AckAfter::Primary).await;
    rig.pair.pause_replay().await;

    // Writes go on: the primary takes them.
    let before = rig.primary_lsn().await;
    let ids = submit_all(&rig.gateway, "u-paused", &["p-1", "p-2", "p-3"]).await;
    rig.result(&ids[0], "r-1").await.assert_ok();
    assert_quiet(&rig.stored_consumer().await, "replay paused").await;
    assert!(
        pull(&rig.result_consumer().await, 1, Duration::from_millis(300))
            .await
            .is_empty()
    );

    // The operator sees why.
    let s = eventually(
        Duration::from_secs(5),
        "status shows the replica behind",
        || async {
            let s = rig.status().await;
            (s["replica"]["lag_bytes"].as_u64() > Some(0)).then_some(s)
        },
    )
    .await;
    let r = replica_of(&s);
    assert_eq!(
        r["available"], true,
        "the replica answers, it only does not replay: {s}"
    );
    assert!(
        r["events_waiting"].as_u64() >= Some(4),
        "3 stored + 1 result event wait: {s}"
    );
    assert!(r["lag_ms"].is_u64(), "{s}");
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("paused"),
        "the reason names the paused replay: {s}"
    );
    // The partner cannot read what its events would announce.
    request(
        &rig.partner,
        "orders.partner.acme-air.get",
        json!({"order_id": ids[1]}),
    )
    .await
    .assert_error("not_found", 404);

    rig.pair.resume_replay().await;
    flows_after_the_replica_returns(&rig, &ids, before).await;
}

#[tokio::test]
async fn replica_down_holds_events_until_it_returns() {
    let rig = Rig::start_with(AckAfter::Primary).await;
    rig.pair.stop_replica().await;

    let before = rig.primary_lsn().await;
    let ids = submit_all(&rig.gateway, "u-down", &["d-1", "d-2", "d-3"]).await;
    rig.result(&ids[0], "r-1").await.assert_ok();
    assert_quiet(&rig.stored_consumer().await, "replica down").await;

    let s = eventually(
        Duration::from_secs(5),
        "status shows the replica down",
        || async {
            let s = rig.status().await;
            (s["replica"]["available"] == false).then_some(s)
        },
    )
    .await;
    let r = replica_of(&s);
    assert!(r["events_waiting"].as_u64() >= Some(4), "{s}");
    assert!(
        r["lag_bytes"].is_null() && r["lag_ms"].is_null(),
        "lag is unknown while the replica is down: {s}"
    );
    assert!(
        r["reason"].as_str().is_some_and(|t| t.contains("replica")),
        "{s}"
    );
    // Reads need the replica: a prompt, well-formed `unavailable`.
    request(
        &rig.partner,
        "orders.partner.acme-air.get",
        json!({"order_id": ids[1]}),
    )
    .await
    .assert_error("unavailable", 503);

    rig.pair.start_replica().await;
    flows_after_the_replica_returns(&rig, &ids, before).await;
    rig.all_notified("u-down", &ids[..1]).await;
}

#[tokio::test]
async fn primary_down_is_unavailable_promptly_and_recovers() {
    let rig = Rig::start().await;
    let user = "u-outage";
    // Some orders are dispatched before the outage, some only accepted.
    let before_early = rig.primary_lsn().await;
    let early = submit_all(&rig.gateway, user, &["e-1", "e-2"]).await;
    rig.receive_fresh(
        &rig.stored_consumer().await,
        &early.iter().cloned().collect(),
        before_early,
    )
    .await;
    rig.result(&early[0], "r-e-1").await.assert_ok();
    let before_late = rig.primary_lsn().await;
    let late = submit_all(&rig.gateway, user, &["l-1", "l-2"]).await;
    rig.pair.stop_primary().await;

    // Writes: `unavailable`, promptly, never a false `accepted`.
    for i in 0..3 {
        let started = Instant::now();
        let r = request(
            &rig.gateway,
            "orders.submit",
            order(user, &format!("o-{i}"), "acme-air"),
        )
        .await;
        r.assert_error("unavailable", 503);
        assert!(
            started.elapsed() < PROMPT,
            "submit answered after {:?}",
            started.elapsed()
        );
    }
    // A burst, so writers hold several ops at once.
    let burst: Vec<_> = (0..8)
        .map(|i| {
            let g = rig.gateway.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let r = request(
                    &g,
                    "orders.submit",
                    order("u-outage", &format!("b-{i}"), "acme-air"),
                )
                .await;
                (r, started.elapsed())
            })
        })
        .collect();
    for t in burst {
        let (r, took) = t.await.expect("burst request");
        r.assert_error("unavailable", 503);
        assert!(
            took < PROMPT,
            "a submit of the burst answered after {took:?}"
        );
    }
    for (id, rid) in [(&early[1], "r-e-2"), (&late[0], "r-l-1")] {
        let started = Instant::now();
        rig.result(id, rid).await.assert_error("unavailable", 503);
        assert!(
            started.elapsed() < PROMPT,
            "result answered after {:?}",
            started.elapsed()
        );
    }
    // Reads: from the replica, as before.
    let got = request(
        &rig.partner,
        "orders.partner.acme-air.get",
        json!({"order_id": early[1]}),
    )
    .await;
    assert_eq!(got.assert_ok()["order"]["order_id"], early[1].as_str());
    let q = eventually(
        Duration::from_secs(10),
        "query answers from the replica",
        || async {
            let q = request(
                &rig.gateway,
                "orders.query",
                json!({"order_id": early[0], "user_id": user}),
            )
            .await;
            (q.error_code().is_none()).then_some(q)
        },
    )
    .await;
    assert_eq!(q.body["result"]["outcome"], "confirmed");
    let list = request(&rig.gateway, "orders.query", json!({"user_id": user})).await;
    assert_eq!(list.assert_ok()["orders"].as_array().map(Vec::len), Some(4));
    let s = rig.status().await;
    assert_eq!(s["database"]["primary_ok"], false, "{s}");

    // The primary returns; the hub recovers by itself.
    rig.pair.start_primary().await;
    let after = eventually(CATCH_UP, "submit accepted again", || async {
        let r = request(
            &rig.gateway,
            "orders.submit",
            order(user, "after-1", "acme-air"),
        )
        .await;
        r.body["order_id"].as_str().map(str::to_owned)
    })
    .await;
    // Nothing acknowledged is lost, nothing refused was stored: every accepted order gets its
    // stored event once, settles with a result, and the outage's submits left no order.
    let undispatched: HashSet<String> = [&late[..], std::slice::from_ref(&after)]
        .concat()
        .into_iter()
        .collect();
    rig.receive_fresh(&rig.stored_consumer().await, &undispatched, before_late)
        .await;
    let pending: HashSet<String> = undispatched.iter().chain(&early[1..]).cloned().collect();
    for (i, id) in pending.iter().enumerate() {
        let rid = format!("r-after-{i}");
        eventually(Duration::from_secs(10), "result stored", || async {
            (rig.result(id, &rid).await.error_code().is_none()).then_some(())
        })
        .await;
    }
    let mut all: Vec<String> = pending.iter().cloned().collect();
    all.push(early[0].clone());
    rig.all_notified(user, &all).await;
    let list = request(&rig.gateway, "orders.query", json!({"user_id": user})).await;
    let listed: HashSet<String> = list.assert_ok()["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| o["order_id"].as_str().expect("order_id").to_owned())
        .collect();
    assert_eq!(listed, all.into_iter().collect::<HashSet<_>>());
    let s = eventually(Duration::from_secs(10), "status: healthy again", || async {
        let s = rig.status().await;
        (s["database"]["primary_ok"] == true && s["replica"]["events_waiting"] == 0).then_some(s)
    })
    .await;
    assert_eq!(replica_of(&s)["available"], true);
}
