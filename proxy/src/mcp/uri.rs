//! The resource URIs an MCP request names, as the policy sees them and as the server reads them.
//!
//! Policies decide a resource by its URI as written (`context.uri like "file:///etc/*"`), but a
//! server reads it through a URL parser, and the common ones (WHATWG: Node's `new URL`, the
//! `url` crate behind pydantic's `AnyUrl`) rewrite it first: they drop TAB, LF and CR anywhere,
//! strip leading and trailing C0 controls and spaces, and read `\` as `/` in the special schemes
//! (`file`, `http`, `https`, `ws`, `wss`, `ftp`). `file:///srv/data/x\..\..\etc/passwd`,
//! `file:///e<TAB>tc/passwd` and ` file:///etc/passwd` match none of a policy's patterns and are
//! `/etc/passwd` to such a server. SECURITY: so a URI holding any character RFC 3986 never
//! allows unescaped and these parsers remove or rewrite (a control character, DEL, a backslash
//! in any scheme, whitespace at either end) is refused before any policy sees it: what the
//! policy decides is then what the server reads. A URI with userinfo (`https://alice:pw@host/`)
//! is refused too, as a request target with userinfo is: credentials go in `$CRED{}` handles,
//! never in a name that is decided, audited and logged.

/// Why `uri` cannot be decided as the server would read it, if it cannot (the text names no
/// part of the URI, which is the agent's to see and may hold a secret).
pub fn refusal(uri: &str) -> Option<&'static str> {
    if uri.chars().any(char::is_control) {
        return Some("holds a control character, which URL parsers drop or rewrite");
    }
    if uri.starts_with(char::is_whitespace) || uri.ends_with(char::is_whitespace) {
        return Some("begins or ends with whitespace, which URL parsers strip");
    }
    if uri.contains('\\') {
        return Some("holds a backslash, which URL parsers read as `/`");
    }
    if userinfo(uri).is_some() {
        return Some("holds userinfo (credentials go in `$CRED{}` handles, not in URIs)");
    }
    None
}

/// `uri` as the server reads it, which is what the policy decides: WHATWG URL parsing (the
/// `url` crate, as Node's `new URL` and pydantic read it) lower-cases the scheme and host, maps
/// a host through IDNA (fullwidth letters, a soft hyphen), decodes `%2E` in it, drops a default
/// or empty port, resolves `.` and `..` segments (`%2e` too, and before a query:
/// `file:///srv/data/..?x` is `file:///srv/?x`), and gives an empty path a `/`. A URI such a
/// parser refuses, or a relative one, is decided as written.
///
/// SECURITY: `https://INTERNAL.example/secret`, `docs://private:/salaries` or
/// `https:///internal.example/secret` would otherwise match none of a policy's forbids (or
/// escape a permitted root) while the server reads the forbidden resource.
pub fn as_read(uri: &str) -> String {
    match url::Url::parse(uri) {
        Ok(parsed) => parsed.into(),
        Err(_) => uri.to_string(),
    }
}

/// `uri` as the audit record and logs show it: no userinfo, query values removed (like a
/// request's path, see [`crate::target::audit_path`]), no fragment text.
pub fn audit(uri: &str) -> String {
    let without_user = match userinfo(uri) {
        Some(span) => format!("{}{}", &uri[..span.start], &uri[span.end..]),
        None => uri.to_string(),
    };
    // A fragment may carry a token too (`#access_token=...`); its presence is kept.
    let (rest, fragment) = match without_user.split_once('#') {
        Some((rest, _)) => (rest, "#"),
        None => (without_user.as_str(), ""),
    };
    format!("{}{fragment}", crate::target::audit_path(rest))
}

/// Schemes a WHATWG parser reads with an authority however many slashes (or none) follow the
/// colon.
const SPECIAL: &[&str] = &["file", "http", "https", "ws", "wss", "ftp"];

/// Where the userinfo (through its `@`) of `uri`'s authority is, if it has one.
fn userinfo(uri: &str) -> Option<std::ops::Range<usize>> {
    let (scheme, rest) = uri.split_once(':')?;
    let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid {
        return None;
    }
    let after = if SPECIAL.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
        rest.trim_start_matches(['/', '\\'])
    } else {
        rest.strip_prefix("//")?
    };
    let start = uri.len() - after.len();
    let authority = after.split(['/', '?', '#', '\\']).next().unwrap_or("");
    let at = authority.rfind('@')?;
    Some(start..start + at + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uri_is_decided_as_url_parsers_read_it() {
        for (written, read) in [
            (
                "https://INTERNAL.example/secret",
                "https://internal.example/secret",
            ),
            (
                "https://internal.example:443/secret",
                "https://internal.example/secret",
            ),
            (
                "https://internal.example:/secret",
                "https://internal.example/secret",
            ),
            (
                "https://ｉｎｔｅｒｎａｌ.example/secret",
                "https://internal.example/secret",
            ),
            (
                "https://inter\u{ad}nal.example/secret",
                "https://internal.example/secret",
            ),
            (
                "https://internal%2Eexample/secret",
                "https://internal.example/secret",
            ),
            (
                "https:///internal.example/secret",
                "https://internal.example/secret",
            ),
            ("docs://private:/salaries", "docs://private/salaries"),
            ("FILE:///etc/passwd", "file:///etc/passwd"),
            ("file:///srv/data/..?x", "file:///srv/?x"),
            (
                "file:///srv/data/%2e%2e/%2E%2E/etc/passwd",
                "file:///etc/passwd",
            ),
            ("https://example.com", "https://example.com/"),
            ("file:///srv/data/report.txt", "file:///srv/data/report.txt"),
            ("notes/today", "notes/today"),
        ] {
            assert_eq!(as_read(written), read, "{written}");
        }
    }

    #[test]
    fn uris_parsers_rewrite_are_refused() {
        for uri in [
            "file:///srv/data/x\\..\\..\\..\\etc\\passwd",
            "file:///srv/data/.\t./.\t./etc/passwd",
            "file:///e\ttc/passwd",
            "file:///e\ntc/passwd",
            "file:///e\rtc/passwd",
            " file:///etc/passwd",
            "\tfile:///etc/passwd",
            "file:///etc/passwd ",
            "file:///etc/passwd\t",
            "file:///etc/passwd\u{0}",
            "file:///etc/passwd\u{7f}",
            "file:///etc/passwd\u{85}",
            "\u{a0}file:///etc/passwd",
            "docs://pri\tvate/salaries",
            "docs://private\\salaries",
            "https://alice:PW@example.com/doc?token=Q",
            "https:alice@example.com/doc",
            "http:\\\\alice@example.com/doc",
            "docs://bob@private/salaries",
        ] {
            assert!(refusal(uri).is_some(), "{uri:?}");
        }
        for uri in [
            "file:///srv/data/x",
            "docs://private/salaries",
            "docs://{path}",
            "https://example.com/doc?token=Q",
            "mailto:alice@example.com",
            "docs://a/b@c",
            "urn:isbn:0451450523",
            "docs://a b",
            "",
        ] {
            assert_eq!(refusal(uri), None, "{uri:?}");
        }
    }

    #[test]
    fn audited_uris_keep_no_userinfo_query_value_or_fragment() {
        for (uri, audited) in [
            (
                "https://alice:PW@example.com/doc?token=Q",
                "https://example.com/doc?token",
            ),
            ("https:alice:PW@example.com/doc", "https:example.com/doc"),
            ("docs://u@host/a?x=1&y", "docs://host/a?x&="),
            ("docs://host/a#access_token=s", "docs://host/a#"),
            ("docs://host/a?k=v#f", "docs://host/a?k#"),
            ("file:///srv/data/x", "file:///srv/data/x"),
            ("mailto:alice@example.com", "mailto:alice@example.com"),
        ] {
            assert_eq!(audit(uri), audited, "{uri}");
        }
    }
}
