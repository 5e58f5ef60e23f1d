//! ReplicationActor: releases committed events only once the read node can serve their data.
//!
//! On Postgres it fences each group of committed events with the primary's WAL position
//! (`pg_current_wal_lsn()`, taken after their commits) and releases the group once the replica's
//! `pg_last_wal_replay_lsn()` has passed it: one probe confirms every event committed before the
//! fence. A probe runs as its own task and reports back, so `status` is answered at once even
//! while a node hangs. The cadence adapts: a probe right after new commits, then every few
//! milliseconds while the replica makes progress, backing off to [`STALLED_PROBE`] while it does
//! not (replay paused, a node down), and once a second when nothing waits. On SQLite the read
//! node is a read-only pool on the same file, so a commit is readable at once and events pass
//! straight through.
//!
//! A periodic sweep hands over outbox rows nobody is carrying (left by a crash, a NATS outage, a
//! primary outage or a peer instance), oldest first; JetStream's `Nats-Msg-Id` dedupe makes a
//! second publish harmless.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use entities::outbox;
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

use crate::protocol::ReplicaStatus;
use crate::relay::RelayMsg;
use crate::store::Db;

/// Events held in memory while the replica is behind; beyond this the outbox keeps them and the
/// sweep brings them back once the queue drains.
const MAX_WAITING: usize = 50_000;
/// The probe interval while the replica is catching up.
const TIGHT_PROBE: Duration = Duration::from_millis(3);
/// The longest interval while events wait and the replica makes no progress.
const STALLED_PROBE: Duration = Duration::from_millis(100);
/// The interval after a node did not answer.
const FAILED_PROBE: Duration = Duration::from_millis(250);
/// The interval when nothing waits: keeps `status` fresh.
const IDLE_PROBE: Duration = Duration::from_secs(1);
/// A node that takes longer than this to answer a probe counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const SWEEP_EVERY: Duration = Duration::from_secs(3);
const SWEEP_TIMEOUT: Duration = Duration::from_secs(2);
/// Rows younger than this are still travelling the normal path.
const SWEEP_GRACE: chrono::Duration = chrono::Duration::seconds(10);

/// A committed outbox event on its way to the stream.
#[derive(Clone, Debug)]
pub struct PendingEvent {
    pub id: String,
    pub order_id: String,
    pub subject: String,
    pub payload: String,
    /// The fence: a primary WAL position at or after the event's commit (Postgres only).
    pub lsn: Option<Lsn>,
}

impl From<&outbox::Model> for PendingEvent {
    fn from(m: &outbox::Model) -> Self {
        Self {
            id: m.id.clone(),
            order_id: m.order_id.clone(),
            subject: m.subject.clone(),
            payload: m.payload.clone(),
            lsn: None,
        }
    }
}

/// A Postgres WAL position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses Postgres' `XXXXXXXX/XXXXXXXX` form.
    pub fn parse(s: &str) -> Option<Self> {
        let (hi, lo) = s.trim().split_once('/')?;
        Some(Self(
            (u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?,
        ))
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

pub enum ReplicationMsg {
    /// Events whose transactions have committed on the primary.
    Committed(Vec<PendingEvent>),
    Probe,
    /// A probe task's findings; `batch` are the events it fenced (or tried to).
    Probed {
        batch: Vec<PendingEvent>,
        report: ProbeReport,
    },
    Sweep,
    /// Unpublished outbox rows the sweep task read.
    Swept(Vec<outbox::Model>),
    Status(RpcReplyPort<ReplicaStatus>),
}

/// What one probe saw on both nodes.
pub struct ProbeReport {
    /// `pg_current_wal_lsn()`: the batch's fence when it had events.
    primary: Result<Lsn, String>,
    replica: Result<Replay, String>,
}

/// The replica's side of a probe.
#[derive(Clone, Copy)]
struct Replay {
    lsn: Lsn,
    lag_ms: Option<u64>,
    paused: bool,
}

pub struct ReplicationActor;

pub struct ReplicationArgs {
    pub db: Db,
    pub relay: ActorRef<RelayMsg>,
}

pub struct ReplicationState {
    db: Db,
    relay: ActorRef<RelayMsg>,
    /// Committed, not yet fenced, oldest first.
    unfenced: Vec<PendingEvent>,
    /// Fenced groups, oldest (lowest fence) first.
    fenced: VecDeque<(Lsn, Vec<PendingEvent>)>,
    /// Ids of every event in `unfenced`, `fenced` or a running probe's batch.
    held: HashSet<String>,
    /// A probe task is running.
    probing: bool,
    /// New commits arrived since the running probe started.
    fresh: bool,
    /// The next probe's timer.
    timer: Option<JoinHandle<Result<(), ractor::MessagingErr<ReplicationMsg>>>>,
    /// The current interval while events wait.
    interval: Duration,
    sweeping: bool,
    /// The start-up sweep takes every unpublished row, young or old.
    swept_once: bool,
    last: Observation,
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

impl Actor for ReplicationActor {
    type Msg = ReplicationMsg;
    type State = ReplicationState;
    type Arguments = ReplicationArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ReplicationArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Start-up: republish whatever an earlier run left unpublished, then keep sweeping; and
        // look at the replica at once, so `status` knows it before the first event.
        myself.cast(ReplicationMsg::Sweep)?;
        if args.db.separate_replica {
            myself.cast(ReplicationMsg::Probe)?;
        }
        Ok(ReplicationState {
            db: args.db,
            relay: args.relay,
            unfenced: Vec::new(),
            fenced: VecDeque::new(),
            held: HashSet::new(),
            probing: false,
            fresh: false,
            timer: None,
            interval: TIGHT_PROBE,
            sweeping: false,
            swept_once: false,
            last: Observation::default(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut ReplicationState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.timer.take() {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: ReplicationMsg,
        state: &mut ReplicationState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ReplicationMsg::Committed(events) => {
                state.accept(events);
                state.kick(&myself);
            }
            ReplicationMsg::Probe => {
                state.timer = None;
                state.start_probe(&myself);
            }
            ReplicationMsg::Probed { batch, report } => {
                state.probing = false;
                let progress = state.apply(batch, report);
                state.schedule(&myself, progress);
            }
            ReplicationMsg::Sweep => {
                state.start_sweep(&myself);
                myself.send_after(SWEEP_EVERY, || ReplicationMsg::Sweep);
            }
            ReplicationMsg::Swept(rows) => {
                state.sweeping = false;
                state.swept(rows);
                state.kick(&myself);
            }
            ReplicationMsg::Status(reply) => {
                let _ = reply.send(state.status());
            }
        }
        Ok(())
    }
}

impl ReplicationState {
    fn waiting(&self) -> usize {
        self.held.len()
    }

    fn accept(&mut self, events: Vec<PendingEvent>) {
        if !self.db.separate_replica {
            // Same file (or same server): a commit is readable as soon as it returns.
            self.last.replica_ok = Some(true);
            self.release(events);
            return;
        }
        for e in events {
            if self.held.len() >= MAX_WAITING {
                // The row is committed; the sweep will bring it back.
                continue;
            }
            if self.held.insert(e.id.clone()) {
                self.unfenced.push(e);
                self.fresh = true;
            }
        }
    }

    /// New events wait: probe now unless a probe is running (its report schedules the next one).
    fn kick(&mut self, myself: &ActorRef<ReplicationMsg>) {
        if !self.fresh || self.probing {
            return;
        }
        self.interval = TIGHT_PROBE;
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        self.start_probe(myself);
    }

    /// Takes the unfenced events and probes both nodes in a task of its own.
    fn start_probe(&mut self, myself: &ActorRef<ReplicationMsg>) {
        if self.probing || !self.db.separate_replica {
            return;
        }
        self.probing = true;
        self.fresh = false;
        let batch = std::mem::take(&mut self.unfenced);
        let primary = self.db.primary.clone();
        let replica = self.db.replica.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            // Fence and replay position are independent reads: the fence is taken after every
            // commit of the batch, and replay is compared with it whichever answers first.
            let (primary, replica) = tokio::join!(
                within(lsn_of(&primary, "SELECT pg_current_wal_lsn()::text AS lsn")),
                within(replay_position(&replica)),
            );
            let _ = myself.cast(ReplicationMsg::Probed {
                batch,
                report: ProbeReport { primary, replica },
            });
        });
    }

    /// Files a probe's report; returns whether any event was released.
    fn apply(&mut self, batch: Vec<PendingEvent>, report: ProbeReport) -> bool {
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
                    self.unfenced.extend(newer);
                }
            }
        }
        let replay = match report.replica {
            Ok(r) => r,
            Err(e) => {
                self.last.replica_ok = Some(false);
                self.last.replay = None;
                self.last.replica_error = Some(e);
                return false;
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
            out.extend(group.into_iter().map(|mut e| {
                e.lsn = Some(fence);
                e
            }));
        }
        let progress = !out.is_empty();
        self.release(out);
        progress
    }

    /// Sets the timer of the next probe.
    fn schedule(&mut self, myself: &ActorRef<ReplicationMsg>, progress: bool) {
        if self.fresh {
            // Commits arrived while the probe ran: fence them now.
            self.interval = TIGHT_PROBE;
            self.start_probe(myself);
            return;
        }
        let failed = self.last.primary_error.is_some() || self.last.replica_error.is_some();
        let next = if self.waiting() == 0 {
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
        };
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        self.timer = Some(myself.send_after(next, || ReplicationMsg::Probe));
    }

    fn release(&mut self, events: Vec<PendingEvent>) {
        if events.is_empty() {
            return;
        }
        for e in &events {
            self.held.remove(&e.id);
        }
        if let Err(e) = self.relay.cast(RelayMsg::Publish(events)) {
            tracing::error!(error = %e, "relay gone; events wait for the sweep");
        }
    }

    /// Reads unpublished outbox rows in a task of its own (the primary may be slow or down).
    fn start_sweep(&mut self, myself: &ActorRef<ReplicationMsg>) {
        let room = MAX_WAITING.saturating_sub(self.held.len()) as u64;
        if self.sweeping || room == 0 {
            return;
        }
        self.sweeping = true;
        let db = self.db.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            let rows =
                match tokio::time::timeout(SWEEP_TIMEOUT, db.unpublished(room.min(5_000))).await {
                    Ok(Ok(rows)) => rows,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "sweep could not read the outbox");
                        Vec::new()
                    }
                    Err(_) => {
                        tracing::warn!("sweep: the primary did not answer in time");
                        Vec::new()
                    }
                };
            let _ = myself.cast(ReplicationMsg::Swept(rows));
        });
    }

    fn swept(&mut self, rows: Vec<outbox::Model>) {
        let cutoff = chrono::Utc::now() - SWEEP_GRACE;
        let stale: Vec<PendingEvent> = rows
            .iter()
            .filter(|r| r.created_at <= cutoff || !self.swept_once)
            .filter(|r| !self.held.contains(&r.id))
            .map(PendingEvent::from)
            .collect();
        if !stale.is_empty() {
            tracing::info!(
                events = stale.len(),
                "sweep: republishing unpublished outbox rows"
            );
        }
        self.accept(stale);
        self.swept_once = true;
    }

    fn status(&self) -> ReplicaStatus {
        let waiting = self.held.len() as u64;
        if !self.db.separate_replica {
            return ReplicaStatus {
                mode: "same-as-primary".into(),
                available: Some(true),
                lag_bytes: Some(0),
                lag_ms: Some(0),
                confirmed_lsn: None,
                events_waiting: waiting,
                reason: None,
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
                self.unfenced.len()
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

/// A probe query, or an error once [`PROBE_TIMEOUT`] has passed.
async fn within<T>(query: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(PROBE_TIMEOUT, query)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} ms", PROBE_TIMEOUT.as_millis())))
}

/// A WAL position a one-row `sql` returns as column `lsn`.
pub(crate) async fn lsn_of(db: &DatabaseConnection, sql: &str) -> Result<Lsn, String> {
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no row")?;
    let text: String = row.try_get("", "lsn").map_err(|e| e.to_string())?;
    Lsn::parse(&text).ok_or_else(|| format!("bad LSN {text}"))
}

/// The replica's replay position alone.
pub(crate) async fn replay_lsn(db: &DatabaseConnection) -> Result<Lsn, String> {
    replay_position(db).await.map(|r| r.lsn)
}

/// The replica's replay position, its replay lag in ms, and whether replay is paused.
async fn replay_position(db: &DatabaseConnection) -> Result<Replay, String> {
    // Lag in ms: 0 when everything received is replayed, else how old the last replayed
    // commit is.
    let sql = "SELECT pg_last_wal_replay_lsn()::text AS lsn, \
               CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0 \
                    ELSE (EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp())) * 1000)::bigint END AS lag_ms, \
               pg_is_wal_replay_paused() AS paused";
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no row")?;
    let text: Option<String> = row.try_get("", "lsn").map_err(|e| e.to_string())?;
    let lsn = text
        .as_deref()
        .and_then(Lsn::parse)
        .ok_or("the read node is not a streaming replica")?;
    let lag: Option<i64> = row.try_get("", "lag_ms").ok().flatten();
    let paused: bool = row.try_get("", "paused").unwrap_or(false);
    Ok(Replay {
        lsn,
        lag_ms: lag.map(|l| l.max(0) as u64),
        paused,
    })
}

#[cfg(test)]
mod tests {
    use super::Lsn;

    #[test]
    fn lsn_round_trip_and_order() {
        let a = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(a.to_string(), "16/B374D848");
        assert!(Lsn::parse("0/1").unwrap() < Lsn::parse("1/0").unwrap());
        assert!(Lsn::parse("nonsense").is_none());
    }
}
