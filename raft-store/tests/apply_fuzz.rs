//! Property test: apply on arbitrary command sequences. Commands are drawn with no regard for
//! what the API would let through (events without streams under uniq rules, data that is not
//! JSON, claims for sets that do not exist, stale rules versions, forged backfills), as a
//! faulty or hostile proposer could put them in the log. For every sequence:
//! - apply never panics and never fails: a bad command is an outcome, not a storage error
//!   (which would stop the node, on every node at once);
//! - apply is deterministic: the same entries on two fresh stores give the same outcomes and
//!   byte-equal state;
//! - batching changes nothing but log positions: one request per entry, or several, gives
//!   the same outcomes, events, stream versions and uniq owners (at equal log times: the
//!   idempotency window is measured in log time, which is per entry);
//! - every topic's offsets run 0..len without a gap, and no uniq key has two open claims;
//! - checkpoints change nothing: checkpointing the state file after every entry or two (in the
//!   background, as always) gives the same state, and so does a crash after any entry, with
//!   the entries after the last checkpoint applied again from the log, as openraft does at
//!   start-up: they give the same answers the second time.
#![cfg(not(madsim))]

use std::collections::BTreeMap;

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use proptest::prelude::*;
use raft_store::rules::{Rules, UniqOp};
use raft_store::{
    AppendRequest, Backfill, BackfillClaim, ExpectedVersion, IdempotencyKey, LogCommand, NewEvent,
    Outcome, Request, SetRules, Storage, TypeConfig, UniqClaim,
};
use serde_json::Value;

const TOPICS: &[&str] = &["t", "u"];
const STREAMS: &[&str] = &["s0", "s1", "s2"];
const KEYS: &[&str] = &["k0", "k1", "k2"];
const SETS: &[&str] = &["u", "v", "missing"];

fn rule_sets() -> Vec<Rules> {
    let a = r#"
        [[uniq]]
        name = "u"
        topic = "t"
        [[uniq.rule]]
        event = "C"
        op = "create"
        key = "/k"
        [[uniq.rule]]
        event = "U"
        op = "update"
        old_key = "/o"
        key = "/k"
        [[uniq.rule]]
        event = "D"
        op = "delete"
        key = "/k"
    "#;
    let b = r#"
        [[uniq]]
        name = "v"
        topic = "u"
        normalize = "lowercase"
        [[uniq.rule]]
        event = "C"
        op = "create"
        key = "/k"
        [idempotency]
        window_ms = 5
        records_max = 2
    "#;
    vec![
        toml::from_str(a).unwrap(),
        toml::from_str(b).unwrap(),
        Rules::default(),
    ]
}

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(items)
}

fn json_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("{}".to_string()),
        4 => pick(KEYS).prop_map(|k| format!(r#"{{"k":"{k}","o":"k0"}}"#)),
        1 => Just(r#"{"k":"a","k":"b"}"#.to_string()),
        1 => Just("[1]".to_string()),
        1 => Just("not json".to_string()),
        1 => any::<String>(),
    ]
}

fn claim() -> impl Strategy<Value = UniqClaim> {
    (
        pick(SETS),
        pick(&[UniqOp::Create, UniqOp::Update, UniqOp::Delete]),
        pick(KEYS),
        proptest::option::of(pick(KEYS)),
    )
        .prop_map(|(set, op, key, old_key)| UniqClaim {
            set: set.into(),
            op,
            key: key.into(),
            old_key: old_key.map(Into::into),
        })
}

/// An event whose claim fits rule set `u` (topic `t`), as a well-behaved node prepares it.
fn fitting_event() -> impl Strategy<Value = NewEvent> {
    (
        pick(&[UniqOp::Create, UniqOp::Update, UniqOp::Delete]),
        pick(STREAMS),
        pick(KEYS),
        pick(KEYS),
    )
        .prop_map(|(op, stream, key, old)| {
            let (ty, old_key) = match op {
                UniqOp::Create => ("C", None),
                UniqOp::Update => ("U", Some(old.to_string())),
                UniqOp::Delete => ("D", None),
            };
            NewEvent {
                event_type: ty.into(),
                stream: Some(stream.into()),
                data: format!(r#"{{"k":"{key}","o":"{old}"}}"#),
                metadata: None,
                claims: vec![UniqClaim {
                    set: "u".into(),
                    op,
                    key: key.into(),
                    old_key,
                }],
                secret: None,
            }
        })
}

fn event() -> impl Strategy<Value = NewEvent> {
    prop_oneof![fitting_event(), any_event()]
}

fn any_event() -> impl Strategy<Value = NewEvent> {
    (
        pick(&["C", "U", "D", "X"]),
        proptest::option::of(pick(STREAMS)),
        json_text(),
        proptest::option::of(json_text()),
        prop::collection::vec(claim(), 0..3),
        proptest::option::of(json_text()),
    )
        .prop_map(|(ty, stream, data, metadata, claims, secret)| NewEvent {
            event_type: ty.into(),
            stream: stream.map(Into::into),
            data,
            metadata,
            claims,
            secret,
        })
}

fn expected() -> impl Strategy<Value = ExpectedVersion> {
    prop_oneof![
        Just(ExpectedVersion::Any),
        Just(ExpectedVersion::NoStream),
        (0u64..4).prop_map(ExpectedVersion::Exact),
    ]
}

/// A rules version: mostly one that can be in force early in a sequence.
fn version() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..2, 1 => 0u64..5]
}

fn append() -> impl Strategy<Value = Request> {
    (
        prop_oneof![3 => Just("t"), 1 => pick(TOPICS)],
        prop::collection::vec(event(), 0..4),
        prop::collection::btree_map(pick(STREAMS).prop_map(String::from), expected(), 0..2),
        proptest::option::of((pick(&["i0", "i1", "i2"]), pick(&["f0", "f1"]))),
        version(),
        proptest::option::of(Just("reply".to_string())),
    )
        .prop_map(
            |(topic, events, expected_version, idem, rules_version, reply)| {
                Request::Append(AppendRequest {
                    topic: topic.into(),
                    events,
                    expected_version,
                    idempotency: idem.map(|(key, fp)| IdempotencyKey {
                        key: key.into(),
                        fingerprint: fp.into(),
                    }),
                    rules_version,
                    reply,
                })
            },
        )
}

fn set_rules() -> impl Strategy<Value = Request> {
    let backfill = (
        pick(SETS),
        0u64..3,
        prop::collection::vec(
            (0u64..4, pick(STREAMS), claim()).prop_map(|(offset, stream, claim)| BackfillClaim {
                offset,
                stream: stream.into(),
                claim,
            }),
            0..3,
        ),
    )
        .prop_map(|(set, topic_len, claims)| Backfill {
            set: set.into(),
            topic_len,
            claims,
        });
    (
        version(),
        0..rule_sets().len(),
        prop::collection::vec(backfill, 0..2),
    )
        .prop_map(|(base_version, rules, backfill)| {
            Request::SetRules(SetRules {
                base_version,
                rules: rule_sets()[rules].clone(),
                backfill,
            })
        })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![6 => append(), 1 => set_rules()]
}

/// What one store made of a sequence, with log positions and times left out.
#[derive(Debug, PartialEq)]
struct Seen {
    outcomes: Vec<Outcome>,
    topics: BTreeMap<String, Vec<Value>>,
    streams: BTreeMap<String, u64>,
    owners: BTreeMap<(String, String), Option<String>>,
    dump: Vec<u8>,
}

/// How log time moves: a step per entry lets idempotency records expire; a stopped clock makes
/// runs with different batchings see the same times.
#[derive(Clone, Copy)]
enum Clock {
    StepPerEntry,
    Stopped,
}

fn entry(index: u64, requests: Vec<Request>, clock: Clock) -> Entry<TypeConfig> {
    let timestamp_ms = match clock {
        Clock::StepPerEntry => 1_000 + 3 * index,
        Clock::Stopped => 1_000,
    };
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(LogCommand {
            timestamp_ms,
            requests: requests.into(),
        }),
    }
}

/// How often the state file is checkpointed, and after which entry the node crashes.
#[derive(Clone, Copy, Default)]
struct Checkpoints {
    every: Option<u64>,
    crash_after: Option<usize>,
}

/// Open the store in `dir`, waiting for the last one's background checkpoint to let go of
/// the state file (a crashed process would have let go at once).
async fn reopen(dir: &std::path::Path) -> Storage {
    loop {
        match Storage::open(dir) {
            Ok(s) => return s,
            Err(e) if e.to_string().contains("already open") => {
                tokio::task::yield_now().await;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) => panic!("reopen: {e}"),
        }
    }
}

/// Apply `requests` grouped into entries of `sizes` (cycled), and read everything back.
fn apply_all(requests: &[Request], sizes: &[usize], clock: Clock) -> Result<Seen, TestCaseError> {
    apply_all_checkpointed(requests, sizes, clock, Checkpoints::default())
}

fn apply_all_checkpointed(
    requests: &[Request],
    sizes: &[usize],
    clock: Clock,
    checkpoints: Checkpoints,
) -> Result<Seen, TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async move {
        use openraft::storage::RaftStateMachine;
        let dir = tempfile::TempDir::new().unwrap();
        let mut storage = Storage::open(dir.path()).unwrap();
        if let Some(every) = checkpoints.every {
            storage.checkpoint_every(every);
        }
        let mut applied = Vec::new();
        let mut answered = Vec::new();
        let mut outcomes = Vec::new();
        let mut rest = requests;
        for (index, size) in (1..).zip(sizes.iter().cycle()) {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at((*size).clamp(1, rest.len()));
            rest = later;
            let e = entry(index, now.to_vec(), clock);
            applied.push(e.clone());
            let answers = storage.log_and_apply(vec![e]).await;
            let answers = answers.map_err(|e| TestCaseError::fail(format!("apply failed: {e}")))?;
            answered.push(answers.clone());
            if checkpoints.crash_after == Some(applied.len()) {
                // The layers in memory are lost; the state file is at its last checkpoint.
                drop(storage);
                storage = reopen(dir.path()).await;
                let mut sm = storage.state_machine.clone();
                let (last, _) = sm.applied_state().await.unwrap();
                let from = last.map_or(0, |l| l.index as usize);
                for (e, before) in applied[from..].iter().zip(&answered[from..]) {
                    let again = sm.apply(vec![e.clone()]).await.unwrap();
                    prop_assert_eq!(
                        &again,
                        before,
                        "entry {} answered differently",
                        e.log_id.index
                    );
                }
            }
            prop_assert_eq!(answers.len(), 1);
            prop_assert_eq!(answers[0].outcomes.len(), now.len());
            outcomes.extend(answers[0].outcomes.iter().map(|o| match &o.outcome {
                Outcome::Appended {
                    first_offset,
                    last_offset,
                    ..
                } => Outcome::Appended {
                    first_offset: *first_offset,
                    last_offset: *last_offset,
                    log_index: 0,
                },
                other => other.clone(),
            }));
        }
        let reader = &storage.reader;
        let mut topics = BTreeMap::new();
        for (topic, len) in reader.topics().unwrap() {
            let page = reader.read_topic(&topic, 0, usize::MAX).unwrap();
            prop_assert_eq!(page.events.len() as u64, len, "topic {}", topic);
            let mut events = Vec::new();
            for (offset, text) in page.events.iter().enumerate() {
                let mut e: Value = serde_json::from_str(text).unwrap();
                prop_assert_eq!(
                    &e["offset"],
                    &Value::from(offset as u64),
                    "a gap in {}",
                    topic
                );
                let o = e.as_object_mut().unwrap();
                o.remove("log_index");
                o.remove("timestamp");
                events.push(e);
            }
            topics.insert(topic, events);
        }
        let mut streams = BTreeMap::new();
        for stream in STREAMS {
            let page = reader.read_stream(stream, 0, usize::MAX).unwrap();
            streams.insert(stream.to_string(), page.events.len() as u64);
        }
        let mut owners = BTreeMap::new();
        for set in SETS {
            for key in KEYS {
                let owner = reader.uniq_owner(set, key).unwrap().map(|(o, _)| o);
                let open: Vec<String> = reader
                    .uniq_history(set, key)
                    .unwrap()
                    .into_iter()
                    .filter(|(_, _, released)| released.is_none())
                    .map(|(o, _, _)| o)
                    .collect();
                prop_assert!(
                    open.len() <= 1,
                    "{}/{} has open claims {:?}",
                    set,
                    key,
                    open
                );
                prop_assert_eq!(
                    open.first(),
                    owner.as_ref(),
                    "{}/{}: history and owner",
                    set,
                    key
                );
                owners.insert((set.to_string(), key.to_string()), owner);
            }
        }
        let dump = reader.canonical_dump().unwrap();
        Ok(Seen {
            outcomes,
            topics,
            streams,
            owners,
            dump,
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn apply_is_total_deterministic_and_indifferent_to_batching(
        requests in prop::collection::vec(request(), 1..40),
        sizes in prop::collection::vec(1usize..6, 1..5),
        every in 1u64..4,
        crash_after in any::<u16>(),
    ) {
        let first = apply_all(&requests, &sizes, Clock::StepPerEntry)?;
        let again = apply_all(&requests, &sizes, Clock::StepPerEntry)?;
        prop_assert_eq!(&first, &again, "the same entries gave different states");
        let crash_after = (crash_after as usize) % requests.len().max(1) + 1;
        let checkpointed = apply_all_checkpointed(
            &requests,
            &sizes,
            Clock::StepPerEntry,
            Checkpoints { every: Some(every), crash_after: Some(crash_after) },
        )?;
        prop_assert_eq!(&first, &checkpointed, "checkpoints changed the state");
        let one_each = apply_all(&requests, &[1], Clock::Stopped)?;
        let batched = apply_all(&requests, &sizes, Clock::Stopped)?;
        prop_assert_eq!(&one_each.outcomes, &batched.outcomes);
        prop_assert_eq!(&one_each.topics, &batched.topics);
        prop_assert_eq!(&one_each.streams, &batched.streams);
        prop_assert_eq!(&one_each.owners, &batched.owners);
    }
}
