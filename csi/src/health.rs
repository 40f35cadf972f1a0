//! `/healthz` for kubelet's liveness probe: the plugin's own answer to
//! what the livenessprobe sidecar gives other CSI drivers. Each request
//! dials the plugin's socket and calls `Probe`, as kubelet would, so a
//! plugin whose socket is gone or whose server hangs fails the probe.
//! `/metrics` is served beside it.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serving::ServerLimits;

use crate::metrics::Metrics;
use crate::proto::ProbeRequest;
use crate::proto::identity_client::IdentityClient;

/// How long one probe may take, dialling included.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The health listener's limits: kubelet's probes send small heads and need
/// few connections.
pub fn limits() -> ServerLimits {
    ServerLimits {
        header_read_timeout: Duration::from_secs(10),
        max_header_bytes: 16 * 1024,
        shutdown_grace: Duration::from_secs(2),
        max_connections: 64,
    }
}

/// Whether the plugin on `socket` answers `Probe` ready within
/// [`PROBE_TIMEOUT`]: `Err` says why not.
pub async fn probe(socket: PathBuf) -> Result<(), String> {
    let call = async {
        let channel = crate::client::connect_unix(socket, PROBE_TIMEOUT)
            .await
            .map_err(|e| format!("dialling the plugin failed: {e}"))?;
        let response = IdentityClient::new(channel)
            .probe(ProbeRequest {})
            .await
            .map_err(|e| format!("Probe failed: {}", e.message()))?;
        match response.into_inner().ready {
            Some(false) => Err("the plugin is not ready".to_owned()),
            _ => Ok(()),
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(format!("Probe took longer than {PROBE_TIMEOUT:?}")))
}

/// Serves `/healthz` on `listener` for the plugin on `socket` until
/// `shutdown` resolves: 200 when it answers `Probe` ready, 503 with the
/// reason otherwise; `/metrics` from `metrics`; 404 for any other path.
pub async fn serve(
    listener: tokio::net::TcpListener,
    socket: PathBuf,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let (socket, metrics) = (socket.clone(), metrics.clone());
        async move {
            let (status, body, content_type) = match request.uri().path() {
                "/healthz" => match probe(socket).await {
                    Ok(()) => (StatusCode::OK, "ok\n".to_owned(), TEXT),
                    Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n"), TEXT),
                },
                "/metrics" => (StatusCode::OK, metrics.encode(), OPENMETRICS),
                _ => (
                    StatusCode::NOT_FOUND,
                    "not found: this listener serves /healthz and /metrics\n".to_owned(),
                    TEXT,
                ),
            };
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status;
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(content_type),
            );
            Ok::<_, Infallible>(response)
        }
    });
    serving::http::serve(listener, limits(), None, service, shutdown).await
}

const TEXT: &str = "text/plain; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
