//! The CSI node plugin as kubelet drives it: a real tonic client on a unix
//! socket in a temporary directory against the real server. Publishing
//! renders every file with the right content and mode, a republish with a
//! new token refreshes every file, unpublishing cleans up and is idempotent,
//! and bad requests get the right gRPC code without the token in sight.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use access::caller::SameNamespace;
use base64::Engine;
use connector::injection::InjectionConfig;
use connector::store::FileStore;
use csi::proto::identity_client::IdentityClient;
use csi::proto::node_client::NodeClient;
use csi::proto::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use csi::proto::*;
use csi::request::{EPHEMERAL, POD_NAME, POD_NAMESPACE, POD_UID, SERVICE_ACCOUNT_NAME, SERVICE_ACCOUNT_TOKENS};
use csi::{Plugin, RenderConfig};
use testing::StoreYaml;
use tonic::Code;
use tonic::transport::Channel;

const FIRST_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.first-pod-token.c2lnbmF0dXJl";
const SECOND_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.second-pod-token.c2lnbmF0dXJl";
const PULL_ADDRESS: &str = "127.0.0.1:5080";
const FORWARD_PROXY: &str = "127.0.0.1:3128";

/// Two connectors of namespace `team`, one of `other`.
fn store() -> String {
    StoreYaml::new("team")
        .connector_of_class("harbor", "harbor", "https://harbor.example.com", None)
        .connector_of_class("hub", "oci", "https://registry-1.docker.io", None)
        .in_namespace("other")
        .connector_of_class("private", "oci", "https://private.example.com", None)
        .build()
}

/// The plugin serving on a socket in a temporary directory, and clients of it.
struct Driver {
    dir: tempfile::TempDir,
    proxy_ca_pem: String,
    identity: IdentityClient<Channel>,
    node: NodeClient<Channel>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Driver {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("plugin/csi.sock");
        Self::start_at(dir, socket).await
    }

    async fn start_at(dir: tempfile::TempDir, socket: PathBuf) -> Self {
        let ca = certs::CertificateAuthority::generate("connectors test proxy CA", Duration::from_secs(3600)).unwrap();
        let proxy_ca_pem = ca.cert_pem().to_owned();
        let mut injection = InjectionConfig::new(PULL_ADDRESS, FORWARD_PROXY);
        injection.config_mount_path = "/var/run/connectors".into();
        let config = RenderConfig {
            injection,
            proxy_ca_pem: proxy_ca_pem.clone(),
            system_roots_pem: csi::trust::load_system_roots(Path::new(csi::trust::DEFAULT_SYSTEM_ROOTS)).unwrap(),
            pull_plain_http: true,
            cluster_domain: "cluster.local".into(),
        };
        let store = Arc::new(FileStore::from_yaml(&store()).unwrap());
        let plugin = Plugin::new(store, Arc::new(SameNamespace), config, "node-a");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, listening) = tokio::sync::oneshot::channel();
        let path = socket.clone();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            csi::serve_unix(&path, plugin, shutdown, move |_| {
                let _ = ready.send(());
            })
            .await
            .unwrap();
        });
        tokio::time::timeout(Duration::from_secs(10), listening)
            .await
            .expect("the plugin listens within 10s")
            .unwrap();
        let channel = csi::client::connect_unix(socket, Duration::from_secs(20))
            .await
            .unwrap();
        Driver {
            dir,
            proxy_ca_pem,
            identity: IdentityClient::new(channel.clone()),
            node: NodeClient::new(channel),
            _stop: stop,
        }
    }

    /// kubelet's target path for a pod's volume (the parent exists, the
    /// mount directory does not yet).
    fn target(&self, pod: &str) -> PathBuf {
        let pod_dir = self.dir.path().join("kubelet/pods").join(pod);
        let volumes = pod_dir.join("volumes/kubernetes.io~csi/connectors-csi");
        std::fs::create_dir_all(&volumes).unwrap();
        volumes.join("mount")
    }

    async fn publish(&self, request: NodePublishVolumeRequest) -> Result<(), tonic::Status> {
        let mut node = self.node.clone();
        tokio::time::timeout(Duration::from_secs(20), node.node_publish_volume(request))
            .await
            .expect("publish answers within 20s")
            .map(|_| ())
    }

    async fn unpublish(&self, volume_id: &str, target: &Path) -> Result<(), tonic::Status> {
        let mut node = self.node.clone();
        let request = NodeUnpublishVolumeRequest {
            volume_id: volume_id.into(),
            target_path: target.to_string_lossy().into_owned(),
        };
        tokio::time::timeout(Duration::from_secs(20), node.node_unpublish_volume(request))
            .await
            .expect("unpublish answers within 20s")
            .map(|_| ())
    }
}

/// A NodePublishVolume request as kubelet sends it for the webhook's inline
/// volume: pod info, the token for the `connectors-proxy` audience, and the
/// volume attributes (an empty value removes a key).
fn publish_request(target: &Path, token: &str, attributes: &[(&str, &str)]) -> NodePublishVolumeRequest {
    let mut context: HashMap<String, String> = HashMap::new();
    for (key, value) in [
        (EPHEMERAL, "true"),
        (POD_NAME, "builder-0"),
        (POD_NAMESPACE, "team"),
        (POD_UID, "6f1c2a9e-0000-4000-8000-000000000001"),
        (SERVICE_ACCOUNT_NAME, "builder"),
        ("connectors", "harbor,hub"),
    ] {
        context.insert(key.into(), value.into());
    }
    context.insert(
        SERVICE_ACCOUNT_TOKENS.into(),
        serde_json::json!({"connectors-proxy": {"token": token, "expirationTimestamp": "2030-01-01T00:00:00Z"}})
            .to_string(),
    );
    for (key, value) in attributes {
        if value.is_empty() {
            context.remove(*key);
        } else {
            context.insert(key.to_string(), value.to_string());
        }
    }
    NodePublishVolumeRequest {
        volume_id: "csi-6f1c2a9e".into(),
        target_path: target.to_string_lossy().into_owned(),
        volume_capability: Some(VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: volume_capability::access_mode::Mode::SingleNodeReaderOnly as i32,
            }),
        }),
        readonly: true,
        volume_context: context,
        ..Default::default()
    }
}

fn read(target: &Path, name: &str) -> String {
    std::fs::read_to_string(target.join(name)).unwrap()
}

/// Every file of a volume without `configuration.names`, and whether it
/// holds the token (config.json base64-encoded).
const ALL: [(&str, bool); 8] = [
    (".env", true),
    ("http.proxy", true),
    ("https.proxy", true),
    ("config.json", true),
    ("buildkitd.toml", false),
    ("ca.crt", false),
    ("ca-bundle.crt", false),
    ("context.token", true),
];

fn mode(target: &Path, name: &str) -> u32 {
    std::fs::metadata(target.join(name)).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn identity_and_node_info_answer_over_the_unix_socket() {
    let driver = Driver::start().await;
    let mut identity = driver.identity.clone();
    let info = identity
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "connectors-csi");
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let capabilities = identity
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(capabilities.capabilities.is_empty(), "{capabilities:?}");
    let probe = identity.probe(ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));

    let mut node = driver.node.clone();
    let info = node.node_get_info(NodeGetInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.node_id, "node-a");
    let capabilities = node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(capabilities.capabilities.is_empty());
    let staged = node
        .node_stage_volume(NodeStageVolumeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(staged.code(), Code::Unimplemented);
    let stats = node
        .node_get_volume_stats(NodeGetVolumeStatsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(stats.code(), Code::Unimplemented);
}

#[tokio::test]
async fn publish_renders_every_file_with_the_pod_token_and_the_right_modes() {
    let driver = Driver::start().await;
    let target = driver.target("pod-a");
    driver
        .publish(publish_request(&target, FIRST_TOKEN, &[]))
        .await
        .unwrap();

    // Proxy URLs: the connector list as the user, the token as the password.
    for name in ["http.proxy", "https.proxy"] {
        let url = url::Url::parse(&read(&target, name)).unwrap();
        assert_eq!(url.scheme(), "http");
        assert_eq!(url.username(), "team%2Fharbor,team%2Fhub");
        assert_eq!(url.password(), Some(FIRST_TOKEN));
        assert_eq!(
            format!("{}:{}", url.host_str().unwrap(), url.port().unwrap()),
            FORWARD_PROXY
        );
    }

    // Docker auth for the reverse proxy host and each connector's own
    // Service host: anything:<token>.
    let config: serde_json::Value = serde_json::from_str(&read(&target, "config.json")).unwrap();
    let auths = config["auths"].as_object().unwrap();
    let mut hosts: Vec<&String> = auths.keys().collect();
    hosts.sort();
    assert_eq!(
        hosts,
        [
            PULL_ADDRESS,
            "c-harbor.team.svc.cluster.local",
            "c-hub.team.svc.cluster.local"
        ]
    );
    for host in hosts {
        let auth = base64::engine::general_purpose::STANDARD
            .decode(auths[host]["auth"].as_str().unwrap())
            .unwrap();
        let auth = String::from_utf8(auth).unwrap();
        assert_eq!(auth.split_once(':').unwrap().1, FIRST_TOKEN, "{host}");
    }

    assert_eq!(read(&target, "context.token"), FIRST_TOKEN);

    // Trust: the proxy CA alone, and the system roots with it.
    assert_eq!(read(&target, "ca.crt").trim_end(), driver.proxy_ca_pem.trim_end());
    let bundle = read(&target, "ca-bundle.crt");
    assert!(bundle.contains(driver.proxy_ca_pem.trim_end()));
    let bundle_certs = certs::load_certs_pem(&bundle).unwrap();
    let proxy_certs = certs::load_certs_pem(&driver.proxy_ca_pem).unwrap();
    assert!(
        bundle_certs.iter().any(|c| !proxy_certs.contains(c)),
        "the bundle holds at least one system root"
    );
    certs::root_store_from_pem(&bundle).unwrap();

    // buildkitd: each connector's registry mirrored through its proxy path.
    let buildkitd = read(&target, "buildkitd.toml");
    assert!(
        buildkitd.contains("[registry.\"127.0.0.1:5080\"]\n  http = true\n  ca = [\"/var/run/connectors/ca.crt\"]")
    );
    assert!(buildkitd.contains(
        "[registry.\"harbor.example.com\"]\n  mirrors = [\"127.0.0.1:5080/namespaces/team/connectors/harbor\"]"
    ));
    assert!(
        buildkitd.contains("[registry.\"docker.io\"]\n  mirrors = [\"127.0.0.1:5080/namespaces/team/connectors/hub\"]")
    );

    // .env: a real shell sources it (no `set -a`: every line is exported)
    // and sees what the webhook would inject.
    let env = read(&target, ".env");
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#". "$1"; printf '%s\n' "$HTTPS_PROXY" "$http_proxy" "$NO_PROXY" "$SSL_CERT_FILE" "$DOCKER_CONFIG" "$REGISTRY_AUTH_FILE" "$NODE_EXTRA_CA_CERTS""#)
        .arg("sh")
        .arg(target.join(".env"))
        .env_clear()
        .output()
        .unwrap();
    assert!(output.status.success(), "{env}");
    let sourced = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = sourced.lines().collect();
    let proxy_url = read(&target, "https.proxy");
    assert_eq!(lines[0], proxy_url);
    assert_eq!(lines[1], proxy_url);
    assert!(lines[2].starts_with("localhost,127.0.0.1,::1,"), "{}", lines[2]);
    assert_eq!(
        &lines[3..],
        [
            "/var/run/connectors/ca-bundle.crt",
            "/var/run/connectors",
            "/var/run/connectors/config.json",
            "/var/run/connectors/ca.crt",
        ]
    );

    // Modes: with no pod spec to say who the pod runs as (standalone), the
    // token files are read-only for whichever user the image chooses, as
    // kubelet's projected tokens; the node's pod directories keep others out.
    for (name, carries_token) in ALL {
        let want = if carries_token { 0o444 } else { 0o644 };
        assert_eq!(mode(&target, name), want, "{name}");
        assert_eq!(
            read(&target, name).contains(FIRST_TOKEN) || name == "config.json",
            carries_token,
            "{name}"
        );
    }
}

#[tokio::test]
async fn republish_with_a_new_token_refreshes_every_file() {
    let driver = Driver::start().await;
    let target = driver.target("pod-b");
    driver
        .publish(publish_request(&target, FIRST_TOKEN, &[]))
        .await
        .unwrap();
    let before: Vec<String> = ALL.iter().map(|&(n, _)| read(&target, n)).collect();

    // kubelet republishes every minute or so; with the same token nothing
    // is rewritten.
    let publication = std::fs::read_link(target.join("..data")).unwrap();
    driver
        .publish(publish_request(&target, FIRST_TOKEN, &[]))
        .await
        .unwrap();
    assert_eq!(std::fs::read_link(target.join("..data")).unwrap(), publication);

    // kubelet republishes (requiresRepublish) with a fresh token.
    driver
        .publish(publish_request(&target, SECOND_TOKEN, &[]))
        .await
        .unwrap();
    for (index, (name, carries_token)) in ALL.into_iter().enumerate() {
        let after = read(&target, name);
        assert!(!after.contains(FIRST_TOKEN), "{name} still holds the old token");
        if carries_token {
            assert_ne!(after, before[index], "{name} was not refreshed");
        } else {
            assert_eq!(after, before[index], "{name} changed");
        }
    }
    assert_eq!(read(&target, "context.token"), SECOND_TOKEN);
    let auth: serde_json::Value = serde_json::from_str(&read(&target, "config.json")).unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth["auths"][PULL_ADDRESS]["auth"].as_str().unwrap())
        .unwrap();
    assert!(
        String::from_utf8(decoded)
            .unwrap()
            .ends_with(&format!(":{SECOND_TOKEN}"))
    );

    // No trace of the first publication is left beside the second.
    let hidden: Vec<String> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".."))
        .collect();
    assert_eq!(hidden.len(), 2, "one publication and its link: {hidden:?}");
    assert_ne!(std::fs::read_link(target.join("..data")).unwrap(), publication);
}

#[tokio::test]
async fn unpublish_removes_the_volume_and_is_idempotent() {
    let driver = Driver::start().await;
    let target = driver.target("pod-c");
    driver
        .publish(publish_request(&target, FIRST_TOKEN, &[]))
        .await
        .unwrap();
    assert!(target.join("config.json").exists());
    driver.unpublish("csi-6f1c2a9e", &target).await.unwrap();
    assert!(!target.exists());
    assert!(target.parent().unwrap().exists(), "kubelet's directory stays");
    driver.unpublish("csi-6f1c2a9e", &target).await.unwrap();

    let error = driver.unpublish("", &target).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    let error = driver.unpublish("v", Path::new("relative/mount")).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn configuration_names_choose_the_files_written() {
    let driver = Driver::start().await;
    // The connector docs' configuration name and exclusions.
    let target = driver.target("pod-d");
    driver
        .publish(publish_request(
            &target,
            FIRST_TOKEN,
            &[
                ("connectors", ""),
                ("connector.name", "harbor"),
                (
                    "configuration.names",
                    "docker-config,!http.proxy,!https.proxy,!context.token,!.env",
                ),
            ],
        ))
        .await
        .unwrap();
    let mut visible: Vec<String> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".."))
        .collect();
    visible.sort();
    assert_eq!(visible, ["ca-bundle.crt", "ca.crt", "config.json"]);
}

#[tokio::test]
async fn bad_requests_get_the_right_code_and_never_show_the_token() {
    let driver = Driver::start().await;
    let target = driver.target("pod-e");
    let request = |attributes: &[(&str, &str)]| publish_request(&target, FIRST_TOKEN, attributes);
    let mut cases: Vec<(&str, NodePublishVolumeRequest, Code, &str)> = vec![
        (
            "no volume id",
            NodePublishVolumeRequest {
                volume_id: String::new(),
                ..request(&[])
            },
            Code::InvalidArgument,
            "volume_id",
        ),
        (
            "no target path",
            NodePublishVolumeRequest {
                target_path: String::new(),
                ..request(&[])
            },
            Code::InvalidArgument,
            "target_path",
        ),
        (
            "relative target",
            NodePublishVolumeRequest {
                target_path: "var/lib/kubelet/x".into(),
                ..request(&[])
            },
            Code::InvalidArgument,
            "absolute",
        ),
        (
            "climbing target",
            NodePublishVolumeRequest {
                target_path: format!("{}/../../../etc", target.display()),
                ..request(&[])
            },
            Code::InvalidArgument,
            "..",
        ),
        (
            "no capability",
            NodePublishVolumeRequest {
                volume_capability: None,
                ..request(&[])
            },
            Code::InvalidArgument,
            "volume_capability",
        ),
        (
            "block capability",
            NodePublishVolumeRequest {
                volume_capability: Some(VolumeCapability {
                    access_type: Some(AccessType::Block(BlockVolume {})),
                    access_mode: None,
                }),
                ..request(&[])
            },
            Code::InvalidArgument,
            "block",
        ),
        (
            "no token",
            request(&[(SERVICE_ACCOUNT_TOKENS, "")]),
            Code::InvalidArgument,
            "tokenRequests",
        ),
        (
            "token for another audience",
            request(&[(
                SERVICE_ACCOUNT_TOKENS,
                &format!(r#"{{"vault":{{"token":"{FIRST_TOKEN}"}}}}"#),
            )]),
            Code::InvalidArgument,
            "audience connectors-proxy",
        ),
        (
            "malformed tokens",
            request(&[(
                SERVICE_ACCOUNT_TOKENS,
                &format!(r#"{{"connectors-proxy":"{FIRST_TOKEN}""#),
            )]),
            Code::InvalidArgument,
            "not a JSON object",
        ),
        (
            "not ephemeral",
            request(&[(EPHEMERAL, "")]),
            Code::InvalidArgument,
            "ephemeral",
        ),
        (
            "no pod info",
            request(&[(POD_NAMESPACE, "")]),
            Code::InvalidArgument,
            "podInfoOnMount",
        ),
        (
            "no connector",
            request(&[("connectors", "")]),
            Code::InvalidArgument,
            "no connector",
        ),
        (
            "unknown connector",
            request(&[("connectors", "harbor,missing")]),
            Code::NotFound,
            "connector team/missing does not exist",
        ),
        (
            "another namespace's connector",
            request(&[("connectors", "other/private")]),
            Code::PermissionDenied,
            "service account team/builder may not use connector other/private: bind it to the ClusterRole connectors-user where the connector is (kubectl -n other create rolebinding builder-uses-connectors --clusterrole=connectors-user --serviceaccount=team:builder)",
        ),
        (
            "another namespace's missing connector",
            request(&[
                ("connector.name", "ghost"),
                ("connector.namespace", "other"),
                ("connectors", ""),
            ]),
            Code::PermissionDenied,
            "may not use connector other/ghost",
        ),
    ];
    for (what, request, code, message) in cases.drain(..) {
        let error = driver.publish(request).await.unwrap_err();
        assert_eq!(error.code(), code, "{what}: {error:?}");
        assert!(error.message().contains(message), "{what}: {}", error.message());
        let shown = format!("{error:?} {error}");
        assert!(!shown.contains("first-pod-token"), "{what}: the token is in the error");
    }
    assert!(!target.exists(), "a refused volume writes nothing");
}

#[tokio::test]
async fn a_stale_socket_from_an_earlier_run_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("csi.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let driver = Driver::start_at(dir, socket).await;
    let mut identity = driver.identity.clone();
    let probe = identity.probe(ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));
}

#[test]
fn endpoints_name_absolute_unix_sockets() {
    for (endpoint, want) in [
        ("unix:///csi/csi.sock", Some("/csi/csi.sock")),
        ("unix:/csi/csi.sock", Some("/csi/csi.sock")),
        ("/csi/csi.sock", Some("/csi/csi.sock")),
        ("unix://csi.sock", None),
        ("tcp://127.0.0.1:10000", None),
        ("unix:///", None),
    ] {
        let got = csi::socket_path(endpoint).ok();
        assert_eq!(got.as_deref(), want.map(Path::new), "{endpoint}");
    }
}

/// Calls `GetPluginInfo` on `socket` with gRPC C-core (Python's grpcio)
/// and a `unix:` target, as `authority` when given: the name it returns,
/// or the error.
fn grpcio_plugin_name(socket: &Path, authority: Option<&str>) -> Result<String, String> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ci-venv/bin/python");
    assert!(python.exists(), "{} is missing: run bash .ci/install", python.display());
    let script = r#"
import sys, grpc
options = [("grpc.default_authority", sys.argv[2])] if len(sys.argv) > 2 else []
channel = grpc.insecure_channel("unix:" + sys.argv[1], options=options)
call = channel.unary_unary("/csi.v1.Identity/GetPluginInfo",
    request_serializer=lambda m: m, response_deserializer=lambda m: m)
try:
    reply = call(b"", timeout=10)
except grpc.RpcError as e:
    sys.stderr.write("%s: %s" % (e.code(), e.details()))
    sys.exit(1)
# GetPluginInfoResponse field 1 (name): tag, length, bytes.
assert reply[0] == 0x0a, reply
sys.stdout.write(reply[2:2 + reply[1]].decode())
"#;
    let mut command = std::process::Command::new(python);
    command.arg("-c").arg(script).arg(socket);
    if let Some(authority) = authority {
        command.arg(authority);
    }
    let output = command.output().unwrap();
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_c_core_clients_are_served_whatever_authority_their_unix_target_sends() {
    let driver = Driver::start().await;
    let socket = driver.dir.path().join("plugin/csi.sock");
    let blocking = tokio::task::spawn_blocking(move || {
        [
            // grpcio's own: the percent-encoded socket path.
            None,
            // kubelet's plugin watcher's: the socket path itself.
            Some("/var/lib/kubelet/plugins_registry/connectors-csi-reg.sock"),
            // A proper one passes unchanged.
            Some("localhost"),
        ]
        .map(|authority| (authority, grpcio_plugin_name(&socket, authority)))
    });
    for (authority, name) in blocking.await.unwrap() {
        assert_eq!(name.as_deref(), Ok("connectors-csi"), "authority {authority:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_registers_itself_as_kubelets_plugin_watcher_asks_and_stops_when_refused() {
    use csi::registration::proto::registration_client::RegistrationClient;
    use csi::registration::proto::{InfoRequest, RegistrationStatus};
    use csi::registration::{PluginEndpoint, RegistrationError, serve_registration};

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("plugins_registry/connectors-csi-reg.sock");
    let info = PluginEndpoint {
        name: "connectors-csi".to_owned(),
        endpoint: "/var/lib/kubelet/plugins/connectors-csi/csi.sock".into(),
    };
    let statuses = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = statuses.clone();
    let path = socket.clone();
    let served = tokio::spawn(async move {
        serve_registration(&path, info, std::future::pending(), move |status| {
            seen.lock().unwrap().push(status.plugin_registered)
        })
        .await
    });
    let mut client = None;
    for _ in 0..100 {
        if socket.exists() {
            client = Some(RegistrationClient::new(
                csi::client::connect_unix(socket.clone(), Duration::from_secs(5))
                    .await
                    .unwrap(),
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = client.expect("the registration socket appears within 5s");
    let plugin = client.get_info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(plugin.r#type, "CSIPlugin");
    assert_eq!(plugin.name, "connectors-csi");
    assert_eq!(plugin.endpoint, "/var/lib/kubelet/plugins/connectors-csi/csi.sock");
    assert_eq!(plugin.supported_versions, vec!["1.0.0".to_owned()]);

    client
        .notify_registration_status(RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        })
        .await
        .unwrap();
    client
        .notify_registration_status(RegistrationStatus {
            plugin_registered: false,
            error: "driver name connectors-csi is taken".to_owned(),
        })
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("a refusal ends registration")
        .unwrap();
    match outcome {
        Err(RegistrationError::Refused(error)) => assert_eq!(error, "driver name connectors-csi is taken"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(*statuses.lock().unwrap(), vec![true, false]);
    assert!(
        !socket.exists(),
        "the socket goes with the registration (kubelet deregisters)"
    );
}
