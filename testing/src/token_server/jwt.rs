//! ES256 JSON Web Tokens as distribution's token authentication verifies
//! them: a P-256 key with a self-signed certificate for the registry's
//! `rootcertbundle`, and a header that names the key by `x5c` or by a
//! libtrust `kid`.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData as _};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::{Value, json};

/// How a token header identifies its signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyId {
    /// `x5c`: the signing certificate itself, which the registry checks
    /// against its bundle.
    #[default]
    X5c,
    /// `kid`: the libtrust key ID of the certificate's public key, which the
    /// registry looks up among the bundle's keys.
    Kid,
}

/// Why a signing key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rcgen failed to generate the key or certificate.
    #[error("failed to generate the token signing certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// ring rejected the generated key.
    #[error("ring rejected the token signing key: {0}")]
    Key(String),
}

/// A P-256 key with its self-signed certificate.
pub struct SigningKey {
    key_pair: EcdsaKeyPair,
    cert_der: Vec<u8>,
    cert_pem: String,
    kid: String,
    rng: SystemRandom,
}

impl SigningKey {
    /// A fresh key and a self-signed certificate named `common_name`.
    pub fn generate(common_name: &str) -> Result<Self, Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        let cert = params.self_signed(&key)?;
        let rng = SystemRandom::new();
        let key_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &rng)
            .map_err(|error| Error::Key(error.to_string()))?;
        Ok(Self {
            key_pair,
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            kid: libtrust_key_id(&key.subject_public_key_info()),
            rng,
        })
    }

    /// The certificate as PEM, for the registry's `rootcertbundle`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The libtrust key ID of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// `claims` signed as a compact JWS with ES256.
    pub fn sign(&self, key_id: KeyId, claims: &Value) -> String {
        let header = match key_id {
            KeyId::X5c => json!({"typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&self.cert_der)]}),
            KeyId::Kid => json!({"typ": "JWT", "alg": "ES256", "kid": self.kid}),
        };
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        // NB: JWS wants the fixed-width r||s form, not DER.
        let signature = self
            .key_pair
            .sign(&self.rng, signing_input.as_bytes())
            .expect("ECDSA signing with the system RNG does not fail");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

/// libtrust's key ID: the first 240 bits of SHA-256 over the DER
/// SubjectPublicKeyInfo, base32, in twelve colon-separated groups of four.
pub fn libtrust_key_id(spki_der: &[u8]) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, spki_der);
    let encoded = base32(&hash.as_ref()[..30]);
    encoded
        .as_bytes()
        .chunks(4)
        .map(|group| std::str::from_utf8(group).expect("base32 is ASCII"))
        .collect::<Vec<_>>()
        .join(":")
}

/// RFC 4648 base32 without padding.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in bytes {
        buffer = (buffer << 8) | u32::from(*byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ECDSA_P256_SHA256_FIXED, KeyPair as _, UnparsedPublicKey};

    #[test]
    fn base32_matches_the_rfc_4648_vectors() {
        for (input, expected) in [("", ""), ("f", "MY"), ("fo", "MZXQ"), ("foobar", "MZXW6YTBOI")] {
            assert_eq!(base32(input.as_bytes()), expected);
        }
    }

    #[test]
    fn a_key_id_has_twelve_groups_of_four() {
        let kid = libtrust_key_id(b"any public key");
        assert_eq!(kid.split(':').count(), 12, "{kid}");
        assert!(kid.split(':').all(|group| group.len() == 4), "{kid}");
    }

    #[test]
    fn a_signed_token_verifies_with_the_certificate_key() {
        let key = SigningKey::generate("signer").unwrap();
        let token = key.sign(KeyId::X5c, &json!({"sub": "u"}));
        let (input, signature) = token.rsplit_once('.').unwrap();
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(input.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        let public_key = key.key_pair.public_key().as_ref().to_vec();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_key)
            .verify(input.as_bytes(), &URL_SAFE_NO_PAD.decode(signature).unwrap())
            .unwrap();
    }
}
