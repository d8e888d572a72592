//! `tenant-proxy usage`: a tenant's spend against its ceilings, read from the configured limiter
//! (Redis directly, or the running proxy's admin port for the in-memory backend).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use super::admin::{admin_call, AdminPort};
use crate::config::{StaticConfig, TenantConfig};
use crate::ids::TenantId;
use crate::limits::report::{ReportPeriod, UsageReport};
use crate::limits::LimiterSettings;

/// Prints `tenant`'s usage this `period` (and `run`'s counters), as a table or JSON; the
/// in-memory limiter's counters are read from the proxy's admin port (at `admin`, when given).
pub(super) fn usage(
    config: &Path,
    tenant: &str,
    period: ReportPeriod,
    run: Option<&str>,
    json: bool,
    admin: Option<SocketAddr>,
) -> anyhow::Result<ExitCode> {
    let report = read_usage(config, tenant, period, run, admin)?;
    if json {
        println!(
            "{}",
            crate::shown::json_shown(&serde_json::to_string_pretty(&report)?)
        );
    } else {
        // What the admin port answered: shown escaped (see `crate::shown`).
        print!(
            "{}",
            crate::shown::lines_shown(&crate::limits::report::render_text(
                &report,
                crate::clock::unix_now_i64()
            ))
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn read_usage(
    config: &Path,
    tenant: &str,
    period: ReportPeriod,
    run: Option<&str>,
    admin: Option<SocketAddr>,
) -> anyhow::Result<UsageReport> {
    let static_config = StaticConfig::load(config).map_err(crate::app::problems_error)?;
    let tenant = TenantId::new(tenant)?;
    if run.is_some_and(|r| !crate::ids::valid_run_id(r)) {
        anyhow::bail!("`--run` is not a valid run id: {}", crate::ids::RUN_ID_RULE);
    }
    match &static_config.limiter {
        // In-memory counters live in the proxy process: ask it.
        LimiterSettings::Memory { .. } => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query
                .append_pair("tenant", tenant.as_str())
                .append_pair("period", period.as_str());
            if let Some(run) = run {
                query.append_pair("run", run);
            }
            let body = admin_call(
                &AdminPort::of(&static_config, admin)?,
                "GET",
                &format!("/usage?{}", query.finish()),
            )?;
            Ok(serde_json::from_slice(&body)
                .context("the admin port's answer is not a usage report")?)
        }
        LimiterSettings::Redis(settings) => {
            let tenants = TenantConfig::load(&static_config.tenants_file)
                .map_err(crate::app::problems_error)?;
            let backend = crate::limits::redis::RedisBackend::start(settings.clone())
                .map_err(anyhow::Error::msg)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                // The connection is made in the background; give it a moment.
                for _ in 0..40 {
                    if crate::limits::LimitBackend::is_ready(&backend) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                crate::limits::report::usage_report(
                    &tenants,
                    &backend,
                    &tenant,
                    period,
                    run,
                    crate::clock::unix_now_i64(),
                )
                .await
                .map_err(|e| anyhow::anyhow!("reading the counters from redis: {e}"))
            })
        }
    }
}
