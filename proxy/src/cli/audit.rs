//! `tenant-proxy audit`: verify the tamper-evident trail, export one tenant's records, make a
//! checkpoint signing key.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

use super::write_private;
use crate::ids::TenantId;

#[derive(Debug, Subcommand)]
pub(super) enum AuditCommand {
    /// Check every tenant's hash chain and signed checkpoints in an audit directory (`--dir`),
    /// or one file `audit export` wrote (`--file`); report per tenant the records checked and
    /// the first problem (modified, reordered, deleted, truncated, bad_signature,
    /// checkpoint_gap, unsigned). Exits 1 on any problem.
    Verify {
        /// The audit directory (`[audit] dir`). With `--file`: only where its published keys
        /// (`DIR/_keys/`) are read.
        #[arg(long = "dir", value_name = "DIR", conflicts_with = "dir_positional")]
        dir: Option<PathBuf>,
        /// The audit directory, the older positional form of `--dir`.
        #[arg(value_name = "DIR", hide = true)]
        dir_positional: Option<PathBuf>,
        /// A file `audit export` wrote, verified on its own: its records must link one to the
        /// next and its checkpoints be signed by `--key` (or a key published in `--dir`).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Only this tenant (with `--file`: the file must be this tenant's).
        #[arg(long)]
        tenant: Option<String>,
        /// Accept only checkpoints signed by this public key (a `.pub` file from `DIR/_keys/`
        /// or `audit keygen`); give it once per key (`--key a.pub --key b.pub`): each start
        /// without `[audit] signing_key` signs with a new key, and a rotation brings one. Without
        /// it any key published in `DIR/_keys/` is accepted, so a forger who can write the
        /// directory could publish a key of their own: pin the keys to make forged checkpoints
        /// detectable.
        #[arg(long, value_name = "PUB")]
        key: Vec<PathBuf>,
        /// The writer's `checkpoint_interval` (e.g. `10m`), assumed where no checkpoint states it
        /// (checkpoints written before they were chained, or none left); default `60s`.
        /// Records logged longer than it (plus a minute's grace) before the newest one must be
        /// covered by a checkpoint.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        checkpoint_interval: Option<std::time::Duration>,
        /// How much longer than the checkpoint interval records may go unsigned (queueing,
        /// slow disks, clock steps); default `60s`.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        grace: Option<std::time::Duration>,
        /// Checkpoint lines kept outside the audit directory (e.g. the last line of each
        /// tenant's `checkpoints.jsonl`, copied out): the named tenant's records must still reach
        /// each one. Detects the newest records cut off together with their checkpoints, which
        /// the directory alone cannot show.
        #[arg(long, value_name = "FILE", conflicts_with = "file")]
        anchor: Vec<PathBuf>,
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

/// Prints `reports` (a table, or JSON); exit 1 when any has a problem.
fn render(reports: &[crate::audit::verify::TenantReport], json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!(
            "{}",
            crate::shown::json_shown(&serde_json::to_string_pretty(reports)?)
        );
    } else {
        // Findings quote the trail (a tenant named in a record, a key id): whoever tampered
        // with it wrote them, and could otherwise redraw the verifier's terminal.
        print!(
            "{}",
            crate::shown::lines_shown(&crate::audit::verify::render_text(reports))
        );
    }
    let clean = reports.iter().all(|r| r.problem.is_none());
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The keys `--key` pinned (each `.pub` file read), or `None` when none was given.
fn pinned_keys(paths: &[PathBuf]) -> anyhow::Result<Option<crate::audit::verify::Keys>> {
    if paths.is_empty() {
        return Ok(None);
    }
    let keys = paths
        .iter()
        .map(|path| Ok(crate::audit::checkpoint::read_public_key(path)?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Some(crate::audit::verify::Keys::Pinned(keys)))
}

/// The checkpoints in `--anchor` files, one JSON line each (blank lines skipped).
fn read_anchors(paths: &[PathBuf]) -> anyhow::Result<Vec<crate::audit::checkpoint::Checkpoint>> {
    let mut anchors = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading `{}`", path.display()))?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let c: crate::audit::checkpoint::Checkpoint = serde_json::from_str(line)
                .with_context(|| format!("`{}:{}` is not a checkpoint", path.display(), i + 1))?;
            TenantId::new(&c.tenant)
                .with_context(|| format!("`{}:{}` names no valid tenant", path.display(), i + 1))?;
            anchors.push(c);
        }
    }
    Ok(anchors)
}

/// Runs an `audit` subcommand.
pub(super) fn audit(command: AuditCommand) -> anyhow::Result<ExitCode> {
    use crate::audit::{checkpoint, export, verify};
    match command {
        AuditCommand::Verify {
            dir,
            dir_positional,
            file,
            tenant,
            key,
            checkpoint_interval,
            grace,
            anchor,
            json,
        } => {
            let grace = grace.unwrap_or(crate::audit::verify::GRACE);
            let dir = dir.or(dir_positional);
            let tenant = tenant.as_deref().map(TenantId::new).transpose()?;
            if let Some(file) = file {
                // The file first: a missing one is the problem to name, not the keys.
                let bytes = std::fs::read(&file)
                    .with_context(|| format!("reading `{}`", file.display()))?;
                // SECURITY: a file on its own carries no trusted key; the checkpoints' keys come
                // from the caller (`--key`) or the directory the caller names, never the file.
                let keys = match (pinned_keys(&key)?, &dir) {
                    (Some(keys), _) => keys,
                    (None, Some(dir)) => verify::Keys::published(dir),
                    (None, None) => anyhow::bail!(
                        "an exported file carries no keys: give the checkpoint key with `--key PUB` (a `.pub` file from the audit directory's `_keys/`) or `--dir DIR`"
                    ),
                };
                let trust = verify::Trust {
                    interval: checkpoint_interval,
                    grace,
                    ..keys.into()
                };
                let report = verify::verify_export(&bytes, &file.display().to_string(), &trust);
                if let Some(t) = &tenant {
                    if report.tenant != t.as_str() {
                        anyhow::bail!(
                            "`{}` holds tenant `{}`'s records, not `{t}`'s",
                            file.display(),
                            report.tenant
                        );
                    }
                }
                return render(&[report], json);
            }
            let Some(dir) = dir else {
                anyhow::bail!(
                    "give the audit directory (`--dir DIR`) or an exported file (`--file FILE`)"
                );
            };
            if let Some(t) = &tenant {
                if !dir.join(t.as_str()).is_dir() {
                    anyhow::bail!("no audit partition for tenant `{t}` in `{}`", dir.display());
                }
            }
            let keys = match pinned_keys(&key)? {
                Some(keys) => keys,
                None => verify::Keys::published(&dir),
            };
            let trust = verify::Trust {
                keys,
                interval: checkpoint_interval,
                grace,
                anchors: read_anchors(&anchor)?,
            };
            if !dir.is_dir() {
                anyhow::bail!("`{}` is not a directory", dir.display());
            }
            let reports = verify::verify_dir(&dir, tenant.as_ref(), &trust)
                .with_context(|| format!("reading `{}`", dir.display()))?;
            // A directory the proxy never wrote (a wrong path, a volume not mounted) holds
            // nothing to verify: that is no success. The proxy publishes its checkpoint keys in
            // `_keys/` at start; without them, some record or checkpoint must be there.
            let found = reports.iter().any(|r| r.records > 0 || r.checkpoints > 0);
            if !found && !dir.join(crate::audit::layout::KEYS_DIR).is_dir() {
                anyhow::bail!(
                    "`{}` is no audit directory: it holds no `{}/` (the keys the proxy publishes \
                     at start) and no audit record",
                    dir.display(),
                    crate::audit::layout::KEYS_DIR
                );
            }
            render(&reports, json)
        }
        AuditCommand::Export {
            dir,
            tenant,
            from,
            to,
        } => {
            // SECURITY: a validated id cannot name a path outside `DIR/<tenant>/`.
            let tenant = TenantId::new(&tenant)?;
            if !dir.is_dir() {
                anyhow::bail!("`{}` is not a directory", dir.display());
            }
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
            // The directory holds the signing key: not open to others, whatever the umask.
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o700,
            )
            .create(&out)
            .with_context(|| format!("creating `{}`", out.display()))?;
            let key_path = out.join("audit-signing-key.pem");
            if key_path.exists() {
                anyhow::bail!("`{}` exists; not overwriting a key", key_path.display());
            }
            write_private(&key_path, pem.as_bytes())?;
            let pub_path = out.join(format!("{}.pub", signer.key_id()));
            // Public, but what `audit verify --key` trusts: writable by its owner only.
            std::os::unix::fs::OpenOptionsExt::mode(
                std::fs::OpenOptions::new().write(true).create_new(true),
                0o644,
            )
            .open(&pub_path)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, format!("{}\n", signer.public_hex()).as_bytes())
            })
            .with_context(|| format!("writing `{}`", pub_path.display()))?;
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
