//! What every order actor shares: the databases, the subjects, the partners, the writers, the
//! counters and the timings.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::link::Link;
use crate::outbox::Committed;
use crate::partners::Partners;
use crate::protocol::Subjects;
use crate::store::Db;
use crate::writer::WriterPool;

/// Timings of the actors; the defaults suit production and tests alike.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// An order's actor stops this long after its last message once its order has a result.
    pub settle_linger: Duration,
    /// Any order's actor stops after this long without messages: an order waiting for its
    /// partner needs no resident actor (its state is in the database, its deadline a column), and
    /// one is loaded again when its result or its deadline comes.
    pub idle_stop: Duration,
    /// How long an endpoint waits for an order actor's answer.
    pub call_timeout: Duration,
    /// How long an order actor waits for its writer's commit.
    pub write_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            settle_linger: Duration::from_millis(500),
            idle_stop: Duration::from_secs(2),
            call_timeout: Duration::from_secs(8),
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// Counters the status endpoint reports.
#[derive(Debug, Default)]
pub struct Metrics {
    actors_live: AtomicU64,
}

impl Metrics {
    pub(crate) fn actor_started(&self) {
        self.actors_live.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn actor_stopped(&self) {
        self.actors_live.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn actors_live(&self) -> u64 {
        self.actors_live.load(Ordering::Relaxed)
    }
}

/// What every order actor shares.
pub struct Context {
    pub db: Db,
    pub subjects: Subjects,
    pub partners: Arc<Partners>,
    pub writers: WriterPool,
    pub metrics: Metrics,
    pub tuning: Tuning,
    /// `ack_after = "replica"` with a replica: every acknowledgement, a repeated one included,
    /// waits until the replica has what it acknowledges.
    pub ack_after_replica: bool,
    /// The replication actor: a repeated answer waits on its fences (see
    /// [`crate::replication::await_replay`]).
    pub replication: Link<Committed>,
}
