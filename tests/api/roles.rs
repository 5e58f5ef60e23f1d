//! Role clients for the isolation tests.
//!
//! The server refuses a forbidden publish or subscribe by sending `-ERR 'Permissions Violation
//! for Publish to "<subject>"'` (or `… for Subscription to …`) on the connection; the call itself
//! does not fail (a denied request just never gets an answer). So a [`Role`] connects with an
//! event callback that records every server error, and its `deny_*` methods wait for the exact
//! violation and then prove that nothing came back. Effects are checked afterwards through
//! read-only probes that the operator may send (stream and consumer info).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, ServerError, Subscriber};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::helpers::{STREAM, TestNats, eventually};

/// How long a refusal may take to come back from the server.
pub const VIOLATION_DEADLINE: Duration = Duration::from_secs(5);
/// How long to watch for a message that must not arrive (a reply to a refused request, an event
/// on a refused subscription). Everything here runs on loopback, where an answer takes a few
/// milliseconds, and the refusal itself has already been seen when the window starts.
pub const QUIET: Duration = Duration::from_millis(400);

/// What the server refused.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Publish,
    Subscription,
}

impl Op {
    fn word(self) -> &'static str {
        match self {
            Op::Publish => "Publish",
            Op::Subscription => "Subscription",
        }
    }
}

/// A connection as one `nats.conf` user that records the server's errors.
pub struct Role {
    pub user: String,
    pub client: Client,
    inbox: String,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Role {
    /// Connects as `user` with the role's own inbox prefix `_INBOX_<user>`.
    pub async fn connect(nats: &TestNats, user: &str) -> Self {
        Self::connect_with_inbox(nats, user, &format!("_INBOX_{user}")).await
    }

    /// Connects as `user` with any inbox prefix (`_INBOX` is the library default).
    pub async fn connect_with_inbox(nats: &TestNats, user: &str, inbox: &str) -> Self {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        let client = ConnectOptions::with_user_and_password(user.into(), format!("{user}-dev"))
            .name(format!("test-{user}"))
            .custom_inbox_prefix(inbox)
            .request_timeout(Some(Duration::from_secs(10)))
            .event_callback(move |event| {
                let sink = sink.clone();
                async move {
                    if let Event::ServerError(e) = event {
                        let text = match e {
                            ServerError::Other(text) => text,
                            other => other.to_string(),
                        };
                        sink.lock().expect("errors lock").push(text);
                    }
                }
            })
            .connect(format!("nats://127.0.0.1:{}", nats.server.port))
            .await
            .unwrap_or_else(|e| panic!("{user} connects: {e}"));
        Self {
            user: user.to_owned(),
            client,
            inbox: inbox.to_owned(),
            errors,
        }
    }

    /// Every error the server has sent this connection so far.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().expect("errors lock").clone()
    }

    fn violation_text(op: Op, subject: &str) -> String {
        format!("Permissions Violation for {} to \"{subject}\"", op.word())
    }

    /// Waits until the server has refused `op` on `subject` (at least `times` times so far).
    pub async fn expect_violation(&self, op: Op, subject: &str, times: usize) {
        let want = Self::violation_text(op, subject);
        let what = format!("{}: {want} (×{times})", self.user);
        eventually(VIOLATION_DEADLINE, &what, || async {
            let seen = self.errors().iter().filter(|e| e.contains(&want)).count();
            (seen >= times).then_some(())
        })
        .await;
    }

    fn count(&self, op: Op, subject: &str) -> usize {
        let want = Self::violation_text(op, subject);
        self.errors().iter().filter(|e| e.contains(&want)).count()
    }

    /// Sends each request the server must refuse: every one is reported as a publish violation,
    /// and no answer reaches this role's inbox.
    pub async fn deny_requests<S: AsRef<str>>(&self, requests: &[(S, Value)]) {
        let probe = format!("{}.denied.{}", self.inbox, uuid::Uuid::now_v7().simple());
        let mut replies = self
            .client
            .subscribe(format!("{probe}.>"))
            .await
            .expect("subscribe own inbox");
        let before: Vec<usize> = requests
            .iter()
            .map(|(s, _)| self.count(Op::Publish, s.as_ref()))
            .collect();
        for (i, (subject, body)) in requests.iter().enumerate() {
            let payload = serde_json::to_vec(body).expect("json");
            self.client
                .publish_with_reply(
                    subject.as_ref().to_owned(),
                    format!("{probe}.{i}"),
                    payload.into(),
                )
                .await
                .expect("publish");
        }
        self.client.flush().await.expect("flush");
        for ((subject, _), seen) in requests.iter().zip(before) {
            self.expect_violation(Op::Publish, subject.as_ref(), seen + 1)
                .await;
        }
        if let Ok(Some(m)) = tokio::time::timeout(QUIET, replies.next()).await {
            panic!(
                "{}: a refused request was answered on {}: {:?}",
                self.user, m.subject, m.payload
            );
        }
    }

    /// Subscribes where the server must refuse; returns the subscriber, to show later that nothing
    /// arrives on it.
    pub async fn deny_subscribe(&self, subject: &str) -> Subscriber {
        let seen = self.count(Op::Subscription, subject);
        let sub = self
            .client
            .subscribe(subject.to_owned())
            .await
            .expect("subscribe call");
        self.client.flush().await.expect("flush");
        self.expect_violation(Op::Subscription, subject, seen + 1)
            .await;
        sub
    }

    /// Asserts that the server refused this role nothing but publishing to `subjects`.
    #[track_caller]
    pub fn assert_no_violations_except_publish(&self, subjects: &[&str]) {
        let expected: Vec<String> = subjects
            .iter()
            .map(|s| Self::violation_text(Op::Publish, s))
            .collect();
        let others: Vec<String> = self
            .errors()
            .into_iter()
            .filter(|e| !expected.iter().any(|x| e.contains(x.as_str())))
            .collect();
        assert!(
            others.is_empty(),
            "{} was refused more than expected: {others:?}",
            self.user
        );
    }

    /// Asserts that the server refused nothing of this role so far.
    #[track_caller]
    pub fn assert_no_violations(&self) {
        let errors = self.errors();
        assert!(errors.is_empty(), "{} was refused: {errors:?}", self.user);
    }
}

/// Each request as given and, for a `$JS.API.…` subject, also as `JS.hub.API.…`: the role's own
/// account has no JetStream, and the prefixed form reaches the hub account's only where an import
/// allows it.
pub fn with_prefixed(requests: &[(&str, Value)]) -> Vec<(String, Value)> {
    let mut out = Vec::with_capacity(requests.len() * 2);
    for (subject, body) in requests {
        out.push((subject.to_string(), body.clone()));
        if let Some(rest) = subject.strip_prefix("$JS.API.") {
            out.push((format!("JS.hub.API.{rest}"), body.clone()));
        }
    }
    out
}

/// Asserts that none of `subs` receives a message within [`QUIET`].
pub async fn assert_silent(subs: &mut [Subscriber], why: &str) {
    let all = futures::stream::select_all(subs.iter_mut());
    let mut all = std::pin::pin!(all);
    if let Ok(Some(m)) = tokio::time::timeout(QUIET, all.next()).await {
        panic!("{why}: got a message on {}", m.subject);
    }
}

/// A JetStream API call (or any JSON request) whose answer is not an orderhub reply.
pub async fn js_api(client: &Client, subject: &str, body: Value) -> Value {
    let payload = serde_json::to_vec(&body).expect("json");
    let m = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(subject.to_owned(), payload.into()),
    )
    .await
    .unwrap_or_else(|_| panic!("{subject}: no answer within 10 s"))
    .unwrap_or_else(|e| panic!("{subject}: {e}"));
    serde_json::from_slice(&m.payload).unwrap_or_else(|e| panic!("{subject}: not JSON ({e})"))
}

/// Read-only probes of `ORDER_EVENTS`, as the operator sends them.
pub struct Probe<'a>(pub &'a Client);

impl Probe<'_> {
    /// Messages stored in the stream.
    pub async fn messages(&self) -> u64 {
        let info = js_api(
            self.0,
            &format!("JS.hub.API.STREAM.INFO.{STREAM}"),
            json!({}),
        )
        .await;
        info["state"]["messages"]
            .as_u64()
            .unwrap_or_else(|| panic!("stream info: {info}"))
    }

    /// Waits until the stream holds exactly `n` messages.
    pub async fn wait_messages(&self, n: u64) {
        eventually(
            Duration::from_secs(10),
            &format!("{n} messages in {STREAM}"),
            || async { (self.messages().await == n).then_some(()) },
        )
        .await;
    }

    /// The info of a consumer.
    pub async fn consumer(&self, name: &str) -> Value {
        let info = js_api(
            self.0,
            &format!("JS.hub.API.CONSUMER.INFO.{STREAM}.{name}"),
            json!({}),
        )
        .await;
        assert!(info.get("error").is_none(), "consumer {name}: {info}");
        info
    }

    /// The consumer counters that a foreign fetch or ack would move: delivered and acknowledged
    /// sequence numbers, pending and ack-pending counts.
    pub async fn consumer_state(&self, name: &str) -> Value {
        let c = self.consumer(name).await;
        json!({"delivered": c["delivered"]["consumer_seq"], "ack_floor": c["ack_floor"]["consumer_seq"],
               "num_pending": c["num_pending"], "num_ack_pending": c["num_ack_pending"],
               "num_waiting": c["num_waiting"], "filter": c["config"]["filter_subject"]})
    }

    /// The names of the stream's consumers, sorted.
    pub async fn consumer_names(&self) -> Vec<String> {
        let names = js_api(
            self.0,
            &format!("JS.hub.API.CONSUMER.NAMES.{STREAM}"),
            json!({}),
        )
        .await;
        let mut names: Vec<String> = names["consumers"]
            .as_array()
            .unwrap_or_else(|| panic!("consumer names: {names}"))
            .iter()
            .map(|n| n.as_str().expect("name").to_owned())
            .collect();
        names.sort();
        names
    }
}

/// The durable consumers the hub creates with the development configuration.
pub fn hub_consumers() -> Vec<String> {
    let mut names: Vec<String> = [
        "aux-audit",
        "aux-invoice",
        "aux-loyalty",
        "gateway",
        "partner-acme-air",
        "partner-globex-hotels",
    ]
    .map(String::from)
    .to_vec();
    names.sort();
    names
}
