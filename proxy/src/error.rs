//! The one refusal type. Every way a request can be refused is a [`Deny`] variant, mapped to its
//! stable reason code by one exhaustive `match` ([`Deny::code`]) and to its HTTP status and
//! message by another ([`Deny::describe`]): the same code goes into the JSON body, the audit
//! record and the metric label, and asking for the code alone formats no message.

pub use crate::reason::ReasonCode;

use crate::credentials::apply::{CredentialDeny, ScanGap};
use crate::limits::stream::CutReason;
use crate::limits::{LimitDeny, LimitKind, Measure, Scope, Window};

/// Why a request was refused. Messages follow cedar's style: lowercase, no trailing period,
/// user input in backticks, never a secret or token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deny {
    /// No identity source on this listener produced an identity.
    IdentityRequired,
    /// An identity was presented but is not valid (detail says why, never the token).
    IdentityInvalid(String),
    /// Cedar did not allow the request.
    PolicyDenied(PolicyRefusal),
    /// A `$CRED{}` handle or agent-supplied key was refused.
    Credential(CredentialDeny),
    /// A rate or concurrency ceiling was reached (429 with `Retry-After`).
    Limited(LimitDeny),
    /// The shared limiter could not be reached (503 with `Retry-After`).
    LimiterUnavailable,
    /// The LLM call's model has no price and the price table refuses unpriced models (`None`:
    /// the call names no model).
    ModelNotPriced(Option<String>),
    /// LLM work whose tokens and cost the proxy cannot meter (named: "a batch job"), while a
    /// token or cost ceiling applies to the caller.
    UnmeteredCall(&'static str),
    /// A streaming response was ended mid-way: its tenant or run ran out of budget, or the
    /// counters could not be reached to extend it.
    StreamCut(crate::limits::stream::CutReason),
    /// The request is malformed or unsupported.
    BadRequest(String),
    /// The absolute URI's authority and the `Host` header disagree.
    HostMismatch,
    /// No route matches an origin-form request.
    RouteNotFound,
    /// `CONNECT` after another request on the same connection (a tunnel starts a connection).
    ConnectUnsupported,
    /// `CONNECT` to a port the configuration does not list.
    ConnectPortForbidden(u16),
    /// The destination resolves to an address the proxy does not dial (SSRF guard), or is one of
    /// the proxy's own listeners. The detail names the kind of address, never the address.
    DestinationForbidden(String),
    /// The tenant already has its maximum number of open tunnels.
    TunnelLimit(u32),
    /// A tunnel would have to be intercepted but cannot be (no CA, or outside its constraints).
    InterceptionUnavailable(String),
    /// Request headers exceed the configured cap.
    HeadersTooLarge,
    /// Request body exceeds the configured cap.
    BodyTooLarge,
    /// A chunked body too large to hold without a `Content-Length`.
    LengthRequired,
    /// The upstream refused or reset the connection, or could not be resolved: the request
    /// did not reach it.
    UpstreamUnreachable,
    /// The upstream was connected to, then closed or reset the connection, or answered with
    /// something that is not HTTP, before a complete response: the request may have reached it.
    UpstreamFailed,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The upstream's TLS certificate did not verify (never downgraded to plain text).
    UpstreamTls,
    /// The audit sink cannot take another record.
    AuditUnavailable,
    /// A body sent to an MCP server is not JSON-RPC 2.0 the proxy can decide on.
    McpMalformed(String),
    /// Policy denied an MCP `tools/call` (the tool's name).
    ToolDenied(String, PolicyRefusal),
    /// An MCP server's response could not be filtered, so it was withheld.
    McpResponseUnfiltered(String),
    /// A request to an MCP server named a session not opened by its workload through the
    /// proxy (see [`crate::mcp::session`]).
    McpSessionUnknown(crate::mcp::session::Unknown),
    /// The request's signed run was closed by an operator (`POST /runs/close`).
    RunClosed,
    /// A phase ran without the state it requires (a bug); refused rather than forwarded.
    Internal,
    /// The request's body framing has more than one reading (request smuggling); the
    /// connection is closed.
    Framing(String),
    /// A `Transfer-Encoding` other than exactly `chunked`.
    UnsupportedTransferEncoding,
    /// More header fields than `[limits] max_headers`.
    TooManyHeaders(usize),
    /// The request head or body did not arrive by its deadline.
    RequestTimeout,
    /// The proxy holds as many request bodies or connections as it may; retry shortly.
    Overloaded(&'static str),
    /// The tenant already has its maximum number of open client connections.
    ConnectionLimit(u32),
    /// The tenant's requests in flight already hold the request body bytes one tenant may
    /// (this many); retry shortly.
    BodyMemoryLimit(u64),
    /// The tenant already has this many upstream name lookups running (its names resolve
    /// slowly); retry shortly.
    DnsLookupLimit(u64),
    /// A `Connection` header nominates a header the proxy decides on or sets (hop-by-hop
    /// removal would change the request after the decision).
    ProtectedHopHeader(&'static str),
    /// The client went away before the request completed (recorded, never sent).
    ClientClosed,
    /// The proxy shut down before the request completed: it was still running when the drain
    /// time ran out, and its connection was cut (recorded, never sent: the connection is gone).
    Shutdown,
    /// An admin endpoint, or the tenant it names, does not exist.
    AdminNotFound(String),
    /// An admin endpoint called with the wrong method.
    MethodNotAllowed(String),
    /// An admin endpoint (other than the probes) called without the configured admin token
    /// (why, never the token).
    AdminUnauthorized(String),
    /// A web page's request to the proxy as a server (a route, or the admin port): how it
    /// shows (see [`crate::front::browser_marker`], [`crate::front::unrebindable_host`]).
    BrowserRequest(BrowserSign),
    /// A body toward an LLM destination that the proxy cannot classify (its media type, or its
    /// `Content-Encoding`), so it is not forwarded unchecked.
    UnsupportedBody(String),
    /// Policy denied reading an MCP resource (its URI).
    ResourceDenied(String, PolicyRefusal),
    /// Policy denied getting an MCP prompt (its name).
    PromptDenied(String, PolicyRefusal),
    /// The upstream answered with a compressed body although the proxy asked for none, where
    /// the answer must be read: scrubbed of echoed secrets, or metered (why); withheld.
    UpstreamEncoded(&'static str),
    /// The request waits for a person's approval and its policy asks for polling: 202 with the
    /// hold id (`x-approval-hold`); the agent sends the same request again with that header.
    ApprovalPending(String),
    /// A person of the tenant denied the held request (their reason).
    ApprovalDenied(String),
    /// Nobody decided on the held request within its timeout (seconds).
    ApprovalTimeout(u64),
    /// The tenant (or the proxy) already holds as many requests as it may (which cap, the cap).
    ApprovalCapacity(&'static str, usize),
    /// Holds cannot be kept or read now (no approvals listener, the store unreachable, the
    /// proxy shutting down); nothing was forwarded.
    ApprovalUnavailable(String),
    /// The `x-approval-hold` id names no hold of this workload for this very request.
    ApprovalUnknown,
    /// An approver asked about holds their token does not cover (another tenant's, or a group
    /// they are not in).
    ApproverForbidden(String),
    /// The approvals API was called without a valid approver token (why, never the token).
    ApproverUnauthenticated(String),
    /// The hold was already decided, expired or cancelled (its state).
    HoldResolved(String),
    /// The replica the held request waited on went away (its lease on the hold lapsed): the
    /// request can no longer be forwarded, so it cannot be approved.
    HoldOrphaned,
}

impl From<crate::identity::IdentityError> for Deny {
    fn from(e: crate::identity::IdentityError) -> Self {
        use crate::identity::IdentityError;
        match e {
            IdentityError::Required => Deny::IdentityRequired,
            IdentityError::Invalid(why) => Deny::IdentityInvalid(why),
            revoked @ IdentityError::Revoked(_) => Deny::IdentityInvalid(revoked.to_string()),
            IdentityError::Lapsed { why, .. } => Deny::IdentityInvalid(why),
        }
    }
}

impl From<crate::target::TargetError> for Deny {
    fn from(e: crate::target::TargetError) -> Self {
        use crate::target::TargetError;
        match e {
            TargetError::Malformed(why) => Deny::BadRequest(why),
            TargetError::HostMismatch => Deny::HostMismatch,
            TargetError::RouteNotFound => Deny::RouteNotFound,
        }
    }
}

impl From<crate::audit::AuditUnavailable> for Deny {
    fn from(_: crate::audit::AuditUnavailable) -> Self {
        Deny::AuditUnavailable
    }
}

impl From<crate::limits::plan::PlanError> for Deny {
    fn from(e: crate::limits::plan::PlanError) -> Self {
        use crate::limits::plan::PlanError;
        match e {
            PlanError::ModelNotPriced(model) => Deny::ModelNotPriced(model),
            PlanError::Unmetered(what) => Deny::UnmeteredCall(what),
            PlanError::UnknownTenant => Deny::Internal,
        }
    }
}

impl From<crate::runs::RunRefusal> for Deny {
    fn from(e: crate::runs::RunRefusal) -> Self {
        use crate::runs::RunRefusal;
        match e {
            RunRefusal::Closed => Deny::RunClosed,
            RunRefusal::LimiterUnavailable => Deny::LimiterUnavailable,
            RunRefusal::AuditUnavailable => Deny::AuditUnavailable,
        }
    }
}

/// Why a compressed answer is withheld ([`Deny::UpstreamEncoded`]): it is scrubbed of this
/// tenant's secrets.
pub const SCRUBBED: &str =
    "its answers are checked for this tenant's secrets, which a compressed body could hide";
/// Why a compressed answer is withheld ([`Deny::UpstreamEncoded`]): it is metered by reading it.
pub const METERED: &str = "an answer whose output no ceiling field caps is metered by reading it, which a compressed body prevents, while a token or cost quota applies";

impl From<crate::body::BodyError> for Deny {
    fn from(e: crate::body::BodyError) -> Self {
        use crate::body::BodyError;
        match e {
            BodyError::TooLarge => Deny::BodyTooLarge,
            BodyError::LengthRequired => Deny::LengthRequired,
            BodyError::Malformed(why) => Deny::BadRequest(why),
            BodyError::Unsupported(why) => Deny::UnsupportedBody(why),
            BodyError::Overloaded => Deny::Overloaded("request body memory"),
            BodyError::TenantOverloaded(max) => Deny::BodyMemoryLimit(max),
            BodyError::Timeout => Deny::RequestTimeout,
            BodyError::Unreadable => Deny::BadRequest("the request body could not be read".into()),
        }
    }
}

impl From<&crate::mcp::McpRefusal> for Deny {
    fn from(r: &crate::mcp::McpRefusal) -> Self {
        use crate::mcp::McpRefusal;
        use crate::policy::ItemKind;
        match r {
            McpRefusal::Malformed(why) => Deny::McpMalformed(why.clone()),
            McpRefusal::Denied {
                item,
                name,
                decision,
            } => {
                let refusal = PolicyRefusal::of(decision);
                match item {
                    ItemKind::Tool => Deny::ToolDenied(name.clone(), refusal),
                    ItemKind::Resource => Deny::ResourceDenied(name.clone(), refusal),
                    ItemKind::Prompt => Deny::PromptDenied(name.clone(), refusal),
                }
            }
        }
    }
}

impl From<crate::mcp::Unfilterable> for Deny {
    fn from(e: crate::mcp::Unfilterable) -> Self {
        Deny::McpResponseUnfiltered(e.0.to_string())
    }
}

impl From<crate::front::HeadError> for Deny {
    fn from(e: crate::front::HeadError) -> Self {
        use crate::front::HeadError;
        match e {
            HeadError::TooLarge => Deny::HeadersTooLarge,
            HeadError::TooManyHeaders => Deny::TooManyHeaders(0),
            HeadError::Malformed(why) => Deny::BadRequest(format!("malformed request: {why}")),
            HeadError::Framing(why) => Deny::Framing(why.to_string()),
            HeadError::UnsupportedTransferEncoding => Deny::UnsupportedTransferEncoding,
            HeadError::HostMismatch => Deny::HostMismatch,
        }
    }
}

impl From<crate::front::Violation> for Deny {
    fn from(v: crate::front::Violation) -> Self {
        use crate::front::Violation;
        match v {
            Violation::Head(e) => e.into(),
            Violation::Chunked(e) => Deny::Framing(e.0.to_string()),
            Violation::HeadTimeout | Violation::BodyTimeout => Deny::RequestTimeout,
            Violation::Truncated => {
                Deny::BadRequest("the connection closed in the middle of a request".into())
            }
            Violation::BodyTooLarge => Deny::BodyTooLarge,
        }
    }
}

/// How a request shows that a web page made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrowserSign {
    /// The header a browser marked it with (`origin`, `sec-fetch-site`).
    Marked(&'static str),
    /// A `Host` a page could have rebound to the proxy's address.
    RebindableHost,
}

/// Why Cedar did not allow a request, as far as the caller may learn it: the ids of the
/// forbids that decided (only ever the deployment's global policies or the caller's own
/// tenant's, the only ones its requests are evaluated against), or that a policy failed to
/// evaluate, or (neither) that no permit matched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRefusal {
    /// The forbids that decided, sorted.
    pub forbids: Vec<String>,
    /// A policy failed to evaluate (which denies).
    pub errored: bool,
}

impl PolicyRefusal {
    /// The refusal for a denied `decision`.
    pub fn of(decision: &crate::policy::Decision) -> Self {
        Self {
            forbids: decision.policy_ids.clone(),
            errored: !decision.errors.is_empty(),
        }
    }

    fn message(&self) -> String {
        self.message_for("make this request", None)
    }

    /// Why a request was refused: `doing` is what no policy allows ("make this request");
    /// `item` names what a forbid or an evaluation error refused, when it is not the request
    /// itself (an MCP tool, resource or prompt).
    fn message_for(&self, doing: &str, item: Option<&str>) -> String {
        let refused = match item {
            Some(item) => format!("{item} is forbidden"),
            None => "forbidden".into(),
        };
        match self.forbids.as_slice() {
            _ if self.errored => format!(
                "a policy could not be evaluated for {}, so it is refused",
                item.unwrap_or("this request")
            ),
            [] => format!("no policy allows this workload to {doing}"),
            [one] => format!("{refused} by policy `{one}`"),
            many => format!(
                "{refused} by policies {}",
                many.iter()
                    .map(|id| format!("`{id}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

impl Deny {
    /// Headers a refusal with `status` (its [`Self::describe`]'s) carries besides its JSON
    /// body: `Retry-After` where waiting helps (a run's budget never comes back, so it gets
    /// none), `Proxy-Authenticate` on 407.
    pub fn extra_headers(&self, status: u16) -> Vec<(http::HeaderName, http::HeaderValue)> {
        use http::HeaderValue;
        let mut headers = Vec::new();
        let one_second = || (http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        match self {
            Deny::Limited(l) => {
                if let Some(retry) = l.retry_after {
                    let secs = crate::limits::whole_secs_up(retry);
                    headers.push((http::header::RETRY_AFTER, HeaderValue::from(secs)));
                }
            }
            Deny::ApprovalPending(hold) => {
                // Hold ids are the proxy's own (hex); one that could not be a header value
                // would only lose the header, the body names it too.
                if let Ok(value) = HeaderValue::from_str(hold) {
                    headers.push((http::HeaderName::from_static("x-approval-hold"), value));
                }
                headers.push(one_second());
            }
            Deny::LimiterUnavailable
            | Deny::AuditUnavailable
            | Deny::ApprovalCapacity(..)
            | Deny::ApprovalUnavailable(_)
            | Deny::TunnelLimit(_)
            | Deny::Overloaded(_)
            | Deny::ConnectionLimit(_)
            | Deny::BodyMemoryLimit(_)
            | Deny::DnsLookupLimit(_)
            | Deny::Shutdown => {
                headers.push(one_second());
            }
            Deny::AdminUnauthorized(_) => {
                headers.push((
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"tenant-proxy-admin\""),
                ));
            }
            Deny::ApproverUnauthenticated(_) => {
                headers.push((
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"tenant-proxy-approvals\""),
                ));
            }
            _ => {}
        }
        if status == 407 {
            for scheme in [
                "Bearer realm=\"tenant-proxy\"",
                "Basic realm=\"tenant-proxy\"",
            ] {
                headers.push((
                    http::header::PROXY_AUTHENTICATE,
                    HeaderValue::from_static(scheme),
                ));
            }
        }
        if !self.worth_retrying(status, &headers) {
            headers.push((
                http::HeaderName::from_static("x-should-retry"),
                HeaderValue::from_static("false"),
            ));
        }
        headers
    }

    /// Whether sending the same request again soon may succeed: a refusal that says when (a
    /// `Retry-After` of a minute at most), or an upstream that failed or timed out. The OpenAI
    /// and Anthropic SDKs retry every 408, 409, 429 and 5xx unless `x-should-retry: false`
    /// says otherwise, so without it a spent budget or an exhausted run was asked again two or
    /// three times, each refused and audited. A `Retry-After` of hours (a day's budget) is not
    /// worth an SDK's retry either: it ignores waits that long and asks again in a second.
    fn worth_retrying(
        &self,
        status: u16,
        headers: &[(http::HeaderName, http::HeaderValue)],
    ) -> bool {
        // An answer the proxy withheld for its form is given again the same way.
        if matches!(
            self,
            Deny::McpResponseUnfiltered(_) | Deny::UpstreamEncoded(_)
        ) {
            return false;
        }
        let soon = headers.iter().any(|(name, value)| {
            name == http::header::RETRY_AFTER
                && value
                    .to_str()
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|secs| secs <= 60)
        });
        soon || matches!(status, 408 | 502 | 504)
    }
}

impl Deny {
    /// HTTP status, reason code ([`Deny::code`]) and message.
    pub fn describe(&self) -> (u16, ReasonCode, String) {
        let (status, message) = match self {
            Deny::IdentityRequired => (
                407,
                "this listener needs a workload identity: send `Proxy-Authorization: Bearer <token>` or put the token in the proxy URL's password".into(),
            ),
            Deny::IdentityInvalid(why) => {
                (407, format!("workload identity rejected: {why}"))
            }
            Deny::PolicyDenied(refusal) => (403, refusal.message()),
            Deny::Credential(c) => match c {
                CredentialDeny::Unknown(n) => {
                    (403, format!("no credential `{n}` exists for this tenant"))
                }
                CredentialDeny::NotBound(n) => (
                    403,
                    format!("credential `{n}` may not be sent to this destination"),
                ),
                CredentialDeny::Position(n, pos) => (
                    403,
                    format!("credential `{n}` may not appear in the request {pos}"),
                ),
                CredentialDeny::Expired(n) => (403, format!("credential `{n}` has expired")),
                CredentialDeny::PolicyDenied(n) => (
                    403,
                    format!("no policy allows this workload to use credential `{n}` here"),
                ),
                CredentialDeny::Malformed(pos) => (
                    400,
                    format!("malformed `$CRED{{…}}` handle in the request {pos}; write `$$CRED{{` for a literal"),
                ),
                CredentialDeny::Raw(place) => (
                    403,
                    format!("a literal credential in {place} is not accepted for this destination; use a `$CRED{{name}}` handle"),
                ),
                CredentialDeny::Repeated(place) => (
                    400,
                    format!("{place} is given more than once; a credential position holds exactly one `$CRED{{name}}` handle"),
                ),
                CredentialDeny::ScanIncomplete(ScanGap::TooLarge(limit)) => (
                    413,
                    format!("the request body is larger than the {limit} bytes scanned for credentials, and this destination's keys are managed by the proxy"),
                ),
                CredentialDeny::ScanIncomplete(ScanGap::TooDeep(levels)) => (
                    400,
                    format!("the request body's JSON is nested deeper than the {levels} levels scanned for credentials, and this destination's keys are managed by the proxy"),
                ),
                CredentialDeny::ScanIncomplete(ScanGap::Encoded) => (
                    415,
                    "a request body with a `Content-Encoding` cannot be scanned for credentials, and this destination's keys are managed by the proxy; send it unencoded".into(),
                ),
                CredentialDeny::Unavailable(n, why) => (
                    503,
                    format!("no access token could be obtained for credential `{n}`: {why}"),
                ),
                // Never leaves the admission chain (it obtains the token and applies again);
                // should it, the request still goes nowhere.
                CredentialDeny::TokenNeeded(n) => (
                    503,
                    format!("no access token was obtained for credential `{n}`"),
                ),
            },
            Deny::Limited(l) => {
                let whose = match &l.key.scope {
                    Scope::Tenant(_) => "this tenant",
                    Scope::Workload(..) => "this workload",
                    Scope::Run(..) => "this run",
                };
                let retry = l.retry_after.map_or(0, crate::limits::whole_secs_up);
                match l.key.kind {
                    LimitKind::Rate { per_period, period_secs, .. } => (
                        429,
                        format!(
                            "{whose} is over its ceiling of {per_period} requests per {}; retry after {retry}s",
                            if period_secs == 1 { "second" } else { "minute" },
                        ),
                    ),
                    LimitKind::Concurrency { max } => (
                        429,
                        format!("{whose} already has {max} requests in flight"),
                    ),
                    LimitKind::TokensPerMinute { ceiling } => (
                        429,
                        format!(
                            "{whose} would exceed its {ceiling} LLM tokens per minute with this call's reservation; retry after {retry}s",
                        ),
                    ),
                    LimitKind::Quota { measure, window, ceiling } => {
                        let what = match measure {
                            Measure::Tokens => format!("{ceiling} LLM tokens"),
                            Measure::Cost => format!(
                                "{} (in the price table's currency)",
                                crate::pricing::format_micros(ceiling)
                            ),
                            Measure::ToolCalls => format!("{ceiling} tool calls"),
                        };
                        // "its run budget of …", "its day ceiling of …".
                        let (limit, when) = match window {
                            Window::Run => ("run budget", "; a run's budget does not renew".to_string()),
                            Window::Day(_) => ("day ceiling", format!("; the day ends in {retry}s (tenant time zone)")),
                            Window::Month(_) => ("month ceiling", format!("; the month ends in {retry}s (tenant time zone)")),
                        };
                        (
                            429,
                            format!("{whose} would exceed its {limit} of {what} with this call's reservation{when}"),
                        )
                    }
                    LimitKind::WallTime { max_secs } => (
                        429,
                        format!("{whose} is past its wall-time budget of {max_secs}s"),
                    ),
                }
            }
            Deny::LimiterUnavailable => (
                503,
                "the limit counters cannot be reached; the request was not forwarded, retry shortly".into(),
            ),
            Deny::ModelNotPriced(Some(model)) => (
                403,
                format!("model `{model}` has no price in the price table, and unpriced models are refused"),
            ),
            Deny::ModelNotPriced(None) => (
                403,
                "the call names no model, so it has no price in the price table, and unpriced models are refused".into(),
            ),
            Deny::UnmeteredCall(what) => (
                403,
                format!("{what} spends tokens or money the proxy cannot meter, and token or cost ceilings apply to this caller"),
            ),
            Deny::StreamCut(CutReason::Budget(ceiling)) => (
                429,
                format!("the stream was ended: the {ceiling} budget is spent"),
            ),
            Deny::StreamCut(CutReason::Unavailable) => (
                503,
                "the stream was ended: the limit counters cannot be reached to extend its reservation".into(),
            ),
            Deny::BadRequest(why) => (400, why.clone()),
            Deny::HostMismatch => (
                400,
                "the `Host` header does not match the request target's authority".into(),
            ),
            Deny::RouteNotFound => (
                404,
                "no route matches this path; use an absolute URL through the proxy or a configured route prefix".into(),
            ),
            Deny::ConnectUnsupported => (
                405,
                "`CONNECT` must be the first request on a connection; open a new connection for the tunnel".into(),
            ),
            Deny::ConnectPortForbidden(port) => (
                403,
                format!("tunnels to port {port} are not allowed by this proxy"),
            ),
            Deny::DestinationForbidden(why) => (
                403,
                format!("the destination is not reachable through this proxy: {why}"),
            ),
            Deny::TunnelLimit(max) => (
                429,
                format!("this tenant already has {max} tunnels open; close one or retry shortly"),
            ),
            Deny::InterceptionUnavailable(why) => (
                403,
                format!("this tunnel must be inspected but cannot be: {why}"),
            ),
            Deny::HeadersTooLarge => {
                (431, "request headers exceed the configured limit".into())
            }
            Deny::BodyTooLarge => {
                (413, "request body exceeds the configured limit".into())
            }
            Deny::LengthRequired => (
                411,
                "a request body over 64 KiB needs a `Content-Length` header (HTTP/1 chunked or HTTP/2 without one): the proxy forwards a body of unknown length only up to 64 KiB; set the upload's length".into(),
            ),
            Deny::UpstreamUnreachable => {
                (502, "the upstream could not be reached".into())
            }
            Deny::UpstreamFailed => (
                502,
                "the upstream closed the connection or sent an invalid response after the request was sent to it".into(),
            ),
            Deny::UpstreamTimeout => (504, "the upstream did not answer in time".into()),
            Deny::UpstreamTls => (
                502,
                "the upstream's TLS certificate could not be verified".into(),
            ),
            Deny::AuditUnavailable => (
                503,
                "the audit log cannot record this request right now; retry shortly".into(),
            ),
            Deny::McpSessionUnknown(unknown) => (
                404,
                format!(
                    "{} was not opened by this workload through the proxy (sessions are bound to the workload that opened them); start a new session with `initialize`. Nothing was sent to the server",
                    match unknown {
                        crate::mcp::session::Unknown::Header =>
                            "this `Mcp-Session-Id` (sent once, as given in the server's answer)",
                        crate::mcp::session::Unknown::Query =>
                            "the session named in this URL's query",
                    }
                ),
            ),
            Deny::McpMalformed(why) => (
                400,
                format!("this MCP server accepts only JSON-RPC 2.0 the proxy can check: {why}"),
            ),
            Deny::ToolDenied(tool, refusal) => (
                403,
                format!(
                    "{}; nothing was sent to the server",
                    refusal.message_for(
                        &format!("call MCP tool `{tool}`"),
                        Some(&format!("MCP tool `{tool}`"))
                    )
                ),
            ),
            Deny::McpResponseUnfiltered(why) => (
                502,
                format!("the MCP server's tool list could not be filtered, so it was withheld: {why}"),
            ),
            Deny::RunClosed => (
                403,
                "this run was closed; start a new run with a new token".into(),
            ),
            Deny::Internal => (500, "internal error; the request was not forwarded".into()),
            Deny::Framing(why) => (
                400,
                format!("the request's body framing is ambiguous ({why}); the connection is closed"),
            ),
            Deny::UnsupportedTransferEncoding => (
                501,
                "only `Transfer-Encoding: chunked` (one coding, once) is accepted; the connection is closed".into(),
            ),
            Deny::TooManyHeaders(max) => (
                431,
                if *max > 0 {
                    format!("the request has more than {max} header fields")
                } else {
                    "the request has more header fields than the configured limit".into()
                },
            ),
            Deny::RequestTimeout => (
                408,
                "the request did not arrive in time; the connection is closed".into(),
            ),
            Deny::Overloaded(what) => (
                503,
                format!("the proxy is at its limit of {what}; retry shortly"),
            ),
            Deny::ConnectionLimit(max) => (
                429,
                format!("this tenant already has {max} connections open to the proxy; reuse one or retry shortly"),
            ),
            Deny::DnsLookupLimit(max) => (
                429,
                format!("this tenant already has {max} upstream name lookups running (its names resolve slowly); retry shortly"),
            ),
            Deny::BodyMemoryLimit(max) => (
                429,
                format!("this tenant's requests in flight already hold {max} bytes of bodies (request bodies, and responses read whole), as much as one tenant may; retry shortly"),
            ),
            Deny::ProtectedHopHeader(name) => (
                400,
                format!("`Connection` may not nominate `{name}`: the proxy decides on it and sends it on"),
            ),
            // nginx's 499: never written to a client (it is gone), only recorded.
            Deny::ClientClosed => (
                499,
                "the client closed the connection before the request completed".into(),
            ),
            Deny::Shutdown => (
                503,
                "the proxy shut down before the request completed; retry shortly".into(),
            ),
            Deny::AdminNotFound(why) => (404, why.clone()),
            Deny::BrowserRequest(BrowserSign::RebindableHost) => (
                403,
                "this port acts for whoever reaches it, so it answers only to a `Host` that no \
                 web page can rebind to it: an IP address (not 0.0.0.0), `localhost` or a \
                 single-label name; call it by one of those"
                    .into(),
            ),
            Deny::BrowserRequest(BrowserSign::Marked(marker)) => (
                403,
                format!(
                    "`{marker}` marks a request a web page made: a page a browser opens may not \
                     act as this port's caller (on a listener, its workload); call from the \
                     agent's own process"
                ),
            ),
            Deny::MethodNotAllowed(why) => (405, why.clone()),
            Deny::AdminUnauthorized(why) => (
                401,
                format!("send `Authorization: Bearer <admin token>`: {why}"),
            ),
            Deny::UnsupportedBody(why) => (
                415,
                format!("this body cannot be checked, so it was not forwarded: {why}"),
            ),
            Deny::ResourceDenied(uri, refusal) => (
                403,
                format!(
                    "{}; nothing was sent to the server",
                    refusal.message_for(
                        &format!("read MCP resource `{uri}`"),
                        Some(&format!("MCP resource `{uri}`"))
                    )
                ),
            ),
            Deny::PromptDenied(name, refusal) => (
                403,
                format!(
                    "{}; nothing was sent to the server",
                    refusal.message_for(
                        &format!("get MCP prompt `{name}`"),
                        Some(&format!("MCP prompt `{name}`"))
                    )
                ),
            ),
            Deny::UpstreamEncoded(why) => (
                502,
                format!("the upstream answered with a compressed body although the proxy asked for an uncompressed one ({why}); it was withheld"),
            ),
            Deny::ApprovalPending(hold) => (
                202,
                format!("this request waits for a person's approval as hold `{hold}`; send the same request again with `x-approval-hold: {hold}` to learn the outcome"),
            ),
            Deny::ApprovalDenied(reason) => (
                403,
                format!("an approver of this tenant denied the request: {reason}"),
            ),
            Deny::ApprovalTimeout(secs) => (
                403,
                format!("nobody approved the request within {secs}s; it was not forwarded"),
            ),
            Deny::ApprovalCapacity(whose, max) => (
                429,
                format!("{whose} already holds {max} requests for approval; retry later"),
            ),
            Deny::ApprovalUnavailable(why) => (
                503,
                format!("this request needs a person's approval, which cannot be asked for now: {why}; it was not forwarded"),
            ),
            Deny::ApprovalUnknown => (
                403,
                "`x-approval-hold` names no hold of this workload for this request; send the request exactly as it was held".into(),
            ),
            Deny::ApproverForbidden(why) => (403, why.clone()),
            Deny::ApproverUnauthenticated(why) => (
                401,
                format!("send `Authorization: Bearer <approver token>`: {why}"),
            ),
            Deny::HoldResolved(state) => (
                409,
                format!("the hold is no longer pending: it is {state}"),
            ),
            Deny::HoldOrphaned => (
                410,
                "the proxy replica that held this request went away (its lease on the hold lapsed); the request cannot be forwarded any more, so it cannot be approved; nothing was sent".into(),
            ),
        };
        (status, self.code(), message)
    }

    /// The stable reason code, from one exhaustive match: the JSON body, the audit record, the
    /// metric label and the log line all take it from here, and asking for it formats nothing.
    pub fn code(&self) -> ReasonCode {
        match self {
            Deny::IdentityRequired => ReasonCode::IdentityRequired,
            Deny::IdentityInvalid(_) => ReasonCode::IdentityInvalid,
            Deny::PolicyDenied(_) => ReasonCode::PolicyDenied,
            Deny::Credential(c) => match c {
                CredentialDeny::Unknown(_) => ReasonCode::CredentialUnknown,
                CredentialDeny::NotBound(_) => ReasonCode::CredentialNotBound,
                CredentialDeny::Position(..) => ReasonCode::CredentialPosition,
                CredentialDeny::Expired(_) => ReasonCode::CredentialExpired,
                CredentialDeny::PolicyDenied(_) => ReasonCode::CredentialDenied,
                CredentialDeny::Malformed(_) => ReasonCode::CredentialMalformed,
                CredentialDeny::Raw(_) => ReasonCode::RawCredential,
                CredentialDeny::Repeated(_) => ReasonCode::CredentialRepeated,
                CredentialDeny::ScanIncomplete(_) => ReasonCode::CredentialScanIncomplete,
                CredentialDeny::Unavailable(..) | CredentialDeny::TokenNeeded(_) => {
                    ReasonCode::CredentialUnavailable
                }
            },
            Deny::Limited(l) => match l.key.kind {
                LimitKind::Rate { .. } => ReasonCode::RateLimited,
                LimitKind::Concurrency { .. } => ReasonCode::ConcurrencyLimited,
                LimitKind::TokensPerMinute { .. } => ReasonCode::TokenLimit,
                LimitKind::Quota { .. } | LimitKind::WallTime { .. } => ReasonCode::BudgetExhausted,
            },
            Deny::LimiterUnavailable => ReasonCode::LimiterUnavailable,
            Deny::ModelNotPriced(_) => ReasonCode::ModelNotPriced,
            Deny::UnmeteredCall(_) => ReasonCode::UnmeteredCall,
            Deny::StreamCut(CutReason::Budget(_)) => ReasonCode::BudgetExhausted,
            Deny::StreamCut(CutReason::Unavailable) => ReasonCode::LimiterUnavailable,
            Deny::BadRequest(_) => ReasonCode::BadRequest,
            Deny::HostMismatch => ReasonCode::HostMismatch,
            Deny::RouteNotFound => ReasonCode::RouteNotFound,
            Deny::ConnectUnsupported => ReasonCode::ConnectUnsupported,
            Deny::ConnectPortForbidden(_) => ReasonCode::ConnectPortForbidden,
            Deny::DestinationForbidden(_) => ReasonCode::DestinationForbidden,
            Deny::TunnelLimit(_) => ReasonCode::TunnelLimit,
            Deny::InterceptionUnavailable(_) => ReasonCode::InterceptionUnavailable,
            Deny::HeadersTooLarge => ReasonCode::RequestHeadersTooLarge,
            Deny::BodyTooLarge => ReasonCode::RequestBodyTooLarge,
            Deny::LengthRequired => ReasonCode::LengthRequired,
            Deny::UpstreamUnreachable => ReasonCode::UpstreamUnreachable,
            Deny::UpstreamFailed => ReasonCode::UpstreamFailed,
            Deny::UpstreamTimeout => ReasonCode::UpstreamTimeout,
            Deny::UpstreamTls => ReasonCode::UpstreamTls,
            Deny::AuditUnavailable => ReasonCode::AuditUnavailable,
            Deny::McpMalformed(_) => ReasonCode::McpMalformed,
            Deny::McpSessionUnknown(_) => ReasonCode::McpSessionUnknown,
            Deny::ToolDenied(..) => ReasonCode::ToolDenied,
            Deny::McpResponseUnfiltered(_) => ReasonCode::McpResponseUnfiltered,
            Deny::RunClosed => ReasonCode::RunClosed,
            Deny::Internal => ReasonCode::Internal,
            Deny::Framing(_) => ReasonCode::BadFraming,
            Deny::UnsupportedTransferEncoding => ReasonCode::UnsupportedTransferEncoding,
            Deny::TooManyHeaders(_) => ReasonCode::TooManyHeaders,
            Deny::RequestTimeout => ReasonCode::RequestTimeout,
            Deny::Overloaded(_) => ReasonCode::Overloaded,
            Deny::ConnectionLimit(_) => ReasonCode::ConnectionLimit,
            Deny::DnsLookupLimit(_) => ReasonCode::DnsLookupLimit,
            Deny::BodyMemoryLimit(_) => ReasonCode::BodyMemoryLimit,
            Deny::ProtectedHopHeader(_) => ReasonCode::BadConnectionHeader,
            Deny::ClientClosed => ReasonCode::ClientClosed,
            Deny::Shutdown => ReasonCode::Shutdown,
            Deny::AdminNotFound(_) => ReasonCode::NotFound,
            Deny::MethodNotAllowed(_) => ReasonCode::MethodNotAllowed,
            Deny::AdminUnauthorized(_) => ReasonCode::AdminUnauthorized,
            Deny::BrowserRequest(_) => ReasonCode::BrowserRequest,
            Deny::UnsupportedBody(_) => ReasonCode::UnsupportedMediaType,
            Deny::ResourceDenied(..) => ReasonCode::ResourceDenied,
            Deny::PromptDenied(..) => ReasonCode::PromptDenied,
            Deny::UpstreamEncoded(_) => ReasonCode::UpstreamEncoded,
            Deny::ApprovalPending(_) => ReasonCode::ApprovalPending,
            Deny::ApprovalDenied(_) => ReasonCode::ApprovalDenied,
            Deny::ApprovalTimeout(_) => ReasonCode::ApprovalTimeout,
            Deny::ApprovalCapacity(..) => ReasonCode::ApprovalCapacity,
            Deny::ApprovalUnavailable(_) => ReasonCode::ApprovalUnavailable,
            Deny::ApprovalUnknown => ReasonCode::ApprovalUnknown,
            Deny::ApproverForbidden(_) => ReasonCode::ApproverForbidden,
            Deny::ApproverUnauthenticated(_) => ReasonCode::ApproverUnauthenticated,
            Deny::HoldResolved(_) => ReasonCode::HoldResolved,
            Deny::HoldOrphaned => ReasonCode::HoldOrphaned,
        }
    }

    /// For `budget_exhausted`: which ceiling (`run`, `day` or `month`) refused.
    pub fn ceiling(&self) -> Option<&'static str> {
        match self {
            Deny::Limited(l) => match l.key.kind {
                LimitKind::Quota { window, .. } => Some(window.as_str()),
                LimitKind::WallTime { .. } => Some("run"),
                _ => None,
            },
            Deny::StreamCut(CutReason::Budget(ceiling)) => Some(ceiling),
            _ => None,
        }
    }
}

/// The JSON body of a refusal: `{"error":{"code":…,"message":…,"request_id":…}}`, plus
/// `"ceiling"` (`run`, `day` or `month`) for `budget_exhausted`.
///
/// Written member by member: the shape is fixed, and a serde map of four members cost more than
/// the rest of the body (a flooding tenant is answered with one of these per request). Every
/// string is written as serde_json writes it, by the audit line's writer.
pub fn error_body(
    code: ReasonCode,
    message: &str,
    request_id: &str,
    ceiling: Option<&str>,
) -> Vec<u8> {
    // Sized for the fixed text around the strings, so the body is written without regrowing.
    let mut out = Vec::with_capacity(96 + message.len() + request_id.len());
    // Writing strings into a `Vec` cannot fail; fall back to a fixed body regardless.
    match write_error_members(&mut out, code, message, request_id, ceiling) {
        Ok(()) => out,
        Err(_) => br#"{"error":{"code":"internal_error"}}"#.to_vec(),
    }
}

fn write_error_members(
    out: &mut Vec<u8>,
    code: ReasonCode,
    message: &str,
    request_id: &str,
    ceiling: Option<&str>,
) -> serde_json::Result<()> {
    use crate::audit::line::push_string;
    out.extend_from_slice(br#"{"error":{"code":"#);
    push_string(out, code.as_str())?;
    out.extend_from_slice(br#","message":"#);
    push_string(out, message)?;
    out.extend_from_slice(br#","request_id":"#);
    push_string(out, request_id)?;
    if let Some(ceiling) = ceiling {
        out.extend_from_slice(br#","ceiling":"#);
        push_string(out, ceiling)?;
    }
    out.extend_from_slice(b"}}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes() {
        let cases = [
            (Deny::IdentityRequired, 407, "identity_required"),
            (
                Deny::IdentityInvalid("expired".into()),
                407,
                "identity_invalid",
            ),
            (
                Deny::PolicyDenied(PolicyRefusal::default()),
                403,
                "policy_denied",
            ),
            (Deny::HostMismatch, 400, "host_mismatch"),
            (Deny::RouteNotFound, 404, "route_not_found"),
            (Deny::HeadersTooLarge, 431, "request_headers_too_large"),
            (Deny::BodyTooLarge, 413, "request_body_too_large"),
            (Deny::UpstreamUnreachable, 502, "upstream_unreachable"),
            (Deny::UpstreamFailed, 502, "upstream_failed"),
            (Deny::UpstreamTimeout, 504, "upstream_timeout"),
            (Deny::AuditUnavailable, 503, "audit_unavailable"),
            (Deny::McpMalformed("x".into()), 400, "mcp_malformed"),
            (
                Deny::McpSessionUnknown(crate::mcp::session::Unknown::Header),
                404,
                "mcp_session_unknown",
            ),
            (
                Deny::ToolDenied("x".into(), PolicyRefusal::default()),
                403,
                "tool_denied",
            ),
            (Deny::RunClosed, 403, "run_closed"),
            (Deny::UnmeteredCall("a batch job"), 403, "unmetered_call"),
            (Deny::ModelNotPriced(None), 403, "model_not_priced"),
            (Deny::Framing("x".into()), 400, "bad_framing"),
            (
                Deny::UnsupportedTransferEncoding,
                501,
                "unsupported_transfer_encoding",
            ),
            (Deny::TooManyHeaders(100), 431, "too_many_headers"),
            (Deny::RequestTimeout, 408, "request_timeout"),
            (Deny::Overloaded("request bodies"), 503, "overloaded"),
            (Deny::ConnectionLimit(1), 429, "connection_limit"),
            (Deny::BodyMemoryLimit(1), 429, "body_memory_limit"),
            (Deny::DnsLookupLimit(1), 429, "dns_lookup_limit"),
            (
                Deny::ProtectedHopHeader("host"),
                400,
                "bad_connection_header",
            ),
            (Deny::ClientClosed, 499, "client_closed"),
            (Deny::Shutdown, 503, "shutdown"),
            (Deny::AdminNotFound("x".into()), 404, "not_found"),
            (
                Deny::MethodNotAllowed("x".into()),
                405,
                "method_not_allowed",
            ),
            (
                Deny::AdminUnauthorized("x".into()),
                401,
                "admin_unauthorized",
            ),
            (
                Deny::BrowserRequest(BrowserSign::Marked("origin")),
                403,
                "browser_request",
            ),
            (
                Deny::BrowserRequest(BrowserSign::RebindableHost),
                403,
                "browser_request",
            ),
            (
                Deny::UnsupportedBody("x".into()),
                415,
                "unsupported_media_type",
            ),
            (
                Deny::ResourceDenied("x".into(), PolicyRefusal::default()),
                403,
                "resource_denied",
            ),
            (
                Deny::PromptDenied("x".into(), PolicyRefusal::default()),
                403,
                "prompt_denied",
            ),
            (
                Deny::Credential(CredentialDeny::Repeated("header `authorization`".into())),
                400,
                "credential_repeated",
            ),
            (
                Deny::Credential(CredentialDeny::ScanIncomplete(ScanGap::TooLarge(65536))),
                413,
                "credential_scan_incomplete",
            ),
            (
                Deny::Credential(CredentialDeny::ScanIncomplete(ScanGap::Encoded)),
                415,
                "credential_scan_incomplete",
            ),
            (
                Deny::Credential(CredentialDeny::ScanIncomplete(ScanGap::TooDeep(512))),
                400,
                "credential_scan_incomplete",
            ),
            (
                Deny::Credential(CredentialDeny::Unavailable(
                    "gapi".into(),
                    "the token endpoint answered 401".into(),
                )),
                503,
                "credential_unavailable",
            ),
            (Deny::UpstreamEncoded(SCRUBBED), 502, "upstream_encoded"),
            (Deny::ApprovalPending("h".into()), 202, "approval_pending"),
            (Deny::ApprovalDenied("no".into()), 403, "approval_denied"),
            (Deny::ApprovalTimeout(5), 403, "approval_timeout"),
            (
                Deny::ApprovalCapacity("this tenant", 2),
                429,
                "approval_capacity",
            ),
            (
                Deny::ApprovalUnavailable("x".into()),
                503,
                "approval_unavailable",
            ),
            (Deny::ApprovalUnknown, 403, "approval_unknown"),
            (
                Deny::ApproverForbidden("x".into()),
                403,
                "approver_forbidden",
            ),
            (
                Deny::ApproverUnauthenticated("x".into()),
                401,
                "approver_unauthenticated",
            ),
            (Deny::HoldResolved("approved".into()), 409, "hold_resolved"),
            (Deny::HoldOrphaned, 410, "hold_orphaned"),
            (
                Deny::McpResponseUnfiltered("x".into()),
                502,
                "mcp_response_unfiltered",
            ),
        ];
        let tenant = crate::ids::TenantId::new("acme").expect("id");
        let limited = |kind| {
            Deny::Limited(LimitDeny {
                key: crate::limits::LimitKey {
                    scope: Scope::Tenant(tenant.clone()),
                    kind,
                },
                retry_after: None,
            })
        };
        let limits = [
            (
                limited(LimitKind::Rate {
                    per_period: 5,
                    period_secs: 1,
                    burst: 5,
                }),
                429,
                "rate_limited",
            ),
            (
                limited(LimitKind::Concurrency { max: 2 }),
                429,
                "concurrency_limited",
            ),
            (
                limited(LimitKind::TokensPerMinute { ceiling: 10 }),
                429,
                "token_limit",
            ),
            (
                limited(LimitKind::Quota {
                    measure: Measure::Cost,
                    window: Window::Run,
                    ceiling: 10,
                }),
                429,
                "budget_exhausted",
            ),
            (
                limited(LimitKind::WallTime { max_secs: 60 }),
                429,
                "budget_exhausted",
            ),
        ];
        for (deny, status, code) in cases.into_iter().chain(limits) {
            let (s, c, _) = deny.describe();
            assert_eq!((s, c.as_str()), (status, code), "{deny:?}");
            // Asked alone, without a message, the code is the table's too.
            assert_eq!(deny.code().as_str(), code, "{deny:?}");
            // serde and as_str agree
            assert_eq!(
                serde_json::to_value(c).ok(),
                Some(serde_json::Value::from(code))
            );
        }
    }

    /// SDKs retry 408, 409, 429 and 5xx by themselves: a refusal that a retry cannot change says
    /// `x-should-retry: false`, one that says when to come back (within a minute) or an
    /// upstream's failure does not.
    /// Budget refusals read as sentences: "its run budget of …", "its day ceiling of …".
    #[test]
    fn budget_refusals_name_the_budget_and_its_window() {
        use crate::limits::{LimitKey, Scope};
        let run = crate::ids::TenantId::new("acme").expect("id");
        let refused = |scope, measure, window| {
            Deny::Limited(LimitDeny {
                key: LimitKey {
                    scope,
                    kind: LimitKind::Quota {
                        measure,
                        window,
                        ceiling: 1_000_000,
                    },
                },
                retry_after: Some(std::time::Duration::from_secs(60)),
            })
            .describe()
            .2
        };
        assert_eq!(
            refused(
                Scope::Run(run.clone(), "r1".into()),
                Measure::Tokens,
                Window::Run
            ),
            "this run would exceed its run budget of 1000000 LLM tokens with this call's reservation; a run's budget does not renew"
        );
        let day = refused(
            Scope::Tenant(run),
            Measure::Cost,
            Window::Day(crate::limits::calendar::Period {
                id: 20261205,
                starts_at: 0,
                ends_at: 86_400,
            }),
        );
        assert!(
            day.starts_with(
                "this tenant would exceed its day ceiling of 1.00 (in the price table's currency)"
            ),
            "{day}"
        );
    }

    #[test]
    fn refusals_a_retry_cannot_change_say_so_to_sdks() {
        use crate::limits::{LimitKey, Scope};
        let tenant = crate::ids::TenantId::new("acme").expect("id");
        let limited = |kind, retry_after| {
            Deny::Limited(LimitDeny {
                key: LimitKey {
                    scope: Scope::Tenant(tenant.clone()),
                    kind,
                },
                retry_after,
            })
        };
        let rate = limited(
            LimitKind::Rate {
                per_period: 5,
                period_secs: 1,
                burst: 5,
            },
            Some(std::time::Duration::from_secs(1)),
        );
        let day = limited(
            LimitKind::Quota {
                measure: Measure::Cost,
                window: Window::Run,
                ceiling: 10,
            },
            Some(std::time::Duration::from_secs(5 * 3600)),
        );
        let run = limited(
            LimitKind::Quota {
                measure: Measure::Cost,
                window: Window::Run,
                ceiling: 10,
            },
            None,
        );
        let cases = [
            (rate, false),
            (Deny::LimiterUnavailable, false),
            (Deny::AuditUnavailable, false),
            (Deny::UpstreamUnreachable, false),
            (Deny::UpstreamFailed, false),
            (Deny::UpstreamTimeout, false),
            (Deny::McpResponseUnfiltered("compressed".into()), true),
            (Deny::UpstreamEncoded(SCRUBBED), true),
            (day, true),
            (run, true),
            (Deny::PolicyDenied(PolicyRefusal::default()), true),
            (Deny::BodyTooLarge, true),
            (Deny::IdentityRequired, true),
            (Deny::Internal, true),
        ];
        for (deny, told_not_to) in cases {
            let (status, _, _) = deny.describe();
            let headers = deny.extra_headers(status);
            let said: Vec<_> = headers
                .iter()
                .filter(|(n, _)| n == "x-should-retry")
                .map(|(_, v)| v.to_str().unwrap_or("?").to_string())
                .collect();
            let expected: Vec<String> = if told_not_to {
                vec!["false".into()]
            } else {
                vec![]
            };
            assert_eq!(said, expected, "{deny:?}");
        }
    }

    #[test]
    fn an_mcp_refusal_names_the_forbid_that_decided_it() {
        let forbidden = PolicyRefusal {
            forbids: vec!["forbid-mcp-delete-repository".into()],
            errored: false,
        };
        let (_, _, message) = Deny::ToolDenied("delete_repository".into(), forbidden).describe();
        assert_eq!(
            message,
            "MCP tool `delete_repository` is forbidden by policy `forbid-mcp-delete-repository`; nothing was sent to the server"
        );
        let (_, _, message) =
            Deny::ResourceDenied("file:///etc".into(), PolicyRefusal::default()).describe();
        assert_eq!(
            message,
            "no policy allows this workload to read MCP resource `file:///etc`; nothing was sent to the server"
        );
        let errored = PolicyRefusal {
            forbids: vec![],
            errored: true,
        };
        let (_, _, message) = Deny::PromptDenied("p".into(), errored).describe();
        assert_eq!(
            message,
            "a policy could not be evaluated for MCP prompt `p`, so it is refused; nothing was sent to the server"
        );
    }

    #[test]
    fn an_internal_error_has_one_code_in_body_audit_metric_and_log() {
        let (status, code, message) = Deny::Internal.describe();
        assert_eq!(status, 500);
        let body: serde_json::Value =
            serde_json::from_slice(&error_body(code, &message, "r", None)).expect("json");
        // The body, the audit record (serde) and the metric label and log field (`as_str`).
        assert_eq!(body["error"]["code"], "internal_error");
        assert_eq!(
            serde_json::to_value(code).ok(),
            Some("internal_error".into())
        );
        assert_eq!(code.as_str(), "internal_error");
        assert_eq!(code.to_string(), "internal_error");
    }

    #[test]
    fn body_shape() {
        let body = error_body(ReasonCode::PolicyDenied, "no", "req-1", None);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"error": {"code": "policy_denied", "message": "no", "request_id": "req-1"}})
        );
        // Quotes, backslashes, control characters, line breaks and non-ASCII text in any
        // string stay inside it, and the ceiling is a member only when given.
        let awkward = "a \"quoted\" \\ path\n\r\t\u{0}\u{1f} é ✓ </script>";
        let body = error_body(ReasonCode::BudgetExhausted, awkward, awkward, Some("day"));
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"error": {
                "code": "budget_exhausted",
                "message": awkward,
                "request_id": awkward,
                "ceiling": "day",
            }})
        );
        assert!(!body.contains(&b'\n') && !body.contains(&0), "{body:?}");
    }
}
