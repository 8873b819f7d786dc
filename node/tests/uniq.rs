//! Uniqueness through `POST /v1/topics/users/events` on real node processes: exactly one
//! claim per normalized email under concurrency and leader failover, update and delete
//! semantics, rule changes, and a node refusing a config whose rules differ.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn users() -> Tuning {
    Tuning {
        extra: USER_EMAIL_RULES,
        ..Tuning::default()
    }
}

/// The email of attempt `i`: 2,000 attempts over 700 addresses, in case and whitespace
/// variants, so most addresses are tried several times under different spellings.
fn email_of(i: usize) -> (String, String) {
    let base = i % 700;
    let normalized = format!("user{base}@example.com");
    let spelled = match (i / 700) % 3 {
        0 => normalized.clone(),
        1 => format!("  User{base}@EXAMPLE.com"),
        _ => format!("USER{base}@Example.Com   "),
    };
    (normalized, spelled)
}

fn signup_body(i: usize, email: &str) -> String {
    json!({
        "events": [{"type": "AccountCreated", "stream": format!("user-{i}"), "data": {"email": email, "n": i}}],
        "expected_version": {format!("user-{i}"): "no_stream"},
    })
    .to_string()
}

struct Tally {
    created: BTreeMap<String, Vec<usize>>,
    conflicts: usize,
    retries: usize,
}

/// 50 clients make 2,000 sign-up attempts through all three nodes, retrying 503s with the
/// same idempotency key until each attempt is answered 201 or 409.
fn run_signups(c: &mut Cluster, kill_leader_after: Option<usize>) -> Tally {
    const ATTEMPTS: usize = 2000;
    const CLIENTS: usize = 50;
    let tally = Arc::new(Mutex::new(Tally {
        created: BTreeMap::new(),
        conflicts: 0,
        retries: 0,
    }));
    let done = Arc::new(Mutex::new(0usize));
    let addrs: Vec<String> = (1..=3).map(|id| c.addr(id)).collect();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (tally, done, addrs) = (tally.clone(), done.clone(), addrs.clone());
            thread::spawn(move || {
                for i in (client..ATTEMPTS).step_by(CLIENTS) {
                    let (normalized, spelled) = email_of(i);
                    let body = signup_body(i, &spelled);
                    let key = format!("signup-{i}");
                    let mut node = i % 3;
                    let status = loop {
                        let r =
                            try_post_keyed(&addrs[node], "/v1/topics/users/events", &body, &key);
                        match r {
                            Ok(r) if r.status == 201 || r.status == 409 => {
                                if r.status == 409 {
                                    assert_eq!(r.body["error"], "uniq_conflict", "{}", r.text);
                                }
                                break r.status;
                            }
                            Ok(r) => assert_eq!(r.status, 503, "attempt {i}: {}", r.text),
                            Err(_) => {}
                        }
                        // Unanswered, refused or 503: the same request, same key, maybe elsewhere.
                        tally.lock().unwrap().retries += 1;
                        node = (node + 1) % 3;
                        thread::sleep(Duration::from_millis(20));
                    };
                    let mut t = tally.lock().unwrap();
                    if status == 201 {
                        t.created.entry(normalized).or_default().push(i);
                    } else {
                        t.conflicts += 1;
                    }
                    drop(t);
                    *done.lock().unwrap() += 1;
                }
            })
        })
        .collect();
    if let Some(after) = kill_leader_after {
        let done = done.clone();
        wait_for("sign-ups before the kill", Duration::from_secs(120), || {
            (*done.lock().unwrap() >= after).then_some(())
        });
        let leader = c.wait_leader(&[1, 2, 3]);
        c.kill(leader);
        let rest: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
        c.wait_leader(&rest);
        c.restart(leader);
    }
    for client in clients {
        client.join().unwrap();
    }
    Arc::try_unwrap(tally).ok().unwrap().into_inner().unwrap()
}

fn check_exactly_once(c: &Cluster, tally: &Tally) {
    assert_eq!(tally.created.len(), 700, "every address was claimed");
    for (email, winners) in &tally.created {
        assert_eq!(
            winners.len(),
            1,
            "{email} was answered 201 {} times: {winners:?}",
            winners.len()
        );
    }
    assert_eq!(tally.conflicts, 2000 - 700);
    c.wait_converged(&[1, 2, 3]);
    let events = c.read_topic(1, "users");
    for id in [2, 3] {
        assert!(
            events == c.read_topic(id, "users"),
            "node {id} serves a different topic"
        );
    }
    let mut per_email: BTreeMap<String, usize> = BTreeMap::new();
    for e in &events {
        assert_eq!(e["type"], "AccountCreated");
        let n = e["data"]["n"].as_u64().unwrap() as usize;
        *per_email.entry(email_of(n).0).or_default() += 1;
        assert_eq!(e["stream"], format!("user-{n}"));
    }
    assert_eq!(per_email.len(), 700);
    assert!(
        per_email.values().all(|n| *n == 1),
        "one AccountCreated per normalized email"
    );
    // The set agrees with the 201s, on every node.
    for (email, winners) in tally.created.iter().step_by(37) {
        for id in 1..=3 {
            let r = get(&c.addr(id), &format!("/v1/uniq/user_email/{email}")).unwrap();
            assert_eq!(
                r.body["owner"],
                format!("user-{}", winners[0]),
                "node {id}: {}",
                r.text
            );
        }
    }
}

#[test]
fn each_normalized_email_is_claimed_exactly_once_by_concurrent_clients() {
    let mut c = Cluster::start(3, users());
    let tally = run_signups(&mut c, None);
    check_exactly_once(&c, &tally);
}

#[test]
fn claims_stay_unique_when_the_leader_is_killed_and_clients_retry_with_their_keys() {
    let mut c = Cluster::start(3, users());
    let tally = run_signups(&mut c, Some(600));
    check_exactly_once(&c, &tally);
    eprintln!("retries during failover: {}", tally.retries);
}

fn event(ty: &str, stream: &str, data: Value) -> String {
    json!({"events": [{"type": ty, "stream": stream, "data": data}]}).to_string()
}

fn post_users(c: &Cluster, ty: &str, stream: &str, data: Value) -> Resp {
    post(
        &c.addr(1),
        "/v1/topics/users/events",
        &event(ty, stream, data),
    )
    .unwrap()
}

#[test]
fn update_and_delete_move_and_release_keys_only_for_their_owner() {
    let c = Cluster::start(1, users());
    assert_eq!(
        post_users(&c, "AccountCreated", "user-1", json!({"email": "a@x.io"})).status,
        201
    );
    assert_eq!(
        post_users(&c, "AccountCreated", "user-2", json!({"email": "b@x.io"})).status,
        201
    );
    let before = c.topics(1);

    let r = post_users(
        &c,
        "EmailChanged",
        "user-2",
        json!({"old_email": "b@x.io", "new_email": "A@X.io"}),
    );
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (409, Some("uniq_conflict")),
        "{}",
        r.text
    );
    assert_eq!(r.body["set"], "user_email");
    assert_eq!(r.body["key"], "a@x.io");
    let r = post_users(
        &c,
        "EmailChanged",
        "user-2",
        json!({"old_email": "a@x.io", "new_email": "c@x.io"}),
    );
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (409, Some("uniq_not_owner")),
        "{}",
        r.text
    );
    let r = post_users(&c, "AccountDeleted", "user-2", json!({"email": "a@x.io"}));
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (409, Some("uniq_not_owner")),
        "{}",
        r.text
    );
    let r = post_users(&c, "AccountCreated", "user-9", json!({"name": "no email"}));
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (400, Some("validation")),
        "{}",
        r.text
    );
    assert!(
        r.body["fields"]["events[0].data/email"].is_string(),
        "{}",
        r.text
    );
    let r = post_users(
        &c,
        "AccountCreated",
        "user-9",
        json!({"email": "evil\u{202E}@x.io"}),
    );
    assert_eq!(r.status, 400, "bidi characters are refused: {}", r.text);
    assert_eq!(c.topics(1), before, "refused requests appended nothing");

    // user-2 moves to c; user-1 deletes and frees a; user-3 takes a in another spelling.
    assert_eq!(
        post_users(
            &c,
            "EmailChanged",
            "user-2",
            json!({"old_email": "b@x.io", "new_email": "c@x.io"})
        )
        .status,
        201
    );
    assert_eq!(
        post_users(&c, "AccountCreated", "user-4", json!({"email": "b@x.io"})).status,
        201,
        "b was released"
    );
    assert_eq!(
        post_users(&c, "AccountDeleted", "user-1", json!({"email": "a@x.io"})).status,
        201
    );
    assert_eq!(
        post_users(&c, "AccountCreated", "user-3", json!({"email": " A@x.IO "})).status,
        201
    );

    let owner = get(&c.addr(1), "/v1/uniq/user_email/a@X.io").unwrap();
    assert_eq!(owner.body["owner"], "user-3", "{}", owner.text);
    let history = get(&c.addr(1), "/v1/uniq/user_email/a@x.io/history").unwrap();
    let h: Vec<(String, Option<u64>)> = history.body["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["owner"].as_str().unwrap().to_string(),
                r["released_offset"].as_u64(),
            )
        })
        .collect();
    assert_eq!(h.len(), 2, "{}", history.text);
    assert_eq!(h[0].0, "user-1");
    assert!(h[0].1.is_some(), "user-1 released a");
    assert_eq!(h[1], ("user-3".to_string(), None));
    assert_eq!(
        get(&c.addr(1), "/v1/uniq/user_email/nobody@x.io")
            .unwrap()
            .status,
        404
    );
    assert_eq!(
        get(&c.addr(1), "/v1/uniq/no_such_set/a").unwrap().status,
        404
    );
}

const NAME_SET: &str = r#"{"name": "user_name", "topic": "users", "normalize": "lowercase",
    "rule": [{"event": "AccountCreated", "op": "create", "key": "/name"}]}"#;

fn rules_body(extra_set: &str) -> String {
    let email: Value = serde_json::from_str(
        r#"{"name": "user_email", "topic": "users", "normalize": "email", "rule": [
            {"event": "AccountCreated", "op": "create", "key": "/email"},
            {"event": "EmailChanged", "op": "update", "old_key": "/old_email", "key": "/new_email"},
            {"event": "AccountDeleted", "op": "delete", "key": "/email"}]}"#,
    )
    .unwrap();
    let extra: Value = serde_json::from_str(extra_set).unwrap();
    json!({ "uniq": [email, extra] }).to_string()
}

#[test]
fn new_rules_are_built_from_existing_events_or_refused_and_old_configs_are_refused() {
    let mut c = Cluster::start(1, users());
    let a = c.addr(1);
    for (i, name) in ["Ann", "Bob"].iter().enumerate() {
        let r = post_users(
            &c,
            "AccountCreated",
            &format!("user-{i}"),
            json!({"email": format!("{i}@x.io"), "name": name, "team": "red"}),
        );
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let r = post(&a, "/v1/cluster/uniq-rules", &rules_body(NAME_SET)).unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["version"], 2);
    // The new set was built from the existing events, and is enforced.
    assert_eq!(
        get(&a, "/v1/uniq/user_name/ANN").unwrap().body["owner"],
        "user-0"
    );
    let r = post_users(
        &c,
        "AccountCreated",
        "user-7",
        json!({"email": "7@x.io", "name": "bob"}),
    );
    assert_eq!(
        (r.status, r.body["set"].as_str()),
        (409, Some("user_name")),
        "{}",
        r.text
    );

    // A set the existing events already violate (both are on team red) is refused and
    // changes nothing.
    let team = r#"{"name": "user_team", "topic": "users", "rule": [{"event": "AccountCreated", "op": "create", "key": "/team"}]}"#;
    let r = post(&a, "/v1/cluster/uniq-rules", &rules_body(team)).unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (409, Some("rules_violated")),
        "{}",
        r.text
    );
    assert_eq!(r.body["set"], "user_team");
    assert_eq!(
        get(&a, "/v1/uniq/user_team/red").unwrap().status,
        404,
        "no such set"
    );
    let status = get(&a, "/v1/cluster/status").unwrap();
    assert_eq!(status.body["rules_version"], 2);

    // The node's config still has version-1 rules: restarted, it refuses and says why.
    c.kill(1);
    let out = Command::new(BIN)
        .args(["node", "--config"])
        .arg(&c.config)
        .args(["--id", "1"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a node with differing rules must not start"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("differ") && err.contains("user_name"), "{err}");
}
