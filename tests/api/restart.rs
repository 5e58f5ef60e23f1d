//! A hub killed with SIGKILL after accepting orders, while some of their events are still
//! unpublished, then restarted on the same databases: every accepted order settles and the stream
//! holds exactly one stored and one result event per order.
//! Also: SIGTERM in the middle of a stream of submits answers every one in flight, stores exactly
//! the accepted ones and exits 0.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sea_orm::EntityTrait;
use tokio::process::Command;

use crate::helpers::*;

/// Messages the stream takes while the first hub runs in
/// [`sigkill_with_events_unpublished_then_restart_settles_everything_once`]: fewer than the
/// orders' stored events, so some of them are still in the outbox at the kill.
const HELD_STREAM_LIMIT: i64 = 75;

#[tokio::test]
async fn sigkill_with_events_unpublished_then_restart_settles_everything_once() {
    init_logs();
    const ORDERS: usize = 150;
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut hub = spawn_hub(&nats, dir.path()).await;
    let gateway = nats.client("gateway").await;
    let operator = nats.client("operator").await;
    let hub_client = nats.client("hub").await;

    // The stream takes only its first HELD_STREAM_LIMIT messages and refuses the rest, so the
    // hub's later publishes fail and their events stay in its outbox.
    let js = async_nats::jetstream::new(hub_client.clone());
    let config = js
        .get_stream(STREAM)
        .await
        .expect("stream")
        .cached_info()
        .config
        .clone();
    js.update_stream(async_nats::jetstream::stream::Config {
        max_messages: HELD_STREAM_LIMIT,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        ..config.clone()
    })
    .await
    .expect("limit the stream");
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

    // Before the kill: the stream is full and events are still unpublished, so what the
    // restarted hub does is finish the first one's work.
    let stream_messages = || {
        let js = js.clone();
        async move {
            js.get_stream(STREAM)
                .await
                .expect("stream")
                .cached_info()
                .state
                .messages
        }
    };
    eventually(
        Duration::from_secs(30),
        "the stream holds as many messages as it takes",
        || async { (stream_messages().await == HELD_STREAM_LIMIT as u64).then_some(()) },
    )
    .await;
    let s = status(&operator).await;
    let unpublished = s["outbox_pending"].as_u64().expect("outbox_pending");
    assert!(
        unpublished >= ORDERS as u64 - HELD_STREAM_LIMIT as u64,
        "at least the stored events the stream refused are in the outbox: {s}"
    );
    hub.start_kill().expect("SIGKILL");
    hub.wait().await.expect("reaped");
    assert!(
        stream_messages().await < 2 * ORDERS as u64,
        "work was unfinished at the kill"
    );

    js.update_stream(config).await.expect("lift the limit");
    let _hub = spawn_hub(&nats, dir.path()).await;
    for (id, user) in &accepted {
        let settled = eventually(
            Duration::from_secs(60),
            "accepted order settles after the restart",
            || async {
                let q = query_order(&gateway, id, user).await;
                (q.body["order"]["status"] == "notified").then_some(q)
            },
        )
        .await;
        // The partner answered every stored event, across the kill: nothing waited for a timeout.
        assert_eq!(settled.body["result"]["outcome"], "confirmed", "order {id}");
    }
    partner.abort();

    outbox_drained(&operator, Duration::from_secs(30)).await;
    let messages = stream_subjects(&hub_client).await;
    assert_once_per_order(
        &events_per_order(&messages),
        accepted.iter().map(|(id, _)| id),
        &["stored", "result_stored"],
    );
    assert_eq!(messages.len(), 2 * ORDERS);
}

/// How one submit of a steady stream ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    Accepted(String),
    Unavailable,
    /// The server's own answer: no hub subscribed to take the request (it never reached one).
    NoResponders,
    /// Nothing within 20 s.
    Timeout,
}

/// One submit: `key` of `user`.
#[derive(Clone, Debug)]
struct Sent {
    key: String,
    user: String,
    answer: Answer,
}

/// What the submitters of a steady stream share: the requests published and not yet answered,
/// and every request's outcome.
#[derive(Default)]
struct Stream {
    outstanding: std::sync::Mutex<HashSet<String>>,
    done: std::sync::Mutex<Vec<Sent>>,
}

impl Stream {
    fn accepted(&self) -> usize {
        self.done
            .lock()
            .unwrap()
            .iter()
            .filter(|s| matches!(s.answer, Answer::Accepted(_)))
            .count()
    }
}

/// Submits one order after another on an inbox of its own, so that a request counts as sent as
/// soon as it is handed to the connection, until the server answers that no hub takes requests
/// any more.
async fn submitter(gateway: async_nats::Client, worker: usize, stream: Arc<Stream>) {
    let inbox = format!("_INBOX_gateway.drain.{worker}");
    let mut replies = gateway
        .subscribe(format!("{inbox}.>"))
        .await
        .expect("subscribe");
    // No flush needed: the server takes this subscription before the requests that follow it.
    let user = format!("u-{}", worker % 7);
    for n in 0.. {
        let key = format!("k-{worker}-{n}");
        let reply = format!("{inbox}.{n}");
        let body = serde_json::to_vec(&order(&user, &key, "acme-air")).unwrap();
        gateway
            .publish_with_reply("orders.submit", reply.clone(), body.into())
            .await
            .expect("publish");
        stream.outstanding.lock().unwrap().insert(key.clone());
        let answer = match tokio::time::timeout(Duration::from_secs(20), replies.next()).await {
            Err(_) => Answer::Timeout,
            Ok(None) => panic!("the reply subscription ended"),
            Ok(Some(m)) => {
                assert_eq!(m.subject.as_str(), reply, "a reply to another request");
                if m.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                    Answer::NoResponders
                } else {
                    let r = Reply {
                        headers: m.headers,
                        body: serde_json::from_slice(&m.payload).expect("a JSON reply"),
                    };
                    if r.error_code().is_some() {
                        r.assert_error("unavailable", 503);
                        Answer::Unavailable
                    } else {
                        let body = r.assert_ok();
                        assert_eq!(body["status"], "accepted", "{body}");
                        assert_eq!(body["duplicate"], false, "{body}");
                        Answer::Accepted(body["order_id"].as_str().expect("order_id").to_owned())
                    }
                }
            }
        };
        stream.outstanding.lock().unwrap().remove(&key);
        let last = matches!(answer, Answer::NoResponders | Answer::Timeout);
        stream.done.lock().unwrap().push(Sent {
            key,
            user: user.clone(),
            answer,
        });
        if last {
            return;
        }
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_submits_and_exits_zero() {
    init_logs();
    /// Submitters, each with one request outstanding at a time.
    const WORKERS: usize = 48;
    /// Accepted orders before the signal: the stream is steady by then.
    const BEFORE_SIGNAL: usize = 100;
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut hub = spawn_hub(&nats, dir.path()).await;
    let gateway = nats.client("gateway").await;
    let partner = run_partner(nats.client("partner-acme-air").await);

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

    // A steady stream of submits from many submitters at once.
    let stream = Arc::new(Stream::default());
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(submitter(gateway.clone(), w, stream.clone())))
        .collect();
    eventually(
        Duration::from_secs(60),
        "the stream of submits is steady",
        || async { (stream.accepted() >= BEFORE_SIGNAL).then_some(()) },
    )
    .await;

    // SIGTERM with requests in flight: those published so far and unanswered. The server answers
    // a JetStream API request only after it has handled everything sent before it on the
    // connection, so by then it has routed each of them to the hub, before its drain begins.
    let in_flight: HashSet<String> = stream.outstanding.lock().unwrap().clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        gateway.request("JS.hub.API.CONSUMER.INFO.ORDER_EVENTS.gateway", "".into()),
    )
    .await
    .expect("the server answers within 10 s")
    .expect("consumer info");
    let pid = hub.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), hub.wait())
        .await
        .expect("exits within 30 s of SIGTERM")
        .expect("status");
    assert!(exit.success(), "graceful exit: {exit:?}");
    for w in workers {
        w.await.expect("submitter");
    }
    let done = stream.done.lock().unwrap().clone();
    let count = |f: fn(&Answer) -> bool| done.iter().filter(|s| f(&s.answer)).count();
    println!(
        "SIGTERM with {} submits in flight; in all {} accepted, {} unavailable, {} found no hub",
        in_flight.len(),
        count(|a| matches!(a, Answer::Accepted(_))),
        count(|a| *a == Answer::Unavailable),
        count(|a| *a == Answer::NoResponders),
    );
    assert!(
        in_flight.len() >= WORKERS / 2,
        "only {} submits were in flight at the signal",
        in_flight.len()
    );

    // Every request in flight at the signal was answered by the hub. After the signal the hub
    // parks what still arrives; once requests pause (at most 3 s) it unsubscribes, waits until
    // the server has processed that, and answers the parked ones `unavailable`. The submitters
    // here retry at once, but each waits for its parked request meanwhile, so none has a request
    // in flight when the hub unsubscribes (one the server routed at that moment would be
    // dropped by the client library: async-nats forgets a draining subscription before the
    // server's confirmation). Only a submitter that took longer than the pause to send its next
    // request could lose one that way: at most two such timeouts are allowed, and only among
    // requests sent after the signal.
    let timed_out: Vec<&Sent> = done
        .iter()
        .filter(|s| s.answer == Answer::Timeout)
        .collect();
    println!(
        "{} of the submits sent after the signal timed out at the unsubscription",
        timed_out.len()
    );
    assert!(
        timed_out.iter().all(|s| !in_flight.contains(&s.key)),
        "a submit in flight at the signal got no answer: {timed_out:?}"
    );
    assert!(
        timed_out.len() <= 2,
        "{} submits timed out: more than the unsubscription's moment explains: {timed_out:?}",
        timed_out.len()
    );
    for s in done.iter().filter(|s| in_flight.contains(&s.key)) {
        assert!(
            matches!(s.answer, Answer::Accepted(_) | Answer::Unavailable),
            "a submit in flight at the signal was not answered by the hub: {s:?}"
        );
    }
    assert_eq!(
        done.iter().filter(|s| in_flight.contains(&s.key)).count(),
        in_flight.len()
    );

    // Exactly the accepted orders are in the database the hub left behind.
    let accepted: Vec<(String, String)> = done
        .iter()
        .filter_map(|s| match &s.answer {
            Answer::Accepted(id) => Some((id.clone(), s.user.clone())),
            _ => None,
        })
        .collect();
    let db = sea_orm::Database::connect(format!(
        "sqlite://{}/orderhub.db?mode=ro",
        dir.path().display()
    ))
    .await
    .expect("open the hub's database");
    let mut stored: Vec<String> = entities::orders::Entity::find()
        .all(&db)
        .await
        .expect("orders")
        .into_iter()
        .map(|o| o.id)
        .collect();
    let _ = db.close().await;
    let mut ids: Vec<String> = accepted.iter().map(|(id, _)| id.clone()).collect();
    stored.sort();
    ids.sort();
    assert_eq!(
        stored, ids,
        "the accepted orders, and no others, are stored"
    );

    // The next hub settles every one of them, with exactly one stored and one result event each.
    let _hub = spawn_hub(&nats, dir.path()).await;
    for (id, user) in &accepted {
        let settled = eventually(
            Duration::from_secs(60),
            "accepted order settles after the restart",
            || async {
                let q = query_order(&gateway, id, user).await;
                (q.body["order"]["status"] == "notified").then_some(q)
            },
        )
        .await;
        assert_eq!(settled.body["result"]["outcome"], "confirmed", "order {id}");
    }
    partner.abort();
    let messages = stream_subjects(&nats.client("hub").await).await;
    let mut per_order: HashMap<String, (usize, usize)> = HashMap::new();
    for (subject, _) in &messages {
        let e = per_order
            .entry(subject.rsplit('.').next().unwrap().to_owned())
            .or_default();
        if subject.starts_with("orders.events.stored.") {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    let mut with_events: Vec<String> = per_order.keys().cloned().collect();
    with_events.sort();
    assert_eq!(with_events, ids, "events for exactly the accepted orders");
    for (id, counts) in &per_order {
        assert_eq!(
            *counts,
            (1, 1),
            "order {id}: one stored and one result event"
        );
    }
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

/// Run from another directory, the binary reads nothing of the tree it was built in: it names
/// what it looked for and where.
#[tokio::test]
async fn outside_the_project_directory_says_what_is_missing() {
    let elsewhere = tempfile::tempdir().unwrap();
    let run = |args: &[&str], envs: &[(&str, &std::ffi::OsStr)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_orderhub"));
        command
            .args(args)
            .current_dir(elsewhere.path())
            .env_remove("ORDERHUB_CONFIG_DIR")
            .env_remove("ORDERHUB_NATS_CONF")
            .env_remove("ORDERHUB_ENV")
            .stdin(std::process::Stdio::null());
        for (k, v) in envs {
            command.env(k, v);
        }
        command.output()
    };
    let out = run(&["migrate"], &[]).await.expect("orderhub runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "config/default.toml not found (working directory {})",
            elsewhere.path().display()
        )) && said.contains("ORDERHUB_CONFIG_DIR"),
        "{said}"
    );

    // With the configuration found, the local nats-server the demo would start needs ./nats.conf.
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut stopped =
        orderhub::sim::natsserver::NatsServer::start(None, &elsewhere.path().join("js"))
            .await
            .expect("nats-server");
    stopped.kill().await;
    let url = format!("nats://hub:hub-dev@127.0.0.1:{}", stopped.port);
    let out = run(
        &["demo"],
        &[
            ("ORDERHUB_CONFIG_DIR", config.as_os_str()),
            ("ORDERHUB__NATS__URL", url.as_ref()),
            ("ORDERHUB__NATS__SPAWN_SERVER", "true".as_ref()),
        ],
    )
    .await
    .expect("orderhub runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "nats.conf not found (working directory {})",
            elsewhere.path().display()
        )) && said.contains("ORDERHUB_NATS_CONF"),
        "{said}"
    );
}
