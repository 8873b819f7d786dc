//! A rolling restart of a three-node `cluster up` under continuous writes: every node
//! restarted once, the leader last, no acknowledged write lost. The longest time without an
//! acknowledged write is printed (a report, not a limit: timing belongs to benchmarks).

mod common;

use std::fs::File;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::load::{assert_acked_present, longest_gap, Load};
use common::*;

/// `cluster up`, stopped with SIGTERM whatever happens (it then stops its nodes; a SIGKILL
/// would leave them running).
struct Up(std::process::Child);

impl Up {
    fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on the child we spawned.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        wait_for("cluster up to exit", Duration::from_secs(30), || {
            self.0.try_wait().unwrap()
        })
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.0.try_wait().unwrap().is_none() {
            self.stop();
        }
    }
}

#[test]
fn a_rolling_restart_under_writes_loses_nothing() {
    let dir = tempfile::TempDir::new().unwrap();
    let nodes: Vec<(u64, u16)> = (1..=3).map(|id| (id, free_port())).collect();
    let config = dir.path().join("cluster.toml");
    write_config(&config, &nodes, &Tuning::default());
    let up_log = dir.path().join("up.log");
    let mut up = Up(Command::new(BIN)
        .args(["cluster", "up", "--config"])
        .arg(&config)
        .stdout(File::create(&up_log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    // A harness view of the same nodes (it starts nothing: `cluster up` owns them).
    let mut c = Cluster::prepare(3, Tuning::default(), None, None);
    for (n, (_, port)) in c.nodes.iter_mut().zip(&nodes) {
        n.addr = format!("127.0.0.1:{port}");
    }
    c.wait_leader(&[1, 2, 3]);
    let load = Load::start((1..=3).map(|id| c.addr(id)).collect(), "r", 3);
    load.wait_more(100);

    let began = Instant::now();
    let out = Command::new(BIN)
        .args(["cluster", "restart", "--rolling", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let took = began.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("every node restarted and caught up"),
        "{stdout}"
    );
    load.wait_more(100);
    let (acks, _) = load.stop();

    // Each node restarted once, during the command, the leader last.
    for id in 1..=3 {
        let up_ms = c.status(id).unwrap()["uptime_ms"].as_u64().unwrap();
        assert!(Duration::from_millis(up_ms) < began.elapsed(), "node {id}");
    }
    let log = std::fs::read_to_string(&up_log).unwrap();
    let stops: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("rolling restart: stopping node"))
        .collect();
    assert_eq!(stops.len(), 3, "{log}");
    // The leader is chosen again before each step (it may move): followers first, it last.
    assert!(
        stops[..2].iter().all(|l| l.ends_with("(follower)")),
        "{log}"
    );
    assert!(stops[2].ends_with("(leader)"), "{log}");
    assert_acked_present(&c, &[1, 2, 3], "r", &acks);

    // From the command to the 100th write after it returned: the election that follows the
    // leader's restart may end after the command saw every node back.
    let since: Vec<_> = acks.iter().filter(|a| a.at >= began).cloned().collect();
    let gap = longest_gap(&since, began);
    eprintln!(
        "rolling restart of 3 nodes: the command took {:.1} s; the longest time without an \
         acknowledged write from its start on was {} ms ({} writes acknowledged)",
        took.as_secs_f64(),
        gap.as_millis(),
        since.len()
    );
    assert!(up.stop().success());
    assert!(!dir.path().join("cluster.toml.up.pid").exists());
}
