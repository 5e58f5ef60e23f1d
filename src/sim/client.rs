//! What every simulated outside service shares: a connection as its own `nats.conf` role,
//! request/reply with the hub's error replies decoded, and concurrent pulling from its durable
//! consumer on `ORDER_EVENTS` until told to stop.

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull};
use async_nats::{Client, RequestErrorKind};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::micro::{NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE};
use crate::urls::{NatsUrls, redact};

/// Messages asked for per pull request.
const PULL_BATCH: usize = 256;

/// The hub's URL (every server of it) with the credentials of another `nats.conf` role:
/// `<user>:<user>-dev`, the development passwords. The URL's own login is replaced.
pub fn role_url(hub_url: &str, user: &str) -> anyhow::Result<String> {
    Ok(NatsUrls::parse(hub_url)?.with_login(user, &format!("{user}-dev")))
}

/// Connects as `user` (with its own `_INBOX_<user>` prefix, see [`crate::startup::connect_nats`]).
pub async fn connect_role(hub_url: &str, user: &str) -> anyhow::Result<Client> {
    let url = role_url(hub_url, user)?;
    crate::startup::connect_nats(&url, &format!("orderhub-demo-{user}"))
        .await
        .with_context(|| format!("connecting as NATS user `{user}` ({})", redact(&url)))
}

/// Why a request to the hub did not give the expected reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The hub answered with an error reply (`{"error":{"code","message"}}`).
    #[error("{code}: {message}")]
    Api { code: String, message: String },
    /// No reply: timed out, nobody listening, or the connection failed.
    #[error("no reply: {0}")]
    Transport(#[from] async_nats::RequestError),
    /// The reply was not the JSON we expected.
    #[error("undecodable reply: {0}")]
    Decode(#[from] serde_json::Error),
}

impl CallError {
    /// The error code of an error reply.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// A short name of what went wrong: the error reply's code, or why there was no reply.
    pub fn label(&self) -> String {
        match self {
            Self::Api { code, .. } => code.clone(),
            Self::Transport(e) => match e.kind() {
                RequestErrorKind::TimedOut => "no_reply_timeout".into(),
                RequestErrorKind::NoResponders => "no_responders".into(),
                _ => "transport".into(),
            },
            Self::Decode(_) => "undecodable_reply".into(),
        }
    }

    /// Worth trying again with the same idempotency key: the hub was busy or did not answer.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Api { code, .. } => code == actors::protocol::ErrorCode::Unavailable.as_str(),
            Self::Transport(e) => {
                matches!(
                    e.kind(),
                    RequestErrorKind::TimedOut | RequestErrorKind::NoResponders
                )
            }
            Self::Decode(_) => false,
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorInner,
}

#[derive(Deserialize)]
struct ErrorInner {
    code: String,
    message: String,
}

/// Sends `body` to `subject` and decodes the reply as `T`, or the hub's error reply.
pub async fn call<T: DeserializeOwned>(
    client: &Client,
    subject: String,
    body: &impl Serialize,
) -> Result<T, CallError> {
    let payload = serde_json::to_vec(body)?;
    let reply = client.request(subject, payload.into()).await?;
    let header = reply.headers.as_ref().and_then(|h| {
        let code = h.get(NATS_SERVICE_ERROR_CODE)?.as_str().to_owned();
        let text = h
            .get(NATS_SERVICE_ERROR)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        Some((code, text))
    });
    // Error replies carry the Services API headers; a body is only decoded as an error when it
    // could be one (decoding every reply as an error first costs a failed parse per request).
    let maybe_error = header.is_some() || reply.payload.starts_with(b"{\"error\"");
    if maybe_error
        && let Ok(ErrorBody { error }) = serde_json::from_slice::<ErrorBody>(&reply.payload)
    {
        return Err(CallError::Api {
            code: error.code,
            message: error.message,
        });
    }
    if let Some((status, text)) = header {
        return Err(CallError::Api {
            code: format!("status {status}"),
            message: text,
        });
    }
    Ok(serde_json::from_slice(&reply.payload)?)
}

/// Tells the simulators to stop; dropping it stops them too.
pub struct StopSwitch(watch::Sender<bool>);

/// The receiving side of a [`StopSwitch`].
#[derive(Clone)]
pub struct Stop(watch::Receiver<bool>);

pub fn stop_switch() -> (StopSwitch, Stop) {
    let (tx, rx) = watch::channel(false);
    (StopSwitch(tx), Stop(rx))
}

impl StopSwitch {
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

impl Stop {
    /// Resolves once stopping was asked for (or the switch is gone).
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stopped| *stopped).await;
    }
}

/// Binds to durable consumer `consumer` of `stream` through the hub account's JetStream API
/// prefix, without reading the stream's info (roles may only send
/// `JS.hub.API.CONSUMER.INFO.<stream>.<their consumer>`).
pub async fn bind(client: &Client, stream: &str, consumer: &str) -> anyhow::Result<PullConsumer> {
    crate::startup::role_jetstream(client)
        .get_consumer_from_stream::<pull::Config, _, _>(consumer, stream)
        .await
        .with_context(|| format!("binding to durable consumer {consumer} on {stream}"))
}

/// Pulls `consumer` and runs `handle` on up to `concurrency` messages at once, until `stop`;
/// the messages being handled then finish. `handle` acknowledges.
pub async fn consume<F, Fut>(
    consumer: PullConsumer,
    name: &str,
    concurrency: usize,
    stop: Stop,
    handle: F,
) -> anyhow::Result<()>
where
    F: Fn(jetstream::Message) -> Fut,
    Fut: Future<Output = ()>,
{
    let messages = consumer
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .expires(Duration::from_secs(10))
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .with_context(|| format!("pulling from consumer {name}"))?;
    messages
        .take_until(stop.wait())
        .filter_map(|m| {
            futures::future::ready(match m {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(consumer = name, error = %e, "pulling failed; still trying");
                    None
                }
            })
        })
        .map(handle)
        .buffer_unordered(concurrency.max(1))
        .for_each(|()| futures::future::ready(()))
        .await;
    Ok(())
}

/// Acknowledges, logging a failure (the message is then redelivered after `ack_wait`).
pub async fn ack(msg: &jetstream::Message, kind: jetstream::AckKind) {
    if let Err(e) = msg.ack_with(kind).await {
        tracing::warn!(subject = %msg.subject, error = %e, "acknowledging failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_urls_swap_credentials() {
        assert_eq!(
            role_url("nats://hub:hub-dev@127.0.0.1:4222", "gateway").unwrap(),
            "nats://gateway:gateway-dev@127.0.0.1:4222"
        );
        assert_eq!(
            role_url("nats://127.0.0.1:4333", "aux").unwrap(),
            "nats://aux:aux-dev@127.0.0.1:4333"
        );
        assert_eq!(
            role_url("nats://hub:hub-dev@h:1,nats://hub:hub-dev@h:2", "gateway").unwrap(),
            "nats://gateway:gateway-dev@h:1,nats://gateway:gateway-dev@h:2"
        );
    }
}
