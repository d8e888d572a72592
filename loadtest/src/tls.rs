//! Test PKI and TLS for the mock: a throwaway CA that signs the mock's server certificate and
//! workload client certificates (SPIFFE IDs), so HTTPS origins and mTLS clients on loopback
//! behave like real ones: the proxy verifies the mock's certificate against this CA, never with
//! verification turned off.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct PemPair {
    /// Certificate (PEM).
    pub cert: String,
    /// PKCS#8 private key (PEM).
    pub key: String,
}

impl std::fmt::Debug for PemPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemPair").finish_non_exhaustive()
    }
}

/// A throwaway certificate authority.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM): what clients and the proxy trust.
    pub cert_pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        })
    }

    /// The CA whose certificate and PKCS#8 key are `cert_pem` and `key_pem` (for instance one
    /// `tenant-proxy ca init` wrote), to sign with.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, rcgen::Error> {
        let key = KeyPair::from_pem(key_pem)?;
        Ok(Self {
            issuer: Issuer::from_ca_cert_pem(cert_pem, key)?,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> Result<PemPair, rcgen::Error> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate whose only SAN is the URI `spiffe_id` (an X.509-SVID).
    pub fn client(&self, spiffe_id: &str) -> Result<PemPair, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<PemPair, rcgen::Error> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(PemPair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// A rustls server config for `pair`, offering HTTP/1.1.
pub fn server_config(pair: &PemPair) -> io::Result<Arc<rustls::ServerConfig>> {
    let certs = certs_from_pem(&pair.cert)?;
    let key = key_from_pem(&pair.key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(io::Error::other)?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(io::Error::other)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS mock's server configuration (`mock --tls`): a certificate for `names` (DNS names or IP
/// addresses) signed by the CA whose PEM certificate and PKCS#8 key are the files `ca_cert` and
/// `ca_key` (as `tenant-proxy ca init` writes them), minted now and never written to disk.
pub fn server_config_from_ca_files(
    ca_cert: &Path,
    ca_key: &Path,
    names: &[String],
) -> io::Result<Arc<rustls::ServerConfig>> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", p.display())))
    };
    let ca = TestCa::from_pem(&read(ca_cert)?, &read(ca_key)?).map_err(|e| {
        io::Error::other(format!(
            "{} and {} are not a CA certificate and its PKCS#8 key: {e}",
            ca_cert.display(),
            ca_key.display()
        ))
    })?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let pair = ca
        .server(&names)
        .map_err(|e| io::Error::other(format!("signing the mock's certificate: {e}")))?;
    server_config(&pair)
}

/// A rustls client config trusting only `ca_pem`.
pub fn client_config(ca_pem: &str) -> io::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs_from_pem(ca_pem)? {
        roots.add(cert).map_err(io::Error::other)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn certs_from_pem(pem: &str) -> io::Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(io::Error::other)
}

fn key_from_pem(pem: &str) -> io::Result<PrivateKeyDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
        .map(PrivateKeyDer::from)
        .map_err(io::Error::other)
}

/// Serves the mock over TLS on `listener` until the task is dropped.
pub async fn serve_mock_tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> io::Result<()> {
    let acceptor = TlsAcceptor::from(config);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    if let Ok(tls) = acceptor.accept(stream).await {
                        let _ = crate::mock::serve_stream(tls).await;
                    }
                });
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}
