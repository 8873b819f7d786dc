//! No phantom: every event present was sent by a client. Plain appends are recognised by their
//! unique `data.id`; users events by what the command asked: a sign-up by its unique username
//! and email, an email change by user and new email, a deletion by user.

use std::collections::BTreeSet;

use super::{data_str, event_type, stream_of, user_stream, Found, Index};
use crate::history::{History, Kind, UserOp};

pub fn check(history: &History, idx: &Index<'_>, found: &mut Found) {
    let sent: BTreeSet<String> = history
        .appends
        .iter()
        .flat_map(|a| (0..a.events).map(move |j| a.event_id(j)))
        .collect();
    for (id, places) in &idx.by_id {
        if !sent.contains(*id) {
            let (topic, offset, _) = places[0];
            found.push(
                Kind::Phantom,
                format!("event {id} at {topic}[{offset}] is present but was never sent"),
            );
        }
    }
    for (topic, offset, e) in &idx.without_id {
        found.push(
            Kind::Phantom,
            format!("{topic}[{offset}] has no data.id, no client sent it: {e}"),
        );
    }

    for (offset, e) in idx.users.iter().enumerate() {
        let user = data_str(e, "id").unwrap_or("");
        let stream_ok = stream_of(e) == Some(user_stream(user).as_str());
        let sent = stream_ok
            && history.users.iter().any(|u| match (&u.op, event_type(e)) {
                (
                    UserOp::SignUp {
                        username, email, ..
                    },
                    Some("AccountCreated"),
                ) => {
                    data_str(e, "username") == Some(username.as_str())
                        && data_str(e, "email") == Some(email.trim())
                }
                (UserOp::ChangeEmail { user: u, email }, Some("EmailChanged")) => {
                    u == user && data_str(e, "new_email") == Some(email.trim())
                }
                (UserOp::Delete { user: u }, Some("AccountDeleted")) => u == user,
                _ => false,
            });
        if !sent {
            found.push(
                Kind::Phantom,
                format!("users[{offset}] matches no command a client sent: {e}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::check_all;
    use super::super::testing::*;
    use crate::history::{History, Kind};
    use serde_json::json;

    #[test]
    fn unsent_events_are_phantoms() {
        let h = History {
            appends: vec![attempt("a", ok(0, 5))],
            ..History::default()
        };
        let users = vec![user_event(
            0,
            "AccountCreated",
            "id0",
            json!({"username": "nobody", "email": "b@x.org"}),
        )];
        let v = check_all(
            &h,
            &state(
                vec![event("t", 0, 5, "a.0"), event("t", 1, 6, "zz.0")],
                users,
            ),
        );
        assert_eq!(v.report.count(Kind::Phantom), 2, "{:?}", v.violations);
    }
}
