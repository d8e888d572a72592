//! The loadtest mock LLM upstream, embedded: plain or over TLS, on an ephemeral loopback port,
//! in a runtime thread of its own.

/// Starts the loadtest mock; its port.
pub fn start_mock() -> u16 {
    serve_on_loopback(tenant_proxy_loadtest::mock::serve_mock)
}

/// Starts the loadtest mock over TLS (certificate `pair`); its port.
pub fn start_mock_tls(pair: &tenant_proxy_loadtest::tls::PemPair) -> u16 {
    let config = tenant_proxy_loadtest::tls::server_config(pair).unwrap();
    serve_on_loopback(move |l| tenant_proxy_loadtest::tls::serve_mock_tls(l, config))
}

/// Starts the loadtest mock over TLS with `config` (e.g. from
/// `tls::server_config_from_ca_files`, as `mock --tls` builds it); its port.
pub fn start_mock_tls_config(config: std::sync::Arc<rustls::ServerConfig>) -> u16 {
    serve_on_loopback(move |l| tenant_proxy_loadtest::tls::serve_mock_tls(l, config))
}

/// Starts the loadtest mock on an ephemeral port of `ip` (an address of a test's own network,
/// such as a veth the test created); its port.
pub fn start_mock_on(ip: std::net::IpAddr) -> u16 {
    serve_on(ip, tenant_proxy_loadtest::mock::serve_mock)
}

/// [`start_mock_tls`] on an ephemeral port of `ip`; its port.
pub fn start_mock_tls_on(ip: std::net::IpAddr, pair: &tenant_proxy_loadtest::tls::PemPair) -> u16 {
    let config = tenant_proxy_loadtest::tls::server_config(pair).unwrap();
    serve_on(ip, move |l| {
        tenant_proxy_loadtest::tls::serve_mock_tls(l, config)
    })
}

/// Runs `serve` on a new ephemeral loopback listener (bound here and kept) in its own runtime
/// thread; the listener's port.
fn serve_on_loopback<F, Fut>(serve: F) -> u16
where
    F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>>,
{
    serve_on(std::net::Ipv4Addr::LOCALHOST.into(), serve)
}

/// Runs `serve` on a new ephemeral listener of `ip` in its own runtime thread; its port.
fn serve_on<F, Fut>(ip: std::net::IpAddr, serve: F) -> u16
where
    F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>>,
{
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            let _ = serve(l).await;
        });
    });
    port
}
