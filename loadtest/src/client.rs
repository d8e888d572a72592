//! A keep-alive HTTP/1.1 load client: `concurrency` connections, each sending requests back to
//! back until `requests` have been sent in total or the time limit passes. What a connection is
//! (plain TCP, or TLS inside a proxy tunnel) and whether it is kept is up to the [`Target`] and
//! [`Connections`]; [`run`] is plain TCP with keep-alive.

use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http1::{read_body, read_head};

/// How long one connect or one request/response exchange may take before it counts as an error.
/// A hung proxy must not hang the benchmark, and 10 s is far above any healthy loopback latency.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection gives up after this many I/O failures in a row: the target is down (say the
/// proxy crashed), and hammering a refused port until the time limit would only bury the cause.
/// An HTTP answer, even a refusal, shows the target is up and does not count towards it.
const MAX_CONSECUTIVE_FAILURES: usize = 50;

/// Where load connections come from and what is sent on them.
pub trait Target: Send + Sync + 'static {
    /// An open connection, ready for HTTP/1.1 requests.
    type Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Opens a connection for operation `op` (the index, from 0, of the request it carries
    /// first). Errors say what failed, e.g. `connect 127.0.0.1:80: Connection refused`.
    fn open(&self, op: usize) -> impl Future<Output = io::Result<Self::Conn>> + Send;

    /// The complete request of operation `op`.
    fn request(&self, op: usize) -> Cow<'_, [u8]>;

    /// Whether an answer with `status` counts as served (200 only, unless the row measures
    /// refusals).
    fn answered(&self, status: u16) -> bool {
        status == 200
    }
}

/// Plain TCP to `addr`, the same request every time.
#[derive(Debug, Clone)]
pub struct Plain {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The complete request.
    pub raw: Arc<Vec<u8>>,
    /// A refusal status that counts as an answer too (the row measures refusals), beside 200.
    pub also_answered: Option<u16>,
}

impl Target for Plain {
    type Conn = TcpStream;

    async fn open(&self, _op: usize) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("connect {}: {e}", self.addr)))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    fn request(&self, _op: usize) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.raw.as_slice())
    }

    fn answered(&self, status: u16) -> bool {
        status == 200 || Some(status) == self.also_answered
    }
}

/// Whether a connection carries many requests or one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connections {
    /// Keep-alive: each connection carries request after request. Opening it is not part of any
    /// request's latency.
    KeepAlive,
    /// Every operation opens a new connection, sends one request, reads the response and closes
    /// the connection. The latency is the whole operation, from before opening to the last
    /// response byte (closing is not included).
    PerRequest,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Completed requests (any status).
    pub requests: usize,
    /// Requests that failed or did not answer 200.
    pub errors: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// Latencies of successful requests, sorted.
    pub latencies: Vec<Duration>,
    /// What went wrong with the first failed request seen (status and body start, or the I/O
    /// error), so a broken proxy is reported with a reason rather than just a count.
    pub first_error: Option<String>,
}

impl RunResult {
    /// Requests per second.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0..=1) latency in milliseconds (NaN when nothing succeeded).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let idx = ((self.latencies.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        self.latencies
            .get(idx)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    }
}

/// Sends `raw` (a complete request) over `concurrency` keep-alive connections to `addr`.
pub async fn run(
    addr: SocketAddr,
    raw: Arc<Vec<u8>>,
    requests: usize,
    concurrency: usize,
    limit: Duration,
) -> RunResult {
    run_paced(addr, raw, requests, concurrency, limit, Duration::ZERO).await
}

/// As [`run`], but each connection starts a request at most every `interval`: a steady
/// `concurrency / interval` requests per second while the target keeps up.
pub async fn run_paced(
    addr: SocketAddr,
    raw: Arc<Vec<u8>>,
    requests: usize,
    concurrency: usize,
    limit: Duration,
    interval: Duration,
) -> RunResult {
    drive(
        Arc::new(Plain {
            addr,
            raw,
            also_answered: None,
        }),
        Connections::KeepAlive,
        requests,
        concurrency,
        limit,
        interval,
    )
    .await
}

/// Sends `requests` operations to `target` over `concurrency` concurrent connections (kept or
/// one per operation), stopping early at `limit`.
pub async fn run_target<T: Target>(
    target: Arc<T>,
    connections: Connections,
    requests: usize,
    concurrency: usize,
    limit: Duration,
) -> RunResult {
    drive(
        target,
        connections,
        requests,
        concurrency,
        limit,
        Duration::ZERO,
    )
    .await
}

async fn drive<T: Target>(
    target: Arc<T>,
    connections: Connections,
    requests: usize,
    concurrency: usize,
    limit: Duration,
    interval: Duration,
) -> RunResult {
    let issued = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + limit;
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (target, issued) = (target.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            worker(target, connections, issued, requests, deadline, interval).await
        }));
    }
    let mut result = RunResult {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        // `requests` may be a "until the time limit" sentinel; do not reserve for it.
        latencies: Vec::with_capacity(requests.min(1 << 20)),
        first_error: None,
    };
    for t in tasks {
        match t.await {
            Ok(w) => {
                result.requests += w.latencies.len() + w.errors;
                result.errors += w.errors;
                result.latencies.extend(w.latencies);
                if result.first_error.is_none() {
                    result.first_error = w.first_error;
                }
            }
            Err(e) => {
                result.errors += 1;
                result
                    .first_error
                    .get_or_insert_with(|| format!("load task failed: {e}"));
            }
        }
    }
    result.elapsed = started.elapsed();
    result.latencies.sort_unstable();
    result
}

/// One connection's share of a run.
struct WorkerResult {
    latencies: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
    consecutive_failures: usize,
}

impl WorkerResult {
    fn fail(&mut self, why: String) {
        self.errors += 1;
        self.consecutive_failures += 1;
        self.first_error.get_or_insert(why);
    }
}

/// Closes a connection politely (a TLS close_notify, then FIN), so the far end sees a clean end
/// rather than a truncated stream. Bounded: a hung peer cannot stall the run.
async fn close<C: AsyncWrite + Unpin>(mut conn: C) {
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.shutdown()).await;
}

async fn worker<T: Target>(
    target: Arc<T>,
    connections: Connections,
    issued: Arc<AtomicUsize>,
    total: usize,
    deadline: Instant,
    interval: Duration,
) -> WorkerResult {
    let mut out = WorkerResult {
        latencies: Vec::new(),
        errors: 0,
        first_error: None,
        consecutive_failures: 0,
    };
    let mut conn: Option<(T::Conn, Vec<u8>)> = None;
    loop {
        let op = issued.fetch_add(1, Ordering::Relaxed);
        if op >= total || Instant::now() >= deadline {
            break;
        }
        if out.consecutive_failures >= MAX_CONSECUTIVE_FAILURES {
            break;
        }
        let op_start = Instant::now();
        if conn.is_none() {
            match tokio::time::timeout(REQUEST_TIMEOUT, target.open(op)).await {
                Ok(Ok(c)) => conn = Some((c, Vec::with_capacity(16 * 1024))),
                Ok(Err(e)) => {
                    out.fail(e.to_string());
                    // Back off so a refused port does not turn into a busy loop.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(_) => {
                    out.fail(format!("no connection within {REQUEST_TIMEOUT:?}"));
                    continue;
                }
            }
        }
        let Some((stream, buf)) = conn.as_mut() else {
            continue;
        };
        let t0 = match connections {
            Connections::KeepAlive => Instant::now(),
            Connections::PerRequest => op_start,
        };
        let next_start = t0 + interval;
        let raw = target.request(op);
        let exchange = async {
            stream.write_all(&raw).await?;
            let head = read_head(stream, buf, false)
                .await?
                .ok_or_else(|| io::Error::other("connection closed before a response"))?;
            let body = read_body(stream, buf, &head).await?;
            let close = head
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
            Ok::<_, io::Error>((head.status, close, body))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(Ok((status, close, _))) if target.answered(status) => {
                out.latencies.push(t0.elapsed());
                out.consecutive_failures = 0;
                if close {
                    conn = None;
                }
            }
            Ok(Ok((status, close, body))) => {
                let snippet: String = String::from_utf8_lossy(&body).chars().take(200).collect();
                out.fail(format!("HTTP {status}: {snippet}"));
                out.consecutive_failures = 0;
                if close {
                    conn = None;
                }
            }
            Ok(Err(e)) => {
                out.fail(format!("{e}"));
                conn = None;
            }
            Err(_) => {
                out.fail(format!("no response within {REQUEST_TIMEOUT:?}"));
                conn = None;
            }
        }
        if connections == Connections::PerRequest {
            if let Some((c, _)) = conn.take() {
                close(c).await;
            }
        }
        if !interval.is_zero() {
            tokio::time::sleep_until(next_start.into()).await;
        }
    }
    if let Some((c, _)) = conn.take() {
        close(c).await;
    }
    out
}

/// One `GET` on a fresh connection; the body as text, or why it failed.
pub async fn get(addr: SocketAddr, path: &str) -> io::Result<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut buf = Vec::new();
        let head = read_head(&mut stream, &mut buf, false)
            .await?
            .ok_or_else(|| io::Error::other("connection closed before a response"))?;
        let body = read_body(&mut stream, &mut buf, &head).await?;
        if head.status != 200 {
            return Err(io::Error::other(format!("HTTP {}", head.status)));
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| io::Error::other(format!("no response within {REQUEST_TIMEOUT:?}")))?
}
