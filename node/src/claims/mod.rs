//! The preparation of uniq claims, on the node that receives a request: the keys an event's
//! data holds under the rules in force, normalized as each set says. Never inside apply
//! (`raft_store::rules`): Unicode and IDNA tables may differ between builds, and apply must not
//! depend on them.

mod pointer;

use raft_store::rules::{Normalize, Rules};
use raft_store::UniqClaim;

pub use self::pointer::{Found, KeySource};

/// A key that cannot be claimed: the field and why. A 400 for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct KeyError {
    pub field: String,
    pub message: String,
}

/// Normalize a key as its set says (`api::keys`). Runs on the receiving node only.
pub fn normalize_key(normalize: Normalize, raw: &str) -> Result<String, String> {
    match normalize {
        Normalize::None => api::keys::plain(raw),
        Normalize::Lowercase => api::keys::lowercase(raw),
        Normalize::Email => api::keys::email(raw),
    }
}

fn key_at<D: KeySource + ?Sized>(
    data: &D,
    pointer: &str,
    field_prefix: &str,
    normalize: Normalize,
) -> Result<String, KeyError> {
    let error = |message: String| KeyError {
        field: format!("{field_prefix}{pointer}"),
        message,
    };
    match data.string_at(pointer) {
        Found::Missing => Err(error("is required by a uniq rule".into())),
        Found::NotString => Err(error("must be a string (it is a uniq key)".into())),
        Found::Str(raw) => normalize_key(normalize, &raw).map_err(error),
    }
}

/// The claims of one event under `rules`, with normalized keys. `field_prefix` names the
/// event in errors (for example `events[0].data`).
pub fn claims_for<D: KeySource + ?Sized>(
    rules: &Rules,
    topic: &str,
    event_type: &str,
    data: &D,
    field_prefix: &str,
) -> Result<Vec<UniqClaim>, KeyError> {
    rules
        .rules_for(topic, event_type)
        .map(|(set, rule)| {
            Ok(UniqClaim {
                set: set.name.clone(),
                op: rule.op,
                key: key_at(data, &rule.key, field_prefix, set.normalize)?,
                old_key: match &rule.old_key {
                    Some(p) => Some(key_at(data, p, field_prefix, set.normalize)?),
                    None => None,
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_store::rules::UniqOp;

    fn users() -> Rules {
        let toml = r#"
            [[uniq]]
            name = "user_email"
            topic = "users"
            normalize = "email"
            [[uniq.rule]]
            event = "AccountCreated"
            op = "create"
            key = "/email"
            [[uniq.rule]]
            event = "EmailChanged"
            op = "update"
            old_key = "/old_email"
            key = "/new_email"
        "#;
        let r: Rules = toml::from_str(toml).unwrap();
        r.validate().unwrap();
        r
    }

    #[test]
    fn claims_follow_the_rules_and_name_missing_fields() {
        let r = users();
        let c = claims_for(
            &r,
            "users",
            "EmailChanged",
            &serde_json::json!({"old_email":"A@x.io","new_email":"B@x.io"}),
            "events[0].data",
        )
        .unwrap();
        assert_eq!(
            c,
            vec![UniqClaim {
                set: "user_email".into(),
                op: UniqOp::Update,
                key: "b@x.io".into(),
                old_key: Some("a@x.io".into())
            }]
        );
        assert!(
            claims_for(&r, "other", "AccountCreated", &serde_json::json!({}), "d")
                .unwrap()
                .is_empty()
        );
        let e = claims_for(
            &r,
            "users",
            "AccountCreated",
            &serde_json::json!({"name":"x"}),
            "events[2].data",
        )
        .unwrap_err();
        assert_eq!(e.field, "events[2].data/email");
    }
}
