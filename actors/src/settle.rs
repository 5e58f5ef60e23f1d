//! Settler: publishes each order's settled event, once, the first time every configured
//! auxiliary system (built-in and external) has a record for it and its result event is out.
//!
//! It hears of candidates from the writers (an order's result event was just released) and from
//! whoever writes an auxiliary record (the built-in subscribers, the record endpoint), coalesces
//! them, and checks them in batches: the order on the primary (result event out, not settled yet),
//! the records in the auxiliary database. Orders that qualify go to their writer with their
//! settled event, which sets `settled_at` only if it is still empty and the order still at the
//! version checked, so two instances (or a check and a scan) never settle an order twice. A
//! periodic scan of unsettled orders makes up for any hint lost to a crash or a restart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::backlog::Backlog;
use crate::outbox::{PendingEvent, SettleCheck};
use crate::protocol::Subjects;
use crate::store::{Db, StoreError};
use crate::writer::{WriterMsg, WriterPool};

/// Most orders checked in one batch.
const BATCH: usize = 512;
/// How often the scan looks at the next page of unsettled orders.
const SCAN_EVERY: Duration = Duration::from_secs(3);

pub enum SettleMsg {
    /// These orders may be due.
    Check(Vec<String>),
    /// Check what is pending.
    Flush,
    /// Look at the next page of unsettled orders.
    Scan,
}

impl From<SettleCheck> for SettleMsg {
    fn from(c: SettleCheck) -> Self {
        Self::Check(c.0)
    }
}

impl TryFrom<SettleMsg> for SettleCheck {
    type Error = ();
    fn try_from(m: SettleMsg) -> Result<Self, ()> {
        match m {
            SettleMsg::Check(ids) => Ok(SettleCheck(ids)),
            _ => Err(()),
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
    systems: Vec<String>,
    writers: WriterPool,
    backlog: Arc<Backlog>,
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
        Ok(SettlerState {
            db: args.db,
            subjects: args.subjects,
            systems: args.systems,
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
            SettleMsg::Check(ids) => {
                state.pending.extend(ids);
                if !state.flush_scheduled {
                    state.flush_scheduled = true;
                    myself.cast(SettleMsg::Flush)?;
                }
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
    /// Hands the orders of `ids` that are due to their writers with their settled events.
    async fn settle(&self, ids: Vec<String>) -> Result<(), StoreError> {
        let unsettled = self.db.unsettled(&ids).await?;
        if unsettled.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = unsettled.iter().map(|(o, _)| o.id.clone()).collect();
        let statuses = self.db.aux_statuses(&ids).await?;
        let now = chrono::Utc::now();
        let mut by_writer: HashMap<usize, Vec<(PendingEvent, i32)>> = HashMap::new();
        for (order, outcome) in unsettled {
            let Some(aux) = due(&self.systems, statuses.get(&order.id)) else {
                continue;
            };
            let event = PendingEvent::settled(&self.subjects, &order, outcome, aux, now);
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

    #[test]
    fn with_no_systems_configured_every_order_is_due() {
        assert_eq!(due(&[], None), Some(BTreeMap::new()));
    }
}
