//! The one refusal type. Every way a request can be refused is a [`Deny`] variant, mapped to its
//! HTTP status and stable reason code by one exhaustive `match`: the same code goes into the JSON
//! body, the audit record and the metric label.

use std::fmt;

use serde::Serialize;

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
    PolicyDenied,
    /// A `$CRED{}` handle or agent-supplied key was refused.
    Credential(CredentialDeny),
    /// A rate or concurrency ceiling was reached (429 with `Retry-After`).
    Limited(LimitDeny),
    /// The shared limiter could not be reached (503 with `Retry-After`).
    LimiterUnavailable,
    /// The LLM call's model has no price and the price table refuses unpriced models.
    ModelNotPriced(String),
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
    /// The upstream refused or reset the connection, or could not be resolved.
    UpstreamUnreachable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The upstream's TLS certificate did not verify (never downgraded to plain text).
    UpstreamTls,
    /// The audit sink cannot take another record.
    AuditUnavailable,
    /// A body sent to an MCP server is not JSON-RPC 2.0 the proxy can decide on.
    McpMalformed(String),
    /// Policy denied an MCP `tools/call` (the tool's name).
    ToolDenied(String),
    /// An MCP server's response could not be filtered, so it was withheld.
    McpResponseUnfiltered(String),
    /// The request's signed run was closed by an operator (`POST /runs/close`).
    RunClosed,
    /// A phase ran without the state it requires (a bug); refused rather than forwarded.
    Internal,
    /// The upstream answered a request that carried a substituted secret with a compressed
    /// body, which cannot be scrubbed of echoed secrets; withheld.
    UpstreamEncoded,
}

impl Deny {
    /// Headers a refusal carries besides its JSON body: `Retry-After` where waiting helps (a
    /// run's budget never comes back, so it gets none), `Proxy-Authenticate` on 407.
    pub fn extra_headers(&self) -> Vec<(http::HeaderName, String)> {
        let mut headers = Vec::new();
        match self {
            Deny::Limited(l) => {
                if let Some(retry) = l.retry_after {
                    headers.push((
                        http::header::RETRY_AFTER,
                        retry.as_secs().max(1).to_string(),
                    ));
                }
            }
            Deny::LimiterUnavailable | Deny::AuditUnavailable | Deny::TunnelLimit(_) => {
                headers.push((http::header::RETRY_AFTER, "1".to_string()));
            }
            _ => {}
        }
        if self.describe().0 == 407 {
            for scheme in [
                "Bearer realm=\"tenant-proxy\"",
                "Basic realm=\"tenant-proxy\"",
            ] {
                headers.push((http::header::PROXY_AUTHENTICATE, scheme.to_string()));
            }
        }
        headers
    }
}

/// A stable snake_case reason code. Used as JSON `code`, audit `reason` and metric label, so its
/// set of values is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// The request was allowed and forwarded.
    Allowed,
    /// See [`Deny::IdentityRequired`].
    IdentityRequired,
    /// See [`Deny::IdentityInvalid`].
    IdentityInvalid,
    /// See [`Deny::PolicyDenied`].
    PolicyDenied,
    /// The handle names no credential of this tenant.
    CredentialUnknown,
    /// The credential is not bound to this destination.
    CredentialNotBound,
    /// The handle is in a position the credential may not appear in.
    CredentialPosition,
    /// The credential has expired.
    CredentialExpired,
    /// Policy forbids using the credential here.
    CredentialDenied,
    /// A malformed handle.
    CredentialMalformed,
    /// A literal key where the proxy manages the credential.
    RawCredential,
    /// A request-rate ceiling was reached.
    RateLimited,
    /// A concurrency ceiling was reached.
    ConcurrencyLimited,
    /// See [`Deny::LimiterUnavailable`].
    LimiterUnavailable,
    /// An LLM token ceiling would be crossed.
    TokenLimit,
    /// A cost, token, tool-call or wall-time budget of a run, day or month is spent.
    BudgetExhausted,
    /// See [`Deny::ModelNotPriced`].
    ModelNotPriced,
    /// See [`Deny::BadRequest`].
    BadRequest,
    /// See [`Deny::HostMismatch`].
    HostMismatch,
    /// See [`Deny::RouteNotFound`].
    RouteNotFound,
    /// See [`Deny::ConnectUnsupported`].
    ConnectUnsupported,
    /// See [`Deny::ConnectPortForbidden`].
    ConnectPortForbidden,
    /// See [`Deny::DestinationForbidden`].
    DestinationForbidden,
    /// See [`Deny::TunnelLimit`].
    TunnelLimit,
    /// See [`Deny::InterceptionUnavailable`].
    InterceptionUnavailable,
    /// See [`Deny::HeadersTooLarge`].
    RequestHeadersTooLarge,
    /// See [`Deny::BodyTooLarge`].
    RequestBodyTooLarge,
    /// See [`Deny::LengthRequired`].
    LengthRequired,
    /// See [`Deny::UpstreamUnreachable`].
    UpstreamUnreachable,
    /// See [`Deny::UpstreamTimeout`].
    UpstreamTimeout,
    /// See [`Deny::UpstreamTls`].
    UpstreamTls,
    /// See [`Deny::AuditUnavailable`].
    AuditUnavailable,
    /// See [`Deny::McpMalformed`].
    McpMalformed,
    /// See [`Deny::ToolDenied`].
    ToolDenied,
    /// See [`Deny::McpResponseUnfiltered`].
    McpResponseUnfiltered,
    /// See [`Deny::RunClosed`].
    RunClosed,
    /// See [`Deny::Internal`].
    Internal,
    /// A credential position given more than one value.
    CredentialRepeated,
    /// A body toward a managed destination that cannot be scanned whole.
    CredentialScanIncomplete,
    /// See [`Deny::UpstreamEncoded`].
    UpstreamEncoded,
}

impl ReasonCode {
    /// The snake_case text of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::Allowed => "allowed",
            ReasonCode::IdentityRequired => "identity_required",
            ReasonCode::IdentityInvalid => "identity_invalid",
            ReasonCode::PolicyDenied => "policy_denied",
            ReasonCode::CredentialUnknown => "credential_unknown",
            ReasonCode::CredentialNotBound => "credential_not_bound",
            ReasonCode::CredentialPosition => "credential_position",
            ReasonCode::CredentialExpired => "credential_expired",
            ReasonCode::CredentialDenied => "credential_denied",
            ReasonCode::CredentialMalformed => "credential_malformed",
            ReasonCode::RawCredential => "raw_credential",
            ReasonCode::RateLimited => "rate_limited",
            ReasonCode::ConcurrencyLimited => "concurrency_limited",
            ReasonCode::LimiterUnavailable => "limiter_unavailable",
            ReasonCode::TokenLimit => "token_limit",
            ReasonCode::BudgetExhausted => "budget_exhausted",
            ReasonCode::ModelNotPriced => "model_not_priced",
            ReasonCode::BadRequest => "bad_request",
            ReasonCode::HostMismatch => "host_mismatch",
            ReasonCode::RouteNotFound => "route_not_found",
            ReasonCode::ConnectUnsupported => "connect_unsupported",
            ReasonCode::ConnectPortForbidden => "connect_port_forbidden",
            ReasonCode::DestinationForbidden => "destination_forbidden",
            ReasonCode::TunnelLimit => "tunnel_limit",
            ReasonCode::InterceptionUnavailable => "interception_unavailable",
            ReasonCode::RequestHeadersTooLarge => "request_headers_too_large",
            ReasonCode::RequestBodyTooLarge => "request_body_too_large",
            ReasonCode::LengthRequired => "length_required",
            ReasonCode::UpstreamUnreachable => "upstream_unreachable",
            ReasonCode::UpstreamTimeout => "upstream_timeout",
            ReasonCode::UpstreamTls => "upstream_tls",
            ReasonCode::AuditUnavailable => "audit_unavailable",
            ReasonCode::McpMalformed => "mcp_malformed",
            ReasonCode::ToolDenied => "tool_denied",
            ReasonCode::McpResponseUnfiltered => "mcp_response_unfiltered",
            ReasonCode::RunClosed => "run_closed",
            ReasonCode::Internal => "internal_error",
            ReasonCode::CredentialRepeated => "credential_repeated",
            ReasonCode::CredentialScanIncomplete => "credential_scan_incomplete",
            ReasonCode::UpstreamEncoded => "upstream_encoded",
        }
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Deny {
    /// HTTP status, reason code and message, from one exhaustive match.
    pub fn describe(&self) -> (u16, ReasonCode, String) {
        match self {
            Deny::IdentityRequired => (
                407,
                ReasonCode::IdentityRequired,
                "this listener needs a workload identity: send `Proxy-Authorization: Bearer <token>` or put the token in the proxy URL's password".into(),
            ),
            Deny::IdentityInvalid(why) => {
                (407, ReasonCode::IdentityInvalid, format!("workload identity rejected: {why}"))
            }
            Deny::PolicyDenied => {
                (403, ReasonCode::PolicyDenied, "no policy allows this workload to make this request".into())
            }
            Deny::Credential(c) => match c {
                CredentialDeny::Unknown(n) => {
                    (403, ReasonCode::CredentialUnknown, format!("no credential `{n}` exists for this tenant"))
                }
                CredentialDeny::NotBound(n) => (
                    403,
                    ReasonCode::CredentialNotBound,
                    format!("credential `{n}` may not be sent to this destination"),
                ),
                CredentialDeny::Position(n, pos) => (
                    403,
                    ReasonCode::CredentialPosition,
                    format!("credential `{n}` may not appear in the request {pos}"),
                ),
                CredentialDeny::Expired(n) => (403, ReasonCode::CredentialExpired, format!("credential `{n}` has expired")),
                CredentialDeny::PolicyDenied(n) => (
                    403,
                    ReasonCode::CredentialDenied,
                    format!("no policy allows this workload to use credential `{n}` here"),
                ),
                CredentialDeny::Malformed(pos) => (
                    400,
                    ReasonCode::CredentialMalformed,
                    format!("malformed `$CRED{{…}}` handle in the request {pos}; write `$$CRED{{` for a literal"),
                ),
                CredentialDeny::Raw(place) => (
                    403,
                    ReasonCode::RawCredential,
                    format!("a literal credential in {place} is not accepted for this destination; use a `$CRED{{name}}` handle"),
                ),
                CredentialDeny::Repeated(place) => (
                    400,
                    ReasonCode::CredentialRepeated,
                    format!("{place} is given more than once; a credential position holds exactly one `$CRED{{name}}` handle"),
                ),
                CredentialDeny::ScanIncomplete(ScanGap::TooLarge(limit)) => (
                    413,
                    ReasonCode::CredentialScanIncomplete,
                    format!("the request body is larger than the {limit} bytes scanned for credentials, and this destination's keys are managed by the proxy"),
                ),
                CredentialDeny::ScanIncomplete(ScanGap::Encoded) => (
                    415,
                    ReasonCode::CredentialScanIncomplete,
                    "a request body with a `Content-Encoding` cannot be scanned for credentials, and this destination's keys are managed by the proxy; send it unencoded".into(),
                ),
            },
            Deny::Limited(l) => {
                let whose = match &l.key.scope {
                    Scope::Tenant(_) => "this tenant",
                    Scope::Workload(..) => "this workload",
                    Scope::Run(..) => "this run",
                };
                let retry = l.retry_after.map_or(0, |r| r.as_secs().max(1));
                match l.key.kind {
                    LimitKind::Rate { per_period, period_secs, .. } => (
                        429,
                        ReasonCode::RateLimited,
                        format!(
                            "{whose} is over its ceiling of {per_period} requests per {}; retry after {retry}s",
                            if period_secs == 1 { "second" } else { "minute" },
                        ),
                    ),
                    LimitKind::Concurrency { max } => (
                        429,
                        ReasonCode::ConcurrencyLimited,
                        format!("{whose} already has {max} requests in flight"),
                    ),
                    LimitKind::TokensPerMinute { ceiling } => (
                        429,
                        ReasonCode::TokenLimit,
                        format!(
                            "{whose} would exceed its {ceiling} LLM tokens per minute with this call's reservation; retry after {retry}s",
                        ),
                    ),
                    LimitKind::Quota { measure, window, ceiling } => {
                        let what = match measure {
                            Measure::Tokens => format!("{ceiling} LLM tokens"),
                            Measure::Cost => format!(
                                "cost ceiling of {} (currency units)",
                                crate::pricing::format_micros(ceiling)
                            ),
                            Measure::ToolCalls => format!("{ceiling} tool calls"),
                        };
                        let when = match window {
                            Window::Run => "; a run's budget does not renew".to_string(),
                            Window::Day(_) => format!("; the day ends in {retry}s (tenant time zone)"),
                            Window::Month(_) => format!("; the month ends in {retry}s (tenant time zone)"),
                        };
                        (
                            429,
                            ReasonCode::BudgetExhausted,
                            format!("{whose} would exceed its {} {what} with this call's reservation{when}", window.as_str()),
                        )
                    }
                    LimitKind::WallTime { max_secs } => (
                        429,
                        ReasonCode::BudgetExhausted,
                        format!("{whose} is past its wall-time budget of {max_secs}s"),
                    ),
                }
            }
            Deny::LimiterUnavailable => (
                503,
                ReasonCode::LimiterUnavailable,
                "the limit counters cannot be reached; the request was not forwarded, retry shortly".into(),
            ),
            Deny::ModelNotPriced(model) => (
                403,
                ReasonCode::ModelNotPriced,
                format!("model `{model}` has no price in the price table, and unpriced models are refused"),
            ),
            Deny::StreamCut(CutReason::Budget(ceiling)) => (
                429,
                ReasonCode::BudgetExhausted,
                format!("the stream was ended: the {ceiling} budget is spent"),
            ),
            Deny::StreamCut(CutReason::Unavailable) => (
                503,
                ReasonCode::LimiterUnavailable,
                "the stream was ended: the limit counters cannot be reached to extend its reservation".into(),
            ),
            Deny::BadRequest(why) => (400, ReasonCode::BadRequest, why.clone()),
            Deny::HostMismatch => (
                400,
                ReasonCode::HostMismatch,
                "the `Host` header does not match the request target's authority".into(),
            ),
            Deny::RouteNotFound => (
                404,
                ReasonCode::RouteNotFound,
                "no route matches this path; use an absolute URL through the proxy or a configured route prefix".into(),
            ),
            Deny::ConnectUnsupported => (
                405,
                ReasonCode::ConnectUnsupported,
                "`CONNECT` must be the first request on a connection; open a new connection for the tunnel".into(),
            ),
            Deny::ConnectPortForbidden(port) => (
                403,
                ReasonCode::ConnectPortForbidden,
                format!("tunnels to port {port} are not allowed by this proxy"),
            ),
            Deny::DestinationForbidden(why) => (
                403,
                ReasonCode::DestinationForbidden,
                format!("the destination is not reachable through this proxy: {why}"),
            ),
            Deny::TunnelLimit(max) => (
                429,
                ReasonCode::TunnelLimit,
                format!("this tenant already has {max} tunnels open; close one or retry shortly"),
            ),
            Deny::InterceptionUnavailable(why) => (
                403,
                ReasonCode::InterceptionUnavailable,
                format!("this tunnel must be inspected but cannot be: {why}"),
            ),
            Deny::HeadersTooLarge => {
                (431, ReasonCode::RequestHeadersTooLarge, "request headers exceed the configured limit".into())
            }
            Deny::BodyTooLarge => {
                (413, ReasonCode::RequestBodyTooLarge, "request body exceeds the configured limit".into())
            }
            Deny::LengthRequired => (
                411,
                ReasonCode::LengthRequired,
                "chunked request bodies over 64 KiB need a `Content-Length` header".into(),
            ),
            Deny::UpstreamUnreachable => {
                (502, ReasonCode::UpstreamUnreachable, "the upstream could not be reached".into())
            }
            Deny::UpstreamTimeout => (504, ReasonCode::UpstreamTimeout, "the upstream did not answer in time".into()),
            Deny::UpstreamTls => (
                502,
                ReasonCode::UpstreamTls,
                "the upstream's TLS certificate could not be verified".into(),
            ),
            Deny::AuditUnavailable => (
                503,
                ReasonCode::AuditUnavailable,
                "the audit log cannot record this request right now; retry shortly".into(),
            ),
            Deny::McpMalformed(why) => (
                400,
                ReasonCode::McpMalformed,
                format!("this MCP server accepts only JSON-RPC 2.0 the proxy can check: {why}"),
            ),
            Deny::ToolDenied(tool) => (
                403,
                ReasonCode::ToolDenied,
                format!("no policy allows this workload to call MCP tool `{tool}`; nothing was sent to the server"),
            ),
            Deny::McpResponseUnfiltered(why) => (
                502,
                ReasonCode::McpResponseUnfiltered,
                format!("the MCP server's tool list could not be filtered, so it was withheld: {why}"),
            ),
            Deny::RunClosed => (
                403,
                ReasonCode::RunClosed,
                "this run was closed; start a new run with a new token".into(),
            ),
            Deny::Internal => (500, ReasonCode::Internal, "internal error; the request was not forwarded".into()),
            Deny::UpstreamEncoded => (
                502,
                ReasonCode::UpstreamEncoded,
                "the upstream answered with a compressed body although the request carried a credential and asked for none; it was withheld, since an echoed secret could not be removed from it".into(),
            ),
        }
    }

    /// The reason code alone.
    pub fn code(&self) -> ReasonCode {
        self.describe().1
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

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorFields<'a>,
}

#[derive(Serialize)]
struct ErrorFields<'a> {
    code: ReasonCode,
    message: &'a str,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ceiling: Option<&'a str>,
}

/// The JSON body of a refusal: `{"error":{"code":…,"message":…,"request_id":…}}`, plus
/// `"ceiling"` (`run`, `day` or `month`) for `budget_exhausted`.
pub fn error_body(
    code: ReasonCode,
    message: &str,
    request_id: &str,
    ceiling: Option<&str>,
) -> Vec<u8> {
    let body = ErrorBody {
        error: ErrorFields {
            code,
            message,
            request_id,
            ceiling,
        },
    };
    // Serializing this struct of strings cannot fail; fall back to a fixed body regardless.
    serde_json::to_vec(&body).unwrap_or_else(|_| br#"{"error":{"code":"internal_error"}}"#.to_vec())
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
            (Deny::PolicyDenied, 403, "policy_denied"),
            (Deny::HostMismatch, 400, "host_mismatch"),
            (Deny::RouteNotFound, 404, "route_not_found"),
            (Deny::HeadersTooLarge, 431, "request_headers_too_large"),
            (Deny::BodyTooLarge, 413, "request_body_too_large"),
            (Deny::UpstreamUnreachable, 502, "upstream_unreachable"),
            (Deny::UpstreamTimeout, 504, "upstream_timeout"),
            (Deny::AuditUnavailable, 503, "audit_unavailable"),
            (Deny::McpMalformed("x".into()), 400, "mcp_malformed"),
            (Deny::ToolDenied("x".into()), 403, "tool_denied"),
            (Deny::RunClosed, 403, "run_closed"),
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
            (Deny::UpstreamEncoded, 502, "upstream_encoded"),
            (
                Deny::McpResponseUnfiltered("x".into()),
                502,
                "mcp_response_unfiltered",
            ),
        ];
        for (deny, status, code) in cases {
            let (s, c, _) = deny.describe();
            assert_eq!((s, c.as_str()), (status, code), "{deny:?}");
            // serde and as_str agree
            assert_eq!(
                serde_json::to_value(c).ok(),
                Some(serde_json::Value::from(code))
            );
        }
    }

    #[test]
    fn body_shape() {
        let body = error_body(ReasonCode::PolicyDenied, "no", "req-1", None);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["error"]["code"], "policy_denied");
        assert_eq!(v["error"]["request_id"], "req-1");
    }
}
