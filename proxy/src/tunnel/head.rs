//! The first request head of a connection: `CONNECT` starts a tunnel, anything else is plain
//! HTTP for pingora. Only as many bytes as it takes to tell the two apart are read for plain
//! HTTP; a `CONNECT` head is read whole (it has no body) and bytes after it are kept.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use pingora::protocols::Stream;
use tokio::io::AsyncReadExt;

use crate::error::Deny;

const CONNECT_PREFIX: &[u8] = b"CONNECT ";

/// What a new connection starts with.
#[derive(Debug)]
pub enum FirstRequest {
    /// Plain HTTP: the bytes read so far, to be replayed to pingora.
    Http(Bytes),
    /// A `CONNECT` head and the client bytes that followed it.
    Connect(Box<ConnectHead>, Bytes),
    /// A `CONNECT` head that cannot be served.
    BadConnect(Deny),
}

/// A parsed `CONNECT` request.
#[derive(Debug)]
pub struct ConnectHead {
    /// Lowercase host (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// The request as a header, for identity and trace context.
    pub header: RequestHeader,
}

/// Reads the start of `stream`. `None`: the client closed or stalled past `timeout`.
pub async fn read_first(
    stream: &mut Stream,
    max_header_bytes: usize,
    timeout: Duration,
) -> Option<FirstRequest> {
    tokio::time::timeout(timeout, read(stream, max_header_bytes))
        .await
        .ok()?
}

async fn read(stream: &mut Stream, max_header_bytes: usize) -> Option<FirstRequest> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let n = stream.read_buf(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        let head_so_far = &buf[..buf.len().min(CONNECT_PREFIX.len())];
        if !CONNECT_PREFIX.starts_with(head_so_far) {
            return Some(FirstRequest::Http(buf.freeze()));
        }
        if let Some(end) = find_head_end(&buf) {
            let rest = buf.split_off(end).freeze();
            return Some(match parse_connect(&buf) {
                Ok(head) => FirstRequest::Connect(Box::new(head), rest),
                Err(deny) => FirstRequest::BadConnect(deny),
            });
        }
        if buf.len() > max_header_bytes {
            return Some(FirstRequest::BadConnect(Deny::HeadersTooLarge));
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn parse_connect(head: &[u8]) -> Result<ConnectHead, Deny> {
    let bad = |why: &str| Deny::BadRequest(why.to_string());
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(bad("malformed CONNECT request")),
    }
    let target = req.path.ok_or_else(|| bad("CONNECT without a target"))?;
    let authority: http::uri::Authority = target
        .parse()
        .map_err(|_| bad("the CONNECT target is not `host:port`"))?;
    if authority.as_str().contains('@') || authority.as_str() != target {
        return Err(bad("the CONNECT target is not `host:port`"));
    }
    let port = authority
        .port_u16()
        .ok_or_else(|| bad("the CONNECT target needs a port, e.g. `api.openai.com:443`"))?;
    let host = crate::target::normalize_host(authority.host())?;
    let mut header = RequestHeader::build("CONNECT", target.as_bytes(), Some(req.headers.len()))
        .map_err(|_| bad("malformed CONNECT request"))?;
    for h in req.headers.iter() {
        header
            .append_header(h.name.to_string(), h.value)
            .map_err(|_| bad("malformed header in the CONNECT request"))?;
    }
    Ok(ConnectHead { host, port, header })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn first(bytes: &[u8]) -> Option<FirstRequest> {
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        b.write_all(bytes).await.unwrap();
        drop(b);
        let mut s: Stream = Box::new(a);
        read_first(&mut s, 2048, Duration::from_secs(5)).await
    }

    #[tokio::test]
    async fn plain_http_is_handed_over_after_its_first_bytes() {
        match first(b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n").await {
            Some(FirstRequest::Http(b)) => assert!(b.starts_with(b"GET")),
            other => panic!("{other:?}"),
        }
        match first(b"CONNEC").await {
            None => {}
            other => panic!("a truncated head is no request: {other:?}"),
        }
    }

    #[tokio::test]
    async fn connect_keeps_the_bytes_after_its_head() {
        let req = b"CONNECT API.OpenAI.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\nProxy-Authorization: Bearer t\r\n\r\n\x16\x03\x01";
        match first(req).await {
            Some(FirstRequest::Connect(head, rest)) => {
                assert_eq!(head.host, "api.openai.com");
                assert_eq!(head.port, 443);
                assert!(head.header.headers.get("proxy-authorization").is_some());
                assert_eq!(&rest[..], b"\x16\x03\x01");
            }
            other => panic!("{other:?}"),
        }
        match first(b"CONNECT [::1]:8443 HTTP/1.1\r\n\r\n").await {
            Some(FirstRequest::Connect(head, _)) => {
                assert_eq!((head.host.as_str(), head.port), ("::1", 8443))
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn malformed_connect_targets_are_refused() {
        for req in [
            &b"CONNECT api.openai.com HTTP/1.1\r\n\r\n"[..],
            b"CONNECT user@api.openai.com:443 HTTP/1.1\r\n\r\n",
            b"CONNECT /path HTTP/1.1\r\n\r\n",
            b"CONNECT http://api.openai.com:443/ HTTP/1.1\r\n\r\n",
        ] {
            match first(req).await {
                Some(FirstRequest::BadConnect(Deny::BadRequest(_))) => {}
                other => panic!("{}: {other:?}", String::from_utf8_lossy(req)),
            }
        }
        let huge = [b"CONNECT a:443 HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 4096]].concat();
        match first(&huge).await {
            Some(FirstRequest::BadConnect(Deny::HeadersTooLarge)) => {}
            other => panic!("{other:?}"),
        }
    }
}
