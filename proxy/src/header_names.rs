//! Headers as servers read them: names (a server may read `_` as `-`), and the values of the
//! headers the proxy decides on, read so that the proxy and the upstream cannot read two
//! different requests into one: every line of a list header, and exactly one line of a
//! singleton (two lines are refused, never read as the first).

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Whether header names `a` and `b` are the same once `_` is read as `-` (both are lowercase):
/// a server that reads headers CGI-style (`HTTP_X_TENANT_ID`) takes `x_tenant_id` for
/// `x-tenant-id`.
pub fn same_but_underscores(a: &http::HeaderName, b: &http::HeaderName) -> bool {
    let (a, b) = (a.as_str().as_bytes(), b.as_str().as_bytes());
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            let dash = |c: u8| if c == b'_' { b'-' } else { c };
            dash(*x) == dash(*y)
        })
}

/// A header read by its one value was given more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeated;

/// The one value of header `name`, if any; two lines are [`Repeated`].
pub fn sole(
    headers: &HeaderMap,
    name: impl http::header::AsHeaderName,
) -> Result<Option<&HeaderValue>, Repeated> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (first, None) => Ok(first),
        (Some(_), Some(_)) | (None, Some(_)) => Err(Repeated),
    }
}

/// The request headers the proxy decides on by their one value: the authority (`Host`), the
/// body's type (which readers look for credentials, `_method` and the model in it, and a
/// multipart body's boundary) and its length. Each is a singleton field (RFC 9110 §5.3): given
/// twice, the proxy would read one line while the upstream reads another (or both joined).
pub const DECIDED_ONCE: [HeaderName; 3] = [
    http::header::HOST,
    http::header::CONTENT_TYPE,
    http::header::CONTENT_LENGTH,
];

/// Why a request's headers have more than one reading, if they do: a header of
/// [`DECIDED_ONCE`] given twice, or a `Content-Type` that is not text, lists several types
/// (`multipart/form-data; boundary=x, application/json`) or names a parameter twice
/// (`boundary=a; boundary=b`, `name` and `name*` alike: parsers keep either one).
///
/// SECURITY: the caller refuses such a request before anything reads these headers.
pub fn ambiguity(headers: &HeaderMap) -> Option<String> {
    for name in &DECIDED_ONCE {
        if sole(headers, name).is_err() {
            return Some(format!(
                "`{name}` is given more than once; the proxy and the upstream could each read \
                 another"
            ));
        }
    }
    let content_type = headers.get(http::header::CONTENT_TYPE)?;
    let Ok(text) = content_type.to_str() else {
        return Some("the `Content-Type` is not text".into());
    };
    media_type_ambiguity(text).map(|why| format!("the `Content-Type` {why}"))
}

/// Why a media type has more than one reading (see [`ambiguity`]), if it does.
fn media_type_ambiguity(value: &str) -> Option<&'static str> {
    let mut names: Vec<String> = Vec::new();
    let mut name = String::new();
    // Where the walk is: the type, a parameter's name, its value (quoted or not).
    let (mut in_name, mut in_value, mut quoted, mut escaped) = (false, false, false, false);
    for c in value.chars() {
        if quoted {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                _ => {}
            }
            continue;
        }
        match c {
            ',' => return Some("lists more than one media type"),
            ';' => {
                if in_name || in_value {
                    let key = name.trim().trim_end_matches('*').to_ascii_lowercase();
                    if !key.is_empty() {
                        if names.contains(&key) {
                            return Some("names a parameter more than once");
                        }
                        names.push(key);
                    }
                }
                name.clear();
                (in_name, in_value) = (true, false);
            }
            '=' if in_name => (in_name, in_value) = (false, true),
            '"' if in_value => quoted = true,
            c if in_name => name.push(c),
            _ => {}
        }
    }
    if quoted {
        return Some("has an unterminated quoted parameter");
    }
    let key = name.trim().trim_end_matches('*').to_ascii_lowercase();
    ((in_name || in_value) && !key.is_empty() && names.contains(&key))
        .then_some("names a parameter more than once")
}

/// Whether an answer can carry no body (RFC 9110 §6.4.1): one to `HEAD`, an informational one,
/// a 204, a 304.
pub fn bodyless_answer(head_request: bool, status: u16) -> bool {
    head_request || status < 200 || status == 204 || status == 304
}

/// Whether a body reaches its reader in a coding other than `identity`: any coding on any line
/// of `Content-Encoding` (a list header: every line counts, as every comma-separated entry; a
/// line that is not text counts as a coding), or any `Transfer-Encoding` but one line of just
/// `chunked`, the one framing pingora removes.
///
/// SECURITY: a transfer coding is the connection's, so it reaches the proxy's readers as it
/// was sent: an answer `Transfer-Encoding: gzip, chunked` hid a secret echoed in it from the
/// scrubber, and a list from the MCP filter, while curl decodes it. And pingora frames a body
/// by the last coding alone: under `chunked, identity` (or `chunked ,`, or `chunked` and
/// `identity` on two lines) it read the body to the connection's end with its chunk framing
/// in it, so an echo split by chunk-size lines passed the scrubber, and clients that undo
/// the framing read it whole.
pub fn content_coded(headers: &HeaderMap) -> bool {
    let content = headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|v| {
            v.to_str().map_or(true, |s| {
                s.split(',')
                    .map(str::trim)
                    .any(|t| !t.is_empty() && !t.eq_ignore_ascii_case("identity"))
            })
        });
    let mut transfer = headers.get_all(http::header::TRANSFER_ENCODING).iter();
    let framed = match (transfer.next(), transfer.next()) {
        (None, _) => false,
        (Some(only), None) => !only
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => true,
    };
    content || framed
}

/// Whether a `Content-Type` line names a charset in which the proxy cannot read ASCII text as
/// its bytes ([`crate::charset::ASCII_PRESERVING`]): UTF-16, UTF-7, EBCDIC, Python's
/// `unicode_escape` (a client decoding `\x73k-…` reads `sk-…`), any other.
pub fn foreign_charset(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::CONTENT_TYPE)
        .iter()
        .any(|t| !crate::charset::names_none_but(t.as_bytes(), crate::charset::ASCII_PRESERVING))
}

/// A token character (RFC 9110 `tchar`): what a method, a header name or a chunk extension's
/// name is made of.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    type Pairs<'a> = &'a [(&'a str, &'a [u8])];

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn every_line_of_content_encoding_counts() {
        for (name, pairs, coded) in [
            ("none", &[][..], false),
            (
                "identity",
                &[("content-encoding", &b"identity"[..])][..],
                false,
            ),
            ("empty", &[("content-encoding", &b""[..])][..], false),
            ("gzip", &[("content-encoding", &b"gzip"[..])][..], true),
            (
                "in a list",
                &[("content-encoding", &b"identity, gzip"[..])][..],
                true,
            ),
            (
                "identity then gzip",
                &[
                    ("content-encoding", &b"identity"[..]),
                    ("content-encoding", &b"gzip"[..]),
                ][..],
                true,
            ),
            (
                "gzip then identity",
                &[
                    ("content-encoding", &b"gzip"[..]),
                    ("content-encoding", &b"IDENTITY"[..]),
                ][..],
                true,
            ),
            (
                "not text",
                &[("content-encoding", &b"gz\xffip"[..])][..],
                true,
            ),
            // Transfer codings reach the readers as sent, but for one `chunked`; pingora frames
            // by the last coding alone.
            (
                "chunked",
                &[("transfer-encoding", &b"chunked"[..])][..],
                false,
            ),
            (
                "Chunked",
                &[("transfer-encoding", &b" Chunked "[..])][..],
                false,
            ),
            (
                "chunked, identity",
                &[("transfer-encoding", &b"chunked, identity"[..])][..],
                true,
            ),
            (
                "chunked and an empty coding",
                &[("transfer-encoding", &b"chunked ,"[..])][..],
                true,
            ),
            (
                "chunked, then identity",
                &[
                    ("transfer-encoding", &b"chunked"[..]),
                    ("transfer-encoding", &b"identity"[..]),
                ][..],
                true,
            ),
            (
                "chunked twice",
                &[("transfer-encoding", &b"chunked, chunked"[..])][..],
                true,
            ),
            (
                "identity",
                &[("transfer-encoding", &b"identity"[..])][..],
                true,
            ),
            (
                "gzip, chunked",
                &[("transfer-encoding", &b"gzip, chunked"[..])][..],
                true,
            ),
            (
                "deflate on its own line",
                &[
                    ("transfer-encoding", &b"deflate"[..]),
                    ("transfer-encoding", &b"Chunked"[..]),
                ][..],
                true,
            ),
        ] {
            assert_eq!(content_coded(&headers(pairs)), coded, "{name}");
        }
    }

    #[test]
    fn a_header_decided_by_one_value_has_one_reading_or_is_refused() {
        let ok: &[Pairs<'_>] = &[
            &[],
            &[("host", b"a"), ("content-length", b"3")],
            &[("content-type", b"application/json")],
            &[("content-type", b"multipart/form-data; boundary=XX")],
            &[(
                "content-type",
                b"multipart/form-data; boundary=\"a,b;boundary=c\"",
            )],
            &[("content-type", b"text/plain; charset=utf-8; format=flowed")],
            &[("content-type", b"text/plain;")],
            // Lines of other headers may repeat.
            &[("accept", b"a"), ("accept", b"b")],
        ];
        for pairs in ok {
            assert_eq!(ambiguity(&headers(pairs)), None, "{pairs:?}");
        }
        let refused: &[(Pairs<'_>, &str)] = &[
            (
                &[("host", b"a"), ("host", b"b")],
                "`host` is given more than once",
            ),
            (
                &[
                    ("content-type", b"multipart/form-data; boundary=XX"),
                    ("content-type", b"application/json"),
                ],
                "`content-type` is given more than once",
            ),
            (
                &[("content-length", b"3"), ("content-length", b"3")],
                "`content-length` is given more than once",
            ),
            (
                &[(
                    "content-type",
                    b"multipart/form-data; boundary=XX; boundary=YY",
                )],
                "names a parameter more than once",
            ),
            (
                &[(
                    "content-type",
                    b"multipart/form-data; BOUNDARY=XX;boundary*=UTF-8''YY",
                )],
                "names a parameter more than once",
            ),
            (
                &[(
                    "content-type",
                    b"multipart/form-data; boundary=XX, application/json",
                )],
                "lists more than one media type",
            ),
            (
                &[("content-type", b"multipart/form-data; boundary=\"XX")],
                "unterminated",
            ),
            (&[("content-type", b"text/plain; x=\xe9")], "is not text"),
        ];
        for (pairs, why) in refused {
            let got = ambiguity(&headers(pairs)).expect("refused");
            assert!(got.contains(why), "{pairs:?}: {got}");
        }
        assert_eq!(sole(&headers(&[]), "host"), Ok(None));
        assert!(sole(&headers(&[("host", b"a"), ("host", b"a")]), "host").is_err());
    }
}
