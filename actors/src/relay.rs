//! OutboxRelay: publishes released events to stream `ORDER_EVENTS` with `Nats-Msg-Id` (= event
//! id) so JetStream drops a second copy, then hands the acknowledged ones to their writers
//! ([`Published`]), which mark the outbox rows and record the release in each order's status.
//!
//! A batch is published pipelined (all sends, then all acks) and in order, so per order the stored
//! event precedes the result event, which precedes the late event. An event whose publish fails
//! stays unpublished in the outbox and the replication actor's sweep brings it back. The relay
//! keeps it too: the order's next event is published only after it, again. A peer instance's
//! sweep may have published it meanwhile (the shared outbox then never brings it back here), and
//! JetStream drops the second copy. A restarted relay starts with an empty memory, and the
//! supervisor has the replication actor sweep every unpublished row.

use std::collections::HashMap;

use async_nats::HeaderMap;
use async_nats::jetstream;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::outbox::{PendingEvent, Published, Released};
use crate::protocol::{COMMIT_LSN_HEADER, EventKind};
use crate::writer::WriterPool;

pub struct OutboxRelay;

pub struct RelayArgs {
    pub jetstream: jetstream::Context,
    pub writers: WriterPool,
}

pub struct RelayState {
    js: jetstream::Context,
    writers: WriterPool,
    /// Orders with an event that could not be published, and the oldest such event: it is
    /// published again before any later event of its order, so per order the stream keeps the
    /// order stored → result → late (and the settled event after the result).
    held_back: HashMap<String, PendingEvent>,
}

/// Most orders remembered as held back; beyond it the oldest memories are dropped.
const MAX_HELD_BACK: usize = 100_000;

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
            held_back: HashMap::new(),
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
    async fn publish(&mut self, events: Vec<PendingEvent>) -> Vec<PendingEvent> {
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            // The order's failed event goes first, once more (whether this event is a later one
            // or that very event, brought back by the sweep).
            let earlier = match self.held_back.get(&event.order_id) {
                Some(failed) if failed.id < event.id => self.held_back.remove(&event.order_id),
                Some(failed) if failed.id == event.id => {
                    self.held_back.remove(&event.order_id);
                    None
                }
                _ => None,
            };
            for event in earlier.into_iter().chain(Some(event)) {
                if let Some(ack) = self.send(event).await {
                    acks.push(ack);
                }
            }
        }
        // Awaited together, each with its own timeout; only whether each came back is kept.
        let (events, acks): (Vec<_>, Vec<_>) = acks.into_iter().unzip();
        let results = futures::future::join_all(
            acks.into_iter()
                .map(|ack| async move { ack.await.map(drop) }),
        )
        .await;
        let mut published = Vec::with_capacity(results.len());
        for (ack, event) in results.into_iter().zip(events) {
            match ack {
                Ok(()) => {
                    if self
                        .held_back
                        .get(&event.order_id)
                        .is_some_and(|failed| failed.id == event.id)
                    {
                        self.held_back.remove(&event.order_id);
                    }
                    observe(&event);
                    published.push(event);
                }
                Err(e) => {
                    tracing::warn!(event_id = %event.id, error = %e, "no ack from JetStream; the sweep retries it");
                    self.hold_back(&event);
                }
            }
        }
        published
    }

    /// Sends one event, unless an earlier event of its order has just failed (the sweep brings
    /// this one back); returns the pending acknowledgement.
    async fn send(
        &mut self,
        event: PendingEvent,
    ) -> Option<(PendingEvent, jetstream::context::PublishAckFuture)> {
        if self
            .held_back
            .get(&event.order_id)
            .is_some_and(|failed| failed.id < event.id)
        {
            tracing::warn!(event_id = %event.id, "an earlier event of this order failed just now; the sweep brings this one back");
            return None;
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
            Ok(ack) => Some((event, ack)),
            Err(e) => {
                tracing::warn!(event_id = %event.id, error = %e, "publish failed; the sweep retries it");
                self.hold_back(&event);
                None
            }
        }
    }

    fn hold_back(&mut self, event: &PendingEvent) {
        if self.held_back.len() >= MAX_HELD_BACK {
            tracing::warn!(
                "too many orders held back; forgetting them (the sweep still publishes every event)"
            );
            self.held_back.clear();
        }
        let oldest = self
            .held_back
            .entry(event.order_id.clone())
            .or_insert_with(|| event.clone());
        if event.id < oldest.id {
            *oldest = event.clone();
        }
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

/// Counts a published event and, from its order's UUIDv7 (the submit's time), how long the order
/// took to get this far.
fn observe(event: &PendingEvent) {
    let stage = match event.kind {
        EventKind::Stored => "stored_event",
        EventKind::ResultStored => "result_event",
        EventKind::Late => "late_event",
        EventKind::Settled => "settled",
    };
    metrics::counter!("orderhub_events_published_total", "stage" => stage).increment(1);
    let submitted = uuid::Uuid::parse_str(&event.order_id)
        .ok()
        .and_then(|id| id.get_timestamp())
        .map(|ts| {
            let (secs, nanos) = ts.to_unix();
            std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos)
        });
    if let Some(age) = submitted.and_then(|t| t.elapsed().ok()) {
        metrics::histogram!("orderhub_lifecycle_seconds", "stage" => stage)
            .record(age.as_secs_f64());
    }
}
