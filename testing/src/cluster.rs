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
fn workspace_root() -> PathBuf {
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

impl RealCluster {
    /// The cluster of this test binary, started by the first caller
    /// (building the harness first if its sources changed) with `product`
    /// (the `connectors` binary) running its components. Panics with
    /// `e2e/cluster`'s own message if it cannot start.
    pub fn shared(product: &Path) -> &'static RealCluster {
        SHARED.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("connectors-e2e-{}", std::process::id()));
            let root = workspace_root();
            let output = Command::new("bash")
                .arg(root.join("e2e/cluster"))
                .arg("up")
                .arg(&dir)
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
            let harness = std::env::var_os("E2E_HARNESS")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target/e2e/harness"));
            RealCluster {
                kubeconfig: dir.join("kubeconfig"),
                dir,
                harness,
            }
        })
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

    /// The log of one control-plane program (`kube-apiserver`, ...).
    pub fn log(&self, program: &str) -> String {
        std::fs::read_to_string(self.dir.join("logs").join(format!("{program}.log"))).unwrap_or_default()
    }
}
