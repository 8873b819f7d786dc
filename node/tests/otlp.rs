//! OTLP export (the `otlp` feature): a node started with `OTEL_EXPORTER_OTLP_ENDPOINT` sends
//! its request spans to that collector, and a forwarded write shows up as a span on the node
//! that received it and one on the leader, sharing the request id.
//! Run with `cargo nextest run -p node --features otlp --test otlp` (scripts/test.sh does).
#![cfg(feature = "otlp")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Every export received: its path and JSON body.
type Exports = Arc<Mutex<Vec<(String, Value)>>>;

/// A stand-in collector: answers every OTLP/HTTP export 200 and keeps the JSON bodies.
fn collector() -> (String, Exports) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let got: Exports = Arc::default();
    let keep = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let keep = keep.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut out = stream;
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        reader.read_line(&mut line).unwrap();
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                length = v.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
                    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    keep.lock().unwrap().push((path, json));
                    let _ = out.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
                    );
                }
            });
        }
    });
    (addr, got)
}

/// Every span in the exports so far: (name, attributes as key -> string value).
fn spans(got: &[(String, Value)]) -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    for (_, body) in got {
        for rs in body["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    let attrs = s["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| {
                            let v = &a["value"];
                            let v = v["stringValue"]
                                .as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string());
                            (a["key"].as_str().unwrap_or("").to_string(), v)
                        })
                        .collect();
                    out.push((s["name"].as_str().unwrap_or("").to_string(), attrs));
                }
            }
        }
    }
    out
}

#[test]
fn request_spans_reach_the_collector_from_the_receiving_node_and_the_leader() {
    let (addr, got) = collector();
    let mut c = Cluster::prepare(3, Tuning::default(), None, None);
    c.node_env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            format!("http://{addr}"),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/json".into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
    ];
    c.boot();
    let leader = c.wait_leader(&[1, 2, 3]);
    let via = (1..=3).find(|n| *n != leader).unwrap();
    let id = "otlp-trace-1";
    let r = post_with_headers(
        &c.addr(via),
        "/v1/topics/o/events",
        &event_body("o1", None),
        &[("x-request-id", id)],
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let paths = wait_for(
        "both request spans at the collector",
        Duration::from_secs(20),
        || {
            let got = got.lock().unwrap();
            let mut paths: Vec<String> = spans(&got)
                .into_iter()
                .filter(|(name, attrs)| {
                    name == "request" && attrs.iter().any(|(k, v)| k == "id" && v == id)
                })
                .filter_map(|(_, attrs)| {
                    attrs.into_iter().find(|(k, _)| k == "path").map(|(_, v)| v)
                })
                .collect();
            paths.sort();
            (paths.len() >= 2).then_some(paths)
        },
    );
    assert_eq!(paths, ["/internal/v1/leader", "/v1/topics/o/events"]);
    assert!(got
        .lock()
        .unwrap()
        .iter()
        .all(|(path, _)| path == "/v1/traces"));
}
