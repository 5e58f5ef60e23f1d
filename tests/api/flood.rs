//! Abuse by volume (DESIGN.md §3 "Bounded memory"): a flood of requests, half of them malformed,
//! from several connections; and the in-flight cap answering `unavailable`.
//!
//! The flood runs against a hub in its own process (`orderhub serve`), so that its memory can be
//! read from `/proc/<pid>/status` without the noise of the other tests, which share this test
//! binary's process and run in parallel with it.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_nats::Client;
use futures::StreamExt;
use sea_orm::{EntityTrait, PaginatorTrait};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::helpers::*;
use crate::roles::Probe;

/// Requests in the flood; half are malformed.
const FLOOD: usize = 20_000;
/// Requests of the warm-up before the baseline is taken: enough to grow the allocator's arenas,
/// the connection pools and the caches to their working size.
const WARM_UP: usize = 4_000;
/// Gateway connections sending them.
const CONNECTIONS: usize = 4;
/// Requests outstanding at once on each connection.
const CONCURRENCY: usize = 64;
/// One valid request in this many is a submit; the others are queries.
const SUBMIT_EVERY: usize = 4;
/// How far the hub's resident memory may stay above its warmed-up baseline once the flood has
/// settled. Resident memory does not fall back to the baseline even without any leak: glibc keeps
/// the pages it freed (it returns only the top of each arena), so RSS stays near the flood's peak
/// heap. Measured with heaptrack on this flood: a peak heap of ~60 MiB during the flood (order
/// actors waiting for their timeout, requests in flight, batches), a live heap of ~18 MiB once it
/// settled (half of it SQLite page caches and prepared statements), while RSS went from a
/// ~48 MiB baseline to ~72–75 MiB. 64 MiB bounds that with a margin, and still catches anything
/// kept per request: 64 MiB / 20,000 requests is 3.3 KiB each, less than one retained request
/// with its reply, order actor or mailbox. (Order actors are counted exactly: `actors_live` must
/// return to 0.)
const RSS_SLACK_KIB: u64 = 64 * 1024;
/// How long the flood may take to settle (every order closed by its 1 s partner timeout, every
/// actor stopped, the outbox drained) in a debug build on two cores.
const SETTLE: Duration = Duration::from_secs(180);

/// `orderhub serve` as a child process; killed on drop if still running.
struct HubProcess {
    child: Child,
    pid: u32,
    _dir: TempDir,
    primary_url: String,
}

impl HubProcess {
    async fn start(nats: &TestNats) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let primary_url = format!("sqlite://{}/orderhub.db?mode=rwc", dir.path().display());
        let config = dir.path().join("flood.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[nats]
url = "{url}"
spawn_server = false

[database]
primary_url = "{primary_url}"
replica_url = ""
aux_url = "sqlite://{dir}/aux.db?mode=rwc"

# A short timeout settles every flooded order without a partner simulator.
[[partners]]
id = "acme-air"
result_timeout = "1s"
"#,
                url = nats.url("hub"),
                dir = dir.path().display(),
            ),
        )
        .expect("write config");
        let log = std::fs::File::create(dir.path().join("hub.log")).expect("log file");
        let config_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let child = Command::new(env!("CARGO_BIN_EXE_orderhub"))
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env("ORDERHUB_CONFIG_DIR", &config_dir)
            .env("ORDERHUB_ENV", "flood-test")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start orderhub serve");
        let pid = child.id().expect("pid");
        Self {
            child,
            pid,
            _dir: dir,
            primary_url,
        }
    }

    /// The hub's resident set and its peak so far, in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_else(|_| panic!("the hub process is gone; its log:\n{}", self.log()));
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{name} in /proc/{}/status", self.pid))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("hub.log")).unwrap_or_default()
    }

    /// SIGTERM, then the exit status (the hub stops gracefully and exits 0).
    async fn terminate(mut self) -> std::process::ExitStatus {
        let sent = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {}", self.pid);
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the hub exits within 30 s of SIGTERM")
            .expect("wait")
    }
}

/// `orders.admin.status`, or `None` while the hub does not answer yet.
async fn try_status(operator: &Client) -> Option<Value> {
    let m = tokio::time::timeout(
        Duration::from_secs(2),
        operator.request("orders.admin.status", "{}".into()),
    )
    .await
    .ok()?
    .ok()?;
    serde_json::from_slice(&m.payload).ok()
}

/// The malformed request number `i`: one of a few kinds, on submit and query.
fn malformed(i: usize, conn: usize) -> (&'static str, Vec<u8>) {
    let good = order(&format!("u-flood-{conn}"), &format!("bad-{i}"), "acme-air");
    let mut v = good.clone();
    match i % 8 {
        0 => ("orders.submit", b"{not json".to_vec()),
        1 => {
            v.as_object_mut().unwrap().remove("currency");
            ("orders.submit", serde_json::to_vec(&v).unwrap())
        }
        2 => {
            v["user_id"] = json!("u.*.>");
            ("orders.submit", serde_json::to_vec(&v).unwrap())
        }
        3 => {
            v["payload"] = json!({"k": "x".repeat(65_530)});
            ("orders.submit", serde_json::to_vec(&v).unwrap())
        }
        4 => {
            v["amount_minor"] = json!(-1);
            ("orders.submit", serde_json::to_vec(&v).unwrap())
        }
        5 => (
            "orders.query",
            serde_json::to_vec(&json!({"user_id": "u-1", "limit": 0})).unwrap(),
        ),
        6 => (
            "orders.query",
            serde_json::to_vec(&json!({"user_id": "u-1", "order_id": "NOT-A-UUID"})).unwrap(),
        ),
        _ => ("orders.query", vec![0xff, 0xfe, 0xfd]),
    }
}

/// The valid request number `i`: a submit now and then, else a query of the user's orders.
fn valid(i: usize, conn: usize) -> (&'static str, Vec<u8>) {
    let user = format!("u-flood-{conn}");
    if (i / 2).is_multiple_of(SUBMIT_EVERY) {
        (
            "orders.submit",
            serde_json::to_vec(&order(&user, &format!("ok-{i}"), "acme-air")).unwrap(),
        )
    } else {
        (
            "orders.query",
            serde_json::to_vec(&json!({"user_id": user, "limit": 5})).unwrap(),
        )
    }
}

/// What the flood got back.
#[derive(Debug, Default)]
struct Tally {
    answered: usize,
    submitted: usize,
    queried: usize,
    invalid: usize,
    unavailable: usize,
}

/// Sends requests `range` of connection `conn`, at most [`CONCURRENCY`] at once, and checks each
/// answer against what was sent.
async fn send(client: Client, conn: usize, range: std::ops::Range<usize>) -> Tally {
    let answers = futures::stream::iter(range)
        .map(|i| {
            let client = client.clone();
            async move {
                let bad = i % 2 == 0;
                let (subject, body) = if bad {
                    malformed(i / 2, conn)
                } else {
                    valid(i, conn)
                };
                (bad, subject, request_raw(&client, subject, body).await)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let mut tally = Tally::default();
    for (bad, subject, reply) in answers {
        tally.answered += 1;
        match (bad, reply.error_code()) {
            (true, _) => {
                reply.assert_error("invalid_request", 400);
                tally.invalid += 1;
            }
            (false, Some("unavailable")) => {
                reply.assert_error("unavailable", 503);
                if tally.unavailable == 0 {
                    println!(
                        "connection {conn}: {subject} answered unavailable: {}",
                        reply.body["error"]["message"]
                    );
                }
                tally.unavailable += 1;
            }
            (false, _) => {
                let body = reply.assert_ok();
                if subject == "orders.submit" {
                    assert_eq!(body["status"], "accepted", "{body}");
                    tally.submitted += 1;
                } else {
                    assert!(body["orders"].is_array(), "{body}");
                    tally.queried += 1;
                }
            }
        }
    }
    tally
}

impl Tally {
    fn add(&mut self, t: &Tally) {
        self.answered += t.answered;
        self.submitted += t.submitted;
        self.queried += t.queried;
        self.invalid += t.invalid;
        self.unavailable += t.unavailable;
    }
}

async fn flood(clients: &[Client], requests: usize, offset: usize) -> Tally {
    let per = requests / clients.len();
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(conn, c)| {
            tokio::spawn(send(
                c.clone(),
                conn,
                offset + conn * per..offset + (conn + 1) * per,
            ))
        })
        .collect();
    let mut total = Tally::default();
    for t in tasks {
        total.add(&t.await.expect("flood task"));
    }
    total
}

#[tokio::test]
async fn a_flood_half_malformed_is_answered_and_memory_returns_to_baseline() {
    init_logs();
    let nats = TestNats::start().await;
    let hub = HubProcess::start(&nats).await;
    let operator = nats.client("operator").await;
    eventually(Duration::from_secs(60), "the hub serves", || {
        try_status(&operator)
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(nats.client("gateway").await);
    }

    // Warm up (code paths, pools, buffers), let that settle, then take the baseline.
    let warm = flood(&clients, WARM_UP, 1_000_000).await;
    assert_eq!(warm.answered, WARM_UP);
    let settled =
        |s: &Value| s["actors_live"] == 0 && s["in_flight"] == 0 && s["outbox_pending"] == 0;
    eventually(SETTLE, "the warm-up settles", || async {
        try_status(&operator).await.filter(settled)
    })
    .await;
    let (baseline, _) = hub.memory_kib();

    let started = Instant::now();
    let tally = flood(&clients, FLOOD, 0).await;
    let took = started.elapsed();
    let (during, peak) = hub.memory_kib();
    println!(
        "flood: {tally:?} in {took:.1?} ({:.0} requests/s); RSS baseline {baseline} KiB, after the flood {during} KiB, peak {peak} KiB",
        FLOOD as f64 / took.as_secs_f64()
    );
    assert_eq!(tally.answered, FLOOD, "every request is answered");
    assert_eq!(
        tally.invalid,
        FLOOD / 2,
        "every malformed request is refused as invalid"
    );
    assert_eq!(
        tally.submitted + tally.queried + tally.unavailable,
        FLOOD / 2
    );
    assert!(tally.submitted > 0 && tally.queried > 0, "{tally:?}");

    // The hub is up, and settles back: every order closed, every actor stopped, the outbox
    // drained, resident memory within the slack of its baseline.
    let (s, rss) = eventually(
        SETTLE,
        "the flood settles and memory returns near its baseline",
        || async {
            let s = try_status(&operator).await.filter(settled)?;
            let (rss, _) = hub.memory_kib();
            (rss <= baseline + RSS_SLACK_KIB).then_some((s, rss))
        },
    )
    .await;
    assert_eq!(s["nats"]["connected"], true);
    println!(
        "settled after {:.1?}: RSS {rss} KiB (baseline {baseline} KiB)",
        started.elapsed()
    );

    // Exactly the accepted orders exist, each with its stored and result events.
    let db = sea_orm::Database::connect(&hub.primary_url)
        .await
        .expect("open the hub's database");
    let orders = entities::orders::Entity::find()
        .count(&db)
        .await
        .expect("count");
    let _ = db.close().await;
    assert_eq!(
        orders as usize,
        warm.submitted + tally.submitted,
        "one order per accepted submit"
    );
    Probe(&operator).wait_messages(2 * orders).await;

    let exit = hub.terminate().await;
    assert!(exit.success(), "graceful exit after SIGTERM: {exit:?}");
}

/// Every order id of a user, page by page.
async fn all_orders_of(gateway: &Client, user: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut before = Value::Null;
    loop {
        let page = request(
            gateway,
            "orders.query",
            json!({"user_id": user, "limit": 100, "before": before}),
        )
        .await;
        let body = page.assert_ok();
        ids.extend(
            body["orders"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["order_id"].as_str().unwrap().to_owned()),
        );
        before = body["next_before"].clone();
        if before.is_null() {
            return ids;
        }
    }
}

#[tokio::test]
async fn the_in_flight_cap_answers_unavailable_and_loses_nothing() {
    let hub = TestHub::start_with(|s| s.limits.max_in_flight = 1).await;
    let operator = hub.client("operator").await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(hub.client("gateway").await);
    }
    const EACH: usize = 50;

    // 200 submits at once: one is handled at a time, the others must be told to retry.
    let mut tasks = Vec::new();
    for (conn, client) in clients.iter().enumerate() {
        for i in 0..EACH {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("cap-{conn}-{i}");
                let r = request(&client, "orders.submit", order("u-cap", &key, "acme-air")).await;
                (key, r)
            }));
        }
    }
    // Status stays available while the hub is saturated (it is outside the cap).
    let s = status(&operator).await;
    assert_eq!(s["nats"]["connected"], true);

    let mut accepted = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let (key, r) = t.await.expect("task");
        match r.error_code() {
            Some(_) => {
                r.assert_error("unavailable", 503);
                let message = r.body["error"]["message"].as_str().unwrap();
                assert!(message.contains("retry"), "{message}");
                refused += 1;
            }
            None => accepted.push((key, r.assert_ok()["order_id"].as_str().unwrap().to_owned())),
        }
    }
    println!(
        "in-flight cap 1: {} accepted, {refused} unavailable",
        accepted.len()
    );
    assert_eq!(accepted.len() + refused, 4 * EACH, "no request lost");
    assert!(
        refused > 0,
        "the cap must refuse some of 200 simultaneous submits"
    );
    assert!(!accepted.is_empty());

    // Exactly the accepted orders exist; a refused one can be retried with its key.
    let mut listed = all_orders_of(&clients[0], "u-cap").await;
    let mut ids: Vec<String> = accepted.iter().map(|(_, id)| id.clone()).collect();
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids, "the accepted orders and no others");
    let retry = request(
        &clients[0],
        "orders.submit",
        order("u-cap", "cap-retry", "acme-air"),
    )
    .await;
    retry.assert_ok();
    eventually(Duration::from_secs(5), "in_flight back to 0", || async {
        (status(&operator).await["in_flight"] == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_status_flood_is_answered_within_its_own_cap() {
    // `status` stays outside `max_in_flight` (operators must see a saturated hub) but has a small
    // cap of its own: a burst of status requests is answered, each ok or `unavailable`, none lost.
    let hub = TestHub::start().await;
    let operator = hub.client("operator").await;
    const BURST: usize = 500;
    let answers = futures::future::join_all(
        (0..BURST).map(|_| request(&operator, "orders.admin.status", json!({}))),
    )
    .await;
    let mut busy = 0;
    for r in &answers {
        if r.error_code().is_some() {
            r.assert_error("unavailable", 503);
            busy += 1;
        } else {
            assert!(r.assert_ok()["instance_id"].is_string());
        }
    }
    println!(
        "status burst of {BURST}: {} answered, {busy} unavailable",
        answers.len()
    );
    assert_eq!(answers.len(), BURST);
    assert!(busy < BURST, "some status requests must be answered");
}
