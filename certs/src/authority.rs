//! The certificate authority that signs serving certificates: generated fresh
//! at install time, or loaded back from the PEM kept in a Secret.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use pkcs8::der::asn1::{AnyRef, OctetStringRef};
use pkcs8::der::{self, Decode, Encode};
use pkcs8::{AlgorithmIdentifierRef, ObjectIdentifier, PrivateKeyInfoRef};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sec1::EcPrivateKey;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

use crate::pem;

/// How far back `not_before` is set, so that nodes whose clocks run a little
/// behind the issuer's still accept a certificate issued a moment ago.
pub(crate) const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60 * 60);

/// RFC 5280's upper bound (ub-common-name) on the length of a commonName.
const MAX_COMMON_NAME_LENGTH: usize = 64;

/// secp256r1 (P-256), the curve of a SEC1 key with a 32-byte scalar.
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// secp384r1 (P-384), the curve of a SEC1 key with a 48-byte scalar.
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

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
    Certificate(#[source] X509Error),
    /// The certificate lacks basicConstraints CA:TRUE.
    #[error("CA certificate is not a CA: it lacks basicConstraints CA:TRUE")]
    NotCa,
    /// The certificate's keyUsage forbids signing certificates.
    #[error("CA certificate's keyUsage does not include keyCertSign")]
    SigningNotAllowed,
    /// The CA private key PEM is unusable.
    #[error("invalid CA private key PEM: {0}")]
    KeyPem(#[source] pem::Error),
    /// A SEC1 or PKCS#1 CA private key that cannot be rewrapped as PKCS#8.
    #[error("malformed CA private key: {0}")]
    KeyEncoding(#[source] der::Error),
    /// A SEC1 CA private key on a curve other than P-256 or P-384.
    #[error("CA private key is on an unsupported curve (P-256 and P-384 are supported)")]
    UnsupportedCurve,
    /// A private key encoding rustls added after this code was written.
    #[error("unsupported CA private key encoding")]
    UnsupportedKeyEncoding,
    /// rcgen (ring) does not accept the CA private key.
    #[error("unsupported CA private key (ECDSA P-256/P-384, Ed25519 and RSA are supported): {0}")]
    Key(#[source] rcgen::Error),
    /// The private key belongs to another certificate.
    #[error("CA private key does not match the CA certificate's public key")]
    KeyMismatch,
    /// rcgen cannot rebuild the subject name for use as an issuer name.
    #[error("CA certificate's subject cannot be used as an issuer name: {0}")]
    SubjectName(#[source] rcgen::Error),
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
        let subject = parse_certificate(&cert_der)
            .map_err(Error::Certificate)?
            .subject()
            .as_raw()
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
        let cert = parse_certificate(&cert_der).map_err(Error::Certificate)?;
        let basic_constraints = cert.basic_constraints().map_err(Error::Certificate)?;
        if !basic_constraints.is_some_and(|constraints| constraints.value.ca) {
            return Err(Error::NotCa);
        }
        let key_usage = cert.key_usage().map_err(Error::Certificate)?;
        if key_usage.is_some_and(|usage| !usage.value.key_cert_sign()) {
            return Err(Error::SigningNotAllowed);
        }

        let key = pem::load_private_key_pem(key_pem).map_err(Error::KeyPem)?;
        let key = KeyPair::try_from(&to_pkcs8(&key)?).map_err(Error::Key)?;
        if key.subject_public_key_info() != cert.public_key().raw {
            return Err(Error::KeyMismatch);
        }

        let subject = cert.subject().as_raw().to_vec();
        let not_after = cert.validity().not_after.to_datetime().into();
        let writes_authority_key_identifier = cert
            .iter_extensions()
            .any(|extension| matches!(extension.parsed_extension(), ParsedExtension::SubjectKeyIdentifier(_)));
        // NB: rcgen takes the issuer name and key identifier from the
        // certificate, so issued certificates point at its subjectKeyIdentifier.
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(Error::SubjectName)?;
        let authority = Self {
            issuer,
            cert_pem: pem::encode_pem("CERTIFICATE", &cert_der),
            cert_der,
            subject,
            not_after,
            writes_authority_key_identifier,
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
    ///
    /// NB: rcgen rebuilds the subject from its parts and keeps one value per
    /// attribute type, so a subject such as `OU=a, OU=b` would come out
    /// different and issued certificates would not chain.
    fn check_issuer_name_round_trip(&self) -> Result<()> {
        let probe = CertificateParams::default()
            .signed_by(self.issuer.key(), &self.issuer)
            .map_err(Error::Sign)?;
        self.check_issued_under_own_name(probe.der())
    }

    fn check_issued_under_own_name(&self, issued: &CertificateDer<'_>) -> Result<()> {
        let issued = parse_certificate(issued).map_err(Error::Certificate)?;
        if issued.issuer().as_raw() == self.subject.as_slice() {
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

/// Parses one DER certificate; bytes after its end make it malformed.
pub(crate) fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, X509Error> {
    match X509Certificate::from_der(der)? {
        ([], cert) => Ok(cert),
        _ => Err(X509Error::InvalidCertificate),
    }
}

/// The key as PKCS#8, the only encoding rcgen reads with the ring backend.
/// SEC1 (RFC 5915) and PKCS#1 (RFC 8017) keys are wrapped unchanged.
fn to_pkcs8(key: &PrivateKeyDer<'_>) -> Result<PrivatePkcs8KeyDer<'static>> {
    let wrapped = match key {
        PrivateKeyDer::Pkcs8(pkcs8) => return Ok(pkcs8.clone_key()),
        PrivateKeyDer::Sec1(sec1) => {
            let curve = sec1_curve(sec1.secret_sec1_der())?;
            let algorithm = AlgorithmIdentifierRef {
                oid: sec1::ALGORITHM_OID,
                parameters: Some(AnyRef::from(&curve)),
            };
            private_key_info(algorithm, sec1.secret_sec1_der())
        }
        PrivateKeyDer::Pkcs1(pkcs1) => private_key_info(pkcs1::ALGORITHM_ID, pkcs1.secret_pkcs1_der()),
        _ => return Err(Error::UnsupportedKeyEncoding),
    };
    wrapped.map(PrivatePkcs8KeyDer::from).map_err(Error::KeyEncoding)
}

fn private_key_info(algorithm: AlgorithmIdentifierRef<'_>, private_key: &[u8]) -> der::Result<Vec<u8>> {
    PrivateKeyInfoRef::new(algorithm, OctetStringRef::new(private_key)?).to_der()
}

/// The named curve of a SEC1 key: from its parameters when present, else
/// from the length of the private scalar.
fn sec1_curve(sec1: &[u8]) -> Result<ObjectIdentifier> {
    let key = EcPrivateKey::from_der(sec1).map_err(Error::KeyEncoding)?;
    match key.parameters.and_then(|parameters| parameters.named_curve()) {
        Some(curve) if [P256, P384].contains(&curve) => Ok(curve),
        Some(_) => Err(Error::UnsupportedCurve),
        None => match key.private_key.len() {
            32 => Ok(P256),
            48 => Ok(P384),
            _ => Err(Error::UnsupportedCurve),
        },
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
    use std::net::Ipv6Addr;

    use x509_parser::der_parser::asn1_rs::Tag;
    use x509_parser::extensions::GeneralName;

    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    fn only_cert(pem: &str) -> CertificateDer<'static> {
        pem::load_certs_pem(pem).unwrap().remove(0)
    }

    /// The commonName, checking that it is a UTF8String as rcgen writes it.
    fn utf8_common_name<'a>(cert: &'a X509Certificate<'_>) -> &'a str {
        let common_name = cert.subject().iter_common_name().next().expect("a commonName");
        assert_eq!(common_name.attr_value().tag(), Tag::Utf8String);
        common_name.as_str().unwrap()
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
        let der = only_cert(ca.cert_pem());
        let cert = parse_certificate(&der).unwrap();

        assert_eq!(cert.issuer().as_raw(), cert.subject().as_raw());
        let constraints = cert.basic_constraints().unwrap().unwrap();
        assert!(constraints.critical);
        assert!(constraints.value.ca);
        assert_eq!(constraints.value.path_len_constraint, Some(0));
        let usage = cert.key_usage().unwrap().unwrap().value;
        assert!(usage.key_cert_sign());
        assert!(usage.crl_sign());
        assert!(!usage.digital_signature());
        assert_eq!(utf8_common_name(&cert), "connectors test CA");

        let not_before = cert.validity().not_before.to_datetime();
        let not_after = cert.validity().not_after.to_datetime();
        let skew = (before - not_before).whole_seconds();
        assert!((3599..=3601).contains(&skew), "not_before {skew}s ago");
        let lifetime = (not_after - not_before).whole_seconds();
        assert_eq!(lifetime, (365 * DAY + CLOCK_SKEW_ALLOWANCE).as_secs() as i64);
        assert_eq!(SystemTime::from(not_after), ca.not_after());
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
        let leaf = parse_certificate(&chain[0]).unwrap();
        let ca_cert = parse_certificate(ca.cert_der()).unwrap();
        assert_eq!(leaf.issuer().as_raw(), ca_cert.subject().as_raw());
        assert_eq!(utf8_common_name(&leaf), "webhook.test");
        let constraints = leaf.basic_constraints().unwrap().unwrap().value;
        assert!(!constraints.ca);
        assert_eq!(constraints.path_len_constraint, None);
        let usage = leaf.key_usage().unwrap().unwrap().value;
        assert!(usage.digital_signature());
        assert!(!usage.key_cert_sign());
        let extended_usage = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(extended_usage.server_auth);
        assert!(!extended_usage.client_auth && !extended_usage.any && extended_usage.other.is_empty());
        let names = &leaf.subject_alternative_name().unwrap().unwrap().value.general_names;
        assert_eq!(
            names,
            &[
                GeneralName::DNSName("webhook.test"),
                GeneralName::DNSName("webhook.svc"),
                GeneralName::IPAddress(&[127, 0, 0, 1]),
                GeneralName::IPAddress(&Ipv6Addr::LOCALHOST.octets()),
            ]
        );
        let not_before = leaf.validity().not_before.to_datetime();
        let not_after = leaf.validity().not_after.to_datetime();
        assert_eq!(
            (not_after - not_before).whole_seconds(),
            (30 * DAY + CLOCK_SKEW_ALLOWANCE).as_secs() as i64
        );
        assert_eq!(SystemTime::from(not_after), issued.not_after);
        assert!(issued.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(!format!("{issued:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn ip_only_certificate_is_named_after_its_first_ip() {
        let ca = CertificateAuthority::generate("connectors test CA", DAY).unwrap();
        let issued = ca.issue_serving(&[], &["10.0.0.7".parse().unwrap()], DAY).unwrap();
        let chain = pem::load_certs_pem(&issued.cert_pem).unwrap();
        let leaf = parse_certificate(&chain[0]).unwrap();
        assert_eq!(utf8_common_name(&leaf), "10.0.0.7");
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

    /// The SEC1 test CA key with its `parameters` replaced.
    fn sec1_key_with_parameters(parameters: Option<sec1::EcParameters>) -> Vec<u8> {
        let PrivateKeyDer::Sec1(original) =
            pem::load_private_key_pem(include_str!("../tests/fixtures/ec-sec1-ca.key")).unwrap()
        else {
            panic!("the fixture is a SEC1 key");
        };
        let mut key = EcPrivateKey::from_der(original.secret_sec1_der()).unwrap();
        key.parameters = parameters;
        key.to_der().unwrap()
    }

    #[test]
    fn sec1_key_without_curve_is_read_by_its_length() {
        let ca_cert = only_cert(include_str!("../tests/fixtures/ec-sec1-ca.crt"));
        let bare = sec1_key_with_parameters(None);
        let key = to_pkcs8(&PrivateKeyDer::Sec1(bare.into())).unwrap();
        let key = KeyPair::try_from(&key).unwrap();
        assert_eq!(
            key.subject_public_key_info(),
            parse_certificate(&ca_cert).unwrap().public_key().raw
        );
    }

    #[test]
    fn sec1_key_on_another_curve_or_malformed_is_rejected() {
        let secp256k1 = ObjectIdentifier::new_unwrap("1.3.132.0.10");
        let key = sec1_key_with_parameters(Some(sec1::EcParameters::NamedCurve(secp256k1)));
        assert!(matches!(
            to_pkcs8(&PrivateKeyDer::Sec1(key.into())),
            Err(Error::UnsupportedCurve)
        ));
        assert!(matches!(
            to_pkcs8(&PrivateKeyDer::Sec1(vec![0x30, 0x00].into())),
            Err(Error::KeyEncoding(_))
        ));
    }

    #[test]
    fn certificate_with_trailing_bytes_is_malformed() {
        let ca = CertificateAuthority::generate("connectors test CA", DAY).unwrap();
        let padded = [ca.cert_der().as_ref(), &[0]].concat();
        assert!(parse_certificate(ca.cert_der()).is_ok());
        assert!(matches!(parse_certificate(&padded), Err(X509Error::InvalidCertificate)));
    }
}
