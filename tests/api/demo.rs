//! `orderhub demo` as the README runs it (it starts its own `nats-server`, which `orderhub serve`
//! never does), and the simulated participants' client: it reads the hub's retry hint and waits
//! it, with jitter, before asking again.

use std::time::{Duration, Instant};

use actors::protocol::{Subjects, SubmitReply};
use orderhub::sim::client::{Patience, ask, call};
use tokio::process::Command;

use crate::bench::{Finished, finish, where_no_nats_answers};
use crate::helpers::*;

#[tokio::test]
async fn the_demo_starts_its_nats_server_and_settles_every_order() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderhub"));
    where_no_nats_answers(&mut command, dir.path());
    let args = ["demo", "--orders", "60", "--timeout", "90s"];
    let Finished {
        success,
        stdout,
        stderr,
    } = finish(command, &args, Duration::from_secs(120)).await;
    assert!(success, "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stderr.contains("starting nats-server from nats.conf"),
        "{stderr}"
    );
    assert!(
        stdout.contains("accepted 60, result events 60, settled 60"),
        "{stdout}"
    );
    assert!(stdout.contains("every order settled"), "{stdout}");
    // Its embedded default: SQLite files and the server's store under the working directory.
    for path in ["data/orderhub.db", "data/aux.db", "data/nats"] {
        assert!(dir.path().join(path).exists(), "{path}");
    }
}

/// Whatever `nats.spawn_server` says, the hub itself starts no server: with none answering it
/// fails to connect. Set to `true`, it is warned about at start-up.
#[tokio::test]
async fn serve_never_starts_a_nats_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderhub"));
    where_no_nats_answers(&mut command, dir.path());
    command.env("ORDERHUB__NATS__SPAWN_SERVER", "true");
    let out = finish(command, &["serve"], Duration::from_secs(60)).await;
    let said = out.stderr;
    assert!(!out.success, "{said}");
    assert!(said.contains("connecting to NATS"), "{said}");
    let warning = said
        .lines()
        .find(|l| l.contains("nats.spawn_server"))
        .unwrap_or_else(|| panic!("serve warns about nats.spawn_server:\n{said}"));
    assert!(
        warning.contains("WARN") && warning.contains("`orderhub serve` never starts nats-server"),
        "{warning}"
    );
    assert!(!said.contains("starting nats-server"), "{said}");
    assert!(!dir.path().join("data/nats").exists());
}

#[tokio::test]
async fn the_sim_client_waits_the_hinted_time_before_asking_again() {
    let hub = TestHub::start_with(|s| {
        for p in &mut s.partners {
            if p.id == "globex-hotels" {
                p.max_pending = 1;
                p.result_timeout = Duration::from_secs(20);
            }
        }
    })
    .await;
    let gateway = hub.client("gateway").await;
    let subjects = Subjects::new("orders");
    submit(&gateway, "u-hint", "hint-0", "globex-hotels").await;

    // The hint as the wire carries it.
    let refused = request(
        &gateway,
        "orders.submit",
        order("u-hint", "hint-1", "globex-hotels"),
    )
    .await;
    refused.assert_error("unavailable", 503);
    let hint = refused
        .header("Orderhub-Retry-After-Ms")
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
        .expect("a retry hint");
    assert!(hint >= Duration::from_millis(500), "{hint:?}");

    // The simulators' client decodes it…
    let body = order("u-hint", "hint-2", "globex-hotels");
    let e = call::<SubmitReply>(&gateway, subjects.submit(), &body)
        .await
        .expect_err("the partner is saturated");
    assert_eq!(e.code(), Some("unavailable"), "{e}");
    assert_eq!(e.retry_after(), Some(hint), "{e}");

    // …and asks again only after it, with jitter: between half and one and a half times the hint,
    // doubled for each refusal before (up to four times the hint).
    let started = Instant::now();
    let patience = Patience {
        until: Some((started + hint * 4).into()),
        ..Patience::default()
    };
    let mut refusals = Vec::new();
    let e = ask::<SubmitReply>(&gateway, subjects.submit(), &body, &patience, |e, wait| {
        refusals.push((Instant::now(), e.retry_after(), wait))
    })
    .await
    .expect_err("still saturated");
    let ended = Instant::now();
    assert_eq!(e.code(), Some("unavailable"), "{e}");
    let hinted: Vec<Duration> = refusals
        .iter()
        .filter(|(_, h, _)| *h == Some(hint))
        .map(|(_, _, wait)| *wait)
        .collect();
    assert!(!hinted.is_empty(), "asked again within four hints");
    for (i, wait) in hinted.iter().enumerate() {
        let base = hint
            * 2u32
                .pow(i as u32)
                .min(orderhub::sim::backoff::MAX_HINT_FACTOR);
        assert!(
            *wait >= base / 2 && *wait < base * 3 / 2,
            "wait {i} was {wait:?} for a hint of {hint:?}"
        );
    }
    // Each attempt came after the wait before it.
    let next_attempts = refusals.iter().skip(1).map(|(at, _, _)| *at).chain([ended]);
    for ((at, _, wait), next) in refusals.iter().zip(next_attempts) {
        assert!(next - *at >= *wait, "{:?} < {wait:?}", next - *at);
    }
}
