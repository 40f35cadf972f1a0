//! The product on a REAL node: kubelet, containerd, runc and kube-proxy of
//! the e2e harness (`E2E_NODE=1`, see `e2e/node/node.bash`), the product
//! installed as pods from its own image (`image/build`) with
//! `kubectl apply -k` of `manifests/` and only a single-node overlay.
//! Registries run in the node's network namespace, where its pods reach
//! them; nothing leaves the machine.

use std::path::Path;
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

/// Builds an image with buildah from `base` (an OCI archive; `None`:
/// scratch) and `files` (host path, image path), and pushes it to
/// `registry` as `repository:tag`.
fn push_image(registry: &Registry, repository: &str, base: Option<&Path>, files: &[(&Path, &str)]) {
    push_image_with(registry, repository, base, files, &["--dest-tls-verify=false"]);
}

/// As [`push_image`], with `skopeo copy` options for the destination.
fn push_image_with(registry: &Registry, repository: &str, base: Option<&Path>, files: &[(&Path, &str)], dest: &[&str]) {
    let work = tempfile::tempdir().unwrap();
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
    let base = base.map_or_else(
        || "scratch".to_owned(),
        |archive| format!("oci-archive:{}", archive.display()),
    );
    let container = buildah(&["from", "--quiet", &base]);
    for (source, destination) in files {
        buildah(&["copy", &container, source.to_str().unwrap(), destination]);
    }
    let archive = work.path().join("image.tar");
    buildah(&[
        "commit",
        "--quiet",
        &container,
        &format!("oci-archive:{}", archive.display()),
    ]);
    let output = Command::new("skopeo")
        .args(["copy", "-q"])
        .args(dest)
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

/// Applies `yaml` and waits (two minutes at most) until `object` of
/// `namespace` meets `condition`; returns the namespace's events.
fn apply_and_wait(cluster: &RealCluster, namespace: &str, yaml: &str, condition: &str, object: &str) -> String {
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(yaml));
    let waited = cluster.kubectl(
        &[
            "-n",
            namespace,
            "wait",
            &format!("--for={condition}"),
            object,
            "--timeout=120s",
        ],
        None,
    );
    let events = cluster.kubectl_ok(&["-n", namespace, "get", "events", "-o", "wide"], None);
    assert!(
        waited.status.success(),
        "{object} never met {condition}: {}\n{events}",
        String::from_utf8_lossy(&waited.stderr)
    );
    events
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
    // The product's image with a layer of its own: containerd already holds
    // the product's layer (the install imported it), so kubelet must fetch
    // this one through the proxy.
    let work = tempfile::tempdir().unwrap();
    let stamp = work.path().join("stamp");
    std::fs::write(&stamp, format!("{:?}\n", std::time::SystemTime::now())).unwrap();
    push_image(
        &registry,
        "demo/connectors:v0.2.0",
        Some(&product_image()),
        &[(&stamp, "/stamp")],
    );
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
    let events = apply_and_wait(cluster, namespace, &job, "condition=Complete", "job/version");
    // kubelet pulled the rewritten reference, the registry's manifest.
    let of_the_pod = |path: &str| {
        let jsonpath = format!("jsonpath={{.items[0].{path}}}");
        cluster.kubectl_ok(
            &[
                "-n",
                namespace,
                "get",
                "pods",
                "-l",
                "job-name=version",
                "-o",
                &jsonpath,
            ],
            None,
        )
    };
    let image = of_the_pod("spec.containers[0].image");
    assert_eq!(
        image,
        format!("{PULL_ADDRESS}/namespaces/{namespace}/connectors/local/demo/connectors:v0.2.0")
    );
    let image_id = of_the_pod("status.containerStatuses[0].imageID");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_publishes_the_csi_volume_with_the_pods_token_for_a_non_root_container() {
    let cluster = cluster();
    let registry = node_registry(cluster).await;
    push_image(
        &registry,
        "tools/busybox:1",
        None,
        &[(Path::new("/bin/busybox"), "/bin/busybox")],
    );
    let namespace = "node-volume";
    namespace_with_connector(cluster, namespace, &registry);

    // A non-root container reads what the volume gives it and waits.
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: reader, namespace: {namespace}}}
spec:
  securityContext: {{runAsUser: 1000, runAsGroup: 1000, fsGroup: 2000, runAsNonRoot: true}}
  containers:
    - name: reader
      image: {registry}/tools/busybox:1
      command: ["/bin/busybox", "sh", "-c"]
      args:
        - |
          cd "$DOCKER_CONFIG" || exit 1
          for f in config.json .env ca.crt context.token; do
            /bin/busybox cat "$f" >/dev/null || exit 2
          done
          /bin/busybox grep -q '"auths"' config.json || exit 3
          /bin/busybox grep -q BEGIN ca.crt || exit 4
          echo read-all
          exec /bin/busybox sleep 3600
"#,
        registry = registry.host_port()
    );
    apply_and_wait(cluster, namespace, &pod, "condition=Ready", "pod/reader");
    let mut logs = String::new();
    for _ in 0..30 {
        logs = cluster.kubectl_ok(&["-n", namespace, "logs", "reader"], None);
        if !logs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(logs.trim(), "read-all");

    // On the node: kubelet published the volume under the pod's directory,
    // the token file is not world-readable.
    let uid = cluster.kubectl_ok(
        &[
            "-n",
            namespace,
            "get",
            "pod",
            "reader",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
        None,
    );
    let volume = Path::new("/var/lib/kubelet/pods")
        .join(uid.trim())
        .join("volumes/kubernetes.io~csi/connectors-csi/mount");
    let token = volume.join("context.token");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&token).unwrap().permissions());
    assert_eq!(mode & 0o007, 0, "{} is {mode:o}", token.display());

    // The volume goes with the pod.
    cluster.kubectl_ok(
        &[
            "-n",
            namespace,
            "delete",
            "pod",
            "reader",
            "--grace-period=1",
            "--wait=true",
        ],
        None,
    );
    let mut gone = false;
    for _ in 0..60 {
        if !volume.exists() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(gone, "{} outlives the pod", volume.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_keeps_working_while_a_webhook_pod_is_deleted() {
    let cluster = cluster();
    let registry = node_registry(cluster).await;
    let namespace = "node-admission";
    namespace_with_connector(cluster, namespace, &registry);
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{generateName: admitted-, namespace: {namespace}}}\nspec:\n  containers: [{{name: c, image: {}/tools/busybox:1}}]\n",
        registry.host_port()
    );
    let webhook = cluster.kubectl_ok(
        &[
            "-n",
            "connectors-system",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/component=webhook",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ],
        None,
    );
    // The pod shuts down (its grace period) and a new one starts while pods
    // are admitted (server-side dry runs: every webhook is called, nothing
    // is stored).
    cluster.kubectl_ok(
        &[
            "-n",
            "connectors-system",
            "delete",
            "pod",
            webhook.trim(),
            "--wait=false",
        ],
        None,
    );
    let mut failures = Vec::new();
    let started = std::time::Instant::now();
    let mut admitted = 0;
    while started.elapsed() < Duration::from_secs(20) {
        let created = cluster.kubectl(&["create", "--dry-run=server", "-o", "json", "-f", "-"], Some(&pod));
        let stdout = String::from_utf8_lossy(&created.stdout);
        if created.status.success() && stdout.contains("connectors.cpaas.io/") {
            admitted += 1;
        } else {
            failures.push(format!("{}{stdout}", String::from_utf8_lossy(&created.stderr)));
        }
    }
    println!(
        "{admitted} admitted, {} failed while a webhook pod was replaced",
        failures.len()
    );
    assert!(admitted >= 10, "only {admitted} admissions in 20 s");
    assert!(
        failures.is_empty(),
        "{} of {} admissions failed: {:?}",
        failures.len(),
        admitted + failures.len(),
        failures.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_client_in_a_pod_goes_through_the_forward_proxy_to_an_https_registry() {
    use testing::TestTls;

    let cluster = cluster();
    let netns = cluster.node_setting("netns");
    let ip: std::net::IpAddr = cluster.node_setting("node_ip").parse().unwrap();
    let tls = TestTls::generate(&[], &[ip]).unwrap();
    let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD).tls(&tls).in_netns(&netns, ip))
        .await
        .unwrap();
    // crane, static, as the pod's image; and an image for it to look up.
    let crane = testing::program::go_tool("github.com/google/go-containerregistry/cmd/crane");
    push_image_tls(&registry, &tls, "tools/crane:1", &[(&crane, "/crane")]);
    let work = tempfile::tempdir().unwrap();
    let stamp = work.path().join("stamp");
    std::fs::write(&stamp, "forward mode\n").unwrap();
    push_image_tls(&registry, &tls, "demo/target:v1", &[(&stamp, "/stamp")]);
    let digest = registry.manifest_digest("demo/target", "v1").await.unwrap();

    // The connector trusts the registry's CA; the pod trusts only what the
    // webhook and the volume give it (the proxy CA in the bundle).
    let namespace = "node-forward";
    namespace_with_connector(cluster, namespace, &registry);
    let ca_secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: registry-ca, namespace: {namespace}}}\nstringData:\n  ca.crt: |\n{}",
        tls.ca_pem().lines().map(|l| format!("    {l}\n")).collect::<String>()
    );
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&ca_secret));
    cluster.kubectl_ok(
        &[
            "-n",
            namespace,
            "patch",
            "connector",
            "local",
            "--type=merge",
            "-p",
            r#"{"spec": {"caCertSecretRef": {"name": "registry-ca"}}}"#,
        ],
        None,
    );
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: crane, namespace: {namespace}}}
spec:
  restartPolicy: Never
  securityContext: {{runAsUser: 1000, fsGroup: 2000}}
  containers:
    - name: crane
      image: {registry}/tools/crane:1
      command: ["/crane", "digest", "{registry}/demo/target:v1"]
"#,
        registry = registry.host_port()
    );
    apply_and_wait(
        cluster,
        namespace,
        &pod,
        "jsonpath={.status.phase}=Succeeded",
        "pod/crane",
    );
    let logs = cluster.kubectl_ok(&["-n", namespace, "logs", "crane"], None);
    assert_eq!(logs.trim(), digest, "crane saw the registry's manifest");
}

/// As [`push_image`], to a registry serving `tls`, from scratch.
fn push_image_tls(registry: &Registry, tls: &testing::TestTls, repository: &str, files: &[(&Path, &str)]) {
    let certs = tempfile::tempdir().unwrap();
    std::fs::write(certs.path().join("ca.crt"), tls.ca_pem()).unwrap();
    push_image_with(
        registry,
        repository,
        None,
        files,
        &["--dest-cert-dir", certs.path().to_str().unwrap()],
    );
}
