//! (e) Postgres as production runs it: three nodes under Patroni in strict synchronous mode, etcd
//! holding the leader key, HAProxy in front (`scripts/pg-ha`). Two hubs write through HAProxy's
//! primary port with `ack_after = "replica"` and read from the cluster's nodes while the leader's
//! postmaster or Patroni dies, a standby dies, or etcd stops. Afterwards every order a client saw
//! `accepted` settles, its events are in the stream exactly once, every result a partner was
//! answered `result_stored` is kept with its outcome, and the hubs rode it out: the same
//! processes run from start to end.

use std::time::{Duration, Instant};

use crate::rig::*;

/// What the hubs' `database.replica_url` is: every node directly (the hub probes them, fences
/// events on each node of its read set and spreads reads over them);
/// `ORDERHUB_HA_READS=replicas-port` reads through HAProxy's replicas port instead.
fn reads() -> HaReads {
    match std::env::var("ORDERHUB_HA_READS").as_deref() {
        Ok("replicas-port") => HaReads::ReplicasPort,
        _ => HaReads::Nodes,
    }
}

/// How long the orders may take to settle after the load.
const SETTLE: Duration = Duration::from_secs(120);

/// A cluster, two hubs on it, the simulators and a steady load.
struct HaTest {
    // Field order is drop order: the hubs go before the cluster.
    rig: Rig,
    load: Load,
    /// Each hub's process id at the start.
    pids: Vec<u32>,
    rate: f64,
    ha: PgHa,
}

impl HaTest {
    async fn start(tag: &str, ack_after: &'static str) -> Self {
        let ha = PgHa::start().await;
        let reads = reads();
        let db = ha.create_database(reads).await;
        println!("hubs read from: {reads:?} ({})", db.replica_url);
        let bus = Bus::single().await;
        let setups = (0..2)
            .map(|_| {
                let mut s = HubSetup::on(&db, bus.url("hub"), 1);
                s.ack_after = ack_after;
                s
            })
            .collect();
        let mut rig = Rig::start(bus, setups).await;
        let pids = rig
            .hubs
            .iter_mut()
            .map(|h| h.running_pid().expect("the hub runs"))
            .collect();
        let rate = rate(40.0);
        let load = Load::start(rig.gateway.clone(), rate, tag, &PARTNERS);
        rig.run_load(&load, rate, 5.0).await;
        Self {
            rig,
            load,
            pids,
            rate,
            ha,
        }
    }

    /// `orders.admin.status` of both hubs (asked until each has answered) once `ok` holds for
    /// both, within 60 s; returns the last answer.
    async fn hub_status(
        &self,
        operator: &async_nats::Client,
        what: &str,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut good: std::collections::HashMap<String, serde_json::Value> = Default::default();
        loop {
            let s = crate::helpers::status(operator).await;
            let instance = s["instance_id"].as_str().unwrap_or_default().to_owned();
            if ok(&s) {
                good.insert(instance, s.clone());
            } else {
                good.remove(&instance);
            }
            if good.len() == self.pids.len() {
                return s;
            }
            assert!(Instant::now() < deadline, "status never showed {what}: {s}");
            tokio::time::sleep(SLOW_POLL).await;
        }
    }

    async fn run_load(&self, secs: f64) {
        self.rig.run_load(&self.load, self.rate, secs).await
    }

    /// Result events the gateway has received.
    fn results_seen(&self) -> usize {
        self.rig
            .sims
            .gateway
            .seen
            .lock()
            .unwrap()
            .events
            .values()
            .filter(|(_, kind, _)| kind == "orderhub.order.result_stored")
            .count()
    }

    /// Waits until the gateway has received `n` more result events (orders go all the way
    /// through: stored, fetched and answered by the partner, result stored, published).
    async fn results_flow(&self, n: usize, within: Duration) {
        let from = self.results_seen();
        let deadline = Instant::now() + within;
        while self.results_seen() < from + n {
            assert!(
                Instant::now() < deadline,
                "events stopped: {} result events at the gateway in {within:?}, {n} awaited; \
                 attempts refused meanwhile: {:?}",
                self.results_seen() - from,
                self.load.retried_since(deadline - within)
            );
            tokio::time::sleep(SLOW_POLL).await;
        }
    }

    /// Verifies the run (every acknowledged order settles, events exactly once, every
    /// acknowledged result kept), prints the baseline and each fault's cost, and checks that
    /// no hub was restarted. Stops the hubs and the cluster; returns the rig with the simulators'
    /// counts.
    async fn finish(mut self, faults: &[(&str, Instant)]) -> Rig {
        self.rig
            .finish(self.load, SETTLE, Duration::from_secs(3), faults)
            .await;
        for (hub, pid) in self.rig.hubs.iter_mut().zip(&self.pids) {
            assert_eq!(
                hub.running_pid(),
                Some(*pid),
                "{} still runs as the process it was started as (pid {pid}):\n{}",
                hub.name,
                hub.log_tail(30)
            );
        }
        println!(
            "hubs: both still the processes started at the beginning ({:?})",
            self.pids
        );
        println!("cluster at the end:\n{}", self.ha.status().await);
        let Self { mut rig, ha, .. } = self;
        // The hubs go before the cluster (the simulators' counts stay for further checks).
        rig.hubs.clear();
        drop(ha);
        rig
    }
}

#[tokio::test]
#[ignore = "slow: a Patroni cluster and a minute of load; scripts/test runs it with ORDERHUB_SLOW_TESTS=1"]
async fn leader_postmaster_killed_mid_load() {
    let _turn = one_at_a_time().await;
    let t = HaTest::start("ha-kill-leader", "replica").await;
    let operator = t.rig.bus.client("operator").await;
    let before = t
        .hub_status(&operator, "a primary and a synchronous standby", |s| {
            s["database"]["sync_standby"] == true && s["database"]["primary"].is_string()
        })
        .await;

    let killed = Instant::now();
    let n = t.ha.kill_leader().await;
    let waited = t.ha.wait_primary().await;
    println!(
        "kill-leader: n{n}'s postmaster SIGKILLed; a new primary behind HAProxy {:.1} s after \
         the kill (wait-primary: {waited} s)",
        killed.elapsed().as_secs_f64()
    );
    t.run_load(5.0).await;
    // The old leader is rewound and rejoins as a standby by itself; reads reach it again.
    let status = t.ha.wait_all_running(Duration::from_secs(120)).await;
    println!(
        "n{n} back as a standby {:.1} s after the kill:\n{status}",
        killed.elapsed().as_secs_f64()
    );
    t.run_load(5.0).await;
    // What the hubs report: the primary moved, a synchronous standby is attached again, and the
    // two standbys serve reads while the primary is out of the read set.
    let after = t
        .hub_status(
            &operator,
            "the failover seen, two read nodes in the set",
            |s| {
                let in_set = s["replica"]["nodes"]
                    .as_array()
                    .map_or(0, |n| n.iter().filter(|n| n["in_read_set"] == true).count());
                s["database"]["failovers"].as_u64().unwrap_or(0) >= 1
                    && s["database"]["sync_standby"] == true
                    && in_set == 2
                    && s["database"]["primary"] != before["database"]["primary"]
            },
        )
        .await;
    println!(
        "status: primary {} (was {}), failovers {}, read nodes {}",
        after["database"]["primary"],
        before["database"]["primary"],
        after["database"]["failovers"],
        after["replica"]["nodes"]
    );

    t.finish(&[("leader's postmaster SIGKILLed (Patroni fails over)", killed)])
        .await;
}

#[tokio::test]
#[ignore = "slow: a Patroni cluster and a minute of load; scripts/test runs it with ORDERHUB_SLOW_TESTS=1"]
async fn with_ack_after_primary_a_killed_leader_loses_nothing_either() {
    // Strict synchronous mode: a commit returns only once the synchronous standby has it, and
    // Patroni promotes only that standby. So `accepted` right after the primary's commit is as
    // safe as after the read nodes' replay; what "replica" adds is read-your-write.
    let _turn = one_at_a_time().await;
    let t = HaTest::start("ha-primary", "primary").await;
    let killed = Instant::now();
    let n = t.ha.kill_leader().await;
    let waited = t.ha.wait_primary().await;
    println!(
        "kill-leader (ack_after = primary): n{n}'s postmaster SIGKILLed; a new primary {:.1} s \
         after the kill (wait-primary: {waited} s)",
        killed.elapsed().as_secs_f64()
    );
    t.run_load(5.0).await;
    t.finish(&[("leader's postmaster SIGKILLed, ack_after = primary", killed)])
        .await;
}

#[tokio::test]
#[ignore = "slow: a Patroni cluster, a 20 s leader-key expiry and two minutes of load; scripts/test runs it with ORDERHUB_SLOW_TESTS=1"]
async fn leader_patroni_killed_then_a_planned_switchover() {
    let _turn = one_at_a_time().await;
    let t = HaTest::start("ha-patroni", "replica").await;

    let killed = Instant::now();
    let n = t.ha.kill_leader_patroni().await;
    let waited = t.ha.wait_primary().await;
    println!(
        "kill-leader-patroni: n{n}'s Patroni SIGKILLed; a new primary behind HAProxy {:.1} s \
         after the kill (wait-primary: {waited} s)",
        killed.elapsed().as_secs_f64()
    );
    // The load recovers on the new primary.
    t.run_load(5.0).await;
    println!(
        "kill-leader-patroni: load recovered {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    // The old leader's Patroni comes back, demotes and rewinds its postmaster.
    t.ha.start_node(n).await;
    let status = t.ha.wait_all_running(Duration::from_secs(120)).await;
    println!(
        "n{n} back as a standby {:.1} s after the kill:\n{status}",
        killed.elapsed().as_secs_f64()
    );
    t.run_load(3.0).await;

    let switched = Instant::now();
    let to = t.ha.switchover().await;
    println!(
        "switchover: n{to} leads, routed by HAProxy, {:.1} s after it was asked",
        switched.elapsed().as_secs_f64()
    );
    t.run_load(5.0).await;
    t.ha.wait_all_running(Duration::from_secs(120)).await;
    t.run_load(3.0).await;

    t.finish(&[
        (
            "leader's Patroni SIGKILLed (failover at leader-key expiry)",
            killed,
        ),
        ("planned switchover", switched),
    ])
    .await;
}

#[tokio::test]
#[ignore = "slow: a Patroni cluster and a minute of load; scripts/test runs it with ORDERHUB_SLOW_TESTS=1"]
async fn a_standby_killed_then_restarted() {
    let _turn = one_at_a_time().await;
    let t = HaTest::start("ha-standby", "replica").await;

    // The synchronous standby: in strict synchronous mode every commit waits for it, so Patroni
    // must name the other standby synchronous before writes go on.
    let Some(victim) = t.ha.node_with_role("sync_standby").await else {
        panic!("no synchronous standby:\n{}", t.ha.status().await);
    };
    let killed = Instant::now();
    t.ha.kill_node(victim).await;
    println!("kill-node: n{victim} (a standby, the synchronous one) SIGKILLed");
    // Events keep flowing while it is down.
    t.results_flow((t.rate * 5.0) as usize, Duration::from_secs(60))
        .await;
    t.run_load(8.0).await;
    println!(
        "kill-node: events and accepted orders flowing {:.1} s after n{victim} died",
        killed.elapsed().as_secs_f64()
    );

    let restarted = Instant::now();
    t.ha.start_node(victim).await;
    let status = t.ha.wait_all_running(Duration::from_secs(120)).await;
    println!(
        "start-node: n{victim} streaming again {:.1} s later:\n{status}",
        restarted.elapsed().as_secs_f64()
    );
    // Reads reach the node that came back.
    t.results_flow((t.rate * 5.0) as usize, Duration::from_secs(60))
        .await;
    t.run_load(5.0).await;

    let rig = t
        .finish(&[
            ("a standby SIGKILLed", killed),
            ("the standby restarted", restarted),
        ])
        .await;
    // A partner fetches each order after it received its stored event: the read must find it.
    for (partner, sim) in &rig.sims.partners {
        let seen = sim.seen.lock().unwrap();
        let gets: usize = seen
            .answers
            .iter()
            .filter(|(k, _)| k.starts_with("get "))
            .map(|(_, n)| n)
            .sum();
        println!(
            "partner {partner}: {gets} gets, {} answered not_found",
            seen.get_not_found.len()
        );
        assert!(gets > 0, "partner {partner} fetched its orders");
        assert!(
            seen.get_not_found.is_empty(),
            "partner {partner}: {} gets answered not_found for orders whose stored event it had \
             received, e.g. {:?}",
            seen.get_not_found.len(),
            &seen.get_not_found[..seen.get_not_found.len().min(5)]
        );
    }
}

#[tokio::test]
#[ignore = "slow: a Patroni cluster, etcd stopped for 30 s and a minute of load; scripts/test runs it with ORDERHUB_SLOW_TESTS=1"]
async fn etcd_stopped_for_30s_then_started() {
    let _turn = one_at_a_time().await;
    let t = HaTest::start("ha-etcd", "replica").await;

    let stopped = Instant::now();
    t.ha.stop_etcd().await;
    println!("stop-etcd: etcd stopped; Patroni demotes the primary after retry_timeout (5 s)");
    fault_lasts(30.0).await;
    let outage = t.load.retried_since(stopped);
    let restarting = Instant::now();
    t.ha.start_etcd().await;
    println!(
        "start-etcd: a leader routed by HAProxy {:.1} s after etcd was started again ({:.1} s \
         after it was stopped)",
        restarting.elapsed().as_secs_f64(),
        stopped.elapsed().as_secs_f64()
    );
    t.run_load(5.0).await;
    println!(
        "load recovered {:.1} s after etcd was stopped",
        stopped.elapsed().as_secs_f64()
    );
    t.ha.wait_all_running(Duration::from_secs(120)).await;
    t.run_load(3.0).await;

    // While there was no writable primary the hub said so: `unavailable`.
    let unavailable: usize = outage
        .iter()
        .filter(|(why, _)| why.starts_with("unavailable"))
        .map(|(_, n)| n)
        .sum();
    println!("refused submits while etcd was stopped: {outage:?}");
    assert!(
        unavailable > 0,
        "the hubs answer unavailable while there is no writable primary; the refusals were: \
         {outage:?}"
    );

    t.finish(&[("etcd stopped for 30 s (no writable primary)", stopped)])
        .await;
}
