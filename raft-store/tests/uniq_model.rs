//! Property test: uniq sets after random create/update/delete requests (random owners,
//! colliding keys, several events per request) always equal a simple reference model; no key
//! has two owners; a refused request changes nothing.
#![cfg(not(madsim))]

use std::collections::BTreeMap;

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use proptest::prelude::*;
use raft_store::rules::{Rules, UniqOp};
use raft_store::{
    AppendRequest, LogCommand, NewEvent, Outcome, Request, SetRules, Storage, TypeConfig, UniqClaim,
};

const KEYS: &[&str] = &["k0", "k1", "k2", "k3"];
const STREAMS: &[&str] = &["s0", "s1", "s2"];

fn rules() -> Rules {
    toml::from_str(
        r#"
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
        "#,
    )
    .unwrap()
}

#[derive(Debug, Clone)]
struct Ev {
    op: UniqOp,
    stream: usize,
    key: usize,
    old: usize,
}

fn ev() -> impl Strategy<Value = Ev> {
    (
        prop_oneof![
            Just(UniqOp::Create),
            Just(UniqOp::Update),
            Just(UniqOp::Delete)
        ],
        0..STREAMS.len(),
        0..KEYS.len(),
        0..KEYS.len(),
    )
        .prop_map(|(op, stream, key, old)| Ev {
            op,
            stream,
            key,
            old,
        })
}

fn to_event(e: &Ev) -> NewEvent {
    let (ty, old_key) = match e.op {
        UniqOp::Create => ("C", None),
        UniqOp::Update => ("U", Some(KEYS[e.old].to_string())),
        UniqOp::Delete => ("D", None),
    };
    NewEvent {
        event_type: ty.into(),
        stream: Some(STREAMS[e.stream].into()),
        data: "{}".into(),
        metadata: None,
        claims: vec![UniqClaim {
            set: "u".into(),
            op: e.op,
            key: KEYS[e.key].into(),
            old_key,
        }],
        secret: None,
    }
}

/// The reference: apply a request's events in order to a copy; any refusal leaves the model
/// as it was.
fn model_apply(
    model: &BTreeMap<&'static str, &'static str>,
    req: &[Ev],
) -> Option<BTreeMap<&'static str, &'static str>> {
    let mut m = model.clone();
    for e in req {
        let (stream, key) = (STREAMS[e.stream], KEYS[e.key]);
        match e.op {
            UniqOp::Create => match m.get(key) {
                Some(o) if *o != stream => return None,
                Some(_) => {}
                None => {
                    m.insert(key, stream);
                }
            },
            UniqOp::Update => {
                let old = KEYS[e.old];
                if m.get(old) != Some(&stream) {
                    return None;
                }
                if old != key {
                    match m.get(key) {
                        Some(o) if *o != stream => return None,
                        _ => {}
                    }
                    m.remove(old);
                    m.insert(key, stream);
                }
            }
            UniqOp::Delete => {
                if m.get(key) != Some(&stream) {
                    return None;
                }
                m.remove(key);
            }
        }
    }
    Some(m)
}

fn entry(index: u64, req: Request) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(LogCommand {
            timestamp_ms: index,
            requests: vec![req].into(),
        }),
    }
}

fn run(requests: Vec<Vec<Ev>>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::TempDir::new().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let set = Request::SetRules(SetRules {
            base_version: 0,
            rules: rules(),
            backfill: vec![],
        });
        let r = storage.log_and_apply(vec![entry(1, set)]).await.unwrap();
        prop_assert_eq!(&r[0].outcomes[0].outcome, &Outcome::RulesSet { version: 1 });
        let mut model = BTreeMap::new();
        let mut appended = 0u64;
        for (i, req) in requests.iter().enumerate() {
            let append = Request::Append(AppendRequest {
                topic: "t".into(),
                events: req.iter().map(to_event).collect(),
                expected_version: Default::default(),
                idempotency: None,
                rules_version: 1,
                reply: None,
            });
            let out = storage
                .log_and_apply(vec![entry(i as u64 + 2, append)])
                .await
                .unwrap();
            let outcome = &out[0].outcomes[0].outcome;
            match model_apply(&model, req) {
                Some(next) => {
                    prop_assert!(
                        matches!(outcome, Outcome::Appended { .. }),
                        "expected append, got {:?} for {:?}",
                        outcome,
                        req
                    );
                    model = next;
                    appended += req.len() as u64;
                }
                None => prop_assert!(
                    matches!(outcome, Outcome::Conflict(_)),
                    "expected conflict, got {:?} for {:?}",
                    outcome,
                    req
                ),
            }
            // The set equals the model; a refused request appended nothing.
            for key in KEYS {
                let owner = storage.reader.uniq_owner("u", key).unwrap().map(|(o, _)| o);
                prop_assert_eq!(
                    owner.as_deref(),
                    model.get(key).copied(),
                    "owner of {}",
                    key
                );
            }
            prop_assert_eq!(storage.reader.topic_len("t").unwrap(), appended);
        }
        // History is consistent with the owners: at most one open claim per key, and it is
        // the current owner's.
        for key in KEYS {
            let open: Vec<String> = storage
                .reader
                .uniq_history("u", key)
                .unwrap()
                .into_iter()
                .filter(|(_, _, released)| released.is_none())
                .map(|(o, _, _)| o)
                .collect();
            prop_assert!(open.len() <= 1, "{} has {} open claims", key, open.len());
            prop_assert_eq!(open.first().map(String::as_str), model.get(key).copied());
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn uniq_sets_follow_the_reference_model(requests in prop::collection::vec(prop::collection::vec(ev(), 1..4), 1..40)) {
        run(requests)?;
    }
}
