//! A `CONNECT` request head, read and checked by the front ([`crate::front`]) like every head,
//! turned into the tunnel's target: `host:port`, nothing else.

use pingora::http::RequestHeader;

use crate::error::Deny;

/// A parsed `CONNECT` request.
pub struct ConnectHead {
    /// Lowercase host (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// The request as a header, for identity and trace context.
    pub header: RequestHeader,
}

impl std::fmt::Debug for ConnectHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The head's fields hold the caller's `Proxy-Authorization` (a token): names only.
        let names: Vec<&str> = self.header.headers.keys().map(|k| k.as_str()).collect();
        f.debug_struct("ConnectHead")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("header_names", &names)
            .finish()
    }
}

/// Reads the tunnel target of a `CONNECT` head the front accepted.
pub fn parse_connect(head: &[u8]) -> Result<ConnectHead, Deny> {
    let bad = |why: &str| Deny::BadRequest(why.to_string());
    let mut headers = [httparse::EMPTY_HEADER; crate::front::head::HARD_MAX_HEADERS];
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
    // The same reading of a port as every other target's: `+443`, `0` or `65536` is no port.
    let port = crate::target::explicit_port(&authority)?
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

    #[test]
    fn connect_targets_are_host_and_port() {
        let head = parse_connect(b"CONNECT API.OpenAI.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\nProxy-Authorization: Bearer tok-secret-7\r\n\r\n").unwrap();
        assert_eq!((head.host.as_str(), head.port), ("api.openai.com", 443));
        assert!(head.header.headers.get("proxy-authorization").is_some());
        let printed = format!("{head:?}");
        assert!(
            !printed.contains("tok-secret-7") && printed.contains("proxy-authorization"),
            "{printed}"
        );
        let v6 = parse_connect(b"CONNECT [::1]:8443 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 8443));
    }

    #[test]
    fn malformed_connect_targets_are_refused() {
        for req in [
            &b"CONNECT api.openai.com HTTP/1.1\r\n\r\n"[..],
            b"CONNECT user@api.openai.com:443 HTTP/1.1\r\n\r\n",
            b"CONNECT /path HTTP/1.1\r\n\r\n",
            b"CONNECT http://api.openai.com:443/ HTTP/1.1\r\n\r\n",
            b"CONNECT api.openai.com:+443 HTTP/1.1\r\n\r\n",
            b"CONNECT api.openai.com:0 HTTP/1.1\r\n\r\n",
            b"CONNECT api.openai.com:65536 HTTP/1.1\r\n\r\n",
            b"CONNECT api.openai.com:4294967296 HTTP/1.1\r\n\r\n",
            b"CONNECT api.openai.com: HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse_connect(req), Err(Deny::BadRequest(_))),
                "{}",
                String::from_utf8_lossy(req)
            );
        }
    }
}
