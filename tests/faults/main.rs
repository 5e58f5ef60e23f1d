//! orderhub's fault tests: running as in production, several `orderhub serve` processes share one
//! Postgres database and one NATS (a 3-node JetStream cluster with `nats.replicas = 3`, or a single
//! server) under a steady load, while NATS nodes, hubs, the primary database and a partner fail.
//! Afterwards every order a client saw `accepted` reaches its final state, its events are in the
//! stream exactly once, every auxiliary record exists once, and every consumer saw every event it
//! should.
//!
//! Each test prints what its faults cost (run with `--nocapture`): the longest pause in accepted
//! replies, the latency of the orders submitted during the fault, the lost orders of the
//! `ack_after = "primary"` failover. `docs/performance.md` quotes these figures.
//!
//! The tests run one at a time (see [`rig::one_at_a_time`]), in their own binary so that nothing
//! else of the suite shares the machine with them. The slow variants carry
//! `#[ignore = "slow: …"]`, so a plain run reports them ignored; `scripts/test` runs them too with
//! `ORDERHUB_SLOW_TESTS=1` (it passes `--include-ignored`). Each test's load is a few dozen orders
//! a second by default (its hubs are debug builds sharing two cores with the databases, NATS and
//! the simulators);
//! `ORDERHUB_FAULT_RATE=200` runs every one at 200 orders a second.

// The harness of the API tests: a real nats-server, the Postgres pair, requests and pulls. Not
// every helper is used here.
#[allow(dead_code, unused_imports, unused_macros)]
#[path = "../api/helpers/mod.rs"]
mod helpers;
mod rig;

mod aux;
mod failover;
mod hubs;
mod nats;
mod partner;
mod patroni;
