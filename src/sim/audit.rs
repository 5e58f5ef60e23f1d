//! A simulated external auxiliary system (NATS user `aux`): pulls its durable consumer
//! `aux-<system>` and, for every result event, writes its record through
//! `orders.aux.<system>.record`, acknowledging after the hub replied. A late event (a partner's
//! answer after the hub closed the order as `timeout`) replaces the record with one of the late
//! outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actors::protocol::{ErrorCode, EventKind, EventRef, RecordReply, consumer};
use async_nats::jetstream::{self, AckKind};
use serde::Serialize;

use super::client::{Role, Running, Stop, ack, ask};

/// The NATS user every external auxiliary system connects as.
pub const AUX_USER: &str = "aux";
/// Events handled at once: each waits for the hub's answer to its record (after the replica has
/// it), so this many in flight keep pace with a few thousand orders a second.
const CONCURRENCY: usize = 256;

#[derive(Debug, Default)]
pub struct AuditStats {
    pub recorded: AtomicU64,
    /// Records replaced after a late event.
    pub late: AtomicU64,
    /// Orders the hub does not know (an earlier run's events after its data was removed).
    pub stale: AtomicU64,
    /// Attempts asked again because the hub was busy or silent.
    pub retried: AtomicU64,
    pub failed: AtomicU64,
}

/// A simulated external auxiliary system (NATS user `aux`, durable consumer `aux-<system>`).
pub struct Auditor {
    system: String,
    role: Role,
    pub stats: Arc<AuditStats>,
}

impl Auditor {
    /// System `system` as `role` (connected as [`AUX_USER`]).
    pub fn new(role: Role, system: &str) -> Self {
        Self {
            system: system.to_owned(),
            role,
            stats: Arc::default(),
        }
    }

    /// Binds `aux-<system>` of `stream` and records its events until `stop`.
    pub async fn start(mut self, stream: &str, stop: Stop) -> anyhow::Result<Running> {
        let name = consumer::aux(&self.system);
        let (pull, durable) = self.role.bind(stream, name, CONCURRENCY, stop).await?;
        let auditor = Arc::new(self);
        Ok(pull.spawn(durable, move |m| {
            let a = auditor.clone();
            async move { a.handle(m).await }
        }))
    }

    async fn handle(&self, msg: jetstream::Message) {
        let (kind, event) = match EventRef::parse(&msg.payload) {
            Some((kind @ (EventKind::ResultStored | EventKind::Late), e)) => (kind, e),
            _ => return self.refuse(&msg).await,
        };
        let late = kind == EventKind::Late;
        let body = RecordBody {
            order_id: &event.data.order_id,
            status: if late { "done-late" } else { "done" },
            data: Audited {
                event_id: &event.id,
                outcome: event.data.outcome.as_deref(),
                partner_id: &event.data.partner_id,
                audited_at: actors::protocol::rfc3339(&chrono::Utc::now()),
                late: late.then_some(true),
            },
        };
        let subject = self.role.subjects.aux_record(&self.system);
        let patience = self.role.patience(true);
        let recorded = ask::<RecordReply>(&self.role.client, subject, &body, &patience, |_, _| {
            self.stats.retried.fetch_add(1, Ordering::Relaxed);
        })
        .await;
        let counter = match recorded {
            Ok(reply) => {
                self.role.observer.answer(&reply.status);
                if late {
                    &self.stats.late
                } else {
                    &self.stats.recorded
                }
            }
            Err(e) if e.is_retryable() => {
                // Stopped while the hub was busy or silent: the event comes again.
                return ack(&msg, AckKind::Nak(None)).await;
            }
            Err(e) => {
                self.role.observer.answer(&e.label());
                if e.code() == Some(ErrorCode::NotFound.as_str()) {
                    &self.stats.stale
                } else {
                    tracing::warn!(system = %self.system, order_id = %event.data.order_id, error = %e, "the hub refused the record");
                    &self.stats.failed
                }
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        ack(&msg, AckKind::Ack).await;
    }

    /// Anything but an orderhub result or late event is dropped for good.
    async fn refuse(&self, msg: &jetstream::Message) {
        tracing::warn!(system = %self.system, subject = %msg.subject, "not a result or late event");
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        ack(msg, AckKind::Term).await;
    }
}

/// `record`'s body as the audit system sends it.
#[derive(Serialize)]
struct RecordBody<'a> {
    order_id: &'a str,
    status: &'static str,
    data: Audited<'a>,
}

/// What the audit system keeps of an event.
#[derive(Serialize)]
struct Audited<'a> {
    event_id: &'a str,
    outcome: Option<&'a str>,
    partner_id: &'a str,
    audited_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    late: Option<bool>,
}
