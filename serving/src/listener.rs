//! Accepting connections and draining them: the one loop every listener
//! runs. Bounded header sizes and a header-read timeout (a slow client
//! cannot hold a connection open before sending a request), no overall body
//! deadline, and a graceful shutdown that stops accepting, asks every open
//! connection to finish its request in flight, and waits up to a grace
//! period.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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

/// The longest a client may take to finish a TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl ServerLimits {
    /// How long a client may take to finish a TLS handshake:
    /// [`TLS_HANDSHAKE_TIMEOUT`], or the head timeout if that is shorter
    /// (a connection that never completes its handshake has sent no
    /// request either).
    pub fn handshake_timeout(&self) -> Duration {
        self.header_read_timeout.min(TLS_HANDSHAKE_TIMEOUT)
    }

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
#[macro_export]
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
