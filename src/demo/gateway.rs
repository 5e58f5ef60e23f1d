//! The simulated user gateway (NATS user `gateway`): submits the run's orders with bounded
//! concurrency, follows result events on durable consumer `gateway`, and reads orders back with
//! `orders.query`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actors::protocol::{CloudEvent, EventKind, QueryReply, Subjects, SubmitReply, consumer};
use async_nats::Client;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use serde_json::json;
use tokio::time::Instant;

use super::client::{self, Stop, ack, call};
use super::ledger::{Ledger, Placed};

const GATEWAY_USER: &str = "gateway";
/// Distinct simulated users: `u-0` … `u-49`.
const USERS: usize = 50;
/// Result events handled at once (each is an ack: cheap).
const LISTEN_CONCURRENCY: usize = 64;
/// `orders.query` requests in flight while checking the auxiliary records.
const QUERY_CONCURRENCY: usize = 64;

pub struct Gateway {
    client: Client,
    subjects: Subjects,
    partners: Vec<String>,
    run_id: String,
}

/// The auxiliary records of the run's orders, as `orders.query` shows them.
#[derive(Debug, Default)]
pub struct AuxTally {
    pub expected_per_order: usize,
    pub by_system: BTreeMap<String, u64>,
    /// Orders showing every expected record.
    pub complete: usize,
    pub checked: usize,
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
            partners,
            run_id,
        })
    }

    /// Spawns the listener of durable consumer `gateway`: every result event settles its order
    /// in `ledger` (events of other runs are ignored there).
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
                    match serde_json::from_slice::<CloudEvent>(&msg.payload) {
                        Ok(e) if EventKind::from_type(&e.kind) == Some(EventKind::ResultStored) => {
                            let outcome = e.data.outcome.unwrap_or_else(|| "unknown".into());
                            ledger.result_event(&e.data.order_id, outcome, at);
                            ack(&msg, AckKind::Ack).await;
                        }
                        _ => {
                            tracing::warn!(subject = %msg.subject, "gateway: not a result event");
                            ack(&msg, AckKind::Term).await;
                        }
                    }
                }
            };
            if let Err(e) =
                client::consume(durable, consumer::GATEWAY, LISTEN_CONCURRENCY, stop, handle).await
            {
                tracing::error!(error = format!("{e:#}"), "gateway listener stopped");
            }
        }))
    }

    /// Submits orders `0..n`, at most `concurrency` at once, recording each in `ledger`. A busy or
    /// silent hub is asked again with the same `request_id` until `deadline`.
    pub async fn submit_all(
        &self,
        n: usize,
        concurrency: usize,
        ledger: &Ledger,
        deadline: Instant,
    ) {
        futures::stream::iter(0..n)
            .map(|i| self.submit_one(i, ledger, deadline))
            .buffer_unordered(concurrency.max(1))
            .for_each(|()| async {})
            .await;
    }

    async fn submit_one(&self, i: usize, ledger: &Ledger, deadline: Instant) {
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
            "payload": { "run": self.run_id, "seq": i, "channel": "demo" },
        });
        let sent = std::time::Instant::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            match call::<SubmitReply>(&self.client, self.subjects.submit(), &body).await {
                Ok(reply) => {
                    let acked = std::time::Instant::now();
                    return ledger.accepted(
                        Placed {
                            order_id: reply.order_id,
                            user_id,
                        },
                        sent,
                        acked,
                    );
                }
                Err(e) if e.is_retryable() && Instant::now() + backoff < deadline => {
                    ledger.submit_retried();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => return ledger.submit_failed(format!("order #{i} to {partner}: {e}")),
            }
        }
    }

    /// Queries every order until it shows `expected` auxiliary records or `deadline` passes.
    pub async fn verify_aux(
        &self,
        orders: &[Placed],
        expected: usize,
        deadline: Instant,
    ) -> AuxTally {
        let mut tally = AuxTally {
            expected_per_order: expected,
            ..Default::default()
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
                    } else if tally.short.len() < 5 {
                        tally.short.push(describe(&placed, &reply));
                    }
                }
                Err(e) if tally.short.len() < 5 => tally
                    .short
                    .push(format!("{}: query failed: {e}", placed.order_id)),
                Err(_) => {}
            }
        }
        tally
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

fn describe(p: &Placed, reply: &QueryReply) -> String {
    let o = &reply.order;
    let systems: Vec<&str> = reply.aux.iter().map(|a| a.system.as_str()).collect();
    format!(
        "{} ({}, {}): status {} v{}, created {}, updated {}, result {}, aux [{}]",
        p.order_id,
        o.partner_id,
        o.user_id,
        o.status,
        o.version,
        o.created_at,
        o.updated_at,
        reply.result.as_ref().map_or("none", |r| r.outcome.as_str()),
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
