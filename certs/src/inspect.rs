//! Reading issued certificates back: validity, subject names, whether a
//! certificate is due for renewal, and whether a serving chain verifies
//! against a CA. Used to decide when stored certificates must be replaced.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{ServerName, UnixTime};
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;

use crate::authority::parse_certificate;
use crate::pem;

/// Why a certificate cannot be read or does not verify.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The PEM is unusable.
    #[error("invalid certificate PEM: {0}")]
    Pem(#[source] pem::Error),
    /// The DER cannot be read.
    #[error("malformed certificate: {0}")]
    Certificate(#[source] X509Error),
    /// The name cannot be checked against a certificate.
    #[error("{0:?} is not a DNS name or an IP address")]
    ServerName(String),
    /// The chain does not verify against the CA for the name.
    #[error("the certificate does not verify against the CA for {name}: {source}")]
    Verification {
        /// The name checked.
        name: String,
        /// Why rustls refused it.
        #[source]
        source: rustls::Error,
    },
}

/// Result of reading certificates.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSummary {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// DNS subjectAltNames, in order.
    pub dns_names: Vec<String>,
    /// IP subjectAltNames, in order.
    pub ip_addresses: Vec<IpAddr>,
    /// basicConstraints CA:TRUE.
    pub is_ca: bool,
}

impl CertificateSummary {
    /// Reads the first certificate of `pem` (the leaf of a chain).
    pub fn from_pem(pem: &str) -> Result<Self> {
        let certs = pem::load_certs_pem(pem).map_err(Error::Pem)?;
        let cert = parse_certificate(&certs[0]).map_err(Error::Certificate)?;
        let validity = cert.validity();
        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        if let Some(san) = cert.subject_alternative_name().map_err(Error::Certificate)? {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                    GeneralName::IPAddress(bytes) => {
                        if let Ok(octets) = <[u8; 4]>::try_from(*bytes) {
                            ip_addresses.push(IpAddr::from(octets));
                        } else if let Ok(octets) = <[u8; 16]>::try_from(*bytes) {
                            ip_addresses.push(IpAddr::from(octets));
                        }
                    }
                    _ => {}
                }
            }
        }
        let is_ca = cert
            .basic_constraints()
            .map_err(Error::Certificate)?
            .is_some_and(|constraints| constraints.value.ca);
        Ok(Self {
            not_before: validity.not_before.to_datetime().into(),
            not_after: validity.not_after.to_datetime().into(),
            dns_names,
            ip_addresses,
            is_ca,
        })
    }

    /// The whole validity period.
    pub fn lifetime(&self) -> Duration {
        self.not_after.duration_since(self.not_before).unwrap_or_default()
    }

    /// How long the certificate stays valid after `now` (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or_default()
    }

    /// True when less than a third of the validity period is left at `now`,
    /// the point where certificates are renewed (as cert-manager's default).
    pub fn due_for_renewal(&self, now: SystemTime) -> bool {
        self.remaining(now) < self.lifetime() / 3
    }
}

/// Checks that `chain_pem` (leaf first) verifies against `ca_pem` as a
/// serving certificate for `name` (a DNS name or an IP address) now.
pub fn verify_serving_chain(chain_pem: &str, ca_pem: &str, name: &str) -> Result<()> {
    let roots = pem::root_store_from_pem(ca_pem).map_err(Error::Pem)?;
    let chain = pem::load_certs_pem(chain_pem).map_err(Error::Pem)?;
    let server_name = ServerName::try_from(name.to_owned()).map_err(|_| Error::ServerName(name.to_owned()))?;
    let verifier = WebPkiServerVerifier::builder_with_provider(roots.into(), crate::tls_config::crypto_provider())
        .build()
        .map_err(|e| Error::Verification {
            name: name.to_owned(),
            source: rustls::Error::General(e.to_string()),
        })?;
    let (leaf, intermediates) = chain.split_first().expect("load_certs_pem returns at least one");
    verifier
        .verify_server_cert(leaf, intermediates, &server_name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|source| Error::Verification {
            name: name.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CertificateAuthority;

    #[test]
    fn summaries_read_names_and_validity_of_issued_certificates() {
        let ca = CertificateAuthority::generate("test CA", Duration::from_secs(86400)).unwrap();
        let issued = ca
            .issue_serving(
                &["proxy.ns.svc".to_owned()],
                &["10.0.0.7".parse().unwrap()],
                Duration::from_secs(3600),
            )
            .unwrap();
        let summary = CertificateSummary::from_pem(&issued.cert_pem).unwrap();
        assert_eq!(summary.dns_names, ["proxy.ns.svc"]);
        assert_eq!(summary.ip_addresses, ["10.0.0.7".parse::<IpAddr>().unwrap()]);
        assert!(!summary.is_ca);
        assert!(CertificateSummary::from_pem(ca.cert_pem()).unwrap().is_ca);
        // Issued an hour back for clock skew, valid an hour ahead: half is left.
        assert!(!summary.due_for_renewal(SystemTime::now()));
        assert!(summary.due_for_renewal(SystemTime::now() + Duration::from_secs(1800)));
    }

    #[test]
    fn chains_verify_only_against_their_own_ca_and_names() {
        let ca = CertificateAuthority::generate("test CA", Duration::from_secs(86400)).unwrap();
        let other = CertificateAuthority::generate("test CA", Duration::from_secs(86400)).unwrap();
        let issued = ca
            .issue_serving(&["webhook.ns.svc".to_owned()], &[], Duration::from_secs(3600))
            .unwrap();
        verify_serving_chain(&issued.cert_pem, ca.cert_pem(), "webhook.ns.svc").unwrap();
        assert!(verify_serving_chain(&issued.cert_pem, other.cert_pem(), "webhook.ns.svc").is_err());
        assert!(verify_serving_chain(&issued.cert_pem, ca.cert_pem(), "other.ns.svc").is_err());
    }
}
