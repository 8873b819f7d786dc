//! How elections start (`node/src/prevote.rs`), on real processes: a leader killed with
//! SIGKILL is replaced after a PreVote and writes go on; a node left without a quorum asks
//! round after round and never raises its term; a PreVote question changes nothing.

mod common;

use std::time::{Duration, Instant};

use common::metrics::scrape;
use common::*;
use openraft::{CommittedLeaderId, LogId};
use uniqlog_node::prevote::{PreVoteRequest, PreVoteResponse, PREVOTE_PATH};

/// `election_timeout_ms_max` of the harness's config (`common::write_config`).
const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(1200);

fn counter(addr: &str, name: &str) -> f64 {
    scrape(addr).value_or_zero(name, &[])
}

/// Ask node `addr` a PreVote question as a peer does.
fn ask(addr: &str, req: &PreVoteRequest) -> Resp {
    let version = uniqlog_node::peer_protocol::VERSION.to_string();
    post_rpc(
        addr,
        PREVOTE_PATH,
        &raft_store::codec::encode(req),
        &[("x-uniqlog-peer-protocol", version.as_str())],
    )
}

fn granted(r: &Resp) -> bool {
    assert_eq!(r.status, 200, "{}", r.text);
    let answer: PreVoteResponse = raft_store::codec::decode(&r.bytes).unwrap();
    answer.granted
}

/// The id of entry `index` written by leader `leader` in `term` (openraft 0.9 orders log ids
/// by term, then leader, then index).
fn log_id(term: u64, leader: u64, index: u64) -> Option<LogId<u64>> {
    Some(LogId::new(CommittedLeaderId::new(term, leader), index))
}

#[test]
fn a_killed_leader_is_replaced_after_a_prevote_and_writes_go_on() {
    let mut c = Cluster::start(3, Tuning::default());
    let old = c.wait_leader(&[1, 2, 3]);
    let old_term = c.cluster_status(old).unwrap().term;
    append_ok(&c.addr(old), "e", "before", None);

    c.kill(old);
    let killed = Instant::now();
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    // The lease (one election timeout), a round or two, an election: well within ten.
    let new = wait_for(
        "a new leader agreed by both survivors",
        ELECTION_TIMEOUT_MAX * 10,
        || {
            let seen: Vec<_> = survivors
                .iter()
                .filter_map(|id| c.cluster_status(*id))
                .collect();
            api::cluster::agreed_leader(&seen, 2)
        },
    );
    let took = killed.elapsed();
    assert_ne!(new, old);
    let new_term = c.cluster_status(new).unwrap().term;
    assert!(new_term > old_term, "term {old_term} -> {new_term}");
    for id in &survivors {
        append_ok(&c.addr(*id), "e", &format!("after-{id}"), None);
    }
    assert!(counter(&c.addr(new), "uniqlog_prevote_rounds_granted_total") >= 1.0);
    assert!(counter(&c.addr(new), "uniqlog_elections_started_total") >= 1.0);

    // The old leader comes back, hears the new one and starts no election: the term stays.
    c.restart(old);
    wait_for(
        "the old leader following the new one",
        Duration::from_secs(30),
        || {
            let s = c.cluster_status(old)?;
            (s.leader == Some(new) && s.term == new_term).then_some(())
        },
    );
    append_ok(&c.addr(old), "e", "rejoined", None);
    assert_eq!(c.wait_leader(&[1, 2, 3]), new);
    assert_eq!(c.cluster_status(new).unwrap().term, new_term);
    assert_eq!(
        counter(&c.addr(old), "uniqlog_elections_started_total"),
        0.0
    );
    c.wait_converged(&[1, 2, 3]);
    let uids: Vec<String> = c
        .read_topic(old, "e")
        .iter()
        .map(|e| e["data"]["uid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(uids.len(), 4, "{uids:?}");
    eprintln!("leader {old} killed; {new} elected in term {new_term} after {took:?}");
}

/// Without PreVote a node left alone stands for election every timeout, one term higher
/// each time, and the term it reaches unseats the leader when the others come back.
#[test]
fn a_node_without_a_quorum_asks_round_after_round_and_never_raises_its_term() {
    let mut c = Cluster::start(3, Tuning::default());
    let leader = c.wait_leader(&[1, 2, 3]);
    append_ok(&c.addr(leader), "e", "before", None);
    let lone = (1..=3).find(|id| *id != leader).unwrap();
    c.wait_converged(&[1, 2, 3]);
    let before = c.cluster_status(lone).unwrap();
    for id in (1..=3).filter(|id| *id != lone) {
        c.kill(id);
    }

    let addr = c.addr(lone);
    wait_for(
        "five PreVote rounds on the node left alone",
        ELECTION_TIMEOUT_MAX * 20,
        || (counter(&addr, "uniqlog_prevote_rounds_total") >= 5.0).then_some(()),
    );
    let after = c.cluster_status(lone).unwrap();
    assert_eq!(after.term, before.term, "the term did not move");
    assert_eq!(counter(&addr, "uniqlog_prevote_rounds_granted_total"), 0.0);
    assert_eq!(counter(&addr, "uniqlog_elections_started_total"), 0.0);

    // It hears no leader now: it would vote for a log at least as up to date as its own, not
    // for an older one, and answering changes nothing.
    let last = before.last_log_index;
    let ask_with = |last_log| PreVoteRequest {
        term: before.term + 1,
        candidate: leader,
        last_log,
    };
    assert!(granted(&ask(
        &addr,
        &ask_with(log_id(before.term, leader, last))
    )));
    assert!(granted(&ask(
        &addr,
        &ask_with(log_id(before.term + 5, 1, 1))
    )));
    assert!(!granted(&ask(
        &addr,
        &ask_with(log_id(before.term, leader, last - 1))
    )));
    assert!(!granted(&ask(&addr, &ask_with(None))));
    assert_eq!(c.cluster_status(lone).unwrap().term, before.term);

    // The others come back; a leader is elected and writes go on.
    for id in (1..=3).filter(|id| *id != lone) {
        c.restart(id);
    }
    let again = c.wait_leader(&[1, 2, 3]);
    append_ok(&c.addr(again), "e", "after", None);
}

#[test]
fn a_prevote_question_is_refused_while_a_leader_is_heard_and_changes_nothing() {
    let c = Cluster::start(3, Tuning::default());
    let leader = c.wait_leader(&[1, 2, 3]);
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let before = c.cluster_status(leader).unwrap();
    // The freshest log there could be, asking for the next term: still no.
    let req = PreVoteRequest {
        term: before.term + 1,
        candidate: 3,
        last_log: log_id(u64::MAX, 3, u64::MAX),
    };
    for id in [follower, leader] {
        assert!(!granted(&ask(&c.addr(id), &req)), "node {id} granted");
    }
    let refused =
        scrape(&c.addr(follower)).value("uniqlog_prevote_answers_total", &[("answer", "refused")]);
    assert!(refused >= 1.0);
    // Not a PreVote: refused before any state is read.
    let version = uniqlog_node::peer_protocol::VERSION.to_string();
    let r = post_rpc(
        &c.addr(follower),
        PREVOTE_PATH,
        b"junk",
        &[("x-uniqlog-peer-protocol", version.as_str())],
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(c.wait_leader(&[1, 2, 3]), leader);
    assert_eq!(c.cluster_status(leader).unwrap().term, before.term);
    append_ok(&c.addr(follower), "e", "after", None);
}
