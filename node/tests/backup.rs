//! Backup of a cluster under load, restored into a new three-node cluster: the same topics up
//! to the backup's log index, uniqueness still enforced for keys claimed before it, and a
//! consumer tailing the restored cluster from offset 0.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;

/// An acknowledged write: its topic, offset, the log index its answer named (appends name
/// it, sign-ups do not) and the email it claimed.
#[derive(Clone, Debug)]
struct Ack {
    topic: &'static str,
    offset: u64,
    log_index: Option<u64>,
    email: Option<String>,
}

/// Writers through every node until `stop`: sign-ups (each a new email) and plain appends.
fn load(c: &Cluster, stop: Arc<AtomicBool>) -> (Vec<thread::JoinHandle<()>>, Arc<Mutex<Vec<Ack>>>) {
    let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
    let addrs: Vec<String> = (1..=3).map(|i| c.addr(i)).collect();
    let writers = (0..2)
        .map(|w| {
            let (stop, acks, addrs) = (stop.clone(), acks.clone(), addrs.clone());
            thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let addr = &addrs[i % addrs.len()];
                    let email = format!("w{w}-{i}@example.com");
                    let r = signup(addr, &format!("w{w}u{i}"), &email);
                    if r.status == 201 {
                        acks.lock().unwrap().push(Ack {
                            topic: "users",
                            offset: r.body["offset"].as_u64().unwrap(),
                            log_index: None,
                            email: Some(email),
                        });
                    }
                    let r = post(
                        addr,
                        "/v1/topics/ledger/events",
                        &event_body(&format!("w{w}e{i}"), None),
                    )
                    .unwrap();
                    if r.status == 201 {
                        acks.lock().unwrap().push(Ack {
                            topic: "ledger",
                            offset: r.body["first_offset"].as_u64().unwrap(),
                            log_index: Some(r.body["log_index"].as_u64().unwrap()),
                            email: None,
                        });
                    }
                    i += 1;
                }
            })
        })
        .collect();
    (writers, acks)
}

fn acks_len(acks: &Mutex<Vec<Ack>>) -> usize {
    acks.lock().unwrap().len()
}

#[test]
fn a_backup_under_load_restores_into_a_new_cluster() {
    let c = Cluster::start(3, users_tuning());
    c.wait_leader(&[1, 2, 3]);
    let stop = Arc::new(AtomicBool::new(false));
    let (writers, acks) = load(&c, stop.clone());
    wait_for("writes before the backup", Duration::from_secs(30), || {
        (acks_len(&acks) >= 60).then_some(())
    });
    let file = c.dir.path().join("cluster.backup");
    let out = c.cli_ok(&["backup", "--to", file.to_str().unwrap()]);
    let index: u64 = out
        .lines()
        .last()
        .and_then(|l| l.split("log index ").nth(1))
        .and_then(|s| s.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    // Writes go on after the backup point.
    let at_backup = acks_len(&acks);
    wait_for("writes after the backup", Duration::from_secs(30), || {
        (acks_len(&acks) >= at_backup + 40).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acks = acks.lock().unwrap().clone();
    assert!(acks.iter().any(|a| a.log_index.is_some_and(|i| i <= index)));
    assert!(acks.iter().any(|a| a.log_index.is_some_and(|i| i > index)));
    assert!(!file.with_extension("backup.partial").exists());

    // A new cluster from it: node 1 restored, 2 and 3 empty, added and promoted.
    let mut r = Cluster::prepare(3, users_tuning(), None, None);
    let out = r.cli_ok(&["restore", "--from", file.to_str().unwrap(), "--id", "1"]);
    assert!(
        out.contains(&format!("restored log index {index}")),
        "{out}"
    );
    // A second restore into the same data dir is refused, changing nothing.
    let again = r.cli(
        &r.config,
        &["restore", "--from", file.to_str().unwrap(), "--id", "1"],
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a node's files"));
    r.spawn(1);
    r.wait_healthy(1);
    assert_eq!(r.wait_leader(&[1]), 1);
    for id in [2, 3] {
        r.spawn(id);
        r.wait_healthy(id);
        let id = id.to_string();
        r.cli_ok(&["cluster", "add-learner", "--id", &id]);
        r.cli_ok(&["cluster", "promote", "--id", &id]);
    }
    assert_eq!(r.wait_leader(&[1, 2, 3]), 1);
    r.wait_converged(&[1, 2, 3]);
    let voters: Vec<u64> = r
        .members(1)
        .into_iter()
        .filter_map(|(id, voter)| voter.then_some(id))
        .collect();
    assert_eq!(voters, [1, 2, 3]);

    // The same topics up to the backup point: every topic a prefix of the source's, holding
    // every write acknowledged at or before the backup's index and none after it.
    let mut restored_len = std::collections::BTreeMap::new();
    for topic in ["users", "ledger"] {
        let source = c.read_topic(1, topic);
        let restored = r.read_topic(1, topic);
        for id in [2, 3] {
            assert_eq!(r.read_topic(id, topic), restored, "{topic} on node {id}");
        }
        assert!(restored.len() <= source.len());
        assert_eq!(restored[..], source[..restored.len()], "{topic}");
        restored_len.insert(topic, restored.len() as u64);
    }
    for a in &acks {
        if let Some(log_index) = a.log_index {
            let held = a.offset < restored_len[a.topic];
            assert_eq!(
                held,
                log_index <= index,
                "{a:?} against backup index {index}"
            );
        }
    }

    // Uniqueness holds for keys claimed before the backup, and keys claimed after it are free.
    let claimed = |before: bool| {
        acks.iter()
            .find(|a| a.email.is_some() && (a.offset < restored_len["users"]) == before)
            .unwrap_or_else(|| {
                panic!(
                    "no sign-up {} the backup",
                    if before { "before" } else { "after" }
                )
            })
    };
    let (before, after) = (claimed(true), claimed(false));
    let again = signup(
        &r.addr(2),
        "again",
        &before.email.clone().unwrap().to_uppercase(),
    );
    assert_eq!(again.status, 409, "{}", again.text);
    let fresh = signup(&r.addr(3), "fresh", after.email.as_deref().unwrap());
    assert_eq!(fresh.status, 201, "{}", fresh.text);

    // A consumer tails the restored cluster from offset 0.
    let q = r.start_query("q");
    let users = r.read_topic(1, "users").len() as u64;
    wait_for(
        "the read model of the restored cluster",
        Duration::from_secs(30),
        || {
            let h = get(&q, "/health").ok()?.body;
            (h["checkpoint"].as_u64()? >= users && h["lag_events"] == 0).then_some(())
        },
    );
    let email = before.email.as_deref().unwrap();
    let found = get(&q, &format!("/v1/users?email={email}")).unwrap().body;
    assert_eq!(found["users"].as_array().map(Vec::len), Some(1), "{found}");
}

/// A damaged backup is refused by name, and the data dir is left without a node's files.
#[test]
fn a_damaged_backup_is_refused_and_restores_nothing() {
    let c = Cluster::start(1, Tuning::default());
    for i in 0..20 {
        append_ok(&c.addr(1), "t", &format!("u{i}"), None);
    }
    let file = c.dir.path().join("one.backup");
    c.cli_ok(&["backup", "--to", file.to_str().unwrap()]);
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&file, &bytes).unwrap();
    let r = Cluster::prepare(1, Tuning::default(), None, None);
    let out = r.cli(
        &r.config,
        &["restore", "--from", file.to_str().unwrap(), "--id", "1"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("one.backup") && stderr.contains("checksum mismatch"),
        "{stderr}"
    );
    assert!(!r.dir.path().join("node1").join("uniqlog.redb").exists());
}

/// The way across the change of the log's layout (docs/operating.md, Upgrades): a backup taken by the
/// last build with the log in redb restores into this one. `fixtures/before_segments.backup`
/// was taken from a one-node cluster of commit ffa380e with this harness's config (no
/// cluster secret, the shipped user_email rules): three accounts, an email change, a keyed
/// two-event append, and a refused duplicate email.
#[test]
fn a_backup_from_the_build_before_segments_restores() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/before_segments.backup");
    let mut r = Cluster::prepare(1, users_tuning(), None, None);
    let out = r.cli_ok(&["restore", "--from", fixture.to_str().unwrap(), "--id", "1"]);
    assert!(out.contains("restored log index 8"), "{out}");
    r.spawn(1);
    r.wait_healthy(1);
    assert_eq!(r.wait_leader(&[1]), 1);
    // The events as that build served them (`fixtures/before_segments.json`).
    let served: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.with_extension("json")).unwrap())
            .unwrap();
    for topic in ["users", "ledger"] {
        assert_eq!(
            serde_json::Value::from(r.read_topic(1, topic)),
            served[topic],
            "{topic}"
        );
    }

    // The uniq set came across: a taken email is refused, one released by the change is free.
    let account = |email: &str| {
        format!(
            r#"{{"events":[{{"type":"AccountCreated","stream":"n-{email}","data":{{"email":"{email}"}}}}]}}"#
        )
    };
    let taken = post(
        &r.addr(1),
        "/v1/topics/users/events",
        &account("SECOND@example.com"),
    )
    .unwrap();
    assert_eq!(taken.status, 409, "{}", taken.text);
    let freed = post(
        &r.addr(1),
        "/v1/topics/users/events",
        &account("user2@example.com"),
    )
    .unwrap();
    assert_eq!(freed.status, 201, "{}", freed.text);
    assert_eq!(freed.body["first_offset"], 4);

    // So did the stored answers: the keyed append, sent again, answers as it did then. The
    // answer was stored at the log time of the day the fixture was made, and a retry gets it
    // only within the idempotency window (24 h of log time, then the key is free again); so
    // the window is widened first, or this check would fail once the fixture is a day old.
    let mut rules = get(&r.addr(1), "/v1/cluster/uniq-rules").unwrap().body;
    assert_eq!(rules["idempotency"]["window_ms"], 86_400_000, "{rules}");
    rules["idempotency"]["window_ms"] = serde_json::json!(100u64 * 365 * 86_400_000);
    let body = serde_json::json!({"uniq": rules["uniq"], "idempotency": rules["idempotency"]});
    let widened = post(&r.addr(1), "/v1/cluster/uniq-rules", &body.to_string()).unwrap();
    assert_eq!(widened.status, 200, "{}", widened.text);
    let paid = r#"{"events":[{"type":"Paid","data":{"cents":1250}},{"type":"Receipt","data":{"to":"user1@example.com"}}]}"#;
    let again = post_keyed(&r.addr(1), "/v1/topics/ledger/events", paid, "pay-1");
    assert_eq!(again.status, 201, "{}", again.text);
    assert_eq!(
        (&again.body["first_offset"], &again.body["log_index"]),
        (&serde_json::json!(0), &serde_json::json!(7))
    );
    assert_eq!(r.read_topic(1, "ledger").len(), 2);
}
