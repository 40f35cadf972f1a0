//! The certificates a volume carries: the proxy CA, and the system roots it
//! is bundled with so that one `SSL_CERT_FILE` trusts both the proxy and
//! every other server.

use std::io;
use std::path::{Path, PathBuf};

/// Debian's (and Ubuntu's, Alpine's) bundle of the system roots.
pub const DEFAULT_SYSTEM_ROOTS: &str = certs::bundle::SYSTEM_ROOT_FILES[0];

/// Why the certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("failed to read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} holds no usable certificate: {source}", path.display())]
    NotPem {
        path: PathBuf,
        #[source]
        source: certs::pem::Error,
    },
    #[error("no system root certificates found at {} nor in the platform's trust store", path.display())]
    NoSystemRoots { path: PathBuf },
}

pub type Result<T, E = TrustError> = std::result::Result<T, E>;

/// Reads the proxy CA, checking that it is PEM certificates.
pub fn load_proxy_ca(path: &Path) -> Result<String> {
    let pem = std::fs::read_to_string(path).map_err(|source| TrustError::Read {
        path: path.to_owned(),
        source,
    })?;
    certs::load_certs_pem(&pem).map_err(|source| TrustError::NotPem {
        path: path.to_owned(),
        source,
    })?;
    Ok(pem)
}

/// The system roots as PEM: the bundle at `path` when it exists, otherwise
/// what the platform's trust store holds (`SSL_CERT_FILE`, OpenSSL's
/// directories), re-encoded.
pub fn load_system_roots(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(pem) => {
            certs::load_certs_pem(&pem).map_err(|source| TrustError::NotPem {
                path: path.to_owned(),
                source,
            })?;
            return Ok(pem);
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(TrustError::Read {
                path: path.to_owned(),
                source,
            });
        }
    }
    let native = rustls_native_certs::load_native_certs();
    if native.certs.is_empty() {
        return Err(TrustError::NoSystemRoots { path: path.to_owned() });
    }
    Ok(native
        .certs
        .iter()
        .map(|der| certs::pem::encode_pem("CERTIFICATE", der))
        .collect())
}
