//! The log is linearizable, checked on the recorded history with its real (simulated) times.
//!
//! Because the log is totally ordered, no search for a linearization is needed: the order is
//! the log's, and each rule compares it with real time. An operation is *invoked* when its
//! first attempt was sent (a retry under an idempotency key, or a sign-up retried under its
//! username, is the same operation: its answer may name a write an earlier attempt made) and
//! *completes* when an answer arrives.
//!
//! - **Writes in real-time order**: a write that completed before another was invoked has the
//!   lower log index, and, in one topic, the lower offsets.
//! - **Fresh linearizable reads**: a `consistency=linearizable` page's `head` (the topic's
//!   length it was read at) covers every write of the topic completed before the read was
//!   invoked, on a page of any length, full ones included.
//! - **No read from the future**: no page, linearizable or not, shows the topic longer than
//!   the writes invoked before the page arrived can make it (the event at `head - 1` in the
//!   converged log belongs to such a write), nor longer than the converged topic.
//! - **Linearizable reads never go back**: a linearizable read invoked after another
//!   completed has a `head` at least as long.
//! - **Monotonic reads**: each reader's pages from one life of one node never shrink the topic
//!   (a node's applied state only grows until it restarts; plain reads of different nodes
//!   may differ, which is what a plain read promises).
//!
//! That an unknown-outcome write appears at most once is [`crate::check::idempotency`]'s.

use std::collections::BTreeMap;

use crate::check::{data_str, Found, Index, USERS_TOPIC};
use crate::history::{History, Kind, NodeId, Outcome, ReadSample, UserOp, UserOutcome};

pub fn check(history: &History, idx: &Index<'_>, found: &mut Found) {
    let invoked = invocations(history);
    let writes = completed_writes(history, &invoked);
    writes_in_order(&writes, found);
    reads_fresh(history, &writes, found);
    reads_not_from_the_future(history, idx, &invoked.0, found);
    linearizable_reads_never_go_back(history, found);
    reads_monotonic(history, found);
}

/// A write that completed: when it was invoked and answered, and where it landed.
#[derive(Debug, Clone)]
struct Write {
    what: String,
    topic: String,
    first_offset: u64,
    last_offset: u64,
    /// Appends only (a users command's answer names no log index).
    log_index: Option<u64>,
    invoked_ms: u64,
    completed_ms: u64,
}

/// When each logical write was first sent: appends by their id (retries share it), sign-ups
/// by username (retries reuse it).
type Invocations<'a> = (BTreeMap<&'a str, u64>, BTreeMap<&'a str, u64>);

fn invocations(history: &History) -> Invocations<'_> {
    let mut appends: BTreeMap<&str, u64> = BTreeMap::new();
    for a in &history.appends {
        let t = appends.entry(a.id.as_str()).or_insert(a.sent_ms);
        *t = (*t).min(a.sent_ms);
    }
    let mut signups: BTreeMap<&str, u64> = BTreeMap::new();
    for u in &history.users {
        if let UserOp::SignUp { username, .. } = &u.op {
            let t = signups.entry(username.as_str()).or_insert(u.sent_ms);
            *t = (*t).min(u.sent_ms);
        }
    }
    (appends, signups)
}

fn completed_writes(history: &History, (appends, signups): &Invocations<'_>) -> Vec<Write> {
    let mut out = Vec::new();
    for a in &history.appends {
        if let Outcome::Ok(c) = &a.outcome {
            out.push(Write {
                what: format!("append {}", a.id),
                topic: a.topic.clone(),
                first_offset: c.first_offset,
                last_offset: c.last_offset,
                log_index: Some(c.log_index),
                invoked_ms: appends[a.id.as_str()],
                completed_ms: a.answered_ms,
            });
        }
    }
    for u in &history.users {
        if let UserOutcome::Done { offset, .. } = &u.outcome {
            let invoked_ms = match &u.op {
                UserOp::SignUp { username, .. } => signups[username.as_str()],
                _ => u.sent_ms,
            };
            out.push(Write {
                what: u.op.render(),
                topic: USERS_TOPIC.into(),
                first_offset: *offset,
                last_offset: *offset,
                log_index: None,
                invoked_ms,
                completed_ms: u.answered_ms,
            });
        }
    }
    out
}

/// For each write in order of completion, the writes completed so far; `before(t)` answers
/// from them: the one with the greatest `key` among those completed before `t`.
struct Completed<'a> {
    by_completion: Vec<&'a Write>,
    /// Index into `by_completion` of the greatest key so far.
    best_so_far: Vec<usize>,
}

impl<'a> Completed<'a> {
    fn new(writes: impl Iterator<Item = &'a Write>, key: impl Fn(&Write) -> u64) -> Self {
        let mut by_completion: Vec<&Write> = writes.collect();
        by_completion.sort_by_key(|w| w.completed_ms);
        let mut best_so_far = Vec::with_capacity(by_completion.len());
        for (i, w) in by_completion.iter().enumerate() {
            let best = match best_so_far.last() {
                Some(&b) if key(by_completion[b]) >= key(w) => b,
                _ => i,
            };
            best_so_far.push(best);
        }
        Completed {
            by_completion,
            best_so_far,
        }
    }

    /// The write with the greatest key among those completed strictly before `t`.
    fn before(&self, t: u64) -> Option<&'a Write> {
        let n = self.by_completion.partition_point(|w| w.completed_ms < t);
        n.checked_sub(1)
            .map(|i| self.by_completion[self.best_so_far[i]])
    }
}

fn writes_in_order(writes: &[Write], found: &mut Found) {
    let indexed = Completed::new(writes.iter().filter(|w| w.log_index.is_some()), |w| {
        w.log_index.unwrap_or(0)
    });
    for b in writes.iter().filter(|w| w.log_index.is_some()) {
        if let Some(a) = indexed.before(b.invoked_ms) {
            if a.log_index >= b.log_index {
                found.push(
                    Kind::Linearizable,
                    format!(
                        "{} completed at {} ms with log index {:?}, before {} was invoked at \
                         {} ms, which got log index {:?}",
                        a.what, a.completed_ms, a.log_index, b.what, b.invoked_ms, b.log_index
                    ),
                );
            }
        }
    }
    for topic in topics_of(writes) {
        let in_topic = || writes.iter().filter(move |w| w.topic == topic);
        let done = Completed::new(in_topic(), |w| w.last_offset);
        for b in in_topic() {
            if let Some(a) = done.before(b.invoked_ms) {
                if a.last_offset >= b.first_offset {
                    found.push(
                        Kind::Linearizable,
                        format!(
                            "{topic}: {} completed at {} ms at offset {}, before {} was invoked \
                             at {} ms, which got offset {}",
                            a.what,
                            a.completed_ms,
                            a.last_offset,
                            b.what,
                            b.invoked_ms,
                            b.first_offset
                        ),
                    );
                }
            }
        }
    }
}

fn topics_of(writes: &[Write]) -> Vec<&str> {
    let mut topics: Vec<&str> = writes.iter().map(|w| w.topic.as_str()).collect();
    topics.sort_unstable();
    topics.dedup();
    topics
}

fn reads_fresh(history: &History, writes: &[Write], found: &mut Found) {
    let by_topic: BTreeMap<&str, Completed<'_>> = topics_of(writes)
        .into_iter()
        .map(|t| {
            let done = Completed::new(writes.iter().filter(|w| w.topic == t), |w| w.last_offset);
            (t, done)
        })
        .collect();
    for read in history.reads.iter().filter(|r| r.linearizable) {
        let Some(w) = by_topic
            .get(read.topic.as_str())
            .and_then(|done| done.before(read.sent_ms))
        else {
            continue;
        };
        if read.head <= w.last_offset {
            found.push(
                Kind::Linearizable,
                format!(
                    "{}: node {} served a linearizable page (from {}, {} events) saying the topic \
                     is {} long at {} ms, but {} completed at {} ms at offset {}, before the read \
                     was sent",
                    read.topic,
                    read.node,
                    read.from,
                    read.events.len(),
                    read.head,
                    read.sent_ms,
                    w.what,
                    w.completed_ms,
                    w.last_offset
                ),
            );
        }
    }
}

fn reads_not_from_the_future(
    history: &History,
    idx: &Index<'_>,
    appends: &BTreeMap<&str, u64>,
    found: &mut Found,
) {
    for read in &history.reads {
        let Some(last) = read.head.checked_sub(1) else {
            continue;
        };
        let committed = idx.topics.get(&read.topic).map_or(&[][..], Vec::as_slice);
        let Some(event) = committed.get(last as usize) else {
            found.push(
                Kind::Linearizable,
                format!(
                    "{}: node {} said at {} ms that the topic is {} long; it ends at {} once \
                     the cluster converged",
                    read.topic,
                    read.node,
                    read.answered_ms,
                    read.head,
                    committed.len()
                ),
            );
            continue;
        };
        // The append topics' events name their write (`data.id` is "{write}.{j}").
        if read.topic == USERS_TOPIC {
            continue;
        }
        let write = data_str(event, "id").and_then(|id| id.rsplit_once('.').map(|(w, _)| w));
        if let Some(invoked) = write.and_then(|w| appends.get(w)) {
            if *invoked >= read.answered_ms {
                found.push(
                    Kind::Linearizable,
                    format!(
                        "{}: node {} answered at {} ms with the topic {} long, but the event at \
                         offset {last} belongs to {}, first sent at {invoked} ms",
                        read.topic,
                        read.node,
                        read.answered_ms,
                        read.head,
                        write.unwrap_or("?")
                    ),
                );
            }
        }
    }
}

fn linearizable_reads_never_go_back(history: &History, found: &mut Found) {
    let mut by_topic: BTreeMap<&str, Vec<&ReadSample>> = BTreeMap::new();
    for r in history.reads.iter().filter(|r| r.linearizable) {
        by_topic.entry(r.topic.as_str()).or_default().push(r);
    }
    for (topic, reads) in by_topic {
        let mut by_answer = reads.clone();
        by_answer.sort_by_key(|r| r.answered_ms);
        // The longest head among the reads answered so far.
        let mut longest: Vec<&ReadSample> = Vec::with_capacity(by_answer.len());
        for r in &by_answer {
            let best = match longest.last() {
                Some(b) if b.head >= r.head => *b,
                _ => *r,
            };
            longest.push(best);
        }
        for r in reads {
            let n = by_answer.partition_point(|a| a.answered_ms < r.sent_ms);
            let Some(earlier) = n.checked_sub(1).map(|i| longest[i]) else {
                continue;
            };
            if earlier.head > r.head {
                found.push(
                    Kind::Linearizable,
                    format!(
                        "{topic}: a linearizable read of node {} answered at {} ms saw {} \
                         events; one of node {} sent later, at {} ms, saw {}",
                        earlier.node, earlier.answered_ms, earlier.head, r.node, r.sent_ms, r.head
                    ),
                );
            }
        }
    }
}

fn reads_monotonic(history: &History, found: &mut Found) {
    let mut last: BTreeMap<(usize, NodeId, u64, &str), &ReadSample> = BTreeMap::new();
    let mut reads: Vec<&ReadSample> = history.reads.iter().collect();
    reads.sort_by_key(|r| r.sent_ms);
    for r in reads {
        let key = (r.reader, r.node, r.epoch, r.topic.as_str());
        if let Some(prev) = last.get(&key) {
            if prev.head > r.head {
                found.push(
                    Kind::Linearizable,
                    format!(
                        "{}: reader {} saw {} events from node {} (life {}) at {} ms, then {} at \
                         {} ms",
                        r.topic,
                        r.reader,
                        prev.head,
                        r.node,
                        r.epoch,
                        prev.answered_ms,
                        r.head,
                        r.answered_ms
                    ),
                );
            }
        }
        last.insert(key, r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::{attempt, event, ok, state};
    use crate::history::Attempt;

    fn append(id: &str, offset: u64, log_index: u64, sent: u64, answered: u64) -> Attempt {
        let mut a = attempt(id, ok(offset, log_index));
        a.sent_ms = sent;
        a.answered_ms = answered;
        a
    }

    fn read(head: u64, linearizable: bool, sent: u64, answered: u64) -> ReadSample {
        ReadSample {
            reader: 0,
            node: 1,
            epoch: 0,
            topic: "t".into(),
            from: 0,
            linearizable,
            events: Vec::new(),
            head,
            sent_ms: sent,
            answered_ms: answered,
        }
    }

    /// The converged topic `t`: events of writes `w0`, `w1`, ….
    fn judge(appends: Vec<Attempt>, reads: Vec<ReadSample>, len: u64) -> Vec<String> {
        let events = (0..len)
            .map(|o| event("t", o, o + 1, &format!("w{o}.0")))
            .collect();
        let st = state(events, vec![]);
        let (&node, topics) = st.topics.iter().next().unwrap();
        let idx = Index::new(node, topics);
        let history = History {
            appends,
            reads,
            ..History::default()
        };
        let mut found = Found::default();
        check(&history, &idx, &mut found);
        assert!(found
            .violations
            .iter()
            .all(|v| v.kind == Kind::Linearizable));
        found.violations.iter().map(|v| v.detail.clone()).collect()
    }

    #[test]
    fn a_history_in_real_time_order_passes() {
        let appends = vec![
            append("w0", 0, 1, 0, 10),
            // Concurrent with w0: either order would do.
            append("w1", 1, 2, 5, 12),
            append("w2", 2, 3, 20, 30),
        ];
        let reads = vec![
            read(1, true, 11, 11),
            read(3, true, 31, 32),
            read(2, false, 13, 14),
            // A plain read of another node may be behind: no rule holds it.
            ReadSample {
                node: 2,
                ..read(0, false, 40, 41)
            },
        ];
        assert_eq!(judge(appends, reads, 3), Vec::<String>::new());
    }

    #[test]
    fn a_write_ordered_before_one_that_completed_earlier_is_flagged() {
        let v = judge(
            vec![append("w1", 1, 2, 0, 10), append("w0", 0, 1, 11, 20)],
            vec![],
            2,
        );
        assert_eq!(v.len(), 2, "log index and offset: {v:?}");
        assert!(
            v[0].contains("before append w0 was invoked at 11 ms"),
            "{v:?}"
        );
    }

    #[test]
    fn a_retry_is_invoked_when_its_first_attempt_was_sent() {
        // w0's first attempt (sent at 0) lost its answer; its retry, sent after w1 completed,
        // names the offset the first attempt wrote, before w1's: not a violation.
        let mut first = append("w0", 0, 1, 0, 3);
        first.outcome = Outcome::Unknown("timeout".into());
        let retry = append("w0", 0, 1, 20, 25);
        let v = judge(vec![first, append("w1", 1, 2, 5, 10), retry], vec![], 2);
        assert_eq!(v, Vec::<String>::new());
    }

    #[test]
    fn a_stale_full_linearizable_page_is_flagged() {
        // w2 completed at 30; a linearizable read sent at 31 says the topic is 2 long,
        // whatever the length of its page.
        let appends = vec![
            append("w0", 0, 1, 0, 10),
            append("w1", 1, 2, 0, 20),
            append("w2", 2, 3, 0, 30),
        ];
        let mut full = read(2, true, 31, 35);
        full.events = vec![event("t", 0, 1, "w0.0"), event("t", 1, 2, "w1.0")];
        let v = judge(appends.clone(), vec![full.clone()], 3);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("before the read was sent"), "{v:?}");
        // Sent before w2 completed: concurrent, either answer is right.
        full.sent_ms = 29;
        assert_eq!(
            judge(appends.clone(), vec![full.clone()], 3),
            Vec::<String>::new()
        );
        // A plain read may be stale.
        full.sent_ms = 31;
        full.linearizable = false;
        assert_eq!(judge(appends, vec![full], 3), Vec::<String>::new());
    }

    #[test]
    fn a_read_that_shows_a_write_not_yet_sent_is_flagged() {
        let appends = vec![append("w0", 0, 1, 0, 10), append("w1", 1, 2, 50, 60)];
        let v = judge(appends.clone(), vec![read(2, false, 20, 21)], 2);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("belongs to w1, first sent at 50 ms"), "{v:?}");
        // Longer than the converged topic.
        let v = judge(appends, vec![read(3, false, 70, 71)], 2);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("ends at 2"), "{v:?}");
    }

    #[test]
    fn a_linearizable_read_going_back_is_flagged() {
        let appends = vec![append("w0", 0, 1, 0, 1), append("w1", 1, 2, 0, 2)];
        let earlier = read(2, true, 10, 11);
        let later = ReadSample {
            node: 3,
            ..read(1, true, 12, 13)
        };
        let v = judge(appends.clone(), vec![earlier.clone(), later.clone()], 2);
        // Also stale against w1, completed at 2 ms.
        assert!(
            v.iter().any(|d| d.contains("sent later, at 12 ms, saw 1")),
            "{v:?}"
        );
        // Overlapping in time: no order between them.
        let overlapping = ReadSample {
            sent_ms: 10,
            ..later
        };
        let v = judge(
            vec![append("w0", 0, 1, 0, 1)],
            vec![earlier, overlapping],
            2,
        );
        assert_eq!(v, Vec::<String>::new());
    }

    #[test]
    fn a_reader_going_back_on_one_node_life_is_flagged() {
        let appends = vec![append("w0", 0, 1, 0, 1), append("w1", 1, 2, 0, 2)];
        let v = judge(
            appends.clone(),
            vec![read(2, false, 10, 11), read(1, false, 12, 13)],
            2,
        );
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("reader 0 saw 2 events from node 1"), "{v:?}");
        // After a restart (another life) or from another reader, it may.
        let restarted = ReadSample {
            epoch: 1,
            ..read(1, false, 12, 13)
        };
        assert_eq!(
            judge(appends.clone(), vec![read(2, false, 10, 11), restarted], 2),
            Vec::<String>::new()
        );
        let other = ReadSample {
            reader: 1,
            ..read(1, false, 12, 13)
        };
        assert_eq!(
            judge(appends, vec![read(2, false, 10, 11), other], 2),
            Vec::<String>::new()
        );
    }
}
