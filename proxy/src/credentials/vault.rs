//! The embedded vault: one JSON file of per-tenant secrets, encrypted at rest with envelope
//! encryption.
//!
//! Each tenant has its own random 256-bit data key, stored wrapped (AES-256-GCM) by the master
//! key. Each credential value is sealed (AES-256-GCM) with its tenant's data key, and the
//! associated data binds the ciphertext to its tenant, its name and its metadata (bindings,
//! positions, expiry): a value moved to another tenant or name, or a binding edited in the file,
//! fails to decrypt and the vault is rejected as tampered. Edits are written to a temporary file,
//! fsynced and renamed over the vault, so a crash never leaves a half-written vault.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::binding::{Binding, Position};
use super::kind::{Kind, KindName};
use super::secret::SecretValue;
use super::{valid_name, Credential, CredentialSet, CredentialStore, StoreError};
use crate::ids::TenantId;

const VERSION: u32 = 1;

/// Why the vault could not be read, opened or written.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// File system error.
    #[error("`{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Not a vault file, or an unsupported version.
    #[error("`{path}` is not a tenant-proxy vault: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The master key is not the one the vault was written with.
    #[error("the master key does not open this vault (it was written with master key `{expected}`, this one is `{got}`)")]
    WrongMasterKey {
        /// Key id recorded in the vault.
        expected: String,
        /// Key id of the given key.
        got: String,
    },
    /// A record failed authentication.
    #[error("vault record `{what}` failed authentication: the file was modified outside `tenant-proxy cred`")]
    Tampered {
        /// Which record.
        what: String,
    },
    /// A master key that is not 32 bytes of base64.
    #[error("master key: {0}")]
    MasterKey(String),
    /// Invalid input to an edit.
    #[error("{0}")]
    Invalid(String),
}

/// Where the vault's master key is read from.
#[derive(Debug, Clone)]
pub enum MasterKeySource {
    /// A file of base64 text.
    File(PathBuf),
    /// An environment variable of base64 text.
    Env(String),
}

impl MasterKeySource {
    /// Reads the key.
    pub fn read(&self) -> Result<MasterKey, VaultError> {
        match self {
            MasterKeySource::File(f) => MasterKey::from_file(f),
            MasterKeySource::Env(v) => MasterKey::from_env(v),
        }
    }
}

/// The embedded vault as a [`CredentialStore`].
#[derive(Debug, Clone)]
pub struct VaultStore {
    /// The vault file.
    pub file: PathBuf,
    /// Its master key.
    pub master: MasterKeySource,
}

impl CredentialStore for VaultStore {
    fn load(&self) -> Result<CredentialSet, StoreError> {
        let err = |message: String| StoreError {
            path: self.file.clone(),
            message,
        };
        let master = self.master.read().map_err(|e| err(e.to_string()))?;
        if !self.file.exists() {
            return Err(err(
                "the vault file does not exist; create it with `tenant-proxy cred put`".into(),
            ));
        }
        Vault::open(&self.file, master)
            .and_then(|v| v.decrypt_all())
            .map_err(|e| err(e.to_string()))
    }

    fn watched_paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.file.clone()];
        if let MasterKeySource::File(f) = &self.master {
            paths.push(f.clone());
        }
        paths
    }
}

/// The key that wraps every tenant's data key. Wiped on drop, never printed.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id())
    }
}

impl MasterKey {
    /// Parses base64 text of exactly 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, VaultError> {
        let bytes = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| VaultError::MasterKey("not valid base64".into()))?,
        );
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| VaultError::MasterKey("must be 32 bytes of base64".into()))?;
        Ok(Self(Zeroizing::new(key)))
    }

    /// Reads a key file (base64 text).
    pub fn from_file(path: &Path) -> Result<Self, VaultError> {
        let text = Zeroizing::new(crate::whole_file::read_to_string(path).map_err(|source| {
            VaultError::Io {
                path: path.to_path_buf(),
                source,
            }
        })?);
        Self::from_base64(&text)
    }

    /// Reads the key from an environment variable (base64 text).
    pub fn from_env(var: &str) -> Result<Self, VaultError> {
        let text = Zeroizing::new(std::env::var(var).map_err(|_| {
            VaultError::MasterKey(format!("environment variable `{var}` is not set"))
        })?);
        Self::from_base64(&text)
    }

    /// A new random key and its base64 text.
    pub fn generate() -> Result<(Self, Zeroizing<String>), VaultError> {
        let mut key = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(&mut *key)
            .map_err(|_| VaultError::MasterKey("no randomness".into()))?;
        let text = Zeroizing::new(STANDARD.encode(*key));
        Ok((Self(key), text))
    }

    /// A public identifier of the key (a hash), recorded in the vault to tell a wrong key from
    /// a tampered file.
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"tenant-proxy master key id\0");
        h.update(*self.0);
        format!("mk-{}", &hex::encode(h.finalize())[..16])
    }

    fn aead(&self) -> Result<LessSafeKey, VaultError> {
        aead_key(&*self.0)
    }
}

fn aead_key(bytes: &[u8]) -> Result<LessSafeKey, VaultError> {
    UnboundKey::new(&AES_256_GCM, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| VaultError::MasterKey("invalid key length".into()))
}

fn seal(key: &LessSafeKey, aad: &[u8], plaintext: &[u8]) -> Result<String, VaultError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| VaultError::Invalid("no randomness".into()))?;
    let mut buf = Zeroizing::new(plaintext.to_vec());
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut *buf,
    )
    .map_err(|_| VaultError::Invalid("encryption failed".into()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(STANDARD.encode(out))
}

fn open(
    key: &LessSafeKey,
    aad: &[u8],
    sealed: &str,
    what: &str,
) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    let tampered = || VaultError::Tampered {
        what: what.to_string(),
    };
    let raw = STANDARD.decode(sealed).map_err(|_| tampered())?;
    if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
        return Err(tampered());
    }
    let (nonce, ct) = raw.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| tampered())?;
    let mut buf = Zeroizing::new(ct.to_vec());
    let len = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| tampered())?
        .len();
    buf.truncate(len);
    Ok(buf)
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VaultFile {
    version: u32,
    master_key_id: String,
    #[serde(default)]
    tenants: BTreeMap<String, TenantRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantRecord {
    data_key: String,
    #[serde(default)]
    credentials: BTreeMap<String, CredentialRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialRecord {
    value: String,
    bind: Vec<Binding>,
    #[serde(rename = "in")]
    positions: Vec<Position>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<u64>,
    #[serde(default, skip_serializing_if = "KindName::is_static")]
    kind: KindName,
}

/// The associated data that ties a sealed value to its place and metadata.
#[derive(Serialize)]
struct ValueAad<'a> {
    v: u32,
    tenant: &'a str,
    name: &'a str,
    bind: &'a [Binding],
    #[serde(rename = "in")]
    positions: &'a [Position],
    expires: Option<u64>,
    // Absent for `static`, so records written before kinds existed authenticate unchanged.
    #[serde(skip_serializing_if = "KindName::is_static")]
    kind: KindName,
}

fn value_aad(tenant: &str, name: &str, r: &CredentialRecord) -> Result<Vec<u8>, VaultError> {
    serde_json::to_vec(&ValueAad {
        v: VERSION,
        tenant,
        name,
        bind: &r.bind,
        positions: &r.positions,
        expires: r.expires,
        kind: r.kind,
    })
    .map_err(|e| VaultError::Invalid(e.to_string()))
}

fn data_key_aad(tenant: &str) -> Vec<u8> {
    format!("tenant-proxy/v{VERSION}/data-key/{tenant}").into_bytes()
}

/// A listed credential: everything but the value.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    /// Name.
    pub name: String,
    /// Bindings.
    pub bind: Vec<Binding>,
    /// Allowed positions.
    pub positions: Vec<Position>,
    /// Expiry (unix seconds).
    pub expires: Option<u64>,
    /// `sha256:` + 12 hex digits of the value.
    pub fingerprint: String,
}

/// An open vault file for editing (the CLI) or loading (the proxy).
#[derive(Debug)]
pub struct Vault {
    path: PathBuf,
    master: MasterKey,
    file: VaultFile,
}

impl Vault {
    /// Opens `path` with `master`, checking that the key fits. A missing file is an empty vault.
    pub fn open(path: &Path, master: MasterKey) -> Result<Self, VaultError> {
        let file = match crate::whole_file::read(path) {
            Ok(bytes) => {
                serde_json::from_slice::<VaultFile>(&bytes).map_err(|e| VaultError::Format {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => VaultFile {
                version: VERSION,
                master_key_id: master.id(),
                tenants: BTreeMap::new(),
            },
            Err(source) => {
                return Err(VaultError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        if file.version != VERSION {
            return Err(VaultError::Format {
                path: path.to_path_buf(),
                reason: format!("unsupported version {}", file.version),
            });
        }
        if file.master_key_id != master.id() {
            return Err(VaultError::WrongMasterKey {
                expected: file.master_key_id,
                got: master.id(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            master,
            file,
        })
    }

    fn data_key(&self, tenant: &str) -> Result<LessSafeKey, VaultError> {
        let record = self
            .file
            .tenants
            .get(tenant)
            .ok_or_else(|| VaultError::Invalid(format!("no tenant `{tenant}`")))?;
        let key = open(
            &self.master.aead()?,
            &data_key_aad(tenant),
            &record.data_key,
            &format!("{tenant} data key"),
        )?;
        aead_key(&key)
    }

    /// Decrypts everything: the runtime credential set. Fails on any record that does not
    /// authenticate.
    pub fn decrypt_all(&self) -> Result<CredentialSet, VaultError> {
        let mut set = CredentialSet::default();
        for (tenant, record) in &self.file.tenants {
            let tenant_id =
                TenantId::new(tenant).map_err(|e| VaultError::Invalid(e.to_string()))?;
            let key = self.data_key(tenant)?;
            let mut creds = HashMap::new();
            for (name, r) in &record.credentials {
                let value = open(
                    &key,
                    &value_aad(tenant, name, r)?,
                    &r.value,
                    &format!("{tenant}/{name}"),
                )?;
                let value = SecretValue::new(value.to_vec());
                let kind = Kind::parse(r.kind, &value).map_err(|e| {
                    VaultError::Invalid(format!("credential `{tenant}/{name}`: {e}"))
                })?;
                creds.insert(
                    name.clone(),
                    Arc::new(Credential {
                        tenant: tenant_id.clone(),
                        name: name.clone(),
                        value,
                        bindings: r.bind.clone(),
                        positions: r.positions.clone(),
                        expires_at: r.expires,
                        kind,
                    }),
                );
            }
            set.insert_tenant(tenant_id, creds);
        }
        Ok(set)
    }

    /// Adds or replaces a static credential.
    pub fn put(
        &mut self,
        tenant: &TenantId,
        name: &str,
        value: &SecretValue,
        bind: Vec<Binding>,
        positions: Vec<Position>,
        expires: Option<u64>,
    ) -> Result<(), VaultError> {
        self.put_kind(
            tenant,
            name,
            value,
            bind,
            positions,
            expires,
            KindName::Static,
        )
    }

    /// Adds or replaces a credential of `kind`; a value that does not parse as its kind is
    /// refused (the error never quotes it).
    #[allow(clippy::too_many_arguments)]
    pub fn put_kind(
        &mut self,
        tenant: &TenantId,
        name: &str,
        value: &SecretValue,
        bind: Vec<Binding>,
        positions: Vec<Position>,
        expires: Option<u64>,
        kind: KindName,
    ) -> Result<(), VaultError> {
        Kind::parse(kind, value).map_err(VaultError::Invalid)?;
        if !valid_name(name) {
            return Err(VaultError::Invalid(format!(
                "`{name}` is not a credential name (1-64 of A-Z a-z 0-9 _ - .)"
            )));
        }
        if bind.is_empty() {
            return Err(VaultError::Invalid(
                "a credential needs at least one `--bind` destination".into(),
            ));
        }
        for b in &bind {
            b.validate().map_err(VaultError::Invalid)?;
        }
        if positions.is_empty() {
            return Err(VaultError::Invalid(
                "a credential needs at least one position (`--in`)".into(),
            ));
        }
        let t = tenant.as_str();
        if !self.file.tenants.contains_key(t) {
            let mut dk = Zeroizing::new([0u8; 32]);
            SystemRandom::new()
                .fill(&mut *dk)
                .map_err(|_| VaultError::Invalid("no randomness".into()))?;
            let wrapped = seal(&self.master.aead()?, &data_key_aad(t), &*dk)?;
            self.file.tenants.insert(
                t.to_string(),
                TenantRecord {
                    data_key: wrapped,
                    credentials: BTreeMap::new(),
                },
            );
        }
        let key = self.data_key(t)?;
        let mut record = CredentialRecord {
            value: String::new(),
            bind,
            positions,
            expires,
            kind,
        };
        record.value = seal(&key, &value_aad(t, name, &record)?, value.expose())?;
        if let Some(tr) = self.file.tenants.get_mut(t) {
            tr.credentials.insert(name.to_string(), record);
        }
        Ok(())
    }

    /// Removes a credential; true if it existed.
    pub fn remove(&mut self, tenant: &TenantId, name: &str) -> bool {
        self.file
            .tenants
            .get_mut(tenant.as_str())
            .and_then(|t| t.credentials.remove(name))
            .is_some()
    }

    /// Lists a tenant's credentials (decrypting only to fingerprint them).
    pub fn list(&self, tenant: &TenantId) -> Result<Vec<Listing>, VaultError> {
        let Some(record) = self.file.tenants.get(tenant.as_str()) else {
            return Ok(vec![]);
        };
        let key = self.data_key(tenant.as_str())?;
        record
            .credentials
            .iter()
            .map(|(name, r)| {
                let value = open(
                    &key,
                    &value_aad(tenant.as_str(), name, r)?,
                    &r.value,
                    &format!("{tenant}/{name}"),
                )?;
                Ok(Listing {
                    name: name.clone(),
                    bind: r.bind.clone(),
                    positions: r.positions.clone(),
                    expires: r.expires,
                    fingerprint: SecretValue::new(value.to_vec()).fingerprint(),
                })
            })
            .collect()
    }

    /// Re-wraps every tenant's data key with `new` (values stay sealed with their data keys).
    pub fn rotate_master(&mut self, new: MasterKey) -> Result<(), VaultError> {
        let new_aead = new.aead()?;
        for (tenant, record) in self.file.tenants.iter_mut() {
            let dk = open(
                &self.master.aead()?,
                &data_key_aad(tenant),
                &record.data_key,
                &format!("{tenant} data key"),
            )?;
            record.data_key = seal(&new_aead, &data_key_aad(tenant), &dk)?;
        }
        self.file.master_key_id = new.id();
        self.master = new;
        Ok(())
    }

    /// Writes the vault whole or not at all ([`crate::whole_file::replace`]).
    pub fn save(&self) -> Result<(), VaultError> {
        let io = |source| VaultError::Io {
            path: self.path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(&self.file)
            .map_err(|e| VaultError::Invalid(e.to_string()))?;
        crate::whole_file::replace(&self.path, &bytes).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tid(s: &str) -> TenantId {
        TenantId::new(s).expect("id")
    }

    fn vault_with_two_tenants(dir: &Path) -> (PathBuf, Zeroizing<String>) {
        let (master, text) = MasterKey::generate().expect("key");
        let path = dir.join("vault.json");
        let mut v = Vault::open(&path, master).expect("open");
        let bind = vec![Binding::host("api.openai.com")];
        v.put(
            &tid("acme"),
            "openai",
            &SecretValue::new(b"sk-acme-1".to_vec()),
            bind.clone(),
            vec![Position::Header],
            None,
        )
        .expect("put");
        v.put(
            &tid("globex"),
            "openai",
            &SecretValue::new(b"sk-globex".to_vec()),
            bind,
            vec![Position::Header],
            None,
        )
        .expect("put");
        v.save().expect("save");
        (path, text)
    }

    #[test]
    fn round_trip_and_isolation() {
        let dir = tempfile::tempdir().expect("dir");
        let (path, key) = vault_with_two_tenants(dir.path());
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            !text.contains("sk-acme") && !text.contains("sk-globex"),
            "values are encrypted at rest"
        );
        let v = Vault::open(&path, MasterKey::from_base64(&key).expect("key")).expect("open");
        let set = v.decrypt_all().expect("decrypt");
        assert_eq!(
            set.get(&tid("acme"), "openai")
                .expect("acme")
                .value
                .expose(),
            b"sk-acme-1"
        );
        assert_eq!(
            set.get(&tid("globex"), "openai")
                .expect("globex")
                .value
                .expose(),
            b"sk-globex"
        );
        assert!(set.get(&tid("initech"), "openai").is_none());
        let listing = v.list(&tid("acme")).expect("list");
        assert_eq!(listing.len(), 1);
        assert!(!format!("{listing:?}").contains("sk-acme"));
    }

    #[test]
    fn tampering_and_wrong_keys_are_detected() {
        let dir = tempfile::tempdir().expect("dir");
        let (path, key) = vault_with_two_tenants(dir.path());
        let (other, _) = MasterKey::generate().expect("key");
        assert!(matches!(
            Vault::open(&path, other),
            Err(VaultError::WrongMasterKey { .. })
        ));

        // Move acme's sealed value to globex: globex's data key cannot open it.
        let mut file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        let acme_value = file["tenants"]["acme"]["credentials"]["openai"]["value"].clone();
        file["tenants"]["globex"]["credentials"]["openai"]["value"] = acme_value;
        std::fs::write(&path, file.to_string()).expect("write");
        let v = Vault::open(&path, MasterKey::from_base64(&key).expect("key")).expect("open");
        assert!(matches!(v.decrypt_all(), Err(VaultError::Tampered { .. })));

        // Rebind a credential by editing the file: its metadata is authenticated.
        let dir = tempfile::tempdir().expect("dir");
        let (path, key) = vault_with_two_tenants(dir.path());
        let text = std::fs::read_to_string(&path).expect("read").replacen(
            "api.openai.com",
            "attacker.example",
            1,
        );
        std::fs::write(&path, text).expect("write");
        let v = Vault::open(&path, MasterKey::from_base64(&key).expect("key")).expect("open");
        assert!(matches!(v.decrypt_all(), Err(VaultError::Tampered { .. })));
    }

    #[test]
    fn master_rotation_keeps_values() {
        let dir = tempfile::tempdir().expect("dir");
        let (path, key) = vault_with_two_tenants(dir.path());
        let mut v = Vault::open(&path, MasterKey::from_base64(&key).expect("key")).expect("open");
        let (new, new_text) = MasterKey::generate().expect("key");
        v.rotate_master(new).expect("rotate");
        v.save().expect("save");
        assert!(matches!(
            Vault::open(&path, MasterKey::from_base64(&key).expect("key")),
            Err(VaultError::WrongMasterKey { .. })
        ));
        let v = Vault::open(&path, MasterKey::from_base64(&new_text).expect("key")).expect("open");
        assert_eq!(
            v.decrypt_all()
                .expect("decrypt")
                .get(&tid("acme"), "openai")
                .expect("acme")
                .value
                .expose(),
            b"sk-acme-1"
        );
    }

    #[test]
    fn rejects_bad_input() {
        let dir = tempfile::tempdir().expect("dir");
        let (master, _) = MasterKey::generate().expect("key");
        let mut v = Vault::open(&dir.path().join("v.json"), master).expect("open");
        let s = SecretValue::new(b"x".to_vec());
        assert!(v
            .put(
                &tid("acme"),
                "bad name",
                &s,
                vec![Binding::host("a.example")],
                vec![Position::Header],
                None
            )
            .is_err());
        assert!(v
            .put(&tid("acme"), "ok", &s, vec![], vec![Position::Header], None)
            .is_err());
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
        std::fs::write(dir.path().join("garbage.json"), "{").expect("write");
        let (master, _) = MasterKey::generate().expect("key");
        assert!(matches!(
            Vault::open(&dir.path().join("garbage.json"), master),
            Err(VaultError::Format { .. })
        ));
    }
}
