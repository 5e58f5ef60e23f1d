//! OutboxRelay: publishes released events to stream `ORDER_EVENTS` with `Nats-Msg-Id` (= event
//! id) so JetStream drops a second copy, then hands the acknowledged ones to their writers
//! ([`Published`]), which mark the outbox rows and record the release in each order's status.
//!
//! A batch is published pipelined (all sends, then all acks) and in order, so per order the stored
//! event precedes the result event. An event whose publish fails stays unpublished in the outbox
//! and the replication actor's sweep brings it back.

use std::collections::{HashMap, HashSet};

use async_nats::HeaderMap;
use async_nats::jetstream;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::outbox::{PendingEvent, Published, Released};
use crate::protocol::COMMIT_LSN_HEADER;
use crate::writer::WriterPool;

pub struct OutboxRelay;

pub struct RelayArgs {
    pub jetstream: jetstream::Context,
    pub writers: WriterPool,
}

pub struct RelayState {
    js: jetstream::Context,
    writers: WriterPool,
}

impl Actor for OutboxRelay {
    type Msg = Released;
    type State = RelayState;
    type Arguments = RelayArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: RelayArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(RelayState {
            js: args.jetstream,
            writers: args.writers,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        Released(events): Released,
        state: &mut RelayState,
    ) -> Result<(), ActorProcessingErr> {
        let published = state.publish(events).await;
        state.hand_to_writers(published);
        Ok(())
    }
}

impl RelayState {
    /// Publishes a batch; returns the events JetStream acknowledged.
    async fn publish(&self, events: Vec<PendingEvent>) -> Vec<PendingEvent> {
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
        results
            .into_iter()
            .filter_map(|(ack, event)| match ack {
                Ok(_) => Some(event),
                Err(e) => {
                    tracing::warn!(event_id = %event.id, error = %e, "no ack from JetStream; the sweep retries it");
                    None
                }
            })
            .collect()
    }

    /// Each order's writer records its published events; a writer that is down leaves them
    /// unmarked, and the sweep publishes them again (deduplicated) and marks them then.
    fn hand_to_writers(&self, published: Vec<PendingEvent>) {
        let mut by_writer: HashMap<usize, Vec<PendingEvent>> = HashMap::new();
        for event in published {
            by_writer
                .entry(self.writers.index_of(&event.order_id))
                .or_default()
                .push(event);
        }
        for (writer, events) in by_writer {
            if let Err(e) = self.writers.get(writer).cast(Published(events).into()) {
                tracing::warn!(error = %e, "release marks wait for the sweep");
            }
        }
    }
}
