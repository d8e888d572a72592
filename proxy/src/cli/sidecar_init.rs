//! `tenant-proxy sidecar-init`: the capture rules an init container installs in an agent pod's
//! network namespace (see [`crate::transparent::rules`]), printed, or applied with `--apply`.

use std::io::Write as _;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context as _};
use clap::Args;
use ipnet::IpNet;

use crate::transparent::rules::{Backend, CaptureRules, IPTABLES_CHAIN};

/// `sidecar-init` arguments.
#[derive(Debug, Args)]
pub struct SidecarInit {
    /// The transparent listener's port.
    #[arg(long)]
    port: u16,
    /// The uid the proxy runs as: its own connections are not captured. Nothing else in the pod
    /// may run as this uid.
    #[arg(long)]
    proxy_uid: u32,
    /// A destination network let through uncaptured (repeatable; IPv4 or IPv6).
    #[arg(long = "exclude-cidr", value_name = "CIDR")]
    exclude_cidrs: Vec<IpNet>,
    /// A destination port let through uncaptured (repeatable).
    #[arg(long = "exclude-port", value_name = "PORT")]
    exclude_ports: Vec<u16>,
    /// The tool that installs the rules.
    #[arg(long, value_enum, default_value = "nft")]
    backend: Backend,
    /// Install the rules (needs `NET_ADMIN` in the pod's network namespace) instead of printing
    /// them.
    #[arg(long)]
    apply: bool,
}

/// Prints or applies the rules.
pub fn sidecar_init(args: SidecarInit) -> anyhow::Result<ExitCode> {
    if args.port == 0 {
        bail!("`--port` must be the transparent listener's port, not 0");
    }
    // Each exclusion is a way around the proxy: one that covers everything captures nothing.
    // Together, too: `0.0.0.0/1` and `128.0.0.0/1` are every IPv4 address.
    if let Some(all) = IpNet::aggregate(&args.exclude_cidrs)
        .into_iter()
        .find(|c| c.prefix_len() == 0)
    {
        bail!("the `--exclude-cidr` ranges cover every address ({all}): nothing would be captured");
    }
    if args.exclude_ports.contains(&0) {
        bail!("`--exclude-port 0` names no port");
    }
    let rules = CaptureRules {
        port: args.port,
        proxy_uid: args.proxy_uid,
        exclude_cidrs: args.exclude_cidrs,
        exclude_ports: args.exclude_ports,
    };
    let scripts: Vec<(&str, &[&str], String)> = match args.backend {
        Backend::Nft => vec![("nft", &["-f", "-"], rules.nft())],
        Backend::Iptables => vec![
            (
                "iptables-restore",
                &["--noflush"],
                rules.iptables(false, args.apply && jump_in_place("iptables")),
            ),
            (
                "ip6tables-restore",
                &["--noflush"],
                rules.iptables(true, args.apply && jump_in_place("ip6tables")),
            ),
        ],
    };
    for (tool, tool_args, script) in &scripts {
        if args.apply {
            apply(tool, tool_args, script)?;
            eprintln!("applied: {tool} {}", tool_args.join(" "));
        } else {
            println!("# {tool} {}", tool_args.join(" "));
            print!("{script}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `OUTPUT` already jumps to the capture chain (an earlier apply): `tool -C` succeeds
/// only for a rule that is there.
fn jump_in_place(tool: &str) -> bool {
    Command::new(tool)
        .args([
            "-t",
            "nat",
            "-C",
            "OUTPUT",
            "-p",
            "tcp",
            "-j",
            IPTABLES_CHAIN,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `tool args` with `script` on its standard input; its failure is ours.
fn apply(tool: &str, args: &[&str], script: &str) -> anyhow::Result<()> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("running `{tool}` (is it installed in this image?)"))?;
    child
        .stdin
        .take()
        .context("no stdin for the rules")?
        .write_all(script.as_bytes())
        .with_context(|| format!("writing the rules to `{tool}`"))?;
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{tool}`"))?;
    if !status.success() {
        bail!(
            "`{tool} {}` failed ({status}): the capture rules are not in place",
            args.join(" ")
        );
    }
    Ok(())
}
