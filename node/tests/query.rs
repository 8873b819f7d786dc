//! End to end: three nodes and `uniqlog query`. Commands through different nodes, each read
//! back with `min_offset`; the query process killed and restarted; at the end the read model
//! equals a fresh replay, every document's version equals its stream's length, and the stats
//! match the topic.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Read a query path after `offset` is applied.
/// Sign up and require 201.
fn signup_ok(addr: &str, username: &str, email: &str) -> Resp {
    let r = signup(addr, username, email);
    assert_eq!(r.status, 201, "{}", r.text);
    r
}

fn read_after(q: &str, path: &str, offset: &Value) -> Resp {
    let sep = if path.contains('?') { '&' } else { '?' };
    let r = get(q, &format!("{path}{sep}min_offset={offset}")).unwrap();
    assert_eq!(r.status, 200, "{path}: {}", r.text);
    r
}

#[test]
fn the_read_model_follows_commands_survives_kills_and_equals_a_replay() {
    let mut c = Cluster::start(3, users_tuning());
    let q = c.start_query("live");
    let addrs: Vec<String> = (1..=3).map(|i| c.addr(i)).collect();
    let n = |i: u64| addrs[i as usize - 1].clone();

    let ada = signup_ok(&n(1), "ada", "Ada@Example.com");
    let ada_id = ada.body["id"].as_str().unwrap().to_string();
    let doc = read_after(&q, &format!("/v1/users/{ada_id}"), &ada.body["offset"]).body;
    assert_eq!(
        (
            doc["email"].as_str(),
            doc["status"].as_str(),
            doc["version"].as_u64()
        ),
        (Some("Ada@Example.com"), Some("pending"), Some(1))
    );

    let bob = signup_ok(&n(2), "bob", "bob@example.com");
    let bob_id = bob.body["id"].as_str().unwrap().to_string();
    let changed = request(
        &n(3),
        "PATCH",
        &format!("/v1/users/{bob_id}"),
        Some(r#"{"email":"robert@example.com"}"#),
    );
    assert_eq!(changed.status, 200, "{}", changed.text);
    let found = read_after(
        &q,
        "/v1/users?email=ROBERT@example.com",
        &changed.body["offset"],
    )
    .body;
    assert_eq!(found["users"][0]["id"], bob_id.as_str());
    assert_eq!(
        read_after(
            &q,
            "/v1/users?email=bob@example.com",
            &changed.body["offset"]
        )
        .body["users"],
        json!([])
    );
    // Time travel: as of his sign-up, bob still had the old address.
    let then = read_after(
        &q,
        &format!("/v1/users/{bob_id}?as_of={}", bob.body["offset"]),
        &changed.body["offset"],
    )
    .body;
    assert_eq!(then["email"], "bob@example.com");
    let history = read_after(
        &q,
        &format!("/v1/users/{bob_id}/history"),
        &changed.body["offset"],
    )
    .body;
    let types: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["AccountCreated", "EmailChanged"]);
    assert!(
        !history.to_string().contains("argon2"),
        "no password hash in query answers"
    );

    let token = c.activation_token(&ada_id, "Ada@Example.com", now_s() + 600);
    let act = get(&n(2), &format!("/v1/users/activate?token={token}")).unwrap();
    assert_eq!(act.status, 200, "{}", act.text);
    assert_eq!(
        read_after(&q, &format!("/v1/users/{ada_id}"), &act.body["offset"]).body["status"],
        "active"
    );

    c.kill_query("live");
    let del = request(&n(1), "DELETE", &format!("/v1/users/{bob_id}"), None);
    assert_eq!(del.status, 200, "{}", del.text);
    let carl = signup_ok(&n(3), "carl", "robert@example.com");
    c.restart_query("live", false);
    let doc = read_after(&q, &format!("/v1/users/{bob_id}"), &carl.body["offset"]).body;
    assert_eq!(
        (doc["status"].as_str(), doc["version"].as_u64()),
        (Some("deleted"), Some(3))
    );
    assert_eq!(
        read_after(&q, "/v1/users?username=carl", &carl.body["offset"]).body["users"][0]["email"],
        "robert@example.com"
    );

    // More traffic, with the query process killed in the middle of it.
    let mut last = carl.body["offset"].clone();
    for i in 0..40 {
        if i == 20 {
            c.kill_query("live");
        }
        let r = signup(
            &n(i % 3 + 1),
            &format!("u{i}"),
            &format!("u{i}@example.com"),
        );
        last = r.body["offset"].clone();
        if i % 4 == 0 {
            let id = r.body["id"].as_str().unwrap();
            let r = request(
                &n(2),
                "PATCH",
                &format!("/v1/users/{id}"),
                Some(&json!({"email": format!("v{i}@example.com")}).to_string()),
            );
            assert_eq!(r.status, 200, "{}", r.text);
            last = r.body["offset"].clone();
        }
        if i == 30 {
            c.restart_query("live", false);
        }
    }
    read_after(&q, "/v1/stats/signups", &last);

    // A fresh replay into another read model, and the live one, agree on every document.
    let fresh = c.start_query("fresh");
    read_after(&fresh, "/v1/stats/signups", &last);
    c.wait_converged(&[1, 2, 3]);
    let events = c.read_topic(1, "users");
    let ids: BTreeSet<String> = events
        .iter()
        .map(|e| e["data"]["id"].as_str().unwrap().to_string())
        .collect();
    let mut stream_len: BTreeMap<&str, u64> = BTreeMap::new();
    for e in &events {
        *stream_len
            .entry(e["data"]["id"].as_str().unwrap())
            .or_default() += 1;
    }
    for id in &ids {
        let live = get(&q, &format!("/v1/users/{id}")).unwrap().body;
        let replay = get(&fresh, &format!("/v1/users/{id}")).unwrap().body;
        assert_eq!(live, replay, "user {id}");
        assert_eq!(
            live["version"].as_u64(),
            Some(stream_len[id.as_str()]),
            "nothing applied twice for {id}"
        );
    }
    let count = |t: &str| events.iter().filter(|e| e["type"] == t).count() as u64;
    let stats = get(&q, "/v1/stats/signups").unwrap().body;
    assert_eq!(stats, get(&fresh, "/v1/stats/signups").unwrap().body);
    assert_eq!(stats["created"], count("AccountCreated"));
    assert_eq!(stats["deleted"], count("AccountDeleted"));
    assert_eq!(stats["activated"], count("AccountActivated"));
    assert_eq!(
        stats["recreated"], 1,
        "carl signed up with bob's released address"
    );

    // The query process reports its position, and is caught up.
    let metrics = common::metrics::scrape(&q);
    assert_eq!(metrics.value("uniqlog_query_lag_events", &[]), 0.0);
    let health = get(&q, "/health").unwrap().body;
    assert_eq!(health["lag_events"], 0, "{health}");
    let cp = wait_for(
        "a checkpoint report",
        std::time::Duration::from_secs(10),
        || {
            let r = get(&n(1), "/v1/consumers/query/checkpoint").ok()?;
            (r.status == 200 && r.body["offset"].as_u64() == Some(events.len() as u64))
                .then_some(r.body)
        },
    );
    assert_eq!(cp["consumer"], "query");

    // --rebuild replays into the same place and gives the same model.
    c.kill_query("fresh");
    c.restart_query("fresh", true);
    read_after(&fresh, "/v1/stats/signups", &last);
    // Not a terminal: the replay's progress comes as plain lines, ending with its total.
    let head = c.read_topic(1, "users").len();
    let log_path = c.dir.path().join("query-fresh.log");
    wait_for("the rebuild's last line", Duration::from_secs(10), || {
        let log = std::fs::read_to_string(&log_path).ok()?;
        log.lines()
            .any(|l| {
                l.starts_with("rebuilding the read model: replayed ")
                    && l.contains(" events of users")
            })
            .then_some(())
    });
    let log = std::fs::read_to_string(&log_path).unwrap();
    let replayed: u64 = log
        .lines()
        .find_map(|l| l.strip_prefix("rebuilding the read model: replayed "))
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap();
    assert_eq!(replayed, head as u64);
    for id in ids.iter().step_by(7) {
        assert_eq!(
            get(&fresh, &format!("/v1/users/{id}")).unwrap().body,
            get(&q, &format!("/v1/users/{id}")).unwrap().body
        );
    }
    assert_eq!(get(&q, "/v1/users/nobody").unwrap().status, 404);
}

/// A node whose read limits are below what a consumer asks for by default (a page of 500, a
/// 2 s long-poll) refuses those reads with 400; the consumer asks for less until the node
/// answers, instead of retrying the same refused read for ever.
#[test]
fn the_read_model_follows_a_node_with_small_read_limits() {
    let mut c = Cluster::start(
        1,
        Tuning {
            limits: "read_events_max = 7\nwait_ms_max = 100\n",
            ..users_tuning()
        },
    );
    let a = c.addr(1);
    let mut last = Value::Null;
    for i in 0..20 {
        last = signup_ok(&a, &format!("u{i}"), &format!("u{i}@example.com")).body["offset"].clone();
    }
    let q = c.start_query("small");
    let stats = read_after(&q, "/v1/stats/signups", &last).body;
    assert_eq!(stats["created"], 20, "{stats}");
}
