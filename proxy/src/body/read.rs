//! Reading a request body whole from the client, bounded in size, memory and time.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;

use super::budget::{count_overload, BodyBudget, BodyHold};
use super::BodyError;
use crate::ids::TenantId;

/// pingora's retry buffer size (`BODY_BUF_LIMIT`).
const RETRY_BUFFER_LIMIT: usize = 64 * 1024;

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
