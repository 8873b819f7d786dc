//! Idempotency windows and rule changes through apply: the expected answers, and equal
//! canonical dumps on two stores fed the same entries in different batch sizes, including
//! entries whose timestamps go backwards.
#![cfg(not(madsim))]

use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use raft_store::rules::{IdempotencySettings, Rules, UniqOp};
use raft_store::{
    AppendRequest, Backfill, BackfillClaim, Conflict, IdempotencyKey, LogCommand, NewEvent,
    Outcome, Rejection, Request, SetRules, Storage, TypeConfig, UniqClaim,
};

fn rules(sets: &str, window_ms: u64, records_max: u64) -> Rules {
    let mut r: Rules = toml::from_str(sets).unwrap();
    r.idempotency = IdempotencySettings {
        window_ms,
        records_max,
    };
    r.validate().unwrap();
    r
}

const EMAIL: &str = r#"
    [[uniq]]
    name = "email"
    topic = "t"
    [[uniq.rule]]
    event = "Created"
    op = "create"
    key = "/email"
"#;

const EMAIL_AND_NAME: &str = r#"
    [[uniq]]
    name = "email"
    topic = "t"
    [[uniq.rule]]
    event = "Created"
    op = "create"
    key = "/email"
    [[uniq]]
    name = "name"
    topic = "t"
    [[uniq.rule]]
    event = "Created"
    op = "create"
    key = "/name"
"#;

fn created(stream: &str, email: &str, name: Option<&str>) -> NewEvent {
    let mut claims = vec![UniqClaim {
        set: "email".into(),
        op: UniqOp::Create,
        key: email.into(),
        old_key: None,
    }];
    if let Some(n) = name {
        claims.push(UniqClaim {
            set: "name".into(),
            op: UniqOp::Create,
            key: n.into(),
            old_key: None,
        });
    }
    NewEvent {
        event_type: "Created".into(),
        stream: Some(stream.into()),
        data: format!(r#"{{"email":"{email}","name":"{}"}}"#, name.unwrap_or("")),
        metadata: None,
        claims,
        secret: None,
    }
}

fn append(ev: NewEvent, key: Option<&str>, fingerprint: &str, rules_version: u64) -> Request {
    Request::Append(AppendRequest {
        topic: "t".into(),
        events: vec![ev],
        expected_version: Default::default(),
        idempotency: key.map(|k| IdempotencyKey {
            key: k.into(),
            fingerprint: fingerprint.into(),
        }),
        rules_version,
        reply: Some(format!("reply-{fingerprint}")),
    })
}

/// The scenario: (timestamp, request, what the answer must be).
fn scenario() -> Vec<(u64, Request, &'static str)> {
    let backfill = |names: &[(&str, u64, &str)], len| Backfill {
        set: "name".into(),
        topic_len: len,
        claims: names
            .iter()
            .map(|(stream, offset, name)| BackfillClaim {
                offset: *offset,
                stream: stream.to_string(),
                claim: UniqClaim {
                    set: "name".into(),
                    op: UniqOp::Create,
                    key: name.to_string(),
                    old_key: None,
                },
            })
            .collect(),
    };
    vec![
        (
            10,
            Request::SetRules(SetRules {
                base_version: 0,
                rules: rules(EMAIL, 1000, 3),
                backfill: vec![],
            }),
            "rules v1",
        ),
        (
            100,
            append(created("s1", "a@x", None), Some("ka"), "f1", 1),
            "appended 0",
        ),
        (
            500,
            append(created("s1", "a@x", None), Some("ka"), "f1", 1),
            "replayed 0",
        ),
        // The clock goes backwards: log time stays at 500, the record is still fresh.
        (
            50,
            append(created("s1", "a@x", None), Some("ka"), "f1", 1),
            "replayed 0",
        ),
        (
            600,
            append(created("s9", "zz@x", None), Some("ka"), "other", 1),
            "reused",
        ),
        (
            700,
            append(created("s2", "a@x", None), Some("kb"), "f2", 1),
            "uniq conflict",
        ),
        (
            710,
            append(created("s2", "a@x", None), Some("kb"), "f2", 1),
            "replayed conflict",
        ),
        (
            720,
            append(created("s3", "c@x", None), Some("kc"), "f3", 1),
            "appended 1",
        ),
        (
            730,
            append(created("s4", "d@x", None), Some("kd"), "f4", 1),
            "appended 2",
        ),
        // Count bound 3: ka, kb, kc are kept... kd pushed out ka (the oldest).
        (
            740,
            append(created("s1", "e@x", None), Some("ka"), "f5", 1),
            "appended 3",
        ),
        // Window 1000 ms: at 1800 everything up to 800 has expired, kb included.
        (
            1800,
            append(created("s2", "b@x", None), Some("kb"), "f6", 1),
            "appended 4",
        ),
        // Claims computed under old rules are refused, unapplied.
        (
            1810,
            append(created("s5", "f@x", None), None, "f7", 0),
            "rules changed",
        ),
        // A new set over existing events: the backfill violates it (two streams, one name).
        (
            1820,
            Request::SetRules(SetRules {
                base_version: 1,
                rules: rules(EMAIL_AND_NAME, 1000, 3),
                backfill: vec![backfill(&[("s1", 0, "ann"), ("s3", 1, "ann")], 5)],
            }),
            "rules violated",
        ),
        // A stale backfill (topic length moved on) is refused for recomputation.
        (
            1830,
            Request::SetRules(SetRules {
                base_version: 1,
                rules: rules(EMAIL_AND_NAME, 1000, 3),
                backfill: vec![backfill(&[("s1", 0, "ann")], 4)],
            }),
            "rules changed",
        ),
        (
            1840,
            Request::SetRules(SetRules {
                base_version: 1,
                rules: rules(EMAIL_AND_NAME, 1000, 3),
                backfill: vec![backfill(&[("s1", 0, "ann"), ("s3", 1, "bob")], 5)],
            }),
            "rules v2",
        ),
        (
            1850,
            append(created("s6", "g@x", Some("bob")), None, "f8", 2),
            "uniq conflict",
        ),
        (
            1860,
            append(created("s6", "g@x", Some("cy")), None, "f9", 2),
            "appended 5",
        ),
    ]
}

fn check(expect: &str, outcome: &Outcome, replayed: bool) {
    let ok = match (expect, outcome) {
        ("rules v1", Outcome::RulesSet { version: 1 }) => true,
        ("rules v2", Outcome::RulesSet { version: 2 }) => true,
        (e, Outcome::Appended { first_offset, .. }) if e.starts_with("appended") => {
            !replayed && e == format!("appended {first_offset}")
        }
        (e, Outcome::Appended { first_offset, .. }) if e.starts_with("replayed ") => {
            replayed && e == format!("replayed {first_offset}")
        }
        ("reused", Outcome::Rejected(Rejection::IdempotencyKeyReused { .. })) => true,
        ("uniq conflict", Outcome::Conflict(Conflict::Uniq { .. })) => !replayed,
        ("replayed conflict", Outcome::Conflict(Conflict::Uniq { .. })) => replayed,
        ("rules changed", Outcome::Rejected(Rejection::RulesChanged { .. })) => true,
        ("rules violated", Outcome::Conflict(Conflict::RulesViolated { .. })) => true,
        _ => false,
    };
    assert!(
        ok,
        "expected {expect}, got {outcome:?} (replayed: {replayed})"
    );
}

fn entries() -> Vec<Entry<TypeConfig>> {
    scenario()
        .into_iter()
        .enumerate()
        .map(|(i, (ts, req, _))| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i as u64 + 1),
            payload: EntryPayload::Normal(LogCommand {
                timestamp_ms: ts,
                requests: vec![req].into(),
            }),
        })
        .collect()
}

#[tokio::test]
async fn idempotency_and_rule_changes_decide_the_same_on_every_store() {
    let (da, db) = (
        tempfile::TempDir::new().unwrap(),
        tempfile::TempDir::new().unwrap(),
    );
    let (a, b) = (
        Storage::open(da.path()).unwrap(),
        Storage::open(db.path()).unwrap(),
    );
    let mut sm_a = a.state_machine.clone();
    // Store a: one entry per apply call. Store b: everything in one batch.
    let mut answers = Vec::new();
    for e in entries() {
        answers.extend(a.log_and_apply(vec![e]).await.unwrap());
    }
    let batch = b.log_and_apply(entries()).await.unwrap();
    assert_eq!(answers, batch, "the same answers whatever the batching");
    for ((_, _, expect), resp) in scenario().iter().zip(&answers) {
        let answer = &resp.outcomes[0];
        check(expect, &answer.outcome, answer.replayed);
    }
    // A replay hands back the first attempt's reply.
    assert_eq!(answers[2].outcomes[0].reply.as_deref(), Some("reply-f1"));
    assert!(
        a.reader.canonical_dump().unwrap() == b.reader.canonical_dump().unwrap(),
        "canonical dumps differ"
    );
    assert_eq!(a.reader.rules().unwrap().version, 2);
    assert_eq!(
        a.reader.uniq_owner("name", "bob").unwrap(),
        Some(("s3".to_string(), 1))
    );
    assert_eq!(
        a.reader.uniq_owner("name", "cy").unwrap(),
        Some(("s6".to_string(), 5))
    );
    assert!(
        a.reader.idempotency_records().unwrap() <= 3,
        "records_max holds"
    );

    // Sets, history, rules and idempotency records travel in snapshots.
    let snap = sm_a.build_snapshot().await.unwrap();
    let dc = tempfile::TempDir::new().unwrap();
    let c = Storage::open(dc.path()).unwrap();
    let mut sm_c = c.state_machine.clone();
    let mut rx = sm_c.begin_receiving_snapshot().await.unwrap();
    let mut src = snap.snapshot;
    tokio::io::copy(&mut src, &mut rx).await.unwrap();
    sm_c.install_snapshot(&snap.meta, rx).await.unwrap();
    assert!(
        a.reader.canonical_dump().unwrap() == c.reader.canonical_dump().unwrap(),
        "the installed snapshot differs"
    );
    assert_eq!(
        c.reader.uniq_history("email", "a@x").unwrap(),
        a.reader.uniq_history("email", "a@x").unwrap()
    );
    // The restored store decides the next request like the original: the retry of kb is
    // answered from the restored idempotency record.
    let next = entries().len() as u64 + 1;
    let retry = || Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), next),
        payload: EntryPayload::Normal(LogCommand {
            timestamp_ms: 1870,
            requests: vec![append(created("s2", "b@x", None), Some("kb"), "f6", 2)].into(),
        }),
    };
    let ra = a.log_and_apply(vec![retry()]).await.unwrap();
    let rc = c.log_and_apply(vec![retry()]).await.unwrap();
    assert_eq!(ra, rc);
    assert!(ra[0].outcomes[0].replayed);
}

#[tokio::test]
async fn claims_prepared_before_a_set_was_dropped_are_prepared_again() {
    let dir = tempfile::TempDir::new().unwrap();
    let store = Storage::open(dir.path()).unwrap();
    let entry = |i: u64, req: Request| Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
        payload: EntryPayload::Normal(LogCommand {
            timestamp_ms: i,
            requests: vec![req].into(),
        }),
    };
    let set = |base, sets: &str| {
        Request::SetRules(SetRules {
            base_version: base,
            rules: rules(sets, 1000, 10),
            backfill: vec![],
        })
    };
    store
        .log_and_apply(vec![entry(1, set(0, EMAIL))])
        .await
        .unwrap();
    store
        .log_and_apply(vec![entry(2, set(1, ""))])
        .await
        .unwrap();
    // Prepared under version 1 (with a claim), applied under version 2 (no set on the topic).
    let out = store
        .log_and_apply(vec![entry(
            3,
            append(created("s1", "a@x", None), None, "f", 1),
        )])
        .await
        .unwrap();
    assert!(
        matches!(
            out[0].outcomes[0].outcome,
            Outcome::Rejected(Rejection::RulesChanged { current_version: 2 })
        ),
        "{:?}",
        out[0].outcomes[0]
    );
    assert_eq!(store.reader.topic_len("t").unwrap(), 0);
}
