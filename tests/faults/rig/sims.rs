//! Simulators: partners, the gateway and an external auxiliary system, each on its own durable
//! consumer, as its own role.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::Client;
use async_nats::jetstream::consumer::pull;
use futures::StreamExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::*;
use crate::helpers::*;

/// What a simulator received: every delivery, and each event once (by event id).
#[derive(Default)]
pub struct Seen {
    pub deliveries: usize,
    /// Event id → (order id, event type, first delivery).
    pub events: HashMap<String, (String, String, Instant)>,
    /// The answers to the requests the simulator made, by status or error code.
    pub answers: BTreeMap<String, usize>,
    /// Order ids whose result was answered `late_result_stored`.
    pub late: HashSet<String>,
    /// Order ids whose result was answered `result_stored` (a partner's acknowledged write).
    pub stored: HashSet<String>,
    /// Order ids a partner's `get` was answered `not_found` for, after it had received the
    /// order's stored event (also counted in `answers` as `get not_found`).
    pub get_not_found: Vec<String>,
}

pub type SeenRef = Arc<Mutex<Seen>>;

type Handler = Arc<dyn Fn(Client, Value, SeenRef) -> BoxFuture<'static, ()> + Send + Sync>;

/// A simulator's task; aborted on drop. Its [`Seen`] outlives it (a partner coming back goes on
/// counting in the same one).
pub struct Sim {
    task: tokio::task::JoinHandle<()>,
    pub seen: SeenRef,
    busy: Arc<AtomicUsize>,
}

impl Sim {
    /// How many events are being handled right now.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::SeqCst)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Pulls `consumer` as `client` for ever; records each message in `seen`, handles up to 64 at
/// once with `handle`, and acknowledges each once handled. A consumer the server reports gone
/// (or a pull that stops answering) is bound again.
fn consume(client: Client, consumer: &str, seen: SeenRef, handle: Handler) -> Sim {
    let busy = Arc::new(AtomicUsize::new(0));
    let name = consumer.to_owned();
    let task = {
        let (seen, busy) = (seen.clone(), busy.clone());
        tokio::spawn(async move {
            use async_nats::jetstream::consumer::pull::MessagesErrorKind;
            let slots = Arc::new(Semaphore::new(64));
            loop {
                let bound = orderhub::startup::role_jetstream(&client)
                    .get_consumer_from_stream::<pull::Config, _, _>(&name, STREAM)
                    .await;
                let messages = match bound {
                    Ok(c) => c.messages().await.ok(),
                    Err(_) => None,
                };
                let Some(mut messages) = messages else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                while let Some(m) = messages.next().await {
                    let m = match m {
                        Ok(m) => m,
                        Err(e) => match e.kind() {
                            MessagesErrorKind::ConsumerDeleted
                            | MessagesErrorKind::NoResponders
                            | MessagesErrorKind::MissingHeartbeat => break,
                            _ => continue,
                        },
                    };
                    let ev: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                    {
                        let mut s = seen.lock().unwrap();
                        s.deliveries += 1;
                        let id = ev["id"].as_str().unwrap_or_default().to_owned();
                        s.events.entry(id).or_insert_with(|| {
                            (
                                ev["data"]["order_id"]
                                    .as_str()
                                    .unwrap_or_default()
                                    .to_owned(),
                                ev["type"].as_str().unwrap_or_default().to_owned(),
                                Instant::now(),
                            )
                        });
                    }
                    let permit = slots.clone().acquire_owned().await.expect("semaphore");
                    busy.fetch_add(1, Ordering::SeqCst);
                    let (client, seen, busy, handle) =
                        (client.clone(), seen.clone(), busy.clone(), handle.clone());
                    tokio::spawn(async move {
                        handle(client, ev, seen).await;
                        let _ = m.ack().await;
                        busy.fetch_sub(1, Ordering::SeqCst);
                        drop(permit);
                    });
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    Sim { task, seen, busy }
}

/// Sends `body` to `subject` until the hub answers anything but `unavailable` (or, a few times,
/// `not_found`); records the answer's status or error code and returns the reply.
async fn request_until_answered(
    client: &Client,
    subject: &str,
    body: Value,
    seen: &SeenRef,
) -> Value {
    let bytes: bytes::Bytes = serde_json::to_vec(&body).expect("json").into();
    let mut not_found = 0;
    loop {
        let sent = tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            client.request(subject.to_owned(), bytes.clone()),
        )
        .await;
        if let Ok(Ok(reply)) = sent {
            let v: Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
            let code = v["error"]["code"].as_str().map(str::to_owned);
            let retry = match code.as_deref() {
                Some("unavailable") => true,
                Some("not_found") => {
                    not_found += 1;
                    not_found < 50
                }
                _ => false,
            };
            if !retry {
                let key = code.unwrap_or_else(|| v["status"].as_str().unwrap_or("?").to_owned());
                *seen.lock().unwrap().answers.entry(key).or_default() += 1;
                return v;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `orders.partner.<id>.get` for an order whose stored event the partner received, asked until
/// the hub answers anything but `unavailable`; counted in `answers` as `get ok` or `get <code>`.
/// A `not_found` is not asked again: the order is stored, so the read missed it.
async fn get_order(client: &Client, partner_id: &str, order_id: &str, seen: &SeenRef) {
    let subject = format!("orders.partner.{partner_id}.get");
    let bytes: bytes::Bytes = serde_json::to_vec(&json!({"order_id": order_id}))
        .expect("json")
        .into();
    loop {
        let sent = tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            client.request(subject.clone(), bytes.clone()),
        )
        .await;
        if let Ok(Ok(reply)) = sent {
            let v: Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
            let key = match v["error"]["code"].as_str() {
                Some("unavailable") => None,
                Some(code) => Some(format!("get {code}")),
                None if v["order"]["order_id"] == order_id => Some("get ok".to_owned()),
                None => Some("get ?".to_owned()),
            };
            if let Some(key) = key {
                let mut s = seen.lock().unwrap();
                if key == "get not_found" {
                    s.get_not_found.push(order_id.to_owned());
                }
                *s.answers.entry(key).or_default() += 1;
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A partner that fetches and confirms every order of its stored events.
pub fn partner_sim(client: Client, partner_id: &'static str, seen: SeenRef) -> Sim {
    let handle: Handler = Arc::new(
        move |client: Client, ev: Value, seen: SeenRef| -> BoxFuture<'static, ()> {
            Box::pin(async move {
                if ev["type"] != "orderhub.order.stored" {
                    return;
                }
                let order_id = ev["data"]["order_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                // As a partner does: fetch the order it was told is stored, then decide.
                get_order(&client, partner_id, &order_id, &seen).await;
                let body = json!({"order_id": order_id, "result_id": format!("r-{order_id}"),
                              "outcome": "confirmed", "partner_ref": "SIM"});
                let subject = format!("orders.partner.{partner_id}.result");
                let v = request_until_answered(&client, &subject, body, &seen).await;
                match v["status"].as_str() {
                    Some("late_result_stored") => seen.lock().unwrap().late.insert(order_id),
                    Some("result_stored") => seen.lock().unwrap().stored.insert(order_id),
                    _ => false,
                };
            })
        },
    );
    consume(client, &format!("partner-{partner_id}"), seen, handle)
}

/// A user gateway reading its durable consumer (result, late and settled events).
pub fn gateway_sim(client: Client, seen: SeenRef) -> Sim {
    let handle: Handler = Arc::new(
        |_: Client, _: Value, _: SeenRef| -> BoxFuture<'static, ()> { Box::pin(async {}) },
    );
    consume(client, "gateway", seen, handle)
}

/// The external `audit` system: records every result (and late result) it receives.
pub fn audit_sim(client: Client, seen: SeenRef) -> Sim {
    let handle: Handler = Arc::new(
        |client: Client, ev: Value, seen: SeenRef| -> BoxFuture<'static, ()> {
            Box::pin(async move {
                let order_id = ev["data"]["order_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let body = json!({"order_id": order_id, "status": "done",
                              "data": {"outcome": ev["data"]["outcome"]}});
                request_until_answered(&client, "orders.aux.audit.record", body, &seen).await;
            })
        },
    );
    consume(client, "aux-audit", seen, handle)
}

/// Every simulator of a run.
pub struct Sims {
    pub partners: Vec<(&'static str, Sim)>,
    pub gateway: Sim,
    pub audit: Sim,
}

impl Sims {
    pub async fn start(bus: &Bus) -> Self {
        let mut partners = Vec::new();
        for id in PARTNERS {
            let client = bus.client(&format!("partner-{id}")).await;
            partners.push((id, partner_sim(client, id, Arc::default())));
        }
        Self {
            partners,
            gateway: gateway_sim(bus.client("gateway").await, Arc::default()),
            audit: audit_sim(bus.client("aux").await, Arc::default()),
        }
    }

    /// Takes a partner offline: its task ends and its connection closes; returns what it saw.
    pub fn take_offline(&mut self, id: &str) -> SeenRef {
        let at = self
            .partners
            .iter()
            .position(|(p, _)| *p == id)
            .expect("partner");
        let (_, sim) = self.partners.remove(at);
        sim.seen.clone()
    }

    /// Brings a partner back, counting in `seen` again.
    pub async fn bring_back(&mut self, bus: &Bus, id: &'static str, seen: SeenRef) {
        let client = bus.client(&format!("partner-{id}")).await;
        self.partners.push((id, partner_sim(client, id, seen)));
    }

    pub fn busy(&self) -> usize {
        self.partners.iter().map(|(_, s)| s.busy()).sum::<usize>()
            + self.gateway.busy()
            + self.audit.busy()
    }
}
