//! (a) A NATS cluster: a node killed, a hub killed, the whole cluster restarted.

use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::rig::*;

/// Two hubs pinned to nodes 1 and 2 of a 3-node cluster, the clients on every node.
async fn cluster_rig() -> Rig {
    let bus = Bus::cluster().await;
    let db = shared_pg().create_database().await;
    let setups = (1..=2)
        .map(|n| HubSetup::on(&db, bus.nodes().node_url(n, "hub"), 3))
        .collect();
    Rig::start(bus, setups).await
}

#[tokio::test]
async fn nats_node_killed_under_load() {
    let _turn = one_at_a_time().await;
    let rate = rate(60.0);
    let rig = cluster_rig().await;
    let load = Load::start(rig.gateway.clone(), rate, "node", &PARTNERS);
    rig.run_load(&load, rate, 5.0).await;

    // The node hub-1 is pinned to, and maybe the stream's leader.
    let killed = Instant::now();
    rig.bus.nodes().kill_node(1).await;
    rig.accepted_more(&load, 50).await;
    fault_lasts(4.0).await;
    rig.bus.nodes().start_node(1).await;
    let restarted = Instant::now();
    rig.run_load(&load, rate, 5.0).await;

    rig.finish(
        load,
        Duration::from_secs(90),
        Duration::from_secs(3),
        &[
            ("NATS node 1 of 3 SIGKILLed", killed),
            ("NATS node 1 restarted", restarted),
        ],
    )
    .await;
}

#[tokio::test]
#[ignore = "slow: minutes on two cores; scripts/test runs it with ORDERHUB_SLOW_TESTS=1"]
async fn nats_cluster_node_hub_and_whole_cluster_restart() {
    let _turn = one_at_a_time().await;
    let rate = rate(60.0);
    let mut rig = cluster_rig().await;
    let load = Load::start(rig.gateway.clone(), rate, "cluster", &PARTNERS);
    rig.run_load(&load, rate, 8.0).await;

    let node_killed = Instant::now();
    rig.bus.nodes().kill_node(1).await;
    fault_lasts(8.0).await;
    rig.bus.nodes().start_node(1).await;
    let node_back = Instant::now();
    rig.run_load(&load, rate, 8.0).await;

    let hub_killed = Instant::now();
    rig.hubs[1].kill().await;
    fault_lasts(5.0).await;
    rig.hubs[1].spawn().await;
    rig.run_load(&load, rate, 8.0).await;

    let cluster_down = Instant::now();
    for n in 1..=3 {
        rig.bus.nodes().stop_node(n).await;
    }
    println!("cluster: every node stopped");
    for n in 1..=3 {
        rig.bus.nodes().start_node(n).await;
    }
    println!(
        "cluster: every node started again after {:.1} s",
        cluster_down.elapsed().as_secs_f64()
    );
    rig.accepted_more(&load, 100).await;
    rig.run_load(&load, rate, 8.0).await;

    rig.finish(
        load,
        Duration::from_secs(180),
        Duration::from_secs(5),
        &[
            ("NATS node 1 of 3 SIGKILLed", node_killed),
            ("NATS node 1 restarted", node_back),
            ("hub-2 SIGKILLed (restarted 5 s later)", hub_killed),
            ("whole NATS cluster stopped and started", cluster_down),
        ],
    )
    .await;
}
