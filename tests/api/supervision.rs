//! Supervision: each long-lived actor of an in-process hub is killed by its registry name under a
//! steady load. It must come back (a new incarnation under the same name, a restart counted in
//! `orders.admin.status`), and afterwards every accepted order settles with exactly one stored, one
//! result and one settled event in the stream and all three auxiliary records: nothing stalled,
//! nothing doubled. Every test runs on SQLite and on the Postgres pair, where the replication actor
//! really fences events.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Client;
use serde_json::{Value, json};

use crate::helpers::{
    Settings, TestHub, assert_once_per_order, both_backends, events_per_order, eventually, order,
    outbox_drained, query_order, run_partner, status, stream_subjects,
};

/// Orders of one run; the kill comes after the first [`KILL_AFTER`] are accepted.
const ORDERS: usize = 240;
const KILL_AFTER: usize = 60;
/// Submits in flight at once.
const CONCURRENCY: usize = 4;
/// How long an order may take to settle after the kill: a killed subscriber's unacknowledged
/// events come back only after the consumer's 30 s ack wait, and a loaded machine adds to that.
const SETTLE_WITHIN: Duration = Duration::from_secs(180);
/// The pause before a simulator asks a busy hub again.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Every fourth order goes to `globex-hotels`, which never answers: the deadline actor closes it.
const SILENT_PARTNER_TIMEOUT: &str = "1s";

fn silent_globex(s: &mut Settings) {
    for p in &mut s.partners {
        if p.id == "globex-hotels" {
            p.result_timeout = humantime::parse_duration(SILENT_PARTNER_TIMEOUT).unwrap();
        }
    }
}

both_backends!(
    writer => silent_globex,
    replication => silent_globex,
    relay => silent_globex,
    deadline => silent_globex,
    aux_invoice => silent_globex,
    aux_loyalty => silent_globex,
    settler => silent_globex,
);

async fn writer(hub: TestHub) {
    kill_under_load(hub, "writer-0").await
}
async fn replication(hub: TestHub) {
    kill_under_load(hub, "replication").await
}
async fn relay(hub: TestHub) {
    kill_under_load(hub, "relay").await
}
async fn deadline(hub: TestHub) {
    kill_under_load(hub, "deadline").await
}
async fn aux_invoice(hub: TestHub) {
    kill_under_load(hub, "aux-invoice").await
}
async fn aux_loyalty(hub: TestHub) {
    kill_under_load(hub, "aux-loyalty").await
}
async fn settler(hub: TestHub) {
    kill_under_load(hub, "settler").await
}

/// An accepted order: `(order_id, user_id, partner_id)`.
type Accepted = Arc<Mutex<Vec<(String, String, String)>>>;

async fn kill_under_load(mut hub: TestHub, role: &str) {
    let gateway = hub.client("gateway").await;
    let operator = hub.client("operator").await;
    let partner = run_partner(hub.client("partner-acme-air").await);
    let auditor = run_auditor(hub.client("aux").await);

    let first = status(&operator).await;
    let instance = first["instance_id"]
        .as_str()
        .expect("instance_id")
        .to_owned();
    assert_eq!(first["restarts"][role], 0, "{role} is supervised: {first}");
    let name = actors::registry_name(&instance, role);
    let before = ractor::registry::where_is(name.clone())
        .unwrap_or_else(|| panic!("actor {name} is registered"))
        .get_id();

    let accepted: Accepted = Arc::default();
    let load = tokio::spawn(submit_all(gateway.clone(), accepted.clone()));
    eventually(
        Duration::from_secs(60),
        "the first orders are accepted",
        || {
            let n = accepted.lock().unwrap().len();
            async move { (n >= KILL_AFTER).then_some(()) }
        },
    )
    .await;

    ractor::registry::where_is(name.clone())
        .expect("still registered before the kill")
        .kill();
    let after_kill = accepted.lock().unwrap().len();

    eventually(Duration::from_secs(10), "the restart is reported", || {
        let operator = operator.clone();
        async move {
            let s = status(&operator).await;
            (s["restarts"][role].as_u64() >= Some(1)).then_some(())
        }
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "a new incarnation under the same name",
        || {
            let id = ractor::registry::where_is(name.clone()).map(|c| c.get_id());
            async move { id.filter(|id| *id != before).map(|_| ()) }
        },
    )
    .await;

    load.await.expect("load ran to the end");
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(
        accepted.len(),
        ORDERS,
        "every order was accepted in the end"
    );
    assert!(
        after_kill < ORDERS,
        "the kill came while orders were still arriving ({after_kill} of {ORDERS})"
    );

    for (order_id, user_id, partner_id) in &accepted {
        let outcome = if partner_id == "acme-air" {
            "confirmed"
        } else {
            "timeout"
        };
        let reply = eventually(
            SETTLE_WITHIN,
            &format!("order {order_id} settles with both aux records"),
            || async {
                let r = query_order(&gateway, order_id, user_id).await;
                let body = r.body;
                let systems: Vec<&str> = body["aux"]
                    .as_array()?
                    .iter()
                    .filter_map(|a| a["system"].as_str())
                    .collect();
                let done = body["order"]["status"] == "notified"
                    && systems.contains(&"invoice")
                    && systems.contains(&"loyalty")
                    && body["settled_at"].is_string();
                done.then_some(body.clone())
            },
        )
        .await;
        assert_eq!(reply["order"]["version"], 4, "{reply}");
        assert_eq!(reply["result"]["outcome"], outcome, "{reply}");
        let aux = reply["aux"].as_array().expect("aux list");
        assert_eq!(aux.len(), 3, "one record per configured system: {reply}");
    }

    // Every settled event is out once nothing waits in the outbox; a second settlement of an
    // order would be a second settled event in the stream.
    outbox_drained(&operator, SETTLE_WITHIN).await;
    let per_order = events_per_order(&stream_subjects(&hub.client("hub").await).await);
    assert_once_per_order(
        &per_order,
        accepted.iter().map(|(id, _, _)| id),
        &["stored", "result_stored", "settled"],
    );
    let settled: usize = per_order.values().filter_map(|c| c.get("settled")).sum();
    assert_eq!(settled, ORDERS, "one settled event per order");
    partner.abort();
    auditor.abort();
    hub.stop().await;
}

/// The external `audit` system: records every result event it receives, until aborted.
fn run_auditor(aux: Client) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use futures::StreamExt;
        let consumer = crate::helpers::durable(&aux, "aux-audit").await;
        let mut messages = consumer.messages().await.expect("message stream");
        while let Some(m) = messages.next().await {
            let Ok(m) = m else { continue };
            let ev: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
            let body = json!({"order_id": ev["data"]["order_id"], "status": "done"});
            loop {
                let sent = tokio::time::timeout(
                    Duration::from_secs(5),
                    aux.request(
                        "orders.aux.audit.record",
                        serde_json::to_vec(&body).unwrap().into(),
                    ),
                )
                .await;
                if let Ok(Ok(reply)) = sent {
                    let v: Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
                    if v["error"].is_null() {
                        break;
                    }
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            let _ = m.ack().await;
        }
    })
}

/// Submits [`ORDERS`] orders, [`CONCURRENCY`] at a time; an order refused `unavailable` (a writer
/// restarting) is retried with the same key until it is accepted.
async fn submit_all(gateway: Client, accepted: Accepted) {
    use futures::StreamExt;
    futures::stream::iter(0..ORDERS)
        .for_each_concurrent(CONCURRENCY, |i| {
            let (gateway, accepted) = (gateway.clone(), accepted.clone());
            async move {
                let user = format!("u-sup-{}", i % 7);
                let partner = if i % 4 == 0 {
                    "globex-hotels"
                } else {
                    "acme-air"
                };
                let body = order(&user, &format!("sup-{i}"), partner);
                let order_id = submit_until_accepted(&gateway, &body).await;
                accepted
                    .lock()
                    .unwrap()
                    .push((order_id, user, partner.to_owned()));
            }
        })
        .await;
}

async fn submit_until_accepted(gateway: &Client, body: &Value) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let sent = tokio::time::timeout(
            Duration::from_secs(10),
            gateway.request("orders.submit", serde_json::to_vec(body).unwrap().into()),
        )
        .await;
        if let Ok(Ok(reply)) = sent {
            let v: Value = serde_json::from_slice(&reply.payload).expect("reply JSON");
            match v["error"]["code"].as_str() {
                None => {
                    assert_eq!(v["status"], "accepted", "{v}");
                    return v["order_id"].as_str().expect("order_id").to_owned();
                }
                Some("unavailable") => {}
                Some(other) => panic!("submit refused with {other}: {v}"),
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "order {body} was never accepted"
        );
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}
