//! The canonical audit record. It holds no secrets, query values or bodies: only ids, the
//! decision and its reason, sizes, timings and a body digest. Field order is fixed; the writer
//! chains records over their serialized bytes (see [`super::chain`]).

use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::line::{Fields, Members};
use crate::context::TenantContext;
use crate::reason::ReasonCode;

/// Allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Forwarded upstream.
    Allow,
    /// Refused by the proxy.
    Deny,
}

impl Decision {
    /// `allow` or `deny` (the metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// A tunnel's id (its `CONNECT` request id) and mode (`intercept` or `opaque`).
#[derive(Debug, Clone, Serialize)]
pub struct TunnelFields {
    /// The `CONNECT` request's id.
    pub id: String,
    /// `intercept` or `opaque`.
    pub mode: &'static str,
}

/// What an MCP request did: the server, the tools it called, the resources it read and the
/// prompts it got (each in body order, each decided by its own action), and how many items
/// were removed from the response's list results.
#[derive(Debug, Clone, Serialize)]
pub struct McpFields {
    /// The `[[mcp.servers]]` name.
    pub server: String,
    /// Tool names of the `tools/call`s (the denied one, for a `tool_denied` refusal).
    pub tools_called: Vec<String>,
    /// Tools removed from the response's `tools/list` results.
    #[serde(skip_serializing_if = "is_zero")]
    pub tools_hidden: u64,
    /// URIs of the resources read (query values removed, like `path`; the denied one for a
    /// `resource_denied` refusal).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources_read: Vec<String>,
    /// Names of the prompts got (the denied one, for a `prompt_denied` refusal).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prompts_got: Vec<String>,
    /// Resources and resource templates removed from the response's list results.
    #[serde(skip_serializing_if = "is_zero")]
    pub resources_hidden: u64,
    /// Prompts removed from the response's `prompts/list` results.
    #[serde(skip_serializing_if = "is_zero")]
    pub prompts_hidden: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a chained line records. Lines written before this field existed are requests (or
/// tunnels, with method `CONNECT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// One proxied request, allowed or refused.
    Request,
    /// One `CONNECT` tunnel.
    Tunnel,
    /// The first request of a signed run ([`RunEvent`]).
    RunStarted,
    /// A signed run ended: its token expired or it was closed ([`RunEvent`]).
    RunSummary,
    /// A request was held for a person's approval ([`ApprovalEvent`]).
    ApprovalRequested,
    /// An approver approved a hold.
    ApprovalGranted,
    /// An approver denied a hold.
    ApprovalDenied,
    /// Nobody decided on a hold within its timeout.
    ApprovalExpired,
    /// A hold ended undecided: its agent went away or its proxy shut down.
    ApprovalCancelled,
    /// A waiting hold lost its owner (the replica its agent waited on went away, its lease
    /// lapsed): found so by an approver's call or by the owner itself; never forwarded.
    ApprovalOrphaned,
    /// An approver of this tenant asked about holds their token does not cover (another
    /// tenant's, a group they are not in): refused.
    ApprovalRefused,
}

/// One request's record.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// `request`, or `tunnel` for a `CONNECT` tunnel's own record.
    pub event: EventKind,
    /// RFC 3339 UTC time the request arrived.
    pub time: String,
    /// Tenant id (also the partition).
    pub tenant: String,
    /// Workload id.
    pub workload: String,
    /// Principal kind.
    pub principal_kind: crate::context::PrincipalKind,
    /// Identity source that vouched for the workload.
    pub identity_source: &'static str,
    /// Run id.
    pub run_id: String,
    /// Whether the run id was signed.
    pub run_signed: bool,
    /// The identifying token's id (`jti`), when a token with one identified the caller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// Request id.
    pub request_id: String,
    /// W3C trace id.
    pub trace_id: String,
    /// Listener name.
    pub listener: String,
    /// HTTP method.
    pub method: String,
    /// Upstream scheme, when the target was parsed.
    pub scheme: Option<&'static str>,
    /// Upstream host.
    pub host: Option<String>,
    /// Upstream port.
    pub port: Option<u16>,
    /// Path without query values.
    pub path: Option<String>,
    /// Route name in route mode.
    pub route: Option<String>,
    /// Model named by the JSON body.
    pub model: Option<String>,
    /// The other models the body names (a Bedrock inline agent's collaborators, a Realtime
    /// session's transcription model), each decided as `model` is; omitted when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_models: Vec<String>,
    /// Credential names substituted (or the one refused). Never values.
    pub credentials: Vec<String>,
    /// LLM usage read from the response, when it reported any.
    pub usage: Option<crate::usage::Usage>,
    /// What was reserved against ceilings before the call: tokens, cost (micro-units), tool calls.
    pub reserved: Option<crate::limits::Charge>,
    /// What the call was settled at: tokens and cost it used, tool calls it made.
    pub settled: Option<crate::limits::Charge>,
    /// For `budget_exhausted`: which ceiling refused (`run`, `day`, `month`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<&'static str>,
    /// The response stream was ended early because a budget ran out.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stream_cut: bool,
    /// Why the proxy ended a relay (an opaque tunnel, an upgraded connection) whose identity
    /// was no longer accepted: `token_revoked`, `token_expired`, `certificate_lapsed`,
    /// `identity_withdrawn` or `revocations_unavailable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<&'static str>,
    /// The `CONNECT` tunnel this record is, or that the request came through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelFields>,
    /// MCP server, tool calls and hidden tools, for requests to an MCP server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpFields>,
    /// The approval hold this request went through, or that it would have (shadow).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalFields>,
    /// Decision.
    pub decision: Decision,
    /// Reason code (`allowed` or the refusal's code).
    pub reason: ReasonCode,
    /// Ids of the Cedar policies that decided.
    pub policy_ids: Vec<String>,
    /// The version of the tenant's policy set that decided (16 hex digits of its files'
    /// digest), when a policy was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<std::sync::Arc<str>>,
    /// Cedar evaluation errors (they deny).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policy_errors: Vec<String>,
    /// What the shadow (report-only) policies would have decided, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<crate::policy::shadow::ShadowDecision>,
    /// Status sent to the client.
    pub status: u16,
    /// Total time in the proxy, milliseconds.
    pub latency_ms: f64,
    /// Time from upstream connection to upstream response header, milliseconds.
    pub upstream_latency_ms: Option<f64>,
    /// The upstream's own id for the request (its `x-request-id`), which its support asks for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_request_id: Option<String>,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// SHA-256 of the request body, hex.
    pub request_body_sha256: Option<String>,
}

impl AuditRecord {
    /// What every record of `tenant`'s request shares: who, which request, when, the outcome;
    /// everything about the call itself empty. Callers fill in the rest with struct update
    /// syntax, so a new field is one place to change.
    pub fn of(
        tenant: &TenantContext,
        listener: &str,
        method: String,
        elapsed: Duration,
        decision: Decision,
        reason: ReasonCode,
        status: u16,
    ) -> Self {
        Self {
            // A tunnel's own record is the only one made for a `CONNECT`: requests inside an
            // intercepted tunnel carry their own method.
            event: if method == "CONNECT" {
                EventKind::Tunnel
            } else {
                EventKind::Request
            },
            time: crate::clock::rfc3339(SystemTime::now() - elapsed),
            tenant: tenant.tenant.to_string(),
            workload: tenant.workload.to_string(),
            principal_kind: tenant.principal_kind,
            identity_source: tenant.identity_source.as_str(),
            run_id: tenant.run.id.clone(),
            run_signed: tenant.run.signed,
            token_id: tenant.token_id.clone(),
            request_id: tenant.request_id.to_string(),
            trace_id: tenant.trace.trace_id.clone(),
            listener: listener.to_string(),
            method,
            scheme: None,
            host: None,
            port: None,
            path: None,
            route: None,
            model: None,
            other_models: Vec::new(),
            credentials: Vec::new(),
            usage: None,
            reserved: None,
            settled: None,
            ceiling: None,
            stream_cut: false,
            ended: None,
            tunnel: None,
            mcp: None,
            approval: None,
            decision,
            reason,
            policy_ids: Vec::new(),
            policy_version: None,
            policy_errors: Vec::new(),
            shadow: None,
            status,
            latency_ms: elapsed.as_secs_f64() * 1000.0,
            upstream_latency_ms: None,
            upstream_request_id: None,
            bytes_in: 0,
            bytes_out: 0,
            request_body_sha256: None,
        }
    }
}

impl Fields for AuditRecord {
    /// Every request writes one: member by member (see [`super::line`]), in field order, the
    /// same bytes as the derived `Serialize`.
    fn write_fields(&self, m: &mut Members<'_>) -> serde_json::Result<()> {
        // Destructured without `..`: a new field does not compile until it is written here.
        let AuditRecord {
            event,
            time,
            tenant,
            workload,
            principal_kind,
            identity_source,
            run_id,
            run_signed,
            token_id,
            request_id,
            trace_id,
            listener,
            method,
            scheme,
            host,
            port,
            path,
            route,
            model,
            other_models,
            credentials,
            usage,
            reserved,
            settled,
            ceiling,
            stream_cut,
            ended,
            tunnel,
            mcp,
            approval,
            decision,
            reason,
            policy_ids,
            policy_version,
            policy_errors,
            shadow,
            status,
            latency_ms,
            upstream_latency_ms,
            upstream_request_id,
            bytes_in,
            bytes_out,
            request_body_sha256,
        } = self;
        m.value("event", event)?;
        m.str("time", time)?;
        m.str("tenant", tenant)?;
        m.str("workload", workload)?;
        m.value("principal_kind", principal_kind)?;
        m.str("identity_source", identity_source)?;
        m.str("run_id", run_id)?;
        m.bool("run_signed", *run_signed);
        if let Some(id) = token_id {
            m.str("token_id", id)?;
        }
        m.str("request_id", request_id)?;
        m.str("trace_id", trace_id)?;
        m.str("listener", listener)?;
        m.str("method", method)?;
        m.opt_str("scheme", *scheme)?;
        m.opt_str("host", host.as_deref())?;
        m.value("port", port)?;
        m.opt_str("path", path.as_deref())?;
        m.opt_str("route", route.as_deref())?;
        m.opt_str("model", model.as_deref())?;
        if !other_models.is_empty() {
            m.strs("other_models", other_models)?;
        }
        m.strs("credentials", credentials)?;
        m.value("usage", usage)?;
        m.value("reserved", reserved)?;
        m.value("settled", settled)?;
        if let Some(ceiling) = ceiling {
            m.str("ceiling", ceiling)?;
        }
        if *stream_cut {
            m.bool("stream_cut", true);
        }
        if let Some(ended) = ended {
            m.str("ended", ended)?;
        }
        if let Some(tunnel) = tunnel {
            m.value("tunnel", tunnel)?;
        }
        if let Some(mcp) = mcp {
            m.value("mcp", mcp)?;
        }
        if let Some(approval) = approval {
            m.value("approval", approval)?;
        }
        m.str("decision", decision.as_str())?;
        m.str("reason", reason.as_str())?;
        m.strs("policy_ids", policy_ids)?;
        if let Some(version) = policy_version {
            m.str("policy_version", version)?;
        }
        if !policy_errors.is_empty() {
            m.strs("policy_errors", policy_errors)?;
        }
        if let Some(shadow) = shadow {
            m.value("shadow", shadow)?;
        }
        m.uint("status", u64::from(*status));
        m.value("latency_ms", latency_ms)?;
        m.value("upstream_latency_ms", upstream_latency_ms)?;
        if let Some(id) = upstream_request_id {
            m.str("upstream_request_id", id)?;
        }
        m.uint("bytes_in", *bytes_in);
        m.uint("bytes_out", *bytes_out);
        m.opt_str("request_body_sha256", request_body_sha256.as_deref())
    }
}

impl Fields for RunEvent {
    fn write_fields(&self, m: &mut Members<'_>) -> serde_json::Result<()> {
        m.serde_members(self)
    }
}

impl Fields for ApprovalEvent {
    fn write_fields(&self, m: &mut Members<'_>) -> serde_json::Result<()> {
        m.serde_members(self)
    }
}

impl Fields for AuditEntry {
    fn write_fields(&self, m: &mut Members<'_>) -> serde_json::Result<()> {
        match self {
            AuditEntry::Request(r) => r.write_fields(m),
            AuditEntry::Run(r) => r.write_fields(m),
            AuditEntry::Approval(r) => r.write_fields(m),
        }
    }
}

pub use crate::limits::RunEnd;

/// What a `run_summary` reports, read from the limiter's run counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RunTotals {
    /// How the run ended.
    pub ended: RunEnd,
    /// Unix second it ended: its close, or its token's expiry plus the verifier's leeway.
    pub ended_at: u64,
    /// LLM tokens the run settled (counted when its budget caps tokens).
    pub tokens: u64,
    /// Cost in micro-units (counted when its budget caps cost).
    pub cost_micros: u64,
    /// Tool calls (counted when its budget caps tool calls).
    pub tool_calls: u64,
    /// Requests of the run the proxies saw, refused ones included.
    pub requests: u64,
    /// Requests of the run that were refused.
    pub refusals: u64,
    /// Seconds from the run's first request to its expiry or close.
    pub wall_time_s: u64,
}

/// A run-level event: `run_started` (the run's first request, once across replicas) or
/// `run_summary` (once, when the run's token expired or it was closed). Chained in the
/// tenant's partition like request records.
#[derive(Debug, Clone, Serialize)]
pub struct RunEvent {
    /// `run_started` or `run_summary`.
    pub event: EventKind,
    /// RFC 3339 UTC time of the event.
    pub time: String,
    /// Tenant id (also the partition).
    pub tenant: String,
    /// The workload of the run's first request (unknown to a replica that only closed it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// Run id (always a signed one).
    pub run_id: String,
    /// Unix second the run's token expires (`run_started`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// The run's budget from its token (`run_started`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<crate::identity::token::RunBudget>,
    /// The request that started the run (`run_started`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// What the run used (`run_summary`).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub totals: Option<RunTotals>,
}

/// What a request record says about its approval hold.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ApprovalFields {
    /// The hold's id (absent for a shadow "would hold").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<String>,
    /// `granted`, `denied`, `expired`, `cancelled`, `pending` (answered 202), or `would_hold`
    /// (shadow).
    pub outcome: &'static str,
    /// Who decided, when someone did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    /// The marked permits that asked for the hold.
    pub policy_ids: Vec<String>,
}

/// A hold's event: `approval_requested`, `approval_granted`, `approval_denied`,
/// `approval_expired`, `approval_cancelled` or `approval_refused`. Chained in the tenant's
/// partition like request records; the request record names the same `hold_id`.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalEvent {
    /// Which event.
    pub event: EventKind,
    /// RFC 3339 UTC time of the event.
    pub time: String,
    /// Tenant id (also the partition).
    pub tenant: String,
    /// The hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<String>,
    /// The held request's workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// The held request's run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The held request's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The approver (`sub` of their token), for a decision or a refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    /// The approver's reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the held request is (method, host, path, model, MCP tools, body digest, estimated
    /// cost), for `approval_requested`; for `approval_refused`, what was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    /// Seconds from the hold to the decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision_s: Option<f64>,
}

/// Any chained line's content.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum AuditEntry {
    /// A request or tunnel record.
    Request(Box<AuditRecord>),
    /// A run-level event.
    Run(Box<RunEvent>),
    /// An approval hold's event.
    Approval(Box<ApprovalEvent>),
}

impl AuditEntry {
    /// The tenant whose partition the line belongs to.
    pub fn tenant(&self) -> &str {
        match self {
            AuditEntry::Request(r) => &r.tenant,
            AuditEntry::Run(r) => &r.tenant,
            AuditEntry::Approval(r) => &r.tenant,
        }
    }
}

impl From<AuditRecord> for AuditEntry {
    fn from(r: AuditRecord) -> Self {
        AuditEntry::Request(Box::new(r))
    }
}

impl From<ApprovalEvent> for AuditEntry {
    fn from(r: ApprovalEvent) -> Self {
        AuditEntry::Approval(Box::new(r))
    }
}

impl From<RunEvent> for AuditEntry {
    fn from(r: RunEvent) -> Self {
        AuditEntry::Run(Box::new(r))
    }
}
