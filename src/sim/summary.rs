//! The run's report: the table `demo` and `bench` print, and the JSON line of `bench --json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use super::audit::AuditStats;
use super::gateway::AuxTally;
use super::ledger::{LateTally, Latencies};
use super::memory::RssTally;
use super::partner::PartnerStats;

/// Events in stream `ORDER_EVENTS`.
#[derive(Debug)]
pub struct StreamTally {
    pub name: String,
    pub total: u64,
    /// Growth of the stream during the run: this run's events (plus any other traffic).
    pub run: Option<u64>,
}

/// CPU time per settled story, in ms, from the first submit to the end of the run.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTally {
    /// This process: the simulators and the load generator, and the hub when it runs in-process.
    pub own: Option<f64>,
    /// The `nats-server` this run started.
    pub nats: Option<f64>,
    /// The external hub, by its `orders.admin.status` (`--external`).
    pub hub: Option<f64>,
    /// The hub runs in this process.
    pub hub_in_process: bool,
    /// Threads of this process's async runtime (`runtime.workers`).
    pub workers: usize,
}

/// Everything a run measured.
#[derive(Debug)]
pub struct Report {
    pub title: String,
    pub run_id: String,
    /// How orders were sent, in words.
    pub load: String,
    /// `--orders`, when the run was bounded by a count.
    pub requested: Option<usize>,
    /// `--duration`, when the run was bounded by time.
    pub duration: Option<Duration>,
    /// `--rate`, in an open loop.
    pub rate: Option<f64>,
    /// `--concurrency`, in a closed loop.
    pub concurrency: Option<usize>,
    pub accepted: u64,
    /// Orders whose result event arrived.
    pub results: u64,
    /// Orders whose whole story arrived: result and settled events (and a late answer's late
    /// event).
    pub settled: u64,
    /// Orders never accepted.
    pub failed: u64,
    pub submit_retries: u64,
    /// Failed submit attempts by error code (retried ones too).
    pub errors: BTreeMap<String, u64>,
    pub outcomes: BTreeMap<String, u64>,
    /// First submit to the last accepted reply, result event and settled order.
    pub accept_span: Duration,
    pub result_span: Duration,
    pub settle_span: Duration,
    pub latency: Latencies,
    pub late: LateTally,
    pub aux: Option<AuxTally>,
    pub stream: Option<StreamTally>,
    pub partners: Vec<(String, Arc<PartnerStats>)>,
    pub audits: Vec<(String, Arc<AuditStats>)>,
    pub redelivered: u64,
    pub foreign: u64,
    /// Peak resident memory of the process running the hub, when it is this one.
    pub hub_peak_rss_mb: Option<f64>,
    /// Resident memory of this process sampled every second from the first submit until every
    /// order settled, when it runs the hub.
    pub rss: Option<RssTally>,
    pub cpu: CpuTally,
    /// Why the run failed, if it did; empty on success.
    pub problems: Vec<String>,
}

fn per_sec(n: u64, span: Duration) -> f64 {
    let secs = span.as_secs_f64();
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// A quantile in milliseconds; `q >= 1` is the maximum.
fn quantile_ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    if h.is_empty() {
        return None;
    }
    let micros = if q >= 1.0 {
        h.max()
    } else {
        h.value_at_quantile(q)
    };
    Some(micros as f64 / 1000.0)
}

fn ms(h: &Histogram<u64>, q: f64) -> String {
    quantile_ms(h, q).map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

fn latency_json(h: &Histogram<u64>) -> Value {
    let q = |q: f64| quantile_ms(h, q).map(|v| (v * 1000.0).round() / 1000.0);
    json!({
        "p50": q(0.5),
        "p99": q(0.99),
        "p999": q(0.999),
        "max": q(1.0),
        "count": h.len(),
    })
}

impl Report {
    /// Lifecycles (submit → result event) per second, first submit to last result event.
    pub fn lifecycles_per_sec(&self) -> f64 {
        per_sec(self.results, self.result_span)
    }

    /// Accepted orders per second, first submit to last accepted reply.
    pub fn accepted_per_sec(&self) -> f64 {
        per_sec(self.accepted, self.accept_span)
    }

    /// Settled orders per second, first submit to the last settled order.
    pub fn settled_per_sec(&self) -> f64 {
        per_sec(self.settled, self.settle_span)
    }

    fn aux_done(&self) -> Option<&Histogram<u64>> {
        self.aux.as_ref().map(|a| &a.done_latency)
    }

    /// The machine-readable report of `bench --json`: one object.
    pub fn json(&self) -> Value {
        let empty = super::ledger::histogram().ok();
        let aux_done = self.aux_done().or(empty.as_ref());
        json!({
            "title": self.title,
            "run_id": self.run_id,
            "load": self.load,
            "orders": self.requested,
            "duration_s": self.duration.map(|d| d.as_secs_f64()),
            "rate": self.rate,
            "concurrency": self.concurrency,
            "accepted": self.accepted,
            "lifecycles": self.results,
            "settled": self.settled,
            "failed": self.failed,
            "submit_retries": self.submit_retries,
            "errors": self.errors,
            "outcomes": self.outcomes,
            "lifecycles_per_sec": round2(self.lifecycles_per_sec()),
            "accepted_per_sec": round2(self.accepted_per_sec()),
            "settled_per_sec": round2(self.settled_per_sec()),
            "elapsed_s": round2(self.result_span.as_secs_f64()),
            "hub_peak_rss_mb": self.hub_peak_rss_mb.map(round2),
            "rss_mb": self.rss.map(|m| json!({
                "first": round2(m.first),
                "max": round2(m.max),
                "last": round2(m.last),
                "samples": m.samples,
                "growth_mb_per_min": m.growth_mb_per_min.map(round3),
                "growth_over": m.window.key(),
            })),
            "cpu_ms_per_story": self.cpu.own.map(round3),
            "nats_cpu_ms_per_story": self.cpu.nats.map(round3),
            "hub_cpu_ms_per_story": self.cpu.hub.map(round3),
            "runtime_workers": self.cpu.workers,
            "latency_ms": {
                "submit_ack": latency_json(&self.latency.submit_ack),
                "stored_event": latency_json(&self.latency.stored_event),
                "result_event": latency_json(&self.latency.result_event),
                "settled_event": latency_json(&self.latency.settled_event),
                "aux_done": aux_done.map_or(Value::Null, latency_json),
            },
            "aux_done_orders": self.aux.as_ref().map(|a| json!({
                "checked": a.checked, "complete": a.complete, "every_order": a.all,
            })),
            "late": {
                "held": self.late.held,
                "stored": self.late.stored,
                "in_time": self.late.in_time,
                "events": self.late.events,
            },
            "stream_events": self.stream.as_ref().and_then(|s| s.run),
            "redelivered": self.redelivered,
            "foreign": self.foreign,
            "ok": self.problems.is_empty(),
            "problems": self.problems,
        })
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        let count = |k: &str| self.outcomes.get(k).copied().unwrap_or(0);
        let size = match (self.requested, self.duration) {
            (Some(n), _) => format!("{n} orders"),
            (None, Some(d)) => format!("orders for {}", humantime::format_duration(d)),
            (None, None) => "orders".into(),
        };
        let _ = writeln!(
            w,
            "\n{} — run {} ({size}, {})",
            self.title, self.run_id, self.load
        );
        let _ = writeln!(
            w,
            "  orders          accepted {}, result events {}, settled {}, not accepted {}, submit retries {}",
            self.accepted, self.results, self.settled, self.failed, self.submit_retries
        );
        if !self.errors.is_empty() {
            let errors: Vec<String> = self
                .errors
                .iter()
                .map(|(code, n)| format!("{code} {n}"))
                .collect();
            let _ = writeln!(w, "  submit errors   {}", errors.join(", "));
        }
        let others: Vec<String> = self
            .outcomes
            .iter()
            .filter(|(k, _)| !["confirmed", "rejected", "timeout", "failed"].contains(&k.as_str()))
            .map(|(k, v)| format!(", {k} {v}"))
            .collect();
        let _ = writeln!(
            w,
            "  outcomes        confirmed {}, rejected {}, timed out {}, failed {}{}",
            count("confirmed"),
            count("rejected"),
            count("timeout"),
            count("failed"),
            others.concat()
        );
        if self.late.held > 0 || self.late.events > 0 {
            let _ = writeln!(
                w,
                "  late results    {} held back by partners: {} stored late / {} late events seen, {} still in time",
                self.late.held, self.late.stored, self.late.events, self.late.in_time
            );
        }
        if let Some(aux) = &self.aux {
            let systems: Vec<String> = aux
                .by_system
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect();
            let _ = writeln!(
                w,
                "  aux records     {} {}: {} ({} of {} orders show all {})",
                aux.by_system.values().sum::<u64>(),
                if aux.all {
                    "written"
                } else {
                    "seen in a sample"
                },
                if systems.is_empty() {
                    "none".into()
                } else {
                    systems.join(", ")
                },
                aux.complete,
                aux.checked,
                aux.expected_per_order
            );
        }
        if let Some(s) = &self.stream {
            let run = s.run.map_or("unknown".into(), |r| r.to_string());
            let expected = 3 * self.accepted + self.late.events;
            let _ = writeln!(
                w,
                "  stream          {}: {} events in total, {} added during this run ({} accepted orders × stored + result + settled, + {} late = {})",
                s.name, s.total, run, self.accepted, self.late.events, expected
            );
        }
        let _ = writeln!(
            w,
            "  throughput      {:.1} lifecycles/s (submit → result event, {} in {:.2} s); {:.1} accepted/s; {:.1} settled/s",
            self.lifecycles_per_sec(),
            self.results,
            self.result_span.as_secs_f64(),
            self.accepted_per_sec(),
            self.settled_per_sec()
        );
        if let Some(mb) = self.hub_peak_rss_mb {
            let _ = writeln!(
                w,
                "  memory          peak RSS {mb:.1} MB (hub, simulators and load generator in one process)"
            );
        }
        if let Some(m) = &self.rss {
            let growth = m
                .growth_mb_per_min
                .map_or("unknown".into(), |g| format!("{g:+.2} MB/min"));
            let _ = writeln!(
                w,
                "  rss over time   first {:.1} MB, max {:.1} MB, last {:.1} MB ({} samples, one a second); growth {growth} {}",
                m.first,
                m.max,
                m.last,
                m.samples,
                m.window.describe()
            );
        }
        if let Some(line) = self.cpu_line() {
            let _ = writeln!(w, "  cpu             {line}");
        }
        let _ = writeln!(
            w,
            "  latency (ms)              p50      p90      p99    p99.9      max    count"
        );
        let mut rows = vec![
            ("submit → accepted", &self.latency.submit_ack),
            ("submit → stored event", &self.latency.stored_event),
            ("submit → result event", &self.latency.result_event),
            ("submit → settled", &self.latency.settled_event),
        ];
        if let Some(h) = self.aux_done() {
            rows.push(("submit → last aux rec.", h));
        }
        if !self.latency.late_event.is_empty() {
            rows.push(("submit → late event", &self.latency.late_event));
        }
        for (name, h) in rows {
            let _ = writeln!(
                w,
                "    {name:<22}{:>7}  {:>7}  {:>7}  {:>7}  {:>7}  {:>7}",
                ms(h, 0.5),
                ms(h, 0.9),
                ms(h, 0.99),
                ms(h, 0.999),
                ms(h, 1.0),
                h.len()
            );
        }
        for (id, p) in &self.partners {
            let _ = writeln!(
                w,
                "  partner         {id}: confirmed {}, rejected {}, held back {}, stored late {}, stale {}, retried {}, failed {}",
                p.confirmed.load(Ordering::Relaxed),
                p.rejected.load(Ordering::Relaxed),
                p.held.load(Ordering::Relaxed),
                p.late.load(Ordering::Relaxed),
                p.stale.load(Ordering::Relaxed),
                p.retried.load(Ordering::Relaxed),
                p.failed.load(Ordering::Relaxed)
            );
        }
        for (system, a) in &self.audits {
            let _ = writeln!(
                w,
                "  aux system      {system} (external): recorded {}, replaced after a late event {}, stale {}, retried {}, failed {}",
                a.recorded.load(Ordering::Relaxed),
                a.late.load(Ordering::Relaxed),
                a.stale.load(Ordering::Relaxed),
                a.retried.load(Ordering::Relaxed),
                a.failed.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            w,
            "  events          of other runs {}; again for orders already complete (redelivered or duplicated) {}",
            self.foreign, self.redelivered
        );
        let verdict = match self.problems.len() {
            0 => "every order settled".to_owned(),
            n => format!("FAILED: {n} problem(s), see the error below"),
        };
        let _ = writeln!(w, "  result          {verdict}");
        out
    }
}

impl Report {
    /// The CPU figures per settled story, in words.
    fn cpu_line(&self) -> Option<String> {
        let c = &self.cpu;
        let mut parts = Vec::new();
        if let Some(ms) = c.own {
            let who = if c.hub_in_process {
                "hub, simulators and load generator"
            } else {
                "simulators and load generator"
            };
            let threads = match c.workers {
                1 => "one runtime thread".to_owned(),
                n => format!("{n} runtime threads"),
            };
            parts.push(format!(
                "{ms:.3} ms per story in this process ({who}; {threads})"
            ));
        }
        if let Some(ms) = c.hub {
            parts.push(format!("{ms:.3} ms in the hub"));
        }
        if let Some(ms) = c.nats {
            parts.push(format!("{ms:.3} ms in nats-server"));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// To the microsecond, for figures in milliseconds.
fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}
