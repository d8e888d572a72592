//! Signed workload tokens (JWT, EdDSA or ES256), verified against a JWKS.
//!
//! Verification takes the current time as an argument so tests are deterministic, and checks
//! the time claims itself: expired, not yet valid, and minted for longer than the configured
//! maximum lifetime (a long-lived token is refused even while fresh). Only Ed25519 and P-256 keys
//! exist in a [`KeySet`], and the key a token names decides the algorithm: `alg: none`, HMAC and
//! RSA tokens never reach a signature check. Errors name the reason and never echo the token;
//! `Debug` output never shows a token or a key.
//!
//! [`generate_key`] and [`mint`] back `tenant-proxy token keygen` and `token mint`, and the tests.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::ids::{TenantId, WorkloadId};

/// Longest token accepted, in bytes (the `Proxy-Authorization` header is bounded the same way).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Longest `run_id` and `correlation_id`, in characters.
const MAX_ID_CLAIM_LEN: usize = 128;

// ---------------------------------------------------------------------------------------------
// Settings and keys

/// Verification settings.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// The `aud` value this proxy requires (a token's `aud` string, or one entry of its array).
    pub audience: String,
    /// The `iss` value required, if set; when `None` the `iss` claim is not checked.
    pub issuer: Option<String>,
    /// Longest accepted `exp - iat`: a token minted for longer is refused even while fresh.
    pub max_lifetime: Duration,
    /// Clock-skew allowance applied to `exp`, `nbf` and `iat`.
    pub leeway: Duration,
}

/// Why a JWKS document was rejected. Key ids are named; key material never is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    /// Not JSON at all.
    #[error("the JWKS is not valid JSON (line {line}, column {column})")]
    Parse {
        /// Line of the syntax error.
        line: usize,
        /// Column of the syntax error.
        column: usize,
    },
    /// JSON, but not an object with a `keys` array.
    #[error("the JWKS is not an object with a `keys` array")]
    NotJwks,
    /// The `keys` array is empty.
    #[error("the JWKS has no keys")]
    Empty,
    /// An entry of `keys` is not a JSON object.
    #[error("entry {index} of `keys` is not an object")]
    InvalidEntry {
        /// Position in `keys`, from 0.
        index: usize,
    },
    /// A key without a non-empty string `kid`.
    #[error("entry {index} of `keys` has no `kid`; every key needs a unique `kid`")]
    MissingKid {
        /// Position in `keys`, from 0.
        index: usize,
    },
    /// Two keys share a `kid`.
    #[error("`kid` `{kid}` appears more than once; every key needs a unique `kid`")]
    DuplicateKid {
        /// The repeated key id.
        kid: String,
    },
    /// A key type other than OKP/Ed25519 or EC/P-256.
    #[error("key `{kid}` is not an Ed25519 (`OKP`) or P-256 (`EC`) key")]
    UnsupportedKey {
        /// The key's id.
        kid: String,
    },
    /// The key's `alg` does not fit its `kty`/`crv`.
    #[error(
        "key `{kid}` declares an `alg` that does not match its key type (expected `{expected}`)"
    )]
    AlgorithmMismatch {
        /// The key's id.
        kid: String,
        /// The only `alg` its key type allows.
        expected: &'static str,
    },
    /// The key is marked for another use than signatures.
    #[error("key `{kid}` is not for verifying signatures (`use` or `key_ops`)")]
    NotForSigning {
        /// The key's id.
        kid: String,
    },
    /// The key carries private parameters.
    #[error("key `{kid}` contains private key material; publish only public keys")]
    PrivateKey {
        /// The key's id.
        kid: String,
    },
    /// Coordinates missing, not base64url, or of the wrong length.
    #[error("key `{kid}` has missing or malformed coordinates")]
    InvalidKey {
        /// The key's id.
        kid: String,
    },
}

/// Public keys by `kid`, each pinned to its one algorithm. `Debug` shows the key ids only.
pub struct KeySet {
    keys: HashMap<String, (DecodingKey, Algorithm)>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&str> = self.kids().collect();
        kids.sort_unstable();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

/// Shortens a key id for an error message: it comes from a file and may be long.
fn shown(kid: &str) -> String {
    kid.chars().take(64).collect()
}

/// Decodes a base64url (unpadded) coordinate of exactly 32 bytes.
fn coordinate(jwk: &serde_json::Map<String, Value>, name: &str) -> Option<Vec<u8>> {
    let text = jwk.get(name)?.as_str()?;
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    (bytes.len() == 32).then_some(bytes)
}

impl KeySet {
    /// Parses a JWKS (`{"keys":[…]}`) of Ed25519 (`OKP`) and P-256 (`EC`) public keys.
    ///
    /// Every key needs a unique non-empty `kid`; its `alg`, when present, must be the one its key
    /// type allows (`EdDSA` or `ES256`). Any other key type, private key material, a key marked
    /// for encryption, or an empty set is an error: one bad key rejects the whole document.
    pub fn from_jwks_json(text: &str) -> Result<KeySet, KeySetError> {
        let doc: Value = serde_json::from_str(text).map_err(|e| KeySetError::Parse {
            line: e.line(),
            column: e.column(),
        })?;
        let entries = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(KeySetError::NotJwks)?;
        if entries.is_empty() {
            return Err(KeySetError::Empty);
        }
        let mut keys = HashMap::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let jwk = entry
                .as_object()
                .ok_or(KeySetError::InvalidEntry { index })?;
            let kid = jwk
                .get("kid")
                .and_then(Value::as_str)
                .filter(|k| !k.is_empty())
                .ok_or(KeySetError::MissingKid { index })?;
            // SECURITY: a duplicate kid would make the verifying key depend on document order.
            if keys.contains_key(kid) {
                return Err(KeySetError::DuplicateKid { kid: shown(kid) });
            }
            let key = parse_public_key(jwk, kid)?;
            keys.insert(kid.to_string(), key);
        }
        Ok(KeySet { keys })
    }

    /// The key ids, in no particular order.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// The key a token header selects: its `kid`, or the only key when it names none.
    fn select(&self, kid: Option<&str>) -> Result<&(DecodingKey, Algorithm), TokenError> {
        match kid {
            Some(kid) => self.keys.get(kid).ok_or(TokenError::UnknownKey),
            // SECURITY: without a kid we only guess when there is nothing to guess between.
            None if self.keys.len() == 1 => self.keys.values().next().ok_or(TokenError::UnknownKey),
            None => Err(TokenError::UnknownKey),
        }
    }
}

/// One JWK, already known to be an object with a `kid`, as a decoding key and its algorithm.
fn parse_public_key(
    jwk: &serde_json::Map<String, Value>,
    kid: &str,
) -> Result<(DecodingKey, Algorithm), KeySetError> {
    let err_kid = || shown(kid);
    // SECURITY: a JWKS is public; private parameters mean someone published the wrong file.
    if ["d", "p", "q", "dp", "dq", "qi", "k"]
        .iter()
        .any(|p| jwk.contains_key(*p))
    {
        return Err(KeySetError::PrivateKey { kid: err_kid() });
    }
    let kty = jwk.get("kty").and_then(Value::as_str);
    let crv = jwk.get("crv").and_then(Value::as_str);
    let (alg, expected) = match (kty, crv) {
        (Some("OKP"), Some("Ed25519")) => (Algorithm::EdDSA, "EdDSA"),
        (Some("EC"), Some("P-256")) => (Algorithm::ES256, "ES256"),
        _ => return Err(KeySetError::UnsupportedKey { kid: err_kid() }),
    };
    // SECURITY: the key type fixes the algorithm; a contradicting `alg` is a broken document,
    // not a hint to follow.
    match jwk.get("alg") {
        None => {}
        Some(Value::String(a)) if a == expected => {}
        Some(_) => {
            return Err(KeySetError::AlgorithmMismatch {
                kid: err_kid(),
                expected,
            })
        }
    }
    let for_signing = match jwk.get("use") {
        None => true,
        Some(Value::String(u)) => u != "enc",
        Some(_) => false,
    } && match jwk.get("key_ops") {
        None => true,
        Some(Value::Array(ops)) => ops.iter().any(|o| o.as_str() == Some("verify")),
        Some(_) => false,
    };
    if !for_signing {
        return Err(KeySetError::NotForSigning { kid: err_kid() });
    }
    let invalid = || KeySetError::InvalidKey { kid: err_kid() };
    let key = match alg {
        Algorithm::ES256 => {
            let x = coordinate(jwk, "x").ok_or_else(invalid)?;
            let y = coordinate(jwk, "y").ok_or_else(invalid)?;
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            DecodingKey::from_ec_der(&point)
        }
        _ => DecodingKey::from_ed_der(&coordinate(jwk, "x").ok_or_else(invalid)?),
    };
    Ok((key, alg))
}

// ---------------------------------------------------------------------------------------------
// Claims

/// A run's budget as carried by its token.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunBudget {
    /// LLM tokens (input + output).
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

/// The claims as sent: every field is checked for type and value by [`TokenVerifier::verify`],
/// so each refusal names its claim. A repeated claim name is a parse error (serde's derive).
#[derive(Deserialize)]
struct RawClaims {
    tenant: Option<Value>,
    sub: Option<Value>,
    aud: Option<Value>,
    exp: Option<Value>,
    iat: Option<Value>,
    nbf: Option<Value>,
    jti: Option<Value>,
    iss: Option<Value>,
    run_id: Option<Value>,
    run_budget: Option<Value>,
    scope: Option<Value>,
    initiator: Option<Value>,
    correlation_id: Option<Value>,
}

/// The protected header, read before any key is chosen.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

/// A verified token's claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// Tenant (`tenant`).
    pub tenant: TenantId,
    /// Workload (`sub`).
    pub workload: WorkloadId,
    /// Run id (`run_id`): 1-128 characters from `A-Za-z0-9._:-`.
    pub run_id: Option<String>,
    /// Run budget (`run_budget`).
    pub run_budget: Option<RunBudget>,
    /// Scopes (`scope`, split on spaces).
    pub scopes: Vec<String>,
    /// Initiator (`initiator`).
    pub initiator: Option<Initiator>,
    /// Upstream correlation id (`correlation_id`), at most 128 characters.
    pub correlation_id: Option<String>,
    /// Token id (`jti`).
    pub jti: Option<String>,
    /// Expiry (`exp`), seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Why a token was refused. Display texts go into error bodies: no token content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT (structure, base64url, JSON, or an unsupported `crit` header).
    #[error("the token is malformed")]
    Malformed,
    /// `alg` other than EdDSA/ES256, or not the algorithm of the key it names.
    #[error("the token's signature algorithm is not accepted")]
    UnsupportedAlgorithm,
    /// No key with this `kid` (or no `kid` while several keys are configured).
    #[error("the token is signed with an unknown key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// Past `exp` (plus leeway).
    #[error("the token has expired")]
    Expired,
    /// Before `nbf` or `iat` (minus leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `aud` does not name this proxy.
    #[error("the token is for another audience")]
    WrongAudience,
    /// `iss` is not the configured issuer.
    #[error("the token is from an unexpected issuer")]
    WrongIssuer,
    /// `exp - iat` over the maximum.
    #[error("the token's lifetime exceeds the allowed maximum of {max_secs}s")]
    LifetimeTooLong {
        /// The maximum, in seconds.
        max_secs: u64,
    },
    /// `jti` is revoked.
    #[error("the token has been revoked")]
    Revoked,
    /// A required claim is missing.
    #[error("the token has no `{0}` claim")]
    MissingClaim(&'static str),
    /// A claim has the wrong type or an invalid value.
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
        && s.len() <= MAX_ID_CLAIM_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// An OAuth scope token (RFC 6749 section 3.3): printable ASCII except space, `"` and `\`.
fn valid_scope(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5b | 0x5d..=0x7e))
}

fn string_claim(v: Option<Value>, name: &'static str) -> Result<Option<String>, TokenError> {
    match v {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(TokenError::InvalidClaim(name)),
    }
}

/// A NumericDate: a non-negative integer number of seconds.
fn time_claim(v: Option<Value>, name: &'static str) -> Result<Option<u64>, TokenError> {
    match v {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or(TokenError::InvalidClaim(name)),
        Some(_) => Err(TokenError::InvalidClaim(name)),
    }
}

/// Maps a `jsonwebtoken` failure to the reason we report.
fn decode_error(e: &jsonwebtoken::errors::Error) -> TokenError {
    match e.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            TokenError::UnsupportedAlgorithm
        }
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => TokenError::MissingClaim("aud"),
        // SECURITY: everything else (bad base64, bad JSON, key trouble, kinds added by later
        // versions) is a refusal too.
        _ => TokenError::Malformed,
    }
}

impl TokenVerifier {
    /// A verifier for `keys`, refusing the token ids in `revoked_jtis`.
    pub fn new(settings: TokenSettings, keys: KeySet, revoked_jtis: HashSet<String>) -> Self {
        Self {
            settings,
            keys,
            revoked: revoked_jtis,
        }
    }

    /// Verifies `token` at time `now_unix` (seconds since the Unix epoch).
    ///
    /// Checks, in order: shape and size, header (`alg`, `kid`, no `crit`), signature with the
    /// selected key, `aud`, time claims with leeway, lifetime, `iss`, revocation, then the value
    /// of each claim.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<VerifiedToken, TokenError> {
        // SECURITY: bound the work done for unauthenticated input.
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice::<RawHeader>(&h).ok())
            .ok_or(TokenError::Malformed)?;
        // SECURITY: `crit` lists extensions the recipient must understand; we understand none.
        if header.crit.is_some() {
            return Err(TokenError::Malformed);
        }
        let alg = match header.alg.as_str() {
            "EdDSA" => Algorithm::EdDSA,
            "ES256" => Algorithm::ES256,
            // SECURITY: `none`, HS*, RS*, PS* and anything else are refused before a key is
            // looked at, so no key can be misused with another algorithm.
            _ => return Err(TokenError::UnsupportedAlgorithm),
        };
        let (key, key_alg) = self.keys.select(header.kid.as_deref())?;
        // SECURITY: the key decides the algorithm, never the token header.
        if alg != *key_alg {
            return Err(TokenError::UnsupportedAlgorithm);
        }
        if payload.is_empty() || signature.is_empty() {
            return Err(TokenError::Malformed);
        }

        let mut validation = Validation::new(*key_alg);
        // Time claims are checked below against the caller's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.required_spec_claims = HashSet::from(["aud".to_string()]);
        validation.validate_aud = true;
        validation.set_audience(&[&self.settings.audience]);
        if let Some(iss) = &self.settings.issuer {
            validation.set_issuer(&[iss]);
        }
        let claims = jsonwebtoken::decode::<RawClaims>(token, key, &validation)
            .map_err(|e| decode_error(&e))?
            .claims;

        // `aud` again, here, so its type and value are checked whatever the library does.
        let aud_ok = match claims.aud {
            None => return Err(TokenError::MissingClaim("aud")),
            Some(Value::String(a)) => a == self.settings.audience,
            Some(Value::Array(list)) => {
                let mut found = false;
                for a in &list {
                    match a.as_str() {
                        Some(a) => found |= a == self.settings.audience,
                        None => return Err(TokenError::InvalidClaim("aud")),
                    }
                }
                found
            }
            Some(_) => return Err(TokenError::InvalidClaim("aud")),
        };
        if !aud_ok {
            return Err(TokenError::WrongAudience);
        }

        let leeway = self.settings.leeway.as_secs();
        let exp = time_claim(claims.exp, "exp")?.ok_or(TokenError::MissingClaim("exp"))?;
        let iat = time_claim(claims.iat, "iat")?.ok_or(TokenError::MissingClaim("iat"))?;
        let nbf = time_claim(claims.nbf, "nbf")?;
        if now_unix > exp.saturating_add(leeway) {
            return Err(TokenError::Expired);
        }
        let horizon = now_unix.saturating_add(leeway);
        if iat > horizon || nbf.is_some_and(|nbf| nbf > horizon) {
            return Err(TokenError::NotYetValid);
        }
        // SECURITY: a token that expires before it was issued is broken, not merely short.
        if exp < iat {
            return Err(TokenError::InvalidClaim("exp"));
        }
        let max_secs = self.settings.max_lifetime.as_secs();
        // SECURITY: a token minted for longer than allowed is refused even while fresh, so a
        // leaked long-lived token cannot be used at all.
        if exp.saturating_sub(iat) > max_secs {
            return Err(TokenError::LifetimeTooLong { max_secs });
        }

        let iss = string_claim(claims.iss, "iss")?;
        if let Some(want) = &self.settings.issuer {
            match iss {
                None => return Err(TokenError::MissingClaim("iss")),
                Some(iss) if iss != *want => return Err(TokenError::WrongIssuer),
                Some(_) => {}
            }
        }

        let jti = string_claim(claims.jti, "jti")?;
        if jti.as_ref().is_some_and(|j| self.revoked.contains(j)) {
            return Err(TokenError::Revoked);
        }

        let tenant =
            string_claim(claims.tenant, "tenant")?.ok_or(TokenError::MissingClaim("tenant"))?;
        let tenant = TenantId::new(&tenant).map_err(|_| TokenError::InvalidClaim("tenant"))?;
        let sub = string_claim(claims.sub, "sub")?.ok_or(TokenError::MissingClaim("sub"))?;
        let workload = WorkloadId::new(&sub).map_err(|_| TokenError::InvalidClaim("sub"))?;

        let run_id = string_claim(claims.run_id, "run_id")?;
        if run_id.as_deref().is_some_and(|r| !valid_run_id(r)) {
            return Err(TokenError::InvalidClaim("run_id"));
        }
        let run_budget = claims
            .run_budget
            .filter(|v| !v.is_null())
            .map(serde_json::from_value::<RunBudget>)
            .transpose()
            .map_err(|_| TokenError::InvalidClaim("run_budget"))?;
        let scopes = match string_claim(claims.scope, "scope")? {
            None => Vec::new(),
            Some(s) => {
                let scopes: Vec<String> = s
                    .split(' ')
                    .filter(|t| !t.is_empty())
                    .map(String::from)
                    .collect();
                if !scopes.iter().all(|t| valid_scope(t)) {
                    return Err(TokenError::InvalidClaim("scope"));
                }
                scopes
            }
        };
        let initiator = claims
            .initiator
            .filter(|v| !v.is_null())
            .map(serde_json::from_value::<Initiator>)
            .transpose()
            .map_err(|_| TokenError::InvalidClaim("initiator"))?;
        let correlation_id = string_claim(claims.correlation_id, "correlation_id")?;
        // The correlation id is copied into logs and audit records: short, no control characters.
        if correlation_id.as_deref().is_some_and(|c| {
            c.chars().count() > MAX_ID_CLAIM_LEN || c.chars().any(char::is_control)
        }) {
            return Err(TokenError::InvalidClaim("correlation_id"));
        }

        Ok(VerifiedToken {
            tenant,
            workload,
            run_id,
            run_budget,
            scopes,
            initiator,
            correlation_id,
            jti,
            expires_at: exp,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Key generation and minting

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
    #[error("cannot mint a token: the `{0}` value is invalid")]
    InvalidRequest(&'static str),
    /// Signing failed.
    #[error("signing the token failed")]
    Sign,
}

fn to_pem(der: &[u8]) -> String {
    let b64 = Zeroizing::new(STANDARD.encode(der));
    let mut pem = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    pem.push_str("-----BEGIN PRIVATE KEY-----\n");
    let mut rest: &str = &b64;
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        pem.push_str(line);
        pem.push('\n');
        rest = tail;
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

/// Generates a signing key pair; `kid` goes into the JWK.
pub fn generate_key(alg: KeyAlgorithm, kid: &str) -> Result<GeneratedKey, MintError> {
    if kid.is_empty() {
        return Err(MintError::InvalidRequest("kid"));
    }
    let rng = SystemRandom::new();
    let (der, jwk) = match alg {
        KeyAlgorithm::EdDSA => {
            let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| MintError::Generate)?;
            let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| MintError::Generate)?;
            let jwk = serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
                "kid": kid,
                "alg": "EdDSA",
                "use": "sig",
            });
            (doc, jwk)
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
            (doc, jwk)
        }
    };
    Ok(GeneratedKey {
        private_pem: to_pem(der.as_ref()),
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
fn signing_key(private_pem: &str) -> Result<(EncodingKey, Algorithm), MintError> {
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
    if req.jti.as_deref().is_some_and(str::is_empty) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use TokenError::*;

    const NOW: u64 = 1_800_000_000;
    const AUD: &str = "tenant-proxy";

    type Claims = serde_json::Map<String, Value>;

    fn testdata(name: &str) -> String {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/identity/testdata");
        let path = format!("{dir}/{name}");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn ed() -> String {
        testdata("ed25519-test.pem")
    }

    fn settings() -> TokenSettings {
        TokenSettings {
            audience: AUD.into(),
            issuer: None,
            max_lifetime: Duration::from_secs(3600),
            leeway: Duration::from_secs(30),
        }
    }

    fn verifier_with(settings: TokenSettings) -> TokenVerifier {
        let keys = KeySet::from_jwks_json(&testdata("test-jwks.json")).expect("jwks");
        TokenVerifier::new(settings, keys, HashSet::from(["revoked-1".to_string()]))
    }

    fn verifier() -> TokenVerifier {
        verifier_with(settings())
    }

    fn req() -> MintRequest {
        MintRequest {
            tenant: TenantId::new("acme").expect("id"),
            workload: WorkloadId::new("bot").expect("id"),
            audience: AUD.into(),
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

    /// A token from `pem` for [`req`] changed by `edit`.
    fn mint_with(pem: &str, edit: impl FnOnce(&mut MintRequest)) -> String {
        let mut r = req();
        edit(&mut r);
        mint(pem, &r).expect("mint")
    }

    /// A token from the Ed25519 test key for [`req`] changed by `edit`.
    fn minted(edit: impl FnOnce(&mut MintRequest)) -> String {
        mint_with(&ed(), edit)
    }

    /// A token with exactly this header and payload JSON text, signed with `pem`.
    fn raw_signed(pem: &str, header: &str, payload: &str) -> String {
        let (key, alg) = signing_key(pem).expect("key");
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg).expect("sign");
        format!("{message}.{sig}")
    }

    fn base_claims() -> Claims {
        let claims = json!({
            "tenant": "acme", "sub": "bot", "aud": AUD, "iat": NOW, "exp": NOW + 300,
            "jti": "j-1", "run_id": "run-1", "scope": "llm tools",
        });
        claims.as_object().cloned().unwrap_or_default()
    }

    /// Valid claims changed by `edit`, signed with the Ed25519 test key as `test-ed`.
    fn claims_token(edit: impl FnOnce(&mut Claims)) -> String {
        let mut claims = base_claims();
        edit(&mut claims);
        let header = r#"{"alg":"EdDSA","typ":"JWT","kid":"test-ed"}"#;
        raw_signed(&ed(), header, &Value::Object(claims).to_string())
    }

    fn with_claim(name: &str, value: Value) -> String {
        claims_token(|c| {
            c.insert(name.to_string(), value);
        })
    }

    fn without_claim(name: &str) -> String {
        claims_token(|c| {
            c.remove(name);
        })
    }

    /// Valid claims under `header`, with a signature that is not one.
    fn forged(header: &str, sig: &str) -> String {
        let payload = Value::Object(base_claims()).to_string();
        let (h, p) = (
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload),
        );
        format!("{h}.{p}.{sig}")
    }

    /// Verifies and compares; a refusal must not echo any part of the token.
    fn check(v: &TokenVerifier, name: &str, token: &str, now: u64, want: Result<(), TokenError>) {
        let got = v.verify(token, now);
        assert_eq!(
            got.as_ref().map(|_| ()).map_err(Clone::clone),
            want,
            "{name}"
        );
        if let Err(e) = got {
            for text in [e.to_string(), format!("{e:?}")] {
                for part in token.split('.').filter(|p| p.len() >= 8) {
                    assert!(!text.contains(part), "{name}: {text}");
                }
            }
        }
    }

    #[test]
    fn valid_tokens_carry_their_claims() {
        let v = verifier();
        let es = testdata("es256-test.pem");
        for (name, pem, kid) in [("eddsa", ed(), "test-ed"), ("es256", es, "test-es")] {
            let token = mint_with(&pem, |r| {
                r.kid = Some(kid.into());
                r.issuer = Some("issuer-1".into());
                r.jti = Some("jti-7".into());
                r.not_before = Some(NOW - 5);
            });
            let got = v
                .verify(&token, NOW)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let want = VerifiedToken {
                tenant: TenantId::new("acme").expect("id"),
                workload: WorkloadId::new("bot").expect("id"),
                run_id: Some("run-1".into()),
                run_budget: Some(RunBudget {
                    tokens: Some(1000),
                    ..Default::default()
                }),
                scopes: vec!["llm".into(), "tools".into()],
                initiator: None,
                correlation_id: None,
                jti: Some("jti-7".into()),
                expires_at: NOW + 300,
            };
            assert_eq!(got, want, "{name}");
        }

        let optional = claims_token(|c| {
            c.insert("initiator".into(), json!("cron"));
            c.insert("correlation_id".into(), json!("req-42"));
            let budget = json!({"tokens": 1, "tool_calls": 2, "wall_time_s": 3, "cost_micros": 4});
            c.insert("run_budget".into(), budget);
            c.insert("aud".into(), json!(["other", AUD]));
            c.insert("extra".into(), json!({"ignored": true}));
        });
        let got = v.verify(&optional, NOW).expect("valid");
        assert_eq!(got.initiator, Some(Initiator::Cron));
        assert_eq!(got.correlation_id.as_deref(), Some("req-42"));
        let budget = RunBudget {
            tokens: Some(1),
            tool_calls: Some(2),
            wall_time_s: Some(3),
            cost_micros: Some(4),
        };
        assert_eq!(got.run_budget, Some(budget));

        let jti = v.verify(&minted(|_| {}), NOW).expect("valid").jti;
        let is_hex128 = |j: &str| j.len() == 32 && j.bytes().all(|b| b.is_ascii_hexdigit());
        assert!(jti.as_deref().is_some_and(is_hex128), "{jti:?}");
    }

    #[test]
    fn shape_algorithm_and_key_cases() {
        let good = minted(|_| {});
        let (head, rest) = good.split_once('.').unwrap_or_default();
        let (_, sig) = rest.split_once('.').unwrap_or_default();
        let other_tenant = minted(|r| r.tenant = TenantId::new("globex").expect("id"));
        let other_payload = other_tenant.split('.').nth(1).unwrap_or_default();
        let hs256 = {
            // The classic confusion attack: HMAC keyed with the public key's bytes.
            let jwks: Value = serde_json::from_str(&testdata("test-jwks.json")).expect("json");
            let x = jwks["keys"][0]["x"].as_str().unwrap_or_default();
            let secret = URL_SAFE_NO_PAD.decode(x).expect("b64");
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("test-ed".into());
            let key = EncodingKey::from_secret(&secret);
            jsonwebtoken::encode(&header, &base_claims(), &key).expect("hs256")
        };
        let header = r#"{"alg":"EdDSA","kid":"test-ed"}"#;
        let dup = format!(
            r#"{{"tenant":"acme","tenant":"globex","sub":"bot","aud":"{AUD}","iat":{NOW},"exp":{}}}"#,
            NOW + 300
        );
        let dup_tenant = raw_signed(&ed(), header, &dup);
        let claims = Value::Object(base_claims()).to_string();
        let crit = raw_signed(
            &ed(),
            r#"{"alg":"EdDSA","kid":"test-ed","crit":["exp"]}"#,
            &claims,
        );
        let not_json = format!("{}.e30.e30", URL_SAFE_NO_PAD.encode("nope"));
        let es_under_ed = mint_with(&testdata("es256-test.pem"), |_| {});
        let other_key = mint_with(&testdata("other-ed25519.pem"), |_| {});

        #[rustfmt::skip]
        let cases: Vec<(&str, String, TokenError)> = vec![
            ("empty", String::new(), Malformed),
            ("garbage", "abc".into(), Malformed),
            ("two parts", "a.b".into(), Malformed),
            ("four parts", format!("{good}.x"), Malformed),
            ("header not base64", format!("!!{good}"), Malformed),
            ("header not json", not_json, Malformed),
            ("header without alg", forged(r#"{"kid":"test-ed"}"#, "c2ln"), Malformed),
            ("signature missing", format!("{head}.{}.", other_payload), Malformed),
            ("signature not base64", format!("{good}!"), Malformed),
            ("too long", format!("{good}{}", "A".repeat(MAX_TOKEN_LEN)), Malformed),
            ("crit header", crit, Malformed),
            ("duplicate claim", dup_tenant, Malformed),
            ("alg none", forged(r#"{"alg":"none","kid":"test-ed"}"#, ""), UnsupportedAlgorithm),
            ("alg None, no kid", forged(r#"{"alg":"None"}"#, ""), UnsupportedAlgorithm),
            ("hs256 keyed with public key", hs256, UnsupportedAlgorithm),
            ("rs256", forged(r#"{"alg":"RS256","kid":"test-ed"}"#, "c2ln"), UnsupportedAlgorithm),
            ("es256 on ed key", forged(r#"{"alg":"ES256","kid":"test-ed"}"#, "c2ln"), UnsupportedAlgorithm),
            ("es256 key under ed kid", es_under_ed, UnsupportedAlgorithm),
            ("unknown kid", minted(|r| r.kid = Some("nope".into())), UnknownKey),
            ("no kid, two keys", minted(|r| r.kid = None), UnknownKey),
            ("other key, same kid", other_key, BadSignature),
            ("payload swapped", format!("{head}.{other_payload}.{sig}"), BadSignature),
        ];
        let v = verifier();
        check(&v, "valid", &good, NOW, Ok(()));
        for (name, token, want) in cases {
            check(&v, name, &token, NOW, Err(want));
        }
    }

    #[test]
    fn time_cases() {
        let good = minted(|_| {});
        #[rustfmt::skip]
        let cases: Vec<(&str, String, u64, Result<(), TokenError>)> = vec![
            ("fresh", good.clone(), NOW, Ok(())),
            ("expired", good.clone(), NOW + 300 + 31, Err(Expired)),
            ("expired within leeway", good.clone(), NOW + 300 + 30, Ok(())),
            ("iat in future", good.clone(), NOW - 31, Err(NotYetValid)),
            ("iat in future within leeway", good.clone(), NOW - 30, Ok(())),
            ("nbf in future", minted(|r| r.not_before = Some(NOW + 31)), NOW, Err(NotYetValid)),
            ("nbf within leeway", minted(|r| r.not_before = Some(NOW + 30)), NOW, Ok(())),
            ("lifetime over max", minted(|r| r.ttl = Duration::from_secs(3601)), NOW, Err(LifetimeTooLong { max_secs: 3600 })),
            ("lifetime at max", minted(|r| r.ttl = Duration::from_secs(3600)), NOW, Ok(())),
            ("exp far future", with_claim("exp", json!(u64::MAX)), NOW, Err(LifetimeTooLong { max_secs: 3600 })),
            ("exp before iat", with_claim("exp", json!(NOW - 10)), NOW, Err(InvalidClaim("exp"))),
            ("exp before iat, later", with_claim("exp", json!(NOW - 10)), NOW + 21, Err(Expired)),
        ];
        let v = verifier();
        for (name, token, now, want) in cases {
            check(&v, name, &token, now, want);
        }
    }

    #[test]
    fn claim_cases() {
        #[rustfmt::skip]
        let cases: Vec<(&str, String, TokenError)> = vec![
            ("exp missing", without_claim("exp"), MissingClaim("exp")),
            ("exp null", with_claim("exp", Value::Null), MissingClaim("exp")),
            ("exp string", with_claim("exp", json!("soon")), InvalidClaim("exp")),
            ("exp negative", with_claim("exp", json!(-1)), InvalidClaim("exp")),
            ("exp fractional", with_claim("exp", json!(1_800_000_100.5)), InvalidClaim("exp")),
            ("iat missing", without_claim("iat"), MissingClaim("iat")),
            ("nbf string", with_claim("nbf", json!("x")), InvalidClaim("nbf")),
            ("wrong audience", minted(|r| r.audience = "other".into()), WrongAudience),
            ("audience list without ours", with_claim("aud", json!(["a", "b"])), WrongAudience),
            ("audience missing", without_claim("aud"), MissingClaim("aud")),
            ("audience a number", with_claim("aud", json!(7)), MissingClaim("aud")),
            ("revoked jti", minted(|r| r.jti = Some("revoked-1".into())), Revoked),
            ("jti a number", with_claim("jti", json!(1)), InvalidClaim("jti")),
            ("tenant traversal", with_claim("tenant", json!("../x")), InvalidClaim("tenant")),
            ("tenant missing", without_claim("tenant"), MissingClaim("tenant")),
            ("tenant a number", with_claim("tenant", json!(1)), InvalidClaim("tenant")),
            ("sub uppercase", with_claim("sub", json!("Bot")), InvalidClaim("sub")),
            ("sub missing", without_claim("sub"), MissingClaim("sub")),
            ("run_id with space", with_claim("run_id", json!("a b")), InvalidClaim("run_id")),
            ("run_id empty", with_claim("run_id", json!("")), InvalidClaim("run_id")),
            ("run_id 129 chars", with_claim("run_id", json!("r".repeat(129))), InvalidClaim("run_id")),
            ("run_budget unknown field", with_claim("run_budget", json!({"usd": 2})), InvalidClaim("run_budget")),
            ("run_budget negative", with_claim("run_budget", json!({"tokens": -1})), InvalidClaim("run_budget")),
            ("run_budget a number", with_claim("run_budget", json!(5)), InvalidClaim("run_budget")),
            ("scope with quote", with_claim("scope", json!("llm \"x")), InvalidClaim("scope")),
            ("scope a list", with_claim("scope", json!(["llm"])), InvalidClaim("scope")),
            ("initiator unknown", with_claim("initiator", json!("robot")), InvalidClaim("initiator")),
            ("correlation_id 129 chars", with_claim("correlation_id", json!("c".repeat(129))), InvalidClaim("correlation_id")),
            ("correlation_id newline", with_claim("correlation_id", json!("a\nb")), InvalidClaim("correlation_id")),
        ];
        let v = verifier();
        check(
            &v,
            "run_id 128 chars",
            &with_claim("run_id", json!("r".repeat(128))),
            NOW,
            Ok(()),
        );
        check(
            &v,
            "scope doubled space",
            &with_claim("scope", json!("a  b")),
            NOW,
            Ok(()),
        );
        for (name, token, want) in cases {
            check(&v, name, &token, NOW, Err(want));
        }
    }

    #[test]
    fn issuer_cases() {
        let v = verifier_with(TokenSettings {
            issuer: Some("https://idp.example".into()),
            ..settings()
        });
        let iss = |iss: &str| minted(|r| r.issuer = Some(iss.into()));
        #[rustfmt::skip]
        let cases = [
            ("matching", iss("https://idp.example"), Ok(())),
            ("other", iss("https://evil.example"), Err(WrongIssuer)),
            ("missing", minted(|_| {}), Err(MissingClaim("iss"))),
            ("a number", with_claim("iss", json!(1)), Err(InvalidClaim("iss"))),
        ];
        for (name, token, want) in cases {
            check(&v, name, &token, NOW, want);
        }
        // Without a configured issuer any `iss` is accepted.
        check(&verifier(), "unchecked", &iss("anyone"), NOW, Ok(()));
    }

    #[test]
    fn single_key_set_accepts_tokens_without_kid() {
        let jwks: Value = serde_json::from_str(&testdata("test-jwks.json")).expect("json");
        let only_ed = json!({ "keys": [jwks["keys"][0]] }).to_string();
        let keys = KeySet::from_jwks_json(&only_ed).expect("jwks");
        let v = TokenVerifier::new(settings(), keys, HashSet::new());
        check(&v, "ed, no kid", &minted(|r| r.kid = None), NOW, Ok(()));
        let es = mint_with(&testdata("es256-test.pem"), |r| r.kid = None);
        check(&v, "es, no kid", &es, NOW, Err(UnsupportedAlgorithm));
    }

    #[test]
    fn generated_keys_round_trip() {
        for alg in [KeyAlgorithm::EdDSA, KeyAlgorithm::ES256] {
            let key = generate_key(alg, "fresh").expect("generate");
            assert!(key.private_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
            assert_eq!(key.jwk["use"], "sig");
            let debug = format!("{key:?}");
            let body = key.private_pem.lines().nth(1).unwrap_or("missing");
            assert!(!debug.contains(body), "{debug}");
            let jwks = json!({ "keys": [key.jwk] }).to_string();
            let keys = KeySet::from_jwks_json(&jwks).expect("jwks");
            assert_eq!(keys.kids().collect::<Vec<_>>(), vec!["fresh"]);
            let v = TokenVerifier::new(settings(), keys, HashSet::new());
            // CRLF line endings, as a file edited on Windows has.
            let crlf = key.private_pem.replace('\n', "\r\n");
            for pem in [&key.private_pem, &crlf] {
                let token = mint_with(pem, |r| r.kid = Some("fresh".into()));
                check(&v, &format!("{alg:?}"), &token, NOW, Ok(()));
            }
        }
        let empty_kid = generate_key(KeyAlgorithm::EdDSA, "").err();
        assert_eq!(empty_kid, Some(MintError::InvalidRequest("kid")));
    }

    #[test]
    fn mints_with_openssl_style_ed25519_keys() {
        // RFC 8410 section 10.3: PKCS#8 v1 without the public key, as OpenSSL writes it.
        let pem = "-----BEGIN PRIVATE KEY-----\n\
                   MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
                   -----END PRIVATE KEY-----\n";
        let spki = STANDARD
            .decode("MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=")
            .expect("b64");
        let x = URL_SAFE_NO_PAD.encode(&spki[12..]);
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "rfc", "x": x}]});
        let keys = KeySet::from_jwks_json(&jwks.to_string()).expect("jwks");
        let v = TokenVerifier::new(settings(), keys, HashSet::new());
        let token = mint_with(pem, |r| r.kid = Some("rfc".into()));
        check(&v, "rfc 8410 key", &token, NOW, Ok(()));
    }

    #[test]
    fn mint_refusals() {
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIA==\n-----END EC PRIVATE KEY-----\n";
        let pem =
            |body: &str| format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----");
        let no_end = ed().replace("-----END PRIVATE KEY-----", "");
        #[rustfmt::skip]
        let bad_key: Vec<(&str, String)> = vec![
            ("not pem", "hello".into()),
            ("sec1 pem", sec1.into()),
            ("not base64", pem("!!")),
            ("not a key", pem("AAAA")),
            ("no end line", no_end),
        ];
        for (name, pem) in bad_key {
            assert_eq!(mint(&pem, &req()).err(), Some(MintError::BadKey), "{name}");
        }
        #[rustfmt::skip]
        let bad_request: Vec<(&str, MintRequest, &str)> = vec![
            ("run_id", MintRequest { run_id: Some("a/b".into()), ..req() }, "run_id"),
            ("scope", MintRequest { scopes: vec!["a b".into()], ..req() }, "scopes"),
            ("audience", MintRequest { audience: String::new(), ..req() }, "audience"),
            ("jti", MintRequest { jti: Some(String::new()), ..req() }, "jti"),
            ("exp overflows", MintRequest { now_unix: u64::MAX, ..req() }, "ttl"),
        ];
        for (name, r, field) in bad_request {
            assert_eq!(
                mint(&ed(), &r).err(),
                Some(MintError::InvalidRequest(field)),
                "{name}"
            );
        }
    }

    /// A one-key JWKS: `base` with the members of `edit` set (a `null` removes one).
    fn jwks_of(base: Value, edit: Value) -> String {
        let mut key = base;
        if let (Some(key), Some(edit)) = (key.as_object_mut(), edit.as_object()) {
            for (name, value) in edit {
                match value {
                    Value::Null => key.remove(name),
                    v => key.insert(name.clone(), v.clone()),
                };
            }
        }
        json!({ "keys": [key] }).to_string()
    }

    #[test]
    fn jwks_cases() {
        use KeySetError::*;
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        let okp = |edit: Value| {
            jwks_of(
                json!({"kty": "OKP", "crv": "Ed25519", "kid": "a", "x": x}),
                edit,
            )
        };
        let ec = |edit: Value| {
            jwks_of(
                json!({"kty": "EC", "crv": "P-256", "kid": "e", "x": x, "y": x}),
                edit,
            )
        };
        let a = || "a".to_string();
        let e = || "e".to_string();
        let two_a = json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "a", "x": x},
            {"kty": "EC", "crv": "P-256", "kid": "a", "x": x, "y": x},
        ]});
        let rsa = r#"{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB","alg":"RS256"}]}"#;
        #[rustfmt::skip]
        let cases: Vec<(&str, String, KeySetError)> = vec![
            ("not json", "{".into(), Parse { line: 1, column: 1 }),
            ("no keys member", "{}".into(), NotJwks),
            ("keys not a list", r#"{"keys":{}}"#.into(), NotJwks),
            ("top-level list", "[]".into(), NotJwks),
            ("empty", r#"{"keys":[]}"#.into(), Empty),
            ("entry not an object", r#"{"keys":["k"]}"#.into(), InvalidEntry { index: 0 }),
            ("missing kid", okp(json!({"kid": null})), MissingKid { index: 0 }),
            ("empty kid", okp(json!({"kid": ""})), MissingKid { index: 0 }),
            ("numeric kid", okp(json!({"kid": 5})), MissingKid { index: 0 }),
            ("duplicate kid", two_a.to_string(), DuplicateKid { kid: a() }),
            ("rsa key", rsa.into(), UnsupportedKey { kid: "r".into() }),
            ("oct secret", okp(json!({"kty": "oct", "k": "c2VjcmV0"})), PrivateKey { kid: a() }),
            ("oct without k", okp(json!({"kty": "oct"})), UnsupportedKey { kid: a() }),
            ("p-384", ec(json!({"crv": "P-384"})), UnsupportedKey { kid: e() }),
            ("x25519", okp(json!({"crv": "X25519"})), UnsupportedKey { kid: a() }),
            ("no kty", okp(json!({"kty": null})), UnsupportedKey { kid: a() }),
            ("okp with alg ES256", okp(json!({"alg": "ES256"})), AlgorithmMismatch { kid: a(), expected: "EdDSA" }),
            ("ec with alg RS256", ec(json!({"alg": "RS256"})), AlgorithmMismatch { kid: e(), expected: "ES256" }),
            ("ec with alg none", ec(json!({"alg": "none"})), AlgorithmMismatch { kid: e(), expected: "ES256" }),
            ("private okp", okp(json!({"d": x})), PrivateKey { kid: a() }),
            ("private ec", ec(json!({"d": x})), PrivateKey { kid: e() }),
            ("use enc", okp(json!({"use": "enc"})), NotForSigning { kid: a() }),
            ("key_ops encrypt", okp(json!({"key_ops": ["encrypt"]})), NotForSigning { kid: a() }),
            ("x too short", okp(json!({"x": "AAAA"})), InvalidKey { kid: a() }),
            ("x padded", okp(json!({"x": format!("{x}=")})), InvalidKey { kid: a() }),
            ("x missing", okp(json!({"x": null})), InvalidKey { kid: a() }),
            ("ec y missing", ec(json!({"y": null})), InvalidKey { kid: e() }),
        ];
        for (name, text, want) in cases {
            assert_eq!(
                KeySet::from_jwks_json(&text).err(),
                Some(want.clone()),
                "{name}"
            );
            // Messages name key ids, never key material.
            assert!(!want.to_string().contains(x), "{name}");
        }
        #[rustfmt::skip]
        let accepted = [
            ("okp without alg or use", okp(json!({}))),
            ("ec with alg", ec(json!({"alg": "ES256"}))),
            ("alg, use, key_ops", okp(json!({"alg": "EdDSA", "use": "sig", "key_ops": ["verify"]}))),
            ("spire's use", okp(json!({"use": "jwt-svid"}))),
        ];
        for (name, text) in accepted {
            assert!(KeySet::from_jwks_json(&text).is_ok(), "{name}");
        }
    }

    #[test]
    fn debug_output_hides_keys() {
        let text = testdata("test-jwks.json");
        let jwks: Value = serde_json::from_str(&text).expect("json");
        let keys = KeySet::from_jwks_json(&text).expect("jwks");
        let debug = format!("{:?}", TokenVerifier::new(settings(), keys, HashSet::new()));
        assert!(
            debug.contains("test-ed") && debug.contains("test-es"),
            "{debug}"
        );
        for key in jwks["keys"].as_array().into_iter().flatten() {
            let x = key["x"].as_str().unwrap_or("missing");
            assert!(!debug.contains(x), "{debug}");
        }
    }

    #[test]
    #[ignore = "rewrites the key fixtures; run once with --ignored"]
    fn write_fixtures() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/identity/testdata");
        let write = |name: &str, text: &str| {
            std::fs::write(format!("{dir}/{name}"), text).expect("write");
        };
        let ed = generate_key(KeyAlgorithm::EdDSA, "test-ed").expect("ed");
        let es = generate_key(KeyAlgorithm::ES256, "test-es").expect("es");
        let other = generate_key(KeyAlgorithm::EdDSA, "test-ed").expect("other");
        std::fs::create_dir_all(dir).expect("dir");
        write("ed25519-test.pem", &ed.private_pem);
        write("es256-test.pem", &es.private_pem);
        write("other-ed25519.pem", &other.private_pem);
        let jwks = json!({ "keys": [ed.jwk, es.jwk] });
        write(
            "test-jwks.json",
            &format!("{}\n", serde_json::to_string_pretty(&jwks).expect("json")),
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(512)))]

        #[test]
        fn fuzz_verify_never_panics_on_any_string(token in any::<String>()) {
            let _ = verifier().verify(&token, NOW);
        }

        #[test]
        fn fuzz_verify_refuses_unsigned_structured_garbage(
            header in prop_oneof![
                Just(br#"{"alg":"EdDSA","kid":"test-ed"}"#.to_vec()),
                Just(br#"{"alg":"ES256","kid":"test-es"}"#.to_vec()),
                proptest::collection::vec(any::<u8>(), 0..64),
            ],
            payload in proptest::collection::vec(any::<u8>(), 0..256),
            sig in proptest::collection::vec(any::<u8>(), 0..80),
            now in any::<u64>(),
        ) {
            let [h, p, s] = [header, payload, sig].map(|b| URL_SAFE_NO_PAD.encode(b));
            let token = format!("{h}.{p}.{s}");
            prop_assert!(verifier().verify(&token, now).is_err());
        }

        #[test]
        fn fuzz_signed_claims_never_panic(
            exp in any::<u64>(),
            iat in any::<u64>(),
            nbf in proptest::option::of(any::<u64>()),
            now in any::<u64>(),
            tenant in "[a-z./]{0,8}",
            scope in any::<String>(),
        ) {
            let token = claims_token(|c| {
                c.insert("exp".into(), json!(exp));
                c.insert("iat".into(), json!(iat));
                c.insert("tenant".into(), json!(tenant));
                c.insert("scope".into(), json!(scope));
                if let Some(nbf) = nbf {
                    c.insert("nbf".into(), json!(nbf));
                }
            });
            let _ = verifier().verify(&token, now);
        }

        #[test]
        fn fuzz_jwks_parser_never_panics(text in any::<String>()) {
            let _ = KeySet::from_jwks_json(&text);
        }
    }
}
