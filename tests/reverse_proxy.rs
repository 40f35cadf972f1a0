//! `connectors proxy` in reverse mode against the real CNCF registry (Debian
//! `docker-registry`) in htpasswd and token-auth modes, driven by real
//! skopeo and by raw HTTP: digests equal end to end, uploads, mounts,
//! pagination, redirects, token renewal, rejected callers, and no credential
//! in anything a client receives or the proxy logs.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::Process;
use testing::{
    CopyOptions, InspectOptions, OciLayout, Registry, RegistryAccess, RegistryOptions, Skopeo, StoreYaml, TokenServer,
    TokenServerOptions,
};

const USER: &str = "robot$lab+ci";
const PASSWORD: &str = "Pa55-never-leaks-9c1e";
const TEAM_TOKEN: &str = "team-caller-token-41f0";
const OTHER_TOKEN: &str = "other-namespace-token-77aa";

/// A registry, the proxy in front of it, and what the proxy was told.
struct Lab {
    registry: Registry,
    proxy: Process,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Lab {
    /// `connector_address` defaults to the registry's URL.
    fn start_proxy(registry: Registry, connector_address: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let address = connector_address.map(str::to_owned).unwrap_or_else(|| registry.url());
        let store = StoreYaml::new("team")
            .basic_auth("robot", USER, PASSWORD)
            .connector("lab", &address, "robot", None)
            .connector("lab2", &address, "robot", None)
            .build();
        std::fs::write(dir.path().join("store.yaml"), store).unwrap();
        std::fs::write(
            dir.path().join("tokens.csv"),
            format!(
                "# static caller tokens\n{TEAM_TOKEN},system:serviceaccount:team:builder,uid-1,\"system:serviceaccounts,system:serviceaccounts:team\"\n{OTHER_TOKEN},system:serviceaccount:other:builder,uid-2\n"
            ),
        )
        .unwrap();
        let store_path = dir.path().join("store.yaml");
        let tokens_path = dir.path().join("tokens.csv");
        let (proxy, addr) = Process::start(
            &[
                "proxy",
                // NB: the registries of these tests listen on loopback.
                "--egress-allow",
                "127.0.0.0/8",
                "--store",
                store_path.to_str().unwrap(),
                "--token-auth-file",
                tokens_path.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--verbose",
            ],
            "proxy listening",
        );
        Lab {
            registry,
            proxy,
            addr,
            dir,
        }
    }

    /// `127.0.0.1:PORT/namespaces/team/connectors/<c>/<repository>`
    fn reference(&self, connector: &str, repository_and_tag: &str) -> String {
        format!(
            "docker://{}/namespaces/team/connectors/{connector}/{repository_and_tag}",
            self.addr
        )
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `connectors_proxy_zero_copy_relays_total` of the `lab` connector.
    async fn zero_copy_relays(&self) -> f64 {
        let metrics = Http::client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metric_value(
            &metrics,
            "connectors_proxy_zero_copy_relays_total{connector=\"team/lab\"}",
        )
    }

    fn layout(&self) -> OciLayout {
        OciLayout::new(&self.dir.path().join("layout")).unwrap()
    }

    /// Asserts the credential appears nowhere in the proxy's logs.
    /// The proxy's log lines whose message is `message`, as JSON.
    fn log_lines(&self, message: &str) -> Vec<Value> {
        self.proxy
            .logs()
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|entry| entry["fields"]["message"] == message)
            .collect()
    }

    fn assert_no_credential_in_logs(&self) {
        assert_no_secret(&self.proxy.log_text(), "proxy logs");
    }
}

fn assert_no_secret(text: &str, what: &str) {
    testing::credentials::assert_no_credential(text, what, USER, PASSWORD);
}

fn as_caller() -> RegistryAccess {
    RegistryAccess::plain_http().creds("builder", TEAM_TOKEN)
}

fn inspecting() -> InspectOptions {
    InspectOptions::from(as_caller())
}

/// A reqwest client and a record of everything it received.
#[derive(Clone, Default)]
struct Http {
    seen: Arc<Mutex<String>>,
}

impl Http {
    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, bytes::Bytes) {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap();
        let mut seen = self.seen.lock().unwrap();
        seen.push_str(&format!("{status} {headers:?} {}\n", String::from_utf8_lossy(&body)));
        (status, headers, body)
    }

    fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap()
    }

    fn assert_clean(&self) {
        assert_no_secret(&self.seen.lock().unwrap(), "responses");
    }
}

fn skopeo() -> Skopeo {
    Skopeo::new().expect("skopeo is installed (bash .ci/install)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_pull_through_reverse_proxy_match_the_registry_digest_in_htpasswd_mode() {
    let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD))
        .await
        .unwrap();
    let lab = Lab::start_proxy(registry, None);
    let layout = lab.layout();
    let image = layout
        .add_image("v1", &[64 * 1024, 300 * 1024, 3 * 1024 * 1024], 7)
        .unwrap();

    let push = CopyOptions::default().dest(as_caller());
    let pushed = skopeo()
        .copy(&layout.reference("v1"), &lab.reference("lab", "lab/hello:v1"), &push)
        .await
        .unwrap();
    assert_no_secret(&format!("{}{}", pushed.stdout, pushed.stderr), "skopeo's output");
    // What the registry holds, read directly with the real credential.
    assert_eq!(
        lab.registry.manifest_digest("lab/hello", "v1").await.unwrap(),
        image.manifest.digest
    );

    // Inspect by tag and by digest through the proxy.
    let inspected = skopeo()
        .inspect(&lab.reference("lab", "lab/hello:v1"), &inspecting())
        .await
        .unwrap();
    assert_eq!(inspected["Digest"], image.manifest.digest.as_str());
    let by_digest = lab.reference("lab", &format!("lab/hello@{}", image.manifest.digest));
    let inspected = skopeo().inspect(&by_digest, &inspecting()).await.unwrap();
    assert_eq!(inspected["Digest"], image.manifest.digest.as_str());
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 3);

    // Pull it back into a new layout: every blob digest survives.
    let out = OciLayout::new(&lab.dir.path().join("pulled")).unwrap();
    let pull = CopyOptions::default().src(as_caller());
    skopeo()
        .copy(&lab.reference("lab", "lab/hello:v1"), &out.reference("v1"), &pull)
        .await
        .unwrap();
    for layer in &image.layers {
        let pulled = testing::sha256_file(&out.blob_path(&layer.digest)).unwrap();
        assert_eq!(pulled.to_string(), layer.digest);
    }
    // The 3 MiB layer came through the kernel relay, the small ones copied.
    assert_eq!(lab.zero_copy_relays().await, 1.0);

    // Delete by digest through the proxy (the connector's robot needs delete).
    let http = Http::default();
    let (status, _, _) = http
        .send(
            Http::client()
                .delete(lab.url(&format!(
                    "/v2/namespaces/team/connectors/lab/lab/hello/manifests/{}",
                    image.manifest.digest
                )))
                .basic_auth("x", Some(TEAM_TOKEN)),
        )
        .await;
    assert_eq!(status, 202);
    assert!(
        lab.registry.manifest_digest("lab/hello", "v1").await.is_err(),
        "the manifest is gone"
    );
    http.assert_clean();

    // Every use of the credential left one audit line: who, what, how it went.
    let audit = lab.log_lines("credential used");
    let line = |method: &str, endpoint: &str| {
        audit
            .iter()
            .find(|l| l["fields"]["method"] == method && l["fields"]["endpoint"] == endpoint)
            .unwrap_or_else(|| panic!("no audit line for {method} {endpoint}: {audit:?}"))
    };
    let pushed = line("PUT", "manifests/v1");
    assert_eq!(pushed["target"], "connectors::audit");
    assert_eq!(pushed["fields"]["caller"], "system:serviceaccount:team:builder");
    assert_eq!(pushed["fields"]["connector"], "team/lab");
    assert_eq!(pushed["fields"]["repository"], "lab/hello");
    assert_eq!(pushed["fields"]["status"], 201);
    let big = &image.layers[2];
    let pulled = line("GET", &format!("blobs/{}", big.digest));
    assert_eq!(pulled["fields"]["status"], 200);
    assert_eq!(pulled["fields"]["bytes_received"], big.size);
    let deleted = line("DELETE", &format!("manifests/{}", image.manifest.digest));
    assert_eq!(deleted["fields"]["status"], 202);
    lab.assert_no_credential_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_registry_multi_arch_index_and_one_token_per_scope() {
    let tokens = TokenServer::start(TokenServerOptions::with_user(USER, PASSWORD)).unwrap();
    let registry = Registry::start(RegistryOptions::token(&tokens)).await.unwrap();
    let lab = Lab::start_proxy(registry, None);
    let layout = lab.layout();
    let index = layout
        .add_index(
            "multi",
            &[("linux", "amd64"), ("linux", "arm64")],
            &[32 * 1024, 128 * 1024],
            11,
        )
        .unwrap();

    let push = CopyOptions {
        all: true,
        ..CopyOptions::default().dest(as_caller())
    };
    skopeo()
        .copy(&layout.reference("multi"), &lab.reference("lab", "lab/multi:v1"), &push)
        .await
        .unwrap();
    assert_eq!(
        lab.registry.manifest_digest("lab/multi", "v1").await.unwrap(),
        index.index.digest
    );
    let raw = skopeo()
        .inspect_raw(&lab.reference("lab", "lab/multi:v1"), &inspecting())
        .await
        .unwrap();
    assert_eq!(
        testing::sha256_bytes(&raw),
        index.index.digest,
        "the index bytes are relayed unchanged"
    );

    // Pull a platform image many times: tokens come from the cache.
    let before = tokens.requests();
    for _ in 0..5 {
        skopeo()
            .inspect(&lab.reference("lab", "lab/multi:v1"), &inspecting())
            .await
            .unwrap();
    }
    let fetched = tokens.requests() - before;
    assert!(fetched <= 1, "{fetched} token requests for 5 pulls of one scope");
    // The token service only ever saw the connector's robot, never a caller.
    assert!(tokens.requests_log().iter().all(|r| r.user.as_deref() == Some(USER)));
    lab.assert_no_credential_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_and_mounts_within_and_across_connectors() {
    let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD))
        .await
        .unwrap();
    let lab = Lab::start_proxy(registry, None);
    let http = Http::default();
    let client = Http::client();
    let blob = testing::image::random_bytes(3 * 1024 * 1024 + 17, 5);
    let digest = testing::sha256_bytes(&blob);
    let prefix = "/v2/namespaces/team/connectors/lab";

    // POST: a Location inside the proxy, with the upload state intact.
    let (status, headers, _) = http
        .send(
            client
                .post(lab.url(&format!("{prefix}/lab/chunked/blobs/uploads/")))
                .basic_auth("x", Some(TEAM_TOKEN)),
        )
        .await;
    assert_eq!(status, 202);
    let mut location = headers["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!("{prefix}/lab/chunked/blobs/uploads/")),
        "{location}"
    );
    assert!(location.contains("_state="), "{location}");
    assert!(headers.contains_key("docker-upload-uuid"));

    // Two PATCHes with Content-Range, then the PUT with the digest.
    let split = 2 * 1024 * 1024;
    let mut offset = 0;
    for chunk in [&blob[..split], &blob[split..]] {
        let end = offset + chunk.len() - 1;
        let (status, headers, _) = http
            .send(
                client
                    .patch(lab.url(&location))
                    .basic_auth("x", Some(TEAM_TOKEN))
                    .header("content-type", "application/octet-stream")
                    .header("content-range", format!("{offset}-{end}"))
                    .body(chunk.to_vec()),
            )
            .await;
        assert_eq!(status, 202, "PATCH {offset}-{end}");
        assert_eq!(headers["range"].to_str().unwrap(), format!("0-{end}"));
        location = headers["location"].to_str().unwrap().to_owned();
        assert!(location.starts_with(prefix), "{location}");
        offset = end + 1;
    }
    let separator = if location.contains('?') { '&' } else { '?' };
    let (status, headers, _) = http
        .send(
            client
                .put(lab.url(&format!("{location}{separator}digest={digest}")))
                .basic_auth("x", Some(TEAM_TOKEN)),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(headers["docker-content-digest"].to_str().unwrap(), digest);
    assert!(headers["location"].to_str().unwrap().starts_with(prefix));

    // HEAD stays HEAD and keeps the length.
    let (status, headers, body) = http
        .send(
            client
                .head(lab.url(&format!("{prefix}/lab/chunked/blobs/{digest}")))
                .basic_auth("x", Some(TEAM_TOKEN)),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-length"].to_str().unwrap(), blob.len().to_string());
    assert!(body.is_empty());
    let head_gets = lab
        .registry
        .access_log_lines(&format!("\"GET /v2/lab/chunked/blobs/{digest}"));
    assert!(head_gets.is_empty(), "a HEAD became a GET upstream: {head_gets:?}");

    // A mount from the same connector is mapped and mounted (201).
    let from = "namespaces%2Fteam%2Fconnectors%2Flab%2Flab%2Fchunked";
    let (status, headers, _) = http
        .send(
            client
                .post(lab.url(&format!(
                    "{prefix}/lab/mounted/blobs/uploads/?mount={digest}&from={from}"
                )))
                .basic_auth("x", Some(TEAM_TOKEN)),
        )
        .await;
    assert_eq!(status, 201, "mounted within the connector");
    assert!(
        headers["location"]
            .to_str()
            .unwrap()
            .starts_with(&format!("{prefix}/lab/mounted/blobs/"))
    );
    // From another connector: mount and from are dropped, a plain upload starts (202).
    let (status, headers, _) = http
        .send(
            client
                .post(lab.url(&format!(
                    "/v2/namespaces/team/connectors/lab2/lab/other/blobs/uploads/?mount={digest}&from={from}"
                )))
                .basic_auth("x", Some(TEAM_TOKEN)),
        )
        .await;
    assert_eq!(status, 202, "no mount across connectors");
    assert!(
        headers["location"]
            .to_str()
            .unwrap()
            .starts_with("/v2/namespaces/team/connectors/lab2/lab/other/blobs/uploads/")
    );
    http.assert_clean();
    lab.assert_no_credential_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_wrong_token_and_wrong_namespace_callers_are_rejected_without_upstream_requests() {
    let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD))
        .await
        .unwrap();
    let lab = Lab::start_proxy(registry, None);
    let http = Http::default();
    let client = Http::client();
    let path = "/v2/namespaces/team/connectors/lab/lab/hello/manifests/v1";
    let upstream_before = lab.registry.access_log_lines("/v2/").len();

    // The ping is answered by the proxy with its own challenge.
    let (status, headers, _) = http.send(client.get(lab.url("/v2/"))).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Basic realm=\"connectors\"");
    let (status, _, body) = http
        .send(client.get(lab.url("/v2/")).basic_auth("x", Some(TEAM_TOKEN)))
        .await;
    assert_eq!((status, &body[..]), (200, &b"{}"[..]));

    type Case<'a> = (Option<(&'a str, &'a str)>, Option<&'a str>, u16, &'a str);
    let cases: [Case; 5] = [
        (None, None, 401, "UNAUTHORIZED"),
        (Some(("x", "wrong-token")), None, 401, "UNAUTHORIZED"),
        (None, Some("Bearer wrong-token"), 401, "UNAUTHORIZED"),
        (None, Some("Basic !!!not-base64"), 401, "UNAUTHORIZED"),
        (Some(("x", OTHER_TOKEN)), None, 403, "DENIED"),
    ];
    for (basic, raw, want, code) in cases {
        let mut request = client.get(lab.url(path));
        if let Some((user, password)) = basic {
            request = request.basic_auth(user, Some(password));
        }
        if let Some(value) = raw {
            request = request.header("authorization", value);
        }
        let (status, _, body) = http.send(request).await;
        assert_eq!(status, want, "{basic:?} {raw:?}");
        let error: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(error["errors"][0]["code"], code);
    }
    // A connector that does not exist, and paths that are not routes.
    let (status, _, _) = http
        .send(
            client
                .get(lab.url("/v2/namespaces/team/connectors/ghost/lab/x/manifests/v1"))
                .basic_auth("x", Some(TEAM_TOKEN)),
        )
        .await;
    assert_eq!(status, 404);
    for bad in [
        "/v2/namespaces/team/connectors/lab/../../x/manifests/v1",
        "/v2/namespaces/team/connectors/lab/lab%2F..%2Fx/manifests/v1",
        "/v2/namespaces/team/connectors/lab/UPPER/manifests/v1",
        "/v2/namespaces/team/connectors/lab/lab/x/blobs/not-a-digest",
    ] {
        let (status, _, _) = http
            .send(client.get(lab.url(bad)).basic_auth("x", Some(TEAM_TOKEN)))
            .await;
        assert!(status == 404 || status == 400, "{bad}: {status}");
    }
    let upstream_after = lab.registry.access_log_lines("/v2/").len();
    assert_eq!(
        upstream_before, upstream_after,
        "rejected callers caused upstream requests"
    );
    // Each refusal is in the audit trail with its reason.
    let refused = lab.log_lines("request refused");
    assert!(
        refused.iter().any(|l| l["fields"]["status"] == 403
            && l["fields"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("system:serviceaccount:other:builder may not use connector team/lab"))),
        "{refused:?}"
    );
    assert!(
        refused
            .iter()
            .any(|l| l["fields"]["status"] == 401 && l["fields"]["reason"] == "the token is not valid"),
        "{refused:?}"
    );
    http.assert_clean();
    lab.assert_no_credential_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_cached_token_is_evicted_and_an_expired_one_renewed_mid_push() {
    let tokens = TokenServer::start(TokenServerOptions::with_user(USER, PASSWORD)).unwrap();
    let registry = Registry::start(RegistryOptions::token(&tokens)).await.unwrap();
    let lab = Lab::start_proxy(registry, None);
    let layout = lab.layout();
    let image = layout.add_image("v1", &[256 * 1024, 512 * 1024], 21).unwrap();
    let push = CopyOptions::default().dest(as_caller());

    // Tokens signed by a key the registry does not trust get cached...
    tokens.set_fault(Some(testing::Fault::ForeignKey));
    let refused = skopeo()
        .inspect(&lab.reference("lab", "lab/renew:v1"), &inspecting())
        .await;
    assert!(refused.is_err(), "a token the registry does not trust fails the pull");
    assert_no_secret(&format!("{refused:?}"), "the error a refused client sees");
    tokens.set_fault(None);
    // ...and the 401 they cause evicts them: the push succeeds.
    skopeo()
        .copy(&layout.reference("v1"), &lab.reference("lab", "lab/renew:v1"), &push)
        .await
        .unwrap();
    assert_eq!(
        lab.registry.manifest_digest("lab/renew", "v1").await.unwrap(),
        image.manifest.digest
    );

    // A token whose own expiry has passed is renewed before the next upload.
    tokens.set_fault(Some(testing::Fault::Expired));
    let _ = skopeo()
        .inspect(&lab.reference("lab", "lab/renew2:v1"), &inspecting())
        .await;
    tokens.set_fault(None);
    let before = tokens.requests();
    skopeo()
        .copy(&layout.reference("v1"), &lab.reference("lab", "lab/renew2:v1"), &push)
        .await
        .unwrap();
    assert!(tokens.requests() > before, "the expired token was renewed");
    assert_eq!(
        lab.registry.manifest_digest("lab/renew2", "v1").await.unwrap(),
        image.manifest.digest
    );
    lab.assert_no_credential_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_realm_outside_the_connector_hosts_gets_no_credential() {
    // The token service is on 127.0.0.1; the connector addresses the registry
    // as 127.0.0.2, so the realm is on a host the connector does not name.
    let tokens = TokenServer::start(TokenServerOptions::with_user(USER, PASSWORD)).unwrap();
    let registry = Registry::start(RegistryOptions::token(&tokens).ip("127.0.0.2".parse().unwrap()))
        .await
        .unwrap();
    let address = registry.url();
    let lab = Lab::start_proxy(registry, Some(&address));
    let http = Http::default();
    let (status, _, body) = http
        .send(
            Http::client()
                .get(lab.url("/v2/namespaces/team/connectors/lab/lab/x/manifests/v1"))
                .basic_auth("x", Some(TEAM_TOKEN)),
        )
        .await;
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    assert!(
        String::from_utf8_lossy(&body).contains("realm"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(tokens.requests(), 0, "no credential went to the foreign realm");
    http.assert_clean();
    lab.assert_no_credential_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gib_layer_streams_through_and_an_interrupted_read_resumes_with_range() {
    const GIB: u64 = 1024 * 1024 * 1024;
    let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD))
        .await
        .unwrap();
    let lab = Lab::start_proxy(registry, None);
    let layout = lab.layout();
    let image = layout.add_image("big", &[GIB], 99).unwrap();
    let layer = &image.layers[0];
    let push = CopyOptions::default().dest(as_caller());
    skopeo()
        .with_timeout(Duration::from_secs(600))
        .copy(&layout.reference("big"), &lab.reference("lab", "lab/big:v1"), &push)
        .await
        .unwrap();
    assert_eq!(
        lab.registry.manifest_digest("lab/big", "v1").await.unwrap(),
        image.manifest.digest
    );

    // Read half of the layer, drop the connection, resume from there.
    let client = Http::client();
    let url = lab.url(&format!(
        "/v2/namespaces/team/connectors/lab/lab/big/blobs/{}",
        layer.digest
    ));
    let mut hasher = testing::digest::Sha256::default();
    let mut response = client.get(&url).basic_auth("x", Some(TEAM_TOKEN)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.content_length(), Some(layer.size), "Content-Length is kept");
    let mut read = 0u64;
    while read < layer.size / 2 {
        let chunk = response.chunk().await.unwrap().expect("the body continues");
        hasher.update(&chunk);
        read += chunk.len() as u64;
    }
    drop(response);
    let mut response = client
        .get(&url)
        .basic_auth("x", Some(TEAM_TOKEN))
        .header("range", format!("bytes={read}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 206, "a Range read is answered with 206");
    let content_range = response.headers()["content-range"].to_str().unwrap().to_owned();
    assert!(content_range.starts_with(&format!("bytes {read}-")), "{content_range}");
    while let Some(chunk) = response.chunk().await.unwrap() {
        hasher.update(&chunk);
        read += chunk.len() as u64;
    }
    assert_eq!(read, layer.size);
    assert_eq!(
        hasher.finish().to_string(),
        layer.digest,
        "the resumed read is the layer, byte for byte"
    );

    // Both reads were relayed by the kernel (plain-HTTP upstream, HTTP/1
    // client).
    assert!(lab.zero_copy_relays().await >= 2.0, "both blob reads were spliced");
    lab.assert_no_credential_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spliced_blob_bodies_are_byte_exact_and_the_connection_stays_alive() {
    let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD))
        .await
        .unwrap();
    let lab = Lab::start_proxy(registry, None);
    let layout = lab.layout();
    let image = layout
        .add_image("two", &[3 * 1024 * 1024, 5 * 1024 * 1024 + 17], 5)
        .unwrap();
    let push = CopyOptions::default().dest(as_caller());
    skopeo()
        .copy(&layout.reference("two"), &lab.reference("lab", "lab/two:v1"), &push)
        .await
        .unwrap();
    let blob = |digest: &str| lab.url(&format!("/v2/namespaces/team/connectors/lab/lab/two/blobs/{digest}"));
    let on_disk = |digest: &str| std::fs::read(layout.blob_path(digest)).unwrap();

    // One client connection: whole bodies, a range, a HEAD between them.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let get = |url: String, range: Option<&str>| {
        let mut request = client.get(url).basic_auth("x", Some(TEAM_TOKEN));
        if let Some(range) = range {
            request = request.header("range", range);
        }
        request.send()
    };
    let (small, large) = (&image.layers[0], &image.layers[1]);
    let whole = get(blob(&small.digest), None).await.unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.bytes().await.unwrap().as_ref(), on_disk(&small.digest).as_slice());
    let head = client
        .head(blob(&large.digest))
        .basic_auth("x", Some(TEAM_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"].to_str().unwrap(),
        large.size.to_string()
    );
    let partial = get(blob(&large.digest), Some("bytes=1000-2200000")).await.unwrap();
    assert_eq!(partial.status(), 206);
    assert_eq!(
        partial.bytes().await.unwrap().as_ref(),
        &on_disk(&large.digest)[1000..=2_200_000]
    );
    let whole = get(blob(&large.digest), None).await.unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.bytes().await.unwrap().as_ref(), on_disk(&large.digest).as_slice());
    assert_eq!(
        lab.zero_copy_relays().await,
        3.0,
        "each GET of a large blob was spliced"
    );
    lab.assert_no_credential_in_logs();
}

fn metric_value(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pulls_and_pushes_through_the_proxy_as_a_second_client() {
    let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD))
        .await
        .unwrap();
    let lab = Lab::start_proxy(registry, None);
    let layout = lab.layout();
    let image = layout.add_image("v1", &[200 * 1024, 50 * 1024], 31).unwrap();
    skopeo()
        .copy(
            &layout.reference("v1"),
            &lab.reference("lab", "lab/pod:v1"),
            &CopyOptions::default().dest(as_caller()),
        )
        .await
        .unwrap();
    let root = lab.dir.path().join("podman");
    std::fs::create_dir_all(root.join("xdg")).unwrap();
    std::fs::write(root.join("auth.json"), "{}").unwrap();
    let source = format!("{}/namespaces/team/connectors/lab/lab/pod:v1", lab.addr);
    let target = format!("{}/namespaces/team/connectors/lab/lab/pod-copy:v2", lab.addr);
    let creds = format!("ci:{TEAM_TOKEN}");
    let pulled = support::podman(&root, &[], &["pull", "--tls-verify=false", "--creds", &creds, &source]).await;
    assert!(pulled.status.success(), "{}", String::from_utf8_lossy(&pulled.stderr));
    let tagged = support::podman(&root, &[], &["tag", &source, &target]).await;
    assert!(tagged.status.success(), "{}", String::from_utf8_lossy(&tagged.stderr));
    let pushed = support::podman(&root, &[], &["push", "--tls-verify=false", "--creds", &creds, &target]).await;
    assert!(pushed.status.success(), "{}", String::from_utf8_lossy(&pushed.stderr));
    // podman rewrites the manifest on push; its layers are the same blobs.
    let copy = skopeo()
        .inspect(&lab.reference("lab", "lab/pod-copy:v2"), &inspecting())
        .await
        .unwrap();
    let layers: Vec<&str> = copy["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let want: Vec<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(layers, want);
    let direct = lab.registry.manifest_digest("lab/pod-copy", "v2").await.unwrap();
    assert_eq!(copy["Digest"], direct.as_str());
    lab.assert_no_credential_in_logs();
}
