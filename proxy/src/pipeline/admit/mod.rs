//! The one admission chain. Every request (forward, route, inside a tunnel), every `CONNECT`
//! and every `tenant-proxy policy explain` goes through [`admit`], in this order:
//!
//! audit slot → identity → tenant context (its audit partition, its connection) → run →
//! what is asked (the request's target and body, or the tunnel's port) → policy (+ shadow) →
//! [tunnel cap] → egress → [MCP items] → credentials decided → [approval hold] → credentials
//! substituted → limits → [`Permit`]
//!
//! The order is the security argument: an unauditable request is never served; identity comes
//! before anything reads the request; the body before the decision (the decision sees the
//! model); policy before any name is resolved (a denied caller cannot probe names); credentials
//! only for an allowed request; an approval hold only for a request every other check allowed
//! (a person is never asked about a request that would be refused), and what waits carries no
//! substituted secret and no reservation; ceilings last, so a request refused for any other
//! reason uses up no allowance. The side effects (reserving, counting, dialing) go through [`Effects`]:
//! the proxy's, or [`DecideOnly`]'s for `policy explain`, which decides exactly as the proxy
//! would and changes nothing.
//!
//! Only this chain builds a [`Permit`]: `upstream_peer` dials nothing without one.

mod approval;
mod connect;
mod credentials;
mod destination;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::protocols::tls::SslDigest;
use pingora::proxy::Session;
use sha2::{Digest, Sha256};

use super::caps::{StreamSlots, TenantSlot};
use super::conn::{front_conn, ConnFacts, Tunnel};
use super::decide::{self, with_other_models, Asking, McpTrail, Observer};
use super::record::{Trail, TunnelMode};
use crate::approvals::{Granted, HeldRequest, HoldAsk, HoldEnd};
use crate::audit::ApprovalFields;
use crate::audit::AuditSlot;
use crate::body::{self, BodyHold, BufferedBody};
use crate::clock::{unix_now, unix_now_i64};
use crate::config::StaticConfig;
use crate::context::TenantContext;
use crate::credentials::apply::{AccessTokens, Applied, CredentialDeny};
use crate::credentials::kind::Kind;
use crate::credentials::oauth::cache::TokenUnavailable;
use crate::credentials::oauth::TokenSource;
use crate::credentials::scrub::Patterns;
use crate::credentials::secret::SecretValue;
use crate::credentials::Credential;
use crate::egress::EgressException;
use crate::error::{BrowserSign, Deny, PolicyRefusal};
use crate::identity::{
    self, IdentityError, IdentitySourceKind, ListenerIdentity, Presented, ResolvedIdentity,
};
use crate::ids::TenantId;
use crate::limits::plan::{CallFacts, Plan};
use crate::limits::stream::StreamPlan;
use crate::limits::Admission;
use crate::mcp::McpExchange;
use crate::policy::approval::ApprovalNeed;
use crate::policy::{ConnectQuestion, Decision, ItemKind};
use crate::pricing::Prices;
use crate::snapshot::Snapshot;
use crate::target::{Destination, Scheme};
use crate::tls::ca::LeafMinter;
use crate::usage::providers::registry::{self, Work};
use crate::usage::providers::Provider;

use approval::*;
use connect::*;
use credentials::*;
use destination::*;

/// The W3C trace context header a caller's trace is continued from.
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

pub(super) use connect::{must_intercept, tunnel_connect_refused};
pub(super) use destination::{declared_provider, egress_exceptions};
#[cfg(test)]
pub(super) use {approval::approval_target, connect::tunnel_destination};

/// Proof that the chain admitted a request to exactly this destination and address. Its fields
/// are private: nothing but [`admit`] can make one.
#[derive(Debug)]
pub struct Permit {
    destination: Destination,
    /// None for a plain-HTTP tunnel: it dials nothing itself, each request inside is admitted
    /// (and its own address checked) on its own.
    addr: Option<SocketAddr>,
}

impl Permit {
    /// The destination that was authorized.
    pub fn destination(&self) -> &Destination {
        &self.destination
    }

    /// The address the egress guard checked: the only one that may be dialed.
    // SECURITY: a permit without a checked address dials nothing (an internal error).
    pub fn addr(&self) -> Result<SocketAddr, Deny> {
        self.addr.ok_or(Deny::Internal)
    }
}

/// Who is asking, as far as the chain can verify it.
#[derive(Debug)]
pub enum Caller<'a> {
    /// Inside an intercepted tunnel: the tunnel's identity (re-checked), never what the
    /// request presents.
    Tunnel(&'a Tunnel),
    /// Whatever the request and its connection present (a token, a client certificate), on a
    /// listener with these rules.
    Listener(&'a ListenerIdentity),
    /// Named outright (`policy explain`).
    Named(Box<ResolvedIdentity>),
}

/// Where an HTTP request's body comes from.
pub enum BodySource<'a> {
    /// The client's connection (read whole, within the body budget and deadline).
    Session(&'a mut Session),
    /// Given whole (`policy explain`).
    Given(&'a RequestHeader, Option<Bytes>),
}

impl std::fmt::Debug for BodySource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodySource::Session(_) => "BodySource::Session",
            BodySource::Given(..) => "BodySource::Given",
        })
    }
}

impl BodySource<'_> {
    fn header(&self) -> &RequestHeader {
        match self {
            BodySource::Session(s) => s.req_header(),
            BodySource::Given(h, _) => h,
        }
    }

    fn ssl(&self) -> Option<&SslDigest> {
        match self {
            BodySource::Session(s) => s.digest().and_then(|d| d.ssl_digest.as_deref()),
            BodySource::Given(..) => None,
        }
    }
}

/// What is asked.
#[derive(Debug)]
pub enum Ask<'a> {
    /// An HTTP request; `tunnel` when it came through one.
    Http {
        /// The request (and its body).
        source: BodySource<'a>,
        /// The tunnel it came through.
        tunnel: Option<&'a Tunnel>,
    },
    /// A `CONNECT` tunnel to `host:port`.
    Connect {
        /// The `CONNECT` request.
        header: &'a RequestHeader,
        /// Its connection's TLS digest (an mTLS client certificate's identity).
        ssl: Option<&'a SslDigest>,
        /// Lowercase host.
        host: &'a str,
        /// Port.
        port: u16,
        /// For a captured TLS connection, the address its client dialed (`host`, its SNI,
        /// must resolve to it).
        original: Option<SocketAddr>,
    },
}

/// A request or tunnel that passed every check.
#[derive(Debug)]
pub struct Admitted {
    /// Who asked.
    pub tenant: Arc<TenantContext>,
    /// The identity it was admitted with (a tunnel's, for a request inside one): what a
    /// relay it becomes is judged again by ([`super::lapse`]).
    pub identity: ResolvedIdentity,
    /// The configuration it was admitted under (every later phase uses the same one).
    pub snapshot: Arc<Snapshot>,
    /// The proof `upstream_peer` requires.
    pub permit: Permit,
    /// What the path carries on.
    pub grant: Grant,
}

/// What an admitted request or tunnel carries into its later phases.
#[derive(Debug)]
pub enum Grant {
    /// An HTTP request.
    Http(HttpGrant),
    /// A `CONNECT` tunnel.
    Tunnel(TunnelGrant),
}

/// What an admitted HTTP request carries.
#[derive(Debug, Default)]
pub struct HttpGrant {
    /// The body to hand upstream (as read, decoded, with substitutions).
    pub body: Option<BufferedBody>,
    /// Its share of the body budget, held until the request ends.
    pub body_hold: Option<BodyHold>,
    /// The body was decoded from its `Content-Encoding`: it goes upstream without the header.
    pub body_decoded: bool,
    /// The body's output ceiling, for an LLM call.
    pub max_output_tokens: Option<u64>,
    /// How many completions the body asks for, for an LLM call.
    pub choices: Option<u64>,
    /// Credential substitutions for the upstream request.
    pub applied: Option<Applied>,
    /// The provider the proxy asked for a stream's usage (its usage event is removed again).
    pub usage_requested: Option<&'static dyn Provider>,
    /// Leases and reservations against ceilings, while the request is in flight.
    pub limits: Option<Admission>,
    /// The model's prices, when a price table is configured.
    pub prices: Option<Prices>,
    /// How a streaming response may extend its reservation.
    pub stream_plan: Option<StreamPlan>,
    /// It is an LLM call: its response's usage is metered.
    pub llm: bool,
    /// The provider whose call the destination's path is (its API reads the request and writes
    /// the response), looked up once for the admission and the response's meter.
    pub call_api: Option<&'static dyn Provider>,
    /// An HTTP/2 stream's slots (see [`Effects::count_stream`]), held until the request ends.
    pub stream: Option<StreamSlots>,
}

/// What an admitted tunnel carries.
#[derive(Debug)]
pub struct TunnelGrant {
    /// Who opened it.
    pub identity: ResolvedIdentity,
    /// Intercepted, or relayed as it is.
    pub mode: TunnelMode,
    /// The tenant's tunnel slot, held while the tunnel is open.
    pub slot: Option<TenantSlot>,
    /// The tunnel's client connection, counted against its tenant.
    pub connection: Option<TenantSlot>,
    /// The minter for an intercepted tunnel's leaf.
    pub minter: Option<Arc<LeafMinter>>,
}

/// The side effects of admission: reserving, counting, reading, resolving. The proxy's are
/// real; `policy explain` decides with [`DecideOnly`], which changes nothing.
#[async_trait]
pub trait Effects: Send + Sync {
    /// The static configuration.
    fn config(&self) -> &StaticConfig;
    /// Reserves the record's audit slot before anything is decided (`None`: nothing is
    /// recorded); `tenant` names a refusal's tenant when the connection alone says it.
    fn reserve_audit(&self, tenant: Option<&TenantId>) -> Result<Option<AuditSlot>, Deny>;
    /// Refuses a tenant whose audit partition cannot be written.
    fn admit_tenant(&self, slot: &mut Option<AuditSlot>, tenant: &TenantId) -> Result<(), Deny>;
    /// Counts a client connection against its tenant (at most once per connection). Returns
    /// the slot when it is not kept on the connection itself (a tunnel's).
    fn count_connection(
        &self,
        connection: Option<&ConnFacts>,
        tenant: &TenantId,
    ) -> Result<Option<TenantSlot>, Deny>;
    /// Counts an HTTP/2 stream (inside `tunnel`, an intercepted one) as a connection of its
    /// tenant and of the tunnel's listener, for as long as the request holds the slots.
    ///
    /// SECURITY (cost axis): each stream holds an upstream connection of its own (upstream
    /// calls are HTTP/1.1), so a client with a hundred streams on each tunnel would otherwise
    /// hold a hundred times the connections, descriptors and memory its caps allow, and take
    /// them from every other tenant.
    fn count_stream(
        &self,
        tunnel: Option<&Tunnel>,
        tenant: &TenantId,
    ) -> Result<Option<StreamSlots>, Deny>;
    /// Records a request of a signed run (`run_started` on its first); refuses a closed run.
    async fn sight_run(&self, tenant: &TenantContext, leeway: Duration) -> Result<(), Deny>;
    /// Whether the shared revocation list (beside the snapshot's file) names token id `jti`.
    fn revoked(&self, _jti: &str) -> Result<bool, Deny> {
        Ok(false)
    }
    /// Reads a request's whole body from its connection, held against `tenant`'s share of the
    /// body memory.
    async fn read_body(
        &self,
        session: &mut Session,
        tenant: &TenantId,
    ) -> Result<Option<(Bytes, Option<BodyHold>)>, Deny>;
    /// Takes one of the tenant's tunnel slots.
    fn open_tunnel(&self, tenant: &TenantId, max: u32) -> Result<Option<TenantSlot>, Deny>;
    /// Resolves and checks a destination (the SSRF guard): the one address that may be dialed.
    /// For a captured connection, `original` is the address its client dialed: `host` must
    /// resolve to it, and it is the address checked and dialed.
    async fn resolve(
        &self,
        host: &str,
        port: u16,
        exceptions: &[EgressException],
        tenant: &TenantContext,
        original: Option<SocketAddr>,
    ) -> Result<SocketAddr, Deny>;
    /// Reserves a request's charge against its ceilings.
    async fn reserve(&self, plan: &Plan) -> Result<Option<Admission>, Deny>;
    /// Read-only: the refusal a request-rate ceiling among `rate_keys` would give now, when the
    /// limiter knows it without a round trip (see [`crate::limits::LimitBackend::already_over`]).
    fn already_over(&self, _rate_keys: &dyn Fn() -> Vec<crate::limits::LimitKey>) -> Option<Deny> {
        None
    }
    /// The interception CA's leaf minter, when one is configured.
    fn minter(&self) -> Option<Arc<LeafMinter>>;
    /// `tenant`'s access token for its token credential `cred` (minted from `source`): the
    /// cached one while fresh, else one grant to the source's endpoint, resolved and checked
    /// with `exceptions` like any upstream, within `timeout`.
    async fn access_token(
        &self,
        tenant: &TenantContext,
        cred: &Arc<Credential>,
        source: &Arc<TokenSource>,
        exceptions: &[EgressException],
        timeout: Duration,
    ) -> Result<SecretValue, TokenUnavailable>;
    /// Every secret a response from `host` may echo to `tenant`, under `snapshot` (see
    /// [`crate::credentials::echoes`]): `None` when nothing of the tenant's is or lately was
    /// bound there, or when nothing is forwarded (`policy explain`).
    fn echoes(
        &self,
        _snapshot: &Snapshot,
        _tenant: &TenantId,
        _host: &str,
    ) -> Option<Arc<Patterns>> {
        None
    }
    /// Holds a request that a marked permit allowed until a person of its tenant decides (see
    /// [`crate::approvals`]); `session` is watched for the agent going away.
    async fn hold(
        &self,
        ask: HoldAsk<'_>,
        session: Option<&mut Session>,
    ) -> Result<Granted, HoldEnd>;
    /// Judges `who` again, as a fresh request presenting the same credential would be judged
    /// now (see [`super::lapse::judge`]): after a hold, whose wait may have outlasted the token,
    /// or seen it revoked, its key pulled or its workload removed.
    fn still_accepted(&self, who: &ResolvedIdentity) -> Result<(), Deny>;
    /// The configuration now, when it is another than `admitted` (a reload since): what a
    /// request that waited is decided again under. `None` when it is the same.
    fn reloaded_since(&self, admitted: &Snapshot) -> Option<Arc<Snapshot>>;
    /// Unix second now (a described request says when it arrives).
    fn now(&self) -> i64 {
        unix_now_i64()
    }
}

/// Runs the chain for `ask` by `caller`. The trail learns what the record needs as the chain
/// goes, refused or not; on success the request carries the [`Admitted`] value.
pub async fn admit(
    fx: &dyn Effects,
    snapshot: Arc<Snapshot>,
    caller: Caller<'_>,
    ask: Ask<'_>,
    trail: &mut Trail,
    observer: &mut dyn Observer,
) -> Result<Admitted, Deny> {
    // Known before anything is decided, so every refusal's record names it.
    let method = match &ask {
        Ask::Http { source, .. } => &source.header().method,
        Ask::Connect { header, .. } => &header.method,
    };
    trail.method = method.as_str().to_owned();
    // An unauditable request is never served. Its refusal names the tenant when the connection
    // alone says which it is (nothing presented is read for it).
    let fixed = FixedIdentity::of(&caller);
    trail.slot = match fx.reserve_audit(fixed.as_ref().map(FixedIdentity::tenant)) {
        Ok(slot) => slot,
        Err(deny) => {
            if let Some(fixed) = fixed {
                let tenant = TenantContext::new(fixed.resolved(), trail.request_id.clone(), None);
                trail.tenant = Some(Arc::new(tenant));
            }
            return Err(deny);
        }
    };
    let (who, tenant, refusal) = {
        let (header, ssl) = match &ask {
            Ask::Http { source, .. } => (source.header(), source.ssl()),
            Ask::Connect { header, ssl, .. } => (*header, *ssl),
        };
        let (who, refusal) = identify(caller, header, ssl, &snapshot)?;
        // Two `traceparent` headers are no trace context (W3C: invalid), not the first one.
        let mut sent = header.headers.get_all(&TRACEPARENT).iter();
        let traceparent = match (sent.next(), sent.next()) {
            (Some(one), None) => Some(one.as_bytes()),
            _ => None,
        };
        let tenant = TenantContext::new(who.clone(), trail.request_id.clone(), traceparent);
        (who, Arc::new(tenant), refusal)
    };
    trail.tenant = Some(tenant.clone());
    trail.mark("identity");
    // One tenant's unwritable partition refuses that tenant only.
    fx.admit_tenant(&mut trail.slot, &tenant.tenant)?;
    // SECURITY: a revoked token, a lapsed client certificate, and a tunnel whose identity is
    // no longer accepted, are refused here, once the tenant is known, so the refusal is audited
    // in the partition of the tenant whose token (certificate, tunnel) it was (the signature
    // verified: the tenant is the issuer's word, not the agent's).
    if let Some(deny) = refusal {
        return Err(deny);
    }
    // Both revocation lists are checked on every request, tunnels' inner ones included, so a
    // revocation reaches tokens already in use: the file's at a reload, the shared one within
    // a refresh.
    if let Some(jti) = who.token.as_ref().and_then(|t| t.jti.as_deref()) {
        let in_file = snapshot.tokens.as_ref().is_some_and(|v| v.is_revoked(jti));
        if in_file || fx.revoked(jti)? {
            return Err(IdentityError::Revoked(Box::new(who)).into());
        }
    }
    let mut stream = None;
    let connection = match &ask {
        // A request's connection is counted at its first identified request; a tunnel's for as
        // long as the tunnel is open; an HTTP/2 stream's for as long as it is in flight.
        Ask::Http {
            source: BodySource::Session(session),
            tunnel,
        } => match front_conn(session) {
            Some(conn) => fx.count_connection(Some(conn.context()), &tenant.tenant)?,
            None => {
                stream = fx.count_stream(*tunnel, &tenant.tenant)?;
                None
            }
        },
        Ask::Http { .. } => None,
        Ask::Connect { .. } => fx.count_connection(None, &tenant.tenant)?,
    };
    // A signed run's first request starts it (audited once across replicas); a closed run's
    // requests, and tunnels (an opaque one carries no request to refuse later), go no further.
    // A request is sighted once its destination is known, so a refusal records where it went.
    if matches!(ask, Ask::Connect { .. }) {
        fx.sight_run(&tenant, snapshot.token_leeway()).await?;
    }
    match ask {
        Ask::Http { source, tunnel } => {
            let mut admitted =
                admit_http(fx, snapshot, tenant, &who, source, tunnel, trail, observer).await?;
            if let Grant::Http(grant) = &mut admitted.grant {
                grant.stream = stream;
            }
            Ok(admitted)
        }
        Ask::Connect {
            host,
            port,
            original,
            ..
        } => {
            let to = (host, port, original);
            admit_connect(fx, snapshot, tenant, who, connection, to, trail).await
        }
    }
}

/// The identity the connection alone gives, without reading anything the request presents: a
/// tunnel's, a listener's bound to one workload and nothing else, one named outright. Borrowed:
/// it is asked of every request, and only a refusal copies it.
enum FixedIdentity<'a> {
    Resolved(&'a ResolvedIdentity),
    Bound(&'a identity::ListenerBinding),
}

impl FixedIdentity<'_> {
    fn of<'a>(caller: &'a Caller<'_>) -> Option<FixedIdentity<'a>> {
        match caller {
            Caller::Tunnel(t) => Some(FixedIdentity::Resolved(&t.identity)),
            Caller::Listener(listener) => match (listener.sources.as_slice(), &listener.binding) {
                ([IdentitySourceKind::Binding], Some(bound)) => Some(FixedIdentity::Bound(bound)),
                _ => None,
            },
            Caller::Named(who) => Some(FixedIdentity::Resolved(who)),
        }
    }

    fn tenant(&self) -> &TenantId {
        match self {
            FixedIdentity::Resolved(who) => &who.tenant,
            FixedIdentity::Bound(bound) => &bound.tenant,
        }
    }

    fn resolved(&self) -> ResolvedIdentity {
        match self {
            FixedIdentity::Resolved(who) => (*who).clone(),
            FixedIdentity::Bound(bound) => ResolvedIdentity {
                tenant: bound.tenant.clone(),
                workload: bound.workload.clone(),
                source: IdentitySourceKind::Binding,
                token: None,
                certificate: None,
            },
        }
    }
}

/// Who is calling: a tunnel's identity, re-checked; or what the request (`header`) and its
/// connection (`ssl`) present, verified. With it, a refusal the caller gives once the tenant is
/// known, so that it is audited in the tenant's partition: a revoked token, or a tunnel whose
/// identity is no longer accepted.
fn identify(
    caller: Caller<'_>,
    header: &RequestHeader,
    ssl: Option<&SslDigest>,
    snapshot: &Snapshot,
) -> Result<(ResolvedIdentity, Option<Deny>), Deny> {
    match caller {
        // SECURITY: a tunnel never changes identity; whatever the inner request presents is
        // ignored (and stripped upstream).
        Caller::Tunnel(t) => tunnel_identity(t, snapshot),
        Caller::Listener(listener) => match identity::resolve(
            listener,
            &snapshot.tenants,
            snapshot.tokens.as_ref(),
            Presented::from_request(&header.headers, ssl),
            unix_now(),
        ) {
            Ok(who) => Ok((who, None)),
            Err(IdentityError::Revoked(who)) => {
                let deny = IdentityError::Revoked(who.clone()).into();
                Ok((*who, Some(deny)))
            }
            Err(IdentityError::Lapsed { who, why }) => Ok((*who, Some(Deny::IdentityInvalid(why)))),
            Err(e) => Err(e.into()),
        },
        Caller::Named(who) => Ok((*who, None)),
    }
}

#[allow(clippy::too_many_arguments)]
async fn admit_http(
    fx: &dyn Effects,
    mut snapshot: Arc<Snapshot>,
    tenant: Arc<TenantContext>,
    who: &ResolvedIdentity,
    mut source: BodySource<'_>,
    tunnel: Option<&Tunnel>,
    trail: &mut Trail,
    observer: &mut dyn Observer,
) -> Result<Admitted, Deny> {
    let config = fx.config();
    // A captured connection's requests go where its client dialed, whatever they name.
    let captured = match &source {
        BodySource::Session(s) => front_conn(s).and_then(|c| c.context().original),
        BodySource::Given(..) => None,
    };
    let original = tunnel.and_then(|t| t.original).or(captured);
    let bound = who.source == crate::identity::IdentitySourceKind::Binding;
    // Where it goes, as `snapshot` routes it (its provider declared), noted for the record.
    let destination_under = |snapshot: &Snapshot, source: &BodySource<'_>, trail: &mut Trail| {
        let mut destination = http_destination(
            source.header(),
            (tunnel, captured, bound),
            snapshot,
            config,
            trail,
        )?;
        declared_provider(&mut destination, snapshot);
        trail.destination = Some(destination.clone());
        Ok::<_, Deny>(destination)
    };
    let mut destination = destination_under(&snapshot, &source, trail)?;
    fx.sight_run(&tenant, snapshot.token_leeway()).await?;
    if let Some(t) = tunnel {
        tunnel_still_allowed(&snapshot, &tenant, t, fx.now(), trail)?;
    }

    let mut grant = HttpGrant::default();
    // What in the body makes the call work whose spend no response shows (run in the
    // background, a hosted tool billed per image or container).
    let mut unmetered_body: Option<&'static str> = None;
    // The models a gateway may answer with instead of the body's (its fallback lists).
    let mut fallback_models: Vec<String> = Vec::new();
    let reading = std::time::Instant::now();
    let (body, hold) = match &mut source {
        BodySource::Session(session) => match fx.read_body(session, &tenant.tenant).await? {
            Some((bytes, hold)) => (Some(bytes), hold),
            None => (None, None),
        },
        BodySource::Given(_, body) => (body.take(), None),
    };
    grant.body_hold = hold;
    // SECURITY: a body may take as long as `client_body_timeout` to arrive, at a pace the agent
    // chooses. Nothing was decided yet but where the request goes: a reload meanwhile (a forbid
    // added, a credential unbound) decides it, as it does a fresh request's; an identity that
    // lapsed meanwhile (its token expired or revoked, on this replica's list or the shared one,
    // its certificate expired) and a run closed meanwhile refuse it, as they end a stream (looked
    // at once the body took as long as a stream waits between looks, so a quick body costs
    // nothing more).
    let reloaded = fx.reloaded_since(&snapshot);
    let slow = reading.elapsed() >= super::lapse::RECHECK;
    if reloaded.is_some() || slow {
        fx.still_accepted(who)?;
    }
    if let Some(now) = reloaded {
        snapshot = now;
        destination = destination_under(&snapshot, &source, trail)?;
        if let Some(t) = tunnel {
            tunnel_still_allowed(&snapshot, &tenant, t, fx.now(), trail)?;
        }
    }
    if slow {
        fx.sight_run(&tenant, snapshot.token_leeway()).await?;
    }
    // A tenant already over its request rate is refused now, before its body is decoded and
    // decided: a flood of requests that will be refused anyway costs little (and the connection
    // stays usable, its body having been read). Nothing is consumed; a request let through here
    // is checked in full last, as before.
    let now = fx.now();
    let rate_keys = || crate::limits::plan::rate_keys(&snapshot.tenants, &tenant, now);
    if let Some(deny) = fx.already_over(&rate_keys) {
        return Err(deny);
    }
    // Looked up once, after the early refusal (a flood's requests skip it).
    grant.call_api = registry::for_destination(&destination);
    let header = source.header();
    let hosts = &config.egress.hosts;
    if let Some(body) = body {
        let to = body_destination(&snapshot, &destination, hosts);
        let read = body::classify(body, &header.headers, to, config.limits.max_body_bytes)?;
        // The decoded body is what the request keeps: held against the body memory as such.
        if let Some(hold) = grant.body_hold.as_mut() {
            hold.grow_to(&tenant.tenant, read.body.len() as u64)?;
        }
        trail.model = read.llm.model;
        trail.other_models = read.llm.other_models;
        // SECURITY: only a ceiling field the call's own API reads caps its output (see
        // `CeilingFields::read_by`); a call that sets none of those is reserved and guarded as
        // one that sets no ceiling, whatever other APIs' fields it carries.
        let own_api = grant.call_api;
        // A ceiling of 0 caps nothing: OpenAI refuses it, Ollama takes it for no limit.
        grant.max_output_tokens = read
            .llm
            .max_output_tokens
            .filter(|&cap| cap > 0)
            .filter(|_| own_api.is_some_and(|api| read.llm.ceiling_fields.read_by(api)));
        grant.choices = read.llm.choices;
        unmetered_body = if read.llm.background {
            Some("a background response")
        } else {
            read.llm.billed_tool
        };
        fallback_models = read.llm.fallback_models;
        grant.body_decoded = read.decoded;
        trail.body_sha256 = Some(crate::lower_hex::of(&Sha256::digest(&read.body)));
        trail.bytes_in = read.body.len() as u64;
        grant.body = Some(BufferedBody(read.body));
    }
    // The model the call is planned (reserved and priced) by, when it is not the one policy sees.
    let mut planned_with: Option<Option<String>> = None;
    // SECURITY: a provider that names the model in the path (an Azure OpenAI deployment, Gemini,
    // Bedrock) serves that model whatever the body names, so the agent could name a cheaper or
    // allowed one there: the path's model (an Azure deployment's mapped model, else its name)
    // is what policy and prices see, and the body's is asked only when the path names none.
    if let Some(model) = snapshot.tenants.llm_providers.model_for(&destination) {
        trail.model = Some(model);
    } else if let Some(model) = registry::model_from_path(&destination.upstream_path) {
        trail.model = Some(model);
    } else if let Some(model) = registry::model_addressed(&destination) {
        // For policy and the record only: such a request is work the proxy does not meter
        // (a job, a prediction) or a free one (a token count), planned as before, by what its
        // body names.
        planned_with = Some(trail.model.replace(model));
    } else if let Some(named) =
        registry::model_from_query(&destination.upstream_path).map_err(Deny::BadRequest)?
    {
        trail.model = Some(match named {
            registry::QueryModel::Model(model) => model,
            registry::QueryModel::Deployment(deployment) => snapshot
                .tenants
                .llm_providers
                .deployment_model(&destination, deployment),
        });
    } else if registry::body_names_deployment(&destination.upstream_path) {
        // Azure OpenAI's v1 and Responses APIs take the body's `model` for a deployment: it is
        // the model its `deployments` entry maps it to, as one in the path is.
        if let Some(deployment) = trail.model.take() {
            let providers = &snapshot.tenants.llm_providers;
            trail.model = Some(providers.deployment_model(&destination, deployment));
        }
    }
    // A job that names its model in a field of its API's own (Bedrock's batch inference
    // `modelId`, a tuning job's `baseModel`), for policy and the record as a path's is.
    // SECURITY: beside a `model` naming another (a decoy an API ignores), which one runs is the
    // server's choice: refused, as two model fields of one body are.
    let body = grant.body.as_ref().map(|b| b.0.as_ref());
    if let Some(job) = body.and_then(|b| registry::job_model(&destination, b)) {
        match trail.model.as_deref() {
            Some(named) if named != job => {
                return Err(Deny::BadRequest(format!(
                    "the body names two models, `{named}` and `{job}`; which one a server uses \
                     is its choice"
                )));
            }
            Some(_) => {}
            None => {
                planned_with = Some(None);
                trail.model = Some(job);
            }
        }
    }
    // A model that searches on every call (billed per search, never reported) is unmetered
    // work, whichever of the call's models it is: the path's, the body's, or one a gateway may
    // answer with instead.
    if unmetered_body.is_none() {
        unmetered_body = trail
            .model
            .iter()
            .chain(&trail.other_models)
            .find_map(|m| crate::usage::providers::request::billed_model(m));
    }

    // The method is copied: the questions outlive the borrow of the request a hold needs.
    let method = header.method.clone();
    let asking = Asking::new(
        &snapshot,
        &tenant,
        &destination,
        &method,
        trail.model.as_deref(),
        fx.now(),
    );
    observer.facts(&asking.facts);
    let (decision, shadow) = asking.http();
    let decision = with_other_models(&asking, decision, &trail.other_models, fx.now());
    let refusal = (!decision.allowed).then(|| PolicyRefusal::of(&decision));
    // (The fields, not `decided` and `mark`: `asking` still borrows the trail's model.)
    trail.decision = Some(decision);
    trail.policy_version = snapshot.policy.version(&tenant.tenant);
    trail.shadow = shadow;
    trail.phases.push(("policy", std::time::Instant::now()));
    if let Some(refusal) = refusal {
        return Err(Deny::PolicyDenied(refusal));
    }
    // The address is resolved and checked only for an authorized request (a denied caller
    // cannot probe names), and exactly this address is dialed (no second lookup).
    let mut addr = fx
        .resolve(
            &destination.host,
            destination.port,
            egress_exceptions(&snapshot, &tenant.tenant),
            &tenant,
            original,
        )
        .await?;
    let upgrade = header.headers.contains_key(http::header::UPGRADE);
    let record = McpTrail {
        decision: &mut trail.decision,
        shadow: &mut trail.shadow,
        exchange: &mut trail.mcp,
    };
    let mcp = McpAsk {
        destination: &destination,
        addr,
        hosts,
        headers: &header.headers,
        body: grant.body.as_ref().map(|b| b.0.as_ref()),
        upgrade,
    };
    decide_mcp(&snapshot, &asking, &mcp, record, observer)?;
    // Credentials are decided now (a refused one refuses at once), and the permits that allowed
    // their use may ask for approval as much as the `http` and MCP ones.
    let mut uses = CredentialPermits::new(observer);
    let named = &mut trail.credentials;
    let applied = decide_credentials(fx, &asking, header, &grant, named, &mut uses).await?;
    let credential_permits = uses.into_ids();
    let call = CallFacts {
        model: match &planned_with {
            Some(body_model) => body_model.as_deref(),
            None => trail.model.as_deref(),
        },
        fallback_models: &fallback_models,
        max_output_tokens: grant.max_output_tokens,
        choices: grant.choices,
        body_bytes: trail.bytes_in,
        mcp_tool_calls: trail.mcp.as_ref().map(|m| m.tools_called.len() as u64),
        work: call_work(
            &destination,
            &header.method,
            upgrade,
            grant.call_api,
            unmetered_body,
        ),
    };
    let mut plan =
        crate::limits::plan::plan(&snapshot.tenants, &tenant, &destination, call, fx.now())?;
    grant.llm = plan.kind == crate::limits::CallKind::Llm;
    let allowed_by = trail
        .decision
        .iter()
        .flat_map(|d| d.policy_ids.iter())
        .chain(credential_permits.iter());
    // The configuration a reload brought while the request waited for approval, if one did.
    let mut reloaded = None;
    let applied = match snapshot.policy.approval_need(&tenant.tenant, allowed_by) {
        None => applied,
        Some(need) if need.shadow => {
            crate::metrics::METRICS
                .approval_outcomes
                .with_label_values(&[tenant.tenant.as_str(), "would_hold"])
                .inc();
            trail.approval = Some(ApprovalFields {
                hold_id: None,
                outcome: "would_hold",
                approver: None,
                policy_ids: need.policy_ids,
            });
            applied
        }
        Some(need) => {
            let held = held_request(
                header,
                &destination,
                trail,
                &applied,
                plan.charge.cost_micros,
            );
            // SECURITY: nothing substituted waits with the request; the credentials are decided
            // and substituted again once it is approved (a credential that expired meanwhile
            // refuses then).
            drop(applied);
            let presented = header
                .headers
                .get(crate::approvals::HOLD_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            let ask = HoldAsk {
                tenant: &tenant,
                need: &need,
                request: held,
                presented,
            };
            let session = match &mut source {
                BodySource::Session(session) => Some(&mut **session),
                BodySource::Given(..) => None,
            };
            let held = fx.hold(ask, session).await;
            trail.approval = Some(approval_fields(&need, &held));
            held.map_err(deny_for_hold)?;
            // SECURITY: the wait (up to a day) may have outlasted what admitted the request: its
            // token expired or was revoked, its key pulled, its workload removed. It is judged
            // again as a fresh request would be before any secret is put into it.
            fx.still_accepted(who)?;
            // Its run may have been closed during the wait (on any replica).
            fx.sight_run(&tenant, snapshot.token_leeway()).await?;
            // A reload during the wait: the request is decided again under the configuration
            // now, every question a fresh request is asked (its `http` question, the address
            // with the egress exceptions now, an MCP server's items, every credential use with
            // the credentials now, and its ceilings below), so a permit withdrawn, a forbid
            // added, an exception, credential or allowance pulled meanwhile holds. Where it
            // goes stays what the approver was shown.
            let now = fx.reloaded_since(&snapshot);
            let asking_now = now.as_deref().map(|now| {
                Asking::new(
                    now,
                    &tenant,
                    &destination,
                    &method,
                    trail.model.as_deref(),
                    fx.now(),
                )
            });
            // The tunnel it came in may have been withdrawn meanwhile (a `connect` forbid).
            if let (Some(now), Some(t)) = (now.as_deref(), tunnel) {
                if let Some(refused) = tunnel_connect_refused(now, &tenant, t, fx.now()) {
                    return Err(tunnel_withdrawn(refused, now, trail));
                }
            }
            if let Some(asking_now) = &asking_now {
                let (decision, _) = asking_now.http();
                let decision =
                    with_other_models(asking_now, decision, &trail.other_models, fx.now());
                if !decision.allowed {
                    let refusal = PolicyRefusal::of(&decision);
                    if let Some(now) = now.as_deref() {
                        trail.decided(decision, now);
                    }
                    return Err(Deny::PolicyDenied(refusal));
                }
                if let Some(now) = now.as_deref() {
                    addr = fx
                        .resolve(
                            &destination.host,
                            destination.port,
                            egress_exceptions(now, &tenant.tenant),
                            &tenant,
                            original,
                        )
                        .await?;
                    trail.mcp = None;
                    let record = McpTrail {
                        decision: &mut trail.decision,
                        shadow: &mut trail.shadow,
                        exchange: &mut trail.mcp,
                    };
                    let mcp = McpAsk {
                        destination: &destination,
                        addr,
                        hosts,
                        headers: &source.header().headers,
                        body: grant.body.as_ref().map(|b| b.0.as_ref()),
                        upgrade,
                    };
                    decide_mcp(now, asking_now, &mcp, record, observer)?;
                }
            }
            let header = source.header();
            let named = &mut trail.credentials;
            let asking = asking_now.as_ref().unwrap_or(&asking);
            let applied = decide_credentials(fx, asking, header, &grant, named, observer).await?;
            if let Some(now) = &now {
                // Its host may be an LLM provider's now: what it is is asked again too.
                let mut there = destination.clone();
                declared_provider(&mut there, now);
                let call_api = registry::for_destination(&there);
                let call = CallFacts {
                    work: call_work(&there, &method, upgrade, call_api, unmetered_body),
                    ..call
                };
                plan = crate::limits::plan::plan(&now.tenants, &tenant, &there, call, fx.now())?;
            }
            reloaded = now;
            applied
        }
    };
    let snapshot = reloaded.unwrap_or(snapshot);
    // Every secret a response from there may echo to this tenant, used or not, now or lately.
    let mut applied = applied;
    applied.echoes = fx.echoes(&snapshot, &tenant.tenant, &destination.host);
    substitute(applied, &mut grant, trail, &tenant);
    // So that every streamed call can be metered, ask a stream for its usage where its provider
    // reports it only when asked (and take the event out again before the agent sees it).
    if grant.llm {
        if let Some(body) = &grant.body {
            if let Some((new, by)) =
                registry::request_stream_usage(&destination.upstream_path, &body.0)
            {
                grant.body = Some(BufferedBody(Bytes::from(new)));
                grant.usage_requested = Some(by);
            }
        }
    }
    // What is sent is held, as it now is (credentials substituted, usage asked for).
    if let (Some(hold), Some(body)) = (grant.body_hold.as_mut(), &grant.body) {
        hold.grow_to(&tenant.tenant, body.0.len() as u64)?;
    }
    // Ceilings last: a request refused for any other reason does not use up the allowance.
    grant.prices = plan.prices;
    if !plan.keys.is_empty() {
        grant.limits = fx.reserve(&plan).await?;
        grant.stream_plan = plan.stream;
    }
    trail.mark("limits");
    // Every check passed: only now does the request carry proof of authorization.
    Ok(Admitted {
        tenant,
        identity: who.clone(),
        snapshot,
        permit: Permit {
            destination,
            addr: Some(addr),
        },
        grant: Grant::Http(grant),
    })
}

/// What the MCP check reads of a request.
struct McpAsk<'a> {
    destination: &'a Destination,
    /// The address the egress guard checked.
    addr: SocketAddr,
    hosts: &'a std::collections::HashMap<String, Vec<std::net::IpAddr>>,
    headers: &'a http::HeaderMap,
    body: Option<&'a [u8]>,
    upgrade: bool,
}

/// An MCP server (recognized by its destination or by the address just checked, however it was
/// reached) has its tools, resources and prompts decided one by one, on the body as the agent
/// wrote it (before any credential is substituted into it); it is never upgraded to.
fn decide_mcp(
    snapshot: &Snapshot,
    asking: &Asking<'_>,
    ask: &McpAsk<'_>,
    record: McpTrail<'_>,
    observer: &mut dyn Observer,
) -> Result<(), Deny> {
    let Some(server) = snapshot
        .tenants
        .mcp
        .server_for(ask.destination, Some(ask.addr), ask.hosts)
    else {
        return Ok(());
    };
    // A session id must be one sealed for this workload and server: no request runs in a
    // session another tenant or workload opened.
    let binding = snapshot.tenants.mcp.session_key.binding(
        asking.tenant.tenant.as_str(),
        asking.tenant.workload.as_str(),
        &server.name,
    );
    let session = match crate::mcp::session::open_request(
        &binding,
        ask.headers,
        &ask.destination.upstream_path,
    ) {
        Ok(opened) => opened,
        Err(unknown) => {
            *record.exchange = Some(McpExchange::refused(&server.name));
            return Err(Deny::McpSessionUnknown(unknown));
        }
    };
    let exchange = McpTrail {
        decision: &mut *record.decision,
        shadow: &mut *record.shadow,
        exchange: &mut *record.exchange,
    };
    asking.mcp(&server.name, ask.upgrade, ask.body, exchange, observer)?;
    if let Some(exchange) = record.exchange.as_mut() {
        exchange.session = session;
    }
    Ok(())
}

fn header_bytes(req: &RequestHeader) -> usize {
    req.raw_path().len()
        + req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
}

/// The effects of `tenant-proxy policy explain`: it decides exactly as the proxy would and
/// changes nothing. No audit slot, no counters, no run record; the body is the one given; a
/// destination is not resolved (explain never dials), so an address-only match of an MCP
/// server is not made; ceilings are planned (an unpriced model is refused) but not reserved.
#[derive(Debug)]
pub struct DecideOnly<'a> {
    /// The static configuration explain loaded.
    pub config: &'a StaticConfig,
    /// When the described request arrives (unix second).
    pub now: i64,
    /// The interception CA's leaf minter, when `[intercept]` is configured (never used to mint:
    /// its name constraints decide whether a tunnel could be intercepted).
    pub minter: Option<Arc<LeafMinter>>,
}

#[async_trait]
impl Effects for DecideOnly<'_> {
    fn config(&self) -> &StaticConfig {
        self.config
    }

    fn reserve_audit(&self, _: Option<&TenantId>) -> Result<Option<AuditSlot>, Deny> {
        Ok(None)
    }

    fn admit_tenant(&self, _: &mut Option<AuditSlot>, _: &TenantId) -> Result<(), Deny> {
        Ok(())
    }

    fn count_connection(
        &self,
        _: Option<&ConnFacts>,
        _: &TenantId,
    ) -> Result<Option<TenantSlot>, Deny> {
        Ok(None)
    }

    fn count_stream(&self, _: Option<&Tunnel>, _: &TenantId) -> Result<Option<StreamSlots>, Deny> {
        Ok(None)
    }

    async fn sight_run(&self, _: &TenantContext, _: Duration) -> Result<(), Deny> {
        Ok(())
    }

    async fn read_body(
        &self,
        _: &mut Session,
        _: &TenantId,
    ) -> Result<Option<(Bytes, Option<BodyHold>)>, Deny> {
        Ok(None)
    }

    fn open_tunnel(&self, _: &TenantId, _: u32) -> Result<Option<TenantSlot>, Deny> {
        Ok(None)
    }

    async fn resolve(
        &self,
        _: &str,
        port: u16,
        _: &[EgressException],
        _: &TenantContext,
        _: Option<SocketAddr>,
    ) -> Result<SocketAddr, Deny> {
        // Never dialed: explain builds no connection. The unspecified address matches no
        // configured server address.
        Ok(SocketAddr::from(([0, 0, 0, 0], port)))
    }

    async fn reserve(&self, _: &Plan) -> Result<Option<Admission>, Deny> {
        Ok(None)
    }

    fn minter(&self) -> Option<Arc<LeafMinter>> {
        self.minter.clone()
    }

    async fn access_token(
        &self,
        _: &TenantContext,
        _: &Arc<Credential>,
        _: &Arc<TokenSource>,
        _: &[EgressException],
        _: Duration,
    ) -> Result<SecretValue, TokenUnavailable> {
        // Explain obtains no token: the decision is the same whatever the token is, and
        // nothing is forwarded.
        Ok(SecretValue::new(b"<access token>".to_vec()))
    }

    async fn hold(&self, _: HoldAsk<'_>, _: Option<&mut Session>) -> Result<Granted, HoldEnd> {
        // Explain holds nothing: it answers as the proxy would once a person approved, and the
        // trail names the approval as `required` (no hold id).
        Ok(Granted {
            hold_id: String::new(),
            approver: None,
        })
    }

    fn still_accepted(&self, _: &ResolvedIdentity) -> Result<(), Deny> {
        // Explain holds nothing, so nothing waits: the identity was judged a moment ago.
        Ok(())
    }

    fn reloaded_since(&self, _: &Snapshot) -> Option<Arc<Snapshot>> {
        None
    }

    fn now(&self) -> i64 {
        self.now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a body asks that no response shows (run in the background, a billed hosted tool)
    /// makes unmetered work of a call, on a path the proxy knows and on one of an LLM API it
    /// does not know (a call all the same when its body names a model); other requests stay
    /// what they are.
    #[test]
    fn a_bodys_unmetered_work_is_unmetered_on_known_and_unknown_call_paths() {
        let post = http::Method::POST;
        let what = "the image generation tool (billed per image)";
        let why = Some(what);
        for path in ["/v1/responses", "/v1/responses/compact"] {
            let d = Destination::https_for_test("api.openai.com", path, None);
            let api = registry::for_destination(&d);
            assert_eq!(
                call_work(&d, &post, false, api, why),
                Work::Unmetered(what),
                "{path}"
            );
            assert_ne!(
                call_work(&d, &post, false, api, None),
                Work::Unmetered(what),
                "{path}"
            );
        }
        let d = Destination::https_for_test("tools.example", "/v1/run", None);
        assert_eq!(
            call_work(&d, &post, false, registry::for_destination(&d), why),
            Work::Other
        );
    }
}
