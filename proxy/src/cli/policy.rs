//! `tenant-proxy policy`: validate a policy directory, run its tests, and explain what the
//! proxy would decide for a request.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

use crate::config::{StaticConfig, TenantConfig};
use crate::policy::{PolicyProblem, TenantInfo};

#[derive(Debug, Subcommand)]
pub(super) enum PolicyCommand {
    /// Parse and strictly validate every policy against the schema. Prints errors and warnings
    /// (policies that can never apply, …) with file:line:column; exits 1 on any error.
    Check {
        /// The policy directory (`schema.cedarschema`, `global/`, `tenants/<tenant>/`).
        dir: PathBuf,
        /// Take the tenants from this configuration (default: the `tenants/<tenant>/` names).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Run the test cases in `DIR/tests/*.json` and print a pass/fail table; exits 1 on any
    /// failure.
    Test {
        /// The policy directory.
        dir: PathBuf,
        /// Build the Tenant and Workload entities from this configuration, as the proxy does
        /// (without it, each case lists its own entities).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// What the running proxy would decide for a request, and why: the decision, the deciding
    /// policies, errors, each credential's `use_credential` decision and, toward an MCP server,
    /// each tool call, resource read and prompt get; `--method CONNECT --url host:port` decides a
    /// tunnel (`connect`, then `connect_opaque` for its mode). Exits 2 for an unknown tenant or
    /// workload.
    Explain {
        /// The static configuration file (tenants, routes, policies and credentials are loaded
        /// from it as `run` loads them).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Workload id.
        #[arg(long)]
        workload: String,
        /// Request method, as sent on the wire: a method not in upper case (`post`) is refused
        /// (`bad_request`) as the proxy refuses it.
        #[arg(long, default_value = "GET")]
        method: String,
        /// An absolute URL (`https://api.openai.com/v1/chat/completions`), a route-mode path
        /// (`/openai/v1/chat/completions`), or `host:port` with `--method CONNECT`.
        #[arg(long)]
        url: String,
        /// A file holding the request body (its JSON `model` is read as the proxy reads it).
        #[arg(long, value_name = "FILE")]
        body: Option<PathBuf>,
        /// A request header, `Name: value`; repeatable (e.g. `content-type: application/json`).
        #[arg(long = "header", short = 'H', value_name = "HEADER")]
        headers: Vec<String>,
        /// Scopes of the workload token, space-separated.
        #[arg(long)]
        scope: Option<String>,
        /// The run id comes from a signed token.
        #[arg(long)]
        run_signed: bool,
        /// When the request arrives (RFC 3339, e.g. `2026-11-30T09:00:00Z`), for `hour` and
        /// `weekday`; default now.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `policy` subcommand.
pub(super) fn policy(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    use crate::policy::testing::{self, EntitySource};
    use crate::policy::PolicyEngine;
    match command {
        PolicyCommand::Check { dir, config } => {
            let tenants = match &config {
                Some(config) => configured_tenants(config)?,
                None => crate::policy::tenants_from_dirs(&dir)?,
            };
            let checked = PolicyEngine::check(&dir, &tenants);
            for w in &checked.warnings {
                println!("warning: {w}");
            }
            match checked.result {
                Ok(_) => {
                    println!(
                        "ok: {} tenant(s), {} warning(s)",
                        tenants.len(),
                        checked.warnings.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(problems) => {
                    for p in &problems {
                        println!("error: {p}");
                    }
                    println!(
                        "{} error(s), {} warning(s)",
                        problems.len(),
                        checked.warnings.len()
                    );
                    Ok(ExitCode::from(1))
                }
            }
        }
        PolicyCommand::Test { dir, config } => {
            let (tenants, source) = match &config {
                Some(config) => (configured_tenants(config)?, EntitySource::Configuration),
                None => (
                    crate::policy::tenants_from_dirs(&dir)?,
                    EntitySource::CaseOnly,
                ),
            };
            let engine = PolicyEngine::load(&dir, &tenants).map_err(policy_problems_error)?;
            let results = testing::run(&dir, &engine, source).map_err(policy_problems_error)?;
            print!("{}", testing::render_table(&results));
            let missing_entities = results
                .iter()
                .any(|r| !r.passed && r.got.contains("does not exist"));
            if config.is_none() && missing_entities {
                // The usual cause: cases written for the proxy's own entities (tenant plan and
                // region, workloads) run without the configuration that defines them.
                eprintln!(
                    "hint: some cases name entities they do not define; cases that rely on the \
                     Tenant and Workload entities the proxy builds from its configuration need \
                     `--config FILE`"
                );
            }
            Ok(if results.iter().all(|r| r.passed) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        PolicyCommand::Explain {
            config,
            tenant,
            workload,
            method,
            url,
            body,
            headers,
            scope,
            run_signed,
            at,
            json,
        } => {
            use crate::pipeline::explain;
            let mut static_config =
                StaticConfig::load(&config).map_err(crate::app::problems_error)?;
            // One question, asked once: a decision cache would only be filled and dropped.
            static_config.policy.decision_cache_entries = 0;
            let snapshot = crate::snapshot::Snapshot::load(&static_config)
                .map_err(crate::app::problems_error)?;
            let body = body
                .map(|b| std::fs::read(&b).with_context(|| format!("reading `{}`", b.display())))
                .transpose()?;
            let described = explain::Described {
                tenant,
                workload,
                method,
                url,
                headers,
                body,
                scopes: scope
                    .map(|s| s.split_whitespace().map(String::from).collect())
                    .unwrap_or_default(),
                run_signed,
                at_unix: match at {
                    Some(at) => time::OffsetDateTime::parse(
                        &at,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .with_context(|| format!("`{at}` is not an RFC 3339 time"))?
                    .unix_timestamp(),
                    None => crate::clock::unix_now_i64(),
                },
            };
            let minter = crate::app::load_minter(&static_config)?;
            // The proxy's own admission chain decides it (async, like the proxy).
            let explained = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(explain::explain(
                    &static_config,
                    std::sync::Arc::new(snapshot),
                    minter,
                    &described,
                ));
            let explanation = match explained {
                Ok(e) => e,
                Err(explain::ExplainError::UnknownIdentity(why)) => {
                    // Not a decision: a typo in a tenant or workload must not read as a deny.
                    eprintln!("error: {why}");
                    return Ok(ExitCode::from(2));
                }
                Err(explain::ExplainError::Invalid(why)) => return Err(anyhow::Error::msg(why)),
            };
            if json {
                println!(
                    "{}",
                    crate::shown::json_shown(&serde_json::to_string_pretty(&explanation)?)
                );
            } else {
                print!(
                    "{}",
                    crate::shown::lines_shown(&explain::render_text(&explanation))
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The tenants the configuration's tenant file defines, as the policy engine sees them. Only
/// the tenant file is read and validated (the static file just names it), so policies can be
/// checked where the listeners' keys and CA files do not exist, in CI say.
fn configured_tenants(config: &Path) -> anyhow::Result<Vec<TenantInfo>> {
    let tenants_file = crate::config::tenants_file_named_by(config)
        .map_err(|problem| crate::app::problems_error(vec![problem]))?;
    let tenants = TenantConfig::load(&tenants_file).map_err(crate::app::problems_error)?;
    Ok(crate::snapshot::tenant_infos(&tenants))
}

fn policy_problems_error(problems: Vec<PolicyProblem>) -> anyhow::Error {
    let lines: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
    anyhow::anyhow!("{} problem(s):\n{}", problems.len(), lines.join("\n"))
}
