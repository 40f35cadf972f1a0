//! `connectors csi`: the CSI node plugin (a DaemonSet beside kubelet) that
//! renders per-pod registry client configuration into inline ephemeral
//! volumes. Standalone (`--store`): connectors come from a store file, and a
//! pod may use its own namespace's connectors. Cluster mode: connectors are
//! watched through the API server, and SubjectAccessReview decides whether
//! the pod's ServiceAccount may use each connector its volume names.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use access::caller::{Authorizer, SameNamespace};
use access::cluster::{AccessCheck, SubjectAccessReviews};
use anyhow::Context;
use connector::store::{ConnectorStore, FileStore, KubeStore};
use csi::RenderConfig;
use csi::trust::{DEFAULT_SYSTEM_ROOTS, load_proxy_ca, load_system_roots};

use super::InjectionArgs;

#[derive(clap::Args)]
pub struct Args {
    /// The endpoint kubelet dials: `unix:///path/csi.sock`. A stale socket
    /// there is replaced.
    #[arg(long, env = "CONNECTORS_CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// This node's name, reported to kubelet (the DaemonSet sets it from
    /// `spec.nodeName`).
    #[arg(long, env = "CONNECTORS_NODE_ID")]
    node_id: String,
    /// The store: YAML with the Namespaces and Connectors; reloaded when it
    /// changes.
    /// Standalone mode: the store file. Without it connectors are watched
    /// through the API server.
    #[arg(long, env = "CONNECTORS_STORE")]
    store: Option<PathBuf>,
    /// Cluster mode: what SubjectAccessReview checks, as the proxy's
    /// `--authorization` (`proxy-subresource` or `get`).
    #[arg(long, env = "CONNECTORS_AUTHORIZATION", default_value = "proxy-subresource")]
    authorization: AccessCheck,
    /// The system root certificates (PEM bundle) that ca-bundle.crt joins
    /// with the proxy CA; when missing, the platform's trust store is used.
    #[arg(long, env = "CONNECTORS_SYSTEM_ROOTS", default_value = DEFAULT_SYSTEM_ROOTS)]
    system_roots: PathBuf,
    /// The reverse proxy (the pull address) speaks plain HTTP, as in
    /// standalone mode; buildkitd is told so.
    #[arg(long, env = "CONNECTORS_PULL_PLAIN_HTTP")]
    pull_plain_http: bool,
    #[command(flatten)]
    injection: InjectionArgs,
}

pub async fn serve(args: Args) -> anyhow::Result<()> {
    let socket = csi::socket_path(&args.endpoint)?;
    let proxy_ca = args
        .injection
        .proxy_ca
        .as_deref()
        .context("--proxy-ca (CONNECTORS_PROXY_CA) is required: the volume carries the proxy CA")?;
    let proxy_ca_pem =
        load_proxy_ca(proxy_ca).with_context(|| format!("failed to load the proxy CA {}", proxy_ca.display()))?;
    let system_roots_pem = load_system_roots(&args.system_roots).context("failed to load the system roots")?;
    let mut injection = args.injection.config()?;
    // NB: the volume carries its own copy of the CA; the webhook's
    // downwardAPI copy is not there to point at.
    injection.proxy_ca_pem = None;
    let config = RenderConfig {
        injection,
        proxy_ca_pem,
        system_roots_pem,
        pull_plain_http: args.pull_plain_http,
    };
    let (store, authorizer): (Arc<dyn ConnectorStore>, Arc<dyn Authorizer>) = match &args.store {
        Some(path) => {
            let store = Arc::new(
                FileStore::load(path).with_context(|| format!("failed to load the store {}", path.display()))?,
            );
            store.spawn_watch(Duration::from_secs(2));
            (store, Arc::new(SameNamespace))
        }
        None => {
            let client = kube::Client::try_default()
                .await
                .context("no --store given and no Kubernetes configuration found")?;
            // NB: one decision per mount; a short cache only absorbs bursts.
            let authorizer = SubjectAccessReviews::new(client.clone(), args.authorization, Duration::from_secs(5));
            (Arc::new(KubeStore::spawn(client)), Arc::new(authorizer))
        }
    };
    let plugin = csi::Plugin::new(store, authorizer, config, &args.node_id);
    csi::serve_unix(
        &socket,
        plugin,
        super::webhook::shutdown_signal(),
        |path| tracing::info!(endpoint = %path.display(), node_id = %args.node_id, "csi listening"),
    )
    .await
    .context("the CSI plugin failed")
}
