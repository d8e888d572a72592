//! The front of the proxy's own HTTP ports (the admin port, the approvals API): requests are
//! read as strictly as on the listeners ([`crate::front`]: one checked head at a time, lines
//! ended by CRLF, one framing, the header and body deadlines) and the port takes at most
//! [`MAX_OPEN`] connections at once.
//!
//! SECURITY: the admin port is reachable by the agent beside a sidecar. Served by pingora's own
//! lenient reading, a head trickled a byte at a time was kept for ever and a port took any
//! number of such connections: a loop of them took the file descriptors every listener draws
//! on. And a head pingora reads another way than a strict reader (a bare LF, both
//! `Content-Length` and `Transfer-Encoding`) was served.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

use crate::error::Deny;
use crate::front::{FrontConn, FrontLimits};
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
}

impl<A> Fronted<A> {
    /// `app`, its requests read under `limits`.
    pub fn new(app: A, limits: FrontLimits) -> Self {
        Self {
            app: Arc::new(app),
            limits,
            open: AtomicU32::new(0),
        }
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
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_OPEN).then_some(n + 1)
            });
        if taken.is_err() {
            write_refusal(
                &mut stream,
                &Deny::Overloaded("connections to this port"),
                &id,
            )
            .await;
            return None;
        }
        let _slot = Slot(&self.open);
        let mut conn = Box::new(FrontConn::new(stream, b"", self.limits, ()));
        let mut idle = self.limits.header_timeout;
        loop {
            let refusal = match conn.next_head(idle).await {
                Ok(None) => return None,
                Ok(Some(head)) if head.connect => Deny::ConnectUnsupported,
                Ok(Some(_)) => {
                    let mut session = ServerSession::new_http1(conn);
                    session.set_keepalive((!*shutdown.borrow()).then_some(PLAIN_KEEPALIVE_SECS));
                    let reused = self.app.process_new_http(session, shutdown).await?;
                    let (stream, _) = reused.consume();
                    // pingora hands back the stream it was given.
                    conn = stream.into_any().downcast::<FrontConn<()>>().ok()?;
                    if !conn.reusable() || *shutdown.borrow() {
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
