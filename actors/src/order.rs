//! OrderActor: the only writer of its order (registry name `order:<id>`). It checks every move of
//! the state machine `accepted → dispatched → result_stored → notified`, builds the outbox event
//! that goes with it and hands both to its writer, which commits them with other orders' changes
//! in one transaction. It stops when the order is settled and idle (or idle for long), and is
//! reloaded from the primary when it is needed again.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use entities::{order_results, orders, outbox};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::json;

use crate::Context;
use crate::protocol::{
    ApiError, CloudEvent, EventData, EventKind, OrderStatus, Outcome, ResultRequest, SubmitReply,
    SubmitRequest, rfc3339,
};
use crate::writer::{Transition, WriteOp, WriteOutcome, WriterMsg};

pub type Reply = RpcReplyPort<Result<SubmitReply, ApiError>>;

pub enum OrderMsg {
    /// Store a new order under this actor's id.
    Submit(Box<SubmitRequest>, Reply),
    /// A partner's result; `partner_id` is the caller's, from the subject.
    RecordResult {
        partner_id: String,
        request: Box<ResultRequest>,
        reply: Reply,
    },
    /// The deadline actor says the partner's time is up.
    Expire,
    /// The relay published this event.
    Released {
        event_id: String,
        kind: EventKind,
    },
    IdleCheck,
}

pub struct OrderActor;

pub struct OrderArgs {
    pub id: String,
    pub ctx: Arc<Context>,
    /// `true` for a brand-new order (nothing to load).
    pub new: bool,
}

pub struct OrderState {
    id: String,
    ctx: Arc<Context>,
    order: Option<orders::Model>,
    result: Option<order_results::Model>,
    last_active: Instant,
}

impl Actor for OrderActor {
    type Msg = OrderMsg;
    type State = OrderState;
    type Arguments = OrderArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: OrderArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (order, result) = if args.new {
            (None, None)
        } else {
            match args.ctx.db.order_on_primary(&args.id).await? {
                Some((o, r)) => (Some(o), r),
                None => (None, None),
            }
        };
        args.ctx.metrics.actor_started();
        myself.send_after(args.ctx.tuning.settle_linger, || OrderMsg::IdleCheck);
        Ok(OrderState {
            id: args.id,
            ctx: args.ctx,
            order,
            result,
            last_active: Instant::now(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut OrderState,
    ) -> Result<(), ActorProcessingErr> {
        state.ctx.metrics.actor_stopped();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: OrderMsg,
        state: &mut OrderState,
    ) -> Result<(), ActorProcessingErr> {
        let span = tracing::debug_span!("order", order_id = %state.id);
        let _guard = span.enter();
        if !matches!(msg, OrderMsg::IdleCheck) {
            state.last_active = Instant::now();
        }
        match msg {
            OrderMsg::Submit(request, reply) => {
                let answer = state.submit(*request).await;
                let _ = reply.send(answer);
                if state.order.is_none() {
                    // A duplicate or a failed insert: this id holds no order.
                    myself.stop(None);
                }
            }
            OrderMsg::RecordResult {
                partner_id,
                request,
                reply,
            } => {
                let answer = state.record_result(&partner_id, *request).await;
                let _ = reply.send(answer);
            }
            OrderMsg::Expire => state.expire().await,
            OrderMsg::Released { event_id, kind } => state.released(event_id, kind).await,
            OrderMsg::IdleCheck => {
                let idle = state.last_active.elapsed();
                let tuning = &state.ctx.tuning;
                let settled = state
                    .order
                    .as_ref()
                    .is_none_or(|o| o.status == OrderStatus::Notified.as_str());
                if (settled && idle >= tuning.settle_linger) || idle >= tuning.idle_stop {
                    myself.stop(None);
                } else {
                    let next = if settled {
                        tuning.settle_linger
                    } else {
                        tuning.idle_stop.min(tuning.settle_linger * 10)
                    };
                    myself.send_after(next, || OrderMsg::IdleCheck);
                }
            }
        }
        Ok(())
    }
}

impl OrderState {
    async fn write(&self, op: WriteOp) -> Result<WriteOutcome, ApiError> {
        let writer = self.ctx.writers.for_order(&self.id);
        match writer
            .call(
                |reply| WriterMsg::Write(Box::new(op), reply),
                Some(self.ctx.tuning.write_timeout),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(Ok(outcome))) => Ok(outcome),
            Ok(ractor::rpc::CallResult::Success(Err(e))) => {
                tracing::warn!(error = %e, "write failed");
                Err(ApiError::unavailable(
                    "the primary database is not available; retry later",
                ))
            }
            Ok(ractor::rpc::CallResult::Timeout) => Err(ApiError::unavailable(
                "the primary database did not answer in time; retry later",
            )),
            Ok(ractor::rpc::CallResult::SenderError) | Err(_) => Err(ApiError::unavailable(
                "the hub is shutting down; retry later",
            )),
        }
    }

    async fn reload(&mut self) -> Result<(), ApiError> {
        match self.ctx.db.order_on_primary(&self.id).await {
            Ok(Some((o, r))) => {
                self.order = Some(o);
                self.result = r;
                Ok(())
            }
            Ok(None) => {
                self.order = None;
                self.result = None;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "reload failed");
                Err(ApiError::unavailable(
                    "the primary database is not available; retry later",
                ))
            }
        }
    }

    fn event(
        &self,
        kind: EventKind,
        order: &orders::Model,
        version: i32,
        result: Option<&order_results::Model>,
        now: chrono::DateTime<Utc>,
    ) -> outbox::Model {
        let id = uuid::Uuid::now_v7().to_string();
        let data = EventData {
            order_id: order.id.clone(),
            user_id: order.user_id.clone(),
            partner_id: order.partner_id.clone(),
            version,
            outcome: result.map(|r| r.outcome.clone()),
            partner_ref: result.map(|r| r.partner_ref.clone()),
        };
        let subject = match kind {
            EventKind::Stored => self.ctx.subjects.stored_event(&order.partner_id, &order.id),
            EventKind::ResultStored => self.ctx.subjects.result_event(&order.user_id, &order.id),
        };
        let payload =
            serde_json::to_string(&CloudEvent::new(kind, id.clone(), rfc3339(&now), data))
                .unwrap_or_default();
        outbox::Model {
            id,
            order_id: order.id.clone(),
            subject,
            payload,
            created_at: now,
            published_at: None,
        }
    }

    async fn submit(&mut self, req: SubmitRequest) -> Result<SubmitReply, ApiError> {
        let now = Utc::now();
        let order = orders::Model {
            id: self.id.clone(),
            user_id: req.user_id,
            request_id: req.request_id,
            partner_id: req.partner_id,
            product: req.product,
            amount_minor: req.amount_minor,
            currency: req.currency,
            items: req.items,
            payload: req.payload,
            status: OrderStatus::Accepted.as_str().into(),
            version: OrderStatus::Accepted.version(),
            result_deadline: None,
            created_at: now,
            updated_at: now,
        };
        let event = self.event(EventKind::Stored, &order, order.version, None, now);
        match self
            .write(WriteOp::InsertOrder {
                order: order.clone(),
                event,
            })
            .await?
        {
            WriteOutcome::Done => {
                self.order = Some(order);
                Ok(SubmitReply {
                    order_id: self.id.clone(),
                    status: "accepted".into(),
                    duplicate: false,
                })
            }
            WriteOutcome::DuplicateOrder(existing) => {
                let same = existing.partner_id == order.partner_id
                    && existing.product == order.product
                    && existing.amount_minor == order.amount_minor
                    && existing.currency == order.currency
                    && existing.items == order.items
                    && existing.payload == order.payload;
                if same {
                    Ok(SubmitReply {
                        order_id: existing.id,
                        status: "accepted".into(),
                        duplicate: true,
                    })
                } else {
                    Err(ApiError::conflict(format!(
                        "request_id `{}` was already used by this user for order {} with a different body",
                        order.request_id, existing.id
                    )))
                }
            }
            other => {
                tracing::error!(?other, "unexpected outcome for an insert");
                Err(ApiError::unavailable(
                    "the order could not be stored; retry later",
                ))
            }
        }
    }

    /// Answers a result that meets an existing one.
    fn settled_answer(
        &self,
        existing: &order_results::Model,
        req: &ResultRequest,
    ) -> Result<SubmitReply, ApiError> {
        let same = existing.result_id == req.result_id
            && existing.outcome == req.outcome.as_str()
            && existing.partner_ref == req.partner_ref
            && existing.detail == req.detail;
        if same {
            return Ok(SubmitReply {
                order_id: self.id.clone(),
                status: "result_stored".into(),
                duplicate: true,
            });
        }
        if existing.result_id == req.result_id {
            return Err(ApiError::conflict(format!(
                "result_id `{}` was already used for this order with a different body",
                req.result_id
            )));
        }
        Err(ApiError::conflict(format!(
            "order {} already has a result (outcome `{}`)",
            self.id, existing.outcome
        )))
    }

    async fn record_result(
        &mut self,
        partner_id: &str,
        req: ResultRequest,
    ) -> Result<SubmitReply, ApiError> {
        for _ in 0..3 {
            let Some(order) = self.order.clone().filter(|o| o.partner_id == partner_id) else {
                return Err(ApiError::not_found(&self.id));
            };
            if let Some(existing) = &self.result {
                return self.settled_answer(existing, &req);
            }
            match self
                .store_result(
                    &order,
                    req.result_id.clone(),
                    req.outcome,
                    req.partner_ref.clone(),
                    req.detail.clone(),
                )
                .await?
            {
                WriteOutcome::Done => {
                    return Ok(SubmitReply {
                        order_id: self.id.clone(),
                        status: "result_stored".into(),
                        duplicate: false,
                    });
                }
                WriteOutcome::ResultExists(existing) => {
                    self.result = Some(*existing);
                }
                _ => self.reload().await?,
            }
        }
        Err(ApiError::unavailable(
            "the order kept changing under this result; retry",
        ))
    }

    /// Commits a result and the order's move to `result_stored` (version 3), whatever the order's
    /// version was: a result that overtakes the `dispatched` mark still leaves version 3.
    async fn store_result(
        &mut self,
        order: &orders::Model,
        result_id: String,
        outcome: Outcome,
        partner_ref: Option<String>,
        detail: serde_json::Value,
    ) -> Result<WriteOutcome, ApiError> {
        let now = Utc::now();
        let result = order_results::Model {
            order_id: self.id.clone(),
            result_id,
            outcome: outcome.as_str().into(),
            partner_ref,
            detail,
            received_at: now,
        };
        let status = OrderStatus::ResultStored;
        let event = self.event(
            EventKind::ResultStored,
            order,
            status.version(),
            Some(&result),
            now,
        );
        let outcome = self
            .write(WriteOp::StoreResult {
                result: result.clone(),
                expected_version: order.version,
                status: status.as_str(),
                version: status.version(),
                event,
            })
            .await?;
        if matches!(outcome, WriteOutcome::Done) {
            if let Some(o) = self.order.as_mut() {
                o.status = status.as_str().into();
                o.version = status.version();
                o.updated_at = now;
            }
            self.result = Some(result);
        }
        Ok(outcome)
    }

    async fn expire(&mut self) {
        if self.reload().await.is_err() {
            return;
        }
        let Some(order) = self.order.clone() else {
            return;
        };
        let due = order.status == OrderStatus::Dispatched.as_str()
            && self.result.is_none()
            && order.result_deadline.is_some_and(|d| d <= Utc::now());
        if !due {
            return;
        }
        let timeout = self.ctx.result_timeout(&order.partner_id);
        let detail = json!({"reason": format!("partner `{}` did not answer within {}s", order.partner_id, timeout.as_secs())});
        match self
            .store_result(
                &order,
                "orderhub-timeout".into(),
                Outcome::Timeout,
                None,
                detail,
            )
            .await
        {
            Ok(WriteOutcome::Done) => {
                tracing::info!("partner missed the deadline: outcome timeout")
            }
            Ok(_) => {
                let _ = self.reload().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not close an overdue order; the deadline actor retries")
            }
        }
    }

    async fn released(&mut self, event_id: String, kind: EventKind) {
        let transition = self.order.as_ref().and_then(|o| match kind {
            EventKind::Stored if o.status == OrderStatus::Accepted.as_str() => Some(Transition {
                from_version: o.version,
                status: OrderStatus::Dispatched.as_str(),
                version: OrderStatus::Dispatched.version(),
                deadline_after: Some(self.ctx.result_timeout(&o.partner_id)),
            }),
            EventKind::ResultStored if o.status == OrderStatus::ResultStored.as_str() => {
                Some(Transition {
                    from_version: o.version,
                    status: OrderStatus::Notified.as_str(),
                    version: OrderStatus::Notified.version(),
                    deadline_after: None,
                })
            }
            _ => None,
        });
        let moved = transition.clone();
        match self
            .write(WriteOp::MarkReleased {
                event_id,
                order_id: self.id.clone(),
                transition,
            })
            .await
        {
            Ok(WriteOutcome::Done) => {
                if let (Some(t), Some(o)) = (moved, self.order.as_mut()) {
                    o.status = t.status.into();
                    o.version = t.version;
                    if let Some(after) = t.deadline_after {
                        o.result_deadline = Some(
                            Utc::now() + chrono::Duration::from_std(after).unwrap_or_default(),
                        );
                    }
                    o.updated_at = Utc::now();
                }
            }
            Ok(_) => {
                let _ = self.reload().await;
            }
            // The outbox row stays unpublished; the sweep publishes it again (deduplicated) and
            // this mark is retried then.
            Err(e) => tracing::warn!(error = %e, "could not mark an event published"),
        }
    }
}
