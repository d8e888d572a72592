//! Mounted secret files: `DIR/<tenant>/<name>` holds the value (the shape of a Kubernetes Secret
//! mounted into a sidecar, one Secret per tenant). Bindings and positions come from the tenant
//! configuration, since a mounted Secret carries only values.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::binding::{Binding, Position};
use super::kind::{Kind, KindName};
use super::secret::SecretValue;
use super::{valid_name, Credential, CredentialSet, CredentialStore, StoreError};
use crate::ids::TenantId;

/// A credential declared for the files backend.
#[derive(Debug, Clone)]
pub struct FileCredential {
    /// Tenant.
    pub tenant: TenantId,
    /// Name (also the file name).
    pub name: String,
    /// Bindings.
    pub bind: Vec<Binding>,
    /// Positions.
    pub positions: Vec<Position>,
    /// Expiry.
    pub expires: Option<u64>,
    /// What the value is.
    pub kind: KindName,
}

/// Mounted files as a [`CredentialStore`].
#[derive(Debug, Clone)]
pub struct FilesStore {
    /// Root directory (`DIR/<tenant>/<name>`).
    pub dir: PathBuf,
    /// Declared credentials with their bindings.
    pub declared: Vec<FileCredential>,
}

impl CredentialStore for FilesStore {
    fn load(&self) -> Result<CredentialSet, StoreError> {
        load(&self.dir, &self.declared).map_err(|message| StoreError {
            path: self.dir.clone(),
            message,
        })
    }

    fn watched_paths(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }
}

/// The file that holds the value of `credential`: `DIR/<tenant>/<name>`.
pub fn value_path(dir: &Path, credential: &FileCredential) -> PathBuf {
    dir.join(credential.tenant.as_str()).join(&credential.name)
}

/// Reads every declared credential's value from `dir`. A trailing newline is removed.
pub fn load(dir: &Path, declared: &[FileCredential]) -> Result<CredentialSet, String> {
    let mut by_tenant: HashMap<TenantId, HashMap<String, Arc<Credential>>> = HashMap::new();
    for d in declared {
        if !valid_name(&d.name) {
            return Err(format!("`{}` is not a credential name", d.name));
        }
        let path = value_path(dir, d);
        let mut value =
            crate::whole_file::read(&path).map_err(|e| format!("`{}`: {e}", path.display()))?;
        while value.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            value.pop();
        }
        if value.is_empty() {
            return Err(format!("`{}` is empty", path.display()));
        }
        let value = SecretValue::new(value);
        let kind = Kind::parse(d.kind, &value).map_err(|e| format!("`{}`: {e}", path.display()))?;
        let cred = Credential {
            tenant: d.tenant.clone(),
            name: d.name.clone(),
            value,
            bindings: d.bind.clone(),
            positions: d.positions.clone(),
            expires_at: d.expires,
            kind,
        };
        by_tenant
            .entry(d.tenant.clone())
            .or_default()
            .insert(d.name.clone(), Arc::new(cred));
    }
    let mut set = CredentialSet::default();
    for (t, creds) in by_tenant {
        set.insert_tenant(t, creds);
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_values_per_tenant() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir_all(dir.path().join("acme")).expect("mkdir");
        std::fs::write(dir.path().join("acme/openai"), "sk-acme-1\n").expect("write");
        let decl = FileCredential {
            tenant: TenantId::new("acme").expect("id"),
            name: "openai".into(),
            bind: vec![Binding::host("api.openai.com")],
            positions: vec![Position::Header],
            expires: None,
            kind: KindName::Static,
        };
        let set = load(dir.path(), std::slice::from_ref(&decl)).expect("load");
        assert_eq!(
            set.get(&decl.tenant, "openai")
                .expect("cred")
                .value
                .expose(),
            b"sk-acme-1"
        );
        let missing = FileCredential {
            name: "other".into(),
            ..decl
        };
        assert!(load(dir.path(), &[missing]).is_err());
    }
}
