//! No node ever served an event that was not committed.
//!
//! A node serves a topic from its applied state, and it applies only committed entries, so
//! every event a reader was ever shown must be, at the offset it was shown at, the event the
//! converged cluster holds there in the end. A node that served an entry it had only in its
//! log, or an applied entry a crash then took back (an apply made visible before it was
//! durable, replayed differently after), fails here even when the final topics agree.
//!
//! A page asked with `consistency=linearizable` must also be fresh: it reflects every write
//! acknowledged before the read was sent. A page shorter than the limit ends where the node's
//! topic ended, so no such write may lie past its end.

use crate::check::{Found, Index, USERS_TOPIC};
use crate::history::{History, Kind, Outcome, UserOutcome};

/// The page size the workload's readers ask for.
pub const PAGE_LIMIT: usize = 20;

pub fn check(history: &History, idx: &Index<'_>, found: &mut Found) {
    committed(history, idx, found);
    fresh(history, found);
}

/// Acknowledged writes as (topic, last offset, answered at ms).
fn acks(history: &History) -> Vec<(&str, u64, u64)> {
    let mut out: Vec<(&str, u64, u64)> = history
        .appends
        .iter()
        .filter_map(|a| match &a.outcome {
            Outcome::Ok(c) => Some((a.topic.as_str(), c.last_offset, a.answered_ms)),
            _ => None,
        })
        .collect();
    out.extend(history.users.iter().filter_map(|u| match &u.outcome {
        UserOutcome::Done { offset, .. } => Some((USERS_TOPIC, *offset, u.answered_ms)),
        _ => None,
    }));
    out
}

fn fresh(history: &History, found: &mut Found) {
    let acks = acks(history);
    for read in history.reads.iter().filter(|r| r.linearizable) {
        if read.events.len() >= PAGE_LIMIT {
            continue; // a full page says nothing about where the topic ended
        }
        let end = read.from + read.events.len() as u64;
        if let Some((_, offset, at)) = acks
            .iter()
            .filter(|(t, o, at)| *t == read.topic && *o >= end && *at < read.sent_ms)
            .min_by_key(|(_, o, _)| *o)
        {
            found.push(
                Kind::Served,
                format!(
                    "node {} served a linearizable page of {} ending at offset {end} at {} ms, \
                     but offset {offset} was acknowledged at {at} ms, before the read was sent",
                    read.node, read.topic, read.sent_ms
                ),
            );
        }
    }
}

fn committed(history: &History, idx: &Index<'_>, found: &mut Found) {
    for read in &history.reads {
        let committed = idx.topics.get(&read.topic).map_or(&[][..], Vec::as_slice);
        for (i, event) in read.events.iter().enumerate() {
            let want = read.from + i as u64;
            let offset = event.get("offset").and_then(|o| o.as_u64());
            if offset != Some(want) {
                found.push(
                    Kind::Served,
                    format!(
                        "node {} served {} from {} at {} ms with offset {offset:?} in place {want}",
                        read.node, read.topic, read.from, read.sent_ms
                    ),
                );
                break;
            }
            match committed.get(want as usize) {
                Some(c) if c == event => {}
                Some(c) => found.push(
                    Kind::Served,
                    format!(
                        "node {} served {}[{want}] = {event} at {} ms ({}), but the committed \
                         event there is {c}",
                        read.node,
                        read.topic,
                        read.sent_ms,
                        if read.linearizable {
                            "linearizable"
                        } else {
                            "applied"
                        },
                    ),
                ),
                None => found.push(
                    Kind::Served,
                    format!(
                        "node {} served {}[{want}] = {event} at {} ms, but the committed topic \
                         ends at {}",
                        read.node,
                        read.topic,
                        read.sent_ms,
                        committed.len()
                    ),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::{event, state};
    use crate::history::ReadSample;

    fn read(from: u64, events: Vec<serde_json::Value>) -> ReadSample {
        ReadSample {
            node: 2,
            topic: "t".into(),
            from,
            linearizable: false,
            events,
            sent_ms: 5,
            answered_ms: 6,
        }
    }

    fn run(reads: Vec<ReadSample>) -> Vec<String> {
        let st = state(vec![event("t", 0, 1, "a"), event("t", 1, 2, "b")], vec![]);
        let (&node, topics) = st.topics.iter().next().unwrap();
        let idx = Index::new(node, topics);
        let history = History {
            reads,
            ..History::default()
        };
        let mut found = Found::default();
        check(&history, &idx, &mut found);
        found.violations.iter().map(|v| v.detail.clone()).collect()
    }

    #[test]
    fn committed_pages_pass() {
        assert!(run(vec![
            read(0, vec![event("t", 0, 1, "a"), event("t", 1, 2, "b")]),
            read(1, vec![event("t", 1, 2, "b")]),
            read(2, vec![]),
        ])
        .is_empty());
    }

    #[test]
    fn an_event_that_was_taken_back_is_flagged() {
        let v = run(vec![read(1, vec![event("t", 1, 2, "x")])]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("committed event there"), "{v:?}");
    }

    #[test]
    fn an_event_past_the_committed_end_is_flagged() {
        let v = run(vec![read(
            1,
            vec![event("t", 1, 2, "b"), event("t", 2, 3, "c")],
        )]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("ends at 2"), "{v:?}");
    }

    fn acked_at(offset: u64, at: u64) -> crate::history::Attempt {
        let mut a = crate::check::testing::attempt("x", crate::check::testing::ok(offset, 9));
        a.topic = "t".into();
        a.answered_ms = at;
        a
    }

    fn judge_fresh(reads: Vec<ReadSample>, appends: Vec<crate::history::Attempt>) -> Vec<String> {
        let history = History {
            reads,
            appends,
            ..History::default()
        };
        let mut found = Found::default();
        fresh(&history, &mut found);
        found.violations.iter().map(|v| v.detail.clone()).collect()
    }

    #[test]
    fn a_linearizable_page_missing_an_earlier_ack_is_flagged() {
        let mut r = read(0, vec![event("t", 0, 1, "a")]);
        r.linearizable = true;
        // Offset 1 acknowledged at 4 ms, the read sent at 5 ms ended at offset 1.
        let v = judge_fresh(vec![r.clone()], vec![acked_at(1, 4)]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("offset 1 was acknowledged"), "{v:?}");
        // Acknowledged after the read was sent: concurrent, no claim either way.
        assert!(judge_fresh(vec![r.clone()], vec![acked_at(1, 5)]).is_empty());
        // Not linearizable: a local read may be stale.
        r.linearizable = false;
        assert!(judge_fresh(vec![r], vec![acked_at(1, 4)]).is_empty());
    }

    #[test]
    fn a_full_linearizable_page_claims_nothing_past_it() {
        let events: Vec<_> = (0..PAGE_LIMIT as u64)
            .map(|o| event("t", o, o + 1, &format!("e{o}")))
            .collect();
        let mut r = read(0, events);
        r.linearizable = true;
        assert!(judge_fresh(vec![r], vec![acked_at(PAGE_LIMIT as u64 + 3, 1)]).is_empty());
    }

    #[test]
    fn a_page_with_a_gap_is_flagged() {
        let v = run(vec![read(0, vec![event("t", 1, 2, "b")])]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("in place 0"), "{v:?}");
    }
}
