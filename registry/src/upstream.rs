//! HTTP(S) clients for upstream registries: system and webpki roots plus a
//! connector's private CA, an explicit insecure switch, connection pooling,
//! and timeouts on connecting and on response headers but never on bodies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;

use crate::body::ProxyBody;
use crate::egress::EgressPolicy;
use crate::resolve::Pins;
use crate::splice::RelayConnector;

/// A pooled client for one trust configuration.
pub type UpstreamClient = Client<HttpsConnector<RelayConnector>, ProxyBody>;

/// How long to wait for a TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait for response headers once the request is sent. Blob
/// bodies have no overall deadline.
pub const RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an idle pooled upstream connection is kept before it is closed.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The largest read buffer of an upstream connection.
pub(crate) const UPSTREAM_READ_BUFFER: usize = 256 * 1024;

/// Why an upstream client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the connector's CA certificates are not usable PEM: {0}")]
    Ca(String),
    #[error("failed to configure TLS: {0}")]
    Tls(String),
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct TrustKey {
    extra_ca_pem: Option<String>,
    insecure: bool,
}

/// Clients by trust configuration, built once and shared.
pub struct UpstreamClients {
    roots: Arc<RootCertStore>,
    pins: Arc<Pins>,
    egress: Arc<EgressPolicy>,
    idle_timeout: Duration,
    clients: Mutex<HashMap<TrustKey, UpstreamClient>>,
}

impl UpstreamClients {
    /// Trusts the Mozilla (webpki) roots and the system's roots; dials
    /// pinned hosts at their pinned addresses, and only addresses `egress`
    /// allows.
    pub fn new(pins: Pins, egress: EgressPolicy) -> Self {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(added, "system root certificates loaded");
        Self {
            roots: Arc::new(roots),
            pins: Arc::new(pins),
            egress: Arc::new(egress),
            idle_timeout: POOL_IDLE_TIMEOUT,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Closes pooled connections idle for longer than `idle_timeout`
    /// (default [`POOL_IDLE_TIMEOUT`]); applies to clients built afterwards.
    #[cfg(test)]
    pub(crate) fn with_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// The client for a connector: the shared roots plus `extra_ca_pem`
    /// (never the proxy's own CA); `insecure` skips verification and must be
    /// asked for explicitly.
    pub fn client(&self, extra_ca_pem: Option<&str>, insecure: bool) -> Result<UpstreamClient, ClientError> {
        let key = TrustKey {
            extra_ca_pem: extra_ca_pem.map(str::to_owned),
            insecure,
        };
        if let Some(client) = self.clients.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(client.clone());
        }
        let client = self.build(&key)?;
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, client.clone());
        Ok(client)
    }

    fn build(&self, key: &TrustKey) -> Result<UpstreamClient, ClientError> {
        let provider = certs::tls_config::crypto_provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let config = if key.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = (*self.roots).clone();
            if let Some(pem) = &key.extra_ca_pem {
                let certificates = certs::load_certs_pem(pem).map_err(|e| ClientError::Ca(e.to_string()))?;
                let (added, _) = roots.add_parsable_certificates(certificates);
                if added == 0 {
                    return Err(ClientError::Ca("no certificate in it could be used".into()));
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_keepalive(Some(Duration::from_secs(60)));
        // NB: HTTP/1.1 only (hyper-rustls sets ALPN from this). Upstream h2
        // has reset streams mid-blob behind several registries, and one h2
        // connection caps blob throughput.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .wrap_connector(RelayConnector::new(http, self.pins.clone(), self.egress.clone()));
        // NB: hyper's adaptive read buffer, capped: it grows for blobs but
        // stops at 256 KiB (hyper's default cap is ~400 KiB), which bounds
        // memory per stream without a fixed small buffer's extra reads.
        // NB: without a pool timer hyper-util never reaps idle connections;
        // they stayed open, up to 64 per host, until reused or closed by the
        // registry.
        Ok(Client::builder(TokioExecutor::new())
            .pool_idle_timeout(self.idle_timeout)
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(64)
            .http1_max_buf_size(UPSTREAM_READ_BUFFER)
            .build(connector))
    }
}

/// Accepts any server certificate: only for connectors whose owner turned
/// verification off explicitly.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// Time for the registry side to see the idle connection closed.
    const CLOSE_DEADLINE: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn idle_pooled_connections_are_closed_after_the_idle_timeout() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // One keep-alive answer, then wait for the client to hang up.
        let registry = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before sending a request");
                head.extend_from_slice(&buf[..n]);
            }
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            let closed_after = std::time::Instant::now();
            let n = tokio::time::timeout(CLOSE_DEADLINE, stream.read(&mut buf))
                .await
                .expect("the idle connection is still open")
                .unwrap();
            (n, closed_after.elapsed())
        });

        let loopback = EgressPolicy::new(["127.0.0.0/8".parse().unwrap()]);
        let clients = UpstreamClients::new(Pins::default(), loopback).with_idle_timeout(Duration::from_millis(300));
        let client = clients.client(None, false).unwrap();
        let request = hyper::Request::get(format!("http://{addr}/v2/"))
            .body(crate::body::empty())
            .unwrap();
        let response = client.request(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");

        // NB: the client (and its pool) stays alive: only the idle timeout
        // can close the connection.
        let (read, waited) = registry.await.unwrap();
        assert_eq!(read, 0, "the proxy sent more than one request");
        assert!(
            waited >= Duration::from_millis(250),
            "closed before the idle timeout: {waited:?}"
        );
        drop(client);
    }
}
