//! `orderhub bench --json` as a machine runs it: the built binary with an in-process hub on this
//! test's nats-server and SQLite files, once in a closed loop and once in an open loop (`--rate`).
//! The last line of stdout is one JSON object with the throughput, the hub's peak memory, the
//! errors by code and the latency percentiles of every step.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

use crate::helpers::*;

const ORDERS: u64 = 300;

/// Runs `orderhub bench --json <args>` to completion and returns the last line of stdout, parsed.
async fn bench_json(args: &[&str]) -> Value {
    init_logs();
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_orderhub"))
        .arg("bench")
        .arg("--json")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("ORDERHUB__NATS__URL", nats.url("hub"))
        .env("ORDERHUB__NATS__SPAWN_SERVER", "false")
        .env(
            "ORDERHUB__DATABASE__PRIMARY_URL",
            format!("sqlite://{}/orderhub.db?mode=rwc", dir.path().display()),
        )
        .env(
            "ORDERHUB__DATABASE__AUX_URL",
            format!("sqlite://{}/aux.db?mode=rwc", dir.path().display()),
        )
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("bench finishes within 90 s")
        .expect("orderhub bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench {args:?} failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("the last line of stdout is not JSON ({e}): {last:?}\n{stderr}"))
}

/// Every key a machine reads, with sane values.
fn check_report(r: &Value) {
    assert_eq!(r["ok"], true, "{r:#}");
    assert_eq!(r["accepted"], ORDERS, "{r:#}");
    assert_eq!(r["lifecycles"], ORDERS, "{r:#}");
    assert_eq!(r["settled"], ORDERS, "{r:#}");
    for key in ["lifecycles_per_sec", "accepted_per_sec"] {
        let v = r[key].as_f64().unwrap_or_else(|| panic!("{key}: {r:#}"));
        assert!(v > 0.0, "{key} = {v}");
    }
    let rss = r["hub_peak_rss_mb"].as_f64().expect("hub_peak_rss_mb");
    assert!((1.0..100_000.0).contains(&rss), "peak RSS {rss} MB");
    let errors = r["errors"].as_object().expect("errors is an object");
    assert!(errors.values().all(Value::is_u64), "{errors:?}");
    for step in ["submit_ack", "stored_event", "result_event", "aux_done"] {
        let l = &r["latency_ms"][step];
        let q = |k: &str| {
            l[k].as_f64()
                .unwrap_or_else(|| panic!("latency_ms.{step}.{k}: {l}"))
        };
        let (p50, p99, p999, max) = (q("p50"), q("p99"), q("p999"), q("max"));
        assert!(
            0.0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max,
            "{step}: {l}"
        );
        assert!(max < 60_000.0, "{step}: {l}");
    }
    // A lifecycle ends after its submit was answered.
    let ms = |step: &str| r["latency_ms"][step]["p50"].as_f64().unwrap();
    assert!(ms("submit_ack") <= ms("result_event"), "{r:#}");
    assert!(ms("stored_event") <= ms("result_event"), "{r:#}");
}

#[tokio::test]
async fn bench_json_closed_loop() {
    let r = bench_json(&["--orders", &ORDERS.to_string(), "--concurrency", "64"]).await;
    check_report(&r);
    assert_eq!(r["concurrency"], 64);
    assert!(r["rate"].is_null());
}

#[tokio::test]
async fn bench_json_open_loop() {
    let r = bench_json(&["--orders", &ORDERS.to_string(), "--rate", "150"]).await;
    check_report(&r);
    assert_eq!(r["rate"], 150.0);
    // 300 orders due over two seconds: the run cannot take less.
    let elapsed = r["elapsed_s"].as_f64().expect("elapsed_s");
    assert!(elapsed >= 1.9, "elapsed {elapsed} s");
}
