//! `uniqlog cluster up` supervises: a node that dies is reported and started again, one node
//! or all of them restart on request even when one is down, and `--with-consumers` runs the
//! sign-up flow end to end as `uniqlog dev` does.

mod common;

use std::fs::File;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// `cluster up`, stopped with SIGTERM whatever happens (it then stops its children).
struct Up(std::process::Child);

impl Drop for Up {
    fn drop(&mut self) {
        if self.0.try_wait().unwrap().is_none() {
            // SAFETY: kill(2) on the child we spawned.
            unsafe {
                libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
            }
            let _ = wait_for("cluster up to exit", Duration::from_secs(30), || {
                self.0.try_wait().unwrap()
            });
        }
    }
}

fn up(config: &std::path::Path, log: &std::path::Path, extra: &[&str]) -> Up {
    Up(Command::new(BIN)
        .args(["cluster", "up", "--config"])
        .arg(config)
        .args(extra)
        .stdout(File::create(log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap())
}

/// Wait until `cluster up` (its stdout in `log`) has started everything and tends its
/// children: the nodes may elect a leader before that, having bootstrapped themselves.
fn wait_started(log: &std::path::Path) {
    wait_for(
        "cluster up to finish starting",
        Duration::from_secs(60),
        || {
            std::fs::read_to_string(log)
                .ok()?
                .contains("Children that exit are started again")
                .then_some(())
        },
    );
}

/// The pid of the `uniqlog node` process running node `id` of `config`, from /proc.
fn node_pid(config: &std::path::Path, id: u64) -> Option<i32> {
    let want = format!("node\0--config\0{}\0--id\0{id}\0", config.display());
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .ends_with(&want)
            .then_some(pid)
    })
}

fn uptime_ms(c: &Cluster, id: u64) -> Option<u64> {
    c.status(id)?["uptime_ms"].as_u64()
}

/// A harness view of the nodes `cluster up` runs (it starts nothing itself).
fn view(nodes: &[(u64, u16)]) -> Cluster {
    let mut c = Cluster::prepare(nodes.len() as u64, Tuning::default(), None, None);
    for (n, (_, port)) in c.nodes.iter_mut().zip(nodes) {
        n.addr = format!("127.0.0.1:{port}");
    }
    c
}

#[test]
fn a_dead_node_is_reported_and_started_again_and_restarts_never_wait_on_a_down_node() {
    let dir = tempfile::TempDir::new().unwrap();
    let nodes: Vec<(u64, u16)> = (1..=3).map(|id| (id, free_port())).collect();
    let config = dir.path().join("cluster.toml");
    write_config(&config, &nodes, &Tuning::default());
    let log = dir.path().join("up.log");
    let _up = up(&config, &log, &[]);
    let c = view(&nodes);
    wait_started(&log);
    c.wait_leader(&[1, 2, 3]);
    let up_log = || std::fs::read_to_string(&log).unwrap();

    // kill -9 under it: reported at once, started again, serving again.
    let pid = node_pid(&config, 2).expect("node 2 runs");
    // SAFETY: kill(2) on a process of this test's own cluster.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    wait_for("the exit reported", Duration::from_secs(10), || {
        up_log().contains("node 2 exited (signal: 9").then_some(())
    });
    wait_for("node 2 started again", Duration::from_secs(30), || {
        (up_log().contains("node 2 started again")
            && node_pid(&config, 2).is_some_and(|p| p != pid)
            && c.status(2).is_some())
        .then_some(())
    });

    // One node on request: only it restarts.
    let before: Vec<u64> = (1..=3).map(|id| uptime_ms(&c, id).unwrap()).collect();
    let asked = Instant::now();
    let out = c.cli(&config, &["cluster", "restart", "--node", "3"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("node 3 restarted and caught up"),
        "{stdout}"
    );
    let up3 = uptime_ms(&c, 3).unwrap();
    assert!(
        Duration::from_millis(up3) < asked.elapsed(),
        "node 3 restarted"
    );
    for id in [1, 2] {
        assert!(
            uptime_ms(&c, id).unwrap() > before[id as usize - 1],
            "node {id} kept running"
        );
    }

    // A rolling restart with a node down starts it instead of waiting on it.
    let pid = node_pid(&config, 1).expect("node 1 runs");
    // SAFETY: as above.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    wait_for("the exit reported", Duration::from_secs(10), || {
        up_log().contains("node 1 exited").then_some(())
    });
    let out = c.cli(&config, &["cluster", "restart", "--rolling"]);
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
    for id in 1..=3 {
        assert!(
            c.status(id).is_some(),
            "node {id} serves after the rolling restart"
        );
    }
}

#[test]
fn with_consumers_the_sign_up_flow_runs_on_the_cluster_as_in_dev() {
    let dir = tempfile::TempDir::new().unwrap();
    let nodes: Vec<(u64, u16)> = (1..=3).map(|id| (id, free_port())).collect();
    let config = dir.path().join("cluster.toml");
    let (query, mail, sink) = (free_port(), free_port(), free_port());
    let extra = format!(
        "{}\n[users]\nactivation_secret = \"s\"\npassword_memory_kib = 64\npassword_iterations = 1\n\
         [query]\nlisten = \"127.0.0.1:{query}\"\ndata_dir = \"query\"\n\
         [mail]\nlisten = \"127.0.0.1:{mail}\"\nwebhook_url = \"http://127.0.0.1:{sink}/send\"\n\
         [mail_sink]\nlisten = \"127.0.0.1:{sink}\"\n",
        include_str!("common/user_email_rules.toml")
    );
    write_config(
        &config,
        &nodes,
        &Tuning {
            extra: Box::leak(extra.into_boxed_str()),
            ..Tuning::default()
        },
    );
    let log = dir.path().join("up.log");
    let _up = up(&config, &log, &["--with-consumers"]);
    let c = view(&nodes);
    c.wait_leader(&[1, 2, 3]);
    let printed = wait_for("the addresses printed", Duration::from_secs(60), || {
        let text = std::fs::read_to_string(&log).unwrap();
        text.contains("mail sink").then_some(text)
    });
    assert!(printed.contains("/ui"), "{printed}");
    assert!(
        printed.contains(&format!("127.0.0.1:{sink}/messages")),
        "{printed}"
    );
    let r = post(
        &c.addr(2),
        "/v1/users",
        &json!({"username": "ada", "email": "ada@example.com", "password": "correct horse"})
            .to_string(),
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    let sink = format!("127.0.0.1:{sink}");
    wait_for("the activation email", Duration::from_secs(30), || {
        let m = get(&sink, "/messages").ok()?.body;
        (m["messages"][0]["to"] == "ada@example.com").then_some(())
    });
    let doc = get(
        &format!("127.0.0.1:{query}"),
        &format!("/v1/users/{id}?min_offset={}", r.body["offset"]),
    )
    .unwrap();
    assert_eq!(doc.body["email"], "ada@example.com", "{}", doc.text);
}

#[test]
fn a_healthy_start_logs_no_warning_and_a_peer_down_is_one_warning_and_one_recovery() {
    let dir = tempfile::TempDir::new().unwrap();
    let nodes: Vec<(u64, u16)> = (1..=3).map(|id| (id, free_port())).collect();
    let config = dir.path().join("cluster.toml");
    write_config(&config, &nodes, &Tuning::default());
    let err = dir.path().join("up.err");
    let out = dir.path().join("up.out");
    // The default log filter, as a user gets it.
    let _up = Up(Command::new(BIN)
        .args(["cluster", "up", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .unwrap());
    let c = view(&nodes);
    wait_started(&out);
    // Any node may have won the first election: the one killed is a follower.
    let leader = c.wait_leader(&[1, 2, 3]);
    let victim = if leader == 3 { 2 } else { 3 };
    append_ok(&c.addr(1), "quiet", "a", None);
    let logs = || std::fs::read_to_string(&err).unwrap();
    let alarming = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(alarming(&logs()), Vec::<String>::new(), "a healthy start");
    let pid = node_pid(&config, victim).expect("the victim runs");
    // SAFETY: kill(2) on a process of this test's own cluster.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    // Started again by `cluster up` after a second; the leader (which calls it) saw it go
    // and come back.
    let text = wait_for(
        "the victim back in the leader's log",
        Duration::from_secs(30),
        || {
            let text = logs();
            text.contains(&format!("peer reachable again peer={victim}"))
                .then_some(text)
        },
    );
    let warnings = alarming(&text);
    assert!(
        !warnings.is_empty()
            && warnings
                .iter()
                .all(|l| l.contains(&format!("peer unreachable peer={victim}"))),
        "{warnings:#?}"
    );
    assert!(
        warnings.len() <= 2,
        "at most one per peer that saw it: {warnings:#?}"
    );
}
