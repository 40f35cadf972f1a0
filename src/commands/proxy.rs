//! `connectors proxy`: the credential-injecting registry proxy.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use connector::store::FileStore;
use proxy::caller::{SameNamespace, StaticTokens};
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

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    standalone: StandaloneArgs,
    /// Address of reverse mode (plain HTTP).
    #[arg(long, env = "CONNECTORS_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Skip TLS verification of every upstream registry. Dangerous; off by
    /// default.
    #[arg(long, env = "CONNECTORS_INSECURE_UPSTREAM_TLS")]
    insecure_upstream_tls: bool,
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

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let (_, proxy) = standalone_proxy(
        &args.standalone,
        ReverseOptions {
            insecure_upstream_tls: args.insecure_upstream_tls,
        },
    )?;
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
    server::serve(
        listener,
        proxy,
        Arc::new(|| true),
        limits,
        super::webhook::shutdown_signal(),
    )
    .await
    .context("the proxy server failed")
}

/// The store (watched for changes) and a reverse proxy over it whose callers
/// come from a static token file and may use their namespace's connectors.
pub fn standalone_proxy(
    args: &StandaloneArgs,
    options: ReverseOptions,
) -> anyhow::Result<(Arc<FileStore>, Arc<ReverseProxy>)> {
    let (store, token_auth_file) = (&args.store, &args.token_auth_file);
    let store =
        Arc::new(FileStore::load(store).with_context(|| format!("failed to load the store {}", store.display()))?);
    store.spawn_watch(Duration::from_secs(2));
    let tokens = StaticTokens::load(token_auth_file)
        .with_context(|| format!("failed to load the token file {}", token_auth_file.display()))?;
    let proxy = ReverseProxy::new(
        store.clone(),
        store.clone(),
        Arc::new(tokens),
        Arc::new(SameNamespace),
        options,
    );
    Ok((store, Arc::new(proxy)))
}
