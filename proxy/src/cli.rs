//! The command line: `run`, `check`, and the token tools.

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
    /// Start serving with the given configuration.
    Run {
        /// The static configuration file (it names the tenant file).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate everything `run` would load (config, tenants, keys, policies) without binding
    /// ports. Exits 1 listing every problem.
    Check {
        /// The static configuration file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Workload tokens (for development and tests; in production your identity provider mints them).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
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
            Command::Run { config } => {
                crate::app::run(&config)?;
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
        }
    }
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
