//! `uniqlog cluster up` starts the config's nodes, initializes them, and stops them all on
//! SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn cluster_up_starts_initializes_and_stops_every_node() {
    let dir = tempfile::TempDir::new().unwrap();
    let nodes: Vec<(u64, u16)> = (1..=3).map(|id| (id, free_port())).collect();
    let config = dir.path().join("cluster.toml");
    write_config(&config, &nodes, &Tuning::default());
    let mut up = Command::new(BIN)
        .args(["cluster", "up", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|(_, p)| format!("127.0.0.1:{p}"))
        .collect();
    let leader = wait_for(
        "a leader through cluster up",
        Duration::from_secs(60),
        || {
            let leaders: Vec<u64> = addrs
                .iter()
                .filter_map(|a| get(a, "/v1/cluster/status").ok()?.body["leader"].as_u64())
                .collect();
            (leaders.len() == 3 && leaders.iter().all(|l| *l == leaders[0])).then(|| leaders[0])
        },
    );
    assert!((1..=3).contains(&leader));
    append_ok(&addrs[2], "up", "x", None);

    // SAFETY: kill(2) on the child we spawned.
    unsafe {
        libc::kill(up.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = wait_for("cluster up to exit", Duration::from_secs(30), || {
        up.try_wait().unwrap()
    });
    assert!(status.success(), "cluster up exited with {status}");
    for a in &addrs {
        wait_for(
            "the node to stop listening",
            Duration::from_secs(10),
            || get(a, "/health").is_err().then_some(()),
        );
    }
}

/// A node on a non-loopback address without tokens and a cluster secret refuses to start and
/// says how to fix it; `insecure = true` lets it start.
#[test]
fn an_exposed_node_without_auth_refuses_to_start_unless_insecure() {
    let dir = tempfile::TempDir::new().unwrap();
    let port = free_port();
    let config = dir.path().join("cluster.toml");
    let text = format!("[[node]]\nid = 1\naddr = \"0.0.0.0:{port}\"\ndata_dir = \"n1\"\n");
    std::fs::write(&config, &text).unwrap();
    let out = Command::new(BIN)
        .args(["node", "--id", "1", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started: {stderr}");
    assert!(
        stderr.contains("not loopback") && stderr.contains("insecure = true"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("n1").join("uniqlog.redb").exists(),
        "it refused before touching storage"
    );

    std::fs::write(&config, format!("{text}\n[auth]\ninsecure = true\n")).unwrap();
    let _node = Killed(
        Command::new(BIN)
            .args(["node", "--id", "1", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = format!("127.0.0.1:{port}");
    let health = wait_for(
        "the insecure node to serve",
        Duration::from_secs(30),
        || get(&addr, "/health").ok(),
    );
    assert_eq!(health.status, 200);
}
