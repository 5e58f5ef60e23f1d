//! Postgres as production runs it: three nodes under Patroni (strict synchronous mode) with etcd
//! and HAProxy, from `scripts/pg-ha`, and its faults.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sea_orm::sqlx::{self, AssertSqlSafe, Connection, PgConnection};

use super::SLOW_POLL;
use crate::helpers::*;

/// How long one `scripts/pg-ha` command may take (each of its waits allows 90 s).
const HA_COMMAND: Duration = Duration::from_secs(240);
/// How long a new database may take to be served by every node.
const HA_READY: Duration = Duration::from_secs(60);

fn pg_ha_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-ha")
}

/// What `scripts/pg-ha start` exported.
#[derive(Clone, Debug)]
pub struct HaEnv {
    pub dir: PathBuf,
    /// HAProxy's primary port (database `orderhub`).
    pub primary_url: String,
    /// HAProxy's replicas port, round-robin over the running standbys (database `orderhub`).
    pub replicas_url: String,
    /// The superuser on HAProxy's primary port (database `postgres`).
    pub admin_url: String,
    /// Each node directly, 1..=3 (database `orderhub`).
    pub node_urls: Vec<String>,
    /// Each node's Patroni REST API, 1..=3.
    #[allow(dead_code)] // for checks on one node's role
    pub patroni_urls: Vec<String>,
}

impl HaEnv {
    fn from_exports(text: &str) -> Self {
        let get = |key: &str| {
            text.lines()
                .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_else(|| panic!("scripts/pg-ha start printed no {key}: {text}"))
        };
        let list = |key: &str| -> Vec<String> { get(key).split(',').map(str::to_owned).collect() };
        Self {
            dir: PathBuf::from(get("ORDERHUB_HA_DIR")),
            primary_url: get("ORDERHUB_HA_PRIMARY_URL"),
            replicas_url: get("ORDERHUB_HA_REPLICAS_URL"),
            admin_url: get("ORDERHUB_HA_ADMIN_URL"),
            node_urls: list("ORDERHUB_HA_NODE_URLS"),
            patroni_urls: list("ORDERHUB_HA_PATRONI_URLS"),
        }
    }
}

/// How the hub reads: what `database.replica_url` gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)] // the tests use one of them
pub enum HaReads {
    /// The three nodes directly, comma-separated: the hub probes each, fences events on every
    /// node of its read set and spreads reads over them.
    Nodes,
    /// HAProxy's replicas port.
    ReplicasPort,
}

/// A node's line of `scripts/pg-ha status`.
#[derive(Clone, Debug)]
pub struct HaNode {
    pub node: usize,
    /// `leader`, `sync_standby`, `replica`, `down`, `unknown`.
    pub role: String,
    /// Patroni's state: `running`, `streaming`, `starting`, …, `-`.
    pub state: String,
    pub patroni_up: bool,
    /// `primary`, `standby`, `up` (not answering) or `down`.
    pub postgres: String,
}

/// A cluster of this test's own: `scripts/pg-ha start` into a fresh /tmp/orderhub-ha.XXXXXX (the
/// script makes it reachable by the non-root user that runs the servers), stopped and removed
/// on drop, and by a watchdog if the test process dies first.
pub struct PgHa {
    pub env: HaEnv,
    _watchdog: std::process::ChildStdin,
}

impl PgHa {
    pub async fn start() -> Self {
        let t = Instant::now();
        let out = tokio::time::timeout(
            HA_COMMAND,
            tokio::process::Command::new(pg_ha_script())
                .arg("start")
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("`scripts/pg-ha start` took over {HA_COMMAND:?}"))
        .expect("run scripts/pg-ha");
        assert!(
            out.status.success(),
            "`scripts/pg-ha start` failed ({}); it needs postgresql-15, patroni, etcd-server and \
             haproxy:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let env = HaEnv::from_exports(&String::from_utf8_lossy(&out.stdout));
        let watchdog = {
            use std::os::unix::process::CommandExt;
            std::process::Command::new("bash")
                .arg("-c")
                .arg(r#"read -r _ || true; exec "$0" clean "$1""#)
                .arg(pg_ha_script())
                .arg(&env.dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("spawn the pg-ha watchdog")
        };
        let pipe = watchdog.stdin.expect("watchdog stdin");
        println!(
            "pg-ha: cluster ready in {:.1} s in {}",
            t.elapsed().as_secs_f64(),
            env.dir.display()
        );
        Self {
            env,
            _watchdog: pipe,
        }
    }

    /// Creates `t_<uuid>` and `t_<uuid>_aux` owned by the `orderhub` login (as the superuser, on
    /// the primary) and waits until every node serves the first. The hub writes through
    /// HAProxy's primary port and reads as `reads` says.
    pub async fn create_database(&self, reads: HaReads) -> PgDb {
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        let aux = format!("{name}_aux");
        let mut conn = PgConnection::connect(&self.env.admin_url)
            .await
            .unwrap_or_else(|e| panic!("connect to the pg-ha primary as the superuser: {e}"));
        for db in [&name, &aux] {
            sqlx::raw_sql(AssertSqlSafe(format!(
                "CREATE DATABASE {db} OWNER orderhub"
            )))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {db}: {e}"));
        }
        let _ = conn.close().await;
        let nodes: Vec<String> = self
            .env
            .node_urls
            .iter()
            .map(|u| database_url(u, &name))
            .collect();
        for url in &nodes {
            let probe = url.clone();
            eventually(HA_READY, &format!("{url} serves the new database"), || {
                let url = probe.clone();
                async move { PgConnection::connect(&url).await.ok()?.close().await.ok() }
            })
            .await;
        }
        PgDb {
            primary_url: database_url(&self.env.primary_url, &name),
            replica_url: match reads {
                HaReads::Nodes => nodes.join(","),
                HaReads::ReplicasPort => database_url(&self.env.replicas_url, &name),
            },
            aux_url: database_url(&self.env.primary_url, &aux),
            name,
        }
    }

    /// Runs `scripts/pg-ha ARGS… DIR`; returns its stdout (trimmed) and exit code.
    async fn run_status(&self, args: &[&str]) -> (String, i32, String) {
        let out = tokio::time::timeout(
            HA_COMMAND,
            tokio::process::Command::new(pg_ha_script())
                .args(args)
                .arg(&self.env.dir)
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "`scripts/pg-ha {}` took over {HA_COMMAND:?}",
                args.join(" ")
            )
        })
        .unwrap_or_else(|e| panic!("run scripts/pg-ha {}: {e}", args.join(" ")));
        (
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `scripts/pg-ha ARGS… DIR`, which must succeed; returns what it printed on stdout.
    pub async fn run(&self, args: &[&str]) -> String {
        let (stdout, code, stderr) = self.run_status(args).await;
        assert!(
            code == 0,
            "`scripts/pg-ha {}` failed ({code}):\n{stderr}{stdout}",
            args.join(" ")
        );
        stdout
    }

    async fn node_of(&self, args: &[&str]) -> usize {
        let out = self.run(args).await;
        out.lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "`scripts/pg-ha {}` printed no node: {out:?}",
                    args.join(" ")
                )
            })
    }

    /// SIGKILL the leader's postmaster; returns the node.
    pub async fn kill_leader(&self) -> usize {
        self.node_of(&["kill-leader"]).await
    }
    /// SIGKILL the leader's Patroni (its postmaster runs on); returns the node.
    pub async fn kill_leader_patroni(&self) -> usize {
        self.node_of(&["kill-leader-patroni"]).await
    }
    /// Planned switchover to the synchronous standby; returns the new leader.
    pub async fn switchover(&self) -> usize {
        self.node_of(&["switchover"]).await
    }
    /// SIGKILL node `n`'s Patroni and Postgres.
    pub async fn kill_node(&self, n: usize) {
        self.node_of(&["kill-node", &n.to_string()]).await;
    }
    /// SIGTERM node `n`'s Patroni (which stops its Postgres) and wait until both are gone.
    #[allow(dead_code)] // every fault command of the script has its method
    pub async fn stop_node(&self, n: usize) {
        self.node_of(&["stop-node", &n.to_string()]).await;
    }
    /// Starts node `n` and waits until it runs (and streams, unless it leads).
    pub async fn start_node(&self, n: usize) {
        self.node_of(&["start-node", &n.to_string()]).await;
    }
    pub async fn stop_etcd(&self) {
        self.run(&["stop-etcd"]).await;
    }
    /// Starts etcd and waits until a leader is elected and routed to.
    pub async fn start_etcd(&self) {
        self.run(&["start-etcd"]).await;
    }
    /// Waits until a leader runs as the primary behind HAProxy's primary port; returns the
    /// seconds the script waited.
    pub async fn wait_primary(&self) -> f64 {
        let out = self.run(&["wait-primary"]).await;
        out.lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("wait-primary printed no seconds: {out:?}"))
    }

    /// `scripts/pg-ha status` (which exits 3 while there is no leader).
    pub async fn status(&self) -> String {
        let (stdout, code, stderr) = self.run_status(&["status"]).await;
        assert!(
            code == 0 || code == 3,
            "`scripts/pg-ha status` failed ({code}):\n{stderr}{stdout}"
        );
        stdout
    }

    /// Each node's role and state, from `status`.
    pub async fn nodes(&self) -> Vec<HaNode> {
        let text = self.status().await;
        text.lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let node = w.first()?.strip_prefix('n')?.parse().ok()?;
                Some(HaNode {
                    node,
                    role: w.get(1)?.to_string(),
                    state: w.get(2)?.to_string(),
                    patroni_up: *w.get(5)? == "up",
                    postgres: w.get(6)?.to_string(),
                })
            })
            .collect()
    }

    /// The first node with `role` now.
    pub async fn node_with_role(&self, role: &str) -> Option<usize> {
        self.nodes()
            .await
            .into_iter()
            .find(|n| n.role == role)
            .map(|n| n.node)
    }

    /// Waits until all three nodes run: one leader as the primary, two standbys running under
    /// their Patroni (a killed leader rejoins by itself once rewound). Returns the status.
    pub async fn wait_all_running(&self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let nodes = self.nodes().await;
            let leaders = nodes
                .iter()
                .filter(|n| n.role == "leader" && n.postgres == "primary")
                .count();
            let standbys = nodes
                .iter()
                .filter(|n| {
                    n.patroni_up
                        && n.postgres == "standby"
                        && (n.role == "sync_standby" || n.role == "replica")
                        && (n.state == "running" || n.state == "streaming")
                })
                .count();
            if nodes.len() == 3 && leaders == 1 && standbys == 2 {
                return self.status().await;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster does not run all three nodes after {within:?}:\n{}",
                self.status().await
            );
            tokio::time::sleep(SLOW_POLL).await;
        }
    }

    /// Copies the cluster's logs out of its directory (removed on drop) into a kept one.
    fn keep_logs(&self) {
        let Ok(kept) = tempfile::Builder::new()
            .prefix("orderhub-ha-logs.")
            .tempdir()
        else {
            return;
        };
        let kept = kept.keep();
        let _ = std::process::Command::new("bash")
            .arg("-c")
            .arg(r#"cd "$0" && find . -name '*.log' -exec cp --parents {} "$1" \;"#)
            .arg(&self.env.dir)
            .arg(&kept)
            .status();
        eprintln!("the cluster's logs are kept in {}", kept.display());
    }
}

impl Drop for PgHa {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.keep_logs();
        }
        let stopped = std::process::Command::new(pg_ha_script())
            .arg("stop")
            .arg(&self.env.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            let _ = std::process::Command::new(pg_ha_script())
                .arg("clean")
                .arg(&self.env.dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
