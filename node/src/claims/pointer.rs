//! JSON pointers (RFC 6901) into an event's data as the client sent it, for the keys of uniq
//! rules. An append keeps its data as raw text; parsing it whole into a `serde_json::Value`
//! just to read one field allocated every key and string of the object, a quarter of the
//! receiving node's work of preparing a sign-up (bench/README.md, issue 25 step 10). Walking
//! the text allocates nothing unless a key, a pointer token or the found string has escapes.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

/// What a pointer finds where a uniq key should be.
#[derive(Debug, PartialEq, Eq)]
pub enum Found<'a> {
    Missing,
    NotString,
    Str(Cow<'a, str>),
}

/// Event data a uniq key is read from: parsed (users, the uniq check route) or raw (appends).
pub trait KeySource {
    fn string_at(&self, pointer: &str) -> Found<'_>;
}

impl KeySource for Value {
    fn string_at(&self, pointer: &str) -> Found<'_> {
        match self.pointer(pointer) {
            None => Found::Missing,
            Some(Value::String(s)) => Found::Str(Cow::Borrowed(s)),
            Some(_) => Found::NotString,
        }
    }
}

impl KeySource for RawValue {
    /// The same answers as `Value::pointer` on the parsed value, for text without duplicate
    /// keys (what the API admits, `api::json_check`): the first key that matches is the one.
    fn string_at(&self, pointer: &str) -> Found<'_> {
        let mut at = self.get();
        if !pointer.is_empty() {
            let Some(tokens) = pointer.strip_prefix('/') else {
                return Found::Missing;
            };
            for token in tokens.split('/') {
                let token = unescape(token);
                match child(at, &token) {
                    Some(c) => at = c,
                    None => return Found::Missing,
                }
            }
        }
        if !at.starts_with('"') {
            return Found::NotString;
        }
        let mut de = serde_json::Deserializer::from_str(at);
        match de.deserialize_str(TextVisitor) {
            Ok(s) => Found::Str(s),
            // Not reached for a RawValue (its text is valid JSON); a string that cannot be
            // read is not a key.
            Err(_) => Found::NotString,
        }
    }
}

fn unescape(token: &str) -> Cow<'_, str> {
    if token.contains('~') {
        Cow::Owned(token.replace("~1", "/").replace("~0", "~"))
    } else {
        Cow::Borrowed(token)
    }
}

/// An array index as RFC 6901 writes it (no sign, no leading zeros), as `Value::pointer` reads it.
fn index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

/// The text of the member `token` of the object or array whose text is `json`.
fn child<'a>(json: &'a str, token: &str) -> Option<&'a str> {
    let mut de = serde_json::Deserializer::from_str(json);
    // Strings, numbers and the like have no members: the visitor refuses them.
    de.deserialize_any(ChildVisitor { token })
        .ok()
        .flatten()
        .map(RawValue::get)
}

struct ChildVisitor<'t> {
    token: &'t str,
}

impl<'de> Visitor<'de> for ChildVisitor<'_> {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object or an array")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key_seed(TextSeed)? {
            if found.is_none() && key == self.token {
                found = Some(map.next_value::<&'de RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let wanted = index(self.token);
        let mut found = None;
        let mut i = 0usize;
        loop {
            if Some(i) == wanted {
                match seq.next_element::<&'de RawValue>()? {
                    Some(v) => found = Some(v),
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            i += 1;
        }
        Ok(found)
    }
}

/// A string, borrowed from the text when it has no escapes.
struct TextSeed;

impl<'de> serde::de::DeserializeSeed<'de> for TextSeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn raw(v: &Value) -> Box<RawValue> {
        RawValue::from_string(v.to_string()).unwrap()
    }

    #[test]
    fn finds_what_value_pointer_finds() {
        let v = serde_json::json!({
            "email": "a@x.io",
            "n": 3,
            "a/b": {"c~d": ["x", "y\"z"]},
            "list": [{"k": "v"}],
            "esc\u{e9}": "caf\u{e9}"
        });
        let r = raw(&v);
        for p in [
            "",
            "/email",
            "/n",
            "/missing",
            "/a~1b/c~0d/1",
            "/a~1b/c~0d/0",
            "/a~1b/c~0d/2",
            "/a~1b/c~0d/01",
            "/a~1b/c~0d/+1",
            "/list/0/k",
            "/list/0/k/deeper",
            "/email/x",
            "email",
            "/esc\u{e9}",
        ] {
            assert_eq!(r.string_at(p), v.string_at(p), "pointer {p:?}");
        }
        assert_eq!(r.string_at("/a~1b/c~0d/1"), Found::Str("y\"z".into()));
        assert_eq!(r.string_at("/n"), Found::NotString);
    }

    /// A key written with escapes in the text is the key it stands for.
    #[test]
    fn escaped_keys_and_strings_match_their_meaning() {
        let r = RawValue::from_string(r#"{"e\u006dail": "a\u0040x.io"}"#.into()).unwrap();
        assert_eq!(r.string_at("/email"), Found::Str("a@x.io".into()));
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::from),
            "[a-c/~\"\\\\é]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            // Keys share the tokens' alphabet, so pointers often find something.
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-c/~é]{0,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn raw_and_parsed_agree(v in json(), tokens in prop::collection::vec("[a-c/~é01]{0,3}", 0..4)) {
            let pointer: String = tokens
                .iter()
                .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
                .collect();
            // Compact and pretty text alike: whitespace between tokens changes nothing.
            let r = raw(&v);
            prop_assert_eq!(r.string_at(&pointer), v.string_at(&pointer));
            let pretty = RawValue::from_string(serde_json::to_string_pretty(&v).unwrap()).unwrap();
            prop_assert_eq!(pretty.string_at(&pointer), v.string_at(&pointer));
        }
    }
}
