//! HTTPS through a proxy's `CONNECT` tunnels, the client side of the loadtest's HTTPS rows:
//! `CONNECT host:port`, the proxy's `200`, then a TLS handshake (SNI `host`) with whatever
//! answers inside the tunnel (an intercepting proxy's minted leaf), and HTTP/1.1 over it.
//! Also the TLS mock the tunnels lead to, counting the connections it accepts so a run can
//! tell how many upstream connections the proxy opened.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use tenant_proxy_loadtest::client::Target;
use tenant_proxy_loadtest::http1::{read_body, read_head};

/// Which host each operation's tunnel is opened to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hosts {
    /// Always this host.
    One(String),
    /// `{prefix}{op}.{domain}`: a host never used before, for every operation.
    Fresh {
        /// First label's prefix, e.g. `f` for `f0.llm.test`, `f1.llm.test`, …
        prefix: String,
        /// The parent domain, e.g. `llm.test`.
        domain: String,
    },
    /// `{prefix}{op % count}.{domain}`: `count` hosts in turn.
    Cycle {
        /// First label's prefix.
        prefix: String,
        /// The parent domain.
        domain: String,
        /// How many hosts (at least 1).
        count: usize,
    },
}

impl Hosts {
    /// The host of operation `op`.
    pub fn host(&self, op: usize) -> Cow<'_, str> {
        match self {
            Self::One(h) => Cow::Borrowed(h),
            Self::Fresh { prefix, domain } => Cow::Owned(format!("{prefix}{op}.{domain}")),
            Self::Cycle {
                prefix,
                domain,
                count,
            } => Cow::Owned(format!("{prefix}{}.{domain}", op % (*count).max(1))),
        }
    }

    /// Every host the first `ops` operations use, without repeats.
    pub fn distinct(&self, ops: usize) -> Vec<String> {
        let n = match self {
            Self::One(_) => ops.min(1),
            Self::Fresh { .. } => ops,
            Self::Cycle { count, .. } => ops.min((*count).max(1)),
        };
        (0..n).map(|op| self.host(op).into_owned()).collect()
    }
}

/// Client processes a resuming [`Tunnels`] stands for: enough that each sees at most a few
/// tunnels at once to one host at the load test's concurrency (64 / 16 = 4 < 8 tickets).
pub const RESUMING_CLIENTS: usize = 16;

/// Tunnels through the proxy at `proxy` to `host:port` (host per [`Hosts`]), TLS inside them
/// trusting one CA. Each operation sends `request(host:port)`, whose `Host` header must name
/// the tunnel's authority.
pub struct Tunnels {
    proxy: SocketAddr,
    port: u16,
    hosts: Hosts,
    /// One client, or for a resuming client [`RESUMING_CLIENTS`] of them, each with its own
    /// session store; operation `op` uses `connectors[op % len]`.
    connectors: Vec<TlsConnector>,
    request: fn(&str) -> Vec<u8>,
    /// The request when every operation has the same host.
    fixed: Option<Vec<u8>>,
    /// Handshakes completed: full, resumed.
    full: AtomicUsize,
    resumed: AtomicUsize,
}

impl fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnels")
            .field("proxy", &self.proxy)
            .field("port", &self.port)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

impl Tunnels {
    /// `ca_pem`: the CA the TLS server inside the tunnel must chain to (the proxy's
    /// interception CA). TLS session resumption is off: every tunnel pays a full handshake,
    /// as a new client would.
    pub fn new(
        proxy: SocketAddr,
        port: u16,
        hosts: Hosts,
        ca_pem: &str,
        request: fn(&str) -> Vec<u8>,
    ) -> io::Result<Self> {
        Self::build(proxy, port, hosts, ca_pem, request, false)
    }

    /// As [`Tunnels::new`], but the clients keep the TLS sessions (tickets) the proxy gives them
    /// and offer them in their next tunnels, as long-lived client processes do. rustls's
    /// in-memory store keeps up to 8 TLS 1.3 tickets per host and uses each once, so one store
    /// cannot serve 64 tunnels opened at once to one host: the operations are spread over
    /// [`RESUMING_CLIENTS`] clients (agent processes), each with its own store.
    pub fn resuming(
        proxy: SocketAddr,
        port: u16,
        hosts: Hosts,
        ca_pem: &str,
        request: fn(&str) -> Vec<u8>,
    ) -> io::Result<Self> {
        Self::build(proxy, port, hosts, ca_pem, request, true)
    }

    fn build(
        proxy: SocketAddr,
        port: u16,
        hosts: Hosts,
        ca_pem: &str,
        request: fn(&str) -> Vec<u8>,
        resume: bool,
    ) -> io::Result<Self> {
        let shared = tenant_proxy_loadtest::tls::client_config(ca_pem)?;
        let connectors = (0..if resume { RESUMING_CLIENTS } else { 1 })
            .map(|_| {
                let mut config = rustls::ClientConfig::clone(&shared);
                // A new store for each client (a clone of the config would share one).
                config.resumption = if resume {
                    rustls::client::Resumption::in_memory_sessions(256)
                } else {
                    rustls::client::Resumption::disabled()
                };
                TlsConnector::from(Arc::new(config))
            })
            .collect();
        let fixed = match &hosts {
            Hosts::One(h) => Some(request(&format!("{h}:{port}"))),
            _ => None,
        };
        Ok(Self {
            proxy,
            port,
            hosts,
            connectors,
            request,
            fixed,
            full: AtomicUsize::new(0),
            resumed: AtomicUsize::new(0),
        })
    }

    /// The same client (the same session store: rustls offers a session only under the config
    /// that stored it) with its handshake counts at zero, e.g. to measure after a warm-up.
    pub fn same_client(&self) -> Self {
        Self {
            proxy: self.proxy,
            port: self.port,
            hosts: self.hosts.clone(),
            connectors: self.connectors.clone(),
            request: self.request,
            fixed: self.fixed.clone(),
            full: AtomicUsize::new(0),
            resumed: AtomicUsize::new(0),
        }
    }

    /// Handshakes completed so far: `(full, resumed)`.
    pub fn handshakes(&self) -> (usize, usize) {
        (
            self.full.load(Ordering::Relaxed),
            self.resumed.load(Ordering::Relaxed),
        )
    }
}

impl Target for Tunnels {
    type Conn = TlsStream<TcpStream>;

    async fn open(&self, op: usize) -> io::Result<Self::Conn> {
        let connector = &self.connectors[op % self.connectors.len()];
        let tls = open_tunnel(self.proxy, &self.hosts.host(op), self.port, connector).await?;
        let counter = match tls.get_ref().1.handshake_kind() {
            Some(rustls::HandshakeKind::Resumed) => &self.resumed,
            _ => &self.full,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(tls)
    }

    fn request(&self, op: usize) -> Cow<'_, [u8]> {
        match &self.fixed {
            Some(raw) => Cow::Borrowed(raw.as_slice()),
            None => Cow::Owned((self.request)(&format!(
                "{}:{}",
                self.hosts.host(op),
                self.port
            ))),
        }
    }
}

/// Opens a tunnel to `host:port` through the proxy at `proxy` and completes the TLS handshake
/// inside it (SNI `host`). Errors name the step that failed: connecting, the proxy's refusal
/// (status and body start) or the handshake.
pub async fn open_tunnel(
    proxy: SocketAddr,
    host: &str,
    port: u16,
    connector: &TlsConnector,
) -> io::Result<TlsStream<TcpStream>> {
    let authority = format!("{host}:{port}");
    let context = |step: &str, e: io::Error| {
        io::Error::new(e.kind(), format!("{step} (CONNECT {authority}): {e}"))
    };
    let mut tcp = TcpStream::connect(proxy)
        .await
        .map_err(|e| context(&format!("connect {proxy}"), e))?;
    let _ = tcp.set_nodelay(true);
    tcp.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| context("sending CONNECT", e))?;
    let mut buf = Vec::new();
    let head = read_head(&mut tcp, &mut buf, false)
        .await
        .map_err(|e| context("reading the CONNECT answer", e))?
        .ok_or_else(|| {
            io::Error::other(format!(
                "CONNECT {authority}: the proxy closed the connection without answering"
            ))
        })?;
    if head.status != 200 {
        let body = read_body(&mut tcp, &mut buf, &head)
            .await
            .unwrap_or_default();
        let snippet: String = String::from_utf8_lossy(&body).chars().take(200).collect();
        return Err(io::Error::other(format!(
            "CONNECT {authority}: HTTP {}: {snippet}",
            head.status
        )));
    }
    if !buf.is_empty() {
        return Err(io::Error::other(format!(
            "CONNECT {authority}: {} unexpected bytes after the 200 answer",
            buf.len()
        )));
    }
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("`{host}`: {e}")))?;
    connector
        .connect(name, tcp)
        .await
        .map_err(|e| context("TLS handshake inside the tunnel", e))
}

/// Serves the mock over TLS on `listener` (as `tls::serve_mock_tls`), adding one to
/// `accepted` for every connection accepted. Runs until the task is dropped.
pub async fn serve_mock_tls_counted(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    accepted: Arc<AtomicUsize>,
) -> io::Result<()> {
    let acceptor = TlsAcceptor::from(config);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                accepted.fetch_add(1, Ordering::Relaxed);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    if let Ok(tls) = acceptor.accept(stream).await {
                        let _ = tenant_proxy_loadtest::mock::serve_stream(tls).await;
                    }
                });
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use tenant_proxy_loadtest::client::{run_target, Connections};
    use tenant_proxy_loadtest::tls::{server_config, TestCa};

    fn chat(authority: &str) -> Vec<u8> {
        let body = r#"{"model":"m","max_tokens":3}"#;
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {authority}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// A CONNECT proxy that does not intercept: answers 200 (or `refuse`) and splices the
    /// tunnel to `upstream`. Records every CONNECT target.
    async fn splicing_proxy(
        upstream: SocketAddr,
        refuse: Option<&'static str>,
    ) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let (mut client, _) = listener.accept().await.unwrap();
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let head = read_head(&mut client, &mut buf, true)
                        .await
                        .unwrap()
                        .unwrap();
                    assert_eq!(head.method, "CONNECT");
                    log.lock().unwrap().push(head.target.clone());
                    if let Some(answer) = refuse {
                        client.write_all(answer.as_bytes()).await.unwrap();
                        return;
                    }
                    client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .unwrap();
                    let mut up = TcpStream::connect(upstream).await.unwrap();
                    up.write_all(&buf).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                });
            }
        });
        (addr, seen)
    }

    async fn tls_mock(ca: &TestCa) -> (SocketAddr, Arc<AtomicUsize>) {
        let pair = ca.server(&["llm.test", "*.llm.test"]).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        tokio::spawn(serve_mock_tls_counted(
            listener,
            server_config(&pair).unwrap(),
            accepted.clone(),
        ));
        (addr, accepted)
    }

    #[test]
    fn hosts_name_each_operation() {
        let one = Hosts::One("llm.test".into());
        assert_eq!(one.host(7), "llm.test");
        assert_eq!(one.distinct(5), ["llm.test"]);
        assert!(one.distinct(0).is_empty());
        let fresh = Hosts::Fresh {
            prefix: "f".into(),
            domain: "llm.test".into(),
        };
        assert_eq!(fresh.host(12), "f12.llm.test");
        assert_eq!(
            fresh.distinct(3),
            ["f0.llm.test", "f1.llm.test", "f2.llm.test"]
        );
        let cycle = Hosts::Cycle {
            prefix: "r".into(),
            domain: "llm.test".into(),
            count: 3,
        };
        assert_eq!(cycle.host(4), "r1.llm.test");
        assert_eq!(cycle.distinct(10).len(), 3);
    }

    #[tokio::test]
    async fn keep_alive_and_per_request_tunnels() {
        let ca = TestCa::new("tunnel test CA").unwrap();
        let (mock, accepted) = tls_mock(&ca).await;
        let (proxy, seen) = splicing_proxy(mock, None).await;

        let kept = Tunnels::new(
            proxy,
            mock.port(),
            Hosts::One("llm.test".into()),
            &ca.cert_pem,
            chat,
        )
        .unwrap();
        let r = run_target(
            Arc::new(kept),
            Connections::KeepAlive,
            40,
            2,
            Duration::from_secs(20),
        )
        .await;
        assert_eq!((r.requests, r.errors), (40, 0), "{:?}", r.first_error);
        assert_eq!(seen.lock().unwrap().len(), 2, "one tunnel per connection");
        assert_eq!(accepted.load(Ordering::Relaxed), 2);

        let fresh = Tunnels::new(
            proxy,
            mock.port(),
            Hosts::Fresh {
                prefix: "f".into(),
                domain: "llm.test".into(),
            },
            &ca.cert_pem,
            chat,
        )
        .unwrap();
        let r = run_target(
            Arc::new(fresh),
            Connections::PerRequest,
            10,
            3,
            Duration::from_secs(20),
        )
        .await;
        assert_eq!((r.requests, r.errors), (10, 0), "{:?}", r.first_error);
        let mut targets = seen.lock().unwrap().split_off(2);
        targets.sort();
        let mut want: Vec<String> = (0..10)
            .map(|i| format!("f{i}.llm.test:{}", mock.port()))
            .collect();
        want.sort();
        assert_eq!(targets, want, "a new tunnel, and a new name, per operation");
        assert_eq!(accepted.load(Ordering::Relaxed), 12);
    }

    #[tokio::test]
    async fn a_resuming_client_resumes_and_counts_its_handshakes() {
        let ca = TestCa::new("tunnel test CA").unwrap();
        let (mock, _) = tls_mock(&ca).await;
        let (proxy, _) = splicing_proxy(mock, None).await;
        let one = || Hosts::One("llm.test".into());
        let warm = Tunnels::resuming(proxy, mock.port(), one(), &ca.cert_pem, chat).unwrap();
        // One tunnel per client process, so each store holds a session.
        let r = run_target(
            Arc::new(warm.same_client()),
            Connections::PerRequest,
            RESUMING_CLIENTS,
            1,
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(r.errors, 0, "{:?}", r.first_error);
        let measured = Arc::new(warm.same_client());
        let r = run_target(
            measured.clone(),
            Connections::PerRequest,
            6,
            1,
            Duration::from_secs(20),
        )
        .await;
        assert_eq!((r.requests, r.errors), (6, 0), "{:?}", r.first_error);
        assert_eq!(measured.handshakes(), (0, 6), "every tunnel resumed");
        assert_eq!(warm.handshakes(), (0, 0), "counts are per client value");

        // Resumption off: every tunnel a full handshake.
        let plain = Arc::new(Tunnels::new(proxy, mock.port(), one(), &ca.cert_pem, chat).unwrap());
        let r = run_target(
            plain.clone(),
            Connections::PerRequest,
            3,
            1,
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(r.errors, 0, "{:?}", r.first_error);
        assert_eq!(plain.handshakes(), (3, 0));
    }

    #[tokio::test]
    async fn refusals_and_untrusted_certificates_are_reported() {
        let ca = TestCa::new("tunnel test CA").unwrap();
        let (mock, _) = tls_mock(&ca).await;
        let (refusing, _) = splicing_proxy(
            mock,
            Some("HTTP/1.1 403 Forbidden\r\nContent-Length: 15\r\n\r\npolicy_denied!!"),
        )
        .await;
        let t = Tunnels::new(
            refusing,
            443,
            Hosts::One("llm.test".into()),
            &ca.cert_pem,
            chat,
        )
        .unwrap();
        let r = run_target(
            Arc::new(t),
            Connections::PerRequest,
            3,
            1,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!((r.requests, r.errors), (3, 3));
        let why = r.first_error.unwrap();
        assert!(
            why.contains("CONNECT llm.test:443: HTTP 403: policy_denied"),
            "{why}"
        );

        let (proxy, _) = splicing_proxy(mock, None).await;
        let other = TestCa::new("someone else").unwrap();
        let t = Tunnels::new(
            proxy,
            mock.port(),
            Hosts::One("llm.test".into()),
            &other.cert_pem,
            chat,
        )
        .unwrap();
        let r = run_target(
            Arc::new(t),
            Connections::KeepAlive,
            2,
            1,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(r.errors, 2);
        let why = r.first_error.unwrap();
        assert!(why.contains("TLS handshake inside the tunnel"), "{why}");
    }
}
