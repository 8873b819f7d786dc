//! Invariants 5 and 6, and the consumers' liveness: what the query read model and the mail
//! provider hold at the end of a run, judged against the final `users` topic.
//!
//! - projection: the read model equals a fresh replay of the topic ([`replay`], written here
//!   from DESIGN's document shape, independently of `consumers::query::store`), and every
//!   document's `version` equals the number of events of its stream; its checkpoint survives
//!   the final stop (a kill) at the position it had reached;
//! - mail: the provider holds exactly one message per `AccountCreated` and
//!   `ActivationRequested` of the topic (key `users:<offset>`, to the event's address), a
//!   parked one at most once, nothing else; and the resends stay within [`resend_bound`];
//! - liveness: after the liveness phase the query consumer has applied the whole topic, the
//!   mail consumer's checkpoint in `__checkpoints` is the topic's length and its breaker is
//!   closed.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::{data_str, event_type, stream_of, user_stream, Found};
use crate::history::Kind;

/// What the consumers left, read after the liveness phase.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsumerState {
    /// The read model's documents (read from the query store's disk once it is stopped).
    pub docs: Vec<Value>,
    /// The query consumer's position when the run ended: the next offset of `users` it
    /// would apply, as it reported it while running.
    pub query_applied: u64,
    /// The query store's checkpoint read from its disk after the consumer was stopped
    /// (a kill: what survived). Never behind `query_applied`: a page is applied and its
    /// checkpoint written in one durable transaction before the position is reported.
    pub query_next: u64,
    /// The mail consumer's checkpoint in `__checkpoints` (`None`: never written or unreadable).
    pub mail_checkpoint: Option<u64>,
    /// The mail consumer's breaker at the end (`closed`, `open`, `half_open`).
    pub breaker: String,
    /// The provider's messages, in arrival order: (idempotency key, recipient).
    pub messages: Vec<(String, String)>,
    /// Requests the provider accepted for a key it already held.
    pub duplicates: u64,
    /// Idempotency keys of the events parked in `__parked`.
    pub parked: BTreeSet<String>,
    /// Kills of the mail consumer during the run.
    pub mail_kills: u64,
    /// Per restart of the mail consumer: the provider's request count when it restarted, and
    /// the checkpoint committed before the kill (`None`: no node answered in time).
    pub mail_restarts: Vec<(u64, Option<u64>)>,
    /// Every duplicate the provider accepted: the number of requests before it, and its key.
    pub resent: Vec<(u64, String)>,
    /// `[mail] checkpoint_every_events`.
    pub checkpoint_every_events: u64,
    /// Provider calls the mail consumer gave up on after its timeout.
    pub timeouts: u64,
}

/// The most resends (provider duplicates) a correct mail consumer can cause:
/// `kills × checkpoint_every_events + timeouts`.
///
/// Why: the consumer reports `offset + 1` after handling the event at `offset` whenever it
/// advanced by `checkpoint_every_events` since the last acknowledged report (or the time
/// interval passed, which only makes reports more frequent). So when it dies, at most
/// `checkpoint_every_events` events past its last acknowledged checkpoint have been handled
/// (the last of them possibly sent and its report in flight), and the next incarnation, which
/// resumes from that checkpoint (read linearizably), resends at most those. A report that was
/// committed but whose answer was lost only moves the resume point forward. Besides crashes, a
/// provider call that times out may have been recorded by the provider (a hang past the
/// timeout records, then answers late): the retry is one resend per timeout.
/// Assumed: a report fails only while no node can commit (the reporter tries every node); a
/// consumer that handles a whole page while every report fails and then dies can exceed the
/// bound, which the simulation would report as a violation to look at.
pub fn resend_bound(c: &ConsumerState) -> u64 {
    c.mail_kills * c.checkpoint_every_events + c.timeouts
}

/// The users read model as a replay of `users` gives it: id -> document.
pub fn replay(users: &[Value]) -> BTreeMap<String, Value> {
    let mut docs: BTreeMap<String, Value> = BTreeMap::new();
    for e in users {
        let Some(id) = data_str(e, "id") else {
            continue;
        };
        let ts = e.get("timestamp").and_then(Value::as_u64).unwrap_or(0);
        let text = |k: &str| data_str(e, k).unwrap_or_default().to_string();
        let ty = event_type(e).unwrap_or_default();
        if ty == "AccountCreated" {
            docs.insert(
                id.to_string(),
                json!({"id": id, "username": text("username"), "email": text("email"),
                       "status": "pending", "created_at": ts, "updated_at": ts, "version": 1}),
            );
            continue;
        }
        let Some(doc) = docs.get_mut(id) else {
            continue;
        };
        match ty {
            "EmailChanged" => doc["email"] = text("new_email").into(),
            "AccountActivated" => doc["status"] = "active".into(),
            "AccountDeleted" => doc["status"] = "deleted".into(),
            _ => {}
        }
        doc["version"] = (doc["version"].as_u64().unwrap_or(0) + 1).into();
        doc["updated_at"] = ts.into();
    }
    docs
}

/// Invariant 5: the read model equals the replay, and versions equal stream lengths.
pub fn check_projection(users: &[Value], c: &ConsumerState, found: &mut Found) {
    let expected = replay(users);
    let mut stream_len: BTreeMap<&str, u64> = BTreeMap::new();
    for e in users {
        if let Some(s) = stream_of(e) {
            *stream_len.entry(s).or_default() += 1;
        }
    }
    let mut seen = BTreeSet::new();
    for doc in &c.docs {
        let id = doc["id"].as_str().unwrap_or_default();
        if !seen.insert(id.to_string()) {
            found.push(Kind::Projection, format!("document {id} held twice"));
            continue;
        }
        let version = doc["version"].as_u64().unwrap_or(0);
        let events = stream_len
            .get(user_stream(id).as_str())
            .copied()
            .unwrap_or(0);
        if version != events {
            found.push(
                Kind::Projection,
                format!("user {id}: version {version}, but its stream has {events} events"),
            );
        }
        match expected.get(id) {
            None => found.push(
                Kind::Projection,
                format!("user {id}: a document the topic does not imply: {doc}"),
            ),
            Some(want) if want != doc => found.push(
                Kind::Projection,
                format!("user {id}: the read model holds {doc}, a replay gives {want}"),
            ),
            Some(_) => {}
        }
    }
    for id in expected.keys() {
        if !seen.contains(id) {
            found.push(
                Kind::Projection,
                format!("user {id}: no document, although the topic creates it"),
            );
        }
    }
    if c.query_next < c.query_applied {
        found.push(
            Kind::Projection,
            format!(
                "the read model's checkpoint went back from {} to {} across a kill: pages applied \
                 without their checkpoint",
                c.query_applied, c.query_next
            ),
        );
    }
    if c.query_next > users.len() as u64 {
        found.push(
            Kind::Projection,
            format!(
                "the read model's checkpoint {} is past the topic's length {}",
                c.query_next,
                users.len()
            ),
        );
    }
}

/// Invariant 6: one message per emailing event that was not parked, none for anything else,
/// resends within [`resend_bound`]. Each message goes to the account's address as of its
/// event (the stream folded up to it), not to one the event names.
pub fn check_mail(users: &[Value], c: &ConsumerState, found: &mut Found) {
    // key -> recipient, for the events that send an email.
    let mut due: BTreeMap<String, String> = BTreeMap::new();
    // The events so far of each stream, to fold.
    let mut streams: BTreeMap<&str, Vec<api::wire::Event>> = BTreeMap::new();
    for (offset, e) in users.iter().enumerate() {
        let offset = e
            .get("offset")
            .and_then(Value::as_u64)
            .unwrap_or(offset as u64);
        let Some(stream) = e.get("stream").and_then(Value::as_str) else {
            continue;
        };
        let Ok(mut event) = serde_json::from_value::<api::wire::Event>(e.clone()) else {
            found.push(
                Kind::Mail,
                format!("users event {offset} is not an event: {e}"),
            );
            continue;
        };
        event.offset = offset;
        let so_far = streams.entry(stream).or_default();
        so_far.push(event);
        let ty = event_type(e).unwrap_or_default();
        if ty != "AccountCreated" && ty != "ActivationRequested" {
            continue;
        }
        // The fold needs no id to find the address.
        if let Some(account) = api::users::state::fold(Default::default(), so_far) {
            due.insert(format!("users:{offset}"), account.email);
        }
    }
    let mut got: BTreeMap<&str, &str> = BTreeMap::new();
    for (key, to) in &c.messages {
        if got.insert(key, to).is_some() {
            found.push(Kind::Mail, format!("the provider holds {key} twice"));
        }
        match due.get(key.as_str()) {
            None => found.push(
                Kind::Mail,
                format!("a message under {key}, for no AccountCreated or ActivationRequested"),
            ),
            Some(want) if want != to => found.push(
                Kind::Mail,
                format!("the message {key} went to {to}, the account's address was {want}"),
            ),
            Some(_) => {}
        }
    }
    for key in due.keys() {
        if !got.contains_key(key.as_str()) && !c.parked.contains(key) {
            found.push(
                Kind::Mail,
                format!("no message for {key}, and it was not parked (skipped)"),
            );
        }
    }
    resumed_from_checkpoint(c, found);
    let bound = resend_bound(c);
    if c.duplicates > bound {
        found.push(
            Kind::Mail,
            format!(
                "{} resends, more than kills x checkpoint interval + timeouts = {} x {} + {} = {bound}",
                c.duplicates, c.mail_kills, c.checkpoint_every_events, c.timeouts
            ),
        );
    }
}

/// A restarted mail consumer resumes from the checkpoint committed before it was killed, or a
/// later one (it reads it linearizably before it sends anything): so once it restarted, no
/// email of a `users` event before that checkpoint reaches the provider again. Tighter than
/// [`resend_bound`], which counts resends but not which events they are for.
fn resumed_from_checkpoint(c: &ConsumerState, found: &mut Found) {
    for (arrived_after, key) in &c.resent {
        let Some(offset) = key
            .strip_prefix("users:")
            .and_then(|o| o.parse::<u64>().ok())
        else {
            continue;
        };
        // Checkpoints only move forward: the latest restart before the resend has the highest.
        let floor = c
            .mail_restarts
            .iter()
            .filter(|(at, _)| at <= arrived_after)
            .filter_map(|(_, checkpoint)| *checkpoint)
            .max();
        if let Some(floor) = floor.filter(|f| offset < *f) {
            found.push(
                Kind::Mail,
                format!(
                    "{key} sent again after a restart, behind the checkpoint {floor} committed \
                     before the kill: the consumer resumed from an older checkpoint"
                ),
            );
        }
    }
}

/// After the liveness phase: lag 0 for both consumers and the breaker closed.
pub fn check_liveness(users: &[Value], c: &ConsumerState, found: &mut Found) {
    let head = users.len() as u64;
    if c.query_applied != head {
        found.push(
            Kind::Liveness,
            format!(
                "the query consumer applied up to offset {} of {head} after the liveness phase",
                c.query_applied
            ),
        );
    }
    if c.mail_checkpoint.unwrap_or(0) != head {
        found.push(
            Kind::Liveness,
            format!(
                "the mail checkpoint is {:?}, not the topic's length {head}, after the liveness phase",
                c.mail_checkpoint
            ),
        );
    }
    if c.breaker != "closed" {
        found.push(
            Kind::Liveness,
            format!("the mail breaker is {} after the liveness phase", c.breaker),
        );
    }
}

/// Every consumer checker, when the run had consumers.
pub fn check(users: &[Value], c: &ConsumerState, found: &mut Found) {
    check_projection(users, c, found);
    check_mail(users, c, found);
    check_liveness(users, c, found);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::user_event;

    fn users() -> Vec<Value> {
        vec![
            user_event(
                0,
                "AccountCreated",
                "a",
                json!({"username": "ann", "email": "ann@x.com"}),
            ),
            user_event(
                1,
                "AccountCreated",
                "b",
                json!({"username": "bob", "email": "bob@x.com"}),
            ),
            user_event(2, "EmailChanged", "a", json!({"new_email": "an@x.com"})),
            user_event(3, "AccountActivated", "b", json!({})),
            user_event(4, "AccountDeleted", "a", json!({"email": "an@x.com"})),
        ]
    }

    fn good() -> ConsumerState {
        let users = users();
        ConsumerState {
            docs: replay(&users).into_values().collect(),
            query_applied: 5,
            query_next: 5,
            mail_checkpoint: Some(5),
            breaker: "closed".into(),
            messages: vec![
                ("users:0".into(), "ann@x.com".into()),
                ("users:1".into(), "bob@x.com".into()),
            ],
            duplicates: 0,
            parked: BTreeSet::new(),
            mail_kills: 0,
            mail_restarts: Vec::new(),
            resent: Vec::new(),
            checkpoint_every_events: 3,
            timeouts: 0,
        }
    }

    fn run(c: &ConsumerState) -> Vec<(Kind, String)> {
        let mut found = Found::default();
        check(&users(), c, &mut found);
        found
            .violations
            .into_iter()
            .map(|v| (v.kind, v.detail))
            .collect()
    }

    #[test]
    fn replay_folds_the_users_flow() {
        let docs = replay(&users());
        assert_eq!(docs["a"]["email"], "an@x.com");
        assert_eq!(docs["a"]["status"], "deleted");
        assert_eq!(docs["a"]["version"], 3);
        assert_eq!(docs["b"]["status"], "active");
        assert_eq!(docs["b"]["version"], 2);
    }

    #[test]
    fn a_faithful_run_passes() {
        assert_eq!(run(&good()), vec![]);
    }

    #[test]
    fn a_double_applied_event_is_a_projection_violation() {
        let mut c = good();
        let b = c.docs.iter_mut().find(|d| d["id"] == "b").unwrap();
        b["version"] = 3.into();
        let found = run(&c);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().all(|(k, _)| *k == Kind::Projection));
        assert!(found[0].1.contains("its stream has 2 events"), "{found:?}");
    }

    #[test]
    fn a_checkpoint_lost_across_a_kill_is_a_projection_violation() {
        let mut c = good();
        c.query_next = 3;
        let found = run(&c);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, Kind::Projection);
        assert!(found[0].1.contains("went back from 5 to 3"), "{found:?}");
    }

    #[test]
    fn a_missing_or_extra_document_is_a_projection_violation() {
        let mut c = good();
        c.docs.retain(|d| d["id"] != "a");
        c.docs.push(json!({"id": "z", "version": 0}));
        let found = run(&c);
        assert!(found.iter().any(|(_, d)| d.contains("user a: no document")));
        assert!(found.iter().any(|(_, d)| d.contains("user z: a document")));
    }

    #[test]
    fn a_skipped_email_is_a_mail_violation_unless_parked() {
        let mut c = good();
        c.messages.remove(1);
        let found = run(&c);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, Kind::Mail);
        assert!(found[0].1.contains("no message for users:1"));
        c.parked.insert("users:1".into());
        assert_eq!(run(&c), vec![]);
    }

    #[test]
    fn a_message_goes_to_the_accounts_address_not_the_one_its_event_names() {
        let mut users = users();
        users.push(user_event(
            5,
            "ActivationRequested",
            "b",
            json!({"email": "evil@x.com"}),
        ));
        let mut c = good();
        c.messages.push(("users:5".into(), "bob@x.com".into()));
        let mail = |c: &ConsumerState| {
            let mut found = Found::default();
            check_mail(&users, c, &mut found);
            found
                .violations
                .into_iter()
                .map(|v| v.detail)
                .collect::<Vec<_>>()
        };
        assert_eq!(mail(&c), Vec::<String>::new());
        c.messages.pop();
        c.messages.push(("users:5".into(), "evil@x.com".into()));
        let found = mail(&c);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("the account's address was bob@x.com"));
    }

    #[test]
    fn a_message_for_no_emailing_event_is_a_mail_violation() {
        let mut c = good();
        c.messages.push(("users:2".into(), "an@x.com".into()));
        let found = run(&c);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, Kind::Mail);
    }

    #[test]
    fn resends_beyond_kills_times_interval_plus_timeouts_are_a_mail_violation() {
        let mut c = good();
        c.mail_kills = 2;
        c.timeouts = 1;
        c.duplicates = 7;
        assert_eq!(resend_bound(&c), 7);
        assert_eq!(run(&c), vec![]);
        c.duplicates = 8;
        let found = run(&c);
        assert_eq!(found.len(), 1);
        assert!(found[0].1.contains("8 resends"), "{found:?}");
    }

    #[test]
    fn a_resend_behind_the_checkpoint_committed_before_a_kill_is_a_mail_violation() {
        let mut c = good();
        c.mail_kills = 2;
        c.duplicates = 2;
        // Killed with checkpoint 1 committed, restarted when the provider had 4 requests; then
        // killed again with nothing readable, restarted at 9 requests.
        c.mail_restarts = vec![(4, Some(1)), (9, None)];
        // users:1 again after the first restart: at the checkpoint, allowed (it may not have
        // been reported). users:0 before the restart: the old life's own retry, allowed.
        c.resent = vec![(2, "users:0".into()), (5, "users:1".into())];
        assert_eq!(run(&c), vec![]);
        // users:0 after the first restart (and after the second, whose checkpoint is unknown):
        // the new life started behind the checkpoint.
        c.resent.push((10, "users:0".into()));
        c.duplicates = 3;
        let found = run(&c);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].1.contains("users:0 sent again after a restart"),
            "{found:?}"
        );
    }

    #[test]
    fn lag_or_an_open_breaker_after_the_liveness_phase_is_a_liveness_violation() {
        let mut c = good();
        c.query_applied = 4;
        c.query_next = 4;
        c.mail_checkpoint = None;
        c.breaker = "open".into();
        let found = run(&c);
        assert_eq!(found.len(), 3);
        assert!(found.iter().all(|(k, _)| *k == Kind::Liveness));
    }
}
