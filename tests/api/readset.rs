//! Several read nodes, one fence (`database.replica_url` as a list): a read node that does not
//! answer leaves the read set, so events keep flowing and every read goes to a node that has the
//! data of the events released; `orders.admin.status` says which nodes serve reads.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

/// The replica's URL with the port of a server that is not there.
fn dead_node(replica_url: &str) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut url = url::Url::parse(replica_url).expect("replica URL");
    url.set_host(Some("127.0.0.1")).expect("host");
    url.set_port(Some(port)).expect("port");
    url.to_string()
}

#[tokio::test]
async fn a_read_node_that_does_not_answer_leaves_the_read_set_and_events_flow() {
    let mut dead = String::new();
    let hub = TestHub::start_postgres_with(|s| {
        dead = dead_node(&s.database.replica_url);
        s.database.replica_url = format!("{},{dead}", s.database.replica_url);
    })
    .await;
    let gateway = hub.client("gateway").await;
    let acme = hub.client("partner-acme-air").await;
    let operator = hub.client("operator").await;

    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(submit(&gateway, "u-rs", &format!("rs-{i}"), "acme-air").await);
    }
    // Every stored event is released, and its order served to the partner, by the node that is
    // in the read set.
    let consumer = durable(&acme, "partner-acme-air").await;
    let got = pull(&consumer, ids.len(), Duration::from_secs(30)).await;
    assert_eq!(got.len(), ids.len(), "every stored event is released");
    for m in &got {
        let id = event(m)["data"]["order_id"]
            .as_str()
            .expect("order_id")
            .to_owned();
        let r = request(
            &acme,
            "orders.partner.acme-air.get",
            json!({"order_id": id}),
        )
        .await;
        assert_eq!(r.assert_ok()["order"]["order_id"], id.as_str());
    }

    let s = status(&operator).await;
    let nodes = s["replica"]["nodes"].as_array().expect("nodes").clone();
    assert_eq!(nodes.len(), 2, "{s}");
    let by_in: Vec<(bool, &Value)> = nodes
        .iter()
        .map(|n| (n["in_read_set"].as_bool().expect("in_read_set"), n))
        .collect();
    let (ins, outs): (Vec<_>, Vec<_>) = by_in.into_iter().partition(|(i, _)| *i);
    assert_eq!(ins.len(), 1, "the replica serves reads: {s}");
    assert_eq!(outs.len(), 1, "the dead node does not: {s}");
    let out = outs[0].1;
    assert!(
        dead.contains(out["node"].as_str().expect("node")),
        "{out} is {dead}"
    );
    assert!(out["reason"].is_string(), "it says why: {out}");
    assert!(ins[0].1["replay_lsn"].is_string(), "{s}");
    assert_eq!(s["replica"]["available"], true, "{s}");
    assert!(s["database"]["primary"].is_string(), "{s}");
    assert_eq!(s["database"]["failovers"], 0, "{s}");
    // Once the relay is through, nothing is left in the outbox.
    eventually(Duration::from_secs(30), "the outbox is empty", || async {
        let s = status(&operator).await;
        (s["outbox_pending"] == 0 && s["outbox_oldest_ms"].is_null()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn status_shows_the_primary_and_the_outbox_on_sqlite_too() {
    let hub = TestHub::start().await;
    let operator = hub.client("operator").await;
    let s = status(&operator).await;
    assert_eq!(s["replica"]["mode"], "same-as-primary");
    assert!(s["replica"].get("nodes").is_none(), "{s}");
    assert!(s["database"]["primary"].is_null(), "{s}");
    assert!(s["database"]["sync_standby"].is_null(), "{s}");
    assert_eq!(s["database"]["failovers"], 0);
    assert!(s["outbox_oldest_ms"].is_null(), "{s}");
}
