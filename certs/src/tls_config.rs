//! rustls configurations pinned to the ring provider.
//!
//! NB: every config names its provider. The process-wide default is
//! ambiguous, and `ServerConfig::builder()` panics, as soon as another crate
//! in the binary enables a second provider.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::reload::ReloadingCertResolver;

/// TLS 1.3 and 1.2, in order of preference.
const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The provider does not support the protocol versions asked for.
    #[error("failed to configure TLS 1.2 and 1.3 with the ring provider: {0}")]
    ProtocolVersions(#[source] rustls::Error),
}

/// Result of building a TLS configuration.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The ring crypto provider every configuration in this crate uses.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration (ring, TLS 1.2 and 1.3, no client authentication)
/// that serves whatever certificate `resolver` holds and offers `alpn`, e.g.
/// `&[b"h2", b"http/1.1"]`.
pub fn server_config(resolver: Arc<ReloadingCertResolver>, alpn: &[&[u8]]) -> Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(Error::ProtocolVersions)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(config)
}

/// A client configuration (ring, TLS 1.2 and 1.3) trusting only `roots` and
/// offering `alpn`; for callers of our servers and for tests.
pub fn client_config(roots: RootCertStore, alpn: &[&[u8]]) -> Result<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(Error::ProtocolVersions)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(config)
}
