//! Wraps SEC1 (`EC PRIVATE KEY`) and PKCS#1 (`RSA PRIVATE KEY`) keys in
//! PKCS#8, the only encoding rcgen reads with the ring backend (RFC 5208,
//! RFC 5915, RFC 8017).

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::der::{self, tag};

/// 1.2.840.10045.2.1, id-ecPublicKey
const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// 1.2.840.10045.3.1.7, secp256r1
const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// 1.3.132.0.34, secp384r1
const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
/// 1.2.840.113549.1.1.1, rsaEncryption
const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// Why a key could not be rewrapped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SEC1 structure is broken.
    #[error("malformed SEC1 EC private key: {0}")]
    Sec1(#[source] der::Error),
    /// An EC key on a curve other than P-256 or P-384.
    #[error("EC private key is on an unsupported curve (P-256 and P-384 are supported)")]
    UnsupportedCurve,
    /// A key encoding rustls added after this code was written.
    #[error("unsupported private key encoding")]
    UnsupportedEncoding,
}

/// Result of rewrapping a key.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The key as PKCS#8, converting SEC1 and PKCS#1 encodings.
pub(crate) fn to_pkcs8(key: &PrivateKeyDer<'_>) -> Result<PrivatePkcs8KeyDer<'static>> {
    let pkcs8 = match key {
        PrivateKeyDer::Pkcs8(pkcs8) => pkcs8.secret_pkcs8_der().to_vec(),
        PrivateKeyDer::Sec1(sec1) => {
            let curve = sec1_curve(sec1.secret_sec1_der())?;
            let algorithm = [
                der::encode(tag::OBJECT_IDENTIFIER, EC_PUBLIC_KEY),
                der::encode(tag::OBJECT_IDENTIFIER, curve),
            ]
            .concat();
            private_key_info(&algorithm, sec1.secret_sec1_der())
        }
        PrivateKeyDer::Pkcs1(pkcs1) => {
            let algorithm = [
                der::encode(tag::OBJECT_IDENTIFIER, RSA_ENCRYPTION),
                der::encode(tag::NULL, &[]),
            ]
            .concat();
            private_key_info(&algorithm, pkcs1.secret_pkcs1_der())
        }
        _ => return Err(Error::UnsupportedEncoding),
    };
    Ok(PrivatePkcs8KeyDer::from(pkcs8))
}

/// `PrivateKeyInfo ::= SEQUENCE { version 0, AlgorithmIdentifier, OCTET STRING key }`
fn private_key_info(algorithm_fields: &[u8], private_key: &[u8]) -> Vec<u8> {
    let contents = [
        der::encode(tag::INTEGER, &[0]),
        der::encode(tag::SEQUENCE, algorithm_fields),
        der::encode(tag::OCTET_STRING, private_key),
    ]
    .concat();
    der::encode(tag::SEQUENCE, &contents)
}

/// The named curve of a SEC1 key: from its `[0] parameters` when present,
/// else from the length of the private scalar.
fn sec1_curve(sec1: &[u8]) -> Result<&'static [u8]> {
    let mut fields = der::read_single(sec1, tag::SEQUENCE).map_err(Error::Sec1)?.nested();
    fields.read(tag::INTEGER).map_err(Error::Sec1)?;
    let scalar = fields.read(tag::OCTET_STRING).map_err(Error::Sec1)?;
    let parameters = fields.read_optional(tag::context_constructed(0)).map_err(Error::Sec1)?;
    match parameters {
        Some(parameters) => {
            let curve = der::read_single(parameters.contents, tag::OBJECT_IDENTIFIER).map_err(Error::Sec1)?;
            [P256, P384]
                .into_iter()
                .find(|known| *known == curve.contents)
                .ok_or(Error::UnsupportedCurve)
        }
        None => match scalar.contents.len() {
            32 => Ok(P256),
            48 => Ok(P384),
            _ => Err(Error::UnsupportedCurve),
        },
    }
}
