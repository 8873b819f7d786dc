//! The edge of a node against hostile or excessive clients: every `[limits]` bound at and past
//! its value, hostile bodies and headers, slow clients, too many connections and a flood of
//! writers. Each answer has its documented status; the node stays up and the log keeps
//! exactly what was accepted.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::load::{assert_acked_present, Load};
use common::*;
use serde_json::{json, Value};

/// Send `request` as raw bytes and return the status of the answer (None: the node closed
/// the connection without answering).
fn raw(addr: &str, request: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The node may answer and close before reading all of it; that is its right.
    let _ = s.write_all(request);
    read_status(&mut s)
}

fn read_status(s: &mut TcpStream) -> Option<u16> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.split(' ').nth(1).and_then(|c| c.parse().ok())
}

/// A POST of `body` (any bytes) as JSON.
fn post_bytes(addr: &str, path: &str, body: &[u8]) -> Resp {
    post_with(addr, path, "application/json", body).unwrap()
}

fn append_of(events: &[Value]) -> String {
    json!({ "events": events }).to_string()
}

/// An event whose size as `event_bytes_max` counts it (type + stream + data) is `size`.
fn event_of_size(size: usize) -> Value {
    let data_len = size - 1; // type "T"
    let pad = data_len - r#"{"s":""}"#.len();
    json!({"type": "T", "data": {"s": "x".repeat(pad)}})
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

/// Raise this process's soft limit of open files towards `want` (never past the hard limit).
fn raise_open_files_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn assert_error_shape(what: &str, r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text);
    assert_eq!(r.body["error"], code, "{what}: {}", r.text);
    assert!(r.body["message"].is_string(), "{what}: {}", r.text);
    assert!(r.body["retryable"].is_boolean(), "{what}: {}", r.text);
}

fn limits_under_test() -> Tuning {
    Tuning {
        limits: "body_bytes_max = 4096\nevents_per_append_max = 5\nevent_bytes_max = 1024\nname_bytes_max = 32\nwait_ms_max = 5000\nread_events_max = 10\n",
        ..users_tuning()
    }
}

#[test]
fn every_limit_holds_at_its_value_and_refuses_one_past_it() {
    let c = Cluster::start(1, limits_under_test());
    let a = c.addr(1);
    let path = "/v1/topics/limits/events";
    let ok = |what: &str, r: Resp| assert_eq!(r.status, 201, "{what} at the limit: {}", r.text);

    // body_bytes_max: JSON may end in whitespace, which pads a body to an exact size.
    let body = append_of(&[json!({"type": "T", "data": {}})]);
    let at = format!("{body}{}", " ".repeat(4096 - body.len()));
    ok("body_bytes_max", post_bytes(&a, path, at.as_bytes()));
    let past = format!("{at} ");
    let r = post_bytes(&a, path, past.as_bytes());
    assert_error_shape("body_bytes_max + 1", &r, 413, "payload_too_large");
    assert_eq!(r.body["limit_bytes"], 4096);

    // events_per_append_max
    let events: Vec<Value> = (0..6)
        .map(|i| json!({"type": "T", "data": {"i": i}}))
        .collect();
    ok(
        "events_per_append_max",
        post(&a, path, &append_of(&events[..5])).unwrap(),
    );
    let r = post(&a, path, &append_of(&events)).unwrap();
    assert_error_shape("events_per_append_max + 1", &r, 400, "validation");
    assert!(r.body["fields"]["events"].is_string(), "{}", r.text);

    // event_bytes_max
    ok(
        "event_bytes_max",
        post(&a, path, &append_of(&[event_of_size(1024)])).unwrap(),
    );
    let r = post(&a, path, &append_of(&[event_of_size(1025)])).unwrap();
    assert_error_shape("event_bytes_max + 1", &r, 400, "validation");
    assert!(r.body["fields"]["events[0]"].is_string(), "{}", r.text);

    // name_bytes_max: topic, stream and event type.
    let name = |n: usize| "n".repeat(n);
    ok(
        "name_bytes_max (topic)",
        post(
            &a,
            &format!("/v1/topics/{}/events", name(32)),
            &event_body("t", None),
        )
        .unwrap(),
    );
    let r = post(
        &a,
        &format!("/v1/topics/{}/events", name(33)),
        &event_body("t", None),
    )
    .unwrap();
    assert_error_shape("name_bytes_max + 1 (topic)", &r, 400, "invalid_request");
    let named = |ty: usize, stream: usize| {
        append_of(&[
            json!({"type": name(ty), "stream": format!("s{}", name(stream - 1)), "data": {}}),
        ])
    };
    ok(
        "name_bytes_max (type, stream)",
        post(&a, path, &named(32, 32)).unwrap(),
    );
    let r = post(&a, path, &named(33, 33)).unwrap();
    assert_error_shape("name_bytes_max + 1 (type, stream)", &r, 400, "validation");
    assert!(r.body["fields"]["events[0].type"].is_string(), "{}", r.text);
    assert!(
        r.body["fields"]["events[0].stream"].is_string(),
        "{}",
        r.text
    );

    // wait_ms_max and read_events_max (reads from offset 0, so nothing waits).
    let read = |q: &str| get(&a, &format!("{path}?from=0&{q}")).unwrap();
    let r = read("wait_ms=5000&limit=10");
    assert_eq!(
        r.status, 200,
        "wait_ms_max and read_events_max at the limit: {}",
        r.text
    );
    assert_eq!(
        r.body["events"].as_array().unwrap().len(),
        8,
        "all 8 events so far: {}",
        r.text
    );
    assert_error_shape(
        "wait_ms_max + 1",
        &read("wait_ms=5001"),
        400,
        "invalid_request",
    );
    assert_error_shape(
        "read_events_max + 1",
        &read("limit=11"),
        400,
        "invalid_request",
    );

    // What was accepted is exactly what the 201s above added: the body, five events, the
    // largest event, the longest type and stream (the longest topic is a topic of its own).
    let kept = c.read_topic(1, "limits");
    assert_eq!(kept.len(), 1 + 5 + 1 + 1, "{kept:?}");
}

#[test]
fn hostile_input_gets_a_4xx_and_changes_nothing() {
    let c = Cluster::start(1, limits_under_test());
    let a = c.addr(1);
    let path = "/v1/topics/users/events";
    assert_eq!(signup(&a, "ann", "ann@example.com").status, 201);
    let log_before = c.read_topic(1, "users");
    let topics_before = c.topics(1);

    let deep = format!(
        "{{\"events\":[{{\"type\":\"T\",\"data\":{{\"d\":{}1{}}}}}]}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    let deep_body = format!("{{\"events\":{}{}}}", "[".repeat(200), "]".repeat(200));
    let long_number = format!(
        "{{\"events\":[{{\"type\":\"T\",\"data\":{{\"n\":1{}}}}}]}}",
        "0".repeat(400)
    );
    // The whole body is checked for JSON that readers could read differently before it is
    // decoded, so problems inside `data` answer `invalid_request` like those outside it.
    let json_cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "duplicate key in expected_version",
            br#"{"events":[{"type":"T","stream":"s","data":{}}],"expected_version":{"s":0,"s":"any"}}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "truncated JSON",
            br#"{"events":[{"type":"T","da"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "invalid UTF-8",
            b"{\"events\":[{\"type\":\"T\xff\",\"data\":{}}]}".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "lone surrogate in a name",
            br#"{"events":[{"type":"\ud800","data":{}}]}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "lone surrogate in data",
            br#"{"events":[{"type":"T","data":{"s":"\udfff"}}]}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "duplicate key in data",
            br#"{"events":[{"type":"T","data":{"email":"a@x.io","email":"b@x.io"}}]}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "duplicate key in metadata",
            br#"{"events":[{"type":"T","data":{},"metadata":{"k":1,"k":2}}]}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "duplicate key in the body",
            br#"{"events":[],"events":[{"type":"T","data":{}}]}"#.to_vec(),
            400,
            "invalid_request",
        ),
        ("deep nesting in data", deep.into_bytes(), 400, "invalid_request"),
        (
            "deep nesting in the body",
            deep_body.into_bytes(),
            400,
            "invalid_request",
        ),
        (
            "number beyond f64",
            br#"{"events":[{"type":"T","data":{"n":1e400}}]}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "integer of 400 digits",
            long_number.into_bytes(),
            400,
            "invalid_request",
        ),
        (
            "huge expected_version",
            br#"{"events":[{"type":"T","stream":"s","data":{}}],"expected_version":{"s":1e30}}"#
                .to_vec(),
            400,
            "invalid_request",
        ),
        (
            "negative expected_version",
            br#"{"events":[{"type":"T","stream":"s","data":{}}],"expected_version":{"s":-1}}"#
                .to_vec(),
            400,
            "invalid_request",
        ),
        (
            "unknown field in an event",
            br#"{"events":[{"type":"T","data":{},"extra":1}]}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "control character in a type",
            b"{\"events\":[{\"type\":\"T\\u0007\",\"data\":{}}]}".to_vec(),
            400,
            "validation",
        ),
        ("null body", b"null".to_vec(), 400, "invalid_request"),
        ("empty body", Vec::new(), 400, "invalid_request"),
    ];
    for (what, body, status, code) in json_cases {
        let r = post_bytes(&a, path, &body);
        assert_error_shape(what, &r, status, code);
        assert_eq!(
            get(&a, "/health").unwrap().status,
            200,
            "alive after {what}"
        );
    }

    // Emails with control or bidirectional formatting characters, on sign-up and on change.
    for bad in [
        "ann\u{7}@example.com",
        "evil\u{202E}@example.com",
        "x\u{200F}y@example.com",
        "a\u{0}b@example.com",
    ] {
        let r = signup(&a, "mallory", bad);
        assert_error_shape(&format!("sign-up with {bad:?}"), &r, 400, "validation");
        assert!(r.body["fields"]["email"].is_string(), "{}", r.text);
    }

    // 100 MB announced, refused from the header alone, and the connection is not held.
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {a}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        100 * 1024 * 1024
    );
    let mut s = TcpStream::connect(&a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b' '; 1024 * 1024];
    for _ in 0..100 {
        if s.write_all(&chunk).is_err() {
            break;
        }
    }
    assert_eq!(read_status(&mut s), Some(413), "a 100 MB body");
    // The same, chunked, so no length is announced: cut at the limit.
    let mut s = TcpStream::connect(&a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nHost: {a}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    for _ in 0..100 {
        let mut c = format!("{:x}\r\n", chunk.len()).into_bytes();
        c.extend_from_slice(&chunk);
        c.extend_from_slice(b"\r\n");
        if s.write_all(&c).is_err() {
            break;
        }
    }
    assert_eq!(read_status(&mut s), Some(413), "a 100 MB chunked body");

    // 10,000 headers: refused by the HTTP layer before any handler runs.
    let mut many = format!("GET /v1/topics HTTP/1.1\r\nHost: {a}\r\n");
    for i in 0..10_000 {
        many.push_str(&format!("X-H-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(raw(&a, many.as_bytes()), Some(431), "10,000 headers");
    // Not HTTP at all.
    assert_eq!(
        raw(&a, b"\x16\x03\x01\x00\xa5garbage\r\n\r\n"),
        Some(400),
        "garbage"
    );

    assert_eq!(
        c.read_topic(1, "users"),
        log_before,
        "hostile input changed the log"
    );
    assert_eq!(c.topics(1), topics_before, "hostile input made a topic");
    assert_eq!(
        signup(&a, "bob", "bob@example.com").status,
        201,
        "the node still serves"
    );
}

#[test]
fn slow_clients_are_cut_by_the_header_timeout_while_others_are_served() {
    // 500 sockets and their clones on this side, 500 on the node's (which inherits the limit):
    // more than a soft limit of 1024 descriptors allows.
    raise_open_files_limit(4096);
    let c = Cluster::start(
        1,
        Tuning {
            limits: "header_read_timeout_ms = 1000\n",
            ..Tuning::default()
        },
    );
    let a = c.addr(1);
    let mut slow: Vec<TcpStream> = (0..500)
        .map(|_| {
            let s = TcpStream::connect(&a).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let closed = Arc::new(Mutex::new(vec![false; slow.len()]));
    // Headers a byte at a time, every 50 ms, on every connection, until each is closed.
    let trickle = {
        let closed = closed.clone();
        let mut streams: Vec<TcpStream> = slow.iter().map(|s| s.try_clone().unwrap()).collect();
        std::thread::spawn(move || {
            let request = b"GET /v1/topics HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec();
            for step in 0..400usize {
                let byte = [*request.get(step).unwrap_or(&b'a')];
                let mut open = 0;
                for (i, s) in streams.iter_mut().enumerate() {
                    if closed.lock().unwrap()[i] {
                        continue;
                    }
                    open += 1;
                    let _ = s.write(&byte);
                }
                if open == 0 {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // Normal clients are served meanwhile.
    for i in 0..20 {
        append_ok(&a, "fast", &format!("f{i}"), None);
    }
    // Every slow connection is closed by the node, without an answer to a request it never
    // finished (an `HTTP/1.1 408` is the most hyper may send).
    wait_for(
        "the node closes every slow connection",
        Duration::from_secs(15),
        || {
            let mut buf = [0u8; 256];
            let mut all = true;
            for (i, s) in slow.iter_mut().enumerate() {
                if closed.lock().unwrap()[i] {
                    continue;
                }
                match s.read(&mut buf) {
                    Ok(0) => closed.lock().unwrap()[i] = true,
                    // hyper may send `408 Request Timeout` before closing; never an answer.
                    Ok(n) => assert!(
                        !String::from_utf8_lossy(&buf[..n]).contains("HTTP/1.1 2"),
                        "a slow client got {:?}",
                        String::from_utf8_lossy(&buf[..n])
                    ),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => all = false,
                    Err(_) => closed.lock().unwrap()[i] = true,
                }
            }
            all.then_some(())
        },
    );
    trickle.join().unwrap();
    assert_eq!(c.read_topic(1, "fast").len(), 20);
}

#[test]
fn connections_past_the_cap_get_429_but_peer_routes_still_answer() {
    let c = Cluster::start(
        1,
        Tuning {
            limits: "connections_max = 4\n",
            ..Tuning::default()
        },
    );
    let a = c.addr(1);
    // Four connections that stay open (keep-alive after one request each) hold every slot.
    // The harness's own connections may not have given theirs back yet: a connection that
    // got 429 is closed by the node, so try again.
    let probe = format!("GET /v1/topics HTTP/1.1\r\nHost: {a}\r\n\r\n");
    let held: Vec<TcpStream> = (0..4)
        .map(|_| {
            wait_for("a connection slot", Duration::from_secs(10), || {
                let mut s = TcpStream::connect(&a).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                s.write_all(probe.as_bytes()).unwrap();
                (read_status(&mut s) == Some(200)).then_some(s)
            })
        })
        .collect();
    let r = get(&a, "/v1/topics").unwrap();
    assert_error_shape("a fifth connection", &r, 429, "overloaded");
    // A supervisor's probe is answered past the cap.
    assert_eq!(get(&a, "/health").unwrap().status, 200);
    assert_eq!(r.body["retryable"], true);
    assert_eq!(
        r.retry_after.as_deref(),
        Some("1"),
        "429 carries Retry-After"
    );
    // A peer route on a connection past the cap still reaches its handler (which refuses a
    // body that is not a vote request).
    let vote = post(&a, "/raft/vote", "{}").unwrap();
    assert_ne!(
        vote.status, 429,
        "peer routes are not subject to the connection cap"
    );
    assert_eq!(vote.status, 400, "{}", vote.text);
    drop(held);
    wait_for(
        "a slot frees when a connection closes",
        Duration::from_secs(10),
        || get(&a, "/v1/topics").ok().filter(|r| r.status == 200),
    );
}

#[test]
fn a_flood_of_writers_past_the_queue_gets_429_and_every_201_is_durable() {
    let mut c = Cluster::start(
        1,
        Tuning {
            limits: "write_queue_max = 4\n",
            ..Tuning::default()
        },
    );
    let a = c.addr(1);
    let rss_before = rss_kib(c.node(1).pid());
    let answers = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..64)
        .map(|w| {
            let a = a.clone();
            let answers = answers.clone();
            std::thread::spawn(move || {
                for i in 0..30 {
                    let uid = format!("w{w}-{i}");
                    let r = post(&a, "/v1/topics/flood/events", &event_body(&uid, None)).unwrap();
                    answers.lock().unwrap().push((uid, r));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let mut accepted = std::collections::BTreeSet::new();
    let mut refused = 0;
    for (uid, r) in &answers {
        match r.status {
            201 => {
                accepted.insert(uid.clone());
            }
            429 => {
                assert_error_shape("a write past the queue", r, 429, "overloaded");
                assert_eq!(r.body["retryable"], true);
                assert!(r.retry_after.is_some(), "429 without Retry-After");
                refused += 1;
            }
            s => panic!("{uid}: {s} {}", r.text),
        }
    }
    assert!(refused > 0, "64 writers never filled a queue of 4");
    assert!(!accepted.is_empty(), "nothing was accepted");
    let rss_after = rss_kib(c.node(1).pid());
    assert!(
        rss_after < rss_before + 128 * 1024,
        "node RSS grew from {rss_before} to {rss_after} KiB in the flood"
    );
    // Every 201 survives kill -9, and nothing refused was written.
    c.kill(1);
    c.restart(1);
    c.wait_leader(&[1]);
    let kept: std::collections::BTreeSet<String> = c
        .read_topic(1, "flood")
        .iter()
        .map(|e| e["data"]["uid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kept, accepted, "the log differs from the 201s");
}

/// A single voter, whose leader reports its own appends flushed before the fsync ends
/// (raft_store::LocalDurable), killed with -9 in the middle of a load three times: it must
/// start again each time and hold every write it acknowledged, where the answer said. (kill -9
/// keeps what reached the kernel; the simulator's power cuts test what the disk loses:
/// `sim-tests/tests/basic.rs`, a single voter power-cut under load.)
#[test]
fn a_single_node_killed_under_load_restarts_with_every_201() {
    let mut c = Cluster::start(1, Tuning::default());
    for _ in 0..3 {
        let load = Load::start(vec![c.addr(1)], "solo", 16);
        load.wait_more(300);
        c.kill(1);
        let (acks, _) = load.stop();
        c.restart(1);
        c.wait_leader(&[1]);
        assert_acked_present(&c, &[1], "solo", &acks);
    }
}
