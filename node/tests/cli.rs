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

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `log append | read | tail` against a three-node cluster: what is appended is read back,
/// and a tail started before an append prints it as it is committed.
#[test]
fn log_append_read_and_tail_round_trip() {
    let c = Cluster::start(3, Tuning::default());
    c.wait_leader(&[1, 2, 3]);
    // `uniqlog log append cli --type Noted --data {"uid":UID} EXTRA...`
    let append = |uid: &str, extra: &[&str]| {
        let data = format!(r#"{{"uid":"{uid}"}}"#);
        let mut args = vec!["log", "append", "cli", "--type", "Noted", "--data", &data];
        args.extend_from_slice(extra);
        c.cli(&c.config, &args)
    };
    let ok = |out: std::process::Output| -> serde_json::Value {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let new_stream = ["--stream", "s-1", "--expected-version", "no_stream"];
    let first = ok(append("a", &[]));
    assert_eq!(first["first_offset"], 0, "{first}");
    ok(append("b", &new_stream));
    let all = json_lines(&c.cli_ok(&["log", "read", "cli"]));
    let uids: Vec<&str> = all
        .iter()
        .map(|e| e["data"]["uid"].as_str().unwrap())
        .collect();
    assert_eq!(uids, ["a", "b"]);
    let from_one = json_lines(&c.cli_ok(&["log", "read", "cli", "--from", "1"]));
    assert_eq!(from_one.len(), 1);
    assert_eq!(from_one[0]["offset"], 1);
    let stream = json_lines(&c.cli_ok(&["log", "read", "--stream", "s-1"]));
    assert_eq!(stream.len(), 1);
    assert_eq!(stream[0]["data"]["uid"], "b");
    // The stream is at version 1 now: expecting "new" again is a conflict, exit code 1.
    let out = append("again", &new_stream);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("409"), "{err}");

    // A tail from offset 1 prints b, then c once appended.
    let mut tail = Command::new(BIN)
        .args(["log", "tail", "cli", "--from", "1", "--config"])
        .arg(&c.config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| -> serde_json::Value {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("tail printed no line for {what}"));
        serde_json::from_str(&line).unwrap()
    };
    assert_eq!(next("b")["data"]["uid"], "b");
    append_ok(&c.addr(2), "cli", "c", None);
    assert_eq!(next("c")["data"]["uid"], "c");
    tail.kill().unwrap();
    tail.wait().unwrap();
}

/// `uniq get | history` name the owner of a key as the set normalizes it, and a free key is
/// one line of error and exit code 1.
#[test]
fn uniq_get_and_history_show_owners() {
    let c = Cluster::start(3, users_tuning());
    let leader = c.wait_leader(&[1, 2, 3]);
    let r = signup(&c.addr(leader), "ann", "Ann@Example.com");
    assert_eq!(r.status, 201, "{}", r.text);
    let owner: serde_json::Value =
        serde_json::from_str(&c.cli_ok(&["uniq", "get", "user_email", "ANN@example.COM"])).unwrap();
    assert_eq!(owner["key"], "ann@example.com");
    assert!(
        owner["owner"].as_str().unwrap().starts_with("user-"),
        "{owner}"
    );
    let history: serde_json::Value =
        serde_json::from_str(&c.cli_ok(&["uniq", "history", "user_email", "ann@example.com"]))
            .unwrap();
    assert_eq!(history["history"].as_array().unwrap().len(), 1, "{history}");

    let out = c.cli(&c.config, &["uniq", "get", "user_email", "bob@example.com"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains("free"), "{err}");
}

/// With no node reachable, every client command fails with one line and exit code 1.
#[test]
fn client_commands_fail_with_one_line_when_no_node_answers() {
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("cluster.toml");
    write_config(&config, &[(1, free_port())], &Tuning::default());
    for args in [
        vec!["log", "read", "t"],
        vec!["log", "append", "t", "--type", "T"],
        vec!["uniq", "get", "s", "k"],
        vec!["cluster", "status"],
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
    }
}

/// `uniqlog consumers` shows the query consumer's checkpoint beside the head of `users`, and
/// the lag closing to 0 once it caught up.
#[test]
fn consumers_lists_checkpoint_head_and_lag() {
    let mut c = Cluster::start(3, users_tuning());
    let leader = c.wait_leader(&[1, 2, 3]);
    c.start_query("q");
    for (i, email) in ["a@example.com", "b@example.com", "c@example.com"]
        .iter()
        .enumerate()
    {
        let r = signup(&c.addr(leader), &format!("user{i}"), email);
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let row = wait_for(
        "the query consumer caught up",
        Duration::from_secs(30),
        || {
            let rows: serde_json::Value =
                serde_json::from_str(&c.cli_ok(&["consumers", "--json"])).unwrap();
            let row = rows
                .as_array()?
                .iter()
                .find(|r| r["consumer"] == "query")?
                .clone();
            (row["lag_events"] == 0).then_some(row)
        },
    );
    assert_eq!(row["topic"], "users", "{row}");
    assert_eq!(row["head"], 3, "{row}");
    assert_eq!(row["checkpoint"], 3, "{row}");
    let table = c.cli_ok(&["consumers"]);
    let line = table
        .lines()
        .find(|l| l.starts_with("query"))
        .unwrap_or_else(|| panic!("no query row:\n{table}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols, ["query", "users", "3", "3", "0"], "{table}");
}

/// The `cluster status` table as header name -> cell, one map per row (HEALTH, the last
/// column, may hold spaces).
fn status_rows(table: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "ID", "ADDR", "ROLE", "MEMBER", "TERM", "LEADER", "COMMIT", "APPLIED", "REPL-LAG",
            "HEALTH"
        ]
    );
    lines
        .map(|l| {
            let cells: Vec<String> = l
                .split_whitespace()
                .take(header.len() - 1)
                .map(str::to_string)
                .chain(std::iter::once(
                    l.split_whitespace()
                        .skip(header.len() - 1)
                        .collect::<Vec<_>>()
                        .join(" "),
                ))
                .collect();
            assert!(!cells.is_empty());
            header.iter().map(|h| h.to_string()).zip(cells).collect()
        })
        .collect()
}

/// `cluster status`: a row per node with role, membership, indexes, replication lag and
/// health, learners the config does not list included. A stopped node is shown down with a
/// lag that grows with the writes it misses, and the command still succeeds.
#[test]
fn cluster_status_shows_roles_replication_lag_health_and_learners() {
    let mut c = Cluster::start(3, Tuning::default());
    let leader = c.wait_leader(&[1, 2, 3]);
    for i in 0..5 {
        append_ok(&c.addr(leader), "st", &format!("s{i}"), None);
    }
    c.wait_converged(&[1, 2, 3]);
    let rows = wait_for("every follower at lag 0", Duration::from_secs(20), || {
        let rows = status_rows(&c.cli_ok(&["cluster", "status"]));
        rows.iter()
            .filter(|r| r["ROLE"] == "follower")
            .all(|r| r["REPL-LAG"] == "0")
            .then_some(rows)
    });
    assert_eq!(rows.len(), 3);
    for r in &rows {
        let is_leader = r["ID"] == leader.to_string();
        assert_eq!(r["ROLE"], if is_leader { "leader" } else { "follower" });
        assert_eq!(r["REPL-LAG"], if is_leader { "-" } else { "0" });
        assert_eq!(r["MEMBER"], "voter");
        assert_eq!(r["LEADER"], leader.to_string());
        assert_eq!(r["HEALTH"], "ready");
        assert_eq!(r["COMMIT"], rows[0]["COMMIT"]);
        assert_eq!(r["APPLIED"], r["COMMIT"]);
    }

    // A learner added by address, outside the config, is listed too.
    let id = c.add_process(&Tuning::default());
    let learner = id.to_string();
    c.cli_ok(&[
        "cluster",
        "add-learner",
        "--id",
        &learner,
        "--addr",
        &c.addr(id),
    ]);
    let rows = wait_for("the learner caught up", Duration::from_secs(20), || {
        let rows = status_rows(&c.cli_ok(&["cluster", "status"]));
        rows.iter()
            .any(|r| r["ID"] == learner && r["REPL-LAG"] == "0" && r["HEALTH"] == "ready")
            .then_some(rows)
    });
    assert_eq!(rows.len(), 4);
    let row = rows.iter().find(|r| r["ID"] == learner).unwrap();
    assert_eq!(
        (row["ROLE"].as_str(), row["MEMBER"].as_str()),
        ("learner", "learner")
    );
    assert_eq!(row["ADDR"], c.addr(id));

    // A follower that is down: shown down, its lag growing with every write it misses.
    let down = (1..=3).find(|n| *n != leader).unwrap();
    c.kill(down);
    for i in 0..10 {
        append_ok(&c.addr(leader), "st", &format!("d{i}"), None);
    }
    let out = c.cli(&c.config, &["cluster", "status"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("node {down}:")), "{stderr}");
    let rows = status_rows(&String::from_utf8(out.stdout).unwrap());
    let row = rows.iter().find(|r| r["ID"] == down.to_string()).unwrap();
    assert_eq!(
        (row["ROLE"].as_str(), row["HEALTH"].as_str()),
        ("down", "down")
    );
    assert!(row["REPL-LAG"].parse::<u64>().unwrap() >= 10, "{row:?}");
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&c.cli_ok(&["cluster", "status", "--json"])).unwrap();
    let row = rows.iter().find(|r| r["id"] == down).unwrap();
    assert!(row["replication_lag"].as_u64().unwrap() >= 10, "{row}");
    let row = rows.iter().find(|r| r["id"] == leader).unwrap();
    assert!(row["replication_lag"].is_null(), "{row}");
    assert_eq!(row["health"], "ready");
}

/// `cluster add-learner` follows the new node until it holds the log up to its own addition:
/// not on a terminal, as plain progress lines ending with "caught up".
#[test]
fn add_learner_follows_the_catch_up_to_the_end() {
    let mut c = Cluster::start(3, Tuning::default());
    let leader = c.wait_leader(&[1, 2, 3]);
    for i in 0..200 {
        append_ok(&c.addr(leader), "catch", &format!("c{i}"), None);
    }
    let id = c.add_process(&Tuning::default());
    let out = c.cli_ok(&[
        "cluster",
        "add-learner",
        "--id",
        &id.to_string(),
        "--addr",
        &c.addr(id),
    ]);
    let added: u64 = out
        .lines()
        .find_map(|l| l.strip_suffix(')')?.split("(log index ").nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(added > 200, "{out}");
    let last = out.lines().last().unwrap();
    let prefix = format!("node {id} catching up: caught up (log index ");
    let reached: u64 = last
        .strip_prefix(&prefix)
        .and_then(|r| r.strip_suffix(')')?.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(reached >= added, "{out}");
    // The leader agrees: the learner holds at least that much.
    let status = c.status(leader).unwrap();
    assert!(status["replication"][id.to_string()].as_u64().unwrap() >= added);
    wait_for("the learner applied it", Duration::from_secs(10), || {
        (c.read_topic(id, "catch").len() == 200).then_some(())
    });

    // A learner that is not running makes no progress; --no-wait returns at once.
    let out = c.cli_ok(&[
        "cluster",
        "add-learner",
        "--id",
        "9",
        "--addr",
        "127.0.0.1:9",
        "--no-wait",
    ]);
    assert!(out.contains("node 9 added as learner"), "{out}");
    assert!(!out.contains("catching up"), "{out}");
}

/// Writes go to any node that takes them: with node 1 down, `log append` is taken by another;
/// `--node` pins one, and a pinned node that is down is an error naming it.
#[test]
fn cli_writes_fail_over_to_a_reachable_node_and_node_pins_one() {
    let mut c = Cluster::start(3, Tuning::default());
    c.kill(1);
    c.wait_leader(&[2, 3]);
    let append = |extra: &[&str]| {
        let mut args = vec!["log", "append", "fo", "--type", "Noted"];
        args.extend_from_slice(extra);
        c.cli(&c.config, &args)
    };
    let out = append(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = append(&["--idempotency-key", "k-1"]);
    assert!(out.status.success());
    let out = append(&["--node", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node 1 at") && err.contains("cannot connect"),
        "{err}"
    );
    let out = append(&["--node", "3"]);
    assert!(out.status.success());
    assert_eq!(c.read_topic(2, "fo").len(), 3);
    // Membership changes and init go to any node too.
    let out = c.cli(&c.config, &["cluster", "init"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("already initialized"));
}

/// Common mistakes get one line (or one block) that says the cause once and the fix.
#[test]
fn errors_say_the_cause_once_and_the_fix() {
    let dir = tempfile::TempDir::new().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["cluster", "status"]);
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
    assert!(err.contains("--config"), "{err}");

    // A taken port: which one, and --port-base; nothing written.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = taken.local_addr().unwrap().port() - 1;
    let err = run(&["dev", "--port-base", &base.to_string()]);
    assert_eq!(err.matches("in use").count(), 1, "{err}");
    assert!(err.contains("--port-base"), "{err}");
    assert!(!dir.path().join("data").exists(), "nothing written");
    drop(taken);

    // A node started twice: it is already running.
    let mut c = Cluster::start(1, users_tuning());
    let err = run(&["node", "--config", c.config.to_str().unwrap(), "--id", "1"]);
    assert!(err.contains("already running"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // Rules that differ from the replicated ones: which side is which.
    c.stop(1);
    let text = std::fs::read_to_string(&c.config).unwrap();
    std::fs::write(
        &c.config,
        text.replace("normalize = \"email\"", "normalize = \"lowercase\""),
    )
    .unwrap();
    let err = run(&["node", "--config", c.config.to_str().unwrap(), "--id", "1"]);
    assert!(
        err.contains("in the config: {") && err.contains("replicated: {"),
        "{err}"
    );
    assert!(!err.contains("UniqSet {"), "no Rust debug dumps: {err}");
}
