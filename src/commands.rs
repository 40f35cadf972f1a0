//! The subcommands and the flags they share.

mod certs;
mod controller;
mod crd;
mod credential_provider;
mod csi;
mod doctor;
mod drain;
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
    /// More detail in the log: `-v` debug, `-vv` trace (as
    /// `CONNECTORS_VERBOSE=1` or `2`). A filter in `CONNECTORS_LOG` or
    /// `RUST_LOG` (`info,proxy=debug`) takes precedence.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
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
    /// Print manifests with every selected pod mutated as the webhook would,
    /// from a store file or from the live cluster.
    Mutate(mutate::Args),
    /// Check an install end to end and say what to fix.
    Doctor(doctor::Args),
    /// Before an uninstall: stop admission and evict every pod that uses a
    /// connectors volume (the chart's pre-delete hook).
    DrainVolumes(drain::Args),
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

/// Runs `command`; `matches` are the parsed command line (which flags
/// were given).
pub fn run(command: Command, matches: &clap::ArgMatches) -> anyhow::Result<()> {
    match command {
        Command::Webhook(args) => block_on(webhook::serve(args)),
        Command::Up(args) => block_on(up::serve(args)),
        Command::Proxy(args) => block_on(proxy::serve(args)),
        Command::Mutate(args) => mutate::run(args, matches.subcommand_matches("mutate")),
        Command::Doctor(args) => block_on(doctor::run(args)),
        Command::DrainVolumes(args) => block_on(drain::run(args)),
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

fn block_on<T>(serve: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve)
}

/// Sets up the log: the filter from `CONNECTORS_LOG`, else `RUST_LOG`,
/// else the level `-v` (or `CONNECTORS_VERBOSE`) gives. A filter that does
/// not parse is reported and the level is used.
pub fn init_logging(format: LogFormat, verbose: u8, client: bool) {
    use tracing_subscriber::EnvFilter;
    let verbose = verbose.max(verbose_from_env(std::env::var("CONNECTORS_VERBOSE").ok().as_deref()));
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let mut invalid = None;
    let filter = ["CONNECTORS_LOG", "RUST_LOG"]
        .into_iter()
        .find_map(|variable| {
            let value = std::env::var(variable).ok().filter(|v| !v.trim().is_empty())?;
            match EnvFilter::try_new(&value) {
                Ok(filter) => Some(filter),
                Err(error) => {
                    invalid = Some(format!(
                        "{variable}={value:?} is not a log filter ({error}); logging at {level}"
                    ));
                    None
                }
            }
        })
        .unwrap_or_else(|| {
            // NB: a client command reports what the API server said itself;
            // kube's retry logs would only repeat it.
            let quiet = if client && verbose == 0 { ",kube_client=off" } else { "" };
            EnvFilter::new(format!("{level}{quiet}"))
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    if let Some(message) = invalid {
        tracing::warn!("{message}");
    }
}

/// `CONNECTORS_VERBOSE`: a count, or `true`/`false` as before.
fn verbose_from_env(value: Option<&str>) -> u8 {
    match value.map(str::trim) {
        None | Some("" | "0" | "false") => 0,
        Some("true") => 1,
        Some(other) => other.parse().unwrap_or(1),
    }
}

/// How `connectors` exits: 0 when it did its job; 1 on an error (bad
/// input, a file or cluster it could not read); 2 on a usage error (clap);
/// 3 when it worked and the answer is no: `mutate` found a pod the webhook
/// would deny, `doctor` found a problem.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error
        .downcast_ref::<::webhook::manifest::Error>()
        .is_some_and(|e| matches!(e, ::webhook::manifest::Error::Denied { .. }))
        || error.downcast_ref::<doctor::Findings>().is_some()
    {
        3
    } else {
        1
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

/// The `connectors-config` keys of the settings that shape a mutation,
/// by the id of their flag.
const INJECTION_KEYS: [(&str, &str); 7] = [
    ("pull_address", "CONNECTORS_PULL_ADDRESS"),
    ("proxy_address", "CONNECTORS_PROXY_ADDRESS"),
    ("forward_proxy", "CONNECTORS_FORWARD_PROXY"),
    ("cluster_domain", "CONNECTORS_CLUSTER_DOMAIN"),
    ("api_server", "CONNECTORS_API_SERVER"),
    ("no_proxy_cidrs", "CONNECTORS_NO_PROXY_CIDRS"),
    ("config_mount_path", "CONNECTORS_CONFIG_MOUNT_PATH"),
];

impl InjectionArgs {
    /// Takes each setting from the install's `connectors-config` data
    /// (what the webhook runs with) unless `given(flag id)` says the flag
    /// or its variable was set here.
    pub fn apply_install_config(
        &mut self,
        data: &std::collections::BTreeMap<String, String>,
        given: impl Fn(&str) -> bool,
    ) {
        for (id, key) in INJECTION_KEYS {
            let Some(value) = data.get(key) else { continue };
            if given(id) {
                continue;
            }
            let value = value.trim().to_owned();
            match id {
                "pull_address" => self.pull_address = value,
                "proxy_address" => self.proxy_address = value,
                "forward_proxy" => self.forward_proxy = value,
                "cluster_domain" => self.cluster_domain = value,
                "api_server" => self.api_server = Some(value).filter(|v| !v.is_empty()),
                "no_proxy_cidrs" => {
                    self.no_proxy_cidrs = value
                        .split(',')
                        .map(str::trim)
                        .filter(|c| !c.is_empty())
                        .map(str::to_owned)
                        .collect()
                }
                _ => self.config_mount_path = value,
            }
        }
    }

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

/// Which cluster a client command talks to, as kubectl chooses it.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct KubeArgs {
    /// The kubeconfig file (default: `$KUBECONFIG`, else `~/.kube/config`,
    /// else the pod's service account).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
}

/// How long a client command waits to connect, and for each answer.
const CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

impl KubeArgs {
    /// A client for the chosen cluster, with bounded waits.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        use anyhow::Context;
        use kube::config::{KubeConfigOptions, Kubeconfig};
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let mut config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .with_context(|| format!("failed to read the kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
            }
            None if self.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
            None => kube::Config::infer()
                .await
                .context("no cluster: pass --kubeconfig, set KUBECONFIG, or run in a pod")?,
        };
        config.connect_timeout = Some(CLIENT_TIMEOUT);
        config.read_timeout = Some(CLIENT_TIMEOUT);
        Ok(kube::Client::try_from(config)?)
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
