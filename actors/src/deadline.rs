//! DeadlineActor: closes orders whose partner missed `result_timeout`. The deadline is a column
//! (`orders.result_deadline`, set when the stored event is released), so it survives restarts; this
//! actor only polls for overdue orders and tells each order's actor to expire, and the order
//! actor's version check makes a second close (another instance, a late partner) harmless. A
//! restarted deadline actor simply scans again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::store::Db;
use crate::supervisor::Orders;

const TICK: Duration = Duration::from_millis(250);
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
}

pub struct DeadlineState {
    db: Db,
    orders: Orders,
    told: HashMap<String, Instant>,
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
            told: HashMap::new(),
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
        myself.send_after(TICK, || DeadlineMsg::Tick);
        Ok(())
    }
}
