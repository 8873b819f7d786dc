//! The checkers, one module per invariant. Each reads the recorded [`History`] and the
//! [`FinalState`] only: no network, no clock, no randomness, so running them never changes a
//! simulation, and they run as well on a history saved from elsewhere.
//!
//! | module | invariant |
//! | --- | --- |
//! | [`lost`] | no acknowledged write lost (at the offsets its answer named) |
//! | [`phantom`] | no event present that no client sent |
//! | [`agreement`] | every node holds the same topics; offsets gap-free; stream versions as expected |
//! | [`idempotency`] | no request's events present twice; one answer per idempotency key |
//! | [`answers`] | a 409 wrote nothing; appends are atomic; no 5xx but 503; no 404 for a live user |
//! | [`uniq`] | at most one owner per key; owners served = owners the topic implies; every `email_taken` explained |
//! | [`raft_state`] | term, commit and applied never go back (applied and commit may after a crash); a node's leader id (term, node) never goes back; a leader names itself (not one leader per term: openraft 0.9 allows several) |
//! | [`served`] | every event a node served is the committed event at that offset |
//! | [`linearizable`] | writes ordered as they completed in real time; a linearizable page's head covers every write completed before it was sent (full pages too) and never goes back; no page from the future; each reader's pages of one node life never shrink |
//! | [`consumers`] | the read model equals a replay of `users`; one email per emailing event, resends bounded; consumers caught up (kinds `projection`, `mail`, `liveness`) |

pub mod agreement;
pub mod answers;
pub mod consumers;
pub mod idempotency;
pub mod linearizable;
pub mod lost;
pub mod phantom;
pub mod raft_state;
pub mod served;
pub mod uniq;

use std::collections::BTreeMap;

use serde_json::Value;

use crate::history::{
    FinalState, History, Kind, NodeId, Outcome, Report, UserOutcome, Verdict, Violation,
};

/// The topic of the users flow; every other topic holds the workload's plain appends, whose
/// events carry a unique `data.id`.
pub const USERS_TOPIC: &str = "users";

/// Where an event is: topic, offset, the event.
pub type Place<'a> = (&'a str, u64, &'a Value);

/// The reference node's topics (the first node read), indexed for the checkers. Other nodes
/// are compared with it by [`agreement`].
pub struct Index<'a> {
    pub node: NodeId,
    pub topics: &'a BTreeMap<String, Vec<Value>>,
    /// Events of the append topics by `data.id` (more than one place is a duplicate).
    pub by_id: BTreeMap<&'a str, Vec<Place<'a>>>,
    /// Events of the append topics without a `data.id`.
    pub without_id: Vec<Place<'a>>,
    /// The users topic.
    pub users: &'a [Value],
}

impl<'a> Index<'a> {
    pub fn new(node: NodeId, topics: &'a BTreeMap<String, Vec<Value>>) -> Index<'a> {
        let mut by_id: BTreeMap<&str, Vec<Place<'a>>> = BTreeMap::new();
        let mut without_id = Vec::new();
        for (topic, events) in topics {
            if topic == USERS_TOPIC {
                continue;
            }
            for (i, e) in events.iter().enumerate() {
                match data_str(e, "id") {
                    Some(id) => by_id.entry(id).or_default().push((topic, i as u64, e)),
                    None => without_id.push((topic.as_str(), i as u64, e)),
                }
            }
        }
        Index {
            node,
            topics,
            by_id,
            without_id,
            users: topics.get(USERS_TOPIC).map_or(&[][..], Vec::as_slice),
        }
    }

    /// The first place of the event with this id.
    pub fn place(&self, id: &str) -> Option<Place<'a>> {
        self.by_id.get(id).and_then(|p| p.first().copied())
    }
}

pub fn data_field<'a>(event: &'a Value, key: &str) -> Option<&'a Value> {
    event.get("data")?.get(key)
}

pub fn data_str<'a>(event: &'a Value, key: &str) -> Option<&'a str> {
    data_field(event, key)?.as_str()
}

pub fn event_type(event: &Value) -> Option<&str> {
    event.get("type")?.as_str()
}

pub fn stream_of(event: &Value) -> Option<&str> {
    event.get("stream")?.as_str()
}

/// The stream of user `id`.
pub fn user_stream(id: &str) -> String {
    format!("user-{id}")
}

/// Where checkers put what they find.
#[derive(Default)]
pub struct Found {
    pub violations: Vec<Violation>,
}

impl Found {
    pub fn push(&mut self, kind: Kind, detail: impl Into<String>) {
        self.violations.push(Violation {
            kind,
            detail: detail.into(),
        });
    }
}

/// Run every checker.
pub fn check_all(history: &History, state: &FinalState) -> Verdict {
    let mut report = Report {
        attempted: history.appends.len(),
        user_ops: history.users.len(),
        reads: history.reads.len(),
        events_read: history.reads.iter().map(|r| r.events.len()).sum(),
        applied_index: state.applied_index,
        ..Report::default()
    };
    for a in &history.appends {
        match a.outcome {
            Outcome::Ok(_) => report.acknowledged += 1,
            Outcome::Conflict(_) => report.conflicts += 1,
            Outcome::Failed(..) => report.failed += 1,
            Outcome::Unknown(_) => report.unknown += 1,
        }
        if a.retry > 0 {
            report.retries += 1;
        }
        if let Some(r) = a.outcome.reason() {
            *report.reasons.entry(r).or_default() += 1;
        }
    }
    for u in &history.users {
        match u.outcome {
            UserOutcome::Done { .. } => report.user_done += 1,
            UserOutcome::Conflict { .. } => report.user_conflicts += 1,
            UserOutcome::NotFound => report.user_not_found += 1,
            UserOutcome::Failed(..) => report.user_failed += 1,
            UserOutcome::Unknown(_) => report.user_unknown += 1,
        }
        if let Some(r) = u.outcome.reason() {
            *report.reasons.entry(format!("users {r}")).or_default() += 1;
        }
    }

    let mut found = Found::default();
    raft_state::check(&history.status, &mut found);
    match state.topics.iter().next() {
        None => found.push(Kind::Divergent, "no node's topics were read"),
        Some((&node, topics)) => {
            let idx = Index::new(node, topics);
            report.events = topics.values().map(Vec::len).sum();
            agreement::check(history, state, &idx, &mut found);
            lost::check(history, &idx, &mut found);
            phantom::check(history, &idx, &mut found);
            idempotency::check(history, &idx, &mut found);
            let (failed_present, unknown_present) = answers::check(history, &idx, &mut found);
            report.failed_present = failed_present;
            report.unknown_present = unknown_present;
            uniq::check(history, state, &idx, &mut found);
            served::check(history, &idx, &mut found);
            linearizable::check(history, &idx, &mut found);
            if let Some(c) = &state.consumers {
                consumers::check(idx.users, c, &mut found);
            }
        }
    }
    for v in &found.violations {
        *report.violations.entry(v.kind).or_default() += 1;
    }
    Verdict {
        report,
        violations: found.violations.iter().map(ToString::to_string).collect(),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Small builders for the checkers' unit tests.
    use super::*;
    use crate::history::{Attempt, Created};
    use serde_json::json;

    pub fn event(topic: &str, offset: u64, log_index: u64, id: &str) -> Value {
        json!({"topic": topic, "offset": offset, "log_index": log_index, "timestamp": 1,
               "type": "T", "data": {"id": id}})
    }

    pub fn user_event(offset: u64, ty: &str, user: &str, data: Value) -> Value {
        let mut data = data;
        data["id"] = json!(user);
        json!({"topic": "users", "offset": offset, "log_index": 100 + offset, "timestamp": 1,
               "type": ty, "stream": user_stream(user), "data": data})
    }

    pub fn ok(first: u64, log_index: u64) -> Outcome {
        Outcome::Ok(Created {
            first_offset: first,
            last_offset: first,
            log_index,
        })
    }

    pub fn attempt(id: &str, outcome: Outcome) -> Attempt {
        Attempt {
            id: id.into(),
            client: 0,
            node: 1,
            topic: "t".into(),
            events: 1,
            stream: None,
            key: None,
            retry: 0,
            outcome,
            sent_ms: 0,
            answered_ms: 0,
        }
    }

    /// Two nodes holding the same `t` topic (and `users`, if given).
    pub fn state(events: Vec<Value>, users: Vec<Value>) -> FinalState {
        let mut topics: BTreeMap<String, Vec<Value>> = [("t".to_string(), events)].into();
        if !users.is_empty() {
            topics.insert(USERS_TOPIC.into(), users);
        }
        FinalState {
            applied_index: 3,
            topics: [(1, topics.clone()), (2, topics)].into(),
            uniq: BTreeMap::new(),
            consumers: None,
            state_hashes: BTreeMap::new(),
        }
    }
}
