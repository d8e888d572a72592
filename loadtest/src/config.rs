//! tenant-proxy's two configuration files as typed values, rendered to TOML by `toml`'s
//! serializer (so no quoting or table layout is written by hand), and the ready file a proxy
//! started with `--ready-file` writes.
//!
//! Every key of README.md's *Configuration reference* has a field. A field left `None` (or an
//! empty list or map) is not written, so the proxy applies its own default: these types say
//! what a test or a load run sets, not what the proxy would do without it. The end-to-end tests
//! and the load generator build their configurations here; a test that means to write a broken
//! file patches the [`toml::Table`] from [`StaticFile::to_table`] / [`TenantFile::to_table`]
//! (or writes its own text) instead.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

/// `127.0.0.1:0`: a loopback socket on a port the kernel picks (the proxy reports it in its
/// ready file).
pub const LOOPBACK_ANY_PORT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

// ---------------------------------------------------------------------------------------------
// The static file

/// `tenant-proxy.toml`: the static file, read once at start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StaticFile {
    /// The tenant file (relative paths resolve against the static file's directory).
    pub tenants_file: PathBuf,
    /// `[admin]`.
    #[serde(skip_serializing_if = "is_default")]
    pub admin: Admin,
    /// `[[listener]]`s.
    #[serde(rename = "listener", skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Listener>,
    /// `[audit]`.
    pub audit: Audit,
    /// `[upstream]`.
    #[serde(skip_serializing_if = "is_default")]
    pub upstream: Upstream,
    /// `[egress]`.
    #[serde(skip_serializing_if = "is_default")]
    pub egress: Egress,
    /// `[intercept]`: the local CA of intercepted tunnels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intercept: Option<Intercept>,
    /// `[limits]`: what one request, one connection and the whole process may hold.
    #[serde(skip_serializing_if = "is_default")]
    pub limits: RequestLimits,
    /// `[limiter]`: where limit counters live.
    #[serde(skip_serializing_if = "is_default")]
    pub limiter: Limiter,
    /// `[approvals]`: approval holds and their API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approvals: Option<Approvals>,
    /// `[policy]`: how the policy engine runs.
    #[serde(skip_serializing_if = "is_default")]
    pub policy: Policy,
    /// `[server]`.
    #[serde(skip_serializing_if = "is_default")]
    pub server: Server,
    /// `[log]`.
    #[serde(skip_serializing_if = "is_default")]
    pub log: Log,
    /// `[tracing]`: OTLP trace export.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
}

impl StaticFile {
    /// A static file naming `tenants_file` and writing its audit trail under `audit_dir`, with
    /// every other setting left to the proxy's defaults.
    pub fn new(tenants_file: impl Into<PathBuf>, audit_dir: impl Into<PathBuf>) -> Self {
        Self {
            tenants_file: tenants_file.into(),
            admin: Admin::default(),
            listeners: Vec::new(),
            audit: Audit::new(audit_dir),
            upstream: Upstream::default(),
            egress: Egress::default(),
            intercept: None,
            limits: RequestLimits::default(),
            limiter: Limiter::default(),
            approvals: None,
            policy: Policy::default(),
            server: Server::default(),
            log: Log::default(),
            tracing: None,
        }
    }

    /// The listener named `name`, if there is one.
    pub fn listener_mut(&mut self, name: &str) -> Option<&mut Listener> {
        self.listeners.iter_mut().find(|l| l.name == name)
    }

    /// The file as TOML.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// The file as a TOML table, for a test that patches in what the types cannot express (an
    /// unknown key, a wrongly typed value).
    pub fn to_table(&self) -> Result<toml::Table, toml::ser::Error> {
        toml::Table::try_from(self)
    }

    /// Writes the file to `path`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_toml().map_err(std::io::Error::other)?)
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Admin {
    /// Address of `/healthz`, `/readyz`, `/metrics`, `/usage`, `/runs/close`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// The file holding the bearer token every endpoint but the probes requires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// `[[listener]] kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerKind {
    /// Clients that name the proxy.
    Proxy,
    /// Connections redirected to the listener by the kernel.
    Transparent,
}

/// `[[listener]]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listener {
    /// Name for logs, metrics and the ready file.
    pub name: String,
    /// Address to bind (port 0: any free port).
    pub listen: SocketAddr,
    /// `transparent` for connections the kernel redirected (none: a proxy listener).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<ListenerKind>,
    /// Identity sources, tried in order.
    pub identity: Vec<IdentitySource>,
    /// For `binding`: the one workload every connection is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binding: Option<Binding>,
    /// For `mtls`: the listener's TLS files and the SPIFFE ID pattern.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
}

impl Listener {
    /// A listener on [`LOOPBACK_ANY_PORT`] bound to one tenant's workload.
    pub fn bound(name: &str, tenant: &str, workload: &str) -> Self {
        Self {
            name: name.into(),
            listen: LOOPBACK_ANY_PORT,
            kind: None,
            identity: vec![IdentitySource::Binding],
            binding: Some(Binding {
                tenant: tenant.into(),
                workload: workload.into(),
            }),
            tls: None,
        }
    }

    /// A listener on [`LOOPBACK_ANY_PORT`] that identifies workloads by their signed tokens.
    pub fn token(name: &str) -> Self {
        Self {
            name: name.into(),
            listen: LOOPBACK_ANY_PORT,
            kind: None,
            identity: vec![IdentitySource::Token],
            binding: None,
            tls: None,
        }
    }

    /// An mTLS listener on [`LOOPBACK_ANY_PORT`]: workloads are their client certificates'
    /// SPIFFE IDs.
    pub fn mtls(name: &str, tls: ListenerTls) -> Self {
        Self {
            name: name.into(),
            listen: LOOPBACK_ANY_PORT,
            kind: None,
            identity: vec![IdentitySource::Mtls],
            binding: None,
            tls: Some(tls),
        }
    }

    /// A transparent listener on `listen`, bound to one tenant's workload (the only identity a
    /// transparent listener has).
    pub fn transparent(name: &str, listen: SocketAddr, tenant: &str, workload: &str) -> Self {
        Self {
            listen,
            kind: Some(ListenerKind::Transparent),
            ..Self::bound(name, tenant, workload)
        }
    }
}

/// Where a listener's requests take their identity from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    /// The listener's `binding`.
    Binding,
    /// A signed workload token (`Proxy-Authorization`).
    Token,
    /// The client certificate's SPIFFE ID.
    Mtls,
}

/// `binding = { tenant, workload }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Binding {
    /// Tenant id.
    pub tenant: String,
    /// Workload id.
    pub workload: String,
}

/// `[listener.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerTls {
    /// The listener's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
    /// CAs client certificates must chain to (PEM).
    pub client_ca: PathBuf,
    /// SPIFFE ID pattern, e.g. `spiffe://{trust_domain}/tenant/{tenant}/workload/{workload}`.
    pub spiffe_id: String,
    /// The trust domain client IDs belong to.
    pub trust_domain: String,
}

/// `[audit]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Audit {
    /// Root of the per-tenant partitions.
    pub dir: PathBuf,
    /// Records in flight before requests are refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_capacity: Option<usize>,
    /// `batch` or `none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsync: Option<Fsync>,
    /// Longest wait before a batch is written.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::option"
    )]
    pub flush_interval: Option<Duration>,
    /// Size at which a day's file continues in a new part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_file_bytes: Option<u64>,
    /// How often each tenant's chain head is signed.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::option"
    )]
    pub checkpoint_interval: Option<Duration>,
    /// PKCS#8 Ed25519 key signing checkpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<PathBuf>,
    /// `redis://host:port` (or `rediss://`, `redis+cluster://h1:p1,h2:p2`): also append records to each tenant's Redis Stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<RedisUrl>,
    /// The environment variable holding the Redis URL instead of `redis_url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url_env: Option<String>,
    /// Redis ACL user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_username: Option<String>,
    /// File holding the Redis password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_password_file: Option<PathBuf>,
    /// Environment variable holding the Redis password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_password_env: Option<String>,
    /// PEM of the CA that signs the Redis servers' certificates (`rediss://`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_ca_file: Option<PathBuf>,
    /// Refuse requests while the stream cannot be written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_required: Option<bool>,
    /// Approximate length each tenant's stream is trimmed to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_maxlen: Option<u64>,
}

impl Audit {
    /// An audit trail under `dir`, every other setting the proxy's default.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            queue_capacity: None,
            fsync: None,
            flush_interval: None,
            max_file_bytes: None,
            checkpoint_interval: None,
            signing_key: None,
            redis_url: None,
            redis_url_env: None,
            redis_username: None,
            redis_password_file: None,
            redis_password_env: None,
            redis_ca_file: None,
            redis_required: None,
            redis_maxlen: None,
        }
    }
}

/// `[audit] fsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fsync {
    /// fsync each written batch.
    Batch,
    /// Leave it to the OS.
    None,
}

/// `[upstream]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Upstream {
    /// TCP (and TLS) connect timeout.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::option"
    )]
    pub connect_timeout: Option<Duration>,
    /// Longest wait for each read from the upstream.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::option"
    )]
    pub read_timeout: Option<Duration>,
    /// Longest wait for each write to the upstream.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::option"
    )]
    pub write_timeout: Option<Duration>,
    /// PEM CAs trusted for upstream TLS besides the system roots.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_ca_files: Vec<PathBuf>,
}

/// `[egress]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Egress {
    /// Non-global destinations every tenant may reach: CIDRs or `host:port`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Ports `CONNECT` may open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_ports: Option<Vec<u16>>,
    /// Static answers for names, e.g. `"api.internal" = ["10.0.0.5"]`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub hosts: BTreeMap<String, Vec<String>>,
    /// Longest a DNS lookup may take.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::option"
    )]
    pub dns_timeout: Option<Duration>,
    /// An idle tunnel is closed after this long.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::option"
    )]
    pub tunnel_idle_timeout: Option<Duration>,
    /// Open tunnels per tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tunnels_per_tenant: Option<u32>,
    /// Name lookups one tenant may have running at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_dns_lookups_per_tenant: Option<u32>,
    /// How long a tenant's answer for a name is kept.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::option"
    )]
    pub dns_cache_ttl: Option<Duration>,
    /// Deadline for a whole request head.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::option"
    )]
    pub client_header_timeout: Option<Duration>,
}

/// `[intercept]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Intercept {
    /// CA certificate (PEM), from `tenant-proxy ca init`.
    pub ca_cert: PathBuf,
    /// CA key (PEM).
    pub ca_key: PathBuf,
    /// Lifetime of minted leaves.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::option"
    )]
    pub leaf_ttl: Option<Duration>,
    /// Most leaves kept in memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaf_cache: Option<usize>,
    /// How long a tunnel's TLS session ticket can be resumed (zero: no resumption).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::option"
    )]
    pub session_lifetime: Option<Duration>,
    /// Most resumption scopes (tenant workloads) kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_scopes: Option<usize>,
}

impl Intercept {
    /// The CA `tenant-proxy ca init --out DIR` writes (`DIR/ca.pem`, `DIR/ca-key.pem`).
    pub fn ca_in(dir: impl AsRef<Path>) -> Self {
        Self {
            ca_cert: dir.as_ref().join("ca.pem"),
            ca_key: dir.as_ref().join("ca-key.pem"),
            leaf_ttl: None,
            leaf_cache: None,
            session_lifetime: None,
            session_scopes: None,
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RequestLimits {
    /// Largest request head.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<usize>,
    /// Most header fields in a head.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_headers: Option<usize>,
    /// Largest request body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,
    /// From the end of a head to the end of its body.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::option"
    )]
    pub client_body_timeout: Option<Duration>,
    /// Request body bytes all requests in flight may hold together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_buffered_body_bytes: Option<u64>,
    /// Request body bytes one tenant's requests in flight may hold together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_buffered_body_bytes_per_tenant: Option<u64>,
    /// Open client connections per listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_listener: Option<u32>,
    /// Open client connections per tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_tenant: Option<u32>,
}

/// `[limiter]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Limiter {
    /// `memory` or `redis`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<LimiterBackend>,
    /// `redis://host:port` (or `rediss://`, `redis+cluster://h1:p1,h2:p2`) for the `redis` backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<RedisUrl>,
    /// The environment variable holding the Redis URL instead of `redis_url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url_env: Option<String>,
    /// Redis ACL user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_username: Option<String>,
    /// File holding the Redis password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_password_file: Option<PathBuf>,
    /// Environment variable holding the Redis password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_password_env: Option<String>,
    /// PEM of the CA that signs the Redis servers' certificates (`rediss://`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_ca_file: Option<PathBuf>,
    /// Longest wait for one Redis call.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::option"
    )]
    pub timeout: Option<Duration>,
    /// How long a concurrency slot outlives a crashed replica.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::option"
    )]
    pub lease_ttl: Option<Duration>,
    /// What to do while Redis cannot be reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_unavailable: Option<OnUnavailable>,
    /// How long a run's counters live after its last reservation.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::option"
    )]
    pub run_ttl: Option<Duration>,
    /// Signed runs of one tenant watched at once for their summary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watched_runs_per_tenant: Option<usize>,
}

impl Limiter {
    /// The Redis backend at `url`, with a `timeout` per call.
    pub fn redis(url: impl Into<RedisUrl>, timeout: Duration) -> Self {
        Self {
            backend: Some(LimiterBackend::Redis),
            redis_url: Some(url.into()),
            timeout: Some(timeout),
            ..Self::default()
        }
    }
}

/// `redis_url`: one URL, or the seed nodes of a Redis Cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RedisUrl {
    /// `redis://…`, `rediss://…`, `redis+cluster://h1:p1,h2:p2`.
    One(String),
    /// Seed nodes, each `redis://host:port`.
    Seeds(Vec<String>),
}

impl From<String> for RedisUrl {
    fn from(url: String) -> Self {
        RedisUrl::One(url)
    }
}

impl From<&str> for RedisUrl {
    fn from(url: &str) -> Self {
        RedisUrl::One(url.to_string())
    }
}

impl From<Vec<String>> for RedisUrl {
    fn from(seeds: Vec<String>) -> Self {
        RedisUrl::Seeds(seeds)
    }
}

/// `[approvals]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Approvals {
    /// The approvals API's address.
    pub listen: SocketAddr,
    /// The approver tokens' audience.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Timeout of a hold whose policy names none.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::option"
    )]
    pub default_timeout: Option<Duration>,
    /// Pending holds per tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending_per_tenant: Option<usize>,
    /// Pending holds of every tenant together (across replicas sharing Redis).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<usize>,
}

impl Approvals {
    /// The approvals API on `listen`, every bound at its default.
    pub fn on(listen: SocketAddr) -> Self {
        Self {
            listen,
            audience: None,
            default_timeout: None,
            max_pending_per_tenant: None,
            max_pending: None,
        }
    }
}

/// `[limiter] backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimiterBackend {
    /// This process only.
    Memory,
    /// Shared by replicas.
    Redis,
}

/// `[limiter] on_unavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Refuse with `limiter_unavailable`.
    FailClosed,
    /// Enforce this replica's own counters.
    LocalFallback,
}

/// `[server]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Server {
    /// Worker threads per listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// How long to keep serving after SIGTERM.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::option"
    )]
    pub grace_period: Option<Duration>,
    /// How long in-flight requests get once shutdown starts.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::option"
    )]
    pub graceful_shutdown_timeout: Option<Duration>,
    /// How long after SIGTERM the proxy serves as usual, not ready, before draining.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::option"
    )]
    pub shutdown_delay: Option<Duration>,
}

/// `[policy]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Policy {
    /// Decisions kept per tenant (0: no cache; the proxy's default when `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision_cache_entries: Option<usize>,
}

/// `[log]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Log {
    /// `text` or `json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<LogFormat>,
    /// A `tracing` filter such as `info`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
}

/// `[tracing]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Tracing {
    /// The collector's OTLP/HTTP traces URL.
    pub otlp_endpoint: String,
    /// `service.name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
}

/// `[log] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

// ---------------------------------------------------------------------------------------------
// The tenant file

/// The tenant file: tenants, routes, policies, credentials; reloaded while the proxy runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantFile {
    /// Cedar schema and policies.
    pub policy_dir: PathBuf,
    /// A report-only policy set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_policy_dir: Option<PathBuf>,
    /// Tenant-claiming headers removed before forwarding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strip_headers: Option<Vec<String>>,
    /// The price table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prices_file: Option<PathBuf>,
    /// `[token]`: signed workload tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Token>,
    /// `[[route]]`s of route mode.
    #[serde(rename = "route", skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// `[credentials]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
    /// `[mcp]`: MCP servers whose messages are decided one by one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp: Option<Mcp>,
    /// `[destination_regions]`: region name -> hosts.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub destination_regions: BTreeMap<String, Vec<String>>,
    /// `[[llm_provider]]`: LLM providers declared by host.
    #[serde(rename = "llm_provider", skip_serializing_if = "Vec::is_empty")]
    pub llm_providers: Vec<LlmProvider>,
    /// `[tenants.<id>]`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tenants: BTreeMap<String, Tenant>,
}

/// `[[llm_provider]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LlmProvider {
    /// Name (price table key, policy `provider`).
    pub name: String,
    /// Hosts (`HOST` or `*.DOMAIN`).
    pub hosts: Vec<String>,
    /// `openai_compatible` or `azure_openai`.
    pub api: String,
    /// Deployment name -> model.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub deployments: BTreeMap<String, String>,
}

impl LlmProvider {
    /// A provider `name` on `hosts` speaking `api`, without deployments.
    pub fn new(name: &str, hosts: &[&str], api: &str) -> Self {
        Self {
            name: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            api: api.into(),
            deployments: BTreeMap::new(),
        }
    }
}

impl TenantFile {
    /// A tenant file with policies in `policy_dir` and nothing else yet.
    pub fn new(policy_dir: impl Into<PathBuf>) -> Self {
        Self {
            policy_dir: policy_dir.into(),
            shadow_policy_dir: None,
            strip_headers: None,
            prices_file: None,
            token: None,
            routes: Vec::new(),
            credentials: None,
            mcp: None,
            destination_regions: BTreeMap::new(),
            llm_providers: Vec::new(),
            tenants: BTreeMap::new(),
        }
    }

    /// The tenant `id`.
    ///
    /// # Panics
    /// When the file has no such tenant: a test configuring a tenant it never declared is
    /// wrong, not a case to handle.
    pub fn tenant(&mut self, id: &str) -> &mut Tenant {
        self.tenants
            .get_mut(id)
            .unwrap_or_else(|| panic!("the tenant file declares no tenant `{id}`"))
    }

    /// The `[credentials]` table, created (empty) when missing.
    pub fn credentials(&mut self) -> &mut Credentials {
        self.credentials.get_or_insert_with(Credentials::default)
    }

    /// The file as TOML.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// The file as a TOML table, for a test that patches in what the types cannot express.
    pub fn to_table(&self) -> Result<toml::Table, toml::ser::Error> {
        toml::Table::try_from(self)
    }

    /// Writes the file to `path`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_toml().map_err(std::io::Error::other)?)
    }
}

/// `[token]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Token {
    /// JWKS file with the keys tokens are signed with.
    pub jwks_file: PathBuf,
    /// Required `aud`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Required `iss`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Longest lifetime accepted.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::option"
    )]
    pub max_lifetime: Option<Duration>,
    /// Clock-skew allowance.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::option"
    )]
    pub leeway: Option<Duration>,
    /// Revoked `jti`s, one a line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_jtis_file: Option<PathBuf>,
}

impl Token {
    /// Tokens checked against the keys in `jwks_file`, everything else the proxy's default.
    pub fn new(jwks_file: impl Into<PathBuf>) -> Self {
        Self {
            jwks_file: jwks_file.into(),
            audience: None,
            issuer: None,
            max_lifetime: None,
            leeway: None,
            revoked_jtis_file: None,
        }
    }
}

/// `[[route]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// Name (policy `context.route`).
    pub name: String,
    /// Path prefix, e.g. `/openai/`.
    pub prefix: String,
    /// Base URL the prefix maps to.
    pub upstream: String,
    /// An internal service (W3C `baggage` is forwarded to it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal: Option<bool>,
    /// The LLM provider behind it, for the price table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The upstream's region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

impl Route {
    /// `prefix` maps to `upstream`.
    pub fn new(name: &str, prefix: &str, upstream: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            prefix: prefix.into(),
            upstream: upstream.into(),
            internal: None,
            provider: None,
            region: None,
        }
    }
}

/// `[tenants.<id>]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    /// Plan (policy `principal.tenant.plan`).
    pub plan: String,
    /// Region (policy `principal.tenant.region`).
    pub region: String,
    /// IANA zone of the tenant's days and months.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Workload ids.
    pub workloads: Vec<String>,
    /// The tenant's own egress exceptions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub egress_allow: Vec<String>,
    /// Open tunnels for this tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tunnels: Option<u32>,
    /// Ceilings on the tenant's traffic as a whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<Ceilings>,
    /// Ceilings on single workloads, by workload id.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub workload_limits: BTreeMap<String, Ceilings>,
}

impl Tenant {
    /// A tenant on `plan` in `region` with these workloads.
    pub fn new(plan: &str, region: &str, workloads: &[&str]) -> Self {
        Self {
            plan: plan.into(),
            region: region.into(),
            time_zone: None,
            workloads: workloads.iter().map(|w| (*w).to_string()).collect(),
            egress_allow: Vec::new(),
            max_tunnels: None,
            limits: None,
            workload_limits: BTreeMap::new(),
        }
    }

    /// The tenant's ceilings, created (empty) when missing.
    pub fn limits(&mut self) -> &mut Ceilings {
        self.limits.get_or_insert_with(Ceilings::default)
    }

    /// `workload`'s own ceilings, created (empty) when missing.
    pub fn workload_limits(&mut self, workload: &str) -> &mut Ceilings {
        self.workload_limits.entry(workload.into()).or_default()
    }
}

/// `[tenants.<id>.limits]` and `[tenants.<id>.workload_limits.<workload>]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ceilings {
    /// Sustained requests per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
    /// Requests at once above the per-second rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Requests per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Requests in flight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// LLM tokens per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// LLM cost per calendar day, in micro-units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_per_day_micros: Option<u64>,
    /// LLM cost per calendar month, in micro-units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_per_month_micros: Option<u64>,
    /// Output tokens reserved for a call without `max_tokens`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assumed_max_tokens: Option<u64>,
    /// What a stream crossing a ceiling does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mid_stream: Option<MidStream>,
    /// What LLM work the proxy cannot meter gets while spend is capped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unmetered_calls: Option<Unmetered>,
}

/// `unmetered_calls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmetered {
    /// Refuse it (`unmetered_call`).
    Refuse,
    /// Let it through as a call.
    Allow,
}

/// `mid_stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MidStream {
    /// End the stream with an SSE error event.
    Cut,
    /// Let it finish; settle the overage afterwards.
    Finish,
}

/// `[credentials]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Credentials {
    /// The embedded encrypted vault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vault_file: Option<PathBuf>,
    /// File holding the vault's base64 master key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_key_file: Option<PathBuf>,
    /// Environment variable holding the master key instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_key_env: Option<String>,
    /// Mounted secret files, `DIR/<tenant>/<name>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_dir: Option<PathBuf>,
    /// Largest body scanned for handles (bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan_body_max_bytes: Option<usize>,
    /// `refuse` or `strip` agent-supplied keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_credential: Option<RawCredential>,
    /// Headers that carry credentials besides every provider's own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credential_headers: Vec<String>,
    /// Query parameters and body fields that carry credentials besides every provider's own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credential_fields: Vec<String>,
    /// How long a token credential's grant may take.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::option"
    )]
    pub token_timeout: Option<Duration>,
    /// `[[credentials.file]]`: credentials read from `files_dir`, with their bindings.
    #[serde(rename = "file", skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileCredential>,
}

/// `[credentials] raw_credential`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RawCredential {
    /// Refuse with `raw_credential`.
    Refuse,
    /// Remove the literal and forward.
    Strip,
}

/// `[[credentials.file]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileCredential {
    /// Tenant.
    pub tenant: String,
    /// Name (and file name).
    pub name: String,
    /// Destinations: `HOST`, `*.DOMAIN`, `https://HOST:PORT/PATH`, …
    pub bind: Vec<String>,
    /// Where the handle may appear.
    #[serde(rename = "in", skip_serializing_if = "Vec::is_empty")]
    pub positions: Vec<CredentialPosition>,
    /// `static` (default when absent) or `aws_sigv4` (the file holds the key as JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

impl FileCredential {
    /// `tenant`'s credential `name`, bound to `bind`, in headers only.
    pub fn header(tenant: &str, name: &str, bind: &[&str]) -> Self {
        Self {
            tenant: tenant.into(),
            name: name.into(),
            bind: bind.iter().map(|b| (*b).to_string()).collect(),
            positions: vec![CredentialPosition::Header],
            kind: None,
        }
    }
}

/// Where a credential handle may appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialPosition {
    /// A request header.
    Header,
    /// The query string.
    Query,
    /// The body.
    Body,
}

/// `[mcp]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Mcp {
    /// Largest JSON response or SSE event buffered to filter it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<usize>,
    /// `[[mcp.servers]]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<McpServer>,
    /// The key MCP session ids are sealed with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_key_file: Option<PathBuf>,
}

/// `[[mcp.servers]]`: a server named by its route, or by its host (and port, path prefix).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct McpServer {
    /// Name (policy `context.server`).
    pub name: String,
    /// A route that leads to the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Its host, for forward and tunnel mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Only this port of `host`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Only paths under this prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
}

impl McpServer {
    /// The server reached through route `route`.
    pub fn by_route(name: &str, route: &str) -> Self {
        Self {
            name: name.into(),
            route: Some(route.into()),
            host: None,
            port: None,
            path_prefix: None,
        }
    }

    /// The server at `host` (every port and path unless narrowed).
    pub fn by_host(name: &str, host: &str) -> Self {
        Self {
            name: name.into(),
            route: None,
            host: Some(host.into()),
            port: None,
            path_prefix: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The ready file

/// What `tenant-proxy run --ready-file PATH` writes once every socket listens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Ready {
    /// The admin address.
    pub admin: SocketAddr,
    /// Each listener's address, by name.
    pub listeners: BTreeMap<String, SocketAddr>,
    /// The approvals API's address, when `[approvals]` is configured.
    #[serde(default)]
    pub approvals: Option<SocketAddr>,
}

impl Ready {
    /// The ready file at `path`: `Ok(None)` while it does not exist. The proxy renames it into
    /// place whole, so a file that exists and does not parse is an error, not a partial write.
    pub fn read(path: &Path) -> Result<Option<Self>, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| format!("ready file `{}`: {e}: {text}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("ready file `{}`: {e}", path.display())),
        }
    }

    /// The port listener `name` got.
    pub fn port(&self, name: &str) -> Option<u16> {
        self.listeners.get(name).map(SocketAddr::port)
    }
}

// ---------------------------------------------------------------------------------------------

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Durations as the proxy reads them (`humantime`: `250ms`, `5s`, `1h`).
mod duration {
    use super::{Duration, Serializer};

    pub fn option<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_table_renders_where_the_proxy_reads_it() {
        let mut s = StaticFile::new("tenants.toml", "audit dir");
        s.admin.listen = Some(LOOPBACK_ANY_PORT);
        s.listeners.push(Listener::bound("side car", "acme", "bot"));
        s.listeners.push(Listener::token("shared"));
        s.audit.flush_interval = Some(Duration::from_millis(5));
        s.egress
            .hosts
            .insert("llm.test".into(), vec!["127.0.0.1".into()]);
        s.egress.connect_ports = Some(vec![443, 8443]);
        s.server.grace_period = Some(Duration::ZERO);
        s.limiter = Limiter::redis("redis://127.0.0.1:6379", Duration::from_millis(100));
        let table = s.to_table().unwrap();
        assert_eq!(table["tenants_file"].as_str(), Some("tenants.toml"));
        assert_eq!(table["admin"]["listen"].as_str(), Some("127.0.0.1:0"));
        let listeners = table["listener"].as_array().unwrap();
        assert_eq!(listeners[0]["name"].as_str(), Some("side car"));
        assert_eq!(listeners[0]["identity"][0].as_str(), Some("binding"));
        assert_eq!(listeners[0]["binding"]["tenant"].as_str(), Some("acme"));
        assert!(listeners[1].get("binding").is_none());
        assert_eq!(table["audit"]["dir"].as_str(), Some("audit dir"));
        assert_eq!(table["audit"]["flush_interval"].as_str(), Some("5ms"));
        assert!(table["audit"].get("fsync").is_none(), "unset: not written");
        assert_eq!(
            table["egress"]["hosts"]["llm.test"][0].as_str(),
            Some("127.0.0.1")
        );
        assert_eq!(table["server"]["grace_period"].as_str(), Some("0s"));
        assert_eq!(table["limiter"]["backend"].as_str(), Some("redis"));
        assert_eq!(table["limiter"]["timeout"].as_str(), Some("100ms"));
        // Sections left at their defaults are not written at all.
        for absent in ["upstream", "intercept", "limits", "log"] {
            assert!(table.get(absent).is_none(), "{absent}");
        }
        // The text parses back to the same table.
        let text = s.to_toml().unwrap();
        assert_eq!(text.parse::<toml::Table>().unwrap(), table);
    }

    #[test]
    fn tenants_ceilings_and_credentials_render_as_documented() {
        let mut t = TenantFile::new("policies");
        t.tenants.insert(
            "acme".into(),
            Tenant::new("pro", "eu", &["bot", "researcher"]),
        );
        let acme = t.tenant("acme");
        acme.time_zone = Some("Europe/Berlin".into());
        acme.limits().cost_per_day_micros = Some(400);
        acme.limits().mid_stream = Some(MidStream::Finish);
        acme.workload_limits("researcher").concurrency = Some(1);
        t.routes
            .push(Route::new("llm", "/llm/", "http://127.0.0.1:1/v1/"));
        t.credentials().files_dir = Some("secrets".into());
        t.credentials()
            .files
            .push(FileCredential::header("acme", "openai", &["llm.test"]));
        t.credentials().raw_credential = Some(RawCredential::Strip);
        t.mcp = Some(Mcp {
            max_message_bytes: None,
            servers: vec![McpServer::by_route("tools", "llm")],
            session_key_file: Some("mcp-session.key".into()),
        });
        let table = t.to_table().unwrap();
        let acme = &table["tenants"]["acme"];
        assert_eq!(acme["time_zone"].as_str(), Some("Europe/Berlin"));
        assert_eq!(
            acme["limits"]["cost_per_day_micros"].as_integer(),
            Some(400)
        );
        assert_eq!(acme["limits"]["mid_stream"].as_str(), Some("finish"));
        assert_eq!(
            acme["workload_limits"]["researcher"]["concurrency"].as_integer(),
            Some(1)
        );
        assert_eq!(table["route"][0]["prefix"].as_str(), Some("/llm/"));
        let file = &table["credentials"]["file"][0];
        assert_eq!(file["in"][0].as_str(), Some("header"));
        assert_eq!(
            table["credentials"]["raw_credential"].as_str(),
            Some("strip")
        );
        assert_eq!(table["mcp"]["servers"][0]["route"].as_str(), Some("llm"));
        assert_eq!(t.to_toml().unwrap().parse::<toml::Table>().unwrap(), table);
    }

    #[test]
    #[should_panic(expected = "no tenant `initech`")]
    fn configuring_an_undeclared_tenant_is_a_mistake() {
        TenantFile::new("p").tenant("initech");
    }

    #[test]
    fn ready_file_is_absent_or_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready.json");
        assert_eq!(Ready::read(&path), Ok(None));
        std::fs::write(
            &path,
            r#"{"admin":"127.0.0.1:9","listeners":{"sidecar":"127.0.0.1:10"}}"#,
        )
        .unwrap();
        let ready = Ready::read(&path).unwrap().unwrap();
        assert_eq!(ready.admin.port(), 9);
        assert_eq!(ready.port("sidecar"), Some(10));
        assert_eq!(ready.port("shared"), None);
        std::fs::write(&path, "{").unwrap();
        assert!(Ready::read(&path).is_err());
    }
}
