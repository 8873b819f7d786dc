//! A cluster that changes while it serves: a fourth node added under continuous writes,
//! caught up through a snapshot and the log, promoted; an old voter removed, which finds out
//! and says so.

mod common;

use std::time::Duration;

use common::load::{assert_acked_present, Load};
use common::metrics::scrape;
use common::*;

fn tuning() -> Tuning {
    Tuning {
        // Small, so the new node's catch-up starts with a snapshot (the log is purged).
        raft: "snapshot_every_entries = 100\nentries_kept_after_snapshot = 10\n",
        ..Tuning::default()
    }
}

#[test]
fn replacing_a_voter_under_continuous_writes_loses_nothing() {
    let mut c = Cluster::start(3, tuning());
    let leader = c.wait_leader(&[1, 2, 3]);
    let old = (1..=3).find(|n| *n != leader).unwrap();
    let stay: Vec<u64> = (1..=3).filter(|n| *n != old).collect();
    let load = Load::start(stay.iter().map(|id| c.addr(*id)).collect(), "m", 3);
    load.wait_more(300);

    // Node 4 joins as a learner: add-learner follows it until it holds the log up to its
    // own addition, which it can only get through a snapshot (the log was purged).
    let new = c.add_process(&tuning());
    let text = c.cli_ok(&[
        "cluster",
        "add-learner",
        "--id",
        &new.to_string(),
        "--addr",
        &c.addr(new),
    ]);
    assert!(text.contains("caught up"), "{text}");
    let installed = scrape(&c.addr(new)).value("uniqlog_snapshots_installed_total", &[]);
    assert!(installed >= 1.0, "node {new} caught up without a snapshot");
    load.wait_more(100);

    c.cli_ok(&["cluster", "promote", "--id", &new.to_string()]);
    load.wait_more(100);
    c.cli_ok(&["cluster", "remove", "--id", &old.to_string()]);

    // The removed node finds out, says so, and exits with 3 (not to be restarted).
    let status = c.wait_exit(old, Duration::from_secs(60));
    assert_eq!(status.code(), Some(3), "{}", c.log(old));
    let log = c.log(old);
    assert!(
        log.contains(&format!("node {old} was removed from the cluster")),
        "{log}"
    );
    load.wait_more(100);

    // The same machine back under the same id, on an empty data dir: it replays the entry
    // that removed it on its way to the one that adds it back, and must not stop for it.
    std::fs::remove_dir_all(c.dir.path().join(format!("node{old}"))).unwrap();
    c.restart(old);
    c.cli_ok(&["cluster", "add-learner", "--id", &old.to_string()]);
    c.cli_ok(&["cluster", "promote", "--id", &old.to_string()]);
    // Its removal check runs every 2.4 s here (two election timeouts): let it run three
    // times as a member, still serving.
    wait_for(
        "the re-added node to serve for 8 s",
        Duration::from_secs(30),
        || {
            let s = c.status(old)?;
            (s["uptime_ms"].as_u64()? >= 8000 && s["role"] == "follower").then_some(())
        },
    );
    load.wait_more(100);
    let (acks, _) = load.stop();

    let mut members: Vec<u64> = stay.clone();
    members.push(new);
    members.push(old);
    members.sort();
    let voters: Vec<u64> = c
        .members(leader)
        .into_iter()
        .filter_map(|(id, voter)| voter.then_some(id))
        .collect();
    assert_eq!(voters, members);
    assert_acked_present(&c, &members, "m", &acks);
}
