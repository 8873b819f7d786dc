//! What an operator sees: `/metrics` of nodes and of the query consumer, read by the
//! reference OpenMetrics parser, moving under load; request ids that lead from the node a
//! client called to the leader that committed the write; logs as JSON.

mod common;

use std::time::Duration;

use common::metrics::{scrape, Metrics};
use common::*;

const APPEND_ROUTE: &str = "/v1/topics/{topic}/events";

fn tuning() -> Tuning {
    Tuning {
        // Small, so a snapshot is built and the log purged under the test's load.
        raft: "snapshot_every_entries = 40\nentries_kept_after_snapshot = 5\n",
        ..users_tuning()
    }
}

fn followers(leader: u64) -> Vec<u64> {
    (1..=3).filter(|id| *id != leader).collect()
}

/// Every series the issue names, present on a node of a running cluster.
fn assert_node_series(m: &Metrics, leader: bool) {
    for family in [
        "uniqlog_raft_term",
        "uniqlog_raft_leader",
        "uniqlog_raft_commit_index",
        "uniqlog_raft_applied_index",
        "uniqlog_raft_last_log_index",
        "uniqlog_raft_snapshot_index",
        "uniqlog_raft_purged_index",
        "uniqlog_idempotency_window_seconds",
        "uniqlog_idempotency_records_max",
        "uniqlog_idempotency_records",
    ] {
        assert_eq!(m.kind(family), "gauge", "{family}");
    }
    for family in [
        "uniqlog_http_requests",
        "uniqlog_snapshots_built",
        "uniqlog_snapshots_installed",
        "uniqlog_log_purges",
        "uniqlog_applied_entries",
    ] {
        assert_eq!(m.kind(family), "counter", "{family}");
    }
    for family in [
        "uniqlog_http_request_duration_seconds",
        "uniqlog_raft_log_commit_seconds",
        "uniqlog_raft_log_commit_entries",
        "uniqlog_apply_seconds",
        "uniqlog_append_batch_requests",
        "uniqlog_raft_write_seconds",
    ] {
        assert_eq!(m.kind(family), "histogram", "{family}");
    }
    let state = if leader { "leader" } else { "follower" };
    assert_eq!(m.value("uniqlog_raft_state", &[("state", state)]), 1.0);
    if leader {
        assert_eq!(m.kind("uniqlog_uniq_conflicts"), "counter");
    }
}

#[test]
fn node_metrics_parse_and_move_under_load() {
    let c = Cluster::start(3, tuning());
    let leader = c.wait_leader(&[1, 2, 3]);
    let fs = followers(leader);
    let via = c.addr(fs[0]);
    let before_leader = scrape(&c.addr(leader));
    let before_via = scrape(&via);
    assert_node_series(&before_leader, true);
    assert_node_series(&before_via, false);
    assert_eq!(
        before_leader.value("uniqlog_raft_leader", &[]),
        leader as f64
    );
    // The leader reports each follower's replication; a follower reports none.
    for f in &fs {
        let label = f.to_string();
        before_leader.value(
            "uniqlog_raft_replication_matched_index",
            &[("follower", &label)],
        );
    }
    assert_eq!(
        before_via
            .matching("uniqlog_raft_replication_matched_index", &[])
            .count(),
        0
    );
    let window = before_leader.value("uniqlog_idempotency_window_seconds", &[]);
    assert!(window > 0.0, "{window}");

    // Load: 60 appends and 10 sign-ups through a follower, then 5 sign-ups that collide.
    const APPENDS: usize = 60;
    for i in 0..APPENDS {
        append_ok(&via, "ops", &format!("u{i}"), None);
    }
    for i in 0..10 {
        assert_eq!(
            signup(&via, &format!("user{i}"), &format!("u{i}@example.com")).status,
            201
        );
    }
    for i in 0..5 {
        let r = signup(&via, &format!("other{i}"), &format!("U{i}@Example.com"));
        assert_eq!(r.status, 409, "{}", r.text);
    }
    // Unmatched paths are answered 404 and make no series of their own.
    assert_eq!(get(&via, "/no/such/path").unwrap().status, 404);
    c.wait_converged(&[1, 2, 3]);

    let after_via = scrape(&via);
    let posted = [
        ("method", "POST"),
        ("route", APPEND_ROUTE),
        ("status", "201"),
    ];
    let grew = |name: &str, labels: &[(&str, &str)], before: &Metrics, after: &Metrics| {
        after.value_or_zero(name, labels) - before.value_or_zero(name, labels)
    };
    assert_eq!(
        grew(
            "uniqlog_http_requests_total",
            &posted,
            &before_via,
            &after_via
        ),
        APPENDS as f64
    );
    assert_eq!(
        grew(
            "uniqlog_http_requests_total",
            &[("route", "/v1/users"), ("status", "409")],
            &before_via,
            &after_via
        ),
        5.0
    );
    assert!(
        grew(
            "uniqlog_http_request_duration_seconds_count",
            &[("method", "POST"), ("route", APPEND_ROUTE)],
            &before_via,
            &after_via
        ) >= APPENDS as f64
    );
    // The follower handed the leader's appends with entries to Raft, and timed them apart
    // from heartbeats.
    assert_eq!(
        after_via.kind("uniqlog_peer_rpc_handled_seconds"),
        "histogram"
    );
    assert!(
        grew(
            "uniqlog_peer_rpc_handled_seconds_count",
            &[("rpc", "append")],
            &before_via,
            &after_via
        ) >= 1.0
    );
    assert!(after_via
        .0
        .iter()
        .all(|s| s.labels.get("route").map(String::as_str) != Some("/no/such/path")));

    let after_leader = scrape(&c.addr(leader));
    let commit = |m: &Metrics| m.value("uniqlog_raft_commit_index", &[]);
    assert!(commit(&after_leader) >= commit(&before_leader) + (APPENDS + 15) as f64);
    assert_eq!(
        after_leader.value("uniqlog_raft_applied_index", &[]),
        commit(&after_leader)
    );
    // Forwarded writes are counted on the leader's peer route, and batched there.
    assert!(
        grew(
            "uniqlog_append_batch_requests_count",
            &[],
            &before_leader,
            &after_leader
        ) >= 1.0
    );
    // The stages of the write path (bench/breakdown.sh): every entry the leader proposed was
    // timed through Raft, and replicated with appends that carried entries, not heartbeats.
    assert_eq!(
        grew(
            "uniqlog_raft_write_seconds_count",
            &[],
            &before_leader,
            &after_leader
        ),
        grew(
            "uniqlog_append_batch_requests_count",
            &[],
            &before_leader,
            &after_leader
        )
    );
    assert_eq!(
        after_leader.kind("uniqlog_peer_rpc_sent_seconds"),
        "histogram"
    );
    assert!(
        grew(
            "uniqlog_peer_rpc_sent_seconds_count",
            &[("rpc", "append")],
            &before_leader,
            &after_leader
        ) >= 1.0
    );
    assert!(
        grew(
            "uniqlog_append_batch_requests_sum",
            &[],
            &before_leader,
            &after_leader
        ) >= (APPENDS + 15) as f64
    );
    // Counted by the node that answered the 409s (as listed in /v1/conflicts/recent).
    assert_eq!(
        grew(
            "uniqlog_uniq_conflicts_total",
            &[("set", "user_email")],
            &before_via,
            &after_via
        ),
        5.0
    );
    assert!(
        grew(
            "uniqlog_raft_log_commit_seconds_count",
            &[],
            &before_leader,
            &after_leader
        ) >= 1.0
    );
    assert!(
        grew(
            "uniqlog_applied_entries_total",
            &[],
            &before_leader,
            &after_leader
        ) >= (APPENDS + 15) as f64
    );
    // 75 writes and more past a 40-entry snapshot policy: a snapshot was built and the log
    // purged behind it, on every node (each builds its own).
    for id in 1..=3 {
        let m = wait_for(
            "a snapshot and a purge counted",
            Duration::from_secs(20),
            || {
                let m = scrape(&c.addr(id));
                (m.value("uniqlog_snapshots_built_total", &[]) >= 1.0
                    && m.value("uniqlog_log_purges_total", &[]) >= 1.0)
                    .then_some(m)
            },
        );
        let snapshot = m.value("uniqlog_raft_snapshot_index", &[]);
        let purged = m.value("uniqlog_raft_purged_index", &[]);
        let applied = m.value("uniqlog_raft_applied_index", &[]);
        // Indexes start at 0: the 40th entry is index 39.
        assert!(
            snapshot >= 39.0 && snapshot <= applied,
            "snapshot index {snapshot}, applied {applied}"
        );
        assert!(
            purged >= 1.0 && purged <= snapshot,
            "purged {purged}, snapshot {snapshot}"
        );
    }
    // Replication lag falls back to 0 once the followers have everything.
    wait_for("no replication lag", Duration::from_secs(20), || {
        let m = scrape(&c.addr(leader));
        fs.iter()
            .all(|f| {
                m.value(
                    "uniqlog_raft_replication_lag",
                    &[("follower", &f.to_string())],
                ) == 0.0
            })
            .then_some(())
    });
}

/// A follower that is down shows a lag that grows with the writes it misses.
#[test]
fn replication_lag_of_a_stopped_follower_grows_with_writes() {
    let mut c = Cluster::start(3, Tuning::default());
    let leader = c.wait_leader(&[1, 2, 3]);
    let down = followers(leader)[1];
    c.kill(down);
    let lag = |c: &Cluster| {
        scrape(&c.addr(leader)).value(
            "uniqlog_raft_replication_lag",
            &[("follower", &down.to_string())],
        )
    };
    let before = lag(&c);
    for i in 0..20 {
        append_ok(&c.addr(leader), "lag", &format!("l{i}"), None);
    }
    assert!(lag(&c) >= before + 20.0, "{before} -> {}", lag(&c));
    c.restart(down);
    wait_for("the follower caught up", Duration::from_secs(20), || {
        (lag(&c) == 0.0).then_some(())
    });
}

#[test]
fn query_consumer_metrics_parse_and_follow_its_lag() {
    let mut c = Cluster::start(3, users_tuning());
    let q = c.start_query("q");
    let before = scrape(&q);
    for family in [
        "uniqlog_query_checkpoint",
        "uniqlog_query_head",
        "uniqlog_query_lag_events",
        "uniqlog_query_lag_seconds",
    ] {
        assert_eq!(before.kind(family), "gauge", "{family}");
    }
    for i in 0..8 {
        assert_eq!(
            signup(&c.addr(1), &format!("q{i}"), &format!("q{i}@example.com")).status,
            201
        );
    }
    let after = wait_for("the read model caught up", Duration::from_secs(20), || {
        let m = scrape(&q);
        (m.value("uniqlog_query_checkpoint", &[]) >= 8.0
            && m.value("uniqlog_query_lag_events", &[]) == 0.0)
            .then_some(m)
    });
    assert!(after.value("uniqlog_query_head", &[]) >= 8.0);
    // Its own API is counted by route, like a node's.
    assert_eq!(
        get(&q, "/v1/users?email=q1@example.com").unwrap().status,
        200
    );
    let m = scrape(&q);
    assert!(
        m.value(
            "uniqlog_query_http_requests_total",
            &[("route", "/v1/users"), ("status", "200")]
        ) >= 1.0
    );
    assert_eq!(
        m.kind("uniqlog_query_http_request_duration_seconds"),
        "histogram"
    );
}

/// The id a client sends (or the one it is given) is in the log of the node it called and in
/// the leader's, with the log index of the entry, and comes back in the answer.
#[test]
fn a_request_id_is_in_the_logs_of_the_receiving_node_and_the_leader() {
    let c = Cluster::start(3, Tuning::default());
    let leader = c.wait_leader(&[1, 2, 3]);
    let via = followers(leader)[0];
    let id = "op-test-7f3a";
    let r = post_with_headers(
        &c.addr(via),
        "/v1/topics/traced/events",
        &event_body("t1", None),
        &[("x-request-id", id)],
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.request_id.as_deref(), Some(id));
    let index_in = |node: u64, what: &str| {
        wait_for(
            &format!("node {node} to log {what} of {id}"),
            Duration::from_secs(10),
            || {
                c.log(node)
                    .lines()
                    .find(|l| l.contains(id) && l.contains(what))
                    .and_then(|l| l.split("log_index=").nth(1))
                    .and_then(|s| s.split(|ch: char| !ch.is_ascii_digit()).next())
                    .and_then(|n| n.parse::<u64>().ok())
            },
        )
    };
    let at_leader = index_in(leader, "committed");
    let at_via = index_in(via, "committed by the leader");
    assert_eq!(at_leader, at_via);
    let commit = c.status(leader).unwrap()["commit_index"].as_u64().unwrap();
    assert!(at_leader >= 1 && at_leader <= commit);
    // The third node never saw the request.
    let other = (1..=3).find(|n| *n != leader && *n != via).unwrap();
    assert!(!c.log(other).contains(id));

    // Without one, or with one that cannot be logged as is, the node makes one up.
    for sent in [None, Some("has space"), Some(&*"x".repeat(65))] {
        let headers: Vec<(&str, &str)> = sent.map(|s| ("x-request-id", s)).into_iter().collect();
        let r = post_with_headers(
            &c.addr(via),
            "/v1/topics/traced/events",
            &event_body("t2", None),
            &headers,
        );
        assert_eq!(r.status, 201, "{}", r.text);
        let given = r.request_id.expect("an id in the answer");
        assert_eq!(given.len(), 16, "{given}");
        assert!(given.bytes().all(|b| b.is_ascii_hexdigit()), "{given}");
        wait_for(
            "the made-up id in the leader's log",
            Duration::from_secs(10),
            || c.log(leader).contains(&given).then_some(()),
        );
    }
}

/// `--log-format json`: every line is a JSON object, and a request's lines carry its id.
#[test]
fn json_logs_carry_the_request_id_as_a_field() {
    let mut c = Cluster::prepare(1, Tuning::default(), None, None);
    c.node_flags = vec!["--log-format".into(), "json".into()];
    c.boot();
    let id = "json-log-1";
    let r = post_with_headers(
        &c.addr(1),
        "/v1/topics/j/events",
        &event_body("j1", None),
        &[("x-request-id", id)],
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let line = wait_for("the request's line", Duration::from_secs(10), || {
        let log = c.log(1);
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        lines.into_iter().find(|l| {
            l["fields"]["message"] == "committed"
                && l["spans"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["name"] == "request" && s["id"] == id))
        })
    });
    assert!(line["fields"]["log_index"].as_u64().unwrap() >= 1, "{line}");
    let request = &line["spans"][0];
    assert_eq!(request["path"], "/v1/topics/j/events", "{line}");
    assert_eq!(request["method"], "POST", "{line}");
}

/// `GET /v1/conflicts/recent`: the 409s this node answered, newest first, with what they
/// were about; nothing else.
#[test]
fn recent_conflicts_list_the_409s_this_node_answered() {
    let c = Cluster::start(1, users_tuning());
    let a = c.addr(1);
    assert_eq!(signup(&a, "ann", "ann@example.com").status, 201);
    assert_eq!(signup(&a, "bob", "bob@example.com").status, 201);
    for (name, email) in [("ann2", "ANN@example.com"), ("bob2", "Bob@Example.com")] {
        assert_eq!(signup(&a, name, email).status, 409);
    }
    // A 404 and a 400 are not conflicts.
    assert_eq!(
        get(&a, "/v1/uniq/user_email/nobody@example.com")
            .unwrap()
            .status,
        404
    );
    assert_eq!(post(&a, "/v1/users", "{}").unwrap().status, 400);
    let r = get(&a, "/v1/conflicts/recent").unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let list = r.body["conflicts"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{}", r.text);
    for e in list {
        assert_eq!(e["error"], "email_taken", "{e}");
        assert_eq!(e["route"], "/v1/users", "{e}");
    }
    assert!(list[0]["at_ms"].as_u64() >= list[1]["at_ms"].as_u64());
}
