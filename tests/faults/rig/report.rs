//! Measuring what a fault costs.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::*;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn spread(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "p50 {} / p99 {} / max {} (n={})",
        ms(percentile(&v, 0.5)),
        ms(percentile(&v, 0.99)),
        ms(v.last().copied().unwrap_or_default()),
        v.len()
    )
}

/// Prints what the fault injected at `at` cost, up to `until` (the next fault, or the end of
/// the load): the longest pauses in accepted replies and in result events reaching the gateway,
/// and the latencies of the orders submitted in the first 5 s after it (submit → accepted, and
/// submit → result event at the gateway).
pub fn report_fault(name: &str, at: Instant, until: Instant, report: &LoadReport, sims: &Sims) {
    let results = first_result_at(sims);
    let from = at - Duration::from_secs(1);
    let longest_pause = |mut times: Vec<Instant>| {
        times.sort();
        let mut last = times
            .iter()
            .rev()
            .find(|t| **t <= from)
            .copied()
            .unwrap_or(from);
        let mut pause = Duration::ZERO;
        for t in times.iter().filter(|t| **t > from && **t <= until) {
            pause = pause.max(*t - last);
            last = *t;
        }
        if let Some(next) = times.iter().find(|t| **t > until) {
            pause = pause.max(next.saturating_duration_since(last).min(until - last));
        }
        pause
    };
    let accept_pause = longest_pause(report.acked.iter().map(|a| a.accepted).collect());
    let event_pause = longest_pause(results.values().copied().collect());
    let window_end = until.min(at + Duration::from_secs(5));
    let during: Vec<&Acked> = report
        .acked
        .iter()
        .filter(|a| a.submitted >= at && a.submitted < window_end)
        .collect();
    let accept: Vec<Duration> = during.iter().map(|a| a.accepted - a.submitted).collect();
    let lifecycle: Vec<Duration> = during
        .iter()
        .filter_map(|a| results.get(&a.order_id).map(|r| *r - a.submitted))
        .collect();
    let retries = report
        .retries
        .iter()
        .filter(|(t, _)| *t >= at && *t < until)
        .fold(BTreeMap::<&str, usize>::new(), |mut m, (_, why)| {
            *m.entry(why).or_default() += 1;
            m
        });
    println!(
        "FAULT {name} (watched for {:.0} s):",
        (until - at).as_secs_f64()
    );
    println!(
        "  longest pause: in accepted replies {}, in result events at the gateway {}",
        ms(accept_pause),
        ms(event_pause)
    );
    println!(
        "  orders submitted in the {:.0} s after it: submit→accepted {}",
        (window_end - at).as_secs_f64(),
        spread(accept)
    );
    println!(
        "    submit→result event at the gateway {}",
        spread(lifecycle)
    );
    println!("    retried submits meanwhile: {retries:?}");
}

/// The run's baseline: the orders submitted in the `window` of the load before the first fault
/// (after a second of warm-up).
pub fn report_baseline(window: Duration, report: &LoadReport, sims: &Sims) {
    let results = first_result_at(sims);
    let from = report.started + Duration::from_secs(1);
    let early: Vec<&Acked> = report
        .acked
        .iter()
        .filter(|a| a.submitted >= from && a.submitted < from + window)
        .collect();
    println!(
        "BASELINE ({} s before any fault): submit→accepted {}",
        window.as_secs(),
        spread(early.iter().map(|a| a.accepted - a.submitted).collect())
    );
    println!(
        "  submit→result event at the gateway {}",
        spread(
            early
                .iter()
                .filter_map(|a| results.get(&a.order_id).map(|r| *r - a.submitted))
                .collect()
        )
    );
}

/// When the gateway first received each order's result event.
fn first_result_at(sims: &Sims) -> HashMap<String, Instant> {
    let seen = sims.gateway.seen.lock().unwrap();
    seen.events
        .values()
        .filter(|(_, kind, _)| kind == "orderhub.order.result_stored")
        .map(|(order, _, at)| (order.clone(), *at))
        .collect()
}
