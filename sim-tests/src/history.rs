//! What the simulated clients did and saw, and the checker that compares it with what the
//! nodes hold at the end.
//!
//! The rules of judgement:
//! - a 201 is a promise: every event of the append is present exactly once on every node, at
//!   the offsets and log index the 201 named;
//! - a 409 is a definite "nothing written": its events are absent everywhere;
//! - anything else (a 503, a timeout, a broken connection, a refused connection) is not a
//!   promise either way: its events may be present (once) or absent. The checker counts how
//!   many ended up present, for the report, and asserts nothing more about them;
//! - every event present belongs to an append that was sent (no phantom), and no event is
//!   present twice;
//! - every node holds identical topics;
//! - offsets in a topic are gap-free from 0, and the events of a stream appended with
//!   `expected_version` carry, in topic order, exactly the versions they expected (0, 1, 2…);
//! - no answer is a 5xx other than 503: faults make the cluster unavailable, never broken.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;

/// A node's id in the cluster (1-based).
pub type NodeId = u64;

/// The offsets a 201 promised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Created {
    pub first_offset: u64,
    pub last_offset: u64,
    pub log_index: u64,
}

impl Created {
    pub fn from_json(v: &Value) -> Option<Created> {
        Some(Created {
            first_offset: v.get("first_offset")?.as_u64()?,
            last_offset: v.get("last_offset")?.as_u64()?,
            log_index: v.get("log_index")?.as_u64()?,
        })
    }
}

/// What one append got back.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 201 with its body.
    Ok(Created),
    /// 409 with its body: nothing was written.
    Conflict(Value),
    /// A definite answer that is not a success: 503 `unavailable` (not applied, retry is safe),
    /// another 4xx/5xx, or status 0 when the connection was refused (nothing was sent).
    Failed(u16, String),
    /// No definite answer: 503 `outcome_unknown`, a timeout, a broken connection.
    Unknown(String),
}

impl Outcome {
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Ok(_) => "ok",
            Outcome::Conflict(_) => "conflict",
            Outcome::Failed(..) => "failed",
            Outcome::Unknown(_) => "unknown",
        }
    }

    /// A short reason for a failed or unknown outcome: the HTTP status and error code, or the
    /// kind of transport error.
    pub fn reason(&self) -> Option<String> {
        fn code(text: &str) -> String {
            if text.starts_with("no answer") {
                return "timeout".into();
            }
            if text.starts_with("connection to") {
                return "connection broken".into();
            }
            let json = text.find('{').map_or(text, |i| &text[i..]);
            serde_json::from_str::<Value>(json)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| text.split(':').next().unwrap_or(text).to_string())
        }
        match self {
            Outcome::Ok(_) | Outcome::Conflict(_) => None,
            Outcome::Failed(0, _) => Some("failed: cannot connect".into()),
            Outcome::Failed(status, body) => Some(format!("failed: {status} {}", code(body))),
            Outcome::Unknown(why) => Some(format!("unknown: {}", code(why))),
        }
    }
}

/// One append as the client sent it.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Unique per append; event `j` of it carries `data.id = "{id}.{j}"`.
    pub id: String,
    pub client: usize,
    pub node: NodeId,
    pub topic: String,
    pub events: usize,
    /// The stream and the version it expected, for appends with `expected_version`.
    pub stream: Option<(String, u64)>,
    pub outcome: Outcome,
    /// Simulated milliseconds since the start of the scenario.
    pub sent_ms: u64,
    pub answered_ms: u64,
}

impl Attempt {
    pub fn event_id(&self, j: usize) -> String {
        format!("{}.{j}", self.id)
    }
}

/// The final state read from the cluster: per node, per topic, the events in offset order.
#[derive(Debug, Clone, Default)]
pub struct FinalState {
    pub applied_index: u64,
    pub topics: BTreeMap<NodeId, BTreeMap<String, Vec<Value>>>,
}

/// Counts for the one-line report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub attempted: usize,
    pub acknowledged: usize,
    pub conflicts: usize,
    pub failed: usize,
    pub unknown: usize,
    /// Acknowledged appends with an event missing (or misplaced) on some node.
    pub lost: usize,
    /// Nodes whose topics differ from the first node's.
    pub divergent: usize,
    /// Failed (definite non-success) appends whose events are present anyway.
    pub failed_present: usize,
    /// Unknown appends whose events are present.
    pub unknown_present: usize,
    pub events: usize,
    pub applied_index: u64,
    /// Failed and unknown appends by reason (status and error code, or transport error).
    pub reasons: BTreeMap<String, usize>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "appends attempted={} acknowledged={} conflict={} failed={} unknown={} \
             lost={} divergent={} (present: failed={} unknown={}; events={} applied_index={})",
            self.attempted,
            self.acknowledged,
            self.conflicts,
            self.failed,
            self.unknown,
            self.lost,
            self.divergent,
            self.failed_present,
            self.unknown_present,
            self.events,
            self.applied_index,
        )?;
        if !self.reasons.is_empty() {
            let reasons: Vec<String> = self
                .reasons
                .iter()
                .map(|(r, n)| format!("{r}: {n}"))
                .collect();
            write!(f, " [{}]", reasons.join(", "))?;
        }
        Ok(())
    }
}

fn data_field<'a>(event: &'a Value, key: &str) -> Option<&'a Value> {
    event.get("data")?.get(key)
}

/// The checker's answer: the counts, and every violation found (none when all is well).
#[derive(Debug, Clone)]
pub struct Verdict {
    pub report: Report,
    pub violations: Vec<String>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Judge `history` against `state`.
pub fn check(history: &[Attempt], state: &FinalState) -> Verdict {
    let mut errors = Vec::new();
    let mut report = Report {
        attempted: history.len(),
        applied_index: state.applied_index,
        ..Report::default()
    };
    for a in history {
        match a.outcome {
            Outcome::Ok(_) => report.acknowledged += 1,
            Outcome::Conflict(_) => report.conflicts += 1,
            Outcome::Failed(..) => report.failed += 1,
            Outcome::Unknown(_) => report.unknown += 1,
        }
        if let Some(r) = a.outcome.reason() {
            *report.reasons.entry(r).or_default() += 1;
        }
    }

    let Some((&first_node, reference)) = state.topics.iter().next() else {
        errors.push("no node's topics were read".into());
        return Verdict {
            report,
            violations: errors,
        };
    };
    for (node, topics) in &state.topics {
        if topics != reference {
            report.divergent += 1;
            let detail = topics
                .iter()
                .chain(reference.iter())
                .map(|(t, _)| t)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .map(|t| {
                    let mine = topics.get(t).map_or(&[][..], Vec::as_slice);
                    let theirs = reference.get(t).map_or(&[][..], Vec::as_slice);
                    let first_diff = mine
                        .iter()
                        .zip(theirs)
                        .position(|(a, b)| a != b)
                        .unwrap_or(mine.len().min(theirs.len()));
                    format!(
                        "{t}: {} vs {} events, first difference at offset {first_diff}",
                        mine.len(),
                        theirs.len()
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            errors.push(format!(
                "node {node} diverges from node {first_node}: {detail}"
            ));
        }
    }

    // Index the reference node's events by their unique id.
    let mut by_id: BTreeMap<String, (String, u64, &Value)> = BTreeMap::new();
    let mut streams: BTreeMap<String, Vec<(u64, &Value)>> = BTreeMap::new();
    for (topic, events) in reference {
        for (i, e) in events.iter().enumerate() {
            report.events += 1;
            let offset = e.get("offset").and_then(Value::as_u64);
            if offset != Some(i as u64) {
                errors.push(format!(
                    "{topic}: event at position {i} has offset {offset:?}: offsets have a gap"
                ));
            }
            if e.get("topic").and_then(Value::as_str) != Some(topic.as_str()) {
                errors.push(format!("{topic}[{i}] names another topic: {e}"));
            }
            let Some(id) = data_field(e, "id").and_then(Value::as_str) else {
                errors.push(format!("{topic}[{i}] has no data.id: {e}"));
                continue;
            };
            if let Some((t, o, _)) = by_id.insert(id.to_string(), (topic.clone(), i as u64, e)) {
                errors.push(format!(
                    "event {id} is present twice: {t}[{o}] and {topic}[{i}]"
                ));
            }
            if let Some(s) = e.get("stream").and_then(Value::as_str) {
                streams
                    .entry(s.to_string())
                    .or_default()
                    .push((i as u64, e));
            }
        }
    }

    let mut sent = BTreeSet::new();
    for a in history {
        let present: Vec<Option<&(String, u64, &Value)>> =
            (0..a.events).map(|j| by_id.get(&a.event_id(j))).collect();
        for j in 0..a.events {
            sent.insert(a.event_id(j));
        }
        let n_present = present.iter().filter(|p| p.is_some()).count();
        if n_present != 0 && n_present != a.events {
            errors.push(format!(
                "append {} is partly present ({n_present} of {} events): appends are atomic",
                a.id, a.events
            ));
        }
        match &a.outcome {
            Outcome::Ok(c) => {
                let mut lost = false;
                if c.last_offset + 1 - c.first_offset != a.events as u64 {
                    errors.push(format!(
                        "append {}: 201 names offsets {}..={} for {} events",
                        a.id, c.first_offset, c.last_offset, a.events
                    ));
                }
                for (j, p) in present.iter().enumerate() {
                    match p {
                        None => {
                            lost = true;
                            errors.push(format!(
                                "LOST: append {} (client {}, via node {}, answered 201 at {} ms \
                                 with offsets {}..={}) has no event {} in {}",
                                a.id,
                                a.client,
                                a.node,
                                a.answered_ms,
                                c.first_offset,
                                c.last_offset,
                                a.event_id(j),
                                a.topic
                            ));
                        }
                        Some((topic, offset, e)) => {
                            let want = c.first_offset + j as u64;
                            let log_index = e.get("log_index").and_then(Value::as_u64);
                            if topic != &a.topic
                                || *offset != want
                                || log_index != Some(c.log_index)
                            {
                                lost = true;
                                errors.push(format!(
                                    "append {}: event {} is at {topic}[{offset}] log index \
                                     {log_index:?}, its 201 said {}[{want}] log index {}",
                                    a.id,
                                    a.event_id(j),
                                    a.topic,
                                    c.log_index
                                ));
                            }
                        }
                    }
                }
                if lost {
                    report.lost += 1;
                }
            }
            Outcome::Conflict(body) => {
                if n_present > 0 {
                    errors.push(format!(
                        "append {} was answered 409 ({body}) but its events are present",
                        a.id
                    ));
                }
            }
            Outcome::Failed(status, body) => {
                if n_present > 0 {
                    report.failed_present += 1;
                }
                // Faults may make the cluster unavailable (503), never broken.
                if *status >= 500 && *status != 503 {
                    errors.push(format!(
                        "append {} via node {} was answered {status}: {body}",
                        a.id, a.node
                    ));
                }
            }
            Outcome::Unknown(_) => {
                if n_present > 0 {
                    report.unknown_present += 1;
                }
            }
        }
    }
    for id in by_id.keys() {
        if !sent.contains(id) {
            errors.push(format!("PHANTOM: event {id} is present but was never sent"));
        }
    }

    // Optimistic concurrency: the n-th event of a stream expected version n.
    for (stream, events) in &streams {
        for (n, (offset, e)) in events.iter().enumerate() {
            let expected = data_field(e, "expected_version").and_then(Value::as_u64);
            if expected != Some(n as u64) {
                errors.push(format!(
                    "stream {stream}: event {n} (offset {offset}) was appended expecting version \
                     {expected:?}: optimistic concurrency let a stale writer through"
                ));
            }
        }
    }

    Verdict {
        report,
        violations: errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(topic: &str, offset: u64, log_index: u64, id: &str) -> Value {
        json!({"topic": topic, "offset": offset, "log_index": log_index, "timestamp": 1,
               "type": "T", "data": {"id": id}})
    }

    fn attempt(id: &str, outcome: Outcome) -> Attempt {
        Attempt {
            id: id.into(),
            client: 0,
            node: 1,
            topic: "t".into(),
            events: 1,
            stream: None,
            outcome,
            sent_ms: 0,
            answered_ms: 0,
        }
    }

    fn state(events: Vec<Value>) -> FinalState {
        let topics: BTreeMap<String, Vec<Value>> = [("t".to_string(), events)].into();
        FinalState {
            applied_index: 3,
            topics: [(1, topics.clone()), (2, topics)].into(),
        }
    }

    #[test]
    fn acknowledged_present_and_unknown_either_way_pass() {
        let ok = Outcome::Ok(Created {
            first_offset: 0,
            last_offset: 0,
            log_index: 5,
        });
        let history = vec![
            attempt("a", ok),
            attempt("b", Outcome::Unknown("timeout".into())),
            attempt("c", Outcome::Unknown("timeout".into())),
        ];
        let v = check(
            &history,
            &state(vec![event("t", 0, 5, "a.0"), event("t", 1, 6, "b.0")]),
        );
        assert!(v.ok(), "{:?}", v.violations);
        let r = v.report;
        assert_eq!(
            (r.acknowledged, r.unknown, r.unknown_present, r.lost),
            (1, 2, 1, 0)
        );
    }

    #[test]
    fn a_lost_ack_a_phantom_and_a_divergence_are_reported() {
        let ok = Outcome::Ok(Created {
            first_offset: 0,
            last_offset: 0,
            log_index: 5,
        });
        let history = vec![attempt("a", ok)];
        let mut s = state(vec![event("t", 0, 5, "zz.0")]);
        s.topics.get_mut(&2).unwrap().get_mut("t").unwrap().clear();
        let Verdict {
            report: r,
            violations: errors,
        } = check(&history, &s);
        assert_eq!((r.lost, r.divergent), (1, 1));
        let all = errors.join("\n");
        assert!(all.contains("LOST"), "{all}");
        assert!(all.contains("PHANTOM"), "{all}");
        assert!(all.contains("diverges"), "{all}");
    }

    #[test]
    fn a_conflict_that_wrote_is_reported() {
        let history = vec![attempt("a", Outcome::Conflict(json!({})))];
        let errors = check(&history, &state(vec![event("t", 0, 5, "a.0")])).violations;
        assert!(errors[0].contains("409"), "{errors:?}");
    }
}
