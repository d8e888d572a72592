//! A keep-alive HTTP/1.1 load client: `concurrency` connections, each sending the same request
//! back to back until `requests` have been sent in total or the time limit passes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::http1::{read_body, read_head};

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
}

impl RunResult {
    /// Requests per second.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0..=1) latency in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let idx = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[idx].as_secs_f64() * 1000.0
    }
}

/// Sends `raw` (a complete request) over `concurrency` keep-alive connections to `addr`.
pub async fn run(
    addr: std::net::SocketAddr,
    raw: Arc<Vec<u8>>,
    requests: usize,
    concurrency: usize,
    limit: Duration,
) -> RunResult {
    let issued = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + limit;
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (raw, issued) = (raw.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            worker(addr, raw, issued, requests, deadline).await
        }));
    }
    let mut result = RunResult {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::with_capacity(requests),
    };
    for t in tasks {
        if let Ok((lat, errors)) = t.await {
            result.requests += lat.len() + errors;
            result.errors += errors;
            result.latencies.extend(lat);
        }
    }
    result.elapsed = started.elapsed();
    result.latencies.sort();
    result
}

async fn worker(
    addr: std::net::SocketAddr,
    raw: Arc<Vec<u8>>,
    issued: Arc<AtomicUsize>,
    total: usize,
    deadline: Instant,
) -> (Vec<Duration>, usize) {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut conn: Option<(TcpStream, Vec<u8>)> = None;
    while issued.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < deadline {
        if conn.is_none() {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    conn = Some((s, Vec::with_capacity(16 * 1024)));
                }
                Err(_) => {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some((stream, buf)) = conn.as_mut() else {
            continue;
        };
        let t0 = Instant::now();
        let ok = async {
            stream.write_all(&raw).await?;
            let head = read_head(stream, buf, false)
                .await?
                .ok_or_else(|| std::io::Error::other("closed"))?;
            read_body(stream, buf, &head).await?;
            Ok::<_, std::io::Error>((
                head.status,
                head.header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close")),
            ))
        }
        .await;
        match ok {
            Ok((200, close)) => {
                latencies.push(t0.elapsed());
                if close {
                    conn = None;
                }
            }
            Ok((_, close)) => {
                errors += 1;
                if close {
                    conn = None;
                }
            }
            Err(_) => {
                errors += 1;
                conn = None;
            }
        }
    }
    (latencies, errors)
}
