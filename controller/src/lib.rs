//! The leader-elected controller: Connector status (proxy address, Secret,
//! liveness and auth probes, the aggregate `Ready`), certificate bootstrap
//! for the proxy and the webhook, and the webhook's `caBundle`.
//!
//! Every replica watches and serves health; only the Lease holder probes
//! registries and writes to the API server.
//!
//! Probes use `registry`'s token exchange and realm check, so the status
//! says what the proxy will meet; it must not depend on `proxy`, `webhook`
//! or `csi`.

pub mod bootstrap;
pub mod conditions;
pub mod health;
pub mod lease;
pub mod metrics;
pub mod probe;
pub mod rotation;
pub mod service;
pub mod status;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use bootstrap::BootstrapSettings;
pub use lease::LeaseTiming;
pub use status::StatusSettings;

/// Everything the controller needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The Lease's namespace and name, and this replica's identity.
    pub lease_namespace: String,
    pub lease_name: String,
    pub identity: String,
    pub lease: LeaseTiming,
    pub status: StatusSettings,
    pub bootstrap: BootstrapSettings,
    /// Timeout of each probe request.
    pub probe_timeout: Duration,
    /// What the probes may dial: the proxy's egress policy.
    pub egress: registry::egress::EgressPolicy,
    /// Limits of the health listener ([`health::limits`] by default).
    pub health_limits: serving::ServerLimits,
}

/// Runs the controller until `shutdown` resolves: health endpoints on
/// `health`, leader election, and (while leading) status and certificates.
/// On shutdown the writers stop first, then the lease is released.
///
/// Dropping the returned future stops everything at once without releasing
/// the lease, as a crashed replica would.
pub async fn run(
    client: kube::Client,
    settings: Settings,
    health: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let metrics = Arc::new(metrics::Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let stop_work = CancellationToken::new();
    let stop_lease = CancellationToken::new();
    let stop_health = CancellationToken::new();

    let election = lease::LeaderElection::new(
        client.clone(),
        &settings.lease_namespace,
        &settings.lease_name,
        &settings.identity,
        settings.lease,
    );
    let leader = election.subscribe();
    let (proxy_ca, proxy_ca_updates) = watch::channel(None);

    let leadership_gauge = {
        let mut leader = leader.clone();
        let metrics = metrics.clone();
        async move {
            loop {
                metrics.leader.set(i64::from(*leader.borrow_and_update()));
                if leader.changed().await.is_err() {
                    return;
                }
            }
        }
    };
    let bootstrap = bootstrap::Bootstrap::new(
        client.clone(),
        settings.bootstrap.clone(),
        leader.clone(),
        proxy_ca,
        metrics.clone(),
    );
    let writers = {
        let stop = stop_work.clone();
        let status = status::run(
            client.clone(),
            settings.status.clone(),
            probe::Prober::new(settings.probe_timeout, settings.egress.clone()),
            &settings.identity,
            leader.clone(),
            proxy_ca_updates,
            metrics.clone(),
            ready.clone(),
            stop.clone().cancelled_owned(),
        );
        let certificates = bootstrap.run(stop.cancelled_owned());
        async move {
            futures::join!(status, certificates);
        }
    };
    let campaign = election.run(stop_lease.clone().cancelled_owned());
    let health_server = health::serve(
        health,
        settings.health_limits.clone(),
        ready,
        metrics.clone(),
        stop_health.clone().cancelled_owned(),
    );

    let sequence = async {
        shutdown.await;
        tracing::info!("stopping: writers first, then the lease");
        stop_work.cancel();
    };
    let (_, _, _, served, ()) = tokio::join!(
        async {
            writers.await;
            stop_lease.cancel();
        },
        async {
            campaign.await;
            stop_health.cancel();
        },
        sequence,
        health_server,
        async {
            tokio::select! {
                () = leadership_gauge => {}
                () = stop_health.cancelled() => {}
            }
        },
    );
    served
}
