//! Invariant 1: a write answered 201 (an append) or 200/201 (a users command) is never lost:
//! its events are present on the reference node at the offsets (and log index) the answer
//! named, after every crash and failover. Other nodes hold the same (see `agreement`).

use super::{data_str, event_type, stream_of, user_stream, Found, Index};
use crate::history::{History, Kind, Outcome, UserOp, UserOutcome};

pub fn check(history: &History, idx: &Index<'_>, found: &mut Found) {
    for a in &history.appends {
        let Outcome::Ok(c) = &a.outcome else { continue };
        if c.last_offset + 1 < c.first_offset
            || c.last_offset + 1 - c.first_offset != a.events as u64
        {
            found.push(
                Kind::Lost,
                format!(
                    "append {}: 201 names offsets {}..={} for {} events",
                    a.id, c.first_offset, c.last_offset, a.events
                ),
            );
            continue;
        }
        let mut problems = Vec::new();
        for j in 0..a.events {
            let want = c.first_offset + j as u64;
            match idx.place(&a.event_id(j)) {
                None => problems.push(format!("event {} is missing", a.event_id(j))),
                Some((topic, offset, e)) => {
                    let log_index = e.get("log_index").and_then(|v| v.as_u64());
                    if topic != a.topic || offset != want || log_index != Some(c.log_index) {
                        problems.push(format!(
                            "event {} is at {topic}[{offset}] log index {log_index:?}, the 201 \
                             said {}[{want}] log index {}",
                            a.event_id(j),
                            a.topic,
                            c.log_index
                        ));
                    }
                }
            }
        }
        if !problems.is_empty() {
            found.push(
                Kind::Lost,
                format!(
                    "append {} (client {}, via node {}, try {}, key {:?}, answered 201 at {} ms with \
                     offsets {}..={}): {}",
                    a.id,
                    a.client,
                    a.node,
                    a.retry,
                    a.key,
                    a.answered_ms,
                    c.first_offset,
                    c.last_offset,
                    problems.join("; ")
                ),
            );
        }
    }

    for u in &history.users {
        let UserOutcome::Done { user, offset } = &u.outcome else {
            continue;
        };
        let ev = idx.users.get(*offset as usize);
        let stream = user_stream(user);
        let matches = ev.is_some_and(|e| {
            stream_of(e) == Some(stream.as_str())
                && event_type(e) == Some(u.op.event_type())
                && match &u.op {
                    UserOp::SignUp {
                        username, email, ..
                    } => {
                        data_str(e, "username") == Some(username.as_str())
                            && data_str(e, "email") == Some(email.trim())
                    }
                    UserOp::ChangeEmail { email, .. } => {
                        data_str(e, "new_email") == Some(email.trim())
                    }
                    UserOp::Delete { .. } => true,
                }
        });
        if !matches {
            found.push(
                Kind::Lost,
                format!(
                    "users command `{}` (client {}, via node {}, answered at {} ms: user {user} \
                     offset {offset}) is not at users[{offset}], which holds {}",
                    u.op.render(),
                    u.client,
                    u.node,
                    u.answered_ms,
                    ev.map_or("nothing".to_string(), |e| e.to_string())
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::check_all;
    use super::super::testing::*;
    use crate::history::{History, Kind, Outcome, UserAttempt, UserOp, UserOutcome};
    use serde_json::json;

    #[test]
    fn acknowledged_present_and_unknown_either_way_pass() {
        let h = History {
            appends: vec![
                attempt("a", ok(0, 5)),
                attempt("b", Outcome::Unknown("timeout".into())),
                attempt("c", Outcome::Unknown("timeout".into())),
            ],
            ..History::default()
        };
        let v = check_all(
            &h,
            &state(
                vec![event("t", 0, 5, "a.0"), event("t", 1, 6, "b.0")],
                vec![],
            ),
        );
        assert!(v.ok(), "{:?}", v.violations);
        let r = v.report;
        assert_eq!((r.acknowledged, r.unknown, r.unknown_present), (1, 2, 1));
    }

    #[test]
    fn a_lost_append_and_a_lost_sign_up_are_reported() {
        let signup = UserAttempt {
            client: 0,
            node: 1,
            op: UserOp::SignUp {
                username: "u1".into(),
                email: "a@x.org".into(),
                key: None,
            },
            retry: 0,
            outcome: UserOutcome::Done {
                user: "id1".into(),
                offset: 1,
            },
            sent_ms: 0,
            answered_ms: 1,
        };
        let h = History {
            appends: vec![attempt("a", ok(0, 5))],
            users: vec![signup],
            ..History::default()
        };
        let users = vec![user_event(
            0,
            "AccountCreated",
            "id0",
            json!({"username": "u0", "email": "b@x.org"}),
        )];
        let v = check_all(&h, &state(vec![], users));
        assert_eq!(v.report.count(Kind::Lost), 2, "{:?}", v.violations);
    }
}
