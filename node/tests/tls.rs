//! TLS end to end, with a CA made by the test (rcgen): three nodes serving the client API and
//! peer RPC over TLS only; appends through the leader and a follower (forwarded over TLS),
//! reads from every node, `uniqlog query` tailing over TLS; the CLI and a TLS client trusting
//! another CA refused with a clear error; plain HTTP and a stalled handshake get nothing and
//! do not hurt the node. Bad TLS files stop a node at start, naming the key.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The uids of a topic's events, in order.
fn uids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["data"]["uid"].as_str().unwrap().to_string())
        .collect()
}

/// Sign up through `addr` over `http`, require 201; (id, offset).
fn signup_tls(http: &Http, addr: &str, username: &str, email: &str) -> (String, u64) {
    let body = json!({"username": username, "email": email, "password": "correct horse"});
    let r = http.post(addr, "/v1/users", &body.to_string());
    assert_eq!(r.status, 201, "sign-up {username}: {}", r.text);
    (
        r.body["id"].as_str().unwrap().to_string(),
        r.body["offset"].as_u64().unwrap(),
    )
}

/// The query consumer serves user `id` once it has applied `offset`.
fn query_has(http: &Http, q: &str, id: &str, offset: u64, email: &str) {
    let r = http
        .get(q, &format!("/v1/users/{id}?min_offset={offset}"))
        .unwrap();
    assert_eq!(r.status, 200, "query {id}: {}", r.text);
    assert_eq!(r.body["email"], email, "{}", r.text);
}

#[test]
fn a_tls_cluster_serves_clients_peers_and_consumers_and_refuses_other_cas() {
    let tls = TestTls::new("uniqlog test CA");
    // A short header-read timeout, so the stalled handshake below is cut off quickly.
    let tuning = Tuning {
        limits: "header_read_timeout_ms = 3000\n",
        ..users_tuning()
    };
    let mut c = Cluster::start_tls(3, tuning, &tls);
    let leader = c.wait_leader(&[1, 2, 3]);
    let follower = (1..=3).find(|id| *id != leader).unwrap();

    // Appends through the leader and through a follower, which forwards them over TLS.
    let mut sent = Vec::new();
    for (i, id) in [leader, follower, follower, leader].into_iter().enumerate() {
        let uid = format!("order-event-{i}");
        let r = c.http.post(
            &c.addr(id),
            "/v1/topics/orders/events",
            &event_body(&uid, Some("order-1")),
        );
        assert_eq!(r.status, 201, "append through node {id}: {}", r.text);
        sent.push(uid);
    }
    c.wait_converged(&[1, 2, 3]);
    for id in 1..=3 {
        assert_eq!(uids(&c.read_topic(id, "orders")), sent, "node {id}");
    }
    let r = c
        .http
        .get(
            &c.addr(follower),
            "/v1/topics/orders/events?consistency=linearizable",
        )
        .unwrap();
    assert_eq!(r.status, 200, "linearizable read on a follower: {}", r.text);

    // `uniqlog query` tails `users` over TLS, and serves its own API over TLS with the same
    // certificate.
    let q = c.start_query("tls");
    let (ada, ada_at) = signup_tls(&c.http, &c.addr(follower), "ada", "ada@example.com");
    query_has(&c.http, &q, &ada, ada_at, "ada@example.com");

    // The CLI verifies the nodes against the config's CA.
    let out = c.cli(&c.config, &["cluster", "status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("leader"),
        "{}",
        text(&out)
    );

    // Another CA: the CLI is refused and says why, through the config or UNIQLOG_TLS_CA.
    let other = TestTls::new("another CA");
    let other_ca = c.dir.path().join("tls").join("other-ca.pem");
    std::fs::write(&other_ca, &other.ca_pem).unwrap();
    let wrong = c.dir.path().join("wrong-ca.toml");
    let config_text = std::fs::read_to_string(&c.config).unwrap();
    assert!(config_text.contains("tls/ca.pem"));
    std::fs::write(
        &wrong,
        config_text.replace("tls/ca.pem", "tls/other-ca.pem"),
    )
    .unwrap();
    let refused = |out: &Output| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}", text(out));
        assert!(
            stderr.contains("TLS handshake failed")
                && stderr.contains("not signed by the configured CA"),
            "{}",
            text(out)
        );
    };
    refused(&c.cli(&wrong, &["cluster", "status"]));
    refused(
        &Command::new(BIN)
            .args(["cluster", "status", "--config"])
            .arg(&c.config)
            .env("UNIQLOG_TLS_CA", &other_ca)
            .output()
            .unwrap(),
    );

    // A plain TLS client trusting another CA gets no answer.
    for id in 1..=3 {
        let e = Http::tls(&other.ca_pem)
            .get(&c.addr(id), "/health")
            .unwrap_err();
        assert!(e.contains("UnknownIssuer"), "node {id}: {e}");
    }

    // Plain HTTP to a TLS port gets no HTTP answer.
    for id in 1..=3 {
        let r = get(&c.addr(id), "/health");
        assert!(r.is_err(), "plain HTTP to node {id}: {r:?}");
    }

    // A client that connects and never starts the handshake is cut off by the header-read
    // timeout (3 s here).
    let mut stalled = TcpStream::connect(c.addr(follower)).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    match stalled.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("a stalled handshake got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(15),
        "closed after {waited:?}"
    );

    // None of that hurt the cluster: it still appends, replicates and feeds the consumer.
    let r = c.http.post(
        &c.addr(follower),
        "/v1/topics/orders/events",
        &event_body("after", Some("order-1")),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    sent.push("after".into());
    c.wait_converged(&[1, 2, 3]);
    for id in 1..=3 {
        assert_eq!(uids(&c.read_topic(id, "orders")), sent, "node {id}");
    }
    let (bob, bob_at) = signup_tls(&c.http, &c.addr(leader), "bob", "bob@example.com");
    query_has(&c.http, &q, &bob, bob_at, "bob@example.com");
}

/// Run `uniqlog node --id 1` on `config` and require it to refuse with all of `expected`.
fn refuses(config: &Path, expected: &[&str]) {
    let out = Command::new(BIN)
        .args(["node", "--id", "1", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started: {}", text(&out));
    assert!(!stderr.contains("panicked"), "{}", text(&out));
    for e in expected {
        assert!(stderr.contains(e), "missing {e:?}: {}", text(&out));
    }
}

#[test]
fn bad_tls_files_stop_a_node_at_start_naming_the_key() {
    let dir = tempfile::TempDir::new().unwrap();
    let a = TestTls::new("CA a");
    let b = TestTls::new("CA b");
    a.write(dir.path());
    std::fs::write(dir.path().join("tls/b.key"), &b.key_pem).unwrap();
    std::fs::write(dir.path().join("tls/garbage.pem"), "not a certificate\n").unwrap();
    let config = dir.path().join("cluster.toml");
    let write = |auth: &str| {
        let node = format!(
            "[[node]]\nid = 1\naddr = \"127.0.0.1:{}\"\ndata_dir = \"n1\"\n",
            free_port()
        );
        std::fs::write(&config, format!("{node}[auth]\n{auth}")).unwrap();
    };
    let ca = "tls_ca = \"tls/ca.pem\"\n";

    write(&format!("tls_cert = \"tls/node.pem\"\n{ca}"));
    refuses(&config, &["auth.tls_key", "without tls_key"]);
    write(&format!("tls_key = \"tls/node.key\"\n{ca}"));
    refuses(&config, &["auth.tls_cert", "without tls_cert"]);
    write("tls_cert = \"tls/node.pem\"\ntls_key = \"tls/node.key\"\n");
    refuses(&config, &["auth.tls_ca"]);
    write(&format!(
        "tls_cert = \"tls/missing.pem\"\ntls_key = \"tls/node.key\"\n{ca}"
    ));
    refuses(&config, &["auth.tls_cert", "cannot read", "missing.pem"]);
    write(&format!(
        "tls_cert = \"tls/garbage.pem\"\ntls_key = \"tls/node.key\"\n{ca}"
    ));
    refuses(&config, &["auth.tls_cert", "no PEM certificate"]);
    write(&format!(
        "tls_cert = \"tls/node.pem\"\ntls_key = \"tls/garbage.pem\"\n{ca}"
    ));
    refuses(&config, &["auth.tls_key", "no PEM private key"]);
    write(&format!(
        "tls_cert = \"tls/node.pem\"\ntls_key = \"tls/b.key\"\n{ca}"
    ));
    refuses(&config, &["auth.tls_key", "cannot serve the certificate"]);
    write(
        "tls_ca = \"tls/garbage.pem\"\ntls_cert = \"tls/node.pem\"\ntls_key = \"tls/node.key\"\n",
    );
    refuses(&config, &["auth.tls_ca", "no PEM certificate"]);
    // A CA without a certificate: peers and clients would speak TLS to a plain listener.
    write(ca);
    refuses(&config, &["auth.tls_cert", "plain listener"]);
    // Refused before storage was created.
    assert!(!dir.path().join("n1").exists());
}
