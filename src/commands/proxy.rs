//! `connectors proxy`: the credential-injecting registry proxy.
//!
//! Standalone (`--store` and `--token-auth-file`): connectors from a file,
//! callers from a static token file. Cluster mode (neither): connectors,
//! their Secrets, namespaces, injected pods and nodes watched through the
//! API server; callers proven by TokenReview, by the source address of an
//! injected pod, or as a node pulling for its pods; access decided by
//! SubjectAccessReview.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use access::cluster::AccessCheck;
use anyhow::Context;
use certs::CertificateAuthority;
use proxy::forward::ForwardOptions;
use proxy::server::Role;
use proxy::tunnel::{TunnelHost, Tunnels};
use proxy::{ClusterSettings, Proxy, StandaloneSettings, UpstreamOptions};
use registry::egress::{EgressAllow, EgressPolicy};
use registry::resolve::{Pin, Pins};
use serving::ServerLimits;

/// Where standalone mode reads connectors and callers.
#[derive(clap::Args)]
pub struct StandaloneArgs {
    /// The store: YAML with the Namespaces, Secrets and Connectors;
    /// reloaded when it changes.
    #[arg(long, env = "CONNECTORS_STORE")]
    pub store: PathBuf,
    /// Caller tokens in kube-apiserver's static token file format
    /// (`token,user,uid,"groups"`); a ServiceAccount
    /// `system:serviceaccount:<ns>:<name>` may use its namespace's connectors.
    #[arg(long, env = "CONNECTORS_TOKEN_AUTH_FILE")]
    pub token_auth_file: PathBuf,
}

/// Forward mode and what it shares with reverse mode.
#[derive(clap::Args, Clone)]
pub struct ForwardArgs {
    /// Address of forward mode (`HTTP_PROXY`/`HTTPS_PROXY`); off when absent.
    #[arg(long, env = "CONNECTORS_FORWARD_LISTEN")]
    pub forward_listen: Option<SocketAddr>,
    /// The interception CA certificate (PEM). With `--ca-key`; when both are
    /// absent a CA is generated into (or loaded from) `--state-dir`.
    #[arg(long, env = "CONNECTORS_CA_CERT", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The interception CA's private key (PEM).
    #[arg(long, env = "CONNECTORS_CA_KEY", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Where a generated interception CA is kept (without `--ca-cert`):
    /// default `$XDG_STATE_HOME/connectors`, else
    /// `$HOME/.local/state/connectors`.
    #[arg(long, env = "CONNECTORS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// `HOST:PORT:ADDR`: dial HOST:PORT at ADDR, as curl's `--resolve`.
    /// Repeatable.
    #[arg(long = "resolve", env = "CONNECTORS_RESOLVE", value_delimiter = ',')]
    pub resolve: Vec<Pin>,
    /// Which non-connector HTTPS destinations forward mode tunnels blindly
    /// (no interception, no credential): `allowed` (any the egress policy
    /// allows: public addresses and `--egress-allow`), `listed` (only
    /// `--forward-tunnel-host`) or `off`. A tunnel leaves from the proxy,
    /// so a pod's own egress NetworkPolicy does not apply to it.
    #[arg(long, env = "CONNECTORS_FORWARD_TUNNELS", default_value = "allowed")]
    pub forward_tunnels: Tunnels,
    /// Non-connector hosts that get a blind tunnel with
    /// `--forward-tunnels listed` (`NAME`, `*.SUFFIX`, optionally `:PORT`).
    /// Repeatable.
    #[arg(
        long = "forward-tunnel-host",
        env = "CONNECTORS_FORWARD_TUNNEL_HOSTS",
        value_delimiter = ','
    )]
    pub tunnel_hosts: Vec<TunnelHost>,
    /// Let tunnels ignore the egress policy. Deprecated: allow what
    /// tunnels need with `--egress-allow`.
    #[arg(long, env = "CONNECTORS_FORWARD_TUNNEL_TO_PRIVATE_ADDRESSES")]
    pub forward_tunnel_to_private_addresses: bool,
    /// Networks (CIDR or address) and hosts (`name`, `*.domain`) that may
    /// be dialed although they are loopback, link-local, private or
    /// otherwise special (in-cluster or private registries). Everything
    /// the proxy dials is checked: registries, token realms, blob
    /// redirects, tunnels. Repeatable.
    #[arg(long = "egress-allow", env = "CONNECTORS_EGRESS_ALLOW", value_delimiter = ',')]
    pub egress_allow: Vec<EgressAllow>,
    /// Skip TLS verification of every upstream registry. Dangerous; off by
    /// default.
    #[arg(long, env = "CONNECTORS_INSECURE_UPSTREAM_TLS")]
    pub insecure_upstream_tls: bool,
    /// How long an upstream (registry, token service, object storage) may
    /// take to send response headers; blob bodies have no deadline.
    #[arg(long, env = "CONNECTORS_UPSTREAM_HEADER_TIMEOUT_SECONDS", default_value_t = 60)]
    pub upstream_header_timeout_seconds: u64,
}

impl ForwardArgs {
    pub fn upstream_options(&self) -> UpstreamOptions {
        UpstreamOptions {
            insecure_upstream_tls: self.insecure_upstream_tls,
            pins: Pins::new(self.resolve.clone()),
            upstream_header_timeout: Duration::from_secs(self.upstream_header_timeout_seconds.max(1)),
            egress: self.egress(),
        }
    }

    /// The egress policy: the default plus `--egress-allow`.
    pub fn egress(&self) -> EgressPolicy {
        EgressPolicy::new(self.egress_allow.iter().cloned())
    }

    pub fn forward_options(&self) -> ForwardOptions {
        ForwardOptions {
            tunnels: self.forward_tunnels,
            tunnel_hosts: self.tunnel_hosts.clone(),
            tunnel_to_private_addresses: self.forward_tunnel_to_private_addresses,
            pins: Pins::new(self.resolve.clone()),
            egress: self.egress(),
        }
    }

    /// Where generated certificates are kept: `--state-dir`, else the
    /// user's state directory.
    pub fn state_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.state_dir {
            return Ok(dir.clone());
        }
        let variable = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        variable("XDG_STATE_HOME")
            .or_else(|| variable("HOME").map(|home| home.join(".local/state")))
            .map(|base| base.join("connectors"))
            .context("no state directory: pass --state-dir (or set XDG_STATE_HOME or HOME), or --ca-cert and --ca-key")
    }

    /// The interception CA: from the flags, or from the state directory
    /// (generated there on first use).
    pub fn authority(&self) -> anyhow::Result<Arc<CertificateAuthority>> {
        let (cert, key) = match (&self.ca_cert, &self.ca_key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ => {
                let dir = self.state_dir()?;
                (dir.join("proxy-ca.crt"), dir.join("proxy-ca.key"))
            }
        };
        if !cert.exists() && self.ca_cert.is_none() {
            let dir = self.state_dir()?;
            let ca = CertificateAuthority::generate("connectors proxy CA", CA_VALIDITY)?;
            let files = certs::bundle::write_authority(&dir, "proxy-ca", &ca)
                .with_context(|| format!("failed to write the proxy CA into {}", dir.display()))?;
            tracing::info!(
                cert = %files.cert.display(),
                bundle = %files.bundle.display(),
                "generated the interception CA; clients trust the certificate, or use the bundle as SSL_CERT_FILE"
            );
        }
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))
        };
        let ca = CertificateAuthority::from_pem(&read(&cert)?, &read(&key)?)
            .with_context(|| format!("the CA in {} is not usable", cert.display()))?;
        tracing::info!(cert = %cert.display(), "interception CA loaded");
        Ok(Arc::new(ca))
    }
}

/// How long a generated interception CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

#[derive(clap::Args)]
pub struct Args {
    /// Standalone mode: the store YAML (Namespaces, Secrets, Connectors),
    /// reloaded when it changes. Without it (and without
    /// `--token-auth-file`) the proxy runs in cluster mode.
    #[arg(long, env = "CONNECTORS_STORE", requires = "token_auth_file")]
    store: Option<PathBuf>,
    /// Standalone mode: caller tokens in kube-apiserver's static token file
    /// format (`token,user,uid,"groups"`).
    #[arg(long, env = "CONNECTORS_TOKEN_AUTH_FILE", requires = "store")]
    token_auth_file: Option<PathBuf>,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Address of reverse mode (plain HTTP). Loopback by default, as every
    /// listener of `connectors`; the manifests pass `0.0.0.0:8080`.
    #[arg(long, env = "CONNECTORS_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address of reverse mode over HTTPS (for container runtimes on
    /// nodes); off when absent. Needs `--tls-cert` and `--tls-key`.
    #[arg(long, env = "CONNECTORS_TLS_LISTEN", requires_all = ["tls_cert", "tls_key"])]
    tls_listen: Option<SocketAddr>,
    /// Address of `/metrics` (with `/healthz` and `/readyz`) on a listener of
    /// its own, kept off the Service pods use; when absent, `/metrics` is
    /// on `--listen`.
    #[arg(long, env = "CONNECTORS_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Serving certificate chain (PEM) of `--tls-listen`; reloaded when it changes.
    #[arg(long, env = "CONNECTORS_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Serving key (PEM) of `--tls-listen`.
    #[arg(long, env = "CONNECTORS_TLS_KEY")]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    forward: ForwardArgs,
    /// How long a client may take to send a request's headers.
    #[arg(long, env = "CONNECTORS_HEADER_READ_TIMEOUT_SECONDS", default_value_t = 30)]
    header_read_timeout_seconds: u64,
    /// The largest request head accepted, in bytes.
    #[arg(long, env = "CONNECTORS_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    max_header_bytes: usize,
    /// How long shutdown waits for in-flight transfers.
    #[arg(long, env = "CONNECTORS_SHUTDOWN_GRACE_SECONDS", default_value_t = 300)]
    shutdown_grace_seconds: u64,
    /// The most connections each listener holds at once; more wait in the
    /// kernel's accept queue.
    #[arg(long, env = "CONNECTORS_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
}

/// Cluster mode's identity and authorization settings.
#[derive(clap::Args)]
pub struct ClusterArgs {
    /// What SubjectAccessReview checks: `proxy-subresource` (`get` on
    /// `connectors/proxy`, granted only by roles made for using connectors)
    /// or `get` (`get` on the Connector, as earlier releases check).
    #[arg(long, env = "CONNECTORS_AUTHORIZATION", default_value = "proxy-subresource")]
    authorization: AccessCheck,
    /// How long an authorization decision is reused: a revoked role stops
    /// working within this time.
    #[arg(long, env = "CONNECTORS_AUTHORIZATION_CACHE_SECONDS", default_value_t = 5)]
    authorization_cache_seconds: u64,
    /// The audience callers' ServiceAccount tokens must carry.
    #[arg(long, env = "CONNECTORS_TOKEN_AUDIENCE", default_value = connector::keys::PROXY_TOKEN_AUDIENCE)]
    token_audience: String,
    /// The longest a valid token's review is reused.
    #[arg(long, env = "CONNECTORS_TOKEN_CACHE_SECONDS", default_value_t = 120)]
    token_cache_seconds: u64,
    /// How long a node's pull waits for its pod to reach the proxy's cache.
    #[arg(long, env = "CONNECTORS_NODE_PULL_WAIT_MILLISECONDS", default_value_t = 2000)]
    node_pull_wait_milliseconds: u64,
    /// Accept callers without a token by source address: injected pods, and
    /// nodes pulling for their pods.
    #[arg(long, env = "CONNECTORS_PEER_IDENTITIES", default_value_t = true, action = clap::ArgAction::Set)]
    peer_identities: bool,
    /// Take a request without a token from a node's address as that node
    /// (kubelet pulling for its pods). Off by default: hostNetwork pods of
    /// every namespace, every process on the node, and pods whose traffic is
    /// masqueraded to the node's address (SNAT by some CNIs and kube-proxy
    /// modes) send from that address too.
    #[arg(long, env = "CONNECTORS_NODE_IDENTITY_BY_ADDRESS")]
    node_identity_by_address: bool,
    /// The ServiceAccount (`namespace/name`) of the node pull endpoint
    /// (`connectors node-pull`): its pod-bound token is taken as the node
    /// the API server says its pod runs on, and pulls only what the node
    /// rule allows. Empty turns node pulls through the endpoint off.
    #[arg(long, env = "CONNECTORS_NODE_PULLER", default_value = "connectors-csi/connectors-node-pull", value_parser = parse_service_account)]
    node_puller: String,
    /// The most TokenReviews, and SubjectAccessReviews, sent to the API
    /// server per second beyond what the caches answer (a flood of forged
    /// tokens or random connector names costs no more).
    #[arg(long, env = "CONNECTORS_REVIEWS_PER_SECOND", default_value_t = access::cluster::DEFAULT_REVIEWS_PER_SECOND)]
    reviews_per_second: u32,
}

impl ClusterArgs {
    fn settings(&self) -> ClusterSettings {
        ClusterSettings {
            authorization: self.authorization,
            authorization_cache: Duration::from_secs(self.authorization_cache_seconds),
            token_audience: self.token_audience.clone(),
            token_cache: Duration::from_secs(self.token_cache_seconds),
            node_pull_wait: Duration::from_millis(self.node_pull_wait_milliseconds),
            peer_identities: self.peer_identities,
            node_identity_by_address: self.node_identity_by_address,
            node_puller: Some(self.node_puller.clone()).filter(|u| !u.is_empty()),
            reviews_per_second: self.reviews_per_second,
        }
    }
}

/// `namespace/name` of a ServiceAccount, as the user name Kubernetes gives
/// it; empty for none.
fn parse_service_account(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Ok(String::new());
    }
    let Some((namespace, name)) = value.split_once('/') else {
        return Err(format!("expected namespace/name, got {value:?}"));
    };
    let identity = access::caller::Identity::of_service_account(namespace, name);
    match identity.service_account() {
        Some(_) => Ok(identity.username),
        None => Err(format!("{value:?} is not a ServiceAccount's namespace/name")),
    }
}

impl StandaloneArgs {
    pub fn settings(&self) -> StandaloneSettings {
        StandaloneSettings {
            store: self.store.clone(),
            token_auth_file: self.token_auth_file.clone(),
        }
    }
}

pub async fn serve(args: Args) -> anyhow::Result<()> {
    let proxy = match (&args.store, &args.token_auth_file) {
        (Some(store), Some(token_auth_file)) => {
            let settings = StandaloneSettings {
                store: store.clone(),
                token_auth_file: token_auth_file.clone(),
            };
            Proxy::standalone(&settings, args.forward.upstream_options())?
        }
        _ => Proxy::cluster(&args.cluster.settings(), args.forward.upstream_options()).await?,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let signal = super::webhook::shutdown_signal();
    tokio::spawn(async move {
        signal.await;
        let _ = stop.send(true);
    });
    let listener = super::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, mode = "reverse", "proxy listening");
    let limits = ServerLimits {
        header_read_timeout: Duration::from_secs(args.header_read_timeout_seconds.max(1)),
        max_header_bytes: args.max_header_bytes,
        shutdown_grace: Duration::from_secs(args.shutdown_grace_seconds),
        max_connections: args.max_connections,
    };
    let role = Role::Registry {
        metrics: args.metrics_listen.is_none(),
    };
    let forward = serve_forward(&proxy, &args.forward, limits.clone(), until_stopped(stopped.clone()));
    let tls = serve_reverse_tls(&args, &proxy, limits.clone(), role, until_stopped(stopped.clone()));
    let metrics = serve_metrics(&args, &proxy, limits.clone(), until_stopped(stopped.clone()));
    let reverse = proxy.serve_reverse(listener, limits, None, role, until_stopped(stopped));
    let (forward, tls, metrics, reverse) = tokio::join!(forward, tls, metrics, reverse);
    forward?;
    tls?;
    metrics?;
    reverse.context("the proxy server failed")
}

/// Serves `/metrics` (and health) on a listener of its own when
/// `--metrics-listen` is given.
async fn serve_metrics(
    args: &Args,
    proxy: &Proxy,
    limits: ServerLimits,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let Some(address) = args.metrics_listen else {
        return Ok(());
    };
    let listener = super::bind(address).await?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    proxy
        .serve_reverse(listener, limits, None, Role::Metrics, shutdown)
        .await
        .context("the metrics server failed")
}

/// Serves reverse mode over HTTPS when `--tls-listen` is given.
async fn serve_reverse_tls(
    args: &Args,
    proxy: &Proxy,
    limits: ServerLimits,
    role: Role,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (Some(address), Some(cert), Some(key)) = (args.tls_listen, &args.tls_cert, &args.tls_key) else {
        return Ok(());
    };
    let resolver = certs::ReloadingCertResolver::load(cert.clone(), key.clone())
        .context("failed to load the proxy's serving certificate")?;
    resolver.spawn_watch(Duration::from_secs(5));
    let tls = Arc::new(certs::server_config(resolver, &[b"h2", b"http/1.1"])?);
    let listener = super::bind(address).await?;
    tracing::info!(addr = %listener.local_addr()?, mode = "reverse-tls", "proxy https listening");
    proxy
        .serve_reverse(listener, limits, Some(tls), role, shutdown)
        .await
        .context("the proxy's HTTPS server failed")
}

/// Serves forward mode when `--forward-listen` is given.
pub async fn serve_forward(
    proxy: &Proxy,
    args: &ForwardArgs,
    limits: ServerLimits,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let Some(address) = args.forward_listen else {
        return Ok(());
    };
    let leaves = Arc::new(certs::LeafIssuer::new(args.authority()?));
    // NB: a CA the flags name is a Secret volume the controller rotates:
    // leaves come from the new CA once the volume has it.
    let _watch = match (&args.ca_cert, &args.ca_key) {
        (Some(cert), Some(key)) => Some(leaves.spawn_watch(cert.clone(), key.clone(), Duration::from_secs(5))),
        _ => None,
    };
    let listener = super::bind(address).await?;
    tracing::info!(addr = %listener.local_addr()?, mode = "forward", "forward proxy listening");
    proxy
        .serve_forward(listener, leaves, args.forward_options(), limits, shutdown)
        .await
        .context("the forward proxy failed")
}

/// Resolves once the watch says stop.
pub async fn until_stopped(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stopped| *stopped).await;
}
