//! A simulated external auxiliary system (NATS user `aux`): pulls its durable consumer
//! `aux-<system>` and, for every result event, writes its record through
//! `orders.aux.<system>.record`, acknowledging after the hub replied. A late event (a partner's
//! answer after the hub closed the order as `timeout`) replaces the record with one of the late
//! outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actors::protocol::{CloudEvent, ErrorCode, EventKind, RecordReply, Subjects, consumer};
use async_nats::Client;
use async_nats::jetstream::{self, AckKind};
use serde_json::json;

use super::client::{self, Stop, ack, call};

/// The NATS user every external auxiliary system connects as.
const AUX_USER: &str = "aux";
/// Events handled at once.
const CONCURRENCY: usize = 64;

#[derive(Debug, Default)]
pub struct AuditStats {
    pub recorded: AtomicU64,
    /// Records replaced after a late event.
    pub late: AtomicU64,
    /// Orders the hub does not know (an earlier run's events after its data was removed).
    pub stale: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
}

pub struct Auditor {
    system: String,
    client: Client,
    subjects: Subjects,
    stats: Arc<AuditStats>,
}

impl Auditor {
    /// Connects as `aux` and binds `aux-<system>`.
    pub async fn start(
        hub_url: &str,
        stream: &str,
        subjects: Subjects,
        system: &str,
        stop: Stop,
    ) -> anyhow::Result<(Arc<AuditStats>, tokio::task::JoinHandle<()>)> {
        let client = client::connect_role(hub_url, AUX_USER).await?;
        let durable = client::bind(&client, stream, &consumer::aux(system)).await?;
        let auditor = Arc::new(Auditor {
            system: system.to_owned(),
            client,
            subjects,
            stats: Arc::default(),
        });
        let stats = auditor.stats.clone();
        let task = tokio::spawn(async move {
            let name = consumer::aux(&auditor.system);
            let handle = |m| {
                let a = auditor.clone();
                async move { a.handle(m).await }
            };
            if let Err(e) = client::consume(durable, &name, CONCURRENCY, stop, handle).await {
                tracing::error!(system = %auditor.system, error = format!("{e:#}"), "audit simulator stopped");
            }
            let _ = auditor.client.flush().await;
        });
        Ok((stats, task))
    }

    async fn handle(&self, msg: jetstream::Message) {
        let (kind, event) = match serde_json::from_slice::<CloudEvent>(&msg.payload) {
            Ok(e) if e.source == "orderhub" => match EventKind::from_type(&e.kind) {
                Some(kind @ (EventKind::ResultStored | EventKind::Late)) => (kind, e),
                _ => return self.refuse(&msg).await,
            },
            _ => return self.refuse(&msg).await,
        };
        let late = kind == EventKind::Late;
        let mut data = json!({
            "event_id": event.id,
            "outcome": event.data.outcome,
            "partner_id": event.data.partner_id,
            "audited_at": actors::protocol::rfc3339(&chrono::Utc::now()),
        });
        if late {
            data["late"] = json!(true);
        }
        let body = json!({
            "order_id": event.data.order_id,
            "status": if late { "done-late" } else { "done" },
            "data": data,
        });
        let subject = self.subjects.aux_record(&self.system);
        match call::<RecordReply>(&self.client, subject, &body).await {
            Ok(_) if late => {
                self.stats.late.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {
                self.stats.recorded.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.code() == Some(ErrorCode::NotFound.as_str()) => {
                self.stats.stale.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.is_retryable() => {
                self.stats.retried.fetch_add(1, Ordering::Relaxed);
                return ack(&msg, AckKind::Nak(Some(Duration::from_millis(500)))).await;
            }
            Err(e) => {
                tracing::warn!(system = %self.system, order_id = %event.data.order_id, error = %e, "the hub refused the record");
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        ack(&msg, AckKind::Ack).await;
    }

    /// Anything but an orderhub result or late event is dropped for good.
    async fn refuse(&self, msg: &jetstream::Message) {
        tracing::warn!(system = %self.system, subject = %msg.subject, "not a result or late event");
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        ack(msg, AckKind::Term).await;
    }
}
