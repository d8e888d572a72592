//! Assembles the pingora server: one proxy service per listener, the admin service, the audit
//! writer and the reload triggers.

use std::io::Write as _;
use std::sync::Arc;

use anyhow::Context as _;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

use crate::admin::AdminApp;
use crate::audit::AuditSink;
use crate::config::{ConfigProblem, StaticConfig};
use crate::egress::{Dialer, EgressRules, Resolver, StaticResolver, SystemResolver};
use crate::front::listen::{self, ListenService};
use crate::identity::mtls::MtlsServer;
use crate::identity::ListenerKind;
use crate::logging::LogFormat;
use crate::metrics::METRICS;
use crate::pipeline::caps::TenantCounts;
use crate::pipeline::Shared;
use crate::snapshot::{Snapshot, SnapshotHandle};
use crate::tls::ca::{LeafMinter, LocalCa};
use crate::tunnel::EgressApp;

/// Everything `run` would load, validated without binding ports (`tenant-proxy check`).
///
/// Every stage runs with what the stages before it left valid, so one pass lists the static
/// file's problems, the tenant file's, and those of the keys, credentials and policies it
/// names. When the static file does not parse, its `tenants_file` is still read (if the file
/// is TOML at all) so the tenant stages run; when even that fails, they are reported as not
/// checked.
pub fn check(
    config_path: &std::path::Path,
) -> Result<(StaticConfig, Snapshot), Vec<ConfigProblem>> {
    let (static_config, mut problems) = match StaticConfig::check(config_path) {
        Ok(checked) => (Some(checked.value), checked.problems),
        Err(problems) => (None, problems),
    };
    if let Some(s) = &static_config {
        check_files(s, &mut problems);
    }
    let tenants_file = match &static_config {
        Some(s) => Ok(s.tenants_file.clone()),
        None => crate::config::tenants_file_named_by(config_path),
    };
    let snapshot = match tenants_file {
        Ok(file) => Snapshot::check(&file, static_config.as_ref(), None, &mut problems),
        Err(why) => {
            problems.push(ConfigProblem::file(
                config_path,
                format!(
                    "the tenant file, its token keys, credentials and policies were not \
                     checked: {}",
                    why.message
                ),
            ));
            None
        }
    };
    match (static_config, snapshot) {
        (Some(static_config), Some(snapshot)) if problems.is_empty() => {
            Ok((static_config, snapshot))
        }
        _ => Err(problems),
    }
}

/// What the static file names that `run` opens before it serves: each mTLS listener's
/// certificate, key and client trust bundle, loaded by the same function `run` uses, and the
/// audit directory, tested for writing the way the audit writer tests it (leaving nothing).
fn check_files(s: &StaticConfig, problems: &mut Vec<ConfigProblem>) {
    for (i, listener) in s.listeners.iter().enumerate() {
        let Some(tls) = &listener.tls else { continue };
        // A missing file is already a problem of the static file.
        if ![&tls.cert, &tls.key, &tls.client_ca]
            .iter()
            .all(|f| f.is_file())
        {
            continue;
        }
        if let Err(e) = MtlsServer::load(&tls.cert, &tls.key, &tls.client_ca) {
            problems.push(ConfigProblem::at(
                &s.path,
                format!("listener[{i}].tls"),
                format!("loading TLS files of listener `{}`: {e:#}", listener.name),
            ));
        }
    }
    if let Err(e) = AuditSink::check_writable(&s.audit) {
        problems.push(ConfigProblem::at(&s.path, "audit.dir", e.to_string()));
    }
    // The interception CA as `run` loads it: a key of another CA, or one that cannot be read.
    if let Some(i) = s.intercept.as_ref().filter(|i| i.ca_cert.is_file()) {
        if let Err(e) = LocalCa::load(&i.ca_cert, &i.ca_key) {
            problems.push(ConfigProblem::at(
                &s.path,
                "intercept",
                format!("loading the interception CA: {e:#}"),
            ));
        }
    }
    // An extra CA file with no certificate in it would fail every upstream TLS call.
    for (i, file) in s.upstream.extra_ca_files.iter().enumerate() {
        if let Err(e) = crate::tls::pem::read_certs(file, "CA file") {
            problems.push(ConfigProblem::at(
                &s.path,
                format!("upstream.extra_ca_files[{i}]"),
                format!("{e:#}"),
            ));
        }
    }
    // `RUST_LOG` replaces `[log] level`, so it is checked as that is (an empty one is unset).
    if let Some(filter) = crate::logging::rust_log() {
        if let Err(e) = crate::logging::check_filter(&filter) {
            problems.push(ConfigProblem::at(&s.path, "log.level (RUST_LOG)", e));
        }
    }
}

/// Starts the logger (see [`crate::logging`]: no level setting opens third-party debug lines);
/// keep the guard while the process logs.
pub fn init_logging(format: LogFormat, level: &str) -> Option<crate::logging::WriterGuard> {
    crate::logging::init(format, level)
}

/// Loads everything and serves until SIGTERM/SIGINT. With `ready_file`, the addresses bound are
/// written there once every socket listens (see [`write_ready_file`]).
pub fn run(
    config_path: &std::path::Path,
    ready_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    pingora::tls::install_default_crypto_provider();
    keep_secrets_out_of_core_dumps()?;
    survive_file_size_limit()?;
    if let Some(path) = ready_file {
        // A file left by an earlier run must never pass for this one's.
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e)
                .with_context(|| format!("removing the old ready file `{}`", path.display()))?,
            _ => {}
        }
    }
    let (static_config, snapshot) = check(config_path).map_err(problems_error)?;
    // Dropped last (after the audit writer's shutdown below, or with an early error): what is
    // still queued for the log is written then.
    let _log = init_logging(static_config.log_format, &static_config.log_level);
    crate::otel::init(&static_config.tracing).context("starting the OTLP trace exporter")?;
    // Every socket is bound before anything else starts: a taken port ends the process here,
    // with one line naming the address.
    let mut bound_listeners = Vec::with_capacity(static_config.listeners.len());
    for listener in &static_config.listeners {
        bound_listeners.push(listen::bind(listener.listen)?);
    }
    let bound_admin = listen::bind(static_config.admin_listen)?;
    // (After the binds, so a taken port still ends the process with its one line.)
    report_open_file_limit(&static_config);
    let bound_approvals = match &static_config.approvals {
        Some(a) => Some(listen::bind(a.listen)?),
        None => None,
    };
    let mut static_config = static_config;
    if let (Some(a), Some(bound)) = (static_config.approvals.as_mut(), &bound_approvals) {
        a.listen = bound.addr;
    }
    // A listener asked for port 0 is known by the port it got from here on.
    for (listener, bound) in static_config.listeners.iter_mut().zip(&bound_listeners) {
        listener.listen = bound.addr;
    }
    static_config.admin_listen = bound_admin.addr;
    let static_config = Arc::new(static_config);

    for warning in configuration_warnings(&static_config, &snapshot) {
        tracing::warn!("{warning}");
    }
    let handle = Arc::new(SnapshotHandle::new(static_config.clone(), snapshot));
    let (audit, audit_writer) = AuditSink::start(&static_config.audit)?;
    crate::reload::spawn(handle.clone());

    // Shutdown is drained before pingora hears of the signal (see `crate::drain`): pingora's
    // grace period, a sleep after which every task still running is dropped unrecorded, is
    // none. `graceful_shutdown_timeout` still bounds how long its runtimes take to stop.
    let drain = crate::drain::Drain::new();
    // Kept until every listener's connectors have read it (below), then removed.
    let upstream_roots = ca_bundle(&static_config)?;
    let conf = ServerConf {
        threads: static_config.threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(static_config.graceful_shutdown_timeout.as_secs()),
        ca_file: upstream_roots
            .as_ref()
            .map(|path| path.display().to_string()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let backend = crate::limits::backend(&static_config.limiter).map_err(anyhow::Error::msg)?;
    let limits = backend.counters.clone();
    let minter = load_minter(&static_config)?;
    let revocations = backend.revocations.clone();
    let runs = Arc::new(crate::runs::RunTracker::new(
        backend.counters,
        backend.runs,
        audit.clone(),
        static_config.watched_runs_per_tenant,
    ));
    spawn_run_expiries(runs.clone())?;
    let holds = match &static_config.approvals {
        Some(settings) => Some(Arc::new(crate::approvals::Holds::new(
            hold_store(&static_config.limiter)?,
            settings.clone(),
            audit.clone(),
        ))),
        None => None,
    };
    let shared = Arc::new(Shared {
        config: static_config.clone(),
        snapshot: handle.clone(),
        audit: audit.clone(),
        limits: limits.clone(),
        runs: runs.clone(),
        revocations,
        egress: Arc::new(dialer(&static_config)?),
        minter,
        sessions: static_config.intercept.as_ref().and_then(|i| {
            crate::tls::resume::SessionScopes::new(i.session_lifetime, i.session_scopes)
                .map(Arc::new)
        }),
        tunnels: TenantCounts::new(&METRICS.tunnels_open),
        connections: TenantCounts::new(&METRICS.tenant_connections_open),
        bodies: crate::body::BodyBudget::new(
            static_config.limits.max_buffered_body_bytes,
            static_config.limits.max_buffered_body_bytes_per_tenant,
        ),
        approvals: holds.clone(),
        token_tls: Arc::new(
            crate::credentials::oauth::fetch::client_config(&static_config.upstream.extra_ca_files)
                .map_err(|e| anyhow::anyhow!("the trust for token endpoints: {e}"))?,
        ),
        drain: drain.clone(),
    });
    for (listener, bound) in static_config.listeners.iter().zip(bound_listeners) {
        let addr = bound.addr;
        let mtls = match &listener.tls {
            Some(tls) => {
                let server =
                    MtlsServer::load(&tls.cert, &tls.key, &tls.client_ca).with_context(|| {
                        format!("loading TLS files of listener `{}`", listener.name)
                    })?;
                let server = Arc::new(server);
                server.watch(
                    handle.reload_status(),
                    format!("listener `{}` TLS files", listener.name),
                );
                Some(server)
            }
            None => None,
        };
        let app = EgressApp::new(
            &server.configuration,
            listener.clone(),
            shared.clone(),
            mtls,
        );
        let service = ListenService::new(
            format!("proxy {}", listener.name),
            bound,
            app,
            drain.clone(),
        );
        server.add_service(match listener.kind {
            ListenerKind::Transparent => service.capturing(),
            ListenerKind::Proxy => service,
        });
        tracing::info!(listener = %listener.name, %addr, "proxy listening");
    }
    // pingora read the bundle while building each listener's connectors; nothing reads it
    // again, so it does not outlive the start (a file per start would pile up in the temp
    // directory).
    drop(upstream_roots);

    let admin = AdminApp::new(
        handle.clone(),
        audit.clone(),
        limits,
        runs,
        static_config.listeners.iter().map(|l| l.listen).collect(),
        drain.clone(),
    );
    let own_front = static_config
        .limits
        .front(static_config.egress.client_header_timeout);
    server.add_service(ListenService::new(
        "admin".into(),
        bound_admin,
        crate::own_http::Fronted::new(admin, own_front),
        drain.clone(),
    ));
    tracing::info!(addr = %static_config.admin_listen, token = static_config.admin_token_file.is_some(), "admin listening");
    if let Some(warning) = static_config.admin_token_warning() {
        tracing::warn!("{warning}");
    }
    for warning in static_config.exposed_binding_warnings() {
        tracing::warn!("{warning}");
    }
    if let (Some(holds), Some(bound)) = (holds, bound_approvals) {
        let addr = bound.addr;
        let app = crate::approvals::api::ApprovalsApp::new(
            holds.clone(),
            approver_verifier(handle.clone(), holds.settings().audience.clone()),
        );
        server.add_service(ListenService::new(
            "approvals".into(),
            bound,
            crate::own_http::Fronted::new(app, own_front),
            drain.clone(),
        ));
        server.add_service(pingora::services::background::background_service(
            "approval holds",
            HoldsShutdown(holds, drain.watch()),
        ));
        tracing::info!(%addr, "approvals API listening");
    }

    server.add_service(pingora::services::background::background_service(
        "secret echoes",
        EchoSweeper(handle.clone()),
    ));

    if let Some(path) = ready_file {
        write_ready_file(path, &static_config)?;
    }
    // Where to point `HTTP_PROXY`, without reading the configuration.
    // Best effort: stdout at its file-size limit, or closed, must not stop the start.
    let _ = std::io::stdout().write_all(startup_lines(&static_config).as_bytes());
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(crate::drain::DrainOnSignal {
            drain,
            audit,
            grace: static_config.grace_period,
            settle: static_config.graceful_shutdown_timeout,
            delay: static_config.shutdown_delay,
        }),
    });
    // The drain saw every request record and the services have stopped: write what is still
    // queued and the final checkpoints.
    audit_writer.shutdown();
    // Nothing listens any more: the file must not tell a reader otherwise.
    if let Some(path) = ready_file {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the ready file");
        }
    }
    Ok(())
}

/// One line per listener (its URL and how it identifies callers) and the admin URL, printed
/// once every socket listens.
fn startup_lines(config: &StaticConfig) -> String {
    use crate::identity::IdentitySourceKind;
    let width = config
        .listeners
        .iter()
        .map(|l| l.name.len())
        .max()
        .unwrap_or(0);
    let mut out = String::from("tenant-proxy ready\n");
    for l in &config.listeners {
        let scheme = if l.tls.is_some() { "https" } else { "http" };
        let identity: Vec<String> = l
            .identity
            .sources
            .iter()
            .map(|source| match (source, &l.identity.binding) {
                (IdentitySourceKind::Binding, Some(b)) => {
                    format!("binding ({}/{})", b.tenant, b.workload)
                }
                (IdentitySourceKind::Binding, None) => "binding".into(),
                (IdentitySourceKind::Token, _) => "token".into(),
                (IdentitySourceKind::Mtls, _) => "mtls".into(),
            })
            .collect();
        out.push_str(&format!(
            "  listener {:width$}  {scheme}://{}  identity: {}\n",
            l.name,
            l.listen,
            identity.join(", ")
        ));
    }
    out.push_str(&format!(
        "  admin    {:width$}  http://{}  (/healthz /readyz /metrics)\n",
        "", config.admin_listen
    ));
    if let Some(approvals) = &config.approvals {
        out.push_str(&format!(
            "  approvals {:w$}  http://{}  (approvers' API)\n",
            "",
            approvals.listen,
            w = width.saturating_sub(1)
        ));
    }
    out
}

/// Writes the addresses every socket is bound to as JSON, `{"admin": "127.0.0.1:PORT",
/// "listeners": {"<name>": "127.0.0.1:PORT", …}}`: how a caller that asked for port 0 (tests, the
/// load generator) learns the ports without racing another process for a free one.
///
/// Called once every socket is bound and listening, so a connection made after the file
/// appears is queued by the kernel until the services take it. Written to a temporary file in
/// the same directory and renamed into place, so a reader never sees a partial file.
fn write_ready_file(path: &std::path::Path, config: &StaticConfig) -> anyhow::Result<()> {
    let listeners: serde_json::Map<String, serde_json::Value> = config
        .listeners
        .iter()
        .map(|l| (l.name.clone(), l.listen.to_string().into()))
        .collect();
    let mut ready = serde_json::json!({
        "admin": config.admin_listen.to_string(),
        "listeners": listeners,
    });
    if let Some(a) = &config.approvals {
        ready["approvals"] = a.listen.to_string().into();
    }
    crate::whole_file::replace(path, ready.to_string().as_bytes())
        .with_context(|| format!("writing the ready file `{}`", path.display()))
}

/// Where approval holds live: with the limiter's counters (Redis, shared by the replicas), or
/// in this process.
fn hold_store(
    limiter: &crate::limits::LimiterSettings,
) -> anyhow::Result<Arc<dyn crate::approvals::store::HoldStore>> {
    Ok(match limiter {
        crate::limits::LimiterSettings::Memory { .. } => {
            Arc::new(crate::approvals::store::MemoryHolds::default())
        }
        // Holds live where the limiter's counters do: every deployment the limiter supports
        // (one server or a cluster, TLS, ACL user and password) serves holds too.
        crate::limits::LimiterSettings::Redis(r) => Arc::new(
            crate::approvals::redis::RedisHolds::start(r.endpoint.clone(), r.timeout)
                .map_err(anyhow::Error::msg)?,
        ),
    })
}

/// Verifies approver tokens with the current snapshot's token keys and revocation list, for
/// the approvals audience only.
fn approver_verifier(
    snapshot: Arc<SnapshotHandle>,
    audience: String,
) -> crate::approvals::api::Authenticate {
    Arc::new(move |token: &str| {
        let snap = snapshot.load();
        let verifier = snap
            .tokens
            .as_ref()
            .ok_or("this proxy verifies no tokens (`[token]` in the tenant file)")?;
        let verified = verifier
            .verify_for_audience(token, crate::clock::unix_now(), &audience)
            .map_err(|e| e.to_string())?;
        // SECURITY: the approver's tenant must be one this proxy serves.
        if !snap.tenants.tenants.contains_key(&verified.tenant) {
            return Err("the token's tenant is not configured".to_string());
        }
        Ok(crate::approvals::api::Approver {
            tenant: verified.tenant,
            name: verified.workload.to_string(),
            groups: verified.scopes,
        })
    })
}

/// Cancels every waiting approval hold once the drain begins (the watch), so its agent is
/// refused while the connection is still up (and nothing held by this process is forwarded
/// later).
struct HoldsShutdown(Arc<crate::approvals::Holds>, pingora::server::ShutdownWatch);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for HoldsShutdown {
    async fn start(&self, _pingora_shutdown: pingora::server::ShutdownWatch) {
        let mut shutdown = self.1.clone();
        // A value that was already true counts (`wait_for` checks it first).
        let _ = shutdown.wait_for(|stopping| *stopping).await;
        self.0.shut_down();
    }
}

/// Sweeps the values responses are scrubbed of (see [`crate::credentials::echoes::Echoes::sweep`]):
/// SECURITY: a rotated-out secret (or a replaced token) leaves memory once its window has
/// passed, not at its tenant's next rotation.
struct EchoSweeper(Arc<SnapshotHandle>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for EchoSweeper {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let every = crate::credentials::echoes::SWEEP_EVERY;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                _ = tick.tick() => self.0.echoes.sweep(std::time::Instant::now()),
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Summarizes expired runs on a thread of its own: it only waits on the limiter and the audit
/// queue, and ends with the process (live runs are not summarized at shutdown).
fn spawn_run_expiries(runs: Arc<crate::runs::RunTracker>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("run-expiries".into())
        .spawn(move || rt.block_on(runs.watch_expiries()))?;
    Ok(())
}

/// The egress guard: configured static answers in front of the system resolver, the global
/// exceptions, and every address this process listens on: its listeners, the admin port and
/// the approvals API (a request to itself is a loop, and would reach them as the proxy); and
/// the Redis servers it keeps every tenant's counters, runs, holds and audit copy in (an
/// exception that covers their network must not let a tenant's request write there) and the
/// trace collector, kept current by a thread of their own.
fn dialer(config: &StaticConfig) -> std::io::Result<Dialer> {
    let egress = &config.egress;
    let system: Arc<dyn Resolver> = Arc::new(SystemResolver::new(egress.dns_timeout));
    let resolver: Arc<dyn Resolver> = if egress.hosts.is_empty() {
        system
    } else {
        Arc::new(StaticResolver::new(egress.hosts.clone(), Some(system)))
    };
    let mut own_listeners: Vec<_> = config.listeners.iter().map(|l| l.listen).collect();
    own_listeners.push(config.admin_listen);
    own_listeners.extend(config.approvals.as_ref().map(|a| a.listen));
    let mut services = crate::egress::services::Services::default();
    if let crate::limits::LimiterSettings::Redis(r) = &config.limiter {
        services.redis.push(r.endpoint.clone());
    }
    if let Some(stream) = &config.audit.stream {
        services.redis.push(stream.endpoint.clone());
    }
    services.named.extend(config.tracing.collector());
    Ok(Dialer::new(
        resolver,
        EgressRules {
            exceptions: egress.exceptions.clone(),
            own_listeners,
            services: crate::egress::services::start(services)?,
        },
        egress.max_dns_lookups_per_tenant,
        egress.dns_cache_ttl,
    ))
}

/// What `check` prints and `run` logs about a configuration that loads but is risky: cost
/// ceilings counted in memory, an MCP session key of one process, revocation lines that revoke
/// something else, JWKS keys, secret files other users can read. (The admin token and listener
/// bindings are warned about apart: `run` names them beside the listener it starts.)
pub fn configuration_warnings(config: &StaticConfig, snapshot: &Snapshot) -> Vec<String> {
    [
        snapshot.memory_limiter_warning(&config.limiter),
        snapshot.mcp_session_key_warning(&config.limiter),
        snapshot.revocation_file_warning(),
        snapshot.jwks_warning(),
        config.audit_queue_warning(),
    ]
    .into_iter()
    .flatten()
    .chain(config.readable_secret_warnings())
    .chain(snapshot.readable_secret_warnings())
    .collect()
}

/// SECURITY (secrets): the process holds every tenant's secrets (credential values, the
/// interception CA's key, the audit signing key, tokens it obtained). A crash with core dumps on
/// (`ulimit -c`, systemd-coredump, a container runtime's default) would write them all to disk,
/// and a process of the same user could read its memory (`/proc/PID/mem`, `ptrace`). So the
/// process is made non-dumpable (no core file; `/proc/PID/mem`, `environ` and `ptrace` for root
/// or `CAP_SYS_PTRACE` only), and its core file size limit is set to 0, before any secret is
/// loaded. Failing either, the start fails.
fn keep_secrets_out_of_core_dumps() -> anyhow::Result<()> {
    use nix::sys::resource::{setrlimit, Resource};
    setrlimit(Resource::RLIMIT_CORE, 0, 0).context("setting the core file size limit to 0")?;
    nix::sys::prctl::set_dumpable(false).context("making the process non-dumpable")
}

/// SECURITY (isolation): under a file-size limit (`ulimit -f`, systemd's `LimitFSIZE=`) the
/// kernel ends the whole process with `SIGXFSZ` at the first write past it: one tenant's audit
/// file growing past the limit would drop every tenant's connections and tear the record being
/// written, again at each restart. With the signal handled (its handler stays for the life of
/// the process, whichever runtime registered it), the write fails with `EFBIG` instead, which
/// the audit writer takes as that tenant's partition failing (its requests refused, the others
/// served).
fn survive_file_size_limit() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let xfsz = SignalKind::from_raw(nix::sys::signal::Signal::SIGXFSZ as std::os::raw::c_int);
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?
        .block_on(async { signal(xfsz).map(drop) })
        .context("handling SIGXFSZ")
}

/// pingora trusts either the system roots or one CA file; with extra CAs configured we write a
/// bundle of both so neither replaces the other. The file is private to the process (mode 0600
/// in the temp directory) and removed when the returned path is dropped.
fn ca_bundle(config: &StaticConfig) -> anyhow::Result<Option<tempfile::TempPath>> {
    if config.upstream.extra_ca_files.is_empty() {
        return Ok(None);
    }
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
    let mut bundle = crate::whole_file::read(&system).unwrap_or_default();
    for f in &config.upstream.extra_ca_files {
        bundle.push(b'\n');
        bundle.extend(
            crate::whole_file::read(f)
                .with_context(|| format!("reading CA file `{}`", f.display()))?,
        );
    }
    let mut file = tempfile::Builder::new()
        .prefix("tenant-proxy-ca-")
        .suffix(".pem")
        .tempfile()
        .context("writing the upstream CA bundle in the temp directory")?;
    file.write_all(&bundle)?;
    Ok(Some(file.into_temp_path()))
}

/// Formats problems as one error listing every problem.
pub fn problems_error(problems: Vec<ConfigProblem>) -> anyhow::Error {
    let list: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
    anyhow::anyhow!("configuration rejected:\n{}", list.join("\n"))
}

/// Raises the soft open-file limit to the hard one and says so; warns when even the hard limit
/// is below what the connection caps allow (accepts would then fail with `EMFILE` before the
/// caps refuse as `overloaded`).
fn report_open_file_limit(config: &StaticConfig) {
    let needed = crate::open_files::needed_for(
        config.listeners.len(),
        config.limits.max_connections_per_listener,
    );
    match crate::open_files::raise_to_hard_limit() {
        Ok(limit) => {
            if let Some(from) = limit.raised_from {
                tracing::info!(
                    from,
                    to = limit.soft,
                    "raised the open-file limit (RLIMIT_NOFILE) to its hard limit"
                );
            }
            if limit.soft < needed {
                tracing::warn!(
                    limit = limit.soft,
                    needed,
                    "the open-file limit is below what the connection caps allow (two descriptors per client connection); raise the hard limit (`ulimit -Hn`, systemd LimitNOFILE, the container's nofile) or lower `[limits] max_connections_per_listener`"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not read or raise the open-file limit"),
    }
}

/// The interception CA's leaf minter, when `[intercept]` is configured.
pub fn load_minter(static_config: &StaticConfig) -> anyhow::Result<Option<Arc<LeafMinter>>> {
    let Some(i) = &static_config.intercept else {
        return Ok(None);
    };
    let ca = LocalCa::load(&i.ca_cert, &i.ca_key)
        .with_context(|| format!("loading the interception CA `{}`", i.ca_cert.display()))?;
    Ok(Some(Arc::new(LeafMinter::new(
        ca,
        i.leaf_ttl,
        i.leaf_cache,
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const GOOD_STATIC: &str = r#"tenants_file = "tenants.toml"
[audit]
dir = "audit"
[[listener]]
name = "sidecar"
listen = "127.0.0.1:1"
identity = ["binding"]
binding = { tenant = "acme", workload = "bot" }
"#;

    const GOOD_TENANTS: &str = r#"policy_dir = "policies"
[tenants.acme]
plan = "pro"
region = "eu"
workloads = ["bot"]
"#;

    /// A configuration directory: `tenant-proxy.toml`, `tenants.toml` and a policy directory
    /// with the project's schema and one tenant policy.
    fn config_dir(static_toml: &str, tenants_toml: &str, acme_policy: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("dir");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(policies.join("global")).expect("mkdir");
        std::fs::create_dir_all(policies.join("tenants/acme")).expect("mkdir");
        std::fs::copy(
            root.join("policies/schema.cedarschema"),
            policies.join("schema.cedarschema"),
        )
        .expect("schema");
        std::fs::write(policies.join("tenants/acme/acme.cedar"), acme_policy).expect("policy");
        std::fs::write(dir.path().join("tenant-proxy.toml"), static_toml).expect("static");
        std::fs::write(dir.path().join("tenants.toml"), tenants_toml).expect("tenants");
        dir
    }

    const GOOD_POLICY: &str = "permit (principal, action, resource);\n";

    /// Every problem `check` reports for the configuration in `dir`, as printed.
    fn problems_of(dir: &tempfile::TempDir) -> Vec<String> {
        let problems = check(&dir.path().join("tenant-proxy.toml")).expect_err("broken");
        problems.iter().map(ToString::to_string).collect()
    }

    fn has(problems: &[String], file: &str, what: &str) -> bool {
        problems
            .iter()
            .any(|p| p.contains(file) && p.contains(what))
    }

    #[test]
    fn a_good_configuration_checks_clean() {
        let dir = config_dir(GOOD_STATIC, GOOD_TENANTS, GOOD_POLICY);
        let (static_config, snapshot) = check(&dir.path().join("tenant-proxy.toml")).expect("good");
        assert_eq!(static_config.listeners.len(), 1);
        assert_eq!(snapshot.tenants.tenants.len(), 1);
    }

    /// An audit queue one tenant at its connection cap could fill is warned about.
    #[test]
    fn an_audit_queue_one_tenant_could_fill_is_warned_about() {
        let warned = |queue: usize, per_tenant: u32| {
            let static_toml = GOOD_STATIC.replace(
                "[audit]\ndir = \"audit\"",
                &format!("[limits]\nmax_connections_per_tenant = {per_tenant}\n[audit]\ndir = \"audit\"\nqueue_capacity = {queue}"),
            );
            let dir = config_dir(&static_toml, GOOD_TENANTS, GOOD_POLICY);
            let (config, snapshot) = check(&dir.path().join("tenant-proxy.toml")).expect("good");
            configuration_warnings(&config, &snapshot)
                .into_iter()
                .filter(|w| w.contains("queue_capacity"))
                .count()
        };
        assert_eq!(warned(300, 1000), 1);
        assert_eq!(warned(1999, 1000), 1);
        assert_eq!(warned(2000, 1000), 0);
        assert_eq!(warned(65_536, 2000), 0, "the defaults");
    }

    /// Every secret file a configuration names is warned about when other users may read it:
    /// the audit signing key (whoever reads it signs a checkpoint for a trail cut short), a
    /// Redis password file, each mounted credential and the MCP session key (whoever reads it
    /// seals a session id of any tenant's) too.
    #[test]
    fn secret_files_others_can_read_are_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let static_toml = GOOD_STATIC.replace(
            "[audit]\ndir = \"audit\"",
            "[audit]\ndir = \"audit\"\nsigning_key = \"audit.pem\"\n[limiter]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:1\"\nredis_password_file = \"redis.pass\"",
        );
        let tenants = format!(
            "{GOOD_TENANTS}[mcp]\nsession_key_file = \"mcp.key\"\n[credentials]\nfiles_dir = \"secrets\"\n[[credentials.file]]\ntenant = \"acme\"\nname = \"openai\"\nbind = [\"api.openai.com\"]\n"
        );
        let dir = config_dir(&static_toml, &tenants, GOOD_POLICY);
        let (_, pem) = crate::audit::checkpoint::Signer::generate().expect("key");
        std::fs::write(dir.path().join("audit.pem"), pem.as_bytes()).expect("key");
        std::fs::write(dir.path().join("mcp.key"), "k".repeat(48)).expect("key");
        std::fs::write(dir.path().join("redis.pass"), "hunter2").expect("password");
        std::fs::create_dir_all(dir.path().join("secrets/acme")).expect("mkdir");
        std::fs::write(dir.path().join("secrets/acme/openai"), "sk-test-0123456789")
            .expect("secret");
        let secrets = [
            ("audit.pem", "the audit checkpoint signing key"),
            ("redis.pass", "the limiter's Redis password file"),
            ("secrets/acme/openai", "a mounted credential"),
            ("mcp.key", "the MCP session key"),
        ];
        let warnings = |dir: &tempfile::TempDir| {
            let (s, snap) = check(&dir.path().join("tenant-proxy.toml")).expect("good");
            let mut all = s.readable_secret_warnings();
            all.extend(snap.readable_secret_warnings());
            all
        };
        for ((file, _), mode) in secrets.iter().zip([0o640, 0o604, 0o644, 0o604]) {
            let path = dir.path().join(file);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        let found = warnings(&dir);
        assert_eq!(found.len(), secrets.len(), "{found:#?}");
        for ((file, what), warning) in secrets.iter().zip(&found) {
            assert!(
                warning.starts_with(what) && warning.contains(file),
                "{found:#?}"
            );
        }
        for (file, _) in secrets {
            let path = dir.path().join(file);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        assert_eq!(warnings(&dir), Vec::<String>::new());
    }

    #[test]
    fn every_stage_reports_its_problems_in_one_pass() {
        // Broken at once: the static file (a duration, a reference into the tenant file), the
        // tenant file (a route), the token keys it names (missing JWKS), its credentials (a
        // declared secret file that is missing) and its policies (a syntax error).
        let static_toml = GOOD_STATIC
            .replace("workload = \"bot\"", "workload = \"ghost\"")
            .replace("[audit]", "[upstream]\nconnect_timeout = \"soon\"\n[audit]");
        let tenants_toml = format!(
            "{GOOD_TENANTS}{}",
            r#"[token]
jwks_file = "missing-jwks.json"
[[route]]
name = "r"
prefix = "openai"
upstream = "https://api.openai.com/"
[credentials]
files_dir = "secrets"
[[credentials.file]]
tenant = "acme"
name = "openai"
bind = ["api.openai.com"]
"#
        );
        let dir = config_dir(&static_toml, &tenants_toml, "permit (principal, action");
        let problems = problems_of(&dir);
        #[rustfmt::skip]
        let expected = [
            ("static file", "tenant-proxy.toml", "upstream.connect_timeout: `soon` is not a duration"),
            ("static file's reference", "tenant-proxy.toml", "listener[0].binding: tenant `acme` has no workload `ghost`"),
            ("tenant file", "tenants.toml", "route[0].prefix: `openai` must start and end with `/`"),
            ("token keys", "missing-jwks.json", "cannot read JWKS"),
            ("credentials", "secrets", "openai"),
            ("policies", "acme.cedar", ""),
        ];
        for (stage, file, what) in expected {
            assert!(has(&problems, file, what), "{stage}: {problems:#?}");
        }
        assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    }

    #[test]
    fn a_static_file_that_does_not_parse_still_gets_its_tenant_file_checked() {
        // An unknown enum value is a parse error of the static file; the tenant file it names,
        // and that file's policies, are still checked.
        let static_toml = format!("{GOOD_STATIC}[log]\nformat = \"yaml\"\n");
        let tenants_toml = GOOD_TENANTS.replace("workloads = [\"bot\"]", "workloads = []");
        let dir = config_dir(&static_toml, &tenants_toml, "permit (principal, action");
        let problems = problems_of(&dir);
        assert!(
            has(
                &problems,
                "tenant-proxy.toml:10:10",
                "unknown variant `yaml`, expected `text` or `json`"
            ),
            "{problems:#?}"
        );
        assert!(
            has(
                &problems,
                "tenants.toml",
                "tenants.acme.workloads: list at least one workload"
            ),
            "{problems:#?}"
        );
        assert!(has(&problems, "acme.cedar", ""), "{problems:#?}");
        assert_eq!(problems.len(), 3, "{problems:#?}");
    }

    #[test]
    fn a_stage_without_its_input_is_reported_as_not_checked() {
        // The static file is not TOML: nothing names the tenant file.
        let dir = config_dir("tenants_file = \n", GOOD_TENANTS, GOOD_POLICY);
        let problems = problems_of(&dir);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(has(&problems, "tenant-proxy.toml:1:", ""), "{problems:#?}");
        assert!(
            has(
                &problems,
                "tenant-proxy.toml",
                "the tenant file, its token keys, credentials and policies were not checked: \
                 the file is not TOML"
            ),
            "{problems:#?}"
        );

        // The tenant file does not parse: the static file's own problems are still listed, and
        // the keys, credentials and policies are reported as not checked.
        let static_toml = GOOD_STATIC.replace("[audit]", "[server]\nthreads = 0\n[audit]");
        let dir = config_dir(
            &static_toml,
            "policy_dir = 7\n",
            "permit (principal, action",
        );
        let problems = problems_of(&dir);
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(
            has(
                &problems,
                "tenant-proxy.toml",
                "server.threads: must be at least 1"
            ),
            "{problems:#?}"
        );
        assert!(has(&problems, "tenants.toml:1:14", ""), "{problems:#?}");
        assert!(
            has(&problems, "tenants.toml", "not checked"),
            "{problems:#?}"
        );
    }
}
