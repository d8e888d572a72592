//! OpenAI chat completions, with the two endpoints that report usage the same way (legacy
//! completions and embeddings): `usage.prompt_tokens`, `completion_tokens` and
//! `prompt_tokens_details.cached_tokens`, in the JSON body or in the last event of a stream.
//!
//! A stream reports usage only when asked (`stream_options.include_usage`): the proxy asks on the
//! agent's behalf and takes the usage event out again when the agent had not asked for it.

use serde::de;
use serde_json::Value;

use crate::json_scalar::Scalar;

use super::{fold_counts, CallPath, Generated, KeyPositions, Provider, RequestFields};
use crate::usage::Usage;

/// Most members of `stream_options` carried over when usage is asked for (it has two today);
/// the rest are left out. SECURITY: the stream is asked whatever else the options hold (a body
/// that could opt out by naming 33 options would stream unmetered).
const MAX_OPTIONS: usize = 32;

/// A chat-completions body's top-level `stream` and `stream_options`, read without a tree of
/// the body (the last of a repeated member wins, as in a whole parse); `None` when the body is
/// not one JSON object.
struct StreamMembers {
    /// The flag, when it is a bool.
    stream: Option<bool>,
    options: Options,
}

/// `stream_options`.
enum Options {
    Absent,
    Null,
    /// An object of scalar members (nested values are left out: no option has one).
    Object(serde_json::Map<String, Value>),
    /// Anything else.
    Other,
}

impl StreamMembers {
    fn read(body: &[u8]) -> Option<Self> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let top = de::Deserializer::deserialize_map(&mut de, TopVisitor).ok()?;
        de.end().ok()?;
        Some(top)
    }
}

struct TopVisitor;

impl<'de> de::Visitor<'de> for TopVisitor {
    type Value = StreamMembers;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<StreamMembers, A::Error> {
        let mut top = StreamMembers {
            stream: None,
            options: Options::Absent,
        };
        while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*name {
                "stream" => {
                    top.stream = match map.next_value::<Scalar>()? {
                        Scalar(Some(Value::Bool(b))) => Some(b),
                        _ => None,
                    }
                }
                "stream_options" => top.options = map.next_value()?,
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(top)
    }
}

impl<'de> de::Deserialize<'de> for Options {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Options;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("stream options")
            }
            fn visit_unit<E>(self) -> Result<Options, E> {
                Ok(Options::Null)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Options, A::Error> {
                // `include_usage` wherever it stands (the last one wins), and the first
                // [`MAX_OPTIONS`] other scalar members.
                let mut members = serde_json::Map::new();
                while let Some(name) = map.next_key::<String>()? {
                    let Scalar(value) = map.next_value()?;
                    let room = members.len() < MAX_OPTIONS || members.contains_key(&name);
                    if let Some(v) = value.filter(|_| room || name == "include_usage") {
                        members.insert(name, v);
                    }
                }
                Ok(Options::Object(members))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Options, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(Options::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Options, E> {
                Ok(Options::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Options, E> {
                Ok(Options::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Options, E> {
                Ok(Options::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Options, E> {
                Ok(Options::Other)
            }
            fn visit_str<E>(self, _: &str) -> Result<Options, E> {
                Ok(Options::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// OpenAI chat completions (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, also
/// under an Azure OpenAI deployment).
#[derive(Debug, Clone, Copy)]
pub struct OpenAiChat;

/// OpenAI's name in the price table (shared with [`super::openai_responses`]).
pub(super) const NAME: &str = "openai";

/// OpenAI's API hosts (shared with [`super::openai_responses`]).
pub(super) const HOSTS: &[&str] = &["api.openai.com"];

/// `api.openai.com` and its regional hosts (`eu.api.openai.com`, `us.api.openai.com`: data
/// residency projects), the same API.
pub(super) fn owns_openai_host(host: &str) -> bool {
    HOSTS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(host.trim_end_matches('.')))
        || super::host_ends_with(host, ".api.openai.com")
}

/// Where OpenAI's APIs take a key (shared with [`super::openai_responses`]).
pub(super) const KEY_POSITIONS: KeyPositions = KeyPositions {
    headers: &["authorization"],
    query: &[],
    body: &["api_key", "openai_api_key"],
};

const OPERATIONS: &[&str] = &["chat/completions", "completions", "embeddings"];

/// Requests that start work the proxy cannot meter, under `/v1/` or Azure's `/openai/` (read by
/// every OpenAI-compatible server's path: Mistral's batches are `/v1/batch/jobs`).
const UNMETERED: &[(&str, &str)] = &[
    ("/batches", "a batch job"),
    ("/batch/jobs", "a batch job"),
    ("/fine_tuning/jobs", "a fine-tuning job"),
    ("/threads/runs", "an Assistants run"),
    ("/threads/*/runs", "an Assistants run"),
    ("/threads/*/runs/*/submit_tool_outputs", "an Assistants run"),
    // The Realtime API's WebSocket, and the sessions and secrets that open one elsewhere.
    ("/realtime", "a Realtime session"),
    ("/realtime/sessions", "a Realtime session"),
    ("/realtime/transcription_sessions", "a Realtime session"),
    ("/realtime/client_secrets", "a Realtime session"),
    ("/realtime/calls", "a Realtime session"),
    ("/evals/*/runs", "an evaluation run"),
    ("/videos", "a video generation"),
    ("/videos/*/remix", "a video generation"),
    ("/containers", "a code interpreter container"),
    // ChatKit mints a client secret for a session that runs a workflow elsewhere, as a Realtime
    // client secret does.
    ("/chatkit/sessions", "a ChatKit session"),
    // A grader run calls the model its body nests (`grader.model`), and reports no usage.
    ("/fine_tuning/alpha/graders/run", "a grader run"),
    // The legacy fine-tuning API, still Together's.
    ("/fine-tunes", "a fine-tuning job"),
    // Mistral's agents and conversations run an agent (its model and its tools, billed per
    // call) named by `agent_id`, or continue one: no body names what is priced. (OpenAI's
    // `POST /v1/conversations` only stores items, and is refused all the same under a quota.)
    ("/agents/completions", "an agent run"),
    ("/conversations", "an agent conversation"),
    ("/conversations/*", "an agent conversation"),
    ("/conversations/*/restart", "an agent conversation"),
];

const FIELDS: RequestFields = RequestFields {
    // A Realtime client secret's model is its session's (`/v1/realtime/client_secrets`), a
    // transcription session's its transcription's (`/v1/realtime/transcription_sessions`).
    // The GA Realtime API nests a session's transcription under `audio.input`.
    model: &[
        &["model"],
        &["session", "model"],
        &["input_audio_transcription", "model"],
        &["session", "input_audio_transcription", "model"],
        &["audio", "input", "transcription", "model"],
        &["session", "audio", "input", "transcription", "model"],
    ],
    // `max_tokens`, the older name, is still read by every OpenAI-compatible server; with both,
    // the larger is reserved.
    ceilings: &[&["max_tokens"], &["max_completion_tokens"]],
};

impl Provider for OpenAiChat {
    fn name(&self) -> &'static str {
        NAME
    }

    fn default_hosts(&self) -> &'static [&'static str] {
        HOSTS
    }

    fn owns_host(&self, host: &str) -> bool {
        owns_openai_host(host)
    }

    fn is_call(&self, path: &CallPath<'_>) -> bool {
        OPERATIONS.iter().any(|op| path.is_openai_operation(op))
    }

    /// The engine of the legacy `/v1/engines/{engine}/…` paths, which gateways still serve
    /// (LiteLLM's `/engines/{model}/chat/completions`): the model the call runs whatever the
    /// body names, as an Azure deployment's.
    fn model_from_path(&self, path: &str) -> Option<String> {
        const ENGINES: &str = "/engines/";
        // Asked of every request's path: only one that may name an engine is copied.
        let path = super::routed(path, ENGINES)?;
        let at = super::find_ignore_case(&path, ENGINES, false)? + ENGINES.len();
        let rest = &path[at..];
        let (engine, op) = rest.split_once('/')?;
        let op = op.split(['?', '#']).next().unwrap_or_default();
        let named = OPERATIONS.iter().any(|o| op.eq_ignore_ascii_case(o));
        (named && !engine.is_empty()).then(|| engine.to_string())
    }

    fn unmetered_work(&self, path: &CallPath<'_>) -> Option<&'static str> {
        UNMETERED
            .iter()
            .find(|(rest, _)| path.is_openai_resource(rest))
            .map(|(_, what)| *what)
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
        &["usage"]
    }

    fn usage_from_event(&self, event: &Value, acc: &mut Option<Usage>) {
        fold(event, acc);
    }

    fn count_generated(&self, event: &Value, generated: &mut Generated) {
        let Some(choices) = event.get("choices").and_then(Value::as_array) else {
            return;
        };
        for choice in choices {
            // A legacy completion streams its text in the choice itself.
            let Some(delta) = choice.get("delta") else {
                generated.add(choice.get("text"));
                continue;
            };
            // Every kind of generated output counts (a kind left out would stream unguarded):
            // text, refusals, reasoning in both compatible spellings, tool-call and legacy
            // `function_call` arguments, and any other member a compatible API streams; not
            // the delta's metadata, nor `reasoning_details` (OpenRouter's copy of `reasoning`)
            // or `annotations` (URL citations of what was searched).
            generated.add_all(
                Some(delta),
                &[
                    "role",
                    "reasoning_details",
                    "annotations",
                    "tool_calls",
                    "audio",
                ],
            );
            // Audio by its transcript, not its base64 data: read as text, a second of speech
            // was thousands of tokens, and an honest capped audio stream was cut. A chunk of
            // audio data alone is output all the same: at least a token.
            if let Some(audio) = delta.get("audio") {
                let data = audio.get("data").and_then(Value::as_str);
                generated.add_part(
                    Some(audio),
                    &["data", "id", "expires_at"],
                    data.is_some_and(|d| !d.is_empty()),
                );
            }
            // A tool call's name and arguments, not its index, id and type.
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for call in calls {
                    generated.add_all(Some(call), &["index", "id", "type"]);
                }
            }
        }
    }

    /// Adds `stream_options.include_usage = true` to a streaming chat-completions (or legacy
    /// completions) body that lacks it. Any path ending in `/chat/completions` on any host:
    /// OpenAI-compatible APIs serve chat completions under other prefixes too (DeepSeek's
    /// `/chat/completions`, Gemini's `/v1beta/openai/chat/completions`) and take the same
    /// option; legacy completions, under `/v1/completions`.
    fn request_stream_usage(&self, path: CallPath<'_>, body: &[u8]) -> Option<Vec<u8>> {
        if !path.ends_with("/chat/completions") && !path.ends_with("/v1/completions") {
            return None;
        }
        // A body that never spells `stream` has no `stream` member: a member name can only
        // avoid those bytes by escaping one (`\u0073tream`), which takes a backslash. Such a
        // body is not read at all.
        if memchr::memmem::find(body, b"stream").is_none() && memchr::memchr(b'\\', body).is_none()
        {
            return None;
        }
        // Read without a tree of the body (SECURITY: an 8 MiB body made one of 600 MB), the last
        // of each member winning, as upstream parsers take duplicates.
        let top = StreamMembers::read(body)?;
        if top.stream != Some(true) {
            return None;
        }
        let mut options = match top.options {
            // `null` is the same as absent (the API documents the member as nullable), and the
            // stream would then report no usage at all: replaced by an object that asks.
            Options::Absent | Options::Null => serde_json::Map::new(),
            Options::Object(members) => members,
            Options::Other => return None,
        };
        if options.get("include_usage").and_then(Value::as_bool) == Some(true) {
            return None;
        }
        options.insert("include_usage".into(), Value::Bool(true));
        // The body is changed by one member added at the end of its object (the last of a
        // repeated member wins upstream), its other bytes as they were: a tree written out again
        // spelled numbers otherwise (`1e15` became 16 digits and `.0`).
        let close = body.iter().rposition(|b| *b == b'}')?;
        let member = serde_json::to_vec(&Value::Object(options)).ok()?;
        let mut out = Vec::with_capacity(body.len() + member.len() + 20);
        out.extend_from_slice(&body[..close]);
        out.extend_from_slice(b",\"stream_options\":");
        out.extend_from_slice(&member);
        out.extend_from_slice(&body[close..]);
        Some(out)
    }

    /// The usage-only chunk: `"choices": []` with a `usage` object.
    fn is_requested_usage_event(&self, event: &Value) -> bool {
        event.get("usage").is_some_and(Value::is_object)
            && event
                .get("choices")
                .and_then(Value::as_array)
                .is_some_and(|c| c.is_empty())
    }
}

fn fold(v: &Value, acc: &mut Option<Usage>) {
    let Some(u) = v.get("usage").filter(|u| u.is_object()) else {
        return;
    };
    fold_counts(
        u,
        [
            &["prompt_tokens"],
            &["completion_tokens"],
            &["prompt_tokens_details", "cached_tokens"],
            &["total_tokens"],
        ],
        acc,
    );
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::usage::providers::request;
    use crate::usage::testing::{meter_json, meter_stream, u};

    /// The body the provider would send to `path` (as the registry normalizes it).
    fn ask_at(path: &str, body: &[u8]) -> Option<Vec<u8>> {
        CallPath::with(path, |p| OpenAiChat.request_stream_usage(p, body))
    }

    /// A stream as OpenAI sends it (shapes from the API reference): a role chunk, content, a
    /// tool call's arguments, the finish chunk, the usage chunk asked for, `[DONE]`.
    pub(crate) const STREAM: &str = concat!(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello there, \"},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\\\"Paris\\\"}\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":10,\"total_tokens\":29,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn usage_from_json_bodies() {
        let cases = [
            (
                "chat completion",
                r#"{"id":"x","object":"chat.completion","choices":[{"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19,"prompt_tokens_details":{"cached_tokens":4}}}"#,
                u(12, 4, 7),
            ),
            (
                "embeddings",
                r#"{"object":"list","data":[{"embedding":[0.1]}],"usage":{"prompt_tokens":8,"total_tokens":8}}"#,
                u(8, 0, 0),
            ),
            ("no usage", r#"{"ok":true}"#, None),
            ("usage null", r#"{"usage":null}"#, None),
            // Other providers' shapes are not this one's: no report, never a zero.
            (
                "anthropic's",
                r#"{"type":"message","usage":{"input_tokens":20,"output_tokens":5}}"#,
                None,
            ),
            // Nor is a report with nothing readable in it.
            ("empty", r#"{"usage":{}}"#, None),
            (
                "negative",
                r#"{"usage":{"prompt_tokens":3,"completion_tokens":-5}}"#,
                None,
            ),
            (
                "fractional",
                r#"{"usage":{"prompt_tokens":3,"completion_tokens":5.5}}"#,
                None,
            ),
            (
                "a string",
                r#"{"usage":{"prompt_tokens":3,"completion_tokens":"500"}}"#,
                None,
            ),
            (
                "cached count unreadable",
                r#"{"usage":{"prompt_tokens":3,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":-1}}}"#,
                None,
            ),
            // A partial report: the input alone is no report (the answer's output is unknown,
            // not zero), unless a total tells the output.
            (
                "output missing",
                r#"{"choices":[{"message":{"content":"long"}}],"usage":{"prompt_tokens":10}}"#,
                None,
            ),
            (
                "output null",
                r#"{"usage":{"prompt_tokens":10,"completion_tokens":null}}"#,
                None,
            ),
            (
                "output from the total",
                r#"{"usage":{"prompt_tokens":10,"completion_tokens":null,"total_tokens":15}}"#,
                u(10, 0, 5),
            ),
            (
                "a total below the input",
                r#"{"usage":{"prompt_tokens":10,"total_tokens":5}}"#,
                None,
            ),
            // Nor is one without the input: every call sends a prompt.
            (
                "input missing",
                r#"{"usage":{"completion_tokens":2000}}"#,
                None,
            ),
            (
                "input null",
                r#"{"usage":{"prompt_tokens":null,"completion_tokens":2000,"total_tokens":9500}}"#,
                None,
            ),
            (
                "no input",
                r#"{"usage":{"prompt_tokens":0,"completion_tokens":2000}}"#,
                None,
            ),
        ];
        for (name, body, want) in cases {
            assert_eq!(meter_json(&OpenAiChat, body), want, "{name}");
        }
    }

    #[test]
    fn a_stream_is_metered_and_estimated_however_it_is_split() {
        // "" counts one, "Hello there, " 13 bytes → 4, the arguments 16 bytes → 4.
        let cut = STREAM.find("usage\":{\"prompt").expect("usage event");
        meter_stream(&OpenAiChat, STREAM, u(19, 0, 10), 9, cut);
        // The usage chunk split across reads.
        let split = [
            "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
            "data: {\"choices\":[],\"usa",
            "ge\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
        ]
        .concat();
        let cut = split.find("data: {\"choices\":[],").expect("usage event");
        meter_stream(&OpenAiChat, &split, u(5, 0, 2), 1, cut);
    }

    #[test]
    fn generated_content_counts_every_kind_of_delta() {
        let event: Value = serde_json::from_str(
            r#"{"choices":[{"delta":{"content":"ab","refusal":"cd","reasoning_content":"ef","tool_calls":[{"function":{"arguments":"gh"}},{"function":{}}]}},{"delta":{"content":"ij"}}]}"#,
        )
        .expect("json");
        let mut g = Generated::default();
        OpenAiChat.count_generated(&event, &mut g);
        // A delta a choice and one a tool call that carries anything, every string counted.
        assert_eq!(
            g,
            Generated {
                bytes: 10,
                deltas: 3,
                nonempty: 3,
                ..Generated::default()
            }
        );
        // A legacy `function_call` (the `functions` parameter) is output too.
        let mut legacy = Generated::default();
        OpenAiChat.count_generated(
            &serde_json::json!({"choices":[{"delta":{"function_call":{"name":"f","arguments":"{\"a\":1}"}}}]}),
            &mut legacy,
        );
        assert_eq!((legacy.bytes, legacy.deltas), (8, 1), "{legacy:?}");
        // Audio (by its transcript, not its base64 data) and `reasoning` are output too.
        let mut audio = Generated::default();
        OpenAiChat.count_generated(
            &serde_json::json!({"choices":[{"delta":{"audio":{"id":"audio_1","data":"AAAABBBB","transcript":"hi"},"reasoning":"why"}}]}),
            &mut audio,
        );
        assert_eq!(
            audio,
            Generated {
                bytes: 5,
                deltas: 2,
                nonempty: 2,
                ..Generated::default()
            }
        );
        // A chunk of audio data alone is a delta of output (at least a token), never nothing.
        let mut data_only = Generated::default();
        OpenAiChat.count_generated(
            &serde_json::json!({"choices":[{"delta":{"audio":{"id":"audio_1","data":"AAAABBBB"}}}]}),
            &mut data_only,
        );
        assert_eq!(
            (data_only.bytes, data_only.deltas, data_only.nonempty),
            (0, 1, 1)
        );
        let mut none = Generated::default();
        OpenAiChat.count_generated(
            &serde_json::json!({"type":"content_block_delta","delta":{"text":"x"}}),
            &mut none,
        );
        assert_eq!(none, Generated::default());
    }

    #[test]
    fn model_and_ceiling_fields() {
        for (body, model, ceiling) in [
            (
                r#"{"model":"gpt-4o","max_tokens":7}"#,
                Some("gpt-4o"),
                Some(7),
            ),
            (
                r#"{"model":"o1","max_completion_tokens":8}"#,
                Some("o1"),
                Some(8),
            ),
            (
                r#"{"model":"m","max_tokens":7,"max_completion_tokens":8}"#,
                Some("m"),
                Some(8),
            ),
            (r#"{"messages":[]}"#, None, None),
        ] {
            let read = request::read_json_with(&[&OpenAiChat], body.as_bytes()).expect(body);
            assert_eq!(read.model.as_deref(), model, "{body}");
            assert_eq!(read.max_output_tokens, ceiling, "{body}");
        }
        // Responses' ceiling is not chat's.
        let read =
            request::read_json_with(&[&OpenAiChat], br#"{"max_output_tokens":9}"#).expect("read");
        assert_eq!(read.max_output_tokens, None);
    }

    #[test]
    fn a_legacy_completions_stream_is_metered_and_estimated() {
        let stream = concat!(
            "data: {\"id\":\"c\",\"object\":\"text_completion\",\"choices\":[{\"text\":\"Hello there\",\"index\":0,\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c\",\"object\":\"text_completion\",\"choices\":[{\"text\":\", friend\",\"index\":0,\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"id\":\"c\",\"object\":\"text_completion\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}\n\n",
            "data: [DONE]\n\n",
        );
        // "Hello there" → 3, ", friend" → 2.
        let cut = stream.find("\"choices\":[]").expect("usage event") - 40;
        meter_stream(&OpenAiChat, stream, u(3, 0, 4), 5, cut);
    }

    /// The body asked for usage is the body sent with one member added at the end: its other
    /// bytes are as they were (numbers are not spelt again), and it is read without a tree.
    #[test]
    fn asking_for_usage_adds_one_member_and_changes_nothing_else() {
        let body = r#"{"model":"m","x":1e15,"y":[1.50,{"z":"\u00e9"}],"stream":true} "#;
        let out = ask_at("/v1/chat/completions", body.as_bytes()).expect("asked");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"model":"m","x":1e15,"y":[1.50,{"z":"\u00e9"}],"stream":true,"stream_options":{"include_usage":true}} "#
        );
        // Options carried over (scalars; nothing nests in them), the last repeat winning.
        let body = r#"{"stream":true,"stream_options":{"include_usage":true},"stream_options":{"include_obfuscation":false,"include_usage":false,"n":{"a":1}}}"#;
        let out = ask_at("/v1/chat/completions", body.as_bytes()).expect("asked");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"include_obfuscation": false, "include_usage": true})
        );
        // Many options cannot opt a stream out: the first ones are carried over, usage is asked
        // for; one that asks already, past them, still counts as asking.
        let many: Vec<String> = (0..MAX_OPTIONS + 5)
            .map(|i| format!(r#""o{i}":1"#))
            .collect();
        let body = format!(
            r#"{{"stream":true,"stream_options":{{{}}}}}"#,
            many.join(",")
        );
        let out = ask_at("/v1/chat/completions", body.as_bytes()).expect("asked");
        let v: Value = serde_json::from_slice(&out).unwrap();
        let options = v["stream_options"].as_object().unwrap();
        assert_eq!(options.len(), MAX_OPTIONS + 1);
        assert_eq!(options["include_usage"], true);
        let body = format!(
            r#"{{"stream":true,"stream_options":{{{},"include_usage":true}}}}"#,
            many.join(",")
        );
        assert!(ask_at("/v1/chat/completions", body.as_bytes()).is_none());
    }

    /// SECURITY: a flag the quick read could not take (`"stream":1`) sent the body to a whole
    /// parse: 8 MiB of `[1,1,…]` took 600 MB.
    #[test]
    fn the_stream_flag_is_read_without_a_tree_of_the_body() {
        if !crate::in_own_process(
            "usage::providers::openai_chat::tests::the_stream_flag_is_read_without_a_tree_of_the_body",
        ) {
            return;
        }
        let ask = |body: &str| ask_at("/v1/chat/completions", body.as_bytes());
        let warm = format!(r#"{{"stream":true,"p":"{}"}}"#, "a".repeat(8 << 20));
        assert!(ask(&warm).is_some());
        drop(warm);
        for flag in ["1", "true"] {
            let mut body = String::with_capacity(9 << 20);
            body.push_str(&format!(r#"{{"model":"m","stream":{flag},"x":[1"#));
            while body.len() < 8 << 20 {
                body.push_str(",1");
            }
            body.push_str("]}");
            let before = crate::peak_resident_bytes();
            let asked = ask(&body);
            let grown = crate::peak_resident_bytes() - before;
            assert_eq!(asked.is_some(), flag == "true");
            // Asked: the body once more, as it is sent.
            assert!(
                grown < body.len() as u64 * 3 / 2,
                "stream {flag}: a {}-byte body took {grown} bytes more at its peak",
                body.len()
            );
        }
    }

    #[test]
    fn stream_usage_is_requested_only_when_missing() {
        let ask = |path: &str, body: &str| ask_at(path, body.as_bytes());
        let with = ask("/v1/chat/completions", r#"{"model":"m","stream":true}"#).expect("changed");
        let v: Value = serde_json::from_slice(&with).expect("json");
        assert_eq!(v["stream_options"]["include_usage"], true);
        // `null` options are no options: asked too (or the stream would report no usage).
        let with = ask(
            "/v1/chat/completions",
            r#"{"model":"m","stream":true,"stream_options":null}"#,
        )
        .expect("changed");
        let v: Value = serde_json::from_slice(&with).expect("json");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(ask(
            "/v1/chat/completions",
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#
        )
        .is_none());
        assert!(ask("/v1/chat/completions", r#"{"stream":false}"#).is_none());
        assert!(ask("/v1/responses", r#"{"stream":true}"#).is_none());
        assert!(ask("/v1/chat/completions", "not json").is_none());
        assert!(ask("/chat/completions", r#"{"stream":true}"#).is_some());
        // Legacy completions are asked too.
        assert!(ask(
            "/v1/completions",
            r#"{"model":"m","prompt":"p","stream":true}"#
        )
        .is_some());
        // What the quick read of the flag must not get wrong: the full parse decides these.
        // SECURITY: a stream the proxy fails to ask usage for is a stream it cannot meter.
        for streaming in [
            r#"{"stream":false,"stream":true}"#,
            r#"{"str\u0065am":true}"#,
            r#"{"\u0073tream":true}"#,
            r#"{"\u0073\u0074\u0072\u0065\u0061\u006d":true}"#,
            r#"{"model":"m","messages":[{"stream":false}],"stream":true}"#,
        ] {
            assert!(
                ask("/v1/chat/completions", streaming).is_some(),
                "{streaming}"
            );
        }
        for not_streaming in [
            r#"{"stream":true,"stream":false}"#,
            r#"{"stream":"true"}"#,
            r#"{"stream":1}"#,
            r#"{"stream":null}"#,
            r#"{"messages":[{"stream":true}]}"#,
            "[true]",
            r#"{"stream":true} trailing"#,
        ] {
            assert!(
                ask("/v1/chat/completions", not_streaming).is_none(),
                "{not_streaming}"
            );
        }
        let kept = ask(
            "/v1/chat/completions",
            r#"{"stream":true,"stream_options":{"other":1}}"#,
        )
        .expect("changed");
        let v: Value = serde_json::from_slice(&kept).expect("json");
        assert_eq!(
            (
                v["stream_options"]["other"].clone(),
                v["stream_options"]["include_usage"].clone()
            ),
            (1.into(), true.into())
        );
    }

    #[test]
    fn the_requested_usage_event_is_recognized() {
        let is =
            |s: &str| OpenAiChat.is_requested_usage_event(&serde_json::from_str(s).expect("json"));
        assert!(is(r#"{"choices":[],"usage":{"prompt_tokens":1}}"#));
        assert!(!is(
            r#"{"choices":[{"delta":{}}],"usage":{"prompt_tokens":1}}"#
        ));
        assert!(!is(r#"{"choices":[],"usage":null}"#));
        assert!(!is(r#"{"usage":{"prompt_tokens":1}}"#));
    }
}
