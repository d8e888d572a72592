//! Raw configuration as written in TOML. Nothing here is validated beyond its type; see
//! [`super::model`] for the runtime types.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// `tenant-proxy.toml`: the static part, read once at start.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticSpec {
    /// The tenant configuration file, reloaded on change and on SIGHUP.
    pub tenants_file: PathBuf,
    /// The admin listener (health, readiness, metrics).
    #[serde(default)]
    pub admin: AdminSpec,
    /// Proxy listeners; each names how it identifies workloads.
    #[serde(rename = "listener", default)]
    pub listeners: Vec<ListenerSpec>,
    /// The audit sink.
    pub audit: AuditSpec,
    /// How upstreams are reached.
    #[serde(default)]
    pub upstream: UpstreamSpec,
    /// Which destinations may be dialed, and tunnels.
    #[serde(default)]
    pub egress: EgressSpec,
    /// TLS interception of `CONNECT` tunnels (absent: tunnels can only pass through opaquely).
    pub intercept: Option<InterceptSpec>,
    /// Request size caps.
    #[serde(default)]
    pub limits: RequestLimitsSpec,
    /// Where rate and concurrency counters live.
    #[serde(default)]
    pub limiter: LimiterSpec,
    /// Process settings.
    #[serde(default)]
    pub server: ServerSpec,
    /// Logging.
    #[serde(default)]
    pub log: LogSpec,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSpec {
    /// Address of the admin listener; keep it on loopback or a private interface.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
}

impl Default for AdminSpec {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}

/// `[[listener]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    /// A name for logs and metrics.
    pub name: String,
    /// `host:port` to bind.
    pub listen: String,
    /// Identity sources tried in order: `binding`, `token`.
    pub identity: Vec<String>,
    /// For `binding`: the one workload every connection on this listener is.
    pub binding: Option<BindingSpec>,
    /// For `mtls`: the listener speaks TLS and requires client certificates.
    pub tls: Option<ListenerTlsSpec>,
}

/// `[listener.tls]`: an mTLS listener whose clients are identified by their SPIFFE ID.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsSpec {
    /// The listener's own certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA certificates client certificates must chain to (PEM; reloaded when the file changes).
    pub client_ca: PathBuf,
    /// The SPIFFE ID pattern, e.g. `spiffe://{trust_domain}/tenant/{tenant}/workload/{workload}`.
    pub spiffe_id: String,
    /// The trust domain client IDs must belong to, e.g. `example.org`.
    pub trust_domain: String,
}

/// `[egress]`: the SSRF guard and tunnel settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressSpec {
    /// Non-global destinations every tenant may reach: CIDRs (`10.1.0.0/16`) or `host:port`.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Ports `CONNECT` may open tunnels to.
    #[serde(default = "default_connect_ports")]
    pub connect_ports: Vec<u16>,
    /// Static answers for names (checked like any DNS answer), e.g. `"api.internal" = ["10.0.0.5"]`.
    #[serde(default)]
    pub hosts: BTreeMap<String, Vec<String>>,
    /// Longest a DNS lookup may take.
    #[serde(default = "default_dns_timeout")]
    pub dns_timeout: String,
    /// A tunnel with no traffic (opaque) or no request (intercepted) for this long is closed.
    #[serde(default = "default_tunnel_idle_timeout")]
    pub tunnel_idle_timeout: String,
    /// Open tunnels per tenant, unless the tenant sets `max_tunnels`.
    #[serde(default = "default_max_tunnels")]
    pub max_tunnels_per_tenant: u32,
    /// Longest a client may take to send a request head, from its first byte (and to start one
    /// on a new connection).
    #[serde(default = "default_client_header_timeout")]
    pub client_header_timeout: String,
}

impl Default for EgressSpec {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            connect_ports: default_connect_ports(),
            hosts: BTreeMap::new(),
            dns_timeout: default_dns_timeout(),
            tunnel_idle_timeout: default_tunnel_idle_timeout(),
            max_tunnels_per_tenant: default_max_tunnels(),
            client_header_timeout: default_client_header_timeout(),
        }
    }
}

fn default_connect_ports() -> Vec<u16> {
    vec![443]
}
fn default_dns_timeout() -> String {
    "2s".into()
}
fn default_tunnel_idle_timeout() -> String {
    "5m".into()
}
fn default_max_tunnels() -> u32 {
    256
}
fn default_client_header_timeout() -> String {
    "10s".into()
}

/// `[intercept]`: the local CA that signs per-host leaves for intercepted tunnels.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterceptSpec {
    /// CA certificate (PEM), from `tenant-proxy ca init`.
    pub ca_cert: PathBuf,
    /// CA private key (PEM).
    pub ca_key: PathBuf,
    /// Lifetime of minted leaves (never written to disk).
    #[serde(default = "default_leaf_ttl")]
    pub leaf_ttl: String,
    /// Most leaves kept in memory.
    #[serde(default = "default_leaf_cache")]
    pub leaf_cache: usize,
}

fn default_leaf_ttl() -> String {
    "12h".into()
}
fn default_leaf_cache() -> usize {
    10_000
}

/// `binding = { tenant = "…", workload = "…" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingSpec {
    /// Tenant id.
    pub tenant: String,
    /// Workload id.
    pub workload: String,
}

/// `[audit]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSpec {
    /// Root of the per-tenant partitions (`DIR/<tenant>/<yyyy>/<mm>/<dd>.jsonl`).
    pub dir: PathBuf,
    /// Records that may wait to be written; when full, new requests are refused.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// `batch` (fsync after each written batch, the default) or `none`.
    #[serde(default = "default_fsync")]
    pub fsync: String,
    /// Longest a record waits before its batch is written, e.g. `20ms`.
    #[serde(default = "default_flush_interval")]
    pub flush_interval: String,
    /// Size at which a day's file is continued in a new part (`<dd>_000001.jsonl`, …).
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// How often each tenant's chain head is signed (and at shutdown), e.g. `60s`.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: String,
    /// PKCS#8 Ed25519 private key (PEM or DER) that signs checkpoints; without it a key is
    /// generated at each start and kept in memory only.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// `redis://host:port/db`: also append each record to the Redis Stream
    /// `tp:{<tenant>}:audit`.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Refuse requests (`audit_unavailable`) while the stream cannot be written, as for the
    /// files; otherwise records the stream missed are only in the files.
    #[serde(default)]
    pub redis_required: bool,
    /// Approximate length each tenant's stream is trimmed to.
    #[serde(default = "default_redis_maxlen")]
    pub redis_maxlen: u64,
}

fn default_redis_maxlen() -> u64 {
    100_000
}

fn default_max_file_bytes() -> u64 {
    128 * 1024 * 1024
}
fn default_checkpoint_interval() -> String {
    "60s".into()
}

fn default_queue_capacity() -> usize {
    65_536
}
fn default_fsync() -> String {
    "batch".into()
}
fn default_flush_interval() -> String {
    "20ms".into()
}

/// `[upstream]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// TCP (and TLS) connect timeout.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    /// Longest wait for each read from the upstream (time to first byte included).
    #[serde(default = "default_read_timeout")]
    pub read_timeout: String,
    /// Longest wait for each write to the upstream.
    #[serde(default = "default_write_timeout")]
    pub write_timeout: String,
    /// PEM files of CAs trusted for upstream TLS in addition to the system roots.
    #[serde(default)]
    pub extra_ca_files: Vec<PathBuf>,
}

impl Default for UpstreamSpec {
    fn default() -> Self {
        Self {
            connect_timeout: default_connect_timeout(),
            read_timeout: default_read_timeout(),
            write_timeout: default_write_timeout(),
            extra_ca_files: Vec::new(),
        }
    }
}

fn default_connect_timeout() -> String {
    "5s".into()
}
fn default_read_timeout() -> String {
    "120s".into()
}
fn default_write_timeout() -> String {
    "30s".into()
}

/// `[limits]`: what one request, one connection and the whole process may hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLimitsSpec {
    /// Largest request head, request line to blank line (431 above it, never buffered past).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header fields in a request head (431 above it; at most 256).
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Largest request body (413 above it, before any upstream is dialed).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// From the end of a request head to the end of its body (408 and close after it).
    #[serde(default = "default_client_body_timeout")]
    pub client_body_timeout: String,
    /// Request body bytes all requests in flight may hold together (503 `overloaded` above it).
    #[serde(default = "default_max_buffered_body_bytes")]
    pub max_buffered_body_bytes: u64,
    /// Open client connections per listener (503 `overloaded` above it).
    #[serde(default = "default_max_connections_per_listener")]
    pub max_connections_per_listener: u32,
    /// Open client connections per tenant (429 `connection_limit` above it).
    #[serde(default = "default_max_connections_per_tenant")]
    pub max_connections_per_tenant: u32,
}

impl Default for RequestLimitsSpec {
    fn default() -> Self {
        Self {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_body_bytes: default_max_body_bytes(),
            client_body_timeout: default_client_body_timeout(),
            max_buffered_body_bytes: default_max_buffered_body_bytes(),
            max_connections_per_listener: default_max_connections_per_listener(),
            max_connections_per_tenant: default_max_connections_per_tenant(),
        }
    }
}

fn default_max_header_bytes() -> usize {
    32 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_client_body_timeout() -> String {
    "30s".into()
}
fn default_max_buffered_body_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_max_connections_per_listener() -> u32 {
    10_000
}
fn default_max_connections_per_tenant() -> u32 {
    2_000
}
fn default_max_body_bytes() -> usize {
    8 * 1024 * 1024
}

/// `[limiter]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimiterSpec {
    /// `memory` (default: this process only) or `redis` (shared by replicas).
    pub backend: Option<String>,
    /// `redis://host:port/db` for the `redis` backend.
    pub redis_url: Option<String>,
    /// Longest wait for one Redis call (default `50ms`).
    pub timeout: Option<String>,
    /// How long a concurrency slot outlives a crashed replica (default `5m`).
    pub lease_ttl: Option<String>,
    /// `fail_closed` (default: refuse with `limiter_unavailable`) or `local_fallback`.
    pub on_unavailable: Option<String>,
    /// How long a run's counters (tokens, cost, tool calls, start) live after its last
    /// reservation (default `168h`).
    pub run_ttl: Option<String>,
    /// Signed runs of one tenant this replica watches for their summary at once (default
    /// 10 000).
    pub watched_runs_per_tenant: Option<usize>,
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// Worker threads per listener.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// How long to keep serving after SIGTERM before shutting down.
    #[serde(default = "default_grace")]
    pub grace_period: String,
    /// How long in-flight requests get once shutdown starts.
    #[serde(default = "default_grace")]
    pub graceful_shutdown_timeout: String,
}

impl Default for ServerSpec {
    fn default() -> Self {
        Self {
            threads: default_threads(),
            grace_period: default_grace(),
            graceful_shutdown_timeout: default_grace(),
        }
    }
}

fn default_threads() -> usize {
    2
}
fn default_grace() -> String {
    "5s".into()
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSpec {
    /// `text` (default) or `json`.
    pub format: Option<String>,
    /// A `tracing` filter such as `info` or `tenant_proxy=debug`; `RUST_LOG` overrides it.
    pub level: Option<String>,
}

/// The tenant file: everything that may change while the proxy runs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantsSpec {
    /// Directory of Cedar schema and policies.
    pub policy_dir: PathBuf,
    /// A second policy directory asked every question in report-only (shadow) mode: its
    /// decisions are audited and counted, never enforced.
    pub shadow_policy_dir: Option<PathBuf>,
    /// Request headers that claim a tenant or workload; always removed before forwarding.
    #[serde(default = "default_strip_headers")]
    pub strip_headers: Vec<String>,
    /// Signed workload tokens.
    pub token: Option<TokenSpec>,
    /// Route-mode prefixes.
    #[serde(rename = "route", default)]
    pub routes: Vec<RouteSpec>,
    /// Where tenants' secrets come from and how handles are treated.
    pub credentials: Option<CredentialsSpec>,
    /// Price table that turns LLM tokens into cost (needed by cost ceilings).
    pub prices_file: Option<PathBuf>,
    /// Tenants by id.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantSpec>,
    /// MCP servers (`[mcp]`): destinations whose tool calls are authorized one by one.
    pub mcp: Option<crate::mcp::config::McpSpec>,
    /// Regions of upstream destinations: region name -> host names (`*.domain` for
    /// subdomains), available to policies as `context.destination_region`.
    #[serde(default)]
    pub destination_regions: BTreeMap<String, Vec<String>>,
}

fn default_strip_headers() -> Vec<String> {
    [
        "x-tenant-id",
        "x-tenant",
        "x-workload-id",
        "x-org-id",
        "x-organization-id",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// `[token]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// JWKS file with the public keys tokens are signed with (EdDSA or ES256).
    pub jwks_file: PathBuf,
    /// Required `aud`.
    #[serde(default = "default_audience")]
    pub audience: String,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Longest lifetime (`exp - iat`) accepted; longer-lived tokens are refused.
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime: String,
    /// Clock-skew allowance for `exp`, `nbf`, `iat`.
    #[serde(default = "default_leeway")]
    pub leeway: String,
    /// File of revoked `jti`s, one per line (`#` comments allowed).
    pub revoked_jtis_file: Option<PathBuf>,
}

fn default_audience() -> String {
    "tenant-proxy".into()
}
fn default_max_lifetime() -> String {
    "1h".into()
}
fn default_leeway() -> String {
    "30s".into()
}

/// `[[route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Route name (available to policies as `context.route`).
    pub name: String,
    /// Path prefix, starting and ending with `/`, e.g. `/openai/`.
    pub prefix: String,
    /// Base URL the prefix maps to, e.g. `https://api.openai.com/v1/`.
    pub upstream: String,
    /// An internal service: W3C `baggage` is forwarded to it (it is removed toward external hosts).
    #[serde(default)]
    pub internal: bool,
    /// The LLM provider behind the route, for the price table (`openai`, `anthropic`, …);
    /// well-known API hosts need none.
    pub provider: Option<String>,
    /// Region of this route's upstream (policy `context.destination_region`); overrides
    /// `[destination_regions]` for requests through the route.
    pub region: Option<String>,
}

/// `[tenants.<id>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    /// Plan name, available to policies (`principal.tenant.plan`).
    pub plan: String,
    /// Region, available to policies (`principal.tenant.region`).
    pub region: String,
    /// IANA time zone in which the tenant's days and months (cost ceilings) begin (default UTC).
    pub time_zone: Option<String>,
    /// Workload ids of this tenant.
    pub workloads: Vec<String>,
    /// Ceilings on the tenant's traffic as a whole.
    #[serde(default)]
    pub limits: Option<crate::limits::Ceilings>,
    /// Ceilings on single workloads, by workload id (checked in addition to the tenant's).
    #[serde(default)]
    pub workload_limits: BTreeMap<String, crate::limits::Ceilings>,
    /// Non-global destinations this tenant may reach (CIDRs or `host:port`), besides the global
    /// `[egress] allow`.
    #[serde(default)]
    pub egress_allow: Vec<String>,
    /// Open tunnels for this tenant (default: `[egress] max_tunnels_per_tenant`).
    pub max_tunnels: Option<u32>,
}

/// `[credentials]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsSpec {
    /// The embedded encrypted vault (edit it with `tenant-proxy cred`).
    pub vault_file: Option<PathBuf>,
    /// File holding the base64 master key that unwraps the vault's data keys.
    pub master_key_file: Option<PathBuf>,
    /// Environment variable holding the base64 master key (instead of a file).
    pub master_key_env: Option<String>,
    /// Mounted secret files, `DIR/<tenant>/<name>` (instead of a vault).
    pub files_dir: Option<PathBuf>,
    /// Credentials read from `files_dir`, with their bindings.
    #[serde(rename = "file", default)]
    pub files: Vec<FileCredentialSpec>,
    /// Largest JSON or form body scanned for handles (bytes).
    #[serde(default = "default_scan_body_max")]
    pub scan_body_max_bytes: usize,
    /// `refuse` (default) or `strip` a literal key sent where the proxy manages the credential.
    #[serde(default = "default_raw_credential")]
    pub raw_credential: String,
    /// Headers that carry credentials besides every provider's own (`authorization`,
    /// `x-api-key`, …): handles may appear in them, literals may not.
    #[serde(default)]
    pub credential_headers: Vec<String>,
}

fn default_scan_body_max() -> usize {
    1024 * 1024
}
fn default_raw_credential() -> String {
    "refuse".into()
}

/// `[[credentials.file]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCredentialSpec {
    /// Tenant.
    pub tenant: String,
    /// Name (and file name).
    pub name: String,
    /// Destinations: `HOST`, `*.DOMAIN`, optionally `https://HOST:PORT/PATH`.
    pub bind: Vec<String>,
    /// Positions: `header`, `query`, `body` (default `header`).
    #[serde(rename = "in", default)]
    pub positions: Vec<String>,
}
