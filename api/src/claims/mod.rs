//! The preparation of uniq claims, on the node that receives a request: the keys an event's
//! data holds under the rules in force, normalized as each set says. Never inside apply
//! (`raft_store::rules`): Unicode and IDNA tables may differ between builds, and apply must not
//! depend on them.

mod pointer;

use raft_store::rules::{Normalize, Rules};
use raft_store::UniqClaim;
use unicode_normalization::UnicodeNormalization;

pub use self::pointer::{Found, KeySource};

/// A key that cannot be claimed: the field and why. A 400 for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct KeyError {
    pub field: String,
    pub message: String,
}

/// Bidirectional formatting characters: they make two keys look alike.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `raw` in Unicode's composed form (NFC), trimmed and lowercase. ASCII text is its own NFC
/// and lowercases byte by byte, and most keys are ASCII: composing them anyway was two thirds
/// of normalizing an email, and 2 % of a leader's CPU at 64 clients (bench/README.md, issue
/// 25 step 8); the shortcut also makes one string where the general path makes three.
fn folded(raw: &str) -> String {
    if raw.is_ascii() {
        raw.trim().to_ascii_lowercase()
    } else {
        raw.nfc().collect::<String>().trim().to_lowercase()
    }
}

/// Normalize a key as its set says. Runs on the receiving node only.
pub fn normalize_key(normalize: Normalize, raw: &str) -> Result<String, String> {
    if raw.chars().any(|c| c.is_control() || is_bidi_control(c)) {
        return Err("must not contain control or bidirectional formatting characters".into());
    }
    match normalize {
        Normalize::None => Ok(raw.to_string()),
        Normalize::Lowercase => Ok(folded(raw)),
        Normalize::Email => {
            let s = folded(raw);
            let (local, domain) = s
                .rsplit_once('@')
                .ok_or("is not an email address (no '@')")?;
            if local.is_empty() || domain.is_empty() {
                return Err("is not an email address".into());
            }
            let ascii =
                idna::domain_to_ascii(domain).map_err(|_| "has an invalid domain".to_string())?;
            if ascii.is_empty() {
                return Err("has an invalid domain".into());
            }
            if ascii == domain {
                return Ok(s);
            }
            Ok(format!("{local}@{ascii}"))
        }
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

    proptest::proptest! {
        /// The ASCII shortcut of `folded` is what composing, trimming and lowercasing give.
        #[test]
        fn ascii_folds_as_unicode_does(s in "[\\x00-\\x7f]{0,40}") {
            proptest::prop_assert_eq!(folded(&s), s.nfc().collect::<String>().trim().to_lowercase());
        }
    }

    #[test]
    fn email_normalization_folds_case_space_unicode_and_idna() {
        let n = |s| normalize_key(Normalize::Email, s);
        assert_eq!(n("  Ada@Example.COM ").unwrap(), "ada@example.com");
        // NFC: a decomposed é equals the composed one.
        assert_eq!(n("e\u{301}@x.org").unwrap(), n("\u{e9}@x.org").unwrap());
        assert_eq!(
            n("bob@Bücher.example").unwrap(),
            "bob@xn--bcher-kva.example"
        );
        assert!(n("no-at-sign").is_err());
        assert!(n("@example.com").is_err());
        assert!(
            n("a\u{202E}b@example.com").is_err(),
            "bidi override refused"
        );
        assert!(n("a\u{0007}b@example.com").is_err(), "control refused");
    }

    #[test]
    fn lowercase_and_none() {
        assert_eq!(normalize_key(Normalize::Lowercase, " ÄBC ").unwrap(), "äbc");
        assert_eq!(normalize_key(Normalize::None, " ÄBC ").unwrap(), " ÄBC ");
    }

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
