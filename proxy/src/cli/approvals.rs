//! `tenant-proxy approvals list|show|approve|deny`: a person of a tenant acting on its held
//! requests through the approvals API (`[approvals] listen`). The approver token is read from
//! `--token-file` or `TENANT_PROXY_APPROVER_TOKEN`, never from the command line (where other
//! users of the machine could read it); mint one with `tenant-proxy token mint --audience
//! tenant-proxy-approvals --workload <approver> [--scope <groups>]`.

use crate::shown::shown;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};

/// Where the approvals API is and who is asking.
#[derive(Debug, Args)]
pub struct ApprovalsArgs {
    /// The approvals API's address (`[approvals] listen`).
    #[arg(
        long,
        value_name = "ADDR",
        global = true,
        default_value = "127.0.0.1:9091"
    )]
    addr: SocketAddr,
    /// The approver's tenant.
    #[arg(long, global = true)]
    tenant: Option<String>,
    /// A file holding the approver token (else `TENANT_PROXY_APPROVER_TOKEN`).
    #[arg(long, value_name = "FILE", global = true)]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: ApprovalsCommand,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// The tenant's pending holds.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One hold and its state (JSON).
    Show {
        /// The hold id.
        hold: String,
    },
    /// Approve a hold: its request is forwarded.
    Approve {
        /// The hold id.
        hold: String,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny a hold: its agent is refused with the reason.
    Deny {
        /// The hold id.
        hold: String,
        /// Why (told to the agent and recorded).
        #[arg(long)]
        reason: String,
    },
}

/// Runs an approvals command.
pub fn approvals(args: ApprovalsArgs) -> anyhow::Result<ExitCode> {
    let token = match &args.token_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading the token file `{}`", f.display()))?,
        None => std::env::var("TENANT_PROXY_APPROVER_TOKEN")
            .context("give the approver token with --token-file or TENANT_PROXY_APPROVER_TOKEN")?,
    };
    let token = token.trim();
    let tenant = args
        .tenant
        .context("--tenant names the approver's tenant")?;
    let base = format!("/v1/tenants/{tenant}/holds");
    let (method, path, body) = match &args.command {
        ApprovalsCommand::List { .. } => ("GET", base, None),
        ApprovalsCommand::Show { hold } => ("GET", format!("{base}/{hold}"), None),
        ApprovalsCommand::Approve { hold, reason } => (
            "POST",
            format!("{base}/{hold}/approve"),
            Some(serde_json::json!({ "reason": reason }).to_string()),
        ),
        ApprovalsCommand::Deny { hold, reason } => (
            "POST",
            format!("{base}/{hold}/deny"),
            Some(serde_json::json!({ "reason": reason }).to_string()),
        ),
    };
    let answer = call(args.addr, method, &path, token, body.as_deref())?;
    match args.command {
        ApprovalsCommand::List { json: false } => {
            let holds = answer["holds"].as_array().cloned().unwrap_or_default();
            println!(
                "{:<32}  {:<10}  {:<6}  {:<40}  {:>8}",
                "HOLD", "WORKLOAD", "METHOD", "DESTINATION", "EXPIRES"
            );
            let now = crate::approvals::now_ms();
            for h in &holds {
                // Written by the agent: shown escaped (see `crate::shown`).
                let dest = format!(
                    "{}{}",
                    shown(h["host"].as_str().unwrap_or("-")),
                    shown(h["path"].as_str().unwrap_or(""))
                );
                let left = h["deadline_ms"].as_u64().unwrap_or(0).saturating_sub(now) / 1000;
                println!(
                    "{:<32}  {:<10}  {:<6}  {:<40}  {:>7}s",
                    shown(h["id"].as_str().unwrap_or("-")),
                    shown(h["workload"].as_str().unwrap_or("-")),
                    shown(h["method"].as_str().unwrap_or("-")),
                    dest,
                    left
                );
            }
            println!("{} pending", holds.len());
        }
        _ => println!(
            "{}",
            crate::shown::json_shown(&serde_json::to_string_pretty(&answer)?)
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// One call to the approvals API (plain HTTP/1.1 on loopback or a private network): the JSON
/// answer, or the refusal's message and code as the error.
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("the approvals API at {addr} does not answer"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let (status, bytes) = super::admin::read_answer(stream, "the approvals API")?;
    let answer: serde_json::Value = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "not JSON: {}",
            shown(String::from_utf8_lossy(&bytes).trim())
        )
    })?;
    if status.split_whitespace().nth(1) != Some("200") {
        anyhow::bail!(
            "{} ({})",
            shown(answer["error"]["message"].as_str().unwrap_or("refused")),
            shown(answer["error"]["code"].as_str().unwrap_or("unknown"))
        );
    }
    Ok(answer)
}
