//! Test harness: a real `nats-server` from `nats.conf` per test (free port, own store directory),
//! a hub started in-process (or as a child process), SQLite files in a temporary directory, and
//! clients that connect as the roles of `nats.conf`.

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::PullConsumer};
use async_nats::{Client, HeaderMap};
use futures::StreamExt;
use orderhub::natsserver::{free_port, NatsServer};
use orderhub::{App, Settings};
use serde_json::{json, Value};
use tempfile::TempDir;

pub const STREAM: &str = "ORDER_EVENTS";

/// Logs when `TEST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        orderhub::telemetry::init("orderhub=debug,actors=debug,warn");
    }
}

/// A nats-server on a free port with its own store directory; killed and removed on drop.
pub struct TestNats {
    pub server: NatsServer,
    _dir: TempDir,
}

impl TestNats {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = NatsServer::start(free_port().expect("free port"), &dir.path().join("js"))
            .await
            .expect("nats-server starts (run scripts/install-nats-server if it is missing)");
        Self { server, _dir: dir }
    }

    pub fn url(&self, user: &str) -> String {
        format!("nats://{user}:{user}-dev@127.0.0.1:{}", self.server.port)
    }

    /// A client connected as `user` with that role's inbox prefix.
    pub async fn client(&self, user: &str) -> Client {
        orderhub::startup::connect_nats(&self.url(user), user).await.expect("connect")
    }
}

/// Where a test hub keeps its data.
pub enum Store {
    Sqlite(TempDir),
}

/// A hub under test, talking to its own nats-server.
pub struct TestHub {
    pub nats: TestNats,
    pub settings: Settings,
    pub app: Option<App>,
    pub store: Store,
}

/// Settings for a test hub: the defaults with this test's server and databases.
pub fn settings_for(nats: &TestNats, dir: &TempDir) -> Settings {
    let mut s = Settings::load(None).expect("config/default.toml loads");
    s.nats.url = nats.url("hub");
    s.nats.spawn_server = false;
    s.database.primary_url = format!("sqlite://{}/orderhub.db?mode=rwc", dir.path().display());
    s.database.replica_url = String::new();
    s.database.aux_url = format!("sqlite://{}/aux.db?mode=rwc", dir.path().display());
    s
}

impl TestHub {
    /// A hub on SQLite with the default configuration.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A hub on SQLite; `tweak` adjusts the settings first.
    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> Self {
        init_logs();
        let nats = TestNats::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = settings_for(&nats, &dir);
        tweak(&mut settings);
        let app = App::start(settings.clone()).await.expect("hub starts");
        Self { nats, settings, app: Some(app), store: Store::Sqlite(dir) }
    }

    pub async fn client(&self, user: &str) -> Client {
        self.nats.client(user).await
    }

    pub async fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            app.stop().await.expect("graceful stop");
        }
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
        self.headers.as_ref()?.get(name).map(|v| v.as_str().to_owned())
    }

    /// Asserts a complete error reply of the contract: code, status header, description header,
    /// non-empty message.
    #[track_caller]
    pub fn assert_error(&self, code: &str, status: u16) {
        assert_eq!(self.error_code(), Some(code), "reply: {:?}", self.body);
        assert_eq!(self.header("Nats-Service-Error-Code").as_deref(), Some(status.to_string().as_str()), "{self:?}");
        let message = self.body["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "error message must say what to do: {self:?}");
        assert_eq!(self.header("Nats-Service-Error").as_deref(), Some(message), "{self:?}");
    }

    #[track_caller]
    pub fn assert_ok(&self) -> &Value {
        assert!(self.body.get("error").is_none(), "unexpected error: {:?}", self.body);
        assert!(self.header("Nats-Service-Error-Code").is_none(), "{self:?}");
        &self.body
    }
}

/// Sends a request with raw bytes and decodes the reply.
pub async fn request_raw(client: &Client, subject: &str, body: Vec<u8>) -> Reply {
    let msg = tokio::time::timeout(Duration::from_secs(15), client.request(subject.to_owned(), body.into()))
        .await
        .expect("reply within 15 s")
        .expect("request answered");
    let body = serde_json::from_slice(&msg.payload).unwrap_or_else(|e| {
        panic!("reply is not JSON ({e}): {:?}", String::from_utf8_lossy(&msg.payload))
    });
    Reply { headers: msg.headers, body }
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
    r.assert_ok()["order_id"].as_str().expect("order_id").to_owned()
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
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
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A durable consumer of `ORDER_EVENTS`, bound without STREAM.INFO (roles may not read it).
pub async fn durable(client: &Client, name: &str) -> PullConsumer {
    jetstream::new(client.clone())
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
