//! Request bodies: read in full (up to the cap) before the policy decision, so the decision can
//! see the model and nothing reaches the upstream before it is allowed.
//!
//! Toward an LLM destination ([`providers::registry::is_llm_destination`]) a body is either
//! classified or refused, never forwarded unread ([`classify`]): its `Content-Encoding` is
//! decoded (bounded), a UTF-8 BOM removed, and it is read as JSON, a URL-encoded form or a
//! multipart form for the model it names (in every provider's spelling, see
//! [`providers::request`]). What is forwarded is exactly what was read: the decoded body, without the BOM and
//! without `Content-Encoding`.
//!
//! pingora forwards a body that a filter already read only through its retry buffer (64 KiB).
//! We read the body ourselves and enable that buffer just before the final read, so pingora calls
//! `request_body_filter` once at the start of proxying, where the pipeline hands over the
//! whole buffered body. A chunked body has no known end, so one over 64 KiB must carry a
//! `Content-Length` instead (`411`).

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::ids::TenantId;
use crate::metrics::METRICS;
use crate::shares::{ShareHold, TenantShares};
use crate::usage::providers::{self, request::CeilingFields, request::Slot};
use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;

/// Why a body was refused. Messages never quote the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Over `max_body_bytes`, as sent or once decoded.
    #[error("the request body exceeds the configured limit")]
    TooLarge,
    /// A body of unknown length (HTTP/1 chunked, HTTP/2 without `content-length`) over
    /// pingora's 64 KiB replay buffer, the only way a body read before the decision goes on.
    #[error("a body of unknown length this large needs a `Content-Length`")]
    LengthRequired,
    /// Malformed, ambiguous or corrupt (the detail says how).
    #[error("{0}")]
    Malformed(String),
    /// Toward an LLM destination, a body that cannot be classified (media type or coding).
    #[error("{0}")]
    Unsupported(String),
    /// All requests in flight already hold the body memory allowed.
    #[error("the proxy holds as much request body memory as it may")]
    Overloaded,
    /// The tenant's requests in flight already hold the body memory one tenant may (this many
    /// bytes).
    #[error("this tenant's requests hold as much request body memory as one tenant may")]
    TenantOverloaded(u64),
    /// The body did not arrive by its deadline.
    #[error("the request body did not arrive in time")]
    Timeout,
    /// Reading failed; the connection says why (a framing error, a deadline) if it knows.
    #[error("the request body could not be read")]
    Unreadable,
}

/// A buffered request body. It may hold substituted secrets, so `Debug` shows only its length.
#[derive(Clone)]
pub struct BufferedBody(pub Bytes);

impl std::fmt::Debug for BufferedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BufferedBody({} bytes)", self.0.len())
    }
}

/// pingora's retry buffer size (`BODY_BUF_LIMIT`).
const RETRY_BUFFER_LIMIT: usize = 64 * 1024;

/// The request body bytes requests in flight may hold: all of them together, and each tenant's
/// together. Each body is held whole (the decision needs it), so without the first bound a few
/// hundred slow uploads could take the process's memory, and without the second one tenant's
/// slow uploads could take all of it, every other tenant's bodies being refused meanwhile. Over
/// either, a request is refused before its body is read: `overloaded` for the process's bound,
/// `body_memory_limit` for the tenant's.
#[derive(Debug)]
pub struct BodyBudget {
    held: AtomicU64,
    max: u64,
    /// What each tenant's requests hold.
    tenants: TenantShares,
}

/// Bytes of the [`BodyBudget`] one request holds, given back when dropped (when the request ends).
#[derive(Debug)]
pub struct BodyHold {
    budget: Arc<BodyBudget>,
    /// Given back to the tenant's share when dropped.
    _tenant: ShareHold,
    bytes: u64,
    /// What the body took beyond `bytes` once read (see [`BodyHold::grow_to`]).
    grown: Vec<BodyHold>,
}

impl BodyBudget {
    /// A budget of `max` bytes in all, of which one tenant may hold `per_tenant`.
    pub fn new(max: u64, per_tenant: u64) -> Arc<Self> {
        Arc::new(Self {
            held: AtomicU64::new(0),
            max,
            tenants: TenantShares::new(per_tenant),
        })
    }

    /// Holds `bytes` for a request of `tenant`, unless that would take the tenant's total or
    /// the process's over its bound (nothing is held then).
    pub fn try_hold(
        self: &Arc<Self>,
        tenant: &TenantId,
        bytes: u64,
    ) -> Result<BodyHold, BodyError> {
        // The process's bound first: when it is full, the proxy is what is overloaded, whoever
        // holds the memory.
        let before = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|total| *total <= self.max)
            })
            .map_err(|_| BodyError::Overloaded)?;
        let Some(share) = self.tenants.try_hold(tenant, bytes) else {
            self.held.fetch_sub(bytes, Ordering::AcqRel);
            return Err(BodyError::TenantOverloaded(self.tenants.max()));
        };
        METRICS
            .buffered_body_bytes
            .set(i64::try_from(before + bytes).unwrap_or(i64::MAX));
        Ok(BodyHold {
            budget: self.clone(),
            _tenant: share,
            bytes,
            grown: Vec::new(),
        })
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }

    /// Bytes `tenant`'s requests hold now.
    #[cfg(test)]
    pub fn held_by(&self, tenant: &TenantId) -> u64 {
        self.tenants.held(tenant)
    }
}

impl BodyHold {
    /// Holds `bytes` in all from now on for a body that became larger than what was held for it
    /// while it was read: a `Content-Encoding` decoded (the decoded body is what the request
    /// keeps and forwards). Refused as [`BodyBudget::try_hold`] refuses (the hold stays as it
    /// was).
    ///
    /// SECURITY: without it a compressed body counted its bytes on the wire: `gzip, gzip` makes
    /// a 228-byte body of 8 MiB, so one tenant's requests held tens of thousands of times its
    /// share, and the process's memory with it.
    pub fn grow_to(&mut self, tenant: &TenantId, bytes: u64) -> Result<(), BodyError> {
        self.try_grow_to(tenant, bytes).inspect_err(count_overload)
    }

    /// As [`BodyHold::grow_to`], for a caller that has another way than a refusal when it
    /// does not fit (and counts the refusal itself if it refuses).
    pub fn try_grow_to(&mut self, tenant: &TenantId, bytes: u64) -> Result<(), BodyError> {
        let held = self.bytes + self.grown.iter().map(|g| g.bytes).sum::<u64>();
        if bytes <= held {
            return Ok(());
        }
        let more = self.budget.try_hold(tenant, bytes - held)?;
        self.grown.push(more);
        Ok(())
    }
}

/// Counts a body refused for memory (`tenant_proxy_overload_refusals_total`).
pub fn count_overload(refusal: &BodyError) {
    let reason = match refusal {
        BodyError::TenantOverloaded(_) => "tenant_body_memory",
        _ => "body_memory",
    };
    METRICS.overload_refusals.with_label_values(&[reason]).inc();
}

impl Drop for BodyHold {
    fn drop(&mut self) {
        let after = self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel) - self.bytes;
        METRICS
            .buffered_body_bytes
            .set(i64::try_from(after).unwrap_or(i64::MAX));
    }
}

/// A body read whole, with the budget it holds.
#[derive(Debug)]
pub struct ReadBody {
    /// The bytes.
    pub bytes: Bytes,
    /// Its share of the [`BodyBudget`], held while the request is in flight.
    pub hold: BodyHold,
}

/// Reads the whole request body, refusing one over `cap` before anything is forwarded, and one
/// that would take the bytes held by all requests over `budget` before it is read. A body that
/// is not complete by `deadline` is refused (`request_timeout`). Returns `None` for requests
/// without a body.
pub async fn read_full(
    session: &mut Session,
    tenant: &TenantId,
    cap: usize,
    budget: &Arc<BodyBudget>,
    deadline: Duration,
) -> Result<Option<ReadBody>, BodyError> {
    // SECURITY: one length (HTTP/1 heads with two are refused by the front; an HTTP/2 request
    // reaches here as its client wrote it).
    let length =
        crate::header_names::sole(&session.req_header().headers, http::header::CONTENT_LENGTH)
            .map_err(|_| BodyError::Malformed("`Content-Length` is given more than once".into()))?;
    let declared = match length {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| BodyError::Malformed("`Content-Length` is not a number".into()))?,
        ),
        None => None,
    };
    if declared.is_some_and(|len| len > cap) {
        return Err(BodyError::TooLarge);
    }
    if session.as_mut().is_body_empty() {
        return Ok(None);
    }
    // A chunked body is held to the retry buffer's size (larger ones are refused below).
    let reserve = declared.unwrap_or(RETRY_BUFFER_LIMIT.min(cap));
    let hold = budget
        .try_hold(tenant, reserve as u64)
        .inspect_err(count_overload)?;
    // A client that waits to hear `100 Continue` before it sends the body (RFC 9110 §10.1.1;
    // curl does for large ones) is told to go on now: the body is read whole before anything is
    // decided or sent upstream, so waiting for the upstream's own `100` would never end. A
    // request refused before this point gets its final status instead, as the RFC allows.
    if session.req_header().version == http::Version::HTTP_11
        && session
            .req_header()
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        // pingora closes a connection after any response written before its request's body
        // was read, a `100` too: the final response decides (a refusal once the whole body
        // is read leaves the connection open, as without `Expect`).
        session
            .as_mut()
            .set_close_on_response_before_downstream_finish(false);
        let sent = session.write_continue_response().await;
        session
            .as_mut()
            .set_close_on_response_before_downstream_finish(true);
        sent.map_err(|_| BodyError::Unreadable)?;
    }
    let bytes = match tokio::time::timeout(deadline, read_body(session, cap, declared)).await {
        Ok(read) => read?,
        // The front enforces the same deadline on HTTP/1 connections; this one covers HTTP/2.
        Err(_) => return Err(BodyError::Timeout),
    };
    Ok(bytes.map(|bytes| ReadBody { bytes, hold }))
}

/// Why a body could not be read: an HTTP/2 stream the proxy's own HTTP/2 layer reset for
/// breaking the protocol (a body longer or shorter than its `content-length`, bad frames) is
/// the client's malformed request; anything else (its client reset the stream or left, the
/// connection failed) is for the caller to tell apart.
fn unreadable(e: &pingora::Error) -> BodyError {
    let h2 = e
        .root_cause()
        .downcast_ref::<h2::Error>()
        .filter(|h2| !h2.is_remote() && !h2.is_io());
    match h2.and_then(h2::Error::reason) {
        Some(reason) if reason != h2::Reason::CANCEL && reason != h2::Reason::NO_ERROR => {
            BodyError::Malformed(format!(
                "the HTTP/2 stream broke the protocol ({reason:?}): a body longer or shorter than \
                 its `content-length`, or malformed frames"
            ))
        }
        _ => BodyError::Unreadable,
    }
}

async fn read_body(
    session: &mut Session,
    cap: usize,
    declared: Option<usize>,
) -> Result<Option<Bytes>, BodyError> {
    let chunked = declared.is_none();
    if chunked {
        // Unknown length: the retry buffer must see every byte.
        session.as_mut().enable_retry_buffering();
    }
    // Grown as bytes arrive rather than sized by what the client declared: a client that
    // declares a large body and then trickles it holds little.
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(8 * 1024).min(cap).min(64 * 1024));
    loop {
        if let Some(len) = declared {
            let remaining = len.saturating_sub(buf.len());
            if remaining > 0 && remaining <= RETRY_BUFFER_LIMIT {
                session.as_mut().enable_retry_buffering();
            }
        }
        let chunk = match session.read_request_body().await {
            Ok(c) => c,
            Err(e) => return Err(unreadable(&e)),
        };
        match chunk {
            Some(c) => {
                if buf.len() + c.len() > cap {
                    return Err(BodyError::TooLarge);
                }
                buf.extend_from_slice(&c);
            }
            None => break,
        }
    }
    if chunked && buf.len() > RETRY_BUFFER_LIMIT {
        return Err(BodyError::LengthRequired);
    }
    if buf.is_empty() {
        // A chunked body with no data: pingora's retry buffer is empty too, so it will treat
        // the body as already sent; forward nothing.
        return Ok(None);
    }
    Ok(Some(buf.freeze()))
}

/// What a JSON request body says about the LLM call it makes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LlmRequest {
    /// The `model` it names.
    pub model: Option<String>,
    /// The other models it names, each decided as `model` is (see
    /// [`providers::request::Named::other_models`]; JSON bodies only).
    pub other_models: Vec<String>,
    /// Of those, the ones a gateway may answer with instead of `model` (its fallback lists): the
    /// call is priced at the dearest of them all.
    pub fallback_models: Vec<String>,
    /// Its output ceiling (the largest of the providers' ceiling fields present, see
    /// [`providers::request`]).
    pub max_output_tokens: Option<u64>,
    /// Which ceiling fields it set (whether the call's own API reads one of them).
    pub ceiling_fields: CeilingFields,
    /// How many completions it asks for (the largest of `n` and its synonyms present).
    pub choices: Option<u64>,
    /// It asks to run in the background (`"background": true`, JSON bodies only).
    pub background: bool,
    /// A hosted tool it offers that is billed other than by reported tokens (see
    /// [`providers::request::Named::billed_tool`]; JSON bodies only).
    pub billed_tool: Option<&'static str>,
}

/// Reads the model and the output ceiling (every provider's fields, see
/// [`providers::request`]) from a body shaped like a JSON object.
///
/// SECURITY: these fields feed policy (`context.model`) and token budgets, so an agent must not
/// be able to hide them from the proxy while the upstream still reads them:
/// - the body's shape decides, not its `Content-Type` (many LLM APIs parse JSON whatever the
///   header says, so `Content-Type: text/plain` must not hide the model);
/// - a UTF-8 BOM before the object does not hide it either (parsers that skip it exist);
/// - an object-shaped body that cannot be read unambiguously (invalid JSON that a lenient parser
///   might still accept, a `model` or ceiling of the wrong type, a field given twice, where
///   upstream parsers keep the last copy) is refused rather than forwarded unchecked.
///
/// Other bodies (forms, uploads, arrays, text) name no model here and pass as they are; toward
/// an LLM destination [`classify`] reads them too or refuses them.
pub fn llm_request(body: &[u8]) -> Result<LlmRequest, String> {
    let body = body.strip_prefix(BOM).unwrap_or(body);
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Ok(LlmRequest::default());
    }
    let named = providers::request::read_json(body)
        .map_err(|e| format!("the request body cannot be read as a JSON object: {e}"))?;
    let mut read = checked(named.model, named.max_output_tokens, named.choices)?;
    read.ceiling_fields = named.ceiling_fields;
    checked_others(&named.other_models)?;
    read.other_models = named.other_models;
    read.fallback_models = named.fallback_models;
    read.background = named.background;
    read.billed_tool = named.billed_tool;
    Ok(read)
}

fn checked(
    model: Option<String>,
    max_output_tokens: Option<u64>,
    choices: Option<u64>,
) -> Result<LlmRequest, String> {
    if model.as_ref().is_some_and(|m| m.len() > MAX_MODEL_BYTES) {
        return Err(format!("`model` is longer than {MAX_MODEL_BYTES} bytes"));
    }
    if model.as_ref().is_some_and(|m| m.contains(',')) {
        return Err(SEVERAL_MODELS.into());
    }
    if model.as_ref().is_some_and(|m| m.contains(is_control_char)) {
        return Err(CONTROL_IN_MODEL.into());
    }
    Ok(LlmRequest {
        model,
        other_models: Vec::new(),
        fallback_models: Vec::new(),
        max_output_tokens,
        ceiling_fields: CeilingFields::default(),
        choices,
        background: false,
        billed_tool: None,
    })
}

/// The checks every other model a body names meets, however the body is framed (JSON, a form,
/// multipart): as the call's own model, no longer than [`MAX_MODEL_BYTES`] and no comma.
fn checked_others(others: &[String]) -> Result<(), String> {
    if let Some(long) = others.iter().find(|m| m.len() > MAX_MODEL_BYTES) {
        return Err(format!(
            "a model name is longer than {MAX_MODEL_BYTES} bytes (`{}…`)",
            long.chars().take(32).collect::<String>()
        ));
    }
    if others.iter().any(|m| m.contains(',')) {
        return Err(SEVERAL_MODELS.into());
    }
    if others.iter().any(|m| m.contains(is_control_char)) {
        return Err(CONTROL_IN_MODEL.into());
    }
    Ok(())
}

/// A control character, or one of Unicode's line and paragraph separators.
fn is_control_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Why a model name with a control character (a line end, a NUL) is refused: no model's name
/// has one, and one that swallowed the rest of a body (a multipart part read past its end) would
/// go into records and logs.
const CONTROL_IN_MODEL: &str = "a model name holds a control character (a line end, a NUL): no \
     model's name has one";

/// Why a model name with a comma is refused.
///
/// SECURITY: gateways (LiteLLM) read `"a,b"` as several models and call each; a policy that
/// allows `a*` would pass the call to `b`. No provider's model name holds a comma.
const SEVERAL_MODELS: &str = "a model name holds a comma, which some gateways read as several \
     models and call each: name one model (a gateway's fallbacks go in its fallback field)";

/// The longest model name read (a longer one refuses the body).
const MAX_MODEL_BYTES: usize = 256;

/// The UTF-8 byte order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Content codings decoded one inside another at most (`gzip, br` is two).
const MAX_CODINGS: usize = 4;

/// Where a body goes, as far as reading it is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyDestination {
    /// An LLM destination: the body is classified or refused ([`classify`]).
    Llm,
    /// An MCP server: its JSON-RPC body is judged by the MCP check ([`crate::mcp`]).
    Mcp,
    /// Anything else: a JSON object's model is read; other bodies pass as they are.
    Other,
}

/// A body as it will be forwarded, and what it says about the call.
#[derive(Debug)]
pub struct Classified {
    /// The bytes to forward: for an LLM destination decoded and without a BOM.
    pub body: Bytes,
    /// The model and output ceiling it names.
    pub llm: LlmRequest,
    /// Its `Content-Encoding` was decoded: the header must not go upstream.
    pub decoded: bool,
}

/// Reads a request body for the decision. `cap` bounds every decoded size
/// (`max_body_bytes`).
///
/// SECURITY: toward an LLM destination a body that cannot be read is refused, never forwarded
/// with its model unseen: an unknown `Content-Encoding` or a body that is neither JSON nor a
/// form is `unsupported_media_type` (415), a corrupt encoding or malformed JSON or form
/// `bad_request` (400), and a body that decodes to more than `cap` `request_body_too_large`
/// (413; decompression bombs stop there).
pub fn classify(
    body: Bytes,
    headers: &http::HeaderMap,
    to: BodyDestination,
    cap: usize,
) -> Result<Classified, BodyError> {
    match to {
        BodyDestination::Mcp => {
            refuse_foreign_charset(&body, headers)?;
            Ok(Classified {
                body,
                llm: LlmRequest::default(),
                decoded: false,
            })
        }
        BodyDestination::Other => {
            // SECURITY: servers undo a request's `Content-Encoding` before they read a form or
            // JSON (Express's body parsers inflate gzip, deflate and br by default; ASP.NET
            // Core's request decompression too), so the checks read what they will read. The
            // body goes on as it came: a server that takes the coding still gets it. A coding
            // the proxy does not know, no framework undoes either.
            let decoded = match readable_codings(headers)? {
                Some(codings) => Some(decode_all(body.clone(), &codings, cap)?),
                None => None,
            };
            let read = decoded.as_deref().unwrap_or(&body);
            refuse_foreign_charset(read, headers)?;
            refuse_method_override(read, headers)?;
            let llm = llm_request(read).map_err(BodyError::Malformed)?;
            Ok(Classified {
                body,
                llm,
                decoded: false,
            })
        }
        BodyDestination::Llm => classify_llm(body, headers, cap),
    }
}

/// SECURITY: a body in a charset a server decodes other than as the proxy reads it (UTF-7's
/// `+…-` runs turn ASCII into `","name":"wipe`; ISO-2022's escapes, EBCDIC, UTF-16) would be
/// decided as one request and run as another: Express's JSON parser decodes the charset the
/// type names, and an app may parse any type as JSON. Whatever its type: refused,
/// `unsupported_media_type`, unless the charset keeps ASCII as it is
/// ([`crate::charset::ASCII_PRESERVING`]). So is a text body (JSON, a form, any `text/*`, none)
/// that is UTF-16 or UTF-32 by its first bytes, without a charset: Python's `json.loads` reads
/// it so (FastAPI, Starlette, Flask, hence vLLM), where the proxy finds no JSON object and so
/// no `model`. `body` is what the server reads (its `Content-Encoding` undone).
fn refuse_foreign_charset(body: &[u8], headers: &http::HeaderMap) -> Result<(), BodyError> {
    if body.is_empty() {
        return Ok(());
    }
    // (The type is looked at only for a body that starts as UTF-16 would: most do not.)
    let text = || match media_type(headers).as_deref() {
        None | Some("" | "application/x-www-form-urlencoded" | "application/json") => true,
        Some(t) => t.starts_with("text/") || t.ends_with("+json"),
    };
    if utf16_or_32(body) && text() {
        return Err(BodyError::Unsupported(
            "a body in UTF-16 or UTF-32 (by its byte order mark, or a NUL in its first two \
             bytes): the proxy reads bodies as UTF-8, and a server that detects the encoding \
             would read another request than the one decided on; send it in UTF-8"
                .into(),
        ));
    }
    let accepted = headers
        .get_all(http::header::CONTENT_TYPE)
        .iter()
        .all(|t| crate::charset::names_none_but(t.as_bytes(), crate::charset::ASCII_PRESERVING));
    if accepted {
        return Ok(());
    }
    Err(BodyError::Unsupported(
        "a body whose `Content-Type` names a charset other than UTF-8, US-ASCII or a single-byte \
         one that keeps ASCII (ISO-8859-*, windows-125*): the proxy reads it as UTF-8, and a \
         server that decodes that charset would read another request than the one decided on; \
         send it in UTF-8"
            .into(),
    ))
}

/// Whether `body` is UTF-16 or UTF-32 as Python's `json.loads` tells (`json.detect_encoding`):
/// a UTF-16 or UTF-32 byte order mark, or a NUL in either of its first two bytes.
fn utf16_or_32(body: &[u8]) -> bool {
    body.starts_with(&[0xFF, 0xFE])
        || body.starts_with(&[0xFE, 0xFF])
        || body.starts_with(&[0, 0, 0xFE, 0xFF])
        || (body.len() >= 2 && (body[0] == 0 || body[1] == 0))
}

/// The codings of a request's `Content-Encoding` (see [`content_codings`]) when the proxy
/// decodes every one of them: `None` without one, or when one is a coding it does not know.
fn readable_codings(headers: &http::HeaderMap) -> Result<Option<Vec<Coding>>, BodyError> {
    match content_codings(headers) {
        Ok(codings) if codings.is_empty() => Ok(None),
        Ok(codings) => Ok(Some(codings)),
        Err(BodyError::Unsupported(_)) if !too_many_codings(headers) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the `Content-Encoding` lists more codings than are decoded ([`MAX_CODINGS`]).
fn too_many_codings(headers: &http::HeaderMap) -> bool {
    let listed: usize = headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.split(',').filter(|t| !t.trim().is_empty()).count())
        .sum();
    listed > MAX_CODINGS
}

/// Undoes `codings` (in the order they were applied: the last first), bounded by `cap`.
fn decode_all(body: Bytes, codings: &[Coding], cap: usize) -> Result<Bytes, BodyError> {
    let mut bytes = body;
    for coding in codings.iter().rev() {
        bytes = Bytes::from(decode(&bytes, *coding, cap)?);
    }
    Ok(bytes)
}

/// SECURITY: a body that carries `_method` is run by web frameworks as that method, not the
/// request line's, which is what the proxy decided on: refused. Each reader looks where its
/// framework does, so this looks wherever any of them does:
/// - a form, URL-encoded or multipart, or a body without a `Content-Type` (Rack, hence Rails and
///   Sinatra, reads that as a form);
/// - any `multipart/*` body, however its parts are framed (PHP's parser takes bare `\n` line
///   ends): a part named `_method` anywhere in it;
/// - a JSON object's top-level `_method` (Laravel reads JSON input as it reads forms);
/// - in any ASCII case (`_METHOD`: ASP.NET Core's form collection ignores case).
///
/// The name is looked for first, so bodies that do not carry it are not parsed. `body` is what
/// the server reads: its `Content-Encoding` undone (see [`classify`]).
fn refuse_method_override(body: &[u8], headers: &http::HeaderMap) -> Result<(), BodyError> {
    let name = crate::front::METHOD_PARAMETER;
    // Most bodies cannot spell it in any way a framework reads (as it is, `.method`,
    // `[method`, or with letters escaped in a form or in JSON): nothing to parse.
    let may_spell = crate::front::contains_ignoring_case(body, b"ethod")
        || memchr::memchr(b'%', body).is_some()
        || memchr::memmem::find(body, b"\\u").is_some();
    if !may_spell {
        return Ok(());
    }
    let found = match media_type(headers).as_deref() {
        Some(m) if m.starts_with("multipart/") => names_a_part(body),
        // Rack reads a body without a type (or with an empty one) as a form.
        None | Some("" | "application/x-www-form-urlencoded") => {
            form_has_method(body) || json_has_method(body)
        }
        Some(_) => json_has_method(body),
    };
    if found {
        return Err(BodyError::Malformed(format!(
            "the body's `{name}` asks the upstream for another method than the request line's, \
             which is what the proxy decides on, or the body names it in a way that cannot be \
             checked; send the request with that method"
        )));
    }
    Ok(())
}

/// Whether a URL-encoded form has a method field (`&` or `;` between pairs).
fn form_has_method(body: &[u8]) -> bool {
    crate::form_pairs::lenient(body).any(|(k, _)| crate::front::is_method_parameter(&k))
}

/// Whether a multipart body, however it is framed, names a part the method field: a
/// `name="…"`, `name=…` or `name*=…''…` parameter with that value, compared ignoring the
/// parameter's case.
///
/// SECURITY (CPU): in time linear in the body. Each `name=` value runs to the next `;`, CR or
/// LF, and a body with none of them and a `name=` every few bytes made every value run to the
/// end (256 KiB took 11 s of a shared worker, before the policy was asked): the next separator
/// and the last `'` before it are found once for all the values that end there, and of a value
/// only its first bytes are read (the name a framework reads ends at a NUL or a `[`).
fn names_a_part(body: &[u8]) -> bool {
    let lower = body.to_ascii_lowercase();
    // The separator the values seen so far end at, where the spaces before it begin, and the
    // last `'` before it (from where the first of those values began).
    let mut end = 0;
    let mut tail = 0;
    let mut quote: Option<usize> = None;
    let mut searched = false;
    memchr::memmem::find_iter(&lower, b"name").any(|at| {
        let rest = &body[at + 4..];
        let rest = rest.strip_prefix(b"*").unwrap_or(rest);
        let Some(value) = rest.trim_ascii_start().strip_prefix(b"=") else {
            return false;
        };
        let value = value.trim_ascii_start();
        let from = body.len() - value.len();
        if !searched || end < from {
            end = memchr::memchr3(b';', b'\r', b'\n', value).map_or(body.len(), |e| from + e);
            tail = from + body[from..end].trim_ascii_end().len();
            quote = memchr::memrchr(b'\'', &body[from..end]).map(|q| from + q);
            searched = true;
        }
        // (`from` is past leading spaces already; a value inside the trailing ones is empty.)
        let mut value = &body[from..tail.max(from)];
        // RFC 5987: `charset'lang'value`.
        if let Some(q) = quote.filter(|q| *q >= from) {
            let cut = q + 1 - from;
            value = value.get(cut..).unwrap_or_default();
        }
        let value = value.strip_prefix(b"\"").unwrap_or(value);
        let value = value.strip_suffix(b"\"").unwrap_or(value);
        names_the_method(value)
    })
}

/// Whether a part's name is the method field to some framework (see
/// [`crate::front::is_method_parameter`]), reading past its leading spaces only its first bytes:
/// a name that is the method field is seven bytes before a NUL, a `[` or its end. (A name that
/// is not UTF-8 is read as its replacement characters: never the method field's name, unless
/// only what follows a `[` is not, which frameworks still read as the field.)
fn names_the_method(name: &[u8]) -> bool {
    const READ: usize = 64;
    let mut start = 0;
    while let Some(&first) = name.get(start) {
        let width = match first {
            0x00..=0x7f => 1,
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            _ => 4,
        };
        let Some(c) = name
            .get(start..start + width)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.chars().next())
        else {
            break;
        };
        if !c.is_whitespace() {
            break;
        }
        start += width;
    }
    let head = &name[start..name.len().min(start + READ)];
    crate::front::is_method_parameter(&String::from_utf8_lossy(head))
}

/// Whether a body shaped like a JSON object has a top-level method member, or cannot be read
/// far enough to tell (it is then refused: a reader more lenient than this one, or one without
/// its limits, might find the member). The keys are found by a scan, not a parse, so no depth or
/// number (`1e400`) stops it; each key is decoded (`\u005f…`) before it is compared.
fn json_has_method(body: &[u8]) -> bool {
    let body = body.strip_prefix(BOM).unwrap_or(body);
    let Some(start) = body.iter().position(|b| !b.is_ascii_whitespace()) else {
        return false;
    };
    if body[start] != b'{' {
        return false;
    }
    let name = crate::front::METHOD_PARAMETER;
    let mut depth = 0usize;
    let mut expect_key = false;
    let mut i = start;
    while i < body.len() {
        match body[i] {
            b'"' => {
                let open = i;
                i += 1;
                loop {
                    match body.get(i) {
                        None => return true,
                        Some(b'\\') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
                if depth == 1 && expect_key {
                    match serde_json::from_slice::<String>(&body[open..=i]) {
                        Ok(key) if key.eq_ignore_ascii_case(name) => return true,
                        Ok(_) => {}
                        Err(_) => return true,
                    }
                }
                expect_key = false;
            }
            b'{' => {
                depth += 1;
                expect_key = depth == 1;
            }
            b'[' => depth += 1,
            b'}' | b']' => {
                let Some(d) = depth.checked_sub(1) else {
                    return true;
                };
                depth = d;
            }
            b',' => expect_key = depth == 1,
            _ => {}
        }
        i += 1;
    }
    false
}

fn classify_llm(
    body: Bytes,
    headers: &http::HeaderMap,
    cap: usize,
) -> Result<Classified, BodyError> {
    let codings = content_codings(headers)?;
    let decoded = !codings.is_empty();
    let mut bytes = decode_all(body, &codings, cap)?;
    refuse_foreign_charset(&bytes, headers)?;
    if bytes.starts_with(BOM) {
        bytes = bytes.slice(BOM.len()..);
    }
    let content_type = media_type(headers);
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let llm = match first {
        // No content: nothing to read.
        None => LlmRequest::default(),
        // Shaped like JSON: read as JSON whatever the header says (LLM APIs do).
        Some(b'{') => llm_request(&bytes).map_err(BodyError::Malformed)?,
        Some(b'[') => {
            serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|e| {
                BodyError::Malformed(format!("the request body cannot be read as JSON: {e}"))
            })?;
            LlmRequest::default()
        }
        Some(_) => match content_type.as_deref() {
            Some("application/x-www-form-urlencoded") => {
                url_encoded(&bytes).map_err(BodyError::Malformed)?
            }
            Some("multipart/form-data") => {
                let boundary = boundary(headers).ok_or_else(|| {
                    BodyError::Malformed("a multipart body needs a `boundary` parameter".into())
                })?;
                multipart(&bytes, &boundary).map_err(BodyError::Malformed)?
            }
            Some(t) if t == "application/json" || t.ends_with("+json") => {
                return Err(BodyError::Malformed(
                    "the request body is not JSON, as its `Content-Type` says".into(),
                ))
            }
            other => {
                return Err(BodyError::Unsupported(format!(
                    "a body of type `{}` that is not JSON, nor a URL-encoded or multipart form",
                    other.unwrap_or("(none)")
                )))
            }
        },
    };
    Ok(Classified {
        body: bytes,
        llm,
        decoded,
    })
}

/// A content coding the proxy decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

/// The request's `Content-Encoding` codings, in the order they were applied (`identity`
/// dropped). Every header line counts, and every comma-separated entry.
fn content_codings(headers: &http::HeaderMap) -> Result<Vec<Coding>, BodyError> {
    let mut codings = Vec::new();
    for value in headers.get_all(http::header::CONTENT_ENCODING) {
        let text = value
            .to_str()
            .map_err(|_| BodyError::Unsupported("a `Content-Encoding` that is not text".into()))?;
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let coding = match token.to_ascii_lowercase().as_str() {
                "identity" => continue,
                "gzip" | "x-gzip" => Coding::Gzip,
                "deflate" => Coding::Deflate,
                "br" => Coding::Brotli,
                "zstd" => Coding::Zstd,
                _ => {
                    return Err(BodyError::Unsupported(format!(
                        "`Content-Encoding: {token}` (gzip, deflate, br and zstd are decoded)"
                    )))
                }
            };
            codings.push(coding);
        }
    }
    if codings.len() > MAX_CODINGS {
        return Err(BodyError::Unsupported(format!(
            "more than {MAX_CODINGS} content codings"
        )));
    }
    Ok(codings)
}

/// Largest zstd window accepted (8 MiB), so a frame cannot make the decoder allocate more.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Decodes `body`, refusing output over `cap` (the decoder stops there: a decompression bomb
/// costs at most `cap` bytes).
fn decode(body: &[u8], coding: Coding, cap: usize) -> Result<Vec<u8>, BodyError> {
    let corrupt = |e: std::io::Error| {
        BodyError::Malformed(format!(
            "the request body's `Content-Encoding` cannot be decoded: {e}"
        ))
    };
    let reader: Box<dyn Read + '_> = match coding {
        Coding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(body)),
        // HTTP's `deflate` is zlib-wrapped; some clients send raw deflate, which has no header.
        Coding::Deflate if zlib_header(body) => Box::new(flate2::read::ZlibDecoder::new(body)),
        Coding::Deflate => Box::new(flate2::read::DeflateDecoder::new(body)),
        Coding::Brotli => Box::new(brotli::Decompressor::new(body, 4096)),
        Coding::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(body).map_err(corrupt)?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(corrupt)?;
            Box::new(d)
        }
    };
    let mut out = Vec::new();
    reader
        .take(cap as u64 + 1)
        .read_to_end(&mut out)
        .map_err(corrupt)?;
    if out.len() > cap {
        return Err(BodyError::TooLarge);
    }
    Ok(out)
}

fn zlib_header(body: &[u8]) -> bool {
    match body {
        [cmf, flg, ..] => cmf & 0x0F == 8 && (u16::from(*cmf) * 256 + u16::from(*flg)) % 31 == 0,
        _ => false,
    }
}

/// The `Content-Type` essence, lowercase (`None` without one, or with several).
fn media_type(headers: &http::HeaderMap) -> Option<String> {
    let mut values = headers.get_all(http::header::CONTENT_TYPE).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let essence = value.to_str().ok()?.split(';').next()?.trim();
    Some(essence.to_ascii_lowercase())
}

/// The `boundary` parameter of a multipart `Content-Type`.
fn boundary(headers: &http::HeaderMap) -> Option<String> {
    let value = crate::header_names::sole(headers, http::header::CONTENT_TYPE)
        .ok()??
        .to_str()
        .ok()?;
    // SECURITY: parameters split as parsers split them (a `;` inside quotes is the value's),
    // and a boundary only of RFC 2046's characters: one with a quote, an escape or a `;` is
    // read one way by one parser and another by the next (a part hidden from the proxy).
    crate::part_names::params(value)?
        .into_iter()
        .skip(1)
        .find_map(|param| {
            let (k, v) = param.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("boundary")
                .then(|| v.trim().trim_matches('"').to_string())
        })
        .filter(|b| !b.is_empty() && b.len() <= 70 && b.bytes().all(is_boundary_char))
}

/// A character RFC 2046 allows in a boundary (`bchars`).
fn is_boundary_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b)
}

/// The form fields that name the model or the output ceiling (the providers' top-level fields,
/// see [`providers::request::form_field`]), each at most once.
#[derive(Default)]
struct FormFields {
    /// Model names by precedence rank.
    models: Vec<(usize, String)>,
    /// Ceilings by precedence rank.
    ceilings: Vec<(usize, u64)>,
    /// Numbers of completions by rank.
    choices: Vec<(usize, u64)>,
    /// The other models a `session` part names.
    other_models: Vec<String>,
    /// The models of a gateway's fallback lists (also in `other_models`).
    fallback_models: Vec<String>,
}

impl FormFields {
    /// Takes one field; a field that matters given twice is refused (parsers disagree on
    /// which copy wins). Names are compared ignoring case, so no spelling hides one.
    fn take(&mut self, name: &str, value: &str) -> Result<(), String> {
        fn once<T>(
            slots: &mut Vec<(usize, T)>,
            rank: usize,
            value: T,
            name: &str,
        ) -> Result<(), String> {
            if slots.iter().any(|(r, _)| *r == rank) {
                return Err(format!("form field `{name}` is given more than once"));
            }
            slots.push((rank, value));
            Ok(())
        }
        let number = |value: &str| {
            value
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("form field `{name}` is not a whole number"))
        };
        match providers::request::form_field(name) {
            Some(Slot::Model(rank)) => once(&mut self.models, rank, value.to_string(), name),
            Some(Slot::Ceiling(rank)) => once(&mut self.ceilings, rank, number(value)?, name),
            // Leniently, as in JSON (see `providers::request`): no count is no refusal.
            Some(Slot::Choices(rank)) => match value.trim().parse::<f64>() {
                Ok(n) if n.is_finite() && n > 0.0 => {
                    once(&mut self.choices, rank, n.ceil() as u64, name)
                }
                _ => Ok(()),
            },
            // A gateway's model list (OpenRouter's `models`, LiteLLM's `fallbacks`): in a form,
            // each value is one more model, decided as the call's is.
            Some(Slot::ModelList) => self.add_other(value, true),
            // Background calls and hosted tools are JSON's (the Responses API's, Gemini's); a
            // form's field is another's. Secondary and other models are nested, never form
            // fields.
            Some(
                Slot::Background
                | Slot::ToolType
                | Slot::BilledTool(..)
                | Slot::SecondaryModel(_)
                | Slot::OtherModel,
            )
            | None => Ok(()),
        }
    }

    /// Takes a `session` field: a Realtime call's session (`/v1/realtime/calls` posts it as a
    /// JSON part beside the SDP offer), whose `model` is the call's; a `model` field beside it
    /// is a model given twice.
    fn take_session(&mut self, value: &str) -> Result<(), String> {
        if !value.trim_start().starts_with('{') {
            return Ok(());
        }
        let session = providers::request::read_json(value.as_bytes())
            .map_err(|e| format!("form field `session` cannot be read as a JSON object: {e}"))?;
        for model in &session.other_models {
            let fallback = session.fallback_models.contains(model);
            self.add_other(model, fallback)?;
        }
        match session.model {
            Some(model) => self.take("model", &model),
            None => Ok(()),
        }
    }

    /// One more model the call may run (a gateway's `fallback` when `fallback`), each distinct
    /// one once. SECURITY: each is a policy decision and a line of the audit record: past
    /// [`providers::request::MAX_MODELS`] the body is refused, as a JSON one is (a form of
    /// 160,000 names took 3 s of a shared worker and 3 MB of record).
    fn add_other(&mut self, model: &str, fallback: bool) -> Result<(), String> {
        if !self.other_models.iter().any(|m| m == model) {
            if self.other_models.len() == providers::request::MAX_MODELS {
                return Err(format!(
                    "the body names more than {} models",
                    providers::request::MAX_MODELS
                ));
            }
            self.other_models.push(model.to_owned());
        }
        if fallback && !self.fallback_models.iter().any(|m| m == model) {
            self.fallback_models.push(model.to_owned());
        }
        Ok(())
    }

    /// The best-ranked model; the largest ceiling and number of completions (see
    /// [`providers::request::Named`]).
    fn finish(self) -> Result<LlmRequest, String> {
        // SECURITY: as in JSON, two fields naming different models leave the choice upstream.
        if let [(_, first), rest @ ..] = self.models.as_slice() {
            if let Some((_, other)) = rest.iter().find(|(_, m)| m != first) {
                return Err(format!(
                    "the form names two models, `{first}` and `{other}`; which one a server \
                     uses is its choice"
                ));
            }
        }
        let mut fields = CeilingFields::default();
        for (rank, _) in &self.ceilings {
            fields.set(*rank);
        }
        let largest = |slots: Vec<(usize, u64)>| slots.into_iter().map(|(_, v)| v).max();
        let mut read = checked(
            first(self.models),
            largest(self.ceilings),
            largest(self.choices),
        )?;
        read.ceiling_fields = fields;
        checked_others(&self.other_models)?;
        let mut others = self.other_models;
        others.retain(|m| Some(m) != read.model.as_ref());
        read.other_models = others;
        let mut fallbacks = self.fallback_models;
        fallbacks.retain(|m| Some(m) != read.model.as_ref());
        read.fallback_models = fallbacks;
        Ok(read)
    }
}

/// The value of the best-ranked field.
fn first<T>(slots: Vec<(usize, T)>) -> Option<T> {
    slots.into_iter().min_by_key(|(r, _)| *r).map(|(_, v)| v)
}

fn url_encoded(body: &[u8]) -> Result<LlmRequest, String> {
    let mut fields = FormFields::default();
    for (k, v) in form_urlencoded::parse(body) {
        if k.eq_ignore_ascii_case("session") {
            fields.take_session(&v)?;
        }
        fields.take(&k, &v)?;
    }
    fields.finish()
}

/// Reads the fields of a `multipart/form-data` body (RFC 7578) that name the model or the
/// output ceiling. File parts are skipped; the body must be well formed to its closing
/// delimiter.
fn multipart(body: &[u8], boundary: &str) -> Result<LlmRequest, String> {
    let mut fields = FormFields::default();
    each_part(body, boundary, &mut |name, content| {
        let session = name.eq_ignore_ascii_case("session");
        if session || providers::request::form_field(name).is_some() {
            let value = std::str::from_utf8(content).map_err(|_| {
                "the multipart body cannot be read: a field value that is not UTF-8"
            })?;
            if session {
                fields.take_session(value)?;
            }
            fields.take(name, value)?;
        }
        Ok(())
    })?;
    fields.finish()
}

/// What [`each_part`] calls with each named part: its name and content.
type PartVisitor<'v> = dyn FnMut(&str, &[u8]) -> Result<(), String> + 'v;

/// Calls `part` with the name and content of each named part of a `multipart/form-data` body,
/// which must be well formed to its closing delimiter.
fn each_part(body: &[u8], boundary: &str, part: &mut PartVisitor<'_>) -> Result<(), String> {
    let malformed = |why: &str| format!("the multipart body cannot be read: {why}");
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    // SECURITY: a delimiter after a bare LF or CR (not CRLF) is a part boundary to some parsers
    // (Werkzeug, hence Flask; PHP) and part of the previous part's value to others: a part
    // hidden there names a model one server reads and the proxy does not.
    let loose = memchr::memmem::find_iter(body, delimiter)
        .any(|at| at > 0 && !body[..at].ends_with(b"\r\n"));
    if loose {
        return Err(malformed(
            "a boundary delimiter after a bare LF or CR, which servers split parts at differently",
        ));
    }
    let mut rest = body;
    // Anything before the first delimiter is a preamble.
    let start = find(rest, delimiter).ok_or_else(|| malformed("no boundary delimiter"))?;
    rest = &rest[start + delimiter.len()..];
    loop {
        if rest.starts_with(b"--") {
            return Ok(());
        }
        rest = rest
            .strip_prefix(b"\r\n")
            .ok_or_else(|| malformed("a delimiter not followed by a line break"))?;
        // The part's headers end with an empty line (at once, for a part without headers).
        let (head, content) = match rest.strip_prefix(b"\r\n") {
            Some(content) => (&b""[..], content),
            None => {
                let end = find(rest, b"\r\n\r\n")
                    .ok_or_else(|| malformed("unterminated part headers"))?;
                (&rest[..end], &rest[end + 4..])
            }
        };
        let head =
            std::str::from_utf8(head).map_err(|_| malformed("part headers that are not UTF-8"))?;
        // SECURITY: part headers in their one plain spelling, since parsers read every other
        // differently (where a header ends, which line is which, what names a part): CRLF line
        // ends only (Go ends headers at a bare LF, Werkzeug splits lines at a bare CR), no line
        // folded onto the next (busboy and Go unfold it), no space before a colon (Werkzeug
        // takes it), no RFC 2231 continuation of a name (`name*0`, which Go and Werkzeug join).
        // (A header's name is a token: Werkzeug strips any whitespace around it, a vertical
        // tab or a no-break space too.)
        let plain = head.split("\r\n").all(|line| {
            !line.contains(['\r', '\n'])
                && line.split_once(':').is_some_and(|(name, _)| {
                    !name.is_empty() && name.bytes().all(crate::header_names::is_tchar)
                })
        }) || head.is_empty();
        let disposition = |line: &&str| {
            line.get(..20)
                .is_some_and(|p| p.eq_ignore_ascii_case("content-disposition:"))
        };
        let continued = head.split("\r\n").filter(disposition).any(|line| {
            crate::part_names::params(line).is_none_or(|params| {
                params.iter().any(|p| {
                    let key = p.split_once('=').map_or(*p, |(k, _)| k).trim();
                    key.len() > 5
                        && key[..5].eq_ignore_ascii_case("name*")
                        && key[5..].starts_with(|c: char| c.is_ascii_digit())
                })
            })
        });
        if !plain || continued {
            return Err(malformed(
                "part headers spelled other than plainly (a bare CR or LF, a folded line, a space \
                 before a colon, a name continued over `name*0`…): servers read such headers \
                 differently",
            ));
        }
        // SECURITY: a part's own charset decodes its value (busboy, hence multer, does), and so
        // does its transfer encoding (Go's `mime/multipart` undoes quoted-printable): a `model`
        // in ISO-2022-JP or `d=65ar` names another model than the bytes the proxy reads. Header
        // lines folded onto the next (busboy reads them) are read unfolded.
        // Line ends as lenient parsers take them (Go's and the part names' reader take a bare
        // LF).
        let unfolded = head
            .replace("\r\n", "\n")
            .replace("\n ", " ")
            .replace("\n\t", " ");
        let recoded = unfolded.split('\n').any(|line| {
            line.split_once(':').is_some_and(|(name, value)| {
                let name = name.trim();
                let value = value.trim();
                (name.eq_ignore_ascii_case("content-type")
                    && !crate::charset::names_none_but(
                        value.as_bytes(),
                        crate::charset::ASCII_PRESERVING,
                    ))
                    || (name.eq_ignore_ascii_case("content-transfer-encoding")
                        && !["7bit", "8bit", "binary"]
                            .iter()
                            .any(|plain| value.eq_ignore_ascii_case(plain)))
            })
        });
        if recoded {
            return Err(malformed(
                "a part whose `Content-Type` names a charset other than UTF-8, or whose \
                 `Content-Transfer-Encoding` is not `7bit`, `8bit` or `binary`: a server would \
                 decode its value to other text than the proxy reads",
            ));
        }
        let mut next = Vec::with_capacity(delimiter.len() + 2);
        next.extend_from_slice(b"\r\n");
        next.extend_from_slice(delimiter);
        let end = find(content, &next).ok_or_else(|| malformed("no closing delimiter"))?;
        // SECURITY: a part that names itself twice over, differently (`name` beside a `name*`
        // that decodes to `model`, two `Content-Disposition` lines), is read as one field by one
        // server and as another by the next: which one is not the proxy's guess to make.
        // The first name, and the first other one (no more are read).
        let mut names: Vec<String> = Vec::new();
        crate::part_names::each(head.as_bytes(), |name| {
            if !names.contains(&name) {
                names.push(name);
            }
            names.len() < 2
        });
        match names.as_slice() {
            [] => {}
            [name] => part(name, &content[..end])?,
            [first, second, ..] => {
                return Err(malformed(&format!(
                    "a part is named both `{first}` and `{second}`; which name a server reads is \
                     its choice"
                )))
            }
        }
        rest = &content[end + next.len()..];
    }
}

/// Where `needle` first occurs in `haystack`, in linear time (see `credentials::raw`'s).
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A model name with a comma names several models to gateways that call each (LiteLLM):
    /// refused, as `model` and as a fallback.
    #[test]
    fn a_model_name_with_a_comma_is_refused() {
        for body in [
            &br#"{"model":"gpt-4o-mini,gpt-4o"}"#[..],
            br#"{"model":"gpt-4o-mini","fallbacks":["a,b"]}"#,
        ] {
            let e = llm_request(body).expect_err("refused");
            assert!(e.contains("comma"), "{e}");
        }
        assert!(llm_request(br#"{"model":"gpt-4o-mini"}"#).is_ok());
    }

    /// A model list, a count and a flag are read without a tree of their value: 8 MiB of
    /// `[1,1,…]` in `fallbacks` took 600 MB before the policy was asked. Measured as the growth
    /// of the peak resident memory of a process of its own.
    #[test]
    fn lists_and_flags_are_read_without_a_tree_of_them() {
        if !crate::in_own_process("body::tests::lists_and_flags_are_read_without_a_tree_of_them") {
            return;
        }
        // The first large body read raises the peak by about its size whatever it holds (the
        // allocator's first growth): read one that holds no list before measuring.
        let warm = format!(r#"{{"model":"a","prompt":"{}"}}"#, "a".repeat(8 << 20));
        llm_request(warm.as_bytes()).unwrap();
        drop(warm);
        for (field, item) in [
            ("fallbacks", "1"),
            ("fallbacks", "{}"),
            ("fallbacks", "[]"),
            ("models", "null"),
            ("n", "1"),
            ("background", "[]"),
        ] {
            let mut body = String::with_capacity(9 << 20);
            body.push_str(&format!(r#"{{"model":"gpt-4o-mini","{field}":["#));
            body.push_str(item);
            while body.len() < 8 << 20 {
                body.push(',');
                body.push_str(item);
            }
            body.push_str("]}");
            let before = crate::peak_resident_bytes();
            let read = llm_request(body.as_bytes()).unwrap();
            let grown = crate::peak_resident_bytes() - before;
            assert_eq!(read.model.as_deref(), Some("gpt-4o-mini"));
            assert!(
                read.other_models.is_empty(),
                "{field}: {:?}",
                read.other_models
            );
            assert!(
                grown < body.len() as u64 / 2,
                "{field} of {item}: reading a {}-byte body took {grown} bytes more at its peak",
                body.len()
            );
        }
        // What the lists name is still read, however nested, keys too, and at most 16 models.
        let read = llm_request(
            br#"{"model":"a","fallbacks":[1,"b",{"c":["d",null,{"e":2}]},["b"],true],"n":"3","background":"yes"}"#,
        )
        .unwrap();
        assert_eq!(read.other_models, ["b", "c", "d", "e"]);
        assert_eq!(read.fallback_models, ["b", "c", "d", "e"]);
        assert_eq!(read.choices, Some(3));
        assert!(read.background);
        let many: Vec<String> = (0..17).map(|i| format!("m{i}")).collect();
        let body = serde_json::json!({"model": "a", "models": many}).to_string();
        let e = llm_request(body.as_bytes()).expect_err("refused");
        assert!(e.contains("more than 16 models"), "{e}");
    }

    #[test]
    fn a_hold_grows_to_its_decoded_body_within_the_same_bounds() {
        let budget = BodyBudget::new(100, 40);
        let acme = TenantId::new("acme").unwrap();
        let mut hold = budget.try_hold(&acme, 5).unwrap();
        hold.grow_to(&acme, 30).unwrap();
        assert_eq!((budget.held(), budget.held_by(&acme)), (30, 30));
        // Smaller than held: nothing changes.
        hold.grow_to(&acme, 20).unwrap();
        assert_eq!(budget.held(), 30);
        // Past the tenant's share: refused, and the hold stays as it was.
        assert_eq!(
            hold.grow_to(&acme, 41).unwrap_err(),
            BodyError::TenantOverloaded(40)
        );
        assert_eq!((budget.held(), budget.held_by(&acme)), (30, 30));
        hold.grow_to(&acme, 40).unwrap();
        assert_eq!((budget.held(), budget.held_by(&acme)), (40, 40));
        // Past the process's bound.
        let globex = TenantId::new("globex").unwrap();
        let mut other = budget.try_hold(&globex, 20).unwrap();
        let _third = budget
            .try_hold(&TenantId::new("initech").unwrap(), 40)
            .unwrap();
        assert_eq!(
            other.grow_to(&globex, 21).unwrap_err(),
            BodyError::Overloaded
        );
        drop(hold);
        assert_eq!((budget.held(), budget.held_by(&acme)), (60, 0));
        drop(other);
        assert_eq!(budget.held(), 40);
    }

    #[test]
    fn one_tenant_cannot_hold_the_body_memory_of_all() {
        let budget = BodyBudget::new(100, 40);
        let acme = TenantId::new("acme").unwrap();
        let globex = TenantId::new("globex").unwrap();
        let held: Vec<_> = (0..4)
            .map(|_| budget.try_hold(&acme, 10).unwrap())
            .collect();
        assert_eq!(
            budget.try_hold(&acme, 1).unwrap_err(),
            BodyError::TenantOverloaded(40)
        );
        assert_eq!(
            (budget.held(), budget.held_by(&acme)),
            (40, 40),
            "a refusal holds nothing"
        );
        // globex has its own share, and the process's bound stays.
        let g: Vec<_> = (0..4)
            .map(|_| budget.try_hold(&globex, 10).unwrap())
            .collect();
        let third = TenantId::new("initech").unwrap();
        let _t = budget.try_hold(&third, 20).unwrap();
        assert_eq!(budget.held(), 100);
        assert_eq!(
            budget.try_hold(&third, 1).unwrap_err(),
            BodyError::Overloaded
        );
        assert_eq!(
            budget.held_by(&third),
            20,
            "the process's refusal gave the share back"
        );
        drop(held);
        drop(g);
        assert_eq!((budget.held(), budget.held_by(&acme)), (20, 0));
        assert!(budget.try_hold(&acme, 40).is_ok());
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn br(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(data).unwrap();
        }
        out
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::encode_all(data, 3).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn to_llm(body: Vec<u8>, pairs: &[(&str, &str)]) -> Result<Classified, BodyError> {
        classify(
            Bytes::from(body),
            &headers(pairs),
            BodyDestination::Llm,
            1 << 20,
        )
    }

    const CHAT: &[u8] = br#"{"model":"gpt-4o","max_tokens":7,"messages":[]}"#;

    fn to(
        to: BodyDestination,
        body: Vec<u8>,
        pairs: &[(&str, &str)],
    ) -> Result<Classified, BodyError> {
        classify(Bytes::from(body), &headers(pairs), to, 1 << 20)
    }

    /// A body the proxy reads, in a charset a server decodes otherwise (UTF-7 turns these bytes
    /// into `","name":"wipe`), is refused toward every destination; an ASCII-preserving one, or
    /// a body the proxy does not read (a CSV upload), passes.
    #[test]
    fn a_body_in_a_charset_a_server_reads_otherwise_is_refused() {
        let hidden = br#"{"model":"cheap","x":"+ACIALAAiAG0AbwBkAGUAbAAiADoAIgBkAGUAYQBy-"}"#;
        for dest in [
            BodyDestination::Llm,
            BodyDestination::Mcp,
            BodyDestination::Other,
        ] {
            for content_type in [
                "application/json; charset=utf-7",
                "application/json; charset*=''utf-7",
                "text/plain; charset=iso-2022-jp",
                "application/x-www-form-urlencoded; charset=shift_jis",
            ] {
                let r = to(dest, hidden.to_vec(), &[("content-type", content_type)]);
                assert!(
                    matches!(r, Err(BodyError::Unsupported(_))),
                    "{dest:?} {content_type}: {r:?}"
                );
            }
            for content_type in [
                "application/json",
                "application/json; charset=UTF-8",
                "application/json; charset=iso-8859-1",
            ] {
                let r = to(dest, CHAT.to_vec(), &[("content-type", content_type)]);
                assert!(r.is_ok(), "{dest:?} {content_type}: {r:?}");
            }
        }
        // UTF-16 or UTF-32 by its bytes, without a charset: Python's servers read it so.
        let utf16: Vec<u8> = br#"{"model":"dear"}"#.iter().flat_map(|b| [*b, 0]).collect();
        let mut bom = vec![0xFF, 0xFE];
        bom.extend(&utf16);
        for body in [utf16.clone(), bom] {
            for content_type in ["application/json", "text/plain"] {
                let r = to(
                    BodyDestination::Other,
                    body.clone(),
                    &[("content-type", content_type)],
                );
                assert!(
                    matches!(r, Err(BodyError::Unsupported(_))),
                    "{content_type}: {r:?}"
                );
            }
            let r = to(BodyDestination::Other, body.clone(), &[]);
            assert!(matches!(r, Err(BodyError::Unsupported(_))), "{r:?}");
        }
        // A binary upload with NULs is no text body.
        let binary = vec![0x08, 0x00, 0x12, 0x03];
        assert!(to(
            BodyDestination::Other,
            binary,
            &[("content-type", "application/octet-stream")]
        )
        .is_ok());
        let csv = b"name,price\nfoo,1\n".to_vec();
        assert!(to(
            BodyDestination::Other,
            csv,
            &[("content-type", "text/csv; charset=windows-1250")]
        )
        .is_ok());
        // Whatever the type, a charset that does not keep ASCII: an app may parse any type as
        // JSON, in the charset the type names.
        for content_type in [
            "text/plain; charset=utf-7",
            "application/octet-stream; charset=utf-16be",
            "text/csv; charset=shift_jis",
        ] {
            let r = to(
                BodyDestination::Other,
                b"+AHsAIg-x".to_vec(),
                &[("content-type", content_type)],
            );
            assert!(
                matches!(r, Err(BodyError::Unsupported(_))),
                "{content_type}: {r:?}"
            );
        }
        // A compressed body is judged decoded.
        let gz = gzip(br#"{"model":"cheap","x":"+ACIALAAiAG0AbwBkAGUAbAAiADoAIgBkAGUAYQBy-"}"#);
        let r = to(
            BodyDestination::Other,
            gz,
            &[
                ("content-type", "text/plain; charset=utf-7"),
                ("content-encoding", "gzip"),
            ],
        );
        assert!(matches!(r, Err(BodyError::Unsupported(_))), "{r:?}");
        // A part's charset on a folded line, or a transfer encoding a server undoes.
        let multipart = [("content-type", "multipart/form-data; boundary=b")];
        for head in [
            "Content-Type: text/plain;\r\n charset=utf-16le",
            "Content-Type: text/plain;\r\n\tcharset=utf-16le",
            "Content-Transfer-Encoding: quoted-printable",
            "Content-Transfer-Encoding: base64",
        ] {
            let part = format!("--b\r\nContent-Disposition: form-data; name=\"model\"\r\n{head}\r\n\r\nd=65ar\r\n--b--\r\n");
            let r = to_llm(part.into(), &multipart);
            assert!(matches!(r, Err(BodyError::Malformed(_))), "{head}: {r:?}");
        }
        // Multipart spelled so that servers read it differently: headers after a bare LF, a part
        // hidden behind a delimiter after a bare LF or CR, a name continued over `name*0`, a
        // folded line, a space before a colon, a bare CR, headers ended by a bare LF, a header
        // name with other whitespace about it (Werkzeug strips it), quotes with two readings.
        for body in [
            "--b\r\nContent-Disposition: form-data; name=\"model\"\nContent-Transfer-Encoding: quoted-printable\r\n\r\nd=65ar\r\n--b--\r\n",
            "--b\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nhi\n--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ndear\r\n--b--\r\n",
            "--b\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nhi\r--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ndear\r\n--b--\r\n",
            "--b\r\nContent-Disposition: form-data; name*0=\"mo\"; name*1=\"del\"\r\n\r\ndear\r\n--b--\r\n",
            "--b\r\nContent-Disposition: form-data;\r\n name=\"model\"\r\n\r\ndear\r\n--b--\r\n",
            "--b\r\nContent-Disposition : form-data; name=\"model\"\r\n\r\ndear\r\n--b--\r\n",
            "--b\r\nX-A: 1\rContent-Disposition: form-data; name=\"model\"\r\n\r\ndear\r\n--b--\r\n",
            "--b\r\nContent-Disposition: form-data; name=\"model\"\n\ndear\r\n--b\r\nX-Pad: y\r\n\r\ngpt-4o-mini\r\n--b--\r\n",
            "--b\r\nContent-Disposition\x0b: form-data; name=\"model\"\r\n\r\ndear\r\n--b--\r\n",
            "--b\r\n\u{a0}Content-Disposition: form-data; name=\"model\"\r\n\r\ndear\r\n--b--\r\n",
            "--b\r\nContent-Disposition: form-data; name=\"x; name=model\r\n\r\ndear\r\n--b--\r\n",
            "--b\r\nContent-Disposition: form-data; x=a\"b; name=\"model\"\r\n\r\ndear\r\n--b--\r\n",
        ] {
            let r = to_llm(body.into(), &multipart);
            assert!(matches!(r, Err(BodyError::Malformed(_))), "{body:?}: {r:?}");
        }
        // A quoted boundary with an escape has two readings, and so does one with a `;`
        // (quoted) or hidden in another parameter's quotes.
        let r = to_llm(
            "--a\\\"b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm\r\n--a\\\"b--\r\n"
                .into(),
            &[("content-type", "multipart/form-data; boundary=\"a\\\"b\"")],
        );
        assert!(matches!(r, Err(BodyError::Malformed(_))), "{r:?}");
        for content_type in [
            "multipart/form-data; boundary=\"a;b\"",
            "multipart/form-data; x=\"; boundary=a\"; boundary=b",
        ] {
            let body = "--a\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4o-mini\r\n--a--\r\n";
            let r = to_llm(body.into(), &[("content-type", content_type)]);
            let model = r.as_ref().ok().and_then(|c| c.llm.model.as_deref());
            assert_ne!(model, Some("gpt-4o-mini"), "{content_type}: {r:?}");
        }
        // A filename that spells `name*1` is a filename.
        let upload = "--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"track name*1.png\"\r\n\r\nx\r\n--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ndall-e-2\r\n--b--\r\n";
        assert_eq!(
            to_llm(upload.into(), &multipart)
                .unwrap()
                .llm
                .model
                .as_deref(),
            Some("dall-e-2")
        );
        assert!(llm_request(br#"{"model":"m\u2028x"}"#).is_err());
        // A `;` inside a quoted filename is part of it.
        let upload = "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"report; name=v2.txt\"\r\n\r\nx\r\n--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--b--\r\n";
        assert_eq!(
            to_llm(upload.into(), &multipart)
                .unwrap()
                .llm
                .model
                .as_deref(),
            Some("whisper-1")
        );
        let part = "--b\r\nContent-Disposition: form-data; name=\"model\"\r\nContent-Transfer-Encoding: 8bit\r\n\r\ndear\r\n--b--\r\n";
        assert_eq!(
            to_llm(part.into(), &multipart)
                .unwrap()
                .llm
                .model
                .as_deref(),
            Some("dear")
        );
        // A multipart part's own charset decodes its value too.
        let part = "--b\r\nContent-Disposition: form-data; name=\"model\"\r\nContent-Type: text/plain; charset=iso-2022-jp\r\n\r\nwhisper-1\r\n--b--\r\n";
        let r = to_llm(
            part.into(),
            &[("content-type", "multipart/form-data; boundary=b")],
        );
        assert!(matches!(r, Err(BodyError::Malformed(_))), "{r:?}");
        let plain = part.replace("; charset=iso-2022-jp", "; charset=utf-8");
        let r = to_llm(
            plain.into(),
            &[("content-type", "multipart/form-data; boundary=b")],
        );
        assert_eq!(r.unwrap().llm.model.as_deref(), Some("whisper-1"));
    }

    /// Toward any other destination a compressed body is read as the server will read it,
    /// decoded (a method override or a model inside is seen), and forwarded as it came; a
    /// coding the proxy does not know passes as it is (no framework undoes it either).
    #[test]
    fn a_compressed_body_to_another_destination_is_read_decoded_and_sent_as_it_came() {
        let json = [
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ];
        let r = to(
            BodyDestination::Other,
            gzip(br#"{"_method":"DELETE"}"#),
            &json,
        );
        assert!(matches!(r, Err(BodyError::Malformed(_))), "{r:?}");
        let form = [
            ("content-type", "application/x-www-form-urlencoded"),
            ("content-encoding", "deflate"),
        ];
        let r = to(BodyDestination::Other, zlib(b"_method=DELETE"), &form);
        assert!(matches!(r, Err(BodyError::Malformed(_))), "{r:?}");
        let sent = gzip(br#"{"model":"dear"}"#);
        let r = to(BodyDestination::Other, sent.clone(), &json).unwrap();
        assert_eq!(r.llm.model.as_deref(), Some("dear"));
        assert_eq!((&r.body[..], r.decoded), (&sent[..], false));
        // Corrupt or a bomb: refused, as toward an LLM.
        assert!(to(BodyDestination::Other, b"\x1f\x8bnot gzip".to_vec(), &json).is_err());
        let bomb = gzip(&vec![b' '; 2 << 20]);
        assert_eq!(
            to(BodyDestination::Other, bomb, &json).unwrap_err(),
            BodyError::TooLarge
        );
        let unknown = [
            ("content-type", "application/octet-stream"),
            ("content-encoding", "aes128gcm"),
        ];
        let r = to(BodyDestination::Other, b"\x00\x01opaque".to_vec(), &unknown).unwrap();
        assert_eq!(&r.body[..], b"\x00\x01opaque");
    }

    /// A form's or a multipart body's model list meets a JSON list's checks: at most 16
    /// distinct models (each is a decision and a line of the record; repeats are one), none
    /// with a comma (a gateway calls each), none longer than a model name may be.
    #[test]
    fn a_forms_model_list_is_held_to_a_json_lists_checks() {
        let form = [("content-type", "application/x-www-form-urlencoded")];
        let read = |body: String| to_llm(body.into_bytes(), &form);
        let repeated = format!("model=a{}", "&models=b".repeat(100_000));
        let ok = read(repeated).unwrap();
        assert_eq!(ok.llm.other_models, ["b"]);
        assert_eq!(ok.llm.fallback_models, ["b"]);
        let many: String = (0..17).map(|i| format!("&fallbacks=m{i}")).collect();
        let e = read(format!("model=a{many}")).unwrap_err();
        assert!(
            matches!(&e, BodyError::Malformed(m) if m.contains("more than 16 models")),
            "{e:?}"
        );
        let e = read("model=a&fallbacks=gpt-4o-mini%2Cgpt-4o".into()).unwrap_err();
        assert!(
            matches!(&e, BodyError::Malformed(m) if m.contains("comma")),
            "{e:?}"
        );
        let e = read(format!("model=a&models={}", "m".repeat(300))).unwrap_err();
        assert!(
            matches!(&e, BodyError::Malformed(m) if m.contains("longer than")),
            "{e:?}"
        );
        let multi = [("content-type", "multipart/form-data; boundary=XX")];
        let part = |name: &str, value: &str| {
            format!("--XX\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
        };
        let body = format!(
            "{}{}--XX--\r\n",
            part("model", "a"),
            part("fallbacks", "x,y")
        );
        let e = to_llm(body.into_bytes(), &multi).unwrap_err();
        assert!(
            matches!(&e, BodyError::Malformed(m) if m.contains("comma")),
            "{e:?}"
        );
    }

    /// A part that names itself a million times is read one name at a time, and refused at its
    /// second distinct name.
    #[test]
    fn a_part_named_many_times_is_refused_at_its_second_name() {
        let multi = [("content-type", "multipart/form-data; boundary=XX")];
        let names = ";name=a".repeat(200_000);
        let body =
            format!("--XX\r\nContent-Disposition: form-data{names}; name=b\r\n\r\nv\r\n--XX--\r\n");
        let e = to_llm(body.into_bytes(), &multi).unwrap_err();
        assert!(
            matches!(&e, BodyError::Malformed(m) if m.contains("named both `a` and `b`")),
            "{e:?}"
        );
    }

    /// (case, body, request headers, what is expected: decoded or the refusal code).
    type Case<T> = (&'static str, Vec<u8>, Vec<(&'static str, &'static str)>, T);

    #[test]
    fn bodies_that_hid_the_model_are_read() {
        let with_bom = [BOM, CHAT].concat();
        let stacked = br(&gzip(CHAT));
        let cases: Vec<Case<bool>> = vec![
            (
                "json behind a BOM",
                with_bom.clone(),
                vec![("content-type", "application/json")],
                false,
            ),
            (
                "BOM and text/plain",
                with_bom,
                vec![("content-type", "text/plain")],
                false,
            ),
            ("gzip", gzip(CHAT), vec![("content-encoding", "gzip")], true),
            (
                "x-gzip",
                gzip(CHAT),
                vec![("content-encoding", "X-GZIP")],
                true,
            ),
            (
                "deflate (zlib)",
                zlib(CHAT),
                vec![("content-encoding", "deflate")],
                true,
            ),
            (
                "deflate (raw)",
                raw_deflate(CHAT),
                vec![("content-encoding", "deflate")],
                true,
            ),
            ("br", br(CHAT), vec![("content-encoding", "br")], true),
            ("zstd", zstd(CHAT), vec![("content-encoding", "zstd")], true),
            (
                "gzip then br",
                stacked.clone(),
                vec![("content-encoding", "gzip, br")],
                true,
            ),
            (
                "gzip then br, two lines",
                stacked,
                vec![("content-encoding", "gzip"), ("content-encoding", "br")],
                true,
            ),
            (
                "identity",
                CHAT.to_vec(),
                vec![("content-encoding", "identity")],
                false,
            ),
            (
                "gzip behind a BOM inside",
                gzip(&[BOM, CHAT].concat()),
                vec![("content-encoding", "gzip")],
                true,
            ),
        ];
        for (name, body, pairs, decoded) in cases {
            let read = to_llm(body, &pairs).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(read.llm.model.as_deref(), Some("gpt-4o"), "{name}");
            assert_eq!(read.llm.max_output_tokens, Some(7), "{name}");
            assert_eq!(read.decoded, decoded, "{name}");
            // What is forwarded is what was read: decoded, without the BOM.
            assert_eq!(&read.body[..], CHAT, "{name}");
        }
    }

    /// The multipart `_method` check reads each `name=` value once, however many share one
    /// line: a body of nothing but `name=` took quadratic time. What it finds is unchanged:
    /// the last of many names on a line, a long name after `_method[`, a name led by many
    /// spaces of any script.
    #[test]
    fn many_names_on_one_line_are_read_in_one_pass() {
        let many = "name=".repeat(200_000);
        assert!(!names_a_part(many.as_bytes()));
        for found in [
            format!("{many}name=_method"),
            format!("name=\"_method[{}]\"", "x".repeat(100_000)),
            format!("name=\"{}_method\"", "\u{3000}".repeat(40)),
            format!("{many}name*=utf-8''_method"),
            format!("name=a'b{}; name=_method", "'c".repeat(1000)),
        ] {
            assert!(
                names_a_part(found.as_bytes()),
                "{}",
                &found[found.len().saturating_sub(40)..]
            );
        }
        // Values that share one run of trailing spaces trim it once.
        let spaces = " ".repeat(1_000_000);
        assert!(names_a_part(
            format!("{many}name=_method{spaces}").as_bytes()
        ));
        for not_found in [
            format!("name=\"_method{}\"", "x".repeat(100)),
            format!("{many}name=_methods"),
            format!("{many}{spaces};x"),
        ] {
            assert!(!names_a_part(not_found.as_bytes()));
        }
    }

    /// A body to a tool that carries `_method` where a framework reads it (Rails, Laravel,
    /// Symfony run the request as that method) is refused, however it is typed, framed or
    /// escaped; other fields, nested JSON members and text are the application's.
    #[test]
    fn a_method_override_in_a_form_is_refused() {
        let to_tool = |body: &[u8], ct: &str| {
            let headers: http::HeaderMap = [(http::header::CONTENT_TYPE, ct)]
                .into_iter()
                .filter(|(_, ct)| !ct.is_empty())
                .map(|(name, ct)| (name, ct.parse().unwrap()))
                .collect();
            classify(
                Bytes::copy_from_slice(body),
                &headers,
                BodyDestination::Other,
                1 << 20,
            )
        };
        let form = "application/x-www-form-urlencoded";
        let multi = "multipart/form-data; boundary=b";
        for (body, ct) in [
            (&b"title=x&_method=delete"[..], form),
            (b"%5Fmethod=DELETE", form),
            (b"a=1;_method=PUT", form),
            (
                b"--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b--",
                multi,
            ),
            // Rack reads a body without a type as a form.
            (b"title=x&_method=delete", ""),
            // Other multipart types, and framings the strict reader refuses (bare `\n`,
            // padding after the boundary) that PHP's accepts.
            (
                b"--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b--",
                "multipart/mixed; boundary=b",
            ),
            (
                b"--b  \nContent-Disposition: form-data; NAME=_method\n\nDELETE\n--b--",
                multi,
            ),
            (
                b"--b\r\nContent-Disposition: form-data; name*=utf-8''_method\r\n\r\nDELETE\r\n--b--",
                multi,
            ),
            // Laravel reads JSON input as it reads forms.
            (br#"{"title":"x","_method":"DELETE"}"#, "application/json"),
            (br#"{"_method":"DELETE"}"#, ""),
            // Letters escaped in a form or in JSON; PHP's `.` and `[` for `_`.
            (b"_%6Dethod=DELETE", form),
            (b"%5F%6D%65%74%68%6F%64=DELETE", form),
            (b".method=DELETE", form),
            (b"[method=DELETE", form),
            (
                b"--b\r\nContent-Disposition: form-data; name=\".method\"\r\n\r\nDELETE\r\n--b--",
                multi,
            ),
            (br#"{"\u005fmethod":"DELETE"}"#, "application/json"),
            // ASP.NET Core reads form names ignoring case.
            (b"title=x&_METHOD=DELETE", form),
            (b"_Method=DELETE", form),
            // qs (Express), Rack and PHP read bracketed names as arrays and maps.
            (b"_method[]=DELETE", form),
            (b"a=1&_method%5B0%5D=DELETE", form),
            (
                b"--b\r\nContent-Disposition: form-data; name=\"_method[]\"\r\n\r\nDELETE\r\n--b--",
                multi,
            ),
            (b"_%4DETHOD=DELETE", form),
            (
                b"--b\r\nContent-Disposition: form-data; name=\"_METHOD\"\r\n\r\nDELETE\r\n--b--",
                multi,
            ),
            (br#"{"_METHOD":"DELETE"}"#, "application/json"),
            // A JSON reader with limits gives up where another reads on: not a way past.
            (br#"{"n":1e400,"_method":"DELETE"}"#, "application/json"),
            (
                format!(r#"{{"deep":{}{},"_method":"DELETE"}}"#, "[".repeat(200), "]".repeat(200))
                    .as_bytes(),
                "application/json",
            ),
        ] {
            assert!(
                matches!(to_tool(body, ct), Err(BodyError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        for (body, ct) in [
            (&b"payment_method=card&title=x"[..], form),
            (br#"{"nested":{"_method":"DELETE"},"payment_method":"x"}"#, "application/json"),
            (b"the _method field", "text/plain"),
            (
                b"--b\r\nContent-Disposition: form-data; name=\"payment_method\"\r\n\r\ncard\r\n--b--",
                multi,
            ),
            (
                b"--b\r\nContent-Disposition: form-data; name=\"_methods\"\r\n\r\nx\r\n--b--",
                multi,
            ),
            (br#"{"a":{"_method":"x"},"b":["_method"],"c":"_method"}"#, "application/json"),
            (b"a.method=x&title=100%25", form),
            (b"PAYMENT_METHOD=card&_METHODS=x", form),
        ] {
            assert!(to_tool(body, ct).is_ok(), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn forms_name_the_model_too() {
        let form = to_llm(
            b"model=whisper-1&Max_Tokens=5&file=x".to_vec(),
            &[(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )],
        )
        .unwrap();
        assert_eq!(form.llm.model.as_deref(), Some("whisper-1"));
        assert_eq!(form.llm.max_output_tokens, Some(5));
        let multipart_body = |disposition: &str| {
            format!(
                "preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n--XyZ\r\n\r\n\r\n--XyZ\r\nContent-Disposition: {disposition}\r\n\r\nwhisper-1\r\n--XyZ--\r\n"
            )
            .into_bytes()
        };
        for disposition in [
            "form-data; name=\"model\"",
            "form-data; name=model",
            "form-data; NAME=\"Model\"",
            "form-data; name*=utf-8''model",
            // Percent-encoded, as RFC 2231 readers decode it.
            "form-data; name*=UTF-8''mod%65l",
        ] {
            let read = to_llm(
                multipart_body(disposition),
                &[("content-type", "multipart/form-data; boundary=\"XyZ\"")],
            )
            .unwrap_or_else(|e| panic!("{disposition}: {e:?}"));
            assert_eq!(
                read.llm.model.as_deref(),
                Some("whisper-1"),
                "{disposition}"
            );
        }
        // A part named twice over, differently: which name a server reads is its choice.
        for disposition in [
            "form-data; name=\"file\"; name*=UTF-8''model",
            "form-data; name=\"file\"\r\nContent-Disposition: form-data; name=\"model\"",
        ] {
            let read = to_llm(
                multipart_body(disposition),
                &[("content-type", "multipart/form-data; boundary=\"XyZ\"")],
            );
            assert!(read.is_err(), "{disposition}: {read:?}");
        }
        let upload = to_llm(
            b"--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--b--"
                .to_vec(),
            &[("content-type", "multipart/form-data; boundary=b")],
        )
        .unwrap();
        assert_eq!(
            upload.llm,
            LlmRequest::default(),
            "an upload names no model"
        );
        // A Realtime call (`/v1/realtime/calls`): the SDP offer and the session, whose model is
        // the call's; beside a `model` field it is a model given twice.
        let call = |extra: &str| {
            to_llm(
                format!("--b\r\nContent-Disposition: form-data; name=\"sdp\"\r\n\r\nv=0\r\n--b\r\nContent-Disposition: form-data; name=\"session\"\r\nContent-Type: application/json\r\n\r\n{{\"type\":\"realtime\",\"model\":\"gpt-realtime\"}}\r\n{extra}--b--").into_bytes(),
                &[("content-type", "multipart/form-data; boundary=b")],
            )
        };
        assert_eq!(call("").unwrap().llm.model.as_deref(), Some("gpt-realtime"));
        assert!(call(
            "--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4o-mini\r\n"
        )
        .is_err());
        let form = to_llm(
            b"session=%7B%22model%22%3A%22gpt-realtime%22%7D".to_vec(),
            &[("content-type", "application/x-www-form-urlencoded")],
        )
        .unwrap();
        assert_eq!(form.llm.model.as_deref(), Some("gpt-realtime"));
        // Two form fields naming different models leave the choice to the upstream: refused.
        let two = to_llm(
            b"model=gpt-4o-mini&foundationModel=anthropic.claude-3-opus".to_vec(),
            &[("content-type", "application/x-www-form-urlencoded")],
        );
        assert!(two.is_err());
    }

    #[test]
    fn bodies_that_cannot_be_read_are_refused() {
        let twice_multipart = b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4o-mini\r\n--b\r\nContent-Disposition: form-data; name=\"MODEL\"\r\n\r\ngpt-4o\r\n--b--".to_vec();
        let mut corrupt = gzip(CHAT);
        let n = corrupt.len();
        corrupt[n / 2] ^= 0xFF;
        let cases: Vec<Case<&str>> = vec![
            (
                "text",
                b"gpt-4o please".to_vec(),
                vec![("content-type", "text/plain")],
                "unsupported_media_type",
            ),
            (
                "no type",
                b"model: gpt-4o".to_vec(),
                vec![],
                "unsupported_media_type",
            ),
            (
                "octet stream",
                vec![0, 1, 2],
                vec![("content-type", "application/octet-stream")],
                "unsupported_media_type",
            ),
            (
                "not JSON though it says so",
                b"model=gpt-4o".to_vec(),
                vec![("content-type", "application/json")],
                "bad_request",
            ),
            (
                "unknown coding",
                CHAT.to_vec(),
                vec![("content-encoding", "compress")],
                "unsupported_media_type",
            ),
            (
                "too many codings",
                CHAT.to_vec(),
                vec![("content-encoding", "identity, gzip, gzip, gzip, gzip, gzip")],
                "unsupported_media_type",
            ),
            (
                "gzip that is not",
                CHAT.to_vec(),
                vec![("content-encoding", "gzip")],
                "bad_request",
            ),
            (
                "corrupt gzip",
                corrupt,
                vec![("content-encoding", "gzip")],
                "bad_request",
            ),
            (
                "br that is not",
                CHAT.to_vec(),
                vec![("content-encoding", "br")],
                "bad_request",
            ),
            (
                "zstd that is not",
                CHAT.to_vec(),
                vec![("content-encoding", "zstd")],
                "bad_request",
            ),
            (
                "model twice",
                br#"{"model":"gpt-4o-mini","model":"gpt-4o"}"#.to_vec(),
                vec![],
                "bad_request",
            ),
            (
                "gzip hides model twice",
                gzip(br#"{"model":"a","model":"b"}"#),
                vec![("content-encoding", "gzip")],
                "bad_request",
            ),
            (
                "form model twice",
                b"model=gpt-4o-mini&model=gpt-4o".to_vec(),
                vec![("content-type", "application/x-www-form-urlencoded")],
                "bad_request",
            ),
            (
                "form bad ceiling",
                b"model=m&max_tokens=-1".to_vec(),
                vec![("content-type", "application/x-www-form-urlencoded")],
                "bad_request",
            ),
            (
                "multipart model twice",
                twice_multipart,
                vec![("content-type", "multipart/form-data; boundary=b")],
                "bad_request",
            ),
            (
                "multipart without boundary",
                b"--b--".to_vec(),
                vec![("content-type", "multipart/form-data")],
                "bad_request",
            ),
            (
                "multipart unterminated",
                b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4o".to_vec(),
                vec![("content-type", "multipart/form-data; boundary=b")],
                "bad_request",
            ),
            (
                "JSON array that is not",
                b"[1,".to_vec(),
                vec![],
                "bad_request",
            ),
        ];
        for (name, body, pairs, code) in cases {
            match to_llm(body, &pairs) {
                Err(e) => {
                    // The codes the proxy answers these with (error.rs converts them).
                    let got = match e {
                        BodyError::Malformed(_) => "bad_request",
                        BodyError::Unsupported(_) => "unsupported_media_type",
                        BodyError::TooLarge => "request_body_too_large",
                        ref other => panic!("{name}: {other:?}"),
                    };
                    assert_eq!(got, code, "{name}: {e:?}");
                }
                Ok(read) => panic!("{name}: read as {:?}", read.llm),
            }
        }
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_cap() {
        let zeros = vec![0u8; 8 << 20];
        for (coding, bomb) in [
            ("gzip", gzip(&zeros)),
            ("br", br(&zeros)),
            ("zstd", zstd(&zeros)),
        ] {
            assert!(bomb.len() < 64 << 10, "{coding}: {}", bomb.len());
            let got = classify(
                Bytes::from(bomb),
                &headers(&[("content-encoding", coding)]),
                BodyDestination::Llm,
                1 << 20,
            );
            assert_eq!(got.err(), Some(BodyError::TooLarge), "{coding}");
        }
        // Exactly at the cap is fine.
        let body = [CHAT, &vec![b' '; 1000][..]].concat();
        let read = classify(
            Bytes::from(gzip(&body)),
            &headers(&[("content-encoding", "gzip")]),
            BodyDestination::Llm,
            body.len(),
        )
        .unwrap();
        assert_eq!(read.body.len(), body.len());
    }

    #[test]
    fn other_destinations_keep_their_bodies() {
        let gz = gzip(CHAT);
        let other = classify(
            Bytes::from(gz.clone()),
            &headers(&[("content-encoding", "gzip")]),
            BodyDestination::Other,
            1 << 20,
        )
        .unwrap();
        assert_eq!(&other.body[..], &gz[..]);
        assert!(!other.decoded);
        let with_bom = [BOM, CHAT].concat();
        let other = classify(
            Bytes::from(with_bom.clone()),
            &headers(&[]),
            BodyDestination::Other,
            1 << 20,
        )
        .unwrap();
        assert_eq!(
            other.llm.model.as_deref(),
            Some("gpt-4o"),
            "a BOM hides no model anywhere"
        );
        assert_eq!(&other.body[..], &with_bom[..]);
        let mcp = classify(
            Bytes::from_static(b"not json"),
            &headers(&[]),
            BodyDestination::Mcp,
            1 << 20,
        )
        .unwrap();
        assert_eq!(mcp.llm, LlmRequest::default());
    }

    #[test]
    fn a_json_object_is_read_whatever_the_content_type_says() {
        // (llm_request is never shown the header: the body's shape decides.)
        let body = br#" {"model":"gpt-4o","max_tokens":5}"#;
        let r = llm_request(body).unwrap();
        assert_eq!(r.model.as_deref(), Some("gpt-4o"));
        assert_eq!(r.max_output_tokens, Some(5));
        // Not shaped like a JSON object: nothing to read, nothing refused.
        for other in [&b"model=gpt-4o"[..], br#"["model"]"#, b"", b"hello world"] {
            assert_eq!(llm_request(other).unwrap(), LlmRequest::default());
        }
    }

    #[test]
    fn ambiguous_json_is_refused_not_forwarded_unchecked() {
        for body in [
            // Upstream JSON parsers keep the last copy; the proxy must not check the first.
            r#"{"model":"gpt-4o-mini","model":"gpt-4o"}"#,
            r#"{"model":"m","max_tokens":1,"max_tokens":100000}"#,
            r#"{"model":5}"#,
            r#"{"model":"m","max_tokens":"100"}"#,
            r#"{"model":"m","max_tokens":-1}"#,
            r#"{"model":"m""#,
        ] {
            assert!(llm_request(body.as_bytes()).is_err(), "{body}");
        }
        // What lenient parsers (JSON5, some Python/JS ones) accept: refused too.
        assert!(llm_request(br#"{"model":"gpt-4o",}"#).is_err());
        let long = format!(r#"{{"model":"{}"}}"#, "m".repeat(257));
        assert!(llm_request(long.as_bytes()).is_err());
    }

    #[test]
    fn output_ceiling_extraction() {
        for (body, want) in [
            (r#"{"model":"m","max_tokens":7}"#, Some(7)),
            (r#"{"model":"m","max_completion_tokens":8}"#, Some(8)),
            (r#"{"model":"m","max_output_tokens":9}"#, Some(9)),
            (r#"{"model":"m"}"#, None),
        ] {
            assert_eq!(
                llm_request(body.as_bytes()).unwrap().max_output_tokens,
                want,
                "{body}"
            );
        }
    }

    #[test]
    fn model_extraction() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"{"messages":[],"model":"gpt-4o"}"#, Some("gpt-4o")),
            (r#"{"model":"a\"b"}"#, Some("a\"b")),
            (r#"[1,2]"#, None),
            (r#"{"messages":[]}"#, None),
            ("not json", None),
        ];
        for (body, want) in cases {
            assert_eq!(
                llm_request(body.as_bytes()).unwrap().model.as_deref(),
                *want,
                "{body}"
            );
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// A JSON object naming `model` and `max_tokens`, keys in any order among filler keys,
        /// with arbitrary whitespace around the tokens.
        fn chat_object() -> impl Strategy<Value = (String, u64, String)> {
            let ws = || prop::sample::select(vec!["", " ", "\n", "\t", "\r\n  "]);
            (
                // Any printable ASCII but a comma (a model name with one is refused).
                "[ -+\\--~]{0,40}",
                any::<u64>(),
                prop::collection::vec(("[a-z_]{1,12}", "[ -~]{0,20}"), 0..4),
                0usize..3,
                ws(),
                ws(),
            )
                .prop_filter(
                    "filler keys are not the fields read",
                    |(_, _, filler, ..)| {
                        filler.iter().all(|(k, _)| {
                            !k.contains("model")
                                && k != "extra_body"
                                && k != "user_config"
                                && !k.contains("max")
                                && !k.contains("token")
                                && k != "n"
                                && k != "best_of"
                                && k != "background"
                        })
                    },
                )
                .prop_map(|(model, max, filler, at, a, b)| {
                    let mut members: Vec<String> = filler
                        .iter()
                        .map(|(k, v)| {
                            format!("{}{a}:{b}{}", serde_json::json!(k), serde_json::json!(v))
                        })
                        .collect();
                    members.insert(at.min(members.len()), format!("\"max_tokens\"{a}:{b}{max}"));
                    members.insert(0, format!("\"model\"{b}:{a}{}", serde_json::json!(model)));
                    let body = format!("{a}{{{b}{}{a}}}{b}", members.join(&format!("{a},{b}")));
                    (model, max, body)
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(256)))]

            /// Whatever the layout and encoding of a JSON chat body, the proxy reads the model
            /// and ceiling the upstream will read, and forwards the JSON it decided on.
            #[test]
            fn fuzz_json_bodies_are_classified_as_the_upstream_reads_them(
                (model, max, body) in chat_object(),
                encoding in 0usize..3,
            ) {
                let (bytes, pairs): (Vec<u8>, &[(&str, &str)]) = match encoding {
                    0 => (body.clone().into_bytes(), &[("content-type", "application/json")]),
                    1 => (gzip(body.as_bytes()), &[("content-encoding", "gzip")]),
                    _ => ([b"\xEF\xBB\xBF".as_slice(), body.as_bytes()].concat(), &[]),
                };
                let got = to_llm(bytes, pairs).unwrap();
                prop_assert_eq!(got.llm.model.as_deref(), Some(model.as_str()));
                prop_assert_eq!(got.llm.max_output_tokens, Some(max));
                let forwarded: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
                let upstream: serde_json::Value = serde_json::from_str(&body).unwrap();
                prop_assert_eq!(forwarded, upstream);
            }

            #[test]
            fn fuzz_hostile_bodies_never_panic(
                bytes in proptest::collection::vec(any::<u8>(), 0..512),
                kind in 0usize..6,
            ) {
                let pairs: &[(&str, &str)] = match kind {
                    0 => &[("content-type", "multipart/form-data; boundary=b")],
                    1 => &[("content-type", "application/x-www-form-urlencoded")],
                    2 => &[("content-encoding", "gzip")],
                    3 => &[("content-encoding", "br")],
                    4 => &[("content-encoding", "zstd")],
                    _ => &[("content-encoding", "deflate")],
                };
                let _ = to_llm(bytes.clone(), pairs);
                let mut framed = b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n".to_vec();
                framed.extend_from_slice(&bytes);
                let _ = to_llm(framed, &[("content-type", "multipart/form-data; boundary=b")]);
            }
        }
    }
}
