//! Certificates for the webhook and the registry proxy: a certificate
//! authority that issues serving certificates, PEM loading, and a rustls
//! server configuration that picks up rotated certificate files without a
//! restart.
//!
//! All cryptography goes through rustls' and rcgen's ring backends, and every
//! rustls configuration names the ring provider explicitly.
//!
//! It depends on no workspace crate but `connector` (at most).

pub mod authority;
pub mod bundle;
pub mod inspect;
pub mod leaf;
pub mod pem;
pub mod reload;
pub mod tls_config;

pub use authority::{CertificateAuthority, IssuedCertificate};
pub use bundle::{ServingFiles, write_serving_bundle};
pub use inspect::{CertificateSummary, verify_serving_chain};
pub use leaf::LeafIssuer;
pub use pem::{load_certs_pem, load_private_key_pem, root_store_from_pem};
pub use reload::{Reloading, ReloadingCertResolver, spawn_pem_watch};
pub use tls_config::{client_config, server_config};
