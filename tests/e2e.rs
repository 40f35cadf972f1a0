//! The product against a REAL control plane (`e2e/cluster`: etcd,
//! kube-apiserver, kube-controller-manager and kube-scheduler of one
//! Kubernetes release, built from its Go modules, on loopback), installed
//! from `manifests/` as a user installs it. One cluster serves every test
//! here; each test works in namespaces of its own.

mod support;

use connector::Connector;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;
use testing::cluster::RealCluster;

/// The shared cluster, running this build's binary.
fn cluster() -> &'static RealCluster {
    RealCluster::shared(std::path::Path::new(env!("CARGO_BIN_EXE_connectors")))
}

/// Runs `check` every 100 ms until it gives `Ok`, for at most `within`;
/// panics with `what` and the last `Err` (what was seen instead) after that.
async fn eventually<T, F, Fut>(what: &str, within: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(seen) => assert!(
                std::time::Instant::now() < deadline,
                "{what}: not after {within:?}; {seen}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

const MINUTE: std::time::Duration = std::time::Duration::from_secs(60);
const HALF_MINUTE: std::time::Duration = std::time::Duration::from_secs(30);

/// Creates namespace `name` with the admin client.
async fn namespace(client: &kube::Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let object: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    namespaces.create(&PostParams::default(), &object).await.unwrap();
}

/// The spec of an `oci` connector for `address` with basic-auth Secret
/// `secret`.
fn with_secret(address: &str, secret: &str) -> String {
    format!(
        "{{connectorClassName: oci, address: \"{address}\", auth: {{name: basicAuth, secretRef: {{name: {secret}}}}}}}"
    )
}

/// Connector `name` of `namespace` for `address`, with the Secret `robot`
/// holding `USER`/`PASSWORD`.
fn robot_connector(cluster: &RealCluster, namespace: &str, name: &str, address: &str) {
    basic_auth_secret(cluster, namespace, "robot", PASSWORD);
    let spec = with_secret(address, "robot");
    cluster.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&support::connector_yaml(namespace, name, &spec)),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_connector_applies_unchanged_to_the_installed_crd() {
    let cluster = cluster();
    let client = cluster.admin().await;
    namespace(&client, "seed").await;
    let established = cluster.kubectl_ok(
        &[
            "get",
            "crd",
            "connectors.connectors.alauda.io",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
        ],
        None,
    );
    assert_eq!(established, "True");

    let seed = include_str!("fixtures/seeds/harbor-connector.yaml");
    let applied = cluster.kubectl_ok(&["apply", "-n", "seed", "-f", "-"], Some(seed));
    assert!(applied.contains("harbor-connector created"), "{applied}");
    // The short name, the category and the printer columns, as kubectl
    // shows them.
    for resource in ["conn", "connectors"] {
        let listed = cluster.kubectl_ok(&["get", resource, "-n", "seed"], None);
        let header = listed.lines().next().unwrap_or_default();
        for column in ["NAME", "CLASS", "ADDRESS", "READY", "REASON", "AGE"] {
            assert!(header.contains(column), "{resource}: {listed}");
        }
        assert!(listed.contains("harbor-connector"), "{resource}: {listed}");
    }
    let classes = cluster.kubectl_ok(&["get", "connclass", "-o", "name"], None);
    assert!(classes.contains("connectorclass.connectors.alauda.io/oci"), "{classes}");
    let both = cluster.kubectl_ok(&["get", "registry-connectors", "-A", "-o", "name"], None);
    assert!(
        both.contains("connectorclass.connectors.alauda.io/oci")
            && both.contains("connector.connectors.alauda.io/harbor-connector"),
        "{both}"
    );
    let connectors: Api<Connector> = Api::namespaced(client, "seed");
    let stored = connectors.get("harbor-connector").await.unwrap();
    assert_eq!(stored.spec.connector_class_name, "harbor");
    assert_eq!(stored.spec.address, "https://harbor.example.com");
    // NB: gone at once, so the controller's probe does not look the name up
    // (a DNS query would leave the machine).
    connectors
        .delete("harbor-connector", &Default::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_connectors_are_refused_by_the_api_server_with_the_reason() {
    let cluster = cluster();
    let client = cluster.admin().await;
    namespace(&client, "invalid").await;
    let cases = [
        ("{connectorClassName: harbor}", "spec.address: Required value"),
        (
            "{connectorClassName: harbor, address: \"harbor.example.com/no scheme\"}",
            "address must be an http or https URL with a host",
        ),
        (
            "{connectorClassName: oci, address: \"ftp://registry.example.com\"}",
            "address must be an http or https URL with a host",
        ),
        (
            "{connectorClassName: harbor, address: \"https://harbor.example.com\", auth: {name: oauth}}",
            "Unsupported value: \"oauth\"",
        ),
        (
            "{connectorClassName: oci, address: \"https://r.example.com\", addressExtensions: [{name: realm, value: \"https://a.example.com\"}, {name: realm, value: \"https://b.example.com\"}]}",
            "addressExtensions names must be unique",
        ),
        (
            "{connectorClassName: oci, address: \"https://r.example.com\", addressExtensions: [{name: realm, value: \"not a url\"}]}",
            "every addressExtensions value must be an http or https URL with a host",
        ),
    ];
    for (spec, reason) in cases {
        support::assert_connector_refused(cluster, "invalid", spec, reason);
    }
    // A valid one with every field is accepted.
    let valid = "{connectorClassName: oci, address: \"https://r.example.com/prefix\", auth: {name: tokenAuth, secretRef: {name: robot}}, addressExtensions: [{name: realm, value: \"https://auth.example.com/token\"}]}";
    cluster.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&support::connector_yaml("invalid", "good", valid)),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_roles_let_only_bound_service_accounts_use_a_connector() {
    let cluster = cluster();
    let client = cluster.admin().await;
    for name in ["rbac-a", "rbac-b"] {
        namespace(&client, name).await;
    }
    // NB: `resource/sub` here means the subresource (kubectl itself would
    // read it as a resource name).
    let can = |verb: &str, resource: &str, namespace: &str, user: &str| {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        let mut args = vec!["auth", "can-i", verb, resource, "-n", namespace, "--as", user];
        if !subresource.is_empty() {
            args.extend(["--subresource", subresource]);
        }
        let output = cluster.kubectl(&args, None);
        String::from_utf8_lossy(&output.stdout).trim() == "yes"
    };
    let builder = "system:serviceaccount:rbac-a:builder";
    assert!(!can("get", "connectors/proxy", "rbac-a", builder));
    cluster.kubectl_ok(
        &[
            "create",
            "rolebinding",
            "use-connectors",
            "-n",
            "rbac-a",
            "--clusterrole",
            "connectors-user",
            "--serviceaccount",
            "rbac-a:builder",
        ],
        None,
    );
    // The bound namespace only.
    assert!(can("get", "connectors/proxy", "rbac-a", builder));
    assert!(!can("get", "connectors/proxy", "rbac-b", builder));
    // `view` reads connectors but may not use them; `edit` writes them.
    cluster.kubectl_ok(
        &[
            "create",
            "rolebinding",
            "viewer",
            "-n",
            "rbac-b",
            "--clusterrole",
            "view",
            "--user",
            "viewer",
        ],
        None,
    );
    assert!(can("list", "connectors", "rbac-b", "viewer"));
    assert!(!can("get", "connectors/proxy", "rbac-b", "viewer"));
    cluster.kubectl_ok(
        &[
            "create",
            "rolebinding",
            "editor",
            "-n",
            "rbac-b",
            "--clusterrole",
            "edit",
            "--user",
            "editor",
        ],
        None,
    );
    assert!(can("create", "connectors", "rbac-b", "editor"));
}

/// The registry of the admission tests: a loopback address, which the
/// egress policy refuses, so no probe ever dials it.
const REGISTRY: &str = "127.0.0.2:5000";

/// A namespace with one Connector `local` for [`REGISTRY`]; labelled for
/// injection when `opted_in`.
async fn namespace_with_connector(cluster: &RealCluster, client: &kube::Client, name: &str, opted_in: bool) {
    namespace(client, name).await;
    if opted_in {
        cluster.kubectl_ok(
            &["label", "namespace", name, "connectors.cpaas.io/proxy-inject=true"],
            None,
        );
    }
    let spec = format!("{{connectorClassName: oci, address: \"http://{REGISTRY}\"}}");
    cluster.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&support::connector_yaml(name, "local", &spec)),
    );
}

/// The pods of `namespace` matching `selector`, once there are `count`.
async fn pods(
    client: &kube::Client,
    namespace: &str,
    selector: &str,
    count: usize,
) -> Vec<k8s_openapi::api::core::v1::Pod> {
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    let params = kube::api::ListParams::default().labels(selector);
    eventually(&format!("{namespace}: {count} pods for {selector}"), MINUTE, || async {
        let list = api.list(&params).await.unwrap().items;
        if list.len() >= count {
            Ok(list)
        } else {
            Err(format!("{} of them", list.len()))
        }
    })
    .await
}

/// The proxy's form of `repository:tag` of [`REGISTRY`] for connector
/// `namespace/local`, as the shipped config.env's pull address gives it.
fn rewritten(namespace: &str, repository: &str) -> String {
    format!("127.0.0.1:7480/namespaces/{namespace}/connectors/local/{repository}")
}

fn image_of(pod: &k8s_openapi::api::core::v1::Pod) -> String {
    pod.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

fn injected(pod: &k8s_openapi::api::core::v1::Pod) -> Option<String> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("connectors.cpaas.io/injected"))
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_that_controllers_create_for_unchanged_workloads_are_mutated() {
    let cluster = cluster();
    let client = cluster.admin().await;
    let ns = "workloads";
    namespace_with_connector(cluster, &client, ns, true).await;
    let image = format!("{REGISTRY}/team/app:1");
    let template = |labels: &str| {
        format!(
            "metadata: {{labels: {{{labels}}}}}\n    spec:\n      restartPolicy: Never\n      containers: [{{name: app, image: \"{image}\"}}]"
        )
    };
    let workloads = format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: job, namespace: {ns}}}\nspec:\n  template:\n    {}\n---\n\
         apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: cron, namespace: {ns}}}\nspec:\n  schedule: \"0 0 1 1 *\"\n  jobTemplate:\n    spec:\n      template:\n        metadata: {{labels: {{workload: cron}}}}\n        spec:\n          restartPolicy: Never\n          containers: [{{name: app, image: \"{image}\"}}]\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: deploy, namespace: {ns}}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{workload: deploy}}}}\n  template:\n    {}\n---\n\
         apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: state, namespace: {ns}}}\nspec:\n  serviceName: state\n  replicas: 1\n  selector: {{matchLabels: {{workload: state}}}}\n  template:\n    {}\n",
        template("workload: job"),
        template("workload: deploy").replace("restartPolicy: Never", "restartPolicy: Always"),
        template("workload: state").replace("restartPolicy: Never", "restartPolicy: Always"),
    );
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&workloads));
    // A Job from the CronJob, as its schedule would make one.
    cluster.kubectl_ok(&["create", "job", "-n", ns, "cron-now", "--from", "cronjob/cron"], None);

    for workload in ["job", "cron", "deploy", "state"] {
        let pod = pods(&client, ns, &format!("workload={workload}"), 1).await.remove(0);
        assert!(
            pod.metadata.owner_references.as_ref().is_some_and(|o| !o.is_empty()),
            "{workload}: not made by a controller"
        );
        assert_eq!(image_of(&pod), rewritten(ns, "team/app:1"), "{workload}");
        assert_eq!(injected(&pod).as_deref(), Some("workloads/local"), "{workload}");
        let volumes = pod.spec.as_ref().unwrap().volumes.clone().unwrap_or_default();
        assert!(
            volumes
                .iter()
                .any(|v| v.csi.as_ref().is_some_and(|c| c.driver == "connectors-csi")),
            "{workload}: no CSI volume"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selection_by_annotation_opt_out_and_protected_namespaces() {
    let cluster = cluster();
    let client = cluster.admin().await;
    namespace_with_connector(cluster, &client, "annotated", false).await;
    namespace_with_connector(cluster, &client, "optout", true).await;
    let pod = |ns: &str, name: &str, annotations: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{case: {name}}}, annotations: {{{annotations}}}}}\nspec:\n  containers: [{{name: app, image: \"{REGISTRY}/team/app:1\"}}]\n"
        )
    };
    let manifests = [
        pod("annotated", "named", "connectors.cpaas.io/connector: local"),
        pod("annotated", "unnamed", ""),
        pod("optout", "opted-out", "connectors.cpaas.io/proxy-inject: \"false\""),
        pod("optout", "default", ""),
        pod("kube-system", "system", "connectors.cpaas.io/connector: local"),
        // The install namespace enforces the restricted Pod Security level.
        pod("connectors-system", "install", "connectors.cpaas.io/connector: local").replace(
            "containers: [{name: app, ",
            "securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}\n  containers: [{name: app, securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}, ",
        ),
    ];
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&manifests.join("---\n")));
    let original = format!("{REGISTRY}/team/app:1");
    for (ns, name, want) in [
        ("annotated", "named", rewritten("annotated", "team/app:1")),
        ("annotated", "unnamed", original.clone()),
        ("optout", "opted-out", original.clone()),
        ("optout", "default", rewritten("optout", "team/app:1")),
        ("kube-system", "system", original.clone()),
        ("connectors-system", "install", original.clone()),
    ] {
        let pod = pods(&client, ns, &format!("case={name}"), 1).await.remove(0);
        assert_eq!(image_of(&pod), want, "{ns}/{name}");
    }
    cluster.kubectl_ok(&["delete", "pod", "-n", "kube-system", "system", "--wait=false"], None);
    cluster.kubectl_ok(
        &["delete", "pod", "-n", "connectors-system", "install", "--wait=false"],
        None,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_connector_is_denied_by_name_and_server_dry_runs_are_mutated() {
    let cluster = cluster();
    let client = cluster.admin().await;
    namespace_with_connector(cluster, &client, "denied", false).await;
    let pod = |name: &str, connector: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: denied, annotations: {{connectors.cpaas.io/connector: {connector}}}}}\nspec:\n  containers: [{{name: app, image: \"{REGISTRY}/team/app:1\"}}]\n"
        )
    };
    let output = cluster.kubectl(&["apply", "-f", "-"], Some(&pod("missing", "nope")));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("connector denied/nope does not exist"), "{stderr}");
    assert!(stderr.contains("denied the request"), "{stderr}");

    let dry = cluster.kubectl_ok(
        &["apply", "--dry-run=server", "-o", "json", "-f", "-"],
        Some(&pod("dry", "local")),
    );
    let dry: k8s_openapi::api::core::v1::Pod = serde_json::from_str(&dry).unwrap();
    assert_eq!(image_of(&dry), rewritten("denied", "team/app:1"));
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, "denied");
    assert!(api.get_opt("dry").await.unwrap().is_none(), "a dry run created the pod");

    // `connectors mutate` against the live cluster (its Connectors, the
    // install's settings and proxy CA) prints what admission did.
    let kubeconfig = cluster.kubeconfig.to_str().unwrap();
    let (status, stdout, stderr) = support::run(
        &["mutate", "--kubeconfig", kubeconfig, "-f", "-"],
        Some(&pod("dry", "local")),
        support::root(),
    );
    assert!(status.success(), "{stderr}");
    let printed: k8s_openapi::api::core::v1::Pod =
        serde_saphyr::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(image_of(&printed), image_of(&dry));
    let connectors_annotations = |pod: &k8s_openapi::api::core::v1::Pod| {
        pod.metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|(key, _)| key.starts_with("connectors.cpaas.io/"))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    assert_eq!(connectors_annotations(&printed), connectors_annotations(&dry));
    let env = |pod: &k8s_openapi::api::core::v1::Pod| pod.spec.as_ref().unwrap().containers[0].env.clone();
    assert_eq!(env(&printed), env(&dry));

    // A pod the webhook would deny: exit code 3, with the webhook's reason.
    let (status, stdout, stderr) = support::run(
        &["mutate", "--kubeconfig", kubeconfig, "-f", "-"],
        Some(&pod("missing", "nope")),
        support::root(),
    );
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stdout.is_empty());
    assert!(stderr.contains("connector denied/nope does not exist"), "{stderr}");
}

const USER: &str = "robot$e2e";
const PASSWORD: &str = "only-the-secret-knows-7c1e";

/// `GET` of a manifest through the proxy's reverse door with `token`; the
/// status.
async fn manifest_status(proxy: u16, namespace: &str, connector: &str, token: &str) -> u16 {
    let url = format!("http://127.0.0.1:{proxy}/v2/namespaces/{namespace}/connectors/{connector}/lab/app/manifests/v1");
    reqwest::Client::new()
        .get(url)
        .basic_auth("caller", Some(token))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("the proxy answers")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_service_account_tokens_push_and_pull_through_the_proxy_and_no_other_token_does() {
    use testing::{CopyOptions, OciLayout, Registry, RegistryAccess, RegistryOptions, Skopeo};
    let cluster = cluster();
    let client = cluster.admin().await;
    let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD))
        .await
        .unwrap();
    let ns = "identity";
    namespace(&client, ns).await;
    robot_connector(cluster, ns, "reg", &format!("http://{}", registry.host_port()));
    cluster.service_accounts(ns, &[("builder", true), ("stranger", false), ("shortlived", true)]);
    let token = |account: &str, audience: Option<&str>| {
        let mut args = vec!["create", "token", account, "-n", ns, "--duration", "1h"];
        if let Some(audience) = audience {
            args.extend(["--audience", audience]);
        }
        cluster.kubectl_ok(&args, None).trim().to_owned()
    };
    let builder = token("builder", Some("connectors-proxy"));
    let proxy = cluster.component_port("connectors-proxy", "http");

    // Push and pull with the builder's real token: the password never
    // leaves the Secret.
    let dir = tempfile::tempdir().unwrap();
    let layout = OciLayout::new(dir.path()).unwrap();
    let image = layout.add_image("v1", &[4096, 256 * 1024], 3).unwrap();
    let reference = format!("docker://127.0.0.1:{proxy}/namespaces/{ns}/connectors/reg/lab/app:v1");
    let caller = RegistryAccess::plain_http().creds("builder", &builder);
    let skopeo = Skopeo::new().unwrap();
    skopeo
        .copy(
            &layout.reference("v1"),
            &reference,
            &CopyOptions::default().dest(caller.clone()),
        )
        .await
        .unwrap();
    assert_eq!(
        registry.manifest_digest("lab/app", "v1").await.unwrap(),
        image.manifest.digest
    );
    let pulled = OciLayout::new(&dir.path().join("pulled")).unwrap();
    skopeo
        .copy(&reference, &pulled.reference("v1"), &CopyOptions::default().src(caller))
        .await
        .unwrap();
    for layer in &image.layers {
        assert_eq!(
            testing::sha256_file(&pulled.blob_path(&layer.digest))
                .unwrap()
                .to_string(),
            layer.digest
        );
    }
    assert_eq!(manifest_status(proxy, ns, "reg", &builder).await, 200);
    // Only in the namespace its RoleBinding is in.
    namespace(&client, "identity-other").await;
    let spec = with_secret(&format!("http://{}", registry.host_port()), "robot");
    cluster.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&support::connector_yaml("identity-other", "reg", &spec)),
    );
    assert_eq!(
        manifest_status(proxy, "identity-other", "reg", &builder).await,
        403,
        "another namespace"
    );

    // Refused: another audience, an expired token signed by the cluster's
    // key, a ServiceAccount without the RoleBinding, one that was deleted.
    let api_audience = token("builder", None);
    assert_eq!(
        manifest_status(proxy, ns, "reg", &api_audience).await,
        401,
        "the API server's audience"
    );
    let expired = cluster.expired_service_account_token(ns, "builder", "connectors-proxy");
    assert_eq!(manifest_status(proxy, ns, "reg", &expired).await, 401, "expired");
    let stranger = token("stranger", Some("connectors-proxy"));
    assert_eq!(
        manifest_status(proxy, ns, "reg", &stranger).await,
        403,
        "no RoleBinding"
    );
    let shortlived = token("shortlived", Some("connectors-proxy"));
    cluster.kubectl_ok(&["delete", "serviceaccount", "shortlived", "-n", ns], None);
    assert_eq!(
        manifest_status(proxy, ns, "reg", &shortlived).await,
        401,
        "deleted ServiceAccount"
    );
}

/// The condition `kind` of Connector `namespace/name` once it has `status`
/// (and `reason`, if given), within 60 s.
async fn wait_condition(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    kind: &str,
    status: &str,
    reason: Option<&str>,
) -> Connector {
    let api: Api<Connector> = Api::namespaced(client.clone(), namespace);
    let what = format!("{namespace}/{name}: {kind}={status} ({reason:?})");
    eventually(&what, MINUTE, || async {
        let connector = api.get(name).await.unwrap();
        let found = connector.status.as_ref().and_then(|s| {
            s.conditions.iter().find(|c| {
                c.type_ == kind && c.status == status && reason.is_none_or(|r| c.reason.as_deref() == Some(r))
            })
        });
        match found {
            Some(_) => Ok(connector),
            None => Err(format!("{:?}", connector.status)),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_reports_real_probes_of_htpasswd_and_token_registries() {
    use testing::{Registry, RegistryOptions, TokenServer, TokenServerOptions};
    let cluster = cluster();
    let client = cluster.admin().await;
    let htpasswd = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD))
        .await
        .unwrap();
    let tokens = TokenServer::start(TokenServerOptions::with_user(USER, PASSWORD)).unwrap();
    let token = Registry::start(RegistryOptions::token(&tokens)).await.unwrap();
    let ns = "probes";
    namespace(&client, ns).await;
    for (secret, password) in [("good", PASSWORD), ("bad", "not-the-password")] {
        basic_auth_secret(cluster, ns, secret, password);
    }
    for (name, registry, secret) in [
        ("htpasswd-good", &htpasswd, "good"),
        ("htpasswd-bad", &htpasswd, "bad"),
        ("token-good", &token, "good"),
        ("token-bad", &token, "bad"),
    ] {
        let spec = with_secret(&registry.url(), secret);
        cluster.kubectl_ok(&["apply", "-f", "-"], Some(&support::connector_yaml(ns, name, &spec)));
    }
    for name in ["htpasswd-good", "token-good"] {
        let ready = wait_condition(&client, ns, name, "Ready", "True", None).await;
        let status = ready.status.unwrap();
        assert_eq!(
            status.proxy.and_then(|p| p.http_address).map(|a| a.url).as_deref(),
            Some(format!("http://c-{name}.{ns}.svc.cluster.local").as_str()),
            "{name}"
        );
    }
    for name in ["htpasswd-bad", "token-bad"] {
        let bad = wait_condition(&client, ns, name, "AuthReady", "False", Some("Unauthorized")).await;
        let text = serde_json::to_string(&bad.status).unwrap();
        assert!(
            !text.contains(USER) && !text.contains("not-the-password"),
            "{name}: {text}"
        );
    }
    // Events on the Connectors, as the controller's RBAC allows.
    let events = cluster.kubectl_ok(
        &[
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            "involvedObject.name=htpasswd-bad",
            "-o",
            "json",
        ],
        None,
    );
    assert!(events.contains("Unauthorized"), "{events}");
}

/// The holder of the controller's Lease, once there is one (60 s).
async fn lease_holder(client: &kube::Client, other_than: Option<&str>) -> String {
    use k8s_openapi::api::coordination::v1::Lease;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "connectors-system");
    eventually(&format!("a lease holder other than {other_than:?}"), MINUTE, || async {
        let holder = leases
            .get_opt("connectors-controller")
            .await
            .unwrap()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity);
        holder
            .clone()
            .filter(|h| Some(h.as_str()) != other_than)
            .ok_or(format!("held by {holder:?}"))
    })
    .await
}

/// The pid file of controller replica `holder` (`connectors-controller-local-i`:
/// `connectors-controller` for 0, `connectors-controller-i` otherwise).
fn replica_pid_file(cluster: &RealCluster, holder: &str) -> std::path::PathBuf {
    let name = match holder.rsplit('-').next().unwrap() {
        "0" => "connectors-controller".to_owned(),
        i => format!("connectors-controller-{i}"),
    };
    cluster.dir.join("pids").join(format!("{name}.pid"))
}

/// Ends controller replica `holder` with `signal` as if its pod were gone:
/// its pid file goes first, so e2e/run-deployments does not restart it.
fn end_replica(cluster: &RealCluster, holder: &str, signal: &str) -> std::path::PathBuf {
    let pid_file = replica_pid_file(cluster, holder);
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    std::fs::remove_file(&pid_file).unwrap();
    let sent = std::process::Command::new("kill")
        .args([signal, pid.trim()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill {signal} {pid}");
    pid_file
}

/// Brings an ended replica back, as its Deployment would with a new pod.
async fn recreate_replica(pid_file: &std::path::Path) {
    std::fs::write(pid_file, "gone").unwrap();
    let what = format!("{} started again", pid_file.display());
    eventually(&what, HALF_MINUTE, || async {
        let started = std::fs::read_to_string(pid_file).unwrap_or_default() != "gone";
        if started { Ok(()) } else { Err("not yet".to_owned()) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_controller_takes_the_lease_after_a_crash_and_at_once_after_a_clean_stop() {
    let cluster = cluster();
    let client = cluster.admin().await;
    let leader = lease_holder(&client, None).await;
    // A crash (the pod gone with no chance to release the lease): the other
    // replica waits out the lease's 15 s.
    let crashed = end_replica(cluster, &leader, "-KILL");
    let killed_at = std::time::Instant::now();
    let successor = lease_holder(&client, Some(&leader)).await;
    let took = killed_at.elapsed();
    eprintln!("lease: {successor} took over from {leader} {took:?} after a crash");
    assert!(successor.starts_with("connectors-controller-local-"), "{successor}");
    assert!(took < std::time::Duration::from_secs(30), "took {took:?}");
    // The successor writes status.
    let ns = "succession";
    namespace(&client, ns).await;
    let spec = format!("{{connectorClassName: oci, address: \"http://{REGISTRY}\"}}");
    cluster.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&support::connector_yaml(ns, "after", &spec)),
    );
    wait_condition(&client, ns, "after", "LivenessReady", "False", None).await;

    // The crashed replica comes back; a clean stop (SIGTERM) of the leader
    // releases the lease, and the other takes it within seconds.
    recreate_replica(&crashed).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let stopped = end_replica(cluster, &successor, "-TERM");
    let stopped_at = std::time::Instant::now();
    let next = lease_holder(&client, Some(&successor)).await;
    let took = stopped_at.elapsed();
    eprintln!("lease: {next} took over from {successor} {took:?} after a clean stop");
    assert!(
        took < std::time::Duration::from_secs(8),
        "a released lease took {took:?}"
    );
    recreate_replica(&stopped).await;
}

/// The leaf certificate the webhook serves now (DER).
async fn served_webhook_certificate(cluster: &RealCluster, ca_pem: &str) -> Vec<u8> {
    let roots = certs::root_store_from_pem(ca_pem).unwrap();
    let config = certs::client_config(roots, &[b"http/1.1"]).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let port = cluster.component_port("connectors-webhook", "https");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .expect("the webhook's chain verifies");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_certificate_rotates_with_no_failed_admission() {
    use k8s_openapi::api::core::v1::{Pod, Secret};
    let cluster = cluster();
    let client = cluster.admin().await;
    let ns = "rotation";
    namespace_with_connector(cluster, &client, ns, true).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "connectors-system");
    let leaf = |secret: &Secret| {
        let pem = &secret.data.as_ref().unwrap()["tls.crt"].0;
        certs::load_certs_pem(std::str::from_utf8(pem).unwrap()).unwrap()[0].to_vec()
    };
    let ca = secrets.get("connectors-webhook-ca").await.unwrap();
    let ca_pem = String::from_utf8(ca.data.as_ref().unwrap()["tls.crt"].0.clone()).unwrap();
    let before = leaf(&secrets.get("connectors-webhook-tls").await.unwrap());
    assert_eq!(served_webhook_certificate(cluster, &ca_pem).await, before);

    // Pods are created one after another until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let creator = tokio::spawn({
        let (client, stop) = (client.clone(), stop.clone());
        async move {
            let pods: Api<Pod> = Api::namespaced(client, ns);
            let (mut created, mut failed) = (0, Vec::new());
            for i in 0..400 {
                if stop.load(std::sync::atomic::Ordering::Acquire) {
                    break;
                }
                let pod: Pod = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("p-{i}"), "labels": {"case": "rotation"}},
                    "spec": {"containers": [{"name": "app", "image": format!("{REGISTRY}/team/app:1")}]},
                }))
                .unwrap();
                match pods.create(&PostParams::default(), &pod).await {
                    Ok(_) => created += 1,
                    Err(error) => failed.push(error.to_string()),
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            (created, failed)
        }
    });
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    // Rotation: the Secret goes; the controller issues a new certificate
    // from the same CA, the volume is refreshed, the webhook reloads it.
    secrets
        .delete("connectors-webhook-tls", &Default::default())
        .await
        .unwrap();
    let after = eventually("the certificate issued again", MINUTE, || async {
        let secret = secrets.get_opt("connectors-webhook-tls").await.unwrap();
        secret.map(|s| leaf(&s)).ok_or("no Secret".to_owned())
    })
    .await;
    assert_ne!(after, before);
    eventually("the webhook serving the new certificate", MINUTE, || async {
        let served = served_webhook_certificate(cluster, &ca_pem).await == after;
        if served { Ok(()) } else { Err("the old one".to_owned()) }
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let (created, failed) = creator.await.unwrap();
    assert!(failed.is_empty(), "{} admissions failed: {failed:?}", failed.len());
    assert!(created >= 20, "only {created} pods were created");
    let mutated = pods(&client, ns, "case=rotation", created).await;
    for pod in mutated {
        assert_eq!(image_of(&pod), rewritten(ns, "team/app:1"), "{:?}", pod.metadata.name);
    }
    eprintln!("rotation: {created} pods admitted, none failed");
}

/// The Events about Connector `name` in `namespace`, as JSON text.
fn events_about(cluster: &RealCluster, namespace: &str, name: &str) -> String {
    cluster.kubectl_ok(
        &[
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            &format!("involvedObject.name={name}"),
            "-o",
            "json",
        ],
        None,
    )
}

/// Every log line the product's processes wrote so far.
fn product_logs(cluster: &RealCluster) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(cluster.dir.join("logs")).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("connectors-") {
            text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    text
}

/// Creates the basic-auth Secret `name` in `namespace`, or replaces it.
fn basic_auth_secret(cluster: &RealCluster, namespace: &str, name: &str, password: &str) {
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\ntype: kubernetes.io/basic-auth\nstringData: {{username: \"{USER}\", password: \"{password}\"}}\n"
    );
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&secret));
}

fn condition_of<'a>(connector: &'a Connector, kind: &str) -> &'a connector::crd::Condition {
    connector
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == kind))
        .unwrap_or_else(|| panic!("no {kind} condition: {:?}", connector.status))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_connector_gets_every_condition_its_proxy_address_ca_and_a_ready_event() {
    use testing::{Registry, RegistryOptions};
    let cluster = cluster();
    let client = cluster.admin().await;
    let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD))
        .await
        .unwrap();
    let ns = "healthy";
    namespace(&client, ns).await;
    robot_connector(cluster, ns, "registry", &registry.url());
    let ready = wait_condition(&client, ns, "registry", "Ready", "True", Some("Ready")).await;
    for (kind, reason) in [
        ("SecretReady", "SecretValid"),
        ("LivenessReady", "Alive"),
        ("AuthReady", "Authenticated"),
    ] {
        let found = condition_of(&ready, kind);
        assert_eq!(
            (found.status.as_str(), found.reason.as_deref()),
            ("True", Some(reason)),
            "{kind}"
        );
        assert!(
            found.last_transition_time.is_some() && found.last_probe_time.is_some(),
            "{kind}"
        );
    }
    let status = ready.status.as_ref().unwrap();
    assert_eq!(status.observed_generation, ready.metadata.generation);
    let address = status.proxy.as_ref().unwrap().http_address.as_ref().unwrap();
    assert_eq!(address.audience.as_deref(), Some("connectors-proxy"));
    // The connector docs' address: a Service of the connector's own.
    assert_eq!(address.url, "http://c-registry.healthy.svc.cluster.local");
    let service = condition_of(&ready, "ProxyServiceReady");
    assert_eq!(
        (service.status.as_str(), service.reason.as_deref()),
        ("True", Some("ServiceReady"))
    );
    // The proxy CA the controller bootstrapped is published in the status.
    let api: Api<Connector> = Api::namespaced(client.clone(), ns);
    let ca = eventually("CACerts in the status", MINUTE, || async {
        let connector = api.get("registry").await.unwrap();
        let ca = connector.status.clone().and_then(|s| s.proxy?.http_address?.ca_certs);
        ca.ok_or(format!("{:?}", connector.status))
    })
    .await;
    certs::load_certs_pem(&ca).expect("CACerts is PEM");
    let events = eventually("a Ready event", MINUTE, || async {
        let events = events_about(cluster, ns, "registry");
        if events.contains("\"reason\": \"Ready\"") {
            Ok(events)
        } else {
            Err(events)
        }
    })
    .await;
    // Whoever reads the Connector reads its status: not even the robot's
    // name is there, nor in the Events or the logs.
    let status = serde_json::to_string(&api.get("registry").await.unwrap().status).unwrap();
    for (text, what) in [
        (&status, "the status"),
        (&events, "the events"),
        (&product_logs(cluster), "the logs"),
    ] {
        testing::credentials::assert_no_credential(text, what, USER, PASSWORD);
    }
    assert!(!status.contains(USER), "the status names the robot: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connector_gets_a_service_of_its_own_unless_the_name_is_taken_and_it_goes_with_the_connector() {
    use k8s_openapi::api::core::v1::Service;
    use testing::{Registry, RegistryOptions};
    let cluster = cluster();
    let client = cluster.admin().await;
    let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD))
        .await
        .unwrap();
    let ns = "own-services";
    namespace(&client, ns).await;
    // A user's Service that happens to have the name the connector `taken`
    // would get.
    let theirs = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: c-taken, namespace: {ns}}}\nspec: {{ports: [{{port: 8080}}], selector: {{app: theirs}}}}\n"
    );
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&theirs));
    robot_connector(cluster, ns, "taken", &registry.url());
    robot_connector(cluster, ns, "mine", &registry.url());

    let mine = wait_condition(&client, ns, "mine", "ProxyServiceReady", "True", Some("ServiceReady")).await;
    let url = mine.status.and_then(|s| s.proxy?.http_address).map(|a| a.url);
    assert_eq!(url.as_deref(), Some("http://c-mine.own-services.svc.cluster.local"));
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let service = services.get("c-mine").await.unwrap();
    let spec = service.spec.as_ref().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("ExternalName"));
    assert_eq!(
        spec.external_name.as_deref(),
        Some("connectors-proxy.connectors-system.svc.cluster.local")
    );
    let owner = &service.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Connector", mine.metadata.uid.as_deref().unwrap())
    );

    let taken = wait_condition(
        &client,
        ns,
        "taken",
        "ProxyServiceReady",
        "False",
        Some("ServiceConflict"),
    )
    .await;
    let url = taken.status.and_then(|s| s.proxy?.http_address).map(|a| a.url);
    assert_eq!(
        url.as_deref(),
        Some("http://connectors-proxy.connectors-system.svc/namespaces/own-services/connectors/taken"),
        "the shared address while the name is taken"
    );
    let untouched = services.get("c-taken").await.unwrap();
    assert_eq!(untouched.spec.as_ref().unwrap().type_.as_deref(), Some("ClusterIP"));
    assert!(
        untouched.metadata.owner_references.is_none(),
        "the user's Service was changed"
    );
    wait_condition(&client, ns, "taken", "Ready", "True", None).await;

    // The Service goes with its connector (the garbage collector).
    let connectors: Api<Connector> = Api::namespaced(client.clone(), ns);
    connectors.delete("mine", &Default::default()).await.unwrap();
    eventually("c-mine deleted with its connector", MINUTE, || async {
        match services.get_opt("c-mine").await.unwrap() {
            None => Ok(()),
            Some(_) => Err("still there".to_owned()),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_secret_is_reported_until_it_is_fixed_and_a_new_generation_is_observed() {
    use testing::{Registry, RegistryOptions};
    let cluster = cluster();
    let client = cluster.admin().await;
    let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD))
        .await
        .unwrap();
    let ns = "fixing";
    namespace(&client, ns).await;
    let wrong = "wrong-Passw0rd";
    basic_auth_secret(cluster, ns, "wrong", wrong);
    cluster.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&support::connector_yaml(
            ns,
            "wrong",
            &with_secret(&registry.url(), "wrong"),
        )),
    );
    cluster.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&support::connector_yaml(
            ns,
            "missing",
            &with_secret(&registry.url(), "later"),
        )),
    );
    // A registry that is not there yet: a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    basic_auth_secret(cluster, ns, "robot", PASSWORD);
    cluster.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&support::connector_yaml(
            ns,
            "moving",
            &with_secret(&format!("http://127.0.0.1:{port}"), "robot"),
        )),
    );

    wait_condition(&client, ns, "wrong", "AuthReady", "False", Some("Unauthorized")).await;
    let missing = wait_condition(&client, ns, "missing", "SecretReady", "False", Some("SecretNotFound")).await;
    assert_eq!(condition_of(&missing, "LivenessReady").status, "True");
    assert_eq!(
        condition_of(&missing, "Ready").reason.as_deref(),
        Some("SecretNotFound")
    );
    let unreachable = wait_condition(&client, ns, "moving", "LivenessReady", "False", Some("Unreachable")).await;
    assert_eq!(unreachable.status.as_ref().unwrap().observed_generation, Some(1));
    assert!(events_about(cluster, ns, "wrong").contains("Unauthorized"));

    // Fixed: the right password, the Secret created, the address moved to
    // the registry. Each is probed at once (failed probes back off 10 s
    // and more), and the new generation is observed.
    let fixed_at = std::time::Instant::now();
    basic_auth_secret(cluster, ns, "wrong", PASSWORD);
    basic_auth_secret(cluster, ns, "later", PASSWORD);
    cluster.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&support::connector_yaml(
            ns,
            "moving",
            &with_secret(&registry.url(), "robot"),
        )),
    );
    for name in ["wrong", "missing", "moving"] {
        wait_condition(&client, ns, name, "Ready", "True", Some("Ready")).await;
    }
    assert!(
        fixed_at.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        fixed_at.elapsed()
    );
    let moved = wait_condition(&client, ns, "moving", "Ready", "True", None).await;
    assert_eq!(moved.metadata.generation, Some(2));
    assert_eq!(moved.status.as_ref().unwrap().observed_generation, Some(2));
    let logs = product_logs(cluster);
    for password in [wrong, PASSWORD] {
        testing::credentials::assert_no_credential(&logs, "the logs", USER, password);
        testing::credentials::assert_no_credential(&events_about(cluster, ns, "wrong"), "the events", USER, password);
    }
}

/// `GET` of `lab/app:v1`'s manifest through the proxy from `source`, with no
/// token: the status.
async fn manifest_status_from(source: std::net::IpAddr, proxy: u16, namespace: &str) -> u16 {
    let url = format!("http://127.0.0.1:{proxy}/v2/namespaces/{namespace}/connectors/reg/lab/app/manifests/v1");
    reqwest::Client::builder()
        .local_address(source)
        .build()
        .unwrap()
        .get(url)
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("the proxy answers")
        .status()
        .as_u16()
}

/// Waits up to 30 s for `source`'s GET to answer `want` (the proxy learns
/// of pods through its watch).
async fn eventually_status(source: &str, proxy: u16, namespace: &str, want: u16) {
    let source: std::net::IpAddr = source.parse().unwrap();
    eventually(&format!("{source}: {want}"), HALF_MINUTE, || async {
        let got = manifest_status_from(source, proxy, namespace).await;
        if got == want { Ok(()) } else { Err(format!("{got}")) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_pods_are_identified_by_their_address_as_the_api_server_reports_it() {
    use testing::{CopyOptions, OciLayout, Registry, RegistryAccess, RegistryOptions, Skopeo};
    let cluster = cluster();
    let client = cluster.admin().await;
    let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = OciLayout::new(dir.path()).unwrap();
    layout.add_image("v1", &[4096], 5).unwrap();
    Skopeo::new()
        .unwrap()
        .copy(
            &layout.reference("v1"),
            &registry.docker_reference("lab/app:v1"),
            &CopyOptions::default().dest(RegistryAccess::plain_http().creds(USER, PASSWORD)),
        )
        .await
        .unwrap();
    let ns = "podip";
    namespace(&client, ns).await;
    cluster.kubectl_ok(
        &["label", "namespace", ns, "connectors.cpaas.io/proxy-inject=true"],
        None,
    );
    robot_connector(cluster, ns, "reg", &registry.url());
    cluster.service_accounts(ns, &[("builder", true), ("stranger", false)]);
    // Pods as a kubelet would report them: running, at these addresses.
    for (name, account, host_network, ip) in [
        ("job", "builder", false, "127.0.0.21"),
        ("host", "builder", true, "127.0.0.22"),
        ("stranger", "stranger", false, "127.0.0.23"),
        ("twin-a", "builder", false, "127.0.0.24"),
        ("twin-b", "builder", false, "127.0.0.24"),
        ("last", "builder", false, "127.0.0.25"),
    ] {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  serviceAccountName: {account}\n  hostNetwork: {host_network}\n  containers: [{{name: app, image: \"{REGISTRY}/team/app:1\"}}]\n"
        );
        cluster.kubectl_ok(&["apply", "-f", "-"], Some(&pod));
        let status = format!(r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}]}}}}"#);
        cluster.kubectl_ok(
            &[
                "patch",
                "pod",
                name,
                "-n",
                ns,
                "--subresource",
                "status",
                "--type",
                "merge",
                "-p",
                &status,
            ],
            None,
        );
    }
    let proxy = cluster.component_port("connectors-proxy", "http");
    // The running injected pod of a bound ServiceAccount: no token needed.
    eventually_status("127.0.0.21", proxy, ns, 200).await;
    // A pod of an unbound ServiceAccount is identified, and RBAC refuses it.
    eventually_status("127.0.0.23", proxy, ns, 403).await;
    // A hostNetwork pod shares its node's address: never an identity.
    assert_eq!(
        manifest_status_from("127.0.0.22".parse().unwrap(), proxy, ns).await,
        401
    );
    // Once the last pod is seen, so are all before it (one watch, in order).
    eventually_status("127.0.0.25", proxy, ns, 200).await;
    // An address two pods claim identifies neither, until one is gone.
    assert_eq!(
        manifest_status_from("127.0.0.24".parse().unwrap(), proxy, ns).await,
        401
    );
    cluster.kubectl_ok(
        &["delete", "pod", "twin-b", "-n", ns, "--grace-period", "0", "--force"],
        None,
    );
    eventually_status("127.0.0.24", proxy, ns, 200).await;
    // A deleted pod's address identifies nobody.
    cluster.kubectl_ok(
        &["delete", "pod", "job", "-n", ns, "--grace-period", "0", "--force"],
        None,
    );
    eventually_status("127.0.0.21", proxy, ns, 401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csi_mount_needs_rbac_on_each_connector_it_names() {
    use csi::proto::node_client::NodeClient;
    let cluster = cluster();
    let client = cluster.admin().await;
    let ns = "csi-team";
    namespace(&client, ns).await;
    let spec = "{connectorClassName: oci, address: \"https://127.0.0.2:5443\"}";
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&support::connector_yaml(ns, "lab", spec)));
    cluster.service_accounts(ns, &[("builder", true), ("intruder", false)]);
    // The plugin as its DaemonSet runs it: the connectors-csi
    // ServiceAccount's token, the proxy CA the controller publishes.
    let dir = tempfile::tempdir().unwrap();
    let ca = cluster.kubectl_ok(
        &[
            "get",
            "configmap",
            "connectors-proxy-ca",
            "-n",
            "connectors-csi",
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ],
        None,
    );
    let ca_path = dir.path().join("ca.crt");
    std::fs::write(&ca_path, ca).unwrap();
    let kubeconfig = cluster.service_account_kubeconfig("connectors-csi", "connectors-csi");
    let socket = dir.path().join("csi.sock");
    let endpoint = format!("unix://{}", socket.display());
    let plugin = support::Process::start_until_with_env(
        &[
            "csi",
            "--endpoint",
            &endpoint,
            "--node-id",
            "node-a",
            "--proxy-ca",
            ca_path.to_str().unwrap(),
            "--proxy-address",
            "proxy.test",
        ],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
        "csi listening",
    );
    let channel = csi::client::connect_unix(socket, std::time::Duration::from_secs(20))
        .await
        .unwrap();
    let mut node = NodeClient::new(channel);
    let token = cluster.kubectl_ok(
        &["create", "token", "builder", "-n", ns, "--audience", "connectors-proxy"],
        None,
    );
    let token = token.trim();

    // The connector arrives through the watch; then the mount succeeds.
    let target = dir.path().join("pods/builder-0/mount");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let request = support::csi::publish_request(&target, token, (ns, "builder-0", "builder"), "lab");
    eventually("the mount", HALF_MINUTE, || {
        let (mut node, request) = (node.clone(), request.clone());
        async move {
            node.node_publish_volume(request)
                .await
                .map_err(|status| format!("{status:?}"))
        }
    })
    .await;
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(target.join("config.json")).unwrap()).unwrap();
    assert!(config["auths"]["proxy.test"]["auth"].is_string(), "{config}");

    // Another ServiceAccount of the namespace, without a RoleBinding: the
    // real SubjectAccessReview refuses it.
    let denied = dir.path().join("pods/intruder-0/mount");
    std::fs::create_dir_all(denied.parent().unwrap()).unwrap();
    let request = support::csi::publish_request(&denied, token, (ns, "intruder-0", "intruder"), "lab");
    let refused = node.node_publish_volume(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("csi-team/lab"), "{}", refused.message());
    assert!(!denied.join("config.json").exists());
    assert!(!plugin.log_text().contains(token), "the plugin logged a token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_expiry_serving_certificate_is_replaced_and_its_ca_kept() {
    use certs::{CertificateAuthority, CertificateSummary};
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    let cluster = cluster();
    let client = cluster.admin().await;
    let secrets: Api<Secret> = Api::namespaced(client, "connectors-system");
    let text = |secret: &Secret, key: &str| String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap();
    let ca_secret = secrets.get("connectors-proxy-ca").await.unwrap();
    let ca = CertificateAuthority::from_pem(&text(&ca_secret, "tls.crt"), &text(&ca_secret, "tls.key")).unwrap();
    // The proxy's HTTPS certificate, issued again by its CA for the same
    // names but for ten minutes: past two thirds of its life at once.
    let mut serving = secrets.get("connectors-proxy-tls").await.unwrap();
    let names = CertificateSummary::from_pem(&text(&serving, "tls.crt")).unwrap();
    let short = ca
        .issue_serving(
            &names.dns_names,
            &names.ip_addresses,
            std::time::Duration::from_secs(600),
        )
        .unwrap();
    let data = serving.data.get_or_insert_default();
    data.insert("tls.crt".into(), ByteString(short.cert_pem.clone().into_bytes()));
    data.insert("tls.key".into(), ByteString(short.key_pem.clone().into_bytes()));
    secrets
        .replace("connectors-proxy-tls", &PostParams::default(), &serving)
        .await
        .unwrap();

    let renewed = eventually("the near-expiry certificate replaced", MINUTE, || async {
        let current = text(&secrets.get("connectors-proxy-tls").await.unwrap(), "tls.crt");
        if current != short.cert_pem {
            Ok(current)
        } else {
            Err("still the short one".to_owned())
        }
    })
    .await;
    let summary = CertificateSummary::from_pem(&renewed).unwrap();
    let now = std::time::SystemTime::now();
    assert!(!summary.due_for_renewal(now));
    assert!(summary.remaining(now) > std::time::Duration::from_secs(300 * 24 * 3600));
    assert_eq!(
        (summary.dns_names, summary.ip_addresses),
        (names.dns_names, names.ip_addresses)
    );
    certs::verify_serving_chain(&renewed, ca.cert_pem(), "connectors-proxy.connectors-system.svc").unwrap();
    let kept = secrets.get("connectors-proxy-ca").await.unwrap();
    assert_eq!(
        kept.metadata.resource_version, ca_secret.metadata.resource_version,
        "the CA was kept"
    );
}
