//! PEM in and out: certificate chains, trust roots and private keys as they
//! appear in Kubernetes Secrets and mounted files.

use rustls::RootCertStore;
use rustls::pki_types::pem::{self as pki_pem, PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why PEM text could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A block is syntactically broken (missing END line, bad base64).
    #[error("malformed PEM: {}", describe_malformed(.0))]
    Malformed(#[source] pki_pem::Error),
    /// No block of the wanted kind; `found` lists the labels that were there.
    #[error("no {wanted} PEM block found{}", describe_found(found))]
    Missing {
        /// What was looked for, e.g. "CERTIFICATE".
        wanted: &'static str,
        /// The labels of the blocks that were present.
        found: Vec<&'static str>,
    },
    /// More than one private key, so which one is meant is unclear.
    #[error("{count} private keys found where one was expected")]
    SeveralKeys {
        /// How many private key blocks there were.
        count: usize,
    },
    /// A certificate rustls cannot use as a trust anchor.
    #[error("certificate {index} cannot be a trust anchor: {source}")]
    TrustAnchor {
        /// Position of the certificate in the PEM, from 0.
        index: usize,
        /// Why rustls rejected it.
        #[source]
        source: rustls::Error,
    },
}

/// Result of reading PEM.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Decodes every `CERTIFICATE` block, in order; fails if there is none.
pub fn load_certs_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let sections = read_sections(pem)?;
    let found = labels(&sections);
    let certs: Vec<_> = sections
        .into_iter()
        .filter_map(|(kind, der)| CertificateDer::from_pem(kind, der))
        .collect();
    if certs.is_empty() {
        return Err(Error::Missing {
            wanted: "CERTIFICATE",
            found,
        });
    }
    Ok(certs)
}

/// Decodes the single private key (PKCS#8, SEC1 or PKCS#1) in `pem`.
pub fn load_private_key_pem(pem: &str) -> Result<PrivateKeyDer<'static>> {
    let sections = read_sections(pem)?;
    let found = labels(&sections);
    let mut keys: Vec<PrivateKeyDer<'static>> = sections
        .into_iter()
        .filter_map(|(kind, der)| PrivateKeyDer::from_pem(kind, der))
        .collect();
    match keys.len() {
        0 => Err(Error::Missing {
            wanted: "PRIVATE KEY",
            found,
        }),
        1 => Ok(keys.remove(0)),
        count => Err(Error::SeveralKeys { count }),
    }
}

/// A root store trusting every certificate in `pem`, e.g. a CA bundle.
pub fn root_store_from_pem(pem: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for (index, cert) in load_certs_pem(pem)?.into_iter().enumerate() {
        roots.add(cert).map_err(|source| Error::TrustAnchor { index, source })?;
    }
    Ok(roots)
}

/// Encodes DER as one PEM block with 64-column base64 lines and a final newline.
pub fn encode_pem(label: &str, der: &[u8]) -> String {
    // NB: LF line endings on every platform, so PEM round-trips byte for byte.
    let config = ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF);
    ::pem::encode_config(&::pem::Pem::new(label, der), config)
}

/// Every block whose label rustls knows, in order; blocks with other labels
/// are skipped, and any broken block fails the whole text.
fn read_sections(pem: &str) -> Result<Vec<(SectionKind, Vec<u8>)>> {
    <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(Error::Malformed)
}

fn labels(sections: &[(SectionKind, Vec<u8>)]) -> Vec<&'static str> {
    sections
        .iter()
        .map(|(kind, _)| match kind {
            SectionKind::Certificate => "CERTIFICATE",
            SectionKind::PublicKey => "PUBLIC KEY",
            SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
            SectionKind::PrivateKey => "PRIVATE KEY",
            SectionKind::EcPrivateKey => "EC PRIVATE KEY",
            SectionKind::Crl => "X509 CRL",
            SectionKind::Csr => "CERTIFICATE REQUEST",
            SectionKind::EchConfigList => "ECHCONFIG",
            _ => "unrecognised",
        })
        .collect()
}

/// The syntax error in words; rustls shows the offending line as bytes.
fn describe_malformed(error: &pki_pem::Error) -> String {
    match error {
        pki_pem::Error::MissingSectionEnd { end_marker } => {
            format!("section end {:?} missing", String::from_utf8_lossy(end_marker))
        }
        pki_pem::Error::IllegalSectionStart { line } => {
            format!("illegal section start: {:?}", String::from_utf8_lossy(line))
        }
        other => other.to_string(),
    }
}

fn describe_found(found: &[&str]) -> String {
    if found.is_empty() {
        " (no PEM blocks at all)".to_owned()
    } else {
        format!(" (found {})", found.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_pem_decodes_to_the_same_bytes() {
        for length in [0usize, 1, 2, 3, 47, 48, 49, 100, 1000] {
            let der: Vec<u8> = (0..length).map(|index| (index * 7 + 3) as u8).collect();
            let pem = encode_pem("CERTIFICATE", &der);
            assert!(pem.lines().all(|line| line.len() <= 64), "{pem}");
            if length > 0 {
                let decoded = load_certs_pem(&pem).unwrap();
                assert_eq!(decoded[0].as_ref(), der.as_slice());
            }
        }
    }

    #[test]
    fn missing_blocks_are_named_with_what_was_found() {
        let cert_only = encode_pem("CERTIFICATE", &[1, 2, 3]);
        let error = load_private_key_pem(&cert_only).unwrap_err();
        assert_eq!(error.to_string(), "no PRIVATE KEY PEM block found (found CERTIFICATE)");
        let error = load_certs_pem("just some text").unwrap_err();
        assert_eq!(
            error.to_string(),
            "no CERTIFICATE PEM block found (no PEM blocks at all)"
        );
    }

    #[test]
    fn broken_blocks_are_malformed() {
        let truncated = "-----BEGIN CERTIFICATE-----\nAAAA\n";
        let error = load_certs_pem(truncated).unwrap_err();
        assert!(matches!(error, Error::Malformed(_)));
        assert_eq!(error.to_string(), r#"malformed PEM: section end "CERTIFICATE" missing"#);
        let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(load_certs_pem(bad_base64), Err(Error::Malformed(_))));
    }

    #[test]
    fn each_key_label_gives_its_encoding_and_other_blocks_are_skipped() {
        let der = vec![1, 2, 3];
        let cases = [
            ("PRIVATE KEY", PrivateKeyDer::Pkcs8(der.clone().into())),
            ("EC PRIVATE KEY", PrivateKeyDer::Sec1(der.clone().into())),
            ("RSA PRIVATE KEY", PrivateKeyDer::Pkcs1(der.clone().into())),
        ];
        for (label, expected) in cases {
            // NB: Secrets written on Windows carry CRLF; text around blocks is allowed.
            let pem = format!(
                "a key follows\n{}{}{}",
                encode_pem("X509 CRL", &[7]),
                encode_pem("SOMETHING ELSE", &[8]),
                encode_pem(label, &der).replace('\n', "\r\n"),
            );
            assert_eq!(load_private_key_pem(&pem).unwrap(), expected, "{label}");
            let error = load_certs_pem(&pem).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("no CERTIFICATE PEM block found (found X509 CRL, {label})")
            );
        }
    }

    #[test]
    fn two_keys_are_ambiguous() {
        let two = encode_pem("PRIVATE KEY", &[1]) + &encode_pem("EC PRIVATE KEY", &[2]);
        assert!(matches!(
            load_private_key_pem(&two),
            Err(Error::SeveralKeys { count: 2 })
        ));
    }
}
