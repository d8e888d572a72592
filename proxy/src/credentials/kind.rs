//! Credential kinds: what a credential's value is and how the proxy uses it.
//!
//! - `static`: the value itself is substituted where the agent wrote the handle (a key in a
//!   header, a query value, a body field);
//! - `aws_sigv4`: an AWS access key (JSON, see [`super::sigv4::AwsKey`]); the value is never
//!   written into the request: the proxy signs the request it forwards with it;
//! - `oauth2_client_credentials`, `google_service_account`: what mints OAuth2 access tokens
//!   (see [`super::oauth`]); the handle becomes the current access token, never the value.
//!
//! The kind is part of the credential's record (authenticated with its value in the vault), and
//! a value that does not parse as its kind fails the load: a credential the proxy cannot use as
//! declared never exists at run time.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::oauth::TokenSource;
use super::secret::SecretValue;
use super::sigv4::AwsKey;

/// A credential kind as written (the vault record's `kind`, `[[credentials.file]] kind`,
/// `tenant-proxy cred put --kind`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KindName {
    /// The value is substituted as written.
    #[default]
    Static,
    /// An AWS access key the proxy signs requests with (SigV4).
    AwsSigv4,
    /// OAuth2 client credentials the proxy obtains access tokens with.
    Oauth2ClientCredentials,
    /// A Google service-account key the proxy obtains access tokens with (JWT bearer grant).
    GoogleServiceAccount,
}

impl KindName {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            KindName::Static => "static",
            KindName::AwsSigv4 => "aws_sigv4",
            KindName::Oauth2ClientCredentials => "oauth2_client_credentials",
            KindName::GoogleServiceAccount => "google_service_account",
        }
    }

    /// Whether this is the default kind (not written into records, so vaults written before
    /// kinds existed authenticate unchanged).
    pub fn is_static(&self) -> bool {
        *self == KindName::Static
    }
}

impl std::str::FromStr for KindName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [
            KindName::Static,
            KindName::AwsSigv4,
            KindName::Oauth2ClientCredentials,
            KindName::GoogleServiceAccount,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| {
            format!("`{s}` is not a credential kind (`static`, `aws_sigv4`, `oauth2_client_credentials`, `google_service_account`)")
        })
    }
}

/// The shortest secret the proxy takes (a static value, a minted access token): every answer
/// from a host it is bound to is scrubbed of it, and a value of a byte or two would rewrite
/// those answers wherever the bytes occur (no key an API issues is that short).
pub const MIN_SECRET_BYTES: usize = 8;

/// A credential's value, as its kind uses it.
#[derive(Debug, Clone)]
pub enum Kind {
    /// Substituted as written.
    Static,
    /// Signs the forwarded request.
    AwsSigv4(Arc<AwsKey>),
    /// Mints the access token substituted for the handle.
    Token(Arc<TokenSource>),
}

impl Kind {
    /// Reads `value` as a `name` credential: checked once, at load (or at `cred put`). The
    /// error names what is wrong, never the value.
    pub fn parse(name: KindName, value: &SecretValue) -> Result<Self, String> {
        let kind = Self::parse_kind(name, value)?;
        // Every secret answers are scrubbed of (a static value; a signing key's secret and
        // session token, a token credential's client secret) meets one floor.
        let short = match &kind {
            Kind::Static => value.expose().len() < MIN_SECRET_BYTES,
            other => other
                .echoable_secrets()
                .iter()
                .any(|s| s.len() < MIN_SECRET_BYTES),
        };
        if short {
            return Err(format!(
                "a secret in this credential is shorter than {MIN_SECRET_BYTES} bytes (every \
                 secret must be at least {MIN_SECRET_BYTES} bytes): a shorter one is no secret, \
                 and answers would be scrubbed of every occurrence of it"
            ));
        }
        // SECURITY: the scrubber finds an echo of a secret by its visible-ASCII runs; one with a
        // space or a non-ASCII byte (a free-text client secret `abc def ghi`) was stored and
        // sent, and its echo reached the agent whole. What is sent as written meets the rule a
        // static value does (a service account's PEM key is never sent: it signs).
        let spaced = match &kind {
            Kind::Static => false,
            Kind::AwsSigv4(k) => k.secrets().iter().any(|s| !visible_ascii(s)),
            Kind::Token(t) => t.sent_secrets().iter().any(|s| !visible_ascii(s)),
        };
        if spaced {
            return Err(
                "a secret in this credential may hold only visible ASCII (no space, tab, \
                 line break, control character or non-ASCII byte): answers that echo it could \
                 not be scrubbed of it"
                    .into(),
            );
        }
        Ok(kind)
    }

    fn parse_kind(name: KindName, value: &SecretValue) -> Result<Self, String> {
        match name {
            // The response scrubber looks for echoes made of visible ASCII only (what it holds
            // back at a chunk's end must not depend on the secret), and a key needs nothing else.
            KindName::Static if !visible_ascii(value.expose()) => Err(
                "a static value may hold only visible ASCII (no space, tab, line break, control \
                 character or non-ASCII byte): store the key alone and write the rest around its \
                 handle, as in `Authorization: Bearer $CRED{name}`"
                    .into(),
            ),
            KindName::Static => Ok(Kind::Static),
            KindName::AwsSigv4 => {
                AwsKey::parse(value.expose()).map(|k| Kind::AwsSigv4(Arc::new(k)))
            }
            KindName::Oauth2ClientCredentials => {
                TokenSource::client_credentials(value.expose()).map(|t| Kind::Token(Arc::new(t)))
            }
            KindName::GoogleServiceAccount => {
                TokenSource::service_account(value.expose()).map(|t| Kind::Token(Arc::new(t)))
            }
        }
    }

    /// The name of the kind.
    pub fn name(&self) -> KindName {
        match self {
            Kind::Static => KindName::Static,
            Kind::AwsSigv4(_) => KindName::AwsSigv4,
            Kind::Token(t) if t.is_service_account() => KindName::GoogleServiceAccount,
            Kind::Token(_) => KindName::Oauth2ClientCredentials,
        }
    }

    /// The secret pieces a response could echo (scrubbed like a static value is).
    pub fn echoable_secrets(&self) -> Vec<&[u8]> {
        match self {
            Kind::Static => Vec::new(),
            Kind::AwsSigv4(k) => k.secrets(),
            Kind::Token(t) => t.secrets(),
        }
    }
}

/// Whether every byte of `s` is visible ASCII (what the scrubber can find an echo of).
fn visible_ascii(s: &[u8]) -> bool {
    s.iter().all(u8::is_ascii_graphic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_fail_without_the_value() {
        assert!(matches!(
            Kind::parse(KindName::Static, &SecretValue::new(b"sk-12345".to_vec())),
            Ok(Kind::Static)
        ));
        // Every secret of a credential meets the floor, not only a static value.
        for short in [
            r#"{"token_url":"https://auth.example.com/t","client_id":"c","client_secret":"e"}"#,
            r#"{"access_key_id":"AKIDEXAMPLE","secret_access_key":"e","region":"us-east-1"}"#,
            r#"{"access_key_id":"AKIDEXAMPLE","secret_access_key":"wJalrXUtnFEMI/K7MDENG","session_token":"t","region":"us-east-1"}"#,
        ] {
            let kind = if short.contains("token_url") {
                KindName::Oauth2ClientCredentials
            } else {
                KindName::AwsSigv4
            };
            let err = Kind::parse(kind, &SecretValue::new(short.as_bytes().to_vec()))
                .expect_err("a short secret");
            assert!(err.contains("shorter than 8 bytes"), "{short}: {err}");
        }
        // And every secret sent as written is visible ASCII, as a static value is.
        for spaced in [
            r#"{"token_url":"https://auth.example.com/t","client_id":"c","client_secret":"canary cs21 secretpart"}"#,
            r#"{"token_url":"https://auth.example.com/t","client_id":"c","client_secret":"canary-secret-\u00e9"}"#,
            r#"{"access_key_id":"AKIDEXAMPLE","secret_access_key":"wJalrXUtnFEMI/K7MDENG","session_token":"canary st22 part two","region":"us-east-1"}"#,
            r#"{"access_key_id":"AKIDEXAMPLE","secret_access_key":"wJalrXUtn FEMI/K7MDENG","region":"us-east-1"}"#,
        ] {
            let kind = if spaced.contains("token_url") {
                KindName::Oauth2ClientCredentials
            } else {
                KindName::AwsSigv4
            };
            let err = Kind::parse(kind, &SecretValue::new(spaced.as_bytes().to_vec()))
                .expect_err("a secret with a space or a non-ASCII byte");
            assert!(
                err.contains("visible ASCII") && !err.contains("canary") && !err.contains("wJal"),
                "{spaced}: {err}"
            );
        }
        for short in [&b"e"[..], b"sk-1", b"sk-1234"] {
            let err = Kind::parse(KindName::Static, &SecretValue::new(short.to_vec()))
                .expect_err("too short");
            assert!(err.contains("at least 8 bytes"), "{err}");
        }
        for bad in [
            &b"Bearer sk-canary"[..],
            b"sk-canary\tx",
            b"sk-canary\n1",
            b"sk-canary\x7f",
            "sk-canary-\u{e9}".as_bytes(),
        ] {
            let err = Kind::parse(KindName::Static, &SecretValue::new(bad.to_vec()))
                .expect_err("not visible ASCII");
            assert!(
                err.contains("visible ASCII") && !err.contains("canary"),
                "{err}"
            );
        }
        let bad = SecretValue::new(
            b"{\"access_key_id\":\"AKID\",\"secret_access_key\":\"canary-secret\"}".to_vec(),
        );
        let err = Kind::parse(KindName::AwsSigv4, &bad).expect_err("no region");
        assert!(err.contains("region") && !err.contains("canary"), "{err}");
        let not_json = SecretValue::new(b"canary-not-json".to_vec());
        let err = Kind::parse(KindName::AwsSigv4, &not_json).expect_err("not json");
        assert!(!err.contains("canary"), "{err}");
        assert_eq!("aws_sigv4".parse::<KindName>(), Ok(KindName::AwsSigv4));
        assert!("oauth".parse::<KindName>().is_err());
    }
}
