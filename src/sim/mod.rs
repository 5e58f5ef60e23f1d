//! The participants around the hub, simulated: partners, the user gateway, the external
//! auxiliary system `audit`, and a load generator; the `orderhub demo` and `orderhub bench`
//! commands built on them; and `nats-server` started for the demo and the tests. Each participant
//! is its own NATS connection as its own `nats.conf` role and talks to the hub only through
//! subjects, exactly as a real one would. The hub's wiring knows nothing of this module.
//!
//! Every participant that is refused `unavailable` asks again with the same idempotency key after
//! the wait the hub hints (`Orderhub-Retry-After-Ms`) with jitter, or after a doubling step when
//! there was no reply ([`backoff`]).
//!
//! The test suites use the same participants: a test keeps what each one received and was
//! answered by giving it an [`Observer`] of a [`Seen`].
//!
//! # Layout
//!
//! - `client` — role connections (`<user>:<user>-dev`), request/reply with the hub's error
//!   replies and retry hints decoded, asking again while the hub is busy or silent, pulling a
//!   durable consumer (bound again when it goes away) until stopped.
//! - `backoff` — the waits between attempts: the hint with jitter, or a doubling step.
//! - `seen` — what a participant received and was answered, for tests.
//! - `partner` — simulated partners: `acme-air` confirms everything, `globex-hotels` rejects
//!   about one order in five (by a hash of the order id) and, in the demo, holds about one answer
//!   in fifty back until after its deadline.
//! - `audit` — the external auxiliary system `audit` (user `aux`).
//! - `gateway` — the user gateway: follows result, settled and late events, queries.
//! - `load` — the load generator: the gateway submitting in a closed or an open loop.
//! - `ledger` — which orders a run placed and what arrived for each; latency histograms.
//! - `summary` — a run's report, its table and its JSON.
//! - `engine` — `orderhub demo` and `orderhub bench`.
//! - `natsserver` — finding, installing and starting `nats-server` from `nats.conf`.
//! - `cpu` — CPU time of this process and of a child, for the bench's figures per story.
//! - `memory` — this process's resident memory: its peak, and sampled every second over a run
//!   with its growth fitted.

pub mod audit;
pub mod backoff;
pub mod client;
pub mod cpu;
mod engine;
pub mod gateway;
pub mod ledger;
pub mod load;
pub mod memory;
pub mod natsserver;
pub mod partner;
pub mod seen;
pub mod summary;

pub use audit::{AUX_USER, AuditStats, Auditor};
pub use backoff::Backoff;
pub use client::{
    CallError, Patience, Role, Running, Stop, StopSwitch, ask, connect_role, retry_hint,
    stop_switch,
};
pub use engine::{BenchArgs, DemoArgs, bench, demo};
pub use gateway::{GATEWAY_USER, Gateway};
pub use partner::{Behaviour, Partner, PartnerStats, Policy};
pub use seen::{Observer, Seen, SeenRef};
