//! The product on a REAL node: kubelet, containerd, runc and kube-proxy of
//! the e2e harness (`E2E_NODE=1`, see `e2e/node/node.bash`), the product
//! installed as pods from its own image (`image/build`) with
//! `kubectl apply -k` of `manifests/` and only a single-node overlay.
//! Registries run in the node's network namespace, where its pods reach
//! them; nothing leaves the machine.

use std::process::Command;
use std::time::Duration;

use testing::cluster::RealCluster;
use testing::{Registry, RegistryOptions};

const USER: &str = "robot";
const PASSWORD: &str = "node-pull-s3cret";
/// The proxy's pinned ClusterIP, the pull address of the e2e install.
const PULL_ADDRESS: &str = "10.96.100.100";

fn cluster() -> &'static RealCluster {
    RealCluster::with_node()
}

/// The product's image, which `e2e/cluster up` built.
fn product_image() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/image/connectors.oci.tar")
}

/// A registry that requires `USER`/`PASSWORD`, in the node's namespace.
async fn node_registry(cluster: &RealCluster) -> Registry {
    let netns = cluster.node_setting("netns");
    let ip = cluster.node_setting("node_ip").parse().unwrap();
    Registry::start(RegistryOptions::htpasswd(USER, PASSWORD).in_netns(&netns, ip))
        .await
        .unwrap()
}

/// Pushes the product's image with one more layer, new to the node (a file
/// of its own), to `registry` as `repository:tag`: containerd already holds
/// the product's layer (the install imported it), so kubelet must fetch
/// this one through the proxy.
fn push_image(registry: &Registry, repository: &str) {
    let work = tempfile::tempdir().unwrap();
    let stamp = work.path().join("stamp");
    std::fs::write(&stamp, format!("{repository} {:?}\n", std::time::SystemTime::now())).unwrap();
    let buildah = |args: &[&str]| {
        let output = Command::new("buildah")
            .arg("--root")
            .arg(work.path().join("root"))
            .arg("--runroot")
            .arg(work.path().join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "buildah {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let base = format!("oci-archive:{}", product_image().display());
    let container = buildah(&["from", "--quiet", &base]);
    buildah(&["copy", &container, stamp.to_str().unwrap(), "/stamp"]);
    let archive = work.path().join("image.tar");
    buildah(&[
        "commit",
        "--quiet",
        &container,
        &format!("oci-archive:{}", archive.display()),
    ]);
    let output = Command::new("skopeo")
        .args(["copy", "-q", "--dest-tls-verify=false"])
        .args(["--dest-creds", &format!("{USER}:{PASSWORD}")])
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(registry.docker_reference(repository))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// An opted-in namespace with a Connector for `registry` whose Secret
/// holds the password, and the `default` ServiceAccount bound to the
/// shipped `connectors-user` role.
fn namespace_with_connector(cluster: &RealCluster, namespace: &str, registry: &Registry) {
    let yaml = format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {namespace}, labels: {{connectors.cpaas.io/proxy-inject: "true"}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: registry-robot, namespace: {namespace}}}
type: kubernetes.io/basic-auth
stringData: {{username: "{USER}", password: "{PASSWORD}"}}
---
apiVersion: connectors.alauda.io/v1alpha1
kind: Connector
metadata: {{name: local, namespace: {namespace}}}
spec:
  connectorClassName: oci
  address: "{url}"
  auth: {{name: basicAuth, secretRef: {{name: registry-robot}}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: default-uses-connectors, namespace: {namespace}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: connectors-user}}
subjects: [{{kind: ServiceAccount, name: default, namespace: {namespace}}}]
"#,
        url = registry.url()
    );
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&yaml));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csi_plugin_registers_with_kubelet_by_itself() {
    let cluster = cluster();
    let mut drivers = String::new();
    for _ in 0..60 {
        drivers = cluster.kubectl_ok(
            &["get", "csinode", "e2e-node", "-o", "jsonpath={.spec.drivers[*].name}"],
            None,
        );
        if drivers.contains("connectors-csi") {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        drivers, "connectors-csi",
        "kubelet lists the driver in the node's CSINode"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_pulls_an_unchanged_jobs_image_through_the_proxy_and_the_password_stays_in_the_connector() {
    let cluster = cluster();
    let registry = node_registry(cluster).await;
    push_image(&registry, "demo/connectors:v0.2.0");
    let digest = registry.manifest_digest("demo/connectors", "v0.2.0").await.unwrap();
    let namespace = "node-pulls";
    namespace_with_connector(cluster, namespace, &registry);

    // An unchanged Job: the image names the registry itself.
    let job = format!(
        r#"apiVersion: batch/v1
kind: Job
metadata: {{name: version, namespace: {namespace}}}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: version
          image: {registry}/demo/connectors:v0.2.0
          args: ["--version"]
"#,
        registry = registry.host_port()
    );
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&job));
    let waited = cluster.kubectl(
        &[
            "-n",
            namespace,
            "wait",
            "--for=condition=Complete",
            "job/version",
            "--timeout=120s",
        ],
        None,
    );
    let events = cluster.kubectl_ok(&["-n", namespace, "get", "events", "-o", "wide"], None);
    assert!(
        waited.status.success(),
        "the Job completes: {}\n{events}",
        String::from_utf8_lossy(&waited.stderr)
    );

    // kubelet pulled the rewritten reference, the registry's manifest.
    let image = cluster.kubectl_ok(
        &[
            "-n",
            namespace,
            "get",
            "pods",
            "-l",
            "job-name=version",
            "-o",
            "jsonpath={.items[0].spec.containers[0].image}",
        ],
        None,
    );
    assert_eq!(
        image,
        format!("{PULL_ADDRESS}/namespaces/{namespace}/connectors/local/demo/connectors:v0.2.0")
    );
    let image_id = cluster.kubectl_ok(
        &[
            "-n",
            namespace,
            "get",
            "pods",
            "-l",
            "job-name=version",
            "-o",
            "jsonpath={.items[0].status.containerStatuses[0].imageID}",
        ],
        None,
    );
    assert!(image_id.ends_with(&format!("@{digest}")), "{image_id} is {digest}");
    let logs = cluster.kubectl_ok(&["-n", namespace, "logs", "job/version"], None);
    assert!(logs.starts_with("connectors "), "{logs}");
    // The new layer came from the registry, through the proxy.
    let fetched = registry.access_log_lines("GET /v2/demo/connectors/blobs/sha256:");
    assert!(fetched.iter().any(|line| line.contains(" 200 ")), "{}", registry.logs());

    // The password is in the connector's Secret and nowhere else: not in
    // the pod, its events or logs, no pull Secret appeared, and no file of
    // the node's holds it.
    let pod = cluster.kubectl_ok(&["-n", namespace, "get", "pods", "-o", "json"], None);
    let secrets = cluster.kubectl_ok(&["-n", namespace, "get", "secrets", "-o", "name"], None);
    assert_eq!(secrets.trim(), "secret/registry-robot", "no Secret but the connector's");
    for (what, text) in [("the pod", &pod), ("the events", &events), ("the logs", &logs)] {
        assert!(!text.contains(PASSWORD), "{what} show the password");
    }
    let grep = Command::new("grep")
        .args(["-r", "-l", "-F", PASSWORD, "/var/lib/kubelet"])
        .arg(cluster.dir.join("logs"))
        .arg(cluster.dir.join("node/logs"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&grep.stdout),
        "",
        "node files hold the password"
    );
}
