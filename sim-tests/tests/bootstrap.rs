//! Self-bootstrap under the simulator (`[raft] bootstrap = "auto"`, `node/src/bootstrap.rs`):
//! nodes that start together, one after another, or with one crashing in the middle of it,
//! form one cluster with one initial membership and one rules entry, in every seed, with Raft
//! messages lost, duplicated and delayed in half of them. No `cluster init` is sent.
//!
//! `MADSIM_TEST_SEED=n` runs the seeds from n, `BOOTSTRAP_SEEDS=k` runs k of them (default and CI: 200, about 30 s on this VM; one process holds about 10 MB a run, so thousands go in batches).
#![cfg(madsim)]

use std::time::Duration;

use madsim::rand::{seq::SliceRandom, Rng};
use serde_json::json;
use sim_tests::cluster::{now_ms, sleep, SimCluster};
use sim_tests::history::Outcome;
use sim_tests::net_faults::{MsgKind, Rates};

#[derive(Debug, Clone, Copy)]
enum Start {
    /// Every node at once.
    Together,
    /// One node, then the others one by one, seconds apart; the first may restart before
    /// the others are up.
    Staggered,
    /// Every node at once, and one crashes in the first 1.5 s and comes back.
    CrashMidway,
}

fn ms(range: std::ops::Range<u64>) -> Duration {
    Duration::from_millis(madsim::rand::thread_rng().gen_range(range))
}

async fn scenario() -> String {
    let seed = madsim::runtime::Handle::current().seed();
    let mut rng = madsim::rand::thread_rng();
    let n = if rng.gen_bool(0.3) { 5 } else { 3 };
    let start = [Start::Together, Start::Staggered, Start::CrashMidway][(seed % 3) as usize];
    let message_faults = rng.gen_bool(0.5);
    let mut cluster = SimCluster::start(n);
    if message_faults {
        cluster
            .net_faults()
            .set(MsgKind::Raft, Rates::random(&mut rng));
    }
    let mut ids = cluster.ids();
    let mut events = Vec::new();
    match start {
        Start::Together => {}
        Start::Staggered => {
            ids.shuffle(&mut rng);
            for &id in &ids[1..] {
                cluster.kill(id);
            }
            if rng.gen_bool(0.5) {
                sleep(ms(0..2000)).await;
                cluster.kill(ids[0]);
                sleep(ms(100..2000)).await;
                cluster.restart(ids[0]);
                events.push(format!("node {} restarted alone", ids[0]));
            }
            for &id in &ids[1..] {
                sleep(ms(0..3000)).await;
                cluster.restart(id);
                events.push(format!("node {id} started at {} ms", now_ms()));
            }
        }
        Start::CrashMidway => {
            sleep(ms(0..1500)).await;
            let victim = *ids.choose(&mut rng).expect("a node");
            cluster.kill(victim);
            let down = ms(100..3000);
            sleep(down).await;
            cluster.restart(victim);
            events.push(format!(
                "node {victim} crashed at {} ms for {} ms",
                now_ms() - down.as_millis() as u64,
                down.as_millis()
            ));
        }
    }
    let leader = cluster
        .try_wait_bootstrapped(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("seed {seed} ({start:?}, {events:?}): {e}"));
    cluster.net_faults().clear();

    // One cluster: a write through any node reaches every node, and they converge on one
    // state.
    // A client retries a 503 (a leader that just stepped down) under one idempotency key.
    let body = json!({"events": [{"type": "T", "data": {"seed": seed}}],
                      "idempotency_key": format!("boot-{seed}")});
    let through = *cluster.ids().choose(&mut rng).expect("a node");
    let mut written = None;
    for _ in 0..50 {
        match cluster.append(through, "boot", &body).await {
            Outcome::Ok(created) => {
                written = Some(created);
                break;
            }
            Outcome::Failed(503, _) | Outcome::Unknown(_) => {
                sleep(Duration::from_millis(200)).await
            }
            other => panic!("seed {seed}: an append through node {through}: {other:?}"),
        }
    }
    assert!(
        written.is_some(),
        "seed {seed}: no append through node {through} in 10 s"
    );
    let state = cluster.wait_converged(&["boot"]).await;
    for (id, topics) in &state.topics {
        assert_eq!(topics["boot"].len(), 1, "seed {seed}: node {id}'s topic");
    }
    let first_hash = state.state_hashes.values().next();
    assert!(
        state.state_hashes.values().all(|h| Some(h) == first_hash),
        "seed {seed}: the nodes' states differ"
    );

    // One initial membership (every configured node, each a voter) and one rules entry, on
    // every node.
    let want: Vec<u64> = (1..=n as u64).collect();
    for (id, status) in cluster.statuses().await {
        let status = status.unwrap_or_else(|e| panic!("seed {seed}: node {id}: {e}"));
        let voters: Vec<u64> = status
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect();
        assert_eq!(voters, want, "seed {seed}: node {id}'s voters");
        assert_eq!(status.members.len(), n, "seed {seed}: node {id}'s members");
        assert_eq!(
            status.rules_version, 1,
            "seed {seed}: node {id} applied more than one rules entry, or none"
        );
    }
    format!(
        "sim bootstrap seed={seed} nodes={n} start={start:?} message_faults={message_faults} \
         leader={leader} at={} ms {events:?}",
        now_ms()
    )
}

#[test]
fn nodes_bootstrap_one_cluster_however_they_start() {
    let first = sim_tests::seed_from_env(1);
    let count: u64 = std::env::var("BOOTSTRAP_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    for seed in first..first + count {
        println!("{}", sim_tests::run_once(seed, scenario));
    }
}
