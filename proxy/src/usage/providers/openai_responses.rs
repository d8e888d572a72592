//! The OpenAI Responses API: `usage.input_tokens`, `output_tokens` and
//! `input_tokens_details.cached_tokens`, in the JSON body or, streamed, inside the final
//! `response.completed` event's `response` (streams report usage unasked); and the calls the
//! hosted tools made, billed each: one `web_search_call` or `file_search_call` item per call in
//! the response's `output`.
//!
//! The Images API reports usage the same way (`gpt-image-1`) and is read here too: a call to it
//! is an LLM call whether or not it names a model (the server's default is priced per image, so
//! it is an unknown model to the price table, not a free call). So is the Audio API: a
//! transcription's `usage` has the same members (`gpt-4o-transcribe`; `whisper-1` reports
//! seconds, no tokens, and is settled at its reservation), and speech answers with audio and no
//! usage (settled at its reservation). Being calls, their paths make a host an LLM destination
//! whatever declares it, so an upload form's `model` is read and decided on every
//! OpenAI-compatible server, not only on the hosts a route or `[[llm_provider]]` names.

use serde_json::Value;

use super::openai_chat::{HOSTS, KEY_POSITIONS, NAME};
use super::request::EACH;
use super::{fold_counts, CallPath, Generated, KeyPositions, Provider, RequestFields};
use crate::usage::{HostedCalls, Usage};

/// The OpenAI Responses API (`/v1/responses`, also under an Azure OpenAI deployment), the
/// Images API and the Audio API.
#[derive(Debug, Clone, Copy)]
pub struct OpenAiResponses;

const OPERATIONS: &[&str] = &[
    "responses",
    "images/generations",
    "images/edits",
    "images/variations",
];

/// The Audio API's operations, recognized as the others are (after `/v1/`) and also at the root,
/// unversioned: an OpenAI-compatible speech server serves them so too, and a client whose base
/// URL lacks `/v1` calls them so. Their upload forms name the model, which only an LLM
/// destination's body is read for. (Not after any prefix: a tool's own resource of that name,
/// `/api/meetings/42/audio/transcriptions`, would be priced as an LLM call.)
const AUDIO_OPERATIONS: &[&str] = &["audio/transcriptions", "audio/translations", "audio/speech"];

const FIELDS: RequestFields = RequestFields {
    // A hosted tool that runs a model of its own (`image_generation`'s `model`) uses it beside
    // the call's: one of its other models.
    model: &[&["model"], &["tools", EACH, "model"]],
    ceilings: &[&["max_output_tokens"]],
};

impl Provider for OpenAiResponses {
    fn name(&self) -> &'static str {
        NAME
    }

    fn default_hosts(&self) -> &'static [&'static str] {
        HOSTS
    }

    fn owns_host(&self, host: &str) -> bool {
        super::openai_chat::owns_openai_host(host)
    }

    fn is_call(&self, path: &CallPath<'_>) -> bool {
        OPERATIONS.iter().any(|op| path.is_openai_operation(op))
            || AUDIO_OPERATIONS
                .iter()
                .any(|op| path.is_openai_operation(op) || path.is_root_operation(op))
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
        &["response", "usage"]
    }

    fn whole_body_members(&self) -> &'static [&'static str] {
        &["output"]
    }

    fn usage_from_event(&self, event: &Value, acc: &mut Option<Usage>) {
        fold(event, acc);
    }

    /// `response.*.delta` events (output text, refusals, function-call arguments, reasoning);
    /// the matching `.done` events repeat the text and are not counted again. Each hosted tool
    /// call is an output item added (`response.output_item.added` of a `web_search_call` or
    /// `file_search_call`).
    fn count_generated(&self, event: &Value, generated: &mut Generated) {
        let Some(kind) = event.get("type").and_then(Value::as_str) else {
            return;
        };
        if kind.starts_with("response.") && kind.ends_with(".delta") {
            generated.add_all(event.get("delta"), &[]);
        } else if kind == "response.output_item.added" {
            if let Some(item) = event.pointer("/item/type").and_then(Value::as_str) {
                count_hosted_call(item, &mut generated.hosted_calls);
            }
        }
    }
}

/// Counts an output item of type `item` when it is a billed hosted tool call.
fn count_hosted_call(item: &str, calls: &mut HostedCalls) {
    match item {
        "web_search_call" => calls.web_searches += 1,
        "file_search_call" => calls.file_searches += 1,
        _ => {}
    }
}

fn fold(v: &Value, acc: &mut Option<Usage>) {
    // A stream carries the final response object inside `response.completed`.
    let v = v
        .get("response")
        .filter(|r| r.get("usage").is_some())
        .unwrap_or(v);
    let Some(u) = v.get("usage").filter(|u| u.is_object()) else {
        return;
    };
    fold_counts(
        u,
        [
            &["input_tokens"],
            &["output_tokens"],
            &["input_tokens_details", "cached_tokens"],
            &["total_tokens"],
        ],
        acc,
    );
    // Each call a hosted tool made is an output item of its own, billed each; the usage does
    // not count them.
    if let (Some(entry), Some(output)) = (acc.as_mut(), v.get("output").and_then(Value::as_array)) {
        let mut calls = HostedCalls::default();
        for item in output {
            if let Some(item) = item.get("type").and_then(Value::as_str) {
                count_hosted_call(item, &mut calls);
            }
        }
        entry.hosted_calls = calls;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::usage::providers::request;
    use crate::usage::testing::{meter_json, meter_stream, u};

    /// A stream as the Responses API sends it (shapes from the API reference), `\r\n` line ends.
    pub(crate) const STREAM: &str = concat!(
        "event: response.created\r\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r1\",\"usage\":null}}\r\n\r\n",
        "event: response.output_text.delta\r\ndata: {\"type\":\"response.output_text.delta\",\"item_id\":\"m1\",\"delta\":\"Bonjour \"}\r\n\r\n",
        "event: response.output_text.delta\r\ndata: {\"type\":\"response.output_text.delta\",\"item_id\":\"m1\",\"delta\":\"le monde\"}\r\n\r\n",
        "event: response.output_text.done\r\ndata: {\"type\":\"response.output_text.done\",\"text\":\"Bonjour le monde\"}\r\n\r\n",
        "event: response.completed\r\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r1\",\"usage\":{\"input_tokens\":36,\"input_tokens_details\":{\"cached_tokens\":8},\"output_tokens\":87,\"total_tokens\":123}}}\r\n\r\n",
    );

    #[test]
    fn usage_from_json_bodies() {
        let cases = [
            (
                "response",
                r#"{"id":"r1","object":"response","output":[],"usage":{"input_tokens":9,"input_tokens_details":{"cached_tokens":1},"output_tokens":3,"output_tokens_details":{"reasoning_tokens":2},"total_tokens":12}}"#,
                u(9, 1, 3),
            ),
            (
                "an image generation (gpt-image-1)",
                r#"{"created":1713833628,"data":[{"b64_json":"iVBORw0KGgo="}],"usage":{"input_tokens":50,"input_tokens_details":{"image_tokens":40,"text_tokens":10},"output_tokens":4160,"total_tokens":4210}}"#,
                u(50, 0, 4160),
            ),
            (
                "a dall-e image, no usage",
                r#"{"created":1713833628,"data":[{"url":"https://x"}]}"#,
                None,
            ),
            ("no usage", r#"{"id":"r1","status":"in_progress"}"#, None),
            (
                "chat's shape is not this one's: no report, never a zero",
                r#"{"usage":{"prompt_tokens":12,"completion_tokens":7}}"#,
                None,
            ),
            ("empty", r#"{"usage":{}}"#, None),
            (
                "negative",
                r#"{"usage":{"input_tokens":3,"output_tokens":-7}}"#,
                None,
            ),
        ];
        for (name, body, want) in cases {
            assert_eq!(meter_json(&OpenAiResponses, body), want, "{name}");
        }
    }

    /// Each `web_search_call` output item is a web search and each `file_search_call` a file
    /// search, in a body and in a stream's final response; other items (messages, function
    /// calls, reasoning), and the names in them, are not.
    #[test]
    fn hosted_tool_calls_are_counted() {
        let body = r#"{"id":"r1","object":"response","output":[{"type":"web_search_call","id":"ws_1","status":"completed","action":{"type":"search","query":"a"}},{"type":"reasoning","id":"rs_1"},{"type":"file_search_call","id":"fs_1","status":"completed","queries":["q"]},{"type":"web_search_call","id":"ws_2","status":"completed"},{"type":"message","content":[{"type":"output_text","text":"web_search_call"}]},{"type":"function_call","name":"file_search_call"}],"usage":{"input_tokens":9,"output_tokens":3}}"#;
        let want = Usage {
            hosted_calls: HostedCalls {
                web_searches: 2,
                file_searches: 1,
            },
            ..u(9, 0, 3).unwrap()
        };
        assert_eq!(meter_json(&OpenAiResponses, body), Some(want));
        let stream = format!(
            "event: response.web_search_call.completed\r\ndata: {{\"type\":\"response.web_search_call.completed\",\"item_id\":\"ws_1\"}}\r\n\r\nevent: response.completed\r\ndata: {{\"type\":\"response.completed\",\"response\":{body}}}\r\n\r\n"
        );
        meter_stream(&OpenAiResponses, &stream, Some(want), 0, 0);
        // Each search the stream shows starting counts, even when the final event never comes
        // (the agent hung up, or it was too large to read): no usage, but the searches stand.
        let added = "event: response.output_item.added\r\ndata: {\"type\":\"response.output_item.added\",\"output_index\":0,\"item\":{\"type\":\"web_search_call\",\"id\":\"ws_1\",\"status\":\"in_progress\"}}\r\n\r\n";
        let message = "event: response.output_item.added\r\ndata: {\"type\":\"response.output_item.added\",\"output_index\":1,\"item\":{\"type\":\"message\",\"id\":\"m_1\"}}\r\n\r\n";
        let file = added.replace("web_search_call", "file_search_call");
        let mut m =
            crate::usage::UsageMeter::for_response("text/event-stream", Some(&OpenAiResponses))
                .expect("meterable");
        m.feed(format!("{added}{message}{file}{added}{added}").as_bytes());
        let seen = HostedCalls {
            web_searches: 3,
            file_searches: 1,
        };
        assert_eq!((m.finish(), m.hosted_calls_seen()), (None, seen));
        // Past the copy limit the `output` is not kept (a long output would make the usage
        // unreadable too): the tokens are read, the searches are not (see the README).
        let long = body.replace(
            r#"{"type":"reasoning","id":"rs_1"}"#,
            &format!(r#"{{"type":"reasoning","id":"{}"}}"#, "x".repeat(3 << 20)),
        );
        assert_eq!(meter_json(&OpenAiResponses, &long), u(9, 0, 3));
    }

    #[test]
    fn a_stream_is_metered_and_estimated_however_it_is_split() {
        // "Bonjour " 8 → 2, "le monde" 8 → 2; the `.done` event is not counted again.
        let cut = STREAM
            .find("event: response.completed")
            .expect("usage event");
        meter_stream(&OpenAiResponses, STREAM, u(36, 8, 87), 4, cut);
        let one = "event: response.completed\r\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":3,\"input_tokens_details\":{\"cached_tokens\":1}}}}\r\n\r\n";
        meter_stream(&OpenAiResponses, one, u(9, 1, 3), 0, 0);
    }

    #[test]
    fn model_and_ceiling_fields() {
        let read = request::read_json_with(
            &[&OpenAiResponses],
            br#"{"model":"gpt-4.1","input":"hi","max_output_tokens":9}"#,
        )
        .expect("read");
        assert_eq!(read.model.as_deref(), Some("gpt-4.1"));
        assert_eq!(read.max_output_tokens, Some(9));
        let read =
            request::read_json_with(&[&OpenAiResponses], br#"{"max_tokens":9}"#).expect("read");
        assert_eq!(
            read.max_output_tokens, None,
            "chat's ceiling is not this one's"
        );
    }

    #[test]
    fn streams_need_no_usage_request() {
        assert!(CallPath::with("/v1/responses", |p| OpenAiResponses
            .request_stream_usage(p, br#"{"model":"m","stream":true}"#))
        .is_none());
    }
}
