//! Self-bootstrap between real processes (`[raft] bootstrap = "auto"`, the default): nodes
//! started with one `[[node]]` list form the cluster with no `cluster init`; a node removed,
//! wiped and started again never initializes a second cluster; nodes whose lists differ do
//! not bootstrap at all.

mod common;

use std::time::Duration;

use common::*;

/// Three nodes started together elect a leader and put the config's rules in force on their
/// own; `cluster init` afterwards finds the cluster formed. A node removed, wiped and started
/// again with the same config asks its peers, finds them holding a log, and initializes
/// nothing until it is added back.
#[test]
fn nodes_form_the_cluster_themselves_and_a_wiped_node_does_not_form_another() {
    let mut c = Cluster::prepare(3, users_tuning(), None, None);
    for id in 1..=3 {
        c.spawn(id);
    }
    let leader = c.wait_leader(&[1, 2, 3]);
    wait_for("the first rules entry", Duration::from_secs(30), || {
        (c.cluster_status(leader)?.rules_version == 1).then_some(())
    });
    for id in 1..=3 {
        let voters: Vec<u64> = c
            .members(id)
            .into_iter()
            .filter(|(_, voter)| *voter)
            .map(|(id, _)| id)
            .collect();
        assert_eq!(voters, vec![1, 2, 3], "node {id}'s voters");
    }
    let booted = (1..=3)
        .filter(|id| c.log(*id).contains("bootstrapped the cluster"))
        .count();
    assert!(booted >= 1, "no node says it bootstrapped");

    // The rules are in force: a second account with one email is refused.
    let signup = |name: &str| {
        post(
            &c.addr(leader),
            "/v1/users",
            &format!(
                r#"{{"username":"{name}","email":"boot@example.com","password":"correct horse"}}"#
            ),
        )
        .unwrap()
    };
    assert_eq!(signup("first").status, 201);
    assert_eq!(signup("second").status, 409);
    let out = c.cli_ok(&["cluster", "init"]);
    assert!(out.contains("already initialized"), "{out}");

    // A node removed, its disk wiped, started again with the same config (which still lists
    // it): its peers hold a log, so it initializes nothing and waits to be added.
    let gone = if leader == 3 { 2 } else { 3 };
    c.cli_ok(&["cluster", "remove", "--id", &gone.to_string()]);
    assert_eq!(c.wait_exit(gone, Duration::from_secs(60)).code(), Some(3));
    std::fs::remove_dir_all(c.dir.path().join(format!("node{gone}"))).unwrap();
    for i in 0..20 {
        let r = post(
            &c.addr(leader),
            "/v1/topics/after/events",
            &format!(r#"{{"events":[{{"type":"T","data":{{"i":{i}}}}}]}}"#),
        )
        .unwrap();
        assert_eq!(r.status, 201, "{}", r.text);
    }
    c.restart(gone);
    // Its new life (the log after its last "opened the Raft log").
    let life = || {
        let log = c.log(gone);
        log.rsplit("opened the Raft log")
            .next()
            .unwrap()
            .to_string()
    };
    wait_for("the wiped node to decide", Duration::from_secs(30), || {
        life().contains("not bootstrapping").then_some(())
    });
    assert!(!life().contains("bootstrapped the cluster"), "{}", life());
    let status = c.cluster_status(gone).unwrap();
    assert_eq!((status.last_log_index, status.members.len()), (0, 0));
    let stay: Vec<u64> = (1..=3).filter(|id| *id != gone).collect();
    assert_eq!(c.members(leader).keys().copied().collect::<Vec<_>>(), stay);

    // Added back as an operator does, it catches up on everything.
    c.cli_ok(&["cluster", "add-learner", "--id", &gone.to_string()]);
    c.cli_ok(&["cluster", "promote", "--id", &gone.to_string()]);
    c.wait_converged(&[1, 2, 3]);
    assert_eq!(c.read_topic(gone, "after").len(), 20);
    assert_eq!(
        c.read_topic(gone, "users").len(),
        c.read_topic(leader, "users").len()
    );
    assert_eq!(c.cluster_status(gone).unwrap().rules_version, 1);
}

/// Two nodes whose `[[node]]` lists differ never initialize: either one would have made a
/// cluster the other does not agree with. Each says why, and neither has a leader.
#[test]
fn nodes_with_different_node_lists_do_not_bootstrap() {
    let mut c = Cluster::prepare(2, Tuning::default(), None, None);
    // Node 2's config lists a third node as well.
    let ports: Vec<(u64, u16)> = c
        .nodes
        .iter()
        .map(|n| (n.id, n.addr.rsplit(':').next().unwrap().parse().unwrap()))
        .chain([(3, free_port())])
        .collect();
    let other = c.dir.path().join("cluster-2.toml");
    write_config(&other, &ports, &Tuning::default());
    c.nodes[1].config = other;
    c.spawn(1);
    c.spawn(2);
    c.wait_healthy(1);
    c.wait_healthy(2);
    wait_for("node 1 to say why", Duration::from_secs(30), || {
        c.log(1).contains("lists other nodes").then_some(())
    });
    wait_for("node 2 to say why", Duration::from_secs(30), || {
        c.log(2).contains("lists other nodes").then_some(())
    });
    for id in [1, 2] {
        let status = c.cluster_status(id).unwrap();
        assert_eq!(status.leader, None, "node {id}");
        assert_eq!(status.last_log_index, 0, "node {id} holds a log");
        assert!(status.members.is_empty(), "node {id}: {:?}", status.members);
        assert!(!c.log(id).contains("bootstrapped the cluster"));
    }
}
