//! The reverse listener: `/v2/...` to the [`Pipeline`], plus `/healthz`,
//! `/readyz`, and `/metrics` unless the metrics have a listener of their own
//! (which answers only those three); HTTP/1.1 and h2, plain or over TLS.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::pipeline::Pipeline;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use registry::body::{self, ProxyBody};
use registry::splice::{ClientIo, ClientSocket};
use serving::http::handshake;
use serving::{OpeningDeadline, PeerAddr, ServerLimits, Stopping, accept_and_drain, drain_on_stop};
use tokio::net::TcpListener;
use tracing::Instrument;

/// Whether the process is ready to serve (its caches hold a complete view).
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// What a listener answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The registry API and health; `/metrics` too when `metrics` (it has
    /// no listener of its own).
    Registry { metrics: bool },
    /// Only `/healthz`, `/readyz` and `/metrics`: a listener the pods'
    /// Service does not reach, so tenants cannot read every connector's
    /// name and traffic.
    Metrics,
}

/// Serves reverse mode on `listener` until `shutdown` resolves; over TLS
/// when `tls` is given (it offers `http/1.1`, and `h2` if wanted; blob
/// bodies are then copied rather than spliced, since their bytes must be
/// encrypted).
pub async fn serve(
    listener: TcpListener,
    pipeline: Arc<Pipeline>,
    ready: Readiness,
    limits: ServerLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    role: Role,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let accept_limits = limits.clone();
    accept_and_drain(listener, &accept_limits, shutdown, move |stream, peer, stopping| {
        let (pipeline, ready, limits, acceptor) = (pipeline.clone(), ready.clone(), limits.clone(), acceptor.clone());
        async move {
            let opening = limits.header_read_timeout;
            let Some(acceptor) = acceptor else {
                let (io, socket) = ClientIo::new(stream);
                let io = TokioIo::new(OpeningDeadline::new(io, opening));
                return serve_connection(io, Some(socket), peer, (pipeline, ready, role), &limits, stopping).await;
            };
            match handshake(&acceptor, stream, limits.handshake_timeout()).await {
                Ok(stream) => {
                    let io = TokioIo::new(OpeningDeadline::new(stream, opening));
                    serve_connection(io, None, peer, (pipeline, ready, role), &limits, stopping).await
                }
                Err(error) => tracing::debug!(%peer, %error, "TLS handshake failed"),
            }
        }
    })
    .await
}

/// Serves one accepted connection until it ends or, after shutdown began,
/// its request in flight is answered.
async fn serve_connection<I>(
    io: I,
    socket: Option<ClientSocket>,
    peer: SocketAddr,
    (pipeline, ready, role): (Arc<Pipeline>, Readiness, Role),
    limits: &ServerLimits,
    mut stopping: Stopping,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |mut request: Request<Incoming>| {
        if let Some(socket) = &socket {
            request.extensions_mut().insert(socket.clone());
        }
        request.extensions_mut().insert(PeerAddr(peer));
        let (pipeline, ready) = (pipeline.clone(), ready.clone());
        async move { Ok::<_, std::convert::Infallible>(dispatch(&pipeline, ready.as_ref(), role, request, peer).await) }
    });
    let builder = serving::http::builder(limits);
    let connection = builder.serve_connection(io, service);
    let result = drain_on_stop!(std::pin::pin!(connection), stopping);
    if let Err(error) = result {
        tracing::debug!(%peer, error = ?error, "connection ended with an error");
    }
}

async fn dispatch(
    pipeline: &Pipeline,
    ready: &(dyn Fn() -> bool + Send + Sync),
    role: Role,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let path = request.uri().path();
    let registry = matches!(role, Role::Registry { .. });
    let metrics = matches!(role, Role::Metrics | Role::Registry { metrics: true });
    if registry && (path == "/v2" || path.starts_with("/v2/")) {
        let span = tracing::debug_span!("request", %peer, method = %request.method());
        return pipeline.handle(request).instrument(span).await;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok"),
        "/readyz" if ready() => text(StatusCode::OK, "ok"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "connector store not synced yet"),
        "/metrics" if metrics => {
            let mut response = text(StatusCode::OK, pipeline.metrics_text());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            response
        }
        _ if registry => text(StatusCode::NOT_FOUND, "not found: the registry API is under /v2/"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: this listener serves /metrics, /healthz and /readyz",
        ),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(body));
    *response.status_mut() = status;
    response
}
