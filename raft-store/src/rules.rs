//! The replicated rules: uniq sets with their rules, and the idempotency window.
//!
//! Two halves live here. The *definitions* are replicated data that apply reads. The
//! *preparation* (`claims_for`, `normalize_key`) turns an event's data into normalized keys;
//! it runs on the node that receives a request and never inside apply, because Unicode tables
//! may differ between builds and apply must not depend on them.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

use crate::pointer::{Found, KeySource};
use crate::types::UniqClaim;

/// Everything apply needs to decide uniqueness and idempotency.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    #[serde(default)]
    pub uniq: Vec<UniqSet>,
    #[serde(default)]
    pub idempotency: IdempotencySettings,
}

/// One uniq set: a map from normalized key to the stream that owns it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UniqSet {
    pub name: String,
    pub topic: String,
    #[serde(default)]
    pub normalize: Normalize,
    #[serde(rename = "rule", default)]
    pub rules: Vec<UniqRule>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    #[default]
    None,
    Lowercase,
    Email,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UniqRule {
    /// The event type this rule applies to.
    pub event: String,
    pub op: UniqOp,
    /// JSON pointer into the event's data.
    pub key: String,
    /// For `update`: JSON pointer to the key being released.
    #[serde(default)]
    pub old_key: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum UniqOp {
    /// Claim `key`; the owner is the event's stream.
    Create,
    /// Release `old_key` (owned by this stream) and claim `key`.
    Update,
    /// Release `key` (owned by this stream).
    Delete,
}

/// Retries with the same idempotency key inside this window (in log time) get the stored
/// answer. Records beyond `records_max` are evicted oldest first.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencySettings {
    pub window_ms: u64,
    pub records_max: u64,
}

impl Default for IdempotencySettings {
    fn default() -> Self {
        IdempotencySettings {
            window_ms: 24 * 60 * 60 * 1000,
            records_max: 1_000_000,
        }
    }
}

impl fmt::Display for UniqOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UniqOp::Create => "create",
            UniqOp::Update => "update",
            UniqOp::Delete => "delete",
        })
    }
}

fn valid_pointer(p: &str) -> bool {
    p.starts_with('/')
}

impl Rules {
    /// Check the rules; the error names the offending set or rule.
    pub fn validate(&self) -> Result<(), String> {
        let mut names = BTreeSet::new();
        for (i, set) in self.uniq.iter().enumerate() {
            let at = format!("uniq[{i}] ({:?})", set.name);
            if set.name.is_empty()
                || !set
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(format!(
                    "{at}: name must be non-empty ASCII letters, digits, '_' or '-'"
                ));
            }
            if !names.insert(set.name.as_str()) {
                return Err(format!("{at}: the name is used twice"));
            }
            if set.topic.is_empty() {
                return Err(format!("{at}: topic must not be empty"));
            }
            if set.rules.is_empty() {
                return Err(format!("{at}: needs at least one [[uniq.rule]]"));
            }
            let mut events = BTreeSet::new();
            for (j, r) in set.rules.iter().enumerate() {
                let at = format!("{at}.rule[{j}]");
                if r.event.is_empty() {
                    return Err(format!("{at}: event must not be empty"));
                }
                if !events.insert(r.event.as_str()) {
                    return Err(format!(
                        "{at}: event {:?} has two rules in this set",
                        r.event
                    ));
                }
                if !valid_pointer(&r.key) {
                    return Err(format!(
                        "{at}: key {:?} is not a JSON pointer (it starts with '/')",
                        r.key
                    ));
                }
                match (r.op, &r.old_key) {
                    (UniqOp::Update, None) => {
                        return Err(format!("{at}: op = \"update\" needs old_key"))
                    }
                    (UniqOp::Update, Some(p)) if !valid_pointer(p) => {
                        return Err(format!("{at}: old_key {p:?} is not a JSON pointer"))
                    }
                    (UniqOp::Create | UniqOp::Delete, Some(_)) => {
                        return Err(format!("{at}: old_key is only for op = \"update\""))
                    }
                    _ => {}
                }
            }
        }
        if self.idempotency.window_ms == 0 || self.idempotency.records_max == 0 {
            return Err("idempotency: window and records_max must be positive".into());
        }
        Ok(())
    }

    pub fn set(&self, name: &str) -> Option<&UniqSet> {
        self.uniq.iter().find(|s| s.name == name)
    }

    /// The (set, rule) pairs that apply to an event of `event_type` in `topic`, in order.
    pub fn rules_for<'a>(
        &'a self,
        topic: &'a str,
        event_type: &'a str,
    ) -> impl Iterator<Item = (&'a UniqSet, &'a UniqRule)> {
        self.uniq
            .iter()
            .filter(move |s| s.topic == topic)
            .flat_map(move |s| {
                s.rules
                    .iter()
                    .filter(move |r| r.event == event_type)
                    .map(move |r| (s, r))
            })
    }

    /// A human-readable difference, empty when equal. For refusing to start on a config whose
    /// rules differ from the replicated ones.
    /// What differs between these rules (`mine`, say "the config") and `other` (`theirs`,
    /// say "replicated"): one line per set or setting, each side shown as JSON.
    pub fn diff(&self, other: &Rules, (mine, theirs): (&str, &str)) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.uniq {
            match other.set(&s.name) {
                None => out.push(format!("set {:?} is only {mine}: {}", s.name, json(s))),
                Some(o) if o != s => out.push(format!(
                    "set {:?} differs:\n    {mine}: {}\n    {theirs}: {}",
                    s.name,
                    json(s),
                    json(o)
                )),
                Some(_) => {}
            }
        }
        for o in &other.uniq {
            if self.set(&o.name).is_none() {
                out.push(format!("set {:?} is only {theirs}: {}", o.name, json(o)));
            }
        }
        if self.idempotency != other.idempotency {
            out.push(format!(
                "[idempotency] differs:\n    {mine}: {}\n    {theirs}: {}",
                json(&self.idempotency),
                json(&other.idempotency)
            ));
        }
        out
    }
}

/// A part of the rules as compact JSON, for a diff.
fn json(v: &impl Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("<{e}>"))
}

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

    #[test]
    fn validation_names_the_rule() {
        let mut r = users();
        r.uniq[0].rules[1].old_key = None;
        assert!(r
            .validate()
            .unwrap_err()
            .contains("uniq[0] (\"user_email\").rule[1]"));
        let mut r = users();
        r.uniq.push(r.uniq[0].clone());
        assert!(r.validate().unwrap_err().contains("used twice"));
    }
}
