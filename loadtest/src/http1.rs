//! Just enough HTTP/1.1 framing for the mock and the load client: read a head, read a body
//! framed by `Content-Length` or chunked encoding. Keep-alive and pipelining safe: bytes past the
//! current message stay in the buffer.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

const MAX_HEAD: usize = 64 * 1024;

/// A parsed message head.
#[derive(Debug, Clone)]
pub struct Head {
    /// Request method (empty for responses).
    pub method: String,
    /// Request target (empty for responses).
    pub target: String,
    /// Response status (0 for requests).
    pub status: u16,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads more bytes into `buf`; `Ok(false)` on a clean end of stream.
async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut chunk = [0u8; 16 * 1024];
    let n = r.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n > 0)
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads one head (request if `request`, else response). `Ok(None)` when the stream ends first.
pub async fn read_head<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    request: bool,
) -> io::Result<Option<Head>> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let parsed = if request {
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(buf).map_err(|e| invalid(&e.to_string()))? {
                httparse::Status::Complete(n) => Some((
                    n,
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                    0,
                    collect(req.headers),
                )),
                httparse::Status::Partial => None,
            }
        } else {
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(buf).map_err(|e| invalid(&e.to_string()))? {
                httparse::Status::Complete(n) => Some((
                    n,
                    String::new(),
                    String::new(),
                    resp.code.unwrap_or(0),
                    collect(resp.headers),
                )),
                httparse::Status::Partial => None,
            }
        };
        if let Some((n, method, target, status, headers)) = parsed {
            buf.drain(..n);
            return Ok(Some(Head {
                method,
                target,
                status,
                headers,
            }));
        }
        if buf.len() > MAX_HEAD {
            return Err(invalid("head too large"));
        }
        if !fill(r, buf).await? {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(invalid("stream ended mid-head"))
            };
        }
    }
}

fn collect(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// Reads the body that follows `head` (Content-Length or chunked; none otherwise).
pub async fn read_body<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    head: &Head,
) -> io::Result<Vec<u8>> {
    if head
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        let mut body = Vec::new();
        loop {
            let size_line = take_line(r, buf).await?;
            let size_text = String::from_utf8_lossy(&size_line);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| invalid("bad chunk size"))?;
            if size == 0 {
                // The last chunk is followed by optional trailer lines and an empty line; consume
                // them so the next pipelined message starts at the front of the buffer.
                while !take_line(r, buf).await?.is_empty() {}
                return Ok(body);
            }
            while buf.len() < size + 2 {
                if !fill(r, buf).await? {
                    return Err(invalid("stream ended in chunk"));
                }
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
    }
    let len = head
        .header("content-length")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < len {
        if !fill(r, buf).await? {
            return Err(invalid("stream ended in body"));
        }
    }
    Ok(buf.drain(..len).collect())
}

/// Removes one CRLF-terminated line from the front of `buf` (reading more as needed) and returns
/// it without the CRLF.
async fn take_line<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf[..i].to_vec();
            buf.drain(..i + 2);
            return Ok(line);
        }
        if buf.len() > MAX_HEAD {
            return Err(invalid("chunk line too long"));
        }
        if !fill(r, buf).await? {
            return Err(invalid("stream ended in chunked body"));
        }
    }
}
