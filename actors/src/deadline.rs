//! DeadlineActor: closes orders whose partner missed `result_timeout`, and refreshes the
//! partners' pending counts from the database. The deadline is a column
//! (`orders.result_deadline`, set when the stored event is released), so it survives restarts; this
//! actor only polls for overdue orders and tells each order's actor to expire, and the order
//! actor's version check makes a second close (another instance, a late partner) harmless. A
//! restarted deadline actor simply scans again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::partners::Partners;
use crate::store::Db;
use crate::supervisor::Orders;

const TICK: Duration = Duration::from_millis(250);
/// How often the partners' pending counts are taken from the database.
const COUNT_EVERY: Duration = Duration::from_secs(1);
/// An order told to expire is not told again for this long.
const RETRY_AFTER: Duration = Duration::from_secs(5);
const BATCH: u64 = 512;

pub enum DeadlineMsg {
    Tick,
}

pub struct DeadlineActor;

pub struct DeadlineArgs {
    pub db: Db,
    pub orders: Orders,
    /// Whose pending counts this actor refreshes from the database, so that admission control
    /// sees what every instance accepted and every partner answered.
    pub partners: Arc<Partners>,
}

pub struct DeadlineState {
    db: Db,
    orders: Orders,
    partners: Arc<Partners>,
    told: HashMap<String, Instant>,
    counted_at: Option<Instant>,
}

impl Actor for DeadlineActor {
    type Msg = DeadlineMsg;
    type State = DeadlineState;
    type Arguments = DeadlineArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: DeadlineArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.cast(DeadlineMsg::Tick)?;
        Ok(DeadlineState {
            db: args.db,
            orders: args.orders,
            partners: args.partners,
            told: HashMap::new(),
            counted_at: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        _msg: DeadlineMsg,
        state: &mut DeadlineState,
    ) -> Result<(), ActorProcessingErr> {
        state.told.retain(|_, at| at.elapsed() < RETRY_AFTER);
        match state.db.overdue(chrono::Utc::now(), BATCH).await {
            Ok(ids) => {
                for id in ids {
                    if state.told.contains_key(&id) {
                        continue;
                    }
                    state.orders.expire(&id).await;
                    state.told.insert(id, Instant::now());
                }
            }
            Err(e) => tracing::debug!(error = %e, "deadline poll failed; retrying"),
        }
        if state
            .counted_at
            .is_none_or(|at| at.elapsed() >= COUNT_EVERY)
        {
            match state.db.pending_counts(state.partners.ids()).await {
                Ok(counts) => state.partners.counted(&counts),
                Err(e) => tracing::debug!(error = %e, "pending count failed; retrying"),
            }
            state.counted_at = Some(Instant::now());
        }
        myself.send_after(TICK, || DeadlineMsg::Tick);
        Ok(())
    }
}
