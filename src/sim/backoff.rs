//! How long a participant waits before it asks the hub again. An `unavailable` reply carries the
//! hub's hint (`Orderhub-Retry-After-Ms`): the wait is that hint with jitter, uniform in
//! [0.5×, 1.5×), so clients refused together do not come back together; each further refusal of
//! the same request doubles it (up to [`MAX_HINT_FACTOR`]×), so however far the offered load
//! exceeds what the hub takes, a request is refused a bounded number of times per minute.
//! Without a hint (no reply, nobody listening) the wait doubles from a first step up to a cap,
//! with the same jitter.

use std::time::Duration;

/// A hint above this is taken as this: a header from the network never sets an endless wait.
pub const MAX_HINT: Duration = Duration::from_secs(60);

/// The most a hinted wait grows over repeated refusals of one request.
pub const MAX_HINT_FACTOR: u32 = 4;

/// The waits between the attempts of one request.
#[derive(Debug)]
pub struct Backoff {
    /// Applied to the next hint: 1, doubling with each hinted wait.
    factor: u32,
    next: Duration,
    cap: Duration,
    rng: fastrand::Rng,
}

impl Default for Backoff {
    /// 100 ms, doubling up to 2 s, when the hub gives no hint.
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(2))
    }
}

impl Backoff {
    /// Without hints: `first`, then doubling up to `cap`.
    pub fn new(first: Duration, cap: Duration) -> Self {
        Self {
            factor: 1,
            next: first,
            cap: cap.max(first),
            rng: fastrand::Rng::new(),
        }
    }

    /// The same waits from a fixed seed.
    pub fn with_seed(first: Duration, cap: Duration, seed: u64) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
            ..Self::new(first, cap)
        }
    }

    /// The wait before the next attempt: the hub's `hint` (times 2 for each hinted wait before
    /// it, up to [`MAX_HINT_FACTOR`]) with jitter, or the next step of the doubling with jitter.
    pub fn wait(&mut self, hint: Option<Duration>) -> Duration {
        let base = match hint {
            Some(hint) => {
                let wait = hint.saturating_mul(self.factor).min(MAX_HINT);
                self.factor = (self.factor * 2).min(MAX_HINT_FACTOR);
                wait
            }
            None => {
                let step = self.next;
                self.next = self.next.saturating_mul(2).min(self.cap);
                step
            }
        };
        base.mul_f64(0.5 + self.rng.f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_hint_is_waited_with_jitter_around_it() {
        let hint = Duration::from_millis(800);
        let waits: Vec<Duration> = (0..1_000)
            .map(|seed| Backoff::with_seed(100 * MS, 2_000 * MS, seed).wait(Some(hint)))
            .collect();
        assert!(waits.iter().all(|w| (400 * MS..1_200 * MS).contains(w)));
        let (low, high) = (
            waits.iter().filter(|w| **w < 600 * MS).count(),
            waits.iter().filter(|w| **w >= 1_000 * MS).count(),
        );
        assert!(low > 150 && high > 150, "uniform: {low} low, {high} high");
        let mean = waits.iter().sum::<Duration>() / 1_000;
        assert!((750 * MS..850 * MS).contains(&mean), "{mean:?}");
    }

    #[test]
    fn without_a_hint_the_wait_doubles_up_to_the_cap() {
        let mut b = Backoff::with_seed(100 * MS, 1_000 * MS, 3);
        let steps = [100, 200, 400, 800, 1_000, 1_000];
        for step in steps {
            let w = b.wait(None);
            assert!(
                (step * MS / 2..step * MS * 3 / 2).contains(&w),
                "step {step} ms: {w:?}"
            );
        }
        // A hint in between does not move the doubling.
        let _ = b.wait(Some(10 * MS));
        assert!(b.wait(None) >= 500 * MS);
    }

    #[test]
    fn a_request_refused_again_waits_twice_as_long_up_to_four_times_the_hint() {
        let mut b = Backoff::with_seed(100 * MS, 1_000 * MS, 5);
        for factor in [1, 2, 4, 4, 4] {
            let w = b.wait(Some(100 * MS));
            let base = 100 * MS * factor;
            assert!((base / 2..base * 3 / 2).contains(&w), "×{factor}: {w:?}");
        }
    }

    #[test]
    fn a_hostile_hint_is_capped() {
        let mut b = Backoff::default();
        let w = b.wait(Some(Duration::from_millis(u64::MAX)));
        assert!(w < MAX_HINT * 3 / 2, "{w:?}");
        assert_eq!(
            Backoff::default().wait(Some(Duration::ZERO)),
            Duration::ZERO
        );
    }
}
