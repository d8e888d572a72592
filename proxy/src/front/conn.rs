//! A client connection as pingora sees it: one checked request at a time.
//!
//! [`FrontConn`] owns the client's stream and everything read from it. The serving loop reads
//! a request head itself ([`FrontConn::next_head`], under the idle and header deadlines), checks
//! it ([`super::head`]), and only then hands the connection to pingora, which reads through
//! [`FrontConn`]'s `AsyncRead`. That read releases exactly the checked head and then exactly the
//! body its framing allows (chunk framing checked byte by byte, [`super::chunked`]), never a byte
//! of the next request. Whatever the client sends after that stays here until pingora has
//! finished the request and handed the connection back: then the next head is checked the same
//! way. pingora therefore never parses a head of its own choosing, never reads past a body, and
//! never reads again after a framing error.
//!
//! Once a request's bytes are all released, a read only looks for the client closing (what
//! pingora's idle read during a response is for): bytes that arrive are kept for the next head
//! (up to the head cap), an end of stream is passed on, and otherwise the read waits.
//!
//! A connection can be given an end ([`FrontConn::end_when`]): once it comes, every read and
//! write fails, so whoever serves the connection (pingora relaying an upgraded connection's
//! bytes) ends as if the client had gone.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BufMut, BytesMut};
use pingora::protocols::{Peek, Shutdown, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::io::poll_read_buf;

use super::chunked::{ChunkError, ChunkedValidator, Fed};
use super::head::{self, Framing, Head, HeadError, HeadLimits, HeadScanner, Scan};

/// The limits a connection's requests are read under.
#[derive(Debug, Clone, Copy)]
pub struct FrontLimits {
    /// Head size and field count.
    pub head: HeadLimits,
    /// From a head's first byte to its last.
    pub header_timeout: Duration,
    /// From the end of a head to the end of its body.
    pub body_timeout: Duration,
    /// Largest request body: a chunked body that declares more is refused at once (a
    /// `Content-Length` over it is refused by the pipeline, from the head).
    pub max_body_bytes: u64,
}

/// Why a connection stopped being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A request head was refused.
    Head(HeadError),
    /// The chunked body's framing was refused.
    Chunked(ChunkError),
    /// The head did not arrive by its deadline.
    HeadTimeout,
    /// The body did not arrive by its deadline.
    BodyTimeout,
    /// The client closed (or reset) the connection in the middle of a request.
    Truncated,
    /// A chunked body declared more data than the body limit.
    BodyTooLarge,
}

/// How the current request's body is released.
#[derive(Debug)]
enum Phase {
    /// This many body bytes are still to come.
    Length(u64),
    /// A chunked body, checked as it arrives.
    Chunked(ChunkedValidator),
    /// After a protocol switch: whatever the client sends, unframed, until it closes.
    Raw,
    /// The request's bytes are all released; later bytes belong to the next request.
    Done,
    /// A framing error or deadline: nothing more is read.
    Poisoned,
}

/// Bytes read from the client at a time for a body (bounded by what the body still needs).
const READ_CHUNK: usize = 16 * 1024;
/// Bytes read at a time for a head or between requests: most heads fit, and a connection that
/// only trickles (the common attack) holds little.
const HEAD_CHUNK: usize = 2 * 1024;
/// Writes smaller than this are gathered until pingora flushes (it flushes at the end of a
/// response, after every chunk of a chunked or close-delimited body, and after an informational
/// or body-less head), so a response's head and a known-length body leave in one `send`, as
/// with pingora's own listeners (whose write buffer our accept loop does not get).
const WRITE_BUFFER: usize = 4 * 1024;

/// A client connection serving one checked request at a time; `C` is what the application
/// attaches to the connection (the pipeline finds it by downcasting pingora's stream).
pub struct FrontConn<C> {
    inner: Stream,
    /// Read from the client, not yet handed to pingora.
    buf: BytesMut,
    /// How many bytes at the front of `buf` may be handed to pingora now.
    releasable: usize,
    phase: Phase,
    /// Switch to raw bytes once the current body ends (an upgrade request).
    upgrade_after: bool,
    upgraded: bool,
    eof: bool,
    violation: Option<Violation>,
    limits: FrontLimits,
    body_deadline: Option<Pin<Box<Sleep>>>,
    /// Written by pingora, not yet sent (see [`WRITE_BUFFER`]).
    pending: BytesMut,
    /// Ends the connection when ready (see [`Self::end_when`]). A `Mutex` only to be set through
    /// `&self` and to be `Sync`, as pingora's streams must be; polled through `&mut self`.
    end: std::sync::Mutex<Option<EndSignal>>,
    /// The end came: every read and write fails.
    ended: bool,
    context: C,
}

/// What ends a connection (see [`FrontConn::end_when`]).
pub type EndSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

// Nothing of `C` is ever pinned: the context is only read through `&self`.
impl<C> Unpin for FrontConn<C> {}

impl<C> std::fmt::Debug for FrontConn<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the buffered bytes: they may hold a request's credentials.
        f.debug_struct("FrontConn")
            .field("buffered", &self.buf.len())
            .field("phase", &self.phase)
            .field("violation", &self.violation)
            .finish_non_exhaustive()
    }
}

impl<C: Send + Sync + 'static> FrontConn<C> {
    /// Wraps a client stream; `early` are bytes already read from it (a `CONNECT`'s early data).
    pub fn new(inner: Stream, early: &[u8], limits: FrontLimits, context: C) -> Self {
        let mut buf = BytesMut::with_capacity(HEAD_CHUNK.max(early.len()));
        buf.extend_from_slice(early);
        Self {
            inner,
            buf,
            releasable: 0,
            phase: Phase::Done,
            upgrade_after: false,
            upgraded: false,
            eof: false,
            violation: None,
            limits,
            body_deadline: None,
            pending: BytesMut::new(),
            end: std::sync::Mutex::new(None),
            ended: false,
            context,
        }
    }

    /// Ends the connection once `end` completes: from then on every read and write fails (with
    /// `ConnectionAborted`), which wakes whoever waits on it. A later call replaces the end.
    pub fn end_when(&self, end: EndSignal) {
        let mut slot = self
            .end
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = Some(end);
    }

    /// Whether the end came; registers `cx` to be woken when it does.
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> bool {
        if self.ended {
            return true;
        }
        let slot = self
            .end
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(end) = slot.as_mut() {
            if end.as_mut().poll(cx).is_ready() {
                *slot = None;
                self.ended = true;
            }
        }
        self.ended
    }

    /// What the application attached to this connection.
    pub fn context(&self) -> &C {
        &self.context
    }

    /// Why reading stopped, if it did.
    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }

    /// Whether the connection switched protocols; it is never read as HTTP again.
    pub fn upgraded(&self) -> bool {
        self.upgraded
    }

    /// Whether another request may be read: the last one ended cleanly and no protocol switch
    /// happened.
    pub fn reusable(&self) -> bool {
        matches!(self.phase, Phase::Done) && self.releasable == 0 && !self.upgraded && !self.eof
    }

    /// Reads and checks the next request head. `idle` bounds the wait for its first byte and
    /// `limits.header_timeout` the whole head after that. `Ok(None)`: the client closed (or stayed
    /// silent past `idle`) between requests. On `Ok(Some(head))` the head is the next thing
    /// pingora reads; [`Self::head_bytes`] shows it, [`Self::after_head`] what followed it.
    pub async fn next_head(&mut self, idle: Duration) -> Result<Option<Head>, Violation> {
        debug_assert!(self.releasable == 0);
        // pingora flushes every response it ends; whatever is still gathered goes out before the
        // next request is read (and before a refusal is written on the stream itself).
        if !self.pending.is_empty()
            && std::future::poll_fn(|cx| self.poll_send_pending(cx))
                .await
                .is_err()
        {
            self.eof = true;
            return Ok(None);
        }
        let mut scanner = HeadScanner::default();
        let mut deadline: Option<Instant> = None;
        loop {
            match scanner.scan(&self.buf, self.limits.head) {
                Err(e) => return Err(self.refuse_partial_head(Violation::Head(e))),
                Ok(Scan::Complete { start, end }) => {
                    self.buf.advance(start);
                    let len = end - start;
                    let head = match head::parse(&self.buf[..len], self.limits.head) {
                        Ok(h) => h,
                        Err(e) => {
                            // Keep the head for whoever writes the refusal (identity, audit).
                            self.releasable = len;
                            return Err(self.poison(Violation::Head(e)));
                        }
                    };
                    self.start(&head);
                    return Ok(Some(head));
                }
                Ok(Scan::Partial) => {}
            }
            if self.eof {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(self.refuse_partial_head(Violation::Truncated))
                };
            }
            // The header deadline runs from the head's first byte; before it, the idle wait.
            let wait = match deadline {
                Some(d) => d,
                None if self.buf.is_empty() => Instant::now() + idle,
                None => {
                    let d = Instant::now() + self.limits.header_timeout;
                    deadline = Some(d);
                    d
                }
            };
            let read = tokio::time::timeout_at(wait, fill(&mut self.inner, &mut self.buf)).await;
            match read {
                Ok(Ok(0)) => self.eof = true,
                Ok(Ok(_)) => {}
                Ok(Err(_)) if self.buf.is_empty() => return Ok(None),
                Ok(Err(_)) => return Err(self.refuse_partial_head(Violation::Truncated)),
                Err(_) if deadline.is_none() && self.buf.is_empty() => return Ok(None),
                Err(_) => return Err(self.refuse_partial_head(Violation::HeadTimeout)),
            }
        }
    }

    /// The length the current request's head declares for its body (`Content-Length`), if any.
    pub fn declared_body_len(&self) -> Option<u64> {
        match self.phase {
            Phase::Length(n) => Some(n),
            _ => None,
        }
    }

    /// Reads the whole body of the request whose head [`Self::next_head`] returned into the
    /// buffer, before anything reads it: at most `max` bytes, within the body deadline. For the
    /// proxy's own ports, whose bodies are small: their front counts a connection still sending
    /// its body as waiting, as it counts one still sending its head (see `own_http`).
    pub async fn buffer_body(&mut self, max: u64) -> Result<(), Violation> {
        let mut chunked = match &self.phase {
            Phase::Length(n) if *n > max => return Err(self.poison(Violation::BodyTooLarge)),
            Phase::Length(_) => None,
            Phase::Chunked(v) => Some(v.clone()),
            _ => return Ok(()),
        };
        let deadline = Instant::now() + self.limits.body_timeout;
        // Body bytes the chunked check has seen.
        let mut checked = self.releasable;
        loop {
            let whole = match (&self.phase, chunked.as_mut()) {
                (Phase::Length(n), _) => (self.buf.len() - self.releasable) as u64 >= *n,
                (_, Some(v)) => {
                    let fed = v.feed(&self.buf[checked..]);
                    checked = self.buf.len();
                    match fed {
                        Ok(Fed::Done(_)) => true,
                        Ok(Fed::More) if v.declared_len() > max => {
                            return Err(self.poison(Violation::BodyTooLarge))
                        }
                        Ok(Fed::More) => false,
                        Err(e) => return Err(self.poison(Violation::Chunked(e))),
                    }
                }
                _ => true,
            };
            if whole {
                return Ok(());
            }
            if self.eof {
                return Err(self.poison(Violation::Truncated));
            }
            match tokio::time::timeout_at(deadline, fill(&mut self.inner, &mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => self.eof = true,
                Ok(Ok(_)) => {}
                Err(_) => return Err(self.poison(Violation::BodyTimeout)),
            }
        }
    }

    /// The bytes of the head [`Self::next_head`] returned or refused.
    pub fn head_bytes(&self) -> &[u8] {
        &self.buf[..self.releasable]
    }

    /// Takes a `CONNECT` head off the connection with everything after it (its early data):
    /// the connection stops being HTTP.
    pub fn take_connect(mut self) -> (Stream, BytesMut, BytesMut) {
        // `next_head` sent whatever was gathered before it read this head.
        debug_assert!(self.pending.is_empty());
        let head = self.buf.split_to(self.releasable);
        (self.inner, head, self.buf)
    }

    /// The stream, for writing a refusal after [`Self::next_head`] failed.
    pub fn stream_mut(&mut self) -> &mut Stream {
        &mut self.inner
    }

    fn start(&mut self, head: &Head) {
        self.releasable = head.len;
        self.upgrade_after = head.upgrade;
        self.phase = match head.framing {
            Framing::None if head.upgrade => Phase::Raw,
            Framing::None => Phase::Done,
            Framing::Length(n) => Phase::Length(n),
            Framing::Chunked => Phase::Chunked(ChunkedValidator::new(self.limits.head.max_bytes)),
        };
        self.upgraded = matches!(self.phase, Phase::Raw);
        if matches!(self.phase, Phase::Length(_) | Phase::Chunked(_)) {
            let deadline = Instant::now() + self.limits.body_timeout;
            match self.body_deadline.as_mut() {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.body_deadline = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
    }

    /// Refuses a head that was never read whole (the scanner gave up, the client stopped, the
    /// deadline passed), keeping what was read for whoever writes the refusal: a valid token
    /// in it identifies the caller, and the refusal is audited.
    fn refuse_partial_head(&mut self, why: Violation) -> Violation {
        self.releasable = self.buf.len();
        self.poison(why)
    }

    fn poison(&mut self, why: Violation) -> Violation {
        self.phase = Phase::Poisoned;
        self.violation.get_or_insert(why);
        why
    }

    /// Moves body bytes already in `buf` into the releasable part, as the framing allows.
    fn classify(&mut self) {
        let fresh = self.buf.len() - self.releasable;
        if fresh == 0 {
            return;
        }
        match &mut self.phase {
            Phase::Length(left) => {
                let take = fresh.min(usize::try_from(*left).unwrap_or(usize::MAX));
                self.releasable += take;
                *left -= take as u64;
                if *left == 0 {
                    self.body_done();
                }
            }
            Phase::Chunked(v) => match v.feed(&self.buf[self.releasable..]) {
                Ok(_) if v.declared_len() > self.limits.max_body_bytes => {
                    self.poison(Violation::BodyTooLarge);
                }
                Ok(Fed::More) => self.releasable = self.buf.len(),
                Ok(Fed::Done(n)) => {
                    self.releasable += n;
                    self.body_done();
                }
                Err(e) => {
                    self.poison(Violation::Chunked(e));
                }
            },
            Phase::Raw => self.releasable = self.buf.len(),
            Phase::Done | Phase::Poisoned => {}
        }
    }

    fn body_done(&mut self) {
        self.body_deadline = None;
        if self.upgrade_after {
            self.phase = Phase::Raw;
            self.upgraded = true;
        } else {
            self.phase = Phase::Done;
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // Read what the current phase can use: a body's remainder (up to a chunk), otherwise
        // a small read (between requests only the client's close matters).
        let want = match &self.phase {
            Phase::Length(left) => usize::try_from(*left)
                .unwrap_or(READ_CHUNK)
                .clamp(1, READ_CHUNK),
            Phase::Chunked(_) | Phase::Raw => READ_CHUNK,
            Phase::Done | Phase::Poisoned => HEAD_CHUNK,
        };
        // Into the buffer's spare capacity, never zeroed first: zeroing `want` bytes on every
        // poll (2 KiB between requests, 16 KiB for a chunked body) wrote lines the read then
        // overwrote or never used, and at 64 connections in flight those writes pushed the
        // proxy's working set out of the core's cache (loadtest/README.md, item 36).
        self.buf.reserve(want);
        let mut room = (&mut self.buf).limit(want);
        let n = ready!(poll_read_buf(Pin::new(&mut self.inner), cx, &mut room))?;
        if n == 0 {
            self.eof = true;
        }
        Poll::Ready(Ok(n))
    }
}

/// Reads more of a head from `inner` into `buf`; `Ok(0)` at the end of the stream.
async fn fill(inner: &mut Stream, buf: &mut BytesMut) -> io::Result<usize> {
    buf.reserve(HEAD_CHUNK);
    inner.read_buf(buf).await
}

impl<C: Send + Sync + 'static> AsyncRead for FrontConn<C> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_ended(cx) {
            return Poll::Ready(Err(ended_error()));
        }
        loop {
            this.classify();
            if this.releasable > 0 {
                let n = this.releasable.min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                this.releasable -= n;
                return Poll::Ready(Ok(()));
            }
            match this.phase {
                Phase::Poisoned => {
                    let kind = match this.violation {
                        Some(Violation::BodyTimeout | Violation::HeadTimeout) => {
                            io::ErrorKind::TimedOut
                        }
                        Some(Violation::Truncated) => io::ErrorKind::UnexpectedEof,
                        _ => io::ErrorKind::InvalidData,
                    };
                    return Poll::Ready(Err(io::Error::new(kind, "request framing refused")));
                }
                Phase::Done => {
                    // Between requests: pass on an end of stream, keep any early bytes of the
                    // next request (bounded), release nothing.
                    if this.eof {
                        return Poll::Ready(Ok(()));
                    }
                    if this.buf.len() >= this.limits.head.max_bytes {
                        return Poll::Pending;
                    }
                    match this.poll_fill(cx) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                        Poll::Ready(Ok(_)) => continue,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Phase::Length(_) | Phase::Chunked(_) | Phase::Raw => {
                    if this.eof {
                        if !matches!(this.phase, Phase::Raw) {
                            this.poison(Violation::Truncated);
                        }
                        return Poll::Ready(Ok(()));
                    }
                    // The deadline covers the whole body: a client trickling bytes steadily
                    // is cut at it as surely as a silent one.
                    if let Some(sleep) = this.body_deadline.as_mut() {
                        if sleep.as_mut().poll(cx).is_ready() {
                            this.poison(Violation::BodyTimeout);
                            continue;
                        }
                    }
                    match this.poll_fill(cx) {
                        Poll::Ready(Ok(_)) => continue,
                        Poll::Ready(Err(e)) => {
                            // A connection reset in the middle of a body ended it short, as
                            // one closed there did.
                            if !matches!(this.phase, Phase::Raw) {
                                this.poison(Violation::Truncated);
                            }
                            return Poll::Ready(Err(e));
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
    }
}

/// The error every read and write of an ended connection gets.
fn ended_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the connection was ended by the proxy",
    )
}

impl<C> FrontConn<C> {
    /// Sends what [`Self::pending`] holds to the client.
    fn poll_send_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.pending) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.pending.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<C: Send + Sync + 'static> AsyncWrite for FrontConn<C> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.poll_ended(cx) {
            return Poll::Ready(Err(ended_error()));
        }
        if this.pending.len() + buf.len() <= WRITE_BUFFER {
            this.pending.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        // Full: send what is gathered first, so bytes leave in the order written.
        if let Err(e) = ready!(this.poll_send_pending(cx)) {
            return Poll::Ready(Err(e));
        }
        if buf.len() < WRITE_BUFFER {
            this.pending.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.poll_ended(cx) {
            return Poll::Ready(Err(ended_error()));
        }
        if let Err(e) = ready!(self.poll_send_pending(cx)) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = ready!(self.poll_send_pending(cx)) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let this = &mut *self;
        if this.poll_ended(cx) {
            return Poll::Ready(Err(ended_error()));
        }
        if this.pending.len() + total <= WRITE_BUFFER {
            for b in bufs {
                this.pending.extend_from_slice(b);
            }
            return Poll::Ready(Ok(total));
        }
        if let Err(e) = ready!(this.poll_send_pending(cx)) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }
}

#[async_trait]
impl<C: Send + Sync + 'static> Shutdown for FrontConn<C> {
    async fn shutdown(&mut self) {
        let _ = std::future::poll_fn(|cx| self.poll_send_pending(cx)).await;
        self.inner.shutdown().await
    }
}

crate::stream_wrap::forward_stream_digests!(impl<C> for FrontConn<C>);

#[async_trait]
impl<C: Send + Sync> Peek for FrontConn<C> {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        // Only checked bytes may be seen, and only those already in hand.
        if buf.len() <= self.releasable {
            buf.copy_from_slice(&self.buf[..buf.len()]);
            Ok(true)
        } else {
            Ok(false)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const LIMITS: FrontLimits = FrontLimits {
        head: HeadLimits {
            max_bytes: 1024,
            max_headers: 16,
        },
        header_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(5),
        max_body_bytes: 4096,
    };

    fn conn(limits: FrontLimits) -> (FrontConn<()>, DuplexStream) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        (FrontConn::new(Box::new(a), b"", limits, ()), b)
    }

    /// Reads what pingora would read for one request: until the conn stops releasing bytes.
    async fn released(c: &mut FrontConn<()>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let mut chunk = [0u8; 7];
            match tokio::time::timeout(Duration::from_millis(50), c.read(&mut chunk)).await {
                Ok(Ok(0)) | Err(_) => return Ok(out),
                Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    /// An upgraded connection given an end: a read parked on it is woken and fails when the end
    /// comes, and every later read and write fails too, bytes waiting included.
    #[tokio::test]
    async fn an_end_wakes_a_parked_read_and_fails_every_later_read_and_write() {
        let (mut c, mut client) = conn(LIMITS);
        client
            .write_all(
                b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            )
            .await
            .unwrap();
        c.next_head(Duration::from_secs(1)).await.unwrap().unwrap();
        released(&mut c).await.unwrap();
        assert!(c.upgraded());
        let (end, ended) = tokio::sync::oneshot::channel::<()>();
        c.end_when(Box::pin(async move {
            let _ = ended.await;
        }));
        // Before the end, the upgraded bytes pass.
        client.write_all(b"frame-1").await.unwrap();
        let mut got = [0u8; 7];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"frame-1");
        c.write_all(b"pong").await.unwrap();
        c.flush().await.unwrap();
        // Parked on a read nothing answers: the end wakes it.
        let parked = tokio::spawn(async move {
            let mut one = [0u8; 1];
            let read = c.read(&mut one).await;
            (c, read)
        });
        tokio::task::yield_now().await;
        end.send(()).unwrap();
        let (mut c, read) = tokio::time::timeout(Duration::from_secs(5), parked)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
        client.write_all(b"frame-2").await.unwrap();
        assert!(c.read(&mut got).await.is_err());
        assert!(c.write_all(b"late").await.is_err());
        assert!(c.flush().await.is_err());
    }

    #[tokio::test]
    async fn small_writes_leave_together_on_flush_and_before_the_next_head() {
        let (mut c, mut client) = conn(LIMITS);
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        c.next_head(Duration::from_secs(1)).await.unwrap().unwrap();
        released(&mut c).await.unwrap();
        // A head and a body, as pingora writes them: nothing leaves until the flush.
        c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
            .await
            .unwrap();
        c.write_all(b"ok").await.unwrap();
        let mut buf = [0u8; 128];
        let early = tokio::time::timeout(Duration::from_millis(50), client.read(&mut buf)).await;
        assert!(early.is_err(), "sent before the flush");
        c.flush().await.unwrap();
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        // Unflushed bytes still leave, in order, before the next request is read.
        c.write_all(b"tail").await.unwrap();
        client
            .write_all(b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        c.next_head(Duration::from_secs(1)).await.unwrap().unwrap();
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"tail");
        // A write larger than the buffer goes out after what was gathered, in order.
        c.write_all(b"first").await.unwrap();
        let big = vec![b'x'; WRITE_BUFFER * 2];
        c.write_all(&big).await.unwrap();
        c.flush().await.unwrap();
        let mut got = Vec::new();
        while got.len() < 5 + big.len() {
            let n = client.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&got[..5], b"first");
        assert!(got[5..].iter().all(|b| *b == b'x'));
    }

    #[tokio::test]
    async fn releases_one_request_at_a_time_and_keeps_the_next() {
        let (mut c, mut client) = conn(LIMITS);
        let one = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
        let two = b"POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        client
            .write_all(&[one.as_slice(), two].concat())
            .await
            .unwrap();
        let h = c.next_head(Duration::from_secs(1)).await.unwrap().unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        assert_eq!(released(&mut c).await.unwrap(), one);
        assert!(c.reusable());
        let h = c.next_head(Duration::from_secs(1)).await.unwrap().unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert_eq!(released(&mut c).await.unwrap(), two);
        drop(client);
        assert_eq!(c.next_head(Duration::from_secs(1)).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_chunk_declaring_more_than_the_body_limit_is_refused_before_its_data() {
        // Only the size line comes: the refusal must not wait for data that may never come.
        let (mut c, mut client) = conn(LIMITS);
        let req =
            b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n1000";
        client.write_all(req).await.unwrap();
        c.next_head(Duration::from_secs(1)).await.unwrap().unwrap();
        let err = released(&mut c).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(c.violation(), Some(Violation::BodyTooLarge));
        assert!(!c.reusable());
        // Exactly the limit, in two chunks, passes.
        let (mut c, mut client) = conn(LIMITS);
        let mut ok =
            b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n".to_vec();
        ok.extend_from_slice(&[b'a'; 0x800]);
        ok.extend_from_slice(b"\r\n800\r\n");
        ok.extend_from_slice(&[b'b'; 0x800]);
        ok.extend_from_slice(b"\r\n0\r\n\r\n");
        client.write_all(&ok).await.unwrap();
        c.next_head(Duration::from_secs(1)).await.unwrap().unwrap();
        assert_eq!(released(&mut c).await.unwrap(), ok);
        assert_eq!(c.violation(), None);
    }

    #[tokio::test]
    async fn a_bad_chunk_stops_the_connection_for_good() {
        let (mut c, mut client) = conn(LIMITS);
        let req = b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2;ext\nxx\r\n45\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";
        client.write_all(req).await.unwrap();
        c.next_head(Duration::from_secs(1)).await.unwrap().unwrap();
        let err = released(&mut c).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(matches!(c.violation(), Some(Violation::Chunked(_))));
        assert!(!c.reusable());
        // Nothing after the error is ever released.
        let mut buf = [0u8; 64];
        assert!(c.read(&mut buf).await.is_err());
    }

    #[tokio::test]
    async fn a_head_trickled_past_its_deadline_is_cut() {
        let limits = FrontLimits {
            header_timeout: Duration::from_millis(200),
            ..LIMITS
        };
        let (mut c, mut client) = conn(limits);
        let task = tokio::spawn(async move {
            for b in b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: " {
                client.write_all(&[*b]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            client
        });
        let got = c.next_head(Duration::from_secs(5)).await;
        assert_eq!(got, Err(Violation::HeadTimeout));
        drop(task.await);
    }

    #[tokio::test]
    async fn a_slow_body_is_cut_at_its_deadline() {
        let limits = FrontLimits {
            body_timeout: Duration::from_millis(100),
            ..LIMITS
        };
        let (mut c, mut client) = conn(limits);
        client
            .write_all(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nab")
            .await
            .unwrap();
        c.next_head(Duration::from_secs(1)).await.unwrap().unwrap();
        let mut all = Vec::new();
        let err = loop {
            let mut b = [0u8; 64];
            match c.read(&mut b).await {
                Ok(n) => all.extend_from_slice(&b[..n]),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(c.violation(), Some(Violation::BodyTimeout));
        assert!(all.ends_with(b"ab"));
    }

    #[tokio::test]
    async fn silence_between_requests_is_a_clean_end_and_a_huge_head_is_refused_early() {
        let (mut c, client) = conn(LIMITS);
        assert_eq!(c.next_head(Duration::from_millis(50)).await.unwrap(), None);
        drop(client);

        let (mut c, mut client) = conn(LIMITS);
        let huge = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 4000]].concat();
        client.write_all(&huge).await.unwrap();
        assert_eq!(
            c.next_head(Duration::from_secs(1)).await,
            Err(Violation::Head(HeadError::TooLarge))
        );
        assert!(
            c.buf.len() <= 1024 + READ_CHUNK,
            "never buffered far past the cap"
        );
    }

    #[tokio::test]
    async fn an_upgrade_passes_raw_bytes_and_is_never_reused() {
        let (mut c, mut client) = conn(LIMITS);
        client
            .write_all(b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x02hi")
            .await
            .unwrap();
        c.next_head(Duration::from_secs(1)).await.unwrap().unwrap();
        let got = released(&mut c).await.unwrap();
        assert!(got.ends_with(b"\x81\x02hi"));
        assert!(c.upgraded() && !c.reusable());
    }
}
