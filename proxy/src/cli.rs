//! The command line: `run`, `check`, `usage`, and the token, credential, CA and audit tools.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::identity::token::{self, KeyAlgorithm, MintRequest};
use crate::ids::{TenantId, WorkloadId};

/// tenant-proxy: the egress proxy that puts every agent call under its tenant's identity,
/// policy and audit trail.
#[derive(Debug, Parser)]
#[command(name = "tenant-proxy", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start serving with the given configuration (`run --config FILE`), or act on a running
    /// proxy's runs (`run close`).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Run {
        /// The static configuration file (it names the tenant file).
        #[arg(long, short, value_name = "FILE", required = true)]
        config: Option<PathBuf>,
        /// Once every socket is bound and listening, write the addresses bound here (JSON
        /// `{"admin": ADDR, "listeners": {NAME: ADDR, …}}`, replaced atomically): how a caller
        /// that asked for port 0 learns the ports it got.
        #[arg(long, value_name = "PATH")]
        ready_file: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<RunCommand>,
    },
    /// Validate everything `run` would load (config, tenants, keys, policies) without binding
    /// ports. Exits 1 listing every problem.
    Check {
        /// The static configuration file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// A tenant's spend against its ceilings (cost this day or month, tokens this minute,
    /// requests in flight), read from the configured limiter: Redis directly, or the running
    /// proxy's admin port for the in-memory backend.
    Usage {
        /// The static configuration file.
        #[arg(long, short, value_name = "FILE", default_value = "tenant-proxy.toml")]
        config: PathBuf,
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Calendar period, in the tenant's time zone.
        #[arg(long, value_enum, default_value = "day")]
        period: crate::limits::report::ReportPeriod,
        /// Also show this run's counters.
        #[arg(long)]
        run: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Workload tokens (for development and tests; in production your identity provider mints them).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Tenants' credentials in the embedded vault named by the configuration's `[credentials]`.
    Cred {
        /// The static configuration file (its tenant file names the vault and master key).
        #[arg(
            long,
            short,
            value_name = "FILE",
            global = true,
            default_value = "tenant-proxy.toml"
        )]
        config: PathBuf,
        #[command(subcommand)]
        command: CredCommand,
    },
    /// The local CA that HTTPS interception mints certificates from, and making clients trust it.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Cedar policy tools: validate a policy directory, run its tests, explain a decision.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The tamper-evident audit trail: verify chains and checkpoints, export one tenant's
    /// records, make a checkpoint signing key.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum RunCommand {
    /// Close a signed run through the running proxy's admin port: its summary is written to the
    /// tenant's audit partition now and its later requests are refused with `run_closed`.
    Close {
        /// The static configuration file (it names the admin port).
        #[arg(long, short, value_name = "FILE", default_value = "tenant-proxy.toml")]
        config: PathBuf,
        /// Tenant id: only this tenant's run of that id is closed.
        #[arg(long)]
        tenant: String,
        /// Run id.
        #[arg(long)]
        run: String,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
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
    /// policies, errors, and each credential's `use_credential` decision.
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
        /// Request method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// An absolute URL (`https://api.openai.com/v1/chat/completions`) or a route-mode path
        /// (`/openai/v1/chat/completions`).
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

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check every tenant's hash chain and signed checkpoints; report per tenant the records
    /// checked and the first problem (modified, reordered, deleted, truncated, bad_signature).
    /// Exits 1 on any problem.
    Verify {
        /// The audit directory (`[audit] dir`).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Accept only checkpoints signed by this public key (a `.pub` file from `DIR/_keys/`
        /// or `audit keygen`). Without it any key published in `DIR/_keys/` is accepted, so a
        /// forger who can write the directory could publish a key of their own: pin the key to
        /// make forged checkpoints detectable.
        #[arg(long, value_name = "PUB")]
        key: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print one tenant's records (exactly as written) and the checkpoints that prove them as
    /// JSONL. Reads only `DIR/<tenant>/`.
    Export {
        /// The audit directory (`[audit] dir`).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// First day (`2026-11-28`, UTC) or instant (RFC 3339) to include.
        #[arg(long)]
        from: Option<String>,
        /// Last day or instant to include.
        #[arg(long)]
        to: Option<String>,
    },
    /// Generate a checkpoint signing key: `DIR/audit-signing-key.pem` (PKCS#8, mode 0600; set
    /// `[audit] signing_key` to it) and `DIR/<key_id>.pub` (give it to `audit verify --key`).
    Keygen {
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create a CA: `ca.pem` (give it to clients) and `ca-key.pem` (mode 0600, for the proxy
    /// only). Never overwrites an existing CA.
    Init {
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Subject common name, shown in trust stores.
        #[arg(long, value_name = "CN")]
        name: Option<String>,
        /// Restrict the CA to a DNS name and its subdomains (`api.openai.com`), or to subdomains
        /// only (`.example.com`); repeatable. Clients then reject anything else it signs, even
        /// with a stolen key. Without it the CA can sign for any host.
        #[arg(long = "permit", value_name = "NAME")]
        permit: Vec<String>,
        /// Validity in days.
        #[arg(long, value_name = "N", default_value_t = crate::tls::ca::DEFAULT_VALIDITY_DAYS)]
        days: u32,
    },
    /// Write a bundle of the system roots plus the CA and print the environment variables that
    /// make common tools trust it: `eval "$(tenant-proxy ca env --ca ca.pem)"`.
    Env {
        /// The CA certificate (`ca.pem`).
        #[arg(long, value_name = "FILE")]
        ca: PathBuf,
        /// Where to write the bundle (default: `bundle.pem` next to the CA).
        #[arg(long, value_name = "FILE")]
        bundle_out: Option<PathBuf>,
        /// Syntax of the printed variables.
        #[arg(long, value_enum, default_value = "sh")]
        shell: crate::tls::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum CredCommand {
    /// Add or replace a credential; the value is read from standard input, never from arguments.
    Put {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Credential name (what `$CRED{name}` refers to).
        #[arg(long)]
        name: String,
        /// Destinations: `HOST`, `*.DOMAIN`, or `https://HOST:PORT/PATH-PREFIX`, each optionally
        /// after methods and a space (`POST|GET https://api.openai.com/v1/`), comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        bind: Vec<String>,
        /// Where the handle may appear: `header`, `query`, `body` (comma-separated; default header).
        #[arg(long = "in", value_delimiter = ',')]
        positions: Vec<String>,
        /// Expiry: an RFC 3339 time (`2027-01-31T00:00:00Z`) or a duration from now (`30d`).
        #[arg(long)]
        expires: Option<String>,
    },
    /// List a tenant's credentials: names, bindings, expiry and a fingerprint, never values.
    List {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
    },
    /// Remove a credential.
    Rm {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Credential name.
        #[arg(long)]
        name: String,
    },
    /// Re-wrap every tenant's data key with a new master key (written to `--new-key-file`);
    /// then point `master_key_file` at it.
    RotateMaster {
        /// Where to write the new master key (mode 0600).
        #[arg(long, value_name = "FILE")]
        new_key_file: PathBuf,
    },
    /// Generate a master key file for a new vault.
    InitMaster {
        /// Where to write the key (mode 0600).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a signed workload token.
    Mint {
        /// PKCS#8 PEM private key (Ed25519 or P-256).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Workload id (the token's `sub`).
        #[arg(long)]
        workload: String,
        /// Lifetime, e.g. `5m`; must not exceed the proxy's `token.max_lifetime`.
        #[arg(long, default_value = "5m")]
        ttl: String,
        /// Run id the token is issued for.
        #[arg(long)]
        run_id: Option<String>,
        /// Audience (`aud`); must match the proxy's `token.audience`.
        #[arg(long, default_value = "tenant-proxy")]
        audience: String,
        /// Key id (`kid`) to put in the header; must match the JWKS entry.
        #[arg(long)]
        kid: Option<String>,
        /// Space-separated scopes.
        #[arg(long)]
        scope: Option<String>,
    },
    /// Generate a signing key: writes the private key PEM and prints/updates a JWKS.
    Keygen {
        /// Signature algorithm.
        #[arg(long, value_enum, default_value_t = Alg::Eddsa)]
        alg: Alg,
        /// Key id.
        #[arg(long)]
        kid: String,
        /// Where to write the private key (created with mode 0600).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// JWKS file to add the public key to (created if missing).
        #[arg(long, value_name = "FILE")]
        jwks: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Alg {
    /// Ed25519.
    Eddsa,
    /// ECDSA P-256 with SHA-256.
    Es256,
}

impl Cli {
    /// Runs the chosen command.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Run {
                command:
                    Some(RunCommand::Close {
                        config,
                        tenant,
                        run,
                    }),
                ..
            } => {
                let static_config = crate::config::StaticConfig::load(&config)
                    .map_err(crate::app::problems_error)?;
                let tenant = TenantId::new(&tenant)?;
                let mut query = form_urlencoded::Serializer::new(String::new());
                query
                    .append_pair("tenant", tenant.as_str())
                    .append_pair("run", &run);
                let body = admin_call(
                    static_config.admin_listen,
                    "POST",
                    &format!("/runs/close?{}", query.finish()),
                )?;
                println!("{}", String::from_utf8_lossy(&body).trim());
                Ok(ExitCode::SUCCESS)
            }
            Command::Run {
                config, ready_file, ..
            } => {
                let config = config.context("`--config` is required")?;
                crate::app::run(&config, ready_file.as_deref())?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Check { config } => match crate::app::check(&config) {
                Ok((s, snap)) => {
                    println!(
                        "ok: {} listener(s), {} tenant(s), {} route(s)",
                        s.listeners.len(),
                        snap.tenants.tenants.len(),
                        snap.tenants.routes.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(problems) => {
                    eprintln!("{} problem(s) found:", problems.len());
                    for p in problems {
                        eprintln!("  {p}");
                    }
                    Ok(ExitCode::from(1))
                }
            },
            Command::Token { command } => token_command(command),
            Command::Cred { config, command } => cred_command(&config, command),
            Command::Ca { command } => ca_command(command),
            Command::Policy { command } => policy_command(command),
            Command::Audit { command } => audit_command(command),
            Command::Usage {
                config,
                tenant,
                period,
                run,
                json,
            } => {
                let report = read_usage(&config, &tenant, period, run.as_deref())?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!(
                        "{}",
                        crate::limits::report::render_text(&report, crate::clock::unix_now_i64())
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

fn policy_command(command: PolicyCommand) -> anyhow::Result<ExitCode> {
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
            let static_config =
                crate::config::StaticConfig::load(&config).map_err(crate::app::problems_error)?;
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
            // The proxy's own admission chain decides it (async, like the proxy).
            let explanation = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(explain::explain(
                    &static_config,
                    std::sync::Arc::new(snapshot),
                    &described,
                ))
                .map_err(anyhow::Error::msg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&explanation)?);
            } else {
                print!("{}", explain::render_text(&explanation));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The tenants the configuration's tenant file defines, as the policy engine sees them. Only
/// the tenant file is read and validated (the static file just names it), so policies can be
/// checked where the listeners' keys and CA files do not exist, in CI say.
fn configured_tenants(config: &std::path::Path) -> anyhow::Result<Vec<crate::policy::TenantInfo>> {
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("reading `{}`", config.display()))?;
    let value: toml::Table =
        toml::from_str(&text).with_context(|| format!("`{}` is not TOML", config.display()))?;
    let tenants_file = value
        .get("tenants_file")
        .and_then(|v| v.as_str())
        .ok_or_else(|| anyhow::anyhow!("`{}` names no `tenants_file`", config.display()))?;
    let tenants_file = crate::config::relative_to(config, std::path::Path::new(tenants_file));
    let tenants = crate::config::model::TenantConfig::load(&tenants_file)
        .map_err(crate::app::problems_error)?;
    Ok(crate::snapshot::tenant_infos(&tenants))
}

fn policy_problems_error(problems: Vec<crate::policy::PolicyProblem>) -> anyhow::Error {
    let lines: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
    anyhow::anyhow!("{} problem(s):\n{}", problems.len(), lines.join("\n"))
}

fn read_usage(
    config: &std::path::Path,
    tenant: &str,
    period: crate::limits::report::ReportPeriod,
    run: Option<&str>,
) -> anyhow::Result<crate::limits::report::UsageReport> {
    use crate::config::model::{LimiterSettings, TenantConfig};
    let static_config =
        crate::config::StaticConfig::load(config).map_err(crate::app::problems_error)?;
    let tenant = TenantId::new(tenant)?;
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
                static_config.admin_listen,
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

/// A request without a body to the running proxy's admin port (loopback or a private network;
/// plain HTTP/1.1).
fn admin_call(addr: std::net::SocketAddr, method: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::{BufRead, Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| {
            format!("the proxy's admin port {addr} does not answer; is the proxy running?")
        })?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    // Read the head, then exactly Content-Length bytes: the server may keep the socket open.
    let mut reader = std::io::BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    let mut length = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            anyhow::bail!("malformed answer from the admin port");
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<u64>().ok();
            }
        }
    }
    let length = length.context("the admin port's answer has no Content-Length")?;
    let mut body = Vec::new();
    reader.take(length).read_to_end(&mut body)?;
    if status.split_whitespace().nth(1) != Some("200") {
        // Refusals are the proxy's JSON error shape; show its message and code.
        let refusal: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        match refusal
            .as_ref()
            .map(|v| (&v["error"]["message"], &v["error"]["code"]))
        {
            Some((serde_json::Value::String(m), serde_json::Value::String(c))) => {
                anyhow::bail!("admin port: {m} ({c})")
            }
            _ => anyhow::bail!("admin port: {}", String::from_utf8_lossy(&body).trim()),
        }
    }
    Ok(body)
}

fn token_command(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Mint {
            key,
            tenant,
            workload,
            ttl,
            run_id,
            audience,
            kid,
            scope,
        } => {
            let pem = std::fs::read_to_string(&key)
                .with_context(|| format!("reading `{}`", key.display()))?;
            let ttl: Duration = humantime::parse_duration(&ttl)
                .with_context(|| format!("`{ttl}` is not a duration"))?;
            let now_unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
            let req = MintRequest {
                tenant: TenantId::new(&tenant)?,
                workload: WorkloadId::new(&workload)?,
                audience,
                issuer: None,
                ttl,
                run_id,
                run_budget: None,
                scopes: scope
                    .map(|s| s.split_whitespace().map(String::from).collect())
                    .unwrap_or_default(),
                jti: None,
                kid,
                now_unix,
                not_before: None,
            };
            println!("{}", token::mint(&pem, &req)?);
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Keygen {
            alg,
            kid,
            out,
            jwks,
        } => {
            let alg = match alg {
                Alg::Eddsa => KeyAlgorithm::EdDSA,
                Alg::Es256 => KeyAlgorithm::ES256,
            };
            let key = token::generate_key(alg, &kid)?;
            write_private(&out, key.private_pem.as_bytes())?;
            let mut set: serde_json::Value = match std::fs::read_to_string(&jwks) {
                Ok(text) => serde_json::from_str(&text)
                    .with_context(|| format!("`{}` is not JSON", jwks.display()))?,
                Err(_) => serde_json::json!({ "keys": [] }),
            };
            let keys = set
                .get_mut("keys")
                .and_then(|k| k.as_array_mut())
                .ok_or_else(|| anyhow::anyhow!("`{}` has no `keys` array", jwks.display()))?;
            keys.retain(|k| k.get("kid").and_then(|v| v.as_str()) != Some(kid.as_str()));
            keys.push(key.jwk);
            std::fs::write(&jwks, serde_json::to_vec_pretty(&set)?)?;
            eprintln!(
                "wrote private key to `{}` and public key `{kid}` to `{}`",
                out.display(),
                jwks.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn audit_command(command: AuditCommand) -> anyhow::Result<ExitCode> {
    use crate::audit::{checkpoint, export, verify};
    match command {
        AuditCommand::Verify {
            dir,
            tenant,
            key,
            json,
        } => {
            let tenant = tenant.as_deref().map(TenantId::new).transpose()?;
            if let Some(t) = &tenant {
                if !dir.join(t.as_str()).is_dir() {
                    anyhow::bail!("no audit partition for tenant `{t}` in `{}`", dir.display());
                }
            }
            let keys = match key {
                Some(path) => verify::Keys::Pinned(checkpoint::read_public_key(&path)?),
                None => verify::Keys::published(&dir),
            };
            let reports = verify::verify_dir(&dir, tenant.as_ref(), &keys)
                .with_context(|| format!("reading `{}`", dir.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                print!("{}", verify::render_text(&reports));
            }
            let clean = reports.iter().all(|r| r.problem.is_none());
            Ok(if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        AuditCommand::Export {
            dir,
            tenant,
            from,
            to,
        } => {
            // SECURITY: a validated id cannot name a path outside `DIR/<tenant>/`.
            let tenant = TenantId::new(&tenant)?;
            let range = export::Range::parse(from.as_deref(), to.as_deref())?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let summary = export::export(&dir, &tenant, range, &mut out)?;
            std::io::Write::flush(&mut out)?;
            eprintln!(
                "exported {} record(s) and {} checkpoint(s) of `{tenant}`",
                summary.records, summary.checkpoints
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Keygen { out } => {
            let (signer, pem) = checkpoint::Signer::generate()?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("creating `{}`", out.display()))?;
            let key_path = out.join("audit-signing-key.pem");
            if key_path.exists() {
                anyhow::bail!("`{}` exists; not overwriting a key", key_path.display());
            }
            write_private(&key_path, pem.as_bytes())?;
            let pub_path = out.join(format!("{}.pub", signer.key_id()));
            std::fs::write(&pub_path, format!("{}\n", signer.public_hex()))?;
            eprintln!(
                "wrote signing key `{}` to `{}` and its public key to `{}`",
                signer.key_id(),
                key_path.display(),
                pub_path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn ca_command(command: CaCommand) -> anyhow::Result<ExitCode> {
    use crate::tls::{ca, trust_env};
    match command {
        CaCommand::Init {
            out,
            name,
            permit,
            days,
        } => {
            let mut opts = ca::CaInitOptions::new(out);
            if let Some(name) = name {
                opts.common_name = name;
            }
            opts.permitted = permit;
            opts.validity_days = days;
            let files = ca::init(&opts)?;
            println!("certificate  {}", files.cert.display());
            println!(
                "private key  {}  (mode 0600; only the proxy reads it)",
                files.key.display()
            );
            if opts.permitted.is_empty() {
                println!("constraints  none: the CA can sign for any host");
            } else {
                println!(
                    "constraints  {} (no IP addresses)",
                    opts.permitted.join(", ")
                );
            }
            let cert = std::path::absolute(&files.cert).unwrap_or(files.cert);
            println!(
                "next: make clients trust it with `eval \"$(tenant-proxy ca env --ca {})\"`",
                cert.display()
            );
        }
        CaCommand::Env {
            ca,
            bundle_out,
            shell,
        } => {
            let ca = std::path::absolute(&ca)
                .with_context(|| format!("resolving `{}`", ca.display()))?;
            let bundle = bundle_out.unwrap_or_else(|| trust_env::default_bundle_path(&ca));
            let bundle = std::path::absolute(&bundle)
                .with_context(|| format!("resolving `{}`", bundle.display()))?;
            let bundle = trust_env::write_bundle(&ca, &bundle)?;
            // Standard output is meant for `eval`: everything else goes to standard error.
            match trust_env::system_bundle() {
                Some(system) => eprintln!(
                    "wrote `{}`: the system roots from `{}` and the CA",
                    bundle.display(),
                    system.display()
                ),
                None => eprintln!(
                    "warning: no system root bundle found (looked in {}); `{}` holds the CA \
                     alone, so hosts the proxy does not intercept will fail verification",
                    trust_env::SYSTEM_BUNDLES.join(", "),
                    bundle.display()
                ),
            }
            print!("{}", trust_env::render(&ca, &bundle, shell));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cred_command(config: &std::path::Path, command: CredCommand) -> anyhow::Result<ExitCode> {
    use crate::config::model::{parse_positions, CredentialSource, TenantConfig};
    use crate::credentials::binding::parse_binding;
    use crate::credentials::secret::SecretValue;
    use crate::credentials::vault::{MasterKey, Vault};

    if let CredCommand::InitMaster { out } = &command {
        let (_, text) = MasterKey::generate()?;
        write_private(out, text.as_bytes())?;
        eprintln!("wrote a new master key to `{}`", out.display());
        return Ok(ExitCode::SUCCESS);
    }
    let static_config =
        crate::config::StaticConfig::load(config).map_err(crate::app::problems_error)?;
    let tenants =
        TenantConfig::load(&static_config.tenants_file).map_err(crate::app::problems_error)?;
    let Some(CredentialSource::Vault(store)) = tenants.credential_source.clone() else {
        anyhow::bail!(
            "`{}` has no `[credentials] vault_file`; `cred` edits the embedded vault",
            tenants.path.display()
        );
    };
    let mut vault = Vault::open(&store.file, store.master.read()?)?;
    let known = |t: &str| -> anyhow::Result<TenantId> {
        let id = TenantId::new(t)?;
        if !tenants.tenants.contains_key(&id) {
            anyhow::bail!("tenant `{t}` is not in `{}`", tenants.path.display());
        }
        Ok(id)
    };
    match command {
        CredCommand::Put {
            tenant,
            name,
            bind,
            positions,
            expires,
        } => {
            let tenant = known(&tenant)?;
            let bind = bind
                .iter()
                .map(|b| parse_binding(b))
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            let positions = parse_positions(&positions).map_err(anyhow::Error::msg)?;
            let expires = expires.map(|e| parse_expiry(&e)).transpose()?;
            let mut value = zeroize::Zeroizing::new(String::new());
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut value)?;
            let trimmed = value.trim_end_matches(['\n', '\r']);
            if trimmed.is_empty() {
                anyhow::bail!("no value on standard input (pipe it in: `printf %s \"$KEY\" | tenant-proxy cred put …`)");
            }
            let secret = SecretValue::new(trimmed.as_bytes().to_vec());
            vault.put(&tenant, &name, &secret, bind, positions, expires)?;
            vault.save()?;
            eprintln!(
                "stored `{name}` for tenant `{tenant}` ({})",
                secret.fingerprint()
            );
        }
        CredCommand::List { tenant } => {
            let tenant = known(&tenant)?;
            for l in vault.list(&tenant)? {
                let positions: Vec<&str> = l.positions.iter().map(|p| p.as_str()).collect();
                let expires = l.expires.map(format_unix).unwrap_or_else(|| "never".into());
                println!(
                    "{}\tin={}\texpires={}\t{}",
                    l.name,
                    positions.join(","),
                    expires,
                    l.fingerprint
                );
                // Every field of every binding: where the value may go is what a reviewer checks.
                for b in &l.bind {
                    println!("  bind {}", b.describe());
                }
            }
        }
        CredCommand::Rm { tenant, name } => {
            let tenant = known(&tenant)?;
            if !vault.remove(&tenant, &name) {
                anyhow::bail!("tenant `{tenant}` has no credential `{name}`");
            }
            vault.save()?;
            eprintln!("removed `{name}` from tenant `{tenant}`");
        }
        CredCommand::RotateMaster { new_key_file } => {
            let (new_key, text) = MasterKey::generate()?;
            let id = new_key.id();
            vault.rotate_master(new_key)?;
            // Key first: a crash between the two leaves the old vault and a spare key, not a
            // vault nobody can open.
            write_private(&new_key_file, text.as_bytes())?;
            vault.save()?;
            eprintln!("re-wrapped every data key with master key `{id}` in `{}`; point `master_key_file` at it", new_key_file.display());
        }
        CredCommand::InitMaster { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_expiry(text: &str) -> anyhow::Result<u64> {
    if let Ok(t) = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return Ok(u64::try_from(t.unix_timestamp()).unwrap_or(0));
    }
    let d = humantime::parse_duration(text)
        .with_context(|| format!("`{text}` is neither an RFC 3339 time nor a duration"))?;
    Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + d.as_secs())
}

fn format_unix(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating `{}`", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}
