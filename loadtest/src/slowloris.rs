//! `slowloris`: slow clients against the proxy's deadlines, with normal traffic measured beside
//! them.
//!
//! Keeps `--connections` slow heads (a header line every `--trickle`, reopened as soon as the
//! proxy closes one) and `--slow-bodies` slow uploads (a body byte every `--trickle`) open for
//! `--duration`, while keep-alive chat requests run on `--concurrency` other connections. Reports
//! how long after their first byte the proxy closed the slow clients (the header and body
//! deadlines), the normal requests' latency and errors, and the proxy's resident memory
//! before, at its peak and at the end. Bounded: it stops by itself after `--duration`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tenant_proxy_loadtest::client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{
    base_config, chat_request, default_proxy_bin, start_proxy, taskset_usable, workspace_root,
    Group,
};

/// Options of the `slowloris` subcommand.
#[derive(Debug)]
pub struct Args {
    pub log_level: Option<String>,
    pub proxy_bin: Option<PathBuf>,
    pub connections: usize,
    pub slow_bodies: usize,
    pub duration: Duration,
    pub trickle: Duration,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub concurrency: usize,
}

/// How long after their first byte the proxy closed slow clients, and how they ended.
#[derive(Default)]
struct Closures {
    /// Seconds from the first byte to the proxy closing the connection.
    after: Vec<f64>,
    /// Closed with the proxy's 408 (the rest: some other answer, or a reset).
    with_408: usize,
}

pub async fn run(args: Args) -> anyhow::Result<bool> {
    let bin = match &args.proxy_bin {
        Some(b) => b.clone(),
        None => default_proxy_bin()?,
    };
    let mock_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mock_port = mock_listener.local_addr()?.port();
    tokio::spawn(tenant_proxy_loadtest::mock::serve_mock(mock_listener));
    let dir = tempfile::tempdir()?;
    let (mut config, tenants) = base_config(
        mock_port,
        workspace_root().join("policies"),
        args.log_level.as_deref(),
    );
    let connections = u32::try_from(args.connections + args.slow_bodies + args.concurrency + 100)
        .unwrap_or(u32::MAX);
    config.limits.client_body_timeout = Some(args.body_timeout);
    config.limits.max_connections_per_listener = Some(connections);
    config.limits.max_connections_per_tenant = Some(connections);
    config.egress.client_header_timeout = Some(args.header_timeout);
    let group = Group {
        dir: "slowloris",
        rows: vec!["slowloris"],
        config,
        tenants,
        ca_init: None,
    };
    let pin = taskset_usable();
    let proxy = start_proxy(&bin, &dir.path().join("proxy"), pin, &group)
        .await
        .context("starting the proxy")?;
    let proxy_addr = SocketAddr::from(([127, 0, 0, 1], proxy.port));
    let pid = proxy.child.id();
    let rss_idle = rss_mib(pid).unwrap_or(f64::NAN);

    let stop = Arc::new(AtomicBool::new(false));
    let heads = Arc::new(Mutex::new(Closures::default()));
    let bodies = Arc::new(Mutex::new(Closures::default()));
    let mut tasks = Vec::new();
    let head_bytes: &'static [u8] = b"GET /openai/v1/models HTTP/1.1\r\nHost: proxy\r\n";
    let body_head: &'static [u8] = b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{";
    for (n, first, out) in [
        (args.connections, head_bytes, heads.clone()),
        (args.slow_bodies, body_head, bodies.clone()),
    ] {
        for i in 0..n {
            let (stop, out) = (stop.clone(), out.clone());
            let trickle = args.trickle;
            // Spread the starts over one trickle period so the load is steady.
            let delay = trickle.mul_f64(i as f64 / n.max(1) as f64);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                while !stop.load(Ordering::Relaxed) {
                    let Some((after, got_408)) =
                        slow_client(proxy_addr, first, trickle, &stop).await
                    else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let mut c = out.lock().unwrap_or_else(|p| p.into_inner());
                    c.after.push(after);
                    c.with_408 += usize::from(got_408);
                }
            }));
        }
    }
    // RSS sampled once a second while everything runs.
    let peak = Arc::new(Mutex::new(rss_idle));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(now) = rss_mib(pid) {
                    let mut p = peak.lock().unwrap_or_else(|e| e.into_inner());
                    *p = p.max(now);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    // Normal traffic beside the slow clients, for the whole duration.
    let raw = Arc::new(chat_request("/openai/v1/chat/completions", "proxy"));
    let normal = client::run(proxy_addr, raw, usize::MAX, args.concurrency, args.duration).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    sampler.abort();
    let rss_end = rss_mib(pid).unwrap_or(f64::NAN);
    let rss_peak = *peak.lock().unwrap_or_else(|e| e.into_inner());

    let heads = std::mem::take(&mut *heads.lock().unwrap_or_else(|e| e.into_inner()));
    let bodies = std::mem::take(&mut *bodies.lock().unwrap_or_else(|e| e.into_inner()));
    println!(
        "slowloris for {:?}: {} slow heads and {} slow bodies held open (a byte every {:?}), {} keep-alive clients beside them; proxy pinned: {pin}",
        args.duration, args.connections, args.slow_bodies, args.trickle, args.concurrency
    );
    println!();
    println!(
        "| what | count | closed with 408 | closed after first byte p50 / max (s) | deadline (s) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (what, c, deadline) in [
        ("slow heads", &heads, args.header_timeout),
        ("slow bodies", &bodies, args.body_timeout),
    ] {
        let (p50, max) = quantiles(&c.after);
        println!(
            "| {what} | {} | {} | {p50:.1} / {max:.1} | {:.1} |",
            c.after.len(),
            c.with_408,
            deadline.as_secs_f64()
        );
    }
    println!();
    println!(
        "normal requests: {} ({:.0} req/s), errors {}, p50 {:.2} ms, p99 {:.2} ms{}",
        normal.requests,
        normal.rps(),
        normal.errors,
        normal.quantile_ms(0.5),
        normal.quantile_ms(0.99),
        normal
            .first_error
            .as_deref()
            .map(|e| format!(" (first error: {e})"))
            .unwrap_or_default()
    );
    println!("proxy RSS: idle {rss_idle:.1} MiB, peak {rss_peak:.1} MiB, end {rss_end:.1} MiB");
    let deadlines_held = [(&heads, args.header_timeout), (&bodies, args.body_timeout)]
        .iter()
        .all(|(c, d)| c.after.iter().all(|a| *a < d.as_secs_f64() + 2.0));
    Ok(deadlines_held && normal.errors == 0)
}

/// One slow client: sends `first`, then a byte every `trickle` until the proxy closes the
/// connection. Returns the seconds from the first byte to the close and whether a 408 came.
async fn slow_client(
    addr: SocketAddr,
    first: &[u8],
    trickle: Duration,
    stop: &AtomicBool,
) -> Option<(f64, bool)> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let started = Instant::now();
    s.write_all(first).await.ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            read = s.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            },
            _ = tokio::time::sleep(trickle) => {
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                // A header line's next byte, or the next body byte: never enough to finish.
                if s.write_all(b"x").await.is_err() {
                    // The proxy closed its side; read what it said.
                    let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut got)).await;
                    break;
                }
            }
        }
    }
    Some((
        started.elapsed().as_secs_f64(),
        got.starts_with(b"HTTP/1.1 408"),
    ))
}

fn quantiles(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    (s[s.len() / 2], s[s.len() - 1])
}

/// The process's resident memory, from `/proc/<pid>/status`.
pub(crate) fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}
