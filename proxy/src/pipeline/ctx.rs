//! pingora's per-request context: the request's [`Trail`] (what its record is made of), the
//! [`Admitted`] value the chain hands over (absent until every check passed, so a phase that
//! needs it and finds none refuses), and the response's stages.

use std::sync::{Arc, OnceLock};

use super::admit::{Admitted, Grant, HttpGrant};
use super::lapse::{Lapse, Recheck};
use super::record::Trail;
use super::respond::Stages;

/// The state of one request.
#[derive(Debug)]
pub struct RequestCtx {
    /// What the record, metrics and log line are made of.
    pub trail: Trail,
    /// Set only when the admission chain admitted the request.
    pub admitted: Option<Admitted>,
    /// The response body's stages.
    pub stages: Stages,
    /// The final event of a response cut short (a stream out of budget, an MCP list that could
    /// not be filtered), written by `fail_to_proxy`.
    pub cut_event: Option<Vec<u8>>,
    /// The held body was handed to the current upstream attempt (see
    /// `TenantProxy::request_body_filter`).
    pub body_handed: bool,
    /// An upstream's interim answer (`100 Continue`, `103 Early Hints`) was relayed to the
    /// client: the request is not tried again (see `TenantProxy::error_while_proxy`). The
    /// proxy's own `100 Continue` to a client that expects one is not an upstream's answer.
    pub interim_relayed: bool,
    /// For an upgrade request, where its relay's end is noted when its identity lapsed (see
    /// [`super::lapse`]).
    pub lapse: Option<Arc<OnceLock<Lapse>>>,
    /// When the response's identity is next judged as its body passes.
    pub recheck: Recheck,
}

impl RequestCtx {
    /// A context on listener `listener` that has no identity and is not authorized.
    pub fn new(listener: Arc<str>) -> Self {
        Self {
            trail: Trail::new(listener, String::from("-")),
            admitted: None,
            stages: Stages::default(),
            cut_event: None,
            body_handed: false,
            interim_relayed: false,
            lapse: None,
            recheck: Recheck::default(),
        }
    }

    /// Whether the proxy ended this request's relay because its identity lapsed; if so the
    /// trail records it so (the refusal, and why), whatever else ended the exchange.
    pub fn note_lapse(&mut self) -> bool {
        let Some(lapse) = self.lapse.as_ref().and_then(|l| l.get()) else {
            return false;
        };
        self.trail.ended = Some(lapse.ended);
        self.trail.refuse(lapse.deny.clone());
        // The record names what ended the relay (the forbid, in the policy set that decided
        // it), not the permit that admitted it.
        if let Some(withdrawn) = &lapse.withdrawn_by {
            self.trail.decision = Some(withdrawn.0.clone());
            self.trail.policy_version = withdrawn.1.clone();
        }
        true
    }

    /// The admitted request and its HTTP grant, when the chain admitted it.
    pub fn http(&self) -> Option<(&Admitted, &HttpGrant)> {
        self.admitted.as_ref().and_then(|a| match &a.grant {
            Grant::Http(g) => Some((a, g)),
            Grant::Tunnel(_) => None,
        })
    }

    /// The request's id.
    pub fn request_id(&self) -> &Arc<str> {
        &self.trail.request_id
    }
}
