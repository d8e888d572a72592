//! What a request may learn from the connection it arrived on: the intercepted tunnel it is the
//! inside of, and the tenant the connection counts against. None of it comes from what the
//! agent writes in a request.
//!
//! An HTTP/1 request finds it on the front's connection ([`Conn`], behind pingora's session); an
//! HTTP/2 request inside a tunnel on the TLS connection's digest (the only per-connection place
//! pingora's HTTP/2 server offers).

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
