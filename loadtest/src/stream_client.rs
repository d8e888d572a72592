//! A load client for streamed (SSE) answers that times the first event: when its first byte
//! reaches the client, measured from the request (time to first byte) and from the instant the
//! mock wrote it ([`crate::mock::FirstEvents`], same process), which is the delay a proxy adds
//! to relaying a stream's start. Keep-alive connections, one stream at a time each, bounded in
//! count and time like [`crate::client`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::client::REQUEST_TIMEOUT;
use crate::http1::{read_body, read_head};
use crate::mock::FirstEvents;

/// Builds the complete request of a stream from its id (sent as `x-mock-stream-id`).
pub type Request = Arc<dyn Fn(&str) -> Vec<u8> + Send + Sync>;

/// What a streaming run measured.
#[derive(Debug, Clone, Default)]
pub struct StreamRun {
    /// Streams completed (any outcome).
    pub streams: usize,
    /// Streams that failed, did not answer 200, or did not end with `data: [DONE]`.
    pub errors: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// Request written → first byte of the first event read, per successful stream, sorted.
    pub ttfb: Vec<Duration>,
    /// First event written by the mock → its first byte read by the client, sorted (streams
    /// whose write the mock did not note are left out).
    pub relay: Vec<Duration>,
    /// `data:` events received in all successful streams (`[DONE]` included).
    pub events: usize,
    /// Of those, events carrying a `usage` object.
    pub usage_events: usize,
    /// Why the first failed stream failed.
    pub first_error: Option<String>,
}

impl StreamRun {
    /// The `q` quantile (0..=1) of `of` in milliseconds (NaN when empty).
    pub fn quantile_ms(of: &[Duration], q: f64) -> f64 {
        if of.is_empty() {
            return f64::NAN;
        }
        let idx = ((of.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        of.get(idx).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    }
}

/// Notes when the last read that returned data completed.
struct Stamped<S> {
    inner: S,
    last_read: Option<Instant>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Stamped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.last_read = Some(Instant::now());
        }
        polled
    }
}

/// One stream's timing and events.
struct Streamed {
    ttfb: Duration,
    first_byte: Instant,
    events: Vec<String>,
}

/// Sends one request on `conn` and reads its streamed answer.
async fn stream_once(
    conn: &mut Stamped<TcpStream>,
    buf: &mut Vec<u8>,
    raw: &[u8],
) -> io::Result<Streamed> {
    let sent = Instant::now();
    conn.inner.write_all(raw).await?;
    conn.last_read = None;
    let head = read_head(conn, buf, false)
        .await?
        .ok_or_else(|| io::Error::other("connection closed before a response"))?;
    if head.status != 200 {
        let body = read_body(conn, buf, &head).await.unwrap_or_default();
        let snippet: String = String::from_utf8_lossy(&body).chars().take(200).collect();
        return Err(io::Error::other(format!("HTTP {}: {snippet}", head.status)));
    }
    // The read that completed the head may have brought the first event too; if not, the next
    // read is the first byte of the body.
    if buf.is_empty() {
        let mut chunk = [0u8; 16 * 1024];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::other("stream ended after the head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let first_byte = conn
        .last_read
        .ok_or_else(|| io::Error::other("no read timed"))?;
    let body = read_body(conn, buf, &head).await?;
    let text = String::from_utf8_lossy(&body);
    let events: Vec<String> = text
        .split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data:").map(|d| d.trim().to_string()))
        .collect();
    if events.last().map(String::as_str) != Some("[DONE]") {
        let snippet: String = text.chars().take(200).collect();
        return Err(io::Error::other(format!(
            "stream did not end with `data: [DONE]`: {snippet}"
        )));
    }
    Ok(Streamed {
        ttfb: first_byte.saturating_duration_since(sent),
        first_byte,
        events,
    })
}

/// Sends `streams` requests (built by `request` from ids `{id_prefix}{n}`) over `concurrency`
/// keep-alive connections to `addr`, stopping early at `limit`.
pub async fn run(
    addr: SocketAddr,
    request: Request,
    first_events: FirstEvents,
    id_prefix: &str,
    streams: usize,
    concurrency: usize,
    limit: Duration,
) -> StreamRun {
    let issued = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + limit;
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (issued, request, first_events) =
            (issued.clone(), request.clone(), first_events.clone());
        let prefix = id_prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut out = StreamRun::default();
            let mut conn: Option<(Stamped<TcpStream>, Vec<u8>)> = None;
            loop {
                let op = issued.fetch_add(1, Ordering::Relaxed);
                if op >= streams || Instant::now() >= deadline || out.errors >= 50 {
                    break;
                }
                let id = format!("{prefix}{op}");
                let raw = request(&id);
                let exchange = async {
                    if conn.is_none() {
                        let s = TcpStream::connect(addr).await?;
                        s.set_nodelay(true)?;
                        conn = Some((
                            Stamped {
                                inner: s,
                                last_read: None,
                            },
                            Vec::with_capacity(16 * 1024),
                        ));
                    }
                    let (c, buf) = conn
                        .as_mut()
                        .ok_or_else(|| io::Error::other("no connection"))?;
                    stream_once(c, buf, &raw).await
                };
                out.streams += 1;
                match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
                    Ok(Ok(s)) => {
                        out.ttfb.push(s.ttfb);
                        if let Some(written) = first_events.take(&id) {
                            out.relay
                                .push(s.first_byte.saturating_duration_since(written));
                        }
                        out.events += s.events.len();
                        out.usage_events += s
                            .events
                            .iter()
                            .filter(|e| {
                                serde_json::from_str::<serde_json::Value>(e)
                                    .is_ok_and(|v| v["usage"].is_object())
                            })
                            .count();
                    }
                    Ok(Err(e)) => {
                        out.errors += 1;
                        out.first_error.get_or_insert(e.to_string());
                        conn = None;
                        let _ = first_events.take(&id);
                    }
                    Err(_) => {
                        out.errors += 1;
                        out.first_error
                            .get_or_insert(format!("no stream within {REQUEST_TIMEOUT:?}"));
                        conn = None;
                        let _ = first_events.take(&id);
                    }
                }
            }
            out
        }));
    }
    let mut total = StreamRun::default();
    for t in tasks {
        match t.await {
            Ok(w) => {
                total.streams += w.streams;
                total.errors += w.errors;
                total.ttfb.extend(w.ttfb);
                total.relay.extend(w.relay);
                total.events += w.events;
                total.usage_events += w.usage_events;
                if total.first_error.is_none() {
                    total.first_error = w.first_error;
                }
            }
            Err(e) => {
                total.errors += 1;
                total
                    .first_error
                    .get_or_insert_with(|| format!("stream task failed: {e}"));
            }
        }
    }
    total.elapsed = started.elapsed();
    total.ttfb.sort_unstable();
    total.relay.sort_unstable();
    total
}
