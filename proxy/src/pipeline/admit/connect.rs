//! Tunnels: the identity of a request inside one, and the `CONNECT` that opens it (its
//! port, policy, egress, whether it must be intercepted, the tenant's cap).

use super::*;

/// The identity of a request inside an intercepted (or plain) tunnel: the tunnel's own, judged
/// as a fresh request presenting the credential that opened the tunnel would be judged now
/// ([`identity::recheck`]: the current key set, token settings, revocation list and workloads;
/// expiry with the leeway). A long-lived tunnel outlives neither its token nor a reload that
/// would refuse it. The refusal is audited in the tunnel's tenant's partition while that
/// tenant is configured.
pub(super) fn tunnel_identity(
    tunnel: &Tunnel,
    snapshot: &Snapshot,
) -> Result<(ResolvedIdentity, Option<Deny>), Deny> {
    let who = &tunnel.identity;
    let deny = match identity::recheck(who, &snapshot.tenants, snapshot.tokens.as_ref(), unix_now())
    {
        Ok(()) => return Ok((who.clone(), None)),
        Err(IdentityError::Invalid(why)) => Deny::IdentityInvalid(format!(
            "the identity that opened this tunnel is no longer accepted ({why}); open a new tunnel"
        )),
        Err(e) => e.into(),
    };
    // A tenant removed from the configuration has no partition to audit in any more.
    if snapshot.tenants.tenants.contains_key(&who.tenant) {
        Ok((who.clone(), Some(deny)))
    } else {
        Err(deny)
    }
}

/// The `connect` question of the tunnel a request arrived in, asked again after a reload or a
/// minute ([`ConnectJudged`]): a tunnel opened under a policy that has since withdrawn it
/// serves no more requests (an emergency forbid on the host reaches the tunnels already open,
/// as it ends an opaque tunnel's relay). An intercepted tunnel needs `connect` allowed, as at
/// `CONNECT`; a plain-HTTP one is refused only by a policy that forbids it (its requests are
/// each judged in full, as at `CONNECT`).
pub(super) fn tunnel_still_allowed(
    snapshot: &Snapshot,
    tenant: &TenantContext,
    tunnel: &Tunnel,
    now: i64,
    trail: &mut Trail,
) -> Result<(), Deny> {
    if !tunnel.connect_judged.due(snapshot.generation, now) {
        return Ok(());
    }
    if let Some(refused) = tunnel_connect_refused(snapshot, tenant, tunnel, now) {
        return Err(tunnel_withdrawn(refused, snapshot, trail));
    }
    tunnel.connect_judged.judged(snapshot.generation, now);
    Ok(())
}

/// The refusal of a request whose tunnel `snapshot`'s `connect` decision withdrew, noted for
/// the record.
pub(super) fn tunnel_withdrawn(
    (decision, shadow): (
        crate::policy::Decision,
        Option<crate::policy::shadow::ShadowDecision>,
    ),
    snapshot: &Snapshot,
    trail: &mut Trail,
) -> Deny {
    let refusal = PolicyRefusal::of(&decision);
    trail.decided(decision, snapshot);
    trail.shadow = shadow;
    Deny::PolicyDenied(refusal)
}

/// The tunnel's `connect` question asked now, and the decision when it refuses the tunnel: an
/// intercepted tunnel needs `connect` allowed, a plain-HTTP one is refused only by a policy that
/// forbids it (see [`tunnel_still_allowed`]). Asked for its requests and for the relays opened
/// inside it (a WebSocket).
pub(in crate::pipeline) fn tunnel_connect_refused(
    snapshot: &Snapshot,
    tenant: &TenantContext,
    tunnel: &Tunnel,
    now: i64,
) -> Option<(
    crate::policy::Decision,
    Option<crate::policy::shadow::ShadowDecision>,
)> {
    let (decision, shadow) = decide::connect(
        snapshot,
        tenant,
        &tunnel.host,
        tunnel.port,
        ConnectQuestion::Open,
        now,
    );
    connect_refuses(tunnel.scheme, &decision).then_some((decision, shadow))
}

/// Whether a `connect` decision refuses a tunnel carrying `scheme`: an intercepted (HTTPS)
/// tunnel needs `connect` allowed; a plain-HTTP one needs no permit (undici opens one for every
/// `http://` URL, and its requests are decided one by one), but a forbid that matches it (or a
/// policy error) refuses it: a security team's `forbid … connect` to the metadata endpoint
/// means the tunnel too, and the audit trail should not record it as allowed.
fn connect_refuses(scheme: Scheme, decision: &crate::policy::Decision) -> bool {
    match scheme {
        Scheme::Https => !decision.allowed,
        Scheme::Http => {
            !decision.allowed && (!decision.policy_ids.is_empty() || !decision.errors.is_empty())
        }
    }
}
#[allow(clippy::too_many_arguments)] // the chain's state, passed down once
pub(super) async fn admit_connect(
    fx: &dyn Effects,
    snapshot: Arc<Snapshot>,
    tenant: Arc<TenantContext>,
    who: ResolvedIdentity,
    connection: Option<TenantSlot>,
    (host, port, original): (&str, u16, Option<SocketAddr>),
    trail: &mut Trail,
) -> Result<Admitted, Deny> {
    let config = fx.config();
    trail.authority = Some((host.to_string(), port));
    if !config.egress.connect_ports.contains(&port) {
        // `connect_ports` are for TLS. A tunnel to a port a plain-HTTP request could reach
        // (80, or a `host:port` egress exception) may still carry plain HTTP: each request
        // inside is then decided as `http` on its own, so nothing is decided (or resolved)
        // for the tunnel itself beyond the caller and the tenant's tunnel cap. A client that
        // speaks TLS on it is refused once its first bytes show it.
        if !plain_http_port(config, &snapshot, &tenant.tenant, host, port) {
            return Err(Deny::ConnectPortForbidden(port));
        }
        // A plain tunnel is refused only by a `connect` forbid (see `connect_refuses`).
        let (decision, shadow) = decide::connect(
            &snapshot,
            &tenant,
            host,
            port,
            ConnectQuestion::Open,
            fx.now(),
        );
        if connect_refuses(Scheme::Http, &decision) {
            let refusal = PolicyRefusal::of(&decision);
            trail.decided(decision, &snapshot);
            trail.shadow = shadow;
            return Err(Deny::PolicyDenied(refusal));
        }
        trail.tunnel_mode = Some(TunnelMode::Plain);
        let slot = fx.open_tunnel(&tenant.tenant, tunnel_cap(config, &snapshot, &tenant))?;
        return Ok(Admitted {
            tenant,
            identity: who.clone(),
            snapshot,
            permit: Permit {
                destination: tunnel_destination(Scheme::Http, host, port),
                addr: None,
            },
            grant: Grant::Tunnel(TunnelGrant {
                identity: who,
                mode: TunnelMode::Plain,
                slot,
                connection,
                minter: None,
            }),
        });
    }
    let now = fx.now();
    let (decision, shadow) =
        decide::connect(&snapshot, &tenant, host, port, ConnectQuestion::Open, now);
    let refusal = (!decision.allowed).then(|| PolicyRefusal::of(&decision));
    trail.decided(decision, &snapshot);
    trail.shadow = shadow;
    trail.mark("policy");
    if let Some(refusal) = refusal {
        return Err(Deny::PolicyDenied(refusal));
    }
    let slot = fx.open_tunnel(&tenant.tenant, tunnel_cap(config, &snapshot, &tenant))?;
    let addr = fx
        .resolve(
            host,
            port,
            egress_exceptions(&snapshot, &tenant.tenant),
            &tenant,
            original,
        )
        .await?;
    let (opaque, _) = decide::connect(&snapshot, &tenant, host, port, ConnectQuestion::Opaque, now);
    let Intercepted {
        mcp,
        metered,
        bound,
    } = must_intercept(fx, &snapshot, &tenant, host, port, addr);
    let (mode, minter) = if opaque.allowed && !mcp && !metered && !bound {
        if let Some(d) = trail.decision.as_mut() {
            // One permit may allow both questions: named once.
            for id in opaque.policy_ids {
                if !d.policy_ids.contains(&id) {
                    d.policy_ids.push(id);
                }
            }
        }
        (TunnelMode::Opaque, None)
    } else {
        trail.tunnel_mode = Some(TunnelMode::Intercept);
        // Where policy would let it pass unread, say what keeps it from that.
        let cannot_intercept = |why: &str| match (opaque.allowed && !mcp, bound) {
            (true, true) => Deny::InterceptionUnavailable(format!(
                "the tenant's credentials are bound to this host, so its answers are scrubbed \
                 of them, which an opaque tunnel would not allow, and {why}"
            )),
            (true, false) => Deny::UnmeteredCall("an opaque tunnel to an LLM API"),
            (false, _) => Deny::InterceptionUnavailable(why.into()),
        };
        let minter = fx.minter().ok_or_else(|| {
            cannot_intercept(if opaque.allowed && !mcp {
                "no interception CA is configured (`[intercept]`)"
            } else {
                "no interception CA is configured (`[intercept]`), and no policy lets this tunnel pass opaquely"
            })
        })?;
        if !minter.ca().permits(host) {
            return Err(cannot_intercept(
                "the interception CA's name constraints do not cover this host",
            ));
        }
        (TunnelMode::Intercept, Some(minter))
    };
    trail.tunnel_mode = Some(mode);
    Ok(Admitted {
        tenant,
        identity: who.clone(),
        snapshot,
        permit: Permit {
            destination: tunnel_destination(Scheme::Https, host, port),
            addr: Some(addr),
        },
        grant: Grant::Tunnel(TunnelGrant {
            identity: who,
            mode,
            slot,
            connection,
            minter,
        }),
    })
}
/// Why a tunnel must be intercepted whatever `connect_opaque` says (any of them true).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::pipeline) struct Intercepted {
    /// It goes to an MCP server.
    pub mcp: bool,
    /// It goes to an LLM API host while a token or cost ceiling applies.
    pub metered: bool,
    /// It goes to a host the tenant's credentials are (or lately were) bound to.
    pub bound: bool,
}

impl Intercepted {
    pub fn any(self) -> bool {
        self.mcp || self.metered || self.bound
    }
}

/// Whether a tunnel of `tenant` to `host:port`, dialed at `addr`, must be intercepted under
/// `snapshot`: asked when it opens, and of an opaque tunnel still open after a reload (see
/// `lapse::opaque_again`).
pub(in crate::pipeline) fn must_intercept(
    fx: &dyn Effects,
    snapshot: &Snapshot,
    tenant: &TenantContext,
    host: &str,
    port: u16,
    addr: SocketAddr,
) -> Intercepted {
    Intercepted {
        // SECURITY: a tunnel to an MCP server (by name, or by the address checked) is always
        // intercepted, so what it calls is decided and its lists filtered.
        mcp: snapshot
            .tenants
            .mcp
            .serves(host, port, Some(addr), &fx.config().egress.hosts),
        // SECURITY: so is a tunnel to an LLM API host while token or cost ceilings apply to
        // the caller (unless allowed, `unmetered_calls`): its calls are metered only when read.
        metered: (registry::is_llm_api_host(host)
            || snapshot.tenants.llm_providers.for_host(host).is_some())
            && crate::limits::plan::refuses_unmetered_for(&snapshot.tenants, tenant),
        // SECURITY: so is a tunnel to a host the tenant's credentials are (or lately were)
        // bound to, on any port: what comes back from there is scrubbed of them (an upstream
        // that kept what a substituted request sent it shows it to whoever asks next), which
        // only an intercepted tunnel allows.
        bound: snapshot.credentials.any_bound_to_host(&tenant.tenant, host)
            || fx.echoes(snapshot, &tenant.tenant, host).is_some(),
    }
}

/// The tenant's cap on open tunnels (its own, or the deployment's default).
fn tunnel_cap(config: &StaticConfig, snapshot: &Snapshot, tenant: &TenantContext) -> u32 {
    snapshot
        .tenants
        .tenants
        .get(&tenant.tenant)
        .and_then(|e| e.max_tunnels)
        .unwrap_or(config.egress.max_tunnels_per_tenant)
}

/// Whether a plain-HTTP request could be sent to `host:port` through a tunnel: port 80, or a
/// port a `host:port` egress exception (the deployment's or the tenant's) names for this host.
fn plain_http_port(
    config: &StaticConfig,
    snapshot: &Snapshot,
    tenant: &TenantId,
    host: &str,
    port: u16,
) -> bool {
    port == 80
        || config
            .egress
            .exceptions
            .iter()
            .chain(egress_exceptions(snapshot, tenant))
            .any(|e| e.names(host, port))
}

/// A tunnel's destination as its record names it.
pub(in crate::pipeline) fn tunnel_destination(
    scheme: Scheme,
    host: &str,
    port: u16,
) -> Destination {
    Destination {
        scheme,
        host: host.to_string(),
        port,
        upstream_path: "/".into(),
        audit_path: "/".into(),
        route: None,
        internal: false,
        provider: None,
    }
}
