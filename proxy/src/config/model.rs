//! The validated configuration, assembled from the sections each concern validates. Every
//! value here passed its section's checks; an invalid configuration is never served.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;

use super::regions::DestinationRegions;
use super::spec::{ServerSpec, StaticSpec, TenantSpec, TenantsSpec};
use super::{read_toml, ConfigProblem};
use crate::audit::AuditSettings;
use crate::credentials::apply::CredentialSettings;
use crate::credentials::CredentialSource;
use crate::egress::{EgressException, EgressSettings, UpstreamSettings};
use crate::front::RequestLimits;
use crate::identity::token::TokenConfig;
use crate::identity::{ListenerSettings, Workloads};
use crate::ids::{TenantId, WorkloadId};
use crate::limits::calendar::TenantCalendar;
use crate::limits::settings::TenantCeilings;
use crate::limits::{Ceilings, LimiterSettings};
use crate::logging::LogFormat;
use crate::mcp::config::McpSettings;
use crate::otel::TracingSettings;
use crate::pricing::PriceTable;
use crate::problems::{Checked, Problems};
use crate::target::Route;
use crate::tls::InterceptSettings;

/// The static configuration: listeners, admin, audit, upstream and process settings.
#[derive(Debug, Clone)]
pub struct StaticConfig {
    /// The file this was read from.
    pub path: PathBuf,
    /// The tenant configuration file (resolved against `path`).
    pub tenants_file: PathBuf,
    /// Admin listener address.
    pub admin_listen: SocketAddr,
    /// The admin token's file (resolved), when the admin endpoints require one; the token itself
    /// is read by each load of the snapshot, so that a reload reads it again.
    pub admin_token_file: Option<PathBuf>,
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
    /// Approval holds and their API, when configured.
    pub approvals: Option<crate::approvals::ApprovalSettings>,
    /// Signed runs of one tenant watched for their `run_summary` at once (`[limiter]
    /// watched_runs_per_tenant`); past it, that tenant's new runs are summarized only when
    /// closed or by another replica.
    pub watched_runs_per_tenant: usize,
    /// How the policy engine runs.
    pub policy: crate::policy::settings::PolicySettings,
    /// Worker threads per listener.
    pub threads: usize,
    /// The drain time: how long requests in flight get to finish after SIGTERM.
    pub grace_period: Duration,
    /// How long the requests cut after the drain time get to record and settle.
    pub graceful_shutdown_timeout: Duration,
    /// How long after SIGTERM everything is served as usual (`/readyz` 503) before the drain.
    pub shutdown_delay: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// Trace export.
    pub tracing: TracingSettings,
}

impl StaticConfig {
    /// Reads and validates the static configuration file.
    pub fn load(path: &Path) -> Result<Self, Vec<ConfigProblem>> {
        Self::check(path)?.into_result()
    }

    /// Reads the static file and validates every section, keeping what is valid: `Err` only
    /// when the file cannot be read or parsed at all.
    pub fn check(path: &Path) -> Result<Checked<Self>, Vec<ConfigProblem>> {
        let spec: StaticSpec = read_toml(path).map_err(|p| vec![p])?;
        Ok(Self::from_spec(path, spec))
    }

    fn from_spec(path: &Path, spec: StaticSpec) -> Checked<Self> {
        let mut p = Problems::new(path);
        let admin_listen = spec.admin.listen.parse::<SocketAddr>().unwrap_or_else(|_| {
            p.push(
                "admin.listen",
                format!("`{}` is not an `ip:port` address", spec.admin.listen),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        });
        let admin_token_file = spec.admin.token_file.as_deref().map(|f| p.path(f));
        let listeners = ListenerSettings::list_from_spec(spec.listeners, admin_listen, &mut p);
        let audit = AuditSettings::from_spec(spec.audit, &mut p);
        let upstream = UpstreamSettings::from_spec(spec.upstream, &mut p);
        let egress = EgressSettings::from_spec(spec.egress, &mut p);
        let intercept = spec
            .intercept
            .map(|i| InterceptSettings::from_spec(i, &mut p));
        let limits = RequestLimits::from_spec(&spec.limits, &mut p);
        let limiter = LimiterSettings::from_spec(&spec.limiter, &mut p);
        let approvals = spec
            .approvals
            .map(|a| crate::approvals::ApprovalSettings::from_spec(a, &mut p));
        let watched_runs_per_tenant = spec
            .limiter
            .watched_runs_per_tenant
            .unwrap_or(crate::runs::MAX_WATCHED_PER_TENANT);
        if watched_runs_per_tenant == 0 {
            p.push("limiter.watched_runs_per_tenant", "must be at least 1");
        }
        let policy = crate::policy::settings::PolicySettings::from_spec(&spec.policy, &mut p);
        let server = ServerSettings::from_spec(spec.server, &mut p);
        let tracing = TracingSettings::from_spec(spec.tracing, &mut p);
        let tenants_file = p.path(&spec.tenants_file);
        p.checked(StaticConfig {
            path: path.to_path_buf(),
            tenants_file,
            admin_listen,
            admin_token_file,
            listeners,
            audit,
            upstream,
            egress,
            intercept,
            limits,
            limiter,
            approvals,
            watched_runs_per_tenant,
            policy,
            threads: server.threads,
            grace_period: server.grace_period,
            graceful_shutdown_timeout: server.graceful_shutdown_timeout,
            shutdown_delay: server.shutdown_delay,
            log_format: spec.log.format,
            log_level: spec.log.level.unwrap_or_else(|| "info".into()),
            tracing,
        })
    }
}

impl StaticConfig {
    /// The warning `check` prints and `run` logs when the admin endpoints need no token: anyone
    /// who can connect to the admin port can close any tenant's runs (for every replica sharing
    /// Redis) and read usage and metrics. A loopback address keeps other hosts out, not a
    /// process that shares the network namespace, as a sidecar's agent does.
    pub fn admin_token_warning(&self) -> Option<String> {
        if self.admin_token_file.is_some() {
            return None;
        }
        let reach = if self.admin_listen.ip().is_loopback() {
            "every process in this network namespace (in a Kubernetes pod, the agent next to a sidecar proxy too)"
        } else {
            "every host that can reach this address"
        };
        Some(format!(
            "the admin port {} requires no token: {reach} can close any tenant's runs and read usage and metrics; set `[admin] token_file`",
            self.admin_listen
        ))
    }
}

/// The warning for a file of secret material (`what`) that users other than the proxy's may
/// read or replace, if it is one: `cp`, an archive or a permissive umask leave keys group- or
/// world-readable, a `chown` gives them to another user, a directory others may write lets
/// them swap the file, and anyone on the host could then mint certificates or open the vault.
pub fn readable_secret_warning(what: &str, path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Some(format!(
            "{what} `{}` can be read by users other than its owner (mode {:o}): `chmod 600` it",
            path.display(),
            mode & 0o777
        ));
    }
    // `/proc/self` belongs to the process's effective user.
    let me = std::fs::metadata("/proc/self").ok().map(|m| m.uid());
    if me.is_some_and(|me| me != meta.uid()) {
        return Some(format!(
            "{what} `{}` belongs to another user (uid {}), who can read and replace it: `chown` it to the proxy's user",
            path.display(),
            meta.uid()
        ));
    }
    // The path as given (its links, and the directories holding them) and where the file really
    // is: a link another user owns can be pointed elsewhere by them; a directory others may
    // write (unless sticky, as `/tmp`: others may add files there, not replace this one), or
    // that a user other than root and the proxy's owns, lets them replace what is in it.
    let given = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    let foreign_link = given.ancestors().find_map(|p| {
        let link = std::fs::symlink_metadata(p).ok()?;
        (link.file_type().is_symlink() && link.uid() != 0 && Some(link.uid()) != me).then(|| {
            format!(
                "{what} `{}` is reached through a link another user owns (`{}`, uid {}): they can point it elsewhere",
                path.display(),
                p.display(),
                link.uid()
            )
        })
    });
    if foreign_link.is_some() {
        return foreign_link;
    }
    let real = std::fs::canonicalize(path).ok()?;
    let dirs: Vec<&std::path::Path> = given
        .ancestors()
        .skip(1)
        .chain(real.ancestors().skip(1))
        .collect();
    dirs.into_iter().find_map(|dir| {
        let m = std::fs::metadata(dir).ok()?;
        let mode = m.permissions().mode();
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Some(format!(
                "{what} `{}` is below a directory other users can write (`{}`, mode {:o}): they can replace it; `chmod go-w` the directory",
                path.display(),
                dir.display(),
                mode & 0o777
            ));
        }
        (m.uid() != 0 && Some(m.uid()) != me).then(|| {
            format!(
                "{what} `{}` is below a directory another user owns (`{}`, uid {}): they can replace it",
                path.display(),
                dir.display(),
                m.uid()
            )
        })
    })
}

impl StaticConfig {
    /// A warning when one tenant could hold every audit slot: each connection, tunnel or HTTP/2
    /// stream it has in flight holds one (a tunnel's `CONNECT` a second, for the tunnel's own
    /// record), so a tenant at `max_connections_per_tenant` holds up to twice that many, and
    /// while the queue is full every tenant's requests are refused `audit_unavailable`.
    pub fn audit_queue_warning(&self) -> Option<String> {
        let per_tenant = 2 * u64::from(self.limits.max_connections_per_tenant);
        (u64::try_from(self.audit.queue_capacity).unwrap_or(u64::MAX) < per_tenant).then(|| {
            format!(
                "[audit] queue_capacity ({}) is below twice [limits] max_connections_per_tenant ({per_tenant}): one tenant with its connections, tunnels and HTTP/2 streams in flight could hold every audit slot, and every other tenant's requests would be refused `audit_unavailable`; raise the capacity or lower the cap",
                self.audit.queue_capacity
            )
        })
    }

    /// The warnings `check` prints and `run` logs for the secret files of this configuration
    /// (the interception CA's key, listeners' TLS keys, the admin token, the audit signing key,
    /// Redis password files) that other users of the host may read.
    pub fn readable_secret_warnings(&self) -> Vec<String> {
        let mut files: Vec<(&str, &std::path::Path)> = Vec::new();
        if let Some(i) = &self.intercept {
            files.push(("the interception CA's key", &i.ca_key));
        }
        for l in &self.listeners {
            if let Some(tls) = &l.tls {
                files.push(("a listener's TLS key", &tls.key));
            }
        }
        if let Some(t) = &self.admin_token_file {
            files.push(("the admin token file", t));
        }
        if let Some(k) = &self.audit.signing_key {
            // Whoever reads it can sign a checkpoint for a trail cut short.
            files.push(("the audit checkpoint signing key", k));
        }
        if let crate::limits::settings::LimiterSettings::Redis(r) = &self.limiter {
            if let Some(f) = r.endpoint.password_file() {
                files.push(("the limiter's Redis password file", f));
            }
        }
        if let Some(f) = self
            .audit
            .stream
            .as_ref()
            .and_then(|s| s.endpoint.password_file())
        {
            files.push(("the audit stream's Redis password file", f));
        }
        files
            .into_iter()
            .filter_map(|(what, path)| readable_secret_warning(what, path))
            .collect()
    }

    /// The warnings `check` prints and `run` logs for listeners that take their binding as the
    /// identity of callers other hosts may be (see
    /// [`ListenerSettings::exposed_binding_warning`]).
    pub fn exposed_binding_warnings(&self) -> Vec<String> {
        self.listeners
            .iter()
            .filter_map(ListenerSettings::exposed_binding_warning)
            .collect()
    }
}

/// The most worker threads a listener may have.
const MAX_THREADS: usize = 1024;

/// The longest `[server] shutdown_delay`.
const MAX_SHUTDOWN_DELAY: Duration = Duration::from_secs(300);

/// `[server]`, validated.
struct ServerSettings {
    threads: usize,
    grace_period: Duration,
    graceful_shutdown_timeout: Duration,
    shutdown_delay: Duration,
}

impl ServerSettings {
    fn from_spec(spec: ServerSpec, p: &mut Problems<'_>) -> Self {
        if spec.threads == 0 {
            p.push("server.threads", "must be at least 1");
        }
        // Threads per listener: past a few per core they only cost memory and start-up time
        // (100,000 never finished starting).
        if spec.threads > MAX_THREADS {
            p.push(
                "server.threads",
                format!("must be at most {MAX_THREADS} (threads per listener; about one per core)"),
            );
        }
        let shutdown_delay = p.duration("server.shutdown_delay", &spec.shutdown_delay);
        // Past any termination budget the proxy would serve on, unready, until killed: nothing
        // in flight would be drained or recorded.
        if shutdown_delay > MAX_SHUTDOWN_DELAY {
            p.push(
                "server.shutdown_delay",
                "must be at most 5m (the time a load balancer takes to stop sending connections; \
                 the drain follows it)",
            );
        }
        Self {
            threads: spec.threads.max(1),
            grace_period: p.duration("server.grace_period", &spec.grace_period),
            graceful_shutdown_timeout: p.duration(
                "server.graceful_shutdown_timeout",
                &spec.graceful_shutdown_timeout,
            ),
            shutdown_delay,
        }
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
    /// The price table's file (resolved), when one is configured: a change to it reloads.
    pub prices_path: Option<PathBuf>,
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
    pub mcp: McpSettings,
    /// Regions of upstream destinations.
    pub regions: DestinationRegions,
    /// LLM providers declared by host (`[[llm_provider]]`).
    pub llm_providers: crate::usage::providers::configured::ConfiguredProviders,
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
    pub egress_allow: Vec<EgressException>,
    /// Cap on this tenant's open tunnels, when it overrides the global one.
    pub max_tunnels: Option<u32>,
}

impl TenantConfig {
    /// Reads and validates the tenant file (keys and policies are loaded by the snapshot).
    pub fn load(path: &Path) -> Result<Self, Vec<ConfigProblem>> {
        Self::check(path)?.into_result()
    }

    /// Reads the tenant file and validates every section, keeping what is valid: `Err` only
    /// when the file cannot be read or parsed at all.
    pub fn check(path: &Path) -> Result<Checked<Self>, Vec<ConfigProblem>> {
        let spec: TenantsSpec = read_toml(path).map_err(|p| vec![p])?;
        Ok(Self::from_spec(path, spec))
    }

    fn from_spec(path: &Path, spec: TenantsSpec) -> Checked<Self> {
        let mut p = Problems::new(path);
        let strip_headers = strip_headers(&spec.strip_headers, &mut p);
        let token = spec.token.map(|t| TokenConfig::from_spec(t, &mut p));
        let routes = Route::list_from_spec(spec.routes, &mut p);
        let mcp = McpSettings::from_spec(spec.mcp.unwrap_or_default(), &routes, &|f| p.path(f))
            .unwrap_or_else(|problems| {
                p.extend(problems);
                McpSettings::default()
            });
        let prices = spec
            .prices_file
            .as_ref()
            .and_then(|f| price_table(&p.path(f), &mut p));
        let has_prices = spec.prices_file.is_some();
        let prices_path = spec.prices_file.as_ref().map(|f| p.path(f));
        let tenants: BTreeMap<TenantId, TenantEntry> = spec
            .tenants
            .into_iter()
            .filter_map(|(id, t)| TenantEntry::from_spec(&id, t, has_prices, &mut p))
            .collect();
        let (credential_settings, credential_source) =
            crate::credentials::settings::from_spec(spec.credentials, &mut p);
        if let Some(crate::credentials::CredentialSource::Files(store)) = &credential_source {
            for c in store.declared.iter() {
                if !tenants.contains_key(&c.tenant) {
                    p.push(
                        "credentials.file",
                        format!(
                            "credential `{}` is declared for tenant `{}`, which is not configured",
                            c.name, c.tenant
                        ),
                    );
                }
            }
        }
        let regions =
            DestinationRegions::from_spec(&spec.destination_regions).unwrap_or_else(|problems| {
                p.extend(problems);
                DestinationRegions::default()
            });
        let llm_providers = crate::usage::providers::configured::ConfiguredProviders::from_spec(
            spec.llm_providers,
            &mut p,
        );
        let policy_dir = p.path(&spec.policy_dir);
        let shadow_policy_dir = spec.shadow_policy_dir.as_ref().map(|d| p.path(d));
        p.checked(TenantConfig {
            path: path.to_path_buf(),
            policy_dir,
            shadow_policy_dir,
            prices_path,
            strip_headers,
            token,
            routes,
            credential_source,
            credential_settings,
            tenants,
            prices,
            mcp,
            regions,
            llm_providers,
        })
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

impl TenantEntry {
    /// Validates `[tenants.<id>]`; `None` when the id itself is invalid (nothing else of the
    /// entry can be attributed to a tenant then).
    fn from_spec(
        id: &str,
        t: TenantSpec,
        has_prices: bool,
        p: &mut Problems<'_>,
    ) -> Option<(TenantId, Self)> {
        let tenant = TenantId::new(id)
            .map_err(|e| p.push(format!("tenants.{id}"), e.to_string()))
            .ok()?;
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
        let calendar =
            TenantCalendar::new(t.time_zone.as_deref().unwrap_or("UTC")).unwrap_or_else(|e| {
                p.push(format!("tenants.{id}.time_zone"), e);
                TenantCalendar::utc()
            });
        let ceilings =
            TenantCeilings::from_spec(id, t.limits, t.workload_limits, &workloads, has_prices, p);
        let egress_allow = crate::egress::settings::exceptions(
            &format!("tenants.{id}.egress_allow"),
            &t.egress_allow,
            p,
        );
        if t.max_tunnels == Some(0) {
            p.push(format!("tenants.{id}.max_tunnels"), "must be at least 1");
        }
        let entry = TenantEntry {
            plan: t.plan,
            region: t.region,
            workloads,
            limits: ceilings.tenant,
            workload_limits: ceilings.workloads,
            calendar,
            egress_allow,
            max_tunnels: t.max_tunnels,
        };
        Some((tenant, entry))
    }
}

/// `strip_headers`: lowercase header names.
fn strip_headers(written: &[String], p: &mut Problems<'_>) -> Vec<HeaderName> {
    let mut names = Vec::new();
    for (i, h) in written.iter().enumerate() {
        match HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
            Ok(name) => names.push(name),
            Err(_) => p.push(
                format!("strip_headers[{i}]"),
                format!("`{h}` is not a header name"),
            ),
        }
    }
    names
}

/// `prices_file`: the price table, each of its problems recorded at `prices_file`.
fn price_table(file: &Path, p: &mut Problems<'_>) -> Option<Arc<PriceTable>> {
    match PriceTable::load(file) {
        Ok(table) => Some(Arc::new(table)),
        Err(problems) => {
            for problem in problems {
                p.push("prices_file", problem);
            }
            None
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_others_can_read_is_warned_at() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ca-key.pem");
        std::fs::write(&key, "k").unwrap();
        for (mode, warned) in [
            (0o644, true),
            (0o640, true),
            (0o604, true),
            (0o600, false),
            (0o400, false),
        ] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            let w = readable_secret_warning("the interception CA's key", &key);
            assert_eq!(w.is_some(), warned, "{mode:o}: {w:?}");
        }
        assert!(readable_secret_warning("x", &dir.path().join("missing")).is_none());
        // A directory others may write: they can swap the file.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let w = readable_secret_warning("the interception CA's key", &key).unwrap();
        assert!(w.contains("directory other users can write"), "{w}");
        // Through a link, and above the file's own directory.
        let inner = dir.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o755)).unwrap();
        let deep = inner.join("k.pem");
        std::fs::write(&deep, "k").unwrap();
        std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o600)).unwrap();
        let safe = tempfile::tempdir().unwrap();
        let link = safe.path().join("link.pem");
        std::os::unix::fs::symlink(&deep, &link).unwrap();
        for shown_as in [&deep, &link] {
            let w = readable_secret_warning("a key", shown_as).unwrap();
            assert!(w.contains("below a directory other users can write"), "{w}");
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(readable_secret_warning("a key", &deep).is_none());
        // A link in a directory others may write, to a file in a safe one: the link can be
        // replaced.
        let ww = tempfile::tempdir().unwrap();
        std::fs::set_permissions(ww.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let swapped = ww.path().join("l.pem");
        std::os::unix::fs::symlink(&deep, &swapped).unwrap();
        let w = readable_secret_warning("a key", &swapped).unwrap();
        assert!(w.contains("below a directory other users can write"), "{w}");
        // Another user's file (as root too: that user can replace it); only root can give one.
        use std::os::unix::fs::MetadataExt as _;
        if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
            return;
        }
        std::os::unix::fs::chown(&deep, Some(65534), None).unwrap();
        let w = readable_secret_warning("a key", &deep).unwrap();
        assert!(w.contains("belongs to another user (uid 65534)"), "{w}");
        std::os::unix::fs::chown(&deep, Some(0), None).unwrap();
        std::os::unix::fs::chown(&inner, Some(65534), None).unwrap();
        let w = readable_secret_warning("a key", &deep).unwrap();
        assert!(w.contains("below a directory another user owns"), "{w}");
        std::os::unix::fs::chown(&inner, Some(0), None).unwrap();
        assert!(readable_secret_warning("a key", &deep).is_none());
        // A link another user owns (in a safe directory): they can repoint it.
        let link = safe.path().join("theirs.pem");
        std::os::unix::fs::symlink(&deep, &link).unwrap();
        std::os::unix::fs::lchown(&link, Some(65534), None).unwrap();
        let w = readable_secret_warning("a key", &link).unwrap();
        assert!(w.contains("a link another user owns"), "{w}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(
            readable_secret_warning("x", &key).is_none(),
            "sticky, as /tmp"
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    }

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/config/testdata")
            .join(name)
    }

    #[test]
    fn good_fixtures_load() {
        let s = StaticConfig::load(&testdata("good/tenant-proxy.toml")).expect("static");
        assert_eq!(s.listeners.len(), 2);
        assert_eq!(s.policy.decision_cache_entries, 1000);
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
            // A closed set of values is an enum: an unknown one is a parse error at its
            // line and column, naming the values allowed.
            (
                "bad-listener.toml",
                "bad-listener.toml:7:13: unknown variant `header`, expected one of `binding`, `token`, `mtls`",
            ),
            (
                "audit-bad-fsync.toml",
                "audit-bad-fsync.toml:4:9: unknown variant `always`, expected `batch` or `none`",
            ),
            (
                "limiter-bad-backend.toml",
                "limiter-bad-backend.toml:5:11: unknown variant `memcached`, expected `memory` or `redis`",
            ),
            (
                "limiter-bad-on-unavailable.toml",
                "limiter-bad-on-unavailable.toml:7:18: unknown variant `fail_open`, expected `fail_closed` or `local_fallback`",
            ),
            (
                "log-bad-format.toml",
                "log-bad-format.toml:5:10: unknown variant `yaml`, expected `text` or `json`",
            ),
            // A misspelt level would turn every log line off.
            (
                "log-bad-level.toml",
                "log-bad-level.toml:5:9: `warning` in the log filter `warning` is no level",
            ),
            ("threads-huge.toml", "server.threads: must be at most 1024"),
            (
                "shutdown-delay-huge.toml",
                "server.shutdown_delay: must be at most 5m",
            ),
            (
                "zero-header-timeout.toml",
                "egress.client_header_timeout: must be more than zero",
            ),
            ("binding-missing.toml", "listener[0].binding"),
            ("tracing-bad-endpoint.toml", "tracing.otlp_endpoint"),
            ("tracing-bad-endpoint.toml", "tracing.timeout"),
            (
                "transparent-token.toml",
                "listener[0].identity: a `transparent` listener identifies callers by its binding only",
            ),
            (
                "listener-bad-kind.toml",
                "unknown variant `tproxy`, expected `proxy` or `transparent`",
            ),
            ("bad-duration.toml", "upstream.connect_timeout"),
            ("audit-bad-chain-settings.toml", "audit.max_file_bytes"),
            ("audit-bad-chain-settings.toml", "audit.checkpoint_interval"),
            ("audit-bad-chain-settings.toml", "audit.signing_key"),
            (
                "audit-redis-required-without-url.toml",
                "audit.redis_required",
            ),
            ("audit-bad-redis-url.toml", "audit.redis_url"),
            (
                "policy-bad-cache-entries.toml",
                "policy.decision_cache_entries: must be at most 1048576 (0 turns the cache off)",
            ),
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
            (
                "tenants-bad-raw-credential.toml",
                "tenants-bad-raw-credential.toml:5:18: unknown variant `allow`, expected `refuse` or `strip`",
            ),
            (
                "tenants-bad-position.toml",
                "tenants-bad-position.toml:10:17: unknown variant `cookie`, expected one of `header`, `query`, `body`",
            ),
            (
                "tenants-credential-twice.toml",
                "credentials.file[1].name: tenant `acme`'s credential `openai` is declared twice",
            ),
            (
                "tenants-credential-twice.toml",
                "credential `openai` is declared for tenant `acmee`, which is not configured",
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
