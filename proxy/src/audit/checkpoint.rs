//! Signed checkpoints: the head of a tenant's chain (its last durable record's `seq` and line
//! hash) signed with the proxy's Ed25519 key. A checkpoint makes dropping the newest records
//! detectable, which the chain alone cannot show.
//!
//! Checkpoints form a chain of their own: each signs the hash of the tenant's previous
//! checkpoint line (`prev_checkpoint`, 64 zeros for the first) and the writer's
//! `checkpoint_interval` (`interval_ms`), so removing or reordering a checkpoint breaks the link
//! of the next one, and `audit verify` knows how long records may stay unsigned. Checkpoints
//! written before the chain existed (v1: neither field) are still read, but only before the
//! first chained one. The link is not named `prev`: a checkpoint line must never parse as a
//! chained record (`seq`, `prev`, `tenant`).
//!
//! Public keys are published as `DIR/_keys/<key_id>.pub` (64 hex digits of the raw Ed25519
//! key); `key_id` is the first 16 hex digits of the key's SHA-256, so a published file can be
//! checked against its name. Anyone who can write the directory can publish a key of their
//! own: only a key pinned by the verifier (`audit verify --key`) makes a forged checkpoint
//! detectable.

use std::fs;
use std::io;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::layout::KEYS_DIR;

/// One line of `checkpoints.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The tenant whose chain this is.
    pub tenant: String,
    /// `seq` of the chain head.
    pub seq: u64,
    /// Hex SHA-256 of the head record's line.
    pub hash: String,
    /// The record file holding the head, relative to the tenant's partition.
    pub file: String,
    /// RFC 3339 UTC time the checkpoint was made.
    pub time: String,
    /// Hex SHA-256 of the tenant's previous checkpoint line (64 zeros for its first); absent in
    /// a legacy (v1) checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_checkpoint: Option<String>,
    /// The writer's `checkpoint_interval`, in milliseconds; absent in a legacy (v1) checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    /// Which key signed it.
    pub key_id: String,
    /// Hex Ed25519 signature over [`Checkpoint::message`].
    pub signature: String,
}

impl Checkpoint {
    /// The signed bytes: every field but the signature, newline-separated after a domain tag
    /// (no field can contain a newline: ids, hex, a relative path, a time and a number). A
    /// chained checkpoint has its own tag (v2), so dropping its link fields to pass it off as a
    /// legacy one breaks its signature.
    pub fn message(&self) -> Vec<u8> {
        let v1 = format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            self.tenant, self.seq, self.hash, self.file, self.time, self.key_id
        );
        if !self.is_chained() {
            return format!("tenant-proxy audit checkpoint v1\n{v1}").into_bytes();
        }
        format!(
            "tenant-proxy audit checkpoint v2\n{v1}\n{}\n{}",
            self.prev_checkpoint.as_deref().unwrap_or_default(),
            self.interval_ms.map(|i| i.to_string()).unwrap_or_default()
        )
        .into_bytes()
    }

    /// Whether it carries a link field (written since checkpoints are chained).
    pub fn is_chained(&self) -> bool {
        self.prev_checkpoint.is_some() || self.interval_ms.is_some()
    }

    /// The writer's checkpoint interval it signed, if any.
    pub fn interval(&self) -> Option<Duration> {
        self.interval_ms.map(Duration::from_millis)
    }

    /// Whether the signature is valid for `public_key`.
    pub fn signed_by(&self, public_key: &[u8]) -> bool {
        let Ok(signature) = hex::decode(&self.signature) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&self.message(), &signature)
            .is_ok()
    }
}

/// What a checkpoint links to: the tenant's previous checkpoint, and how often the writer signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointLink {
    /// SHA-256 of the previous checkpoint's line ([`super::chain::GENESIS`] for the first).
    pub prev: [u8; 32],
    /// The writer's `checkpoint_interval`.
    pub interval: Duration,
}

/// The id of a public key: the first 16 hex digits of its SHA-256.
pub fn key_id(public_key: &[u8]) -> String {
    let digest = hex::encode(Sha256::digest(public_key));
    digest.get(..16).unwrap_or(&digest).to_string()
}

/// Why a signing key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("cannot read the audit signing key `{path}`: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not a PKCS#8 Ed25519 private key.
    #[error("`{0}` is not a PKCS#8 (PEM `BEGIN PRIVATE KEY` or DER) Ed25519 private key")]
    Invalid(String),
    /// The system random source failed.
    #[error("cannot generate an audit signing key")]
    Generate,
    /// A public key file could not be read or is malformed.
    #[error("`{0}` is not an audit public key (64 hex digits)")]
    BadPublicKey(String),
}

/// The proxy's checkpoint signing key. `Debug` shows the key id only.
pub struct Signer {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Loads a PKCS#8 Ed25519 key, PEM or DER.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?);
        let invalid = || KeyError::Invalid(path.display().to_string());
        let der = if bytes.starts_with(b"-----") {
            Zeroizing::new(pem_to_der(&bytes).ok_or_else(invalid)?)
        } else {
            bytes
        };
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|_| invalid())?;
        Ok(Self::from_pair(pair))
    }

    /// A new random key; returns it with its PKCS#8 PEM (for `audit keygen`).
    pub fn generate() -> Result<(Self, Zeroizing<String>), KeyError> {
        let (pair, der) = crate::private_key::generate_ed25519().ok_or(KeyError::Generate)?;
        Ok((Self::from_pair(pair), crate::private_key::pem(&der)))
    }

    fn from_pair(pair: Ed25519KeyPair) -> Self {
        let key_id = key_id(pair.public_key().as_ref());
        Self { pair, key_id }
    }

    /// The key id written into checkpoints.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key as published (64 hex digits).
    pub fn public_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }

    /// A signed checkpoint of `tenant`'s chain at (`seq`, `hash`) in `file`, linked to the
    /// tenant's previous checkpoint.
    pub fn checkpoint(
        &self,
        tenant: &str,
        seq: u64,
        hash: &[u8; 32],
        file: String,
        time: String,
        link: CheckpointLink,
    ) -> Checkpoint {
        self.sign(Checkpoint {
            tenant: tenant.to_string(),
            seq,
            hash: hex::encode(hash),
            file,
            time,
            prev_checkpoint: Some(hex::encode(link.prev)),
            interval_ms: Some(u64::try_from(link.interval.as_millis()).unwrap_or(u64::MAX)),
            key_id: String::new(),
            signature: String::new(),
        })
    }

    /// Sets `c`'s key id to this key's and signs it.
    pub fn sign(&self, mut c: Checkpoint) -> Checkpoint {
        c.key_id = self.key_id.clone();
        c.signature = hex::encode(self.pair.sign(&c.message()));
        c
    }

    /// Writes the public key to `DIR/_keys/<key_id>.pub` (so `audit verify` finds it).
    pub fn publish(&self, audit_dir: &Path) -> io::Result<()> {
        use std::io::Write as _;
        let keys = audit_dir.join(KEYS_DIR);
        super::layout::create_dirs(audit_dir, &keys)?;
        super::layout::open_regular(
            super::layout::file_options()
                .write(true)
                .create(true)
                .truncate(true),
            &keys.join(format!("{}.pub", self.key_id)),
        )?
        .write_all(format!("{}\n", self.public_hex()).as_bytes())
    }
}

/// Reads a published or pinned public key file (64 hex digits).
pub fn read_public_key(path: &Path) -> Result<[u8; 32], KeyError> {
    let bad = || KeyError::BadPublicKey(path.display().to_string());
    let text = fs::read_to_string(path).map_err(|_| bad())?;
    let mut key = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut key).map_err(|_| bad())?;
    Ok(key)
}

fn pem_to_der(pem: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(pem).ok()?;
    let body = text
        .split("-----BEGIN PRIVATE KEY-----")
        .nth(1)?
        .split("-----END PRIVATE KEY-----")
        .next()?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn signature_covers_every_field() {
        let (signer, _) = Signer::generate().unwrap();
        let public = hex::decode(signer.public_hex()).unwrap();
        let link = CheckpointLink {
            prev: [3; 32],
            interval: Duration::from_secs(60),
        };
        let c = signer.checkpoint(
            "acme",
            7,
            &[1; 32],
            "2026/11/28.jsonl".into(),
            "t".into(),
            link,
        );
        assert!(c.signed_by(&public));
        type Change = fn(&mut Checkpoint);
        let changes: [(&str, Change); 10] = [
            ("tenant", |c| c.tenant = "globex".into()),
            ("seq", |c| c.seq += 1),
            ("hash", |c| c.hash = hex::encode([2u8; 32])),
            ("file", |c| c.file = "2026/11/29.jsonl".into()),
            ("time", |c| c.time = "u".into()),
            ("prev", |c| c.prev_checkpoint = Some(hex::encode([4u8; 32]))),
            ("interval", |c| c.interval_ms = Some(3_600_000)),
            ("no prev", |c| c.prev_checkpoint = None),
            ("no interval", |c| c.interval_ms = None),
            ("made legacy", |c| {
                c.prev_checkpoint = None;
                c.interval_ms = None;
            }),
        ];
        for (name, change) in changes {
            let mut forged = c.clone();
            change(&mut forged);
            assert!(!forged.signed_by(&public), "{name}");
        }
        let (other, _) = Signer::generate().unwrap();
        assert!(!c.signed_by(&hex::decode(other.public_hex()).unwrap()));
        // A legacy checkpoint (no link) still verifies, under its own tag.
        let legacy = signer.sign(Checkpoint {
            prev_checkpoint: None,
            interval_ms: None,
            ..c.clone()
        });
        assert!(legacy.signed_by(&public) && !legacy.is_chained());
        let line = serde_json::to_string(&legacy).unwrap();
        assert!(
            !line.contains("prev") && !line.contains("interval_ms"),
            "{line}"
        );
    }

    #[test]
    fn generated_pem_loads_back_with_the_same_key() {
        let (signer, pem) = Signer::generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        fs::write(&path, pem.as_bytes()).unwrap();
        let loaded = Signer::load(&path).unwrap();
        assert_eq!(loaded.key_id(), signer.key_id());
        fs::write(
            &path,
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        assert!(matches!(Signer::load(&path), Err(KeyError::Invalid(_))));
        signer.publish(dir.path()).unwrap();
        let public = read_public_key(
            &dir.path()
                .join(KEYS_DIR)
                .join(format!("{}.pub", signer.key_id())),
        )
        .unwrap();
        assert_eq!(key_id(&public), signer.key_id());
    }
}
