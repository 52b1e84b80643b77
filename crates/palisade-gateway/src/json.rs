//! Strict parsing of JSON that the gateway checks and may then forward byte for byte.
//!
//! A member named twice in one object (`{"messages": [...], "messages": [...]}`) is refused:
//! parsers disagree on which of the two counts (serde and Python keep the last, others the
//! first), so a body whose second copy is what the policies judged could hand the receiver the
//! first, unchecked. Names are compared after unescaping (`"a"` and `"\u0061"` are the same).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Longest part of a repeated member's name quoted in the error (it is the sender's text).
const NAME_SHOWN: usize = 64;

/// Parses one JSON document like `serde_json::from_slice::<Value>`, but refuses an object
/// that names a member twice. Errors carry serde_json's line and column.
pub fn parse(bytes: &[u8]) -> serde_json::Result<Value> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let Strict(v) = Strict::deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

/// A JSON value built by [`StrictVisitor`].
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        // JSON text has no NaN or infinity; serde_json reads overflowing numbers as errors.
        Ok(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if out.contains_key(&name) {
                let shown: String = name.chars().take(NAME_SHOWN).collect();
                let more = if shown.len() < name.len() { "…" } else { "" };
                return Err(de::Error::custom(format_args!(
                    "the member `{shown}{more}` appears twice in one object"
                )));
            }
            let Strict(v) = map.next_value()?;
            out.insert(name, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_members_are_refused_at_any_depth() {
        for doc in [
            r#"{"messages": [], "messages": [{"role": "user"}]}"#,
            r#"{"a": {"b": 1, "c": 2, "b": 3}}"#,
            r#"[1, {"x": [{"y": 1, "y": 1}]}]"#,
            r#"{"model": "a", "\u006dodel": "b"}"#,
        ] {
            let e = parse(doc.as_bytes()).unwrap_err().to_string();
            assert!(e.contains("appears twice in one object"), "{doc}: {e}");
            assert!(e.contains("line 1 column"), "{e}");
        }
        let long = format!(r#"{{"{0}": 1, "{0}": 2}}"#, "k".repeat(500));
        let e = parse(long.as_bytes()).unwrap_err().to_string();
        assert!(e.len() < 200 && e.contains("…"), "{e}");
    }

    #[test]
    fn everything_else_parses_as_serde_json_does() {
        for doc in [
            r#"{"a": 1, "b": {"a": 2}, "c": [{"a": 3}, {"a": 4}]}"#,
            r#"[true, false, null, -1, 18446744073709551615, -9223372036854775808, 1.5e300, 0.1]"#,
            r#""caf\u00e9 \ud83d\ude00 \"quoted\" \\ \n""#,
            r#"{"": "", " ": [[], {}]}"#,
            "  42  ",
        ] {
            let ours = parse(doc.as_bytes()).unwrap();
            let theirs: Value = serde_json::from_slice(doc.as_bytes()).unwrap();
            assert_eq!(ours, theirs, "{doc}");
        }
        for bad in ["", "{", r#"{"a": 1} x"#, "[1,]", r#"{"a" 1}"#, "1e999"] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
            assert!(
                serde_json::from_slice::<Value>(bad.as_bytes()).is_err(),
                "{bad}"
            );
        }
        // serde_json's nesting limit holds.
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse(deep.as_bytes()).is_err());
    }
}
