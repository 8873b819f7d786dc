//! The business decision of the state machine: one request in, one [`Answer`] out.
//!
//! Pure and deterministic: the inputs are the replicated tables (data, rules, uniq sets,
//! idempotency records), the entry's log index and the log time; no clock, randomness,
//! environment or local config is read here. A request is decided as a whole before anything
//! is written, so a conflict or rejection leaves nothing behind (except, for a 409 under an
//! idempotency key, the stored answer itself).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::StoreError;
use crate::idempotency::Record;
use crate::live::{Carried, Working};
use crate::rules::{Rules, UniqOp};
use crate::tables::*;
use crate::types::{
    Answer, AppendRequest, Conflict, NewEvent, Outcome, Rejection, Request, SetRules,
};
use crate::uniq::{clear_set, Pending};

/// The rules in force and their version, as stored in `sm_meta`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct RulesState {
    pub version: u64,
    pub rules: Rules,
}

/// The state machine's tables as one apply batch sees and changes them.
pub(crate) struct DataTables<'a> {
    pub(crate) w: Working<'a>,
    rules: RulesState,
    /// The runs of events still open in the entry being applied, one per topic: the entry's
    /// next append to a topic joins its run.
    runs: Vec<OpenRun>,
}

/// An `event_runs` row still growing: (topic, first) is its key. Runs span the accepted
/// appends of one topic that follow each other in one entry (requests to other topics may sit
/// between them; readers skip those), so leader batching writes one row per entry and topic,
/// not one per request (issue 25: a fourth of the rows a sign-up wrote). A request of the
/// topic that appended nothing (a conflict, a rejection, a replayed answer) ends the run:
/// readers count every request of the topic from the run's position as appended.
struct OpenRun {
    log_index: u64,
    /// (topic, first offset): the row's key.
    key: (String, u64),
    count: u32,
}

impl<'a> DataTables<'a> {
    /// Open a batch's tables, with the rules and log time that the last batch ended with
    /// (read from `sm_meta` when no batch left them: after a start or an install).
    pub(crate) fn open(mut w: Working<'a>) -> Result<(Self, u64), StoreError> {
        let carried = match w.take_carried() {
            Some(c) => c,
            None => Carried {
                rules: w.stack().meta(KEY_RULES)?.unwrap_or_default(),
                log_time_ms: w.stack().meta(KEY_LOG_TIME)?.unwrap_or(0),
            },
        };
        let tables = DataTables {
            w,
            rules: carried.rules,
            runs: Vec::new(),
        };
        Ok((tables, carried.log_time_ms))
    }

    /// End the batch: leave the rules and `log_time_ms` (both written in `sm_meta` by now)
    /// for the next one, and hand back the batch.
    pub(crate) fn close(self, log_time_ms: u64) -> Working<'a> {
        let mut w = self.w;
        w.carry(Carried {
            rules: self.rules,
            log_time_ms,
        });
        w
    }

    /// Record where the `count` events of the request at `ctx`, appended to `topic` from
    /// offset `first`, are: the open run grows, or a new run starts here.
    fn record_run(&mut self, ctx: EntryContext, topic: &str, first: u64, count: u32) {
        if self
            .runs
            .first()
            .is_some_and(|r| r.log_index != ctx.log_index)
        {
            self.runs.clear();
        }
        let open = self
            .runs
            .iter_mut()
            .position(|r| r.key.0 == topic && r.key.1 + u64::from(r.count) == first);
        if let Some(i) = open {
            let run = &mut self.runs[i];
            if let Some(grown) = run.count.checked_add(count) {
                let row = self
                    .w
                    .batch
                    .event_runs
                    .written_mut(&run.key)
                    .expect("an open run's row is in its batch");
                row.2 = grown;
                run.count = grown;
                return;
            }
            self.runs.swap_remove(i);
        }
        self.end_run(topic);
        self.w.batch.event_runs.insert(
            (topic.to_string(), first),
            (ctx.log_index, ctx.position, count, ctx.log_time_ms),
        );
        self.runs.push(OpenRun {
            log_index: ctx.log_index,
            key: (topic.to_string(), first),
            count,
        });
    }

    /// A request of `topic` appended nothing: the open run of `topic` ends before it.
    fn end_run(&mut self, topic: &str) {
        self.runs.retain(|r| r.key.0 != topic);
    }

    /// Expire idempotency records, before a request with a key looks its key up. Per
    /// request, not per entry: an entry holds many requests (leader batching), and whether a
    /// retry still finds its record must not depend on how requests were grouped into entries
    /// (`tests/apply_fuzz.rs` found that it did).
    fn expire_idempotency(&mut self, ctx: EntryContext) -> Result<(), StoreError> {
        let settings = self.rules.rules.idempotency;
        self.w.evict_idempotency(ctx.log_time_ms, &settings)
    }
}

/// Where an entry sits in the log, for the fields the node adds to each event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryContext {
    pub log_index: u64,
    pub log_time_ms: u64,
    /// The request's place among the requests of its entry: with the log index, its place in
    /// the log, however requests were grouped into entries.
    pub position: u32,
}

pub(crate) fn apply_request(
    t: &mut DataTables<'_>,
    ctx: EntryContext,
    req: &Request,
) -> Result<Answer, StoreError> {
    match req {
        Request::Append(a) => apply_append(t, ctx, a),
        Request::SetRules(s) => apply_set_rules(t, s).map(Answer::new),
    }
}

fn json_object<'a>(text: &'a str, what: &str) -> Result<&'a RawValue, String> {
    let raw: &RawValue =
        serde_json::from_str(text).map_err(|e| format!("{what} is not valid JSON: {e}"))?;
    if !raw.get().starts_with('{') {
        return Err(format!("{what} must be a JSON object"));
    }
    Ok(raw)
}

/// Shape checks that need no state: JSON objects, claims that fit the rules.
fn check_events(topic: &str, events: &[NewEvent], rules: &Rules) -> Result<(), Rejection> {
    if events.is_empty() {
        return Err(Rejection::InvalidEvent {
            index: 0,
            reason: "an append needs at least one event".into(),
        });
    }
    // A run counts its events in 32 bits (far above any node's per-append limit).
    if u32::try_from(events.len()).is_err() {
        return Err(Rejection::InvalidEvent {
            index: 0,
            reason: "too many events in one append".into(),
        });
    }
    for (index, e) in events.iter().enumerate() {
        let invalid = |reason| Rejection::InvalidEvent { index, reason };
        json_object(&e.data, "data").map_err(invalid)?;
        if let Some(m) = &e.metadata {
            json_object(m, "metadata").map_err(invalid)?;
        }
        if let Some(m) = &e.secret {
            json_object(m, "secret").map_err(invalid)?;
        }
        let expected: Vec<(&str, _)> = rules
            .rules_for(topic, &e.event_type)
            .map(|(s, r)| (s.name.as_str(), r.op))
            .collect();
        let got: Vec<(&str, _)> = e.claims.iter().map(|c| (c.set.as_str(), c.op)).collect();
        if expected != got {
            return Err(invalid(format!(
                "uniq claims {got:?} do not match the rules in force {expected:?}"
            )));
        }
        if e.claims
            .iter()
            .any(|c| c.old_key.is_some() != (c.op == UniqOp::Update))
        {
            return Err(invalid(
                "an old_key belongs to update claims, and to them only".into(),
            ));
        }
        if !e.claims.is_empty() && e.stream.is_none() {
            return Err(invalid(
                "an event under a uniq rule needs a stream (the key's owner)".into(),
            ));
        }
    }
    Ok(())
}

fn apply_append(
    t: &mut DataTables<'_>,
    ctx: EntryContext,
    req: &AppendRequest,
) -> Result<Answer, StoreError> {
    let answer = answer_append(t, ctx, req)?;
    if answer.replayed || !matches!(answer.outcome, Outcome::Appended { .. }) {
        t.end_run(&req.topic);
    }
    Ok(answer)
}

/// An append's answer: the stored one for a retry, else decided, written if accepted, and
/// stored under its idempotency key.
fn answer_append(
    t: &mut DataTables<'_>,
    ctx: EntryContext,
    req: &AppendRequest,
) -> Result<Answer, StoreError> {
    // Idempotency first: a retry gets the stored answer and appends nothing.
    if let Some(idem) = &req.idempotency {
        t.expire_idempotency(ctx)?;
        let stored = t.w.idempotency(&req.topic, &idem.key)?;
        // Planted bug (simulation builds only, `crate::planted`): the lookup is skipped.
        #[cfg(madsim)]
        let stored =
            stored.filter(|_| !crate::planted::is(crate::planted::Bug::NoIdempotencyCheck));
        if let Some(rec) = stored {
            if rec.fingerprint != idem.fingerprint {
                return Ok(Answer::new(Outcome::Rejected(
                    Rejection::IdempotencyKeyReused {
                        key: idem.key.clone(),
                    },
                )));
            }
            return Ok(Answer {
                replayed: true,
                ..rec.answer
            });
        }
    }
    let outcome = match decide_append(t, req)? {
        Decision::Refused(outcome) => outcome,
        Decision::Accepted(accepted) => write_append(t, ctx, req, accepted)?,
    };
    let answer = Answer {
        outcome,
        reply: req.reply.clone(),
        replayed: false,
    };
    // Created and conflict answers are stored under the key; rejections (400s) are not:
    // they changed nothing and say nothing about the state.
    if let (Some(idem), Outcome::Appended { .. } | Outcome::Conflict(_)) =
        (&req.idempotency, &answer.outcome)
    {
        let record = Record {
            fingerprint: idem.fingerprint.clone(),
            answer: answer.clone(),
            log_time_ms: ctx.log_time_ms,
            log_index: ctx.log_index,
            position: ctx.position,
        };
        t.w.put_idempotency(&req.topic, &idem.key, &record)?;
    }
    Ok(answer)
}

/// The decision on an append, made from reads alone ([`decide_append`] cannot write: it
/// borrows the tables shared), so a conflict or a rejection leaves nothing behind.
enum Decision<'r> {
    /// A conflict or a rejection: the answer, and nothing to write.
    Refused(Outcome),
    Accepted(Accepted<'r>),
}

/// What an accepted append writes ([`write_append`]).
struct Accepted<'r> {
    /// The topic's offset of the request's first event.
    first: u64,
    /// Every stream the request names: its version and the offset of its first event.
    heads: Heads<'r>,
    /// The uniq claims' changes, checked against the sets and each other.
    claims: Pending,
}

/// stream -> (version, offset of its first event if it has one).
type Heads<'r> = BTreeMap<&'r str, (u64, Option<u64>)>;

/// Decide an append: the rules it was prepared under, the shape of its events, the streams it
/// names, `expected_version`, then its uniq claims, in that order.
fn decide_append<'r>(
    t: &DataTables<'_>,
    req: &'r AppendRequest,
) -> Result<Decision<'r>, StoreError> {
    // Claims prepared under other rules than those in force are prepared again.
    // Claims prepared under rules that have since dropped the topic's sets count as well.
    let covered = t.rules.rules.uniq.iter().any(|s| s.topic == req.topic)
        || req.events.iter().any(|e| !e.claims.is_empty());
    if covered && req.rules_version != t.rules.version {
        return Ok(Decision::Refused(Outcome::Rejected(
            Rejection::RulesChanged {
                current_version: t.rules.version,
            },
        )));
    }
    if let Err(r) = check_events(&req.topic, &req.events, &t.rules.rules) {
        return Ok(Decision::Refused(Outcome::Rejected(r)));
    }
    let heads = match stream_heads(t, req)? {
        Ok(heads) => heads,
        Err(r) => return Ok(Decision::Refused(Outcome::Rejected(r))),
    };
    for (stream, expected) in &req.expected_version {
        let actual = heads[stream.as_str()].0;
        if !expected.matches(actual) {
            return Ok(Decision::Refused(Outcome::Conflict(Conflict::Version {
                stream: stream.clone(),
                expected: *expected,
                actual,
            })));
        }
    }
    // Uniq claims, against the sets and the earlier events of this request.
    let first = t.w.stack().topic_len(&req.topic)?;
    let mut claims = Pending::default();
    for (i, e) in req.events.iter().enumerate() {
        let Some(stream) = e.stream.as_deref() else {
            continue;
        };
        for claim in &e.claims {
            if let Err(c) = claims.check(&t.w, claim, stream, first + i as u64)? {
                return Ok(Decision::Refused(Outcome::Conflict(c)));
            }
        }
    }
    Ok(Decision::Accepted(Accepted {
        first,
        heads,
        claims,
    }))
}

/// The current head of every stream the request names (in `expected_version` or on an
/// event); a stream of another topic is a rejection.
fn stream_heads<'r>(
    t: &DataTables<'_>,
    req: &'r AppendRequest,
) -> Result<Result<Heads<'r>, Rejection>, StoreError> {
    let mut heads = Heads::new();
    let named = req
        .expected_version
        .keys()
        .map(String::as_str)
        .chain(req.events.iter().filter_map(|e| e.stream.as_deref()));
    for stream in named {
        if heads.contains_key(stream) {
            continue;
        }
        let head = match t.w.stack().stream(stream)? {
            None => (0, None),
            Some((topic, _, _)) if topic != req.topic => {
                return Ok(Err(Rejection::StreamInOtherTopic {
                    stream: stream.to_string(),
                    topic,
                }));
            }
            Some((_, version, first)) => (version, Some(first)),
        };
        heads.insert(stream, head);
    }
    Ok(Ok(heads))
}

/// Write an accepted append: its claims, where its events are (they stay in the log entry;
/// one run row says where), the heads of the streams that received events, the topic's
/// length.
fn write_append(
    t: &mut DataTables<'_>,
    ctx: EntryContext,
    req: &AppendRequest,
    accepted: Accepted<'_>,
) -> Result<Outcome, StoreError> {
    let Accepted {
        first,
        mut heads,
        claims,
    } = accepted;
    claims.write(&mut t.w)?;
    t.record_run(ctx, &req.topic, first, req.events.len() as u32);
    let batch = &mut t.w.batch;
    let mut touched: BTreeSet<&str> = BTreeSet::new();
    for (i, e) in req.events.iter().enumerate() {
        let offset = first + i as u64;
        if let Some(stream) = e.stream.as_deref() {
            let (version, first) = heads.get_mut(stream).expect("decided with every stream");
            *version += 1;
            // A stream's first event is in its head row, the others in `stream_index`.
            if first.is_some() {
                batch
                    .stream_index
                    .insert((stream.to_string(), *version), offset);
            } else {
                *first = Some(offset);
            }
            touched.insert(stream);
        }
    }
    // Only streams that received events are recorded: naming a stream in expected_version
    // alone does not claim it for this topic.
    for stream in touched {
        let (version, first) = heads[stream];
        let first = first.expect("a stream that received events has a first");
        batch
            .streams
            .insert(stream.to_string(), (req.topic.clone(), version, first));
    }
    let next = first + req.events.len() as u64;
    batch.topics.insert(req.topic.clone(), next);
    Ok(Outcome::Appended {
        first_offset: first,
        last_offset: next.saturating_sub(1),
        log_index: ctx.log_index,
    })
}

/// Replace the rules. Sets that are new or changed are rebuilt from the backfill (the claims
/// of the topic's existing events, computed by the proposing node); dropped sets are cleared.
fn apply_set_rules(t: &mut DataTables<'_>, s: &SetRules) -> Result<Outcome, StoreError> {
    let current = t.rules.version;
    if s.base_version != current {
        return Ok(Outcome::Rejected(Rejection::RulesChanged {
            current_version: current,
        }));
    }
    if let Err(reason) = s.rules.validate() {
        return Ok(Outcome::Rejected(Rejection::InvalidEvent {
            index: 0,
            reason,
        }));
    }
    let old = t.rules.rules.clone();
    let rebuilt: Vec<&crate::rules::UniqSet> = s
        .rules
        .uniq
        .iter()
        .filter(|set| old.set(&set.name) != Some(*set))
        .collect();

    // Replay every rebuilt set's backfill on a clean view; decide before writing.
    let mut pending = Pending::default();
    for set in &rebuilt {
        let len = t.w.stack().topic_len(&set.topic)?;
        let backfill = s.backfill.iter().find(|b| b.set == set.name);
        let (topic_len, claims) = backfill.map_or((0, &[][..]), |b| (b.topic_len, &b.claims[..]));
        if topic_len != len {
            // Events arrived after the proposer computed the claims: compute them again.
            return Ok(Outcome::Rejected(Rejection::RulesChanged {
                current_version: current,
            }));
        }
        pending.rebuild(&set.name);
        for c in claims {
            if c.claim.set != set.name {
                return Ok(Outcome::Rejected(Rejection::InvalidEvent {
                    index: 0,
                    reason: format!(
                        "backfill of {} carries a claim of {}",
                        set.name, c.claim.set
                    ),
                }));
            }
            match pending.check(&t.w, &c.claim, &c.stream, c.offset)? {
                Ok(()) => {}
                Err(conflict) => {
                    let key = match conflict {
                        Conflict::Uniq { key, .. } | Conflict::UniqNotOwner { key, .. } => key,
                        _ => c.claim.key.clone(),
                    };
                    return Ok(Outcome::Conflict(Conflict::RulesViolated {
                        set: set.name.clone(),
                        key,
                    }));
                }
            }
        }
    }

    // All rebuilt sets are consistent: write.
    for set in &old.uniq {
        if s.rules.set(&set.name) != Some(set) {
            clear_set(&mut t.w, &set.name)?;
        }
    }
    pending.write(&mut t.w)?;
    let state = RulesState {
        version: current + 1,
        rules: s.rules.clone(),
    };
    t.w.put_meta(KEY_RULES, &state);
    t.rules = state;
    Ok(Outcome::RulesSet {
        version: current + 1,
    })
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use redb::ReadableTableMetadata;

    use crate::tables::EVENT_RUNS;
    use crate::test_entries::entry;
    use crate::types::{ExpectedVersion, Outcome, Request};

    /// An append to `topic`, in the stream of the same name, of one event per type.
    fn append(topic: &str, types: &[&str], expected: Option<ExpectedVersion>) -> Request {
        let types: Vec<String> = types.iter().map(|t| t.to_string()).collect();
        crate::test_entries::append(topic, topic, &types, expected)
    }

    /// The appends of one entry share `event_runs` rows: one per stretch of a topic's appends
    /// that nothing in between failed, however many requests it holds. Every event reads back
    /// at its offset, whatever sat between the requests of its run.
    #[tokio::test]
    async fn the_appends_of_an_entry_share_runs_and_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::Storage::open(dir.path()).unwrap();
        let stale = Some(ExpectedVersion::Exact(0));
        let applied = storage
            .log_and_apply(vec![
                // One run of three appends, the other topic between them skipped.
                entry(
                    1,
                    vec![
                        append("t", &["a"], None),
                        append("u", &["x"], None),
                        append("t", &["b", "c"], None),
                        append("t", &["d"], None),
                    ],
                ),
                // A conflict ends the run; the next append starts one, in the same entry.
                entry(
                    2,
                    vec![
                        append("t", &["e"], None),
                        append("t", &["never"], stale),
                        append("t", &["f"], None),
                        append("t", &["g", "h"], None),
                    ],
                ),
            ])
            .await
            .unwrap();
        let outcomes: Vec<bool> = applied
            .iter()
            .flat_map(|r| r.outcomes.iter())
            .map(|a| matches!(a.outcome, Outcome::Appended { .. }))
            .collect();
        assert_eq!(outcomes, [true, true, true, true, true, false, true, true]);
        let page = storage.reader.read_topic("t", 0, 100).unwrap();
        let types: Vec<String> = page
            .events
            .iter()
            .map(|e| serde_json::from_str::<serde_json::Value>(e).unwrap()["type"].to_string())
            .collect();
        assert_eq!(
            types,
            ["a", "b", "c", "d", "e", "f", "g", "h"].map(|t| format!("\"{t}\""))
        );
        let txn = storage.state_machine.live.checkpoint().unwrap();
        // t: (a b c d) in entry 1, (e) and (f g h) in entry 2; u: (x).
        assert_eq!(txn.open_table(EVENT_RUNS).unwrap().len().unwrap(), 4);
    }
}
