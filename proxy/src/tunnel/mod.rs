//! HTTPS egress: the connection-level app in front of the HTTP pipeline.
//!
//! pingora's `ProxyHttp` cannot tunnel, so each listener runs this app instead. It reads the
//! first request head of a connection (after the mTLS handshake on mTLS listeners):
//!
//! - plain HTTP goes to the same [`TenantProxy`] pipeline as always, bytes replayed;
//! - `CONNECT host:port` is identified and decided before any byte is tunnelled: the audit slot,
//!   the caller's identity, the port list, Cedar `connect`, the tenant's tunnel cap and the
//!   SSRF-checked address, in that order. Then Cedar `connect_opaque` chooses the mode:
//!   - **intercepted** (the default): TLS is terminated with a leaf minted for the host, and
//!     each request inside runs the full pipeline under the tunnel's identity (carried on the
//!     TLS connection itself as a [`Tunnel`], so no request can present another);
//!   - **opaque** (policy opt-in, e.g. certificate-pinned clients): bytes are relayed to the
//!     checked address, counted, and audited when the tunnel closes; the tunnel ends once its
//!     identity is no longer accepted (`crate::pipeline::lapse`).
//!
//!   An intercepted tunnel whose client does not open with a TLS ClientHello is served as plain
//!   HTTP/1.1 instead (what undici's `ProxyAgent` sends for `http://` URLs), each request
//!   decided as `http`. A port outside `connect_ports` that a plain request could reach (80, a
//!   `host:port` egress exception) opens such a **plain** tunnel only: TLS on it is cut off.

pub mod head;
mod hello_watch;
pub mod io;
mod opaque;
mod transparent;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::listeners::tls::Acceptor;
use pingora::listeners::TlsAccept;
use pingora::protocols::http::ServerSession;
use pingora::protocols::tls::server::handshake_with_callback;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{Ssl as _, Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::clock::unix_now;
use crate::config::ListenerSettings;
use crate::error::Deny;
use crate::front::FrontLimits;
use crate::identity::mtls::{ClientTrust, MtlsServer};
use crate::identity::ListenerKind;
use crate::identity::{self, IdentityError, PeerCertificate, Presented};
use crate::metrics::METRICS;
use crate::pipeline::admit::{self, Admitted, Ask, Caller, Grant, TunnelGrant};
use crate::pipeline::caps::{ListenerCounts, ListenerSlot, TenantSlot};
use crate::pipeline::conn::{Conn, ConnFacts, ConnectJudged, Tunnel};
use crate::pipeline::lapse;
use crate::pipeline::record::{write_refusal, Outcome, Trail, TunnelMode};
use crate::pipeline::{Shared, TenantProxy, PLAIN_KEEPALIVE_SECS};
use crate::target::Scheme;
use crate::tls::ca::TunnelCertResolver;
use crate::tls::resume::SessionScope;
use head::ConnectHead;
use io::Rewound;

/// The app serving one listener.
pub struct EgressApp {
    http: Arc<HttpProxy<TenantProxy>>,
    listener: Arc<ListenerSettings>,
    shared: Arc<Shared>,
    mtls: Option<Arc<MtlsServer>>,
    /// Client connections open on this listener (and the HTTP/2 streams in its tunnels).
    open: ListenerCounts,
}

impl EgressApp {
    /// The app for `listener`; `mtls` is its TLS server config on mTLS listeners.
    pub fn new(
        conf: &Arc<ServerConf>,
        listener: ListenerSettings,
        shared: Arc<Shared>,
        mtls: Option<Arc<MtlsServer>>,
    ) -> Self {
        let proxy = TenantProxy::new(listener.clone(), shared.clone());
        let open = ListenerCounts::new(&listener.name);
        let mut http = pingora::proxy::http_proxy(conf, proxy);
        // HTTP/2 only happens inside intercepted tunnels (negotiated by ALPN); an idle h2
        // connection is closed like an idle HTTP/1.1 tunnel.
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2_idle_timeout = Some(shared.config.egress.tunnel_idle_timeout);
        // A `CONNECT` stream inside an HTTP/2 tunnel reaches the pipeline, which refuses it
        // (`connect_unsupported`, with its JSON body and record) as the front refuses an HTTP/1
        // one; pingora would answer its own bare 405, unaudited. Nothing forwards a `CONNECT`.
        options.allow_connect_method_proxying = true;
        http.server_options = Some(options);
        Self {
            http: Arc::new(http),
            listener: Arc::new(listener),
            shared,
            mtls,
            open,
        }
    }

    /// How this listener's requests are read.
    fn front_limits(&self) -> FrontLimits {
        let config = &self.shared.config;
        config.limits.front(config.egress.client_header_timeout)
    }

    /// Takes one of the listener's connection slots, unless it is full.
    fn try_open(&self) -> Option<ListenerSlot> {
        let max = self.shared.config.limits.max_connections_per_listener;
        self.open.try_open(max)
    }
}

impl std::fmt::Debug for EgressApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressApp")
            .field("listener", &self.listener.name)
            .field("mtls", &self.mtls.is_some())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl ServerApp for EgressApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(_slot) = self.try_open() else {
            // Nobody is identified yet and the proxy is at its limit: refuse at once, before
            // any TLS handshake or read.
            METRICS
                .overload_refusals
                .with_label_values(&["listener_cap"])
                .inc();
            let mut stream = stream;
            let id = crate::trace::random_hex(16);
            write_refusal(&mut stream, &Deny::Overloaded("client connections"), &id).await;
            return None;
        };
        if self.listener.kind == ListenerKind::Transparent {
            Box::pin(self.captured(stream, shutdown)).await;
            return None;
        }
        let stream = match &self.mtls {
            Some(mtls) => self.accept_mtls(mtls, stream).await?,
            None => stream,
        };
        let mut conn = Conn::new(stream, b"", self.front_limits(), ConnFacts::default());
        let idle = self.shared.config.egress.client_header_timeout;
        match conn.next_head(idle).await {
            Ok(None) => {}
            Err(violation) => {
                self.refuse_front(&mut conn, self.front_refusal(violation))
                    .await
            }
            Ok(Some(head)) if head.connect => match head::parse_connect(conn.head_bytes()) {
                // Boxed, like serving HTTP below: a connection still sending its first head (a
                // slow client, the usual attack) holds only the small state of reading it, not
                // that of every path it might take.
                Ok(head) => {
                    let (stream, _, early) = conn.take_connect();
                    let opened = Opened::Connect;
                    Box::pin(self.tunnel(stream, head, early.freeze(), opened, shutdown)).await
                }
                // Refused as any head the front refuses: audited when the caller is known (the
                // listener's binding, a valid token in the head).
                Err(deny) => self.refuse_front(&mut conn, deny).await,
            },
            Ok(Some(_)) => {
                let idle = Duration::from_secs(PLAIN_KEEPALIVE_SECS);
                Box::pin(self.serve_http1(Box::new(conn), idle, shutdown)).await
            }
        }
        None
    }

    async fn cleanup(&self) {
        self.http.http_cleanup().await
    }
}

impl EgressApp {
    /// The mTLS handshake: a client without a certificate that chains to the trust bundle is
    /// refused here; one whose SPIFFE ID maps to no workload is refused per request.
    async fn accept_mtls(&self, mtls: &Arc<MtlsServer>, mut stream: Stream) -> Option<Stream> {
        let deadline =
            tokio::time::Instant::now() + self.shared.config.egress.client_header_timeout;
        // A connection closed before its first byte is a TCP probe (`/readyz`, a load
        // balancer's or an orchestrator's health check, a port scan), not a failed handshake:
        // it is not counted, or every probe would look like an attack on the listener.
        let mut first = bytes::BytesMut::with_capacity(4096);
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut first)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
        let (config, generation) = mtls.current();
        let acceptor = Acceptor::from_server_config(config);
        let callbacks = PeerCallbacks {
            listener: self.listener.clone(),
            trust: mtls.clone(),
            generation,
        };
        let handshake =
            handshake_with_callback(&acceptor, Rewound::new(stream, first.freeze()), &callbacks);
        match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Ok(tls)) => Some(Box::new(tls)),
            Ok(Err(e)) => {
                METRICS.mtls_handshake_failures.inc();
                // Anyone who reaches the listener can fail a handshake, as often as they like:
                // one line per listener a second on each worker, the rest counted.
                let name = &self.listener.name;
                if let Some(suppressed) = crate::logging::sample_line(
                    crate::logging::LineKey::Listener(name),
                    "mtls_handshake_refused",
                ) {
                    tracing::info!(listener = %name, error = %e, suppressed, "mTLS handshake refused");
                }
                None
            }
            Err(_) => None,
        }
    }

    /// Decides a `CONNECT` (or a captured connection, as if it were one) through the admission
    /// chain, then opens the tunnel (relayed or intercepted) or writes the refusal. The
    /// tunnel's own record is written when it opens (intercepted) or closes (opaque), or with
    /// its refusal.
    async fn tunnel(
        &self,
        mut stream: Stream,
        head: ConnectHead,
        early: Bytes,
        opened: Opened,
        shutdown: &ShutdownWatch,
    ) {
        let mut trail = Trail::new(Arc::from(self.listener.name.as_str()), "CONNECT".into());
        let ssl = stream.get_ssl_digest();
        let ask = Ask::Connect {
            header: &head.header,
            ssl: ssl.as_deref(),
            host: &head.host,
            port: head.port,
            original: opened.original(),
        };
        let caller = Caller::Listener(&self.listener.identity);
        let snapshot = self.shared.snapshot.load();
        // The snapshot the tunnel is decided under scopes its TLS sessions.
        let generation = snapshot.generation;
        let admitted = admit::admit(
            self.shared.as_ref(),
            snapshot,
            caller,
            ask,
            &mut trail,
            &mut (),
        )
        .await;
        let (admitted, grant) = match admitted {
            Ok(Admitted {
                permit,
                grant: Grant::Tunnel(grant),
                ..
            }) => (permit, grant),
            Ok(_) => {
                self.refused(&mut stream, &mut trail, Deny::Internal, opened)
                    .await;
                return;
            }
            Err(deny) => {
                self.refused(&mut stream, &mut trail, deny, opened).await;
                return;
            }
        };
        let TunnelGrant {
            identity,
            mode,
            slot: _slot,
            connection,
            minter,
        } = grant;
        if matches!(opened, Opened::CapturedOther(_)) && mode == TunnelMode::Intercept {
            // SECURITY: what is neither HTTP nor TLS cannot be read, so it passes only where
            // policy lets this address and port through unread (`connect_opaque`).
            let deny = Deny::InterceptionUnavailable(
                "the captured connection speaks neither HTTP nor TLS, and no policy lets it pass opaquely".into(),
            );
            self.refused(&mut stream, &mut trail, deny, opened).await;
            return;
        }
        let upstream = match mode {
            TunnelMode::Opaque => {
                let addr = match admitted.addr() {
                    Ok(addr) => addr,
                    Err(deny) => {
                        self.refused(&mut stream, &mut trail, deny, opened).await;
                        return;
                    }
                };
                let timeout = self.shared.config.upstream.connect_timeout;
                let dialed =
                    tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await;
                match dialed {
                    Ok(Ok(upstream)) => Some((upstream, addr)),
                    Ok(Err(_)) => {
                        let deny = Deny::UpstreamUnreachable;
                        self.refused(&mut stream, &mut trail, deny, opened).await;
                        return;
                    }
                    Err(_) => {
                        let deny = Deny::UpstreamTimeout;
                        self.refused(&mut stream, &mut trail, deny, opened).await;
                        return;
                    }
                }
            }
            TunnelMode::Intercept | TunnelMode::Plain => None,
        };
        // A captured client never asked for a tunnel: nothing is answered before its own bytes.
        if matches!(opened, Opened::Connect)
            && (stream.write_all(ESTABLISHED).await.is_err() || stream.flush().await.is_err())
        {
            return;
        }
        trail.outcome = Outcome::Forwarded;
        if let Some((upstream, addr)) = upstream {
            // A captured client that sent nothing within the sniffing's wait was taken for a
            // protocol in which the server speaks first, and decided on the address alone.
            let mut vet = (matches!(opened, Opened::CapturedOther(_)) && early.is_empty())
                .then_some(crate::transparent::sniff::speaks_first_late as opaque::Vet);
            let mut early = early;
            let mut watch = None;
            if matches!(opened, Opened::Connect) {
                match self.opaque_start(&mut stream, early, &head.host).await {
                    OpaqueStart::Relay(first) => {
                        vet = first
                            .is_empty()
                            .then_some(crate::transparent::sniff::speaks_first_late as opaque::Vet);
                        early = first;
                    }
                    OpaqueStart::Closed => {
                        // Cut by the proxy's drain before its client sent a byte: recorded as
                        // the relays cut then are.
                        if self.shared.drain.is_cut() {
                            trail.refuse(Deny::Shutdown);
                        }
                        trail.finish_tunnel(&self.shared.runs, 200).await;
                        return;
                    }
                    OpaqueStart::SniMismatch => {
                        self.sni_mismatch(trail).await;
                        return;
                    }
                    OpaqueStart::Refused(deny) => {
                        trail.refuse(deny);
                        trail.finish_tunnel(&self.shared.runs, 0).await;
                        return;
                    }
                    OpaqueStart::Http(first) => {
                        // SECURITY: HTTP inside the tunnel is read as HTTP, each request
                        // decided on its own `Host` and path, as in a tunnel policy does not
                        // let pass: relayed unread, its `Host` could name any other site
                        // served at the address.
                        drop(upstream);
                        let tunnel = Tunnel {
                            id: trail.request_id.clone(),
                            identity,
                            host: head.host.clone(),
                            port: head.port,
                            original: None,
                            scheme: Scheme::Http,
                            listener: self.open.clone(),
                            streams: Arc::default(),
                            connect_judged: ConnectJudged::new(
                                generation,
                                crate::clock::unix_now_i64(),
                            ),
                        };
                        self.serve_plain(stream, &first, trail, tunnel, connection, shutdown)
                            .await;
                        return;
                    }
                }
            }
            // A TLS client's handshake goes on being held to the name its first ClientHello gave
            // (a `CONNECT`'s, checked above, or a captured one's, decided on): only the first
            // hello goes up now, what came after it waits for the server's first answer.
            if early.first() == Some(&TLS_HANDSHAKE_RECORD) {
                match hello_watch::HelloWatch::after_first_hello(&early) {
                    Some((first, watching)) => {
                        early = first;
                        watch = Some(watching);
                    }
                    None => {
                        trail.refuse(Deny::InterceptionUnavailable(HANDSHAKE_UNREADABLE.into()));
                        trail.finish_tunnel(&self.shared.runs, 0).await;
                        return;
                    }
                }
            }
            let idle = self.shared.config.egress.tunnel_idle_timeout;
            // SECURITY: an opaque tunnel carries no request to judge again, so it is watched
            // instead: it ends once its identity would no longer be accepted (revoked, expired,
            // its key pulled, its workload removed), its run is closed, or a reload's policy
            // refuses it, not when its client pleases.
            let question = trail.tenant.clone().map(|tenant| lapse::Question {
                generation,
                ask: lapse::opaque_again(tenant, head.host.clone(), head.port, addr),
            });
            let lapse = Box::pin(lapse::watch(self.shared.clone(), identity, question));
            let (relayed, lapsed) =
                opaque::relay(stream, upstream, early, idle, lapse, vet, watch).await;
            let (up, down) = (relayed.up, relayed.down);
            trail.bytes_in = up;
            trail.bytes_out = down;
            if let Some(why) = relayed.hello_refused {
                match why {
                    hello_watch::Refusal::OtherName => {
                        METRICS
                            .tunnel_handshake_failures
                            .with_label_values(&[trail.tenant_label(), "sni_mismatch"])
                            .inc();
                        trail.refuse(Deny::HostMismatch);
                    }
                    hello_watch::Refusal::Unreadable => {
                        trail.refuse(Deny::InterceptionUnavailable(HANDSHAKE_UNREADABLE.into()))
                    }
                }
            } else if relayed.vetoed {
                trail.refuse(Deny::InterceptionUnavailable(
                    "the captured client sent a TLS ClientHello or an HTTP request only after a silence that took it for a protocol in which the server speaks first: decided on the address alone, its server name or Host would go unchecked".into(),
                ));
            } else if let Some(lapse) = lapsed {
                trail.ended = Some(lapse.ended);
                trail.refuse(lapse.deny);
            } else if relayed.client_failed && self.shared.drain.is_cut() {
                // Ended by the proxy's drain, not by either side: recorded as such, as the
                // HTTP requests cut then are.
                trail.refuse(Deny::Shutdown);
            }
            let tenant = trail.tenant_label().to_string();
            for (direction, n) in [("up", up), ("down", down)] {
                METRICS
                    .tunnel_bytes
                    .with_label_values(&[&tenant, direction])
                    .inc_by(n);
            }
            trail.finish_tunnel(&self.shared.runs, 200).await;
            return;
        }
        // What the client speaks first decides how the inside is served: a TLS ClientHello is
        // intercepted (on a TLS port), anything else is read as plain HTTP/1.1.
        let Some(early) = self.first_bytes(&mut stream, early).await else {
            // The client closed (or stayed silent) without a byte: the tunnel opened, unused.
            trail.finish_tunnel(&self.shared.runs, 200).await;
            return;
        };
        let tls = early.first() == Some(&TLS_HANDSHAKE_RECORD);
        match (tls, minter) {
            (true, Some(minter)) => {
                let sessions = self
                    .shared
                    .sessions
                    .as_ref()
                    .and_then(|s| s.scope(generation, &identity.tenant, &identity.workload));
                let tunnel = Arc::new(Tunnel {
                    id: trail.request_id.clone(),
                    identity,
                    host: head.host.clone(),
                    port: head.port,
                    original: opened.original(),
                    scheme: Scheme::Https,
                    listener: self.open.clone(),
                    streams: Arc::default(),
                    connect_judged: ConnectJudged::new(generation, crate::clock::unix_now_i64()),
                });
                let resolver = Arc::new(TunnelCertResolver::new(
                    &tunnel.identity.tenant,
                    &head.host,
                    minter,
                ));
                let inside = Inside {
                    tunnel,
                    resolver,
                    sessions,
                    connection,
                };
                self.intercept(stream, early, inside, trail, shutdown).await
            }
            (true, None) => {
                // SECURITY: a port opened for plain HTTP never carries TLS: that is what
                // `connect_ports` governs. The client already has its `200`, so the refusal is
                // the closed connection and the tunnel's record.
                if let Some(suppressed) = crate::logging::sample_line(
                    crate::logging::LineKey::Tenant(trail.tenant_label()),
                    "tls_in_plain_tunnel",
                ) {
                    tracing::info!(
                        tunnel = %trail.request_id, tenant = trail.tenant_label(),
                        listener = %self.listener.name, host = %head.host, port = head.port,
                        suppressed,
                        "TLS inside a tunnel opened for plain HTTP; list the port in `[egress] connect_ports` to intercept it"
                    );
                }
                trail.refuse(Deny::ConnectPortForbidden(head.port));
                trail.finish_tunnel(&self.shared.runs, 0).await;
            }
            (false, _) => {
                let tunnel = Tunnel {
                    id: trail.request_id.clone(),
                    identity,
                    host: head.host.clone(),
                    port: head.port,
                    original: opened.original(),
                    scheme: Scheme::Http,
                    listener: self.open.clone(),
                    streams: Arc::default(),
                    connect_judged: ConnectJudged::new(generation, crate::clock::unix_now_i64()),
                };
                self.serve_plain(stream, &early, trail, tunnel, connection, shutdown)
                    .await
            }
        }
    }

    /// Serves a tunnel whose client speaks plain HTTP: its record says so, and every request
    /// inside runs the pipeline.
    async fn serve_plain(
        &self,
        stream: Stream,
        early: &[u8],
        mut trail: Trail,
        tunnel: Tunnel,
        connection: Option<TenantSlot>,
        shutdown: &ShutdownWatch,
    ) {
        trail.tunnel_mode = Some(TunnelMode::Plain);
        trail.finish_tunnel(&self.shared.runs, 200).await;
        self.serve_inside(stream, early, Arc::new(tunnel), connection, shutdown)
            .await
    }

    /// Reads the first bytes of a `CONNECT` tunnel that policy lets pass opaquely (after its
    /// `200`), to hold its client to the host the tunnel was decided on.
    ///
    /// SECURITY: every check (Cedar's `connect`, the hosts that must be intercepted, the
    /// record) read the `CONNECT` host, but a TLS server picks the site it serves by the SNI:
    /// an unchecked SNI would reach any other site at the same address (a CDN's, a shared
    /// front end's), a forbidden one or one the tenant's credentials are bound to, unread.
    async fn opaque_start(&self, stream: &mut Stream, early: Bytes, host: &str) -> OpaqueStart {
        use crate::transparent::sniff::{sniff, Sniffed};
        let wait = self.shared.config.egress.client_header_timeout;
        let first_wait = transparent::FIRST_BYTE_WAIT;
        let Some((sniffed, bytes)) = sniff(stream, early.into(), first_wait, wait).await else {
            return OpaqueStart::Closed;
        };
        match sniffed {
            Sniffed::Tls { sni: Some(sni) } if !TunnelCertResolver::same_name(&sni, host) => {
                OpaqueStart::SniMismatch
            }
            // Without a name, the server serves the address's default site, which the
            // tunnel was decided on.
            Sniffed::Tls { .. } | Sniffed::Other => OpaqueStart::Relay(bytes.into()),
            Sniffed::ProxyHeader => OpaqueStart::Refused(Deny::InterceptionUnavailable(
                transparent::PROXY_HEADER.into(),
            )),
            Sniffed::Http => OpaqueStart::Http(bytes),
            Sniffed::UnreadableTls => OpaqueStart::Refused(Deny::InterceptionUnavailable(
                "the client's TLS handshake is no ClientHello this proxy can read (malformed, over 16 KiB, another TLS record first, an SNI that is no host name, or an encrypted inner hello): its server name cannot be checked against the tunnel's host".into(),
            )),
            Sniffed::StalledTls => OpaqueStart::Refused(Deny::RequestTimeout),
        }
    }

    /// The first bytes the client sends inside an opened tunnel (`early`, when it sent some with
    /// its `CONNECT`); none when it closes or sends nothing within the header timeout.
    async fn first_bytes(&self, stream: &mut Stream, early: Bytes) -> Option<Bytes> {
        if !early.is_empty() {
            return Some(early);
        }
        let mut buf = vec![0u8; 2048];
        let wait = self.shared.config.egress.client_header_timeout;
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                buf.truncate(n);
                Some(Bytes::from(buf))
            }
            _ => None,
        }
    }

    /// Serves the HTTP/1.1 requests inside a tunnel (after its TLS, when intercepted) through
    /// the front and the pipeline, each under the tunnel's identity.
    async fn serve_inside(
        &self,
        stream: Stream,
        early: &[u8],
        tunnel: Arc<Tunnel>,
        connection: Option<TenantSlot>,
        shutdown: &ShutdownWatch,
    ) {
        let facts = ConnFacts {
            original: tunnel.original,
            tunnel: Some(tunnel),
            tenant_slot: connection
                .map(Arc::new)
                .map(OnceLock::from)
                .unwrap_or_default(),
            ..ConnFacts::default()
        };
        let idle = self
            .shared
            .config
            .egress
            .tunnel_idle_timeout
            .max(Duration::from_secs(1));
        let mut conn = Conn::new(stream, early, self.front_limits(), facts);
        match conn.next_head(idle).await {
            Ok(None) => {}
            Ok(Some(head)) if head.connect => {
                self.refuse_front(&mut conn, Deny::ConnectUnsupported).await
            }
            Ok(Some(_)) => self.serve_http1(Box::new(conn), idle, shutdown).await,
            Err(violation) => {
                self.refuse_front(&mut conn, self.front_refusal(violation))
                    .await
            }
        }
    }

    /// Writes a tunnel's refusal (not to a captured client, which speaks no HTTP to the proxy)
    /// and its record.
    async fn refused(&self, stream: &mut Stream, trail: &mut Trail, deny: Deny, opened: Opened) {
        let status = match opened {
            Opened::Connect => write_refusal(stream, &deny, &trail.request_id).await,
            Opened::CapturedTls(_) | Opened::CapturedOther(_) => 0,
        };
        trail.refuse(deny);
        trail.finish_tunnel(&self.shared.runs, status).await;
    }

    /// Terminates the client's TLS with a leaf for the tunnel's host and serves the requests
    /// inside through the pipeline. A client that names another host in its SNI is refused at
    /// the handshake, resumed or not, and the SNI is checked again once the handshake is done
    /// (audited as `host_mismatch` either way). The tunnel's tenant workload's session scope,
    /// if any, lets the handshake resume and issues the tickets for the next one.
    async fn intercept(
        &self,
        stream: Stream,
        early: Bytes,
        inside: Inside,
        mut t: Trail,
        shutdown: &ShutdownWatch,
    ) {
        let Inside {
            tunnel,
            resolver,
            sessions,
            connection,
        } = inside;
        let tickets = sessions.map(|s| s.for_tunnel());
        let acceptor = Acceptor::from_server_config(crate::tls::ca::server_config(
            resolver.clone(),
            &[b"h2", b"http/1.1"],
            tickets.as_ref(),
        ));
        let callbacks = TunnelCallbacks {
            tunnel: tunnel.clone(),
        };
        let egress = &self.shared.config.egress;
        let handshake = handshake_with_callback(&acceptor, Rewound::new(stream, early), &callbacks);
        let tls = match tokio::time::timeout(egress.client_header_timeout, handshake).await {
            Ok(Ok(tls)) => tls,
            outcome => {
                let sni = resolver.seen_sni().flatten();
                let tenant = t.tenant_label().to_string();
                if !resolver.accepts(sni.as_deref()) {
                    self.sni_mismatch(t).await;
                    return;
                }
                METRICS
                    .tunnel_handshake_failures
                    .with_label_values(&[&tenant, "client_refused"])
                    .inc();
                let error = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                };
                // The most common cause by far: the client does not trust the local CA. The
                // client can fail its handshakes at will: sampled per tenant.
                if let Some(suppressed) = crate::logging::sample_line(
                    crate::logging::LineKey::Tenant(&tenant),
                    "client_tls_failed",
                ) {
                    tracing::warn!(
                        tunnel = %t.request_id, tenant, listener = %self.listener.name,
                        host = %tunnel.host, %error, suppressed,
                        "client TLS handshake in an intercepted tunnel failed; does the client trust the proxy CA? see `tenant-proxy ca env`"
                    );
                }
                // The tunnel was allowed and opened (200), and the record says nothing went
                // through it: a tunnel used and closed is told apart.
                t.ended = Some(crate::pipeline::lapse::Ended::ClientTlsFailed);
                t.finish_tunnel(&self.shared.runs, 200).await;
                return;
            }
        };
        // SECURITY: rustls resumes a session whenever the ClientHello's SNI equals the one the
        // session was made with (`hs::can_resume`), whatever this tunnel's `CONNECT` host is.
        // rustls 0.23 still asks the resolver first, which refuses another host; that order
        // is rustls's, not a promise, so the negotiated SNI is checked again here after every
        // handshake, the resolver's way. On a mismatch the connection is dropped before a byte
        // of it is read.
        if !resolver.accepts(tls.get_ssl().and_then(|r| r.server_name())) {
            self.sni_mismatch(t).await;
            return;
        }
        let kind = if tickets.is_some_and(|t| t.resumed()) {
            "resumed"
        } else {
            "full"
        };
        METRICS
            .tunnel_tls_handshakes
            .with_label_values(&[t.tenant_label(), kind])
            .inc();
        t.finish_tunnel(&self.shared.runs, 200).await;
        if matches!(tls.selected_alpn_proto(), Some(ALPN::H2)) {
            // pingora's own HTTP/2 server: one pipeline run per stream, each seeing the tunnel
            // on the connection's TLS digest.
            self.http.process_new(Box::new(tls), shutdown).await;
            return;
        }
        self.serve_inside(Box::new(tls), b"", tunnel, connection, shutdown)
            .await
    }

    /// Refuses an intercepted tunnel whose client named another host than its `CONNECT` in
    /// its SNI: the connection is closed, nothing is read from it, and the tunnel's record
    /// says `host_mismatch`.
    async fn sni_mismatch(&self, mut t: Trail) {
        METRICS
            .tunnel_handshake_failures
            .with_label_values(&[t.tenant_label(), "sni_mismatch"])
            .inc();
        t.refuse(Deny::HostMismatch);
        t.finish_tunnel(&self.shared.runs, 0).await;
    }

    /// Serves HTTP/1.1 requests on `conn`, one checked request at a time, until the client is
    /// done, a request is refused with the connection, or the connection cannot be read as HTTP
    /// any more (a framing error, a protocol switch). `conn` holds a checked head on entry.
    async fn serve_http1(&self, mut conn: Box<Conn>, idle: Duration, shutdown: &ShutdownWatch) {
        loop {
            let mut session = ServerSession::new_http1(conn);
            session.set_keepalive(if *shutdown.borrow() {
                None
            } else {
                Some(idle.as_secs().max(1))
            });
            let Some(reused) = self.http.process_new_http(session, shutdown).await else {
                return;
            };
            let (stream, _settings) = reused.consume();
            // pingora hands back the stream it was given; anything else is not ours to read.
            let Ok(back) = stream.into_any().downcast::<Conn>() else {
                return;
            };
            conn = back;
            if !conn.reusable() || *shutdown.borrow() {
                return;
            }
            match conn.next_head(idle).await {
                Ok(None) => return,
                Ok(Some(head)) if head.connect => {
                    self.refuse_front(&mut conn, Deny::ConnectUnsupported).await;
                    return;
                }
                Ok(Some(_)) => {}
                Err(violation) => {
                    self.refuse_front(&mut conn, self.front_refusal(violation))
                        .await;
                    return;
                }
            }
        }
    }

    /// Refuses a request the front would not hand to pingora (a malformed head, a deadline
    /// missed, a `CONNECT` inside a connection) with a JSON body, closes the connection, and
    /// audits the refusal when the caller is known: the tunnel's identity, the listener's
    /// binding, the client certificate, or a valid token in the refused head.
    /// The refusal of a head the front could not take: a head cut short once the drain has cut
    /// the clients' connections was cut by the proxy (`shutdown`), not malformed by its client.
    fn front_refusal(&self, violation: crate::front::Violation) -> Deny {
        match violation {
            crate::front::Violation::Truncated if self.shared.drain.is_cut() => Deny::Shutdown,
            other => other.into(),
        }
    }

    async fn refuse_front(&self, conn: &mut Conn, deny: Deny) {
        let deny = match deny {
            Deny::TooManyHeaders(_) => Deny::TooManyHeaders(self.shared.config.limits.max_headers),
            other => other,
        };
        let head = conn.head_bytes();
        let method = head
            .split(|b| *b == b' ')
            .next()
            .filter(|m| !m.is_empty() && m.len() <= 16 && m.iter().all(u8::is_ascii_alphabetic))
            .map_or_else(
                || "-".to_string(),
                |m| String::from_utf8_lossy(m).into_owned(),
            );
        let mut trail = Trail::new(Arc::from(self.listener.name.as_str()), method);
        let snapshot = self.shared.snapshot.load();
        let who = match &conn.context().tunnel {
            Some(t) => Some(t.identity.clone()),
            None => {
                let ssl = conn.get_ssl_digest();
                // A repeated header gives no identity here (`single_header`), so no record.
                let presented = Presented {
                    proxy_authorization: single_header(head, b"proxy-authorization"),
                    proxy_authorization_repeated: false,
                    peer: ssl
                        .as_deref()
                        .and_then(|d| d.extension.get::<PeerCertificate>()),
                };
                // A revoked token's refused head is audited in its tenant's partition too.
                identity::resolve(
                    &self.listener.identity,
                    &snapshot.tenants,
                    snapshot.tokens.as_ref(),
                    presented,
                    unix_now(),
                )
                .map_or_else(IdentityError::proven, Some)
            }
        };
        trail.tunnel = conn.context().tunnel.as_ref().map(|t| t.id.clone());
        trail.tunnel_mode = conn.context().tunnel.as_ref().map(|t| t.mode());
        if let Some(who) = who {
            // SECURITY: a failing partition's tenant gets no slot (and so no record held in memory)
            // for a refusal, as in the pipeline: holding one per refused head would let a tenant
            // fill the proxy's memory while its partition cannot be written.
            trail.slot = self.shared.audit.reserve_for(&who.tenant).ok();
            let tenant = crate::context::TenantContext::new(who, trail.request_id.clone(), None);
            trail.tenant = Some(Arc::new(tenant));
        }
        let status = write_refusal(conn.stream_mut(), &deny, &trail.request_id).await;
        trail.refuse(deny);
        trail.finish_request(&self.shared.runs, status, None).await;
    }
}

/// The value of a header that appears exactly once in a raw head (none when it is absent or
/// repeated: a refused head's identity is only used for its audit record, never guessed).
fn single_header<'a>(head: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut found = None;
    for line in head.split(|b| *b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if line[..colon].eq_ignore_ascii_case(name) {
            if found.is_some() {
                return None;
            }
            let value = &line[colon + 1..];
            let start = value
                .iter()
                .position(|b| !matches!(b, b' ' | b'\t'))
                .unwrap_or(value.len());
            let end = value
                .iter()
                .rposition(|b| !matches!(b, b' ' | b'\t'))
                .map_or(start, |i| i + 1);
            found = Some(&value[start..end]);
        }
    }
    found
}

const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// How a tunnel came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opened {
    /// A client's `CONNECT`.
    Connect,
    /// A captured TLS connection to this original destination.
    CapturedTls(std::net::SocketAddr),
    /// A captured connection in another protocol, to this original destination.
    CapturedOther(std::net::SocketAddr),
}

impl Opened {
    /// The captured connection's original destination.
    fn original(self) -> Option<std::net::SocketAddr> {
        match self {
            Opened::Connect => None,
            Opened::CapturedTls(a) | Opened::CapturedOther(a) => Some(a),
        }
    }
}

/// Why an opaque tunnel whose client's handshake cannot be followed is refused.
const HANDSHAKE_UNREADABLE: &str = "the client's TLS handshake cannot be read past its first ClientHello (more than 64 KiB before the server's first answer, another record than a second ClientHello after a retry, or a ClientHello this proxy cannot read): its server name cannot be checked";

/// What a `CONNECT` tunnel that policy lets pass opaquely does with its client's first bytes
/// ([`EgressApp::opaque_start`]).
enum OpaqueStart {
    /// Relayed, these bytes first (none: the client waits for the server to speak).
    Relay(Bytes),
    /// The client closed before it asked for anything.
    Closed,
    /// A ClientHello naming another host than the tunnel's.
    SniMismatch,
    /// Refused for this reason.
    Refused(Deny),
    /// Plain HTTP, these bytes first.
    Http(Vec<u8>),
}

/// The first byte of a TLS record carrying a handshake message (a ClientHello opens every TLS
/// connection); no HTTP/1 request starts with it.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What an intercepted tunnel's inside is served with.
struct Inside {
    tunnel: Arc<Tunnel>,
    resolver: Arc<TunnelCertResolver>,
    /// The TLS sessions the tunnel may resume and issue tickets of (its tenant workload's).
    sessions: Option<Arc<SessionScope>>,
    /// The tunnel's client connection, counted against its tenant.
    connection: Option<TenantSlot>,
}

/// Hands the tunnel to every request on the intercepted TLS connection.
struct TunnelCallbacks {
    tunnel: Arc<Tunnel>,
}

#[async_trait]
impl TlsAccept for TunnelCallbacks {
    async fn handshake_complete_callback(
        &self,
        _tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        // The extension holds an `Arc<Tunnel>`, so a request can keep the tunnel it came through.
        Some(Arc::new(self.tunnel.clone()))
    }
}

/// Keeps what the handshake proved (the chain, its SPIFFE ID read once) on the connection.
struct PeerCallbacks {
    listener: Arc<ListenerSettings>,
    /// The bundle the handshake is verified against, and its number then.
    trust: Arc<MtlsServer>,
    generation: u64,
}

#[async_trait]
impl TlsAccept for PeerCallbacks {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let pattern = self.listener.tls.as_ref()?.spiffe.clone();
        let chain = tls.peer_cert_chain_der().unwrap_or(&[]);
        let trust: Arc<dyn ClientTrust> = self.trust.clone();
        Some(Arc::new(PeerCertificate::proved(
            chain,
            &pattern,
            trust,
            self.generation,
        )))
    }
}
