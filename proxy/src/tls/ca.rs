//! The deployment's local interception CA and the short-lived leaves it mints for each tunnel.
//!
//! The CA key is the most sensitive thing the proxy holds after tenants' credentials: whoever has
//! it can impersonate every host the CA may sign for to every client that trusts it. So it is
//! written once with mode 0600 and never overwritten, it can be name-constrained to the hosts the
//! deployment actually intercepts, and leaves live in memory only, for hours.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io::{Read as _, Write as _};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use arc_swap::ArcSwap;
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::{PemObject as _, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::ids::TenantId;
use crate::tls::resume::TunnelTickets;

/// File name of the CA certificate inside `ca init --out`.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside `ca init --out`.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Subject common name of a CA made without `--name`.
pub const DEFAULT_COMMON_NAME: &str = "tenant-proxy local CA";
/// Ten years. The 825/398-day ceilings browsers enforce apply to server (leaf) certificates,
/// not to roots; a CA's lifetime is paid for in redistribution, since every client environment,
/// image and Java keystore that trusts it must be updated when it rotates. Exposure is bounded
/// by the name constraints, the 0600 key and the hours-long leaves, not by the CA's expiry.
pub const DEFAULT_VALIDITY_DAYS: u32 = 3650;
/// The longest validity `ca init` gives a CA.
pub const MAX_VALIDITY_DAYS: u32 = 36_500;
/// Long enough that a busy host is minted for about twice a day, short enough that a leaked
/// leaf key (they only ever live in memory) is useless by tomorrow.
pub const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(12 * 3600);
/// Distinct intercepted hosts are few (the LLM and tool APIs agents call); this bounds memory if
/// something makes them many.
pub const DEFAULT_MAX_LEAVES: usize = 10_000;
/// Leaves are back-dated so that a client whose clock runs a little behind still accepts them.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// What `ca init` creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaInitOptions {
    /// Directory for `ca.pem` and `ca-key.pem` (created if missing).
    pub out: PathBuf,
    /// Subject common name; it is what users see in certificate viewers and trust stores.
    pub common_name: String,
    /// DNS name constraints (`api.openai.com`, `.example.com`); empty leaves the CA able to sign
    /// for any host.
    pub permitted: Vec<String>,
    /// Lifetime in days (see [`DEFAULT_VALIDITY_DAYS`]).
    pub validity_days: u32,
}

impl CaInitOptions {
    /// Options with the default name and lifetime and no constraints.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            common_name: DEFAULT_COMMON_NAME.to_owned(),
            permitted: Vec::new(),
            validity_days: DEFAULT_VALIDITY_DAYS,
        }
    }
}

/// The two files `ca init` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Creates a new CA in `opts.out`. Never overwrites: replacing a CA silently would break every
/// client that trusts the old one, and losing its key cannot be undone.
pub fn init(opts: &CaInitOptions) -> anyhow::Result<CaFiles> {
    let permitted = opts
        .permitted
        .iter()
        .map(|p| normalize_constraint(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if opts.validity_days == 0 {
        bail!("the CA must be valid for at least one day");
    }
    // Past this a date overflows what certificates (and the `time` crate) can say.
    if opts.validity_days > MAX_VALIDITY_DAYS {
        bail!(
            "the CA may be valid for at most {MAX_VALIDITY_DAYS} days (100 years), not {}",
            opts.validity_days
        );
    }
    let common_name = opts.common_name.trim();
    if common_name.is_empty() {
        bail!("the CA's common name is empty");
    }
    let files = CaFiles {
        cert: opts.out.join(CA_CERT_FILE),
        key: opts.out.join(CA_KEY_FILE),
    };
    // Checked up front so that a refusal leaves nothing half-written; `create_new` below closes
    // the race with a concurrent `init`.
    for path in [&files.cert, &files.key] {
        if path.symlink_metadata().is_ok() {
            bail!(
                "`{}` already exists; a CA is never overwritten: remove `{}` and `{}` first, or \
                 pick another `--out` directory",
                path.display(),
                files.cert.display(),
                files.key.display()
            );
        }
    }

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generating the CA key")?;
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(opts.validity_days));
    params.serial_number = Some(random_serial());
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "tenant-proxy");
    params.distinguished_name = dn;
    // Path length 0: the CA signs leaves only, so a stolen key cannot even found a sub-CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    if !permitted.is_empty() {
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: permitted.into_iter().map(GeneralSubtree::DnsName).collect(),
            // RFC 5280 leaves a name type without subtrees unconstrained, so a DNS-only
            // constraint would still let the key sign for any IP address. Exclude them all.
            excluded_subtrees: vec![
                GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])),
                GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])),
            ],
        });
    }
    let cert = params
        .self_signed(&key)
        .context("signing the CA certificate")?;

    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&opts.out)
        .with_context(|| format!("creating `{}`", opts.out.display()))?;
    let key_pem = Zeroizing::new(key.serialize_pem());
    write_new(&files.key, key_pem.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&files.cert, cert.pem().as_bytes(), 0o644) {
        // A key without its certificate is useless and dangerous to leave lying around.
        let _ = std::fs::remove_file(&files.key);
        return Err(e);
    }
    Ok(files)
}

/// Creates `path` with `mode` from the first byte (never wider, even briefly), refusing to
/// replace anything.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating `{}`", path.display()))?;
    // The umask may have narrowed the mode; the certificate is meant to be readable by clients.
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// A positive 127-bit serial: RFC 5280 wants them unique per issuer, and CA/B rules want at
/// least 64 random bits.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// `api.openai.com` or `.example.com`, lowercased; anything a name constraint cannot express is
/// refused with the spelling that would work.
fn normalize_constraint(raw: &str) -> anyhow::Result<String> {
    let lower = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    if lower.parse::<IpAddr>().is_ok() || lower.parse::<ipnet::IpNet>().is_ok() {
        bail!("`{raw}`: IP address constraints are not supported; a constrained CA excludes all IP addresses");
    }
    if let Some(rest) = lower.strip_prefix("*.") {
        bail!("`{raw}`: wildcards are not name constraints; write `.{rest}` for subdomains only or `{rest}` for the domain and its subdomains");
    }
    let bare = lower.strip_prefix('.').unwrap_or(&lower);
    if !valid_dns_name(bare) {
        bail!("`{raw}` is not a DNS name");
    }
    Ok(lower)
}

/// Lowercase LDH labels (and `_`, which real hostnames use); no wildcards.
fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
}

/// Lowercase, without a trailing dot or IPv6 brackets: one spelling per host, so one cache entry.
fn normalize_name(name: &str) -> Cow<'_, str> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let trimmed = trimmed
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(trimmed);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

/// A validated leaf subject.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LeafName {
    Dns(String),
    Ip(IpAddr),
}

impl LeafName {
    fn parse(normalized: &str) -> Option<Self> {
        if let Ok(ip) = normalized.parse::<IpAddr>() {
            return Some(Self::Ip(ip));
        }
        valid_dns_name(normalized).then(|| Self::Dns(normalized.to_owned()))
    }
}

/// The name constraints read from the CA certificate itself, so that a constrained CA made
/// elsewhere is honoured just the same.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct NameRules {
    /// `None`: no permitted subtrees at all.
    permitted: Option<Subtrees>,
    excluded: Subtrees,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Subtrees {
    /// Lowercase, trailing dot removed; a leading dot kept (subdomains only).
    dns: Vec<String>,
    /// Address and mask, 4+4 or 16+16 bytes as encoded.
    ip: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Subtrees {
    fn from_x509(subtrees: Option<&Vec<x509_parser::extensions::GeneralSubtree<'_>>>) -> Self {
        use x509_parser::extensions::GeneralName;
        let mut out = Self::default();
        for subtree in subtrees.into_iter().flatten() {
            match &subtree.base {
                GeneralName::DNSName(d) => {
                    out.dns.push(d.trim_end_matches('.').to_ascii_lowercase())
                }
                GeneralName::IPAddress(b) if b.len() == 8 || b.len() == 32 => {
                    let (addr, mask) = b.split_at(b.len() / 2);
                    out.ip.push((addr.to_vec(), mask.to_vec()));
                }
                _ => {}
            }
        }
        out
    }

    fn dns_matches(&self, name: &str) -> bool {
        self.dns.iter().any(|c| dns_in_subtree(name, c))
    }

    fn ip_matches(&self, ip: IpAddr) -> bool {
        let bytes = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        self.ip.iter().any(|(addr, mask)| {
            addr.len() == bytes.len()
                && bytes
                    .iter()
                    .zip(addr)
                    .zip(mask)
                    .all(|((b, a), m)| b & m == a & m)
        })
    }

    fn is_empty(&self) -> bool {
        self.dns.is_empty() && self.ip.is_empty()
    }
}

/// RFC 5280 §4.2.1.10: `example.com` covers itself and every subdomain, `.example.com` only
/// subdomains, and the empty constraint everything.
fn dns_in_subtree(name: &str, constraint: &str) -> bool {
    if constraint.is_empty() {
        return true;
    }
    match name.strip_suffix(constraint) {
        None => false,
        Some(rest) if constraint.starts_with('.') => !rest.is_empty(),
        Some(rest) => rest.is_empty() || rest.ends_with('.'),
    }
}

impl NameRules {
    /// Stricter than RFC 5280 in one way: once a CA has any permitted subtree, a name type with
    /// none (an IP address under DNS-only constraints, say) is refused rather than left
    /// unconstrained. A constrained CA says which hosts it is for; anything else is not.
    fn permits(&self, name: &LeafName) -> bool {
        match name {
            LeafName::Dns(d) => {
                if self.excluded.dns_matches(d) {
                    return false;
                }
                match &self.permitted {
                    None => true,
                    Some(p) => p.dns_matches(d),
                }
            }
            LeafName::Ip(ip) => {
                if self.excluded.ip_matches(*ip) {
                    return false;
                }
                match &self.permitted {
                    None => true,
                    Some(p) => p.ip_matches(*ip),
                }
            }
        }
    }
}

/// What the proxy needs to know about a CA certificate, checked once at load.
struct CaCert {
    der: CertificateDer<'static>,
    subject: String,
    not_before: SystemTime,
    not_after: SystemTime,
    rules: NameRules,
}

/// Parses a PEM file holding exactly one CA certificate and nothing secret.
pub(crate) fn parse_ca_cert_pem(pem: &[u8]) -> anyhow::Result<CertificateDer<'static>> {
    Ok(inspect_ca_cert(pem)?.der)
}

fn inspect_ca_cert(pem: &[u8]) -> anyhow::Result<CaCert> {
    let mut certs = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        let (kind, der) = section.map_err(|e| anyhow::anyhow!("malformed PEM: {e}"))?;
        match kind {
            SectionKind::Certificate => certs.push(CertificateDer::from(der)),
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey => {
                // This file is handed to every client; a key in it would be handed out too.
                bail!("the certificate file also holds a private key; keep the key in its own file")
            }
            _ => {}
        }
    }
    let der = match certs.len() {
        0 => bail!("no PEM certificate found"),
        1 => certs.remove(0),
        n => bail!("{n} certificates found; expected the CA certificate alone"),
    };
    let (_, x509) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("not a valid X.509 certificate: {e}"))?;
    let is_ca = x509
        .basic_constraints()
        .map_err(|e| anyhow::anyhow!("unreadable basicConstraints: {e}"))?
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        bail!(
            "`{}` is not a CA certificate (no basicConstraints CA:TRUE)",
            x509.subject()
        );
    }
    let key_usage = x509
        .key_usage()
        .map_err(|e| anyhow::anyhow!("unreadable keyUsage: {e}"))?;
    if key_usage.is_some_and(|ku| !ku.value.key_cert_sign()) {
        bail!(
            "`{}` may not sign certificates (keyUsage lacks keyCertSign)",
            x509.subject()
        );
    }
    let rules = match x509
        .name_constraints()
        .map_err(|e| anyhow::anyhow!("unreadable nameConstraints: {e}"))?
    {
        None => NameRules::default(),
        Some(nc) => {
            let permitted = Subtrees::from_x509(nc.value.permitted_subtrees.as_ref());
            NameRules {
                permitted: (!permitted.is_empty()).then_some(permitted),
                excluded: Subtrees::from_x509(nc.value.excluded_subtrees.as_ref()),
            }
        }
    };
    let to_system = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    let info = CaCert {
        subject: x509.subject().to_string(),
        not_before: to_system(x509.validity().not_before.timestamp()),
        not_after: to_system(x509.validity().not_after.timestamp()),
        rules,
        der: der.clone(),
    };
    Ok(info)
}

/// The interception CA, loaded and checked: a CA, with its own key, currently valid.
pub struct LocalCa {
    cert: CaCert,
    /// rcgen's key pair keeps its own copy of the PKCS#8 bytes, which it does not zeroize; the
    /// PEM text we read is wiped on drop.
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCa")
            .field("subject", &self.cert.subject)
            .field("not_after", &crate::clock::rfc3339(self.cert.not_after))
            .field("rules", &self.cert.rules)
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// Reads the CA written by [`init`] (or any CA with a PKCS#8 key).
    pub fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<Self> {
        let cert_pem = crate::whole_file::read(cert_path)
            .with_context(|| format!("reading the CA certificate `{}`", cert_path.display()))?;
        let key_pem = read_secret(key_path)
            .with_context(|| format!("reading the CA key `{}`", key_path.display()))?;
        Self::from_pem(&cert_pem, &key_pem).with_context(|| {
            format!(
                "loading the local CA from `{}` and `{}`",
                cert_path.display(),
                key_path.display()
            )
        })
    }

    /// As [`LocalCa::load`], from PEM text.
    pub fn from_pem(cert_pem: &[u8], key_pem: &str) -> anyhow::Result<Self> {
        let cert = inspect_ca_cert(cert_pem)?;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| anyhow::anyhow!("the key is not a PKCS#8 PEM private key: {e}"))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&cert.der)
            .map_err(|e| anyhow::anyhow!("not a valid X.509 certificate: {e}"))?;
        if key.public_key_raw() != x509.public_key().subject_public_key.data.as_ref() {
            bail!(
                "the key does not belong to the certificate `{}`",
                cert.subject
            );
        }
        let now = SystemTime::now();
        if now >= cert.not_after {
            bail!(
                "the CA certificate `{}` expired on {}; create a new one with `tenant-proxy ca init`",
                cert.subject,
                crate::clock::rfc3339(cert.not_after)
            );
        }
        if now < cert.not_before {
            bail!(
                "the CA certificate `{}` is not valid before {}; is the clock right?",
                cert.subject,
                crate::clock::rfc3339(cert.not_before)
            );
        }
        let issuer = Issuer::from_ca_cert_der(&cert.der, key)
            .map_err(|e| anyhow::anyhow!("reading the CA certificate: {e}"))?;
        Ok(Self { cert, issuer })
    }

    /// Whether the CA's name constraints allow a leaf for `name` (DNS name or IP literal).
    /// Clients enforce the same constraints, so a leaf this refuses would be rejected anyway,
    /// with a far less helpful error. See [`NameRules::permits`] for the one stricter point.
    pub fn permits(&self, name: &str) -> bool {
        LeafName::parse(&normalize_name(name)).is_some_and(|n| self.cert.rules.permits(&n))
    }

    /// The CA certificate, second in every chain served.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert.der
    }

    /// When the CA stops being usable; worth alerting on well before.
    pub fn not_after(&self) -> SystemTime {
        self.cert.not_after
    }
}

/// Reads a key file into memory that is wiped on drop, sized up front so no reallocation
/// leaves a stray copy behind.
fn read_secret(path: &Path) -> std::io::Result<Zeroizing<String>> {
    let mut f = crate::whole_file::open_regular(path)?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut text = Zeroizing::new(String::with_capacity(
        usize::try_from(len).unwrap_or(0).saturating_add(1),
    ));
    f.read_to_string(&mut text)?;
    Ok(text)
}

/// Why no leaf was minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("`{0}` is not a DNS name or IP address")]
    InvalidName(String),
    #[error("the local CA's name constraints do not cover `{0}`")]
    NotPermitted(String),
    #[error("the local CA has expired; create a new one with `tenant-proxy ca init`")]
    CaExpired,
    #[error("minting a certificate for `{name}`: {reason}")]
    Mint { name: String, reason: String },
}

#[derive(Clone)]
struct CachedLeaf {
    key: Arc<CertifiedKey>,
    /// Half the lifetime: a client that keeps a connection open for a few hours still sees a
    /// certificate well within its validity.
    renew_after: SystemTime,
    not_after: SystemTime,
    /// Its `notBefore`: a leaf minted while the clock ran ahead is not valid yet once the clock
    /// is set right, and clients refuse it until then.
    not_before: SystemTime,
}

impl CachedLeaf {
    /// Whether it is served at `now` rather than minted again: valid already, and not yet
    /// half through its life.
    fn fresh(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.renew_after
    }
}

/// A cached leaf's key: the tenant whose tunnels it serves, and the host.
type LeafKey = (TenantId, String);

/// Mints and caches leaves. Shared by every tunnel (`Arc`); a cache hit is lock-free, since it
/// is on the path of every intercepted connection, while misses (a new host, or a renewal twice
/// a day) copy the map.
///
/// SECURITY: leaves are cached per tenant. A cache shared by tenants answers a tunnel to a host
/// that another tenant intercepted lately faster (no key to generate, no signature) than one to
/// a host nobody did, and that difference, timed by a tenant's own client, tells it where the
/// other tenants go. Each tenant mints its own leaf for a host, once per renewal.
pub struct LeafMinter {
    ca: LocalCa,
    ttl: Duration,
    max_entries: usize,
    cache: ArcSwap<HashMap<LeafKey, CachedLeaf>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl fmt::Debug for LeafMinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeafMinter")
            .field("ca", &self.ca)
            .field("ttl", &self.ttl)
            .field("max_entries", &self.max_entries)
            .field("cached", &self.cached_entries())
            .field("hits", &self.hits.load(Ordering::Relaxed))
            .field("misses", &self.misses.load(Ordering::Relaxed))
            .finish()
    }
}

impl LeafMinter {
    /// `ttl` is the leaf lifetime ([`DEFAULT_LEAF_TTL`]); `max_entries` bounds the cache
    /// ([`DEFAULT_MAX_LEAVES`], at least 1).
    pub fn new(ca: LocalCa, ttl: Duration, max_entries: usize) -> Self {
        Self {
            ca,
            ttl,
            max_entries: max_entries.max(1),
            cache: ArcSwap::from_pointee(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The CA leaves are minted by.
    pub fn ca(&self) -> &LocalCa {
        &self.ca
    }

    /// A leaf and chain `[leaf, ca]` for `name`, a DNS name or an IP literal, from `tenant`'s
    /// leaves.
    pub fn certified_key(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Arc<CertifiedKey>, MintError> {
        self.certified_key_at(tenant, name, SystemTime::now())
    }

    /// [`Self::certified_key`], the clock reading `now`.
    fn certified_key_at(
        &self,
        tenant: &TenantId,
        name: &str,
        now: SystemTime,
    ) -> Result<Arc<CertifiedKey>, MintError> {
        let key: LeafKey = (tenant.clone(), normalize_name(name).into_owned());
        let name = key.1.as_str();
        // Only valid, permitted names are ever cached, so a hit needs no further checks.
        if let Some(leaf) = self.cache.load().get(&key) {
            if leaf.fresh(now) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                crate::metrics::METRICS
                    .leaf_certificates
                    .with_label_values(&["hit"])
                    .inc();
                return Ok(Arc::clone(&leaf.key));
            }
        }
        let leaf_name =
            LeafName::parse(name).ok_or_else(|| MintError::InvalidName(name.to_string()))?;
        if !self.ca.cert.rules.permits(&leaf_name) {
            return Err(MintError::NotPermitted(name.to_string()));
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        crate::metrics::METRICS
            .leaf_certificates
            .with_label_values(&["miss"])
            .inc();
        let minted = self.mint(&leaf_name, now)?;
        self.cache.rcu(|old| {
            let mut map = HashMap::clone(old);
            // Two tunnels to a new host may mint at once; the first leaf stored wins, so all
            // of them end up serving one.
            if map.get(&key).is_some_and(|l| l.fresh(now)) {
                return map;
            }
            if !map.contains_key(&key) {
                make_room(&mut map, self.max_entries, now, &key.0);
            }
            map.insert(key.clone(), minted.clone());
            map
        });
        Ok(self
            .cache
            .load()
            .get(&key)
            .filter(|l| l.fresh(now))
            .map_or(minted.key, |l| Arc::clone(&l.key)))
    }

    /// `(hits, misses)`; a miss is a leaf minted.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Leaves currently cached.
    pub fn cached_entries(&self) -> usize {
        self.cache.load().len()
    }

    fn mint(&self, name: &LeafName, now: SystemTime) -> Result<CachedLeaf, MintError> {
        let label = match name {
            LeafName::Dns(d) => d.clone(),
            LeafName::Ip(ip) => ip.to_string(),
        };
        let fail = |reason: String| MintError::Mint {
            name: label.clone(),
            reason,
        };
        let lifetime = self.ttl.min(
            self.ca
                .cert
                .not_after
                .duration_since(now)
                .unwrap_or_default(),
        );
        if lifetime.is_zero() {
            return Err(MintError::CaExpired);
        }
        let not_after = now + lifetime;
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| fail(e.to_string()))?;
        let mut params = CertificateParams::default();
        let not_before = now.checked_sub(CLOCK_SKEW).unwrap_or(now);
        params.not_before = OffsetDateTime::from(not_before);
        params.not_after = OffsetDateTime::from(not_after);
        params.serial_number = Some(random_serial());
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, label.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![match name {
            LeafName::Dns(d) => SanType::DnsName(
                d.as_str()
                    .try_into()
                    .map_err(|e: rcgen::Error| fail(e.to_string()))?,
            ),
            LeafName::Ip(ip) => SanType::IpAddress(*ip),
        }];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.ca.issuer)
            .map_err(|e| fail(e.to_string()))?;
        let der = Zeroizing::new(key.serialize_der());
        let signer = rustls::crypto::ring::sign::any_ecdsa_type(&PrivateKeyDer::Pkcs8(
            PrivatePkcs8KeyDer::from(der.as_slice()),
        ))
        .map_err(|e| fail(e.to_string()))?;
        Ok(CachedLeaf {
            key: Arc::new(CertifiedKey::new(
                vec![cert.der().clone(), self.ca.cert.der.clone()],
                signer,
            )),
            renew_after: now + lifetime / 2,
            not_after,
            not_before,
        })
    }
}

/// Keeps the cache under `max` before an insert for `tenant`: stale leaves first (they would be
/// re-minted on their next use anyway), then the ones closest to expiry: `tenant`'s own once it
/// holds a quarter of the cache, so that a tenant minting leaves for many hosts recycles its own
/// and never pushes the other tenants' leaves out (which they would notice as slower handshakes).
fn make_room(
    map: &mut HashMap<LeafKey, CachedLeaf>,
    max: usize,
    now: SystemTime,
    tenant: &TenantId,
) {
    if map.len() < max {
        return;
    }
    map.retain(|_, l| l.fresh(now));
    if map.len() < max {
        return;
    }
    let share = (max / 4).max(1);
    let own = map.keys().filter(|(t, _)| t == tenant).count();
    let mut by_expiry: Vec<(SystemTime, LeafKey)> = map
        .iter()
        .filter(|((t, _), _)| own < share || t == tenant)
        .map(|(k, l)| (l.not_after, k.clone()))
        .collect();
    by_expiry.sort_unstable();
    let excess = map.len() + 1 - max;
    for (_, k) in by_expiry.into_iter().take(excess) {
        map.remove(&k);
    }
}

/// Serves one intercepted tunnel. The tunnel's destination was authorized from the CONNECT
/// target; the ClientHello's SNI must name the same host, or the agent could get a certificate
/// (and then send requests) for a host nobody authorized.
pub struct TunnelCertResolver {
    expected: String,
    minter: Arc<LeafMinter>,
    /// The tunnel's tenant, whose leaves it serves.
    tenant: TenantId,
    seen_sni: OnceLock<Option<String>>,
}

impl fmt::Debug for TunnelCertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelCertResolver")
            .field("expected", &self.expected)
            .field("seen_sni", &self.seen_sni.get())
            .finish_non_exhaustive()
    }
}

impl TunnelCertResolver {
    /// `expected`: the authorized CONNECT host (DNS name or IP literal) of a tunnel of
    /// `tenant`.
    pub fn new(tenant: &TenantId, expected: &str, minter: Arc<LeafMinter>) -> Self {
        Self {
            expected: normalize_name(expected).into_owned(),
            minter,
            tenant: tenant.clone(),
            seen_sni: OnceLock::new(),
        }
    }

    /// `None` before the ClientHello; then the SNI it carried (normalized), if any. The caller
    /// reads it after a failed handshake to audit a mismatch.
    pub fn seen_sni(&self) -> Option<Option<String>> {
        self.seen_sni.get().cloned()
    }
}

impl TunnelCertResolver {
    /// Whether a handshake that named `sni` (the ClientHello's server name, as rustls reports
    /// it) may serve this tunnel: the `CONNECT` host itself, or no name at all (clients send
    /// none for IP literals, RFC 6066; the leaf is then the `CONNECT` host's). The resolver
    /// applies it to every handshake; the tunnel applies it again once any handshake is done,
    /// in case a resumed one ever skips the resolver (see [`crate::tls::resume`]).
    pub fn accepts(&self, sni: Option<&str>) -> bool {
        sni.is_none_or(|s| normalize_name(s) == self.expected)
    }

    /// Whether an SNI names `host` (a normalized `CONNECT` host), as [`Self::accepts`] reads it.
    pub fn same_name(sni: &str, host: &str) -> bool {
        normalize_name(sni) == host
    }
}

impl ResolvesServerCert for TunnelCertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = client_hello
            .server_name()
            .map(|s| normalize_name(s).into_owned());
        let sni = self.seen_sni.get_or_init(|| sni).as_deref();
        if !self.accepts(sni) {
            return None;
        }
        self.minter.certified_key(&self.tenant, &self.expected).ok()
    }
}

/// The TLS server side of an intercepted tunnel: TLS 1.2 and 1.3, no client certificates, and
/// the ALPN protocols the proxy can speak upstream (so the agent does not pick one it cannot).
/// With `sessions` (a scope's tickets), the handshake may resume one of the scope's sessions
/// and issues tickets of it ([`crate::tls::resume`]); without, every handshake is full and
/// nothing is kept for later.
pub fn server_config(
    resolver: Arc<TunnelCertResolver>,
    alpn: &[&[u8]],
    sessions: Option<&Arc<TunnelTickets>>,
) -> Arc<rustls::ServerConfig> {
    // ring is the only provider compiled in, so the default provider is ring.
    let mut config = rustls::ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ])
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Tickets only, never sessions stored by id: the builder's default in-memory store would
    // be one per tunnel, allocated and thrown away with it.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    match sessions {
        Some(tickets) => tickets.apply(&mut config),
        None => config.send_tls13_tickets = 0,
    }
    Arc::new(config)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    use rustls::RootCertStore;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn make_ca(dir: &Path, permitted: &[&str]) -> LocalCa {
        let mut opts = CaInitOptions::new(dir);
        opts.permitted = permitted.iter().map(|s| s.to_string()).collect();
        let files = init(&opts).unwrap();
        LocalCa::load(&files.cert, &files.key).unwrap()
    }

    fn verify(
        ca: &CertificateDer<'static>,
        key: &CertifiedKey,
        name: &str,
    ) -> Result<(), rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        verifier
            .verify_server_cert(
                &key.cert[0],
                &key.cert[1..],
                &ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_writes_cert_0644_and_key_0600() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("nested/ca");
        let files = init(&CaInitOptions::new(&out)).unwrap();
        assert_eq!(files.cert, out.join("ca.pem"));
        assert_eq!(files.key, out.join("ca-key.pem"));
        assert_eq!(mode(&files.cert), 0o644);
        assert_eq!(mode(&files.key), 0o600);
        assert!(std::fs::read_to_string(&files.key)
            .unwrap()
            .contains("BEGIN PRIVATE KEY"));
    }

    #[test]
    fn init_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let files = init(&CaInitOptions::new(dir.path())).unwrap();
        let before = std::fs::read(&files.key).unwrap();
        let err = init(&CaInitOptions::new(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("already exists") && err.contains("remove"),
            "{err}"
        );
        assert_eq!(std::fs::read(&files.key).unwrap(), before);
        // Even with only the certificate left behind.
        std::fs::remove_file(&files.key).unwrap();
        assert!(init(&CaInitOptions::new(dir.path())).is_err());
        assert!(!files.key.exists());
    }

    #[test]
    fn init_rejects_bad_constraints() {
        let dir = tempfile::tempdir().unwrap();
        for (name, permit) in [
            ("wildcard", "*.example.com"),
            ("ip", "10.0.0.1"),
            ("cidr", "10.0.0.0/8"),
            ("empty", ""),
            ("space", "exa mple.com"),
        ] {
            let mut opts = CaInitOptions::new(dir.path().join(name));
            opts.permitted = vec![permit.into()];
            assert!(init(&opts).is_err(), "{name}");
            assert!(!opts.out.exists(), "{name}: nothing written");
        }
    }

    #[test]
    fn load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = CaInitOptions::new(dir.path());
        opts.common_name = "test CA".into();
        opts.validity_days = 30;
        let files = init(&opts).unwrap();
        let ca = LocalCa::load(&files.cert, &files.key).unwrap();
        let pem = std::fs::read(&files.cert).unwrap();
        assert_eq!(ca.cert_der(), &parse_ca_cert_pem(&pem).unwrap());
        let days = ca
            .not_after()
            .duration_since(SystemTime::now())
            .unwrap()
            .as_secs()
            / 86_400;
        assert!((29..=30).contains(&days), "{days}");
        let debug = format!("{ca:?}");
        assert!(debug.contains("test CA"), "{debug}");
        assert!(!debug.contains("PRIVATE"), "{debug}");
    }

    #[test]
    fn load_rejects_non_ca_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = rcgen::generate_simple_self_signed(vec!["example.com".into()]).unwrap();
        let cert = dir.path().join("leaf.pem");
        let key = dir.path().join("leaf-key.pem");
        std::fs::write(&cert, leaf.cert.pem()).unwrap();
        std::fs::write(&key, leaf.signing_key.serialize_pem()).unwrap();
        let err = format!("{:#}", LocalCa::load(&cert, &key).unwrap_err());
        assert!(err.contains("not a CA"), "{err}");
    }

    #[test]
    fn load_rejects_mismatched_key() {
        let dir = tempfile::tempdir().unwrap();
        let a = init(&CaInitOptions::new(dir.path().join("a"))).unwrap();
        let b = init(&CaInitOptions::new(dir.path().join("b"))).unwrap();
        let err = format!("{:#}", LocalCa::load(&a.cert, &b.key).unwrap_err());
        assert!(err.contains("does not belong"), "{err}");
    }

    #[test]
    fn load_rejects_unreadable_and_key_in_cert_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = init(&CaInitOptions::new(dir.path())).unwrap();
        let err = format!(
            "{:#}",
            LocalCa::load(&dir.path().join("nope.pem"), &files.key).unwrap_err()
        );
        assert!(err.contains("reading the CA certificate"), "{err}");
        let both = dir.path().join("both.pem");
        let mut text = std::fs::read_to_string(&files.cert).unwrap();
        text.push_str(&std::fs::read_to_string(&files.key).unwrap());
        std::fs::write(&both, text).unwrap();
        let err = format!("{:#}", LocalCa::load(&both, &files.key).unwrap_err());
        assert!(err.contains("private key"), "{err}");
    }

    #[test]
    fn load_rejects_expired_ca() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        let err = LocalCa::from_pem(cert.pem().as_bytes(), &key.serialize_pem())
            .unwrap_err()
            .to_string();
        assert!(err.contains("expired"), "{err}");
    }

    #[test]
    fn permits_follows_rfc5280() {
        let dir = tempfile::tempdir().unwrap();
        let ca = make_ca(dir.path(), &["api.openai.com", ".example.com"]);
        for (case, name, want) in [
            ("exact", "api.openai.com", true),
            ("exact, uppercase and trailing dot", "API.OpenAI.com.", true),
            ("subdomain of a bare constraint", "eu.api.openai.com", true),
            ("parent of a bare constraint", "openai.com", false),
            ("suffix without a dot boundary", "xapi.openai.com", false),
            ("leading dot: subdomain", "a.example.com", true),
            ("leading dot: deep subdomain", "a.b.example.com", true),
            ("leading dot: not the domain itself", "example.com", false),
            ("outside", "evil.com", false),
            ("ip under dns constraints", "127.0.0.1", false),
            ("invalid", "bad name", false),
            ("empty", "", false),
        ] {
            assert_eq!(ca.permits(name), want, "{case}: {name}");
        }
        let open = make_ca(&dir.path().join("open"), &[]);
        assert!(open.permits("anything.example"));
        assert!(open.permits("10.1.2.3"));
        assert!(open.permits("[::1]"));
    }

    #[test]
    fn ip_constraints_from_a_foreign_ca_are_honoured() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix(
                [10, 0, 0, 0],
                8,
            ))],
            excluded_subtrees: vec![GeneralSubtree::DnsName("bad.example".into())],
        });
        let cert = params.self_signed(&key).unwrap();
        let ca = LocalCa::from_pem(cert.pem().as_bytes(), &key.serialize_pem()).unwrap();
        assert!(ca.permits("10.1.2.3"));
        assert!(!ca.permits("11.1.2.3"));
        assert!(!ca.permits("::1"));
        assert!(!ca.permits("good.example"), "no DNS subtree: refused");
        assert!(!ca.permits("x.bad.example"));
    }

    #[test]
    fn minted_leaf_verifies_for_its_name_only() {
        let dir = tempfile::tempdir().unwrap();
        let minter = LeafMinter::new(make_ca(dir.path(), &[]), DEFAULT_LEAF_TTL, 16);
        let key = minter.certified_key(&acme(), "api.openai.com").unwrap();
        assert_eq!(key.cert.len(), 2);
        assert_eq!(&key.cert[1], minter.ca().cert_der());
        verify(minter.ca().cert_der(), &key, "api.openai.com").unwrap();
        assert!(verify(minter.ca().cert_der(), &key, "api.anthropic.com").is_err());

        let (_, leaf) = x509_parser::parse_x509_certificate(&key.cert[0]).unwrap();
        assert!(!leaf.is_ca());
        let lifetime =
            leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
        assert_eq!(lifetime, 12 * 3600 + 300);
        assert!(leaf
            .extended_key_usage()
            .unwrap()
            .is_some_and(|e| e.value.server_auth));
        let (_, ca) = x509_parser::parse_x509_certificate(minter.ca().cert_der()).unwrap();
        let ski = ca
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                    Some(k.0.to_vec())
                }
                _ => None,
            });
        let aki = leaf
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(k) => {
                    k.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            });
        assert!(ski.is_some());
        assert_eq!(aki, ski);
    }

    #[test]
    fn ip_leaf_has_ip_san() {
        let dir = tempfile::tempdir().unwrap();
        let minter = LeafMinter::new(make_ca(dir.path(), &[]), DEFAULT_LEAF_TTL, 16);
        let key = minter.certified_key(&acme(), "127.0.0.1").unwrap();
        verify(minter.ca().cert_der(), &key, "127.0.0.1").unwrap();
        assert!(verify(minter.ca().cert_der(), &key, "127.0.0.2").is_err());
        let v6 = minter.certified_key(&acme(), "[::1]").unwrap();
        verify(minter.ca().cert_der(), &v6, "::1").unwrap();
    }

    fn acme() -> TenantId {
        TenantId::new("acme").unwrap()
    }

    /// A tenant never gets a leaf another tenant's tunnel made: the cache would otherwise tell
    /// it, by how fast its handshake is, where the other tenant goes.
    /// A leaf minted while the clock ran a day ahead is not valid yet once the clock is set
    /// right: the next tunnel gets a leaf minted anew, not that one (clients refused it until
    /// the cached leaf's renewal, a day and a half later).
    #[test]
    fn a_leaf_minted_ahead_of_the_clock_is_not_served_once_it_is_set_right() {
        let dir = tempfile::tempdir().unwrap();
        let minter = LeafMinter::new(make_ca(dir.path(), &[]), DEFAULT_LEAF_TTL, 16);
        let now = SystemTime::now();
        let ahead = minter
            .certified_key_at(&acme(), "api.openai.com", now + Duration::from_secs(86_400))
            .unwrap();
        let set_right = minter
            .certified_key_at(&acme(), "api.openai.com", now)
            .unwrap();
        assert!(!Arc::ptr_eq(&ahead, &set_right));
        assert_eq!(minter.stats(), (0, 2), "minted again");
        verify(minter.ca().cert_der(), &set_right, "api.openai.com").unwrap();
        // Served from the cache from then on.
        let again = minter
            .certified_key_at(&acme(), "api.openai.com", now)
            .unwrap();
        assert!(Arc::ptr_eq(&set_right, &again));
    }

    #[test]
    fn leaves_are_cached_per_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let minter = LeafMinter::new(make_ca(dir.path(), &[]), DEFAULT_LEAF_TTL, 16);
        let globex = TenantId::new("globex").unwrap();
        let a = minter.certified_key(&acme(), "api.openai.com").unwrap();
        let g = minter.certified_key(&globex, "api.openai.com").unwrap();
        assert!(!Arc::ptr_eq(&a, &g));
        assert_ne!(a.cert[0], g.cert[0], "globex was served acme's leaf");
        assert_eq!(
            minter.stats(),
            (0, 2),
            "globex's first tunnel minted its own"
        );
        verify(minter.ca().cert_der(), &g, "api.openai.com").unwrap();
        // Each tenant's next tunnel reuses its own.
        assert!(Arc::ptr_eq(
            &a,
            &minter.certified_key(&acme(), "api.openai.com").unwrap()
        ));
        assert!(Arc::ptr_eq(
            &g,
            &minter.certified_key(&globex, "API.openai.com.").unwrap()
        ));
        assert_eq!(minter.stats(), (2, 2));
        // And so does a resolver of each tenant's tunnel.
        let resolver = TunnelCertResolver::new(&globex, "api.openai.com", Arc::new(minter));
        let served = resolver
            .minter
            .certified_key(&resolver.tenant, &resolver.expected)
            .unwrap();
        assert!(Arc::ptr_eq(&g, &served));
    }

    #[test]
    fn cache_hit_returns_same_leaf_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let minter = LeafMinter::new(make_ca(dir.path(), &[]), DEFAULT_LEAF_TTL, 16);
        let a = minter.certified_key(&acme(), "api.openai.com").unwrap();
        let b = minter.certified_key(&acme(), "api.openai.com").unwrap();
        let c = minter.certified_key(&acme(), "API.openai.com.").unwrap();
        assert!(Arc::ptr_eq(&a, &b) && Arc::ptr_eq(&a, &c));
        assert_eq!(minter.stats(), (2, 1));
        minter.certified_key(&acme(), "other.example").unwrap();
        assert_eq!(minter.stats(), (2, 2));
        assert_eq!(minter.cached_entries(), 2);
        assert!(minter.certified_key(&acme(), "").is_err());
        assert_eq!(minter.stats(), (2, 2), "refusals are neither");
        let debug = format!("{minter:?}");
        assert!(
            debug.contains("hits: 2") && !debug.contains("PRIVATE"),
            "{debug}"
        );
    }

    #[test]
    fn leaf_is_renewed_past_half_its_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let minter = LeafMinter::new(make_ca(dir.path(), &[]), Duration::from_secs(2), 16);
        let a = minter.certified_key(&acme(), "api.openai.com").unwrap();
        let b = minter.certified_key(&acme(), "api.openai.com").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        std::thread::sleep(Duration::from_millis(1100));
        let c = minter.certified_key(&acme(), "api.openai.com").unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(minter.stats(), (1, 2));
        assert_eq!(minter.cached_entries(), 1);
    }

    #[test]
    fn cache_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let minter = LeafMinter::new(make_ca(dir.path(), &[]), DEFAULT_LEAF_TTL, 3);
        for i in 0..10 {
            minter
                .certified_key(&acme(), &format!("h{i}.example"))
                .unwrap();
            assert!(minter.cached_entries() <= 3);
        }
        assert_eq!(minter.cached_entries(), 3);
        // The newest survive: they expire last.
        minter.certified_key(&acme(), "h9.example").unwrap();
        assert_eq!(minter.stats(), (1, 10));
    }

    /// A tenant minting leaves for host after host recycles its own once it holds a quarter of
    /// the cache: another tenant's leaf, older and closer to expiry, stays cached.
    #[test]
    fn a_tenant_minting_many_leaves_never_pushes_out_anothers() {
        let dir = tempfile::tempdir().unwrap();
        let minter = LeafMinter::new(make_ca(dir.path(), &[]), DEFAULT_LEAF_TTL, 8);
        let globex = TenantId::new("globex").unwrap();
        let kept = minter.certified_key(&globex, "api.openai.com").unwrap();
        for i in 0..40 {
            minter
                .certified_key(&acme(), &format!("h{i}.example"))
                .unwrap();
            assert!(minter.cached_entries() <= 8);
        }
        assert!(Arc::ptr_eq(
            &kept,
            &minter.certified_key(&globex, "api.openai.com").unwrap()
        ));
        assert_eq!(minter.stats(), (1, 41), "globex's leaf was a hit");
        // acme's most recent leaves are the ones it kept.
        minter.certified_key(&acme(), "h39.example").unwrap();
        assert_eq!(minter.stats(), (2, 41));
    }

    #[test]
    fn make_room_evicts_stale_then_earliest_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let minter = LeafMinter::new(make_ca(dir.path(), &[]), DEFAULT_LEAF_TTL, 16);
        let key = minter.certified_key(&acme(), "x.example").unwrap();
        let now = SystemTime::now();
        let leaf = |renew: i64, expiry: u64| CachedLeaf {
            key: Arc::clone(&key),
            renew_after: if renew < 0 {
                now - Duration::from_secs(1)
            } else {
                now + Duration::from_secs(renew as u64)
            },
            not_after: now + Duration::from_secs(expiry),
            not_before: now - Duration::from_secs(60),
        };
        let mut map = HashMap::from([
            ((acme(), "stale".to_owned()), leaf(-1, 100)),
            ((acme(), "soon".to_owned()), leaf(10, 20)),
            ((acme(), "late".to_owned()), leaf(10, 50)),
            ((acme(), "later".to_owned()), leaf(10, 60)),
        ]);
        make_room(&mut map, 3, now, &acme());
        let mut left: Vec<_> = map.keys().map(|(_, host)| host.clone()).collect();
        left.sort();
        assert_eq!(left, ["late", "later"]);
    }

    #[test]
    fn constrained_ca_refuses_outside_names() {
        let dir = tempfile::tempdir().unwrap();
        let minter = LeafMinter::new(
            make_ca(dir.path(), &["api.openai.com"]),
            DEFAULT_LEAF_TTL,
            16,
        );
        let key = minter.certified_key(&acme(), "api.openai.com").unwrap();
        verify(minter.ca().cert_der(), &key, "api.openai.com").unwrap();
        assert!(matches!(
            minter.certified_key(&acme(), "evil.com"),
            Err(MintError::NotPermitted(n)) if n == "evil.com"
        ));
        assert!(matches!(
            minter.certified_key(&acme(), "10.0.0.1"),
            Err(MintError::NotPermitted(_))
        ));
        assert!(matches!(
            minter.certified_key(&acme(), "*.x.com"),
            Err(MintError::InvalidName(_))
        ));
        assert!(matches!(
            minter.certified_key(&acme(), ""),
            Err(MintError::InvalidName(_))
        ));
    }

    #[test]
    fn clients_reject_leaves_outside_the_constraints() {
        // Bypasses `permits` as a stolen CA key would: clients still refuse, for DNS names and
        // (thanks to the IP exclusion) for IP addresses.
        let dir = tempfile::tempdir().unwrap();
        let minter = LeafMinter::new(
            make_ca(dir.path(), &["api.openai.com"]),
            DEFAULT_LEAF_TTL,
            16,
        );
        let now = SystemTime::now();
        let evil = minter.mint(&LeafName::Dns("evil.com".into()), now).unwrap();
        assert!(verify(minter.ca().cert_der(), &evil.key, "evil.com").is_err());
        let ip = minter
            .mint(&LeafName::Ip("10.0.0.1".parse().unwrap()), now)
            .unwrap();
        assert!(verify(minter.ca().cert_der(), &ip.key, "10.0.0.1").is_err());
    }

    #[test]
    fn types_are_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<LeafMinter>();
        assert_send_sync::<TunnelCertResolver>();
    }

    /// A real handshake over an in-memory pipe; returns the client's result.
    async fn handshake(
        resolver: Arc<TunnelCertResolver>,
        ca: &CertificateDer<'static>,
        server_name: ServerName<'static>,
    ) -> Result<Option<Vec<u8>>, std::io::Error> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor =
            tokio_rustls::TlsAcceptor::from(server_config(resolver, &[b"h2", b"http/1.1"], None));
        let server = tokio::spawn(async move {
            let mut tls = acceptor.accept(server_io).await?;
            tls.write_all(b"hi").await?;
            tls.flush().await?;
            Ok::<_, std::io::Error>(())
        });
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let result = async {
            let mut tls = connector.connect(server_name, client_io).await?;
            let mut buf = [0u8; 2];
            tls.read_exact(&mut buf).await?;
            assert_eq!(&buf, b"hi");
            Ok(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
        }
        .await;
        let _ = server.await;
        result
    }

    #[tokio::test]
    async fn resolver_serves_matching_sni() {
        let dir = tempfile::tempdir().unwrap();
        let minter = Arc::new(LeafMinter::new(
            make_ca(dir.path(), &[]),
            DEFAULT_LEAF_TTL,
            16,
        ));
        let resolver = Arc::new(TunnelCertResolver::new(
            &acme(),
            "API.openai.com",
            Arc::clone(&minter),
        ));
        assert_eq!(resolver.seen_sni(), None);
        let alpn = handshake(
            Arc::clone(&resolver),
            minter.ca().cert_der(),
            ServerName::try_from("api.openai.com").unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(resolver.seen_sni(), Some(Some("api.openai.com".into())));
    }

    #[tokio::test]
    async fn resolver_refuses_mismatched_sni() {
        let dir = tempfile::tempdir().unwrap();
        let minter = Arc::new(LeafMinter::new(
            make_ca(dir.path(), &[]),
            DEFAULT_LEAF_TTL,
            16,
        ));
        let resolver = Arc::new(TunnelCertResolver::new(
            &acme(),
            "api.openai.com",
            Arc::clone(&minter),
        ));
        let result = handshake(
            Arc::clone(&resolver),
            minter.ca().cert_der(),
            ServerName::try_from("evil.example").unwrap(),
        )
        .await;
        assert!(result.is_err());
        assert_eq!(resolver.seen_sni(), Some(Some("evil.example".into())));
        assert_eq!(minter.stats(), (0, 0), "nothing minted for the wrong host");
    }

    #[tokio::test]
    async fn resolver_without_sni_uses_expected_ip() {
        let dir = tempfile::tempdir().unwrap();
        let minter = Arc::new(LeafMinter::new(
            make_ca(dir.path(), &[]),
            DEFAULT_LEAF_TTL,
            16,
        ));
        let resolver = Arc::new(TunnelCertResolver::new(
            &acme(),
            "127.0.0.1",
            Arc::clone(&minter),
        ));
        handshake(
            Arc::clone(&resolver),
            minter.ca().cert_der(),
            ServerName::IpAddress("127.0.0.1".parse::<IpAddr>().unwrap().into()),
        )
        .await
        .unwrap();
        assert_eq!(resolver.seen_sni(), Some(None));
    }

    /// What one handshake of [`resumable`] saw: the client's handshake kind (`None`: the
    /// handshake failed), whether the server accepted a ticket, the SNI it negotiated, and what
    /// its resolver saw.
    #[derive(Debug)]
    struct Seen {
        kind: Option<rustls::HandshakeKind>,
        ticket_accepted: bool,
        server_sni: Option<String>,
        resolver_saw: Option<Option<String>>,
    }

    /// A handshake over an in-memory pipe with `client` (rustls clients resume only sessions
    /// stored under the same config: share it between calls), against a tunnel of `expected`
    /// whose sessions are `scope`'s. The client reads one byte, so TLS 1.3 tickets sent after
    /// the handshake reach its store.
    async fn resumable(
        minter: &Arc<LeafMinter>,
        expected: &str,
        scope: Option<&crate::tls::resume::SessionScope>,
        client: &Arc<rustls::ClientConfig>,
        sni: &str,
    ) -> Seen {
        let resolver = Arc::new(TunnelCertResolver::new(
            &acme(),
            expected,
            Arc::clone(minter),
        ));
        let tickets = scope.map(|s| s.for_tunnel());
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(
            Arc::clone(&resolver),
            &[b"http/1.1"],
            tickets.as_ref(),
        ));
        let server = tokio::spawn(async move {
            let mut tls = acceptor.accept(server_io).await.ok()?;
            let name = tls.get_ref().1.server_name().map(str::to_owned);
            tls.write_all(b"!").await.unwrap();
            tls.flush().await.unwrap();
            let mut rest = Vec::new();
            let _ = tls.read_to_end(&mut rest).await;
            name
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(client));
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let kind = match connector.connect(name, client_io).await {
            Ok(mut tls) => {
                let kind = tls.get_ref().1.handshake_kind();
                let mut one = [0u8; 1];
                tls.read_exact(&mut one).await.unwrap();
                tls.shutdown().await.unwrap();
                kind
            }
            Err(_) => None,
        };
        Seen {
            kind,
            ticket_accepted: tickets.is_some_and(|t| t.resumed()),
            server_sni: server.await.unwrap(),
            resolver_saw: resolver.seen_sni(),
        }
    }

    #[tokio::test]
    async fn sessions_resume_within_a_scope_only_and_never_across_hosts() {
        use crate::ids::{TenantId, WorkloadId};
        use crate::tls::resume::SessionScopes;
        use rustls::HandshakeKind::{Full, Resumed};
        let dir = tempfile::tempdir().unwrap();
        let minter = Arc::new(LeafMinter::new(
            make_ca(dir.path(), &[]),
            DEFAULT_LEAF_TTL,
            16,
        ));
        let scopes = SessionScopes::new(Duration::from_secs(600), 16).unwrap();
        let (acme_id, bot) = (
            TenantId::new("acme").unwrap(),
            WorkloadId::new("bot").unwrap(),
        );
        let (globex, agent) = (
            TenantId::new("globex").unwrap(),
            WorkloadId::new("agent").unwrap(),
        );
        let host = "api.openai.com";
        for tls12 in [false, true] {
            let a = scopes.scope(1, &acme_id, &bot).unwrap();
            let b = scopes.scope(1, &globex, &agent).unwrap();
            let client = client_config(&minter, tls12);
            let go = |scope, expected, sni| resumable(&minter, expected, scope, &client, sni);

            let first = go(Some(&*a), host, host).await;
            assert_eq!(first.kind, Some(Full), "tls12={tls12}");
            assert!(!first.ticket_accepted);
            let again = go(Some(&*a), host, host).await;
            assert_eq!(again.kind, Some(Resumed), "tls12={tls12}");
            assert!(again.ticket_accepted, "tls12={tls12}");
            assert_eq!(again.server_sni.as_deref(), Some(host));
            // rustls asks the resolver in a resumed handshake too (it picks the certificate
            // before it looks at tickets), so the SNI check runs either way.
            assert_eq!(again.resolver_saw, Some(Some(host.into())));

            // The session presented in a tunnel to another host with the session's SNI: rustls
            // would resume it (the SNI is the session's), the resolver refuses it.
            let elsewhere = go(Some(&*a), "other.example", host).await;
            assert_eq!(elsewhere.kind, None, "tls12={tls12}: refused");
            assert_eq!(elsewhere.resolver_saw, Some(Some(host.into())));
            // And the tunnel's own check after the handshake says the same.
            let resolver = TunnelCertResolver::new(&acme(), "other.example", Arc::clone(&minter));
            assert!(!resolver.accepts(again.server_sni.as_deref()));
            assert!(resolver.accepts(Some("Other.Example.")));
            assert!(resolver.accepts(None), "no SNI: as the resolver has it");

            // Another tenant's scope: its keys cannot open the ticket, so a full handshake.
            let other = go(Some(&*b), host, host).await;
            assert_eq!(other.kind, Some(Full), "tls12={tls12}");
            assert!(!other.ticket_accepted);
            // No scope: a full handshake.
            let unscoped = go(None, host, host).await;
            assert_eq!(unscoped.kind, Some(Full), "tls12={tls12}");
        }
        // A new snapshot's scope of the same workload: new keys, a full handshake.
        let client = client_config(&minter, false);
        let old = scopes.scope(1, &acme_id, &bot).unwrap();
        let seen = resumable(&minter, host, Some(&old), &client, host).await;
        let seen2 = resumable(&minter, host, Some(&old), &client, host).await;
        assert_eq!((seen.kind, seen2.kind), (Some(Full), Some(Resumed)));
        let new = scopes.scope(2, &acme_id, &bot).unwrap();
        let after = resumable(&minter, host, Some(&new), &client, host).await;
        assert_eq!(after.kind, Some(Full));
        // A server without a scope issues nothing to resume.
        let client = client_config(&minter, false);
        for _ in 0..2 {
            let seen = resumable(&minter, "x.example", None, &client, "x.example").await;
            assert_eq!(seen.kind, Some(Full));
        }
    }

    /// A client trusting `minter`'s CA, speaking TLS 1.2 or 1.3 only, with its own session
    /// store.
    fn client_config(minter: &LeafMinter, tls12: bool) -> Arc<rustls::ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(minter.ca().cert_der().clone()).unwrap();
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let mut config = rustls::ClientConfig::builder_with_protocol_versions(versions)
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::store(Arc::new(
            rustls::client::ClientSessionMemoryCache::new(16),
        ));
        Arc::new(config)
    }
}
