//! The log API against a running node: bad input answers in the error shape and changes
//! nothing; reads, long-polls, server-sent events and linearizable reads.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn limits() -> Tuning {
    Tuning {
        raft: "",
        limits: "body_bytes_max = 4096\nevents_per_append_max = 5\nevent_bytes_max = 1024\nwait_ms_max = 5000\n",
        ..Tuning::default()    }
}

#[test]
fn bad_input_gets_its_status_in_the_error_shape_and_changes_nothing() {
    let c = Cluster::start(1, limits());
    let a = c.addr(1);
    let ok = post(
        &a,
        "/v1/topics/users/events",
        &event_body("u1", Some("user-1")),
    )
    .unwrap();
    assert_eq!(ok.status, 201, "{}", ok.text);
    let before = c.topics(1);
    let big_events: String = (0..6)
        .map(|i| format!("{{\"type\":\"T\",\"data\":{{\"i\":{i}}}}}"))
        .collect::<Vec<_>>()
        .join(",");
    let cases: Vec<(&str, Result<Resp, String>, u16, &str)> = vec![
        (
            "malformed JSON",
            post(&a, "/v1/topics/users/events", "{\"events\": ["),
            400,
            "invalid_request",
        ),
        (
            "not JSON at all",
            post(&a, "/v1/topics/users/events", "hello"),
            400,
            "invalid_request",
        ),
        (
            "wrong content type",
            post_with(
                &a,
                "/v1/topics/users/events",
                "text/plain",
                event_body("x", None).as_bytes(),
            ),
            415,
            "unsupported_media_type",
        ),
        (
            "missing events",
            post(&a, "/v1/topics/users/events", "{}"),
            400,
            "invalid_request",
        ),
        (
            "missing data",
            post(
                &a,
                "/v1/topics/users/events",
                r#"{"events":[{"type":"T"}]}"#,
            ),
            400,
            "invalid_request",
        ),
        (
            "empty events",
            post(&a, "/v1/topics/users/events", r#"{"events":[]}"#),
            400,
            "validation",
        ),
        (
            "too many events",
            post(
                &a,
                "/v1/topics/users/events",
                &format!("{{\"events\":[{big_events}]}}"),
            ),
            400,
            "validation",
        ),
        (
            "event too large",
            post(
                &a,
                "/v1/topics/users/events",
                &format!(
                    "{{\"events\":[{{\"type\":\"T\",\"data\":{{\"s\":\"{}\"}}}}]}}",
                    "x".repeat(2000)
                ),
            ),
            400,
            "validation",
        ),
        (
            "oversized body",
            post(
                &a,
                "/v1/topics/users/events",
                &format!(
                    "{{\"events\":[{{\"type\":\"T\",\"data\":{{\"s\":\"{}\"}}}}]}}",
                    "x".repeat(10_000)
                ),
            ),
            413,
            "payload_too_large",
        ),
        (
            "data not an object",
            post(
                &a,
                "/v1/topics/users/events",
                r#"{"events":[{"type":"T","data":[1]}]}"#,
            ),
            400,
            "validation",
        ),
        (
            "unknown field",
            post(
                &a,
                "/v1/topics/users/events",
                r#"{"events":[{"type":"T","data":{}}],"bogus":1}"#,
            ),
            400,
            "invalid_request",
        ),
        (
            "bad expected_version",
            post(
                &a,
                "/v1/topics/users/events",
                r#"{"events":[{"type":"T","data":{}}],"expected_version":{"s":"maybe"}}"#,
            ),
            400,
            "invalid_request",
        ),
        (
            "stream used in a second topic",
            post(
                &a,
                "/v1/topics/orders/events",
                &event_body("o1", Some("user-1")),
            ),
            400,
            "stream_in_other_topic",
        ),
        (
            "bad topic name",
            post(&a, "/v1/topics/bad%20name/events", &event_body("x", None)),
            400,
            "invalid_request",
        ),
        ("unknown route", get(&a, "/v1/nope"), 404, "not_found"),
        (
            "wrong method",
            post(&a, "/v1/topics", "{}"),
            405,
            "method_not_allowed",
        ),
        (
            "bad query",
            get(&a, "/v1/topics/users/events?from=-1"),
            400,
            "invalid_request",
        ),
        (
            "limit too large",
            get(&a, "/v1/topics/users/events?limit=100000"),
            400,
            "invalid_request",
        ),
        (
            "wait too long",
            get(&a, "/v1/topics/users/events?wait_ms=999999"),
            400,
            "invalid_request",
        ),
    ];
    for (what, resp, status, code) in cases {
        let r = resp.unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        assert_eq!(r.status, status, "{what}: {}", r.text);
        assert_eq!(r.body["error"], code, "{what}: {}", r.text);
        assert!(
            r.body["message"].is_string(),
            "{what}: message missing: {}",
            r.text
        );
        assert!(
            r.body["retryable"].is_boolean(),
            "{what}: retryable missing: {}",
            r.text
        );
    }
    assert_eq!(c.topics(1), before, "bad input changed the log");
    let again = post(&a, "/v1/topics/users/events", &event_body("u2", None)).unwrap();
    assert_eq!(again.status, 201, "the node still serves: {}", again.text);
}

#[test]
fn reads_page_long_poll_and_stream() {
    let c = Cluster::start(1, limits());
    let a = c.addr(1);
    // An unknown topic is an empty page that long-polls like any other.
    let r = get(&a, "/v1/topics/nothing/events?wait_ms=100").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body["next_offset"], 0);
    assert_eq!(r.body["head"], 0);
    assert_eq!(r.body["events"].as_array().unwrap().len(), 0);

    for i in 0..5 {
        let stream = format!("s-{}", i % 2);
        let r = append_ok(&a, "t", &format!("e{i}"), Some(&stream));
        assert_eq!(r.body["first_offset"], i);
    }
    let page = get(&a, "/v1/topics/t/events?from=1&limit=2").unwrap();
    let offsets: Vec<u64> = page.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![1, 2]);
    assert_eq!(page.body["next_offset"], 3);
    assert_eq!(
        page.body["head"], 5,
        "a full page says how long the topic is"
    );
    let s = get(&a, "/v1/streams/s-0/events?limit=1").unwrap();
    assert_eq!(
        (&s.body["next_offset"], &s.body["head"]),
        (&1.into(), &3.into())
    );
    let s = get(&a, "/v1/streams/s-0/events").unwrap();
    let uids: Vec<&str> = s.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["uid"].as_str().unwrap())
        .collect();
    assert_eq!(uids, vec!["e0", "e2", "e4"]);

    // A long-poll at the end of the topic is answered by the next append.
    let addr = a.clone();
    let poll =
        std::thread::spawn(move || get(&addr, "/v1/topics/t/events?from=5&wait_ms=5000").unwrap());
    append_ok(&a, "t", "late", None);
    let polled = poll.join().unwrap();
    assert_eq!(
        polled.body["events"][0]["data"]["uid"], "late",
        "{}",
        polled.text
    );

    // Server-sent events, resuming after Last-Event-ID 3.
    let mut sock = TcpStream::connect(&a).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        sock,
        "GET /v1/topics/t/stream HTTP/1.1\r\nHost: {a}\r\nLast-Event-ID: 3\r\n\r\n"
    )
    .unwrap();
    let mut lines = BufReader::new(sock).lines();
    let mut ids = Vec::new();
    while ids.len() < 2 {
        let line = lines.next().expect("stream open").expect("read line");
        if let Some(id) = line.strip_prefix("id: ") {
            ids.push(id.trim().parse::<u64>().unwrap());
        }
    }
    assert_eq!(ids, vec![4, 5]);
}

#[test]
fn writes_and_linearizable_reads_through_followers() {
    let c = Cluster::start(3, Tuning::default());
    let leader = c.wait_leader(&[1, 2, 3]);
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    for i in 0..20 {
        let via = followers[i % 2];
        append_ok(&c.addr(via), "f", &format!("f{i}"), None);
        // The other follower sees it at once when asked for a linearizable read.
        let other = followers[(i + 1) % 2];
        let page = get(
            &c.addr(other),
            &format!("/v1/topics/f/events?from={i}&consistency=linearizable"),
        )
        .unwrap();
        assert_eq!(page.status, 200, "{}", page.text);
        assert_eq!(
            page.body["events"][0]["data"]["uid"],
            format!("f{i}"),
            "{}",
            page.text
        );
    }
    let st = c.status(followers[0]).unwrap();
    assert_eq!(st["role"], "follower");
    assert_eq!(st["leader"], leader);
    let r = get(&c.addr(followers[0]), "/ready").unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
}
