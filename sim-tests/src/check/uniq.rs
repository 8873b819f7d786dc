//! Invariant 3: no key is ever owned twice in a uniq set, and every 409 is explained by a
//! committed owner. For the `user_email` set over the `users` topic:
//!
//! - replaying the topic through the rules (create claims, update releases the old key and
//!   claims the new one, delete releases) never finds a claim of a key another stream owns,
//!   nor a release by a stream that does not own the key: the state machine must have refused
//!   such an event;
//! - the owner every node serves (`GET /v1/uniq/user_email/{key}`) is the owner, and the
//!   offset it was claimed at, that the replay ends with;
//! - every `email_taken` (a sign-up or an email change) is explained: another stream owned the
//!   key at some point of the log where the refusal can have been decided. That point lies
//!   after every users event acknowledged before the command was sent, and no later than every
//!   users event whose commands were all sent after the refusal was answered.
//!
//! Keys are normalized as the set does for the ASCII addresses of the workload: trimmed and
//! lower-cased.

use std::collections::BTreeMap;

use super::{data_str, event_type, stream_of, user_stream, Found, Index};
use crate::history::{FinalState, History, Kind, Owner, UserOp, UserOutcome};

pub const EMAIL_SET: &str = "user_email";

/// The `email` normalization for ASCII addresses.
pub fn normalize(email: &str) -> String {
    email.trim().to_ascii_lowercase()
}

/// One stream's ownership of a key: claimed at an offset, released at one (or still owned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenure {
    pub owner: String,
    pub claimed: u64,
    pub released: Option<u64>,
}

/// Replay the users topic; report what the rules forbid. Returns every key's tenures in order.
pub fn replay(users: &[serde_json::Value], found: &mut Found) -> BTreeMap<String, Vec<Tenure>> {
    let mut tenures: BTreeMap<String, Vec<Tenure>> = BTreeMap::new();
    fn owner_of(t: &BTreeMap<String, Vec<Tenure>>, key: &str) -> Option<String> {
        t.get(key)
            .and_then(|v| v.last())
            .filter(|t| t.released.is_none())
            .map(|t| t.owner.clone())
    }
    fn claim(t: &mut BTreeMap<String, Vec<Tenure>>, key: &str, owner: &str, at: u64) {
        t.entry(key.to_string()).or_default().push(Tenure {
            owner: owner.to_string(),
            claimed: at,
            released: None,
        });
    }
    fn release(t: &mut BTreeMap<String, Vec<Tenure>>, key: &str, at: u64) {
        if let Some(last) = t.get_mut(key).and_then(|v| v.last_mut()) {
            last.released = Some(at);
        }
    }
    for (offset, e) in users.iter().enumerate() {
        let offset = offset as u64;
        let Some(stream) = stream_of(e) else { continue };
        match event_type(e) {
            Some("AccountCreated") => {
                let key = normalize(data_str(e, "email").unwrap_or(""));
                match owner_of(&tenures, &key) {
                    Some(o) if o == stream => {}
                    Some(o) => found.push(
                        Kind::Uniq,
                        format!(
                            "users[{offset}]: {stream} claims {key}, which {o} owns: two owners"
                        ),
                    ),
                    None => claim(&mut tenures, &key, stream, offset),
                }
            }
            Some("EmailChanged") => {
                let old = normalize(data_str(e, "old_email").unwrap_or(""));
                let new = normalize(data_str(e, "new_email").unwrap_or(""));
                let old_owner = owner_of(&tenures, &old);
                if old_owner.as_deref() != Some(stream) {
                    found.push(
                        Kind::Uniq,
                        format!(
                            "users[{offset}]: {stream} releases {old}, which it does not own \
                             (owner {old_owner:?})"
                        ),
                    );
                    continue;
                }
                if old != new {
                    match owner_of(&tenures, &new) {
                        Some(o) if o != stream => {
                            found.push(
                                Kind::Uniq,
                                format!(
                                    "users[{offset}]: {stream} claims {new}, which {o} owns: two \
                                     owners"
                                ),
                            );
                            continue;
                        }
                        Some(_) => {}
                        None => claim(&mut tenures, &new, stream, offset),
                    }
                    release(&mut tenures, &old, offset);
                }
            }
            Some("AccountDeleted") => {
                let key = normalize(data_str(e, "email").unwrap_or(""));
                let owner = owner_of(&tenures, &key);
                if owner.as_deref() != Some(stream) {
                    found.push(
                        Kind::Uniq,
                        format!(
                            "users[{offset}]: {stream} releases {key}, which it does not own \
                             (owner {owner:?})"
                        ),
                    );
                    continue;
                }
                release(&mut tenures, &key, offset);
            }
            _ => {}
        }
    }
    tenures
}

pub fn check(history: &History, state: &FinalState, idx: &Index<'_>, found: &mut Found) {
    let tenures = replay(idx.users, found);

    // The owners the nodes serve.
    for (node, keys) in &state.uniq {
        for (key, served) in keys {
            let expected = tenures
                .get(key)
                .and_then(|v| v.last())
                .filter(|t| t.released.is_none())
                .map(|t| Owner {
                    owner: t.owner.clone(),
                    since_offset: t.claimed,
                });
            if *served != expected {
                found.push(
                    Kind::Uniq,
                    format!(
                        "node {node} serves {EMAIL_SET}/{key} as owned by {served:?}; the users \
                         topic says {expected:?}"
                    ),
                );
            }
        }
    }

    // Every email_taken explained.
    let len = idx.users.len() as u64;
    // Per users event, the earliest moment a command that could have written it was sent.
    let earliest_sent: Vec<Option<u64>> = idx
        .users
        .iter()
        .map(|e| {
            let user = data_str(e, "id").unwrap_or("");
            history
                .users
                .iter()
                .filter(|u| match (&u.op, event_type(e)) {
                    (UserOp::SignUp { username, .. }, Some("AccountCreated")) => {
                        data_str(e, "username") == Some(username.as_str())
                    }
                    (UserOp::ChangeEmail { user: x, email }, Some("EmailChanged")) => {
                        x == user && data_str(e, "new_email") == Some(email.trim())
                    }
                    (UserOp::Delete { user: x }, Some("AccountDeleted")) => x == user,
                    _ => false,
                })
                .map(|u| u.sent_ms)
                .min()
        })
        .collect();
    for u in &history.users {
        let UserOutcome::Conflict { code, .. } = &u.outcome else {
            continue;
        };
        if code != "email_taken" {
            continue;
        }
        let (email, requester) = match &u.op {
            UserOp::SignUp { email, .. } => (email, None),
            UserOp::ChangeEmail { user, email } => (email, Some(user_stream(user))),
            UserOp::Delete { .. } => {
                found.push(
                    Kind::Uniq,
                    format!("a deletion was answered email_taken: {}", u.op.render()),
                );
                continue;
            }
        };
        let key = normalize(email);
        // A retried sign-up may get the stored refusal of an earlier try.
        let sent = match &u.op {
            UserOp::SignUp { username, .. } => history
                .users
                .iter()
                .filter(|x| matches!(&x.op, UserOp::SignUp { username: n, .. } if n == username))
                .map(|x| x.sent_ms)
                .min()
                .unwrap_or(u.sent_ms),
            _ => u.sent_ms,
        };
        // The refusal was decided at a point p of the log (after the events before p):
        // lo < p <= hi.
        let lo: Option<u64> = history
            .users
            .iter()
            .filter(|x| x.answered_ms < sent)
            .filter_map(|x| match &x.outcome {
                UserOutcome::Done { offset, .. } => Some(*offset),
                _ => None,
            })
            .max();
        let hi: u64 = earliest_sent
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some_and(|s| s > u.answered_ms))
            .map(|(i, _)| i as u64)
            .min()
            .unwrap_or(len);
        let from = lo.map_or(0, |l| l + 1);
        let explained = tenures.get(&key).is_some_and(|ts| {
            ts.iter().any(|t| {
                Some(&t.owner) != requester.as_ref()
                    && from.max(t.claimed + 1) <= hi.min(t.released.unwrap_or(u64::MAX))
            })
        });
        if !explained {
            found.push(
                Kind::Uniq,
                format!(
                    "`{}` (client {}, via node {}, {}..{} ms) was refused email_taken, but no \
                     other account owned {key} between users offsets {from} and {hi}; owners: {:?}",
                    u.op.render(),
                    u.client,
                    u.node,
                    u.sent_ms,
                    u.answered_ms,
                    tenures.get(&key)
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::check_all;
    use super::super::testing::*;
    use super::*;
    use crate::history::{History, UserAttempt};
    use serde_json::json;

    fn signup(
        username: &str,
        email: &str,
        outcome: UserOutcome,
        sent: u64,
        answered: u64,
    ) -> UserAttempt {
        UserAttempt {
            client: 0,
            node: 1,
            op: UserOp::SignUp {
                username: username.into(),
                email: email.into(),
                key: None,
            },
            retry: 0,
            outcome,
            sent_ms: sent,
            answered_ms: answered,
        }
    }

    fn taken() -> UserOutcome {
        UserOutcome::Conflict {
            code: "email_taken".into(),
            body: json!({"error": "email_taken"}),
        }
    }

    #[test]
    fn two_owners_and_a_wrong_served_owner_are_reported() {
        let users = vec![
            user_event(
                0,
                "AccountCreated",
                "a",
                json!({"username": "ua", "email": "x@y.org"}),
            ),
            user_event(
                1,
                "AccountCreated",
                "b",
                json!({"username": "ub", "email": "X@y.org"}),
            ),
        ];
        let h = History {
            users: vec![
                signup(
                    "ua",
                    "x@y.org",
                    UserOutcome::Done {
                        user: "a".into(),
                        offset: 0,
                    },
                    0,
                    1,
                ),
                signup("ub", "X@y.org", UserOutcome::Unknown("t".into()), 0, 1),
            ],
            ..History::default()
        };
        let mut s = state(vec![], users);
        s.uniq.insert(1, [("x@y.org".to_string(), None)].into());
        let v = check_all(&h, &s);
        assert_eq!(v.report.count(Kind::Uniq), 2, "{:?}", v.violations);
    }

    #[test]
    fn a_refusal_needs_an_owner_at_its_time() {
        // a owns x@y.org from offset 0 until its deletion at offset 1.
        let users = vec![
            user_event(
                0,
                "AccountCreated",
                "a",
                json!({"username": "ua", "email": "x@y.org"}),
            ),
            user_event(1, "AccountDeleted", "a", json!({"email": "x@y.org"})),
        ];
        let delete = UserAttempt {
            client: 0,
            node: 1,
            op: UserOp::Delete { user: "a".into() },
            retry: 0,
            outcome: UserOutcome::Done {
                user: "a".into(),
                offset: 1,
            },
            sent_ms: 20,
            answered_ms: 30,
        };
        // Refused while a owned it: explained.
        let during = signup("uc", "X@y.org", taken(), 5, 15);
        // Refused after the deletion was acknowledged: not explained.
        let after = signup("ud", "x@y.org", taken(), 40, 50);
        let h = History {
            users: vec![
                signup(
                    "ua",
                    "x@y.org",
                    UserOutcome::Done {
                        user: "a".into(),
                        offset: 0,
                    },
                    0,
                    2,
                ),
                delete,
                during,
                after,
            ],
            ..History::default()
        };
        let v = check_all(&h, &state(vec![], users));
        assert_eq!(v.report.count(Kind::Uniq), 1, "{:?}", v.violations);
        assert!(v.violations[0].contains("ud"), "{:?}", v.violations);
    }
}
