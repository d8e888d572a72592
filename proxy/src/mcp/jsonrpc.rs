//! Reading the JSON-RPC 2.0 body an agent POSTs to an MCP server: a single message or a batch.
//!
//! The reading is strict because whatever this module misreads is what the server acts on:
//! duplicate object keys are refused (a first-wins and a last-wins parser would see different
//! tool names), every message must say `"jsonrpc": "2.0"`, ids must be strings, numbers or
//! null, a `tools/call` must name its tool with a string `params.name`, a `resources/read` (or
//! `resources/subscribe`) its resource with a string `params.uri`, a `prompts/get` its prompt
//! with a string `params.name`, and a `completion/complete` the prompt or resource it completes.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The MCP method whose calls are authorized one by one.
pub const TOOLS_CALL: &str = "tools/call";
/// Reading a resource, authorized per resource URI.
pub const RESOURCES_READ: &str = "resources/read";
/// Subscribing to a resource's updates: authorized like reading it.
pub const RESOURCES_SUBSCRIBE: &str = "resources/subscribe";
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
    /// The resource URI of every `resources/read` and `resources/subscribe`, and of every
    /// resource template a `completion/complete` names, in body order.
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
pub fn parse_request(body: &[u8]) -> Result<McpRequest, Malformed> {
    let value = parse_strict(body)
        .map_err(|e| Malformed(format!("the body is not valid JSON-RPC 2.0: {e}")))?;
    let messages = match value {
        Value::Array(items) if items.is_empty() => {
            return Err(Malformed("an empty JSON-RPC batch is not a request".into()))
        }
        Value::Array(items) if items.len() > MAX_BATCH => {
            return Err(Malformed(format!(
                "a JSON-RPC batch of {} messages; at most {MAX_BATCH} are taken",
                items.len()
            )))
        }
        Value::Array(items) => items,
        Value::Object(_) => vec![value],
        _ => {
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

/// Parses JSON into a [`Value`], refusing any object that repeats a key.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let StrictValue(value) = StrictValue::deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Limits on what a request names. SECURITY: each name is decided and written to the tenant's
/// audit record, so an unbounded one would let one request write megabytes of audit (a shared
/// disk: every tenant's records). Tool and prompt names are short identifiers (the MCP
/// specification suggests at most 128 characters), resource URIs longer.
const MAX_NAME: usize = 256;
const MAX_URI: usize = 8 * 1024;
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

/// The members of a message, of its `params` and of a completion's `params.ref` that decide
/// what the call is.
const MESSAGE_MEMBERS: &[&str] = &["jsonrpc", "id", "method", "params", "result", "error"];
const PARAMS_MEMBERS: &[&str] = &["name", "uri", "ref"];
const REF_MEMBERS: &[&str] = &["type", "name", "uri"];

/// SECURITY: refuses an object that spells a member the proxy reads in another case as well as
/// (or instead of) exactly: a server that matches names ignoring case (Go's `encoding/json`)
/// would act on `{"name":"allowed","Name":"denied"}` as `denied` (see [`crate::json_names`]).
fn exact_members(fields: &Map<String, Value>, known: &[&str], at: &str) -> Result<(), String> {
    for name in known {
        if let Some(other) = crate::json_names::misspelt(fields.keys().map(String::as_str), name) {
            return Err(format!(
                "`{at}{other}` is `{name}` spelt in another case, which servers that match names \
                 ignoring case would read"
            ));
        }
    }
    Ok(())
}

fn read_message(message: &Value, request: &mut McpRequest) -> Result<(), String> {
    let Value::Object(fields) = message else {
        return Err("not a JSON object".into());
    };
    exact_members(fields, MESSAGE_MEMBERS, "")?;
    if let Some(Value::Object(params)) = fields.get("params") {
        exact_members(params, PARAMS_MEMBERS, "params.")?;
        if let Some(Value::Object(reference)) = params.get("ref") {
            exact_members(reference, REF_MEMBERS, "params.ref.")?;
        }
    }
    if fields.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return Err("`jsonrpc` must be \"2.0\"".into());
    }
    if let Some(id) = fields.get("id") {
        if !matches!(id, Value::String(_) | Value::Number(_) | Value::Null) {
            return Err("`id` must be a string, a number or null".into());
        }
    }
    match fields.get("method") {
        Some(Value::String(method)) => read_call(method, fields, request),
        Some(_) => Err("`method` must be a string".into()),
        // A response the client sends back (to a server's sampling or elicitation request).
        None => {
            if !fields.contains_key("id") {
                return Err("a message without `method` must be a response with an `id`".into());
            }
            match (fields.contains_key("result"), fields.contains_key("error")) {
                (true, false) | (false, true) => Ok(()),
                _ => Err("a response must have exactly one of `result` and `error`".into()),
            }
        }
    }
}

fn read_call(
    method: &str,
    fields: &Map<String, Value>,
    request: &mut McpRequest,
) -> Result<(), String> {
    let params = fields.get("params");
    if !matches!(
        params,
        None | Some(Value::Object(_)) | Some(Value::Array(_))
    ) {
        return Err("`params` must be an object or an array".into());
    }
    let param = |name: &str, what: &str, max: usize| -> Result<String, String> {
        // SECURITY: a call whose tool, resource or prompt cannot be named cannot be authorized.
        let value = params
            .and_then(|p| p.get(name))
            .and_then(Value::as_str)
            .ok_or(format!(
                "a `{method}` needs a string `params.{name}` ({what})"
            ))?;
        bounded(value, max, name)
    };
    match method {
        TOOLS_CALL => request
            .tool_calls
            .push(param("name", "the tool", MAX_NAME)?),
        RESOURCES_READ | RESOURCES_SUBSCRIBE => {
            request
                .resource_reads
                .push(param("uri", "the resource", MAX_URI)?)
        }
        PROMPTS_GET => request
            .prompt_gets
            .push(param("name", "the prompt", MAX_NAME)?),
        COMPLETION_COMPLETE => {
            let reference = params.and_then(|p| p.get("ref"));
            let field = |f: &str| reference.and_then(|r| r.get(f)).and_then(Value::as_str);
            match field("type") {
                Some("ref/prompt") => request.prompt_gets.push(bounded(
                    field("name").ok_or(
                        "a `completion/complete` for a prompt needs a string `params.ref.name`",
                    )?,
                    MAX_NAME,
                    "ref.name",
                )?),
                Some("ref/resource") => request.resource_reads.push(bounded(
                    field("uri").ok_or(
                        "a `completion/complete` for a resource needs a string `params.ref.uri`",
                    )?,
                    MAX_URI,
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
                if let Some(id) = fields.get("id") {
                    request.list_ids.push((id.clone(), kind));
                }
            }
        }
    }
    Ok(())
}

/// A JSON value whose objects have no repeated key.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        // Collected in a BTreeMap first so a repeat is seen before anything is overwritten.
        let mut fields = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictValue(v) = map.next_value()?;
            if fields.insert(key.clone(), v).is_some() {
                return Err(de::Error::custom(format!("duplicate key `{key}`")));
            }
        }
        Ok(Value::Object(fields.into_iter().collect()))
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
