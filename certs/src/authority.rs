//! The certificate authority that signs serving certificates: generated fresh
//! at install time, or loaded back from the PEM kept in a Secret.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::x509::{CertificateFields, KeyUsage};
use crate::{pem, pkcs8, x509};

/// How far back `not_before` is set, so that nodes whose clocks run a little
/// behind the issuer's still accept a certificate issued a moment ago.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60 * 60);

/// RFC 5280's upper bound (ub-common-name) on the length of a commonName.
const MAX_COMMON_NAME_LENGTH: usize = 64;

/// Why a CA could not be created or loaded, or could not issue.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The validity period overflows the dates a certificate can carry.
    #[error("validity period of {valid_for:?} is out of range")]
    ValidityOutOfRange {
        /// The requested validity period.
        valid_for: Duration,
    },
    /// Key generation failed in ring.
    #[error("failed to generate an ECDSA P-256 key: {0}")]
    GenerateKey(#[source] rcgen::Error),
    /// Signing a certificate failed.
    #[error("failed to sign the certificate: {0}")]
    Sign(#[source] rcgen::Error),
    /// The CA certificate PEM is unusable.
    #[error("invalid CA certificate PEM: {0}")]
    CertificatePem(#[source] pem::Error),
    /// The CA certificate PEM holds a chain rather than one certificate.
    #[error("CA certificate PEM holds {count} certificates where exactly one was expected")]
    CertificateCount {
        /// How many certificates it holds.
        count: usize,
    },
    /// The CA certificate's DER cannot be read.
    #[error("malformed CA certificate: {0}")]
    Certificate(#[source] x509::Error),
    /// The certificate lacks basicConstraints CA:TRUE.
    #[error("CA certificate is not a CA: it lacks basicConstraints CA:TRUE")]
    NotCa,
    /// The certificate's keyUsage forbids signing certificates.
    #[error("CA certificate's keyUsage does not include keyCertSign")]
    SigningNotAllowed,
    /// The CA private key PEM is unusable.
    #[error("invalid CA private key PEM: {0}")]
    KeyPem(#[source] pem::Error),
    /// The CA private key cannot be converted for rcgen.
    #[error("unsupported CA private key: {0}")]
    KeyEncoding(#[source] pkcs8::Error),
    /// rcgen (ring) does not accept the CA private key.
    #[error("unsupported CA private key (ECDSA P-256/P-384, Ed25519 and RSA are supported): {0}")]
    Key(#[source] rcgen::Error),
    /// The private key belongs to another certificate.
    #[error("CA private key does not match the CA certificate's public key")]
    KeyMismatch,
    /// The subject name cannot be rebuilt for use as an issuer name.
    #[error("CA certificate's subject cannot be used as an issuer name: {0}")]
    SubjectName(#[source] x509::Error),
    /// The rebuilt issuer name differs from the CA's subject in its bytes.
    #[error(
        "CA certificate's subject is encoded in a way that cannot be reproduced; \
         certificates issued under it would not chain to it"
    )]
    SubjectEncoding,
    /// A serving certificate was requested without any name.
    #[error("a serving certificate needs at least one DNS name or IP address")]
    NoSubjectNames,
    /// A DNS name that cannot go into a certificate.
    #[error("invalid DNS name {name:?}: {source}")]
    InvalidDnsName {
        /// The rejected name.
        name: String,
        /// Why rcgen rejected it.
        #[source]
        source: rcgen::Error,
    },
}

/// Result of CA operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A certificate authority that signs serving and leaf certificates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    /// The encoded subject name, which every issued certificate must carry as its issuer.
    subject: Vec<u8>,
    not_after: SystemTime,
    /// Whether issued certificates get an authorityKeyIdentifier: only when
    /// the CA has a subjectKeyIdentifier for it to point at.
    writes_authority_key_identifier: bool,
}

/// A certificate issued by a [`CertificateAuthority`], with its private key.
#[derive(Clone)]
pub struct IssuedCertificate {
    /// The full chain as PEM: the issued certificate, then the CA certificate.
    pub cert_pem: String,
    /// The private key as PKCS#8 PEM.
    pub key_pem: String,
    /// When the issued certificate expires.
    pub not_after: SystemTime,
}

impl CertificateAuthority {
    /// New self-signed ECDSA P-256 CA named `common_name`: basicConstraints
    /// CA:TRUE with pathlen 0, keyUsage keyCertSign and cRLSign, valid from
    /// [`CLOCK_SKEW_ALLOWANCE`] ago until `valid_for` from now.
    pub fn generate(common_name: &str, valid_for: Duration) -> Result<Self> {
        let (not_before, not_after) = validity_window(valid_for)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::GenerateKey)?;

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = not_before;
        params.not_after = not_after;

        let cert = params.self_signed(&key).map_err(Error::Sign)?;
        let cert_der = cert.der().clone();
        let subject = CertificateFields::parse(&cert_der)
            .map_err(Error::Certificate)?
            .subject
            .to_vec();
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
            cert_der,
            subject,
            not_after: not_after.into(),
            writes_authority_key_identifier: true,
        })
    }

    /// Loads a CA from its certificate PEM and private key PEM (PKCS#8, SEC1
    /// or PKCS#1). Errors say which part is wrong: either PEM, the
    /// certificate not being a CA, or the key not matching the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let certs = pem::load_certs_pem(cert_pem).map_err(Error::CertificatePem)?;
        let [cert_der] = <[_; 1]>::try_from(certs).map_err(|certs| Error::CertificateCount { count: certs.len() })?;
        let fields = CertificateFields::parse(&cert_der).map_err(Error::Certificate)?;
        let basic_constraints = fields.basic_constraints().map_err(Error::Certificate)?;
        if !basic_constraints.is_some_and(|constraints| constraints.is_ca) {
            return Err(Error::NotCa);
        }
        let key_usage = fields.key_usage().map_err(Error::Certificate)?;
        if key_usage.is_some_and(|usage| !usage.allows(KeyUsage::KEY_CERT_SIGN)) {
            return Err(Error::SigningNotAllowed);
        }

        let key = pem::load_private_key_pem(key_pem).map_err(Error::KeyPem)?;
        let key = pkcs8::to_pkcs8(&key).map_err(Error::KeyEncoding)?;
        let key = KeyPair::try_from(&key).map_err(Error::Key)?;
        if key.subject_public_key_info() != fields.subject_public_key_info {
            return Err(Error::KeyMismatch);
        }

        let subject_key_identifier = fields.subject_key_identifier().map_err(Error::Certificate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = fields.subject_distinguished_name().map_err(Error::SubjectName)?;
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.key_identifier_method = match subject_key_identifier {
            Some(identifier) => KeyIdMethod::PreSpecified(identifier.to_vec()),
            None => KeyIdMethod::Sha256,
        };

        let authority = Self {
            issuer: Issuer::new(params, key),
            cert_pem: pem::encode_pem("CERTIFICATE", &cert_der),
            subject: fields.subject.to_vec(),
            not_after: fields.not_after.into(),
            writes_authority_key_identifier: subject_key_identifier.is_some(),
            cert_der,
        };
        authority.check_issuer_name_round_trip()?;
        Ok(authority)
    }

    /// The CA certificate as PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate as DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA private key as PKCS#8 PEM, whatever encoding it was loaded from.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// When the CA certificate expires; rotate before then.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Issues a serving certificate with a fresh ECDSA P-256 key for
    /// `dns_names` and `ips` (as DNS and IP SANs, in that order). The
    /// commonName is the first name; keyUsage digitalSignature, extended key
    /// usage serverAuth; valid from [`CLOCK_SKEW_ALLOWANCE`] ago until
    /// `valid_for` from now.
    pub fn issue_serving(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        valid_for: Duration,
    ) -> Result<IssuedCertificate> {
        let common_name = dns_names
            .first()
            .cloned()
            .or_else(|| ips.first().map(IpAddr::to_string))
            .ok_or(Error::NoSubjectNames)?;
        let (not_before, not_after) = validity_window(valid_for)?;

        let mut params = CertificateParams::default();
        params.subject_alt_names = subject_alt_names(dns_names, ips)?;
        params.distinguished_name = DistinguishedName::new();
        // NB: clients verify the SANs; a commonName over the RFC 5280 bound
        // is left out rather than making some parsers reject the certificate.
        if common_name.len() <= MAX_COMMON_NAME_LENGTH {
            params.distinguished_name.push(DnType::CommonName, common_name);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = self.writes_authority_key_identifier;
        params.not_before = not_before;
        params.not_after = not_after;

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::GenerateKey)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(Error::Sign)?;
        self.check_issued_under_own_name(cert.der())?;

        Ok(IssuedCertificate {
            cert_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
            not_after: not_after.into(),
        })
    }

    /// Signs a throwaway certificate to prove that certificates issued by a
    /// loaded CA name it exactly as its certificate does.
    fn check_issuer_name_round_trip(&self) -> Result<()> {
        let probe = CertificateParams::default()
            .signed_by(self.issuer.key(), &self.issuer)
            .map_err(Error::Sign)?;
        self.check_issued_under_own_name(probe.der())
    }

    fn check_issued_under_own_name(&self, issued: &CertificateDer<'_>) -> Result<()> {
        let issued = CertificateFields::parse(issued).map_err(Error::Certificate)?;
        if issued.issuer == self.subject.as_slice() {
            Ok(())
        } else {
            Err(Error::SubjectEncoding)
        }
    }
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("issuer", &self.issuer)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[elided]")
            .field("not_after", &self.not_after)
            .finish()
    }
}

fn subject_alt_names(dns_names: &[String], ips: &[IpAddr]) -> Result<Vec<SanType>> {
    let dns_names = dns_names.iter().map(|name| {
        Ia5String::try_from(name.as_str())
            .map(SanType::DnsName)
            .map_err(|source| Error::InvalidDnsName {
                name: name.clone(),
                source,
            })
    });
    let ips = ips.iter().map(|&ip| Ok(SanType::IpAddress(ip)));
    dns_names.chain(ips).collect()
}

/// `not_before` and `not_after` for a certificate issued now, truncated to
/// whole seconds as X.509 stores them.
fn validity_window(valid_for: Duration) -> Result<(OffsetDateTime, OffsetDateTime)> {
    let out_of_range = || Error::ValidityOutOfRange { valid_for };
    let now = OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let not_before = now - CLOCK_SKEW_ALLOWANCE;
    let not_after = time::Duration::try_from(valid_for)
        .ok()
        .and_then(|valid_for| now.checked_add(valid_for))
        // GeneralizedTime has four year digits.
        .filter(|not_after| not_after.year() <= 9999)
        .ok_or_else(out_of_range)?;
    Ok((not_before, not_after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x509::{BasicConstraints as Constraints, oid};

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);
    /// 2.5.29.17
    const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
    /// 2.5.29.37
    const EXTENDED_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];
    /// 1.3.6.1.5.5.7.3.1, id-kp-serverAuth
    const SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];

    fn only_cert(pem: &str) -> CertificateDer<'static> {
        pem::load_certs_pem(pem).unwrap().remove(0)
    }

    fn extended_key_usages(fields: &CertificateFields<'_>) -> Vec<Vec<u8>> {
        let extension = fields.extension(EXTENDED_KEY_USAGE).unwrap();
        let mut purposes = crate::der::read_single(extension.value, crate::der::tag::SEQUENCE)
            .unwrap()
            .nested();
        let mut found = Vec::new();
        while !purposes.is_empty() {
            found.push(
                purposes
                    .read(crate::der::tag::OBJECT_IDENTIFIER)
                    .unwrap()
                    .contents
                    .to_vec(),
            );
        }
        found
    }

    #[test]
    fn authority_can_be_shared_across_tasks() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<CertificateAuthority>();
        assert_send_sync::<IssuedCertificate>();
    }

    #[test]
    fn generated_ca_is_a_pathlen_zero_signing_ca() {
        let before = OffsetDateTime::now_utc();
        let ca = CertificateAuthority::generate("connectors test CA", 365 * DAY).unwrap();
        let cert = only_cert(ca.cert_pem());
        let fields = CertificateFields::parse(&cert).unwrap();

        assert_eq!(fields.issuer, fields.subject);
        assert_eq!(
            fields.basic_constraints().unwrap(),
            Some(Constraints {
                is_ca: true,
                path_len: Some(0)
            })
        );
        assert!(fields.extension(oid::BASIC_CONSTRAINTS).unwrap().critical);
        let usage = fields.key_usage().unwrap().unwrap();
        assert!(usage.allows(KeyUsage::KEY_CERT_SIGN));
        assert!(usage.allows(KeyUsage::CRL_SIGN));
        assert!(!usage.allows(KeyUsage::DIGITAL_SIGNATURE));
        let name = fields.subject_distinguished_name().unwrap();
        assert_eq!(
            name.get(&DnType::CommonName),
            Some(&rcgen::DnValue::Utf8String("connectors test CA".into()))
        );

        let skew = (before - fields.not_before).whole_seconds();
        assert!((3599..=3601).contains(&skew), "not_before {skew}s ago");
        let lifetime = (fields.not_after - fields.not_before).whole_seconds();
        assert_eq!(lifetime, (365 * DAY + CLOCK_SKEW_ALLOWANCE).as_secs() as i64);
        assert_eq!(SystemTime::from(fields.not_after), ca.not_after());
        assert!(ca.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn serving_certificate_carries_names_usages_and_chain() {
        let ca = CertificateAuthority::generate("connectors test CA", 365 * DAY).unwrap();
        let ips = ["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        let issued = ca
            .issue_serving(&["webhook.test".into(), "webhook.svc".into()], &ips, 30 * DAY)
            .unwrap();

        let chain = pem::load_certs_pem(&issued.cert_pem).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(&chain[1], ca.cert_der());
        let leaf = CertificateFields::parse(&chain[0]).unwrap();
        let ca_fields = CertificateFields::parse(ca.cert_der()).unwrap();
        assert_eq!(leaf.issuer, ca_fields.subject);
        assert_eq!(
            leaf.subject_distinguished_name().unwrap().get(&DnType::CommonName),
            Some(&rcgen::DnValue::Utf8String("webhook.test".into()))
        );
        assert_eq!(
            leaf.basic_constraints().unwrap(),
            Some(Constraints {
                is_ca: false,
                path_len: None
            })
        );
        let usage = leaf.key_usage().unwrap().unwrap();
        assert!(usage.allows(KeyUsage::DIGITAL_SIGNATURE));
        assert!(!usage.allows(KeyUsage::KEY_CERT_SIGN));
        assert_eq!(extended_key_usages(&leaf), vec![SERVER_AUTH.to_vec()]);
        assert!(leaf.extension(SUBJECT_ALT_NAME).is_some());
        assert_eq!(
            (leaf.not_after - leaf.not_before).whole_seconds(),
            (30 * DAY + CLOCK_SKEW_ALLOWANCE).as_secs() as i64
        );
        assert_eq!(SystemTime::from(leaf.not_after), issued.not_after);
        assert!(issued.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(!format!("{issued:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn ip_only_certificate_is_named_after_its_first_ip() {
        let ca = CertificateAuthority::generate("connectors test CA", DAY).unwrap();
        let issued = ca.issue_serving(&[], &["10.0.0.7".parse().unwrap()], DAY).unwrap();
        let chain = pem::load_certs_pem(&issued.cert_pem).unwrap();
        let leaf = CertificateFields::parse(&chain[0]).unwrap();
        assert_eq!(
            leaf.subject_distinguished_name().unwrap().get(&DnType::CommonName),
            Some(&rcgen::DnValue::Utf8String("10.0.0.7".into()))
        );
    }

    #[test]
    fn issuing_without_names_or_with_bad_names_fails() {
        let ca = CertificateAuthority::generate("connectors test CA", DAY).unwrap();
        assert!(matches!(ca.issue_serving(&[], &[], DAY), Err(Error::NoSubjectNames)));
        assert!(matches!(
            ca.issue_serving(&["bücher.test".into()], &[], DAY),
            Err(Error::InvalidDnsName { .. })
        ));
        assert!(matches!(
            ca.issue_serving(&["webhook.test".into()], &[], Duration::MAX),
            Err(Error::ValidityOutOfRange { .. })
        ));
    }
}
