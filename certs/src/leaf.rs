//! Leaf certificates for TLS interception: one short-lived ECDSA P-256
//! certificate per host, minted by the proxy's CA on first use and cached
//! (bounded) until shortly before it expires. Each comes with the full chain.
//! The CA can be replaced while serving (a rotation): leaves of the old one
//! are dropped and never cached again.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use lru::LruCache;
use rustls::sign::CertifiedKey;

use crate::authority::{self, CertificateAuthority};
use crate::pem;

/// How long a minted leaf is valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// A cached leaf is replaced once less than this is left.
pub(crate) const LEAF_RENEW_BEFORE: Duration = Duration::from_secs(3600);

/// How many hosts' leaves are kept.
pub(crate) const LEAF_CACHE_CAPACITY: usize = 1024;

/// Why a leaf cannot be minted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to issue a leaf certificate for {host}: {source}")]
    Issue {
        host: String,
        #[source]
        source: authority::Error,
    },
    #[error("failed to load the leaf certificate for {host}: {message}")]
    Load { host: String, message: String },
}

/// Result of leaf minting.
pub type Result<T, E = Error> = std::result::Result<T, E>;

struct Cached {
    key: Arc<CertifiedKey>,
    not_after: SystemTime,
}

/// Mints and caches leaf certificates.
pub struct LeafIssuer {
    valid_for: Duration,
    cache: Mutex<LeafCache>,
}

/// The CA and the leaves by host; a full cache drops its least recently
/// used leaf in O(1).
struct LeafCache {
    ca: Arc<CertificateAuthority>,
    /// Bumped when the CA is replaced: a leaf minted from an older one is
    /// not cached.
    generation: u64,
    entries: LruCache<String, Cached>,
    minted: u64,
}

impl LeafIssuer {
    pub fn new(ca: Arc<CertificateAuthority>) -> Self {
        Self::with_limits(ca, LEAF_VALIDITY, LEAF_CACHE_CAPACITY)
    }

    pub(crate) fn with_limits(ca: Arc<CertificateAuthority>, valid_for: Duration, capacity: usize) -> Self {
        Self {
            valid_for,
            cache: Mutex::new(LeafCache {
                ca,
                generation: 0,
                entries: LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN)),
                minted: 0,
            }),
        }
    }

    /// The CA the leaves chain to.
    pub fn authority(&self) -> Arc<CertificateAuthority> {
        self.lock().ca.clone()
    }

    /// Mints from `ca` from now on, dropping every cached leaf, when it is
    /// not the current CA; true when it replaced it.
    pub fn replace_authority(&self, ca: Arc<CertificateAuthority>) -> bool {
        let mut cache = self.lock();
        if cache.ca.cert_der() == ca.cert_der() {
            return false;
        }
        cache.ca = ca;
        cache.generation += 1;
        cache.entries.clear();
        true
    }

    /// Re-reads the CA's certificate and key (PEM files, e.g. a Secret
    /// volume, which Kubernetes swaps whole) every `interval` and mints from
    /// a new one once both files hold a usable pair. Ends when the issuer is
    /// dropped.
    pub fn spawn_watch(
        self: &Arc<Self>,
        cert: PathBuf,
        key: PathBuf,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let issuer = Arc::downgrade(self);
        let interval = interval.max(crate::reload::MIN_WATCH_INTERVAL);
        tokio::spawn(async move {
            let mut last: Option<(String, String)> = None;
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(issuer) = issuer.upgrade() else { return };
                let (Ok(cert_pem), Ok(key_pem)) = (std::fs::read_to_string(&cert), std::fs::read_to_string(&key))
                else {
                    continue;
                };
                let read = Some((cert_pem, key_pem));
                if read == last {
                    continue;
                }
                let (cert_pem, key_pem) = read.as_ref().map(|(c, k)| (c.as_str(), k.as_str())).unwrap_or_default();
                match CertificateAuthority::from_pem(cert_pem, key_pem) {
                    Ok(ca) => {
                        if issuer.replace_authority(Arc::new(ca)) {
                            tracing::info!(cert = %cert.display(), "interception CA replaced; leaves are minted from it now");
                        }
                        last = read;
                    }
                    // NB: the files are swapped one directory at a time, but a
                    // half-written pair is possible with other writers: the
                    // next tick reads them again.
                    Err(error) => {
                        tracing::warn!(cert = %cert.display(), %error, "the interception CA files are not usable; keeping the current CA")
                    }
                }
            }
        })
    }

    /// How many leaves were minted so far (cache misses).
    pub fn minted(&self) -> u64 {
        self.lock().minted
    }

    /// The leaf for `host` (a DNS name or an IP address, lower-cased by the
    /// caller): from the cache, or minted now.
    pub fn certified_key(&self, host: &str) -> Result<Arc<CertifiedKey>> {
        let now = SystemTime::now();
        let (ca, generation) = {
            let mut cache = self.lock();
            if let Some(entry) = cache.entries.get(host)
                && entry.not_after > now + LEAF_RENEW_BEFORE.min(self.valid_for / 2)
            {
                return Ok(entry.key.clone());
            }
            (cache.ca.clone(), cache.generation)
        };
        // NB: minted outside the lock; two first handshakes for one host may
        // both mint, and the later one is kept. Cheaper than serialising all.
        let (key, not_after) = self.mint(&ca, host)?;
        let mut cache = self.lock();
        cache.minted += 1;
        if cache.generation != generation {
            // The CA was replaced meanwhile: this leaf serves this handshake only.
            return Ok(key);
        }
        cache.entries.push(
            host.to_owned(),
            Cached {
                key: key.clone(),
                not_after,
            },
        );
        Ok(key)
    }

    fn mint(&self, ca: &CertificateAuthority, host: &str) -> Result<(Arc<CertifiedKey>, SystemTime)> {
        let (names, ips) = match host.parse::<IpAddr>() {
            Ok(ip) => (Vec::new(), vec![ip]),
            Err(_) => (vec![host.to_owned()], Vec::new()),
        };
        let issued = ca
            .issue_serving(&names, &ips, self.valid_for)
            .map_err(|source| Error::Issue {
                host: host.to_owned(),
                source,
            })?;
        let load = |message: String| Error::Load {
            host: host.to_owned(),
            message,
        };
        let chain = pem::load_certs_pem(&issued.cert_pem).map_err(|e| load(e.to_string()))?;
        let key = pem::load_private_key_pem(&issued.key_pem).map_err(|e| load(e.to_string()))?;
        let signing = crate::tls_config::crypto_provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| load(e.to_string()))?;
        Ok((Arc::new(CertifiedKey::new(chain, signing)), issued.not_after))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LeafCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(capacity: usize) -> LeafIssuer {
        let ca = CertificateAuthority::generate("leaf test CA", Duration::from_secs(3600 * 48)).unwrap();
        LeafIssuer::with_limits(Arc::new(ca), LEAF_VALIDITY, capacity)
    }

    #[test]
    fn leaves_are_cached_per_host_and_carry_the_chain() {
        let issuer = issuer(8);
        let first = issuer.certified_key("registry.test").unwrap();
        let again = issuer.certified_key("registry.test").unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(issuer.minted(), 1);
        assert_eq!(first.cert.len(), 2, "leaf and CA");
        assert_eq!(&first.cert[1], issuer.authority().cert_der());
        let ip = issuer.certified_key("127.0.0.2").unwrap();
        let parsed = authority::parse_certificate(&ip.cert[0]).unwrap();
        let sans = parsed.subject_alternative_name().unwrap().unwrap();
        assert!(
            format!("{:?}", sans.value).contains("IPAddress([127, 0, 0, 2])"),
            "{:?}",
            sans.value
        );
        assert_eq!(issuer.minted(), 2);
    }

    #[test]
    fn the_cache_is_bounded_and_evicts_the_least_recently_used() {
        let issuer = issuer(2);
        issuer.certified_key("a.test").unwrap();
        issuer.certified_key("b.test").unwrap();
        issuer.certified_key("a.test").unwrap();
        issuer.certified_key("c.test").unwrap();
        assert_eq!(issuer.lock().entries.len(), 2);
        assert!(issuer.lock().entries.contains("a.test"));
        assert!(!issuer.lock().entries.contains("b.test"));
    }

    #[test]
    fn a_replaced_ca_drops_the_cached_leaves_and_mints_from_the_new_one() {
        let issuer = issuer(8);
        let old = issuer.certified_key("registry.test").unwrap();
        let same = issuer.authority();
        assert!(!issuer.replace_authority(same), "the same CA changes nothing");
        let new = Arc::new(CertificateAuthority::generate("rotated CA", Duration::from_secs(3600 * 48)).unwrap());
        assert!(issuer.replace_authority(new.clone()));
        let leaf = issuer.certified_key("registry.test").unwrap();
        assert!(!Arc::ptr_eq(&old, &leaf));
        assert_eq!(&leaf.cert[1], new.cert_der());
        crate::verify_serving_chain(
            &crate::pem::encode_pem("CERTIFICATE", &leaf.cert[0]),
            new.cert_pem(),
            "registry.test",
        )
        .unwrap();
        assert_eq!(issuer.minted(), 2);
    }

    #[tokio::test]
    async fn the_watch_picks_up_a_ca_written_to_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let first = CertificateAuthority::generate("first CA", Duration::from_secs(3600 * 48)).unwrap();
        std::fs::write(&cert, first.cert_pem()).unwrap();
        std::fs::write(&key, first.key_pem()).unwrap();
        let issuer = Arc::new(LeafIssuer::new(Arc::new(
            CertificateAuthority::from_pem(first.cert_pem(), &first.key_pem()).unwrap(),
        )));
        let _watch = issuer.spawn_watch(cert.clone(), key.clone(), Duration::from_millis(20));
        let second = CertificateAuthority::generate("second CA", Duration::from_secs(3600 * 48)).unwrap();
        // A broken pair first (a half-written update): the CA stays.
        std::fs::write(&cert, second.cert_pem()).unwrap();
        std::fs::write(&key, "not a key").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(issuer.authority().cert_der(), first.cert_der());
        std::fs::write(&key, second.key_pem()).unwrap();
        for _ in 0..100 {
            if issuer.authority().cert_der() == second.cert_der() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(issuer.authority().cert_der(), second.cert_der());
        assert_eq!(&issuer.certified_key("a.test").unwrap().cert[1], second.cert_der());
    }

    #[test]
    fn short_lived_leaves_are_reused_until_half_their_life() {
        let ca = CertificateAuthority::generate("leaf test CA", Duration::from_secs(3600 * 48)).unwrap();
        // Valid for 10 minutes: always inside the renewal window.
        let issuer = LeafIssuer::with_limits(Arc::new(ca), Duration::from_secs(600), 4);
        issuer.certified_key("a.test").unwrap();
        issuer.certified_key("a.test").unwrap();
        assert_eq!(issuer.minted(), 1, "half the validity is still left");
    }
}
