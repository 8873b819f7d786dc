//! Invariants 4 and 7 as the clients see them: a request answered 409 (or any 4xx) left
//! nothing behind; an append is all or nothing; faults make the cluster unavailable (503),
//! never broken (no other 5xx), and valid requests never get another 4xx; a user whose
//! sign-up was acknowledged before the command was sent, and who was never deleted, is never
//! answered 404 (the users commands read linearizably).
//!
//! Also: a write whose every try was answered as certainly not applied (503 `unavailable`, a
//! refused connection, a 409) is absent.
//!
//! Returns how many appends refused for sure and how many unknown ones ended up present.

use std::collections::{BTreeMap, BTreeSet};

use super::{data_str, event_type, Found, Index};
use crate::history::{History, Kind, Outcome, UserOp, UserOutcome};

pub fn check(history: &History, idx: &Index<'_>, found: &mut Found) -> (usize, usize) {
    let (mut failed_present, mut unknown_present) = (0, 0);
    // The tries of each logical append (retries under a key share the id).
    let mut tries: BTreeMap<&str, Vec<&Outcome>> = BTreeMap::new();
    for a in &history.appends {
        tries.entry(&a.id).or_default().push(&a.outcome);
    }
    for a in &history.appends {
        let n_present = (0..a.events)
            .filter(|&j| idx.place(&a.event_id(j)).is_some())
            .count();
        if n_present != 0 && n_present != a.events && a.retry == 0 {
            found.push(
                Kind::Answer,
                format!(
                    "append {} is partly present ({n_present} of {} events): appends are atomic",
                    a.id, a.events
                ),
            );
        }
        match &a.outcome {
            Outcome::Ok(_) => {}
            Outcome::Conflict(body) => {
                // A retry's 409 under a key whose earlier try appended is caught by
                // `idempotency` (two answers) as well.
                if n_present > 0 {
                    found.push(
                        Kind::Answer,
                        format!(
                            "append {} (try {}) was answered 409 ({body}) but its events are present",
                            a.id, a.retry
                        ),
                    );
                }
            }
            Outcome::Failed(status, body) => {
                if (*status >= 500 && *status != 503) || (400..500).contains(status) {
                    found.push(
                        Kind::Answer,
                        format!(
                            "append {} via node {} was answered {status}: {body}",
                            a.id, a.node
                        ),
                    );
                }
            }
            Outcome::Unknown(_) => {
                if n_present > 0 {
                    unknown_present += 1;
                }
            }
        }
        // Present although every try was refused for sure (503 `unavailable` promises "not
        // applied, retry is safe"; a refused connection sent nothing).
        let last_try = tries[a.id.as_str()].len() as u32 == a.retry + 1;
        let all_failed = tries[a.id.as_str()]
            .iter()
            .all(|o| matches!(o, Outcome::Failed(..)));
        if last_try && all_failed && n_present > 0 {
            failed_present += 1;
            found.push(
                Kind::Answer,
                format!(
                    "append {} is present although every try of it was answered as not applied \
                     (last: via node {}: {})",
                    a.id,
                    a.node,
                    a.outcome.render()
                ),
            );
        }
    }

    let deleted: BTreeSet<&str> = idx
        .users
        .iter()
        .filter(|e| event_type(e) == Some("AccountDeleted"))
        .filter_map(|e| data_str(e, "id"))
        .collect();
    for u in &history.users {
        match &u.outcome {
            UserOutcome::Failed(status, body)
                if (*status >= 500 && *status != 503) || (400..500).contains(status) =>
            {
                found.push(
                    Kind::Answer,
                    format!(
                        "users command `{}` via node {} was answered {status}: {body}",
                        u.op.render(),
                        u.node
                    ),
                );
            }
            UserOutcome::NotFound => {
                let user = match &u.op {
                    UserOp::ChangeEmail { user, .. } | UserOp::Delete { user } => user,
                    UserOp::SignUp { .. } => {
                        found.push(
                            Kind::Answer,
                            format!("a sign-up was answered 404: {}", u.op.render()),
                        );
                        continue;
                    }
                };
                let created_before = history.users.iter().any(|c| {
                    matches!(&c.op, UserOp::SignUp { .. })
                        && matches!(&c.outcome, UserOutcome::Done { user: x, .. } if x == user)
                        && c.answered_ms < u.sent_ms
                });
                if created_before && !deleted.contains(user.as_str()) {
                    found.push(
                        Kind::Answer,
                        format!(
                            "users command `{}` via node {} (sent at {} ms) was answered 404, but \
                             the user's sign-up was acknowledged earlier and it was never deleted",
                            u.op.render(),
                            u.node,
                            u.sent_ms
                        ),
                    );
                }
            }
            _ => {}
        }
    }
    for (offset, e) in idx.users.iter().enumerate() {
        let user = data_str(e, "id").unwrap_or("");
        let candidates: Vec<&UserOutcome> = history
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
            .map(|u| &u.outcome)
            .collect();
        let refused = |o: &&UserOutcome| {
            matches!(
                o,
                UserOutcome::Conflict { .. } | UserOutcome::NotFound | UserOutcome::Failed(..)
            )
        };
        if !candidates.is_empty() && candidates.iter().all(refused) {
            found.push(
                Kind::Answer,
                format!(
                    "users[{offset}] is present although every command that could have written \
                     it was answered as not applied ({}): {e}",
                    candidates
                        .iter()
                        .map(|o| o.render())
                        .collect::<Vec<_>>()
                        .join(" / ")
                ),
            );
        }
    }
    (failed_present, unknown_present)
}

#[cfg(test)]
mod tests {
    use super::super::check_all;
    use super::super::testing::*;
    use crate::history::{History, Kind, Outcome};
    use serde_json::json;

    #[test]
    fn a_conflict_that_wrote_and_a_500_are_reported() {
        let h = History {
            appends: vec![
                attempt("a", Outcome::Conflict(json!({}))),
                attempt("b", Outcome::Failed(500, "{}".into())),
            ],
            ..History::default()
        };
        let v = check_all(&h, &state(vec![event("t", 0, 5, "a.0")], vec![]));
        assert_eq!(v.report.count(Kind::Answer), 2, "{:?}", v.violations);
        assert!(v.violations[0].contains("409"), "{:?}", v.violations);
    }
}
