//! Simulated peers of the hub.

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use super::{durable, event};

/// Answers every stored event of `acme-air` until aborted, retrying while no hub answers.
pub fn run_partner(partner: async_nats::Client) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let consumer = durable(&partner, "partner-acme-air").await;
        let mut messages = consumer.messages().await.expect("message stream");
        while let Some(m) = messages.next().await {
            // Heartbeat and reconnect notices surface as errors: skip them.
            let Ok(m) = m else { continue };
            {
                let ev = event(&m);
                let order_id = ev["data"]["order_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let body = json!({"order_id": order_id, "result_id": format!("r-{order_id}"), "outcome": "confirmed"});
                loop {
                    let sent = tokio::time::timeout(
                        Duration::from_secs(5),
                        partner.request(
                            "orders.partner.acme-air.result",
                            serde_json::to_vec(&body).unwrap().into(),
                        ),
                    )
                    .await;
                    match sent {
                        Ok(Ok(reply)) if reply.status.is_none() => {
                            let v: serde_json::Value =
                                serde_json::from_slice(&reply.payload).unwrap_or_default();
                            let code = v["error"]["code"].as_str().unwrap_or_default().to_owned();
                            if code.is_empty() || code == "conflict" {
                                break;
                            }
                        }
                        _ => {}
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let _ = m.ack().await;
            }
        }
    })
}
