//! The front of the proxy's own HTTP ports (the admin port, the approvals API): requests are
//! read as strictly as on the listeners ([`crate::front`]: one checked head at a time, lines
//! ended by CRLF, one framing, the header and body deadlines) and the port serves at most
//! [`MAX_OPEN`] connections at once. At the cap a new connection takes the slot of the one that
//! has waited longest for a head (idle, or still sending one); it is refused only when every
//! connection is being served.
//!
//! SECURITY: the admin port is reachable by the agent beside a sidecar. Served by pingora's own
//! lenient reading, a head trickled a byte at a time was kept for ever and a port took any
//! number of such connections: a loop of them took the file descriptors every listener draws
//! on. And a head pingora reads another way than a strict reader (a bare LF, both
//! `Content-Length` and `Transfer-Encoding`) was served. A plain cap would have let 64 idle
//! connections lock the probes and the CLI out instead.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::sync::Notify;

use crate::error::Deny;
use crate::front::{FrontConn, FrontLimits, Head, Violation};
use crate::pipeline::record::write_refusal;
use crate::pipeline::PLAIN_KEEPALIVE_SECS;

/// Connections one of the proxy's own ports serves at once: its callers are a few scrapers,
/// probes, the CLI and approvers.
pub const MAX_OPEN: u32 = 64;

/// `app` behind the front.
pub struct Fronted<A> {
    app: Arc<A>,
    limits: FrontLimits,
    open: AtomicU32,
    /// The connections waiting for a head, oldest first, each with what ends it.
    waiting: Mutex<VecDeque<(u64, Arc<Notify>)>>,
    next_id: AtomicU64,
}

impl<A> Fronted<A> {
    /// `app`, its requests read under `limits`.
    pub fn new(app: A, limits: FrontLimits) -> Self {
        Self {
            app: Arc::new(app),
            limits,
            open: AtomicU32::new(0),
            waiting: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(0),
        }
    }

    /// Takes a slot: a free one, or the slot of the connection that has waited longest for a
    /// head (it ends as it notices). False when every connection is being served.
    fn take_slot(&self) -> bool {
        let free = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_OPEN).then_some(n + 1)
            })
            .is_ok();
        if free {
            return true;
        }
        let oldest = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        let Some((_, end)) = oldest else {
            return false;
        };
        end.notify_one();
        // Counted at once: the cap is passed by the connections still ending.
        self.open.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// The connection's next head, read while it is listed as waiting; `None` when a new
    /// connection took its slot meanwhile.
    async fn next_head(
        &self,
        conn: &mut FrontConn<()>,
        idle: Duration,
    ) -> Option<Result<Option<Head>, Violation>> {
        let me = self.next_id.fetch_add(1, Ordering::Relaxed);
        let end = Arc::new(Notify::new());
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back((me, end.clone()));
        let next = tokio::select! {
            next = conn.next_head(idle) => Some(next),
            () = end.notified() => None,
        };
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(id, _)| *id != me);
        next
    }
}

impl<A> std::fmt::Debug for Fronted<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fronted")
            .field("limits", &self.limits)
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

/// One of the port's connection slots, given back when the connection ends.
struct Slot<'a>(&'a AtomicU32);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
        if !self.take_slot() {
            let refusal = Deny::Overloaded("connections to this port");
            write_refusal(&mut stream, &refusal, &id).await;
            return None;
        }
        let _slot = Slot(&self.open);
        let mut conn = Box::new(FrontConn::new(stream, b"", self.limits, ()));
        let mut idle = self.limits.header_timeout;
        loop {
            let refusal = match self.next_head(&mut conn, idle).await? {
                Ok(None) => return None,
                Ok(Some(head)) if head.connect => Deny::ConnectUnsupported,
                Ok(Some(_)) => {
                    // An HTTP/1.0 client expects the connection to end with the response
                    // (pingora's server keeps it open whatever the request's version).
                    let http10 = conn
                        .head_bytes()
                        .split(|b| *b == b'\r')
                        .next()
                        .is_some_and(|line| line.ends_with(b" HTTP/1.0"));
                    let mut session = ServerSession::new_http1(conn);
                    session.set_keepalive((!*shutdown.borrow()).then_some(PLAIN_KEEPALIVE_SECS));
                    let reused = self.app.process_new_http(session, shutdown).await?;
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
