//! What a request may learn from the connection it arrived on: the intercepted tunnel it is the
//! inside of, and the tenant the connection counts against. None of it comes from what the
//! agent writes in a request.
//!
//! An HTTP/1 request finds it on the front's connection ([`Conn`], behind pingora's session); an
//! HTTP/2 request inside a tunnel on the TLS connection's digest (the only per-connection place
//! pingora's HTTP/2 server offers).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use pingora::proxy::Session;

use super::caps::TenantSlot;
use super::record::TunnelMode;
use crate::front::FrontConn;
use crate::identity::ResolvedIdentity;

/// What every request inside an intercepted tunnel inherits.
#[derive(Debug)]
pub struct Tunnel {
    /// The `CONNECT` request's id; inner requests' audit records name it.
    pub id: Arc<str>,
    /// Who opened the tunnel.
    pub identity: ResolvedIdentity,
    /// The authority the tunnel was opened to.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// For a captured TLS connection, the address its client dialed: the only one its
    /// requests may be sent to (the tunnel's host must resolve to it).
    pub original: Option<std::net::SocketAddr>,
    /// What the requests inside speak to the upstream: HTTPS when the client's TLS was
    /// terminated, plain HTTP when the client spoke HTTP straight away.
    pub scheme: crate::target::Scheme,
    /// When the tunnel's own `connect` question was last answered as it was at `CONNECT`.
    pub connect_judged: ConnectJudged,
    /// The listener it was opened on: each HTTP/2 stream inside beyond one counts there while
    /// in flight.
    pub listener: super::caps::ListenerCounts,
    /// Its HTTP/2 streams in flight, and the slots they hold.
    pub streams: Arc<super::caps::TunnelStreams>,
}

/// When a tunnel's `connect` question was last judged: the snapshot generation and the time
/// (Unix seconds). An inner request asks it again after a reload or a minute (a policy may
/// read the hour), as an opaque tunnel's relay does, so an emergency forbid on the host reaches
/// the requests of tunnels already open.
#[derive(Debug)]
pub struct ConnectJudged {
    generation: AtomicU64,
    at: AtomicI64,
}

impl ConnectJudged {
    /// Judged under `generation` at `now`.
    pub fn new(generation: u64, now: i64) -> Self {
        Self {
            generation: AtomicU64::new(generation),
            at: AtomicI64::new(now),
        }
    }

    /// Whether the question is to be asked again under `generation` at `now`.
    pub fn due(&self, generation: u64, now: i64) -> bool {
        let every = i64::try_from(super::lapse::REDECIDE.as_secs()).unwrap_or(i64::MAX);
        self.generation.load(Ordering::Relaxed) != generation
            || now.saturating_sub(self.at.load(Ordering::Relaxed)) >= every
    }

    /// Judged again, as before, under `generation` at `now`.
    pub fn judged(&self, generation: u64, now: i64) {
        self.generation.store(generation, Ordering::Relaxed);
        self.at.store(now, Ordering::Relaxed);
    }
}

impl Tunnel {
    /// How the tunnel carries its requests, as their records name it.
    pub fn mode(&self) -> TunnelMode {
        match self.scheme {
            crate::target::Scheme::Https => TunnelMode::Intercept,
            crate::target::Scheme::Http => TunnelMode::Plain,
        }
    }
}

/// What the pipeline may learn from a client connection.
#[derive(Debug, Default)]
pub struct ConnFacts {
    /// The intercepted tunnel this connection is the inside of.
    pub tunnel: Option<Arc<Tunnel>>,
    /// The tenant this connection counts against, once known (its first identified request, or
    /// the tunnel that carries it).
    pub tenant_slot: OnceLock<Arc<TenantSlot>>,
    /// The slots of the other tenants whose requests this connection carried since (a client
    /// that holds several tenants' tokens and one pool of connections): each counts it too.
    pub other_tenant_slots: std::sync::Mutex<Vec<TenantSlot>>,
    /// For a connection captured by a transparent listener, the address its client dialed:
    /// the only one its requests may be sent to (their `Host` must resolve to it).
    pub original: Option<std::net::SocketAddr>,
}

/// A client connection as this proxy serves it.
pub type Conn = FrontConn<ConnFacts>;

/// The front's connection behind an HTTP/1 session (none for HTTP/2).
pub fn front_conn(session: &Session) -> Option<&Conn> {
    session
        .stream()
        .and_then(|s| s.as_any().downcast_ref::<Conn>())
}

/// The intercepted tunnel a request came through, if it did.
pub fn tunnel_of(session: &Session) -> Option<Arc<Tunnel>> {
    front_conn(session)
        .and_then(|c| c.context().tunnel.clone())
        .or_else(|| {
            session
                .digest()
                .and_then(|d| d.ssl_digest.as_ref())
                .and_then(|d| d.extension.get::<Arc<Tunnel>>().cloned())
        })
}
