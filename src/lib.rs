//! orderhub's wiring: configuration, telemetry, the NATS Services API endpoints, start-up, and
//! the command line's subcommands. The behaviour lives in the `actors` crate, the schema in
//! `entities`.

pub mod cli;
pub mod demo;
pub mod endpoints;
pub mod metrics;
pub mod micro;
pub mod natsconf;
pub mod natsserver;
pub mod settings;
pub mod startup;
pub mod telemetry;
pub mod trace;
pub mod urls;

pub use settings::Settings;
pub use startup::{App, run};
