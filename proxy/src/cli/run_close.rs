//! `tenant-proxy run close`: close a signed run through the running proxy's admin port.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use super::admin::{admin_call, AdminPort};
use crate::config::StaticConfig;
use crate::ids::TenantId;

/// Asks the proxy `config` names (at `admin`, when given) to close `tenant`'s run `run`: its
/// summary is written now and its later requests are refused with `run_closed`.
pub(super) fn close(
    config: &Path,
    tenant: &str,
    run: &str,
    admin: Option<SocketAddr>,
) -> anyhow::Result<ExitCode> {
    let static_config = StaticConfig::load(config).map_err(crate::app::problems_error)?;
    let tenant = TenantId::new(tenant)?;
    if !crate::ids::valid_run_id(run) {
        anyhow::bail!("`--run` is not a valid run id: {}", crate::ids::RUN_ID_RULE);
    }
    let port = AdminPort::of(&static_config, admin)?;
    let mut query = form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("tenant", tenant.as_str())
        .append_pair("run", run);
    let body = admin_call(&port, "POST", &format!("/runs/close?{}", query.finish()))?;
    println!(
        "{}",
        crate::shown::json_shown(String::from_utf8_lossy(&body).trim())
    );
    if matches!(
        static_config.limiter,
        crate::limits::settings::LimiterSettings::Memory { .. }
    ) {
        eprintln!(
            "note: the limiter keeps runs in memory (`[limiter] backend = \"memory\"`): this proxy \
             refuses the run from now on, but a restart forgets that it was closed, and other \
             replicas never knew; use `backend = \"redis\"` to keep closures"
        );
    }
    Ok(ExitCode::SUCCESS)
}
