//! The command line: `serve`, `migrate`, `status`, `trace`, `demo`, `bench`, `nats-conf`;
//! `--config FILE` on each.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::settings::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "orderhub",
    version,
    about = "A distributed order hub over NATS and Postgres/SQLite"
)]
pub struct Cli {
    /// A configuration file overlaid on config/default.toml and config/$ORDERHUB_ENV.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a hub until SIGINT/SIGTERM (graceful: drains in-flight work, exits 0).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Print `orders.admin.status` of a running hub.
    Status,
    /// Print an order's whole story (`orders.admin.trace`) as a timeline.
    Trace {
        /// The order's id (a UUIDv7).
        order_id: String,
    },
    /// Run the embedded flow end to end with simulated partners, gateway and aux systems
    /// (starting nats-server from nats.conf when none answers).
    Demo(crate::sim::DemoArgs),
    /// Load generator: throughput and latency percentiles of full order lifecycles.
    Bench(crate::sim::BenchArgs),
    /// Print the development `nats.conf` for the configured partners and auxiliary systems:
    /// one NATS account per role (`orderhub nats-conf > nats.conf`).
    NatsConf,
}

impl Cli {
    /// The configuration, with `--config FILE` overlaid.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        Ok(Settings::load(self.config.as_deref())?)
    }

    /// Runs the subcommand with `settings` (see [`Cli::settings`]).
    pub async fn run(self, settings: Settings) -> anyhow::Result<()> {
        match self.command {
            Command::Serve => {
                if let Some(warning) = serve_warning(&settings) {
                    tracing::warn!("{warning}");
                }
                crate::run(settings, crate::startup::shutdown_signal()).await
            }
            Command::Migrate => migrate(&settings).await,
            Command::Status => status(&settings).await,
            Command::Trace { order_id } => crate::trace::run(&settings, &order_id).await,
            Command::Demo(args) => crate::sim::demo(settings, args).await,
            Command::Bench(args) => crate::sim::bench(settings, args).await,
            Command::NatsConf => {
                print!("{}", crate::natsconf::render(&settings)?);
                Ok(())
            }
        }
    }
}

/// What `serve` warns about at start-up: a setting it does not read, set as if it did.
fn serve_warning(settings: &Settings) -> Option<&'static str> {
    (settings.nats.spawn_server == Some(true)).then_some(
        "nats.spawn_server = true is only read by `orderhub demo` and the in-process `orderhub \
         bench`; `orderhub serve` never starts nats-server: it connects to nats.url",
    )
}

async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let db = actors::store::Db::connect(&actors::store::DbUrls {
        primary: settings.database.primary_url.clone(),
        replica: String::new(),
        max_read_lag_bytes: settings.database.max_read_lag_bytes,
        aux: settings.database.aux_url.clone(),
        aux_standby: None,
    })
    .await
    .context("connecting to the databases")?;
    let applied = db.migrate().await?;
    if applied.is_empty() {
        println!("the databases are up to date");
    } else {
        println!("applied: {}", applied.join(", "));
    }
    Ok(())
}

async fn status(settings: &Settings) -> anyhow::Result<()> {
    let client = crate::startup::connect_hub(&settings.nats, "orderhub-status").await?;
    let subjects = actors::protocol::Subjects::new(settings.nats.subject_prefix.clone());
    let reply = client
        .request(subjects.status(), "{}".into())
        .await
        .context("no hub answered orders.admin.status (is `orderhub serve` running?)")?;
    let status: actors::protocol::StatusReply =
        serde_json::from_slice(&reply.payload).context("decoding the status reply")?;
    let r = &status.replica;
    let opt = |v: Option<u64>| v.map_or("unknown".to_owned(), |v| v.to_string());
    println!(
        "instance      {} (version {}, up {}s)",
        status.instance_id, status.version, status.uptime_s
    );
    println!("actors live   {}", status.actors_live);
    println!("in flight     {}", status.in_flight);
    println!(
        "cpu           {}",
        status.process.cpu_ms.map_or("unknown".into(), |ms| format!(
            "{:.1} s",
            ms as f64 / 1000.0
        ))
    );
    println!(
        "outbox        {} pending, oldest {} ms",
        opt(status.outbox_pending),
        opt(status.outbox_oldest_ms)
    );
    println!(
        "replica       {} — available: {}, lag {} bytes / {} ms, confirmed {}, {} events waiting{}",
        r.mode,
        r.available.map_or("unknown".into(), |a| a.to_string()),
        opt(r.lag_bytes),
        opt(r.lag_ms),
        r.confirmed_lsn.as_deref().unwrap_or("-"),
        r.events_waiting,
        r.reason
            .as_deref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default()
    );
    for n in &r.nodes {
        println!(
            "read node     {} — {}, lag {} bytes, replayed {}{}",
            n.node,
            if n.in_read_set {
                "in the read set"
            } else {
                "out of the read set"
            },
            opt(n.lag_bytes),
            n.replay_lsn.as_deref().unwrap_or("-"),
            n.reason
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        );
    }
    println!("nats          connected: {}", status.nats.connected);
    let pending: Vec<String> = status
        .partners_pending
        .iter()
        .map(|(p, n)| format!("{p} {n}"))
        .collect();
    println!("pending       {}", pending.join(", "));
    let restarts: Vec<String> = status
        .restarts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(a, n)| format!("{a} {n}"))
        .collect();
    println!(
        "restarts      {}",
        if restarts.is_empty() {
            "none".to_owned()
        } else {
            restarts.join(", ")
        }
    );
    println!(
        "primary       {} — synchronous standby: {}, failovers seen: {}",
        status.database.primary.as_deref().unwrap_or("unknown"),
        status
            .database
            .sync_standby
            .map_or("unknown".into(), |v| v.to_string()),
        status.database.failovers
    );
    println!(
        "databases     primary ok: {}, aux ok: {}",
        status
            .database
            .primary_ok
            .map_or("unknown".into(), |v| v.to_string()),
        status
            .database
            .aux_ok
            .map_or("unknown".into(), |v| v.to_string())
    );
    Ok(())
}
