//! Serves a certificate and key from PEM files and picks up rotations
//! without a restart, by polling the files' contents.
//!
//! NB: Kubernetes updates Secret volumes by writing a new timestamped
//! directory and swapping the `..data` symlink, which inotify watches on the
//! files themselves miss; comparing contents on a timer sees every swap.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use x509_parser::error::X509Error;

use crate::authority::parse_certificate;
use crate::pem;

/// The shortest polling interval [`ReloadingCertResolver::spawn_watch`] uses.
pub(crate) const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(10);

/// Why the certificate files could not be (re)loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("failed to read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// The certificate file is not usable PEM.
    #[error("invalid certificate PEM in {}: {source}", path.display())]
    CertificatePem {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with its PEM.
        #[source]
        source: pem::Error,
    },
    /// The leaf certificate's DER cannot be read.
    #[error("malformed certificate in {}: {source}", path.display())]
    Certificate {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with the certificate.
        #[source]
        source: X509Error,
    },
    /// The key file is not usable PEM.
    #[error("invalid private key PEM in {}: {source}", path.display())]
    KeyPem {
        /// The key file.
        path: PathBuf,
        /// What is wrong with its PEM.
        #[source]
        source: pem::Error,
    },
    /// The ring provider cannot sign with the key.
    #[error("unsupported private key in {}: {source}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why rustls rejected it.
        #[source]
        source: rustls::Error,
    },
    /// The key belongs to another certificate, e.g. mid-rotation.
    #[error("private key in {} does not match the certificate in {}: {source}", key_path.display(), cert_path.display())]
    KeyMismatch {
        /// The certificate file.
        cert_path: PathBuf,
        /// The key file.
        key_path: PathBuf,
        /// How rustls found them inconsistent.
        #[source]
        source: rustls::Error,
    },
}

/// Result of loading certificate files.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Serves the certificate chain and key from two PEM files and reloads them
/// when their contents change.
///
/// A failed reload (a half-written file, bad PEM, a key that does not match)
/// keeps the previous certificate; the watch task logs it as a warning.
pub struct ReloadingCertResolver {
    cert_path: PathBuf,
    key_path: PathBuf,
    served: RwLock<Arc<Served>>,
}

/// The certificate being served and the file contents it came from.
struct Served {
    certified_key: Arc<CertifiedKey>,
    // NB: the bytes rather than a digest: a few KiB, and equality is exact.
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    not_after: SystemTime,
}

impl ReloadingCertResolver {
    /// Loads the certificate chain (leaf first) and private key; fails if
    /// either file is unreadable or invalid, or if they do not match.
    pub fn load(cert_path: PathBuf, key_path: PathBuf) -> Result<Arc<Self>> {
        let served = Served::read(&cert_path, &key_path)?;
        Ok(Arc::new(Self {
            cert_path,
            key_path,
            served: RwLock::new(Arc::new(served)),
        }))
    }

    /// Re-reads both files and, if their contents changed and are valid,
    /// serves the new certificate. Returns whether a new certificate is now
    /// served; on error the previous one stays.
    pub fn reload_if_changed(&self) -> Result<bool> {
        let cert_pem = read(&self.cert_path)?;
        let key_pem = read(&self.key_path)?;
        let current = self.current();
        if current.cert_pem == cert_pem && current.key_pem == key_pem {
            return Ok(false);
        }

        let served = Served::parse(&self.cert_path, cert_pem, &self.key_path, key_pem)?;
        tracing::info!(
            cert = %self.cert_path.display(),
            not_after = ?served.not_after,
            "serving a reloaded certificate"
        );
        *self.served.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(served);
        Ok(true)
    }

    /// Spawns a task that calls [`reload_if_changed`](Self::reload_if_changed)
    /// every `interval` (at least [`MIN_WATCH_INTERVAL`]) and logs a failure
    /// as a warning once, until the files change again. It runs until the
    /// handle is aborted or the resolver is dropped. Call it inside a tokio
    /// runtime.
    pub fn spawn_watch(self: &Arc<Self>, interval: Duration) -> JoinHandle<()> {
        let resolver = Arc::downgrade(self);
        tokio::spawn(watch(resolver, interval.max(MIN_WATCH_INTERVAL)))
    }

    /// When the certificate now served expires.
    pub fn not_after(&self) -> SystemTime {
        self.current().not_after
    }

    /// The chain and key now served.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.current().certified_key.clone()
    }

    fn current(&self) -> Arc<Served> {
        self.served.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl ResolvesServerCert for ReloadingCertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }
}

impl fmt::Debug for ReloadingCertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCertResolver")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("not_after", &self.not_after())
            .finish_non_exhaustive()
    }
}

impl Served {
    fn read(cert_path: &Path, key_path: &Path) -> Result<Self> {
        Self::parse(cert_path, read(cert_path)?, key_path, read(key_path)?)
    }

    fn parse(cert_path: &Path, cert_pem: Vec<u8>, key_path: &Path, key_pem: Vec<u8>) -> Result<Self> {
        // Non-UTF-8 bytes cannot be PEM; lossy decoding turns them into a PEM error.
        let chain =
            pem::load_certs_pem(&String::from_utf8_lossy(&cert_pem)).map_err(|source| Error::CertificatePem {
                path: cert_path.to_owned(),
                source,
            })?;
        let not_after = parse_certificate(&chain[0])
            .map_err(|source| Error::Certificate {
                path: cert_path.to_owned(),
                source,
            })?
            .validity()
            .not_after
            .to_datetime()
            .into();
        let key = pem::load_private_key_pem(&String::from_utf8_lossy(&key_pem)).map_err(|source| Error::KeyPem {
            path: key_path.to_owned(),
            source,
        })?;
        let signing_key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|source| Error::Key {
            path: key_path.to_owned(),
            source,
        })?;
        let certified_key = CertifiedKey::new(chain, signing_key);
        certified_key.keys_match().map_err(|source| Error::KeyMismatch {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            source,
        })?;
        Ok(Self {
            certified_key: Arc::new(certified_key),
            cert_pem,
            key_pem,
            not_after,
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

async fn watch(resolver: Weak<ReloadingCertResolver>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick completes at once, and the files were just loaded.
    ticks.tick().await;
    let mut last_failure: Option<String> = None;
    loop {
        ticks.tick().await;
        let Some(resolver) = resolver.upgrade() else {
            return;
        };
        // File reads block; keep them off the async workers.
        let outcome = tokio::task::spawn_blocking(move || resolver.reload_if_changed()).await;
        let failure = match outcome {
            Ok(Ok(_)) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(join_error) => Some(format!("reload task failed: {join_error}")),
        };
        // NB: a broken file stays broken until the next rotation; warn once.
        if let Some(failure) = &failure
            && last_failure.as_ref() != Some(failure)
        {
            tracing::warn!(error = %failure, "keeping the current certificate: reload failed");
        }
        last_failure = failure;
    }
}

/// A value rebuilt when a file it comes from changes: readers take the
/// current one, a reload swaps it whole.
pub struct Reloading<T> {
    current: RwLock<Arc<T>>,
}

impl<T> Reloading<T> {
    pub fn new(value: T) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(Arc::new(value)),
        })
    }

    /// The value as of the last reload.
    pub fn current(&self) -> Arc<T> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn replace(&self, value: T) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(value);
    }
}

impl<T: fmt::Debug> fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Reloading").field(&self.current()).finish()
    }
}

/// Polls the PEM certificates in `path` (a CA bundle, e.g. a ConfigMap
/// volume that a CA rotation changes) every `interval` and calls `changed`
/// with the text once it is different from `loaded` and holds certificates.
/// A missing or broken file keeps what was there (a warning, once).
pub fn spawn_pem_watch(
    path: PathBuf,
    loaded: String,
    interval: Duration,
    changed: impl Fn(String) + Send + 'static,
) -> JoinHandle<()> {
    let interval = interval.max(MIN_WATCH_INTERVAL);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let (mut last, mut last_failure) = (loaded, None::<String>);
        loop {
            ticks.tick().await;
            let read = tokio::fs::read_to_string(&path).await;
            let failure = match read {
                Ok(text) if text == last => None,
                Ok(text) => match pem::load_certs_pem(&text) {
                    Ok(_) => {
                        tracing::info!(path = %path.display(), "the CA bundle changed; using it now");
                        changed(text.clone());
                        last = text;
                        None
                    }
                    Err(error) => Some(error.to_string()),
                },
                Err(error) => Some(error.to_string()),
            };
            if let Some(failure) = &failure
                && last_failure.as_ref() != Some(failure)
            {
                tracing::warn!(path = %path.display(), error = %failure, "keeping the current CA bundle: reading it failed");
            }
            last_failure = failure;
        }
    })
}

#[cfg(test)]
mod pem_watch_tests {
    use super::*;

    #[tokio::test]
    async fn a_changed_bundle_is_handed_over_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        let first = crate::CertificateAuthority::generate("first", Duration::from_secs(3600)).unwrap();
        let second = crate::CertificateAuthority::generate("second", Duration::from_secs(3600)).unwrap();
        fs::write(&path, first.cert_pem()).unwrap();
        let value = Reloading::new(first.cert_pem().to_owned());
        let _watch = spawn_pem_watch(path.clone(), first.cert_pem().to_owned(), Duration::from_millis(10), {
            let value = value.clone();
            move |pem| value.replace(pem)
        });
        fs::write(&path, "not PEM").unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(*value.current(), first.cert_pem());
        let bundle = format!("{}{}", first.cert_pem(), second.cert_pem());
        fs::write(&path, &bundle).unwrap();
        for _ in 0..100 {
            if *value.current() == bundle {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(*value.current(), bundle);
    }
}
