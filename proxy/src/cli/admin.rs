//! The running proxy's admin port, as the tools that act on a live proxy call it (`run close`,
//! `usage` with the in-memory limiter).

use std::time::Duration;

use anyhow::Context as _;

/// A request without a body to the running proxy's admin port (loopback or a private network;
/// plain HTTP/1.1).
pub(super) fn admin_call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| {
            format!(
                "the proxy's admin port {addr} does not answer; is the proxy running (and at this address: `--admin ADDR` names another)?"
            )
        })?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let (status, body) = read_answer(stream, "the admin port")?;
    if status.split_whitespace().nth(1) != Some("200") {
        // Refusals are the proxy's JSON error shape; show its message and code.
        let refusal: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        match refusal
            .as_ref()
            .map(|v| (&v["error"]["message"], &v["error"]["code"]))
        {
            Some((serde_json::Value::String(m), serde_json::Value::String(c))) => {
                anyhow::bail!("admin port: {m} ({c})")
            }
            _ => anyhow::bail!("admin port: {}", String::from_utf8_lossy(&body).trim()),
        }
    }
    Ok(body)
}

/// Reads an HTTP/1.1 answer from `stream`: its status line, then exactly `Content-Length` body
/// bytes (the server may keep the socket open). `who` names the server in errors.
pub(super) fn read_answer(
    stream: std::net::TcpStream,
    who: &str,
) -> anyhow::Result<(String, Vec<u8>)> {
    use std::io::{BufRead, Read};
    let mut reader = std::io::BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    let mut length = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            anyhow::bail!("malformed answer from {who}");
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<u64>().ok();
            }
        }
    }
    let length = length.with_context(|| format!("{who}'s answer has no Content-Length"))?;
    let mut body = Vec::new();
    reader.take(length).read_to_end(&mut body)?;
    Ok((status, body))
}
