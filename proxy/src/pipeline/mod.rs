//! The request pipeline: pingora's phases, each a few lines that hand over to one stage.
//!
//! | phase | what happens |
//! |---|---|
//! | `early_request_filter` | keep-alive for the connection (the front reads the next head) |
//! | `request_filter` | [`admit::admit`]: audit slot → identity → tenant context → run → target, body → policy (+ shadow) → egress → MCP items → credentials → limits; a refusal is written by [`record::refusal_response`] |
//! | `upstream_peer` | requires the [`admit::Permit`]; dials exactly the address it names |
//! | `upstream_request_filter` | [`respond::upstream_request`]: origin-form target, substitutions, `Host`, identity stripped, trace context |
//! | `request_body_filter` | hands the buffered body to the upstream |
//! | `response_filter` | [`respond::Stages::for_response`]: list filter, meter, stream guard, usage stripper, scrubber |
//! | `upstream_response_body_filter` | [`respond::Stages::read_upstream`]: body memory held, usage metered, a stream's budget decided (a chunk past its cover waits here for an extension) |
//! | `response_body_filter` | [`respond::Stages::feed`], in that order |
//! | `fail_to_proxy` | a cut stream ends with its event; an upstream failure becomes its refusal |
//! | `logging` | settles limits, then [`record::Trail::finish_request`]: record, metrics, log line (a request cut at shutdown comes here too, as `shutdown`: see [`crate::drain`]) |
//!
//! An upgrade request (a WebSocket) becomes a relay with no later request to judge: once
//! admitted, its connection ends when its identity is no longer accepted ([`lapse`]), and its
//! record says why.
//!
//! `CONNECT` tunnels (the tunnel module) and `tenant-proxy policy explain` ([`explain`]) go
//! through the same [`admit::admit`].

pub mod admit;
pub mod caps;
pub mod conn;
pub mod ctx;
pub mod decide;
pub mod explain;
pub mod lapse;
pub mod record;
pub mod respond;
mod span;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};

use crate::audit::{AuditSink, AuditSlot};
use crate::body::BodyHold;
use crate::config::{ListenerSettings, StaticConfig};
use crate::context::TenantContext;
use crate::credentials::oauth::cache::TokenUnavailable;
use crate::credentials::oauth::TokenSource;
use crate::credentials::scrub::Patterns;
use crate::credentials::secret::SecretValue;
use crate::credentials::Credential;
use crate::egress::{EgressException, EgressRefusal};
use crate::error::Deny;
use crate::ids::TenantId;
use crate::limits::plan::{Ending, Plan};
use crate::limits::{Admission, AdmitError, LimitBackend};
use crate::mcp::list_filter::FilterError;
use crate::metrics::{Metrics, METRICS};
use crate::snapshot::{Snapshot, SnapshotHandle};
use crate::tls::ca::LeafMinter;
use admit::{Ask, BodySource, Caller, Effects};
use caps::{StreamSlots, TenantCounts, TenantSlot};
use conn::{front_conn, tunnel_of, ConnFacts, Tunnel};
use ctx::RequestCtx;
use record::{refusal_response, Outcome};
use respond::{Cut, StageSetup, Stages};

/// Seconds an idle plain-HTTP keep-alive connection is kept between requests.
pub const PLAIN_KEEPALIVE_SECS: u64 = 60;

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
    /// The revocation list shared through the limiter's Redis (with the `revoked_jtis_file`
    /// of the snapshot as a second source).
    pub revocations: Option<Arc<crate::limits::redis_revocations::SharedRevocations>>,
    /// Resolves and checks every destination before it is dialed (SSRF guard).
    pub egress: Arc<crate::egress::Dialer>,
    /// Mints leaves for intercepted tunnels, when a CA is configured.
    pub minter: Option<Arc<LeafMinter>>,
    /// TLS session resumption for intercepted tunnels, per tenant workload (none without a CA
    /// or with `[intercept] session_lifetime = "0s"`).
    pub sessions: Option<Arc<crate::tls::resume::SessionScopes>>,
    /// Open tunnels per tenant.
    pub tunnels: TenantCounts,
    /// Open client connections per tenant.
    pub connections: TenantCounts,
    /// Request body bytes held by all requests in flight.
    pub bodies: Arc<crate::body::BodyBudget>,
    /// Requests held for a person's approval (`None`: no `[approvals]`, and a request a policy
    /// marks for approval is refused).
    pub approvals: Option<Arc<crate::approvals::Holds>>,
    /// The trust for `https` token endpoints.
    pub token_tls: Arc<rustls::ClientConfig>,
    /// Shutdown: whether the requests still running were cut.
    pub drain: Arc<crate::drain::Drain>,
}

#[async_trait]
impl Effects for Shared {
    fn config(&self) -> &StaticConfig {
        &self.config
    }

    fn reserve_audit(&self, tenant: Option<&TenantId>) -> Result<Option<AuditSlot>, Deny> {
        Ok(Some(self.audit.reserve(tenant)?))
    }

    fn admit_tenant(&self, slot: &mut Option<AuditSlot>, tenant: &TenantId) -> Result<(), Deny> {
        Ok(self.audit.admit_tenant(slot, tenant)?)
    }

    fn count_connection(
        &self,
        connection: Option<&ConnFacts>,
        tenant: &TenantId,
    ) -> Result<Option<TenantSlot>, Deny> {
        // A connection is counted once for each tenant whose requests it carries: at its first
        // identified request, or (a tunnel's) at its `CONNECT`. HTTP/2 connections inside
        // tunnels were counted with the tunnel.
        let open = |tenant: &TenantId| {
            let max = self.config.limits.max_connections_per_tenant;
            self.connections.try_open(tenant, max).ok_or_else(|| {
                METRICS
                    .overload_refusals
                    .with_label_values(&["tenant_cap"])
                    .inc();
                Deny::ConnectionLimit(max)
            })
        };
        let Some(facts) = connection else {
            return open(tenant).map(Some);
        };
        let Some(first) = facts.tenant_slot.get() else {
            let _ = facts.tenant_slot.set(Arc::new(open(tenant)?));
            return Ok(None);
        };
        if first.tenant() == tenant {
            return Ok(None);
        }
        // SECURITY (cost axis): a connection that carries another tenant's request counts
        // against that tenant as well, or one tenant's pooled connections would be counted
        // against (and use up) the cap of the tenant that opened them.
        let mut others = facts
            .other_tenant_slots
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !others.iter().any(|s| s.tenant() == tenant) {
            others.push(open(tenant)?);
        }
        Ok(None)
    }

    fn count_stream(
        &self,
        tunnel: Option<&Tunnel>,
        tenant: &TenantId,
    ) -> Result<Option<StreamSlots>, Deny> {
        // HTTP/2 is served only inside intercepted tunnels.
        let Some(tunnel) = tunnel else {
            return Err(Deny::Internal);
        };
        // The tunnel's own slots cover one request in flight, as an HTTP/1.1 tunnel's do.
        let limits = &self.config.limits;
        let take = || {
            let listener = tunnel
                .listener
                .try_open(limits.max_connections_per_listener)
                .ok_or_else(|| {
                    METRICS
                        .overload_refusals
                        .with_label_values(&["listener_cap"])
                        .inc();
                    Deny::Overloaded("client connections and HTTP/2 streams")
                })?;
            let max = limits.max_connections_per_tenant;
            let tenant = self.connections.try_open(tenant, max).ok_or_else(|| {
                METRICS
                    .overload_refusals
                    .with_label_values(&["tenant_cap"])
                    .inc();
                Deny::ConnectionLimit(max)
            })?;
            Ok((listener, tenant))
        };
        tunnel.streams.enter(take).map(Some)
    }

    async fn sight_run(&self, tenant: &TenantContext, leeway: Duration) -> Result<(), Deny> {
        Ok(self.runs.sight(tenant, leeway).await?)
    }

    fn revoked(&self, jti: &str) -> Result<bool, Deny> {
        match &self.revocations {
            Some(list) => list.is_revoked(jti).map_err(|e| {
                METRICS.limiter_errors.inc();
                // Every request with a token meets it while the list is stale: sampled.
                if let Some(suppressed) = crate::logging::sample_line(
                    crate::logging::LineKey::Tenant("none"),
                    "revocations_stale",
                ) {
                    tracing::warn!(error = %e, suppressed, "refusing a token: the revocation list is stale");
                }
                Deny::LimiterUnavailable
            }),
            None => Ok(false),
        }
    }

    fn still_accepted(&self, who: &crate::identity::ResolvedIdentity) -> Result<(), Deny> {
        lapse::judge_now(self, who).map_err(|lapse| lapse.deny)
    }

    fn reloaded_since(
        &self,
        admitted: &crate::snapshot::Snapshot,
    ) -> Option<Arc<crate::snapshot::Snapshot>> {
        let now = self.snapshot.load();
        (now.generation != admitted.generation).then_some(now)
    }

    async fn read_body(
        &self,
        session: &mut Session,
        tenant: &TenantId,
    ) -> Result<Option<(Bytes, Option<BodyHold>)>, Deny> {
        let limits = &self.config.limits;
        let read = crate::body::read_full(
            session,
            tenant,
            limits.max_body_bytes,
            &self.bodies,
            limits.client_body_timeout,
        )
        .await
        .map_err(
            |e| match (&e, front_conn(session).and_then(|c| c.violation())) {
                // The proxy's drain cut the connection in the middle of the body.
                (_, Some(crate::front::Violation::Truncated)) if self.drain.is_cut() => {
                    Deny::Shutdown
                }
                // The client ended its side in the middle of its body (closed, half-closed,
                // reset): an abandoned upload, nobody to answer.
                (_, Some(crate::front::Violation::Truncated)) => Deny::ClientClosed,
                // The front knows why a read failed: a framing error, a missed deadline.
                (crate::body::BodyError::Unreadable, Some(violation)) => Deny::from(violation),
                // An HTTP/2 stream's body (no front under it; the h2 layer checked its frames)
                // ends unread when its client reset the stream or left, or the drain cut it.
                (crate::body::BodyError::Unreadable, None) if session.is_http2() => {
                    if self.drain.is_cut() {
                        Deny::Shutdown
                    } else {
                        Deny::ClientClosed
                    }
                }
                _ => Deny::from(e),
            },
        )?;
        Ok(read.map(|r| (r.bytes, Some(r.hold))))
    }

    fn open_tunnel(&self, tenant: &TenantId, max: u32) -> Result<Option<TenantSlot>, Deny> {
        self.tunnels
            .try_open(tenant, max)
            .map(Some)
            .ok_or(Deny::TunnelLimit(max))
    }

    async fn resolve(
        &self,
        host: &str,
        port: u16,
        exceptions: &[EgressException],
        tenant: &TenantContext,
        original: Option<SocketAddr>,
    ) -> Result<SocketAddr, Deny> {
        let resolved = match original {
            Some(original) => {
                self.egress
                    .resolve_original(host, original, exceptions, &tenant.tenant)
                    .await
            }
            None => {
                self.egress
                    .resolve_checked(host, port, exceptions, &tenant.tenant)
                    .await
            }
        };
        resolved.map_err(|refusal| {
            // Counted on every path alike (requests and tunnels).
            if matches!(
                refusal,
                EgressRefusal::Forbidden { .. } | EgressRefusal::OwnListener { .. }
            ) {
                METRICS
                    .egress_refusals
                    .with_label_values(&[tenant.tenant.as_str()])
                    .inc();
            }
            deny_for_refusal(tenant, &refusal)
        })
    }

    async fn reserve(&self, plan: &Plan) -> Result<Option<Admission>, Deny> {
        self.limits
            .admit(&plan.keys, plan.charge)
            .await
            .map(Some)
            .map_err(|e| match e {
                AdmitError::Limited(l) => Deny::Limited(l),
                AdmitError::Unavailable => Deny::LimiterUnavailable,
            })
    }

    fn already_over(&self, rate_keys: &dyn Fn() -> Vec<crate::limits::LimitKey>) -> Option<Deny> {
        self.limits.already_over(rate_keys).map(Deny::Limited)
    }

    fn minter(&self) -> Option<Arc<LeafMinter>> {
        self.minter.clone()
    }

    async fn access_token(
        &self,
        tenant: &TenantContext,
        cred: &Arc<Credential>,
        source: &Arc<TokenSource>,
        exceptions: &[EgressException],
        timeout: Duration,
    ) -> Result<SecretValue, TokenUnavailable> {
        let name = cred.name.as_str();
        let grant = || async {
            let endpoint = source.endpoint();
            // SECURITY: the token endpoint is an upstream like any other: resolved and checked
            // by the egress guard (with the tenant's exceptions), and exactly that address dialed.
            let addr = self
                .resolve(&endpoint.host, endpoint.port, exceptions, tenant, None)
                .await
                .map_err(|refusal| {
                    format!(
                        "the egress guard refused its token endpoint `{}` ({})",
                        endpoint.host,
                        refusal.code().as_str()
                    )
                })?;
            let request = source.grant_request(crate::clock::unix_now())?;
            crate::credentials::oauth::fetch::grant(addr, endpoint, request, &self.token_tls).await
        };
        let token = self
            .snapshot
            .tokens
            .get(cred, source.fingerprint(), timeout, grant)
            .await;
        if let Err(why) = &token {
            // Each request naming the credential meets a failing grant: sampled per tenant.
            if let Some(suppressed) = crate::logging::sample_line(
                crate::logging::LineKey::Tenant(tenant.tenant.as_str()),
                "token_grant_failed",
            ) {
                tracing::warn!(
                    request_id = %tenant.request_id,
                    tenant = %tenant.tenant,
                    credential = name,
                    reason = %why,
                    suppressed,
                    "no access token for a token credential"
                );
            }
        }
        token
    }

    fn echoes(&self, snapshot: &Snapshot, tenant: &TenantId, host: &str) -> Option<Arc<Patterns>> {
        let handle = &self.snapshot;
        handle.echoes.for_host(
            &snapshot.credentials,
            snapshot.generation,
            &handle.tokens,
            tenant,
            host,
        )
    }

    async fn hold(
        &self,
        ask: crate::approvals::HoldAsk<'_>,
        session: Option<&mut Session>,
    ) -> Result<crate::approvals::Granted, crate::approvals::HoldEnd> {
        // SECURITY: a request that needs a person's approval is never forwarded without one.
        let Some(holds) = &self.approvals else {
            return Err(crate::approvals::HoldEnd::Unavailable(
                "this proxy has no approvals listener (`[approvals]`)".into(),
            ));
        };
        // The agent going away ends its hold: nothing is forwarded for a caller that left.
        let gone = async move {
            let closed = match session {
                Some(s) => s.read_body_or_idle(true).await.is_err(),
                None => false,
            };
            if !closed {
                std::future::pending::<()>().await;
            }
        };
        holds.hold(ask, gone).await
    }
}

/// The SSRF guard's refusal as the client sees it: the kind of address, never the address (an
/// agent must not learn internal addresses by probing names). The log line that names the
/// address is sampled per tenant and kind of refusal: a tenant can ask for refused
/// destinations as often as it likes.
pub fn deny_for_refusal(tenant: &TenantContext, refusal: &EgressRefusal) -> Deny {
    let line = match refusal {
        EgressRefusal::Unresolvable { .. } => "egress_unresolvable",
        EgressRefusal::Forbidden { .. } => "egress_forbidden",
        EgressRefusal::OwnListener { .. } => "egress_own_listener",
        EgressRefusal::NotOriginal { .. } => "egress_not_original",
        EgressRefusal::LookupsBusy { .. } => "egress_lookups_busy",
    };
    if let Some(suppressed) = crate::logging::sample_line(
        crate::logging::LineKey::Tenant(tenant.tenant.as_str()),
        line,
    ) {
        // A name that does not resolve is not the guard's refusal (the client gets
        // `upstream_unreachable`): its line says so.
        let what = match refusal {
            EgressRefusal::Unresolvable { .. } => "destination could not be resolved",
            _ => "destination refused by the egress guard",
        };
        tracing::info!(
            request_id = %tenant.request_id,
            tenant = %tenant.tenant,
            workload = %tenant.workload,
            %refusal,
            suppressed,
            "{what}"
        );
    }
    match refusal {
        EgressRefusal::Unresolvable { .. } => Deny::UpstreamUnreachable,
        EgressRefusal::Forbidden { reason, .. } => {
            Deny::DestinationForbidden(format!("it resolves to a {reason} address"))
        }
        EgressRefusal::OwnListener { .. } => {
            Deny::DestinationForbidden("it is this proxy itself".into())
        }
        EgressRefusal::NotOriginal { .. } => Deny::HostMismatch,
        EgressRefusal::LookupsBusy { max } => Deny::DnsLookupLimit(*max),
    }
}

/// Whether `status` is the response's own (not an interim `1xx` before it); a `101` is: the
/// connection switched with it.
fn is_the_answer(status: http::StatusCode) -> bool {
    !status.is_informational() || status == http::StatusCode::SWITCHING_PROTOCOLS
}

/// Whether the response's own header (not an interim answer before it) went to the client.
fn final_header_written(session: &Session) -> bool {
    session
        .response_written()
        .is_some_and(|r| is_the_answer(r.status))
}

/// The proxy for one listener.
#[derive(Debug)]
pub struct TenantProxy {
    listener: Arc<ListenerSettings>,
    name: Arc<str>,
    shared: Arc<Shared>,
}

impl TenantProxy {
    /// A proxy serving `listener`.
    pub fn new(listener: ListenerSettings, shared: Arc<Shared>) -> Self {
        Self {
            name: Arc::from(listener.name.as_str()),
            listener: Arc::new(listener),
            shared,
        }
    }

    /// Runs the admission chain for the request in `session`.
    async fn admit(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), Deny> {
        let snapshot = self.shared.snapshot.load();
        // What the agent cannot forge comes from the connection: the tunnel an intercepted
        // request came through, or the mTLS client certificate's identity.
        let tunnel = tunnel_of(session);
        ctx.trail.tunnel = tunnel.as_ref().map(|t| t.id.clone());
        ctx.trail.tunnel_mode = tunnel.as_ref().map(|t| t.mode());
        let caller = match &tunnel {
            Some(t) => Caller::Tunnel(t),
            None => Caller::Listener(&self.listener.identity),
        };
        let ask = Ask::Http {
            source: BodySource::Session(session),
            tunnel: tunnel.as_deref(),
        };
        let admitted = admit::admit(
            self.shared.as_ref(),
            snapshot,
            caller,
            ask,
            &mut ctx.trail,
            &mut (),
        )
        .await?;
        ctx.admitted = Some(admitted);
        Ok(())
    }

    /// An admitted upgrade request (a WebSocket) relays bytes for as long as both sides keep it
    /// open, with no request to judge again: its connection ends once its identity is no longer
    /// accepted, its run was closed, or its `http` question is refused after a reload
    /// ([`lapse::watch`]), and the request's record says why (see `logging`).
    ///
    /// SECURITY: otherwise a revoked or expired token, a pulled key, a removed workload would
    /// keep an open WebSocket relaying while every fresh request with it is refused.
    fn watch_upgrade(&self, session: &Session, ctx: &mut RequestCtx) {
        if !session.is_upgrade_req() {
            return;
        }
        let (Some(conn), Some(admitted)) = (front_conn(session), ctx.admitted.as_ref()) else {
            return;
        };
        let Ok(addr) = admitted.permit.addr() else {
            return;
        };
        let seen = Arc::new(std::sync::OnceLock::new());
        let question = lapse::Question {
            generation: admitted.snapshot.generation,
            ask: lapse::upgrade_again(
                admitted.tenant.clone(),
                admitted.permit.destination().clone(),
                session.req_header().method.clone(),
                ctx.trail.model.clone(),
                ctx.trail.other_models.clone(),
                addr,
                tunnel_of(session),
            ),
        };
        let watch = lapse::watch(
            self.shared.clone(),
            admitted.identity.clone(),
            Some(question),
        );
        let noted = seen.clone();
        conn.end_when(Box::pin(async move {
            let _ = noted.set(watch.await);
        }));
        ctx.lapse = Some(seen);
    }

    /// Writes the JSON refusal. The connection stays open when the request had no body or its
    /// body was read whole (a refused agent retries on it; reconnecting for every refusal would
    /// make a noisy neighbour cost everyone more). Otherwise it is closed, after what is left
    /// of the body is read and discarded for a bounded time ([`drain_body`]), so that a client
    /// still sending it reads the refusal.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        deny: Deny,
    ) -> pingora::Result<()> {
        if deny == Deny::ClientClosed {
            // Nobody to answer: recorded with what ended it.
            ctx.trail.refuse(deny);
            session.set_keepalive(None);
            return Ok(());
        }
        let (resp, body) = refusal_response(&deny, ctx.request_id())?;
        // SECURITY: after a framing error or a missed deadline the connection is never read
        // again (pingora may report such a body as done); a client over its connection cap
        // gives one back.
        let fatal = matches!(
            deny,
            Deny::Framing(_)
                | Deny::UnsupportedTransferEncoding
                | Deny::RequestTimeout
                | Deny::ConnectionLimit(_)
                | Deny::Overloaded(_)
        );
        // A connection whose identity is its client certificate (which has expired or lost
        // its trust) would be refused for every further request: closing it lets the client
        // connect again, with its current certificate.
        let identity_spent = matches!(deny, Deny::IdentityInvalid(_))
            && session
                .digest()
                .and_then(|d| d.ssl_digest.as_deref())
                .is_some_and(|d| {
                    d.extension
                        .get::<crate::identity::PeerCertificate>()
                        .is_some()
                });
        ctx.trail.refuse(deny);
        let poisoned = front_conn(session).is_some_and(|c| c.violation().is_some());
        let body_pending = !(session.is_body_empty() || session.is_body_done());
        if fatal || identity_spent || poisoned || body_pending {
            session.set_keepalive(None);
        }
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
        // A client still sending its body reads the refusal only if the connection is not
        // reset under it. A framing error, a missed deadline or a shed connection is closed at
        // once; a client waiting for `100 Continue` sends nothing more.
        let expects_continue = || {
            session
                .req_header()
                .headers
                .get(http::header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
        };
        if body_pending && !(fatal || poisoned || expects_continue()) {
            drain_body(session, self.shared.config.limits.max_body_bytes).await;
        }
        Ok(())
    }
}

/// The SSE error event that ends a stream cut for `deny`, when its framing takes one (`sse`).
fn last_event(sse: bool, deny: &Deny, request_id: &str) -> Option<Vec<u8>> {
    sse.then(|| {
        let (_, code, message) = deny.describe();
        crate::limits::stream::cut_event(code.as_str(), &message, request_id)
    })
}

/// How long a refused request's body is read and discarded at most (see [`drain_body`]).
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Reads and discards what is left of a refused request's body, for at most [`DRAIN_TIME`] and
/// `max` bytes, after its refusal was written: closing a socket with unread bytes resets it
/// (RFC 9112 §9.6), so a client still uploading (Node's `http`, undici, Python's `requests`
/// inside a tunnel) would see a broken pipe instead of the refusal, and an HTTP/2 stream given
/// no more window never ends for clients that wait to finish sending. Nothing read is kept or
/// forwarded; the connection is closed after.
async fn drain_body(session: &mut Session, max: usize) {
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    let mut read = 0usize;
    while read < max {
        match tokio::time::timeout_at(deadline, session.read_request_body()).await {
            Ok(Ok(Some(chunk))) => read = read.saturating_add(chunk.len()),
            _ => return,
        }
    }
}

/// Whether pingora's TLS connector verifies an upstream certificate against `host` itself: not
/// for an empty name (verification off) or one with `_` (its first label's is rewritten to `-`).
fn sni_verifies_as_given(host: &str) -> bool {
    !host.is_empty() && !host.contains('_')
}

/// `HTTP2-Settings`, which only an `h2c` upgrade sends.
const HTTP2_SETTINGS: http::HeaderName = http::HeaderName::from_static("http2-settings");

/// Keeps a request's `Upgrade` only when it asks for a WebSocket and nominates it in
/// `Connection` (RFC 9110 §7.8), the one upgrade the proxy relays; any other (`h2c`, which Java's
/// `HttpClient` and `curl --http2` send on every plain-text call, a TLS upgrade, an `Upgrade`
/// that `Connection` does not nominate) is dropped, with `HTTP2-Settings` and their
/// `Connection` options, as a server that does not take it up may (§7.8). The request is then
/// an ordinary HTTP/1.1 call, decided and metered as one, and no upstream is asked to switch to
/// a protocol the proxy would relay unread.
fn drop_other_upgrades(req: &mut pingora::http::RequestHeader) -> pingora::Result<()> {
    if !req.headers.contains_key(http::header::UPGRADE) {
        return Ok(());
    }
    if crate::websocket_switch::nominates_upgrade(&req.headers)
        && crate::websocket_switch::names_websocket(&req.headers)
        && req.version == http::Version::HTTP_11
    {
        return Ok(());
    }
    let kept: Vec<Vec<u8>> = req
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| crate::front::head::connection_options(v.as_bytes()))
        .filter(|o| {
            !o.eq_ignore_ascii_case(b"upgrade") && !o.eq_ignore_ascii_case(b"http2-settings")
        })
        .map(<[u8]>::to_vec)
        .collect();
    req.remove_header(&http::header::UPGRADE);
    req.remove_header(&HTTP2_SETTINGS);
    req.remove_header(&http::header::CONNECTION);
    if !kept.is_empty() {
        req.insert_header(http::header::CONNECTION, kept.join(&b", "[..]))?;
    }
    Ok(())
}

/// Joins an HTTP/2 request's `cookie` fields into one, `; `-separated, as RFC 9113 §8.2.3 asks
/// before a request goes on as HTTP/1.1 (the proxy's upstream calls are): HTTP/2 clients split
/// cookies into fields of their own, and many HTTP/1 servers read only the first `Cookie` line.
/// Done before the request is decided, so checks see the one field the upstream will.
fn join_cookies(req: &mut pingora::http::RequestHeader) -> pingora::Result<()> {
    let mut fields = req.headers.get_all(http::header::COOKIE).iter();
    if fields.next().is_none() || fields.next().is_none() {
        return Ok(());
    }
    let joined: Vec<u8> = req
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    req.remove_header(&http::header::COOKIE);
    req.insert_header(http::header::COOKIE, joined)
}

/// Whether a list result may show this item to the request's workload: the same decision a use
/// of it would get. Anything missing denies.
fn item_allowed(
    admitted: Option<&admit::Admitted>,
    server: Option<&str>,
    method: &http::Method,
    item: crate::policy::ItemKind,
    name: &str,
) -> bool {
    let (Some(admitted), Some(server)) = (admitted, server) else {
        return false;
    };
    let asking = decide::Asking::new(
        &admitted.snapshot,
        &admitted.tenant,
        admitted.permit.destination(),
        method,
        None,
        crate::clock::unix_now_i64(),
    );
    asking
        .mcp_item(&admitted.snapshot.policy, server, item, name)
        .allowed
}

/// Maps a pingora error to the refusal the client sees; `cut`: the drain has cut the client
/// connections (see [`crate::drain`]); `reached`: a connection to the upstream was made, so the
/// request may have reached it.
fn deny_for_error(e: &Error, cut: bool, upgraded: bool, reached: bool) -> Option<Deny> {
    use ErrorType::*;
    let deny = match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
            Some(Deny::UpstreamTimeout)
        }
        TLSHandshakeFailure | InvalidCert | HandshakeError => Some(Deny::UpstreamTls),
        etype => match e.esource() {
            // SECURITY (audit): once connected, the request (credentials and all) may have
            // reached the upstream; the record must not say it could not be reached. A connect
            // that failed (a retry's, after an earlier attempt's connection broke) did not.
            ErrorSource::Upstream
                if reached
                    && !matches!(
                        etype,
                        ConnectRefused
                            | ConnectNoRoute
                            | ConnectError
                            | ConnectProxyFailure
                            | BindError
                            | SocketError
                    ) =>
            {
                Some(Deny::UpstreamFailed)
            }
            ErrorSource::Upstream => Some(Deny::UpstreamUnreachable),
            // The proxy cut the client's connection at shutdown: not the client's doing.
            ErrorSource::Downstream if cut => Some(Deny::Shutdown),
            // The client went away (the front refuses malformed requests before pingora).
            ErrorSource::Downstream => Some(Deny::ClientClosed),
            ErrorSource::Internal | ErrorSource::Unset => Some(Deny::Internal),
        },
    };
    // An upgraded connection (a WebSocket) has no end of response: it ends when either side
    // closes, resets or goes quiet, and that is its normal end. Only the proxy's own cut (and
    // its own failures) is not.
    match deny {
        Some(
            Deny::ClientClosed
            | Deny::UpstreamUnreachable
            | Deny::UpstreamFailed
            | Deny::UpstreamTimeout,
        ) if upgraded => None,
        deny => deny,
    }
}

/// The key that keeps each tenant's upstream connections to itself (pingora's
/// `HttpPeer::group_key`: peers whose keys differ never share a pooled connection).
///
/// SECURITY: pingora pools upstream connections by address, TLS and SNI alone, so without it
/// one tenant's request could travel on a connection another tenant's request left in the pool,
/// and anything that desynchronized that connection (an upstream that frames a body or a
/// response otherwise than the proxy did) would hand one tenant's bytes, its injected secret
/// among them, to the other. The key is a hash of the tenant id under a key drawn at start:
/// two tenants share connections only if their ids collide in 64 bits under a key nobody
/// knows (odds of about 3 in 10^12 for 10,000 tenants).
fn upstream_pool_key(tenant: &TenantId) -> u64 {
    static KEY: std::sync::LazyLock<std::collections::hash_map::RandomState> =
        std::sync::LazyLock::new(std::collections::hash_map::RandomState::new);
    std::hash::BuildHasher::hash_one(&*KEY, tenant)
}

/// An error that makes pingora stop the response (and call `fail_to_proxy`).
/// Ends a response its stages cut: records why, keeps the event that ends it for
/// `fail_to_proxy` to write (the error makes pingora drop the upstream, which stops
/// generating), and returns that error.
fn cut_response(
    stages: &Stages,
    trail: &mut record::Trail,
    cut_event: &mut Option<Vec<u8>>,
    cut: Cut,
) -> Box<Error> {
    match cut {
        Cut::Budget(reason) => {
            // The stream ran out of budget; another framing (an NDJSON or text stream) just
            // ends, short of its length.
            let deny = Deny::StreamCut(reason);
            *cut_event = stages.cut_event(&deny, &trail.request_id);
            trail.refuse(deny);
            stop("stream_cut", "stream cut: budget spent")
        }
        Cut::Overloaded(deny) => {
            // What the response must be held whole to be read (an MCP answer, an event-stream
            // message) does not fit the body memory bound: the rest is withheld, an MCP
            // answer's replaced by a JSON-RPC error for its list.
            *cut_event = match stages.list_filter() {
                Some(filter) => Some(filter.error_message(&FilterError::Overloaded)),
                None => last_event(stages.cut_ends_with_sse_event(), &deny, &trail.request_id),
            };
            trail.refuse(deny);
            stop("overloaded", "response body memory")
        }
        Cut::Unfiltered(error) => {
            // The rest of an MCP response whose lists could not be filtered is withheld,
            // replaced by a JSON-RPC error framed like the response.
            *cut_event = stages.list_filter().map(|f| f.error_message(&error));
            trail.refuse(Deny::McpResponseUnfiltered(error.to_string()));
            stop("mcp_response_unfiltered", "MCP list could not be filtered")
        }
    }
}

fn stop(kind: &'static str, why: &'static str) -> Box<Error> {
    let mut e = Error::explain(ErrorType::Custom(kind), why);
    e.set_retry(false);
    e
}

#[async_trait]
impl ProxyHttp for TenantProxy {
    // Boxed so that pingora's per-request future, which holds the context across every await
    // and is itself boxed and moved once per request, stays small.
    type CTX = Box<RequestCtx>;

    fn new_ctx(&self) -> Box<RequestCtx> {
        Box::new(RequestCtx::new(self.name.clone()))
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        // The front hands pingora one checked request at a time and reads the next head itself
        // (pipelined requests wait there, not in pingora). pingora only needs to know the
        // connection may be reused, and for how long an idle HTTP/2 connection may stay.
        // An HTTP/1 request that asks to switch to a WebSocket ends its connection whatever the
        // answer (the front reads the rest as the switched protocol's): a refusal or an upstream
        // that does not switch says `Connection: close`, so the client does not send another
        // request that nobody would read. Any other switch it offers is declined first.
        drop_other_upgrades(session.req_header_mut())?;
        if session.is_http2() {
            join_cookies(session.req_header_mut())?;
        }
        if session.is_upgrade_req() && !session.is_http2() {
            session.set_keepalive(None);
        } else if session.get_keepalive().is_some() {
            let idle = if tunnel_of(session).is_some() {
                self.shared
                    .config
                    .egress
                    .tunnel_idle_timeout
                    .as_secs()
                    .max(1)
            } else {
                PLAIN_KEEPALIVE_SECS
            };
            session.set_keepalive(Some(idle));
        }
        Ok(())
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<bool> {
        match self.admit(session, ctx).await {
            Ok(()) => {
                self.watch_upgrade(session, ctx);
                Ok(false)
            }
            Err(deny) => {
                self.refuse(session, ctx, deny).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        // SECURITY: no proof of authorization, no upstream.
        let Some(admitted) = ctx.admitted.as_ref() else {
            ctx.trail.refuse(Deny::Internal);
            return Err(Error::explain(
                ErrorType::InternalError,
                "upstream_peer reached without authorization",
            ));
        };
        let dest = admitted.permit.destination();
        let tls = dest.scheme == crate::target::Scheme::Https;
        let Ok(addr) = admitted.permit.addr() else {
            ctx.trail.refuse(Deny::Internal);
            return Err(Error::explain(
                ErrorType::InternalError,
                "upstream_peer reached without a checked address",
            ));
        };
        // SECURITY: pingora's TLS connector verifies the certificate against the name it is
        // given with the first label's `_` turned into `-` (and sends that as SNI), so a host
        // `api_x.example.com` would accept a certificate for `api-x.example.com`, another host,
        // with the tenant's secret substituted; and an empty name turns verification off. No
        // certificate can name a host with `_` (CA/Browser Forum rules), so such a host cannot
        // be verified: refused as a certificate that cannot be, before any byte is sent.
        if tls && !sni_verifies_as_given(&dest.host) {
            ctx.trail.refuse(Deny::UpstreamTls);
            return Err(Error::explain(
                ErrorType::TLSHandshakeFailure,
                "an upstream name no certificate can name",
            ));
        }
        let mut peer = HttpPeer::new(addr, tls, dest.host.clone());
        peer.group_key = upstream_pool_key(&admitted.tenant.tenant);
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
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        ctx.trail.upstream.0 = Some(Instant::now());
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut Self::CTX,
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
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        let Some((admitted, grant)) = ctx.http() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "upstream request without authorization",
            ));
        };
        let readable = grant.llm
            || ctx.trail.mcp.is_some()
            || grant
                .applied
                .as_ref()
                .is_some_and(crate::credentials::apply::Applied::scrubs);
        let session = ctx.trail.mcp.as_ref().map(|m| &m.session);
        respond::upstream_request(admitted, grant, readable, session, upstream)?;
        // A new attempt (a retry on another connection) is handed the held body anew.
        ctx.body_handed = false;
        Ok(())
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        // The body was read in full before the decision; pingora passes only its retry-buffer
        // tail here. Hand over the whole body, once per upstream attempt (again on a retry).
        // SECURITY: once only. Pingora calls this again at the end of a stream (an HTTP/2
        // request that ends with trailers) and for an upgraded connection's bytes; handing the
        // body over at each call sent the upstream the decided body twice, joined into pairs
        // and fields nothing decided on, or in place of a WebSocket's frames.
        let held = ctx.http().and_then(|(_, g)| g.body.as_ref());
        match held {
            Some(full) if !ctx.body_handed => {
                *body = Some(full.0.clone());
                ctx.body_handed = true;
            }
            // An upgrade request's later bytes are its upgraded connection's (the WebSocket
            // frames a client may send as soon as it reads the 101, before pingora has marked
            // the session upgraded).
            Some(_) if !session.was_upgraded() && !session.is_upgrade_req() => {
                // The request's body is all in what was handed over: anything more is no part
                // of what was decided on, and is not forwarded.
                if body.take().is_some_and(|extra| !extra.is_empty()) {
                    return Err(Error::explain(
                        ErrorType::InternalError,
                        "request body bytes past the body that was decided on",
                    ));
                }
            }
            _ => {
                if let Some(sent) = body {
                    // An upgraded connection's bytes (a WebSocket's frames), counted as a
                    // body's are.
                    ctx.trail.bytes_in += sent.len() as u64;
                }
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        ctx.trail.upstream.1 = Some(Instant::now());
        let status = upstream_response.status;
        // SECURITY: see `websocket_switch`. A switch the request did not open as a WebSocket
        // handshake (or one an HTTP/2 client cannot take) would leave the client's next bytes
        // unread by any check; it is withheld as an invalid answer.
        if status == http::StatusCode::SWITCHING_PROTOCOLS
            && (session.is_http2()
                || !crate::websocket_switch::completes_handshake(
                    &session.req_header().headers,
                    &upstream_response.headers,
                ))
        {
            if let Some(suppressed) = crate::logging::sample_line(
                crate::logging::LineKey::Tenant(ctx.trail.tenant_label()),
                "upstream_switch_refused",
            ) {
                tracing::warn!(
                    request_id = %ctx.trail.request_id,
                    tenant = ctx.trail.tenant_label(),
                    suppressed,
                    "the upstream answered 101 Switching Protocols without completing a WebSocket handshake the request opened; withheld as upstream_failed"
                );
            }
            ctx.trail.refuse(Deny::UpstreamFailed);
            return Err(stop("upstream_switch_refused", "invalid protocol switch"));
        }
        // An interim answer (`100 Continue`, `103 Early Hints`) is not the request's answer: the
        // record names the final one, or what ended the request without one.
        if is_the_answer(status) {
            ctx.trail.upstream_status = Some(status);
        } else {
            ctx.interim_relayed = true;
        }
        let had_length = upstream_response
            .headers
            .contains_key(http::header::CONTENT_LENGTH);
        // Trailers do not pass (pingora's HTTP/1 client reads none): a `Trailer` field would
        // announce fields that never come.
        upstream_response.remove_header(&http::header::TRAILER);
        let built = {
            let Some((admitted, grant)) = ctx.http() else {
                return Err(Error::explain(
                    ErrorType::InternalError,
                    "response without authorization",
                ));
            };
            let setup = StageSetup {
                admitted,
                grant,
                llm: grant.llm,
                head: session.req_header().method == http::Method::HEAD,
                limits: self.shared.limits.clone(),
                bodies: &self.shared.bodies,
            };
            let headline = grant.limits.as_ref().and_then(|a| a.headline);
            Stages::for_response(setup, &ctx.trail, upstream_response).map(|s| (s, headline))
        };
        let headline = match built {
            Ok((stages, headline)) => {
                ctx.stages = stages;
                headline
            }
            Err(deny) => {
                ctx.trail.refuse(deny);
                return Err(stop("response_refused", "the response cannot be passed on"));
            }
        };
        // A response that streams (no length: an SSE answer, an MCP server's event stream) of a
        // signed run ends once the run is closed (an upgrade's relay is watched on its own).
        if !had_length && upstream_response.status != http::StatusCode::SWITCHING_PROTOCOLS {
            if let Some(admitted) = ctx.admitted.as_ref() {
                ctx.recheck.watch_run(&self.shared, &admitted.identity);
            }
        }
        // A body whose length we changed is re-framed as chunked for HTTP/1.1 clients; left
        // unframed it would end by closing the connection, and with it a keep-alive tunnel.
        // An answer that has no body (to `HEAD`, a 204, a 304) is not framed: a client would
        // wait for the chunks (Python `requests` until its timeout).
        let bodyless = crate::header_names::bodyless_answer(
            session.req_header().method == http::Method::HEAD,
            upstream_response.status.as_u16(),
        );
        if had_length
            && !bodyless
            && !upstream_response
                .headers
                .contains_key(http::header::CONTENT_LENGTH)
            && session.req_header().version == http::Version::HTTP_11
        {
            upstream_response.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        }
        // The upstream's own id is the only thing `x-upstream-request-id` carries: one the
        // upstream wrote under that name is not passed off as checked.
        let theirs = record::upstream_request_id(&upstream_response.headers).map(str::to_string);
        upstream_response.remove_header("x-upstream-request-id");
        if let Some(theirs) = theirs {
            upstream_response.insert_header("x-upstream-request-id", &theirs)?;
            ctx.trail.upstream_request_id = Some(theirs);
        }
        upstream_response.insert_header("x-request-id", &*ctx.trail.request_id)?;
        if let Some(h) = headline {
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
        ctx: &mut Self::CTX,
    ) -> pingora::Result<Option<std::time::Duration>> {
        let RequestCtx {
            admitted,
            trail,
            stages,
            cut_event,
            recheck,
            ..
        } = &mut **ctx;
        if let Some(admitted) = admitted.as_ref() {
            let judged = recheck.chunk(&self.shared, &admitted.identity, trail.started);
            if judged == Ok(true) {
                // SECURITY: a secret bound to this host, or rotated, while the response lasts
                // (an SSE answer, an MCP event stream, a WebSocket) may be echoed in it once a
                // later request sent it: it is scrubbed of the secrets of the moment too.
                let now = self.shared.snapshot.load();
                if now.generation != stages.scrub_generation() {
                    // A reload that lowered a ceiling governs what the stream still asks for.
                    stages.guard_ceilings_now(|keys| {
                        crate::limits::plan::ceilings_now(
                            &now.tenants,
                            &admitted.tenant,
                            keys,
                            crate::clock::unix_now_i64(),
                        )
                    });
                    let host = &admitted.permit.destination().host;
                    let echoes = self.shared.echoes(&now, &admitted.tenant.tenant, host);
                    if let Err(deny) = stages.look_for_secrets(now.generation, echoes) {
                        // Compressed, it cannot be read for them: it ends, as a fresh
                        // request's compressed answer is withheld.
                        *body = None;
                        trail.refuse(deny);
                        return Err(stop(
                            "upstream_encoded",
                            "a compressed response that must now be scrubbed",
                        ));
                    }
                }
            }
            if let Err(lapse) = judged {
                // The identity the response was asked with is no longer accepted: the chunk in
                // hand is dropped and the response ends, an SSE stream with an event saying why
                // (written by `fail_to_proxy`, as for a stream out of budget).
                *body = None;
                *cut_event = last_event(
                    stages.cut_ends_with_sse_event(),
                    &lapse.deny,
                    &trail.request_id,
                );
                trail.ended = Some(lapse.ended);
                trail.refuse(lapse.deny);
                return Err(stop(
                    "identity_lapsed",
                    "the response's identity is no longer accepted",
                ));
            }
        }
        let method = &session.req_header().method;
        let server = trail.mcp.as_ref().map(|m| m.server.clone());
        let mut allowed = |item, name: &str| {
            item_allowed(admitted.as_ref(), server.as_deref(), method, item, name)
        };
        let fed = stages.feed(body, end_of_stream, trail, &mut allowed);
        fed.map(|()| None).map_err(|cut| {
            // The chunk in hand is dropped.
            *body = None;
            cut_response(stages, trail, cut_event, cut)
        })
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<Option<std::time::Duration>> {
        let RequestCtx {
            trail,
            stages,
            cut_event,
            ..
        } = &mut **ctx;
        // Metered (and its budget decided) as it arrives, before pingora sleeps on the wait
        // this returns and the downstream filter passes it on.
        stages
            .read_upstream(body, end_of_stream, trail)
            .map_err(|cut| cut_response(stages, trail, cut_event, cut))
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        // A cut response whose header never left (pingora may hold the header with the first
        // body chunks) is refused whole below instead. An interim answer (`100 Continue`) is no
        // header of the response: the refusal still follows it.
        let header_sent = final_header_written(session);
        if let Some(event) = ctx.cut_event.take().filter(|_| header_sent) {
            // The stream was cut (budget spent, or an MCP list that could not be filtered): end
            // it with our event, as a complete response.
            if let Err(write_err) = session.write_response_body(Some(event.into()), true).await {
                tracing::debug!(error = %write_err, "cannot end the cut stream");
            }
            return FailToProxy {
                error_code: 200,
                can_reuse_downstream: false,
            };
        }
        if ctx.note_lapse() {
            // The proxy ended the relay: nobody to answer (its connection is ended).
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let deny = match &ctx.trail.outcome {
            Outcome::Refused(d) => Some(d.clone()),
            _ => deny_for_error(
                e,
                self.shared.drain.is_cut(),
                ctx.trail.upgraded(),
                ctx.trail.upstream.0.is_some(),
            ),
        };
        let Some(deny) = deny else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if matches!(deny, Deny::ClientClosed | Deny::Shutdown) {
            // Nobody to answer (the connection is gone or cut); recorded with what ended it.
            ctx.trail.refuse(deny);
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let status = deny.describe().0;
        if !header_sent {
            if let Err(write_err) = self.refuse(session, ctx, deny).await {
                tracing::debug!(error = %write_err, "cannot write error response");
            }
        } else {
            ctx.trail.refuse(deny);
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        ctx.note_lapse();
        if ctx.trail.outcome == Outcome::Pending {
            // SECURITY: only a forward whose upstream answer arrived is recorded as allowed; a
            // request that ended any other way after admission is recorded with what ended it,
            // and as an internal error when nothing says.
            let (cut, upgraded) = (self.shared.drain.is_cut(), ctx.trail.upgraded());
            let reached = ctx.trail.upstream.0.is_some();
            ctx.trail.outcome = match e.and_then(|e| deny_for_error(e, cut, upgraded, reached)) {
                Some(d) => Outcome::Refused(d),
                None if ctx.trail.upstream.1.is_some() => Outcome::Forwarded,
                None => Outcome::Refused(Deny::Internal),
            };
        }
        if let Some(admitted) = ctx.admitted.as_mut() {
            if let admit::Grant::Http(grant) = &mut admitted.grant {
                if let Some(mut admission) = grant.limits.take() {
                    if let Some(extra) = ctx.stages.extensions().await {
                        admission.add_extension(extra);
                    }
                    // SECURITY: whether the upstream may have served (and billed) the call is
                    // the upstream's answer, not how the client's side ended: an agent that
                    // hangs up just before a stream's usage arrives still used what it was
                    // sent. A request that went out and got no answer (the client left first,
                    // a deadline passed) may have been served too; only one that never reached
                    // the upstream, or that it refused, gives its reservation back.
                    let served = match ctx.trail.upstream_status {
                        Some(status) => {
                            status.is_success() || status == http::StatusCode::SWITCHING_PROTOCOLS
                        }
                        None => ctx.trail.upstream.0.is_some(),
                    };
                    let ending = Ending {
                        usage: ctx.trail.usage,
                        served,
                        cut: matches!(ctx.trail.outcome, Outcome::Refused(Deny::StreamCut(_))),
                        streamed_output: ctx.stages.output_seen(),
                        streamed_hosted_calls: ctx.stages.streamed_hosted_calls(),
                        // The reservation is the body's bytes (its input bound) and the output.
                        covered_output: admission
                            .reserved
                            .tokens
                            .saturating_sub(ctx.trail.bytes_in),
                    };
                    let used =
                        crate::limits::plan::settlement(admission.reserved, grant.prices, ending);
                    ctx.trail.reserved = Some(admission.reserved);
                    ctx.trail.settled = Some(used);
                    self.shared.limits.finish(admission, used).await;
                } else if let (Some(u), Some(p)) = (ctx.trail.usage, grant.prices) {
                    // No ceiling applied, but the cost is still recorded and counted.
                    ctx.trail.settled = Some(crate::limits::plan::usage_charge(u, Some(p)));
                }
            }
        }
        // An interim answer alone (`100 Continue`, then nothing) is no status of the request's.
        let status = session
            .response_written()
            .filter(|_| final_header_written(session))
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let filter = ctx.stages.list_filter();
        ctx.trail
            .finish_request(&self.shared.runs, status, filter)
            .await;
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        // pingora's rule (an idempotent request whose body it still holds may be tried again on
        // a new connection), and one more: once anything of the upstream's answer went to the
        // client (an interim `100 Continue` or `103 Early Hints`), a second attempt would send
        // it twice and run the request twice for one answer.
        if !session.req_header().method.is_idempotent()
            || session.as_ref().retry_buffer_truncated()
            || ctx.interim_relayed
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Self::CTX, e: &Error) -> bool {
        // SECURITY: pingora's line prints the error's context, which holds raw upstream bytes
        // (an echoed `Authorization`); ours names what failed and nothing else.
        crate::logging::proxy_failure(e, ctx.request_id(), ctx.trail.tenant_label(), false);
        true
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        ctx: &Self::CTX,
        e: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        crate::logging::proxy_failure(e, ctx.request_id(), ctx.trail.tenant_label(), true);
        true
    }

    fn request_summary(&self, session: &Session, ctx: &Self::CTX) -> String {
        // pingora's default summary includes the full URL, whose query may carry secrets.
        let dest = ctx.trail.destination.as_ref();
        format!(
            "{} {}{} request_id={}",
            session.req_header().method,
            dest.map(|d| d.host.as_str()).unwrap_or("-"),
            dest.map(|d| d.audit_path.as_str()).unwrap_or(""),
            ctx.trail.request_id
        )
    }
}

/// The tenant label of a record-less refusal.
pub fn tenant_label(tenant: Option<&TenantId>) -> &str {
    Metrics::tenant_label(tenant.map(TenantId::as_str))
}

#[cfg(test)]
mod tests;
