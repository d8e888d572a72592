//! `tenants`: what the number of tenants costs the proxy.
//!
//! For each count N, the repo's policies and tenants (acme, globex, …) plus N generated tenants
//! of `--policies` policies each ([`tenant_proxy_loadtest::scale`]), on a proxy of its own:
//!
//! - **start**: from spawning the proxy until `GET /readyz` answers 200 (polled every 20 ms);
//! - **RSS idle**: a second after it is ready, before any request;
//! - **reload**: a policy is appended to generated tenant `t0`'s file; from that write until
//!   `tenant_proxy_config_reloads_total{result="ok"}` counts one more (the new snapshot is
//!   active). This includes the watcher's 250 ms debounce. The peak RSS meanwhile (both
//!   snapshots live for a moment) is sampled every 20 ms;
//! - **route**: the `route` row's request as acme (warm-up, then `--requests`): the proxy's CPU
//!   per request, which should not grow with N.
//!
//! Bounded: every wait is bounded by `--load-timeout`, every load by its request count.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tenant_proxy_loadtest::client::{self, RunResult};
use tenant_proxy_loadtest::scale;

use super::slowloris::rss_mib;
use super::{
    base_config, chat_request, copy_dir, default_proxy_bin, metric_sum, start_proxy_within,
    taskset_usable, workspace_root, Group, ProxyProcess, WARM_UP,
};

/// Options of the `tenants` subcommand.
#[derive(Debug)]
pub struct Args {
    pub proxy_bin: Option<PathBuf>,
    pub tenants: Vec<usize>,
    pub policies: usize,
    pub requests: usize,
    pub concurrency: usize,
    pub load_timeout: Duration,
    pub log_level: Option<String>,
}

/// What one tenant count measured.
#[derive(Debug)]
pub struct Row {
    /// Generated tenants (besides the repo's own).
    pub tenants: usize,
    /// Spawn → `/readyz` 200.
    pub start: Duration,
    /// Resident memory a second after ready, MiB.
    pub rss_idle_mib: f64,
    /// Policy file written → reload counted.
    pub reload: Duration,
    /// Highest resident memory seen during the reload, MiB.
    pub rss_reload_peak_mib: f64,
    /// The route requests.
    pub route: RunResult,
    /// The proxy's CPU per route request, µs.
    pub cpu_us: Option<f64>,
}

/// Measures every tenant count in turn, each on its own proxy.
pub async fn measure(args: &Args) -> anyhow::Result<Vec<Row>> {
    let bin = match &args.proxy_bin {
        Some(b) => b.clone(),
        None => default_proxy_bin()?,
    };
    let mock_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mock_port = mock_listener.local_addr()?.port();
    tokio::spawn(tenant_proxy_loadtest::mock::serve_mock(mock_listener));
    let dir = tempfile::tempdir()?;
    let pin = taskset_usable();
    let mut rows = Vec::new();
    for &n in &args.tenants {
        let here = dir.path().join(format!("t{n}"));
        let policy_dir = here.join("policies");
        copy_dir(&workspace_root().join("policies"), &policy_dir)
            .context("copying the repo's policies/")?;
        let (config, mut tenants) = base_config(mock_port, policy_dir, args.log_level.as_deref());
        scale::add_tenants(&mut tenants, n, args.policies)?;
        let group = Group {
            dir: "tenants",
            rows: vec!["tenants"],
            config,
            tenants,
            ca_init: None,
        };
        let started = Instant::now();
        let mut proxy =
            start_proxy_within(&bin, &here.join("proxy"), pin, &group, args.load_timeout)
                .await
                .with_context(|| format!("starting the proxy with {n} generated tenants"))?;
        let start = started.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pid = proxy.child.id();
        let rss_idle_mib = rss_mib(pid).unwrap_or(f64::NAN);
        let (reload, rss_reload_peak_mib) = reload(&proxy, &group, n, args).await?;
        let (route, cpu_us) = route(&mut proxy, args).await;
        if let Some(why) = proxy.exited() {
            bail!("{why} during the route requests{}", proxy.log_tail());
        }
        rows.push(Row {
            tenants: n,
            start,
            rss_idle_mib,
            reload,
            rss_reload_peak_mib,
            route,
            cpu_us,
        });
    }
    Ok(rows)
}

/// Appends a policy to a tenant's own file (generated `t0`'s, or acme's when none are
/// generated) and waits until the proxy counts a successful reload: how long it took and the
/// peak RSS meanwhile.
async fn reload(
    proxy: &ProxyProcess,
    group: &Group,
    n: usize,
    args: &Args,
) -> anyhow::Result<(Duration, f64)> {
    let ok = ["result=\"ok\""];
    let failed = ["result=\"error\""];
    let reloads = "tenant_proxy_config_reloads_total";
    let before = metric_sum(proxy, reloads, &ok)
        .await
        .context("reading the proxy's reload count")?;
    let errors_before = metric_sum(proxy, reloads, &failed).await.unwrap_or(0);
    let (tenant, file) = if n > 0 {
        let id = scale::tenant_id(0);
        let file = group
            .tenants
            .policy_dir
            .join("tenants")
            .join(&id)
            .join("own.cedar");
        (id, file)
    } else {
        let file = group.tenants.policy_dir.join("tenants/acme/reload.cedar");
        ("acme".to_string(), file)
    };
    let mut text = std::fs::read_to_string(&file).unwrap_or_default();
    text.push_str(&format!(
        "@id(\"{tenant}-reloaded\")\npermit (principal in TenantProxy::Tenant::\"{tenant}\", action == TenantProxy::Action::\"http\", resource)\nwhen {{ context.host == \"reloaded.example.com\" }};\n"
    ));
    let pid = proxy.child.id();
    let mut peak = rss_mib(pid).unwrap_or(f64::NAN);
    let written = Instant::now();
    std::fs::write(&file, text)?;
    loop {
        if let Some(now) = rss_mib(pid) {
            peak = peak.max(now);
        }
        // The admin port answers while the reloader thread compiles.
        if let Some(count) = metric_sum(proxy, reloads, &ok).await {
            if count > before {
                return Ok((written.elapsed(), peak));
            }
        }
        if metric_sum(proxy, reloads, &failed).await.unwrap_or(0) > errors_before {
            bail!("the proxy rejected the reload{}", proxy.log_tail());
        }
        if written.elapsed() > args.load_timeout {
            bail!(
                "no reload counted within {:?} of changing {}{}",
                args.load_timeout,
                file.display(),
                proxy.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The route row's request as acme: warm-up, then `--requests` measured, with the proxy's CPU
/// per request.
async fn route(proxy: &mut ProxyProcess, args: &Args) -> (RunResult, Option<f64>) {
    let addr = SocketAddr::from(([127, 0, 0, 1], proxy.port));
    let raw = Arc::new(chat_request(
        "/openai/v1/chat/completions",
        &addr.to_string(),
    ));
    let limit = Duration::from_secs(120);
    let _ = client::run(addr, raw.clone(), WARM_UP, args.concurrency, limit).await;
    let before = proxy.cpu().ok();
    let r = client::run(addr, raw, args.requests, args.concurrency, limit).await;
    let after = proxy.cpu().ok();
    let cpu = before
        .zip(after)
        .filter(|_| r.requests > 0)
        .map(|(b, a)| a.saturating_sub(b).as_secs_f64() * 1e6 / r.requests as f64);
    (r, cpu)
}

/// Prints the table; `false` when route requests failed.
pub fn print(args: &Args, rows: &[Row]) -> bool {
    println!(
        "generated tenants of {} policies each, beside the repo's tenants and global policies; route: {} requests ({WARM_UP} warm-up) on {} keep-alive connections",
        args.policies, args.requests, args.concurrency
    );
    println!();
    println!("| tenants | start → ready s | RSS idle MiB | reload s | RSS peak in reload MiB | route req/s | route p99 ms | route CPU µs/req | CPU ÷ first |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let first = rows.first().and_then(|r| r.cpu_us);
    let mut ok = true;
    for r in rows {
        let ratio = r
            .cpu_us
            .zip(first)
            .filter(|(_, f)| *f > 0.0)
            .map_or("-".into(), |(c, f)| format!("{:.2}", c / f));
        println!(
            "| {} | {:.2} | {:.1} | {:.2} | {:.1} | {:.0} | {:.3} | {} | {ratio} |",
            r.tenants,
            r.start.as_secs_f64(),
            r.rss_idle_mib,
            r.reload.as_secs_f64(),
            r.rss_reload_peak_mib,
            r.route.rps(),
            r.route.quantile_ms(0.99),
            r.cpu_us.map_or("-".into(), |c| format!("{c:.1}")),
        );
        if r.route.errors > 0 {
            ok = false;
            eprintln!(
                "FAILED {} tenants: {} of {} route requests failed (first: {})",
                r.tenants,
                r.route.errors,
                r.route.requests,
                r.route.first_error.as_deref().unwrap_or("?")
            );
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A proxy of a few generated tenants starts, reloads after a policy file changes and
    /// serves the route; the figures are there (never how large they are).
    #[tokio::test]
    async fn start_reload_and_route_are_measured() {
        let args = Args {
            proxy_bin: Some(crate::test_proxy_bin()),
            tenants: vec![3],
            policies: 2,
            requests: 50,
            concurrency: 2,
            load_timeout: Duration::from_secs(60),
            log_level: None,
        };
        let rows = measure(&args).await.unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(r.tenants, 3);
        assert!(r.start > Duration::ZERO && r.reload > Duration::ZERO);
        assert!(r.rss_idle_mib > 0.0 && r.rss_reload_peak_mib > 0.0);
        assert_eq!(
            (r.route.requests, r.route.errors),
            (50, 0),
            "{:?}",
            r.route.first_error
        );
        assert!(r.cpu_us.is_some_and(|c| c > 0.0));
        assert!(print(&args, &rows));
    }
}
