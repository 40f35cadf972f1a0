//! The webhook's and the controller's listeners against clients that hold
//! connections without sending a request: nothing at all (on the webhook,
//! not even a TLS handshake), part of the HTTP/2 preface, or the preface
//! alone. Each is closed within the head timeout, and a real request is
//! answered afterwards. (The proxy's listeners: `proxy/tests/listeners.rs`.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use certs::CertificateAuthority;
use connector::injection::InjectionConfig;
use connector::store::{ConnectorStore, FileStore};
use serving::ServerLimits;
use testing::openings::{IDLE_OPENINGS, get_on, held_for};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use webhook::server::{WebhookState, router, serve_tls};

/// The head timeout of these listeners.
const HEAD_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a closed connection may take to be noticed beyond the timeout.
const SLACK: Duration = Duration::from_secs(3);

fn limits() -> ServerLimits {
    ServerLimits {
        header_read_timeout: HEAD_TIMEOUT,
        shutdown_grace: Duration::from_secs(1),
        ..ServerLimits::default()
    }
}

/// `GET path` with `Connection: close` on `stream`; the whole answer.
async fn get<S>(stream: S, path: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    get_on(stream, path, HEAD_TIMEOUT + SLACK).await
}

/// A TLS client that trusts `ca`, speaking HTTP/1.1 to 127.0.0.1.
struct TlsClient(tokio_rustls::TlsConnector);

impl TlsClient {
    fn new(ca: &CertificateAuthority) -> Self {
        let roots = certs::root_store_from_pem(ca.cert_pem()).unwrap();
        let config = certs::client_config(roots, &[b"http/1.1"]).unwrap();
        Self(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }

    async fn connect(&self, addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        self.0.connect(name, tcp).await.expect("the TLS handshake completes")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_closes_connections_that_send_no_request_within_the_head_timeout() {
    let ca = CertificateAuthority::generate("listener test CA", Duration::from_secs(3600)).unwrap();
    let issued = ca
        .issue_serving(
            &["webhook.test".to_owned()],
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(3600),
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = certs::write_serving_bundle(dir.path(), &ca, &issued).unwrap();
    let resolver = certs::ReloadingCertResolver::load(files.cert.clone(), files.key.clone()).unwrap();
    let tls = certs::server_config(resolver, &[b"h2", b"http/1.1"]).unwrap();
    let store: Arc<dyn ConnectorStore> = Arc::new(FileStore::from_yaml("").unwrap());
    let state = WebhookState {
        store,
        config: certs::Reloading::new(InjectionConfig::new("proxy.test:5000", "proxy.test:3128")),
        metrics: Arc::default(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve_tls(
        listener,
        router(state),
        tls,
        limits(),
        stop.clone().cancelled_owned(),
    ));

    // No TLS handshake at all.
    let silent = TcpStream::connect(addr).await.unwrap();
    let held = held_for(silent, b"", HEAD_TIMEOUT + SLACK).await;
    assert!(held.is_some(), "a connection without a TLS handshake is still open");
    // A handshake, then nothing or an incomplete h2 opening.
    let client = TlsClient::new(&ca);
    for opening in IDLE_OPENINGS {
        let stream = client.connect(addr).await;
        let held = held_for(stream, opening, HEAD_TIMEOUT + SLACK).await;
        assert!(held.is_some(), "{opening:?} over TLS is still open");
    }
    let answer = get(client.connect(addr).await, "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stop.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controllers_health_listener_closes_connections_that_send_no_request() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(controller::health::serve(
        listener,
        limits(),
        Arc::new(AtomicBool::new(true)),
        Arc::default(),
        stop.clone().cancelled_owned(),
    ));
    for opening in IDLE_OPENINGS {
        let stream = TcpStream::connect(addr).await.unwrap();
        let held = held_for(stream, opening, HEAD_TIMEOUT + SLACK).await;
        assert!(held.is_some(), "{opening:?} is still open");
    }
    let answer = get(TcpStream::connect(addr).await.unwrap(), "/readyz").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stop.cancel();
    server.await.unwrap().unwrap();
}
