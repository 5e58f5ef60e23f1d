//! The NATS endpoints of service `orderhub`: decode and validate each request, check the
//! caller's ownership, hand writes to the order actors and answer reads from the read node.
//!
//! Every request runs in its own task under a cap of `limits.max_in_flight` (`status` under a
//! small cap of its own); past the cap the answer is `unavailable` at once, so no queue grows
//! without bound. A body over `limits.max_body_bytes` is refused before it takes a slot.

use std::sync::Arc;
use std::time::Instant;

use actors::Hub;
use actors::order::OrderMsg;
use actors::protocol::{
    ApiError, AuxRecordRequest, AuxView, DatabaseStatus, GetRequest, ListReply, NatsStatus,
    OrderReply, OrderView, QueryReply, QueryRequest, RecordReply, ResultRequest, ResultView,
    StatusReply, Subjects, SubmitRequest, validate_token,
};
use actors::store::Db;
use bytes::Bytes;
use entities::aux_records;
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
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Submit,
        Kind::Query,
        Kind::PartnerGet,
        Kind::PartnerResult,
        Kind::AuxRecord,
        Kind::Status,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Submit => "submit",
            Kind::Query => "query",
            Kind::PartnerGet => "partner_get",
            Kind::PartnerResult => "partner_result",
            Kind::AuxRecord => "aux_record",
            Kind::Status => "status",
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

/// What every request handler shares.
pub struct Handlers {
    pub hub: Hub,
    pub client: async_nats::Client,
    pub instance_id: String,
    pub started: Instant,
    pub max_body: usize,
    pub in_flight: Arc<Semaphore>,
    pub max_in_flight: usize,
    /// Auxiliary systems the hub runs itself: only the hub writes their records.
    pub built_in_aux: Vec<String>,
}

impl Handlers {
    fn subjects(&self) -> &Subjects {
        &self.hub.ctx.subjects
    }
    fn db(&self) -> &Db {
        &self.hub.ctx.db
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
            Kind::Status => (
                Arc::new(Semaphore::new(MAX_STATUS_IN_FLIGHT)),
                MAX_STATUS_IN_FLIGHT,
                "status requests",
            ),
            _ => (self.in_flight.clone(), self.max_in_flight, "requests"),
        };
        while let Some(request) = endpoint.next().await {
            let size = request.payload().len();
            if size > self.max_body {
                let e = ApiError::invalid(format!(
                    "the body is {size} bytes; the limit is {}",
                    self.max_body
                ));
                reply(request, Err(e)).await;
                continue;
            }
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                let e = ApiError::unavailable(format!(
                    "the hub is handling {limit} {what}, its limit; retry later"
                ));
                reply(request, Err(e)).await;
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let span = tracing::debug_span!(
                    "request",
                    endpoint = kind.name(),
                    subject = request.subject()
                );
                let answer = this.handle(kind, &request).instrument(span).await;
                reply(request, answer).await;
                drop(slot);
            });
        }
    }

    async fn handle(&self, kind: Kind, req: &Request) -> Result<Bytes, ApiError> {
        let body = req.payload();
        match kind {
            Kind::Submit => self.submit(body).await,
            Kind::Query => self.query(body).await,
            Kind::PartnerGet => {
                let partner = self.partner_of(req.subject(), "get")?;
                self.partner_get(&partner, body).await
            }
            Kind::PartnerResult => {
                let partner = self.partner_of(req.subject(), "result")?;
                self.partner_result(partner, body).await
            }
            Kind::AuxRecord => self.aux_record(req.subject(), body).await,
            Kind::Status => self.status().await,
        }
    }

    /// The partner a `…partner.<id>.<verb>` subject names: a valid token and a configured partner.
    fn partner_of(&self, subject: &str, verb: &str) -> Result<String, ApiError> {
        let token = self
            .subjects()
            .token_of(subject, "partner", verb)
            .ok_or_else(|| ApiError::invalid("the subject has no partner id"))?;
        validate_token("partner_id", token)?;
        if !self.hub.ctx.partners.contains_key(token) {
            return Err(ApiError::unknown_partner(token));
        }
        Ok(token.to_owned())
    }

    async fn submit(&self, body: &[u8]) -> Result<Bytes, ApiError> {
        let request = SubmitRequest::parse(body)?;
        if !self.hub.ctx.partners.contains_key(&request.partner_id) {
            return Err(ApiError::unknown_partner(&request.partner_id));
        }
        let order_id = uuid::Uuid::now_v7().to_string();
        let span = tracing::debug_span!("order", order_id = %order_id);
        let reply = self
            .hub
            .orders
            .submit(&order_id, request)
            .instrument(span)
            .await?;
        json(&reply)
    }

    async fn partner_get(&self, partner: &str, body: &[u8]) -> Result<Bytes, ApiError> {
        let GetRequest { order_id } = GetRequest::parse(body)?;
        let order = self.db().order(&order_id).await.map_err(read_failed)?;
        match order {
            Some(o) if o.partner_id == partner => json(&OrderReply {
                order: OrderView::from(o),
            }),
            _ => Err(ApiError::not_found(&order_id)),
        }
    }

    async fn partner_result(&self, partner: String, body: &[u8]) -> Result<Bytes, ApiError> {
        let request = ResultRequest::parse(body)?;
        let order_id = request.order_id.clone();
        let span = tracing::debug_span!("order", order_id = %order_id);
        let request = Box::new(request);
        let reply = self
            .hub
            .orders
            .call(&order_id, |reply| OrderMsg::RecordResult {
                partner_id: partner.clone(),
                request: request.clone(),
                reply,
            })
            .instrument(span)
            .await?;
        json(&reply)
    }

    async fn aux_record(&self, subject: &str, body: &[u8]) -> Result<Bytes, ApiError> {
        let system = self
            .subjects()
            .token_of(subject, "aux", "record")
            .ok_or_else(|| ApiError::invalid("the subject has no auxiliary system"))?;
        validate_token("system", system)?;
        if self.built_in_aux.iter().any(|b| b == system) {
            return Err(ApiError::invalid(format!(
                "`{system}` is an auxiliary system built into the hub; an external system records \
                 under its own name"
            )));
        }
        let request = AuxRecordRequest::parse(body)?;
        if self
            .db()
            .order(&request.order_id)
            .await
            .map_err(read_failed)?
            .is_none()
        {
            return Err(ApiError::not_found(&request.order_id));
        }
        let record = aux_records::Model {
            order_id: request.order_id.clone(),
            system: system.to_owned(),
            status: request.status,
            data: request.data,
            updated_at: chrono::Utc::now(),
        };
        self.db().upsert_aux(vec![record]).await.map_err(|e| {
            tracing::warn!(error = %e, "aux write failed");
            ApiError::unavailable("the auxiliary database is not available; retry later")
        })?;
        json(&RecordReply {
            order_id: request.order_id,
            system: system.to_owned(),
            status: "recorded".into(),
        })
    }

    async fn query(&self, body: &[u8]) -> Result<Bytes, ApiError> {
        match QueryRequest::parse(body)? {
            QueryRequest::One { user_id, order_id } => {
                let order = self.db().order(&order_id).await.map_err(read_failed)?;
                let Some(order) = order.filter(|o| o.user_id == user_id) else {
                    return Err(ApiError::not_found(&order_id));
                };
                let result = self.db().result(&order_id).await.map_err(read_failed)?;
                let aux = self
                    .db()
                    .aux_records(&order_id)
                    .await
                    .map_err(read_failed)?;
                json(&QueryReply {
                    order: OrderView::from(order),
                    result: result.map(ResultView::from),
                    aux: aux.into_iter().map(AuxView::from).collect(),
                })
            }
            QueryRequest::List {
                user_id,
                limit,
                before,
            } => {
                let orders = self
                    .db()
                    .orders_of(&user_id, limit, before.as_deref())
                    .await
                    .map_err(read_failed)?;
                let next_before = (orders.len() as u64 == limit)
                    .then(|| orders.last().map(|o| o.id.clone()))
                    .flatten();
                json(&ListReply {
                    orders: orders.into_iter().map(OrderView::from).collect(),
                    next_before,
                })
            }
        }
    }

    async fn status(&self) -> Result<Bytes, ApiError> {
        let db = self.db();
        let (replica, outbox_pending, primary_ok, aux_ok) = tokio::join!(
            self.hub.replica_status(),
            db.outbox_pending(),
            Db::ping(&db.primary),
            Db::ping(&db.aux),
        );
        let replica = replica.unwrap_or(actors::protocol::ReplicaStatus {
            mode: if db.separate_replica {
                "postgres"
            } else {
                "same-as-primary"
            }
            .into(),
            available: None,
            lag_bytes: None,
            lag_ms: None,
            confirmed_lsn: None,
            events_waiting: 0,
            reason: Some("the replication actor did not answer".into()),
        });
        json(&StatusReply {
            instance_id: self.instance_id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_s: self.started.elapsed().as_secs(),
            actors_live: self.hub.ctx.metrics.actors_live(),
            in_flight: self.in_flight() as u64,
            outbox_pending: outbox_pending.ok(),
            replica,
            nats: NatsStatus {
                connected: self.client.connection_state()
                    == async_nats::connection::State::Connected,
            },
            database: DatabaseStatus {
                primary_ok: Some(primary_ok),
                aux_ok: Some(aux_ok),
            },
        })
    }
}

fn read_failed(e: actors::store::StoreError) -> ApiError {
    tracing::warn!(error = %e, "read failed");
    ApiError::unavailable("the read node is not available; retry later")
}

fn json<T: Serialize>(value: &T) -> Result<Bytes, ApiError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| ApiError::unavailable(format!("could not encode the reply: {e}")))
}

async fn reply(request: Request, answer: Result<Bytes, ApiError>) {
    let sent = match answer {
        Ok(body) => request.respond(body).await,
        Err(e) => {
            tracing::debug!(code = e.code.as_str(), message = %e.message, "error reply");
            request
                .respond_error(e.code.status(), &e.message, e.body().into())
                .await
        }
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "reply not sent");
    }
}
