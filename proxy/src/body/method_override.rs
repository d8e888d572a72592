//! Method overrides in bodies (`_method`): a request decided as one method and run as another.

use super::{media_type, BodyError, BOM};

/// SECURITY: a body that carries `_method` is run by web frameworks as that method, not the
/// request line's, which is what the proxy decided on: refused. Each reader looks where its
/// framework does, so this looks wherever any of them does:
/// - a form, URL-encoded or multipart, or a body without a `Content-Type` (Rack, hence Rails and
///   Sinatra, reads that as a form);
/// - any `multipart/*` body, however its parts are framed (PHP's parser takes bare `\n` line
///   ends): a part named `_method` anywhere in it;
/// - a JSON object's top-level `_method` (Laravel reads JSON input as it reads forms);
/// - in any ASCII case (`_METHOD`: ASP.NET Core's form collection ignores case).
///
/// The name is looked for first, so bodies that do not carry it are not parsed. `body` is what
/// the server reads: its `Content-Encoding` undone (see [`super::classify`]).
pub(super) fn refuse_method_override(
    body: &[u8],
    headers: &http::HeaderMap,
) -> Result<(), BodyError> {
    let name = crate::front::METHOD_PARAMETER;
    // Most bodies cannot spell it in any way a framework reads (as it is, `.method`,
    // `[method`, or with letters escaped in a form or in JSON): nothing to parse.
    let may_spell = crate::front::contains_ignoring_case(body, b"ethod")
        || memchr::memchr(b'%', body).is_some()
        || memchr::memmem::find(body, b"\\u").is_some();
    if !may_spell {
        return Ok(());
    }
    let found = match media_type(headers).as_deref() {
        Some(m) if m.starts_with("multipart/") => names_a_part(body),
        // Rack reads a body without a type (or with an empty one) as a form.
        None | Some("" | "application/x-www-form-urlencoded") => {
            form_has_method(body) || json_has_method(body)
        }
        Some(_) => json_has_method(body),
    };
    if found {
        return Err(BodyError::Malformed(format!(
            "the body's `{name}` asks the upstream for another method than the request line's, \
             which is what the proxy decides on, or the body names it in a way that cannot be \
             checked; send the request with that method"
        )));
    }
    Ok(())
}

/// Whether a URL-encoded form has a method field (`&` or `;` between pairs).
fn form_has_method(body: &[u8]) -> bool {
    crate::form_pairs::lenient(body).any(|(k, _)| crate::front::is_method_parameter(&k))
}

/// Whether a multipart body, however it is framed, names a part the method field: a
/// `name="…"`, `name=…` or `name*=…''…` parameter with that value, compared ignoring the
/// parameter's case.
///
/// SECURITY (CPU): in time linear in the body. Each `name=` value runs to the next `;`, CR or
/// LF, and a body with none of them and a `name=` every few bytes made every value run to the
/// end (256 KiB took 11 s of a shared worker, before the policy was asked): the next separator
/// and the last `'` before it are found once for all the values that end there, and of a value
/// only its first bytes are read (the name a framework reads ends at a NUL or a `[`).
fn names_a_part(body: &[u8]) -> bool {
    let lower = body.to_ascii_lowercase();
    // The separator the values seen so far end at, where the spaces before it begin, and the
    // last `'` before it (from where the first of those values began).
    let mut end = 0;
    let mut tail = 0;
    let mut quote: Option<usize> = None;
    let mut searched = false;
    memchr::memmem::find_iter(&lower, b"name").any(|at| {
        let rest = &body[at + 4..];
        let rest = rest.strip_prefix(b"*").unwrap_or(rest);
        let Some(value) = rest.trim_ascii_start().strip_prefix(b"=") else {
            return false;
        };
        let value = value.trim_ascii_start();
        let from = body.len() - value.len();
        if !searched || end < from {
            end = memchr::memchr3(b';', b'\r', b'\n', value).map_or(body.len(), |e| from + e);
            tail = from + body[from..end].trim_ascii_end().len();
            quote = memchr::memrchr(b'\'', &body[from..end]).map(|q| from + q);
            searched = true;
        }
        // (`from` is past leading spaces already; a value inside the trailing ones is empty.)
        let mut value = &body[from..tail.max(from)];
        // RFC 5987: `charset'lang'value`.
        if let Some(q) = quote.filter(|q| *q >= from) {
            let cut = q + 1 - from;
            value = value.get(cut..).unwrap_or_default();
        }
        let value = value.strip_prefix(b"\"").unwrap_or(value);
        let value = value.strip_suffix(b"\"").unwrap_or(value);
        names_the_method(value)
    })
}

/// Whether a part's name is the method field to some framework (see
/// [`crate::front::is_method_parameter`]), reading past its leading spaces only its first bytes:
/// a name that is the method field is seven bytes before a NUL, a `[` or its end. (A name that
/// is not UTF-8 is read as its replacement characters: never the method field's name, unless
/// only what follows a `[` is not, which frameworks still read as the field.)
fn names_the_method(name: &[u8]) -> bool {
    const READ: usize = 64;
    let mut start = 0;
    while let Some(&first) = name.get(start) {
        let width = match first {
            0x00..=0x7f => 1,
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            _ => 4,
        };
        let Some(c) = name
            .get(start..start + width)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.chars().next())
        else {
            break;
        };
        if !c.is_whitespace() {
            break;
        }
        start += width;
    }
    let head = &name[start..name.len().min(start + READ)];
    crate::front::is_method_parameter(&String::from_utf8_lossy(head))
}

/// Whether a body shaped like a JSON object has a top-level method member, or cannot be read
/// far enough to tell (it is then refused: a reader more lenient than this one, or one without
/// its limits, might find the member). The keys are found by a scan, not a parse, so no depth or
/// number (`1e400`) stops it; each key is decoded (`\u005f…`) before it is compared.
fn json_has_method(body: &[u8]) -> bool {
    let body = body.strip_prefix(BOM).unwrap_or(body);
    let Some(start) = body.iter().position(|b| !b.is_ascii_whitespace()) else {
        return false;
    };
    if body[start] != b'{' {
        return false;
    }
    let name = crate::front::METHOD_PARAMETER;
    let mut depth = 0usize;
    let mut expect_key = false;
    let mut i = start;
    while i < body.len() {
        match body[i] {
            b'"' => {
                let open = i;
                i += 1;
                loop {
                    match body.get(i) {
                        None => return true,
                        Some(b'\\') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
                if depth == 1 && expect_key {
                    match serde_json::from_slice::<String>(&body[open..=i]) {
                        Ok(key) if key.eq_ignore_ascii_case(name) => return true,
                        Ok(_) => {}
                        Err(_) => return true,
                    }
                }
                expect_key = false;
            }
            b'{' => {
                depth += 1;
                expect_key = depth == 1;
            }
            b'[' => depth += 1,
            b'}' | b']' => {
                let Some(d) = depth.checked_sub(1) else {
                    return true;
                };
                depth = d;
            }
            b',' => expect_key = depth == 1,
            _ => {}
        }
        i += 1;
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// The multipart `_method` check reads each `name=` value once, however many share one
    /// line: a body of nothing but `name=` took quadratic time. What it finds is unchanged:
    /// the last of many names on a line, a long name after `_method[`, a name led by many
    /// spaces of any script.
    #[test]
    fn many_names_on_one_line_are_read_in_one_pass() {
        let many = "name=".repeat(200_000);
        assert!(!names_a_part(many.as_bytes()));
        for found in [
            format!("{many}name=_method"),
            format!("name=\"_method[{}]\"", "x".repeat(100_000)),
            format!("name=\"{}_method\"", "\u{3000}".repeat(40)),
            format!("{many}name*=utf-8''_method"),
            format!("name=a'b{}; name=_method", "'c".repeat(1000)),
        ] {
            assert!(
                names_a_part(found.as_bytes()),
                "{}",
                &found[found.len().saturating_sub(40)..]
            );
        }
        // Values that share one run of trailing spaces trim it once.
        let spaces = " ".repeat(1_000_000);
        assert!(names_a_part(
            format!("{many}name=_method{spaces}").as_bytes()
        ));
        for not_found in [
            format!("name=\"_method{}\"", "x".repeat(100)),
            format!("{many}name=_methods"),
            format!("{many}{spaces};x"),
        ] {
            assert!(!names_a_part(not_found.as_bytes()));
        }
    }
}
