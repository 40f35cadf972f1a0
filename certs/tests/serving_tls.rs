//! End to end: a CA issues a serving certificate, a rustls server on
//! 127.0.0.1 serves it through a `ReloadingCertResolver`, and a real client
//! verifies it against the CA; then the files rotate under the server.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use certs::reload::{self, ReloadingCertResolver};
use certs::{CertificateAuthority, ServingFiles, write_serving_bundle};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// What the client saw of a completed handshake.
#[derive(Debug)]
struct Handshake {
    chain: Vec<CertificateDer<'static>>,
    alpn: Option<Vec<u8>>,
    version: Option<rustls::ProtocolVersion>,
}

/// Serves one TLS connection with `server` on an ephemeral port and connects
/// to it as `server_name` with `client`, exchanging a byte each way.
async fn handshake(server: Arc<ServerConfig>, client: ClientConfig, server_name: &str) -> io::Result<Handshake> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(server);
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await?;
        tls.write_all(&byte).await?;
        tls.shutdown().await
    });

    let server_name = ServerName::try_from(server_name.to_owned()).expect("valid server name");
    let tcp = TcpStream::connect(address).await?;
    let connected = TlsConnector::from(Arc::new(client)).connect(server_name, tcp).await;
    let mut tls = match connected {
        Ok(tls) => tls,
        Err(error) => {
            server_task.abort();
            return Err(error);
        }
    };
    tls.write_all(b"x").await?;
    let mut echoed = [0u8; 1];
    tls.read_exact(&mut echoed).await?;
    assert_eq!(&echoed, b"x");
    server_task.await.expect("server task")?;

    let (_, connection) = tls.get_ref();
    Ok(Handshake {
        chain: connection
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|cert| cert.clone().into_owned())
            .collect(),
        alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
        version: connection.protocol_version(),
    })
}

fn client_trusting(ca: &CertificateAuthority) -> ClientConfig {
    let roots = certs::root_store_from_pem(ca.cert_pem()).expect("CA PEM loads as a root");
    certs::client_config(roots, &[b"h2"]).expect("client config")
}

/// The `rustls::Error` behind a failed handshake.
fn tls_error(error: &io::Error) -> &rustls::Error {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a TLS error: {error:?}"))
}

fn issue_bundle(ca: &CertificateAuthority, dir: &Path) -> ServingFiles {
    let issued = ca
        .issue_serving(&["webhook.test".to_owned()], &["127.0.0.1".parse().unwrap()], 30 * DAY)
        .expect("issue serving certificate");
    write_serving_bundle(dir, ca, &issued).expect("write bundle")
}

struct Server {
    resolver: Arc<ReloadingCertResolver>,
    config: Arc<ServerConfig>,
    files: ServingFiles,
    _dir: tempfile::TempDir,
}

fn serve_from_files(ca: &CertificateAuthority) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let files = issue_bundle(ca, dir.path());
    let resolver = ReloadingCertResolver::load(files.cert.clone(), files.key.clone()).expect("initial files load");
    let config = certs::server_config(resolver.clone(), ALPN).expect("server config");
    Server {
        resolver,
        config: Arc::new(config),
        files,
        _dir: dir,
    }
}

#[tokio::test]
async fn serving_certificate_verifies_for_its_dns_name_and_ip() {
    let ca = CertificateAuthority::generate("connectors test CA", DAY).unwrap();
    let server = serve_from_files(&ca);

    for name in ["webhook.test", "127.0.0.1"] {
        let handshake = handshake(server.config.clone(), client_trusting(&ca), name)
            .await
            .unwrap_or_else(|error| panic!("handshake as {name}: {error}"));
        assert_eq!(handshake.chain.len(), 2, "leaf then CA");
        assert_eq!(&handshake.chain[1], ca.cert_der());
        assert_eq!(handshake.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(handshake.version, Some(rustls::ProtocolVersion::TLSv1_3));
    }
}

#[tokio::test]
async fn other_names_fail_verification() {
    let ca = CertificateAuthority::generate("connectors test CA", DAY).unwrap();
    let server = serve_from_files(&ca);

    for name in ["other.test", "127.0.0.2"] {
        let error = handshake(server.config.clone(), client_trusting(&ca), name)
            .await
            .expect_err(name);
        assert!(
            matches!(
                tls_error(&error),
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
                )
            ),
            "{name}: {error:?}"
        );
    }
}

#[tokio::test]
async fn client_trusting_another_ca_rejects_the_certificate() {
    let ca = CertificateAuthority::generate("connectors test CA", DAY).unwrap();
    let stranger = CertificateAuthority::generate("someone else's CA", DAY).unwrap();
    let server = serve_from_files(&ca);

    let error = handshake(server.config.clone(), client_trusting(&stranger), "webhook.test")
        .await
        .unwrap_err();
    assert!(
        matches!(
            tls_error(&error),
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn tls12_only_client_is_served() {
    let ca = CertificateAuthority::generate("connectors test CA", DAY).unwrap();
    let server = serve_from_files(&ca);
    let roots = certs::root_store_from_pem(ca.cert_pem()).unwrap();
    let client = ClientConfig::builder_with_provider(certs::tls_config::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();

    let handshake = handshake(server.config.clone(), client, "webhook.test").await.unwrap();
    assert_eq!(handshake.version, Some(rustls::ProtocolVersion::TLSv1_2));
}

#[tokio::test]
async fn rotated_files_are_served_after_reload() {
    let old_ca = CertificateAuthority::generate("old CA", DAY).unwrap();
    let new_ca = CertificateAuthority::generate("new CA", DAY).unwrap();
    let server = serve_from_files(&old_ca);
    assert!(!server.resolver.reload_if_changed().unwrap(), "nothing changed yet");

    let dir = server.files.cert.parent().unwrap();
    issue_bundle(&new_ca, dir);
    assert!(server.resolver.reload_if_changed().unwrap());
    assert!(!server.resolver.reload_if_changed().unwrap(), "already served");

    let handshake = handshake(server.config.clone(), client_trusting(&new_ca), "webhook.test")
        .await
        .expect("new certificate verifies against the new CA");
    assert_eq!(&handshake.chain[1], new_ca.cert_der());
    let error = self::handshake(server.config.clone(), client_trusting(&old_ca), "webhook.test")
        .await
        .unwrap_err();
    assert!(matches!(
        tls_error(&error),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    ));
}

#[tokio::test]
async fn broken_files_keep_the_previous_certificate() {
    let ca = CertificateAuthority::generate("connectors test CA", DAY).unwrap();
    let server = serve_from_files(&ca);
    let served = server.resolver.certified_key();

    let original_cert = std::fs::read_to_string(&server.files.cert).unwrap();
    std::fs::write(&server.files.cert, "-----BEGIN CERTIFICATE-----\ngarbage").unwrap();
    let error = server.resolver.reload_if_changed().unwrap_err();
    assert!(matches!(error, reload::Error::CertificatePem { .. }), "{error}");
    assert!(Arc::ptr_eq(&served, &server.resolver.certified_key()));
    handshake(server.config.clone(), client_trusting(&ca), "webhook.test")
        .await
        .expect("old certificate still served");

    // A valid key that belongs to another certificate, as mid-rotation.
    std::fs::write(&server.files.cert, &original_cert).unwrap();
    let other = ca.issue_serving(&["webhook.test".to_owned()], &[], DAY).unwrap();
    std::fs::write(&server.files.key, &other.key_pem).unwrap();
    let error = server.resolver.reload_if_changed().unwrap_err();
    assert!(matches!(error, reload::Error::KeyMismatch { .. }), "{error}");
    assert!(Arc::ptr_eq(&served, &server.resolver.certified_key()));
    handshake(server.config.clone(), client_trusting(&ca), "webhook.test")
        .await
        .expect("old certificate still served");
}

#[tokio::test]
async fn watch_task_picks_up_rotation() {
    let old_ca = CertificateAuthority::generate("old CA", DAY).unwrap();
    let new_ca = CertificateAuthority::generate("new CA", DAY).unwrap();
    let server = serve_from_files(&old_ca);
    let served = server.resolver.certified_key();
    let watch = server.resolver.spawn_watch(Duration::from_millis(20));

    issue_bundle(&new_ca, server.files.cert.parent().unwrap());
    tokio::time::timeout(Duration::from_secs(10), async {
        while Arc::ptr_eq(&served, &server.resolver.certified_key()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("watch task reloads within 10 s");
    handshake(server.config.clone(), client_trusting(&new_ca), "webhook.test")
        .await
        .expect("new certificate served");

    watch.abort();
    assert!(watch.await.unwrap_err().is_cancelled());
}

#[tokio::test]
async fn watch_task_ends_when_the_resolver_is_dropped() {
    let ca = CertificateAuthority::generate("connectors test CA", DAY).unwrap();
    let Server {
        resolver, config, _dir, ..
    } = serve_from_files(&ca);
    let watch = resolver.spawn_watch(Duration::from_millis(10));
    drop((resolver, config));
    tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .expect("watch task ends")
        .expect("watch task does not panic");
}

#[test]
fn bad_initial_files_fail_to_load() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("connectors test CA", DAY).unwrap();
    let files = issue_bundle(&ca, dir.path());

    let missing = dir.path().join("missing.crt");
    let error = ReloadingCertResolver::load(missing.clone(), files.key.clone()).unwrap_err();
    assert!(matches!(&error, reload::Error::Read { path, .. } if *path == missing));

    // Certificate and key swapped.
    let error = ReloadingCertResolver::load(files.key.clone(), files.cert.clone()).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "invalid certificate PEM in {}: no CERTIFICATE PEM block found (found PRIVATE KEY)",
            files.key.display()
        )
    );
}
