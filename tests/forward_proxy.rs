//! `connectors proxy --forward-listen` as the `HTTPS_PROXY` of unchanged
//! clients: real skopeo and curl reach a TLS registry (Debian
//! `docker-registry`) by the name `registry.test`, which only the proxy's
//! `--resolve` knows, with no credential of their own, trusting only the
//! interception CA; digests equal end to end. A second tunnel to a host
//! resumes the first one's TLS session. Refusals: no proxy
//! credential, a wrong token, another namespace's connector, a host that is
//! no connector's, a metadata address, a TLS client naming another host.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use support::Process;
use testing::credentials::basic;
use testing::{
    CopyOptions, InspectOptions, OciLayout, Registry, RegistryAccess, RegistryOptions, Skopeo, StoreYaml, TestTls,
    TokenServer, TokenServerOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const USER: &str = "robot$lab+forward";
const PASSWORD: &str = "Fw-Pa55-never-leaks-31d7";
const TEAM_TOKEN: &str = "team-forward-token-5b2e";
const OTHER_TOKEN: &str = "other-forward-token-90ac";

/// A TLS registry named `registry.test`, and the proxy in front of it.
struct Lab {
    registry: Registry,
    proxy: Process,
    forward: SocketAddr,
    dir: tempfile::TempDir,
    /// Holds the interception CA as `ca.crt`, for `--cert-dir`.
    trust_dir: PathBuf,
    tls: TestTls,
}

impl Lab {
    /// An htpasswd registry.
    async fn start(extra_args: &[&str]) -> Self {
        let tls = TestTls::for_loopback().unwrap();
        let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD).tls(&tls))
            .await
            .unwrap();
        Self::start_with(registry, tls, extra_args).await
    }

    async fn start_with(registry: Registry, tls: TestTls, extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = registry.port();
        let store = StoreYaml::new("team")
            .basic_auth("robot", USER, PASSWORD)
            .ca("registry-ca", tls.ca_pem())
            .connector(
                "lab",
                &format!("https://registry.test:{port}"),
                "robot",
                Some("registry-ca"),
            )
            .build();
        std::fs::write(dir.path().join("store.yaml"), store).unwrap();
        std::fs::write(
            dir.path().join("tokens.csv"),
            format!(
                "{TEAM_TOKEN},system:serviceaccount:team:builder,uid-1\n{OTHER_TOKEN},system:serviceaccount:other:builder,uid-2\n"
            ),
        )
        .unwrap();
        let state = dir.path().join("state");
        // NB: public.test is the same server under a name no connector
        // has: a stand-in for a public host.
        let resolve = format!("registry.test:{port}:127.0.0.1,public.test:{port}:127.0.0.1");
        let mut args = vec![
            "proxy",
            // NB: the registries of these tests listen on loopback.
            "--egress-allow",
            "127.0.0.0/8",
            "--store",
            dir.path().join("store.yaml").to_str().unwrap(),
            "--token-auth-file",
            dir.path().join("tokens.csv").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--forward-listen",
            "127.0.0.1:0",
            "--state-dir",
            state.to_str().unwrap(),
            "--resolve",
            &resolve,
            "--verbose",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        let args = args.iter().map(String::as_str).collect::<Vec<_>>();
        let (proxy, forward) = Process::start(&args, "forward proxy listening");
        let trust_dir = dir.path().join("trust");
        std::fs::create_dir_all(&trust_dir).unwrap();
        std::fs::copy(state.join("proxy-ca.crt"), trust_dir.join("ca.crt")).unwrap();
        Lab {
            registry,
            proxy,
            forward,
            dir,
            trust_dir,
            tls,
        }
    }

    fn reference(&self, repository_and_tag: &str) -> String {
        format!("docker://registry.test:{}/{repository_and_tag}", self.registry.port())
    }

    /// `http://<connectors>:<token>@127.0.0.1:PORT`, as the webhook injects it.
    fn proxy_url(&self, connectors: &str, token: &str) -> String {
        format!("http://{}:{token}@{}", connectors.replace('/', "%2F"), self.forward)
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn assert_no_credential_in_logs(&self) {
        assert_no_secret(&self.proxy.log_text(), "proxy logs");
    }
}

fn assert_no_secret(text: &str, what: &str) {
    testing::credentials::assert_no_credential(text, what, USER, PASSWORD);
}

fn skopeo() -> Skopeo {
    Skopeo::new()
        .expect("skopeo is installed (bash .ci/install)")
        .with_timeout(Duration::from_secs(180))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_and_curl_work_through_https_proxy_with_no_credential_of_their_own() {
    let lab = Lab::start(&[]).await;
    let layout = OciLayout::new(&lab.dir.path().join("layout")).unwrap();
    let image = layout.add_image("v1", &[32 * 1024, 2 * 1024 * 1024], 11).unwrap();
    let proxy = lab.proxy_url("team/lab", TEAM_TOKEN);
    // No --creds: the proxy injects the robot's credential; only the
    // interception CA is trusted.
    let access = RegistryAccess::https(&lab.trust_dir);
    let push = CopyOptions::default().dest(access.clone()).env("HTTPS_PROXY", &proxy);
    let pushed = skopeo()
        .copy(&layout.reference("v1"), &lab.reference("lab/forward:v1"), &push)
        .await
        .unwrap();
    assert_no_secret(&format!("{}{}", pushed.stdout, pushed.stderr), "skopeo's output");
    assert_eq!(
        lab.registry.manifest_digest("lab/forward", "v1").await.unwrap(),
        image.manifest.digest,
        "the registry holds what was pushed"
    );

    let inspect = InspectOptions::from(access.clone()).env("HTTPS_PROXY", &proxy);
    let inspected = skopeo()
        .inspect(&lab.reference("lab/forward:v1"), &inspect)
        .await
        .unwrap();
    assert_eq!(inspected["Digest"], image.manifest.digest.as_str());

    let out = OciLayout::new(&lab.dir.path().join("pulled")).unwrap();
    let pull = CopyOptions::default().src(access).env("HTTPS_PROXY", &proxy);
    skopeo()
        .copy(&lab.reference("lab/forward:v1"), &out.reference("v1"), &pull)
        .await
        .unwrap();
    for layer in &image.layers {
        let pulled = testing::sha256_file(&out.blob_path(&layer.digest)).unwrap();
        assert_eq!(pulled.to_string(), layer.digest);
    }

    // curl as a second client, trusting the combined bundle of the state dir.
    let bundle = lab.state_dir().join("proxy-ca-bundle.crt");
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", "--max-time", "60"])
        .arg("--proxy")
        .arg(&proxy)
        .arg("--cacert")
        .arg(&bundle)
        .args(["-H", "Accept: application/vnd.oci.image.manifest.v1+json"])
        .arg(format!(
            "https://registry.test:{}/v2/lab/forward/manifests/v1",
            lab.registry.port()
        ))
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .output()
        .await
        .unwrap();
    let headers = String::from_utf8_lossy(&output.stdout).to_ascii_lowercase();
    assert!(
        output.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(headers.contains(" 200"), "{headers}");
    assert!(
        headers.contains(&format!("docker-content-digest: {}", image.manifest.digest)),
        "{headers}"
    );
    assert_no_secret(&headers, "curl's response headers");
    lab.assert_no_credential_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_auth_registry_is_reached_through_the_tunnel_with_one_token_per_scope() {
    // As Harbor: the token service on the registry's own host, over HTTPS.
    let tls = TestTls::for_loopback().unwrap();
    let tokens = TokenServer::start(
        TokenServerOptions::with_user(USER, PASSWORD)
            .https(&tls, "registry.test")
            .unwrap(),
    )
    .unwrap();
    let registry = Registry::start(RegistryOptions::token(&tokens).tls(&tls))
        .await
        .unwrap();
    let token_pin = format!("registry.test:{}:127.0.0.1", tokens.addr().port());
    let lab = Lab::start_with(registry, tls, &["--resolve", &token_pin]).await;
    let layout = OciLayout::new(&lab.dir.path().join("layout")).unwrap();
    let image = layout.add_image("v1", &[16 * 1024, 48 * 1024], 12).unwrap();
    let proxy = lab.proxy_url("team/lab", TEAM_TOKEN);
    let access = RegistryAccess::https(&lab.trust_dir);
    let push = CopyOptions::default().dest(access.clone()).env("HTTPS_PROXY", &proxy);
    skopeo()
        .copy(&layout.reference("v1"), &lab.reference("lab/tokened:v1"), &push)
        .await
        .unwrap();
    let out = OciLayout::new(&lab.dir.path().join("pulled")).unwrap();
    let pull = CopyOptions::default().src(access).env("HTTPS_PROXY", &proxy);
    skopeo()
        .copy(&lab.reference("lab/tokened:v1"), &out.reference("v1"), &pull)
        .await
        .unwrap();
    for layer in &image.layers {
        let pulled = testing::sha256_file(&out.blob_path(&layer.digest)).unwrap();
        assert_eq!(pulled.to_string(), layer.digest);
    }
    let asked = tokens.requests_log();
    assert!(!asked.is_empty(), "the proxy exchanged the credential for tokens");
    assert!(
        asked.iter().all(|r| r.user.as_deref() == Some(USER)),
        "only the connector's robot asks for tokens: {asked:?}"
    );
    assert!(asked.len() <= 3, "tokens are cached per scope: {asked:?}");
    lab.assert_no_credential_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pulls_and_pushes_through_https_proxy_as_a_second_client() {
    let lab = Lab::start(&[]).await;
    let layout = OciLayout::new(&lab.dir.path().join("layout")).unwrap();
    let image = layout.add_image("v1", &[120 * 1024, 40 * 1024], 21).unwrap();
    let proxy = lab.proxy_url("team/lab", TEAM_TOKEN);
    let push = CopyOptions::default()
        .dest(RegistryAccess::https(&lab.trust_dir))
        .env("HTTPS_PROXY", &proxy);
    skopeo()
        .copy(&layout.reference("v1"), &lab.reference("lab/pod:v1"), &push)
        .await
        .unwrap();
    let root = lab.dir.path().join("podman");
    std::fs::create_dir_all(root.join("xdg")).unwrap();
    std::fs::write(root.join("auth.json"), "{}").unwrap();
    let port = lab.registry.port();
    let (source, target) = (
        format!("registry.test:{port}/lab/pod:v1"),
        format!("registry.test:{port}/lab/pod-copy:v2"),
    );
    let cert_dir = lab.trust_dir.to_str().unwrap();
    let env = [("HTTPS_PROXY", proxy.as_str())];
    let pulled = support::podman(&root, &env, &["pull", "--cert-dir", cert_dir, &source]).await;
    assert!(pulled.status.success(), "{}", String::from_utf8_lossy(&pulled.stderr));
    let tagged = support::podman(&root, &env, &["tag", &source, &target]).await;
    assert!(tagged.status.success(), "{}", String::from_utf8_lossy(&tagged.stderr));
    let pushed = support::podman(&root, &env, &["push", "--cert-dir", cert_dir, &target]).await;
    assert!(pushed.status.success(), "{}", String::from_utf8_lossy(&pushed.stderr));
    // podman stores layers uncompressed and may compress them anew on push:
    // the uncompressed layers (diff IDs) are what must be equal.
    let client = lab.registry.client();
    let copy = client.manifest("lab/pod-copy", "v2").await.unwrap();
    let copy: serde_json::Value = serde_json::from_slice(&copy.bytes).unwrap();
    let config = client
        .blob("lab/pod-copy", copy["config"]["digest"].as_str().unwrap())
        .await
        .unwrap();
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(diff_ids, image.diff_ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert_no_secret(&String::from_utf8_lossy(&pulled.stderr), "podman's output");
    lab.assert_no_credential_in_logs();
}

/// Sends a CONNECT and returns the status line and headers.
async fn connect(forward: SocketAddr, target: &str, proxy_authorization: Option<&str>) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(forward).await.unwrap();
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(value) = proxy_authorization {
        request.push_str(&format!("Proxy-Authorization: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_and_hosts_the_proxy_must_not_serve_are_refused() {
    let lab = Lab::start(&[
        "--forward-tunnels",
        "listed",
        "--forward-tunnel-host",
        "169.254.169.254",
    ])
    .await;
    let registry = format!("registry.test:{}", lab.registry.port());
    let before = lab.registry.access_log_lines("/v2/").len();

    let (_, head) = connect(lab.forward, &registry, None).await;
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");
    assert!(
        head.contains("proxy-authenticate: Basic realm=\"connectors\""),
        "{head}"
    );

    let (_, head) = connect(lab.forward, &registry, Some(&basic("team%2Flab", "not-a-token"))).await;
    assert!(head.starts_with("HTTP/1.1 407"), "a wrong token: {head}");

    let (_, head) = connect(lab.forward, &registry, Some(&basic("team%2Flab", OTHER_TOKEN))).await;
    assert!(
        head.starts_with("HTTP/1.1 403"),
        "another namespace's connector: {head}"
    );
    // The same answer as for a connector that does not exist: naming
    // another namespace's connectors tells nothing about them.
    let (_, ghost) = connect(lab.forward, &registry, Some(&basic("team%2Fghost", OTHER_TOKEN))).await;
    let without_date = |head: &str| -> String {
        head.lines()
            .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(without_date(&head), without_date(&ghost));

    let (_, head) = connect(lab.forward, "example.org:443", Some(&basic("team%2Flab", TEAM_TOKEN))).await;
    assert!(head.starts_with("HTTP/1.1 403"), "a host of no connector: {head}");

    let (_, head) = connect(lab.forward, "169.254.169.254:80", Some(&basic("", TEAM_TOKEN))).await;
    assert!(head.starts_with("HTTP/1.1 403"), "a metadata address: {head}");

    // Intercepted, but the TLS client names another host than its CONNECT.
    let (stream, head) = connect(lab.forward, &registry, Some(&basic("team%2Flab", TEAM_TOKEN))).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let roots =
        certs::root_store_from_pem(&std::fs::read_to_string(lab.state_dir().join("proxy-ca.crt")).unwrap()).unwrap();
    let config = certs::client_config(roots, &[b"http/1.1"]).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let other = rustls::pki_types::ServerName::try_from("other.test").unwrap();
    assert!(
        connector.connect(other, stream).await.is_err(),
        "no leaf for a name the CONNECT did not ask for"
    );

    assert_eq!(
        lab.registry.access_log_lines("/v2/").len(),
        before,
        "no refused caller caused an upstream request"
    );
    lab.assert_no_credential_in_logs();
}

/// `GET /v2/` for `host` over `tls` (one request, then the connection
/// closes): the whole answer.
async fn get_v2<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(tls: &mut S, host: &str) -> String {
    let request = format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Unchanged workloads keep their egress once `HTTPS_PROXY` is injected:
/// an HTTPS host of no connector gets a blind tunnel (its own certificate,
/// no credential) when the egress policy allows its address; a private
/// address is refused; `--forward-tunnels off` refuses every tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_https_hosts_get_a_blind_tunnel_unless_private_or_switched_off() {
    // The lab's registry, by a name no connector has, stands in for a
    // public host (the lab allows loopback as egress).
    let lab = Lab::start(&[]).await;
    let host = format!("public.test:{}", lab.registry.port());
    let roots = certs::root_store_from_pem(lab.tls.ca_pem()).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(certs::client_config(roots, &[b"http/1.1"]).unwrap()));
    let name = rustls::pki_types::ServerName::try_from("registry.test").unwrap();
    for user in ["", "team%2Flab", "team%2Fghost", "other%2Fsecret"] {
        let (stream, head) = connect(lab.forward, &host, Some(&basic(user, TEAM_TOKEN))).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{user}: {head}");
        // The registry's own certificate, through: the proxy is not in it.
        let mut tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name.clone(), stream))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{user}: not a blind tunnel: {e}"));
        let answer = get_v2(&mut tls, &host).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "no credential was added: {answer}");
    }
    for private in ["10.1.2.3:443", "169.254.169.254:443", "[fd00::1]:443"] {
        let (_, head) = connect(lab.forward, private, Some(&basic("", TEAM_TOKEN))).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{private}: {head}");
    }
    let (_, head) = connect(lab.forward, &host, None).await;
    assert!(head.starts_with("HTTP/1.1 407"), "tunnels are for callers only: {head}");
    lab.assert_no_credential_in_logs();

    let off = Lab::start(&["--forward-tunnels", "off"]).await;
    let host = format!("public.test:{}", off.registry.port());
    let (_, head) = connect(off.forward, &host, Some(&basic("", TEAM_TOKEN))).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
}

/// A second tunnel to the same host resumes the first one's TLS session
/// instead of a full handshake, and still has to pass the CONNECT's checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_tunnel_to_a_host_resumes_the_tls_session() {
    let lab = Lab::start(&[]).await;
    let registry = format!("registry.test:{}", lab.registry.port());
    let roots =
        certs::root_store_from_pem(&std::fs::read_to_string(lab.state_dir().join("proxy-ca.crt")).unwrap()).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(certs::client_config(roots, &[b"http/1.1"]).unwrap()));
    let name = rustls::pki_types::ServerName::try_from("registry.test").unwrap();

    let mut kinds = Vec::new();
    for _ in 0..2 {
        let (stream, head) = connect(lab.forward, &registry, Some(&basic("team%2Flab", TEAM_TOKEN))).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let mut tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name.clone(), stream))
            .await
            .unwrap()
            .unwrap();
        kinds.push(tls.get_ref().1.handshake_kind());
        // Reading the answer also takes in the session tickets the proxy
        // sends after the handshake.
        let answer = get_v2(&mut tls, &registry).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "the credential is injected: {answer}"
        );
    }
    assert_eq!(
        kinds,
        [Some(rustls::HandshakeKind::Full), Some(rustls::HandshakeKind::Resumed)]
    );

    // Resuming is no way around the caller checks: a caller refused the
    // connector gets what any other host gets, a blind tunnel, never the
    // proxy's certificate.
    let (stream, head) = connect(lab.forward, &registry, Some(&basic("team%2Flab", OTHER_TOKEN))).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let intercepted = tokio::time::timeout(Duration::from_secs(10), connector.connect(name.clone(), stream))
        .await
        .unwrap();
    assert!(intercepted.is_err(), "a refused caller was intercepted");
    lab.assert_no_credential_in_logs();
}

/// `http_proxy` is injected too: a plain-HTTP host of no connector
/// (`apt-get` over `http://`) is relayed as the client sent it, with its
/// own credentials and none of ours, where the tunnel policy admits it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_plain_http_hosts_are_relayed_as_they_are_unless_private_or_switched_off() {
    // A plain-HTTP registry with a password of its own stands in for a
    // public plain-HTTP host (the lab allows loopback as egress).
    let plain = Registry::start(RegistryOptions::htpasswd("own-user", "own-password"))
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{}/v2/", plain.port());
    let curl = |forward: SocketAddr, extra: &'static [&'static str], url: String| async move {
        let proxy = format!("http://127.0.0.1:{}", forward.port());
        let user = format!(":{TEAM_TOKEN}");
        let output = tokio::process::Command::new("curl")
            .args(["-s", "-i", "--max-time", "10", "-x", &proxy, "--proxy-user", &user])
            .args(extra)
            .arg(&url)
            .output()
            .await
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let lab = Lab::start(&[]).await;
    // The host's own challenge: no credential of ours was added.
    let answer = curl(lab.forward, &[], url.clone()).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("www-authenticate: basic"),
        "{answer}"
    );
    // The client's own credential for that host goes through.
    let answer = curl(lab.forward, &["-u", "own-user:own-password"], url.clone()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = curl(lab.forward, &["-I", "-u", "own-user:own-password"], url.clone()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for private in ["http://10.1.2.3/", "http://169.254.169.254/latest/meta-data/"] {
        let answer = curl(lab.forward, &[], private.to_owned()).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{private}: {answer}");
    }
    lab.assert_no_credential_in_logs();

    let off = Lab::start(&["--forward-tunnels", "off"]).await;
    let answer = curl(off.forward, &[], url).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
}
