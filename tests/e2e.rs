//! The product against a REAL control plane (`e2e/cluster`: etcd,
//! kube-apiserver, kube-controller-manager and kube-scheduler of one
//! Kubernetes release, built from its Go modules, on loopback), installed
//! from `manifests/` as a user installs it. One cluster serves every test
//! here; each test works in namespaces of its own.

use connector::Connector;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;
use testing::cluster::RealCluster;

/// Creates namespace `name` with the admin client.
async fn namespace(client: &kube::Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let object: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    namespaces.create(&PostParams::default(), &object).await.unwrap();
}

fn connector_yaml(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: connectors.alauda.io/v1alpha1\nkind: Connector\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_connector_applies_unchanged_to_the_installed_crd() {
    let cluster = RealCluster::shared();
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
    let connectors: Api<Connector> = Api::namespaced(client, "seed");
    let stored = connectors.get("harbor-connector").await.unwrap();
    assert_eq!(stored.spec.connector_class_name, "harbor");
    assert_eq!(stored.spec.address, "https://harbor.example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_connectors_are_refused_by_the_api_server_with_the_reason() {
    let cluster = RealCluster::shared();
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
        let output = cluster.kubectl(&["apply", "-f", "-"], Some(&connector_yaml("invalid", "bad", spec)));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "accepted: {spec}");
        assert!(stderr.contains(reason), "{spec}: {stderr}");
    }
    // A valid one with every field is accepted.
    let valid = "{connectorClassName: oci, address: \"https://r.example.com/prefix\", auth: {name: tokenAuth, secretRef: {name: robot}}, addressExtensions: [{name: realm, value: \"https://auth.example.com/token\"}]}";
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&connector_yaml("invalid", "good", valid)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_roles_let_only_bound_service_accounts_use_a_connector() {
    let cluster = RealCluster::shared();
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
