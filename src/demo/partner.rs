//! A simulated partner: pulls its durable consumer `partner-<id>`, fetches each stored order
//! through `orders.partner.<id>.get`, decides, and posts its result to
//! `orders.partner.<id>.result`, acknowledging the event only after the hub replied.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actors::protocol::{
    CloudEvent, ErrorCode, EventKind, OrderReply, Subjects, SubmitReply, consumer,
};
use async_nats::Client;
use async_nats::jetstream::{self, AckKind};
use serde::Serialize;
use serde_json::json;

use super::client::{self, CallError, Stop, ack, call};

/// Stored events handled at once per partner.
const CONCURRENCY: usize = 64;

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
        if partner_id == "globex-hotels" {
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
    Posted { confirmed: bool },
    Stale,
}

pub struct Partner {
    pub id: String,
    client: Client,
    subjects: Subjects,
    policy: Policy,
    pub stats: Arc<PartnerStats>,
}

impl Partner {
    /// Connects as NATS user `partner-<id>` and binds its consumer.
    pub async fn start(
        hub_url: &str,
        stream: &str,
        subjects: Subjects,
        id: &str,
        stop: Stop,
    ) -> anyhow::Result<(Arc<PartnerStats>, tokio::task::JoinHandle<()>)> {
        let client = client::connect_role(hub_url, &consumer::partner(id)).await?;
        let durable = client::bind(&client, stream, &consumer::partner(id)).await?;
        let partner = Arc::new(Partner {
            id: id.to_owned(),
            client,
            subjects,
            policy: Policy::of(id),
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

    async fn handle(&self, msg: jetstream::Message) {
        let event = match serde_json::from_slice::<CloudEvent>(&msg.payload) {
            Ok(e) if EventKind::from_type(&e.kind) == Some(EventKind::Stored) => e,
            other => {
                tracing::warn!(partner = %self.id, subject = %msg.subject, ok = other.is_ok(), "not a stored event");
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                return ack(&msg, AckKind::Term).await;
            }
        };
        match self.process(&event.data.order_id).await {
            Ok(Handled::Posted { confirmed: true }) => {
                self.stats.confirmed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Handled::Posted { confirmed: false }) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
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

    /// `get`, decide, `result`.
    async fn process(&self, order_id: &str) -> Result<Handled, CallError> {
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
        let confirmed = self.policy.confirms(&order.order_id);
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
        match call::<SubmitReply>(&self.client, self.subjects.partner_result(&self.id), &body).await
        {
            Ok(reply) if reply.duplicate => Ok(Handled::Stale),
            Ok(_) => Ok(Handled::Posted { confirmed }),
            Err(e) if e.code() == Some(ErrorCode::Conflict.as_str()) => Ok(Handled::Stale),
            Err(e) if e.code() == Some(ErrorCode::NotFound.as_str()) => Ok(Handled::Stale),
            Err(e) => Err(e),
        }
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
}
