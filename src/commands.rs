//! The subcommands and the flags they share.

mod certs;
mod controller;
mod crd;
mod credential_provider;
mod csi;
mod mutate;
mod node_pull;
mod proxy;
mod up;
mod webhook;

use clap::{Parser, Subcommand, ValueEnum};
use connector::injection::{InjectionConfig, default_no_proxy};

/// Secretless registry access for Kubernetes workloads.
#[derive(Parser)]
#[command(name = "connectors", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, global = true, env = "CONNECTORS_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Log debug details.
    #[arg(long, short, global = true, env = "CONNECTORS_VERBOSE")]
    pub verbose: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the mutating admission webhook over HTTPS.
    Webhook(webhook::Args),
    /// Standalone mode: the proxy and the webhook on localhost, no cluster.
    Up(up::Args),
    /// Serve the credential-injecting registry proxy.
    Proxy(proxy::Args),
    /// Print manifests with every selected pod mutated as the webhook would.
    Mutate(mutate::Args),
    /// Print the Connector CustomResourceDefinition.
    Crd,
    /// Generate a CA and a serving certificate for local use.
    Certs(certs::Args),
    /// Serve the CSI node plugin that renders per-pod client configuration.
    Csi(csi::Args),
    /// kubelet's image credential provider: the pod's own token for a pull
    /// (reads a CredentialProviderRequest on stdin).
    CredentialProvider,
    /// Serve the node pull endpoint: kubelet pulls rewritten images from it
    /// on the node's loopback, with no node configuration.
    NodePull(node_pull::Args),
    /// Run the leader-elected controller: Connector status and certificates.
    Controller(controller::Args),
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Webhook(args) => block_on(webhook::serve(args)),
        Command::Up(args) => block_on(up::serve(args)),
        Command::Proxy(args) => block_on(proxy::serve(args)),
        Command::Mutate(args) => mutate::run(args),
        Command::Crd => crd::run(),
        Command::Certs(args) => certs::run(args),
        Command::Csi(args) => block_on(csi::serve(args)),
        Command::Controller(args) => block_on(controller::serve(args)),
        Command::NodePull(args) => block_on(node_pull::serve(args)),
        Command::CredentialProvider => credential_provider::run(),
    }
}

/// Runs a server subcommand on a multi-threaded runtime.
/// A listener on `address`, or an error that names it.
async fn bind(address: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context as _;
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("failed to listen on {address}"))
}

fn block_on(serve: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve)
}

pub fn init_logging(format: LogFormat, verbose: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if verbose { "debug" } else { "info" };
    let filter = EnvFilter::try_from_env("CONNECTORS_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Where the proxy is and what the cluster looks like: the flags that shape
/// every mutation, shared by `webhook` and `mutate`.
#[derive(clap::Args, Clone)]
pub struct InjectionArgs {
    /// `host[:port]` of the reverse proxy as nodes reach it; rewritten images
    /// start with it. The default is the node pull endpoint
    /// (`connectors node-pull`) on each node's loopback.
    #[arg(long, env = "CONNECTORS_PULL_ADDRESS", default_value = "127.0.0.1:7480")]
    pub pull_address: String,
    /// `host[:port]` of the reverse proxy's HTTPS as pods reach it (the
    /// volume's `config.json` and `buildkitd.toml`); the pull address when
    /// empty.
    #[arg(
        long,
        env = "CONNECTORS_PROXY_ADDRESS",
        default_value = "connectors-proxy.connectors-system.svc"
    )]
    pub proxy_address: String,
    /// `host:port` of the forward proxy as pods reach it.
    #[arg(
        long,
        env = "CONNECTORS_FORWARD_PROXY",
        default_value = "connectors-proxy.connectors-system.svc:3128"
    )]
    pub forward_proxy: String,
    /// The namespace the product is installed in (never mutated).
    #[arg(long, env = "CONNECTORS_INSTALL_NAMESPACE", default_value = "connectors-system")]
    pub install_namespace: String,
    /// The cluster's DNS domain, for NO_PROXY.
    #[arg(long, env = "CONNECTORS_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The API server's address (host or IP), for NO_PROXY.
    #[arg(long, env = "CONNECTORS_API_SERVER")]
    pub api_server: Option<String>,
    /// Pod, service and node CIDRs for NO_PROXY (comma-separated or repeated).
    #[arg(long = "no-proxy-cidr", env = "CONNECTORS_NO_PROXY_CIDRS", value_delimiter = ',')]
    pub no_proxy_cidrs: Vec<String>,
    /// The proxy CA certificate (PEM), delivered to every container.
    #[arg(long, env = "CONNECTORS_PROXY_CA")]
    pub proxy_ca: Option<std::path::PathBuf>,
    /// Where the CSI volume with client configuration is mounted in
    /// containers; the injected environment and the volume's files point there.
    #[arg(long, env = "CONNECTORS_CONFIG_MOUNT_PATH", default_value = "/var/run/connectors")]
    pub config_mount_path: String,
}

impl InjectionArgs {
    pub fn config(&self) -> anyhow::Result<InjectionConfig> {
        use anyhow::Context;
        let mut config = InjectionConfig::new(&self.pull_address, &self.forward_proxy);
        if !self.proxy_address.is_empty() {
            config.proxy_address = self.proxy_address.clone();
        }
        config.install_namespace = self.install_namespace.clone();
        config.config_mount_path = self.config_mount_path.clone();
        config.no_proxy = default_no_proxy(&self.cluster_domain, self.api_server.as_deref(), &self.no_proxy_cidrs);
        if let Some(path) = &self.proxy_ca {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("failed to read the proxy CA {}", path.display()))?;
            ::certs::load_certs_pem(&pem).with_context(|| format!("the proxy CA {} is not PEM", path.display()))?;
            config.proxy_ca_pem = Some(pem);
        }
        Ok(config)
    }
}

/// Writes to standard output; a closed pipe (`| head`) ends quietly.
pub fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
