//! `tenant-proxy-loadtest`: the mock upstream, and a bounded load comparison of direct calls
//! against calls through tenant-proxy, printed as one Markdown table.

mod bare;
mod idle;
mod peers;
mod redis_cluster;
mod rounds;
mod slowloris;
mod sse;
mod tenants;
mod tunnel;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use tenant_proxy_loadtest::client::{self, Connections, Target};
use tenant_proxy_loadtest::config::{
    Ceilings, Intercept, Limiter, Listener, Ready, Route, StaticFile, Tenant, TenantFile,
    LOOPBACK_ANY_PORT,
};
use tenant_proxy_loadtest::ports::HeldPort;
use tenant_proxy_loadtest::{mock, tls};
use tunnel::{Hosts, Tunnels};

/// Every row `run` knows, in the order they are measured.
const ROWS: [&str; 21] = [
    "direct",
    BARE_PINGORA,
    BARE_REFUSE,
    "nginx",
    "haproxy",
    "squid",
    "forward",
    "route",
    ROUTE_AT_WARN,
    "route+limits(memory)",
    "route+limits(memory)+noisy-neighbour",
    REFUSED_ROW,
    REFUSED_BUDGET_ROW,
    "route+limits(redis)",
    REFUSED_REDIS_ROW,
    REDIS_CLUSTER_ROW,
    TUNNEL_KEEP_ALIVE,
    NEW_TUNNEL_CACHED,
    NEW_TUNNEL_RESUMED,
    NEW_TUNNEL_NEW_UPSTREAM,
    NEW_TUNNEL_FRESH,
];

/// The route row with the proxy at log level `warn` whatever `--log-level` says: beside `route`
/// (at the proxy's default level, `info`, unless `--log-level` changes it) it shows what the
/// per-request log line costs.
const ROUTE_AT_WARN: &str = "route(log=warn)";

/// Requests refused for rate: the limits row's request sent as globex, whose ceiling of 10 a
/// second refuses nearly every one (429 `rate_limited`; the few it admits are served), so its
/// CPU per request is what a flooding tenant costs the proxy per refused request, to set beside
/// an allowed one's.
const REFUSED_ROW: &str = "refused(rate)";

/// [`REFUSED_ROW`] with the Redis limiter: Redis refuses the flood's first request, and the
/// replica refuses the rest without asking Redis until the moment Redis named has passed.
const REFUSED_REDIS_ROW: &str = "refused(rate)+redis";

/// The same request from a globex whose daily cost ceiling is spent (429 `budget_exhausted`):
/// such a refusal comes from the full admission, as what a request will cost is known only
/// once its body is decoded.
const REFUSED_BUDGET_ROW: &str = "refused(budget)";

/// The limits row against a three-master Redis Cluster ([`redis_cluster`]).
const REDIS_CLUSTER_ROW: &str = "route+limits(redis-cluster)";

/// The baseline every proxy row is compared with ([`bare`]).
const BARE_PINGORA: &str = "bare-pingora";

/// Bare pingora answering every request with a 429 in `request_filter` ([`bare`]): what the
/// framework alone costs for a request it refuses, the floor under the `refused(…)` rows.
const BARE_REFUSE: &str = "bare-pingora(refuse)";

/// HTTPS rows: requests over kept intercepted tunnels, and whole new tunnels.
const TUNNEL_KEEP_ALIVE: &str = "tunnel(intercept)";
const NEW_TUNNEL_CACHED: &str = "new-tunnel(cached-leaf)";
/// `new-tunnel(cached-leaf)` by a client that keeps its TLS sessions: each tunnel resumes.
const NEW_TUNNEL_RESUMED: &str = "new-tunnel(resumed)";
const NEW_TUNNEL_NEW_UPSTREAM: &str = "new-tunnel(cached-leaf+new-upstream)";
const NEW_TUNNEL_FRESH: &str = "new-tunnel(fresh-leaf)";

/// Requests per row sent before measuring, so connection setup, allocator growth and lazy
/// initialisation in the proxy do not land in the measured numbers.
const WARM_UP: usize = 500;

/// Operations per new-tunnel row sent before measuring (each one a whole new tunnel).
const NEW_TUNNEL_WARM_UP: usize = 200;

/// The TLS mock's domain: `llm.test` and every `*.llm.test` name the new-tunnel rows use are
/// on its certificate and mapped to 127.0.0.1 by the generated `[egress] hosts`.
const TUNNEL_DOMAIN: &str = "llm.test";

/// pingora keeps at most this many idle upstream connections per proxy (its default
/// `upstream_keepalive_pool_size`), dropping the least recently used first. The
/// `cached-leaf+new-upstream` row cycles through enough host names that each one's pooled
/// connection is gone by the time the name comes round again.
const UPSTREAM_POOL: usize = 128;

/// Mock upstream and load comparison for tenant-proxy.
#[derive(Debug, Parser)]
#[command(name = "tenant-proxy-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// The proxy's `[log] level` (e.g. warn, info, debug) [default: the proxy's own, info].
    #[arg(long, global = true)]
    log_level: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve the mock OpenAI/Anthropic-compatible upstream.
    Mock {
        /// Address to listen on (keep it on loopback).
        #[arg(long, default_value = "127.0.0.1:18000")]
        listen: SocketAddr,
        /// Serve HTTPS with a certificate for `--name`, minted at start (kept in memory only)
        /// by the CA of `--ca-cert`/`--ca-key` (e.g. one `tenant-proxy ca init` wrote).
        #[arg(long, requires_all = ["ca_cert", "ca_key"])]
        tls: bool,
        /// The CA certificate (PEM) that signs the mock's certificate.
        #[arg(long, value_name = "FILE", requires = "tls")]
        ca_cert: Option<PathBuf>,
        /// The CA's PKCS#8 private key (PEM).
        #[arg(long, value_name = "FILE", requires = "tls")]
        ca_key: Option<PathBuf>,
        /// DNS name (or IP address) the certificate is for; repeatable.
        #[arg(
            long = "name",
            value_name = "NAME",
            requires = "tls",
            default_value = "localhost"
        )]
        names: Vec<String>,
    },
    /// Compare direct calls with calls through tenant-proxy (forward and route mode).
    ///
    /// Run it pinned away from the proxy: `taskset -c 1 tenant-proxy-loadtest run`
    /// (the proxy is started under `taskset -c 0`).
    Run {
        /// The tenant-proxy binary [default: tenant-proxy next to this binary, in
        /// $CARGO_TARGET_DIR/release, or in <workspace>/target/release, first found].
        #[arg(long)]
        proxy_bin: Option<PathBuf>,
        /// Measured requests per row.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Longest time per row (e.g. 60s, 500ms, 2m); the row stops early when it is reached.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration_limit: Duration,
        /// Measured operations per new-tunnel row, at most --requests (each a new connection,
        /// CONNECT, TLS handshake and one request).
        #[arg(long, default_value_t = 2_000)]
        new_tunnels: usize,
        /// Run only these rows (comma-separated: direct, bare-pingora, bare-pingora(refuse),
        /// nginx, haproxy, squid
        /// (each when installed: loadtest/install-peers.sh), forward, route, route(log=warn),
        /// route+limits(memory),
        /// route+limits(memory)+noisy-neighbour, refused(rate), refused(budget), route+limits(redis),
        /// refused(rate)+redis, route+limits(redis-cluster),
        /// tunnel(intercept),
        /// new-tunnel(cached-leaf), new-tunnel(resumed), new-tunnel(cached-leaf+new-upstream),
        /// new-tunnel(fresh-leaf); the redis rows need `redis-server` on PATH). Default: all.
        #[arg(long, value_delimiter = ',', value_parser = parse_row)]
        only: Vec<String>,
        /// Measure the rows this many times, one whole round after the other, then print the
        /// medians (each round's ratios are to that round's bare-pingora row): single rounds on
        /// a shared machine scatter by a fifth or more.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
        rounds: u32,
    },
    /// Hold slow clients (trickled heads and bodies) open against the proxy for a while, with
    /// normal requests beside them: when are they closed, what do normal requests see, how
    /// much memory does the proxy use. Stops by itself after --duration.
    Slowloris {
        /// The tenant-proxy binary (found as for `run` by default).
        #[arg(long)]
        proxy_bin: Option<PathBuf>,
        /// Slow heads held open at once (each reopened when the proxy closes it).
        #[arg(long, default_value_t = 2_000)]
        connections: usize,
        /// Slow uploads held open at once.
        #[arg(long, default_value_t = 200)]
        slow_bodies: usize,
        /// How long to keep it up.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
        /// A slow client sends one byte this often.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        trickle: Duration,
        /// The proxy's `client_header_timeout`.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        header_timeout: Duration,
        /// The proxy's `client_body_timeout`.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        body_timeout: Duration,
        /// Keep-alive connections of normal traffic measured beside them.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// Time to first byte of streamed chat completions (SSE), direct and through the proxy:
    /// when the first event reaches the client, from the request and from the instant the mock
    /// wrote it. Rows `sse(direct)`, `sse(bare-pingora)`, `sse(route)`.
    Sse {
        /// The tenant-proxy binary (found as for `run` by default).
        #[arg(long)]
        proxy_bin: Option<PathBuf>,
        /// Measured streams per row.
        #[arg(long, default_value_t = 2_000)]
        streams: usize,
        /// Streams in flight (one per keep-alive connection).
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Longest time per row; the row stops early when it is reached.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration_limit: Duration,
        /// The mock waits this long before each event (the first one included), as a model
        /// generating would.
        #[arg(long, default_value = "2ms", value_parser = parse_duration)]
        event_interval: Duration,
        /// Content events per stream (the completion's tokens).
        #[arg(long, default_value_t = 8)]
        tokens: u64,
        /// Run only these rows (comma-separated: sse(direct), sse(bare-pingora), sse(route)).
        #[arg(long, value_delimiter = ',', value_parser = sse::parse_row)]
        only: Vec<String>,
    },
    /// Many tenants: for each count, start the proxy on that many tenants with --policies
    /// policies each and report the time until `/readyz` answers, the idle RSS, the time a
    /// reload takes after a tenant's policy file changes, and the route row's CPU per request.
    Tenants {
        /// The tenant-proxy binary (found as for `run` by default).
        #[arg(long)]
        proxy_bin: Option<PathBuf>,
        /// Tenant counts (comma-separated), each measured with a proxy of its own.
        #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
        tenants: Vec<usize>,
        /// Policies of each generated tenant.
        #[arg(long, default_value_t = 20)]
        policies: usize,
        /// Measured route requests per tenant count.
        #[arg(long, default_value_t = 5_000)]
        requests: usize,
        /// Concurrent keep-alive connections of the route requests.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// How long the start and a reload may take before the report gives up.
        #[arg(long, default_value = "300s", value_parser = parse_duration)]
        load_timeout: Duration,
    },
    /// Memory per idle keep-alive client connection: open each count of connections (each
    /// makes one request through the proxy, then idles), and compare the proxy's RSS before and
    /// after; the same against bare pingora.
    IdleConnections {
        /// The tenant-proxy binary (found as for `run` by default).
        #[arg(long)]
        proxy_bin: Option<PathBuf>,
        /// Connection counts (comma-separated), each measured on a fresh server.
        #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
        connections: Vec<usize>,
        /// Measure the proxy only, not bare pingora.
        #[arg(long)]
        skip_bare: bool,
    },
    /// The `bare-pingora` row's server (started by `run`): a pingora passthrough to `upstream`.
    #[command(hide = true)]
    BarePingora {
        /// Upstream address (the mock).
        #[arg(long)]
        upstream: SocketAddr,
        /// Worker threads (the proxy rows' `[server] threads`).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Answer every request with a 429 instead (the `bare-pingora(refuse)` row).
        #[arg(long)]
        refuse: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            // `{:#}` prints the context chain on one line; anyhow's Debug output would add a
            // backtrace whenever RUST_BACKTRACE is set, burying the proxy's log tail.
            eprintln!("tenant-proxy-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `work` (a subcommand that starts processes: proxies, baselines, Redis) until it ends or
/// a signal ends the run (SIGTERM from `timeout` or a CI runner, SIGINT, SIGHUP). Then `work`
/// is dropped, and with it every process handle it holds, each of which stops its process: a
/// stopped run leaves no proxy or Redis behind holding ports and memory.
fn until_signalled(
    rt: &tokio::runtime::Runtime,
    work: impl std::future::Future<Output = anyhow::Result<bool>>,
) -> anyhow::Result<bool> {
    use tokio::signal::unix::{signal, SignalKind};
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let name = tokio::select! {
            done = work => return done,
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hup.recv() => "SIGHUP",
        };
        bail!("stopped by {name}; the processes it started are stopped")
    })
}

/// Runs the chosen subcommand; `Ok(false)` means a row failed (already reported on stderr).
fn real_main(cli: Cli) -> anyhow::Result<bool> {
    // One thread: the load generator and the in-process mock share one core, pinned away from
    // the proxy, so the proxy's CPU figure is not disturbed by the client.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::Mock {
            listen,
            tls,
            ca_cert,
            ca_key,
            names,
        } => rt.block_on(async {
            // Before binding: a missing or unusable CA is reported without a port taken.
            let tls_config = match (tls, ca_cert, ca_key) {
                (true, Some(cert), Some(key)) => {
                    Some(tls::server_config_from_ca_files(&cert, &key, &names)?)
                }
                _ => None,
            };
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            let addr = listener.local_addr()?;
            match tls_config {
                Some(config) => {
                    println!(
                        "mock upstream listening on {addr} (TLS, certificate for {})",
                        names.join(", ")
                    );
                    tls::serve_mock_tls(listener, config).await?;
                }
                None => {
                    println!("mock upstream listening on {addr}");
                    mock::serve_mock(listener).await?;
                }
            }
            Ok(true)
        }),
        Cmd::Run {
            proxy_bin,
            requests,
            concurrency,
            duration_limit,
            new_tunnels,
            only,
            rounds,
        } => until_signalled(&rt, async {
            let figures = Arc::new(rounds::Collected::default());
            let mut all_passed = true;
            for round in 1..=rounds as usize {
                if rounds > 1 {
                    println!("\n## Round {round} of {rounds}\n");
                }
                all_passed &= run(RunArgs {
                    proxy_bin: proxy_bin.clone(),
                    requests,
                    concurrency,
                    limit: duration_limit,
                    new_tunnels,
                    only: only.clone(),
                    log_level: cli.log_level.clone(),
                    baseline: std::sync::OnceLock::new(),
                    round,
                    figures: figures.clone(),
                })
                .await?;
            }
            if rounds > 1 {
                println!("\n## Medians of {rounds} rounds\n");
                print!("{}", rounds::median_table(&figures.all(), BARE_PINGORA));
            }
            Ok(all_passed)
        }),
        Cmd::Sse {
            proxy_bin,
            streams,
            concurrency,
            duration_limit,
            event_interval,
            tokens,
            only,
        } => until_signalled(&rt, async {
            let args = sse::Args {
                proxy_bin,
                streams,
                concurrency,
                limit: duration_limit,
                event_interval,
                tokens,
                only,
                log_level: cli.log_level,
            };
            let report = sse::measure(&args).await?;
            Ok(sse::print(&args, &report))
        }),
        Cmd::Tenants {
            proxy_bin,
            tenants,
            policies,
            requests,
            concurrency,
            load_timeout,
        } => until_signalled(&rt, async {
            let args = tenants::Args {
                proxy_bin,
                tenants,
                policies,
                requests,
                concurrency,
                load_timeout,
                log_level: cli.log_level,
            };
            let report = tenants::measure(&args).await?;
            Ok(tenants::print(&args, &report))
        }),
        Cmd::IdleConnections {
            proxy_bin,
            connections,
            skip_bare,
        } => until_signalled(&rt, async {
            let args = idle::Args {
                proxy_bin,
                connections,
                bare: !skip_bare,
                log_level: cli.log_level,
            };
            let report = idle::measure(&args).await?;
            Ok(idle::print(&report))
        }),
        Cmd::BarePingora {
            upstream,
            threads,
            refuse,
        } => {
            // The port is found here and announced on stdout for `run`, which connects to it
            // once pingora listens (pingora binds by address and reports nothing).
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            println!("{port}");
            drop(rt);
            let listen = SocketAddr::from(([127, 0, 0, 1], port));
            bare::serve(listen, upstream, threads, refuse)?;
            Ok(true)
        }
        Cmd::Slowloris {
            proxy_bin,
            connections,
            slow_bodies,
            duration,
            trickle,
            header_timeout,
            body_timeout,
            concurrency,
        } => until_signalled(
            &rt,
            slowloris::run(slowloris::Args {
                log_level: cli.log_level,
                proxy_bin,
                connections,
                slow_bodies,
                duration,
                trickle,
                header_timeout,
                body_timeout,
                concurrency,
            }),
        ),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let bad = || format!("`{s}` is not a duration like 60s, 500ms or 2m");
    let n: u64 = num.parse().map_err(|_| bad())?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => return Err(bad()),
    })
}

fn parse_row(s: &str) -> Result<String, String> {
    if ROWS.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!("unknown row `{s}`; rows are {}", ROWS.join(", ")))
    }
}

/// The workspace of the running checkout's loadtest crate (see `build::package_dir`).
fn workspace_root() -> PathBuf {
    tenant_proxy_loadtest::build::package_dir(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Finds the proxy binary: the one built beside this binary (both land in the same profile
/// directory, `production/` or `release/`, so the proxy rows and the bare-pingora row are
/// built alike), then the release build in the target dir cargo was told to use, then the
/// workspace default.
fn default_proxy_bin() -> anyhow::Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join("tenant-proxy"));
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(dir).join("release/tenant-proxy"));
    }
    candidates.push(workspace_root().join("target/release/tenant-proxy"));
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "tenant-proxy binary not found (tried {}): build it with `cargo build --profile production -p tenant-proxy` (or `--release`) or pass --proxy-bin",
        tried.join(", ")
    )
}

/// The proxy child process; SIGTERM, then SIGKILL after 5 s, on drop.
struct ProxyProcess {
    child: Child,
    log: PathBuf,
    /// The listener bound to acme, whose requests are measured.
    port: u16,
    /// The listener bound to globex, the noisy neighbour.
    neighbour_port: u16,
    admin_port: u16,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        // `kill(1)` rather than libc: the workspace forbids unsafe code.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system, all threads) process `pid` has used so far.
fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Skip past `(comm)`, which may itself contain spaces; utime and stime are fields 14 and
    // 15 (1-based), i.e. the 12th and 13th after the command name.
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .context("unexpected /proc stat format")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .context("unexpected /proc stat format")
    };
    let ticks = field(11)? + field(12)?;
    // CLK_TCK is 100 on Linux x86_64 and aarch64; sysconf would need libc and unsafe.
    Ok(Duration::from_millis(ticks * 10))
}

impl ProxyProcess {
    /// CPU time (user + system, all threads) the proxy has used so far.
    fn cpu(&self) -> anyhow::Result<Duration> {
        process_cpu(self.child.id())
    }

    /// `Some(description)` once the child has exited.
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("tenant-proxy exited ({status})")),
            Ok(None) => None,
            Err(e) => Some(format!("tenant-proxy status unknown: {e}")),
        }
    }

    /// The last 20 lines the proxy logged, on lines of their own for the error report.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines
            .get(lines.len().saturating_sub(20)..)
            .unwrap_or_default();
        if tail.is_empty() {
            return format!("\n  (the proxy logged nothing to {})", self.log.display());
        }
        let mut out = format!("\n  last lines of {}:", self.log.display());
        for l in tail {
            out.push_str("\n  ");
            out.push_str(l);
        }
        out
    }
}

/// Starts the `bare-pingora` server (this binary's hidden subcommand), pinned like the proxy,
/// and waits until it accepts connections.
async fn start_bare(upstream: SocketAddr, pin: bool, dir: &Path) -> anyhow::Result<ProxyProcess> {
    start_bare_server(upstream, pin, dir, false).await
}

/// [`start_bare`], or with `refuse` the server of the `bare-pingora(refuse)` row.
async fn start_bare_server(
    upstream: SocketAddr,
    pin: bool,
    dir: &Path,
    refuse: bool,
) -> anyhow::Result<ProxyProcess> {
    let exe = std::env::current_exe()?;
    let mut cmd = if pin {
        let mut c = Command::new("taskset");
        c.arg("-c").arg("0").arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    std::fs::create_dir_all(dir)?;
    let log = dir.join(if refuse {
        "bare-pingora-refuse.log"
    } else {
        "bare-pingora.log"
    });
    if refuse {
        cmd.arg("bare-pingora").arg("--refuse");
    } else {
        cmd.arg("bare-pingora");
    }
    let mut child = cmd
        .arg("--upstream")
        .arg(upstream.to_string())
        .arg("--threads")
        .arg("1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut proc = ProxyProcess {
        child,
        log,
        port: 0,
        neighbour_port: 0,
        admin_port: 0,
    };
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    proc.port = line.trim().parse().with_context(|| {
        format!(
            "bare-pingora announced no port: {line:?}{}",
            proc.log_tail()
        )
    })?;
    let addr = SocketAddr::from(([127, 0, 0, 1], proc.port));
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Some(why) = proc.exited() {
            bail!("{why} before listening{}", proc.log_tail());
        }
        if Instant::now() > deadline {
            bail!("bare-pingora did not listen within 20 s{}", proc.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(proc)
}

/// Starts `peer` (installed at `bin`) on a port held for it, forwarding to the mock on
/// `mock_port`, pinned like the proxy, and waits until it accepts connections.
async fn start_peer(
    peer: peers::Peer,
    bin: &Path,
    mock_port: u16,
    pin: bool,
    dir: &Path,
) -> anyhow::Result<(ProxyProcess, HeldPort)> {
    let held = HeldPort::for_child()?;
    let args = peer.prepare(held.port, mock_port, dir)?;
    let mut cmd = if pin {
        let mut c = Command::new("taskset");
        c.arg("-c").arg("0").arg(bin);
        c
    } else {
        Command::new(bin)
    };
    let log = dir.join(format!("{}.out", peer.row()));
    let child = cmd
        .args(&args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(
            dir.join(format!("{}.err", peer.row())),
        )?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut proc = ProxyProcess {
        child,
        log: dir.join(format!("{}.err", peer.row())),
        port: held.port,
        neighbour_port: 0,
        admin_port: 0,
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], proc.port));
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Ok(Some(status)) = proc.child.try_wait() {
            bail!(
                "{} exited ({status}) before listening{}",
                peer.row(),
                proc.log_tail()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not listen within 20 s{}",
                peer.row(),
                proc.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((proc, held))
}

/// Whether `taskset -c 0` works here (it is missing in some images and fails under cpusets that
/// exclude core 0); the proxy is started unpinned otherwise.
fn taskset_usable() -> bool {
    Command::new("taskset")
        .args(["-c", "0", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn which(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The listener bound to acme's `support-bot`, whose requests are measured.
const MEASURED: &str = "loadtest";
/// The listener bound to globex, the noisy neighbour.
const NEIGHBOUR: &str = "neighbour";

/// The configuration every group starts from: two listeners on ports the proxy picks
/// (`loadtest`, bound to acme's `support-bot`, and `neighbour`, bound to globex), the route
/// `openai` to the plain mock on `mock_port`, the price table, policies from `policy_dir`, and
/// the loopback mocks as EU destinations and an exception to the egress guard. No shutdown grace
/// (nothing needs draining at the end of a benchmark, so SIGTERM ends the proxy at once), one
/// worker thread, log level `log_level` (`None`: the proxy's default, `info`, which logs a
/// line per request: what a deployment runs with, so its cost is measured too).
fn base_config(
    mock_port: u16,
    policy_dir: PathBuf,
    log_level: Option<&str>,
) -> (StaticFile, TenantFile) {
    let mut config = StaticFile::new("tenants.toml", "audit");
    config.admin.listen = Some(LOOPBACK_ANY_PORT);
    config.listeners = vec![
        Listener::bound(MEASURED, "acme", "support-bot"),
        Listener::bound(NEIGHBOUR, "globex", "agent"),
    ];
    config.server.threads = Some(1);
    config.server.grace_period = Some(Duration::ZERO);
    config.server.graceful_shutdown_timeout = Some(Duration::from_secs(1));
    config.log.level = log_level.map(str::to_string);
    // The mocks listen on loopback, which the SSRF guard refuses unless it is an exception.
    config.egress.allow = vec!["127.0.0.1/32".into()];
    let mut tenants = TenantFile::new(policy_dir);
    tenants.prices_file = Some("prices.toml".into());
    tenants.routes.push(Route {
        provider: Some("openai".into()),
        ..Route::new(
            "openai",
            "/openai/",
            format!("http://127.0.0.1:{mock_port}/"),
        )
    });
    // acme is an EU tenant and the repo's policies keep EU tenants on EU-tagged destinations: the
    // mocks count as EU, so the rows measure the residency check too.
    tenants.destination_regions.insert(
        "eu".into(),
        vec![
            "127.0.0.1".into(),
            TUNNEL_DOMAIN.into(),
            format!("*.{TUNNEL_DOMAIN}"),
        ],
    );
    tenants.tenants.insert(
        "acme".into(),
        Tenant::new("pro", "eu", &["support-bot", "researcher"]),
    );
    tenants
        .tenants
        .insert("globex".into(), Tenant::new("free", "us", &["agent"]));
    (config, tenants)
}

/// How long a proxy of a few tenants may take to answer `/readyz`.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// Writes the group's two config files (and the price table) into `dir`, starts the proxy and
/// waits (up to [`READY_WITHIN`]) for it to report its ports and answer `/readyz`.
async fn start_proxy(bin: &Path, dir: &Path, pin: bool, g: &Group) -> anyhow::Result<ProxyProcess> {
    start_proxy_within(bin, dir, pin, g, READY_WITHIN).await
}

/// As [`start_proxy`], waiting up to `within` (a configuration of many tenants takes long to
/// load).
async fn start_proxy_within(
    bin: &Path,
    dir: &Path,
    pin: bool,
    g: &Group,
    within: Duration,
) -> anyhow::Result<ProxyProcess> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("prices.toml"), PRICES)?;
    let mut config = g.config.clone();
    config.audit.dir = dir.join("audit");
    config.write(&dir.join("tenant-proxy.toml"))?;
    g.tenants.write(&dir.join("tenants.toml"))?;
    let log = dir.join("proxy.log");
    let log_file = std::fs::File::create(&log)?;
    let ready_file = dir.join("ready.json");
    let mut cmd = if pin {
        // taskset execs the proxy, so the child's pid is the proxy's own (for /proc/<pid>/stat).
        let mut c = Command::new("taskset");
        c.arg("-c").arg("0").arg(bin);
        c
    } else {
        Command::new(bin)
    };
    let child = cmd
        .arg("run")
        .arg("--config")
        .arg(dir.join("tenant-proxy.toml"))
        .arg("--ready-file")
        .arg(&ready_file)
        // `RUST_LOG` would override `[log] level`: the rows measure the level they say.
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut proc = ProxyProcess {
        child,
        log,
        port: 0,
        neighbour_port: 0,
        admin_port: 0,
    };
    let deadline = Instant::now() + within;
    // The ports the proxy bound, once it listens on all of them.
    let ready = loop {
        if let Some(ready) = Ready::read(&ready_file).map_err(anyhow::Error::msg)? {
            break ready;
        }
        if let Some(why) = proc.exited() {
            bail!("{why} before listening{}", proc.log_tail());
        }
        if Instant::now() > deadline {
            bail!(
                "tenant-proxy wrote no ready file ({}) within {within:?}{}",
                ready_file.display(),
                proc.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let port_of = |name: &str| {
        ready
            .port(name)
            .with_context(|| format!("the ready file names no listener `{name}`: {ready:?}"))
    };
    proc.port = port_of(MEASURED)?;
    proc.neighbour_port = port_of(NEIGHBOUR)?;
    proc.admin_port = ready.admin.port();
    let admin = ready.admin;
    let readyz = Arc::new(b"GET /readyz HTTP/1.1\r\nHost: admin\r\n\r\n".to_vec());
    loop {
        let ready = client::run(admin, readyz.clone(), 1, 1, Duration::from_secs(1)).await;
        if ready.errors == 0 && ready.requests == 1 {
            return Ok(proc);
        }
        if let Some(why) = proc.exited() {
            bail!("{why} before becoming ready{}", proc.log_tail());
        }
        if Instant::now() > deadline {
            bail!(
                "tenant-proxy did not become ready within {within:?} (GET http://{admin}/readyz: {}){}",
                ready.first_error.unwrap_or_else(|| "no answer".into()),
                proc.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The load request: a ~300-byte chat-completions body, the same for every row.
fn chat_request(target: &str, host: &str) -> Vec<u8> {
    let body = r#"{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"system","content":"You are a helpful assistant for a load test."},{"role":"user","content":"Summarise the benefits of per-tenant egress policy for AI agents in one short sentence, and mention audit trails and budgets."}]}"#;
    format!(
        "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A `redis-server` child on a loopback port held for it, killed on drop.
struct RedisProcess {
    child: Child,
    port: u16,
    /// The port, held (bound, not listening) so nothing else takes it before redis binds it.
    _held: HeldPort,
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_redis(dir: &Path) -> anyhow::Result<RedisProcess> {
    // `redis-server --port 0` turns TCP off rather than picking a port, and the proxy takes
    // `redis://host:port` only: hold a port for it (it binds with SO_REUSEADDR beside the held
    // socket).
    let held = HeldPort::for_child()?;
    let port = held.port;
    std::fs::create_dir_all(dir)?;
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server")?;
    let redis = RedisProcess {
        child,
        port,
        _held: held,
    };
    // Wait until it accepts connections rather than guessing a sleep.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("redis-server did not listen on 127.0.0.1:{port} within 5 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(redis)
}

/// Every kind of tenant ceiling (rate, concurrency, tokens, daily and monthly cost), set high
/// enough never to refuse: the rows measure the cost of reserving and settling against them.
fn acme_limits(tenants: &mut TenantFile) {
    tenants.tenant("acme").limits = Some(Ceilings {
        requests_per_second: Some(1_000_000),
        burst: Some(1_000_000),
        concurrency: Some(100_000),
        tokens_per_minute: Some(1_000_000_000_000),
        cost_per_day_micros: Some(1_000_000_000_000),
        cost_per_month_micros: Some(1_000_000_000_000),
        ..Ceilings::default()
    });
}

/// The noisy neighbour's ceilings: so small that nearly every one of its requests is refused
/// for rate.
fn neighbour_limits(tenants: &mut TenantFile) {
    tenants.tenant("globex").limits = Some(Ceilings {
        requests_per_second: Some(10),
        concurrency: Some(2),
        ..Ceilings::default()
    });
}

/// globex for [`REFUSED_BUDGET_ROW`]: a daily cost ceiling its first few requests spend, and no
/// rate ceiling, so that what refuses the rest is the spent budget.
fn spent_budget_limits(tenants: &mut TenantFile) {
    tenants.tenant("globex").limits = Some(Ceilings {
        cost_per_day_micros: Some(1000),
        ..Ceilings::default()
    });
}

/// The refusal code a refused row's requests must get (most of them: a few are admitted).
fn refused_row_code(row: &str) -> Option<&'static str> {
    match row {
        REFUSED_ROW | REFUSED_REDIS_ROW => Some("rate_limited"),
        REFUSED_BUDGET_ROW => Some("budget_exhausted"),
        _ => None,
    }
}

/// The price table for the cost ceilings (integer micro-units per million tokens).
const PRICES: &str = "currency = \"USD\"
[providers.openai]
\"gpt-4o-mini\" = { input = 150000, cached_input = 75000, output = 600000 }
";

/// The noisy neighbour: 8 connections, each starting a request every 4 ms — 2000 requests a
/// second, 200 times its ceiling, nearly all refused. A steady rate rather than a closed-loop
/// flood: a flood saturates the proxy's one pinned core whoever sends it, so it would measure
/// CPU contention, not whether one tenant's refusals disturb another tenant.
const NEIGHBOUR_CONCURRENCY: usize = 8;
const NEIGHBOUR_INTERVAL: Duration = Duration::from_millis(4);

/// Options of the `run` subcommand.
struct RunArgs {
    proxy_bin: Option<PathBuf>,
    requests: usize,
    concurrency: usize,
    limit: Duration,
    new_tunnels: usize,
    only: Vec<String>,
    /// The proxy's log level (`None`: its default).
    log_level: Option<String>,
    /// The `bare-pingora` row's req/s and CPU µs per request, once measured: the other rows
    /// print their ratio to it.
    baseline: std::sync::OnceLock<(f64, f64)>,
    /// Which round this is (`--rounds`), from 1.
    round: usize,
    /// Every round's figures, for the medians table.
    figures: Arc<rounds::Collected>,
}

impl RunArgs {
    /// Measured operations per new-tunnel row.
    fn new_tunnel_ops(&self) -> usize {
        self.requests.min(self.new_tunnels)
    }
}

/// One proxy instance and the rows measured through it.
struct Group {
    dir: &'static str,
    rows: Vec<&'static str>,
    /// Its static file ([`base_config`] and the group's changes; the audit directory is set
    /// where the proxy runs).
    config: StaticFile,
    /// Its tenant file.
    tenants: TenantFile,
    /// Create the interception CA here (`tenant-proxy ca init --out`) before starting.
    ca_init: Option<PathBuf>,
}

/// What a row sends: the warm-up and the measured operations.
struct Load<T> {
    warm: Arc<T>,
    warm_ops: usize,
    measured: Arc<T>,
    ops: usize,
    connections: Connections,
}

impl Load<client::Plain> {
    /// Keep-alive requests of `raw` to `addr`, [`WARM_UP`] of them then `--requests`.
    fn plain(addr: SocketAddr, raw: Vec<u8>, args: &RunArgs) -> Self {
        let target = Arc::new(client::Plain {
            addr,
            raw: Arc::new(raw),
            also_answered: None,
        });
        Self {
            warm: target.clone(),
            warm_ops: WARM_UP,
            measured: target,
            ops: args.requests,
            connections: Connections::KeepAlive,
        }
    }

    /// As [`Self::plain`], where a 429 counts as an answer: the row measures refusals.
    fn refused(addr: SocketAddr, raw: Vec<u8>, args: &RunArgs) -> Self {
        let mut load = Self::plain(addr, raw, args);
        let target = Arc::new(client::Plain {
            also_answered: Some(429),
            ..(*load.measured).clone()
        });
        load.warm = target.clone();
        load.measured = target;
        load
    }
}

/// What the proxy did during a measured run, beyond answering: leaves it minted and
/// connections it opened to the TLS mock.
#[derive(Debug, Clone, Copy)]
struct Work {
    minted: Option<u64>,
    upstream_connections: usize,
}

/// The counters [`Work`] is the difference of.
struct Probe<'a> {
    upstream_accepted: &'a AtomicUsize,
}

impl Probe<'_> {
    async fn read(&self, proxy: &ProxyProcess) -> Work {
        Work {
            minted: minted_leaves(proxy).await,
            upstream_connections: self.upstream_accepted.load(Ordering::Relaxed),
        }
    }
}

/// Leaves the proxy has minted so far, from its metrics.
async fn minted_leaves(proxy: &ProxyProcess) -> Option<u64> {
    metric_sum(
        proxy,
        "tenant_proxy_leaf_certificates_total",
        &["result=\"miss\""],
    )
    .await
}

/// The sum of the proxy's `metric` series whose labels include every one of `labels`.
async fn metric_sum(proxy: &ProxyProcess, metric: &str, labels: &[&str]) -> Option<u64> {
    let admin = SocketAddr::from(([127, 0, 0, 1], proxy.admin_port));
    let text = client::get(admin, "/metrics").await.ok()?;
    let series = format!("{metric}{{");
    Some(
        text.lines()
            .filter(|l| l.starts_with(&series) && labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum(),
    )
}

/// Measures one row and prints it; `Err` describes why the row failed. With a `probe`, also
/// returns what the proxy did during the measured part.
async fn measure<T: Target>(
    name: &str,
    load: &Load<T>,
    args: &RunArgs,
    mut proxy: Option<&mut ProxyProcess>,
    probe: Option<&Probe<'_>>,
) -> Result<(client::RunResult, Option<Work>), String> {
    let log_tail =
        |p: &Option<&mut ProxyProcess>| p.as_ref().map(|p| p.log_tail()).unwrap_or_default();
    let run = |target: &Arc<T>, ops: usize| {
        client::run_target(
            target.clone(),
            load.connections,
            ops,
            args.concurrency,
            args.limit,
        )
    };
    let warm = run(&load.warm, load.warm_ops).await;
    if warm.errors > 0 {
        println!(
            "| {name} (warm-up failed) | {} | {} | - | - | - | - | - | - |",
            warm.requests, warm.errors
        );
        return Err(format!(
            "row `{name}`: {} of {} warm-up requests failed (first: {}){}",
            warm.errors,
            warm.requests,
            warm.first_error.as_deref().unwrap_or("?"),
            log_tail(&proxy)
        ));
    }
    let work_before = match (probe, proxy.as_deref()) {
        (Some(probe), Some(p)) => Some(probe.read(p).await),
        _ => None,
    };
    let cpu_before = proxy.as_ref().and_then(|p| p.cpu().ok());
    let r = run(&load.measured, load.ops).await;
    let cpu_after = proxy.as_ref().and_then(|p| p.cpu().ok());
    let work = match (probe, proxy.as_deref(), work_before) {
        (Some(probe), Some(p), Some(before)) => {
            let after = probe.read(p).await;
            Some(Work {
                minted: after
                    .minted
                    .zip(before.minted)
                    .map(|(a, b)| a.saturating_sub(b)),
                upstream_connections: after
                    .upstream_connections
                    .saturating_sub(before.upstream_connections),
            })
        }
        _ => None,
    };
    let cpu_us = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) if r.requests > 0 => {
            Some(after.saturating_sub(before).as_secs_f64() * 1e6 / r.requests as f64)
        }
        _ => None,
    };
    let cpu = cpu_us.map_or("-".into(), |c| format!("{c:.1}"));
    if r.errors == 0 {
        args.figures.push(rounds::Figures {
            round: args.round,
            row: name.to_string(),
            rps: r.rps(),
            p99_ms: r.quantile_ms(0.99),
            cpu_us,
        });
    }
    if name == BARE_PINGORA && r.errors == 0 {
        if let Some(c) = cpu_us {
            let _ = args.baseline.set((r.rps(), c));
        }
    }
    // Ratios to bare pingora, measured in this same run (figures across runs do not compare).
    let (rps_ratio, cpu_ratio) = match (args.baseline.get(), proxy.is_some()) {
        (Some(&(rps, base_cpu)), true) if rps > 0.0 && base_cpu > 0.0 => (
            format!("{:.2}", r.rps() / rps),
            cpu_us.map_or("-".into(), |c| format!("{:.2}", c / base_cpu)),
        ),
        _ => ("-".into(), "-".into()),
    };
    let ms = |q: f64| {
        let v = r.quantile_ms(q);
        if v.is_nan() {
            "-".to_string()
        } else {
            format!("{v:.3}")
        }
    };
    println!(
        "| {name} | {} | {} | {:.0} | {} | {} | {cpu} | {rps_ratio} | {cpu_ratio} |",
        r.requests,
        r.errors,
        r.rps(),
        ms(0.5),
        ms(0.99)
    );
    if let Some(why) = proxy.as_mut().and_then(|p| p.exited()) {
        return Err(format!("row `{name}`: {why}{}", log_tail(&proxy)));
    }
    if r.errors > 0 {
        return Err(format!(
            "row `{name}`: {} of {} requests failed (first: {}){}",
            r.errors,
            r.requests,
            r.first_error.as_deref().unwrap_or("?"),
            log_tail(&proxy)
        ));
    }
    if r.requests < load.ops {
        eprintln!(
            "note: row `{name}` hit --duration-limit after {} of {} requests",
            r.requests, load.ops
        );
    }
    Ok((r, work))
}

/// How many of globex's requests the proxy refused, from its metrics.
async fn refused_neighbour_requests(proxy: &ProxyProcess) -> Option<u64> {
    metric_sum(
        proxy,
        "tenant_proxy_requests_total",
        &["decision=\"deny\"", "tenant=\"globex\""],
    )
    .await
}

/// Prints a hint when this process may share a core with the proxy.
fn pinning_hint(pinned_proxy: bool) {
    let allowed = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Cpus_allowed_list:")
                    .map(|v| v.trim().to_string())
            })
        })
        .unwrap_or_default();
    if !pinned_proxy {
        eprintln!("note: taskset unavailable; the proxy is not pinned and shares cores with the load generator");
    } else if allowed != "1" {
        eprintln!("note: load generator allowed on CPUs {allowed}; run it as `taskset -c 1 tenant-proxy-loadtest run` so it does not compete with the proxy on core 0");
    }
}

/// Everything the HTTPS rows need besides the proxy: the TLS mock (its certificate covers
/// `llm.test` and `*.llm.test`, signed by a throwaway origin CA the proxy is told to trust),
/// a policy directory permitting the tunnels, and the proxy config pointing at both.
struct TunnelSetup {
    /// The TLS mock's port: the CONNECT port of every tunnel.
    mock_port: u16,
    /// Connections the TLS mock accepted (each one an upstream connection of the proxy).
    accepted: Arc<AtomicUsize>,
    /// Where `ca init` writes the interception CA.
    ca_dir: PathBuf,
}

/// The hosts of an HTTPS row's tunnels: warm-up, measured.
fn new_tunnel_hosts(row: &str, args: &RunArgs) -> (Hosts, Hosts) {
    let fresh = |prefix: &str| Hosts::Fresh {
        prefix: prefix.into(),
        domain: TUNNEL_DOMAIN.into(),
    };
    match row {
        NEW_TUNNEL_FRESH => (fresh("w"), fresh("f")),
        NEW_TUNNEL_NEW_UPSTREAM => {
            let cycle = Hosts::Cycle {
                prefix: "r".into(),
                domain: TUNNEL_DOMAIN.into(),
                count: cycle_hosts(args),
            };
            (cycle.clone(), cycle)
        }
        _ => (
            Hosts::One(TUNNEL_DOMAIN.into()),
            Hosts::One(TUNNEL_DOMAIN.into()),
        ),
    }
}

/// How many names the `cached-leaf+new-upstream` row cycles through: between two uses of a
/// name, more than the pool's worth of other names (plus those in flight) come back to it.
fn cycle_hosts(args: &RunArgs) -> usize {
    2 * (UPSTREAM_POOL + args.concurrency.max(1))
}

/// Warm-up operations of a new-tunnel row: the `cached-leaf+new-upstream` row mints a leaf for
/// every name of its cycle before measuring.
fn new_tunnel_warm_up(row: &str, args: &RunArgs) -> usize {
    if row == NEW_TUNNEL_NEW_UPSTREAM {
        cycle_hosts(args)
    } else {
        NEW_TUNNEL_WARM_UP
    }
}

/// The Cedar permits the HTTPS rows need on top of the repo's policies.
const LOADTEST_POLICY: &str = r#"// Written by tenant-proxy-loadtest for its HTTPS rows: acme may open tunnels to the TLS mock
// (llm.test and its subdomains, mapped to 127.0.0.1 by the generated [egress] hosts) and send
// HTTPS requests inside them.
@id("loadtest-tunnels")
permit (principal in TenantProxy::Tenant::"acme", action == TenantProxy::Action::"connect", resource)
when { context.host == "llm.test" || context.host like "*.llm.test" };

@id("loadtest-https")
permit (principal in TenantProxy::Tenant::"acme", action == TenantProxy::Action::"http", resource)
when {
  context.scheme == "https" &&
  (context.host == "llm.test" || context.host like "*.llm.test")
};
"#;

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()))?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// Starts the TLS mock and writes the HTTPS rows' policies into `dir`; their group (on the
/// plain mock at `mock_port` for everything but the tunnels).
async fn prepare_tunnels(
    dir: &Path,
    mock_port: u16,
    rows: &[&'static str],
    args: &RunArgs,
) -> anyhow::Result<(TunnelSetup, Group)> {
    std::fs::create_dir_all(dir)?;
    let origin = tls::TestCa::new("tenant-proxy-loadtest origin CA")?;
    let wildcard = format!("*.{TUNNEL_DOMAIN}");
    let pair = origin.server(&[TUNNEL_DOMAIN, &wildcard])?;
    let origin_ca = dir.join("origin-ca.pem");
    std::fs::write(&origin_ca, &origin.cert_pem)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let tls_mock_port = listener.local_addr()?.port();
    let accepted = Arc::new(AtomicUsize::new(0));
    tokio::spawn(tunnel::serve_mock_tls_counted(
        listener,
        tls::server_config(&pair)?,
        accepted.clone(),
    ));

    // The repo's policies plus a permit for the mock's names.
    let policy_dir = dir.join("policies");
    copy_dir(&workspace_root().join("policies"), &policy_dir)
        .context("copying the repo's policies/")?;
    let acme = policy_dir.join("tenants").join("acme");
    std::fs::create_dir_all(&acme)?;
    std::fs::write(acme.join("loadtest.cedar"), LOADTEST_POLICY)?;

    // `[egress] hosts` has no wildcards: every name a row will use is listed (bounded by the
    // row's operation count).
    let mut names = Vec::new();
    for row in rows {
        let (warm, measured) = new_tunnel_hosts(row, args);
        names.extend(warm.distinct(new_tunnel_warm_up(row, args)));
        names.extend(measured.distinct(args.new_tunnel_ops()));
    }
    names.sort();
    names.dedup();
    let ca_dir = dir.join("ca");
    let (mut config, tenants) = base_config(mock_port, policy_dir, args.log_level.as_deref());
    config.egress.connect_ports = Some(vec![443, tls_mock_port]);
    config.egress.hosts = names
        .iter()
        .map(|n| (n.clone(), vec!["127.0.0.1".to_string()]))
        .collect();
    config.intercept = Some(Intercept {
        // Room for every leaf the run mints, so none is evicted and minted again.
        leaf_cache: Some((names.len() + 1).max(10_000)),
        ..Intercept::ca_in(&ca_dir)
    });
    config.upstream.extra_ca_files = vec![origin_ca];
    let group = Group {
        dir: "tunnel",
        rows: rows.to_vec(),
        config,
        tenants,
        ca_init: Some(ca_dir.clone()),
    };
    Ok((
        TunnelSetup {
            mock_port: tls_mock_port,
            accepted,
            ca_dir,
        },
        group,
    ))
}

/// `tenant-proxy ca init --out dir`, constrained to the mock's domain.
fn ca_init(bin: &Path, dir: &Path) -> anyhow::Result<()> {
    let out = Command::new(bin)
        .args(["ca", "init", "--out"])
        .arg(dir)
        .args([
            "--name",
            "tenant-proxy-loadtest interception CA",
            "--permit",
            TUNNEL_DOMAIN,
        ])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} ca init", bin.display()))?;
    if !out.status.success() {
        bail!(
            "`{} ca init --out {}` failed ({}): {}",
            bin.display(),
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Measures one HTTPS row through `proxy`, checks it measured what it says (a leaf minted per
/// operation, or none; a new upstream connection per operation) and notes what the proxy did.
async fn measure_tunnel_row(
    row: &'static str,
    setup: &TunnelSetup,
    ca_pem: &str,
    args: &RunArgs,
    proxy: &mut ProxyProcess,
) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], proxy.port));
    let request: fn(&str) -> Vec<u8> = |authority| chat_request("/v1/chat/completions", authority);
    let (warm_hosts, hosts) = new_tunnel_hosts(row, args);
    let tunnels = |hosts: Hosts| {
        Tunnels::new(addr, setup.mock_port, hosts, ca_pem, request)
            .map(Arc::new)
            .map_err(|e| format!("row `{row}`: the client TLS config: {e}"))
    };
    // The resumed row's client keeps its sessions from the warm-up on; the measured half counts
    // its own handshakes.
    let mut resuming = None;
    let load = if row == NEW_TUNNEL_RESUMED {
        let warm = Tunnels::resuming(addr, setup.mock_port, warm_hosts, ca_pem, request)
            .map_err(|e| format!("row `{row}`: the client TLS config: {e}"))?;
        let measured = Arc::new(warm.same_client());
        resuming = Some(measured.clone());
        Load {
            warm: Arc::new(warm),
            warm_ops: new_tunnel_warm_up(row, args),
            measured,
            ops: args.new_tunnel_ops(),
            connections: Connections::PerRequest,
        }
    } else if row == TUNNEL_KEEP_ALIVE {
        let target = tunnels(hosts)?;
        Load {
            warm: target.clone(),
            warm_ops: WARM_UP,
            measured: target,
            ops: args.requests,
            connections: Connections::KeepAlive,
        }
    } else {
        Load {
            warm: tunnels(warm_hosts)?,
            warm_ops: new_tunnel_warm_up(row, args),
            measured: tunnels(hosts)?,
            ops: args.new_tunnel_ops(),
            connections: Connections::PerRequest,
        }
    };
    let probe = Probe {
        upstream_accepted: &setup.accepted,
    };
    let (r, work) = measure(row, &load, args, Some(proxy), Some(&probe)).await?;
    let Some(work) = work else {
        return Ok(());
    };
    let ok = r.requests - r.errors;
    let minted = work
        .minted
        .map_or_else(|| "? (no metrics)".to_string(), |m| m.to_string());
    eprintln!(
        "note: row `{row}`: {} operations; the proxy minted {minted} leaves and opened {} upstream TLS connections meanwhile",
        r.requests, work.upstream_connections
    );
    if let Some(client) = &resuming {
        let (full, resumed) = client.handshakes();
        eprintln!("note: row `{row}`: {resumed} handshakes resumed, {full} full");
        // A few full handshakes are expected: rustls keeps at most 8 tickets per host and uses
        // each once, so a burst of opens can find a client's store empty (the row's clients
        // are spread so that each sees at most a few tunnels at once).
        if resumed < ok * 3 / 4 {
            return Err(format!(
                "row `{row}`: only {resumed} of {ok} tunnels resumed their TLS session ({full} full handshakes): the row did not measure resumption"
            ));
        }
    }
    match row {
        NEW_TUNNEL_FRESH if work.minted.is_some_and(|m| (m as usize) < ok) => Err(format!(
            "row `{row}`: only {minted} leaves minted for {ok} tunnels to new names: the row measured cached leaves"
        )),
        NEW_TUNNEL_CACHED | NEW_TUNNEL_RESUMED | NEW_TUNNEL_NEW_UPSTREAM | TUNNEL_KEEP_ALIVE
            if work.minted.is_some_and(|m| m > 0) =>
        {
            Err(format!(
                "row `{row}`: {minted} leaves minted while measuring: the row did not measure cached leaves only"
            ))
        }
        NEW_TUNNEL_NEW_UPSTREAM if work.upstream_connections < ok => Err(format!(
            "row `{row}`: {} upstream connections for {ok} operations: the proxy reused pooled connections (is its pool still {UPSTREAM_POOL}?)",
            work.upstream_connections
        )),
        _ => Ok(()),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<bool> {
    let wanted = |row: &str| args.only.is_empty() || args.only.iter().any(|o| o == row);
    let mock_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mock_port = mock_listener.local_addr()?.port();
    tokio::spawn(mock::serve_mock(mock_listener));
    let mock_addr = SocketAddr::from(([127, 0, 0, 1], mock_port));
    let mock_host = format!("127.0.0.1:{mock_port}");
    let repo_config = || {
        base_config(
            mock_port,
            workspace_root().join("policies"),
            args.log_level.as_deref(),
        )
    };

    let mut groups = Vec::new();
    let plain: Vec<&str> = ["forward", "route"]
        .into_iter()
        .filter(|r| wanted(r))
        .collect();
    if !plain.is_empty() {
        let (config, tenants) = repo_config();
        groups.push(Group {
            dir: "plain",
            rows: plain,
            config,
            tenants,
            ca_init: None,
        });
    }
    if wanted(ROUTE_AT_WARN) {
        let (mut config, tenants) = repo_config();
        config.log.level = Some("warn".into());
        groups.push(Group {
            dir: "plain-warn",
            rows: vec![ROUTE_AT_WARN],
            config,
            tenants,
            ca_init: None,
        });
    }
    let memory: Vec<&str> = [
        "route+limits(memory)",
        "route+limits(memory)+noisy-neighbour",
        REFUSED_ROW,
    ]
    .into_iter()
    .filter(|r| wanted(r))
    .collect();
    if !memory.is_empty() {
        let (config, mut tenants) = repo_config();
        acme_limits(&mut tenants);
        groups.push(Group {
            dir: "memory",
            rows: memory,
            config,
            tenants,
            ca_init: None,
        });
    }
    if wanted(REFUSED_BUDGET_ROW) {
        let (config, mut tenants) = repo_config();
        acme_limits(&mut tenants);
        groups.push(Group {
            dir: "memory-budget",
            rows: vec![REFUSED_BUDGET_ROW],
            config,
            tenants,
            ca_init: None,
        });
    }
    let dir = tempfile::tempdir()?;
    let redis_rows: Vec<&str> = ["route+limits(redis)", REFUSED_REDIS_ROW]
        .into_iter()
        .filter(|r| wanted(r))
        .collect();
    let redis = if !redis_rows.is_empty() {
        if which("redis-server") {
            Some(start_redis(&dir.path().join("redis"))?)
        } else {
            eprintln!(
                "note: skipping rows {}: redis-server is not on PATH",
                redis_rows.join(", ")
            );
            None
        }
    } else {
        None
    };
    let cluster = if wanted(REDIS_CLUSTER_ROW) {
        if which("redis-server") && which("redis-cli") {
            Some(redis_cluster::LocalCluster::start(
                &dir.path().join("redis-cluster"),
            )?)
        } else {
            eprintln!("note: skipping row `{REDIS_CLUSTER_ROW}`: redis-server or redis-cli is not on PATH");
            None
        }
    } else {
        None
    };
    let redis_urls = [
        redis.as_ref().map(|r| {
            (
                "redis-proxy",
                redis_rows.clone(),
                format!("redis://127.0.0.1:{}", r.port),
            )
        }),
        cluster
            .as_ref()
            .map(|c| ("redis-cluster-proxy", vec![REDIS_CLUSTER_ROW], c.url())),
    ];
    for (dir, rows, url) in redis_urls.into_iter().flatten() {
        let (mut config, mut tenants) = repo_config();
        config.limiter = Limiter {
            backend: Some(tenant_proxy_loadtest::config::LimiterBackend::Redis),
            redis_url: Some(url.into()),
            ..Limiter::default()
        };
        acme_limits(&mut tenants);
        groups.push(Group {
            dir,
            rows,
            config,
            tenants,
            ca_init: None,
        });
    }
    let tunnel_rows: Vec<&'static str> = [
        TUNNEL_KEEP_ALIVE,
        NEW_TUNNEL_CACHED,
        NEW_TUNNEL_RESUMED,
        NEW_TUNNEL_NEW_UPSTREAM,
        NEW_TUNNEL_FRESH,
    ]
    .into_iter()
    .filter(|r| wanted(r))
    .collect();
    let tunnels = if tunnel_rows.is_empty() {
        None
    } else {
        let (setup, group) =
            prepare_tunnels(&dir.path().join("tunnel"), mock_port, &tunnel_rows, &args)
                .await
                .context("preparing the HTTPS rows")?;
        groups.push(group);
        Some(setup)
    };
    // Every group has the noisy neighbour's tiny ceilings (only the noisy rows send its traffic).
    for g in &mut groups {
        if g.rows == [REFUSED_BUDGET_ROW] {
            spent_budget_limits(&mut g.tenants);
        } else {
            neighbour_limits(&mut g.tenants);
        }
    }
    // Resolve the binary before measuring anything, so a missing build fails in a second.
    let bin = match (&args.proxy_bin, groups.is_empty()) {
        (_, true) => PathBuf::new(),
        (Some(b), false) if b.is_file() => b.clone(),
        (Some(b), false) => bail!("--proxy-bin {} is not a file", b.display()),
        (None, false) => default_proxy_bin()?,
    };
    let pinned_rows = !groups.is_empty()
        || wanted(BARE_PINGORA)
        || wanted(BARE_REFUSE)
        || peers::Peer::ALL.iter().any(|p| wanted(p.row()));
    let pin = pinned_rows && taskset_usable();
    if pinned_rows {
        pinning_hint(pin);
    }

    let sample = chat_request("/v1/chat/completions", &mock_host);
    let head_len = sample
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |i| i + 4);
    println!(
        "{} requests per row ({WARM_UP} warm-up), {} keep-alive connections, chat-completions POST ({}-byte JSON body)",
        args.requests,
        args.concurrency,
        sample.len() - head_len
    );
    if tunnel_rows.iter().any(|r| r.starts_with("new-tunnel")) {
        let cycle = if tunnel_rows.contains(&NEW_TUNNEL_NEW_UPSTREAM) {
            format!(
                "; {} for +new-upstream, one per name it cycles through",
                cycle_hosts(&args)
            )
        } else {
            String::new()
        };
        println!(
            "new-tunnel rows: {} operations ({NEW_TUNNEL_WARM_UP} warm-up{cycle}), {} at a time, each a new connection + CONNECT + TLS handshake + one request",
            args.new_tunnel_ops(),
            args.concurrency
        );
    }
    println!();
    println!("| path | requests | errors | req/s | p50 ms | p99 ms | proxy CPU µs/req | req/s ÷ bare | CPU ÷ bare |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut failures = Vec::new();
    let mut start_failed = false;
    // Direct first: it needs no proxy, so it is reported even when the proxy is broken.
    if wanted("direct") {
        let raw = chat_request("/v1/chat/completions", &mock_host);
        let load = Load::plain(mock_addr, raw, &args);
        if let Err(e) = measure("direct", &load, &args, None, None).await {
            failures.push(e);
        }
    }
    // The baseline next, so every proxy row can print its ratio to it; then its refusing twin.
    for (row, refuse) in [(BARE_PINGORA, false), (BARE_REFUSE, true)] {
        if !wanted(row) {
            continue;
        }
        let measured = match start_bare_server(mock_addr, pin, dir.path(), refuse).await {
            Ok(mut bare) => {
                let addr = SocketAddr::from(([127, 0, 0, 1], bare.port));
                let raw = chat_request("/v1/chat/completions", &mock_host);
                let load = if refuse {
                    Load::refused(addr, raw, &args)
                } else {
                    Load::plain(addr, raw, &args)
                };
                measure(row, &load, &args, Some(&mut bare), None)
                    .await
                    .map(|_| ())
            }
            Err(e) => {
                println!("| {row} (failed to start) | 0 | - | - | - | - | - | - | - |");
                Err(format!("{row}: {e:#}"))
            }
        };
        if let Err(e) = measured {
            failures.push(e);
        }
    }
    // The other proxies, each on its own, after the baseline (their ratios print beside them).
    for peer in peers::Peer::ALL {
        let row = peer.row();
        if !wanted(row) {
            continue;
        }
        let Some(peer_bin) = peer.find() else {
            println!("| {row} (skipped: not installed) | 0 | - | - | - | - | - | - | - |");
            eprintln!("note: skipping row `{row}`: `{row}` is not on PATH (loadtest/install-peers.sh installs it)");
            continue;
        };
        let measured =
            match start_peer(peer, &peer_bin, mock_port, pin, &dir.path().join(row)).await {
                Ok((mut server, _held)) => {
                    let addr = SocketAddr::from(([127, 0, 0, 1], server.port));
                    let raw = if peer.forward() {
                        chat_request(
                            &format!("http://{mock_host}/v1/chat/completions"),
                            &mock_host,
                        )
                    } else {
                        chat_request("/v1/chat/completions", &mock_host)
                    };
                    let load = Load::plain(addr, raw, &args);
                    measure(row, &load, &args, Some(&mut server), None)
                        .await
                        .map(|_| ())
                }
                Err(e) => {
                    println!("| {row} (failed to start) | 0 | - | - | - | - | - | - | - |");
                    Err(format!("{row}: {e:#}"))
                }
            };
        if let Err(e) = measured {
            failures.push(e);
        }
    }
    for g in &groups {
        if start_failed {
            // The same binary failed a moment ago; another start would most likely fail the
            // same way, possibly only after the 20 s readiness timeout.
            for row in &g.rows {
                println!("| {row} (skipped) | 0 | - | - | - | - | - | - | - |");
            }
            continue;
        }
        let started = async {
            if let Some(ca_dir) = &g.ca_init {
                ca_init(&bin, ca_dir)?;
            }
            start_proxy(&bin, &dir.path().join(g.dir), pin, g).await
        }
        .await;
        let mut proxy = match started {
            Ok(p) => p,
            Err(e) => {
                for row in &g.rows {
                    println!("| {row} (proxy failed to start) | 0 | - | - | - | - | - | - | - |");
                }
                failures.push(format!("{}: {e:#}", g.rows.join(", ")));
                start_failed = true;
                continue;
            }
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], proxy.port));
        let proxy_host = format!("127.0.0.1:{}", proxy.port);
        for row in &g.rows {
            // The group with an interception CA is the HTTPS rows'.
            let https = tunnels.as_ref().filter(|_| g.ca_init.is_some());
            let measured = if let Some(setup) = https {
                match std::fs::read_to_string(setup.ca_dir.join("ca.pem")) {
                    Ok(ca_pem) => measure_tunnel_row(row, setup, &ca_pem, &args, &mut proxy).await,
                    Err(e) => Err(format!("row `{row}`: reading the interception CA: {e}")),
                }
            } else {
                let raw = if *row == "forward" {
                    // Absolute-form target: the proxy forwards to the host in the URL.
                    chat_request(
                        &format!("http://{mock_host}/v1/chat/completions"),
                        &mock_host,
                    )
                } else {
                    chat_request("/openai/v1/chat/completions", &proxy_host)
                };
                let load = if refused_row_code(row).is_some() {
                    let neighbour = SocketAddr::from(([127, 0, 0, 1], proxy.neighbour_port));
                    let raw = chat_request(
                        "/openai/v1/chat/completions",
                        &format!("127.0.0.1:{}", proxy.neighbour_port),
                    );
                    Load::refused(neighbour, raw, &args)
                } else {
                    Load::plain(addr, raw, &args)
                };
                // The noisy neighbour: globex hammers its own tiny ceilings for the whole row.
                let noise = row.ends_with("+noisy-neighbour").then(|| {
                    let neighbour = SocketAddr::from(([127, 0, 0, 1], proxy.neighbour_port));
                    let raw = Arc::new(chat_request(
                        "/openai/v1/chat/completions",
                        &format!("127.0.0.1:{}", proxy.neighbour_port),
                    ));
                    let limit = args.limit;
                    tokio::spawn(async move {
                        // Until aborted when acme's row ends (or the row's time limit).
                        client::run_paced(
                            neighbour,
                            raw,
                            usize::MAX,
                            NEIGHBOUR_CONCURRENCY,
                            limit,
                            NEIGHBOUR_INTERVAL,
                        )
                        .await
                    })
                });
                // Redis's own CPU, on the load generator's core: what the row's figures do not
                // show in the proxy's column (warm-up included, so per request of both).
                let redis_pid = redis
                    .as_ref()
                    .filter(|_| g.dir == "redis-proxy")
                    .map(|r| r.child.id());
                let redis_before = redis_pid.and_then(|pid| process_cpu(pid).ok());
                let measured = measure(row, &load, &args, Some(&mut proxy), None).await;
                if let (Some(pid), Some(before), Ok((r, _))) = (redis_pid, redis_before, &measured)
                {
                    if let Ok(after) = process_cpu(pid) {
                        let requests = (r.requests + load.warm_ops).max(1) as f64;
                        let us = after.saturating_sub(before).as_secs_f64() * 1e6 / requests;
                        eprintln!(
                            "note: row `{row}`: redis-server used {us:.1} µs of CPU a request"
                        );
                    }
                }
                if let Some(code) = refused_row_code(row) {
                    // The row measures one kind of refusal: check that it is what refused.
                    let globex = ["decision=\"deny\"", "tenant=\"globex\""];
                    let label = format!("code=\"{code}\"");
                    let metric = "tenant_proxy_requests_total";
                    let all = metric_sum(&proxy, metric, &globex).await.unwrap_or(0);
                    let want = metric_sum(&proxy, metric, &[globex[0], globex[1], &label])
                        .await
                        .unwrap_or(0);
                    if all == 0 || want * 10 < all * 9 {
                        failures.push(format!(
                            "row `{row}`: {want} of globex's {all} refusals were `{code}`"
                        ));
                    }
                }
                if let Some(noise) = noise {
                    noise.abort();
                    // An aborted run reports nothing; the refusals are visible in the proxy's
                    // metrics, and the row's figures are acme's alone.
                    let _ = noise.await;
                    match refused_neighbour_requests(&proxy).await {
                        Some(n) if n > 0 => eprintln!(
                            "note: row `{row}`: globex was refused {n} times meanwhile ({NEIGHBOUR_CONCURRENCY} connections)"
                        ),
                        _ => failures.push(format!(
                            "row `{row}`: the neighbour was never refused, so the row measured no noise"
                        )),
                    }
                }
                measured.map(|_| ())
            };
            if let Err(e) = measured {
                failures.push(e);
                if proxy.exited().is_some() {
                    break;
                }
            }
        }
    }
    drop(redis);
    if failures.is_empty() {
        return Ok(true);
    }
    eprintln!();
    for f in &failures {
        eprintln!("FAILED {f}");
    }
    if !groups.is_empty() {
        // Keep the generated configs and proxy logs for a post-mortem.
        eprintln!("configs and proxy logs kept in {}", dir.keep().display());
    }
    Ok(false)
}

/// The `tenant-proxy` executable for this crate's tests, built once from the current sources.
#[cfg(test)]
fn test_proxy_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        tenant_proxy_loadtest::build::proxy_for_tests().unwrap_or_else(|e| panic!("{e}"))
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proxy runs at its default level unless told otherwise; `route(log=warn)` is a row.
    #[test]
    fn log_level_is_the_proxy_default_unless_given() {
        let (config, _) = base_config(18000, PathBuf::from("policies"), None);
        let written: toml::Table = config.to_toml().unwrap().parse().unwrap();
        assert!(written.get("log").and_then(|l| l.get("level")).is_none());
        let (config, _) = base_config(18000, PathBuf::from("policies"), Some("debug"));
        let written: toml::Table = config.to_toml().unwrap().parse().unwrap();
        assert_eq!(written["log"]["level"].as_str(), Some("debug"));
        assert!(parse_row(ROUTE_AT_WARN).is_ok());
    }

    /// `mock --tls`: the certificate comes from the CA on disk, covers the given name, and a
    /// client trusting only that CA gets a chat completion; another name fails the handshake.
    #[tokio::test]
    async fn tls_mock_serves_a_certificate_from_the_given_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = tls::TestCa::new("origin CA").unwrap();
        // The CA key as `tenant-proxy ca init` writes it: PKCS#8 PEM.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("ca-key.pem"), key.serialize_pem()).unwrap();
        let config = tls::server_config_from_ca_files(
            &dir.path().join("ca.pem"),
            &dir.path().join("ca-key.pem"),
            &["llm.quickstart.test".to_string()],
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(tls::serve_mock_tls(listener, config));

        let request = |name: &'static str, ca_pem: String| async move {
            let connector = tokio_rustls::TlsConnector::from(tls::client_config(&ca_pem)?);
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let server =
                rustls::pki_types::ServerName::try_from(name).map_err(std::io::Error::other)?;
            let mut stream = connector.connect(server, tcp).await?;
            let body = r#"{"model":"gpt-4o-mini","messages":[]}"#;
            let head = format!("POST /v1/chat/completions HTTP/1.1\r\nHost: {name}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes()).await?;
            // The mock closes without close_notify after `Connection: close`: read what came.
            let mut answer = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                match tokio::io::AsyncReadExt::read(&mut stream, &mut chunk).await {
                    Ok(0) => break,
                    Ok(n) => answer.extend_from_slice(&chunk[..n]),
                    Err(_) if !answer.is_empty() => break,
                    Err(e) => return Err(e),
                }
            }
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
        };
        let answer = request("llm.quickstart.test", cert.pem()).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("\"prompt_tokens\""), "{answer}");
        // Not a certificate for another name, and not trusted through another CA.
        assert!(request("other.quickstart.test", cert.pem()).await.is_err());
        assert!(request("llm.quickstart.test", ca.cert_pem.clone())
            .await
            .is_err());
        // A missing CA key is an error before any port is bound.
        assert!(tls::server_config_from_ca_files(
            &dir.path().join("ca.pem"),
            &dir.path().join("missing.pem"),
            &["llm.quickstart.test".to_string()],
        )
        .is_err());
    }

    #[test]
    fn durations_and_rows_parse() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_row("direct").is_ok());
        assert!(parse_row("route+limits(redis)").is_ok());
        assert!(parse_row("drect").is_err());
        for row in [
            TUNNEL_KEEP_ALIVE,
            NEW_TUNNEL_CACHED,
            NEW_TUNNEL_RESUMED,
            NEW_TUNNEL_NEW_UPSTREAM,
            NEW_TUNNEL_FRESH,
        ] {
            assert!(parse_row(row).is_ok(), "{row}");
            // `--only` splits on commas.
            assert!(!row.contains(','), "{row}");
        }
    }

    #[tokio::test]
    async fn https_rows_config_lists_every_host_they_use() {
        let dir = tempfile::tempdir().unwrap();
        let args = RunArgs {
            proxy_bin: None,
            requests: 40,
            concurrency: 4,
            limit: Duration::from_secs(1),
            new_tunnels: 30,
            only: Vec::new(),
            log_level: None,
            baseline: std::sync::OnceLock::new(),
            round: 1,
            figures: Arc::default(),
        };
        let rows = [
            TUNNEL_KEEP_ALIVE,
            NEW_TUNNEL_CACHED,
            NEW_TUNNEL_RESUMED,
            NEW_TUNNEL_NEW_UPSTREAM,
            NEW_TUNNEL_FRESH,
        ];
        let (setup, group) = prepare_tunnels(dir.path(), 18000, &rows, &args)
            .await
            .unwrap();
        // What the proxy reads: the static file as written.
        let written: toml::Table = group.config.to_toml().unwrap().parse().unwrap();
        let egress = &written["egress"];
        let listed = |host: &str| egress["hosts"][host][0].as_str() == Some("127.0.0.1");
        for row in rows {
            let (warm, measured) = new_tunnel_hosts(row, &args);
            let (warm_ops, ops) = if row == TUNNEL_KEEP_ALIVE {
                (WARM_UP, args.requests)
            } else {
                (new_tunnel_warm_up(row, &args), args.new_tunnel_ops())
            };
            for op in 0..warm_ops {
                assert!(listed(&warm.host(op)), "{row}: warm-up op {op}");
            }
            for op in 0..ops {
                assert!(listed(&measured.host(op)), "{row}: op {op}");
            }
        }
        // Fresh names really are fresh: none is used twice, in warm-up or measured.
        let (warm, measured) = new_tunnel_hosts(NEW_TUNNEL_FRESH, &args);
        let mut fresh = warm.distinct(NEW_TUNNEL_WARM_UP);
        fresh.extend(measured.distinct(args.new_tunnel_ops()));
        let n = fresh.len();
        fresh.sort();
        fresh.dedup();
        assert_eq!(fresh.len(), n);
        assert_eq!(n, NEW_TUNNEL_WARM_UP + 30);
        // The loopback exception of the base configuration stays beside the tunnels' settings.
        assert_eq!(egress["allow"][0].as_str(), Some("127.0.0.1/32"));
        let ports: Vec<i64> = egress["connect_ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(toml::Value::as_integer)
            .collect();
        assert_eq!(ports, [443, i64::from(setup.mock_port)]);
        assert_eq!(
            written["intercept"]["ca_cert"].as_str(),
            setup.ca_dir.join("ca.pem").to_str()
        );
        assert_eq!(group.ca_init.as_deref(), Some(setup.ca_dir.as_path()));
        // Everything but the tunnels goes to the plain mock.
        assert_eq!(group.tenants.routes[0].upstream, "http://127.0.0.1:18000/");
        let policy_dir = &group.tenants.policy_dir;
        let policy =
            std::fs::read_to_string(policy_dir.join("tenants/acme/loadtest.cedar")).unwrap();
        assert!(policy.contains("\"connect\"") && policy.contains("\"http\""));
        assert!(policy_dir.join("schema.cedarschema").is_file());
        assert!(policy_dir.join("global/base.cedar").is_file());
    }

    #[test]
    fn load_request_is_about_300_bytes_of_json() {
        let raw = chat_request("/v1/chat/completions", "h");
        let text = String::from_utf8_lossy(&raw);
        let (_, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        assert_eq!(v["model"], "gpt-4o-mini");
        assert_eq!(v["max_tokens"], 16);
        assert!((250..350).contains(&body.len()), "{}", body.len());
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
    }
}
