//! A JSON response body parsed down to the members the usage readers read.
//!
//! A chat completion's body is mostly its generated text (`choices`, `content`, `candidates`);
//! its usage is one small member at the top. Parsing the whole body into a `serde_json::Value`
//! allocated a string or map for every member of it, on every metered response. Here the body
//! is still read to its end, and rejected when it is not JSON, but only the members some reader
//! asks for ([`crate::usage::providers::Provider::usage_members`]) become part of the tree; the
//! rest is skipped in place.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parses `body`, keeping of its top object (or of each object in a body that is an array) the
/// members `wanted` says yes to. Anything else at the top (a string, a number, a nested array)
/// is read and left out as `null`: no reader looks into it. `None` when `body` is not one
/// JSON value. What is skipped is read for its syntax only: a string's bytes are not checked
/// for UTF-8 nor a number for its range, so such a body is metered where a whole parse gave up.
pub(super) fn parse_members(body: &[u8], wanted: &dyn Fn(&str) -> bool) -> Option<Value> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = Level { wanted, top: true }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(v)
}

/// A value at the top (`top`) or one level into a top array.
#[derive(Clone, Copy)]
struct Level<'w> {
    wanted: &'w dyn Fn(&str) -> bool,
    top: bool,
}

impl<'de> DeserializeSeed<'de> for Level<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Level<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut kept = Map::new();
        while let Some(name) = map.next_key_seed(Member(self.wanted))? {
            match name {
                // A repeated member replaces the earlier one, as in a whole parse.
                Some(name) => {
                    kept.insert(name, map.next_value()?);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(kept))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if !self.top {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(Value::Null);
        }
        let inner = Level { top: false, ..self };
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(inner)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_str<E>(self, _: &str) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

/// A member's name: `Some` (owned) when it is wanted, `None` (nothing copied) when not. An
/// escaped name is compared unescaped, as a whole parse would key it.
struct Member<'w>(&'w dyn Fn(&str) -> bool);

impl<'de> DeserializeSeed<'de> for Member<'_> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Option<String>, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Member<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E>(self, name: &str) -> Result<Option<String>, E> {
        Ok((self.0)(name).then(|| name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage_only(name: &str) -> bool {
        name == "usage" || name == "message"
    }

    fn kept(body: &str) -> Option<Value> {
        parse_members(body.as_bytes(), &usage_only)
    }

    #[test]
    fn only_wanted_members_are_kept_whole() {
        let body = r#"{"id":"c1","choices":[{"message":{"content":"long text"}}],"usage":{"prompt_tokens":3,"details":{"a":[1,2]}},"message":{"usage":{"x":1}}}"#;
        assert_eq!(
            kept(body),
            Some(serde_json::json!({
                "usage": {"prompt_tokens": 3, "details": {"a": [1, 2]}},
                "message": {"usage": {"x": 1}},
            }))
        );
    }

    #[test]
    fn what_a_whole_parse_refuses_is_refused() {
        for bad in [
            "",
            "{",
            r#"{"usage":{}}x"#,
            r#"{"usage":{}} {"usage":{}}"#,
            r#"{"choices":[1,]}"#,
            r#"{"choices":"unterminated}"#,
            r#"{"choices":tru,"usage":{}}"#,
            r#"{"choices":"\q","usage":{}}"#,
            r#"{"usage":{},}"#,
            r#"{"usage" {}}"#,
            r#"[{"usage":{}},]"#,
        ] {
            assert!(serde_json::from_str::<Value>(bad).is_err(), "{bad}");
            assert_eq!(kept(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_are_compared_unescaped_and_the_last_repeat_wins() {
        assert_eq!(
            kept(r#"{"us\u0061ge":{"a":1},"usage":{"a":2}}"#),
            Some(serde_json::json!({"usage": {"a": 2}}))
        );
        assert_eq!(
            kept(r#"{"usage":{"a":1},"usage":{"a":2}}"#),
            serde_json::from_str::<Value>(r#"{"usage":{"a":2}}"#).ok()
        );
    }

    #[test]
    fn an_array_body_keeps_each_objects_members() {
        assert_eq!(
            kept(r#"[{"usage":{"a":1},"text":"x"},"s",[{"usage":{}}],{"usage":{"a":2}}]"#),
            Some(serde_json::json!([{"usage": {"a": 1}}, null, null, {"usage": {"a": 2}}]))
        );
    }

    #[test]
    fn a_skipped_member_is_read_for_its_syntax_not_its_content() {
        // A whole parse refuses these for what a skipped member holds (bytes that are not
        // UTF-8, a number out of range, nesting deeper than its recursion limit: skipping is
        // not recursive); nothing is read from it, so the usage still counts.
        let not_utf8 = b"{\"choices\":\"\xff\xfe\",\"usage\":{\"a\":1}}";
        let out_of_range = br#"{"choices":1e999999,"usage":{"a":1}}"#;
        let deep = format!(
            r#"{{"choices":{}{},"usage":{{"a":1}}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        for body in [&not_utf8[..], &out_of_range[..], deep.as_bytes()] {
            assert!(serde_json::from_slice::<Value>(body).is_err());
            assert_eq!(
                parse_members(body, &usage_only),
                Some(serde_json::json!({"usage": {"a": 1}}))
            );
        }
        // In a kept member they are refused, as before.
        let kept_bad = b"{\"usage\":{\"a\":\"\xff\"}}";
        assert_eq!(parse_members(kept_bad, &usage_only), None);
        let kept_deep = format!(r#"{{"usage":{}{}}}"#, "[".repeat(200), "]".repeat(200));
        assert_eq!(kept(&kept_deep), None);
    }

    #[test]
    fn anything_else_at_the_top_is_null() {
        for body in ["1", "\"usage\"", "true", "null", "-2.5"] {
            assert_eq!(kept(body), Some(Value::Null), "{body}");
        }
    }
}
