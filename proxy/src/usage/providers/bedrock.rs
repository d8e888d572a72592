//! AWS Bedrock runtime: `InvokeModel` and `InvokeModelWithResponseStream` (the model's own body,
//! Anthropic's messages for Claude), `Converse` and `ConverseStream`.
//!
//! - The model is in the path (`/model/{modelId}/converse`), percent-encoded as the SDKs send
//!   it (`anthropic.claude-3-haiku-20240307-v1%3A0`); the output ceiling is
//!   `inferenceConfig.maxTokens` (Converse) or `max_tokens` (Anthropic bodies).
//! - Usage (Anthropic's reader runs too, [`Provider::also_reads`]): Converse's `usage.inputTokens`, `outputTokens`, `cacheReadInputTokens` (counted
//!   apart from `inputTokens`), in the JSON body or in the stream's `metadata` event; an
//!   Anthropic body's `usage` (read as [`super::anthropic`] reads it) and the last chunk's
//!   `amazon-bedrock-invocationMetrics`.
//! - Streams are AWS event-stream frames ([`crate::usage::eventstream`]); an
//!   `InvokeModelWithResponseStream` chunk's `bytes` (base64 JSON) is decoded before it is read.
//! - Requests are signed (SigV4), never keyed: an agent's own signature or session token toward a
//!   managed host is a raw credential.

use serde_json::Value;

use super::anthropic::Anthropic;
use super::request::EACH;
use super::{count, num, CallPath, Generated, KeyPositions, Provider, RequestFields};
use crate::usage::Usage;

/// AWS Bedrock runtime.
#[derive(Debug, Clone, Copy)]
pub struct Bedrock;

const OPERATIONS: &[&str] = &[
    "/invoke",
    "/invoke-with-response-stream",
    "/converse",
    "/converse-stream",
];

/// Requests that start work the proxy cannot meter: the runtime's asynchronous invocation, and
/// the control plane's jobs and purchases (`bedrock.<region>.amazonaws.com`).
const UNMETERED: &[(&str, &str)] = &[
    ("/async-invoke", "an asynchronous invocation"),
    (
        "/invoke-with-bidirectional-stream",
        "a bidirectional stream",
    ),
    ("/model-invocation-job", "a batch inference job"),
    ("/model-customization-jobs", "a model customization job"),
    ("/provisioned-model-throughput", "provisioned throughput"),
    ("/evaluation-jobs", "an evaluation job"),
    // `InvokeDataAutomationAsync` elsewhere than on its runtime's host (a gateway).
    (
        "/invokedataautomationasync",
        "a Bedrock Data Automation job",
    ),
    // Bedrock Agents' knowledge-base answers: a model writes them, and reports no usage.
    ("/retrieveandgenerate", "a knowledge-base answer"),
    ("/retrieveandgeneratestream", "a knowledge-base answer"),
];

/// A runtime path's model id and operation: `/model/{id}/{operation}` (routed, compared
/// percent-decoded). The id may hold an escaped `/` (an inference profile's ARN): the operation
/// is the last segment, whatever comes before it.
fn model_and_operation(path: &str) -> Option<(String, String)> {
    let path = super::routed(path, "/model/")?;
    let rest = path
        .get(.."/model/".len())
        .filter(|p| p.eq_ignore_ascii_case("/model/"))
        .map(|_| &path["/model/".len()..])?;
    let (id, op) = rest.trim_end_matches('/').rsplit_once('/')?;
    (!id.is_empty() && !op.is_empty()).then(|| (id.to_string(), op.to_string()))
}

/// Bedrock Agents' `InvokeAgent`: `/agents/{id}/agentAliases/{alias}/sessions/{session}/text`
/// (paths are compared lowercased).
const AGENT_ALIASES: &str = "/agentaliases/";
const AGENT_TEXT: &str = "/text";
/// `ApplyGuardrail`: `/guardrail/{id}/version/{version}/apply`.
const GUARDRAIL_APPLY: &str = "/guardrail/*/version/*/apply";

const FIELDS: RequestFields = RequestFields {
    // Bedrock Agents name the models they run: an inline agent's `foundationModel` (and its
    // collaborators' and prompt overrides', each decided too), a prompt optimization's
    // `targetModelId`, a knowledge-base answer's `modelArn`.
    model: &[
        &["foundationModel"],
        &["collaborators", EACH, "foundationModel"],
        &[
            "promptOverrideConfiguration",
            "promptConfigurations",
            EACH,
            "foundationModel",
        ],
        &[
            "collaborators",
            EACH,
            "promptOverrideConfiguration",
            "promptConfigurations",
            EACH,
            "foundationModel",
        ],
        &["targetModelId"],
        &[
            "retrieveAndGenerateConfiguration",
            "knowledgeBaseConfiguration",
            "modelArn",
        ],
        &[
            "retrieveAndGenerateConfiguration",
            "externalSourcesConfiguration",
            "modelArn",
        ],
    ],
    ceilings: &[&["inferenceConfig", "maxTokens"], &["max_tokens"]],
};

const KEY_POSITIONS: KeyPositions = KeyPositions {
    headers: &["authorization", "x-amz-security-token"],
    query: &[
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
    ],
    body: &[],
};

/// Bedrock's control plane, `bedrock.<region>.amazonaws.com` (and its FIPS spelling), where
/// batch inference, customization jobs and provisioned throughput are created; ignoring ASCII
/// case and a trailing dot.
pub fn is_control_plane_host(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    let starts = |p: &str| {
        host.get(..p.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(p))
    };
    (starts("bedrock.") || starts("bedrock-fips.")) && super::host_ends_with(host, ".amazonaws.com")
}

/// `bedrock-runtime.<region>.amazonaws.com`, Bedrock Agents' `bedrock-agent-runtime.<region>…`,
/// AgentCore's `bedrock-agentcore.<region>…` and Data Automation's
/// `bedrock-data-automation-runtime.<region>…` (and their FIPS spellings), ignoring ASCII case
/// and a trailing dot, without allocating.
fn is_runtime_host(host: &str) -> bool {
    runtime_host(host).is_some()
}

/// What every operation that is not a read is toward a runtime whose work the proxy cannot
/// meter: Bedrock Agents' (agents, inline agents, flows, knowledge-base answers and queries,
/// reranking, prompt optimization: they run models or are billed by AWS without a usage report
/// the proxy can read), AgentCore's (agent runtimes, code interpreter and browser sessions,
/// billed per second of compute) and Data Automation's (`InvokeDataAutomationAsync`, a job
/// billed per page, image or minute, named by a header on the path `/`). `None`: another host.
pub fn agent_runtime_work(host: &str) -> Option<&'static str> {
    runtime_host(host).flatten()
}

/// Whether `host` is a Bedrock runtime host, and if so what its non-read operations are when
/// none is metered (see [`agent_runtime_work`]); an interface VPC endpoint's name
/// (`vpce-….bedrock-runtime.<region>.vpce.amazonaws.com`) too.
fn runtime_host(host: &str) -> Option<Option<&'static str>> {
    let host = host.trim_end_matches('.').as_bytes();
    let endpoint = host
        .get(..5)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"vpce-"));
    let host = if endpoint {
        &host[memchr::memchr(b'.', host)? + 1..]
    } else {
        host
    };
    let strip_prefix = |(p, agent): (&str, Option<&'static str>)| {
        host.get(..p.len())
            .filter(|h| h.eq_ignore_ascii_case(p.as_bytes()))
            .map(|_| (&host[p.len()..], agent))
    };
    let (rest, agent) = [
        ("bedrock-runtime.", None),
        ("bedrock-runtime-fips.", None),
        ("bedrock-agent-runtime.", Some("Bedrock Agents work")),
        ("bedrock-agent-runtime-fips.", Some("Bedrock Agents work")),
        ("bedrock-agentcore.", Some("Bedrock AgentCore work")),
        ("bedrock-agentcore-fips.", Some("Bedrock AgentCore work")),
        (
            "bedrock-data-automation-runtime.",
            Some("a Bedrock Data Automation job"),
        ),
        (
            "bedrock-data-automation-runtime-fips.",
            Some("a Bedrock Data Automation job"),
        ),
    ]
    .into_iter()
    .find_map(strip_prefix)?;
    const SUFFIX: &[u8] = b".amazonaws.com";
    let region = rest
        .len()
        .checked_sub(SUFFIX.len())
        .filter(|at| rest[*at..].eq_ignore_ascii_case(SUFFIX))
        .map(|at| &rest[..at])?;
    let region = if endpoint {
        region
            .len()
            .checked_sub(5)
            .filter(|at| region[*at..].eq_ignore_ascii_case(b".vpce"))
            .map(|at| &region[..at])?
    } else {
        region
    };
    let valid = !region.is_empty()
        && region
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-');
    valid.then_some(agent)
}

impl Provider for Bedrock {
    fn name(&self) -> &'static str {
        "bedrock"
    }

    fn default_hosts(&self) -> &'static [&'static str] {
        &[]
    }

    fn owns_host(&self, host: &str) -> bool {
        is_runtime_host(host)
    }

    fn is_call(&self, path: &CallPath<'_>) -> bool {
        path.starts_with("/model/") && OPERATIONS.iter().any(|op| path.ends_with(op))
    }

    fn unmetered_work(&self, path: &CallPath<'_>) -> Option<&'static str> {
        // Bedrock Agents (`bedrock-agent-runtime.<region>.amazonaws.com`): an agent calls its
        // models itself, and its answer reports no usage.
        if path.contains(AGENT_ALIASES) && path.ends_with(AGENT_TEXT) {
            return Some("a Bedrock agent invocation");
        }
        // `ApplyGuardrail`, billed per text unit checked, with no usage the proxy reads.
        // AgentCore's `InvokeAgentRuntime` on any host (its own is refused whole, see
        // [`agent_runtime_work`]): the agent runs models and tools, billed per second.
        // (The ARN is percent-encoded in the path, and decoded here: any segments between.)
        if path.contains("/runtimes/") && path.ends_with("/invocations") {
            return Some("Bedrock AgentCore work");
        }
        if path.before(GUARDRAIL_APPLY).is_some() {
            return Some("a guardrail check");
        }
        UNMETERED
            .iter()
            .find(|(end, _)| path.ends_with(end))
            .map(|(_, what)| *what)
    }

    fn model_from_path(&self, path: &str) -> Option<String> {
        let (id, op) = model_and_operation(path)?;
        OPERATIONS
            .iter()
            .any(|o| o[1..].eq_ignore_ascii_case(&op))
            .then_some(id)
    }

    fn job_model_fields(&self, path: &CallPath<'_>) -> &'static [&'static str] {
        if [
            "/async-invoke",
            "/model-invocation-job",
            "/provisioned-model-throughput",
        ]
        .iter()
        .any(|end| path.ends_with(end))
        {
            &["modelId"]
        } else if path.ends_with("/model-customization-jobs") {
            &["baseModelIdentifier"]
        } else {
            &[]
        }
    }

    fn model_addressed(&self, path: &str) -> Option<String> {
        let (id, op) = model_and_operation(path)?;
        // The runtime's operations are words joined by `-` (`count-tokens`,
        // `invoke-with-bidirectional-stream`).
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'-';
        op.bytes().all(word).then_some(id)
    }

    fn request_fields(&self) -> &'static RequestFields {
        &FIELDS
    }

    fn key_positions(&self) -> &'static KeyPositions {
        &KEY_POSITIONS
    }

    fn usage_from_json(&self, body: &Value, acc: &mut Option<Usage>) {
        fold_converse(body, acc);
    }

    fn usage_members(&self) -> &'static [&'static str] {
        &["usage"]
    }

    fn also_reads(&self) -> &'static [&'static dyn Provider] {
        &[&Anthropic]
    }

    fn usage_from_event(&self, event: &Value, acc: &mut Option<Usage>) {
        fold_converse(event, acc);
        if let Some(m) = event.get("amazon-bedrock-invocationMetrics") {
            let entry = acc.get_or_insert_with(Usage::default);
            if let Some(n) = num(m, &["inputTokenCount"]) {
                entry.input_tokens = entry.input_tokens.max(n);
            }
            if let Some(n) = num(m, &["outputTokenCount"]) {
                entry.output_tokens = n;
            }
        }
    }

    /// Converse's `contentBlockDelta` (text, tool input, reasoning).
    fn count_generated(&self, event: &Value, generated: &mut Generated) {
        if let Some(delta) = event
            .get("delta")
            .filter(|_| event.get("contentBlockIndex").is_some())
        {
            // Text, tool input, reasoning (its redacted form too), and any other kind; not a
            // reasoning block's signature.
            generated.add_all(Some(delta), &["signature"]);
        }
    }
}

/// Converse's usage object: camelCase counters. Only a usage object with one of them counts (an
/// Anthropic `usage` is read by its own reader).
fn fold_converse(v: &Value, acc: &mut Option<Usage>) {
    let Some(u) = v
        .get("usage")
        .filter(|u| u.get("inputTokens").is_some() || u.get("outputTokens").is_some())
    else {
        return;
    };
    // An unreadable report (a negative or fractional count) is none.
    let (Ok(input), Ok(output), Ok(cached), Ok(written)) = (
        count(u, &["inputTokens"]),
        count(u, &["outputTokens"]),
        count(u, &["cacheReadInputTokens"]),
        count(u, &["cacheWriteInputTokens"]),
    ) else {
        return;
    };
    // The writes for the one-hour cache (`cacheDetails`, one entry per lifetime).
    let mut long = 0u64;
    for detail in u
        .get("cacheDetails")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let hour = detail
            .get("ttl")
            .and_then(Value::as_str)
            .is_some_and(|t| t.eq_ignore_ascii_case("1h"));
        match count(detail, &["inputTokens"]) {
            Ok(n) if hour => long = long.saturating_add(n.unwrap_or(0)),
            Ok(_) => {}
            Err(()) => return,
        }
    }
    let entry = acc.get_or_insert_with(Usage::default);
    let (cached, written) = (cached.unwrap_or(0), written.unwrap_or(0));
    if let Some(n) = input {
        // Cache reads and writes are counted apart from `inputTokens`; the input is all three.
        entry.input_tokens = n.saturating_add(cached).saturating_add(written);
    }
    entry.cached_input_tokens = cached;
    entry.cache_write_input_tokens = written;
    entry.cache_write_long_input_tokens = long.min(written);
    if let Some(n) = output {
        entry.output_tokens = n;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::usage::eventstream::{event, frame};
    use crate::usage::testing::{meter_json, u};
    use crate::usage::UsageMeter;
    use base64::Engine as _;

    /// A `ConverseStream` response as Bedrock sends it (event names and payloads from the API
    /// reference): message start, two text deltas, a tool-use delta, stop, metadata with usage.
    pub(crate) fn converse_stream() -> Vec<u8> {
        let mut s = Vec::new();
        for (t, p) in [
            ("messageStart", r#"{"p":"abcd","role":"assistant"}"#),
            (
                "contentBlockDelta",
                r#"{"contentBlockIndex":0,"delta":{"text":"Hello"},"p":"ab"}"#,
            ),
            (
                "contentBlockDelta",
                r#"{"contentBlockIndex":0,"delta":{"text":" there, friend"},"p":"a"}"#,
            ),
            ("contentBlockStop", r#"{"contentBlockIndex":0,"p":"abc"}"#),
            ("messageStop", r#"{"p":"abcdef","stopReason":"end_turn"}"#),
            (
                "metadata",
                r#"{"metrics":{"latencyMs":312},"p":"abc","usage":{"cacheReadInputTokens":4,"inputTokens":21,"outputTokens":9,"totalTokens":34}}"#,
            ),
        ] {
            s.extend(event(t, p));
        }
        s
    }

    /// An `InvokeModelWithResponseStream` response for a Claude model: Anthropic's events, each
    /// base64 in a `chunk`'s `bytes`, the last with Bedrock's invocation metrics.
    pub(crate) fn invoke_stream() -> Vec<u8> {
        let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
        let mut s = Vec::new();
        for e in [
            r#"{"type":"message_start","message":{"id":"m","model":"claude","usage":{"input_tokens":13,"output_tokens":1}}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi there"}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}"#,
            r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":13,"outputTokenCount":7,"invocationLatency":400,"firstByteLatency":200}}"#,
        ] {
            s.extend(event(
                "chunk",
                &format!(r#"{{"bytes":"{}","p":"ab"}}"#, b64(e)),
            ));
        }
        s
    }

    fn meter_es(chunks: &[&[u8]], provider: Option<&'static dyn Provider>) -> UsageMeter {
        let mut m = UsageMeter::for_response("application/vnd.amazon.eventstream", provider)
            .expect("meter");
        for c in chunks {
            m.feed(c);
        }
        m
    }

    #[test]
    fn usage_from_json_bodies() {
        let cases = [
            (
                "converse",
                r#"{"output":{"message":{"role":"assistant","content":[{"text":"hi"}]}},"stopReason":"end_turn","usage":{"inputTokens":30,"outputTokens":12,"totalTokens":42},"metrics":{"latencyMs":100}}"#,
                u(30, 0, 12),
            ),
            (
                "converse with cache reads",
                r#"{"usage":{"inputTokens":10,"cacheReadInputTokens":90,"outputTokens":1,"totalTokens":101}}"#,
                u(100, 90, 1),
            ),
            (
                "converse with one-hour cache writes",
                r#"{"usage":{"inputTokens":3,"cacheWriteInputTokens":27000,"cacheDetails":[{"ttl":"1h","inputTokens":20000},{"ttl":"5m","inputTokens":7000}],"outputTokens":50,"totalTokens":27053}}"#,
                Some(Usage {
                    input_tokens: 27_003,
                    cached_input_tokens: 0,
                    cache_write_input_tokens: 27_000,
                    cache_write_long_input_tokens: 20_000,
                    output_tokens: 50,
                    hosted_calls: Default::default(),
                }),
            ),
            (
                "converse, an unreadable count",
                r#"{"usage":{"inputTokens":-3,"outputTokens":50,"totalTokens":47}}"#,
                None,
            ),
            (
                "converse with cache writes",
                r#"{"usage":{"inputTokens":3,"cacheWriteInputTokens":27000,"cacheReadInputTokens":10,"outputTokens":50,"totalTokens":27063}}"#,
                Some(Usage {
                    input_tokens: 27_013,
                    cached_input_tokens: 10,
                    cache_write_input_tokens: 27_000,
                    cache_write_long_input_tokens: 0,
                    output_tokens: 50,
                    hosted_calls: Default::default(),
                }),
            ),
            (
                "invoke, anthropic body",
                r#"{"id":"msg_bdrk_1","type":"message","role":"assistant","content":[],"usage":{"input_tokens":8,"output_tokens":3}}"#,
                u(8, 0, 3),
            ),
            (
                "error",
                r#"{"message":"The security token included in the request is invalid."}"#,
                None,
            ),
        ];
        for (name, body, want) in cases {
            assert_eq!(meter_json(&Bedrock, body), want, "{name}");
        }
    }

    /// Both streams, split at every byte boundary and byte by byte, as Bedrock's and as an
    /// unknown provider's: the exact usage, and the estimate from the deltas.
    #[test]
    fn eventstreams_are_metered_however_they_are_split() {
        for (name, s, want, estimate) in [
            ("converse-stream", converse_stream(), u(25, 4, 9), 9),
            (
                "invoke-with-response-stream",
                invoke_stream(),
                u(13, 0, 7),
                7,
            ),
        ] {
            for who in [Some(&Bedrock as &'static dyn Provider), None] {
                let whole = meter_es(&[&s], who);
                assert!(whole.is_stream());
                assert_eq!(whole.finish(), want, "{name} {who:?}");
                assert_eq!(whole.output_estimate(), estimate, "{name} {who:?}");
                for at in 0..=s.len() {
                    let m = meter_es(&[&s[..at], &s[at..]], who);
                    assert_eq!(m.finish(), want, "{name} {who:?} split at {at}");
                }
                let bytes: Vec<&[u8]> = s.chunks(1).collect();
                assert_eq!(meter_es(&bytes, who).finish(), want, "{name} byte by byte");
            }
        }
        // Before the metadata event: content only, an estimate from the deltas, each rounded up
        // (5 bytes → 2, 14 bytes → 4).
        let mut partial_stream = event("messageStart", r#"{"role":"assistant"}"#);
        partial_stream.extend(event(
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"text":"Hello"}}"#,
        ));
        partial_stream.extend(event(
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"text":" there, friend"}}"#,
        ));
        let partial = meter_es(&[&partial_stream], Some(&Bedrock));
        assert_eq!(partial.finish(), None);
        assert_eq!(partial.output_estimate(), 6);
    }

    /// A malformed frame, a truncated stream or an exception: the usage is unknown (never zero).
    #[test]
    fn malformed_or_truncated_streams_are_usage_unknown() {
        let s = converse_stream();
        let mut flipped = s.clone();
        let at = s.len() - 20;
        flipped[at] ^= 0x20;
        assert_eq!(meter_es(&[&flipped], Some(&Bedrock)).finish(), None, "crc");
        assert_eq!(
            meter_es(&[&s[..s.len() - 1]], Some(&Bedrock)).finish(),
            None,
            "truncated"
        );
        let exception = frame(
            &[
                (":exception-type", "throttlingException"),
                (":content-type", "application/json"),
                (":message-type", "exception"),
            ],
            br#"{"message":"Too many requests","usage":{"inputTokens":1,"outputTokens":1}}"#,
        );
        assert_eq!(
            meter_es(&[&exception], Some(&Bedrock)).finish(),
            None,
            "exception"
        );
    }

    #[test]
    fn calls_models_and_hosts() {
        let p = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream";
        assert!(CallPath::with(p, |c| Bedrock.is_call(&c)));
        assert_eq!(
            Bedrock.model_from_path(p).as_deref(),
            Some("anthropic.claude-3-haiku-20240307-v1:0")
        );
        let arn = "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.meta.llama3/invoke?x=1";
        assert!(CallPath::with(arn, |c| Bedrock.is_call(&c)));
        assert_eq!(
            Bedrock.model_from_path(arn).as_deref(),
            Some("arn:aws:bedrock:us-east-1:1:inference-profile/us.meta.llama3")
        );
        for not in [
            "/model/x/other",
            "/models/x/converse",
            "/model//converse",
            "/v1/messages",
        ] {
            assert!(Bedrock.model_from_path(not).is_none(), "{not}");
        }
        assert!(!CallPath::with("/v1/converse", |c| Bedrock.is_call(&c)));
        for host in [
            "bedrock-runtime.us-east-1.amazonaws.com",
            "BEDROCK-RUNTIME.eu-west-3.amazonaws.com.",
            "bedrock-runtime-fips.us-west-2.amazonaws.com",
            "bedrock-agent-runtime.us-east-1.amazonaws.com",
            "bedrock-agent-runtime-fips.us-gov-west-1.amazonaws.com",
            "vpce-0123456789abcdef0-abcdefgh.bedrock-runtime.us-east-1.vpce.amazonaws.com",
            "VPCE-0a1-b2.bedrock-agent-runtime.eu-west-1.vpce.amazonaws.com.",
        ] {
            assert!(is_runtime_host(host), "{host}");
        }
        for host in [
            "bedrock-runtime.amazonaws.com",
            "bedrock-runtime.x.amazonaws.com.evil.example",
            "bedrock.us-east-1.amazonaws.com",
            "bedrock-runtime.us east.amazonaws.com",
            "bedrock-agent.us-east-1.amazonaws.com",
            "vpce-1.bedrock-runtime.us-east-1.amazonaws.com.evil.example",
            "vpce-1.evil.example",
            "bedrock-runtime.us-east-1.vpce.amazonaws.com",
        ] {
            assert!(!is_runtime_host(host), "{host}");
        }
    }
}
