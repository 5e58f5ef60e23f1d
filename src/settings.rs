//! Configuration: `config/default.toml`, overlaid by `config/$ORDERHUB_ENV.toml`, by the file given
//! with `--config`, and by `ORDERHUB__SECTION__KEY` environment variables. The README's
//! "Configuration" lists every key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::urls::redact;

#[derive(Clone, Debug, Deserialize)]
pub struct Settings {
    pub nats: NatsSettings,
    pub database: DatabaseSettings,
    #[serde(default)]
    pub partners: Vec<PartnerSettings>,
    #[serde(default)]
    pub aux: Vec<AuxSettings>,
    pub limits: LimitSettings,
    #[serde(default)]
    pub metrics: MetricsSettings,
    #[serde(default)]
    pub runtime: RuntimeSettings,
}

/// The async runtime the process runs on.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RuntimeSettings {
    /// Threads running the hub's tasks; 0: half the machine's cores, at least one. With one, the
    /// runtime is single-threaded: no task moves between threads, no thread wakes another.
    #[serde(default)]
    pub workers: usize,
}

impl RuntimeSettings {
    /// The worker threads on a machine of `cores` cores: as configured, else half the cores (at
    /// least one). The other half is left to what shares the machine with the hub's tasks: its
    /// SQLite threads, the database server, `nats-server`. On two cores shared that way, one
    /// thread did a story's work in a fifth less CPU time than two, and the rate did not drop.
    pub fn workers(&self, cores: usize) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            (cores / 2).max(1)
        }
    }

    /// A runtime with [`RuntimeSettings::workers`] threads for this machine: a single-threaded
    /// one for one, a multi-threaded one otherwise.
    pub fn build(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        match self.workers(cores) {
            1 => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            n => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(n)
                .enable_all()
                .build(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct MetricsSettings {
    /// `host:port` to serve Prometheus text at `/metrics`; empty: off.
    #[serde(default)]
    pub listen: String,
}

#[derive(Clone, Deserialize)]
pub struct NatsSettings {
    pub url: String,
    pub subject_prefix: String,
    pub stream: String,
    /// Read by `orderhub demo` and the in-process `orderhub bench` only: unset or `true`, they
    /// start `nats-server` from `nats.conf` when nothing answers at `url`; `false`, never. The hub
    /// itself (`orderhub serve`) never starts one, and warns at start-up when it is `true`.
    #[serde(default)]
    pub spawn_server: Option<bool>,
    #[serde(default = "week", with = "humantime_serde")]
    pub max_age: Duration,
    #[serde(default = "one")]
    pub replicas: usize,
    #[serde(default = "two_minutes", with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// A `.creds` file (JWT + nkey seed) to log in with instead of the URL's password.
    #[serde(default)]
    pub credentials_file: String,
    /// A file holding an nkey seed (`SU…`) to log in with instead of the URL's password.
    #[serde(default)]
    pub nkey_seed_file: String,
    /// The hub's inbox prefix; empty: `_INBOX_<user of the URL>`, or `_INBOX_hub`.
    #[serde(default)]
    pub inbox_prefix: String,
}

/// Never prints the password that may ride in the URL.
impl std::fmt::Debug for NatsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSettings")
            .field("url", &redact(&self.url))
            .field("subject_prefix", &self.subject_prefix)
            .field("stream", &self.stream)
            .field("spawn_server", &self.spawn_server)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Deserialize)]
pub struct DatabaseSettings {
    pub primary_url: String,
    #[serde(default)]
    pub replica_url: String,
    pub aux_url: String,
    /// Group-commit writers; 0 picks 1.
    #[serde(default)]
    pub writers: usize,
    /// `replica`: a write is acknowledged once the replica has replayed it (only with a
    /// `replica_url`); `primary`: once the primary committed it.
    #[serde(default = "ack_after")]
    pub ack_after: AckAfter,
    /// A read node lagging the primary by more than this many bytes of WAL leaves the read set
    /// (until it has caught up), so events keep flowing without it.
    #[serde(default = "read_lag")]
    pub max_read_lag_bytes: u64,
}

/// When a write is acknowledged.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AckAfter {
    #[default]
    Replica,
    Primary,
}

impl DatabaseSettings {
    /// The hub's databases. When the auxiliary database lives on the primary's server and a
    /// streaming replica is configured, the replica serves a copy of it too (physical replication
    /// carries every database of a server): queries read auxiliary records there while the
    /// auxiliary database does not answer.
    pub fn urls(&self) -> actors::store::DbUrls {
        use crate::urls::{on_server_of, server_of};
        let same_server = server_of(&self.primary_url).is_some()
            && server_of(&self.primary_url) == server_of(&self.aux_url);
        // The first read node serves the auxiliary database's copy.
        let first_replica = self
            .replica_url
            .split(',')
            .next()
            .unwrap_or_default()
            .trim();
        let aux_standby = (same_server && server_of(first_replica).is_some())
            .then(|| on_server_of(&self.aux_url, first_replica))
            .flatten();
        actors::store::DbUrls {
            primary: self.primary_url.clone(),
            replica: self.replica_url.clone(),
            max_read_lag_bytes: self.max_read_lag_bytes,
            aux: self.aux_url.clone(),
            aux_standby,
        }
    }

    /// Acknowledged writes wait for the replica: `ack_after = "replica"` with a replica configured.
    pub fn ack_after_replica(&self) -> bool {
        self.ack_after == AckAfter::Replica && !self.replica_url.is_empty()
    }
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("primary_url", &redact(&self.primary_url))
            .field("replica_url", &redact(&self.replica_url))
            .field("aux_url", &redact(&self.aux_url))
            .field("writers", &self.writers)
            .field("ack_after", &self.ack_after)
            .finish()
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct PartnerSettings {
    pub id: String,
    #[serde(with = "humantime_serde")]
    pub result_timeout: Duration,
    /// Accepted orders still waiting for this partner's result; beyond it new orders get
    /// `unavailable`.
    #[serde(default = "max_pending")]
    pub max_pending: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AuxSettings {
    pub system: String,
    /// An outside system consumes `aux-<system>`; the hub only creates the consumer.
    #[serde(default)]
    pub external: bool,
    /// The NATS user of an external system (its account's one user); empty: `aux-<system>`.
    #[serde(default)]
    pub user: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct LimitSettings {
    pub max_in_flight: usize,
    #[serde(default = "body_limit")]
    pub max_body_bytes: usize,
    /// Results the built-in auxiliary systems and the settler have not handled yet, beyond which
    /// new orders are answered `unavailable` (0: no bound).
    #[serde(default = "story_backlog")]
    pub max_story_backlog: u64,
}

fn story_backlog() -> u64 {
    1_000
}

fn read_lag() -> u64 {
    16 * 1024 * 1024
}
fn ack_after() -> AckAfter {
    AckAfter::Replica
}
fn max_pending() -> u64 {
    actors::partners::DEFAULT_MAX_PENDING
}
fn one() -> usize {
    1
}
fn week() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn two_minutes() -> Duration {
    Duration::from_secs(120)
}
fn body_limit() -> usize {
    256 * 1024
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: {0}")]
    Invalid(String),
    #[error(
        "configuration: {0} not found (working directory {1}); run from the project directory, \
         or set ORDERHUB_CONFIG_DIR to the folder holding default.toml"
    )]
    Missing(String, String),
}

/// The folder holding `default.toml`: `$ORDERHUB_CONFIG_DIR`, else `config` in the working
/// directory. The binary never looks in the tree it was built from.
pub fn config_dir() -> Result<PathBuf, SettingsError> {
    let dir = std::env::var_os("ORDERHUB_CONFIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("config"));
    if dir.join("default.toml").is_file() {
        return Ok(dir);
    }
    Err(SettingsError::Missing(
        dir.join("default.toml").display().to_string(),
        std::env::current_dir()
            .unwrap_or_default()
            .display()
            .to_string(),
    ))
}

impl Settings {
    /// Loads the layers; `file` is `--config FILE`.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        let dir = config_dir()?;
        let env = std::env::var("ORDERHUB_ENV").unwrap_or_else(|_| "local".into());
        let mut builder = config::Config::builder()
            .add_source(config::File::from(dir.join("default.toml")).required(true))
            .add_source(config::File::from(dir.join(format!("{env}.toml"))).required(false));
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("ORDERHUB")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let prefix_ok = self.nats.subject_prefix.split('.').all(|t| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        }) && !self.nats.subject_prefix.starts_with('_');
        if !prefix_ok {
            return Err(SettingsError::Invalid(format!(
                "nats.subject_prefix `{}` must be dot-separated tokens of A-Z a-z 0-9 - _, not \
                 starting with `_` (inboxes and cross-account replies live there)",
                self.nats.subject_prefix
            )));
        }
        for p in &self.partners {
            actors::protocol::validate_token("partners.id", &p.id)
                .map_err(|e| SettingsError::Invalid(e.message))?;
        }
        for a in &self.aux {
            actors::protocol::validate_token("aux.system", &a.system)
                .map_err(|e| SettingsError::Invalid(e.message))?;
        }
        if let Some(p) = self.partners.iter().find(|p| p.max_pending == 0) {
            return Err(SettingsError::Invalid(format!(
                "partners.max_pending of `{}` must be at least 1",
                p.id
            )));
        }
        if self.limits.max_in_flight == 0 {
            return Err(SettingsError::Invalid(
                "limits.max_in_flight must be at least 1".into(),
            ));
        }
        if self.nats.duplicate_window < Duration::from_secs(120) {
            return Err(SettingsError::Invalid(
                "nats.duplicate_window must be at least 2m".into(),
            ));
        }
        Ok(())
    }

    /// The configured partners as the hub's actors take them.
    pub fn partners(&self) -> actors::Partners {
        actors::Partners::new(
            self.partners
                .iter()
                .map(|p| {
                    let partner = actors::partners::Partner {
                        result_timeout: p.result_timeout,
                        max_pending: p.max_pending,
                    };
                    (p.id.clone(), partner)
                })
                .collect::<HashMap<_, _>>(),
        )
    }

    /// Writers for the group commit: one unless configured. SQLite has one writer at a time; on
    /// Postgres one writer makes the largest batches, so the fewest statements and commits per
    /// order (on two cores shared with the database it sustained a fifth more orders than four
    /// writers, and halved the open loop's p99). More writers overlap their round trips, which
    /// pays where the database has cores to spare and is far away.
    pub fn writers(&self) -> usize {
        self.database.writers.max(1)
    }
}

/// Serde glue for "30s"-style durations.
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_overlays_replace_lists() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("o.toml");
        std::fs::write(
            &file,
            "[[partners]]\nid = \"only-one\"\nresult_timeout = \"5s\"\n",
        )
        .unwrap();
        let s = Settings::load(Some(&file)).unwrap();
        assert_eq!(s.partners.len(), 1);
        assert_eq!(s.partners[0].result_timeout, Duration::from_secs(5));
        assert_eq!(s.aux.len(), 3);
        assert!(s.aux.iter().any(|a| a.system == "audit" && a.external));
    }

    #[test]
    fn the_runtime_takes_half_the_cores_unless_told() {
        let auto = RuntimeSettings::default();
        assert_eq!(auto.workers(1), 1);
        assert_eq!(auto.workers(2), 1);
        assert_eq!(auto.workers(3), 1);
        assert_eq!(auto.workers(8), 4);
        let told = RuntimeSettings { workers: 3 };
        assert_eq!(told.workers(2), 3);
        assert_eq!(told.workers(64), 3);
    }

    #[test]
    fn one_worker_is_the_single_threaded_runtime() {
        use tokio::runtime::RuntimeFlavor;
        let one = RuntimeSettings { workers: 1 }.build().unwrap();
        assert_eq!(one.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        assert_eq!(one.block_on(async { 6 * 7 }), 42);
        let two = RuntimeSettings { workers: 2 }.build().unwrap();
        assert_eq!(two.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(two.metrics().num_workers(), 2);
    }
}
