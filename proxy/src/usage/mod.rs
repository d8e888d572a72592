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
            UsageMeter::Sse { parser, usage } => parser.feed(chunk, &mut |data| {
                if data != b"[DONE]" {
                    if let Ok(v) = serde_json::from_slice::<Value>(data) {
                        merge(usage, &v);
                    }
                }
            }),
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
}
