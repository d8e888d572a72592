//! Filtering the lists in an MCP server's response (`tools/list`, `resources/list`,
//! `resources/templates/list`, `prompts/list`), so a workload never sees a tool, resource or
//! prompt its policies would refuse to let it use.
//!
//! The response is either one JSON body (buffered whole, up to a cap) or a `text/event-stream`
//! whose every `data:` is a JSON-RPC message (filtered event by event, each up to the cap). A
//! message is a list when it answers one of the request's list ids with a `result`, or when its
//! `result` carries a list field (`tools`, `resources`, `resourceTemplates`, `prompts`) at all;
//! that field keeps only the allowed items.
//! SECURITY: whatever cannot be read as that (not JSON, an item without its string name or URI,
//! a list result without its list, over the cap) is an error, and the caller cuts the response:
//! nothing unfiltered reaches the agent.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::Value;

use super::answer::{self, ReadError};
use super::jsonrpc::{ItemKind, ListKind};
use super::session::Sealer;

/// Why a response could not be filtered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The body, or one event, is larger than the configured cap.
    #[error("the MCP response exceeds the {0}-byte filtering buffer")]
    TooLarge(usize),
    /// The body is not what an MCP server sends for this request.
    #[error("the MCP response cannot be read: {0}")]
    Unreadable(String),
    /// One answer (a JSON body, or one event of a stream) lists more items than
    /// [`MAX_LIST_ITEMS`].
    #[error("the MCP response lists more than {MAX_LIST_ITEMS} items in one answer")]
    TooManyItems,
    /// One response (an event stream) lists more distinct items, all its answers together,
    /// than [`MAX_DECISIONS`].
    #[error("the MCP response lists more than {MAX_DECISIONS} distinct items")]
    TooManyDecisions,
    /// Holding the answer to filter it would take the proxy past its body memory bound.
    #[error("the proxy holds as much body memory as it may")]
    Overloaded,
}

/// Most list items (tools, resources, templates, prompts, all lists together) one answer may
/// hold: a JSON body, or one event of a stream. SECURITY: each distinct item is a policy
/// decision made inline, on the worker every tenant of the listener shares; an 8 MiB list of
/// half a million names held it for seconds. Servers page longer lists (`nextCursor`), and
/// requests are held to [`super::MAX_ITEMS_PER_MESSAGE`] for the same reason. An answer past
/// it is withheld like any other that cannot be filtered, before any of its items is decided.
pub const MAX_LIST_ITEMS: usize = 1024;

/// Most decisions a response keeps for its later events: a few answers' worth, of names of at
/// most [`MAX_DECIDED_BYTES`] together. Past either they are forgotten (and made again when
/// asked again), so that a long event stream of new names cannot grow the proxy's memory
/// without bound.
const MAX_DECIDED: usize = 4 * MAX_LIST_ITEMS;
const MAX_DECIDED_BYTES: usize = 256 * 1024;

/// Most policy decisions one response may take, all its answers together: a few answers' worth
/// of new names (a repeated name is decided once). SECURITY: [`MAX_LIST_ITEMS`] bounds one
/// answer; an event stream may carry answers for as long as it lasts, and 400 answers of 1024
/// new names held a worker every tenant shares for seconds (each decision about 7 µs).
pub const MAX_DECISIONS: usize = 4 * MAX_LIST_ITEMS;

/// How the response is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `application/json`: one message or a batch.
    Json,
    /// `text/event-stream`: one message per event.
    Sse,
}

impl Framing {
    /// The framing a `Content-Type` names, if it is one this filter reads.
    pub fn for_content_type(content_type: &[u8]) -> Option<Self> {
        let essence = content_type.split(|b| *b == b';').next().unwrap_or(b"");
        let essence = essence.trim_ascii();
        if essence.eq_ignore_ascii_case(b"application/json") {
            Some(Framing::Json)
        } else if essence.eq_ignore_ascii_case(b"text/event-stream") {
            Some(Framing::Sse)
        } else {
            None
        }
    }
}

/// Items removed from lists so far, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hidden {
    /// Tools.
    pub tools: u64,
    /// Resources and resource templates.
    pub resources: u64,
    /// Prompts.
    pub prompts: u64,
}

impl Hidden {
    fn count(&mut self, kind: ItemKind) {
        match kind {
            ItemKind::Tool => self.tools += 1,
            ItemKind::Resource => self.resources += 1,
            ItemKind::Prompt => self.prompts += 1,
        }
    }
}

/// Rewrites one response as it streams through.
#[derive(Debug)]
pub struct ListFilter {
    framing: Framing,
    list_ids: Vec<(Value, ListKind)>,
    cap: usize,
    /// JSON: the whole body so far. SSE: the unfinished event.
    pending: Vec<u8>,
    /// SSE: where in `pending` the line begins that is not known to end yet, and how much of
    /// `pending` was searched for line ends (not searched again when more comes).
    line: usize,
    searched: usize,
    /// Names in `decided`, in bytes.
    decided_bytes: usize,
    /// Policy decisions taken so far.
    decisions: usize,
    /// Decisions already made in this response, by item; at most [`MAX_DECIDED`] (an event
    /// stream lasts as long as its session, and each event may name new items).
    decided: HashMap<(ItemKind, String), bool>,
    /// Items removed so far.
    pub hidden: Hidden,
    /// The server's path prefix: where an `endpoint` event (the legacy HTTP+SSE transport) may
    /// send the client's messages, and what seals the session it names. `None`: no `endpoint`
    /// event is passed.
    endpoint: Option<(String, Sealer)>,
}

impl ListFilter {
    /// A filter for a response of `framing` to a request whose list ids are `list_ids`.
    pub fn new(framing: Framing, list_ids: Vec<(Value, ListKind)>, cap: usize) -> Self {
        Self {
            framing,
            list_ids,
            cap,
            pending: Vec::new(),
            line: 0,
            searched: 0,
            decided_bytes: 0,
            decisions: 0,
            decided: HashMap::new(),
            hidden: Hidden::default(),
            endpoint: None,
        }
    }

    /// Passes the legacy HTTP+SSE transport's `endpoint` event when the path it gives the
    /// client's messages is under `prefix`, the server's own (so they are checked as MCP too),
    /// with the session it names sealed by `sealer`.
    pub fn with_endpoint(mut self, prefix: &str, sealer: Sealer) -> Self {
        self.endpoint = Some((prefix.to_string(), sealer));
        self
    }

    /// Bytes this filter holds once it takes `more`: the answer so far (a JSON body, and at
    /// its `end` the filtered copy written beside it), or the events in progress (each read
    /// with its data joined and its filtered copy beside it).
    pub fn held_with(&self, more: usize, end: bool) -> usize {
        let held = self.pending.len() + more;
        let read = match self.framing {
            Framing::Json if end => 2 * held,
            Framing::Json => held,
            Framing::Sse => 3 * held,
        };
        // The decisions kept: their names, and about 64 bytes of map for each.
        read + self.decided_bytes + 64 * self.decided.len()
    }

    /// The framing this filter reads.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Takes the next chunk and returns what may be sent on. `allowed` decides one item.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        end: bool,
        allowed: &mut dyn FnMut(ItemKind, &str) -> bool,
    ) -> Result<Bytes, FilterError> {
        match self.framing {
            Framing::Json => self.feed_json(chunk, end, allowed),
            Framing::Sse => self.feed_sse(chunk, end, allowed),
        }
    }

    /// A JSON-RPC error answering the request's first list, framed like the response, to end a
    /// response that could not be filtered.
    pub fn error_message(&self, error: &FilterError) -> Vec<u8> {
        let message = serde_json::json!({
            "jsonrpc": "2.0",
            "id": self.list_ids.first().map_or(Value::Null, |(id, _)| id.clone()),
            "error": {"code": -32603, "message": format!("tenant-proxy: {error}; the response was withheld")},
        })
        .to_string();
        match self.framing {
            Framing::Json => message.into_bytes(),
            Framing::Sse => format!("event: message\r\ndata: {message}\r\n\r\n").into_bytes(),
        }
    }

    fn feed_json(
        &mut self,
        chunk: &[u8],
        end: bool,
        allowed: &mut dyn FnMut(ItemKind, &str) -> bool,
    ) -> Result<Bytes, FilterError> {
        self.take(chunk)?;
        if !end {
            return Ok(Bytes::new());
        }
        let body = std::mem::take(&mut self.pending);
        // A response with no body (202 to a notification) carries no list, unless one is owed.
        if body.trim_ascii().is_empty() && self.list_ids.is_empty() {
            return Ok(Bytes::from(body));
        }
        match self.filter_answer(&body, allowed)? {
            Some(filtered) => Ok(Bytes::from(filtered)),
            None => Ok(Bytes::from(body)),
        }
    }

    fn feed_sse(
        &mut self,
        chunk: &[u8],
        end: bool,
        allowed: &mut dyn FnMut(ItemKind, &str) -> bool,
    ) -> Result<Bytes, FilterError> {
        // Read in place: a copy of each event, and the rest moved down after each, made a
        // stream of many small events quadratic.
        let mut pending = std::mem::take(&mut self.pending);
        pending.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(chunk.len());
        let mut at = 0;
        let mut line = self.line;
        let mut from = self.searched;
        loop {
            match event_end(&pending, line, from) {
                Ok(end) => {
                    self.filter_event(&pending[at..end], &mut out, allowed)?;
                    (at, line, from) = (end, end, end);
                }
                Err(begun) => {
                    line = begun;
                    break;
                }
            }
        }
        if end && at < pending.len() {
            self.filter_event(&pending[at..], &mut out, allowed)?;
            (at, line) = (pending.len(), pending.len());
        }
        pending.drain(..at);
        if pending.len() > self.cap {
            return Err(FilterError::TooLarge(self.cap));
        }
        self.line = line - at;
        self.searched = pending.len();
        self.pending = pending;
        Ok(Bytes::from(out))
    }

    fn take(&mut self, chunk: &[u8]) -> Result<(), FilterError> {
        if self.pending.len() + chunk.len() > self.cap {
            return Err(FilterError::TooLarge(self.cap));
        }
        self.pending.extend_from_slice(chunk);
        Ok(())
    }

    /// Writes `event` (its lines and the blank line ending it) to `out`, its data rewritten
    /// when it held a tool list.
    fn filter_event(
        &mut self,
        event: &[u8],
        out: &mut Vec<u8>,
        allowed: &mut dyn FnMut(ItemKind, &str) -> bool,
    ) -> Result<(), FilterError> {
        if event.len() > self.cap {
            return Err(FilterError::TooLarge(self.cap));
        }
        // SECURITY: event streams may also end lines with a bare CR, and their readers skip a
        // leading BOM. This filter reads lines ended by LF only, so an event framed either way
        // would look like one line with no data and pass unfiltered while a client read its
        // list: refused instead (no MCP server is known to frame so).
        if event.starts_with("\u{feff}".as_bytes()) {
            return Err(FilterError::Unreadable(
                "an event that begins with a byte order mark".into(),
            ));
        }
        if has_bare_cr(event) {
            return Err(FilterError::Unreadable(
                "an event whose lines end with a bare CR".into(),
            ));
        }
        // The data, joined as a client joins it, and the event's name (its last `event`).
        let mut joined = Vec::new();
        let mut data_lines = 0;
        let mut event_type = None;
        for line in event.split_inclusive(|b| *b == b'\n') {
            if let Some(value) = data_value(line) {
                if data_lines > 0 {
                    joined.push(b'\n');
                }
                joined.extend_from_slice(value);
                data_lines += 1;
            } else if let Some(name) = field_value(line, b"event") {
                event_type = Some(name);
            }
        }
        if data_lines == 0 {
            out.extend_from_slice(event);
            return Ok(());
        }
        // The legacy HTTP+SSE transport's first event names, as a URL, where the client posts
        // its messages: not JSON-RPC. It passes when that path is under the server's prefix,
        // so those messages are checked as MCP; anywhere else they would not be.
        if event_type == Some(&b"endpoint"[..]) {
            let path = std::str::from_utf8(&joined).unwrap_or("");
            let Some((_, sealer)) = self.endpoint.as_ref().filter(|(prefix, _)| {
                data_lines == 1
                    && path.starts_with('/')
                    && !path.starts_with("//")
                    && super::config::under_prefix(path, prefix)
            }) else {
                return Err(FilterError::Unreadable(
                    "an `endpoint` event that sends messages outside the MCP server's path".into(),
                ));
            };
            // The session the URL names is this workload's alone.
            match super::session::seal_endpoint(&sealer.binding(), path) {
                Some(sealed) => replace_data(event, sealed.as_bytes(), out),
                None => out.extend_from_slice(event),
            }
            return Ok(());
        }
        match self.filter_answer(&joined, allowed) {
            Ok(Some(filtered)) => replace_data(event, &filtered, out),
            Ok(None) => out.extend_from_slice(event),
            Err(FilterError::Unreadable(why)) => {
                return Err(FilterError::Unreadable(format!("an event's data: {why}")))
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Filters every list in `text` (one message or a batch): `None` when all it lists is
    /// allowed, else the text with each list that lost items written anew (its kept items as
    /// the server wrote them), every other byte as it was.
    fn filter_answer(
        &mut self,
        text: &[u8],
        allowed: &mut dyn FnMut(ItemKind, &str) -> bool,
    ) -> Result<Option<Vec<u8>>, FilterError> {
        // Read whole before any item is decided: a refused answer costs no decision.
        let answer = answer::read(text, &self.list_ids, MAX_LIST_ITEMS).map_err(|e| match e {
            ReadError::Unreadable(why) => FilterError::Unreadable(why),
            ReadError::TooManyItems => FilterError::TooManyItems,
        })?;
        let mut filtered: Option<Vec<u8>> = None;
        let mut copied = 0;
        for list in answer.lists {
            let mut kept = Vec::with_capacity(list.items.len());
            for item in &list.items {
                if self.decide(list.kind, &item.name, allowed)? {
                    kept.push(item.text.as_bytes());
                } else {
                    self.hidden.count(list.kind.item());
                }
            }
            if kept.len() == list.items.len() {
                continue;
            }
            let out = filtered.get_or_insert_with(|| Vec::with_capacity(text.len()));
            out.extend_from_slice(&text[copied..list.span.start]);
            out.push(b'[');
            for (i, item) in kept.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(item);
            }
            out.push(b']');
            copied = list.span.end;
        }
        Ok(filtered.map(|mut out| {
            out.extend_from_slice(&text[copied..]);
            out
        }))
    }

    /// Whether the item of `kind` named `name` is kept, decided once per response.
    fn decide(
        &mut self,
        kind: ListKind,
        name: &str,
        allowed: &mut dyn FnMut(ItemKind, &str) -> bool,
    ) -> Result<bool, FilterError> {
        // SECURITY: a name no request may name (the request side's own bounds) can never be
        // called: hidden without a decision, and without a place among the decisions kept.
        let longest = match kind.item() {
            ItemKind::Resource => super::jsonrpc::MAX_URI,
            ItemKind::Tool | ItemKind::Prompt => super::jsonrpc::MAX_NAME,
        };
        if name.len() > longest {
            return Ok(false);
        }
        let key = (kind.item(), name.to_string());
        if let Some(ok) = self.decided.get(&key) {
            return Ok(*ok);
        }
        self.decisions += 1;
        if self.decisions > MAX_DECISIONS {
            return Err(FilterError::TooManyDecisions);
        }
        let ok = match kind.item() {
            // SECURITY: a resource the server lists by a URI an agent could not ask for (see
            // [`super::uri`]) is hidden: the policy would decide other text than a client's URL
            // parser reads. A resource is decided as that parser reads its URI.
            ItemKind::Resource if super::uri::refusal(name).is_some() => false,
            ItemKind::Resource => allowed(kind.item(), &super::uri::as_read(name)),
            _ => allowed(kind.item(), name),
        };
        if self.decided.len() >= MAX_DECIDED || self.decided_bytes + name.len() > MAX_DECIDED_BYTES
        {
            self.decided.clear();
            self.decided_bytes = 0;
        }
        self.decided_bytes += name.len();
        self.decided.insert(key, ok);
        Ok(ok)
    }
}

/// Where the first event in `buf` that is not read yet ends (past the blank line that ends
/// it): `line` is the start of a line not yet known to end, and line ends are searched for
/// from `from` on (what came before was searched). Else the start of the last line begun.
fn event_end(buf: &[u8], mut line: usize, from: usize) -> Result<usize, usize> {
    for i in memchr::memchr_iter(b'\n', &buf[from..]) {
        let end = from + i;
        let text = &buf[line..end];
        if text.is_empty() || text == b"\r" {
            return Ok(end + 1);
        }
        line = end + 1;
    }
    Err(line)
}

/// Writes an event's lines with its data lines replaced by one holding `data`, where the first
/// was.
fn replace_data(event: &[u8], data: &[u8], out: &mut Vec<u8>) {
    let mut wrote_data = false;
    for line in event.split_inclusive(|b| *b == b'\n') {
        if data_value(line).is_none() {
            out.extend_from_slice(line);
        } else if !wrote_data {
            wrote_data = true;
            let eol: &[u8] = if line.ends_with(b"\r\n") {
                b"\r\n"
            } else {
                b"\n"
            };
            // A filtered answer keeps the server's line breaks: one `data` line each, which a
            // client joins with the same breaks.
            for piece in data.split(|b| *b == b'\n') {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(piece);
                out.extend_from_slice(eol);
            }
        }
    }
}

/// Whether `event` holds a CR that does not begin a CRLF (a line ending of its own).
fn has_bare_cr(event: &[u8]) -> bool {
    event
        .iter()
        .enumerate()
        .any(|(i, b)| *b == b'\r' && event.get(i + 1) != Some(&b'\n'))
}

/// The value of a `name:` line (one leading space and the line ending removed).
fn field_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(name)?.strip_prefix(b":")?;
    let rest = rest.strip_suffix(b"\n").unwrap_or(rest);
    let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
    Some(rest.strip_prefix(b" ").unwrap_or(rest))
}

/// The value of a `data:` line (one leading space and the line ending removed).
fn data_value(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"data")?;
    let rest = rest.strip_suffix(b"\n").unwrap_or(rest);
    let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
    if rest.is_empty() {
        return Some(rest);
    }
    let rest = rest.strip_prefix(b":")?;
    Some(rest.strip_prefix(b" ").unwrap_or(rest))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sealer() -> Sealer {
        Sealer::new(
            super::super::session::SessionKey::process(),
            "acme",
            "bot",
            "docs",
        )
    }

    fn only_a_and_b(_: ItemKind, name: &str) -> bool {
        name == "a" || name == "b"
    }

    fn tools(ids: Vec<Value>) -> Vec<(Value, ListKind)> {
        ids.into_iter().map(|id| (id, ListKind::Tools)).collect()
    }

    fn list_result(id: Value, names: &[&str]) -> Value {
        let tools: Vec<Value> = names
            .iter()
            .map(|n| json!({"name": n, "inputSchema": {"type": "object"}}))
            .collect();
        json!({"jsonrpc": "2.0", "id": id, "result": {"tools": tools, "nextCursor": "c"}})
    }

    fn names(v: &Value) -> Vec<String> {
        v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    }

    fn run(f: &mut ListFilter, chunks: &[&[u8]]) -> Result<Vec<u8>, FilterError> {
        let mut out = Vec::new();
        let mut allowed = only_a_and_b;
        for (i, c) in chunks.iter().enumerate() {
            out.extend_from_slice(&f.feed(c, i + 1 == chunks.len(), &mut allowed)?);
        }
        Ok(out)
    }

    /// (case, the request's list ids, response body, tool names of each list in it).
    type JsonCase = (&'static str, Vec<Value>, Value, Vec<Vec<&'static str>>);

    #[test]
    fn json_bodies() {
        let cases: Vec<JsonCase> = vec![
            (
                "numeric id",
                vec![json!(1)],
                list_result(json!(1), &["a", "c", "b"]),
                vec![vec!["a", "b"]],
            ),
            (
                "string id",
                vec![json!("x")],
                list_result(json!("x"), &["c"]),
                vec![vec![]],
            ),
            (
                "unicode names",
                vec![json!(1)],
                list_result(json!(1), &["a", "données", "🔍"]),
                vec![vec!["a"]],
            ),
            (
                "batch: only list results change",
                vec![json!(2)],
                json!([list_result(json!(2), &["c", "a"]), {"jsonrpc": "2.0", "id": 3, "result": {"content": []}}]),
                vec![vec!["a"]],
            ),
            (
                "tools under another id are filtered too",
                vec![json!(1)],
                list_result(json!(9), &["b", "c"]),
                vec![vec!["b"]],
            ),
        ];
        for (name, ids, body, want) in cases {
            let mut f = ListFilter::new(Framing::Json, tools(ids), 1 << 20);
            let text = body.to_string();
            let (a, b) = text.as_bytes().split_at(text.len() / 2);
            let out: Value = serde_json::from_slice(&run(&mut f, &[a, b]).unwrap()).unwrap();
            let got: Vec<Vec<String>> = match &out {
                Value::Array(items) => items
                    .iter()
                    .filter(|m| m["result"].get("tools").is_some())
                    .map(names)
                    .collect(),
                m => vec![names(m)],
            };
            assert_eq!(got, want, "{name}");
            assert!(
                out.to_string().contains("nextCursor"),
                "{name}: other fields kept"
            );
        }
    }

    #[test]
    fn json_passes_what_is_not_a_list() {
        let cases = [
            (
                "call result",
                r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"x"}]}}"#,
            ),
            (
                "error for the list id",
                r#"{"jsonrpc":"2.0","id":5,"error":{"code":-1,"message":"no"}}"#,
            ),
        ];
        for (name, body) in cases {
            let mut f = ListFilter::new(Framing::Json, tools(vec![json!(5)]), 1 << 20);
            assert_eq!(
                run(&mut f, &[body.as_bytes()]).unwrap(),
                body.as_bytes(),
                "{name}"
            );
        }
        // No list requested and no body: nothing to do.
        let mut f = ListFilter::new(Framing::Json, tools(vec![]), 1 << 20);
        assert_eq!(run(&mut f, &[b""]).unwrap(), b"");
    }

    #[test]
    fn json_failures_close() {
        let cases: Vec<(&str, Vec<u8>, usize, &str)> = vec![
            ("not json", b"<html>".to_vec(), 1 << 20, "cannot be read"),
            ("owed list missing", b"".to_vec(), 1 << 20, "cannot be read"),
            (
                "list without tools",
                br#"{"jsonrpc":"2.0","id":1,"result":{}}"#.to_vec(),
                1 << 20,
                "without a `tools` array",
            ),
            (
                "tools not an array",
                br#"{"jsonrpc":"2.0","id":1,"result":{"tools":{}}}"#.to_vec(),
                1 << 20,
                "without a `tools` array",
            ),
            (
                "tool without name",
                br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"title":"x"}]}}"#.to_vec(),
                1 << 20,
                "without a string `name`",
            ),
            (
                "duplicate tools key",
                br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[],"tools":[{"name":"c"}]}}"#
                    .to_vec(),
                1 << 20,
                "repeats a key",
            ),
            // A client that matches names ignoring case (Go's `encoding/json`) reads each of
            // these as a list the filter never saw.
            (
                "result spelt in another case",
                br#"{"jsonrpc":"2.0","id":1,"Result":{"tools":[{"name":"c"}]}}"#.to_vec(),
                1 << 20,
                "`result` spelt in another case",
            ),
            (
                "result twice, in two cases",
                br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]},"RESULT":{"tools":[{"name":"c"}]}}"#.to_vec(),
                1 << 20,
                "`result` spelt in another case",
            ),
            (
                "an unasked answer in another case",
                br#"{"jsonrpc":"2.0","id":9,"resulT":{"tools":[{"name":"c"}]}}"#.to_vec(),
                1 << 20,
                "`result` spelt in another case",
            ),
            (
                "id spelt in another case",
                br#"{"jsonrpc":"2.0","ID":1,"result":{"tools":[{"name":"a"}]}}"#.to_vec(),
                1 << 20,
                "`id` spelt in another case",
            ),
            (
                "the list spelt in another case",
                br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[],"Tools":[{"name":"c"}]}}"#.to_vec(),
                1 << 20,
                "`tools` spelt in another case",
            ),
            (
                "an item's name spelt in another case",
                br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a","Name":"c"}]}}"#.to_vec(),
                1 << 20,
                "`name` spelt in another case",
            ),
            (
                "too large",
                list_result(json!(1), &["a"; 100]).to_string().into_bytes(),
                1024,
                "exceeds",
            ),
        ];
        for (name, body, cap, needle) in cases {
            let mut f = ListFilter::new(Framing::Json, tools(vec![json!(1)]), cap);
            let err = run(&mut f, &[&body]).expect_err(name);
            assert!(err.to_string().contains(needle), "{name}: {err}");
        }
    }

    /// Refusals name nothing the server wrote: the text reaches the agent without the echo
    /// scrubber (a server may echo a substituted secret as a member name).
    #[test]
    fn a_refusal_quotes_no_member_name_of_the_response() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[],"sk-live-SECRET":1,"sk-live-SECRET":2}}"#,
            r#"{"jsonrpc":"2.0","id":1,"sk-live-SECRET":{},"result":{"tools":[{"name":"a","sk-live-SECRET":1,"sk-live-SECRET":1}]}}"#,
        ] {
            let mut f = ListFilter::new(Framing::Json, tools(vec![json!(1)]), 1 << 20);
            let err = run(&mut f, &[body.as_bytes()]).expect_err(body);
            assert!(!err.to_string().contains("SECRET"), "{err}");
            let ended = String::from_utf8(f.error_message(&err)).unwrap();
            assert!(!ended.contains("SECRET"), "{ended}");
        }
    }

    /// An answer listing more than [`MAX_LIST_ITEMS`] items (in one JSON body, batch included,
    /// or in one event) is withheld before any item is decided; at the limit it is filtered.
    #[test]
    fn an_answer_listing_too_many_items_is_withheld_undecided() {
        let owned: Vec<String> = (0..=MAX_LIST_ITEMS).map(|i| format!("t{i}")).collect();
        let listed: Vec<&str> = owned.iter().map(String::as_str).collect();
        let over = list_result(json!(1), &listed).to_string();
        let half = list_result(json!(1), &listed[..MAX_LIST_ITEMS / 2 + 1]);
        let batch = json!([half, half]).to_string();
        let event = format!("event: message\ndata: {over}\n\n");
        for (framing, body) in [
            (Framing::Json, over.as_str()),
            (Framing::Json, batch.as_str()),
            (Framing::Sse, event.as_str()),
        ] {
            let mut f = ListFilter::new(framing, tools(vec![json!(1)]), 1 << 24);
            let mut asked = 0;
            let mut allowed = |_: ItemKind, _: &str| {
                asked += 1;
                true
            };
            let err = f.feed(body.as_bytes(), true, &mut allowed).unwrap_err();
            assert_eq!(err, FilterError::TooManyItems, "{framing:?}");
            assert_eq!(asked, 0, "{framing:?}");
        }
        let at = list_result(json!(1), &listed[..MAX_LIST_ITEMS]).to_string();
        let mut f = ListFilter::new(Framing::Json, tools(vec![json!(1)]), 1 << 24);
        let out = run(&mut f, &[at.as_bytes()]).unwrap();
        let kept: Value = serde_json::from_slice(&out).unwrap();
        assert!(names(&kept).is_empty());
        assert_eq!(f.hidden.tools, MAX_LIST_ITEMS as u64);
    }

    /// A resource listed by a URI an agent could not ask for (see [`super::super::uri`]) is
    /// hidden without a decision: the policy would decide other text than a client reads.
    #[test]
    fn resources_listed_by_uris_parsers_rewrite_are_hidden() {
        let body = json!({"jsonrpc": "2.0", "id": 1, "result": {"resources": [
            {"uri": "file:///srv/ok"},
            {"uri": "file:///srv/data/x\\..\\..\\etc/passwd"},
            {"uri": "file:///e\ttc/passwd"},
            {"uri": " file:///etc/passwd"},
        ]}});
        let (kept, asked, hidden) = filter_resources(&body);
        assert_eq!(kept, json!([{"uri": "file:///srv/ok"}]));
        assert_eq!(asked, ["file:///srv/ok"]);
        assert_eq!(hidden, 3);
    }

    /// A `resources/list` answer to request 1 through a filter that allows every resource it
    /// asks about: what is kept, what it asked about, how many it hid.
    fn filter_resources(body: &Value) -> (Value, Vec<String>, u64) {
        let mut f = ListFilter::new(
            Framing::Json,
            vec![(json!(1), ListKind::Resources)],
            1 << 20,
        );
        let mut asked = Vec::new();
        let mut allowed = |_: ItemKind, name: &str| {
            asked.push(name.to_string());
            true
        };
        let out = f
            .feed(body.to_string().as_bytes(), true, &mut allowed)
            .unwrap();
        let kept: Value = serde_json::from_slice(&out).unwrap();
        let hidden = f.hidden.resources;
        (kept["result"]["resources"].clone(), asked, hidden)
    }

    /// A listed resource is decided as a client's URL parser reads its URI, and listed as the
    /// server wrote it.
    #[test]
    fn listed_resources_are_decided_as_url_parsers_read_them() {
        let body = json!({"jsonrpc": "2.0", "id": 1, "result": {"resources": [
            {"uri": "https://INTERNAL.example:443/secret"},
        ]}});
        let (kept, asked, _) = filter_resources(&body);
        assert_eq!(asked, ["https://internal.example/secret"]);
        assert_eq!(
            kept,
            json!([{"uri": "https://INTERNAL.example:443/secret"}])
        );
    }

    #[test]
    fn sse_events_filtered_one_by_one() {
        let list = list_result(json!(1), &["c", "a", "b"]).to_string();
        let note = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#;
        let stream = format!(": ping\r\n\r\nevent: message\r\nid: 7\r\ndata: {note}\r\n\r\nevent: message\r\ndata: {list}\r\n\r\n");
        // Split at every byte boundary class: whole, and in 3-byte chunks.
        for size in [stream.len(), 3] {
            let mut f = ListFilter::new(Framing::Sse, tools(vec![json!(1)]), 1 << 20);
            let chunks: Vec<&[u8]> = stream.as_bytes().chunks(size).collect();
            let out = String::from_utf8(run(&mut f, &chunks).unwrap()).unwrap();
            assert!(
                out.starts_with(&format!(
                    ": ping\r\n\r\nevent: message\r\nid: 7\r\ndata: {note}\r\n\r\n"
                )),
                "{out}"
            );
            let last = out.rsplit("data: ").next().unwrap().trim();
            let v: Value = serde_json::from_str(last).unwrap();
            assert_eq!(names(&v), ["a", "b"]);
            assert!(out.ends_with("\r\n\r\n"));
            assert_eq!(f.hidden.tools, 1);
        }
    }

    #[test]
    fn sse_multiline_data_and_lf_endings() {
        let list = serde_json::to_string_pretty(&list_result(json!("q"), &["b", "zz"])).unwrap();
        let data: String = list.lines().map(|l| format!("data:{l}\n")).collect();
        let stream = format!("event: message\n{data}\n");
        let mut f = ListFilter::new(Framing::Sse, tools(vec![json!("q")]), 1 << 20);
        let out = String::from_utf8(run(&mut f, &[stream.as_bytes()]).unwrap()).unwrap();
        // The filtered data keeps the server's line breaks, one `data` line each.
        let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines[0], "event: message", "{out}");
        let data: Vec<&str> = lines[1..]
            .iter()
            .map(|l| l.strip_prefix("data: ").unwrap())
            .collect();
        assert!(data.len() > 1, "{out}");
        let v: Value = serde_json::from_str(&data.join("\n")).unwrap();
        assert_eq!(names(&v), ["b"]);
    }

    #[test]
    fn a_legacy_endpoint_event_passes_only_toward_the_servers_path() {
        // The session it names is sealed for the workload; the rest of the event is kept.
        let stream = "id: 7\r\nevent: endpoint\r\ndata: /mcp/messages?v=2&session_id=ab12\r\n\r\n";
        let mut f =
            ListFilter::new(Framing::Sse, Vec::new(), 1 << 20).with_endpoint("/mcp", sealer());
        let out = String::from_utf8(run(&mut f, &[stream.as_bytes()]).unwrap()).unwrap();
        let sealed = sealer().binding().seal("ab12");
        assert_eq!(
            out,
            format!(
                "id: 7\r\nevent: endpoint\r\ndata: /mcp/messages?v=2&session_id={sealed}\r\n\r\n"
            )
        );
        // A URL without a session is passed as it is.
        let stream = "event: endpoint\ndata: /mcp/messages\n\n";
        let mut f =
            ListFilter::new(Framing::Sse, Vec::new(), 1 << 20).with_endpoint("/mcp", sealer());
        assert_eq!(
            run(&mut f, &[stream.as_bytes()]).unwrap(),
            stream.as_bytes()
        );
        for (name, data, prefix) in [
            (
                "outside the prefix",
                "/messages?session_id=ab12",
                Some("/mcp"),
            ),
            (
                "another host",
                "http://elsewhere.example/mcp/messages",
                Some("/mcp"),
            ),
            ("scheme-relative", "//elsewhere.example/mcp/m", Some("/mcp")),
            (
                "relative to the stream",
                "messages?session_id=1",
                Some("/mcp"),
            ),
            ("no prefix known", "/mcp/messages", None),
        ] {
            let stream = format!("event: endpoint\ndata: {data}\n\n");
            let mut f = ListFilter::new(Framing::Sse, Vec::new(), 1 << 20);
            if let Some(p) = prefix {
                f = f.with_endpoint(p, sealer());
            }
            assert!(run(&mut f, &[stream.as_bytes()]).is_err(), "{name}");
        }
        // An `event` line naming it something else afterwards makes it that event, read as
        // JSON-RPC: filtered (here, refused as not JSON), never passed as an endpoint.
        let mut f = ListFilter::new(Framing::Sse, Vec::new(), 1 << 20).with_endpoint("/", sealer());
        assert!(run(
            &mut f,
            &[b"event: endpoint\nevent: message\ndata: /messages?s=1\n\n"]
        )
        .is_err());
        // Two data lines are not one path.
        let mut f = ListFilter::new(Framing::Sse, Vec::new(), 1 << 20).with_endpoint("/", sealer());
        assert!(run(&mut f, &[b"event: endpoint\ndata: /m\ndata: {}\n\n"]).is_err());
        // Under `/`, every path is the server's.
        let mut f = ListFilter::new(Framing::Sse, Vec::new(), 1 << 20).with_endpoint("/", sealer());
        assert!(run(&mut f, &[b"event: endpoint\ndata: /messages?s=1\n\n"]).is_ok());
    }

    #[test]
    fn sse_failures_close() {
        let cases: Vec<(&str, String, usize)> = vec![
            ("data not json", "data: hello\n\n".into(), 1 << 20),
            (
                "unfinished event at the end",
                "data: {\"jsonrpc\"".into(),
                1 << 20,
            ),
            (
                "event over the cap",
                format!("data: {}", "x".repeat(2048)),
                1024,
            ),
            (
                "list without tools",
                "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n".into(),
                1 << 20,
            ),
            // What an event-stream reader takes as a list in a `data:` line, behind a comment
            // ended by a bare CR, or behind a leading byte order mark.
            (
                "bare CR line endings",
                format!(": c\rdata: {}\r\r", list_result(json!(1), &["a", "wipe"])),
                1 << 20,
            ),
            (
                "a bare CR inside an LF-framed event",
                format!(": c\rdata: {}\n\n", list_result(json!(1), &["a", "wipe"])),
                1 << 20,
            ),
            (
                "a leading byte order mark",
                format!(
                    "\u{feff}data: {}\n\n",
                    list_result(json!(1), &["a", "wipe"])
                ),
                1 << 20,
            ),
        ];
        for (name, stream, cap) in cases {
            let mut f = ListFilter::new(Framing::Sse, tools(vec![json!(1)]), cap);
            let chunks: Vec<&[u8]> = stream.as_bytes().chunks(512).collect();
            assert!(run(&mut f, &chunks).is_err(), "{name}");
        }
    }

    /// A long event stream of new names keeps a bounded number of decisions.
    #[test]
    fn the_decisions_kept_are_bounded() {
        let answers = MAX_DECISIONS / MAX_LIST_ITEMS;
        let ids: Vec<Value> = (0..answers).map(|i| json!(i)).collect();
        let mut f = ListFilter::new(Framing::Sse, tools(ids), 1 << 20);
        let mut allowed = |_: ItemKind, _: &str| true;
        for event in 0..answers {
            let names: Vec<String> = (0..MAX_LIST_ITEMS)
                .map(|k| format!("t{event}-{k}"))
                .collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let text = format!(
                "event: message\ndata: {}\n\n",
                list_result(json!(event), &names)
            );
            f.feed(text.as_bytes(), false, &mut allowed).unwrap();
            assert!(f.decided.len() <= MAX_DECIDED, "{}", f.decided.len());
        }
        // Kept names are bounded in bytes too: 300 URIs of 8 KiB, each its own answer.
        let mut f = ListFilter::new(Framing::Sse, Vec::new(), 1 << 20);
        for i in 0..300 {
            let uri = format!("file:///{i}/{}", "a".repeat(8000));
            let body = json!({"jsonrpc": "2.0", "id": i, "result": {"resources": [{"uri": uri}]}});
            let text = format!("event: message\ndata: {body}\n\n");
            f.feed(text.as_bytes(), false, &mut allowed).unwrap();
            assert!(f.decided_bytes <= MAX_DECIDED_BYTES, "{}", f.decided_bytes);
        }
    }

    /// A name no request could name (past the request side's bounds) is hidden without a
    /// decision and kept nowhere.
    #[test]
    fn a_name_no_request_could_name_is_hidden_undecided() {
        let long = "a".repeat(257);
        let uri = format!("file:///{}", "a".repeat(8 * 1024));
        let body = json!([
            {"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": long}, {"name": "a"}]}},
            {"jsonrpc": "2.0", "id": 2, "result": {"resources": [{"uri": uri}, {"uri": "file:///ok"}]}},
        ]);
        let mut f = ListFilter::new(Framing::Json, Vec::new(), 1 << 20);
        let mut asked = Vec::new();
        let mut allowed = |_: ItemKind, name: &str| {
            asked.push(name.to_string());
            true
        };
        let out = f
            .feed(body.to_string().as_bytes(), true, &mut allowed)
            .unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out[0]["result"]["tools"], json!([{"name": "a"}]));
        assert_eq!(
            out[1]["result"]["resources"],
            json!([{"uri": "file:///ok"}])
        );
        assert_eq!(asked, ["a", "file:///ok"]);
        assert_eq!((f.hidden.tools, f.hidden.resources), (1, 1));
        assert_eq!(f.decided.len(), 2);
    }

    /// A stream may carry answers for as long as it lasts: past [`MAX_DECISIONS`] distinct
    /// items in all, the rest of it is withheld.
    #[test]
    fn the_decisions_one_response_takes_are_bounded() {
        let mut f = ListFilter::new(Framing::Sse, Vec::new(), 1 << 20);
        let mut decided = 0;
        let mut allowed = |_: ItemKind, _: &str| {
            decided += 1;
            true
        };
        let mut refused = None;
        for event in 0..=MAX_DECISIONS / MAX_LIST_ITEMS {
            let names: Vec<String> = (0..MAX_LIST_ITEMS)
                .map(|k| format!("t{event}-{k}"))
                .collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let text = format!("data: {}\n\n", list_result(json!(event), &names));
            if let Err(e) = f.feed(text.as_bytes(), false, &mut allowed) {
                refused = Some((event, e));
                break;
            }
        }
        assert_eq!(
            refused,
            Some((
                MAX_DECISIONS / MAX_LIST_ITEMS,
                FilterError::TooManyDecisions
            ))
        );
        assert_eq!(decided, MAX_DECISIONS);
    }

    /// Events are read where they stand: a stream of many empty events, and one long
    /// event that comes a kilobyte at a time, are each read once (a copy of each event and the
    /// rest moved down after it, and a rescan of the unfinished event per chunk, made both
    /// quadratic: seconds of a shared worker).
    #[test]
    fn events_are_read_in_place_and_once() {
        let list = format!("data: {}\n\n", list_result(json!(1), &["a", "c"]));
        let mut stream = "\n".repeat(256 << 10);
        stream.push_str(&list);
        let mut f = ListFilter::new(Framing::Sse, tools(vec![json!(1)]), 1 << 20);
        let out = run(&mut f, &[stream.as_bytes()]).unwrap();
        assert_eq!(&out[..256 << 10], "\n".repeat(256 << 10).as_bytes());
        assert_eq!(f.hidden.tools, 1);
        // One long event (a comment line of 4 MiB, then the list), a kilobyte at a time.
        let mut event = format!(": {}\n", "x".repeat(4 << 20));
        event.push_str(&list);
        let mut f = ListFilter::new(Framing::Sse, tools(vec![json!(1)]), 8 << 20);
        let chunks: Vec<&[u8]> = event.as_bytes().chunks(1024).collect();
        let out = run(&mut f, &chunks).unwrap();
        assert!(out.ends_with(b"\n\n"));
        assert_eq!(f.hidden.tools, 1);
    }

    #[test]
    fn each_tool_is_decided_once() {
        let mut asked = Vec::new();
        let mut allowed = |_: ItemKind, n: &str| {
            asked.push(n.to_string());
            true
        };
        let body = json!([
            list_result(json!(1), &["a", "b"]),
            list_result(json!(2), &["a", "b"])
        ])
        .to_string();
        let mut f = ListFilter::new(Framing::Json, tools(vec![json!(1), json!(2)]), 1 << 20);
        f.feed(body.as_bytes(), true, &mut allowed).unwrap();
        assert_eq!(asked, ["a", "b"]);
    }

    #[test]
    fn error_message_answers_the_list() {
        let f = ListFilter::new(Framing::Sse, tools(vec![json!("l-1")]), 1024);
        let text = String::from_utf8(f.error_message(&FilterError::TooLarge(1024))).unwrap();
        let v: Value = serde_json::from_str(
            text.trim()
                .strip_prefix("event: message\r\ndata: ")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(v["id"], "l-1");
        assert_eq!(v["error"]["code"], -32603);
        assert_eq!(
            Framing::for_content_type(b"application/json; charset=utf-8"),
            Some(Framing::Json)
        );
        assert_eq!(
            Framing::for_content_type(b"Text/Event-Stream"),
            Some(Framing::Sse)
        );
        assert_eq!(Framing::for_content_type(b"text/plain"), None);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(256)))]

            #[test]
            fn fuzz_filtered_list_is_exactly_the_allowed_subset(
                listed in proptest::collection::vec(prop_oneof![Just("a".to_string()), Just("b".to_string()), any::<String>()], 0..10),
                split in 0usize..4096,
            ) {
                let refs: Vec<&str> = listed.iter().map(String::as_str).collect();
                let body = format!("event: message\ndata: {}\n\n", list_result(json!(1), &refs));
                let cut = split.min(body.len());
                let mut f = ListFilter::new(Framing::Sse, tools(vec![json!(1)]), 1 << 20);
                let out = run(&mut f, &[&body.as_bytes()[..cut], &body.as_bytes()[cut..]]).unwrap();
                let out = String::from_utf8(out).unwrap();
                let data = out.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                let v: Value = serde_json::from_str(data).unwrap();
                let want: Vec<String> = listed.iter().filter(|t| only_a_and_b(ItemKind::Tool, t)).cloned().collect();
                prop_assert_eq!(names(&v), want);
            }

            #[test]
            fn fuzz_arbitrary_streams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let mut f = ListFilter::new(Framing::Sse, tools(vec![json!(1)]), 1024);
                let _ = run(&mut f, &[&bytes]);
                let mut f = ListFilter::new(Framing::Json, tools(vec![json!(1)]), 1024);
                let _ = run(&mut f, &[&bytes]);
            }
        }
    }

    #[test]
    fn resources_templates_and_prompts_are_filtered_by_their_own_names() {
        let body = json!([
            {"jsonrpc": "2.0", "id": "r", "result": {"resources": [
                {"uri": "docs://public/a", "name": "a"}, {"uri": "docs://secret/b", "name": "b"}
            ]}},
            {"jsonrpc": "2.0", "id": "rt", "result": {"resourceTemplates": [
                {"uriTemplate": "docs://public/{x}", "name": "t1"}, {"uriTemplate": "docs://secret/{x}", "name": "t2"}
            ]}},
            {"jsonrpc": "2.0", "id": "p", "result": {"prompts": [
                {"name": "summarize"}, {"name": "exfiltrate"}
            ]}},
            {"jsonrpc": "2.0", "id": "t", "result": {"tools": [{"name": "docs://public/a"}]}},
        ])
        .to_string();
        let ids = vec![
            (json!("r"), ListKind::Resources),
            (json!("rt"), ListKind::ResourceTemplates),
            (json!("p"), ListKind::Prompts),
            (json!("t"), ListKind::Tools),
        ];
        let mut asked = Vec::new();
        let mut allowed = |kind: ItemKind, name: &str| {
            asked.push((kind, name.to_string()));
            match kind {
                ItemKind::Resource => name.starts_with("docs://public/"),
                ItemKind::Prompt => name == "summarize",
                // A tool is not a resource, whatever it is called.
                ItemKind::Tool => false,
            }
        };
        let mut f = ListFilter::new(Framing::Json, ids, 1 << 20);
        let out: Value =
            serde_json::from_slice(&f.feed(body.as_bytes(), true, &mut allowed).unwrap()).unwrap();
        assert_eq!(
            out[0]["result"]["resources"],
            json!([{"uri": "docs://public/a", "name": "a"}])
        );
        assert_eq!(
            out[1]["result"]["resourceTemplates"],
            json!([{"uriTemplate": "docs://public/{x}", "name": "t1"}])
        );
        assert_eq!(out[2]["result"]["prompts"], json!([{"name": "summarize"}]));
        assert_eq!(out[3]["result"]["tools"], json!([]));
        assert_eq!(
            f.hidden,
            Hidden {
                tools: 1,
                resources: 2,
                prompts: 1
            }
        );
        assert!(asked.contains(&(ItemKind::Tool, "docs://public/a".to_string())));
        // A resources list whose items lack a URI, or owed and missing, cannot be filtered.
        for bad in [
            json!({"jsonrpc": "2.0", "id": "r", "result": {"resources": [{"name": "no uri"}]}}),
            json!({"jsonrpc": "2.0", "id": "r", "result": {}}),
            json!({"jsonrpc": "2.0", "id": 9, "result": {"prompts": {"name": "x"}}}),
        ] {
            let mut f = ListFilter::new(
                Framing::Json,
                vec![(json!("r"), ListKind::Resources)],
                1 << 20,
            );
            assert!(
                f.feed(bad.to_string().as_bytes(), true, &mut |_, _| true)
                    .is_err(),
                "{bad}"
            );
        }
    }

    /// A filtered answer is the server's text with only the arrays that lost items written
    /// anew: its spacing, its members' order and spelling, and the kept items, byte for byte.
    #[test]
    fn a_filtered_answer_keeps_every_other_byte() {
        let body = concat!(
            "[ {\"jsonrpc\": \"2.0\", \"id\": 1,\n  \"result\": { \"nextCursor\": \"x\\u0041\",",
            " \"tools\": [ {\"name\":\"a\", \"n\": 1.50},\n {\"name\": \"c\"} , {\"name\":\"b\",",
            "\"inputSchema\": {\"type\": \"object\"}} ] } },\n",
            "  {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"tools\":[ {\"name\":\"a\"} ]}} ]"
        );
        let mut f = ListFilter::new(Framing::Json, tools(vec![json!(1), json!(2)]), 1 << 20);
        let out = String::from_utf8(run(&mut f, &[body.as_bytes()]).unwrap()).unwrap();
        let want = concat!(
            "[ {\"jsonrpc\": \"2.0\", \"id\": 1,\n  \"result\": { \"nextCursor\": \"x\\u0041\",",
            " \"tools\": [{\"name\":\"a\", \"n\": 1.50},{\"name\":\"b\",",
            "\"inputSchema\": {\"type\": \"object\"}}] } },\n",
            "  {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"tools\":[ {\"name\":\"a\"} ]}} ]"
        );
        assert_eq!(out, want);
        assert_eq!(f.hidden.tools, 1);
        // All allowed: the answer passes as it came.
        let mut f = ListFilter::new(Framing::Json, tools(vec![json!(1)]), 1 << 20);
        let kept = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[ {"name":"a"}, {"name":"b"} ]}}"#;
        assert_eq!(run(&mut f, &[kept.as_bytes()]).unwrap(), kept.as_bytes());
    }

    /// An answer is read without a tree of it: 8 MiB of `[[],[],…]` in a call's result, or in
    /// a listed tool's schema, took about 30 times its size before (every JSON answer was
    /// parsed whole, since a list may hide in any `result`). Measured as the growth of the
    /// peak resident memory of a process of its own; the body held and the filtered copy are
    /// about twice the body.
    #[test]
    fn answers_are_read_without_a_tree_of_them() {
        if !crate::in_own_process(
            "mcp::list_filter::tests::answers_are_read_without_a_tree_of_them",
        ) {
            return;
        }
        let filler = |body: &mut String, item: &str| {
            body.push_str(item);
            while body.len() < 8 << 20 {
                body.push(',');
                body.push_str(item);
            }
        };
        // The first large buffers raise the peak by about their size whatever they hold.
        let warm = format!(
            r#"{{"jsonrpc":"2.0","id":1,"result":{{"text":"{}"}}}}"#,
            "a".repeat(8 << 20)
        );
        let mut f = ListFilter::new(Framing::Json, tools(vec![]), 16 << 20);
        run(&mut f, &[warm.as_bytes()]).unwrap();
        drop(warm);
        // One event of short lines: each line held a slice in two vectors (about 18 times
        // the event).
        let mut event = String::with_capacity(9 << 20);
        while event.len() < 8 << 20 {
            event.push_str("a\n");
        }
        event.push_str(&format!("data: {}\n\n", list_result(json!(1), &["a", "c"])));
        let mut f = ListFilter::new(Framing::Sse, tools(vec![json!(1)]), 16 << 20);
        let before = crate::peak_resident_bytes();
        run(&mut f, &[event.as_bytes()]).unwrap();
        let grown = crate::peak_resident_bytes() - before;
        assert_eq!(f.hidden.tools, 1);
        assert!(
            grown < 4 * event.len() as u64,
            "an event of short lines: filtering {} bytes took {grown} bytes more at its peak",
            event.len()
        );
        drop(event);
        for (case, item, listed) in [
            ("a call's result", "[]", false),
            ("a call's result", "{}", false),
            ("a listed tool's schema", "[]", true),
            ("a listed tool's schema", "1", true),
        ] {
            let mut body = String::with_capacity(9 << 20);
            if listed {
                body.push_str(r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"c"},{"name":"a","inputSchema":["#);
                filler(&mut body, item);
                body.push_str("]}]}}");
            } else {
                body.push_str(r#"{"jsonrpc":"2.0","id":1,"result":{"content":["#);
                filler(&mut body, item);
                body.push_str("]}}");
            }
            let mut f = ListFilter::new(Framing::Json, tools(vec![json!(7)]), 16 << 20);
            let before = crate::peak_resident_bytes();
            let out = run(&mut f, &[body.as_bytes()]).unwrap();
            let grown = crate::peak_resident_bytes() - before;
            assert!(
                grown < 3 * body.len() as u64,
                "{case} of {item}: filtering a {}-byte answer took {grown} bytes more at its peak",
                body.len()
            );
            if listed {
                assert_eq!(f.hidden.tools, 1, "{case}");
                assert!(
                    out.starts_with(br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a","#)
                );
            } else {
                assert_eq!(out, body.as_bytes(), "{case}");
            }
        }
    }
}
