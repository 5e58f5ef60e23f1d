//! A hub killed with SIGKILL after accepting orders, then restarted on the same databases: every
//! accepted order settles and the stream holds exactly one stored and one result event per order.
//! Also: SIGTERM drains and exits 0.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use serde_json::json;
use tokio::process::{Child, Command};

use crate::helpers::*;

/// `orderhub serve` as a child process on this test's server and SQLite files.
async fn spawn_hub(nats: &TestNats, dir: &Path) -> Child {
    spawn_hub_with(nats, dir, &[]).await
}

/// `orderhub serve` with extra command-line arguments (e.g. `--config FILE`).
pub(crate) async fn spawn_hub_with(nats: &TestNats, dir: &Path, args: &[&str]) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_orderhub"))
        .args(args)
        .arg("serve")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("ORDERHUB__NATS__URL", nats.url("hub"))
        .env("ORDERHUB__NATS__SPAWN_SERVER", "false")
        .env(
            "ORDERHUB__DATABASE__PRIMARY_URL",
            format!("sqlite://{}/orderhub.db?mode=rwc", dir.display()),
        )
        .env(
            "ORDERHUB__DATABASE__AUX_URL",
            format!("sqlite://{}/aux.db?mode=rwc", dir.display()),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .kill_on_drop(true)
        .spawn()
        .expect("orderhub binary starts");
    let operator = nats.client("operator").await;
    eventually(
        Duration::from_secs(30),
        "hub answers orders.admin.status",
        || async {
            match tokio::time::timeout(
                Duration::from_secs(1),
                operator.request("orders.admin.status", "{}".into()),
            )
            .await
            {
                Ok(Ok(m)) if m.status.is_none() => Some(()),
                _ => None,
            }
        },
    )
    .await;
    child
}

/// Answers every stored event of `acme-air` until aborted, retrying while no hub answers.
pub(crate) fn run_partner(partner: async_nats::Client) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let consumer = durable(&partner, "partner-acme-air").await;
        let mut messages = consumer.messages().await.expect("message stream");
        while let Some(m) = messages.next().await {
            // Heartbeat and reconnect notices surface as errors: skip them.
            let Ok(m) = m else { continue };
            {
                let ev = event(&m);
                let order_id = ev["data"]["order_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let body = json!({"order_id": order_id, "result_id": format!("r-{order_id}"), "outcome": "confirmed"});
                loop {
                    let sent = tokio::time::timeout(
                        Duration::from_secs(5),
                        partner.request(
                            "orders.partner.acme-air.result",
                            serde_json::to_vec(&body).unwrap().into(),
                        ),
                    )
                    .await;
                    match sent {
                        Ok(Ok(reply)) if reply.status.is_none() => {
                            let v: serde_json::Value =
                                serde_json::from_slice(&reply.payload).unwrap_or_default();
                            let code = v["error"]["code"].as_str().unwrap_or_default().to_owned();
                            if code.is_empty() || code == "conflict" {
                                break;
                            }
                        }
                        _ => {}
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let _ = m.ack().await;
            }
        }
    })
}

/// Every message in the stream, read through an ordered consumer as the hub user.
pub(crate) async fn stream_subjects(hub_client: &async_nats::Client) -> Vec<(String, String)> {
    let js = jetstream::new(hub_client.clone());
    let stream = js.get_stream(STREAM).await.expect("stream");
    let total = stream.cached_info().state.messages as usize;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("stream message")
            .expect("open")
            .expect("message");
        out.push((
            m.subject.to_string(),
            String::from_utf8_lossy(&m.payload).into_owned(),
        ));
    }
    out
}

#[tokio::test]
async fn sigkill_after_accepting_then_restart_settles_everything_once() {
    init_logs();
    const ORDERS: usize = 150;
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut hub = spawn_hub(&nats, dir.path()).await;
    let gateway = nats.client("gateway").await;
    let partner = run_partner(nats.client("partner-acme-air").await);

    let mut accepted = Vec::new();
    let replies = futures::stream::iter(0..ORDERS)
        .map(|i| {
            let g = gateway.clone();
            let user = format!("u-{}", i % 7);
            async move {
                let r = request(
                    &g,
                    "orders.submit",
                    order(&user, &format!("k-{i}"), "acme-air"),
                )
                .await;
                (r, user)
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    for (r, user) in replies {
        accepted.push((r.assert_ok()["order_id"].as_str().unwrap().to_owned(), user));
    }
    hub.start_kill().expect("SIGKILL");
    hub.wait().await.expect("reaped");

    let _hub = spawn_hub(&nats, dir.path()).await;
    for (id, user) in &accepted {
        let settled = eventually(
            Duration::from_secs(60),
            "accepted order settles after the restart",
            || async {
                let q = query_order(&gateway, &id, user).await;
                (q.body["order"]["status"] == "notified").then_some(q)
            },
        )
        .await;
        // The partner answered every stored event, across the kill: nothing waited for a timeout.
        // The partner answered every stored event, across the kill: nothing waited for a timeout.
        assert_eq!(settled.body["result"]["outcome"], "confirmed", "order {id}");
    }
    partner.abort();

    let hub_client = nats.client("hub").await;
    let messages = stream_subjects(&hub_client).await;
    let mut per_order: HashMap<String, (usize, usize)> = HashMap::new();
    for (subject, _) in &messages {
        let id = subject.rsplit('.').next().unwrap().to_owned();
        let e = per_order.entry(id).or_default();
        if subject.starts_with("orders.events.stored.") {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    let ids: HashSet<&String> = accepted.iter().map(|(id, _)| id).collect();
    assert_eq!(
        per_order.len(),
        ORDERS,
        "events for exactly the accepted orders"
    );
    for (id, counts) in &per_order {
        assert!(ids.contains(id), "event for an order nobody accepted: {id}");
        assert_eq!(
            *counts,
            (1, 1),
            "order {id}: one stored and one result event"
        );
    }
    assert_eq!(messages.len(), 2 * ORDERS);
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    init_logs();
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut hub = spawn_hub(&nats, dir.path()).await;
    let gateway = nats.client("gateway").await;
    let id = submit(&gateway, "u-1", "k-1", "acme-air").await;

    // `orderhub status` prints the running hub's status for a person.
    let out = Command::new(env!("CARGO_BIN_EXE_orderhub"))
        .arg("status")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("ORDERHUB__NATS__URL", nats.url("hub"))
        .output()
        .await
        .expect("orderhub status runs");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains("same-as-primary"), "{printed}");
    assert!(printed.contains("connected: true"), "{printed}");

    let pid = hub.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), hub.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(exit.success(), "graceful exit: {exit:?}");
    // The accepted order is still there for the next hub.
    let _hub = spawn_hub(&nats, dir.path()).await;
    let q = query_order(&gateway, &id, "u-1").await;
    assert_eq!(q.assert_ok()["order"]["order_id"], id.as_str());
}

#[tokio::test]
async fn deadline_survives_a_restart() {
    init_logs();
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    // `--config FILE` overlays the defaults; its partner list replaces the default one whole.
    let config = dir.path().join("short-timeouts.toml");
    std::fs::write(
        &config,
        "[[partners]]\nid = \"acme-air\"\nresult_timeout = \"30s\"\n\n\
         [[partners]]\nid = \"globex-hotels\"\nresult_timeout = \"3s\"\n",
    )
    .unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let mut hub = spawn_hub_with(&nats, dir.path(), &args).await;
    let gateway = nats.client("gateway").await;
    let id = submit(&gateway, "u-5", "slow", "globex-hotels").await;
    // Once dispatched the deadline is in the database; then the hub dies without warning.
    eventually(Duration::from_secs(10), "order dispatched", || async {
        let q = query_order(&gateway, &id, "u-5").await;
        (q.body["order"]["status"] == "dispatched").then_some(())
    })
    .await;
    hub.start_kill().expect("SIGKILL");
    hub.wait().await.expect("reaped");

    let _hub = spawn_hub_with(&nats, dir.path(), &args).await;
    let results = pull(
        &durable(&gateway, "gateway").await,
        1,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        results.len(),
        1,
        "the restarted hub closes the overdue order"
    );
    let ev = event(&results[0]);
    assert_eq!(ev["data"]["order_id"], id.as_str());
    assert_eq!(ev["data"]["outcome"], "timeout");
    let q = query_order(&gateway, &id, "u-5").await;
    assert_eq!(q.assert_ok()["result"]["result_id"], "orderhub-timeout");
}

#[tokio::test]
async fn migrate_applies_once_then_reports_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_orderhub"))
            .arg("migrate")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env(
                "ORDERHUB__DATABASE__PRIMARY_URL",
                format!("sqlite://{}/o.db?mode=rwc", dir.path().display()),
            )
            .env(
                "ORDERHUB__DATABASE__AUX_URL",
                format!("sqlite://{}/a.db?mode=rwc", dir.path().display()),
            )
            .output()
            .expect("orderhub migrate runs")
    };
    let first = run();
    assert!(first.status.success(), "{first:?}");
    let printed = String::from_utf8_lossy(&first.stdout);
    assert!(
        printed.contains("0001_orders_results_outbox") && printed.contains("0001_aux_records"),
        "{printed}"
    );
    let second = run();
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stdout).contains("up to date"));
}
