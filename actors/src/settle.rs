//! Settler: publishes each order's settled event, once, the first time every configured
//! auxiliary system (built-in and external) has a record for it and its result event is out.
//!
//! It hears what happened to orders from the writers (an order's result event was just released)
//! and from whoever writes an auxiliary record (the built-in subscribers, the record endpoint), and
//! tallies those hints per order, with what each says: the writer, the order as the result event
//! described it; each record, its status. An order is due once its tally says the result event
//! is out and each configured system has recorded it. Its hints then hold everything its settled
//! event says, so it goes to its writer at once, read from nowhere. An order whose tally stays
//! short for [`STRAGGLER`] is checked by reading it back: its other hints went to another
//! instance, or came before a restart. So is a due order whose hints did not say all (its
//! release found a late result waiting). Checks go in batches: the order on the primary (result
//! event out, not settled yet), the records in the auxiliary database.
//!
//! The writer sets `settled_at` only if it is still empty and the order still at the version its
//! settled event was made for, so two instances (or a hint and a scan) never settle an order
//! twice, and an order that moved on meanwhile (a late result) is left to a check. A periodic
//! scan of unsettled orders makes up for any hint lost to a crash or a restart.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::backlog::Backlog;
use crate::outbox::{Hint, PendingEvent, SettleCheck};
use crate::protocol::Subjects;
use crate::store::{Db, StoreError, Unsettled};
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

/// The hints an order has had, while it is short of due, and what they said.
#[derive(Default)]
struct Tally {
    result_out: bool,
    /// Bit `i`: configured system `i` has recorded it.
    recorded: u64,
    /// The order, as the hint that its result event is out described it.
    order: Option<Unsettled>,
    /// What configured system `i` recorded, at `i` (empty until a record's hint).
    statuses: Vec<Option<String>>,
}

/// An order due for its settlement.
#[derive(Debug, PartialEq)]
enum Due {
    /// Its hints said all its settled event says: the order, and each system's status.
    Known(Unsettled, BTreeMap<String, String>),
    /// To be read back first.
    Check(String),
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

    /// Counts `hint` for `orders`; returns those now due.
    fn hint(&mut self, orders: Vec<String>, hint: Hint, now: Instant) -> Vec<Due> {
        // What the hint says of the order at each position of `orders`.
        enum Said {
            ResultOut(HashMap<String, Unsettled>),
            Recorded(usize, u64, Vec<String>),
        }
        let mut said = match hint {
            Hint::ResultOut(known) => {
                Said::ResultOut(known.into_iter().map(|o| (o.id.clone(), o)).collect())
            }
            Hint::Recorded { system, statuses } => {
                match self.systems.iter().position(|s| *s == system) {
                    // Only the first 64 systems are tallied; an order with more waits for its
                    // check.
                    Some(i) => Said::Recorded(i, if i < 64 { 1u64 << i } else { 0 }, statuses),
                    // Not a configured system: its record changes nothing.
                    None => return Vec::new(),
                }
            }
        };
        let all = match self.systems.len() {
            n if n >= 64 => u64::MAX,
            n => (1u64 << n) - 1,
        };
        let mut due = Vec::new();
        for (at, id) in orders.into_iter().enumerate() {
            let tally = match self.open.get_mut(&id) {
                Some(t) => t,
                None => {
                    self.opened.push_back((now, id.clone()));
                    self.open.entry(id.clone()).or_default()
                }
            };
            match &mut said {
                Said::ResultOut(known) => {
                    tally.result_out = true;
                    tally.order = known.remove(&id);
                }
                Said::Recorded(i, bit, statuses) => {
                    tally.recorded |= *bit;
                    if tally.statuses.len() <= *i {
                        tally.statuses.resize(self.systems.len(), None);
                    }
                    tally.statuses[*i] = statuses.get_mut(at).map(std::mem::take);
                }
            }
            if tally.result_out && tally.recorded == all {
                let tally = self.open.remove(&id).unwrap_or_default();
                due.push(tally.due(id, &self.systems));
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

impl Tally {
    /// What is known of order `id` now that it is due.
    fn due(self, id: String, systems: &[String]) -> Due {
        let statuses: Option<BTreeMap<String, String>> = systems
            .iter()
            .zip(self.statuses.into_iter().chain(std::iter::repeat(None)))
            .map(|(system, status)| Some((system.clone(), status?)))
            .collect();
        match (self.order, statuses) {
            (Some(order), Some(aux)) if order.id == id => Due::Known(order, aux),
            _ => Due::Check(id),
        }
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
                let mut known = Vec::new();
                let mut check = Vec::new();
                for due in state.tallies.hint(orders, hint, Instant::now()) {
                    match due {
                        Due::Known(order, aux) => known.push((order, aux)),
                        Due::Check(id) => check.push(id),
                    }
                }
                state.hand_over(known);
                state.check(&myself, check)?;
            }
            SettleMsg::Age => {
                let due = state.tallies.stragglers(Instant::now());
                state.check(&myself, due)?;
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
    fn check(
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
        let due = unsettled
            .into_iter()
            .filter_map(|order| {
                let aux = due(&self.tallies.systems, statuses.get(&order.id))?;
                Some((order, aux))
            })
            .collect();
        self.hand_over(due);
        Ok(())
    }

    /// Hands each order to its writer with its settled event, made for the order's version.
    fn hand_over(&self, due: Vec<(Unsettled, BTreeMap<String, String>)>) {
        if due.is_empty() {
            return;
        }
        let now = chrono::Utc::now();
        let mut by_writer: HashMap<usize, Vec<(PendingEvent, i32)>> = HashMap::new();
        for (order, aux) in due {
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

    /// A record of `system` for each of `orders`, each with a status of its own.
    fn recorded(system: &str, orders: &[&str]) -> (Vec<String>, Hint) {
        let statuses = orders.iter().map(|o| format!("{system}:{o}")).collect();
        let system = system.to_owned();
        (ids(orders), Hint::Recorded { system, statuses })
    }

    /// The result events of `orders` are out; the writer knew those of `known`.
    fn result_out(orders: &[&str], known: &[&str]) -> (Vec<String>, Hint) {
        let known = known
            .iter()
            .map(|id| Unsettled {
                id: id.to_string(),
                user_id: format!("u-{id}"),
                partner_id: "acme-air".into(),
                version: 4,
                outcome: "confirmed".into(),
            })
            .collect();
        (ids(orders), Hint::ResultOut(known))
    }

    fn hint(t: &mut Tallies, (orders, hint): (Vec<String>, Hint), now: Instant) -> Vec<Due> {
        t.hint(orders, hint, now)
    }

    fn checks(v: &[&str]) -> Vec<Due> {
        v.iter().map(|id| Due::Check(id.to_string())).collect()
    }

    #[test]
    fn an_order_is_due_once_its_result_is_out_and_every_system_recorded_it() {
        let mut t = Tallies::new(systems());
        let now = Instant::now();
        assert!(hint(&mut t, recorded("invoice", &["a", "b"]), now).is_empty());
        assert!(hint(&mut t, result_out(&["a"], &[]), now).is_empty());
        assert!(hint(&mut t, recorded("loyalty", &["a", "b"]), now).is_empty());
        assert!(hint(&mut t, recorded("unconfigured", &["a"]), now).is_empty());
        assert_eq!(
            hint(&mut t, recorded("audit", &["a", "b"]), now),
            checks(&["a"])
        );
        assert_eq!(hint(&mut t, result_out(&["b"], &[]), now), checks(&["b"]));
        assert!(t.open.is_empty(), "a due order's tally is closed");
    }

    #[test]
    fn hints_that_say_all_make_the_settled_event_without_a_read() {
        let mut t = Tallies::new(systems());
        let now = Instant::now();
        // The writer knew `a` and `c`; `b`'s release found a late result waiting.
        assert!(hint(&mut t, result_out(&["a", "b", "c"], &["a", "c"]), now).is_empty());
        assert!(hint(&mut t, recorded("invoice", &["c", "b", "a"]), now).is_empty());
        assert!(hint(&mut t, recorded("audit", &["b", "a"]), now).is_empty());
        let due = hint(&mut t, recorded("loyalty", &["a", "b"]), now);
        let [Due::Known(order, aux), Due::Check(b)] = &due[..] else {
            panic!("a known, b to check: {due:?}");
        };
        assert_eq!(b, "b");
        assert_eq!((order.id.as_str(), order.user_id.as_str()), ("a", "u-a"));
        assert_eq!((order.version, order.outcome.as_str()), (4, "confirmed"));
        let expected: BTreeMap<String, String> = systems()
            .into_iter()
            .map(|s| (s.clone(), format!("{s}:a")))
            .collect();
        assert_eq!(aux, &expected, "each system's own status for a");
        assert!(t.stragglers(now + STRAGGLER).contains(&"c".to_owned()));
    }

    #[test]
    fn a_later_record_of_a_system_replaces_its_status() {
        let mut t = Tallies::new(vec!["audit".into()]);
        let now = Instant::now();
        let first = Hint::Recorded {
            system: "audit".into(),
            statuses: vec!["pending".into()],
        };
        assert!(t.hint(ids(&["a"]), first, now).is_empty());
        let again = Hint::Recorded {
            system: "audit".into(),
            statuses: vec!["done".into()],
        };
        assert!(t.hint(ids(&["a"]), again, now).is_empty());
        let due = hint(&mut t, result_out(&["a"], &["a"]), now);
        let [Due::Known(_, aux)] = &due[..] else {
            panic!("known: {due:?}");
        };
        assert_eq!(aux["audit"], "done");
    }

    #[test]
    fn a_tally_short_of_due_is_checked_after_the_straggler_wait() {
        let mut t = Tallies::new(systems());
        let start = Instant::now();
        hint(&mut t, result_out(&["a", "b"], &["a", "b"]), start);
        hint(
            &mut t,
            recorded("invoice", &["b", "c"]),
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
        let due = hint(&mut t, result_out(&["a", "b"], &["a"]), now);
        let [Due::Known(order, aux), Due::Check(b)] = &due[..] else {
            panic!("a known, b to check: {due:?}");
        };
        assert_eq!((order.id.as_str(), b.as_str()), ("a", "b"));
        assert!(aux.is_empty());
        assert!(hint(&mut t, recorded("invoice", &["a"]), now).is_empty());
    }

    #[test]
    fn with_no_systems_configured_every_order_is_due() {
        assert_eq!(due(&[], None), Some(BTreeMap::new()));
    }
}
