//! Simulators: `orderhub::sim`'s partners, gateway and external auxiliary system, each on its own
//! durable consumer, as its own role, each noting what it received and was answered in a
//! [`orderhub::sim::Seen`].

use std::sync::Arc;

use actors::protocol::Subjects;
use async_nats::Client;
use orderhub::sim::{
    AUX_USER, Auditor, Behaviour, GATEWAY_USER, Gateway, Observer, Partner, Role, Running,
    StopSwitch, stop_switch,
};

pub use orderhub::sim::SeenRef;

use super::*;
use crate::helpers::*;

/// A `not_found` answer to a result or a record is asked again this many times (a read node
/// catching up) before it counts.
const NOT_FOUND_RETRIES: u32 = 50;

/// A simulator; it stops when dropped. Its [`orderhub::sim::Seen`] outlives it (a partner coming back goes on
/// counting in the same one).
pub struct Sim {
    running: Running,
    pub seen: SeenRef,
    _switch: StopSwitch,
}

impl Sim {
    /// How many events are being handled right now.
    pub fn busy(&self) -> usize {
        self.running.busy()
    }
}

/// A simulator on `client`, noting in `seen`.
fn role(client: Client, seen: &SeenRef) -> Role {
    Role::new(client, Subjects::new("orders"))
        .observer(Observer::new(seen.clone()))
        .not_found_retries(NOT_FOUND_RETRIES)
}

/// A partner that fetches and confirms every order of its stored events.
pub async fn partner_sim(bus: &Bus, partner_id: &'static str, seen: SeenRef) -> Sim {
    let client = bus.client(&format!("partner-{partner_id}")).await;
    let (switch, stop) = stop_switch();
    let role = role(client, &seen);
    let running = Partner::new(role, partner_id, Behaviour::CONFIRM_ALL)
        .start(STREAM, stop)
        .await
        .unwrap_or_else(|e| panic!("partner {partner_id} starts: {e:#}"));
    Sim {
        running,
        seen,
        _switch: switch,
    }
}

/// A user gateway reading its durable consumer (result, late and settled events).
pub async fn gateway_sim(bus: &Bus, seen: SeenRef) -> Sim {
    let (switch, stop) = stop_switch();
    let running = Gateway::new(role(bus.client(GATEWAY_USER).await, &seen))
        .listen(STREAM, None, stop)
        .await
        .expect("the gateway listens");
    Sim {
        running,
        seen,
        _switch: switch,
    }
}

/// The external `audit` system: records every result (and late result) it receives.
pub async fn audit_sim(bus: &Bus, seen: SeenRef) -> Sim {
    let (switch, stop) = stop_switch();
    let running = Auditor::new(role(bus.client(AUX_USER).await, &seen), "audit")
        .start(STREAM, stop)
        .await
        .expect("the audit system starts");
    Sim {
        running,
        seen,
        _switch: switch,
    }
}

/// Every simulator of a run.
pub struct Sims {
    pub partners: Vec<(&'static str, Sim)>,
    pub gateway: Sim,
    pub audit: Sim,
}

impl Sims {
    pub async fn start(bus: &Bus) -> Self {
        let mut partners = Vec::new();
        for id in PARTNERS {
            partners.push((id, partner_sim(bus, id, Arc::default()).await));
        }
        Self {
            partners,
            gateway: gateway_sim(bus, Arc::default()).await,
            audit: audit_sim(bus, Arc::default()).await,
        }
    }

    /// Takes a partner offline: it stops pulling (the events in hand finish) and its connection
    /// closes; returns what it saw.
    pub fn take_offline(&mut self, id: &str) -> SeenRef {
        let at = self
            .partners
            .iter()
            .position(|(p, _)| *p == id)
            .expect("partner");
        let (_, sim) = self.partners.remove(at);
        sim.seen.clone()
    }

    /// Brings a partner back, counting in `seen` again.
    pub async fn bring_back(&mut self, bus: &Bus, id: &'static str, seen: SeenRef) {
        self.partners.push((id, partner_sim(bus, id, seen).await));
    }

    pub fn busy(&self) -> usize {
        self.partners.iter().map(|(_, s)| s.busy()).sum::<usize>()
            + self.gateway.busy()
            + self.audit.busy()
    }
}
