//! A throwaway PKI for HTTPS registries: a CA from the `certs` crate, a
//! serving certificate for loopback names and addresses, and a skopeo
//! `--cert-dir` that trusts only the CA.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use certs::{CertificateAuthority, ServingFiles};
use tempfile::TempDir;

/// How long test certificates stay valid.
const VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// Why the test PKI could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CA or the serving certificate could not be generated.
    #[error("failed to generate a test certificate: {0}")]
    Generate(#[from] certs::authority::Error),
    /// The PEM files could not be written.
    #[error("failed to write the test certificates: {0}")]
    Bundle(#[from] certs::bundle::Error),
    /// A file or directory could not be written.
    #[error("failed to write {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
}

/// Result of making the PKI.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A CA and one serving certificate on disk, removed on drop.
pub struct TestTls {
    dir: TempDir,
    /// The CA that signed the serving certificate.
    pub ca: CertificateAuthority,
    /// `ca.crt`, `tls.crt` (leaf then CA) and `tls.key`.
    pub files: ServingFiles,
    /// A directory holding only `ca.crt`: skopeo's `--cert-dir` loads every
    /// `*.crt` there as a root, so the serving chain must not sit beside it.
    pub cert_dir: PathBuf,
}

impl TestTls {
    /// A CA and a certificate for `localhost`, `registry.test`, `proxy.test`,
    /// 127.0.0.1 and 127.0.0.2: the names docs/real-components.md maps in
    /// /etc/hosts for clients that must not bypass a proxy.
    pub fn for_loopback() -> Result<Self> {
        let names = ["localhost", "registry.test", "proxy.test", "lab.test"];
        let ips = [
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        ];
        Self::generate(&names, &ips)
    }

    /// A CA and a serving certificate for `dns_names` and `ips`.
    pub fn generate(dns_names: &[&str], ips: &[IpAddr]) -> Result<Self> {
        let dir = tempfile::tempdir().map_err(|source| Error::Io {
            path: std::env::temp_dir(),
            source,
        })?;
        let ca = CertificateAuthority::generate("testing CA", VALIDITY)?;
        let names: Vec<String> = dns_names.iter().map(|name| (*name).to_owned()).collect();
        let issued = ca.issue_serving(&names, ips, VALIDITY)?;
        let files = certs::write_serving_bundle(&dir.path().join("serving"), &ca, &issued)?;
        let cert_dir = dir.path().join("client");
        write(&cert_dir.join("ca.crt"), ca.cert_pem(), &cert_dir)?;
        Ok(Self {
            dir,
            ca,
            files,
            cert_dir,
        })
    }

    /// The CA certificate as PEM.
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// The directory all files live in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn write(path: &Path, contents: &str, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_owned(),
        source,
    })?;
    fs::write(path, contents).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}
