//! The product against the OLDEST Kubernetes release it supports (v1.34,
//! the harness of e2e/min/go.mod; tests/e2e.rs runs the newest, v1.36): the
//! CRDs and their validation, admission, the controller's status and the
//! proxy's TokenReview and SubjectAccessReview, each with the release's
//! own API server. The supported range is what these two files run.

mod support;

use connector::Connector;
use kube::Api;
use testing::cluster::RealCluster;
use testing::{CopyOptions, OciLayout, Registry, RegistryAccess, RegistryOptions, Skopeo};

const USER: &str = "robot$min";
const PASSWORD: &str = "oldest-release-s3cret";

/// The shared cluster of the oldest supported release.
fn cluster() -> &'static RealCluster {
    RealCluster::oldest_supported(std::path::Path::new(env!("CARGO_BIN_EXE_connectors")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_release_serves_the_crds_with_their_validation_and_the_seed_connector() {
    let cluster = cluster();
    let version = cluster.kubectl_ok(&["version", "-o", "json"], None);
    let version: serde_json::Value = serde_json::from_str(&version).unwrap();
    assert_eq!(version["serverVersion"]["minor"], "34", "{version}");

    cluster.kubectl_ok(&["create", "namespace", "min-seed"], None);
    let seed = include_str!("fixtures/seeds/harbor-connector.yaml");
    let applied = cluster.kubectl_ok(&["apply", "-n", "min-seed", "-f", "-"], Some(seed));
    assert!(applied.contains("harbor-connector created"), "{applied}");
    let listed = cluster.kubectl_ok(&["get", "conn", "-n", "min-seed"], None);
    for column in ["NAME", "CLASS", "ADDRESS", "READY", "REASON", "AGE"] {
        assert!(listed.contains(column), "{listed}");
    }
    // NB: gone at once, so no probe looks the name up.
    cluster.kubectl_ok(&["delete", "-n", "min-seed", "connector", "harbor-connector"], None);

    // The CEL rules and list-map keys of the CRD.
    for (spec, reason) in [
        (
            "{connectorClassName: oci, address: \"ftp://registry.example.com\"}",
            "address must be an http or https URL with a host",
        ),
        (
            "{connectorClassName: oci, address: \"https://r.example.com\", addressExtensions: [{name: realm, value: \"https://a.example.com\"}, {name: realm, value: \"https://b.example.com\"}]}",
            "addressExtensions names must be unique",
        ),
        (
            "{connectorClassName: harbor, address: \"https://harbor.example.com\", auth: {name: oauth}}",
            "Unsupported value: \"oauth\"",
        ),
    ] {
        support::assert_connector_refused(cluster, "min-seed", spec, reason);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_oldest_release_pods_are_mutated_connectors_probed_and_tokens_reviewed() {
    let cluster = cluster();
    let client = cluster.admin().await;
    let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD))
        .await
        .unwrap();
    let ns = "min-team";
    cluster.kubectl_ok(&["create", "namespace", ns], None);
    cluster.kubectl_ok(
        &["label", "namespace", ns, "connectors.cpaas.io/proxy-inject=true"],
        None,
    );
    cluster.kubectl_ok(
        &[
            "create",
            "secret",
            "generic",
            "robot",
            "-n",
            ns,
            "--type=kubernetes.io/basic-auth",
            &format!("--from-literal=username={USER}"),
            &format!("--from-literal=password={PASSWORD}"),
        ],
        None,
    );
    let spec = format!(
        "{{connectorClassName: oci, address: \"http://{}\", auth: {{name: basicAuth, secretRef: {{name: robot}}}}}}",
        registry.host_port()
    );
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&support::connector_yaml(ns, "reg", &spec)));

    // The controller probes the registry and writes the status.
    let connectors: Api<Connector> = Api::namespaced(client.clone(), ns);
    let mut ready = false;
    for _ in 0..240 {
        let connector = connectors.get("reg").await.unwrap();
        ready = connector
            .status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(ready, "{:?}", connectors.get("reg").await.unwrap().status);

    // Admission: a pod of the opted-in namespace is stored rewritten.
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: app, namespace: {ns}}}\nspec:\n  containers: [{{name: app, image: \"{}/lab/app:v1\"}}]\n",
        registry.host_port()
    );
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&pod));
    let image = cluster.kubectl_ok(
        &[
            "get",
            "pod",
            "app",
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.containers[0].image}",
        ],
        None,
    );
    assert_eq!(
        image,
        format!("127.0.0.1:7480/namespaces/{ns}/connectors/reg/lab/app:v1")
    );

    // The proxy: a ServiceAccount bound to connectors-user pushes and
    // pulls with its own token (TokenReview, SubjectAccessReview); one
    // without the binding is refused.
    for account in ["builder", "stranger"] {
        cluster.kubectl_ok(&["create", "serviceaccount", account, "-n", ns], None);
    }
    cluster.kubectl_ok(
        &[
            "create",
            "rolebinding",
            "builder",
            "-n",
            ns,
            "--clusterrole=connectors-user",
            &format!("--serviceaccount={ns}:builder"),
        ],
        None,
    );
    let token = |account: &str| {
        cluster
            .kubectl_ok(
                &[
                    "create",
                    "token",
                    account,
                    "-n",
                    ns,
                    "--audience",
                    "connectors-proxy",
                    "--duration",
                    "1h",
                ],
                None,
            )
            .trim()
            .to_owned()
    };
    let proxy = cluster.component_port("connectors-proxy", "http");
    let dir = tempfile::tempdir().unwrap();
    let layout = OciLayout::new(dir.path()).unwrap();
    let image = layout.add_image("v1", &[4096, 64 * 1024], 5).unwrap();
    let reference = format!("docker://127.0.0.1:{proxy}/namespaces/{ns}/connectors/reg/lab/app:v1");
    let skopeo = Skopeo::new().unwrap();
    skopeo
        .copy(
            &layout.reference("v1"),
            &reference,
            &CopyOptions::default().dest(RegistryAccess::plain_http().creds("builder", &token("builder"))),
        )
        .await
        .unwrap();
    assert_eq!(
        registry.manifest_digest("lab/app", "v1").await.unwrap(),
        image.manifest.digest
    );
    let stranger = RegistryAccess::plain_http().creds("stranger", &token("stranger"));
    let refused = skopeo
        .inspect(&reference, &testing::InspectOptions::from(stranger))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("403") || refused.to_lowercase().contains("denied"),
        "{refused}"
    );
}
