//! The run's ledger: which orders this run placed, when, and when their result event arrived.
//! Result events of other runs (the gateway's durable consumer sees every result event) are told
//! apart by order id: only ids this run was given by `submit` count.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use tokio::sync::watch;

/// An order this run placed.
#[derive(Clone, Debug)]
pub struct Placed {
    pub order_id: String,
    pub user_id: String,
}

/// A latency histogram in microseconds, from 1 µs to one hour.
pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).context("creating a latency histogram")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
}

#[derive(Debug)]
struct State {
    placed: Vec<Placed>,
    /// Accepted, no result event yet: when the submit was first sent.
    waiting: HashMap<String, Instant>,
    /// Result events of order ids not (yet) known: this run's, ahead of their submit reply, or
    /// another run's.
    early: HashMap<String, (Instant, String)>,
    settled: HashSet<String>,
    outcomes: BTreeMap<String, u64>,
    submit_latency: Histogram<u64>,
    result_latency: Histogram<u64>,
    last_settled: Option<Instant>,
    submit_failures: Vec<String>,
    submit_retries: u64,
    redelivered: u64,
}

/// Shared by the submitting side and the result listener.
pub struct Ledger {
    state: Mutex<State>,
    settled: watch::Sender<usize>,
    progress: ProgressBar,
}

/// The ledger's figures once the run is over.
#[derive(Debug)]
pub struct Tally {
    pub placed: Vec<Placed>,
    pub settled: usize,
    pub unsettled: Vec<Placed>,
    pub outcomes: BTreeMap<String, u64>,
    pub submit_latency: Histogram<u64>,
    pub result_latency: Histogram<u64>,
    pub last_settled: Option<Instant>,
    pub submit_failures: Vec<String>,
    pub submit_retries: u64,
    /// Result events delivered again for an order already settled (at-least-once delivery).
    pub redelivered: u64,
    /// Result events of orders this run did not place.
    pub foreign: u64,
}

impl Ledger {
    pub fn new(progress: ProgressBar) -> anyhow::Result<Self> {
        let state = State {
            placed: Vec::new(),
            waiting: HashMap::new(),
            early: HashMap::new(),
            settled: HashSet::new(),
            outcomes: BTreeMap::new(),
            submit_latency: histogram()?,
            result_latency: histogram()?,
            last_settled: None,
            submit_failures: Vec::new(),
            submit_retries: 0,
            redelivered: 0,
        };
        Ok(Self {
            state: Mutex::new(state),
            settled: watch::Sender::new(0),
            progress,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `submit` answered `accepted` at `acked` for a request first sent at `sent`.
    pub fn accepted(&self, order: Placed, sent: Instant, acked: Instant) {
        let mut s = self.lock();
        record(&mut s.submit_latency, acked.duration_since(sent));
        let id = order.order_id.clone();
        s.placed.push(order);
        match s.early.remove(&id) {
            Some((at, outcome)) => self.settle(&mut s, id, sent, at, outcome),
            None => {
                s.waiting.insert(id, sent);
            }
        }
    }

    pub fn submit_failed(&self, reason: String) {
        self.lock().submit_failures.push(reason);
    }

    pub fn submit_retried(&self) {
        self.lock().submit_retries += 1;
    }

    /// A result event for `order_id` arrived at `at`.
    pub fn result_event(&self, order_id: &str, outcome: String, at: Instant) {
        let mut s = self.lock();
        if s.settled.contains(order_id) {
            s.redelivered += 1;
        } else if let Some(sent) = s.waiting.remove(order_id) {
            self.settle(&mut s, order_id.to_owned(), sent, at, outcome);
        } else {
            s.early.insert(order_id.to_owned(), (at, outcome));
        }
    }

    fn settle(&self, s: &mut State, id: String, sent: Instant, at: Instant, outcome: String) {
        record(&mut s.result_latency, at.saturating_duration_since(sent));
        *s.outcomes.entry(outcome).or_default() += 1;
        s.last_settled = Some(s.last_settled.map_or(at, |last| last.max(at)));
        s.settled.insert(id);
        let settled = s.settled.len();
        self.settled.send_replace(settled);
        self.progress.set_position(settled as u64);
    }

    pub fn accepted_count(&self) -> usize {
        self.lock().placed.len()
    }

    /// Resolves once `n` orders are settled.
    pub async fn wait_settled(&self, n: usize) {
        let mut rx = self.settled.subscribe();
        let _ = rx.wait_for(|settled| *settled >= n).await;
    }

    pub fn progress(&self) -> &ProgressBar {
        &self.progress
    }

    pub fn tally(&self) -> Tally {
        let s = self.lock();
        Tally {
            unsettled: s
                .placed
                .iter()
                .filter(|p| s.waiting.contains_key(&p.order_id))
                .cloned()
                .collect(),
            placed: s.placed.clone(),
            settled: s.settled.len(),
            outcomes: s.outcomes.clone(),
            submit_latency: s.submit_latency.clone(),
            result_latency: s.result_latency.clone(),
            last_settled: s.last_settled,
            submit_failures: s.submit_failures.clone(),
            submit_retries: s.submit_retries,
            redelivered: s.redelivered,
            foreign: s.early.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(id: &str) -> Placed {
        Placed {
            order_id: id.into(),
            user_id: "u-1".into(),
        }
    }

    #[test]
    fn settles_each_order_once_even_when_the_event_beats_the_reply() {
        let ledger = Ledger::new(ProgressBar::hidden()).unwrap();
        let t0 = Instant::now();
        ledger.accepted(placed("a"), t0, t0);
        ledger.result_event("b", "rejected".into(), t0);
        ledger.result_event("a", "confirmed".into(), t0);
        ledger.result_event("a", "confirmed".into(), t0);
        ledger.result_event("other-run", "confirmed".into(), t0);
        ledger.accepted(placed("b"), t0, t0);
        let t = ledger.tally();
        assert_eq!(t.settled, 2);
        assert_eq!(t.outcomes.get("confirmed"), Some(&1));
        assert_eq!(t.outcomes.get("rejected"), Some(&1));
        assert_eq!((t.redelivered, t.foreign), (1, 1));
        assert!(t.unsettled.is_empty());
    }
}
