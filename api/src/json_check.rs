//! Event data and metadata are stored as the client sent them (raw JSON), so what the log keeps
//! must mean one thing to every reader. JSON allows duplicate object keys, and parsers disagree
//! on which one wins: `{"email": "a@x.io", "email": "b@x.io"}` could claim one address in the
//! uniq set and mail another. Such values are refused, as are values serde_json cannot hold
//! (numbers beyond f64, lone surrogates, nesting past its recursion limit).

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
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value::<Checked>()?;
            if !seen.insert(key) {
                return Err(A::Error::custom("duplicate object key"));
            }
        }
        Ok(Checked)
    }
}

#[cfg(test)]
mod tests {
    use super::unambiguous;

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
        let bad = [
            (
                r#"{"email":"a@x.io","email":"b@x.io"}"#.to_string(),
                "duplicate",
            ),
            (r#"{"a":{"k":1,"k":1}}"#.to_string(), "duplicate"),
            (r#"{"a":[{"k":1,"k":2}]}"#.to_string(), "duplicate"),
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
