//! The transactional outbox: [`PendingEvent`], an event made together with the state change it
//! announces, committed in the same transaction as an `outbox` row, and carried from there to the
//! stream. The messages that move events along the pipeline are defined here too, so each stage
//! depends only on this module, not on the stage after it:
//!
//! writer ([`Committed`]) → replication ([`Released`]) → relay → writer (marks them published).

use chrono::{DateTime, Utc};
use entities::{order_results, orders, outbox};

use crate::protocol::{CloudEvent, EventData, EventKind, Subjects, rfc3339};
use crate::store::Unsettled;
use crate::wal::Lsn;

/// A committed (or about to be committed) event on its way to the stream.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingEvent {
    /// The event id, also `Nats-Msg-Id` and the outbox row's key.
    pub id: String,
    pub order_id: String,
    pub user_id: String,
    pub partner_id: String,
    pub kind: EventKind,
    /// The outcome the event announces (result, late and settled events).
    pub outcome: Option<String>,
    pub subject: String,
    /// The CloudEvent, as JSON.
    pub payload: String,
    /// The fence: a primary WAL position at or after the event's commit (Postgres only).
    pub lsn: Option<Lsn>,
}

impl PendingEvent {
    /// The event announcing that `order` reached `version`; result and late events carry the
    /// (late) result.
    pub fn new(
        kind: EventKind,
        subjects: &Subjects,
        order: &orders::Model,
        version: i32,
        result: Option<&order_results::Model>,
        now: DateTime<Utc>,
    ) -> Self {
        let data = EventData {
            order_id: order.id.clone(),
            user_id: order.user_id.clone(),
            partner_id: order.partner_id.clone(),
            version,
            outcome: result.map(|r| r.outcome.clone()),
            partner_ref: result.map(|r| r.partner_ref.clone()),
            aux: None,
        };
        Self::with_data(kind, subjects, data, now)
    }

    /// The settled event of `order` at `version`: its result's `outcome` and each configured
    /// auxiliary system's record status.
    pub fn settled(
        subjects: &Subjects,
        order: &Unsettled,
        aux: std::collections::BTreeMap<String, String>,
        now: DateTime<Utc>,
    ) -> Self {
        let data = EventData {
            order_id: order.id.clone(),
            user_id: order.user_id.clone(),
            partner_id: order.partner_id.clone(),
            version: order.version,
            outcome: Some(order.outcome.clone()),
            partner_ref: None,
            aux: Some(aux),
        };
        Self::with_data(EventKind::Settled, subjects, data, now)
    }

    fn with_data(
        kind: EventKind,
        subjects: &Subjects,
        data: EventData,
        now: DateTime<Utc>,
    ) -> Self {
        let id = uuid::Uuid::now_v7().to_string();
        let (user, order) = (&data.user_id, &data.order_id);
        let subject = match kind {
            EventKind::Stored => subjects.stored_event(&data.partner_id, order),
            EventKind::ResultStored => subjects.result_event(user, order),
            EventKind::Late => subjects.late_event(user, order),
            EventKind::Settled => subjects.settled_event(user, order),
        };
        let (order_id, user_id, partner_id, outcome) = (
            data.order_id.clone(),
            data.user_id.clone(),
            data.partner_id.clone(),
            data.outcome.clone(),
        );
        let payload =
            serde_json::to_string(&CloudEvent::new(kind, id.clone(), rfc3339(&now), data))
                .unwrap_or_default();
        Self {
            id,
            order_id,
            user_id,
            partner_id,
            kind,
            outcome,
            subject,
            payload,
            lsn: None,
        }
    }

    /// The outbox row that commits this event.
    pub fn row(&self, created_at: DateTime<Utc>) -> outbox::Model {
        outbox::Model {
            id: self.id.clone(),
            order_id: self.order_id.clone(),
            subject: self.subject.clone(),
            payload: self.payload.clone(),
            created_at,
            published_at: None,
        }
    }

    /// An unpublished outbox row back on its way (the sweep). `None` for a row whose payload is
    /// not an orderhub event (it stays in the outbox and is logged).
    pub fn from_row(row: &outbox::Model) -> Option<Self> {
        let event: CloudEvent = serde_json::from_str(&row.payload).ok()?;
        Some(Self {
            id: row.id.clone(),
            order_id: row.order_id.clone(),
            user_id: event.data.user_id,
            partner_id: event.data.partner_id,
            kind: EventKind::from_type(&event.kind)?,
            outcome: event.data.outcome,
            subject: row.subject.clone(),
            payload: row.payload.clone(),
            lsn: None,
        })
    }
}

/// A writer's caller waiting for the read node to confirm its commit (`ack_after = "replica"`):
/// answered `true` once the replica has replayed past the commit, `false` once `until` passed
/// without that (the write stays committed; the caller is told to retry).
pub struct Waiter {
    pub until: std::time::Instant,
    pub answer: Box<dyn FnOnce(bool) + Send>,
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter")
            .field("until", &self.until)
            .finish()
    }
}

/// What one commit on the primary produced: its events, and the callers that wait for the read
/// node to confirm it: writer → replication.
#[derive(Debug, Default)]
pub struct Committed {
    pub events: Vec<PendingEvent>,
    pub waiters: Vec<Waiter>,
}

/// Events the read node can serve, to publish now: replication → relay.
#[derive(Debug)]
pub struct Released(pub Vec<PendingEvent>);

/// Orders whose settlement may be due, and why: writer, auxiliary subscribers and the record
/// endpoint → settler.
#[derive(Debug)]
pub struct SettleCheck {
    pub orders: Vec<String>,
    pub hint: Hint,
}

/// What happened to the orders of a [`SettleCheck`], and what the one who tells knows of them:
/// together, the hints of an order say all its settled event says, so the settler makes it
/// without reading the order or its records back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// Their result event is out. For each order whose release left it `notified` (and no
    /// further): the order as its settled event describes it.
    ResultOut(Vec<Unsettled>),
    /// This auxiliary system's record of each was written, with the status it holds: one per
    /// order, in the order of [`SettleCheck::orders`].
    Recorded {
        system: String,
        statuses: Vec<String>,
    },
}

/// Events JetStream has acknowledged: relay → writer, which marks their rows published and moves
/// each order to the status that records the release (`dispatched`, `notified`,
/// `late_notified`).
#[derive(Debug)]
pub struct Published(pub Vec<PendingEvent>);

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> orders::Model {
        let mut o = crate::testing::order("0190c9d2-0000-7000-8000-000000000001", Utc::now());
        (o.request_id, o.amount_minor, o.currency) = ("r-1".into(), 100, "CNY".into());
        o
    }

    #[test]
    fn a_swept_row_comes_back_as_the_same_event() {
        let subjects = Subjects::new("orders");
        let now = Utc::now();
        for kind in [EventKind::Stored, EventKind::ResultStored, EventKind::Late] {
            let event = PendingEvent::new(kind, &subjects, &order(), 1, None, now);
            let back = PendingEvent::from_row(&event.row(now)).expect("an orderhub event");
            assert_eq!(back, event);
        }
    }

    #[test]
    fn a_foreign_row_is_not_an_event() {
        let subjects = Subjects::new("orders");
        let now = Utc::now();
        let mut row =
            PendingEvent::new(EventKind::Stored, &subjects, &order(), 1, None, now).row(now);
        row.payload = "{\"hello\":1}".into();
        assert!(PendingEvent::from_row(&row).is_none());
    }
}
