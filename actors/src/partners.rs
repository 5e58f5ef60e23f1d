//! The configured partners, their `result_timeout` and `max_pending`, and how many accepted
//! orders each has waiting for its result (admission control).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Used for orders of a partner no longer in the configuration.
const DEFAULT_RESULT_TIMEOUT: Duration = Duration::from_secs(30);
/// `max_pending` when the configuration does not say: a backlog one partner can work through
/// well inside its `result_timeout` (2,000 orders in 30 s is 67 answers a second), so that an
/// overloaded partner or hub refuses new orders up front instead of accepting orders that will
/// only time out. Raise it for a partner that answers faster, with a longer timeout.
pub const DEFAULT_MAX_PENDING: u64 = 2_000;

/// One partner's configuration.
#[derive(Clone, Debug)]
pub struct Partner {
    pub result_timeout: Duration,
    /// Accepted orders still waiting for this partner's result; beyond it new orders are
    /// answered `unavailable`.
    pub max_pending: u64,
}

/// Configured partners, by id, with their pending counts. Shared behind an `Arc`.
#[derive(Debug, Default)]
pub struct Partners {
    partners: HashMap<String, Partner>,
    /// Per partner: the pending count the last database count saw, and the changes this
    /// instance made since.
    pending: HashMap<String, (AtomicI64, AtomicI64)>,
}

impl Partners {
    pub fn new(partners: HashMap<String, Partner>) -> Self {
        let pending = partners
            .keys()
            .map(|id| (id.clone(), (AtomicI64::new(0), AtomicI64::new(0))))
            .collect();
        Self { partners, pending }
    }

    /// Every configured partner's id.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.partners.keys().map(String::as_str)
    }

    pub fn contains(&self, partner_id: &str) -> bool {
        self.partners.contains_key(partner_id)
    }

    /// How long the partner has to answer once its stored event is out.
    pub fn result_timeout(&self, partner_id: &str) -> Duration {
        self.partners
            .get(partner_id)
            .map_or(DEFAULT_RESULT_TIMEOUT, |p| p.result_timeout)
    }

    /// Accepted orders of the partner still waiting for a result (as far as this instance
    /// knows: the last count of the database plus what it changed since).
    pub fn pending(&self, partner_id: &str) -> u64 {
        self.pending.get(partner_id).map_or(0, |(counted, delta)| {
            (counted.load(Ordering::Relaxed) + delta.load(Ordering::Relaxed)).max(0) as u64
        })
    }

    /// Every partner's pending count.
    pub fn pending_all(&self) -> BTreeMap<String, u64> {
        self.partners
            .keys()
            .map(|id| (id.clone(), self.pending(id)))
            .collect()
    }

    /// `Some(message)` when the partner may take no more orders now.
    /// `Some((message, wait))` when the partner has `max_pending` unanswered orders: the wait is
    /// a tenth of its `result_timeout` (within 0.25–5 s), by when answers or deadlines free room.
    pub fn saturated(&self, partner_id: &str) -> Option<(String, u64)> {
        let partner = self.partners.get(partner_id)?;
        let max = partner.max_pending;
        let pending = self.pending(partner_id);
        (pending >= max).then(|| {
            let wait = (partner.result_timeout.as_millis() as u64 / 10).clamp(250, 5_000);
            (
                format!(
                    "partner `{partner_id}` is saturated: {pending} accepted orders wait for its \
                     result (max_pending {max}); retry later"
                ),
                wait,
            )
        })
    }

    /// An order of the partner was accepted (+1) or got its result (-1).
    pub fn adjust(&self, partner_id: &str, by: i64) {
        if let Some((_, delta)) = self.pending.get(partner_id) {
            delta.fetch_add(by, Ordering::Relaxed);
        }
    }

    /// A fresh count from the database replaces the estimate.
    pub fn counted(&self, counts: &HashMap<String, u64>) {
        for (id, (counted, delta)) in &self.pending {
            counted.store(
                counts.get(id).copied().unwrap_or(0) as i64,
                Ordering::Relaxed,
            );
            delta.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partners(max: u64) -> Partners {
        Partners::new(HashMap::from([(
            "p".to_owned(),
            Partner {
                result_timeout: Duration::from_secs(1),
                max_pending: max,
            },
        )]))
    }

    #[test]
    fn saturated_at_max_pending_and_free_again_below_it() {
        let p = partners(2);
        assert!(p.saturated("p").is_none());
        p.adjust("p", 1);
        p.adjust("p", 1);
        let (why, wait) = p.saturated("p").expect("saturated");
        assert!(
            why.contains("`p`") && why.contains("max_pending 2"),
            "{why}"
        );
        // A tenth of the 1 s result_timeout, raised to the 250 ms floor.
        assert_eq!(wait, 250);
        p.adjust("p", -1);
        assert!(p.saturated("p").is_none());
        assert!(p.saturated("unknown").is_none());
    }

    #[test]
    fn a_database_count_replaces_the_estimate() {
        let p = partners(10);
        p.adjust("p", 5);
        p.counted(&HashMap::from([("p".to_owned(), 2)]));
        assert_eq!(p.pending("p"), 2);
        p.adjust("p", -3);
        assert_eq!(p.pending("p"), 0, "never below zero");
        assert_eq!(p.pending_all()["p"], 0);
    }
}
