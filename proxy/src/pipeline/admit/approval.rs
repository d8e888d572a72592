//! What an approval hold shows an approver, and what its end makes of the request.

use super::*;

/// What an approver is shown of a held request (never a secret).
pub(super) fn held_request(
    header: &RequestHeader,
    destination: &Destination,
    trail: &Trail,
    applied: &Applied,
    cost_micros: u64,
) -> HeldRequest {
    HeldRequest {
        method: trail.method.clone(),
        scheme: destination.scheme.as_str().into(),
        host: destination.host.clone(),
        port: destination.port,
        path: destination.audit_path.clone(),
        model: trail.model.clone(),
        mcp_server: trail.mcp.as_ref().map(|m| m.server.clone()),
        mcp_tools: trail
            .mcp
            .as_ref()
            .map(|m| m.tools_called.clone())
            .unwrap_or_default(),
        body_sha256: trail.body_sha256.clone(),
        credentials: applied.used.iter().map(|c| c.name.clone()).collect(),
        estimated_cost_micros: (cost_micros > 0).then_some(cost_micros),
        digest: crate::approvals::request_digest(
            &trail.method,
            &approval_target(destination, header.raw_path()),
            &header.headers,
            trail.body_sha256.as_deref(),
        ),
    }
}

/// Where a held request goes, as its approval's digest reads it: the scheme, host and port
/// (an HTTP/2 request in a tunnel has no `Host` to carry them, and an approval for one server
/// must not be spent on another port of the same name) and the target as sent.
pub(in crate::pipeline) fn approval_target(destination: &Destination, target: &[u8]) -> String {
    format!(
        "{}://{}:{}|{}",
        destination.scheme.as_str(),
        destination.host,
        destination.port,
        String::from_utf8_lossy(target)
    )
}

/// The request record's `approval` for a hold that ended with `held`.
pub(super) fn approval_fields(
    need: &ApprovalNeed,
    held: &Result<Granted, HoldEnd>,
) -> ApprovalFields {
    let (hold_id, outcome, approver) = match held {
        // `policy explain` holds nothing: the request would be held.
        Ok(g) if g.hold_id.is_empty() => (None, "required", None),
        Ok(g) => (Some(g.hold_id.clone()), "granted", g.approver.clone()),
        Err(end) => (
            end.hold_id().map(String::from),
            end.outcome(),
            match end {
                HoldEnd::Denied(_, who, _) => who.clone(),
                _ => None,
            },
        ),
    };
    ApprovalFields {
        hold_id,
        outcome,
        approver,
        policy_ids: need.policy_ids.clone(),
    }
}

/// The refusal an agent gets for a hold that did not end in approval.
pub(super) fn deny_for_hold(end: HoldEnd) -> Deny {
    match end {
        HoldEnd::Pending(id) => Deny::ApprovalPending(id),
        HoldEnd::Denied(_, _, reason) => Deny::ApprovalDenied(reason),
        HoldEnd::Expired(_, secs) => Deny::ApprovalTimeout(secs),
        HoldEnd::Capacity(whose, max) => Deny::ApprovalCapacity(whose, max),
        HoldEnd::Unavailable(why) => Deny::ApprovalUnavailable(why),
        HoldEnd::Unknown => Deny::ApprovalUnknown,
        HoldEnd::ClientGone(_) => Deny::ClientClosed,
        HoldEnd::ShuttingDown(_) => Deny::ApprovalUnavailable(
            "the proxy is shutting down; the request was not forwarded, send it again".into(),
        ),
    }
}
