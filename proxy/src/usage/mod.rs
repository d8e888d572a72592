//! LLM usage metering: read token counts from a response as it streams through, in the shapes
//! its [`providers`] write (OpenAI chat completions and the Responses API, Anthropic messages),
//! JSON or SSE. Nothing is buffered in front of the client: chunks pass on unchanged, and the
//! meter keeps only what it needs (the SSE line in progress, or a bounded copy of a JSON body).
//!
//! - [`providers`]: one file per provider, and the registry the rest of the proxy asks;
//! - [`sse`]: the SSE framing; a stream's events are handed to the provider's reader as JSON,
//!   so another framing (AWS event-stream) is one more parser here, not a change to providers;
//! - [`strip`]: takes the usage event the proxy asked for out of a stream again;
//! - [`members`]: a JSON body parsed down to the members the readers read.

pub mod eventstream;
mod members;
pub mod providers;
pub mod sse;
pub mod strip;

use serde_json::Value;

use eventstream::EventStreamParser;
use providers::registry::PROVIDERS;
use providers::{Generated, Provider};
use sse::SseParser;

/// Largest JSON response body copied whole for metering; past it, the body is scanned for the
/// members the usage readers read ([`members::MemberScanner`]).
const MAX_JSON: usize = 2 * 1024 * 1024;

/// Tokens one call used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Prompt / input tokens (including those read from and written to the provider's cache).
    pub input_tokens: u64,
    /// Input tokens served from the provider's cache.
    pub cached_input_tokens: u64,
    /// Input tokens written to the provider's prompt cache (Anthropic's
    /// `cache_creation_input_tokens`, Bedrock's `cacheWriteInputTokens`), billed above the input
    /// price.
    #[serde(skip_serializing_if = "is_zero")]
    pub cache_write_input_tokens: u64,
    /// Of those, the ones written for the longer cache lifetime (Anthropic's one-hour cache),
    /// billed higher still.
    #[serde(skip_serializing_if = "is_zero")]
    pub cache_write_long_input_tokens: u64,
    /// Completion / output tokens.
    pub output_tokens: u64,
    /// Calls the provider's hosted tools made for the call, billed per call.
    #[serde(flatten)]
    pub hosted_calls: HostedCalls,
}

/// Calls a provider's hosted tools made for one LLM call: billed per call, apart from the tokens
/// they add to the call's input and output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HostedCalls {
    /// Web searches (Anthropic's `usage.server_tool_use.web_search_requests`, the Responses
    /// API's `web_search_call` output items).
    #[serde(skip_serializing_if = "is_zero")]
    pub web_searches: u64,
    /// File searches over vector stores (the Responses API's `file_search_call` output items).
    #[serde(skip_serializing_if = "is_zero")]
    pub file_searches: u64,
}

impl HostedCalls {
    /// Each count the larger of `self`'s and `other`'s: a report and what the stream showed
    /// count the same calls, so they are not added.
    pub fn at_least(self, other: Self) -> Self {
        Self {
            web_searches: self.web_searches.max(other.web_searches),
            file_searches: self.file_searches.max(other.file_searches),
        }
    }

    /// Counts `other`'s calls too.
    pub fn add(&mut self, other: Self) {
        self.web_searches = self.web_searches.saturating_add(other.web_searches);
        self.file_searches = self.file_searches.saturating_add(other.file_searches);
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How a response is metered.
#[derive(Debug)]
pub struct UsageMeter {
    /// The provider whose shapes the response has; `None` reads every provider's (a destination
    /// whose path names no provider: a gateway, a route without a known path).
    provider: Option<&'static dyn Provider>,
    framing: Framing,
}

#[derive(Debug)]
enum Framing {
    /// A JSON body, parsed at its end.
    Json {
        /// The copy so far.
        body: Vec<u8>,
        /// Once the body outgrew [`MAX_JSON`]: the members kept of it so far.
        scanned: Option<Box<members::MemberScanner>>,
    },
    /// An SSE stream, parsed event by event.
    Sse {
        /// The parser.
        parser: SseParser,
        /// Usage seen so far.
        usage: Option<Usage>,
        /// The content streamed so far.
        streamed: Streamed,
    },
    /// An AWS event stream (Bedrock), parsed message by message.
    EventStream {
        /// The parser.
        parser: EventStreamParser,
        /// Usage seen so far.
        usage: Option<Usage>,
        /// The content streamed so far.
        streamed: Streamed,
    },
}

/// The content a stream carried.
#[derive(Debug, Clone, Copy, Default)]
struct Streamed {
    /// Output tokens estimated from the content deltas (see [`Generated::tokens`]).
    estimate: u64,
    /// Content deltas that carried text: each is at least one token.
    content_deltas: u64,
    /// Events read whole (with content or not).
    events: u64,
    /// Hosted tool calls the stream showed starting.
    hosted_calls: HostedCalls,
}

impl Streamed {
    /// `u`, unless it reports fewer output tokens than the stream carried deltas of content:
    /// then it is a partial report (an Anthropic stream that ended without its closing
    /// `message_delta`, after an `error` event say), and the output is the estimate.
    fn at_least(&self, mut u: Usage) -> Usage {
        if u.output_tokens < self.content_deltas {
            u.output_tokens = self.estimate.max(u.output_tokens);
        }
        // Each tool call the stream showed was run (and billed), whatever the report says.
        u.hosted_calls = u.hosted_calls.at_least(self.hosted_calls);
        u
    }
}

/// Reads one stream event's JSON with `provider`'s reader (or every reader).
fn read_event(
    provider: Option<&'static dyn Provider>,
    v: &Value,
    usage: &mut Option<Usage>,
    streamed: &mut Streamed,
) {
    let mut generated = Generated::default();
    each(provider, |p| {
        p.usage_from_event(v, usage);
        p.count_generated(v, &mut generated);
    });
    streamed.events += 1;
    streamed.estimate += generated.tokens();
    streamed.content_deltas += generated.nonempty;
    streamed.hosted_calls.add(generated.hosted_calls);
}

/// The JSON an event-stream message carries: its payload, or for a `chunk` (Bedrock's
/// `InvokeModelWithResponseStream`) the model's own event, base64 in the payload's `bytes`.
/// Exceptions and errors carry no usage.
fn event_stream_json(m: &eventstream::Message<'_>) -> Option<Value> {
    if m.message_type != Some("event") {
        return None;
    }
    // SECURITY (memory): an event is read as a tree, so it is held to an SSE event's bound (a
    // 2 MiB message of `[1,1,…]` made a tree of 150 MB). Usage reports and deltas are a few
    // hundred bytes; a larger event is not read (its usage, if any, unknown).
    if m.payload.len() > sse::MAX_EVENT {
        return None;
    }
    let v = members::bounded_event(m.payload)?;
    match v.get("bytes").and_then(Value::as_str) {
        Some(b64) if m.event_type == Some("chunk") => {
            use base64::Engine as _;
            let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            members::bounded_event(&raw)
        }
        _ => Some(v),
    }
}

/// The members of a JSON body that `provider`'s readers (or every reader) read.
fn usage_members(provider: Option<&'static dyn Provider>) -> Vec<&'static str> {
    let mut names = Vec::new();
    each(provider, |p| names.extend_from_slice(p.usage_members()));
    names.sort_unstable();
    names.dedup();
    names
}

/// Runs `f` with `provider`, or with every provider when it is unknown.
fn each(provider: Option<&'static dyn Provider>, mut f: impl FnMut(&dyn Provider)) {
    match provider {
        Some(p) => {
            f(p);
            p.also_reads().iter().for_each(|p| f(*p));
        }
        None => PROVIDERS.iter().for_each(|p| f(*p)),
    }
}

impl UsageMeter {
    /// A meter for a response with this `Content-Type` from `provider` (see
    /// [`providers::registry::for_destination`]), or `None` when it cannot carry usage.
    pub fn for_response(
        content_type: &str,
        provider: Option<&'static dyn Provider>,
    ) -> Option<Self> {
        let ct = content_type.trim_start();
        let is = |p: &str| ct.get(..p.len()).is_some_and(|x| x.eq_ignore_ascii_case(p));
        let framing = if is("text/event-stream") {
            Framing::Sse {
                parser: SseParser::default(),
                usage: None,
                streamed: Streamed::default(),
            }
        } else if is("application/vnd.amazon.eventstream") {
            Framing::EventStream {
                parser: EventStreamParser::default(),
                usage: None,
                streamed: Streamed::default(),
            }
        } else if is("application/json") {
            Framing::Json {
                body: Vec::new(),
                scanned: None,
            }
        } else {
            return None;
        };
        Some(Self { provider, framing })
    }

    /// Whether the response is an AWS event stream (Bedrock's), whose messages are binary.
    pub fn is_event_stream(&self) -> bool {
        matches!(self.framing, Framing::EventStream { .. })
    }

    /// Whether the response is a stream (metered, and estimated, event by event).
    pub fn is_stream(&self) -> bool {
        matches!(
            self.framing,
            Framing::Sse { .. } | Framing::EventStream { .. }
        )
    }

    /// Bytes this meter holds once it takes `more`: a JSON answer's copy, the SSE line and
    /// event in progress, an event-stream message in progress.
    pub fn held_with(&self, more: usize) -> usize {
        match &self.framing {
            Framing::Json {
                body,
                scanned: None,
            } => body.len() + more,
            Framing::Json { .. } => 0,
            Framing::Sse { parser, .. } => parser.buffered() + more,
            Framing::EventStream { parser, .. } => parser.buffered() + more,
        }
    }

    /// Stops copying a JSON answer: from here on only the members a reader reads are kept, as
    /// past the copy limit. False when there was no copy to stop.
    pub fn stop_copying(&mut self) -> bool {
        let provider = self.provider;
        match &mut self.framing {
            Framing::Json {
                body,
                scanned: scanned @ None,
            } => {
                let mut scanner = members::MemberScanner::new(usage_members(provider));
                scanner.feed(body);
                *body = Vec::new();
                *scanned = Some(Box::new(scanner));
                true
            }
            _ => false,
        }
    }

    /// Feeds a response body chunk (synchronous: called from the body filter).
    pub fn feed(&mut self, chunk: &[u8]) {
        if let Framing::Json {
            body,
            scanned: None,
        } = &self.framing
        {
            if body.len() + chunk.len() > MAX_JSON {
                // Too large to copy (many choices, a long output): its usage is still read.
                self.stop_copying();
            }
        }
        let provider = self.provider;
        match &mut self.framing {
            Framing::Json { body, scanned } => match scanned {
                Some(scanner) => scanner.feed(chunk),
                None => body.extend_from_slice(chunk),
            },
            Framing::Sse {
                parser,
                usage,
                streamed,
            } => parser.feed(chunk, &mut |data| {
                match members::bounded_event(data).filter(|_| data != b"[DONE]") {
                    Some(v) => read_event(provider, &v, usage, streamed),
                    // Not JSON (a shape no reader knows): the stream has shown its shape.
                    None => streamed.events += 1,
                }
            }),
            Framing::EventStream {
                parser,
                usage,
                streamed,
            } => parser.feed(chunk, &mut |m| match event_stream_json(&m) {
                Some(v) => read_event(provider, &v, usage, streamed),
                None => streamed.events += 1,
            }),
        }
    }

    /// Hosted tool calls the stream showed the provider starting, so far (none for a JSON
    /// body): what a stream whose report never arrives is settled for, besides its tokens.
    pub fn hosted_calls_seen(&self) -> HostedCalls {
        match &self.framing {
            Framing::Json { .. } => HostedCalls::default(),
            Framing::Sse { streamed, .. } | Framing::EventStream { streamed, .. } => {
                streamed.hosted_calls
            }
        }
    }

    /// Output tokens the stream has carried so far: the larger of what the provider reported and
    /// an estimate from the content deltas (about 4 bytes per token, at least 1 per delta, so it
    /// leans high). Used to cut a stream before it runs past a budget; a JSON body reports 0 until
    /// it ends, since it cannot be cut part-way anyway.
    pub fn output_estimate(&self) -> u64 {
        match &self.framing {
            Framing::Json { .. } => 0,
            Framing::Sse {
                usage, streamed, ..
            }
            | Framing::EventStream {
                usage, streamed, ..
            } => streamed.estimate.max(usage.map_or(0, |u| u.output_tokens)),
        }
    }

    /// Whether a stream has shown anything of its shape yet: an event whole (read or not), or
    /// one too large to read. Before, its bytes are a first event still arriving (a large one
    /// comes in several reads), which says nothing of its output. A body that is no stream:
    /// `true`.
    pub fn has_shown_its_shape(&self) -> bool {
        match &self.framing {
            Framing::Json { .. } => true,
            Framing::Sse {
                parser, streamed, ..
            } => streamed.events > 0 || parser.oversized() > 0,
            Framing::EventStream { streamed, .. } => streamed.events > 0,
        }
    }

    /// The usage read, once the body has ended.
    pub fn finish(&self) -> Option<Usage> {
        // SECURITY (budgets): every call sends a prompt, so a report of no input (a partial
        // one that gives the output alone, in any provider's shape) is no report: read as it
        // stands, a 30 KB prompt was settled at nothing.
        self.reported().filter(|u| u.input_tokens > 0)
    }

    /// The usage the body reported, as its readers read it.
    fn reported(&self) -> Option<Usage> {
        match &self.framing {
            Framing::Json { body, scanned } => {
                let (body, whole) = match scanned {
                    Some(scanner) => (scanner.finish()?, false),
                    None => (body.as_slice(), true),
                };
                let wanted = |name: &str| {
                    let (mut usage, mut items) = (false, false);
                    each(self.provider, |p| {
                        usage |= p.usage_members().contains(&name);
                        items |= whole && p.whole_body_members().contains(&name);
                    });
                    // A member some reader reads whole is kept whole.
                    if usage {
                        Some(members::Keep::Whole)
                    } else {
                        items.then_some(members::Keep::ItemTypes)
                    }
                };
                let v = members::parse_members(body, &wanted)?;
                let mut usage = None;
                each(self.provider, |p| p.usage_from_json(&v, &mut usage));
                usage
            }
            Framing::Sse {
                usage, streamed, ..
            } => usage.map(|u| streamed.at_least(u)),
            // SECURITY: a malformed frame or a stream cut mid-message may have hidden the usage
            // event: unknown, never what was read before it.
            Framing::EventStream {
                parser,
                usage,
                streamed,
            } => usage
                .filter(|_| parser.at_boundary())
                .map(|u| streamed.at_least(u)),
        }
    }
}

/// Helpers for the providers' metering tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub(crate) fn u(i: u64, c: u64, o: u64) -> Option<Usage> {
        Some(Usage {
            input_tokens: i,
            cached_input_tokens: c,
            output_tokens: o,
            ..Usage::default()
        })
    }

    fn fed(provider: Option<&'static dyn Provider>, ct: &str, chunks: &[&[u8]]) -> UsageMeter {
        let mut m = UsageMeter::for_response(ct, provider).expect("meterable");
        for c in chunks {
            m.feed(c);
        }
        m
    }

    /// The usage `provider` reads from a JSON response body.
    pub(crate) fn meter_json(provider: &'static dyn Provider, body: &str) -> Option<Usage> {
        fed(Some(provider), "application/json", &[body.as_bytes()]).finish()
    }

    /// Meters `stream` as `provider`'s, and as an unknown provider's (every reader): `usage`,
    /// and an estimate of `deltas` before the usage event at byte `cut` (0: not checked) and the
    /// larger of both after it, however the stream is split (at every byte boundary, byte by
    /// byte) and whatever its line ends (`\n`, `\r\n`, `\r`).
    pub(crate) fn meter_stream(
        provider: &'static dyn Provider,
        stream: &str,
        usage: Option<Usage>,
        deltas: u64,
        cut: usize,
    ) {
        let reported = usage.map_or(0, |u| u.output_tokens);
        for who in [Some(provider), None] {
            let whole = fed(who, "text/event-stream", &[stream.as_bytes()]);
            assert_eq!(whole.finish(), usage, "{who:?}: {stream}");
            assert_eq!(
                whole.output_estimate(),
                reported.max(deltas),
                "{who:?}: {stream}"
            );
            if cut > 0 {
                let partial = fed(who, "text/event-stream", &[&stream.as_bytes()[..cut]]);
                assert_eq!(partial.output_estimate(), deltas, "{who:?}: {stream}");
            }
            let unix = stream.replace("\r\n", "\n");
            for ending in ["\n", "\r\n", "\r"] {
                let s = unix.replace('\n', ending);
                let b = s.as_bytes();
                for at in 0..=b.len() {
                    let split = fed(who, "text/event-stream", &[&b[..at], &b[at..]]);
                    assert_eq!(split.finish(), usage, "{who:?} {ending:?} split at {at}");
                    assert_eq!(
                        split.output_estimate(),
                        whole.output_estimate(),
                        "{who:?} {ending:?} split at {at}"
                    );
                }
                let bytes: Vec<&[u8]> = b.chunks(1).collect();
                let each_byte = fed(who, "text/event-stream", &bytes);
                assert_eq!(each_byte.finish(), usage, "{who:?} {ending:?} byte by byte");
                assert_eq!(each_byte.output_estimate(), whole.output_estimate());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::u;
    use super::*;
    // Streams as the providers send them (shapes from their API references), with the usage
    // each reports and the content bytes each streams.
    use providers::anthropic::tests::STREAM as ANTHROPIC;
    use providers::openai_chat::tests::STREAM as OPENAI_CHAT;
    use providers::openai_responses::tests::STREAM as OPENAI_RESPONSES;

    /// A stream shows its shape once an event is whole, or once one is too large to read: before,
    /// its bytes are a first event still arriving. A small media part read whole is a token.
    #[test]
    fn a_large_first_event_shows_the_streams_shape_once_whole_or_too_large() {
        let gemini = providers::registry::for_path(
            "/v1beta/models/gemini-2.5-flash-image:streamGenerateContent",
        );
        assert!(gemini.is_some());
        let image = "A".repeat(sse::MAX_EVENT + 10);
        let event = format!(
            "data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"inlineData\":{{\"mimeType\":\"image/png\",\"data\":\"{image}\"}}}}]}}}}]}}\n\n"
        );
        let mut m = UsageMeter::for_response("text/event-stream", gemini).unwrap();
        m.feed(&event.as_bytes()[..1000]);
        assert!(!m.has_shown_its_shape());
        assert_eq!(m.output_estimate(), 0);
        m.feed(&event.as_bytes()[1000..]);
        assert!(m.has_shown_its_shape());
        // Not read: nothing of it is known (the bytes stand for it, see `Stages::output_seen`).
        assert_eq!(m.output_estimate(), 0);
        // Any event whole shows the shape, JSON or not.
        let mut m = UsageMeter::for_response("text/event-stream", gemini).unwrap();
        m.feed(b"data: not json at all");
        assert!(!m.has_shown_its_shape());
        m.feed(b"\n\n");
        assert!(m.has_shown_its_shape());
        // A small media part read whole counts as one too.
        let small = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"inlineData\":{\"mimeType\":\"image/png\",\"data\":\"iVBORw0KGgo=\"}}]}}]}\n\n";
        let mut m = UsageMeter::for_response("text/event-stream", gemini).unwrap();
        m.feed(small.as_bytes());
        assert_eq!((m.has_shown_its_shape(), m.output_estimate()), (true, 1));
        // A JSON body is no stream: its bytes stand for themselves.
        let m = UsageMeter::for_response("application/json", gemini).unwrap();
        assert!(m.has_shown_its_shape());
    }

    /// An event-stream message larger than an SSE event may be is not read as a tree (a 2 MiB
    /// one of `[1,1,…]` made 150 MB): the stream's usage comes from its other messages.
    #[test]
    fn an_event_stream_message_past_the_event_bound_is_not_read() {
        let big = format!(
            r#"{{"contentBlockIndex":0,"delta":{{"text":"{}"}},"p":[{}]}}"#,
            "word ".repeat(100),
            vec!["1"; sse::MAX_EVENT / 2].join(",")
        );
        assert!(big.len() > sse::MAX_EVENT);
        let mut stream = eventstream::event("contentBlockDelta", &big);
        stream.extend(providers::bedrock::tests::converse_stream());
        let mut m = UsageMeter::for_response("application/vnd.amazon.eventstream", None).unwrap();
        m.feed(&stream);
        // The usage of the metadata event after it, its deltas' text: as without it (read, its
        // 500 bytes of text would count past the 9 output tokens reported).
        let mut alone =
            UsageMeter::for_response("application/vnd.amazon.eventstream", None).unwrap();
        alone.feed(&providers::bedrock::tests::converse_stream());
        assert!(alone.finish().is_some());
        assert_eq!(m.finish(), alone.finish());
        assert_eq!(m.output_estimate(), alone.output_estimate());
    }

    fn meter(ct: &str, chunks: &[&str]) -> Option<Usage> {
        let mut m = UsageMeter::for_response(ct, None)?;
        for c in chunks {
            m.feed(c.as_bytes());
        }
        m.finish()
    }

    /// A JSON body too large to copy (forty long choices) is still metered by the usage it
    /// reports, for a known provider and for an unknown one, in one piece or in many; one that
    /// is cut short, or not JSON, is not.
    #[test]
    fn a_json_body_past_the_copy_limit_is_metered_by_its_usage() {
        let choice = format!(
            r#"{{"index":0,"message":{{"role":"assistant","content":"{}"}},"finish_reason":"length"}}"#,
            "word ".repeat(16_000)
        );
        let choices = vec![choice; 40].join(",");
        let body = format!(
            r#"{{"id":"c","object":"chat.completion","choices":[{choices}],"usage":{{"prompt_tokens":12,"completion_tokens":640000,"total_tokens":640012}}}}"#
        );
        assert!(body.len() > MAX_JSON);
        let chat: &'static dyn Provider = &providers::openai_chat::OpenAiChat;
        for provider in [Some(chat), None] {
            for piece in [body.len(), 16 * 1024, 1000] {
                let mut m = UsageMeter::for_response("application/json", provider).unwrap();
                for chunk in body.as_bytes().chunks(piece) {
                    m.feed(chunk);
                }
                assert_eq!(
                    m.finish(),
                    u(12, 0, 640_000),
                    "{provider:?} in pieces of {piece}"
                );
            }
            let mut cut = UsageMeter::for_response("application/json", provider).unwrap();
            cut.feed(&body.as_bytes()[..body.len() - 1]);
            assert_eq!(cut.finish(), None);
            let mut trailing = UsageMeter::for_response("application/json", provider).unwrap();
            trailing.feed(body.as_bytes());
            trailing.feed(b" x");
            assert_eq!(trailing.finish(), None);
        }
    }

    /// A meter told to stop copying (the body memory bound is reached) reads the usage from
    /// the members that carry it, wherever the answer stands; it holds no copy after.
    #[test]
    fn a_meter_that_stops_copying_still_reads_the_usage() {
        let body = r#"{"id":"c","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;
        let chat: &'static dyn Provider = &providers::openai_chat::OpenAiChat;
        for at in [0, 1, 20, body.len() - 1, body.len()] {
            let mut m = UsageMeter::for_response("application/json", Some(chat)).unwrap();
            m.feed(&body.as_bytes()[..at]);
            assert_eq!(m.held_with(5), at + 5);
            assert!(m.stop_copying(), "at {at}");
            assert!(!m.stop_copying(), "once");
            assert_eq!(m.held_with(5), 0);
            m.feed(&body.as_bytes()[at..]);
            assert_eq!(m.held_with(5), 0);
            assert_eq!(m.finish(), u(12, 0, 3), "stopped at {at}");
        }
        // Streams hold no copy to stop, but the event in progress counts.
        let mut sse = UsageMeter::for_response("text/event-stream", Some(chat)).unwrap();
        assert!(!sse.stop_copying());
        sse.feed(format!("data: {{\"x\":\"{}", "a".repeat(100_000)).as_bytes());
        assert!(sse.held_with(7) >= 100_007, "{}", sse.held_with(7));
    }

    /// A response from a destination whose path names no provider is read with every
    /// provider's reader.
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
        assert!(UsageMeter::for_response("text/html", None).is_none());
    }

    fn fed(ct: &str, chunks: &[&[u8]]) -> UsageMeter {
        let mut m = UsageMeter::for_response(ct, None).expect("meterable");
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
