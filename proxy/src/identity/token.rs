//! Signed workload tokens (JWT, EdDSA or ES256), verified against a JWKS.
//!
//! Verification takes the current time as an argument so tests are deterministic, and checks
//! the time claims itself: expired, not yet valid, and minted for longer than the configured
//! maximum lifetime (a long-lived token is refused even while fresh). Errors name the reason and
//! never echo the token.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde::{Deserialize, Serialize};

use crate::ids::{TenantId, WorkloadId};

/// Verification settings.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// Required `aud`.
    pub audience: String,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Longest accepted `exp - iat`.
    pub max_lifetime: Duration,
    /// Clock-skew allowance.
    pub leeway: Duration,
}

/// Why a JWKS was rejected.
#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    /// Not a JWKS document.
    #[error("not a valid JWKS document: {0}")]
    Parse(String),
    /// No keys.
    #[error("the JWKS has no keys")]
    Empty,
    /// A key without `kid`, or a duplicate.
    #[error("every key needs a unique `kid` (problem with key #{index})")]
    Kid {
        /// Position of the key.
        index: usize,
    },
    /// A key type other than OKP/Ed25519 or EC/P-256, or an `alg` that does not fit.
    #[error("key `{kid}` is not an Ed25519 (EdDSA) or P-256 (ES256) signing key")]
    Unsupported {
        /// The key's id.
        kid: String,
    },
}

/// Public keys by `kid`.
pub struct KeySet {
    keys: HashMap<String, (DecodingKey, Algorithm)>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeySet {
    /// Parses a JWKS (`{"keys":[…]}`) of Ed25519 and P-256 keys.
    pub fn from_jwks_json(text: &str) -> Result<KeySet, KeySetError> {
        let set: JwkSet =
            serde_json::from_str(text).map_err(|e| KeySetError::Parse(e.to_string()))?;
        if set.keys.is_empty() {
            return Err(KeySetError::Empty);
        }
        let mut keys = HashMap::new();
        for (index, jwk) in set.keys.iter().enumerate() {
            let kid = jwk
                .common
                .key_id
                .clone()
                .filter(|k| !k.is_empty())
                .ok_or(KeySetError::Kid { index })?;
            let alg = match &jwk.algorithm {
                AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                    Algorithm::EdDSA
                }
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                _ => return Err(KeySetError::Unsupported { kid }),
            };
            let declared = jwk.common.key_algorithm.map(|a| format!("{a:?}"));
            if declared.as_deref().is_some_and(|d| d != format!("{alg:?}")) {
                return Err(KeySetError::Unsupported { kid });
            }
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|_| KeySetError::Unsupported { kid: kid.clone() })?;
            if keys.insert(kid, (key, alg)).is_some() {
                return Err(KeySetError::Kid { index });
            }
        }
        Ok(KeySet { keys })
    }
}

/// A run's budget as carried by its token.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunBudget {
    /// LLM tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<u64>,
    /// Wall time in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_time_s: Option<u64>,
    /// Cost in micro-units of currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_micros: Option<u64>,
}

/// Who started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Initiator {
    /// A person.
    User,
    /// A schedule.
    Cron,
    /// An inbound webhook.
    Webhook,
    /// Another agent.
    Agent,
    /// A service.
    Service,
}

#[derive(Deserialize)]
struct Claims {
    tenant: Option<String>,
    sub: Option<String>,
    exp: Option<u64>,
    iat: Option<u64>,
    nbf: Option<u64>,
    jti: Option<String>,
    run_id: Option<String>,
    run_budget: Option<RunBudget>,
    scope: Option<String>,
    initiator: Option<Initiator>,
    correlation_id: Option<String>,
}

/// A verified token's claims.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    /// Tenant.
    pub tenant: TenantId,
    /// Workload (`sub`).
    pub workload: WorkloadId,
    /// Run id.
    pub run_id: Option<String>,
    /// Run budget.
    pub run_budget: Option<RunBudget>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Initiator.
    pub initiator: Option<Initiator>,
    /// Correlation id.
    pub correlation_id: Option<String>,
    /// Token id.
    pub jti: Option<String>,
    /// `exp`.
    pub expires_at: u64,
}

/// Why a token was refused. Display texts go into error bodies: no token content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT.
    #[error("the token is malformed")]
    Malformed,
    /// An algorithm other than the key's (EdDSA/ES256).
    #[error("the token's signature algorithm is not accepted")]
    UnsupportedAlgorithm,
    /// No key with this `kid`.
    #[error("the token is signed with an unknown key")]
    UnknownKey,
    /// Signature does not verify.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// Past `exp`.
    #[error("the token has expired")]
    Expired,
    /// Before `nbf` or `iat`.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `aud` mismatch.
    #[error("the token is for another audience")]
    WrongAudience,
    /// `iss` mismatch.
    #[error("the token is from an unexpected issuer")]
    WrongIssuer,
    /// `exp - iat` over the maximum.
    #[error("the token's lifetime exceeds the allowed maximum of {max_secs}s")]
    LifetimeTooLong {
        /// The maximum, in seconds.
        max_secs: u64,
    },
    /// `jti` revoked.
    #[error("the token has been revoked")]
    Revoked,
    /// A required claim is missing.
    #[error("the token has no `{0}` claim")]
    MissingClaim(&'static str),
    /// A claim has an invalid value.
    #[error("the token's `{0}` claim is invalid")]
    InvalidClaim(&'static str),
}

/// Verifies tokens against one key set and revocation list.
#[derive(Debug)]
pub struct TokenVerifier {
    settings: TokenSettings,
    keys: KeySet,
    revoked: HashSet<String>,
}

fn valid_run_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

impl TokenVerifier {
    /// A verifier.
    pub fn new(settings: TokenSettings, keys: KeySet, revoked_jtis: HashSet<String>) -> Self {
        Self {
            settings,
            keys,
            revoked: revoked_jtis,
        }
    }

    /// Verifies `token` at time `now_unix` (seconds).
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<VerifiedToken, TokenError> {
        if token.len() > 8192 {
            return Err(TokenError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let (key, alg) = match &header.kid {
            Some(kid) => self.keys.keys.get(kid).ok_or(TokenError::UnknownKey)?,
            None if self.keys.keys.len() == 1 => self
                .keys
                .keys
                .values()
                .next()
                .ok_or(TokenError::UnknownKey)?,
            None => return Err(TokenError::UnknownKey),
        };
        // SECURITY: the key decides the algorithm, never the token header.
        if header.alg != *alg {
            return Err(TokenError::UnsupportedAlgorithm);
        }
        let mut validation = Validation::new(*alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims = ["aud".to_string()].into_iter().collect();
        validation.set_audience(&[&self.settings.audience]);
        if let Some(iss) = &self.settings.issuer {
            validation.set_issuer(&[iss]);
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidAudience => TokenError::WrongAudience,
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    TokenError::UnsupportedAlgorithm
                }
                ErrorKind::MissingRequiredClaim(c) if c == "aud" => TokenError::MissingClaim("aud"),
                ErrorKind::MissingRequiredClaim(c) if c == "iss" => TokenError::WrongIssuer,
                _ => TokenError::Malformed,
            }
        })?;
        let c = data.claims;
        let leeway = self.settings.leeway.as_secs();
        let exp = c.exp.ok_or(TokenError::MissingClaim("exp"))?;
        let iat = c.iat.ok_or(TokenError::MissingClaim("iat"))?;
        if now_unix > exp.saturating_add(leeway) {
            return Err(TokenError::Expired);
        }
        if c.nbf
            .is_some_and(|nbf| nbf > now_unix.saturating_add(leeway))
            || iat > now_unix.saturating_add(leeway)
        {
            return Err(TokenError::NotYetValid);
        }
        let max = self.settings.max_lifetime.as_secs();
        if exp.saturating_sub(iat) > max {
            return Err(TokenError::LifetimeTooLong { max_secs: max });
        }
        if c.jti.as_ref().is_some_and(|j| self.revoked.contains(j)) {
            return Err(TokenError::Revoked);
        }
        let tenant = c.tenant.ok_or(TokenError::MissingClaim("tenant"))?;
        let tenant = TenantId::new(&tenant).map_err(|_| TokenError::InvalidClaim("tenant"))?;
        let sub = c.sub.ok_or(TokenError::MissingClaim("sub"))?;
        let workload = WorkloadId::new(&sub).map_err(|_| TokenError::InvalidClaim("sub"))?;
        if c.run_id.as_deref().is_some_and(|r| !valid_run_id(r)) {
            return Err(TokenError::InvalidClaim("run_id"));
        }
        if c.correlation_id.as_ref().is_some_and(|r| r.len() > 128) {
            return Err(TokenError::InvalidClaim("correlation_id"));
        }
        Ok(VerifiedToken {
            tenant,
            workload,
            run_id: c.run_id,
            run_budget: c.run_budget,
            scopes: c
                .scope
                .map(|s| s.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
            initiator: c.initiator,
            correlation_id: c.correlation_id,
            jti: c.jti,
            expires_at: exp,
        })
    }
}

/// Signature algorithm for new keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// Ed25519.
    EdDSA,
    /// ECDSA P-256 SHA-256.
    ES256,
}

/// A new key pair: private PKCS#8 PEM and public JWK.
pub struct GeneratedKey {
    /// PKCS#8 PEM.
    pub private_pem: String,
    /// Public JWK with `kid`, `alg`, `use`.
    pub jwk: serde_json::Value,
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("jwk", &self.jwk)
            .finish_non_exhaustive()
    }
}

/// Why a key could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Key generation failed.
    #[error("key generation failed")]
    Generate,
    /// Not a PKCS#8 PEM Ed25519 or P-256 key.
    #[error("the key file is not a PKCS#8 PEM Ed25519 or P-256 private key")]
    BadKey,
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Generates a signing key.
pub fn generate_key(alg: KeyAlgorithm, kid: &str) -> Result<GeneratedKey, KeyError> {
    let rng = SystemRandom::new();
    let (der, jwk) = match alg {
        KeyAlgorithm::EdDSA => {
            let der = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Generate)?;
            let pair = Ed25519KeyPair::from_pkcs8(der.as_ref()).map_err(|_| KeyError::Generate)?;
            let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
            (
                der,
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}),
            )
        }
        KeyAlgorithm::ES256 => {
            let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| KeyError::Generate)?;
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.as_ref(), &rng)
                    .map_err(|_| KeyError::Generate)?;
            let point = pair.public_key().as_ref();
            // Uncompressed point: 0x04 || X (32) || Y (32).
            let (x, y) = (
                point.get(1..33).ok_or(KeyError::Generate)?,
                point.get(33..65).ok_or(KeyError::Generate)?,
            );
            let jwk = serde_json::json!({
                "kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
                "kid": kid, "alg": "ES256", "use": "sig"
            });
            (der, jwk)
        }
    };
    let b64 = STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(GeneratedKey {
        private_pem: pem,
        jwk,
    })
}

/// What to put in a new token.
#[derive(Debug, Clone)]
pub struct MintRequest {
    /// Tenant.
    pub tenant: TenantId,
    /// Workload.
    pub workload: WorkloadId,
    /// Audience.
    pub audience: String,
    /// Issuer.
    pub issuer: Option<String>,
    /// Lifetime from `now_unix`.
    pub ttl: Duration,
    /// Run id.
    pub run_id: Option<String>,
    /// Run budget.
    pub run_budget: Option<RunBudget>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Token id (random when `None`).
    pub jti: Option<String>,
    /// Key id for the header.
    pub kid: Option<String>,
    /// Issue time (`iat`).
    pub now_unix: u64,
    /// `nbf`, if any.
    pub not_before: Option<u64>,
}

#[derive(Serialize)]
struct MintClaims<'a> {
    tenant: &'a str,
    sub: &'a str,
    aud: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    jti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_budget: Option<&'a RunBudget>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    STANDARD.decode(body).ok()
}

/// Signs a token with a PKCS#8 PEM Ed25519 or P-256 private key.
pub fn mint(private_pem: &str, req: &MintRequest) -> Result<String, KeyError> {
    let der = pem_der(private_pem).ok_or(KeyError::BadKey)?;
    let (alg, key) = if Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).is_ok() {
        (Algorithm::EdDSA, EncodingKey::from_ed_der(&der))
    } else if EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &SystemRandom::new())
        .is_ok()
    {
        (Algorithm::ES256, EncodingKey::from_ec_der(&der))
    } else {
        return Err(KeyError::BadKey);
    };
    let mut header = Header::new(alg);
    header.kid = req.kid.clone();
    let claims = MintClaims {
        tenant: req.tenant.as_str(),
        sub: req.workload.as_str(),
        aud: &req.audience,
        iss: req.issuer.as_deref(),
        iat: req.now_unix,
        exp: req.now_unix + req.ttl.as_secs(),
        nbf: req.not_before,
        jti: req
            .jti
            .clone()
            .unwrap_or_else(|| crate::trace::random_hex(16)),
        run_id: req.run_id.as_deref(),
        run_budget: req.run_budget.as_ref(),
        scope: (!req.scopes.is_empty()).then(|| req.scopes.join(" ")),
    };
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| KeyError::Sign(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn testdata(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/src/identity/testdata/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("fixture")
    }

    fn verifier() -> TokenVerifier {
        let keys = KeySet::from_jwks_json(&testdata("test-jwks.json")).expect("jwks");
        let settings = TokenSettings {
            audience: "tenant-proxy".into(),
            issuer: None,
            max_lifetime: Duration::from_secs(3600),
            leeway: Duration::from_secs(30),
        };
        TokenVerifier::new(
            settings,
            keys,
            ["revoked-1".to_string()].into_iter().collect(),
        )
    }

    fn req() -> MintRequest {
        MintRequest {
            tenant: TenantId::new("acme").expect("id"),
            workload: WorkloadId::new("bot").expect("id"),
            audience: "tenant-proxy".into(),
            issuer: None,
            ttl: Duration::from_secs(300),
            run_id: Some("run-1".into()),
            run_budget: Some(RunBudget {
                tokens: Some(1000),
                ..Default::default()
            }),
            scopes: vec!["llm".into(), "tools".into()],
            jti: None,
            kid: Some("test-ed".into()),
            now_unix: NOW,
            not_before: None,
        }
    }

    fn forge(header: &str, claims: &str) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims),
            URL_SAFE_NO_PAD.encode(b"sig")
        )
    }

    #[test]
    fn verify_matrix() {
        let ed = testdata("ed25519-test.pem");
        let es = testdata("es256-test.pem");
        let other = testdata("other-ed25519.pem");
        let v = verifier();
        let ok = v
            .verify(&mint(&ed, &req()).expect("mint"), NOW)
            .expect("valid");
        assert_eq!(
            (
                ok.tenant.as_str(),
                ok.workload.as_str(),
                ok.run_id.as_deref()
            ),
            ("acme", "bot", Some("run-1"))
        );
        assert_eq!(ok.scopes, vec!["llm", "tools"]);
        assert_eq!(ok.run_budget.and_then(|b| b.tokens), Some(1000));
        let es_tok = mint(
            &es,
            &MintRequest {
                kid: Some("test-es".into()),
                ..req()
            },
        )
        .expect("mint");
        assert!(v.verify(&es_tok, NOW).is_ok());

        let cases: Vec<(&str, String, u64, TokenError)> = vec![
            ("garbage", "abc".into(), NOW, TokenError::Malformed),
            ("two parts", "a.b".into(), NOW, TokenError::Malformed),
            (
                "expired",
                mint(&ed, &req()).expect("mint"),
                NOW + 300 + 31,
                TokenError::Expired,
            ),
            (
                "iat in future",
                mint(&ed, &req()).expect("mint"),
                NOW - 31,
                TokenError::NotYetValid,
            ),
            (
                "nbf in future",
                mint(
                    &ed,
                    &MintRequest {
                        not_before: Some(NOW + 60),
                        ..req()
                    },
                )
                .expect("mint"),
                NOW,
                TokenError::NotYetValid,
            ),
            (
                "other key same kid",
                mint(&other, &req()).expect("mint"),
                NOW,
                TokenError::BadSignature,
            ),
            (
                "es key under ed kid",
                mint(&es, &req()).expect("mint"),
                NOW,
                TokenError::UnsupportedAlgorithm,
            ),
            (
                "wrong audience",
                mint(
                    &ed,
                    &MintRequest {
                        audience: "x".into(),
                        ..req()
                    },
                )
                .expect("mint"),
                NOW,
                TokenError::WrongAudience,
            ),
            (
                "too long-lived",
                mint(
                    &ed,
                    &MintRequest {
                        ttl: Duration::from_secs(7200),
                        ..req()
                    },
                )
                .expect("mint"),
                NOW,
                TokenError::LifetimeTooLong { max_secs: 3600 },
            ),
            (
                "revoked",
                mint(
                    &ed,
                    &MintRequest {
                        jti: Some("revoked-1".into()),
                        ..req()
                    },
                )
                .expect("mint"),
                NOW,
                TokenError::Revoked,
            ),
            (
                "unknown kid",
                mint(
                    &ed,
                    &MintRequest {
                        kid: Some("nope".into()),
                        ..req()
                    },
                )
                .expect("mint"),
                NOW,
                TokenError::UnknownKey,
            ),
            (
                "no kid, two keys",
                mint(&ed, &MintRequest { kid: None, ..req() }).expect("mint"),
                NOW,
                TokenError::UnknownKey,
            ),
            (
                "alg none",
                forge(r#"{"alg":"none","kid":"test-ed"}"#, r#"{"tenant":"acme"}"#),
                NOW,
                TokenError::Malformed,
            ),
            (
                "hs256",
                forge(r#"{"alg":"HS256","kid":"test-ed"}"#, r#"{"tenant":"acme"}"#),
                NOW,
                TokenError::UnsupportedAlgorithm,
            ),
        ];
        for (name, token, now, want) in cases {
            assert_eq!(v.verify(&token, now).err(), Some(want), "{name}");
        }
        let bad_tenant = forge(r#"{"alg":"EdDSA","kid":"test-ed"}"#, r#"{"tenant":"../x"}"#);
        assert!(v.verify(&bad_tenant, NOW).is_err());
    }

    #[test]
    fn errors_do_not_echo_tokens() {
        let token = mint(
            &testdata("ed25519-test.pem"),
            &MintRequest {
                audience: "x".into(),
                ..req()
            },
        )
        .expect("mint");
        let err = verifier().verify(&token, NOW).expect_err("refused");
        assert!(!err.to_string().contains(&token[..20]));
    }

    #[test]
    fn jwks_errors() {
        let cases = [
            ("{}", "JWKS"),
            (r#"{"keys":[]}"#, "no keys"),
            (
                r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
                "kid",
            ),
            (
                r#"{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}]}"#,
                "not an Ed25519",
            ),
            (
                r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","alg":"ES256","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
                "not an Ed25519",
            ),
            (
                r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},{"kty":"OKP","crv":"Ed25519","kid":"a","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
                "unique",
            ),
        ];
        for (json, want) in cases {
            let err = KeySet::from_jwks_json(json).expect_err(json).to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
    }

    #[test]
    #[ignore = "writes the fixtures; run once with --ignored"]
    fn write_fixtures() {
        let dir = format!("{}/src/identity/testdata", env!("CARGO_MANIFEST_DIR"));
        std::fs::create_dir_all(&dir).expect("dir");
        let ed = generate_key(KeyAlgorithm::EdDSA, "test-ed").expect("ed");
        let es = generate_key(KeyAlgorithm::ES256, "test-es").expect("es");
        let other = generate_key(KeyAlgorithm::EdDSA, "test-ed").expect("other");
        std::fs::write(format!("{dir}/ed25519-test.pem"), &ed.private_pem).expect("w");
        std::fs::write(format!("{dir}/es256-test.pem"), &es.private_pem).expect("w");
        std::fs::write(format!("{dir}/other-ed25519.pem"), &other.private_pem).expect("w");
        let jwks = serde_json::json!({ "keys": [ed.jwk, es.jwk] });
        std::fs::write(
            format!("{dir}/test-jwks.json"),
            serde_json::to_vec_pretty(&jwks).expect("json"),
        )
        .expect("w");
    }
}
