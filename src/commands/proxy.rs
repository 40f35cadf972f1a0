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

use anyhow::Context;
use certs::CertificateAuthority;
use connector::store::{ConnectorStore, FileStore, KubeSecretStore, KubeStore};
use proxy::caller::{Authenticator, Authorizer, SameNamespace, StaticTokens};
use proxy::cluster::{AccessCheck, PodIdentities, SubjectAccessReviews, TokenReviewOptions, TokenReviews};
use proxy::forward::{self, ForwardOptions, ForwardProxy, TunnelHost};
use proxy::resolve::{Pin, Pins};
use proxy::reverse::{ReverseOptions, ReverseProxy};
use proxy::server::{self, ServerLimits};

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
    /// Where a generated interception CA is kept.
    #[arg(long, env = "CONNECTORS_STATE_DIR", default_value = "target/connectors-state")]
    pub state_dir: PathBuf,
    /// `HOST:PORT:ADDR`: dial HOST:PORT at ADDR, as curl's `--resolve`.
    /// Repeatable.
    #[arg(long = "resolve", env = "CONNECTORS_RESOLVE", value_delimiter = ',')]
    pub resolve: Vec<Pin>,
    /// Non-connector hosts that get a blind tunnel (`NAME`, `*.SUFFIX`,
    /// optionally `:PORT`); every other host is refused. Repeatable.
    #[arg(
        long = "forward-tunnel-host",
        env = "CONNECTORS_FORWARD_TUNNEL_HOSTS",
        value_delimiter = ','
    )]
    pub tunnel_hosts: Vec<TunnelHost>,
    /// Let tunnels reach loopback, link-local and metadata addresses.
    #[arg(long, env = "CONNECTORS_FORWARD_TUNNEL_TO_PRIVATE_ADDRESSES")]
    pub forward_tunnel_to_private_addresses: bool,
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
    pub fn reverse_options(&self) -> ReverseOptions {
        ReverseOptions {
            insecure_upstream_tls: self.insecure_upstream_tls,
            pins: Pins::new(self.resolve.clone()),
            upstream_header_timeout: Duration::from_secs(self.upstream_header_timeout_seconds.max(1)),
        }
    }

    pub fn forward_options(&self) -> ForwardOptions {
        ForwardOptions {
            tunnel_hosts: self.tunnel_hosts.clone(),
            tunnel_to_private_addresses: self.forward_tunnel_to_private_addresses,
            pins: Pins::new(self.resolve.clone()),
        }
    }

    /// The interception CA: from the flags, or from the state directory
    /// (generated there on first use).
    pub fn authority(&self) -> anyhow::Result<Arc<CertificateAuthority>> {
        let (cert, key) = match (&self.ca_cert, &self.ca_key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ => (self.state_dir.join("proxy-ca.crt"), self.state_dir.join("proxy-ca.key")),
        };
        if !cert.exists() && self.ca_cert.is_none() {
            let ca = CertificateAuthority::generate("connectors proxy CA", CA_VALIDITY)?;
            let files = certs::bundle::write_authority(&self.state_dir, "proxy-ca", &ca)
                .with_context(|| format!("failed to write the proxy CA into {}", self.state_dir.display()))?;
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
    /// Address of reverse mode (plain HTTP).
    #[arg(long, env = "CONNECTORS_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address of reverse mode over HTTPS (for container runtimes on
    /// nodes); off when absent. Needs `--tls-cert` and `--tls-key`.
    #[arg(long, env = "CONNECTORS_TLS_LISTEN", requires_all = ["tls_cert", "tls_key"])]
    tls_listen: Option<SocketAddr>,
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
}

/// Cluster mode's identity and authorization settings.
#[derive(clap::Args)]
pub struct ClusterArgs {
    /// What SubjectAccessReview checks: `proxy-subresource` (`get` on
    /// `connectors/proxy`, granted only by roles made for using connectors)
    /// or `get` (`get` on the Connector, as earlier releases check).
    #[arg(long, env = "CONNECTORS_AUTHORIZATION", default_value = "proxy-subresource", value_parser = parse_access_check)]
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
}

pub fn parse_access_check(value: &str) -> Result<AccessCheck, String> {
    match value {
        "proxy-subresource" => Ok(AccessCheck::ProxySubresource),
        "get" => Ok(AccessCheck::Get),
        other => Err(format!("`{other}` is not `proxy-subresource` or `get`")),
    }
}

pub async fn serve(args: Args) -> anyhow::Result<()> {
    let pipeline = match (&args.store, &args.token_auth_file) {
        (Some(store), Some(token_auth_file)) => {
            let standalone = StandaloneArgs {
                store: store.clone(),
                token_auth_file: token_auth_file.clone(),
            };
            Standalone::start(&standalone, args.forward.reverse_options())?.pipeline()
        }
        _ => Pipeline::cluster(&args.cluster, args.forward.reverse_options()).await?,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("failed to listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, mode = "reverse", "proxy listening");
    let limits = ServerLimits {
        header_read_timeout: Duration::from_secs(args.header_read_timeout_seconds.max(1)),
        max_header_bytes: args.max_header_bytes,
        shutdown_grace: Duration::from_secs(args.shutdown_grace_seconds),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        super::webhook::shutdown_signal().await;
        let _ = stop.send(true);
    });
    let forward = pipeline.serve_forward(&args.forward, limits.clone(), until_stopped(stopped.clone()));
    let tls = serve_reverse_tls(&args, &pipeline, limits.clone(), until_stopped(stopped.clone()));
    let reverse = server::serve(
        listener,
        pipeline.reverse.clone(),
        pipeline.ready.clone(),
        limits,
        until_stopped(stopped),
    );
    let (forward, tls, reverse) = tokio::join!(forward, tls, reverse);
    forward?;
    tls?;
    reverse.context("the proxy server failed")
}

/// Serves reverse mode over HTTPS when `--tls-listen` is given.
async fn serve_reverse_tls(
    args: &Args,
    pipeline: &Pipeline,
    limits: ServerLimits,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (Some(address), Some(cert), Some(key)) = (args.tls_listen, &args.tls_cert, &args.tls_key) else {
        return Ok(());
    };
    let resolver = certs::ReloadingCertResolver::load(cert.clone(), key.clone())
        .context("failed to load the proxy's serving certificate")?;
    resolver.spawn_watch(Duration::from_secs(5));
    let tls = Arc::new(certs::server_config(resolver, &[b"h2", b"http/1.1"])?);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("failed to listen on {address}"))?;
    tracing::info!(addr = %listener.local_addr()?, mode = "reverse-tls", "proxy https listening");
    server::serve_tls(
        listener,
        pipeline.reverse.clone(),
        pipeline.ready.clone(),
        limits,
        tls,
        shutdown,
    )
    .await
    .context("the proxy's HTTPS server failed")
}

/// Resolves once the watch says stop.
pub async fn until_stopped(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stopped| *stopped).await;
}

/// Standalone mode's parts: the store (watched for changes), callers from a
/// static token file who may use their namespace's connectors, and the
/// request pipeline over them.
pub struct Standalone {
    pub store: Arc<FileStore>,
    pub tokens: Arc<StaticTokens>,
    pub reverse: Arc<ReverseProxy>,
}

/// The request pipeline and what forward mode shares with it.
pub struct Pipeline {
    pub connectors: Arc<dyn ConnectorStore>,
    pub authenticator: Arc<dyn Authenticator>,
    pub authorizer: Arc<dyn Authorizer>,
    pub reverse: Arc<ReverseProxy>,
    /// Readiness: the caches hold a complete view.
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl Pipeline {
    /// Cluster mode: everything from the API server.
    async fn cluster(args: &ClusterArgs, options: ReverseOptions) -> anyhow::Result<Self> {
        let client = kube::Client::try_default()
            .await
            .context("no --store given and no Kubernetes configuration found")?;
        let store = KubeStore::spawn(client.clone());
        let secrets = Arc::new(KubeSecretStore::spawn(client.clone(), &store));
        let store = Arc::new(store);
        let authenticator: Arc<dyn Authenticator> = Arc::new(TokenReviews::new(
            client.clone(),
            TokenReviewOptions {
                audience: args.token_audience.clone(),
                max_ttl: Duration::from_secs(args.token_cache_seconds),
                ..TokenReviewOptions::default()
            },
        ));
        let authorizer: Arc<dyn Authorizer> = Arc::new(SubjectAccessReviews::new(
            client.clone(),
            args.authorization,
            Duration::from_secs(args.authorization_cache_seconds),
        ));
        let mut reverse = ReverseProxy::new(
            store.clone(),
            secrets,
            authenticator.clone(),
            authorizer.clone(),
            options,
        );
        let ready: Arc<dyn Fn() -> bool + Send + Sync> = if args.peer_identities {
            let peers = PodIdentities::spawn(client, Duration::from_millis(args.node_pull_wait_milliseconds));
            reverse = reverse.with_peer_identities(Arc::new(peers.clone()));
            let store = store.clone();
            Arc::new(move || store.has_synced() && peers.has_synced())
        } else {
            let store = store.clone();
            Arc::new(move || store.has_synced())
        };
        tracing::info!(authorization = ?args.authorization, peer_identities = args.peer_identities, "cluster mode");
        Ok(Self {
            connectors: store,
            authenticator,
            authorizer,
            reverse: Arc::new(reverse),
            ready,
        })
    }

    /// Serves forward mode when `--forward-listen` is given.
    pub async fn serve_forward(
        &self,
        args: &ForwardArgs,
        limits: ServerLimits,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let Some(address) = args.forward_listen else {
            return Ok(());
        };
        let leaves = Arc::new(certs::LeafIssuer::new(args.authority()?));
        let forward = Arc::new(ForwardProxy::new(
            self.reverse.clone(),
            self.connectors.clone(),
            self.authenticator.clone(),
            self.authorizer.clone(),
            leaves,
            args.forward_options(),
        ));
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("failed to listen on {address}"))?;
        tracing::info!(addr = %listener.local_addr()?, mode = "forward", "forward proxy listening");
        forward::serve(listener, forward, limits, shutdown)
            .await
            .context("the forward proxy failed")
    }
}

impl Standalone {
    /// The pipeline over the standalone parts.
    pub fn pipeline(&self) -> Pipeline {
        Pipeline {
            connectors: self.store.clone(),
            authenticator: self.tokens.clone(),
            authorizer: Arc::new(SameNamespace),
            reverse: self.reverse.clone(),
            ready: Arc::new(|| true),
        }
    }

    pub fn start(args: &StandaloneArgs, options: ReverseOptions) -> anyhow::Result<Self> {
        let (store, token_auth_file) = (&args.store, &args.token_auth_file);
        let store =
            Arc::new(FileStore::load(store).with_context(|| format!("failed to load the store {}", store.display()))?);
        store.spawn_watch(Duration::from_secs(2));
        let tokens = Arc::new(
            StaticTokens::load(token_auth_file)
                .with_context(|| format!("failed to load the token file {}", token_auth_file.display()))?,
        );
        let reverse = Arc::new(ReverseProxy::new(
            store.clone(),
            store.clone(),
            tokens.clone(),
            Arc::new(SameNamespace),
            options,
        ));
        Ok(Self { store, tokens, reverse })
    }
}
