//! Reading the workload token from `Proxy-Authorization`: `Bearer <token>`, or `Basic` with the
//! token as the password, so `HTTP_PROXY=http://<workload>:<token>@host:port` works in every
//! client.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

const MAX_LEN: usize = 8 * 1024;

/// The credential in a `Proxy-Authorization` header.
pub enum ProxyCredential<'a> {
    /// `Bearer <token>`.
    Bearer(&'a str),
    /// `Basic base64(user:password)`.
    Basic {
        /// The user name (should be the workload).
        username: String,
        /// The password (the token).
        password: String,
    },
}

impl fmt::Debug for ProxyCredential<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyCredential::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            ProxyCredential::Basic { username, .. } => write!(
                f,
                "Basic {{ username: {username:?}, password: <redacted> }}"
            ),
        }
    }
}

/// Why the header was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyAuthError {
    /// Longer than 8 KiB.
    #[error("`Proxy-Authorization` is too long")]
    TooLong,
    /// Not UTF-8, unknown scheme, or bad encoding.
    #[error("`Proxy-Authorization` is not `Bearer <token>` or `Basic <base64>`")]
    Malformed,
}

/// Parses a `Proxy-Authorization` header value.
pub fn parse_proxy_authorization(value: &[u8]) -> Result<ProxyCredential<'_>, ProxyAuthError> {
    if value.len() > MAX_LEN {
        return Err(ProxyAuthError::TooLong);
    }
    let text = std::str::from_utf8(value)
        .map_err(|_| ProxyAuthError::Malformed)?
        .trim();
    let (scheme, rest) = text.split_once(' ').ok_or(ProxyAuthError::Malformed)?;
    let rest = rest.trim();
    if rest.is_empty() {
        return Err(ProxyAuthError::Malformed);
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        Ok(ProxyCredential::Bearer(rest))
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = STANDARD
            .decode(rest)
            .map_err(|_| ProxyAuthError::Malformed)?;
        let decoded = String::from_utf8(decoded).map_err(|_| ProxyAuthError::Malformed)?;
        let (user, pass) = decoded.split_once(':').ok_or(ProxyAuthError::Malformed)?;
        if pass.is_empty() {
            return Err(ProxyAuthError::Malformed);
        }
        Ok(ProxyCredential::Basic {
            username: user.to_string(),
            password: pass.to_string(),
        })
    } else {
        Err(ProxyAuthError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses() {
        assert!(matches!(
            parse_proxy_authorization(b"Bearer abc.def"),
            Ok(ProxyCredential::Bearer("abc.def"))
        ));
        assert!(matches!(
            parse_proxy_authorization(b"bEaReR  abc"),
            Ok(ProxyCredential::Bearer("abc"))
        ));
        let basic = format!("Basic {}", STANDARD.encode("bot:tok.en.x"));
        match parse_proxy_authorization(basic.as_bytes()) {
            Ok(ProxyCredential::Basic { username, password }) => {
                assert_eq!((username.as_str(), password.as_str()), ("bot", "tok.en.x"))
            }
            other => panic!("{other:?}"),
        }
        let no_colon = format!("Basic {}", STANDARD.encode("botonly"));
        for bad in [
            &b"Bearer"[..],
            b"Bearer ",
            b"Digest x",
            b"Basic !!!",
            no_colon.as_bytes(),
            &[0xff, 0xfe],
        ] {
            assert!(
                parse_proxy_authorization(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_proxy_authorization(&vec![b'a'; MAX_LEN + 1]).err(),
            Some(ProxyAuthError::TooLong)
        );
    }

    #[test]
    fn debug_redacts() {
        let basic = format!("Basic {}", STANDARD.encode("bot:secret-token"));
        let text = format!(
            "{:?}",
            parse_proxy_authorization(basic.as_bytes()).expect("ok")
        );
        assert!(!text.contains("secret-token"), "{text}");
        let text = format!(
            "{:?}",
            parse_proxy_authorization(b"Bearer secret-token").expect("ok")
        );
        assert!(!text.contains("secret-token"), "{text}");
    }

    proptest! {
        #[test]
        fn never_panics(input in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_proxy_authorization(&input);
        }
    }
}
