//! The simulated user gateway (NATS user `gateway`): follows result, settled and late events on
//! durable consumer `gateway`, and reads orders back with `orders.query`. Submitting is the load
//! generator's ([`super::load`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actors::protocol::{EventKind, EventRef, QueryReply, consumer};
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::client::{CallError, Role, Running, Stop, ack, call};
use super::ledger::{self, Ledger, Placed};

/// The NATS user of the user gateway.
pub const GATEWAY_USER: &str = "gateway";
/// Events handled at once (each is an ack: cheap).
const LISTEN_CONCURRENCY: usize = 64;
/// `orders.query` requests in flight while checking the auxiliary records.
const QUERY_CONCURRENCY: usize = 64;
/// How often an order is queried while its auxiliary records are still coming.
const AUX_POLL: Duration = Duration::from_millis(100);
/// Orders described when they fall short.
const SHORT_SAMPLE: usize = 5;

/// The user gateway.
#[derive(Clone)]
pub struct Gateway {
    pub(super) role: Role,
}

/// The auxiliary records of the run's orders, as `orders.query` shows them.
#[derive(Debug)]
pub struct AuxTally {
    pub expected_per_order: usize,
    pub by_system: BTreeMap<String, u64>,
    /// Orders showing every expected record.
    pub complete: usize,
    pub checked: usize,
    /// Every order was checked (else a uniform sample).
    pub all: bool,
    /// Submit (due time) → the order's last auxiliary record (`updated_at`, the hub's clock),
    /// of complete orders without a late result (a late result rewrites the records).
    pub done_latency: Histogram<u64>,
    /// A few orders that fell short, described.
    pub short: Vec<String>,
}

impl Gateway {
    /// The gateway as `role` (connected as [`GATEWAY_USER`]).
    pub fn new(role: Role) -> Self {
        Self { role }
    }

    /// Spawns the listener of durable consumer `gateway` until `stop`: result, settled and late
    /// events go to `ledger` when given (events of other runs are told apart there).
    pub async fn listen(
        &self,
        stream: &str,
        ledger: Option<Arc<Ledger>>,
        stop: Stop,
    ) -> anyhow::Result<Running> {
        let name = consumer::GATEWAY.to_owned();
        let (pull, durable) = self
            .role
            .clone()
            .bind(stream, name, LISTEN_CONCURRENCY, stop)
            .await?;
        Ok(pull.spawn(durable, move |msg: jetstream::Message| {
            let ledger = ledger.clone();
            async move {
                let at = std::time::Instant::now();
                let event = EventRef::parse(&msg.payload);
                match (event, &ledger) {
                    (Some((EventKind::ResultStored, e)), Some(ledger)) => {
                        let outcome = e.data.outcome.map_or_else(|| "unknown".into(), Cow::into_owned);
                        ledger.result_event(&e.data.order_id, outcome, at);
                    }
                    (Some((EventKind::Settled, e)), Some(ledger)) => {
                        ledger.settled_event(&e.data.order_id, at)
                    }
                    (Some((EventKind::Late, e)), Some(ledger)) => {
                        ledger.late_event(&e.data.order_id, at)
                    }
                    (Some((EventKind::ResultStored | EventKind::Settled | EventKind::Late, _)), None) => {}
                    (Some((EventKind::Stored, _)) | None, _) => {
                        tracing::warn!(subject = %msg.subject, "gateway: not a result, settled or late event");
                        return ack(&msg, AckKind::Term).await;
                    }
                }
                ack(&msg, AckKind::Ack).await;
            }
        }))
    }

    /// Queries `orders` (`all`: every order of the run, else a sample) until each shows
    /// `expected` auxiliary records or `deadline` passes.
    pub async fn check_aux(
        &self,
        orders: &[Placed],
        all: bool,
        expected: usize,
        deadline: Instant,
    ) -> anyhow::Result<AuxTally> {
        let mut tally = AuxTally {
            expected_per_order: expected,
            by_system: BTreeMap::new(),
            complete: 0,
            checked: 0,
            all,
            done_latency: ledger::histogram()?,
            short: Vec::new(),
        };
        let mut checks = futures::stream::iter(orders)
            .map(|p| self.await_aux(p, expected, deadline))
            .buffer_unordered(QUERY_CONCURRENCY);
        while let Some((placed, last)) = checks.next().await {
            tally.checked += 1;
            match last {
                Ok(reply) => {
                    for a in &reply.aux {
                        *tally.by_system.entry(a.system.clone()).or_default() += 1;
                    }
                    if reply.aux.len() >= expected {
                        tally.complete += 1;
                        if reply.late_result.is_none()
                            && let Some(done) = last_record(&reply)
                        {
                            let took = done.duration_since(placed.sent_at).unwrap_or_default();
                            ledger::record(&mut tally.done_latency, took);
                        }
                    } else if tally.short.len() < SHORT_SAMPLE {
                        tally.short.push(describe(&placed, &reply));
                    }
                }
                Err(e) if tally.short.len() < SHORT_SAMPLE => tally
                    .short
                    .push(format!("{}: query failed: {e}", placed.order_id)),
                Err(_) => {}
            }
        }
        Ok(tally)
    }

    async fn await_aux(
        &self,
        p: &Placed,
        expected: usize,
        deadline: Instant,
    ) -> (Placed, Result<QueryReply, CallError>) {
        let mut backoff = Backoff::default();
        loop {
            let reply = self.query(p).await;
            let done = matches!(&reply, Ok(r) if r.aux.len() >= expected);
            if done || Instant::now() >= deadline {
                return (p.clone(), reply);
            }
            let pause = match &reply {
                Err(e) if e.is_retryable() => backoff.wait(e.retry_after()),
                _ => AUX_POLL,
            };
            tokio::time::sleep(pause).await;
        }
    }

    pub async fn query(&self, p: &Placed) -> Result<QueryReply, CallError> {
        let body = QueryBody {
            order_id: &p.order_id,
            user_id: &p.user_id,
        };
        call::<QueryReply>(&self.role.client, self.role.subjects.query(), &body).await
    }

    /// One line on where an order stands, for a report on orders that did not settle.
    pub async fn describe(&self, p: &Placed) -> String {
        match self.query(p).await {
            Ok(reply) => describe(p, &reply),
            Err(e) => format!("{}: query failed: {e}", p.order_id),
        }
    }

    pub async fn close(&self) {
        let _ = self.role.client.flush().await;
    }
}

/// When the order's last auxiliary record was written, by the hub's clock.
fn last_record(reply: &QueryReply) -> Option<SystemTime> {
    reply
        .aux
        .iter()
        .filter_map(|a| chrono::DateTime::parse_from_rfc3339(&a.updated_at).ok())
        .max()
        .map(SystemTime::from)
}

fn describe(p: &Placed, reply: &QueryReply) -> String {
    let o = &reply.order;
    let systems: Vec<&str> = reply.aux.iter().map(|a| a.system.as_str()).collect();
    format!(
        "{} ({}, {}): status {} v{}, created {}, updated {}, result {}, late result {}, settled {}, aux [{}]",
        p.order_id,
        o.partner_id,
        o.user_id,
        o.status,
        o.version,
        o.created_at,
        o.updated_at,
        reply.result.as_ref().map_or("none", |r| r.outcome.as_str()),
        reply
            .late_result
            .as_ref()
            .map_or("none", |r| r.outcome.as_str()),
        reply.settled_at.as_deref().unwrap_or("not yet"),
        systems.join(", ")
    )
}

/// `query`'s body, single-order form.
#[derive(Serialize)]
struct QueryBody<'a> {
    order_id: &'a str,
    user_id: &'a str,
}
