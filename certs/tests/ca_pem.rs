//! Loading CAs back from PEM (ours and OpenSSL's), the errors for each kind
//! of bad input, and the serving bundle on disk.

use std::time::{Duration, SystemTime};

use certs::authority::{self, CertificateAuthority};
use certs::{load_certs_pem, root_store_from_pem, write_serving_bundle};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{ServerName, UnixTime};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

const EC_SEC1_CA_CERT: &str = include_str!("fixtures/ec-sec1-ca.crt");
const EC_SEC1_CA_KEY: &str = include_str!("fixtures/ec-sec1-ca.key");
const RSA_PKCS1_CA_CERT: &str = include_str!("fixtures/rsa-pkcs1-ca.crt");
const RSA_PKCS1_CA_KEY: &str = include_str!("fixtures/rsa-pkcs1-ca.key");
const ODD_NAMES_CA_KEY: &str = include_str!("fixtures/odd-names-ca.key");
const REPEATED_OU_CA_CERT: &str = include_str!("fixtures/repeated-ou-ca.crt");
const MULTI_VALUED_RDN_CA_CERT: &str = include_str!("fixtures/multi-valued-rdn-ca.crt");
/// The fixtures' notAfter, 2126-10-30 14:28:14 UTC: a GeneralizedTime.
const FIXTURE_NOT_AFTER: Duration = Duration::from_secs(4_949_044_094);

/// Verifies a leaf-first PEM chain for `name` against the CA PEM, as a client would.
fn verify(ca_pem: &str, chain_pem: &str, name: &str) -> Result<(), rustls::Error> {
    let roots = root_store_from_pem(ca_pem).expect("CA PEM loads as a root");
    let verifier = WebPkiServerVerifier::builder_with_provider(roots.into(), certs::tls_config::crypto_provider())
        .build()
        .expect("verifier");
    let chain = load_certs_pem(chain_pem).expect("chain PEM");
    let name = ServerName::try_from(name.to_owned()).expect("valid name");
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .map(drop)
}

fn issue_webhook(ca: &CertificateAuthority) -> certs::IssuedCertificate {
    ca.issue_serving(&["webhook.test".to_owned()], &["127.0.0.1".parse().unwrap()], DAY)
        .expect("issue serving certificate")
}

#[test]
fn generated_ca_round_trips_through_pem() {
    let original = CertificateAuthority::generate("connectors test CA", 365 * DAY).unwrap();
    let loaded = CertificateAuthority::from_pem(original.cert_pem(), &original.key_pem()).unwrap();

    assert_eq!(loaded.cert_pem(), original.cert_pem());
    assert_eq!(loaded.key_pem(), original.key_pem());
    assert_eq!(loaded.not_after(), original.not_after());

    let issued = issue_webhook(&loaded);
    verify(original.cert_pem(), &issued.cert_pem, "webhook.test").unwrap();
    verify(original.cert_pem(), &issued.cert_pem, "127.0.0.1").unwrap();
}

#[test]
fn openssl_cas_with_legacy_keys_issue_verifiable_certificates() {
    for (cert_pem, key_pem) in [(EC_SEC1_CA_CERT, EC_SEC1_CA_KEY), (RSA_PKCS1_CA_CERT, RSA_PKCS1_CA_KEY)] {
        let ca =
            CertificateAuthority::from_pem(cert_pem, key_pem).unwrap_or_else(|error| panic!("{error}\n{cert_pem}"));
        assert!(ca.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(ca.not_after(), SystemTime::UNIX_EPOCH + FIXTURE_NOT_AFTER);

        let issued = issue_webhook(&ca);
        verify(cert_pem, &issued.cert_pem, "webhook.test").unwrap();
        verify(cert_pem, &issued.cert_pem, "127.0.0.1").unwrap();
        assert!(verify(cert_pem, &issued.cert_pem, "other.test").is_err());

        // The PKCS#8 re-export loads back to the same CA.
        let reloaded = CertificateAuthority::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        verify(cert_pem, &issue_webhook(&reloaded).cert_pem, "webhook.test").unwrap();
    }
}

#[test]
fn subjects_rcgen_cannot_write_back_are_rejected() {
    // rcgen keeps one value per attribute type, so it would drop "OU=Team A".
    let error = CertificateAuthority::from_pem(REPEATED_OU_CA_CERT, ODD_NAMES_CA_KEY).unwrap_err();
    assert!(matches!(error, authority::Error::SubjectEncoding), "{error:?}");
    let error = CertificateAuthority::from_pem(MULTI_VALUED_RDN_CA_CERT, ODD_NAMES_CA_KEY).unwrap_err();
    assert!(matches!(error, authority::Error::SubjectName(_)), "{error:?}");
}

/// One row of the bad-input table.
struct BadInput<'a> {
    case: &'a str,
    cert_pem: &'a str,
    key_pem: &'a str,
    is_expected: fn(&authority::Error) -> bool,
}

#[test]
fn each_bad_input_names_the_part_that_is_wrong() {
    let ca = CertificateAuthority::generate("connectors test CA", DAY).unwrap();
    let other = CertificateAuthority::generate("another CA", DAY).unwrap();
    let leaf = issue_webhook(&ca);
    let leaf_only = load_certs_pem(&leaf.cert_pem).unwrap().remove(0);
    let leaf_only_pem = certs::pem::encode_pem("CERTIFICATE", &leaf_only);
    let key_pem = ca.key_pem();

    let other_key_pem = other.key_pem();
    let cases = [
        BadInput {
            case: "garbage certificate",
            cert_pem: "not a certificate",
            key_pem: &key_pem,
            is_expected: |error| matches!(error, authority::Error::CertificatePem(_)),
        },
        BadInput {
            case: "arguments swapped",
            cert_pem: &key_pem,
            key_pem: ca.cert_pem(),
            is_expected: |error| matches!(error, authority::Error::CertificatePem(_)),
        },
        BadInput {
            case: "truncated key",
            cert_pem: ca.cert_pem(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49",
            is_expected: |error| matches!(error, authority::Error::KeyPem(_)),
        },
        BadInput {
            case: "key that is not a key",
            cert_pem: ca.cert_pem(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            is_expected: |error| matches!(error, authority::Error::Key(_)),
        },
        BadInput {
            case: "another CA's key",
            cert_pem: ca.cert_pem(),
            key_pem: &other_key_pem,
            is_expected: |error| matches!(error, authority::Error::KeyMismatch),
        },
        BadInput {
            case: "serving certificate",
            cert_pem: &leaf_only_pem,
            key_pem: &leaf.key_pem,
            is_expected: |error| matches!(error, authority::Error::NotCa),
        },
        BadInput {
            case: "whole chain",
            cert_pem: &leaf.cert_pem,
            key_pem: &leaf.key_pem,
            is_expected: |error| matches!(error, authority::Error::CertificateCount { count: 2 }),
        },
    ];
    for input in cases {
        let error = CertificateAuthority::from_pem(input.cert_pem, input.key_pem).unwrap_err();
        assert!((input.is_expected)(&error), "{}: {error:?}", input.case);
    }

    let error = CertificateAuthority::from_pem(&key_pem, ca.cert_pem()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid CA certificate PEM: no CERTIFICATE PEM block found (found PRIVATE KEY)"
    );
    let error = CertificateAuthority::from_pem(ca.cert_pem(), &other_key_pem).unwrap_err();
    assert_eq!(
        error.to_string(),
        "CA private key does not match the CA certificate's public key"
    );
}

#[test]
fn bundle_files_hold_the_pem_and_the_key_is_private() {
    let ca = CertificateAuthority::generate("connectors test CA", DAY).unwrap();
    let issued = issue_webhook(&ca);
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("serving/certs");

    let files = write_serving_bundle(&nested, &ca, &issued).unwrap();
    assert_eq!(std::fs::read_to_string(&files.ca_cert).unwrap(), ca.cert_pem());
    assert_eq!(std::fs::read_to_string(&files.cert).unwrap(), issued.cert_pem);
    assert_eq!(std::fs::read_to_string(&files.key).unwrap(), issued.key_pem);

    // Rewriting replaces the files in place and leaves no temporaries.
    let reissued = issue_webhook(&ca);
    let again = write_serving_bundle(&nested, &ca, &reissued).unwrap();
    assert_eq!(again, files);
    assert_eq!(std::fs::read_to_string(&files.key).unwrap(), reissued.key_pem);
    let mut names: Vec<_> = std::fs::read_dir(&nested)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["ca.crt", "tls.crt", "tls.key"]);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&files.key), 0o600);
        assert_eq!(mode(&files.cert) & 0o077, mode(&files.ca_cert) & 0o077);
        assert_eq!(mode(&files.cert) & 0o600, 0o600);
    }
}
