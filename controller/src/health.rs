//! `/healthz`, `/readyz` (ready once the Connector cache has synced) and
//! `/metrics`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use serving::ServerLimits;

use crate::metrics::Metrics;

#[derive(Clone)]
struct HealthState {
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

/// The health listener's limits: kubelet probes and Prometheus send small
/// heads and need few connections.
pub fn limits() -> ServerLimits {
    ServerLimits {
        header_read_timeout: Duration::from_secs(10),
        max_header_bytes: 16 * 1024,
        shutdown_grace: Duration::from_secs(5),
        max_connections: 256,
    }
}

/// Serves the health endpoints on `listener` under `limits` until
/// `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    limits: ServerLimits,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(HealthState { ready, metrics });
    let service = hyper_util::service::TowerToHyperService::new(router);
    serving::http::serve(listener, limits, None, service, shutdown).await
}

async fn readyz(State(state): State<HealthState>) -> impl IntoResponse {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "the connector cache has not synced")
    }
}

async fn metrics_text(State(state): State<HealthState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
