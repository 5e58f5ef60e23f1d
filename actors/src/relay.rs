//! OutboxRelay: publishes released events to stream `ORDER_EVENTS` with `Nats-Msg-Id` (= event
//! id) so JetStream drops a second copy, then tells each order's actor its event is out, which
//! marks the outbox row and moves the order on.
//!
//! A batch is published pipelined (all sends, then all acks) and in order, so per order the stored
//! event precedes the result event. An event whose publish fails stays unpublished in the outbox
//! and the replication actor's sweep brings it back.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use async_nats::HeaderMap;
use async_nats::jetstream;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::order::OrderMsg;
use crate::protocol::{COMMIT_LSN_HEADER, EventKind};
use crate::replication::PendingEvent;
use crate::supervisor::Orders;

pub enum RelayMsg {
    Publish(Vec<PendingEvent>),
}

pub struct OutboxRelay;

pub struct RelayArgs {
    pub jetstream: jetstream::Context,
    /// Filled in once the order directory exists (it needs the writers, which need this relay).
    pub orders: Arc<OnceLock<Orders>>,
    pub stored_marker: String,
}

pub struct RelayState {
    js: jetstream::Context,
    orders: Arc<OnceLock<Orders>>,
    /// `<prefix>.events.stored.`: tells a stored event from a result event by its subject.
    stored_marker: String,
}

impl Actor for OutboxRelay {
    type Msg = RelayMsg;
    type State = RelayState;
    type Arguments = RelayArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: RelayArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(RelayState {
            js: args.jetstream,
            orders: args.orders,
            stored_marker: args.stored_marker,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: RelayMsg,
        state: &mut RelayState,
    ) -> Result<(), ActorProcessingErr> {
        let RelayMsg::Publish(events) = msg;
        state.publish(events).await;
        Ok(())
    }
}

impl RelayState {
    async fn publish(&self, events: Vec<PendingEvent>) {
        let mut acks = Vec::with_capacity(events.len());
        // Orders with an event that could not be sent: their later events wait for the sweep
        // too, so per order the stored event still precedes the result event.
        let mut held_back: HashSet<String> = HashSet::new();
        for event in events {
            if held_back.contains(&event.order_id) {
                tracing::warn!(event_id = %event.id, "an earlier event of this order failed; the sweep publishes both in order");
                continue;
            }
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", event.id.as_str());
            headers.insert("Content-Type", "application/cloudevents+json");
            if let Some(lsn) = event.lsn {
                headers.insert(COMMIT_LSN_HEADER, lsn.to_string().as_str());
            }
            match self
                .js
                .publish_with_headers(event.subject.clone(), headers, event.payload.clone().into())
                .await
            {
                Ok(ack) => acks.push((event, ack)),
                Err(e) => {
                    tracing::warn!(event_id = %event.id, error = %e, "publish failed; the sweep retries it");
                    held_back.insert(event.order_id);
                }
            }
        }
        let results = futures::future::join_all(
            acks.into_iter()
                .map(|(event, ack)| async move { (ack.await, event) }),
        )
        .await;
        let Some(orders) = self.orders.get() else {
            return;
        };
        for (ack, event) in results {
            match ack {
                Ok(_) => {
                    let kind = if event.subject.starts_with(&self.stored_marker) {
                        EventKind::Stored
                    } else {
                        EventKind::ResultStored
                    };
                    orders
                        .cast(
                            &event.order_id,
                            OrderMsg::Released {
                                event_id: event.id,
                                kind,
                            },
                        )
                        .await;
                }
                Err(e) => {
                    tracing::warn!(event_id = %event.id, error = %e, "no ack from JetStream; the sweep retries it")
                }
            }
        }
    }
}
