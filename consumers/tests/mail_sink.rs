//! The mail sink over real HTTP: one message per idempotency key, duplicates counted, and each
//! fault it can be told to inject.
#![cfg(not(madsim))]

use std::time::Duration;

use api::{HttpRequest, HyperTransport, Transport, TransportError};
use consumers::mail_sink::{Faults, MailSink};
use serde_json::{json, Value};

async fn start(faults: Faults) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let router = MailSink::new(faults).router();
    tokio::spawn(api::server::serve(listener, router, Duration::from_secs(5)));
    addr
}

async fn send(
    t: &HyperTransport,
    addr: &str,
    to: &str,
    key: &str,
    timeout: Duration,
) -> Result<u16, TransportError> {
    let mut req = HttpRequest::post(
        "/send",
        json!({"to": to, "subject": "hi", "text": "t"}).to_string(),
    );
    req.headers
        .push((http_header("idempotency-key"), key.to_string()));
    t.send(addr, req, timeout).await.map(|r| r.status)
}

fn http_header(name: &'static str) -> axum::http::HeaderName {
    axum::http::HeaderName::from_static(name)
}

async fn messages(t: &HyperTransport, addr: &str) -> Value {
    let r = t
        .send(addr, HttpRequest::get("/messages"), Duration::from_secs(5))
        .await
        .unwrap();
    serde_json::from_slice(&r.body).unwrap()
}

async fn control(t: &HyperTransport, addr: &str, faults: Value) -> u16 {
    t.send(
        addr,
        HttpRequest::post("/control", faults.to_string()),
        Duration::from_secs(5),
    )
    .await
    .unwrap()
    .status
}

#[tokio::test]
async fn records_one_message_per_key_and_injects_faults_on_command() {
    let t = HyperTransport::new();
    let addr = start(Faults::default()).await;
    let second = Duration::from_secs(5);
    assert_eq!(
        send(&t, &addr, "a@x.io", "users:0", second).await.unwrap(),
        202
    );
    assert_eq!(
        send(&t, &addr, "a@x.io", "users:0", second).await.unwrap(),
        202
    );
    assert_eq!(
        send(&t, &addr, "b@x.io", "users:1", second).await.unwrap(),
        202
    );
    let m = messages(&t, &addr).await;
    assert_eq!(m["messages"].as_array().unwrap().len(), 2);
    assert_eq!(m["duplicates"], 1);
    assert_eq!(m["messages"][0]["to"], "a@x.io");

    assert_eq!(
        control(&t, &addr, json!({"reject": ["bad@x.io"]})).await,
        200
    );
    assert_eq!(
        send(&t, &addr, "BAD@x.io", "users:2", second)
            .await
            .unwrap(),
        422
    );
    assert_eq!(control(&t, &addr, json!({"fail_rate": 1.0})).await, 200);
    assert_eq!(
        send(&t, &addr, "c@x.io", "users:3", second).await.unwrap(),
        500
    );
    assert_eq!(control(&t, &addr, json!({"down_for_ms": 60000})).await, 200);
    assert_eq!(
        send(&t, &addr, "c@x.io", "users:3", second).await.unwrap(),
        503
    );
    // Slower than the client's timeout: the client gives up, the sink still has the message.
    assert_eq!(control(&t, &addr, json!({"delay_ms": 500})).await, 200);
    let slow = send(&t, &addr, "d@x.io", "users:4", Duration::from_millis(100)).await;
    assert!(
        matches!(slow, Err(TransportError::Timeout { .. })),
        "{slow:?}"
    );
    assert_eq!(control(&t, &addr, json!({})).await, 200);
    let m = messages(&t, &addr).await;
    let keys: Vec<&str> = m["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["idempotency_key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        vec!["users:0", "users:1", "users:4"],
        "only accepted messages are recorded"
    );
    assert_eq!(control(&t, &addr, json!({"fail_rate": 2.0})).await, 400);
    let no_key = t
        .send(
            &addr,
            HttpRequest::post("/send", r#"{"to":"a@x.io","subject":"s","text":"t"}"#),
            second,
        )
        .await
        .unwrap();
    assert_eq!(no_key.status, 400);
}
