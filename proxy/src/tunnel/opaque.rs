//! Opaque tunnels: bytes relayed both ways to the address the egress guard checked, counted,
//! and closed after an idle period, or when the proxy ends them (their identity no longer
//! accepted). Half-closes are passed on, so request/response protocols that signal the end of
//! a request with EOF still work.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use pingora::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BUF: usize = 16 * 1024;

/// What a relay moved, and how it ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relayed {
    /// Bytes sent up (client → upstream, the early bytes included).
    pub up: u64,
    /// Bytes sent down.
    pub down: u64,
    /// The client's connection failed rather than closed: broken, or cut at shutdown.
    pub client_failed: bool,
}

/// Relays until both sides are done, nothing moves for `idle`, or `end` completes (then both
/// connections are closed, whatever was in flight, and `end`'s value is returned).
pub async fn relay<E: Future + Unpin>(
    mut client: Stream,
    mut upstream: TcpStream,
    early: Bytes,
    idle: Duration,
    mut end: E,
) -> (Relayed, Option<E::Output>) {
    let (mut up, mut down) = (0u64, 0u64);
    if !early.is_empty() {
        if upstream.write_all(&early).await.is_err() {
            return (Relayed::default(), None);
        }
        up += early.len() as u64;
    }
    let mut ended = None;
    let mut client_failed = false;
    let mut from_client = vec![0u8; BUF];
    let mut from_upstream = vec![0u8; BUF];
    let (mut client_open, mut upstream_open) = (true, true);
    while client_open || upstream_open {
        // Reads are cancel-safe: a read that loses the race has consumed nothing.
        tokio::select! {
            r = client.read(&mut from_client), if client_open => match r {
                Ok(0) => {
                    client_open = false;
                    let _ = upstream.shutdown().await;
                }
                // A broken client connection (or one cut at shutdown, see `crate::drain`) takes
                // nothing more: waiting on the upstream would only hold the tunnel's record.
                Err(_) => {
                    client_failed = true;
                    break;
                }
                Ok(n) => {
                    if upstream.write_all(&from_client[..n]).await.is_err() {
                        break;
                    }
                    up += n as u64;
                }
            },
            r = upstream.read(&mut from_upstream), if upstream_open => match r {
                Ok(0) | Err(_) => {
                    upstream_open = false;
                    let _ = client.shutdown().await;
                }
                Ok(n) => {
                    if client.write_all(&from_upstream[..n]).await.is_err()
                        || client.flush().await.is_err()
                    {
                        client_failed = true;
                        break;
                    }
                    down += n as u64;
                }
            },
            _ = tokio::time::sleep(idle) => break,
            why = &mut end => {
                ended = Some(why);
                break;
            }
        }
    }
    let relayed = Relayed {
        up,
        down,
        client_failed,
    };
    (relayed, ended)
}
