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

mod budget;
mod coding;
mod form;
mod method_override;
mod read;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

use bytes::Bytes;

use crate::usage::providers::{self, request::CeilingFields};
use coding::{content_codings, decode_all, readable_codings};
use form::{boundary, multipart, url_encoded};
use method_override::refuse_method_override;

pub use budget::{count_overload, BodyBudget, BodyHold};
pub use read::{read_full, ReadBody};

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
