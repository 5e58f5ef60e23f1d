//! `orderhub bench --json` as a machine runs it: the built binary with an in-process hub on SQLite
//! files, once in a closed loop on this test's nats-server, once in an open loop (`--rate`) on a
//! nats-server the bench starts itself, and once against a hub already running (`--external`).
//! The last line of stdout is one JSON object with the throughput, the CPU time per story, the
//! hub's peak memory and its memory sampled every second, the errors by code and the latency
//! percentiles of every step.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

use crate::helpers::*;

const ORDERS: u64 = 300;

/// Where the bench finds NATS.
enum Nats<'a> {
    /// This test's server.
    Test(&'a TestNats),
    /// None answers at the URL: the bench starts `nats-server` there itself.
    StartedByBench,
}

/// Runs `command` in `dir` with a NATS URL where nothing answers, and what it needs to start
/// `nats-server` there itself: the configuration, `nats.conf` and the binary (the server's store
/// goes to `dir/data/nats`).
pub fn where_no_nats_answers(command: &mut Command, dir: &Path) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let bin = orderhub::sim::natsserver::find_binary()
        .expect("nats-server (run scripts/install-nats-server)");
    // A path relative to this test's directory, or a name looked up on PATH.
    let bin = if bin.components().count() > 1 {
        manifest.join(bin)
    } else {
        bin
    };
    command
        .current_dir(dir)
        .env("ORDERHUB_CONFIG_DIR", manifest.join("config"))
        .env("ORDERHUB_NATS_CONF", manifest.join("nats.conf"))
        .env("NATS_SERVER_BIN", bin)
        .env(
            "ORDERHUB__NATS__URL",
            format!("nats://hub:hub-dev@127.0.0.1:{port}"),
        )
        .env_remove("ORDERHUB__NATS__SPAWN_SERVER");
}

/// What a finished `orderhub` command said.
pub struct Finished {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `orderhub <args>` as `command` is set up, to its end within `within`.
pub async fn finish(mut command: Command, args: &[&str], within: Duration) -> Finished {
    let run = command
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(within, run)
        .await
        .unwrap_or_else(|_| panic!("orderhub {args:?} ends within {within:?}"))
        .expect("orderhub runs");
    Finished {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `orderhub bench --json <args>` to completion (its databases in `dir`) and returns the
/// last line of stdout, parsed.
async fn bench_json(nats: Nats<'_>, dir: &Path, args: &[&str]) -> Value {
    bench_json_with(nats, dir, args, &[]).await
}

/// [`bench_json`] with `env` set for the bench.
async fn bench_json_with(nats: Nats<'_>, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Value {
    init_logs();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderhub"));
    match nats {
        Nats::Test(nats) => {
            command
                .current_dir(manifest)
                .env("ORDERHUB__NATS__URL", nats.url("hub"))
                .env("ORDERHUB__NATS__SPAWN_SERVER", "false");
        }
        Nats::StartedByBench => where_no_nats_answers(&mut command, dir),
    }
    sqlite_in(&mut command, dir);
    command.envs(env.iter().copied());
    let args: Vec<&str> = ["bench", "--json"].iter().chain(args).copied().collect();
    let Finished {
        success,
        stdout,
        stderr,
    } = finish(command, &args, Duration::from_secs(90)).await;
    assert!(success, "{args:?} failed:\n{stdout}\n{stderr}");
    assert!(
        stderr.contains("ms per story"),
        "the table shows the CPU per story:\n{stderr}"
    );
    assert_eq!(
        stderr.contains("rss over time"),
        !args.contains(&"--external"),
        "the table shows the sampled memory when the hub runs in-process:\n{stderr}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("the last line of stdout is not JSON ({e}): {last:?}\n{stderr}"))
}

/// `r[key]` as a positive number.
#[track_caller]
fn positive(r: &Value, key: &str) -> f64 {
    let v = r[key].as_f64().unwrap_or_else(|| panic!("{key}: {r:#}"));
    assert!(v > 0.0 && v.is_finite(), "{key} = {v}");
    v
}

/// Every key a machine reads, with sane values.
fn check_report(r: &Value) {
    assert_eq!(r["ok"], true, "{r:#}");
    assert_eq!(r["accepted"], ORDERS, "{r:#}");
    assert_eq!(r["lifecycles"], ORDERS, "{r:#}");
    assert_eq!(r["settled"], ORDERS, "{r:#}");
    for key in [
        "lifecycles_per_sec",
        "accepted_per_sec",
        "settled_per_sec",
        "cpu_ms_per_story",
    ] {
        positive(r, key);
    }
    // A story costs well under a second of CPU, even in a debug build.
    assert!(positive(r, "cpu_ms_per_story") < 1_000.0, "{r:#}");
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

/// The hub ran in the bench's process: its peak memory, and its memory sampled every second.
fn check_in_process(r: &Value) {
    let peak = r["hub_peak_rss_mb"].as_f64().expect("hub_peak_rss_mb");
    assert!((1.0..100_000.0).contains(&peak), "peak RSS {peak} MB");
    let m = &r["rss_mb"];
    let mb = |k: &str| {
        let v = m[k].as_f64().unwrap_or_else(|| panic!("rss_mb.{k}: {m}"));
        assert!((1.0..100_000.0).contains(&v), "rss_mb.{k}: {m}");
        v
    };
    let (first, max, last) = (mb("first"), mb("max"), mb("last"));
    assert!(first <= max && last <= max, "{m}");
    // Sampled memory never exceeds the process's peak (rounded to 0.01 MB both).
    assert!(max <= peak + 0.01, "max {max} MB, peak {peak} MB");
    let samples = m["samples"].as_u64().expect("rss_mb.samples");
    // One when the first order is due and one when the last settled, at the least.
    assert!(samples >= 2, "{m}");
    let growth = m["growth_mb_per_min"]
        .as_f64()
        .unwrap_or_else(|| panic!("rss_mb.growth_mb_per_min: {m}"));
    assert!(growth.is_finite(), "{m}");
    // Runs this short are fitted whole.
    assert_eq!(m["growth_over"], "whole_run", "{m}");
    assert!(r["hub_cpu_ms_per_story"].is_null(), "{r:#}");
}

#[tokio::test]
async fn bench_json_closed_loop() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let args = ["--orders", &ORDERS.to_string(), "--concurrency", "64"];
    // Two runtime threads, whatever the machine: the default is covered by the other runs.
    let workers = [("ORDERHUB__RUNTIME__WORKERS", "2")];
    let r = bench_json_with(Nats::Test(&nats), dir.path(), &args, &workers).await;
    check_report(&r);
    check_in_process(&r);
    assert_eq!(r["runtime_workers"], 2, "{r:#}");
    assert_eq!(r["concurrency"], 64);
    assert!(r["rate"].is_null());
    // The bench did not start this nats-server.
    assert!(r["nats_cpu_ms_per_story"].is_null(), "{r:#}");
}

#[tokio::test]
async fn bench_json_open_loop_on_a_nats_server_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--orders", &ORDERS.to_string(), "--rate", "150"];
    let r = bench_json(Nats::StartedByBench, dir.path(), &args).await;
    check_report(&r);
    check_in_process(&r);
    // The default: half the cores, at least one (one: the single-threaded runtime).
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    assert_eq!(r["runtime_workers"], (cores / 2).max(1), "{r:#}");
    assert_eq!(r["rate"], 150.0);
    // 300 orders due over two seconds: the run cannot take less.
    let elapsed = r["elapsed_s"].as_f64().expect("elapsed_s");
    assert!(elapsed >= 1.9, "elapsed {elapsed} s");
    positive(&r, "nats_cpu_ms_per_story");
    assert!(
        dir.path().join("data/nats").is_dir(),
        "the server's store is under the working directory"
    );
}

#[tokio::test]
async fn bench_json_external_reads_the_hubs_cpu_from_its_status() {
    let nats = TestNats::start().await;
    let hub_dir = tempfile::tempdir().unwrap();
    let _hub = spawn_hub(&nats, hub_dir.path()).await;
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--external",
        "--orders",
        &ORDERS.to_string(),
        "--concurrency",
        "64",
    ];
    let r = bench_json(Nats::Test(&nats), dir.path(), &args).await;
    check_report(&r);
    // The hub is another process: its CPU comes from `orders.admin.status`.
    positive(&r, "hub_cpu_ms_per_story");
    // The bench's own memory holds no hub: neither figure is reported.
    assert!(r["hub_peak_rss_mb"].is_null(), "{r:#}");
    assert!(r["rss_mb"].is_null(), "{r:#}");
    assert!(r["nats_cpu_ms_per_story"].is_null(), "{r:#}");
}
