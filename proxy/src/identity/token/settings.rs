//! `[token]` in the tenant file: the keys and rules workload tokens are verified with.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::TokenSettings;
use crate::problems::Problems;

/// `[token]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// JWKS file with the public keys tokens are signed with (EdDSA or ES256).
    pub jwks_file: PathBuf,
    /// Required `aud`.
    #[serde(default = "default_audience")]
    pub audience: String,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Longest lifetime (`exp - iat`) accepted; longer-lived tokens are refused.
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime: String,
    /// Clock-skew allowance for `exp`, `nbf`, `iat`.
    #[serde(default = "default_leeway")]
    pub leeway: String,
    /// File of revoked `jti`s, one per line (`#` comments allowed).
    pub revoked_jtis_file: Option<PathBuf>,
}

fn default_audience() -> String {
    "tenant-proxy".into()
}
fn default_max_lifetime() -> String {
    "1h".into()
}
fn default_leeway() -> String {
    "30s".into()
}

/// Token verification settings with resolved paths (the files are read by the snapshot).
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// JWKS path.
    pub jwks_file: PathBuf,
    /// Required audience.
    pub audience: String,
    /// Required issuer.
    pub issuer: Option<String>,
    /// Longest accepted lifetime.
    pub max_lifetime: Duration,
    /// Clock-skew leeway.
    pub leeway: Duration,
    /// Revocation list path.
    pub revoked_jtis_file: Option<PathBuf>,
}

impl TokenConfig {
    /// Validates `[token]`; the files resolve against the tenant file.
    pub fn from_spec(spec: TokenSpec, p: &mut Problems<'_>) -> Self {
        let max_lifetime = p.duration("token.max_lifetime", &spec.max_lifetime);
        if max_lifetime < Duration::from_secs(60) || max_lifetime > Duration::from_secs(24 * 3600) {
            p.push("token.max_lifetime", "must be between 1m and 24h");
        }
        let leeway = p.duration("token.leeway", &spec.leeway);
        if leeway > Duration::from_secs(300) {
            p.push("token.leeway", "must be at most 5m");
        }
        if spec.audience.is_empty() {
            p.push("token.audience", "must not be empty");
        }
        TokenConfig {
            jwks_file: p.path(&spec.jwks_file),
            audience: spec.audience,
            issuer: spec.issuer,
            max_lifetime,
            leeway,
            revoked_jtis_file: spec.revoked_jtis_file.map(|f| p.path(&f)),
        }
    }

    /// What the verifier checks tokens against.
    pub fn verifier_settings(&self) -> TokenSettings {
        TokenSettings {
            audience: self.audience.clone(),
            issuer: self.issuer.clone(),
            max_lifetime: self.max_lifetime,
            leeway: self.leeway,
        }
    }
}
