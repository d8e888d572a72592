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
            let policies = std::iter::once(&snap.policy).chain(&snap.shadow_policy);
            let policy_warnings = policies
                .flat_map(|engine| engine.warnings())
                .map(|w| format!("policy: {w}"));
            let warnings = s
                .admin_token_warning()
                .into_iter()
                .chain(crate::app::configuration_warnings(&s, &snap))
                .chain(s.exposed_binding_warnings())
                .chain(policy_warnings);
            // Problems and warnings quote files others may have written: shown escaped.
            for warning in warnings {
                eprintln!("warning: {}", crate::shown::lines_shown(&warning));
            }
            ExitCode::SUCCESS
        }
        Err(problems) => {
            eprintln!("{} problem(s) found:", problems.len());
            for p in problems {
                eprintln!("  {}", crate::shown::lines_shown(&p.to_string()));
            }
            ExitCode::from(1)
        }
    }
}
