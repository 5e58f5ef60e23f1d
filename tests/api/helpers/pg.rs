//! Postgres: a primary + streaming replica from `scripts/pg-pair`, a fresh database per test,
//! and the WAL positions (LSNs) the tests compare events against.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use actors::protocol::COMMIT_LSN_HEADER;
use actors::wal::Lsn;
use sea_orm::sqlx::{self, AssertSqlSafe, Connection, PgConnection};

use super::eventually;

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
#[allow(dead_code)] // tests/faults
fn with_db(url: &str, db: &str) -> String {
    orderhub::urls::with_database(url, db).expect("a database URL")
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

    /// Runs `scripts/pg-pair COMMAND DIR` and returns what it printed on stdout.
    async fn run(&self, command: &str) -> String {
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
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub async fn stop_primary(&self) {
        self.run("stop-primary").await;
    }
    pub async fn start_primary(&self) {
        self.run("start-primary").await;
    }
    pub async fn stop_replica(&self) {
        self.run("stop-replica").await;
    }
    pub async fn start_replica(&self) {
        self.run("start-replica").await;
    }
    pub async fn pause_replay(&self) {
        self.run("pause-replay").await;
    }
    pub async fn resume_replay(&self) {
        self.run("resume-replay").await;
    }
    /// `pg_ctl stop -m immediate` on the primary.
    #[allow(dead_code)] // The failover drill of tests/faults uses this and the next three.
    pub async fn crash_primary(&self) {
        self.run("crash-primary").await;
    }
    /// SIGSTOP the replica's WAL receiver.
    #[allow(dead_code)]
    pub async fn stall_receiver(&self) {
        self.run("stall-receiver").await;
    }
    /// SIGKILL the replica's WAL receiver and wait until the replica answers again.
    #[allow(dead_code)]
    pub async fn kill_receiver(&self) {
        self.run("kill-receiver").await;
    }
    /// Promotes the replica (crashing the primary if it still runs) and returns its URL
    /// (database `orderhub`).
    #[allow(dead_code)]
    pub async fn promote(&self) -> String {
        let url = self.run("promote").await.trim().to_owned();
        assert!(
            url.starts_with("postgres://"),
            "promote printed no URL: {url:?}"
        );
        url
    }
}

/// `url` with its database replaced by `db`.
#[allow(dead_code)] // tests/faults
pub fn database_url(url: &str, db: &str) -> String {
    with_db(url, db)
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

/// An `Orderhub-Commit-Lsn` header value, checked to be written as Postgres writes an LSN.
pub(super) fn parse_lsn_header(text: &str) -> Lsn {
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
