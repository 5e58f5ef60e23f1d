//! Abuse by volume (`docs/protocol.md`, "Guarantees", "Bounded memory"): a flood of requests, half
//! of them malformed, from several connections; and the in-flight cap answering `unavailable`.
//!
//! The flood runs against a hub in its own process (`orderhub serve`), so that its memory can be
//! read from `/proc/<pid>/status` without the noise of the other tests, which share this test
//! binary's process and run in parallel with it.

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_nats::Client;
use futures::StreamExt;
use sea_orm::sqlx::{self, Connection};
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
/// settled. Resident memory does not fall back to the baseline even without any leak: the binary
/// allocates with mimalloc, which keeps freed pages in its segments until it purges them (and
/// reuses them first), and SQLite's page caches, allocated by the C library's malloc rather than
/// mimalloc, fill up on every pooled connection as the database grows by the flood's 2,500 orders.
/// Measured under mimalloc with this test (six runs, debug build, two shared cores), above a
/// baseline of 79–94 MiB: right after the flood +22–54 MiB (peak +28–54 MiB); once the hub had
/// settled +7–42 MiB; sampled each second for 20 s after that (five of the runs), idle, it moved
/// by −12 to +13 MiB, to at most +49 MiB. Nearly all of it is anonymous memory (`RssFile` stays at
/// ~23 MiB). 64 MiB bounds the highest of those with a margin, and still catches anything kept
/// per request: 64 MiB / 20,000 requests is 3.3 KiB each, less than one retained request with its
/// reply, order actor or mailbox. (Order actors are counted exactly: `actors_live` must return
/// to 0.)
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

/// What was sent to one endpoint and how it was answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    sent: u64,
    ok: u64,
    invalid: u64,
    unavailable: u64,
    /// No answer within 15 s (or no hub to take it).
    unanswered: u64,
}

impl Counts {
    fn add(&mut self, c: &Counts) {
        self.sent += c.sent;
        self.ok += c.ok;
        self.invalid += c.invalid;
        self.unavailable += c.unavailable;
        self.unanswered += c.unanswered;
    }

    /// Error replies: what the hub must have counted in the endpoint's `num_errors`.
    fn errors(&self) -> u64 {
        self.invalid + self.unavailable
    }
}

/// What the flood sent and got back, per endpoint, and the ids of the orders it stored.
#[derive(Debug, Default)]
struct Tally {
    submit: Counts,
    query: Counts,
    stored: OrderIds,
}

/// The ids of the orders a flood stored; shown as their number.
#[derive(Default)]
struct OrderIds(Vec<String>);

impl std::fmt::Debug for OrderIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} orders", self.0.len())
    }
}

impl Tally {
    fn of(&mut self, subject: &str) -> &mut Counts {
        match subject {
            "orders.submit" => &mut self.submit,
            "orders.query" => &mut self.query,
            other => panic!("the flood sends no {other}"),
        }
    }

    fn add(&mut self, t: &Tally) {
        self.submit.add(&t.submit);
        self.query.add(&t.query);
        self.stored.0.extend_from_slice(&t.stored.0);
    }
}

/// A request and its reply, or `None` when no reply came within 15 s (or no responder).
async fn try_request(client: &Client, subject: &str, body: Vec<u8>) -> Option<Reply> {
    let msg = tokio::time::timeout(
        Duration::from_secs(15),
        client.request(subject.to_owned(), body.into()),
    )
    .await
    .ok()?
    .ok()?;
    let body = serde_json::from_slice(&msg.payload).unwrap_or_else(|e| {
        panic!(
            "reply is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&msg.payload)
        )
    });
    Some(Reply {
        headers: msg.headers,
        body,
    })
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
                (bad, subject, try_request(&client, subject, body).await)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let mut tally = Tally::default();
    let mut stored = Vec::new();
    for (bad, subject, reply) in answers {
        let counts = tally.of(subject);
        counts.sent += 1;
        let Some(reply) = reply else {
            counts.unanswered += 1;
            continue;
        };
        match (bad, reply.error_code()) {
            (true, _) => {
                reply.assert_error("invalid_request", 400);
                counts.invalid += 1;
            }
            (false, Some("unavailable")) => {
                reply.assert_error("unavailable", 503);
                if counts.unavailable == 0 {
                    println!(
                        "connection {conn}: {subject} answered unavailable: {}",
                        reply.body["error"]["message"]
                    );
                }
                counts.unavailable += 1;
            }
            (false, _) => {
                let body = reply.assert_ok();
                if subject == "orders.submit" {
                    assert_eq!(body["status"], "accepted", "{body}");
                    assert_eq!(body["duplicate"], false, "{body}");
                    stored.push(body["order_id"].as_str().expect("order_id").to_owned());
                } else {
                    assert!(body["orders"].is_array(), "{body}");
                }
                counts.ok += 1;
            }
        }
    }
    tally.stored = OrderIds(stored);
    tally
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

/// Per endpoint name, `(num_requests, num_errors)` of the hub's `$SRV.STATS`: the requests it
/// received and answered, and how many of those answers were errors.
async fn endpoint_stats(operator: &Client) -> std::collections::HashMap<String, (u64, u64)> {
    let r = request(operator, "$SRV.STATS.orderhub", json!({})).await;
    r.body["endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("stats: {:?}", r.body))
        .iter()
        .map(|e| {
            let n = |k: &str| e[k].as_u64().unwrap_or_else(|| panic!("{k}: {e}"));
            (
                e["name"].as_str().expect("name").to_owned(),
                (n("num_requests"), n("num_errors")),
            )
        })
        .collect()
}

/// Waits until the hub's counters of `endpoint` have grown by exactly what `counts` sent and got
/// back since `before`: every request reached it, and every error it counted is one received.
async fn assert_hub_counted(
    operator: &Client,
    endpoint: &str,
    before: &std::collections::HashMap<String, (u64, u64)>,
    counts: &Counts,
) {
    let (requests0, errors0) = before[endpoint];
    let want = (requests0 + counts.sent, errors0 + counts.errors());
    let mut last = (0, 0);
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            last = endpoint_stats(operator).await[endpoint];
            if last == want {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    assert!(
        seen.is_ok(),
        "{endpoint}: the hub counted {} requests and {} errors since, for {counts:?} sent and answered",
        last.0 - requests0,
        last.1 - errors0,
    );
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
    assert_eq!(
        warm.submit.unanswered + warm.query.unanswered,
        0,
        "{warm:?}"
    );
    let settled =
        |s: &Value| s["actors_live"] == 0 && s["in_flight"] == 0 && s["outbox_pending"] == 0;
    eventually(SETTLE, "the warm-up settles", || async {
        try_status(&operator).await.filter(settled)
    })
    .await;
    let (baseline, _) = hub.memory_kib();
    let stats_before = endpoint_stats(&operator).await;

    let started = Instant::now();
    let tally = flood(&clients, FLOOD, 0).await;
    let took = started.elapsed();
    let (during, peak) = hub.memory_kib();
    println!(
        "flood: {tally:?} in {took:.1?} ({:.0} requests/s); RSS baseline {baseline} KiB, after the flood {during} KiB, peak {peak} KiB",
        FLOOD as f64 / took.as_secs_f64()
    );
    // What was sent: every request of the flood, half of them malformed.
    assert_eq!(tally.submit.sent + tally.query.sent, FLOOD as u64);
    assert_eq!(
        tally.submit.unanswered + tally.query.unanswered,
        0,
        "every request is answered: {tally:?}"
    );
    assert_eq!(
        tally.submit.invalid + tally.query.invalid,
        FLOOD as u64 / 2,
        "every malformed request is refused as invalid, and nothing else is: {tally:?}"
    );
    assert!(tally.submit.ok > 0 && tally.query.ok > 0, "{tally:?}");
    // And the hub's own account agrees: it received every request the flood sent to each
    // endpoint, and answered exactly the errors the flood got back.
    assert_hub_counted(&operator, "submit", &stats_before, &tally.submit).await;
    assert_hub_counted(&operator, "query", &stats_before, &tally.query).await;

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
        (warm.submit.ok + tally.submit.ok) as usize,
        "one order per accepted submit"
    );
    Probe(&operator).wait_messages(2 * orders).await;
    // Per order, so that a missing event and a second one elsewhere do not cancel out.
    let per_order = events_per_order(&stream_subjects(&nats.client("hub").await).await);
    let accepted: HashSet<&String> = warm.stored.0.iter().chain(&tally.stored.0).collect();
    assert_eq!(
        accepted.len() as u64,
        orders,
        "one order id per accepted submit"
    );
    assert_once_per_order(&per_order, accepted, &["stored", "result_stored"]);

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

/// The write lock of a SQLite database, held by the test: every write of the hub waits for it
/// (up to its 5 s busy timeout) while reads go on.
struct WriteLock(sqlx::SqliteConnection);

impl WriteLock {
    async fn take(url: &str) -> Self {
        let mut conn = sqlx::SqliteConnection::connect(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut conn)
            .await
            .expect("take the write lock");
        Self(conn)
    }

    async fn release(mut self) {
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut self.0)
            .await
            .expect("release the write lock");
        let _ = self.0.close().await;
    }
}

/// Submits `key` as user `u-cap`.
async fn submit_key(client: &Client, key: &str) -> Reply {
    request(client, "orders.submit", order("u-cap", key, "acme-air")).await
}

/// The order id of an `accepted` reply that stored a new order.
#[track_caller]
fn stored_new(r: &Reply) -> String {
    let body = r.assert_ok();
    assert_eq!(body["status"], "accepted", "{body}");
    assert_eq!(body["duplicate"], false, "{body}");
    body["order_id"].as_str().expect("order_id").to_owned()
}

#[tokio::test]
async fn the_in_flight_cap_answers_unavailable_and_loses_nothing() {
    const CAP: usize = 1;
    let hub = TestHub::start_with(|s| s.limits.max_in_flight = CAP).await;
    let operator = hub.client("operator").await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(hub.client("gateway").await);
    }
    const EACH: usize = 50;
    let stats_before = endpoint_stats(&operator).await;
    let mut sent = Counts::default();

    // Saturate the hub: one submit takes the only slot and stays in flight, waiting for the
    // database's write lock, which the test holds (well within SQLite's 5 s busy timeout).
    let lock = WriteLock::take(&hub.settings.database.primary_url).await;
    let locked_at = Instant::now();
    let held = {
        let client = clients[0].clone();
        tokio::spawn(async move { submit_key(&client, "cap-held").await })
    };
    sent.sent += 1;
    let s = eventually(
        Duration::from_secs(3),
        "the held submit in flight",
        || async { Some(status(&operator).await).filter(|s| s["in_flight"] == CAP) },
    )
    .await;
    assert_eq!(s["nats"]["connected"], true);

    // 200 submits at once while it is saturated: every one is told to retry.
    let mut tasks = Vec::new();
    for (conn, client) in clients.iter().enumerate() {
        for i in 0..EACH {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("cap-{conn}-{i}");
                let r = submit_key(&client, &key).await;
                (key, r)
            }));
        }
    }
    // Status stays available while the hub is saturated (it is outside the cap) and says so.
    let s = status(&operator).await;
    assert_eq!(s["in_flight"], CAP, "{s}");
    let mut refused = Vec::new();
    for t in tasks {
        let (key, r) = t.await.expect("task");
        r.assert_error("unavailable", 503);
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains("retry"), "{message}");
        refused.push(key);
    }
    sent.sent += refused.len() as u64;
    sent.unavailable += refused.len() as u64;
    let s = status(&operator).await;
    assert_eq!(
        s["in_flight"], CAP,
        "the held submit is still in flight: {s}"
    );
    let held_for = locked_at.elapsed();
    lock.release().await;
    let held = held.await.expect("held submit");
    let mut ids = vec![stored_new(&held)];
    sent.ok += 1;
    println!(
        "in-flight cap {CAP}: {} refused while one submit waited {held_for:.1?} for the database",
        refused.len()
    );

    // A refused key retried: nothing was stored for it, so it is a new order now. Retried all
    // at once they meet the cap again (each accepted or refused once more); one at a time, each
    // one is accepted.
    let mut tasks = Vec::new();
    for (n, key) in refused.iter().enumerate() {
        let client = clients[n % clients.len()].clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let r = submit_key(&client, &key).await;
            (key, r)
        }));
    }
    let mut again = Vec::new();
    for t in tasks {
        let (key, r) = t.await.expect("task");
        sent.sent += 1;
        if r.error_code().is_some() {
            r.assert_error("unavailable", 503);
            sent.unavailable += 1;
            again.push(key);
        } else {
            ids.push(stored_new(&r));
            sent.ok += 1;
        }
    }
    println!(
        "retried at once: {} accepted, {} refused again",
        refused.len() - again.len(),
        again.len()
    );
    for key in &again {
        ids.push(stored_new(&submit_key(&clients[0], key).await));
        sent.sent += 1;
        sent.ok += 1;
    }
    // Once stored, the same key is a duplicate of that order.
    let dup = submit_key(&clients[1], &refused[0]).await;
    sent.sent += 1;
    sent.ok += 1;
    let body = dup.assert_ok();
    assert_eq!(body["duplicate"], true, "{body}");
    assert!(ids.contains(&body["order_id"].as_str().unwrap().to_owned()));

    // Exactly one order per key and no others; the hub received every submit and answered the
    // refusals as errors.
    let mut listed = all_orders_of(&clients[0], "u-cap").await;
    listed.sort();
    ids.sort();
    assert_eq!(ids.len(), 1 + 4 * EACH);
    assert_eq!(listed, ids, "the accepted orders and no others");
    assert_hub_counted(&operator, "submit", &stats_before, &sent).await;
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
    let stats_before = endpoint_stats(&operator).await;
    const BURST: u64 = 500;
    let answers = futures::future::join_all(
        (0..BURST).map(|_| try_request(&operator, "orders.admin.status", b"{}".to_vec())),
    )
    .await;
    let mut counts = Counts {
        sent: BURST,
        ..Counts::default()
    };
    for r in &answers {
        match r {
            None => counts.unanswered += 1,
            Some(r) if r.error_code().is_some() => {
                r.assert_error("unavailable", 503);
                counts.unavailable += 1;
            }
            Some(r) => {
                assert!(r.assert_ok()["instance_id"].is_string());
                counts.ok += 1;
            }
        }
    }
    println!("status burst of {BURST}: {counts:?}");
    assert_eq!(counts.unanswered, 0, "every status request is answered");
    assert!(counts.ok > 0, "some status requests must be answered");
    // The burst is far more than the cap lets in at once, so the cap refuses part of it.
    assert!(
        counts.unavailable > 0,
        "a burst of {BURST} status requests meets the status cap: {counts:?}"
    );
    // The hub received all of them and refused exactly those answered `unavailable`.
    assert_hub_counted(&operator, "status", &stats_before, &counts).await;
}
