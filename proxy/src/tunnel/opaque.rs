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

use super::hello_watch::{HelloWatch, Refusal, Verdict};

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
    /// The relay was stopped before the client's first bytes went up, as `vet` asked.
    pub vetoed: bool,
    /// The relay was stopped because the client's handshake after its first hello named
    /// another host, or could not be read (see [`super::hello_watch`]).
    pub hello_refused: Option<Refusal>,
}

/// Tells what a client's first bytes are: `Some(true)` stops the relay, `Some(false)` lets
/// them through, `None` waits for more (see [`relay`]).
pub type Vet = fn(&[u8]) -> Option<bool>;

/// Relays until both sides are done, nothing moves for `idle`, or `end` completes (then both
/// connections are closed, whatever was in flight, and `end`'s value is returned).
///
/// With `vet`, the client's first bytes are held (the upstream's still flow down) until `vet`
/// tells what they are: `Some(false)` lets them and the rest through, `Some(true)` ends the
/// relay with nothing of them sent (`vetoed`), `None` waits for more of them. With `watch`, the
/// client's bytes after its first ClientHello are held while the watch asks
/// ([`HelloWatch`]).
pub async fn relay<E: Future + Unpin>(
    mut client: Stream,
    mut upstream: TcpStream,
    early: Bytes,
    idle: Duration,
    mut end: E,
    vet: Option<Vet>,
    mut watch: Option<HelloWatch>,
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
    let mut vetoed = false;
    let mut hello_refused = None;
    // The client closed its side while the watch held its bytes: the upstream's write side is
    // shut once they went up.
    let mut shut_up_when_passed = false;
    // The client's first bytes while `vet` has not told what they are.
    let mut held: Option<Vec<u8>> = vet.map(|_| Vec::new());
    let mut from_client = vec![0u8; BUF];
    let mut from_upstream = vec![0u8; BUF];
    let (mut client_open, mut upstream_open) = (true, true);
    while client_open || upstream_open {
        // Reads are cancel-safe: a read that loses the race has consumed nothing.
        tokio::select! {
            r = client.read(&mut from_client), if client_open => match r {
                Ok(0) => {
                    client_open = false;
                    // The client closed before its first bytes could be told: no request or
                    // handshake can follow them any more, so they go up as they came.
                    if let Some(first) = held.take().filter(|first| !first.is_empty()) {
                        if upstream.write_all(&first).await.is_ok() {
                            up += first.len() as u64;
                        }
                    }
                    if watch.as_ref().is_some_and(|w| !w.done()) {
                        shut_up_when_passed = true;
                    } else {
                        let _ = upstream.shutdown().await;
                    }
                }
                // A broken client connection (or one cut at shutdown, see `crate::drain`) takes
                // nothing more: waiting on the upstream would only hold the tunnel's record.
                Err(_) => {
                    client_failed = true;
                    break;
                }
                Ok(n) => {
                    let mut vetted = None;
                    if let (Some(first), Some(vet)) = (held.as_mut(), vet) {
                        first.extend_from_slice(&from_client[..n]);
                        match vet(first) {
                            None => continue,
                            Some(true) => {
                                vetoed = true;
                                break;
                            }
                            Some(false) => vetted = held.take(),
                        }
                    }
                    let chunk = vetted.as_deref().unwrap_or(&from_client[..n]);
                    let watched = match watch.as_mut().filter(|w| !w.done()) {
                        Some(w) => match w.client_sent(chunk) {
                            Verdict::Hold => continue,
                            Verdict::Cut(why) => {
                                hello_refused = Some(why);
                                break;
                            }
                            Verdict::Pass(held) => Some(held),
                        },
                        None => None,
                    };
                    let chunk = watched.as_deref().unwrap_or(chunk);
                    if upstream.write_all(chunk).await.is_err() {
                        break;
                    }
                    up += chunk.len() as u64;
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
                    if let Some(w) = watch.as_mut().filter(|w| !w.done()) {
                        match w.server_sent(&from_upstream[..n]) {
                            Verdict::Hold => {}
                            Verdict::Cut(why) => {
                                hello_refused = Some(why);
                                break;
                            }
                            Verdict::Pass(held) => {
                                if upstream.write_all(&held).await.is_err() {
                                    break;
                                }
                                up += held.len() as u64;
                                if shut_up_when_passed {
                                    let _ = upstream.shutdown().await;
                                }
                            }
                        }
                    }
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
        vetoed,
        hello_refused,
    };
    (relayed, ended)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    /// A client, a relay and an origin on loopback. The origin waits `delay`, writes `first`,
    /// then reads to the end and returns what came up; the relay starts with `early` sent up.
    async fn relayed(
        delay: Duration,
        first: Vec<u8>,
        early: Bytes,
        vet: Option<Vet>,
        watch: Option<HelloWatch>,
    ) -> (
        TcpStream,
        JoinHandle<(Relayed, Option<()>)>,
        JoinHandle<Vec<u8>>,
    ) {
        let upstream_side = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_side = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (up_addr, proxy_addr) = (
            upstream_side.local_addr().unwrap(),
            proxy_side.local_addr().unwrap(),
        );
        let origin = tokio::spawn(async move {
            let (mut s, _) = upstream_side.accept().await.unwrap();
            tokio::time::sleep(delay).await;
            s.write_all(&first).await.unwrap();
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got).await;
            got
        });
        let client = TcpStream::connect(proxy_addr).await.unwrap();
        let (accepted, _) = proxy_side.accept().await.unwrap();
        let upstream = TcpStream::connect(up_addr).await.unwrap();
        let stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(accepted));
        let relay = tokio::spawn(relay(
            stream,
            upstream,
            early,
            Duration::from_secs(5),
            std::future::pending::<()>(),
            vet,
            watch,
        ));
        (client, relay, origin)
    }

    const LATE: Option<Vet> = Some(crate::transparent::sniff::speaks_first_late as Vet);

    /// A relay that vets the client's first bytes: the upstream's banner flows down before
    /// them, a ClientHello-like first byte stops the relay with nothing of it sent up, and
    /// anything else goes up whole, held bytes first.
    #[tokio::test]
    async fn a_vetted_relay_holds_the_clients_first_bytes_until_told() {
        for (first, vetoed) in [(&b"\x16\x03\x01"[..], true), (&b"EHLO me\r\n"[..], false)] {
            let banner = b"220 banner\r\n".to_vec();
            let (mut client, relay, origin) =
                relayed(Duration::ZERO, banner, Bytes::new(), LATE, None).await;
            let mut banner = [0u8; 12];
            client.read_exact(&mut banner).await.unwrap();
            assert_eq!(&banner, b"220 banner\r\n");
            // Sent in two parts: the first alone cannot be told yet (an upper-case start).
            client.write_all(&first[..1]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            client.write_all(&first[1..]).await.unwrap();
            if !vetoed {
                client.shutdown().await.unwrap();
            }
            let (relayed, _) = relay.await.unwrap();
            assert_eq!(relayed.vetoed, vetoed, "{first:?}");
            drop(client);
            let got = origin.await.unwrap();
            if vetoed {
                assert!(got.is_empty(), "{got:?}");
            } else {
                assert_eq!(got, first, "held bytes first, whole");
                assert_eq!(relayed.up, first.len() as u64);
            }
        }
    }

    /// A client that sends its hello and more, then closes its side before the server answers:
    /// what was held goes up once the server's first answer comes, then the upstream's side is
    /// closed (nothing held is lost).
    #[tokio::test]
    async fn held_bytes_go_up_after_the_clients_close() {
        let hello = crate::transparent::sniff::client_hello_for("pinned.test");
        // A ServerHello that asks for no retry.
        let mut server_hello = vec![
            0x16, 0x03, 0x03, 0x00, 0x2a, 0x02, 0x00, 0x00, 0x26, 0x03, 0x03,
        ];
        server_hello.extend_from_slice(&[7; 32]);
        let mut early = hello.clone();
        early.extend_from_slice(b"\x17\x03\x03\x00\x02hi");
        let (first, watch) = HelloWatch::after_first_hello(&Bytes::from(early)).unwrap();
        let (mut client, relay, origin) = relayed(
            Duration::from_millis(100),
            server_hello,
            first,
            None,
            Some(watch),
        )
        .await;
        client.write_all(b"\x17\x03\x03\x00\x02yo").await.unwrap();
        client.shutdown().await.unwrap();
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer).await;
        let (relayed, _) = relay.await.unwrap();
        let got = origin.await.unwrap();
        let mut want = hello;
        want.extend_from_slice(b"\x17\x03\x03\x00\x02hi\x17\x03\x03\x00\x02yo");
        assert_eq!(got, want);
        assert_eq!(relayed.hello_refused, None);
    }

    /// A late speaker that closes its side before its first bytes could be told: they go up as
    /// they came (no request or handshake can follow them), not lost.
    #[tokio::test]
    async fn undecided_first_bytes_go_up_at_the_clients_close() {
        let (mut client, relay, origin) =
            relayed(Duration::ZERO, Vec::new(), Bytes::new(), LATE, None).await;
        client.write_all(b"QUIT").await.unwrap();
        client.shutdown().await.unwrap();
        let _ = client.read_to_end(&mut Vec::new()).await;
        let (relayed, _) = relay.await.unwrap();
        assert!(!relayed.vetoed);
        assert_eq!(origin.await.unwrap(), b"QUIT");
    }
}
