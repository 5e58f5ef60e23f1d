//! `orderhub demo` and `orderhub bench`: the whole flow of `docs/protocol.md` end to end, driven from
//! outside the hub the way real participants drive it — each simulated participant is its own
//! NATS connection as its own `nats.conf` role and talks to the hub only through subjects.
//!
//! One engine serves both commands: optionally start a hub in-process ([`crate::App`], which
//! spawns `nats-server` when none answers), start the simulators, submit the orders, wait until
//! every order's result event has reached the gateway, check the auxiliary records, count the
//! stream, stop everything, and print a [`summary::Report`]. `demo` shows a progress bar and
//! checks every order's auxiliary records; `bench` is quieter, bigger, and can drive an external
//! hub (`--external`).
//!
//! # Layout
//!
//! - `client` — role connections (`<user>:<user>-dev`), request/reply with the hub's error
//!   replies decoded, pulling a durable consumer concurrently until stopped.
//! - `partner` — simulated partners: `acme-air` confirms everything, `globex-hotels` rejects
//!   about one order in five (by a hash of the order id).
//! - `audit` — the external auxiliary system `audit` (user `aux`).
//! - `gateway` — the user gateway: submits, follows result events, queries orders.
//! - `ledger` — which orders this run placed and when each settled; latency histograms.
//! - `summary` — the report and its table.

mod audit;
mod client;
mod gateway;
mod ledger;
mod partner;
mod summary;

use std::sync::Arc;
use std::time::Duration;

use actors::protocol::Subjects;
use anyhow::Context as _;
use async_nats::jetstream;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::settings::Settings;
use audit::{AuditStats, Auditor};
use client::{Stop, StopSwitch};
use gateway::Gateway;
use ledger::Ledger;
use partner::{Partner, PartnerStats};
use summary::{Report, StreamTally};

/// At least this long is given to the auxiliary records to appear once orders have settled.
const AUX_GRACE: Duration = Duration::from_secs(15);
/// Orders described in the error when they do not settle.
const UNSETTLED_SAMPLE: usize = 5;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Orders to place.
    #[arg(long, default_value_t = 1000)]
    pub orders: usize,
    /// Submit requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Fail (non-zero exit) when the orders have not all settled by then.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Orders to place.
    #[arg(long, default_value_t = 20_000)]
    pub orders: usize,
    /// Submit requests in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Fail (non-zero exit) when the orders have not all settled by then.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Drive the hub already running at nats.url (e.g. `orderhub serve` on Postgres) instead of
    /// starting one in-process.
    #[arg(long)]
    pub external: bool,
    /// Show a progress bar of settled orders.
    #[arg(long)]
    pub progress: bool,
    /// After settling, check through `orders.query` that every order shows all its auxiliary
    /// records.
    #[arg(long)]
    pub verify_aux: bool,
}

/// What a run does, from either command's arguments.
#[derive(Debug)]
struct Options {
    title: &'static str,
    orders: usize,
    concurrency: usize,
    timeout: Duration,
    start_hub: bool,
    progress: bool,
    verify_aux: bool,
}

/// `orderhub demo`: exits 0 once every order is settled and shows all its auxiliary records.
pub async fn demo(settings: Settings, args: DemoArgs) -> anyhow::Result<()> {
    let options = Options {
        title: "orderhub demo",
        orders: args.orders,
        concurrency: args.concurrency,
        timeout: args.timeout,
        start_hub: true,
        progress: true,
        verify_aux: true,
    };
    conclude(run(settings, options).await?)
}

/// `orderhub bench`: throughput and latency percentiles of full order lifecycles.
pub async fn bench(settings: Settings, args: BenchArgs) -> anyhow::Result<()> {
    let options = Options {
        title: "orderhub bench",
        orders: args.orders,
        concurrency: args.concurrency,
        timeout: args.timeout,
        start_hub: !args.external,
        progress: args.progress,
        verify_aux: args.verify_aux,
    };
    conclude(run(settings, options).await?)
}

/// Prints the report; a run with problems is an error.
fn conclude(report: Report) -> anyhow::Result<()> {
    print!("{}", report.render());
    match report.problems.as_slice() {
        [] => Ok(()),
        problems => anyhow::bail!("{}", problems.join("; ")),
    }
}

/// Starts the hub when asked, runs the flow, stops the hub.
async fn run(settings: Settings, options: Options) -> anyhow::Result<Report> {
    anyhow::ensure!(options.orders > 0, "--orders must be at least 1");
    anyhow::ensure!(options.concurrency > 0, "--concurrency must be at least 1");
    let app = if options.start_hub {
        Some(
            crate::App::start(settings.clone())
                .await
                .context("starting the hub in-process")?,
        )
    } else {
        None
    };
    let report = drive(&settings, &options).await;
    if let Some(app) = app {
        let stopped = app.stop().await.context("stopping the hub");
        if report.is_ok() {
            stopped?;
        }
    }
    report
}

/// The simulated participants' tasks and what they counted.
struct Simulators {
    switch: StopSwitch,
    stop: Stop,
    tasks: Vec<JoinHandle<()>>,
    partners: Vec<(String, Arc<PartnerStats>)>,
    audits: Vec<(String, Arc<AuditStats>)>,
}

impl Simulators {
    fn new() -> Self {
        let (switch, stop) = client::stop_switch();
        Self {
            switch,
            stop,
            tasks: Vec::new(),
            partners: Vec::new(),
            audits: Vec::new(),
        }
    }

    /// A partner per configured partner and an auditor per external auxiliary system.
    async fn start(&mut self, settings: &Settings, subjects: &Subjects) -> anyhow::Result<()> {
        let (url, stream) = (&settings.nats.url, &settings.nats.stream);
        for p in &settings.partners {
            let (stats, task) =
                Partner::start(url, stream, subjects.clone(), &p.id, self.stop.clone())
                    .await
                    .with_context(|| format!("starting simulated partner {}", p.id))?;
            self.tasks.push(task);
            self.partners.push((p.id.clone(), stats));
        }
        for a in settings.aux.iter().filter(|a| a.external) {
            let (stats, task) =
                Auditor::start(url, stream, subjects.clone(), &a.system, self.stop.clone())
                    .await
                    .with_context(|| {
                        format!("starting the external auxiliary system {}", a.system)
                    })?;
            self.tasks.push(task);
            self.audits.push((a.system.clone(), stats));
        }
        Ok(())
    }

    /// Stops pulling, lets the messages being handled finish, and waits for every task.
    async fn shutdown(&mut self) {
        self.switch.stop();
        for mut task in self.tasks.drain(..) {
            if tokio::time::timeout(Duration::from_secs(10), &mut task)
                .await
                .is_err()
            {
                tracing::warn!("a simulator did not stop within 10 s; aborting it");
                task.abort();
            }
        }
    }
}

/// Runs the simulators around [`exercise`] and always stops them.
async fn drive(settings: &Settings, options: &Options) -> anyhow::Result<Report> {
    let progress = if options.progress {
        progress_bar(options.orders)
    } else {
        ProgressBar::hidden()
    };
    let ledger = Arc::new(Ledger::new(progress)?);
    let mut sims = Simulators::new();
    let report = exercise(settings, options, &ledger, &mut sims).await;
    sims.shutdown().await;
    finish_bar(ledger.progress(), false);
    report
}

/// Starts the participants, places the orders, waits for them to settle, checks the auxiliary
/// records and the stream, and reports. Orders that do not settle are problems of the report.
async fn exercise(
    settings: &Settings,
    options: &Options,
    ledger: &Arc<Ledger>,
    sims: &mut Simulators,
) -> anyhow::Result<Report> {
    let subjects = Subjects::new(settings.nats.subject_prefix.clone());
    let (url, stream) = (settings.nats.url.as_str(), settings.nats.stream.as_str());
    let run_id = run_id();
    let observer = crate::startup::connect_nats(url, "orderhub-demo-observer").await?;
    let before = stream_messages(&observer, stream).await;

    sims.start(settings, &subjects).await?;
    let partner_ids = settings.partners.iter().map(|p| p.id.clone()).collect();
    let gateway = Gateway::connect(url, subjects.clone(), partner_ids, run_id.clone()).await?;
    sims.tasks.push(
        gateway
            .listen(stream, ledger.clone(), sims.stop.clone())
            .await?,
    );

    let started = Instant::now();
    let deadline = started + options.timeout;
    let settling = tokio::time::timeout_at(deadline, async {
        gateway
            .submit_all(options.orders, options.concurrency, ledger, deadline)
            .await;
        ledger.wait_settled(ledger.accepted_count()).await;
    });
    // `None` once every order settled; else when the wait ended (deadline or Ctrl-C).
    let cut_short = tokio::select! {
        settled = settling => {
            settled.err().map(|_| format!("within {}", humantime::format_duration(options.timeout)))
        }
        () = crate::cli::shutdown_signal() => {
            Some(format!("before the interruption after {:.1} s", started.elapsed().as_secs_f64()))
        }
    };

    // One snapshot for the whole report: the listener keeps settling stragglers afterwards.
    let tally = ledger.tally();
    let all_settled = cut_short.is_none();
    finish_bar(ledger.progress(), all_settled);
    let mut problems = Vec::new();
    if let Some(when) = cut_short {
        let mut lines = Vec::new();
        for p in tally.unsettled.iter().take(UNSETTLED_SAMPLE) {
            lines.push(gateway.describe(p).await);
        }
        problems.push(format!(
            "only {} of {} orders settled {when} ({} were accepted by then); unsettled, e.g.: {}",
            tally.settled,
            options.orders,
            tally.placed.len(),
            if lines.is_empty() {
                "none accepted yet".into()
            } else {
                lines.join(" | ")
            }
        ));
    }
    if !tally.submit_failures.is_empty() {
        problems.push(format!(
            "{} orders were not accepted, e.g.: {}",
            tally.submit_failures.len(),
            tally
                .submit_failures
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }

    // The auxiliary records are checked once every order has settled (after a timeout the run
    // has failed already).
    let aux = if options.verify_aux && all_settled {
        let aux_deadline = deadline.max(Instant::now() + AUX_GRACE);
        let aux = gateway
            .verify_aux(&tally.placed, settings.aux.len(), aux_deadline)
            .await;
        if aux.complete < aux.checked {
            problems.push(format!(
                "{} of {} settled orders show fewer than {} auxiliary records, e.g.: {}",
                aux.checked - aux.complete,
                aux.checked,
                aux.expected_per_order,
                aux.short.join(" | ")
            ));
        }
        Some(aux)
    } else {
        None
    };

    let stream_tally = stream_messages(&observer, stream)
        .await
        .map(|total| StreamTally {
            name: stream.to_owned(),
            total,
            run: before.map(|b| total.saturating_sub(b)),
        });
    gateway.close().await;
    let elapsed = tally.last_settled.map_or(Duration::ZERO, |t| {
        t.saturating_duration_since(started.into_std())
    });
    Ok(Report {
        title: options.title.to_owned(),
        run_id,
        requested: options.orders,
        concurrency: options.concurrency,
        accepted: tally.placed.len(),
        settled: tally.settled,
        submit_failures: tally.submit_failures,
        submit_retries: tally.submit_retries,
        outcomes: tally.outcomes,
        elapsed,
        submit_latency: tally.submit_latency,
        result_latency: tally.result_latency,
        aux,
        stream: stream_tally,
        partners: sims.partners.clone(),
        audits: sims.audits.clone(),
        redelivered: tally.redelivered,
        foreign: tally.foreign,
        problems,
    })
}

/// A short id unique to this run: the random tail of a UUIDv7.
fn run_id() -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    id[id.len() - 12..].to_owned()
}

/// Messages in the stream, read with the hub's own credentials (roles may not read stream info).
async fn stream_messages(client: &async_nats::Client, stream: &str) -> Option<u64> {
    match jetstream::new(client.clone()).get_stream(stream).await {
        Ok(s) => Some(s.cached_info().state.messages),
        Err(e) => {
            tracing::warn!(stream, error = %e, "reading the stream info");
            None
        }
    }
}

/// Leaves the bar's last state on screen (once) and moves the cursor off its line.
fn finish_bar(bar: &ProgressBar, complete: bool) {
    if bar.is_finished() {
        return;
    }
    if complete {
        bar.finish();
    } else {
        bar.abandon();
    }
    if !bar.is_hidden() {
        eprintln!();
    }
}

fn progress_bar(len: usize) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} settled {pos}/{len} orders [{bar:40}] {elapsed_precise}, eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
