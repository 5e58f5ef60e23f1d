//! The run's ledger: which orders this run placed, when, and what has arrived for each of them —
//! the stored event (at the partner), the result event, the settled event, a late answer and its
//! late event (at the gateway). Events of other runs (every durable consumer sees every order's
//! events) are told apart by order id: only ids this run was given by `submit` count.
//!
//! An order stays in memory only while its story is incomplete, so a long run's ledger stays
//! small; what the report needs afterwards is in counters, histograms and a bounded sample.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use tokio::sync::{Semaphore, watch};

/// Orders kept (a uniform sample) for measuring submit → last auxiliary record afterwards.
pub const SAMPLE: usize = 10_000;
/// Submit failures described in the report.
const FAILURES_KEPT: usize = 5;

/// An order this run placed.
#[derive(Clone, Debug)]
pub struct Placed {
    pub order_id: String,
    pub user_id: String,
    /// When its submit was due, on the wall clock (the hub's timestamps are wall-clock times).
    pub sent_at: SystemTime,
}

/// A latency histogram in microseconds, from 1 µs to one hour.
pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).context("creating a latency histogram")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
}

/// What has arrived for an order not known yet (its events beat its submit reply, or it is
/// another run's): the times, kept until the order is known.
#[derive(Clone, Debug, Default)]
struct Early {
    stored: Option<Instant>,
    result: Option<(Instant, String)>,
    settled: Option<Instant>,
    late_event: Option<Instant>,
    held: bool,
    late_stored: bool,
}

/// Flags of what has arrived for a known order (its latencies are recorded on arrival).
mod got {
    pub const STORED: u8 = 1;
    pub const RESULT: u8 = 2;
    pub const SETTLED: u8 = 4;
    pub const LATE_EVENT: u8 = 8;
    /// Its partner holds the answer back (until after the order's deadline).
    pub const HELD: u8 = 16;
    /// Its partner's answer was stored as a late result.
    pub const LATE_STORED: u8 = 32;

    /// The whole story is in: result and settled events, and the late event of a late answer.
    pub fn complete(g: u8) -> bool {
        g & (RESULT | SETTLED) == RESULT | SETTLED
            && g & HELD == 0
            && (g & LATE_STORED == 0 || g & LATE_EVENT != 0)
    }
}

/// A known order whose story is incomplete: small, as a long run holds many of them while the
/// auxiliary systems catch up.
#[derive(Debug)]
struct Track {
    /// When its submit was due: the origin of every latency of this order.
    sent: Instant,
    user_id: Arc<str>,
    got: u8,
}

/// What arrived.
enum Arrival {
    Stored(Instant),
    Result(Instant, String),
    Settled(Instant),
    Late(Instant),
    Held,
    Answered { late: bool },
}

/// Latencies from the submit's due time, in microseconds.
#[derive(Clone, Debug)]
pub struct Latencies {
    pub submit_ack: Histogram<u64>,
    pub stored_event: Histogram<u64>,
    pub result_event: Histogram<u64>,
    pub settled_event: Histogram<u64>,
    pub late_event: Histogram<u64>,
}

impl Latencies {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            submit_ack: histogram()?,
            stored_event: histogram()?,
            result_event: histogram()?,
            settled_event: histogram()?,
            late_event: histogram()?,
        })
    }
}

/// Late answers: held back by a partner until after the order's deadline.
#[derive(Clone, Copy, Debug, Default)]
pub struct LateTally {
    /// Answers held back.
    pub held: u64,
    /// Held answers the hub stored as late results (`late_result_stored`).
    pub stored: u64,
    /// Held answers that still beat the hub's timeout (`result_stored`).
    pub in_time: u64,
    /// Late events of this run's orders seen by the gateway.
    pub events: u64,
}

#[derive(Debug)]
struct State {
    tracks: HashMap<u128, Track>,
    /// Arrivals for order ids not (yet) known: this run's, ahead of their submit reply, or
    /// another run's.
    early: HashMap<u128, Early>,
    /// The run's few user ids, shared by its orders.
    users: HashMap<String, Arc<str>>,
    /// Every order, when they are all checked afterwards.
    placed: Option<Vec<Placed>>,
    sample: Vec<Placed>,
    sample_rng: u64,
    accepted: u64,
    results: u64,
    settled: u64,
    outcomes: BTreeMap<String, u64>,
    latency: Latencies,
    late: LateTally,
    last_accepted: Option<Instant>,
    last_result: Option<Instant>,
    last_settled: Option<Instant>,
    /// Error replies (and requests without a reply) of `submit`, by code, every attempt.
    errors: BTreeMap<String, u64>,
    failed: u64,
    failures: Vec<String>,
    submit_retries: u64,
    redelivered: u64,
    foreign: u64,
    /// Order ids minted before this (UUIDv7 milliseconds, by the hub's clock) belong to earlier
    /// runs: a second before the earliest id this run was given.
    floor_ms: Option<u64>,
    /// No more orders will be placed.
    closed: bool,
}

impl State {
    fn is_foreign(&self, key: u128) -> bool {
        matches!(self.floor_ms, Some(floor) if uuid_ms(key) < floor)
    }

    fn user(&mut self, user_id: String) -> Arc<str> {
        if let Some(u) = self.users.get(&user_id) {
            return u.clone();
        }
        let u: Arc<str> = user_id.as_str().into();
        self.users.insert(user_id, u.clone());
        u
    }
}

/// Shared by the submitting side, the partners and the gateway's listener.
pub struct Ledger {
    state: Mutex<State>,
    /// One moment on both clocks.
    origin: (Instant, SystemTime),
    /// `true` once submitting is over and every accepted order's story is complete.
    drained: watch::Sender<bool>,
    /// Closed loop over whole lifecycles: a slot is given back when an order's result event
    /// arrives.
    slots: Option<Arc<Semaphore>>,
    progress: ProgressBar,
}

/// The ledger's figures once the run is over.
#[derive(Debug)]
pub struct Tally {
    pub placed: Vec<Placed>,
    pub sample: Vec<Placed>,
    pub accepted: u64,
    /// Orders of this run whose result event arrived.
    pub results: u64,
    /// Orders whose whole story arrived (see [`Ledger`]).
    pub settled: u64,
    pub unsettled: Vec<(Placed, String)>,
    pub outcomes: BTreeMap<String, u64>,
    pub latency: Latencies,
    pub late: LateTally,
    pub last_accepted: Option<Instant>,
    pub last_result: Option<Instant>,
    pub last_settled: Option<Instant>,
    pub errors: BTreeMap<String, u64>,
    pub failed: u64,
    pub failures: Vec<String>,
    pub submit_retries: u64,
    /// Events that came again for an order already complete (at-least-once delivery, or an
    /// event the hub published twice).
    pub redelivered: u64,
    /// Events of orders this run did not place.
    pub foreign: u64,
}

/// An order id as a number (ids are UUIDs); `None` for anything else.
fn key(order_id: &str) -> Option<u128> {
    uuid::Uuid::parse_str(order_id).ok().map(|u| u.as_u128())
}

/// The millisecond timestamp of a UUIDv7 order id.
fn uuid_ms(key: u128) -> u64 {
    (key >> 80) as u64
}

impl Ledger {
    /// `keep_all`: remember every order for a check afterwards; `slots`: the closed loop's
    /// lifecycle slots, given back as result events arrive.
    pub fn new(
        progress: ProgressBar,
        keep_all: bool,
        slots: Option<Arc<Semaphore>>,
    ) -> anyhow::Result<Self> {
        let wall = SystemTime::now();
        let state = State {
            tracks: HashMap::new(),
            early: HashMap::new(),
            users: HashMap::new(),
            placed: keep_all.then(Vec::new),
            sample: Vec::new(),
            sample_rng: 0x9e37_79b9_7f4a_7c15,
            accepted: 0,
            results: 0,
            settled: 0,
            outcomes: BTreeMap::new(),
            latency: Latencies::new()?,
            late: LateTally::default(),
            last_accepted: None,
            last_result: None,
            last_settled: None,
            errors: BTreeMap::new(),
            failed: 0,
            failures: Vec::new(),
            submit_retries: 0,
            redelivered: 0,
            foreign: 0,
            floor_ms: None,
            closed: false,
        };
        Ok(Self {
            state: Mutex::new(state),
            origin: (Instant::now(), wall),
            drained: watch::Sender::new(false),
            slots,
            progress,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The wall-clock time of `at`.
    pub fn wall(&self, at: Instant) -> SystemTime {
        let (i0, w0) = self.origin;
        match at.checked_duration_since(i0) {
            Some(d) => w0 + d,
            None => w0 - i0.duration_since(at),
        }
    }

    /// `submit` answered `accepted` at `acked` for an order due at `sent`.
    pub fn accepted(&self, order_id: String, user_id: String, sent: Instant, acked: Instant) {
        let Some(k) = key(&order_id) else {
            return self.submit_failed(format!("`submit` answered with order id {order_id:?}"));
        };
        let mut s = self.lock();
        let s = &mut *s;
        record(
            &mut s.latency.submit_ack,
            acked.saturating_duration_since(sent),
        );
        s.accepted += 1;
        s.last_accepted = Some(s.last_accepted.map_or(acked, |l| l.max(acked)));
        let floor = uuid_ms(k).saturating_sub(1_000);
        s.floor_ms = Some(s.floor_ms.map_or(floor, |f| f.min(floor)));
        let user_id = s.user(user_id);
        let placed = || Placed {
            order_id: order_id.clone(),
            user_id: user_id.to_string(),
            sent_at: self.wall(sent),
        };
        if let Some(all) = &mut s.placed {
            all.push(placed());
        }
        // Algorithm R: every order has the same chance to be in the sample.
        if s.sample.len() < SAMPLE {
            s.sample.push(placed());
        } else {
            s.sample_rng ^= s.sample_rng << 13;
            s.sample_rng ^= s.sample_rng >> 7;
            s.sample_rng ^= s.sample_rng << 17;
            let j = (s.sample_rng % s.accepted) as usize;
            if j < SAMPLE {
                s.sample[j] = placed();
            }
        }
        let mut track = Track {
            sent,
            user_id,
            got: 0,
        };
        if let Some(early) = s.early.remove(&k) {
            let arrivals = [
                early.stored.map(Arrival::Stored),
                early
                    .result
                    .map(|(at, outcome)| Arrival::Result(at, outcome)),
                early.settled.map(Arrival::Settled),
                early.late_event.map(Arrival::Late),
                early.held.then_some(Arrival::Held),
                early
                    .late_stored
                    .then_some(Arrival::Answered { late: true }),
            ];
            for a in arrivals.into_iter().flatten() {
                self.apply(s, &mut track, a);
            }
        }
        self.keep_or_complete(s, k, track);
    }

    /// Records an arrival for a known order: its latency, counts, a lifecycle slot given back.
    fn apply(&self, s: &mut State, track: &mut Track, arrival: Arrival) {
        let since = |at: Instant| at.saturating_duration_since(track.sent);
        let first = |flag: u8| track.got & flag == 0;
        match arrival {
            Arrival::Stored(at) if first(got::STORED) => {
                record(&mut s.latency.stored_event, since(at));
                track.got |= got::STORED;
            }
            Arrival::Result(at, outcome) if first(got::RESULT) => {
                record(&mut s.latency.result_event, since(at));
                *s.outcomes.entry(outcome).or_default() += 1;
                s.results += 1;
                s.last_result = Some(s.last_result.map_or(at, |l| l.max(at)));
                if let Some(slots) = &self.slots {
                    slots.add_permits(1);
                }
                track.got |= got::RESULT;
            }
            Arrival::Settled(at) if first(got::SETTLED) => {
                record(&mut s.latency.settled_event, since(at));
                s.last_settled = Some(s.last_settled.map_or(at, |l| l.max(at)));
                track.got |= got::SETTLED;
            }
            Arrival::Late(at) if first(got::LATE_EVENT) => {
                record(&mut s.latency.late_event, since(at));
                s.late.events += 1;
                track.got |= got::LATE_EVENT;
            }
            Arrival::Held => track.got |= got::HELD,
            Arrival::Answered { late } => {
                track.got &= !got::HELD;
                if late {
                    track.got |= got::LATE_STORED;
                }
            }
            // Delivered again.
            _ => {}
        }
    }

    /// Keeps a known order while its story is incomplete; counts it once complete.
    fn keep_or_complete(&self, s: &mut State, k: u128, track: Track) {
        if got::complete(track.got) {
            s.settled += 1;
            self.progress.set_position(s.settled);
            self.update_drained(s);
        } else {
            s.tracks.insert(k, track);
        }
    }

    /// Records what arrived for `order_id`, wherever the order stands; `false` when the order is
    /// not this run's (or already complete).
    fn observe(&self, order_id: &str, arrival: Arrival) -> bool {
        let mut s = self.lock();
        let s = &mut *s;
        let Some(k) = key(order_id) else {
            s.foreign += 1;
            return false;
        };
        if let Some(mut track) = s.tracks.remove(&k) {
            self.apply(s, &mut track, arrival);
            self.keep_or_complete(s, k, track);
            true
        } else if s.is_foreign(k) {
            s.foreign += 1;
            false
        } else if let Some(early) = s.early.get_mut(&k) {
            note_early(early, arrival);
            true
        } else if s.closed {
            // Every order of this run is known by now: one already complete, delivered again
            // (or another run's, minted since this one started).
            s.redelivered += 1;
            false
        } else {
            let mut early = Early::default();
            note_early(&mut early, arrival);
            s.early.insert(k, early);
            true
        }
    }

    /// The partner received the order's stored event.
    pub fn stored_event(&self, order_id: &str, at: Instant) {
        self.observe(order_id, Arrival::Stored(at));
    }

    /// The gateway received the order's result event.
    pub fn result_event(&self, order_id: &str, outcome: String, at: Instant) {
        self.observe(order_id, Arrival::Result(at, outcome));
    }

    /// The gateway received the order's settled event.
    pub fn settled_event(&self, order_id: &str, at: Instant) {
        self.observe(order_id, Arrival::Settled(at));
    }

    /// The gateway received the order's late event.
    pub fn late_event(&self, order_id: &str, at: Instant) {
        self.observe(order_id, Arrival::Late(at));
    }

    /// A partner holds its answer back until after the order's deadline.
    pub fn held(&self, order_id: &str) {
        if self.observe(order_id, Arrival::Held) {
            self.lock().late.held += 1;
        }
    }

    /// The held answer was sent: `late` when the hub stored it as a late result, `None` when it
    /// could not be delivered at all.
    pub fn answered(&self, order_id: &str, late: Option<bool>) {
        let arrival = Arrival::Answered {
            late: late == Some(true),
        };
        if self.observe(order_id, arrival) {
            let mut s = self.lock();
            match late {
                Some(true) => s.late.stored += 1,
                Some(false) => s.late.in_time += 1,
                None => {}
            }
        }
    }

    /// A submit attempt failed with `code` (an error reply's code, or why there was no reply).
    pub fn submit_error(&self, code: &str) {
        *self.lock().errors.entry(code.to_owned()).or_default() += 1;
    }

    /// An order was not accepted, for good.
    pub fn submit_failed(&self, reason: String) {
        let mut s = self.lock();
        s.failed += 1;
        if s.failures.len() < FAILURES_KEPT {
            s.failures.push(reason);
        }
    }

    pub fn submit_retried(&self) {
        self.lock().submit_retries += 1;
    }

    /// No more orders will be placed.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        self.update_drained(&s);
    }

    fn update_drained(&self, s: &State) {
        if s.closed && s.tracks.is_empty() {
            self.drained.send_replace(true);
        }
    }

    /// Resolves once submitting is over and every accepted order's story is complete.
    pub async fn wait_drained(&self) {
        let mut rx = self.drained.subscribe();
        let _ = rx.wait_for(|drained| *drained).await;
    }

    pub fn progress(&self) -> &ProgressBar {
        &self.progress
    }

    pub fn tally(&self) -> Tally {
        let s = self.lock();
        let mut unsettled: Vec<(Placed, String)> = s
            .tracks
            .iter()
            .map(|(k, t)| {
                let placed = Placed {
                    order_id: uuid::Uuid::from_u128(*k).to_string(),
                    user_id: t.user_id.to_string(),
                    sent_at: self.wall(t.sent),
                };
                (placed, missing(t.got))
            })
            .collect();
        unsettled.sort_by(|a, b| a.0.order_id.cmp(&b.0.order_id));
        // Left over: events of earlier runs, or events of this run's orders that came again after
        // the order was complete.
        let mut foreign = s.foreign;
        let mut redelivered = s.redelivered;
        for (k, early) in &s.early {
            tracing::debug!(order_id = %uuid::Uuid::from_u128(*k), ?early, "events of an order not in flight");
            if s.is_foreign(*k) {
                foreign += 1;
            } else {
                redelivered += 1;
            }
        }
        Tally {
            placed: s.placed.clone().unwrap_or_default(),
            sample: s.sample.clone(),
            accepted: s.accepted,
            results: s.results,
            settled: s.settled,
            unsettled,
            outcomes: s.outcomes.clone(),
            latency: s.latency.clone(),
            late: s.late,
            last_accepted: s.last_accepted,
            last_result: s.last_result,
            last_settled: s.last_settled,
            errors: s.errors.clone(),
            failed: s.failed,
            failures: s.failures.clone(),
            submit_retries: s.submit_retries,
            redelivered,
            foreign,
        }
    }
}

/// Notes an arrival for an order not known yet.
fn note_early(early: &mut Early, arrival: Arrival) {
    match arrival {
        Arrival::Stored(at) => {
            early.stored.get_or_insert(at);
        }
        Arrival::Result(at, outcome) => {
            early.result.get_or_insert((at, outcome));
        }
        Arrival::Settled(at) => {
            early.settled.get_or_insert(at);
        }
        Arrival::Late(at) => {
            early.late_event.get_or_insert(at);
        }
        Arrival::Held => early.held = true,
        Arrival::Answered { late } => {
            early.held = false;
            early.late_stored |= late;
        }
    }
}

/// What an incomplete order still waits for.
fn missing(g: u8) -> String {
    let mut m = Vec::new();
    if g & got::STORED == 0 {
        m.push("stored event");
    }
    if g & got::RESULT == 0 {
        m.push("result event");
    }
    if g & got::SETTLED == 0 {
        m.push("settled event");
    }
    if g & got::HELD != 0 {
        m.push("its partner's held-back answer");
    }
    if g & got::LATE_STORED != 0 && g & got::LATE_EVENT == 0 {
        m.push("late event");
    }
    format!("waits for: {}", m.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> String {
        let id = uuid::Uuid::now_v7().to_string();
        format!("{}{n:08x}", &id[..28])
    }

    #[test]
    fn an_order_completes_once_whatever_the_order_of_arrival() {
        let ledger = Ledger::new(ProgressBar::hidden(), true, None).unwrap();
        let t0 = Instant::now();
        let (a, b) = (id(1), id(2));
        ledger.accepted(a.clone(), "u-1".into(), t0, t0);
        // b's events beat its submit reply; the settled event beats the result event.
        ledger.settled_event(&b, t0);
        ledger.result_event(&b, "rejected".into(), t0);
        ledger.result_event(&a, "confirmed".into(), t0);
        ledger.result_event(&a, "confirmed".into(), t0);
        ledger.settled_event(&a, t0);
        ledger.result_event("00000000-0000-7000-8000-000000000000", "x".into(), t0);
        ledger.accepted(b.clone(), "u-2".into(), t0, t0);
        ledger.close();
        ledger.settled_event(&a, t0);
        let t = ledger.tally();
        assert_eq!((t.accepted, t.results, t.settled), (2, 2, 2));
        assert_eq!(t.outcomes.get("confirmed"), Some(&1));
        assert_eq!(t.outcomes.get("rejected"), Some(&1));
        assert_eq!((t.redelivered, t.foreign), (1, 1));
        assert!(t.unsettled.is_empty());
        assert_eq!(t.latency.settled_event.len(), 2);
    }

    #[test]
    fn a_held_answer_keeps_the_order_open_until_its_late_event() {
        let ledger = Ledger::new(ProgressBar::hidden(), false, None).unwrap();
        let t0 = Instant::now();
        let a = id(3);
        ledger.accepted(a.clone(), "u-1".into(), t0, t0);
        ledger.stored_event(&a, t0);
        ledger.held(&a);
        ledger.result_event(&a, "timeout".into(), t0);
        ledger.settled_event(&a, t0);
        ledger.close();
        assert_eq!(ledger.tally().settled, 0, "the held answer is still out");
        ledger.late_event(&a, t0);
        ledger.answered(&a, Some(true));
        let t = ledger.tally();
        assert_eq!(t.settled, 1);
        assert_eq!((t.late.held, t.late.stored, t.late.events), (1, 1, 1));
        assert!(*ledger.drained.borrow());
    }

    #[test]
    fn lifecycle_slots_come_back_with_result_events() {
        let slots = Arc::new(Semaphore::new(0));
        let ledger = Ledger::new(ProgressBar::hidden(), false, Some(slots.clone())).unwrap();
        let t0 = Instant::now();
        let (a, b) = (id(4), id(5));
        ledger.result_event(&b, "confirmed".into(), t0);
        ledger.accepted(a.clone(), "u".into(), t0, t0);
        ledger.accepted(b, "u".into(), t0, t0);
        assert_eq!(slots.available_permits(), 1, "b's result was already in");
        ledger.result_event(&a, "confirmed".into(), t0);
        ledger.result_event(&a, "confirmed".into(), t0);
        assert_eq!(slots.available_permits(), 2);
    }
}
