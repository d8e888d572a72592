//! Making keys and tokens: `tenant-proxy token keygen` and `token mint` (for development and
//! tests; in production an identity provider mints tokens). Not on the request path.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde::Serialize;
use serde_json::Value;
use zeroize::Zeroizing;

use super::{valid_scope, RunBudget};
use crate::ids::{valid_run_id, TenantId, WorkloadId};

/// Signature algorithm for new keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// Ed25519 (`EdDSA`).
    EdDSA,
    /// ECDSA P-256 with SHA-256 (`ES256`).
    ES256,
}

/// A new key pair: private PKCS#8 PEM and public JWK. `Debug` shows the JWK only.
pub struct GeneratedKey {
    /// The private key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub private_pem: String,
    /// The public JWK, with `kid`, `alg` and `use: "sig"`.
    pub jwk: Value,
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("private_pem", &"<redacted>")
            .field("jwk", &self.jwk)
            .finish()
    }
}

/// Why a key could not be made or a token could not be minted. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    /// The system random source failed.
    #[error("key generation failed")]
    Generate,
    /// The private key is not usable.
    #[error("the key is not a PKCS#8 PEM (`BEGIN PRIVATE KEY`) Ed25519 or P-256 private key")]
    BadKey,
    /// A request field holds a value the verifier would refuse.
    #[error("the `{0}` value is invalid")]
    InvalidRequest(&'static str),
    /// Signing failed.
    #[error("signing the token failed")]
    Sign,
}

/// Generates a signing key pair; `kid` goes into the JWK.
pub fn generate_key(alg: KeyAlgorithm, kid: &str) -> Result<GeneratedKey, MintError> {
    if kid.is_empty() {
        return Err(MintError::InvalidRequest("kid"));
    }
    let rng = SystemRandom::new();
    let (der, jwk): (Zeroizing<Vec<u8>>, _) = match alg {
        KeyAlgorithm::EdDSA => {
            let (pair, der) = crate::private_key::generate_ed25519().ok_or(MintError::Generate)?;
            let jwk = serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
                "kid": kid,
                "alg": "EdDSA",
                "use": "sig",
            });
            (der, jwk)
        }
        KeyAlgorithm::ES256 => {
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| MintError::Generate)?;
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng)
                    .map_err(|_| MintError::Generate)?;
            // Uncompressed point: 0x04 || X (32 bytes) || Y (32 bytes).
            let point = pair.public_key().as_ref();
            let (Some(x), Some(y)) = (point.get(1..33), point.get(33..65)) else {
                return Err(MintError::Generate);
            };
            let jwk = serde_json::json!({
                "kty": "EC",
                "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(x),
                "y": URL_SAFE_NO_PAD.encode(y),
                "kid": kid,
                "alg": "ES256",
                "use": "sig",
            });
            (Zeroizing::new(doc.as_ref().to_vec()), jwk)
        }
    };
    Ok(GeneratedKey {
        private_pem: crate::private_key::pem(&der).to_string(),
        jwk,
    })
}

/// What to put in a new token.
#[derive(Debug, Clone)]
pub struct MintRequest {
    /// Tenant (`tenant`).
    pub tenant: TenantId,
    /// Workload (`sub`).
    pub workload: WorkloadId,
    /// Audience (`aud`).
    pub audience: String,
    /// Issuer (`iss`).
    pub issuer: Option<String>,
    /// Lifetime: `exp = now_unix + ttl`.
    pub ttl: Duration,
    /// Run id (`run_id`).
    pub run_id: Option<String>,
    /// Run budget (`run_budget`).
    pub run_budget: Option<RunBudget>,
    /// Scopes, joined with spaces into `scope` (omitted when empty).
    pub scopes: Vec<String>,
    /// Token id (`jti`); 128 random bits as hex when `None`.
    pub jti: Option<String>,
    /// Key id for the header (`kid`).
    pub kid: Option<String>,
    /// Issue time (`iat`), seconds since the Unix epoch.
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

/// The DER inside a `-----BEGIN PRIVATE KEY-----` block.
fn pkcs8_der(pem: &str) -> Result<Zeroizing<Vec<u8>>, MintError> {
    const BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
    const END: &str = "-----END PRIVATE KEY-----";
    let start = pem.find(BEGIN).ok_or(MintError::BadKey)? + BEGIN.len();
    let len = pem
        .get(start..)
        .and_then(|rest| rest.find(END))
        .ok_or(MintError::BadKey)?;
    let body: Zeroizing<String> = Zeroizing::new(
        pem.get(start..start + len)
            .ok_or(MintError::BadKey)?
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect(),
    );
    STANDARD
        .decode(body.as_bytes())
        .map(Zeroizing::new)
        .map_err(|_| MintError::BadKey)
}

/// The signing key and algorithm for a PKCS#8 Ed25519 or P-256 private key.
pub(super) fn signing_key(private_pem: &str) -> Result<(EncodingKey, Algorithm), MintError> {
    let der = pkcs8_der(private_pem)?;
    if Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).is_ok() {
        Ok((EncodingKey::from_ed_der(&der), Algorithm::EdDSA))
    } else if EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &SystemRandom::new())
        .is_ok()
    {
        Ok((EncodingKey::from_ec_der(&der), Algorithm::ES256))
    } else {
        Err(MintError::BadKey)
    }
}

/// Signs a token with a PKCS#8 PEM Ed25519 (EdDSA) or P-256 (ES256) private key; the key type
/// decides the algorithm. `iat` is `now_unix` and `exp` is `now_unix + ttl`, so tests can mint
/// tokens that are expired, not yet valid or too long-lived.
pub fn mint(private_pem: &str, req: &MintRequest) -> Result<String, MintError> {
    if req.audience.is_empty() {
        return Err(MintError::InvalidRequest("audience"));
    }
    if req.run_id.as_deref().is_some_and(|r| !valid_run_id(r)) {
        return Err(MintError::InvalidRequest("run_id"));
    }
    if !req.scopes.iter().all(|s| valid_scope(s)) {
        return Err(MintError::InvalidRequest("scopes"));
    }
    if req.jti.as_deref().is_some_and(|j| !super::valid_jti(j)) {
        return Err(MintError::InvalidRequest("jti"));
    }
    let exp = req
        .now_unix
        .checked_add(req.ttl.as_secs())
        .ok_or(MintError::InvalidRequest("ttl"))?;
    let (key, alg) = signing_key(private_pem)?;
    let mut header = Header::new(alg);
    header.kid = req.kid.clone();
    let claims = MintClaims {
        tenant: req.tenant.as_str(),
        sub: req.workload.as_str(),
        aud: &req.audience,
        iss: req.issuer.as_deref(),
        iat: req.now_unix,
        exp,
        nbf: req.not_before,
        jti: req
            .jti
            .clone()
            .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>())),
        run_id: req.run_id.as_deref(),
        run_budget: req.run_budget.as_ref(),
        scope: (!req.scopes.is_empty()).then(|| req.scopes.join(" ")),
    };
    jsonwebtoken::encode(&header, &claims, &key).map_err(|_| MintError::Sign)
}
