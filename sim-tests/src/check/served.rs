//! No node ever served an event that was not committed.
//!
//! A node serves a topic from its applied state, and it applies only committed entries, so
//! every event a reader was ever shown must be, at the offset it was shown at, the event the
//! converged cluster holds there in the end. A node that served an entry it had only in its
//! log, or an applied entry a crash then took back (an apply made visible before it was
//! durable, replayed differently after), fails here even when the final topics agree.
//!
//! Whether a page is fresh (`consistency=linearizable`) is [`crate::check::linearizable`]'s.

use crate::check::{Found, Index};
use crate::history::{History, Kind};

/// The page size the workload's readers ask for.
pub const PAGE_LIMIT: usize = 20;

pub fn check(history: &History, idx: &Index<'_>, found: &mut Found) {
    committed(history, idx, found);
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
            reader: 0,
            node: 2,
            epoch: 0,
            topic: "t".into(),
            from,
            linearizable: false,
            head: from + events.len() as u64,
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

    #[test]
    fn a_page_with_a_gap_is_flagged() {
        let v = run(vec![read(0, vec![event("t", 1, 2, "b")])]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("in place 0"), "{v:?}");
    }
}
