//! A fast mock of the OpenAI and Anthropic HTTP APIs for demos and load tests.
//!
//! - `POST …/chat/completions`: a chat completion with a `usage` block (prompt tokens ≈ body
//!   length / 4, completion tokens = `max_tokens` or 16, or `x-mock-output-tokens` when a test
//!   plays a model that ignores its budget); with `"stream": true`, an SSE stream of one chunk
//!   per completion token (`x-mock-chunk-delay-ms` apart; `x-mock-tokens-per-delta: N` puts N
//!   in each, as a server that batches its output does), a usage chunk when
//!   `stream_options.include_usage` is set, then `[DONE]`, its lines ended by `\n` (or as
//!   `x-mock-sse-line-end: cr | crlf` says; `x-mock-stream-whole: 1` writes the whole stream
//!   as one body with its `Content-Length`, as a server that buffers its stream does);
//!   `x-mock-content-bytes` makes the
//!   (non-streamed) completion that many bytes long.
//! - `POST …/messages` (and Vertex AI's `…:rawPredict`): an Anthropic message with
//!   `usage.input_tokens` / `output_tokens`, and `cache_creation_input_tokens` when the request
//!   says how many in `x-mock-cache-write-tokens` (a prompt written to the cache), and
//!   `server_tool_use.web_search_requests` when it says how many in `x-mock-web-searches`.
//! - `POST …/responses`: a Responses API response with `usage`, and one `web_search_call` or
//!   `file_search_call` output item per call the request asks for in `x-mock-web-searches` and
//!   `x-mock-file-searches`.
//! - `POST …/api/chat` (Ollama's own API): an `application/x-ndjson` stream of one line per
//!   completion token (`x-mock-output-tokens`, default 16; `x-mock-chunk-delay-ms` apart), then
//!   a `done` line with `eval_count`: a shape the proxy has no usage reader for.
//! - anything else: 200 JSON echoing the method, path and received headers.
//! - `Upgrade: websocket`: 101 (with the accept for its `Sec-WebSocket-Key`), then every byte
//!   is echoed back.
//!
//! Every response carries the SHA-256 of the received `Authorization` as
//! `x-mock-authorization-sha256`, and is labelled `content-encoding: X` when the request says
//! `x-mock-content-encoding: X` (an upstream that ignores `Accept-Encoding`), and names itself
//! `x-request-id: X` when the request says `x-mock-request-id: X`. A mock started with [`serve_mock_recording`] also notes when
//! it writes the first event of each stream whose request names itself in `x-mock-stream-id`
//! ([`FirstEvents`]), so a client in the same process can tell how long that event took to
//! reach it (through a proxy or not).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};
use sha2::Digest as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::http1::{read_body, read_head, Head};

/// The instants the mock wrote the first event of streams, by the `x-mock-stream-id` their
/// request carried. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct FirstEvents(Arc<Mutex<HashMap<String, Instant>>>);

impl FirstEvents {
    /// Removes and returns the instant the first event of stream `id` was written (taken just
    /// before the write), if it was.
    pub fn take(&self, id: &str) -> Option<Instant> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id)
    }

    fn note(&self, id: &str, at: Instant) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), at);
    }
}

/// Serves the mock on `listener` until the task is dropped.
///
/// Each connection is keep-alive HTTP/1.1 (pipelined requests are answered in order); request
/// bodies may be `Content-Length` or chunked. Runs until dropped; the `io::Result` lets callers
/// treat it like any other server future.
pub async fn serve_mock(listener: TcpListener) -> io::Result<()> {
    serve_mock_recording(listener, None).await
}

/// As [`serve_mock`], noting in `first_events` when the first event of each stream requested
/// with an `x-mock-stream-id` header is written.
pub async fn serve_mock_recording(
    listener: TcpListener,
    first_events: Option<FirstEvents>,
) -> io::Result<()> {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let first_events = first_events.clone();
                tokio::spawn(async move {
                    let _ = serve_conn(stream, first_events.as_ref()).await;
                });
            }
            // Accept errors are transient (EMFILE under a connection storm, a peer resetting
            // before accept): back off briefly instead of ending the mock mid-benchmark.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

async fn serve_conn(stream: TcpStream, first_events: Option<&FirstEvents>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    serve_stream_recording(stream, first_events).await
}

/// The `Sec-WebSocket-Accept` for a request's `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
fn websocket_accept(key: &str) -> String {
    use base64::Engine as _;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.trim().as_bytes());
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// Serves mock requests on one established connection (plain or TLS).
///
/// A request with `Upgrade: websocket` is answered `101 Switching Protocols` and every byte
/// after it is echoed back unchanged, so a test can check that upgraded traffic flows both ways
/// through the proxy.
pub async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(stream: S) -> io::Result<()> {
    serve_stream_recording(stream, None).await
}

/// As [`serve_stream`], noting first events in `first_events` (see [`serve_mock_recording`]).
pub async fn serve_stream_recording<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    first_events: Option<&FirstEvents>,
) -> io::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = Vec::with_capacity(16 * 1024);
    while let Some(head) = read_head(&mut rd, &mut buf, true).await? {
        if head
            .header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        {
            // A WebSocket server's answer: the accept derived from the request's key (the
            // proxy passes no switch without it).
            let accept = head
                .header("sec-websocket-key")
                .map(|key| format!("Sec-WebSocket-Accept: {}\r\n", websocket_accept(key)))
                .unwrap_or_default();
            let mut reply = vec![format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{accept}\r\n"
            )
            .into_bytes()];
            echo_authorization(&head, &mut reply);
            wr.write_all(&reply.concat()).await?;
            wr.write_all(&buf).await?;
            wr.flush().await?;
            let mut chunk = [0u8; 4096];
            loop {
                let n = rd.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                wr.write_all(&chunk[..n]).await?;
                wr.flush().await?;
            }
        }
        // curl sends `Expect: 100-continue` for bodies over 1 KiB and waits a second for it.
        if head
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            wr.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let body = read_body(&mut rd, &mut buf, &head).await?;
        let mut reply = respond(&head, &body);
        echo_authorization(&head, &mut reply);
        name_the_request(&head, &mut reply);
        label_encoding(&head, &mut reply);
        let delay = head
            .header("x-mock-chunk-delay-ms")
            .and_then(|v| v.parse::<u64>().ok())
            .map(std::time::Duration::from_millis);
        // Part 0 is the head; part 1 the first event of a stream.
        let stream_id = head
            .header("x-mock-stream-id")
            .filter(|_| reply.len() > 2)
            .zip(first_events);
        match delay {
            // Paced: each part (an SSE event) on its own, as a model generating would send it.
            Some(d) => {
                for (i, part) in reply.iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(d).await;
                    }
                    if let Some((id, log)) = stream_id.filter(|_| i == 1) {
                        log.note(id, Instant::now());
                    }
                    wr.write_all(part).await?;
                    wr.flush().await?;
                }
            }
            None => {
                if let Some((id, log)) = stream_id {
                    log.note(id, Instant::now());
                }
                wr.write_all(&reply.concat()).await?
            }
        }
        // TLS buffers writes until flushed.
        wr.flush().await?;
        if head
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            return Ok(());
        }
    }
    Ok(())
}

/// `x-mock-content-encoding: gzip` labels the answer so, whatever the request's
/// `Accept-Encoding` said (the body stays as it is): an upstream that compresses although the
/// proxy asked for `identity`, which the proxy must not pass on where it has to read the answer.
fn label_encoding(head: &Head, reply: &mut [Vec<u8>]) {
    let (Some(coding), Some(first)) = (head.header("x-mock-content-encoding"), reply.first_mut())
    else {
        return;
    };
    if let Some(end) = first.windows(2).position(|w| w == b"\r\n") {
        let line = format!("content-encoding: {coding}\r\n");
        first.splice(end + 2..end + 2, line.into_bytes());
    }
}

/// Echoes the SHA-256 of the `Authorization` header the mock received as
/// `x-mock-authorization-sha256`, so a test can tell which credential reached the upstream from
/// any client, whatever the response body. A digest, not the value: the proxy rightly scrubs a
/// secret echoed back in a response.
fn echo_authorization(head: &Head, reply: &mut [Vec<u8>]) {
    let (Some(value), Some(first)) = (head.header("authorization"), reply.first_mut()) else {
        return;
    };
    if let Some(end) = first.windows(2).position(|w| w == b"\r\n") {
        let digest = hex::encode(sha2::Sha256::digest(value.as_bytes()));
        let line = format!("x-mock-authorization-sha256: {digest}\r\n");
        first.splice(end + 2..end + 2, line.into_bytes());
    }
}

/// Answers with `x-request-id: X` when the request says `x-mock-request-id: X`, as OpenAI names
/// each request it serves.
fn name_the_request(head: &Head, reply: &mut [Vec<u8>]) {
    let (Some(id), Some(first)) = (head.header("x-mock-request-id"), reply.first_mut()) else {
        return;
    };
    if let Some(end) = first.windows(2).position(|w| w == b"\r\n") {
        let line = format!("x-request-id: {id}\r\n");
        first.splice(end + 2..end + 2, line.into_bytes());
    }
}

/// The response, in the parts it is written in (one per SSE event for streams).
fn respond(head: &Head, body: &[u8]) -> Vec<Vec<u8>> {
    let path = head.target.split('?').next().unwrap_or("");
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-model")
        .to_string();
    let prompt_tokens = (body.len() / 4).max(1) as u64;
    let completion_tokens = head
        .header("x-mock-output-tokens")
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(|| {
            request
                .get("max_tokens")
                .or_else(|| request.get("max_output_tokens"))
                .and_then(Value::as_u64)
        })
        .unwrap_or(16);
    if head.method == "POST" && path.ends_with("/chat/completions") {
        if request.get("stream").and_then(Value::as_bool) == Some(true) {
            let include_usage = request
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                == Some(true);
            // `x-mock-sse-line-end`: `cr` or `crlf` end the stream's lines so (default `\n`).
            let line_end = match head.header("x-mock-sse-line-end") {
                Some("cr") => "\r",
                Some("crlf") => "\r\n",
                _ => "\n",
            };
            // `x-mock-tokens-per-delta`: that many tokens in each delta.
            let per_delta = head
                .header("x-mock-tokens-per-delta")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1);
            let parts = sse_chat(
                &model,
                prompt_tokens,
                completion_tokens,
                per_delta,
                include_usage,
                line_end,
            );
            if head.header("x-mock-stream-whole") == Some("1") {
                return whole_stream(&parts);
            }
            return parts;
        }
        // `x-mock-content-bytes`: a completion that long (a body past the proxy's copy limit).
        let content = match head
            .header("x-mock-content-bytes")
            .and_then(|v| v.parse::<usize>().ok())
        {
            Some(n) => "x".repeat(n),
            None => "Hello from the mock.".to_string(),
        };
        let v = json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
        });
        return vec![json_response(200, &v)];
    }
    // The Responses API: `x-mock-web-searches` and `x-mock-file-searches` hosted tool calls,
    // one output item each (billed per call), before the message.
    if head.method == "POST" && path.ends_with("/api/chat") {
        return ndjson_chat(&model, completion_tokens);
    }
    if head.method == "POST" && path.ends_with("/responses") {
        let calls = |name: &str| {
            head.header(name)
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0)
        };
        let mut output: Vec<Value> = Vec::new();
        for i in 0..calls("x-mock-web-searches") {
            output.push(
                json!({"type": "web_search_call", "id": format!("ws_{i}"), "status": "completed",
                "action": {"type": "search", "query": "mock"}}),
            );
        }
        for i in 0..calls("x-mock-file-searches") {
            output.push(
                json!({"type": "file_search_call", "id": format!("fs_{i}"), "status": "completed",
                "queries": ["mock"], "results": null}),
            );
        }
        output.push(json!({"type": "message", "id": "msg_mock", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": "Hello from the mock.", "annotations": []}]}));
        let v = json!({
            "id": "resp_mock", "object": "response", "status": "completed", "model": model,
            "output": output,
            "usage": {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
        });
        return vec![json_response(200, &v)];
    }
    // Anthropic's messages, also as Vertex AI serves Claude (`…/models/{model}:rawPredict`).
    if head.method == "POST" && (path.ends_with("/messages") || path.ends_with(":rawPredict")) {
        let mut usage = json!({"input_tokens": prompt_tokens, "output_tokens": completion_tokens});
        if let Some(written) = head
            .header("x-mock-cache-write-tokens")
            .and_then(|v| v.parse::<u64>().ok())
        {
            usage["cache_creation_input_tokens"] = json!(written);
        }
        // `x-mock-web-searches`: searches the web search tool ran (billed each).
        if let Some(searches) = head
            .header("x-mock-web-searches")
            .and_then(|v| v.parse::<u64>().ok())
        {
            usage["server_tool_use"] = json!({ "web_search_requests": searches });
        }
        let v = json!({
            "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "Hello from the mock."}], "stop_reason": "end_turn",
            "usage": usage
        });
        return vec![json_response(200, &v)];
    }
    let headers: serde_json::Map<String, Value> = head
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    vec![json_response(
        200,
        &json!({"method": head.method, "path": head.target, "headers": headers}),
    )]
}

fn json_response(status: u16, v: &Value) -> Vec<u8> {
    let body = v.to_string();
    let mut out = format!(
        "HTTP/1.1 {status} OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Ollama's `/api/chat` stream: one NDJSON line a token, then the `done` line, chunked.
fn ndjson_chat(model: &str, completion: u64) -> Vec<Vec<u8>> {
    let chunk = |line: &str| format!("{:x}\r\n{line}\n\r\n", line.len() + 1).into_bytes();
    let mut parts = vec![
        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec(),
    ];
    for _ in 0..completion.max(1) {
        let line = json!({"model": model, "message": {"role": "assistant", "content": "word "}, "done": false});
        parts.push(chunk(&line.to_string()));
    }
    let done = json!({"model": model, "done": true, "eval_count": completion});
    let mut last = chunk(&done.to_string());
    last.extend_from_slice(b"0\r\n\r\n");
    parts.push(last);
    parts
}

/// The chunked stream `parts` (a head, then one chunk an event) as one body with its length.
fn whole_stream(parts: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut body = Vec::new();
    for part in &parts[1..] {
        // Each part is `<hex length>\r\n<payload>\r\n`, the last one followed by `0\r\n\r\n`.
        let mut rest = part.as_slice();
        while let Some(at) = rest.windows(2).position(|w| w == b"\r\n") {
            let len = std::str::from_utf8(&rest[..at])
                .ok()
                .and_then(|h| usize::from_str_radix(h, 16).ok())
                .unwrap_or(0);
            if len == 0 {
                break;
            }
            body.extend_from_slice(&rest[at + 2..at + 2 + len]);
            rest = &rest[at + 2 + len + 2..];
        }
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut whole = head.into_bytes();
    whole.extend_from_slice(&body);
    vec![whole]
}

fn sse_chat(
    model: &str,
    prompt: u64,
    completion: u64,
    per_delta: u64,
    include_usage: bool,
    line_end: &str,
) -> Vec<Vec<u8>> {
    let mut events = Vec::new();
    // One chunk per completion token, as providers stream them (or `per_delta` tokens in each,
    // as a server that batches its output does).
    let words = ["Hello", " from", " the", " mock."];
    let per_delta = per_delta.max(1);
    let mut i = 0;
    while i < completion.max(1) {
        let n = per_delta.min(completion.max(1) - i);
        let text: String = (i..i + n).map(|k| words[(k % 4) as usize]).collect();
        i += n;
        events.push(json!({
            "id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]
        }));
    }
    events.push(json!({
        "id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": model,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    }));
    if include_usage {
        events.push(json!({
            "id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": model, "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        }));
    }
    let mut parts = vec![
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec(),
    ];
    let chunk = |data: &str| {
        let payload = format!("data: {data}{line_end}{line_end}");
        format!("{:x}\r\n{payload}\r\n", payload.len()).into_bytes()
    };
    for e in &events {
        parts.push(chunk(&e.to_string()));
    }
    let mut last = chunk("[DONE]");
    last.extend_from_slice(b"0\r\n\r\n");
    parts.push(last);
    parts
}
