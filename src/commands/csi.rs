//! `connectors csi`: the CSI node plugin (a DaemonSet beside kubelet) that
//! renders per-pod registry client configuration into inline ephemeral
//! volumes. Standalone (`--store`): connectors come from a store file, and a
//! pod may use its own namespace's connectors. Cluster mode: connectors are
//! watched through the API server, and SubjectAccessReview decides whether
//! the pod's ServiceAccount may use each connector its volume names.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use access::caller::{Authorizer, SameNamespace};
use access::cluster::{AccessCheck, SubjectAccessReviews};
use anyhow::Context;
use connector::store::{ClassStore, ConnectorLookup, FileStore, Following, KubeClassStore, KubeConnectorFollower};
use csi::RenderConfig;
use csi::pod::{KubePods, NoPods, PodLookup};
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
    /// Registers the plugin with kubelet: the socket to serve kubelet's
    /// plugin registration on, in its `plugins_registry` directory (as the
    /// container sees it). Needs `--kubelet-endpoint`.
    #[arg(long, env = "CONNECTORS_CSI_REGISTRATION_SOCKET", requires = "kubelet_endpoint")]
    registration_socket: Option<PathBuf>,
    /// The CSI socket as the node sees it, which kubelet is told to dial:
    /// `--endpoint`'s path on the host.
    #[arg(long, env = "CONNECTORS_CSI_KUBELET_ENDPOINT", requires = "registration_socket")]
    kubelet_endpoint: Option<PathBuf>,
    /// Serves `/healthz` for kubelet's liveness probe here (200 while the
    /// plugin answers `Probe` ready on its own socket), and `/metrics`.
    #[arg(long, env = "CONNECTORS_CSI_HEALTH_LISTEN")]
    health_listen: Option<SocketAddr>,
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
    /// The reverse proxy (the proxy address) speaks plain HTTP, as in
    /// standalone mode; buildkitd is told so.
    #[arg(long, env = "CONNECTORS_PULL_PLAIN_HTTP")]
    pull_plain_http: bool,
    /// Where each volume's files live: `tmpfs` (a tmpfs mounted on the
    /// volume for it alone, so the pod's token never reaches the node's
    /// disk; needs the right to mount, which the DaemonSet's privilege and
    /// Bidirectional propagation are for) or `directory` (kubelet's
    /// directory as it is, on the node's disk).
    #[arg(long, env = "CONNECTORS_CSI_VOLUME_BACKING", value_enum, default_value_t = VolumeBacking::Tmpfs)]
    volume_backing: VolumeBacking,
    #[command(flatten)]
    injection: InjectionArgs,
}

/// `--volume-backing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VolumeBacking {
    Tmpfs,
    Directory,
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
        cluster_domain: args.injection.cluster_domain.clone(),
    };
    type Parts = (
        Arc<dyn ConnectorLookup>,
        Arc<dyn Authorizer>,
        Arc<dyn PodLookup>,
        Arc<dyn ClassStore>,
    );
    let (store, authorizer, pods, classes): Parts = match &args.store {
        Some(path) => {
            let store = Arc::new(
                FileStore::load(path).with_context(|| format!("failed to load the store {}", path.display()))?,
            );
            store.spawn_watch(Duration::from_secs(2));
            // NB: the file's ConnectorClasses, else the shipped ones.
            (store.clone(), Arc::new(SameNamespace), Arc::new(NoPods), store)
        }
        None => {
            let client = kube::Client::try_default()
                .await
                .context("no --store given and no Kubernetes configuration found")?;
            // NB: one decision per mount; a short cache only absorbs bursts.
            let authorizer = SubjectAccessReviews::new(client.clone(), args.authorization, Duration::from_secs(5));
            let pods = Arc::new(KubePods::new(client.clone()));
            let classes = Arc::new(KubeClassStore::spawn(client.clone()));
            // NB: only the connectors this node's volumes name, each read
            // and watched by name while they are used.
            let connectors = KubeConnectorFollower::spawn(client, Following::default());
            (Arc::new(connectors), Arc::new(authorizer), pods, classes)
        }
    };
    let loaded = config.proxy_ca_pem.clone();
    let plugin = csi::Plugin::new(store, authorizer, config, &args.node_id)
        .with_pods(pods)
        .with_classes(classes)
        .with_backing(match args.volume_backing {
            VolumeBacking::Tmpfs => csi::target::Backing::Tmpfs,
            VolumeBacking::Directory => csi::target::Backing::Directory,
        });
    // NB: kubelet republishes every volume periodically (requiresRepublish):
    // a rotated bundle reaches running pods' volumes too.
    let _ca_watch = certs::spawn_pem_watch(proxy_ca.to_owned(), loaded, Duration::from_secs(5), {
        let plugin = plugin.clone();
        move |pem| plugin.replace_proxy_ca(pem)
    });
    // One signal stops every listener.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let signal = super::webhook::shutdown_signal();
    tokio::spawn(async move {
        signal.await;
        let _ = stop.send(true);
    });
    let until_stopped = || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let node_id = args.node_id.clone();
    let metrics = plugin.metrics();
    let plugin_socket = socket.clone();
    let serve_plugin = async {
        csi::serve_unix(
            &plugin_socket,
            plugin,
            until_stopped(),
            |path| tracing::info!(endpoint = %path.display(), node_id = %node_id, "csi listening"),
        )
        .await
        .context("the CSI plugin failed")
    };
    let register = async {
        let (Some(registration), Some(endpoint)) = (&args.registration_socket, &args.kubelet_endpoint) else {
            return Ok(());
        };
        let info = csi::registration::PluginEndpoint {
            name: connector::keys::CSI_DRIVER.to_owned(),
            endpoint: endpoint.clone(),
        };
        tracing::info!(socket = %registration.display(), endpoint = %endpoint.display(), "serving kubelet plugin registration");
        csi::registration::serve_registration(registration, info, until_stopped(), |status| {
            if status.plugin_registered {
                tracing::info!("kubelet registered the plugin");
            } else {
                tracing::error!(error = %status.error, "kubelet refused the plugin");
            }
        })
        .await
        .context("registration with kubelet failed")
    };
    let health = async {
        let Some(addr) = args.health_listen else {
            return Ok(());
        };
        let listener = super::bind(addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "csi health and metrics endpoint listening");
        csi::health::serve(listener, socket.clone(), metrics, until_stopped())
            .await
            .context("the CSI health server failed")
    };
    tokio::try_join!(serve_plugin, register, health)?;
    Ok(())
}
