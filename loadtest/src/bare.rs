//! The `bare-pingora` baseline: a pingora passthrough with nothing of tenant-proxy in it, built
//! from the same pingora version and features and run with the same thread count, so the
//! table shows what the framework costs by itself and each proxy row as a ratio to it.

use std::net::SocketAddr;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
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

/// A refusal about the size of the proxy's (`rate_limited` with a message and a request id).
const REFUSAL: &[u8] = br#"{"error":{"code":"rate_limited","message":"this tenant is over its ceiling of 10 requests per second; retry after 1s","request_id":"0123456789abcdef0123456789abcdef"}}"#;

/// Answers every request itself, as the proxy answers a refused one: reads the body (so the
/// connection stays usable) and writes a 429 with a JSON body, in `request_filter`, before any
/// upstream. What pingora costs for a request nobody forwards: the floor under a refusal.
struct Refuser;

#[async_trait]
impl ProxyHttp for Refuser {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<bool> {
        while session.read_request_body().await?.is_some() {}
        let mut header = ResponseHeader::build(429, Some(4))?;
        header.insert_header("content-type", "application/json")?;
        header.insert_header("content-length", REFUSAL.len().to_string())?;
        header.insert_header("retry-after", "1")?;
        session
            .write_response_header(Box::new(header), false)
            .await?;
        session
            .write_response_body(Some(Bytes::from_static(REFUSAL)), true)
            .await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        Err(pingora::Error::new(pingora::ErrorType::InternalError))
    }
}

/// Serves the passthrough (or, with `refuse`, the [`Refuser`]) on `listen` with `threads`
/// worker threads until killed.
pub fn serve(
    listen: SocketAddr,
    upstream: SocketAddr,
    threads: usize,
    refuse: bool,
) -> anyhow::Result<()> {
    let mut server = Server::new(None)?;
    server.bootstrap();
    if refuse {
        let mut service = http_proxy_service(&server.configuration, Refuser);
        service.add_tcp(&listen.to_string());
        service.threads = Some(threads);
        server.add_service(service);
    } else {
        let mut service = http_proxy_service(&server.configuration, Passthrough { upstream });
        service.add_tcp(&listen.to_string());
        service.threads = Some(threads);
        server.add_service(service);
    }
    server.run_forever()
}
