//! Writes a serving certificate to disk under the file names of a Kubernetes
//! TLS Secret (`ca.crt`, `tls.crt`, `tls.key`), for local runs and tests.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::authority::{CertificateAuthority, IssuedCertificate};

/// File name of the CA certificate, as in a Kubernetes TLS Secret.
pub(crate) const CA_CERT_FILE: &str = "ca.crt";
/// File name of the certificate chain, as in a Kubernetes TLS Secret.
pub(crate) const CERT_FILE: &str = "tls.crt";
/// File name of the private key, as in a Kubernetes TLS Secret.
pub(crate) const KEY_FILE: &str = "tls.key";

/// Why a bundle could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory could not be created.
    #[error("failed to create directory {}: {source}", path.display())]
    CreateDirectory {
        /// The directory.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// A file could not be written or moved into place.
    #[error("failed to write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
}

/// Result of writing a bundle.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where [`write_serving_bundle`] put each file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingFiles {
    /// The CA certificate, for clients to trust.
    pub ca_cert: PathBuf,
    /// The serving certificate chain (leaf, then CA).
    pub cert: PathBuf,
    /// The serving private key, readable by the owner only.
    pub key: PathBuf,
}

/// Writes the CA certificate, the serving chain and its key as PEM files into
/// `dir` (created if missing), the key with mode 0600, and returns their paths.
///
/// Each file is written beside its final name and renamed over it, so a
/// [`ReloadingCertResolver`](crate::ReloadingCertResolver) polling the files
/// never reads one half-written.
pub fn write_serving_bundle(dir: &Path, ca: &CertificateAuthority, issued: &IssuedCertificate) -> Result<ServingFiles> {
    fs::create_dir_all(dir).map_err(|source| Error::CreateDirectory {
        path: dir.to_owned(),
        source,
    })?;
    let files = ServingFiles {
        ca_cert: dir.join(CA_CERT_FILE),
        cert: dir.join(CERT_FILE),
        key: dir.join(KEY_FILE),
    };
    // NB: between the two renames key and chain do not match; a polling
    // resolver rejects such a pair and keeps serving the previous one.
    replace_file(&files.key, &issued.key_pem, Visibility::OwnerOnly)?;
    replace_file(&files.cert, &issued.cert_pem, Visibility::Public)?;
    replace_file(&files.ca_cert, ca.cert_pem(), Visibility::Public)?;
    Ok(files)
}

/// Where [`write_authority`] put each file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityFiles {
    /// The CA certificate, for clients to trust.
    pub cert: PathBuf,
    /// The CA private key, readable by the owner only.
    pub key: PathBuf,
    /// The system's roots followed by the CA, for `SSL_CERT_FILE`.
    pub bundle: PathBuf,
}

/// Where Debian, Fedora and Alpine keep the system's root certificates.
pub const SYSTEM_ROOT_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The system's root certificates as PEM, from the first of
/// [`SYSTEM_ROOT_FILES`] that exists; empty when none does.
pub fn system_roots_pem() -> String {
    SYSTEM_ROOT_FILES
        .iter()
        .find_map(|path| fs::read_to_string(path).ok())
        .unwrap_or_default()
}

/// The system's roots followed by `ca_pem`: a bundle that trusts both.
pub(crate) fn combined_bundle(ca_pem: &str) -> String {
    join_pem(&system_roots_pem(), ca_pem)
}

/// `roots_pem` then `ca_pem`, each ending in a newline.
pub fn join_pem(roots_pem: &str, ca_pem: &str) -> String {
    let mut out = String::with_capacity(roots_pem.len() + ca_pem.len() + 2);
    for part in [roots_pem, ca_pem] {
        out.push_str(part);
        if !part.is_empty() && !part.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// Writes a CA as `<stem>.crt` and `<stem>.key` (mode 0600) into `dir`, and
/// `<stem>-bundle.crt` with the system's roots and the CA.
pub fn write_authority(dir: &Path, stem: &str, ca: &CertificateAuthority) -> Result<AuthorityFiles> {
    fs::create_dir_all(dir).map_err(|source| Error::CreateDirectory {
        path: dir.to_owned(),
        source,
    })?;
    let files = AuthorityFiles {
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
        bundle: dir.join(format!("{stem}-bundle.crt")),
    };
    replace_file(&files.key, &ca.key_pem(), Visibility::OwnerOnly)?;
    replace_file(&files.cert, ca.cert_pem(), Visibility::Public)?;
    replace_file(&files.bundle, &combined_bundle(ca.cert_pem()), Visibility::Public)?;
    Ok(files)
}

#[derive(Debug, Clone, Copy)]
enum Visibility {
    /// Mode 0644: certificates are public.
    Public,
    /// Mode 0600: private keys.
    OwnerOnly,
}

/// Atomically replaces `path` with `contents` through a temporary sibling.
fn replace_file(path: &Path, contents: &str, visibility: Visibility) -> Result<()> {
    let write_error = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let temporary = path.with_file_name(format!(".{file_name}.tmp"));
    match fs::remove_file(&temporary) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(write_error(error)),
        _ => {}
    }

    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(match visibility {
            Visibility::Public => 0o644,
            Visibility::OwnerOnly => 0o600,
        });
    }
    #[cfg(not(unix))]
    let _ = visibility;

    let written = options.open(&temporary).and_then(|mut file| {
        file.write_all(contents.as_bytes())?;
        file.sync_all()
    });
    if let Err(error) = written.and_then(|()| fs::rename(&temporary, path)) {
        let _ = fs::remove_file(&temporary);
        return Err(write_error(error));
    }
    Ok(())
}
