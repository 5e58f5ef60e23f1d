//! ReplicationActor: releases committed events only once the read node can serve their data.
//!
//! On Postgres it fences each group of committed events with the primary's WAL position
//! (`pg_current_wal_lsn()`, taken after their commits) and releases the group once the replica's
//! `pg_last_wal_replay_lsn()` has passed it: one probe confirms every event committed before the
//! fence. It probes tightly while events wait and once a second otherwise. On SQLite the read node
//! is a read-only pool on the same file, so a commit is readable at once and events pass straight
//! through.
//!
//! A periodic sweep hands over outbox rows nobody is carrying (left by a crash, a NATS outage or a
//! peer instance), oldest first; JetStream's `Nats-Msg-Id` dedupe makes a second publish harmless.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use entities::outbox;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

use crate::protocol::ReplicaStatus;
use crate::relay::RelayMsg;
use crate::store::Db;

/// Events held in memory while the replica is behind; beyond this the outbox keeps them and the
/// sweep brings them back once the queue drains.
const MAX_WAITING: usize = 50_000;
const TIGHT_PROBE: Duration = Duration::from_millis(3);
const IDLE_PROBE: Duration = Duration::from_secs(1);
const SWEEP_EVERY: Duration = Duration::from_secs(3);
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
        Some(Self((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?))
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
    Sweep,
    Status(RpcReplyPort<ReplicaStatus>),
}

pub struct ReplicationActor;

pub struct ReplicationArgs {
    pub db: Db,
    pub relay: ActorRef<RelayMsg>,
}

pub struct ReplicationState {
    db: Db,
    relay: ActorRef<RelayMsg>,
    /// Committed, not yet fenced.
    unfenced: Vec<PendingEvent>,
    /// Fenced groups, oldest first.
    fenced: VecDeque<(Lsn, Vec<PendingEvent>)>,
    /// Ids of every event in `unfenced` or `fenced`.
    held: HashSet<String>,
    probe_scheduled: bool,
    /// The start-up sweep takes every unpublished row, young or old.
    swept_once: bool,
    last: Observation,
}

/// What the last probe saw.
#[derive(Default)]
struct Observation {
    replica_ok: Option<bool>,
    primary_lsn: Option<Lsn>,
    replay_lsn: Option<Lsn>,
    lag_ms: Option<u64>,
    confirmed: Option<Lsn>,
    error: Option<String>,
    at: Option<Instant>,
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
        // Start-up: republish whatever an earlier run left unpublished, then keep sweeping.
        myself.cast(ReplicationMsg::Sweep)?;
        Ok(ReplicationState {
            db: args.db,
            relay: args.relay,
            unfenced: Vec::new(),
            fenced: VecDeque::new(),
            held: HashSet::new(),
            probe_scheduled: false,
            swept_once: false,
            last: Observation::default(),
        })
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
                state.probe_scheduled = false;
                state.probe().await;
                let next = if state.waiting() > 0 { TIGHT_PROBE } else { IDLE_PROBE };
                if state.db.separate_replica || state.waiting() > 0 {
                    state.probe_scheduled = true;
                    myself.send_after(next, || ReplicationMsg::Probe);
                }
            }
            ReplicationMsg::Sweep => {
                state.sweep().await;
                state.kick(&myself);
                myself.send_after(SWEEP_EVERY, || ReplicationMsg::Sweep);
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
        for e in events {
            if self.held.len() >= MAX_WAITING {
                // The row is committed; the sweep will bring it back.
                continue;
            }
            if self.held.insert(e.id.clone()) {
                self.unfenced.push(e);
            }
        }
    }

    /// Probes now if nothing is scheduled.
    fn kick(&mut self, myself: &ActorRef<ReplicationMsg>) {
        if !self.probe_scheduled && !self.held.is_empty() {
            self.probe_scheduled = true;
            let _ = myself.cast(ReplicationMsg::Probe);
        }
    }

    async fn probe(&mut self) {
        if !self.db.separate_replica {
            // Same file (or same server): a commit is readable as soon as it returns.
            self.last.replica_ok = Some(true);
            let mut out: Vec<PendingEvent> = std::mem::take(&mut self.unfenced);
            for (_, group) in self.fenced.drain(..) {
                out.extend(group);
            }
            self.release(out);
            return;
        }
        if !self.unfenced.is_empty() {
            match lsn_of(&self.db.primary, "SELECT pg_current_wal_lsn()::text AS lsn").await {
                Ok(fence) => {
                    self.last.primary_lsn = Some(fence);
                    let group = std::mem::take(&mut self.unfenced);
                    self.fenced.push_back((fence, group));
                }
                Err(e) => {
                    // The primary is down: these commits cannot be fenced yet; try again soon.
                    self.last.error = Some(format!("primary unreachable for the WAL fence: {e}"));
                }
            }
        } else if let Ok(lsn) = lsn_of(&self.db.primary, "SELECT pg_current_wal_lsn()::text AS lsn").await {
            self.last.primary_lsn = Some(lsn);
        }
        match replay_position(&self.db.replica).await {
            Ok((replay, lag_ms, paused)) => {
                self.last.replica_ok = Some(true);
                self.last.replay_lsn = Some(replay);
                self.last.lag_ms = lag_ms;
                self.last.at = Some(Instant::now());
                self.last.error = paused.then(|| "replica replay is paused".to_owned());
                let mut out = Vec::new();
                while self.fenced.front().is_some_and(|(fence, _)| *fence <= replay) {
                    if let Some((fence, group)) = self.fenced.pop_front() {
                        self.last.confirmed = Some(fence);
                        out.extend(group.into_iter().map(|mut e| {
                            e.lsn = Some(fence);
                            e
                        }));
                    }
                }
                self.release(out);
            }
            Err(e) => {
                self.last.replica_ok = Some(false);
                self.last.error = Some(format!("replica unreachable: {e}"));
            }
        }
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

    async fn sweep(&mut self) {
        let cutoff = chrono::Utc::now() - SWEEP_GRACE;
        let room = MAX_WAITING.saturating_sub(self.held.len()) as u64;
        if room == 0 {
            return;
        }
        match self.db.unpublished(room.min(5_000)).await {
            Ok(rows) => {
                let stale: Vec<PendingEvent> = rows
                    .iter()
                    .filter(|r| r.created_at <= cutoff || !self.swept_once)
                    .map(PendingEvent::from)
                    .collect();
                if !stale.is_empty() {
                    tracing::info!(events = stale.len(), "sweep: republishing unpublished outbox rows");
                }
                self.accept(stale);
            }
            Err(e) => tracing::warn!(error = %e, "sweep could not read the outbox"),
        }
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
        let lag_bytes = match (self.last.primary_lsn, self.last.replay_lsn) {
            (Some(p), Some(r)) => Some(p.0.saturating_sub(r.0)),
            _ => None,
        };
        let reason = match (&self.last.error, waiting) {
            (Some(e), _) => Some(e.clone()),
            (None, n) if n > 0 => Some("waiting for the replica to replay past the events' WAL fence".into()),
            _ => None,
        };
        ReplicaStatus {
            mode: "postgres".into(),
            available: self.last.replica_ok,
            lag_bytes,
            lag_ms: self.last.lag_ms,
            confirmed_lsn: self.last.confirmed.map(|l| l.to_string()),
            events_waiting: waiting,
            reason,
        }
    }
}

async fn lsn_of(db: &DatabaseConnection, sql: &str) -> Result<Lsn, String> {
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no row")?;
    let text: String = row.try_get("", "lsn").map_err(|e| e.to_string())?;
    Lsn::parse(&text).ok_or_else(|| format!("bad LSN {text}"))
}

/// The replica's replay position, its replay lag in ms, and whether replay is paused.
async fn replay_position(db: &DatabaseConnection) -> Result<(Lsn, Option<u64>, bool), String> {
    let sql = "SELECT pg_last_wal_replay_lsn()::text AS lsn, \
               CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
                    ELSE (EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp())) * 1000)::bigint END AS lag_ms, \
               pg_is_wal_replay_paused() AS paused";
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no row")?;
    let text: Option<String> = row.try_get("", "lsn").map_err(|e| e.to_string())?;
    let lsn = text.as_deref().and_then(Lsn::parse).ok_or("the read node is not a streaming replica")?;
    let lag: Option<i64> = row.try_get("", "lag_ms").ok().flatten();
    let paused: bool = row.try_get("", "paused").unwrap_or(false);
    Ok((lsn, lag.map(|l| l.max(0) as u64), paused))
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
