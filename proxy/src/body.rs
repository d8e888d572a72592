//! Request bodies: read in full (up to the cap) before the policy decision, so the decision can
//! see the model and nothing reaches the upstream before it is allowed.
//!
//! pingora forwards a body that a filter already read only through its retry buffer (64 KiB).
//! We read the body ourselves and enable that buffer just before the final read, so pingora calls
//! `request_body_filter` once at the start of proxying, where [`crate::proxy`] hands over the
//! whole buffered body. A chunked body has no known end, so one over 64 KiB must carry a
//! `Content-Length` instead (`411`).

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;
use serde::Deserialize;

use crate::error::Deny;

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

/// Reads the whole request body, refusing one over `cap` before anything is forwarded.
/// Returns `None` for requests without a body.
pub async fn read_full(session: &mut Session, cap: usize) -> Result<Option<Bytes>, Deny> {
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
    let chunked = declared.is_none();
    if chunked {
        // Unknown length: the retry buffer must see every byte.
        session.as_mut().enable_retry_buffering();
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(8 * 1024).min(cap));
    loop {
        if let Some(len) = declared {
            let remaining = len.saturating_sub(buf.len());
            if remaining > 0 && remaining <= RETRY_BUFFER_LIMIT {
                session.as_mut().enable_retry_buffering();
            }
        }
        let chunk = session
            .read_request_body()
            .await
            .map_err(|_| Deny::BadRequest("the request body could not be read".into()))?;
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

/// Reads `model` and the output ceiling from a JSON object body.
pub fn llm_request(content_type: Option<&[u8]>, body: &[u8]) -> LlmRequest {
    let is_json = content_type.is_some_and(|ct| {
        let ct = String::from_utf8_lossy(ct).to_ascii_lowercase();
        ct.starts_with("application/json")
            || (ct.starts_with("application/") && ct.contains("+json"))
    });
    if !is_json || body.is_empty() {
        return LlmRequest::default();
    }
    match serde_json::from_slice::<LlmFields<'_>>(body) {
        Ok(f) => LlmRequest {
            model: f.model.map(|m| m.into_owned()).filter(|m| m.len() <= 256),
            max_output_tokens: f
                .max_tokens
                .or(f.max_completion_tokens)
                .or(f.max_output_tokens),
        },
        Err(_) => LlmRequest::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_ceiling_extraction() {
        let json = Some(&b"application/json"[..]);
        for (body, want) in [
            (r#"{"model":"m","max_tokens":7}"#, Some(7)),
            (r#"{"model":"m","max_completion_tokens":8}"#, Some(8)),
            (r#"{"model":"m","max_output_tokens":9}"#, Some(9)),
            (r#"{"model":"m"}"#, None),
        ] {
            assert_eq!(
                llm_request(json, body.as_bytes()).max_output_tokens,
                want,
                "{body}"
            );
        }
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn model_extraction() {
        let json = Some(&b"application/json; charset=utf-8"[..]);
        let cases: &[(Option<&[u8]>, &str, Option<&str>)] = &[
            (json, r#"{"messages":[],"model":"gpt-4o"}"#, Some("gpt-4o")),
            (json, r#"{"model":"a\"b"}"#, Some("a\"b")),
            (json, r#"{"model":5}"#, None),
            (json, r#"[1,2]"#, None),
            (json, r#"{"messages":[]}"#, None),
            (Some(b"text/plain"), r#"{"model":"gpt-4o"}"#, None),
            (None, r#"{"model":"gpt-4o"}"#, None),
            (json, "not json", None),
        ];
        for (ct, body, want) in cases {
            assert_eq!(
                llm_request(*ct, body.as_bytes()).model.as_deref(),
                *want,
                "{body}"
            );
        }
    }
}
