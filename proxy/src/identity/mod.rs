//! Workload identity: who is calling, from a source the agent cannot forge.
//!
//! Each listener lists its identity sources in order. The first source that is present decides:
//! a presented but invalid credential is refused (it never falls through to a weaker source), and
//! when no source is present the request is refused with `identity_required`.

pub mod mtls;
pub mod proxy_auth;
pub mod token;

use crate::config::{IdentitySourceKind, ListenerSettings};
use crate::error::Deny;
use crate::ids::{TenantId, WorkloadId};
use crate::snapshot::Snapshot;
use proxy_auth::{parse_proxy_authorization, ProxyCredential};
use token::VerifiedToken;

/// What the mTLS handshake learned about the client, kept on the connection for every request
/// on it. A certificate that verified but maps to no workload is kept as the refusal reason, so
/// requests get `identity_invalid` rather than a bare TLS error.
#[derive(Debug)]
pub struct PeerCertificate(pub Result<mtls::PeerIdentity, String>);

/// Identity material presented with a request or its connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Presented<'a> {
    /// The `Proxy-Authorization` header value.
    pub proxy_authorization: Option<&'a [u8]>,
    /// The request carries more than one `Proxy-Authorization` header.
    pub proxy_authorization_repeated: bool,
    /// The client certificate's identity, on mTLS listeners.
    pub peer: Option<&'a PeerCertificate>,
}

impl<'a> Presented<'a> {
    /// What a request presents: its `Proxy-Authorization` header and, on a TLS connection, the
    /// client certificate's identity read at the handshake.
    pub fn from_request(
        headers: &'a http::HeaderMap,
        ssl: Option<&'a pingora::protocols::tls::SslDigest>,
    ) -> Self {
        let mut values = headers.get_all(http::header::PROXY_AUTHORIZATION).iter();
        Self {
            proxy_authorization: values.next().map(|v| v.as_bytes()),
            proxy_authorization_repeated: values.next().is_some(),
            peer: ssl.and_then(|d| d.extension.get::<PeerCertificate>()),
        }
    }
}

/// A verified identity.
#[derive(Debug, Clone)]
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

/// Resolves the caller's identity on `listener` from what it presented.
pub fn resolve(
    listener: &ListenerSettings,
    snapshot: &Snapshot,
    presented: Presented<'_>,
    now_unix: u64,
) -> Result<ResolvedIdentity, Deny> {
    // SECURITY: two `Proxy-Authorization` headers are two identities; picking one (the first,
    // say) would let whatever sits in front of the proxy and the proxy disagree about who is
    // calling. Refused on every listener, whatever its sources.
    if presented.proxy_authorization_repeated {
        return Err(Deny::IdentityInvalid(
            "more than one `Proxy-Authorization` header".into(),
        ));
    }
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
                let Some(value) = presented.proxy_authorization else {
                    continue;
                };
                return resolve_token(snapshot, value, now_unix);
            }
            IdentitySourceKind::Mtls => {
                let Some(PeerCertificate(peer)) = presented.peer else {
                    continue;
                };
                let peer = peer
                    .as_ref()
                    .map_err(|why| Deny::IdentityInvalid(why.clone()))?;
                if !snapshot.tenants.has_workload(&peer.tenant, &peer.workload) {
                    return Err(Deny::IdentityInvalid(
                        "the client certificate names a tenant or workload this proxy does not know"
                            .into(),
                    ));
                }
                return Ok(ResolvedIdentity {
                    tenant: peer.tenant.clone(),
                    workload: peer.workload.clone(),
                    source: IdentitySourceKind::Mtls,
                    token: None,
                });
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_proxy_authorization_is_seen() {
        let mut headers = http::HeaderMap::new();
        assert!(Presented::from_request(&headers, None)
            .proxy_authorization
            .is_none());
        headers.append(
            http::header::PROXY_AUTHORIZATION,
            http::HeaderValue::from_static("Bearer first"),
        );
        let one = Presented::from_request(&headers, None);
        assert_eq!(one.proxy_authorization, Some(&b"Bearer first"[..]));
        assert!(!one.proxy_authorization_repeated);
        headers.append(
            http::header::PROXY_AUTHORIZATION,
            http::HeaderValue::from_static("Bearer second"),
        );
        assert!(Presented::from_request(&headers, None).proxy_authorization_repeated);
    }
}
