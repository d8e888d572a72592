//! Who is calling and on whose behalf: one immutable [`TenantContext`] per request, built once
//! from a verified identity and passed by reference to every later phase. Nothing in it comes
//! from what the agent writes, except the trace it asks to continue.

use std::sync::Arc;

use crate::identity::token::{Initiator, RunBudget};
use crate::identity::{IdentitySourceKind, ResolvedIdentity};
use crate::ids::{TenantId, WorkloadId};
use crate::trace::TraceContext;

/// What kind of principal made the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// An agent workload (the only kind the proxy sees today).
    Workload,
}

/// The run a request belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The run id.
    pub id: String,
    /// True when the id came from a signed token; an unsigned run id is minted per request and
    /// carries no budget.
    pub signed: bool,
    /// Unix second the signed token naming the run expires (when its summary is due).
    pub expires_at: Option<u64>,
}

/// Who is calling and on whose behalf: one immutable value per request.
#[derive(Debug)]
pub struct TenantContext {
    /// The tenant, from a verified identity only.
    pub tenant: TenantId,
    /// The workload within the tenant.
    pub workload: WorkloadId,
    /// Principal kind.
    pub principal_kind: PrincipalKind,
    /// Which identity source vouched for the workload.
    pub identity_source: IdentitySourceKind,
    /// The run.
    pub run: Run,
    /// The run's budget, from a signed token.
    pub budget: Option<RunBudget>,
    /// Scopes granted to the run.
    pub scopes: Vec<String>,
    /// Who started the run.
    pub initiator: Option<Initiator>,
    /// Upstream correlation id from the token.
    pub correlation_id: Option<String>,
    /// The token's id (`jti`), when a token with one identified the caller: the audit record
    /// names it, so that a leaked token's requests can be found, and a revoked one's refusals.
    pub token_id: Option<String>,
    /// This request's id.
    pub request_id: Arc<str>,
    /// Trace context.
    pub trace: TraceContext,
}

impl TenantContext {
    /// The context of a request from `who`; `traceparent` (the request's header, when it has
    /// one) continues the caller's trace. A run id is signed only when a verified token named
    /// it; otherwise the run is this request alone and carries no budget.
    pub fn new(who: ResolvedIdentity, request_id: Arc<str>, traceparent: Option<&[u8]>) -> Self {
        let trace = TraceContext::continue_or_start(traceparent);
        let token = who.token;
        let run = match token
            .as_ref()
            .and_then(|t| t.run_id.clone().map(|id| (id, t.expires_at)))
        {
            Some((id, expires_at)) => Run {
                id,
                signed: true,
                expires_at: Some(expires_at),
            },
            // An unsigned run is this request alone: it can neither carry nor reset a run budget.
            None => Run {
                id: ["unsigned-", &request_id].concat(),
                signed: false,
                expires_at: None,
            },
        };
        TenantContext {
            tenant: who.tenant,
            workload: who.workload,
            principal_kind: PrincipalKind::Workload,
            identity_source: who.source,
            budget: token.as_ref().and_then(|t| t.run_budget.clone()),
            scopes: token.as_ref().map(|t| t.scopes.clone()).unwrap_or_default(),
            initiator: token.as_ref().and_then(|t| t.initiator),
            correlation_id: token.as_ref().and_then(|t| t.correlation_id.clone()),
            token_id: token.as_ref().and_then(|t| t.jti.clone()),
            run,
            request_id,
            trace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_signed_only_when_a_token_named_it() {
        let who = ResolvedIdentity {
            tenant: TenantId::new("acme").expect("id"),
            workload: WorkloadId::new("bot").expect("id"),
            source: IdentitySourceKind::Binding,
            token: None,
            certificate: None,
        };
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = TenantContext::new(who, Arc::from("req-1"), Some(tp));
        assert_eq!(c.run.id, "unsigned-req-1");
        assert!(!c.run.signed && c.budget.is_none() && c.scopes.is_empty());
        assert_eq!(c.trace.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
