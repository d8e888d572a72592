//! `tenant-proxy token`: signing keys and workload tokens, for development and tests (in
//! production an identity provider mints them).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};

use super::write_private;
use crate::identity::token::{self, KeyAlgorithm, MintRequest};
use crate::ids::{TenantId, WorkloadId};

/// The longest lifetime `token mint` gives a token.
const MAX_MINT_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// `token mint`'s options (boxed in [`TokenCommand`]: they outweigh the other commands').
#[derive(Debug, clap::Args)]
pub(super) struct MintArgs {
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
    /// The run's budget (`run_budget`), as JSON: `{"tokens":…, "cost_micros":…,
    /// "tool_calls":…, "wall_time_s":…}` (any of them); needs `--run-id`.
    #[arg(long, value_name = "JSON", requires = "run_id")]
    run_budget: Option<String>,
    /// Issuer (`iss`); must match the proxy's `token.issuer` when it sets one.
    #[arg(long)]
    issuer: Option<String>,
    /// Token id (`jti`), e.g. to revoke it later; 128 random bits when not given.
    #[arg(long)]
    jti: Option<String>,
    /// Not valid before this long from now (`nbf`), e.g. `30s`.
    #[arg(long, value_name = "DURATION")]
    not_before: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Print a signed workload token.
    Mint(Box<MintArgs>),
    /// Revoke a token id (`jti`) in the Redis every replica sharing the limiter reads (within
    /// about a second); the `[token] revoked_jtis_file` stays a second source.
    Revoke {
        /// The static configuration file (its `[limiter]` names the Redis).
        #[arg(long, short, value_name = "FILE", default_value = "tenant-proxy.toml")]
        config: PathBuf,
        /// The token id to refuse.
        #[arg(long)]
        jti: String,
        /// How long to keep the revocation: at least the longest a token with this id can
        /// still be valid (its expiry, or `max_lifetime` when unknown).
        #[arg(long, default_value = "24h")]
        keep: String,
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
pub(super) enum Alg {
    /// Ed25519.
    Eddsa,
    /// ECDSA P-256 with SHA-256.
    Es256,
}

/// Runs a `token` subcommand.
pub(super) fn token(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Mint(args) => {
            let MintArgs {
                key,
                tenant,
                workload,
                ttl,
                run_id,
                audience,
                kid,
                scope,
                run_budget,
                issuer,
                jti,
                not_before,
            } = *args;
            let pem = crate::whole_file::read_to_string(&key)
                .with_context(|| format!("reading `{}`", key.display()))?;
            let ttl: Duration = humantime::parse_duration(&ttl)
                .with_context(|| format!("`{ttl}` is not a duration"))?;
            // A token that is expired when minted, or that outlives any plausible
            // `token.max_lifetime` (the proxy refuses those anyway), is a mistake.
            // (Token times are whole seconds: less than one would expire as it is issued.)
            if ttl < Duration::from_secs(1) || ttl > MAX_MINT_TTL {
                anyhow::bail!(
                    "`--ttl` must be more than zero (at least `1s`) and at most {} (the proxy \
                     refuses tokens that live longer than its `token.max_lifetime`)",
                    humantime::format_duration(MAX_MINT_TTL)
                );
            }
            let now_unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
            let run_budget: Option<token::RunBudget> = run_budget
                .map(|json| {
                    serde_json::from_str(&json).with_context(|| {
                        format!("`--run-budget {json}` is not a budget: write e.g. `{{\"tokens\":10000,\"cost_micros\":500000}}`")
                    })
                })
                .transpose()?;
            let not_before = not_before
                .map(|d| {
                    humantime::parse_duration(&d)
                        .ok()
                        .and_then(|d| now_unix.checked_add(d.as_secs()))
                        .with_context(|| format!("`{d}` is not a duration from now"))
                })
                .transpose()?;
            if not_before.is_some_and(|nbf| nbf >= now_unix + ttl.as_secs()) {
                anyhow::bail!("`--not-before` must be before the token expires (`--ttl`)");
            }
            if jti.as_deref().is_some_and(|j| !token::valid_jti(j)) {
                anyhow::bail!("`--jti`: {}", token::JTI_RULE);
            }
            let req = MintRequest {
                tenant: TenantId::new(&tenant)?,
                workload: WorkloadId::new(&workload)?,
                audience,
                issuer,
                ttl,
                run_id,
                run_budget,
                scopes: scope
                    .map(|s| s.split_whitespace().map(String::from).collect())
                    .unwrap_or_default(),
                jti,
                kid,
                now_unix,
                not_before,
            };
            println!("{}", token::mint(&pem, &req)?);
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { config, jti, keep } => revoke(&config, &jti, &keep),
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
            if out == jwks
                || std::fs::canonicalize(&out)
                    .ok()
                    .is_some_and(|o| std::fs::canonicalize(&jwks).ok().is_some_and(|j| o == j))
            {
                anyhow::bail!("`--out` and `--jwks` name one file: the key would be lost");
            }
            let key = token::generate_key(alg, &kid)?;
            // The JWKS is read, changed and written back: one keygen at a time.
            let _edit = super::lock_for_edit(&jwks)?;
            let mut set: serde_json::Value = match crate::whole_file::read_to_string(&jwks) {
                // A byte-order mark before it is no part of the JWKS, as where the proxy reads it
                // (written back without one).
                Ok(text) => serde_json::from_str(text.strip_prefix('\u{feff}').unwrap_or(&text))
                    .with_context(|| format!("`{}` is not JSON", jwks.display()))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    serde_json::json!({ "keys": [] })
                }
                Err(e) => {
                    return Err(
                        anyhow::Error::new(e).context(format!("reading `{}`", jwks.display()))
                    )
                }
            };
            let keys = set
                .get_mut("keys")
                .and_then(|k| k.as_array_mut())
                .ok_or_else(|| anyhow::anyhow!("`{}` has no `keys` array", jwks.display()))?;
            // A kid already published stays its key's: replacing it would refuse every token
            // that key signed. Rotation adds a key under a new kid.
            if keys
                .iter()
                .any(|k| k.get("kid").and_then(|v| v.as_str()) == Some(kid.as_str()))
            {
                anyhow::bail!(
                    "kid `{kid}` is already in `{}`; give the new key another kid (rotate by adding \
                     a key, and remove the old one once the tokens it signed have expired)",
                    jwks.display()
                );
            }
            write_private(&out, key.private_pem.as_bytes())?;
            keys.push(key.jwk);
            // Whole or not at all: a reader (the proxy reloading it) never sees half a file.
            crate::whole_file::replace(&jwks, &serde_json::to_vec_pretty(&set)?)
                .with_context(|| format!("writing `{}`", jwks.display()))?;
            eprintln!(
                "wrote private key to `{}` and public key `{kid}` to `{}`",
                out.display(),
                jwks.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `token revoke`: adds `jti` to the shared revocation list in the limiter's Redis.
fn revoke(config: &std::path::Path, jti: &str, keep: &str) -> anyhow::Result<ExitCode> {
    use crate::limits::LimiterSettings;
    let keep: Duration =
        humantime::parse_duration(keep).with_context(|| format!("`{keep}` is not a duration"))?;
    // No token with such an id is accepted, so revoking it would only look like it worked.
    if !crate::identity::token::valid_jti(jti) {
        anyhow::bail!("`--jti`: {}", crate::identity::token::JTI_RULE);
    }
    let static_config =
        crate::config::StaticConfig::load(config).map_err(crate::app::problems_error)?;
    let LimiterSettings::Redis(settings) = &static_config.limiter else {
        anyhow::bail!(
            "the limiter is in memory: there is no shared revocation list (use `[token] revoked_jtis_file`)"
        );
    };
    let keep_until =
        i64::try_from((SystemTime::now().duration_since(UNIX_EPOCH)? + keep).as_secs())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let version = rt.block_on(async {
        let conn = settings
            .endpoint
            .connect(settings.timeout.max(Duration::from_secs(2)))
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach redis: {e}"))?;
        crate::limits::redis_revocations::revoke(&conn, jti, keep_until)
            .await
            .map_err(|e| anyhow::anyhow!("cannot revoke: {e}"))
    })?;
    eprintln!("revoked `{jti}` until unix {keep_until} (list version {version})");
    Ok(ExitCode::SUCCESS)
}
