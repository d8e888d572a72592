//! The public keys tokens are verified with, parsed from a JWKS (read at load and reload, never
//! per request).

use std::collections::HashMap;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::verify::TokenError;

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
    /// The `keys` array is empty: refused at startup, accepted at a reload (see
    /// [`KeySet::from_jwks_json`]).
    #[error(
        "the JWKS has no keys: the proxy does not start with it (a running proxy accepts it at a \
         reload and then refuses every token)"
    )]
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
/// A set may be empty (a reload that pulled every key): it then refuses every token.
#[derive(Clone)]
pub struct KeySet {
    keys: HashMap<String, Key>,
    /// The entries left out as keys this proxy does not verify with (an identity provider's
    /// RSA keys, its encryption keys), each as `` `kid` (why) ``: tokens naming them are refused
    /// as signed with an unknown key.
    skipped: Vec<String>,
}

/// A SHA-256 over a public key's algorithm and point: which key a `kid` named when a token was
/// verified, so a later look-up notices a key replaced under the same `kid`.
pub type KeyFingerprint = [u8; 32];

/// One public key: its decoding form, its one algorithm and its fingerprint.
#[derive(Clone)]
pub(super) struct Key {
    pub(super) decoding: DecodingKey,
    pub(super) alg: Algorithm,
    pub(super) fingerprint: KeyFingerprint,
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
    /// Parses a JWKS (`{"keys":[…]}`) for its Ed25519 (`OKP`) and P-256 (`EC`) public keys.
    ///
    /// Every entry needs a unique non-empty `kid`; a key's `alg`, when present, must be the one
    /// its key type allows (`EdDSA` or `ES256`). An entry of another key type (an identity
    /// provider publishes its RSA keys beside its EC ones) or marked for encryption is left out
    /// and listed ([`KeySet::skipped`]): no token verifies with it. Private key material (a
    /// JWKS is public: someone published the wrong file) or a malformed key of a type the proxy
    /// verifies with is an error, and one such entry rejects the whole document. An empty set
    /// is a valid document (an operator pulling the only key after a compromise); whether to
    /// accept it is the loader's choice ([`KeySetError::Empty`], [`KeySet::is_empty`]).
    pub fn from_jwks_json(text: &str) -> Result<KeySet, KeySetError> {
        let entries = jwks_entries(text)?;
        let mut set = KeySet {
            keys: HashMap::with_capacity(entries.len()),
            skipped: Vec::new(),
        };
        let mut kids = std::collections::HashSet::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let (jwk, kid) = entry_kid(entry, index)?;
            // SECURITY: a duplicate kid would make the verifying key depend on document order.
            if !kids.insert(kid) {
                return Err(KeySetError::DuplicateKid { kid: shown(kid) });
            }
            match parse_public_key(jwk, kid) {
                Ok(key) => {
                    set.keys.insert(kid.to_string(), key);
                }
                // An entry with no `kty` is a broken key, not another type.
                Err(KeySetError::UnsupportedKey { kid })
                    if jwk.get("kty").is_some_and(Value::is_string) =>
                {
                    set.skipped.push(format!("`{kid}` (not Ed25519 or P-256)"));
                }
                Err(KeySetError::NotForSigning { kid }) => {
                    set.skipped.push(format!("`{kid}` (not for signatures)"));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(set)
    }

    /// The keys a JWKS document still names, read leniently: what stays trusted after a reload
    /// that cannot be taken whole ([`KeySet::kept_in`]). Every entry that does not parse as a
    /// key (malformed, another type, private material) names none, and a `kid` that appears
    /// more than once names none, so a key made unusable in the file stops verifying at once,
    /// as a key pulled from it does. `None` when the text is not a JWKS at all (a file caught
    /// half-written): then nothing can be told from it.
    pub fn named_in(text: &str) -> Option<KeySet> {
        let entries = jwks_entries(text).ok()?;
        let mut keys = HashMap::with_capacity(entries.len());
        let mut seen = std::collections::HashSet::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let Ok((jwk, kid)) = entry_kid(entry, index) else {
                continue;
            };
            if !seen.insert(kid) {
                // Named twice: which key it names would depend on document order.
                keys.remove(kid);
            } else if let Ok(key) = parse_public_key(jwk, kid) {
                keys.insert(kid.to_string(), key);
            }
        }
        Some(KeySet {
            keys,
            skipped: Vec::new(),
        })
    }

    /// Whether the set has no key at all (every token is refused).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The entries of the document left out, as [`KeySet::from_jwks_json`] describes.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// The keys of this set that `other` also holds, under the same id and with the same
    /// material: what stays trusted when `other` is read but cannot be taken whole.
    pub fn kept_in(&self, other: &KeySet) -> KeySet {
        KeySet {
            keys: self
                .keys
                .iter()
                .filter(|(kid, key)| {
                    other
                        .keys
                        .get(*kid)
                        .is_some_and(|k| k.fingerprint == key.fingerprint)
                })
                .map(|(kid, key)| (kid.clone(), key.clone()))
                .collect(),
            skipped: self.skipped.clone(),
        }
    }

    /// The key ids, in no particular order.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// The key a token header selects: its `kid`, or the only key when it names none.
    pub(super) fn select(&self, kid: Option<&str>) -> Result<&Key, TokenError> {
        match kid {
            Some(kid) => self.keys.get(kid).ok_or(TokenError::UnknownKey),
            // SECURITY: without a kid we only guess when there is nothing to guess between.
            None if self.keys.len() == 1 => self.keys.values().next().ok_or(TokenError::UnknownKey),
            None => Err(TokenError::NoKeyId),
        }
    }
}

/// The `keys` array of a JWKS document. A byte-order mark before it (Notepad's and
/// PowerShell's UTF-8) is no part of the document, as in the revocation file.
fn jwks_entries(text: &str) -> Result<Vec<Value>, KeySetError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let doc: Value = serde_json::from_str(text).map_err(|e| KeySetError::Parse {
        line: e.line(),
        column: e.column(),
    })?;
    match doc {
        Value::Object(mut members) => match members.remove("keys") {
            Some(Value::Array(entries)) => Ok(entries),
            _ => Err(KeySetError::NotJwks),
        },
        _ => Err(KeySetError::NotJwks),
    }
}

/// Entry `index` of `keys` as an object, and its `kid`.
fn entry_kid(
    entry: &Value,
    index: usize,
) -> Result<(&serde_json::Map<String, Value>, &str), KeySetError> {
    let jwk = entry
        .as_object()
        .ok_or(KeySetError::InvalidEntry { index })?;
    let kid = jwk
        .get("kid")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .ok_or(KeySetError::MissingKid { index })?;
    Ok((jwk, kid))
}

/// One JWK, already known to be an object with a `kid`, as a decoding key and its algorithm.
fn parse_public_key(jwk: &serde_json::Map<String, Value>, kid: &str) -> Result<Key, KeySetError> {
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
    let (decoding, point) = match alg {
        Algorithm::ES256 => {
            let x = coordinate(jwk, "x").ok_or_else(invalid)?;
            let y = coordinate(jwk, "y").ok_or_else(invalid)?;
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (DecodingKey::from_ec_der(&point), point)
        }
        _ => {
            let x = coordinate(jwk, "x").ok_or_else(invalid)?;
            (DecodingKey::from_ed_der(&x), x)
        }
    };
    let fingerprint = Sha256::new()
        .chain_update(expected)
        .chain_update([0])
        .chain_update(&point)
        .finalize()
        .into();
    Ok(Key {
        decoding,
        alg,
        fingerprint,
    })
}
