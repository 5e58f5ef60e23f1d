//! NATS for the fault tests: a 3-node JetStream cluster from `scripts/nats-cluster`, or a single
//! server.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_nats::Client;
use tempfile::TempDir;
use tokio::process::Command;

use crate::helpers::*;

fn nats_cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/nats-cluster")
}

/// A 3-node JetStream cluster (`scripts/nats-cluster start DIR`), stopped and removed on drop,
/// and by a watchdog if the test process dies first.
pub struct NatsCluster {
    dir: PathBuf,
    ports: Vec<u16>,
    _tmp: TempDir,
    _watchdog: std::process::ChildStdin,
}

impl NatsCluster {
    pub async fn start() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("orderhub-nats.")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let dir = tmp.path().join("cluster");
        let out = Command::new(nats_cluster_script())
            .arg("start")
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run scripts/nats-cluster");
        assert!(
            out.status.success(),
            "scripts/nats-cluster start failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ports_text = std::fs::read_to_string(dir.join("ports")).expect("DIR/ports");
        let mut ports = Vec::new();
        for n in 1..=3 {
            let key = format!("CLIENT_{n}=");
            let port = ports_text
                .lines()
                .find_map(|l| l.strip_prefix(&key))
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {ports_text}"));
            ports.push(port);
        }
        let watchdog = {
            use std::os::unix::process::CommandExt;
            std::process::Command::new("bash")
                .arg("-c")
                .arg(r#"read -r _ || true; exec "$0" stop "$1""#)
                .arg(nats_cluster_script())
                .arg(&dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("spawn the nats-cluster watchdog")
        }
        .stdin
        .take()
        .expect("watchdog stdin");
        Self {
            dir,
            ports,
            _tmp: tmp,
            _watchdog: watchdog,
        }
    }

    /// Every node, as `user`: what the hubs and clients use to fail over between nodes.
    pub fn url(&self, user: &str) -> String {
        (1..=3)
            .map(|n| self.node_url(n, user))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `n` (1–3) only, as `user`: pins a hub to that node.
    pub fn node_url(&self, n: usize, user: &str) -> String {
        format!("nats://{user}:{user}-dev@127.0.0.1:{}", self.ports[n - 1])
    }

    async fn run(&self, args: &[&str]) {
        let out = tokio::time::timeout(
            Duration::from_secs(90),
            Command::new(nats_cluster_script())
                .args(args)
                .arg(&self.dir)
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("scripts/nats-cluster {args:?} took over 90 s"))
        .expect("run scripts/nats-cluster");
        assert!(
            out.status.success(),
            "scripts/nats-cluster {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub async fn kill_node(&self, n: usize) {
        self.run(&["kill-node", &n.to_string()]).await
    }
    pub async fn stop_node(&self, n: usize) {
        self.run(&["stop-node", &n.to_string()]).await
    }
    pub async fn start_node(&self, n: usize) {
        self.run(&["start-node", &n.to_string()]).await
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(nats_cluster_script())
            .arg("stop")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The NATS the hubs and clients share.
pub enum Bus {
    Single(TestNats),
    Cluster(NatsCluster),
}

impl Bus {
    pub async fn single() -> Self {
        Self::Single(TestNats::start().await)
    }

    pub async fn cluster() -> Self {
        Self::Cluster(NatsCluster::start().await)
    }

    pub fn url(&self, user: &str) -> String {
        match self {
            Self::Single(n) => n.url(user),
            Self::Cluster(c) => c.url(user),
        }
    }

    pub fn nodes(&self) -> &NatsCluster {
        match self {
            Self::Cluster(c) => c,
            Self::Single(_) => panic!("a single server has no nodes"),
        }
    }

    /// A client as `user` (that role's inbox prefix), on every server of the bus.
    pub async fn client(&self, user: &str) -> Client {
        orderhub::startup::connect_nats(&self.url(user), user)
            .await
            .expect("connect")
    }
}
