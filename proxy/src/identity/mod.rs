//! Workload identity: who is calling, from a source the agent cannot forge.
//!
//! Each listener lists its identity sources in order. The first source that is present decides:
//! a presented but invalid credential is refused (it never falls through to a weaker source), and
//! when no source is present the request is refused with `identity_required`.

pub mod proxy_auth;
pub mod token;

use crate::config::{IdentitySourceKind, ListenerSettings};
use crate::error::Deny;
use crate::ids::{TenantId, WorkloadId};
use crate::snapshot::Snapshot;
use proxy_auth::{parse_proxy_authorization, ProxyCredential};
use token::VerifiedToken;

/// A verified identity.
#[derive(Debug)]
pub struct ResolvedIdentity {
    /// Tenant.
    pub tenant: TenantId,
    /// Workload.
    pub workload: WorkloadId,
    /// The source that produced it.
    pub source: IdentitySourceKind,
    /// The verified token, for token identities.
    pub token: Option<VerifiedToken>,
}

/// Resolves the caller's identity on `listener` from its `Proxy-Authorization` header.
pub fn resolve(
    listener: &ListenerSettings,
    snapshot: &Snapshot,
    proxy_authorization: Option<&[u8]>,
    now_unix: u64,
) -> Result<ResolvedIdentity, Deny> {
    for source in &listener.identity {
        match source {
            IdentitySourceKind::Binding => {
                let Some(b) = &listener.binding else { continue };
                // SECURITY: a reload may have removed the bound workload; refuse rather than
                // serve a workload the configuration no longer knows.
                if !snapshot.tenants.has_workload(&b.tenant, &b.workload) {
                    return Err(Deny::IdentityInvalid(
                        "this listener's workload is not in the configuration".into(),
                    ));
                }
                return Ok(ResolvedIdentity {
                    tenant: b.tenant.clone(),
                    workload: b.workload.clone(),
                    source: IdentitySourceKind::Binding,
                    token: None,
                });
            }
            IdentitySourceKind::Token => {
                let Some(value) = proxy_authorization else {
                    continue;
                };
                return resolve_token(snapshot, value, now_unix);
            }
        }
    }
    Err(Deny::IdentityRequired)
}

fn resolve_token(
    snapshot: &Snapshot,
    header: &[u8],
    now_unix: u64,
) -> Result<ResolvedIdentity, Deny> {
    let credential = parse_proxy_authorization(header).map_err(|_| {
        Deny::IdentityInvalid("`Proxy-Authorization` is not `Bearer <token>` or `Basic`".into())
    })?;
    let (token, username) = match &credential {
        ProxyCredential::Bearer(t) => (*t, None),
        ProxyCredential::Basic { username, password } => {
            (password.as_str(), Some(username.as_str()))
        }
    };
    // SECURITY: no verifier configured means no token can be valid.
    let verifier = snapshot
        .tokens
        .as_ref()
        .ok_or_else(|| Deny::IdentityInvalid("tokens are not accepted here".into()))?;
    let verified = verifier
        .verify(token, now_unix)
        .map_err(|e| Deny::IdentityInvalid(e.to_string()))?;
    if let Some(user) = username {
        if !user.is_empty() && user != verified.workload.as_str() {
            return Err(Deny::IdentityInvalid(
                "the proxy user name does not match the token's workload".into(),
            ));
        }
    }
    if !snapshot
        .tenants
        .has_workload(&verified.tenant, &verified.workload)
    {
        return Err(Deny::IdentityInvalid(
            "the token names a tenant or workload this proxy does not know".into(),
        ));
    }
    Ok(ResolvedIdentity {
        tenant: verified.tenant.clone(),
        workload: verified.workload.clone(),
        source: IdentitySourceKind::Token,
        token: Some(verified),
    })
}
