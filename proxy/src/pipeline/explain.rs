//! `tenant-proxy policy explain`: what the running proxy would decide for a described request,
//! and why.
//!
//! The described request goes through the proxy's own admission chain ([`super::admit`]) with
//! the [`DecideOnly`] effects: the target is parsed, the body read, the facts built and every
//! question put exactly as for a real request (the `http` decision, each MCP tool, resource and
//! prompt, each `use_credential`, the price lookup), so what it prints is what the proxy would
//! do, by construction. What is not decided: identity (the caller names the tenant and
//! workload), the egress (SSRF) check (nothing is resolved), and whether ceilings have room
//! (nothing is reserved).
//!
//! Every action the proxy asks is covered: `http` (with each `use_credential` for the handles
//! in the described request and, toward an MCP server, each `mcp_tool_call`, `mcp_resource` and
//! `mcp_prompt` in its body), and for `--method CONNECT --url host:port` the tunnel's `connect`
//! and `connect_opaque`, with the mode it would get.

use std::sync::Arc;

use pingora::http::RequestHeader;
use serde::Serialize;

use super::admit::{self, Ask, BodySource, Caller, DecideOnly};
use super::decide::Observer;
use super::record::{Trail, TunnelMode};
use crate::config::StaticConfig;
use crate::credentials::binding::Position;
use crate::error::Deny;
use crate::identity::token::VerifiedToken;
use crate::identity::{IdentitySourceKind, ResolvedIdentity};
use crate::ids::{TenantId, WorkloadId};
use crate::policy::{Decision, HttpRequestFacts, ItemKind};
use crate::snapshot::Snapshot;
use crate::tls::ca::LeafMinter;

/// A request to explain.
#[derive(Debug, Clone, Default)]
pub struct Described {
    /// Tenant id.
    pub tenant: String,
    /// Workload id.
    pub workload: String,
    /// Method, e.g. `POST`.
    pub method: String,
    /// An absolute URL (forward-proxy request) or a route-mode path such as `/openai/v1/chat`.
    pub url: String,
    /// Request headers, `Name: value`.
    pub headers: Vec<String>,
    /// Request body.
    pub body: Option<Vec<u8>>,
    /// Scopes the workload token would carry.
    pub scopes: Vec<String>,
    /// Whether the run id would come from a signed token.
    pub run_signed: bool,
    /// When the request arrives (Unix second), for `hour` and `weekday`.
    pub at_unix: i64,
}

/// The facts the policies saw.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainedFacts {
    /// `http` or `https`.
    pub scheme: String,
    /// Destination host.
    pub host: String,
    /// Destination port.
    pub port: u16,
    /// Method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Model the body names.
    pub model: Option<String>,
    /// Route name in route mode.
    pub route: Option<String>,
    /// Whether the run is signed.
    pub run_signed: bool,
    /// Token scopes.
    pub scopes: Vec<String>,
    /// The destination's region, when configuration tags it.
    pub destination_region: Option<String>,
    /// Hour in the tenant's time zone.
    pub hour: u8,
    /// Weekday in the tenant's time zone.
    pub weekday: String,
}

/// One `use_credential` decision.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainedCredential {
    /// Credential name (never its value).
    pub name: String,
    /// `header`, `query` or `body`.
    pub position: String,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// Deciding policy ids.
    pub policy_ids: Vec<String>,
    /// Evaluation errors.
    pub errors: Vec<String>,
}

/// One `mcp_tool_call` decision, for a `tools/call` in a body sent to an MCP server.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainedTool {
    /// The `[[mcp.servers]]` name.
    pub server: String,
    /// The tool's name.
    pub tool: String,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// Deciding policy ids.
    pub policy_ids: Vec<String>,
    /// Evaluation errors.
    pub errors: Vec<String>,
}

/// One `mcp_resource` or `mcp_prompt` decision, for a resource read or a prompt get in a body
/// sent to an MCP server.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainedMcpItem {
    /// The `[[mcp.servers]]` name.
    pub server: String,
    /// The resource's URI or the prompt's name.
    pub name: String,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// Deciding policy ids.
    pub policy_ids: Vec<String>,
    /// Evaluation errors.
    pub errors: Vec<String>,
}

/// The MCP questions asked about one request, in order.
#[derive(Debug, Clone, Default)]
struct ExplainedMcp {
    tools: Vec<ExplainedTool>,
    resources: Vec<ExplainedMcpItem>,
    prompts: Vec<ExplainedMcpItem>,
}

/// What the proxy would do, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The reason code the refusal would carry (`allowed` when allowed).
    pub reason: String,
    /// The refusal message, when denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Ids of the `http` policies that decided.
    pub policy_ids: Vec<String>,
    /// Evaluation errors (they deny).
    pub errors: Vec<String>,
    /// The facts, when the target could be parsed.
    pub facts: Option<ExplainedFacts>,
    /// The `use_credential` questions asked, in order.
    pub credentials: Vec<ExplainedCredential>,
    /// The `mcp_tool_call` questions asked, in order (requests to MCP servers only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mcp_tools: Vec<ExplainedTool>,
    /// The `mcp_resource` questions asked, in order (requests to MCP servers only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mcp_resources: Vec<ExplainedMcpItem>,
    /// The `mcp_prompt` questions asked, in order (requests to MCP servers only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mcp_prompts: Vec<ExplainedMcpItem>,
    /// What the shadow (report-only) policies would decide, when configured.
    pub shadow: Option<crate::policy::shadow::ShadowDecision>,
    /// A marked permit's approval: `required` (the proxy would hold the request for a person)
    /// or `would_hold` (a shadow rule), with the marked permits' ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<crate::audit::ApprovalFields>,
    /// For a `CONNECT`: the tunnel's mode, `intercept`, `opaque` (`connect_opaque` permitted)
    /// or `plain` (a plain-HTTP port), when it would open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<&'static str>,
}

/// Why a request could not be explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExplainError {
    /// The tenant or workload is not in the configuration (the CLI exits 2).
    UnknownIdentity(String),
    /// The described request is malformed.
    Invalid(String),
}

impl std::fmt::Display for ExplainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExplainError::UnknownIdentity(m) | ExplainError::Invalid(m) => f.write_str(m),
        }
    }
}

/// What explain watches the chain ask.
#[derive(Debug, Default)]
struct Watch {
    facts: Option<ExplainedFacts>,
    credentials: Vec<ExplainedCredential>,
    mcp: ExplainedMcp,
}

impl Observer for Watch {
    fn facts(&mut self, f: &HttpRequestFacts<'_>) {
        self.facts = Some(ExplainedFacts {
            scheme: f.scheme.to_string(),
            host: f.host.to_string(),
            port: f.port,
            method: f.method.to_string(),
            path: f.path.to_string(),
            model: f.model.map(String::from),
            route: f.route.map(String::from),
            run_signed: f.run_signed,
            scopes: f.scopes.to_vec(),
            destination_region: f.destination_region.map(String::from),
            hour: f.hour,
            weekday: f.weekday.to_string(),
        });
    }

    fn credential_use(&mut self, name: &str, position: Position, decision: &Decision) {
        self.credentials.push(ExplainedCredential {
            name: name.to_string(),
            position: position.as_str().to_string(),
            decision: verdict(decision),
            policy_ids: decision.policy_ids.clone(),
            errors: decision.errors.clone(),
        });
    }

    fn mcp_item(&mut self, server: &str, item: ItemKind, name: &str, decision: &Decision) {
        let entry = ExplainedMcpItem {
            server: server.to_string(),
            name: name.to_string(),
            decision: verdict(decision),
            policy_ids: decision.policy_ids.clone(),
            errors: decision.errors.clone(),
        };
        match item {
            ItemKind::Tool => self.mcp.tools.push(ExplainedTool {
                server: entry.server,
                tool: entry.name,
                decision: entry.decision,
                policy_ids: entry.policy_ids,
                errors: entry.errors,
            }),
            ItemKind::Resource => self.mcp.resources.push(entry),
            ItemKind::Prompt => self.mcp.prompts.push(entry),
        }
    }
}

fn verdict(d: &Decision) -> &'static str {
    if d.allowed {
        "allow"
    } else {
        "deny"
    }
}

/// Explains `req` against `snapshot` (loaded from the configuration exactly as `run` loads it)
/// by running the admission chain on it with effects that decide and change nothing.
pub async fn explain(
    config: &StaticConfig,
    snapshot: Arc<Snapshot>,
    minter: Option<Arc<LeafMinter>>,
    req: &Described,
) -> Result<Explanation, ExplainError> {
    let unknown = |what: String| ExplainError::UnknownIdentity(what);
    let tenant = TenantId::new(&req.tenant).map_err(|e| unknown(e.to_string()))?;
    let workload = WorkloadId::new(&req.workload).map_err(|e| unknown(e.to_string()))?;
    if !snapshot.tenants.tenants.contains_key(&tenant) {
        return Err(unknown(format!(
            "unknown tenant `{tenant}`: the configuration's tenant file does not define it"
        )));
    }
    if !snapshot.tenants.has_workload(&tenant, &workload) {
        return Err(unknown(format!(
            "unknown workload `{workload}` of tenant `{tenant}`"
        )));
    }
    // The method as given, not upper-cased: the proxy refuses `delete` (`bad_request`), and
    // an explanation that read it as `DELETE` would describe a request the proxy never decides.
    let connect = req.method == "CONNECT";
    let header = if connect {
        connect_header(&req.url)
    } else {
        request_header(req)
    }
    .map_err(ExplainError::Invalid)?;
    // The described token: its scopes, and a signed run when asked for.
    let token = VerifiedToken {
        tenant: tenant.clone(),
        workload: workload.clone(),
        run_id: req.run_signed.then(|| "explain".to_string()),
        run_budget: None,
        scopes: req.scopes.clone(),
        initiator: None,
        correlation_id: None,
        jti: None,
        expires_at: u64::MAX,
        accepted: Default::default(),
    };
    let who = ResolvedIdentity {
        tenant,
        workload,
        source: IdentitySourceKind::Token,
        token: Some(token),
        certificate: None,
    };
    let fx = DecideOnly {
        config,
        now: req.at_unix,
        minter,
    };
    let mut trail = Trail::new(Arc::from("explain"), req.method.clone());
    let mut watch = Watch::default();
    let authority = connect_authority(&header);
    let ask = match &authority {
        Some((host, port)) => Ask::Connect {
            header: &header,
            ssl: None,
            host,
            port: *port,
            original: None,
        },
        None => Ask::Http {
            source: BodySource::Given(&header, req.body.clone().map(bytes::Bytes::from)),
            tunnel: None,
        },
    };
    let outcome = admit::admit(
        &fx,
        snapshot,
        Caller::Named(Box::new(who)),
        ask,
        &mut trail,
        &mut watch,
    )
    .await;
    let decision = trail.decision.take();
    let base = match &outcome {
        Ok(_) => {
            let (policy_ids, errors) = decision
                .map(|d| (d.policy_ids, d.errors))
                .unwrap_or_default();
            Explanation {
                decision: "allow",
                reason: "allowed".into(),
                message: None,
                policy_ids,
                errors,
                facts: None,
                credentials: Vec::new(),
                mcp_tools: Vec::new(),
                mcp_resources: Vec::new(),
                mcp_prompts: Vec::new(),
                shadow: None,
                approval: None,
                tunnel: trail.tunnel_mode.map(TunnelMode::as_str),
            }
        }
        Err(deny) => refused(deny, decision, None, Vec::new()),
    };
    Ok(Explanation {
        facts: watch.facts,
        credentials: watch.credentials,
        mcp_tools: watch.mcp.tools,
        mcp_resources: watch.mcp.resources,
        mcp_prompts: watch.mcp.prompts,
        shadow: trail.shadow.take(),
        approval: trail.approval.take(),
        ..base
    })
}

fn refused(
    deny: &Deny,
    decision: Option<Decision>,
    facts: Option<ExplainedFacts>,
    credentials: Vec<ExplainedCredential>,
) -> Explanation {
    let (_, code, message) = deny.describe();
    let (policy_ids, errors) = decision
        .map(|d| (d.policy_ids, d.errors))
        .unwrap_or_default();
    Explanation {
        decision: "deny",
        reason: code.as_str().to_string(),
        message: Some(message),
        policy_ids,
        errors,
        facts,
        credentials,
        mcp_tools: Vec::new(),
        mcp_resources: Vec::new(),
        mcp_prompts: Vec::new(),
        shadow: None,
        approval: None,
        tunnel: None,
    }
}

/// The `CONNECT` head for `host:port`, as a client would send it.
fn connect_header(url: &str) -> Result<RequestHeader, String> {
    let bad = || {
        format!("a `CONNECT` is explained for `--url host:port`, e.g. `api.openai.com:443`; got `{url}`")
    };
    let authority: http::uri::Authority = url.parse().map_err(|_| bad())?;
    if authority.port_u16().is_none() || authority.as_str().contains('@') {
        return Err(bad());
    }
    let mut header = RequestHeader::build("CONNECT", url.as_bytes(), None).map_err(|_| bad())?;
    header
        .insert_header(http::header::HOST, url)
        .map_err(|_| bad())?;
    Ok(header)
}

/// A `CONNECT` head's host (normalized as the proxy normalizes it) and port.
fn connect_authority(header: &RequestHeader) -> Option<(String, u16)> {
    if header.method != http::Method::CONNECT {
        return None;
    }
    let target = std::str::from_utf8(header.raw_path()).ok()?;
    let authority: http::uri::Authority = target.parse().ok()?;
    let host = crate::target::normalize_host(authority.host()).ok()?;
    Some((host, authority.port_u16()?))
}

/// The request head the proxy would receive: an absolute-form target (with `Host` from the URL
/// unless given) or an origin-form route-mode path.
fn request_header(req: &Described) -> Result<RequestHeader, String> {
    let method = http::Method::from_bytes(req.method.as_bytes())
        .map_err(|_| format!("`{}` is not an HTTP method", req.method))?;
    let mut header = RequestHeader::build(method, req.url.as_bytes(), None)
        .map_err(|e| format!("`{}` is not a request target: {e}", req.url))?;
    for h in &req.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("header `{h}` is not `Name: value`"))?;
        header
            .append_header(name.trim().to_string(), value.trim())
            .map_err(|e| format!("header `{h}`: {e}"))?;
    }
    if !header.headers.contains_key(http::header::HOST) {
        if let Some(authority) = header.uri.authority().map(|a| a.to_string()) {
            header
                .insert_header(http::header::HOST, authority)
                .map_err(|e| format!("host: {e}"))?;
        }
    }
    Ok(header)
}

/// The explanation as text, one fact per line.
pub fn render_text(e: &Explanation) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    };
    let mut out = format!("decision:    {}\nreason:      {}\n", e.decision, e.reason);
    if let Some(m) = &e.message {
        out.push_str(&format!("message:     {m}\n"));
    }
    out.push_str(&format!("policies:    {}\n", list(&e.policy_ids)));
    if let Some(mode) = e.tunnel {
        out.push_str(&format!("tunnel:      {mode}\n"));
    }
    out.push_str(&format!("errors:      {}\n", list(&e.errors)));
    if let Some(f) = &e.facts {
        out.push_str(&format!(
            "facts:       {} {}://{}:{}{} model={} route={} destination_region={} run_signed={} scopes=[{}] local={} {:02}h\n",
            f.method,
            f.scheme,
            f.host,
            f.port,
            f.path,
            f.model.as_deref().unwrap_or("-"),
            f.route.as_deref().unwrap_or("-"),
            f.destination_region.as_deref().unwrap_or("-"),
            f.run_signed,
            f.scopes.join(" "),
            f.weekday,
            f.hour
        ));
    }
    if let Some(s) = &e.shadow {
        out.push_str(&format!(
            "shadow:      {} [{}] ({})\n",
            s.decision,
            s.policy_ids.join(", "),
            s.outcome.as_str()
        ));
    }
    if let Some(a) = &e.approval {
        out.push_str(&format!(
            "approval:    {} [{}]\n",
            a.outcome,
            a.policy_ids.join(", ")
        ));
    }
    for t in &e.mcp_tools {
        out.push_str(&format!(
            "mcp tool:    {} on {}: {} [{}]{}\n",
            t.tool,
            t.server,
            t.decision,
            t.policy_ids.join(", "),
            if t.errors.is_empty() {
                String::new()
            } else {
                format!(" errors: {}", t.errors.join("; "))
            }
        ));
    }
    for (label, items) in [
        ("mcp resource:", &e.mcp_resources),
        ("mcp prompt:  ", &e.mcp_prompts),
    ] {
        for i in items {
            out.push_str(&format!(
                "{label} {} on {}: {} [{}]{}\n",
                i.name,
                i.server,
                i.decision,
                i.policy_ids.join(", "),
                if i.errors.is_empty() {
                    String::new()
                } else {
                    format!(" errors: {}", i.errors.join("; "))
                }
            ));
        }
    }
    for c in &e.credentials {
        out.push_str(&format!(
            "credential:  {} in {}: {} [{}]{}\n",
            c.name,
            c.position,
            c.decision,
            c.policy_ids.join(", "),
            if c.errors.is_empty() {
                String::new()
            } else {
                format!(" errors: {}", c.errors.join("; "))
            }
        ));
    }
    // An allow here is the policies' and the proxy's checks of the request itself; what the
    // proxy checks only when the request comes may still refuse it.
    out.push_str(
        "not checked: the egress guard (where the host resolves: loopback, private and metadata \
         addresses, this proxy itself) and whether the ceilings have room\n",
    );
    out
}
