//! A JSON value read only when it is a scalar.
//!
//! Flags, counts and names in agents' bodies and upstreams' answers are scalars; a list or an
//! object in their place is no flag, count or name to any reader. Reading such a value into a
//! `serde_json::Value` builds a tree of whatever it holds: 8 MiB of `[1,1,…]` is over 300 MB.
//! [`Scalar`] reads a scalar as a `Value` and skips anything else in place.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// A scalar value as it is (`null` too), or `None` for a list or an object, which is read for
/// its syntax only.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar(pub Option<Value>);

impl<'de> de::Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar(Some(Value::Bool(v))))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar(Some(Value::from(v))))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar(Some(Value::from(v))))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar(Some(Value::from(v))))
    }

    fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar(Some(Value::String(v.to_owned()))))
    }

    fn visit_unit<E>(self) -> Result<Scalar, E> {
        Ok(Scalar(Some(Value::Null)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar(None))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scalars_are_read_and_lists_and_objects_skipped() {
        let read = |json: &str| serde_json::from_str::<Scalar>(json).unwrap().0;
        assert_eq!(read("true"), Some(Value::Bool(true)));
        assert_eq!(read("3"), Some(Value::from(3)));
        assert_eq!(read("-1.5"), Some(Value::from(-1.5)));
        assert_eq!(read(r#""a""#), Some(Value::from("a")));
        assert_eq!(read("null"), Some(Value::Null));
        assert_eq!(read("[1,[2],{}]"), None);
        assert_eq!(read(r#"{"a":[1]}"#), None);
        assert!(serde_json::from_str::<Scalar>("[1,").is_err());
    }
}
