//! End to end with auth on: three nodes with client tokens and a cluster secret, the query
//! consumer on a read token, the mail consumer on an admin token. Sign-ups through followers
//! reach the read model and the mail sink; the read model's routes need a token too; a mail
//! consumer with a read token and a query consumer with a wrong token refuse to run; the
//! CLI's `--token` overrides the config's token.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

const READER: &str = "reader-token";
const WRITER: &str = "writer-token";
const ADMIN: &str = "admin-token";

fn tuning() -> Tuning {
    let mut extra = String::from(include_str!("common/user_email_rules.toml"));
    extra.push_str(&format!(
        "\n[users]\nactivation_secret_file = \"{ACTIVATION_SECRET_FILE}\"\npassword_memory_kib = 64\npassword_iterations = 1\n"
    ));
    // The consumers started from this config present the read token.
    extra.push_str(&format!(
        "\n[auth]\ncluster_secret = \"a cluster secret\"\nclient_token = \"{READER}\"\n"
    ));
    for (name, token) in [("read", READER), ("write", WRITER), ("admin", ADMIN)] {
        extra.push_str(&format!(
            "[[auth.token]]\nname = \"{name}\"\nrole = \"{name}\"\nsha256 = \"{}\"\n",
            api::auth::token_digest(token)
        ));
    }
    Tuning {
        extra: Box::leak(extra.into_boxed_str()),
        ..Tuning::default()
    }
}

/// Run `uniqlog <args>` to its end (bounded) and return (success, stderr).
fn run_to_end(c: &Cluster, name: &str, args: &[&str]) -> (bool, String) {
    let log = c.dir.path().join(format!("{name}.log"));
    let mut p = Killed(
        Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let status = wait_for(&format!("{name} to exit"), Duration::from_secs(30), || {
        p.0.try_wait().unwrap()
    });
    (status.success(), std::fs::read_to_string(&log).unwrap())
}

#[test]
fn consumers_tail_and_serve_with_auth_on_and_refuse_tokens_too_weak() {
    let mut c = Cluster::start_as(3, tuning(), Some(ADMIN));
    let leader = c.wait_leader(&[1, 2, 3]);
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|&n| n != leader).collect();

    // The query consumer on the read token.
    let q = c.start_query("q");

    // The mail consumer needs admin: with the config's read token it refuses, naming why.
    let sink = format!("127.0.0.1:{}", free_port());
    let mail_extra = format!(
        "\n[mail]\nlisten = \"127.0.0.1:{}\"\nwebhook_url = \"http://{sink}/send\"\n\
         checkpoint_every_events = 1\ncheckpoint_every_ms = 100\n",
        free_port()
    );
    let weak = c.config_with("mail-read", &mail_extra);
    let (ok, stderr) = run_to_end(
        &c,
        "mail-read",
        &["mail", "--config", weak.to_str().unwrap()],
    );
    assert!(!ok, "the mail consumer ran on a read token: {stderr}");
    assert!(
        stderr.contains("need an admin token") && stderr.contains("the read role"),
        "{stderr}"
    );
    // With an admin token (the --token flag overrides the config's) it runs.
    c.spawn_aux("sink", &["mail-sink", "--listen", &sink]);
    wait_for("the sink", Duration::from_secs(20), || {
        get(&sink, "/health").ok()
    });
    c.spawn_aux(
        "mail",
        &["mail", "--config", weak.to_str().unwrap(), "--token", ADMIN],
    );

    // Sign-ups need the write role (anonymous sign-up is off); through followers, so the
    // forwarding to the leader carries the cluster secret.
    let anonymous = signup(&c.addr(followers[0]), "nobody", "nobody@example.com");
    assert_eq!(anonymous.status, 401, "{}", anonymous.text);
    const USERS: usize = 12;
    let mut last = None;
    for i in 0..USERS {
        let body = json!({"username": format!("u{i}"), "email": format!("u{i}@example.com"), "password": "pw pw pw"});
        let via = c.addr(followers[i % followers.len()]);
        let r = request_as(
            &via,
            "POST",
            "/v1/users",
            Some(&body.to_string()),
            Some(WRITER),
        );
        assert_eq!(r.status, 201, "{}", r.text);
        last = Some(r.body["offset"].clone());
    }
    let last = last.unwrap();

    // The read model: a token is required, and the read token sees every user.
    let path = format!(
        "/v1/users?email=U{}@example.com&min_offset={last}",
        USERS - 1
    );
    let r = get(&q, &path).unwrap();
    assert_eq!(r.status, 401, "{}", r.text);
    let r = request_as(&q, "GET", &path, None, Some("not-a-token"));
    assert_eq!(r.status, 401, "{}", r.text);
    let r = request_as(&q, "GET", &path, None, Some(READER));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["users"][0]["username"], format!("u{}", USERS - 1));
    let stats = request_as(
        &q,
        "GET",
        &format!("/v1/stats/signups?min_offset={last}"),
        None,
        Some(READER),
    );
    assert_eq!(stats.status, 200, "{}", stats.text);
    assert_eq!(get(&q, "/health").unwrap().status, 200, "health stays open");

    // The mail consumer delivers one message per sign-up and records its checkpoint.
    wait_for("every activation email", Duration::from_secs(60), || {
        let n = get(&sink, "/messages").ok()?.body["messages"]
            .as_array()?
            .len();
        (n >= USERS).then_some(())
    });
    let sent = get(&sink, "/messages").unwrap().body["messages"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(sent, USERS, "exactly one email per sign-up");
    let checkpoint = wait_for("the mail checkpoint", Duration::from_secs(30), || {
        let r = request_as(
            &c.addr(leader),
            "GET",
            "/v1/consumers/mail/checkpoint",
            None,
            Some(READER),
        );
        (r.status == 200 && r.body["offset"].as_u64() >= Some(USERS as u64)).then_some(r)
    });
    assert_eq!(checkpoint.body["consumer"], "mail");
    // The query consumer's read token may not write to __checkpoints: it says so and does not
    // try.
    let query_log = std::fs::read_to_string(c.dir.path().join("query-q.log")).unwrap();
    assert!(query_log.contains("no admin role"), "{query_log}");

    // A query consumer with a token the cluster does not know stops and says why.
    let wrong = c.config_with(
        "query-wrong",
        &format!(
            "\n[query]\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"query-wrong\"\n",
            free_port()
        ),
    );
    let text = std::fs::read_to_string(&wrong)
        .unwrap()
        .replace(READER, "not-a-token");
    std::fs::write(&wrong, text).unwrap();
    let (ok, stderr) = run_to_end(
        &c,
        "query-wrong",
        &["query", "--config", wrong.to_str().unwrap()],
    );
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("refused the token (401)"), "{stderr}");

    // The CLI: the config's read token may read the status; --token replaces it.
    let config = c.config.to_str().unwrap().to_string();
    let status = |extra: &[&str]| {
        let mut args = vec!["cluster", "status", "--config", config.as_str()];
        args.extend_from_slice(extra);
        run_to_end(&c, "status", &args)
    };
    let (ok, stderr) = status(&[]);
    assert!(ok, "{stderr}");
    let (ok, stderr) = status(&["--token", "not-a-token"]);
    assert!(
        !ok && stderr.contains("401"),
        "a wrong --token was not used: {stderr}"
    );
}
