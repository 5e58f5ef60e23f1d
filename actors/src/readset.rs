//! The read nodes and the read set: the standbys that serve reads (the partner's `get`, queries,
//! the auxiliary subscribers), and which of them an event's fence must cover.
//!
//! Every probe of the replication actor asks each read node how far it has replayed. A node
//! that does not answer, or lags the primary by more than `max_lag_bytes`, leaves the read set at
//! once, so events keep flowing without it. It joins again only once it has replayed past the
//! highest position the read set has confirmed: every event released while it was out is
//! readable on it by then. An event is released once every node *in* the read set has replayed
//! its commit (the lowest replay position of the set), and reads go round-robin over the nodes in
//! the set, so the node a read hits has the data of every event released before it.
//!
//! With no separate read node (SQLite, or no `replica_url`), the set is one connection and always
//! in.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::protocol::ReadNodeStatus;
use crate::wal::{Lsn, Replay};
use sea_orm::DatabaseConnection;

/// A read node's lag or replay position not known (yet, or since it stopped answering).
const UNKNOWN: u64 = u64::MAX;

/// One read node: a connection pool and what the last probe found.
#[derive(Debug)]
pub struct ReadNode {
    /// `host:port`, as status shows it.
    pub name: String,
    pub conn: DatabaseConnection,
    in_set: AtomicBool,
    lag_bytes: AtomicU64,
    replay: AtomicU64,
    /// Why it is out of the read set, when it is.
    why_out: Mutex<Option<String>>,
}

/// The read nodes, and which of them serve reads now.
#[derive(Debug)]
pub struct ReadSet {
    nodes: Vec<ReadNode>,
    next: AtomicUsize,
    /// Largest lag a node may have and stay in the set.
    max_lag_bytes: u64,
}

/// What one probe round decided for one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub in_set: bool,
    pub lag_bytes: Option<u64>,
}

/// Whether a node belongs in the read set after a probe. `was_in`: it was in before;
/// `primary`: the primary's position at this probe, if it answered; `confirmed`: the highest
/// position the read set has confirmed so far (every released event is at or before it).
pub(crate) fn verdict(
    was_in: bool,
    probe: Option<Lsn>,
    primary: Option<Lsn>,
    confirmed: Option<Lsn>,
    max_lag_bytes: u64,
) -> Verdict {
    let Some(replay) = probe else {
        return Verdict {
            in_set: false,
            lag_bytes: None,
        };
    };
    let lag_bytes = primary.map(|p| p.0.saturating_sub(replay.0));
    let in_set = match lag_bytes {
        Some(lag) if lag > max_lag_bytes => false,
        // A member stays while it answers within the bound (or while the primary's position is
        // unknown: nothing new is released then anyway).
        _ if was_in => true,
        // A newcomer must have everything released so far, and keep up.
        Some(_) => confirmed.is_none_or(|c| replay >= c),
        None => false,
    };
    Verdict { in_set, lag_bytes }
}

impl ReadSet {
    /// `nodes`: `(name, pool)` of each read node, every one in the set to begin with (the fence
    /// covers them until a probe says otherwise).
    pub fn new(nodes: Vec<(String, DatabaseConnection)>, max_lag_bytes: u64) -> Self {
        Self {
            nodes: nodes
                .into_iter()
                .map(|(name, conn)| ReadNode {
                    name,
                    conn,
                    in_set: AtomicBool::new(true),
                    lag_bytes: AtomicU64::new(UNKNOWN),
                    replay: AtomicU64::new(UNKNOWN),
                    why_out: Mutex::new(None),
                })
                .collect(),
            next: AtomicUsize::new(0),
            max_lag_bytes,
        }
    }

    pub fn nodes(&self) -> &[ReadNode] {
        &self.nodes
    }

    /// The pool a read goes to: the next node of the read set, round-robin; while the set is
    /// empty, the next node of all (its answer may be stale, as events wait meanwhile).
    pub fn pick(&self) -> &DatabaseConnection {
        let n = self.nodes.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.nodes[(start + i) % n])
            .find(|node| node.in_set.load(Ordering::Acquire))
            .map_or(&self.nodes[start % n].conn, |node| &node.conn)
    }

    /// Applies one probe round (`probes[i]` is node `i`'s answer) and returns the read set's
    /// replay position: the lowest of its nodes', the largest replay lag and whether any node's
    /// replay is paused; an error when no node is in the set.
    pub fn update(
        &self,
        primary: Option<Lsn>,
        probes: &[Result<Replay, String>],
        confirmed: Option<Lsn>,
    ) -> Result<Replay, String> {
        let mut set: Option<Replay> = None;
        let mut errors = Vec::new();
        for (node, probe) in self.nodes.iter().zip(probes) {
            let was_in = node.in_set.load(Ordering::Acquire);
            let lsn = probe.as_ref().ok().map(|r| r.lsn);
            let v = verdict(was_in, lsn, primary, confirmed, self.max_lag_bytes);
            node.lag_bytes
                .store(v.lag_bytes.unwrap_or(UNKNOWN), Ordering::Relaxed);
            node.replay
                .store(lsn.map_or(UNKNOWN, |l| l.0), Ordering::Relaxed);
            let why = match probe {
                Err(e) => Some(e.clone()),
                Ok(_) if !v.in_set => Some(match v.lag_bytes {
                    Some(lag) if lag > self.max_lag_bytes => {
                        format!("{lag} bytes behind the primary")
                    }
                    _ => "catching up with what was released while it was out".to_owned(),
                }),
                Ok(_) => None,
            };
            if was_in != v.in_set {
                if v.in_set {
                    tracing::info!(node = %node.name, "read node joins the read set");
                } else {
                    tracing::warn!(node = %node.name, why = why.as_deref().unwrap_or(""), "read node leaves the read set");
                }
            }
            node.in_set.store(v.in_set, Ordering::Release);
            if let Ok(mut w) = node.why_out.lock() {
                *w = why.clone();
            }
            match (v.in_set, probe) {
                (true, Ok(r)) => {
                    set = Some(match set {
                        None => *r,
                        Some(s) => Replay {
                            lsn: s.lsn.min(r.lsn),
                            lag_ms: s.lag_ms.max(r.lag_ms),
                            paused: s.paused || r.paused,
                        },
                    });
                }
                _ => errors.push(format!("{}: {}", node.name, why.unwrap_or_default())),
            }
        }
        set.ok_or_else(|| {
            if self.nodes.len() == 1 {
                errors.pop().unwrap_or_default()
            } else {
                format!("no read node is in the read set ({})", errors.join("; "))
            }
        })
    }

    /// Whether every node of the read set has replayed `target` (asked now); `false` when the
    /// set is empty or a member does not answer.
    pub async fn replayed(&self, target: Lsn) -> bool {
        let members: Vec<&ReadNode> = self
            .nodes
            .iter()
            .filter(|n| n.in_set.load(Ordering::Acquire))
            .collect();
        if members.is_empty() {
            return false;
        }
        let probes =
            futures::future::join_all(members.iter().map(|n| crate::wal::replay_position(&n.conn)))
                .await;
        probes
            .iter()
            .all(|p| p.as_ref().is_ok_and(|r| r.lsn >= target))
    }

    /// Each node as status shows it.
    pub fn status(&self) -> Vec<ReadNodeStatus> {
        let known = |v: u64| (v != UNKNOWN).then_some(v);
        self.nodes
            .iter()
            .map(|n| ReadNodeStatus {
                node: n.name.clone(),
                in_read_set: n.in_set.load(Ordering::Acquire),
                lag_bytes: known(n.lag_bytes.load(Ordering::Relaxed)),
                replay_lsn: known(n.replay.load(Ordering::Relaxed)).map(|l| Lsn(l).to_string()),
                reason: n.why_out.lock().ok().and_then(|w| w.clone()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 1000;

    #[test]
    fn a_node_that_does_not_answer_leaves() {
        let v = verdict(true, None, Some(Lsn(500)), Some(Lsn(400)), MAX);
        assert!(!v.in_set);
        assert_eq!(v.lag_bytes, None);
    }

    #[test]
    fn a_member_stays_within_the_bound_and_leaves_beyond_it() {
        let v = verdict(true, Some(Lsn(100)), Some(Lsn(1100)), Some(Lsn(100)), MAX);
        assert_eq!(
            v,
            Verdict {
                in_set: true,
                lag_bytes: Some(1000)
            }
        );
        let v = verdict(true, Some(Lsn(99)), Some(Lsn(1100)), Some(Lsn(99)), MAX);
        assert!(!v.in_set);
        // The primary's position unknown: a member that answers stays.
        assert!(verdict(true, Some(Lsn(5)), None, Some(Lsn(5)), MAX).in_set);
    }

    #[test]
    fn a_newcomer_joins_only_past_everything_released() {
        // Within the lag bound but behind what the set confirmed: not yet.
        let v = verdict(false, Some(Lsn(450)), Some(Lsn(500)), Some(Lsn(480)), MAX);
        assert!(!v.in_set);
        let v = verdict(false, Some(Lsn(480)), Some(Lsn(500)), Some(Lsn(480)), MAX);
        assert!(v.in_set);
        // Past it but lagging beyond the bound: not yet.
        assert!(!verdict(false, Some(Lsn(480)), Some(Lsn(5000)), Some(Lsn(480)), MAX).in_set);
        // The primary unknown: it waits.
        assert!(!verdict(false, Some(Lsn(480)), None, Some(Lsn(480)), MAX).in_set);
        // Nothing confirmed yet: any node within the bound may join.
        assert!(verdict(false, Some(Lsn(0)), Some(Lsn(10)), None, MAX).in_set);
    }
}
