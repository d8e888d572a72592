//! The `charset` a `Content-Type` names, read as every client and server may read it.
//!
//! The proxy reads bodies as UTF-8. A peer that decodes a body with the charset its type names
//! reads other text where that charset spells ASCII bytes differently (UTF-7's `+…-` runs,
//! ISO-2022's escapes, EBCDIC, UTF-16): a JSON key, a tool name or a model the proxy never saw.

/// UTF-8, as the charset of a body the proxy reads and a peer decodes (an MCP server's answer).
pub const UTF8: &[&[u8]] = &[b"utf8"];

/// Charsets in which every byte the proxy reads as ASCII is that ASCII character, and every
/// other byte a character no JSON or form syntax uses, so a body read as UTF-8 has the same
/// structure in them (a request body, which servers decode with its type's charset), compared
/// by [`spelled_alike`]: UTF-8, US-ASCII, and the single-byte ISO 8859 parts, Windows code pages
/// 1250-1258 and KOI8 (ASCII below 0x80 in all of them).
pub const ASCII_PRESERVING: &[&[u8]] = &[
    b"utf8",
    b"usascii",
    b"ascii",
    b"iso88591",
    b"iso88592",
    b"iso88593",
    b"iso88594",
    b"iso88595",
    b"iso88596",
    b"iso88597",
    b"iso88598",
    b"iso88599",
    b"iso885910",
    b"iso885911",
    b"iso885913",
    b"iso885914",
    b"iso885915",
    b"iso885916",
    b"latin1",
    b"latin2",
    b"latin9",
    b"l1",
    b"windows1250",
    b"windows1251",
    b"windows1252",
    b"windows1253",
    b"windows1254",
    b"windows1255",
    b"windows1256",
    b"windows1257",
    b"windows1258",
    b"cp1250",
    b"cp1251",
    b"cp1252",
    b"cp1253",
    b"cp1254",
    b"cp1255",
    b"cp1256",
    b"cp1257",
    b"cp1258",
    b"koi8r",
    b"koi8u",
];

/// Whether a charset's name is `name` (lowercase, letters and digits only) however it is
/// spelled: ASCII case, `-`, `_`, `.`, spaces ignored (`ISO_8859-1`, `latin-1`, `UTF8`), as
/// decoders' alias tables take them.
fn spelled_alike(value: &[u8], name: &[u8]) -> bool {
    let mut letters = value
        .iter()
        .filter(|b| !matches!(b, b'-' | b'_' | b'.' | b' '))
        .map(u8::to_ascii_lowercase);
    name.iter().all(|n| letters.next() == Some(*n)) && letters.next().is_none()
}

/// Whether `content_type` names no charset, or one of `accepted` (see [`spelled_alike`]).
///
/// SECURITY: every parameter a peer may take for the charset counts: RFC 2231's `charset*`
/// and `charset*0` too (Python's `email` reads `charset*=''utf-7`, and httpx decodes an event
/// stream with it), and any other spelling of `charset` this reading does not take apart
/// refuses the type.
pub fn names_none_but(content_type: &[u8], accepted: &[&[u8]]) -> bool {
    let mut read = 0;
    let all_accepted = content_type.split(|b| *b == b';').skip(1).all(|param| {
        let Some(eq) = param.iter().position(|b| *b == b'=') else {
            return true;
        };
        let (name, value) = (param[..eq].trim_ascii(), param[eq + 1..].trim_ascii());
        if !name.eq_ignore_ascii_case(b"charset") {
            return true;
        }
        read += 1;
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value);
        accepted.iter().any(|a| spelled_alike(value, a))
    });
    let named = content_type
        .windows(b"charset".len())
        .filter(|w| w.eq_ignore_ascii_case(b"charset"))
        .count();
    all_accepted && named == read
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `accepted` takes every type of `ok` and none of `not`.
    fn reads(accepted: &[&[u8]], ok: &[&str], not: &[&str]) {
        for t in ok {
            assert!(names_none_but(t.as_bytes(), accepted), "{t}");
        }
        for t in not {
            assert!(!names_none_but(t.as_bytes(), accepted), "{t}");
        }
    }

    #[test]
    fn only_utf8_or_no_charset_is_read() {
        let ok = [
            "text/event-stream",
            "text/event-stream; charset=utf-8",
            "application/json;charset=UTF-8",
            "application/json; charset=\"utf-8\"",
            "text/event-stream; charset=utf8; x=y",
        ];
        let not = [
            "text/event-stream; charset=utf-16",
            "text/event-stream;charset=UTF-16BE",
            "application/json; charset=\"utf-32\"",
            "text/event-stream; x=y; Charset=cp500",
            // RFC 2231's forms, which Python's `email` (and so httpx) reads as the charset.
            "text/event-stream; charset*=''utf-7",
            "text/event-stream; charset*0=utf-7",
            "text/event-stream; charset*0*=''utf-7",
            "text/event-stream; charset=utf-8; charset*=''utf-7",
            // Any other spelling this reading does not take apart.
            "text/event-stream; x=\"a;charset=utf-7\"",
            "text/event-stream, charset=utf-7",
            "text/event-stream; charset",
        ];
        reads(UTF8, &ok, &not);
    }

    #[test]
    fn request_bodies_may_name_ascii_preserving_charsets_only() {
        let ok = [
            "application/x-www-form-urlencoded; charset=ISO-8859-1",
            "application/json; charset=us-ascii",
            "application/json; charset=\"windows-1252\"",
            "text/plain; charset=latin-1",
            "text/plain; charset=ISO_8859-1",
            "text/plain; charset=iso8859-1",
            "text/plain; charset=cp1252",
            "text/csv; charset=windows-1250",
            "text/plain; charset=UTF8",
        ];
        let not = [
            "application/json; charset=utf-7",
            "application/json; charset=iso-2022-jp",
            "application/json; charset=shift_jis",
            "application/json; charset=gbk",
            "application/json; charset=cp037",
            "application/json; charset*=''utf-7",
            "application/json; charset=utf-16be",
            "application/json; charset=utf-8x",
            "application/json; charset=x-utf-8",
            "application/json; charset=",
        ];
        reads(ASCII_PRESERVING, &ok, &not);
    }
}
