//! `uniqlog bench` loads a real cluster, and its read-back check tells a correct cluster from
//! one that accepts the same email twice.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

fn bench(cluster: &Cluster, args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(BIN)
        .arg("bench")
        .arg("--config")
        .arg(&cluster.config)
        .args(["--json", "--warmup", "20", "--max-seconds", "60"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let json = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    (out.status.success(), json, format!("{stdout}\n{stderr}"))
}

#[test]
fn bench_counts_collisions_and_reads_the_topic_back() {
    let cluster = Cluster::start(
        3,
        Tuning {
            extra: USER_EMAIL_RULES,
            ..Default::default()
        },
    );
    let (ok, r, out) = bench(
        &cluster,
        &[
            "--clients",
            "8",
            "--requests",
            "400",
            "--seed",
            "3",
            "--dup-ratio",
            "0.1",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(r["requests"], 400, "{out}");
    assert_eq!(r["errors"], 0, "{out}");
    let expected = r["expected_accepted"].as_u64().unwrap();
    assert!((300..400).contains(&expected), "about 10 % collide: {out}");
    assert_eq!(r["accepted"].as_u64(), Some(expected), "{out}");
    assert_eq!(r["conflicts"].as_u64(), Some(400 - expected), "{out}");
    assert_eq!(r["verify"]["ok"], true, "{out}");
    assert_eq!(r["verify"]["stored"].as_u64(), Some(expected), "{out}");

    // Five events per request, each with its own email: all stored.
    let (ok, r, out) = bench(
        &cluster,
        &[
            "--clients",
            "4",
            "--requests",
            "60",
            "--batch",
            "5",
            "--dup-ratio",
            "0",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(r["verify"]["stored"].as_u64(), Some(300), "{out}");
}

#[test]
fn bench_fails_a_cluster_that_takes_an_email_twice() {
    // No uniq rule on `users`: every colliding request is accepted, which the run must flag.
    let cluster = Cluster::start(1, Tuning::default());
    let (ok, r, out) = bench(
        &cluster,
        &[
            "--clients",
            "4",
            "--requests",
            "200",
            "--seed",
            "5",
            "--dup-ratio",
            "0.2",
        ],
    );
    assert!(!ok, "a cluster without the rule passed: {out}");
    assert_eq!(r["client_check_ok"], false, "{out}");
    assert_eq!(r["verify"]["ok"], false, "{out}");
    assert!(
        r["verify"]["duplicated_emails"].as_u64().unwrap() > 0,
        "{out}"
    );
}

/// Node 1, the first of the config, is down (`scripts/soak.sh` kills nodes at random): the
/// bench finds the topic's length and reads the run back through the others.
#[test]
fn bench_runs_and_reads_back_with_the_first_node_of_the_config_down() {
    let mut cluster = Cluster::start(
        3,
        Tuning {
            extra: USER_EMAIL_RULES,
            ..Default::default()
        },
    );
    let (ok, _, out) = bench(&cluster, &["--clients", "2", "--requests", "20"]);
    assert!(ok, "{out}");
    cluster.kill(1);
    cluster.wait_leader(&[2, 3]);
    // The requests sent to node 1 fail; the others' writes are read back whole.
    let (ok, r, out) = bench(
        &cluster,
        &[
            "--clients",
            "3",
            "--requests",
            "90",
            "--dup-ratio",
            "0",
            "--tolerate-errors",
        ],
    );
    assert!(ok, "{out}");
    let (accepted, errors) = (
        r["accepted"].as_u64().unwrap(),
        r["errors"].as_u64().unwrap(),
    );
    assert!(accepted > 0 && errors > 0, "{out}");
    assert_eq!(accepted + errors, 90, "{out}");
    assert_eq!(r["verify"]["ok"], true, "{out}");
    assert_eq!(r["verify"]["stored"].as_u64(), Some(accepted), "{out}");
}
