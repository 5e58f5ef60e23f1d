//! OrderSupervisor and the order directory.
//!
//! The supervisor is the parent of every OrderActor. It is never a funnel: callers find or spawn
//! an order's actor themselves through [`Orders`] (the ractor registry is a concurrent map), linked
//! to the supervisor, which only hears about failures. A failed actor is not restarted eagerly:
//! the next message for its order spawns a fresh one that reloads the order from the primary.

use std::sync::Arc;

use ractor::rpc::CallResult;
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent,
};

use crate::context::Context;
use crate::order::{OrderActor, OrderArgs, OrderMsg};
use crate::protocol::{ApiError, ResultRequest, SubmitReply, SubmitRequest};

pub struct OrderSupervisor;

pub enum SupervisorMsg {}

#[derive(Default)]
pub struct SupervisorState {
    failures: u64,
}

impl Actor for OrderSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SupervisorState::default())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(who, err) => {
                state.failures += 1;
                tracing::warn!(actor = ?who.get_name(), error = %err, failures = state.failures,
                    "order actor failed; the next message for its order reloads it from the primary");
            }
            SupervisionEvent::ActorTerminated(..) | SupervisionEvent::ActorStarted(_) => {}
            _ => {}
        }
        Ok(())
    }
}

/// Finds or spawns order actors. Cheap to clone.
#[derive(Clone)]
pub struct Orders {
    ctx: Arc<Context>,
    supervisor: ActorCell,
}

fn name(order_id: &str) -> String {
    format!("order:{order_id}")
}

impl Orders {
    pub fn new(ctx: Arc<Context>, supervisor: ActorCell) -> Self {
        Self { ctx, supervisor }
    }

    /// The live actor of an order, or a fresh one that loads it from the primary.
    async fn get(&self, order_id: &str) -> Result<ActorRef<OrderMsg>, ApiError> {
        self.spawn(order_id, false).await
    }

    async fn spawn(&self, order_id: &str, new: bool) -> Result<ActorRef<OrderMsg>, ApiError> {
        let name = name(order_id);
        for _ in 0..3 {
            if let Some(cell) = ractor::registry::where_is(name.clone()) {
                return Ok(cell.into());
            }
            let args = OrderArgs {
                id: order_id.to_owned(),
                ctx: self.ctx.clone(),
                new,
            };
            match Actor::spawn_linked(
                Some(name.clone()),
                OrderActor,
                args,
                self.supervisor.clone(),
            )
            .await
            {
                Ok((actor, _)) => return Ok(actor),
                // Someone else spawned it between our lookup and our spawn: use theirs.
                Err(SpawnErr::ActorAlreadyRegistered(_)) => continue,
                Err(e) => {
                    tracing::warn!(order_id, error = %e, "order actor could not start");
                    return Err(ApiError::unavailable(
                        "the order could not be loaded; retry later",
                    ));
                }
            }
        }
        Err(ApiError::unavailable(
            "the order could not be loaded; retry later",
        ))
    }

    /// Spawns the actor of a brand-new order and stores it.
    pub async fn submit(
        &self,
        order_id: &str,
        request: SubmitRequest,
    ) -> Result<SubmitReply, ApiError> {
        let actor = self.spawn(order_id, true).await?;
        let request = Box::new(request);
        answer(
            actor
                .call(
                    |reply| OrderMsg::Submit(request, reply),
                    Some(self.ctx.tuning.call_timeout),
                )
                .await,
        )
    }

    /// A partner's result for one of its orders; `partner_id` is the caller's, from the subject.
    pub async fn record_result(
        &self,
        partner_id: &str,
        request: ResultRequest,
    ) -> Result<SubmitReply, ApiError> {
        let order_id = request.order_id.clone();
        let request = Box::new(request);
        self.call(&order_id, |reply| OrderMsg::RecordResult {
            partner_id: partner_id.to_owned(),
            request: request.clone(),
            reply,
        })
        .await
    }

    /// Tells an order's actor that its partner's deadline has passed.
    pub async fn expire(&self, order_id: &str) {
        self.cast(order_id, OrderMsg::Expire).await
    }

    /// Asks an order's actor something; if the actor stopped before answering (it was settling),
    /// asks a fresh one once more.
    async fn call(
        &self,
        order_id: &str,
        make: impl Fn(RpcReplyPort<Result<SubmitReply, ApiError>>) -> OrderMsg,
    ) -> Result<SubmitReply, ApiError> {
        for _ in 0..2 {
            let actor = self.get(order_id).await?;
            match actor.call(&make, Some(self.ctx.tuning.call_timeout)).await {
                Ok(CallResult::SenderError) | Err(_) => continue,
                other => return answer(other),
            }
        }
        Err(ApiError::unavailable(
            "the order's actor is restarting; retry",
        ))
    }

    /// Tells an order's actor something, without waiting.
    async fn cast(&self, order_id: &str, msg: OrderMsg) {
        match self.get(order_id).await {
            Ok(actor) => {
                if let Err(e) = actor.cast(msg) {
                    tracing::debug!(order_id, error = %e, "order actor stopped before the message");
                }
            }
            Err(e) => tracing::warn!(order_id, error = %e, "could not reach the order actor"),
        }
    }
}

fn answer(
    r: Result<CallResult<Result<SubmitReply, ApiError>>, ractor::MessagingErr<OrderMsg>>,
) -> Result<SubmitReply, ApiError> {
    match r {
        Ok(CallResult::Success(answer)) => answer,
        Ok(CallResult::Timeout) => Err(ApiError::unavailable(
            "the hub did not finish in time; retry with the same key",
        )),
        Ok(CallResult::SenderError) | Err(_) => Err(ApiError::unavailable(
            "the order's actor stopped; retry with the same key",
        )),
    }
}
