//! The replication actor's bookkeeping, free of I/O so it can be tested alone: which committed
//! events wait for a fence, which fenced groups wait for the replica, what the probes saw, and
//! when to probe next.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::outbox::{PendingEvent, Waiter};
use crate::protocol::ReplicaStatus;
use crate::wal::{Lsn, Replay};

/// Events held in memory while the replica is behind; beyond this the outbox keeps them and the
/// sweep brings them back once the queue drains.
pub(super) const MAX_WAITING: usize = 50_000;
/// The probe interval while the replica is catching up.
pub(super) const TIGHT_PROBE: Duration = Duration::from_millis(3);
/// The longest interval while events wait and the replica makes no progress.
pub(super) const STALLED_PROBE: Duration = Duration::from_millis(100);
/// The interval after a node did not answer.
pub(super) const FAILED_PROBE: Duration = Duration::from_millis(250);
/// The interval when nothing waits: keeps `status` fresh.
pub(super) const IDLE_PROBE: Duration = Duration::from_secs(1);

/// Commits waiting for one fence: their events, and the callers waiting for the replica.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<PendingEvent>,
    pub waiters: Vec<Waiter>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.events.is_empty() && self.waiters.is_empty()
    }

    /// `newer` goes after this batch's contents.
    fn append(&mut self, newer: Batch) {
        self.events.extend(newer.events);
        self.waiters.extend(newer.waiters);
    }

    /// Answers the waiters whose time is up (`false`), keeps the others.
    fn expire(&mut self, now: Instant) {
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| w.until <= now);
        self.waiters = keep;
        for w in due {
            (w.answer)(false);
        }
    }
}

/// What one probe saw on both nodes.
pub struct ProbeReport {
    /// `pg_current_wal_lsn()`: the batch's fence when it had events.
    pub primary: Result<Lsn, String>,
    pub replica: Result<Replay, String>,
}

/// When to probe next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum NextProbe {
    /// Commits arrived while the last probe ran: fence them at once.
    Now,
    After(Duration),
}

/// What the probes saw.
#[derive(Default)]
struct Observation {
    replica_ok: Option<bool>,
    /// The primary's position at the last probe; `None` while the primary does not answer.
    primary_lsn: Option<Lsn>,
    primary_error: Option<String>,
    /// The replica's position at the last probe; `None` while the replica does not answer.
    replay: Option<Replay>,
    replica_error: Option<String>,
    /// The highest replay position a probe has seen: every commit before it is readable.
    confirmed: Option<Lsn>,
    /// When replay last moved or caught up, for the `reason` text.
    stalled_since: Option<Instant>,
}

pub(super) struct Fences {
    /// `false`: the read node serves a commit as soon as it returns (SQLite, or no replica).
    separate_replica: bool,
    /// Committed, not yet fenced, oldest first.
    unfenced: Batch,
    /// Fenced groups, oldest (lowest fence) first.
    fenced: VecDeque<(Lsn, Batch)>,
    /// Ids of every event in `unfenced`, `fenced` or a running probe's batch.
    held: HashSet<String>,
    /// New commits arrived since the last batch was taken.
    fresh: bool,
    /// The current interval while events wait.
    interval: Duration,
    last: Observation,
}

impl Fences {
    pub(super) fn new(separate_replica: bool) -> Self {
        Self {
            separate_replica,
            unfenced: Batch::default(),
            fenced: VecDeque::new(),
            held: HashSet::new(),
            fresh: false,
            interval: TIGHT_PROBE,
            last: Observation::default(),
        }
    }

    /// Events held until the replica confirms them.
    pub(super) fn waiting(&self) -> usize {
        self.held.len()
    }

    /// Callers waiting for the replica.
    fn waiters(&self) -> usize {
        self.unfenced.waiters.len()
            + self
                .fenced
                .iter()
                .map(|(_, b)| b.waiters.len())
                .sum::<usize>()
    }

    /// Room left for the sweep.
    pub(super) fn room(&self) -> usize {
        MAX_WAITING.saturating_sub(self.held.len())
    }

    pub(super) fn holds(&self, event_id: &str) -> bool {
        self.held.contains(event_id)
    }

    /// New commits need a probe.
    pub(super) fn fresh(&self) -> bool {
        self.fresh
    }

    /// Files committed events and their waiting callers; returns the events that can go out at
    /// once (no separate replica: its callers are answered at once too).
    pub(super) fn accept(
        &mut self,
        events: Vec<PendingEvent>,
        waiters: Vec<Waiter>,
    ) -> Vec<PendingEvent> {
        if !self.separate_replica {
            self.last.replica_ok = Some(true);
            for w in waiters {
                (w.answer)(true);
            }
            return events;
        }
        if !waiters.is_empty() {
            // Waiters are few (each is a request in flight) and never dropped: they are answered
            // by a fence or by their deadline.
            self.unfenced.waiters.extend(waiters);
            self.fresh = true;
        }
        for e in events {
            if self.held.len() >= MAX_WAITING {
                // The row is committed; the sweep will bring it back.
                continue;
            }
            if self.held.insert(e.id.clone()) {
                self.unfenced.events.push(e);
                self.fresh = true;
            }
        }
        Vec::new()
    }

    /// The unfenced commits, for a probe to fence.
    pub(super) fn take_batch(&mut self) -> Batch {
        self.fresh = false;
        self.interval = TIGHT_PROBE;
        std::mem::take(&mut self.unfenced)
    }

    /// Tells every waiting caller whose time is up that the replica has not confirmed.
    pub(super) fn expire(&mut self, now: Instant) {
        self.unfenced.expire(now);
        for (_, batch) in &mut self.fenced {
            batch.expire(now);
        }
    }

    /// Files a probe's report; returns the events the replica now covers, each stamped with its
    /// fence, oldest first.
    pub(super) fn apply(&mut self, batch: Batch, report: ProbeReport) -> Vec<PendingEvent> {
        match report.primary {
            Ok(lsn) => {
                self.last.primary_lsn = Some(lsn);
                self.last.primary_error = None;
                if !batch.is_empty() {
                    self.fenced.push_back((lsn, batch));
                }
            }
            Err(e) => {
                self.last.primary_lsn = None;
                self.last.primary_error = Some(e);
                if !batch.is_empty() {
                    // These commits cannot be fenced yet: they go back in front of newer ones.
                    let newer = std::mem::replace(&mut self.unfenced, batch);
                    self.unfenced.append(newer);
                }
            }
        }
        let replay = match report.replica {
            Ok(r) => r,
            Err(e) => {
                self.last.replica_ok = Some(false);
                self.last.replay = None;
                self.last.replica_error = Some(e);
                return Vec::new();
            }
        };
        let moved = self.last.confirmed.is_none_or(|c| replay.lsn > c);
        if moved || self.fenced.is_empty() {
            self.last.stalled_since = None;
        } else if self.last.stalled_since.is_none() {
            self.last.stalled_since = Some(Instant::now());
        }
        self.last.replica_ok = Some(true);
        self.last.replica_error = None;
        self.last.replay = Some(replay);
        self.last.confirmed = self.last.confirmed.max(Some(replay.lsn));
        let mut out = Vec::new();
        while let Some((fence, group)) = self.fenced.pop_front() {
            if fence > replay.lsn {
                self.fenced.push_front((fence, group));
                break;
            }
            out.extend(group.events.into_iter().map(|mut e| {
                e.lsn = Some(fence);
                e
            }));
            for w in group.waiters {
                (w.answer)(true);
            }
        }
        for e in &out {
            self.held.remove(&e.id);
        }
        out
    }

    /// The next probe after one that released events (`progress`) or not: tight while the
    /// replica makes progress, doubling up to [`STALLED_PROBE`] while it does not, slow after a
    /// failure or when nothing waits.
    pub(super) fn next_probe(&mut self, progress: bool) -> NextProbe {
        if self.fresh {
            self.interval = TIGHT_PROBE;
            return NextProbe::Now;
        }
        let failed = self.last.primary_error.is_some() || self.last.replica_error.is_some();
        NextProbe::After(if self.waiting() + self.waiters() == 0 {
            self.interval = TIGHT_PROBE;
            if failed { FAILED_PROBE } else { IDLE_PROBE }
        } else if failed {
            self.interval = FAILED_PROBE;
            FAILED_PROBE
        } else if progress {
            self.interval = TIGHT_PROBE;
            TIGHT_PROBE
        } else {
            self.interval = (self.interval * 2).clamp(TIGHT_PROBE, STALLED_PROBE);
            self.interval
        })
    }

    /// The highest position the read set has confirmed: every released event is at or before it.
    pub(super) fn confirmed(&self) -> Option<Lsn> {
        self.last.confirmed
    }

    pub(super) fn status(&self) -> ReplicaStatus {
        let waiting = self.held.len() as u64;
        if !self.separate_replica {
            return ReplicaStatus {
                mode: "same-as-primary".into(),
                available: Some(true),
                lag_bytes: Some(0),
                lag_ms: Some(0),
                confirmed_lsn: None,
                events_waiting: waiting,
                reason: None,
                nodes: Vec::new(),
            };
        }
        let replay = self.last.replay;
        let lag_bytes = match (self.last.primary_lsn, replay) {
            (Some(p), Some(r)) => Some(p.0.saturating_sub(r.lsn.0)),
            _ => None,
        };
        ReplicaStatus {
            mode: "postgres".into(),
            available: self.last.replica_ok,
            lag_bytes,
            lag_ms: replay.and_then(|r| r.lag_ms),
            confirmed_lsn: self.last.confirmed.map(|l| l.to_string()),
            events_waiting: waiting,
            reason: self.reason(waiting),
            nodes: Vec::new(),
        }
    }

    /// Why events wait (or would): every problem a probe saw, in words an operator can act on.
    fn reason(&self, waiting: u64) -> Option<String> {
        let mut why = Vec::new();
        if let Some(e) = &self.last.replica_error {
            why.push(format!(
                "the replica does not answer ({e}); events wait until it is back"
            ));
        }
        if self.last.replay.is_some_and(|r| r.paused) {
            why.push("replay is paused on the replica (pg_wal_replay_pause()); run pg_wal_replay_resume()".to_owned());
        }
        if let Some(e) = &self.last.primary_error {
            why.push(format!(
                "the primary does not answer ({e}); {} committed events cannot be fenced until it is back",
                self.unfenced.events.len()
            ));
        }
        if waiting > 0 && why.is_empty() {
            let next = self.fenced.front().map(|(fence, _)| *fence);
            match (next, self.last.replay, self.last.stalled_since) {
                (Some(fence), Some(r), Some(since)) => why.push(format!(
                    "the replica has replayed to {} but not yet past {fence}, for {} ms",
                    r.lsn,
                    since.elapsed().as_millis()
                )),
                _ => why.push(
                    "waiting for the replica to replay past the events' WAL fence".to_owned(),
                ),
            }
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::EventKind;

    fn event(n: u64) -> PendingEvent {
        PendingEvent {
            id: format!("e{n}"),
            order_id: format!("o{n}"),
            user_id: "u".into(),
            partner_id: "p".into(),
            kind: EventKind::Stored,
            outcome: None,
            subject: format!("orders.events.stored.p.o{n}"),
            payload: "{}".into(),
            lsn: None,
        }
    }

    fn replay(lsn: u64) -> Result<Replay, String> {
        Ok(Replay {
            lsn: Lsn(lsn),
            lag_ms: Some(0),
            paused: false,
        })
    }

    fn ids(events: &[PendingEvent]) -> Vec<&str> {
        events.iter().map(|e| e.id.as_str()).collect()
    }

    fn batch_ids(b: &Batch) -> Vec<&str> {
        ids(&b.events)
    }

    /// A waiter that records its answer.
    fn waiter(until: Instant) -> (Waiter, std::sync::Arc<std::sync::Mutex<Option<bool>>>) {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let s = seen.clone();
        let w = Waiter {
            until,
            answer: Box::new(move |ok| *s.lock().unwrap() = Some(ok)),
        };
        (w, seen)
    }

    #[test]
    fn same_node_releases_at_once_and_holds_nothing() {
        let mut f = Fences::new(false);
        let out = f.accept(vec![event(1), event(2)], Vec::new());
        assert_eq!(ids(&out), ["e1", "e2"]);
        assert_eq!(f.waiting(), 0);
        assert_eq!(f.status().mode, "same-as-primary");
    }

    #[test]
    fn a_group_goes_out_once_replay_passes_its_fence_with_the_fence_stamped() {
        let mut f = Fences::new(true);
        assert!(f.accept(vec![event(1), event(2)], Vec::new()).is_empty());
        assert!(f.fresh());
        let batch = f.take_batch();
        // Fenced at 100, replica at 90: held.
        let out = f.apply(
            batch,
            ProbeReport {
                primary: Ok(Lsn(100)),
                replica: replay(90),
            },
        );
        assert!(out.is_empty());
        assert_eq!(f.waiting(), 2);
        assert!(f.status().reason.is_some());
        // A later probe sees replay at 100: released, stamped with the fence.
        let out = f.apply(
            Batch::default(),
            ProbeReport {
                primary: Ok(Lsn(120)),
                replica: replay(100),
            },
        );
        assert_eq!(ids(&out), ["e1", "e2"]);
        assert!(out.iter().all(|e| e.lsn == Some(Lsn(100))));
        assert_eq!(f.waiting(), 0);
        assert_eq!(f.status().lag_bytes, Some(20));
        assert_eq!(f.status().confirmed_lsn.as_deref(), Some("0/64"));
    }

    #[test]
    fn groups_leave_in_fence_order_and_only_as_far_as_replay() {
        let mut f = Fences::new(true);
        f.accept(vec![event(1)], Vec::new());
        let b1 = f.take_batch();
        f.apply(
            b1,
            ProbeReport {
                primary: Ok(Lsn(10)),
                replica: replay(5),
            },
        );
        f.accept(vec![event(2)], Vec::new());
        let b2 = f.take_batch();
        let out = f.apply(
            b2,
            ProbeReport {
                primary: Ok(Lsn(20)),
                replica: replay(15),
            },
        );
        assert_eq!(ids(&out), ["e1"]);
        let out = f.apply(
            Batch::default(),
            ProbeReport {
                primary: Ok(Lsn(20)),
                replica: replay(20),
            },
        );
        assert_eq!(ids(&out), ["e2"]);
    }

    #[test]
    fn a_primary_that_cannot_fence_keeps_the_batch_in_front_of_newer_commits() {
        let mut f = Fences::new(true);
        f.accept(vec![event(1)], Vec::new());
        let batch = f.take_batch();
        f.accept(vec![event(2)], Vec::new());
        let out = f.apply(
            batch,
            ProbeReport {
                primary: Err("down".into()),
                replica: replay(50),
            },
        );
        assert!(out.is_empty());
        assert!(
            f.status()
                .reason
                .unwrap()
                .contains("primary does not answer")
        );
        let batch = f.take_batch();
        assert_eq!(batch_ids(&batch), ["e1", "e2"]);
        let out = f.apply(
            batch,
            ProbeReport {
                primary: Ok(Lsn(60)),
                replica: replay(60),
            },
        );
        assert_eq!(ids(&out), ["e1", "e2"]);
    }

    #[test]
    fn a_replica_that_does_not_answer_releases_nothing_and_says_so() {
        let mut f = Fences::new(true);
        f.accept(vec![event(1)], Vec::new());
        let batch = f.take_batch();
        let out = f.apply(
            batch,
            ProbeReport {
                primary: Ok(Lsn(10)),
                replica: Err("refused".into()),
            },
        );
        assert!(out.is_empty());
        let status = f.status();
        assert_eq!(status.available, Some(false));
        assert!(status.reason.unwrap().contains("replica does not answer"));
        assert_eq!(f.next_probe(false), NextProbe::After(FAILED_PROBE));
    }

    #[test]
    fn a_duplicate_event_is_held_once_and_the_queue_is_bounded() {
        let mut f = Fences::new(true);
        f.accept(vec![event(1), event(1)], Vec::new());
        assert_eq!(f.waiting(), 1);
        assert!(f.holds("e1"));
        f.accept(
            (2..(MAX_WAITING as u64 + 10)).map(event).collect(),
            Vec::new(),
        );
        assert_eq!(f.waiting(), MAX_WAITING);
        assert_eq!(f.room(), 0);
    }

    #[test]
    fn the_cadence_tightens_on_progress_backs_off_on_a_stall_and_idles_when_empty() {
        let mut f = Fences::new(true);
        assert_eq!(f.next_probe(false), NextProbe::After(IDLE_PROBE));
        f.accept(vec![event(1)], Vec::new());
        assert_eq!(
            f.next_probe(false),
            NextProbe::Now,
            "fresh commits are fenced at once"
        );
        let batch = f.take_batch();
        f.apply(
            batch,
            ProbeReport {
                primary: Ok(Lsn(10)),
                replica: replay(5),
            },
        );
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            let NextProbe::After(d) = f.next_probe(false) else {
                panic!("no fresh commits")
            };
            assert!(d >= last && d <= STALLED_PROBE);
            last = d;
        }
        assert_eq!(last, STALLED_PROBE);
        assert_eq!(f.next_probe(true), NextProbe::After(TIGHT_PROBE));
        f.apply(
            Batch::default(),
            ProbeReport {
                primary: Ok(Lsn(10)),
                replica: replay(10),
            },
        );
        assert_eq!(f.next_probe(true), NextProbe::After(IDLE_PROBE));
    }

    #[test]
    fn a_paused_replay_is_named_in_the_reason() {
        let mut f = Fences::new(true);
        f.accept(vec![event(1)], Vec::new());
        let batch = f.take_batch();
        let paused = Ok(Replay {
            lsn: Lsn(1),
            lag_ms: Some(5),
            paused: true,
        });
        f.apply(
            batch,
            ProbeReport {
                primary: Ok(Lsn(10)),
                replica: paused,
            },
        );
        assert!(f.status().reason.unwrap().contains("pg_wal_replay_resume"));
    }

    #[test]
    fn a_waiter_is_answered_when_its_fence_is_passed() {
        let mut f = Fences::new(true);
        let (w, seen) = waiter(Instant::now() + Duration::from_secs(60));
        f.accept(Vec::new(), vec![w]);
        assert!(f.fresh(), "a waiter alone asks for a probe");
        let batch = f.take_batch();
        f.apply(
            batch,
            ProbeReport {
                primary: Ok(Lsn(10)),
                replica: replay(5),
            },
        );
        assert_eq!(
            *seen.lock().unwrap(),
            None,
            "not before replay passes the fence"
        );
        assert_eq!(
            f.next_probe(false),
            NextProbe::After(TIGHT_PROBE * 2),
            "a waiter keeps probing"
        );
        f.apply(
            Batch::default(),
            ProbeReport {
                primary: Ok(Lsn(12)),
                replica: replay(10),
            },
        );
        assert_eq!(*seen.lock().unwrap(), Some(true));
    }

    #[test]
    fn a_waiter_whose_time_is_up_is_told_no_and_forgotten() {
        let mut f = Fences::new(true);
        let now = Instant::now();
        let (early, seen_early) = waiter(now + Duration::from_millis(10));
        let (late, seen_late) = waiter(now + Duration::from_secs(60));
        f.accept(vec![event(1)], vec![early, late]);
        let batch = f.take_batch();
        f.apply(
            batch,
            ProbeReport {
                primary: Ok(Lsn(10)),
                replica: Err("down".into()),
            },
        );
        f.expire(now + Duration::from_secs(1));
        assert_eq!(*seen_early.lock().unwrap(), Some(false));
        assert_eq!(*seen_late.lock().unwrap(), None);
        f.apply(
            Batch::default(),
            ProbeReport {
                primary: Ok(Lsn(10)),
                replica: replay(10),
            },
        );
        assert_eq!(*seen_late.lock().unwrap(), Some(true));
        assert_eq!(*seen_early.lock().unwrap(), Some(false), "answered once");
    }

    #[test]
    fn without_a_separate_replica_waiters_are_answered_at_once() {
        let mut f = Fences::new(false);
        let (w, seen) = waiter(Instant::now());
        f.accept(Vec::new(), vec![w]);
        assert_eq!(*seen.lock().unwrap(), Some(true));
    }
}
