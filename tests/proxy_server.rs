//! The proxy's server edge: oversized and slow request heads are cut off,
//! and SIGTERM lets an in-flight blob transfer finish before the process
//! exits.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::Process;
use testing::{Registry, RegistryOptions};

const TOKEN: &str = "edge-token";

async fn start(extra: &[&str]) -> (Registry, Process, SocketAddr, tempfile::TempDir) {
    let registry = Registry::start(RegistryOptions::htpasswd("u", "edge-secret"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("store.yaml"),
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: s, namespace: team}}\ntype: kubernetes.io/basic-auth\nstringData: {{username: u, password: edge-secret}}\n---\napiVersion: connectors.alauda.io/v1alpha1\nkind: Connector\nmetadata: {{name: lab, namespace: team}}\nspec: {{connectorClassName: oci, address: \"{}\", auth: {{name: basicAuth, secretRef: {{name: s}}}}}}\n",
            registry.url()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tokens.csv"),
        format!("{TOKEN},system:serviceaccount:team:ci,u1\n"),
    )
    .unwrap();
    let store = dir.path().join("store.yaml");
    let tokens = dir.path().join("tokens.csv");
    let mut args = vec![
        "proxy",
        // NB: the registries of these tests listen on loopback.
        "--egress-allow",
        "127.0.0.0/8",
        "--store",
        store.to_str().unwrap(),
        "--token-auth-file",
        tokens.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let (process, addr) = Process::start(&args, "proxy listening");
    (registry, process, addr, dir)
}

/// Reads whatever the server sends until it closes or `within` passes.
fn read_all(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (out, true),
        }
    }
    (out, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_slow_request_heads_are_cut_off_and_the_proxy_keeps_serving() {
    let (_registry, proxy, addr, _dir) =
        start(&["--max-header-bytes", "16384", "--header-read-timeout-seconds", "2"]).await;

    // A 100 KiB header: refused (431) and the connection closed.
    let mut stream = TcpStream::connect(addr).unwrap();
    let big = "a".repeat(100 * 1024);
    let _ = stream.write_all(format!("GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes());
    let (answer, closed) = read_all(&mut stream, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&answer);
    assert!(closed, "the connection is closed");
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 431"), "{text}");

    // Half a request line, then nothing: closed after the header timeout.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /v2/namespaces/team/conn").unwrap();
    let started = Instant::now();
    let (_, closed) = read_all(&mut slow, Duration::from_secs(15));
    assert!(closed, "a slow client is disconnected");
    assert!(started.elapsed() >= Duration::from_secs(1), "not before the timeout");

    // A header with CR/LF smuggled into a value is a malformed request.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .unwrap();
    let (answer, _) = read_all(&mut stream, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 400") || text.starts_with("HTTP/1.1 401"),
        "{text}"
    );

    // Still serving.
    let mut ok = TcpStream::connect(addr).unwrap();
    ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (answer, _) = read_all(&mut ok, Duration::from_secs(10));
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_blob_download_finish_then_exits() {
    let (registry, mut proxy, addr, dir) = start(&["--shutdown-grace-seconds", "60"]).await;
    // A 64 MiB layer, pushed directly to the registry.
    let layout = testing::OciLayout::new(&dir.path().join("layout")).unwrap();
    let image = layout.add_image("v1", &[64 * 1024 * 1024], 3).unwrap();
    let size = image.layers[0].size as usize;
    let digest = image.layers[0].digest.clone();
    let push = testing::CopyOptions::default().dest(testing::RegistryAccess::plain_http().creds("u", "edge-secret"));
    testing::Skopeo::new()
        .expect("skopeo is installed (bash .ci/install)")
        .copy(&layout.reference("v1"), &registry.docker_reference("lab/big:v1"), &push)
        .await
        .unwrap();

    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let url = format!("http://{addr}/v2/namespaces/team/connectors/lab/lab/big/blobs/{digest}");
    let mut response = http.get(&url).basic_auth("x", Some(TOKEN)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut hasher = testing::digest::Sha256::default();
    let mut read = 0usize;
    // Read a little, then ask the proxy to stop while the body is in flight.
    while read < 4 * 1024 * 1024 {
        let chunk = response.chunk().await.unwrap().unwrap();
        hasher.update(&chunk);
        read += chunk.len();
    }
    proxy.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New connections are refused while the transfer drains.
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "still accepting after SIGTERM"
    );
    while let Some(chunk) = response.chunk().await.unwrap() {
        hasher.update(&chunk);
        read += chunk.len();
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    assert_eq!(read, size);
    assert_eq!(hasher.finish().to_string(), digest, "the transfer finished intact");
    let status = proxy
        .wait_exit(Duration::from_secs(20))
        .expect("the proxy exits once drained");
    assert!(status.success(), "{status:?}");
}
