//! After admission: the upstream request as it leaves, and the response's stages.
//!
//! The response body runs through its stages in one fixed order ([`Stages::feed`]):
//!
//! 1. the MCP list filter, so nothing after it sees an item the workload may not use;
//! 2. the usage meter (and the stream guard that cuts a stream past its budget), reading the
//!    bytes the upstream sent;
//! 3. the usage-event stripper (the usage event the proxy asked for, the agent did not);
//! 4. the echo scrubber, last, on exactly what the client receives.

use std::sync::Arc;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{Error, ErrorType};

use super::admit::{Admitted, HttpGrant};
use super::record::Trail;
use crate::body::{BodyBudget, BodyError, BodyHold};
use crate::context::TenantContext;
use crate::credentials::apply::Applied;
use crate::credentials::scrub::{Patterns, Scrubber};
use crate::error::Deny;
use crate::limits::stream::{CutReason, StreamGuard, Verdict};
use crate::limits::LimitBackend;
use crate::mcp::list_filter::{FilterError, ListFilter};
use crate::metrics::METRICS;
use crate::policy::ItemKind;
use crate::usage::strip::UsageEventStripper;
use crate::usage::{HostedCalls, UsageMeter};

// Header names the upstream request removes, parsed once (a `&str` name is parsed again on
// every call). `traceparent` is set by its `&'static str`: pingora writes a name it is given as
// text as written (lowercase, as the W3C spec spells it), a `HeaderName` titled.
const PROXY_CONNECTION: http::HeaderName = http::HeaderName::from_static("proxy-connection");
const HOLD: http::HeaderName = http::HeaderName::from_static(crate::approvals::HOLD_HEADER);
const BAGGAGE: http::HeaderName = http::HeaderName::from_static("baggage");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// The server's own session ids go upstream in place of the sealed ones the agent sent
/// ([`crate::mcp::session`]), in the upstream request as it leaves (credentials already
/// substituted into its query).
fn mcp_session_upstream(
    opened: &crate::mcp::session::Opened,
    upstream: &mut RequestHeader,
) -> pingora::Result<()> {
    if let Some(id) = &opened.header {
        upstream.insert_header(crate::mcp::session::MCP_SESSION_ID, id.as_str())?;
    }
    let current = upstream.uri.path_and_query().map_or("/", |p| p.as_str());
    let path_and_query = opened.upstream_path(current).map_err(|_| {
        Error::explain(
            ErrorType::InternalError,
            "an MCP session parameter changed after it was opened",
        )
    })?;
    if let Some(path_and_query) = path_and_query {
        let uri: http::Uri = path_and_query.parse().map_err(|_| {
            Error::explain(
                ErrorType::InternalError,
                "opened MCP path is not a valid URI",
            )
        })?;
        upstream.set_uri(uri);
    }
    Ok(())
}

/// Writes the admitted request as it goes upstream: origin-form target, the substitutions, an
/// MCP server's own session ids (`mcp_session`), the real body length, `Host`, no identity
/// material, trace context; signed last.
pub fn upstream_request(
    admitted: &Admitted,
    grant: &HttpGrant,
    wants_readable: bool,
    mcp_session: Option<&crate::mcp::session::Opened>,
    upstream: &mut RequestHeader,
) -> pingora::Result<()> {
    let dest = admitted.permit.destination();
    let uri: http::Uri = dest.upstream_path.parse().map_err(|_| {
        Error::explain(ErrorType::InternalError, "upstream path is not a valid URI")
    })?;
    upstream.set_uri(uri);
    if let Some(applied) = &grant.applied {
        apply_substitutions(applied, upstream)?;
    }
    // After the substitutions (the session ids open in the query they left) and before the
    // signature (which covers the path the server gets).
    if let Some(opened) = mcp_session {
        mcp_session_upstream(opened, upstream)?;
    }
    // The body may have been rewritten (credentials, usage request): send its real length.
    if let Some(body) = &grant.body {
        if upstream.headers.contains_key(http::header::CONTENT_LENGTH) {
            upstream.insert_header(
                http::header::CONTENT_LENGTH,
                http::HeaderValue::from(body.0.len()),
            )?;
        }
    }
    // A decoded body goes as it was read (the decision was made on it), not re-encoded.
    if grant.body_decoded {
        upstream.remove_header(&http::header::CONTENT_ENCODING);
    }
    upstream.insert_header(http::header::HOST, dest.host_header())?;
    // SECURITY: identity material and agent-written tenant claims never leave the proxy.
    upstream.remove_header(&http::header::PROXY_AUTHORIZATION);
    upstream.remove_header(&PROXY_CONNECTION);
    // The hold id an agent polls with is the proxy's, not the upstream's.
    upstream.remove_header(&HOLD);
    // The body was read whole (the client was told `100 Continue`); it goes with the head.
    upstream.remove_header(&http::header::EXPECT);
    // Each listed name in any spelling a server may read it by: servers that read headers
    // CGI-style (`HTTP_X_TENANT_ID`) take `x_tenant_id` for `x-tenant-id`.
    let strip = &admitted.snapshot.tenants.strip_headers;
    let claims: Vec<http::HeaderName> = upstream
        .headers
        .keys()
        .filter(|k| {
            strip
                .iter()
                .any(|s| crate::header_names::same_but_underscores(k, s))
        })
        .cloned()
        .collect();
    for name in &claims {
        upstream.remove_header(name);
    }
    // W3C baggage has no integrity and may name tenants: only internal routes get it.
    if !dest.internal {
        upstream.remove_header(&BAGGAGE);
    }
    upstream.insert_header("traceparent", admitted.tenant.trace.traceparent())?;
    // A `tracestate` belongs to the `traceparent` it came with: a trace started anew (none came,
    // or one that was not valid) starts without the caller's vendor entries (W3C Trace Context).
    if admitted.tenant.trace.parent_span_id.is_none() && upstream.headers.contains_key(TRACESTATE) {
        upstream.remove_header(&TRACESTATE);
    }
    // LLM responses are metered as they stream, MCP lists filtered and echoed secrets scrubbed:
    // each needs the bytes as sent, so the upstream is asked for no compression (without
    // `Accept-Encoding` it could pick any), and a WebSocket for no extension (permessage-deflate
    // would compress frames past the scrubber).
    if wants_readable {
        upstream.insert_header(
            http::header::ACCEPT_ENCODING,
            http::HeaderValue::from_static("identity"),
        )?;
    }
    if grant.applied.as_ref().is_some_and(Applied::scrubs) {
        upstream.remove_header(&http::header::SEC_WEBSOCKET_EXTENSIONS);
    }
    // Signed last: the signature covers the request exactly as it leaves (body included).
    if let Some(cred) = grant.applied.as_ref().and_then(|a| a.sign.as_ref()) {
        if let crate::credentials::kind::Kind::AwsSigv4(key) = &cred.kind {
            let body = grant.body.as_ref().map_or(&[][..], |b| b.0.as_ref());
            crate::credentials::sigv4::sign(
                key,
                upstream,
                dest.scheme.as_str(),
                body,
                std::time::SystemTime::now(),
            )
            .map_err(|e| Error::explain(ErrorType::InternalError, e.to_string()))?;
        }
    }
    Ok(())
}

/// Writes the credential substitutions into the upstream request header.
fn apply_substitutions(applied: &Applied, upstream: &mut RequestHeader) -> pingora::Result<()> {
    if let Some(pq) = &applied.path_and_query {
        let uri: http::Uri = pq.parse().map_err(|_| {
            Error::explain(
                ErrorType::InternalError,
                "substituted path is not a valid URI",
            )
        })?;
        upstream.set_uri(uri);
    }
    for name in &applied.remove_headers {
        upstream.remove_header(name);
    }
    let mut replaced: Vec<&http::HeaderName> = Vec::new();
    for (name, value) in &applied.set_headers {
        if !replaced.contains(&name) {
            upstream.remove_header(name);
            replaced.push(name);
        }
        upstream.append_header(name.clone(), value.clone())?;
    }
    Ok(())
}

/// Why a response stops before its end.
#[derive(Debug)]
pub enum Cut {
    /// A stream outran its budget: ended with the budget event.
    Budget(CutReason),
    /// An MCP list could not be filtered: the rest is withheld.
    Unfiltered(FilterError),
    /// What the stages must hold to read the response does not fit the body memory bound.
    Overloaded(Deny),
}

/// The stages one response body runs through, in their one order.
#[derive(Debug, Default)]
pub struct Stages {
    list: Option<ListFilter>,
    meter: Option<UsageMeter>,
    guard: Option<StreamGuard>,
    strip: Option<UsageEventStripper>,
    scrub: Option<Scrubber>,
    /// The configuration generation whose secrets `scrub` looks for (or found none to).
    scrub_generation: u64,
    /// The body is sent as it is (no content coding): a scrubber could read it.
    readable: bool,
    /// The response is a success (a metered one without readable usage is counted).
    success: bool,
    /// An LLM call's response that no meter can read (compressed, or of a type that carries no
    /// usage the proxy reads): its usage is unknown, and counted so.
    unread: bool,
    /// Of an LLM call's answer, when no ceiling field of its API caps its output, the bytes
    /// seen so far (see [`Stages::output_seen`]); `None` when they bound nothing.
    uncapped_bytes: Option<u64>,
    /// An SSE stream as sent (not compressed, no declared length) and not an MCP server's: a
    /// cut may end it with an event of ours.
    open_sse: bool,
    /// What the stages buffer of the response, held against the body memory bound.
    held: Option<Held>,
    /// The chunk in hand waited for an extension ([`Stages::read_upstream`]): it goes on only
    /// if one covers it now.
    waited: bool,
}

/// The body memory a response's stages hold, and whose it is (the request's context, shared:
/// a copy of the tenant's id would be an allocation on every metered answer).
#[derive(Debug)]
struct Held {
    budget: Arc<BodyBudget>,
    who: Arc<TenantContext>,
    /// `None` until the stages buffer more than [`UNCOUNTED_RESPONSE_BYTES`].
    hold: Option<BodyHold>,
}

/// What a response's stages may buffer before it is held against the body memory bound: about
/// what one chunk brings (every answer in flight has its session's buffers beside it, about
/// 100 KiB, uncounted), so that the usual answer of a few kilobytes takes no hold at all.
const UNCOUNTED_RESPONSE_BYTES: usize = 64 * 1024;

/// What the stages are set up from, besides the response head.
#[derive(Debug)]
pub struct StageSetup<'a> {
    /// The admitted request.
    pub admitted: &'a Admitted,
    /// Its HTTP grant.
    pub grant: &'a HttpGrant,
    /// The request named a model (an LLM call).
    pub llm: bool,
    /// The request was a `HEAD`.
    pub head: bool,
    /// The limiter, for a stream guard's extensions.
    pub limits: Arc<dyn LimitBackend>,
    /// The body memory bound, which what the stages buffer counts against.
    pub bodies: &'a Arc<BodyBudget>,
}

impl Stages {
    /// Asks the stream's next extensions (if it is guarded) on its keys as `now_of` gives them:
    /// the same counters, their ceilings as a reload left them.
    pub fn guard_ceilings_now(
        &mut self,
        now_of: impl FnOnce(&[crate::limits::LimitKey]) -> Vec<crate::limits::LimitKey>,
    ) {
        if let Some(guard) = self.guard.as_mut() {
            let keys = now_of(guard.keys());
            guard.set_keys(keys);
        }
    }

    /// The configuration generation whose secrets the response is scrubbed of.
    pub fn scrub_generation(&self) -> u64 {
        self.scrub_generation
    }

    /// From the next chunk on, the response is scrubbed of `echoes` too: the secrets a response
    /// from its host may echo under configuration generation `generation` (a secret bound to
    /// the host, or rotated, while the response lasts). A response that was not scrubbed starts
    /// being scrubbed, keeping every length (its `Content-Length`, a WebSocket's frames).
    ///
    /// SECURITY: one still compressed cannot be read for them: it ends (`Err`, with the refusal
    /// a fresh request there would get once its answer came compressed), since the proxy never
    /// passes on what it cannot scrub.
    pub fn look_for_secrets(
        &mut self,
        generation: u64,
        echoes: Option<Arc<Patterns>>,
    ) -> Result<(), Deny> {
        self.scrub_generation = generation;
        let Some(echoes) = echoes else {
            return Ok(());
        };
        match self.scrub.as_mut() {
            Some(scrubber) => scrubber.look_for(&echoes),
            None if self.readable => self.scrub = Some(Scrubber::new(echoes).keeping_length()),
            None => return Err(Deny::UpstreamEncoded(crate::error::SCRUBBED)),
        }
        Ok(())
    }

    /// Sets up the stages this response needs and adjusts its head for them (a body whose
    /// length a stage may change loses its `Content-Length`). Refuses a response that must be
    /// read but cannot be (an MCP list that cannot be filtered, a compressed answer to a request
    /// that carried a secret).
    pub fn for_response(
        setup: StageSetup<'_>,
        trail: &Trail,
        resp: &mut ResponseHeader,
    ) -> Result<Self, Deny> {
        // Every line of a list header; one line of the type, or none (two types are no type
        // the meter or the stripper can rely on).
        // (A charset whose text is not its bytes is an encoding too: no secret or usage in it
        // can be read.)
        let encoded = crate::header_names::content_coded(&resp.headers)
            || crate::header_names::foreign_charset(&resp.headers);
        let mut stages = Stages {
            success: resp.status.is_success(),
            scrub_generation: setup.admitted.snapshot.generation,
            readable: !encoded,
            ..Stages::default()
        };
        let content_type = crate::header_names::sole(&resp.headers, http::header::CONTENT_TYPE)
            .ok()
            .flatten()
            .and_then(|v| v.to_str().ok());
        let sse = content_type.is_some_and(|v| v.starts_with("text/event-stream"));
        // Meter LLM calls whose response is readable as sent.
        if setup.llm && !encoded {
            let provider = setup.grant.call_api;
            stages.meter = content_type.and_then(|ct| UsageMeter::for_response(ct, provider));
        }
        if let Some(exchange) = &trail.mcp {
            let mcp = &setup.admitted.snapshot.tenants.mcp;
            let prefix = mcp.path_prefix_of(&exchange.server);
            let tenant = &setup.admitted.tenant;
            let sealer = crate::mcp::session::Sealer::new(
                mcp.session_key.clone(),
                tenant.tenant.as_str(),
                tenant.workload.as_str(),
                &exchange.server,
            );
            stages.list = crate::mcp::response_filter(
                exchange,
                mcp.max_message_bytes,
                prefix,
                &sealer,
                resp,
            )?;
        }
        stages.unread = setup.llm && stages.meter.is_none();
        let grant = setup.grant;
        // SECURITY (budgets): an answer to a call whose output no ceiling field of its API caps
        // may run past any reservation, and one in a shape no reader knows (an Ollama
        // `/api/chat` NDJSON stream, a `text/plain` one, JSON without a usage the readers find)
        // shows no estimate of it. Every generated token is at least one byte of text, so the
        // bytes passed bound its output: such an answer is settled by them, and guarded by them
        // when no meter reads it, as a metered stream is by its estimate. (A compressed answer,
        // which the proxy asked not to get, bounds nothing.)
        if setup.llm && !encoded && grant.max_output_tokens.is_none() {
            stages.uncapped_bytes = Some(0);
        }
        // SECURITY (budgets): such an answer compressed (the proxy asked for `identity`) bounds
        // nothing, so while a token or cost quota applies (the ceilings that cut a stream) it is
        // withheld rather than settled at its reservation, however much it generated.
        if setup.llm
            && grant.max_output_tokens.is_none()
            && resp.status.is_success()
            && crate::credentials::scrub::unreadable_encoding(
                resp.status.as_u16(),
                setup.head,
                &resp.headers,
            )
            && grant
                .limits
                .as_ref()
                .is_some_and(|a| !a.quota_keys().is_empty())
        {
            return Err(Deny::UpstreamEncoded(crate::error::METERED));
        }
        // A stream that may be cut for budget ends with an event of ours, so its length changes.
        // Only hard ceilings (quotas) cut a stream; a per-minute rate does not.
        let guarded = stages.meter.as_ref().is_some_and(UsageMeter::is_stream)
            || (stages.unread && stages.uncapped_bytes.is_some());
        if let (true, Some(plan), Some(admission)) = (guarded, grant.stream_plan, &grant.limits) {
            let keys = admission.quota_keys();
            if !keys.is_empty() {
                stages.guard = Some(
                    StreamGuard::new(
                        setup.limits.clone(),
                        keys,
                        plan.covered_output,
                        plan.step_tokens,
                        plan.step,
                    )
                    .asking_ahead_from(plan.ask_ahead_from),
                );
                if stages.cut_ends_with_event() {
                    resp.remove_header(&http::header::CONTENT_LENGTH);
                }
            }
        }
        if let (Some(asked), true) = (grant.usage_requested, sse) {
            stages.strip = Some(UsageEventStripper::new(asked));
            resp.remove_header(&http::header::CONTENT_LENGTH);
        }
        if let Some(applied) = grant.applied.as_ref().filter(|a| a.scrubs()) {
            // SECURITY: the request carried a secret, or went where the tenant's are bound, and
            // asked for `identity`; a body still compressed (or WebSocket frames an extension
            // may compress) could hide an echo, so it is withheld, never passed on.
            if crate::credentials::scrub::unreadable_encoding(
                resp.status.as_u16(),
                setup.head,
                &resp.headers,
            ) {
                return Err(Deny::UpstreamEncoded(crate::error::SCRUBBED));
            }
            let mut scrubber = Scrubber::new(applied.scrub_patterns());
            if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
                scrubber.upgraded(&resp.headers);
            }
            scrubber
                .scrub_response_header(resp)
                .map_err(|_| Deny::Internal)?;
            count_scrubbed(trail, scrubber.replaced);
            // Replacing a secret changes the body's length.
            resp.remove_header(&http::header::CONTENT_LENGTH);
            stages.scrub = Some(scrubber);
        }
        // SECURITY: an MCP answer is read whole (up to `max_message_bytes`, 8 MiB by default),
        // a usage copy up to 2 MiB, an event-stream message up to 2 MiB, an SSE event up to
        // 256 KiB in each of three readers: uncounted, a hostile upstream's answers to many
        // requests at once held all the memory the request bodies' bound keeps. They count
        // against the same bound, as they grow.
        if stages.list.is_some() || stages.meter.is_some() || stages.strip.is_some() {
            stages.held = Some(Held {
                budget: setup.bodies.clone(),
                who: setup.admitted.tenant.clone(),
                hold: None,
            });
        }
        stages.open_sse = sse
            && !encoded
            && trail.mcp.is_none()
            && !resp.headers.contains_key(http::header::CONTENT_LENGTH);
        Ok(stages)
    }

    /// Whether a response cut for a reason other than its budget (its identity lapsed) ends
    /// with an error event: an SSE stream does (a client sees why); any other framing (JSON, an
    /// MCP server's JSON-RPC events, a compressed body, a declared length) just ends short.
    pub fn cut_ends_with_sse_event(&self) -> bool {
        self.open_sse
    }

    /// Reads `body` as the upstream sent it (pingora's upstream body filter, which runs before
    /// the downstream one): counts what the buffers will hold, meters it, and decides whether
    /// it may go on. `Some(wait)`: the chunk takes the output past what its reservation covers
    /// and an extension is being asked for; pingora waits that long before the downstream
    /// filter ([`Self::feed`]) decides again. The usage read so far is kept for the record.
    pub fn read_upstream(
        &mut self,
        body: &Option<Bytes>,
        end: bool,
        trail: &mut Trail,
    ) -> Result<Option<std::time::Duration>, Cut> {
        let more = body.as_ref().map_or(0, Bytes::len);
        self.hold_buffers(more, end).map_err(Cut::Overloaded)?;
        if end && self.unread && self.success {
            METRICS
                .llm_usage_unknown
                .with_label_values(&[trail.tenant_label()])
                .inc();
        }
        // Usage is read from the bytes the upstream sent, before anything is removed.
        if let Some(meter) = self.meter.as_mut() {
            if let Some(b) = body.as_ref() {
                meter.feed(b);
            }
            if end {
                trail.usage = meter.finish();
                if trail.usage.is_none() && self.success {
                    METRICS
                        .llm_usage_unknown
                        .with_label_values(&[trail.tenant_label()])
                        .inc();
                }
            }
        }
        if let (Some(seen), Some(b)) = (self.uncapped_bytes.as_mut(), body.as_ref()) {
            *seen += b.len() as u64;
        }
        let seen = self.output_seen();
        match self.guard.as_mut().map(|g| g.observe(seen)) {
            Some(Verdict::Cut(reason)) => Err(Cut::Budget(reason)),
            Some(Verdict::Wait(wait)) => {
                self.waited = true;
                Ok(Some(wait))
            }
            Some(Verdict::Pass) | None => Ok(None),
        }
    }

    /// Runs `body`, already read by [`Self::read_upstream`], through the stages that change
    /// what goes on, in order. `allowed` decides whether a list may show an item.
    pub fn feed(
        &mut self,
        body: &mut Option<Bytes>,
        end: bool,
        trail: &mut Trail,
        allowed: &mut dyn FnMut(ItemKind, &str) -> bool,
    ) -> Result<(), Cut> {
        // A chunk that waited for an extension goes on only if one covers it now.
        if std::mem::take(&mut self.waited) {
            let seen = self.output_seen();
            if let Some(Verdict::Cut(reason)) = self.guard.as_mut().map(|g| g.after_wait(seen)) {
                *body = None;
                return Err(Cut::Budget(reason));
            }
        }
        if let Some(filter) = self.list.as_mut() {
            let chunk = body.take().unwrap_or_default();
            *body = Some(filter.feed(&chunk, end, allowed).map_err(Cut::Unfiltered)?);
        }
        if let Some(strip) = self.strip.as_mut() {
            let chunk = body.take().unwrap_or_default();
            *body = Some(strip.feed(&chunk, end));
        }
        if let Some(scrub) = self.scrub.as_mut() {
            let before = scrub.replaced;
            *body = scrub.scrub_chunk(body.take(), end);
            count_scrubbed(trail, scrub.replaced - before);
        }
        if let Some(b) = body {
            trail.bytes_out += b.len() as u64;
        }
        Ok(())
    }

    /// Holds, before they take the next `more` bytes, what the list filter, the meter and the
    /// usage stripper will buffer against the body memory bound (a hold only grows: it is given back when the
    /// request ends). When it does not fit, the meter stops copying a JSON answer (its usage is
    /// read from the members that carry it, as past the copy limit); if it still does not, the
    /// response is cut.
    fn hold_buffers(&mut self, more: usize, end: bool) -> Result<(), Deny> {
        loop {
            let buffered = self.list.as_ref().map_or(0, |l| l.held_with(more, end))
                + self.meter.as_ref().map_or(0, |m| m.held_with(more))
                + self.strip.as_ref().map_or(0, |s| s.buffered() + more);
            let Some(held) = self.held.as_mut() else {
                return Ok(());
            };
            let grown = match &mut held.hold {
                None if buffered <= UNCOUNTED_RESPONSE_BYTES => Ok(()),
                None => held
                    .budget
                    .try_hold(&held.who.tenant, buffered as u64)
                    .map(|hold| held.hold = Some(hold)),
                Some(hold) => hold.try_grow_to(&held.who.tenant, buffered as u64),
            };
            match grown {
                Ok(()) => return Ok(()),
                Err(_) if self.meter.as_mut().is_some_and(UsageMeter::stop_copying) => {}
                Err(refusal) => {
                    crate::body::count_overload(&refusal);
                    return Err(match refusal {
                        BodyError::Overloaded => Deny::Overloaded("response body memory"),
                        other => other.into(),
                    });
                }
            }
        }
    }

    /// The MCP list filter (what it hid, for the record).
    pub fn list_filter(&self) -> Option<&ListFilter> {
        self.list.as_ref()
    }

    /// Output tokens a streamed response carried as far as the proxy could tell (0 for a body
    /// that is not a stream, see [`UsageMeter::output_estimate`]); when the meter saw none of
    /// an answer to a call nothing caps (no meter reads it, or its shape is unknown), its bytes
    /// (an upper bound: every token is at least a byte).
    pub fn output_seen(&self) -> u64 {
        let estimate = self.meter.as_ref().map_or(0, UsageMeter::output_estimate);
        // A metered stream's bytes stand for its output only once it has shown its shape and
        // no content in it: before its first event is whole, a first event arriving in several
        // reads (a Gemini image part) was counted by its base64 bytes and an honest answer cut
        // at once. Bytes past twice an event's bound with no event whole (comments, lines that
        // never end an event) show a shape no reader knows.
        let shown = |bytes: u64| {
            bytes > 2 * crate::usage::sse::MAX_EVENT as u64
                || self
                    .meter
                    .as_ref()
                    .is_none_or(UsageMeter::has_shown_its_shape)
        };
        match self.uncapped_bytes {
            Some(bytes) if estimate == 0 && shown(bytes) => bytes,
            _ => estimate,
        }
    }

    /// Whether a cut ends the response with the stream's error event: a metered stream's does;
    /// an answer no meter reads is of a framing the proxy does not write, and just ends short.
    pub fn cut_ends_with_event(&self) -> bool {
        self.meter.is_some()
    }

    /// The error event a cut ends the response with (see [`Stages::cut_ends_with_event`]), in
    /// the stream's own framing: an SSE `error` event, or an AWS event stream's exception
    /// message.
    pub fn cut_event(&self, deny: &Deny, request_id: &str) -> Option<Vec<u8>> {
        let meter = self.meter.as_ref()?;
        let (_, code, message) = deny.describe();
        Some(if meter.is_event_stream() {
            crate::usage::eventstream::exception(code.as_str(), &message, request_id)
        } else {
            crate::limits::stream::cut_event(code.as_str(), &message, request_id)
        })
    }

    /// Hosted tool calls a streamed response showed starting (see
    /// [`UsageMeter::hosted_calls_seen`]).
    pub fn streamed_hosted_calls(&self) -> HostedCalls {
        self.meter
            .as_ref()
            .map_or_else(HostedCalls::default, UsageMeter::hosted_calls_seen)
    }

    /// Budget extensions a stream guard was granted, the one still being asked for included
    /// once it has its answer (added to the reservation before settling).
    pub async fn extensions(&mut self) -> Option<crate::limits::Charge> {
        match self.guard.as_mut() {
            Some(guard) => Some(guard.finish().await),
            None => None,
        }
    }
}

fn count_scrubbed(trail: &Trail, n: u64) {
    if n > 0 {
        METRICS
            .credential_scrubbed
            .with_label_values(&[trail.tenant_label()])
            .inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "sk-old-0123456789abcdef";
    const NEW: &str = "sk-new-fedcba9876543210";

    fn patterns(value: &str) -> Arc<Patterns> {
        Arc::new(Patterns::compile([("key", value.as_bytes())]))
    }

    /// `text` through `stages` as the response's last chunk.
    fn last_chunk(stages: &mut Stages, text: &str) -> String {
        let mut trail = Trail::new(Arc::from("l"), "GET".into());
        let mut body = Some(Bytes::from(text.to_owned()));
        stages
            .feed(&mut body, true, &mut trail, &mut |_, _| true)
            .expect("fed");
        String::from_utf8(body.unwrap_or_default().to_vec()).expect("utf-8")
    }

    /// A secret bound to the response's host, or rotated, while the response lasts is scrubbed
    /// from the next chunk on: added to a scrubber that had the old value, or by a scrubber that
    /// starts then (keeping the announced length); a compressed body cannot be.
    #[test]
    fn a_secret_bound_or_rotated_while_a_response_lasts_is_scrubbed_from_then_on() {
        let text = format!("data: {{\"echo\": \"{NEW}\"}}\n\n");
        let scrubbed = |readable| Stages {
            scrub: Some(Scrubber::new(patterns(OLD))),
            readable,
            ..Stages::default()
        };
        let mut before = scrubbed(true);
        assert!(
            last_chunk(&mut before, &text).contains(NEW),
            "the old set knew nothing of it"
        );

        let mut rotated = scrubbed(true);
        rotated.look_for_secrets(7, Some(patterns(NEW))).unwrap();
        assert_eq!(rotated.scrub_generation(), 7);
        let out = last_chunk(&mut rotated, &text);
        assert!(!out.contains(NEW) && out.contains("$CRED{key}"), "{out}");

        let mut unscrubbed = Stages {
            readable: true,
            ..Stages::default()
        };
        unscrubbed.look_for_secrets(8, Some(patterns(NEW))).unwrap();
        let out = last_chunk(&mut unscrubbed, &text);
        assert!(!out.contains(NEW), "{out}");
        assert_eq!(out.len(), text.len(), "the announced length holds: {out}");

        let mut compressed = Stages::default();
        assert_eq!(
            compressed.look_for_secrets(9, Some(patterns(NEW))),
            Err(Deny::UpstreamEncoded(crate::error::SCRUBBED)),
            "a compressed response that must now be scrubbed ends"
        );
        assert_eq!(compressed.look_for_secrets(10, None), Ok(()));
    }
}
