//! `uniqlog dev` smoke test: one process, a sign-up through HTTP, the activation link from
//! the mail sink, and the user active in the query API.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

/// A port base whose +1, +101, +102 and +201 are all free right now.
fn free_port_base() -> u16 {
    for _ in 0..100 {
        let base = free_port().saturating_sub(1);
        if !(1024..=65000 - 201).contains(&base) {
            continue;
        }
        if [1, 101, 102, 201]
            .iter()
            .all(|o| TcpListener::bind(("127.0.0.1", base + o)).is_ok())
        {
            return base;
        }
    }
    panic!("no free port base");
}

struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn dev_signs_up_mails_the_link_and_activates() {
    let dir = tempfile::TempDir::new().unwrap();
    let base = free_port_base();
    let _dev = Dev(Command::new(BIN)
        .args(["dev", "--port-base", &base.to_string()])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let (node, query, sink) = (
        format!("127.0.0.1:{}", base + 1),
        format!("127.0.0.1:{}", base + 101),
        format!("127.0.0.1:{}", base + 201),
    );
    wait_for("dev to serve", Duration::from_secs(30), || {
        let up = [&node, &query, &sink]
            .iter()
            .all(|a| get(a, "/health").is_ok_and(|r| r.status == 200));
        up.then_some(())
    });
    let r = post(
        &node,
        "/v1/users",
        &json!({"username": "ada", "email": "ada@example.com", "password": "correct horse"})
            .to_string(),
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    let text = wait_for("the activation email", Duration::from_secs(30), || {
        let m = get(&sink, "/messages").ok()?.body;
        m["messages"][0]["text"].as_str().map(str::to_string)
    });
    let link = text
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("a link in the email");
    let path = link
        .strip_prefix(&format!("http://{node}"))
        .expect("the link points at the node");
    let act = get(&node, path).unwrap();
    assert_eq!(act.status, 200, "{}", act.text);
    let doc = get(
        &query,
        &format!("/v1/users/{id}?min_offset={}", act.body["offset"]),
    )
    .unwrap();
    assert_eq!(doc.body["status"], "active", "{}", doc.text);
    assert!(
        dir.path().join("data/dev/node").exists(),
        "data under ./data/dev"
    );
    // The activation secret is this dev system's own: random, kept readable by its owner
    // only, not the one shipped in cluster.toml.
    let secret_file = dir.path().join("data/dev/activation.secret");
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    assert!(secret.len() >= 32, "{secret:?}");
    assert_ne!(secret, api::users::config::SHIPPED_ACTIVATION_SECRET);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&secret_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    // The link was signed with it.
    let token = path.split("token=").nth(1).unwrap();
    let parsed = api::users::token::ActivationToken::parse(token).unwrap();
    parsed.verify(&secret, "ada@example.com").unwrap();

    // `--reset` starts again from an empty data dir: ada is gone, and a new secret is made.
    drop(_dev);
    wait_for("dev to stop", Duration::from_secs(30), || {
        get(&node, "/health").is_err().then_some(())
    });
    let _dev = Dev(Command::new(BIN)
        .args(["dev", "--reset", "--port-base", &base.to_string()])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    wait_for("dev to serve again", Duration::from_secs(30), || {
        get(&node, "/ready").ok().filter(|r| r.status == 200)
    });
    let topics = get(&node, "/v1/topics").unwrap().body;
    assert!(
        !topics.to_string().contains("\"users\""),
        "a reset dev has no users topic: {topics}"
    );
    let again = std::fs::read_to_string(&secret_file).unwrap();
    assert_ne!(again, secret, "a new activation secret");
}
