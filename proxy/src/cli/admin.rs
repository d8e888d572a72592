//! The running proxy's admin port, as the tools that act on a live proxy call it (`run close`,
//! `usage` with the in-memory limiter).

use std::time::Duration;

use anyhow::Context as _;

use crate::config::StaticConfig;

/// The admin port of the proxy `config` describes (`admin` when given instead of the address the
/// file names) and the token its `[admin] token_file` holds, if any.
pub(super) struct AdminPort {
    addr: std::net::SocketAddr,
    token: Option<zeroize::Zeroizing<String>>,
}

impl AdminPort {
    /// Where and how to call the admin port of the proxy `config` configures.
    pub(super) fn of(
        config: &StaticConfig,
        admin: Option<std::net::SocketAddr>,
    ) -> anyhow::Result<Self> {
        let token = match &config.admin_token_file {
            Some(file) => Some(
                crate::config::admin_token::read_token_file(file)
                    .map_err(|p| anyhow::anyhow!("{p}"))?,
            ),
            None => None,
        };
        Ok(Self {
            addr: admin.unwrap_or(config.admin_listen),
            token,
        })
    }
}

/// A request without a body to the running proxy's admin port (loopback or a private network;
/// plain HTTP/1.1), with the admin token when the configuration names one.
pub(super) fn admin_call(port: &AdminPort, method: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    // An admin port listening on every address (`0.0.0.0`, the gateway shape's) is called on
    // loopback: `0.0.0.0` is no address to name in `Host` (the port refuses it, as a page's).
    let mut addr = port.addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| {
            format!(
                "the proxy's admin port {addr} does not answer; is the proxy running (and at this address: `--admin ADDR` names another)?"
            )
        })?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    // One write: the token is never in a message or log line.
    let authorization = match &port.token {
        Some(token) => zeroize::Zeroizing::new(format!("Authorization: Bearer {}\r\n", **token)),
        None => zeroize::Zeroizing::new(String::new()),
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{}Content-Length: 0\r\nConnection: close\r\n\r\n",
        *authorization
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
                anyhow::bail!(
                    "admin port: {} ({})",
                    crate::shown::shown(m),
                    crate::shown::shown(c)
                )
            }
            _ => anyhow::bail!(
                "admin port: {}",
                crate::shown::shown(String::from_utf8_lossy(&body).trim())
            ),
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
