//! The product on a REAL node: kubelet, containerd, runc and kube-proxy of
//! the e2e harness (`E2E_NODE=1`, see `e2e/node/node.bash`), the product
//! installed as pods from its own image (`image/build`) with Helm
//! (`charts/connectors`, whose defaults are `manifests/`: tests/helm.rs) and
//! only a single-node cluster's values.
//! Registries run in the node's network namespace, where its pods reach
//! them; nothing leaves the machine.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testing::cluster::RealCluster;
use testing::{Registry, RegistryOptions};

const USER: &str = "robot";
const PASSWORD: &str = "node-pull-s3cret";
/// Where kubelet pulls rewritten images: the node pull endpoint on the
/// node's loopback, as the shipped config.env says.
const PULL_ADDRESS: &str = "127.0.0.1:7480";
/// The proxy's pinned ClusterIP, where pods reach it (the cluster runs no DNS).
const PROXY_ADDRESS: &str = "10.96.100.100";

/// Tests that change the install for everyone (deliberate breakage, an
/// uninstall, a Helm upgrade and rollback) hold this for writing, every
/// other test for reading: they never run beside each other (a test
/// restarting the proxy's pods once made the upgrade see no ready proxy
/// replica). NB: libtest starts tests in name order, so those three and
/// the longest reader (the token renewal, eight minutes) are
/// named to start first: a writer queued behind a long reader would hold
/// every other test back.
static INSTALL: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The cluster, shared with the other tests that leave the install as it is.
async fn cluster() -> (&'static RealCluster, tokio::sync::RwLockReadGuard<'static, ()>) {
    let shared = INSTALL.read().await;
    (RealCluster::with_node(), shared)
}

/// The cluster, with no other test running.
async fn cluster_alone() -> (&'static RealCluster, tokio::sync::RwLockWriteGuard<'static, ()>) {
    let alone = INSTALL.write().await;
    (RealCluster::with_node(), alone)
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
    push_image_with(registry, repository, base, files, &[], &["--dest-tls-verify=false"]);
}

/// Pushes `tools/busybox:1`: the machine's static busybox, from scratch.
fn push_busybox(registry: &Registry) {
    push_image(
        registry,
        "tools/busybox:1",
        None,
        &[(Path::new("/bin/busybox"), "/bin/busybox")],
    );
}

/// A registry in the node's namespace holding `tools/busybox:1`, and
/// `namespace` opted in with a Connector for it
/// ([`namespace_with_connector`]): what most node tests start from.
async fn busybox_namespace(cluster: &RealCluster, namespace: &str) -> Registry {
    let registry = node_registry(cluster).await;
    push_busybox(&registry);
    namespace_with_connector(cluster, namespace, &registry);
    registry
}

/// Pushes a one-file image from scratch (`/stamp` holding `contents`) as
/// `repository:tag`, with `skopeo copy` options `dest`.
fn push_stamp(registry: &Registry, repository: &str, contents: &str, dest: &[&str]) {
    let work = tempfile::tempdir().unwrap();
    let stamp = work.path().join("stamp");
    std::fs::write(&stamp, contents).unwrap();
    push_image_with(registry, repository, None, &[(&stamp, "/stamp")], &[], dest);
}

/// Pushes an image of client tools from scratch: `files` and a `PATH`.
fn push_tools(registry: &Registry, repository: &str, files: &[(&Path, &str)], path: &str) {
    push_image_with(
        registry,
        repository,
        None,
        files,
        &["--env", &format!("PATH={path}")],
        &["--dest-tls-verify=false"],
    );
}

/// As [`push_image`], with `buildah config` options for the image and
/// `skopeo copy` options for the destination.
fn push_image_with(
    registry: &Registry,
    repository: &str,
    base: Option<&Path>,
    files: &[(&Path, &str)],
    config: &[&str],
    dest: &[&str],
) {
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
    if !config.is_empty() {
        buildah(&[&["config"], config, &[container.as_str()]].concat());
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

/// A field (`jsonpath` below the pod) of the pod of Job `job`.
fn job_pod_field(cluster: &RealCluster, namespace: &str, job: &str, path: &str) -> String {
    cluster.kubectl_ok(
        &[
            "-n",
            namespace,
            "get",
            "pods",
            "-l",
            &format!("job-name={job}"),
            "-o",
            &format!("jsonpath={{.items[0].{path}}}"),
        ],
        None,
    )
}

/// Applies a pod that runs to completion and returns its logs, once it
/// succeeded (within `seconds`); fails with its logs and the namespace's
/// events otherwise.
fn run_pod(cluster: &RealCluster, namespace: &str, pod: &str, yaml: &str, seconds: u32) -> String {
    let applied = cluster.kubectl(&["-n", namespace, "apply", "-f", "-"], Some(yaml));
    assert!(
        applied.status.success(),
        "{}\n{yaml}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let waited = cluster.kubectl(
        &[
            "-n",
            namespace,
            "wait",
            "--for=jsonpath={.status.phase}=Succeeded",
            &format!("pod/{pod}"),
            &format!("--timeout={seconds}s"),
        ],
        None,
    );
    let logs = cluster.kubectl(&["-n", namespace, "logs", pod], None);
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&logs.stdout),
        String::from_utf8_lossy(&logs.stderr)
    );
    if !waited.status.success() {
        let events = cluster.kubectl_ok(&["-n", namespace, "get", "events"], None);
        let proxy = cluster.kubectl(
            &[
                "-n",
                "connectors-system",
                "logs",
                "-l",
                "app.kubernetes.io/component=proxy",
                "--tail=40",
            ],
            None,
        );
        panic!(
            "pod {pod} did not succeed: {logs}\n{events}\nproxy: {}",
            String::from_utf8_lossy(&proxy.stdout)
        );
    }
    logs
}

/// An opted-in namespace with a Connector for `registry` whose Secret
/// holds the password, and the `default` ServiceAccount bound to the
/// shipped `connectors-user` role.
fn namespace_with_connector(cluster: &RealCluster, namespace: &str, registry: &Registry) {
    namespace_with_connector_named(cluster, namespace, "local", registry);
}

/// As [`namespace_with_connector`], with the Connector called `connector`.
fn namespace_with_connector_named(cluster: &RealCluster, namespace: &str, connector: &str, registry: &Registry) {
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
metadata: {{name: {connector}, namespace: {namespace}}}
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
    cluster.kubectl_ok(&["-n", namespace, "apply", "-f", "-"], Some(yaml));
    wait_until(cluster, namespace, condition, object)
}

/// Waits (two minutes at most) until `object` of `namespace` meets
/// `condition`; returns the namespace's events.
fn wait_until(cluster: &RealCluster, namespace: &str, condition: &str, object: &str) -> String {
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
    let (cluster, _install) = cluster().await;
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
    let (cluster, _install) = cluster().await;
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
    // The connector and its Secret live in a platform namespace, shared;
    // the workload namespace only opts in and names it, and its
    // ServiceAccount is bound to connectors-user where the connector is.
    let platform = "node-platform";
    let namespace = "node-pulls";
    namespace_with_connector(cluster, platform, &registry);
    cluster.kubectl_ok(
        &[
            "-n",
            platform,
            "annotate",
            "connector",
            "local",
            "connectors.cpaas.io/shared=true",
        ],
        None,
    );
    let workload = format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: {namespace}
  labels: {{connectors.cpaas.io/proxy-inject: "true"}}
  annotations: {{connectors.cpaas.io/connector: {platform}/local}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {namespace}-uses-connectors, namespace: {platform}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: connectors-user}}
subjects: [{{kind: ServiceAccount, name: default, namespace: {namespace}}}]
"#
    );
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&workload));

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
    let of_the_pod = |path: &str| job_pod_field(cluster, namespace, "version", path);
    let image = of_the_pod("spec.containers[0].image");
    assert_eq!(
        image,
        format!("{PULL_ADDRESS}/namespaces/{platform}/connectors/local/demo/connectors:v0.2.0")
    );
    let image_id = of_the_pod("status.containerStatuses[0].imageID");
    assert!(image_id.ends_with(&format!("@{digest}")), "{image_id} is {digest}");
    let logs = cluster.kubectl_ok(&["-n", namespace, "logs", "job/version"], None);
    assert!(logs.starts_with("connectors "), "{logs}");
    // Nothing on the node names the proxy: containerd has no registry
    // configuration at all, and the proxy takes no node by its address;
    // the node pull endpoint's pod-bound token proved the node.
    let certs_d: Vec<_> = std::fs::read_dir(cluster.dir.join("node/certs.d"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(certs_d.is_empty(), "containerd has registry configuration: {certs_d:?}");
    let by_address = cluster.kubectl_ok(
        &[
            "-n",
            "connectors-system",
            "get",
            "configmap",
            "connectors-config",
            "-o",
            "jsonpath={.data.CONNECTORS_NODE_IDENTITY_BY_ADDRESS}",
        ],
        None,
    );
    assert_eq!(by_address, "", "node identity by address is off, as shipped");
    // The new layer came from the registry, through the proxy.
    let fetched = registry.access_log_lines("GET /v2/demo/connectors/blobs/sha256:");
    assert!(fetched.iter().any(|line| line.contains(" 200 ")), "{}", registry.logs());

    // The password is in the connector's Secret and nowhere else: not in
    // the pod, its events or logs, no pull Secret appeared, and no file of
    // the node's holds it.
    let pod = cluster.kubectl_ok(&["-n", namespace, "get", "pods", "-o", "json"], None);
    let secrets = cluster.kubectl_ok(&["-n", namespace, "get", "secrets", "-o", "name"], None);
    assert_eq!(secrets.trim(), "", "the workload namespace holds no Secret");
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
    let (cluster, _install) = cluster().await;
    let namespace = "node-volume";
    let registry = busybox_namespace(cluster, namespace).await;

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
    let volume = volume_on_the_node(cluster, namespace, "reader");
    let token = volume.join("context.token");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&token).unwrap().permissions());
    assert_eq!(mode & 0o007, 0, "{} is {mode:o}", token.display());
    // And kubelet's pod directory keeps the node's other users out of
    // every file of the volume.
    let closed = volume.ancestors().any(|dir| {
        std::fs::metadata(dir).is_ok_and(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o001 == 0)
    });
    assert!(closed, "every directory above {} lets others in", volume.display());

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

/// A pod that runs once and prints its name if its volume gave it a
/// registry config (`$DOCKER_CONFIG/config.json`): a pod the webhook
/// rewrote, whose image kubelet pulled through the proxy.
fn volume_checking_pod(namespace: &str, name: &str, registry: &Registry) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  restartPolicy: Never
  containers:
    - name: {name}
      image: {registry}/tools/busybox:1
      command: ["/bin/busybox", "sh", "-c", "/bin/busybox test -s \"$DOCKER_CONFIG/config.json\" && echo {name}"]
"#,
        registry = registry.host_port()
    )
}

/// The `/metrics` of every pod of `component` in `namespace`, fetched
/// through the API server's pod proxy (`scheme:pod:port`), joined.
fn scrape(cluster: &RealCluster, namespace: &str, component: &str, scheme: &str, port: u16) -> String {
    let pods = cluster.kubectl_ok(
        &[
            "-n",
            namespace,
            "get",
            "pods",
            "-l",
            &format!("app.kubernetes.io/component={component}"),
            "--field-selector=status.phase=Running",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
        None,
    );
    assert!(!pods.trim().is_empty(), "no running {component} pod");
    pods.split_whitespace()
        .map(|pod| {
            let path = format!("/api/v1/namespaces/{namespace}/pods/{scheme}:{pod}:{port}/proxy/metrics");
            cluster.kubectl_ok(&["get", "--raw", &path], None)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_components_metrics_are_scraped_on_the_cluster_and_a_deleted_connectors_series_go() {
    let (cluster, _install) = cluster().await;
    let registry = node_registry(cluster).await;
    push_busybox(&registry);
    let namespace = "node-metrics";
    namespace_with_connector_named(cluster, namespace, "scraped", &registry);
    wait_until(cluster, namespace, "condition=Ready", "connector/scraped");
    // A pod the webhook rewrites, whose image kubelet pulls through the
    // proxy and whose volume the CSI plugin publishes.
    let pod = volume_checking_pod(namespace, "counted", &registry);
    assert_eq!(run_pod(cluster, namespace, "counted", &pod, 120).trim(), "counted");

    let connector = format!("{namespace}/scraped");
    let proxy = scrape(cluster, "connectors-system", "proxy", "http", 9090);
    for series in [
        format!(r#"connectors_proxy_requests_total{{connector="{connector}",mode="reverse",status="2xx"}}"#),
        format!(r#"connectors_proxy_bytes_total{{connector="{connector}",direction="download"}}"#),
        r#"connectors_proxy_time_to_first_byte_seconds_bucket{le="+Inf",mode="reverse"}"#.to_owned(),
    ] {
        assert!(proxy.contains(&series), "{series} in the proxy's metrics:\n{proxy}");
    }
    let webhook = scrape(cluster, "connectors-system", "webhook", "https", 8443);
    assert!(
        webhook.contains(r#"connectors_webhook_admission_reviews_total{verdict="mutated",reason=""}"#),
        "{webhook}"
    );
    let csi = scrape(cluster, "connectors-csi", "csi", "http", 9808);
    assert!(
        csi.contains(r#"connectors_csi_publishes_total{result="published"}"#),
        "{csi}"
    );
    assert!(csi.contains("connectors_csi_publish_duration_seconds_count"), "{csi}");
    let controller = scrape(cluster, "connectors-system", "controller", "http", 8081);
    for series in [
        format!(r#"connectors_controller_connector_ready{{namespace="{namespace}",name="scraped"}} 1"#),
        r#"connectors_controller_probes_total{result="success"}"#.to_owned(),
        r#"connectors_controller_certificate_expiration_timestamp_seconds{name="connectors-proxy-ca"}"#.to_owned(),
        "connectors_controller_leader 1".to_owned(),
    ] {
        assert!(
            controller.contains(&series),
            "{series} in the controller's metrics:\n{controller}"
        );
    }
    for (component, text) in [
        ("proxy", &proxy),
        ("webhook", &webhook),
        ("csi", &csi),
        ("controller", &controller),
    ] {
        assert!(!text.contains(PASSWORD), "the {component}'s metrics hold the password");
    }

    // The Connector goes, and so do its series.
    cluster.kubectl_ok(
        &["-n", namespace, "delete", "connector", "scraped", "--wait=true"],
        None,
    );
    let mut left = String::new();
    for _ in 0..60 {
        let proxy = scrape(cluster, "connectors-system", "proxy", "http", 9090);
        let controller = scrape(cluster, "connectors-system", "controller", "http", 8081);
        left = [proxy, controller]
            .iter()
            .flat_map(|text| text.lines())
            .filter(|line| line.contains(&connector) || line.contains(r#"name="scraped""#))
            .collect::<Vec<_>>()
            .join("\n");
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(left.is_empty(), "a deleted connector's series remain:\n{left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_keeps_working_while_a_webhook_pod_is_deleted() {
    let (cluster, _install) = cluster().await;
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
    let started = std::time::Instant::now();
    let (admitted, failures) = admit_while(cluster, &pod, || started.elapsed() < Duration::from_secs(20));
    println!(
        "{admitted} admitted, {} failed while a webhook pod was replaced",
        failures.len()
    );
    assert_all_admitted(admitted, &failures, 10);
}

/// Server-side dry runs of `pod` (every webhook is called, nothing is
/// stored), one after another while `go_on` says so (at most 5,000): how
/// many were admitted and mutated, and what the others answered.
fn admit_while(cluster: &RealCluster, pod: &str, go_on: impl Fn() -> bool) -> (usize, Vec<String>) {
    let (mut admitted, mut failures) = (0, Vec::new());
    while go_on() && admitted + failures.len() < 5000 {
        let created = cluster.kubectl(&["create", "--dry-run=server", "-o", "json", "-f", "-"], Some(pod));
        let stdout = String::from_utf8_lossy(&created.stdout);
        if created.status.success() && stdout.contains("connectors.cpaas.io/") {
            admitted += 1;
        } else {
            failures.push(format!("{}{stdout}", String::from_utf8_lossy(&created.stderr)));
        }
    }
    (admitted, failures)
}

/// At least `at_least` admissions, and none failed.
fn assert_all_admitted(admitted: usize, failures: &[String], at_least: usize) {
    assert!(admitted >= at_least, "only {admitted} admissions");
    assert!(
        failures.is_empty(),
        "{} of {} admissions failed: {:?}",
        failures.len(),
        admitted + failures.len(),
        failures.first()
    );
}

/// Runs Helm against the node cluster (the release `connectors` in
/// `default`, which e2e/cluster installed).
fn helm(cluster: &RealCluster, args: &[&str]) -> String {
    let output = Command::new(testing::program::helm())
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(["--namespace", "default"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("helm runs");
    assert!(
        output.status.success(),
        "helm {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helm_upgrade_and_a_rollback_roll_the_install_with_no_failed_admission() {
    let (cluster, _alone) = cluster_alone().await;
    let registry = node_registry(cluster).await;
    let namespace = "node-helm-upgrade";
    namespace_with_connector(cluster, namespace, &registry);
    let release: serde_json::Value =
        serde_json::from_str(&helm(cluster, &["status", "connectors", "-o", "json"])).unwrap();
    assert_eq!(release["info"]["status"], "deployed", "{release}");
    let revision = release["version"].as_u64().unwrap();
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{generateName: admitted-, namespace: {namespace}}}\nspec:\n  containers: [{{name: c, image: {}/tools/busybox:1}}]\n",
        registry.host_port()
    );
    // Pods are admitted (server-side dry runs: every webhook is called,
    // nothing is stored) one after another until the rollouts are done.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admissions = std::thread::spawn({
        let stop = stop.clone();
        move || admit_while(cluster, &pod, || !stop.load(std::sync::atomic::Ordering::Acquire))
    });
    let webhook_limit = || {
        cluster.kubectl_ok(
            &[
                "-n",
                "connectors-system",
                "get",
                "deployment",
                "connectors-webhook",
                "-o",
                "jsonpath={.spec.template.spec.containers[0].resources.limits.memory}",
            ],
            None,
        )
    };
    let rolled_out = |deployment: &str| {
        cluster.kubectl_ok(
            &[
                "-n",
                "connectors-system",
                "rollout",
                "status",
                "--timeout=240s",
                deployment,
            ],
            None,
        );
    };
    // The upgrade: the webhook's pods are replaced (a new memory limit) and
    // a proxy replica is added.
    let started = std::time::Instant::now();
    helm(
        cluster,
        &[
            "upgrade",
            "connectors",
            "charts/connectors",
            "--reuse-values",
            "--set",
            "webhook.resources.limits.memory=160Mi",
            "--set",
            "proxy.replicas=3",
            "--wait",
            "--timeout=5m",
        ],
    );
    rolled_out("deployment/connectors-webhook");
    rolled_out("deployment/connectors-proxy");
    assert_eq!(webhook_limit(), "160Mi");
    let ready = cluster.kubectl_ok(
        &[
            "-n",
            "connectors-system",
            "get",
            "deployment",
            "connectors-proxy",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ],
        None,
    );
    assert_eq!(ready, "3");
    let upgraded = started.elapsed();
    // The rollback to the installed revision: the same in reverse.
    helm(
        cluster,
        &[
            "rollback",
            "connectors",
            &revision.to_string(),
            "--wait",
            "--timeout=5m",
        ],
    );
    rolled_out("deployment/connectors-webhook");
    rolled_out("deployment/connectors-proxy");
    assert_eq!(webhook_limit(), "128Mi");
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Release);
    let (admitted, failures) = admissions.join().unwrap();
    let history = helm(cluster, &["history", "connectors", "-o", "json"]);
    let history: serde_json::Value = serde_json::from_str(&history).unwrap();
    let last = history.as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["revision"].as_u64(), &last["status"]),
        (Some(revision + 2), &"deployed".into())
    );
    println!(
        "helm upgrade ({:.0} s) and rollback ({:.0} s): {admitted} admitted, {} failed",
        upgraded.as_secs_f64(),
        (started.elapsed() - upgraded).as_secs_f64(),
        failures.len()
    );
    assert_all_admitted(admitted, &failures, 20);
}

/// A CA Secret's `tls.crt` (the signing CA) and `ca.crt` (the bundle).
fn ca_secret(cluster: &RealCluster, name: &str) -> (String, usize) {
    let json = cluster.kubectl_ok(&["-n", "connectors-system", "get", "secret", name, "-o", "json"], None);
    let secret: serde_json::Value = serde_json::from_str(&json).unwrap();
    let field = |key: &str| {
        use base64::Engine;
        let encoded = secret["data"][key].as_str().unwrap_or_default();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).unwrap()).unwrap()
    };
    let trusted = certs::load_certs_pem(&field("ca.crt"))
        .map(|c| c.len())
        .unwrap_or_default();
    (field("tls.crt"), trusted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_cas_rotate_with_an_overlap_while_pods_are_created_and_pull_with_no_failure() {
    let (cluster, _install) = cluster().await;
    let registry = node_registry(cluster).await;
    let crane = testing::program::go_tool("github.com/google/go-containerregistry/cmd/crane");
    push_tools(
        &registry,
        "tools/crane:1",
        &[(Path::new("/bin/busybox"), "/bin/busybox"), (&crane, "/usr/bin/crane")],
        "/usr/bin:/bin",
    );
    let digest = registry.manifest_digest("tools/crane", "1").await.unwrap();
    let namespace = "node-rotation";
    namespace_with_connector(cluster, namespace, &registry);
    let cas = ["connectors-proxy-ca", "connectors-webhook-ca"];
    let before: Vec<String> = cas.iter().map(|name| ca_secret(cluster, name).0).collect();

    // Pods are created one after another until the rotations are over: each
    // is admitted (the webhook's certificate), pulled by kubelet with
    // `Always` (the node pull endpoint's TLS to the proxy), and runs crane
    // against the proxy's HTTPS with only the volume's trust (SSL_CERT_FILE).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let creator = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let (mut created, mut refused) = (Vec::new(), Vec::new());
            for i in 0..400 {
                if stop.load(std::sync::atomic::Ordering::Acquire) {
                    break;
                }
                let name = format!("rotating-{i}");
                let pod = format!(
                    r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}, labels: {{case: rotation}}}}
spec:
  restartPolicy: Never
  containers:
    - name: crane
      image: {registry}/tools/crane:1
      imagePullPolicy: Always
      env: [{{name: HOME, value: /tmp}}]
      volumeMounts: [{{name: tmp, mountPath: /tmp}}]
      command: ["/bin/busybox", "sh", "-ec", "echo digest $(crane digest {PROXY_ADDRESS}/namespaces/{namespace}/connectors/local/tools/crane:1)"]
  volumes: [{{name: tmp, emptyDir: {{}}}}]
"#,
                    registry = registry.host_port()
                );
                let output = cluster.kubectl(&["create", "-f", "-"], Some(&pod));
                if output.status.success() {
                    created.push(name);
                } else {
                    refused.push(String::from_utf8_lossy(&output.stderr).into_owned());
                }
                std::thread::sleep(Duration::from_secs(4));
            }
            (created, refused)
        }
    });
    std::thread::sleep(Duration::from_secs(8));
    let started = std::time::Instant::now();
    for name in cas {
        cluster.kubectl_ok(
            &[
                "-n",
                "connectors-system",
                "annotate",
                "secret",
                name,
                "connectors.cpaas.io/rotate=now",
            ],
            None,
        );
    }
    // Introduced, promoted, retired: two overlaps (CONNECTORS_CA_OVERLAP_SECONDS
    // of the node cluster, 120 s) and the controller's reaction.
    let mut phases = Vec::new();
    loop {
        let now: Vec<(String, usize)> = cas.iter().map(|name| ca_secret(cluster, name)).collect();
        let phase: Vec<String> = now
            .iter()
            .zip(&before)
            .map(|((signing, trusted), old)| format!("{}/{trusted}", if signing == old { "old" } else { "new" }))
            .collect();
        if phases.last() != Some(&phase) {
            println!("{:>4.0} s: {phase:?}", started.elapsed().as_secs_f64());
            phases.push(phase.clone());
        }
        if phase.iter().all(|p| p == "new/1") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(480),
            "the rotations did not complete: {phases:?}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let seen: std::collections::BTreeSet<&str> = phases.iter().flatten().map(String::as_str).collect();
    assert!(
        seen.contains("old/2") && seen.contains("new/2"),
        "each CA was trusted beside the other before and after it signed: {phases:?}"
    );
    // A little more, for pods created around the last step.
    std::thread::sleep(Duration::from_secs(20));
    stop.store(true, std::sync::atomic::Ordering::Release);
    let (created, refused) = creator.join().unwrap();
    assert!(refused.is_empty(), "{} pods were refused: {refused:?}", refused.len());
    assert!(created.len() >= 30, "only {} pods were created", created.len());
    let mut failed = Vec::new();
    for name in &created {
        let object = format!("pod/{name}");
        let done = cluster.kubectl(
            &[
                "-n",
                namespace,
                "wait",
                "--for=jsonpath={.status.phase}=Succeeded",
                &object,
                "--timeout=180s",
            ],
            None,
        );
        let logs = cluster.kubectl(&["-n", namespace, "logs", name], None);
        let logs = String::from_utf8_lossy(&logs.stdout).into_owned();
        if !done.status.success() || !logs.contains(&format!("digest {digest}")) {
            let describe = cluster.kubectl(&["-n", namespace, "describe", &object], None);
            failed.push(format!("{name}: {logs}\n{}", String::from_utf8_lossy(&describe.stdout)));
        }
    }
    println!(
        "CA rotation ({:.0} s): {} pods created, pulled and run, {} failed",
        started.elapsed().as_secs_f64(),
        created.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} pods failed: {}",
        failed.len(),
        failed.join("\n---\n")
    );
    cluster.kubectl(
        &["-n", namespace, "delete", "pods", "-l", "case=rotation", "--wait=false"],
        None,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_client_in_a_pod_goes_through_the_forward_proxy_to_an_https_registry() {
    use testing::TestTls;

    let (cluster, _install) = cluster().await;
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
    trust_registry_ca(cluster, namespace, "local", &tls);
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
        &[],
        &["--dest-cert-dir", certs.path().to_str().unwrap()],
    );
}

/// A root filesystem of this machine's own `paths` (files or directories)
/// and the shared libraries of the programs among them.
fn host_rootfs(paths: &[&str]) -> tempfile::TempDir {
    let rootfs = tempfile::tempdir().unwrap();
    let mut files: Vec<String> = paths.iter().map(|&path| path.to_owned()).collect();
    for path in paths {
        let ldd = Command::new("ldd").arg(path).output().unwrap();
        if ldd.status.success() {
            let libraries = String::from_utf8(ldd.stdout).unwrap();
            files.extend(
                libraries
                    .split_whitespace()
                    .filter(|word| word.starts_with('/'))
                    .map(str::to_owned),
            );
        }
    }
    files.sort();
    files.dedup();
    let status = Command::new("cp")
        .args(["-rL", "--parents"])
        .args(&files)
        .arg(rootfs.path())
        .status()
        .unwrap();
    assert!(status.success(), "copying {files:?}");
    rootfs
}

/// What `perl -Mbignum=bpi` needs of this machine's perl: the binary,
/// perl-base and the modules bignum loads.
fn perl_rootfs() -> tempfile::TempDir {
    let output = Command::new("perl")
        .args([
            "-Mbignum=bpi",
            "-we",
            r#"my $x = "" . bpi(10); print "$_\n" for values %INC"#,
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "perl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let modules = String::from_utf8(output.stdout).unwrap();
    let mut paths = vec!["/usr/bin/perl", "/usr/lib/x86_64-linux-gnu/perl-base"];
    paths.extend(modules.lines().filter(|line| !line.contains("perl-base")));
    host_rootfs(&paths)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_world_job_manifest_runs_unchanged_with_its_image_pulled_through_the_proxy() {
    let (cluster, _install) = cluster().await;
    let registry = node_registry(cluster).await;
    // The manifest's `perl` image, packed from this machine's perl.
    let rootfs = perl_rootfs();
    push_image_with(
        &registry,
        "library/perl:latest",
        None,
        &[(rootfs.path(), "/")],
        &["--env", "PATH=/usr/bin:/bin"],
        &["--dest-tls-verify=false"],
    );
    let digest = registry.manifest_digest("library/perl", "latest").await.unwrap();
    let namespace = "node-pi";
    namespace_with_connector(cluster, namespace, &registry);

    // kubernetes/website's Job example, with one change: its image is in the
    // local registry, not Docker Hub (nothing a test sends leaves the machine).
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/manifests/kubernetes__website__content_en_examples_controllers_job.yaml"),
    )
    .unwrap();
    let job = manifest.replace(
        "image: perl\n",
        &format!("image: {}/library/perl\n", registry.host_port()),
    );
    assert_ne!(job, manifest, "the fixture names the image `perl`");
    apply_and_wait(cluster, namespace, &job, "condition=Complete", "job/pi");

    let logs = cluster.kubectl_ok(&["-n", namespace, "logs", "job/pi"], None);
    assert!(logs.starts_with("3.14159265358979323846264338327950288"), "{logs}");
    let jsonpath = |path: &str| job_pod_field(cluster, namespace, "pi", path);
    assert_eq!(
        jsonpath("spec.containers[0].image"),
        format!("{PULL_ADDRESS}/namespaces/{namespace}/connectors/local/library/perl")
    );
    let image_id = jsonpath("status.containerStatuses[0].imageID");
    assert!(image_id.ends_with(&format!("@{digest}")), "{image_id} is {digest}");
}

/// The claims `iat` and `exp` of a JWT.
fn token_times(token: &str) -> (u64, u64) {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    (claims["iat"].as_u64().unwrap(), claims["exp"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_republished_volume_carries_a_fresh_token_before_the_old_one_expires() {
    let (cluster, _install) = cluster().await;
    let namespace = "node-refresh";
    let registry = busybox_namespace(cluster, namespace).await;
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: waiter, namespace: {namespace}}}
spec:
  securityContext: {{runAsUser: 1000, runAsGroup: 1000, fsGroup: 2000, runAsNonRoot: true}}
  terminationGracePeriodSeconds: 1
  containers:
    - name: waiter
      image: {registry}/tools/busybox:1
      command: ["/bin/busybox", "sleep", "3600"]
"#,
        registry = registry.host_port()
    );
    apply_and_wait(cluster, namespace, &pod, "condition=Ready", "pod/waiter");
    let in_the_pod = || {
        cluster.kubectl_ok(
            &[
                "-n",
                namespace,
                "exec",
                "waiter",
                "--",
                "/bin/busybox",
                "sh",
                "-c",
                r#"/bin/busybox cat "$DOCKER_CONFIG/context.token""#,
            ],
            None,
        )
    };
    let first = in_the_pod();
    let (issued, expires) = token_times(&first);
    // The install asks for 600 s tokens; kubelet renews after 80% of that
    // and republishes the volume at its next pod sync.
    assert_eq!(expires - issued, 600, "the overlay's token lifetime");
    let deadline = std::time::Instant::now() + Duration::from_secs(700);
    let renewed = loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let current = in_the_pod();
        if current != first {
            assert!(now < expires, "renewed only after the old token expired");
            break current;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the token of {issued} was never renewed (expired at {expires})"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    let (renewed_issued, renewed_expires) = token_times(&renewed);
    // NB: kubelet refreshes at 80% of the lifetime (480 s of 600) less a
    // random jitter of up to 10 s (its token manager's maxJitter).
    assert!(
        renewed_issued >= issued + 470,
        "renewed at {renewed_issued}, issued at {issued}"
    );
    assert!(renewed_expires > expires);
    // Every token-bearing file moved with it.
    let config = cluster.kubectl_ok(
        &[
            "-n",
            namespace,
            "exec",
            "waiter",
            "--",
            "/bin/busybox",
            "sh",
            "-c",
            r#"/bin/busybox cat "$DOCKER_CONFIG/config.json""#,
        ],
        None,
    );
    let auth: serde_json::Value = serde_json::from_str(&config).unwrap();
    let auth = auth["auths"][PROXY_ADDRESS]["auth"].as_str().unwrap();
    let decoded =
        String::from_utf8(base64::Engine::decode(&base64::engine::general_purpose::STANDARD, auth).unwrap()).unwrap();
    assert!(
        decoded.ends_with(&format!(":{renewed}")),
        "config.json holds the renewed token"
    );
    cluster.kubectl_ok(&["-n", namespace, "delete", "pod", "waiter", "--wait=false"], None);
}

/// Limits what the node's namespace sends into the pods' bridge (the
/// registry's answers to the proxy) to `rate`, until dropped.
struct SlowBridge {
    netns: String,
}

impl SlowBridge {
    fn new(cluster: &RealCluster, rate: &str) -> Self {
        let netns = cluster.node_setting("netns");
        let status = Command::new("ip")
            .args(["netns", "exec", &netns, "tc", "qdisc", "replace", "dev", "cni0", "root"])
            .args(["tbf", "rate", rate, "burst", "256kb", "latency", "500ms"])
            .status()
            .unwrap();
        assert!(status.success(), "tc on cni0");
        SlowBridge { netns }
    }
}

impl Drop for SlowBridge {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "tc",
                "qdisc",
                "del",
                "dev",
                "cni0",
                "root",
            ])
            .status();
    }
}

/// containerd's downloads in progress (`ctr content active`), one per line.
fn active_downloads(cluster: &RealCluster) -> Vec<String> {
    let ctr = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/e2e/node/ctr");
    let output = Command::new(ctr)
        .arg("--address")
        .arg(cluster.dir.join("node/containerd.sock"))
        .args(["--namespace", "k8s.io", "content", "active"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .skip(1)
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_completes_when_the_proxy_pods_restart_in_the_middle_of_it() {
    let (cluster, _install) = cluster().await;
    let registry = node_registry(cluster).await;
    // A layer of 48 MiB that does not compress, behind a slow bridge: the
    // pull takes seconds.
    let work = tempfile::tempdir().unwrap();
    let payload = work.path().join("payload");
    let mut random = std::fs::File::open("/dev/urandom").unwrap();
    let mut file = std::fs::File::create(&payload).unwrap();
    std::io::copy(&mut std::io::Read::take(&mut random, 48 << 20), &mut file).unwrap();
    push_image(
        &registry,
        "big/payload:v1",
        None,
        &[(Path::new("/bin/busybox"), "/bin/busybox"), (&payload, "/payload")],
    );
    let digest = registry.manifest_digest("big/payload", "v1").await.unwrap();
    let namespace = "node-restart";
    namespace_with_connector(cluster, namespace, &registry);
    let slow = SlowBridge::new(cluster, "40mbit");

    let job = format!(
        r#"apiVersion: batch/v1
kind: Job
metadata: {{name: payload, namespace: {namespace}}}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: payload
          image: {registry}/big/payload:v1
          command: ["/bin/busybox", "sh", "-c", "/bin/busybox test -s /payload && echo complete"]
"#,
        registry = registry.host_port()
    );
    cluster.kubectl_ok(&["-n", namespace, "apply", "-f", "-"], Some(&job));
    // Mid-pull: containerd is writing a blob.
    let mut downloading = Vec::new();
    for _ in 0..600 {
        downloading = active_downloads(cluster);
        if !downloading.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!downloading.is_empty(), "containerd never started the pull");
    let before = cluster.kubectl_ok(
        &[
            "-n",
            "connectors-system",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/component=proxy",
            "-o",
            "name",
        ],
        None,
    );
    cluster.kubectl_ok(
        &[
            "-n",
            "connectors-system",
            "delete",
            "pods",
            "-l",
            "app.kubernetes.io/component=proxy",
            "--grace-period=0",
            "--force",
            "--wait=false",
        ],
        None,
    );
    // kubelet retries the pull (at the same pace) once new proxy pods serve.
    let events = wait_until(cluster, namespace, "condition=Complete", "job/payload");
    drop(slow);
    // The first attempt broke: kubelet saw the pull fail, or containerd
    // fetched a blob again (a retry or a resumed range).
    let fetches = registry.access_log_lines("GET /v2/big/payload/blobs/sha256:");
    let mut blobs: Vec<&str> = fetches
        .iter()
        .filter_map(|line| line.split("/blobs/").nth(1)?.split([' ', '"']).next())
        .collect();
    let total = blobs.len();
    blobs.sort_unstable();
    blobs.dedup();
    assert!(
        events.contains("ErrImagePull") || events.contains("Failed to pull") || total > blobs.len(),
        "nothing shows the pull was cut: {fetches:?}\n{events}"
    );
    let logs = cluster.kubectl_ok(&["-n", namespace, "logs", "job/payload"], None);
    assert_eq!(logs.trim(), "complete");
    let image_id = job_pod_field(cluster, namespace, "payload", "status.containerStatuses[0].imageID");
    assert!(image_id.ends_with(&format!("@{digest}")), "{image_id} is {digest}");
    // New proxy pods serve again.
    cluster.kubectl_ok(
        &[
            "-n",
            "connectors-system",
            "rollout",
            "status",
            "deployment/connectors-proxy",
            "--timeout=120s",
        ],
        None,
    );
    let after = cluster.kubectl_ok(
        &[
            "-n",
            "connectors-system",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/component=proxy",
            "-o",
            "name",
        ],
        None,
    );
    for pod in before.lines() {
        assert!(!after.contains(pod), "{pod} was not replaced");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_and_crane_in_a_pod_copy_through_the_proxy_with_only_what_the_pod_got() {
    let (cluster, _install) = cluster().await;
    let registry = node_registry(cluster).await;
    // The clients: Debian's skopeo with its libraries, crane (static) and
    // busybox for the shell.
    let crane = testing::program::go_tool("github.com/google/go-containerregistry/cmd/crane");
    let rootfs = host_rootfs(&["/usr/bin/skopeo", "/bin/busybox"]);
    push_tools(
        &registry,
        "tools/clients:1",
        &[(rootfs.path(), "/"), (&crane, "/usr/bin/crane")],
        "/usr/bin:/bin",
    );
    push_stamp(
        &registry,
        "demo/source:v1",
        "copied by clients in a pod\n",
        &["--dest-tls-verify=false"],
    );
    let digest = registry.manifest_digest("demo/source", "v1").await.unwrap();
    let namespace = "node-clients";
    namespace_with_connector(cluster, namespace, &registry);

    // Reverse mode: the references name the proxy's path for the connector;
    // auth (REGISTRY_AUTH_FILE, DOCKER_CONFIG) and trust (SSL_CERT_FILE)
    // are what the webhook injected, pointing at the volume.
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: clients, namespace: {namespace}}}
spec:
  restartPolicy: Never
  securityContext: {{runAsUser: 1000, runAsGroup: 1000, fsGroup: 2000, runAsNonRoot: true}}
  containers:
    - name: clients
      image: {registry}/tools/clients:1
      env: [{{name: TMPDIR, value: /tmp}}, {{name: HOME, value: /tmp}}]
      volumeMounts: [{{name: tmp, mountPath: /tmp}}]
      command: ["/bin/busybox", "sh", "-ec"]
      args:
        - |
          at={PROXY_ADDRESS}/namespaces/{namespace}/connectors/local
          skopeo --insecure-policy copy -q docker://$at/demo/source:v1 docker://$at/demo/by-skopeo:v1
          skopeo --insecure-policy inspect --raw docker://$at/demo/by-skopeo:v1 >/dev/null
          crane copy $at/demo/source:v1 $at/demo/by-crane:v1
          echo "crane $(crane digest $at/demo/by-crane:v1)"
  volumes: [{{name: tmp, emptyDir: {{}}}}]
"#,
        registry = registry.host_port()
    );
    let events = apply_and_wait(
        cluster,
        namespace,
        &pod,
        "jsonpath={.status.phase}=Succeeded",
        "pod/clients",
    );
    let logs = cluster.kubectl_ok(&["-n", namespace, "logs", "clients"], None);
    assert!(logs.contains(&format!("crane {digest}")), "{logs}");
    // The registry itself holds both copies, byte for byte.
    for repository in ["demo/by-skopeo", "demo/by-crane"] {
        let copied = registry.manifest_digest(repository, "v1").await.unwrap();
        assert_eq!(copied, digest, "{repository}");
    }
    assert!(!events.contains(PASSWORD) && !logs.contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildkit_in_a_pod_builds_from_a_base_and_pushes_through_the_proxy_configured_by_the_volume() {
    let (cluster, _install) = cluster().await;
    let registry = node_registry(cluster).await;
    // buildkitd and buildctl (static), Debian's runc (the OCI worker wants
    // one; a build without RUN never starts it) and busybox.
    let buildkitd = testing::program::go_tool("github.com/moby/buildkit/cmd/buildkitd");
    let buildctl = testing::program::go_tool("github.com/moby/buildkit/cmd/buildctl");
    let rootfs = host_rootfs(&["/bin/busybox", "/usr/sbin/runc"]);
    push_tools(
        &registry,
        "tools/buildkit:1",
        &[
            (rootfs.path(), "/"),
            (&buildkitd, "/usr/bin/buildkitd"),
            (&buildctl, "/usr/bin/buildctl"),
        ],
        "/usr/bin:/usr/sbin:/bin",
    );
    push_stamp(&registry, "demo/base:v1", "the base\n", &["--dest-tls-verify=false"]);
    let namespace = "node-buildkit";
    namespace_with_connector(cluster, namespace, &registry);

    // The Dockerfile names the registry itself: buildkitd reaches it through
    // the mirror the volume's buildkitd.toml sets (the registry wants a
    // password buildkitd never sees). The push names the proxy's path,
    // authorized by the token in the volume's config.json (DOCKER_CONFIG).
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: buildkit, namespace: {namespace}}}
spec:
  restartPolicy: Never
  containers:
    - name: buildkit
      image: {registry}/tools/buildkit:1
      securityContext: {{privileged: true}}
      env: [{{name: TMPDIR, value: /var/lib/buildkit/tmp}}]
      volumeMounts:
        - {{name: state, mountPath: /var/lib/buildkit}}
        - {{name: tmp, mountPath: /tmp}}
      command: ["/bin/busybox", "sh", "-ec"]
      args:
        - |
          /bin/busybox mkdir -p /var/lib/buildkit/tmp /tmp/context
          cd /tmp/context
          echo "FROM {registry}/demo/base:v1" >Dockerfile
          echo "COPY hello.txt /hello.txt" >>Dockerfile
          echo "built in a pod" >hello.txt
          socket=/var/lib/buildkit/buildkitd.sock
          buildkitd --config "$DOCKER_CONFIG/buildkitd.toml" --root /var/lib/buildkit \
            --addr unix://$socket --otel-socket-path /var/lib/buildkit/otel.sock \
            --oci-worker=true --oci-worker-binary=/usr/sbin/runc --oci-worker-snapshotter=native \
            --oci-worker-platform=linux/amd64 --containerd-worker=false >/tmp/buildkitd.log 2>&1 &
          for i in $(/bin/busybox seq 60); do [ -S $socket ] && break; /bin/busybox sleep 1; done
          at={PROXY_ADDRESS}/namespaces/{namespace}/connectors/local
          buildctl --addr unix://$socket build --frontend dockerfile.v0 \
            --local context=. --local dockerfile=. \
            --output type=image,name=$at/demo/built:v1,push=true \
            --metadata-file /tmp/metadata.json || {{ /bin/busybox cat /tmp/buildkitd.log; exit 1; }}
          echo; /bin/busybox cat /tmp/metadata.json; echo
  volumes:
    - {{name: state, emptyDir: {{}}}}
    - {{name: tmp, emptyDir: {{}}}}
"#,
        registry = registry.host_port()
    );
    let logs = run_pod(cluster, namespace, "buildkit", &pod, 180);
    // buildctl's metadata file: `"containerimage.digest": "sha256:…"`.
    let built = logs
        .split("\"containerimage.digest\":")
        .nth(1)
        .and_then(|rest| rest.split('"').nth(1))
        .unwrap_or_else(|| panic!("no image digest in {logs}"));
    assert_eq!(registry.manifest_digest("demo/built", "v1").await.unwrap(), built);
    // The base came from the registry (its manifest, fetched by the proxy
    // with the connector's password).
    let base = registry.access_log_lines("GET /v2/demo/base/manifests/");
    assert!(base.iter().any(|line| line.contains(" 200 ")), "{}", registry.logs());
    assert!(!logs.contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildah_in_a_pod_builds_from_a_base_and_pushes_through_the_proxy() {
    let (cluster, _install) = cluster().await;
    let registry = node_registry(cluster).await;
    // Debian's buildah with its libraries and signature policy, and
    // busybox. It runs as root in a privileged container (its storage is
    // vfs; without user namespaces, root is what lets it own image files).
    let rootfs = host_rootfs(&["/usr/bin/buildah", "/etc/containers/policy.json", "/bin/busybox"]);
    // buildah looks its user up.
    std::fs::write(rootfs.path().join("etc/passwd"), "root:x:0:0:root:/var/tmp:/bin/sh\n").unwrap();
    std::fs::write(rootfs.path().join("etc/group"), "root:x:0:\n").unwrap();
    push_tools(&registry, "tools/buildah:1", &[(rootfs.path(), "/")], "/usr/bin:/bin");
    push_stamp(&registry, "demo/base:v1", "the base\n", &["--dest-tls-verify=false"]);
    let namespace = "node-buildah";
    namespace_with_connector(cluster, namespace, &registry);

    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: buildah, namespace: {namespace}}}
spec:
  restartPolicy: Never
  containers:
    - name: buildah
      image: {registry}/tools/buildah:1
      securityContext: {{privileged: true}}
      env: [{{name: TMPDIR, value: /var/tmp}}, {{name: HOME, value: /var/tmp}}]
      volumeMounts:
        - {{name: storage, mountPath: /var/lib/containers}}
        - {{name: tmp, mountPath: /var/tmp}}
        - {{name: run, mountPath: /run}}
      command: ["/bin/busybox", "sh", "-ec"]
      args:
        - |
          at={PROXY_ADDRESS}/namespaces/{namespace}/connectors/local
          b() {{ buildah --storage-driver vfs "$@"; }}
          container=$(b from --quiet docker://$at/demo/base:v1)
          echo "built by buildah in a pod" >/var/tmp/hello.txt
          b copy $container /var/tmp/hello.txt /hello.txt
          b commit --quiet $container built
          b push --digestfile /var/tmp/digest built docker://$at/demo/by-buildah:v1
          echo "buildah $(/bin/busybox cat /var/tmp/digest)"
  volumes:
    - {{name: storage, emptyDir: {{}}}}
    - {{name: tmp, emptyDir: {{}}}}
    - {{name: run, emptyDir: {{}}}}
"#,
        registry = registry.host_port()
    );
    let logs = run_pod(cluster, namespace, "buildah", &pod, 180);
    let pushed = logs
        .lines()
        .find_map(|line| line.strip_prefix("buildah "))
        .unwrap_or_else(|| panic!("no digest in {logs}"));
    assert_eq!(registry.manifest_digest("demo/by-buildah", "v1").await.unwrap(), pushed);
    assert!(!logs.contains(PASSWORD));
}

/// The node's directory of `pod`'s connectors volume.
fn volume_on_the_node(cluster: &RealCluster, namespace: &str, pod: &str) -> std::path::PathBuf {
    let uid = cluster.kubectl_ok(
        &["-n", namespace, "get", "pod", pod, "-o", "jsonpath={.metadata.uid}"],
        None,
    );
    Path::new("/var/lib/kubelet/pods")
        .join(uid.trim())
        .join("volumes/kubernetes.io~csi/connectors-csi/mount")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ko_on_the_node_builds_and_pushes_through_the_proxy_with_a_pods_volume_and_environment() {
    // ko hands the build to the Go toolchain; in a pod it needs an image
    // with the toolchain (a quarter of a gigabyte), so it runs on the node,
    // in its network namespace, with exactly what a pod got: the injected
    // environment, its paths pointed at the pod's volume on the node.
    let (cluster, _install) = cluster().await;
    let registry = node_registry(cluster).await;
    let ko = testing::program::go_tool("github.com/google/ko");
    push_busybox(&registry);
    let namespace = "node-ko";
    namespace_with_connector(cluster, namespace, &registry);
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: holder, namespace: {namespace}}}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {{runAsUser: 1000, fsGroup: 2000}}
  containers:
    - name: holder
      image: {registry}/tools/busybox:1
      command: ["/bin/busybox", "sleep", "3600"]
"#,
        registry = registry.host_port()
    );
    apply_and_wait(cluster, namespace, &pod, "condition=Ready", "pod/holder");
    let volume = volume_on_the_node(cluster, namespace, "holder");
    let mount_path = cluster.kubectl_ok(
        &[
            "-n",
            namespace,
            "get",
            "pod",
            "holder",
            "-o",
            "jsonpath={.spec.containers[0].env[?(@.name==\"DOCKER_CONFIG\")].value}",
        ],
        None,
    );
    let injected = cluster.kubectl_ok(
        &[
            "-n",
            namespace,
            "get",
            "pod",
            "holder",
            "-o",
            "jsonpath={range .spec.containers[0].env[*]}{.name}={.value}{\"\\n\"}{end}",
        ],
        None,
    );
    let mut env: Vec<(String, String)> = injected
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| {
            (
                name.to_owned(),
                value.replace(mount_path.trim(), volume.to_str().unwrap()),
            )
        })
        .collect();
    assert!(env.iter().any(|(name, _)| name == "HTTPS_PROXY"), "{injected}");

    // A stdlib-only program on a base from the connector's registry.
    push_stamp(&registry, "demo/base:v1", "the base\n", &["--dest-tls-verify=false"]);
    let work = tempfile::tempdir().unwrap();
    let module = work.path().join("hello");
    std::fs::create_dir(&module).unwrap();
    std::fs::write(module.join("go.mod"), "module example.com/hello\n\ngo 1.26\n").unwrap();
    std::fs::write(
        module.join("main.go"),
        "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello from ko\") }\n",
    )
    .unwrap();
    let at = format!("{PROXY_ADDRESS}/namespaces/{namespace}/connectors/local");
    let go = Command::new("go").args(["env", "GOROOT", "GOCACHE"]).output().unwrap();
    let go = String::from_utf8(go.stdout).unwrap();
    let mut go = go.lines();
    let (goroot, gocache) = (go.next().unwrap().to_owned(), go.next().unwrap().to_owned());
    env.extend([
        ("PATH".to_owned(), format!("{goroot}/bin:/usr/bin:/bin")),
        ("HOME".to_owned(), work.path().to_str().unwrap().to_owned()),
        ("GOCACHE".to_owned(), gocache),
        ("GOPROXY".to_owned(), "off".to_owned()),
        ("KO_DOCKER_REPO".to_owned(), format!("{at}/demo/ko")),
        ("KO_DEFAULTBASEIMAGE".to_owned(), format!("{at}/demo/base:v1")),
    ]);
    let output = Command::new("ip")
        .args(["netns", "exec", &cluster.node_setting("netns"), "env", "-i"])
        .args(env.iter().map(|(name, value)| format!("{name}={value}")))
        .arg(&ko)
        .args(["build", "--bare", "--platform=linux/amd64", "."])
        .current_dir(&module)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "ko: {stderr}");
    assert!(!stderr.contains(PASSWORD));
    let built = String::from_utf8(output.stdout).unwrap();
    let digest = built
        .trim()
        .rsplit_once('@')
        .map(|(_, digest)| digest.to_owned())
        .unwrap_or_else(|| panic!("{built}"));
    assert_eq!(registry.manifest_digest("demo/ko", "latest").await.unwrap(), digest);

    // And kubelet runs what ko built, pulled through the proxy.
    let job = format!(
        r#"apiVersion: batch/v1
kind: Job
metadata: {{name: hello, namespace: {namespace}}}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers: [{{name: hello, image: "{registry}/demo/ko@{digest}"}}]
"#,
        registry = registry.host_port()
    );
    apply_and_wait(cluster, namespace, &job, "condition=Complete", "job/hello");
    let logs = cluster.kubectl_ok(&["-n", namespace, "logs", "job/hello"], None);
    assert_eq!(logs.trim(), "hello from ko");
}

/// Makes `connector` of `namespace` trust the CA of `tls` (a Secret named
/// by `caCertSecretRef`).
fn trust_registry_ca(cluster: &RealCluster, namespace: &str, connector: &str, tls: &testing::TestTls) {
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
            connector,
            "--type=merge",
            "-p",
            r#"{"spec": {"caCertSecretRef": {"name": "registry-ca"}}}"#,
        ],
        None,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_documents_volumes_and_snippets_work_unchanged_for_a_non_root_pod() {
    use testing::TestTls;

    let (cluster, _install) = cluster().await;
    let netns = cluster.node_setting("netns");
    let ip: std::net::IpAddr = cluster.node_setting("node_ip").parse().unwrap();
    let tls = TestTls::generate(&[], &[ip]).unwrap();
    let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD).tls(&tls).in_netns(&netns, ip))
        .await
        .unwrap();
    let crane = testing::program::go_tool("github.com/google/go-containerregistry/cmd/crane");
    let rootfs = host_rootfs(&["/usr/bin/skopeo", "/bin/busybox"]);
    // busybox's applets by name, as a shell image has them.
    std::fs::create_dir_all(rootfs.path().join("usr/bin")).unwrap();
    for applet in ["sh", "cat", "grep", "stat", "tr"] {
        std::os::unix::fs::symlink("/bin/busybox", rootfs.path().join("usr/bin").join(applet)).unwrap();
    }
    let certs = tempfile::tempdir().unwrap();
    std::fs::write(certs.path().join("ca.crt"), tls.ca_pem()).unwrap();
    let dest = ["--dest-cert-dir", certs.path().to_str().unwrap()];
    push_image_with(
        &registry,
        "tools/clients:1",
        None,
        &[(rootfs.path(), "/"), (&crane, "/usr/bin/crane")],
        &["--env", "PATH=/usr/bin:/bin"],
        &dest,
    );
    push_stamp(&registry, "demo/source:v1", "seeds\n", &dest);
    let digest = registry.manifest_digest("demo/source", "v1").await.unwrap();
    let namespace = "node-seeds";
    namespace_with_connector_named(cluster, namespace, "harbor", &registry);
    trust_registry_ca(cluster, namespace, "harbor", &tls);

    // The seeds' volumes and snippets as they are; the pod runs as a user
    // of its own, with no fsGroup, and mounts each volume where it likes.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seeds");
    let fixture = |name: &str| std::fs::read_to_string(fixtures.join(name)).unwrap();
    let volumes: String = fixture("volumes.yaml")
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| format!("    {line}\n"))
        .collect();
    let snippet = |name: &str| -> String {
        fixture(name)
            .replace("{mount-path}", "opt/proxyconfig")
            .lines()
            .map(|line| format!("          {line}\n"))
            .collect()
    };
    let at = format!("{PROXY_ADDRESS}/namespaces/{namespace}/connectors/harbor");
    // Seed 001: the connector's status names its own Service, and
    // reverse-mode references start with that host.
    let service_host = format!("c-harbor.{namespace}.svc.cluster.local");
    let mut url = String::new();
    for _ in 0..60 {
        url = cluster.kubectl_ok(
            &[
                "-n",
                namespace,
                "get",
                "connector",
                "harbor",
                "-o",
                "jsonpath={.status.proxy.httpAddress.url}",
            ],
            None,
        );
        if url == format!("http://{service_host}") {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(url, format!("http://{service_host}"));
    let by_service = format!("{service_host}/namespaces/{namespace}/connectors/harbor");
    // NB: this cluster runs no DNS; the pod's hosts file gives the answer
    // cluster DNS would (the ExternalName's target, the proxy's ClusterIP).
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: seeds, namespace: {namespace}}}
spec:
  restartPolicy: Never
  hostAliases: [{{ip: "{PROXY_ADDRESS}", hostnames: ["{service_host}"]}}]
  securityContext: {{runAsUser: 1000, runAsGroup: 1000, runAsNonRoot: true}}
  containers:
    - name: client
      image: {registry}/tools/clients:1
      env: [{{name: HOME, value: /tmp}}, {{name: TMPDIR, value: /tmp}}]
      command: ["/bin/busybox", "sh", "-ec"]
      args:
        - |
{forward}          # Forward mode: the registry by its own name, the proxy's CA from the volume.
          skopeo --insecure-policy inspect --raw --cert-dir /opt/proxyconfig docker://{registry}/demo/source:v1 >/tmp/forward.json
          grep -q schemaVersion /tmp/forward.json
{source}          # Reverse mode: the docker-config volume's config.json.
          skopeo --insecure-policy copy -q --authfile /home/user/.docker/config.json \
            docker://{at}/demo/source:v1 docker://{at}/demo/by-seed:v1
          # The status address (plain HTTP, as the docs' insecure registry).
          skopeo --insecure-policy copy -q --authfile /home/user/.docker/config.json --dest-tls-verify=false \
            docker://{at}/demo/source:v1 docker://{by_service}/demo/by-service:v1
          grep -q 'ca = \["/etc/buildkit/ca.crt"\]' /etc/buildkit/buildkitd.toml
          echo "token $(stat -L -c '%a %u' /opt/proxyconfig/context.token /home/user/.docker/config.json | tr '\n' ' ')"
          echo "seeds-ok $SSL_CERT_FILE"
      volumeMounts:
        - {{name: proxyconfig, mountPath: /opt/proxyconfig}}
        - {{name: docker-config, mountPath: /home/user/.docker}}
        - {{name: buildkitd-config, mountPath: /etc/buildkit}}
        - {{name: tmp, mountPath: /tmp}}
  volumes:
{volumes}    - {{name: tmp, emptyDir: {{}}}}
"#,
        registry = registry.host_port(),
        forward = snippet("forward-proxy.sh"),
        source = snippet("source-env.sh"),
    );
    let logs = run_pod(cluster, namespace, "seeds", &pod, 150);
    assert!(logs.contains("seeds-ok /opt/proxyconfig/ca-bundle.crt"), "{logs}");
    assert_eq!(registry.manifest_digest("demo/by-seed", "v1").await.unwrap(), digest);
    assert_eq!(registry.manifest_digest("demo/by-service", "v1").await.unwrap(), digest);
    // The token files belong to the pod's user and group alone.
    assert!(logs.contains("token 440 1000 440 1000 "), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_with_image_pull_secrets_for_the_registry_still_pulls_through_the_proxy() {
    // The imagePullSecrets practice of ../shared/docs/seeds/004: a
    // docker-registry Secret for the registry's own host, on the pod. After
    // the rewrite kubelet pulls from the proxy's address, for which the
    // Secret has no entry: it is not used (a wrong password changes
    // nothing) and can go.
    let (cluster, _install) = cluster().await;
    let namespace = "node-pull-secrets";
    let registry = busybox_namespace(cluster, namespace).await;
    for (secret, password) in [("registry-secret", PASSWORD), ("stale-secret", "an-old-password")] {
        cluster.kubectl_ok(
            &[
                "-n",
                namespace,
                "create",
                "secret",
                "docker-registry",
                secret,
                &format!("--docker-server={}", registry.host_port()),
                &format!("--docker-username={USER}"),
                &format!("--docker-password={password}"),
            ],
            None,
        );
        let pod = format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: with-{secret}, namespace: {namespace}}}
spec:
  restartPolicy: Never
  imagePullSecrets: [{{name: {secret}}}]
  containers:
    - name: main
      image: {registry}/tools/busybox:1
      command: ["/bin/busybox", "true"]
"#,
            registry = registry.host_port()
        );
        apply_and_wait(
            cluster,
            namespace,
            &pod,
            "jsonpath={.status.phase}=Succeeded",
            &format!("pod/with-{secret}"),
        );
        let image = cluster.kubectl_ok(
            &[
                "-n",
                namespace,
                "get",
                "pod",
                &format!("with-{secret}"),
                "-o",
                "jsonpath={.spec.containers[0].image}",
            ],
            None,
        );
        assert!(image.starts_with(PULL_ADDRESS), "{image}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_pod_keeps_its_egress_to_other_https_hosts_and_is_refused_private_addresses() {
    use testing::TestTls;

    let (cluster, _install) = cluster().await;
    let netns = cluster.node_setting("netns");
    let ip: std::net::IpAddr = cluster.node_setting("node_ip").parse().unwrap();
    // The connector's registry, and a stand-in for a public HTTPS host that
    // no connector names (the install's egress policy allows the node's
    // address, as it would a public one).
    let registry = node_registry(cluster).await;
    let tls = TestTls::generate(&[], &[ip]).unwrap();
    let public = Registry::start(RegistryOptions::anonymous().tls(&tls).in_netns(&netns, ip))
        .await
        .unwrap();
    let crane = testing::program::go_tool("github.com/google/go-containerregistry/cmd/crane");
    let rootfs = host_rootfs(&["/bin/busybox"]);
    push_tools(
        &registry,
        "tools/crane:1",
        &[(rootfs.path(), "/"), (&crane, "/usr/bin/crane")],
        "/usr/bin:/bin",
    );
    push_image_tls(
        &public,
        &tls,
        "demo/public:v1",
        &[(Path::new("/bin/busybox"), "/busybox")],
    );
    let digest = public.manifest_digest("demo/public", "v1").await.unwrap();
    let namespace = "node-egress";
    namespace_with_connector(cluster, namespace, &registry);
    let ca = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: public-ca, namespace: {namespace}}}\ndata:\n  ca.crt: |\n{}",
        tls.ca_pem().lines().map(|l| format!("    {l}\n")).collect::<String>()
    );
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&ca));

    // The pod trusts only the public host's own CA: it can reach it only
    // through a blind tunnel, never through the proxy's interception.
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: egress, namespace: {namespace}}}
spec:
  restartPolicy: Never
  securityContext: {{runAsUser: 1000, fsGroup: 2000}}
  containers:
    - name: egress
      image: {registry}/tools/crane:1
      env: [{{name: SSL_CERT_FILE, value: /public/ca.crt}}]
      volumeMounts: [{{name: public-ca, mountPath: /public}}, {{name: tmp, mountPath: /tmp}}]
      command: ["/bin/busybox", "sh", "-ec"]
      args:
        - |
          echo "public $(crane digest {public}/demo/public:v1)"
          # The metadata address, through the proxy (NO_PROXY sends only
          # the private ranges direct).
          if crane digest 169.254.169.254:443/x/y:z 2>/tmp/error; then echo "reached the metadata address"; exit 1; fi
          /bin/busybox cat /tmp/error
          /bin/busybox grep -q Forbidden /tmp/error && echo refused-private
  volumes:
    - {{name: public-ca, configMap: {{name: public-ca}}}}
    - {{name: tmp, emptyDir: {{}}}}
"#,
        registry = registry.host_port(),
        public = public.host_port()
    );
    let logs = run_pod(cluster, namespace, "egress", &pod, 120);
    assert!(logs.contains(&format!("public {digest}")), "{logs}");
    assert!(logs.contains("refused-private"), "{logs}");
    let env = cluster.kubectl_ok(
        &[
            "-n",
            namespace,
            "get",
            "pod",
            "egress",
            "-o",
            "jsonpath={.spec.containers[0].env[?(@.name==\"HTTPS_PROXY\")].value}",
        ],
        None,
    );
    assert!(env.contains(":3128"), "the pod got the injected proxy: {env}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_credential_provider_kubelet_pulls_as_the_pods_service_account() {
    let (cluster, _install) = cluster().await;
    let registry = node_registry(cluster).await;
    push_busybox(&registry);
    // The harness's kubelet runs `connectors credential-provider` for this
    // namespace's images only (e2e/node/node.bash).
    let namespace = "node-hardened";
    namespace_with_connector(cluster, namespace, &registry);
    // Not opted in: no rewrite, no volume, and the proxy counts none of its
    // pods for the node rule, so only a pod's own token can authorize
    // these pulls.
    cluster.kubectl_ok(
        &["label", "namespace", namespace, "connectors.cpaas.io/proxy-inject-"],
        None,
    );
    let rbac = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/credential-provider.yaml");
    cluster.kubectl_ok(&["apply", "-f", rbac.to_str().unwrap()], None);
    cluster.kubectl_ok(&["-n", namespace, "create", "serviceaccount", "stranger"], None);
    let image = format!("{PULL_ADDRESS}/namespaces/{namespace}/connectors/local/tools/busybox:1");
    let pod = |name: &str, service_account: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  serviceAccountName: {service_account}
  restartPolicy: Never
  containers:
    - name: app
      image: {image}
      imagePullPolicy: Always
      command: ["/bin/busybox", "echo", "pulled as the pod"]
"#
        )
    };

    // The default ServiceAccount may use the connector: its pull passes.
    let logs = run_pod(cluster, namespace, "allowed", &pod("allowed", "default"), 120);
    assert_eq!(logs.trim(), "pulled as the pod");
    let written = cluster.kubectl_ok(
        &[
            "-n",
            namespace,
            "get",
            "pod",
            "allowed",
            "-o",
            "jsonpath={.spec.containers[0].image}",
        ],
        None,
    );
    assert_eq!(written, image, "the pod was not mutated");

    // A ServiceAccount without the RoleBinding is refused, by name.
    cluster.kubectl_ok(
        &["-n", namespace, "apply", "-f", "-"],
        Some(&pod("refused", "stranger")),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let reason = cluster.kubectl_ok(
            &[
                "-n",
                namespace,
                "get",
                "pod",
                "refused",
                "-o",
                "jsonpath={.status.containerStatuses[0].state.waiting.reason}",
            ],
            None,
        );
        if reason == "ErrImagePull" || reason == "ImagePullBackOff" {
            break;
        }
        let events = cluster.kubectl_ok(&["-n", namespace, "get", "events"], None);
        assert!(
            std::time::Instant::now() < deadline,
            "the refused pull never failed: {reason}\n{events}"
        );
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let events = cluster.kubectl_ok(&["-n", namespace, "get", "events"], None);
    assert!(events.contains("403"), "{events}");
    let proxy_logs = cluster.kubectl_ok(
        &[
            "-n",
            "connectors-system",
            "logs",
            "-l",
            "app.kubernetes.io/component=proxy",
            "--tail=-1",
        ],
        None,
    );
    let refusal = format!("system:serviceaccount:{namespace}:stranger may not use connector {namespace}/local");
    assert!(
        proxy_logs.contains(&refusal),
        "no refusal of the stranger in the proxy's logs"
    );
    assert!(!proxy_logs.contains(PASSWORD), "the proxy logged the password");
}

/// `connectors doctor` on the cluster, with the Connectors of `namespace`
/// only (other tests leave Connectors whose registries are gone): (exit
/// code, report).
fn doctor(cluster: &RealCluster, namespace: &str) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_connectors"))
        .args(["doctor", "--connector-namespace", namespace, "--kubeconfig"])
        .arg(&cluster.kubeconfig)
        .output()
        .unwrap();
    (
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Runs doctor until it says the install is healthy (three minutes at
/// most); the last report.
async fn doctor_until_healthy(cluster: &RealCluster, namespace: &str) -> String {
    let mut report = String::new();
    for _ in 0..90 {
        let (code, text) = doctor(cluster, namespace);
        report = text;
        if code == Some(0) {
            return report;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    panic!("doctor never found the install healthy:\n{report}");
}

/// Waits (at most 60 s) until the API server admits `yaml` in a server-side
/// dry run. A fresh install's webhook Service gets a new ClusterIP, and
/// kube-proxy programs its endpoints a moment after the pods are ready
/// (doctor reaches the pods through the API server, not the ClusterIP):
/// until then admission is refused with `connection refused`.
async fn admitted_soon(cluster: &RealCluster, namespace: &str, yaml: &str) {
    let mut refusal = String::new();
    for _ in 0..60 {
        let dry_run = cluster.kubectl(&["-n", namespace, "apply", "--dry-run=server", "-f", "-"], Some(yaml));
        if dry_run.status.success() {
            return;
        }
        refusal = String::from_utf8_lossy(&dry_run.stderr).into_owned();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("the API server never admitted the pod:\n{refusal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_install_is_named_by_doctor_with_each_fix_and_a_healthy_one_passes() {
    let (cluster, _alone) = cluster_alone().await;
    let namespace = "node-doctor";
    let healthy = doctor_until_healthy(cluster, namespace).await;
    for line in [
        "ok    webhook certificate (secret connectors-webhook-tls): verifies against the caBundle",
        "ok    CSI on nodes (csinode): connectors-csi registered with kubelet on all 1 node(s)",
        "ok    node pull endpoint for 127.0.0.1:7480 (daemonset connectors-node-pull): 1 of 1 ready",
        "ok    proxy HTTPS for node pulls reachable (service connectors-proxy): /healthz answers through the Service",
        " 0 failed",
    ] {
        assert!(healthy.contains(line), "{line:?} in:\n{healthy}");
    }

    // Three breakages: no proxy replica, the CSI plugin scheduled on no
    // node, and a Connector whose Secret does not exist.
    let replicas = cluster.kubectl_ok(
        &[
            "-n",
            "connectors-system",
            "get",
            "deployment",
            "connectors-proxy",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
        None,
    );
    cluster.kubectl_ok(
        &[
            "-n",
            "connectors-system",
            "scale",
            "deployment",
            "connectors-proxy",
            "--replicas=0",
        ],
        None,
    );
    cluster.kubectl_ok(
        &[
            "-n",
            "connectors-csi",
            "patch",
            "daemonset",
            "connectors-csi",
            "-p",
            r#"{"spec":{"template":{"spec":{"nodeSelector":{"example.com/no-such-node":"true"}}}}}"#,
        ],
        None,
    );
    cluster.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&format!(
            r#"apiVersion: v1
kind: Namespace
metadata: {{name: {namespace}}}
---
apiVersion: connectors.alauda.io/v1alpha1
kind: Connector
metadata: {{name: harbor, namespace: {namespace}}}
spec:
  connectorClassName: oci
  address: "http://198.18.0.2:5000"
  auth: {{name: basicAuth, secretRef: {{name: missing-robot}}}}
"#
        )),
    );
    let expected = [
        (
            "FAIL  proxy (deployment connectors-proxy): scaled to 0 replicas",
            "fix: kubectl -n connectors-system scale deployment connectors-proxy",
        ),
        (
            "FAIL  proxy reachable (service connectors-proxy): the Service has no ready endpoint",
            "fix: kubectl -n connectors-system get endpointslices -l kubernetes.io/service-name=connectors-proxy",
        ),
        (
            "FAIL  CSI on nodes (csinode): connectors-csi not registered on 1 of 1 node(s)",
            "check the DaemonSet's tolerations and nodeSelector",
        ),
        (
            "FAIL  Connector node-doctor/harbor: not Ready: SecretNotFound",
            "put a valid credential in the Secret spec.auth.secretRef names",
        ),
    ];
    // NB: the CSI plugin's registration goes a little after its pod: wait
    // for every breakage, not for a number of failed checks.
    let mut report = String::new();
    for _ in 0..60 {
        let (code, text) = doctor(cluster, namespace);
        report = text;
        if code == Some(3) && expected.iter().all(|(line, _)| report.contains(line)) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    for (line, fix) in expected {
        assert!(report.contains(line), "{line:?} in:\n{report}");
        assert!(report.contains(fix), "{fix:?} in:\n{report}");
    }
    assert!(report.contains("problem(s) found"), "{report}");

    // Undone, the install is healthy again.
    cluster.kubectl_ok(&["delete", "namespace", namespace, "--wait=false"], None);
    cluster.kubectl_ok(
        &[
            "-n",
            "connectors-csi",
            "patch",
            "daemonset",
            "connectors-csi",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/spec/template/spec/nodeSelector/example.com~1no-such-node"}]"#,
        ],
        None,
    );
    cluster.kubectl_ok(
        &[
            "-n",
            "connectors-system",
            "scale",
            "deployment",
            "connectors-proxy",
            &format!("--replicas={replicas}"),
        ],
        None,
    );
    for (namespace, object) in [
        ("connectors-system", "deployment/connectors-proxy"),
        ("connectors-csi", "daemonset/connectors-csi"),
    ] {
        cluster.kubectl_ok(&["-n", namespace, "rollout", "status", "--timeout=180s", object], None);
    }
    cluster.kubectl_ok(
        &[
            "wait",
            "--for=delete",
            &format!("namespace/{namespace}"),
            "--timeout=120s",
        ],
        None,
    );
    doctor_until_healthy(cluster, namespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helm_uninstall_while_a_pod_uses_the_volume_leaves_nothing_terminating_and_a_reinstall_works() {
    let (cluster, _alone) = cluster_alone().await;
    let namespace = "node-uninstall";
    let registry = busybox_namespace(cluster, namespace).await;
    let sleeper = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: sleeper, namespace: {namespace}}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
    - name: sleeper
      image: {registry}/tools/busybox:1
      command: ["/bin/busybox", "sleep", "3600"]
"#,
        registry = registry.host_port()
    );
    apply_and_wait(cluster, namespace, &sleeper, "condition=Ready", "pod/sleeper");
    let volume = volume_on_the_node(cluster, namespace, "sleeper");
    assert!(volume.exists());

    // The uninstall: the pre-delete hook stops admission and evicts the pod
    // while the CSI plugin can still unmount its volume.
    let started = std::time::Instant::now();
    helm(cluster, &["uninstall", "connectors", "--wait", "--timeout=5m"]);
    let uninstall = started.elapsed();
    let left = cluster.kubectl_ok(&["-n", namespace, "get", "pods", "-o", "name"], None);
    assert!(left.trim().is_empty(), "pods left after the uninstall: {left}");
    assert!(!volume.exists(), "{} outlives the pod", volume.display());
    for install_namespace in ["connectors-system", "connectors-csi"] {
        cluster.kubectl_ok(
            &[
                "wait",
                "--for=delete",
                &format!("namespace/{install_namespace}"),
                "--timeout=180s",
            ],
            None,
        );
    }
    let terminating = cluster.kubectl_ok(
        &[
            "get",
            "pods",
            "-A",
            "-o",
            "jsonpath={.items[?(@.metadata.deletionTimestamp)].metadata.name}",
        ],
        None,
    );
    assert!(terminating.trim().is_empty(), "pods stuck Terminating: {terminating}");
    // The CRDs (and so the Connectors) stay, by the chart's policy.
    cluster.kubectl_ok(&["-n", namespace, "get", "connector", "local"], None);

    // The same values install again, and a pod pulls through it.
    let values = cluster.dir.join("values.yaml");
    helm(
        cluster,
        &[
            "install",
            "connectors",
            "charts/connectors",
            "--values",
            values.to_str().unwrap(),
            "--wait",
            "--timeout=5m",
        ],
    );
    cluster.kubectl_ok(
        &[
            "-n",
            "connectors-csi",
            "rollout",
            "status",
            "--timeout=180s",
            "daemonset/connectors-node-pull",
        ],
        None,
    );
    let report = doctor_until_healthy(cluster, namespace).await;
    let pod = volume_checking_pod(namespace, "again", &registry);
    admitted_soon(cluster, namespace, &pod).await;
    assert_eq!(
        run_pod(cluster, namespace, "again", &pod, 180).trim(),
        "again",
        "{report}"
    );
    println!("helm uninstall with a pod on the volume: {uninstall:?}");
}
