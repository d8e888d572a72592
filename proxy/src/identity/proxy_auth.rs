//! Reading the workload token from `Proxy-Authorization`: `Bearer <token>`, or `Basic` with the
//! token as the password, so `HTTP_PROXY=http://<workload>:<token>@host:port` works in curl,
//! requests, httpx, Go and Node.
//!
//! Clients percent-decode the URL's user info before base64-encoding it, and a JWT only uses
//! characters that never need escaping, so the password arrives literally and is not decoded
//! again here. The header is hostile input: its length is bounded, every failure is an error
//! (never a panic), and neither `Debug` nor any error shows a token or password.

use std::fmt;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use zeroize::Zeroizing;

/// Longest header value accepted, in bytes.
const MAX_LEN: usize = 8 * 1024;

/// Standard base64; padding optional, since some clients leave it off.
const BASIC_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The credential in a `Proxy-Authorization` header.
pub enum ProxyCredential<'a> {
    /// `Bearer <token>`: the token, borrowed from the header.
    Bearer(&'a str),
    /// `Basic base64(user:password)`: the password is the token.
    Basic {
        /// The user name (should be the workload id; may be empty).
        username: String,
        /// The password: the token.
        password: String,
    },
}

/// A user name that looks like a workload id is shown; anything else might be a token pasted
/// into the wrong place.
fn printable_username(username: &str) -> bool {
    username.len() <= 63
        && username
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl fmt::Debug for ProxyCredential<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyCredential::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            ProxyCredential::Basic { username, .. } => {
                let shown = if printable_username(username) {
                    username.as_str()
                } else {
                    "<redacted>"
                };
                f.debug_struct("Basic")
                    .field("username", &shown)
                    .field("password", &"<redacted>")
                    .finish()
            }
        }
    }
}

/// Why the header was not understood. Messages never contain the header's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyAuthError {
    /// Longer than 8 KiB.
    #[error("`Proxy-Authorization` is longer than 8 KiB")]
    TooLong,
    /// Not UTF-8.
    #[error("`Proxy-Authorization` is not valid UTF-8")]
    NotUtf8,
    /// A scheme other than `Bearer` or `Basic` (or no scheme at all).
    #[error("`Proxy-Authorization` must use the `Bearer` or `Basic` scheme")]
    UnsupportedScheme,
    /// A scheme with nothing after it.
    #[error("`Proxy-Authorization` has no credentials after its scheme")]
    MissingCredentials,
    /// Credentials with characters outside base64/token68 (spaces, controls, ...).
    #[error("`Proxy-Authorization` credentials contain invalid characters")]
    InvalidCharacters,
    /// `Basic` credentials that are not base64 of UTF-8 text.
    #[error("`Basic` credentials are not base64-encoded UTF-8")]
    BadBase64,
    /// `Basic` credentials without the `:` between user and password.
    #[error("`Basic` credentials have no `:` between user name and password")]
    MissingColon,
    /// `Basic` credentials with an empty password.
    #[error("`Basic` credentials have an empty password, where the token goes (is the variable holding the token empty?)")]
    EmptyPassword,
}

/// token68 (RFC 9110 section 11.2): the characters a bearer token or base64 blob may contain.
fn is_token68(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// Parses a `Proxy-Authorization` header value: `Bearer <token>` or `Basic <base64>`, with the
/// scheme matched case-insensitively.
pub fn parse_proxy_authorization(value: &[u8]) -> Result<ProxyCredential<'_>, ProxyAuthError> {
    // SECURITY: bound the work done for unauthenticated input before looking at it.
    if value.len() > MAX_LEN {
        return Err(ProxyAuthError::TooLong);
    }
    let text = std::str::from_utf8(value).map_err(|_| ProxyAuthError::NotUtf8)?;
    let text = text.trim_matches(|c| c == ' ' || c == '\t');
    let (scheme, credentials) = match text.split_once([' ', '\t']) {
        Some((scheme, rest)) => (scheme, rest.trim_start_matches([' ', '\t'])),
        None => (text, ""),
    };
    let bearer = scheme.eq_ignore_ascii_case("bearer");
    if !bearer && !scheme.eq_ignore_ascii_case("basic") {
        return Err(ProxyAuthError::UnsupportedScheme);
    }
    if credentials.is_empty() {
        return Err(ProxyAuthError::MissingCredentials);
    }
    // SECURITY: one token68 blob only; `Bearer a b` is refused rather than guessed at.
    if !is_token68(credentials) {
        return Err(ProxyAuthError::InvalidCharacters);
    }
    if bearer {
        return Ok(ProxyCredential::Bearer(credentials));
    }
    let decoded = Zeroizing::new(
        BASIC_B64
            .decode(credentials)
            .map_err(|_| ProxyAuthError::BadBase64)?,
    );
    let decoded = std::str::from_utf8(&decoded).map_err(|_| ProxyAuthError::BadBase64)?;
    // The user name cannot contain `:` (RFC 7617); the password may.
    let (username, password) = decoded
        .split_once(':')
        .ok_or(ProxyAuthError::MissingColon)?;
    if password.is_empty() {
        return Err(ProxyAuthError::EmptyPassword);
    }
    Ok(ProxyCredential::Basic {
        username: username.to_string(),
        password: password.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    use proptest::prelude::*;

    const JWT: &str = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJib3QifQ.c2lnbmF0dXJl_-";

    fn basic(user_pass: &str) -> String {
        format!("Basic {}", STANDARD.encode(user_pass))
    }

    #[derive(Debug, PartialEq)]
    enum Want {
        Bearer(&'static str),
        Basic(&'static str, &'static str),
        Err(ProxyAuthError),
    }

    impl Want {
        fn matches(&self, got: &Result<ProxyCredential<'_>, ProxyAuthError>) -> bool {
            match (self, got) {
                (Want::Bearer(w), Ok(ProxyCredential::Bearer(g))) => w == g,
                (Want::Basic(wu, wp), Ok(ProxyCredential::Basic { username, password })) => {
                    wu == username && wp == password
                }
                (Want::Err(w), Err(g)) => w == g,
                _ => false,
            }
        }
    }

    #[test]
    fn parse_cases() {
        use ProxyAuthError::*;
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<u8>, Want)> = vec![
            ("bearer", format!("Bearer {JWT}").into_bytes(), Want::Bearer(JWT)),
            ("bearer lowercase", format!("bearer {JWT}").into_bytes(), Want::Bearer(JWT)),
            ("bearer mixed case", format!("bEaReR {JWT}").into_bytes(), Want::Bearer(JWT)),
            ("bearer extra spaces", format!("  Bearer \t {JWT}  ").into_bytes(), Want::Bearer(JWT)),
            ("bearer token68 padding", b"Bearer abc+/~==".to_vec(), Want::Bearer("abc+/~==")),
            ("basic", basic(&format!("bot:{JWT}")).into_bytes(), Want::Basic("bot", JWT)),
            ("basic uppercase", format!("BASIC {}", STANDARD.encode(format!("bot:{JWT}"))).into_bytes(), Want::Basic("bot", JWT)),
            ("basic without padding", format!("basic {}", STANDARD_NO_PAD.encode("w:tok")).into_bytes(), Want::Basic("w", "tok")),
            ("basic empty user", basic(&format!(":{JWT}")).into_bytes(), Want::Basic("", JWT)),
            ("basic colon in password", basic("bot:a:b").into_bytes(), Want::Basic("bot", "a:b")),
            ("too long", [b"Bearer ".as_slice(), &[b'a'; MAX_LEN]].concat(), Want::Err(TooLong)),
            ("not utf-8", b"Bearer \xff\xfe".to_vec(), Want::Err(NotUtf8)),
            ("empty", Vec::new(), Want::Err(UnsupportedScheme)),
            ("digest", b"Digest abc".to_vec(), Want::Err(UnsupportedScheme)),
            ("token without scheme", JWT.as_bytes().to_vec(), Want::Err(UnsupportedScheme)),
            ("scheme prefix only", b"Bear abc".to_vec(), Want::Err(UnsupportedScheme)),
            ("bearer alone", b"Bearer".to_vec(), Want::Err(MissingCredentials)),
            ("bearer and space", b"Bearer   ".to_vec(), Want::Err(MissingCredentials)),
            ("bearer two words", b"Bearer abc def".to_vec(), Want::Err(InvalidCharacters)),
            ("bearer control char", b"Bearer abc\x01".to_vec(), Want::Err(InvalidCharacters)),
            ("bearer only padding", b"Bearer ==".to_vec(), Want::Err(InvalidCharacters)),
            ("basic bad base64", b"Basic !!!".to_vec(), Want::Err(InvalidCharacters)),
            ("basic bad base64 length", b"Basic abcde".to_vec(), Want::Err(BadBase64)),
            ("basic bad padding", b"Basic YQ=a".to_vec(), Want::Err(InvalidCharacters)),
            ("basic not utf-8 inside", format!("Basic {}", STANDARD.encode(b"bot:\xff")).into_bytes(), Want::Err(BadBase64)),
            ("basic missing colon", basic("botonly").into_bytes(), Want::Err(MissingColon)),
            ("basic empty password", basic("bot:").into_bytes(), Want::Err(EmptyPassword)),
        ];
        for (name, input, want) in cases {
            let got = parse_proxy_authorization(&input);
            assert!(want.matches(&got), "{name}: {got:?}");
            if let Err(e) = got {
                assert!(!e.to_string().contains("abc"), "{name}: {e}");
            }
        }
    }

    #[test]
    fn debug_redacts() {
        #[rustfmt::skip]
        let cases = [
            ("bearer", format!("Bearer {JWT}"), None),
            ("basic", basic(&format!("bot:{JWT}")), Some("bot")),
            ("token as user name", basic(&format!("{JWT}:{JWT}")), None),
        ];
        for (name, header, user) in cases {
            let cred = parse_proxy_authorization(header.as_bytes()).expect("parses");
            let text = format!("{cred:?}");
            assert!(
                !text.contains("eyJ") && !text.contains("c2lnbmF0dXJl"),
                "{name}: {text}"
            );
            assert!(text.contains("<redacted>"), "{name}: {text}");
            if let Some(user) = user {
                assert!(text.contains(user), "{name}: {text}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(2048)))]

        #[test]
        fn fuzz_never_panics_on_any_bytes(input in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_proxy_authorization(&input);
        }

        #[test]
        fn fuzz_never_panics_after_a_scheme(
            scheme in prop_oneof![Just("Bearer "), Just("Basic "), Just("bAsIc  ")],
            rest in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let input = [scheme.as_bytes(), &rest].concat();
            let _ = parse_proxy_authorization(&input);
        }

        #[test]
        fn fuzz_basic_round_trips(user in "[a-z0-9_-]{0,20}", token in "[A-Za-z0-9._~+/:-]{1,200}") {
            let header = basic(&format!("{user}:{token}"));
            match parse_proxy_authorization(header.as_bytes()) {
                Ok(ProxyCredential::Basic { username, password }) => {
                    prop_assert_eq!(username, user);
                    prop_assert_eq!(password, token);
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }

        #[test]
        fn fuzz_oversized_is_refused(extra in 1usize..64) {
            let input = vec![b'a'; MAX_LEN + extra];
            prop_assert_eq!(parse_proxy_authorization(&input).err(), Some(ProxyAuthError::TooLong));
        }
    }
}
