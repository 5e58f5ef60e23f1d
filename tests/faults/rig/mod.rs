//! The rig of a fault test: NATS, a database, hubs, simulators, a load, and the checks after.

mod bus;
mod ha;
mod hub;
mod load;
mod report;
mod sims;
mod verify;

use std::time::{Duration, Instant};

use async_nats::Client;
use tempfile::TempDir;
use tokio::sync::{Mutex, MutexGuard};

pub use bus::*;
pub use ha::*;
pub use hub::*;
pub use load::*;
pub use report::*;
pub use sims::*;
pub use verify::*;

use crate::helpers::*;

/// Orders a second of a test's load: its own default, or `ORDERHUB_FAULT_RATE`.
pub fn rate(default: f64) -> f64 {
    std::env::var("ORDERHUB_FAULT_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub const PARTNERS: [&str; 2] = ["acme-air", "globex-hotels"];
pub const AUX_SYSTEMS: [&str; 3] = ["audit", "invoice", "loyalty"];
/// How often a fault test checks a condition that costs the system under test something to ask
/// (a status request, a query per order, a cluster listing), against a deadline.
pub const SLOW_POLL: Duration = Duration::from_millis(200);

/// Each fault test runs hubs, NATS and the databases under load on a machine of two cores: two at
/// once would starve each other into faults of their own. A test holds its turn to the end.
pub async fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::const_new(());
    TURN.lock().await
}

pub struct Rig {
    // Field order is drop order: simulators and hubs go before the NATS they use.
    pub sims: Sims,
    pub hubs: Vec<HubProc>,
    pub gateway: Client,
    pub bus: Bus,
    /// The hubs' configurations and logs; kept when the test fails.
    dir: Option<TempDir>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("the hubs' logs are kept in {}", dir.keep().display());
        }
    }
}

impl Rig {
    /// `setups.len()` hubs with these setups, then the simulators.
    pub async fn start(bus: Bus, setups: Vec<HubSetup>) -> Self {
        init_logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut hubs = Vec::new();
        for (i, setup) in setups.into_iter().enumerate() {
            hubs.push(HubProc::start(&format!("hub-{}", i + 1), dir.path(), setup).await);
        }
        let sims = Sims::start(&bus).await;
        let gateway = bus.client("gateway").await;
        Self {
            sims,
            hubs,
            gateway,
            bus,
            dir: Some(dir),
        }
    }

    /// `n` hubs on one nats-server and a fresh database of the shared Postgres pair, each
    /// configured as `HubSetup::on` makes it and then changed by `adjust`.
    pub async fn on_one_server(n: usize, adjust: impl Fn(&mut HubSetup)) -> Self {
        let bus = Bus::single().await;
        let db = shared_pg().create_database().await;
        let setups = (0..n)
            .map(|_| {
                let mut setup = HubSetup::on(&db, bus.url("hub"), 1);
                adjust(&mut setup);
                setup
            })
            .collect();
        Self::start(bus, setups).await
    }

    /// Stops the load, verifies the run, and prints the baseline (`window` before the first
    /// fault) and what each fault cost, each watched until the next one or the end of the load.
    pub async fn finish(
        &self,
        load: Load,
        settle: Duration,
        window: Duration,
        faults: &[(&str, Instant)],
    ) {
        let report = load.stop().await;
        self.verify(
            &report.acked,
            Expect {
                aux: true,
                results: true,
                settle,
            },
        )
        .await;
        report_baseline(window, &report, &self.sims);
        for (i, (name, at)) in faults.iter().enumerate() {
            let until = faults.get(i + 1).map_or(report.ended, |(_, next)| *next);
            report_fault(name, *at, until, &report, &self.sims);
        }
    }

    pub async fn verify(&self, acked: &[Acked], expect: Expect) -> Verified {
        let v = verify(&self.bus, &self.gateway, acked, &self.sims, expect).await;
        for h in &self.hubs {
            println!("{} log: {:?}", h.name, h.check_log());
        }
        v
    }
}

/// How long the load may go without the accepted orders a phase waits for before the test fails.
const LOAD_STALL: Duration = Duration::from_secs(120);

impl Rig {
    /// Runs the load until it has `n` more accepted orders than now. If it stalls, fails with why
    /// the attempts meanwhile were refused and what each hub logged.
    pub async fn accepted_more(&self, load: &Load, n: usize) {
        let target = load.acked_count() + n;
        let from = Instant::now();
        if tokio::time::timeout(LOAD_STALL, load.accepted(target))
            .await
            .is_ok()
        {
            return;
        }
        let hubs: Vec<String> = self
            .hubs
            .iter()
            .map(|h| format!("{} logged {:?}", h.name, h.check_log()))
            .collect();
        panic!(
            "the load stalled: {} orders accepted, {target} awaited after {} s; attempts \
             refused meanwhile: {:?}\n{}",
            load.acked_count(),
            LOAD_STALL.as_secs(),
            load.retried_since(from),
            hubs.join("\n")
        );
    }

    /// Lets the load run on until it has about `secs` seconds' worth of orders more accepted.
    pub async fn run_load(&self, load: &Load, rate: f64, secs: f64) {
        self.accepted_more(load, (rate * secs).ceil() as usize)
            .await
    }
}

/// How long an injected fault lasts (a node or hub kept down, a receiver kept stalled, a partner
/// kept offline): the fault's own duration, part of the experiment, not a wait for a condition.
pub async fn fault_lasts(secs: f64) {
    tokio::time::sleep(Duration::from_secs_f64(secs)).await
}
