//! Apply, driven through openraft's `RaftStateMachine` trait with hand-built entries.
#![cfg(not(madsim))]

use std::collections::BTreeMap;

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};
use raft_store::{
    AppendRequest, Conflict, ExpectedVersion, LogCommand, NewEvent, Outcome, Rejection, Request,
    Storage, TypeConfig,
};
use serde_json::Value;
use tempfile::TempDir;

struct Fixture {
    _dir: TempDir,
    storage: Storage,
    next_index: u64,
}

impl Fixture {
    fn new() -> Self {
        let dir = TempDir::new().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        Fixture {
            _dir: dir,
            storage,
            next_index: 1,
        }
    }

    fn entry(&mut self, timestamp_ms: u64, requests: Vec<Request>) -> Entry<TypeConfig> {
        let index = self.next_index;
        self.next_index += 1;
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(LogCommand {
                timestamp_ms,
                requests: requests.into(),
            }),
        }
    }

    async fn apply(&mut self, timestamp_ms: u64, requests: Vec<Request>) -> Vec<Outcome> {
        let e = self.entry(timestamp_ms, requests);
        let mut out = self.storage.log_and_apply(vec![e]).await.unwrap();
        assert_eq!(out.len(), 1, "one response per entry");
        out.pop()
            .unwrap()
            .outcomes
            .into_iter()
            .map(|a| a.outcome)
            .collect()
    }

    async fn apply_one(&mut self, req: Request) -> Outcome {
        let mut o = self.apply(1_000, vec![req]).await;
        assert_eq!(o.len(), 1, "one outcome per request");
        o.pop().unwrap()
    }

    fn events(&self, topic: &str) -> Vec<Value> {
        let page = self.storage.reader.read_topic(topic, 0, 10_000).unwrap();
        page.events
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect()
    }
}

fn ev(event_type: &str, stream: Option<&str>) -> NewEvent {
    NewEvent {
        event_type: event_type.into(),
        stream: stream.map(Into::into),
        data: r#"{"n":1}"#.into(),
        metadata: None,
        claims: vec![],
        secret: None,
    }
}

fn append(topic: &str, events: Vec<NewEvent>, expected: &[(&str, ExpectedVersion)]) -> Request {
    Request::Append(AppendRequest {
        topic: topic.into(),
        events,
        expected_version: expected
            .iter()
            .map(|(s, v)| (s.to_string(), *v))
            .collect::<BTreeMap<_, _>>(),
        idempotency: None,
        rules_version: 0,
        reply: None,
    })
}

#[tokio::test]
async fn offsets_are_consecutive_and_per_topic() {
    let mut f = Fixture::new();
    let a = f
        .apply_one(append("a", vec![ev("X", None), ev("Y", None)], &[]))
        .await;
    let b = f.apply_one(append("b", vec![ev("X", None)], &[])).await;
    let a2 = f.apply_one(append("a", vec![ev("Z", None)], &[])).await;
    assert_eq!(
        a,
        Outcome::Appended {
            first_offset: 0,
            last_offset: 1,
            log_index: 1
        }
    );
    assert_eq!(
        b,
        Outcome::Appended {
            first_offset: 0,
            last_offset: 0,
            log_index: 2
        }
    );
    assert_eq!(
        a2,
        Outcome::Appended {
            first_offset: 2,
            last_offset: 2,
            log_index: 3
        }
    );
    let offsets: Vec<u64> = f
        .events("a")
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![0, 1, 2]);
    let types: Vec<String> = f
        .events("a")
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, vec!["X", "Y", "Z"]);
    assert_eq!(
        f.storage.reader.topics().unwrap(),
        vec![("a".to_string(), 3), ("b".to_string(), 1)]
    );
}

#[tokio::test]
async fn events_carry_topic_offset_log_index_and_log_time() {
    let mut f = Fixture::new();
    f.apply(5_000, vec![append("t", vec![ev("A", Some("s-1"))], &[])])
        .await;
    let e = &f.events("t")[0];
    assert_eq!(e["topic"], "t");
    assert_eq!(e["offset"], 0);
    assert_eq!(e["log_index"], 1);
    assert_eq!(e["timestamp"], 5_000);
    assert_eq!(e["stream"], "s-1");
    assert_eq!(e["data"], serde_json::json!({"n": 1}));
}

#[tokio::test]
async fn log_time_never_goes_backwards() {
    let mut f = Fixture::new();
    f.apply(5_000, vec![append("t", vec![ev("A", None)], &[])])
        .await;
    // A new leader with a slower clock proposes an older timestamp.
    f.apply(4_000, vec![append("t", vec![ev("B", None)], &[])])
        .await;
    f.apply(6_000, vec![append("t", vec![ev("C", None)], &[])])
        .await;
    let times: Vec<u64> = f
        .events("t")
        .iter()
        .map(|e| e["timestamp"].as_u64().unwrap())
        .collect();
    assert_eq!(times, vec![5_000, 5_000, 6_000]);
}

#[tokio::test]
async fn expected_version_checks_every_named_stream() {
    use ExpectedVersion::*;
    let mut f = Fixture::new();
    assert!(matches!(
        f.apply_one(append("u", vec![ev("A", Some("s1"))], &[("s1", NoStream)]))
            .await,
        Outcome::Appended { .. }
    ));
    // s1 has version 1 now; exact match passes, no_stream fails.
    assert!(matches!(
        f.apply_one(append("u", vec![ev("B", Some("s1"))], &[("s1", Exact(1))]))
            .await,
        Outcome::Appended { .. }
    ));
    assert_eq!(
        f.apply_one(append("u", vec![ev("C", Some("s1"))], &[("s1", NoStream)]))
            .await,
        Outcome::Conflict(Conflict::Version {
            stream: "s1".into(),
            expected: NoStream,
            actual: 2
        })
    );
    // A stream named only in expected_version is still checked, and the request fails
    // as a whole even though its own event's stream would pass.
    assert_eq!(
        f.apply_one(append(
            "u",
            vec![ev("D", Some("s2"))],
            &[("s2", NoStream), ("s1", Exact(7))]
        ))
        .await,
        Outcome::Conflict(Conflict::Version {
            stream: "s1".into(),
            expected: Exact(7),
            actual: 2
        })
    );
    // `any` never conflicts; several streams pass together.
    assert!(matches!(
        f.apply_one(append(
            "u",
            vec![ev("E", Some("s2")), ev("F", Some("s1"))],
            &[("s1", Any), ("s2", NoStream), ("s3", NoStream)]
        ))
        .await,
        Outcome::Appended {
            first_offset: 2,
            last_offset: 3,
            ..
        }
    ));
    assert_eq!(
        f.storage
            .reader
            .read_stream("s1", 0, 100)
            .unwrap()
            .events
            .len(),
        3
    );
    assert_eq!(
        f.storage
            .reader
            .read_stream("s2", 0, 100)
            .unwrap()
            .events
            .len(),
        1
    );
    // s3 was only named: it was not created.
    assert_eq!(
        f.apply_one(append("u", vec![ev("G", None)], &[("s3", Exact(0))]))
            .await,
        Outcome::Appended {
            first_offset: 4,
            last_offset: 4,
            log_index: 6
        }
    );
}

#[tokio::test]
async fn multi_event_append_is_all_or_nothing() {
    use ExpectedVersion::*;
    let mut f = Fixture::new();
    f.apply_one(append("u", vec![ev("A", Some("s1"))], &[]))
        .await;
    let out = f
        .apply_one(append(
            "u",
            vec![
                ev("B", Some("s2")),
                ev("C", Some("s2")),
                ev("D", Some("s1")),
            ],
            &[("s2", NoStream), ("s1", NoStream)],
        ))
        .await;
    assert!(matches!(out, Outcome::Conflict(Conflict::Version { .. })));
    // Nothing changed except last_applied: compare the data tables through the reader.
    assert_eq!(f.events("u").len(), 1);
    assert_eq!(
        f.storage
            .reader
            .read_stream("s2", 0, 10)
            .unwrap()
            .events
            .len(),
        0
    );
    assert_eq!(
        f.storage.reader.topics().unwrap(),
        vec![("u".to_string(), 1)]
    );
}

#[tokio::test]
async fn a_stream_belongs_to_the_topic_of_its_first_event() {
    let mut f = Fixture::new();
    f.apply_one(append("users", vec![ev("A", Some("user-1"))], &[]))
        .await;
    assert_eq!(
        f.apply_one(append("orders", vec![ev("B", Some("user-1"))], &[]))
            .await,
        Outcome::Rejected(Rejection::StreamInOtherTopic {
            stream: "user-1".into(),
            topic: "users".into()
        })
    );
    assert_eq!(
        f.apply_one(append(
            "orders",
            vec![ev("B", None)],
            &[("user-1", ExpectedVersion::Any)]
        ))
        .await,
        Outcome::Rejected(Rejection::StreamInOtherTopic {
            stream: "user-1".into(),
            topic: "users".into()
        })
    );
    assert!(f.events("orders").is_empty());
}

#[tokio::test]
async fn each_request_of_a_batched_entry_is_decided_on_its_own() {
    let mut f = Fixture::new();
    let out = f
        .apply(
            1,
            vec![
                append(
                    "t",
                    vec![ev("A", Some("s"))],
                    &[("s", ExpectedVersion::NoStream)],
                ),
                append(
                    "t",
                    vec![ev("B", Some("s"))],
                    &[("s", ExpectedVersion::NoStream)],
                ),
                append(
                    "t",
                    vec![ev("C", Some("s"))],
                    &[("s", ExpectedVersion::Exact(1))],
                ),
            ],
        )
        .await;
    assert!(matches!(
        out[0],
        Outcome::Appended {
            first_offset: 0,
            ..
        }
    ));
    assert!(matches!(out[1], Outcome::Conflict(_)));
    assert!(matches!(
        out[2],
        Outcome::Appended {
            first_offset: 1,
            ..
        }
    ));
}

#[tokio::test]
async fn invalid_event_data_is_rejected_deterministically() {
    let mut f = Fixture::new();
    let mut bad = ev("A", None);
    bad.data = "[1,2]".into();
    assert!(matches!(
        f.apply_one(append("t", vec![ev("ok", None), bad], &[]))
            .await,
        Outcome::Rejected(Rejection::InvalidEvent { index: 1, .. })
    ));
    assert!(matches!(
        f.apply_one(append("t", vec![], &[])).await,
        Outcome::Rejected(Rejection::InvalidEvent { .. })
    ));
    assert!(f.events("t").is_empty());
}

fn workload(seed: u64) -> Vec<Vec<Request>> {
    // A small deterministic mix of appends, conflicts and rejections over a few streams.
    let mut x = seed;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..200)
        .map(|_| {
            (0..(next() % 3 + 1))
                .map(|_| {
                    let topic = ["a", "b"][(next() % 2) as usize];
                    let stream = format!("s{}", next() % 6);
                    let expected = match next() % 4 {
                        0 => ExpectedVersion::Any,
                        1 => ExpectedVersion::NoStream,
                        _ => ExpectedVersion::Exact(next() % 4),
                    };
                    append(
                        topic,
                        vec![ev("E", Some(&stream)), ev("F", None)],
                        &[(&stream, expected)],
                    )
                })
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn same_entries_on_two_fresh_stores_give_equal_dumps() {
    let (mut a, mut b) = (Fixture::new(), Fixture::new());
    let batches = workload(0x9E37_79B9_7F4A_7C15);
    // The same entries, applied in differently sized batches.
    let entries_a: Vec<_> = batches
        .iter()
        .enumerate()
        .map(|(i, r)| a.entry(i as u64 * 10, r.clone()))
        .collect();
    let entries_b: Vec<_> = batches
        .iter()
        .enumerate()
        .map(|(i, r)| b.entry(i as u64 * 10, r.clone()))
        .collect();
    let ra = a.storage.log_and_apply(entries_a).await.unwrap();
    let mut rb = Vec::new();
    for chunk in entries_b.chunks(7) {
        rb.extend(b.storage.log_and_apply(chunk.to_vec()).await.unwrap());
    }
    assert_eq!(ra, rb, "same outcomes");
    let conflicts = ra
        .iter()
        .flat_map(|r| &r.outcomes)
        .filter(|o| matches!(o.outcome, Outcome::Conflict(_)))
        .count();
    let appended = ra
        .iter()
        .flat_map(|r| &r.outcomes)
        .filter(|o| matches!(o.outcome, Outcome::Appended { .. }))
        .count();
    assert!(
        conflicts > 0 && appended > 0,
        "the workload exercises both paths"
    );
    assert!(
        a.storage.reader.canonical_dump().unwrap() == b.storage.reader.canonical_dump().unwrap(),
        "canonical dumps differ"
    );
}

#[tokio::test]
async fn snapshot_installed_elsewhere_reproduces_the_state() {
    let (mut a, b) = (Fixture::new(), Fixture::new());
    for batch in workload(7) {
        a.apply(1, batch).await;
    }
    let snap = a
        .storage
        .state_machine
        .clone()
        .build_snapshot()
        .await
        .unwrap();
    let mut sm_b = b.storage.state_machine.clone();
    let mut rx = sm_b.begin_receiving_snapshot().await.unwrap();
    // Copy the bytes the way a transfer would, through the receiving file.
    let mut src = snap.snapshot;
    tokio::io::copy(&mut src, &mut rx).await.unwrap();
    sm_b.install_snapshot(&snap.meta, rx).await.unwrap();
    assert!(
        a.storage.reader.canonical_dump().unwrap() == b.storage.reader.canonical_dump().unwrap(),
        "canonical dumps differ"
    );
    assert_eq!(sm_b.applied_state().await.unwrap().0, snap.meta.last_log_id,);
    assert!(!b.events("a").is_empty());
}

/// The log is the event store: the state file holds no copy of an event or its secret, and
/// events stay readable, with their secrets, after openraft purges the log behind a snapshot.
#[tokio::test]
async fn events_are_read_from_the_log_even_behind_a_purge() {
    use openraft::storage::RaftLogStorage;
    let mut f = Fixture::new();
    let mut marked = ev("Marked", Some("s1"));
    marked.data = r#"{"marker":"needle-in-the-log-4711"}"#.into();
    marked.secret = Some(r#"{"hash":"secret-needle-0815"}"#.into());
    f.apply_one(append("m", vec![ev("A", None), marked], &[]))
        .await;
    for i in 0..20 {
        f.apply_one(append("m", vec![ev(&format!("N{i}"), None)], &[]))
            .await;
    }
    let before = f.events("m");
    assert_eq!(before.len(), 22);
    assert_eq!(before[1]["data"]["marker"], "needle-in-the-log-4711");
    let last = LogId::new(CommittedLeaderId::new(1, 1), f.next_index - 1);
    f.storage.log.clone().purge(last).await.unwrap();
    assert_eq!(f.events("m"), before, "events behind the purge point");
    assert_eq!(
        f.storage
            .reader
            .read_stream("s1", 0, 10)
            .unwrap()
            .events
            .len(),
        1
    );
    assert_eq!(
        f.storage.reader.event_secret("m", 1).unwrap().as_deref(),
        Some(r#"{"hash":"secret-needle-0815"}"#)
    );
    assert_eq!(f.storage.reader.event_secret("m", 0).unwrap(), None);
    let state = std::fs::read(f._dir.path().join(raft_store::DATA_FILE)).unwrap();
    for needle in ["needle-in-the-log-4711", "secret-needle-0815"] {
        assert!(
            !state.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "the state file holds a copy of {needle}"
        );
    }
}

/// Apply refuses entries with requests that the log has not made durable: their events would
/// be read from there, and a state file made durable ahead of the log could point at nothing.
#[tokio::test]
async fn apply_refuses_entries_the_log_does_not_hold() {
    use openraft::storage::RaftStateMachine;
    let mut f = Fixture::new();
    let e = f.entry(1_000, vec![append("t", vec![ev("X", None)], &[])]);
    let err = f
        .storage
        .state_machine
        .clone()
        .apply([e.clone()])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("entry 1"), "{err}");
    assert_eq!(f.storage.reader.topic_len("t").unwrap(), 0);
    f.storage.log_and_apply(vec![e]).await.unwrap();
    assert_eq!(f.storage.reader.topic_len("t").unwrap(), 1);
}
