//! What a captured client speaks: read (not peeked: the bytes are replayed to whoever serves the
//! connection) until the first bytes tell a TLS ClientHello, an HTTP request head, or neither.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The most a ClientHello may take before it is given up on (a large post-quantum key share
/// and many extensions stay well under it).
const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// What the client sent first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// A TLS ClientHello; its server name, when it sent a valid DNS name.
    Tls {
        /// Lowercase SNI.
        sni: Option<String>,
    },
    /// A TLS record that is no ClientHello this proxy can read (malformed, refused by rustls,
    /// larger than [`MAX_CLIENT_HELLO`], another record type first, an SNI that is no host
    /// name, or an encrypted ClientHello inside, ECH): its server name cannot be known.
    UnreadableTls,
    /// A ClientHello begun and not finished within the wait.
    StalledTls,
    /// What starts an HTTP/1 request (`METHOD SP`).
    Http,
    /// A PROXY protocol header (v1 `PROXY …`, or v2's signature): a client claiming another
    /// client's address to a server that strips it and reads what follows (TLS, HTTP).
    ProxyHeader,
    /// Anything else, or nothing within the wait (a protocol where the server speaks first).
    Other,
}

/// Reads from `stream`, after the bytes of it already read (`early`), until its first bytes are
/// recognized. Returns what they are and every byte read; `None` when the client closed (or
/// failed) before sending a byte, or in the middle of its ClientHello.
/// `first_wait` bounds the wait for the first byte (after it, nothing is waited for: a client
/// that sends nothing may be waiting for the server); `hello_wait` the whole ClientHello.
pub async fn sniff<S: AsyncRead + Unpin>(
    stream: &mut S,
    early: Vec<u8>,
    first_wait: Duration,
    hello_wait: Duration,
) -> Option<(Sniffed, Vec<u8>)> {
    let mut buf = early;
    if buf.is_empty() {
        buf.reserve(1024);
        match tokio::time::timeout(first_wait, read_some(stream, &mut buf)).await {
            Err(_) => return Some((Sniffed::Other, buf)),
            Ok(0) => return None,
            Ok(_) => {}
        }
    }
    // SECURITY: a TLS record of another type first (a warning alert, a ChangeCipherSpec, which
    // some servers skip before the ClientHello) would take a TLS client for another protocol,
    // its ClientHello then relayed unread.
    if is_tls_record_type(buf[0]) && buf[0] != TLS_HANDSHAKE {
        if buf.len() < 2 {
            match tokio::time::timeout(hello_wait, read_some(stream, &mut buf)).await {
                Ok(0) => return None,
                Err(_) => return Some((Sniffed::StalledTls, buf)),
                Ok(_) => {}
            }
        }
        if buf[1] == TLS_MAJOR {
            return Some((Sniffed::UnreadableTls, buf));
        }
    }
    if buf[0] == TLS_HANDSHAKE {
        let hello = tokio::time::timeout(hello_wait, client_hello(stream, &mut buf)).await;
        // SECURITY: a TLS record whose server name cannot be read is not decided on the
        // address as a client without SNI is: one that policy lets through opaquely there would
        // let any name pass, a blocked one or one the tenant's credentials are bound to.
        return match hello {
            Ok(Hello::Sni(sni)) => Some((Sniffed::Tls { sni }, buf)),
            Ok(Hello::Unreadable) => Some((Sniffed::UnreadableTls, buf)),
            Ok(Hello::Closed) => None,
            Err(_) => Some((Sniffed::StalledTls, buf)),
        };
    }
    // SECURITY: a server that takes a PROXY protocol header strips it and reads what follows
    // as it would have read the connection: a ClientHello or a request after it would go
    // unread. No client of a proxy has one to send.
    loop {
        match proxy_header(&buf) {
            Some(true) => return Some((Sniffed::ProxyHeader, buf)),
            Some(false) => break,
            None => {}
        }
        match tokio::time::timeout(hello_wait, read_some(stream, &mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    // An HTTP/1 request line, after any empty lines a server would skip; the front checks the
    // rest strictly (a lower-case method, say, is refused there, not relayed unread).
    loop {
        match request_line(&buf) {
            Some(true) => return Some((Sniffed::Http, buf)),
            Some(false) => return Some((Sniffed::Other, buf)),
            None => {}
        }
        match tokio::time::timeout(hello_wait, read_some(stream, &mut buf)).await {
            Ok(0) => return Some((Sniffed::Other, buf)),
            // SECURITY: what may still be a request line, stalled, is taken for one (the
            // front's deadline refuses it, audited): decided on the address alone, its `Host`
            // and path would go unchecked once it went on.
            Err(_) => return Some((Sniffed::Http, buf)),
            Ok(_) => {}
        }
    }
}

/// Whether `first` may start an HTTP request (the empty lines a server skips before it skipped
/// too): a method token, a space or tab, then a target as servers take one (`/…`, `*`, or an
/// absolute URL), or a line that names an HTTP version anywhere. `None` while that cannot be
/// told yet. Whitespace is whatever any server splits a request line on (Python's
/// `http.server` splits on every whitespace character: a vertical tab or form feed between
/// the method and the target, and any before the method).
///
/// SECURITY: what servers take for a request is HTTP here, however it is spelt (a long line, a
/// byte outside ASCII in its path, tabs, `HTTP/1.2`, HTTP/0.9's bare `GET /x`): the front
/// judges it, and refuses what it would not serve. Taken for another protocol, it would be
/// decided on the address alone and relayed unread, its `Host` and path unchecked. Protocols
/// whose words look like a method (`EHLO host`, `get key`, `a001 LOGIN`) have no such target.
pub fn request_line(first: &[u8]) -> Option<bool> {
    const MAX_LINE: usize = 8 * 1024;
    let Some(start) = first.iter().position(|b| !is_line_space(*b)) else {
        // Only empty lines so far: a server would wait for the request after them.
        return (first.len() >= MAX_LINE).then_some(true);
    };
    let rest = &first[start..];
    let method = rest
        .iter()
        .take_while(|b| crate::header_names::is_tchar(**b))
        .count();
    if method == rest.len() {
        // A token still arriving (or one as long as the window: the front refuses it).
        return (rest.len() >= MAX_LINE).then_some(method > 0);
    }
    if method == 0 || !is_line_space(rest[method]) || matches!(rest[method], b'\r' | b'\n') {
        return Some(false);
    }
    let target = &rest[method..];
    let target = &target[target
        .iter()
        .position(|b| !is_line_space(*b) || matches!(b, b'\r' | b'\n'))
        .unwrap_or(target.len())..];
    // A known method: any target (`GET p`, which Python's `http.server` serves).
    if HTTP_METHODS.iter().any(|m| rest[..method] == **m) {
        return Some(true);
    }
    match target.first() {
        None => None,
        Some(b'/' | b'*') => Some(true),
        Some(_) => {
            let line_end = target.iter().position(|b| *b == b'\n');
            let line = &target[..line_end.unwrap_or(target.len())];
            let absolute = memchr::memmem::find(line, b"://").is_some();
            let versioned = memchr::memmem::find(line, b"HTTP/").is_some();
            if absolute || versioned {
                Some(true)
            } else if line_end.is_some() || rest.len() >= MAX_LINE {
                Some(false)
            } else {
                None
            }
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

/// Whether `first` starts a PROXY protocol header (v1's `PROXY ` or v2's 12-byte signature);
/// `None` while its first bytes could still be one.
fn proxy_header(first: &[u8]) -> Option<bool> {
    const V1: &[u8] = b"PROXY ";
    const V2: &[u8] = b"\r\n\r\n\x00\r\nQUIT\n";
    for signature in [V1, V2] {
        let n = first.len().min(signature.len());
        if first[..n] == signature[..n] {
            return (n == signature.len()).then_some(true);
        }
    }
    Some(false)
}

/// The methods of HTTP (RFC 9110, and PATCH): a line that starts with one of them and a space
/// is a request line to any server, whatever its target.
const HTTP_METHODS: [&[u8]; 9] = [
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
];

/// Whether a server may take `b` for whitespace in or before a request line: ASCII
/// whitespace, and what Python's `str.split` splits on besides (`\x1c`–`\x1f`, and NEL and
/// NBSP in the Latin-1 its `http.server` reads request lines as).
fn is_line_space(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c | 0x1c..=0x1f | 0x85 | 0xa0
    )
}

/// The first byte of a TLS record of any type (ChangeCipherSpec, alert, handshake,
/// application data, heartbeat).
fn is_tls_record_type(b: u8) -> bool {
    (0x14..=0x18).contains(&b)
}

/// The first byte of every TLS version on the wire (SSL 3.0 to TLS 1.3's legacy field).
const TLS_MAJOR: u8 = 0x03;

/// The ClientHello extension that carries a server name (RFC 6066).
const SERVER_NAME_EXTENSION: u16 = 0x0000;

/// The ClientHello extension that carries an encrypted inner ClientHello (ECH): its server
/// name is not the one the outer hello shows.
const ECH_EXTENSION: u16 = 0xfe0d;

/// The extension types of the ClientHello in `records` (TLS records as they came, its
/// handshake message possibly split over several), `None` when they cannot be walked.
pub fn hello_extensions(records: &[u8]) -> Option<Vec<u16>> {
    // The handshake message, from the payloads of the handshake records.
    let mut message = Vec::new();
    let mut rest = records;
    while rest.len() >= 5 && rest[0] == TLS_HANDSHAKE {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        let payload = rest.get(5..5 + len)?;
        message.extend_from_slice(payload);
        rest = &rest[5 + len..];
    }
    let (&kind, body) = message.split_first()?;
    if kind != 0x01 {
        return None;
    }
    let len = usize::from(*body.first()?) << 16
        | usize::from(*body.get(1)?) << 8
        | usize::from(*body.get(2)?);
    let hello = body.get(3..3 + len)?;
    // legacy_version, random, then the session id, cipher suites and compression methods.
    let mut at = 2 + 32;
    let skip = |at: &mut usize, width: usize| -> Option<()> {
        let n = match width {
            1 => usize::from(*hello.get(*at)?),
            _ => usize::from(u16::from_be_bytes([*hello.get(*at)?, *hello.get(*at + 1)?])),
        };
        *at += width + n;
        Some(())
    };
    skip(&mut at, 1)?;
    skip(&mut at, 2)?;
    skip(&mut at, 1)?;
    let total = usize::from(u16::from_be_bytes([*hello.get(at)?, *hello.get(at + 1)?]));
    let mut ext = hello.get(at + 2..at + 2 + total)?;
    let mut kinds = Vec::new();
    while ext.len() >= 4 {
        kinds.push(u16::from_be_bytes([ext[0], ext[1]]));
        let n = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        ext = ext.get(4 + n..)?;
    }
    Some(kinds)
}

/// The server name of the whole ClientHello in `records` (TLS records as they came): `None`
/// when it cannot be read, or names no host this proxy can check (an SNI that is no host name,
/// an encrypted inner hello).
pub fn hello_name(records: &[u8]) -> Option<Option<String>> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = records;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    let accepted = acceptor.accept().ok()??;
    let sni = accepted
        .client_hello()
        .server_name()
        .map(str::to_ascii_lowercase);
    let extensions = hello_extensions(records)?;
    if extensions.contains(&ECH_EXTENSION)
        || (sni.is_none() && extensions.contains(&SERVER_NAME_EXTENSION))
    {
        return None;
    }
    Some(sni)
}

/// What the bytes of a TLS handshake record turned out to be.
enum Hello {
    /// A whole ClientHello, with its server name if it has one.
    Sni(Option<String>),
    /// Not a ClientHello rustls reads, or one larger than [`MAX_CLIENT_HELLO`].
    Unreadable,
    /// The stream ended before the ClientHello did.
    Closed,
}

/// Feeds `buf` (and what follows on `stream`) to rustls until it holds a whole ClientHello.
async fn client_hello<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Hello {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = 0;
    loop {
        while fed < buf.len() {
            let mut rest = &buf[fed..];
            match acceptor.read_tls(&mut rest) {
                Ok(0) | Err(_) => return Hello::Unreadable,
                Ok(n) => fed += n,
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let sni = accepted
                    .client_hello()
                    .server_name()
                    .map(str::to_ascii_lowercase);
                // SECURITY: rustls reads an SNI that is no host name (an IP address, which
                // some servers take) as none, and an ECH hello's outer name is not the one
                // its server serves: neither name can be checked.
                let Some(extensions) = hello_extensions(buf) else {
                    return Hello::Unreadable;
                };
                if extensions.contains(&ECH_EXTENSION)
                    || (sni.is_none() && extensions.contains(&SERVER_NAME_EXTENSION))
                {
                    return Hello::Unreadable;
                }
                return Hello::Sni(sni);
            }
            Ok(None) => {}
            Err(_) => return Hello::Unreadable,
        }
        if buf.len() > MAX_CLIENT_HELLO {
            return Hello::Unreadable;
        }
        if read_some(stream, buf).await == 0 {
            return Hello::Closed;
        }
    }
}

/// Whether `first`, the first bytes a client sent only after the proxy took it for a protocol
/// in which the server speaks first, are a TLS ClientHello or an HTTP request line: `None`
/// while that cannot be told yet (an upper-case start without its line's end).
///
/// SECURITY: TLS and HTTP clients speak first. One that waits past the sniffing before it
/// does would be relayed on a decision about the address alone, its server name or `Host`
/// never checked: it is refused instead.
pub fn speaks_first_late(first: &[u8]) -> Option<bool> {
    // A PROXY protocol header, as at once (servers wait many seconds for one).
    match proxy_header(first) {
        Some(true) => return Some(true),
        None => return None,
        Some(false) => {}
    }
    match first {
        [] => None,
        [TLS_HANDSHAKE, ..] => Some(true),
        [b] if is_tls_record_type(*b) => None,
        [b, TLS_MAJOR, ..] if is_tls_record_type(*b) => Some(true),
        _ => request_line(first),
    }
}

/// The first byte of a TLS handshake record (a ClientHello's).
const TLS_HANDSHAKE: u8 = 0x16;

/// A real ClientHello from rustls' client for `name` (or none, for an IP address).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn client_hello_for(name: &str) -> Vec<u8> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// `hello` (one record) with one more extension of type `kind`, its lengths fixed up.
    fn with_extension(hello: &[u8], kind: u16) -> Vec<u8> {
        let mut out = hello.to_vec();
        // The server_name extension of an IP literal: one `host_name` entry, "192.0.2.1".
        let data: Vec<u8> = if kind == 0x0000 {
            let name = b"192.0.2.1";
            let mut d = vec![0, (name.len() + 3) as u8, 0, 0, name.len() as u8];
            d.extend_from_slice(name);
            d
        } else {
            vec![0; 8]
        };
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
        let added = 4 + data.len();
        let grow = |at: usize, width: usize, out: &mut Vec<u8>| {
            let mut n = 0usize;
            for i in 0..width {
                n = n << 8 | usize::from(out[at + i]);
            }
            n += added;
            for i in 0..width {
                out[at + i] = (n >> (8 * (width - 1 - i))) as u8;
            }
        };
        grow(3, 2, &mut out); // the record
        grow(6, 3, &mut out); // the handshake message
                              // The extensions' own length: after version, random, session id, suites, compression.
        let mut at = 9 + 2 + 32;
        at += 1 + usize::from(out[at]);
        at += 2 + usize::from(u16::from_be_bytes([out[at], out[at + 1]]));
        at += 1 + usize::from(out[at]);
        grow(at, 2, &mut out);
        out
    }

    #[test]
    fn a_hellos_extensions_are_walked() {
        let hello = client_hello_for("api.example.test");
        let kinds = hello_extensions(&hello).unwrap();
        assert!(kinds.contains(&SERVER_NAME_EXTENSION), "{kinds:?}");
        assert!(hello_extensions(&with_extension(&hello, 0xfe0d))
            .unwrap()
            .contains(&0xfe0d));
        // Split over two records.
        let message = &hello[5..];
        let mut split = Vec::new();
        for part in [&message[..40], &message[40..]] {
            split.extend_from_slice(&[0x16, 0x03, 0x01]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(hello_extensions(&split), Some(kinds));
        assert_eq!(hello_extensions(&hello[..20]), None);
    }

    async fn sniffed(bytes: &[u8]) -> Option<(Sniffed, Vec<u8>)> {
        let mut reader = bytes;
        sniff(
            &mut reader,
            Vec::new(),
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
            b"get key\r\n",
            b"*1\r\n$4\r\nPING\r\n",
        ] {
            assert_eq!(sniffed(other).await.unwrap().0, Sniffed::Other, "{other:?}");
        }
        // HTTP however its request line is spelt: the front judges it (a lower-case method is
        // refused there), never the address alone; empty lines before it are skipped, as
        // servers skip them.
        let mut long = b"GET /".to_vec();
        long.extend(std::iter::repeat_n(b'a', 9000));
        long.extend(b" HTTP/1.1\r\n");
        let mut empty_lines = vec![b'\n'; 9000];
        empty_lines.extend(b"GET /x HTTP/1.1\r\n");
        for http in [
            &b"get / HTTP/1.1\r\n"[..],
            b"\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\n\nPOST / HTTP/1.0\n",
            b"M-SEARCH * HTTP/1.1\r\n",
            b"GET\t/x\tHTTP/1.1\r\n",
            b"GET /x HTTP/1.2\r\n",
            b"GET /x HTTP/1.1 \r\n",
            b"GET /forbidden/x\r\n",
            "GET /caf\u{e9} HTTP/1.1\r\n".as_bytes(),
            b"GET http://blocked.test/x HTTP/1.1\r\n",
            b"FOOOOOOOOOOOOOOOOOOOOO /x HTTP/1.1\r\n",
            &long,
            &empty_lines,
        ] {
            assert_eq!(sniffed(http).await.unwrap().0, Sniffed::Http, "{http:?}");
        }
        // A TLS record that is no ClientHello, or one larger than the proxy reads: its name
        // cannot be known, so it is not taken for a client without one.
        let mut huge = vec![0x16, 0x03, 0x01, 0x40, 0x00];
        huge.extend(std::iter::repeat_n(0x01, MAX_CLIENT_HELLO + 64));
        for unreadable in [&b"\x16\x03\x01\x00\x05hello"[..], &huge] {
            assert_eq!(
                sniffed(unreadable).await.unwrap().0,
                Sniffed::UnreadableTls,
                "{:?}",
                &unreadable[..8]
            );
        }
        // Another TLS record first (a warning alert before the hello), an SNI that is an IP
        // address, an ECH hello: no name to check.
        let mut alert_first = vec![0x15, 0x03, 0x01, 0x00, 0x02, 0x01, 0x5a];
        alert_first.extend(client_hello_for("api.example.test"));
        assert_eq!(
            sniffed(&alert_first).await.unwrap().0,
            Sniffed::UnreadableTls
        );
        assert_eq!(
            sniffed(b"\x14\x03\x03\x00\x01\x01").await.unwrap().0,
            Sniffed::UnreadableTls
        );
        assert_eq!(
            sniffed(&with_extension(&hello, 0xfe0d)).await.unwrap().0,
            Sniffed::UnreadableTls
        );
        assert_eq!(
            sniffed(&with_extension(&client_hello_for("192.0.2.1"), 0x0000))
                .await
                .unwrap()
                .0,
            Sniffed::UnreadableTls
        );
        // A PROXY protocol header, v1 or v2, before anything.
        assert_eq!(
            sniffed(b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n\x16\x03\x01")
                .await
                .unwrap()
                .0,
            Sniffed::ProxyHeader
        );
        assert_eq!(
            sniffed(b"\r\n\r\n\x00\r\nQUIT\n\x21\x11").await.unwrap().0,
            Sniffed::ProxyHeader
        );
        // A known method and any target: HTTP.
        assert_eq!(
            sniffed(b"GET p\r\nHost: x\r\n\r\n").await.unwrap().0,
            Sniffed::Http
        );
        // A protocol whose first byte merely falls in that range is not TLS.
        assert_eq!(sniffed(b"\x15hello\r\n").await.unwrap().0, Sniffed::Other);
        assert_eq!(sniffed(b"").await, None);
        // A ClientHello cut short by the client's close: it asked for nothing.
        assert_eq!(sniffed(&hello[..hello.len() / 2]).await, None);
    }

    /// Sniffs a client that sends `begun` and then nothing, its connection left open.
    async fn sniffed_stalled(begun: &[u8]) -> Option<(Sniffed, Vec<u8>)> {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, begun)
            .await
            .unwrap();
        sniff(
            &mut server,
            Vec::new(),
            Duration::from_millis(50),
            Duration::from_millis(50),
        )
        .await
    }

    #[tokio::test]
    async fn a_client_hello_that_stalls_is_told() {
        let hello = client_hello_for("api.example.test");
        let got = sniffed_stalled(&hello[..20]).await;
        assert_eq!(got, Some((Sniffed::StalledTls, hello[..20].to_vec())));
    }

    /// A request line begun and stalled is taken for HTTP (the front's deadline refuses it),
    /// not for another protocol decided on the address alone.
    #[tokio::test]
    async fn a_request_line_that_stalls_is_http() {
        for begun in [&b"GET"[..], b"\r\n", b"GET ", b"GET blocked"] {
            let got = sniffed_stalled(begun).await;
            assert_eq!(got, Some((Sniffed::Http, begun.to_vec())), "{begun:?}");
        }
    }

    #[test]
    fn late_speakers_are_told_by_their_first_bytes() {
        let hello = client_hello_for("api.example.test");
        #[rustfmt::skip]
        let cases: [(&[u8], Option<bool>); 22] = [
            (&hello, Some(true)),
            (&hello[..1], Some(true)),
            // Another TLS record first (an alert): told by its version byte.
            (b"\x15", None),
            (b"\x15\x03\x01\x00\x02", Some(true)),
            // A PROXY protocol header, however late.
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", Some(true)),
            (b"PROX", None),
            // Whitespace a server splits request lines on.
            (b" GET /x HTTP/1.1\r\n", Some(true)),
            (b"GET\x0b/x HTTP/1.1\r\n", Some(true)),
            (b"GET /x HTTP/1.1\r\nHost: a\r\n", Some(true)),
            (b"POST / HTTP/1.0\n", Some(true)),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(true)),
            // Protocols in which the server speaks first: SMTP, IMAP, MySQL's binary answer.
            (b"EHLO client.example\r\n", Some(false)),
            (b"a001 LOGIN user pass\r\n", Some(false)),
            (b"\x55\x00\x00\x01\x8d\xa2", Some(false)),
            (b"\x20\x00\x00\x01", Some(false)),
            // After empty lines too.
            (b"\r\nGET /x HTTP/1.1\r\n", Some(true)),
            // Told by the target alone.
            (b"GET /x HTT", Some(true)),
            // Not told yet: a token, or a target not begun.
            (b"G", None),
            (b"GET ", Some(true)),
            (b"EHLO ", None),
            (b"\r\n", None),
            (b"", None),
        ];
        for (first, want) in cases {
            assert_eq!(
                speaks_first_late(first),
                want,
                "{:?}",
                String::from_utf8_lossy(first)
            );
        }
    }

    #[tokio::test]
    async fn a_client_that_sends_nothing_is_another_protocol() {
        let (_client, mut server) = tokio::io::duplex(64);
        let got = sniff(
            &mut server,
            Vec::new(),
            Duration::from_millis(50),
            Duration::from_millis(50),
        )
        .await;
        assert_eq!(got, Some((Sniffed::Other, Vec::new())));
    }
}
