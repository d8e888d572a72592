//! `tenant-proxy check`: everything `run` would load, validated without binding ports.

use std::path::Path;
use std::process::ExitCode;

/// Checks the configuration `config` names and prints a summary, or every problem of every
/// stage (exit 1).
pub(super) fn check(config: &Path) -> ExitCode {
    match crate::app::check(config) {
        Ok((s, snap)) => {
            println!(
                "ok: {} listener(s), {} tenant(s), {} route(s)",
                s.listeners.len(),
                snap.tenants.tenants.len(),
                snap.tenants.routes.len()
            );
            let warnings = [
                s.admin_token_warning(),
                snap.memory_limiter_warning(&s.limiter),
                snap.mcp_session_key_warning(&s.limiter),
                snap.revocation_file_warning(),
                snap.jwks_warning(),
            ];
            let listeners = s.exposed_binding_warnings();
            let files = s
                .readable_secret_warnings()
                .into_iter()
                .chain(snap.readable_secret_warnings());
            for warning in warnings.into_iter().flatten().chain(listeners).chain(files) {
                eprintln!("warning: {warning}");
            }
            ExitCode::SUCCESS
        }
        Err(problems) => {
            eprintln!("{} problem(s) found:", problems.len());
            for p in problems {
                eprintln!("  {p}");
            }
            ExitCode::from(1)
        }
    }
}
