//! `connectors proxy`: the credential-injecting registry proxy.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use certs::CertificateAuthority;
use connector::store::FileStore;
use proxy::caller::{SameNamespace, StaticTokens};
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
}

impl ForwardArgs {
    pub fn reverse_options(&self) -> ReverseOptions {
        ReverseOptions {
            insecure_upstream_tls: self.insecure_upstream_tls,
            pins: Pins::new(self.resolve.clone()),
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
    #[command(flatten)]
    standalone: StandaloneArgs,
    /// Address of reverse mode (plain HTTP).
    #[arg(long, env = "CONNECTORS_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
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

pub async fn serve(args: Args) -> anyhow::Result<()> {
    let standalone = Standalone::start(&args.standalone, args.forward.reverse_options())?;
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
    let forward = standalone.serve_forward(&args.forward, limits.clone(), until_stopped(stopped.clone()));
    let reverse = server::serve(
        listener,
        standalone.reverse.clone(),
        Arc::new(|| true),
        limits,
        until_stopped(stopped),
    );
    let (forward, reverse) = tokio::join!(forward, reverse);
    forward?;
    reverse.context("the proxy server failed")
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

impl Standalone {
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
            self.store.clone(),
            self.tokens.clone(),
            Arc::new(SameNamespace),
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
