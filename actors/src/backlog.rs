//! Admission by the whole story: new orders wait while the hub's own end of the story is behind.
//!
//! The per-partner `max_pending` bounds orders up to their result. The story goes on after that:
//! each built-in auxiliary system records the result event, and the settler makes the settled
//! event once every system has a record. When those fall behind, settled events trail result
//! events by as long as the queue in front of them. The [`Backlog`] counts that queue — result and
//! late events the built-in systems' durable consumers have not acknowledged yet (pending plus
//! delivered-unacknowledged, read from JetStream, so every instance of the hub sees the same
//! figure), and the orders the settler holds unchecked — and while it is above the configured
//! bound new orders are answered `unavailable` with a retry hint: the time the queue takes to
//! drain to the bound at the rate it drained lately.
//!
//! An external auxiliary system does not count: its events wait in its own durable consumer while
//! it is away, and the hub keeps taking orders.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use tokio::task::JoinHandle;

/// How often the built-in systems' consumers are looked at.
const WATCH_EVERY: Duration = Duration::from_millis(100);
/// The retry hint's range.
const MIN_WAIT_MS: u64 = 50;
const MAX_WAIT_MS: u64 = 2_000;
/// The hint while the drain rate is not known yet.
const UNKNOWN_RATE_WAIT_MS: u64 = 250;

/// The whole-story backlog of one hub instance, and its bound (0: no bound).
#[derive(Debug, Default)]
pub struct Backlog {
    bound: u64,
    /// Events the built-in systems have not acknowledged.
    aux: AtomicU64,
    /// Orders the settler holds unchecked.
    settler: AtomicU64,
    /// Events the built-in systems acknowledged per second, lately.
    drained_per_sec: AtomicU64,
}

impl Backlog {
    pub fn new(bound: u64) -> Self {
        Self {
            bound,
            ..Self::default()
        }
    }

    /// Events and orders that wait at the end of the story.
    pub fn size(&self) -> u64 {
        self.aux.load(Ordering::Relaxed) + self.settler.load(Ordering::Relaxed)
    }

    /// The bound; 0 when there is none.
    pub fn bound(&self) -> u64 {
        self.bound
    }

    /// The settler holds this many orders unchecked.
    pub fn settler_holds(&self, orders: usize) {
        self.settler.store(orders as u64, Ordering::Relaxed);
    }

    /// Why a new order waits, and how long it should (ms); `None` while the backlog is within
    /// its bound.
    pub fn full(&self) -> Option<(String, u64)> {
        let size = self.size();
        if self.bound == 0 || size <= self.bound {
            return None;
        }
        let wait = retry_wait(
            size - self.bound,
            self.drained_per_sec.load(Ordering::Relaxed),
        );
        Some((
            format!(
                "the hub is behind on settling: {size} results wait for its auxiliary systems \
                 and settler (bound {}); retry later",
                self.bound
            ),
            wait,
        ))
    }

    /// Watches the built-in systems' durable consumers until the task is aborted.
    pub fn watch(self: &Arc<Self>, consumers: Vec<PullConsumer>) -> JoinHandle<()> {
        let backlog = self.clone();
        tokio::spawn(async move {
            let mut consumers = consumers;
            let mut last: Option<(Instant, u64)> = None;
            let mut tick = tokio::time::interval(WATCH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (mut waiting, mut acked) = (0u64, 0u64);
                let mut complete = true;
                for consumer in &mut consumers {
                    match consumer.info().await {
                        Ok(info) => {
                            waiting += info.num_pending + info.num_ack_pending as u64;
                            acked += info.ack_floor.consumer_sequence;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "consumer info failed; backlog unchanged");
                            complete = false;
                        }
                    }
                }
                if !complete {
                    continue;
                }
                backlog.aux.store(waiting, Ordering::Relaxed);
                let now = Instant::now();
                if let Some((at, before)) = last {
                    let secs = now.duration_since(at).as_secs_f64();
                    if secs > 0.0 && acked >= before {
                        let rate = ((acked - before) as f64 / secs) as u64;
                        // A smoothed rate: one idle tick does not make the hint jump.
                        let old = backlog.drained_per_sec.load(Ordering::Relaxed);
                        let smoothed = if old == 0 { rate } else { (old * 3 + rate) / 4 };
                        backlog.drained_per_sec.store(smoothed, Ordering::Relaxed);
                    }
                }
                last = Some((now, acked));
                metrics::gauge!("orderhub_story_backlog").set(backlog.size() as f64);
            }
        })
    }
}

/// The time `excess` events take to drain at `per_sec`, in ms, within the hint's range.
fn retry_wait(excess: u64, per_sec: u64) -> u64 {
    if per_sec == 0 {
        return UNKNOWN_RATE_WAIT_MS;
    }
    (excess.saturating_mul(1_000) / per_sec).clamp(MIN_WAIT_MS, MAX_WAIT_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_the_bound_orders_are_taken() {
        let b = Backlog::new(100);
        b.aux.store(60, Ordering::Relaxed);
        b.settler_holds(40);
        assert_eq!(b.size(), 100);
        assert!(b.full().is_none());
        b.settler_holds(41);
        let (why, wait) = b.full().expect("over the bound");
        assert!(
            why.contains("101 results") && why.contains("bound 100"),
            "{why}"
        );
        assert_eq!(wait, UNKNOWN_RATE_WAIT_MS);
    }

    #[test]
    fn no_bound_no_refusal() {
        let b = Backlog::new(0);
        b.aux.store(1_000_000, Ordering::Relaxed);
        assert!(b.full().is_none());
    }

    #[test]
    fn the_hint_is_the_time_to_drain_to_the_bound() {
        assert_eq!(retry_wait(500, 1_000), 500);
        assert_eq!(retry_wait(1, 1_000), MIN_WAIT_MS);
        assert_eq!(retry_wait(1_000_000, 10), MAX_WAIT_MS);
        assert_eq!(retry_wait(10, 0), UNKNOWN_RATE_WAIT_MS);
    }
}
