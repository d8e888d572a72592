//! Request bodies: read in full (up to the cap) before the policy decision, so the decision can
//! see the model and nothing reaches the upstream before it is allowed.
//!
//! pingora forwards a body that a filter already read only through its retry buffer (64 KiB).
//! We read the body ourselves and enable that buffer just before the final read, so pingora calls
//! `request_body_filter` once at the start of proxying, where [`crate::proxy`] hands over the
//! whole buffered body. A chunked body has no known end, so one over 64 KiB must carry a
//! `Content-Length` instead (`411`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;
use serde::Deserialize;

use crate::error::Deny;
use crate::metrics::METRICS;

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

/// The request body bytes all requests in flight may hold together. Each body is held whole
/// (the decision needs it), so without this bound a few hundred slow uploads could take the
/// process's memory; over it a request is refused (`overloaded`) before its body is read.
#[derive(Debug)]
pub struct BodyBudget {
    held: AtomicU64,
    max: u64,
}

/// Bytes of the [`BodyBudget`] one request holds, given back when dropped (when the request ends).
#[derive(Debug)]
pub struct BodyHold {
    budget: Arc<BodyBudget>,
    bytes: u64,
}

impl BodyBudget {
    /// A budget of `max` bytes.
    pub fn new(max: u64) -> Arc<Self> {
        Arc::new(Self {
            held: AtomicU64::new(0),
            max,
        })
    }

    /// Holds `bytes`, unless that would take the total over the budget.
    pub fn try_hold(self: &Arc<Self>, bytes: u64) -> Option<BodyHold> {
        let before = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|total| *total <= self.max)
            })
            .ok()?;
        METRICS
            .buffered_body_bytes
            .set(i64::try_from(before + bytes).unwrap_or(i64::MAX));
        Some(BodyHold {
            budget: self.clone(),
            bytes,
        })
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }
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
    cap: usize,
    budget: &Arc<BodyBudget>,
    deadline: Duration,
) -> Result<Option<ReadBody>, Deny> {
    let declared = match session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
    {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| Deny::BadRequest("`Content-Length` is not a number".into()))?,
        ),
        None => None,
    };
    if declared.is_some_and(|len| len > cap) {
        return Err(Deny::BodyTooLarge);
    }
    if session.as_mut().is_body_empty() {
        return Ok(None);
    }
    // A chunked body is held to the retry buffer's size (larger ones are refused below).
    let reserve = declared.unwrap_or(RETRY_BUFFER_LIMIT.min(cap));
    let Some(hold) = budget.try_hold(reserve as u64) else {
        METRICS
            .overload_refusals
            .with_label_values(&["body_memory"])
            .inc();
        return Err(Deny::Overloaded("request body memory"));
    };
    let bytes = match tokio::time::timeout(deadline, read_body(session, cap, declared)).await {
        Ok(read) => read?,
        // The front enforces the same deadline on HTTP/1 connections; this one covers HTTP/2.
        Err(_) => return Err(Deny::RequestTimeout),
    };
    Ok(bytes.map(|bytes| ReadBody { bytes, hold }))
}

async fn read_body(
    session: &mut Session,
    cap: usize,
    declared: Option<usize>,
) -> Result<Option<Bytes>, Deny> {
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
            Err(_) => return Err(deny_for_read_error(session)),
        };
        match chunk {
            Some(c) => {
                if buf.len() + c.len() > cap {
                    return Err(Deny::BodyTooLarge);
                }
                buf.extend_from_slice(&c);
            }
            None => break,
        }
    }
    if chunked && buf.len() > RETRY_BUFFER_LIMIT {
        return Err(Deny::LengthRequired);
    }
    if buf.is_empty() {
        // A chunked body with no data: pingora's retry buffer is empty too, so it will treat
        // the body as already sent; forward nothing.
        return Ok(None);
    }
    Ok(Some(buf.freeze()))
}

/// Why reading the body failed: the front's verdict on the connection (framing, deadline), or
/// a plain read failure.
fn deny_for_read_error(session: &Session) -> Deny {
    let violation = session
        .stream()
        .and_then(|s| s.as_any().downcast_ref::<crate::tunnel::Conn>())
        .and_then(|c| c.violation());
    match violation {
        Some(v) => v.into(),
        None => Deny::BadRequest("the request body could not be read".into()),
    }
}

#[derive(Deserialize)]
struct LlmFields<'a> {
    #[serde(borrow, default)]
    model: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
}

/// What a JSON request body says about the LLM call it makes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LlmRequest {
    /// The `model` it names.
    pub model: Option<String>,
    /// Its output ceiling (`max_tokens`, `max_completion_tokens` or `max_output_tokens`).
    pub max_output_tokens: Option<u64>,
}

/// Reads `model` and the output ceiling from a body shaped like a JSON object.
///
/// SECURITY: these fields feed policy (`context.model`) and token budgets, so an agent must not
/// be able to hide them from the proxy while the upstream still reads them:
/// - the body's shape decides, not its `Content-Type` (many LLM APIs parse JSON whatever the
///   header says, so `Content-Type: text/plain` must not hide the model);
/// - an object-shaped body that cannot be read unambiguously (invalid JSON that a lenient parser
///   might still accept, a `model` or ceiling of the wrong type, a field given twice, where
///   upstream parsers keep the last copy) is refused rather than forwarded unchecked.
///
/// Other bodies (forms, uploads, arrays, text) name no model here and pass as they are.
pub fn llm_request(body: &[u8]) -> Result<LlmRequest, String> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Ok(LlmRequest::default());
    }
    let f = serde_json::from_slice::<LlmFields<'_>>(body)
        .map_err(|e| format!("the request body cannot be read as a JSON object: {e}"))?;
    let model = match f.model {
        Some(m) if m.len() > 256 => return Err("`model` is longer than 256 bytes".into()),
        m => m.map(|m| m.into_owned()),
    };
    Ok(LlmRequest {
        model,
        max_output_tokens: f
            .max_tokens
            .or(f.max_completion_tokens)
            .or(f.max_output_tokens),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
