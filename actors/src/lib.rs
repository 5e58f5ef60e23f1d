//! orderhub's behaviour: the actors that store, confirm, relay and settle orders.
//!
//! # Layout
//!
//! The pipeline, as each module depends only on those before it:
//!
//! - [`protocol`]: the wire contract, once: subjects, request validation, replies, events, errors.
//! - [`lifecycle`]: the order's state machine as one table: triggers, moves, the events they
//!   emit, the settled rule.
//! - [`wal`]: Postgres WAL positions ([`wal::Lsn`]) and the probes of both nodes.
//! - [`readset`]: the read nodes, and which of them serve reads and bound each event's fence.
//! - [`store`]: the databases (primary, read set, auxiliary) and every read.
//! - [`outbox`]: [`outbox::PendingEvent`], an event committed with its state change, and the
//!   messages that carry events from stage to stage.
//! - [`link`]: restart-proof handles on supervised actors.
//! - [`partners`]: the configured partners and their `result_timeout`.
//! - [`backlog`]: admission by the whole story: new orders wait while the built-in auxiliary
//!   systems and the settler are behind.
//! - [`writer`]: group commit: one transaction for the changes of many orders, and the release
//!   step that records a published event in its order's status.
//! - [`replication`]: ReplicationActor, which releases events once the read node has their data.
//! - [`relay`]: OutboxRelay, which publishes released events to JetStream with `Nats-Msg-Id` and
//!   hands them back to the writers.
//! - [`context`]: what every order actor shares.
//! - [`order`]: OrderActor, the only one that decides its order's transitions.
//! - [`supervisor`]: OrderSupervisor and [`Orders`], which finds or spawns an order's actor.
//! - [`deadline`]: DeadlineActor, which closes orders whose partner missed `result_timeout`.
//! - [`settle`]: Settler, which makes each order's settled event once every auxiliary system
//!   has a record.
//! - [`reads`]: `get` and `query` with their ownership rules, from the read node.
//! - [`trace`]: `orders.admin.trace`, an order's whole story for an operator.
//! - [`aux`]: AuxSubscriber, a built-in auxiliary system on its own durable consumer, and the
//!   records of external systems.
//! - [`pipeline`]: PipelineSupervisor, which restarts every long-lived actor that fails (writers,
//!   replication, relay, deadline, settler, subscribers).
//! - [`hub`]: [`Hub`], which starts it all and is what the endpoints call.
//!
//! A submit travels: endpoint → [`Hub::submit`] → OrderActor → Writer (commits the order with its
//! outbox row) → ReplicationActor (the read node has it) → OutboxRelay (JetStream has it) →
//! Writer (marks it released: `dispatched`). A line, no loop back to the order actor.

pub mod aux;
pub mod backlog;
pub mod context;
pub mod deadline;
pub mod hub;
pub mod lifecycle;
pub mod link;
pub mod order;
pub mod outbox;
pub mod partners;
pub mod pipeline;
pub mod protocol;
pub mod reads;
pub mod readset;
pub mod relay;
pub mod replication;
pub mod settle;
pub mod store;
pub mod supervisor;
pub mod trace;
pub mod wal;
pub mod writer;

#[cfg(test)]
mod testing;

pub use context::Tuning;
pub use hub::{Hub, HubConfig, HubStatus, StartError};
pub use partners::Partners;
pub use pipeline::registry_name;
pub use supervisor::Orders;
