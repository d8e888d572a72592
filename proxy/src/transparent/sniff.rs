//! What a captured client speaks: read (not peeked: the bytes are replayed to whoever serves the
//! connection) until the first bytes tell a TLS ClientHello, an HTTP request head, or neither.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The most a ClientHello may take before it is given up on (a large post-quantum key share
/// and many extensions stay well under it).
const MAX_CLIENT_HELLO: usize = 16 * 1024;
/// The longest HTTP method token this proxy accepts (the front's own bound).
const MAX_METHOD: usize = 16;

/// What the client sent first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// A TLS ClientHello; its server name, when it sent a valid DNS name.
    Tls {
        /// Lowercase SNI.
        sni: Option<String>,
    },
    /// What starts an HTTP/1 request (`METHOD SP`).
    Http,
    /// Anything else, or nothing within the wait (a protocol where the server speaks first).
    Other,
}

/// Reads from `stream` until its first bytes are recognized. Returns what they are and every
/// byte read; `None` when the client closed (or failed) before sending a full ClientHello.
/// `first_wait` bounds the wait for the first byte (after it, nothing is waited for: a client
/// that sends nothing may be waiting for the server); `hello_wait` the whole ClientHello.
pub async fn sniff<S: AsyncRead + Unpin>(
    stream: &mut S,
    first_wait: Duration,
    hello_wait: Duration,
) -> Option<(Sniffed, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    match tokio::time::timeout(first_wait, read_some(stream, &mut buf)).await {
        Err(_) => return Some((Sniffed::Other, buf)),
        Ok(0) => return None,
        Ok(_) => {}
    }
    if buf[0] == 0x16 {
        let hello = tokio::time::timeout(hello_wait, client_hello(stream, &mut buf)).await;
        return match hello {
            Ok(Some(sni)) => Some((Sniffed::Tls { sni }, buf)),
            // A record that is not a ClientHello is not TLS this proxy can serve.
            Ok(None) => Some((Sniffed::Other, buf)),
            Err(_) => None,
        };
    }
    // `METHOD SP`: letters up to the first space. The front checks the rest strictly.
    loop {
        let method_end = buf.iter().position(|b| !b.is_ascii_uppercase());
        match method_end {
            Some(0) => return Some((Sniffed::Other, buf)),
            Some(n) if buf[n] == b' ' && n <= MAX_METHOD => return Some((Sniffed::Http, buf)),
            Some(_) => return Some((Sniffed::Other, buf)),
            None if buf.len() > MAX_METHOD => return Some((Sniffed::Other, buf)),
            None => {}
        }
        match tokio::time::timeout(hello_wait, read_some(stream, &mut buf)).await {
            Ok(0) | Err(_) => return Some((Sniffed::Other, buf)),
            Ok(_) => {}
        }
    }
}

/// Reads whatever is available into `buf`; 0 at end of stream or on an error.
async fn read_some<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            n
        }
        Err(_) => 0,
    }
}

/// Feeds `buf` (and what follows on `stream`) to rustls until it holds a whole ClientHello.
/// `Some(sni)` for a ClientHello, `None` for bytes that are not one (or a stream that ends
/// before one is complete, or one larger than [`MAX_CLIENT_HELLO`]).
async fn client_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Option<Option<String>> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = 0;
    loop {
        while fed < buf.len() {
            let mut rest = &buf[fed..];
            match acceptor.read_tls(&mut rest) {
                Ok(0) | Err(_) => return None,
                Ok(n) => fed += n,
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let sni = accepted
                    .client_hello()
                    .server_name()
                    .map(str::to_ascii_lowercase);
                return Some(sni);
            }
            Ok(None) => {}
            Err(_) => return None,
        }
        if buf.len() > MAX_CLIENT_HELLO || read_some(stream, buf).await == 0 {
            return None;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A real ClientHello from rustls' client for `name` (or none, for an IP address).
    fn client_hello_for(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    async fn sniffed(bytes: &[u8]) -> Option<(Sniffed, Vec<u8>)> {
        let mut reader = bytes;
        sniff(
            &mut reader,
            Duration::from_millis(100),
            Duration::from_millis(100),
        )
        .await
    }

    #[tokio::test]
    async fn first_bytes_are_told_apart_and_kept_whole() {
        let hello = client_hello_for("API.Example.test");
        let (what, bytes) = sniffed(&hello).await.unwrap();
        assert_eq!(
            what,
            Sniffed::Tls {
                sni: Some("api.example.test".into())
            }
        );
        assert_eq!(bytes, hello);
        let (what, _) = sniffed(&client_hello_for("192.0.2.1")).await.unwrap();
        assert_eq!(what, Sniffed::Tls { sni: None });
        let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(sniffed(get).await.unwrap(), (Sniffed::Http, get.to_vec()));
        for other in [
            &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
            b"get / HTTP/1.1\r\n",
            b"\x16\x03\x01\x00\x05hello",
            b"AAAAAAAAAAAAAAAAAAAAAAAAA ",
        ] {
            assert_eq!(sniffed(other).await.unwrap().0, Sniffed::Other, "{other:?}");
        }
        assert_eq!(sniffed(b"").await, None);
    }

    #[tokio::test]
    async fn a_client_that_sends_nothing_is_another_protocol() {
        let (_client, mut server) = tokio::io::duplex(64);
        let got = sniff(
            &mut server,
            Duration::from_millis(50),
            Duration::from_millis(50),
        )
        .await;
        assert_eq!(got, Some((Sniffed::Other, Vec::new())));
    }
}
