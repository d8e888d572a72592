//! The names a `multipart/form-data` part gives itself, as the servers that read it may.
//!
//! A part's field name is a parameter of its `Content-Disposition` header: `name="…"` (quoted,
//! with `\` escapes), `name=…`, or RFC 2231 / 5987 `name*=charset'lang'value` (percent-encoded,
//! which Go's `mime` and others decode). A part may carry several of them (two
//! `Content-Disposition` lines, `name` beside `name*`), and parsers keep different ones, so
//! every check on field names looks at all of them.

/// Every name `head` (a part's header lines) gives its part, in order: each `name` parameter of
/// each `Content-Disposition` line, unquoted, and each `name*`, percent-decoded.
#[cfg(test)]
pub fn of(head: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    each(head, |name| {
        names.push(name);
        true
    });
    names
}

/// Hands each name `head` gives its part to `visit`, in the order of [`of`], until `visit`
/// says `false`. SECURITY (memory): the names are not collected, so a part that names itself
/// a million times costs one name at a time.
pub fn each(head: &[u8], mut visit: impl FnMut(String) -> bool) {
    let text = String::from_utf8_lossy(head);
    for line in text.lines().filter(|l| {
        l.get(..20)
            .is_some_and(|p| p.eq_ignore_ascii_case("content-disposition:"))
    }) {
        // A line whose quotes do not pair as parsers read them is read as split at every `;`
        // (the proxy refuses such a part anyway, see `body::each_part`).
        let split = params(line).unwrap_or_else(|| line.split(';').collect());
        for param in split.into_iter().skip(1) {
            let Some((k, v)) = param.split_once('=') else {
                continue;
            };
            let (k, v) = (k.trim(), v.trim());
            let name = if k.eq_ignore_ascii_case("name") {
                unquote(v)
            } else if k.eq_ignore_ascii_case("name*") {
                // `charset'language'value`, the value percent-encoded.
                let value = unquote(v);
                let encoded = value.rsplit('\'').next().unwrap_or(&value);
                let decoded: Vec<u8> =
                    percent_encoding::percent_decode(encoded.as_bytes()).collect();
                String::from_utf8_lossy(&decoded).into_owned()
            } else {
                continue;
            };
            if !visit(name) {
                return;
            }
        }
    }
}

/// `line` split at each `;` outside a quoted string (a `filename="a; name=b"` is one
/// parameter, as Go's `mime` and Werkzeug read it). `None` when its quotes have more than one
/// reading: a quote that does not open a value (`x=a"b`), or one never closed.
pub fn params(line: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    // The last character outside quotes that was not a space: a quote opens only after `=`.
    let mut last = ' ';
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' if quoted => {
                quoted = false;
                last = '"';
            }
            '"' if last == '=' => quoted = true,
            '"' => return None,
            ';' if !quoted => {
                out.push(&line[start..i]);
                start = i + 1;
                last = ';';
            }
            c if !quoted && !c.is_whitespace() => last = c,
            _ => {}
        }
    }
    if quoted {
        return None;
    }
    out.push(&line[start..]);
    Some(out)
}

/// A parameter value as a parser reads it: a quoted string unescaped (`\x` is `x`), anything
/// else as it is.
fn unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('"') else {
        return v.to_string();
    };
    let inner = inner.strip_suffix('"').unwrap_or(inner);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_of_every_disposition_line_is_read() {
        let names = |head: &str| of(head.as_bytes());
        assert_eq!(
            names("Content-Disposition: form-data; name=\"model\""),
            ["model"]
        );
        assert_eq!(
            names("content-disposition: form-data; name=model"),
            ["model"]
        );
        assert_eq!(
            names("Content-Disposition: form-data; name=\"mo\\del\""),
            ["model"]
        );
        assert_eq!(
            names("Content-Disposition: form-data; name*=UTF-8''mod%65l"),
            ["model"]
        );
        assert_eq!(
            names("Content-Disposition: form-data; name=\"file\"; name*=UTF-8''model"),
            ["file", "model"]
        );
        assert_eq!(
            names(
                "Content-Disposition: form-data; name=\"a\"\r\nContent-Disposition: form-data; name=\"b\""
            ),
            ["a", "b"]
        );
        assert!(names("Content-Type: text/plain").is_empty());
    }
}
