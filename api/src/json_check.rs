//! Event data and metadata are stored as the client sent them (raw JSON), so what the log keeps
//! must mean one thing to every reader. JSON allows duplicate object keys, and parsers disagree
//! on which one wins: `{"email": "a@x.io", "email": "b@x.io"}` could claim one address in the
//! uniq set and mail another. Such values are refused, as are values serde_json cannot hold
//! (numbers beyond f64, lone surrogates, nesting past its recursion limit).

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};

/// Why `raw` is not a JSON value every reader reads alike, if it is not.
pub fn unambiguous(raw: &str) -> Result<(), String> {
    serde_json::from_str::<Checked>(raw)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A JSON value that was checked and thrown away.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        // Most objects have a few keys, and most keys borrow from the body (no escapes): a
        // scan of a short list costs less than hashing an owned copy of each key.
        let mut seen: Vec<Key<'de>> = Vec::new();
        let mut many: Option<HashSet<Key<'de>>> = None;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            map.next_value::<Checked>()?;
            let fresh = match &mut many {
                Some(set) => set.insert(key),
                None if seen.len() < SCANNED_KEYS_MAX => {
                    let fresh = !seen.contains(&key);
                    seen.push(key);
                    fresh
                }
                None => {
                    let set = many.insert(seen.drain(..).collect());
                    set.insert(key)
                }
            };
            if !fresh {
                return Err(A::Error::custom("duplicate object key"));
            }
        }
        Ok(Checked)
    }
}

/// Keys an object may have before they are kept in a hash set rather than scanned.
const SCANNED_KEYS_MAX: usize = 16;

/// An object key, borrowed from the input when it has no escapes.
#[derive(PartialEq, Eq, Hash)]
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::unambiguous;

    /// An object of 20 keys, k0 to k19, then `last`.
    fn many_keys_and(last: &str) -> String {
        let keys: Vec<String> = (0..20).map(|i| format!("\"k{i}\":{i}")).collect();
        format!("{{{},\"{last}\":0}}", keys.join(","))
    }

    #[test]
    fn refuses_what_readers_could_read_differently() {
        for ok in [
            r#"{}"#,
            r#"{"a":1,"b":{"a":2},"c":[{"a":1},{"a":1}]}"#,
            r#"{"e":"\u00e9"}"#,
        ] {
            assert_eq!(unambiguous(ok), Ok(()), "{ok}");
        }
        let deep_ok = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(unambiguous(&deep_ok), Ok(()));
        assert_eq!(unambiguous(&many_keys_and("k40")), Ok(()));
        let bad = [
            (
                r#"{"email":"a@x.io","email":"b@x.io"}"#.to_string(),
                "duplicate",
            ),
            (r#"{"a":{"k":1,"k":1}}"#.to_string(), "duplicate"),
            (r#"{"a":[{"k":1,"k":2}]}"#.to_string(), "duplicate"),
            // The same key spelled with an escape, and a duplicate past the scanned keys.
            (r#"{"k":1,"\u006b":2}"#.to_string(), "duplicate"),
            (many_keys_and("k0"), "duplicate"),
            (r#"{"n":1e400}"#.to_string(), "out of range"),
            (r#"{"s":"\ud800"}"#.to_string(), "escape"),
            (
                format!("{}1{}", "[".repeat(200), "]".repeat(200)),
                "recursion",
            ),
        ];
        for (raw, why) in bad {
            let err = unambiguous(&raw).expect_err(&raw);
            assert!(err.contains(why), "{raw}: {err}");
        }
    }
}
