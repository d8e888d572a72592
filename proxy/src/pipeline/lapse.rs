//! Long-lived relays judged again while they last.
//!
//! A request is judged once, when it arrives, and a tunnel's inner requests each under the
//! tunnel's identity ([`super::admit`]). Three things relay bytes with no request to judge: an
//! opaque tunnel (`connect_opaque`) and an upgraded connection (a WebSocket), each for as long
//! as both sides keep it open, and a response that streams for long (an LLM's SSE stream, an
//! MCP server's event stream, which lasts as long as its session). A response is judged again
//! as its chunks pass ([`Recheck`]: nothing passes between chunks, so nothing reaches a client
//! whose identity lapsed). The others, and a streamed response of a signed run, are watched:
//! [`watch`] completes once a fresh
//! request presenting the identity the relay was opened with would be refused ([`judge`]: its
//! token revoked, in the file or the shared list, or expired past the leeway; its key pulled or
//! replaced; the token settings changed so that it no longer passes; its workload or tenant
//! removed; its client certificate expired or no longer trusted), and the relay then ends, its
//! record saying why ([`Ended`]). It is judged at once, then every [`RECHECK`]: a reload or a
//! revocation reaches an open relay within a second, and so does its token's expiry. A relay
//! of a signed run also ends once the run is closed (`tenant-proxy run close`, on any replica
//! sharing the limiter): a fresh request of the run would be refused `run_closed`. A limiter
//! that does not answer leaves the run's relays open (the revocation list, read from the same
//! Redis, ends token relays once it is stale and the limiter fails closed). A relay's own
//! questions ([`Redecide`]: its policy questions, the egress guard on the address it dialed,
//! whether an opaque tunnel would be intercepted now) are asked again after every reload and
//! every [`REDECIDE`].

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::admit::Effects;
use super::decide::{self, with_other_models, Asking};
use super::Shared;
use crate::context::TenantContext;
use crate::error::Deny;
use crate::identity::{self, IdentityError, ResolvedIdentity};
use crate::policy::ConnectQuestion;
use crate::snapshot::Snapshot;
use crate::target::Destination;
use crate::usage::providers::registry::{self, Work};

/// How often an open relay's identity is judged again: a look-up in the current snapshot and
/// revocation lists, once a second per relay.
pub const RECHECK: Duration = Duration::from_secs(1);

/// Why the proxy ended a relay, as its record's `ended` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Its token's id was revoked (`revoked_jtis_file`, or the shared list).
    TokenRevoked,
    /// Its token expired (its `exp` plus the leeway passed).
    TokenExpired,
    /// Its client certificate expired, or the trust bundle no longer verifies it.
    CertificateLapsed,
    /// The configuration no longer accepts it: its key pulled or replaced, the token settings
    /// changed, its tenant or workload removed, tokens no longer accepted.
    IdentityWithdrawn,
    /// The shared revocation list could not be read for too long, and the limiter fails closed:
    /// a fresh request with the token would be refused (`limiter_unavailable`).
    RevocationsUnavailable,
    /// Its signed run was closed (`tenant-proxy run close`).
    RunClosed,
    /// The policy no longer allows it: its own question (`connect` and `connect_opaque` for an
    /// opaque tunnel, `http` for a WebSocket), asked again after a reload, is refused.
    PolicyWithdrawn,
    /// The egress guard refuses the address it dialed now: the exception that let it reach a
    /// private address was withdrawn.
    EgressWithdrawn,
    /// An opaque tunnel that would be intercepted now (its host became an MCP server's, an
    /// LLM API's under a token or cost ceiling, or one the tenant's credentials are bound to):
    /// an open tunnel cannot become one, so it ends and the client's next is intercepted.
    InterceptionRequired,
    /// A WebSocket the proxy cannot meter, while a token or cost ceiling applies now.
    Unmetered,
    /// An intercepted tunnel whose client's TLS handshake failed (most often: the client does
    /// not trust the proxy's CA), so nothing went through it.
    ClientTlsFailed,
}

impl Ended {
    /// The record's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::TokenRevoked => "token_revoked",
            Ended::TokenExpired => "token_expired",
            Ended::CertificateLapsed => "certificate_lapsed",
            Ended::IdentityWithdrawn => "identity_withdrawn",
            Ended::RevocationsUnavailable => "revocations_unavailable",
            Ended::RunClosed => "run_closed",
            Ended::PolicyWithdrawn => "policy_withdrawn",
            Ended::EgressWithdrawn => "egress_withdrawn",
            Ended::InterceptionRequired => "interception_required",
            Ended::Unmetered => "unmetered",
            Ended::ClientTlsFailed => "client_tls_failed",
        }
    }
}

/// An identity no longer accepted: why, and the refusal a fresh request with it would get (the
/// relay's record carries its code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lapse {
    /// Why.
    pub ended: Ended,
    /// The refusal.
    pub deny: Deny,
    /// When a policy withdrew the relay: the decision that did, and the version of the policy
    /// set that made it (the record names them, not the permit that admitted the relay).
    pub withdrawn_by: Option<Box<(crate::policy::Decision, Option<Arc<str>>)>>,
}

impl Lapse {
    /// Ended for `ended`, refused with `deny` (no policy withdrew it).
    fn new(ended: Ended, deny: Deny) -> Self {
        Self {
            ended,
            deny,
            withdrawn_by: None,
        }
    }
}

/// Judges `who` (the identity a relay, or a held request, was admitted with) as a fresh request
/// presenting the same credential would be judged now: [`identity::recheck`] against the
/// current snapshot (keys, token settings, the revocation file, workloads; expiry with the
/// leeway; the client certificate), then the shared revocation list (`revoked`). No signature
/// is verified again.
pub fn judge(
    snapshot: &Snapshot,
    revoked: &dyn Fn(&str) -> Result<bool, Deny>,
    who: &ResolvedIdentity,
    now_unix: u64,
) -> Result<(), Lapse> {
    if let Err(e) = identity::recheck(who, &snapshot.tenants, snapshot.tokens.as_ref(), now_unix) {
        let ended = match &e {
            IdentityError::Revoked(_) => Ended::TokenRevoked,
            _ if who.token.as_ref().is_some_and(|t| {
                now_unix > identity::token::accepted_until(t.expires_at, snapshot.token_leeway())
            }) =>
            {
                Ended::TokenExpired
            }
            _ if who
                .certificate
                .as_ref()
                .is_some_and(|c| c.still_valid(now_unix).is_err()) =>
            {
                Ended::CertificateLapsed
            }
            _ => Ended::IdentityWithdrawn,
        };
        let deny = match e {
            IdentityError::Invalid(why) => Deny::IdentityInvalid(format!(
                "the identity this connection was opened with is no longer accepted ({why})"
            )),
            e => e.into(),
        };
        return Err(Lapse::new(ended, deny));
    }
    if let Some(jti) = who.token.as_ref().and_then(|t| t.jti.as_deref()) {
        match revoked(jti) {
            Ok(false) => {}
            Ok(true) => {
                return Err(Lapse::new(
                    Ended::TokenRevoked,
                    IdentityError::Revoked(Box::new(who.clone())).into(),
                ))
            }
            // SECURITY: as a fresh request with the token is refused while the list is stale
            // (and the limiter fails closed), so is the relay: a revocation made meanwhile
            // would go unseen.
            Err(deny) => return Err(Lapse::new(Ended::RevocationsUnavailable, deny)),
        }
    }
    Ok(())
}

/// [`judge`] with the proxy's current snapshot and shared revocation list.
pub fn judge_now(shared: &Shared, who: &ResolvedIdentity) -> Result<(), Lapse> {
    let snapshot = shared.snapshot.load();
    let revoked = |jti: &str| shared.revoked(jti);
    judge(&snapshot, &revoked, who, crate::clock::unix_now())
}

/// When a response's identity is next judged, as its body passes, and, for a streamed response
/// of a signed run, the [`watch`] running beside it.
///
/// SECURITY: a stream (an LLM's SSE answer, an MCP server's event stream) would otherwise go on
/// reaching a client whose token was revoked or expired, whose key was pulled, whose workload
/// was removed or whose run was closed, while every fresh request with it is refused.
#[derive(Debug, Default)]
pub struct Recheck {
    due: Option<Instant>,
    watcher: Option<Watcher>,
}

impl Recheck {
    /// Judges `who` ([`judge_now`]) when a [`RECHECK`] has passed since it was last judged (at
    /// first, since `admitted`, the request's start): one clock read for each chunk, a look-up
    /// a second at most. A lapse the watcher saw (its run closed) counts at once. `Ok(true)`
    /// when it was judged now (what else a response looks at once a second goes with it).
    pub fn chunk(
        &mut self,
        shared: &Shared,
        who: &ResolvedIdentity,
        admitted: Instant,
    ) -> Result<bool, Lapse> {
        if let Some(lapse) = self.watcher.as_ref().and_then(|w| w.seen.get()) {
            return Err(lapse.clone());
        }
        let now = Instant::now();
        if now < *self.due.get_or_insert(admitted + RECHECK) {
            return Ok(false);
        }
        self.due = Some(now + RECHECK);
        judge_now(shared, who).map(|()| true)
    }

    /// Watches a streamed response of a signed run: whether the run is closed needs the
    /// limiter (a round trip to a shared one), which a body's chunks cannot wait for, so it is
    /// asked beside them, once a second, for as long as the response lasts.
    pub fn watch_run(&mut self, shared: &Arc<Shared>, who: &ResolvedIdentity) {
        if self.watcher.is_some() || signed_run(who).is_none() {
            return;
        }
        let seen = Arc::new(OnceLock::new());
        let noted = seen.clone();
        let watch = watch(shared.clone(), who.clone(), None);
        let task = tokio::spawn(async move {
            let _ = noted.set(watch.await);
        });
        self.watcher = Some(Watcher {
            seen,
            task: task.abort_handle(),
        });
    }
}

/// A [`watch`] running on its own task beside a response; it ends with the response.
#[derive(Debug)]
struct Watcher {
    seen: Arc<OnceLock<Lapse>>,
    task: tokio::task::AbortHandle,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The signed run `who`'s token names.
fn signed_run(who: &ResolvedIdentity) -> Option<&str> {
    who.token.as_ref().and_then(|t| t.run_id.as_deref())
}

/// Whether `who`'s signed run was closed, as the limiter says now; a limiter that does not
/// answer closes nothing (see the module's note).
async fn run_closed(shared: &Shared, who: &ResolvedIdentity) -> Option<Lapse> {
    let run = signed_run(who)?;
    match shared.runs.is_closed(&who.tenant, run).await {
        Ok(true) => Some(Lapse::new(Ended::RunClosed, Deny::RunClosed)),
        Ok(false) | Err(_) => None,
    }
}

/// How often a relay's own question is asked again when nothing was reloaded: a policy may read
/// the hour and the weekday.
pub const REDECIDE: Duration = Duration::from_secs(60);

/// A relay's own questions (see [`Redecide`]), and the configuration generation they were last
/// answered under.
pub struct Question {
    /// The generation it was last answered under (at first, the relay's admission's).
    pub generation: u64,
    /// The questions.
    pub ask: Redecide,
}

/// A relay's own questions, asked again under the configuration of the moment (see [`watch`]):
/// every check its admission made that a reload can change, but its name's lookup (it stays
/// connected to the address it dialed). `Err` with why it ends and the refusal a fresh request
/// would get.
pub type Redecide = Box<dyn Fn(&Shared, &Snapshot, i64) -> Result<(), Lapse> + Send + Sync>;

/// A relay the policy refuses now.
fn policy_withdrawn(
    decision: crate::policy::Decision,
    snapshot: &Snapshot,
    tenant: &TenantContext,
) -> Lapse {
    Lapse {
        ended: Ended::PolicyWithdrawn,
        deny: Deny::PolicyDenied(crate::error::PolicyRefusal::of(&decision)),
        withdrawn_by: Some(Box::new((
            decision,
            snapshot.policy.version(&tenant.tenant),
        ))),
    }
}

/// The egress guard on the address a relay of `tenant` dialed for `host`, with the tenant's
/// exceptions now.
fn still_reachable(
    shared: &Shared,
    snapshot: &Snapshot,
    tenant: &TenantContext,
    host: &str,
    addr: SocketAddr,
) -> Result<(), Lapse> {
    let exceptions = super::admit::egress_exceptions(snapshot, &tenant.tenant);
    shared
        .egress
        .check_address(host, addr, exceptions)
        .map_err(|refusal| {
            Lapse::new(
                Ended::EgressWithdrawn,
                super::deny_for_refusal(tenant, &refusal),
            )
        })
}

/// An upgraded request (a WebSocket) to `destination`, dialed at `addr`: its `http` question
/// (its other models included), the `connect` question of the tunnel it was opened in, the
/// egress guard on its address, whether its destination is an MCP server now (never upgraded
/// to), and whether a ceiling now refuses work the proxy cannot meter.
pub fn upgrade_again(
    tenant: Arc<TenantContext>,
    destination: Destination,
    method: http::Method,
    model: Option<String>,
    other_models: Vec<String>,
    addr: SocketAddr,
    tunnel: Option<Arc<super::conn::Tunnel>>,
) -> Redecide {
    Box::new(move |shared, snapshot, now| {
        if let Some(t) = &tunnel {
            if let Some((decision, _)) =
                super::admit::tunnel_connect_refused(snapshot, &tenant, t, now)
            {
                return Err(policy_withdrawn(decision, snapshot, &tenant));
            }
        }
        let asking = Asking::new(
            snapshot,
            &tenant,
            &destination,
            &method,
            model.as_deref(),
            now,
        );
        let (decision, _) = asking.http();
        let decision = with_other_models(&asking, decision, &other_models, now);
        if !decision.allowed {
            return Err(policy_withdrawn(decision, snapshot, &tenant));
        }
        still_reachable(shared, snapshot, &tenant, &destination.host, addr)?;
        let hosts = &shared.config.egress.hosts;
        let mcp = &snapshot.tenants.mcp;
        if mcp.server_for(&destination, Some(addr), hosts).is_some() {
            return Err(Lapse::new(
                Ended::PolicyWithdrawn,
                Deny::McpMalformed(crate::mcp::NEVER_UPGRADED.into()),
            ));
        }
        // Its host may be an LLM provider's now (`[[llm_provider]]`).
        let mut there = destination.clone();
        super::admit::declared_provider(&mut there, snapshot);
        let call = registry::for_destination(&there).is_some();
        if let Work::Unmetered(what) = registry::work(&there, &method, true, call) {
            if crate::limits::plan::refuses_unmetered_for(&snapshot.tenants, &tenant) {
                return Err(Lapse::new(Ended::Unmetered, Deny::UnmeteredCall(what)));
            }
        }
        Ok(())
    })
}

/// An opaque tunnel to `host:port`, dialed at `addr`: its `connect` and `connect_opaque`
/// questions, the egress guard on its address, and whether it would be intercepted now.
pub fn opaque_again(
    tenant: Arc<TenantContext>,
    host: String,
    port: u16,
    addr: SocketAddr,
) -> Redecide {
    Box::new(move |shared, snapshot, now| {
        for question in [ConnectQuestion::Open, ConnectQuestion::Opaque] {
            let (decision, _) = decide::connect(snapshot, &tenant, &host, port, question, now);
            if !decision.allowed {
                return Err(policy_withdrawn(decision, snapshot, &tenant));
            }
        }
        still_reachable(shared, snapshot, &tenant, &host, addr)?;
        let must = super::admit::must_intercept(shared, snapshot, &tenant, &host, port, addr);
        if !must.any() {
            return Ok(());
        }
        let deny = if must.mcp || must.bound {
            Deny::InterceptionUnavailable(
                "this opaque tunnel's host must now be intercepted (an MCP server's, or one the \
                 tenant's credentials are bound to), which an open tunnel cannot become; open a \
                 new tunnel"
                    .into(),
            )
        } else {
            Deny::UnmeteredCall("an opaque tunnel to an LLM API")
        };
        Err(Lapse::new(Ended::InterceptionRequired, deny))
    })
}

impl std::fmt::Debug for Question {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Question(generation {})", self.generation)
    }
}

/// Completes once `who` is no longer accepted ([`judge_now`]), its signed run was closed, or
/// the relay's own `question` is refused under a reloaded configuration (or at a later hour,
/// asked every [`REDECIDE`]), with why: judged at once, then every [`RECHECK`]. A relay runs
/// beside it and ends when it completes.
///
/// SECURITY: an emergency forbid (a host compromised, a workload's access withdrawn) reaches
/// the relays already open, not only the next request.
pub async fn watch(
    shared: Arc<Shared>,
    who: ResolvedIdentity,
    question: Option<Question>,
) -> Lapse {
    let (mut question, mut asked) = (question, Instant::now());
    loop {
        if let Err(lapse) = judge_now(&shared, &who) {
            return lapse;
        }
        if let Some(lapse) = run_closed(&shared, &who).await {
            return lapse;
        }
        if let Some(q) = question.as_mut() {
            let snapshot = shared.snapshot.load();
            if snapshot.generation != q.generation || asked.elapsed() >= REDECIDE {
                if let Err(lapse) = (q.ask)(&shared, &snapshot, crate::clock::unix_now_i64()) {
                    return lapse;
                }
                q.generation = snapshot.generation;
                asked = Instant::now();
            }
        }
        tokio::time::sleep(RECHECK).await;
    }
}
