//! Validated runtime configuration. Every value here passed the checks in this file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;

use super::spec::{StaticSpec, TenantsSpec};
use super::{read_toml, relative_to, ConfigProblem};
pub use crate::audit::{AuditSettings, AuditStreamSettings, FsyncPolicy};
use crate::credentials::apply::{CredentialSettings, RawCredentialMode};
use crate::credentials::binding::{parse_binding, Position};
use crate::credentials::files::{FileCredential, FilesStore};
use crate::credentials::vault::{MasterKeySource, VaultStore};
use crate::credentials::CredentialStore;
use crate::identity::{IdentitySourceKind, ListenerBinding, ListenerIdentity, Workloads};
use crate::ids::{TenantId, WorkloadId};
use crate::limits::calendar::TenantCalendar;
use crate::limits::Ceilings;
pub use crate::limits::LimiterSettings;
use crate::pricing::PriceTable;
pub use crate::target::{Route, Scheme};

/// The static configuration: listeners, admin, audit, upstream and process settings.
#[derive(Debug, Clone)]
pub struct StaticConfig {
    /// The file this was read from.
    pub path: PathBuf,
    /// The tenant configuration file (resolved against `path`).
    pub tenants_file: PathBuf,
    /// Admin listener address.
    pub admin_listen: SocketAddr,
    /// Proxy listeners.
    pub listeners: Vec<ListenerSettings>,
    /// Audit sink settings.
    pub audit: AuditSettings,
    /// Upstream settings.
    pub upstream: UpstreamSettings,
    /// The SSRF guard and tunnels.
    pub egress: EgressSettings,
    /// TLS interception, when a CA is configured.
    pub intercept: Option<InterceptSettings>,
    /// What one request, one connection and the whole process may hold.
    pub limits: RequestLimits,
    /// Where limit counters live.
    pub limiter: LimiterSettings,
    /// Signed runs of one tenant watched for their `run_summary` at once (`[limiter]
    /// watched_runs_per_tenant`); past it, that tenant's new runs are summarized only when
    /// closed or by another replica.
    pub watched_runs_per_tenant: usize,
    /// Worker threads per listener.
    pub threads: usize,
    /// Seconds to keep serving after SIGTERM.
    pub grace_period: Duration,
    /// Seconds in-flight requests get during shutdown.
    pub graceful_shutdown_timeout: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A proxy listener.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// Name for logs and metrics.
    pub name: String,
    /// Bound address.
    pub listen: SocketAddr,
    /// How it identifies callers: its sources in order, and its bound workload.
    pub identity: ListenerIdentity,
    /// TLS with client certificates, for `mtls` listeners.
    pub tls: Option<ListenerTls>,
}

/// An mTLS listener's files and SPIFFE ID mapping.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server key (PEM).
    pub key: PathBuf,
    /// Client trust bundle (PEM), reloaded on change.
    pub client_ca: PathBuf,
    /// How a SPIFFE ID names tenant and workload.
    pub spiffe: Arc<crate::identity::mtls::SpiffePattern>,
}

/// `[egress]`, validated.
#[derive(Debug, Clone)]
pub struct EgressSettings {
    /// Global exceptions to the SSRF guard.
    pub exceptions: Vec<crate::egress::EgressException>,
    /// Ports tunnels may be opened to.
    pub connect_ports: Vec<u16>,
    /// Static name answers.
    pub hosts: HashMap<String, Vec<std::net::IpAddr>>,
    /// DNS lookup timeout.
    pub dns_timeout: Duration,
    /// Idle timeout of tunnels.
    pub tunnel_idle_timeout: Duration,
    /// Default cap on a tenant's open tunnels.
    pub max_tunnels_per_tenant: u32,
    /// Time a new connection has to send its first request head.
    pub client_header_timeout: Duration,
}

/// `[limits]`, validated.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Largest request head, in bytes.
    pub max_header_bytes: usize,
    /// Most header fields in a request head.
    pub max_headers: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// From the end of a head to the end of its body.
    pub client_body_timeout: Duration,
    /// Body bytes all requests in flight may hold together.
    pub max_buffered_body_bytes: u64,
    /// Open client connections per listener.
    pub max_connections_per_listener: u32,
    /// Open client connections per tenant.
    pub max_connections_per_tenant: u32,
}

/// `[intercept]`, validated.
#[derive(Debug, Clone)]
pub struct InterceptSettings {
    /// CA certificate file.
    pub ca_cert: PathBuf,
    /// CA key file.
    pub ca_key: PathBuf,
    /// Leaf lifetime.
    pub leaf_ttl: Duration,
    /// Leaf cache bound.
    pub leaf_cache: usize,
}

/// Upstream connection settings.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Per-read timeout.
    pub read_timeout: Duration,
    /// Per-write timeout.
    pub write_timeout: Duration,
    /// Extra trusted CA files.
    pub extra_ca_files: Vec<PathBuf>,
}

/// Collects problems while a spec is converted, so all of them are reported at once.
struct Problems<'a> {
    file: &'a Path,
    list: Vec<ConfigProblem>,
}

impl<'a> Problems<'a> {
    fn new(file: &'a Path) -> Self {
        Self {
            file,
            list: Vec::new(),
        }
    }

    fn push(&mut self, location: impl Into<String>, message: impl Into<String>) {
        self.list
            .push(ConfigProblem::at(self.file, location, message));
    }

    fn duration(&mut self, location: &str, value: &str) -> Duration {
        match humantime::parse_duration(value) {
            Ok(d) => d,
            Err(e) => {
                self.push(
                    location,
                    format!("`{value}` is not a duration ({e}); write e.g. `5s`, `250ms`, `1h`"),
                );
                Duration::ZERO
            }
        }
    }

    fn finish<T>(self, value: T) -> Result<T, Vec<ConfigProblem>> {
        if self.list.is_empty() {
            Ok(value)
        } else {
            Err(self.list)
        }
    }
}

impl StaticConfig {
    /// Reads and validates the static configuration file.
    pub fn load(path: &Path) -> Result<Self, Vec<ConfigProblem>> {
        let spec: StaticSpec = read_toml(path).map_err(|p| vec![p])?;
        Self::from_spec(path, spec)
    }

    fn from_spec(path: &Path, spec: StaticSpec) -> Result<Self, Vec<ConfigProblem>> {
        let mut p = Problems::new(path);
        let admin_listen = match spec.admin.listen.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                p.push(
                    "admin.listen",
                    format!("`{}` is not an `ip:port` address", spec.admin.listen),
                );
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        };

        if spec.listeners.is_empty() {
            p.push("listener", "at least one `[[listener]]` is required");
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        let mut listeners = Vec::new();
        for (i, l) in spec.listeners.into_iter().enumerate() {
            let at = |field: &str| format!("listener[{i}].{field}");
            if !names.insert(l.name.clone()) {
                p.push(at("name"), format!("duplicate listener name `{}`", l.name));
            }
            let listen = match l.listen.parse::<SocketAddr>() {
                Ok(a) => {
                    // Port 0 asks the kernel for a free port: each such socket gets its own.
                    if a.port() != 0 && (a == admin_listen || !addrs.insert(a)) {
                        p.push(at("listen"), format!("address `{a}` is used twice"));
                    }
                    a
                }
                Err(_) => {
                    p.push(
                        at("listen"),
                        format!("`{}` is not an `ip:port` address", l.listen),
                    );
                    SocketAddr::from(([127, 0, 0, 1], 0))
                }
            };
            let mut identity = Vec::new();
            for (j, source) in l.identity.iter().enumerate() {
                match source.as_str() {
                    "binding" => identity.push(IdentitySourceKind::Binding),
                    "token" => identity.push(IdentitySourceKind::Token),
                    "mtls" => identity.push(IdentitySourceKind::Mtls),
                    other => p.push(
                        format!("listener[{i}].identity[{j}]"),
                        format!("unknown identity source `{other}`; expected `binding`, `token` or `mtls`"),
                    ),
                }
            }
            if l.identity.is_empty() {
                p.push(
                    at("identity"),
                    "list at least one identity source (`binding`, `token`, `mtls`)",
                );
            }
            let wants_mtls = identity.contains(&IdentitySourceKind::Mtls);
            let tls = match (l.tls, wants_mtls) {
                (Some(t), true) => {
                    let files = [
                        ("cert", &t.cert),
                        ("key", &t.key),
                        ("client_ca", &t.client_ca),
                    ];
                    for (field, f) in files {
                        if !relative_to(path, f).is_file() {
                            p.push(
                                at(&format!("tls.{field}")),
                                format!("`{}` is not a readable file", f.display()),
                            );
                        }
                    }
                    match crate::identity::mtls::SpiffePattern::new(&t.spiffe_id, &t.trust_domain) {
                        Ok(spiffe) => Some(ListenerTls {
                            cert: relative_to(path, &t.cert),
                            key: relative_to(path, &t.key),
                            client_ca: relative_to(path, &t.client_ca),
                            spiffe: Arc::new(spiffe),
                        }),
                        Err(e) => {
                            p.push(at("tls.spiffe_id"), e.to_string());
                            None
                        }
                    }
                }
                (None, true) => {
                    p.push(at("tls"), "identity source `mtls` needs `[listener.tls]` with cert, key, client_ca, spiffe_id and trust_domain");
                    None
                }
                (Some(_), false) => {
                    p.push(
                        at("tls"),
                        "`tls` is set but `identity` does not list `mtls`",
                    );
                    None
                }
                (None, false) => None,
            };
            let wants_binding = identity.contains(&IdentitySourceKind::Binding);
            let binding = match (l.binding, wants_binding) {
                (Some(b), true) => {
                    let tenant = TenantId::new(&b.tenant)
                        .map_err(|e| p.push(at("binding.tenant"), e.to_string()))
                        .ok();
                    let workload = WorkloadId::new(&b.workload)
                        .map_err(|e| p.push(at("binding.workload"), e.to_string()))
                        .ok();
                    tenant
                        .zip(workload)
                        .map(|(tenant, workload)| ListenerBinding { tenant, workload })
                }
                (None, true) => {
                    p.push(
                        at("binding"),
                        "identity source `binding` needs `binding = { tenant, workload }`",
                    );
                    None
                }
                (Some(_), false) => {
                    p.push(
                        at("binding"),
                        "`binding` is set but `identity` does not list `binding`",
                    );
                    None
                }
                (None, false) => None,
            };
            listeners.push(ListenerSettings {
                name: l.name,
                listen,
                identity: ListenerIdentity {
                    sources: identity,
                    binding,
                },
                tls,
            });
        }

        let fsync = match spec.audit.fsync.as_str() {
            "batch" => FsyncPolicy::Batch,
            "none" => FsyncPolicy::None,
            other => {
                p.push("audit.fsync", format!("`{other}` is not `batch` or `none`"));
                FsyncPolicy::Batch
            }
        };
        if spec.audit.queue_capacity == 0 {
            p.push("audit.queue_capacity", "must be at least 1");
        }
        let flush_interval = p.duration("audit.flush_interval", &spec.audit.flush_interval);
        let checkpoint_interval =
            p.duration("audit.checkpoint_interval", &spec.audit.checkpoint_interval);
        if checkpoint_interval.is_zero()
            && humantime::parse_duration(&spec.audit.checkpoint_interval).is_ok()
        {
            p.push("audit.checkpoint_interval", "must be more than zero");
        }
        if spec.audit.max_file_bytes < 4096 {
            p.push("audit.max_file_bytes", "must be at least 4096");
        }
        let audit = AuditSettings {
            dir: relative_to(path, &spec.audit.dir),
            queue_capacity: spec.audit.queue_capacity.max(1),
            fsync,
            flush_interval,
            max_file_bytes: spec.audit.max_file_bytes,
            checkpoint_interval,
            signing_key: spec
                .audit
                .signing_key
                .as_ref()
                .map(|k| relative_to(path, k)),
            stream: spec.audit.redis_url.clone().map(|url| AuditStreamSettings {
                url,
                required: spec.audit.redis_required,
                maxlen: spec.audit.redis_maxlen.max(1),
            }),
        };
        if let Some(stream) = &audit.stream {
            if !stream.url.starts_with("redis://") {
                p.push("audit.redis_url", "write `redis://host:port`");
            }
        } else if spec.audit.redis_required {
            p.push("audit.redis_required", "needs `redis_url`");
        }
        if let Some(key) = &audit.signing_key {
            if !key.is_file() {
                p.push(
                    "audit.signing_key",
                    format!("`{}` is not a readable file", key.display()),
                );
            }
        }

        let upstream = UpstreamSettings {
            connect_timeout: p.duration("upstream.connect_timeout", &spec.upstream.connect_timeout),
            read_timeout: p.duration("upstream.read_timeout", &spec.upstream.read_timeout),
            write_timeout: p.duration("upstream.write_timeout", &spec.upstream.write_timeout),
            extra_ca_files: spec
                .upstream
                .extra_ca_files
                .iter()
                .map(|f| relative_to(path, f))
                .collect(),
        };
        for (i, f) in upstream.extra_ca_files.iter().enumerate() {
            if !f.is_file() {
                p.push(
                    format!("upstream.extra_ca_files[{i}]"),
                    format!("`{}` is not a readable file", f.display()),
                );
            }
        }
        let egress = egress_settings(&mut p, spec.egress);
        let intercept = spec.intercept.map(|i| {
            let settings = InterceptSettings {
                ca_cert: relative_to(path, &i.ca_cert),
                ca_key: relative_to(path, &i.ca_key),
                leaf_ttl: p.duration("intercept.leaf_ttl", &i.leaf_ttl),
                leaf_cache: i.leaf_cache.max(1),
            };
            if settings.leaf_ttl < Duration::from_secs(600) {
                p.push("intercept.leaf_ttl", "must be at least 10m (clients check validity against their own clocks)");
            }
            for (field, f) in [("ca_cert", &settings.ca_cert), ("ca_key", &settings.ca_key)] {
                if !f.is_file() {
                    p.push(format!("intercept.{field}"), format!("`{}` is not a readable file; create the CA with `tenant-proxy ca init --out DIR`", f.display()));
                }
            }
            settings
        });
        let limits = request_limits(&mut p, &spec.limits);

        let log_format = match spec.log.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                p.push("log.format", format!("`{other}` is not `text` or `json`"));
                LogFormat::Text
            }
        };
        let run_ttl = p.duration(
            "limiter.run_ttl",
            spec.limiter.run_ttl.as_deref().unwrap_or("168h"),
        );
        let limiter = match spec.limiter.backend.as_deref() {
            None | Some("memory") => LimiterSettings::Memory { run_ttl },
            Some("redis") => {
                let url = spec.limiter.redis_url.clone().unwrap_or_default();
                if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                    p.push(
                        "limiter.redis_url",
                        "the `redis` backend needs `redis_url = \"redis://host:port\"`",
                    );
                }
                let timeout = p.duration(
                    "limiter.timeout",
                    spec.limiter.timeout.as_deref().unwrap_or("50ms"),
                );
                let lease_ttl = p.duration(
                    "limiter.lease_ttl",
                    spec.limiter.lease_ttl.as_deref().unwrap_or("5m"),
                );
                let on_unavailable = match spec.limiter.on_unavailable.as_deref() {
                    None | Some("fail_closed") => crate::limits::redis::Unavailable::FailClosed,
                    Some("local_fallback") => crate::limits::redis::Unavailable::LocalFallback,
                    Some(other) => {
                        p.push(
                            "limiter.on_unavailable",
                            format!("`{other}` is not `fail_closed` or `local_fallback`"),
                        );
                        crate::limits::redis::Unavailable::FailClosed
                    }
                };
                LimiterSettings::Redis(crate::limits::redis::RedisSettings {
                    url,
                    timeout,
                    lease_ttl,
                    run_ttl,
                    on_unavailable,
                })
            }
            Some(other) => {
                p.push(
                    "limiter.backend",
                    format!("`{other}` is not `memory` or `redis`"),
                );
                LimiterSettings::Memory { run_ttl }
            }
        };
        let watched_runs_per_tenant = spec
            .limiter
            .watched_runs_per_tenant
            .unwrap_or(crate::runs::MAX_WATCHED_PER_TENANT);
        if watched_runs_per_tenant == 0 {
            p.push("limiter.watched_runs_per_tenant", "must be at least 1");
        }
        if spec.server.threads == 0 {
            p.push("server.threads", "must be at least 1");
        }

        let config = StaticConfig {
            path: path.to_path_buf(),
            tenants_file: relative_to(path, &spec.tenants_file),
            admin_listen,
            listeners,
            audit,
            upstream,
            egress,
            intercept,
            limits,
            limiter,
            watched_runs_per_tenant,
            threads: spec.server.threads.max(1),
            grace_period: p.duration("server.grace_period", &spec.server.grace_period),
            graceful_shutdown_timeout: p.duration(
                "server.graceful_shutdown_timeout",
                &spec.server.graceful_shutdown_timeout,
            ),
            log_format,
            log_level: spec.log.level.unwrap_or_else(|| "info".into()),
        };
        p.finish(config)
    }
}

fn request_limits(p: &mut Problems<'_>, spec: &super::spec::RequestLimitsSpec) -> RequestLimits {
    if spec.max_header_bytes < 1024 {
        p.push("limits.max_header_bytes", "must be at least 1024");
    }
    if spec.max_headers == 0 || spec.max_headers > crate::front::head::HARD_MAX_HEADERS {
        p.push("limits.max_headers", "must be between 1 and 256");
    }
    if spec.max_buffered_body_bytes < spec.max_body_bytes as u64 {
        p.push(
            "limits.max_buffered_body_bytes",
            "must be at least `max_body_bytes` (or no body of the largest size could ever be held)",
        );
    }
    for (field, n) in [
        (
            "max_connections_per_listener",
            spec.max_connections_per_listener,
        ),
        (
            "max_connections_per_tenant",
            spec.max_connections_per_tenant,
        ),
    ] {
        if n == 0 {
            p.push(format!("limits.{field}"), "must be at least 1");
        }
    }
    RequestLimits {
        max_header_bytes: spec.max_header_bytes,
        max_headers: spec
            .max_headers
            .clamp(1, crate::front::head::HARD_MAX_HEADERS),
        max_body_bytes: spec.max_body_bytes,
        client_body_timeout: p.duration("limits.client_body_timeout", &spec.client_body_timeout),
        max_buffered_body_bytes: spec.max_buffered_body_bytes,
        max_connections_per_listener: spec.max_connections_per_listener,
        max_connections_per_tenant: spec.max_connections_per_tenant,
    }
}

fn egress_settings(p: &mut Problems<'_>, spec: super::spec::EgressSpec) -> EgressSettings {
    let mut exceptions = Vec::new();
    for (i, a) in spec.allow.iter().enumerate() {
        match a.parse::<crate::egress::EgressException>() {
            Ok(e) => exceptions.push(e),
            Err(e) => p.push(format!("egress.allow[{i}]"), e),
        }
    }
    if spec.connect_ports.is_empty() || spec.connect_ports.contains(&0) {
        p.push(
            "egress.connect_ports",
            "list the ports tunnels may use (1-65535), e.g. `[443]`",
        );
    }
    let mut hosts = HashMap::new();
    for (name, addrs) in spec.hosts {
        let mut ips = Vec::new();
        for a in &addrs {
            match a.parse::<std::net::IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(_) => p.push(
                    format!("egress.hosts.{name}"),
                    format!("`{a}` is not an IP address"),
                ),
            }
        }
        if addrs.is_empty() {
            p.push(format!("egress.hosts.{name}"), "list at least one address");
        }
        hosts.insert(name.trim_end_matches('.').to_ascii_lowercase(), ips);
    }
    if spec.max_tunnels_per_tenant == 0 {
        p.push("egress.max_tunnels_per_tenant", "must be at least 1");
    }
    EgressSettings {
        exceptions,
        connect_ports: spec.connect_ports,
        hosts,
        dns_timeout: p.duration("egress.dns_timeout", &spec.dns_timeout),
        tunnel_idle_timeout: p.duration("egress.tunnel_idle_timeout", &spec.tunnel_idle_timeout),
        max_tunnels_per_tenant: spec.max_tunnels_per_tenant,
        client_header_timeout: p
            .duration("egress.client_header_timeout", &spec.client_header_timeout),
    }
}

/// The tenant configuration, validated but with keys and policies not yet loaded
/// (the snapshot loads them).
#[derive(Debug, Clone)]
pub struct TenantConfig {
    /// The file this was read from.
    pub path: PathBuf,
    /// Policy directory (resolved).
    pub policy_dir: PathBuf,
    /// Shadow (report-only) policy directory (resolved), when one is configured.
    pub shadow_policy_dir: Option<PathBuf>,
    /// Lowercase header names removed before forwarding.
    pub strip_headers: Vec<HeaderName>,
    /// Token settings, if tokens are accepted.
    pub token: Option<TokenConfig>,
    /// Routes, longest prefix first.
    pub routes: Vec<Route>,
    /// Credential source, if credentials are configured.
    pub credential_source: Option<CredentialSource>,
    /// Request-side credential settings.
    pub credential_settings: CredentialSettings,
    /// Tenants.
    pub tenants: BTreeMap<TenantId, TenantEntry>,
    /// The price table, if one is configured.
    pub prices: Option<Arc<PriceTable>>,
    /// MCP servers and how their traffic is buffered.
    pub mcp: crate::mcp::config::McpSettings,
    /// Regions of upstream destinations.
    pub regions: super::regions::DestinationRegions,
}

/// Token verification settings with resolved paths.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// JWKS path.
    pub jwks_file: PathBuf,
    /// Required audience.
    pub audience: String,
    /// Required issuer.
    pub issuer: Option<String>,
    /// Longest accepted lifetime.
    pub max_lifetime: Duration,
    /// Clock-skew leeway.
    pub leeway: Duration,
    /// Revocation list path.
    pub revoked_jtis_file: Option<PathBuf>,
}

/// Where credentials come from.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    /// The embedded vault (editable with `tenant-proxy cred`).
    Vault(VaultStore),
    /// Mounted files.
    Files(FilesStore),
}

impl CredentialSource {
    /// The store behind the source.
    pub fn store(&self) -> &dyn CredentialStore {
        match self {
            CredentialSource::Vault(v) => v,
            CredentialSource::Files(f) => f,
        }
    }
}

/// A tenant as configured.
#[derive(Debug, Clone)]
pub struct TenantEntry {
    /// Plan.
    pub plan: String,
    /// Region.
    pub region: String,
    /// Workloads.
    pub workloads: Vec<WorkloadId>,
    /// Ceilings on the tenant as a whole.
    pub limits: Ceilings,
    /// Ceilings on single workloads.
    pub workload_limits: HashMap<WorkloadId, Ceilings>,
    /// The tenant's time zone, where its days and months begin.
    pub calendar: TenantCalendar,
    /// Non-global destinations this tenant may reach.
    pub egress_allow: Vec<crate::egress::EgressException>,
    /// Cap on this tenant's open tunnels, when it overrides the global one.
    pub max_tunnels: Option<u32>,
}

impl TenantConfig {
    /// Reads and validates the tenant file (keys and policies are loaded by the snapshot).
    pub fn load(path: &Path) -> Result<Self, Vec<ConfigProblem>> {
        let spec: TenantsSpec = read_toml(path).map_err(|p| vec![p])?;
        Self::from_spec(path, spec)
    }

    fn from_spec(path: &Path, spec: TenantsSpec) -> Result<Self, Vec<ConfigProblem>> {
        let mut p = Problems::new(path);

        let mut strip_headers = Vec::new();
        for (i, h) in spec.strip_headers.iter().enumerate() {
            match HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
                Ok(name) => strip_headers.push(name),
                Err(_) => p.push(
                    format!("strip_headers[{i}]"),
                    format!("`{h}` is not a header name"),
                ),
            }
        }

        let token = spec.token.map(|t| {
            let max_lifetime = p.duration("token.max_lifetime", &t.max_lifetime);
            if max_lifetime < Duration::from_secs(60)
                || max_lifetime > Duration::from_secs(24 * 3600)
            {
                p.push("token.max_lifetime", "must be between 1m and 24h");
            }
            let leeway = p.duration("token.leeway", &t.leeway);
            if leeway > Duration::from_secs(300) {
                p.push("token.leeway", "must be at most 5m");
            }
            if t.audience.is_empty() {
                p.push("token.audience", "must not be empty");
            }
            TokenConfig {
                jwks_file: relative_to(path, &t.jwks_file),
                audience: t.audience,
                issuer: t.issuer,
                max_lifetime,
                leeway,
                revoked_jtis_file: t.revoked_jtis_file.map(|f| relative_to(path, &f)),
            }
        });

        let mut routes = Vec::new();
        let mut seen_names = HashSet::new();
        let mut seen_prefixes = HashSet::new();
        for (i, r) in spec.routes.into_iter().enumerate() {
            if !seen_names.insert(r.name.clone()) {
                p.push(
                    format!("route[{i}].name"),
                    format!("duplicate route name `{}`", r.name),
                );
            }
            if !(r.prefix.starts_with('/') && r.prefix.ends_with('/') && r.prefix.len() > 1) {
                p.push(
                    format!("route[{i}].prefix"),
                    format!(
                        "`{}` must start and end with `/`, e.g. `/openai/`",
                        r.prefix
                    ),
                );
            } else if !seen_prefixes.insert(r.prefix.clone()) {
                p.push(
                    format!("route[{i}].prefix"),
                    format!("duplicate prefix `{}`", r.prefix),
                );
            }
            match parse_base_url(&r.upstream) {
                Ok((scheme, host, port, base_path)) => routes.push(Route {
                    name: r.name,
                    prefix: r.prefix,
                    scheme,
                    host,
                    port,
                    base_path,
                    internal: r.internal,
                    provider: r.provider,
                    region: r.region,
                }),
                Err(msg) => p.push(format!("route[{i}].upstream"), msg),
            }
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));

        let mcp = crate::mcp::config::McpSettings::from_spec(spec.mcp.unwrap_or_default(), &routes)
            .unwrap_or_else(|problems| {
                for (field, message) in problems {
                    p.push(field, message);
                }
                crate::mcp::config::McpSettings::default()
            });

        let prices =
            spec.prices_file
                .as_ref()
                .and_then(|f| match PriceTable::load(&relative_to(path, f)) {
                    Ok(table) => Some(Arc::new(table)),
                    Err(problems) => {
                        for problem in problems {
                            p.push("prices_file", problem);
                        }
                        None
                    }
                });

        let mut tenants = BTreeMap::new();
        for (id, t) in spec.tenants {
            let tenant = match TenantId::new(&id) {
                Ok(t) => t,
                Err(e) => {
                    p.push(format!("tenants.{id}"), e.to_string());
                    continue;
                }
            };
            let mut workloads = Vec::new();
            let mut seen = HashSet::new();
            for (i, w) in t.workloads.iter().enumerate() {
                match WorkloadId::new(w) {
                    Ok(w) if seen.insert(w.clone()) => workloads.push(w),
                    Ok(w) => p.push(
                        format!("tenants.{id}.workloads[{i}]"),
                        format!("duplicate workload `{w}`"),
                    ),
                    Err(e) => p.push(format!("tenants.{id}.workloads[{i}]"), e.to_string()),
                }
            }
            if t.workloads.is_empty() {
                p.push(
                    format!("tenants.{id}.workloads"),
                    "list at least one workload",
                );
            }
            let calendar = match TenantCalendar::new(t.time_zone.as_deref().unwrap_or("UTC")) {
                Ok(c) => c,
                Err(e) => {
                    p.push(format!("tenants.{id}.time_zone"), e);
                    TenantCalendar::utc()
                }
            };
            let limits = t.limits.unwrap_or_default();
            if let Err(e) = limits.validate() {
                p.push(format!("tenants.{id}.limits"), e);
            }
            let has_cost = limits.has_cost() || t.workload_limits.values().any(Ceilings::has_cost);
            if has_cost && spec.prices_file.is_none() {
                p.push(
                    format!("tenants.{id}.limits"),
                    "cost ceilings need a price table: set `prices_file`",
                );
            }
            let mut workload_limits = HashMap::new();
            for (w, c) in t.workload_limits {
                match WorkloadId::new(&w) {
                    Ok(wid) if workloads.contains(&wid) => {
                        if let Err(e) = c.validate() {
                            p.push(format!("tenants.{id}.workload_limits.{w}"), e);
                        }
                        workload_limits.insert(wid, c);
                    }
                    _ => p.push(
                        format!("tenants.{id}.workload_limits.{w}"),
                        format!("`{w}` is not a workload of `{id}`"),
                    ),
                }
            }
            let mut egress_allow = Vec::new();
            for (i, a) in t.egress_allow.iter().enumerate() {
                match a.parse::<crate::egress::EgressException>() {
                    Ok(e) => egress_allow.push(e),
                    Err(e) => p.push(format!("tenants.{id}.egress_allow[{i}]"), e),
                }
            }
            if t.max_tunnels == Some(0) {
                p.push(format!("tenants.{id}.max_tunnels"), "must be at least 1");
            }
            tenants.insert(
                tenant,
                TenantEntry {
                    plan: t.plan,
                    region: t.region,
                    workloads,
                    limits,
                    workload_limits,
                    calendar,
                    egress_allow,
                    max_tunnels: t.max_tunnels,
                },
            );
        }

        let mut credential_settings = CredentialSettings::default();
        let credential_source = spec.credentials.and_then(|c| {
            credential_settings.scan_body_max_bytes = c.scan_body_max_bytes;
            for (i, h) in c.credential_headers.iter().enumerate() {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    p.push(format!("credentials.credential_headers[{i}]"), format!("`{h}` is not a header name"));
                }
            }
            credential_settings.positions =
                crate::credentials::positions::CredentialPositions::with_extra_headers(&c.credential_headers);
            credential_settings.raw_credential = match c.raw_credential.as_str() {
                "refuse" => RawCredentialMode::Refuse,
                "strip" => RawCredentialMode::Strip,
                other => {
                    p.push("credentials.raw_credential", format!("`{other}` is not `refuse` or `strip`"));
                    RawCredentialMode::Refuse
                }
            };
            match (c.vault_file, c.files_dir) {
                (Some(file), None) => {
                    let master = match (c.master_key_file, c.master_key_env) {
                        (Some(f), None) => MasterKeySource::File(relative_to(path, &f)),
                        (None, Some(v)) => MasterKeySource::Env(v),
                        _ => {
                            p.push("credentials", "a vault needs exactly one of `master_key_file` or `master_key_env`");
                            return None;
                        }
                    };
                    if !c.files.is_empty() {
                        p.push("credentials.file", "`[[credentials.file]]` entries need `files_dir`, not a vault");
                    }
                    Some(CredentialSource::Vault(VaultStore { file: relative_to(path, &file), master }))
                }
                (None, Some(dir)) => {
                    let mut declared = Vec::new();
                    for (i, f) in c.files.into_iter().enumerate() {
                        let at = |field: &str| format!("credentials.file[{i}].{field}");
                        let Ok(tenant) = TenantId::new(&f.tenant).map_err(|e| p.push(at("tenant"), e.to_string())) else {
                            continue;
                        };
                        if !crate::credentials::valid_name(&f.name) {
                            p.push(at("name"), format!("`{}` is not a credential name", f.name));
                        }
                        let mut bind = Vec::new();
                        for b in &f.bind {
                            match parse_binding(b) {
                                Ok(b) => bind.push(b),
                                Err(e) => p.push(at("bind"), e),
                            }
                        }
                        if bind.is_empty() {
                            p.push(at("bind"), "bind the credential to at least one destination");
                        }
                        let positions = parse_positions(&f.positions).unwrap_or_else(|e| {
                            p.push(at("in"), e);
                            vec![]
                        });
                        declared.push(FileCredential { tenant, name: f.name, bind, positions, expires: None });
                    }
                    Some(CredentialSource::Files(FilesStore { dir: relative_to(path, &dir), declared }))
                }
                _ => {
                    p.push("credentials", "set exactly one of `vault_file` or `files_dir`");
                    None
                }
            }
        });

        let regions = super::regions::DestinationRegions::from_spec(&spec.destination_regions)
            .unwrap_or_else(|problems| {
                for (at, message) in problems {
                    p.push(at, message);
                }
                Default::default()
            });

        let config = TenantConfig {
            path: path.to_path_buf(),
            policy_dir: relative_to(path, &spec.policy_dir),
            shadow_policy_dir: spec
                .shadow_policy_dir
                .as_ref()
                .map(|d| relative_to(path, d)),
            strip_headers,
            token,
            routes,
            credential_source,
            credential_settings,
            tenants,
            prices,
            mcp,
            regions,
        };
        p.finish(config)
    }

    /// The region of `destination` for policies: its route's own `region`, else the region its
    /// host is tagged with in `[destination_regions]`.
    pub fn destination_region(&self, destination: &crate::target::Destination) -> Option<&str> {
        let route_region = destination.route.as_deref().and_then(|name| {
            self.routes
                .iter()
                .find(|r| r.name == name)
                .and_then(|r| r.region.as_deref())
        });
        route_region.or_else(|| self.regions.region_of(&destination.host))
    }

    /// `tenant`'s local hour and weekday at Unix second `at` (UTC for an unknown tenant), for
    /// the policies' `hour` and `weekday`.
    pub fn local_clock(&self, tenant: &TenantId, at: i64) -> (u8, &'static str) {
        match self.tenants.get(tenant) {
            Some(t) => t.calendar.clock(at),
            None => TenantCalendar::utc().clock(at),
        }
    }

    /// Whether `tenant` has `workload`.
    pub fn has_workload(&self, tenant: &TenantId, workload: &WorkloadId) -> bool {
        self.tenants
            .get(tenant)
            .is_some_and(|t| t.workloads.contains(workload))
    }
}

impl crate::limits::LimitConfig for TenantConfig {
    fn tenant_limits(&self, tenant: &TenantId) -> Option<crate::limits::TenantLimits<'_>> {
        self.tenants
            .get(tenant)
            .map(|e| crate::limits::TenantLimits {
                ceilings: &e.limits,
                workload_ceilings: &e.workload_limits,
                workloads: &e.workloads,
                calendar: &e.calendar,
            })
    }

    fn prices(&self) -> Option<&PriceTable> {
        self.prices.as_deref()
    }
}

impl Workloads for TenantConfig {
    fn has_workload(&self, tenant: &TenantId, workload: &WorkloadId) -> bool {
        TenantConfig::has_workload(self, tenant, workload)
    }
}

/// Parses `header`, `query`, `body` (default: `header` alone).
pub fn parse_positions(names: &[String]) -> Result<Vec<Position>, String> {
    if names.is_empty() {
        return Ok(vec![Position::Header]);
    }
    names
        .iter()
        .map(|n| match n.as_str() {
            "header" => Ok(Position::Header),
            "query" => Ok(Position::Query),
            "body" => Ok(Position::Body),
            other => Err(format!("`{other}` is not `header`, `query` or `body`")),
        })
        .collect()
}

/// Splits `https://host:port/base/` into its parts; the base path always ends with `/`.
fn parse_base_url(url: &str) -> Result<(Scheme, String, u16, String), String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        _ => return Err(format!("`{url}` must start with `http://` or `https://`")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("`{url}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("`{url}` must not contain user info"));
    }
    if uri.query().is_some() {
        return Err(format!("`{url}` must not contain a query"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = authority.port_u16().unwrap_or(scheme.default_port());
    let mut base_path = uri.path().to_string();
    if !base_path.ends_with('/') {
        base_path.push('/');
    }
    Ok((scheme, host, port, base_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/config/testdata")
            .join(name)
    }

    #[test]
    fn base_urls() {
        let cases = [
            (
                "https://api.openai.com/",
                Some((Scheme::Https, "api.openai.com", 443, "/")),
            ),
            (
                "http://127.0.0.1:18000",
                Some((Scheme::Http, "127.0.0.1", 18000, "/")),
            ),
            (
                "https://x.example/v1",
                Some((Scheme::Https, "x.example", 443, "/v1/")),
            ),
            ("ftp://x/", None),
            ("https://u:p@x/", None),
            ("not a url", None),
        ];
        for (url, want) in cases {
            let got = parse_base_url(url).ok();
            let got = got
                .as_ref()
                .map(|(s, h, p, b)| (*s, h.as_str(), *p, b.as_str()));
            assert_eq!(got, want, "{url}");
        }
    }

    #[test]
    fn good_fixtures_load() {
        let s = StaticConfig::load(&testdata("good/tenant-proxy.toml")).expect("static");
        assert_eq!(s.listeners.len(), 2);
        let t = TenantConfig::load(&s.tenants_file).expect("tenants");
        assert_eq!(t.tenants.len(), 2);
        assert_eq!(t.routes[0].prefix, "/openai/v2/", "longest prefix first");
        let region = |target: &str| {
            let d = crate::target::resolve(target.as_bytes(), None, &t.routes).expect("target");
            t.destination_region(&d).map(String::from)
        };
        #[rustfmt::skip]
        let cases = [
            ("host tag", "https://api.openai.com/v1/x", Some("us")),
            ("wildcard tag", "https://a.eu.example.com/", Some("eu")),
            ("untagged", "https://example.org/", None),
            ("route without a region: its host's", "/openai/v1/x", Some("us")),
            ("route region wins", "/openai/v2/x", Some("eu")),
        ];
        for (name, target, want) in cases {
            assert_eq!(region(target).as_deref(), want, "{name}");
        }
    }

    fn problems_text<T: std::fmt::Debug>(
        result: Result<T, Vec<ConfigProblem>>,
        file: &str,
    ) -> String {
        let problems = result.expect_err(file);
        problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn broken_fixtures_are_rejected_with_location() {
        let static_cases = [
            ("unknown-field.toml", "unknown field `colour`"),
            ("bad-listener.toml", "listener[0].identity[0]"),
            ("binding-missing.toml", "listener[0].binding"),
            ("bad-duration.toml", "upstream.connect_timeout"),
            ("audit-bad-chain-settings.toml", "audit.max_file_bytes"),
            ("audit-bad-chain-settings.toml", "audit.checkpoint_interval"),
            ("audit-bad-chain-settings.toml", "audit.signing_key"),
            (
                "audit-redis-required-without-url.toml",
                "audit.redis_required",
            ),
            ("audit-bad-redis-url.toml", "audit.redis_url"),
        ];
        for (file, want) in static_cases {
            let text = problems_text(
                StaticConfig::load(&testdata(&format!("broken/{file}"))),
                file,
            );
            assert!(text.contains(want), "{file}: {text}");
        }
        let tenant_cases = [
            ("tenants-unknown-field.toml", "unknown field `plans`"),
            ("tenants-bad-id.toml", "tenants.Acme"),
            ("tenants-bad-route.toml", "route[0].prefix"),
            ("tenants-bad-lifetime.toml", "token.max_lifetime"),
            ("tenants-mcp-unknown-route.toml", "mcp.servers[0].route"),
            ("tenants-bad-region.toml", "destination_regions.us[0]"),
            (
                "tenants-bad-credential-header.toml",
                "credentials.credential_headers[0]",
            ),
        ];
        for (file, want) in tenant_cases {
            let text = problems_text(
                TenantConfig::load(&testdata(&format!("broken/{file}"))),
                file,
            );
            assert!(text.contains(want), "{file}: {text}");
        }
    }

    #[test]
    fn unknown_field_reports_line() {
        let problems =
            StaticConfig::load(&testdata("broken/unknown-field.toml")).expect_err("broken");
        assert!(
            problems[0]
                .location
                .as_deref()
                .is_some_and(|l| l.contains(':')),
            "{problems:?}"
        );
    }
}
