//! `tenant-proxy-loadtest`: the mock upstream, and a bounded load comparison of direct calls
//! against calls through tenant-proxy, printed as one Markdown table.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use tenant_proxy_loadtest::{client, mock};

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
    Run {
        /// The tenant-proxy binary (default: the release build in the target directory).
        #[arg(long)]
        proxy_bin: Option<PathBuf>,
        /// Measured requests per row.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Longest time per row; the row stops early when it is reached.
        #[arg(long, default_value = "60s")]
        duration_limit: String,
        /// Run only these rows (comma-separated: direct, forward, route, route+limits(memory),
        /// route+limits(redis); the redis row needs `redis-server` on PATH).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One thread: the load generator and the mock share one core, pinned away from the proxy.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::Mock { listen } => rt.block_on(async {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            println!("mock upstream listening on {}", listener.local_addr()?);
            mock::serve_mock(listener).await?;
            Ok(())
        }),
        Cmd::Run {
            proxy_bin,
            requests,
            concurrency,
            duration_limit,
            only,
        } => {
            let limit = parse_duration(&duration_limit)?;
            rt.block_on(run(proxy_bin, requests, concurrency, limit, only))
        }
    }
}

fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("`{s}` is not a duration like 60s"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => bail!("`{s}` is not a duration like 60s"),
    })
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

fn default_proxy_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("release/tenant-proxy")
}

/// The proxy child process; killed on drop.
struct ProxyProcess {
    child: Child,
    log: PathBuf,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
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
    /// CPU time (user + system) the proxy has used so far.
    fn cpu(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the `(comm)`; utime and stime are fields 14 and 15 (1-based).
        let rest = stat
            .rsplit_once(") ")
            .map(|(_, r)| r)
            .context("unexpected /proc stat format")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
            + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
        // CLK_TCK is 100 on Linux x86_64 and aarch64.
        Ok(Duration::from_millis(ticks * 10))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

async fn start_proxy(
    bin: &Path,
    dir: &Path,
    mock_port: u16,
    static_extra: &str,
    tenants_extra: &str,
) -> anyhow::Result<(ProxyProcess, u16, u16)> {
    std::fs::create_dir_all(dir)?;
    if !bin.exists() {
        bail!("{} not found: build it with `cargo build --release -p tenant-proxy` or pass --proxy-bin", bin.display());
    }
    let (proxy_port, admin_port) = (free_port()?, free_port()?);
    let policies = workspace_root().join("policies");
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
[[route]]
name = "openai"
prefix = "/openai/"
upstream = "http://127.0.0.1:{mock_port}/"
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
    let mut cmd = if which("taskset") {
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
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting tenant-proxy")?;
    let proc = ProxyProcess { child, log };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = client::run(
            SocketAddr::from(([127, 0, 0, 1], admin_port)),
            Arc::new(b"GET /readyz HTTP/1.1\r\nHost: admin\r\n\r\n".to_vec()),
            1,
            1,
            Duration::from_secs(1),
        )
        .await;
        if ready.errors == 0 && ready.requests == 1 {
            return Ok((proc, proxy_port, admin_port));
        }
        if Instant::now() > deadline {
            bail!(
                "tenant-proxy did not become ready; last log lines:\n{}",
                proc.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn which(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn chat_request(target: &str, host: &str) -> Vec<u8> {
    let body = r#"{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"system","content":"You are a helpful assistant for a load test."},{"role":"user","content":"Summarise the benefits of per-tenant egress policy for AI agents in one short sentence, please."}]}"#;
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
    std::thread::sleep(Duration::from_millis(300));
    Ok(RedisProcess { child, port })
}

/// Ceilings high enough never to refuse: the rows measure the cost of checking them.
const LIMITS: &str =
    "[tenants.acme.limits]\nrequests_per_second = 1000000\nburst = 1000000\nconcurrency = 100000\n";

async fn run(
    proxy_bin: Option<PathBuf>,
    requests: usize,
    concurrency: usize,
    limit: Duration,
    only: Vec<String>,
) -> anyhow::Result<()> {
    let wanted = |row: &str| only.is_empty() || only.iter().any(|o| o == row);
    let mock_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mock_port = mock_listener.local_addr()?.port();
    tokio::spawn(mock::serve_mock(mock_listener));
    let mock_addr = SocketAddr::from(([127, 0, 0, 1], mock_port));
    let mock_host = format!("127.0.0.1:{mock_port}");

    let dir = tempfile::tempdir()?;
    let bin = proxy_bin.unwrap_or_else(default_proxy_bin);
    let mut proxies: Vec<ProxyProcess> = Vec::new();
    let mut rows: Vec<(&str, SocketAddr, Vec<u8>, Option<usize>)> = Vec::new();
    if wanted("direct") {
        rows.push((
            "direct",
            mock_addr,
            chat_request("/v1/chat/completions", &mock_host),
            None,
        ));
    }
    if wanted("forward") || wanted("route") {
        let (p, port, _) = start_proxy(&bin, &dir.path().join("plain"), mock_port, "", "").await?;
        proxies.push(p);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if wanted("forward") {
            let target = format!("http://{mock_host}/v1/chat/completions");
            rows.push(("forward", addr, chat_request(&target, &mock_host), Some(0)));
        }
        if wanted("route") {
            rows.push((
                "route",
                addr,
                chat_request("/openai/v1/chat/completions", &format!("127.0.0.1:{port}")),
                Some(0),
            ));
        }
    }
    if wanted("route+limits(memory)") {
        let (p, port, _) =
            start_proxy(&bin, &dir.path().join("mem"), mock_port, "", LIMITS).await?;
        proxies.push(p);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let raw = chat_request("/openai/v1/chat/completions", &format!("127.0.0.1:{port}"));
        rows.push(("route+limits(memory)", addr, raw, Some(proxies.len() - 1)));
    }
    let redis = if wanted("route+limits(redis)") && which("redis-server") {
        Some(start_redis(&dir.path().join("redis"))?)
    } else {
        None
    };
    if let Some(r) = &redis {
        let static_extra = format!(
            "[limiter]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{}\"\n",
            r.port
        );
        let (p, port, _) = start_proxy(
            &bin,
            &dir.path().join("redis-proxy"),
            mock_port,
            &static_extra,
            LIMITS,
        )
        .await?;
        proxies.push(p);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let raw = chat_request("/openai/v1/chat/completions", &format!("127.0.0.1:{port}"));
        rows.push(("route+limits(redis)", addr, raw, Some(proxies.len() - 1)));
    }

    println!("{requests} requests per row, {concurrency} keep-alive connections, chat-completions POST ({} bytes)\n", rows.first().map_or(0, |r| r.2.len()));
    println!("| path | requests | errors | req/s | p50 ms | p99 ms | proxy CPU µs/req |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, addr, raw, proxy_index) in rows {
        let proxy = proxy_index.and_then(|i| proxies.get(i));
        let raw = Arc::new(raw);
        let warm = client::run(addr, raw.clone(), 500, concurrency, limit).await;
        if warm.errors > 0 {
            let tail = proxy.map(ProxyProcess::log_tail).unwrap_or_default();
            bail!(
                "row `{name}`: {} of {} warm-up requests failed\n{tail}",
                warm.errors,
                warm.requests
            );
        }
        let cpu_before = proxy.map(ProxyProcess::cpu).transpose()?;
        let r = client::run(addr, raw, requests, concurrency, limit).await;
        let cpu = match (proxy, cpu_before) {
            (Some(p), Some(before)) => {
                let used = p.cpu()?.saturating_sub(before);
                format!("{:.1}", used.as_secs_f64() * 1e6 / r.requests.max(1) as f64)
            }
            _ => "-".into(),
        };
        println!(
            "| {name} | {} | {} | {:.0} | {:.3} | {:.3} | {cpu} |",
            r.requests,
            r.errors,
            r.rps(),
            r.quantile_ms(0.5),
            r.quantile_ms(0.99)
        );
    }
    drop(proxies);
    drop(redis);
    Ok(())
}
