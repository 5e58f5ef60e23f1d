//! What every simulated outside service shares: a connection as its own `nats.conf` role,
//! request/reply with the hub's error replies decoded (and its retry hint), asking again while the
//! hub is busy or silent, and concurrent pulling from its durable consumer on `ORDER_EVENTS`
//! until told to stop.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::pull::MessagesErrorKind;
use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull};
use async_nats::{Client, HeaderMap, RequestErrorKind};
use bytes::Bytes;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use actors::protocol::Subjects;

use super::backoff::Backoff;
use super::seen::Observer;
use crate::micro::{NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE};
use crate::urls::{NatsUrls, redact};

/// Messages asked for per pull request.
const PULL_BATCH: usize = 256;
/// How long one attempt of a request waits for its reply before it counts as unanswered.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause before a consumer is bound again after its pull ended.
const REBIND_PAUSE: Duration = Duration::from_millis(500);

/// The hub's URL (every server of it) with the credentials of another `nats.conf` role:
/// `<user>:<user>-dev`, the development passwords. The URL's own login is replaced.
pub fn role_url(hub_url: &str, user: &str) -> anyhow::Result<String> {
    Ok(NatsUrls::parse(hub_url)?.with_login(user, &format!("{user}-dev")))
}

/// Connects as `user` (with its own `_INBOX_<user>` prefix, see [`crate::startup::connect_nats`]).
pub async fn connect_role(hub_url: &str, user: &str) -> anyhow::Result<Client> {
    let url = role_url(hub_url, user)?;
    crate::startup::connect_nats(&url, &format!("orderhub-sim-{user}"))
        .await
        .with_context(|| format!("connecting as NATS user `{user}` ({})", redact(&url)))
}

/// Why a request to the hub did not give the expected reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The hub answered with an error reply (`{"error":{"code","message"}}`); an `unavailable`
    /// one carries the wait the hub suggests.
    #[error("{code}: {message}")]
    Api {
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
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

    /// The wait the hub suggested before a retry (`Orderhub-Retry-After-Ms`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The wait a reply's `Orderhub-Retry-After-Ms` header suggests; `None` without a numeric one.
pub fn retry_hint(headers: Option<&HeaderMap>) -> Option<Duration> {
    let ms = headers?
        .get(actors::protocol::RETRY_AFTER_HEADER)?
        .as_str()
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_millis(ms))
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

/// Sends `body` to `subject` once and decodes the reply as `T`, or the hub's error reply.
pub async fn call<T: DeserializeOwned>(
    client: &Client,
    subject: String,
    body: &impl Serialize,
) -> Result<T, CallError> {
    attempt(client, subject, serde_json::to_vec(body)?.into()).await
}

async fn attempt<T: DeserializeOwned>(
    client: &Client,
    subject: String,
    payload: Bytes,
) -> Result<T, CallError> {
    let request = async_nats::Request::new()
        .payload(payload)
        .timeout(Some(ATTEMPT_TIMEOUT));
    let reply = client.send_request(subject, request).await?;
    let header = reply.headers.as_ref().and_then(|h| {
        let code = h.get(NATS_SERVICE_ERROR_CODE)?.as_str().to_owned();
        let text = h
            .get(NATS_SERVICE_ERROR)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        Some((code, text))
    });
    let retry_after = retry_hint(reply.headers.as_ref());
    // Error replies carry the Services API headers; a body is only decoded as an error when it
    // could be one (decoding every reply as an error first costs a failed parse per request).
    let maybe_error = header.is_some() || reply.payload.starts_with(b"{\"error\"");
    if maybe_error
        && let Ok(ErrorBody { error }) = serde_json::from_slice::<ErrorBody>(&reply.payload)
    {
        return Err(CallError::Api {
            code: error.code,
            message: error.message,
            retry_after,
        });
    }
    if let Some((status, text)) = header {
        return Err(CallError::Api {
            code: format!("status {status}"),
            message: text,
            retry_after,
        });
    }
    Ok(serde_json::from_slice(&reply.payload)?)
}

/// How long [`ask`] keeps asking.
#[derive(Clone, Debug, Default)]
pub struct Patience {
    /// It gives up once stopping was asked for…
    pub stop: Stop,
    /// …or when the next attempt would come after this.
    pub until: Option<Instant>,
    /// A `not_found` answer is asked again this many times (a read node catching up).
    pub not_found: u32,
}

impl Patience {
    pub fn until_stopped(stop: &Stop) -> Self {
        Self {
            stop: stop.clone(),
            ..Self::default()
        }
    }
}

/// Sends `body` to `subject` until the hub gives an answer worth keeping. While it answers
/// `unavailable` or does not answer, it is asked again (same body, so the same idempotency key)
/// after the wait of a [`Backoff`]: the hub's hint with jitter, or a doubling step; `retried`
/// hears of each such attempt and the wait before the next. Gives up as `patience` says, with the
/// last error.
pub async fn ask<T: DeserializeOwned>(
    client: &Client,
    subject: String,
    body: &impl Serialize,
    patience: &Patience,
    mut retried: impl FnMut(&CallError, Duration),
) -> Result<T, CallError> {
    let payload: Bytes = serde_json::to_vec(body)?.into();
    let mut backoff = Backoff::default();
    let mut not_found = 0;
    loop {
        let e = match attempt(client, subject.clone(), payload.clone()).await {
            Ok(reply) => return Ok(reply),
            Err(e) => e,
        };
        let again = e.is_retryable()
            || (e.code() == Some(actors::protocol::ErrorCode::NotFound.as_str()) && {
                not_found += 1;
                not_found <= patience.not_found
            });
        if !again || patience.stop.is_stopped() {
            return Err(e);
        }
        let wait = backoff.wait(e.retry_after());
        if patience
            .until
            .is_some_and(|until| Instant::now() + wait >= until)
        {
            return Err(e);
        }
        retried(&e, wait);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = patience.stop.clone().wait() => return Err(e),
        }
    }
}

/// Tells the simulators to stop; dropping it stops them too.
pub struct StopSwitch(watch::Sender<bool>);

/// The receiving side of a [`StopSwitch`]; the default one never stops.
#[derive(Clone, Debug, Default)]
pub struct Stop(Option<watch::Receiver<bool>>);

pub fn stop_switch() -> (StopSwitch, Stop) {
    let (tx, rx) = watch::channel(false);
    (StopSwitch(tx), Stop(Some(rx)))
}

impl StopSwitch {
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

impl Stop {
    /// Resolves once stopping was asked for (or the switch is gone); never for the default.
    pub async fn wait(self) {
        match self.0 {
            Some(mut rx) => {
                let _ = rx.wait_for(|stopped| *stopped).await;
            }
            None => std::future::pending().await,
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|rx| *rx.borrow() || rx.has_changed().is_err())
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

/// A participant's connection as its own role and the subjects it uses; where it notes what it
/// receives and is answered; how often it asks a `not_found` answer again; and, once started,
/// what stops it.
#[derive(Clone)]
pub struct Role {
    pub(super) client: Client,
    pub(super) subjects: Subjects,
    pub(super) observer: Observer,
    not_found_retries: u32,
    pub(super) stop: Stop,
}

impl Role {
    /// The participant on `client` (connected as its role).
    pub fn new(client: Client, subjects: Subjects) -> Self {
        Self {
            client,
            subjects,
            observer: Observer::default(),
            not_found_retries: 0,
            stop: Stop::default(),
        }
    }

    /// Notes every delivery and answer in `observer`.
    pub fn observer(mut self, observer: Observer) -> Self {
        self.observer = observer;
        self
    }

    /// Asks a write answered `not_found` again up to `n` times (a read node catching up) before
    /// the order counts as stale.
    pub fn not_found_retries(mut self, n: u32) -> Self {
        self.not_found_retries = n;
        self
    }

    /// Asking until stopped; a `not_found` answer again as configured when `patient`.
    pub(super) fn patience(&self, patient: bool) -> Patience {
        Patience {
            not_found: if patient { self.not_found_retries } else { 0 },
            ..Patience::until_stopped(&self.stop)
        }
    }

    /// Binds durable consumer `consumer` of `stream`, to be pulled `concurrency` messages at once
    /// until `stop`.
    pub(super) async fn bind(
        &mut self,
        stream: &str,
        consumer: String,
        concurrency: usize,
        stop: Stop,
    ) -> anyhow::Result<(Pull, PullConsumer)> {
        let durable = bind(&self.client, stream, &consumer).await?;
        self.stop = stop.clone();
        let pull = Pull {
            client: self.client.clone(),
            stream: stream.to_owned(),
            consumer,
            concurrency,
            stop,
            observer: self.observer.clone(),
        };
        Ok((pull, durable))
    }
}

/// A participant's pulling task. It ends once its [`Stop`] fires and the messages in hand are
/// handled.
pub struct Running {
    task: JoinHandle<()>,
    busy: Arc<AtomicUsize>,
}

impl Running {
    /// How many messages are being handled right now.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::SeqCst)
    }

    /// Waits for the task to end (after its stop).
    pub async fn join(self) {
        if let Err(e) = self.task.await
            && e.is_panic()
        {
            tracing::error!(error = %e, "a simulator panicked");
        }
    }

    /// Waits for the task to end (after its stop), at most `within`; then aborts it. `false`
    /// when it had to be aborted.
    pub async fn finish(mut self, within: Duration) -> bool {
        if tokio::time::timeout(within, &mut self.task).await.is_ok() {
            return true;
        }
        self.task.abort();
        false
    }
}

/// A durable consumer to pull and how.
pub struct Pull {
    pub client: Client,
    pub stream: String,
    pub consumer: String,
    /// Messages handled at once.
    pub concurrency: usize,
    pub stop: Stop,
    /// Where every delivery is noted.
    pub observer: Observer,
}

impl Pull {
    /// Pulls the consumer, starting with `first` (already bound), until stopped; runs `handle` on
    /// up to `concurrency` messages at once (`handle` acknowledges) and notes every delivery.
    /// When the pull ends (the consumer deleted, a NATS node gone, heartbeats missed) the
    /// consumer is bound again. Once stopped, the messages in hand finish.
    pub fn spawn<F, Fut>(self, first: PullConsumer, handle: F) -> Running
    where
        F: Fn(jetstream::Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Self {
            client,
            stream,
            consumer: name,
            concurrency,
            stop,
            observer,
        } = self;
        let busy = Arc::new(AtomicUsize::new(0));
        let counted = busy.clone();
        let task = tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(concurrency.max(1)));
            let mut handling = JoinSet::new();
            let mut consumer = Some(first);
            // Bind failures in a row: the first is a warning, the rest (NATS still away) are not.
            let mut failures = 0u32;
            loop {
                let bound = match consumer.take() {
                    Some(c) => Ok(c),
                    None => bind(&client, &stream, &name).await,
                };
                let messages = match bound {
                    Ok(c) => c
                        .stream()
                        .max_messages_per_batch(PULL_BATCH)
                        .expires(Duration::from_secs(10))
                        .heartbeat(Duration::from_secs(5))
                        .messages()
                        .await
                        .map_err(anyhow::Error::from),
                    Err(e) => Err(e),
                };
                match messages {
                    Ok(mut messages) => {
                        failures = 0;
                        loop {
                            let next = tokio::select! {
                                biased;
                                () = stop.clone().wait() => None,
                                next = messages.next() => next,
                            };
                            let msg = match next {
                                None => break,
                                Some(Ok(m)) => m,
                                Some(Err(e)) => match e.kind() {
                                    MessagesErrorKind::ConsumerDeleted
                                    | MessagesErrorKind::NoResponders
                                    | MessagesErrorKind::MissingHeartbeat => {
                                        tracing::info!(consumer = %name, error = %e, "pull ended; binding again");
                                        break;
                                    }
                                    _ => {
                                        tracing::debug!(consumer = %name, error = %e, "pulling failed; still trying");
                                        continue;
                                    }
                                },
                            };
                            observer.delivered(&msg.payload);
                            let permit = tokio::select! {
                                () = stop.clone().wait() => None,
                                p = slots.clone().acquire_owned() => p.ok(),
                            };
                            let Some(permit) = permit else {
                                ack(&msg, jetstream::AckKind::Nak(None)).await;
                                break;
                            };
                            counted.fetch_add(1, Ordering::SeqCst);
                            let (handled, counted) = (handle(msg), counted.clone());
                            handling.spawn(async move {
                                handled.await;
                                counted.fetch_sub(1, Ordering::SeqCst);
                                drop(permit);
                            });
                            while handling.try_join_next().is_some() {}
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        if failures == 1 {
                            tracing::warn!(consumer = %name, error = format!("{e:#}"), "binding failed; trying again");
                        } else {
                            tracing::debug!(consumer = %name, error = format!("{e:#}"), "binding failed again");
                        }
                    }
                }
                if stop.is_stopped() {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep(REBIND_PAUSE) => {}
                    () = stop.clone().wait() => break,
                }
            }
            while handling.join_next().await.is_some() {}
            let _ = client.flush().await;
        });
        Running { task, busy }
    }
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

    #[test]
    fn the_retry_hint_is_read_from_its_header() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_hint(Some(&h)), None);
        h.insert(actors::protocol::RETRY_AFTER_HEADER, "750");
        assert_eq!(retry_hint(Some(&h)), Some(Duration::from_millis(750)));
        h.insert(actors::protocol::RETRY_AFTER_HEADER, "soon");
        assert_eq!(retry_hint(Some(&h)), None);
        assert_eq!(retry_hint(None), None);
    }

    #[test]
    fn a_default_stop_never_fires_and_a_dropped_switch_does() {
        assert!(!Stop::default().is_stopped());
        let (switch, stop) = stop_switch();
        assert!(!stop.is_stopped());
        drop(switch);
        assert!(stop.is_stopped());
        let (switch, stop) = stop_switch();
        switch.stop();
        assert!(stop.is_stopped());
    }
}
