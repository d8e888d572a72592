//! A request head read strictly (RFC 9112), before pingora parses it.
//!
//! pingora's HTTP/1 parser is lenient where an egress proxy must be strict: it accepts bare LF
//! line ends, drops `Content-Length` when `Transfer-Encoding` is present, treats any
//! `Transfer-Encoding` ending in `chunked` as chunked, and buffers a head well past any cap
//! before refusing it. Each of those lets the proxy decide one request while the upstream
//! executes another (request smuggling). So every head is checked here first, and only a head
//! that has exactly one reading reaches pingora:
//!
//! - lines end in CRLF, nothing else (a bare CR or LF anywhere refuses the head);
//! - the request line is `method SP target SP HTTP/1.0|HTTP/1.1`, header names are tokens with
//!   no space before the colon, values hold no control characters (httparse's strict mode);
//! - at most `max_headers` fields and `max_bytes` bytes (checked as bytes arrive, so a head is
//!   never buffered beyond the cap);
//! - body framing has one reading: `Content-Length` once, digits only; `Transfer-Encoding`
//!   exactly `chunked` (one coding, one field) and never on HTTP/1.0; never both;
//! - HTTP/1.1 carries exactly one `Host`; an absolute-form target's authority equals it.
//!
//! [`HeadScanner`] finds the end of a head incrementally (each byte is looked at once, so a
//! client trickling a head byte by byte costs linear time) and [`parse`] validates it.

use pingora::protocols::http::authority::{
    is_http_family_scheme, raw_target_authority, RawTargetAuthority,
};

/// Most header fields pingora can parse at all (its `MAX_HEADERS`); `max_headers` is capped here.
pub const HARD_MAX_HEADERS: usize = 256;

/// How large a head may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Bytes from the request line to the blank line that ends the head, inclusive.
    pub max_bytes: usize,
    /// Header fields.
    pub max_headers: usize,
}

/// How the body that follows a head is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Which form the request target has (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`.
    Origin,
    /// `http://host/path` (forward proxying).
    Absolute,
    /// `host:port` (`CONNECT`).
    Authority,
    /// `*` (`OPTIONS`).
    Asterisk,
}

/// A head that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Bytes of the head, including its final CRLF CRLF.
    pub len: usize,
    /// The body's framing.
    pub framing: Framing,
    /// `CONNECT`.
    pub connect: bool,
    /// The request asks to switch to a WebSocket (`Upgrade: websocket`, nominated by
    /// `Connection`; the only switch the proxy relays): after the answer the connection may
    /// carry anything, so it is never read as HTTP again.
    pub upgrade: bool,
    /// The target's form.
    pub target: TargetForm,
}

/// Why a head was refused (the proxy answers each with its own status and code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Over `max_bytes` without the blank line that ends it (431).
    TooLarge,
    /// Over `max_headers` fields (431).
    TooManyHeaders,
    /// Not a well-formed request head (400).
    Malformed(&'static str),
    /// Its body framing has more than one reading (400).
    Framing(&'static str),
    /// A transfer coding other than `chunked` (501).
    UnsupportedTransferEncoding,
    /// An absolute-form target whose authority differs from `Host` (400).
    HostMismatch,
}

/// Finds the end of a head as its bytes arrive, refusing bare CR or LF and heads over the cap
/// on the way. Feed it the growing buffer; each byte is looked at once.
#[derive(Debug, Default)]
pub struct HeadScanner {
    scanned: usize,
    /// Leading empty lines (CRLF) skipped before the request line (RFC 9112 §2.2).
    skipped: usize,
    started: bool,
}

/// What the scanner knows after looking at the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// More bytes are needed.
    Partial,
    /// The head is `buf[start..end]`; bytes before `start` were empty lines to drop.
    Complete {
        /// Where the request line starts.
        start: usize,
        /// One past the head's final LF.
        end: usize,
    },
}

/// Empty lines tolerated before a request line (a client's stray CRLF after a body).
const MAX_LEADING_EMPTY_LINES: usize = 4;

impl HeadScanner {
    /// Looks at the bytes of `buf` not seen yet. `buf` must only ever grow between calls.
    pub fn scan(&mut self, buf: &[u8], limits: HeadLimits) -> Result<Scan, HeadError> {
        while !self.started && self.scanned < buf.len() {
            // Leading CRLF pairs are skipped; anything else starts the request line.
            match buf[self.scanned] {
                b'\r' => {
                    let Some(&next) = buf.get(self.scanned + 1) else {
                        return Ok(Scan::Partial);
                    };
                    if next != b'\n' {
                        return Err(HeadError::Malformed("a bare CR in the request head"));
                    }
                    self.skipped += 2;
                    self.scanned += 2;
                    if self.skipped / 2 > MAX_LEADING_EMPTY_LINES {
                        return Err(HeadError::Malformed("empty lines before the request line"));
                    }
                }
                b'\n' => return Err(HeadError::Malformed("a bare LF in the request head")),
                _ => self.started = true,
            }
        }
        if self.started {
            // Only CR and LF decide anything: jump from one to the next (memchr looks at a word
            // at a time). The cap is checked at each, for the bytes before it, so a head over
            // the cap is refused as a byte-by-byte walk would refuse it (before a line end
            // after the cap is judged).
            loop {
                let Some(at) = memchr::memchr2(b'\r', b'\n', &buf[self.scanned..]) else {
                    self.scanned = buf.len();
                    break;
                };
                let i = self.scanned + at;
                if i - self.skipped > limits.max_bytes {
                    return Err(HeadError::TooLarge);
                }
                match buf[i] {
                    b'\n' if i == 0 || buf[i - 1] != b'\r' => {
                        return Err(HeadError::Malformed("a bare LF in the request head"));
                    }
                    b'\n' if i >= self.skipped + 3 && &buf[i - 3..=i] == b"\r\n\r\n" => {
                        return Ok(Scan::Complete {
                            start: self.skipped,
                            end: i + 1,
                        });
                    }
                    b'\r' => match buf.get(i + 1) {
                        // Decided once the next byte arrives.
                        None => {
                            self.scanned = i;
                            break;
                        }
                        Some(b'\n') => {}
                        Some(_) => {
                            return Err(HeadError::Malformed("a bare CR in the request head"));
                        }
                    },
                    _ => {}
                }
                self.scanned = i + 1;
            }
        }
        if buf.len() - self.skipped > limits.max_bytes {
            return Err(HeadError::TooLarge);
        }
        Ok(Scan::Partial)
    }
}

/// Validates a complete head (`head` ends with CRLF CRLF, as [`HeadScanner`] found it).
pub fn parse(head: &[u8], limits: HeadLimits) -> Result<Head, HeadError> {
    if head.len() > limits.max_bytes {
        return Err(HeadError::TooLarge);
    }
    // Bare CR/LF were refused by the scanner; checked again for callers that did not use it.
    if memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r') {
        return Err(HeadError::Malformed("a bare LF in the request head"));
    }
    let max_headers = limits.max_headers.min(HARD_MAX_HEADERS);
    // One more slot than allowed, so "too many" is told apart from other errors.
    let mut slots = [httparse::EMPTY_HEADER; HARD_MAX_HEADERS + 1];
    let slots = &mut slots[..max_headers + 1];
    let mut req = httparse::Request::new(slots);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Ok(_) => {
            return Err(HeadError::Malformed(
                "the request head does not end where expected",
            ))
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(httparse::Error::Version) => {
            return Err(HeadError::Malformed(
                "only HTTP/1.0 and HTTP/1.1 are accepted",
            ))
        }
        Err(httparse::Error::HeaderName) => {
            return Err(HeadError::Malformed("an invalid header name"))
        }
        Err(httparse::Error::HeaderValue) => {
            return Err(HeadError::Malformed(
                "a control character in a header value",
            ))
        }
        Err(_) => return Err(HeadError::Malformed("an invalid request line")),
    }
    if req.headers.len() > max_headers {
        return Err(HeadError::TooManyHeaders);
    }
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("");
    let http10 = req.version == Some(0);
    let connect = method == "CONNECT";

    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut host: Option<&[u8]> = None;
    let (mut upgrade_lines, mut websocket) = (0, false);
    let mut upgrade_nominated = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(HeadError::Framing("`Content-Length` given more than once"));
            }
            content_length = Some(parse_content_length(h.value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if transfer_encoding.is_some() {
                return Err(HeadError::UnsupportedTransferEncoding);
            }
            transfer_encoding = Some(h.value);
        } else if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Err(HeadError::Malformed("more than one `Host` header"));
            }
            host = Some(h.value);
        } else if name.eq_ignore_ascii_case("upgrade") {
            // Only a WebSocket is ever switched to (the pipeline drops any other `Upgrade`).
            upgrade_lines += 1;
            websocket = h.value.trim_ascii().eq_ignore_ascii_case(b"websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            upgrade_nominated |=
                connection_options(h.value).any(|o| o.eq_ignore_ascii_case(b"upgrade"));
        }
    }

    let framing = match (content_length, transfer_encoding) {
        (Some(_), Some(_)) => {
            return Err(HeadError::Framing(
                "both `Content-Length` and `Transfer-Encoding`",
            ))
        }
        (_, Some(_)) if http10 => {
            return Err(HeadError::Framing(
                "`Transfer-Encoding` on an HTTP/1.0 request",
            ))
        }
        (_, Some(te)) => {
            if !trim_ows(te).eq_ignore_ascii_case(b"chunked") {
                return Err(HeadError::UnsupportedTransferEncoding);
            }
            Framing::Chunked
        }
        (Some(0), None) | (None, None) => Framing::None,
        (Some(n), None) => Framing::Length(n),
    };

    let form = if connect {
        TargetForm::Authority
    } else if target == "*" {
        if method != "OPTIONS" {
            return Err(HeadError::Malformed(
                "an asterisk target on a method other than OPTIONS",
            ));
        }
        TargetForm::Asterisk
    } else if target.starts_with('/') {
        TargetForm::Origin
    } else {
        TargetForm::Absolute
    };
    // pingora builds its request from the target with `http::Uri`, which refuses bytes
    // httparse lets through (`<`, `>`, `` ` ``): refused here instead, so the request gets the
    // JSON refusal and its record rather than pingora's bare `400`.
    if matches!(form, TargetForm::Origin | TargetForm::Absolute)
        && http::Uri::try_from(target).is_err()
    {
        return Err(HeadError::Malformed(
            "a request target that is no valid URI",
        ));
    }
    if !http10 && host.is_none() && !connect {
        // RFC 9112 §3.2: absolute form included.
        return Err(HeadError::Malformed("an HTTP/1.1 request without `Host`"));
    }
    if form == TargetForm::Absolute {
        match raw_target_authority(target.as_bytes()) {
            RawTargetAuthority::Absolute {
                scheme, authority, ..
            } => {
                if authority.is_empty()
                    || authority.contains(&b'@')
                    || (is_http_family_scheme(scheme)
                        && http::uri::Authority::try_from(authority).is_err())
                {
                    return Err(HeadError::Malformed(
                        "an absolute-form target without a plain authority",
                    ));
                }
                // Byte for byte, as pingora compares them (it would refuse any other difference
                // with a bare 400 of its own).
                if host.is_some_and(|h| h != authority) {
                    return Err(HeadError::HostMismatch);
                }
            }
            RawTargetAuthority::AmbiguousAuthority => {
                return Err(HeadError::Malformed("an ambiguous absolute-form target"))
            }
            RawTargetAuthority::None => {
                return Err(HeadError::Malformed(
                    "a request target that is neither a path nor an absolute URI",
                ))
            }
        }
    }
    if host.is_some_and(|h| h.contains(&b'@')) {
        return Err(HeadError::Malformed("userinfo in `Host`"));
    }
    Ok(Head {
        len: head.len(),
        framing: if connect { Framing::None } else { framing },
        connect,
        upgrade: upgrade_lines == 1 && websocket && upgrade_nominated && !http10,
        target: form,
    })
}

/// `1*DIGIT` that fits in 64 bits; no sign, no list, no spaces inside (RFC 9110 §8.6).
fn parse_content_length(value: &[u8]) -> Result<u64, HeadError> {
    let v = trim_ows(value);
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::Framing(
            "`Content-Length` is not a single number",
        ));
    }
    v.iter()
        .try_fold(0u64, |n, d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or(HeadError::Framing("`Content-Length` is too large"))
}

/// The comma-separated options of a `Connection` field value, trimmed, empty ones skipped.
pub fn connection_options(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(trim_ows)
        .filter(|o| !o.is_empty())
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &v[start..end]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_bytes: 4096,
        max_headers: 100,
    };

    fn whole(head: &[u8]) -> Result<Head, HeadError> {
        let mut s = HeadScanner::default();
        match s.scan(head, LIMITS)? {
            Scan::Complete { start, end } => parse(&head[start..end], LIMITS),
            Scan::Partial => Err(HeadError::Malformed("partial")),
        }
    }

    #[test]
    fn well_formed_heads_and_their_framing() {
        let cases: &[(&str, &[u8], Framing)] = &[
            ("get", b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", Framing::None),
            (
                "length",
                b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n",
                Framing::Length(12),
            ),
            (
                "zero length",
                b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
                Framing::None,
            ),
            (
                "chunked any case",
                b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  ChUnKeD \r\n\r\n",
                Framing::Chunked,
            ),
            (
                "absolute",
                b"GET http://a.example:8080/x HTTP/1.1\r\nHost: a.example:8080\r\n\r\n",
                Framing::None,
            ),
            (
                "http/1.0 without host",
                b"GET /x HTTP/1.0\r\n\r\n",
                Framing::None,
            ),
            (
                "leading empty line",
                b"\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
                Framing::None,
            ),
            (
                "credential handle in the query",
                b"GET /x?key=$CRED{g} HTTP/1.1\r\nHost: a\r\n\r\n",
                Framing::None,
            ),
        ];
        for (name, head, framing) in cases {
            let h = whole(head).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(h.framing, *framing, "{name}");
        }
        let c = whole(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n").unwrap();
        assert!(c.connect && c.target == TargetForm::Authority);
        let u = whole(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n").unwrap();
        assert!(u.upgrade);
        let not_u = whole(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n").unwrap();
        assert!(
            !not_u.upgrade,
            "Upgrade without Connection: upgrade is not a switch"
        );
        for other in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket, h2c\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        ] {
            let h = whole(other).unwrap();
            assert!(!h.upgrade, "{}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn every_ambiguous_head_is_refused() {
        use HeadError::*;
        let cases: &[(&str, &[u8], HeadError)] = &[
            ("cl and te", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", Framing("both `Content-Length` and `Transfer-Encoding`")),
            ("te and cl", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", Framing("both `Content-Length` and `Transfer-Encoding`")),
            ("chunked twice", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", UnsupportedTransferEncoding),
            ("gzip, chunked", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", UnsupportedTransferEncoding),
            ("two te fields", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", UnsupportedTransferEncoding),
            ("identity", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", UnsupportedTransferEncoding),
            ("http/1.0 te", b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Framing("`Transfer-Encoding` on an HTTP/1.0 request")),
            ("cl twice same", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", Framing("`Content-Length` given more than once")),
            ("cl list", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", Framing("`Content-Length` is not a single number")),
            ("cl sign", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n", Framing("`Content-Length` is not a single number")),
            ("cl negative", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", Framing("`Content-Length` is not a single number")),
            ("cl huge", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", Framing("`Content-Length` is not a single number")),
            ("no host", b"GET /x HTTP/1.1\r\n\r\n", Malformed("an HTTP/1.1 request without `Host`")),
            ("absolute no host", b"GET http://a/x HTTP/1.1\r\n\r\n", Malformed("an HTTP/1.1 request without `Host`")),
            ("two hosts", b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Malformed("more than one `Host` header")),
            ("host mismatch", b"GET http://a/x HTTP/1.1\r\nHost: b\r\n\r\n", HostMismatch),
            ("userinfo", b"GET http://u@a/x HTTP/1.1\r\nHost: a\r\n\r\n", Malformed("an absolute-form target without a plain authority")),
            ("http/2.0", b"GET /x HTTP/2.0\r\nHost: a\r\n\r\n", Malformed("only HTTP/1.0 and HTTP/1.1 are accepted")),
            ("space before colon", b"GET /x HTTP/1.1\r\nHost : a\r\n\r\n", Malformed("an invalid header name")),
            ("obs-fold", b"GET /x HTTP/1.1\r\nHost: a\r\n X: b\r\n\r\n", Malformed("an invalid header name")),
            ("nul in value", b"GET /x HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", Malformed("a control character in a header value")),
            ("double space", b"GET  /x HTTP/1.1\r\nHost: a\r\n\r\n", Malformed("an invalid request line")),
            ("asterisk get", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", Malformed("an asterisk target on a method other than OPTIONS")),
        ];
        for (name, head, want) in cases {
            assert_eq!(whole(head), Err(*want), "{name}");
        }
    }

    #[test]
    fn bare_line_ends_are_refused_as_they_arrive() {
        for head in [
            &b"GET /x HTTP/1.1\nHost: a\r\n\r\n"[..],
            b"GET /x HTTP/1.1\r\nHost: a\n\n",
            b"GET /x HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
            b"\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\r\rGET /x HTTP/1.1\r\n\r\n",
        ] {
            let mut s = HeadScanner::default();
            assert!(
                matches!(s.scan(head, LIMITS), Err(HeadError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn the_caps_hold_before_the_head_ends() {
        let limits = HeadLimits {
            max_bytes: 64,
            max_headers: 2,
        };
        let mut s = HeadScanner::default();
        let long = [b"GET /x HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 100]].concat();
        assert_eq!(s.scan(&long, limits), Err(HeadError::TooLarge));
        let many = b"GET /x HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
        assert_eq!(parse(many, limits), Err(HeadError::TooManyHeaders));
        let exactly = b"GET /x HTTP/1.1\r\nHost: a\r\nA: 1\r\n\r\n";
        assert!(parse(exactly, limits).is_ok());
    }

    #[test]
    fn a_head_found_byte_by_byte_is_the_same_head() {
        let head = b"\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        let mut s = HeadScanner::default();
        let mut got = None;
        for n in 1..=head.len() {
            if let Scan::Complete { start, end } = s.scan(&head[..n], LIMITS).unwrap() {
                got = Some((start, end));
                break;
            }
        }
        assert_eq!(got, Some((2, head.len() - 5)));
    }

    /// Scans `bytes` fed in the given pieces; the first verdict that is not `Partial`.
    fn scan_in_pieces(bytes: &[u8], cuts: &[usize]) -> Result<Scan, HeadError> {
        let mut s = HeadScanner::default();
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.push(bytes.len());
        points.sort_unstable();
        let mut last = Ok(Scan::Partial);
        for p in points {
            last = s.scan(&bytes[..p], LIMITS);
            if !matches!(last, Ok(Scan::Partial)) {
                return last;
            }
        }
        last
    }

    fn header_name() -> impl Strategy<Value = String> {
        "[A-Za-z][A-Za-z0-9-]{0,12}".prop_filter("not a framing or host field", |n| {
            ![
                "content-length",
                "transfer-encoding",
                "host",
                "connection",
                "upgrade",
            ]
            .contains(&n.to_ascii_lowercase().as_str())
        })
    }

    /// Every way of writing both framing headers (case, whitespace, order, values).
    fn smuggling_pair() -> impl Strategy<Value = String> {
        (
            prop::sample::select(vec!["Content-Length", "content-length", "CONTENT-LENGTH"]),
            0u32..100,
            prop::sample::select(vec![
                "Transfer-Encoding",
                "transfer-encoding",
                "TRANSFER-encoding",
            ]),
            prop::sample::select(vec!["chunked", "Chunked", " chunked ", "\tchunked"]),
            any::<bool>(),
        )
            .prop_map(|(cl, n, te, v, cl_first)| {
                let (a, b) = (format!("{cl}: {n}\r\n"), format!("{te}:{v}\r\n"));
                if cl_first {
                    a + &b
                } else {
                    b + &a
                }
            })
    }

    /// The scanner as it was written first, byte by byte: the jumping one must give the same
    /// verdicts (`fuzz_the_scanner_is_the_byte_by_byte_scanner`).
    #[derive(Default)]
    struct ByteByByte {
        scanned: usize,
        skipped: usize,
        started: bool,
    }

    impl ByteByByte {
        fn scan(&mut self, buf: &[u8], limits: HeadLimits) -> Result<Scan, HeadError> {
            while self.scanned < buf.len() {
                let i = self.scanned;
                let b = buf[i];
                if !self.started {
                    match b {
                        b'\r' => {
                            if i + 1 >= buf.len() {
                                return Ok(Scan::Partial);
                            }
                            if buf[i + 1] != b'\n' {
                                return Err(HeadError::Malformed("a bare CR in the request head"));
                            }
                            self.skipped += 2;
                            self.scanned += 2;
                            if self.skipped / 2 > MAX_LEADING_EMPTY_LINES {
                                return Err(HeadError::Malformed(
                                    "empty lines before the request line",
                                ));
                            }
                            continue;
                        }
                        b'\n' => return Err(HeadError::Malformed("a bare LF in the request head")),
                        _ => self.started = true,
                    }
                }
                match b {
                    b'\n' if i == 0 || buf[i - 1] != b'\r' => {
                        return Err(HeadError::Malformed("a bare LF in the request head"));
                    }
                    b'\r' if i + 1 < buf.len() && buf[i + 1] != b'\n' => {
                        return Err(HeadError::Malformed("a bare CR in the request head"));
                    }
                    b'\r' if i + 1 >= buf.len() => break,
                    b'\n' if i >= self.skipped + 3 && &buf[i - 3..=i] == b"\r\n\r\n" => {
                        return Ok(Scan::Complete {
                            start: self.skipped,
                            end: i + 1,
                        });
                    }
                    _ => {}
                }
                self.scanned += 1;
                if self.scanned - self.skipped > limits.max_bytes {
                    return Err(HeadError::TooLarge);
                }
            }
            if buf.len() - self.skipped > limits.max_bytes {
                return Err(HeadError::TooLarge);
            }
            Ok(Scan::Partial)
        }
    }

    /// Head-like bytes: runs of text, line ends (paired or bare), empty lines, any byte now
    /// and then.
    fn head_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                3 => Just(b"\r\n".to_vec()),
                1 => Just(b"\r".to_vec()),
                1 => Just(b"\n".to_vec()),
                1 => Just(b"\r\n\r\n".to_vec()),
                4 => "[A-Za-z :/]{1,20}".prop_map(String::into_bytes),
                1 => any::<u8>().prop_map(|b| vec![b]),
            ],
            0..16,
        )
        .prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(512)))]

        /// Arbitrary bytes never panic; scanning in pieces finds what scanning whole finds;
        /// whatever is accepted parses to a head no longer than its input.
        #[test]
        fn fuzz_any_bytes_never_panic_and_pieces_agree(
            bytes in prop::collection::vec(any::<u8>(), 0..300),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            let whole = HeadScanner::default().scan(&bytes, LIMITS);
            prop_assert_eq!(scan_in_pieces(&bytes, &cuts), whole);
            if let Ok(Scan::Complete { start, end }) = whole {
                prop_assert!(start <= end && end <= bytes.len());
                if let Ok(h) = parse(&bytes[start..end], LIMITS) {
                    prop_assert_eq!(h.len, end - start);
                }
            }
        }

        /// The scanner that jumps between line ends gives the byte-by-byte scanner's verdict
        /// on any bytes, fed in any pieces, under any cap.
        #[test]
        fn fuzz_the_scanner_is_the_byte_by_byte_scanner(
            bytes in head_bytes(),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
            max_bytes in 0usize..80,
        ) {
            let limits = HeadLimits { max_bytes, max_headers: 100 };
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            points.push(bytes.len());
            points.sort_unstable();
            let (mut jumping, mut reference) = (HeadScanner::default(), ByteByByte::default());
            for p in points {
                let got = jumping.scan(&bytes[..p], limits);
                prop_assert_eq!(&got, &reference.scan(&bytes[..p], limits), "at {}", p);
                if !matches!(got, Ok(Scan::Partial)) {
                    break;
                }
            }
        }

        /// Well-formed heads are accepted with the framing they declare, however they arrive.
        #[test]
        fn fuzz_well_formed_heads_are_accepted(
            fields in prop::collection::vec((header_name(), "[ -~]{0,20}"), 0..20),
            length in prop::option::of(0u64..100_000),
            cuts in prop::collection::vec(any::<usize>(), 0..4),
        ) {
            let mut head = String::from("POST /v1/chat/completions HTTP/1.1\r\nHost: api.example\r\n");
            for (n, v) in &fields {
                head.push_str(&format!("{n}: {}\r\n", v.trim()));
            }
            if let Some(n) = length {
                head.push_str(&format!("Content-Length: {n}\r\n"));
            }
            head.push_str("\r\n");
            let bytes = head.as_bytes();
            let Ok(Scan::Complete { start, end }) = scan_in_pieces(bytes, &cuts) else {
                return Err(TestCaseError::fail(format!("not complete: {head:?}")));
            };
            let h = parse(&bytes[start..end], LIMITS).map_err(|e| TestCaseError::fail(format!("{e:?}: {head:?}")))?;
            let want = match length {
                None | Some(0) => Framing::None,
                Some(n) => Framing::Length(n),
            };
            prop_assert_eq!(h.framing, want);
        }

        /// `Content-Length` with `Transfer-Encoding`, however written, is always refused.
        #[test]
        fn fuzz_both_framing_headers_are_always_refused(
            pair in smuggling_pair(),
            before in prop::collection::vec((header_name(), "[a-z0-9]{0,8}"), 0..5),
        ) {
            let mut head = String::from("POST /x HTTP/1.1\r\nHost: a\r\n");
            for (n, v) in &before {
                head.push_str(&format!("{n}: {v}\r\n"));
            }
            head.push_str(&pair);
            head.push_str("\r\n");
            let bytes = head.as_bytes();
            let got = match HeadScanner::default().scan(bytes, LIMITS) {
                Ok(Scan::Complete { start, end }) => parse(&bytes[start..end], LIMITS),
                other => return Err(TestCaseError::fail(format!("{other:?}"))),
            };
            prop_assert!(matches!(got, Err(HeadError::Framing(_))), "{:?}: {:?}", got, head);
        }

        /// A bare LF or CR anywhere in an otherwise valid head is refused.
        #[test]
        fn fuzz_a_bare_line_end_anywhere_is_refused(at in any::<prop::sample::Index>(), cr in any::<bool>()) {
            let head = b"GET /x HTTP/1.1\r\nHost: a\r\nX-One: 1\r\n\r\n";
            // Remove one CR (leaving a bare LF) or one LF (leaving a bare CR).
            let positions: Vec<usize> = head.iter().enumerate()
                .filter(|(_, b)| **b == if cr { b'\r' } else { b'\n' }).map(|(i, _)| i).collect();
            let mut broken = head.to_vec();
            broken.remove(positions[at.index(positions.len())]);
            let got = HeadScanner::default().scan(&broken, LIMITS);
            let refused = match got {
                Err(HeadError::Malformed(_)) => true,
                // A removed final LF leaves a head that has not ended yet.
                Ok(Scan::Partial) => broken.ends_with(b"\r"),
                _ => false,
            };
            prop_assert!(refused, "{:?} for {:?}", got, String::from_utf8_lossy(&broken));
        }
    }
}
