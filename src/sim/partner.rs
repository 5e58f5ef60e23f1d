//! A simulated partner: pulls its durable consumer `partner-<id>`, fetches each stored order
//! through `orders.partner.<id>.get`, decides, and posts its result to
//! `orders.partner.<id>.result`, acknowledging the event only after the hub replied. A partner
//! may hold a share of its answers back until after the order's deadline: the hub then closes
//! those orders as `timeout` and stores the answer, when it comes, as a late result.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actors::protocol::{
    CloudEvent, ErrorCode, EventKind, OrderReply, OrderView, Subjects, SubmitReply, consumer,
};
use async_nats::Client;
use async_nats::jetstream::{self, AckKind};
use serde::Serialize;
use serde_json::json;

use super::client::{self, CallError, Stop, ack, call};
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
/// Attempts at delivering a held-back answer while the hub is busy or silent.
const LATE_ATTEMPTS: u32 = 20;

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
    /// Held-back answers the hub stored as late results.
    pub late: AtomicU64,
    /// Events of orders that already had a result or are not this partner's (earlier runs).
    pub stale: AtomicU64,
    /// Events handed back to be redelivered because the hub was busy or silent.
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
    detail: serde_json::Value,
}

enum Handled {
    Posted {
        confirmed: bool,
    },
    /// The answer is held back and sent later by a task of its own.
    Held,
    Stale,
}

pub struct Partner {
    pub id: String,
    client: Client,
    subjects: Subjects,
    behaviour: Behaviour,
    ledger: Arc<Ledger>,
    stop: Stop,
    pub stats: Arc<PartnerStats>,
}

impl Partner {
    /// Connects as NATS user `partner-<id>` and binds its consumer.
    pub async fn start(
        hub_url: &str,
        stream: &str,
        subjects: Subjects,
        id: &str,
        behaviour: Behaviour,
        ledger: Arc<Ledger>,
        stop: Stop,
    ) -> anyhow::Result<(Arc<PartnerStats>, tokio::task::JoinHandle<()>)> {
        let client = client::connect_role(hub_url, &consumer::partner(id)).await?;
        let durable = client::bind(&client, stream, &consumer::partner(id)).await?;
        let partner = Arc::new(Partner {
            id: id.to_owned(),
            client,
            subjects,
            behaviour,
            ledger,
            stop: stop.clone(),
            stats: Arc::default(),
        });
        let stats = partner.stats.clone();
        let task = tokio::spawn(async move {
            let name = consumer::partner(&partner.id);
            let handle = |m| {
                let p = partner.clone();
                async move { p.handle(m).await }
            };
            if let Err(e) = client::consume(durable, &name, CONCURRENCY, stop, handle).await {
                tracing::error!(partner = %partner.id, error = format!("{e:#}"), "partner simulator stopped");
            }
            let _ = partner.client.flush().await;
        });
        Ok((stats, task))
    }

    async fn handle(self: Arc<Self>, msg: jetstream::Message) {
        let at = Instant::now();
        let event = match serde_json::from_slice::<CloudEvent>(&msg.payload) {
            Ok(e)
                if e.source == "orderhub"
                    && EventKind::from_type(&e.kind) == Some(EventKind::Stored) =>
            {
                e
            }
            other => {
                tracing::warn!(partner = %self.id, subject = %msg.subject, ok = other.is_ok(), "not a stored event");
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                return ack(&msg, AckKind::Term).await;
            }
        };
        self.ledger.stored_event(&event.data.order_id, at);
        match self.clone().process(&event.data.order_id, at).await {
            Ok(Handled::Posted { confirmed: true }) => {
                self.stats.confirmed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Handled::Posted { confirmed: false }) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Handled::Held) => {
                self.stats.held.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Handled::Stale) => {
                self.stats.stale.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.is_retryable() => {
                self.stats.retried.fetch_add(1, Ordering::Relaxed);
                return ack(&msg, AckKind::Nak(Some(Duration::from_millis(500)))).await;
            }
            Err(e) => {
                tracing::warn!(partner = %self.id, order_id = %event.data.order_id, error = %e, "the hub refused");
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        ack(&msg, AckKind::Ack).await;
    }

    /// `get`, decide, `result` — now, or after holding the answer back (`arrived` is when the
    /// stored event came).
    async fn process(
        self: Arc<Self>,
        order_id: &str,
        arrived: Instant,
    ) -> Result<Handled, CallError> {
        let get = json!({ "order_id": order_id });
        let order =
            match call::<OrderReply>(&self.client, self.subjects.partner_get(&self.id), &get).await
            {
                Ok(OrderReply { order }) => order,
                Err(e) if e.code() == Some(ErrorCode::NotFound.as_str()) => {
                    return Ok(Handled::Stale);
                }
                Err(e) => return Err(e),
            };
        if order.version > 2 {
            // Redelivered after the answer went in (or the hub closed it already).
            return Ok(Handled::Stale);
        }
        if let Some(delay) = self.behaviour.holds_back(&order.order_id) {
            self.ledger.held(&order.order_id);
            tokio::spawn(self.answer_late(order, arrived + delay));
            return Ok(Handled::Held);
        }
        let confirmed = self.behaviour.policy.confirms(&order.order_id);
        match self.post(&order, confirmed).await {
            Ok(reply) if reply.duplicate => Ok(Handled::Stale),
            Ok(_) => Ok(Handled::Posted { confirmed }),
            Err(e) if e.code() == Some(ErrorCode::Conflict.as_str()) => Ok(Handled::Stale),
            Err(e) if e.code() == Some(ErrorCode::NotFound.as_str()) => Ok(Handled::Stale),
            Err(e) => Err(e),
        }
    }

    /// Sends a held-back answer at `due`, retrying while the hub is busy or silent, and tells
    /// the ledger whether the hub stored it as a late result.
    async fn answer_late(self: Arc<Self>, order: OrderView, due: Instant) {
        let stopped = self.stop.clone().wait();
        tokio::pin!(stopped);
        tokio::select! {
            () = tokio::time::sleep_until(due.into()) => {}
            () = &mut stopped => return self.ledger.answered(&order.order_id, None),
        }
        let confirmed = self.behaviour.policy.confirms(&order.order_id);
        let mut late = None;
        for _ in 0..LATE_ATTEMPTS {
            match self.post(&order, confirmed).await {
                Ok(reply) => {
                    let stored_late = reply.status == "late_result_stored";
                    let counter = match (stored_late, confirmed) {
                        (true, _) => &self.stats.late,
                        (false, true) => &self.stats.confirmed,
                        (false, false) => &self.stats.rejected,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    late = Some(stored_late);
                    break;
                }
                Err(e) if e.is_retryable() => {
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        () = &mut stopped => break,
                    }
                }
                Err(e) => {
                    tracing::warn!(partner = %self.id, order_id = %order.order_id, error = %e, "the hub refused a late answer");
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        self.ledger.answered(&order.order_id, late);
    }

    async fn post(&self, order: &OrderView, confirmed: bool) -> Result<SubmitReply, CallError> {
        let body = ResultBody {
            order_id: &order.order_id,
            result_id: format!("{}-r-{}", self.id, order.order_id),
            outcome: if confirmed { "confirmed" } else { "rejected" },
            partner_ref: confirmed.then(|| format!("{:06X}", fnv1a(&order.order_id) & 0xff_ffff)),
            detail: if confirmed {
                json!({ "product": order.product, "amount_minor": order.amount_minor, "currency": order.currency })
            } else {
                json!({ "reason": "no availability" })
            },
        };
        call::<SubmitReply>(&self.client, self.subjects.partner_result(&self.id), &body).await
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
