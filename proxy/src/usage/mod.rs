//! LLM usage metering: read token counts from OpenAI (chat completions and the responses API)
//! and Anthropic responses, JSON or SSE, as the response streams through. Nothing is buffered
//! in front of the client: chunks pass on unchanged, and the meter keeps only what it needs
//! (the SSE line in progress, or a bounded copy of a JSON body).

pub mod include_usage;
pub mod sse;

use serde_json::Value;

use sse::SseParser;

/// Largest JSON response body copied for metering.
const MAX_JSON: usize = 2 * 1024 * 1024;

/// Tokens one call used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Prompt / input tokens (including cached ones).
    pub input_tokens: u64,
    /// Input tokens served from the provider's cache.
    pub cached_input_tokens: u64,
    /// Completion / output tokens.
    pub output_tokens: u64,
}

/// How a response is metered.
#[derive(Debug)]
pub enum UsageMeter {
    /// A JSON body, parsed at its end.
    Json {
        /// The copy so far.
        body: Vec<u8>,
        /// The body outgrew the limit; not metered.
        overflow: bool,
    },
    /// An SSE stream, parsed event by event.
    Sse {
        /// The parser.
        parser: SseParser,
        /// Usage seen so far.
        usage: Option<Usage>,
        /// Output tokens estimated from the content deltas streamed so far.
        streamed_estimate: u64,
    },
}

impl UsageMeter {
    /// A meter for a response with this `Content-Type`, or `None` when it cannot carry usage.
    pub fn for_content_type(content_type: &str) -> Option<Self> {
        let ct = content_type.trim_start();
        let is = |p: &str| ct.get(..p.len()).is_some_and(|x| x.eq_ignore_ascii_case(p));
        if is("text/event-stream") {
            Some(UsageMeter::Sse {
                parser: SseParser::default(),
                usage: None,
                streamed_estimate: 0,
            })
        } else if is("application/json") {
            Some(UsageMeter::Json {
                body: Vec::new(),
                overflow: false,
            })
        } else {
            None
        }
    }

    /// Feeds a response body chunk (synchronous: called from the body filter).
    pub fn feed(&mut self, chunk: &[u8]) {
        match self {
            UsageMeter::Json { body, overflow } => {
                if body.len() + chunk.len() > MAX_JSON {
                    *overflow = true;
                    body.clear();
                } else if !*overflow {
                    body.extend_from_slice(chunk);
                }
            }
            UsageMeter::Sse {
                parser,
                usage,
                streamed_estimate,
            } => parser.feed(chunk, &mut |data| {
                if data != b"[DONE]" {
                    if let Ok(v) = serde_json::from_slice::<Value>(data) {
                        merge(usage, &v);
                        *streamed_estimate += delta_tokens(&v);
                    }
                }
            }),
        }
    }

    /// Output tokens the stream has carried so far: the larger of what the provider reported and
    /// an estimate from the content deltas (about 4 bytes per token, at least 1 per delta, so it
    /// leans high). Used to cut a stream before it runs past a budget; a JSON body reports 0 until
    /// it ends, since it cannot be cut part-way anyway.
    pub fn output_estimate(&self) -> u64 {
        match self {
            UsageMeter::Json { .. } => 0,
            UsageMeter::Sse {
                usage,
                streamed_estimate,
                ..
            } => (*streamed_estimate).max(usage.map_or(0, |u| u.output_tokens)),
        }
    }

    /// The usage read, once the body has ended.
    pub fn finish(&self) -> Option<Usage> {
        match self {
            UsageMeter::Json { body, overflow } => {
                if *overflow {
                    return None;
                }
                let v: Value = serde_json::from_slice(body).ok()?;
                let mut usage = None;
                merge(&mut usage, &v);
                usage
            }
            UsageMeter::Sse { usage, .. } => *usage,
        }
    }
}

/// Estimated tokens of generated content in one streamed event: OpenAI chat completion chunks
/// (`choices[].delta` text, refusals, reasoning and tool-call arguments), responses-API
/// `*.delta` events, and Anthropic `content_block_delta` (text, tool input JSON, thinking).
fn delta_tokens(v: &Value) -> u64 {
    let mut bytes = 0usize;
    let mut deltas = 0u64;
    let mut count = |s: Option<&Value>| {
        if let Some(s) = s.and_then(Value::as_str) {
            bytes += s.len();
            deltas += 1;
        }
    };
    if let Some(choices) = v.get("choices").and_then(Value::as_array) {
        for delta in choices.iter().filter_map(|c| c.get("delta")) {
            for field in ["content", "refusal", "reasoning_content"] {
                count(delta.get(field));
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for call in calls {
                    count(call.pointer("/function/arguments"));
                }
            }
        }
    }
    match v.get("type").and_then(Value::as_str) {
        Some(t) if t.starts_with("response.") && t.ends_with(".delta") => count(v.get("delta")),
        Some("content_block_delta") => {
            if let Some(delta) = v.get("delta") {
                for field in ["text", "partial_json", "thinking"] {
                    count(delta.get(field));
                }
            }
        }
        _ => {}
    }
    if deltas == 0 {
        return 0;
    }
    (bytes.div_ceil(4) as u64).max(deltas)
}

fn num(v: &Value, path: &str) -> Option<u64> {
    v.pointer(path).and_then(Value::as_u64)
}

/// Folds the usage an event or body reports into `acc`. Later reports of the same counter
/// replace earlier ones (providers report cumulative counts).
fn merge(acc: &mut Option<Usage>, v: &Value) {
    // OpenAI responses API streams the final object inside `response.completed`.
    let v = v
        .get("response")
        .filter(|r| r.get("usage").is_some())
        .unwrap_or(v);
    // Anthropic streams input usage in `message_start.message.usage`.
    let v = v
        .get("message")
        .filter(|m| m.get("usage").is_some())
        .unwrap_or(v);
    let Some(u) = v.get("usage").filter(|u| u.is_object()) else {
        return;
    };
    let entry = acc.get_or_insert_with(Usage::default);
    // OpenAI chat completions.
    if let Some(n) = num(u, "/prompt_tokens") {
        entry.input_tokens = n;
    }
    if let Some(n) = num(u, "/completion_tokens") {
        entry.output_tokens = n;
    }
    if let Some(n) = num(u, "/prompt_tokens_details/cached_tokens") {
        entry.cached_input_tokens = n;
    }
    // OpenAI responses API and Anthropic messages.
    if let Some(n) = num(u, "/input_tokens") {
        entry.input_tokens = n;
    }
    if let Some(n) = num(u, "/output_tokens") {
        entry.output_tokens = n;
    }
    if let Some(n) = num(u, "/input_tokens_details/cached_tokens") {
        entry.cached_input_tokens = n;
    }
    if let Some(n) = num(u, "/cache_read_input_tokens") {
        // Anthropic counts cache reads apart from `input_tokens`.
        entry.cached_input_tokens = n;
        entry.input_tokens = entry
            .input_tokens
            .max(num(u, "/input_tokens").unwrap_or(0) + n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter(ct: &str, chunks: &[&str]) -> Option<Usage> {
        let mut m = UsageMeter::for_content_type(ct)?;
        for c in chunks {
            m.feed(c.as_bytes());
        }
        m.finish()
    }

    fn u(i: u64, c: u64, o: u64) -> Option<Usage> {
        Some(Usage {
            input_tokens: i,
            cached_input_tokens: c,
            output_tokens: o,
        })
    }

    #[test]
    fn providers_and_shapes() {
        let cases: &[(&str, &str, &[&str], Option<Usage>)] = &[
            (
                "openai chat json",
                "application/json",
                &[r#"{"id":"x","usage":{"prompt_tokens":12,"completion_tokens":7,"prompt_tokens_details":{"cached_tokens":4}}}"#],
                u(12, 4, 7),
            ),
            (
                "openai chat sse with usage chunk split across reads",
                "text/event-stream",
                &["data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n", "data: {\"choices\":[],\"usa", "ge\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n"],
                u(5, 0, 2),
            ),
            (
                "openai responses sse",
                "text/event-stream; charset=utf-8",
                &["event: response.completed\r\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":3,\"input_tokens_details\":{\"cached_tokens\":1}}}}\r\n\r\n"],
                u(9, 1, 3),
            ),
            (
                "anthropic json",
                "application/json",
                &[r#"{"type":"message","usage":{"input_tokens":20,"output_tokens":5,"cache_read_input_tokens":10}}"#],
                u(30, 10, 5),
            ),
            (
                "anthropic sse",
                "text/event-stream",
                &["event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\n: ping\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":42}}\n\n"],
                u(11, 0, 42),
            ),
            ("no usage", "application/json", &[r#"{"ok":true}"#], None),
            ("not json", "application/json", &["<html>"], None),
        ];
        for (name, ct, chunks, want) in cases {
            assert_eq!(meter(ct, chunks), *want, "{name}");
        }
        assert!(UsageMeter::for_content_type("text/html").is_none());
    }

    /// Streams as the providers send them (shapes from their API references), with the usage
    /// each reports and the content bytes each streams.
    const OPENAI_CHAT: &str = concat!(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello there, \"},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\\\"Paris\\\"}\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":10,\"total_tokens\":29,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n",
        "data: [DONE]\n\n",
    );
    const OPENAI_RESPONSES: &str = concat!(
        "event: response.created\r\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r1\",\"usage\":null}}\r\n\r\n",
        "event: response.output_text.delta\r\ndata: {\"type\":\"response.output_text.delta\",\"item_id\":\"m1\",\"delta\":\"Bonjour \"}\r\n\r\n",
        "event: response.output_text.delta\r\ndata: {\"type\":\"response.output_text.delta\",\"item_id\":\"m1\",\"delta\":\"le monde\"}\r\n\r\n",
        "event: response.output_text.done\r\ndata: {\"type\":\"response.output_text.done\",\"text\":\"Bonjour le monde\"}\r\n\r\n",
        "event: response.completed\r\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r1\",\"usage\":{\"input_tokens\":36,\"input_tokens_details\":{\"cached_tokens\":8},\"output_tokens\":87,\"total_tokens\":123}}}\r\n\r\n",
    );
    const ANTHROPIC: &str = concat!(
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

    fn fed(ct: &str, chunks: &[&[u8]]) -> UsageMeter {
        let mut m = UsageMeter::for_content_type(ct).expect("meterable");
        for c in chunks {
            m.feed(c);
        }
        m
    }

    #[test]
    fn real_streams_are_metered_and_estimated() {
        // (stream, usage, estimate from the deltas before the usage arrives)
        let cases = [
            // "" counts one, "Hello there, " 13 bytes → 4, the arguments 16 bytes → 4.
            (OPENAI_CHAT, u(19, 0, 10), 9),
            // "Bonjour " 8 → 2, "le monde" 8 → 2; the `.done` event is not counted again.
            (OPENAI_RESPONSES, u(36, 8, 87), 4),
            // 22 bytes → 6, 24 bytes → 6; a multi-line `data:` carries the final usage.
            (ANTHROPIC, u(30, 5, 15), 12),
        ];
        for (stream, usage, deltas) in cases {
            let m = fed("text/event-stream", &[stream.as_bytes()]);
            assert_eq!(m.finish(), usage, "{stream}");
            let reported = usage.map_or(0, |u| u.output_tokens);
            assert_eq!(m.output_estimate(), reported.max(deltas), "{stream}");
            // Before the usage event arrives, the estimate is the deltas'.
            let cut = stream
                .find("usage\":{\"prompt")
                .or_else(|| stream.find("event: response.completed"))
                .or_else(|| stream.find("event: message_delta"))
                .expect("usage event");
            let partial = fed("text/event-stream", &[&stream.as_bytes()[..cut]]);
            assert_eq!(partial.output_estimate(), deltas, "{stream}");
        }
        let json = fed(
            "application/json",
            &[br#"{"usage":{"prompt_tokens":1,"completion_tokens":5}}"#],
        );
        assert_eq!(
            json.output_estimate(),
            0,
            "a JSON body cannot be cut part-way"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(crate::fuzz_cases(256)))]

        /// Arbitrary bytes, as JSON or as an event stream, in any chunks: never a panic, and a
        /// usage read only when the bytes hold one.
        #[test]
        fn fuzz_arbitrary_bodies_never_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            sse in proptest::prelude::any::<bool>(),
            splits in proptest::collection::vec(0usize..600, 0..6),
        ) {
            let mut cuts: Vec<usize> = splits.into_iter().map(|s| s % (body.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for c in cuts {
                chunks.push(&body[last..c]);
                last = c;
            }
            chunks.push(&body[last..]);
            let ct = if sse { "text/event-stream" } else { "application/json" };
            let m = fed(ct, &chunks);
            if m.finish().is_some() {
                proptest::prop_assert!(body.windows(5).any(|w| w == b"usage" || w == b"Usage"));
            }
        }

        /// Any chunking of any of the real streams, with `\n`, `\r\n` or `\r` line ends, meters
        /// the same usage and the same estimate as the stream read whole.
        #[test]
        fn fuzz_any_chunking_and_line_ending_meters_the_same(
            which in 0usize..3,
            ending in 0usize..3,
            splits in proptest::collection::vec(0usize..4096, 0..16),
        ) {
            let stream = [OPENAI_CHAT, OPENAI_RESPONSES, ANTHROPIC][which]
                .replace("\r\n", "\n")
                .replace('\n', ["\n", "\r\n", "\r"][ending]);
            let bytes = stream.as_bytes();
            let whole = fed("text/event-stream", &[bytes]);
            proptest::prop_assert!(whole.finish().is_some());
            let mut cuts: Vec<usize> = splits.into_iter().map(|s| s % bytes.len()).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for c in cuts {
                chunks.push(&bytes[last..c]);
                last = c;
            }
            chunks.push(&bytes[last..]);
            let split = fed("text/event-stream", &chunks);
            proptest::prop_assert_eq!(split.finish(), whole.finish());
            proptest::prop_assert_eq!(split.output_estimate(), whole.output_estimate());
        }
    }
}
