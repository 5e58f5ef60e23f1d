//! [`Link`]: a handle on a supervised actor that survives its restarts.
//!
//! An actor that the pipeline supervisor restarts comes back as a new `ActorRef`. The actors that
//! talk to it hold a `Link` instead, which the supervisor points at each new incarnation, so
//! nobody keeps sending into a dead mailbox. A link carries a *derived* reference, typed by the
//! message its holder sends, so the sender need not know the receiver's whole message enum: the
//! writer hands committed events on without depending on the replication actor's module.

use std::sync::{Arc, RwLock};

use ractor::rpc::CallResult;
use ractor::{DerivedActorRef, Message, MessagingErr, RpcReplyPort};

/// Why a message could not be delivered through a [`Link`].
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The actor is between incarnations (failed, not yet restarted) or stopped for good.
    #[error("actor `{0}` is not running")]
    Down(&'static str),
}

/// A restart-proof handle on one supervised actor. Cheap to clone.
pub struct Link<T> {
    role: &'static str,
    target: Arc<RwLock<Option<DerivedActorRef<T>>>>,
}

impl<T> Clone for Link<T> {
    fn clone(&self) -> Self {
        Self {
            role: self.role,
            target: self.target.clone(),
        }
    }
}

impl<T: Message> Link<T> {
    /// A link to nothing yet; the supervisor [`set`](Self::set)s it when the actor starts.
    pub fn new(role: &'static str) -> Self {
        Self {
            role,
            target: Arc::default(),
        }
    }

    /// Points the link at a (new) incarnation.
    pub fn set(&self, target: DerivedActorRef<T>) {
        if let Ok(mut slot) = self.target.write() {
            *slot = Some(target);
        }
    }

    fn current(&self) -> Result<DerivedActorRef<T>, LinkError> {
        self.target
            .read()
            .ok()
            .and_then(|slot| slot.clone())
            .ok_or(LinkError::Down(self.role))
    }

    /// Sends without waiting.
    pub fn cast(&self, msg: T) -> Result<(), LinkError> {
        self.current()?
            .cast(msg)
            .map_err(|_: MessagingErr<T>| LinkError::Down(self.role))
    }

    /// Asks and waits at most `timeout`.
    pub async fn call<R: Send + 'static>(
        &self,
        make: impl FnOnce(RpcReplyPort<R>) -> T,
        timeout: std::time::Duration,
    ) -> Result<CallResult<R>, LinkError> {
        self.current()?
            .call(make, Some(timeout))
            .await
            .map_err(|_| LinkError::Down(self.role))
    }
}
