//! The replicated rules: uniq sets with their rules, and the idempotency window.
//!
//! The definitions here are replicated data that apply reads, and the rules as the config and
//! the API write them (their OpenAPI schemas behind the `openapi` feature, which the node
//! turns on). The preparation of claims
//! (normalized keys from an event's data) lives in `node::claims`, on the node that receives a
//! request and never inside apply: Unicode tables may differ between builds, and apply must
//! not depend on them, so this crate does not link them.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Everything apply needs to decide uniqueness and idempotency.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    #[serde(default)]
    pub uniq: Vec<UniqSet>,
    #[serde(default)]
    pub idempotency: IdempotencySettings,
}

/// One uniq set: a map from normalized key to the stream that owns it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    #[default]
    None,
    Lowercase,
    Email,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One set with one update rule: what validation looks at.
    fn one_update_rule() -> Rules {
        let toml = r#"
            [[uniq]]
            name = "s"
            topic = "t"
            [[uniq.rule]]
            event = "U"
            op = "update"
            old_key = "/old"
            key = "/new"
        "#;
        let r: Rules = toml::from_str(toml).unwrap();
        r.validate().unwrap();
        r
    }

    #[test]
    fn validation_names_the_rule() {
        let mut r = one_update_rule();
        r.uniq[0].rules[0].old_key = None;
        assert!(r
            .validate()
            .unwrap_err()
            .contains("uniq[0] (\"s\").rule[0]"));
        let mut r = one_update_rule();
        r.uniq.push(r.uniq[0].clone());
        assert!(r.validate().unwrap_err().contains("used twice"));
    }
}
