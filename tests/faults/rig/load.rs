//! The load: a gateway submitting at a steady rate, retrying each order with the same key until
//! it is accepted, after the wait the hub hints (with jitter).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::Client;
use orderhub::sim::{Backoff, retry_hint};
use serde_json::Value;
use tokio::sync::{Notify, Semaphore};

use crate::helpers::*;

/// An order the client saw `accepted`.
#[derive(Clone, Debug)]
pub struct Acked {
    pub order_id: String,
    pub user_id: String,
    pub partner_id: String,
    /// When the first attempt was sent.
    pub submitted: Instant,
    /// When the client had the `accepted` answer.
    pub accepted: Instant,
    pub attempts: u32,
}

#[derive(Default)]
struct LoadLog {
    acked: Vec<Acked>,
    /// Attempts that did not get `accepted` (and were retried): when, and why.
    retries: Vec<(Instant, String)>,
    /// Refusals that are not retried: a test failure.
    refused: Vec<String>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    /// Woken at every accepted order.
    accepted: Arc<Notify>,
    task: tokio::task::JoinHandle<usize>,
    log: Arc<Mutex<LoadLog>>,
    pub started: Instant,
}

/// How long one submit attempt may take before the client retries it.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Submits in flight at once at most (each retried until accepted, so an outage fills them and
/// the load waits, as a gateway with a bounded number of open requests would).
const MAX_IN_FLIGHT: usize = 512;

impl Load {
    /// Submits `rate` orders a second, alternating over `partners`, until stopped. Every order
    /// is retried with the same `request_id` until it is accepted.
    pub fn start(gateway: Client, rate: f64, tag: &str, partners: &'static [&'static str]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log: Arc<Mutex<LoadLog>> = Arc::default();
        let accepted = Arc::new(Notify::new());
        let started = Instant::now();
        let task = {
            let (stop, log, tag) = (stop.clone(), log.clone(), tag.to_owned());
            let accepted = accepted.clone();
            tokio::spawn(async move {
                let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
                let mut tasks = Vec::new();
                let mut issued = 0usize;
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                while !stop.load(Ordering::SeqCst) {
                    tick.tick().await;
                    let due = (started.elapsed().as_secs_f64() * rate) as usize;
                    while issued < due && !stop.load(Ordering::SeqCst) {
                        let permit = slots.clone().acquire_owned().await.expect("semaphore");
                        let i = issued;
                        issued += 1;
                        let user = format!("u-{}", i % 50);
                        let partner = partners[i % partners.len()];
                        let body = order(&user, &format!("{tag}-{i}"), partner);
                        let (gateway, log) = (gateway.clone(), log.clone());
                        let accepted = accepted.clone();
                        tasks.push(tokio::spawn(async move {
                            submit_until_accepted(&gateway, body, &user, partner, &log).await;
                            accepted.notify_waiters();
                            drop(permit);
                        }));
                    }
                }
                for t in tasks {
                    let _ = t.await;
                }
                issued
            })
        };
        Self {
            stop,
            accepted,
            task,
            log,
            started,
        }
    }

    pub fn acked_count(&self) -> usize {
        self.log.lock().unwrap().acked.len()
    }

    /// Waits until `n` orders in all have been accepted.
    pub async fn accepted(&self, n: usize) {
        loop {
            let next = self.accepted.notified();
            if self.acked_count() >= n {
                return;
            }
            next.await;
        }
    }

    /// Why attempts since `since` were not accepted, counted.
    pub fn retried_since(&self, since: Instant) -> BTreeMap<String, usize> {
        let mut why = BTreeMap::new();
        for (at, reason) in &self.log.lock().unwrap().retries {
            if *at >= since {
                *why.entry(reason.clone()).or_default() += 1;
            }
        }
        why
    }

    /// Stops submitting, waits until every order sent is accepted, and returns them.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let sending = self.started.elapsed();
        let submitted = tokio::time::timeout(Duration::from_secs(300), self.task)
            .await
            .expect("every submitted order is accepted within 300 s of the end of the load")
            .expect("load task");
        let elapsed = self.started.elapsed();
        let log = std::mem::take(&mut *self.log.lock().unwrap());
        assert!(log.refused.is_empty(), "refused: {:?}", log.refused);
        assert_eq!(
            log.acked.len(),
            submitted,
            "every order submitted was accepted"
        );
        println!(
            "load: {submitted} orders sent over {:.1} s ({:.0}/s), all accepted {:.1} s after the \
             first was sent; {} retried attempts",
            sending.as_secs_f64(),
            submitted as f64 / sending.as_secs_f64(),
            elapsed.as_secs_f64(),
            log.retries.len()
        );
        LoadReport {
            acked: log.acked,
            retries: log.retries,
            started: self.started,
            ended: self.started + sending,
        }
    }
}

async fn submit_until_accepted(
    gateway: &Client,
    body: Value,
    user: &str,
    partner: &str,
    log: &Mutex<LoadLog>,
) {
    let submitted = Instant::now();
    let bytes: bytes::Bytes = serde_json::to_vec(&body).expect("json").into();
    let mut attempts = 0;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    loop {
        attempts += 1;
        let mut hint = None;
        let why = match tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            gateway.request("orders.submit", bytes.clone()),
        )
        .await
        {
            Err(_) => "timeout".to_owned(),
            Ok(Err(_)) => "no answer".to_owned(),
            Ok(Ok(reply)) => {
                let v: Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
                match v["error"]["code"].as_str() {
                    None if v["status"] == "accepted" => {
                        log.lock().unwrap().acked.push(Acked {
                            order_id: v["order_id"].as_str().expect("order_id").to_owned(),
                            user_id: user.to_owned(),
                            partner_id: partner.to_owned(),
                            submitted,
                            accepted: Instant::now(),
                            attempts,
                        });
                        return;
                    }
                    // Which refusal: the message says why (a saturated partner, an unconfirmed
                    // commit, a database out of reach).
                    Some("unavailable") => {
                        hint = retry_hint(reply.headers.as_ref());
                        format!("unavailable: {}", v["error"]["message"])
                    }
                    _ => {
                        log.lock().unwrap().refused.push(format!("{body} -> {v}"));
                        return;
                    }
                }
            }
        };
        log.lock().unwrap().retries.push((Instant::now(), why));
        if submitted.elapsed() > Duration::from_secs(300) {
            log.lock()
                .unwrap()
                .refused
                .push(format!("never accepted within 300 s: {body}"));
            return;
        }
        // The hub's hint with jitter; without one 200 ms, doubling up to two seconds: an outage
        // does not turn into a request storm.
        tokio::time::sleep(backoff.wait(hint)).await;
    }
}

/// What the load did.
pub struct LoadReport {
    pub acked: Vec<Acked>,
    pub retries: Vec<(Instant, String)>,
    pub started: Instant,
    /// When the last order was sent.
    pub ended: Instant,
}
