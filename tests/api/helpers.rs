//! Test harness: a real `nats-server` from `nats.conf` per test (free port, own store directory),
//! a hub started in-process (or as a child process), its databases — SQLite files in a temporary
//! directory, or a fresh database on a Postgres primary + streaming replica from `scripts/pg-pair`
//! — and clients that connect as the roles of `nats.conf`.
//!
//! A toolbox for every test module: not each one uses every helper.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use actors::protocol::COMMIT_LSN_HEADER;
use actors::wal::Lsn;
use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull};
use async_nats::{Client, HeaderMap};
use futures::StreamExt;
use orderhub::natsserver::NatsServer;
pub use orderhub::{App, Settings};
use sea_orm::sqlx::{self, AssertSqlSafe, Connection, PgConnection};
use serde_json::{Value, json};
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
        let server = NatsServer::start(None, &dir.path().join("js"))
            .await
            .expect("nats-server starts (run scripts/install-nats-server if it is missing)");
        Self { server, _dir: dir }
    }

    pub fn url(&self, user: &str) -> String {
        format!("nats://{user}:{user}-dev@127.0.0.1:{}", self.server.port)
    }

    /// A client connected as `user` with that role's inbox prefix.
    pub async fn client(&self, user: &str) -> Client {
        orderhub::startup::connect_nats(&self.url(user), user)
            .await
            .expect("connect")
    }
}

/// Where a test hub keeps its data.
pub enum Store {
    Sqlite(TempDir),
    /// A fresh database (and its aux database) on a pg-pair.
    Postgres(PgDb),
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
        Self {
            nats,
            settings,
            app: Some(app),
            store: Store::Sqlite(dir),
        }
    }

    /// A hub on a fresh database of the Postgres pair the test binary shares (see [`shared_pg`]).
    pub async fn start_postgres() -> Self {
        Self::start_postgres_with(|_| {}).await
    }

    /// A hub on a fresh database of the shared Postgres pair; `tweak` adjusts the settings first.
    pub async fn start_postgres_with(tweak: impl FnOnce(&mut Settings)) -> Self {
        Self::start_postgres_on(shared_pg(), tweak).await
    }

    /// A hub on a fresh database of the pair `pg` (a test's own [`PgPair`] when it stops nodes).
    pub async fn start_postgres_on(pg: &PgEnv, tweak: impl FnOnce(&mut Settings)) -> Self {
        init_logs();
        let nats = TestNats::start().await;
        let db = pg.create_database().await;
        let mut settings = Settings::load(None).expect("config/default.toml loads");
        settings.nats.url = nats.url("hub");
        settings.nats.spawn_server = false;
        settings.database.primary_url = db.primary_url.clone();
        settings.database.replica_url = db.replica_url.clone();
        settings.database.aux_url = db.aux_url.clone();
        tweak(&mut settings);
        let app = App::start(settings.clone())
            .await
            .unwrap_or_else(|e| panic!("hub starts on Postgres database {}: {e:#}", db.name));
        Self {
            nats,
            settings,
            app: Some(app),
            store: Store::Postgres(db),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.store, Store::Postgres(_))
    }

    pub async fn client(&self, user: &str) -> Client {
        self.nats.client(user).await
    }

    /// On Postgres: how far the hub's replica has replayed, asked now.
    pub async fn replay_lsn(&self) -> Option<Lsn> {
        match &self.store {
            Store::Postgres(db) => Some(replay_lsn_at(&db.replica_url).await),
            Store::Sqlite(_) => None,
        }
    }

    /// The header `Orderhub-Commit-Lsn` of an event checked against the backend: none on SQLite;
    /// on Postgres a WAL position the replica has already replayed past. Returns the position.
    #[track_caller]
    pub fn check_commit_lsn(&self, m: &jetstream::Message, replay: Option<Lsn>) -> Option<Lsn> {
        let header = m
            .headers
            .as_ref()
            .and_then(|h| h.get(COMMIT_LSN_HEADER))
            .map(|v| v.as_str().to_owned());
        if !self.is_postgres() {
            assert!(header.is_none(), "no WAL fence on SQLite: {header:?}");
            return None;
        }
        let text = header
            .unwrap_or_else(|| panic!("event {} has no {COMMIT_LSN_HEADER} header", m.subject));
        let lsn = parse_lsn_header(&text);
        if let Some(replay) = replay {
            assert!(
                lsn <= replay,
                "event {} fenced at {lsn} but the replica only replayed {replay}",
                m.subject
            );
        }
        Some(lsn)
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
        self.headers
            .as_ref()?
            .get(name)
            .map(|v| v.as_str().to_owned())
    }

    /// Asserts a complete error reply of the contract: code, status header, description header,
    /// non-empty message.
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

// ---------------------------------------------------------------------------------------------
// Postgres: a primary + streaming replica from `scripts/pg-pair`, and a fresh database per test.

/// How long a pg-pair command or a database may take to be ready.
const PG_READY: Duration = Duration::from_secs(60);

/// A running pg-pair, as `scripts/pg-pair start` exports it.
#[derive(Clone, Debug)]
pub struct PgEnv {
    pub dir: PathBuf,
    /// The primary (database `orderhub`); only its server part is used.
    pub primary_url: String,
    /// The streaming replica (database `orderhub`).
    pub replica_url: String,
}

/// A test's own databases on a pair: the hub's database (on primary and replica) and its aux
/// database (on the primary). Left in place at the end: the pair is thrown away whole.
#[derive(Clone, Debug)]
pub struct PgDb {
    pub name: String,
    pub primary_url: String,
    pub replica_url: String,
    pub aux_url: String,
}

fn pg_pair_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-pair")
}

/// `url` with its database replaced by `db`.
fn with_db(url: &str, db: &str) -> String {
    orderhub::urls::with_database(url, db).expect("a database URL")
}

fn parse_lsn_header(text: &str) -> Lsn {
    let valid = text.split_once('/').is_some_and(|(hi, lo)| {
        [hi, lo].iter().all(|p| {
            !p.is_empty()
                && p.len() <= 8
                && p.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
        })
    });
    assert!(
        valid,
        "{COMMIT_LSN_HEADER} is not a Postgres LSN like 0/16B3F28: {text:?}"
    );
    Lsn::parse(text).unwrap_or_else(|| panic!("bad LSN {text:?}"))
}

/// `pg_last_wal_replay_lsn()` of the replica at `url`, asked now.
pub async fn replay_lsn_at(url: &str) -> Lsn {
    let mut conn = PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to the replica: {e}"));
    let text: String = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn()::text")
        .fetch_one(&mut conn)
        .await
        .expect("pg_last_wal_replay_lsn()");
    let _ = conn.close().await;
    Lsn::parse(&text).unwrap_or_else(|| panic!("bad replay LSN {text:?}"))
}

impl PgEnv {
    /// The pair `scripts/test` (or the caller's `eval "$(scripts/pg-pair start)"`) exported.
    fn from_process_env() -> Option<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Some(Self {
            dir: PathBuf::from(var("ORDERHUB_PG_DIR")?),
            primary_url: var("ORDERHUB_PG_PRIMARY_URL")?,
            replica_url: var("ORDERHUB_PG_REPLICA_URL")?,
        })
    }

    /// Reads the `export K=V` lines `scripts/pg-pair start` prints.
    fn from_exports(text: &str) -> Self {
        let get = |key: &str| {
            text.lines()
                .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_else(|| panic!("scripts/pg-pair start printed no {key}: {text}"))
        };
        Self {
            dir: PathBuf::from(get("ORDERHUB_PG_DIR")),
            primary_url: get("ORDERHUB_PG_PRIMARY_URL"),
            replica_url: get("ORDERHUB_PG_REPLICA_URL"),
        }
    }

    /// Creates `t_<uuid>` and `t_<uuid>_aux` on the primary and waits until the replica serves
    /// the first.
    pub async fn create_database(&self) -> PgDb {
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        let aux = format!("{name}_aux");
        let maintenance = with_db(&self.primary_url, "postgres");
        let mut conn = PgConnection::connect(&maintenance)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "connect to the pg-pair primary ({}): {e}",
                    self.dir.display()
                )
            });
        for db in [&name, &aux] {
            sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {db}")))
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("CREATE DATABASE {db}: {e}"));
        }
        let _ = conn.close().await;
        let replica_url = with_db(&self.replica_url, &name);
        let probe = replica_url.clone();
        eventually(PG_READY, "the replica serves the new database", || {
            let url = probe.clone();
            async move { PgConnection::connect(&url).await.ok()?.close().await.ok() }
        })
        .await;
        PgDb {
            primary_url: with_db(&self.primary_url, &name),
            replica_url,
            aux_url: with_db(&self.primary_url, &aux),
            name,
        }
    }

    /// `pg_last_wal_replay_lsn()` on the replica, asked now.
    pub async fn replay_lsn(&self) -> Lsn {
        replay_lsn_at(&with_db(&self.replica_url, "postgres")).await
    }
}

/// Starts a pair with `scripts/pg-pair start` (blocking) and a watchdog that removes it when
/// this process ends, however it ends: the watchdog waits for EOF on a pipe only this process
/// holds, in its own process group so a terminal's Ctrl-C does not take it down first.
fn start_pair_blocking() -> (PgEnv, std::process::ChildStdin) {
    let script = pg_pair_script();
    let out = std::process::Command::new(&script)
        .arg("start")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "`scripts/pg-pair start` failed ({}); it needs Postgres 15 (apt-get install -y postgresql-15):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let env = PgEnv::from_exports(&String::from_utf8_lossy(&out.stdout));
    let mut watchdog = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("bash")
            .arg("-c")
            .arg(r#"read -r _ || true; exec "$0" clean "$1""#)
            .arg(&script)
            .arg(&env.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn the pg-pair watchdog")
    };
    let pipe = watchdog.stdin.take().expect("watchdog stdin");
    (env, pipe)
}

/// The pair every Postgres test of this binary shares: the one `scripts/test` exported, else one
/// started on first use and removed when the process exits.
pub fn shared_pg() -> &'static PgEnv {
    static SHARED: OnceLock<PgEnv> = OnceLock::new();
    SHARED.get_or_init(|| {
        if let Some(env) = PgEnv::from_process_env() {
            return env;
        }
        let (env, pipe) = start_pair_blocking();
        // Held until the process exits; then the watchdog sees EOF and cleans the pair.
        std::mem::forget(pipe);
        env
    })
}

/// A pair of a test's own, for tests that stop, start or pause nodes; removed on drop.
pub struct PgPair {
    pub env: PgEnv,
    _watchdog: std::process::ChildStdin,
}

impl PgPair {
    pub async fn start() -> Self {
        let (env, pipe) = tokio::task::spawn_blocking(start_pair_blocking)
            .await
            .expect("pg-pair start");
        Self {
            env,
            _watchdog: pipe,
        }
    }

    async fn run(&self, command: &str) {
        let out = tokio::time::timeout(
            PG_READY,
            tokio::process::Command::new(pg_pair_script())
                .arg(command)
                .arg(&self.env.dir)
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("`scripts/pg-pair {command}` took over {PG_READY:?}"))
        .unwrap_or_else(|e| panic!("run scripts/pg-pair {command}: {e}"));
        assert!(
            out.status.success(),
            "`scripts/pg-pair {command}` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub async fn stop_primary(&self) {
        self.run("stop-primary").await
    }
    pub async fn start_primary(&self) {
        self.run("start-primary").await
    }
    pub async fn stop_replica(&self) {
        self.run("stop-replica").await
    }
    pub async fn start_replica(&self) {
        self.run("start-replica").await
    }
    pub async fn pause_replay(&self) {
        self.run("pause-replay").await
    }
    pub async fn resume_replay(&self) {
        self.run("resume-replay").await
    }
}

impl Drop for PgPair {
    fn drop(&mut self) {
        let _ = std::process::Command::new(pg_pair_script())
            .arg("clean")
            .arg(&self.env.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `orders.query` for one order, as `user_id`.
pub async fn query_order(client: &Client, order_id: &str, user_id: impl serde::Serialize) -> Reply {
    request(
        client,
        "orders.query",
        json!({"order_id": order_id, "user_id": user_id}),
    )
    .await
}
