//! Accepting connections and draining them: the one loop both front doors
//! run. Bounded header sizes and a header-read timeout (a slow client
//! cannot hold a connection open before sending a request), no overall body
//! deadline, and a graceful shutdown that stops accepting, asks every open
//! connection to finish its request in flight, and waits up to a grace
//! period.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;

/// The client's socket address, set by the server as a request extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Limits of the server side.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Time to receive a request's headers.
    pub header_read_timeout: Duration,
    /// The largest request head (request line and headers).
    pub max_header_bytes: usize,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// The most connections a listener holds at once; more wait in the
    /// kernel's accept queue.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            shutdown_grace: Duration::from_secs(300),
            max_connections: 10_000,
        }
    }
}

impl ServerLimits {
    /// hyper's read buffer: room for the largest head, never below hyper's
    /// minimum.
    pub fn read_buffer(&self) -> usize {
        self.max_header_bytes.max(8192)
    }
}

/// Tells a connection that the server is shutting down.
#[derive(Clone)]
pub struct Stopping(watch::Receiver<bool>);

impl Stopping {
    /// Resolves once shutdown has begun.
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Drives a pinned hyper connection to its end; once shutdown begins, asks
/// it (`graceful_shutdown`) to finish its request in flight and close.
///
/// NB: a macro, not a generic function: hyper's connection futures carry
/// higher-ranked bounds that a generic async helper loses inside a spawned
/// task (rustc then cannot prove the task `Send`).
macro_rules! drain_on_stop {
    ($connection:expr, $stopping:expr) => {{
        let mut connection = $connection;
        tokio::select! {
            result = connection.as_mut() => result,
            () = $stopping.wait() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        }
    }};
}
pub(crate) use drain_on_stop;

/// Accepts connections on `listener` until `shutdown` resolves, serving
/// each with `serve` in its own task, at most `limits.max_connections` at
/// once; then stops accepting (new connections are refused), tells every
/// connection to finish, and waits up to the grace period for them.
pub async fn accept_and_drain<S, F>(
    listener: TcpListener,
    limits: &ServerLimits,
    shutdown: impl Future<Output = ()> + Send,
    serve: S,
) -> std::io::Result<()>
where
    S: Fn(TcpStream, SocketAddr, Stopping) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let grace = limits.shutdown_grace;
    let (stop, stopped) = watch::channel(false);
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // NB: at the cap, connections wait in the accept queue rather than
        // being accepted and starved.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = shutdown.as_mut() => break,
        };
        let Some((stream, peer)) = accept(&listener, shutdown.as_mut()).await else {
            break;
        };
        // NB: the handshake (if any) runs in the connection's task, so a
        // slow client never holds up accepting others.
        let connection = serve(stream, peer, Stopping(stopped.clone()));
        tracker.spawn(async move {
            connection.await;
            drop(slot);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    tracker.close();
    tracing::info!(grace = ?grace, connections = tracker.len(), "draining in-flight requests");
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("shutdown grace period over; closing remaining connections");
    }
    Ok(())
}

/// The next connection (with `TCP_NODELAY`), or None once `shutdown`
/// resolves. Accept errors (out of descriptors and the like) are logged
/// and retried after a pause.
async fn accept(
    listener: &TcpListener,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<(TcpStream, SocketAddr)> {
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

/// HTTP/2's connection preface: what an h2 client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What an h2 client must send at once: the preface and the header of its
/// mandatory SETTINGS frame.
const H2_OPENING: usize = H2_PREFACE.len() + 9;

/// A client connection that must say what it is before a deadline: the
/// first byte of an HTTP/1 request, or an HTTP/2 preface with its SETTINGS
/// frame.
///
/// NB: hyper-util's protocol detection has no timeout of its own, and
/// hyper's HTTP/1 head timeout starts only once HTTP/1 was chosen; without
/// this a connection that sends nothing, part of the preface, or the
/// preface alone is held open for good.
pub struct OpeningDeadline<I> {
    inner: I,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    seen: Vec<u8>,
}

impl<I> OpeningDeadline<I> {
    pub fn new(inner: I, within: Duration) -> Self {
        Self {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
            seen: Vec::with_capacity(H2_OPENING),
        }
    }

    /// Records bytes read; the deadline is lifted once the opening is
    /// complete.
    fn observe(&mut self, bytes: &[u8]) {
        let room = H2_OPENING.saturating_sub(self.seen.len());
        self.seen.extend_from_slice(&bytes[..bytes.len().min(room)]);
        let compared = self.seen.len().min(H2_PREFACE.len());
        let h2 = self.seen[..compared] == H2_PREFACE[..compared];
        if (!self.seen.is_empty() && !h2) || self.seen.len() >= H2_OPENING {
            // HTTP/1 (hyper's head timeout takes over), or an h2 client
            // that opened properly (keep-alive pings take over).
            self.deadline = None;
            self.seen = Vec::new();
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for OpeningDeadline<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.deadline.is_some() {
                    this.observe(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client did not open its connection in time",
                    )))
                } else {
                    Poll::Pending
                }
            }
            other => other,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for OpeningDeadline<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn opened_by(sent: &[u8]) -> io::Result<usize> {
        let (client, server) = tokio::io::duplex(1024);
        let (mut client, mut server) = (client, OpeningDeadline::new(server, Duration::from_millis(200)));
        client.write_all(sent).await.unwrap();
        let mut buf = [0u8; 64];
        let mut total = 0;
        // Reads until the deadline error, or the opening is complete and
        // the reader then waits (which the outer timeout ends).
        loop {
            match tokio::time::timeout(Duration::from_millis(600), server.read(&mut buf)).await {
                Ok(Ok(n)) => total += n,
                Ok(Err(error)) => return Err(error),
                Err(_) => return Ok(total),
            }
        }
    }

    #[tokio::test]
    async fn connections_that_do_not_open_in_time_are_ended() {
        for sent in [&b""[..], b"PRI * HTTP/2.0\r\n", H2_PREFACE] {
            let error = opened_by(sent).await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{sent:?}");
        }
    }

    #[tokio::test]
    async fn http1_and_complete_h2_openings_are_left_to_hyper() {
        assert_eq!(
            opened_by(b"G").await.unwrap(),
            1,
            "HTTP/1 waits on hyper's own head timeout"
        );
        let mut opening = H2_PREFACE.to_vec();
        opening.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(opened_by(&opening).await.unwrap(), H2_OPENING);
    }
}
