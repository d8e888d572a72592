//! Credentials: `$CRED{name}` handles resolved to per-tenant secrets, only toward the
//! destinations each secret is bound to.
//!
//! - [`handle`]: the handle syntax (strict, linear, total);
//! - [`vault`]: the embedded encrypted vault; [`files`]: mounted secret files (Kubernetes);
//! - [`positions`]: where requests carry credentials, per provider (written once);
//! - [`apply`]: finds handles in a request and substitutes them after every check passes, and
//!   refuses the agent's own keys ([`raw`]) toward destinations whose keys are managed;
//! - [`oauth`]: OAuth2 token credentials, their grants and the per-tenant token cache;
//! - [`scrub`]: replaces a secret echoed back in a response (raw, escaped or base64) with its
//!   handle; [`echoes`]: every secret a response from a host may echo, per tenant (current and
//!   lately retired values, access tokens), compiled once per tenant and host.

pub mod apply;
pub mod binding;
pub mod echoes;
pub mod files;
pub mod handle;
pub mod kind;
pub mod oauth;
pub mod positions;
mod raw;
pub mod scrub;
pub mod secret;
pub mod settings;
pub mod sigv4;
pub mod vault;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::ids::TenantId;
use binding::{Binding, Position};
use secret::SecretValue;
pub use settings::CredentialSource;

/// One tenant's secret with where it may go.
#[derive(Debug)]
pub struct Credential {
    /// Owning tenant.
    pub tenant: TenantId,
    /// Name (what `$CRED{name}` refers to).
    pub name: String,
    /// The value.
    pub value: SecretValue,
    /// Destinations it may be sent to.
    pub bindings: Vec<Binding>,
    /// Where in a request it may appear.
    pub positions: Vec<Position>,
    /// Expiry, unix seconds.
    pub expires_at: Option<u64>,
    /// How the value is used (substituted, or signing the request).
    pub kind: kind::Kind,
}

/// Every tenant's credentials, by tenant then name. Lookups are always scoped by the tenant of
/// the verified identity: there is no way to name another tenant's credential.
#[derive(Debug, Default)]
pub struct CredentialSet {
    tenants: HashMap<TenantId, HashMap<String, Arc<Credential>>>,
}

impl CredentialSet {
    /// The credential `name` of `tenant`.
    pub fn get(&self, tenant: &TenantId, name: &str) -> Option<&Arc<Credential>> {
        self.tenants.get(tenant)?.get(name)
    }

    /// The signing credentials of `tenant` (sorted by name): the ones an unsigned request may
    /// be signed with when its binding allows the destination.
    pub fn signing(&self, tenant: &TenantId) -> Vec<&Arc<Credential>> {
        let mut out: Vec<&Arc<Credential>> = self
            .tenants
            .get(tenant)
            .map(|c| {
                c.values()
                    .filter(|c| matches!(c.kind, kind::Kind::AwsSigv4(_)))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Whether any credential of `tenant` is bound to `host` (whatever the scheme, port and
    /// path): the tenant's keys are managed there, so a raw key from the agent is not accepted,
    /// and what comes back is scrubbed. Allocates nothing.
    pub fn any_bound_to_host(&self, tenant: &TenantId, host: &str) -> bool {
        self.tenants.get(tenant).is_some_and(|creds| {
            creds
                .values()
                .any(|c| c.bindings.iter().any(|b| b.matches_host(host)))
        })
    }

    /// Every credential of every tenant.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Credential>> {
        self.tenants.values().flat_map(HashMap::values)
    }

    /// Every credential of `tenant` bound to `host` (whatever the path): the secrets a response
    /// from there could echo. None means the tenant's keys are not managed there; any means
    /// they are, so a raw key from the agent is not accepted.
    pub fn bound_to_host(&self, tenant: &TenantId, host: &str) -> Vec<Arc<Credential>> {
        self.tenants
            .get(tenant)
            .map(|creds| {
                creds
                    .values()
                    .filter(|c| c.bindings.iter().any(|b| b.matches_host(host)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn insert_tenant(
        &mut self,
        tenant: TenantId,
        creds: HashMap<String, Arc<Credential>>,
    ) {
        self.tenants.insert(tenant, creds);
    }
}

/// A place tenants' secrets are read from. The proxy loads the whole set into its configuration
/// snapshot at start and on every reload, so lookups on the hot path never wait on a store.
/// Implement it to add a store (HashiCorp Vault, a cloud secret manager).
pub trait CredentialStore: Send + Sync + std::fmt::Debug {
    /// Reads every tenant's credentials; any unreadable or unauthenticated record fails the load.
    fn load(&self) -> Result<CredentialSet, StoreError>;
    /// Files or directories whose change should trigger a reload.
    fn watched_paths(&self) -> Vec<PathBuf>;
}

/// Why a store could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    /// The file or directory at fault.
    pub path: PathBuf,
    /// What went wrong (never a secret).
    pub message: String,
}

/// Whether `name` is a valid credential name (the handle grammar).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= handle::MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}
