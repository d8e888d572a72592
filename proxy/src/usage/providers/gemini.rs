//! Google Gemini: `generateContent` and `streamGenerateContent` on the Gemini API
//! (`/v1beta/models/{model}:generateContent`) and Vertex AI
//! (`/v1/projects/{p}/locations/{l}/publishers/google/models/{model}:generateContent`).
//!
//! - The model is in the path; the output ceiling is `generationConfig.maxOutputTokens`.
//! - Usage: `usageMetadata.promptTokenCount` (cached tokens included, `cachedContentTokenCount`
//!   of them from the cache), `candidatesTokenCount` plus `thoughtsTokenCount` as output; in a
//!   JSON body, in each SSE event (`alt=sse`, cumulative), or in the elements of the JSON-array
//!   stream (the default `streamGenerateContent` framing, read whole at its end).

use serde_json::Value;

use super::{count, CallPath, Generated, KeyPositions, Provider, RequestFields};
use crate::usage::Usage;

/// Google Gemini (`generativelanguage.googleapis.com`, Vertex AI paths).
#[derive(Debug, Clone, Copy)]
pub struct Gemini;

const OPERATIONS: &[&str] = &[":generatecontent", ":streamgeneratecontent"];

/// Operations (`…:op`) and collections (`…/name`) that start work the proxy cannot meter: jobs
/// billed later, generations priced per image or second, partner models whose API the proxy
/// does not read.
const UNMETERED: &[(&str, &str)] = &[
    (":batchgeneratecontent", "a batch job"),
    // Billed per token, but their responses report no usage.
    (":embedcontent", "an embedding call that reports no usage"),
    (
        ":batchembedcontents",
        "an embedding call that reports no usage",
    ),
    (":asyncbatchembedcontent", "a batch job"),
    (":predictlongrunning", "a long-running generation"),
    (":predict", "a prediction"),
    // (Anthropic's models on Vertex AI are Anthropic's calls, metered: see `anthropic`.)
    (":rawpredict", "a partner model call"),
    (":streamrawpredict", "a partner model call"),
    ("/batchpredictionjobs", "a batch prediction job"),
    ("/tuningjobs", "a tuning job"),
    ("/tunedmodels", "a tuning job"),
    // File Search imports embed the file at indexing time, billed per token, with no usage.
    (":importfile", "a file search import"),
    (":uploadtofilesearchstore", "a file search import"),
    // Vertex AI Agent Engine (`reasoningEngines/{id}:query`): the agent runs models and tools
    // itself, and its answer reports no usage.
    (":query", "an Agent Engine query"),
    (":streamquery", "an Agent Engine query"),
    // A context cache is billed per token and hour of storage for as long as its `ttl`.
    (
        "/cachedcontents",
        "a context cache (billed per token-hour stored)",
    ),
];

/// Gemini's JSON front ends take a field by its proto name as well as its JSON name
/// (`generation_config.max_output_tokens`), each level apart: every spelling is read, and the
/// largest ceiling counts.
const FIELDS: RequestFields = RequestFields {
    model: &[],
    ceilings: &[
        &["generationConfig", "maxOutputTokens"],
        &["generationConfig", "max_output_tokens"],
        &["generation_config", "maxOutputTokens"],
        &["generation_config", "max_output_tokens"],
    ],
};

const KEY_POSITIONS: KeyPositions = KeyPositions {
    headers: &["x-goog-api-key", "authorization"],
    query: &["key"],
    body: &["api_key", "x-goog-api-key"],
};

impl Provider for Gemini {
    fn name(&self) -> &'static str {
        "google"
    }

    fn default_hosts(&self) -> &'static [&'static str] {
        &["generativelanguage.googleapis.com"]
    }

    fn is_call(&self, path: &CallPath<'_>) -> bool {
        // A base model, a tuned model (`tunedModels/…`, its model unnamed for prices) or a
        // Vertex AI endpoint (`endpoints/…`, likewise).
        ["/models/", "/tunedmodels/", "/endpoints/"]
            .iter()
            .any(|c| path.contains(c))
            && !path.contains("/models/:")
            && OPERATIONS.iter().any(|op| path.ends_with(op))
    }

    fn unmetered_work(&self, path: &CallPath<'_>) -> Option<&'static str> {
        UNMETERED
            .iter()
            .find(|(end, _)| path.ends_with(end))
            .map(|(_, what)| *what)
    }

    fn model_from_path(&self, path: &str) -> Option<String> {
        // Asked of every request's path: only one that may name a model is copied to find out.
        let path = super::routed(path, "/models/")?;
        let (head, op) = path.rsplit_once(':')?;
        let op = format!(":{op}");
        if !OPERATIONS.iter().any(|o| op.eq_ignore_ascii_case(o)) {
            return None;
        }
        let at = super::find_ignore_case(head, "/models/", true)? + "/models/".len();
        let model = &head[at..];
        (!model.is_empty() && !model.contains('/')).then(|| model.to_string())
    }

    fn job_model_fields(&self, path: &CallPath<'_>) -> &'static [&'static str] {
        // A Vertex AI tuning job and a Gemini API tuned model name the model they start from.
        if path.ends_with("/tuningjobs") || path.ends_with("/tunedmodels") {
            &["baseModel", "base_model"]
        } else {
            &[]
        }
    }

    fn model_addressed(&self, path: &str) -> Option<String> {
        let path = super::routed(path, "/models/")?;
        let (head, op) = path.rsplit_once(':')?;
        // A custom method's name is a word (`predictLongRunning`): an OpenAI fine-tuned model's
        // id (`/v1/models/ft:gpt-4o:org::id`) is a resource, not a method on one.
        if op.is_empty() || !op.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        let at = super::find_ignore_case(head, "/models/", true)? + "/models/".len();
        let model = &head[at..];
        (!model.is_empty() && !model.contains(['/', ':'])).then(|| model.to_string())
    }

    fn request_fields(&self) -> &'static RequestFields {
        &FIELDS
    }

    fn key_positions(&self) -> &'static KeyPositions {
        &KEY_POSITIONS
    }

    fn usage_from_json(&self, body: &Value, acc: &mut Option<Usage>) {
        // The JSON-array stream: each element reports the usage so far.
        match body.as_array() {
            Some(items) => items.iter().for_each(|v| fold(v, acc)),
            None => fold(body, acc),
        }
    }

    fn usage_members(&self) -> &'static [&'static str] {
        &["usageMetadata"]
    }

    fn usage_from_event(&self, event: &Value, acc: &mut Option<Usage>) {
        fold(event, acc);
    }

    fn count_generated(&self, event: &Value, generated: &mut Generated) {
        let Some(candidates) = event.get("candidates").and_then(Value::as_array) else {
            return;
        };
        for c in candidates {
            if let Some(parts) = c.pointer("/content/parts").and_then(Value::as_array) {
                // Every kind of part: text, `functionCall` arguments, `executableCode`, code
                // results; not a thought's signature, nor media's base64 text (`inlineData`,
                // `fileData`: an image or audio is billed by its length, not its bytes), though
                // a part of media alone is output all the same: at least a token.
                for p in parts {
                    let media = p.get("inlineData").or_else(|| p.get("fileData"));
                    generated.add_part(
                        Some(p),
                        &["thoughtSignature", "thought", "inlineData", "fileData"],
                        media.is_some_and(Value::is_object),
                    );
                }
            }
        }
    }
}

fn fold(v: &Value, acc: &mut Option<Usage>) {
    let Some(u) = v.get("usageMetadata").filter(|u| u.is_object()) else {
        return;
    };
    // An empty or unreadable report (`{}`, a negative or fractional count) is none.
    let (Ok(prompt), Ok(tool_use), Ok(cached), Ok(candidates), Ok(thoughts)) = (
        count(u, &["promptTokenCount"]),
        count(u, &["toolUsePromptTokenCount"]),
        count(u, &["cachedContentTokenCount"]),
        count(u, &["candidatesTokenCount"]),
        count(u, &["thoughtsTokenCount"]),
    ) else {
        return;
    };
    if prompt.is_none() && tool_use.is_none() && candidates.is_none() && thoughts.is_none() {
        return;
    }
    let entry = acc.get_or_insert_with(Usage::default);
    if prompt.is_some() || tool_use.is_some() {
        // What tools (code execution, URL context, search) fed back into the prompt is counted
        // apart from the prompt, and billed as input too. A stream's reports are cumulative:
        // one that leaves a count out has not taken it back.
        let input = prompt.unwrap_or(0).saturating_add(tool_use.unwrap_or(0));
        entry.input_tokens = entry.input_tokens.max(input);
    }
    if let Some(n) = cached {
        entry.cached_input_tokens = n;
    }
    if candidates.is_some() || thoughts.is_some() {
        // Thinking tokens are billed as output.
        entry.output_tokens = candidates
            .unwrap_or(0)
            .saturating_add(thoughts.unwrap_or(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::testing::{meter_json, meter_stream, u};

    /// Every kind of part a candidate streams is output the guard sees: a function call's
    /// name and arguments, executable code, text; not a thought's signature. Counted by text
    /// alone, a stream of function calls or code ran past every budget.
    #[test]
    fn every_kind_of_part_counts_as_generated() {
        let event = serde_json::json!({"candidates": [{"content": {"parts": [
            {"functionCall": {"name": "f", "args": {"city": "Paris", "n": 12}}},
            {"executableCode": {"language": "PYTHON", "code": "print(1)"}},
            {"text": "hi", "thoughtSignature": "c2lnbmF0dXJlLXNpZ25hdHVyZQ=="},
            {"thought": true},
            // Arguments named like metadata are arguments all the same.
            {"functionCall": {"name": "g", "args": {"thought": "abcd", "mimeType": "efgh"}}},
            {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        ]}}]});
        let mut g = Generated::default();
        Gemini.count_generated(&event, &mut g);
        // "f" "Paris" "12" "PYTHON" "print(1)" "hi" "g" "abcd" "efgh"; the image as one
        // delta (at least a token), not its base64 bytes.
        assert_eq!((g.bytes, g.deltas, g.digits), (33, 5, 3), "{g:?}");
    }

    #[test]
    fn usage_from_json_bodies_and_the_array_stream() {
        let cases = [
            (
                "generateContent",
                r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":3,"totalTokenCount":12},"modelVersion":"gemini-2.0-flash"}"#,
                u(9, 0, 3),
            ),
            (
                "thinking and cache",
                r#"{"usageMetadata":{"promptTokenCount":100,"cachedContentTokenCount":60,"candidatesTokenCount":5,"thoughtsTokenCount":20,"totalTokenCount":125}}"#,
                u(100, 60, 25),
            ),
            ("empty report", r#"{"usageMetadata":{}}"#, None),
            (
                "unreadable count",
                r#"{"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":-50}}"#,
                None,
            ),
            (
                "array stream, tool use reported in one chunk only",
                r#"[{"usageMetadata":{"promptTokenCount":10,"toolUsePromptTokenCount":40000}},{"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":5}}]"#,
                u(40_010, 0, 5),
            ),
            (
                "tool-use prompt",
                r#"{"usageMetadata":{"promptTokenCount":3,"toolUsePromptTokenCount":40000,"candidatesTokenCount":50,"totalTokenCount":40053}}"#,
                u(40_003, 0, 50),
            ),
            (
                "array stream",
                r#"[{"candidates":[{"content":{"parts":[{"text":"Hel"}]}}],"usageMetadata":{"promptTokenCount":9,"totalTokenCount":9}},
                    {"candidates":[{"content":{"parts":[{"text":"lo"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":4,"totalTokenCount":13}}]"#,
                u(9, 0, 4),
            ),
            (
                "error",
                r#"{"error":{"code":400,"message":"API key not valid","status":"INVALID_ARGUMENT"}}"#,
                None,
            ),
        ];
        for (name, body, want) in cases {
            assert_eq!(meter_json(&Gemini, body), want, "{name}");
        }
    }

    #[test]
    fn an_sse_stream_is_metered_however_it_is_split() {
        let stream = concat!(
            "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"The quick\"}],\"role\": \"model\"}}],\"usageMetadata\": {\"promptTokenCount\": 8,\"totalTokenCount\": 8}}\r\n\r\n",
            "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" brown fox\"}],\"role\": \"model\"},\"finishReason\": \"STOP\"}],\"usageMetadata\": {\"promptTokenCount\": 8,\"candidatesTokenCount\": 6,\"totalTokenCount\": 14}}\r\n\r\n",
        );
        meter_stream(&Gemini, stream, u(8, 0, 6), 0, 0);
    }

    #[test]
    fn calls_and_models() {
        let cases = [
            ("/v1beta/models/gemini-2.0-flash:generateContent", Some("gemini-2.0-flash")),
            ("/v1beta/models/gemini-1.5-pro:streamGenerateContent?alt=sse", Some("gemini-1.5-pro")),
            (
                "/v1/projects/p1/locations/us-central1/publishers/google/models/gemini-2.0-flash-001:generateContent",
                Some("gemini-2.0-flash-001"),
            ),
            ("/v1beta/models/gemini-2.0-flash%3AgenerateContent", Some("gemini-2.0-flash")),
            ("/v1beta/models/gemini-2.0-flash:countTokens", None),
            ("/v1beta/models/:generateContent", None),
            ("/v1/chat/completions", None),
        ];
        for (path, model) in cases {
            assert_eq!(Gemini.model_from_path(path).as_deref(), model, "{path}");
            assert_eq!(
                CallPath::with(path, |c| Gemini.is_call(&c)),
                model.is_some(),
                "{path}"
            );
        }
    }
}
