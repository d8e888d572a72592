//! A JSON response body parsed down to the members the usage readers read.
//!
//! A chat completion's body is mostly its generated text (`choices`, `content`, `candidates`);
//! its usage is one small member at the top. Parsing the whole body into a `serde_json::Value`
//! allocated a string or map for every member of it, on every metered response. Here the body
//! is still read to its end, and rejected when it is not JSON, but only the members some reader
//! asks for ([`crate::usage::providers::Provider::usage_members`]) become part of the tree; the
//! rest is skipped in place.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// What of a wanted member is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keep {
    /// Its value, whole.
    Whole,
    /// Of a list of items, each object item's `type` only, as `{"type": …}` (the Responses
    /// API's `output`, whose items' types are what is billed; their content is the output).
    ItemTypes,
}

/// Most values one kept member holds (a usage report holds a few dozen; `output` one item per
/// output item), and most values the whole tree holds, each kept member's name and each kept
/// element of an array answer counted as one (a JSON-array stream repeats its usage in every
/// element: 20,000 elements take 100,000). SECURITY: past either the usage is unknown (settled at the reservation):
/// a 2 MiB answer of `{"usage":[1,1,…]}` or `[1,1,…]` made a tree of over 150 MB.
const MAX_MEMBER_VALUES: usize = 4096;
const MAX_VALUES: usize = 128 * 1024;

/// Parses `body`, keeping of its top object (or of each object in a body that is an array) the
/// members `wanted` names, as it says. Anything else at the top (a string, a number, a nested
/// array) is read and left out as `null`, and an element of a top array that keeps no member
/// is left out: no reader looks into them. `None` when `body` is not one JSON value, or keeps
/// more than [`MAX_MEMBER_VALUES`] values in a member or [`MAX_VALUES`] in all. What is skipped
/// is read for its syntax only: a string's bytes are not checked for UTF-8 nor a number for its
/// range, so such a body is metered where a whole parse gave up.
pub(super) fn parse_members(body: &[u8], wanted: &dyn Fn(&str) -> Option<Keep>) -> Option<Value> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let total = Cell::new(MAX_VALUES);
    let v = Level {
        wanted,
        top: true,
        total: &total,
    }
    .deserialize(&mut de)
    .ok()?;
    de.end().ok()?;
    Some(v)
}

/// Most values a stream event read whole holds (an event is at most 256 KiB; a dense one is a
/// tree of about 64 times its size). An event past it is not read (its usage, if any, unknown).
const MAX_EVENT_VALUES: usize = 64 * 1024;

/// `bytes` (one stream event's JSON) as a tree of at most [`MAX_EVENT_VALUES`] values; `None`
/// when it is not JSON or holds more.
pub(super) fn bounded_event(bytes: &[u8]) -> Option<Value> {
    let (member, total) = (Cell::new(MAX_EVENT_VALUES), Cell::new(MAX_EVENT_VALUES));
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = Tree(Budget {
        member: &member,
        total: &total,
    })
    .deserialize(&mut de)
    .ok()?;
    de.end().ok()?;
    Some(v)
}

/// A value at the top (`top`) or one level into a top array.
#[derive(Clone, Copy)]
struct Level<'w> {
    wanted: &'w dyn Fn(&str) -> Option<Keep>,
    top: bool,
    /// Values the tree may still take.
    total: &'w Cell<usize>,
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
            let Some((name, keep)) = name else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let budget = Budget {
                member: &Cell::new(MAX_MEMBER_VALUES),
                total: self.total,
            };
            take(self.total, 1)?;
            // A repeated member replaces the earlier one, as in a whole parse.
            let value = match keep {
                Keep::Whole => map.next_value_seed(Tree(budget))?,
                Keep::ItemTypes => map.next_value_seed(ItemTypes(budget))?,
            };
            kept.insert(name, value);
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
            if v.as_object().is_some_and(|m| !m.is_empty()) {
                take(self.total, 1)?;
                items.push(v);
            }
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

/// Most bytes a [`MemberScanner`] keeps: the members it keeps are a usage report, not a body.
const MAX_KEPT: usize = 256 * 1024;

/// Most containers open at once that a [`MemberScanner`] follows.
const MAX_DEPTH: usize = 4096;

/// Longest member name a [`MemberScanner`] compares; a longer one is not wanted.
const MAX_NAME: usize = 256;

/// A JSON body read as it streams, keeping of its top object (or of each object of a top array)
/// only the members `wanted` may name, as a JSON text of the body's shape that
/// [`parse_members`] then reads: a body of any size (a response of many choices, a long output)
/// is metered with a copy the size of its usage report. What is skipped is followed for its
/// structure only (strings, nesting, separators); what is kept is checked by the parse. A
/// member whose name is escaped is kept, for the parse to compare unescaped.
#[derive(Debug)]
pub(super) struct MemberScanner {
    wanted: Vec<&'static str>,
    kept: Vec<u8>,
    /// Open containers, `{` or `[`.
    open: Vec<u8>,
    /// Inside a string (and just after a backslash in it).
    string: Option<bool>,
    /// Where the scanner is in the object whose members it sorts.
    at: At,
    /// The name being read.
    name: Vec<u8>,
    /// The current member is kept.
    keep: bool,
    /// Nothing written yet at the current level of `kept` (no separator needed).
    first: bool,
    /// In an element of the top array (its end is the next comma).
    element: bool,
    /// Where in `kept` the current element of the top array begins (its comma included).
    element_start: usize,
    /// The top value ended: only whitespace may follow.
    ended: bool,
    /// Not JSON, too deep, or too much to keep: nothing is read.
    broken: bool,
}

/// A position in the object whose members are sorted (the top one, or an element of a top
/// array).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Outside such an object.
    Outside,
    /// Before a name (or the object's end).
    Name,
    /// Before a name, after a comma.
    NextName,
    /// In a name.
    InName,
    /// Before the colon.
    Colon,
    /// Before the value.
    Value,
    /// In a scalar value.
    Scalar,
    /// In a string or container value (its end brings `After`).
    Nested,
    /// After a value: a comma or the object's end.
    After,
}

impl MemberScanner {
    /// A scanner keeping the members named in `wanted`.
    pub(super) fn new(wanted: Vec<&'static str>) -> Self {
        Self {
            wanted,
            kept: Vec::new(),
            open: Vec::new(),
            string: None,
            at: At::Outside,
            name: Vec::new(),
            keep: false,
            first: true,
            element: false,
            element_start: 0,
            ended: false,
            broken: false,
        }
    }

    /// The depth at which members are sorted: inside the top object, or inside an element of
    /// the top array.
    fn member_depth(&self) -> usize {
        if self.open.first() == Some(&b'[') {
            2
        } else {
            1
        }
    }

    fn keep_byte(&mut self, b: u8) {
        if self.keep {
            self.kept.push(b);
        }
    }

    /// Reads `chunk`, the next bytes of the body.
    pub(super) fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if self.broken {
                return;
            }
            self.byte(b);
            if self.kept.len() > MAX_KEPT || self.open.len() > MAX_DEPTH {
                self.broken = true;
            }
        }
    }

    fn byte(&mut self, b: u8) {
        if let Some(escaped) = self.string {
            self.string = match (escaped, b) {
                (true, _) => Some(false),
                (false, b'\\') => Some(true),
                (false, b'"') => None,
                _ => Some(false),
            };
            if self.at == At::InName {
                if self.string.is_none() {
                    self.at = At::Colon;
                } else if self.name.len() < MAX_NAME {
                    self.name.push(b);
                }
            } else {
                self.keep_byte(b);
                if self.string.is_none()
                    && self.at == At::Nested
                    && self.open.len() == self.member_depth()
                {
                    self.at = At::After;
                }
            }
            return;
        }
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            if self.at == At::Scalar {
                self.at = At::After;
            }
            return;
        }
        if self.ended {
            self.broken = true;
            return;
        }
        let depth = self.open.len();
        let members = self.member_depth();
        if depth == members && self.open.last() == Some(&b'{') {
            self.member_byte(b);
        } else if depth == 0 {
            match b {
                b'{' | b'[' => {
                    self.open.push(b);
                    self.kept.push(b);
                    self.first = true;
                    if b == b'{' {
                        self.at = At::Name;
                    }
                }
                // A scalar body keeps nothing.
                _ => self.broken = true,
            }
        } else if depth == 1 && members == 2 {
            // Between the elements of the top array (an element that is not an object is kept
            // as `null`, as `parse_members` keeps it).
            match b {
                b',' if self.element => self.element = false,
                b']' if self.element || self.first => {
                    self.open.pop();
                    self.kept.push(b']');
                    self.ended = true;
                }
                b',' | b']' => self.broken = true,
                _ if self.element => self.nested_byte(b),
                _ => {
                    self.element = true;
                    self.element_start = self.kept.len();
                    if !std::mem::take(&mut self.first) {
                        self.kept.push(b',');
                    }
                    if b == b'{' {
                        self.open.push(b);
                        self.kept.push(b'{');
                        self.first = true;
                        self.at = At::Name;
                    } else {
                        self.kept.extend_from_slice(b"null");
                        self.nested_byte(b);
                    }
                }
            }
        } else {
            self.nested_byte(b);
        }
    }

    /// A byte between the members of the object whose members are sorted.
    fn member_byte(&mut self, b: u8) {
        match (self.at, b) {
            (At::Name | At::NextName, b'"') => {
                self.string = Some(false);
                self.name.clear();
                self.at = At::InName;
            }
            (At::Colon, b':') => {
                self.keep = self.name.len() < MAX_NAME
                    && (self.name.contains(&b'\\')
                        || self
                            .wanted
                            .iter()
                            .any(|w| w.as_bytes() == self.name.as_slice()));
                if self.keep {
                    if !std::mem::take(&mut self.first) {
                        self.kept.push(b',');
                    }
                    self.kept.push(b'"');
                    self.kept.extend_from_slice(&self.name);
                    self.kept.extend_from_slice(b"\":");
                }
                self.at = At::Value;
            }
            (At::Value, b'"') => {
                self.keep_byte(b);
                self.string = Some(false);
                self.at = At::Nested;
            }
            (At::Value, b'{' | b'[') => {
                self.keep_byte(b);
                self.open.push(b);
                self.at = At::Nested;
            }
            // A value is missing.
            (At::Value, b'}' | b']' | b',' | b':') => self.broken = true,
            (At::Value, _) => {
                self.keep_byte(b);
                self.at = At::Scalar;
            }
            (At::Scalar | At::After, b',') => {
                self.keep = false;
                self.at = At::NextName;
            }
            (At::Name | At::Scalar | At::After, b'}') => {
                self.keep = false;
                self.open.pop();
                self.kept.push(b'}');
                self.first = false;
                self.ended = self.open.is_empty();
                self.at = At::Outside;
                if !self.ended && self.kept.len() > MAX_KEPT / 2 {
                    self.keep_last_element();
                }
            }
            (At::Scalar, b'{' | b'[' | b']' | b'"' | b':') => self.broken = true,
            (At::Scalar, _) => self.keep_byte(b),
            _ => self.broken = true,
        }
    }

    /// Drops every element of the top array kept before the one that just ended. A stream sent
    /// as one JSON array (Gemini's) repeats its usage, cumulative, in every element: a long one
    /// would otherwise outgrow [`MAX_KEPT`], and its last report is the one that counts.
    fn keep_last_element(&mut self) {
        let last = self.kept.split_off(self.element_start);
        self.kept.truncate(1);
        self.kept
            .extend_from_slice(last.strip_prefix(b",").unwrap_or(&last));
    }

    /// A byte inside a value that is skipped or copied whole.
    fn nested_byte(&mut self, b: u8) {
        self.keep_byte(b);
        match b {
            b'"' => self.string = Some(false),
            b'{' | b'[' => self.open.push(b),
            b'}' | b']' => {
                let opened = if b == b'}' { b'{' } else { b'[' };
                if self.open.pop() != Some(opened) {
                    self.broken = true;
                    return;
                }
                if self.at == At::Nested && self.open.len() == self.member_depth() {
                    self.at = At::After;
                }
            }
            _ => {}
        }
    }

    /// The kept members as JSON text, once the body has ended; `None` when it was not JSON
    /// (as far as the scanner follows it), or ended early.
    pub(super) fn finish(&self) -> Option<&[u8]> {
        (!self.broken && self.ended && self.string.is_none()).then_some(self.kept.as_slice())
    }
}

/// A member's name: `Some` (owned) when it is wanted, `None` (nothing copied) when not. An
/// escaped name is compared unescaped, as a whole parse would key it.
struct Member<'w>(&'w dyn Fn(&str) -> Option<Keep>);

impl<'de> DeserializeSeed<'de> for Member<'_> {
    type Value = Option<(String, Keep)>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Member<'_> {
    type Value = Option<(String, Keep)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E>(self, name: &str) -> Result<Self::Value, E> {
        Ok((self.0)(name).map(|keep| (name.to_owned(), keep)))
    }
}

/// Takes `n` of the tree's values, or fails the parse when they are spent.
fn take<E: de::Error>(total: &Cell<usize>, n: usize) -> Result<(), E> {
    let left = total.get();
    if left < n {
        return Err(E::custom("more values than a usage report holds"));
    }
    total.set(left - n);
    Ok(())
}

/// What a kept member may still take: its own values and the tree's.
#[derive(Clone, Copy)]
struct Budget<'b> {
    member: &'b Cell<usize>,
    total: &'b Cell<usize>,
}

impl Budget<'_> {
    /// Takes `n` values, or fails the parse when either budget is spent.
    fn spend<E: de::Error>(self, n: usize) -> Result<(), E> {
        let (member, total) = (self.member.get(), self.total.get());
        if member < n || total < n {
            return Err(E::custom("more values than a usage report holds"));
        }
        self.member.set(member - n);
        self.total.set(total - n);
        Ok(())
    }
}

/// A kept member's value, as `serde_json::Value` reads it, within its [`Budget`].
struct Tree<'b>(Budget<'b>);

impl<'de> DeserializeSeed<'de> for Tree<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Tree<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.0.spend(1)?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.0.spend(1)?;
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.0.spend(1)?;
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.0.spend(1)?;
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.0.spend(1)?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.0.spend(1)?;
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.0.spend(1)?;
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(Tree(self.0))? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.0.spend(1)?;
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            members.insert(name, map.next_value_seed(Tree(self.0))?);
        }
        Ok(Value::Object(members))
    }
}

/// A kept list of items: each object item's `type` (a string), as `{"type": …}`; other items,
/// and anything but a list, are read and left out.
struct ItemTypes<'b>(Budget<'b>);

impl<'de> DeserializeSeed<'de> for ItemTypes<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ItemTypes<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of items")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<ItemType>()? {
            if let ItemType(Some(kind)) = item {
                self.0.spend(2)?;
                let mut only = Map::new();
                only.insert("type".into(), Value::String(kind));
                items.push(Value::Object(only));
            }
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Value::Null)
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

/// One item of an [`ItemTypes`] list: its `type`, when it is an object whose `type` is a
/// string (the last one, when repeated, as a whole parse keeps it).
struct ItemType(Option<String>);

impl<'de> de::Deserialize<'de> for ItemType {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(ItemTypeVisitor)
    }
}

struct ItemTypeVisitor;

impl<'de> Visitor<'de> for ItemTypeVisitor {
    type Value = ItemType;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an item")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ItemType, A::Error> {
        let mut kind = None;
        while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if name == "type" {
                kind = match map.next_value::<crate::json_scalar::Scalar>()?.0 {
                    Some(Value::String(kind)) => Some(kind),
                    _ => None,
                };
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(ItemType(kind))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ItemType, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(ItemType(None))
    }

    fn visit_bool<E>(self, _: bool) -> Result<ItemType, E> {
        Ok(ItemType(None))
    }

    fn visit_i64<E>(self, _: i64) -> Result<ItemType, E> {
        Ok(ItemType(None))
    }

    fn visit_u64<E>(self, _: u64) -> Result<ItemType, E> {
        Ok(ItemType(None))
    }

    fn visit_f64<E>(self, _: f64) -> Result<ItemType, E> {
        Ok(ItemType(None))
    }

    fn visit_str<E>(self, _: &str) -> Result<ItemType, E> {
        Ok(ItemType(None))
    }

    fn visit_unit<E>(self) -> Result<ItemType, E> {
        Ok(ItemType(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage_only(name: &str) -> Option<Keep> {
        (name == "usage" || name == "message").then_some(Keep::Whole)
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

    /// Of an array body, the objects that keep a member, in order; elements that keep none
    /// (other values, objects without a wanted member) are left out: no reader looks into them,
    /// and a million of them made a tree of a million values.
    #[test]
    fn an_array_body_keeps_each_objects_members() {
        assert_eq!(
            kept(
                r#"[{"usage":{"a":1},"text":"x"},"s",[{"usage":{}}],{},{"text":"y"},{"usage":{"a":2}}]"#
            ),
            Some(serde_json::json!([{"usage": {"a": 1}}, {"usage": {"a": 2}}]))
        );
    }

    /// A kept member holds at most [`MAX_MEMBER_VALUES`] values, and the tree at most
    /// [`MAX_VALUES`]: past either the body's usage is unknown, not a tree many times its size.
    #[test]
    fn kept_values_are_bounded() {
        let list = |n: usize| vec!["1"; n].join(",");
        let fits = format!(r#"{{"usage":[{}]}}"#, list(MAX_MEMBER_VALUES - 1));
        assert!(kept(&fits).is_some());
        let over = format!(r#"{{"usage":[{}]}}"#, list(MAX_MEMBER_VALUES));
        assert_eq!(kept(&over), None);
        // Each element's members have their own budget; the whole tree has one too.
        let element = r#"{"usage":{"a":1}}"#;
        let many = |n: usize| format!("[{}]", vec![element; n].join(","));
        // (An element that keeps a member costs its value, the member's name and itself.)
        assert!(kept(&many(MAX_VALUES / 5)).is_some());
        assert_eq!(kept(&many(MAX_VALUES / 4 + 1)), None);
        let small = |n: usize| format!("[{}]", vec![r#"{"usage":1}"#; n].join(","));
        assert!(kept(&small(MAX_VALUES / 3)).is_some());
        assert_eq!(kept(&small(MAX_VALUES / 3 + 1)), None);
        // Elements that keep nothing cost nothing.
        let skipped = format!("[{}]", list(MAX_VALUES * 2));
        assert_eq!(kept(&skipped), Some(serde_json::json!([])));
    }

    /// A stream event is read whole within [`MAX_EVENT_VALUES`] values.
    #[test]
    fn a_stream_event_is_read_within_its_bound() {
        let event = r#"{"type":"x","delta":{"text":"hi"},"usage":{"a":1,"b":[1,2.5,null,true]}}"#;
        assert_eq!(
            bounded_event(event.as_bytes()),
            serde_json::from_str::<Value>(event).ok()
        );
        let dense = format!("[{}]", vec!["[]"; MAX_EVENT_VALUES].join(","));
        assert_eq!(bounded_event(dense.as_bytes()), None);
        let fits = format!("[{}]", vec!["1"; MAX_EVENT_VALUES - 1].join(","));
        assert!(bounded_event(fits.as_bytes()).is_some());
        assert_eq!(bounded_event(b"{\"a\":1} x"), None);
    }

    /// A list of output items keeps each object item's `type`, and nothing of its content.
    #[test]
    fn item_lists_keep_each_items_type() {
        let wanted = |name: &str| match name {
            "usage" => Some(Keep::Whole),
            "output" => Some(Keep::ItemTypes),
            _ => None,
        };
        let body = r#"{"output":[{"type":"web_search_call","id":"ws","action":{"query":"q"}},{"content":[{"type":"output_text"}]},"s",{"type":7},{"type":"a","type":"message","content":[{"logprobs":[1,2,3]}]}],"usage":{"a":1}}"#;
        assert_eq!(
            parse_members(body.as_bytes(), &wanted),
            Some(serde_json::json!({
                "output": [{"type": "web_search_call"}, {"type": "message"}],
                "usage": {"a": 1},
            }))
        );
        let not_a_list = r#"{"output":{"type":"x"},"usage":{"a":1}}"#;
        assert_eq!(
            parse_members(not_a_list.as_bytes(), &wanted),
            Some(serde_json::json!({"output": null, "usage": {"a": 1}}))
        );
        let items = vec![r#"{"type":"message"}"#; MAX_MEMBER_VALUES / 2 + 1].join(",");
        let over = format!(r#"{{"output":[{items}],"usage":{{"a":1}}}}"#);
        assert_eq!(parse_members(over.as_bytes(), &wanted), None);
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

    /// What a scanner keeps of `body` fed in pieces cut at `cuts`, parsed as the meter parses it.
    fn scanned(body: &[u8], cuts: &[usize]) -> Option<Value> {
        let mut scanner = MemberScanner::new(vec!["message", "usage"]);
        let mut at = 0;
        for &cut in cuts.iter().chain(std::iter::once(&body.len())) {
            scanner.feed(&body[at..cut]);
            at = cut;
        }
        parse_members(scanner.finish()?, &usage_only)
    }

    #[test]
    fn a_scanned_body_keeps_what_a_whole_parse_keeps() {
        let bodies = [
            r#"{"id":"c1","choices":[{"message":{"content":"long text"}}],"usage":{"prompt_tokens":3,"details":{"a":[1,2]}},"message":{"usage":{"x":1}}}"#,
            r#" { "choices" : [ { "text" : "a \"}] { [ \\" } ] , "usage" : { "a" : -1.5e3 , "b" : [ true , false , null ] } } "#,
            r#"{"usage":7,"n":null,"t":true,"s":"x","o":{}}"#,
            r#"{"us\u0061ge":{"a":1},"usage":{"a":2}}"#,
            r#"{"usage":{"a":2},"us\u0061ge":{"a":1}}"#,
            r#"{"usage":{"a":1},"usage":{"a":2}}"#,
            r#"[{"usage":{"a":1},"text":"x"},"s",[{"usage":{}}],12,{"usage":{"a":2}},{}]"#,
            r#"[]"#,
            r#"{}"#,
            r#"{"a":{"usage":{"deep":1}},"b":[{"usage":2}]}"#,
        ];
        for body in bodies {
            let whole = parse_members(body.as_bytes(), &usage_only);
            assert!(whole.is_some(), "{body}");
            for cut in 0..=body.len() {
                assert_eq!(
                    scanned(body.as_bytes(), &[cut]),
                    whole,
                    "{body} cut at {cut}"
                );
            }
            let every: Vec<usize> = (1..body.len()).collect();
            assert_eq!(
                scanned(body.as_bytes(), &every),
                whole,
                "{body} byte by byte"
            );
        }
    }

    #[test]
    fn a_scanned_body_that_is_not_json_keeps_nothing() {
        for bad in [
            "",
            "{",
            r#"{"usage":{}}x"#,
            r#"{"usage":{}} {"usage":{}}"#,
            r#"{"choices":[1,]"#,
            r#"{"choices":"unterminated}"#,
            r#"{"usage":{},}"#,
            r#"{"usage" {}}"#,
            r#"{"usage":}"#,
            r#"{,"usage":{}}"#,
            r#"[{"usage":{}},]"#,
            r#"{"a":[}"#,
            r#"{"usage":{"a":tru}}"#,
            "1",
            "\"usage\"",
        ] {
            assert_eq!(scanned(bad.as_bytes(), &[]), None, "{bad}");
        }
    }

    #[test]
    fn a_scanner_keeps_little_of_a_large_body_and_gives_up_on_a_large_usage() {
        let text = "x".repeat(8 * 1024 * 1024);
        let body =
            format!(r#"{{"choices":[{{"message":{{"content":"{text}"}}}}],"usage":{{"a":1}}}}"#);
        let mut scanner = MemberScanner::new(vec!["usage"]);
        for piece in body.as_bytes().chunks(16 * 1024) {
            scanner.feed(piece);
        }
        assert_eq!(scanner.finish(), Some(&br#"{"usage":{"a":1}}"#[..]));
        let huge = format!(r#"{{"usage":{{"a":"{}"}}}}"#, "y".repeat(MAX_KEPT));
        let mut scanner = MemberScanner::new(vec!["usage"]);
        scanner.feed(huge.as_bytes());
        assert_eq!(scanner.finish(), None);
        // A stream sent as one array repeats its usage in every element: what is kept stays
        // small, the last report.
        let elements: Vec<String> = (1..=20_000)
            .map(|i| {
                format!(
                    r#"{{"candidates":[{{"content":{{"parts":[{{"text":"word"}}]}}}}],"usageMetadata":{{"promptTokenCount":9,"candidatesTokenCount":{i}}}}}"#
                )
            })
            .collect();
        let stream = format!("[{}]", elements.join(",\r\n"));
        let mut scanner = MemberScanner::new(vec!["usageMetadata"]);
        for piece in stream.as_bytes().chunks(4096) {
            scanner.feed(piece);
        }
        let kept = scanner.finish().expect("kept");
        assert!(kept.len() < MAX_KEPT, "{}", kept.len());
        let wanted = |n: &str| (n == "usageMetadata").then_some(Keep::Whole);
        let v = parse_members(kept, &wanted).expect("json");
        let last = v.as_array().and_then(|a| a.last()).expect("an element");
        assert_eq!(last["usageMetadata"]["candidatesTokenCount"], 20_000);
        let deep = format!(
            r#"{{"c":{}{},"usage":{{}}}}"#,
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        let mut scanner = MemberScanner::new(vec!["usage"]);
        scanner.feed(deep.as_bytes());
        assert_eq!(scanner.finish(), None);
    }

    #[test]
    fn anything_else_at_the_top_is_null() {
        for body in ["1", "\"usage\"", "true", "null", "-2.5"] {
            assert_eq!(kept(body), Some(Value::Null), "{body}");
        }
    }
}
