//! A hub under test: in-process on SQLite files or a fresh Postgres database, or `orderhub serve`
//! as a child process.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use actors::protocol::COMMIT_LSN_HEADER;
use actors::wal::Lsn;
use async_nats::Client;
use async_nats::jetstream;
use orderhub::{App, Settings};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use super::nats::TestNats;
use super::pg::{PgDb, PgEnv, parse_lsn_header, shared_pg};
use super::{eventually, init_logs};

/// Where a test hub keeps its data.
pub enum Store {
    /// Held for its drop: the SQLite files live as long as the hub.
    Sqlite(#[allow(dead_code)] TempDir),
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
        Self::start_on(TestNats::start().await, tweak).await
    }

    /// A hub on SQLite, on a server of the test's own.
    pub async fn start_on(nats: TestNats, tweak: impl FnOnce(&mut Settings)) -> Self {
        init_logs();
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

/// `orderhub serve` as a child process on this test's server and SQLite files.
pub async fn spawn_hub(nats: &TestNats, dir: &Path) -> Child {
    spawn_hub_with(nats, dir, &[]).await
}

/// Points a child `orderhub` at SQLite files in `dir` (order and auxiliary databases).
pub fn sqlite_in<'a>(command: &'a mut Command, dir: &Path) -> &'a mut Command {
    command
        .env(
            "ORDERHUB__DATABASE__PRIMARY_URL",
            format!("sqlite://{}/orderhub.db?mode=rwc", dir.display()),
        )
        .env(
            "ORDERHUB__DATABASE__AUX_URL",
            format!("sqlite://{}/aux.db?mode=rwc", dir.display()),
        )
}

/// `orderhub serve` with extra command-line arguments (e.g. `--config FILE`).
pub async fn spawn_hub_with(nats: &TestNats, dir: &Path, args: &[&str]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderhub"));
    command
        .args(args)
        .arg("serve")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("ORDERHUB__NATS__URL", nats.url("hub"));
    let child = sqlite_in(&mut command, dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .kill_on_drop(true)
        .spawn()
        .expect("orderhub binary starts");
    let operator = nats.client("operator").await;
    eventually(
        Duration::from_secs(30),
        "hub answers orders.admin.status",
        || async {
            match tokio::time::timeout(
                Duration::from_secs(1),
                operator.request("orders.admin.status", "{}".into()),
            )
            .await
            {
                Ok(Ok(m)) if m.status.is_none() => Some(()),
                _ => None,
            }
        },
    )
    .await;
    child
}
