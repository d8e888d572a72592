//! `tenant-proxy cred`: tenants' credentials in the embedded vault named by the tenant file's
//! `[credentials]`. Values are read from standard input and never printed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Subcommand;

use super::{lock_for_edit, write_private};
use crate::config::{StaticConfig, TenantConfig};
use crate::credentials::binding::parse_binding;
use crate::credentials::kind::KindName;
use crate::credentials::secret::SecretValue;
use crate::credentials::settings::parse_positions;
use crate::credentials::vault::{MasterKey, Vault};
use crate::credentials::CredentialSource;
use crate::ids::TenantId;

#[derive(Debug, Subcommand)]
pub(super) enum CredCommand {
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
        /// What the value is: `static` (substituted as written, the default); `aws_sigv4`
        /// (JSON `{"access_key_id", "secret_access_key", "session_token"?, "region",
        /// "service"?}`: the proxy signs requests with it, the agent never sees it);
        /// `oauth2_client_credentials` or `google_service_account` (the proxy obtains access
        /// tokens with it; see the README's *Credentials*).
        #[arg(long, default_value = "static")]
        kind: KindName,
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

/// Runs a `cred` subcommand against the vault the configuration names.
pub(super) fn cred(config: &Path, command: CredCommand) -> anyhow::Result<ExitCode> {
    if let CredCommand::InitMaster { out } = &command {
        let (_, text) = MasterKey::generate()?;
        write_private(out, text.as_bytes())?;
        eprintln!("wrote a new master key to `{}`", out.display());
        return Ok(ExitCode::SUCCESS);
    }
    let static_config = StaticConfig::load(config).map_err(crate::app::problems_error)?;
    let tenants =
        TenantConfig::load(&static_config.tenants_file).map_err(crate::app::problems_error)?;
    let Some(CredentialSource::Vault(store)) = tenants.credential_source.clone() else {
        anyhow::bail!(
            "`{}` has no `[credentials] vault_file`; `cred` edits the embedded vault",
            tenants.path.display()
        );
    };
    // The value is read before the vault is locked: someone typing it holds no one up.
    let value = match &command {
        CredCommand::Put { .. } => Some(secret_from_stdin()?),
        _ => None,
    };
    // An edit holds the vault locked from its read to its write (see `lock_for_edit`).
    let _edit = match command {
        CredCommand::List { .. } | CredCommand::InitMaster { .. } => None,
        _ => Some(lock_for_edit(&store.file)?),
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
            kind,
        } => {
            let tenant = known(&tenant)?;
            let bind = bind
                .iter()
                .map(|b| parse_binding(b))
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            let positions = parse_positions(&positions).map_err(anyhow::Error::msg)?;
            let expires = expires.map(|e| parse_expiry(&e)).transpose()?;
            let secret = value.ok_or_else(|| anyhow::anyhow!("no value read"))?;
            vault.put_kind(&tenant, &name, &secret, bind, positions, expires, kind)?;
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

/// The credential's value from standard input, without its trailing line end.
fn secret_from_stdin() -> anyhow::Result<SecretValue> {
    // SECURITY: a value typed or pasted at a terminal is echoed on screen and kept in its
    // scrollback (and a recording of the session): only a pipe or a file is read.
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        anyhow::bail!("standard input is a terminal, which would show the value as it is typed or pasted: pipe it in (`printf %s \"$KEY\" | tenant-proxy cred put …`) or redirect a file (`< key.txt`)");
    }
    let mut value = zeroize::Zeroizing::new(String::new());
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut value)?;
    let trimmed = value.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        anyhow::bail!("no value on standard input (pipe it in: `printf %s \"$KEY\" | tenant-proxy cred put …`)");
    }
    Ok(SecretValue::new(trimmed.as_bytes().to_vec()))
}

fn parse_expiry(text: &str) -> anyhow::Result<u64> {
    if let Ok(t) = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        // An expiry already past would store a credential every request is refused.
        if t <= time::OffsetDateTime::now_utc() {
            anyhow::bail!("`--expires {text}` is in the past");
        }
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
