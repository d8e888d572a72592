//! The front of the proxy's own HTTP ports (the admin port, the approvals API): requests are
//! read as strictly as on the listeners ([`crate::front`]: one checked head at a time, lines
//! ended by CRLF, one framing, the header and body deadlines), each request is done within
//! [`REQUEST_DEADLINE`] (each write within [`WRITE_TIMEOUT`]), and the port serves at most
//! [`MAX_OPEN`] connections, at most [`MAX_OPEN_PER_PEER`] of them from one address.
//!
//! At its address's share (or the port's cap) a new connection takes the slot of the
//! connection that has waited longest for a head (idle between requests, or still sending
//! one), from its own address first (else from the address that holds the most); it is refused
//! only when all of them are being served.
//!
//! SECURITY: the admin port is reachable by the agent beside a sidecar. Served by pingora's own
//! lenient reading, a head trickled a byte at a time was kept for ever and a port took any
//! number of such connections: a loop of them took the file descriptors every listener draws
//! on. And a head pingora reads another way than a strict reader (a bare LF, both
//! `Content-Length` and `Transfer-Encoding`) was served. A plain cap let 64 idle connections
//! lock the probes and the CLI out; taking the oldest waiting slot let a flood of new
//! connections evict a prober still sending its head; and 64 clients that never read their
//! answers held every slot "being served". The share per address keeps the kubelet's probes
//! (from the node) and Prometheus (from its pod) in slots the agent (from the pod's own
//! address or loopback) cannot take.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use crate::error::Deny;
use crate::front::{FrontConn, FrontLimits, Head, Violation};
use crate::pipeline::record::write_refusal;
use crate::pipeline::PLAIN_KEEPALIVE_SECS;

/// Connections one of the proxy's own ports serves at once: its callers are a few scrapers,
/// probes, the CLI and approvers.
pub const MAX_OPEN: u32 = 64;

/// Of [`MAX_OPEN`], what one address may hold.
pub const MAX_OPEN_PER_PEER: u32 = MAX_OPEN / 4;

/// Largest request body these ports read (an approval's reason is at most 4 KiB; the admin
/// port reads none).
const MAX_BODY: u64 = 64 * 1024;

/// Longest one write of an answer may wait for its client to read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest one request may take, read, answered and written (pingora writes an answer's head
/// without a deadline; no endpoint of these ports waits on anything for long).
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// `app` behind the front.
pub struct Fronted<A> {
    app: Arc<A>,
    limits: FrontLimits,
    slots: Mutex<Slots>,
    next_id: AtomicU64,
}

/// Who holds the port's connection slots.
#[derive(Debug, Default)]
struct Slots {
    open: u32,
    by_peer: HashMap<IpAddr, u32>,
    /// The connections waiting for a head, oldest first, each with its address and what ends
    /// it.
    waiting: VecDeque<(u64, IpAddr, Arc<Notify>)>,
}

impl Slots {
    /// Ends the oldest waiting connection of `peer`; false when it has none waiting.
    fn evict_from(&mut self, peer: IpAddr) -> bool {
        let Some(at) = self.waiting.iter().position(|(_, p, _)| *p == peer) else {
            return false;
        };
        if let Some((_, _, end)) = self.waiting.remove(at) {
            end.notify_one();
        }
        true
    }
}

impl<A> Fronted<A> {
    /// `app`, its requests read under `limits`.
    pub fn new(app: A, limits: FrontLimits) -> Self {
        Self {
            app: Arc::new(app),
            limits,
            slots: Mutex::new(Slots::default()),
            next_id: AtomicU64::new(0),
        }
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot for a connection from `peer` (see the module's text); false when it is
    /// refused. A slot taken from another connection is counted at once: the caps are passed
    /// by the connections still ending.
    fn take_slot(&self, peer: IpAddr) -> bool {
        let mut slots = self.slots();
        let mine = slots.by_peer.get(&peer).copied().unwrap_or(0);
        let room = if mine >= MAX_OPEN_PER_PEER {
            slots.evict_from(peer)
        } else if slots.open >= MAX_OPEN {
            let heaviest = slots
                .by_peer
                .iter()
                .filter(|(p, n)| **n > mine && slots.waiting.iter().any(|(_, w, _)| w == *p))
                .max_by_key(|(_, n)| **n)
                .map(|(p, _)| *p);
            heaviest.is_some_and(|p| slots.evict_from(p))
        } else {
            true
        };
        if room {
            slots.open += 1;
            *slots.by_peer.entry(peer).or_default() += 1;
        }
        room
    }

    fn give_back(&self, peer: IpAddr) {
        let mut slots = self.slots();
        slots.open = slots.open.saturating_sub(1);
        if let Some(n) = slots.by_peer.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                slots.by_peer.remove(&peer);
            }
        }
    }

    /// The connection's next head, read while it is listed as waiting; `None` when a new
    /// connection took its slot meanwhile.
    async fn next_head(
        &self,
        conn: &mut FrontConn<()>,
        peer: IpAddr,
        idle: Duration,
    ) -> Option<Result<Option<Head>, Violation>> {
        let me = self.next_id.fetch_add(1, Ordering::Relaxed);
        let end = Arc::new(Notify::new());
        self.slots().waiting.push_back((me, peer, end.clone()));
        let next = tokio::select! {
            next = conn.next_head(idle) => Some(next),
            () = end.notified() => None,
        };
        self.slots().waiting.retain(|(id, _, _)| *id != me);
        next
    }

    /// The request's whole body, read while the connection is listed as waiting (as for its
    /// head: a body trickled a byte at a time is as idle as a head that is), at most
    /// [`MAX_BODY`]; `None` when a new connection took its slot meanwhile.
    ///
    /// SECURITY: read by the application instead, a trickled body counted as being served and
    /// was never evicted: an approver of one tenant, from a few addresses of its host (any
    /// `127.x.y.z`, any of a host's IPv6 addresses), held every slot of the approvals API with
    /// bodies sent a byte every half second, and the other tenants' approvers were refused.
    async fn whole_body(
        &self,
        conn: &mut FrontConn<()>,
        peer: IpAddr,
    ) -> Option<Result<(), Violation>> {
        let me = self.next_id.fetch_add(1, Ordering::Relaxed);
        let end = Arc::new(Notify::new());
        self.slots().waiting.push_back((me, peer, end.clone()));
        let body = async {
            // A body too large is refused before the client is asked to send it.
            if expects_continue(conn.head_bytes())
                && conn.declared_body_len().is_none_or(|n| n <= MAX_BODY)
                && conn
                    .stream_mut()
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .await
                    .is_err()
            {
                return Err(Violation::Truncated);
            }
            conn.buffer_body(MAX_BODY).await
        };
        let read = tokio::select! {
            read = body => Some(read),
            () = end.notified() => None,
        };
        self.slots().waiting.retain(|(id, _, _)| *id != me);
        read
    }
}

/// Whether a request head asks for `100 Continue` before its body is sent.
fn expects_continue(head: &[u8]) -> bool {
    head.split(|b| *b == b'\n').skip(1).any(|line| {
        let mut parts = line.splitn(2, |b| *b == b':');
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            return false;
        };
        name.eq_ignore_ascii_case(b"expect")
            && value.trim_ascii().eq_ignore_ascii_case(b"100-continue")
    })
}

impl<A> std::fmt::Debug for Fronted<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fronted")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// One of the port's connection slots, given back when the connection ends.
struct Slot<'a, A> {
    port: &'a Fronted<A>,
    peer: IpAddr,
}

impl<A> Drop for Slot<'_, A> {
    fn drop(&mut self) {
        self.port.give_back(self.peer);
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Fronted<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let id = crate::trace::random_hex(16);
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        if !self.take_slot(peer) {
            let refusal = Deny::Overloaded("connections to this port");
            write_refusal(&mut stream, &refusal, &id).await;
            return None;
        }
        let _slot = Slot {
            port: &**self,
            peer,
        };
        let mut conn = Box::new(FrontConn::new(stream, b"", self.limits, ()));
        let mut idle = self.limits.header_timeout;
        loop {
            let refusal = match self.next_head(&mut conn, peer, idle).await? {
                Ok(None) => return None,
                Ok(Some(head)) if head.connect => Deny::ConnectUnsupported,
                Ok(Some(_)) => {
                    if let Err(violation) = self.whole_body(&mut conn, peer).await? {
                        write_refusal(conn.stream_mut(), &violation.into(), &id).await;
                        return None;
                    }
                    // An HTTP/1.0 client expects the connection to end with the response
                    // (pingora's server keeps it open whatever the request's version).
                    let http10 = conn
                        .head_bytes()
                        .split(|b| *b == b'\r')
                        .next()
                        .is_some_and(|line| line.ends_with(b" HTTP/1.0"));
                    let mut session = ServerSession::new_http1(conn);
                    session.set_keepalive((!*shutdown.borrow()).then_some(PLAIN_KEEPALIVE_SECS));
                    session.set_write_timeout(Some(WRITE_TIMEOUT));
                    let served = self.app.process_new_http(session, shutdown);
                    let reused = tokio::time::timeout(REQUEST_DEADLINE, served)
                        .await
                        .ok()??;
                    let (stream, _) = reused.consume();
                    // pingora hands back the stream it was given.
                    conn = stream.into_any().downcast::<FrontConn<()>>().ok()?;
                    if http10 || !conn.reusable() || *shutdown.borrow() {
                        return None;
                    }
                    idle = Duration::from_secs(PLAIN_KEEPALIVE_SECS);
                    continue;
                }
                Err(violation) => violation.into(),
            };
            write_refusal(conn.stream_mut(), &refusal, &id).await;
            return None;
        }
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await
    }
}
