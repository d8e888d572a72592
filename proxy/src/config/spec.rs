//! The two files as written in TOML. Nothing here is validated beyond its type; each section's
//! raw form and its validator live with the concern that owns it (`audit::settings`,
//! `identity::listener`, `limits::settings`, ...), and [`super::model`] assembles the results.
//! Closed sets of values (log format, limiter backend, fsync, identity sources, ...) are enums:
//! an unknown value is a parse error that names the allowed ones, with its line and column.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::audit::AuditSpec;
use crate::credentials::settings::CredentialsSpec;
use crate::egress::settings::{EgressSpec, UpstreamSpec};
use crate::front::settings::RequestLimitsSpec;
use crate::identity::listener::ListenerSpec;
use crate::identity::token::TokenSpec;
use crate::limits::{Ceilings, LimiterSpec};
use crate::logging::LogSpec;
use crate::mcp::config::McpSpec;
use crate::otel::TracingSpec;
use crate::target::settings::RouteSpec;
use crate::tls::settings::InterceptSpec;

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
    /// Human approval holds and the approvals API (absent: a request a policy marks for
    /// approval is refused).
    pub approvals: Option<crate::approvals::ApprovalsSpec>,
    /// How the policy engine runs (its decision cache).
    #[serde(default)]
    pub policy: crate::policy::settings::PolicySpec,
    /// Process settings.
    #[serde(default)]
    pub server: ServerSpec,
    /// Logging.
    #[serde(default)]
    pub log: LogSpec,
    /// Trace export (OpenTelemetry, OTLP/HTTP); off by default.
    #[serde(default)]
    pub tracing: TracingSpec,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSpec {
    /// Address of the admin listener; keep it on loopback or a private interface.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// A file holding the bearer token every admin endpoint but `/healthz` and `/readyz`
    /// requires (read at start and on every reload).
    pub token_file: Option<PathBuf>,
}

impl Default for AdminSpec {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token_file: None,
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// Worker threads per listener.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// The drain time: how long requests in flight get to finish after SIGTERM (no new
    /// connections are accepted); those still running then are cut, and still recorded.
    #[serde(default = "default_grace")]
    pub grace_period: String,
    /// How long the requests cut at the end of the drain time get to record and settle before
    /// the process exits.
    #[serde(default = "default_grace")]
    pub graceful_shutdown_timeout: String,
    /// How long after SIGTERM the proxy goes on serving as usual, new connections included,
    /// with `/readyz` answering 503, before the drain begins: the time a load balancer or
    /// Kubernetes takes to stop sending it connections.
    #[serde(default = "default_shutdown_delay")]
    pub shutdown_delay: String,
}

impl Default for ServerSpec {
    fn default() -> Self {
        Self {
            threads: default_threads(),
            grace_period: default_grace(),
            graceful_shutdown_timeout: default_grace(),
            shutdown_delay: default_shutdown_delay(),
        }
    }
}

fn default_threads() -> usize {
    2
}
fn default_grace() -> String {
    "5s".into()
}
fn default_shutdown_delay() -> String {
    "0s".into()
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
    pub mcp: Option<McpSpec>,
    /// Regions of upstream destinations: region name -> host names (`*.domain` for
    /// subdomains), available to policies as `context.destination_region`.
    #[serde(default)]
    pub destination_regions: BTreeMap<String, Vec<String>>,
    /// LLM providers declared by host (`[[llm_provider]]`): OpenAI-compatible servers and Azure
    /// OpenAI resources, with deployment -> model mappings.
    #[serde(rename = "llm_provider", default)]
    pub llm_providers: Vec<crate::usage::providers::configured::LlmProviderSpec>,
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
    pub limits: Option<Ceilings>,
    /// Ceilings on single workloads, by workload id (checked in addition to the tenant's).
    #[serde(default)]
    pub workload_limits: BTreeMap<String, Ceilings>,
    /// Non-global destinations this tenant may reach (CIDRs or `host:port`), besides the global
    /// `[egress] allow`.
    #[serde(default)]
    pub egress_allow: Vec<String>,
    /// Open tunnels for this tenant (default: `[egress] max_tunnels_per_tenant`).
    pub max_tunnels: Option<u32>,
}
