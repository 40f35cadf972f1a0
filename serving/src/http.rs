//! Serving HTTP/1.1 and h2 on accepted connections, plain or over TLS, with
//! the same limits on every listener: the opening deadline, hyper's head
//! timeout, HTTP/2 keep-alive pings and stream and header caps, and a TLS
//! handshake deadline.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::listener::{ServerLimits, accept_and_drain};
use crate::opening::OpeningDeadline;

/// The most concurrent streams of one HTTP/2 connection.
pub const MAX_H2_STREAMS: u32 = 256;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connection builder for HTTP/1.1 and h2 with `limits`: heads must
/// arrive within the head timeout and fit the head size; an h2 peer that
/// stops answering keep-alive pings is closed, and its streams and header
/// lists are capped like HTTP/1 heads.
pub fn builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.read_buffer())
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.header_read_timeout))
        .keep_alive_timeout(limits.header_read_timeout)
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// The server side of a TLS handshake on `stream`, given `within` to
/// finish (see [`ServerLimits::handshake_timeout`]).
pub async fn handshake<S>(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: S,
    within: Duration,
) -> io::Result<tokio_rustls::server::TlsStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::time::timeout(within, acceptor.accept(stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the TLS handshake timed out"))?
}

/// Serves `service` on `listener` (over TLS when `tls` is given) until
/// `shutdown` resolves, under `limits`; then drains like
/// [`accept_and_drain`]. For listeners whose requests need nothing of the
/// connection: health, metrics, the webhook.
pub async fn serve<S, B>(
    listener: TcpListener,
    limits: ServerLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    service: S,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let accept_limits = limits.clone();
    accept_and_drain(listener, &accept_limits, shutdown, move |stream, peer, mut stopping| {
        let (service, limits, acceptor) = (service.clone(), limits.clone(), acceptor.clone());
        async move {
            let opening = limits.header_read_timeout;
            let builder = builder(&limits);
            let result = match acceptor {
                None => {
                    let connection =
                        builder.serve_connection(TokioIo::new(OpeningDeadline::new(stream, opening)), service);
                    crate::drain_on_stop!(std::pin::pin!(connection), stopping)
                }
                Some(acceptor) => match handshake(&acceptor, stream, limits.handshake_timeout()).await {
                    Ok(stream) => {
                        let connection =
                            builder.serve_connection(TokioIo::new(OpeningDeadline::new(stream, opening)), service);
                        crate::drain_on_stop!(std::pin::pin!(connection), stopping)
                    }
                    Err(error) => {
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                },
            };
            if let Err(error) = result {
                tracing::debug!(%peer, error = ?error, "connection ended with an error");
            }
        }
    })
    .await
}
