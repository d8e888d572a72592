//! Workload identity: who is calling, from a source the agent cannot forge.
//!
//! Each listener lists its identity sources in order. The first source that is present decides:
//! a presented but invalid credential is refused (it never falls through to a weaker source), and
//! when no source is present the request is refused with `identity_required`.

pub mod listener;
pub mod mtls;
pub mod proxy_auth;
pub mod token;

use crate::ids::{TenantId, WorkloadId};
pub use listener::{ListenerKind, ListenerSettings, ListenerTls};
use proxy_auth::{parse_proxy_authorization, ProxyCredential};
use token::{TokenVerifier, VerifiedToken};

/// How a listener learns who is calling (`[[listener]] identity`, in the configuration's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySourceKind {
    /// The listener itself is bound to one workload (sidecar).
    Binding,
    /// A signed token in `Proxy-Authorization`.
    Token,
    /// The SPIFFE ID of a verified client certificate.
    Mtls,
}

impl IdentitySourceKind {
    /// The name audit records and logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentitySourceKind::Binding => "listener",
            IdentitySourceKind::Token => "token",
            IdentitySourceKind::Mtls => "mtls",
        }
    }
}

/// A listener's fixed workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerBinding {
    /// Tenant.
    pub tenant: TenantId,
    /// Workload.
    pub workload: WorkloadId,
}

/// How one listener identifies its callers: its sources in the order they are tried, and the
/// workload it is bound to (for `binding`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerIdentity {
    /// Identity sources, in order.
    pub sources: Vec<IdentitySourceKind>,
    /// The one workload every connection is, for `binding` listeners.
    pub binding: Option<ListenerBinding>,
}

/// Which tenants and workloads the configuration knows (a reload may remove one).
pub trait Workloads {
    /// Whether `tenant` exists and has `workload`.
    fn has_workload(&self, tenant: &TenantId, workload: &WorkloadId) -> bool;
}

/// Why no identity was resolved. Never carries a token or any part of one (a revoked token's
/// verified claims at most).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// No identity source on this listener produced an identity.
    #[error("no identity presented")]
    Required,
    /// An identity was presented but is not valid (the detail says why).
    #[error("{0}")]
    Invalid(String),
    /// A valid token whose id is revoked, with the identity it would have given: the refusal is
    /// audited in that tenant's partition. Never served.
    #[error("the token has been revoked")]
    Revoked(Box<ResolvedIdentity>),
    /// A credential that proved an identity but is refused: the client certificate that proved
    /// this connection's identity has expired since, or is no longer trusted (it was the CA's
    /// word, not the agent's); a genuine token presented with another proxy user name than its
    /// workload. The refusal is audited in that tenant's partition. Never served.
    #[error("{why}")]
    Lapsed {
        /// The identity the credential proved.
        who: Box<ResolvedIdentity>,
        /// Why it no longer does.
        why: String,
    },
}

impl IdentityError {
    /// The identity a refused credential proved (a revoked token, a lapsed certificate), in whose
    /// tenant's partition the refusal is audited; none for a credential that proved nothing.
    pub fn proven(self) -> Option<ResolvedIdentity> {
        match self {
            IdentityError::Revoked(who) | IdentityError::Lapsed { who, .. } => Some(*who),
            _ => None,
        }
    }
}

pub use mtls::PeerCertificate;

/// Identity material presented with a request or its connection.
#[derive(Clone, Copy, Default)]
pub struct Presented<'a> {
    /// The `Proxy-Authorization` header value.
    pub proxy_authorization: Option<&'a [u8]>,
    /// The request carries more than one `Proxy-Authorization` header.
    pub proxy_authorization_repeated: bool,
    /// The client certificate's identity, on mTLS listeners.
    pub peer: Option<&'a PeerCertificate>,
}

impl std::fmt::Debug for Presented<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The header holds a whole token (a credential): its presence only.
        f.debug_struct("Presented")
            .field(
                "proxy_authorization",
                &self.proxy_authorization.map(|_| "<redacted>"),
            )
            .field(
                "proxy_authorization_repeated",
                &self.proxy_authorization_repeated,
            )
            .field("peer", &self.peer)
            .finish()
    }
}

impl<'a> Presented<'a> {
    /// What a request presents: its `Proxy-Authorization` header and, on a TLS connection, the
    /// client certificate's identity read at the handshake.
    pub fn from_request(
        headers: &'a http::HeaderMap,
        ssl: Option<&'a pingora::protocols::tls::SslDigest>,
    ) -> Self {
        let (proxy_authorization, proxy_authorization_repeated) =
            match sole_header(headers, http::header::PROXY_AUTHORIZATION) {
                Ok(value) => (value.map(|v| v.as_bytes()), false),
                Err(RepeatedHeader) => (None, true),
            };
        Self {
            proxy_authorization,
            proxy_authorization_repeated,
            peer: ssl.and_then(|d| d.extension.get::<PeerCertificate>()),
        }
    }
}

/// A header that carries an identity was given more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepeatedHeader;

/// The one value of header `name`, if any; a header given twice is [`RepeatedHeader`].
///
/// SECURITY: the rule for every header that carries an identity (`Proxy-Authorization` on the
/// proxy listeners, `Authorization` on the approvals API): two values are two identities, and
/// picking one (the first, say) would let whatever sits in front of the proxy and the proxy
/// disagree about who is calling. The caller refuses the request.
pub fn sole_header(
    headers: &http::HeaderMap,
    name: impl http::header::AsHeaderName,
) -> Result<Option<&http::HeaderValue>, RepeatedHeader> {
    crate::header_names::sole(headers, name).map_err(|_| RepeatedHeader)
}

/// The token of an `Authorization`-style header value in the `Bearer` scheme (RFC 6750); none
/// for another scheme or an empty token. The scheme is matched in any case (RFC 9110 §11.1:
/// `bearer`, `BEARER` are `Bearer`), as the proxy listeners match `Proxy-Authorization`'s: every
/// listener that reads a bearer token (the admin port, the approvals API) reads it here.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A verified identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedIdentity {
    /// Tenant.
    pub tenant: TenantId,
    /// Workload.
    pub workload: WorkloadId,
    /// The source that produced it.
    pub source: IdentitySourceKind,
    /// The verified token, for token identities.
    pub token: Option<VerifiedToken>,
    /// The client certificate, for mTLS identities.
    pub certificate: Option<PeerCertificate>,
}

/// Resolves the caller's identity on a listener from what it presented. The first source that
/// is present decides: a presented but invalid credential is refused and never falls through to
/// a weaker source; when none is present the answer is [`IdentityError::Required`].
pub fn resolve(
    listener: &ListenerIdentity,
    workloads: &dyn Workloads,
    tokens: Option<&TokenVerifier>,
    presented: Presented<'_>,
    now_unix: u64,
) -> Result<ResolvedIdentity, IdentityError> {
    let invalid = |why: &str| IdentityError::Invalid(why.to_string());
    // SECURITY: two `Proxy-Authorization` headers are two identities; picking one (the first,
    // say) would let whatever sits in front of the proxy and the proxy disagree about who is
    // calling. Refused on every listener, whatever its sources.
    if presented.proxy_authorization_repeated {
        return Err(invalid("more than one `Proxy-Authorization` header"));
    }
    for source in &listener.sources {
        match source {
            IdentitySourceKind::Binding => {
                let Some(b) = &listener.binding else { continue };
                // SECURITY: a reload may have removed the bound workload; refuse rather than
                // serve a workload the configuration no longer knows.
                if !workloads.has_workload(&b.tenant, &b.workload) {
                    return Err(invalid(
                        "this listener's workload is not in the configuration",
                    ));
                }
                return Ok(ResolvedIdentity {
                    tenant: b.tenant.clone(),
                    workload: b.workload.clone(),
                    source: IdentitySourceKind::Binding,
                    token: None,
                    certificate: None,
                });
            }
            IdentitySourceKind::Token => {
                let Some(value) = presented.proxy_authorization else {
                    continue;
                };
                return resolve_token(workloads, tokens, value, now_unix);
            }
            IdentitySourceKind::Mtls => {
                let Some(certificate) = presented.peer else {
                    continue;
                };
                let peer = certificate.identity().map_err(invalid)?;
                if !workloads.has_workload(&peer.tenant, &peer.workload) {
                    return Err(invalid(
                        "the client certificate names a tenant or workload this proxy does not know",
                    ));
                }
                let who = ResolvedIdentity {
                    tenant: peer.tenant.clone(),
                    workload: peer.workload.clone(),
                    source: IdentitySourceKind::Mtls,
                    token: None,
                    certificate: Some(certificate.clone()),
                };
                return match certificate.still_valid(now_unix) {
                    Ok(()) => Ok(who),
                    Err(why) => Err(IdentityError::Lapsed {
                        who: Box::new(who),
                        why,
                    }),
                };
            }
        }
    }
    Err(IdentityError::Required)
}

/// Judges `who`, resolved earlier (the identity a tunnel was opened with), as a fresh request
/// presenting the same credential would be judged now: its workload is still configured, and
/// its token, if any, still passes the current key set, settings and revocation list (see
/// [`TokenVerifier::recheck`]; no signature is verified again). The errors are those of
/// [`resolve`]: a revoked token is [`IdentityError::Revoked`], the rest
/// [`IdentityError::Invalid`].
pub fn recheck(
    who: &ResolvedIdentity,
    workloads: &dyn Workloads,
    tokens: Option<&TokenVerifier>,
    now_unix: u64,
) -> Result<(), IdentityError> {
    let invalid = |why: &str| IdentityError::Invalid(why.to_string());
    let mut revoked = false;
    if let Some(token) = &who.token {
        // SECURITY: `[token]` removed since: no token can be valid.
        let verifier = tokens.ok_or_else(|| invalid("tokens are not accepted here"))?;
        match verifier.recheck(token, now_unix) {
            Ok(()) => {}
            Err(token::TokenError::Revoked(_)) => revoked = true,
            Err(e) => return Err(IdentityError::Invalid(e.to_string())),
        }
    }
    if let Some(certificate) = &who.certificate {
        certificate
            .still_valid(now_unix)
            .map_err(IdentityError::Invalid)?;
    }
    if !workloads.has_workload(&who.tenant, &who.workload) {
        return Err(invalid(
            "the tenant or workload is no longer in the configuration",
        ));
    }
    if revoked {
        return Err(IdentityError::Revoked(Box::new(who.clone())));
    }
    Ok(())
}

fn resolve_token(
    workloads: &dyn Workloads,
    tokens: Option<&TokenVerifier>,
    header: &[u8],
    now_unix: u64,
) -> Result<ResolvedIdentity, IdentityError> {
    let invalid = |why: &str| IdentityError::Invalid(why.to_string());
    // The parser's reasons name the header's shape, never its content.
    let credential =
        parse_proxy_authorization(header).map_err(|e| IdentityError::Invalid(e.to_string()))?;
    let (token, username) = match &credential {
        ProxyCredential::Bearer(t) => (*t, None),
        ProxyCredential::Basic { username, password } => {
            (password.as_str(), Some(username.as_str()))
        }
    };
    // SECURITY: no verifier configured means no token can be valid.
    let verifier = tokens.ok_or_else(|| invalid("tokens are not accepted here"))?;
    let (verified, revoked) = match verifier.verify(token, now_unix) {
        Ok(verified) => (verified, false),
        Err(crate::identity::token::TokenError::Revoked(verified)) => (*verified, true),
        Err(e) => return Err(IdentityError::Invalid(e.to_string())),
    };
    if !workloads.has_workload(&verified.tenant, &verified.workload) {
        return Err(invalid(
            "the token names a tenant or workload this proxy does not know",
        ));
    }
    let who = ResolvedIdentity {
        tenant: verified.tenant.clone(),
        workload: verified.workload.clone(),
        source: IdentitySourceKind::Token,
        token: Some(verified),
        certificate: None,
    };
    // SECURITY: a genuine token is refused in its tenant's partition, whatever else is wrong
    // with how it is presented: a revoked token's holder must not escape the record by picking
    // another proxy user name.
    if revoked {
        return Err(IdentityError::Revoked(Box::new(who)));
    }
    if let Some(user) = username {
        if !user.is_empty() && user != who.workload.as_str() {
            return Err(IdentityError::Lapsed {
                who: Box::new(who),
                why: "the proxy user name does not match the token's workload".into(),
            });
        }
    }
    Ok(who)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn presented_material_prints_without_the_token() {
        let mut headers = http::HeaderMap::new();
        headers.append(
            http::header::PROXY_AUTHORIZATION,
            http::HeaderValue::from_static("Bearer tok-secret-7"),
        );
        let printed = format!("{:?}", Presented::from_request(&headers, None));
        assert!(!printed.contains("tok-secret-7"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
    }

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

    #[test]
    fn sole_header_refuses_a_second_value_whatever_it_is() {
        use http::header::AUTHORIZATION;
        let with = |values: &[&'static str]| {
            let mut headers = http::HeaderMap::new();
            for v in values {
                headers.append(AUTHORIZATION, http::HeaderValue::from_static(v));
            }
            headers
        };
        for (name, values, want) in [
            ("none", vec![], Ok(None)),
            ("one", vec!["Bearer a"], Ok(Some("Bearer a"))),
            (
                "two tokens",
                vec!["Bearer a", "Bearer b"],
                Err(RepeatedHeader),
            ),
            (
                "the same twice",
                vec!["Bearer a", "Bearer a"],
                Err(RepeatedHeader),
            ),
            (
                "then garbage",
                vec!["Bearer a", "garbage"],
                Err(RepeatedHeader),
            ),
            (
                "garbage first",
                vec!["garbage", "Bearer a"],
                Err(RepeatedHeader),
            ),
            ("an empty second", vec!["Bearer a", ""], Err(RepeatedHeader)),
        ] {
            let headers = with(&values);
            let got = sole_header(&headers, AUTHORIZATION)
                .map(|v| v.map(|v| v.to_str().unwrap_or("<binary>")));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        for (name, value, want) in [
            ("canonical", "Bearer abc", Some("abc")),
            ("lower", "bearer abc", Some("abc")),
            ("upper", "BEARER abc", Some("abc")),
            ("mixed, spaces around", "  bEaReR   abc  ", Some("abc")),
            ("a tab", "Bearer\tabc", Some("abc")),
            ("no token", "Bearer", None),
            ("an empty token", "Bearer   ", None),
            ("another scheme", "Basic abc", None),
            ("a prefix of the scheme", "Bear abc", None),
            ("no scheme", "abc", None),
        ] {
            assert_eq!(bearer_token(value), want, "{name}");
        }
    }

    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use token::{mint, KeySet, MintRequest, TokenSettings};

    const NOW: u64 = 1_800_000_000;

    /// acme/bot and globex/agent exist; nothing else does.
    struct Known;
    impl Workloads for Known {
        fn has_workload(&self, tenant: &TenantId, workload: &WorkloadId) -> bool {
            matches!(
                (tenant.as_str(), workload.as_str()),
                ("acme", "bot") | ("globex", "agent")
            )
        }
    }

    fn testdata(name: &str) -> String {
        let path = format!(
            "{}/src/identity/testdata/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap()
    }

    fn verifier() -> TokenVerifier {
        let settings = TokenSettings {
            audience: "tenant-proxy".into(),
            issuer: None,
            max_lifetime: Duration::from_secs(3600),
            leeway: Duration::from_secs(5),
        };
        let keys = KeySet::from_jwks_json(&testdata("test-jwks.json")).unwrap();
        TokenVerifier::new(settings, keys, HashSet::new())
    }

    fn bearer(tenant: &str, workload: &str) -> String {
        let token = mint(
            &testdata("ed25519-test.pem"),
            &MintRequest {
                tenant: TenantId::new(tenant).unwrap(),
                workload: WorkloadId::new(workload).unwrap(),
                audience: "tenant-proxy".into(),
                issuer: None,
                ttl: Duration::from_secs(300),
                run_id: None,
                run_budget: None,
                scopes: Vec::new(),
                jti: None,
                kid: Some("test-ed".into()),
                now_unix: NOW,
                not_before: None,
            },
        )
        .unwrap();
        format!("Bearer {token}")
    }

    fn listener(sources: &[IdentitySourceKind], bound: Option<(&str, &str)>) -> ListenerIdentity {
        ListenerIdentity {
            sources: sources.to_vec(),
            binding: bound.map(|(t, w)| ListenerBinding {
                tenant: TenantId::new(t).unwrap(),
                workload: WorkloadId::new(w).unwrap(),
            }),
        }
    }

    fn peer(tenant: &str, workload: &str) -> PeerCertificate {
        PeerCertificate::assumed(mtls::PeerIdentity {
            spiffe_id: format!("spiffe://t/tenant/{tenant}/workload/{workload}"),
            tenant: TenantId::new(tenant).unwrap(),
            workload: WorkloadId::new(workload).unwrap(),
        })
    }

    /// Who `presented` is on `l`: `tenant/workload (source)`, or the error.
    fn who(l: &ListenerIdentity, presented: Presented<'_>) -> Result<String, IdentityError> {
        let v = verifier();
        resolve(l, &Known, Some(&v), presented, NOW)
            .map(|r| format!("{}/{} ({})", r.tenant, r.workload, r.source.as_str()))
    }

    #[test]
    fn the_first_source_present_decides_and_never_falls_through() {
        use IdentitySourceKind::*;
        let globex = bearer("globex", "agent");
        let ghost = bearer("acme", "ghost");
        let cert = peer("globex", "agent");
        fn with(auth: Option<&str>) -> Presented<'_> {
            Presented {
                proxy_authorization: auth.map(str::as_bytes),
                ..Default::default()
            }
        }
        let (globex, ghost) = (globex.as_str(), ghost.as_str());
        let cases: Vec<(
            &str,
            ListenerIdentity,
            Presented<'_>,
            Result<&str, IdentityError>,
        )> = vec![
            (
                "binding alone",
                listener(&[Binding], Some(("acme", "bot"))),
                with(None),
                Ok("acme/bot (listener)"),
            ),
            // SECURITY: a token on a binding-only listener is ignored, never a second identity.
            (
                "binding ignores a token",
                listener(&[Binding], Some(("acme", "bot"))),
                with(Some(globex)),
                Ok("acme/bot (listener)"),
            ),
            (
                "token first",
                listener(&[Token, Binding], Some(("acme", "bot"))),
                with(Some(globex)),
                Ok("globex/agent (token)"),
            ),
            (
                "no token: next source",
                listener(&[Token, Binding], Some(("acme", "bot"))),
                with(None),
                Ok("acme/bot (listener)"),
            ),
            // An invalid token never falls through to the weaker binding.
            (
                "bad token does not fall through",
                listener(&[Token, Binding], Some(("acme", "bot"))),
                with(Some("Bearer x.y.z")),
                Err(IdentityError::Invalid(String::new())),
            ),
            (
                "unknown workload in a token",
                listener(&[Token], None),
                with(Some(ghost)),
                Err(IdentityError::Invalid(String::new())),
            ),
            (
                "nothing presented",
                listener(&[Token], None),
                with(None),
                Err(IdentityError::Required),
            ),
            (
                "binding to a removed workload",
                listener(&[Binding], Some(("acme", "ghost"))),
                with(None),
                Err(IdentityError::Invalid(String::new())),
            ),
            (
                "mtls",
                listener(&[Mtls], None),
                Presented {
                    peer: Some(&cert),
                    ..Default::default()
                },
                Ok("globex/agent (mtls)"),
            ),
            (
                "mtls before token",
                listener(&[Mtls, Token], None),
                Presented {
                    peer: Some(&cert),
                    proxy_authorization: Some(ghost.as_bytes()),
                    ..Default::default()
                },
                Ok("globex/agent (mtls)"),
            ),
            (
                "repeated proxy-authorization",
                listener(&[Binding], Some(("acme", "bot"))),
                Presented {
                    proxy_authorization_repeated: true,
                    ..Default::default()
                },
                Err(IdentityError::Invalid(String::new())),
            ),
        ];
        for (name, l, presented, want) in cases {
            let got = who(&l, presented);
            match (&got, &want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{name}"),
                (Err(IdentityError::Invalid(_)), Err(IdentityError::Invalid(_))) => {}
                (Err(g), Err(w)) => assert_eq!(g, w, "{name}"),
                _ => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn no_verifier_means_no_token_is_valid() {
        let token = bearer("globex", "agent");
        let got = resolve(
            &listener(&[IdentitySourceKind::Token], None),
            &Known,
            None,
            Presented {
                proxy_authorization: Some(token.as_bytes()),
                ..Default::default()
            },
            NOW,
        );
        assert!(matches!(got, Err(IdentityError::Invalid(_))), "{got:?}");
    }

    /// A bundle that verifies every chain until it is replaced by one that verifies none.
    #[derive(Default)]
    struct Bundle {
        replaced: AtomicBool,
    }

    impl mtls::ClientTrust for Bundle {
        fn generation(&self) -> u64 {
            u64::from(self.replaced.load(Ordering::Relaxed))
        }
        fn verify(
            &self,
            _: &[rustls::pki_types::CertificateDer<'static>],
            _: u64,
        ) -> (u64, Result<(), String>) {
            (self.generation(), Err("UnknownIssuer".into()))
        }
    }

    #[test]
    fn an_mtls_identity_is_judged_again_with_its_certificate() {
        let bundle = Arc::new(Bundle::default());
        let trust: Arc<dyn mtls::ClientTrust> = bundle.clone();
        let identity = mtls::PeerIdentity {
            spiffe_id: "spiffe://t/tenant/acme/workload/bot".into(),
            tenant: TenantId::new("acme").unwrap(),
            workload: WorkloadId::new("bot").unwrap(),
        };
        let certificate = PeerCertificate::assumed_under(identity, trust, 0);
        let presented = Presented {
            peer: Some(&certificate),
            ..Default::default()
        };
        let l = listener(&[IdentitySourceKind::Mtls], None);
        let who = resolve(&l, &Known, None, presented, NOW).unwrap();
        assert_eq!(who.certificate.as_ref(), Some(&certificate));
        assert_eq!(recheck(&who, &Known, None, NOW), Ok(()));

        // The bundle is replaced by one that does not verify it: a tunnel opened with it, and
        // a new request on its connection, are refused.
        bundle.replaced.store(true, Ordering::Relaxed);
        let got = recheck(&who, &Known, None, NOW);
        assert!(
            matches!(&got, Err(IdentityError::Invalid(why)) if why.contains("no longer trusted")),
            "{got:?}"
        );
        // On the connection, the refusal keeps the identity the certificate proved, so that
        // it is audited in that tenant's partition.
        match resolve(&l, &Known, None, presented, NOW) {
            Err(IdentityError::Lapsed { who: lapsed, why }) => {
                assert_eq!(*lapsed, who);
                assert!(why.contains("no longer trusted"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }
}
