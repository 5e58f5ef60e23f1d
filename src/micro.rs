//! The NATS Services API ("micro", ADR-32) implemented directly on core NATS.
//!
//! async-nats has its own `service` module, but its error replies carry the two
//! `Nats-Service-Error*` headers and an empty body, while orderhub's contract needs
//! `{"error":{…}}` in the body as well. This module speaks the same protocol, so
//! `nats micro ls|info|stats|ping` see an ordinary service:
//!
//! * discovery: `$SRV.{PING,INFO,STATS}`, `.<name>` and `.<name>.<id>`, plain
//!   subscriptions (every instance answers), JSON types `io.nats.micro.v1.*_response`;
//! * one queue subscription per endpoint (wildcards allowed), so instances share load;
//! * per-endpoint statistics shared by all request handlers behind a short mutex.
//!
//! ```text
//! Service::start ──► Endpoint (Stream<Item = Request>) ──► caller spawns a task per Request
//!                                                           └─► Request::respond / respond_error
//! ```
//!
//! Each endpoint subscription is owned by a small forwarding task, so that
//! [`Service::stop`] can drain it while the caller is still consuming the stream:
//! the server stops routing new requests here (queue peers get them), requests
//! already received are still delivered and can be answered, then the stream ends.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Instant,
};

use async_nats::{Client, HeaderMap, Message, Subscriber, UnsubscribeError};
use bytes::Bytes;
use futures::{Stream, StreamExt, stream::SelectAll};
use serde::Serialize;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::{debug, warn};

/// Prefix of every discovery subject.
const SRV_PREFIX: &str = "$SRV";
/// Header carrying the numeric error code of an error reply.
pub const NATS_SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";
/// Header carrying the human-readable description of an error reply.
pub const NATS_SERVICE_ERROR: &str = "Nats-Service-Error";

const PING_RESPONSE: &str = "io.nats.micro.v1.ping_response";
const INFO_RESPONSE: &str = "io.nats.micro.v1.info_response";
const STATS_RESPONSE: &str = "io.nats.micro.v1.stats_response";

/// Requests taken off an endpoint subscription but not yet pulled from its [`Endpoint`].
/// Kept small: the subscription's own buffer is the real queue.
const ENDPOINT_BUFFER: usize = 128;

/// What a service announces about itself.
#[derive(Debug, Clone, Default)]
pub struct ServiceConfig {
    /// Service kind shared by all instances; `A-Z a-z 0-9 - _` only.
    pub name: String,
    /// SemVer version, e.g. `0.1.0`.
    pub version: String,
    /// Free text shown by `nats micro info`.
    pub description: String,
    /// Queue group of every endpoint; empty means plain subscriptions (every instance gets every request).
    pub queue_group: String,
    /// Free-form metadata of this instance.
    pub metadata: HashMap<String, String>,
}

/// One request/reply endpoint of a service.
#[derive(Debug, Clone, Default)]
pub struct EndpointConfig {
    /// Endpoint name (`A-Z a-z 0-9 - _`), shown in info and stats.
    pub name: String,
    /// Subject it listens on; may contain wildcards (`orders.partner.*.get`).
    pub subject: String,
    /// Free-form metadata of this endpoint.
    pub metadata: HashMap<String, String>,
}

/// Errors of the Services API layer.
#[derive(Debug, thiserror::Error)]
pub enum MicroError {
    /// The service name, version or an endpoint name breaks ADR-32's rules; nothing was subscribed.
    #[error("invalid service configuration: {0}")]
    InvalidConfig(String),
    /// Subscribing to `subject` failed (invalid subject or queue group, or the connection is
    /// closed); whatever `start` had subscribed so far is unsubscribed again.
    #[error("failed to subscribe to {subject}")]
    Subscribe {
        subject: String,
        #[source]
        source: async_nats::SubscribeError,
    },
    /// Publishing a reply failed (connection closed, invalid reply subject, or the reply exceeds
    /// the server's max payload). The request still counts in the endpoint's stats.
    #[error("failed to publish the reply")]
    Publish(#[source] async_nats::PublishError),
    /// The request carries no reply subject, so there is nobody to answer. Requests from an
    /// [`Endpoint`] never do: such messages are dropped (and logged at debug) before they get there.
    #[error("the request has no reply subject")]
    NoReplySubject,
    /// `stop` could not unsubscribe `subject` because the connection is closed (in which case the
    /// server has dropped the subscription anyway).
    #[error("failed to unsubscribe from {subject}")]
    Unsubscribe {
        subject: String,
        #[source]
        source: UnsubscribeError,
    },
}

/// What discovery needs to answer, fixed at start.
#[derive(Debug)]
struct ServiceShared {
    config: ServiceConfig,
    id: String,
    started: String,
    endpoints: Vec<Arc<EndpointShared>>,
}

/// One endpoint's identity, statistics, and the client its requests answer through.
#[derive(Debug)]
struct EndpointShared {
    client: Client,
    name: String,
    subject: String,
    queue_group: String,
    metadata: HashMap<String, String>,
    counters: Mutex<Counters>,
}

#[derive(Debug, Default, Clone)]
struct Counters {
    num_requests: u64,
    num_errors: u64,
    processing_time_ns: u64,
    last_error: String,
}

impl EndpointShared {
    fn counters(&self) -> MutexGuard<'_, Counters> {
        // Only plain arithmetic happens under this lock, so a poisoned lock still holds
        // consistent numbers.
        self.counters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, elapsed_ns: u64, error: Option<String>) {
        let mut counters = self.counters();
        counters.num_requests = counters.num_requests.saturating_add(1);
        counters.processing_time_ns = counters.processing_time_ns.saturating_add(elapsed_ns);
        if let Some(error) = error {
            counters.num_errors = counters.num_errors.saturating_add(1);
            counters.last_error = error;
        }
    }
}

/// Tells an endpoint's forwarding task to drain; it answers once the drain is queued.
type StopSignal = oneshot::Sender<oneshot::Sender<Result<(), UnsubscribeError>>>;

/// A running service instance; dropping it does not stop it, [`Service::stop`] does.
#[derive(Debug)]
pub struct Service {
    shared: Arc<ServiceShared>,
    endpoint_stops: Vec<(String, StopSignal)>,
    discovery_stop: oneshot::Sender<()>,
    discovery: JoinHandle<Result<(), MicroError>>,
}

impl Service {
    /// Subscribes every endpoint's subject (with the queue group), then the discovery subjects
    /// `$SRV.{PING,INFO,STATS}[.<name>[.<id>]]`, and returns the service plus one [`Endpoint`]
    /// per [`EndpointConfig`], in the same order.
    pub async fn start(
        client: Client,
        config: ServiceConfig,
        endpoints: Vec<EndpointConfig>,
    ) -> Result<(Service, Vec<Endpoint>), MicroError> {
        validate(&config, &endpoints)?;
        let id = uuid::Uuid::now_v7().simple().to_string();

        // Endpoints first, so discovery never advertises an endpoint that is not listening yet.
        let mut endpoint_subs = Vec::with_capacity(endpoints.len());
        for endpoint in &endpoints {
            let subscribed = if config.queue_group.is_empty() {
                client.subscribe(endpoint.subject.clone()).await
            } else {
                client
                    .queue_subscribe(endpoint.subject.clone(), config.queue_group.clone())
                    .await
            };
            let sub = subscribed.map_err(|source| MicroError::Subscribe {
                subject: endpoint.subject.clone(),
                source,
            })?;
            endpoint_subs.push(sub);
        }

        let mut discovery_subs = futures::stream::select_all(Vec::<Subscriber>::new());
        for verb in ["PING", "INFO", "STATS"] {
            for subject in [
                format!("{SRV_PREFIX}.{verb}"),
                format!("{SRV_PREFIX}.{verb}.{}", config.name),
                format!("{SRV_PREFIX}.{verb}.{}.{id}", config.name),
            ] {
                let sub = client
                    .subscribe(subject.clone())
                    .await
                    .map_err(|source| MicroError::Subscribe { subject, source })?;
                discovery_subs.push(sub);
            }
        }

        let endpoint_shared: Vec<Arc<EndpointShared>> = endpoints
            .into_iter()
            .map(|endpoint| {
                Arc::new(EndpointShared {
                    client: client.clone(),
                    name: endpoint.name,
                    subject: endpoint.subject,
                    queue_group: config.queue_group.clone(),
                    metadata: endpoint.metadata,
                    counters: Mutex::new(Counters::default()),
                })
            })
            .collect();
        let shared = Arc::new(ServiceShared {
            config,
            id,
            started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            endpoints: endpoint_shared.clone(),
        });

        let mut endpoint_stops = Vec::with_capacity(endpoint_subs.len());
        let mut streams = Vec::with_capacity(endpoint_subs.len());
        for (sub, endpoint) in endpoint_subs.into_iter().zip(endpoint_shared) {
            let (tx, rx) = mpsc::channel(ENDPOINT_BUFFER);
            let (stop_tx, stop_rx) = oneshot::channel();
            endpoint_stops.push((endpoint.subject.clone(), stop_tx));
            streams.push(Endpoint {
                name: endpoint.name.clone(),
                requests: rx,
            });
            tokio::spawn(forward_requests(sub, endpoint, tx, stop_rx));
        }

        let (discovery_stop, discovery_stop_rx) = oneshot::channel();
        let discovery = tokio::spawn(answer_discovery(
            client,
            discovery_subs,
            shared.clone(),
            discovery_stop_rx,
        ));
        debug!(service = %shared.config.name, id = %shared.id, "service started");
        Ok((
            Service {
                shared,
                endpoint_stops,
                discovery_stop,
                discovery,
            },
            streams,
        ))
    }

    /// The unique id of this instance (the `<id>` in `$SRV.INFO.<name>.<id>`).
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Drains every endpoint subscription (the server stops routing requests here, queue peers
    /// take the traffic; requests already received still come out of the [`Endpoint`] streams,
    /// which then end), then unsubscribes discovery. Returns once all of that is queued on the
    /// connection, without waiting for the streams to be consumed; the first failure is returned
    /// after every subscription has been tried.
    pub async fn stop(self) -> Result<(), MicroError> {
        let mut first_error = None;
        for (subject, stop) in self.endpoint_stops {
            let (ack_tx, ack_rx) = oneshot::channel();
            if stop.send(ack_tx).is_err() {
                // The forwarding task is gone: its Endpoint was dropped, which unsubscribed.
                continue;
            }
            if let Ok(Err(source)) = ack_rx.await {
                first_error.get_or_insert(MicroError::Unsubscribe { subject, source });
            }
        }
        // A send error means the discovery task already ended (connection closed).
        let _ = self.discovery_stop.send(());
        match self.discovery.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(join_error) => warn!(%join_error, "service discovery task failed"),
        }
        debug!(service = %self.shared.config.name, id = %self.shared.id, "service stopped");
        first_error.map_or(Ok(()), Err)
    }
}

/// The incoming requests of one endpoint, in arrival order; ends when the service stops.
/// Dropping it unsubscribes that endpoint.
#[derive(Debug)]
pub struct Endpoint {
    name: String,
    requests: mpsc::Receiver<Request>,
}

impl Endpoint {
    /// The endpoint's configured name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Stream for Endpoint {
    type Item = Request;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Request>> {
        self.requests.poll_recv(cx)
    }
}

/// One request, answered at most once. It counts in the endpoint's `num_requests` and
/// `processing_time` when answered, or when dropped unanswered (as the Go implementation
/// counts every request its handler returns from).
#[derive(Debug)]
pub struct Request {
    message: Message,
    received: Instant,
    endpoint: Arc<EndpointShared>,
    recorded: bool,
}

impl Request {
    /// The concrete subject the request arrived on, e.g. `orders.partner.acme-air.get`.
    pub fn subject(&self) -> &str {
        &self.message.subject
    }

    /// The request body.
    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    /// The request headers, if it had any.
    pub fn headers(&self) -> Option<&HeaderMap> {
        self.message.headers.as_ref()
    }

    /// Sends a success reply.
    pub async fn respond(mut self, body: Bytes) -> Result<(), MicroError> {
        let result = match self.message.reply.take() {
            Some(reply) => self
                .endpoint
                .client
                .publish(reply, body)
                .await
                .map_err(MicroError::Publish),
            None => Err(MicroError::NoReplySubject),
        };
        self.record(None);
        result
    }

    /// Sends an error reply: headers `Nats-Service-Error-Code: <code>` and
    /// `Nats-Service-Error: <description>` plus `body`; counts in `num_errors` and sets
    /// `last_error` to `<code>:<description>`. Line breaks in `description` become spaces
    /// (a header value cannot hold them). `extra` is one more header, if any.
    pub async fn respond_error(
        mut self,
        code: u16,
        description: &str,
        body: Bytes,
        extra: Option<(&str, String)>,
    ) -> Result<(), MicroError> {
        let description = header_safe(description);
        let result = match self.message.reply.take() {
            Some(reply) => {
                let mut headers = HeaderMap::new();
                headers.insert(NATS_SERVICE_ERROR_CODE, code.to_string());
                headers.insert(NATS_SERVICE_ERROR, description.as_str());
                if let Some((name, value)) = extra {
                    headers.insert(name, value.as_str());
                }
                self.endpoint
                    .client
                    .publish_with_headers(reply, headers, body)
                    .await
                    .map_err(MicroError::Publish)
            }
            None => Err(MicroError::NoReplySubject),
        };
        self.record(Some(format!("{code}:{description}")));
        result
    }

    fn record(&mut self, error: Option<String>) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let elapsed_ns = u64::try_from(self.received.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.endpoint.record(elapsed_ns, error);
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        self.record(None);
    }
}

/// Replaces what a NATS header value cannot carry (CR, LF) with spaces.
fn header_safe(value: &str) -> String {
    value.replace(['\r', '\n'], " ")
}

/// Moves requests from an endpoint subscription to its [`Endpoint`] stream until the stream is
/// dropped or the subscription ends; on a stop signal it drains the subscription first.
async fn forward_requests(
    mut sub: Subscriber,
    endpoint: Arc<EndpointShared>,
    tx: mpsc::Sender<Request>,
    mut stop: oneshot::Receiver<oneshot::Sender<Result<(), UnsubscribeError>>>,
) {
    let mut stop_armed = true;
    loop {
        // Take room in the stream before taking a message, so a message is never taken off the
        // subscription and then lost because the stream went away.
        let permit = tokio::select! {
            permit = tx.reserve() => match permit {
                Ok(permit) => permit,
                Err(_) => {
                    debug!(endpoint = %endpoint.name, "endpoint stream dropped; unsubscribing");
                    return;
                }
            },
            signal = &mut stop, if stop_armed => {
                stop_armed = false;
                drain_on_stop(&mut sub, signal).await;
                continue;
            }
        };
        let message = tokio::select! {
            message = sub.next() => match message {
                Some(message) => message,
                None => {
                    debug!(endpoint = %endpoint.name, "endpoint subscription ended");
                    return;
                }
            },
            signal = &mut stop, if stop_armed => {
                stop_armed = false;
                drain_on_stop(&mut sub, signal).await;
                continue;
            }
        };
        if !is_reply_subject(message.reply.as_deref()) {
            debug!(subject = %message.subject, "dropping a request without an inbox or `_R_` reply subject");
            continue;
        }
        permit.send(Request {
            message,
            received: Instant::now(),
            endpoint: endpoint.clone(),
            recorded: false,
        });
    }
}

/// Replies go only to inboxes (`_INBOX.…` or a role's `_INBOX_<user>.…`) and to the `_R_.…`
/// subjects the server makes for a request that crosses accounts through a service import.
/// Subject permissions do not limit the reply subject a requester names, and `allow_responses`
/// lets the answer through, so a request whose reply points at, say, `orders.events.…` would make
/// the hub write into the event stream. Such requests are dropped unanswered. (The configured
/// subject prefix never starts with `_`, so no reply accepted here lies under it.)
fn is_reply_subject(reply: Option<&str>) -> bool {
    reply.is_some_and(|r| {
        r.starts_with("_INBOX.") || r.starts_with("_INBOX_") || r.starts_with("_R_.")
    })
}

async fn drain_on_stop(
    sub: &mut Subscriber,
    signal: Result<oneshot::Sender<Result<(), UnsubscribeError>>, oneshot::error::RecvError>,
) {
    // A receive error means the Service handle was dropped without `stop`: keep serving.
    if let Ok(ack) = signal {
        let _ = ack.send(sub.drain().await);
    }
}

/// Answers PING, INFO and STATS until stopped or the connection closes.
async fn answer_discovery(
    client: Client,
    mut subs: SelectAll<Subscriber>,
    shared: Arc<ServiceShared>,
    mut stop: oneshot::Receiver<()>,
) -> Result<(), MicroError> {
    // PING and INFO never change: encode them once.
    let ping = encode(&ping_response(&shared));
    let info = encode(&info_response(&shared));
    let mut stop_armed = true;
    loop {
        let message = tokio::select! {
            message = subs.next() => match message {
                Some(message) => message,
                None => return Ok(()),
            },
            signal = &mut stop, if stop_armed => {
                stop_armed = false;
                if signal.is_ok() {
                    return unsubscribe_all(&mut subs).await;
                }
                // The Service handle was dropped without `stop`: keep answering.
                continue;
            }
        };
        let Some(reply) = message.reply.filter(|r| is_reply_subject(Some(r.as_str()))) else {
            continue;
        };
        let body = match message.subject.split('.').nth(1) {
            Some("PING") => ping.clone(),
            Some("INFO") => info.clone(),
            Some("STATS") => encode(&stats_response(&shared)),
            _ => continue,
        };
        if let Err(error) = client.publish(reply, body).await {
            debug!(%error, subject = %message.subject, "failed to answer a discovery request");
        }
    }
}

async fn unsubscribe_all(subs: &mut SelectAll<Subscriber>) -> Result<(), MicroError> {
    let mut first_error = None;
    for sub in subs.iter_mut() {
        if let Err(source) = sub.unsubscribe().await {
            first_error.get_or_insert(MicroError::Unsubscribe {
                subject: format!("{SRV_PREFIX}.>"),
                source,
            });
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn encode<T: Serialize>(value: &T) -> Bytes {
    match serde_json::to_vec(value) {
        Ok(json) => Bytes::from(json),
        Err(error) => {
            // String-keyed maps and plain fields cannot fail to encode; answer `{}` if they do.
            warn!(%error, "failed to encode a discovery response");
            Bytes::from_static(b"{}")
        }
    }
}

// ---- ADR-32 wire shapes -------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct PingResponse<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    id: &'a str,
    version: &'a str,
    metadata: &'a HashMap<String, String>,
}

#[derive(Debug, Serialize)]
struct InfoResponse<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    id: &'a str,
    version: &'a str,
    metadata: &'a HashMap<String, String>,
    description: &'a str,
    endpoints: Vec<EndpointInfo<'a>>,
}

#[derive(Debug, Serialize)]
struct EndpointInfo<'a> {
    name: &'a str,
    subject: &'a str,
    queue_group: &'a str,
    metadata: &'a HashMap<String, String>,
}

#[derive(Debug, Serialize)]
struct StatsResponse<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    id: &'a str,
    version: &'a str,
    metadata: &'a HashMap<String, String>,
    /// RFC 3339, UTC.
    started: &'a str,
    endpoints: Vec<EndpointStats<'a>>,
}

#[derive(Debug, Serialize)]
struct EndpointStats<'a> {
    name: &'a str,
    subject: &'a str,
    queue_group: &'a str,
    num_requests: u64,
    num_errors: u64,
    /// `<code>:<description>` of the last error reply, `""` when there was none.
    last_error: String,
    /// Nanoseconds.
    processing_time: u64,
    /// Nanoseconds: `processing_time / num_requests`, truncated; 0 without requests.
    average_processing_time: u64,
    /// ADR-32's optional custom data; orderhub has none, so it is left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<serde_json::Value>,
}

fn ping_response(shared: &ServiceShared) -> PingResponse<'_> {
    PingResponse {
        kind: PING_RESPONSE,
        name: &shared.config.name,
        id: &shared.id,
        version: &shared.config.version,
        metadata: &shared.config.metadata,
    }
}

fn info_response(shared: &ServiceShared) -> InfoResponse<'_> {
    InfoResponse {
        kind: INFO_RESPONSE,
        name: &shared.config.name,
        id: &shared.id,
        version: &shared.config.version,
        metadata: &shared.config.metadata,
        description: &shared.config.description,
        endpoints: shared
            .endpoints
            .iter()
            .map(|endpoint| EndpointInfo {
                name: &endpoint.name,
                subject: &endpoint.subject,
                queue_group: &endpoint.queue_group,
                metadata: &endpoint.metadata,
            })
            .collect(),
    }
}

fn stats_response(shared: &ServiceShared) -> StatsResponse<'_> {
    StatsResponse {
        kind: STATS_RESPONSE,
        name: &shared.config.name,
        id: &shared.id,
        version: &shared.config.version,
        metadata: &shared.config.metadata,
        started: &shared.started,
        endpoints: shared
            .endpoints
            .iter()
            .map(|endpoint| {
                let counters = endpoint.counters().clone();
                EndpointStats {
                    name: &endpoint.name,
                    subject: &endpoint.subject,
                    queue_group: &endpoint.queue_group,
                    num_requests: counters.num_requests,
                    num_errors: counters.num_errors,
                    last_error: counters.last_error,
                    processing_time: counters.processing_time_ns,
                    average_processing_time: counters
                        .processing_time_ns
                        .checked_div(counters.num_requests)
                        .unwrap_or(0),
                    data: None,
                }
            })
            .collect(),
    }
}

// ---- configuration rules (ADR-32, ADR-33) ---------------------------------------------------

fn validate(config: &ServiceConfig, endpoints: &[EndpointConfig]) -> Result<(), MicroError> {
    if !is_valid_name(&config.name) {
        return Err(MicroError::InvalidConfig(format!(
            "service name {:?} must be non-empty and use only A-Z, a-z, 0-9, '-' and '_'",
            config.name
        )));
    }
    if !is_semver(&config.version) {
        return Err(MicroError::InvalidConfig(format!(
            "service version {:?} is not a SemVer version such as 1.2.3",
            config.version
        )));
    }
    if let Some(endpoint) = endpoints.iter().find(|e| !is_valid_name(&e.name)) {
        return Err(MicroError::InvalidConfig(format!(
            "endpoint name {:?} must be non-empty and use only A-Z, a-z, 0-9, '-' and '_'",
            endpoint.name
        )));
    }
    Ok(())
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// SemVer 2.0.0: `MAJOR.MINOR.PATCH[-prerelease][+build]`, no leading zeros in numbers.
fn is_semver(version: &str) -> bool {
    let (rest, build) = match version.split_once('+') {
        Some((rest, build)) => (rest, Some(build)),
        None => (version, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (rest, None),
    };
    let numeric = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
    };
    let identifier =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| numeric(p))
        && pre.is_none_or(|pre| {
            pre.split('.').all(|id| {
                identifier(id) && (!id.bytes().all(|b| b.is_ascii_digit()) || numeric(id))
            })
        })
        && build.is_none_or(|build| build.split('.').all(identifier))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn replies_go_to_inboxes_and_cross_account_replies_only() {
        for ok in ["_INBOX.abc.1", "_INBOX_gateway.x.2", "_R_.xyz.AbC"] {
            assert!(is_reply_subject(Some(ok)), "{ok}");
        }
        for bad in [
            "orders.events.result.u-1.0192",
            "orders.submit",
            "_R_",
            "_INBOXES.x",
            "$JS.API.STREAM.INFO.ORDER_EVENTS",
            "",
        ] {
            assert!(!is_reply_subject(Some(bad)), "{bad}");
        }
        assert!(!is_reply_subject(None));
    }

    fn client_free_shared() -> ServiceShared {
        ServiceShared {
            config: ServiceConfig {
                name: "orderhub".into(),
                version: "0.1.0".into(),
                description: "order hub".into(),
                queue_group: "orderhub".into(),
                metadata: HashMap::new(),
            },
            id: "abc".into(),
            started: "2026-01-02T03:04:05.000000006Z".into(),
            endpoints: Vec::new(),
        }
    }

    #[test]
    fn ping_has_the_adr_32_fields_and_an_object_for_empty_metadata() {
        let shared = client_free_shared();
        let value = serde_json::to_value(ping_response(&shared)).unwrap();
        assert_eq!(
            value,
            json!({"type":"io.nats.micro.v1.ping_response","name":"orderhub","id":"abc",
                   "version":"0.1.0","metadata":{}})
        );
    }

    #[test]
    fn info_lists_endpoints_with_subject_queue_group_and_metadata() {
        let shared = client_free_shared();
        let value = serde_json::to_value(info_response(&shared)).unwrap();
        assert_eq!(
            value,
            json!({"type":"io.nats.micro.v1.info_response","name":"orderhub","id":"abc",
                   "version":"0.1.0","metadata":{},"description":"order hub","endpoints":[]})
        );
        let metadata = HashMap::from([("kind".to_string(), "rpc".to_string())]);
        let endpoint = serde_json::to_value(EndpointInfo {
            name: "partner_get",
            subject: "orders.partner.*.get",
            queue_group: "orderhub",
            metadata: &metadata,
        })
        .unwrap();
        assert_eq!(
            endpoint,
            json!({"name":"partner_get","subject":"orders.partner.*.get",
                   "queue_group":"orderhub","metadata":{"kind":"rpc"}})
        );
    }

    #[test]
    fn stats_report_nanoseconds_integers_and_last_error() {
        let shared = client_free_shared();
        let stats = EndpointStats {
            name: "submit",
            subject: "orders.submit",
            queue_group: "orderhub",
            num_requests: 3,
            num_errors: 1,
            last_error: "400:bad".into(),
            processing_time: 3_000,
            average_processing_time: 1_000,
            data: None,
        };
        assert_eq!(
            serde_json::to_value(&stats).unwrap(),
            json!({"name":"submit","subject":"orders.submit","queue_group":"orderhub",
                   "num_requests":3,"num_errors":1,"last_error":"400:bad",
                   "processing_time":3000,"average_processing_time":1000})
        );
        let value = serde_json::to_value(stats_response(&shared)).unwrap();
        assert_eq!(value["type"], "io.nats.micro.v1.stats_response");
        assert_eq!(value["started"], "2026-01-02T03:04:05.000000006Z");
        assert_eq!(value["metadata"], json!({}));
        assert!(matches!(value["endpoints"], Value::Array(_)));
    }

    #[test]
    fn names_and_versions_follow_adr_32() {
        assert!(is_valid_name("orderhub"));
        assert!(is_valid_name("partner-get_2"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("order.hub"));
        assert!(!is_valid_name("order hub"));
        for ok in [
            "0.1.0",
            "1.2.3-rc.1",
            "1.2.3+build.5",
            "10.20.30-alpha-1+x.y",
        ] {
            assert!(is_semver(ok), "{ok}");
        }
        for bad in [
            "", "1", "1.2", "01.2.3", "1.2.3-", "1.2.3-01", "1.2.3+", "v1.2.3", "1.2.x",
        ] {
            assert!(!is_semver(bad), "{bad}");
        }
    }

    #[test]
    fn header_values_lose_line_breaks() {
        assert_eq!(header_safe("bad\r\nthing\n"), "bad  thing ");
    }
}
