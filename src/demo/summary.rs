//! The run's report and the table `demo` and `bench` print.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::audit::AuditStats;
use super::gateway::AuxTally;
use super::partner::PartnerStats;

/// Events in stream `ORDER_EVENTS`.
#[derive(Debug)]
pub struct StreamTally {
    pub name: String,
    pub total: u64,
    /// Growth of the stream during the run: this run's events (plus any other traffic).
    pub run: Option<u64>,
}

/// Everything a run measured.
#[derive(Debug)]
pub struct Report {
    pub title: String,
    pub run_id: String,
    pub requested: usize,
    pub concurrency: usize,
    pub accepted: usize,
    pub settled: usize,
    pub submit_failures: Vec<String>,
    pub submit_retries: u64,
    pub outcomes: BTreeMap<String, u64>,
    /// First submit to last settled order.
    pub elapsed: Duration,
    pub submit_latency: Histogram<u64>,
    pub result_latency: Histogram<u64>,
    pub aux: Option<AuxTally>,
    pub stream: Option<StreamTally>,
    pub partners: Vec<(String, std::sync::Arc<PartnerStats>)>,
    pub audits: Vec<(String, std::sync::Arc<AuditStats>)>,
    pub redelivered: u64,
    pub foreign: u64,
    /// Why the run failed, if it did; empty on success.
    pub problems: Vec<String>,
}

fn ms(h: &Histogram<u64>, q: f64) -> String {
    if h.is_empty() {
        return "-".into();
    }
    let micros = if q >= 1.0 {
        h.max()
    } else {
        h.value_at_quantile(q)
    };
    format!("{:.1}", micros as f64 / 1000.0)
}

impl Report {
    /// Orders settled per second, first submit to last result event.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.settled as f64 / secs
        } else {
            0.0
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        let count = |k: &str| self.outcomes.get(k).copied().unwrap_or(0);
        let _ = writeln!(
            w,
            "\n{} — run {} ({} orders, concurrency {})",
            self.title, self.run_id, self.requested, self.concurrency
        );
        let _ = writeln!(
            w,
            "  orders          requested {}, accepted {}, settled {}, submit failures {}, submit retries {}",
            self.requested,
            self.accepted,
            self.settled,
            self.submit_failures.len(),
            self.submit_retries
        );
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
        if let Some(aux) = &self.aux {
            let systems: Vec<String> = aux
                .by_system
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect();
            let _ = writeln!(
                w,
                "  aux records     {} written: {} ({} of {} orders show all {})",
                aux.by_system.values().sum::<u64>(),
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
            let _ = writeln!(
                w,
                "  stream          {}: {} events in total, {} added during this run ({} accepted orders × stored + result = {})",
                s.name,
                s.total,
                run,
                self.accepted,
                2 * self.accepted
            );
        }
        let _ = writeln!(
            w,
            "  throughput      {:.1} orders/s settled, submit to result event ({} in {:.2} s)",
            self.throughput(),
            self.settled,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            w,
            "  latency (ms)              p50      p90      p99      max    count"
        );
        for (name, h) in [
            ("submit → accepted", &self.submit_latency),
            ("submit → result event", &self.result_latency),
        ] {
            let _ = writeln!(
                w,
                "    {name:<22}{:>7}  {:>7}  {:>7}  {:>7}  {:>7}",
                ms(h, 0.5),
                ms(h, 0.9),
                ms(h, 0.99),
                ms(h, 1.0),
                h.len()
            );
        }
        for (id, p) in &self.partners {
            let _ = writeln!(
                w,
                "  partner         {id}: confirmed {}, rejected {}, stale {}, retried {}, failed {}",
                p.confirmed.load(Ordering::Relaxed),
                p.rejected.load(Ordering::Relaxed),
                p.stale.load(Ordering::Relaxed),
                p.retried.load(Ordering::Relaxed),
                p.failed.load(Ordering::Relaxed)
            );
        }
        for (system, a) in &self.audits {
            let _ = writeln!(
                w,
                "  aux system      {system} (external): recorded {}, stale {}, retried {}, failed {}",
                a.recorded.load(Ordering::Relaxed),
                a.stale.load(Ordering::Relaxed),
                a.retried.load(Ordering::Relaxed),
                a.failed.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            w,
            "  gateway         result events of other runs {}, redelivered {}",
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
