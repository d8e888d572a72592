//! LLM providers: what the proxy knows about one provider's API, in one file per provider.
//!
//! A provider ([`Provider`]) says:
//!
//! - its name (the price table's `[providers.NAME]` key, a route's `provider`) and the API hosts
//!   that are its own without configuration;
//! - which request paths are its LLM calls;
//! - the request body fields that name the model and cap the output ([`RequestFields`]);
//! - how its responses report usage: in a JSON body, and in each event of a stream (the event's
//!   JSON payload, whatever framing carried it: SSE today, see [`super::UsageMeter`]);
//! - where its requests carry an API key ([`KeyPositions`], for the raw-key check);
//! - whether a stream reports usage only when asked, and how to ask (and which event answers).
//!
//! The [`registry`] lists the providers once; the rest of the proxy asks it which provider a
//! destination is, how to meter a response, what a body names and where keys go. Request fields
//! are read by [`request`], in every provider's spelling at once.
//!
//! Vendors that speak an API the proxy already reads (OpenAI-compatible servers, Azure OpenAI
//! resources) need no file: the tenant file declares their hosts ([`configured`]).
//!
//! Adding a provider is one new file here with a unit struct that implements [`Provider`], and its
//! line in [`registry::PROVIDERS`].

pub mod anthropic;
pub mod bedrock;
pub mod configured;
pub mod gemini;
pub mod openai_chat;
pub mod openai_responses;
pub mod registry;
pub mod request;

use serde_json::Value;

use super::Usage;

/// One LLM provider's API. Implementations are unit structs listed in [`registry::PROVIDERS`];
/// every method runs on the hot path (the usage readers in the synchronous body filter), so none
/// blocks, and none allocates beyond what it returns.
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// The provider's name: the price table's `[providers.NAME]` key. Several providers may
    /// share one (two APIs of one vendor).
    fn name(&self) -> &'static str;

    /// API hosts that are this provider's without configuration (lowercase). A request to one
    /// is an LLM call whatever its path, priced under [`Provider::name`].
    fn default_hosts(&self) -> &'static [&'static str];

    /// Whether `host` is one of this provider's API hosts (compared ignoring case and a
    /// trailing dot). By default one of [`Provider::default_hosts`]; a provider whose hosts
    /// follow a pattern (one per region) says so here.
    fn owns_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        self.default_hosts()
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host))
    }

    /// The model a call names in its path (origin form, query allowed), for a provider whose
    /// calls name it there rather than in the body (`/model/{id}/converse`), as the provider
    /// names it (percent-decoded, case kept).
    fn model_from_path(&self, _path: &str) -> Option<String> {
        None
    }

    /// The model a request's path addresses whatever it asks of it (a Google API's custom
    /// method on a model, `…/models/{id}:predict`; Bedrock's `/model/{id}/count-tokens`): the
    /// model a policy decides on for requests that are not this provider's calls (jobs, other
    /// generations, token counts). Asked only toward an LLM destination
    /// ([`super::registry::model_addressed`]).
    fn model_addressed(&self, _path: &str) -> Option<String> {
        None
    }

    /// The top-level body fields that name the model a job of this provider's runs, for a
    /// request to `path` that starts one (Bedrock's batch inference `modelId`, a Vertex AI
    /// tuning job's `baseModel`): like [`Provider::model_addressed`], for policy and the record.
    fn job_model_fields(&self, _path: &CallPath<'_>) -> &'static [&'static str] {
        &[]
    }

    /// Whether `path` is one of this provider's LLM calls, on any host. The path a response is
    /// metered by: each path belongs to at most one provider.
    fn is_call(&self, path: &CallPath<'_>) -> bool;

    /// LLM work a request to `path` starts whose tokens and cost no response shows the proxy:
    /// a batch or fine-tuning job, a run or session that calls models later or elsewhere, a
    /// price that is not per token. `Some(what)` names it for the refusal (`"a batch job"`).
    /// Asked on any host (like [`Provider::is_call`]), of requests that may start work (not
    /// `GET`, `HEAD`, `OPTIONS` or `DELETE`).
    fn unmetered_work(&self, _path: &CallPath<'_>) -> Option<&'static str> {
        None
    }

    /// The request body fields that name the model and cap the output.
    fn request_fields(&self) -> &'static RequestFields;

    /// Where a request to this provider carries its API key.
    fn key_positions(&self) -> &'static KeyPositions;

    /// Folds the usage a whole JSON response body reports into `acc`. Later reports of a counter
    /// replace earlier ones (providers report cumulative counts); `acc` becomes `Some` once a
    /// usage object is seen, even an empty one.
    fn usage_from_json(&self, body: &Value, acc: &mut Option<Usage>);

    /// The members of a JSON response body's top object (of each element's, for a body that is
    /// an array) that [`Provider::usage_from_json`] reads. The meter parses only these into
    /// the tree it hands over and skips the rest (a completion's text, its choices), so the
    /// reader must not look at any other member.
    fn usage_members(&self) -> &'static [&'static str];

    /// Members [`Provider::usage_from_json`] also reads while the body is copied whole (up to the
    /// meter's copy limit), and not past it: members that grow with the output (the Responses
    /// API's `output`, where each web search is an item), which the scanner of a larger body
    /// cannot keep without giving up on the usage itself. Each is a list of items of which the
    /// reader sees each object item's `type` only (`{"type": …}`): the rest is the output.
    fn whole_body_members(&self) -> &'static [&'static str] {
        &[]
    }

    /// Folds the usage one stream event reports into `acc`, as [`Provider::usage_from_json`].
    /// `event` is the event's JSON payload, whatever framing carried it.
    fn usage_from_event(&self, event: &Value, acc: &mut Option<Usage>);

    /// Providers whose readers run after this one's on its responses (an API that returns
    /// another provider's shapes: Bedrock's `InvokeModel` returns Anthropic's). When the
    /// provider is unknown every reader runs once anyway.
    fn also_reads(&self) -> &'static [&'static dyn Provider] {
        &[]
    }

    /// Adds the generated content one stream event carries (text, tool-call arguments,
    /// reasoning) to `generated`, from which the stream's output is estimated before the
    /// provider reports it.
    fn count_generated(&self, event: &Value, generated: &mut Generated);

    /// For a provider whose streams report usage only when asked: the request body `body` to
    /// `path` (normalized as calls are recognized, so every path that is metered as a call is
    /// asked too) rewritten to ask, or `None` when nothing needs to change (not a stream, already
    /// asked, not a call that takes the option). The proxy asks on the agent's behalf so every
    /// streamed call can be metered.
    fn request_stream_usage(&self, _path: CallPath<'_>, _body: &[u8]) -> Option<Vec<u8>> {
        None
    }

    /// Whether `event` is the usage event [`Provider::request_stream_usage`] asked for (taken
    /// out of the stream again, so the agent sees exactly the stream it requested).
    fn is_requested_usage_event(&self, _event: &Value) -> bool {
        false
    }
}

/// A body field: the object keys from the top of the JSON body down to it (`&["max_tokens"]`,
/// or nested, `&["generationConfig", "maxOutputTokens"]`).
pub type Field = &'static [&'static str];

/// The request body fields that name the model (in precedence order: the first present counts)
/// and cap the output (the largest present counts: which one the upstream reads is its choice).
#[derive(Debug, Clone, Copy)]
pub struct RequestFields {
    /// Fields that name the model (a string).
    pub model: &'static [Field],
    /// Fields that cap the output tokens (a whole number).
    pub ceilings: &'static [Field],
}

/// Where requests carry an API key. The credential checks compare names the way upstream
/// frameworks fold them (`x_api_key` is `x-api-key`, `apiKey` is `api_key`).
#[derive(Debug, Clone, Copy)]
pub struct KeyPositions {
    /// Request headers.
    pub headers: &'static [&'static str],
    /// URL query parameters.
    pub query: &'static [&'static str],
    /// JSON or form body fields (at any depth).
    pub body: &'static [&'static str],
}

impl KeyPositions {
    /// No position (a vendor whose key positions are all generic ones).
    pub const NONE: KeyPositions = KeyPositions {
        headers: &[],
        query: &[],
        body: &[],
    };
}

/// The generated content seen in one stream event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Generated {
    /// Bytes of generated text.
    pub bytes: usize,
    /// Content deltas carrying them.
    pub deltas: u64,
    /// Of those, the ones that were not empty.
    pub nonempty: u64,
    /// Of the bytes, the ASCII digits.
    pub digits: usize,
    /// Characters outside ASCII, and the bytes they take.
    pub wide: (usize, usize),
    /// Hosted tool calls the stream shows the provider starting (each billed, whether or not
    /// the stream lives to report them).
    pub hosted_calls: crate::usage::HostedCalls,
}

impl Generated {
    /// Counts `text` when it is a string (an absent or non-string field counts nothing).
    pub fn add(&mut self, text: Option<&Value>) {
        if let Some(s) = text.and_then(Value::as_str) {
            self.text(s);
            self.deltas += 1;
            self.nonempty += u64::from(!s.is_empty());
        }
    }

    /// Counts every string and number inside `value`, at any depth, but under its own members
    /// named in `skip` (metadata: a role, an id, a signature; only at its top, so that a
    /// function's argument that happens to share such a name still counts), as one delta.
    ///
    /// SECURITY (budgets): a stream's guard sees only the output counted here, and a kind of
    /// output a reader names field by field is missed when a provider streams another (a
    /// legacy `function_call`, a Gemini `functionCall`, `executableCode` or `inlineData` part):
    /// uncounted, it streamed past every budget. Counting what is not named leans high, which
    /// a budget can afford.
    pub fn add_all(&mut self, value: Option<&Value>, skip: &[&str]) {
        let Some(value) = value else { return };
        let before = self.bytes;
        let counted = match value {
            Value::Object(members) => members
                .iter()
                .filter(|(name, _)| !skip.contains(&name.as_str()))
                .fold(false, |any, (_, member)| self.walk(member) | any),
            other => self.walk(other),
        };
        // A delta that carries nothing (`{}` with a finish reason) is none.
        if counted {
            self.deltas += 1;
            self.nonempty += u64::from(self.bytes > before);
        }
    }

    /// Counts a part as [`Self::add_all`] does; one whose only content is media (`media`: its
    /// base64 data, skipped as no text) is one delta all the same, at least a token: a stream of
    /// such parts went unguarded.
    pub fn add_part(&mut self, part: Option<&Value>, skip: &[&str], media: bool) {
        let before = self.nonempty;
        self.add_all(part, skip);
        if media && self.nonempty == before {
            self.deltas += 1;
            self.nonempty += 1;
        }
    }

    /// Counts the strings and numbers under `value`; whether it held any.
    fn walk(&mut self, value: &Value) -> bool {
        match value {
            Value::String(s) => {
                self.text(s);
                true
            }
            Value::Number(n) => {
                let mut buf = itoa::Buffer::new();
                let text = match n.as_i64() {
                    Some(i) => buf.format(i),
                    // A fraction or a huge number: about as many digits as it has.
                    None => "0000000000000000",
                };
                self.text(text);
                true
            }
            Value::Array(items) => items.iter().fold(false, |any, i| self.walk(i) | any),
            Value::Object(members) => members
                .values()
                .fold(false, |any, member| self.walk(member) | any),
            Value::Bool(_) | Value::Null => false,
        }
    }

    /// Counts the bytes of `s`: its digits and its characters outside ASCII apart.
    fn text(&mut self, s: &str) {
        self.bytes += s.len();
        self.digits += s.bytes().filter(u8::is_ascii_digit).count();
        if !s.is_ascii() {
            let wide = s.chars().filter(|c| !c.is_ascii());
            let (chars, bytes) = wide.fold((0, 0), |(n, b), c| (n + 1, b + c.len_utf8()));
            self.wide.0 += chars;
            self.wide.1 += bytes;
        }
    }

    /// Estimated output tokens, leaning high: about 4 bytes a token of ASCII text, but 3
    /// digits (tokenizers split numbers into groups of at most three) and 1 character outside
    /// ASCII (CJK, emoji) a token; at least 1 per delta.
    pub fn tokens(&self) -> u64 {
        if self.deltas == 0 {
            return 0;
        }
        let text = self.bytes - self.digits - self.wide.1;
        let estimate = text.div_ceil(4) + self.digits.div_ceil(3) + self.wide.0;
        (estimate as u64).max(self.deltas)
    }
}

/// A request path as servers route it: percent-decoded, repeated slashes folded, ASCII
/// lowercase, without its query, fragment and trailing slashes. So `/v1/%63hat/completions` and
/// `//V1/Chat//completions/` are `/v1/chat/completions`.
#[derive(Debug, Clone, Copy)]
pub struct CallPath<'a>(&'a [u8]);

/// Longest path normalized on the stack; a longer one takes one allocation.
const STACK_PATH: usize = 512;

impl CallPath<'_> {
    /// Runs `f` on `path` (origin form, query allowed) normalized. Typical paths are normalized
    /// on the stack: asking costs no allocation.
    pub fn with<R>(path: &str, f: impl FnOnce(CallPath<'_>) -> R) -> R {
        let path = without_query(path).as_bytes();
        // Decoding never lengthens a path.
        if path.len() <= STACK_PATH {
            let mut buf = [0u8; STACK_PATH];
            let n = normalize::<true>(path, &mut buf);
            f(CallPath(&buf[..n]))
        } else {
            let mut buf = vec![0u8; path.len()];
            let n = normalize::<true>(path, &mut buf);
            f(CallPath(&buf[..n]))
        }
    }

    /// Whether the path ends with `suffix` (lowercase, starting with `/`, so a match is a
    /// whole-segment match).
    pub fn ends_with(&self, suffix: &str) -> bool {
        self.0.ends_with(suffix.as_bytes())
    }

    /// Whether `needle` (lowercase) occurs in the path.
    pub fn contains(&self, needle: &str) -> bool {
        memchr::memmem::find(self.0, needle.as_bytes()).is_some()
    }

    /// Whether the path starts with `prefix` (lowercase, starting with `/`).
    pub fn starts_with(&self, prefix: &str) -> bool {
        self.0.starts_with(prefix.as_bytes())
    }

    /// The path before its last segments when they are `pattern`'s (lowercase, starting with
    /// `/`; a `*` segment is any one non-empty segment): `/v1` of `/v1/threads/abc/runs` for
    /// `/threads/*/runs`. `None` when they are not.
    pub fn before(&self, pattern: &str) -> Option<&[u8]> {
        let mut end = self.0.len();
        for want in pattern.as_bytes().rsplit(|b| *b == b'/') {
            if want.is_empty() {
                // The pattern's leading `/`: the segments matched are whole.
                break;
            }
            let start = memchr::memrchr(b'/', &self.0[..end])?;
            let segment = &self.0[start + 1..end];
            if !(segment == want || (want == b"*" && !segment.is_empty())) {
                return None;
            }
            end = start;
        }
        Some(&self.0[..end])
    }

    /// Whether the path is OpenAI's resource `rest` (`/batches`, `/threads/*/runs`): under
    /// `/v1/` (any prefix before it) or Azure OpenAI's `/openai/`.
    pub fn is_openai_resource(&self, rest: &str) -> bool {
        self.before(rest)
            .is_some_and(|head| head.ends_with(b"/v1") || head.ends_with(b"/openai"))
    }

    /// The operation of an OpenAI-style path: `chat/completions` of `/v1/chat/completions` (any
    /// prefix before `/v1/`) and of an Azure OpenAI deployment,
    /// `/openai/deployments/<name>/chat/completions`.
    pub fn is_openai_operation(&self, operation: &str) -> bool {
        let op = operation.as_bytes();
        let versioned = self
            .0
            .strip_suffix(op)
            .is_some_and(|head| head.ends_with(b"/v1/"));
        versioned || self.deployment_operation() == Some(op)
    }

    /// Whether the path is `operation` at the root, unversioned (`/audio/transcriptions`).
    pub fn is_root_operation(&self, operation: &str) -> bool {
        self.0
            .strip_prefix(b"/")
            .is_some_and(|rest| rest == operation.as_bytes())
    }

    /// What follows `/openai/deployments/<name>/` (its first occurrence), if anything.
    fn deployment_operation(&self) -> Option<&[u8]> {
        const DEPLOYMENTS: &[u8] = b"/openai/deployments/";
        let at = memchr::memmem::find(self.0, DEPLOYMENTS)?;
        let rest = &self.0[at + DEPLOYMENTS.len()..];
        let slash = memchr::memchr(b'/', rest)?;
        Some(&rest[slash + 1..])
    }
}

/// Writes `path` normalized into `out` (at least as long), ASCII-lowercased when `LOWER`;
/// returns the length written.
fn normalize<const LOWER: bool>(path: &[u8], out: &mut [u8]) -> usize {
    let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
    let mut n = 0;
    let mut i = 0;
    while i < path.len() {
        let mut b = path[i];
        i += 1;
        // Only a `%` looks at the bytes after it (most paths have none).
        if b == b'%' {
            if let (Some(h), Some(l)) = (hex(path.get(i)), hex(path.get(i + 1))) {
                b = (h * 16 + l) as u8;
                i += 2;
            }
        }
        if b == b'/' && n > 0 && out[n - 1] == b'/' {
            continue;
        }
        out[n] = if LOWER { b.to_ascii_lowercase() } else { b };
        n += 1;
    }
    while n > 0 && out[n - 1] == b'/' {
        n -= 1;
    }
    n
}

/// `path` normalized as [`CallPath`] normalizes it (no query or fragment, percent-decoded,
/// repeated and trailing slashes dropped) but with its case kept, when it may hold `marker` (a
/// segment such as `/models/`, in any case, escaped, or behind repeated slashes). A model named
/// in a path is read from this, so the call and its model are never found on paths read two
/// ways. Bytes that are not UTF-8 once decoded are replaced, so such a model is still read (and
/// priced as the unknown model it is). `None` for a path that cannot hold `marker` (most paths:
/// nothing is copied then).
pub(super) fn routed(path: &str, marker: &str) -> Option<String> {
    let path = without_query(path);
    // Asked of every request's path, several times: byte scans, no substring searchers.
    let bytes = path.as_bytes();
    let may = memchr::memchr(b'%', bytes).is_some()
        || bytes.windows(2).any(|pair| pair == b"//")
        || find_ignore_case(path, marker, false).is_some();
    if !may {
        return None;
    }
    let mut out = vec![0u8; path.len()];
    let n = normalize::<false>(path.as_bytes(), &mut out);
    Some(String::from_utf8_lossy(&out[..n]).into_owned())
}

/// `path` without its query and fragment.
fn without_query(path: &str) -> &str {
    let end = memchr::memchr2(b'?', b'#', path.as_bytes()).unwrap_or(path.len());
    &path[..end]
}

/// Where `needle` (ASCII) is in `hay`, in any ASCII case: the first place, or the last.
pub(super) fn find_ignore_case(hay: &str, needle: &str, last: bool) -> Option<usize> {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    let first = n.first()?.to_ascii_lowercase();
    // The first byte alone rules out almost every place, so the rest is compared rarely.
    let mut at = (0..=h.len().checked_sub(n.len())?).filter(|&i| {
        h[i].to_ascii_lowercase() == first && h[i..i + n.len()].eq_ignore_ascii_case(n)
    });
    if last {
        at.next_back()
    } else {
        at.next()
    }
}

/// A usage count at `path` in `v`: `Ok(None)` when absent (or null), `Err(())` when present but
/// not a non-negative integer. A report that cannot be read is no report (the call keeps its
/// reservation), never a zero.
fn count(v: &Value, path: &[&str]) -> Result<Option<u64>, ()> {
    match path.iter().try_fold(v, |v, name| v.get(name)) {
        None | Some(Value::Null) => Ok(None),
        Some(n) => n.as_u64().map(Some).ok_or(()),
    }
}

/// Whether `host` (a trailing dot ignored) ends with `suffix` after at least one more byte,
/// ignoring ASCII case: a regional host of a provider (`eu.api.openai.com`,
/// `us-central1-aiplatform.googleapis.com`).
pub(super) fn host_ends_with(host: &str, suffix: &str) -> bool {
    let host = host.trim_end_matches('.');
    host.len() > suffix.len()
        && host.is_char_boundary(host.len() - suffix.len())
        && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// Folds a report whose input, output, cached-input and total counts are at `paths` (in that
/// order) into `acc`, as OpenAI's APIs write them. An empty or unreadable report (`{}`, a
/// negative or fractional count) is none. SECURITY (budgets): so is one that gives its input but
/// neither its output nor a total to tell it from (a compatible server's partial report): read
/// as no output, a 200 KB answer was settled at its prompt; an embedding's report, whose total
/// is its input, is whole.
fn fold_counts(u: &Value, paths: [&[&str]; 4], acc: &mut Option<Usage>) {
    let [Ok(input), Ok(mut output), Ok(cached), Ok(total)] = paths.map(|p| count(u, p)) else {
        return;
    };
    if input.is_none() && output.is_none() {
        return;
    }
    if output.is_none() {
        match (input, total) {
            (Some(i), Some(t)) if t >= i => output = Some(t - i),
            _ => return,
        }
    }
    let entry = acc.get_or_insert_with(Usage::default);
    if let Some(n) = input {
        entry.input_tokens = n;
    }
    if let Some(n) = output {
        entry.output_tokens = n;
    }
    if let Some(n) = cached {
        entry.cached_input_tokens = n;
    }
}

/// The whole number at a path of member names (`&["a", "b"]` reads what `v.pointer("/a/b")`
/// reads), found without the two strings `Value::pointer` allocates per name, and without
/// splitting a path string on every read: the readers' paths are fixed.
fn num(v: &Value, path: &[&str]) -> Option<u64> {
    path.iter()
        .try_fold(v, |v, name| v.get(name))
        .and_then(Value::as_u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_ignore_case_finds_the_first_or_last_place_in_any_case() {
        let hay = "/v1/Models/a/MODELS/b";
        assert_eq!(find_ignore_case(hay, "/models/", false), Some(3));
        assert_eq!(find_ignore_case(hay, "/models/", true), Some(12));
        assert_eq!(find_ignore_case(hay, "models/", false), Some(4));
        assert_eq!(find_ignore_case(hay, "models/", true), Some(13));
        assert_eq!(find_ignore_case(hay, "/models/b/", false), None);
        assert_eq!(find_ignore_case("/mod", "/models/", false), None);
        // The needle at the very end, and a place too near the end to hold it.
        assert_eq!(find_ignore_case("x/MODELS/", "/models/", true), Some(1));
        assert_eq!(
            find_ignore_case("/models/x/model", "/models/", true),
            Some(0)
        );
        assert_eq!(find_ignore_case("", "/", false), None);
    }

    #[test]
    fn num_reads_what_pointer_reads() {
        let v = serde_json::json!({
            "a": 1, "b": {"c": 2, "d": {"e": 3}}, "f": "4", "g": [5], "h": -1, "i": 1.5, "j": null,
        });
        for path in [
            "/a", "/b/c", "/b/d/e", "/b/d", "/f", "/g", "/h", "/i", "/j", "/x", "/a/b", "/b/x/e",
        ] {
            let names: Vec<&str> = path.split('/').skip(1).collect();
            assert_eq!(
                num(&v, &names),
                v.pointer(path).and_then(Value::as_u64),
                "{path}"
            );
        }
        assert_eq!(num(&v, &["b", "d", "e"]), Some(3));
    }

    #[test]
    fn paths_are_normalized_as_servers_route_them() {
        let cases = [
            ("/v1/chat/completions", "/v1/chat/completions"),
            ("/v1/%63hat/completions?x=1#f", "/v1/chat/completions"),
            ("//V1/Chat//completions/", "/v1/chat/completions"),
            ("/a%2F%2Fb/", "/a/b"),
            ("/bad%zz%4", "/bad%zz%4"),
            ("/%%41%4g%2", "/%a%4g%2"),
            ("", ""),
            ("///", ""),
        ];
        for (raw, want) in cases {
            CallPath::with(raw, |p| assert_eq!(p.0, want.as_bytes(), "{raw}"));
        }
        // Longer than the stack buffer: the same rule.
        let long = format!("/{}/V1//Messages/", "x".repeat(STACK_PATH));
        CallPath::with(&long, |p| assert!(p.ends_with("/v1/messages"), "{long}"));
    }

    #[test]
    fn openai_operations() {
        let cases = [
            ("/v1/chat/completions", "chat/completions", true),
            ("/proxy/v1/chat/completions", "chat/completions", true),
            ("/xv1/chat/completions", "chat/completions", false),
            ("/v1/chat/completions", "completions", false),
            (
                "/openai/deployments/gpt4/chat/completions",
                "chat/completions",
                true,
            ),
            (
                "/openai/deployments/gpt4/x/chat/completions",
                "chat/completions",
                false,
            ),
            ("/openai/deployments/chat/completions", "completions", true),
            ("/openai/deployments/gpt4", "responses", false),
        ];
        for (path, op, want) in cases {
            CallPath::with(path, |p| {
                assert_eq!(p.is_openai_operation(op), want, "{path} {op}")
            });
        }
    }

    #[test]
    fn generated_content_estimates_lean_high() {
        let mut g = Generated::default();
        assert_eq!(g.tokens(), 0);
        g.add(Some(&Value::from("")));
        assert_eq!(g.tokens(), 1, "an empty delta still counts one");
        g.add(Some(&Value::from("Hello there, ")));
        assert_eq!(
            g,
            Generated {
                bytes: 13,
                deltas: 2,
                nonempty: 1,
                digits: 0,
                wide: (0, 0),
                hosted_calls: Default::default(),
            }
        );
        assert_eq!(g.tokens(), 4);
        // Digits come at most three a token, characters outside ASCII one each.
        let mut digits = Generated::default();
        digits.add(Some(&Value::from("1234567890".repeat(4))));
        assert_eq!(digits.tokens(), 14);
        let mut wide = Generated::default();
        wide.add(Some(&Value::from("東京は晴れ 🙂 ok")));
        assert_eq!(wide.tokens(), 6 + 1);
        g.add(Some(&Value::from(5)));
        g.add(None);
        assert_eq!(g.deltas, 2, "only strings are content");
    }
}
