//! Assembles the pingora server: one proxy service per listener, the admin service, the audit
//! writer and the reload triggers.

use std::io::Write as _;
use std::sync::Arc;

use anyhow::Context as _;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

use crate::admin::AdminApp;
use crate::audit::AuditSink;
use crate::config::{ConfigProblem, LogFormat, StaticConfig};
use crate::egress::{Dialer, EgressRules, Resolver, StaticResolver, SystemResolver};
use crate::front::listen::{self, ListenService};
use crate::identity::mtls::MtlsServer;
use crate::metrics::METRICS;
use crate::pipeline::caps::TenantCounts;
use crate::pipeline::Shared;
use crate::snapshot::{Snapshot, SnapshotHandle};
use crate::tls::ca::{LeafMinter, LocalCa};
use crate::tunnel::EgressApp;

/// Everything `run` would load, validated without binding ports (`tenant-proxy check`).
pub fn check(
    config_path: &std::path::Path,
) -> Result<(StaticConfig, Snapshot), Vec<ConfigProblem>> {
    let static_config = StaticConfig::load(config_path)?;
    let snapshot = Snapshot::load(&static_config)?;
    Ok((static_config, snapshot))
}

/// Starts the logger (see [`crate::logging`]: no level setting opens third-party debug lines).
pub fn init_logging(format: LogFormat, level: &str) {
    crate::logging::init(format, level);
}

/// Loads everything and serves until SIGTERM/SIGINT. With `ready_file`, the addresses bound are
/// written there once every socket listens (see [`write_ready_file`]).
pub fn run(
    config_path: &std::path::Path,
    ready_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    pingora::tls::install_default_crypto_provider();
    if let Some(path) = ready_file {
        // A file left by an earlier run must never pass for this one's.
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e)
                .with_context(|| format!("removing the old ready file `{}`", path.display()))?,
            _ => {}
        }
    }
    let (static_config, snapshot) = check(config_path).map_err(problems_error)?;
    init_logging(static_config.log_format, &static_config.log_level);
    // Every socket is bound before anything else starts: a taken port ends the process here,
    // with one line naming the address.
    let mut bound_listeners = Vec::with_capacity(static_config.listeners.len());
    for listener in &static_config.listeners {
        bound_listeners.push(listen::bind(listener.listen)?);
    }
    let bound_admin = listen::bind(static_config.admin_listen)?;
    let mut static_config = static_config;
    // A listener asked for port 0 is known by the port it got from here on.
    for (listener, bound) in static_config.listeners.iter_mut().zip(&bound_listeners) {
        listener.listen = bound.addr;
    }
    static_config.admin_listen = bound_admin.addr;
    let static_config = Arc::new(static_config);

    let handle = Arc::new(SnapshotHandle::new(static_config.clone(), snapshot));
    let (audit, audit_writer) = AuditSink::start(&static_config.audit)?;
    crate::reload::spawn(handle.clone());

    let conf = ServerConf {
        threads: static_config.threads,
        grace_period_seconds: Some(static_config.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(static_config.graceful_shutdown_timeout.as_secs()),
        ca_file: ca_bundle(&static_config)?,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let backend = crate::limits::backend(&static_config.limiter).map_err(anyhow::Error::msg)?;
    let limits = backend.counters.clone();
    let minter = match &static_config.intercept {
        Some(i) => {
            let ca = LocalCa::load(&i.ca_cert, &i.ca_key).with_context(|| {
                format!("loading the interception CA `{}`", i.ca_cert.display())
            })?;
            Some(Arc::new(LeafMinter::new(ca, i.leaf_ttl, i.leaf_cache)))
        }
        None => None,
    };
    let runs = Arc::new(crate::runs::RunTracker::new(
        backend.counters,
        backend.runs,
        audit.clone(),
        static_config.watched_runs_per_tenant,
    ));
    spawn_run_expiries(runs.clone())?;
    let shared = Arc::new(Shared {
        config: static_config.clone(),
        snapshot: handle.clone(),
        audit: audit.clone(),
        limits: limits.clone(),
        runs: runs.clone(),
        egress: Arc::new(dialer(&static_config)),
        minter,
        tunnels: TenantCounts::new(&METRICS.tunnels_open),
        connections: TenantCounts::new(&METRICS.tenant_connections_open),
        bodies: crate::body::BodyBudget::new(static_config.limits.max_buffered_body_bytes),
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
                server.watch();
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
        server.add_service(ListenService::new(
            format!("proxy {}", listener.name),
            bound,
            app,
        ));
        tracing::info!(listener = %listener.name, %addr, "proxy listening");
    }

    let admin = AdminApp::new(
        handle,
        audit,
        limits,
        runs,
        static_config.listeners.iter().map(|l| l.listen).collect(),
    );
    server.add_service(ListenService::new("admin".into(), bound_admin, admin));
    tracing::info!(addr = %static_config.admin_listen, "admin listening");

    if let Some(path) = ready_file {
        write_ready_file(path, &static_config)?;
    }
    server.run(pingora::server::RunArgs::default());
    // The services have stopped: write what is still queued and the final checkpoints.
    audit_writer.shutdown();
    Ok(())
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
    let ready = serde_json::json!({
        "admin": config.admin_listen.to_string(),
        "listeners": listeners,
    });
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let write = || -> std::io::Result<()> {
        let mut file = tempfile::Builder::new()
            .prefix(".ready-")
            .tempfile_in(dir)?;
        file.write_all(ready.to_string().as_bytes())?;
        file.as_file().sync_all()?;
        file.persist(path).map_err(|e| e.error)?;
        Ok(())
    };
    write().with_context(|| format!("writing the ready file `{}`", path.display()))
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
/// exceptions, and every address this process listens on (a request to itself is a loop).
fn dialer(config: &StaticConfig) -> Dialer {
    let egress = &config.egress;
    let system: Arc<dyn Resolver> = Arc::new(SystemResolver::new(egress.dns_timeout));
    let resolver: Arc<dyn Resolver> = if egress.hosts.is_empty() {
        system
    } else {
        Arc::new(StaticResolver::new(egress.hosts.clone(), Some(system)))
    };
    let mut own_listeners: Vec<_> = config.listeners.iter().map(|l| l.listen).collect();
    own_listeners.push(config.admin_listen);
    Dialer::new(
        resolver,
        EgressRules {
            exceptions: egress.exceptions.clone(),
            own_listeners,
        },
    )
}

/// pingora trusts either the system roots or one CA file; with extra CAs configured we write a
/// bundle of both so neither replaces the other.
fn ca_bundle(config: &StaticConfig) -> anyhow::Result<Option<String>> {
    if config.upstream.extra_ca_files.is_empty() {
        return Ok(None);
    }
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
    let mut bundle = std::fs::read(&system).unwrap_or_default();
    for f in &config.upstream.extra_ca_files {
        bundle.push(b'\n');
        bundle.extend(
            std::fs::read(f).with_context(|| format!("reading CA file `{}`", f.display()))?,
        );
    }
    let mut file = tempfile::Builder::new()
        .prefix("tenant-proxy-ca-")
        .suffix(".pem")
        .tempfile()?;
    file.write_all(&bundle)?;
    let (_, path) = file.keep()?;
    Ok(Some(path.display().to_string()))
}

/// Formats problems as one error listing every problem.
pub fn problems_error(problems: Vec<ConfigProblem>) -> anyhow::Error {
    let list: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
    anyhow::anyhow!("configuration rejected:\n{}", list.join("\n"))
}
