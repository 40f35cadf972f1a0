//! `connectors proxy` in cluster mode: no store file, a kubeconfig pointing
//! at a fake API server that answers list/watch, TokenReview and
//! SubjectAccessReview with the real API's JSON, in front of the real
//! registry (Debian `docker-registry`, htpasswd). Every identity kind is
//! tried allowed and denied: ServiceAccount tokens, the source address of an
//! injected pod (curl bound to a loopback address), and a node pulling for
//! its pods. Revocation and credential changes take effect without a
//! restart, and the registry password appears in no response or log line.
//!
//! The stand-in stays here for what the real control plane (`tests/e2e.rs`,
//! where tokens, RBAC and pod addresses are proven against kube-apiserver)
//! cannot be made to show on demand: how many TokenReviews and
//! SubjectAccessReviews a run of requests costs, a revocation answered at a
//! chosen moment, and node identities before a kubelet runs.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use support::Process;
use testing::apiserver::{CONNECTORS, FakeApiServer, NAMESPACES, NODES, PODS, Review, SECRETS};
use testing::{CopyOptions, InspectOptions, OciLayout, Registry, RegistryAccess, RegistryOptions, Skopeo, TestTls};

const USER: &str = "robot$lab+ci";
const PASSWORD: &str = "Pa55-cluster-never-leaks-7d21";
const BUILDER_TOKEN: &str = "builder-token-5c1d";
const WRONG_AUDIENCE_TOKEN: &str = "wrong-audience-token-0b7e";
const BUILDER: &str = "system:serviceaccount:team:builder";
/// The node pull endpoint's projected token, bound to its pod on node-a.
const NODE_PULLER_TOKEN: &str = "node-puller-token-9a3f";
/// A token of the endpoint's ServiceAccount bound to no pod (a TokenRequest
/// by hand).
const UNBOUND_PULLER_TOKEN: &str = "unbound-puller-token-44c0";
const NODE_PULLER: &str = "system:serviceaccount:connectors-csi:connectors-node-pull";

/// The longest any step waits for something to happen.
const WAIT: Duration = Duration::from_secs(15);

/// Source addresses the test binds its clients to.
const POD_IP: &str = "127.0.0.2";
const HOST_NETWORK_IP: &str = "127.0.0.3";
const CLAIMED_TWICE_IP: &str = "127.0.0.4";
const NODE_IP: &str = "127.0.0.5";
const OTHER_NAMESPACE_POD_IP: &str = "127.0.0.6";

fn namespace(name: &str) -> Value {
    json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

fn secret(password: &str) -> Value {
    let encode = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
    json!({
        "metadata": {"name": "robot", "namespace": "team"},
        "type": "kubernetes.io/basic-auth",
        "data": {"username": encode(USER), "password": encode(password)},
    })
}

/// An injected pod as the API server stores it once it runs.
fn pod(namespace: &str, name: &str, ip: &str, image: &str, host_network: bool) -> Value {
    json!({
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"connectors.cpaas.io/injected": "true", "job-name": name},
            "annotations": {"connectors.cpaas.io/injected": "team/harbor"},
        },
        "spec": {
            "serviceAccountName": if namespace == "team" { "builder" } else { "default" },
            "nodeName": "node-a",
            "hostNetwork": host_network,
            "containers": [{"name": "app", "image": image}],
        },
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": NODE_IP},
    })
}

/// The fake's TokenReview: `BUILDER_TOKEN` is team/builder's token for the
/// proxy's audience; `WRONG_AUDIENCE_TOKEN` is valid for the API server only.
fn review_token(review: &Value) -> Value {
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let audiences: Vec<&str> = review["spec"]["audiences"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match token {
        BUILDER_TOKEN if audiences.contains(&"connectors-proxy") => json!({
            "authenticated": true,
            "user": {
                "username": BUILDER,
                "uid": "6f0c2f4e-1111-4c55-9d1e-000000000001",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:team", "system:authenticated"],
                "extra": {"authentication.kubernetes.io/pod-name": ["job-1"]},
            },
            "audiences": ["connectors-proxy"],
        }),
        NODE_PULLER_TOKEN | UNBOUND_PULLER_TOKEN if audiences.contains(&"connectors-proxy") => {
            let mut extra = json!({"authentication.kubernetes.io/pod-name": ["connectors-node-pull-x7k2p"]});
            if token == NODE_PULLER_TOKEN {
                extra["authentication.kubernetes.io/node-name"] = json!(["node-a"]);
            } else {
                extra = json!({});
            }
            json!({
                "authenticated": true,
                "user": {
                    "username": NODE_PULLER,
                    "uid": "6f0c2f4e-1111-4c55-9d1e-000000000009",
                    "groups": ["system:serviceaccounts", "system:serviceaccounts:connectors-csi", "system:authenticated"],
                    "extra": extra,
                },
                "audiences": ["connectors-proxy"],
            })
        }
        // NB: the API server answers a token for another audience with
        // authenticated=false and an error.
        WRONG_AUDIENCE_TOKEN => json!({
            "authenticated": false,
            "user": {},
            "error": "[invalid bearer token, token audiences [\"https://kubernetes.default.svc\"] is invalid for the target audiences [\"connectors-proxy\"]]",
        }),
        _ => json!({"authenticated": false, "user": {}, "error": "invalid bearer token"}),
    }
}

/// A running lab: the fake API server, the registry, the proxy.
struct Lab {
    api: FakeApiServer,
    registry: Registry,
    proxy: Process,
    addr: SocketAddr,
    tls_addr: SocketAddr,
    forward_addr: SocketAddr,
    tls: TestTls,
    /// Whether RBAC lets team/builder use team/harbor.
    builder_allowed: Arc<AtomicBool>,
    dir: tempfile::TempDir,
    digest: String,
}

impl Lab {
    /// The lab with node identities by address turned on.
    async fn start() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(node_identity_by_address: bool) -> Self {
        let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();

        // The image every pull below fetches, pushed with the real credential.
        let layout = OciLayout::new(&dir.path().join("layout")).unwrap();
        let image = layout.add_image("v1", &[64 * 1024, 2 * 1024 * 1024], 3).unwrap();
        let push = CopyOptions::default().dest(RegistryAccess::plain_http().creds(USER, PASSWORD));
        for repository in ["lab/hello:v1", "lab/late:v1"] {
            skopeo()
                .copy(&layout.reference("v1"), &registry.docker_reference(repository), &push)
                .await
                .unwrap();
        }

        let api = FakeApiServer::start(&[CONNECTORS, NAMESPACES, SECRETS, PODS, NODES]).await;
        api.apply(NAMESPACES, namespace("team"));
        api.apply(NAMESPACES, namespace("other"));
        api.apply(SECRETS, secret(PASSWORD));
        api.apply(
            CONNECTORS,
            json!({
                "metadata": {"name": "harbor", "namespace": "team"},
                "spec": {
                    "connectorClassName": "oci",
                    "address": registry.url(),
                    "auth": {"name": "basicAuth", "secretRef": {"name": "robot"}},
                },
            }),
        );
        api.apply(
            NODES,
            json!({
                "metadata": {"name": "node-a", "labels": {"kubernetes.io/hostname": "node-a"}},
                "status": {"addresses": [
                    {"type": "InternalIP", "address": NODE_IP},
                    {"type": "Hostname", "address": "node-a"},
                ]},
            }),
        );
        let image_ref = "proxy.test/namespaces/team/connectors/harbor/lab/hello:v1";
        api.apply(PODS, pod("team", "job-1", POD_IP, image_ref, false));
        api.apply(PODS, pod("team", "host-net", HOST_NETWORK_IP, image_ref, true));
        api.apply(PODS, pod("team", "dup-a", CLAIMED_TWICE_IP, image_ref, false));
        api.apply(PODS, pod("team", "dup-b", CLAIMED_TWICE_IP, image_ref, false));
        api.apply(PODS, pod("other", "intruder", OTHER_NAMESPACE_POD_IP, image_ref, false));
        api.set_reviewer(Review::Token, review_token);
        let builder_allowed = Arc::new(AtomicBool::new(true));
        {
            let allowed = builder_allowed.clone();
            api.set_reviewer(Review::SubjectAccess, move |review| {
                let spec = &review["spec"];
                let attributes = &spec["resourceAttributes"];
                let asks_for_proxy = attributes
                    == &json!({
                        "group": "connectors.alauda.io",
                        "resource": "connectors",
                        "subresource": "proxy",
                        "verb": "get",
                        "namespace": "team",
                        "name": "harbor",
                    });
                if spec["user"] == BUILDER && asks_for_proxy && allowed.load(Ordering::SeqCst) {
                    json!({"allowed": true, "reason": "RBAC: allowed by RoleBinding \"use-harbor/team\""})
                } else {
                    json!({"allowed": false})
                }
            });
        }

        let tls = TestTls::for_loopback().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, api.kubeconfig("proxy-sa-token")).unwrap();
        let tls_addr = free_address();
        let forward_addr = free_address();
        let forward_listen = forward_addr.to_string();
        let state_dir = dir.path().join("state");
        let (cert, key) = (tls.files.cert.clone(), tls.files.key.clone());
        let tls_listen = tls_addr.to_string();
        let (proxy, addr) = tokio::task::spawn_blocking(move || {
            Process::start_with_env(
                &[
                    "proxy",
                    // NB: the registries of these tests listen on loopback.
                    "--egress-allow",
                    "127.0.0.0/8",
                    "--listen",
                    "127.0.0.1:0",
                    "--tls-listen",
                    &tls_listen,
                    "--tls-cert",
                    cert.to_str().unwrap(),
                    "--tls-key",
                    key.to_str().unwrap(),
                    "--forward-listen",
                    &forward_listen,
                    "--state-dir",
                    state_dir.to_str().unwrap(),
                    "--authorization-cache-seconds",
                    "1",
                    "--node-pull-wait-milliseconds",
                    "3000",
                    "--verbose",
                ],
                &[
                    ("KUBECONFIG", kubeconfig.to_str().unwrap()),
                    (
                        "CONNECTORS_NODE_IDENTITY_BY_ADDRESS",
                        if node_identity_by_address { "true" } else { "false" },
                    ),
                ],
                "proxy listening",
            )
        })
        .await
        .unwrap();
        let lab = Self {
            api,
            registry,
            proxy,
            addr,
            tls_addr,
            forward_addr,
            tls,
            builder_allowed,
            dir,
            digest: image.manifest.digest.to_string(),
        };
        lab.wait_ready().await;
        lab
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, _) = self
                .curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}"], "/readyz")
                .await;
            if status == "200" {
                return;
            }
            assert!(Instant::now() < deadline, "the proxy's caches never synced");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn manifest_path(&self, repository: &str) -> String {
        format!("/v2/namespaces/team/connectors/harbor/{repository}/manifests/v1")
    }

    /// Runs curl against the reverse proxy; returns (stdout, stderr).
    async fn curl(&self, args: &[&str], path: &str) -> (String, String) {
        let url = format!("http://{}{path}", self.addr);
        curl(args, &url).await
    }

    /// GETs a manifest path, optionally from `source` and with `token`;
    /// returns the status and the `Docker-Content-Digest` header.
    async fn get(&self, source: Option<&str>, token: Option<&str>, path: &str) -> (u16, String) {
        let mut args = vec![
            "-s",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ];
        if let Some(source) = source {
            args.extend(["--interface", source]);
        }
        let user;
        if let Some(token) = token {
            user = format!("caller:{token}");
            args.extend(["-u", &user]);
        }
        let (head, _) = self.curl(&args, path).await;
        status_and_digest(&head)
    }

    fn assert_no_credential_anywhere(&self, seen: &str) {
        testing::credentials::assert_no_credential(seen, "responses", USER, PASSWORD);
        testing::credentials::assert_no_credential(&self.proxy.log_text(), "the proxy's logs", USER, PASSWORD);
    }
}

fn skopeo() -> Skopeo {
    Skopeo::new().expect("skopeo is installed (bash .ci/install)")
}

fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn curl(args: &[&str], url: &str) -> (String, String) {
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("curl")
            .args(["--max-time", "10"])
            .args(args)
            .arg(url)
            .output(),
    )
    .await
    .expect("curl finished in time")
    .expect("curl is installed (bash .ci/install)");
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The status code and `Docker-Content-Digest` of a response head.
fn status_and_digest(head: &str) -> (u16, String) {
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let digest = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("docker-content-digest")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    (status, digest)
}

/// Polls `check` until it holds, for at most [`WAIT`].
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_are_reviewed_once_and_authorized_by_subject_access_review() {
    let lab = &Lab::start().await;
    let hello = &lab.manifest_path("lab/hello");
    let mut seen = String::new();
    // A Secret is read when a request first uses it, not at start.
    let secret_requests = |lab: &Lab| {
        lab.api
            .requests()
            .iter()
            .filter(|r| r.path.contains("/secrets"))
            .count()
    };
    assert_eq!(secret_requests(lab), 0, "no Secret is read before a request uses it");

    // skopeo with only the ServiceAccount token pulls the image whole.
    let access = RegistryAccess::plain_http().creds("caller", BUILDER_TOKEN);
    let reference = format!("docker://{}/namespaces/team/connectors/harbor/lab/hello:v1", lab.addr);
    let inspected = skopeo()
        .inspect(&reference, &InspectOptions::from(access.clone()))
        .await
        .unwrap();
    assert_eq!(inspected["Digest"], lab.digest.as_str());
    assert_eq!(lab.api.open_watches(SECRETS), 1, "the Secret in use is followed");
    let out = OciLayout::new(&lab.dir.path().join("pulled")).unwrap();
    let pulled = skopeo()
        .copy(&reference, &out.reference("v1"), &CopyOptions::default().src(access))
        .await
        .unwrap();
    seen.push_str(&pulled.stdout);
    seen.push_str(&pulled.stderr);
    for layer in inspected["Layers"].as_array().unwrap() {
        let digest = layer.as_str().unwrap();
        assert_eq!(
            testing::sha256_file(&out.blob_path(digest)).unwrap().to_string(),
            digest
        );
    }

    // Many requests, one TokenReview: the answer is cached for the token.
    for _ in 0..5 {
        assert_eq!(
            lab.get(None, Some(BUILDER_TOKEN), hello).await,
            (200, lab.digest.clone())
        );
    }
    assert_eq!(lab.api.review_count(Review::Token), 1, "one TokenReview for one token");

    // Invalid tokens and tokens for another audience are 401s; no token and
    // no known source address is a 401 with the proxy's challenge.
    assert_eq!(lab.get(None, Some("not-a-token"), hello).await.0, 401);
    assert_eq!(lab.get(None, Some(WRONG_AUDIENCE_TOKEN), hello).await.0, 401);
    let (head, _) = lab.curl(&["-s", "-o", "/dev/null", "-D", "-"], hello).await;
    assert_eq!(status_and_digest(&head).0, 401);
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"connectors\""),
        "{head}"
    );
    seen.push_str(&head);

    // Revoking the RoleBinding revokes access within the cache time (1 s),
    // and granting it again restores it: no restart, no token denylist.
    lab.builder_allowed.store(false, Ordering::SeqCst);
    eventually("the revocation takes effect", || async move {
        lab.get(None, Some(BUILDER_TOKEN), hello).await.0 == 403
    })
    .await;
    lab.builder_allowed.store(true, Ordering::SeqCst);
    eventually("the grant takes effect", || async move {
        lab.get(None, Some(BUILDER_TOKEN), hello).await.0 == 200
    })
    .await;

    // A changed credential Secret takes effect from the watch, without a restart.
    lab.api.apply(SECRETS, secret("a-rotated-but-wrong-password"));
    eventually("the wrong password is in use", || async move {
        lab.get(None, Some(BUILDER_TOKEN), hello).await.0 != 200
    })
    .await;
    lab.api.apply(SECRETS, secret(PASSWORD));
    eventually("the right password is back", || async move {
        lab.get(None, Some(BUILDER_TOKEN), hello).await.0 == 200
    })
    .await;

    // Reverse mode over HTTPS, for container runtimes on nodes.
    let ca = lab.dir.path().join("proxy-ca.crt");
    std::fs::write(&ca, lab.tls.ca_pem()).unwrap();
    let url = format!("https://{}{hello}", lab.tls_addr);
    let user = format!("caller:{BUILDER_TOKEN}");
    let (head, stderr) = curl(
        &[
            "-s",
            "-D",
            "-",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
            "--cacert",
            ca.to_str().unwrap(),
            "-u",
            &user,
        ],
        &url,
    )
    .await;
    assert_eq!(status_and_digest(&head), (200, lab.digest.clone()), "{head}{stderr}");

    lab.assert_no_credential_anywhere(&seen);
    // Every SubjectAccessReview asked about the proxy subresource of the
    // named connector, for the reviewed user.
    assert!(lab.api.review_count(Review::SubjectAccess) >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_pods_and_nodes_are_identified_by_source_address_and_nothing_else() {
    let lab = &Lab::start().await;
    let hello = &lab.manifest_path("lab/hello");

    // The injected, running pod of team/builder: no token needed.
    assert_eq!(lab.get(Some(POD_IP), None, hello).await, (200, lab.digest.clone()));
    // A hostNetwork pod shares the node's address: never an identity.
    assert_eq!(lab.get(Some(HOST_NETWORK_IP), None, hello).await.0, 401);
    // An address two pods claim identifies neither.
    assert_eq!(lab.get(Some(CLAIMED_TWICE_IP), None, hello).await.0, 401);
    // A pod of another namespace is identified, and RBAC refuses it.
    assert_eq!(lab.get(Some(OTHER_NAMESPACE_POD_IP), None, hello).await.0, 403);
    // A token that fails is never overridden by a good source address.
    assert_eq!(lab.get(Some(POD_IP), Some("not-a-token"), hello).await.0, 401);

    // Forward mode, absolute form to the plain-HTTP registry: the injected
    // pod needs no proxy credential either; an unknown address gets a 407.
    let direct = format!("{}/v2/lab/hello/manifests/v1", lab.registry.url());
    let forward = format!("http://{}", lab.forward_addr);
    let accept = "Accept: application/vnd.oci.image.manifest.v1+json";
    // curl's arguments for a HEAD-like GET through `proxy` from `source`.
    let through = |proxy: &str, source: Option<&str>| -> Vec<String> {
        let mut args: Vec<String> = ["-s", "-o", "/dev/null", "-D", "-", "-H", accept, "-x", proxy]
            .map(str::to_owned)
            .into();
        if let Some(ip) = source {
            args.extend(["--interface".to_owned(), ip.to_owned()]);
        }
        args
    };
    let head_through = |proxy: String, source: Option<&'static str>| {
        let args = through(&proxy, source);
        let direct = direct.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            curl(&args, &direct).await.0
        }
    };
    let head = head_through(forward.clone(), Some(POD_IP)).await;
    assert_eq!(status_and_digest(&head), (200, lab.digest.clone()), "{head}");
    let head = head_through(forward.clone(), None).await;
    assert_eq!(status_and_digest(&head).0, 407, "{head}");
    // The proxy URL the webhook injects names the connectors and carries no
    // password: an unchanged client sends it as `Proxy-Authorization`
    // with an empty password, and is still the pod at its address.
    let injected = format!("http://team%2Fharbor@{}", lab.forward_addr);
    for (source, expected) in [(Some(POD_IP), 200), (None, 407)] {
        let head = head_through(injected.clone(), source).await;
        assert_eq!(status_and_digest(&head).0, expected, "from {source:?}: {head}");
    }
    // A pod's first request may leave before its address reaches the
    // proxy's informer: the forward proxy waits for it briefly.
    let early = head_through(injected.clone(), Some("127.0.0.8"));
    let create_pod = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        lab.api.apply(PODS, pod("team", "early", "127.0.0.8", "busybox", false));
    };
    let (head, ()) = tokio::join!(early, create_pod);
    assert_eq!(status_and_digest(&head), (200, lab.digest.clone()), "{head}");
    lab.api.delete(PODS, Some("team"), "early");

    // Nodes pull through reverse mode. A node may pull what its pods reference...
    assert_eq!(lab.get(Some(NODE_IP), None, hello).await, (200, lab.digest.clone()));
    let config_blob = {
        let manifest = lab.registry.client().manifest("lab/hello", "v1").await.unwrap();
        let manifest: Value = serde_json::from_slice(&manifest.bytes).unwrap();
        manifest["config"]["digest"].as_str().unwrap().to_owned()
    };
    let blob = format!("/v2/namespaces/team/connectors/harbor/lab/hello/blobs/{config_blob}");
    let (head, _) = lab
        .curl(&["-s", "-o", "/dev/null", "-D", "-", "--interface", NODE_IP], &blob)
        .await;
    assert_eq!(status_and_digest(&head).0, 200, "{head}");
    // ...and nothing else: not another repository, not an upload.
    let (status, _) = lab.get(Some(NODE_IP), None, &lab.manifest_path("lab/other")).await;
    assert_eq!(status, 403);
    let (head, _) = lab
        .curl(
            &["-s", "-o", "/dev/null", "-D", "-", "--interface", NODE_IP, "-X", "POST"],
            "/v2/namespaces/team/connectors/harbor/lab/hello/blobs/uploads/",
        )
        .await;
    assert_eq!(status_and_digest(&head).0, 403, "{head}");

    // A pull that starts before its pod reaches the proxy's informer waits
    // for it (briefly) instead of failing.
    let late = lab.manifest_path("lab/late");
    let request = lab.get(Some(NODE_IP), None, &late);
    let create_pod = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        lab.api.apply(
            PODS,
            pod(
                "team",
                "late",
                "127.0.0.7",
                "proxy.test/namespaces/team/connectors/harbor/lab/late:v1",
                false,
            ),
        );
    };
    let ((status, digest), ()) = tokio::join!(request, create_pod);
    assert_eq!((status, digest), (200, lab.digest.clone()));

    // Once the pod is gone, so is the node's right to pull for it; a pod
    // deleted also stops identifying its address.
    lab.api.delete(PODS, Some("team"), "late");
    lab.api.delete(PODS, Some("team"), "job-1");
    eventually("the deleted pods stop counting", || async move {
        lab.get(Some(POD_IP), None, hello).await.0 == 401
    })
    .await;
    // NB: job-1 was the only pod referencing lab/hello besides the ones that
    // cannot identify (their addresses are refused, but they are bound to
    // the node and reference the image, so the node may still pull it).
    assert_eq!(lab.get(Some(NODE_IP), None, &late).await.0, 403);

    lab.assert_no_credential_anywhere("");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_address_is_not_the_node_unless_the_admin_says_so() {
    let lab = &Lab::start_with(false).await;
    let hello = &lab.manifest_path("lab/hello");
    // Anything on the node (a hostNetwork pod of any namespace, a
    // masqueraded pod) sends from this address: by default it is nobody.
    assert_eq!(lab.get(Some(NODE_IP), None, hello).await.0, 401);
    // Injected pods are still known by their own addresses.
    assert_eq!(lab.get(Some(POD_IP), None, hello).await, (200, lab.digest.clone()));
    lab.assert_no_credential_anywhere("");
}

/// What a node pull endpoint needs of the lab: where to write its files,
/// the proxy's HTTPS address and CA.
struct LabFiles {
    dir: std::path::PathBuf,
    tls_addr: SocketAddr,
    ca: String,
}

impl LabFiles {
    /// `connectors node-pull` in front of the lab's proxy (HTTPS), with
    /// `token` as its projected token; returns the endpoint and its address.
    fn start(&self, name: &str, token: &str, pod_credentials: &str) -> (Process, SocketAddr) {
        let ca = self.dir.join("node-pull-ca.crt");
        std::fs::write(&ca, &self.ca).unwrap();
        let token_file = self.dir.join(format!("{name}.token"));
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        let proxy = format!("https://{}", self.tls_addr);
        Process::start(
            &[
                "node-pull",
                "--listen",
                "127.0.0.1:0",
                "--proxy",
                &proxy,
                "--proxy-ca",
                ca.to_str().unwrap(),
                "--token-file",
                token_file.to_str().unwrap(),
                "--pod-credentials",
                pod_credentials,
            ],
            "node pull endpoint listening",
        )
    }
}

/// curl against a node pull endpoint; returns the response head and body.
async fn curl_endpoint(endpoint: SocketAddr, args: &[&str], path: &str) -> (String, String) {
    let url = format!("http://{endpoint}{path}");
    let (out, _) = curl(&[&["-s", "-D", "-"][..], args].concat(), &url).await;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) => (head.to_owned(), body.to_owned()),
        None => (out, String::new()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_pull_endpoint_relays_pulls_as_the_node_its_pod_runs_on_and_nothing_else() {
    // By-address node identities off, as in the default install: the node
    // is proven by the endpoint's pod-bound token alone.
    let lab = &Lab::start_with(false).await;
    let hello = &lab.manifest_path("lab/hello");
    let (endpoint, at) = tokio::task::spawn_blocking({
        let (dir, tls_addr, ca) = (lab.dir.path().to_owned(), lab.tls_addr, lab.tls.ca_pem().to_owned());
        move || {
            let lab = LabFiles { dir, tls_addr, ca };
            lab.start("bound", NODE_PULLER_TOKEN, "forward")
        }
    })
    .await
    .unwrap();
    let accept = "Accept: application/vnd.oci.image.manifest.v1+json";

    // A container runtime's pull, in plain HTTP to loopback: skopeo copies
    // the image the node's pod references, digests equal.
    let out = lab.dir.path().join("pulled");
    let pulled = skopeo()
        .copy(
            &format!("docker://{at}/namespaces/team/connectors/harbor/lab/hello:v1"),
            &format!("oci:{}:v1", out.display()),
            &CopyOptions::default().src(RegistryAccess::plain_http()),
        )
        .await;
    assert!(pulled.is_ok(), "{pulled:?}\n{}", endpoint.log_text());
    let (head, _) = curl_endpoint(at, &["-I", "-H", accept], hello).await;
    assert_eq!(status_and_digest(&head), (200, lab.digest.clone()), "{head}");
    // containerd tries TLS first on a loopback registry and falls back to
    // plain HTTP when its ClientHello is answered in HTTP, as Go's servers
    // answer it: the endpoint does so at once, not after a timeout.
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut socket = tokio::net::TcpStream::connect(at).await.unwrap();
        socket
            .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0, 0, 1, 0])
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(WAIT, socket.read_to_string(&mut answer))
            .await
            .expect("the endpoint answers a ClientHello")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.0 400 Bad Request"), "{answer}");
    }

    // The node rule, as for a node by address: no other repository, no push.
    // A refusal of the node is a Basic challenge, so that a runtime holding
    // the pod's own credential presents it; the message says why.
    let (head, body) = curl_endpoint(at, &["-H", accept], &lab.manifest_path("lab/other")).await;
    assert_eq!(status_and_digest(&head).0, 401, "{head}{body}");
    assert!(head.contains("connectors node pull"), "{head}");
    assert!(body.contains("node node-a") && body.contains("no pod bound"), "{body}");
    let (head, body) = curl_endpoint(
        at,
        &["-X", "POST"],
        "/v2/namespaces/team/connectors/harbor/lab/hello/blobs/uploads/",
    )
    .await;
    assert_eq!(status_and_digest(&head).0, 405, "{head}");
    assert!(body.contains("only pulls"), "{body}");

    // A pull bringing a pod's own token (kubelet's credential provider) is
    // decided as that pod's ServiceAccount, challenge and all.
    let builder = format!("caller:{BUILDER_TOKEN}");
    let (head, _) = curl_endpoint(at, &["-I", "-H", accept, "-u", &builder], hello).await;
    assert_eq!(status_and_digest(&head), (200, lab.digest.clone()), "{head}");
    let (head, _) = curl_endpoint(at, &["-I", "-H", accept, "-u", "caller:forged"], hello).await;
    assert_eq!(status_and_digest(&head).0, 401, "{head}");
    assert!(head.contains("Basic realm=\"connectors node pull\""), "{head}");
    lab.builder_allowed.store(false, Ordering::SeqCst);
    eventually("the revoked builder is refused through the endpoint", || async move {
        let (head, _) = curl_endpoint(
            at,
            &["-I", "-H", accept, "-u", &format!("caller:{BUILDER_TOKEN}")],
            hello,
        )
        .await;
        status_and_digest(&head).0 == 403
    })
    .await;
    lab.builder_allowed.store(true, Ordering::SeqCst);

    // Required pod credentials close the endpoint to the node's other
    // processes; an unbound token of the endpoint's ServiceAccount is no node.
    let (strict, strict_at) = tokio::task::spawn_blocking({
        let (dir, tls_addr, ca) = (lab.dir.path().to_owned(), lab.tls_addr, lab.tls.ca_pem().to_owned());
        move || LabFiles { dir, tls_addr, ca }.start("strict", NODE_PULLER_TOKEN, "require")
    })
    .await
    .unwrap();
    let (head, body) = curl_endpoint(strict_at, &["-H", accept], hello).await;
    assert_eq!(status_and_digest(&head).0, 401, "{head}");
    assert!(head.contains("Basic realm"), "{head}");
    assert!(body.contains("credential provider"), "{body}");
    // (after the builder's revocation above has left the decision cache)
    eventually("the builder pulls through the strict endpoint", || async move {
        let (head, _) = curl_endpoint(
            strict_at,
            &["-I", "-H", accept, "-u", &format!("caller:{BUILDER_TOKEN}")],
            hello,
        )
        .await;
        status_and_digest(&head) == (200, lab.digest.clone())
    })
    .await;
    let (unbound, unbound_at) = tokio::task::spawn_blocking({
        let (dir, tls_addr, ca) = (lab.dir.path().to_owned(), lab.tls_addr, lab.tls.ca_pem().to_owned());
        move || LabFiles { dir, tls_addr, ca }.start("unbound", UNBOUND_PULLER_TOKEN, "ignore")
    })
    .await
    .unwrap();
    // (`ignore`: the proxy's refusal as it is, no challenge.)
    let (head, body) = curl_endpoint(unbound_at, &["-H", accept], hello).await;
    assert_eq!(status_and_digest(&head).0, 403, "{head}{body}");
    assert!(body.contains("bound to no node"), "{body}");

    for (name, process) in [("endpoint", &endpoint), ("strict", &strict), ("unbound", &unbound)] {
        let log = process.log_text();
        for token in [NODE_PULLER_TOKEN, UNBOUND_PULLER_TOKEN, BUILDER_TOKEN] {
            assert!(!log.contains(token), "the {name} endpoint logged a token: {log}");
        }
        testing::credentials::assert_no_credential(&log, "the endpoint's logs", USER, PASSWORD);
    }
    lab.assert_no_credential_anywhere("");
}

#[test]
fn the_node_pull_endpoint_listens_on_the_loopback_only() {
    // Whatever reaches it pulls with the node's rights.
    let (status, _, stderr) = support::run(
        &[
            "node-pull",
            "--listen",
            "198.51.100.7:7480",
            "--proxy",
            "https://proxy.test",
        ],
        None,
        support::root(),
    );
    assert!(!status.success());
    assert!(
        stderr.contains("listens on the node's loopback only, not 198.51.100.7:7480"),
        "{stderr}"
    );
}

/// A stand-in for a proxy replica behind the Service: TLS with the test
/// CA; the first `drop_first` connections read the request and close
/// without an answer (a replica killed mid-request), later ones answer 200.
/// Returns its address and the connections it has taken.
async fn vanishing_proxy(tls: &TestTls, drop_first: usize) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let chain = certs::pem::load_certs_pem(&std::fs::read_to_string(&tls.files.cert).unwrap()).unwrap();
    let key = certs::pem::load_private_key_pem(&std::fs::read_to_string(&tls.files.key).unwrap()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(certs::tls_config::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = taken.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(stream).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buffer = [0_u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer)).await {
                        Ok(Ok(read)) if read > 0 => head.extend_from_slice(&buffer[..read]),
                        _ => return,
                    }
                }
                if n < drop_first {
                    // NB: gone without a word, as a SIGKILLed replica's
                    // connections end.
                    drop(stream);
                    return;
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, taken)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_the_proxy_dropped_before_answering_is_sent_again_a_bounded_number_of_times() {
    let tls = TestTls::for_loopback().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (drop_first, expected_status, expected_connections) in [(1, "200", 2), (10, "502", 3)] {
        let (proxy, taken) = vanishing_proxy(&tls, drop_first).await;
        let files = LabFiles {
            dir: dir.path().to_owned(),
            tls_addr: proxy,
            ca: tls.ca_pem().to_owned(),
        };
        let (_endpoint, endpoint_addr) =
            tokio::task::spawn_blocking(move || files.start("vanishing", "endpoint-token", "forward"))
                .await
                .unwrap();
        let (head, body) = curl_endpoint(endpoint_addr, &[], "/v2/team/harbor/lab/hello/manifests/v1").await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {expected_status}")),
            "{drop_first} dropped: {head}{body}"
        );
        if expected_status == "200" {
            assert_eq!(body, "ok");
        }
        assert_eq!(
            taken.load(Ordering::SeqCst),
            expected_connections,
            "{drop_first} dropped"
        );
    }
}
