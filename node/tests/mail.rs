//! End to end: three nodes, the mail consumer and the mail sink. Sign-ups while the provider
//! is down, then flaky, then slower than the timeout, with the mail consumer killed twice:
//! exactly one message per AccountCreated, bounded resends, nothing parked, breaker closed.
//! And: a rejected address is parked, replayed, and then delivered once.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const CHECKPOINT_EVERY: u64 = 10;

fn mail_config(c: &Cluster, sink: &str, health: &str) -> std::path::PathBuf {
    c.config_with(
        "mail",
        &format!(
            "\n[mail]\nlisten = \"{health}\"\nwebhook_url = \"http://{sink}/send\"\ntimeout_ms = 300\n\
             checkpoint_every_events = {CHECKPOINT_EVERY}\ncheckpoint_every_ms = 200\nretry_base_ms = 20\n\
             retry_max_ms = 200\nbreaker_failures = 3\nbreaker_cool_down_ms = 300\n"
        ),
    )
}

fn messages(sink: &str) -> Value {
    get(sink, "/messages").unwrap().body
}

fn control(sink: &str, faults: Value) {
    let r = post(sink, "/control", &faults.to_string()).unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
}

fn sent(sink: &str) -> usize {
    messages(sink)["messages"].as_array().unwrap().len()
}

#[test]
fn every_sign_up_gets_exactly_one_email_through_outages_flakiness_slowness_and_crashes() {
    let mut c = Cluster::start(3, users_tuning());
    let (sink_port, health_port) = (free_port(), free_port());
    let sink = format!("127.0.0.1:{sink_port}");
    let health = format!("127.0.0.1:{health_port}");
    c.spawn_aux(
        "sink",
        &["mail-sink", "--listen", &sink, "--down-for-ms", "2000"],
    );
    wait_for("the sink", Duration::from_secs(20), || {
        get(&sink, "/health").ok()
    });
    let config = mail_config(&c, &sink, &health);
    let config_arg = config.to_str().unwrap().to_string();
    c.spawn_aux("mail", &["mail", "--config", &config_arg]);

    const SIGNUPS: usize = 500;
    let done = Arc::new(AtomicUsize::new(0));
    let addrs: Vec<String> = (1..=3).map(|i| c.addr(i)).collect();
    let writers: Vec<_> = (0..10)
        .map(|w| {
            let (done, addrs) = (done.clone(), addrs.clone());
            thread::spawn(move || {
                for i in (w..SIGNUPS).step_by(10) {
                    let body = json!({"username": format!("u{i}"), "email": format!("u{i}@example.com"), "password": "12345678"});
                    loop {
                        match post_keyed_try(&addrs[i % 3], &body.to_string(), &format!("s{i}")) {
                            Some(201) => break,
                            Some(s) => assert_eq!(s, 503),
                            None => {}
                        }
                        thread::sleep(Duration::from_millis(20));
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    // Down for 2 s (from the start), then a crash, then 30 % failures, a second crash, then
    // answers slower than the 300 ms timeout, then healthy.
    wait_for("100 sign-ups", Duration::from_secs(60), || {
        (done.load(Ordering::Relaxed) >= 100).then_some(())
    });
    wait_for(
        "some emails after the outage",
        Duration::from_secs(60),
        || (sent(&sink) >= 20).then_some(()),
    );
    c.kill_aux("mail");
    c.spawn_aux("mail", &["mail", "--config", &config_arg]);
    control(&sink, json!({"fail_rate": 0.3}));
    wait_for("more emails while flaky", Duration::from_secs(60), || {
        (sent(&sink) >= 150).then_some(())
    });
    c.kill_aux("mail");
    c.spawn_aux("mail", &["mail", "--config", &config_arg]);
    wait_for(
        "more emails after the second crash",
        Duration::from_secs(60),
        || (sent(&sink) >= 200).then_some(()),
    );
    // Slower than the timeout: the sink records each attempt's message, the consumer times
    // out and stays on that event, retrying (each retry a counted duplicate) until it is fast
    // again.
    control(&sink, json!({"delay_ms": 400}));
    // Read from /metrics, as a Prometheus would: the timeouts counter moves.
    wait_for("timeouts while slow", Duration::from_secs(60), || {
        let m = common::metrics::scrape(&health);
        (m.value("uniqlog_mail_timeouts_total", &[]) >= 3.0).then_some(())
    });
    control(&sink, json!({}));
    for w in writers {
        w.join().unwrap();
    }

    let all = wait_for("one email per sign-up", Duration::from_secs(120), || {
        let m = messages(&sink);
        (m["messages"].as_array().unwrap().len() >= SIGNUPS).then_some(m)
    });
    let h = wait_for(
        "the mail consumer caught up",
        Duration::from_secs(60),
        || {
            let h = get(&health, "/health").ok()?.body;
            (h["lag_events"] == 0 && h["checkpoint"].as_u64()? >= SIGNUPS as u64).then_some(h)
        },
    );
    // The outage opened the breaker, and the checkpoints said so while it held the consumer
    // still; the latest says it closed again.
    let reports: Vec<String> = c
        .read_topic(1, "__checkpoints")
        .iter()
        .filter(|e| e["data"]["consumer"] == "mail")
        .filter_map(|e| e["data"]["breaker"].as_str().map(str::to_string))
        .collect();
    assert!(reports.iter().any(|b| b == "open"), "{reports:?}");
    // From the leader, which has applied the latest checkpoint.
    let leader = c.wait_leader(&[1, 2, 3]);
    wait_for(
        "the breaker closed in /v1/consumers",
        Duration::from_secs(10),
        || {
            let listed = get(&c.addr(leader), "/v1/consumers").ok()?.body;
            listed["consumers"]
                .as_array()?
                .iter()
                .any(|c| c["consumer"] == "mail" && c["breaker"] == "closed")
                .then_some(())
        },
    );
    let msgs = all["messages"].as_array().unwrap();
    assert_eq!(
        msgs.len(),
        SIGNUPS,
        "exactly one message per AccountCreated"
    );
    let events = c.read_topic(1, "users");
    for e in &events {
        let key = format!("users:{}", e["offset"]);
        let m = msgs
            .iter()
            .find(|m| m["idempotency_key"] == key.as_str())
            .unwrap_or_else(|| panic!("no email for {key}"));
        assert_eq!(m["to"], e["data"]["email"]);
        assert!(m["text"]
            .as_str()
            .unwrap()
            .contains("/v1/users/activate?token="));
    }
    let duplicates = all["duplicates"].as_u64().unwrap();
    let timeouts = h["timeouts"].as_u64().unwrap();
    assert!(
        duplicates <= 2 * (CHECKPOINT_EVERY + 1) + timeouts,
        "resends: {duplicates} duplicates, {timeouts} timeouts counted, 2 crashes"
    );
    assert!(timeouts > 0, "the slow phase timed some calls out: {h}");
    assert_eq!(h["parked"], 0);
    assert_eq!(h["breaker"], "closed");
    eprintln!(
        "duplicates {duplicates}, timeouts {timeouts}, retries {}",
        h["retries"]
    );
}

fn post_keyed_try(addr: &str, body: &str, key: &str) -> Option<u16> {
    try_post_keyed(addr, "/v1/users", body, key)
        .ok()
        .map(|r| r.status)
}

#[test]
fn a_rejected_address_is_parked_replayed_and_then_delivered_once() {
    let mut c = Cluster::start(1, users_tuning());
    let (sink, health) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    c.spawn_aux(
        "sink",
        &[
            "mail-sink",
            "--listen",
            &sink,
            "--reject",
            "bad@example.com",
        ],
    );
    wait_for("the sink", Duration::from_secs(20), || {
        get(&sink, "/health").ok()
    });
    let config = mail_config(&c, &sink, &health);
    c.spawn_aux("mail", &["mail", "--config", config.to_str().unwrap()]);
    let a = c.addr(1);
    for (u, e) in [
        ("good", "good@example.com"),
        ("bad", "bad@example.com"),
        ("late", "late@example.com"),
    ] {
        let r = post(
            &a,
            "/v1/users",
            &json!({"username": u, "email": e, "password": "12345678"}).to_string(),
        )
        .unwrap();
        assert_eq!(r.status, 201, "{}", r.text);
    }
    wait_for("two emails and one parked", Duration::from_secs(30), || {
        let h = get(&health, "/health").ok()?.body;
        (sent(&sink) == 2 && h["parked"] == 1).then_some(())
    });
    let m = wait_for("the metrics to show it", Duration::from_secs(10), || {
        let m = common::metrics::scrape(&health);
        (m.value("uniqlog_mail_lag_events", &[]) == 0.0).then_some(m)
    });
    assert_eq!(m.value("uniqlog_mail_parked_total", &[]), 1.0);
    assert_eq!(m.value("uniqlog_mail_sent_total", &[]), 2.0);
    assert_eq!(m.value("uniqlog_mail_breaker_state", &[]), 0.0);
    assert_eq!(m.kind("uniqlog_mail_lag_seconds"), "gauge");
    let parked = c.read_topic(1, "__parked");
    assert_eq!(parked.len(), 1);
    assert!(parked[0]["data"]["reason"]
        .as_str()
        .unwrap()
        .contains("invalid_recipient"));
    let users_before = c.read_topic(1, "users").len();

    control(&sink, json!({}));
    let out = std::process::Command::new(BIN)
        .args(["log", "replay-parked", "--consumer", "mail", "--config"])
        .arg(&c.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = wait_for("the replayed email", Duration::from_secs(30), || {
        let m = messages(&sink);
        (m["messages"].as_array().unwrap().len() == 3).then_some(m)
    });
    let bad = m["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["to"] == "bad@example.com")
        .unwrap()
        .clone();
    assert_eq!(
        bad["idempotency_key"], "users:1",
        "the original idempotency key"
    );
    assert_eq!(
        c.read_topic(1, "users").len(),
        users_before,
        "the original topic gained no event"
    );
    // Replaying again re-queues nothing new: the email is not sent twice.
    let out = std::process::Command::new(BIN)
        .args(["log", "replay-parked", "--consumer", "mail", "--config"])
        .arg(&c.config)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(c.read_topic(1, "__retry.mail").len(), 1);
    assert_eq!(messages(&sink)["duplicates"], 0);
}

/// A process killed when dropped.
#[test]
fn smtp_delivers_to_the_recipient_a_link_that_activates() {
    let mut c = Cluster::start(1, users_tuning());
    let port = free_port();
    let maildir = c.dir.path().join("maildir");
    // Python's aiosmtpd (installed by scripts/test.sh) as the SMTP server, storing a Maildir.
    let _smtpd = Killed(
        std::process::Command::new("python3")
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(&maildir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m aiosmtpd (pip install aiosmtpd)"),
    );
    wait_for("the SMTP server", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let health = format!("127.0.0.1:{}", free_port());
    let config = c.config_with(
        "mail-smtp",
        &format!(
            "\n[mail]\nlisten = \"{health}\"\nprovider = \"smtp\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\n\
             smtp_tls = \"none\"\nfrom = \"uniqlog <no-reply@example.com>\"\ntimeout_ms = 2000\n"
        ),
    );
    c.spawn_aux("mail", &["mail", "--config", config.to_str().unwrap()]);
    let r = signup(&c.addr(1), "ada", "Ada@Example.com");
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();

    let raw = wait_for("the email in the maildir", Duration::from_secs(30), || {
        let entry = std::fs::read_dir(maildir.join("new")).ok()?.next()?.ok()?;
        std::fs::read_to_string(entry.path()).ok()
    });
    assert!(
        raw.lines()
            .any(|l| l.eq_ignore_ascii_case("To: Ada@Example.com")),
        "{raw}"
    );
    assert!(raw.contains("Message-ID: <users.0@uniqlog>"), "{raw}");
    // The link may be folded by the transfer encoding: join soft line breaks first.
    let body = raw
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=");
    // The link's host is [users] public_base_url; its path and token are what activates.
    let start = body
        .find("/v1/users/activate?token=")
        .expect("an activation link");
    let link: String = body[start..]
        .chars()
        .take_while(|ch| !ch.is_whitespace())
        .collect();
    let act = get(&c.addr(1), &link).unwrap();
    assert_eq!(act.status, 200, "{link}: {}", act.text);
    let events = get(&c.addr(1), &format!("/v1/streams/user-{id}/events"))
        .unwrap()
        .body;
    assert_eq!(events["events"][1]["type"], "AccountActivated");
}
