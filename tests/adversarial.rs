//! Hostile callers and hostile registries against `connectors proxy`: path
//! traversal and encoded slashes, another namespace's connector or token,
//! a mount from another connector, CR/LF and oversized headers, slowloris,
//! request-smuggling shapes, token realms on foreign hosts and IP literals,
//! and CONNECT to loopback, link-local, unspecified and metadata addresses.
//! Each is refused; nothing refused reaches the registry; and no response
//! or log line carries the registry credential.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use support::Process;
use support::scripted::{Fake, answer, serve};
use testing::credentials::basic;

const USER: &str = "robot$adversarial";
const PASSWORD: &str = "adversarial-secret-91fe";
const TOKEN: &str = "team-caller-token-adv";
const OTHER_TOKEN: &str = "other-namespace-token-adv";

/// What one raw exchange may take at most.
const WAIT: Duration = Duration::from_secs(10);

/// The digest of the blob the registry redirects (`lab/app`).
const REDIRECTED_BLOB: &str = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

/// A registry that wants Basic auth and serves one manifest; the token
/// realm of `lab/bearer` points wherever `realm` says, and the blob
/// [`REDIRECTED_BLOB`] redirects to `redirect`.
async fn registry(realm: String, redirect: String) -> Fake {
    let blob = format!("/v2/lab/app/blobs/{REDIRECTED_BLOB}");
    serve(
        REGISTRY_IP,
        Arc::new(move |target: &str, _, _| match target {
            target if target == blob => answer(StatusCode::TEMPORARY_REDIRECT, &[("location", redirect.clone())], b""),
            "/v2/" => answer(
                StatusCode::UNAUTHORIZED,
                &[("www-authenticate", "Basic realm=\"adversarial\"".into())],
                b"",
            ),
            "/v2/lab/app/manifests/v1" => answer(
                StatusCode::OK,
                &[("content-type", "application/vnd.oci.image.manifest.v1+json".into())],
                br#"{"schemaVersion":2}"#,
            ),
            t if t.starts_with("/v2/lab/bearer/") => answer(
                StatusCode::UNAUTHORIZED,
                &[(
                    "www-authenticate",
                    format!("Bearer realm=\"{realm}\",service=\"registry\",scope=\"repository:lab/bearer:pull\""),
                )],
                br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
            ),
            t if t.starts_with("/v2/lab/app/blobs/uploads/") => answer(
                StatusCode::ACCEPTED,
                &[("location", "/v2/lab/app/blobs/uploads/u1?_state=s".into())],
                b"",
            ),
            _ => answer(StatusCode::NOT_FOUND, &[], br#"{"errors":[{"code":"NOT_FOUND"}]}"#),
        }),
    )
    .await
}

/// Where the registry listens: the one loopback address the proxy may dial
/// (`--egress-allow`), so tunnels to every other one stay refused.
const REGISTRY_IP: &str = "127.0.0.7";

/// A server that must never be asked anything (a foreign token realm).
async fn bystander(ip: &str) -> Fake {
    serve(
        ip,
        Arc::new(|_: &str, _, _| answer(StatusCode::OK, &[], br#"{"token":"stolen"}"#)),
    )
    .await
}

struct Lab {
    registry: Fake,
    proxy: Process,
    addr: SocketAddr,
    forward: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Lab {
    async fn start(realm: String) -> Self {
        Self::start_redirecting(realm, "https://storage.example.com/blob".to_owned()).await
    }

    /// As [`Lab::start`], with the registry's blob redirects pointing at
    /// `redirect`.
    async fn start_redirecting(realm: String, redirect: String) -> Self {
        let registry = registry(realm, redirect).await;
        let dir = tempfile::tempdir().unwrap();
        let store = testing::StoreYaml::new("team")
            .basic_auth("robot", USER, PASSWORD)
            .connector("lab", &format!("http://{}", registry.addr), "robot", None)
            .connector("lab2", &format!("http://{}", registry.addr), "robot", None)
            // An address a namespace editor could write: loopback, not the
            // registry's. (Private and metadata ranges are refused by the
            // same check; its unit tests cover them without any dial.)
            .connector("loopback", "http://127.0.0.9:5000", "robot", None)
            .build();
        std::fs::write(dir.path().join("store.yaml"), store).unwrap();
        std::fs::write(
            dir.path().join("tokens.csv"),
            format!("{TOKEN},system:serviceaccount:team:ci,u1\n{OTHER_TOKEN},system:serviceaccount:other:ci,u2\n"),
        )
        .unwrap();
        let forward = free_address();
        let forward_listen = forward.to_string();
        let state = dir.path().join("state");
        let args = [
            "proxy",
            "--egress-allow",
            REGISTRY_IP,
            "--store",
            dir.path().join("store.yaml").to_str().unwrap(),
            "--token-auth-file",
            dir.path().join("tokens.csv").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--forward-listen",
            &forward_listen,
            "--state-dir",
            state.to_str().unwrap(),
            "--header-read-timeout-seconds",
            "2",
            "--max-header-bytes",
            "16384",
            // Allow-listed on purpose: the address checks must refuse them anyway.
            "--forward-tunnel-host",
            "169.254.169.254,100.100.100.200,127.0.0.1,localhost,0.0.0.0",
            "--verbose",
        ]
        .map(str::to_owned);
        let (proxy, addr) = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Process::start(&args, "proxy listening")
        })
        .await
        .unwrap();
        Self {
            registry,
            proxy,
            addr,
            forward,
            _dir: dir,
        }
    }

    /// How many requests reached the registry.
    fn upstream_requests(&self) -> usize {
        self.registry.seen.lock().unwrap().len()
    }

    /// Sends `raw` to the reverse proxy and reads until the server closes or
    /// [`WAIT`] passes.
    async fn raw(&self, raw: Vec<u8>) -> String {
        exchange(self.addr, raw).await
    }
}

fn free_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Writes `raw` to `addr` and returns everything read until the peer closes
/// (or [`WAIT`] passes). Blocking I/O on a blocking thread.
async fn exchange(addr: SocketAddr, raw: Vec<u8>) -> String {
    tokio::task::spawn_blocking(move || {
        // NB: forward mode may bind a moment after reverse mode logs.
        let connect_until = Instant::now() + WAIT;
        let mut stream = loop {
            match TcpStream::connect(addr) {
                Ok(stream) => break stream,
                Err(error) if Instant::now() < connect_until => {
                    let _ = error;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(error) => panic!("cannot connect to {addr}: {error}"),
            }
        };
        stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let _ = stream.write_all(&raw);
        let deadline = Instant::now() + WAIT;
        let mut out = Vec::new();
        let mut buf = [0_u8; 8192];
        while Instant::now() < deadline {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                    // NB: a keep-alive answer is complete once a response is in.
                    if out.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap()
}

/// A GET of `path` with the team token, `Connection: close`.
fn get(path: &str, token: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: proxy\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        basic("ci", token)
    )
    .into_bytes()
}

fn status_of(response: &str) -> u16 {
    response
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_tokens_and_headers_are_refused_before_the_registry() {
    let realm_host = bystander("127.0.0.3").await;
    let lab = Lab::start(format!("http://{}/token", realm_host.addr)).await;
    let mut seen = String::new();

    // The control: a good request reaches the registry.
    let ok = lab
        .raw(get("/v2/namespaces/team/connectors/lab/lab/app/manifests/v1", TOKEN))
        .await;
    assert_eq!(status_of(&ok), 200, "{ok}");
    let baseline = lab.upstream_requests();
    assert!(baseline >= 1);

    // Traversal, encoded slashes and dots, NUL, a caller's namespace that
    // is not the connector's: all refused, none reaches the registry.
    let refused = [
        (
            "/v2/namespaces/team/connectors/lab/../../other/connectors/x/app/manifests/v1",
            TOKEN,
        ),
        (
            "/v2/namespaces/team/connectors/lab/lab/../../../v2/lab/app/manifests/v1",
            TOKEN,
        ),
        ("/v2/namespaces/team/connectors/lab/%2e%2e/lab/app/manifests/v1", TOKEN),
        ("/v2/namespaces/team/connectors/lab/lab%2Fapp/manifests/v1", TOKEN),
        ("/v2/namespaces/team/connectors/lab/lab%252Fapp/manifests/v1", TOKEN),
        ("/v2/namespaces/team%2Fconnectors%2Flab/lab/app/manifests/v1", TOKEN),
        ("/v2/namespaces/team/connectors/lab/lab/app%00/manifests/v1", TOKEN),
        ("/v2/namespaces/team/connectors/lab//lab/app/manifests/v1", TOKEN),
        ("/v2/namespaces/team/connectors/lab/Lab/App/manifests/v1", TOKEN),
        (
            "/v2/namespaces/team/connectors/lab/lab/app/manifests/..%2f..%2fsecret",
            TOKEN,
        ),
        ("/v2/namespaces/team/connectors/nope/lab/app/manifests/v1", TOKEN),
        // Another namespace's token replayed against this namespace's connector.
        ("/v2/namespaces/team/connectors/lab/lab/app/manifests/v1", OTHER_TOKEN),
        (
            "/v2/namespaces/team/connectors/lab/lab/app/manifests/v1",
            "forged-token",
        ),
    ];
    for (path, token) in refused {
        let response = lab.raw(get(path, token)).await;
        let status = status_of(&response);
        assert!(
            (400..500).contains(&status),
            "{path} with {} got {status}: {response}",
            if token == TOKEN {
                "the team token"
            } else {
                "another token"
            }
        );
        seen.push_str(&response);
    }
    assert_eq!(
        lab.upstream_requests(),
        baseline,
        "a refused request reached the registry"
    );

    // A mount naming another connector's repository starts a plain upload:
    // the registry never sees a `from` outside this connector.
    let mount = format!(
        "POST /v2/namespaces/team/connectors/lab/lab/app/blobs/uploads/?mount=sha256:{}&from=namespaces/team/connectors/lab2/lab/private HTTP/1.1\r\nHost: proxy\r\nAuthorization: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        "a".repeat(64),
        basic("ci", TOKEN)
    );
    let response = lab.raw(mount.into_bytes()).await;
    assert_eq!(status_of(&response), 202, "{response}");
    {
        let seen_upstream = lab.registry.seen.lock().unwrap();
        let (target, _) = seen_upstream.last().unwrap();
        assert!(
            target.starts_with("/v2/lab/app/blobs/uploads/") && !target.contains("from=") && !target.contains("mount="),
            "{target}"
        );
    }
    let baseline = lab.upstream_requests();

    // Header injection: a bare CR or LF inside a header is a malformed head.
    for head in [
        "GET /v2/namespaces/team/connectors/lab/lab/app/manifests/v1 HTTP/1.1\r\nHost: proxy\r\nX-Evil: a\rInjected: b\r\nAuthorization: {auth}\r\n\r\n",
        "GET /v2/namespaces/team/connectors/lab/lab/app/manifests/v1\r\n HTTP/1.1\r\nHost: proxy\r\nAuthorization: {auth}\r\n\r\n",
        "GET /v2/namespaces/team/connectors/lab/lab/app/manifests/v1 HTTP/1.1\r\nHost: proxy\r\n folded: continuation\r\nAuthorization: {auth}\r\n\r\n",
    ] {
        let head = head.replace("{auth}", &basic("ci", TOKEN));
        let response = lab.raw(head.clone().into_bytes()).await;
        let status = status_of(&response);
        assert!(
            status == 400 || status == 0,
            "a malformed head was served ({status}): {head:?} {response}"
        );
        seen.push_str(&response);
    }

    assert_eq!(
        lab.upstream_requests(),
        baseline,
        "a malformed head reached the registry"
    );

    // A bare LF ends a header line (RFC 9112 lets servers accept it): two
    // well-formed headers, and the value that reaches the registry holds no
    // line break.
    let lf = format!(
        "GET /v2/namespaces/team/connectors/lab/lab/app/manifests/v1 HTTP/1.1\r\nHost: proxy\r\nX-Evil: a\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        basic("ci", TOKEN)
    );
    let response = lab.raw(lf.into_bytes()).await;
    assert_eq!(status_of(&response), 200, "{response}");
    {
        let seen_upstream = lab.registry.seen.lock().unwrap();
        let (_, headers) = seen_upstream.last().unwrap();
        assert_eq!(headers.get("x-evil").map(String::as_str), Some("a"));
        assert!(headers.values().all(|v| !v.contains(['\r', '\n'])));
        assert_ne!(
            headers.get("authorization"),
            Some(&basic("ci", TOKEN)),
            "the caller's token went upstream"
        );
    }
    let baseline = lab.upstream_requests();

    // Oversized heads: 431, and the connection is closed.
    let big = format!(
        "GET /v2/namespaces/team/connectors/lab/lab/app/manifests/v1 HTTP/1.1\r\nHost: proxy\r\nX-Pad: {}\r\nAuthorization: {}\r\n\r\n",
        "p".repeat(64 * 1024),
        basic("ci", TOKEN)
    );
    let response = lab.raw(big.into_bytes()).await;
    assert!(
        matches!(status_of(&response), 431 | 400 | 0),
        "an oversized head was served: {response}"
    );
    assert_eq!(
        lab.upstream_requests(),
        baseline,
        "a malformed request reached the registry"
    );

    // Request smuggling shapes: a second request hidden in the body must
    // never be served as a request of its own.
    let smuggled_path = "/v2/namespaces/team/connectors/lab/lab/smuggled/manifests/v1";
    let hidden = format!(
        "GET {smuggled_path} HTTP/1.1\r\nHost: proxy\r\nAuthorization: {}\r\n\r\n",
        basic("ci", TOKEN)
    );
    let auth = basic("ci", TOKEN);
    let shapes = [
        // CL.TE: the body per Content-Length hides a chunked terminator.
        format!(
            "POST /v2/namespaces/team/connectors/lab/lab/app/blobs/uploads/ HTTP/1.1\r\nHost: proxy\r\nAuthorization: {auth}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}"
        ),
        // Two different Content-Lengths.
        format!(
            "POST /v2/namespaces/team/connectors/lab/lab/app/blobs/uploads/ HTTP/1.1\r\nHost: proxy\r\nAuthorization: {auth}\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{hidden}",
            hidden.len()
        ),
        // An obfuscated Transfer-Encoding.
        format!(
            "POST /v2/namespaces/team/connectors/lab/lab/app/blobs/uploads/ HTTP/1.1\r\nHost: proxy\r\nAuthorization: {auth}\r\nTransfer-Encoding: xchunked\r\nContent-Length: 0\r\n\r\n{hidden}"
        ),
        // Chunked, not last: the hidden request is the body's chunk data.
        format!(
            "POST /v2/namespaces/team/connectors/lab/lab/app/blobs/uploads/ HTTP/1.1\r\nHost: proxy\r\nAuthorization: {auth}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n",
            hidden.len()
        ),
    ];
    for shape in shapes {
        let response = lab.raw(shape.into_bytes()).await;
        let responses = response.matches("HTTP/1.1 ").count();
        assert!(responses <= 1, "a smuggled request was answered: {response}");
        seen.push_str(&response);
    }
    {
        let seen_upstream = lab.registry.seen.lock().unwrap();
        assert!(
            seen_upstream.iter().all(|(target, _)| !target.contains("smuggled")),
            "a smuggled request reached the registry"
        );
    }

    // A token realm on a host the connector does not own (here an IP
    // literal that differs from the registry's): the credential is never
    // sent there, and the caller gets a clear 502.
    let response = lab
        .raw(get("/v2/namespaces/team/connectors/lab/lab/bearer/manifests/v1", TOKEN))
        .await;
    assert_eq!(status_of(&response), 502, "{response}");
    assert!(response.contains("realm"), "the error names the realm: {response}");
    assert!(
        realm_host.seen.lock().unwrap().is_empty(),
        "the foreign realm was asked"
    );
    seen.push_str(&response);

    testing::credentials::assert_no_credential(&seen, "responses", USER, PASSWORD);
    testing::credentials::assert_no_credential(&lab.proxy.log_text(), "the proxy's logs", USER, PASSWORD);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_cut_off_while_others_are_served() {
    let lab = Lab::start("http://127.0.0.1/token".to_owned()).await;
    // 64 connections that send a head one byte per half second.
    let started = Instant::now();
    let slow: Vec<_> = (0..64)
        .map(|_| {
            let addr = lab.addr;
            tokio::task::spawn_blocking(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                let head = b"GET /v2/namespaces/team/connectors/lab/lab/app/manifests/v1 HTTP/1.1\r\nHost: proxy\r\n";
                for byte in head.iter().cycle().take(40) {
                    if stream.write_all(&[*byte]).is_err() {
                        return Some(Instant::now());
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                None
            })
        })
        .collect();
    // Meanwhile a normal caller is served.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok = lab
        .raw(get("/v2/namespaces/team/connectors/lab/lab/app/manifests/v1", TOKEN))
        .await;
    assert_eq!(status_of(&ok), 200, "{ok}");
    for task in slow {
        let cut = task.await.unwrap().expect("a slow connection was kept open for 20 s");
        // The header-read timeout is 2 s; a write fails once the close is seen.
        assert!(
            cut.duration_since(started) < Duration::from_secs(8),
            "cut off after {:?}",
            cut.duration_since(started)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_loopback_link_local_and_metadata_addresses_is_refused_even_when_allow_listed() {
    let lab = Lab::start("http://127.0.0.1/token".to_owned()).await;
    let auth = basic("", TOKEN);
    // NB: these are CONNECT targets the proxy must refuse before dialing,
    // never addresses anything binds; "0.0.0.0:80" is the unspecified
    // address, which Linux would dial as loopback.
    for target in [
        "169.254.169.254:80",
        "100.100.100.200:80",
        "127.0.0.1:22",
        "localhost:22",
        "0.0.0.0:80",
        "[::1]:443",
        "[fe80::1]:443",
        "[::ffff:169.254.169.254]:80",
        "[fd00:ec2::254]:80",
    ] {
        let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {auth}\r\n\r\n");
        let response = exchange(lab.forward, request.into_bytes()).await;
        assert_eq!(status_of(&response), 403, "CONNECT {target}: {response}");
        testing::credentials::assert_no_credential(&response, "CONNECT responses", USER, PASSWORD);
    }
    // Without a proxy credential nothing is tunnelled at all.
    let response = exchange(
        lab.forward,
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n".to_vec(),
    )
    .await;
    assert_eq!(status_of(&response), 407, "{response}");
    testing::credentials::assert_no_credential(&lab.proxy.log_text(), "the proxy's logs", USER, PASSWORD);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_redirects_to_special_addresses_are_never_dialed_and_stream_nothing_back() {
    // Stands in for a metadata endpoint or an in-cluster service: loopback,
    // but not the registry's allowed address.
    let metadata = serve(
        "127.0.0.8",
        Arc::new(|_: &str, _, _| answer(StatusCode::OK, &[], b"SECRET-METADATA")),
    )
    .await;
    let redirect = format!(
        "http://{}/latest/meta-data/iam/security-credentials/node",
        metadata.addr
    );
    let lab = Lab::start_redirecting("http://127.0.0.1/token".to_owned(), redirect).await;
    let response = lab
        .raw(get(
            &format!("/v2/namespaces/team/connectors/lab/lab/app/blobs/{REDIRECTED_BLOB}"),
            TOKEN,
        ))
        .await;
    assert_eq!(status_of(&response), 502, "{response}");
    assert!(
        response.contains("egress"),
        "the error names the egress policy: {response}"
    );
    assert!(!response.contains("SECRET-METADATA"), "{response}");
    assert!(
        metadata.seen.lock().unwrap().is_empty(),
        "the redirect target was dialed"
    );
    testing::credentials::assert_no_credential(&response, "the refusal", USER, PASSWORD);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectors_at_special_addresses_are_refused_before_any_dial() {
    let lab = Lab::start("http://127.0.0.1/token".to_owned()).await;
    for (connector, range) in [("loopback", "loopback")] {
        let response = lab
            .raw(get(
                &format!("/v2/namespaces/team/connectors/{connector}/lab/app/manifests/v1"),
                TOKEN,
            ))
            .await;
        assert_eq!(status_of(&response), 502, "{connector}: {response}");
        assert!(
            response.contains(range),
            "{connector}: the error names the range: {response}"
        );
        assert!(response.contains("--egress-allow"), "{connector}: {response}");
        testing::credentials::assert_no_credential(&response, "the refusal", USER, PASSWORD);
    }
}
