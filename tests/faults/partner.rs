//! (d) A partner offline under load, then back.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use crate::helpers::*;
use crate::rig::*;

async fn partner_offline(offline: Duration, timeout: Duration, rate: f64) {
    let _turn = one_at_a_time().await;
    let mut rig = Rig::on_one_server(2, |setup| {
        // The partner that stays online gets a deadline a saturated machine cannot miss: its
        // orders are the ones that must be unaffected.
        setup.timeouts = [Duration::from_secs(120), timeout];
    })
    .await;
    let load = Load::start(rig.gateway.clone(), rate, "offline", &PARTNERS);
    rig.run_load(&load, rate, 3.0).await;

    let seen = rig.sims.take_offline("globex-hotels");
    fault_lasts(offline.as_secs_f64()).await;
    let back = chrono::Utc::now();
    let back_instant = Instant::now();
    rig.sims
        .bring_back(&rig.bus, "globex-hotels", seen.clone())
        .await;
    rig.run_load(&load, rate, 3.0).await;
    let report = load.stop().await;
    let v = rig
        .verify(
            &report.acked,
            Expect {
                aux: true,
                results: true,
                settle: Duration::from_secs(120) + timeout,
            },
        )
        .await;

    // Every globex order dispatched while it was offline, early enough for its deadline to pass
    // before it came back, was closed by a hub as `timeout`: exactly one result event. (The
    // deadline starts at dispatch, which trails the submit by the hubs' backlog.)
    let operator = rig.bus.client("operator").await;
    // A deadline is checked four times a second, and an order whose close failed is tried again
    // five seconds later; a saturated hub commits the close later still, and a partner's answer
    // that comes first wins. So only orders whose deadline passed well before it came back count.
    let margin = chrono::Duration::from_std(timeout.max(Duration::from_secs(6))).expect("margin");
    let timeout_c = chrono::Duration::from_std(timeout).expect("timeout");
    let globex: Vec<&Acked> = report
        .acked
        .iter()
        .filter(|a| a.partner_id == "globex-hotels")
        .collect();
    let dispatched_at: Vec<(String, Option<chrono::DateTime<chrono::Utc>>)> =
        futures::stream::iter(globex)
            .map(|a| {
                let operator = operator.clone();
                async move {
                    let t = request(
                        &operator,
                        "orders.admin.trace",
                        json!({"order_id": a.order_id}),
                    )
                    .await;
                    let at = t.assert_ok()["transitions"]
                        .as_array()
                        .and_then(|ts| ts.iter().find(|t| t["status"] == "dispatched"))
                        .and_then(|t| t["at"].as_str())
                        .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
                        .map(|at| at.with_timezone(&chrono::Utc));
                    (a.order_id.clone(), at)
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
    // Orders whose stored event the partner had before it went offline were answered by it.
    let received_before: HashSet<String> = seen
        .lock()
        .unwrap()
        .events
        .values()
        .filter(|(_, kind, at)| kind == "orderhub.order.stored" && *at < back_instant)
        .map(|(order_id, _, _)| order_id.clone())
        .collect();
    let mut closed = 0;
    for (order_id, at) in dispatched_at {
        let at = at.unwrap_or_else(|| panic!("order {order_id} has no dispatched transition"));
        let o = &v.stream[&order_id];
        if !received_before.contains(&order_id) && at + timeout_c + margin < back {
            assert_eq!(
                o.outcome, "timeout",
                "order {order_id} (dispatched {at}) closed by its deadline: {o:?}"
            );
            assert_eq!(o.result, 1);
            closed += 1;
        }
    }
    for a in report.acked.iter().filter(|a| a.partner_id == "acme-air") {
        assert_eq!(v.stream[&a.order_id].outcome, "confirmed", "{}", a.order_id);
    }
    let timeouts = v.stream.values().filter(|o| o.outcome == "timeout").count();
    let late = v.stream.values().filter(|o| o.late == 1).count();
    let s = seen.lock().unwrap();
    let missed = s
        .events
        .values()
        .filter(|(_, kind, at)| kind == "orderhub.order.stored" && *at >= back_instant)
        .count();
    println!(
        "partner offline {} s (result_timeout {} s): it received {missed} stored events it had \
         missed once back; {timeouts} orders closed as timeout (each once; {closed} of them \
         dispatched well inside the window), {late} late results stored after it came back",
        offline.as_secs(),
        timeout.as_secs()
    );
    assert!(closed > 0, "some orders waited out their deadline");
    assert!(missed > 0, "the partner received what it missed");
    assert_eq!(late, s.late.len(), "each late answer became one late event");
    report_baseline(Duration::from_secs(2), &report, &rig.sims);
}

#[tokio::test]
async fn partner_offline_10s_then_back() {
    partner_offline(Duration::from_secs(10), Duration::from_secs(3), rate(40.0)).await;
}

#[tokio::test]
#[ignore = "slow: a minute offline plus the catch-up; scripts/test runs it with ORDERHUB_SLOW_TESTS=1"]
async fn partner_offline_60s_then_back() {
    partner_offline(Duration::from_secs(60), Duration::from_secs(10), rate(50.0)).await;
}
