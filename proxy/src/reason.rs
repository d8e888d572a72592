//! The closed set of reason codes: the stable snake_case strings a request's outcome is known
//! by in its JSON refusal body, its audit record, its metric label and its log line. Written
//! once, here: the enum, its text and its serialized form all come from the one table below, so
//! they cannot disagree.

use std::fmt;

/// Defines [`ReasonCode`] from `Variant => "text"` pairs.
macro_rules! reason_codes {
    ($($(#[$doc:meta])* $variant:ident => $text:literal,)*) => {
        /// A stable snake_case reason code. Used as JSON `code`, audit `reason` and metric label,
        /// so its set of values is closed.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ReasonCode {
            $($(#[$doc])* $variant,)*
        }

        impl ReasonCode {
            /// Every code, in table order.
            pub const ALL: &'static [ReasonCode] = &[$(ReasonCode::$variant,)*];

            /// The snake_case text of the code.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ReasonCode::$variant => $text,)*
                }
            }
        }
    };
}

reason_codes! {
    /// The request was allowed and forwarded.
    Allowed => "allowed",
    /// See `Deny::IdentityRequired`.
    IdentityRequired => "identity_required",
    /// See `Deny::IdentityInvalid`.
    IdentityInvalid => "identity_invalid",
    /// See `Deny::PolicyDenied`.
    PolicyDenied => "policy_denied",
    /// The handle names no credential of this tenant.
    CredentialUnknown => "credential_unknown",
    /// The credential is not bound to this destination.
    CredentialNotBound => "credential_not_bound",
    /// The handle is in a position the credential may not appear in.
    CredentialPosition => "credential_position",
    /// The credential has expired.
    CredentialExpired => "credential_expired",
    /// Policy forbids using the credential here.
    CredentialDenied => "credential_denied",
    /// A malformed handle.
    CredentialMalformed => "credential_malformed",
    /// A literal key where the proxy manages the credential.
    RawCredential => "raw_credential",
    /// A request-rate ceiling was reached.
    RateLimited => "rate_limited",
    /// A concurrency ceiling was reached.
    ConcurrencyLimited => "concurrency_limited",
    /// See `Deny::LimiterUnavailable`.
    LimiterUnavailable => "limiter_unavailable",
    /// An LLM token ceiling would be crossed.
    TokenLimit => "token_limit",
    /// A cost, token, tool-call or wall-time budget of a run, day or month is spent.
    BudgetExhausted => "budget_exhausted",
    /// See `Deny::ModelNotPriced`.
    ModelNotPriced => "model_not_priced",
    /// See `Deny::UnmeteredCall`.
    UnmeteredCall => "unmetered_call",
    /// See `Deny::BadRequest`.
    BadRequest => "bad_request",
    /// See `Deny::HostMismatch`.
    HostMismatch => "host_mismatch",
    /// See `Deny::RouteNotFound`.
    RouteNotFound => "route_not_found",
    /// See `Deny::ConnectUnsupported`.
    ConnectUnsupported => "connect_unsupported",
    /// See `Deny::ConnectPortForbidden`.
    ConnectPortForbidden => "connect_port_forbidden",
    /// See `Deny::DestinationForbidden`.
    DestinationForbidden => "destination_forbidden",
    /// See `Deny::TunnelLimit`.
    TunnelLimit => "tunnel_limit",
    /// See `Deny::InterceptionUnavailable`.
    InterceptionUnavailable => "interception_unavailable",
    /// See `Deny::HeadersTooLarge`.
    RequestHeadersTooLarge => "request_headers_too_large",
    /// See `Deny::BodyTooLarge`.
    RequestBodyTooLarge => "request_body_too_large",
    /// See `Deny::LengthRequired`.
    LengthRequired => "length_required",
    /// See `Deny::UpstreamUnreachable`.
    UpstreamUnreachable => "upstream_unreachable",
    /// See `Deny::UpstreamFailed`.
    UpstreamFailed => "upstream_failed",
    /// See `Deny::UpstreamTimeout`.
    UpstreamTimeout => "upstream_timeout",
    /// See `Deny::UpstreamTls`.
    UpstreamTls => "upstream_tls",
    /// See `Deny::AuditUnavailable`.
    AuditUnavailable => "audit_unavailable",
    /// See `Deny::McpMalformed`.
    McpMalformed => "mcp_malformed",
    /// See `Deny::McpSessionUnknown`.
    McpSessionUnknown => "mcp_session_unknown",
    /// See `Deny::ToolDenied`.
    ToolDenied => "tool_denied",
    /// See `Deny::McpResponseUnfiltered`.
    McpResponseUnfiltered => "mcp_response_unfiltered",
    /// See `Deny::RunClosed`.
    RunClosed => "run_closed",
    /// See `Deny::Internal`.
    Internal => "internal_error",
    /// A credential position given more than one value.
    CredentialRepeated => "credential_repeated",
    /// A body toward a managed destination that cannot be scanned whole.
    CredentialScanIncomplete => "credential_scan_incomplete",
    /// No access token could be obtained for a token credential.
    CredentialUnavailable => "credential_unavailable",
    /// See `Deny::UpstreamEncoded`.
    UpstreamEncoded => "upstream_encoded",
    /// See `Deny::Framing`.
    BadFraming => "bad_framing",
    /// See `Deny::UnsupportedTransferEncoding`.
    UnsupportedTransferEncoding => "unsupported_transfer_encoding",
    /// See `Deny::TooManyHeaders`.
    TooManyHeaders => "too_many_headers",
    /// See `Deny::RequestTimeout`.
    RequestTimeout => "request_timeout",
    /// See `Deny::Overloaded`.
    Overloaded => "overloaded",
    /// See `Deny::ConnectionLimit`.
    ConnectionLimit => "connection_limit",
    /// See `Deny::BodyMemoryLimit`.
    BodyMemoryLimit => "body_memory_limit",
    /// See `Deny::DnsLookupLimit`.
    DnsLookupLimit => "dns_lookup_limit",
    /// See `Deny::ProtectedHopHeader`.
    BadConnectionHeader => "bad_connection_header",
    /// See `Deny::ClientClosed`.
    ClientClosed => "client_closed",
    /// See `Deny::Shutdown`.
    Shutdown => "shutdown",
    /// See `Deny::AdminNotFound`.
    NotFound => "not_found",
    /// See `Deny::MethodNotAllowed`.
    MethodNotAllowed => "method_not_allowed",
    /// See `Deny::UnsupportedBody`.
    UnsupportedMediaType => "unsupported_media_type",
    /// See `Deny::ResourceDenied`.
    ResourceDenied => "resource_denied",
    /// See `Deny::PromptDenied`.
    PromptDenied => "prompt_denied",
    /// See `Deny::ApprovalPending`.
    ApprovalPending => "approval_pending",
    /// See `Deny::ApprovalDenied`.
    ApprovalDenied => "approval_denied",
    /// See `Deny::ApprovalTimeout`.
    ApprovalTimeout => "approval_timeout",
    /// See `Deny::ApprovalCapacity`.
    ApprovalCapacity => "approval_capacity",
    /// See `Deny::ApprovalUnavailable`.
    ApprovalUnavailable => "approval_unavailable",
    /// See `Deny::ApprovalUnknown`.
    ApprovalUnknown => "approval_unknown",
    /// See `Deny::ApproverForbidden`.
    ApproverForbidden => "approver_forbidden",
    /// See `Deny::ApproverUnauthenticated`.
    ApproverUnauthenticated => "approver_unauthenticated",
    /// See `Deny::HoldResolved`.
    HoldResolved => "hold_resolved",
    /// See `Deny::HoldOrphaned`.
    HoldOrphaned => "hold_orphaned",
    /// See `Deny::AdminUnauthorized`.
    AdminUnauthorized => "admin_unauthorized",
    /// See `Deny::BrowserRequest`.
    BrowserRequest => "browser_request",
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ReasonCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_unique_snake_case_and_serializes_as_its_text() {
        let mut seen = std::collections::HashSet::new();
        for code in ReasonCode::ALL {
            let text = code.as_str();
            assert!(seen.insert(text), "`{text}` twice");
            assert!(
                text.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{text}"
            );
            assert_eq!(
                serde_json::to_value(code).ok(),
                Some(serde_json::Value::from(text))
            );
        }
        assert_eq!(ReasonCode::Internal.as_str(), "internal_error");
    }
}
