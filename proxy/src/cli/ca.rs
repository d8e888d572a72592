//! `tenant-proxy ca`: the local CA that HTTPS interception mints certificates from, and making
//! clients trust it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(super) enum CaCommand {
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

/// Runs a `ca` subcommand.
pub(super) fn ca(command: CaCommand) -> anyhow::Result<ExitCode> {
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
                "next: as the interception CA (`[intercept] ca_cert`), make clients trust it with \
                 `eval \"$(tenant-proxy ca env --ca {})\"`",
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
