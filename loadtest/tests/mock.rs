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
