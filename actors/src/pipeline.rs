//! PipelineSupervisor: the parent of every long-lived actor — the writers, the replication actor,
//! the relay, the deadline actor, the settler and the built-in auxiliary subscribers. When one fails (an error
//! from a handler, a panic, a kill), it starts a new incarnation under the same registry name, and
//! the new one rebuilds its state from the database and the stream: a writer starts empty (its
//! callers were answered `unavailable` when their reply ports dropped), a replication actor probes
//! and sweeps every unpublished outbox row, a relay or writer restart triggers that sweep too, a
//! deadline actor rescans, a settler scans the unsettled orders again, and a subscriber rebinds to its durable consumer, where everything it
//! had not acknowledged is redelivered. Restarts are counted per actor (`orders.admin.status`
//! reports them) and logged.
//!
//! The actors find each other through [`crate::link::Link`]s, which each child's start function
//! points at the new incarnation, so no one keeps talking to a dead mailbox.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr,
    SupervisionEvent,
};

/// How soon a child whose restart failed is tried again.
const RETRY_START: Duration = Duration::from_millis(500);

/// Starts one incarnation of a child, linked to the supervisor (the cell given); `true` when it
/// replaces one that failed.
pub type StartFn =
    Box<dyn Fn(ActorCell, bool) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> + Send + Sync>;

/// One supervised actor.
pub struct Child {
    /// Its role, e.g. `relay`, `writer-0`, `aux-invoice`: the key of its restart count.
    pub role: String,
    pub start: StartFn,
}

/// A child that spawns `actor()` with `args()` under the registry name `<instance>:<role>`, linked
/// to the supervisor, then calls `started` with the new incarnation (to point links at it) and
/// whether it replaces one that failed.
pub fn supervised<A, F, S>(
    instance: &str,
    role: &str,
    actor: fn() -> A,
    args: F,
    started: S,
) -> Child
where
    A: Actor,
    F: Fn() -> A::Arguments + Send + Sync + 'static,
    S: Fn(&ActorRef<A::Msg>, bool) + Send + Sync + 'static,
{
    let name = registry_name(instance, role);
    let started = Arc::new(started);
    Child {
        role: role.to_owned(),
        start: Box::new(move |supervisor, restarted| {
            let (name, args, started) = (name.clone(), args(), started.clone());
            Box::pin(async move {
                let (actor, _) = Actor::spawn_linked(Some(name), actor(), args, supervisor).await?;
                started(&actor, restarted);
                Ok(actor.get_cell())
            })
        }),
    }
}

/// The registry name of a hub's actor: `<instance>:<role>`, unique even with several hubs in one
/// process.
pub fn registry_name(instance: &str, role: &str) -> String {
    format!("{instance}:{role}")
}

/// Restarts per role, shared with the status endpoint.
#[derive(Debug, Default)]
pub struct Restarts(Mutex<BTreeMap<String, u64>>);

impl Restarts {
    fn register(&self, role: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.entry(role.to_owned()).or_insert(0);
        }
    }

    fn bump(&self, role: &str) -> u64 {
        self.0
            .lock()
            .map(|mut m| {
                let n = m.entry(role.to_owned()).or_insert(0);
                *n += 1;
                *n
            })
            .unwrap_or_default()
    }

    /// Every supervised role with its restart count.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

pub enum PipelineMsg {
    /// Try again to start a child whose restart failed.
    Start(usize),
    /// Stop every child and stop restarting them.
    Shutdown(RpcReplyPort<()>),
}

pub struct PipelineSupervisor;

pub struct PipelineArgs {
    pub children: Vec<Child>,
    pub restarts: Arc<Restarts>,
}

pub struct PipelineState {
    children: Vec<Child>,
    /// Running incarnations: actor id → index in `children`.
    running: HashMap<ActorId, usize>,
    restarts: Arc<Restarts>,
    stopping: bool,
}

impl Actor for PipelineSupervisor {
    type Msg = PipelineMsg;
    type State = PipelineState;
    type Arguments = PipelineArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: PipelineArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut running = HashMap::new();
        for (i, child) in args.children.iter().enumerate() {
            args.restarts.register(&child.role);
            let cell = (child.start)(myself.get_cell(), false)
                .await
                .map_err(|e| format!("starting `{}`: {e}", child.role))?;
            running.insert(cell.get_id(), i);
        }
        Ok(PipelineState {
            children: args.children,
            running,
            restarts: args.restarts,
            stopping: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: PipelineMsg,
        state: &mut PipelineState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PipelineMsg::Start(i) => state.start(&myself, i).await,
            PipelineMsg::Shutdown(reply) => {
                state.stopping = true;
                myself
                    .stop_children_and_wait(None, Some(Duration::from_secs(5)))
                    .await;
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut PipelineState,
    ) -> Result<(), ActorProcessingErr> {
        let (who, why) = match &event {
            SupervisionEvent::ActorFailed(who, err) => (who, err.to_string()),
            SupervisionEvent::ActorTerminated(who, _, reason) => {
                (who, reason.clone().unwrap_or_else(|| "stopped".to_owned()))
            }
            _ => return Ok(()),
        };
        let Some(i) = state.running.remove(&who.get_id()) else {
            return Ok(());
        };
        if state.stopping {
            return Ok(());
        }
        let role = state.children[i].role.clone();
        let n = state.restarts.bump(&role);
        tracing::warn!(actor = %role, reason = %why, restarts = n, "supervised actor ended; restarting it");
        state.start(&myself, i).await;
        Ok(())
    }
}

impl PipelineState {
    async fn start(&mut self, myself: &ActorRef<PipelineMsg>, i: usize) {
        if self.stopping {
            return;
        }
        let child = &self.children[i];
        match (child.start)(myself.get_cell(), true).await {
            Ok(cell) => {
                tracing::info!(actor = %child.role, "supervised actor restarted");
                self.running.insert(cell.get_id(), i);
            }
            Err(e) => {
                tracing::error!(actor = %child.role, error = %e, "restart failed; trying again");
                myself.send_after(RETRY_START, move || PipelineMsg::Start(i));
            }
        }
    }
}
