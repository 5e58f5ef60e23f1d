//! A complete orderhub partner with async-nats.
//!
//! It binds its durable consumer `partner-<id>` through the hub account's JetStream API prefix,
//! and for each stored event gets the order and posts a result. A hub that is away (no
//! responders, no reply) or answers `unavailable` is retried after the suggested wait plus
//! jitter, with the same `result_id`, so a retry can only ever store the result once.
//!
//! ```sh
//! cargo run --example partner -- --url nats://127.0.0.1:4222 --partner acme-air
//! cargo run --example partner -- --orders 2      # stop after answering two orders
//! ```
//!
//! Payloads: `docs/schemas/`, `docs/asyncapi.yaml`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull};
use futures::StreamExt;
use serde_json::{Value, json};

/// Every role but the hub reaches JetStream through this prefix.
const JS_PREFIX: &str = "JS.hub.API";
const STREAM: &str = "ORDER_EVENTS";

pub struct Options {
    pub url: String,
    pub partner: String,
    /// Default: the development password `<user>-dev`.
    pub password: Option<String>,
    pub outcome: String,
    /// Stop after this many orders (0: never).
    pub orders: u64,
}

/// What the partner did, readable while it runs.
#[derive(Debug, Default)]
pub struct Counts {
    pub orders: AtomicU64,
    pub results: AtomicU64,
    pub duplicates: AtomicU64,
    pub retries: AtomicU64,
    pub refused: AtomicU64,
}

/// A request, retried while the hub is away or `unavailable`; returns the decoded reply.
async fn call(
    client: &async_nats::Client,
    subject: &str,
    body: &Value,
    counts: &Counts,
) -> anyhow::Result<Value> {
    loop {
        let sent = client.request(subject.to_owned(), serde_json::to_vec(body)?.into());
        let (wait_ms, why) = match sent.await {
            Ok(msg) => {
                let reply: Value = serde_json::from_slice(&msg.payload)?;
                if reply["error"]["code"] != "unavailable" {
                    return Ok(reply);
                }
                let header = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Orderhub-Retry-After-Ms"));
                let wait = header.and_then(|v| v.as_str().parse().ok()).unwrap_or(500);
                (wait, reply["error"]["message"].to_string())
            }
            Err(e) => (500, format!("no hub answered ({e})")), // no responders, timed out
        };
        counts.retries.fetch_add(1, Relaxed);
        println!("retry {subject} in {wait_ms} ms: {why}");
        let jitter =
            u64::from(std::time::UNIX_EPOCH.elapsed()?.subsec_millis()) % (wait_ms / 2 + 1);
        tokio::time::sleep(Duration::from_millis(wait_ms + jitter)).await;
    }
}

async fn handle(
    client: &async_nats::Client,
    opts: &Options,
    event: &Value,
    counts: &Counts,
) -> anyhow::Result<()> {
    let order_id = event["data"]["order_id"].as_str().unwrap_or_default();
    let p = &opts.partner;
    let got = call(
        client,
        &format!("orders.partner.{p}.get"),
        &json!({"order_id": order_id}),
        counts,
    )
    .await?;
    if got.get("error").is_some() {
        // not_found: not this partner's order (never expected); drop it.
        counts.refused.fetch_add(1, Relaxed);
        println!("order {order_id}: {}", got["error"]);
        return Ok(());
    }
    // ... fulfil the order here (book the seat, reserve the room) ...
    let tail = order_id[order_id.len().saturating_sub(6)..].to_uppercase();
    let result = json!({"order_id": order_id, "result_id": format!("{p}-{order_id}"),
                        "outcome": opts.outcome, "partner_ref": format!("REF-{tail}"),
                        "detail": {"product": got["order"]["product"]}});
    let reply = call(
        client,
        &format!("orders.partner.{p}.result"),
        &result,
        counts,
    )
    .await?;
    if reply.get("error").is_some() {
        // conflict: the order already has another result.
        counts.refused.fetch_add(1, Relaxed);
        println!("order {order_id}: {}", reply["error"]);
        return Ok(());
    }
    counts.results.fetch_add(1, Relaxed);
    if reply["duplicate"] == true {
        counts.duplicates.fetch_add(1, Relaxed);
    }
    println!(
        "order {order_id}: {} (duplicate: {})",
        reply["status"], reply["duplicate"]
    );
    Ok(())
}

/// Runs the partner until it has handled `opts.orders` stored events (forever if 0).
pub async fn run(opts: &Options, counts: &Counts) -> anyhow::Result<()> {
    let user = format!("partner-{}", opts.partner);
    let password = opts
        .password
        .clone()
        .unwrap_or_else(|| format!("{user}-dev"));
    let client = async_nats::ConnectOptions::with_user_and_password(user.clone(), password)
        .custom_inbox_prefix(format!("_INBOX_{user}")) // the only inbox it may use
        .request_timeout(Some(Duration::from_secs(5)))
        .connect(opts.url.as_str())
        .await?;
    // Bind by name through the prefix: stream names are not exported to partners.
    let consumer: PullConsumer = jetstream::with_prefix(client.clone(), JS_PREFIX)
        .get_consumer_from_stream::<pull::Config, _, _>(&user, STREAM)
        .await?;
    println!("{user}: bound to consumer {user}");
    let mut messages = consumer.messages().await?; // pulls expire well under 2 minutes
    while opts.orders == 0 || counts.orders.load(Relaxed) < opts.orders {
        let Some(message) = messages.next().await else {
            break;
        };
        let Ok(message) = message else { continue }; // heartbeats and reconnect notices
        let event: Value = serde_json::from_slice(&message.payload)?;
        if event["type"] == "orderhub.order.stored" {
            counts.orders.fetch_add(1, Relaxed);
            handle(&client, opts, &event, counts).await?;
        }
        // After the result is stored: a crash before it means a redelivery, answered again with
        // the same result_id (`"duplicate": true`).
        message
            .ack()
            .await
            .map_err(|e| anyhow::anyhow!("ack: {e}"))?;
    }
    client.flush().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut opts = Options {
        url: "nats://127.0.0.1:4222".into(),
        partner: "acme-air".into(),
        password: None,
        outcome: "confirmed".into(),
        orders: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => opts.url = value,
            "--partner" => opts.partner = value,
            "--password" => opts.password = Some(value),
            "--outcome" => opts.outcome = value,
            "--orders" => opts.orders = value.parse()?,
            _ => anyhow::bail!(
                "unknown flag {flag} (--url, --partner, --password, --outcome, --orders)"
            ),
        }
    }
    let counts = Counts::default();
    run(&opts, &counts).await?;
    println!("{counts:?}");
    Ok(())
}
