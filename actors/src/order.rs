//! OrderActor (registry name `order:<id>`): the one that decides its order's moves. It takes the
//! triggers that come from outside the pipeline — [`Trigger::Submit`], [`Trigger::Result`],
//! [`Trigger::Timeout`] (told by the deadline actor) and [`Trigger::LateResult`] — checks each
//! against [`crate::lifecycle`], and hands the change with the event that announces it to its
//! writer, which commits it with other orders' changes in one transaction.
//!
//! The other three triggers only record that an event is out (`dispatched`, `notified`,
//! `late_notified`): the writer's release step applies them when JetStream acknowledged the event,
//! with the same table's conditions, so the order actor is not asked a second time. The actor
//! stops once its order has a result and it is idle (or after being idle for long), and is
//! reloaded from the primary when it is needed again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use entities::{order_results, orders};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::json;

use crate::context::Context;
use crate::lifecycle::{self, Trigger};
use crate::outbox::PendingEvent;
use crate::protocol::{
    ApiError, OrderStatus, Outcome, ResultRequest, SubmitReply, SubmitRequest, TIMEOUT_RESULT_ID,
};
use crate::replication::await_replay;
use crate::store::StoreError;
use crate::writer::{WriteOp, WriteOutcome, WriterMsg};

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
    /// A partner's result that arrived after the hub's timeout.
    late: Option<order_results::Model>,
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
        let (order, result, late) = if args.new {
            (None, None, None)
        } else {
            match args.ctx.db.order_on_primary(&args.id).await? {
                Some(s) => (Some(s.order), s.result, s.late),
                None => (None, None, None),
            }
        };
        args.ctx.metrics.actor_started();
        myself.send_after(args.ctx.tuning.settle_linger, || OrderMsg::IdleCheck);
        Ok(OrderState {
            id: args.id,
            ctx: args.ctx,
            order,
            result,
            late,
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
            OrderMsg::IdleCheck => {
                let idle = state.last_active.elapsed();
                let tuning = &state.ctx.tuning;
                // Nothing more to decide once the order has its result: the release of the
                // result event needs no actor.
                let settled = state.order.is_none() || state.result.is_some();
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

/// How long a repeated write waits for the read node to have what it found (see
/// [`OrderState::on_replica`]).
const REPEAT_CONFIRM_WITHIN: Duration = Duration::from_millis(1300);
/// The wait an `unavailable` suggests while the primary or the replica cannot take a write.
const DATABASE_RETRY_AFTER_MS: u64 = 1_000;

impl OrderState {
    /// The event that announces `trigger`'s move of `order` (see [`lifecycle::TABLE`]).
    fn announce(
        &self,
        trigger: Trigger,
        order: &orders::Model,
        result: Option<&order_results::Model>,
        now: chrono::DateTime<Utc>,
    ) -> PendingEvent {
        let t = lifecycle::transition(trigger);
        let kind = t
            .emits
            .expect("the order actor's triggers each emit an event (a test of the table)");
        PendingEvent::new(kind, &self.ctx.subjects, order, t.to.version(), result, now)
    }

    /// Where the order is, as this actor holds it; `None`: no order under this id.
    fn status(&self) -> Option<OrderStatus> {
        self.order
            .as_ref()
            .and_then(|o| OrderStatus::parse(&o.status))
    }

    /// Hands `op` to the order's writer; `confirm`: a client waits for the answer, so it comes
    /// only once the replica has the commit (when the hub acknowledges after the replica).
    async fn write(&self, op: WriteOp, confirm: bool) -> Result<WriteOutcome, ApiError> {
        let writer = self.ctx.writers.for_order(&self.id);
        match writer
            .call(
                |reply| WriterMsg::Write {
                    op: Box::new(op),
                    reply,
                    confirm,
                },
                self.ctx.tuning.write_timeout,
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(Ok(outcome))) => Ok(outcome),
            // The replica or the primary is behind or away: a failover or a catch-up takes
            // seconds, so retrying sooner than this only adds load.
            Ok(ractor::rpc::CallResult::Success(Err(StoreError::Unconfirmed))) => {
                Err(ApiError::unavailable(
                    "committed on the primary, but the replica has not confirmed it yet; retry \
                     with the same key",
                )
                .retry_after(DATABASE_RETRY_AFTER_MS))
            }
            Ok(ractor::rpc::CallResult::Success(Err(e))) => {
                tracing::warn!(error = %e, "write failed");
                Err(
                    ApiError::unavailable("the primary database is not available; retry later")
                        .retry_after(DATABASE_RETRY_AFTER_MS),
                )
            }
            Ok(ractor::rpc::CallResult::Timeout) => Err(ApiError::unavailable(
                "the primary database did not answer in time; retry later",
            )
            .retry_after(DATABASE_RETRY_AFTER_MS)),
            Ok(ractor::rpc::CallResult::SenderError) | Err(_) => Err(ApiError::unavailable(
                "the hub's writer is restarting or shutting down; retry later",
            )),
        }
    }

    /// With `ack_after = "replica"`, waits (up to [`REPEAT_CONFIRM_WITHIN`]) until the read
    /// nodes have everything the primary had when a repeated write is answered: what this actor
    /// holds was read from the primary, where a commit the replica never confirmed (its first
    /// answer was `unavailable`) is visible too, and may be lost with the primary.
    async fn on_replica(&self) -> Result<(), ApiError> {
        if !self.ctx.ack_after_replica
            || await_replay(
                &self.ctx.replication,
                Instant::now() + REPEAT_CONFIRM_WITHIN,
            )
            .await
        {
            return Ok(());
        }
        Err(ApiError::unavailable(
            "committed on the primary, but the replica has not confirmed it yet; retry with the \
             same key",
        )
        .retry_after(DATABASE_RETRY_AFTER_MS))
    }

    async fn reload(&mut self) -> Result<(), ApiError> {
        match self.ctx.db.order_on_primary(&self.id).await {
            Ok(Some(s)) => {
                self.order = Some(s.order);
                self.result = s.result;
                self.late = s.late;
                Ok(())
            }
            Ok(None) => {
                self.order = None;
                self.result = None;
                self.late = None;
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

    async fn submit(&mut self, req: SubmitRequest) -> Result<SubmitReply, ApiError> {
        let now = Utc::now();
        let accepted = lifecycle::check(Trigger::Submit, self.status()).map_err(|_| {
            ApiError::unavailable("an order with this id is already live; retry the submit")
        })?;
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
            status: accepted.as_str().into(),
            version: accepted.version(),
            result_deadline: None,
            settled_at: None,
            created_at: now,
            updated_at: now,
            dispatched_at: None,
            result_stored_at: None,
            notified_at: None,
            late_result_stored_at: None,
            late_notified_at: None,
        };
        let event = self.announce(Trigger::Submit, &order, None, now);
        match self
            .write(
                WriteOp::InsertOrder {
                    order: Box::new(order.clone()),
                    event,
                },
                true,
            )
            .await?
        {
            WriteOutcome::Done => {
                self.ctx.partners.adjust(&order.partner_id, 1);
                self.order = Some(order);
                Ok(SubmitReply {
                    order_id: self.id.clone(),
                    status: "accepted".into(),
                    duplicate: false,
                })
            }
            WriteOutcome::DuplicateOrder(existing) => answer_reused_key(&existing, &order),
            other => {
                tracing::error!(?other, "unexpected outcome for an insert");
                Err(ApiError::unavailable(
                    "the order could not be stored; retry later",
                ))
            }
        }
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
                if existing.result_id != TIMEOUT_RESULT_ID {
                    let reply = answer_second_result(&self.id, existing, &req)?;
                    self.on_replica().await?;
                    return Ok(reply);
                }
                return self.record_late_result(&order, req).await;
            }
            if lifecycle::check(Trigger::Result, self.status()).is_err() {
                // What this actor holds is behind the primary: look again.
                self.reload().await?;
                continue;
            }
            match self
                .store_result(
                    Trigger::Result,
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

    /// A result for an order the hub closed as `timeout`: kept as its late result (the first one
    /// only; the same one again is a duplicate, any other a conflict).
    async fn record_late_result(
        &mut self,
        order: &orders::Model,
        req: ResultRequest,
    ) -> Result<SubmitReply, ApiError> {
        let late_reply = |duplicate| SubmitReply {
            order_id: self.id.clone(),
            status: lifecycle::transition(Trigger::LateResult)
                .to
                .as_str()
                .into(),
            duplicate,
        };
        if let Some(existing) = &self.late {
            let reply = answer_second_late(&self.id, existing, &req)?;
            self.on_replica().await?;
            return Ok(late_reply(reply.duplicate));
        }
        if !self.status().is_some_and(lifecycle::takes_late_result) {
            return Err(ApiError::unavailable(
                "the order kept changing under this late result; retry",
            ));
        }
        let now = Utc::now();
        let late = order_results::Model {
            order_id: self.id.clone(),
            late: true,
            result_id: req.result_id.clone(),
            outcome: req.outcome.as_str().into(),
            partner_ref: req.partner_ref.clone(),
            detail: req.detail.clone(),
            received_at: now,
        };
        let event = self.announce(Trigger::LateResult, order, Some(&late), now);
        match self
            .write(
                WriteOp::StoreLateResult {
                    late: late.clone(),
                    event,
                },
                true,
            )
            .await?
        {
            WriteOutcome::Done => {
                self.late = Some(late);
                Ok(late_reply(false))
            }
            WriteOutcome::ResultExists(existing) => {
                let answer = answer_second_late(&self.id, &existing, &req);
                self.late = Some(*existing);
                answer.map(|reply| late_reply(reply.duplicate))
            }
            other => {
                tracing::error!(?other, "unexpected outcome for a late result");
                Err(ApiError::unavailable(
                    "the late result could not be stored; retry later",
                ))
            }
        }
    }

    /// Commits a result and the order's move to `result_stored`: `trigger` is the partner's
    /// [`Trigger::Result`] or the hub's [`Trigger::Timeout`].
    async fn store_result(
        &mut self,
        trigger: Trigger,
        order: &orders::Model,
        result_id: String,
        outcome: Outcome,
        partner_ref: Option<String>,
        detail: serde_json::Value,
    ) -> Result<WriteOutcome, ApiError> {
        let now = Utc::now();
        let result = order_results::Model {
            order_id: self.id.clone(),
            late: false,
            result_id,
            outcome: outcome.as_str().into(),
            partner_ref,
            detail,
            received_at: now,
        };
        let status = lifecycle::transition(trigger).to;
        let event = self.announce(trigger, order, Some(&result), now);
        // The hub's own timeout has nobody waiting for it.
        let confirm = trigger == Trigger::Result;
        let outcome = self
            .write(
                WriteOp::StoreResult {
                    result: result.clone(),
                    event,
                },
                confirm,
            )
            .await?;
        if matches!(outcome, WriteOutcome::Done) {
            self.ctx.partners.adjust(&order.partner_id, -1);
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
        let due = lifecycle::check(Trigger::Timeout, self.status()).is_ok()
            && self.result.is_none()
            && order.result_deadline.is_some_and(|d| d <= Utc::now());
        if !due {
            return;
        }
        let timeout = self.ctx.partners.result_timeout(&order.partner_id);
        let detail = json!({"reason": format!("partner `{}` did not answer within {}s", order.partner_id, timeout.as_secs())});
        match self
            .store_result(
                Trigger::Timeout,
                &order,
                TIMEOUT_RESULT_ID.into(),
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
}

/// The answer to a submit whose `(user_id, request_id)` already holds `existing`: the same order
/// again (a retry) is a duplicate, any other body is a conflict.
fn answer_reused_key(
    existing: &orders::Model,
    order: &orders::Model,
) -> Result<SubmitReply, ApiError> {
    let same = existing.partner_id == order.partner_id
        && existing.product == order.product
        && existing.amount_minor == order.amount_minor
        && existing.currency == order.currency
        && existing.items == order.items
        && existing.payload == order.payload;
    if same {
        Ok(SubmitReply {
            order_id: existing.id.clone(),
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

/// The answer to a result for an order that has one already: the same result again (a retry) is
/// a duplicate; its `result_id` with another body, or any other result, is a conflict.
fn answer_second_result(
    order_id: &str,
    existing: &order_results::Model,
    req: &ResultRequest,
) -> Result<SubmitReply, ApiError> {
    let same = existing.result_id == req.result_id
        && existing.outcome == req.outcome.as_str()
        && existing.partner_ref == req.partner_ref
        && existing.detail == req.detail;
    if same {
        return Ok(SubmitReply {
            order_id: order_id.to_owned(),
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
        "order {order_id} already has a result (outcome `{}`)",
        existing.outcome
    )))
}

/// The answer to a late result for an order that has one already: as for a second result, but a
/// different one names the late result that is there.
fn answer_second_late(
    order_id: &str,
    existing: &order_results::Model,
    req: &ResultRequest,
) -> Result<SubmitReply, ApiError> {
    if existing.result_id != req.result_id {
        return Err(ApiError::conflict(format!(
            "order {order_id} was closed as timeout and already has a late result (outcome `{}`)",
            existing.outcome
        )));
    }
    answer_second_result(order_id, existing, req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    fn order(request_id: &str, amount: i64) -> orders::Model {
        let now = Utc::now();
        orders::Model {
            id: "o-1".into(),
            user_id: "u-1".into(),
            request_id: request_id.into(),
            partner_id: "acme-air".into(),
            product: "flight".into(),
            amount_minor: amount,
            currency: "CNY".into(),
            items: json!([{"sku": "MU5101", "qty": 1}]),
            payload: json!({"seat": "12A"}),
            status: "accepted".into(),
            version: 1,
            result_deadline: None,
            settled_at: None,
            created_at: now,
            updated_at: now,
            dispatched_at: None,
            result_stored_at: None,
            notified_at: None,
            late_result_stored_at: None,
            late_notified_at: None,
        }
    }

    fn result(result_id: &str, outcome: &str) -> order_results::Model {
        order_results::Model {
            order_id: "o-1".into(),
            late: false,
            result_id: result_id.into(),
            outcome: outcome.into(),
            partner_ref: Some("PNR".into()),
            detail: json!({}),
            received_at: Utc::now(),
        }
    }

    fn request(result_id: &str, outcome: Outcome, partner_ref: Option<&str>) -> ResultRequest {
        ResultRequest {
            order_id: "o-1".into(),
            result_id: result_id.into(),
            outcome,
            partner_ref: partner_ref.map(str::to_owned),
            detail: json!({}),
        }
    }

    #[test]
    fn a_reused_key_with_the_same_body_is_the_same_order() {
        let mut retry = order("r-1", 100);
        retry.id = "o-2".into();
        let reply = answer_reused_key(&order("r-1", 100), &retry).unwrap();
        assert_eq!(
            reply.order_id, "o-1",
            "the existing order's id, not the new one"
        );
        assert!(reply.duplicate);
    }

    #[test]
    fn a_reused_key_with_another_body_is_a_conflict() {
        let err = answer_reused_key(&order("r-1", 100), &order("r-1", 101)).unwrap_err();
        assert_eq!(err.code, ErrorCode::Conflict);
        assert!(err.message.contains("r-1"));
    }

    #[test]
    fn the_same_result_again_is_a_duplicate() {
        let existing = result("res-1", "confirmed");
        let reply = answer_second_result(
            "o-1",
            &existing,
            &request("res-1", Outcome::Confirmed, Some("PNR")),
        )
        .unwrap();
        assert!(reply.duplicate);
        assert_eq!(reply.status, "result_stored");
    }

    #[test]
    fn the_same_result_id_with_another_body_is_a_conflict_naming_the_key() {
        let existing = result("res-1", "confirmed");
        for other in [
            request("res-1", Outcome::Rejected, Some("PNR")),
            request("res-1", Outcome::Confirmed, None),
        ] {
            let err = answer_second_result("o-1", &existing, &other).unwrap_err();
            assert_eq!(err.code, ErrorCode::Conflict);
            assert!(err.message.contains("result_id `res-1`"), "{}", err.message);
        }
    }

    #[test]
    fn a_second_late_result_is_a_conflict_naming_the_late_one() {
        let existing = result("late-1", "confirmed");
        let err = answer_second_late("o-1", &existing, &request("late-2", Outcome::Failed, None))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Conflict);
        assert!(
            err.message.contains("late result (outcome `confirmed`)"),
            "{}",
            err.message
        );
        let again = answer_second_late(
            "o-1",
            &existing,
            &request("late-1", Outcome::Confirmed, Some("PNR")),
        );
        assert!(again.unwrap().duplicate);
    }

    #[test]
    fn a_second_result_is_a_conflict_naming_the_first_outcome() {
        let existing = result("orderhub-timeout", "timeout");
        let err = answer_second_result(
            "o-1",
            &existing,
            &request("res-2", Outcome::Confirmed, None),
        )
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::Conflict);
        assert!(err.message.contains("outcome `timeout`"), "{}", err.message);
    }
}
