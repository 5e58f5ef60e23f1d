//! The final checks, by counting.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use async_nats::Client;
use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use serde_json::{Value, json};

use super::*;
use crate::helpers::*;

/// How long [`lost_orders`] may take to get a sure answer for every order.
const LOST_ORDERS_DEADLINE: Duration = Duration::from_secs(120);

/// What the final checks expect.
pub struct Expect {
    /// Wait for every auxiliary record and the settled event too.
    pub aux: bool,
    /// Every result a partner was answered `result_stored` (or `late_result_stored`) ends as the
    /// order's result (late result) with the outcome it sent: not lost, not the hub's `timeout`.
    pub results: bool,
    /// How long the orders may take to reach their final state after the load ended.
    pub settle: Duration,
}

/// An order's events in the stream.
#[derive(Debug, Default, Clone)]
pub struct StreamOrder {
    pub stored: usize,
    pub result: usize,
    pub late: usize,
    pub settled: usize,
    /// The outcome of the (first) result event.
    pub outcome: String,
}

/// What the checks found.
pub struct Verified {
    pub stream: HashMap<String, StreamOrder>,
}

/// Orders the client saw accepted that the database no longer has (`not_found`). Each is asked
/// until a hub answers it for sure, for at most [`LOST_ORDERS_DEADLINE`] in all.
pub async fn lost_orders(gateway: &Client, acked: &[Acked]) -> Vec<Acked> {
    let deadline = Instant::now() + LOST_ORDERS_DEADLINE;
    let found = futures::stream::iter(acked.iter().cloned())
        .map(|a| {
            let gateway = gateway.clone();
            async move {
                loop {
                    let r = query_order(&gateway, &a.order_id, &a.user_id).await;
                    match r.error_code() {
                        Some("not_found") => return Some(a),
                        None => return None,
                        // The hubs are still coming up on the promoted node.
                        Some(code) => {
                            assert!(
                                Instant::now() < deadline,
                                "order {} still answered {code} {:?} after the load",
                                a.order_id,
                                LOST_ORDERS_DEADLINE
                            );
                            tokio::time::sleep(SLOW_POLL).await
                        }
                    }
                }
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    found.into_iter().flatten().collect()
}

fn final_state(body: &Value, expect: &Expect) -> bool {
    let status = body["order"]["status"].as_str().unwrap_or_default();
    if status != "notified" && status != "late_notified" {
        return false;
    }
    if !expect.aux {
        return true;
    }
    let systems: Vec<&str> = body["aux"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["system"].as_str()).collect())
        .unwrap_or_default();
    AUX_SYSTEMS.iter().all(|s| systems.contains(s)) && body["settled_at"].is_string()
}

/// Waits until every order in `acked` is in its final state (queried as its user), then until
/// nothing moves any more, then checks the stream and what every simulator received.
pub async fn verify(
    bus: &Bus,
    gateway: &Client,
    acked: &[Acked],
    sims: &Sims,
    expect: Expect,
) -> Verified {
    let t = Instant::now();
    let deadline = t + expect.settle;
    let mut pending: Vec<Acked> = acked.to_vec();
    let mut queries: HashMap<String, Value> = HashMap::new();
    while !pending.is_empty() {
        let answers = futures::stream::iter(pending.clone())
            .map(|a| {
                let gateway = gateway.clone();
                async move {
                    let r = query_order(&gateway, &a.order_id, &a.user_id).await;
                    (a, r.body)
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        pending.clear();
        for (a, body) in answers {
            if final_state(&body, &expect) {
                queries.insert(a.order_id.clone(), body);
            } else {
                pending.push(a);
            }
        }
        if !pending.is_empty() && Instant::now() > deadline {
            let examples: Vec<String> = pending
                .iter()
                .take(5)
                .map(|a| format!("{} ({}, attempts {})", a.order_id, a.partner_id, a.attempts))
                .collect();
            let a = &pending[0];
            let q = query_order(gateway, &a.order_id, &a.user_id).await;
            panic!(
                "{} of {} acknowledged orders did not reach their final state within {:?}: {examples:?}\nfirst: {}",
                pending.len(),
                acked.len(),
                expect.settle,
                q.body
            );
        }
        if !pending.is_empty() {
            // A query per pending order each pass: a pass in a while.
            tokio::time::sleep(SLOW_POLL * 2).await;
        }
    }
    println!(
        "settled: all {} acknowledged orders in their final state {:.1} s after the load ended",
        acked.len(),
        t.elapsed().as_secs_f64()
    );

    // Nothing in flight any more: the simulators idle, every consumer has had everything
    // acknowledged (an event delivered to a simulator that went away comes back after the 30 s
    // ack wait), and the stream stops growing.
    let hub = bus.client("hub").await;
    let js = jetstream::new(hub.clone());
    let mut consumers: Vec<String> = AUX_SYSTEMS.iter().map(|s| format!("aux-{s}")).collect();
    consumers.push("gateway".into());
    consumers.extend(PARTNERS.iter().map(|p| format!("partner-{p}")));
    let mut last = (u64::MAX, Instant::now());
    loop {
        let mut stream = js.get_stream(STREAM).await.expect("stream");
        let n = stream.info().await.expect("stream info").state.messages;
        let mut outstanding = 0;
        for name in &consumers {
            if let Ok(mut c) = stream.get_consumer::<pull::Config>(name).await
                && let Ok(info) = c.info().await
            {
                outstanding += info.num_pending + info.num_ack_pending as u64;
            }
        }
        if n != last.0 || sims.busy() > 0 || outstanding > 0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(90),
            "the stream keeps growing, or consumers keep events unacknowledged"
        );
        tokio::time::sleep(SLOW_POLL).await;
    }

    // The final answers, asked again now that nothing moves (a late result may have come after
    // the order first looked final). An `unavailable` answer is asked again: it says nothing of
    // the order.
    let answers = futures::stream::iter(acked.to_vec())
        .map(|a| {
            let gateway = gateway.clone();
            async move {
                let asked = Instant::now();
                loop {
                    let r = query_order(&gateway, &a.order_id, &a.user_id).await;
                    if r.error_code() != Some("unavailable") {
                        return (a.order_id, r.body);
                    }
                    assert!(
                        asked.elapsed() < Duration::from_secs(30),
                        "order {} still answered unavailable after 30 s: {}",
                        a.order_id,
                        r.body
                    );
                    tokio::time::sleep(SLOW_POLL).await;
                }
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    queries.extend(answers);

    // Every result a partner was acknowledged is kept with the outcome it sent (the simulated
    // partners confirm every order): a `result_stored` answer whose order ends as `timeout`, or
    // without a result, is a lost write. Orders the load never saw accepted are traced.
    if expect.results {
        let operator = bus.client("operator").await;
        let mut acknowledged = 0;
        let mut not_kept = Vec::new();
        for (partner, sim) in &sims.partners {
            let (stored, late) = {
                let seen = sim.seen.lock().unwrap();
                (seen.stored.clone(), seen.late.clone())
            };
            for (ids, field) in [(stored, "result"), (late, "late_result")] {
                for id in ids {
                    acknowledged += 1;
                    let body = match queries.get(&id) {
                        Some(b) => b.clone(),
                        None => {
                            request(&operator, "orders.admin.trace", json!({"order_id": id}))
                                .await
                                .body
                        }
                    };
                    if body[field]["outcome"] != "confirmed" {
                        not_kept.push(format!("{partner} {id}: {field} {}", body[field]));
                    }
                }
            }
        }
        for line in not_kept.iter().take(3) {
            let id = line.split(' ').nth(1).unwrap_or_default();
            let t = request(&operator, "orders.admin.trace", json!({"order_id": id})).await;
            println!(
                "RESULT NOT KEPT {line}\n  query: {}\n  trace: {}",
                queries.get(id).cloned().unwrap_or_default(),
                t.body
            );
        }
        assert!(
            not_kept.is_empty(),
            "{} of {acknowledged} results acknowledged to partners were not kept: {:?}",
            not_kept.len(),
            &not_kept[..not_kept.len().min(5)]
        );
        println!("results: all {acknowledged} results acknowledged to partners kept");
    }

    // The stream: each order's events exactly once.
    let acked_ids: HashSet<&str> = acked.iter().map(|a| a.order_id.as_str()).collect();
    let mut stream: HashMap<String, StreamOrder> = HashMap::new();
    let mut ids_by_type: HashMap<String, HashSet<String>> = HashMap::new();
    let mut stored_by_partner: HashMap<String, HashSet<String>> = HashMap::new();
    let messages = stream_subjects(&hub).await;
    let mut events_of: HashMap<String, Vec<Value>> = HashMap::new();
    for (subject, payload) in &messages {
        let ev: Value = serde_json::from_str(payload).expect("event JSON");
        events_of
            .entry(
                ev["data"]["order_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
            .or_default()
            .push(ev.clone());
        let order_id = ev["data"]["order_id"]
            .as_str()
            .expect("order_id")
            .to_owned();
        assert!(
            acked_ids.contains(order_id.as_str()),
            "an event for an order no client saw accepted: {subject}"
        );
        let kind = ev["type"].as_str().expect("type").to_owned();
        let id = ev["id"].as_str().expect("id").to_owned();
        assert!(
            ids_by_type
                .entry(kind.clone())
                .or_default()
                .insert(id.clone()),
            "event {id} twice in the stream"
        );
        let o = stream.entry(order_id).or_default();
        match kind.as_str() {
            "orderhub.order.stored" => {
                o.stored += 1;
                stored_by_partner
                    .entry(
                        ev["data"]["partner_id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    )
                    .or_default()
                    .insert(id);
            }
            "orderhub.order.result_stored" => {
                o.result += 1;
                if o.outcome.is_empty() {
                    o.outcome = ev["data"]["outcome"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                }
            }
            "orderhub.order.late_result_stored" => o.late += 1,
            "orderhub.order.settled" => o.settled += 1,
            other => panic!("unexpected event type {other} on {subject}"),
        }
    }
    let mut wrong = Vec::new();
    for a in acked {
        let Some(o) = stream.get(&a.order_id) else {
            wrong.push((a, "no event at all".to_owned()));
            continue;
        };
        let q = &queries[&a.order_id];
        let status = if o.late == 1 {
            "late_notified"
        } else {
            "notified"
        };
        if o.stored != 1 || o.result != 1 || o.late > 1 || (expect.aux && o.settled != 1) {
            wrong.push((
                a,
                format!(
                    "want one stored, one result, at most one late{} event: {o:?}",
                    if expect.aux { ", one settled" } else { "" }
                ),
            ));
        } else if q["order"]["status"] != status {
            // The query agrees with the stream.
            wrong.push((
                a,
                format!(
                    "status {} while the stream says {status}",
                    q["order"]["status"]
                ),
            ));
        }
    }
    if !wrong.is_empty() {
        let operator = bus.client("operator").await;
        for (a, why) in wrong.iter().take(3) {
            println!("ORDER {} ({}): {why}", a.order_id, a.partner_id);
            for ev in &events_of[&a.order_id] {
                println!(
                    "  event {} {} {} {}",
                    ev["time"], ev["type"], ev["id"], ev["data"]
                );
            }
            let t = request(
                &operator,
                "orders.admin.trace",
                json!({"order_id": a.order_id}),
            )
            .await;
            println!("  trace: {}", t.body);
        }
        panic!(
            "{} of {} orders have the wrong events in the stream; first: {} {}",
            wrong.len(),
            acked.len(),
            wrong[0].0.order_id,
            wrong[0].1
        );
    }

    // Auxiliary records: each system's once.
    let mut aux_missing: BTreeMap<&str, usize> = BTreeMap::new();
    for a in acked {
        let q = &queries[&a.order_id];
        for system in AUX_SYSTEMS {
            let n = q["aux"]
                .as_array()
                .map(|r| r.iter().filter(|r| r["system"] == system).count())
                .unwrap_or_default();
            assert!(n <= 1, "order {}: {n} records of {system}: {q}", a.order_id);
            if n == 0 {
                *aux_missing.entry(system).or_default() += 1;
            }
        }
    }
    if expect.aux {
        assert!(
            aux_missing.is_empty(),
            "missing aux records: {aux_missing:?}"
        );
    }

    // What each consumer should have seen, by event id, against what each simulator saw.
    let want = |types: &[&str]| -> HashSet<String> {
        types
            .iter()
            .flat_map(|t| ids_by_type.get(*t).cloned().unwrap_or_default())
            .collect()
    };
    let result_types = [
        "orderhub.order.result_stored",
        "orderhub.order.late_result_stored",
    ];
    let mut checks: Vec<(String, &Sim, HashSet<String>)> = vec![
        (
            "gateway".into(),
            &sims.gateway,
            want(&[result_types[0], result_types[1], "orderhub.order.settled"]),
        ),
        ("aux-audit".into(), &sims.audit, want(&result_types)),
    ];
    for (id, sim) in &sims.partners {
        let stored = stored_by_partner.get(*id).cloned().unwrap_or_default();
        checks.push((format!("partner-{id}"), sim, stored));
    }
    println!(
        "stream: {} messages for {} orders: {}",
        messages.len(),
        stream.len(),
        ids_by_type
            .iter()
            .map(|(k, v)| format!("{} {}", v.len(), k.trim_start_matches("orderhub.order.")))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let outcomes = stream
        .values()
        .fold(BTreeMap::<&str, usize>::new(), |mut m, o| {
            *m.entry(o.outcome.as_str()).or_default() += 1;
            m
        });
    println!("outcomes: {outcomes:?}; aux records missing: {aux_missing:?}");
    for (name, sim, want) in checks {
        let s = sim.seen.lock().unwrap();
        let got: HashSet<&String> = s.events.keys().collect();
        let missing = want.iter().filter(|id| !got.contains(id)).count();
        let extra = got.iter().filter(|id| !want.contains(**id)).count();
        println!(
            "consumer {name}: {} distinct events ({} deliveries, {} redelivered); answers {:?}",
            s.events.len(),
            s.deliveries,
            s.deliveries - s.events.len(),
            s.answers
        );
        assert_eq!(
            (missing, extra),
            (0, 0),
            "{name}: events it should have seen but did not, and ones it should not have"
        );
    }
    Verified { stream }
}
