//! The command line: `run`, `check`, `usage`, and the token, credential, CA, policy and audit
//! tools. This file is the top of the command tree; each subcommand is its own file, with its
//! arguments and what it does.

mod admin;
mod approvals;
mod audit;
mod ca;
mod check;
mod cred;
mod policy;
mod run;
mod run_close;
mod sidecar_init;
mod token;
mod usage;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

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
        command: Option<run::RunCommand>,
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
        /// The running proxy's admin address (the in-memory limiter's counters are read there), when it is not the one the configuration names
        /// (a configuration on port 0: read it from `run --ready-file`'s `admin`; a port
        /// mapping).
        #[arg(long, value_name = "ADDR")]
        admin: Option<std::net::SocketAddr>,
    },
    /// Workload tokens (for development and tests; in production your identity provider mints them).
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
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
        command: cred::CredCommand,
    },
    /// The local CA that HTTPS interception mints certificates from, and making clients trust it.
    Ca {
        #[command(subcommand)]
        command: ca::CaCommand,
    },
    /// Cedar policy tools: validate a policy directory, run its tests, explain a decision.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// The capture rules of a transparent sidecar's pod: redirect every outbound TCP
    /// connection (IPv4 and IPv6) to the transparent listener, except the proxy's own, loopback
    /// and the exclusions; printed, or installed with `--apply` (an init container with
    /// `NET_ADMIN`).
    SidecarInit(sidecar_init::SidecarInit),
    /// The tamper-evident audit trail: verify chains and checkpoints, export one tenant's
    /// records, make a checkpoint signing key.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Held requests of a tenant: list them, approve or deny one (through the approvals API,
    /// with an approver token).
    Approvals(approvals::ApprovalsArgs),
}

impl Cli {
    /// Runs the chosen command.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Run {
                command:
                    Some(run::RunCommand::Close {
                        config,
                        tenant,
                        run,
                        admin,
                    }),
                ..
            } => run_close::close(&config, &tenant, &run, admin),
            Command::Run {
                config, ready_file, ..
            } => run::serve(config, ready_file),
            Command::Check { config } => Ok(check::check(&config)),
            Command::Token { command } => token::token(command),
            Command::Cred { config, command } => cred::cred(&config, command),
            Command::Ca { command } => ca::ca(command),
            Command::Policy { command } => policy::policy(command),
            Command::Audit { command } => audit::audit(command),
            Command::SidecarInit(args) => sidecar_init::sidecar_init(args),
            Command::Approvals(args) => approvals::approvals(args),
            Command::Usage {
                config,
                tenant,
                period,
                run,
                json,
                admin,
            } => usage::usage(&config, &tenant, period, run.as_deref(), json, admin),
        }
    }
}

/// How long an edit waits for another to finish.
const EDIT_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Locks the directory of `file` (the vault, the JWKS: a file the CLI reads, changes and writes
/// back) with an advisory `flock`, released when the returned handle is dropped or the process
/// ends, for one read-change-write of that file. Without it, two edits
/// at once each write back their own copy and one undoes the other: a `cred rm` of a leaked key
/// would be reported done and then brought back by a `cred put` of another tenant's running
/// beside it. The directory, not a lock file beside the vault: a lock file can be deleted and
/// made again while the lock lives on the deleted one (as the audit directory's lock explains).
pub(crate) fn lock_for_edit(file: &Path) -> anyhow::Result<std::fs::File> {
    let dir = crate::whole_file::directory_of(file);
    let handle = std::fs::File::open(dir)
        .with_context(|| format!("opening the directory `{}`", dir.display()))?;
    let deadline = std::time::Instant::now() + EDIT_LOCK_WAIT;
    loop {
        match handle.try_lock() {
            Ok(()) => return Ok(handle),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "`{}` stayed locked for {} s: another `tenant-proxy` command is editing a file \
                 there (or another process locks that directory); try again",
                dir.display(),
                EDIT_LOCK_WAIT.as_secs()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("locking the directory `{}`", dir.display())))
            }
        }
    }
}

/// Writes a private key file, readable by its owner only (mode 0600), durably: the file and its
/// directory entry are synced before it returns, so a crash or power loss right after (between
/// writing a new master key and the vault sealed with it, say) cannot leave an empty key.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    // SECURITY: never over an existing file. Every caller writes a key, and a key written over
    // is gone: a master key takes every stored secret with it, a signing key every token or
    // checkpoint it signed.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
                "`{}` exists; not overwriting a key (move it away first if you mean to replace it)",
                path.display()
            ),
            _ => anyhow::Error::new(e).context(format!("creating `{}`", path.display())),
        })?;
    f.write_all(bytes)?;
    f.sync_all()
        .with_context(|| format!("syncing `{}`", path.display()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing the directory `{}`", dir.display()))?;
    Ok(())
}
