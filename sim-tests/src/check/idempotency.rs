//! Invariant 4, second half: a request is applied at most once, however often it was sent.
//! No append's event is present twice (retries under an idempotency key carry the same
//! events); no sign-up (unique username) created two accounts; no more email changes of a
//! user to an address than commands asked for; no account deleted twice. And every definite
//! answer under one idempotency key is the same answer (the stored one is replayed).

use std::collections::BTreeMap;

use super::{data_str, event_type, Found, Index};
use crate::history::{History, Kind, Outcome, UserOp, UserOutcome};

pub fn check(history: &History, idx: &Index<'_>, found: &mut Found) {
    for (id, places) in &idx.by_id {
        if places.len() > 1 {
            let at: Vec<String> = places.iter().map(|(t, o, _)| format!("{t}[{o}]")).collect();
            found.push(
                Kind::Duplicate,
                format!(
                    "event {id} is present {} times: {}",
                    places.len(),
                    at.join(", ")
                ),
            );
        }
    }

    // Users events per command.
    let mut created: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut changed: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
    let mut deleted: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (offset, e) in idx.users.iter().enumerate() {
        let offset = offset as u64;
        let user = data_str(e, "id").unwrap_or("");
        match event_type(e) {
            Some("AccountCreated") => created
                .entry(data_str(e, "username").unwrap_or(""))
                .or_default()
                .push(offset),
            Some("EmailChanged") => changed
                .entry((user, data_str(e, "new_email").unwrap_or("")))
                .or_default()
                .push(offset),
            Some("AccountDeleted") => deleted.entry(user).or_default().push(offset),
            _ => {}
        }
    }
    for (username, offsets) in &created {
        if offsets.len() > 1 {
            found.push(
                Kind::Duplicate,
                format!(
                    "sign-up {username} created {} accounts, at users{offsets:?}",
                    offsets.len()
                ),
            );
        }
    }
    for ((user, email), offsets) in &changed {
        let asked = history
            .users
            .iter()
            .filter(|u| matches!(&u.op, UserOp::ChangeEmail { user: x, email: m } if x == user && m.trim() == *email))
            .count();
        if offsets.len() > asked {
            found.push(
                Kind::Duplicate,
                format!(
                    "user {user} changed to {email} {} times (at users{offsets:?}) for {asked} \
                     command(s)",
                    offsets.len()
                ),
            );
        }
    }
    for (user, offsets) in &deleted {
        if offsets.len() > 1 {
            found.push(
                Kind::Duplicate,
                format!(
                    "user {user} deleted {} times, at users{offsets:?}",
                    offsets.len()
                ),
            );
        }
    }

    // One answer per key: appends (per topic and key) and sign-ups (per key).
    let mut by_key: BTreeMap<(&str, &str), Vec<&Outcome>> = BTreeMap::new();
    for a in &history.appends {
        if let Some(k) = &a.key {
            by_key.entry((&a.topic, k)).or_default().push(&a.outcome);
        }
    }
    for ((topic, key), outcomes) in &by_key {
        let definite: Vec<String> = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Ok(_) | Outcome::Conflict(_)))
            .map(|o| o.render())
            .collect();
        if definite.windows(2).any(|w| w[0] != w[1]) {
            found.push(
                Kind::Duplicate,
                format!(
                    "key {key} in {topic} got different answers: {}",
                    definite.join(" / ")
                ),
            );
        }
    }
    let mut signups: BTreeMap<&str, Vec<&UserOutcome>> = BTreeMap::new();
    for u in &history.users {
        if let UserOp::SignUp { key: Some(k), .. } = &u.op {
            signups.entry(k).or_default().push(&u.outcome);
        }
    }
    for (key, outcomes) in &signups {
        let definite: Vec<String> = outcomes
            .iter()
            .filter(|o| matches!(o, UserOutcome::Done { .. } | UserOutcome::Conflict { .. }))
            .map(|o| o.render())
            .collect();
        if definite.windows(2).any(|w| w[0] != w[1]) {
            found.push(
                Kind::Duplicate,
                format!(
                    "sign-up key {key} got different answers: {}",
                    definite.join(" / ")
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::check_all;
    use super::super::testing::*;
    use crate::history::{History, Kind, Outcome};

    #[test]
    fn a_retry_that_appended_again_is_a_duplicate() {
        let mut first = attempt("a", Outcome::Unknown("timeout".into()));
        first.key = Some("k".into());
        let mut retry = attempt("a", ok(1, 6));
        retry.key = Some("k".into());
        retry.retry = 1;
        let h = History {
            appends: vec![first, retry],
            ..History::default()
        };
        let v = check_all(
            &h,
            &state(
                vec![event("t", 0, 5, "a.0"), event("t", 1, 6, "a.0")],
                vec![],
            ),
        );
        assert!(v.report.count(Kind::Duplicate) >= 1, "{:?}", v.violations);
        assert!(
            v.violations.join("\n").contains("present 2 times"),
            "{:?}",
            v.violations
        );
    }

    #[test]
    fn two_answers_for_one_key_are_reported() {
        let mut first = attempt("a", ok(0, 5));
        first.key = Some("k".into());
        let mut retry = attempt("a", ok(1, 6));
        retry.key = Some("k".into());
        let h = History {
            appends: vec![first, retry],
            ..History::default()
        };
        let v = check_all(&h, &state(vec![event("t", 0, 5, "a.0")], vec![]));
        assert!(
            v.violations.join("\n").contains("different answers"),
            "{:?}",
            v.violations
        );
    }
}
