//! Hubs: `orderhub serve` child processes, each configured by its own file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::*;
use crate::helpers::*;

/// What a hub process is configured with (written as its `--config` file).
#[derive(Clone, Debug)]
pub struct HubSetup {
    pub nats_url: String,
    pub replicas: usize,
    pub primary_url: String,
    /// Empty: reads go to the primary.
    pub replica_url: String,
    pub aux_url: String,
    pub ack_after: &'static str,
    /// `result_timeout` of `acme-air` and `globex-hotels`.
    pub timeouts: [Duration; 2],
}

impl HubSetup {
    /// The hub's configuration on a test database of a Postgres pair.
    pub fn on(db: &PgDb, nats_url: String, replicas: usize) -> Self {
        Self {
            nats_url,
            replicas,
            primary_url: db.primary_url.clone(),
            replica_url: db.replica_url.clone(),
            aux_url: db.aux_url.clone(),
            ack_after: "replica",
            timeouts: [Duration::from_secs(30), Duration::from_secs(30)],
        }
    }

    fn toml(&self) -> String {
        let partners: String = PARTNERS
            .iter()
            .zip(self.timeouts)
            .map(|(id, t)| {
                format!(
                    "[[partners]]\nid = \"{id}\"\nresult_timeout = \"{}ms\"\n\n",
                    t.as_millis()
                )
            })
            .collect();
        format!(
            "[nats]\nurl = \"{}\"\nspawn_server = false\nreplicas = {}\n\n\
             [database]\nprimary_url = \"{}\"\nreplica_url = \"{}\"\naux_url = \"{}\"\n\
             ack_after = \"{}\"\n\n{partners}",
            self.nats_url,
            self.replicas,
            self.primary_url,
            self.replica_url,
            self.aux_url,
            self.ack_after
        )
    }
}

/// An `orderhub serve` child process; its log (every incarnation) is kept in a file.
pub struct HubProc {
    pub name: String,
    pub setup: HubSetup,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    serving: Arc<AtomicBool>,
}

impl HubProc {
    /// Starts a hub and waits until it serves.
    pub async fn start(name: &str, dir: &Path, setup: HubSetup) -> Self {
        let mut hub = Self {
            name: name.to_owned(),
            setup,
            config: dir.join(format!("{name}.toml")),
            log: dir.join(format!("{name}.log")),
            child: None,
            serving: Arc::default(),
        };
        hub.spawn().await;
        hub
    }

    /// Starts this hub again (after a kill or a stop), with its current `setup`.
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.name);
        std::fs::write(&self.config, self.setup.toml()).expect("write the hub's config");
        let mut command = Command::new(env!("CARGO_BIN_EXE_orderhub"));
        command
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        // Only this hub's file configures it: nothing from the caller's environment.
        for (key, _) in std::env::vars() {
            if key.starts_with("ORDERHUB__") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .env_remove("ORDERHUB_ENV")
            .env_remove("ORDERHUB_CONFIG_DIR")
            .env("RUST_LOG", "orderhub=info,actors=warn,warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("orderhub binary starts");
        self.serving.store(false, Ordering::SeqCst);
        let stderr = child.stderr.take().expect("stderr");
        let (serving, log, name) = (self.serving.clone(), self.log.clone(), self.name.clone());
        let echo = std::env::var_os("TEST_LOG").is_some();
        let mut logged = tokio::spawn(async move {
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .await
                .ok();
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("orderhub is serving") {
                    serving.store(true, Ordering::SeqCst);
                }
                if echo {
                    eprintln!("[{name}] {line}");
                }
                if let Some(f) = file.as_mut() {
                    let _ = f.write_all(format!("{line}\n").as_bytes()).await;
                }
            }
        });
        let started = Instant::now();
        loop {
            if self.serving.load(Ordering::SeqCst) {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                // Its last lines: the log ends when the pipe does.
                let _ = tokio::time::timeout(Duration::from_secs(5), &mut logged).await;
                panic!(
                    "hub {} exited ({status}) before serving:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "hub {} does not serve after 120 s:\n{}",
                self.name,
                self.log_tail(40)
            );
            tokio::time::sleep(POLL).await;
        }
        println!(
            "{}: serving {:.1} s after it was started",
            self.name,
            started.elapsed().as_secs_f64()
        );
        self.child = Some(child);
    }

    /// SIGKILL, and reap.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.start_kill().expect("SIGKILL");
        child.wait().await.expect("reaped");
        println!("{}: killed (SIGKILL)", self.name);
    }

    /// SIGTERM, and wait for the drain; returns how long it took. Panics unless it exits 0.
    pub async fn terminate(&mut self) -> Duration {
        let mut child = self.child.take().expect("running");
        let pid = child.id().expect("pid").to_string();
        let t = Instant::now();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(sent.success());
        let exit = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within 60 s of SIGTERM", self.name))
            .expect("exit status");
        assert!(
            exit.success(),
            "{} exits 0 on SIGTERM: {exit:?}\n{}",
            self.name,
            self.log_tail(20)
        );
        println!(
            "{}: stopped by SIGTERM in {:.2} s (drained, exit 0)",
            self.name,
            t.elapsed().as_secs_f64()
        );
        t.elapsed()
    }

    /// The process id while this incarnation runs (`None` once it exited or was stopped).
    pub fn running_pid(&mut self) -> Option<u32> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(None) => child.id(),
            _ => None,
        }
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Checks the log holds no panic; returns its warnings and errors, counted by message.
    pub fn check_log(&self) -> BTreeMap<String, usize> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let panics: Vec<&str> = text.lines().filter(|l| l.contains("panicked at")).collect();
        assert!(
            panics.is_empty(),
            "{} panicked:\n{}",
            self.name,
            panics.join("\n")
        );
        let mut warnings = BTreeMap::new();
        for line in text.lines() {
            let Some(at) = line.find(" WARN ").or_else(|| line.find(" ERROR ")) else {
                continue;
            };
            // The level, the target and the message, without the fields.
            let message = line[at + 1..].split(" error=").next().unwrap_or_default();
            let message: String = message
                .split_whitespace()
                .filter(|w| !w.contains('='))
                .collect::<Vec<_>>()
                .join(" ");
            *warnings.entry(message).or_default() += 1;
        }
        warnings
    }
}
