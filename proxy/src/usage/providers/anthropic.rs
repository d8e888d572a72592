//! Anthropic messages: `usage.input_tokens`, `output_tokens`, and the prompt cache's
//! `cache_read_input_tokens` and `cache_creation_input_tokens` (both counted apart from
//! `input_tokens`; writes for the one-hour cache in `cache_creation.ephemeral_1h_input_tokens`),
//! in the JSON body or, streamed, in `message_start`'s `message` and the cumulative
//! `message_delta` (streams report usage unasked); and the web searches the server tool ran,
//! `server_tool_use.web_search_requests`, billed each.
//!
//! The same API on Vertex AI: `…/publishers/anthropic/models/{model}:rawPredict` and
//! `:streamRawPredict`, the model in the path (`claude-sonnet-4@20250514`), the body and the
//! response Anthropic's.

use serde_json::Value;

use super::request::EACH;
use super::{count, CallPath, Generated, KeyPositions, Provider, RequestFields};
use crate::usage::Usage;

/// Anthropic messages (`/v1/messages`, and Claude on Vertex AI).
#[derive(Debug, Clone, Copy)]
pub struct Anthropic;

/// Vertex AI's path to an Anthropic model, and its operations (lowercase).
const VERTEX_MODELS: &str = "/publishers/anthropic/models/";
const VERTEX_OPERATIONS: &[&str] = &[":rawpredict", ":streamrawpredict"];

const FIELDS: RequestFields = RequestFields {
    // A Message Batch names a model in each of its requests (`requests[].params.model`): each
    // is one of the call's models, decided by policy as any other.
    model: &[&["model"], &["requests", EACH, "params", "model"]],
    ceilings: &[&["max_tokens"]],
};

const KEY_POSITIONS: KeyPositions = KeyPositions {
    headers: &["x-api-key", "authorization"],
    query: &[],
    body: &["api_key", "anthropic_api_key"],
};

impl Provider for Anthropic {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    fn default_hosts(&self) -> &'static [&'static str] {
        &["api.anthropic.com"]
    }

    fn is_call(&self, path: &CallPath<'_>) -> bool {
        path.ends_with("/v1/messages")
            || (path.contains(VERTEX_MODELS)
                && VERTEX_OPERATIONS.iter().any(|op| path.ends_with(op)))
    }

    fn model_from_path(&self, path: &str) -> Option<String> {
        // Asked of every request's path: only one that may name Vertex AI's Anthropic models is
        // copied to find out.
        let path = super::routed(path, VERTEX_MODELS)?;
        let (head, op) = path.rsplit_once(':')?;
        let op = format!(":{op}");
        if !VERTEX_OPERATIONS.iter().any(|o| op.eq_ignore_ascii_case(o)) {
            return None;
        }
        let at = super::find_ignore_case(head, VERTEX_MODELS, true)? + VERTEX_MODELS.len();
        let model = &head[at..];
        (!model.is_empty() && !model.contains('/')).then(|| model.to_string())
    }

    fn unmetered_work(&self, path: &CallPath<'_>) -> Option<&'static str> {
        path.ends_with("/v1/messages/batches")
            .then_some("a message batch")
    }

    fn request_fields(&self) -> &'static RequestFields {
        &FIELDS
    }

    fn key_positions(&self) -> &'static KeyPositions {
        &KEY_POSITIONS
    }

    fn usage_from_json(&self, body: &Value, acc: &mut Option<Usage>) {
        fold(body, acc);
    }

    fn usage_members(&self) -> &'static [&'static str] {
        &["message", "usage"]
    }

    fn usage_from_event(&self, event: &Value, acc: &mut Option<Usage>) {
        fold(event, acc);
    }

    /// `content_block_delta` events: text, tool input JSON, thinking; and each web search, a
    /// `content_block_start` of a `server_tool_use` block calling `web_search`.
    fn count_generated(&self, event: &Value, generated: &mut Generated) {
        let kind = event.get("type").and_then(Value::as_str);
        if kind == Some("content_block_start") {
            let block = event.get("content_block");
            let field = |f: &str| block.and_then(|b| b.get(f)).and_then(Value::as_str);
            if field("type") == Some("server_tool_use") && field("name") == Some("web_search") {
                generated.hosted_calls.web_searches += 1;
            }
            return;
        }
        if kind != Some("content_block_delta") {
            return;
        }
        // Every kind of delta (text, tool input JSON, thinking, and any other), not its type,
        // a thinking block's signature, or a citation (text quoted from the input).
        generated.add_all(event.get("delta"), &["type", "signature", "citation"]);
    }
}

fn fold(v: &Value, acc: &mut Option<Usage>) {
    // A stream reports input usage in `message_start.message.usage`.
    let v = v
        .get("message")
        .filter(|m| m.get("usage").is_some())
        .unwrap_or(v);
    let Some(u) = v.get("usage").filter(|u| u.is_object()) else {
        return;
    };
    // An empty or unreadable report (`{}`, a negative or fractional count) is none.
    let (Ok(input), Ok(output), Ok(read), Ok(written), Ok(long), Ok(searches)) = (
        count(u, &["input_tokens"]),
        count(u, &["output_tokens"]),
        count(u, &["cache_read_input_tokens"]),
        count(u, &["cache_creation_input_tokens"]),
        count(u, &["cache_creation", "ephemeral_1h_input_tokens"]),
        count(u, &["server_tool_use", "web_search_requests"]),
    ) else {
        return;
    };
    if [input, output, read, written, searches]
        .iter()
        .all(Option::is_none)
    {
        return;
    }
    let entry = acc.get_or_insert_with(Usage::default);
    if let Some(n) = output {
        entry.output_tokens = n;
    }
    // Cumulative, like the output: a later report of it stands.
    if let Some(n) = searches {
        entry.hosted_calls.web_searches = n;
    }
    // Cache reads and writes are counted apart from `input_tokens` (the tokens after the last
    // cache breakpoint): the input is all three. A later event (a stream's `message_delta`)
    // may repeat some of them; what it leaves out stands.
    let base = entry
        .input_tokens
        .saturating_sub(entry.cached_input_tokens)
        .saturating_sub(entry.cache_write_input_tokens);
    // A later event's explicit 0 (compatible servers repeat `input_tokens: 0` and the cache
    // counts as 0 in `message_delta`) takes nothing back from what was already reported.
    let kept = |new: Option<u64>, old: u64| new.filter(|&n| n > 0 || old == 0);
    if let Some(n) = kept(read, entry.cached_input_tokens) {
        entry.cached_input_tokens = n;
    }
    if let Some(n) = kept(written, entry.cache_write_input_tokens) {
        entry.cache_write_input_tokens = n;
    }
    if let Some(n) = kept(long, entry.cache_write_long_input_tokens) {
        entry.cache_write_long_input_tokens = n;
    }
    entry.input_tokens = kept(input, base)
        .unwrap_or(base)
        .saturating_add(entry.cached_input_tokens)
        .saturating_add(entry.cache_write_input_tokens);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A compatible server's `message_delta` that repeats `input_tokens: 0` takes nothing back
    /// from the input `message_start` reported; a first report of 0 with a cache read stands.
    #[test]
    fn a_later_zero_input_takes_nothing_back() {
        let mut acc = None;
        fold(
            &serde_json::json!({"type":"message_start","message":{"usage":{"input_tokens":10,"output_tokens":1}}}),
            &mut acc,
        );
        fold(
            &serde_json::json!({"type":"message_delta","usage":{"input_tokens":0,"output_tokens":200}}),
            &mut acc,
        );
        let u = acc.expect("read");
        assert_eq!((u.input_tokens, u.output_tokens), (10, 200));
        // Nor do zeros of the cache counts (the input is all three).
        let mut acc = None;
        fold(
            &serde_json::json!({"type":"message_start","message":{"usage":{"input_tokens":10,"cache_read_input_tokens":7500,"cache_creation_input_tokens":300,"output_tokens":1}}}),
            &mut acc,
        );
        fold(
            &serde_json::json!({"type":"message_delta","usage":{"input_tokens":0,"cache_read_input_tokens":0,"cache_creation_input_tokens":0,"output_tokens":200}}),
            &mut acc,
        );
        let u = acc.expect("read");
        assert_eq!(
            (
                u.input_tokens,
                u.cached_input_tokens,
                u.cache_write_input_tokens
            ),
            (7810, 7500, 300)
        );
        let mut cached = None;
        fold(
            &serde_json::json!({"usage":{"input_tokens":0,"cache_read_input_tokens":7500,"output_tokens":5}}),
            &mut cached,
        );
        assert_eq!(cached.expect("read").input_tokens, 7500);
    }
    use crate::usage::providers::request;
    use crate::usage::testing::{meter_json, meter_stream, u};
    use crate::usage::HostedCalls;

    /// A stream as Anthropic sends it (shapes from the API reference): pings, a comment line,
    /// text and tool-input deltas, and a `message_delta` whose `data:` spans two lines.
    pub(crate) const STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m1\",\"model\":\"claude\",\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n",
        "event: ping\ndata: {\"type\": \"ping\"}\n\n",
        ": a comment line\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi! My name is Claude.\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\": \\\"San Fra\"}}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\n",
        "data: \"usage\":{\"output_tokens\":15}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    #[test]
    fn usage_from_json_bodies() {
        let cases = [
            (
                "message with cache reads",
                r#"{"type":"message","usage":{"input_tokens":20,"output_tokens":5,"cache_read_input_tokens":10}}"#,
                u(30, 10, 5),
            ),
            (
                "message",
                r#"{"id":"msg_1","type":"message","role":"assistant","content":[],"usage":{"input_tokens":4,"output_tokens":2,"cache_creation_input_tokens":0}}"#,
                u(4, 0, 2),
            ),
            (
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error"}}"#,
                None,
            ),
        ];
        for (name, body, want) in cases {
            assert_eq!(meter_json(&Anthropic, body), want, "{name}");
        }
    }

    /// A stream that ends without its closing `message_delta` (after an `error` event, say)
    /// reported only `message_start`'s placeholder output: the output is what was streamed.
    #[test]
    fn a_stream_that_ends_before_its_final_usage_counts_what_it_streamed() {
        let mut stream = String::from(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\n\n",
        );
        for _ in 0..300 {
            stream.push_str("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"word \"}}\n\n");
        }
        stream.push_str("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
        let mut m = crate::usage::UsageMeter::for_response("text/event-stream", Some(&Anthropic))
            .expect("meterable");
        m.feed(stream.as_bytes());
        assert_eq!(m.finish(), u(20, 0, 600));
    }

    /// Prompt-cache writes are input too (billed above the input price), whether the body or a
    /// stream's `message_start` reports them; the one-hour cache's writes are told apart.
    #[test]
    fn cache_writes_are_input_and_counted_as_writes() {
        let writes = |input, read, written, long, output| {
            Some(Usage {
                input_tokens: input,
                cached_input_tokens: read,
                cache_write_input_tokens: written,
                cache_write_long_input_tokens: long,
                output_tokens: output,
                hosted_calls: Default::default(),
            })
        };
        let body = r#"{"type":"message","usage":{"input_tokens":8,"cache_creation_input_tokens":27000,"cache_read_input_tokens":0,"output_tokens":50}}"#;
        assert_eq!(
            meter_json(&Anthropic, body),
            writes(27_008, 0, 27_000, 0, 50)
        );
        let both = r#"{"type":"message","usage":{"input_tokens":8,"cache_creation_input_tokens":3000,"cache_read_input_tokens":500,"cache_creation":{"ephemeral_5m_input_tokens":1000,"ephemeral_1h_input_tokens":2000},"output_tokens":5}}"#;
        assert_eq!(
            meter_json(&Anthropic, both),
            writes(3_508, 500, 3_000, 2_000, 5)
        );
        // Streamed: `message_start` carries the input side, `message_delta` the output (and,
        // in newer streams, the input side again).
        // A `message_start` reporting `start`, then a `message_delta` reporting `delta`.
        let two_events = |start: &str, delta: &str| {
            format!(
                "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"usage\":{{{start}}}}}}}\n\nevent: message_delta\ndata: {{\"type\":\"message_delta\",\"usage\":{{{delta}}}}}\n\n"
            )
        };
        let start = r#""input_tokens":8,"cache_creation_input_tokens":27000,"output_tokens":1"#;
        let stream = two_events(start, r#""output_tokens":50"#);
        meter_stream(&Anthropic, &stream, writes(27_008, 0, 27_000, 0, 50), 0, 0);
        let repeated = two_events(start, r#""input_tokens":8,"output_tokens":50"#);
        meter_stream(
            &Anthropic,
            &repeated,
            writes(27_008, 0, 27_000, 0, 50),
            0,
            0,
        );
        // The input side split between the events: each count stands, and the input is all.
        let split = two_events(
            r#""input_tokens":50000,"output_tokens":1"#,
            r#""cache_creation_input_tokens":27000,"output_tokens":50"#,
        );
        meter_stream(&Anthropic, &split, writes(77_000, 0, 27_000, 0, 50), 0, 0);
    }

    /// The web search tool's searches (`server_tool_use.web_search_requests`) are counted, in a
    /// body and in a stream, whose `message_delta` reports them cumulatively.
    #[test]
    fn web_searches_are_counted() {
        let searched = |input, output, searches| {
            Some(Usage {
                hosted_calls: HostedCalls {
                    web_searches: searches,
                    file_searches: 0,
                },
                ..u(input, 0, output).unwrap()
            })
        };
        let body = r#"{"type":"message","usage":{"input_tokens":105,"output_tokens":6039,"server_tool_use":{"web_search_requests":2}}}"#;
        assert_eq!(meter_json(&Anthropic, body), searched(105, 6039, 2));
        let stream = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":8,\"output_tokens\":1}}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":20,\"server_tool_use\":{\"web_search_requests\":1}}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":50,\"server_tool_use\":{\"web_search_requests\":3}}}\n\n",
        );
        meter_stream(&Anthropic, stream, searched(8, 50, 3), 0, 0);
        // Each search the stream shows starting counts, whether or not the stream lives to
        // report it: a stream cut before its `message_delta` still ran its searches.
        let search = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"server_tool_use\",\"id\":\"srvtoolu_1\",\"name\":\"web_search\",\"input\":{}}}\n\n";
        let other_tool = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"web_search\",\"input\":{}}}\n\n";
        let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":8,\"output_tokens\":1}}}\n\n";
        let cut = format!("{start}{search}{other_tool}{search}");
        let mut m = crate::usage::UsageMeter::for_response("text/event-stream", Some(&Anthropic))
            .expect("meterable");
        m.feed(cut.as_bytes());
        assert_eq!(m.hosted_calls_seen().web_searches, 2);
        assert_eq!(m.finish(), searched(8, 1, 2));
        // A report of fewer than the stream showed is partial: the searches seen stand.
        let reported = format!(
            "{cut}event: message_delta\ndata: {{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":30,\"server_tool_use\":{{\"web_search_requests\":1}}}}}}\n\n"
        );
        meter_stream(&Anthropic, &reported, searched(8, 30, 2), 0, 0);
        // An unreadable count makes the report none, as any other.
        let bad = r#"{"type":"message","usage":{"input_tokens":1,"output_tokens":1,"server_tool_use":{"web_search_requests":-2}}}"#;
        assert_eq!(meter_json(&Anthropic, bad), None);
    }

    /// A report with nothing readable in it is no report (the call keeps its reservation).
    #[test]
    fn an_unreadable_report_is_none() {
        for body in [
            r#"{"type":"message","usage":{}}"#,
            r#"{"type":"message","usage":{"input_tokens":3,"output_tokens":-1}}"#,
            r#"{"type":"message","usage":{"input_tokens":3,"output_tokens":2.5}}"#,
            r#"{"type":"message","usage":{"input_tokens":"3","output_tokens":2}}"#,
            r#"{"type":"message","usage":{"input_tokens":3,"output_tokens":2,"cache_creation_input_tokens":-5}}"#,
        ] {
            assert_eq!(meter_json(&Anthropic, body), None, "{body}");
        }
    }

    #[test]
    fn a_stream_is_metered_and_estimated_however_it_is_split() {
        // 22 bytes → 6, 24 bytes → 6; a multi-line `data:` carries the final usage.
        let cut = STREAM.find("event: message_delta").expect("usage event");
        meter_stream(&Anthropic, STREAM, u(30, 5, 15), 12, cut);
        let short = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\n: ping\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":42}}\n\n";
        meter_stream(&Anthropic, short, u(11, 0, 42), 0, 0);
    }

    #[test]
    fn model_and_ceiling_fields() {
        let read = request::read_json_with(
            &[&Anthropic],
            br#"{"model":"claude-3-5-sonnet-20241022","max_tokens":1024,"messages":[]}"#,
        )
        .expect("read");
        assert_eq!(read.model.as_deref(), Some("claude-3-5-sonnet-20241022"));
        assert_eq!(read.max_output_tokens, Some(1024));
        assert!(
            request::read_json_with(&[&Anthropic], br#"{"max_tokens":1,"max_tokens":2}"#).is_err()
        );
    }

    #[test]
    fn claude_on_vertex_is_a_call_with_the_model_in_its_path() {
        let base = "/v1/projects/p/locations/us-east5/publishers/anthropic/models";
        for (path, model) in [
            (
                format!("{base}/claude-sonnet-4@20250514:rawPredict"),
                "claude-sonnet-4@20250514",
            ),
            (
                format!("{base}/claude-3-5-haiku%4020241022:streamRawPredict?alt=sse"),
                "claude-3-5-haiku@20241022",
            ),
            (
                format!("{base}/claude-opus-4%3ArawPredict"),
                "claude-opus-4",
            ),
            (
                "/V1/projects/p/locations/l/Publishers/Anthropic/Models/c1:RAWPREDICT".to_string(),
                "c1",
            ),
        ] {
            assert!(CallPath::with(&path, |c| Anthropic.is_call(&c)), "{path}");
            assert_eq!(
                Anthropic.model_from_path(&path).as_deref(),
                Some(model),
                "{path}"
            );
        }
        for not in [
            format!("{base}/claude:predict"),
            format!("{base}/:rawPredict"),
            "/v1/projects/p/locations/l/publishers/mistralai/models/m:rawPredict".to_string(),
            "/v1beta/models/gemini-2.5-flash:generateContent".to_string(),
            "/v1/messages".to_string(),
        ] {
            assert!(Anthropic.model_from_path(&not).is_none(), "{not}");
        }
        assert!(!CallPath::with(&format!("{base}/claude:predict"), |c| {
            Anthropic.is_call(&c)
        }));
        assert!(CallPath::with("/v1/messages", |c| Anthropic.is_call(&c)));
    }
}
