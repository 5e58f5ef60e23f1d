//! The load generator: the gateway submitting a run's orders, in a closed loop (a fixed number in
//! flight) or an open loop (on a fixed schedule). A busy or silent hub is asked again with the
//! same `request_id` after the wait it hints, with jitter.

use std::sync::Arc;
use std::time::Duration;

use actors::protocol::SubmitReply;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use super::client::{Patience, ask};
use super::gateway::Gateway;
use super::ledger::Ledger;

/// Distinct simulated users: `u-0` … `u-49`.
const USERS: usize = 50;

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

/// The gateway placing a run's orders with the configured partners, in turn.
#[derive(Clone)]
pub struct LoadGenerator {
    gateway: Gateway,
    partners: Arc<[String]>,
    run_id: Arc<str>,
}

impl LoadGenerator {
    /// Orders of run `run_id` (their `request_id`s start with it) to `partners`.
    pub fn new(gateway: Gateway, partners: Vec<String>, run_id: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !partners.is_empty(),
            "no partners are configured: nothing to order from"
        );
        Ok(Self {
            gateway,
            partners: partners.into(),
            run_id: run_id.into(),
        })
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
        let body = SubmitBody {
            request_id: format!("{}-{i}", self.run_id),
            user_id: &user_id,
            partner_id: partner,
            product: product_of(partner),
            amount_minor: 10_000 + (i as u64 * 7_919) % 500_000,
            currency: "CNY",
            items: [Item {
                sku: format!("SKU-{}", i % 97),
                qty: 1 + i % 3,
            }],
            payload: Payload {
                run: &self.run_id,
                seq: i,
                channel: "demo",
            },
        };
        let patience = Patience {
            until: Some(deadline),
            ..Patience::default()
        };
        let role = &self.gateway.role;
        let (client, subject) = (&role.client, role.subjects.submit());
        let submitted = ask::<SubmitReply>(client, subject, &body, &patience, |e, _| {
            ledger.submit_error(&e.label());
            ledger.submit_retried();
        })
        .await;
        match submitted {
            Ok(reply) => {
                let acked = std::time::Instant::now();
                ledger.accepted(reply.order_id, user_id, due.into_std(), acked);
                true
            }
            Err(e) => {
                ledger.submit_error(&e.label());
                ledger.submit_failed(format!("order #{i} to {partner}: {e}"));
                false
            }
        }
    }
}

/// `submit`'s body as the load generator sends it.
#[derive(Serialize)]
struct SubmitBody<'a> {
    request_id: String,
    user_id: &'a str,
    partner_id: &'a str,
    product: &'static str,
    amount_minor: u64,
    currency: &'static str,
    items: [Item; 1],
    payload: Payload<'a>,
}

#[derive(Serialize)]
struct Item {
    sku: String,
    qty: usize,
}

/// Which run sent the order, and its place in the run.
#[derive(Serialize)]
struct Payload<'a> {
    run: &'a str,
    seq: usize,
    channel: &'static str,
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
