//! Listening sockets, bound by tenant-proxy itself before the server starts.
//!
//! pingora binds a service's address when the service starts, in its own thread, and retries a
//! taken port for about 30 s before every service thread panics, leaving a process with no
//! listeners. Binding here first turns a taken port into one clear error before anything else
//! starts, lets a listener ask for port 0 (the address actually bound is reported), and keeps the
//! accept loop ours.
//!
//! Shutdown is the proxy's own ([`crate::drain`]): a service stops accepting when the drain
//! begins, and every connection it accepts can be cut when the drain runs out of time.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::SocketDigest;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::Service;

use crate::drain::Drain;

/// A TCP socket bound and listening, not yet accepting.
#[derive(Debug)]
pub struct Bound {
    listener: std::net::TcpListener,
    /// The address actually bound (port 0 resolved).
    pub addr: SocketAddr,
}

/// Binds `addr` now. A taken port is an error here, naming the address.
pub fn bind(addr: SocketAddr) -> std::io::Result<Bound> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    Ok(Bound { listener, addr })
}

/// A pingora service accepting on a [`Bound`] socket and handing each connection to `app`.
pub struct ListenService<A> {
    name: String,
    bound: Option<Bound>,
    app: Option<A>,
    drain: Arc<Drain>,
    /// Record each connection's original destination (a transparent listener).
    capture: bool,
}

impl<A> std::fmt::Debug for ListenService<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenService")
            .field("name", &self.name)
            .field("addr", &self.bound.as_ref().map(|b| b.addr))
            .finish_non_exhaustive()
    }
}

impl<A: ServerApp + Send + Sync + 'static> ListenService<A> {
    /// A service named `name` serving `app` on `bound` until `drain` begins.
    pub fn new(name: String, bound: Bound, app: A, drain: Arc<Drain>) -> Self {
        Self {
            name,
            bound: Some(bound),
            app: Some(app),
            drain,
            capture: false,
        }
    }

    /// Records each connection's original destination in its socket digest
    /// (`original_dst`), for a transparent listener; a connection whose destination cannot be
    /// recovered has none there.
    pub fn capturing(mut self) -> Self {
        self.capture = true;
        self
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> Service for ListenService<A> {
    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        // pingora's own shutdown comes after the drain: too late to stop accepting, and what is
        // served under it is dropped without its record (see `crate::drain`).
        _pingora_shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let mut shutdown = self.drain.watch();
        let (Some(bound), Some(app)) = (self.bound.take(), self.app.take()) else {
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(bound.listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(service = %self.name, error = %e, "cannot accept on the bound socket");
                return;
            }
        };
        let app = Arc::new(app);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                    continue;
                }
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors returns at once, again and again: wait for some
                    // to be released instead of spinning. Clients can cause it (by holding
                    // connections open): sampled like a refusal.
                    if let Some(suppressed) = crate::logging::sample_line(
                        crate::logging::LineKey::Listener(&self.name),
                        "accept_failed",
                    ) {
                        tracing::warn!(service = %self.name, error = %e, suppressed, "accept failed");
                    }
                    if e.raw_os_error() == Some(24) {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let digest = {
                use std::os::fd::AsRawFd;
                SocketDigest::from_raw_fd(tcp.as_raw_fd())
            };
            let _ = digest.peer_addr.set(Some(PeerAddr::Inet(peer)));
            if self.capture {
                let original = tcp.local_addr().and_then(|local| {
                    crate::transparent::original::original_destination(&tcp, local)
                });
                let _ = digest.original_dst.set(original.ok().map(PeerAddr::Inet));
            }
            let mut stream: pingora::protocols::Stream =
                Box::new(pingora::protocols::l4::stream::Stream::from(tcp));
            stream.set_socket_digest(digest);
            let stream = self.drain.cuttable(stream);
            let app = app.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut reuse = app.process_new(stream, &shutdown).await;
                while let Some(stream) = reuse {
                    reuse = app.process_new(stream, &shutdown).await;
                }
            });
        }
        app.cleanup().await;
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_an_error_naming_the_address_and_port_zero_is_resolved() {
        let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(first.addr.port(), 0);
        let err = bind(first.addr).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains(&first.addr.to_string()), "{err}");
    }
}
