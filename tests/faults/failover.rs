//! (c) Failover: the replica promoted after the primary is lost.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;
use crate::rig::*;

/// The drill under load: stall the replica's WAL receiver, crash the primary, kill the receiver,
/// promote the replica, restart the hubs on it. Returns the acknowledged orders that are lost.
async fn failover_drill(ack_after: &'static str, rate: f64) -> usize {
    let _turn = one_at_a_time().await;
    let pair = PgPair::start().await;
    let db = pair.env.create_database().await;
    let bus = Bus::single().await;
    let setups = (0..2)
        .map(|_| {
            let mut s = HubSetup::on(&db, bus.url("hub"), 1);
            s.ack_after = ack_after;
            // A result lost with the primary is closed by the deadline.
            s.timeouts = [Duration::from_secs(10), Duration::from_secs(10)];
            s
        })
        .collect();
    let mut rig = Rig::start(bus, setups).await;
    let load = Load::start(
        rig.gateway.clone(),
        rate,
        &format!("fo-{ack_after}"),
        &PARTNERS,
    );
    rig.run_load(&load, rate, 5.0).await;

    let stalled = Instant::now();
    pair.stall_receiver().await;
    // Commits from here on reach the primary only.
    fault_lasts(1.5).await;
    let step = Instant::now();
    pair.crash_primary().await;
    let crashed = Instant::now();
    pair.kill_receiver().await;
    let killed = Instant::now();
    let promoted = pair.promote().await;
    println!(
        "failover ({ack_after}): primary crashed in {:.1} s, receiver killed and replica back in \
         {:.1} s, promoted in {:.1} s; {:.1} s after the receiver stalled",
        (crashed - step).as_secs_f64(),
        (killed - crashed).as_secs_f64(),
        killed.elapsed().as_secs_f64(),
        stalled.elapsed().as_secs_f64()
    );
    for hub in &mut rig.hubs {
        hub.kill().await;
        hub.setup.primary_url = database_url(&promoted, &db.name);
        hub.setup.replica_url = String::new();
        hub.setup.aux_url = database_url(&promoted, &format!("{}_aux", db.name));
        hub.spawn().await;
    }
    println!(
        "failover ({ack_after}): hubs serving on the promoted node {:.1} s after the receiver stalled",
        stalled.elapsed().as_secs_f64()
    );
    rig.run_load(&load, rate, 4.0).await;
    let report = load.stop().await;

    let lost = lost_orders(&rig.gateway, &report.acked).await;
    println!(
        "failover ({ack_after}): {} of {} acknowledged orders LOST",
        lost.len(),
        report.acked.len()
    );
    let lost_ids: HashSet<&str> = lost.iter().map(|a| a.order_id.as_str()).collect();
    let kept: Vec<Acked> = report
        .acked
        .iter()
        .filter(|a| !lost_ids.contains(a.order_id.as_str()))
        .cloned()
        .collect();
    // With ack_after = replica an auxiliary record counts as written only once the replica has
    // it, so every one is there; with "primary", records written on the lost primary are gone
    // with it (their events were acknowledged): they are counted, not awaited.
    let replicated = ack_after == "replica";
    let v = rig
        .verify(
            &kept,
            Expect {
                aux: replicated,
                results: replicated,
                settle: Duration::from_secs(120),
            },
        )
        .await;
    // The results partners were told were stored.
    let acknowledged: Vec<String> = rig
        .sims
        .partners
        .iter()
        .flat_map(|(_, sim)| {
            sim.seen
                .lock()
                .unwrap()
                .stored
                .iter()
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();
    let results_lost: Vec<&String> = acknowledged
        .iter()
        .filter(|id| v.stream.get(*id).is_none_or(|o| o.outcome != "confirmed"))
        .collect();
    let operator = rig.bus.client("operator").await;
    for id in results_lost.iter().take(3) {
        let t = request(&operator, "orders.admin.trace", json!({"order_id": id})).await;
        println!("RESULT LOST {id}: {}", t.body);
    }
    let results_lost = results_lost.len();
    println!(
        "failover ({ack_after}): {results_lost} of {} results acknowledged to partners LOST",
        acknowledged.len()
    );
    if replicated {
        assert_eq!(
            results_lost, 0,
            "ack_after = replica: no acknowledged result is lost"
        );
    }
    report_baseline(Duration::from_secs(3), &report, &rig.sims);
    report_fault(
        &format!("primary lost and replica promoted (ack_after = {ack_after})"),
        stalled,
        report.ended,
        &report,
        &rig.sims,
    );
    lost.len()
}

#[tokio::test]
async fn failover_with_ack_after_replica_loses_no_acknowledged_order() {
    let lost = failover_drill("replica", rate(60.0)).await;
    assert_eq!(
        lost, 0,
        "ack_after = replica: no acknowledged order is lost"
    );
}

#[tokio::test]
#[ignore = "slow: a second pair and another minute of load; scripts/test runs it with ORDERHUB_SLOW_TESTS=1"]
async fn failover_with_ack_after_primary_counts_lost_orders() {
    // What ack_after = primary costs is what this measures. The receiver is stalled for 1.5 s
    // before the crash, so the orders acknowledged in that window exist on the lost primary
    // only: a drill that lost none would not have tested anything, nor would the zero of the
    // replica mode mean anything.
    let lost = failover_drill("primary", rate(60.0)).await;
    assert!(
        lost > 0,
        "ack_after = primary: the orders acknowledged while the receiver stalled are lost"
    );
}
