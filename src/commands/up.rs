//! `connectors up`: standalone mode. The reverse proxy and the webhook on
//! localhost, connectors from a local store file, callers from a static
//! token file, certificates generated into a state directory. No cluster.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use certs::CertificateAuthority;
use connector::injection::InjectionConfig;
use proxy::Proxy;
use serving::ServerLimits;
use webhook::metrics::Metrics;
use webhook::server::WebhookState;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    standalone: super::proxy::StandaloneArgs,
    /// Reverse proxy address (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:8080")]
    proxy_listen: SocketAddr,
    /// Webhook address (HTTPS).
    #[arg(long, default_value = "127.0.0.1:8443")]
    webhook_listen: SocketAddr,
    /// Forward mode, on 127.0.0.1:3128 unless `--forward-listen` says
    /// otherwise; generated certificates are kept in `--state-dir`.
    #[command(flatten)]
    forward: super::proxy::ForwardArgs,
}

/// Forward mode's address when `up` is not told one.
const DEFAULT_FORWARD_LISTEN: &str = "127.0.0.1:3128";

pub async fn serve(args: Args) -> anyhow::Result<()> {
    let mut forward_args = args.forward.clone();
    // NB: standalone mode runs for one user on one machine, and its
    // registries are usually on loopback too; say otherwise with
    // --egress-allow.
    if forward_args.egress_allow.is_empty() {
        forward_args.egress_allow = ["127.0.0.0/8", "::1"].map(|a| a.parse().expect("a network")).to_vec();
    }
    forward_args.forward_listen = forward_args
        .forward_listen
        .or_else(|| DEFAULT_FORWARD_LISTEN.parse().ok());
    let state_dir = forward_args.state_dir()?;
    let proxy = Proxy::standalone(&args.standalone.settings(), forward_args.upstream_options())?;
    let store = proxy.store.clone().context("standalone mode has a store")?;
    let cert = state_dir.join("tls.crt");
    if !cert.exists() {
        let year = Duration::from_secs(365 * 24 * 3600);
        let ca = CertificateAuthority::generate("connectors standalone CA", year)?;
        let issued = ca.issue_serving(&["localhost".into()], &[args.webhook_listen.ip()], year)?;
        certs::write_serving_bundle(&state_dir, &ca, &issued)?;
    }
    let resolver = certs::ReloadingCertResolver::load(cert, state_dir.join("tls.key"))
        .context("failed to load the standalone certificate")?;
    let tls = certs::server_config(resolver, &[b"h2", b"http/1.1"])?;

    let listener = super::bind(args.proxy_listen).await?;
    let proxy_addr = listener.local_addr()?;
    let mut config = InjectionConfig::new(proxy_addr.to_string(), "127.0.0.1:3128");
    config.install_namespace = "connectors-system".into();
    let webhook_state = WebhookState {
        store,
        config: certs::Reloading::new(config),
        metrics: Arc::new(Metrics::default()),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let signal = super::webhook::shutdown_signal();
    tokio::spawn(async move {
        signal.await;
        let _ = stop.send(true);
    });
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stopped| *stopped).await;
    };
    tracing::info!(addr = %proxy_addr, mode = "reverse", "proxy listening");
    let ca = state_dir.join("ca.crt");
    let webhook_listener = super::bind(args.webhook_listen).await?;
    tracing::info!(addr = %webhook_listener.local_addr()?, ca = %ca.display(), "webhook listening");
    let webhook = webhook::server::serve_tls(
        webhook_listener,
        webhook::server::router(webhook_state),
        tls,
        webhook::server::limits(Duration::from_secs(10)),
        until_stopped(stopped.clone()),
    );
    let forward = super::proxy::serve_forward(
        &proxy,
        &forward_args,
        ServerLimits::default(),
        until_stopped(stopped.clone()),
    );
    let reverse = proxy.serve_reverse(
        listener,
        ServerLimits::default(),
        None,
        proxy::server::Role::Registry { metrics: true },
        until_stopped(stopped),
    );
    let (webhook, proxy, forward) = tokio::join!(webhook, reverse, forward);
    webhook.context("the webhook failed")?;
    forward?;
    proxy.context("the proxy failed")
}
