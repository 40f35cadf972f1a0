//! `connectors csi` beside `connectors proxy`, as a pod would use them: the
//! plugin publishes a volume for a pod with its ServiceAccount token, and
//! real skopeo, given nothing but the volume's `config.json` as its auth
//! file, pushes and pulls through the reverse proxy to a real registry whose
//! password only the proxy's store holds. Digests are equal end to end. In
//! cluster mode the plugin reads connectors from the API server and asks a
//! SubjectAccessReview per mount.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use csi::proto::node_client::NodeClient;
use csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use csi::proto::{NodePublishVolumeRequest, NodeUnpublishVolumeRequest, VolumeCapability};
use serde_json::{Value, json};
use support::Process;
use testing::apiserver::{CONNECTORS, FakeApiServer, NAMESPACES, Review};
use testing::{CopyOptions, InspectOptions, OciLayout, Registry, RegistryAccess, RegistryOptions, Skopeo, StoreYaml};

const USER: &str = "robot$csi+ci";
const PASSWORD: &str = "csi-registry-password-5d2e";
const POD_TOKEN: &str = "csi-pod-token-first-81b3";
const NEXT_POD_TOKEN: &str = "csi-pod-token-second-c4a0";

fn publish_request(target: &Path, token: &str) -> NodePublishVolumeRequest {
    let context: HashMap<String, String> = [
        ("csi.storage.k8s.io/ephemeral", "true".to_owned()),
        ("csi.storage.k8s.io/pod.name", "builder-0".to_owned()),
        ("csi.storage.k8s.io/pod.namespace", "team".to_owned()),
        (
            "csi.storage.k8s.io/pod.uid",
            "2b0c7f9e-0000-4000-8000-000000000002".to_owned(),
        ),
        ("csi.storage.k8s.io/serviceAccount.name", "builder".to_owned()),
        (
            "csi.storage.k8s.io/serviceAccount.tokens",
            serde_json::json!({"connectors-proxy": {"token": token, "expirationTimestamp": "2030-01-01T00:00:00Z"}})
                .to_string(),
        ),
        ("connectors", "lab".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    NodePublishVolumeRequest {
        volume_id: "csi-2b0c7f9e".into(),
        target_path: target.to_string_lossy().into_owned(),
        volume_capability: Some(VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode { mode: 2 }),
        }),
        readonly: true,
        volume_context: context,
        ..Default::default()
    }
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

    let ca = certs::CertificateAuthority::generate("connectors csi test CA", Duration::from_secs(3600)).unwrap();
    let ca_path = dir.path().join("proxy-ca.crt");
    std::fs::write(&ca_path, ca.cert_pem()).unwrap();
    let socket = dir.path().join("plugins/connectors-csi/csi.sock");
    let endpoint = format!("unix://{}", socket.display());
    let pull_address = proxy_addr.to_string();
    let plugin = Process::start_until(
        &[
            "csi",
            "--endpoint",
            &endpoint,
            "--node-id",
            "node-a",
            "--store",
            store.to_str().unwrap(),
            "--proxy-ca",
            ca_path.to_str().unwrap(),
            "--pull-address",
            &pull_address,
            "--forward-proxy",
            "127.0.0.1:3128",
            "--pull-plain-http",
        ],
        "csi listening",
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

    let plugin_logs = plugin.log_text();
    assert!(plugin_logs.contains("volume published"), "{plugin_logs}");
    for token in [POD_TOKEN, NEXT_POD_TOKEN] {
        assert!(!plugin_logs.contains(token), "the plugin logged a token");
    }
    assert!(!proxy.log_text().contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster_mode_a_mount_needs_rbac_on_each_connector_it_names() {
    let api = FakeApiServer::start(&[CONNECTORS, NAMESPACES]).await;
    api.apply(
        NAMESPACES,
        json!({"metadata": {"name": "team", "labels": {"kubernetes.io/metadata.name": "team"}}}),
    );
    api.apply(
        CONNECTORS,
        json!({
            "metadata": {"name": "lab", "namespace": "team"},
            "spec": {"connectorClassName": "oci", "address": "https://registry.test", "auth": {"name": "basicAuth", "secretRef": {"name": "robot"}}},
        }),
    );
    // RBAC: team/builder may use team/lab through the proxy subresource.
    api.set_reviewer(Review::SubjectAccess, |review: &Value| {
        let expected = json!({
            "group": "connectors.alauda.io", "resource": "connectors", "subresource": "proxy",
            "verb": "get", "namespace": "team", "name": "lab",
        });
        let allowed = review["spec"]["user"] == "system:serviceaccount:team:builder"
            && review["spec"]["resourceAttributes"] == expected;
        json!({"allowed": allowed})
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kubeconfig"), api.kubeconfig("csi-sa-token")).unwrap();
    let ca = certs::CertificateAuthority::generate("connectors csi test CA", Duration::from_secs(3600)).unwrap();
    let ca_path = dir.path().join("proxy-ca.crt");
    std::fs::write(&ca_path, ca.cert_pem()).unwrap();
    let socket = dir.path().join("plugins/connectors-csi/csi.sock");
    let endpoint = format!("unix://{}", socket.display());
    let kubeconfig = dir.path().join("kubeconfig");
    let plugin = Process::start_until_with_env(
        &[
            "csi",
            "--endpoint",
            &endpoint,
            "--node-id",
            "node-a",
            "--proxy-ca",
            ca_path.to_str().unwrap(),
            "--pull-address",
            "proxy.test",
        ],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
        "csi listening",
    );
    let channel = csi::client::connect_unix(socket.clone(), Duration::from_secs(20))
        .await
        .unwrap();
    let mut node = NodeClient::new(channel);
    let target = dir.path().join("pods/builder-0/mount");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();

    // The connector arrives through the watch; then the mount succeeds.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match node.node_publish_volume(publish_request(&target, POD_TOKEN)).await {
            Ok(_) => break,
            Err(status) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the mount never succeeded: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let config: Value = serde_json::from_slice(&std::fs::read(target.join("config.json")).unwrap()).unwrap();
    assert!(config["auths"]["proxy.test"]["auth"].is_string(), "{config}");

    // Another ServiceAccount of the namespace has no RoleBinding: refused.
    let denied_target = dir.path().join("pods/intruder-0/mount");
    std::fs::create_dir_all(denied_target.parent().unwrap()).unwrap();
    let mut request = publish_request(&denied_target, POD_TOKEN);
    request
        .volume_context
        .insert("csi.storage.k8s.io/serviceAccount.name".into(), "intruder".into());
    let refused = node.node_publish_volume(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("team/lab"), "{}", refused.message());
    assert!(!denied_target.join("config.json").exists());
    assert!(api.review_count(Review::SubjectAccess) >= 2);
    assert!(!plugin.log_text().contains(POD_TOKEN));
}
