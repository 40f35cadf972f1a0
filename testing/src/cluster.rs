//! A REAL Kubernetes control plane for the tests: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler of one pinned release, built
//! from their Go modules and started on loopback by `e2e/cluster`, with the
//! product installed from `manifests/`.
//!
//! One cluster serves every test of a test binary ([`RealCluster::shared`]);
//! tests keep apart by namespace. It is stopped, and its directory removed,
//! once the test binary exits: `e2e/cluster` watches the process that
//! started it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The workspace root (this crate's parent).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the testing crate sits in the workspace")
        .to_path_buf()
}

/// A running control plane.
#[derive(Debug)]
pub struct RealCluster {
    /// Where `e2e/cluster` keeps its state, certificates and logs.
    pub dir: PathBuf,
    /// A cluster-admin kubeconfig.
    pub kubeconfig: PathBuf,
    harness: PathBuf,
}

static SHARED: OnceLock<RealCluster> = OnceLock::new();
static WITH_NODE: OnceLock<RealCluster> = OnceLock::new();
static OLDEST: OnceLock<RealCluster> = OnceLock::new();

/// Which Kubernetes release a cluster runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Release {
    /// e2e/go.mod: the newest the product supports.
    Newest,
    /// e2e/min/go.mod: the oldest.
    Oldest,
}

impl RealCluster {
    /// The cluster of this test binary, started by the first caller
    /// (building the harness first if its sources changed) with `product`
    /// (the `connectors` binary) running its components as processes. Panics
    /// with `e2e/cluster`'s own message if it cannot start.
    pub fn shared(product: &Path) -> &'static RealCluster {
        SHARED.get_or_init(|| Self::up(product, false, Release::Newest))
    }

    /// As [`RealCluster::shared`], with the oldest Kubernetes release the
    /// product supports (`E2E_KUBE=min`: the harness of e2e/min/go.mod).
    pub fn oldest_supported(product: &Path) -> &'static RealCluster {
        OLDEST.get_or_init(|| Self::up(product, false, Release::Oldest))
    }

    /// The cluster of this test binary with a node (`E2E_NODE=1`): kubelet,
    /// containerd and kube-proxy in a network namespace of their own, and
    /// the product installed as pods from its image (built by
    /// `image/build`). Needs root.
    pub fn with_node() -> &'static RealCluster {
        WITH_NODE.get_or_init(|| Self::up(Path::new(""), true, Release::Newest))
    }

    fn up(product: &Path, node: bool, release: Release) -> RealCluster {
        let dir = std::env::temp_dir().join(format!(
            "connectors-e2e-{}{}{}",
            std::process::id(),
            if node { "-node" } else { "" },
            if release == Release::Oldest { "-min" } else { "" }
        ));
        let root = workspace_root();
        let mut command = Command::new("bash");
        if release == Release::Oldest {
            // NB: a prebuilt harness is of the newest release.
            command.env("E2E_HARNESS", "");
        }
        let output = command
            .arg(root.join("e2e/cluster"))
            .arg("up")
            .arg(&dir)
            .env("E2E_NODE", if node { "1" } else { "0" })
            .env("E2E_KUBE", if release == Release::Oldest { "min" } else { "" })
            .env("E2E_CONNECTORS", product)
            .env("E2E_OWNER_PID", std::process::id().to_string())
            .env("E2E_REMOVE_DIR", "1")
            .stdin(Stdio::null())
            .output()
            .expect("bash runs e2e/cluster");
        assert!(
            output.status.success(),
            "e2e/cluster up failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let harness = match (std::env::var_os("E2E_HARNESS"), release) {
            (_, Release::Oldest) => root.join("target/e2e/harness-min"),
            (Some(harness), Release::Newest) => PathBuf::from(harness),
            (None, Release::Newest) => root.join("target/e2e/harness"),
        };
        RealCluster {
            kubeconfig: dir.join("kubeconfig"),
            dir,
            harness,
        }
    }

    /// A setting of the node (`netns`, `node_ip`, `host_ip`), from
    /// `DIR/node.env`.
    pub fn node_setting(&self, name: &str) -> String {
        let env = std::fs::read_to_string(self.dir.join("node.env")).expect("the cluster has a node");
        env.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("node.env has no {name}"))
            .to_owned()
    }

    /// A client with cluster-admin rights.
    pub async fn admin(&self) -> kube::Client {
        self.client_for(&self.kubeconfig).await
    }

    /// A client from `kubeconfig`.
    pub async fn client_for(&self, kubeconfig: &Path) -> kube::Client {
        let file = kube::config::Kubeconfig::read_from(kubeconfig).expect("the kubeconfig reads");
        let config = kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
            .await
            .expect("the kubeconfig is usable");
        kube::Client::try_from(config).expect("a client from the kubeconfig")
    }

    /// Runs the release's kubectl as cluster admin with `args`, feeding
    /// `stdin`.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = Command::new(&self.harness)
            .arg("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the harness runs kubectl");
        let mut input = child.stdin.take().expect("stdin is piped");
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).expect("kubectl reads its input");
        }
        drop(input);
        child.wait_with_output().expect("kubectl ends")
    }

    /// Like [`RealCluster::kubectl`], panicking unless it succeeds; its
    /// standard output.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let output = self.kubectl(args, stdin);
        assert!(
            output.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The local port of `deployment`'s container port `name` (or number),
    /// as e2e/run-deployments bound it.
    pub fn component_port(&self, deployment: &str, port: &str) -> u16 {
        let path = self.dir.join("components").join(deployment).join("ports.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let ports: std::collections::HashMap<String, u16> = serde_json::from_str(&text).expect("ports.json");
        *ports
            .get(port)
            .unwrap_or_else(|| panic!("{deployment} has no port {port}: {ports:?}"))
    }

    /// A ServiceAccount token for `namespace/name` and `audience`, signed
    /// with the cluster's real signing key, that expired an hour ago: what
    /// a token stolen long ago looks like.
    pub fn expired_service_account_token(&self, namespace: &str, name: &str, audience: &str) -> String {
        use base64::Engine;
        let pem = std::fs::read_to_string(self.dir.join("pki/sa.key")).expect("the signing key");
        let der: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(der).expect("PEM");
        let rng = ring::rand::SystemRandom::new();
        let key =
            ring::signature::EcdsaKeyPair::from_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
                .expect("a P-256 PKCS#8 key");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT"});
        let claims = serde_json::json!({
            "iss": "https://kubernetes.default.svc.cluster.local",
            "aud": [audience],
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "iat": now - 7200,
            "nbf": now - 7200,
            "exp": now - 3600,
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": "00000000-0000-0000-0000-000000000000"}},
        });
        let encode = |value: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
        };
        let signed = format!("{}.{}", encode(&header), encode(&claims));
        let signature = key.sign(&rng, signed.as_bytes()).expect("signing");
        format!(
            "{signed}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }

    /// A kubeconfig for ServiceAccount `namespace/name` (a TokenRequest
    /// token, valid for an hour): a process using it has exactly what the
    /// shipped RBAC grants that account. Written into the cluster's
    /// directory; its path.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let token = self.kubectl_ok(&["create", "token", name, "-n", namespace, "--duration", "1h"], None);
        let admin: serde_json::Value =
            serde_json::from_str(&self.kubectl_ok(&["config", "view", "--raw", "--minify", "-o", "json"], None))
                .expect("kubectl prints the kubeconfig as JSON");
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": admin["clusters"][0]["cluster"]}],
            "users": [{"name": name, "user": {"token": token.trim()}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": name, "namespace": namespace}}],
            "current-context": "e2e",
        });
        let path = self.dir.join(format!("{namespace}-{name}.kubeconfig"));
        std::fs::write(&path, config.to_string()).expect("the kubeconfig is written");
        path
    }

    /// Creates ServiceAccounts in `namespace`; those marked `true` get a
    /// RoleBinding to the shipped `connectors-user` role there.
    pub fn service_accounts(&self, namespace: &str, accounts: &[(&str, bool)]) {
        for (account, bound) in accounts {
            self.kubectl_ok(&["create", "serviceaccount", account, "-n", namespace], None);
            if *bound {
                let subject = format!("{namespace}:{account}");
                self.kubectl_ok(
                    &[
                        "create",
                        "rolebinding",
                        account,
                        "-n",
                        namespace,
                        "--clusterrole",
                        "connectors-user",
                        "--serviceaccount",
                        &subject,
                    ],
                    None,
                );
            }
        }
    }

    /// The log of one control-plane program (`kube-apiserver`, ...).
    pub fn log(&self, program: &str) -> String {
        std::fs::read_to_string(self.dir.join("logs").join(format!("{program}.log"))).unwrap_or_default()
    }
}
