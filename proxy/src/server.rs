//! The proxy's HTTP server: `/v2/...` to reverse mode, plus `/healthz`,
//! `/readyz` and `/metrics`. Bounded header sizes and a header-read timeout
//! (slow clients cannot hold a connection open before sending a request),
//! no overall body deadline, and a graceful shutdown that lets in-flight
//! transfers finish within a grace period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::reverse::ReverseProxy;
use crate::splice::ClientIo;
use crate::upstream::ProxyBody;

/// Limits of the server side.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Time to receive a request's headers.
    pub header_read_timeout: Duration,
    /// The largest request head (request line and headers).
    pub max_header_bytes: usize,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            shutdown_grace: Duration::from_secs(300),
        }
    }
}

/// Serves `proxy` on `listener` until `shutdown` resolves, then stops
/// accepting and waits up to the grace period for open requests.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<ReverseProxy>,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
    limits: ServerLimits,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    while let Some((stream, peer)) = accept(&listener, shutdown.as_mut()).await {
        let (io, socket) = ClientIo::new(stream);
        let (proxy, ready) = (proxy.clone(), ready.clone());
        let service = service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(socket.clone());
            let (proxy, ready) = (proxy.clone(), ready.clone());
            async move { Ok::<_, std::convert::Infallible>(dispatch(&proxy, ready.as_ref(), request, peer).await) }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(limits.max_header_bytes as u32);
        let connection = builder.serve_connection(io, service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, error = %error, "connection ended with an error");
            }
        });
    }
    // Refuse new connections while in-flight requests drain.
    drop(listener);
    tracing::info!(grace = ?limits.shutdown_grace, "draining in-flight requests");
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over; closing remaining connections");
    }
    Ok(())
}

/// The next connection (with `TCP_NODELAY`), or None once `shutdown`
/// resolves. Accept errors (out of descriptors and the like) are logged
/// and retried after a pause.
pub(crate) async fn accept(
    listener: &TcpListener,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((stream, peer));
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = shutdown.as_mut() => return None,
        }
    }
}

async fn dispatch(
    proxy: &ReverseProxy,
    ready: &(dyn Fn() -> bool + Send + Sync),
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let path = request.uri().path();
    if path == "/v2" || path.starts_with("/v2/") {
        let span = tracing::debug_span!("request", %peer, method = %request.method());
        let _entered = span.enter();
        return proxy.handle(request).await;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok"),
        "/readyz" if ready() => text(StatusCode::OK, "ok"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "connector store not synced yet"),
        "/metrics" => {
            let mut response = text(StatusCode::OK, proxy.metrics.encode());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found: the registry API is under /v2/"),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut response = Response::new(Full::new(body.into()).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response
}
