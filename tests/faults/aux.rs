//! (e) A built-in auxiliary subscriber's durable consumer deleted, then its hub killed.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};

use crate::helpers::*;
use crate::rig::*;

#[tokio::test]
async fn aux_consumer_deleted_then_its_hub_killed_mid_stream() {
    let _turn = one_at_a_time().await;
    let rate = rate(50.0);
    let mut rig = Rig::on_one_server(2, |_| {}).await;
    let load = Load::start(rig.gateway.clone(), rate, "auxdel", &PARTNERS);
    rig.run_load(&load, rate, 4.0).await;

    let hub_client = rig.bus.client("hub").await;
    let js = jetstream::new(hub_client.clone());
    let deleted = Instant::now();
    js.delete_consumer_from_stream("aux-invoice", STREAM)
        .await
        .expect("the hub user deletes consumer aux-invoice");
    println!("aux-invoice: consumer deleted");
    let recreated = eventually(
        Duration::from_secs(30),
        "a hub creates aux-invoice again",
        || {
            let js = js.clone();
            async move {
                js.get_consumer_from_stream::<pull::Config, _, _>("aux-invoice", STREAM)
                    .await
                    .ok()
                    .map(|_| Instant::now())
            }
        },
    )
    .await;
    println!(
        "aux-invoice: consumer back {:.2} s after it was deleted",
        (recreated - deleted).as_secs_f64()
    );
    rig.accepted_more(&load, 100).await;

    // A hub dies with aux batches in hand: they come back after the ack wait.
    let killed = Instant::now();
    rig.hubs[0].kill().await;
    fault_lasts(2.0).await;
    rig.hubs[0].spawn().await;
    rig.run_load(&load, rate, 3.0).await;
    rig.finish(
        load,
        Duration::from_secs(120),
        Duration::from_secs(3),
        &[
            ("consumer aux-invoice deleted", deleted),
            ("hub-1 SIGKILLed with aux batches in hand", killed),
        ],
    )
    .await;
    let mut consumer = js
        .get_consumer_from_stream::<pull::Config, _, _>("aux-invoice", STREAM)
        .await
        .expect("aux-invoice");
    let info = consumer.info().await.expect("consumer info");
    println!(
        "aux-invoice after the run: {} pending, {} awaiting ack, {} redelivered",
        info.num_pending, info.num_ack_pending, info.num_redelivered
    );
}
