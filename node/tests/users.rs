//! The sign-up flow's command side on three real nodes: sign up, email changes, deletes,
//! re-sign-ups, activation, idempotent retries, and no password hash in any read answer.

mod common;

use std::thread;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn patch(addr: &str, id: &str, email: &str) -> Resp {
    request(
        addr,
        "PATCH",
        &format!("/v1/users/{id}"),
        Some(&json!({ "email": email }).to_string()),
    )
}

fn delete(addr: &str, id: &str) -> Resp {
    request(addr, "DELETE", &format!("/v1/users/{id}"), None)
}

#[test]
fn sign_up_change_delete_and_sign_up_again_through_any_node() {
    let c = Cluster::start(3, users_tuning());
    let (a1, a2, a3) = (c.addr(1), c.addr(2), c.addr(3));

    let r = signup(&a2, "ada", "Ada@Example.com");
    assert_eq!(r.status, 201, "{}", r.text);
    let ada = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(ada.as_bytes()[14], b'4', "a version-4 UUID: {ada}");
    assert_eq!(r.body["status"], "pending");
    assert_eq!(
        r.location.as_deref(),
        Some(format!("/v1/users/{ada}").as_str())
    );
    assert_eq!(
        r.body["email"], "Ada@Example.com",
        "mail goes to the address as given"
    );
    let taken = signup(&a3, "other", " ada@example.COM ");
    assert_eq!(
        (taken.status, taken.body["error"].as_str()),
        (409, Some("email_taken")),
        "{}",
        taken.text
    );

    let r = signup(&a1, "bob", "bob@example.com");
    let bob = r.body["id"].as_str().unwrap().to_string();
    let r = patch(&a3, &bob, "ADA@example.com");
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (409, Some("email_taken")),
        "{}",
        r.text
    );
    let r = patch(&a3, &bob, "robert@example.com");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["email"], "robert@example.com");
    assert!(
        signup(&a1, "bob2", "bob@example.com").status == 201,
        "the old address was released"
    );

    let r = delete(&a2, &ada);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(delete(&a2, &ada).status, 404, "deleted twice");
    assert_eq!(patch(&a1, &ada, "x@example.com").status, 404);
    let again = signup(&a3, "ada again", "ada@example.com");
    assert_eq!(
        again.status, 201,
        "a deleted account's email can sign up again: {}",
        again.text
    );
    assert_ne!(again.body["id"], ada.as_str());
    assert_eq!(delete(&a1, "not-a-uuid").status, 404);
    assert_eq!(
        delete(&a1, "00000000-0000-0000-0000-000000000000").status,
        404
    );

    // The stream tells the story in order.
    let s = get(
        &a1,
        &format!("/v1/streams/user-{ada}/events?consistency=linearizable"),
    )
    .unwrap();
    let types: Vec<&str> = s.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["AccountCreated", "AccountDeleted"]);

    // No password hash in any read answer.
    c.wait_converged(&[1, 2, 3]);
    for id in 1..=3 {
        let all = get(&c.addr(id), "/v1/topics/users/events?limit=1000")
            .unwrap()
            .text;
        assert!(
            !all.contains("password") && !all.contains("argon2"),
            "node {id} serves a hash: {all}"
        );
    }
}

#[test]
fn retries_with_an_idempotency_key_get_the_first_id() {
    let c = Cluster::start(3, users_tuning());
    let body =
        json!({"username": "cy", "email": "cy@example.com", "password": "12345678"}).to_string();
    let first = post_keyed(&c.addr(1), "/v1/users", &body, "signup-cy");
    assert_eq!(first.status, 201, "{}", first.text);
    for node in [2, 3, 1] {
        let again = post_keyed(&c.addr(node), "/v1/users", &body, "signup-cy");
        assert_eq!(again.status, 201, "{}", again.text);
        assert_eq!(again.body["id"], first.body["id"], "node {node}");
        assert_eq!(again.body["offset"], first.body["offset"]);
    }
    let other =
        json!({"username": "cy", "email": "other@example.com", "password": "12345678"}).to_string();
    let r = post_keyed(&c.addr(2), "/v1/users", &other, "signup-cy");
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (400, Some("idempotency_key_reused")),
        "{}",
        r.text
    );
    assert_eq!(c.read_topic(1, "users").len(), 1);
}

#[test]
fn activation_happens_once_and_tokens_are_checked() {
    let tuning = Tuning {
        extra: Box::leak(
            users_tuning()
                .extra
                .replace(
                    "activation_resend_interval_s = 1",
                    "activation_resend_interval_s = 5",
                )
                .into_boxed_str(),
        ),
        ..Tuning::default()
    };
    let mut c = Cluster::start(1, tuning);
    let a = c.addr(1);
    let id = signup(&a, "dee", "dee@example.com").body["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Nothing sends emails yet: asking for one is refused, not queued and forgotten.
    let r = post(&a, &format!("/v1/users/{id}/activation-email"), "{}").unwrap();
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.text.contains("uniqlog mail"), "{}", r.text);
    let sink = format!("127.0.0.1:{}", free_port());
    c.spawn_aux("sink", &["mail-sink", "--listen", &sink]);
    let mail = c.config_with(
        "mail",
        &format!(
            "\n[mail]\nlisten = \"127.0.0.1:{}\"\nwebhook_url = \"http://{sink}/send\"\n",
            free_port()
        ),
    );
    c.spawn_aux("mail", &["mail", "--config", mail.to_str().unwrap()]);
    // Once it runs (and the sign-up's email is 5 s old), a resend is taken; the next one
    // waits out the interval.
    wait_for("a resend accepted", Duration::from_secs(30), || {
        let r = post(&a, &format!("/v1/users/{id}/activation-email"), "{}").unwrap();
        (r.status == 202).then_some(())
    });
    let r = post(&a, &format!("/v1/users/{id}/activation-email"), "{}").unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (429, Some("rate_limited")),
        "{}",
        r.text
    );
    let wait: u64 = r.retry_after.as_deref().unwrap().parse().unwrap();
    assert!((1..=5).contains(&wait), "Retry-After {wait}");

    let good = c.activation_token(&id, "dee@example.com", now_s() + 600);
    // A browser that opens a link gets a page, not JSON.
    let html = [("accept", "text/html,application/xhtml+xml")];
    let page = get_with_headers(&a, "/v1/users/activate?token=junk", &html);
    assert_eq!(page.status, 400);
    assert!(page.text.contains("did not activate"), "{}", page.text);
    // A token made for another address of the account is refused.
    let elsewhere = c.activation_token(&id, "mallory@example.com", now_s() + 600);
    let r = get(&a, &format!("/v1/users/activate?token={elsewhere}")).unwrap();
    assert_eq!(r.status, 400, "{}", r.text);
    let first = get(&a, &format!("/v1/users/activate?token={good}")).unwrap();
    assert_eq!(first.status, 200, "{}", first.text);
    let page = get_with_headers(&a, &format!("/v1/users/activate?token={good}"), &html);
    assert_eq!(page.status, 200);
    assert!(
        page.text.contains("Your account is active"),
        "{}",
        page.text
    );
    let second = get(&a, &format!("/v1/users/activate?token={good}")).unwrap();
    assert_eq!(second.status, 200, "again is harmless: {}", second.text);
    assert_eq!(second.body["offset"], first.body["offset"]);
    let activations = c
        .read_topic(1, "users")
        .iter()
        .filter(|e| e["type"] == "AccountActivated")
        .count();
    assert_eq!(activations, 1);

    assert_eq!(
        get(
            &a,
            &format!(
                "/v1/users/activate?token={}",
                c.activation_token(&id, "dee@example.com", now_s() - 1)
            )
        )
        .unwrap()
        .status,
        400,
        "expired"
    );
    let forged = api::users::token::make_token(
        "wrong secret",
        id.parse().unwrap(),
        "dee@example.com",
        now_s() + 600,
    );
    assert_eq!(
        get(&a, &format!("/v1/users/activate?token={forged}"))
            .unwrap()
            .status,
        400
    );
    assert_eq!(
        get(&a, "/v1/users/activate?token=junk").unwrap().status,
        400
    );
    assert_eq!(
        get(&a, "/v1/users/activate").unwrap().status,
        400,
        "token missing"
    );
    let r = post(&a, &format!("/v1/users/{id}/activation-email"), "{}").unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (409, Some("already_active")),
        "{}",
        r.text
    );
}

#[test]
fn concurrent_email_changes_of_one_account_take_one_version_each() {
    let c = Cluster::start(3, users_tuning());
    let id = signup(&c.addr(1), "eve", "eve0@example.com").body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let handles: Vec<_> = (1..=8)
        .map(|i| {
            let addr = c.addr(i % 3 + 1);
            let id = id.clone();
            thread::spawn(move || patch(&addr, &id, &format!("eve{i}@example.com")))
        })
        .collect();
    let answers: Vec<Resp> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut offsets: Vec<u64> = answers
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.body["offset"].as_u64().unwrap())
        .collect();
    for r in &answers {
        assert!(r.status == 200 || r.status == 503, "{}", r.text);
    }
    assert!(
        offsets.len() >= 4,
        "most concurrent changes win after retrying: {offsets:?}"
    );
    offsets.sort();
    offsets.dedup();
    assert_eq!(
        offsets.len(),
        answers.iter().filter(|r| r.status == 200).count(),
        "one event per winning PATCH"
    );
    let events = c.read_topic(1, "users");
    let changes: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "EmailChanged")
        .collect();
    assert_eq!(changes.len(), offsets.len());
    // Each change moved from the address the previous one set: versions never interleave.
    let mut email = "eve0@example.com".to_string();
    for e in changes {
        assert_eq!(e["data"]["old_email"], email.as_str(), "{e}");
        email = e["data"]["new_email"].as_str().unwrap().to_string();
    }
}
