//! Finding the agent's own keys: literals in the credential positions of a request body or query
//! toward a destination whose keys the proxy manages (see [`super::positions`]).
//!
//! The readers here are deliberately lenient, and every one that can read a body reads it,
//! because the upstream's parser decides what a body means, not the `Content-Type`: a body that
//! looks like JSON is read as JSON tokens whatever its type (escapes decoded, at any depth,
//! across several top-level values, past trailing garbage, `NaN` and the like); every body but
//! JSON declared JSON is read as `k=v` pairs split on `&` and `;` (what form parsers, old and
//! new, accept); a body is read by its parts with the boundary of a declared `multipart/*` type
//! and with the one its first line names (each part by every name it is given). Each credential
//! field must hold one `$CRED{}` handle or nothing: a literal is refused (or, in strip mode,
//! removed), a field given twice in one object, form or query is refused as repeated.

use std::borrow::Cow;
use std::ops::Range;

use super::apply::{percent_decode, CredentialDeny, ScanGap};
use super::positions::{holding, normalize_field, CredentialPositions, Holding};

/// What to do with a literal found in a credential position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnLiteral {
    /// Refuse the request.
    Refuse,
    /// Remove it (JSON: the value becomes `null`; pairs and parts: removed).
    Strip,
}

/// Checks a request body's credential fields with every reader that can read it, whatever its
/// `Content-Type` says: the upstream's parser decides what the body means, and a declared type
/// is only a hint to it. `Ok(Some(new))` when literals were stripped.
///
/// SECURITY: the readers run one after the other on the body as the previous one left it:
/// - multipart, with each boundary a parser could take: the declared one (any `multipart/*`
///   type) and the one the body's first line names;
/// - JSON, when the body looks like JSON (after a BOM);
/// - `k=v` pairs, on every body but a JSON one declared JSON (no server reads that as a form;
///   a body without a type is a form to Rack, hence Rails, and a multipart type does not stop
///   a lenient reader from taking a form).
pub(crate) fn check_body(
    body: &[u8],
    content_type: Option<&str>,
    positions: &CredentialPositions,
    on_literal: OnLiteral,
) -> Result<Option<Vec<u8>>, CredentialDeny> {
    let is_field = |name: &str| positions.is_body_field(name);
    let mut current: Cow<'_, [u8]> = Cow::Borrowed(body);
    let declared = content_type.and_then(multipart_boundary);
    let first_line = first_line_boundary(body);
    for boundary in [
        declared.as_deref(),
        first_line.filter(|b| Some(*b) != declared.as_deref()),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(new) = check_multipart(&current, boundary.as_bytes(), &is_field, on_literal)? {
            current = Cow::Owned(new);
        }
    }
    let bom = if current.starts_with(b"\xEF\xBB\xBF") {
        3
    } else {
        0
    };
    let json = looks_like_json(&current[bom..]);
    if json {
        if let Some(new) = check_json(&current[bom..], &is_field, on_literal)? {
            let mut out = current[..bom].to_vec();
            out.extend_from_slice(&new);
            current = Cow::Owned(out);
        }
    }
    if !(json && declared_json(content_type)) {
        if let Some(new) = check_pairs(&current, &is_field, "body field", on_literal)? {
            current = Cow::Owned(new);
        }
    }
    Ok(match current {
        Cow::Owned(new) => Some(new),
        Cow::Borrowed(_) => None,
    })
}

/// Whether `content_type` names JSON (`application/json`, `application/…+json`).
fn declared_json(content_type: Option<&str>) -> bool {
    let essence = content_type
        .and_then(|ct| ct.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The boundary a body's first line names, when it starts like a multipart body (`--` and a
/// boundary of 1 to 70 characters, then the line's end): what a parser that finds its boundary
/// in the body, not the header, would split it on.
fn first_line_boundary(body: &[u8]) -> Option<&str> {
    let rest = body.strip_prefix(b"--")?;
    let end = rest.iter().position(|b| matches!(b, b'\r' | b'\n'))?;
    let boundary = std::str::from_utf8(&rest[..end]).ok()?.trim_end();
    let bchar = |c: char| c.is_ascii_alphanumeric() || "'()+_,-./:=? ".contains(c);
    (!boundary.is_empty() && boundary.len() <= 70 && boundary.chars().all(bchar))
        .then_some(boundary)
}

/// Whether a lenient reader would take `body` for JSON (after a BOM), whatever its type says.
pub(crate) fn reads_as_json(body: &[u8]) -> bool {
    looks_like_json(body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body))
}

fn looks_like_json(body: &[u8]) -> bool {
    matches!(
        body.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{') | Some(b'[')
    )
}

/// The `boundary` of a `multipart/*` type (any subtype: a parser may split any of them into
/// named parts).
fn multipart_boundary(content_type: &str) -> Option<String> {
    let (essence, params) = content_type.split_once(';')?;
    let essence = essence.trim();
    if !essence
        .get(..10)
        .is_some_and(|p| p.eq_ignore_ascii_case("multipart/"))
    {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
            .filter(|b| !b.is_empty())
    })
}

/// A literal (or repeated) credential field, refused or marked for removal.
fn literal(
    place: String,
    on_literal: OnLiteral,
    span: Range<usize>,
    strip: &mut Vec<Range<usize>>,
) -> Result<(), CredentialDeny> {
    match on_literal {
        OnLiteral::Refuse => Err(CredentialDeny::Raw(place)),
        OnLiteral::Strip => {
            strip.push(span);
            Ok(())
        }
    }
}

/// Classifies a decoded value, refusing a handle hidden by escapes (the substitution works on
/// the bytes as sent, so an escaped handle would reach the upstream unresolved).
fn value_holding(decoded: &[u8], raw: &[u8], place: &str) -> Result<Holding, CredentialDeny> {
    if count_markers(decoded) != count_markers(raw) {
        return Err(CredentialDeny::Malformed(if place.starts_with("query") {
            "query"
        } else {
            "body"
        }));
    }
    Ok(holding(decoded))
}

fn count_markers(input: &[u8]) -> usize {
    input.windows(6).filter(|w| *w == b"$CRED{").count()
}

// ---------------------------------------------------------------------------------------------
// JSON

#[derive(Default)]
struct Frame {
    /// Normalized credential field names seen in this object.
    credential_keys: Vec<String>,
    /// In an array that is a credential field's value: the field and its elements so far.
    credential_array: Option<(String, usize)>,
}

/// The deepest JSON the scan follows. SECURITY: each level is a frame on the scan's stack, so
/// a body of nothing but `[` (1 MiB: over 100 MB of frames) would cost memory out of all
/// proportion to its bytes; no agent's request nests near this deep (serde_json, behind many
/// servers, stops at 128).
const MAX_JSON_DEPTH: usize = 512;

/// Walks every JSON token of `body` (see the module doc). `Ok(Some(new))` when stripped.
fn check_json(
    body: &[u8],
    is_field: &dyn Fn(&str) -> bool,
    on_literal: OnLiteral,
) -> Result<Option<Vec<u8>>, CredentialDeny> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut strip: Vec<Range<usize>> = Vec::new();
    let mut i = 0;
    while i < body.len() {
        // Only quotes and brackets matter, and digits inside a credential field's array.
        let in_credential_array = stack.last().is_some_and(|f| f.credential_array.is_some());
        let table = if in_credential_array {
            &STRUCTURE_AND_NUMBERS
        } else {
            &STRUCTURE
        };
        match body[i..].iter().position(|b| table[usize::from(*b)]) {
            Some(skip) => i += skip,
            None => break,
        }
        match body[i] {
            b'"' => {
                let token = string_token(body, i);
                let after = skip_ws(body, token.end);
                if body.get(after) == Some(&b':') {
                    let key = decode_string(&body[token.inner.clone()], token.escaped);
                    let name = String::from_utf8_lossy(&key);
                    i = after + 1;
                    if !is_field(&name) {
                        continue;
                    }
                    let place = format!("body field `{}`", printable(&name));
                    let normalized = normalize_field(&name);
                    if let Some(frame) = stack.last_mut() {
                        if frame.credential_keys.contains(&normalized) {
                            return Err(CredentialDeny::Repeated(place));
                        }
                        frame.credential_keys.push(normalized.clone());
                    }
                    let v = skip_ws(body, i);
                    match body.get(v) {
                        Some(b'"') => {
                            let value = string_token(body, v);
                            let raw = &body[value.inner.clone()];
                            let decoded = decode_string(raw, value.escaped);
                            if value_holding(&decoded, raw, &place)? == Holding::Literal {
                                literal(place, on_literal, v..value.end, &mut strip)?;
                            }
                            i = value.end;
                        }
                        Some(b'[') => {
                            if stack.len() == MAX_JSON_DEPTH {
                                return Err(CredentialDeny::ScanIncomplete(ScanGap::TooDeep(
                                    MAX_JSON_DEPTH,
                                )));
                            }
                            stack.push(Frame {
                                credential_array: Some((place, 0)),
                                ..Frame::default()
                            });
                            i = v + 1;
                        }
                        // Objects are searched like the rest; `null`, `true`, `false` hold no key.
                        Some(b'{') | Some(b'n') | Some(b't') | Some(b'f') | None => i = v,
                        // A number or a bare word: a literal.
                        Some(_) => {
                            let vend = scalar_end(body, v);
                            literal(place, on_literal, v..vend, &mut strip)?;
                            i = vend;
                        }
                    }
                    continue;
                }
                // A string value: only an element of a credential array is a position.
                if let Some((place, count)) =
                    stack.last_mut().and_then(|f| f.credential_array.as_mut())
                {
                    *count += 1;
                    if *count > 1 {
                        return Err(CredentialDeny::Repeated(place.clone()));
                    }
                    let raw = &body[token.inner.clone()];
                    let decoded = decode_string(raw, token.escaped);
                    if value_holding(&decoded, raw, place)? == Holding::Literal {
                        literal(place.clone(), on_literal, i..token.end, &mut strip)?;
                    }
                }
                i = token.end;
            }
            b'{' | b'[' => {
                if stack.len() == MAX_JSON_DEPTH {
                    return Err(CredentialDeny::ScanIncomplete(ScanGap::TooDeep(
                        MAX_JSON_DEPTH,
                    )));
                }
                stack.push(Frame::default());
                i += 1;
            }
            b'}' | b']' => {
                stack.pop();
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let end = scalar_end(body, i);
                if let Some((place, count)) =
                    stack.last_mut().and_then(|f| f.credential_array.as_mut())
                {
                    *count += 1;
                    if *count > 1 {
                        return Err(CredentialDeny::Repeated(place.clone()));
                    }
                    literal(place.clone(), on_literal, i..end, &mut strip)?;
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    if strip.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(body.len());
    let mut from = 0;
    for span in strip {
        out.extend_from_slice(&body[from..span.start]);
        out.extend_from_slice(b"null");
        from = span.end;
    }
    out.extend_from_slice(&body[from..]);
    Ok(Some(out))
}

/// Where a JSON body's handles are: each must be the whole value (after an optional auth scheme)
/// of a credential field (`is_field`) of the body's top-level object. A handle in any other
/// string (a prompt, a tool argument), in a member name, outside a string or in a credential
/// field of a nested object (a tool call's `input` in a conversation the model reads back) is
/// refused: an upstream that reads those (a model asked to repeat its input reversed, spelled
/// out, in hex) could hand the secret back in a form no scrubber recognises.
pub(crate) fn check_json_handles(
    body: &[u8],
    is_field: &dyn Fn(&str) -> bool,
) -> Result<(), CredentialDeny> {
    let refuse = |raw: &[u8], place: String| {
        let name = super::handle::scan(raw).ok().and_then(|pieces| {
            pieces.into_iter().find_map(|p| match p {
                super::handle::Piece::Handle(n) => Some(n.to_string()),
                super::handle::Piece::Literal(_) => None,
            })
        });
        Err(name.map_or(CredentialDeny::Malformed("body"), |n| {
            CredentialDeny::Position(n, place)
        }))
    };
    let mut vetted = 0;
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(skip) = body[i..].iter().position(|b| STRUCTURE[usize::from(*b)]) {
        i += skip;
        match body[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if body[i] != b'"' {
            i += 1;
            continue;
        }
        let token = string_token(body, i);
        let raw = &body[token.inner.clone()];
        let after = skip_ws(body, token.end);
        if body.get(after) != Some(&b':') {
            // A string that is no member's value (an array element, a top-level string).
            if super::handle::has_handle(raw) {
                return refuse(raw, "body".into());
            }
            vetted += count_markers(raw);
            i = token.end;
            continue;
        }
        let key = decode_string(raw, token.escaped);
        let name = String::from_utf8_lossy(&key);
        if super::handle::has_handle(raw) {
            return refuse(raw, format!("body field name `{}`", printable(&name)));
        }
        vetted += count_markers(raw);
        let v = skip_ws(body, after + 1);
        if body.get(v) != Some(&b'"') {
            i = v;
            continue;
        }
        let value = string_token(body, v);
        let raw_value = &body[value.inner.clone()];
        if super::handle::has_handle(raw_value) {
            if !is_field(&name) || holding(raw_value) != Holding::Handle {
                return refuse(raw_value, format!("body field `{}`", printable(&name)));
            }
            if depth != 1 {
                return refuse(
                    raw_value,
                    format!("nested body field `{}`", printable(&name)),
                );
            }
        }
        // Handles vetted above, and `$$CRED{` escapes, which stay literal text.
        vetted += count_markers(raw_value);
        i = value.end;
    }
    // A handle outside every string (`{"a": $CRED{x}}`) would be substituted all the same.
    if count_markers(body) != vetted {
        return refuse(body, "body".into());
    }
    Ok(())
}

/// Bytes that start a token the JSON scan looks at: quotes and brackets…
const STRUCTURE: [bool; 256] = byte_set(b"\"{}[]");
/// …and, inside a credential field's array, numbers.
const STRUCTURE_AND_NUMBERS: [bool; 256] = byte_set(b"\"{}[]-0123456789");

const fn byte_set(bytes: &[u8]) -> [bool; 256] {
    let mut set = [false; 256];
    let mut i = 0;
    while i < bytes.len() {
        set[bytes[i] as usize] = true;
        i += 1;
    }
    set
}

/// The string token starting at `start` (a quote).
struct Token {
    /// Its contents, between the quotes (to the end of the input when unterminated).
    inner: Range<usize>,
    /// The index just past the closing quote.
    end: usize,
    /// Whether it has escapes.
    escaped: bool,
}

fn string_token(body: &[u8], start: usize) -> Token {
    let mut j = start + 1;
    let mut escaped = false;
    while j < body.len() {
        match memchr::memchr2(b'"', b'\\', &body[j..]) {
            Some(skip) => j += skip,
            None => break,
        }
        match body[j] {
            b'"' => {
                return Token {
                    inner: start + 1..j,
                    end: j + 1,
                    escaped,
                }
            }
            b'\\' => {
                escaped = true;
                j += 2;
            }
            _ => j += 1,
        }
    }
    Token {
        inner: (start + 1).min(body.len())..body.len(),
        end: body.len(),
        escaped,
    }
}

fn skip_ws(body: &[u8], mut i: usize) -> usize {
    while body.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

fn scalar_end(body: &[u8], mut i: usize) -> usize {
    while body
        .get(i)
        .is_some_and(|b| !matches!(b, b',' | b'}' | b']' | b'"' | b':') && !b.is_ascii_whitespace())
    {
        i += 1;
    }
    i
}

/// Decodes JSON string escapes (`\uXXXX` with surrogate pairs; a lone surrogate becomes U+FFFD;
/// an unknown escape keeps its character).
fn decode_string(raw: &[u8], escaped: bool) -> Cow<'_, [u8]> {
    if !escaped {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'\\' || i + 1 >= raw.len() {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let c = raw[i + 1];
        i += 2;
        let simple = match c {
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'u' => None,
            other => Some(other),
        };
        if let Some(b) = simple {
            out.push(b);
            continue;
        }
        let Some(hi) = hex4(raw.get(i..i + 4)) else {
            out.push(b'u');
            continue;
        };
        i += 4;
        let mut code = u32::from(hi);
        if (0xD800..0xDC00).contains(&hi) && raw.get(i..i + 2) == Some(b"\\u") {
            if let Some(lo) = hex4(raw.get(i + 2..i + 6)).filter(|l| (0xDC00..0xE000).contains(l)) {
                code = 0x10000 + ((code - 0xD800) << 10) + (u32::from(lo) - 0xDC00);
                i += 6;
            }
        }
        let ch = char::from_u32(code).unwrap_or('\u{fffd}');
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }
    Cow::Owned(out)
}

fn hex4(digits: Option<&[u8]>) -> Option<u16> {
    let d = digits?;
    let s = std::str::from_utf8(d).ok()?;
    u16::from_str_radix(s, 16).ok()
}

/// A field name for a message: the name as written, cut short and without control characters.
pub(super) fn printable(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_control() && *c != '`')
        .take(64)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Pairs (query strings and form bodies)

/// Checks `k=v` pairs split on `&` and `;`, names percent-decoded (`+` as space). `what` names
/// the position in messages (`query parameter`, `body field`). `Ok(Some(new))` when stripped.
pub(crate) fn check_pairs(
    text: &[u8],
    is_field: &dyn Fn(&str) -> bool,
    what: &str,
    on_literal: OnLiteral,
) -> Result<Option<Vec<u8>>, CredentialDeny> {
    let mut seen: Vec<String> = Vec::new();
    let mut removed: Vec<usize> = Vec::new();
    let pairs: Vec<Range<usize>> = split_pairs(text);
    for (k, range) in pairs.iter().enumerate() {
        let pair = &text[range.clone()];
        let (key, value) = match pair.iter().position(|b| *b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &b""[..]),
        };
        let name_bytes = percent_decode(&plus_as_space(key));
        let name = String::from_utf8_lossy(&name_bytes);
        if !is_field(&name) {
            continue;
        }
        let place = format!("{what} `{}`", printable(&name));
        let normalized = normalize_field(&name);
        if seen.contains(&normalized) {
            return Err(CredentialDeny::Repeated(place));
        }
        seen.push(normalized);
        let raw = plus_as_space(value);
        let decoded = percent_decode(&raw);
        if value_holding(&decoded, &decoded, &place)? == Holding::Literal {
            if on_literal == OnLiteral::Refuse {
                return Err(CredentialDeny::Raw(place));
            }
            removed.push(k);
        }
    }
    if removed.is_empty() {
        return Ok(None);
    }
    // Rebuild from the kept pairs, each after the separator that preceded it.
    let mut out = Vec::with_capacity(text.len());
    for (k, range) in pairs.iter().enumerate() {
        if removed.contains(&k) {
            continue;
        }
        if !out.is_empty() && range.start > 0 {
            out.push(text[range.start - 1]);
        }
        out.extend_from_slice(&text[range.clone()]);
    }
    Ok(Some(out))
}

fn split_pairs(text: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, b) in text.iter().enumerate() {
        if matches!(b, b'&' | b';') {
            out.push(start..i);
            start = i + 1;
        }
    }
    out.push(start..text.len());
    out
}

fn plus_as_space(input: &[u8]) -> Cow<'_, [u8]> {
    if input.contains(&b'+') {
        Cow::Owned(
            input
                .iter()
                .map(|b| if *b == b'+' { b' ' } else { *b })
                .collect(),
        )
    } else {
        Cow::Borrowed(input)
    }
}

// ---------------------------------------------------------------------------------------------
// multipart/form-data

/// Checks each part whose `Content-Disposition` names a credential field. A handle in a part
/// is not substituted (the handle check refuses it); a literal is refused or its part removed.
fn check_multipart(
    body: &[u8],
    boundary: &[u8],
    is_field: &dyn Fn(&str) -> bool,
    on_literal: OnLiteral,
) -> Result<Option<Vec<u8>>, CredentialDeny> {
    let mut delimiter = b"--".to_vec();
    delimiter.extend_from_slice(boundary);
    // Every delimiter at the start of a line.
    let mut starts = Vec::new();
    let mut from = 0;
    while let Some(at) = find(&body[from..], &delimiter).map(|p| p + from) {
        if at == 0 || body[at - 1] == b'\n' {
            starts.push(at);
        }
        from = at + delimiter.len();
    }
    let mut seen: Vec<String> = Vec::new();
    let mut strip: Vec<Range<usize>> = Vec::new();
    for (k, &at) in starts.iter().enumerate() {
        let part_end = starts.get(k + 1).copied().unwrap_or(body.len());
        let after = at + delimiter.len();
        if body[after..].starts_with(b"--") {
            break;
        }
        let part = &body[after..part_end];
        let Some(head_end) = find(part, b"\r\n\r\n")
            .map(|p| p + 4)
            .or_else(|| find(part, b"\n\n").map(|p| p + 2))
        else {
            continue;
        };
        // A part with several names (two `Content-Disposition` lines, `name` and `name*`) is
        // a credential field when any of them is: a parser keeps one, not necessarily the first.
        let mut field = None;
        crate::part_names::each(&part[..head_end], |n| {
            if is_field(&n) {
                field = Some(n);
            }
            field.is_none()
        });
        let Some(name) = field else {
            continue;
        };
        let place = format!("body field `{}`", printable(&name));
        let normalized = normalize_field(&name);
        if seen.contains(&normalized) {
            return Err(CredentialDeny::Repeated(place));
        }
        seen.push(normalized);
        let content = part[head_end..]
            .strip_suffix(b"\n")
            .map(|c| c.strip_suffix(b"\r").unwrap_or(c))
            .unwrap_or(&part[head_end..]);
        // SECURITY: a literal is the agent's own key (a handle in a part is refused by the
        // handle check, since parts are never substituted).
        if holding(content) == Holding::Literal {
            literal(place, on_literal, at..part_end, &mut strip)?;
        }
    }
    if strip.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(body.len());
    let mut from = 0;
    for span in strip {
        out.extend_from_slice(&body[from..span.start]);
        from = span.end;
    }
    out.extend_from_slice(&body[from..]);
    Ok(Some(out))
}

/// Where `needle` first occurs in `hay`. SECURITY: in time linear in both (a boundary is the
/// client's, of any length: a window-by-window comparison with a 30,000-byte one took a
/// quarter of a second of a shared worker per body).
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    memchr::memmem::find(hay, needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positions() -> CredentialPositions {
        CredentialPositions::default()
    }

    fn body(b: &str, ct: Option<&str>) -> Result<Option<String>, CredentialDeny> {
        check_body(b.as_bytes(), ct, &positions(), OnLiteral::Refuse)
            .map(|o| o.map(|v| String::from_utf8(v).expect("utf8")))
    }

    fn stripped(b: &str, ct: Option<&str>) -> String {
        let out = check_body(b.as_bytes(), ct, &positions(), OnLiteral::Strip).expect("stripped");
        String::from_utf8(out.unwrap_or_else(|| b.as_bytes().to_vec())).expect("utf8")
    }

    fn raw(place: &str) -> Result<Option<String>, CredentialDeny> {
        Err(CredentialDeny::Raw(place.into()))
    }

    /// Each level of a JSON body is a frame of the scan: past [`MAX_JSON_DEPTH`] the body is
    /// refused (a megabyte of `[` took over 100 MB of frames), not forwarded unscanned.
    #[test]
    fn json_deeper_than_the_scan_follows_is_refused() {
        let nested = |levels: usize| {
            format!(
                r#"{}{{"api_key":"sk-x"}}{}"#,
                "[".repeat(levels - 1),
                "]".repeat(levels - 1)
            )
        };
        // At the deepest level followed, a literal is still found.
        assert_eq!(
            body(&nested(MAX_JSON_DEPTH), None),
            raw("body field `api_key`")
        );
        for json in [nested(MAX_JSON_DEPTH + 1), "[".repeat(1 << 20)] {
            assert_eq!(
                body(&json, Some("application/json")),
                Err(CredentialDeny::ScanIncomplete(ScanGap::TooDeep(
                    MAX_JSON_DEPTH
                )))
            );
        }
        // Through a credential field's array too.
        let deep_array = format!(r#"{{"api_key":{}"#, "[".repeat(MAX_JSON_DEPTH));
        assert_eq!(
            body(&deep_array, None),
            Err(CredentialDeny::ScanIncomplete(ScanGap::TooDeep(
                MAX_JSON_DEPTH
            )))
        );
    }

    /// A boundary is the client's and may be long (parsers do not all hold it to 70 bytes):
    /// its parts are read as with a short one.
    #[test]
    fn a_long_multipart_boundary_is_read_like_a_short_one() {
        let boundary = "b".repeat(30_000);
        let form = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"api_key\"\r\n\r\nsk-x\r\n--{boundary}--\r\n"
        );
        let ct = format!("multipart/form-data; boundary={boundary}");
        assert_eq!(body(&form, Some(&ct)), raw("body field `api_key`"));
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn json_literals_anywhere_whatever_the_type() {
        let json = Some("application/json");
        let text = Some("text/plain");
        let cases: &[(
            &str,
            &str,
            Option<&str>,
            Result<Option<String>, CredentialDeny>,
        )] = &[
            ("handle", r#"{"api_key":"$CRED{openai}"}"#, json, Ok(None)),
            (
                "scheme and handle",
                r#"{"api_key":"Bearer $CRED{openai}"}"#,
                json,
                Ok(None),
            ),
            ("empty", r#"{"api_key":"","x":null}"#, json, Ok(None)),
            ("null", r#"{"api_key":null}"#, json, Ok(None)),
            (
                "no field",
                r#"{"model":"gpt-4o","key":"sk-not-a-position"}"#,
                json,
                Ok(None),
            ),
            (
                "literal",
                r#"{"api_key":"sk-x"}"#,
                json,
                raw("body field `api_key`"),
            ),
            (
                "literal next to a handle elsewhere",
                r#"{"m":"$CRED{openai}","api_key":"sk-x"}"#,
                json,
                raw("body field `api_key`"),
            ),
            (
                "as text/plain",
                r#"{"api_key":"sk-x"}"#,
                text,
                raw("body field `api_key`"),
            ),
            (
                "no content type",
                r#"  {"api_key":"sk-x"}"#,
                None,
                raw("body field `api_key`"),
            ),
            (
                "nested",
                r#"{"config":{"api_key":"sk-x"}}"#,
                json,
                raw("body field `api_key`"),
            ),
            (
                "in an array",
                r#"[{"a":1},{"deep":[{"apiKey":"sk-x"}]}]"#,
                json,
                raw("body field `apiKey`"),
            ),
            (
                "escaped name",
                r#"{"api\u005fkey":"sk-x"}"#,
                json,
                raw("body field `api_key`"),
            ),
            (
                "case and dashes",
                r#"{"API-KEY":"sk-x"}"#,
                json,
                raw("body field `API-KEY`"),
            ),
            (
                "kelvin sign",
                "{\"api_\u{212a}ey\":\"sk-x\"}",
                json,
                raw("body field `api_\u{212a}ey`"),
            ),
            (
                "mixed",
                r#"{"api_key":"sk-x $CRED{openai}"}"#,
                json,
                raw("body field `api_key`"),
            ),
            (
                "number",
                r#"{"access_token":12345}"#,
                json,
                raw("body field `access_token`"),
            ),
            (
                "array of literals",
                r#"{"api_key":["sk-x"]}"#,
                json,
                raw("body field `api_key`"),
            ),
            (
                "second value",
                r#"{"model":"m"} {"api_key":"sk-x"}"#,
                json,
                raw("body field `api_key`"),
            ),
            (
                "after NaN",
                r#"{"n":NaN,"api_key":"sk-x"}"#,
                json,
                raw("body field `api_key`"),
            ),
            (
                "behind a BOM",
                "\u{feff}{\"api_key\":\"sk-x\"}",
                json,
                raw("body field `api_key`"),
            ),
            (
                "duplicate",
                r#"{"api_key":"$CRED{openai}","api_key":"$CRED{openai}"}"#,
                json,
                Err(CredentialDeny::Repeated("body field `api_key`".into())),
            ),
            (
                "duplicate spelled differently",
                r#"{"api_key":"$CRED{a}","apiKey":"$CRED{b}"}"#,
                json,
                Err(CredentialDeny::Repeated("body field `apiKey`".into())),
            ),
            (
                "two elements",
                r#"{"api_key":["$CRED{a}","$CRED{b}"]}"#,
                json,
                Err(CredentialDeny::Repeated("body field `api_key`".into())),
            ),
            (
                "escaped handle",
                r#"{"api_key":"\u0024CRED{openai}"}"#,
                json,
                Err(CredentialDeny::Malformed("body")),
            ),
            (
                "schema property",
                r#"{"tools":[{"parameters":{"properties":{"api_key":{"type":"string"}}}}]}"#,
                json,
                Ok(None),
            ),
            (
                "in prompt text",
                r#"{"messages":[{"content":"{\"api_key\": \"sk-x\"}"}]}"#,
                json,
                Ok(None),
            ),
            (
                "same name in separate objects",
                r#"[{"api_key":"$CRED{a}"},{"api_key":"$CRED{a}"}]"#,
                json,
                Ok(None),
            ),
        ];
        for (name, b, ct, want) in cases {
            assert_eq!(&body(b, *ct), want, "{name}");
        }
    }

    #[test]
    fn pairs_and_parts() {
        let form = Some("application/x-www-form-urlencoded");
        assert_eq!(body("a=1&api_key=sk-x", form), raw("body field `api_key`"));
        assert_eq!(
            body("a=1&api_key=sk-x", Some("text/plain")),
            raw("body field `api_key`")
        );
        assert_eq!(
            body("a=1;api%5Fkey=sk-x", form),
            raw("body field `api_key`")
        );
        assert_eq!(body("api_key=%24CRED%7Bopenai%7D", form), Ok(None));
        assert_eq!(body("api_key=Bearer+%24CRED%7Bo%7D", form), Ok(None));
        assert_eq!(body("api_key=&b=2", form), Ok(None));
        assert_eq!(
            body("api_key=$CRED{a}&apiKey=$CRED{a}", form),
            Err(CredentialDeny::Repeated("body field `apiKey`".into()))
        );
        // Declared a form but shaped like JSON: both readings are checked.
        assert_eq!(
            body(r#"{"a":"&api_key=sk-x&"}"#, form),
            raw("body field `api_key`")
        );
        let mp = Some("multipart/form-data; boundary=XyZ");
        let parts = "--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XyZ\r\nContent-Disposition: form-data; name=\"api_key\"\r\n\r\nsk-x\r\n--XyZ--\r\n";
        assert_eq!(body(parts, mp), raw("body field `api_key`"));
        assert_eq!(
            stripped(parts, mp),
            "--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XyZ--\r\n"
        );
        let fine = "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\napi_key=sk-x\r\n--XyZ--\r\n";
        assert_eq!(body(fine, mp), Ok(None));
    }

    #[test]
    fn every_reader_runs_whatever_the_type_declares() {
        let json = r#"{"model":"gpt-4o","messages":[],"api_key":"sk-RAW"}"#;
        let form = "model=gpt-4o&api_key=sk-RAW";
        let part = |disposition: &str, boundary: &str| {
            format!("--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n\r\nsk-RAW\r\n--{boundary}--\r\n")
        };
        let field = raw("body field `api_key`");
        let cases: Vec<(&str, String, Option<&str>)> = vec![
            ("JSON declared multipart", json.into(), Some("multipart/form-data; boundary=XX")),
            ("form declared multipart", form.into(), Some("multipart/form-data; boundary=XX")),
            ("JSON declared a form", json.into(), Some("application/x-www-form-urlencoded")),
            ("form declared JSON", form.into(), Some("application/json")),
            ("form without a type", form.into(), None),
            (
                "a form in a JSON string, without a type (Rack reads it as a form)",
                r#"{"q":"x&api_key=sk-RAW&"}"#.into(),
                None,
            ),
            (
                "a form in a JSON string, as text",
                r#"{"q":"x&api_key=sk-RAW&"}"#.into(),
                Some("text/plain"),
            ),
            (
                "RFC 2231 name",
                part("name*=UTF-8''api_key", "XX"),
                Some("multipart/form-data; boundary=XX"),
            ),
            (
                "RFC 2231 name, percent-encoded",
                part("name*=UTF-8''api%5Fkey", "XX"),
                Some("multipart/form-data; boundary=XX"),
            ),
            (
                "a name beside another",
                part("name=\"file\"; name*=UTF-8''api_key", "XX"),
                Some("multipart/form-data; boundary=XX"),
            ),
            (
                "a quoted name with an escape",
                part("name=\"api\\_key\"", "XX"),
                Some("multipart/form-data; boundary=XX"),
            ),
            (
                "a second Content-Disposition",
                "--XX\r\nContent-Disposition: form-data; name=\"file\"\r\ncontent-disposition: form-data; name=\"api_key\"\r\n\r\nsk-RAW\r\n--XX--\r\n".into(),
                Some("multipart/form-data; boundary=XX"),
            ),
            (
                "the body's own boundary, not the declared one",
                part("name=\"api_key\"", "YY"),
                Some("multipart/form-data; boundary=XX"),
            ),
            ("multipart declared as text", part("name=\"api_key\"", "YY"), Some("text/plain")),
            (
                "another multipart type",
                part("name=\"api_key\"", "XX"),
                Some("multipart/mixed; boundary=XX"),
            ),
        ];
        let open: Vec<&str> = cases
            .iter()
            .filter(|(_, b, ct)| body(b, *ct) != field)
            .map(|(name, ..)| *name)
            .collect();
        assert!(open.is_empty(), "read past: {open:#?}");
        // A JSON body declared JSON has one reading: text in its strings is not a form.
        assert_eq!(
            body(
                r#"{"q":"x&api_key=sk-not-a-field&"}"#,
                Some("application/json")
            ),
            Ok(None)
        );
        assert_eq!(
            body(
                r#"{"q":"x&api_key=sk-not-a-field&"}"#,
                Some("application/vnd.api+json; charset=utf-8")
            ),
            Ok(None)
        );
        // Strip mode removes what each reader found.
        assert_eq!(
            stripped(json, Some("multipart/form-data; boundary=XX")),
            r#"{"model":"gpt-4o","messages":[],"api_key":null}"#
        );
        assert_eq!(
            stripped(form, Some("multipart/form-data; boundary=XX")),
            "model=gpt-4o"
        );
    }

    #[test]
    fn strip_mode_removes_only_the_literals() {
        let json = Some("application/json");
        assert_eq!(
            stripped(
                r#"{"api_key":"sk-x","m":"$CRED{o}","c":{"access_token":7}}"#,
                json
            ),
            r#"{"api_key":null,"m":"$CRED{o}","c":{"access_token":null}}"#
        );
        let form = Some("application/x-www-form-urlencoded");
        assert_eq!(stripped("api_key=sk-x&a=1&key=k", form), "a=1&key=k");
        assert_eq!(stripped("a=1&api_key=sk-x;b=2", form), "a=1;b=2");
        assert_eq!(stripped("a=1&api_key=sk-x", form), "a=1");
        assert_eq!(
            check_pairs(
                b"q=1&key=sk-x&key2=z",
                &|n| positions().is_query_param(n),
                "query parameter",
                OnLiteral::Strip
            )
            .expect("ok")
            .as_deref(),
            Some(&b"q=1&key2=z"[..])
        );
    }

    #[test]
    fn hostile_bytes_never_panic() {
        for b in [
            "\"",
            "{\"api_key\"",
            "{\"api_key\":",
            "{\"api_key\":\"\\",
            "{\"api_key\":\"\\u12",
            "{\"api_key\":[",
            "]]]}}}",
            "{\"a\\\":1}",
            "[\"\\ud800\\u\"]",
        ] {
            let _ = body(b, Some("application/json"));
            let _ = stripped(b, Some("application/json"));
        }
    }
}
