//! PEM files the proxy reads at start and reload: certificate chains and trust bundles, and
//! private keys. Errors name the file and what it was for, never its bytes.

use std::path::Path;

use anyhow::{bail, Context as _};
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

/// The whole file, wiped from memory when dropped (it may be a key).
pub(crate) fn read_file(path: &Path, what: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    crate::whole_file::read(path)
        .map(Zeroizing::new)
        .with_context(|| format!("cannot read the {what} `{}`", path.display()))
}

/// Every certificate in `path`, in order; a file without one is an error. `what` names the
/// file's use in errors ("client trust bundle").
pub(crate) fn read_certs(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = read_file(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("the {what} `{}` is not valid PEM", path.display()))?;
    if certs.is_empty() {
        bail!("the {what} `{}` holds no certificate", path.display());
    }
    Ok(certs)
}

/// The first private key in `path`.
pub(crate) fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = read_file(path, "private key")?;
    // The PEM error's details are dropped: they may quote lines of the key file.
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => {
            bail!("the private key `{}` holds no private key", path.display())
        }
        Err(_) => bail!("the private key `{}` is not valid PEM", path.display()),
    }
}
