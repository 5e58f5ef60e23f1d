//! The engine of `orderhub demo` and `orderhub bench`: optionally start `nats-server` (when none
//! answers) and a hub in-process, start the simulators, submit the orders, wait until every
//! order's story is complete at the gateway (result event, settled event, and the late event of a
//! late answer), check the auxiliary records, count the stream, stop everything, and print a
//! [`Report`]. `demo` shows a progress bar, has one partner answer a few orders late and checks
//! every order's auxiliary records; `bench` is bigger, sends in a closed or an open loop, can
//! drive an external hub (`--external`) and can print its report as JSON (`--json`).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actors::protocol::{StatusReply, Subjects};
use anyhow::Context as _;
use async_nats::jetstream;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::audit::{AUX_USER, AuditStats, Auditor};
use super::client::{self, Role, Running, Stop, StopSwitch};
use super::cpu;
use super::gateway::{GATEWAY_USER, Gateway};
use super::ledger::Ledger;
use super::load::{LoadGenerator, Pace, Plan};
use super::memory::{self, RssTally, Sampler};
use super::natsserver::{self, NatsServer};
use super::partner::{self, Behaviour, Partner, PartnerStats};
use super::summary::{CpuTally, Report, StreamTally};
use crate::settings::Settings;

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
    #[arg(long, default_value_t = 20_000, conflicts_with = "duration")]
    pub orders: usize,
    /// Place orders for this long instead (e.g. `60s`, `5m`), then wait for them to settle.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Closed loop: whole lifecycles in flight at once (from the submit until the order's result
    /// event arrived).
    #[arg(long, default_value_t = 256, conflicts_with = "rate")]
    pub concurrency: usize,
    /// Open loop: orders per second on a fixed schedule, whatever the replies; latencies count
    /// from the time an order was due.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Fail (non-zero exit) when the orders have not all settled by then (with --duration:
    /// this long after the duration).
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Drive the hub already running at nats.url (e.g. `orderhub serve` on Postgres) instead of
    /// starting one in-process.
    #[arg(long)]
    pub external: bool,
    /// Show the progress bar (on stderr) with --json too.
    #[arg(long)]
    pub progress: bool,
    /// Print the report as one JSON object on the last line of stdout (the table goes to
    /// stderr).
    #[arg(long)]
    pub json: bool,
    /// After settling, check through `orders.query` that every order shows all its auxiliary
    /// records (without it, a sample of orders is queried to measure submit → last record).
    #[arg(long)]
    pub verify_aux: bool,
}

/// What a run does, from either command's arguments.
#[derive(Debug)]
struct Options {
    title: &'static str,
    /// Stop after this many orders…
    orders: Option<usize>,
    /// …or after placing orders for this long.
    duration: Option<Duration>,
    load: Load,
    timeout: Duration,
    start_hub: bool,
    progress: bool,
    /// Query every order's auxiliary records afterwards (else a sample).
    verify_aux: bool,
    /// One partner holds a few answers back until after their deadline.
    late_answers: bool,
}

#[derive(Clone, Copy, Debug)]
enum Load {
    /// `slots` orders at once; `lifecycles`: from submit to result event, else submits only.
    Closed { slots: usize, lifecycles: bool },
    /// Orders per second on a fixed schedule.
    Open { rate: f64 },
}

impl Load {
    fn describe(self) -> String {
        match self {
            Self::Closed {
                slots,
                lifecycles: true,
            } => format!("closed loop, {slots} lifecycles in flight"),
            Self::Closed {
                slots,
                lifecycles: false,
            } => format!("closed loop, {slots} submits in flight"),
            Self::Open { rate } => format!("open loop, {rate} orders/s"),
        }
    }
}

/// `orderhub demo`: exits 0 once every order is settled and shows all its auxiliary records, and
/// every late answer's late event has arrived.
pub async fn demo(mut settings: Settings, args: DemoArgs) -> anyhow::Result<()> {
    // The partner that answers late gets a short deadline, so the demo ends within seconds.
    for p in &mut settings.partners {
        if p.id == partner::LATE_PARTNER {
            p.result_timeout = p.result_timeout.min(partner::LATE_PARTNER_TIMEOUT);
        }
    }
    let options = Options {
        title: "orderhub demo",
        orders: Some(args.orders),
        duration: None,
        load: Load::Closed {
            slots: args.concurrency,
            lifecycles: false,
        },
        timeout: args.timeout,
        start_hub: true,
        progress: true,
        verify_aux: true,
        late_answers: true,
    };
    let report = run(settings, options).await?;
    print!("{}", report.render());
    conclude(&report)
}

/// `orderhub bench`: throughput and latency percentiles of full order lifecycles.
pub async fn bench(settings: Settings, args: BenchArgs) -> anyhow::Result<()> {
    let load = match args.rate {
        Some(rate) => {
            anyhow::ensure!(
                rate.is_finite() && rate > 0.0,
                "--rate must be a positive number of orders per second"
            );
            Load::Open { rate }
        }
        None => Load::Closed {
            slots: args.concurrency,
            lifecycles: true,
        },
    };
    let options = Options {
        title: "orderhub bench",
        orders: args.duration.is_none().then_some(args.orders),
        duration: args.duration,
        load,
        timeout: args.timeout,
        start_hub: !args.external,
        progress: args.progress || !args.json,
        verify_aux: args.verify_aux,
        late_answers: false,
    };
    let report = run(settings, options).await?;
    if args.json {
        eprint!("{}", report.render());
        println!("{}", report.json());
    } else {
        print!("{}", report.render());
    }
    conclude(&report)
}

/// A run with problems is an error.
fn conclude(report: &Report) -> anyhow::Result<()> {
    match report.problems.as_slice() {
        [] => Ok(()),
        problems => anyhow::bail!("{}", problems.join("; ")),
    }
}

/// Starts `nats-server` (when none answers) and the hub when asked, runs the flow, stops the hub
/// and the server.
async fn run(settings: Settings, options: Options) -> anyhow::Result<Report> {
    anyhow::ensure!(options.orders != Some(0), "--orders must be at least 1");
    anyhow::ensure!(
        options.duration.is_none_or(|d| !d.is_zero()),
        "--duration must be longer than 0"
    );
    if let Load::Closed { slots, .. } = options.load {
        anyhow::ensure!(slots > 0, "--concurrency must be at least 1");
    }
    let (nats, app) = if options.start_hub {
        let nats = natsserver::start_if_none_answers(&settings).await?;
        let app = crate::App::start(settings.clone())
            .await
            .context("starting the hub in-process")?;
        (nats, Some(app))
    } else {
        (None, None)
    };
    let report = drive(&settings, &options, nats.as_ref()).await;
    if let Some(app) = app {
        let stopped = app.stop().await.context("stopping the hub");
        if report.is_ok() {
            stopped?;
        }
    }
    drop(nats);
    report
}

/// The simulated participants' tasks and what they counted.
struct Simulators {
    switch: StopSwitch,
    stop: Stop,
    running: Vec<Running>,
    partners: Vec<(String, Arc<PartnerStats>)>,
    audits: Vec<(String, Arc<AuditStats>)>,
}

impl Simulators {
    fn new() -> Self {
        let (switch, stop) = client::stop_switch();
        Self {
            switch,
            stop,
            running: Vec::new(),
            partners: Vec::new(),
            audits: Vec::new(),
        }
    }

    /// A partner per configured partner and an auditor per external auxiliary system.
    async fn start(
        &mut self,
        settings: &Settings,
        subjects: &Subjects,
        ledger: &Arc<Ledger>,
        late_answers: bool,
    ) -> anyhow::Result<()> {
        let (url, stream) = (&settings.nats.url, &settings.nats.stream);
        for p in &settings.partners {
            let behaviour = Behaviour::of(&p.id, p.result_timeout, late_answers);
            let user = actors::protocol::consumer::partner(&p.id);
            let role = Role::new(client::connect_role(url, &user).await?, subjects.clone());
            let partner = Partner::new(role, &p.id, behaviour).ledger(ledger.clone());
            let stats = partner.stats.clone();
            let running = partner
                .start(stream, self.stop.clone())
                .await
                .with_context(|| format!("starting simulated partner {}", p.id))?;
            self.running.push(running);
            self.partners.push((p.id.clone(), stats));
        }
        for a in settings.aux.iter().filter(|a| a.external) {
            let role = Role::new(client::connect_role(url, AUX_USER).await?, subjects.clone());
            let auditor = Auditor::new(role, &a.system);
            let stats = auditor.stats.clone();
            let running = auditor
                .start(stream, self.stop.clone())
                .await
                .with_context(|| format!("starting the external auxiliary system {}", a.system))?;
            self.running.push(running);
            self.audits.push((a.system.clone(), stats));
        }
        Ok(())
    }

    /// Stops pulling, lets the messages being handled finish, and waits for every task.
    async fn shutdown(&mut self) {
        self.switch.stop();
        for running in self.running.drain(..) {
            if !running.finish(Duration::from_secs(10)).await {
                tracing::warn!("a simulator did not stop within 10 s; aborted it");
            }
        }
    }
}

/// Runs the simulators around [`exercise`] and always stops them.
async fn drive(
    settings: &Settings,
    options: &Options,
    nats: Option<&NatsServer>,
) -> anyhow::Result<Report> {
    let expected = match (options.orders, options.duration, options.load) {
        (Some(n), _, _) => Some(n as u64),
        (None, Some(d), Load::Open { rate }) => Some((d.as_secs_f64() * rate).ceil() as u64),
        _ => None,
    };
    let progress = if options.progress {
        progress_bar(expected)
    } else {
        ProgressBar::hidden()
    };
    let slots = match options.load {
        Load::Closed { slots, .. } => Some(Arc::new(Semaphore::new(slots))),
        Load::Open { .. } => None,
    };
    let lifecycle_slots = match options.load {
        Load::Closed {
            lifecycles: true, ..
        } => slots.clone(),
        _ => None,
    };
    let ledger = Arc::new(Ledger::new(progress, options.verify_aux, lifecycle_slots)?);
    let mut sims = Simulators::new();
    let report = exercise(settings, options, slots, &ledger, &mut sims, nats).await;
    sims.shutdown().await;
    finish_bar(ledger.progress(), false);
    report
}

/// CPU time used so far: this process's, the nats-server's this run started, and the external
/// hub's (by its status).
struct CpuMark {
    own: Option<Duration>,
    nats: Option<Duration>,
    hub: Option<(String, u64)>,
}

impl CpuMark {
    async fn take(
        nats: Option<&NatsServer>,
        hub: Option<(&async_nats::Client, &Subjects)>,
    ) -> Self {
        let hub = match hub {
            Some((client, subjects)) => hub_cpu(client, subjects).await,
            None => None,
        };
        Self {
            own: cpu::own(),
            nats: nats.and_then(NatsServer::pid).and_then(cpu::of_process),
            hub,
        }
    }

    /// Per settled story since `start`.
    fn since(&self, start: &Self, stories: u64, hub_in_process: bool) -> CpuTally {
        let used = |a: Option<Duration>, b: Option<Duration>| a?.checked_sub(b?);
        let hub = match (&start.hub, &self.hub) {
            // The same instance answered both times (several hubs share the status subject).
            (Some((first, a)), Some((last, b))) if first == last => {
                Some(Duration::from_millis(b.saturating_sub(*a)))
            }
            _ => None,
        };
        CpuTally {
            own: cpu::ms_per_story(used(self.own, start.own), stories),
            nats: cpu::ms_per_story(used(self.nats, start.nats), stories),
            hub: cpu::ms_per_story(hub, stories),
            hub_in_process,
            workers: tokio::runtime::Handle::current().metrics().num_workers(),
        }
    }
}

/// The instance and CPU time of the hub answering `orders.admin.status`, when it tells.
async fn hub_cpu(client: &async_nats::Client, subjects: &Subjects) -> Option<(String, u64)> {
    match client::call::<StatusReply>(client, subjects.status(), &serde_json::json!({})).await {
        Ok(status) => Some((status.instance_id, status.process.cpu_ms?)),
        Err(e) => {
            tracing::warn!(error = %e, "reading the hub's status");
            None
        }
    }
}

/// Starts the participants, places the orders, waits for their stories to complete, checks the
/// auxiliary records and the stream, and reports. Orders that do not settle are problems of the
/// report.
async fn exercise(
    settings: &Settings,
    options: &Options,
    slots: Option<Arc<Semaphore>>,
    ledger: &Arc<Ledger>,
    sims: &mut Simulators,
    nats: Option<&NatsServer>,
) -> anyhow::Result<Report> {
    let subjects = Subjects::new(settings.nats.subject_prefix.clone());
    let (url, stream) = (settings.nats.url.as_str(), settings.nats.stream.as_str());
    let run_id = run_id();
    let observer = crate::startup::connect_nats(url, "orderhub-sim-observer").await?;
    let before = stream_messages(&observer, stream).await;

    sims.start(settings, &subjects, ledger, options.late_answers)
        .await?;
    let gateway = Gateway::new(Role::new(
        client::connect_role(url, GATEWAY_USER).await?,
        subjects.clone(),
    ));
    let partner_ids = settings.partners.iter().map(|p| p.id.clone()).collect();
    let load = LoadGenerator::new(gateway.clone(), partner_ids, &run_id)?;
    let listening = gateway
        .listen(stream, Some(ledger.clone()), sims.stop.clone())
        .await?;
    sims.running.push(listening);

    let external_hub = (!options.start_hub).then_some((&observer, &subjects));
    let cpu_start = CpuMark::take(nats, external_hub).await;
    let started = Instant::now();
    // The memory sampled is this process's: it holds the hub only when the hub runs in-process.
    let sampler = options.start_hub.then(|| Sampler::start(started));
    let deadline = started + options.duration.unwrap_or_default() + options.timeout;
    let plan = Plan {
        pace: match (options.load, slots) {
            (Load::Open { rate }, _) => Pace::Open { rate },
            (Load::Closed { lifecycles, .. }, Some(slots)) => Pace::Closed { slots, lifecycles },
            (Load::Closed { .. }, None) => anyhow::bail!("a closed loop needs its slots"),
        },
        orders: options.orders,
        until: options.duration.map(|d| started + d),
    };
    // Seconds after `started` when every order had been placed.
    let placed = OnceLock::new();
    let settling = tokio::time::timeout_at(deadline, async {
        load.submit_all(&plan, ledger, deadline).await;
        let _ = placed.set(started.elapsed().as_secs_f64());
        ledger.wait_drained().await;
    });
    // `None` once every order settled; else when the wait ended (deadline or Ctrl-C).
    let cut_short = tokio::select! {
        settled = settling => {
            settled.err().map(|_| {
                format!("within {}", humantime::format_duration(deadline - started))
            })
        }
        () = crate::startup::shutdown_signal() => {
            Some(format!("before the interruption after {:.1} s", started.elapsed().as_secs_f64()))
        }
    };

    // One snapshot for the whole report: the listener keeps settling stragglers afterwards.
    let tally = ledger.tally();
    let cpu =
        CpuMark::take(nats, external_hub)
            .await
            .since(&cpu_start, tally.settled, options.start_hub);
    let rss = match sampler {
        Some(sampler) => RssTally::of(&sampler.stop().await, placed.get().copied()),
        None => None,
    };
    let all_settled = cut_short.is_none();
    finish_bar(ledger.progress(), all_settled);
    let mut problems = Vec::new();
    if let Some(when) = cut_short {
        let mut lines = Vec::new();
        for (p, waits) in tally.unsettled.iter().take(UNSETTLED_SAMPLE) {
            lines.push(format!("{} [{waits}]", gateway.describe(p).await));
        }
        problems.push(format!(
            "only {} of {} accepted orders settled {when}{}; unsettled, e.g.: {}",
            tally.settled,
            tally.accepted,
            options
                .orders
                .map(|n| format!(" ({n} requested)"))
                .unwrap_or_default(),
            if lines.is_empty() {
                "none accepted yet".into()
            } else {
                lines.join(" | ")
            }
        ));
    }
    if tally.failed > 0 {
        problems.push(format!(
            "{} orders were not accepted, e.g.: {}",
            tally.failed,
            tally.failures.join(" | ")
        ));
    }

    // The auxiliary records are checked once every order has settled (after a timeout the run
    // has failed already): every order's, or a sample's for submit → last record.
    let aux = if all_settled {
        let aux_deadline = Instant::now() + AUX_GRACE;
        let (orders, all) = if options.verify_aux {
            (&tally.placed, true)
        } else {
            (&tally.sample, tally.sample.len() as u64 == tally.accepted)
        };
        let aux = gateway
            .check_aux(orders, all, settings.aux.len(), aux_deadline)
            .await?;
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
    let span = |t: Option<std::time::Instant>| {
        t.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(started.into_std())
        })
    };
    let (rate, concurrency) = match options.load {
        Load::Open { rate } => (Some(rate), None),
        Load::Closed { slots, .. } => (None, Some(slots)),
    };
    Ok(Report {
        title: options.title.to_owned(),
        run_id,
        load: options.load.describe(),
        requested: options.orders,
        duration: options.duration,
        rate,
        concurrency,
        accepted: tally.accepted,
        results: tally.results,
        settled: tally.settled,
        failed: tally.failed,
        submit_retries: tally.submit_retries,
        errors: tally.errors,
        outcomes: tally.outcomes,
        accept_span: span(tally.last_accepted),
        result_span: span(tally.last_result),
        settle_span: span(tally.last_settled),
        latency: tally.latency,
        late: tally.late,
        aux,
        stream: stream_tally,
        partners: sims.partners.clone(),
        audits: sims.audits.clone(),
        redelivered: tally.redelivered,
        foreign: tally.foreign,
        hub_peak_rss_mb: if options.start_hub {
            memory::peak_mb()
        } else {
            None
        },
        rss,
        cpu,
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

/// A bar towards `len` settled orders, or a counter when the number is not known beforehand.
fn progress_bar(len: Option<u64>) -> ProgressBar {
    let (bar, template) = match len {
        Some(len) => (
            ProgressBar::new(len),
            "{spinner} settled {pos}/{len} orders [{bar:40}] {elapsed_precise}, eta {eta}",
        ),
        None => (
            ProgressBar::no_length(),
            "{spinner} settled {pos} orders, {per_sec} {elapsed_precise}",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
