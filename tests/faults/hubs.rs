//! (b) Three hubs: one stopped with SIGTERM, one killed with SIGKILL, both restarted.

use std::time::{Duration, Instant};

use crate::rig::*;

#[tokio::test]
async fn three_hubs_one_terminated_one_killed_under_load() {
    let _turn = one_at_a_time().await;
    let rate = rate(60.0);
    let mut rig = Rig::on_one_server(3, |_| {}).await;
    let load = Load::start(rig.gateway.clone(), rate, "three", &PARTNERS);
    rig.run_load(&load, rate, 4.0).await;

    let terminated = Instant::now();
    rig.hubs[0].terminate().await;
    rig.accepted_more(&load, 60).await;
    let killed = Instant::now();
    rig.hubs[1].kill().await;
    rig.accepted_more(&load, 60).await;
    rig.hubs[0].spawn().await;
    rig.hubs[1].spawn().await;
    rig.run_load(&load, rate, 3.0).await;

    rig.finish(
        load,
        Duration::from_secs(90),
        Duration::from_secs(3),
        &[
            ("hub-1 of 3 SIGTERMed", terminated),
            ("hub-2 of 3 SIGKILLed", killed),
        ],
    )
    .await;
}
