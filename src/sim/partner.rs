//! A simulated partner: pulls its durable consumer `partner-<id>`, fetches each stored order
//! through `orders.partner.<id>.get`, decides, and posts its result to
//! `orders.partner.<id>.result`, acknowledging the event only after the hub replied. A partner
//! may hold a share of its answers back until after the order's deadline: the hub then closes
//! those orders as `timeout` and stores the answer, when it comes, as a late result. A partner
//! answers every stored event it receives, also one of an order the hub has closed meanwhile (a
//! partner coming back after an outage): the hub keeps that answer as a late result.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actors::protocol::{ErrorCode, EventKind, EventRef, SubmitReply, consumer};
use async_nats::jetstream::{self, AckKind};
use serde::{Deserialize, Serialize};

use super::client::{CallError, Role, Running, Stop, ack, ask};
use super::ledger::Ledger;

/// Stored events handled at once per partner.
const CONCURRENCY: usize = 64;
/// The partner of the demo's cast that sometimes answers late.
pub const LATE_PARTNER: &str = "globex-hotels";
/// Its `result_timeout` in the demo's in-process hub, so that late answers come within seconds.
pub const LATE_PARTNER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long after its deadline a held-back answer is sent: past the hub's deadline checks (four
/// a second) and the commit of its timeout result.
const LATE_MARGIN: Duration = Duration::from_secs(1);
/// Of the orders whose id hashes to 0 modulo this, the answer is held back (about 2%).
const LATE_ONE_IN: u64 = 50;

/// How a partner answers.
#[derive(Clone, Copy, Debug)]
pub enum Policy {
    ConfirmAll,
    /// Rejects the orders whose id hashes to 0 modulo `n`, confirms the rest.
    RejectOneIn(u64),
}

impl Policy {
    /// The demo's cast: `globex-hotels` is sometimes full; everyone else confirms.
    pub fn of(partner_id: &str) -> Self {
        if partner_id == LATE_PARTNER {
            Self::RejectOneIn(5)
        } else {
            Self::ConfirmAll
        }
    }

    fn confirms(self, order_id: &str) -> bool {
        match self {
            Self::ConfirmAll => true,
            Self::RejectOneIn(n) => !fnv1a(order_id).is_multiple_of(n),
        }
    }
}

/// How a simulated partner behaves.
#[derive(Clone, Copy, Debug)]
pub struct Behaviour {
    pub policy: Policy,
    /// When set, about one answer in [`LATE_ONE_IN`] (by a hash of the order id) waits this long
    /// after the stored event arrived.
    pub hold_back: Option<Duration>,
}

impl Behaviour {
    /// Confirms every order, at once.
    pub const CONFIRM_ALL: Self = Self {
        policy: Policy::ConfirmAll,
        hold_back: None,
    };

    /// The demo's cast; `result_timeout` is the partner's deadline in the hub, and `late` asks
    /// for late answers from [`LATE_PARTNER`].
    pub fn of(partner_id: &str, result_timeout: Duration, late: bool) -> Self {
        Self {
            policy: Policy::of(partner_id),
            hold_back: (late && partner_id == LATE_PARTNER).then(|| result_timeout + LATE_MARGIN),
        }
    }

    fn holds_back(&self, order_id: &str) -> Option<Duration> {
        // A different slice of the hash than the rejections, so late answers are of both kinds.
        self.hold_back
            .filter(|_| (fnv1a(order_id) / 7).is_multiple_of(LATE_ONE_IN))
    }
}

/// FNV-1a: a stable hash, the same in every run and on every machine.
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What a partner did, for the summary.
#[derive(Debug, Default)]
pub struct PartnerStats {
    pub confirmed: AtomicU64,
    pub rejected: AtomicU64,
    /// Answers held back until after the order's deadline.
    pub held: AtomicU64,
    /// Answers the hub stored as late results (held back, or given after the hub closed the
    /// order).
    pub late: AtomicU64,
    /// Events of orders that already had this answer or that the hub does not have (an earlier
    /// run's).
    pub stale: AtomicU64,
    /// Attempts asked again because the hub was busy or silent.
    pub retried: AtomicU64,
    /// Events that were not stored events, or that the hub refused for good.
    pub failed: AtomicU64,
}

#[derive(Serialize)]
struct ResultBody<'a> {
    order_id: &'a str,
    result_id: String,
    outcome: &'a str,
    partner_ref: Option<String>,
    detail: Detail<'a>,
}

/// What the partner says about its answer: what it booked, or why not.
#[derive(Serialize)]
#[serde(untagged)]
enum Detail<'a> {
    Booked {
        product: &'a str,
        amount_minor: i64,
        currency: &'a str,
    },
    Refused {
        reason: &'static str,
    },
}

/// `get`'s body.
#[derive(Serialize)]
struct GetBody<'a> {
    order_id: &'a str,
}

/// `get`'s reply, as far as the partner reads it.
#[derive(Deserialize)]
struct Fetched {
    order: Order,
}

/// The fields of a stored order the partner's answer uses; the others are skipped unread.
#[derive(Debug, Deserialize)]
struct Order {
    order_id: String,
    product: String,
    amount_minor: i64,
    currency: String,
}

enum Handled {
    /// The hub took the answer: as the order's result, or (`late`) as its late result.
    Posted {
        confirmed: bool,
        late: bool,
    },
    /// The answer is held back and sent later by a task of its own.
    Held,
    Stale,
}

/// A simulated partner: NATS user and durable consumer `partner-<id>`.
pub struct Partner {
    id: String,
    role: Role,
    behaviour: Behaviour,
    ledger: Option<Arc<Ledger>>,
    pub stats: Arc<PartnerStats>,
}

impl Partner {
    /// Partner `id` as `role` (connected as `partner-<id>`).
    pub fn new(role: Role, id: &str, behaviour: Behaviour) -> Self {
        Self {
            id: id.to_owned(),
            role,
            behaviour,
            ledger: None,
            stats: Arc::default(),
        }
    }

    /// Tells `ledger` of every stored event and every held-back answer.
    pub fn ledger(mut self, ledger: Arc<Ledger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Binds consumer `partner-<id>` of `stream` and answers its stored events until `stop`.
    pub async fn start(mut self, stream: &str, stop: Stop) -> anyhow::Result<Running> {
        let name = consumer::partner(&self.id);
        let (pull, durable) = self.role.bind(stream, name, CONCURRENCY, stop).await?;
        let partner = Arc::new(self);
        Ok(pull.spawn(durable, move |m| partner.clone().handle(m)))
    }

    fn retried(&self) -> impl FnMut(&CallError, Duration) + '_ {
        |_, _| {
            self.stats.retried.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn handle(self: Arc<Self>, msg: jetstream::Message) {
        let at = Instant::now();
        let event = match EventRef::parse(&msg.payload) {
            Some((EventKind::Stored, e)) => e,
            _ => {
                tracing::warn!(partner = %self.id, subject = %msg.subject, "not a stored event");
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                return ack(&msg, AckKind::Term).await;
            }
        };
        if let Some(ledger) = &self.ledger {
            ledger.stored_event(&event.data.order_id, at);
        }
        let counter = match self.clone().process(&event.data.order_id, at).await {
            Ok(Handled::Posted { late: true, .. }) => &self.stats.late,
            Ok(Handled::Posted {
                confirmed: true, ..
            }) => &self.stats.confirmed,
            Ok(Handled::Posted {
                confirmed: false, ..
            }) => &self.stats.rejected,
            Ok(Handled::Held) => &self.stats.held,
            Ok(Handled::Stale) => &self.stats.stale,
            Err(e) if e.is_retryable() => {
                // Stopped while the hub was busy or silent: the event comes again.
                return ack(&msg, AckKind::Nak(None)).await;
            }
            Err(e) => {
                tracing::warn!(partner = %self.id, order_id = %event.data.order_id, error = %e, "the hub refused");
                &self.stats.failed
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        ack(&msg, AckKind::Ack).await;
    }

    /// `get`, decide, `result` — now, or after holding the answer back (`arrived` is when the
    /// stored event came).
    async fn process(
        self: Arc<Self>,
        order_id: &str,
        arrived: Instant,
    ) -> Result<Handled, CallError> {
        let get = GetBody { order_id };
        let subject = self.role.subjects.partner_get(&self.id);
        let patience = self.role.patience(false);
        let fetched =
            ask::<Fetched>(&self.role.client, subject, &get, &patience, self.retried()).await;
        let order = match fetched {
            Ok(Fetched { order }) => {
                self.role.observer.answer("get ok");
                order
            }
            Err(e) if e.is_retryable() => return Err(e),
            Err(e) => {
                self.role.observer.answer(&format!("get {}", e.label()));
                if e.code() != Some(ErrorCode::NotFound.as_str()) {
                    return Err(e);
                }
                // An order the hub does not have: an earlier run's event.
                self.role.observer.get_not_found(order_id);
                return Ok(Handled::Stale);
            }
        };
        if let Some(delay) = self.behaviour.holds_back(&order.order_id) {
            if let Some(ledger) = &self.ledger {
                ledger.held(&order.order_id);
            }
            tokio::spawn(self.answer_late(order, arrived + delay));
            return Ok(Handled::Held);
        }
        let confirmed = self.behaviour.policy.confirms(&order.order_id);
        match self.post(&order, confirmed).await {
            Ok(reply) if reply.duplicate => Ok(Handled::Stale),
            Ok(reply) => Ok(Handled::Posted {
                confirmed,
                late: reply.status == "late_result_stored",
            }),
            Err(e) if e.code() == Some(ErrorCode::Conflict.as_str()) => Ok(Handled::Stale),
            Err(e) if e.code() == Some(ErrorCode::NotFound.as_str()) => Ok(Handled::Stale),
            Err(e) => Err(e),
        }
    }

    /// Sends a held-back answer at `due`, asking again while the hub is busy or silent, and
    /// tells the ledger whether the hub stored it as a late result.
    async fn answer_late(self: Arc<Self>, order: Order, due: Instant) {
        let answered = tokio::select! {
            () = tokio::time::sleep_until(due.into()) => {
                let confirmed = self.behaviour.policy.confirms(&order.order_id);
                match self.post(&order, confirmed).await {
                    Ok(reply) => {
                        let stored_late = reply.status == "late_result_stored";
                        let counter = match (stored_late, confirmed) {
                            (true, _) => &self.stats.late,
                            (false, true) => &self.stats.confirmed,
                            (false, false) => &self.stats.rejected,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        Some(stored_late)
                    }
                    Err(e) => {
                        if !e.is_retryable() {
                            tracing::warn!(partner = %self.id, order_id = %order.order_id, error = %e, "the hub refused a late answer");
                            self.stats.failed.fetch_add(1, Ordering::Relaxed);
                        }
                        None
                    }
                }
            }
            () = self.role.stop.clone().wait() => None,
        };
        if let Some(ledger) = &self.ledger {
            ledger.answered(&order.order_id, answered);
        }
    }

    /// Posts the answer, asking again while the hub is busy or silent; notes the final answer.
    async fn post(&self, order: &Order, confirmed: bool) -> Result<SubmitReply, CallError> {
        let body = ResultBody {
            order_id: &order.order_id,
            result_id: format!("{}-r-{}", self.id, order.order_id),
            outcome: if confirmed { "confirmed" } else { "rejected" },
            partner_ref: confirmed.then(|| format!("{:06X}", fnv1a(&order.order_id) & 0xff_ffff)),
            detail: if confirmed {
                Detail::Booked {
                    product: &order.product,
                    amount_minor: order.amount_minor,
                    currency: &order.currency,
                }
            } else {
                Detail::Refused {
                    reason: "no availability",
                }
            },
        };
        let subject = self.role.subjects.partner_result(&self.id);
        let patience = self.role.patience(true);
        let posted =
            ask::<SubmitReply>(&self.role.client, subject, &body, &patience, self.retried()).await;
        match &posted {
            Ok(reply) => {
                self.role.observer.answer(&reply.status);
                self.role.observer.result(&order.order_id, &reply.status);
            }
            Err(e) if e.is_retryable() => {}
            Err(e) => self.role.observer.answer(&e.label()),
        }
        posted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globex_rejects_about_one_in_five() {
        let p = Policy::of("globex-hotels");
        let rejected = (0..10_000)
            .filter(|i| !p.confirms(&format!("0190-{i}")))
            .count();
        assert!((1_500..2_500).contains(&rejected), "{rejected}");
        assert!((0..100).all(|i| Policy::of("acme-air").confirms(&i.to_string())));
    }

    #[test]
    fn globex_holds_back_about_one_in_fifty_when_asked() {
        let late = Behaviour::of("globex-hotels", Duration::from_secs(3), true);
        let held: Vec<String> = (0..10_000)
            .map(|i| format!("0190-{i}"))
            .filter(|id| late.holds_back(id).is_some())
            .collect();
        assert!((120..300).contains(&held.len()), "{}", held.len());
        assert!(held.iter().any(|id| late.policy.confirms(id)));
        assert!(held.iter().any(|id| !late.policy.confirms(id)));
        assert_eq!(late.hold_back, Some(Duration::from_secs(4)));
        let on_time = Behaviour::of("globex-hotels", Duration::from_secs(3), false);
        assert!((0..1_000).all(|i| on_time.holds_back(&i.to_string()).is_none()));
        let acme = Behaviour::of("acme-air", Duration::from_secs(3), true);
        assert!(acme.hold_back.is_none());
    }
}
