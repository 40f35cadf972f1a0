//! `connectors node-pull`: the node pull endpoint, on each node's loopback
//! (a hostNetwork DaemonSet). Container runtimes pull rewritten images from
//! it in plain HTTP with no configuration; it relays them to the shared
//! proxy over TLS with its own pod-bound token, which the proxy takes as
//! this node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use proxy::node_pull::{self, NodePull, NodePullSettings, PodCredentials};
use serving::ServerLimits;

#[derive(clap::Args)]
pub struct Args {
    /// Where the endpoint listens: a loopback address of the node (the
    /// pull address images are rewritten to).
    #[arg(long, env = "CONNECTORS_NODE_PULL_LISTEN", default_value = "127.0.0.1:7480")]
    listen: SocketAddr,
    /// The shared proxy's HTTPS reverse mode, as the node reaches it.
    #[arg(
        long,
        env = "CONNECTORS_NODE_PULL_PROXY",
        default_value = "https://connectors-proxy.connectors-system.svc"
    )]
    proxy: String,
    /// The proxy CA (PEM); re-read when it changes.
    #[arg(long, env = "CONNECTORS_PROXY_CA", default_value = "/etc/connectors/proxy-ca/ca.crt")]
    proxy_ca: PathBuf,
    /// The endpoint's projected ServiceAccount token; re-read when kubelet
    /// refreshes it.
    #[arg(
        long,
        env = "CONNECTORS_NODE_PULL_TOKEN_FILE",
        default_value = "/var/run/secrets/connectors/token"
    )]
    token_file: PathBuf,
    /// A pull's own credential (kubelet's credential provider giving the
    /// pod's token): `forward` it (the proxy decides as the pod), `require`
    /// one (refuse pulls without), or `ignore` it (always the node).
    #[arg(long, env = "CONNECTORS_NODE_PULL_POD_CREDENTIALS", default_value = "forward")]
    pod_credentials: PodCredentials,
}

pub async fn serve(args: Args) -> anyhow::Result<()> {
    // NB: whatever reaches the endpoint pulls with the node's rights; on an
    // address other than the loopback, the node's network would.
    anyhow::ensure!(
        args.listen.ip().is_loopback(),
        "the node pull endpoint listens on the node's loopback only, not {} (CONNECTORS_PULL_ADDRESS must be 127.0.0.1:<port> with the endpoint; for another pull address, do not install node-pull.yaml)",
        args.listen
    );
    let relay = NodePull::load(NodePullSettings {
        proxy: args.proxy,
        proxy_ca: args.proxy_ca,
        token_file: args.token_file,
        pod_credentials: args.pod_credentials,
    })
    .context("the node pull endpoint cannot start")?;
    relay.spawn_reload();
    let listener = super::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, pod_credentials = ?args.pod_credentials, "node pull endpoint listening");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let signal = super::webhook::shutdown_signal();
    tokio::spawn(async move {
        signal.await;
        let _ = stop.send(true);
    });
    let limits = ServerLimits {
        shutdown_grace: Duration::from_secs(30),
        ..ServerLimits::default()
    };
    node_pull::serve(listener, relay, limits, super::proxy::until_stopped(stopped))
        .await
        .context("the node pull endpoint failed")
}
