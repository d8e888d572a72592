//! The `bare-pingora` baseline: a pingora passthrough with nothing of tenant-proxy in it, built
//! from the same pingora version and features and run with the same thread count, so the
//! table shows what the framework costs by itself and each proxy row as a ratio to it.

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;

/// Forwards every request to one plain-HTTP upstream, reusing upstream connections the way
/// pingora does by default.
struct Passthrough {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

/// Serves the passthrough on `listen` with `threads` worker threads until killed.
pub fn serve(listen: SocketAddr, upstream: SocketAddr, threads: usize) -> anyhow::Result<()> {
    let mut server = Server::new(None)?;
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, Passthrough { upstream });
    service.add_tcp(&listen.to_string());
    service.threads = Some(threads);
    server.add_service(service);
    server.run_forever()
}
