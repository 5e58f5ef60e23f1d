//! The starters in `examples/` against a real hub, checked by counting what they did and what the
//! hub then holds: `gateway.py` and `partner.py` (nats-py, run with `python3`) through a whole
//! flow with a saturated partner and a late result; `partner.py` and `partner.rs` (async-nats,
//! run here in-process) through a hub that is away when the stored event arrives.

use std::process::Stdio;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::*;

#[path = "../../examples/partner.rs"]
#[allow(dead_code)]
mod partner_rs;

const WAIT: Duration = Duration::from_secs(60);

/// A Python example as a child process; its stdout lines are collected as they come.
struct Script {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Script {
    fn start(name: &str, url: &str, args: &[&str]) -> Self {
        let mut child = Command::new("python3")
            .arg(format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR")))
            .args(["--url", url])
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs (the examples need nats-py: python3 -m pip install nats-py)");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let sink = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                println!("[{}] {line}", sink.lock().unwrap().len());
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, lines }
    }

    fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    async fn wait_for(&self, needle: &str) {
        eventually(WAIT, &format!("a line with {needle:?}"), || async {
            (self.count(needle) > 0).then_some(())
        })
        .await;
    }

    /// Waits for a clean exit and returns the JSON summary, the last line.
    async fn summary(mut self) -> Value {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the example finishes in time")
            .expect("wait");
        // Its last line may still be on its way through the reader task.
        eventually(Duration::from_secs(5), "the summary line", || async {
            let lines = self.lines.lock().unwrap();
            lines
                .last()
                .and_then(|l| serde_json::from_str::<Value>(l).ok())
        })
        .await;
        assert!(
            status.success(),
            "{status}: {:#?}",
            self.lines.lock().unwrap()
        );
        let last = self.lines.lock().unwrap().last().cloned().unwrap();
        serde_json::from_str(&last).unwrap()
    }
}

fn saturated_acme_quick_globex_no_external_aux(s: &mut Settings) {
    for p in &mut s.partners {
        match p.id.as_str() {
            "acme-air" => p.max_pending = 1,
            _ => p.result_timeout = Duration::from_secs(1),
        }
    }
    // Settled events wait for every auxiliary system: here the built-in ones.
    s.aux.retain(|a| !a.external);
}

#[tokio::test]
async fn the_python_gateway_and_partner_run_a_whole_flow() {
    let hub = TestHub::start_with(saturated_acme_quick_globex_no_external_aux).await;
    let url = format!("nats://127.0.0.1:{}", hub.nats.server.port);
    let gateway = Script::start(
        "gateway.py",
        &url,
        &[
            "--user",
            "u-ex",
            "--partners",
            "acme-air,acme-air,globex-hotels",
        ],
    );
    // acme-air may have one order waiting: the second submit is `unavailable` until a partner
    // answers the first. Only then does the partner start.
    gateway.wait_for("unavailable: retry orders.submit").await;
    let partner = Script::start(
        "partner.py",
        &url,
        &["--partner", "acme-air", "--orders", "2"],
    );
    let p = partner.summary().await;
    assert_eq!(
        (&p["orders"], &p["results"], &p["refused"]),
        (&json!(2), &json!(2), &json!(0)),
        "{p}"
    );

    // The globex-hotels order times out; its partner answers late.
    let operator = hub.client("operator").await;
    let globex = hub.client("partner-globex-hotels").await;
    let late_id = eventually(WAIT, "the globex order timed out", || async {
        let list = request(&operator, "orders.query", json!({"user_id": "u-ex"})).await;
        list.body["orders"].as_array().and_then(|orders| {
            orders.iter().find_map(|o| {
                (o["partner_id"] == "globex-hotels" && o["version"].as_i64() >= Some(4))
                    .then(|| o["order_id"].as_str().unwrap().to_owned())
            })
        })
    })
    .await;
    let late = request(
        &globex,
        "orders.partner.globex-hotels.result",
        json!({"order_id": late_id, "result_id": "globex-late", "outcome": "confirmed"}),
    )
    .await;
    assert_eq!(late.assert_ok()["status"], "late_result_stored");

    let g = gateway.summary().await;
    assert_eq!(
        (
            &g["submitted"],
            &g["results"],
            &g["settled"],
            &g["late"],
            &g["queried"],
            &g["listed"]
        ),
        (
            &json!(3),
            &json!(3),
            &json!(3),
            &json!(1),
            &json!(3),
            &json!(3)
        ),
        "{g}"
    );
    assert!(g["unavailable"].as_u64() >= Some(1), "{g}");

    // What the hub holds: three orders, two answered by the partner, one late.
    let list = request(&operator, "orders.query", json!({"user_id": "u-ex"})).await;
    let orders = list.assert_ok()["orders"].as_array().unwrap().clone();
    assert_eq!(orders.len(), 3);
    for o in &orders {
        let id = o["order_id"].as_str().unwrap();
        let q = query_order(&operator, id, "u-ex").await;
        let b = q.assert_ok();
        assert!(b["settled_at"].is_string(), "{b}");
        if o["partner_id"] == "acme-air" {
            assert_eq!(b["result"]["result_id"], format!("acme-air-{id}"));
            assert_eq!(b["result"]["outcome"], "confirmed");
        } else {
            assert_eq!(b["result"]["outcome"], "timeout");
            assert_eq!(b["late_result"]["result_id"], "globex-late");
        }
    }
}

/// What a partner under test reports: (orders, results, retries) once done, and its retries
/// so far while it runs.
type Running = (
    tokio::task::JoinHandle<(u64, u64, u64)>,
    Box<dyn Fn() -> u64 + Send>,
);

/// An order whose stored event is out, then the hub stops: the partner starts while no hub
/// answers, retries, and gets its result in once the hub is back.
async fn partner_rides_out_an_absent_hub(start: impl FnOnce(String) -> Running) {
    let mut hub = TestHub::start().await;
    let url = format!("nats://127.0.0.1:{}", hub.nats.server.port);
    let gateway = hub.client("gateway").await;
    let operator = hub.client("operator").await;
    let id = submit(&gateway, "u-away", "away-1", "acme-air").await;
    eventually(WAIT, "the stored event is out", || async {
        let t = request(&operator, "orders.admin.trace", json!({"order_id": id})).await;
        t.body["events"][0]["published_at"]
            .is_string()
            .then_some(())
    })
    .await;
    hub.stop().await;

    let (done, retries) = start(url);
    eventually(WAIT, "the partner retries while no hub answers", || async {
        (retries() >= 1).then_some(())
    })
    .await;
    hub.app = Some(
        App::start(hub.settings.clone())
            .await
            .expect("the hub starts again"),
    );
    let (orders, results, retried) = tokio::time::timeout(WAIT, done)
        .await
        .expect("the partner finishes in time")
        .expect("the partner runs");
    assert_eq!((orders, results), (1, 1));
    assert!(retried >= 1);
    let q = query_order(&gateway, &id, "u-away").await;
    assert_eq!(
        q.assert_ok()["result"]["result_id"],
        format!("acme-air-{id}")
    );
}

#[tokio::test]
async fn the_python_partner_rides_out_an_absent_hub() {
    partner_rides_out_an_absent_hub(|url| {
        let partner = Script::start("partner.py", &url, &["--orders", "1"]);
        let lines = partner.lines.clone();
        let retries = move || {
            let lines = lines.lock().unwrap();
            lines.iter().filter(|l| l.starts_with("retry ")).count() as u64
        };
        let done = tokio::spawn(async move {
            let s = partner.summary().await;
            let n = |k: &str| s[k].as_u64().unwrap();
            (n("orders"), n("results"), n("retries"))
        });
        (done, Box::new(retries))
    })
    .await;
}

#[tokio::test]
async fn the_rust_partner_rides_out_an_absent_hub() {
    partner_rides_out_an_absent_hub(|url| {
        let opts = partner_rs::Options {
            url,
            partner: "acme-air".into(),
            password: None,
            outcome: "confirmed".into(),
            orders: 1,
        };
        let counts = Arc::new(partner_rs::Counts::default());
        let probe = counts.clone();
        let done = tokio::spawn(async move {
            partner_rs::run(&opts, &counts)
                .await
                .expect("the partner runs");
            let c = &counts;
            (
                c.orders.load(Relaxed),
                c.results.load(Relaxed),
                c.retries.load(Relaxed),
            )
        });
        (done, Box::new(move || probe.retries.load(Relaxed)))
    })
    .await;
}
