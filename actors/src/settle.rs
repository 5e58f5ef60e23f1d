//! Settler: publishes each order's settled event, once, the first time every configured
//! auxiliary system (built-in and external) has a record for it and its result event is out.
//!
//! It hears what happened to orders from the writers (an order's result event was just released)
//! and from whoever writes an auxiliary record (the built-in subscribers, the record endpoint), and
//! tallies those hints per order: an order is checked once its tally says the result event is out
//! and each configured system has recorded it, so one check per order, not one per hint. An order
//! whose tally stays short for [`STRAGGLER`] is checked anyway: its other hints went to another
//! instance, or came before a restart. Checks go in batches: the order on the primary (result
//! event out, not settled yet), the records in the auxiliary database. Orders that qualify go to
//! their writer with their settled event, which sets `settled_at` only if it is still empty and
//! the order still at the version checked, so two instances (or a check and a scan) never settle
//! an order twice. A periodic scan of unsettled orders makes up for any hint lost to a crash or a
//! restart.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::backlog::Backlog;
use crate::outbox::{Hint, PendingEvent, SettleCheck};
use crate::protocol::Subjects;
use crate::store::{Db, StoreError};
use crate::writer::{WriterMsg, WriterPool};

/// Most orders checked in one batch.
const BATCH: usize = 512;
/// How often the scan looks at the next page of unsettled orders.
const SCAN_EVERY: Duration = Duration::from_secs(3);
/// How long an order's tally may stay short of due before the order is checked anyway.
const STRAGGLER: Duration = Duration::from_millis(500);
/// How often tallies are looked at for stragglers.
const AGE_EVERY: Duration = Duration::from_millis(100);

pub enum SettleMsg {
    /// Something happened to these orders.
    Hint(SettleCheck),
    /// Check what is pending.
    Flush,
    /// Check the orders whose tally stayed short for [`STRAGGLER`].
    Age,
    /// Look at the next page of unsettled orders.
    Scan,
}

impl From<SettleCheck> for SettleMsg {
    fn from(c: SettleCheck) -> Self {
        Self::Hint(c)
    }
}

impl TryFrom<SettleMsg> for SettleCheck {
    type Error = ();
    fn try_from(m: SettleMsg) -> Result<Self, ()> {
        match m {
            SettleMsg::Hint(c) => Ok(c),
            _ => Err(()),
        }
    }
}

/// The hints an order has had, while it is short of due.
#[derive(Default)]
struct Tally {
    result_out: bool,
    /// Bit `i`: configured system `i` has recorded it.
    recorded: u64,
}

/// Hints tallied per order; an order leaves once it is due, or when it has waited [`STRAGGLER`].
struct Tallies {
    /// Every configured auxiliary system, built-in and external.
    systems: Vec<String>,
    open: HashMap<String, Tally>,
    /// When each order's tally opened, oldest first (an order due meanwhile is no longer open;
    /// its entry leaves as it ages, so this holds at most [`STRAGGLER`]'s worth of hints).
    opened: VecDeque<(Instant, String)>,
}

impl Tallies {
    fn new(systems: Vec<String>) -> Self {
        Self {
            systems,
            open: HashMap::new(),
            opened: VecDeque::new(),
        }
    }

    /// Counts `hint` for `orders`; returns those now due for a check.
    fn hint(&mut self, orders: Vec<String>, hint: &Hint, now: Instant) -> Vec<String> {
        let bit = match hint {
            Hint::ResultOut => None,
            Hint::Recorded(system) => match self.systems.iter().position(|s| s == system) {
                // Only the first 64 systems are tallied; an order with more waits for its check.
                Some(i) if i < 64 => Some(1u64 << i),
                Some(_) => Some(0),
                // Not a configured system: its record changes nothing.
                None => return Vec::new(),
            },
        };
        let all = match self.systems.len() {
            n if n >= 64 => u64::MAX,
            n => (1u64 << n) - 1,
        };
        let mut due = Vec::new();
        for id in orders {
            let tally = match self.open.get_mut(&id) {
                Some(t) => t,
                None => {
                    self.opened.push_back((now, id.clone()));
                    self.open.entry(id.clone()).or_default()
                }
            };
            match bit {
                None => tally.result_out = true,
                Some(b) => tally.recorded |= b,
            }
            if tally.result_out && tally.recorded == all {
                self.open.remove(&id);
                due.push(id);
            }
        }
        due
    }

    /// Closes the tallies opened before `now - STRAGGLER`; returns their orders.
    fn stragglers(&mut self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        while let Some((at, _)) = self.opened.front() {
            if now.duration_since(*at) < STRAGGLER {
                break;
            }
            if let Some((_, id)) = self.opened.pop_front()
                && self.open.remove(&id).is_some()
            {
                out.push(id);
            }
        }
        out
    }
}

pub struct Settler;

pub struct SettlerArgs {
    pub db: Db,
    pub subjects: Subjects,
    /// Every configured auxiliary system, built-in and external.
    pub systems: Vec<String>,
    pub writers: WriterPool,
    /// Told how many orders this settler holds unchecked.
    pub backlog: Arc<Backlog>,
}

pub struct SettlerState {
    db: Db,
    subjects: Subjects,
    writers: WriterPool,
    backlog: Arc<Backlog>,
    tallies: Tallies,
    /// Orders due for a check.
    pending: HashSet<String>,
    flush_scheduled: bool,
    /// Where the scan goes on from.
    scan_after: Option<String>,
}

impl Actor for Settler {
    type Msg = SettleMsg;
    type State = SettlerState;
    type Arguments = SettlerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SettlerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.cast(SettleMsg::Scan)?;
        myself.send_after(AGE_EVERY, || SettleMsg::Age);
        Ok(SettlerState {
            db: args.db,
            subjects: args.subjects,
            tallies: Tallies::new(args.systems),
            writers: args.writers,
            backlog: args.backlog,
            pending: HashSet::new(),
            flush_scheduled: false,
            scan_after: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: SettleMsg,
        state: &mut SettlerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SettleMsg::Hint(SettleCheck { orders, hint }) => {
                let due = state.tallies.hint(orders, &hint, Instant::now());
                state.due(&myself, due)?;
            }
            SettleMsg::Age => {
                let due = state.tallies.stragglers(Instant::now());
                state.due(&myself, due)?;
                myself.send_after(AGE_EVERY, || SettleMsg::Age);
            }
            SettleMsg::Flush => {
                state.flush_scheduled = false;
                let ids: Vec<String> = state.pending.iter().take(BATCH).cloned().collect();
                for id in &ids {
                    state.pending.remove(id);
                }
                if !state.pending.is_empty() {
                    state.flush_scheduled = true;
                    myself.cast(SettleMsg::Flush)?;
                }
                if let Err(e) = state.settle(ids).await {
                    tracing::debug!(error = %e, "settle check failed; the scan retries");
                }
            }
            SettleMsg::Scan => {
                match state
                    .db
                    .unsettled_page(state.scan_after.as_deref(), BATCH as u64)
                    .await
                {
                    Ok(page) => {
                        state.scan_after = page.last().cloned();
                        if let Err(e) = state.settle(page).await {
                            tracing::debug!(error = %e, "settle scan failed; retrying");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "settle scan failed; retrying"),
                }
                myself.send_after(SCAN_EVERY, || SettleMsg::Scan);
            }
        }
        state.backlog.settler_holds(state.pending.len());
        Ok(())
    }
}

impl SettlerState {
    /// Queues `ids` for a check.
    fn due(
        &mut self,
        myself: &ActorRef<SettleMsg>,
        ids: Vec<String>,
    ) -> Result<(), ActorProcessingErr> {
        if ids.is_empty() {
            return Ok(());
        }
        self.pending.extend(ids);
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            myself.cast(SettleMsg::Flush)?;
        }
        Ok(())
    }

    /// Hands the orders of `ids` that are due to their writers with their settled events.
    async fn settle(&self, ids: Vec<String>) -> Result<(), StoreError> {
        let unsettled = self.db.unsettled(&ids).await?;
        if unsettled.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = unsettled.iter().map(|o| o.id.clone()).collect();
        let statuses = self.db.aux_statuses(&ids).await?;
        let now = chrono::Utc::now();
        let mut by_writer: HashMap<usize, Vec<(PendingEvent, i32)>> = HashMap::new();
        for order in unsettled {
            let Some(aux) = due(&self.tallies.systems, statuses.get(&order.id)) else {
                continue;
            };
            let event = PendingEvent::settled(&self.subjects, &order, aux, now);
            by_writer
                .entry(self.writers.index_of(&order.id))
                .or_default()
                .push((event, order.version));
        }
        for (writer, events) in by_writer {
            if let Err(e) = self.writers.get(writer).cast(WriterMsg::Settle(events)) {
                tracing::debug!(error = %e, "writer down; the scan retries these settlements");
            }
        }
        Ok(())
    }
}

/// Each configured system's record status, when every one of them has a record.
fn due(
    systems: &[String],
    records: Option<&BTreeMap<String, String>>,
) -> Option<BTreeMap<String, String>> {
    let empty = BTreeMap::new();
    let records = records.unwrap_or(&empty);
    systems
        .iter()
        .map(|s| records.get(s).map(|status| (s.clone(), status.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn systems() -> Vec<String> {
        ["invoice", "loyalty", "audit"].map(String::from).to_vec()
    }

    #[test]
    fn due_once_every_configured_system_has_a_record() {
        let mut records: BTreeMap<String, String> =
            [("invoice", "invoiced"), ("loyalty", "credited")]
                .into_iter()
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .collect();
        assert_eq!(due(&systems(), Some(&records)), None, "audit is missing");
        assert_eq!(due(&systems(), None), None);
        records.insert("audit".into(), "done".into());
        records.insert("unconfigured".into(), "x".into());
        let aux = due(&systems(), Some(&records)).expect("due");
        assert_eq!(aux.len(), 3, "only configured systems: {aux:?}");
        assert_eq!(aux["audit"], "done");
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn recorded(system: &str) -> Hint {
        Hint::Recorded(system.into())
    }

    #[test]
    fn an_order_is_due_once_its_result_is_out_and_every_system_recorded_it() {
        let mut t = Tallies::new(systems());
        let now = Instant::now();
        assert!(
            t.hint(ids(&["a", "b"]), &recorded("invoice"), now)
                .is_empty()
        );
        assert!(t.hint(ids(&["a"]), &Hint::ResultOut, now).is_empty());
        assert!(
            t.hint(ids(&["a", "b"]), &recorded("loyalty"), now)
                .is_empty()
        );
        assert!(
            t.hint(ids(&["a"]), &recorded("unconfigured"), now)
                .is_empty()
        );
        assert_eq!(
            t.hint(ids(&["a", "b"]), &recorded("audit"), now),
            ids(&["a"])
        );
        assert_eq!(t.hint(ids(&["b"]), &Hint::ResultOut, now), ids(&["b"]));
        assert!(t.open.is_empty(), "a due order's tally is closed");
    }

    #[test]
    fn a_tally_short_of_due_is_checked_after_the_straggler_wait() {
        let mut t = Tallies::new(systems());
        let start = Instant::now();
        t.hint(ids(&["a", "b"]), &Hint::ResultOut, start);
        t.hint(
            ids(&["b", "c"]),
            &recorded("invoice"),
            start + STRAGGLER / 2,
        );
        assert!(t.stragglers(start + STRAGGLER / 2).is_empty());
        assert_eq!(t.stragglers(start + STRAGGLER), ids(&["a", "b"]));
        assert_eq!(t.stragglers(start + STRAGGLER * 2), ids(&["c"]));
        assert!(t.open.is_empty() && t.opened.is_empty());
    }

    #[test]
    fn with_no_systems_the_result_event_alone_makes_an_order_due() {
        let mut t = Tallies::new(Vec::new());
        let now = Instant::now();
        assert_eq!(t.hint(ids(&["a"]), &Hint::ResultOut, now), ids(&["a"]));
        assert!(t.hint(ids(&["a"]), &recorded("invoice"), now).is_empty());
    }

    #[test]
    fn with_no_systems_configured_every_order_is_due() {
        assert_eq!(due(&[], None), Some(BTreeMap::new()));
    }
}
