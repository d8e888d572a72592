//! The approvals API, on its own listener (`[approvals] listen`), never on an agent listener.
//! Every call carries `Authorization: Bearer <approver token>`: a token verified with the same
//! keys as workload tokens but for the approvals audience only; its `tenant` is the approver's
//! tenant, its `sub` the approver, its `scope` the groups they belong to.
//!
//! | call | what |
//! |---|---|
//! | `GET /v1/tenants/{tenant}/holds` | the tenant's pending holds |
//! | `GET /v1/tenants/{tenant}/holds/{id}` | one hold and its state |
//! | `POST /v1/tenants/{tenant}/holds/{id}/approve` | approve (`{"reason": "…"}` optional) |
//! | `POST /v1/tenants/{tenant}/holds/{id}/deny` | deny (`{"reason": "…"}`, told to the agent) |
//!
//! SECURITY: an approver acts on their own tenant only. A path naming another tenant is refused
//! `approver_forbidden` (and audited in the approver's own partition) before any hold is looked
//! at; holds are looked up under the approver's tenant, so another tenant's hold id finds
//! nothing. A hold whose policy names `@approvers` groups is decided only by a token carrying
//! all of them.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use super::store::{Change, Decided, HoldState, Transition};
use super::{event, now_ms, view, Holds};
use crate::audit::{ApprovalEvent, EventKind};
use crate::error::{error_body, Deny};
use crate::ids::TenantId;
use crate::metrics::METRICS;

/// A verified approver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approver {
    /// Their tenant (the token's `tenant`).
    pub tenant: TenantId,
    /// Who they are (the token's `sub`).
    pub name: String,
    /// Their groups (the token's `scope`).
    pub groups: Vec<String>,
}

/// Verifies an approver token (the bearer value); the error says why, never the token.
pub type Authenticate = Arc<dyn Fn(&str) -> Result<Approver, String> + Send + Sync>;

/// Longest reason an approver may give.
const MAX_REASON: usize = 500;
/// Largest request body the API reads.
const MAX_BODY: usize = 4096;

/// Serves the approvals API.
pub struct ApprovalsApp {
    holds: Arc<Holds>,
    authenticate: Authenticate,
}

impl std::fmt::Debug for ApprovalsApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalsApp").finish_non_exhaustive()
    }
}

/// What a call asks for.
#[derive(Debug, PartialEq, Eq)]
enum Call<'a> {
    List,
    Get(&'a str),
    Decide(&'a str, bool),
}

/// `/v1/tenants/{tenant}/holds[/{id}[/approve|/deny]]`: the tenant and the call.
fn route<'a>(method: &http::Method, path: &'a str) -> Result<(&'a str, Call<'a>), Deny> {
    let rest = path
        .strip_prefix("/v1/tenants/")
        .ok_or_else(|| Deny::AdminNotFound(format!("no endpoint `{path}`")))?;
    let parts: Vec<&str> = rest.split('/').collect();
    // SECURITY: a hold id is 32 hex digits; nothing else reaches the store's keys.
    if let Some(id) = parts.get(2) {
        if !super::valid_hold_id(id) {
            return Err(Deny::AdminNotFound(format!(
                "no hold `{id}` of this tenant"
            )));
        }
    }
    let call = match (parts.as_slice(), method.as_str()) {
        ([_, "holds"], "GET") => Call::List,
        ([_, "holds", id], "GET") => Call::Get(id),
        ([_, "holds", id, "approve"], "POST") => Call::Decide(id, true),
        ([_, "holds", id, "deny"], "POST") => Call::Decide(id, false),
        ([_, "holds"], _) | ([_, "holds", _], _) => {
            return Err(Deny::MethodNotAllowed("use GET".into()))
        }
        ([_, "holds", _, "approve" | "deny"], _) => {
            return Err(Deny::MethodNotAllowed("use POST".into()))
        }
        _ => return Err(Deny::AdminNotFound(format!("no endpoint `{path}`"))),
    };
    Ok((parts[0], call))
}

impl ApprovalsApp {
    /// The API over `holds`, approvers verified by `authenticate`.
    pub fn new(holds: Arc<Holds>, authenticate: Authenticate) -> Self {
        Self {
            holds,
            authenticate,
        }
    }

    async fn serve(&self, session: &mut ServerSession) -> Result<serde_json::Value, Deny> {
        let req = session.req_header();
        let (method, path) = (req.method.clone(), req.uri.path().to_string());
        // SECURITY: two `Authorization` headers are two approvers; none is picked (the rule
        // of the proxy listeners' `Proxy-Authorization`). The scheme is read in any case, as
        // on every other listener.
        let bearer =
            crate::identity::sole_header(&req.headers, http::header::AUTHORIZATION).map(|value| {
                value
                    .and_then(|v| v.to_str().ok())
                    .and_then(crate::identity::bearer_token)
                    .map(String::from)
            });
        let (tenant, call) = route(&method, &path)?;
        let tenant = tenant.to_string();
        let call_text = format!("{method} {path}");
        let bearer = bearer
            .map_err(|_| {
                Deny::ApproverUnauthenticated("more than one `Authorization` header".into())
            })?
            .ok_or_else(|| Deny::ApproverUnauthenticated("no bearer token".into()))?;
        let approver = (self.authenticate)(&bearer).map_err(Deny::ApproverUnauthenticated)?;
        if tenant != approver.tenant.as_str() {
            return Err(self.refuse(
                &approver,
                None,
                &call_text,
                "an approver may only act on their own tenant's holds",
            ));
        }
        let store = self.holds.store();
        let unavailable = |_| Deny::ApprovalUnavailable("the hold store cannot be reached".into());
        match call {
            Call::List => {
                let holds = store
                    .pending(approver.tenant.as_str(), now_ms())
                    .await
                    .map_err(unavailable)?;
                Ok(serde_json::json!({
                    "tenant": approver.tenant.as_str(),
                    "holds": holds.iter().map(|h| view(&h.record)).collect::<Vec<_>>(),
                }))
            }
            Call::Get(id) => {
                let hold = store
                    .get(approver.tenant.as_str(), id)
                    .await
                    .map_err(unavailable)?
                    .ok_or_else(|| not_found(id))?;
                Ok(status_json(&hold))
            }
            Call::Decide(id, approve) => {
                let reason = read_reason(session).await?;
                let id = id.to_string();
                let hold = store
                    .get(approver.tenant.as_str(), &id)
                    .await
                    .map_err(unavailable)?
                    .ok_or_else(|| not_found(&id))?;
                if let Some(missing) = hold
                    .record
                    .approvers
                    .iter()
                    .find(|g| !approver.groups.contains(g))
                {
                    return Err(self.refuse(
                        &approver,
                        Some(&id),
                        &call_text,
                        &format!("this hold needs an approver in group `{missing}`"),
                    ));
                }
                // SECURITY: the decision is recorded, or not made.
                let slot = self
                    .holds
                    .audit()
                    .reserve_for(&approver.tenant)
                    .map_err(|_| Deny::AuditUnavailable)?;
                let to = if approve {
                    HoldState::Approved
                } else {
                    HoldState::Denied
                };
                let change = Change {
                    from: HoldState::Pending,
                    to,
                    decided: Decided {
                        approver: Some(approver.name.clone()),
                        reason: reason.clone(),
                        at_ms: now_ms(),
                    },
                    before_deadline: true,
                };
                match store
                    .transition(approver.tenant.as_str(), &id, change)
                    .await
                    .map_err(unavailable)?
                {
                    Transition::Done(h) => {
                        let (kind, outcome) = if approve {
                            (EventKind::ApprovalGranted, "granted")
                        } else {
                            (EventKind::ApprovalDenied, "denied")
                        };
                        let tenant = approver.tenant.as_str();
                        METRICS
                            .approval_outcomes
                            .with_label_values(&[tenant, outcome])
                            .inc();
                        METRICS
                            .approval_decision_duration
                            .with_label_values(&[tenant])
                            .observe(now_ms().saturating_sub(h.record.created_ms) as f64 / 1000.0);
                        slot.emit(event(
                            kind,
                            &h.record,
                            Some(approver.name.clone()),
                            reason,
                            None,
                        ));
                        tracing::info!(tenant, hold_id = %id, approver = %approver.name, outcome, "approval decided");
                        Ok(status_json(&h))
                    }
                    Transition::Orphaned => {
                        // SECURITY: nobody would forward it: refused, and the hold's end
                        // recorded, naming who tried.
                        METRICS
                            .approval_outcomes
                            .with_label_values(&[approver.tenant.as_str(), "orphaned"])
                            .inc();
                        slot.emit(event(
                            EventKind::ApprovalOrphaned,
                            &hold.record,
                            Some(approver.name.clone()),
                            reason,
                            None,
                        ));
                        tracing::info!(tenant = %approver.tenant, hold_id = %id, approver = %approver.name, "approval refused: the hold's owner is gone");
                        Err(Deny::HoldOrphaned)
                    }
                    Transition::NotFrom(HoldState::Orphaned) => Err(Deny::HoldOrphaned),
                    Transition::NotFrom(state) => Err(Deny::HoldResolved(state.as_str().into())),
                    Transition::Late => Err(Deny::HoldResolved("expired".into())),
                    Transition::Unknown => Err(not_found(&id)),
                }
            }
        }
    }

    /// Refuses an approver's call outside what their token covers, audited in their own
    /// tenant's partition (never in the tenant they named).
    fn refuse(&self, approver: &Approver, hold: Option<&str>, call: &str, why: &str) -> Deny {
        METRICS
            .approval_outcomes
            .with_label_values(&[approver.tenant.as_str(), "refused"])
            .inc();
        match self.holds.audit().reserve_for(&approver.tenant) {
            Ok(slot) => slot.emit(ApprovalEvent {
                event: EventKind::ApprovalRefused,
                time: crate::clock::rfc3339(std::time::SystemTime::now()),
                tenant: approver.tenant.to_string(),
                hold_id: hold.map(String::from),
                workload: None,
                run_id: None,
                request_id: None,
                approver: Some(approver.name.clone()),
                reason: Some(why.to_string()),
                detail: Some(serde_json::json!({ "call": call })),
                decision_s: None,
            }),
            Err(_) => tracing::warn!("the audit log cannot record a refused approver call"),
        }
        Deny::ApproverForbidden(why.to_string())
    }
}

fn not_found(id: &str) -> Deny {
    Deny::AdminNotFound(format!("no hold `{id}` of this tenant"))
}

fn status_json(h: &super::store::HoldStatus) -> serde_json::Value {
    // A pending hold whose owner's lease lapsed is orphaned, whether or not a call has marked
    // it so yet.
    let state = if h.lapsed(now_ms()) {
        HoldState::Orphaned
    } else {
        h.state
    };
    serde_json::json!({
        "hold": view(&h.record),
        "state": state.as_str(),
        "decided": h.decided,
    })
}

/// The optional `{"reason": "…"}` body: at most [`MAX_REASON`] characters, no control
/// characters (it is told to the agent and written to the audit log).
async fn read_reason(session: &mut ServerSession) -> Result<Option<String>, Deny> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_BODY {
                    return Err(Deny::BodyTooLarge);
                }
            }
            Ok(None) => break,
            Err(_) => return Err(Deny::BadRequest("the body could not be read".into())),
        }
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        reason: Option<String>,
    }
    let parsed: Body = serde_json::from_slice(&body)
        .map_err(|e| Deny::BadRequest(format!("the body is not `{{\"reason\": \"…\"}}`: {e}")))?;
    match parsed.reason {
        Some(r) if r.chars().count() > MAX_REASON || r.chars().any(char::is_control) => {
            Err(Deny::BadRequest(format!(
                "`reason` must be at most {MAX_REASON} characters, without control characters"
            )))
        }
        other => Ok(other.filter(|r| !r.trim().is_empty())),
    }
}

fn respond(status: u16, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(body);
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let len = resp.body().len();
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    resp
}

#[async_trait]
impl ServeHttp for ApprovalsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match self.serve(session).await {
            Ok(v) => respond(200, v.to_string().into_bytes()),
            Err(deny) => {
                let (status, code, message) = deny.describe();
                let request_id = crate::trace::random_hex(16);
                let mut resp = respond(status, error_body(code, &message, &request_id, None));
                if let Ok(v) = http::HeaderValue::from_str(&request_id) {
                    resp.headers_mut().insert("x-request-id", v);
                }
                // `WWW-Authenticate` on 401, `Retry-After` where waiting helps.
                for (name, value) in deny.extra_headers(status) {
                    resp.headers_mut().append(name, value);
                }
                resp
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let get = http::Method::GET;
        let post = http::Method::POST;
        let h = "0123456789abcdef0123456789abcdef";
        let one = format!("/v1/tenants/acme/holds/{h}");
        assert_eq!(
            route(&get, "/v1/tenants/acme/holds"),
            Ok(("acme", Call::List))
        );
        assert_eq!(route(&get, &one), Ok(("acme", Call::Get(h))));
        let approve = format!("{one}/approve");
        assert_eq!(route(&post, &approve), Ok(("acme", Call::Decide(h, true))));
        let deny = format!("{one}/deny");
        assert_eq!(route(&post, &deny), Ok(("acme", Call::Decide(h, false))));
        assert_eq!(
            route(&get, &approve).map_err(|d| d.code()),
            Err(crate::error::ReasonCode::MethodNotAllowed)
        );
        // Unknown endpoints, and hold ids the proxy never makes (they never reach a store key).
        for bad in [
            "/".to_string(),
            "/v1/tenants/acme".into(),
            format!("{one}/x"),
            "/v2/tenants/acme/holds".into(),
            "/v1/tenants/acme/holds/h1".into(),
            format!("/v1/tenants/acme/holds/{}", h.to_uppercase()),
            "/v1/tenants/acme/holds/x}:pending".into(),
        ] {
            assert_eq!(
                route(&get, &bad).map_err(|d| d.code()),
                Err(crate::error::ReasonCode::NotFound),
                "{bad}"
            );
        }
    }
}
