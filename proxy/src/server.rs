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
use crate::splice::{ClientIo, ClientSocket};
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
    serve_with(listener, proxy, ready, limits, None, shutdown).await
}

/// [`serve`] over TLS (`tls` offers `http/1.1`, and `h2` if wanted). Blob
/// bodies are copied rather than spliced: their bytes must be encrypted.
pub async fn serve_tls(
    listener: TcpListener,
    proxy: Arc<ReverseProxy>,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
    limits: ServerLimits,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    serve_with(listener, proxy, ready, limits, Some(tls), shutdown).await
}

/// How long a client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_with(
    listener: TcpListener,
    proxy: Arc<ReverseProxy>,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
    limits: ServerLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let graceful = Arc::new(hyper_util::server::graceful::GracefulShutdown::new());
    let mut shutdown = std::pin::pin!(shutdown);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    while let Some((stream, peer)) = accept(&listener, shutdown.as_mut()).await {
        let (proxy, ready, limits, graceful) = (proxy.clone(), ready.clone(), limits.clone(), graceful.clone());
        let Some(acceptor) = acceptor.clone() else {
            let (io, socket) = ClientIo::new(stream);
            serve_connection(io, Some(socket), peer, proxy, ready, &limits, &graceful);
            continue;
        };
        // NB: the handshake runs in the connection's task, so a slow client
        // never holds up accepting others.
        tokio::spawn(async move {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    serve_connection(io, None, peer, proxy, ready, &limits, &graceful);
                }
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
    // Refuse new connections while in-flight requests drain.
    drop(listener);
    tracing::info!(grace = ?limits.shutdown_grace, "draining in-flight requests");
    // NB: handshakes in flight hold the tracker for at most their timeout.
    let mut graceful = graceful;
    let deadline = tokio::time::Instant::now() + TLS_HANDSHAKE_TIMEOUT + Duration::from_secs(1);
    let graceful = loop {
        match Arc::try_unwrap(graceful) {
            Ok(graceful) => break graceful,
            Err(shared) if tokio::time::Instant::now() < deadline => {
                graceful = shared;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => return Ok(()),
        }
    };
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over; closing remaining connections");
    }
    Ok(())
}

/// Serves one accepted connection in its own task, watched by `graceful`.
fn serve_connection<I>(
    io: I,
    socket: Option<ClientSocket>,
    peer: SocketAddr,
    proxy: Arc<ReverseProxy>,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
    limits: &ServerLimits,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    {
        let service = service_fn(move |mut request: Request<Incoming>| {
            if let Some(socket) = &socket {
                request.extensions_mut().insert(socket.clone());
            }
            request.extensions_mut().insert(crate::reverse::PeerAddr(peer));
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
                tracing::debug!(%peer, error = ?error, "connection ended with an error");
            }
        });
    }
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
