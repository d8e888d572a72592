//! The mock upstream speaks the shapes the proxy meters: JSON usage, SSE with a usage chunk,
//! Anthropic usage, and it survives keep-alive.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use tenant_proxy_loadtest::http1::{read_body, read_head};
use tenant_proxy_loadtest::{client, mock};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

async fn start() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(mock::serve_mock(l));
    addr
}

async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let raw = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut s, &mut buf, false).await.unwrap().unwrap();
    let body = read_body(&mut s, &mut buf, &head).await.unwrap();
    (head.status, head.headers, String::from_utf8(body).unwrap())
}

#[tokio::test]
async fn chat_json_sse_and_anthropic() {
    let addr = start().await;
    let (status, _, body) = post(
        addr,
        "/v1/chat/completions",
        r#"{"model":"m","max_tokens":7}"#,
    )
    .await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 7);
    assert_eq!(v["model"], "m");

    let (_, headers, body) = post(
        addr,
        "/v1/chat/completions",
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
    )
    .await;
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-type" && v == "text/event-stream"));
    let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"));
    assert!(events[events.len() - 2].contains("\"usage\""), "{body}");
    let (_, _, body) = post(addr, "/v1/chat/completions", r#"{"stream":true}"#).await;
    assert!(
        !body.contains("\"usage\""),
        "no usage chunk unless asked: {body}"
    );

    let (_, _, body) = post(addr, "/v1/messages", r#"{"model":"claude","max_tokens":5}"#).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["usage"]["output_tokens"], 5);
}

#[tokio::test]
async fn keep_alive_load() {
    let addr = start().await;
    let raw =
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}".to_vec();
    let r = client::run(addr, Arc::new(raw), 500, 4, Duration::from_secs(20)).await;
    assert_eq!((r.requests, r.errors), (500, 0));
    assert!(r.quantile_ms(0.99) >= r.quantile_ms(0.5));
}

/// Reads one response from a connection that may hold more (pipelining).
async fn next_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, serde_json::Value) {
    let head = read_head(s, buf, false).await.unwrap().unwrap();
    let body = read_body(s, buf, &head).await.unwrap();
    (head.status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn pipelined_chunked_bodies_and_header_echo() {
    let addr = start().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    // Three requests in one write: a chunked body with a trailer, a Content-Length body, and a
    // GET whose echoed headers show what an upstream would receive.
    let body = r#"{"model":"chunky","max_tokens":3}"#;
    let (a, b) = body.split_at(10);
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\nX-Trailer: t\r\n\r\n\
         POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}\
         GET /anything?q=1 HTTP/1.1\r\nHost: x\r\nX-Demo: yes\r\n\r\n",
        a.len(),
        b.len()
    );
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let (status, v) = next_response(&mut s, &mut buf).await;
    assert_eq!(status, 200);
    assert_eq!(v["model"], "chunky");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["usage"]["prompt_tokens"], (body.len() / 4) as u64);
    assert_eq!(
        v["usage"]["total_tokens"],
        (body.len() / 4) as u64 + 3,
        "{v}"
    );
    let (_, v) = next_response(&mut s, &mut buf).await;
    assert_eq!(v["type"], "message");
    assert_eq!(v["usage"]["output_tokens"], 16, "default max tokens");
    let (_, v) = next_response(&mut s, &mut buf).await;
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/anything?q=1");
    assert_eq!(v["headers"]["x-demo"], "yes");
    assert!(buf.is_empty());
}

#[tokio::test]
async fn sse_chunks_are_well_framed() {
    let addr = start().await;
    let (status, headers, body) = post(
        addr,
        "/v1/chat/completions",
        r#"{"model":"gpt-4o-mini","max_tokens":9,"stream":true,"stream_options":{"include_usage":true}}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked"));
    let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
    let mut content = String::new();
    for e in &events[..events.len() - 1] {
        let json = e
            .strip_prefix("data: ")
            .expect("every event is one data line");
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["model"], "gpt-4o-mini");
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            content.push_str(c);
        }
    }
    assert!(!content.is_empty());
    let usage: serde_json::Value =
        serde_json::from_str(events[events.len() - 2].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 9);
    assert_eq!(
        usage["usage"]["total_tokens"],
        usage["usage"]["prompt_tokens"].as_u64().unwrap() + 9
    );
}

#[tokio::test]
async fn load_client_reports_why_requests_failed() {
    // Nothing listens on a held port (and nobody else can take it): every connect is refused.
    let closed = tenant_proxy_loadtest::ports::HeldPort::closed().unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], closed.port).into();
    let raw = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let r = client::run(addr, Arc::new(raw), 5, 1, Duration::from_secs(5)).await;
    assert_eq!((r.requests, r.errors), (5, 5));
    assert!(r.quantile_ms(0.5).is_nan());
    assert!(r.first_error.unwrap().contains("connect"));
}
