//! JSON bodies parsed as `serde_json` parses them, except that an object naming one member twice
//! is refused. `serde_json` keeps the last of the two, where other parsers keep the first or
//! refuse: a body whose meaning depends on the parser (a proxy or gateway checking
//! `{"tenantUrl": "a", "tenantUrl": "b"}` as `a`, the API acting on `b`) is refused instead, as
//! RFC 8259 allows of names that are not unique.

use std::fmt;

use provisioner_shared::domain::member_given_twice;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// `bytes` as one JSON value; a member name repeated within one object is an error, at its
/// place in the text like any other fault.
pub(crate) fn parse(bytes: &[u8]) -> serde_json::Result<Value> {
    serde_json::from_slice::<Strict>(bytes).map(|Strict(value)| value)
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // As `serde_json::Value` does: the parser yields only finite numbers.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if members.contains_key(&name) {
                return Err(de::Error::custom(member_given_twice(&name)));
            }
            let Strict(value) = map.next_value()?;
            members.insert(name, value);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn values_parse_as_serde_json_parses_them() {
        let text = br#"{"a": [1, -2, 3.5, 18446744073709551615, true, null, "x\u00e9"],
                        "b": {"c": {}, "d": []}, "e": 1e3}"#;
        assert_eq!(
            parse(text).unwrap(),
            serde_json::from_slice::<Value>(text).unwrap()
        );
        assert_eq!(parse(b" 7 ").unwrap(), json!(7));
    }

    #[test]
    fn a_member_named_twice_in_one_object_is_refused_where_it_is() {
        let e = parse(br#"{"items": [{"tenantUrl": "a", "x": 1, "tenantUrl": "b"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(r#"the member "tenantUrl" is given twice at line 1 column"#),
            "{e}"
        );
        // The same name in two objects, or as a value, is no repetition.
        assert!(parse(br#"[{"a": 1}, {"a": {"a": "a"}}]"#).is_ok());
    }

    #[test]
    fn a_long_repeated_name_is_shown_cut() {
        let name = "n".repeat(1_000);
        let text = format!(r#"{{"{name}": 1, "{name}": 2}}"#);
        let e = parse(text.as_bytes()).unwrap_err().to_string();
        assert!(e.len() < 200, "{e}");
        assert!(e.contains(&format!("\"{}\"...", "n".repeat(64))), "{e}");
    }

    #[test]
    fn nesting_stays_bounded_as_in_serde_json() {
        let deep = "[".repeat(10_000);
        let e = parse(deep.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("recursion limit"), "{e}");
    }
}
