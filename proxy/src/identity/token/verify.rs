//! Verifying a workload token: the hot path, run for every request that presents one.

use std::collections::HashSet;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::keys::{KeyFingerprint, KeySet};
use super::{valid_jti, valid_scope, Initiator, RunBudget, MAX_ID_CLAIM_LEN, MAX_TOKEN_LEN};
use crate::ids::{valid_run_id, TenantId, WorkloadId};

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

impl TokenSettings {
    /// The last second (since the Unix epoch) a token expiring at `exp` is accepted: `exp` plus
    /// the leeway. The one definition of "expired" (see [`Self::expired`]); runs end then too.
    pub fn accepted_until(&self, exp: u64) -> u64 {
        accepted_until(exp, self.leeway)
    }

    /// Whether a token expiring at `exp` is expired at `now_unix`, the leeway allowed.
    pub fn expired(&self, exp: u64, now_unix: u64) -> bool {
        now_unix > self.accepted_until(exp)
    }
}

/// The last second a token expiring at `exp` is accepted with clock-skew allowance `leeway`
/// (what [`TokenSettings::accepted_until`] computes, for callers that hold only the leeway).
pub fn accepted_until(exp: u64, leeway: Duration) -> u64 {
    exp.saturating_add(leeway.as_secs())
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
    /// What the token was accepted on beyond the claims above, for [`TokenVerifier::recheck`].
    pub accepted: Accepted,
}

/// The key that verified a token and the registered claims the settings judge (`aud`, `iss`,
/// `iat`, `nbf`), kept so that a token already accepted (the one that opened a tunnel) can be
/// judged again against the current key set and settings without verifying its signature again.
/// The default names no key, so [`TokenVerifier::recheck`] refuses it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Accepted {
    /// The header's `kid`, as the key was selected by.
    kid: Option<String>,
    /// The fingerprint of the key that verified the signature.
    key: KeyFingerprint,
    /// `aud`, as a list (a string `aud` is a list of one).
    audiences: Vec<String>,
    /// `iss`.
    issuer: Option<String>,
    /// `iat`.
    issued_at: u64,
    /// `nbf`.
    not_before: Option<u64>,
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
    /// No key with this `kid`.
    #[error("the token is signed with an unknown key")]
    UnknownKey,
    /// No `kid` while several keys are configured: which one signed it is not guessed.
    #[error("the token names no key (`kid`) and several keys are configured")]
    NoKeyId,
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
    /// `jti` is revoked. Every other check passed, so the claims are the issuer's word: the
    /// pipeline uses them to audit the refusal in the token's tenant's partition (that tenant's
    /// security team wants to see a revoked token in use). They are never an identity to serve.
    #[error("the token has been revoked")]
    Revoked(Box<VerifiedToken>),
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

/// `aud` (as a list) names `audience`; with `sole`, names it alone.
fn check_audience(audiences: &[String], audience: &str, sole: bool) -> Result<(), TokenError> {
    let found = audiences.iter().any(|a| a == audience);
    if found && (!sole || audiences.len() == 1) {
        Ok(())
    } else {
        Err(TokenError::WrongAudience)
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
    /// This verifier, only stricter: the keys `keys` still holds (when given), and the token
    /// ids `revoked_jtis` adds (when given); `None` when that changes nothing. Nothing this
    /// verifier refused is accepted by the result.
    pub fn tightened(
        &self,
        keys: Option<&KeySet>,
        revoked_jtis: Option<&HashSet<String>>,
    ) -> Option<Self> {
        let keys = keys.map_or_else(|| self.keys.clone(), |k| self.keys.kept_in(k));
        let mut revoked = self.revoked.clone();
        revoked.extend(revoked_jtis.into_iter().flatten().cloned());
        // Keys only go and revocations only come, so equal counts are equal sets.
        let changed =
            keys.kids().count() < self.keys.kids().count() || revoked.len() > self.revoked.len();
        changed.then(|| Self {
            settings: self.settings.clone(),
            keys,
            revoked,
        })
    }

    /// The key set tokens are verified with.
    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

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
    /// selected key, `aud`, time claims with leeway, lifetime, `iss`, the value of each claim,
    /// then revocation.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<VerifiedToken, TokenError> {
        self.verify_as(token, now_unix, &self.settings.audience, false)
    }

    /// Verifies `token` as [`Self::verify`] does, but for `audience` instead of the workload
    /// tokens' (approver tokens). SECURITY: `aud` must name `audience` alone, so one token can
    /// never serve as both a workload token and an approver token.
    pub fn verify_for_audience(
        &self,
        token: &str,
        now_unix: u64,
        audience: &str,
    ) -> Result<VerifiedToken, TokenError> {
        self.verify_as(token, now_unix, audience, true)
    }

    fn verify_as(
        &self,
        token: &str,
        now_unix: u64,
        audience: &str,
        sole_audience: bool,
    ) -> Result<VerifiedToken, TokenError> {
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
        let key = self.keys.select(header.kid.as_deref())?;
        // SECURITY: the key decides the algorithm, never the token header.
        if alg != key.alg {
            return Err(TokenError::UnsupportedAlgorithm);
        }
        if payload.is_empty() || signature.is_empty() {
            return Err(TokenError::Malformed);
        }

        let mut validation = Validation::new(key.alg);
        // Time claims are checked below against the caller's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.required_spec_claims = HashSet::from(["aud".to_string()]);
        validation.validate_aud = true;
        validation.set_audience(&[audience]);
        if let Some(iss) = &self.settings.issuer {
            validation.set_issuer(&[iss]);
        }
        let claims = jsonwebtoken::decode::<RawClaims>(token, &key.decoding, &validation)
            .map_err(|e| decode_error(&e))?
            .claims;

        // `aud` again, here, so its type and value are checked whatever the library does.
        let audiences = match claims.aud {
            None => return Err(TokenError::MissingClaim("aud")),
            Some(Value::String(a)) => vec![a],
            Some(Value::Array(list)) => list
                .into_iter()
                .map(|a| match a {
                    Value::String(a) => Ok(a),
                    _ => Err(TokenError::InvalidClaim("aud")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(TokenError::InvalidClaim("aud")),
        };
        check_audience(&audiences, audience, sole_audience)?;

        let exp = time_claim(claims.exp, "exp")?.ok_or(TokenError::MissingClaim("exp"))?;
        let iat = time_claim(claims.iat, "iat")?.ok_or(TokenError::MissingClaim("iat"))?;
        let nbf = time_claim(claims.nbf, "nbf")?;
        self.check_times(exp, iat, nbf, now_unix)?;

        let iss = string_claim(claims.iss, "iss")?;
        self.check_issuer(iss.as_deref())?;

        let jti = string_claim(claims.jti, "jti")?;
        // SECURITY: an id no `revoked_jtis_file` line can name could never be revoked there.
        if jti.as_deref().is_some_and(|j| !valid_jti(j)) {
            return Err(TokenError::InvalidClaim("jti"));
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
        // SECURITY: a budget caps a run; without a run id there is no run to cap (each request
        // is a run of its own), so the budget would be dropped and the caller left uncapped.
        // The issuer meant a cap: the token is refused rather than honoured without it.
        if run_budget.is_some() && run_id.is_none() {
            return Err(TokenError::InvalidClaim("run_budget"));
        }
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

        let verified = VerifiedToken {
            tenant,
            workload,
            run_id,
            run_budget,
            scopes,
            initiator,
            correlation_id,
            jti,
            expires_at: exp,
            accepted: Accepted {
                kid: header.kid,
                key: key.fingerprint,
                audiences,
                issuer: iss,
                issued_at: iat,
                not_before: nbf,
            },
        };
        // Checked last, so a revoked token's refusal can name whose token it was.
        if verified.jti.as_deref().is_some_and(|j| self.is_revoked(j)) {
            return Err(TokenError::Revoked(Box::new(verified)));
        }
        Ok(verified)
    }

    /// Judges a token this proxy accepted earlier (`token`, from [`Self::verify`], possibly by
    /// a verifier of an older snapshot) as [`Self::verify`] would judge it now, with this
    /// verifier's keys, settings and revocation list, and the same errors: its key gone from
    /// the set is `UnknownKey`, its `kid` now naming another key `BadSignature` (the signature
    /// would not verify), then audience, time claims (expiry with the leeway, lifetime), issuer
    /// and revocation. The signature is not verified again: the key's fingerprint stands for it
    /// (a look-up and a comparison, not the tens of microseconds of a signature check).
    pub fn recheck(&self, token: &VerifiedToken, now_unix: u64) -> Result<(), TokenError> {
        let accepted = &token.accepted;
        let key = self.keys.select(accepted.kid.as_deref())?;
        // SECURITY: the same `kid`, another key (a rotation that reused the id): the token's
        // signature is not one this key made.
        if key.fingerprint != accepted.key {
            return Err(TokenError::BadSignature);
        }
        check_audience(&accepted.audiences, &self.settings.audience, false)?;
        self.check_times(
            token.expires_at,
            accepted.issued_at,
            accepted.not_before,
            now_unix,
        )?;
        self.check_issuer(accepted.issuer.as_deref())?;
        if token.jti.as_deref().is_some_and(|j| self.is_revoked(j)) {
            return Err(TokenError::Revoked(Box::new(token.clone())));
        }
        Ok(())
    }

    /// The time claims against `now_unix`, with the leeway: expired, not yet valid, expiring
    /// before issued, issued for longer than the maximum lifetime.
    fn check_times(
        &self,
        exp: u64,
        iat: u64,
        nbf: Option<u64>,
        now_unix: u64,
    ) -> Result<(), TokenError> {
        if self.settings.expired(exp, now_unix) {
            return Err(TokenError::Expired);
        }
        let horizon = now_unix.saturating_add(self.settings.leeway.as_secs());
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
        Ok(())
    }

    /// `iss` against the configured issuer, when one is configured.
    fn check_issuer(&self, iss: Option<&str>) -> Result<(), TokenError> {
        match (&self.settings.issuer, iss) {
            (None, _) => Ok(()),
            (Some(_), None) => Err(TokenError::MissingClaim("iss")),
            (Some(want), Some(iss)) if iss != want => Err(TokenError::WrongIssuer),
            (Some(_), Some(_)) => Ok(()),
        }
    }

    /// Whether the configured revocation list (the `revoked_jtis_file`) names token id `jti`.
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked.contains(jti)
    }
}
