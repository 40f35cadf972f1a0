//! The harness against the real programs: a registry in each auth mode,
//! skopeo pushing and pulling through it, and the token server's JWTs
//! accepted by distribution. Programs come from `bash .ci/install`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use testing::image::OCI_INDEX;
use testing::token_server::{Access, KeyId};
use testing::{
    CopyOptions, Fault, Grant, InspectOptions, OciLayout, Registry, RegistryAccess, RegistryOptions, Skopeo, TestTls,
    TokenServer, TokenServerOptions, sha256_bytes,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const USER: &str = "lab-user";
const PASSWORD: &str = "lab-password";

fn layout() -> (tempfile::TempDir, OciLayout) {
    let dir = tempfile::tempdir().unwrap();
    let layout = OciLayout::new(&dir.path().join("oci")).unwrap();
    (dir, layout)
}

fn with_creds() -> RegistryAccess {
    RegistryAccess::plain_http().creds(USER, PASSWORD)
}

/// One raw HTTP/1.1 exchange, for requests the harness's GET-only client
/// does not make; returns the status line and headers, and the body.
async fn raw_http(addr: std::net::SocketAddr, request: &str) -> (String, String) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        (head.to_owned(), body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("raw HTTP exchange within 10 s")
}

#[tokio::test]
async fn htpasswd_push_then_inspect_by_tag_and_digest_matches_the_layout() {
    let started = Instant::now();
    let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD))
        .await
        .unwrap();
    let ready = started.elapsed();
    let (_dir, layout) = layout();
    let image = layout.add_image("v1", &[4096, 200_000], 1).unwrap();
    let skopeo = Skopeo::new().unwrap();

    let push = skopeo
        .copy(
            &layout.reference("v1"),
            &registry.docker_reference("lab/hello:v1"),
            &CopyOptions::default().dest(with_creds()),
        )
        .await
        .unwrap();

    let access = InspectOptions::from(with_creds());
    let by_tag = skopeo
        .inspect_raw(&registry.docker_reference("lab/hello:v1"), &access)
        .await
        .unwrap();
    assert_eq!(
        sha256_bytes(&by_tag),
        image.manifest.digest,
        "the pushed manifest is byte-identical"
    );
    let by_digest = skopeo
        .inspect(
            &registry.docker_reference(&format!("lab/hello@{}", image.manifest.digest)),
            &access,
        )
        .await
        .unwrap();
    assert_eq!(by_digest["Digest"], image.manifest.digest.as_str());
    assert_eq!(by_digest["Layers"][1], image.layers[1].digest.as_str());
    assert_eq!(
        registry.manifest_digest("lab/hello", "v1").await.unwrap(),
        image.manifest.digest
    );
    let served = registry
        .client()
        .blob_digest("lab/hello", &image.layers[1].digest)
        .await
        .unwrap();
    assert_eq!(served.digest, image.layers[1].digest);
    assert_eq!(
        skopeo
            .list_tags(&registry.docker_reference("lab/hello"), &access)
            .await
            .unwrap(),
        ["v1"]
    );
    assert!(
        !registry.access_log_lines("PUT /v2/lab/hello/manifests/v1").is_empty(),
        "{}",
        registry.logs()
    );
    eprintln!(
        "registry ready in {ready:?}; push {:?}; whole test {:?}",
        push.elapsed,
        started.elapsed()
    );
}

#[tokio::test]
async fn an_unauthenticated_inspect_is_refused_by_the_htpasswd_registry() {
    let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD))
        .await
        .unwrap();
    let skopeo = Skopeo::new().unwrap();

    let refused = skopeo
        .inspect(
            &registry.docker_reference("lab/hello:v1"),
            &RegistryAccess::plain_http().into(),
        )
        .await
        .unwrap_err();

    assert!(refused.stderr().contains("authentication required"), "{refused}");
    let anonymous = testing::RegistryClient::new(&registry.url());
    let answer = anonymous.get("/v2/", None).await.unwrap();
    assert_eq!(answer.status, 401);
    assert_eq!(answer.headers["www-authenticate"], "Basic realm=\"testing-registry\"");
}

#[tokio::test]
async fn token_registry_accepts_the_token_servers_jwts_for_push_and_pull() {
    let started = Instant::now();
    let tokens = TokenServer::start(TokenServerOptions::with_user(USER, PASSWORD)).unwrap();
    let registry = Registry::start(RegistryOptions::token(&tokens)).await.unwrap();
    let (dir, layout) = layout();
    let image = layout.add_image("v1", &[10_000], 2).unwrap();
    let skopeo = Skopeo::new().unwrap();

    skopeo
        .copy(
            &layout.reference("v1"),
            &registry.docker_reference("lab/token:v1"),
            &CopyOptions::default().dest(with_creds()),
        )
        .await
        .unwrap();
    let pushes = tokens.requests_log();
    let pulled = OciLayout::new(&dir.path().join("pulled")).unwrap();
    skopeo
        .copy(
            &registry.docker_reference("lab/token:v1"),
            &pulled.reference("v1"),
            &CopyOptions::default().src(with_creds()),
        )
        .await
        .unwrap();

    assert!(
        pushes.iter().any(|request| request.user.as_deref() == Some(USER)
            && request.status == 200
            && request
                .scopes
                .iter()
                .any(|scope| scope == "repository:lab/token:pull,push")),
        "{pushes:#?}"
    );
    assert!(tokens.requests() > pushes.len(), "the pull fetched its own token");
    assert!(
        tokens.requests_log().iter().all(|request| request.method == "GET"),
        "skopeo uses GET"
    );
    for blob in image.layers.iter().chain([&image.config, &image.manifest]) {
        let copy = testing::sha256_file(&pulled.blob_path(&blob.digest)).unwrap();
        assert_eq!(copy.digest, blob.digest, "pulled blob {}", blob.digest);
    }
    assert_eq!(
        registry.manifest_digest("lab/token", "v1").await.unwrap(),
        image.manifest.digest
    );
    eprintln!("token push+pull in {:?}", started.elapsed());
}

#[tokio::test]
async fn tokens_naming_their_key_by_libtrust_kid_are_accepted_too() {
    let tokens = TokenServer::start(TokenServerOptions {
        key_id: KeyId::Kid,
        ..TokenServerOptions::with_user(USER, PASSWORD)
    })
    .unwrap();
    let registry = Registry::start(RegistryOptions::token(&tokens)).await.unwrap();
    let (_dir, layout) = layout();
    let image = layout.add_image("v1", &[1000], 3).unwrap();

    Skopeo::new()
        .unwrap()
        .copy(
            &layout.reference("v1"),
            &registry.docker_reference("lab/kid:v1"),
            &CopyOptions::default().dest(with_creds()),
        )
        .await
        .unwrap();

    assert_eq!(
        registry.manifest_digest("lab/kid", "v1").await.unwrap(),
        image.manifest.digest
    );
}

#[tokio::test]
async fn the_token_server_refuses_like_harbor_and_its_faults_reach_the_client() {
    let tokens = TokenServer::start(TokenServerOptions::with_user(USER, PASSWORD)).unwrap();
    let registry = Registry::start(RegistryOptions::token(&tokens)).await.unwrap();
    let (_dir, layout) = layout();
    let image = layout.add_image("v1", &[1000], 4).unwrap();
    let skopeo = Skopeo::new().unwrap();
    let reference = registry.docker_reference("lab/faults:v1");
    skopeo
        .copy(
            &layout.reference("v1"),
            &reference,
            &CopyOptions::default().dest(with_creds()),
        )
        .await
        .unwrap();
    let access = InspectOptions::from(with_creds());

    // Anonymous: 401 from the token server, so skopeo fails.
    let anonymous = skopeo
        .inspect_raw(&reference, &RegistryAccess::plain_http().into())
        .await
        .unwrap_err();
    assert!(tokens.requests_log().last().unwrap().status == 401, "{anonymous}");
    // A wrong service: 400.
    let client = testing::RegistryClient::new(&format!("http://{}", tokens.addr())).credentials(USER, PASSWORD);
    let wrong = client
        .get("/token?service=elsewhere&scope=repository:a:pull", None)
        .await
        .unwrap();
    assert_eq!(wrong.status, 400);
    // POST (containerd's OAuth2 form) is 404 by default, so clients fall back to GET.
    let (head, _) = raw_http(
        tokens.addr(),
        "POST /token HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    for (fault, expected_in_stderr) in [
        (Fault::ServerError, "500"),
        (Fault::GarbageJson, "invalid character"),
        (Fault::Expired, "authentication required"),
        (Fault::ForeignKey, "authentication required"),
    ] {
        tokens.set_fault(Some(fault.clone()));
        let failed = skopeo.inspect_raw(&reference, &access).await.unwrap_err();
        assert!(failed.stderr().contains(expected_in_stderr), "{fault:?}: {failed}");
    }
    tokens.set_fault(None);
    // distribution 2.8 gives one reason for both at its warn level.
    assert!(
        registry.logs().matches("invalid token").count() >= 2,
        "{}",
        registry.logs()
    );
    assert_eq!(
        sha256_bytes(&skopeo.inspect_raw(&reference, &access).await.unwrap()),
        image.manifest.digest
    );

    // A pull-only grant lets pulls through and refuses pushes.
    tokens.set_grant(Grant::PullOnly);
    let push = skopeo
        .copy(
            &layout.reference("v1"),
            &registry.docker_reference("lab/faults:v2"),
            &CopyOptions::default().dest(with_creds()),
        )
        .await
        .unwrap_err();
    assert!(
        push.stderr().contains("denied") || push.stderr().contains("unauthorized"),
        "{push}"
    );
    skopeo.inspect_raw(&reference, &access).await.unwrap();
    // A minted token is as good as a served one.
    let token = tokens.mint(USER, &[Access::repository("lab/faults", &["pull"])]);
    let (head, _) = raw_http(
        registry.addr(),
        &format!(
            "GET /v2/lab/faults/tags/list HTTP/1.1\r\nHost: r\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{}", registry.logs());
}

#[tokio::test]
async fn the_oauth2_post_form_is_answered_when_enabled() {
    let tokens = TokenServer::start(TokenServerOptions {
        oauth2_post: true,
        ..TokenServerOptions::with_user(USER, PASSWORD)
    })
    .unwrap();
    let form = format!(
        "grant_type=password&username={USER}&password={PASSWORD}&service={}&scope=repository%3Alab%2Fx%3Apull&client_id=containerd-client",
        tokens.service()
    );
    let (head, body) = raw_http(
        tokens.addr(),
        &format!(
            "POST /token HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        answer["access_token"]
            .as_str()
            .is_some_and(|token| token.split('.').count() == 3)
    );
    assert_eq!(
        tokens.requests_log()[0].granted,
        [Access::repository("lab/x", &["pull"])]
    );
}

#[tokio::test]
async fn a_multi_arch_index_copied_with_all_keeps_its_digest() {
    let registry = Registry::start(RegistryOptions::anonymous()).await.unwrap();
    let (_dir, layout) = layout();
    let index = layout
        .add_index("multi", &[("linux", "amd64"), ("linux", "arm64")], &[2000], 5)
        .unwrap();
    let skopeo = Skopeo::new().unwrap();

    skopeo
        .copy(
            &layout.reference("multi"),
            &registry.docker_reference("lab/multi:v1"),
            &CopyOptions::default().dest(RegistryAccess::plain_http()).all(),
        )
        .await
        .unwrap();

    let served = registry.client().manifest("lab/multi", "v1").await.unwrap();
    assert_eq!(served.digest, index.index.digest);
    assert_eq!(served.media_type, OCI_INDEX);
    for (platform, image) in &index.images {
        let instance = registry
            .manifest_digest("lab/multi", &image.manifest.digest)
            .await
            .unwrap();
        assert_eq!(instance, image.manifest.digest, "{platform:?}");
    }
    // skopeo inspect (not --raw) describes this machine's image but reports the index digest.
    let inspected = skopeo
        .inspect(
            &registry.docker_reference("lab/multi:v1"),
            &RegistryAccess::plain_http().into(),
        )
        .await
        .unwrap();
    assert_eq!(inspected["Digest"], index.index.digest.as_str());
}

#[tokio::test]
async fn an_https_registry_is_trusted_through_cert_dir_and_refused_without_it() {
    let tls = TestTls::for_loopback().unwrap();
    let registry = Registry::start(
        RegistryOptions::htpasswd(USER, PASSWORD)
            .tls(&tls)
            .ip(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))),
    )
    .await
    .unwrap();
    assert!(registry.url().starts_with("https://127.0.0.2:"));
    let (_dir, layout) = layout();
    let image = layout.add_image("v1", &[3000], 6).unwrap();
    let skopeo = Skopeo::new().unwrap();
    let verified = RegistryAccess::https(&tls.cert_dir).creds(USER, PASSWORD);

    skopeo
        .copy(
            &layout.reference("v1"),
            &registry.docker_reference("lab/tls:v1"),
            &CopyOptions::default().dest(verified.clone()),
        )
        .await
        .unwrap();

    let raw = skopeo
        .inspect_raw(&registry.docker_reference("lab/tls:v1"), &verified.into())
        .await
        .unwrap();
    assert_eq!(sha256_bytes(&raw), image.manifest.digest);
    assert_eq!(
        registry.manifest_digest("lab/tls", "v1").await.unwrap(),
        image.manifest.digest
    );
    let untrusted = skopeo
        .inspect_raw(
            &registry.docker_reference("lab/tls:v1"),
            &RegistryAccess::default().creds(USER, PASSWORD).into(),
        )
        .await
        .unwrap_err();
    assert!(
        untrusted.stderr().contains("certificate signed by unknown authority"),
        "{untrusted}"
    );
}

#[tokio::test]
async fn relative_urls_make_upload_locations_relative() {
    let absolute = Registry::start(RegistryOptions::anonymous()).await.unwrap();
    let relative = Registry::start(RegistryOptions::anonymous().relative_urls())
        .await
        .unwrap();
    let start_upload =
        "POST /v2/lab/up/blobs/uploads/ HTTP/1.1\r\nHost: h:1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

    let (absolute_head, _) = raw_http(absolute.addr(), start_upload).await;
    let (relative_head, _) = raw_http(relative.addr(), start_upload).await;

    let location = |head: &str| {
        head.lines()
            .find_map(|line| line.strip_prefix("Location: "))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    assert!(
        location(&absolute_head).starts_with("http://h:1/v2/lab/up/blobs/uploads/"),
        "{absolute_head}"
    );
    assert!(
        location(&relative_head).starts_with("/v2/lab/up/blobs/uploads/"),
        "{relative_head}"
    );
}

#[tokio::test]
async fn a_slow_token_server_runs_skopeo_into_its_timeout_and_everything_stops_on_drop() {
    let tokens = TokenServer::start(TokenServerOptions::with_user(USER, PASSWORD)).unwrap();
    let registry = Registry::start(RegistryOptions::token(&tokens)).await.unwrap();
    tokens.set_fault(Some(Fault::Slow(Duration::from_secs(30))));
    let skopeo = Skopeo::new().unwrap().with_timeout(Duration::from_secs(2));

    let started = Instant::now();
    let timed_out = skopeo
        .inspect_raw(&registry.docker_reference("lab/slow:v1"), &with_creds().into())
        .await
        .unwrap_err();

    assert!(
        matches!(timed_out, testing::skopeo::Error::TimedOut { .. }),
        "{timed_out}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let (pid, token_addr) = (registry.pid(), tokens.addr());
    let stopping = Instant::now();
    drop(registry);
    drop(tokens);
    assert!(
        stopping.elapsed() < Duration::from_secs(6),
        "stopped in {:?}",
        stopping.elapsed()
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "docker-registry {pid} still runs"
    );
    assert!(
        std::net::TcpStream::connect(token_addr).is_err(),
        "the token server still listens"
    );
}

/// Pages of a selected list hold every matching object once, in order,
/// each page reading on from the key the last one ended at (a page costs
/// a page, so a 100,000-pod list is not quadratic in the fake).
#[tokio::test]
async fn the_fake_api_server_pages_a_selected_list_from_where_the_last_page_ended() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ListParams};
    use testing::apiserver::{FakeApiServer, PODS};

    let api = FakeApiServer::start(&[PODS]).await;
    for (namespace, name, selected) in [
        ("a", "p1", true),
        ("a", "p2", false),
        ("a", "p3", true),
        ("b", "p1", true),
        ("b", "p2", true),
        ("c", "p1", false),
        ("c", "p2", true),
    ] {
        let labels = if selected {
            serde_json::json!({"team": "x"})
        } else {
            serde_json::json!({})
        };
        api.apply(
            PODS,
            serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"namespace": namespace, "name": name, "labels": labels}}),
        );
    }
    let pods: Api<Pod> = Api::all(api.client());
    let mut listed = Vec::new();
    let mut pages = 0;
    let mut params = ListParams::default().labels("team=x").limit(2);
    loop {
        let page = pods.list(&params).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= 2, "a page holds at most the limit");
        listed.extend(page.items.iter().map(|p| {
            format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap(),
                p.metadata.name.as_deref().unwrap()
            )
        }));
        match page.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
        assert!(pages < 10, "the pages end");
    }
    assert_eq!(listed, ["a/p1", "a/p3", "b/p1", "b/p2", "c/p2"]);
    assert_eq!(pages, 3);

    let namespaced: Api<Pod> = Api::namespaced(api.client(), "b");
    let page = namespaced.list(&ListParams::default().limit(1)).await.unwrap();
    let token = page.metadata.continue_.expect("more pods in b");
    let rest = namespaced
        .list(&ListParams::default().limit(5).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.items[0].metadata.name.as_deref(), Some("p2"));
    assert!(rest.metadata.continue_.is_none_or(|t| t.is_empty()));

    let refused = namespaced
        .list(&ListParams::default().continue_token("not-a-token"))
        .await;
    assert!(refused.is_err(), "a bad continue token is refused");
}
