//! The simulated user gateway (NATS user `gateway`): submits the run's orders — in a closed loop
//! (a fixed number in flight) or an open loop (on a fixed schedule) — follows result, settled and
//! late events on durable consumer `gateway`, and reads orders back with `orders.query`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actors::protocol::{CloudEvent, EventKind, QueryReply, Subjects, SubmitReply, consumer};
use async_nats::Client;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use super::client::{self, Stop, ack, call};
use super::ledger::{self, Ledger, Placed};

const GATEWAY_USER: &str = "gateway";
/// Distinct simulated users: `u-0` … `u-49`.
const USERS: usize = 50;
/// Events handled at once (each is an ack: cheap).
const LISTEN_CONCURRENCY: usize = 64;
/// `orders.query` requests in flight while checking the auxiliary records.
const QUERY_CONCURRENCY: usize = 64;
/// Orders described when they fall short.
const SHORT_SAMPLE: usize = 5;

/// How orders are sent.
#[derive(Clone, Debug)]
pub enum Pace {
    /// At most `slots` at once. With `lifecycles`, a slot is taken from the submit until the
    /// order's result event arrived (the ledger gives it back); without, only while the submit
    /// waits for its reply.
    Closed {
        slots: Arc<Semaphore>,
        lifecycles: bool,
    },
    /// `rate` orders a second on a fixed schedule, whatever the replies; every latency counts
    /// from the time an order was due, not from when it could be sent.
    Open { rate: f64 },
}

/// How many orders, how fast.
#[derive(Clone, Debug)]
pub struct Plan {
    pub pace: Pace,
    /// Stop after this many orders…
    pub orders: Option<usize>,
    /// …or send none due at or after this.
    pub until: Option<Instant>,
}

#[derive(Clone)]
pub struct Gateway {
    client: Client,
    subjects: Subjects,
    partners: Arc<[String]>,
    run_id: Arc<str>,
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
    pub async fn connect(
        hub_url: &str,
        subjects: Subjects,
        partners: Vec<String>,
        run_id: String,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !partners.is_empty(),
            "no partners are configured: nothing to order from"
        );
        let client = client::connect_role(hub_url, GATEWAY_USER).await?;
        Ok(Self {
            client,
            subjects,
            partners: partners.into(),
            run_id: run_id.into(),
        })
    }

    /// Spawns the listener of durable consumer `gateway`: result, settled and late events go to
    /// `ledger` (events of other runs are told apart there).
    pub async fn listen(
        &self,
        stream: &str,
        ledger: Arc<Ledger>,
        stop: Stop,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let durable = client::bind(&self.client, stream, consumer::GATEWAY).await?;
        Ok(tokio::spawn(async move {
            let handle = |msg: jetstream::Message| {
                let ledger = ledger.clone();
                async move {
                    let at = std::time::Instant::now();
                    let event = serde_json::from_slice::<CloudEvent>(&msg.payload)
                        .ok()
                        .filter(|e| e.source == "orderhub")
                        .and_then(|e| EventKind::from_type(&e.kind).map(|k| (k, e)));
                    match event {
                        Some((EventKind::ResultStored, e)) => {
                            let outcome = e.data.outcome.unwrap_or_else(|| "unknown".into());
                            ledger.result_event(&e.data.order_id, outcome, at);
                        }
                        Some((EventKind::Settled, e)) => ledger.settled_event(&e.data.order_id, at),
                        Some((EventKind::Late, e)) => ledger.late_event(&e.data.order_id, at),
                        Some((EventKind::Stored, _)) | None => {
                            tracing::warn!(subject = %msg.subject, "gateway: not a result, settled or late event");
                            return ack(&msg, AckKind::Term).await;
                        }
                    }
                    ack(&msg, AckKind::Ack).await;
                }
            };
            if let Err(e) =
                client::consume(durable, consumer::GATEWAY, LISTEN_CONCURRENCY, stop, handle).await
            {
                tracing::error!(error = format!("{e:#}"), "gateway listener stopped");
            }
        }))
    }

    /// Places the plan's orders, recording each in `ledger`, and closes the ledger once every
    /// submit has its answer. A busy or silent hub is asked again with the same `request_id`
    /// until `deadline`.
    pub async fn submit_all(&self, plan: &Plan, ledger: &Arc<Ledger>, deadline: Instant) {
        // Every submit task holds a sender; the channel closes when the last one is done.
        let (done, mut all_done) = mpsc::channel::<()>(1);
        let start = Instant::now();
        for i in 0usize.. {
            if plan.orders.is_some_and(|n| i >= n) {
                break;
            }
            let due = match &plan.pace {
                Pace::Open { rate } => {
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    if plan.until.is_some_and(|until| due >= until) {
                        break;
                    }
                    tokio::time::sleep_until(due).await;
                    due
                }
                Pace::Closed { slots, .. } => {
                    let Ok(slot) = slots.acquire().await else {
                        break;
                    };
                    slot.forget();
                    let now = Instant::now();
                    if plan.until.is_some_and(|until| now >= until) {
                        slots.add_permits(1);
                        break;
                    }
                    now
                }
            };
            let (gateway, ledger, done) = (self.clone(), ledger.clone(), done.clone());
            let pace = plan.pace.clone();
            tokio::spawn(async move {
                let accepted = gateway.submit_one(i, due, &ledger, deadline).await;
                if let Pace::Closed { slots, lifecycles } = pace {
                    // An accepted order's lifecycle slot comes back with its result event.
                    if !(lifecycles && accepted) {
                        slots.add_permits(1);
                    }
                }
                drop(done);
            });
        }
        drop(done);
        let _ = all_done.recv().await;
        ledger.close();
    }

    /// Submits order `i`, due at `due`; `true` once accepted.
    async fn submit_one(&self, i: usize, due: Instant, ledger: &Ledger, deadline: Instant) -> bool {
        let partner = &self.partners[i % self.partners.len()];
        let user_id = format!("u-{}", i % USERS);
        let body = json!({
            "request_id": format!("{}-{i}", self.run_id),
            "user_id": user_id,
            "partner_id": partner,
            "product": product_of(partner),
            "amount_minor": 10_000 + (i as u64 * 7_919) % 500_000,
            "currency": "CNY",
            "items": [{ "sku": format!("SKU-{}", i % 97), "qty": 1 + i % 3 }],
            "payload": { "run": &*self.run_id, "seq": i, "channel": "demo" },
        });
        let mut backoff = Duration::from_millis(20);
        loop {
            match call::<SubmitReply>(&self.client, self.subjects.submit(), &body).await {
                Ok(reply) => {
                    let acked = std::time::Instant::now();
                    ledger.accepted(reply.order_id, user_id, due.into_std(), acked);
                    return true;
                }
                Err(e) => {
                    ledger.submit_error(&e.label());
                    if e.is_retryable() && Instant::now() + backoff < deadline {
                        ledger.submit_retried();
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    } else {
                        ledger.submit_failed(format!("order #{i} to {partner}: {e}"));
                        return false;
                    }
                }
            }
        }
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
    ) -> (Placed, Result<QueryReply, client::CallError>) {
        loop {
            let reply = self.query(p).await;
            let done = matches!(&reply, Ok(r) if r.aux.len() >= expected);
            if done || Instant::now() >= deadline {
                return (p.clone(), reply);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn query(&self, p: &Placed) -> Result<QueryReply, client::CallError> {
        let body = json!({ "order_id": p.order_id, "user_id": p.user_id });
        call::<QueryReply>(&self.client, self.subjects.query(), &body).await
    }

    /// One line on where an order stands, for a report on orders that did not settle.
    pub async fn describe(&self, p: &Placed) -> String {
        match self.query(p).await {
            Ok(reply) => describe(p, &reply),
            Err(e) => format!("{}: query failed: {e}", p.order_id),
        }
    }

    pub async fn close(&self) {
        let _ = self.client.flush().await;
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

/// What a partner sells, by its name.
fn product_of(partner_id: &str) -> &'static str {
    if partner_id.contains("air") {
        "flight"
    } else if partner_id.contains("hotel") {
        "hotel-night"
    } else {
        "service"
    }
}
