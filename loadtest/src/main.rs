//! `tenant-proxy-loadtest`: the mock upstream, and a bounded load comparison of direct calls
//! against calls through tenant-proxy, printed as one Markdown table.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use tenant_proxy_loadtest::{client, mock};

/// Every row `run` knows, in the order they are measured.
const ROWS: [&str; 6] = [
    "direct",
    "forward",
    "route",
    "route+limits(memory)",
    "route+limits(memory)+noisy-neighbour",
    "route+limits(redis)",
];

/// Requests per row sent before measuring, so connection setup, allocator growth and lazy
/// initialisation in the proxy do not land in the measured numbers.
const WARM_UP: usize = 500;

/// Mock upstream and load comparison for tenant-proxy.
#[derive(Debug, Parser)]
#[command(name = "tenant-proxy-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve the mock OpenAI/Anthropic-compatible upstream.
    Mock {
        /// Address to listen on (keep it on loopback).
        #[arg(long, default_value = "127.0.0.1:18000")]
        listen: SocketAddr,
    },
    /// Compare direct calls with calls through tenant-proxy (forward and route mode).
    ///
    /// Run it pinned away from the proxy: `taskset -c 1 tenant-proxy-loadtest run`
    /// (the proxy is started under `taskset -c 0`).
    Run {
        /// The tenant-proxy binary [default: tenant-proxy in $CARGO_TARGET_DIR/release, next to
        /// this binary, or in <workspace>/target/release, first found].
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
        /// Run only these rows (comma-separated: direct, forward, route, route+limits(memory),
        /// route+limits(memory)+noisy-neighbour, route+limits(redis); the redis row needs
        /// `redis-server` on PATH). Default: all.
        #[arg(long, value_delimiter = ',', value_parser = parse_row)]
        only: Vec<String>,
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

/// Runs the chosen subcommand; `Ok(false)` means a row failed (already reported on stderr).
fn real_main(cli: Cli) -> anyhow::Result<bool> {
    // One thread: the load generator and the in-process mock share one core, pinned away from
    // the proxy, so the proxy's CPU figure is not disturbed by the client.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::Mock { listen } => rt.block_on(async {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            println!("mock upstream listening on {}", listener.local_addr()?);
            mock::serve_mock(listener).await?;
            Ok(true)
        }),
        Cmd::Run {
            proxy_bin,
            requests,
            concurrency,
            duration_limit,
            only,
        } => rt.block_on(run(RunArgs {
            proxy_bin,
            requests,
            concurrency,
            limit: duration_limit,
            only,
        })),
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

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Finds the proxy binary: the target dir cargo was told to use, then the directory this binary
/// was built into (both binaries land in the same `release/`), then the workspace default.
fn default_proxy_bin() -> anyhow::Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(dir).join("release/tenant-proxy"));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join("tenant-proxy"));
    }
    candidates.push(workspace_root().join("target/release/tenant-proxy"));
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "tenant-proxy binary not found (tried {}): build it with `cargo build --release -p tenant-proxy` or pass --proxy-bin",
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

impl ProxyProcess {
    /// CPU time (user + system, all threads) the proxy has used so far.
    fn cpu(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
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

/// Writes the two config files into `dir`, starts the proxy and waits for `/readyz`.
async fn start_proxy(
    bin: &Path,
    dir: &Path,
    mock_port: u16,
    pin: bool,
    static_extra: &str,
    tenants_extra: &str,
) -> anyhow::Result<ProxyProcess> {
    std::fs::create_dir_all(dir)?;
    let (proxy_port, admin_port, neighbour_port) = (free_port()?, free_port()?, free_port()?);
    std::fs::write(dir.join("prices.toml"), PRICES)?;
    let policies = workspace_root().join("policies");
    // grace_period 0s: nothing needs draining at the end of a benchmark, so SIGTERM should end
    // the proxy at once. Log level warn: per-request info lines would be measured as proxy CPU.
    std::fs::write(
        dir.join("tenant-proxy.toml"),
        format!(
            r#"tenants_file = "tenants.toml"
[admin]
listen = "127.0.0.1:{admin_port}"
[[listener]]
name = "loadtest"
listen = "127.0.0.1:{proxy_port}"
identity = ["binding"]
binding = {{ tenant = "acme", workload = "support-bot" }}
[[listener]]
name = "neighbour"
listen = "127.0.0.1:{neighbour_port}"
identity = ["binding"]
binding = {{ tenant = "globex", workload = "agent" }}
[audit]
dir = "{audit}"
[server]
threads = 1
grace_period = "0s"
graceful_shutdown_timeout = "1s"
[log]
level = "warn"
{static_extra}
"#,
            audit = dir.join("audit").display()
        ),
    )?;
    std::fs::write(
        dir.join("tenants.toml"),
        format!(
            r#"policy_dir = "{policies}"
prices_file = "prices.toml"
[[route]]
name = "openai"
prefix = "/openai/"
upstream = "http://127.0.0.1:{mock_port}/"
provider = "openai"
[tenants.acme]
plan = "pro"
region = "eu"
workloads = ["support-bot", "researcher"]
[tenants.globex]
plan = "free"
region = "us"
workloads = ["agent"]
{tenants_extra}
"#,
            policies = policies.display()
        ),
    )?;
    let log = dir.join("proxy.log");
    let log_file = std::fs::File::create(&log)?;
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
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut proc = ProxyProcess {
        child,
        log,
        port: proxy_port,
        neighbour_port,
        admin_port,
    };
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let readyz = Arc::new(b"GET /readyz HTTP/1.1\r\nHost: admin\r\n\r\n".to_vec());
    let deadline = Instant::now() + Duration::from_secs(20);
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
                "tenant-proxy did not become ready within 20 s (GET http://{admin}/readyz: {}){}",
                ready.first_error.unwrap_or_else(|| "no answer".into()),
                proc.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
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

/// A `redis-server` child on a free loopback port, killed on drop.
struct RedisProcess {
    child: Child,
    port: u16,
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_redis(dir: &Path) -> anyhow::Result<RedisProcess> {
    let port = free_port()?;
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
    let redis = RedisProcess { child, port };
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
const LIMITS: &str = "[tenants.acme.limits]
requests_per_second = 1000000
burst = 1000000
concurrency = 100000
tokens_per_minute = 1000000000000
cost_per_day_micros = 1000000000000
cost_per_month_micros = 1000000000000
";

/// The noisy neighbour's ceilings: so small that nearly every one of its requests is refused.
const NEIGHBOUR_LIMITS: &str = "[tenants.globex.limits]
requests_per_second = 10
concurrency = 2
cost_per_day_micros = 1000
";

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
    only: Vec<String>,
}

/// One proxy instance and the rows measured through it.
struct Group {
    dir: &'static str,
    rows: Vec<&'static str>,
    static_extra: String,
    tenants_extra: &'static str,
}

/// Measures one row and prints it; `Err` describes why the row failed.
async fn measure(
    name: &str,
    addr: SocketAddr,
    raw: Vec<u8>,
    args: &RunArgs,
    mut proxy: Option<&mut ProxyProcess>,
) -> Result<(), String> {
    let raw = Arc::new(raw);
    let log_tail =
        |p: &Option<&mut ProxyProcess>| p.as_ref().map(|p| p.log_tail()).unwrap_or_default();
    let warm = client::run(addr, raw.clone(), WARM_UP, args.concurrency, args.limit).await;
    if warm.errors > 0 {
        println!(
            "| {name} (warm-up failed) | {} | {} | - | - | - | - |",
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
    let cpu_before = proxy.as_ref().and_then(|p| p.cpu().ok());
    let r = client::run(addr, raw, args.requests, args.concurrency, args.limit).await;
    let cpu_after = proxy.as_ref().and_then(|p| p.cpu().ok());
    let cpu = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) if r.requests > 0 => format!(
            "{:.1}",
            after.saturating_sub(before).as_secs_f64() * 1e6 / r.requests as f64
        ),
        _ => "-".into(),
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
        "| {name} | {} | {} | {:.0} | {} | {} | {cpu} |",
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
    if r.requests < args.requests {
        eprintln!(
            "note: row `{name}` hit --duration-limit after {} of {} requests",
            r.requests, args.requests
        );
    }
    Ok(())
}

/// How many of globex's requests the proxy refused, from its metrics.
async fn refused_neighbour_requests(proxy: &ProxyProcess) -> Option<u64> {
    let admin = SocketAddr::from(([127, 0, 0, 1], proxy.admin_port));
    let metrics = client::get(admin, "/metrics").await.ok()?;
    Some(
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("tenant_proxy_requests_total{")
                    && l.contains("decision=\"deny\"")
                    && l.contains("tenant=\"globex\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum(),
    )
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

async fn run(args: RunArgs) -> anyhow::Result<bool> {
    let wanted = |row: &str| args.only.is_empty() || args.only.iter().any(|o| o == row);
    let mock_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mock_port = mock_listener.local_addr()?.port();
    tokio::spawn(mock::serve_mock(mock_listener));
    let mock_addr = SocketAddr::from(([127, 0, 0, 1], mock_port));
    let mock_host = format!("127.0.0.1:{mock_port}");

    let mut groups = Vec::new();
    let plain: Vec<&str> = ["forward", "route"]
        .into_iter()
        .filter(|r| wanted(r))
        .collect();
    if !plain.is_empty() {
        groups.push(Group {
            dir: "plain",
            rows: plain,
            static_extra: String::new(),
            tenants_extra: "",
        });
    }
    let memory: Vec<&str> = [
        "route+limits(memory)",
        "route+limits(memory)+noisy-neighbour",
    ]
    .into_iter()
    .filter(|r| wanted(r))
    .collect();
    if !memory.is_empty() {
        groups.push(Group {
            dir: "memory",
            rows: memory,
            static_extra: String::new(),
            tenants_extra: LIMITS,
        });
    }
    let dir = tempfile::tempdir()?;
    let redis = if wanted("route+limits(redis)") {
        if which("redis-server") {
            Some(start_redis(&dir.path().join("redis"))?)
        } else {
            eprintln!("note: skipping row `route+limits(redis)`: redis-server is not on PATH");
            None
        }
    } else {
        None
    };
    if let Some(r) = &redis {
        groups.push(Group {
            dir: "redis-proxy",
            rows: vec!["route+limits(redis)"],
            static_extra: format!(
                "[limiter]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{}\"\n",
                r.port
            ),
            tenants_extra: LIMITS,
        });
    }
    // Resolve the binary before measuring anything, so a missing build fails in a second.
    let bin = match (&args.proxy_bin, groups.is_empty()) {
        (_, true) => PathBuf::new(),
        (Some(b), false) if b.is_file() => b.clone(),
        (Some(b), false) => bail!("--proxy-bin {} is not a file", b.display()),
        (None, false) => default_proxy_bin()?,
    };
    let pin = !groups.is_empty() && taskset_usable();
    if !groups.is_empty() {
        pinning_hint(pin);
    }

    let sample = chat_request("/v1/chat/completions", &mock_host);
    let head_len = sample
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |i| i + 4);
    println!(
        "{} requests per row ({WARM_UP} warm-up), {} keep-alive connections, chat-completions POST ({}-byte JSON body)\n",
        args.requests,
        args.concurrency,
        sample.len() - head_len
    );
    println!("| path | requests | errors | req/s | p50 ms | p99 ms | proxy CPU µs/req |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut failures = Vec::new();
    let mut start_failed = false;
    // Direct first: it needs no proxy, so it is reported even when the proxy is broken.
    if wanted("direct") {
        let raw = chat_request("/v1/chat/completions", &mock_host);
        if let Err(e) = measure("direct", mock_addr, raw, &args, None).await {
            failures.push(e);
        }
    }
    for g in &groups {
        if start_failed {
            // The same binary failed a moment ago; another start would most likely fail the
            // same way, possibly only after the 20 s readiness timeout.
            for row in &g.rows {
                println!("| {row} (skipped) | 0 | - | - | - | - | - |");
            }
            continue;
        }
        let started = start_proxy(
            &bin,
            &dir.path().join(g.dir),
            mock_port,
            pin,
            &g.static_extra,
            &format!("{}{NEIGHBOUR_LIMITS}", g.tenants_extra),
        )
        .await;
        let mut proxy = match started {
            Ok(p) => p,
            Err(e) => {
                for row in &g.rows {
                    println!("| {row} (proxy failed to start) | 0 | - | - | - | - | - |");
                }
                failures.push(format!("{}: {e:#}", g.rows.join(", ")));
                start_failed = true;
                continue;
            }
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], proxy.port));
        let proxy_host = format!("127.0.0.1:{}", proxy.port);
        for row in &g.rows {
            let raw = if *row == "forward" {
                // Absolute-form target: the proxy forwards to the host in the URL.
                chat_request(
                    &format!("http://{mock_host}/v1/chat/completions"),
                    &mock_host,
                )
            } else {
                chat_request("/openai/v1/chat/completions", &proxy_host)
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
            let measured = measure(row, addr, raw, &args, Some(&mut proxy)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

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
