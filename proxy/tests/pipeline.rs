//! The request pipeline in-process, against the real registry: a pull
//! through reverse mode matches what the registry holds, and callers the
//! pipeline refuses never cause an upstream request.

mod support;

use std::time::Duration;

use support::InProcessProxy;
use testing::credentials::{assert_no_credential, basic};
use testing::{CopyOptions, OciLayout, Registry, RegistryAccess, RegistryClient, RegistryOptions, Skopeo, StoreYaml};

const USER: &str = "robot$team+ci";
const PASSWORD: &str = "pipeline-s3cr3t";
const TOKENS: &str =
    "builder-token,system:serviceaccount:team:builder,uid-1\nother-token,system:serviceaccount:other:builder,uid-2\n";

/// A registry holding `lab/hello:v1`, and the in-process proxy with
/// connector `team/lab` for it.
async fn lab() -> (Registry, InProcessProxy, testing::ImageDigests, tempfile::TempDir) {
    let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD))
        .await
        .expect("the registry starts");
    let dir = tempfile::tempdir().unwrap();
    let layout = OciLayout::new(dir.path()).unwrap();
    let image = layout.add_image("v1", &[4096, 3 << 20], 7).unwrap();
    let push = CopyOptions::default().dest(RegistryAccess::plain_http().creds(USER, PASSWORD));
    Skopeo::new()
        .unwrap()
        .copy(
            &layout.reference("v1"),
            &registry.docker_reference("lab/hello:v1"),
            &push,
        )
        .await
        .expect("the image is pushed directly");
    let store = StoreYaml::new("team")
        .basic_auth("robot", USER, PASSWORD)
        .connector("lab", &registry.url(), "robot", None)
        .build();
    let proxy = InProcessProxy::standalone(&store, TOKENS).await;
    (registry, proxy, image, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_through_the_reverse_pipeline_matches_the_registry_digests() {
    let (registry, proxy, image, _dir) = lab().await;
    let client = RegistryClient::new(&proxy.url()).credentials("anything", "builder-token");
    let repository = "namespaces/team/connectors/lab/lab/hello";
    let digest = client
        .manifest_digest(repository, "v1")
        .await
        .expect("the manifest through the proxy");
    assert_eq!(digest, image.manifest.digest);
    assert_eq!(digest, registry.manifest_digest("lab/hello", "v1").await.unwrap());
    for layer in &image.layers {
        let got = client
            .blob_digest(repository, &layer.digest)
            .await
            .expect("the layer through the proxy");
        assert_eq!(got.to_string(), layer.digest, "layer of {} bytes", layer.size);
    }
    let metrics = proxy.pipeline.metrics.encode();
    assert!(
        metrics.contains(r#"connectors_proxy_requests_total{connector="team/lab",mode="reverse",status="2xx"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"connectors_proxy_time_to_first_byte_seconds_count{mode="reverse"} "#),
        "{metrics}"
    );
    assert_no_credential(&metrics, "the metrics", USER, PASSWORD);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_callers_get_their_answer_and_no_upstream_request() {
    let (registry, proxy, _image, _dir) = lab().await;
    let http = reqwest_like::Client::new();
    let manifest = format!(
        "{}/v2/namespaces/team/connectors/lab/lab/hello/manifests/v1",
        proxy.url()
    );
    let cases = [
        (None, 401, "UNAUTHORIZED"),
        (Some(basic("x", "wrong-token")), 401, "UNAUTHORIZED"),
        (Some(basic("x", "other-token")), 403, "DENIED"),
        (Some("Digest nonsense".to_owned()), 401, "UNAUTHORIZED"),
    ];
    for (authorization, status, code) in cases {
        let answer = http.get(&manifest, authorization.as_deref()).await;
        assert_eq!(answer.status, status, "{authorization:?}: {}", answer.body);
        assert!(answer.body.contains(code), "{authorization:?}: {}", answer.body);
        if status == 401 {
            assert_eq!(answer.www_authenticate.as_deref(), Some(r#"Basic realm="connectors""#));
        }
        assert_no_credential(&answer.body, "a refusal", USER, PASSWORD);
    }
    let unknown = http
        .get(
            &format!(
                "{}/v2/namespaces/team/connectors/ghost/lab/hello/manifests/v1",
                proxy.url()
            ),
            Some(&basic("x", "builder-token")),
        )
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert!(unknown.body.contains("NAME_UNKNOWN"), "{}", unknown.body);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        registry.access_log_lines("GET /v2/lab/hello/manifests/").is_empty(),
        "a refused caller caused an upstream request: {:?}",
        registry.access_log_lines("GET /v2/")
    );
    let metrics = proxy.pipeline.metrics_text();
    for (reason, count) in [("unauthenticated", 3), ("denied", 1), ("unknown_connector", 1)] {
        let series = format!(r#"connectors_proxy_refusals_total{{mode="reverse",reason="{reason}"}} {count}"#);
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
    assert!(
        !metrics.contains("connectors_proxy_upstream_errors_total{"),
        "{metrics}"
    );
    proxy.stop().await;
}

/// A minimal HTTP/1 client for raw answers (status, challenge, body).
mod reqwest_like {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client as Legacy;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;

    pub struct Answer {
        pub status: u16,
        pub www_authenticate: Option<String>,
        pub body: String,
    }

    pub struct Client(Legacy<HttpConnector, Empty<Bytes>>);

    impl Client {
        pub fn new() -> Self {
            Self(Legacy::builder(TokioExecutor::new()).build_http())
        }

        pub async fn get(&self, url: &str, authorization: Option<&str>) -> Answer {
            let mut request = hyper::Request::get(url);
            if let Some(value) = authorization {
                request = request.header(hyper::header::AUTHORIZATION, value);
            }
            let response = self
                .0
                .request(request.body(Empty::new()).unwrap())
                .await
                .expect("the proxy answers");
            let status = response.status().as_u16();
            let www_authenticate = response
                .headers()
                .get(hyper::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            Answer {
                status,
                www_authenticate,
                body: String::from_utf8_lossy(&body).into_owned(),
            }
        }
    }
}
