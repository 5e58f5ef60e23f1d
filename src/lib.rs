//! orderhub's wiring: configuration, telemetry, the NATS Services API endpoints, start-up, and
//! the command line's subcommands. The behaviour lives in the `actors` crate, the schema in
//! `entities`. [`sim`] holds the participants around the hub, simulated (the demo, the bench and
//! the tests use them); the hub's wiring does not use it.

pub mod cli;
pub mod endpoints;
pub mod metrics;
pub mod micro;
pub mod natsconf;
pub mod settings;
pub mod sim;
pub mod startup;
pub mod telemetry;
pub mod trace;
pub mod urls;

pub use settings::Settings;
pub use startup::{App, run};
