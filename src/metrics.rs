//! Prometheus metrics (`[metrics] listen`): the exporter serves the text format at `/metrics`.
//!
//! Counters and histograms are recorded where things happen (endpoints, writers, relay) through
//! the `metrics` facade, which costs nothing while no exporter is installed. The gauges that
//! describe the hub as a whole (live order actors, outbox, replica, restarts) are refreshed from
//! the same view `orders.admin.status` gives, every [`REFRESH`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::endpoints::Handlers;

const REFRESH: Duration = Duration::from_secs(2);

/// Latency buckets in seconds, from 1 ms to 2 min.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Group-commit batch sizes.
const OPS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Installs the exporter on `listen` and keeps the hub-wide gauges fresh until `handlers` is the
/// last reference (the hub stopped).
pub fn start(listen: &str, handlers: &Arc<Handlers>) -> anyhow::Result<()> {
    let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(listen)
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| {
            format!("metrics.listen `{listen}` is not a host:port this machine resolves")
        })?;
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full("orderhub_group_commit_ops".into()), OPS)
        })
        .context("metrics buckets")?
        .install()
        .with_context(|| format!("serving metrics on {addr}"))?;
    tracing::info!(%addr, "metrics at http://{addr}/metrics");
    let handlers = Arc::downgrade(handlers);
    tokio::spawn(async move {
        while let Some(h) = handlers.upgrade() {
            refresh(&h).await;
            drop(h);
            tokio::time::sleep(REFRESH).await;
        }
    });
    Ok(())
}

async fn refresh(h: &Handlers) {
    let s = h.hub.status().await;
    metrics::gauge!("orderhub_actors_live").set(s.actors_live as f64);
    metrics::gauge!("orderhub_in_flight").set(h.in_flight() as f64);
    if let Some(n) = s.outbox_pending {
        metrics::gauge!("orderhub_outbox_pending").set(n as f64);
    }
    metrics::gauge!("orderhub_outbox_oldest_seconds")
        .set(s.outbox_oldest_ms.unwrap_or(0) as f64 / 1e3);
    if let Some(sync) = s.database.sync_standby {
        metrics::gauge!("orderhub_sync_standby").set(if sync { 1.0 } else { 0.0 });
    }
    for node in &s.replica.nodes {
        let name = node.node.clone();
        metrics::gauge!("orderhub_read_node_in_set", "node" => name.clone())
            .set(if node.in_read_set { 1.0 } else { 0.0 });
        if let Some(b) = node.lag_bytes {
            metrics::gauge!("orderhub_read_node_lag_bytes", "node" => name).set(b as f64);
        }
    }
    metrics::gauge!("orderhub_replica_events_waiting").set(s.replica.events_waiting as f64);
    if let Some(b) = s.replica.lag_bytes {
        metrics::gauge!("orderhub_replica_lag_bytes").set(b as f64);
    }
    if let Some(ms) = s.replica.lag_ms {
        metrics::gauge!("orderhub_replica_lag_seconds").set(ms as f64 / 1e3);
    }
    for (actor, n) in s.restarts {
        metrics::gauge!("orderhub_actor_restarts", "actor" => actor).set(n as f64);
    }
    for (partner, n) in s.pending {
        metrics::gauge!("orderhub_partner_pending", "partner" => partner).set(n as f64);
    }
}
