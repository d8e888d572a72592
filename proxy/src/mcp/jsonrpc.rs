//! Reading the JSON-RPC 2.0 body an agent POSTs to an MCP server: a single message or a batch.
//!
//! The reading is strict because whatever this module misreads is what the server acts on:
//! duplicate object keys are refused (a first-wins and a last-wins parser would see different
//! tool names), every message must say `"jsonrpc": "2.0"`, ids must be strings, numbers or
//! null, a `tools/call` must name its tool with a string `params.name`, a `resources/read` (or
//! `resources/subscribe`, `resources/unsubscribe`) its resource with a string `params.uri` in
//! a form URL parsers do not rewrite ([`super::uri`]), a `prompts/get` its prompt with a string
//! `params.name`, and a `completion/complete` the prompt or resource it completes.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// The MCP method whose calls are authorized one by one.
pub const TOOLS_CALL: &str = "tools/call";
/// Reading a resource, authorized per resource URI.
pub const RESOURCES_READ: &str = "resources/read";
/// Subscribing to a resource's updates: authorized like reading it.
pub const RESOURCES_SUBSCRIBE: &str = "resources/subscribe";
/// Ending a subscription: authorized like reading the resource (its URI is decided and
/// audited like any other, so it is held to the same form).
pub const RESOURCES_UNSUBSCRIBE: &str = "resources/unsubscribe";
/// Getting a prompt, authorized per prompt name.
pub const PROMPTS_GET: &str = "prompts/get";
/// Argument completion for a prompt or a resource template: authorized like using it.
pub const COMPLETION_COMPLETE: &str = "completion/complete";

/// A list an MCP server answers with, filtered down to what the workload may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListKind {
    /// `tools/list`: `result.tools`, each named by `name`.
    Tools,
    /// `resources/list`: `result.resources`, each named by `uri`.
    Resources,
    /// `resources/templates/list`: `result.resourceTemplates`, each named by `uriTemplate`.
    ResourceTemplates,
    /// `prompts/list`: `result.prompts`, each named by `name`.
    Prompts,
}

impl ListKind {
    /// Every kind.
    pub const ALL: [ListKind; 4] = [
        ListKind::Tools,
        ListKind::Resources,
        ListKind::ResourceTemplates,
        ListKind::Prompts,
    ];

    /// The method that asks for this list.
    pub fn method(self) -> &'static str {
        match self {
            ListKind::Tools => "tools/list",
            ListKind::Resources => "resources/list",
            ListKind::ResourceTemplates => "resources/templates/list",
            ListKind::Prompts => "prompts/list",
        }
    }

    /// The result field holding the list.
    pub fn field(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Resources => "resources",
            ListKind::ResourceTemplates => "resourceTemplates",
            ListKind::Prompts => "prompts",
        }
    }

    /// The field of each item that names it for policy.
    pub fn item_key(self) -> &'static str {
        match self {
            ListKind::Tools | ListKind::Prompts => "name",
            ListKind::Resources => "uri",
            ListKind::ResourceTemplates => "uriTemplate",
        }
    }

    /// What an item of this list is, for the policy question.
    pub fn item(self) -> ItemKind {
        match self {
            ListKind::Tools => ItemKind::Tool,
            ListKind::Resources | ListKind::ResourceTemplates => ItemKind::Resource,
            ListKind::Prompts => ItemKind::Prompt,
        }
    }

    fn for_method(method: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.method() == method)
    }
}

pub use crate::policy::ItemKind;

/// What the proxy needs to know about one request body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct McpRequest {
    /// The tool named by every `tools/call` message, in body order (repeats kept).
    pub tool_calls: Vec<String>,
    /// The resource URI of every `resources/read`, `resources/subscribe` and
    /// `resources/unsubscribe`, and of every resource template a `completion/complete` names,
    /// in body order.
    pub resource_reads: Vec<String>,
    /// The prompt named by every `prompts/get`, and by every `completion/complete` for a
    /// prompt, in body order.
    pub prompt_gets: Vec<String>,
    /// The ids of the list requests, with their kind; their responses are filtered.
    pub list_ids: Vec<(Value, ListKind)>,
    /// The kinds of list asked for (a notification has no id but still counts).
    pub lists: Vec<ListKind>,
}

/// Why a body is not a JSON-RPC 2.0 message or batch. The text is for the agent's error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses `body` as one JSON-RPC 2.0 message or a non-empty batch of them.
///
/// SECURITY: the body is read down to the members the check needs ([`Message`]); everything
/// else (a call's `arguments`, a response's `result`) is read in place and dropped
/// ([`Skip`]), still checked for valid JSON, valid UTF-8, no repeated key and serde_json's
/// nesting limit. A whole tree of a body of tiny values (`[[],[],…]`) took about 18 times the
/// body in memory, on a worker every tenant shares.
pub fn parse_request(body: &[u8]) -> Result<McpRequest, Malformed> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let read = BodySeed
        .deserialize(&mut de)
        .and_then(|read| de.end().map(|()| read))
        .map_err(|e| Malformed(format!("the body is not valid JSON-RPC 2.0: {e}")))?;
    let messages = match read {
        Body::Batch(_, 0) => {
            return Err(Malformed("an empty JSON-RPC batch is not a request".into()))
        }
        Body::Batch(_, n) if n > MAX_BATCH => {
            return Err(Malformed(format!(
                "a JSON-RPC batch of {n} messages; at most {MAX_BATCH} are taken"
            )))
        }
        Body::Batch(messages, _) => messages,
        Body::One(message) => vec![*message],
        Body::Other => {
            return Err(Malformed(
                "the body must be a JSON-RPC object or a batch array".into(),
            ))
        }
    };
    let mut request = McpRequest::default();
    for (i, message) in messages.iter().enumerate() {
        read_message(message, &mut request)
            .map_err(|why| Malformed(format!("message {i}: {why}")))?;
    }
    Ok(request)
}

/// Limits on what a request names. SECURITY: each name is decided and written to the tenant's
/// audit record, so an unbounded one would let one request write megabytes of audit (a shared
/// disk: every tenant's records). Tool and prompt names are short identifiers (the MCP
/// specification suggests at most 128 characters), resource URIs longer.
pub(super) const MAX_NAME: usize = 256;
pub(super) const MAX_URI: usize = 8 * 1024;
/// Messages in one batch (the MCP specification dropped batches in 2025-06-18; older clients
/// send a few).
const MAX_BATCH: usize = 1024;

/// Refuses `value`, named by `what` in `params.{at}`, past `max` bytes.
fn bounded(value: &str, max: usize, at: &str) -> Result<String, String> {
    if value.len() > max {
        return Err(format!(
            "`params.{at}` is {} bytes long; at most {max} are taken",
            value.len()
        ));
    }
    Ok(value.to_string())
}

/// A resource URI (`params.{at}`), bounded and in a form the server reads as the policy does
/// ([`super::uri::refusal`]).
fn resource_uri(value: &str, at: &str) -> Result<String, String> {
    let uri = bounded(value, MAX_URI, at)?;
    match super::uri::refusal(&uri) {
        Some(why) => Err(format!("`params.{at}` {why}")),
        None => Ok(super::uri::as_read(&uri)),
    }
}

/// The members of a message, of its `params` and of a completion's `params.ref` that decide
/// what the call is.
pub(super) const MESSAGE_MEMBERS: &[&str] =
    &["jsonrpc", "id", "method", "params", "result", "error"];
const PARAMS_MEMBERS: &[&str] = &["name", "uri", "ref"];
const REF_MEMBERS: &[&str] = &["type", "name", "uri"];

/// SECURITY: refuses an object that spells a member the proxy reads in another case as well as
/// (or instead of) exactly: a server that matches names ignoring case (Go's `encoding/json`)
/// would act on `{"name":"allowed","Name":"denied"}` as `denied` (see [`crate::json_names`]).
/// Notes the first such member of an object in `misspelt`.
fn note_misspelt(misspelt: &mut Option<String>, name: &str, known: &[&str], at: &str) {
    if misspelt.is_some() {
        return;
    }
    if let Some(exact) = known
        .iter()
        .find(|k| **k != name && crate::json_names::same_folded(name, k))
    {
        *misspelt = Some(format!(
            "`{at}{}` is `{exact}` spelt in another case, which servers that match names \
             ignoring case would read",
            quotable(name).unwrap_or("…")
        ));
    }
}

/// `name` when it is short printable text to quote back in a refusal (the agent's own, but
/// written to the audit record with it).
fn quotable(name: &str) -> Option<&str> {
    (name.len() <= MAX_NAME && !name.chars().any(char::is_control)).then_some(name)
}

fn read_message(message: &Message, request: &mut McpRequest) -> Result<(), String> {
    if message.not_object {
        return Err("not a JSON object".into());
    }
    let params = match &message.params {
        Some(Params::Object(params)) => Some(params),
        _ => None,
    };
    let reference = params.and_then(|p| match &p.reference {
        Some(Ref::Object(r)) => Some(r),
        _ => None,
    });
    let misspelt = [
        &message.misspelt,
        &params.and_then(|p| p.misspelt.clone()),
        &reference.and_then(|r| r.misspelt.clone()),
    ];
    if let Some(why) = misspelt.into_iter().flatten().next() {
        return Err(why.clone());
    }
    if message.jsonrpc.as_ref().and_then(Option::as_deref) != Some("2.0") {
        return Err("`jsonrpc` must be \"2.0\"".into());
    }
    if let Some(None) = message.id {
        return Err("`id` must be a string, a number or null".into());
    }
    match &message.method {
        Some(Some(method)) => read_call(method, message, request),
        Some(None) => Err("`method` must be a string".into()),
        // A response the client sends back (to a server's sampling or elicitation request).
        None => {
            if message.id.is_none() {
                return Err("a message without `method` must be a response with an `id`".into());
            }
            match (message.result, message.error) {
                (true, false) | (false, true) => Ok(()),
                _ => Err("a response must have exactly one of `result` and `error`".into()),
            }
        }
    }
}

fn read_call(method: &str, message: &Message, request: &mut McpRequest) -> Result<(), String> {
    let params = match &message.params {
        None | Some(Params::Array) => None,
        Some(Params::Object(params)) => Some(params),
        Some(Params::Other) => return Err("`params` must be an object or an array".into()),
    };
    // SECURITY: a call whose tool, resource or prompt cannot be named cannot be authorized.
    fn param<'v>(
        value: Option<&'v String>,
        method: &str,
        name: &str,
        what: &str,
    ) -> Result<&'v str, String> {
        value.map(String::as_str).ok_or(format!(
            "a `{method}` needs a string `params.{name}` ({what})"
        ))
    }
    match method {
        TOOLS_CALL => {
            let name = param(
                params.and_then(|p| p.name.as_ref()),
                method,
                "name",
                "the tool",
            )?;
            request.tool_calls.push(bounded(name, MAX_NAME, "name")?)
        }
        RESOURCES_READ | RESOURCES_SUBSCRIBE | RESOURCES_UNSUBSCRIBE => {
            let uri = param(
                params.and_then(|p| p.uri.as_ref()),
                method,
                "uri",
                "the resource",
            )?;
            request.resource_reads.push(resource_uri(uri, "uri")?)
        }
        PROMPTS_GET => {
            let name = param(
                params.and_then(|p| p.name.as_ref()),
                method,
                "name",
                "the prompt",
            )?;
            request.prompt_gets.push(bounded(name, MAX_NAME, "name")?)
        }
        COMPLETION_COMPLETE => {
            let reference = params.and_then(|p| match &p.reference {
                Some(Ref::Object(r)) => Some(r),
                _ => None,
            });
            match reference.and_then(|r| r.kind.as_deref()) {
                Some("ref/prompt") => request.prompt_gets.push(bounded(
                    reference.and_then(|r| r.name.as_deref()).ok_or(
                        "a `completion/complete` for a prompt needs a string `params.ref.name`",
                    )?,
                    MAX_NAME,
                    "ref.name",
                )?),
                Some("ref/resource") => request.resource_reads.push(resource_uri(
                    reference.and_then(|r| r.uri.as_deref()).ok_or(
                        "a `completion/complete` for a resource needs a string `params.ref.uri`",
                    )?,
                    "ref.uri",
                )?),
                _ => {
                    return Err("a `completion/complete` needs `params.ref` of type `ref/prompt` or `ref/resource`".into())
                }
            }
        }
        other => {
            if let Some(kind) = ListKind::for_method(other) {
                if !request.lists.contains(&kind) {
                    request.lists.push(kind);
                }
                if let Some(Some(id)) = &message.id {
                    request.list_ids.push((id.clone(), kind));
                }
            }
        }
    }
    Ok(())
}

/// A request body as read: one message, a batch (the messages read, up to [`MAX_BATCH`], and
/// how many it holds), or anything else.
enum Body {
    One(Box<Message>),
    Batch(Vec<Message>, usize),
    Other,
}

/// What one message says, read down to the members the check needs.
#[derive(Default)]
struct Message {
    /// Not a JSON object (a batch member that is a string, a number, an array).
    not_object: bool,
    /// The first member the proxy reads that is spelt in another case (the refusal's text).
    misspelt: Option<String>,
    /// `jsonrpc` when it is a string; `Some(None)` when it is something else.
    jsonrpc: Option<Option<String>>,
    /// `id` when it is a string, a number or null; `Some(None)` when it is something else.
    id: Option<Option<Value>>,
    /// `method` when it is a string; `Some(None)` when it is something else.
    method: Option<Option<String>>,
    params: Option<Params>,
    result: bool,
    error: bool,
}

/// A message's `params`.
enum Params {
    Object(ParamsObject),
    Array,
    /// A string, a number, a boolean or null.
    Other,
}

/// The members of `params` a call is named by (each when it is a string).
#[derive(Default)]
struct ParamsObject {
    misspelt: Option<String>,
    name: Option<String>,
    uri: Option<String>,
    reference: Option<Ref>,
}

/// A completion's `params.ref`.
enum Ref {
    Object(RefObject),
    Other,
}

/// The members of `params.ref` (each when it is a string).
#[derive(Default)]
struct RefObject {
    misspelt: Option<String>,
    kind: Option<String>,
    name: Option<String>,
    uri: Option<String>,
}

/// The keys of one object so far, to refuse a repeat: each as a 64-bit keyed hash (SipHash
/// under this object's own random key), so an object of many members costs 8 bytes a member
/// rather than a copy of its name, in one vector sorted when the object ends (a hash set took
/// twice as much). Two names that differ but hash alike (about one chance in 2^64 a pair, and
/// no way to aim for it without the key) would refuse a valid body, never pass a repeat.
/// `QUOTE`: the refusal names the key (an agent's body); a server's answer is not quoted
/// (its text reaches the agent, and a key the server wrote may echo a substituted secret).
#[derive(Default)]
pub(super) struct Keys<const QUOTE: bool> {
    hasher: std::collections::hash_map::RandomState,
    seen: Vec<u64>,
}

/// Members of an object checked for a repeat as they come, so the refusal can name it; past
/// them, a repeat is found when the object ends.
const KEYS_CHECKED_AT_ONCE: usize = 64;

impl<const QUOTE: bool> Keys<QUOTE> {
    /// Adds `key`. SECURITY: a repeated key is refused (a first-wins and a last-wins parser
    /// would see different tool names); it is quoted only when it is short printable text.
    pub(super) fn add<E: de::Error>(&mut self, key: &str) -> Result<(), E> {
        use std::hash::BuildHasher as _;
        let hash = self.hasher.hash_one(key);
        if self.seen.len() < KEYS_CHECKED_AT_ONCE && self.seen.contains(&hash) {
            return Err(match quotable(key).filter(|_| QUOTE) {
                Some(key) => E::custom(format!("duplicate key `{key}`")),
                None => Self::repeat(),
            });
        }
        self.seen.push(hash);
        Ok(())
    }

    /// Ends the object: refuses a repeat not found as it came.
    pub(super) fn end<E: de::Error>(mut self) -> Result<(), E> {
        if self.seen.len() > KEYS_CHECKED_AT_ONCE {
            self.seen.sort_unstable();
            if self.seen.windows(2).any(|pair| pair[0] == pair[1]) {
                return Err(Self::repeat());
            }
        }
        Ok(())
    }

    fn repeat<E: de::Error>() -> E {
        E::custom(if QUOTE {
            "a duplicate key"
        } else {
            "an object repeats a key"
        })
    }
}

/// What an agent's body is read with.
type AgentKeys = Keys<true>;

/// An object key, borrowed from the body when it has no escape.
pub(super) struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v))
    }
}

/// A value read for its syntax and left out: valid JSON (strings valid UTF-8, numbers in
/// range), no object repeating a key, within serde_json's nesting limit; nothing of it kept. `QUOTE` as for [`Keys`].
pub(super) struct SkipAs<const QUOTE: bool>;

/// What an agent's body is skipped with.
pub(super) type Skip = SkipAs<true>;
/// What a server's answer is skipped with.
pub(super) type ServerSkip = SkipAs<false>;

impl<'de, const QUOTE: bool> Deserialize<'de> for SkipAs<QUOTE> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(SkipVisitor::<QUOTE>)
    }
}

pub(super) struct SkipVisitor<const QUOTE: bool>;

impl<'de, const QUOTE: bool> Visitor<'de> for SkipVisitor<QUOTE> {
    type Value = SkipAs<QUOTE>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<SkipAs<QUOTE>, E> {
        Ok(SkipAs)
    }
    fn visit_i64<E>(self, _: i64) -> Result<SkipAs<QUOTE>, E> {
        Ok(SkipAs)
    }
    fn visit_u64<E>(self, _: u64) -> Result<SkipAs<QUOTE>, E> {
        Ok(SkipAs)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<SkipAs<QUOTE>, E> {
        if !v.is_finite() {
            return Err(E::custom("a number that is not finite"));
        }
        Ok(SkipAs)
    }
    fn visit_str<E>(self, _: &str) -> Result<SkipAs<QUOTE>, E> {
        Ok(SkipAs)
    }
    fn visit_unit<E>(self) -> Result<SkipAs<QUOTE>, E> {
        Ok(SkipAs)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SkipAs<QUOTE>, A::Error> {
        while seq.next_element::<SkipAs<QUOTE>>()?.is_some() {}
        Ok(SkipAs)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SkipAs<QUOTE>, A::Error> {
        let mut keys = Keys::<QUOTE>::default();
        while let Some(key) = map.next_key_seed(Key)? {
            map.next_value::<SkipAs<QUOTE>>()?;
            keys.add(&key)?;
        }
        keys.end()?;
        Ok(SkipAs)
    }
}

/// A value that matters when it is a string (`method`, `params.name`...); anything else is
/// skipped and read as `None`. `QUOTE` as for [`Keys`].
pub(super) struct TextAs<const QUOTE: bool>;

impl<'de, const QUOTE: bool> DeserializeSeed<'de> for TextAs<QUOTE> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de, const QUOTE: bool> Visitor<'de> for TextAs<QUOTE> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Some(v))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        SkipVisitor::<QUOTE>.visit_f64(v).map(|_| None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        SkipVisitor::<QUOTE>.visit_seq(seq).map(|_| None)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        SkipVisitor::<QUOTE>.visit_map(map).map(|_| None)
    }
}

/// A message's `id`: kept when it is a string, a number or null, `None` otherwise. `QUOTE` as for [`Keys`].
pub(super) struct IdAs<const QUOTE: bool>;

impl<'de, const QUOTE: bool> DeserializeSeed<'de> for IdAs<QUOTE> {
    type Value = Option<Value>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de, const QUOTE: bool> Visitor<'de> for IdAs<QUOTE> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Value::String(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Some(Value::String(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(Value::from(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        serde_json::Number::from_f64(v)
            .map(|n| Some(Value::Number(n)))
            .ok_or_else(|| E::custom("a number that is not finite"))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Some(Value::Null))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        SkipVisitor::<QUOTE>.visit_seq(seq).map(|_| None)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        SkipVisitor::<QUOTE>.visit_map(map).map(|_| None)
    }
}

/// The whole body.
struct BodySeed;

impl<'de> DeserializeSeed<'de> for BodySeed {
    type Value = Body;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Body, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BodySeed {
    type Value = Body;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    not_an_object!(Body::Other);
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Body, A::Error> {
        MessageSeed.visit_map(map).map(|m| Body::One(Box::new(m)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Body, A::Error> {
        let mut messages = Vec::new();
        let mut count = 0;
        loop {
            // Past the limit the messages are only counted, for the refusal's text.
            let more = if count < MAX_BATCH {
                seq.next_element_seed(MessageSeed)?
                    .map(|m| messages.push(m))
                    .is_some()
            } else {
                seq.next_element::<Skip>()?.is_some()
            };
            if !more {
                return Ok(Body::Batch(messages, count));
            }
            count += 1;
        }
    }
}

/// One message.
struct MessageSeed;

impl<'de> DeserializeSeed<'de> for MessageSeed {
    type Value = Message;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Message, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MessageSeed {
    type Value = Message;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    not_an_object!(Message {
        not_object: true,
        ..Message::default()
    });
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Message, A::Error> {
        SkipVisitor::<true>.visit_seq(seq)?;
        Ok(Message {
            not_object: true,
            ..Message::default()
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
        let mut message = Message::default();
        let mut keys = AgentKeys::default();
        while let Some(key) = map.next_key_seed(Key)? {
            match &*key {
                "jsonrpc" => message.jsonrpc = Some(map.next_value_seed(TextAs::<true>)?),
                "id" => message.id = Some(map.next_value_seed(IdAs::<true>)?),
                "method" => message.method = Some(map.next_value_seed(TextAs::<true>)?),
                "params" => message.params = Some(map.next_value_seed(ParamsSeed)?),
                "result" => {
                    map.next_value::<Skip>()?;
                    message.result = true;
                }
                "error" => {
                    map.next_value::<Skip>()?;
                    message.error = true;
                }
                other => {
                    note_misspelt(&mut message.misspelt, other, MESSAGE_MEMBERS, "");
                    map.next_value::<Skip>()?;
                }
            }
            keys.add(&key)?;
        }
        keys.end()?;
        Ok(message)
    }
}

/// A message's `params`.
struct ParamsSeed;

impl<'de> DeserializeSeed<'de> for ParamsSeed {
    type Value = Params;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Params, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ParamsSeed {
    type Value = Params;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    not_an_object!(Params::Other);
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Params, A::Error> {
        SkipVisitor::<true>.visit_seq(seq)?;
        Ok(Params::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Params, A::Error> {
        let mut params = ParamsObject::default();
        let mut keys = AgentKeys::default();
        while let Some(key) = map.next_key_seed(Key)? {
            match &*key {
                "name" => params.name = map.next_value_seed(TextAs::<true>)?,
                "uri" => params.uri = map.next_value_seed(TextAs::<true>)?,
                "ref" => params.reference = Some(map.next_value_seed(RefSeed)?),
                other => {
                    note_misspelt(&mut params.misspelt, other, PARAMS_MEMBERS, "params.");
                    map.next_value::<Skip>()?;
                }
            }
            keys.add(&key)?;
        }
        keys.end()?;
        Ok(Params::Object(params))
    }
}

/// A completion's `params.ref`.
struct RefSeed;

impl<'de> DeserializeSeed<'de> for RefSeed {
    type Value = Ref;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Ref, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RefSeed {
    type Value = Ref;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    not_an_object!(Ref::Other);
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Ref, A::Error> {
        SkipVisitor::<true>.visit_seq(seq)?;
        Ok(Ref::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ref, A::Error> {
        let mut reference = RefObject::default();
        let mut keys = AgentKeys::default();
        while let Some(key) = map.next_key_seed(Key)? {
            match &*key {
                "type" => reference.kind = map.next_value_seed(TextAs::<true>)?,
                "name" => reference.name = map.next_value_seed(TextAs::<true>)?,
                "uri" => reference.uri = map.next_value_seed(TextAs::<true>)?,
                other => {
                    note_misspelt(&mut reference.misspelt, other, REF_MEMBERS, "params.ref.");
                    map.next_value::<Skip>()?;
                }
            }
            keys.add(&key)?;
        }
        keys.end()?;
        Ok(Ref::Object(reference))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(name: &str, id: Value) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": {}}})
    }

    /// Names and batches at their limits are taken (the refusals past them are in
    /// `refused_bodies`).
    #[test]
    fn names_and_batches_at_their_limits_are_taken() {
        let name = "t".repeat(MAX_NAME);
        let batch = Value::Array(vec![call(&name, json!(1)); MAX_BATCH]).to_string();
        let request = parse_request(batch.as_bytes()).expect("taken");
        assert_eq!(request.tool_calls.len(), MAX_BATCH);
        assert_eq!(request.tool_calls[0], name);
        let uri = format!("docs://{}", "u".repeat(MAX_URI - 7));
        let read = json!({"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":uri}});
        let request = parse_request(read.to_string().as_bytes()).expect("taken");
        assert_eq!(request.resource_reads, vec![uri]);
    }

    #[test]
    fn accepted_bodies() {
        let cases: Vec<(&str, Value, Vec<&str>, Vec<Value>)> = vec![
            (
                "single call",
                call("search", json!(1)),
                vec!["search"],
                vec![],
            ),
            (
                "list with string id",
                json!({"jsonrpc": "2.0", "id": "a-1", "method": "tools/list"}),
                vec![],
                vec![json!("a-1")],
            ),
            (
                "list with cursor params",
                json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {"cursor": "x"}}),
                vec![],
                vec![json!(7)],
            ),
            (
                "batch of calls with ids of every type, order kept",
                json!([
                    call("b", json!("s")),
                    call("a", json!(2)),
                    call("b", json!(null)),
                    call("c", json!(-3.5))
                ]),
                vec!["b", "a", "b", "c"],
                vec![],
            ),
            (
                "notification and initialize pass",
                json!([
                    {"jsonrpc": "2.0", "method": "notifications/initialized"},
                    {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}
                ]),
                vec![],
                vec![],
            ),
            (
                "client responses pass",
                json!([{"jsonrpc": "2.0", "id": 5, "result": {}}, {"jsonrpc": "2.0", "id": "e", "error": {"code": -1, "message": "no"}}]),
                vec![],
                vec![],
            ),
            (
                "unicode tool name",
                call("recherche_données_🔍", json!(1)),
                vec!["recherche_données_🔍"],
                vec![],
            ),
            (
                "empty tool name is still a name",
                call("", json!(1)),
                vec![""],
                vec![],
            ),
        ];
        for (name, body, tools, list_ids) in cases {
            let parsed = parse_request(body.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(parsed.tool_calls, tools, "{name}");
            let ids: Vec<Value> = parsed.list_ids.into_iter().map(|(id, _)| id).collect();
            assert_eq!(ids, list_ids, "{name}");
        }
    }

    #[test]
    fn resources_prompts_and_lists_of_every_kind() {
        let body = json!([
            {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "docs://a"}},
            {"jsonrpc": "2.0", "id": 2, "method": "resources/subscribe", "params": {"uri": "docs://b"}},
            {"jsonrpc": "2.0", "id": 3, "method": "prompts/get", "params": {"name": "summarize", "arguments": {}}},
            {"jsonrpc": "2.0", "id": 4, "method": "completion/complete", "params": {"ref": {"type": "ref/prompt", "name": "review"}, "argument": {"name": "a", "value": "x"}}},
            {"jsonrpc": "2.0", "id": 5, "method": "completion/complete", "params": {"ref": {"type": "ref/resource", "uri": "docs://{path}"}, "argument": {"name": "path", "value": "x"}}},
            {"jsonrpc": "2.0", "id": "t", "method": "tools/list"},
            {"jsonrpc": "2.0", "id": "r", "method": "resources/list"},
            {"jsonrpc": "2.0", "id": "rt", "method": "resources/templates/list"},
            {"jsonrpc": "2.0", "id": "p", "method": "prompts/list", "params": {"cursor": "c"}},
            {"jsonrpc": "2.0", "method": "prompts/list"},
        ]);
        let parsed = parse_request(body.to_string().as_bytes()).unwrap();
        assert!(parsed.tool_calls.is_empty());
        assert_eq!(
            parsed.resource_reads,
            ["docs://a", "docs://b", "docs://{path}"]
        );
        assert_eq!(parsed.prompt_gets, ["summarize", "review"]);
        assert_eq!(
            parsed.list_ids,
            [
                (json!("t"), ListKind::Tools),
                (json!("r"), ListKind::Resources),
                (json!("rt"), ListKind::ResourceTemplates),
                (json!("p"), ListKind::Prompts),
            ]
        );
        assert_eq!(parsed.lists, ListKind::ALL);
    }

    #[test]
    fn refused_bodies() {
        let cases: Vec<(&str, String, &str)> = vec![
            ("not json", "tools/call please".into(), "not valid JSON-RPC"),
            ("empty body", String::new(), "not valid JSON-RPC"),
            ("trailing garbage", format!("{} x", call("a", json!(1))), "not valid JSON-RPC"),
            ("empty batch", "[]".into(), "empty JSON-RPC batch"),
            ("scalar", "42".into(), "object or a batch"),
            ("wrong version", r#"{"jsonrpc":"1.0","id":1,"method":"tools/list"}"#.into(), "`jsonrpc`"),
            ("missing version", r#"{"id":1,"method":"tools/list"}"#.into(), "`jsonrpc`"),
            ("call without params", r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#.into(), "params.name"),
            ("call with numeric name", r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":3}}"#.into(), "params.name"),
            ("call with positional params", r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["a"]}"#.into(), "params.name"),
            ("read without a uri", r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{}}"#.into(), "params.uri"),
            ("read with a numeric uri", r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":1}}"#.into(), "params.uri"),
            ("subscribe without a uri", r#"{"jsonrpc":"2.0","id":1,"method":"resources/subscribe"}"#.into(), "params.uri"),
            ("prompt without a name", r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"arguments":{}}}"#.into(), "params.name"),
            ("completion without a ref", r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{}}"#.into(), "params.ref"),
            ("completion of an unknown ref", r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/tool","name":"x"}}}"#.into(), "params.ref"),
            ("completion of a prompt without name", r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt"}}}"#.into(), "params.ref.name"),
            (
                "duplicate uri key",
                r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"docs://ok","uri":"docs://secret"}}"#.into(),
                "duplicate key `uri`",
            ),
            // Go's `encoding/json` matches names ignoring case (`ſ` is `s`, `K` is `k`), the
            // last match winning: each of these is another call to a Go server.
            ("a tool named twice, in two cases", r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_docs","Name":"delete_all"}}"#.into(), "`params.Name` is `name`"),
            ("a tool named in upper case", r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"NAME":"admin_tool"}}"#.into(), "`params.NAME` is `name`"),
            ("a second method", r#"{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call","params":{"name":"delete_all"}}"#.into(), "`Method` is `method`"),
            ("a method in another case only", r#"{"jsonrpc":"2.0","id":1,"METHOD":"tools/call","result":{}}"#.into(), "`METHOD` is `method`"),
            ("params folded", "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"search_docs\"},\"param\u{17f}\":{\"name\":\"delete_all\"}}".into(), "is `params`"),
            ("a resource named twice", r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"docs://ok","Uri":"file:///etc/passwd"}}"#.into(), "`params.Uri` is `uri`"),
            ("a completion's ref in another case", r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"ok","NAME":"secret"}}}"#.into(), "`params.ref.NAME` is `name`"),
            ("a tool name past the limit", call(&"t".repeat(257), json!(1)).to_string(), "`params.name` is 257 bytes"),
            ("a prompt name past the limit", json!({"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p".repeat(7 << 20)}}).to_string(), "at most 256"),
            ("a resource URI past the limit", json!({"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":format!("docs://{}", "u".repeat(8192))}}).to_string(), "`params.uri` is 8199 bytes"),
            ("a completion's prompt past the limit", json!({"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"p".repeat(300)}}}).to_string(), "`params.ref.name`"),
            ("a batch past the limit", Value::Array(vec![call("a", json!(1)); 1025]).to_string(), "batch of 1025"),
            // URL parsers (WHATWG: Node's `new URL`, pydantic's `AnyUrl`) drop TAB, LF and CR,
            // strip C0 and spaces at the ends and read `\` as `/`: each of these is
            // `/etc/passwd` (or `docs://private/...`) to the server, but no policy pattern's.
            ("a backslash path", r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///srv/data/x\\..\\..\\..\\etc\\passwd"}}"#.into(), "`params.uri` holds a backslash"),
            ("dot segments split by a TAB", r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///srv/data/.\t./.\t./etc/passwd"}}"#.into(), "control character"),
            ("a TAB in a name", r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///e\ttc/passwd"}}"#.into(), "control character"),
            ("a leading space", r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":" file:///etc/passwd"}}"#.into(), "whitespace"),
            ("a trailing TAB", r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///etc/passwd\t"}}"#.into(), "control character"),
            ("a NUL", r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///etc/passwd\u0000.txt"}}"#.into(), "control character"),
            ("a TAB in another scheme", r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"docs://pri\tvate/salaries"}}"#.into(), "control character"),
            ("a subscription", r#"{"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":"file:///e\ntc/passwd"}}"#.into(), "control character"),
            ("an unsubscription", r#"{"jsonrpc":"2.0","id":1,"method":"resources/unsubscribe","params":{"uri":"file:///e\rtc/passwd"}}"#.into(), "control character"),
            ("an unsubscription without a uri", r#"{"jsonrpc":"2.0","id":1,"method":"resources/unsubscribe","params":{}}"#.into(), "params.uri"),
            ("a completion's resource", r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"file:///srv\\..\\etc/{f}"}}}"#.into(), "`params.ref.uri` holds a backslash"),
            ("userinfo", r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"https://alice:PW@example.com/doc?token=Q"}}"#.into(), "userinfo"),
            ("params a string", r#"{"jsonrpc":"2.0","id":1,"method":"x","params":"a"}"#.into(), "`params`"),
            ("method not a string", r#"{"jsonrpc":"2.0","id":1,"method":7}"#.into(), "`method`"),
            ("object id", r#"{"jsonrpc":"2.0","id":{},"method":"tools/list"}"#.into(), "`id`"),
            ("bool id", r#"{"jsonrpc":"2.0","id":true,"method":"tools/list"}"#.into(), "`id`"),
            ("response without id", r#"{"jsonrpc":"2.0","result":{}}"#.into(), "`id`"),
            ("response with both", r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#.into(), "exactly one"),
            ("batch member not an object", format!("[{}, 1]", call("a", json!(1))), "message 1"),
            (
                "duplicate tool name key",
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ok","name":"secret"}}"#.into(),
                "duplicate key `name`",
            ),
            (
                "duplicate method key",
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"x"}}"#.into(),
                "duplicate key `method`",
            ),
        ];
        for (name, body, needle) in cases {
            let err = parse_request(body.as_bytes()).expect_err(name);
            assert!(err.0.contains(needle), "{name}: {err}");
        }
    }

    /// A refusal never repeats the userinfo (a password) it refuses.
    #[test]
    fn a_uri_refusal_does_not_repeat_the_uri() {
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"https://alice:PW-SECRET@example.com/doc"}}"#;
        let err = parse_request(body.as_bytes()).unwrap_err();
        assert!(!err.0.contains("PW-SECRET"), "{err}");
    }

    #[test]
    fn an_unsubscription_names_its_resource() {
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"resources/unsubscribe","params":{"uri":"docs://a"}}"#;
        assert_eq!(
            parse_request(body.as_bytes()).unwrap().resource_reads,
            ["docs://a"]
        );
    }

    /// A resource is decided as a server's URL parser reads its URI (see `uri::as_read`).
    #[test]
    fn a_resource_is_named_as_url_parsers_read_it() {
        for (uri, read) in [
            (
                "https://INTERNAL.example:443/secret",
                "https://internal.example/secret",
            ),
            ("file:///srv/data/..?x", "file:///srv/?x"),
            ("docs://private:/salaries", "docs://private/salaries"),
        ] {
            let body =
                json!({"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":uri}});
            assert_eq!(
                parse_request(body.to_string().as_bytes())
                    .unwrap()
                    .resource_reads,
                [read],
                "{uri}"
            );
        }
    }

    /// Strictness holds in what is skipped: a repeated key or invalid text anywhere refuses the
    /// body, however deep in a call's arguments.
    #[test]
    fn what_is_skipped_is_still_read_strictly() {
        let members: Vec<String> = (0..=KEYS_CHECKED_AT_ONCE)
            .map(|i| format!(r#""m{i}":0"#))
            .collect();
        let many_then_repeat = format!(r#"{{{},"m0":1}}"#, members.join(","));
        for (name, arguments, needle) in [
            (
                "a repeated key",
                r#"{"a":{"b":1,"b":2}}"#,
                "duplicate key `b`",
            ),
            (
                "a repeated escaped key",
                r#"[{"\u0062":1,"b":2}]"#,
                "duplicate key `b`",
            ),
            (
                "a repeat past the members checked at once",
                many_then_repeat.as_str(),
                "a duplicate key",
            ),
            ("invalid escape", r#"{"a":"\ud800"}"#, "not valid JSON"),
            ("a number out of range", "[1e400]", "not valid JSON"),
            ("unterminated", r#"{"a":[}"#, "not valid JSON"),
        ] {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{arguments}}}}}"#
            );
            let err = parse_request(body.as_bytes()).expect_err(name);
            assert!(err.0.contains(needle), "{name}: {err}");
        }
        let long = "k".repeat(MAX_NAME + 1);
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{{"{long}":1,"{long}":2}}}}}}"#
        );
        let err = parse_request(body.as_bytes()).unwrap_err();
        assert!(
            err.0.contains("a duplicate key") && !err.0.contains(&long),
            "{err}"
        );
    }

    /// SECURITY: a body is read in about its own size, not as a tree of every value in it
    /// (which took some 18 times the body for one of tiny values: `[[],[],…]`). Measured as the
    /// growth of this process's peak resident memory, in a process of its own (this test run
    /// again alone), so no other test's allocations count.
    #[test]
    fn a_body_of_tiny_values_is_read_without_a_tree() {
        if !crate::in_own_process(
            "mcp::jsonrpc::tests::a_body_of_tiny_values_is_read_without_a_tree",
        ) {
            return;
        }
        // The code that reads it is paged in first (file pages count as resident too).
        let warm = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"x":[[],[]],"y":{"a":0}}}}"#;
        parse_request(warm.as_bytes()).unwrap();
        // Arrays of empty arrays, and an object of many members (whose names are kept, to
        // refuse a repeat).
        let array = |i: usize| {
            if i == 0 {
                "[]".to_string()
            } else {
                ",[]".to_string()
            }
        };
        let object = |i: usize| {
            let sep = if i == 0 { "" } else { "," };
            format!(r#"{sep}"{i}":0"#)
        };
        // (A member's name is kept as an 8-byte hash: a body of short names takes about its
        // size again; a tree took 6 times it, and 24 times a body of arrays.)
        for (shape, item, open, close, bound) in [
            ("arrays", &array as &dyn Fn(usize) -> String, "[", "]", 4),
            ("members", &object, "{", "}", 1),
        ] {
            let mut body = String::with_capacity(9 << 20);
            body.push_str(
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"x":"#,
            );
            body.push_str(open);
            let mut i = 0;
            while body.len() < 8 << 20 {
                body.push_str(&item(i));
                i += 1;
            }
            body.push_str(close);
            body.push_str("}}}");
            let before = crate::peak_resident_bytes();
            let request = parse_request(body.as_bytes()).unwrap();
            let grown = crate::peak_resident_bytes() - before;
            assert_eq!(request.tool_calls, ["t"]);
            assert!(
                grown < body.len() as u64 / bound,
                "{shape}: reading a {}-byte body took {grown} bytes more at its peak",
                body.len()
            );
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_a_crash() {
        let body = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_request(body.as_bytes()).is_err());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn id() -> impl Strategy<Value = Value> {
            prop_oneof![
                any::<i64>().prop_map(Value::from),
                any::<String>().prop_map(Value::from),
                Just(Value::Null),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(256)))]

            #[test]
            fn fuzz_every_call_in_a_batch_is_seen(names in proptest::collection::vec(any::<String>(), 1..8), ids in proptest::collection::vec(id(), 8)) {
                let batch: Vec<Value> = names.iter().zip(ids).map(|(n, id)| call(n, id)).collect();
                let parsed = parse_request(Value::Array(batch).to_string().as_bytes()).unwrap();
                prop_assert_eq!(parsed.tool_calls, names);
            }

            #[test]
            fn fuzz_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = parse_request(&bytes);
            }
        }
    }
}
