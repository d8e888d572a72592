//! One grant: a `POST` to the token endpoint on the address the egress guard checked (no
//! second lookup), over TLS unless the endpoint is a loopback `http://` one, with hyper's
//! HTTP/1.1 client connection. The caller bounds it with a timeout.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::{parse_answer, AccessToken, Endpoint, GrantRequest};

/// Largest token response read.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Posts `request` to `endpoint` at `addr` and reads the token from the answer. Errors say what
/// failed (status, framing, TLS), never a secret or the body.
pub async fn grant(
    addr: SocketAddr,
    endpoint: &Endpoint,
    request: GrantRequest,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<AccessToken, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("the token endpoint could not be reached ({})", e.kind()))?;
    let _ = tcp.set_nodelay(true);
    if endpoint.tls {
        let name = ServerName::try_from(endpoint.host.clone())
            .map_err(|_| "the token endpoint's host is not a valid TLS name".to_string())?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| {
                // The handshake's error quotes the endpoint's certificate (its names, which
                // whoever runs the endpoint chooses): the operator's log has it, the agent's
                // refusal (and its record) only what failed.
                tracing::warn!(host = %endpoint.host, error = %e, "TLS with a token endpoint failed");
                "TLS with the token endpoint failed (its certificate could not be verified, or the \
                 handshake was refused; the proxy's log says why)"
                    .to_string()
            })?;
        post(stream, endpoint, request).await
    } else {
        post(tcp, endpoint, request).await
    }
}

async fn post<S>(
    stream: S,
    endpoint: &Endpoint,
    request: GrantRequest,
) -> Result<AccessToken, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| "the token endpoint's connection failed".to_string())?;
    // The connection is driven until the answer is read; it ends with the sender.
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut builder = http::Request::post(endpoint.path_and_query.as_str())
        .header(http::header::HOST, endpoint.authority())
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::CONNECTION, "close");
    if let Some(auth) = &request.authorization {
        let mut value = http::HeaderValue::from_str(auth)
            .map_err(|_| "the client's authorization is not a valid header".to_string())?;
        value.set_sensitive(true);
        builder = builder.header(http::header::AUTHORIZATION, value);
    }
    let body = Full::new(Bytes::copy_from_slice(request.body.as_bytes()));
    let req = builder
        .body(body)
        .map_err(|_| "the grant request could not be built".to_string())?;
    let result = async {
        let response = sender.send_request(req).await.map_err(|_| {
            "the token endpoint closed the connection without an answer".to_string()
        })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|_| {
                format!(
                    "the token endpoint's answer is unreadable or over {MAX_RESPONSE_BYTES} bytes"
                )
            })?
            .to_bytes();
        if !status.is_success() {
            // The body may describe the client; only the status is reported.
            return Err(format!("the token endpoint answered {}", status.as_u16()));
        }
        parse_answer(&body)
    }
    .await;
    driver.abort();
    result
}

/// The trust for `https` token endpoints: the system's roots (`SSL_CERT_FILE` or the usual
/// bundle) plus `[upstream] extra_ca_files`, as for every upstream.
pub fn client_config(
    extra_ca_files: &[std::path::PathBuf],
) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
    let mut files: Vec<(std::path::PathBuf, bool)> = vec![(system, false)];
    files.extend(extra_ca_files.iter().map(|f| (f.clone(), true)));
    for (file, required) in files {
        let certs = match CertificateDer::pem_file_iter(&file) {
            Ok(certs) => certs,
            Err(_) if !required => continue,
            Err(e) => return Err(format!("reading CA file `{}`: {e}", file.display())),
        };
        for cert in certs {
            let cert = cert.map_err(|e| format!("reading CA file `{}`: {e}", file.display()))?;
            // A system bundle may hold certificates rustls cannot use; skip those.
            let _ = roots.add(cert);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
