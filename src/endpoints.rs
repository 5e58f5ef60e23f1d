//! The NATS endpoints of service `orderhub`: each decodes and validates its request, calls the
//! [`Hub`], and encodes the answer. The rules (ownership, idempotency, transitions) live in the
//! actors crate; the protocol is described in `docs/protocol.md`.
//!
//! Every request runs in its own task under a cap of `limits.max_in_flight` (`status` under a
//! small cap of its own); past the cap the answer is `unavailable` at once, so no queue grows
//! without bound. A body over `limits.max_body_bytes` is refused before it takes a slot.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actors::Hub;
use actors::protocol::{
    ApiError, AuxRecordRequest, GetRequest, NatsStatus, ProcessStatus, QueryRequest, ResultRequest,
    StatusReply, Subjects, SubmitRequest, validate_token,
};
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::micro::{Endpoint, EndpointConfig, Request};

/// The endpoints, in the order they are registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Submit,
    Query,
    PartnerGet,
    PartnerResult,
    AuxRecord,
    Status,
    Trace,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Submit,
        Kind::Query,
        Kind::PartnerGet,
        Kind::PartnerResult,
        Kind::AuxRecord,
        Kind::Status,
        Kind::Trace,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Submit => "submit",
            Kind::Query => "query",
            Kind::PartnerGet => "partner_get",
            Kind::PartnerResult => "partner_result",
            Kind::AuxRecord => "aux_record",
            Kind::Status => "status",
            Kind::Trace => "trace",
        }
    }

    pub fn subject(self, s: &Subjects) -> String {
        match self {
            Kind::Submit => s.submit(),
            Kind::Query => s.query(),
            Kind::PartnerGet => s.partner_get("*"),
            Kind::PartnerResult => s.partner_result("*"),
            Kind::AuxRecord => s.aux_record("*"),
            Kind::Status => s.status(),
            Kind::Trace => s.trace(),
        }
    }

    pub fn config(self, s: &Subjects) -> EndpointConfig {
        EndpointConfig {
            name: self.name().into(),
            subject: self.subject(s),
            metadata: Default::default(),
        }
    }
}

/// Status requests a hub answers at once, outside `limits.max_in_flight`.
const MAX_STATUS_IN_FLIGHT: usize = 32;
/// The wait an `unavailable` for a full in-flight cap suggests, in ms.
const IN_FLIGHT_RETRY_AFTER_MS: u64 = 200;

/// What every request handler shares.
pub struct Handlers {
    pub hub: Hub,
    pub client: async_nats::Client,
    pub instance_id: String,
    pub started: Instant,
    pub max_body: usize,
    pub in_flight: Arc<Semaphore>,
    pub max_in_flight: usize,
    /// Shutting down: every request that still arrives is parked, and answered `unavailable`
    /// once the server routes no more requests here.
    pub stopping: AtomicBool,
    /// When the last request arrived, in ms after `started`.
    pub last_arrival_ms: AtomicU64,
    /// The requests parked while stopping (at most `max_in_flight`; more are answered at once).
    pub parked: Mutex<Vec<(Kind, Request)>>,
}

impl Handlers {
    /// Shutdown, first step: stop taking requests. Whatever the server still routes here is
    /// parked until [`Self::answer_parked`]: a client waiting for that answer sends nothing new
    /// meanwhile, so nothing of it is in flight when the hub unsubscribes (the client library
    /// drops a message the server routed just before it processed the unsubscription).
    pub fn begin_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Shutdown, last step, once the server routes no more requests here: answers the parked
    /// requests `unavailable` (a client retries; a peer instance takes it).
    pub async fn answer_parked(&self) {
        let parked = std::mem::take(&mut *self.parked.lock().expect("parked requests"));
        for (kind, request) in parked {
            reply(kind, request, Err(shutting_down())).await;
        }
    }

    /// Parks a request that arrived while stopping; beyond `max_in_flight` parked, answers it.
    async fn park(&self, kind: Kind, request: Request) {
        let overflow = {
            let mut parked = self.parked.lock().expect("parked requests");
            if parked.len() < self.max_in_flight {
                parked.push((kind, request));
                None
            } else {
                Some(request)
            }
        };
        if let Some(request) = overflow {
            reply(kind, request, Err(shutting_down())).await;
        }
    }

    /// How long ago the last request arrived.
    pub fn since_last_arrival(&self) -> std::time::Duration {
        let last = self.last_arrival_ms.load(Ordering::Relaxed);
        self.started
            .elapsed()
            .saturating_sub(std::time::Duration::from_millis(last))
    }

    /// Requests being handled now.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.in_flight.available_permits()
    }

    /// Serves one endpoint until its stream ends (the service stopped).
    ///
    /// The cheap refusals happen here, inline, before anything is spawned: a body over
    /// `limits.max_body_bytes` is `invalid_request` and a hub at its cap is `unavailable`, so
    /// neither takes a slot nor grows a queue.
    pub async fn serve(self: Arc<Self>, kind: Kind, mut endpoint: Endpoint) {
        // Operators must see a saturated hub, so `status` has slots of its own; a few, so that a
        // flood of status requests cannot spawn without bound either.
        let (slots, limit, what) = match kind {
            Kind::Status | Kind::Trace => (
                Arc::new(Semaphore::new(MAX_STATUS_IN_FLIGHT)),
                MAX_STATUS_IN_FLIGHT,
                "operator requests of this kind",
            ),
            _ => (self.in_flight.clone(), self.max_in_flight, "requests"),
        };
        while let Some(request) = endpoint.next().await {
            self.last_arrival_ms
                .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
            if self.stopping.load(Ordering::Relaxed) {
                self.park(kind, request).await;
                continue;
            }
            let size = request.payload().len();
            if size > self.max_body {
                let e = ApiError::invalid(format!(
                    "the body is {size} bytes; the limit is {}",
                    self.max_body
                ));
                reply(kind, request, Err(e)).await;
                continue;
            }
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // A slot frees within a request's time: a short wait, with the client's jitter
                // spreading the retries.
                let e = ApiError::unavailable(format!(
                    "the hub is handling {limit} {what}, its limit; retry later"
                ))
                .retry_after(IN_FLIGHT_RETRY_AFTER_MS);
                reply(kind, request, Err(e)).await;
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let span = tracing::debug_span!(
                    "request",
                    endpoint = kind.name(),
                    subject = request.subject()
                );
                let started = Instant::now();
                let answer = this.handle(kind, &request).instrument(span).await;
                if kind == Kind::Submit && answer.is_ok() {
                    metrics::histogram!("orderhub_lifecycle_seconds", "stage" => "accepted")
                        .record(started.elapsed().as_secs_f64());
                }
                reply(kind, request, answer).await;
                drop(slot);
            });
        }
    }

    async fn handle(&self, kind: Kind, req: &Request) -> Result<Bytes, ApiError> {
        let body = req.payload();
        let hub = &self.hub;
        match kind {
            Kind::Submit => json(&hub.submit(SubmitRequest::parse(body)?).await?),
            Kind::Query => json(&hub.query(QueryRequest::parse(body)?).await?),
            Kind::PartnerGet => {
                let partner = self.partner_of(req.subject(), "get")?;
                json(&hub.partner_get(&partner, GetRequest::parse(body)?).await?)
            }
            Kind::PartnerResult => {
                let partner = self.partner_of(req.subject(), "result")?;
                json(
                    &hub.record_result(&partner, ResultRequest::parse(body)?)
                        .await?,
                )
            }
            Kind::AuxRecord => {
                let system = self
                    .hub
                    .subjects()
                    .token_of(req.subject(), "aux", "record")
                    .ok_or_else(|| ApiError::invalid("the subject has no auxiliary system"))?;
                validate_token("system", system)?;
                json(
                    &hub.record_aux(system, AuxRecordRequest::parse(body)?)
                        .await?,
                )
            }
            Kind::Status => self.status().await,
            Kind::Trace => json(&hub.trace(GetRequest::parse(body)?).await?),
        }
    }

    /// The partner a `…partner.<id>.<verb>` subject names: a valid token and a configured partner.
    fn partner_of(&self, subject: &str, verb: &str) -> Result<String, ApiError> {
        let token = self
            .hub
            .subjects()
            .token_of(subject, "partner", verb)
            .ok_or_else(|| ApiError::invalid("the subject has no partner id"))?;
        validate_token("partner_id", token)?;
        if !self.hub.is_partner(token) {
            return Err(ApiError::unknown_partner(token));
        }
        Ok(token.to_owned())
    }

    async fn status(&self) -> Result<Bytes, ApiError> {
        let hub = self.hub.status().await;
        json(&StatusReply {
            instance_id: self.instance_id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_s: self.started.elapsed().as_secs(),
            actors_live: hub.actors_live,
            in_flight: self.in_flight() as u64,
            outbox_pending: hub.outbox_pending,
            outbox_oldest_ms: hub.outbox_oldest_ms,
            replica: hub.replica,
            nats: NatsStatus {
                connected: self.client.connection_state()
                    == async_nats::connection::State::Connected,
            },
            database: hub.database,
            restarts: hub.restarts,
            partners_pending: hub.pending,
            process: ProcessStatus {
                cpu_ms: process_cpu().and_then(|t| u64::try_from(t.as_millis()).ok()),
            },
        })
    }
}

/// The CPU time (user + system) this process has used so far.
pub fn process_cpu() -> Option<Duration> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the `rusage` it is given, and on success all of it.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return None;
        }
        usage.assume_init()
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).ok()?)
            .checked_add(Duration::from_micros(u64::try_from(t.tv_usec).ok()?))
    };
    time(usage.ru_utime)?.checked_add(time(usage.ru_stime)?)
}

fn json<T: Serialize>(value: &T) -> Result<Bytes, ApiError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| ApiError::unavailable(format!("could not encode the reply: {e}")))
}

fn shutting_down() -> ApiError {
    ApiError::unavailable("the hub is shutting down; retry")
}

async fn reply(kind: Kind, request: Request, answer: Result<Bytes, ApiError>) {
    let code = match &answer {
        Ok(_) => "ok",
        Err(e) => e.code.as_str(),
    };
    metrics::counter!("orderhub_requests_total", "endpoint" => kind.name(), "code" => code)
        .increment(1);
    let sent = match answer {
        Ok(body) => request.respond(body).await,
        Err(e) => {
            tracing::debug!(code = e.code.as_str(), message = %e.message, "error reply");
            let extra = e
                .retry_after_ms
                .map(|ms| (actors::protocol::RETRY_AFTER_HEADER, ms.to_string()));
            request
                .respond_error(e.code.status(), &e.message, e.body().into(), extra)
                .await
        }
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "reply not sent");
    }
}
