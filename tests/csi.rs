//! `connectors csi` beside `connectors proxy`, as a pod would use them: the
//! plugin publishes a volume for a pod with its ServiceAccount token, and
//! real skopeo, given nothing but the volume's `config.json` as its auth
//! file, pushes and pulls through the reverse proxy to a real registry whose
//! password only the proxy's store holds. Digests are equal end to end. In
//! cluster mode (connectors from the API server, a SubjectAccessReview per
//! mount) the plugin runs against the real control plane: `tests/e2e.rs`.

mod support;

use std::path::Path;
use std::time::Duration;

use csi::proto::node_client::NodeClient;
use csi::proto::{NodePublishVolumeRequest, NodeUnpublishVolumeRequest};
use support::Process;
use testing::{CopyOptions, InspectOptions, OciLayout, Registry, RegistryAccess, RegistryOptions, Skopeo, StoreYaml};

const USER: &str = "robot$csi+ci";
const PASSWORD: &str = "csi-registry-password-5d2e";
const POD_TOKEN: &str = "csi-pod-token-first-81b3";
const NEXT_POD_TOKEN: &str = "csi-pod-token-second-c4a0";

/// `connectors csi` on `socket` with connectors from `store`, a fresh
/// proxy CA (in `dir`) and `proxy_address`, once it listens.
/// Starts the plugin; `ready` is the log message to wait for.
fn start_plugin(dir: &Path, socket: &Path, store: &Path, proxy_address: &str, extra: &[&str], ready: &str) -> Process {
    let ca = certs::CertificateAuthority::generate("connectors csi test CA", Duration::from_secs(3600)).unwrap();
    let ca_path = dir.join("proxy-ca.crt");
    std::fs::write(&ca_path, ca.cert_pem()).unwrap();
    let endpoint = format!("unix://{}", socket.display());
    let mut args = vec![
        "csi",
        "--endpoint",
        &endpoint,
        "--node-id",
        "node-a",
        "--store",
        store.to_str().unwrap(),
        "--proxy-ca",
        ca_path.to_str().unwrap(),
        "--proxy-address",
        proxy_address,
        "--forward-proxy",
        "127.0.0.1:3128",
    ];
    args.extend_from_slice(extra);
    Process::start_until(&args, ready)
}

/// The volume of pod `team/builder-0` naming `lab`.
fn publish_request(target: &Path, token: &str) -> NodePublishVolumeRequest {
    support::csi::publish_request(target, token, ("team", "builder-0", "builder"), "lab")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_and_pulls_through_the_proxy_with_only_the_volume_auth_file() {
    let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.yaml");
    std::fs::write(
        &store,
        StoreYaml::new("team")
            .basic_auth("robot", USER, PASSWORD)
            .connector("lab", &registry.url(), "robot", None)
            .build(),
    )
    .unwrap();
    // Only the first token is a known caller; the second stands for a token
    // the proxy no longer accepts.
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(
        &tokens,
        format!("{POD_TOKEN},system:serviceaccount:team:builder,uid-1,\"system:serviceaccounts\"\n"),
    )
    .unwrap();
    let (proxy, proxy_addr) = Process::start(
        &[
            "proxy",
            // NB: the registries of these tests listen on loopback.
            "--egress-allow",
            "127.0.0.0/8",
            "--store",
            store.to_str().unwrap(),
            "--token-auth-file",
            tokens.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        "proxy listening",
    );

    let socket = dir.path().join("plugins/connectors-csi/csi.sock");
    let plugin = start_plugin(
        dir.path(),
        &socket,
        &store,
        &proxy_addr.to_string(),
        &["--pull-plain-http", "--health-listen", "127.0.0.1:0"],
        "csi health and metrics endpoint listening",
    );

    // kubelet publishes the pod's volume.
    let channel = csi::client::connect_unix(socket.clone(), Duration::from_secs(20))
        .await
        .unwrap();
    let mut node = NodeClient::new(channel);
    let target = dir
        .path()
        .join("kubelet/pods/builder-0/volumes/kubernetes.io~csi/connectors-csi/mount");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    node.node_publish_volume(publish_request(&target, POD_TOKEN))
        .await
        .unwrap();
    // The plugin's default: the volume is a tmpfs of its own, so the token
    // never reaches the disk.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mounted = mountinfo
        .lines()
        .find(|line| line.split(' ').nth(4) == target.to_str())
        .unwrap_or_else(|| panic!("nothing is mounted on the volume: {mountinfo}"));
    assert!(mounted.contains(" - tmpfs "), "{mounted}");
    let auth_file = target.join("config.json");
    let auth_file = auth_file.to_str().unwrap();

    // A malformed token attribute is refused, and logged without the token.
    let mut malformed = publish_request(&dir.path().join("elsewhere"), POD_TOKEN);
    malformed.volume_context.insert(
        "csi.storage.k8s.io/serviceAccount.tokens".into(),
        format!(r#"{{"connectors-proxy":"{POD_TOKEN}"}}"#),
    );
    let refused = node.node_publish_volume(malformed).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(!refused.message().contains(POD_TOKEN));

    // Push and pull as the pod: the auth file is the only credential.
    let reference = format!("docker://{proxy_addr}/namespaces/team/connectors/lab/csi/app:v1");
    let layout = OciLayout::new(&dir.path().join("layout")).unwrap();
    let image = layout.add_image("v1", &[96 * 1024, 4 * 1024], 7).unwrap();
    let skopeo = Skopeo::new().expect("skopeo is installed (bash .ci/install)");
    skopeo
        .copy(
            &layout.reference("v1"),
            &reference,
            &CopyOptions::default()
                .dest(RegistryAccess::plain_http())
                .env("REGISTRY_AUTH_FILE", auth_file),
        )
        .await
        .unwrap();
    let inspecting = InspectOptions::from(RegistryAccess::plain_http()).env("REGISTRY_AUTH_FILE", auth_file);
    let inspected = skopeo.inspect(&reference, &inspecting).await.unwrap();
    assert_eq!(inspected["Digest"], image.manifest.digest.as_str());
    assert_eq!(
        registry.manifest_digest("csi/app", "v1").await.unwrap(),
        image.manifest.digest
    );
    let pulled = OciLayout::new(&dir.path().join("pulled")).unwrap();
    let mut pull = CopyOptions::default()
        .src(RegistryAccess::plain_http())
        .env("REGISTRY_AUTH_FILE", auth_file);
    pull.preserve_digests = true;
    skopeo.copy(&reference, &pulled.reference("v1"), &pull).await.unwrap();

    // A republish swaps the token in the same auth file: the proxy now sees
    // a token it does not know and refuses, so the file really is what
    // authenticates the pod.
    node.node_publish_volume(publish_request(&target, NEXT_POD_TOKEN))
        .await
        .unwrap();
    let refused = skopeo.inspect(&reference, &inspecting).await.unwrap_err();
    assert!(
        refused.to_string().contains("401") || refused.to_string().to_lowercase().contains("unauthorized"),
        "{refused}"
    );

    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: "csi-2b0c7f9e".into(),
        target_path: target.to_string_lossy().into_owned(),
    })
    .await
    .unwrap();
    assert!(!target.exists());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(target.to_str().unwrap()),
        "unpublish unmounts the volume"
    );

    // Two publications, a refused one and an unpublication, counted.
    let health = plugin.addr().expect("the health listener's address");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = reqwest::get(format!("http://{health}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        r#"connectors_csi_publishes_total{result="published"} 2"#,
        r#"connectors_csi_publishes_total{result="invalid"} 1"#,
        r#"connectors_csi_unpublishes_total{result="removed"} 1"#,
        "connectors_csi_publish_duration_seconds_count 3",
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
    assert!(!metrics.contains(POD_TOKEN));

    let plugin_logs = plugin.log_text();
    assert!(plugin_logs.contains("volume published"), "{plugin_logs}");
    for token in [POD_TOKEN, NEXT_POD_TOKEN] {
        assert!(!plugin_logs.contains(token), "the plugin logged a token");
    }
    assert!(!proxy.log_text().contains(PASSWORD));
}

#[test]
fn csi_sanity_passes_every_test_a_node_only_ephemeral_plugin_answers() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.yaml");
    std::fs::write(&store, StoreYaml::new("team").build()).unwrap();
    let socket = dir.path().join("csi.sock");
    let _plugin = start_plugin(dir.path(), &socket, &store, "127.0.0.1:5080", &[], "csi listening");
    // The Identity and Node specs; the Controller, snapshot, group and
    // expansion specs test services this plugin does not offer (no
    // controller, inline ephemeral volumes only), and NodeUnpublishVolume's
    // "should remove target path" first creates a volume with the
    // Controller's CreateVolume.
    let output = std::process::Command::new(testing::program::go_tool(
        "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity",
    ))
    .arg("--csi.endpoint")
    .arg(&socket)
    .arg("--csi.mountdir")
    .arg(dir.path().join("target"))
    .arg("--csi.stagingdir")
    .arg(dir.path().join("staging"))
    .args(["--ginkgo.no-color", "--ginkgo.focus", "Node Service|Identity Service"])
    .args(["--ginkgo.skip", "should remove target path"])
    .output()
    .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    let summary = report
        .lines()
        .find(|line| line.contains(" Passed | "))
        .unwrap_or_else(|| panic!("no summary: {report}"));
    assert!(output.status.success(), "{summary}\n{report}");
    let passed: u32 = summary
        .split_whitespace()
        .find_map(|word| word.parse().ok())
        .expect("a count");
    assert!(summary.contains("| 0 Failed |"), "{summary}");
    assert!(passed >= 10, "{summary}");
}
