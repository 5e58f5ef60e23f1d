//! Simulated peers of the hub: `orderhub::sim`'s.

use actors::protocol::Subjects;
use orderhub::sim::{Behaviour, Partner, Role, stop_switch};

use super::STREAM;

/// Answers every stored event of `acme-air` (confirmed) until aborted, asking again while no hub
/// answers or a hub is busy.
pub fn run_partner(partner: async_nats::Client) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Aborting this task drops the switch: the partner stops.
        let (_switch, stop) = stop_switch();
        let role = Role::new(partner, Subjects::new("orders"));
        Partner::new(role, "acme-air", Behaviour::CONFIRM_ALL)
            .start(STREAM, stop)
            .await
            .expect("partner acme-air binds its consumer")
            .join()
            .await;
    })
}
