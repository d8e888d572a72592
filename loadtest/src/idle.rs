//! `idle-connections`: the memory an idle keep-alive client connection costs the server.
//!
//! For each count K, on a fresh server: 500 warm-up requests (their connections closed), the
//! RSS; then K connections opened, each making one route request (so it is a real established
//! client connection with a served request behind it) and then left idle; a second later the
//! RSS again, and the proxy's own count of open connections
//! (`tenant_proxy_connections_open`); then all closed and the RSS once more. The same against
//! bare pingora, for comparison. The client's open-file limit is raised to its hard limit
//! first, as the proxy does for itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tenant_proxy_loadtest::client;
use tenant_proxy_loadtest::http1::{read_body, read_head};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::slowloris::rss_mib;
use super::{
    base_config, chat_request, default_proxy_bin, metric_sum, start_bare, start_proxy,
    taskset_usable, workspace_root, Group, ProxyProcess, MEASURED, WARM_UP,
};

/// Options of the `idle-connections` subcommand.
#[derive(Debug)]
pub struct Args {
    pub proxy_bin: Option<PathBuf>,
    pub connections: Vec<usize>,
    pub bare: bool,
    pub log_level: Option<String>,
}

/// What one server and count measured.
#[derive(Debug)]
pub struct Row {
    /// `tenant-proxy` or `bare-pingora`.
    pub server: &'static str,
    /// Connections opened (each with one request answered 200).
    pub opened: usize,
    /// The proxy's own count of open client connections meanwhile (`None` for bare pingora).
    pub server_count: Option<u64>,
    /// RSS (MiB) before, with the connections open, after closing them.
    pub rss_before: f64,
    pub rss_open: f64,
    pub rss_closed: f64,
}

impl Row {
    /// Bytes of RSS per open connection.
    pub fn bytes_per_connection(&self) -> f64 {
        (self.rss_open - self.rss_before) * 1024.0 * 1024.0 / self.opened.max(1) as f64
    }
}

/// Connections opened at a time.
const OPENING: usize = 100;

/// Measures every count, on the proxy and (with `bare`) bare pingora.
pub async fn measure(args: &Args) -> anyhow::Result<Vec<Row>> {
    raise_open_file_limit(args.connections.iter().copied().max().unwrap_or(0))?;
    let mock_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mock_port = mock_listener.local_addr()?.port();
    tokio::spawn(tenant_proxy_loadtest::mock::serve_mock(mock_listener));
    let mock_addr = SocketAddr::from(([127, 0, 0, 1], mock_port));
    let bin = match &args.proxy_bin {
        Some(b) => b.clone(),
        None => default_proxy_bin()?,
    };
    let dir = tempfile::tempdir()?;
    let pin = taskset_usable();
    let mut rows = Vec::new();
    for (i, &k) in args.connections.iter().enumerate() {
        let (mut config, tenants) = base_config(
            mock_port,
            workspace_root().join("policies"),
            args.log_level.as_deref(),
        );
        let cap = u32::try_from(k + 200).unwrap_or(u32::MAX);
        config.limits.max_connections_per_listener = Some(cap);
        config.limits.max_connections_per_tenant = Some(cap);
        let group = Group {
            dir: "idle",
            rows: vec!["idle"],
            config,
            tenants,
            ca_init: None,
        };
        let mut proxy = start_proxy(&bin, &dir.path().join(format!("proxy-{i}")), pin, &group)
            .await
            .context("starting the proxy")?;
        let path = "/openai/v1/chat/completions";
        rows.push(hold("tenant-proxy", &mut proxy, path, k, true).await?);
        drop(proxy);
        if args.bare {
            let mut bare = start_bare(mock_addr, pin, &dir.path().join(format!("bare-{i}")))
                .await
                .context("starting bare pingora")?;
            rows.push(hold("bare-pingora", &mut bare, "/v1/chat/completions", k, false).await?);
        }
    }
    Ok(rows)
}

/// Raises this process's soft open-file limit to its hard limit, and fails early when even
/// that is too low for `connections` (plus room for the rest of the process).
fn raise_open_file_limit(connections: usize) -> anyhow::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let needed = connections as u64 + 256;
    if hard < needed {
        bail!("the open-file limit ({hard}) is below the {needed} this run needs: raise it (`ulimit -Hn`) or open fewer connections");
    }
    Ok(())
}

/// On one server: warm-up, RSS, `k` connections each with one request then idle, RSS and the
/// server's count, close, RSS.
async fn hold(
    server: &'static str,
    proc: &mut ProxyProcess,
    path: &str,
    k: usize,
    counts_connections: bool,
) -> anyhow::Result<Row> {
    let addr = SocketAddr::from(([127, 0, 0, 1], proc.port));
    let raw = Arc::new(chat_request(path, &addr.to_string()));
    let warm = client::run(addr, raw.clone(), WARM_UP, 16, Duration::from_secs(60)).await;
    if warm.errors > 0 {
        bail!(
            "{server}: {} warm-up requests failed (first: {}){}",
            warm.errors,
            warm.first_error.unwrap_or_default(),
            proc.log_tail()
        );
    }
    let pid = proc.child.id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_mib(pid).unwrap_or(f64::NAN);
    let mut open = Vec::with_capacity(k);
    while open.len() < k {
        let batch = OPENING.min(k - open.len());
        let mut tasks = Vec::with_capacity(batch);
        for _ in 0..batch {
            let raw = raw.clone();
            tasks.push(tokio::spawn(async move { one_request(addr, &raw).await }));
        }
        for t in tasks {
            match t.await {
                Ok(Ok(conn)) => open.push(conn),
                Ok(Err(e)) => bail!(
                    "{server}: connection {} failed: {e}{}",
                    open.len() + 1,
                    proc.log_tail()
                ),
                Err(e) => bail!("{server}: opening task failed: {e}"),
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_open = rss_mib(pid).unwrap_or(f64::NAN);
    let server_count = if counts_connections {
        metric_sum(
            proc,
            "tenant_proxy_connections_open",
            &[&format!("listener=\"{MEASURED}\"")],
        )
        .await
    } else {
        None
    };
    let opened = open.len();
    drop(open);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_closed = rss_mib(pid).unwrap_or(f64::NAN);
    if let Some(why) = proc.exited() {
        bail!("{server}: {why}{}", proc.log_tail());
    }
    Ok(Row {
        server,
        opened,
        server_count,
        rss_before,
        rss_open,
        rss_closed,
    })
}

/// A new connection that has had one request answered 200, left open.
async fn one_request(addr: SocketAddr, raw: &[u8]) -> std::io::Result<TcpStream> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        s.write_all(raw).await?;
        let mut buf = Vec::new();
        let head = read_head(&mut s, &mut buf, false)
            .await?
            .ok_or_else(|| std::io::Error::other("closed before a response"))?;
        read_body(&mut s, &mut buf, &head).await?;
        if head.status != 200 {
            return Err(std::io::Error::other(format!("HTTP {}", head.status)));
        }
        Ok(s)
    };
    tokio::time::timeout(client::REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::other("no answer in time"))?
}

/// Prints the table; `false` when the proxy's count of open connections differs from what was
/// opened (some were closed, or counted twice).
pub fn print(rows: &[Row]) -> bool {
    println!("each connection made one request (answered 200) and then idled; RSS read from /proc a second after the last one opened");
    println!();
    println!("| server | connections | open (server's count) | RSS before MiB | RSS open MiB | per connection KiB | RSS after closing MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut ok = true;
    for r in rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.server,
            r.opened,
            r.server_count.map_or("-".into(), |c| c.to_string()),
            r.rss_before,
            r.rss_open,
            r.bytes_per_connection() / 1024.0,
            r.rss_closed
        );
        if r.server_count.is_some_and(|c| c != r.opened as u64) {
            ok = false;
            eprintln!(
                "FAILED {}: {} connections opened, the proxy counted {:?}",
                r.server, r.opened, r.server_count
            );
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The proxy counts exactly the idle connections that were opened, and the RSS figures
    /// are read.
    #[tokio::test]
    async fn the_proxy_counts_every_idle_connection() {
        let args = Args {
            proxy_bin: Some(crate::test_proxy_bin()),
            connections: vec![30],
            // Bare pingora is this binary's own subcommand, which a unit test cannot start.
            bare: false,
            log_level: None,
        };
        let rows = measure(&args).await.unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(
            (r.server, r.opened, r.server_count),
            ("tenant-proxy", 30, Some(30))
        );
        assert!(r.rss_before > 0.0 && r.rss_open > 0.0 && r.rss_closed > 0.0);
        assert!(print(&rows));
    }
}
