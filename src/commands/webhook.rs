//! `connectors webhook`: the admission webhook over HTTPS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use connector::store::{ConnectorStore, FileStore, KubeStore};
use webhook::metrics::Metrics;
use webhook::server::{self, WebhookState};

use super::InjectionArgs;

#[derive(clap::Args)]
pub struct Args {
    /// A store file (standalone mode); without it, connectors and namespaces
    /// are watched through the API server.
    #[arg(long, env = "CONNECTORS_STORE")]
    store: Option<PathBuf>,
    /// Address to listen on. Loopback by default, as every listener of
    /// `connectors`; the manifests pass `0.0.0.0:8443`.
    #[arg(long, env = "CONNECTORS_LISTEN", default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Serving certificate chain (PEM); reloaded when it changes.
    #[arg(long, env = "CONNECTORS_TLS_CERT")]
    tls_cert: PathBuf,
    /// Serving key (PEM).
    #[arg(long, env = "CONNECTORS_TLS_KEY")]
    tls_key: PathBuf,
    /// How often to check the certificate files for changes.
    #[arg(long, env = "CONNECTORS_TLS_RELOAD_SECONDS", default_value_t = 5)]
    tls_reload_seconds: u64,
    /// How long to finish in-flight reviews on shutdown.
    #[arg(long, env = "CONNECTORS_SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    shutdown_grace_seconds: u64,
    #[command(flatten)]
    injection: InjectionArgs,
}

pub async fn serve(args: Args) -> anyhow::Result<()> {
    let config = certs::Reloading::new(args.injection.config()?);
    // NB: the proxy CA's ConfigMap changes during a rotation: pods admitted
    // from then on get the bundle with both CAs.
    let _ca_watch = match (&args.injection.proxy_ca, &config.current().proxy_ca_pem) {
        (Some(path), Some(loaded)) => Some(certs::spawn_pem_watch(
            path.clone(),
            loaded.clone(),
            Duration::from_secs(args.tls_reload_seconds.max(1)),
            {
                let config = config.clone();
                move |pem| {
                    let mut next = (*config.current()).clone();
                    next.proxy_ca_pem = Some(pem);
                    config.replace(next);
                }
            },
        )),
        _ => None,
    };
    let store: Arc<dyn ConnectorStore> = match &args.store {
        Some(path) => {
            let store = Arc::new(
                FileStore::load(path).with_context(|| format!("failed to load the store {}", path.display()))?,
            );
            store.spawn_watch(Duration::from_secs(2));
            store
        }
        None => {
            let client = kube::Client::try_default()
                .await
                .context("no --store given and no Kubernetes configuration found")?;
            Arc::new(KubeStore::spawn(client))
        }
    };
    let resolver = certs::ReloadingCertResolver::load(args.tls_cert.clone(), args.tls_key.clone())
        .context("failed to load the serving certificate")?;
    resolver.spawn_watch(Duration::from_secs(args.tls_reload_seconds.max(1)));
    let tls = certs::server_config(resolver, &[b"h2", b"http/1.1"])?;
    let state = WebhookState {
        store,
        config,
        metrics: Arc::new(Metrics::default()),
    };
    // On SIGTERM, answers close their connections for LINGER before the
    // drain closes the idle ones: the API server's pooled connections go
    // with an answer, not under a request.
    let draining = server::Draining::default();
    let shutdown = {
        let (signal, draining) = (shutdown_signal(), draining.clone());
        async move {
            signal.await;
            draining.start();
            tokio::time::sleep(LINGER).await;
        }
    };
    let listener = super::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "webhook listening");
    let limits = server::limits(Duration::from_secs(args.shutdown_grace_seconds));
    let router = server::closing_when_draining(server::router(state), draining);
    server::serve_tls(listener, router, tls, limits, shutdown)
        .await
        .context("the webhook server failed")
}

/// How long the webhook keeps answering, each answer closing its
/// connection, after SIGTERM and before it stops accepting and drains.
const LINGER: Duration = Duration::from_secs(3);

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is
/// called, not when the future is first polled: a signal that arrives
/// between "listening" and the first poll still shuts down cleanly instead
/// of killing the process. Call it inside the runtime, before listening.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::terminate()).and_then(|term| Ok((term, signal(SignalKind::interrupt())?)))
    };
    async move {
        #[cfg(unix)]
        match signals {
            Ok((mut term, mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = interrupt.recv() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    }
}
