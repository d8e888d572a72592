//! OAuth2 token credentials: the stored value is what mints access tokens (a client id and
//! secret, or a Google service-account key), never what goes upstream. The proxy obtains an
//! access token from the credential's token endpoint (dialed through the egress guard like any
//! upstream), caches it per tenant and credential until shortly before it expires ([`cache`]),
//! and substitutes the token where the agent wrote `$CRED{name}`, toward the credential's bound
//! destinations only.
//!
//! - `oauth2_client_credentials`: RFC 6749 §4.4, the client authenticated with HTTP Basic
//!   (default) or in the form body (`"client_auth": "post"`);
//! - `google_service_account`: RFC 7523 JWT bearer grant, the assertion signed RS256 with the
//!   key file's `private_key` (Google's key file as downloaded, plus an optional `scope`).
//!
//! Secret parts (client secret, private key, minted tokens, assertions) are held zeroized and
//! never printed; errors name what is wrong, never a value.

pub mod cache;
pub mod fetch;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Google's token endpoint (a key file's `token_uri` when it names none).
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The scope a service account asks for when its value names none.
pub const GOOGLE_DEFAULT_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Lifetime of a service account's signed assertion (Google accepts at most one hour).
const ASSERTION_LIFETIME_SECS: u64 = 3600;

/// Where a token credential's grants go: parsed from its URL once, at load.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https` (or `http` toward a loopback host only).
    pub tls: bool,
    /// Host name or address, as the egress guard resolves it.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query the grant is posted to.
    pub path_and_query: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL comes from the secret credential document, and a query may carry a key:
        // where it goes, never what it asks.
        let path = self.path_and_query.split('?').next().unwrap_or_default();
        f.debug_struct("Endpoint")
            .field("tls", &self.tls)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("path", &path)
            .finish()
    }
}

impl Endpoint {
    fn parse(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| "the token URL is not a URL".to_string())?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("the token URL must be `https://…`".into()),
        };
        let host = uri
            .host()
            .ok_or("the token URL has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        // SECURITY: a grant carries the client secret (or a signed assertion); it travels in
        // the clear only to a token endpoint on this machine.
        if !tls && !loopback {
            return Err(
                "the token URL must be `https://…` (plain `http` only toward loopback)".into(),
            );
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err("the token URL may not carry user information".into());
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path_and_query = uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string());
        Ok(Self {
            tls,
            host,
            port,
            path_and_query,
        })
    }

    /// The `Host` header value.
    pub fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// How a client authenticates to its token endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
enum ClientAuth {
    /// `Authorization: Basic` (RFC 6749 §2.3.1, what servers must support).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

/// The value of an `oauth2_client_credentials` credential, as stored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredClient {
    token_url: String,
    client_id: String,
    client_secret: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    client_auth: ClientAuth,
}

/// A Google service-account key file (fields the grant does not use are ignored: the file is
/// stored as downloaded), plus `scope` and `subject` (domain-wide delegation).
#[derive(Deserialize)]
struct StoredServiceAccount {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    subject: Option<String>,
}

enum Grant {
    ClientCredentials {
        client_id: String,
        client_secret: Zeroizing<String>,
        scope: Option<String>,
        audience: Option<String>,
        auth: ClientAuth,
    },
    ServiceAccount {
        client_email: String,
        private_key: Zeroizing<String>,
        private_key_id: Option<String>,
        scope: String,
        subject: Option<String>,
    },
}

/// What a token credential mints access tokens from. `Debug` shows the endpoint and the client
/// (id or e-mail), never a secret.
pub struct TokenSource {
    endpoint: Endpoint,
    grant: Grant,
    /// SHA-256 of the stored value: a rotated value has another, and the tokens minted from the
    /// old one are dropped.
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, client) = match &self.grant {
            Grant::ClientCredentials { client_id, .. } => ("client_credentials", client_id),
            Grant::ServiceAccount { client_email, .. } => ("service_account", client_email),
        };
        f.debug_struct("TokenSource")
            .field("grant", &kind)
            .field("client", client)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// A grant request ready to post: holds secret material, zeroized on drop, never printed.
pub struct GrantRequest {
    /// `application/x-www-form-urlencoded` body.
    pub body: Zeroizing<String>,
    /// `Authorization` header value (client credentials with Basic authentication).
    pub authorization: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for GrantRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrantRequest(<redacted>)")
    }
}

/// serde's message may quote the input: keep only its category and position.
fn json_error(what: &str, e: &serde_json::Error) -> String {
    format!(
        "{what}: {:?} error at line {} column {}",
        e.classify(),
        e.line(),
        e.column()
    )
}

fn fingerprint(kind: &str, value: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update([0]);
    h.update(value);
    h.finalize().into()
}

fn checked_text(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 1024 || s.chars().any(char::is_control) {
        return Err(format!("`{what}` must be set (printable text)"));
    }
    Ok(())
}

impl TokenSource {
    /// Reads an `oauth2_client_credentials` value: JSON `{"token_url", "client_id",
    /// "client_secret", "scope"?, "audience"?, "client_auth"?: "basic"|"post"}`.
    pub fn client_credentials(value: &[u8]) -> Result<Self, String> {
        let s: StoredClient = serde_json::from_slice(value).map_err(|e| {
            json_error(
                "an `oauth2_client_credentials` value is JSON with `token_url`, `client_id`, `client_secret` (and optionally `scope`, `audience`, `client_auth`)",
                &e,
            )
        })?;
        let client_secret = Zeroizing::new(s.client_secret);
        checked_text("client_id", &s.client_id)?;
        checked_text("client_secret", &client_secret)?;
        for (what, v) in [("scope", &s.scope), ("audience", &s.audience)] {
            if let Some(v) = v {
                checked_text(what, v)?;
            }
        }
        Ok(Self {
            endpoint: Endpoint::parse(&s.token_url)?,
            grant: Grant::ClientCredentials {
                client_id: s.client_id,
                client_secret,
                scope: s.scope,
                audience: s.audience,
                auth: s.client_auth,
            },
            fingerprint: fingerprint("oauth2_client_credentials", value),
        })
    }

    /// Reads a `google_service_account` value: a service-account key file (`client_email`,
    /// `private_key`, `private_key_id`, `token_uri`), optionally with `scope` (default
    /// `cloud-platform`) and `subject`. The key must be an RSA key in PEM.
    pub fn service_account(value: &[u8]) -> Result<Self, String> {
        let s: StoredServiceAccount = serde_json::from_slice(value).map_err(|e| {
            json_error(
                "a `google_service_account` value is a service-account key file (JSON with `client_email`, `private_key`)",
                &e,
            )
        })?;
        let private_key = Zeroizing::new(s.private_key);
        if s.kind.as_deref().is_some_and(|k| k != "service_account") {
            return Err("the key file's `type` is not `service_account`".into());
        }
        checked_text("client_email", &s.client_email)?;
        // Checked once here, so a grant never fails on a key that cannot sign.
        jsonwebtoken::EncodingKey::from_rsa_pem(private_key.as_bytes())
            .map_err(|_| "`private_key` is not an RSA private key in PEM".to_string())?;
        let scope = s.scope.unwrap_or_else(|| GOOGLE_DEFAULT_SCOPE.into());
        checked_text("scope", &scope)?;
        let token_uri = s.token_uri.unwrap_or_else(|| GOOGLE_TOKEN_URI.into());
        Ok(Self {
            endpoint: Endpoint::parse(&token_uri)?,
            grant: Grant::ServiceAccount {
                client_email: s.client_email,
                private_key,
                private_key_id: s.private_key_id,
                scope,
                subject: s.subject,
            },
            fingerprint: fingerprint("google_service_account", value),
        })
    }

    /// Whether this is a service account (JWT bearer grant).
    pub fn is_service_account(&self) -> bool {
        matches!(self.grant, Grant::ServiceAccount { .. })
    }

    /// Where grants are posted.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The stored value's fingerprint (see [`cache`]).
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The secret parts sent as written (a client secret; a service account's key only signs).
    pub fn sent_secrets(&self) -> Vec<&[u8]> {
        match &self.grant {
            Grant::ClientCredentials { client_secret, .. } => vec![client_secret.as_bytes()],
            Grant::ServiceAccount { .. } => Vec::new(),
        }
    }

    /// The secret parts (scrubbed from responses that echo them).
    pub fn secrets(&self) -> Vec<&[u8]> {
        match &self.grant {
            Grant::ClientCredentials { client_secret, .. } => vec![client_secret.as_bytes()],
            Grant::ServiceAccount { private_key, .. } => vec![private_key.as_bytes()],
        }
    }

    /// The grant request at `now_unix` (a service account's assertion is signed now).
    pub fn grant_request(&self, now_unix: u64) -> Result<GrantRequest, String> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        let mut authorization = None;
        match &self.grant {
            Grant::ClientCredentials {
                client_id,
                client_secret,
                scope,
                audience,
                auth,
            } => {
                form.append_pair("grant_type", "client_credentials");
                if let Some(scope) = scope {
                    form.append_pair("scope", scope);
                }
                if let Some(audience) = audience {
                    form.append_pair("audience", audience);
                }
                match auth {
                    ClientAuth::Basic => {
                        // RFC 6749 §2.3.1: both parts form-encoded before Basic encoding.
                        let pair = Zeroizing::new(format!(
                            "{}:{}",
                            form_encode(client_id),
                            Zeroizing::new(form_encode(client_secret)).as_str()
                        ));
                        authorization = Some(Zeroizing::new(format!(
                            "Basic {}",
                            Zeroizing::new(STANDARD.encode(pair.as_bytes())).as_str()
                        )));
                    }
                    ClientAuth::Post => {
                        form.append_pair("client_id", client_id);
                        form.append_pair("client_secret", client_secret);
                    }
                }
            }
            Grant::ServiceAccount {
                client_email,
                private_key,
                private_key_id,
                scope,
                subject,
            } => {
                let assertion = Zeroizing::new(sign_assertion(
                    client_email,
                    private_key,
                    private_key_id.as_deref(),
                    scope,
                    subject.as_deref(),
                    &self.endpoint,
                    now_unix,
                )?);
                form.append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer");
                form.append_pair("assertion", &assertion);
            }
        }
        Ok(GrantRequest {
            body: Zeroizing::new(form.finish()),
            authorization,
        })
    }
}

fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: String,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
}

/// The RS256-signed JWT a service account presents (RFC 7523 §2.1): its audience is the token
/// endpoint's URL.
fn sign_assertion(
    client_email: &str,
    private_key: &Zeroizing<String>,
    private_key_id: Option<&str>,
    scope: &str,
    subject: Option<&str>,
    endpoint: &Endpoint,
    now_unix: u64,
) -> Result<String, String> {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = private_key_id.map(String::from);
    let claims = AssertionClaims {
        iss: client_email,
        scope,
        aud: format!(
            "{}://{}{}",
            if endpoint.tls { "https" } else { "http" },
            endpoint.authority(),
            endpoint.path_and_query
        ),
        iat: now_unix,
        exp: now_unix + ASSERTION_LIFETIME_SECS,
        sub: subject,
    };
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(private_key.as_bytes())
        .map_err(|_| "`private_key` is not an RSA private key in PEM".to_string())?;
    jsonwebtoken::encode(&header, &claims, &key)
        .map_err(|_| "the assertion could not be signed".to_string())
}

/// A token endpoint's answer (RFC 6749 §5.1), read from at most [`fetch::MAX_RESPONSE_BYTES`].
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

/// A minted access token and how long it lives. `Debug` never shows the token.
pub struct AccessToken {
    /// The token (what `$CRED{name}` becomes).
    pub value: super::secret::SecretValue,
    /// Its lifetime from when it was received.
    pub lifetime: Duration,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// How long a token is taken to live when the endpoint does not say (RFC 6749 leaves
/// `expires_in` optional).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// The longest a token is kept: a longer `expires_in` (up to `2^64-1` seconds, which no clock
/// can add to the present) is read as this. Refreshing a long-lived token early costs one grant
/// a day; trusting the endpoint's number would overflow the expiry.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Reads a token endpoint's JSON answer. The token must be printable ASCII without spaces (it
/// goes into headers); errors never quote the body.
pub fn parse_answer(body: &[u8]) -> Result<AccessToken, String> {
    let answer: TokenAnswer = serde_json::from_slice(body)
        .map_err(|e| json_error("the token endpoint's answer is not a token response", &e))?;
    let token = Zeroizing::new(answer.access_token);
    if token.is_empty() || token.len() > 16 * 1024 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token endpoint's `access_token` is empty or not printable".into());
    }
    if token.len() < super::kind::MIN_SECRET_BYTES {
        return Err(format!(
            "the token endpoint's `access_token` is shorter than {} bytes",
            super::kind::MIN_SECRET_BYTES
        ));
    }
    let lifetime = lifetime(answer.expires_in.as_ref())?;
    // SECURITY (the endpoint's load): a token that expires at once is never fresh, so every
    // request would make a grant of its own (and send a token already expired).
    if lifetime < MIN_LIFETIME {
        return Err(format!(
            "the token endpoint's token expires in {} s, too soon to be used (at least {} s)",
            lifetime.as_secs(),
            MIN_LIFETIME.as_secs()
        ));
    }
    Ok(AccessToken {
        value: super::secret::SecretValue::new(token.as_bytes().to_vec()),
        lifetime,
    })
}

/// The shortest lifetime a token is taken with (`expires_in`).
pub const MIN_LIFETIME: Duration = Duration::from_secs(5);

/// An answer's `expires_in` as a lifetime, at most [`MAX_LIFETIME`].
///
/// SECURITY: the number is the token endpoint's to choose, up to any size: it is bounded here,
/// before anything adds it to a clock (an `Instant` plus `2^64-1` seconds panics).
fn lifetime(expires_in: Option<&serde_json::Value>) -> Result<Duration, String> {
    let not_whole = || "the token endpoint's `expires_in` is not a whole number of seconds";
    let secs = match expires_in {
        None => return Ok(DEFAULT_LIFETIME),
        // A whole number too large for 64 bits is read by serde as a float: as large as any.
        Some(serde_json::Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(secs), _) => secs,
            (None, Some(f)) if f.is_finite() && f >= 0.0 && f.fract() == 0.0 => u64::MAX,
            _ => return Err(not_whole().into()),
        },
        // Some servers send it as a string.
        Some(serde_json::Value::String(s)) => {
            let digits = s.trim();
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(not_whole().into());
            }
            digits.parse::<u64>().unwrap_or(u64::MAX)
        }
        Some(_) => return Err("the token endpoint's `expires_in` is not a number".into()),
    };
    Ok(Duration::from_secs(secs).min(MAX_LIFETIME))
}

#[cfg(test)]
mod tests;
