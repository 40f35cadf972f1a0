//! `connectors controller`: Connector status, certificate bootstrap and the
//! webhook caBundle, on the replica that holds the Lease.

use std::net::SocketAddr;
use std::time::Duration;

use ::controller::service::ServiceSettings;
use ::controller::{BootstrapSettings, LeaseTiming, Settings, StatusSettings};
use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    /// The namespace the product is installed in: the Lease, the certificate
    /// Secrets and the proxy CA ConfigMap live there.
    #[arg(long, env = "CONNECTORS_INSTALL_NAMESPACE", default_value = "connectors-system")]
    namespace: String,
    /// The CSI driver's namespace, which gets the proxy CA ConfigMap too.
    #[arg(long, env = "CONNECTORS_CSI_NAMESPACE", default_value = "connectors-csi")]
    csi_namespace: String,
    /// The proxy's base URL as workloads reach it; connector addresses are
    /// `<proxy-url>/namespaces/<ns>/connectors/<name>`.
    #[arg(
        long,
        env = "CONNECTORS_PROXY_URL",
        default_value = "http://connectors-proxy.connectors-system.svc"
    )]
    proxy_url: String,
    /// The proxy's Service name, for its serving certificate.
    #[arg(long, env = "CONNECTORS_PROXY_SERVICE", default_value = "connectors-proxy")]
    proxy_service: String,
    /// `host[:port]` of the reverse proxy as nodes reach it; its host is
    /// added to the proxy's serving certificate (unless it is loopback: the
    /// node pull endpoint speaks plain HTTP).
    #[arg(long, env = "CONNECTORS_PULL_ADDRESS")]
    pull_address: Option<String>,
    /// `host[:port]` of the reverse proxy's HTTPS as pods reach it; its host
    /// is added to the proxy's serving certificate.
    #[arg(long, env = "CONNECTORS_PROXY_ADDRESS")]
    proxy_address: Option<String>,
    /// The cluster's DNS domain.
    #[arg(long, env = "CONNECTORS_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// The webhook's Service name, for its serving certificate.
    #[arg(long, env = "CONNECTORS_WEBHOOK_SERVICE", default_value = "connectors-webhook")]
    webhook_service: String,
    /// More names or IP addresses for the webhook's certificate, for an API
    /// server that reaches the webhook by `url:` rather than through its
    /// Service (repeatable, or comma-separated in the variable).
    #[arg(long = "webhook-san", env = "CONNECTORS_WEBHOOK_SANS", value_delimiter = ',')]
    webhook_sans: Vec<String>,
    /// The MutatingWebhookConfiguration whose caBundle is kept current.
    #[arg(long, env = "CONNECTORS_WEBHOOK_CONFIGURATION", default_value = "connectors")]
    webhook_configuration: String,
    /// The leader-election Lease in the install namespace.
    #[arg(long, env = "CONNECTORS_LEASE_NAME", default_value = "connectors-controller")]
    lease_name: String,
    /// This replica's identity in the Lease (default: the host name).
    #[arg(long, env = "CONNECTORS_POD_NAME")]
    pod_name: Option<String>,
    /// Address of /healthz, /readyz and /metrics. Loopback by default, as
    /// every listener of `connectors`; the manifests pass `0.0.0.0:8081`.
    #[arg(long, env = "CONNECTORS_HEALTH_LISTEN", default_value = "127.0.0.1:8081")]
    health_listen: SocketAddr,
    /// How often healthy connectors are probed again.
    #[arg(long, env = "CONNECTORS_PROBE_INTERVAL_SECONDS", default_value_t = 300)]
    probe_interval_seconds: u64,
    /// At most this many referenced Secrets are watched for changes (about
    /// 40 KiB and a connection each): all up to it; beyond, those of
    /// connectors not Ready first, and the others read at their next probe.
    #[arg(long, env = "CONNECTORS_SECRET_WATCHES", default_value_t = controller::status::DEFAULT_SECRET_WATCHES)]
    secret_watches: usize,
    /// Timeout of each probe request.
    #[arg(long, env = "CONNECTORS_PROBE_TIMEOUT_SECONDS", default_value_t = 10)]
    probe_timeout_seconds: u64,
    /// Networks and hosts the probes may dial although they are special
    /// (loopback, link-local, private), as the proxy's `--egress-allow`.
    #[arg(long = "egress-allow", env = "CONNECTORS_EGRESS_ALLOW", value_delimiter = ',')]
    egress_allow: Vec<registry::egress::EgressAllow>,
    /// How often certificates are checked for rotation.
    #[arg(long, env = "CONNECTORS_CERTIFICATE_CHECK_SECONDS", default_value_t = 600)]
    certificate_check_seconds: u64,
    /// How long each phase of a CA rotation lasts (a new CA is trusted this
    /// long before it signs, the old one this long after): longer than any
    /// holder of the bundle takes to pick it up, including processes that
    /// read their trust once at start.
    #[arg(long, env = "CONNECTORS_CA_OVERLAP_SECONDS", default_value_t = 7 * 24 * 3600)]
    ca_overlap_seconds: u64,
}

pub async fn serve(args: Args) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration found")?;
    let identity = args
        .pod_name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(host_name);
    let probe_interval = Duration::from_secs(args.probe_interval_seconds.max(1));
    let settings = Settings {
        lease_namespace: args.namespace.clone(),
        lease_name: args.lease_name,
        identity,
        lease: LeaseTiming::default(),
        status: StatusSettings {
            proxy_url: args.proxy_url,
            services: Some(ServiceSettings {
                proxy_host: format!(
                    "{}.{}.svc.{}",
                    args.proxy_service,
                    args.namespace,
                    args.cluster_domain.trim_matches('.')
                ),
                cluster_domain: args.cluster_domain.clone(),
            }),
            probe_interval,
            initial_backoff: Duration::from_secs(10).min(probe_interval),
            concurrency: 4,
            secret_watches: args.secret_watches,
        },
        bootstrap: BootstrapSettings {
            namespace: args.namespace,
            csi_namespace: args.csi_namespace,
            proxy_service: args.proxy_service,
            addresses: [args.proxy_address, args.pull_address]
                .into_iter()
                .flatten()
                .filter(|a| !a.is_empty())
                .collect(),
            cluster_domain: args.cluster_domain,
            webhook_service: args.webhook_service,
            webhook_extra_names: args.webhook_sans,
            webhook_configuration: args.webhook_configuration,
            check_interval: Duration::from_secs(args.certificate_check_seconds.max(1)),
            ca_overlap: Duration::from_secs(args.ca_overlap_seconds),
        },
        probe_timeout: Duration::from_secs(args.probe_timeout_seconds.max(1)),
        egress: registry::egress::EgressPolicy::new(args.egress_allow),
        health_limits: controller::health::limits(),
    };
    let health = super::bind(args.health_listen).await?;
    let shutdown = super::webhook::shutdown_signal();
    tracing::info!(addr = %health.local_addr()?, identity = %settings.identity, "controller health endpoints listening");
    ::controller::run(client, settings, health, shutdown)
        .await
        .context("the controller's health server failed")
}

/// The host name (a pod's name in Kubernetes), or a per-process fallback.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| format!("connectors-controller-{}", std::process::id()))
}
