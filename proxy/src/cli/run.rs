//! `tenant-proxy run`: serve with the given configuration. Its one subcommand, `run close`, is
//! in `run_close.rs`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(super) enum RunCommand {
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
        /// The running proxy's admin address, when it is not the one the configuration names
        /// (a configuration on port 0: read it from `run --ready-file`'s `admin`; a port
        /// mapping).
        #[arg(long, value_name = "ADDR")]
        admin: Option<std::net::SocketAddr>,
    },
}

/// Loads everything `config` names and serves until SIGTERM/SIGINT; a configuration with any
/// problem is refused with all of them listed.
pub(super) fn serve(
    config: Option<PathBuf>,
    ready_file: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let config = config.context("`--config` is required")?;
    crate::app::run(&config, ready_file.as_deref())?;
    Ok(ExitCode::SUCCESS)
}
