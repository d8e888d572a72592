//! The one list of providers, and the questions the rest of the proxy asks it: which provider a
//! destination is (for the price table and for metering), whether a destination takes LLM calls,
//! where requests carry API keys, and whether a stream must be asked for its usage.

use super::anthropic::Anthropic;
use super::bedrock::Bedrock;
use super::gemini::Gemini;
use super::openai_chat::OpenAiChat;
use super::openai_responses::OpenAiResponses;
use super::{CallPath, KeyPositions, Provider};
use crate::target::Destination;
use serde_json::Value;

/// Every provider. The order is the precedence of their request fields (the first ceiling
/// present counts) and the order their readers run in when a response's provider is unknown.
pub static PROVIDERS: &[&dyn Provider] =
    &[&OpenAiChat, &OpenAiResponses, &Anthropic, &Bedrock, &Gemini];

/// An LLM vendor the proxy knows by its API hosts or key positions, whose API has no provider
/// file yet (the OpenAI-compatible vendors, Azure OpenAI). A request to one of its hosts
/// is an LLM call priced under its name and metered by the provider its path names (or by every
/// provider's reader); its key positions are credential positions everywhere.
#[derive(Debug)]
pub struct Vendor {
    /// Name (the price table's `[providers.NAME]` key).
    pub name: &'static str,
    /// API hosts that are its own (lowercase).
    pub hosts: &'static [&'static str],
    /// Domains whose subdomains are its own (lowercase, with the leading dot).
    pub host_suffixes: &'static [&'static str],
    /// Where its requests carry a key, besides the generic positions.
    pub positions: KeyPositions,
}

/// The vendors without a provider file. Each entry moves into its provider's file when it gets
/// one; one that speaks a provider's API already (chat completions) is metered by that provider.
pub static VENDORS: &[Vendor] = &[
    Vendor {
        name: "azure_openai",
        // Its hosts are per resource (`<resource>.openai.azure.com`); other Azure hosts serving
        // it are declared in `[[llm_provider]]` or named by routes.
        hosts: &[],
        host_suffixes: &[".openai.azure.com"],
        positions: KeyPositions {
            headers: &["api-key", "authorization"],
            query: &["api-key"],
            body: &["api_key", "azure_api_key"],
        },
    },
    Vendor {
        name: "mistral",
        hosts: &["api.mistral.ai"],
        host_suffixes: &[],
        positions: KeyPositions::NONE,
    },
    Vendor {
        name: "groq",
        hosts: &["api.groq.com"],
        host_suffixes: &[],
        positions: KeyPositions::NONE,
    },
    Vendor {
        name: "deepseek",
        hosts: &["api.deepseek.com"],
        host_suffixes: &[],
        positions: KeyPositions::NONE,
    },
    Vendor {
        name: "together",
        hosts: &["api.together.xyz"],
        host_suffixes: &[],
        positions: KeyPositions::NONE,
    },
    Vendor {
        name: "openrouter",
        hosts: &["openrouter.ai"],
        host_suffixes: &[],
        positions: KeyPositions::NONE,
    },
    Vendor {
        name: "xai",
        hosts: &["api.x.ai"],
        host_suffixes: &[],
        positions: KeyPositions::NONE,
    },
];

/// The name (price table key) of the provider or vendor whose API host `host` is, if any.
/// Compared ignoring case and a trailing dot, without allocating.
pub fn name_for_host(host: &str) -> Option<&'static str> {
    let host = host.trim_end_matches('.');
    let is = |v: &Vendor| {
        v.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
            || v.host_suffixes
                .iter()
                .any(|s| super::host_ends_with(host, s))
    };
    PROVIDERS
        .iter()
        .find(|p| p.owns_host(host))
        .map(|p| p.name())
        .or_else(|| VENDORS.iter().find(|v| is(v)).map(|v| v.name))
}

/// Whether `host` serves an LLM API: a provider's or vendor's host ([`name_for_host`]), or
/// Vertex AI's (global, or regional as `us-central1-aiplatform.googleapis.com`), which serves
/// several providers' models and so names no price key of its own (a route's or a declared
/// provider's `provider` does).
///
/// SECURITY: what such a host is asked is metered, refused as unmetered work, or known free
/// (see [`work`]), and a tunnel to it is intercepted while a quota applies.
pub fn is_llm_api_host(host: &str) -> bool {
    name_for_host(host).is_some()
        || host
            .trim_end_matches('.')
            .eq_ignore_ascii_case("aiplatform.googleapis.com")
        || super::host_ends_with(host, "-aiplatform.googleapis.com")
}

/// The deployment an Azure OpenAI call names in its path (`/openai/deployments/<name>/…`), as
/// written (percent-decoded, case kept).
pub fn deployment_of(path: &str) -> Option<String> {
    const DEPLOYMENTS: &str = "/openai/deployments/";
    // Found as the call is (any case, escaped, behind repeated slashes), the name as written.
    let path = super::routed(path, DEPLOYMENTS)?;
    let at = super::find_ignore_case(&path, DEPLOYMENTS, false)? + DEPLOYMENTS.len();
    let name = path[at..].split('/').next().filter(|n| !n.is_empty())?;
    Some(name.to_string())
}

/// Whether a call's body names an Azure OpenAI deployment in its `model`: a path under
/// `/openai/` that names none (Azure's v1 API, `/openai/v1/…`, and its Responses API,
/// `/openai/responses`, serve the deployment the body's `model` names).
pub fn body_names_deployment(path: &str) -> bool {
    const AZURE: &str = "/openai/";
    deployment_of(path).is_none()
        && super::routed(path, AZURE)
            .is_some_and(|p| super::find_ignore_case(&p, AZURE, false).is_some())
}

/// The provider a call to `destination` is, for policies (`context.provider`): the one that
/// prices it (a route's `provider`, a declared or known API host), else the one whose API its
/// path is.
pub fn provider_of(destination: &Destination) -> Option<&str> {
    price_key(destination).or_else(|| for_destination(destination).map(|p| p.name()))
}

/// Whose prices a call to `destination` is charged at: the route's `provider`, else the
/// provider or vendor of its host.
pub fn price_key(destination: &Destination) -> Option<&str> {
    destination
        .provider
        .as_deref()
        .or_else(|| name_for_host(&destination.host))
}

/// The model a call names in its path, for providers that name it there (Bedrock's
/// `/model/{id}/…`): what policy and prices see when the body names none.
pub fn model_from_path(path: &str) -> Option<String> {
    PROVIDERS.iter().find_map(|p| p.model_from_path(path))
}

/// The model `destination`'s path addresses when it is an LLM destination, whatever the request
/// asks of it ([`Provider::model_addressed`]): Gemini's and Vertex AI's `…/models/{id}:{method}`
/// for a method that is not a metered call (a batch, an embedding, a prediction, a token count),
/// Bedrock's `/model/{id}/{operation}` likewise.
///
/// SECURITY: such a request uses that model (a batch of it, a video generation), and a policy
/// on models must see it, as it sees a call's: a `forbid` on `context.model` would otherwise not
/// fire for every operation the proxy does not meter. Not asked toward other destinations,
/// where a path of that shape is some other API's resource.
pub fn model_addressed(destination: &Destination) -> Option<String> {
    // The path's shape first: most paths name no model and are passed over by a byte scan,
    // where telling an LLM destination may normalize the path.
    PROVIDERS
        .iter()
        .find_map(|p| p.model_addressed(&destination.upstream_path))
        .filter(|_| is_llm_destination(destination))
}

/// The model a job `body` (JSON) names in the field its API uses for it, when the path starts
/// such a job ([`Provider::job_model_fields`]) toward an LLM destination or Bedrock's control
/// plane: for policy and the record, as [`model_addressed`]. Read only there (the bodies are
/// small and rare), so the field names, which other APIs use for other things, are read nowhere
/// else.
pub fn job_model(destination: &Destination, body: &[u8]) -> Option<String> {
    // Asked of every request with a body: a byte look at the last segment first (every job
    // path's names a job, an invocation, throughput or a tuned model), then the rest.
    let raw = super::without_query(&destination.upstream_path);
    let last = raw.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    let may = raw.contains('%')
        || ["job", "invoke", "throughput", "tuned"]
            .iter()
            .any(|w| super::find_ignore_case(last, w, false).is_some());
    if !may {
        return None;
    }
    if !is_llm_destination(destination) && !super::bedrock::is_control_plane_host(&destination.host)
    {
        return None;
    }
    let fields = CallPath::with(&destination.upstream_path, |path| {
        PROVIDERS
            .iter()
            .map(|p| p.job_model_fields(&path))
            .find(|f| !f.is_empty())
    })?;
    let object: serde_json::Map<String, Value> = serde_json::from_slice(body).ok()?;
    fields
        .iter()
        .find_map(|f| object.get(*f).and_then(Value::as_str))
        .map(str::to_string)
}

/// What a Realtime session's URL names: its model (OpenAI's `/v1/realtime?model=…`) or its Azure
/// OpenAI deployment (`/openai/realtime?deployment=…`), the WebSocket's only place for either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryModel {
    /// A model.
    Model(String),
    /// An Azure OpenAI deployment, to be mapped to its model.
    Deployment(String),
}

/// The model or deployment a Realtime session names in its URL, read as leniently as any server
/// reads a query (percent-decoded, `&` or `;` between pairs, names in any case, a `[]` suffix);
/// `Err` when it names more than one (which one a server takes is its choice).
pub fn model_from_query(path: &str) -> Result<Option<QueryModel>, String> {
    let Some(query) = crate::form_pairs::query_of(path) else {
        return Ok(None);
    };
    if !CallPath::with(path, |p| p.is_openai_resource("/realtime")) {
        return Ok(None);
    }
    let mut named = crate::form_pairs::lenient(query.as_bytes()).filter_map(|(name, value)| {
        let name = name.trim().to_ascii_lowercase();
        match name.strip_suffix("[]").unwrap_or(&name) {
            "model" => Some(QueryModel::Model(value.into_owned())),
            "deployment" => Some(QueryModel::Deployment(value.into_owned())),
            _ => None,
        }
    });
    let first = named.next();
    if named.next().is_some() {
        return Err("the query names the session's model (or deployment) more than once".into());
    }
    Ok(first)
}

/// The provider whose LLM call `path` (origin form, query allowed) is, on any host.
pub fn for_path(path: &str) -> Option<&'static dyn Provider> {
    CallPath::with(path, |p| PROVIDERS.iter().find(|x| x.is_call(&p)).copied())
}

/// The provider whose API reads `destination`'s requests and writes its responses, when its
/// path says so. `None`: the response is read with every provider's reader.
pub fn for_destination(destination: &Destination) -> Option<&'static dyn Provider> {
    for_path(&destination.upstream_path)
}

/// Whether requests to `destination` are LLM calls: a route that names a provider, a
/// provider's or vendor's API host, or a provider's call path on any host (compared as servers
/// route it, see [`CallPath`]).
pub fn is_llm_destination(destination: &Destination) -> bool {
    destination.provider.is_some()
        || is_llm_api_host(&destination.host)
        || for_destination(destination).is_some()
}

/// What a request to an LLM API is, for metering: decided from its destination, method and
/// whether it asks to switch protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// One of a provider's calls (its path is): metered from its response, whether its body
    /// names a model or the server picks one.
    Call,
    /// Work whose tokens and cost no response shows the proxy; names it for the refusal.
    Unmetered(&'static str),
    /// A request to an LLM API (a provider's or vendor's API host, a declared `llm_provider`
    /// or a route's `provider`) that is neither one of its calls, nor work known unmetered, nor
    /// known to be free: an LLM call when its body names a model (reserved, and settled at
    /// the usage it reports or else at its reservation), else unmetered work named by this.
    Unrecognized(&'static str),
    /// A request to an LLM API known to start no billed work (see [`FREE_RESOURCES`]), even
    /// when its body names a model (`count_tokens`, `moderations`, an assistant's creation):
    /// never priced as an LLM call.
    Free,
    /// Anything else (a read, a file upload, a tool server's call).
    Other,
}

/// What a request of [`Work::Unrecognized`] that names no model is, for its refusal.
pub const UNRECOGNIZED: &str = "a request to an LLM API the proxy does not know to be free";

/// Requests to an LLM API known to start no work that is billed (under `/v1/` or Azure's
/// `/openai/`, as [`CallPath::is_openai_resource`] reads them): uploads and stored objects
/// (files, assistants, threads and their messages, vector stores, a conversation's items,
/// skills) and the free token counts and moderations. Whatever else an LLM API is asked
/// without naming a model is refused as unmetered work while a quota applies.
const FREE_RESOURCES: &[&str] = &[
    "/files",
    "/uploads",
    "/uploads/*/parts",
    "/uploads/*/complete",
    "/assistants",
    "/assistants/*",
    "/threads",
    "/threads/*",
    "/threads/*/messages",
    "/threads/*/messages/*",
    "/vector_stores",
    "/vector_stores/*",
    "/vector_stores/*/files",
    "/vector_stores/*/files/*",
    "/vector_stores/*/file_batches",
    "/conversations/*/items",
    "/skills",
    "/skills/*/versions",
    "/moderations",
    "/responses/input_tokens",
    "/messages/count_tokens",
    "/fine_tuning/alpha/graders/validate",
    "/evals",
    "/evals/*",
    // Updates of stored objects' metadata, and stops.
    "/chat/completions/*",
    "/threads/*/runs/*",
    "/evals/*/runs/*",
    "/fine_tuning/jobs/*/pause",
];

/// Path ends that are free on every LLM API: cancelling (OpenAI-style `…/cancel`, Google's
/// long-running operations' `…:cancel`), counting tokens (Gemini's `:countTokens`, Bedrock's
/// `/count-tokens`) and Gemini's file uploads (`/upload/v1beta/files`).
const FREE_ENDS: &[&str] = &[
    "/cancel",
    ":cancel",
    ":counttokens",
    "/count-tokens",
    "/files",
];

/// Whether `path` is a request an LLM API serves without billing work (see [`FREE_RESOURCES`]).
fn is_free(path: &CallPath<'_>) -> bool {
    FREE_ENDS.iter().any(|end| path.ends_with(end))
        || FREE_RESOURCES.iter().any(|r| path.is_openai_resource(r))
}

/// What a `method` request to `destination` is (`upgrade`: it asks to switch protocols; `call`:
/// its path is a provider's call, [`for_destination`], which the caller looked up already). A
/// provider's unmetered work is recognized on any host, like its calls; an upgrade only toward
/// an LLM destination (a Realtime or other WebSocket session carries its calls in frames the
/// proxy does not meter).
pub fn work(destination: &Destination, method: &http::Method, upgrade: bool, call: bool) -> Work {
    use http::Method;
    // A call's path needs no second look (normalizing it is most of the cost). Calls are
    // POSTs: a read of a call path (`GET /v1/chat/completions` lists stored completions) is
    // decided below like any read.
    if call && !upgrade && *method == Method::POST {
        return match unreadable_format(&destination.upstream_path) {
            Some(what) => Work::Unmetered(what),
            None => Work::Call,
        };
    }
    // The path is normalized once (on the stack) for every other question.
    CallPath::with(&destination.upstream_path, |path| {
        let unmetered = || PROVIDERS.iter().find_map(|p| p.unmetered_work(&path));
        // First: a WebSocket to an LLM API's session path (on any host, as its other work), or
        // to any path of an LLM destination (a call path too: the Responses API's) is a session.
        if upgrade {
            if let Some(what) = unmetered() {
                return Work::Unmetered(what);
            }
            if call || destination.provider.is_some() || is_llm_api_host(&destination.host) {
                return Work::Unmetered("a WebSocket session");
            }
        }
        if matches!(
            *method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE
        ) {
            return Work::Other;
        }
        if call {
            return Work::Call;
        }
        if let Some(what) =
            unmetered().or_else(|| super::bedrock::agent_runtime_work(&destination.host))
        {
            return Work::Unmetered(what);
        }
        // SECURITY: an LLM API's other requests are work the proxy cannot meter unless they
        // are known to be free (or name a model, see `Work::Unrecognized`): a list of what
        // spends would miss the next endpoint a provider adds, and forward it unmetered.
        let llm_api = destination.provider.is_some() || is_llm_api_host(&destination.host);
        match (llm_api, is_free(&path)) {
            (true, false) => Work::Unrecognized(UNRECOGNIZED),
            (true, true) => Work::Free,
            (false, _) => Work::Other,
        }
    })
}

/// What a call whose query asks for an answer in a format no reader knows is: Google APIs'
/// `alt` (or `$alt`) system parameter switches the answer to protobuf (`alt=proto`) or raw
/// bytes (`alt=media`); only `json` and `sse` are read. `None`: the answer is readable.
///
/// SECURITY: such an answer's usage (Gemini's hidden thinking tokens above all) cannot be read,
/// nor bounded by its bytes, so while a quota applies it is refused as unmetered work rather
/// than settled at its reservation. Names are compared percent-decoded and ignoring case, and
/// every copy counts (which one a server takes is its choice).
fn unreadable_format(target: &str) -> Option<&'static str> {
    let query = crate::form_pairs::query_of(target)?;
    let unreadable = crate::form_pairs::lenient(query.as_bytes()).any(|(name, value)| {
        let name = name.trim();
        let alt = name.eq_ignore_ascii_case("alt") || name.eq_ignore_ascii_case("$alt");
        let value = value.trim();
        alt && !(value.eq_ignore_ascii_case("json") || value.eq_ignore_ascii_case("sse"))
    });
    unreadable.then_some(UNREADABLE_FORMAT)
}

/// What a call asking for an answer no reader knows is, for its refusal.
pub const UNREADABLE_FORMAT: &str = "a call whose answer format (`alt`) the proxy cannot read";

/// Every provider's and vendor's key positions. Toward a destination whose keys the proxy
/// manages all of them apply, whatever its host: the proxy cannot know which reader an upstream
/// uses (a gateway may take any provider's header), so a literal in any of them is refused.
pub fn key_positions() -> impl Iterator<Item = &'static KeyPositions> {
    PROVIDERS
        .iter()
        .map(|p| p.key_positions())
        .chain(VENDORS.iter().map(|v| &v.positions))
}

/// The provider's or vendor's key header `name` is (ASCII case ignored), if it is one.
pub fn key_header(name: &[u8]) -> Option<&'static str> {
    key_positions()
        .flat_map(|p| p.headers.iter().copied())
        .find(|h| h.as_bytes().eq_ignore_ascii_case(name))
}

/// Asks a streaming request for its usage when its provider reports usage only on request:
/// the rewritten body and the provider that asked (whose usage event is taken out of the
/// response again), or `None` when nothing needs to change. `path` is the upstream path.
///
/// SECURITY: the path is read as calls are recognized ([`CallPath`]): a stream metered as a
/// chat completion at `/v1/Chat/Completions/` (servers that ignore case and trailing slashes
/// route it) but not asked for its usage reported none, and a reasoning model's hidden
/// output went unbilled.
pub fn request_stream_usage(path: &str, body: &[u8]) -> Option<(Vec<u8>, &'static dyn Provider)> {
    CallPath::with(path, |path| {
        PROVIDERS
            .iter()
            .find_map(|p| Some((p.request_stream_usage(path, body)?, *p)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Realtime session names its model (or Azure deployment) in its URL; the query is read as
    /// leniently as servers read it, and a model named twice is refused; other paths' queries
    /// name none.
    #[test]
    fn a_realtime_sessions_model_is_read_from_its_query() {
        let model = |m: &str| Ok(Some(QueryModel::Model(m.into())));
        for (path, want) in [
            ("/v1/realtime?model=gpt-realtime", model("gpt-realtime")),
            (
                "/openai/realtime?api-version=1&model=gpt-4o%2Drealtime",
                model("gpt-4o-realtime"),
            ),
            ("/V1/Realtime?model=m", model("m")),
            ("/v1/realtime?MODEL=m", model("m")),
            ("/v1/realtime?mod%65l=m", model("m")),
            ("/v1/realtime?voice=x;model=m", model("m")),
            ("/v1/realtime?model[]=m", model("m")),
            (
                "/openai/realtime?api-version=2024-10-01-preview&deployment=prod-4o",
                Ok(Some(QueryModel::Deployment("prod-4o".into()))),
            ),
            ("/v1/realtime", Ok(None)),
            ("/v1/realtime?voice=x", Ok(None)),
            ("/v1/realtime#model=m", Ok(None)),
            ("/v1/chat/completions?model=m", Ok(None)),
            ("/v1/realtime/client_secrets?model=m", Ok(None)),
            ("/v1/realtime?model=a&model=b", Err(())),
            ("/v1/realtime?model=a&model=a", Err(())),
            ("/v1/realtime?model=a;MODEL=b", Err(())),
            ("/openai/realtime?deployment=a&model=b", Err(())),
        ] {
            assert_eq!(model_from_query(path).map_err(|_| ()), want, "{path}");
        }
        // A client secret's model is its session's.
        let read = super::super::request::read_json(
            br#"{"session":{"type":"realtime","model":"gpt-realtime"}}"#,
        )
        .expect("read");
        assert_eq!(read.model.as_deref(), Some("gpt-realtime"));
        // A transcription session's model is its transcription's.
        let read = super::super::request::read_json(
            br#"{"input_audio_transcription":{"model":"gpt-4o-transcribe"}}"#,
        )
        .expect("read");
        assert_eq!(read.model.as_deref(), Some("gpt-4o-transcribe"));
        // The GA spellings, and Bedrock Agents' models; a session's own model comes first.
        for (body, model) in [
            (
                &br#"{"session":{"type":"transcription","audio":{"input":{"transcription":{"model":"gpt-4o-transcribe"}}}}}"#[..],
                "gpt-4o-transcribe",
            ),
            (
                br#"{"session":{"model":"gpt-realtime","audio":{"input":{"transcription":{"model":"whisper-1"}}}}}"#,
                "gpt-realtime",
            ),
            (br#"{"input":{"textPrompt":{"text":"x"}},"targetModelId":"anthropic.claude-3-haiku"}"#, "anthropic.claude-3-haiku"),
            (
                br#"{"input":{"text":"q"},"retrieveAndGenerateConfiguration":{"type":"KNOWLEDGE_BASE","knowledgeBaseConfiguration":{"knowledgeBaseId":"kb","modelArn":"arn:aws:bedrock:us-east-1::foundation-model/m"}}}"#,
                "arn:aws:bedrock:us-east-1::foundation-model/m",
            ),
        ] {
            let read = super::super::request::read_json(body).expect("read");
            assert_eq!(read.model.as_deref(), Some(model), "{}", String::from_utf8_lossy(body));
        }
    }

    /// The models a call uses beside its own are its other models, each once and never its own:
    /// a Realtime session's transcription model, a Bedrock inline agent's collaborators' and
    /// prompt overrides' (at any depth of those arrays).
    #[test]
    fn other_models_are_read_beside_the_model() {
        let read = |body: &str| super::super::request::read_json(body.as_bytes());
        for (body, model, others) in [
            (
                r#"{"session":{"model":"gpt-realtime","audio":{"input":{"transcription":{"model":"whisper-1"}}}}}"#,
                Some("gpt-realtime"),
                &["whisper-1"][..],
            ),
            (
                r#"{"session":{"model":"gpt-realtime","audio":{"input":{"transcription":{"model":"gpt-realtime"}}}}}"#,
                Some("gpt-realtime"),
                &[],
            ),
            (
                r#"{"foundationModel":"m-cheap","instruction":"x","collaborators":[{"foundationModel":"m-dear","collaboratorName":"a"},{"foundationModel":"m-cheap"},{"foundationModel":"m-dear"},{"foundationModel":"m-mid","promptOverrideConfiguration":{"promptConfigurations":[{"foundationModel":"m-deep"},{"promptType":"ORCHESTRATION"}]}}],"promptOverrideConfiguration":{"promptConfigurations":[{"foundationModel":"m-prompt"}]}}"#,
                Some("m-cheap"),
                &["m-dear", "m-deep", "m-mid", "m-prompt"],
            ),
            // Only the collaborators name a model: the call has no model of its own, and each
            // of theirs is decided.
            (
                r#"{"collaborators":[{"foundationModel":"m-dear"}]}"#,
                None,
                &["m-dear"],
            ),
            // Every body is read with every provider's fields: an unrelated API's
            // `collaborators` (names, an object, numbers, nested arrays) is passed over.
            (
                r#"{"model":"gpt-4o","collaborators":["alice",3,null,true,{"x":1},[{"foundationModel":"m-hidden"}]]}"#,
                Some("gpt-4o"),
                &[],
            ),
            (
                r#"{"model":"gpt-4o","collaborators":{"foundationModel":"m"}}"#,
                Some("gpt-4o"),
                &[],
            ),
            (
                r#"{"model":"gpt-4o","collaborators":"all"}"#,
                Some("gpt-4o"),
                &[],
            ),
            (
                r#"{"model":"gpt-4o","collaborators":null}"#,
                Some("gpt-4o"),
                &[],
            ),
            // The beta and the GA transcription spelling both: each is decided.
            (
                r#"{"model":"gpt-realtime","input_audio_transcription":{"model":"whisper-1"},"audio":{"input":{"transcription":{"model":"gpt-4o-transcribe"}}}}"#,
                Some("gpt-realtime"),
                &["gpt-4o-transcribe", "whisper-1"],
            ),
            (
                r#"{"input_audio_transcription":{"model":"whisper-1"},"audio":{"input":{"transcription":{"model":"gpt-4o-transcribe"}}}}"#,
                Some("whisper-1"),
                &["gpt-4o-transcribe"],
            ),
            // A hosted tool's own model (the Responses API's image generation).
            (
                r#"{"model":"gpt-4o-mini","tools":[{"type":"web_search"},{"type":"image_generation","model":"gpt-image-1"}]}"#,
                Some("gpt-4o-mini"),
                &["gpt-image-1"],
            ),
        ] {
            let got = read(body).expect(body);
            assert_eq!(got.model.as_deref(), model, "{body}");
            assert_eq!(got.other_models, others, "{body}");
        }
        // A collaborator's model given twice in its object, or in another case beside itself,
        // is ambiguous; a model that is no string is refused as the model is.
        for body in [
            r#"{"collaborators":[{"foundationModel":"a","foundationModel":"b"}]}"#,
            r#"{"collaborators":[{"foundationModel":"a","FoundationModel":"b"}]}"#,
            r#"{"collaborators":[{"foundationModel":7}]}"#,
        ] {
            assert!(read(body).is_err(), "{body}");
        }
        // Each distinct model is a decision: past 16, the body is refused.
        let many = |n: usize| {
            let list: Vec<String> = (0..n)
                .map(|i| format!(r#"{{"foundationModel":"m{i}"}}"#))
                .collect();
            format!(r#"{{"collaborators":[{}]}}"#, list.join(","))
        };
        assert_eq!(read(&many(16)).expect("16").other_models.len(), 16);
        assert!(read(&many(17)).is_err());
        let repeated = format!(
            r#"{{"collaborators":[{}]}}"#,
            vec![r#"{"foundationModel":"same"}"#; 1000].join(",")
        );
        assert_eq!(read(&repeated).expect("one model").other_models, ["same"]);
    }

    fn dest(host: &str, path: &str, provider: Option<&str>) -> Destination {
        Destination::https_for_test(host, path, provider)
    }

    /// The model a path addresses is what policy sees for every operation on it, not only the
    /// metered calls; only toward LLM destinations, and a resource's id is no method.
    #[test]
    fn the_model_a_path_addresses_is_read_for_any_operation() {
        let gemini = "generativelanguage.googleapis.com";
        let vertex = "us-central1-aiplatform.googleapis.com";
        let bedrock = "bedrock-runtime.us-east-1.amazonaws.com";
        let cases = [
            (
                gemini,
                "/v1beta/models/veo-3.0-generate-001:predictLongRunning",
                Some("veo-3.0-generate-001"),
            ),
            (
                gemini,
                "/v1beta/models/gemini-2.5-pro:batchGenerateContent",
                Some("gemini-2.5-pro"),
            ),
            (
                gemini,
                "/v1beta/models/imagen-4.0-ultra:predict",
                Some("imagen-4.0-ultra"),
            ),
            (
                gemini,
                "/v1beta/Models/text-embedding-004:embedContent?key=k",
                Some("text-embedding-004"),
            ),
            (gemini, "/v1beta/models/aqa:generateAnswer", Some("aqa")),
            (
                gemini,
                "/v1beta/models/gemini-2.5-pro:countTokens",
                Some("gemini-2.5-pro"),
            ),
            (
                gemini,
                "/v1beta/models/gemini-2.5-pro%3AasyncBatchEmbedContent",
                Some("gemini-2.5-pro"),
            ),
            (
                vertex,
                "/v1/projects/p/locations/l/publishers/meta/models/llama-4:rawPredict",
                Some("llama-4"),
            ),
            (
                bedrock,
                "/model/anthropic.claude-3-opus-20240229-v1:0/count-tokens",
                Some("anthropic.claude-3-opus-20240229-v1:0"),
            ),
            (
                bedrock,
                "/model/amazon.nova-sonic-v1:0/invoke-with-bidirectional-stream",
                Some("amazon.nova-sonic-v1:0"),
            ),
            // A model's own resource, a collection and a fine-tuned OpenAI model's id are no
            // method on a model.
            (gemini, "/v1beta/models/gemini-2.5-pro", None),
            (gemini, "/v1beta/models", None),
            (
                "api.openai.com",
                "/v1/models/ft:gpt-4o-mini:acme::abc123",
                None,
            ),
            (gemini, "/v1beta/tunedModels/mine:generateContent", None),
            (bedrock, "/model/", None),
            (bedrock, "/foundation-models/anthropic.claude-v2", None),
        ];
        for (host, path, want) in cases {
            let got = model_addressed(&dest(host, path, None));
            assert_eq!(got.as_deref(), want, "{host}{path}");
        }
        // A job's model in its API's own field, on the paths that start such jobs only.
        let bedrock_cp = "bedrock.us-east-1.amazonaws.com";
        for (host, path, body, want) in [
            (
                bedrock_cp,
                "/model-invocation-job",
                r#"{"modelId":"anthropic.claude-opus-4-v1:0"}"#,
                Some("anthropic.claude-opus-4-v1:0"),
            ),
            (
                bedrock,
                "/async-invoke",
                r#"{"modelId":"amazon.nova-reel-v1:0","modelInput":{}}"#,
                Some("amazon.nova-reel-v1:0"),
            ),
            (
                bedrock_cp,
                "/model-customization-jobs",
                r#"{"baseModelIdentifier":"amazon.titan-text-express-v1"}"#,
                Some("amazon.titan-text-express-v1"),
            ),
            (
                vertex,
                "/v1/projects/p/locations/l/tuningJobs",
                r#"{"baseModel":"gemini-2.0-flash-001"}"#,
                Some("gemini-2.0-flash-001"),
            ),
            (
                gemini,
                "/v1beta/tunedModels",
                r#"{"base_model":"models/gemini-1.5-flash-001-tuning"}"#,
                Some("models/gemini-1.5-flash-001-tuning"),
            ),
            // Another path, a field that is no string, a body that is no object: nothing.
            (bedrock_cp, "/custom-models", r#"{"modelId":"x"}"#, None),
            (
                bedrock_cp,
                "/model-invocation-job",
                r#"{"modelId":7}"#,
                None,
            ),
            (bedrock_cp, "/model-invocation-job", "[1]", None),
            (
                "tools.internal",
                "/api/v2/async-invoke",
                r#"{"modelId":"churn-predictor"}"#,
                None,
            ),
        ] {
            let got = job_model(&dest(host, path, None), body.as_bytes());
            assert_eq!(got.as_deref(), want, "{host}{path} {body}");
        }
        // Toward a destination that is no LLM API, a path of that shape is that API's own.
        let tool = dest("tools.internal", "/v1/models/churn:predict", None);
        assert_eq!(model_addressed(&tool), None);
        let routed = dest("tools.internal", "/v1/models/churn:predict", Some("google"));
        assert_eq!(model_addressed(&routed).as_deref(), Some("churn"));
    }

    /// What `pricing::provider_for_host` answered before the registry: every host the same.
    #[test]
    fn hosts_price_as_before() {
        let before = [
            ("api.openai.com", "openai"),
            ("api.anthropic.com", "anthropic"),
            ("generativelanguage.googleapis.com", "google"),
            ("api.mistral.ai", "mistral"),
            ("api.groq.com", "groq"),
            ("api.deepseek.com", "deepseek"),
            ("api.together.xyz", "together"),
            ("openrouter.ai", "openrouter"),
            ("api.x.ai", "xai"),
        ];
        for (host, name) in before {
            assert_eq!(name_for_host(host), Some(name), "{host}");
            assert_eq!(
                name_for_host(&format!("{}.", host.to_ascii_uppercase())),
                Some(name),
                "{host}"
            );
            assert_eq!(price_key(&dest(host, "/", None)), Some(name), "{host}");
        }
        // And no other host.
        let known: Vec<&str> = PROVIDERS
            .iter()
            .flat_map(|p| p.default_hosts().iter().copied())
            .chain(VENDORS.iter().flat_map(|v| v.hosts.iter().copied()))
            .collect();
        for host in known {
            assert!(before.iter().any(|(h, _)| *h == host), "{host} is new");
        }
        assert_eq!(name_for_host("127.0.0.1"), None);
        assert_eq!(name_for_host("api.openai.com.evil.example"), None);
        // A route's provider wins over the host's.
        assert_eq!(
            price_key(&dest("api.openai.com", "/", Some("azure"))),
            Some("azure")
        );
        assert_eq!(price_key(&dest("gw.example", "/v1/messages", None)), None);
    }

    /// The LLM destinations `body::llm_destination` recognized before the registry.
    #[test]
    fn llm_destinations() {
        let cases = [
            (
                "known host",
                dest("api.openai.com", "/v1/files", None),
                true,
            ),
            (
                "route provider",
                dest("llm.internal", "/generate", Some("openai")),
                true,
            ),
            (
                "chat path anywhere",
                dest("127.0.0.1", "/v1/chat/completions", None),
                true,
            ),
            (
                "under a prefix",
                dest("gw.example", "/openai/v1/responses?x=1", None),
                true,
            ),
            ("messages", dest("gw.example", "/v1/messages", None), true),
            (
                "embeddings, trailing slash",
                dest("gw.example", "/v1/embeddings/", None),
                true,
            ),
            (
                "encoded",
                dest("gw.example", "/v1/%63hat/completions", None),
                true,
            ),
            (
                "doubled slash, case",
                dest("gw.example", "//V1/Chat//completions", None),
                true,
            ),
            (
                "azure deployment",
                dest(
                    "x.openai.azure.com",
                    "/openai/deployments/gpt4/chat/completions",
                    None,
                ),
                true,
            ),
            (
                "other path",
                dest("gw.example", "/v1/chat/completions-old", None),
                false,
            ),
            (
                "not a segment",
                dest("gw.example", "/xv1/chat/completions", None),
                false,
            ),
            (
                "plain API",
                dest("api.example.com", "/v1/users", None),
                false,
            ),
        ];
        for (name, d, want) in cases {
            assert_eq!(is_llm_destination(&d), want, "{name}");
        }
    }

    /// Each path the proxy knew as an LLM call (`LLM_PATHS` and the Azure deployment
    /// operations) belongs to exactly one provider, the one whose shapes it returns.
    #[test]
    fn call_paths_belong_to_one_provider() {
        let cases: &[(&str, Option<&str>)] = &[
            ("/v1/chat/completions", Some("OpenAiChat")),
            ("/v1/completions", Some("OpenAiChat")),
            ("/v1/embeddings", Some("OpenAiChat")),
            ("/v1/responses", Some("OpenAiResponses")),
            ("/v1/messages", Some("Anthropic")),
            ("/openai/deployments/d/chat/completions", Some("OpenAiChat")),
            ("/openai/deployments/d/completions", Some("OpenAiChat")),
            ("/openai/deployments/d/embeddings", Some("OpenAiChat")),
            ("/openai/deployments/d/responses", Some("OpenAiResponses")),
            ("/openai/deployments/d/messages", None),
            ("/v1/files", None),
            ("/chat/completions", None),
        ];
        for (path, want) in cases {
            let owners: Vec<String> = CallPath::with(path, |p| {
                PROVIDERS
                    .iter()
                    .filter(|x| x.is_call(&p))
                    .map(|x| format!("{x:?}"))
                    .collect()
            });
            assert_eq!(
                owners,
                want.map(String::from).into_iter().collect::<Vec<_>>(),
                "{path}"
            );
            assert_eq!(for_path(path).map(|p| format!("{p:?}")).as_deref(), *want);
        }
    }

    #[test]
    fn streams_are_asked_for_usage_by_the_provider_that_needs_it() {
        let body = br#"{"model":"m","stream":true}"#;
        let (rewritten, by) =
            request_stream_usage("/v1/chat/completions?x=1", body).expect("asked");
        assert_eq!(format!("{by:?}"), "OpenAiChat");
        assert!(std::str::from_utf8(&rewritten)
            .expect("utf-8")
            .contains("include_usage"));
        for path in ["/v1/responses", "/v1/messages", "/v1/files"] {
            assert!(request_stream_usage(path, body).is_none(), "{path}");
        }
        // Every spelling a server routes as the call the meter recognizes is asked too.
        for path in [
            "/v1/Chat/Completions",
            "/v1/chat/completions/",
            "//v1//chat/completions",
            "/v1/chat/%63ompletions?x=1",
            "/V1/COMPLETIONS",
        ] {
            assert!(request_stream_usage(path, body).is_some(), "{path}");
        }
    }

    #[test]
    fn key_headers_are_the_providers_and_vendors() {
        for name in ["authorization", "X-Api-Key", "api-key", "x-goog-api-key"] {
            assert!(key_header(name.as_bytes()).is_some(), "{name}");
        }
        for name in ["x-auth-token", "cookie", "x-api-key2"] {
            assert!(key_header(name.as_bytes()).is_none(), "{name}");
        }
    }

    #[test]
    fn work_that_cannot_be_metered_is_recognized_on_any_host() {
        use http::Method;
        let work = |host: &str, method: Method, path: &str, upgrade: bool| {
            let d = dest(host, path, None);
            work(&d, &method, upgrade, for_destination(&d).is_some())
        };
        let unmetered = [
            ("api.openai.com", "/v1/batches", "a batch job"),
            ("gateway.internal", "/openai/v1/batches", "a batch job"),
            (
                "acme.openai.azure.com",
                "/openai/batches?api-version=1",
                "a batch job",
            ),
            ("api.mistral.ai", "/v1/batch/jobs", "a batch job"),
            (
                "api.openai.com",
                "/v1/fine_tuning/jobs",
                "a fine-tuning job",
            ),
            ("api.openai.com", "/v1/threads/runs", "an Assistants run"),
            (
                "api.openai.com",
                "/v1/threads/thread_1/runs",
                "an Assistants run",
            ),
            (
                "api.openai.com",
                "/V1//threads/t/runs/r/submit_tool_outputs/",
                "an Assistants run",
            ),
            (
                "api.openai.com",
                "/v1/realtime/client_secrets",
                "a Realtime session",
            ),
            (
                "api.openai.com",
                "/v1/realtime/%73essions",
                "a Realtime session",
            ),
            ("api.openai.com", "/v1/videos", "a video generation"),
            (
                "api.anthropic.com",
                "/v1/messages/batches",
                "a message batch",
            ),
            (
                "generativelanguage.googleapis.com",
                "/v1beta/models/gemini-2.5-flash:batchGenerateContent",
                "a batch job",
            ),
            (
                "generativelanguage.googleapis.com",
                "/v1beta/models/gemini-embedding-001:embedContent",
                "an embedding call that reports no usage",
            ),
            (
                "generativelanguage.googleapis.com",
                "/v1beta/models/gemini-embedding-001:batchEmbedContents",
                "an embedding call that reports no usage",
            ),
            (
                "generativelanguage.googleapis.com",
                "/v1beta/models/veo-3.0:predictLongRunning",
                "a long-running generation",
            ),
            (
                "generativelanguage.googleapis.com",
                "/v1beta/tunedModels",
                "a tuning job",
            ),
            (
                "us-east5-aiplatform.googleapis.com",
                "/v1/projects/p/locations/l/publishers/mistralai/models/m:rawPredict",
                "a partner model call",
            ),
            (
                "us-east5-aiplatform.googleapis.com",
                "/v1/projects/p/locations/l/publishers/mistralai/models/m:streamRawPredict",
                "a partner model call",
            ),
            (
                "aiplatform.googleapis.com",
                "/v1/projects/p/locations/l/batchPredictionJobs",
                "a batch prediction job",
            ),
            (
                "bedrock-runtime.us-east-1.amazonaws.com",
                "/async-invoke",
                "an asynchronous invocation",
            ),
            (
                "bedrock.us-east-1.amazonaws.com",
                "/model-invocation-job",
                "a batch inference job",
            ),
        ];
        let unmetered = unmetered.into_iter().chain([
            (
                "api.openai.com",
                "/v1/containers",
                "a code interpreter container",
            ),
            (
                "bedrock-runtime.us-east-1.amazonaws.com",
                "/model/amazon.nova-sonic-v1%3A0/invoke-with-bidirectional-stream",
                "a bidirectional stream",
            ),
            (
                "bedrock-agent-runtime.us-east-1.amazonaws.com",
                "/agents/AGENT123/agentAliases/TSTALIASID/sessions/s-1/text",
                "a Bedrock agent invocation",
            ),
            (
                "bedrock-agent-runtime.eu-west-1.amazonaws.com",
                "/retrieveAndGenerate",
                "a knowledge-base answer",
            ),
            (
                "bedrock-agent-runtime.eu-west-1.amazonaws.com",
                "/retrieveAndGenerateStream",
                "a knowledge-base answer",
            ),
            // Every other operation of the agents' runtime that is not a read.
            (
                "bedrock-agent-runtime.eu-west-1.amazonaws.com",
                "/agents/session-1",
                "Bedrock Agents work",
            ),
            (
                "bedrock-agent-runtime.eu-west-1.amazonaws.com",
                "/flows/F1/aliases/A1",
                "Bedrock Agents work",
            ),
            (
                "BEDROCK-AGENT-RUNTIME.us-east-1.amazonaws.com.",
                "/rerank",
                "Bedrock Agents work",
            ),
            (
                "bedrock-agent-runtime-fips.us-east-1.amazonaws.com",
                "/optimize-prompt",
                "Bedrock Agents work",
            ),
            (
                "vpce-0a1-b2.bedrock-agent-runtime.us-east-1.vpce.amazonaws.com",
                "/flows/F1/aliases/A1",
                "Bedrock Agents work",
            ),
            (
                "bedrock-runtime.us-east-1.amazonaws.com",
                "/guardrail/gr-1/version/DRAFT/apply",
                "a guardrail check",
            ),
            // Found by the red team: forwarded unmetered under a cost ceiling.
            (
                "api.mistral.ai",
                "/v1/agents/completions",
                "an agent run",
            ),
            (
                "api.mistral.ai",
                "/v1/conversations",
                "an agent conversation",
            ),
            (
                "api.mistral.ai",
                "/v1/conversations/conv_1",
                "an agent conversation",
            ),
            (
                "api.mistral.ai",
                "/v1/conversations/conv_1/restart",
                "an agent conversation",
            ),
            ("api.openai.com", "/v1/chatkit/sessions", "a ChatKit session"),
            (
                "api.openai.com",
                "/v1/fine_tuning/alpha/graders/run",
                "a grader run",
            ),
            ("api.together.xyz", "/v1/fine-tunes", "a fine-tuning job"),
            ("api.openai.com", "/v1/fine-tunes", "a fine-tuning job"),
            (
                "us-central1-aiplatform.googleapis.com",
                "/v1/projects/p/locations/l/reasoningEngines/42:query",
                "an Agent Engine query",
            ),
            (
                "us-central1-aiplatform.googleapis.com",
                "/v1beta1/projects/p/locations/l/reasoningEngines/42:streamQuery",
                "an Agent Engine query",
            ),
            (
                "bedrock-agentcore.us-east-1.amazonaws.com",
                "/runtimes/arn%3Aaws%3Abedrock-agentcore%3Aus-east-1%3A1%3Aruntime%2Fr-1/invocations",
                "Bedrock AgentCore work",
            ),
            (
                "gateway.internal",
                "/runtimes/arn%3Aaws%3Abedrock-agentcore%3Aus-east-1%3A1%3Aruntime%2Fr-1/invocations",
                "Bedrock AgentCore work",
            ),
            (
                "bedrock-agentcore.us-east-1.amazonaws.com",
                "/code-interpreters/aws.codeinterpreter.v1/sessions/start",
                "Bedrock AgentCore work",
            ),
            (
                "bedrock-data-automation-runtime.us-east-1.amazonaws.com",
                "/",
                "a Bedrock Data Automation job",
            ),
            (
                "gateway.internal",
                "/InvokeDataAutomationAsync",
                "a Bedrock Data Automation job",
            ),
            (
                "generativelanguage.googleapis.com",
                "/v1beta/fileSearchStores/s1:importFile",
                "a file search import",
            ),
            (
                "generativelanguage.googleapis.com",
                "/upload/v1beta/fileSearchStores/s1:uploadToFileSearchStore",
                "a file search import",
            ),
        ]);
        for (host, path, what) in unmetered {
            assert_eq!(
                work(host, Method::POST, path, false),
                Work::Unmetered(what),
                "{host}{path}"
            );
            // Reading or cancelling one starts nothing.
            for method in [Method::GET, Method::DELETE, Method::HEAD] {
                assert_eq!(work(host, method, path, false), Work::Other, "{host}{path}");
            }
        }
        // A call that asks for an answer no reader knows (Google's `alt=proto`) is unmetered;
        // `json` and `sse` are read.
        let gemini = "/v1beta/models/gemini-2.5-pro:generateContent";
        for (query, want) in [
            ("?alt=proto", Work::Unmetered(UNREADABLE_FORMAT)),
            ("?ALT=Proto", Work::Unmetered(UNREADABLE_FORMAT)),
            ("?%24alt=proto", Work::Unmetered(UNREADABLE_FORMAT)),
            ("?alt=media", Work::Unmetered(UNREADABLE_FORMAT)),
            ("?alt=json&alt=proto", Work::Unmetered(UNREADABLE_FORMAT)),
            ("?key=k;alt=proto", Work::Unmetered(UNREADABLE_FORMAT)),
            ("?alt=json", Work::Call),
            ("?alt=sse", Work::Call),
            ("?key=k", Work::Call),
            ("", Work::Call),
        ] {
            let path = format!("{gemini}{query}").replace(
                ":generateContent",
                if query.contains("sse") {
                    ":streamGenerateContent"
                } else {
                    ":generateContent"
                },
            );
            assert_eq!(
                work(
                    "generativelanguage.googleapis.com",
                    Method::POST,
                    &path,
                    false
                ),
                want,
                "{path}"
            );
        }
        // Calls, whatever the body names; the rest is other work.
        for (host, path) in [
            ("llm.internal", "/v1/chat/completions"),
            ("api.openai.com", "/v1/responses"),
        ("api.openai.com", "/v1/images/generations"),
        ("llm.internal", "/v1/audio/transcriptions"),
        ("llm.internal", "/v1/audio/speech"),
        ("llm.internal", "/audio/transcriptions"),
        ("llm.internal", "/Audio/Translations"),
        ("acme.openai.azure.com", "/openai/deployments/whisper/audio/translations"),
        ("acme.openai.azure.com", "/openai/deployments/img/images/edits"),
        (
            "us-east5-aiplatform.googleapis.com",
            "/v1/projects/p/locations/l/publishers/anthropic/models/claude-sonnet-4@20250514:streamRawPredict",
        ),
            (
                "generativelanguage.googleapis.com",
                "/v1beta/tunedModels/t1:generateContent",
            ),
            (
                "europe-west4-aiplatform.googleapis.com",
                "/v1/projects/p/locations/l/endpoints/42:streamGenerateContent",
            ),
        ] {
            assert_eq!(
                work(host, Method::POST, path, false),
                Work::Call,
                "{host}{path}"
            );
        }
        // Requests an LLM API serves free, and anything toward other hosts.
        for (host, path) in [
            ("api.openai.com", "/v1/files"),
            ("api.openai.com", "/v1/uploads/u1/parts"),
            ("api.openai.com", "/v1/batches/batch_1/cancel"),
            ("api.openai.com", "/v1/threads"),
            ("api.openai.com", "/v1/threads/t1/messages"),
            ("api.openai.com", "/v1/vector_stores/vs1/files"),
            ("api.openai.com", "/v1/conversations/c1/items"),
            ("api.openai.com", "/v1/fine_tuning/alpha/graders/validate"),
            ("api.anthropic.com", "/v1/messages/batches/b1/cancel"),
            ("api.anthropic.com", "/v1/messages/count_tokens"),
            (
                "generativelanguage.googleapis.com",
                "/v1beta/models/gemini-2.5-flash:countTokens",
            ),
            ("generativelanguage.googleapis.com", "/upload/v1beta/files"),
            ("api.openai.com", "/v1/chat/completions/cc_1"),
            ("eu.api.openai.com", "/v1/threads/t1/runs/r1"),
            ("api.openai.com", "/v1/evals/e1/runs/r1"),
            ("api.openai.com", "/v1/fine_tuning/jobs/j1/pause"),
            ("api.openai.com", "/v1/moderations"),
            ("api.openai.com", "/v1/assistants"),
        ] {
            assert_eq!(
                work(host, Method::POST, path, false),
                Work::Free,
                "{host}{path}"
            );
        }
        for (host, path) in [
            ("tools.internal", "/search"),
            ("tools.internal", "/v1/my_batches"),
            // A tool's own resource named like an audio operation, not at the root.
            ("tools.internal", "/api/meetings/42/audio/transcriptions"),
        ] {
            assert_eq!(
                work(host, Method::POST, path, false),
                Work::Other,
                "{host}{path}"
            );
        }
        // A read of a call path (listing stored completions) is no call.
        assert_eq!(
            work("api.openai.com", Method::GET, "/v1/chat/completions", false),
            Work::Other
        );
        // Anything else an LLM API is asked (not a call, not listed either way) is unmetered
        // work unless its body names a model (decided by the plan).
        for (host, path, provider) in [
            ("api.openai.com", "/batches", None),
            ("api.openai.com", "/v1/my_batches", None),
            ("api.openai.com", "/v1/some_new_job", None),
            // Regional hosts are the same APIs.
            ("eu.api.openai.com", "/v1/some_new_job", None),
            ("us.api.openai.com", "/v1/fine_tuning/jobs/j1/resume", None),
            (
                "us-central1-aiplatform.googleapis.com",
                "/v1/projects/p/locations/l:evaluateInstances",
                None,
            ),
            ("api.mistral.ai", "/v1/ocr", None),
            ("openrouter.ai", "/api/v1/anything", None),
            ("acme.openai.azure.com", "/openai/assistants_v3/run", None),
            ("llm.internal", "/api/pull", Some("vllm")),
        ] {
            let d = dest(host, path, provider);
            assert_eq!(
                super::work(&d, &Method::POST, false, for_destination(&d).is_some()),
                Work::Unrecognized(UNRECOGNIZED),
                "{host}{path}"
            );
        }
        // A context cache is billed per token and hour stored, whatever its body names.
        for (host, path) in [
            (
                "aiplatform.googleapis.com",
                "/v1/projects/p/locations/l/cachedContents",
            ),
            (
                "generativelanguage.googleapis.com",
                "/v1beta/cachedContents",
            ),
        ] {
            let d = dest(host, path, None);
            assert_eq!(
                super::work(&d, &Method::POST, false, for_destination(&d).is_some()),
                Work::Unmetered("a context cache (billed per token-hour stored)"),
                "{host}{path}"
            );
        }
        // A WebSocket toward an LLM API is a session, on a call path too; toward anything else
        // it is nothing to meter.
        for (path, what) in [
            ("/v1/realtime?model=gpt-4o-realtime", "a Realtime session"),
            ("/v1/responses", "a WebSocket session"),
            ("/anything", "a WebSocket session"),
        ] {
            assert_eq!(
                work("api.openai.com", Method::GET, path, true),
                Work::Unmetered(what),
                "{path}"
            );
        }
        assert_eq!(
            work("tools.internal", Method::GET, "/ws", true),
            Work::Other
        );
        // The Realtime API's socket is a session on any host, like its other work.
        assert_eq!(
            work(
                "gateway.internal",
                Method::GET,
                "/v1/realtime?model=m",
                true
            ),
            Work::Unmetered("a Realtime session")
        );
        assert_eq!(
            work(
                "gateway.internal",
                Method::GET,
                "/v1/realtime?model=m",
                false
            ),
            Work::Other
        );
    }

    /// A call's model is read from its path wherever the path is found to be a call: in any
    /// case, escaped, behind repeated or trailing slashes. (Finding the call and the model on
    /// differently read paths let the body's model decide policy and price.)
    #[test]
    fn a_model_named_in_a_path_is_read_however_the_path_is_spelled() {
        let cases = [
            (
                "/openai/deployments/gpt-4o/chat/completions?api-version=1",
                "gpt-4o",
            ),
            ("/OpenAI/Deployments/gpt-4o/chat/completions", "gpt-4o"),
            ("//openai//deployments//gpt-4o/chat/completions", "gpt-4o"),
            ("/openai/%64eployments/gpt-4o/chat/completions", "gpt-4o"),
            ("/model/anthropic.claude-v2/converse", "anthropic.claude-v2"),
            ("/Model/anthropic.claude-v2/Converse", "anthropic.claude-v2"),
            ("//model//anthropic.claude-v2/converse/", "anthropic.claude-v2"),
            (
                "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.m/converse",
                "arn:aws:bedrock:us-east-1:1:inference-profile/us.m",
            ),
            ("/v1beta/models/gemini-2.5-pro:generateContent", "gemini-2.5-pro"),
            ("/v1beta/Models/gemini-2.5-pro:GenerateContent", "gemini-2.5-pro"),
            ("/v1beta/models//gemini-2.5-pro:generateContent", "gemini-2.5-pro"),
            (
                "/v1/projects/p/locations/l/Publishers/Anthropic/Models/claude-sonnet-4@20250514:rawPredict",
                "claude-sonnet-4@20250514",
            ),
            (
                "/v1/projects/p/locations/l/publishers/anthropic/models//claude-sonnet-4:rawPredict",
                "claude-sonnet-4",
            ),
        ];
        for (path, model) in cases {
            assert!(for_path(path).is_some(), "{path} is a call");
            let deployment = deployment_of(path);
            let named = model_from_path(path).or(deployment);
            assert_eq!(named.as_deref(), Some(model), "{path}");
        }
        // A path that names no model copies nothing to find out.
        assert_eq!(model_from_path("/v1/chat/completions"), None);
        assert_eq!(deployment_of("/v1/chat/completions"), None);
        // The legacy engines form, which gateways serve (LiteLLM's `/engines/{model}/…`): the
        // engine is the model, whatever the body names.
        for (path, model) in [
            ("/engines/gpt-4o/chat/completions", Some("gpt-4o")),
            ("/v1/Engines/gpt-4o/completions?x=1", Some("gpt-4o")),
            ("/v1/engines/%67pt-4o/embeddings", Some("gpt-4o")),
            ("/v1/engines", None),
            ("/v1/engines/gpt-4o", None),
        ] {
            assert_eq!(model_from_path(path).as_deref(), model, "{path}");
        }
    }
}
