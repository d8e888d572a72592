//! Shutdown: stop accepting, let the requests in flight finish, cut the rest so that each still
//! records and settles, and only then let pingora stop the runtimes.
//!
//! pingora's own sequence loses them: after its shutdown broadcast it sleeps the grace period
//! and then shuts the runtimes down, which drops every task still running. A request dropped
//! that way never reaches `logging` (no audit record, no settlement, its Redis concurrency lease
//! held until `lease_ttl`), although its audit slot was reserved at admission. So the proxy
//! handles the signal itself ([`DrainOnSignal`], given to pingora as its signal watch) and tells
//! pingora only once the drain is over; pingora's grace period is zero.
//!
//! 1. The services stop accepting: every listener serves under [`Drain::watch`] instead of
//!    pingora's shutdown watch (keep-alive ends, HTTP/2 gets `GOAWAY`, approval holds are
//!    cancelled).
//! 2. Requests in flight get `[server] grace_period` to finish: the drain waits until no audit
//!    record is owed ([`crate::audit::AuditSink::all_recorded`]: every admitted request holds
//!    a reserved slot until its record is enqueued, after its settlement).
//! 3. The rest are cut: every accepted connection is a [`CutStream`], whose reads and writes
//!    fail from then on. pingora ends such a request as one whose client went away, through
//!    `fail_to_proxy` and `logging`, which record it as `shutdown` and settle what it used.
//!    They get `[server] graceful_shutdown_timeout` to record.
//! 4. pingora stops the runtimes; `app::run` then stops the audit writer, which writes what is
//!    queued.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::{Peek, Shutdown, Stream};
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use crate::audit::AuditSink;

/// Cut signals, spread over several channels: a connection waiting on I/O registers with one
/// of them, and a single channel would make every parked connection take the same lock (as
/// pingora shards its own shutdown notification, `ShardedNotify`).
const CUT_SHARDS: usize = 32;

/// The shutdown state every listener shares.
#[derive(Debug)]
pub struct Drain {
    /// True once a shutdown signal came: `/readyz` answers 503 from then on, even while the
    /// proxy still serves as usual (`[server] shutdown_delay`).
    terminating: AtomicBool,
    /// True once the drain begins: the shutdown watch the services run under.
    begun: watch::Sender<bool>,
    /// True once the requests still running are cut: read by every connection before its
    /// I/O, without a lock.
    cut: Arc<AtomicBool>,
    /// The same, to wake the connections parked on I/O.
    cuts: Vec<watch::Sender<bool>>,
    /// The next shard a connection takes.
    next: AtomicUsize,
}

impl Drain {
    /// Not draining.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            terminating: AtomicBool::new(false),
            begun: watch::Sender::new(false),
            cut: Arc::new(AtomicBool::new(false)),
            cuts: (0..CUT_SHARDS).map(|_| watch::Sender::new(false)).collect(),
            next: AtomicUsize::new(0),
        })
    }

    /// The shutdown watch to serve under: true once the drain begins.
    pub fn watch(&self) -> ShutdownWatch {
        self.begun.subscribe()
    }

    /// Whether a shutdown signal came (the proxy may still serve, for `shutdown_delay`).
    pub fn is_terminating(&self) -> bool {
        self.terminating.load(Ordering::Acquire)
    }

    /// Whether the requests still running were cut: a request that ended with its client's
    /// connection since then was ended by the proxy, not by its client.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    /// `stream`, to be cut when the drain runs out of time.
    pub fn cuttable(&self, stream: Stream) -> Stream {
        let shard = self.next.fetch_add(1, Ordering::Relaxed) % CUT_SHARDS;
        let mut cut = self.cuts[shard].subscribe();
        let signal: CutSignal = Box::pin(async move {
            // A drain that went away never cuts.
            if cut.wait_for(|cut| *cut).await.is_err() {
                std::future::pending::<()>().await;
            }
        });
        Box::new(CutStream {
            inner: stream,
            cut: self.cut.clone(),
            signal: Mutex::new(signal),
        })
    }

    fn begin(&self) {
        self.begun.send_replace(true);
    }

    fn cut_now(&self) {
        self.cut.store(true, Ordering::Release);
        for shard in &self.cuts {
            shard.send_replace(true);
        }
    }

    /// Waits up to `grace` for every record owed to be enqueued, cuts what is still running,
    /// and waits up to `settle` for those records.
    async fn run(&self, audit: &AuditSink, grace: Duration, settle: Duration) {
        self.begin();
        tracing::info!(
            in_flight = audit.owed(),
            grace_ms = grace.as_millis(),
            "shutting down: no new connections, waiting for the requests in flight"
        );
        if tokio::time::timeout(grace, audit.all_recorded())
            .await
            .is_ok()
        {
            return;
        }
        tracing::warn!(
            in_flight = audit.owed(),
            "shutting down: cutting the requests still running (each is recorded as `shutdown`)"
        );
        self.cut_now();
        if tokio::time::timeout(settle, audit.all_recorded())
            .await
            .is_err()
        {
            tracing::error!(
                owed = audit.owed(),
                "shutting down with audit records still owed: requests cut did not record within `graceful_shutdown_timeout`"
            );
        }
    }
}

/// pingora's signal watch: `SIGTERM` (and `SIGQUIT`, pingora's upgrade, which has no sockets
/// to hand over here: the listeners are bound by the proxy itself) drains for `grace`;
/// `SIGINT` cuts at once. Either way the requests cut get `settle` to record before pingora is
/// told, and with it the runtimes stop.
#[derive(Debug)]
pub struct DrainOnSignal {
    /// The listeners' shared state.
    pub drain: Arc<Drain>,
    /// Where the requests' records are owed.
    pub audit: AuditSink,
    /// `[server] grace_period`.
    pub grace: Duration,
    /// `[server] graceful_shutdown_timeout`.
    pub settle: Duration,
    /// `[server] shutdown_delay`.
    pub delay: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainOnSignal {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::SignalKind;
        let mut term = Signal::new(SignalKind::terminate());
        let mut quit = Signal::new(SignalKind::quit());
        let mut int = Signal::new(SignalKind::interrupt());
        let (grace, delay, told) = tokio::select! {
            () = term.recv() => (self.grace, self.delay, ShutdownSignal::GracefulTerminate),
            () = quit.recv() => (self.grace, self.delay, ShutdownSignal::GracefulTerminate),
            () = int.recv() => (Duration::ZERO, Duration::ZERO, ShutdownSignal::FastShutdown),
        };
        self.drain.terminating.store(true, Ordering::Release);
        if !delay.is_zero() {
            // Not ready, still serving: whoever routes connections here (a load balancer, a
            // Kubernetes Service whose endpoints update after the pod is told to stop) stops
            // before the listeners close, so no client is refused during a rollout.
            tracing::info!(
                delay_ms = delay.as_millis(),
                "shutting down: not ready, serving as usual until the drain begins"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                // An impatient second signal: no more waiting.
                () = int.recv() => {
                    self.drain.run(&self.audit, Duration::ZERO, self.settle).await;
                    return ShutdownSignal::FastShutdown;
                }
            }
        }
        tokio::select! {
            () = self.drain.run(&self.audit, grace, self.settle) => told,
            // An impatient second signal: cut now (the requests still record).
            () = int.recv() => {
                self.drain.run(&self.audit, Duration::ZERO, self.settle).await;
                ShutdownSignal::FastShutdown
            }
        }
    }
}

/// A Unix signal; one that cannot be registered never arrives (and is logged).
struct Signal(Option<tokio::signal::unix::Signal>);

impl Signal {
    fn new(kind: tokio::signal::unix::SignalKind) -> Self {
        match tokio::signal::unix::signal(kind) {
            Ok(s) => Self(Some(s)),
            Err(e) => {
                tracing::error!(signal = ?kind, error = %e, "cannot handle the signal");
                Self(None)
            }
        }
    }

    async fn recv(&mut self) {
        let received = match &mut self.0 {
            Some(s) => s.recv().await.is_some(),
            None => false,
        };
        if !received {
            std::future::pending::<()>().await;
        }
    }
}

type CutSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A client connection that fails every read and write once the drain cuts: whoever serves it
/// (pingora, a tunnel's relay) ends as if the client had gone, through its usual path.
pub struct CutStream {
    inner: Stream,
    /// The drain's cut flag.
    cut: Arc<AtomicBool>,
    /// Ready once cut; polled only when the inner stream is about to park. (A `Mutex` only to
    /// be `Sync`, as pingora's streams must be: it is reached through `&mut self`, never
    /// locked.)
    signal: Mutex<CutSignal>,
}

impl std::fmt::Debug for CutStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CutStream")
            .field("inner", &self.inner)
            .field("cut", &self.cut)
            .finish_non_exhaustive()
    }
}

impl CutStream {
    /// Whether the connection is cut; registers `cx` to be woken when it is.
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> bool {
        // The flag first: a signal that was ready once must not be polled again (it is set
        // before the signal is sent).
        if self.was_cut() {
            return true;
        }
        let signal = self
            .signal
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        signal.as_mut().poll(cx).is_ready()
    }

    /// Whether the connection was cut, without registering (before any I/O).
    fn was_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    /// `polled` unless the connection is cut: then a failure. A pending poll also waits for
    /// the cut, so a connection parked on I/O is woken by it.
    fn unless_cut<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending if self.poll_cut(cx) => Poll::Ready(Err(cut_error())),
            other => other,
        }
    }
}

fn cut_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the proxy is shutting down",
    )
}

impl AsyncRead for CutStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.was_cut() {
            return Poll::Ready(Err(cut_error()));
        }
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.unless_cut(cx, polled)
    }
}

impl AsyncWrite for CutStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.was_cut() {
            return Poll::Ready(Err(cut_error()));
        }
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.unless_cut(cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.was_cut() {
            return Poll::Ready(Err(cut_error()));
        }
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.unless_cut(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Closing is always allowed: it is how a cut connection ends.
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.was_cut() {
            return Poll::Ready(Err(cut_error()));
        }
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.unless_cut(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for CutStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

crate::stream_wrap::forward_stream_digests!(impl for CutStream);

#[async_trait]
impl Peek for CutStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_cut_wakes_a_parked_read_and_fails_every_later_read_and_write() {
        let drain = Drain::new();
        let (a, mut b) = tokio::io::duplex(64);
        let mut s = drain.cuttable(Box::new(a));
        b.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        assert!(!drain.is_cut());
        // Parked on a read nothing will answer: the cut ends it.
        let parked = tokio::spawn(async move {
            let mut one = [0u8; 1];
            let read = s.read(&mut one).await;
            (s, read)
        });
        tokio::task::yield_now().await;
        drain.cut_now();
        let (mut s, read) = tokio::time::timeout(Duration::from_secs(5), parked)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
        assert!(drain.is_cut());
        // Bytes that arrive later are not read, and nothing is written.
        b.write_all(b"late").await.unwrap();
        assert!(s.read(&mut got).await.is_err());
        assert!(s.write_all(b"pong").await.is_err());
    }
}
