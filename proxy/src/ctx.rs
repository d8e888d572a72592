//! Per-request state. The immutable [`crate::context::TenantContext`] is built once, right after
//! identity, and every later phase takes it by reference; [`RequestCtx::default`] has no identity and no
//! authorization, so a phase reached without them refuses.

use std::sync::Arc;
use std::time::Instant;

use crate::body::BufferedBody;
use crate::credentials::apply::Applied;
use crate::credentials::scrub::Scrubber;

use crate::audit::AuditSlot;
use crate::error::Deny;

use crate::limits::stream::StreamGuard;
use crate::limits::{Admission, Charge};
use crate::policy::Decision;
use crate::pricing::Prices;
use crate::snapshot::Snapshot;
use crate::target::Destination;
use crate::usage::{Usage, UsageMeter};

/// Proof that a request was authorized for exactly this destination. Only
/// [`crate::proxy`]'s authorize step constructs it, after Cedar allowed the request.
#[derive(Debug)]
pub struct Permitted {
    pub(crate) destination: Destination,
    pub(crate) addr: std::net::SocketAddr,
}

impl Permitted {
    /// The address the egress guard checked; the only one that may be dialed.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The destination that was authorized.
    pub fn destination(&self) -> &Destination {
        &self.destination
    }
}

/// The outcome recorded for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Still in progress. SECURITY: a request whose outcome is still pending when it is recorded
    /// is recorded as an internal error, never as allowed: only a forward whose upstream answer
    /// arrived becomes [`Outcome::Forwarded`].
    Pending,
    /// Allowed and forwarded.
    Forwarded,
    /// Refused by the proxy, before or after forwarding.
    Refused(Deny),
}

/// pingora's per-request context.
#[derive(Debug)]
pub struct RequestCtx {
    /// Request id (also in the tenant context once it exists).
    pub request_id: Arc<str>,
    /// When the request arrived.
    pub started: Instant,
    /// The tenant context; `None` until identity is resolved.
    pub tenant: Option<Arc<crate::context::TenantContext>>,
    /// The configuration snapshot this request was admitted under; every later phase uses the
    /// same one, even if a reload lands mid-request.
    pub snapshot: Option<Arc<Snapshot>>,
    /// The target, once parsed.
    pub destination: Option<Destination>,
    /// Set only after Cedar allowed the request.
    pub permit: Option<Permitted>,
    /// The Cedar decision, for the audit record.
    pub decision: Option<Decision>,
    /// The shadow (report-only) policies' answer, for the audit record.
    pub shadow: Option<crate::policy::shadow::ShadowDecision>,
    /// The model named by the JSON body, if any.
    pub model: Option<String>,
    /// The output ceiling the JSON body sets, if any.
    pub max_output_tokens: Option<u64>,
    /// A buffered request body to hand to the upstream.
    pub body: Option<BufferedBody>,
    /// The body's share of the process-wide body budget, held until the request ends.
    pub body_hold: Option<crate::body::BodyHold>,
    /// The body's `Content-Encoding` was decoded: it goes upstream decoded, without the header.
    pub body_decoded: bool,
    /// Credential substitutions to make upstream.
    pub applied: Option<Applied>,
    /// Scrubs substituted secrets echoed back in the response.
    pub scrubber: Option<Scrubber>,
    /// Credential names used, or the one refused (for the audit record).
    pub credential_names: Vec<String>,
    /// Reads LLM usage from the response as it streams.
    pub usage_meter: Option<UsageMeter>,
    /// The usage read, once the response ended.
    pub usage: Option<Usage>,
    /// The proxy added `stream_options.include_usage` to the request.
    pub injected_include_usage: bool,
    /// Removes the usage event the agent did not ask for.
    pub usage_stripper: Option<crate::usage::include_usage::UsageEventStripper>,
    /// Limit leases and rate headline, while the request is in flight.
    pub admission: Option<Admission>,
    /// The prices of this LLM call's model, when a price table is configured.
    pub prices: Option<Prices>,
    /// How a streaming response may extend its reservation, when a hard ceiling applies.
    pub stream_plan: Option<crate::limits::stream::StreamPlan>,
    /// Keeps a streaming response within budget, while it streams.
    pub stream_guard: Option<StreamGuard>,
    /// The final event of a stream cut for budget, written by `fail_to_proxy`.
    pub cut_event: Option<Vec<u8>>,
    /// What was reserved against the ceilings (for the audit record).
    pub reserved: Option<Charge>,
    /// What the call was settled at.
    pub settled: Option<Charge>,
    /// SHA-256 of the request body (hex), if there was one.
    pub body_sha256: Option<String>,
    /// Request body size.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// When the upstream connection was ready.
    pub upstream_started: Option<Instant>,
    /// When the upstream response header arrived.
    pub upstream_done: Option<Instant>,
    /// Outcome.
    pub outcome: Outcome,
    /// A reserved slot in the audit queue; every request that gets a tenant holds one.
    pub audit_slot: Option<AuditSlot>,
    /// The intercepted tunnel this request came through (its id).
    pub tunnel: Option<Arc<str>>,
    /// For a request to an MCP server: its server, what it uses and the lists it asks for.
    pub mcp: Option<crate::mcp::McpExchange>,
    /// Removes the tools, resources and prompts this workload may not use from the MCP
    /// server's list results.
    pub list_filter: Option<crate::mcp::list_filter::ListFilter>,
}

impl RequestCtx {
    /// A context that has no identity and is not authorized.
    pub fn new() -> Self {
        Self {
            request_id: crate::trace::random_hex(16).into(),
            started: Instant::now(),
            tenant: None,
            snapshot: None,
            destination: None,
            permit: None,
            decision: None,
            shadow: None,
            model: None,
            max_output_tokens: None,
            body: None,
            body_hold: None,
            body_decoded: false,
            applied: None,
            scrubber: None,
            credential_names: Vec::new(),
            usage_meter: None,
            usage: None,
            injected_include_usage: false,
            usage_stripper: None,
            admission: None,
            prices: None,
            stream_plan: None,
            stream_guard: None,
            cut_event: None,
            reserved: None,
            settled: None,
            body_sha256: None,
            bytes_in: 0,
            bytes_out: 0,
            upstream_started: None,
            upstream_done: None,
            outcome: Outcome::Pending,
            audit_slot: None,
            tunnel: None,
            mcp: None,
            list_filter: None,
        }
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}
