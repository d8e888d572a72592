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
//!     checked address, counted, and audited when the tunnel closes.

pub mod caps;
pub mod head;
pub mod io;
mod opaque;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

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
use tokio::io::AsyncWriteExt;

use crate::audit::{AuditDecision, AuditRecord, AuditSlot, TunnelFields};
use crate::clock::unix_now;
use crate::config::ListenerSettings;
use crate::context::TenantContext;
use crate::egress::EgressRefusal;
use crate::error::{error_body, Deny, ReasonCode};
use crate::front::{FrontConn, FrontLimits, HeadLimits};
use crate::identity::mtls::MtlsServer;
use crate::identity::{self, PeerCertificate, Presented, ResolvedIdentity};
use crate::metrics::{Metrics, METRICS};
use crate::policy::shadow::ShadowDecision;
use crate::policy::{ConnectFacts, ConnectQuestion, Decision};
use crate::proxy::{Shared, TenantProxy};
use crate::tls::ca::TunnelCertResolver;
use head::ConnectHead;
use io::Rewound;

/// Seconds an idle plain-HTTP keep-alive connection is kept between requests.
pub(crate) const PLAIN_KEEPALIVE_SECS: u64 = 60;

/// What every request inside an intercepted tunnel inherits. It lives on the TLS connection
/// (pingora's TLS digest extension), where the agent cannot reach it.
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
}

/// What the pipeline may learn from the connection a request arrived on (it finds the
/// [`FrontConn`] behind pingora's session).
#[derive(Debug, Default)]
pub struct ConnFacts {
    /// The intercepted tunnel this connection is the inside of.
    pub tunnel: Option<Arc<Tunnel>>,
    /// The tenant this connection counts against, once known (its first identified request, or
    /// the tunnel that carries it).
    pub tenant_slot: OnceLock<Arc<caps::TenantSlot>>,
}

/// A client connection as this proxy serves it.
pub type Conn = FrontConn<ConnFacts>;

/// The app serving one listener.
pub struct EgressApp {
    http: Arc<HttpProxy<TenantProxy>>,
    listener: Arc<ListenerSettings>,
    shared: Arc<Shared>,
    mtls: Option<Arc<MtlsServer>>,
    /// Client connections open on this listener.
    open: Arc<AtomicU32>,
}

/// Holds one of a listener's connection slots until dropped.
struct ListenerSlot {
    open: Arc<AtomicU32>,
    listener: Arc<ListenerSettings>,
}

impl Drop for ListenerSlot {
    fn drop(&mut self) {
        let n = self.open.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        METRICS
            .connections_open
            .with_label_values(&[&self.listener.name])
            .set(i64::from(n));
    }
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
        let mut http = pingora::proxy::http_proxy(conf, proxy);
        // HTTP/2 only happens inside intercepted tunnels (negotiated by ALPN); an idle h2
        // connection is closed like an idle HTTP/1.1 tunnel.
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2_idle_timeout = Some(shared.config.egress.tunnel_idle_timeout);
        http.server_options = Some(options);
        Self {
            http: Arc::new(http),
            listener: Arc::new(listener),
            shared,
            mtls,
            open: Arc::new(AtomicU32::new(0)),
        }
    }

    /// How this listener's requests are read.
    fn front_limits(&self) -> FrontLimits {
        let config = &self.shared.config;
        FrontLimits {
            head: HeadLimits {
                max_bytes: config.limits.max_header_bytes,
                max_headers: config.limits.max_headers,
            },
            header_timeout: config.egress.client_header_timeout,
            body_timeout: config.limits.client_body_timeout,
        }
    }

    /// Takes one of the listener's connection slots, unless it is full.
    fn try_open(&self) -> Option<ListenerSlot> {
        let max = self.shared.config.limits.max_connections_per_listener;
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        let n = taken.ok()? + 1;
        METRICS
            .connections_open
            .with_label_values(&[&self.listener.name])
            .set(i64::from(n));
        Some(ListenerSlot {
            open: self.open.clone(),
            listener: self.listener.clone(),
        })
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
        let stream = match &self.mtls {
            Some(mtls) => self.accept_mtls(mtls, stream).await?,
            None => stream,
        };
        let mut conn = Conn::new(stream, b"", self.front_limits(), ConnFacts::default());
        let idle = self.shared.config.egress.client_header_timeout;
        match conn.next_head(idle).await {
            Ok(None) => {}
            Err(violation) => self.refuse_front(&mut conn, violation.into()).await,
            Ok(Some(head)) if head.connect => {
                let (stream, head, early) = conn.take_connect();
                match head::parse_connect(&head) {
                    // Boxed, like serving HTTP below: a connection still sending its first
                    // head (a slow client, the usual attack) holds only the small state of
                    // reading it, not that of every path it might take.
                    Ok(head) => Box::pin(self.tunnel(stream, head, early.freeze(), shutdown)).await,
                    Err(deny) => {
                        // Nobody is identified yet: like any unidentified refusal, no record.
                        let mut stream = stream;
                        let id = crate::trace::random_hex(16);
                        write_refusal(&mut stream, &deny, &id).await;
                    }
                }
            }
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
    async fn accept_mtls(&self, mtls: &MtlsServer, stream: Stream) -> Option<Stream> {
        let acceptor = Acceptor::from_server_config(mtls.current());
        let callbacks = PeerCallbacks {
            listener: self.listener.clone(),
        };
        let handshake =
            handshake_with_callback(&acceptor, Rewound::new(stream, Bytes::new()), &callbacks);
        match tokio::time::timeout(self.shared.config.egress.client_header_timeout, handshake).await
        {
            Ok(Ok(tls)) => Some(Box::new(tls)),
            Ok(Err(e)) => {
                METRICS.mtls_handshake_failures.inc();
                tracing::info!(listener = %self.listener.name, error = %e, "mTLS handshake refused");
                None
            }
            Err(_) => None,
        }
    }

    async fn tunnel(
        &self,
        mut stream: Stream,
        head: ConnectHead,
        early: Bytes,
        shutdown: &ShutdownWatch,
    ) {
        let mut t = TunnelCtx::new(head);
        let opened = match self.open(&mut t, &stream).await {
            Ok(opened) => opened,
            Err(deny) => {
                let status = write_refusal(&mut stream, &deny, &t.request_id).await;
                t.emit(&self.listener, Err(deny), status);
                return;
            }
        };
        let Opened {
            slot: _slot,
            connection,
            identity,
            mode,
        } = opened;
        if stream.write_all(ESTABLISHED).await.is_err() || stream.flush().await.is_err() {
            return;
        }
        match mode {
            Mode::Opaque(upstream) => {
                let idle = self.shared.config.egress.tunnel_idle_timeout;
                let (up, down) = opaque::relay(stream, upstream, early, idle).await;
                t.bytes_up = up;
                t.bytes_down = down;
                let tenant = t.tenant_label().to_string();
                for (direction, n) in [("up", up), ("down", down)] {
                    METRICS
                        .tunnel_bytes
                        .with_label_values(&[&tenant, direction])
                        .inc_by(n);
                }
                t.emit(&self.listener, Ok(()), 200);
            }
            Mode::Intercept(resolver) => {
                let inside = Inside {
                    identity,
                    resolver,
                    connection,
                };
                self.intercept(stream, early, inside, t, shutdown).await
            }
        }
    }

    /// Every check a tunnel must pass before `200 Connection established`, in order: an
    /// unauditable tunnel is never opened, identity before anything else is read, the port and
    /// policy before any DNS lookup (a denied caller cannot probe names), the cap before
    /// dialing.
    async fn open(&self, t: &mut TunnelCtx, stream: &Stream) -> Result<Opened, Deny> {
        t.audit_slot = Some(self.shared.audit.reserve()?);
        let snapshot = self.shared.snapshot.load();
        let ssl = stream.get_ssl_digest();
        let presented = Presented::from_request(&t.head.header.headers, ssl.as_deref());
        let who = identity::resolve(
            &self.listener.identity,
            &snapshot.tenants,
            snapshot.tokens.as_ref(),
            presented,
            unix_now(),
        )?;
        let tenant = Arc::new(TenantContext::new(
            who.clone(),
            t.request_id.clone(),
            crate::proxy::traceparent(&t.head.header.headers),
        ));
        t.tenant = Some(tenant.clone());
        self.shared
            .audit
            .admit_tenant(&mut t.audit_slot, &tenant.tenant)?;
        // The tunnel's client connection counts against its tenant for as long as it is open.
        let max_connections = self.shared.config.limits.max_connections_per_tenant;
        let connection = self
            .shared
            .connections
            .try_open(&tenant.tenant, max_connections)
            .ok_or_else(|| {
                METRICS
                    .overload_refusals
                    .with_label_values(&["tenant_cap"])
                    .inc();
                Deny::ConnectionLimit(max_connections)
            })?;
        // A closed run opens no tunnel: an opaque one carries no request that would be checked.
        self.shared
            .runs
            .sight(&tenant, snapshot.token_leeway())
            .await?;

        let egress = &self.shared.config.egress;
        let (host, port) = (t.head.host.clone(), t.head.port);
        if !egress.connect_ports.contains(&port) {
            return Err(Deny::ConnectPortForbidden(port));
        }
        let now = crate::clock::unix_now_i64();
        let (hour, weekday) = snapshot.tenants.local_clock(&tenant.tenant, now);
        let facts = ConnectFacts {
            host: &host,
            port,
            run_signed: tenant.run.signed,
            scopes: &tenant.scopes,
            destination_region: snapshot.tenants.regions.region_of(&host),
            hour,
            weekday,
        };
        let decision = snapshot.policy.authorize_connect(
            &tenant.tenant,
            &tenant.workload,
            ConnectQuestion::Open,
            &facts,
        );
        // The shadow set is asked the same question and never changes the answer.
        if let Some(shadow) = &snapshot.shadow_policy {
            let s = ShadowDecision::compare(
                &decision,
                shadow.authorize_connect(
                    &tenant.tenant,
                    &tenant.workload,
                    ConnectQuestion::Open,
                    &facts,
                ),
            );
            s.observe(tenant.tenant.as_str());
            t.shadow = Some(s);
        }
        let allowed = decision.allowed;
        t.decision = Some(decision);
        if !allowed {
            return Err(Deny::PolicyDenied);
        }
        let entry = snapshot.tenants.tenants.get(&tenant.tenant);
        let max = entry
            .and_then(|e| e.max_tunnels)
            .unwrap_or(egress.max_tunnels_per_tenant);
        let slot = self
            .shared
            .tunnels
            .try_open(&tenant.tenant, max)
            .ok_or(Deny::TunnelLimit(max))?;
        let exceptions = entry.map(|e| e.egress_allow.as_slice()).unwrap_or(&[]);
        let addr = self
            .shared
            .egress
            .resolve_checked(&host, port, exceptions)
            .await
            .map_err(|refusal| deny_for_refusal(&t.request_id, &refusal))?;

        let opaque = snapshot.policy.authorize_connect(
            &tenant.tenant,
            &tenant.workload,
            ConnectQuestion::Opaque,
            &facts,
        );
        // SECURITY: a tunnel to an MCP server (by name, or by the address just checked) is
        // always intercepted, whatever `connect_opaque` says, so what it calls is decided and
        // its lists filtered.
        let hosts = &self.shared.config.egress.hosts;
        let mcp = snapshot.tenants.mcp.serves(&host, port, Some(addr), hosts);
        if opaque.allowed && !mcp {
            t.mode = Some("opaque");
            if let Some(d) = t.decision.as_mut() {
                d.policy_ids.extend(opaque.policy_ids);
            }
            let timeout = self.shared.config.upstream.connect_timeout;
            let upstream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| Deny::UpstreamTimeout)?
                .map_err(|_| Deny::UpstreamUnreachable)?;
            return Ok(Opened {
                slot,
                connection,
                identity: who,
                mode: Mode::Opaque(upstream),
            });
        }
        t.mode = Some("intercept");
        let minter = self.shared.minter.as_ref().ok_or_else(|| {
            Deny::InterceptionUnavailable(
                "no interception CA is configured (`[intercept]`), and no policy lets this tunnel pass opaquely".into(),
            )
        })?;
        if !minter.ca().permits(&host) {
            return Err(Deny::InterceptionUnavailable(
                "the interception CA's name constraints do not cover this host".into(),
            ));
        }
        Ok(Opened {
            slot,
            connection,
            identity: who,
            mode: Mode::Intercept(Arc::new(TunnelCertResolver::new(&host, minter.clone()))),
        })
    }

    /// Terminates the client's TLS with a leaf for the tunnel's host and serves the requests
    /// inside through the pipeline. A client that names another host in its SNI is refused at
    /// the handshake (and audited as `host_mismatch`).
    async fn intercept(
        &self,
        stream: Stream,
        early: Bytes,
        inside: Inside,
        mut t: TunnelCtx,
        shutdown: &ShutdownWatch,
    ) {
        let Inside {
            identity,
            resolver,
            connection,
        } = inside;
        let tunnel = Arc::new(Tunnel {
            id: t.request_id.clone(),
            identity,
            host: t.head.host.clone(),
            port: t.head.port,
        });
        let acceptor = Acceptor::from_server_config(crate::tls::ca::server_config(
            resolver.clone(),
            &[b"h2", b"http/1.1"],
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
                if sni.as_deref().is_some_and(|s| s != tunnel.host) {
                    METRICS
                        .tunnel_handshake_failures
                        .with_label_values(&[&tenant, "sni_mismatch"])
                        .inc();
                    t.emit(&self.listener, Err(Deny::HostMismatch), 0);
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
                // The most common cause by far: the client does not trust the local CA.
                tracing::warn!(
                    tunnel = %t.request_id, tenant, host = %tunnel.host, %error,
                    "client TLS handshake in an intercepted tunnel failed; does the client trust the proxy CA? see `tenant-proxy ca env`"
                );
                t.emit(&self.listener, Ok(()), 200);
                return;
            }
        };
        t.emit(&self.listener, Ok(()), 200);
        if matches!(tls.selected_alpn_proto(), Some(ALPN::H2)) {
            // pingora's own HTTP/2 server: one pipeline run per stream, each seeing the tunnel
            // on the connection's TLS digest.
            self.http.process_new(Box::new(tls), shutdown).await;
            return;
        }
        let facts = ConnFacts {
            tunnel: Some(tunnel.clone()),
            tenant_slot: OnceLock::from(Arc::new(connection)),
        };
        let idle = egress.tunnel_idle_timeout.max(Duration::from_secs(1));
        let mut conn = Conn::new(Box::new(tls), b"", self.front_limits(), facts);
        match conn.next_head(idle).await {
            Ok(None) => {}
            Ok(Some(head)) if head.connect => {
                self.refuse_front(&mut conn, Deny::ConnectUnsupported).await
            }
            Ok(Some(_)) => self.serve_http1(Box::new(conn), idle, shutdown).await,
            Err(violation) => self.refuse_front(&mut conn, violation.into()).await,
        }
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
                    self.refuse_front(&mut conn, violation.into()).await;
                    return;
                }
            }
        }
    }

    /// Refuses a request the front would not hand to pingora (a malformed head, a deadline
    /// missed, a `CONNECT` inside a connection) with a JSON body, closes the connection, and
    /// audits the refusal when the caller is known: the tunnel's identity, the listener's
    /// binding, the client certificate, or a valid token in the refused head.
    async fn refuse_front(&self, conn: &mut Conn, deny: Deny) {
        let started = Instant::now();
        let deny = match deny {
            Deny::TooManyHeaders(_) => Deny::TooManyHeaders(self.shared.config.limits.max_headers),
            other => other,
        };
        let request_id: Arc<str> = crate::trace::random_hex(16).into();
        let head = conn.head_bytes();
        let method = head
            .split(|b| *b == b' ')
            .next()
            .filter(|m| !m.is_empty() && m.len() <= 16 && m.iter().all(u8::is_ascii_alphabetic))
            .map_or_else(
                || "-".to_string(),
                |m| String::from_utf8_lossy(m).into_owned(),
            );
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
                identity::resolve(
                    &self.listener.identity,
                    &snapshot.tenants,
                    snapshot.tokens.as_ref(),
                    presented,
                    unix_now(),
                )
                .ok()
            }
        };
        let tunnel_id = conn.context().tunnel.as_ref().map(|t| t.id.clone());
        let slot = who.as_ref().and_then(|_| self.shared.audit.reserve().ok());
        let status = write_refusal(conn.stream_mut(), &deny, &request_id).await;
        let reason = deny.code();
        let tenant_label = who.as_ref().map(|w| w.tenant.as_str().to_string());
        METRICS
            .requests
            .with_label_values(&[
                Metrics::tenant_label(tenant_label.as_deref()),
                "deny",
                reason.as_str(),
            ])
            .inc();
        tracing::info!(
            request_id = %request_id,
            tenant = Metrics::tenant_label(tenant_label.as_deref()),
            listener = %self.listener.name,
            method = %method,
            reason = reason.as_str(),
            status,
            "request refused before the pipeline"
        );
        let (Some(who), Some(slot)) = (who, slot) else {
            return;
        };
        let tenant = TenantContext::new(who, request_id, None);
        slot.emit(AuditRecord {
            tunnel: tunnel_id.map(|id| TunnelFields {
                id: id.to_string(),
                mode: "intercept",
            }),
            ..AuditRecord::of(
                &tenant,
                &self.listener.name,
                method,
                started.elapsed(),
                AuditDecision::Deny,
                reason,
                status,
            )
        });
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

enum Mode {
    Opaque(tokio::net::TcpStream),
    Intercept(Arc<TunnelCertResolver>),
}

/// What an intercepted tunnel's inside is served with.
struct Inside {
    identity: ResolvedIdentity,
    resolver: Arc<TunnelCertResolver>,
    /// The tunnel's client connection, counted against its tenant.
    connection: caps::TenantSlot,
}

struct Opened {
    slot: caps::TenantSlot,
    connection: caps::TenantSlot,
    identity: ResolvedIdentity,
    mode: Mode,
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

/// Reads the client certificate's SPIFFE ID once, at the handshake.
struct PeerCallbacks {
    listener: Arc<ListenerSettings>,
}

#[async_trait]
impl TlsAccept for PeerCallbacks {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let pattern = self.listener.tls.as_ref()?.spiffe.clone();
        let chain = tls.peer_cert_chain_der().unwrap_or(&[]);
        let peer = crate::identity::mtls::identify(chain, &pattern).map_err(|e| e.to_string());
        Some(Arc::new(PeerCertificate(peer)))
    }
}

/// The SSRF guard's refusal as the client sees it: the kind of address, never the address
/// (an agent must not learn internal addresses by probing names).
pub(crate) fn deny_for_refusal(request_id: &str, refusal: &EgressRefusal) -> Deny {
    tracing::info!(request_id, %refusal, "destination refused by the egress guard");
    match refusal {
        EgressRefusal::Unresolvable { .. } => Deny::UpstreamUnreachable,
        EgressRefusal::Forbidden { reason, .. } => {
            Deny::DestinationForbidden(format!("it resolves to a {reason} address"))
        }
        EgressRefusal::OwnListener { .. } => {
            Deny::DestinationForbidden("it is this proxy itself".into())
        }
    }
}

/// Writes a JSON refusal on a raw connection and closes it; returns the status.
async fn write_refusal(stream: &mut Stream, deny: &Deny, request_id: &str) -> u16 {
    let (status, code, message) = deny.describe();
    let body = error_body(code, &message, request_id, deny.ceiling());
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in deny.extra_headers() {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
    if stream.write_all(&out).await.is_ok() {
        let _ = stream.flush().await;
    }
    let _ = stream.shutdown().await;
    status
}

/// What the tunnel's own audit record is made of.
struct TunnelCtx {
    request_id: Arc<str>,
    started: Instant,
    head: ConnectHead,
    tenant: Option<Arc<TenantContext>>,
    decision: Option<Decision>,
    shadow: Option<ShadowDecision>,
    mode: Option<&'static str>,
    audit_slot: Option<AuditSlot>,
    bytes_up: u64,
    bytes_down: u64,
}

impl TunnelCtx {
    fn new(head: ConnectHead) -> Self {
        Self {
            request_id: crate::trace::random_hex(16).into(),
            started: Instant::now(),
            head,
            tenant: None,
            decision: None,
            shadow: None,
            mode: None,
            audit_slot: None,
            bytes_up: 0,
            bytes_down: 0,
        }
    }

    fn tenant_label(&self) -> &str {
        Metrics::tenant_label(self.tenant.as_ref().map(|t| t.tenant.as_str()))
    }

    /// Counts the tunnel and writes its record (only when a tenant is known, like requests).
    fn emit(&mut self, listener: &ListenerSettings, outcome: Result<(), Deny>, status: u16) {
        let (decision, reason) = match &outcome {
            Ok(()) => (AuditDecision::Allow, ReasonCode::Allowed),
            Err(d) => (AuditDecision::Deny, d.code()),
        };
        let tenant_label = self.tenant_label().to_string();
        METRICS
            .tunnels
            .with_label_values(&[&tenant_label, self.mode.unwrap_or("none"), reason.as_str()])
            .inc();
        let elapsed = self.started.elapsed();
        tracing::info!(
            request_id = %self.request_id,
            tenant = tenant_label,
            listener = %listener.name,
            method = "CONNECT",
            host = %self.head.host,
            port = self.head.port,
            mode = self.mode.unwrap_or("-"),
            reason = reason.as_str(),
            status,
            "tunnel"
        );
        let (Some(tenant), Some(slot)) = (self.tenant.as_ref(), self.audit_slot.take()) else {
            return;
        };
        let policy = self.decision.as_ref();
        slot.emit(AuditRecord {
            host: Some(self.head.host.clone()),
            port: Some(self.head.port),
            tunnel: self.mode.map(|mode| TunnelFields {
                id: self.request_id.to_string(),
                mode,
            }),
            policy_ids: policy.map(|p| p.policy_ids.clone()).unwrap_or_default(),
            policy_errors: policy.map(|p| p.errors.clone()).unwrap_or_default(),
            shadow: self.shadow.take(),
            bytes_in: self.bytes_up,
            bytes_out: self.bytes_down,
            ..AuditRecord::of(
                tenant,
                &listener.name,
                "CONNECT".into(),
                elapsed,
                decision,
                reason,
                status,
            )
        });
    }
}
