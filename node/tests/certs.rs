//! `uniqlog certs` and `uniqlog health` between real processes: the material `certs` makes
//! runs a TLS cluster with tokens on as it is (bootstrapping itself), `health` says when a node
//! is ready, and the shipped deployment configs (compose, Kubernetes) load with that material.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn health(addr: &str, ca: &Path, live: bool) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["health", "--addr", addr, "--ca"]).arg(ca);
    if live {
        cmd.arg("--live");
    }
    cmd.env_remove("UNIQLOG_TLS_CA").output().unwrap()
}

/// Three nodes on the material of `uniqlog certs` alone: TLS verified against its CA, the
/// admin token writes, the query token reads `users` and may not write, no token is 401.
/// `health` exits 1 before the cluster is ready and 0 after. Run again, `certs` keeps every
/// file; with a fourth node in the config, it makes only that node's, under the same CA.
#[test]
fn certs_make_a_tls_and_token_cluster_that_health_sees_ready() {
    let mut c = Cluster::prepare(3, users_tuning(), None, None);
    let certs = c.dir.path().join("certs");
    let out = c.cli_ok(&["certs", "--out", certs.to_str().unwrap()]);
    for name in [
        "ca.pem",
        "node1.pem",
        "node3.key",
        "query.pem",
        "admin.token",
        "auth.toml",
    ] {
        assert!(out.contains(name), "{out}");
    }
    assert_eq!(mode(&certs), 0o700);
    for name in [
        "ca.key",
        "node1.key",
        "cluster.secret",
        "activation.secret",
        "admin.token",
    ] {
        assert_eq!(mode(&certs.join(name)), 0o600, "{name}");
    }
    // The config takes the [auth] that `certs` wrote, as an operator pastes it.
    let mut config = read(&c.config);
    config.push_str(&read(&certs.join("auth.toml")));
    std::fs::write(&c.config, config).unwrap();
    let ca = certs.join("ca.pem");
    c.http = Http::tls(&read(&ca));

    let refused = health(&c.addr(1), &ca, false);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("did not answer /ready"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    for id in 1..=3 {
        c.spawn(id);
    }
    for id in 1..=3 {
        c.wait_healthy(id);
    }
    let out = wait_for("node 2 ready", Duration::from_secs(30), || {
        let out = health(&c.addr(2), &ca, false);
        out.status.success().then_some(out)
    });
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"status\":\"ready\""),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(health(&c.addr(3), &ca, true).status.success());

    let admin = read(&certs.join("admin.token"));
    let query = read(&certs.join("query.token"));
    let append = |token: Option<&str>, topic: &str| {
        c.http
            .send(
                &c.addr(1),
                "POST",
                &format!("/v1/topics/{topic}/events"),
                Some(r#"{"events":[{"type":"T","data":{}}]}"#),
                token,
            )
            .unwrap()
            .status
    };
    assert_eq!(append(None, "t"), 401);
    assert_eq!(append(Some(&query), "users"), 403);
    assert_eq!(append(Some(&admin), "t"), 201);
    let read_users = c
        .http
        .send(
            &c.addr(2),
            "GET",
            "/v1/topics/users/events",
            None,
            Some(&query),
        )
        .unwrap();
    assert_eq!(read_users.status, 200, "{}", read_users.text);
    // A plain HTTP client gets no answer from a TLS node.
    assert!(get(&c.addr(1), "/ready").is_err());

    // Again: nothing changes.
    let ca_before = read(&ca);
    let again = c.cli_ok(&["certs", "--out", certs.to_str().unwrap()]);
    assert!(again.contains("everything was there already"), "{again}");
    assert_eq!(read(&ca), ca_before);
    // A fourth node in the config: its files only, signed by the same CA: it serves TLS that
    // a client trusting that CA accepts.
    let port = free_port();
    let mut config = read(&c.config);
    config.push_str(&format!(
        "\n[[node]]\nid = 4\naddr = \"127.0.0.1:{port}\"\ndata_dir = \"node4\"\n"
    ));
    std::fs::write(&c.config, config).unwrap();
    let made = c.cli_ok(&["certs", "--out", certs.to_str().unwrap()]);
    assert_eq!(
        made.trim(),
        format!("in {}: node4.key, node4.pem", certs.display())
    );
    let log = std::fs::File::create(c.dir.path().join("node4.log")).unwrap();
    let node4 = Killed(
        Command::new(BIN)
            .args(["node", "--config"])
            .arg(&c.config)
            .args(["--id", "4"])
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let addr4 = format!("127.0.0.1:{port}");
    wait_for("node 4 serving TLS", Duration::from_secs(30), || {
        c.http
            .get(&addr4, "/health")
            .ok()
            .filter(|r| r.status == 200)
    });
    // Its peers hold a log: it waits to be added, and forms no cluster of its own.
    wait_for("node 4 to decide", Duration::from_secs(30), || {
        read(&c.dir.path().join("node4.log"))
            .contains("not bootstrapping")
            .then_some(())
    });
    let status = c
        .http
        .send(&addr4, "GET", "/v1/cluster/status", None, Some(&admin))
        .unwrap();
    assert_eq!(
        status.body["members"],
        serde_json::json!([]),
        "{}",
        status.text
    );
    drop(node4);
}

/// The configs shipped in deploy/ load, with the material `uniqlog certs` makes from them
/// where they expect it, and each node finds itself by the hostname it runs under there.
#[test]
fn the_shipped_deployment_configs_load_with_the_material_certs_makes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (dir, host, sans) in [
        ("compose", "node2", vec![]),
        (
            "kubernetes",
            "uniqlog-1",
            vec!["--san", "uniqlog-client", "--san", "uniqlog-query"],
        ),
    ] {
        let tmp = tempfile::TempDir::new().unwrap();
        let shipped = root.join("deploy").join(dir).join("cluster.toml");
        let certs = tmp.path().join("certs");
        let out = Command::new(BIN)
            .args(["certs", "--config"])
            .arg(&shipped)
            .arg("--out")
            .arg(&certs)
            .args(&sans)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{dir}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The files where the deployment mounts them.
        let text = read(&shipped).replace("\"/certs/", &format!("\"{}/", certs.display()));
        let path = tmp.path().join("cluster.toml");
        std::fs::write(&path, text).unwrap();
        let config = uniqlog_node::Config::load(&path).unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert_eq!(config.node_for_host(host).unwrap(), 2, "{dir}");
        assert!(config.node_server_tls(2).unwrap().is_some(), "{dir}");
        assert!(config.client_tls().unwrap().is_some(), "{dir}");
        assert_eq!(config.auth.tokens.len(), 3, "{dir}");
        assert!(config.raft.bootstrap == uniqlog_node::config::Bootstrap::Auto);
    }
}
