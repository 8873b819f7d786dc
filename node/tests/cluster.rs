//! Three (and four) real `uniqlog node` processes: failover under load, catch-up by
//! snapshot, a learner joining and being promoted.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The uids of a topic as one node serves it, in offset order.
fn uids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["data"]["uid"].as_str().unwrap().to_string())
        .collect()
}

fn assert_identical_everywhere(c: &Cluster, ids: &[u64], topic: &str) -> Vec<Value> {
    c.wait_converged(ids);
    let first = c.read_topic(ids[0], topic);
    for id in &ids[1..] {
        let other = c.read_topic(*id, topic);
        assert!(
            first == other,
            "node {id} serves a different {topic} than node {}",
            ids[0]
        );
    }
    for (i, e) in first.iter().enumerate() {
        assert_eq!(e["offset"].as_u64(), Some(i as u64), "offsets are gap-free");
    }
    // Not only the topic: every replicated table, whether a node applied the entries or
    // installed a snapshot of them.
    let hash = |id: u64| {
        let r = get(&c.addr(id), "/v1/cluster/state-hash").unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
        r.body
    };
    let reference = hash(ids[0]);
    assert!(reference["tables"]["events"]["rows"].as_u64() >= Some(first.len() as u64));
    for id in &ids[1..] {
        assert_eq!(
            hash(*id),
            reference,
            "node {id}'s replicated state differs from node {}'s",
            ids[0]
        );
    }
    first
}

#[test]
fn acknowledged_appends_survive_leader_kill_and_all_nodes_agree() {
    let mut c = Cluster::start(3, Tuning::default());
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let attempted = Arc::new(Mutex::new(0u64));
    let stop = Arc::new(AtomicBool::new(false));
    // One writer per node: writes reaching followers are forwarded to the leader.
    let writers: Vec<_> = (1..=3u64)
        .map(|id| {
            let addr = c.addr(id);
            let (acked, attempted, stop) = (acked.clone(), attempted.clone(), stop.clone());
            thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let uid = format!("w{id}-{i}");
                    i += 1;
                    *attempted.lock().unwrap() += 1;
                    match post(&addr, "/v1/topics/load/events", &event_body(&uid, None)) {
                        Ok(r) if r.status == 201 => acked.lock().unwrap().push(uid),
                        Ok(r) => assert!(
                            r.status == 503,
                            "only 503 is acceptable during failover, got {}: {}",
                            r.status,
                            r.text
                        ),
                        // The killed node refuses connections: nothing was sent.
                        Err(_) => thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        })
        .collect();

    let enough = |n: usize| {
        let acked = acked.clone();
        move || (acked.lock().unwrap().len() >= n).then_some(())
    };
    wait_for(
        "100 acknowledged appends",
        Duration::from_secs(60),
        enough(100),
    );
    let old_leader = c.wait_leader(&[1, 2, 3]);
    c.kill(old_leader);
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != old_leader).collect();
    let new_leader = c.wait_leader(&survivors);
    assert_ne!(new_leader, old_leader);
    let after_kill = acked.lock().unwrap().len();
    wait_for(
        "appends acknowledged by the new leader",
        Duration::from_secs(60),
        enough(after_kill + 100),
    );
    c.restart(old_leader);
    wait_for(
        "more appends after the restart",
        Duration::from_secs(60),
        enough(after_kill + 200),
    );
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }

    let events = assert_identical_everywhere(&c, &[1, 2, 3], "load");
    let served = uids(&events);
    let unique: BTreeSet<&String> = served.iter().collect();
    assert_eq!(unique.len(), served.len(), "no append is applied twice");
    let acked = acked.lock().unwrap();
    for uid in acked.iter() {
        assert!(unique.contains(uid), "acknowledged append {uid} was lost");
    }
    eprintln!(
        "attempted {}, acknowledged {}, served {}, old leader {old_leader}, new leader {new_leader}",
        attempted.lock().unwrap(),
        acked.len(),
        served.len()
    );
}

#[test]
fn a_restarted_node_behind_the_purged_log_catches_up_by_snapshot() {
    let tuning = Tuning {
        raft: "snapshot_every_entries = 20\nentries_kept_after_snapshot = 0\n",
        limits: "",
        ..Tuning::default()
    };
    let mut c = Cluster::start(3, tuning);
    let leader = c.wait_leader(&[1, 2, 3]);
    let lagging = (1..=3).find(|id| *id != leader).unwrap();
    for i in 0..10 {
        append_ok(&c.addr(leader), "t", &format!("a{i}"), None);
    }
    c.wait_converged(&[1, 2, 3]);
    let lagging_last = c.status(lagging).unwrap()["last_log_index"]
        .as_u64()
        .unwrap();
    c.kill(lagging);
    for i in 0..100 {
        append_ok(&c.addr(leader), "t", &format!("b{i}"), None);
    }
    // The precondition that forces a snapshot: the leader no longer has the entries after
    // the lagging node's last one.
    let purged = wait_for("the leader purges its log", Duration::from_secs(30), || {
        let p = c.status(leader)?["purged_index"].as_u64()?;
        (p > lagging_last + 1).then_some(p)
    });
    c.restart(lagging);
    let events = assert_identical_everywhere(&c, &[1, 2, 3], "t");
    assert_eq!(events.len(), 110);
    let st = c.status(lagging).unwrap();
    assert!(
        st["snapshot_index"].as_u64().is_some_and(|s| s >= purged),
        "the lagging node installed a snapshot covering the purged log: {st}"
    );
}

#[test]
fn a_learner_catches_up_is_promoted_and_votes() {
    let mut c = Cluster::start(3, Tuning::default());
    let leader = c.wait_leader(&[1, 2, 3]);
    for i in 0..30 {
        append_ok(&c.addr(leader), "m", &format!("m{i}"), None);
    }
    let id = c.add_process(&Tuning::default());
    let config = c.node(id).config.clone();
    let out = c.cli(
        &config,
        &["cluster", "add-learner", "--id", &id.to_string()],
    );
    assert!(
        out.status.success(),
        "add-learner: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_converged(&[1, 2, 3, id]);
    assert_eq!(
        uids(&c.read_topic(id, "m")).len(),
        30,
        "the learner caught up"
    );
    let members = |c: &Cluster| c.members(leader);
    assert_eq!(
        members(&c).get(&id),
        Some(&false),
        "a learner does not vote"
    );
    let out = c.cli(&config, &["cluster", "promote", "--id", &id.to_string()]);
    assert!(
        out.status.success(),
        "promote: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("node 4 is a voter", Duration::from_secs(30), || {
        (members(&c).get(&id) == Some(&true)).then_some(())
    });
    // Writes keep working with four voters, and reach the new node.
    append_ok(&c.addr(id), "m", "after", None);
    assert_identical_everywhere(&c, &[1, 2, 3, id], "m");
    let out = c.cli(&config, &["cluster", "status", "--json"]);
    assert!(out.status.success());
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows.iter().filter(|r| r["role"] == "leader").count(), 1);
}

#[test]
fn a_node_with_the_wrong_cluster_secret_is_refused_and_the_cluster_keeps_working() {
    let right = Tuning {
        extra: "[auth]\ncluster_secret = \"the right secret\"\n",
        ..Tuning::default()
    };
    let mut c = Cluster::start(3, right);
    let leader = c.wait_leader(&[1, 2, 3]);
    let wrong = Tuning {
        extra: "[auth]\ncluster_secret = \"a wrong secret\"\n",
        ..Tuning::default()
    };
    let id = c.add_process(&wrong);
    let body = serde_json::json!({"id": id, "addr": c.addr(id)}).to_string();
    let r = post(&c.addr(leader), "/v1/cluster/learners", &body).unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    for i in 0..20 {
        append_ok(&c.addr(leader), "s", &format!("s{i}"), None);
    }
    c.wait_converged(&[1, 2, 3]);
    // The intruder refuses the leader's appends (and would refuse anything else), and says why.
    let log = c.dir.path().join(format!("node{id}.log"));
    wait_for(
        "the refusal in the node's log",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&log)
                .ok()?
                .contains("without the right cluster secret")
                .then_some(())
        },
    );
    let st = c.status(id).unwrap();
    assert_eq!(st["applied_index"], 0, "nothing replicated to it: {st}");
    // A peer request without the secret is refused outright.
    let r = post(&c.addr(leader), "/raft/vote", "{}").unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (401, Some("unauthorized")),
        "{}",
        r.text
    );
    append_ok(&c.addr(1), "s", "after", None);
    assert_eq!(c.read_topic(leader, "s").len(), 21);
    // Followers reach the leader with the secret: forwarded writes and read-index requests.
    for f in [1, 2, 3].into_iter().filter(|&n| n != leader) {
        append_ok(&c.addr(f), "fwd", &format!("via{f}"), None);
        let r = get(
            &c.addr(f),
            "/v1/topics/fwd/events?from=0&consistency=linearizable",
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.text.contains(&format!("via{f}")), "{}", r.text);
    }
}

#[test]
fn a_peer_of_another_protocol_version_is_refused_and_the_cluster_keeps_working() {
    let c = Cluster::start(3, Tuning::default());
    let leader = c.wait_leader(&[1, 2, 3]);
    // A stale vote request: harmless when it does reach Raft.
    let vote = raft_store::codec::encode(&openraft::raft::VoteRequest::<u64>::new(
        openraft::Vote::new(0, 2),
        None,
    ));
    let header = "x-uniqlog-peer-protocol";
    let ours = uniqlog_node::peer_protocol::VERSION.to_string();
    for (sent, named) in [
        (Some("3"), "the request peer protocol 3"),
        (Some("x"), "the request peer protocol x"),
        (None, "the request names none"),
    ] {
        let headers: Vec<(&str, &str)> = sent.iter().map(|v| (header, *v)).collect();
        let r = post_rpc(&c.addr(leader), "/raft/vote", &vote, &headers);
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(r.body["error"], "peer_protocol_mismatch");
        let message = r.body["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("this node speaks peer protocol {ours}")),
            "{message}"
        );
        assert!(message.contains(named), "{message}");
    }
    assert!(c
        .log(leader)
        .contains("refused a peer speaking another protocol version"));
    // This build's version passes the check and reaches Raft, which answers the stale vote.
    let r = post_rpc(
        &c.addr(leader),
        "/raft/vote",
        &vote,
        &[(header, ours.as_str())],
    );
    assert_eq!(r.status, 200, "{}", r.text);
    // An error would be openraft's as JSON text (since protocol 4).
    let answer: Result<openraft::raft::VoteResponse<u64>, String> =
        raft_store::codec::decode(&r.bytes).unwrap();
    assert!(!answer.unwrap().vote_granted, "a stale vote is not granted");
    // A JSON body, as builds before protocol 3 sent, is refused before it reaches Raft.
    let json =
        r#"{"vote":{"leader_id":{"term":0,"node_id":2},"committed":false},"last_log_id":null}"#;
    let r = post_with_headers(
        &c.addr(leader),
        "/raft/vote",
        json,
        &[(header, ours.as_str())],
    );
    assert_eq!(r.status, 400, "{}", r.text);
    // The cluster never noticed.
    assert_eq!(c.wait_leader(&[1, 2, 3]), leader);
    append_ok(&c.addr(leader), "p", "after", None);
}

/// Appends travel on a link: `GET /raft/append` upgraded to a stream of length-prefixed
/// frames. The upgrade passes the peer routes' checks like any peer request; a link answers
/// each append with a frame, and is closed by the node on a frame that is not an append.
#[test]
fn an_append_link_answers_frame_by_frame_and_closes_on_a_frame_that_is_not_one() {
    use std::io::{Read, Write};
    let c = Cluster::start(3, Tuning::default());
    let leader = c.wait_leader(&[1, 2, 3]);
    let follower = [1, 2, 3].into_iter().find(|&n| n != leader).unwrap();
    let addr = c.addr(follower);
    let header = "x-uniqlog-peer-protocol";
    let ours = uniqlog_node::peer_protocol::VERSION.to_string();
    // Without the upgrade: a 400 that names it.
    let r = get_with_headers(&addr, "/raft/append", &[(header, ours.as_str())]);
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("Upgrade: uniqlog-link"), "{}", r.text);
    // Without this build's protocol: refused as any peer request is.
    let r = get_with_headers(&addr, "/raft/append", &[]);
    assert_eq!(r.body["error"], "peer_protocol_mismatch", "{}", r.text);

    // The upgrade, by hand.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /raft/append HTTP/1.1\r\nhost: {addr}\r\nconnection: upgrade\r\n\
         upgrade: uniqlog-link\r\n{header}: {ours}\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let frame = |body: &[u8]| [&(body.len() as u32).to_le_bytes()[..], body].concat();
    // A stale append (term 0, from a node that does not exist): answered, not taken.
    let stale = openraft::raft::AppendEntriesRequest::<raft_store::TypeConfig> {
        vote: openraft::Vote::new(0, 9),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    };
    for _ in 0..2 {
        s.write_all(&frame(&raft_store::codec::encode(&stale)))
            .unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut answer = vec![0u8; u32::from_le_bytes(len) as usize];
        s.read_exact(&mut answer).unwrap();
        let answer: Result<openraft::raft::AppendEntriesResponse<u64>, String> =
            raft_store::codec::decode(&answer).unwrap();
        assert!(
            matches!(
                answer,
                Ok(openraft::raft::AppendEntriesResponse::HigherVote(_))
            ),
            "{answer:?}"
        );
    }
    // Not an append: the node closes the link.
    s.write_all(&frame(b"not an append")).unwrap();
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0, "{rest:?}");
    // The cluster never noticed.
    assert_eq!(c.wait_leader(&[1, 2, 3]), leader);
    append_ok(&c.addr(leader), "p", "after", None);
    c.wait_converged(&[1, 2, 3]);
}

/// A forwarded request runs on the leader only in the term in which its sender saw that node
/// lead: one from an earlier term is refused as not applied (a copy of it arriving late must
/// not run once the node leads again), one from a term the node has not reached waits for it
/// and then answers that its outcome is unknown.
#[test]
fn a_forwarded_request_runs_only_in_the_term_its_sender_saw() {
    let c = Cluster::start(3, Tuning::default());
    let leader = c.wait_leader(&[1, 2, 3]);
    let header = "x-uniqlog-peer-protocol";
    let ours = uniqlog_node::peer_protocol::VERSION.to_string();
    let forward = |op: uniqlog_node::app::LeaderOp, term: u64| {
        let body = raft_store::codec::encode(&uniqlog_node::app::Forwarded {
            op,
            timeout_ms: 300,
            term,
        });
        post_rpc(
            &c.addr(leader),
            "/internal/v1/leader",
            &body,
            &[(header, ours.as_str())],
        )
    };
    let write = uniqlog_node::app::LeaderOp::Write {
        request: raft_store::Request::Append(raft_store::AppendRequest {
            topic: "late".into(),
            events: vec![raft_store::NewEvent {
                event_type: "E".into(),
                stream: None,
                data: "{}".into(),
                metadata: None,
                claims: vec![],
                secret: None,
            }],
            expected_version: Default::default(),
            idempotency: None,
            rules_version: 0,
            reply: None,
        }),
    };
    // The cluster has elected at least once: term 0 is behind the leader's.
    let r = forward(write, 0);
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.body["error"], "unavailable", "{}", r.text);
    assert!(r.text.contains("no longer the leader"), "{}", r.text);
    let r = forward(uniqlog_node::app::LeaderOp::ReadIndex, u64::MAX);
    assert_eq!(r.body["error"], "outcome_unknown", "{}", r.text);
    // Nothing was appended, and writes through any node go on.
    for n in [1, 2, 3] {
        assert!(c.read_topic(n, "late").is_empty());
    }
    append_ok(&c.addr(1), "late", "after", None);
    assert_eq!(c.read_topic(leader, "late").len(), 1);
}
