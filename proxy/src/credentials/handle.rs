//! The `$CRED{name}` handle syntax.
//!
//! A handle is `$CRED{` + a name of 1-64 characters from `A-Z a-z 0-9 _ - .` + `}`. `$$CRED{`
//! is an escaped literal `$CRED{` (the first `$` is dropped). Anything else that starts with
//! `$CRED{` but is not a well-formed handle is an error, never passed through: a half-written
//! handle must not reach an upstream raw.
//!
//! The scanner is a single forward pass (linear in the input), allocation-free until a handle is
//! actually found, and total: it returns an error rather than panicking on any input.

use std::borrow::Cow;

use zeroize::Zeroizing;

const MARKER: &[u8] = b"$CRED{";
/// Longest accepted credential name.
pub const MAX_NAME_LEN: usize = 64;

/// Why a value could not be scanned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// `$CRED{` without a valid name and closing `}`.
    #[error("malformed credential handle at byte {offset}")]
    Malformed {
        /// Byte offset of the `$CRED{`.
        offset: usize,
    },
}

/// One piece of a scanned value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Bytes to keep as they are.
    Literal(&'a [u8]),
    /// A handle naming this credential.
    Handle(&'a str),
}

/// Whether `input` contains anything that looks like a handle (escaped or not). A cheap
/// pre-check: values without `$CRED{` need no further work.
pub fn has_marker(input: &[u8]) -> bool {
    find(input, 0).is_some()
}

/// Whether `input` holds a handle to substitute: `$$CRED{` escapes alone are no handle; a
/// malformed handle counts as one (its substitution refuses it).
pub fn has_handle(input: &[u8]) -> bool {
    has_marker(input)
        && scan(input).map_or(true, |pieces| {
            pieces.iter().any(|p| matches!(p, Piece::Handle(_)))
        })
}

fn find(input: &[u8], from: usize) -> Option<usize> {
    let hay = input.get(from..)?;
    // Jump between `$` bytes (SIMD memchr), then compare the marker.
    let mut i = 0;
    while let Some(pos) = memchr::memchr(b'$', &hay[i..]) {
        let at = i + pos;
        if hay[at..].starts_with(MARKER) {
            return Some(from + at);
        }
        i = at + 1;
    }
    None
}

fn valid_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

/// Splits `input` into literal pieces and handles, in order. Escapes produce a literal `$CRED{`.
pub fn scan(input: &[u8]) -> Result<Vec<Piece<'_>>, HandleError> {
    let mut pieces = Vec::new();
    let mut literal_start = 0;
    let mut pos = 0;
    while let Some(at) = find(input, pos) {
        // `$$CRED{`: an escape. Keep everything up to and including the second `$`'s marker,
        // minus the first `$`.
        if at > literal_start && input[at - 1] == b'$' {
            if at - 1 > literal_start {
                pieces.push(Piece::Literal(&input[literal_start..at - 1]));
            }
            literal_start = at; // starts at the second `$`, so the marker stays literal
            pos = at + MARKER.len();
            continue;
        }
        let name_start = at + MARKER.len();
        let name_len = input[name_start..]
            .iter()
            .take(MAX_NAME_LEN + 1)
            .take_while(|b| valid_name_byte(**b))
            .count();
        let close = name_start + name_len;
        if name_len == 0 || name_len > MAX_NAME_LEN || input.get(close) != Some(&b'}') {
            return Err(HandleError::Malformed { offset: at });
        }
        if at > literal_start {
            pieces.push(Piece::Literal(&input[literal_start..at]));
        }
        // The name bytes are ASCII by construction.
        let name = std::str::from_utf8(&input[name_start..close])
            .map_err(|_| HandleError::Malformed { offset: at })?;
        pieces.push(Piece::Handle(name));
        literal_start = close + 1;
        pos = close + 1;
    }
    if literal_start < input.len() {
        pieces.push(Piece::Literal(&input[literal_start..]));
    }
    Ok(pieces)
}

/// A request's bytes with a secret substituted in (a body, a header value), as the `Bytes`
/// handed to pingora: wiped once the last reference to them is dropped, as the secret's own
/// buffer is. (What pingora and the TLS library copy them into on the way out is theirs.)
pub fn wiped_bytes(bytes: Vec<u8>) -> bytes::Bytes {
    bytes::Bytes::from_owner(WipedOnDrop(bytes))
}

/// Bytes zeroized when dropped (see [`wiped_bytes`]).
struct WipedOnDrop(Vec<u8>);

impl AsRef<[u8]> for WipedOnDrop {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for WipedOnDrop {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// Replaces every handle in `input` with what `resolve` returns for its name. Returns the input
/// unchanged (borrowed, no allocation) when it has no marker at all.
///
/// SECURITY: every handle is resolved first, so the output is allocated once at its exact size
/// (growing it would leave copies of the secrets in freed memory), and the resolved values are
/// wiped when dropped.
pub fn substitute<'a, E>(
    input: &'a [u8],
    mut resolve: impl FnMut(&str) -> Result<Zeroizing<Vec<u8>>, E>,
) -> Result<Cow<'a, [u8]>, SubstituteError<E>> {
    if !has_marker(input) {
        return Ok(Cow::Borrowed(input));
    }
    let pieces = scan(input).map_err(SubstituteError::Handle)?;
    let mut values: Vec<Zeroizing<Vec<u8>>> = Vec::new();
    let mut len = 0;
    for piece in &pieces {
        match piece {
            Piece::Literal(l) => len += l.len(),
            Piece::Handle(name) => {
                let value = resolve(name).map_err(SubstituteError::Resolve)?;
                len += value.len();
                values.push(value);
            }
        }
    }
    let mut out = Vec::with_capacity(len);
    let mut values = values.iter();
    for piece in &pieces {
        match piece {
            Piece::Literal(l) => out.extend_from_slice(l),
            Piece::Handle(_) => {
                if let Some(value) = values.next() {
                    out.extend_from_slice(value);
                }
            }
        }
    }
    Ok(Cow::Owned(out))
}

/// Why substitution failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubstituteError<E> {
    /// The value has a malformed handle.
    Handle(HandleError),
    /// The resolver refused a name.
    Resolve(E),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn render(pieces: &[Piece<'_>]) -> String {
        pieces
            .iter()
            .map(|p| match p {
                Piece::Literal(l) => String::from_utf8_lossy(l).into_owned(),
                Piece::Handle(n) => format!("<{n}>"),
            })
            .collect()
    }

    #[test]
    fn scans() {
        let cases: &[(&str, Result<&str, usize>)] = &[
            ("Bearer $CRED{openai}", Ok("Bearer <openai>")),
            ("$CRED{a}$CRED{b.c-d_e}", Ok("<a><b.c-d_e>")),
            ("no handle here", Ok("no handle here")),
            ("price $5 and $CRED", Ok("price $5 and $CRED")),
            ("literal $$CRED{x} stays", Ok("literal $CRED{x} stays")),
            ("$$CRED{x}$CRED{y}", Ok("$CRED{x}<y>")),
            ("$CRED{}", Err(0)),
            ("key=$CRED{open ai}", Err(4)),
            ("$CRED{unterminated", Err(0)),
            ("$CRED{a/b}", Err(0)),
        ];
        for (input, want) in cases {
            let got = scan(input.as_bytes())
                .map(|p| render(&p))
                .map_err(|HandleError::Malformed { offset }| offset);
            assert_eq!(
                got.as_deref().map_err(|e| *e),
                want.as_ref().map(|s| *s).map_err(|e| *e),
                "{input}"
            );
        }
        let long = format!("$CRED{{{}}}", "a".repeat(MAX_NAME_LEN + 1));
        assert!(scan(long.as_bytes()).is_err());
        let max = format!("$CRED{{{}}}", "a".repeat(MAX_NAME_LEN));
        assert!(scan(max.as_bytes()).is_ok());
    }

    #[test]
    fn substitution_borrows_when_there_is_nothing_to_do() {
        let input = b"Bearer sk-plain";
        let out = substitute::<()>(input, |_| unreachable!()).expect("ok");
        assert!(matches!(out, Cow::Borrowed(_)));
        let out = substitute::<()>(b"Bearer $CRED{k}!", |n| {
            assert_eq!(n, "k");
            Ok(Zeroizing::new(b"VALUE".to_vec()))
        })
        .expect("ok");
        assert_eq!(&*out, b"Bearer VALUE!");
        let err = substitute::<&str>(b"$CRED{k}", |_| Err("unknown")).expect_err("refused");
        assert_eq!(err, SubstituteError::Resolve("unknown"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(256)))]

        #[test]
        fn fuzz_scan_never_panics_and_round_trips(input in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(pieces) = scan(&input) {
                // Re-rendering handles as handles and escapes as literals reproduces the input
                // minus the escape `$`s.
                let mut rebuilt = Vec::new();
                for p in &pieces {
                    match p {
                        Piece::Literal(l) => rebuilt.extend_from_slice(l),
                        Piece::Handle(n) => { rebuilt.extend_from_slice(b"$CRED{"); rebuilt.extend_from_slice(n.as_bytes()); rebuilt.push(b'}'); }
                    }
                }
                prop_assert!(rebuilt.len() <= input.len());
            }
        }

        #[test]
        fn fuzz_handles_in_random_text_are_found(prefix in "[a-z $]{0,20}", name in "[A-Za-z0-9_.-]{1,64}", suffix in "[a-z ]{0,20}") {
            let input = format!("{prefix}$CRED{{{name}}}{suffix}");
            // A `$` right before the marker makes it an escape.
            prop_assume!(!prefix.ends_with('$'));
            let pieces = scan(input.as_bytes()).expect("valid");
            prop_assert!(pieces.contains(&Piece::Handle(&name)));
        }

        #[test]
        fn fuzz_dollar_heavy_input_is_linear(n in 1usize..20_000) {
            let input = "$".repeat(n) + "$CRED";
            prop_assert!(scan(input.as_bytes()).is_ok());
        }
    }
}
