//! `tenant-proxy policy explain`: what the running proxy would decide for a described request,
//! and why.
//!
//! The request goes through the same functions the proxy uses: the target is parsed as the
//! proxy parses it (absolute URL for forward-proxy requests, `/prefix/…` for route mode), the
//! model is read from the body as the proxy reads it, the facts are built and decided by the same
//! code, and when the request is allowed its `$CRED{}` handles are resolved as the proxy would,
//! including each `use_credential` decision. A request to an MCP server has each `tools/call`,
//! `resources/read` and `prompts/get` in its body decided (`mcp_tool_call`, `mcp_resource`,
//! `mcp_prompt`), as the proxy does. Identity, egress (SSRF) checks and limits are not policy
//! and are not evaluated: the caller names the tenant and workload.

use std::sync::Arc;

use pingora::http::RequestHeader;
use serde::Serialize;

use super::Decision;
use crate::error::Deny;
use crate::identity::IdentitySourceKind;
use crate::identity::ResolvedIdentity;
use crate::ids::{TenantId, WorkloadId};
use crate::snapshot::Snapshot;

/// The body size explain reads (the proxy's default `max_body_bytes`; explain has no static
/// configuration).
const EXPLAIN_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

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
    pub shadow: Option<super::shadow::ShadowDecision>,
}

/// Explains `req` against `snapshot` (loaded from the configuration exactly as `run` loads it).
pub fn explain(snapshot: &Snapshot, req: &Described) -> Result<Explanation, String> {
    let tenant = TenantId::new(&req.tenant).map_err(|e| e.to_string())?;
    let workload = WorkloadId::new(&req.workload).map_err(|e| e.to_string())?;
    let header = request_header(req)?;
    let who = ResolvedIdentity {
        tenant,
        workload,
        source: IdentitySourceKind::Binding,
        token: None,
    };
    let mut context = crate::context::TenantContext::new(
        who,
        Arc::from("explain"),
        crate::proxy::traceparent(&header.headers),
    );
    context.scopes = req.scopes.clone();
    context.run.signed = req.run_signed;

    let host = header.headers.get(http::header::HOST).map(|v| v.as_bytes());
    let destination =
        match crate::target::resolve(header.raw_path(), host, &snapshot.tenants.routes) {
            Ok(d) => d,
            Err(e) => return Ok(refused(&e.into(), None, None, Vec::new())),
        };
    // As the proxy reads it: an MCP server's body is judged by the MCP check below, and toward
    // an LLM destination a body is classified (decoded, BOM removed) or refused.
    let read = match &req.body {
        None => None,
        Some(body) => {
            let to = crate::proxy::body_destination(
                &snapshot.tenants.mcp,
                &destination,
                &Default::default(),
            );
            let body = bytes::Bytes::from(body.clone());
            match crate::body::classify(body, &header.headers, to, EXPLAIN_MAX_BODY_BYTES) {
                Ok(read) => Some(read),
                Err(e) => return Ok(refused(&e.into(), None, None, Vec::new())),
            }
        }
    };
    let model = read.as_ref().and_then(|r| r.llm.model.clone());
    let facts = crate::proxy::http_facts(
        snapshot,
        &context,
        &destination,
        &header,
        model.as_deref(),
        req.at_unix,
    );
    let explained_facts = ExplainedFacts {
        scheme: facts.scheme.to_string(),
        host: facts.host.to_string(),
        port: facts.port,
        method: facts.method.to_string(),
        path: facts.path.to_string(),
        model: facts.model.map(String::from),
        route: facts.route.map(String::from),
        run_signed: facts.run_signed,
        scopes: facts.scopes.to_vec(),
        destination_region: facts.destination_region.map(String::from),
        hour: facts.hour,
        weekday: facts.weekday.to_string(),
    };
    let decision = crate::proxy::decide_http(snapshot, &context, &facts);
    let shadow = crate::proxy::shadow_http(snapshot, &context, &facts, &decision);
    if !decision.allowed {
        return Ok(Explanation {
            shadow,
            ..refused(
                &Deny::PolicyDenied,
                Some(decision),
                Some(explained_facts),
                Vec::new(),
            )
        });
    }
    let (mcp, mcp_refusal) = explain_mcp(snapshot, &context, &destination, &facts, &header, req);
    if let Some(deny) = mcp_refusal {
        return Ok(Explanation {
            shadow,
            mcp_tools: mcp.tools,
            mcp_resources: mcp.resources,
            mcp_prompts: mcp.prompts,
            ..refused(&deny, Some(decision), Some(explained_facts), Vec::new())
        });
    }
    // The body as the proxy holds it (decoded, for an LLM destination).
    let decoded = read.as_ref().is_some_and(|r| r.decoded);
    let body = read.map(|r| r.body);
    let mut uses = Vec::new();
    let applied = crate::proxy::resolve_credentials(
        snapshot,
        &context,
        &destination,
        &facts,
        &header,
        body.as_ref(),
        decoded,
        Some(&mut uses),
    );
    let credentials = uses
        .into_iter()
        .map(|u| ExplainedCredential {
            name: u.name,
            position: u.position.as_str().to_string(),
            decision: if u.decision.allowed { "allow" } else { "deny" },
            policy_ids: u.decision.policy_ids,
            errors: u.decision.errors,
        })
        .collect();
    Ok(match applied {
        Ok(_) => Explanation {
            decision: "allow",
            reason: "allowed".into(),
            message: None,
            policy_ids: decision.policy_ids,
            errors: decision.errors,
            facts: Some(explained_facts),
            credentials,
            mcp_tools: mcp.tools,
            mcp_resources: mcp.resources,
            mcp_prompts: mcp.prompts,
            shadow,
        },
        Err(refusal) => Explanation {
            shadow,
            mcp_tools: mcp.tools,
            mcp_resources: mcp.resources,
            mcp_prompts: mcp.prompts,
            ..refused(
                &Deny::Credential(refusal),
                Some(decision),
                Some(explained_facts),
                credentials,
            )
        },
    })
}

/// The MCP server a described request goes to. Without a running proxy there is no resolved
/// address: the server is recognized by its destination (host, port and path) only.
fn mcp_server<'a>(
    snapshot: &'a Snapshot,
    destination: &crate::target::Destination,
) -> Option<&'a crate::mcp::config::McpServer> {
    snapshot
        .tenants
        .mcp
        .server_for(destination, None, &Default::default())
}

/// For a request to an MCP server, the decisions the proxy would take about its tools,
/// resources and prompts (it stops at the first denial) and its refusal, if any.
fn explain_mcp(
    snapshot: &Snapshot,
    context: &crate::context::TenantContext,
    destination: &crate::target::Destination,
    facts: &super::HttpRequestFacts<'_>,
    header: &RequestHeader,
    req: &Described,
) -> (ExplainedMcp, Option<Deny>) {
    let mut explained = ExplainedMcp::default();
    let Some(server) = mcp_server(snapshot, destination) else {
        return (explained, None);
    };
    let mut decide = |item: crate::mcp::jsonrpc::ItemKind, name: &str| {
        let decision =
            crate::mcp::authorize::ask(&snapshot.policy, context, &server.name, item, name, facts);
        let verdict = if decision.allowed { "allow" } else { "deny" };
        let entry = ExplainedMcpItem {
            server: server.name.clone(),
            name: name.to_string(),
            decision: verdict,
            policy_ids: decision.policy_ids.clone(),
            errors: decision.errors.clone(),
        };
        match item {
            crate::mcp::jsonrpc::ItemKind::Tool => explained.tools.push(ExplainedTool {
                server: entry.server,
                tool: entry.name,
                decision: verdict,
                policy_ids: entry.policy_ids,
                errors: entry.errors,
            }),
            crate::mcp::jsonrpc::ItemKind::Resource => explained.resources.push(entry),
            crate::mcp::jsonrpc::ItemKind::Prompt => explained.prompts.push(entry),
        }
        decision
    };
    let outcome = crate::mcp::admit(
        &server.name,
        &header.method,
        req.body.as_deref(),
        &mut decide,
    );
    let refusal = outcome.err().map(|r| Deny::from(&r));
    (explained, refusal)
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
    }
}

/// The request head the proxy would receive: an absolute-form target (with `Host` from the URL
/// unless given) or an origin-form route-mode path.
fn request_header(req: &Described) -> Result<RequestHeader, String> {
    let method = http::Method::from_bytes(req.method.to_ascii_uppercase().as_bytes())
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
    out
}
