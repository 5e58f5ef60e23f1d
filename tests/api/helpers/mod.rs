//! Test harness: a real `nats-server` from `nats.conf` per test (free port, own store directory),
//! a hub started in-process (or as a child process), its databases — SQLite files in a temporary
//! directory, or a fresh database on a Postgres primary + streaming replica from `scripts/pg-pair`
//! — and clients that connect as the roles of `nats.conf`.
//!
//! Here: requests and replies, the event stream, polling, and [`both_backends!`]. In the
//! submodules, re-exported: [`nats`] (the server), [`pg`] (the Postgres pair), [`hub`] (the hub
//! under test) and [`sim`] (simulated peers).

mod hub;
mod nats;
mod pg;
mod sim;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull};
use async_nats::{Client, HeaderMap};
use futures::StreamExt;
use serde_json::{Value, json};

pub use hub::*;
pub use nats::*;
pub use orderhub::{App, Settings};
pub use pg::*;
pub use sim::*;

pub const STREAM: &str = "ORDER_EVENTS";

/// Logs when `TEST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        orderhub::telemetry::init("orderhub=debug,actors=debug,warn");
    }
}

/// A reply: its headers (if any) and its JSON body.
#[derive(Debug)]
pub struct Reply {
    pub headers: Option<HeaderMap>,
    pub body: Value,
}

impl Reply {
    /// The error code of an error reply, after checking the reply is a well-formed error.
    pub fn error_code(&self) -> Option<&str> {
        self.body.get("error")?.get("code")?.as_str()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .as_ref()?
            .get(name)
            .map(|v| v.as_str().to_owned())
    }

    /// Asserts a complete error reply of the protocol: code, status header, description header,
    /// non-empty message, and on `unavailable` the `Orderhub-Retry-After-Ms` hint.
    #[track_caller]
    pub fn assert_error(&self, code: &str, status: u16) {
        assert_eq!(self.error_code(), Some(code), "reply: {:?}", self.body);
        assert_eq!(
            self.header("Nats-Service-Error-Code").as_deref(),
            Some(status.to_string().as_str()),
            "{self:?}"
        );
        let message = self.body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            !message.is_empty(),
            "error message must say what to do: {self:?}"
        );
        assert_eq!(
            self.header("Nats-Service-Error").as_deref(),
            Some(message),
            "{self:?}"
        );
        // `unavailable`, and only it, suggests a wait before the retry.
        let retry_after = self.header("Orderhub-Retry-After-Ms");
        if code == "unavailable" {
            let ms: u64 = retry_after
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("unavailable without a numeric retry hint: {self:?}"));
            assert!(ms > 0, "{self:?}");
        } else {
            assert!(retry_after.is_none(), "{self:?}");
        }
    }

    #[track_caller]
    pub fn assert_ok(&self) -> &Value {
        assert!(
            self.body.get("error").is_none(),
            "unexpected error: {:?}",
            self.body
        );
        assert!(self.header("Nats-Service-Error-Code").is_none(), "{self:?}");
        &self.body
    }
}

/// Sends a request with raw bytes and decodes the reply.
pub async fn request_raw(client: &Client, subject: &str, body: Vec<u8>) -> Reply {
    let msg = tokio::time::timeout(
        Duration::from_secs(15),
        client.request(subject.to_owned(), body.into()),
    )
    .await
    .expect("reply within 15 s")
    .expect("request answered");
    let body = serde_json::from_slice(&msg.payload).unwrap_or_else(|e| {
        panic!(
            "reply is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&msg.payload)
        )
    });
    Reply {
        headers: msg.headers,
        body,
    }
}

pub async fn request(client: &Client, subject: &str, body: Value) -> Reply {
    request_raw(client, subject, serde_json::to_vec(&body).expect("json")).await
}

/// A valid submit body.
pub fn order(user: &str, request_id: &str, partner: &str) -> Value {
    json!({"request_id": request_id, "user_id": user, "partner_id": partner, "product": "flight",
           "amount_minor": 129900, "currency": "CNY", "items": [{"sku": "MU5101", "qty": 1}],
           "payload": {"seat": "12A"}})
}

/// Submits and returns the new order id.
pub async fn submit(gateway: &Client, user: &str, request_id: &str, partner: &str) -> String {
    let r = request(gateway, "orders.submit", order(user, request_id, partner)).await;
    r.assert_ok()["order_id"]
        .as_str()
        .expect("order_id")
        .to_owned()
}

/// How often a test checks a condition it waits for, against a deadline.
pub const POLL: Duration = Duration::from_millis(25);

/// Polls `check` every [`POLL`] until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// A durable consumer of `ORDER_EVENTS`, bound through the hub account's JetStream API prefix
/// without STREAM.INFO (roles may not read it).
pub async fn durable(client: &Client, name: &str) -> PullConsumer {
    orderhub::startup::role_jetstream(client)
        .get_consumer_from_stream::<pull::Config, _, _>(name, STREAM)
        .await
        .unwrap_or_else(|e| panic!("consumer {name}: {e}"))
}

/// A durable consumer of `ORDER_EVENTS` as the hub's own account reaches it (no prefix).
pub async fn hub_durable(hub_client: &Client, name: &str) -> PullConsumer {
    jetstream::new(hub_client.clone())
        .get_consumer_from_stream::<pull::Config, _, _>(name, STREAM)
        .await
        .unwrap_or_else(|e| panic!("consumer {name}: {e}"))
}

/// Pulls up to `n` messages (acknowledging them) within `timeout`.
pub async fn pull(consumer: &PullConsumer, n: usize, timeout: Duration) -> Vec<jetstream::Message> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        let mut batch = consumer
            .fetch()
            .max_messages(n - out.len())
            .expires(Duration::from_millis(300))
            .messages()
            .await
            .expect("fetch");
        while let Some(m) = batch.next().await {
            let m = m.expect("message");
            m.ack().await.expect("ack");
            out.push(m);
        }
    }
    out
}

/// The event body of a message.
pub fn event(m: &jetstream::Message) -> Value {
    serde_json::from_slice(&m.payload).expect("event is JSON")
}

/// Every message in the stream, read through an ordered consumer as the hub user.
pub async fn stream_subjects(hub_client: &async_nats::Client) -> Vec<(String, String)> {
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

/// `orders.admin.status`, as the operator sees it.
pub async fn status(operator: &Client) -> Value {
    let r = request(operator, "orders.admin.status", json!({})).await;
    r.assert_ok().clone()
}

/// Runs each `async fn name(hub: TestHub)` of the calling module on both backends, as the tests
/// `sqlite::name` and `postgres::name`. `name => tweak` starts both hubs with `tweak(&mut settings)`.
macro_rules! both_backends {
    ($($name:ident $(=> $tweak:ident)?),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let hub = crate::helpers::TestHub::start_with(|_s| { $(super::$tweak(_s);)? }).await;
                    super::$name(hub).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let hub = crate::helpers::TestHub::start_postgres_with(|_s| { $(super::$tweak(_s);)? }).await;
                    super::$name(hub).await
                }
            )+
        }
    };
}
pub(crate) use both_backends;

/// `orders.query` for one order, as `user_id`.
pub async fn query_order(client: &Client, order_id: &str, user_id: impl serde::Serialize) -> Reply {
    request(
        client,
        "orders.query",
        json!({"order_id": order_id, "user_id": user_id}),
    )
    .await
}

/// Per order id (`data.order_id`), how many events of each type the messages of
/// [`stream_subjects`] hold; a type is named without its `orderhub.order.` prefix (`stored`,
/// `result_stored`, `late_result_stored`, `settled`).
pub fn events_per_order(messages: &[(String, String)]) -> HashMap<String, BTreeMap<String, usize>> {
    let mut per_order: HashMap<String, BTreeMap<String, usize>> = HashMap::new();
    for (subject, payload) in messages {
        let ev: Value = serde_json::from_str(payload)
            .unwrap_or_else(|e| panic!("event on {subject} is not JSON ({e}): {payload}"));
        let kind = ev["type"]
            .as_str()
            .and_then(|t| t.strip_prefix("orderhub.order."))
            .unwrap_or_else(|| panic!("event type on {subject}: {ev}"))
            .to_owned();
        let id = ev["data"]["order_id"]
            .as_str()
            .unwrap_or_else(|| panic!("order_id of the event on {subject}: {ev}"))
            .to_owned();
        *per_order.entry(id).or_default().entry(kind).or_default() += 1;
    }
    per_order
}

/// Asserts that the events [`events_per_order`] counted are of exactly the orders `ids`, each with
/// one event of each of `kinds` and no other.
#[track_caller]
pub fn assert_once_per_order<'a>(
    per_order: &HashMap<String, BTreeMap<String, usize>>,
    ids: impl IntoIterator<Item = &'a String>,
    kinds: &[&str],
) {
    let ids: std::collections::HashSet<&String> = ids.into_iter().collect();
    let without: Vec<&&String> = ids
        .iter()
        .filter(|id| !per_order.contains_key(**id))
        .collect();
    let foreign: Vec<&String> = per_order.keys().filter(|id| !ids.contains(id)).collect();
    assert!(
        without.is_empty() && foreign.is_empty(),
        "events of exactly the {} orders: none for {without:?}; some of orders not among them: {foreign:?}",
        ids.len()
    );
    let once: BTreeMap<String, usize> = kinds.iter().map(|k| ((*k).to_owned(), 1)).collect();
    for (id, counts) in per_order {
        assert_eq!(counts, &once, "order {id}: one event of each of {kinds:?}");
    }
}

/// Waits until the hub has published every event it committed: `outbox_pending` is 0 and no
/// event waits for the read node.
pub async fn outbox_drained(operator: &Client, within: Duration) -> Value {
    eventually(within, "every committed event published", || async {
        let s = status(operator).await;
        (s["outbox_pending"] == 0 && s["replica"]["events_waiting"] == 0).then_some(s)
    })
    .await
}

/// Pulls (and acknowledges) what is left on `consumer` until a fetch brings nothing and the
/// consumer has no message pending. Call it once the hub has nothing left to publish (see
/// [`outbox_drained`]): whatever it returns was in the stream beyond what the caller has seen.
pub async fn drain(consumer: &PullConsumer, within: Duration) -> Vec<jetstream::Message> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    loop {
        let got = pull(consumer, 100, Duration::from_millis(300)).await;
        if got.is_empty() {
            let info = consumer.get_info().await.expect("consumer info");
            if info.num_pending == 0 {
                return out;
            }
        }
        out.extend(got);
        assert!(
            Instant::now() < deadline,
            "the consumer still has messages pending after {within:?}"
        );
    }
}

/// The replies of every instance of service `orderhub` to `$SRV.<verb>.orderhub`, collected
/// until `n` instances have answered (each once).
pub async fn every_instance(client: &Client, verb: &str, n: usize) -> Vec<Value> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.expect("subscribe");
    client
        .publish_with_reply(format!("$SRV.{verb}.orderhub"), inbox, "{}".into())
        .await
        .expect("publish");
    let mut out: Vec<Value> = Vec::new();
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} instances answered: {out:?}", out.len()))
            .expect("subscription open");
        let reply: Value = serde_json::from_slice(&m.payload).expect("reply is JSON");
        assert!(
            out.iter().all(|r| r["id"] != reply["id"]),
            "an instance answered twice: {reply}"
        );
        out.push(reply);
    }
    out
}

/// Kills the long-lived actor `role` of the in-process hub `operator` reaches (found by its
/// registry name) and waits until a new incarnation runs under that name.
pub async fn restart_actor(operator: &Client, role: &str) {
    let s = status(operator).await;
    let instance = s["instance_id"].as_str().expect("instance_id");
    let name = actors::registry_name(instance, role);
    let cell = ractor::registry::where_is(name.clone())
        .unwrap_or_else(|| panic!("actor {name} is registered"));
    let before = cell.get_id();
    cell.kill();
    eventually(
        Duration::from_secs(10),
        &format!("a new incarnation of {name}"),
        || {
            let id = ractor::registry::where_is(name.clone()).map(|c| c.get_id());
            async move { id.filter(|id| *id != before).map(|_| ()) }
        },
    )
    .await;
}
