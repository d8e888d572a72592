//! mTLS listener: the caller proves who it is with a client certificate (an X509-SVID).
//!
//! Two checks in two places, both required. The handshake ([`MtlsServer`]) proves the
//! certificate chains to the configured client trust bundle and is in date; [`identify`] then
//! reads the certificate's one SPIFFE ID and maps it to a tenant and workload through a
//! [`SpiffePattern`]. A certificate that a trusted CA issued for another trust domain passes the
//! handshake but not `identify`: the bundle says who may connect, the trust domain says whose
//! names this proxy believes.
//!
//! Both hold for the life of the connection only while they stay true: every request on it (and
//! in a tunnel opened on it) asks [`PeerCertificate::still_valid`], which refuses a chain that
//! has expired since the handshake, or that the trust bundle, replaced since, no longer
//! verifies. An X509-SVID lives an hour; a keep-alive connection must not make it live longer.
//!
//! SPIFFE IDs are parsed strictly (SPIFFE ID spec): what a lenient URI parser would normalise
//! (percent-encoding, dot segments, case, ports, user info) is refused, because two spellings of
//! one identity would become two identities for policy, limits and audit.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{bail, Context as _};
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use x509_parser::extensions::GeneralName;

use crate::ids::{InvalidId, TenantId, WorkloadId};
use crate::tls::pem::{read_certs, read_file, read_key};

/// Longest SPIFFE ID accepted, in bytes: the spec's interoperability bound.
const MAX_ID_LEN: usize = 2048;

/// Longest trust domain accepted, in bytes (a DNS name's bound, as the spec recommends).
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// The one protocol this listener speaks; advertised so clients do not try h2.
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Editors and secret rotators replace files in bursts; one reload per burst.
const DEBOUNCE: Duration = Duration::from_millis(250);

// ---------------------------------------------------------------------------------------------
// Errors

/// Why a peer certificate does not give an identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    /// The peer presented no certificate.
    #[error("no client certificate was presented")]
    NoCertificate,
    /// The leaf certificate cannot be parsed.
    #[error("the client certificate cannot be parsed: {0}")]
    BadCertificate(String),
    /// The leaf has no SPIFFE URI SAN.
    #[error("the client certificate has no SPIFFE ID")]
    NoSpiffeId,
    /// The leaf has more than one SPIFFE URI SAN, which the X509-SVID spec forbids.
    #[error("the client certificate has more than one SPIFFE ID")]
    MultipleIds,
    /// The leaf has a URI SAN besides its SPIFFE ID; an X509-SVID holds exactly one URI SAN.
    #[error("the client certificate has more than one URI name: an X509-SVID holds exactly one, its SPIFFE ID")]
    ExtraUri,
    /// The SPIFFE ID breaks the SPIFFE ID syntax.
    #[error("the SPIFFE ID is malformed: {0}")]
    Malformed(&'static str),
    /// The SPIFFE ID is well formed but from a trust domain this proxy does not serve.
    #[error("the SPIFFE ID is in trust domain `{found}`, which this listener does not accept")]
    WrongTrustDomain {
        /// The trust domain the ID names.
        found: String,
    },
    /// The SPIFFE ID's path does not have the configured shape.
    #[error("the SPIFFE ID does not match the configured pattern")]
    NoMatch,
    /// The tenant segment is not a valid tenant id.
    #[error("the SPIFFE ID names an invalid tenant: {0}")]
    InvalidTenant(InvalidId),
    /// The workload segment is not a valid workload id.
    #[error("the SPIFFE ID names an invalid workload: {0}")]
    InvalidWorkload(InvalidId),
}

// ---------------------------------------------------------------------------------------------
// SPIFFE ID syntax

/// SPIFFE trust domains allow only lowercase letters, digits, `.`, `-` and `_`.
fn check_trust_domain(td: &str) -> Result<(), &'static str> {
    if td.is_empty() {
        return Err("the trust domain is empty");
    }
    if td.contains('@') {
        return Err("user info is not allowed");
    }
    if td.contains(':') {
        return Err("a port is not allowed");
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err("the trust domain is longer than 255 bytes");
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("the trust domain may only use a-z, 0-9, `.`, `-` and `_`");
    }
    Ok(())
}

/// SPIFFE path segments are non-empty, not `.` or `..`, and use `[A-Za-z0-9._-]`.
fn check_segment(seg: &str) -> Result<(), &'static str> {
    if seg.is_empty() {
        return Err("a path segment is empty");
    }
    if seg == "." || seg == ".." {
        return Err("dot segments are not allowed");
    }
    if !seg
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("path segments may only use A-Z, a-z, 0-9, `.`, `-` and `_`");
    }
    Ok(())
}

/// Splits a SPIFFE ID into its trust domain and path segments, refusing anything the spec
/// refuses. The checks for `?`, `#` and `%` come first so the reason names the real problem.
fn parse_id(id: &str) -> Result<(&str, Vec<&str>), &'static str> {
    if id.len() > MAX_ID_LEN {
        return Err("longer than 2048 bytes");
    }
    // The spec requires the lowercase scheme; `SPIFFE://` is a different string to policy.
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or("the scheme is not `spiffe://`")?;
    if rest.contains('?') {
        return Err("a query is not allowed");
    }
    if rest.contains('#') {
        return Err("a fragment is not allowed");
    }
    if rest.contains('%') {
        return Err("percent-encoding is not allowed");
    }
    let (td, path) = match rest.split_once('/') {
        Some((td, path)) => (td, Some(path)),
        None => (rest, None),
    };
    check_trust_domain(td)?;
    let mut segments = Vec::new();
    if let Some(path) = path {
        for seg in path.split('/') {
            check_segment(seg)?;
            segments.push(seg);
        }
    }
    Ok((td, segments))
}

// ---------------------------------------------------------------------------------------------
// Pattern

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    Tenant,
    Workload,
}

/// How SPIFFE IDs name tenants and workloads in this deployment, e.g.
/// `spiffe://{trust_domain}/tenant/{tenant}/workload/{workload}`.
///
/// Placeholders are whole path segments only: a partial match (`t-{tenant}`) would let one
/// segment parse two ways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffePattern {
    trust_domain: Box<str>,
    segments: Vec<Segment>,
}

impl SpiffePattern {
    /// Parses `pattern`. `{trust_domain}` in the pattern stands for `trust_domain`; a pattern
    /// that spells its domain out takes it as the trust domain, and `trust_domain` must then be
    /// empty or the same, so a configuration cannot say two things at once.
    pub fn new(pattern: &str, trust_domain: &str) -> Result<Self, String> {
        let rest = pattern
            .strip_prefix("spiffe://")
            .ok_or_else(|| format!("the pattern `{pattern}` does not start with `spiffe://`"))?;
        let (authority, path) = rest
            .split_once('/')
            .ok_or_else(|| format!("the pattern `{pattern}` has no path"))?;
        let td = if authority == "{trust_domain}" {
            if trust_domain.is_empty() {
                return Err(format!(
                    "the pattern `{pattern}` uses `{{trust_domain}}` but no trust domain is configured"
                ));
            }
            trust_domain
        } else {
            if !trust_domain.is_empty() && trust_domain != authority {
                return Err(format!(
                    "the pattern `{pattern}` names trust domain `{authority}` but the configured trust domain is `{trust_domain}`"
                ));
            }
            authority
        };
        check_trust_domain(td)
            .map_err(|reason| format!("invalid trust domain `{td}`: {reason}"))?;

        let mut segments = Vec::new();
        let (mut tenants, mut workloads) = (0, 0);
        for seg in path.split('/') {
            let s = match seg {
                "{tenant}" => {
                    tenants += 1;
                    Segment::Tenant
                }
                "{workload}" => {
                    workloads += 1;
                    Segment::Workload
                }
                "{trust_domain}" => {
                    return Err(format!(
                        "the pattern `{pattern}` may use `{{trust_domain}}` only as its trust domain"
                    ))
                }
                lit if lit.contains(['{', '}']) => {
                    return Err(format!(
                        "the pattern `{pattern}` has `{lit}`: placeholders are `{{tenant}}` and `{{workload}}`, each a whole path segment"
                    ))
                }
                lit => {
                    check_segment(lit).map_err(|reason| {
                        format!("the pattern `{pattern}` has an invalid path: {reason}")
                    })?;
                    Segment::Literal(lit.into())
                }
            };
            segments.push(s);
        }
        if tenants != 1 || workloads != 1 {
            return Err(format!(
                "the pattern `{pattern}` must contain `{{tenant}}` and `{{workload}}` exactly once each"
            ));
        }
        Ok(Self {
            trust_domain: td.into(),
            segments,
        })
    }

    /// The trust domain this pattern accepts.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Maps a SPIFFE ID to its tenant and workload. Syntax is checked before the trust domain,
    /// and the trust domain before the path, so the error names the first thing that is wrong.
    pub fn match_id(&self, spiffe_id: &str) -> Result<(TenantId, WorkloadId), SpiffeError> {
        let (td, segments) = parse_id(spiffe_id).map_err(SpiffeError::Malformed)?;
        if td != &*self.trust_domain {
            return Err(SpiffeError::WrongTrustDomain { found: td.into() });
        }
        if segments.len() != self.segments.len() {
            return Err(SpiffeError::NoMatch);
        }
        let (mut tenant, mut workload) = (None, None);
        for (want, got) in self.segments.iter().zip(segments) {
            match want {
                Segment::Literal(lit) if **lit == *got => {}
                Segment::Literal(_) => return Err(SpiffeError::NoMatch),
                Segment::Tenant => tenant = Some(got),
                Segment::Workload => workload = Some(got),
            }
        }
        let (Some(tenant), Some(workload)) = (tenant, workload) else {
            return Err(SpiffeError::NoMatch);
        };
        Ok((
            TenantId::new(tenant).map_err(SpiffeError::InvalidTenant)?,
            WorkloadId::new(workload).map_err(SpiffeError::InvalidWorkload)?,
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// The SPIFFE IDs (URI SANs with the `spiffe` scheme) of a DER certificate: none or one.
///
/// The scheme is compared without case here so that a second ID spelled `SPIFFE://` cannot
/// hide next to the first; [`SpiffePattern::match_id`] then refuses that spelling.
///
/// SECURITY: a certificate with more than one URI SAN is refused even when only one is a
/// SPIFFE ID (X509-SVID spec: exactly one URI SAN). Another consumer of the same certificate
/// may read the other URI as the identity, and the two would then disagree on who called.
pub fn spiffe_ids(cert_der: &[u8]) -> Result<Vec<String>, SpiffeError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| SpiffeError::BadCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(SpiffeError::BadCertificate(
            "trailing data after the certificate".into(),
        ));
    }
    // A duplicated SAN extension is an error here, not a choice between two lists.
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SpiffeError::BadCertificate(e.to_string()))?;
    let uris: Vec<&str> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let ids: Vec<String> = uris
        .iter()
        .filter(|uri| has_spiffe_scheme(uri))
        .map(|uri| (*uri).to_owned())
        .collect();
    if ids.len() > 1 {
        return Err(SpiffeError::MultipleIds);
    }
    if uris.len() > 1 {
        return Err(SpiffeError::ExtraUri);
    }
    Ok(ids)
}

fn has_spiffe_scheme(uri: &str) -> bool {
    uri.split_once(':')
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("spiffe"))
}

/// The identity an mTLS peer proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The SPIFFE ID, as written in the certificate.
    pub spiffe_id: String,
    /// Tenant.
    pub tenant: TenantId,
    /// Workload.
    pub workload: WorkloadId,
}

/// The identity in a peer's certificate chain (leaf first).
///
/// This does not verify the chain: pass only the peer certificates of a handshake completed
/// with [`MtlsServer::current`], whose verifier already did.
pub fn identify(
    peer_chain: &[CertificateDer<'_>],
    pattern: &SpiffePattern,
) -> Result<PeerIdentity, SpiffeError> {
    let leaf = peer_chain.first().ok_or(SpiffeError::NoCertificate)?;
    let spiffe_id = spiffe_ids(leaf)?.pop().ok_or(SpiffeError::NoSpiffeId)?;
    let (tenant, workload) = pattern.match_id(&spiffe_id)?;
    Ok(PeerIdentity {
        spiffe_id,
        tenant,
        workload,
    })
}

/// The trust a client certificate is judged against: the mTLS listener's current client trust
/// bundle, and a number that changes each time the bundle is replaced.
pub trait ClientTrust: Send + Sync {
    /// The current bundle's number.
    fn generation(&self) -> u64;
    /// Verifies `chain` (leaf first) against the current bundle at `now_unix`; answers the
    /// number of the bundle that judged it.
    fn verify(&self, chain: &[CertificateDer<'static>], now_unix: u64)
        -> (u64, Result<(), String>);
}

/// What an mTLS handshake proved, kept on the connection for every request on it (and by
/// tunnels opened on it), and judged again for each one ([`Self::still_valid`]).
#[derive(Clone)]
pub struct PeerCertificate(Arc<Proved>);

struct Proved {
    /// The identity the chain names; a chain that verified but names no identity this proxy
    /// believes is kept as the refusal reason, so requests get `identity_invalid` rather than a
    /// bare TLS error.
    identity: Result<PeerIdentity, String>,
    chain: Vec<CertificateDer<'static>>,
    /// The earliest `notAfter` in the chain, Unix seconds.
    not_after: u64,
    trust: Arc<dyn ClientTrust>,
    /// The number of the bundle that last verified the chain.
    verified_under: AtomicU64,
}

impl PeerCertificate {
    /// What the handshake that `trust`'s bundle number `generation` verified proves.
    pub fn proved(
        chain: &[CertificateDer<'_>],
        pattern: &SpiffePattern,
        trust: Arc<dyn ClientTrust>,
        generation: u64,
    ) -> Self {
        Self(Arc::new(Proved {
            identity: identify(chain, pattern).map_err(|e| e.to_string()),
            not_after: earliest_not_after(chain),
            chain: chain.iter().map(|c| c.clone().into_owned()).collect(),
            trust,
            verified_under: AtomicU64::new(generation),
        }))
    }

    /// The identity the handshake's chain names, or why it names none this proxy believes.
    pub fn identity(&self) -> Result<&PeerIdentity, &str> {
        self.0.identity.as_ref().map_err(String::as_str)
    }

    /// Whether the chain still proves its identity at `now_unix`, or why not: it has expired
    /// since the handshake, or the trust bundle has been replaced since and no longer verifies
    /// it. The chain is verified again only after a replacement (once per replacement while it
    /// passes), so a request pays an atomic load and two comparisons.
    pub fn still_valid(&self, now_unix: u64) -> Result<(), String> {
        let proved = &*self.0;
        if now_unix > proved.not_after {
            return Err(
                "the client certificate has expired since the connection was made; connect again with a current one"
                    .into(),
            );
        }
        if proved.trust.generation() != proved.verified_under.load(Ordering::Acquire) {
            let (generation, verdict) = proved.trust.verify(&proved.chain, now_unix);
            verdict.map_err(|e| {
                format!(
                    "the client certificate is no longer trusted: the listener's client trust bundle changed and does not verify it ({e})"
                )
            })?;
            proved.verified_under.store(generation, Ordering::Release);
        }
        Ok(())
    }

    /// A certificate taken as proved under a bundle that never changes, for tests of what is
    /// done with an identity.
    #[cfg(test)]
    pub fn assumed(identity: PeerIdentity) -> Self {
        struct Unchanging;
        impl ClientTrust for Unchanging {
            fn generation(&self) -> u64 {
                0
            }
            fn verify(&self, _: &[CertificateDer<'static>], _: u64) -> (u64, Result<(), String>) {
                (0, Err("never asked".into()))
            }
        }
        Self::assumed_under(identity, Arc::new(Unchanging), 0)
    }

    /// A certificate taken as proved by `trust`'s bundle number `generation`.
    #[cfg(test)]
    pub fn assumed_under(
        identity: PeerIdentity,
        trust: Arc<dyn ClientTrust>,
        generation: u64,
    ) -> Self {
        Self(Arc::new(Proved {
            identity: Ok(identity),
            chain: Vec::new(),
            not_after: u64::MAX,
            trust,
            verified_under: AtomicU64::new(generation),
        }))
    }
}

impl fmt::Debug for PeerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerCertificate")
            .field("identity", &self.0.identity)
            .field("not_after", &self.0.not_after)
            .finish_non_exhaustive()
    }
}

/// Two are equal when they are the same chain.
impl PartialEq for PeerCertificate {
    fn eq(&self, other: &Self) -> bool {
        self.0.chain == other.0.chain && self.0.identity == other.0.identity
    }
}

impl Eq for PeerCertificate {}

/// The earliest `notAfter` of `chain`, Unix seconds; 0 (long expired) when a certificate cannot
/// be read, which a handshake that verified it makes impossible.
fn earliest_not_after(chain: &[CertificateDer<'_>]) -> u64 {
    chain
        .iter()
        .map(|der| {
            x509_parser::parse_x509_certificate(der)
                .ok()
                .and_then(|(_, c)| u64::try_from(c.validity().not_after.timestamp()).ok())
                .unwrap_or(0)
        })
        .min()
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Listener configuration

/// The mTLS listener's rustls configuration, swapped whole when its files change.
///
/// Handshakes take the current configuration without a lock; a reload that fails leaves the
/// previous one in place, so a bad trust bundle never leaves the listener trusting nothing (or
/// anything).
pub struct MtlsServer {
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
    loaded: ArcSwap<Loaded>,
}

/// One reading of the files: the handshake's configuration, its client verifier (to judge a
/// connection's chain again after a replacement) and its number.
struct Loaded {
    config: Arc<ServerConfig>,
    verifier: Arc<dyn ClientCertVerifier>,
    generation: u64,
}

/// Numbers every reading of every mTLS listener's files; one counter for all is simplest, and
/// only inequality is ever asked of two numbers.
static READINGS: AtomicU64 = AtomicU64::new(1);

impl Loaded {
    fn read(cert: &Path, key: &Path, client_ca: &Path) -> anyhow::Result<Self> {
        let (config, verifier) = build_config(cert, key, client_ca)?;
        Ok(Self {
            config: Arc::new(config),
            verifier,
            generation: READINGS.fetch_add(1, Ordering::Relaxed),
        })
    }
}

impl fmt::Debug for MtlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Paths only: the configuration holds the private key.
        f.debug_struct("MtlsServer")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("client_ca", &self.client_ca)
            .finish_non_exhaustive()
    }
}

impl MtlsServer {
    /// Builds the configuration from the listener's certificate chain and key and the client
    /// trust bundle (PEM files). Client certificates are required.
    pub fn load(cert: &Path, key: &Path, client_ca: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: client_ca.to_path_buf(),
            loaded: ArcSwap::from_pointee(Loaded::read(cert, key, client_ca)?),
        })
    }

    /// The configuration for the next handshake, and its number (for [`PeerCertificate::proved`]).
    pub fn current(&self) -> (Arc<ServerConfig>, u64) {
        let loaded = self.loaded.load();
        (loaded.config.clone(), loaded.generation)
    }

    /// Re-reads the three files; on error the previous configuration stays, but for its trust:
    ///
    /// SECURITY: a CA taken out of the client trust bundle (a compromise) must not wait for the
    /// rest to be fixed. When the server certificate or key cannot be used but the bundle can,
    /// the bundle applies with the certificate and key already served; a bundle that holds no
    /// certificate at all trusts no one (every handshake refused until a CA is published), as
    /// a JWKS emptied at a reload refuses every token. Either is still reported as an error.
    pub fn reload(&self) -> anyhow::Result<()> {
        let error = match Loaded::read(&self.cert, &self.key, &self.client_ca) {
            Ok(loaded) => {
                self.loaded.store(Arc::new(loaded));
                return Ok(());
            }
            Err(e) => e,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (verifier, applied) = match client_verifier(&self.client_ca, &provider) {
            Ok(verifier) => (verifier, "the client trust bundle applies now"),
            Err(_) if bundle_is_empty(&self.client_ca) => (
                Arc::new(TrustsNoOne(provider.clone())) as Arc<dyn ClientCertVerifier>,
                "the client trust bundle holds no certificate: every client is refused until a CA is published",
            ),
            Err(_) => return Err(error),
        };
        let previous = self.loaded.load();
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("no TLS protocol version available")?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(previous.config.cert_resolver.clone());
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        self.loaded.store(Arc::new(Loaded {
            config: Arc::new(config),
            verifier,
            generation: READINGS.fetch_add(1, Ordering::Relaxed),
        }));
        Err(error.context(format!(
            "{applied}; the server certificate and key already served stay"
        )))
    }

    /// Reloads when the files change, from a background thread that stops once the server is
    /// dropped (at the next change). The files are watched by path, wherever their symlinks
    /// lead (see [`crate::path_watch`]), and watched anew before each reload: replacement by rename
    /// (editors, Kubernetes secrets), a file linked into another directory and a directory
    /// replaced are all seen. Each reload is recorded in `status` as `part`: a failed one keeps
    /// the previous files serving and shows as a failed reload (metrics, `/readyz`) until a
    /// later one succeeds. Call once.
    pub fn watch(self: &Arc<Self>, status: Arc<crate::reload_status::ReloadStatus>, part: String) {
        const OTHERWISE: &str = "mTLS files reload only at a restart";
        let paths = vec![self.cert.clone(), self.key.clone(), self.client_ca.clone()];
        let (tx, rx) = mpsc::channel::<()>();
        let Some(watcher) = crate::path_watch::watch(&paths, &tx, None, OTHERWISE) else {
            return;
        };

        let server = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("mtls-reloader".into())
            .spawn(move || {
                let mut watcher = Some(watcher);
                while rx.recv().is_ok() {
                    std::thread::sleep(DEBOUNCE);
                    while rx.try_recv().is_ok() {}
                    let Some(server) = server.upgrade() else {
                        return;
                    };
                    // SECURITY: where the files lead now (a Secret's directory swapped, a link
                    // flipped) is watched before they are read, or the next change (a CA taken
                    // out of the bundle) would never reload.
                    watcher = crate::path_watch::watch(&paths, &tx, watcher, OTHERWISE);
                    // Errors name files and reasons, never key bytes (see `read_key`).
                    // SECURITY: a bad bundle keeps the previous one, and so every CA the edit
                    // meant to remove: reported as a failed reload, not only logged.
                    match server.reload() {
                        Ok(()) => {
                            tracing::info!(
                                cert = %server.cert.display(),
                                client_ca = %server.client_ca.display(),
                                "mTLS configuration reloaded"
                            );
                            status.record(&part, Vec::new());
                        }
                        Err(e) => {
                            let error = format!("{part}: {e:#}");
                            tracing::error!(
                                %error,
                                "mTLS configuration not reloaded; keeping the previous one"
                            );
                            status.record(&part, vec![error]);
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the mTLS reload thread");
        }
    }
}

impl ClientTrust for MtlsServer {
    fn generation(&self) -> u64 {
        self.loaded.load().generation
    }

    fn verify(
        &self,
        chain: &[CertificateDer<'static>],
        now_unix: u64,
    ) -> (u64, Result<(), String>) {
        let loaded = self.loaded.load();
        let verdict = match chain.split_first() {
            Some((leaf, intermediates)) => loaded
                .verifier
                .verify_client_cert(
                    leaf,
                    intermediates,
                    UnixTime::since_unix_epoch(Duration::from_secs(now_unix)),
                )
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => Err("no client certificate".into()),
        };
        (loaded.generation, verdict)
    }
}

fn build_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> anyhow::Result<(ServerConfig, Arc<dyn ClientCertVerifier>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certs(cert, "server certificate")?;
    if let Some(leaf) = chain.first() {
        check_server_leaf(leaf, crate::clock::unix_now()).with_context(|| {
            format!(
                "the server certificate `{}` cannot be served",
                cert.display()
            )
        })?;
    }
    let key_der = read_key(key)?;
    let verifier = client_verifier(client_ca, &provider)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("no TLS protocol version available")?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(chain, key_der)
        .with_context(|| {
            format!(
                "the key `{}` is unusable or does not match the certificate `{}`",
                key.display(),
                cert.display()
            )
        })?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok((config, verifier))
}

/// Whether the client trust bundle holds no certificate at all (empty, or comments only).
fn bundle_is_empty(client_ca: &Path) -> bool {
    read_file(client_ca, "client trust bundle").is_ok_and(|pem| {
        CertificateDer::pem_slice_iter(&pem).next().is_none()
            && PrivateKeyDer::from_pem_slice(&pem).is_err()
    })
}

/// The verifier of client certificates against the trust bundle `client_ca`.
fn client_verifier(
    client_ca: &Path,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    // SECURITY: a trust bundle is public; a CA's private key inside it can mint a certificate
    // for any tenant of the trust domain, and sits wherever the bundle is copied (a ConfigMap).
    if PrivateKeyDer::from_pem_slice(&read_file(client_ca, "client trust bundle")?).is_ok() {
        bail!(
            "the client trust bundle `{}` holds a private key: it must hold CA certificates only (keep the CA's key out of it, and replace that key if the bundle was shared)",
            client_ca.display()
        );
    }
    let mut roots = RootCertStore::empty();
    for (i, ca) in read_certs(client_ca, "client trust bundle")?
        .into_iter()
        .enumerate()
    {
        check_ca(&ca).with_context(|| {
            format!(
                "certificate {} in the client trust bundle `{}` cannot be a trust anchor",
                i + 1,
                client_ca.display()
            )
        })?;
        roots.add(ca).with_context(|| {
            format!(
                "certificate {} in the client trust bundle `{}` is not a usable CA certificate",
                i + 1,
                client_ca.display()
            )
        })?;
    }
    Ok(Arc::new(IssuersMaySign(
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .context("cannot build the client certificate verifier")?,
    )))
}

/// The verifier of a listener whose trust bundle was emptied at a reload: no client
/// certificate is trusted.
#[derive(Debug)]
struct TrustsNoOne(Arc<rustls::crypto::CryptoProvider>);

impl ClientCertVerifier for TrustsNoOne {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// webpki's client verification, which also refuses a chain whose client sent an intermediate
/// CA certificate that may not sign certificates (a keyUsage without keyCertSign).
///
/// SECURITY: webpki checks an intermediate's basicConstraints but not its keyUsage, so a CA
/// certificate issued for another purpose (signing only, say) under a trusted root could issue
/// workload certificates for any tenant of the trust domain (RFC 5280 4.2.1.3).
#[derive(Debug)]
struct IssuersMaySign(Arc<dyn ClientCertVerifier>);

/// An intermediate the client sent that may not sign certificates (or cannot be read to tell).
#[derive(thiserror::Error)]
#[error("{0}")]
struct IssuerMayNotSign(String);

// rustls shows a certificate error's cause with `Debug`: the sentence, not the struct.
impl fmt::Debug for IssuerMayNotSign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl ClientCertVerifier for IssuersMaySign {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self.0.verify_client_cert(end_entity, intermediates, now)?;
        let refuse = |why: String| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(IssuerMayNotSign(why)),
            )))
        };
        for der in intermediates {
            // SECURITY: one that cannot be read is refused, not skipped: it may be in the path.
            let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
                return Err(refuse(
                    "an intermediate the client sent cannot be read".into(),
                ));
            };
            // Only a CA certificate can issue (webpki refuses any other as an issuer); one the
            // client sent along that could not be in the path is left alone.
            let is_ca = match cert.basic_constraints() {
                Ok(Some(bc)) => bc.value.ca,
                Ok(None) => false,
                Err(_) => true,
            };
            let may_sign = match cert.key_usage() {
                Ok(Some(ku)) => ku.value.key_cert_sign(),
                Ok(None) => true,
                Err(_) => false,
            };
            if is_ca && !may_sign {
                return Err(refuse(format!(
                    "the intermediate `{}` may not sign certificates (its keyUsage lacks \
                     keyCertSign)",
                    cert.subject()
                )));
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Refuses a certificate of the client trust bundle that is not a CA certificate: one without
/// basicConstraints `cA=true`, or whose keyUsage does not allow signing certificates.
///
/// SECURITY: rustls keeps only an anchor's subject, key and name constraints, so a workload
/// certificate placed in the bundle would be trusted to issue certificates, and whoever holds
/// its key could mint a certificate for any tenant of the trust domain. (The anchors'
/// path-length constraints are not kept either: a known limit, see the README.)
fn check_ca(der: &CertificateDer<'_>) -> anyhow::Result<()> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow::anyhow!("it cannot be parsed: {e}"))?;
    let subject = cert.subject().to_string();
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| anyhow::anyhow!("`{subject}`: its basicConstraints cannot be read: {e}"))?
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        bail!("`{subject}` is not a CA certificate (no basicConstraints with cA=true)");
    }
    let key_usage = cert
        .key_usage()
        .map_err(|e| anyhow::anyhow!("`{subject}`: its keyUsage cannot be read: {e}"))?;
    if key_usage.is_some_and(|ku| !ku.value.key_cert_sign()) {
        bail!("`{subject}` may not sign certificates (its keyUsage lacks keyCertSign)");
    }
    Ok(())
}

/// Refuses a server certificate no client would accept, with what is wrong with it (rustls
/// would otherwise blame the key, or serve a certificate every handshake then fails on):
/// one that is not X.509 v3, has expired, or is not valid yet.
fn check_server_leaf(der: &CertificateDer<'_>, now_unix: u64) -> anyhow::Result<()> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow::anyhow!("it cannot be parsed: {e}"))?;
    if cert.version() != x509_parser::x509::X509Version::V3 {
        bail!(
            "it is an X.509 v{} certificate; TLS needs v3 (with a subjectAltName)",
            cert.version().0 + 1
        );
    }
    let validity = cert.validity();
    let now = i64::try_from(now_unix).unwrap_or(i64::MAX);
    if validity.not_after.timestamp() < now {
        bail!("it expired at {}", validity.not_after);
    }
    if validity.not_before.timestamp() > now {
        bail!("it is not valid before {}", validity.not_before);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    use rustls::pki_types::{PrivatePkcs8KeyDer, ServerName};
    use rustls::ClientConfig;
    use time::macros::datetime;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PATTERN: &str = "spiffe://{trust_domain}/tenant/{tenant}/workload/{workload}";
    const TD: &str = "example.org";

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
        der: CertificateDer<'static>,
    }

    fn ca(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    struct Leaf {
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        cert_pem: String,
        key_pem: String,
    }

    fn leaf(ca: &Ca, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose, expired: bool) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "leaf");
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        if expired {
            params.not_before = datetime!(2020-01-01 0:00 UTC);
            params.not_after = datetime!(2021-01-01 0:00 UTC);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        Leaf {
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    fn client(ca: &Ca, ids: &[&str]) -> Leaf {
        let sans = ids.iter().map(|s| uri(s)).collect();
        leaf(ca, sans, ExtendedKeyUsagePurpose::ClientAuth, false)
    }

    /// The listener's files in a temporary directory, its own certificate from `server_ca`.
    struct Files {
        dir: tempfile::TempDir,
        server_ca: Ca,
        cert: PathBuf,
        key: PathBuf,
        client_ca: PathBuf,
    }

    fn files(client_cas: &[&Ca]) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let server_ca = ca("server ca");
        let server = leaf(
            &server_ca,
            vec![SanType::DnsName("localhost".try_into().unwrap())],
            ExtendedKeyUsagePurpose::ServerAuth,
            false,
        );
        let cert = dir.path().join("server.pem");
        let key = dir.path().join("server.key");
        let client_ca = dir.path().join("client-ca.pem");
        std::fs::write(&cert, &server.cert_pem).unwrap();
        std::fs::write(&key, &server.key_pem).unwrap();
        write_bundle(&client_ca, client_cas);
        Files {
            dir,
            server_ca,
            cert,
            key,
            client_ca,
        }
    }

    fn write_bundle(path: &Path, cas: &[&Ca]) {
        let pem: String = cas.iter().map(|c| c.pem.as_str()).collect();
        std::fs::write(path, pem).unwrap();
    }

    impl Files {
        fn load(&self) -> MtlsServer {
            MtlsServer::load(&self.cert, &self.key, &self.client_ca).unwrap()
        }
    }

    /// A full handshake plus one exchange each way, in memory. Ok is the peer chain the server
    /// saw; the server's verdict decides (a TLS 1.3 client finishes before the server checks it).
    async fn handshake(
        server: Arc<ServerConfig>,
        server_ca: &Ca,
        client: Option<&Leaf>,
    ) -> Result<Vec<CertificateDer<'static>>, String> {
        let mut roots = RootCertStore::empty();
        roots.add(server_ca.der.clone()).unwrap();
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
        let mut config = match client {
            Some(l) => builder
                .with_client_auth_cert(l.chain.clone(), l.key.clone_key())
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];

        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let server_side = async move {
            let mut tls = acceptor
                .accept(server_io)
                .await
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            let (_, conn) = tls.get_ref();
            assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
            Ok::<_, String>(conn.peer_certificates().unwrap_or_default().to_vec())
        };
        let client_side = async move {
            let name = ServerName::try_from("localhost").unwrap();
            let mut tls = connector
                .connect(name, client_io)
                .await
                .map_err(|e| e.to_string())?;
            tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        };
        let both = async { tokio::join!(server_side, client_side) };
        let (server, client) = tokio::time::timeout(Duration::from_secs(5), both)
            .await
            .expect("handshake timed out");
        let chain = server?;
        client?;
        Ok(chain)
    }

    fn pattern() -> SpiffePattern {
        SpiffePattern::new(PATTERN, TD).unwrap()
    }

    #[tokio::test]
    async fn mtls_trusted_client_is_identified() {
        let client_ca = ca("client ca");
        let f = files(&[&client_ca]);
        let server = f.load();
        let id = "spiffe://example.org/tenant/acme/workload/agent-1";
        let chain = handshake(
            server.current().0,
            &f.server_ca,
            Some(&client(&client_ca, &[id])),
        )
        .await
        .unwrap();
        let peer = identify(&chain, &pattern()).unwrap();
        assert_eq!(peer.spiffe_id, id);
        assert_eq!(peer.tenant.as_str(), "acme");
        assert_eq!(peer.workload.as_str(), "agent-1");
    }

    /// An intermediate CA under `root` with these key usages.
    fn intermediate(root: &Ca, name: &str, key_usages: Vec<KeyUsagePurpose>) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = key_usages;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &root.issuer).unwrap();
        Ca {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A client whose chain runs through an intermediate CA that may not sign certificates is
    /// refused at the handshake, and when its chain is judged again; one whose intermediate
    /// may sign is identified.
    #[tokio::test]
    async fn mtls_an_intermediate_that_may_not_sign_certificates_issues_nobody() {
        let root = ca("client root");
        let f = files(&[&root]);
        let server = f.load();
        let id = "spiffe://example.org/tenant/acme/workload/agent-1";
        for (usages, issues) in [
            (
                vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
                true,
            ),
            (vec![], true),
            (vec![KeyUsagePurpose::DigitalSignature], false),
        ] {
            let inter = intermediate(&root, "signing only", usages.clone());
            let mut workload = client(&inter, &[id]);
            workload.chain.push(inter.der.clone());
            let shaken = handshake(server.current().0, &f.server_ca, Some(&workload)).await;
            let judged = server.verify(&workload.chain, unix_now()).1;
            if issues {
                assert!(shaken.is_ok(), "{usages:?}: {shaken:?}");
                assert!(judged.is_ok(), "{usages:?}: {judged:?}");
            } else {
                let e = shaken.unwrap_err();
                assert!(e.contains("may not sign certificates"), "{e}");
                let e = judged.unwrap_err();
                assert!(e.contains("`CN=signing only` may not sign"), "{e}");
            }
        }
        // An intermediate that cannot be read is refused rather than skipped.
        let inter = intermediate(&root, "signing", vec![KeyUsagePurpose::KeyCertSign]);
        let mut workload = client(&inter, &[id]);
        workload.chain.push(inter.der.clone());
        workload
            .chain
            .push(CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]));
        let e = server.verify(&workload.chain, unix_now()).1.unwrap_err();
        assert!(e.contains("cannot be read"), "{e}");
    }

    fn unix_now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// The identity `peer` gives at `now_unix`, as a request asks it: the one its chain names,
    /// while it is still valid.
    fn identity_at(peer: &PeerCertificate, now_unix: u64) -> Result<&PeerIdentity, String> {
        let identity = peer.identity().map_err(str::to_string)?;
        peer.still_valid(now_unix)?;
        Ok(identity)
    }

    /// A connection's certificate is judged again for every request: it stops identifying
    /// anyone once it has expired, or once the bundle is replaced by one that does not verify
    /// it (and does again under a bundle that does).
    #[tokio::test]
    async fn a_connections_certificate_stops_identifying_once_expired_or_untrusted() {
        let client_ca = ca("client ca");
        let other_ca = ca("other ca");
        let f = files(&[&client_ca]);
        let server = Arc::new(f.load());
        let id = "spiffe://example.org/tenant/acme/workload/agent-1";
        let (config, generation) = server.current();
        let chain = handshake(config, &f.server_ca, Some(&client(&client_ca, &[id])))
            .await
            .unwrap();
        let trust: Arc<dyn ClientTrust> = server.clone();
        let peer = PeerCertificate::proved(&chain, &pattern(), trust, generation);
        let now = unix_now();
        assert_eq!(identity_at(&peer, now).unwrap().spiffe_id, id);

        // Its last second still identifies; the next one does not.
        let not_after = earliest_not_after(&chain);
        assert!(not_after > now, "{not_after}");
        assert!(identity_at(&peer, not_after).is_ok());
        let e = identity_at(&peer, not_after + 1).unwrap_err();
        assert!(e.contains("expired"), "{e}");

        // The same bundle read again verifies it again.
        server.reload().unwrap();
        assert!(identity_at(&peer, now).is_ok());
        // A bundle without its CA: refused, on every request while it stays.
        write_bundle(&f.client_ca, &[&other_ca]);
        server.reload().unwrap();
        for _ in 0..2 {
            let e = identity_at(&peer, now).unwrap_err();
            assert!(e.contains("no longer trusted"), "{e}");
        }
        // Its CA back: identified again.
        write_bundle(&f.client_ca, &[&other_ca, &client_ca]);
        server.reload().unwrap();
        assert_eq!(identity_at(&peer, now).unwrap().spiffe_id, id);

        // A certificate that never named an identity says why, before anything else.
        let foreign = client(
            &client_ca,
            &["spiffe://other.org/tenant/acme/workload/agent-1"],
        );
        let trust: Arc<dyn ClientTrust> = server.clone();
        let peer = PeerCertificate::proved(&foreign.chain, &pattern(), trust, generation);
        let e = identity_at(&peer, now).unwrap_err();
        assert!(e.contains("trust domain"), "{e}");
    }

    #[tokio::test]
    async fn mtls_handshake_refusals() {
        let client_ca = ca("client ca");
        let other_ca = ca("other ca");
        let f = files(&[&client_ca]);
        let server = f.load();
        let id = "spiffe://example.org/tenant/acme/workload/agent-1";
        let expired = leaf(
            &client_ca,
            vec![uri(id)],
            ExtendedKeyUsagePurpose::ClientAuth,
            true,
        );
        let untrusted = client(&other_ca, &[id]);
        // The reason is checked so a case cannot pass by failing for another cause.
        let cases: [(&str, Option<&Leaf>, &str); 3] = [
            ("no client certificate", None, "no certificates"),
            ("untrusted ca", Some(&untrusted), "UnknownIssuer"),
            ("expired", Some(&expired), "expired"),
        ];
        for (name, leaf, reason) in cases {
            let r = handshake(server.current().0, &f.server_ca, leaf).await;
            let e = r.expect_err(name);
            assert!(e.contains(reason), "{name}: {e}");
        }
    }

    #[tokio::test]
    async fn mtls_other_trust_domain_passes_handshake_not_identify() {
        let client_ca = ca("client ca");
        let f = files(&[&client_ca]);
        let server = f.load();
        let leaf = client(
            &client_ca,
            &["spiffe://other.org/tenant/acme/workload/agent-1"],
        );
        let chain = handshake(server.current().0, &f.server_ca, Some(&leaf))
            .await
            .unwrap();
        assert_eq!(
            identify(&chain, &pattern()),
            Err(SpiffeError::WrongTrustDomain {
                found: "other.org".into()
            })
        );
    }

    #[test]
    fn mtls_certificate_id_counts() {
        let ca = ca("client ca");
        let a = "spiffe://example.org/tenant/acme/workload/a";
        let b = "spiffe://example.org/tenant/acme/workload/b";
        let two = client(&ca, &[a, b]);
        assert_eq!(spiffe_ids(&two.chain[0]), Err(SpiffeError::MultipleIds));
        assert_eq!(
            identify(&two.chain, &pattern()),
            Err(SpiffeError::MultipleIds)
        );
        // A second ID in another spelling of the scheme counts too.
        let upper = client(&ca, &[a, "SPIFFE://example.org/tenant/x/workload/y"]);
        assert_eq!(spiffe_ids(&upper.chain[0]), Err(SpiffeError::MultipleIds));
        // Another URI next to the SPIFFE ID, before or after it: an X509-SVID holds exactly
        // one URI SAN, so the certificate gives no identity at all.
        for uris in [["https://example.org/x", a], [a, "https://tenant/acme"]] {
            let mixed = client(&ca, &uris);
            assert_eq!(spiffe_ids(&mixed.chain[0]), Err(SpiffeError::ExtraUri));
            assert_eq!(
                identify(&mixed.chain, &pattern()),
                Err(SpiffeError::ExtraUri)
            );
        }
        // Other kinds of names next to the one URI are not counted.
        let dns = leaf(
            &ca,
            vec![
                SanType::DnsName("agent.example.org".try_into().unwrap()),
                uri(a),
            ],
            ExtendedKeyUsagePurpose::ClientAuth,
            false,
        );
        assert_eq!(spiffe_ids(&dns.chain[0]).unwrap(), vec![a.to_string()]);
        let none = client(&ca, &[]);
        assert_eq!(spiffe_ids(&none.chain[0]).unwrap(), Vec::<String>::new());
        assert_eq!(
            identify(&none.chain, &pattern()),
            Err(SpiffeError::NoSpiffeId)
        );
        assert_eq!(identify(&[], &pattern()), Err(SpiffeError::NoCertificate));
        assert!(matches!(
            spiffe_ids(b"not a certificate"),
            Err(SpiffeError::BadCertificate(_))
        ));
    }

    #[test]
    fn mtls_pattern_parsing() {
        let good = [
            ("placeholder domain", PATTERN, TD, TD),
            (
                "literal domain",
                "spiffe://example.org/ns/{tenant}/sa/{workload}",
                "",
                "example.org",
            ),
            (
                "literal domain, same configured",
                "spiffe://example.org/{workload}/{tenant}",
                "example.org",
                "example.org",
            ),
            (
                "underscore domain",
                PATTERN,
                "my_td-1.local",
                "my_td-1.local",
            ),
        ];
        for (name, p, td, want) in good {
            let parsed = SpiffePattern::new(p, td).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(parsed.trust_domain(), want, "{name}");
        }
        let bad = [
            (
                "wrong scheme",
                "https://example.org/{tenant}/{workload}",
                TD,
            ),
            (
                "uppercase scheme",
                "SPIFFE://{trust_domain}/{tenant}/{workload}",
                TD,
            ),
            ("no path", "spiffe://{trust_domain}", TD),
            ("no workload", "spiffe://{trust_domain}/tenant/{tenant}", TD),
            ("no tenant", "spiffe://{trust_domain}/w/{workload}", TD),
            (
                "tenant twice",
                "spiffe://{trust_domain}/{tenant}/{tenant}/{workload}",
                TD,
            ),
            (
                "partial segment",
                "spiffe://{trust_domain}/t-{tenant}/{workload}",
                TD,
            ),
            (
                "unknown placeholder",
                "spiffe://{trust_domain}/{ns}/{tenant}/{workload}",
                TD,
            ),
            (
                "domain in path",
                "spiffe://{trust_domain}/{trust_domain}/{tenant}/{workload}",
                TD,
            ),
            ("uppercase trust domain", PATTERN, "Example.org"),
            ("no trust domain", PATTERN, ""),
            (
                "conflicting domains",
                "spiffe://other.org/{tenant}/{workload}",
                TD,
            ),
            (
                "invalid literal domain",
                "spiffe://ex ample.org/{tenant}/{workload}",
                "",
            ),
            ("port", "spiffe://example.org:443/{tenant}/{workload}", ""),
            (
                "empty segment",
                "spiffe://{trust_domain}/{tenant}//{workload}",
                TD,
            ),
            (
                "dot segment",
                "spiffe://{trust_domain}/../{tenant}/{workload}",
                TD,
            ),
            (
                "trailing slash",
                "spiffe://{trust_domain}/{tenant}/{workload}/",
                TD,
            ),
            (
                "query",
                "spiffe://{trust_domain}/{tenant}/{workload}?x=1",
                TD,
            ),
            (
                "percent",
                "spiffe://{trust_domain}/a%20b/{tenant}/{workload}",
                TD,
            ),
        ];
        for (name, p, td) in bad {
            assert!(SpiffePattern::new(p, td).is_err(), "{name}: accepted");
        }
    }

    #[derive(Debug)]
    enum Want {
        Ok(&'static str, &'static str),
        Malformed,
        WrongTd(&'static str),
        NoMatch,
        BadTenant,
        BadWorkload,
    }

    #[test]
    fn mtls_match_edge_cases() {
        let p = pattern();
        let long = format!(
            "spiffe://example.org/tenant/acme/workload/{}",
            "a".repeat(2048)
        );
        let cases: Vec<(&str, &str, Want)> = vec![
            (
                "ok",
                "spiffe://example.org/tenant/acme/workload/agent-1",
                Want::Ok("acme", "agent-1"),
            ),
            (
                "extra segment",
                "spiffe://example.org/tenant/acme/workload/a/x",
                Want::NoMatch,
            ),
            (
                "missing segment",
                "spiffe://example.org/tenant/acme/workload",
                Want::NoMatch,
            ),
            ("trust domain only", "spiffe://example.org", Want::NoMatch),
            (
                "literal differs",
                "spiffe://example.org/tenants/acme/workload/a",
                Want::NoMatch,
            ),
            (
                "literal case",
                "spiffe://example.org/Tenant/acme/workload/a",
                Want::NoMatch,
            ),
            (
                "empty segment",
                "spiffe://example.org/tenant//workload/a",
                Want::Malformed,
            ),
            (
                "trailing slash",
                "spiffe://example.org/tenant/acme/workload/a/",
                Want::Malformed,
            ),
            ("root slash", "spiffe://example.org/", Want::Malformed),
            (
                "percent",
                "spiffe://example.org/tenant/ac%6De/workload/a",
                Want::Malformed,
            ),
            (
                "dot",
                "spiffe://example.org/tenant/./workload/a",
                Want::Malformed,
            ),
            (
                "dot dot",
                "spiffe://example.org/tenant/x/../acme/workload/a",
                Want::Malformed,
            ),
            (
                "query",
                "spiffe://example.org/tenant/acme/workload/a?x=1",
                Want::Malformed,
            ),
            (
                "fragment",
                "spiffe://example.org/tenant/acme/workload/a#f",
                Want::Malformed,
            ),
            (
                "uppercase trust domain",
                "spiffe://Example.org/tenant/acme/workload/a",
                Want::Malformed,
            ),
            (
                "uppercase scheme",
                "SPIFFE://example.org/tenant/acme/workload/a",
                Want::Malformed,
            ),
            (
                "user info",
                "spiffe://u@example.org/tenant/acme/workload/a",
                Want::Malformed,
            ),
            (
                "port",
                "spiffe://example.org:8443/tenant/acme/workload/a",
                Want::Malformed,
            ),
            (
                "no trust domain",
                "spiffe:///tenant/acme/workload/a",
                Want::Malformed,
            ),
            (
                "space",
                "spiffe://example.org/tenant/ac me/workload/a",
                Want::Malformed,
            ),
            (
                "not a uri",
                "example.org/tenant/acme/workload/a",
                Want::Malformed,
            ),
            ("too long", &long, Want::Malformed),
            (
                "other trust domain",
                "spiffe://other.org/tenant/acme/workload/a",
                Want::WrongTd("other.org"),
            ),
            (
                "suffix trust domain",
                "spiffe://example.org.evil/tenant/acme/workload/a",
                Want::WrongTd("example.org.evil"),
            ),
            (
                "uppercase tenant",
                "spiffe://example.org/tenant/Acme/workload/a",
                Want::BadTenant,
            ),
            (
                "dot-leading tenant",
                "spiffe://example.org/tenant/.acme/workload/a",
                Want::BadTenant,
            ),
            (
                "underscore-leading workload",
                "spiffe://example.org/tenant/acme/workload/_a",
                Want::BadWorkload,
            ),
        ];
        for (name, id, want) in cases {
            let got = p.match_id(id);
            let ok = match (&want, &got) {
                (Want::Ok(t, w), Ok((gt, gw))) => gt.as_str() == *t && gw.as_str() == *w,
                (Want::Malformed, Err(SpiffeError::Malformed(_))) => true,
                (Want::WrongTd(td), Err(SpiffeError::WrongTrustDomain { found })) => found == td,
                (Want::NoMatch, Err(SpiffeError::NoMatch)) => true,
                (Want::BadTenant, Err(SpiffeError::InvalidTenant(_))) => true,
                (Want::BadWorkload, Err(SpiffeError::InvalidWorkload(_))) => true,
                _ => false,
            };
            assert!(ok, "{name}: want {want:?}, got {got:?}");
        }
    }

    #[tokio::test]
    async fn mtls_reload_swaps_trust_bundle() {
        let old_ca = ca("old ca");
        let new_ca = ca("new ca");
        let f = files(&[&old_ca]);
        let server = f.load();
        let id = "spiffe://example.org/tenant/acme/workload/agent-1";
        let old_client = client(&old_ca, &[id]);
        let new_client = client(&new_ca, &[id]);
        assert!(
            handshake(server.current().0, &f.server_ca, Some(&old_client))
                .await
                .is_ok()
        );
        assert!(
            handshake(server.current().0, &f.server_ca, Some(&new_client))
                .await
                .is_err()
        );

        write_bundle(&f.client_ca, &[&new_ca]);
        server.reload().unwrap();
        assert!(
            handshake(server.current().0, &f.server_ca, Some(&old_client))
                .await
                .is_err()
        );
        assert!(
            handshake(server.current().0, &f.server_ca, Some(&new_client))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn mtls_broken_reload_keeps_old_config() {
        let client_ca = ca("client ca");
        let f = files(&[&client_ca]);
        let server = f.load();
        let good = client(
            &client_ca,
            &["spiffe://example.org/tenant/acme/workload/agent-1"],
        );
        let before = server.current().0;
        // (An empty bundle trusts no one: `mtls_trust_taken_out_applies_even_when_the_rest_cannot`.)
        let broken: [(&str, &[u8]); 2] = [
            (
                "not pem",
                b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            ),
            (
                "not a certificate",
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            ),
        ];
        for (name, bytes) in broken {
            std::fs::write(&f.client_ca, bytes).unwrap();
            assert!(server.reload().is_err(), "{name}: reload succeeded");
            assert!(
                Arc::ptr_eq(&before, &server.current().0),
                "{name}: config replaced"
            );
            assert!(
                handshake(server.current().0, &f.server_ca, Some(&good))
                    .await
                    .is_ok(),
                "{name}: trusted client refused"
            );
        }
        std::fs::remove_file(&f.client_ca).unwrap();
        assert!(server.reload().is_err());
        assert!(Arc::ptr_eq(&before, &server.current().0));
    }

    #[test]
    fn mtls_load_errors_are_clear() {
        let client_ca = ca("client ca");
        let f = files(&[&client_ca]);
        let missing = f.dir.path().join("missing.pem");
        let err = |cert: &Path, key: &Path, ca: &Path| {
            format!("{:#}", MtlsServer::load(cert, key, ca).unwrap_err())
        };

        let e = err(&f.cert, &f.key, &missing);
        assert!(
            e.contains("cannot read the client trust bundle") && e.contains("missing.pem"),
            "{e}"
        );

        let empty = f.dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = err(&f.cert, &f.key, &empty);
        assert!(e.contains("holds no certificate"), "{e}");

        let e = err(&f.cert, &empty, &f.client_ca);
        assert!(e.contains("holds no private key"), "{e}");

        // The key of another certificate: refused, and the key is not echoed.
        let other = client(&client_ca, &[]);
        let other_key = f.dir.path().join("other.key");
        std::fs::write(&other_key, &other.key_pem).unwrap();
        let e = err(&f.cert, &other_key, &f.client_ca);
        assert!(e.contains("does not match"), "{e}");
        assert!(!e.contains("PRIVATE KEY"), "{e}");

        let e = err(&missing, &f.key, &f.client_ca);
        assert!(e.contains("cannot read the server certificate"), "{e}");
    }

    /// A server certificate no client would accept, and a trust bundle holding a private key,
    /// are refused at load and on reload (the previous files keep serving), each with what is
    /// wrong with it.
    #[test]
    fn mtls_expired_server_certificates_and_bundles_holding_a_key_are_refused() {
        let client_ca = ca("client ca");
        let f = files(&[&client_ca]);
        let server = f.load();
        let before = server.current().0;
        // The certificate served stays; so does the bundle, unless it is the bundle that
        // changed (see `mtls_trust_taken_out_applies_even_when_the_rest_cannot`).
        let err = || {
            let e = format!(
                "{:#}",
                MtlsServer::load(&f.cert, &f.key, &f.client_ca).unwrap_err()
            );
            assert!(server.reload().is_err(), "{e}");
            assert!(
                Arc::ptr_eq(&before.cert_resolver, &server.current().0.cert_resolver),
                "{e}"
            );
            e
        };
        let good = std::fs::read_to_string(&f.cert).unwrap();
        let good_key = std::fs::read_to_string(&f.key).unwrap();
        let expired = leaf(
            &f.server_ca,
            vec![SanType::DnsName("localhost".try_into().unwrap())],
            ExtendedKeyUsagePurpose::ServerAuth,
            true,
        );
        std::fs::write(&f.cert, &expired.cert_pem).unwrap();
        std::fs::write(&f.key, &expired.key_pem).unwrap();
        let e = err();
        assert!(
            e.contains("server.pem` cannot be served: it expired at"),
            "{e}"
        );
        std::fs::write(&f.cert, &good).unwrap();
        std::fs::write(&f.key, &good_key).unwrap();

        // The CA's key (any key) next to its certificate in the bundle.
        let before = server.current().0;
        let workload = client(&client_ca, &[]);
        std::fs::write(
            &f.client_ca,
            format!("{}{}", client_ca.pem, workload.key_pem),
        )
        .unwrap();
        let e = err();
        assert!(e.contains("client-ca.pem` holds a private key"), "{e}");
        assert!(!e.contains("PRIVATE KEY"), "{e}");
        assert!(Arc::ptr_eq(&before, &server.current().0), "{e}");
        // Certificates only: loads again.
        write_bundle(&f.client_ca, &[&client_ca]);
        server.reload().unwrap();
    }

    /// A CA taken out of the trust bundle (a compromise) is out at once, even when the server
    /// certificate beside it cannot be served (the one served stays); a bundle emptied at a
    /// reload trusts no one until a CA is published. Both still count as failed reloads.
    #[tokio::test]
    async fn mtls_trust_taken_out_applies_even_when_the_rest_cannot() {
        let (compromised, kept) = (ca("compromised ca"), ca("kept ca"));
        let f = files(&[&compromised, &kept]);
        let server = f.load();
        let id = "spiffe://example.org/tenant/acme/workload/a";
        let (bad, good) = (client(&compromised, &[id]), client(&kept, &[id]));
        let trusted = |w: &Leaf| server.verify(&w.chain, unix_now()).1.is_ok();
        assert!(trusted(&bad) && trusted(&good));
        let served = server.current().0.cert_resolver.clone();

        let expired = leaf(
            &f.server_ca,
            vec![SanType::DnsName("localhost".try_into().unwrap())],
            ExtendedKeyUsagePurpose::ServerAuth,
            true,
        );
        let (good_cert, good_key) = (
            std::fs::read(&f.cert).unwrap(),
            std::fs::read(&f.key).unwrap(),
        );
        std::fs::write(&f.cert, &expired.cert_pem).unwrap();
        std::fs::write(&f.key, &expired.key_pem).unwrap();
        write_bundle(&f.client_ca, &[&kept]);
        let e = format!("{:#}", server.reload().unwrap_err());
        assert!(e.contains("the client trust bundle applies now"), "{e}");
        assert!(e.contains("cannot be served"), "{e}");
        assert!(!trusted(&bad) && trusted(&good));
        assert!(Arc::ptr_eq(&served, &server.current().0.cert_resolver));
        assert!(handshake(server.current().0, &f.server_ca, Some(&bad))
            .await
            .is_err());
        assert!(handshake(server.current().0, &f.server_ca, Some(&good))
            .await
            .is_ok());

        std::fs::write(&f.client_ca, "# every CA pulled\n").unwrap();
        let e = format!("{:#}", server.reload().unwrap_err());
        assert!(e.contains("every client is refused"), "{e}");
        assert!(!trusted(&good));
        assert!(handshake(server.current().0, &f.server_ca, Some(&good))
            .await
            .is_err());
        // At a start an empty bundle is still an error: there it is almost always a mistake.
        assert!(MtlsServer::load(&f.cert, &f.key, &f.client_ca).is_err());

        std::fs::write(&f.cert, good_cert).unwrap();
        std::fs::write(&f.key, good_key).unwrap();
        write_bundle(&f.client_ca, &[&kept]);
        server.reload().unwrap();
        assert!(trusted(&good) && !trusted(&bad));
    }

    /// A self-signed certificate with the given basicConstraints and keyUsage, as PEM.
    fn self_signed(name: &str, is_ca: IsCa, key_usages: Vec<KeyUsagePurpose>) -> String {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = is_ca;
        params.key_usages = key_usages;
        params
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .pem()
    }

    #[test]
    fn mtls_client_ca_holds_only_ca_certificates() {
        let client_ca = ca("client ca");
        let f = files(&[&client_ca]);
        let server = f.load();
        let before = server.current().0;
        let workload = client(&client_ca, &["spiffe://example.org/tenant/acme/workload/a"]);
        let cases = [
            // A workload's certificate: its key holder could mint any tenant.
            (
                "leaf",
                workload.cert_pem.clone(),
                "`CN=leaf` is not a CA certificate",
            ),
            (
                "no basic constraints",
                self_signed("bare", IsCa::NoCa, vec![]),
                "`CN=bare` is not a CA certificate",
            ),
            (
                "cA=false",
                self_signed("not-ca", IsCa::ExplicitNoCa, vec![]),
                "`CN=not-ca` is not a CA certificate",
            ),
            (
                "keyUsage without keyCertSign",
                self_signed(
                    "no-certsign",
                    IsCa::Ca(BasicConstraints::Unconstrained),
                    vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign],
                ),
                "`CN=no-certsign` may not sign certificates",
            ),
        ];
        for (name, pem, want) in cases {
            // Next to a good CA, in either order: the whole bundle is refused.
            for bundle in [
                format!("{}{pem}", client_ca.pem),
                format!("{pem}{}", client_ca.pem),
            ] {
                std::fs::write(&f.client_ca, bundle).unwrap();
                let e = format!(
                    "{:#}",
                    MtlsServer::load(&f.cert, &f.key, &f.client_ca).unwrap_err()
                );
                assert!(e.contains(want), "{name}: {e}");
                assert!(e.contains("client-ca.pem"), "{name}: {e}");
                // A reload with it keeps the previous bundle.
                assert!(server.reload().is_err(), "{name}");
                assert!(Arc::ptr_eq(&before, &server.current().0), "{name}");
            }
        }
        // A CA certificate without a keyUsage extension may sign (RFC 5280 4.2.1.3).
        let no_ku = self_signed("no-ku", IsCa::Ca(BasicConstraints::Unconstrained), vec![]);
        std::fs::write(&f.client_ca, format!("{}{no_ku}", client_ca.pem)).unwrap();
        MtlsServer::load(&f.cert, &f.key, &f.client_ca).unwrap();
    }

    #[test]
    fn mtls_debug_shows_no_key_material() {
        let client_ca = ca("client ca");
        let f = files(&[&client_ca]);
        let server = f.load();
        let key_pem = std::fs::read_to_string(&f.key).unwrap();
        let body: String = key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let debug = format!("{server:?}");
        assert!(debug.contains("server.key"), "{debug}");
        assert!(!debug.contains(&body[..16]), "{debug}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mtls_watch_reloads_on_change() {
        let old_ca = ca("old ca");
        let new_ca = ca("new ca");
        let f = files(&[&old_ca]);
        let server = Arc::new(f.load());
        let status = Arc::new(crate::reload_status::ReloadStatus::new());
        server.watch(status.clone(), "listener `mesh` TLS files".into());
        let before = server.current().0;

        // Replace by rename, as secret rotators do, so no half-written file is read.
        let tmp = f.dir.path().join("client-ca.pem.tmp");
        write_bundle(&tmp, &[&new_ca]);
        std::fs::rename(&tmp, &f.client_ca).unwrap();

        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while Arc::ptr_eq(&before, &server.current().0) {
            assert!(std::time::Instant::now() < deadline, "no reload within 5 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let id = "spiffe://example.org/tenant/acme/workload/agent-1";
        let new_client = client(&new_ca, &[id]);
        let old_client = client(&old_ca, &[id]);
        assert!(
            handshake(server.current().0, &f.server_ca, Some(&new_client))
                .await
                .is_ok()
        );
        assert!(
            handshake(server.current().0, &f.server_ca, Some(&old_client))
                .await
                .is_err()
        );
        assert!(status.combined().ok);

        // A broken bundle keeps the previous one serving, and the reload shows as failed.
        std::fs::write(
            &tmp,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::rename(&tmp, &f.client_ca).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while status.combined().ok {
            assert!(
                std::time::Instant::now() < deadline,
                "no failed reload within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let last = status.combined();
        assert_eq!(last.problems.len(), 1);
        assert!(last.problems[0].contains("listener `mesh`"), "{last:?}");
        assert!(
            handshake(server.current().0, &f.server_ca, Some(&new_client))
                .await
                .is_ok()
        );
        // Fixed: the next reload clears it.
        write_bundle(&tmp, &[&new_ca]);
        std::fs::rename(&tmp, &f.client_ca).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !status.combined().ok {
            assert!(
                std::time::Instant::now() < deadline,
                "no recovery within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A bundle linked into another directory (where a secret store keeps the real file):
    /// replacing the file the link leads to reloads, so a CA taken out of it stops being trusted.
    #[tokio::test]
    async fn mtls_watch_follows_a_bundle_linked_into_another_directory() {
        let old_ca = ca("old ca");
        let new_ca = ca("new ca");
        let f = files(&[&old_ca]);
        let store = f.dir.path().join("store");
        std::fs::create_dir_all(&store).unwrap();
        std::fs::rename(&f.client_ca, store.join("client-ca.pem")).unwrap();
        std::os::unix::fs::symlink("store/client-ca.pem", &f.client_ca).unwrap();
        let server = Arc::new(f.load());
        let status = Arc::new(crate::reload_status::ReloadStatus::new());
        server.watch(status.clone(), "listener `mesh` TLS files".into());
        let before = server.current().0;

        let tmp = store.join("client-ca.pem.tmp");
        write_bundle(&tmp, &[&new_ca]);
        std::fs::rename(&tmp, store.join("client-ca.pem")).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while Arc::ptr_eq(&before, &server.current().0) {
            assert!(std::time::Instant::now() < deadline, "no reload within 5 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let id = "spiffe://example.org/tenant/acme/workload/agent-1";
        assert!(handshake(
            server.current().0,
            &f.server_ca,
            Some(&client(&old_ca, &[id]))
        )
        .await
        .is_err());
    }
}
