//! The request pipeline as pingora phases. Each phase is a few lines that call one concern:
//!
//! | phase | what happens |
//! |---|---|
//! | `request_filter` | reserve audit slot → resolve identity → tenant context → parse target → read body → authorize (Cedar) |
//! | `upstream_peer` | requires the [`Permitted`] proof; resolves the host without blocking |
//! | `upstream_request_filter` | origin-form URI, `Host`, strip identity and tenant headers, trace context |
//! | `request_body_filter` | hands the buffered body to the upstream |
//! | `response_*` | status, byte counts, `x-request-id` |
//! | `logging` | audit record, metrics, one log line (every request, refusals too) |

use std::sync::Arc;
use std::time::Instant;

use crate::clock::unix_now;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};
use sha2::{Digest, Sha256};

use crate::audit::{AuditDecision, AuditRecord, AuditSink};
use crate::body::BufferedBody;
use crate::config::{ListenerSettings, StaticConfig};
use crate::context::TenantContext;
use crate::credentials::apply::{Applied, CredentialDeny, RequestParts};
use crate::credentials::binding::{Position, Target};
use crate::credentials::scrub::Scrubber;
use crate::credentials::Credential;
use crate::ctx::{Outcome, Permitted, RequestCtx};
use crate::error::{error_body, Deny, ReasonCode};
use crate::identity::Presented;
use crate::limits::plan::{CallFacts, Ending};
use crate::limits::stream::{cut_event, CutReason, StreamGuard, Verdict};
use crate::limits::{self, AdmitError, LimitBackend};
use crate::mcp::list_filter::{FilterError, ListFilter};
use crate::metrics::{Metrics, METRICS};
use crate::policy::shadow::ShadowDecision;
use crate::policy::{CredentialFacts, Decision, HttpRequestFacts};
use crate::snapshot::{Snapshot, SnapshotHandle};
use crate::target::Destination;
use crate::tunnel::Tunnel;
use crate::usage::include_usage::UsageEventStripper;
use crate::usage::UsageMeter;
use crate::{body, credentials, identity, target};

/// State shared by every listener's proxy.
#[derive(Debug)]
pub struct Shared {
    /// Static configuration.
    pub config: Arc<StaticConfig>,
    /// The current tenant snapshot.
    pub snapshot: Arc<SnapshotHandle>,
    /// The audit queue.
    pub audit: AuditSink,
    /// Rate and concurrency counters.
    pub limits: Arc<dyn LimitBackend>,
    /// Run-level audit events (`run_started`, `run_summary`) and closed runs.
    pub runs: Arc<crate::runs::RunTracker>,
    /// Resolves and checks every destination before it is dialed (SSRF guard).
    pub egress: Arc<crate::egress::Dialer>,
    /// Mints leaves for intercepted tunnels, when a CA is configured.
    pub minter: Option<Arc<crate::tls::ca::LeafMinter>>,
    /// Open tunnels per tenant.
    pub tunnels: crate::tunnel::caps::TenantCounts,
    /// Open client connections per tenant.
    pub connections: crate::tunnel::caps::TenantCounts,
    /// Request body bytes held by all requests in flight.
    pub bodies: Arc<crate::body::BodyBudget>,
}

/// The proxy for one listener.
#[derive(Debug)]
pub struct TenantProxy {
    listener: Arc<ListenerSettings>,
    shared: Arc<Shared>,
}

impl TenantProxy {
    /// A proxy serving `listener`.
    pub fn new(listener: ListenerSettings, shared: Arc<Shared>) -> Self {
        Self {
            listener: Arc::new(listener),
            shared,
        }
    }

    /// Everything that must hold before a request may be forwarded, in order. The order matters:
    /// the audit slot first (an unauditable request is never served), identity before anything
    /// reads the request, the body before the decision (the decision sees the model).
    async fn admit(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), Deny> {
        ctx.audit_slot = Some(self.shared.audit.reserve()?);
        let snapshot = self.shared.snapshot.load();
        ctx.snapshot = Some(snapshot.clone());

        // What the agent cannot forge comes from the connection: the tunnel an intercepted
        // request came through (on the front's connection for HTTP/1.1, on the TLS digest for
        // HTTP/2), or the mTLS client certificate's identity.
        let conn = front_conn(session);
        let ssl = session.digest().and_then(|d| d.ssl_digest.clone());
        let tunnel = conn.and_then(|c| c.context().tunnel.clone()).or_else(|| {
            ssl.as_ref()
                .and_then(|d| d.extension.get::<Arc<Tunnel>>().cloned())
        });
        let req = session.req_header();
        let who = match &tunnel {
            // SECURITY: a tunnel never changes identity; whatever the inner request presents
            // is ignored (and stripped upstream).
            Some(t) => tunnel_identity(t, &snapshot)?,
            None => {
                let presented = Presented::from_request(&req.headers, ssl.as_deref());
                identity::resolve(
                    &self.listener.identity,
                    &snapshot.tenants,
                    snapshot.tokens.as_ref(),
                    presented,
                    unix_now(),
                )?
            }
        };
        let tenant = Arc::new(TenantContext::new(
            who,
            ctx.request_id.clone(),
            traceparent(&req.headers),
        ));
        ctx.tenant = Some(tenant.clone());
        ctx.tunnel = tunnel.as_ref().map(|t| t.id.clone());
        // One tenant's unwritable partition refuses that tenant only.
        self.shared
            .audit
            .admit_tenant(&mut ctx.audit_slot, &tenant.tenant)?;
        if let Some(conn) = conn {
            self.count_connection(conn, &tenant)?;
        }
        // A signed run's first request starts it (audited once across replicas); a closed
        // run's requests go no further.
        self.shared
            .runs
            .sight(&tenant, snapshot.token_leeway())
            .await?;

        let req = session.req_header();
        if req.method == http::Method::CONNECT {
            return Err(Deny::ConnectUnsupported);
        }
        if header_bytes(req) > self.shared.config.limits.max_header_bytes {
            return Err(Deny::HeadersTooLarge);
        }
        // SECURITY: a header nominated in `Connection` is removed hop by hop on the way
        // upstream, after the decision; none the decision or the substitution rests on may be.
        let nominated = req
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .map(|v| v.as_bytes());
        if let Some(name) = crate::front::nominated_protected(nominated) {
            return Err(Deny::ProtectedHopHeader(name));
        }
        // HTTP/2 (inside tunnels) names the authority in `:authority`, not `Host`.
        let host = req
            .headers
            .get(http::header::HOST)
            .map(|v| v.as_bytes())
            .or_else(|| {
                (req.version == http::Version::HTTP_2)
                    .then(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
                    .flatten()
            });
        // SECURITY: a handle in the authority is a position error whatever the target's form
        // (and before anything else reads the authority).
        if let Some(refusal) = credentials::apply::handle_in_authority(
            req.raw_path(),
            req.uri.authority().map(|a| a.as_str()),
            req.headers.get(http::header::HOST).map(|v| v.as_bytes()),
        ) {
            ctx.credential_names = refusal.credential().map(String::from).into_iter().collect();
            return Err(Deny::Credential(refusal));
        }
        let destination = match &tunnel {
            Some(t) => target::tunneled(req.raw_path(), host, &t.host, t.port)?,
            None => target::resolve(req.raw_path(), host, &snapshot.tenants.routes)?,
        };
        ctx.destination = Some(destination.clone());

        let limits = &self.shared.config.limits;
        let cap = limits.max_body_bytes;
        let read = body::read_full(
            session,
            cap,
            &self.shared.bodies,
            limits.client_body_timeout,
        )
        .await
        .map_err(
            |e| match (&e, front_conn(session).and_then(|c| c.violation())) {
                // The front knows why a read failed: a framing error, a missed deadline.
                (body::BodyError::Unreadable, Some(violation)) => Deny::from(violation),
                _ => Deny::from(e),
            },
        )?;
        if let Some(read) = read {
            ctx.body_hold = Some(read.hold);
            let hosts = &self.shared.config.egress.hosts;
            let to = body_destination(&snapshot.tenants.mcp, &destination, hosts);
            let read = body::classify(read.bytes, &session.req_header().headers, to, cap)?;
            ctx.model = read.llm.model;
            ctx.max_output_tokens = read.llm.max_output_tokens;
            ctx.body_decoded = read.decoded;
            ctx.body_sha256 = Some(hex::encode(Sha256::digest(&read.body)));
            ctx.bytes_in = read.body.len() as u64;
            ctx.body = Some(BufferedBody(read.body));
        }

        let model = ctx.model.clone();
        let facts = http_facts(
            &snapshot,
            &tenant,
            &destination,
            session.req_header(),
            model.as_deref(),
            crate::clock::unix_now_i64(),
        );
        authorize(&snapshot, &tenant, &facts, ctx)?;
        // The address is resolved and checked only for an authorized request (a denied caller
        // cannot probe names), and exactly this address is dialed (no second lookup).
        let exceptions = snapshot
            .tenants
            .tenants
            .get(&tenant.tenant)
            .map(|e| e.egress_allow.as_slice())
            .unwrap_or(&[]);
        let addr = self
            .shared
            .egress
            .resolve_checked(&destination.host, destination.port, exceptions)
            .await
            .map_err(|refusal| {
                if !matches!(refusal, crate::egress::EgressRefusal::Unresolvable { .. }) {
                    METRICS
                        .egress_refusals
                        .with_label_values(&[tenant.tenant.as_str()])
                        .inc();
                }
                crate::tunnel::deny_for_refusal(&ctx.request_id, &refusal)
            })?;
        // An MCP server (recognized by its destination or by the address just checked, however
        // it was reached) has its tools, resources and prompts decided one by one, on the body
        // as the agent wrote it (before any credential is substituted into it).
        let hosts = &self.shared.config.egress.hosts;
        if let Some(server) = snapshot
            .tenants
            .mcp
            .server_for(&destination, Some(addr), hosts)
        {
            let method = &session.req_header().method;
            crate::mcp::authorize::authorize(
                &snapshot,
                &tenant,
                &server.name,
                &facts,
                method,
                ctx,
            )?;
        }
        apply_credentials(
            &snapshot,
            &tenant,
            &destination,
            &facts,
            session.req_header(),
            ctx,
        )?;
        if ctx.model.is_some() {
            request_stream_usage(&destination, ctx);
        }
        // Ceilings last: a request refused for any other reason does not use up the allowance.
        self.admit_limits(&snapshot, &tenant, &destination, ctx)
            .await?;
        // Every check passed: only now does the request carry proof of authorization.
        ctx.permit = Some(Permitted { destination, addr });
        Ok(())
    }

    async fn admit_limits(
        &self,
        snapshot: &Snapshot,
        tenant: &TenantContext,
        destination: &Destination,
        ctx: &mut RequestCtx,
    ) -> Result<(), Deny> {
        let call = CallFacts {
            model: ctx.model.as_deref(),
            max_output_tokens: ctx.max_output_tokens,
            body_bytes: ctx.bytes_in,
            mcp_tool_calls: ctx.mcp.as_ref().map(|m| m.tools_called.len() as u64),
        };
        let plan = limits::plan::plan(
            &snapshot.tenants,
            tenant,
            destination,
            call,
            crate::clock::unix_now_i64(),
        )?;
        ctx.prices = plan.prices;
        if plan.keys.is_empty() {
            return Ok(());
        }
        let admission = self
            .shared
            .limits
            .admit(&plan.keys, plan.charge)
            .await
            .map_err(|e| match e {
                AdmitError::Limited(l) => Deny::Limited(l),
                AdmitError::Unavailable => Deny::LimiterUnavailable,
            })?;
        ctx.stream_plan = plan.stream;
        ctx.admission = Some(admission);
        Ok(())
    }

    /// Counts the client connection against its tenant the first time a request on it is
    /// identified (a tunnel's inner connection was counted when the tunnel opened).
    fn count_connection(
        &self,
        conn: &crate::tunnel::Conn,
        tenant: &TenantContext,
    ) -> Result<(), Deny> {
        let facts = conn.context();
        if facts.tenant_slot.get().is_some() {
            return Ok(());
        }
        let max = self.shared.config.limits.max_connections_per_tenant;
        let Some(slot) = self.shared.connections.try_open(&tenant.tenant, max) else {
            METRICS
                .overload_refusals
                .with_label_values(&["tenant_cap"])
                .inc();
            return Err(Deny::ConnectionLimit(max));
        };
        let _ = facts.tenant_slot.set(Arc::new(slot));
        Ok(())
    }

    /// Writes the JSON refusal. The connection stays open when the request had no body or its
    /// body was read whole (a refused agent retries on it; reconnecting for every refusal would
    /// make a noisy neighbour cost everyone more). Otherwise it is closed, rather than drained:
    /// the proxy never reads a body a refused client keeps sending.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        deny: Deny,
    ) -> pingora::Result<()> {
        let (status, code, message) = deny.describe();
        let deny_for_headers = deny.clone();
        ctx.outcome = Outcome::Refused(deny);
        let body = error_body(code, &message, &ctx.request_id, deny_for_headers.ceiling());
        let mut resp = ResponseHeader::build(status, Some(6))?;
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        resp.insert_header("x-request-id", &*ctx.request_id)?;
        for (name, value) in deny_for_headers.extra_headers() {
            resp.append_header(name, value)?;
        }
        // SECURITY: after a framing error or a missed deadline the connection is never read
        // again (pingora may report such a body as done); a client over its connection cap
        // gives one back.
        let fatal = matches!(
            ctx.outcome,
            Outcome::Refused(
                Deny::Framing(_)
                    | Deny::UnsupportedTransferEncoding
                    | Deny::RequestTimeout
                    | Deny::ConnectionLimit(_)
                    | Deny::Overloaded(_)
            )
        );
        let poisoned = front_conn(session).is_some_and(|c| c.violation().is_some());
        if fatal || poisoned || !(session.is_body_empty() || session.is_body_done()) {
            session.set_keepalive(None);
        }
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
        Ok(())
    }

    /// Ends a stream whose budget ran out: the chunk in hand is dropped, the outcome recorded,
    /// and the error returned makes pingora drop the upstream (which stops generating) and call
    /// `fail_to_proxy`, which writes the final event and ends the response cleanly.
    fn cut_stream(
        &self,
        body: &mut Option<Bytes>,
        reason: CutReason,
        ctx: &mut RequestCtx,
    ) -> Box<Error> {
        *body = None;
        let deny = Deny::StreamCut(reason);
        let (_, code, message) = deny.describe();
        ctx.cut_event = Some(cut_event(code.as_str(), &message, &ctx.request_id));
        ctx.outcome = Outcome::Refused(deny);
        let mut e = Error::explain(ErrorType::Custom("stream_cut"), "stream cut: budget spent");
        e.set_retry(false);
        e
    }

    /// Withholds the rest of an MCP response whose tool lists could not be filtered: the chunk
    /// in hand is dropped and `fail_to_proxy` ends the response with a JSON-RPC error, framed
    /// like the response, in place of what could not be checked.
    fn cut_tool_list(
        &self,
        body: &mut Option<Bytes>,
        filter: &ListFilter,
        error: FilterError,
        ctx: &mut RequestCtx,
    ) -> Box<Error> {
        *body = None;
        ctx.cut_event = Some(filter.error_message(&error));
        ctx.outcome = Outcome::Refused(Deny::McpResponseUnfiltered(error.to_string()));
        let mut e = Error::explain(
            ErrorType::Custom("mcp_response_unfiltered"),
            "MCP tool list could not be filtered",
        );
        e.set_retry(false);
        e
    }

    fn emit(&self, session: &Session, ctx: &mut RequestCtx, status: u16) {
        let (decision, reason) = match &ctx.outcome {
            Outcome::Forwarded => (AuditDecision::Allow, ReasonCode::Allowed),
            Outcome::Pending => (AuditDecision::Deny, ReasonCode::Internal),
            Outcome::Refused(d) => (AuditDecision::Deny, d.code()),
        };
        let tenant_label = Metrics::tenant_label(ctx.tenant.as_ref().map(|t| t.tenant.as_str()));
        let decision_label = match decision {
            AuditDecision::Allow => "allow",
            AuditDecision::Deny => "deny",
        };
        METRICS
            .requests
            .with_label_values(&[tenant_label, decision_label, reason.as_str()])
            .inc();
        let elapsed = ctx.started.elapsed();
        METRICS
            .request_duration
            .with_label_values(&[tenant_label])
            .observe(elapsed.as_secs_f64());
        let upstream = match (ctx.upstream_started, ctx.upstream_done) {
            (Some(a), Some(b)) => Some(b.saturating_duration_since(a)),
            _ => None,
        };
        if let Some(u) = upstream {
            METRICS
                .upstream_duration
                .with_label_values(&[tenant_label])
                .observe(u.as_secs_f64());
        }
        if let Some(cost) = ctx.settled.map(|c| c.cost_micros).filter(|c| *c > 0) {
            METRICS
                .llm_cost_micros
                .with_label_values(&[tenant_label])
                .inc_by(cost);
        }
        crate::mcp::observe_hidden(tenant_label, ctx.list_filter.as_ref());
        if matches!(ctx.outcome, Outcome::Refused(Deny::StreamCut(_))) {
            METRICS.stream_cuts.with_label_values(&[tenant_label]).inc();
        }
        if let Some(u) = ctx.usage {
            for (kind, n) in [
                ("input", u.input_tokens),
                ("cached_input", u.cached_input_tokens),
                ("output", u.output_tokens),
            ] {
                METRICS
                    .llm_tokens
                    .with_label_values(&[tenant_label, kind])
                    .inc_by(n);
            }
        }
        if matches!(
            reason,
            ReasonCode::UpstreamUnreachable | ReasonCode::UpstreamTimeout | ReasonCode::UpstreamTls
        ) {
            METRICS
                .upstream_errors
                .with_label_values(&[tenant_label, reason.as_str()])
                .inc();
        }

        // Once per request, after every question (`http`, MCP tool calls) was put to it.
        if let Some(shadow) = &ctx.shadow {
            shadow.observe(tenant_label);
        }

        let req = session.req_header();
        let dest = ctx.destination.as_ref();
        tracing::info!(
            request_id = %ctx.request_id,
            tenant = tenant_label,
            workload = ctx.tenant.as_ref().map(|t| t.workload.as_str()).unwrap_or("-"),
            listener = %self.listener.name,
            method = %req.method,
            host = dest.map(|d| d.host.as_str()).unwrap_or("-"),
            path = dest.map(|d| d.audit_path.as_str()).unwrap_or("-"),
            decision = decision_label,
            reason = reason.as_str(),
            status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );

        // Records exist only where a tenant is known: an unidentified caller has no partition.
        let (Some(tenant), Some(slot)) = (ctx.tenant.as_ref(), ctx.audit_slot.take()) else {
            return;
        };
        let policy = ctx.decision.as_ref();
        slot.emit(AuditRecord {
            scheme: dest.map(|d| d.scheme.as_str()),
            host: dest.map(|d| d.host.clone()),
            port: dest.map(|d| d.port),
            path: dest.map(|d| d.audit_path.clone()),
            route: dest.and_then(|d| d.route.clone()),
            model: ctx.model.clone(),
            credentials: ctx.credential_names.clone(),
            usage: ctx.usage,
            reserved: ctx.reserved,
            settled: ctx.settled,
            ceiling: match &ctx.outcome {
                Outcome::Refused(d) => d.ceiling(),
                _ => None,
            },
            stream_cut: matches!(ctx.outcome, Outcome::Refused(Deny::StreamCut(_))),
            tunnel: ctx.tunnel.as_ref().map(|id| crate::audit::TunnelFields {
                id: id.to_string(),
                mode: "intercept",
            }),
            mcp: ctx
                .mcp
                .as_ref()
                .map(|m| crate::mcp::audit_fields(m, ctx.list_filter.as_ref())),
            policy_ids: policy.map(|p| p.policy_ids.clone()).unwrap_or_default(),
            policy_errors: policy.map(|p| p.errors.clone()).unwrap_or_default(),
            shadow: ctx.shadow.take(),
            upstream_latency_ms: upstream.map(|u| u.as_secs_f64() * 1000.0),
            bytes_in: ctx.bytes_in,
            bytes_out: ctx.bytes_out,
            request_body_sha256: ctx.body_sha256.clone(),
            ..AuditRecord::of(
                tenant,
                &self.listener.name,
                req.method.to_string(),
                elapsed,
                decision,
                reason,
                status,
            )
        });
    }
}

/// The `http` action's context for this request: the same facts for the running proxy and for
/// `tenant-proxy policy explain`.
pub(crate) fn http_facts<'a>(
    snapshot: &'a Snapshot,
    tenant: &'a TenantContext,
    destination: &'a Destination,
    req: &'a RequestHeader,
    model: Option<&'a str>,
    now_unix: i64,
) -> HttpRequestFacts<'a> {
    let (hour, weekday) = snapshot.tenants.local_clock(&tenant.tenant, now_unix);
    HttpRequestFacts {
        scheme: destination.scheme.as_str(),
        host: &destination.host,
        port: destination.port,
        method: req.method.as_str(),
        path: destination.audit_path.split('?').next().unwrap_or("/"),
        model,
        run_signed: tenant.run.signed,
        scopes: &tenant.scopes,
        route: destination.route.as_deref(),
        destination_region: snapshot.tenants.destination_region(destination),
        hour,
        weekday,
    }
}

/// Asks Cedar whether this workload may make this request (timed; evaluation errors logged).
pub(crate) fn decide_http(
    snapshot: &Snapshot,
    tenant: &TenantContext,
    facts: &HttpRequestFacts<'_>,
) -> Decision {
    let started = Instant::now();
    let decision = snapshot
        .policy
        .authorize_http(&tenant.tenant, &tenant.workload, facts);
    METRICS
        .policy_eval_duration
        .observe(started.elapsed().as_secs_f64());
    if !decision.errors.is_empty() {
        tracing::warn!(request_id = %tenant.request_id, tenant = %tenant.tenant, errors = ?decision.errors, "policy evaluation errors; denying");
    }
    decision
}

/// What the shadow (report-only) policies, when configured, would decide for this request.
pub(crate) fn shadow_http(
    snapshot: &Snapshot,
    tenant: &TenantContext,
    facts: &HttpRequestFacts<'_>,
    enforced: &Decision,
) -> Option<ShadowDecision> {
    let shadow = snapshot.shadow_policy.as_ref()?;
    let decision = shadow.authorize_http(&tenant.tenant, &tenant.workload, facts);
    Some(ShadowDecision::compare(enforced, decision))
}

/// Asks Cedar whether this workload may make this request; only an allow lets admission go on.
fn authorize(
    snapshot: &Snapshot,
    tenant: &TenantContext,
    facts: &HttpRequestFacts<'_>,
    ctx: &mut RequestCtx,
) -> Result<(), Deny> {
    let decision = decide_http(snapshot, tenant, facts);
    // The shadow set is asked after the enforced decision is fixed and never changes it.
    // Counted in the metric when the record is written, after any MCP tool calls were asked too.
    ctx.shadow = shadow_http(snapshot, tenant, facts, &decision);
    let allowed = decision.allowed;
    ctx.decision = Some(decision);
    if allowed {
        Ok(())
    } else {
        Err(Deny::PolicyDenied)
    }
}

/// One `use_credential` question asked while resolving a request's handles.
#[derive(Debug, Clone)]
pub(crate) struct CredentialUse {
    /// Credential name.
    pub name: String,
    /// Where the handle appears.
    pub position: Position,
    /// What the policies said.
    pub decision: Decision,
}

/// Resolves `$CRED{}` handles in the caller's tenant scope, after the request itself was
/// allowed; every handle must be known, unexpired, in an allowed position, bound to this
/// destination and permitted by policy (`use_credential`). With `record`, every
/// `use_credential` decision taken is also kept there (for `tenant-proxy policy explain`; the
/// proxy itself passes `None` and keeps nothing).
pub(crate) fn resolve_credentials(
    snapshot: &Snapshot,
    tenant: &TenantContext,
    destination: &Destination,
    facts: &HttpRequestFacts<'_>,
    req: &RequestHeader,
    body: Option<&Bytes>,
    body_decoded: bool,
    mut record: Option<&mut Vec<CredentialUse>>,
) -> Result<Applied, CredentialDeny> {
    let parts = RequestParts {
        target: Target {
            scheme: facts.scheme,
            host: facts.host,
            port: facts.port,
            path: facts.path,
            method: facts.method,
        },
        raw_target: req.raw_path(),
        authority: req.uri.authority().map(|a| a.as_str()),
        headers: &req.headers,
        path_and_query: &destination.upstream_path,
        body,
        content_type: req
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        // A body decoded from its `Content-Encoding` is scanned (and sent) decoded.
        content_encoding: req
            .headers
            .get(http::header::CONTENT_ENCODING)
            .filter(|_| !body_decoded)
            .map(|v| v.to_str().unwrap_or("unreadable")),
    };
    let mut authorize_use = |cred: &Credential, position: Position| {
        let use_facts = CredentialFacts {
            name: &cred.name,
            position: position.as_str(),
            http: facts,
        };
        let decision =
            snapshot
                .policy
                .authorize_credential(&tenant.tenant, &tenant.workload, &use_facts);
        let allowed = decision.allowed;
        if let Some(record) = record.as_deref_mut() {
            record.push(CredentialUse {
                name: cred.name.clone(),
                position,
                decision,
            });
        }
        allowed
    };
    credentials::apply::apply(
        &snapshot.credentials,
        &snapshot.tenants.credential_settings,
        &tenant.tenant,
        &parts,
        unix_now(),
        &mut authorize_use,
    )
}

/// Substitutes the request's credentials (see [`resolve_credentials`]) into the context.
fn apply_credentials(
    snapshot: &Snapshot,
    tenant: &TenantContext,
    destination: &Destination,
    facts: &HttpRequestFacts<'_>,
    req: &RequestHeader,
    ctx: &mut RequestCtx,
) -> Result<(), Deny> {
    let body = ctx.body.as_ref().map(|b| &b.0);
    match resolve_credentials(
        snapshot,
        tenant,
        destination,
        facts,
        req,
        body,
        ctx.body_decoded,
        None,
    ) {
        Ok(mut applied) => {
            if !applied.used.is_empty() {
                ctx.credential_names = applied.used.iter().map(|c| c.name.clone()).collect();
                METRICS
                    .credential_substitutions
                    .with_label_values(&[tenant.tenant.as_str()])
                    .inc_by(applied.used.len() as u64);
                ctx.scrubber = Some(Scrubber::new(applied.used.clone()));
            }
            if let Some(body) = applied.body.take() {
                ctx.body = Some(BufferedBody(body));
            }
            ctx.applied = Some(applied);
            Ok(())
        }
        Err(refusal) => {
            ctx.credential_names = refusal.credential().map(String::from).into_iter().collect();
            Err(Deny::Credential(refusal))
        }
    }
}

/// The identity of a request inside an intercepted tunnel: the tunnel's own, re-checked against
/// the current configuration (a reload may have removed the workload) and the token's expiry (a
/// long-lived tunnel does not outlive the token that opened it).
fn tunnel_identity(
    tunnel: &Tunnel,
    snapshot: &Snapshot,
) -> Result<identity::ResolvedIdentity, Deny> {
    let who = &tunnel.identity;
    if !snapshot.tenants.has_workload(&who.tenant, &who.workload) {
        return Err(Deny::IdentityInvalid(
            "the tunnel's workload is no longer in the configuration".into(),
        ));
    }
    if let Some(token) = &who.token {
        if token.expires_at <= unix_now() {
            return Err(Deny::IdentityInvalid(
                "the token that opened this tunnel has expired; open a new tunnel".into(),
            ));
        }
    }
    Ok(who.clone())
}

/// The `traceparent` header's value, when there is one.
pub(crate) fn traceparent(headers: &http::HeaderMap) -> Option<&[u8]> {
    headers.get("traceparent").map(|v| v.as_bytes())
}

fn header_bytes(req: &RequestHeader) -> usize {
    req.raw_path().len()
        + req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
}

/// Asks an OpenAI stream to report usage when the agent did not (it is removed again from the
/// response), so every streamed call is metered.
fn request_stream_usage(destination: &Destination, ctx: &mut RequestCtx) {
    let path = destination.upstream_path.split('?').next().unwrap_or("");
    let Some(body) = &ctx.body else { return };
    if let Some(new) = crate::usage::include_usage::request_usage(path, &body.0) {
        ctx.body = Some(BufferedBody(Bytes::from(new)));
        ctx.injected_include_usage = true;
    }
}

/// Writes the credential substitutions into the upstream request header.
fn apply_to_upstream(applied: &Applied, upstream: &mut RequestHeader) -> pingora::Result<()> {
    if let Some(pq) = &applied.path_and_query {
        let uri: http::Uri = pq.parse().map_err(|_| {
            Error::explain(
                ErrorType::InternalError,
                "substituted path is not a valid URI",
            )
        })?;
        upstream.set_uri(uri);
    }
    for name in &applied.remove_headers {
        upstream.remove_header(name);
    }
    let mut replaced: Vec<&http::HeaderName> = Vec::new();
    for (name, value) in &applied.set_headers {
        if !replaced.contains(&name) {
            upstream.remove_header(name);
            replaced.push(name);
        }
        upstream.append_header(name.clone(), value.clone())?;
    }
    Ok(())
}

/// Where a request's body goes, as far as reading it is concerned: an MCP server's JSON-RPC is
/// judged by the MCP check after `http`; toward an LLM destination the body is classified or
/// refused.
pub(crate) fn body_destination(
    mcp: &crate::mcp::config::McpSettings,
    destination: &Destination,
    static_hosts: &std::collections::HashMap<String, Vec<std::net::IpAddr>>,
) -> body::BodyDestination {
    if mcp.server_for(destination, None, static_hosts).is_some() {
        body::BodyDestination::Mcp
    } else if body::llm_destination(destination) {
        body::BodyDestination::Llm
    } else {
        body::BodyDestination::Other
    }
}

/// The front's connection behind an HTTP/1 session (none for HTTP/2).
fn front_conn(session: &Session) -> Option<&crate::tunnel::Conn> {
    session
        .stream()
        .and_then(|s| s.as_any().downcast_ref::<crate::tunnel::Conn>())
}

fn tenant_of(ctx: &RequestCtx) -> &str {
    Metrics::tenant_label(ctx.tenant.as_ref().map(|t| t.tenant.as_str()))
}

/// Maps a pingora error to the refusal the client sees.
fn deny_for_error(e: &Error) -> Option<Deny> {
    use ErrorType::*;
    match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
            Some(Deny::UpstreamTimeout)
        }
        TLSHandshakeFailure | InvalidCert | HandshakeError => Some(Deny::UpstreamTls),
        _ => match e.esource() {
            ErrorSource::Upstream => Some(Deny::UpstreamUnreachable),
            // The client went away (the front refuses malformed requests before pingora).
            ErrorSource::Downstream => Some(Deny::ClientClosed),
            ErrorSource::Internal | ErrorSource::Unset => Some(Deny::Internal),
        },
    }
}

#[async_trait]
impl ProxyHttp for TenantProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        // The front hands pingora one checked request at a time and reads the next head itself
        // (pipelined requests wait there, not in pingora). pingora only needs to know the
        // connection may be reused, and for how long an idle HTTP/2 connection may stay.
        if session.get_keepalive().is_some() {
            let in_tunnel = front_conn(session).is_some_and(|c| c.context().tunnel.is_some())
                || session
                    .digest()
                    .and_then(|d| d.ssl_digest.as_ref())
                    .is_some_and(|d| d.extension.get::<Arc<Tunnel>>().is_some());
            let idle = if in_tunnel {
                self.shared
                    .config
                    .egress
                    .tunnel_idle_timeout
                    .as_secs()
                    .max(1)
            } else {
                crate::tunnel::PLAIN_KEEPALIVE_SECS
            };
            session.set_keepalive(Some(idle));
        }
        Ok(())
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        match self.admit(session, ctx).await {
            Ok(()) => Ok(false),
            Err(deny) => {
                self.refuse(session, ctx, deny).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        // SECURITY: no proof of authorization, no upstream.
        let Some(permit) = ctx.permit.as_ref() else {
            ctx.outcome = Outcome::Refused(Deny::Internal);
            return Err(Error::explain(
                ErrorType::InternalError,
                "upstream_peer reached without authorization",
            ));
        };
        let dest = permit.destination();
        let addr = permit.addr();
        let tls = dest.scheme == crate::target::Scheme::Https;
        let mut peer = HttpPeer::new(addr, tls, dest.host.clone());
        let up = &self.shared.config.upstream;
        peer.options.connection_timeout = Some(up.connect_timeout);
        peer.options.total_connection_timeout = Some(up.connect_timeout);
        peer.options.read_timeout = Some(up.read_timeout);
        peer.options.write_timeout = Some(up.write_timeout);
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        ctx.upstream_started = Some(Instant::now());
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Fail fast: a refused or timed-out connect is reported, not retried in a loop.
        e.set_retry(false);
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let (Some(permit), Some(tenant), Some(snapshot)) = (
            ctx.permit.as_ref(),
            ctx.tenant.as_ref(),
            ctx.snapshot.as_ref(),
        ) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "upstream request without authorization",
            ));
        };
        let dest = permit.destination();
        let uri: http::Uri = dest.upstream_path.parse().map_err(|_| {
            Error::explain(ErrorType::InternalError, "upstream path is not a valid URI")
        })?;
        upstream.set_uri(uri);
        if let Some(applied) = &ctx.applied {
            apply_to_upstream(applied, upstream)?;
        }
        // The body may have been rewritten (credentials, usage request): send its real length.
        if let Some(body) = &ctx.body {
            if upstream.headers.contains_key(http::header::CONTENT_LENGTH) {
                upstream.insert_header(http::header::CONTENT_LENGTH, body.0.len().to_string())?;
            }
        }
        // A decoded body goes as it was read (the decision was made on it), not re-encoded.
        if ctx.body_decoded {
            upstream.remove_header(&http::header::CONTENT_ENCODING);
        }
        upstream.insert_header(http::header::HOST, dest.host_header())?;
        // SECURITY: identity material and agent-written tenant claims never leave the proxy.
        upstream.remove_header(&http::header::PROXY_AUTHORIZATION);
        upstream.remove_header("proxy-connection");
        for name in &snapshot.tenants.strip_headers {
            upstream.remove_header(name);
        }
        // W3C baggage has no integrity and may name tenants: only internal routes get it.
        if !dest.internal {
            upstream.remove_header("baggage");
        }
        upstream.insert_header("traceparent", tenant.trace.traceparent())?;
        // LLM responses are metered as they stream, MCP tool lists filtered and echoed secrets
        // scrubbed: each needs the bytes as sent, so the upstream is asked for no compression
        // (without `Accept-Encoding` it could pick any), and a WebSocket for no extension
        // (permessage-deflate would compress frames past the scrubber).
        if ctx.model.is_some() || ctx.mcp.is_some() || ctx.scrubber.is_some() {
            upstream.insert_header(http::header::ACCEPT_ENCODING, "identity")?;
        }
        if ctx.scrubber.is_some() {
            upstream.remove_header(&http::header::SEC_WEBSOCKET_EXTENSIONS);
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        // The body was read in full before the decision; pingora passes only its retry-buffer
        // tail here. Hand over the whole body (again, on a retry).
        if let Some(full) = &ctx.body {
            *body = Some(full.0.clone());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        ctx.upstream_done = Some(Instant::now());
        let had_length = upstream_response
            .headers
            .contains_key(http::header::CONTENT_LENGTH);
        // Meter LLM calls (the request named a model) whose response is readable as sent.
        let encoded = upstream_response
            .headers
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if ctx.injected_include_usage
            && upstream_response
                .headers
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
        {
            ctx.usage_stripper = Some(UsageEventStripper::default());
            upstream_response.remove_header(&http::header::CONTENT_LENGTH);
        }
        if ctx.model.is_some() && !encoded {
            ctx.usage_meter = upstream_response
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(UsageMeter::for_content_type);
        }
        // A stream that may be cut for budget ends with an event of ours, so its length changes.
        // Only hard ceilings (quotas) cut a stream; a per-minute rate does not.
        let quota_keys = match (&ctx.usage_meter, ctx.stream_plan, &ctx.admission) {
            (Some(UsageMeter::Sse { .. }), Some(plan), Some(admission)) => {
                Some((plan, admission.quota_keys())).filter(|(_, keys)| !keys.is_empty())
            }
            _ => None,
        };
        if let Some((plan, keys)) = quota_keys {
            ctx.stream_guard = Some(StreamGuard::new(
                self.shared.limits.clone(),
                keys,
                plan.covered_output,
                plan.step_tokens,
                plan.step,
            ));
            upstream_response.remove_header(&http::header::CONTENT_LENGTH);
        }
        if let Some(exchange) = &ctx.mcp {
            let cap = ctx
                .snapshot
                .as_ref()
                .map_or(0, |s| s.tenants.mcp.max_message_bytes);
            match crate::mcp::response_filter(exchange, cap, upstream_response) {
                Ok(filter) => ctx.list_filter = filter,
                Err(deny) => {
                    ctx.outcome = Outcome::Refused(deny.into());
                    return Err(Error::explain(
                        ErrorType::Custom("mcp_response_unfiltered"),
                        "MCP response cannot be filtered",
                    ));
                }
            }
        }
        if let Some(scrubber) = ctx.scrubber.as_mut() {
            // SECURITY: the request carried a secret and asked for `identity`; a body still
            // compressed could hide an echo of it, so it is withheld, never passed on.
            if credentials::scrub::unreadable_encoding(
                upstream_response.status.as_u16(),
                session.req_header().method == http::Method::HEAD,
                &upstream_response.headers,
            ) {
                ctx.outcome = Outcome::Refused(Deny::UpstreamEncoded);
                return Err(Error::explain(
                    ErrorType::Custom("upstream_encoded"),
                    "compressed response to a request that carried a credential",
                ));
            }
            if upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS {
                scrubber.upgraded(&upstream_response.headers);
            }
            scrubber.scrub_response_header(upstream_response)?;
            if scrubber.replaced > 0 {
                let tenant = Metrics::tenant_label(ctx.tenant.as_ref().map(|t| t.tenant.as_str()));
                METRICS
                    .credential_scrubbed
                    .with_label_values(&[tenant])
                    .inc_by(scrubber.replaced);
            }
            // Replacing a secret changes the body's length.
            upstream_response.remove_header(&http::header::CONTENT_LENGTH);
        }
        // A body whose length we changed is re-framed as chunked for HTTP/1.1 clients; left
        // unframed it would end by closing the connection, and with it a keep-alive tunnel.
        if had_length
            && !upstream_response
                .headers
                .contains_key(http::header::CONTENT_LENGTH)
            && session.req_header().version == http::Version::HTTP_11
        {
            upstream_response.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        }
        upstream_response.insert_header("x-request-id", &*ctx.request_id)?;
        if let Some(h) = ctx.admission.as_ref().and_then(|a| a.headline) {
            upstream_response.insert_header("x-ratelimit-limit", h.limit.to_string())?;
            upstream_response.insert_header("x-ratelimit-remaining", h.remaining.to_string())?;
            upstream_response.insert_header("x-ratelimit-reset", h.reset_secs.to_string())?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Option<std::time::Duration>> {
        // Tool lists are filtered first, so nothing after this sees a tool the workload may
        // not call.
        if let Some(mut filter) = ctx.list_filter.take() {
            let chunk = body.take().unwrap_or_default();
            let fed = {
                let mut allowed = |item, name: &str| {
                    crate::mcp::authorize::item_allowed(ctx, session.req_header(), item, name)
                };
                filter.feed(&chunk, end_of_stream, &mut allowed)
            };
            match fed {
                Ok(out) => *body = Some(out),
                Err(error) => {
                    let cut = self.cut_tool_list(body, &filter, error, ctx);
                    ctx.list_filter = Some(filter);
                    return Err(cut);
                }
            }
            ctx.list_filter = Some(filter);
        }
        // Usage is read from the bytes the upstream sent, before any scrubbing.
        if let Some(meter) = ctx.usage_meter.as_mut() {
            if let Some(b) = body.as_ref() {
                meter.feed(b);
            }
            if end_of_stream {
                ctx.usage = meter.finish();
            }
            if let Some(guard) = ctx.stream_guard.as_mut() {
                if let Verdict::Cut(reason) = guard.observe(meter.output_estimate()) {
                    return Err(self.cut_stream(body, reason, ctx));
                }
            }
        }
        if let Some(stripper) = ctx.usage_stripper.as_mut() {
            let chunk = body.take().unwrap_or_default();
            *body = Some(stripper.feed(&chunk, end_of_stream));
        }
        if let Some(scrubber) = ctx.scrubber.as_mut() {
            let before = scrubber.replaced;
            *body = scrubber.scrub_chunk(body.take(), end_of_stream);
            if scrubber.replaced > before {
                let tenant = Metrics::tenant_label(ctx.tenant.as_ref().map(|t| t.tenant.as_str()));
                METRICS
                    .credential_scrubbed
                    .with_label_values(&[tenant])
                    .inc_by(scrubber.replaced - before);
            }
        }
        if let Some(b) = body {
            ctx.bytes_out += b.len() as u64;
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        // A cut response whose header never left (pingora may hold the header with the first
        // body chunks) is refused whole below instead.
        let header_sent = session.response_written().is_some();
        if let Some(event) = ctx.cut_event.take().filter(|_| header_sent) {
            // The stream was cut (budget spent, or an MCP tool list that could not be
            // filtered): end it with our event, as a complete response.
            if let Err(write_err) = session.write_response_body(Some(event.into()), true).await {
                tracing::debug!(error = %write_err, "cannot end the cut stream");
            }
            return FailToProxy {
                error_code: 200,
                can_reuse_downstream: false,
            };
        }
        let deny = match &ctx.outcome {
            Outcome::Refused(d) => Some(d.clone()),
            _ => deny_for_error(e),
        };
        let Some(deny) = deny else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if deny == Deny::ClientClosed {
            // Nobody to answer; recorded with what ended it.
            ctx.outcome = Outcome::Refused(deny);
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let status = deny.describe().0;
        if session.response_written().is_none() {
            if let Err(write_err) = self.refuse(session, ctx, deny).await {
                tracing::debug!(error = %write_err, "cannot write error response");
            }
        } else {
            ctx.outcome = Outcome::Refused(deny);
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.outcome == Outcome::Pending {
            // SECURITY: only a forward whose upstream answer arrived is recorded as allowed; a
            // request that ended any other way after admission is recorded with what ended it,
            // and as an internal error when nothing says.
            ctx.outcome = match e.and_then(deny_for_error) {
                Some(d) => Outcome::Refused(d),
                None if ctx.upstream_done.is_some() => Outcome::Forwarded,
                None => Outcome::Refused(Deny::Internal),
            };
        }
        if let Some(mut admission) = ctx.admission.take() {
            if let Some(guard) = &ctx.stream_guard {
                admission.add_extension(guard.granted());
            }
            let completed = e.is_none()
                && session
                    .response_written()
                    .is_some_and(|r| r.status.is_success());
            let ending = Ending {
                usage: ctx.usage,
                completed,
                cut: matches!(ctx.outcome, Outcome::Refused(Deny::StreamCut(_))),
            };
            let used = limits::plan::settlement(admission.reserved, ctx.prices, ending);
            ctx.reserved = Some(admission.reserved);
            ctx.settled = Some(used);
            self.shared.limits.finish(&admission, used).await;
        } else if let (Some(u), Some(p)) = (ctx.usage, ctx.prices) {
            // No ceiling applied, but the cost is still recorded and counted.
            ctx.settled = Some(limits::plan::usage_charge(u, Some(p)));
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        if let (Outcome::Refused(_), Some(tenant)) = (&ctx.outcome, &ctx.tenant) {
            self.shared.runs.count_refusal(tenant).await;
        }
        self.emit(session, ctx, status);
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, e: &Error) -> bool {
        // SECURITY: pingora's line prints the error's context, which holds raw upstream bytes
        // (an echoed `Authorization`); ours names what failed and nothing else.
        crate::logging::proxy_failure(e, &ctx.request_id, tenant_of(ctx), false);
        true
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        ctx: &RequestCtx,
        e: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        crate::logging::proxy_failure(e, &ctx.request_id, tenant_of(ctx), true);
        true
    }

    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        // pingora's default summary includes the full URL, whose query may carry secrets.
        let dest = ctx.destination.as_ref();
        format!(
            "{} {}{} request_id={}",
            session.req_header().method,
            dest.map(|d| d.host.as_str()).unwrap_or("-"),
            dest.map(|d| d.audit_path.as_str()).unwrap_or(""),
            ctx.request_id
        )
    }
}
