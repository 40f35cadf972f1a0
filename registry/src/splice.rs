//! Zero-copy relaying of blob bodies: when a blob comes from a plain-HTTP
//! upstream to an HTTP/1 client, its bytes move socket to pipe to socket
//! with `splice(2)` and never enter the process.
//!
//! hyper keeps owning both connections, so keep-alive, pooling, timeouts
//! and graceful shutdown stay hyper's. Two small hand-overs make room for
//! the kernel:
//!
//! - Upstream: the response's connection carries an [`UpstreamSocket`]. On
//!   relaying, reads through hyper are closed off; the bytes hyper had
//!   already read are drained from the body and sent first, and the rest of
//!   the body is spliced straight from the socket. The connection is then
//!   spent and never returns to the pool.
//! - Client: the request carries a [`ClientSocket`]. The response body waits
//!   until hyper has flushed everything before it (head and drained bytes),
//!   splices, then hands hyper placeholder bytes of the same length that the
//!   connection wrapper swallows, so hyper's framing and keep-alive stay
//!   exact.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header;
use hyper::{StatusCode, Version};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tower_service::Service;

use crate::body::{BoxError, ProxyBody};
use crate::egress::EgressPolicy;
use crate::resolve::Pins;

/// A relay that makes no progress for this long is abandoned.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Bytes moved per pipe fill (the pipe is resized to this when allowed).
const PIPE_CAPACITY: usize = 1 << 20;

/// The placeholder hyper writes for spliced bytes; never reaches a socket.
static PLACEHOLDER: [u8; 256 * 1024] = [0; 256 * 1024];

// ---------------------------------------------------------------- client side

#[derive(Default)]
struct ClientState {
    /// Bytes hyper will write that were already spliced: dropped.
    swallow: u64,
    /// A relay waiting for hyper to flush what precedes its bytes.
    flush_waiter: Option<Waker>,
    flushed: bool,
}

/// The client connection as hyper's IO; see the module docs.
pub struct ClientIo {
    stream: Arc<TcpStream>,
    state: Arc<Mutex<ClientState>>,
}

/// A request extension: the client connection, for relays into it.
#[derive(Clone)]
pub struct ClientSocket {
    stream: Arc<TcpStream>,
    state: Arc<Mutex<ClientState>>,
}

impl ClientIo {
    /// Wraps an accepted connection; the socket handle goes into every
    /// request read from it.
    pub fn new(stream: TcpStream) -> (Self, ClientSocket) {
        let stream = Arc::new(stream);
        let state = Arc::new(Mutex::new(ClientState::default()));
        let socket = ClientSocket {
            stream: stream.clone(),
            state: state.clone(),
        };
        (Self { stream, state }, socket)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ClientState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        poll_read_shared(&self.stream, cx, buf)
    }
}

impl ClientIo {
    /// Takes up to `len` bytes as already spliced, if a relay left some.
    fn swallow(&self, len: usize) -> Option<usize> {
        let mut state = self.state();
        (state.swallow > 0).then(|| {
            let n = len.min(usize::try_from(state.swallow).unwrap_or(usize::MAX));
            state.swallow -= n as u64;
            n
        })
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.swallow(buf.len()) {
            Some(n) => Poll::Ready(Ok(n)),
            None => poll_write_shared(&self.stream, cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.swallow(bufs.iter().map(|b| b.len()).sum()) {
            Some(n) => Poll::Ready(Ok(n)),
            None => poll_write_vectored_shared(&self.stream, cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // NB: hyper flushes its IO only after writing out its own buffer, so
        // at this point every byte before a waiting relay is in the socket.
        let mut state = self.state();
        if let Some(waker) = state.flush_waiter.take() {
            state.flushed = true;
            waker.wake();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(shutdown_write(&self.stream))
    }
}

fn shutdown_write(stream: &TcpStream) -> io::Result<()> {
    match rustix::net::shutdown(stream, rustix::net::Shutdown::Write) {
        Err(e) if e != rustix::io::Errno::NOTCONN => Err(e.into()),
        _ => Ok(()),
    }
}

fn poll_write_shared(stream: &TcpStream, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
    loop {
        std::task::ready!(stream.poll_write_ready(cx))?;
        match stream.try_write(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            result => return Poll::Ready(result),
        }
    }
}

fn poll_write_vectored_shared(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    bufs: &[io::IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    loop {
        std::task::ready!(stream.poll_write_ready(cx))?;
        match stream.try_write_vectored(bufs) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            result => return Poll::Ready(result),
        }
    }
}

fn poll_read_shared(stream: &TcpStream, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
    loop {
        std::task::ready!(stream.poll_read_ready(cx))?;
        let unfilled = buf.initialize_unfilled();
        match stream.try_read(unfilled) {
            Ok(n) => {
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

// -------------------------------------------------------------- upstream side

/// A response extension of plain-HTTP upstream connections.
#[derive(Clone)]
pub struct UpstreamSocket {
    stream: Arc<TcpStream>,
    handed_over: Arc<AtomicBool>,
}

/// An upstream connection as hyper's IO; reads end once it is handed over.
pub struct UpstreamIo {
    stream: Arc<TcpStream>,
    handed_over: Arc<AtomicBool>,
    /// Only plain-HTTP connections offer themselves for relaying.
    offer: bool,
}

impl AsyncRead for UpstreamIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.handed_over.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::Error::other("the connection was handed to a zero-copy relay")));
        }
        poll_read_shared(&self.stream, cx, buf)
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        poll_write_shared(&self.stream, cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        poll_write_vectored_shared(&self.stream, cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // NB: hyper shuts a handed-over connection down when its reads end,
        // while the relay is still reading the body. A FIN then reads as a
        // client abort to servers that watch for one (nginx, hyper), which
        // stop sending mid-blob. The relay's drop closes the socket.
        if self.handed_over.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        Poll::Ready(shutdown_write(&self.stream))
    }
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        let connected = self.stream.as_ref().connected();
        if self.offer {
            connected.extra(UpstreamSocket {
                stream: self.stream.clone(),
                handed_over: self.handed_over.clone(),
            })
        } else {
            connected
        }
    }
}

/// An [`HttpConnector`] whose plain-HTTP connections can be relayed from.
/// It resolves each name once (pinned hosts at their pinned address) and
/// dials only the answers the egress policy allows.
#[derive(Clone)]
pub struct RelayConnector {
    http: HttpConnector,
    pins: Arc<Pins>,
    egress: Arc<EgressPolicy>,
}

impl RelayConnector {
    pub fn new(http: HttpConnector, pins: Arc<Pins>, egress: Arc<EgressPolicy>) -> Self {
        Self { http, pins, egress }
    }
}

impl Service<hyper::Uri> for RelayConnector {
    type Response = TokioIo<UpstreamIo>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let offer = uri.scheme() == Some(&hyper::http::uri::Scheme::HTTP);
        let port = uri.port_u16().unwrap_or(if offer { 80 } else { 443 });
        let (mut http, pins, egress) = (self.http.clone(), self.pins.clone(), self.egress.clone());
        Box::pin(async move {
            let host = uri.host().unwrap_or_default();
            let addresses = egress.resolve(&pins, host, port).await?;
            let mut failed = None;
            for address in addresses {
                // NB: only the dial changes; TLS still verifies the name in `uri`.
                let dial = hyper::Uri::builder()
                    .scheme(uri.scheme_str().unwrap_or("http"))
                    .authority(address.to_string())
                    .path_and_query("/")
                    .build()?;
                match http.call(dial).await {
                    Ok(stream) => {
                        return Ok(TokioIo::new(UpstreamIo {
                            stream: Arc::new(stream.into_inner()),
                            handed_over: Arc::new(AtomicBool::new(false)),
                            offer,
                        }));
                    }
                    Err(error) => failed = Some(error),
                }
            }
            Err(failed.map_or_else(|| BoxError::from("no address to dial"), BoxError::from))
        })
    }
}

// ---------------------------------------------------------------- the relay

/// The response body relayed with `splice(2)` when both ends allow it: a
/// 200 or 206 GET of a plain-HTTP upstream with a known length of at least
/// [`MIN_RELAY_LENGTH`], to an HTTP/1 client. Otherwise the body comes back
/// untouched for the copying path.
pub fn relay_body(
    response: &hyper::http::response::Parts,
    body: Incoming,
    client: Option<&ClientSocket>,
    client_version: Version,
    counter: prometheus_client::metrics::counter::Counter,
) -> Result<ProxyBody, Incoming> {
    let eligible = cfg!(target_os = "linux")
        && matches!(client_version, Version::HTTP_10 | Version::HTTP_11)
        && matches!(response.status, StatusCode::OK | StatusCode::PARTIAL_CONTENT)
        && !response.headers.contains_key(header::TRANSFER_ENCODING);
    let length = response
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let upstream = response.extensions.get::<UpstreamSocket>();
    let (Some(client), Some(upstream), Some(length), true) = (client, upstream, length, eligible) else {
        return Err(body);
    };
    // NB: small bodies are not worth a pipe and a spent connection.
    if length < MIN_RELAY_LENGTH {
        return Err(body);
    }
    upstream.handed_over.store(true, Ordering::Release);
    Ok(http_body_util::BodyExt::boxed(RelayBody {
        length,
        sent: 0,
        stage: Stage::Draining(body),
        upstream: upstream.clone(),
        client: client.clone(),
        counter,
    }))
}

/// Bodies below this are copied: the relay costs a fresh upstream connection.
pub(crate) const MIN_RELAY_LENGTH: u64 = 1 << 20;

type RelayFuture = Pin<Box<dyn Future<Output = io::Result<u64>> + Send + Sync>>;

enum Stage {
    /// Passing on what hyper read before the hand-over.
    Draining(Incoming),
    /// Waiting for hyper to flush what precedes the spliced bytes.
    Flushing,
    Splicing(RelayFuture),
    /// Handing hyper the placeholder for `n` spliced bytes.
    Placeholder(u64),
    Done,
}

struct RelayBody {
    length: u64,
    /// Bytes that have reached the client (or are hyper's to write).
    sent: u64,
    stage: Stage,
    upstream: UpstreamSocket,
    client: ClientSocket,
    counter: prometheus_client::metrics::counter::Counter,
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match &mut this.stage {
                Stage::Draining(incoming) => match std::task::ready!(Pin::new(incoming).poll_frame(cx)) {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            if data.is_empty() {
                                continue;
                            }
                            if this.sent + data.len() as u64 > this.length {
                                this.stage = Stage::Done;
                                return Poll::Ready(Some(Err("the upstream sent more than its Content-Length".into())));
                            }
                            this.sent += data.len() as u64;
                            this.counter.inc_by(data.len() as u64);
                            return Poll::Ready(Some(Ok(frame)));
                        }
                    }
                    // The read hyper tried after the hand-over (or the end
                    // of a body hyper had read whole): hyper is drained.
                    Some(Err(_)) | None => {
                        this.stage = if this.sent == this.length {
                            Stage::Done
                        } else {
                            let mut state = this.client.state.lock().unwrap_or_else(|e| e.into_inner());
                            state.flushed = false;
                            state.flush_waiter = Some(cx.waker().clone());
                            drop(state);
                            Stage::Flushing
                        };
                    }
                },
                Stage::Flushing => {
                    let mut state = this.client.state.lock().unwrap_or_else(|e| e.into_inner());
                    if !state.flushed {
                        state.flush_waiter = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                    state.flushed = false;
                    drop(state);
                    let relay = splice_exact(
                        this.upstream.stream.clone(),
                        this.client.stream.clone(),
                        this.length - this.sent,
                        this.counter.clone(),
                    );
                    this.stage = Stage::Splicing(Box::pin(relay));
                }
                Stage::Splicing(relay) => match std::task::ready!(relay.as_mut().poll(cx)) {
                    Ok(moved) => {
                        this.client.state.lock().unwrap_or_else(|e| e.into_inner()).swallow = moved;
                        this.sent += moved;
                        this.stage = Stage::Placeholder(moved);
                    }
                    Err(error) => {
                        this.stage = Stage::Done;
                        return Poll::Ready(Some(Err(Box::new(error))));
                    }
                },
                Stage::Placeholder(left) => {
                    if *left == 0 {
                        this.stage = Stage::Done;
                        continue;
                    }
                    let n = (*left).min(PLACEHOLDER.len() as u64);
                    *left -= n;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&PLACEHOLDER[..n as usize])))));
                }
                Stage::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.stage, Stage::Done) || matches!(self.stage, Stage::Placeholder(0))
    }

    fn size_hint(&self) -> SizeHint {
        let left = match self.stage {
            Stage::Placeholder(left) => left,
            Stage::Done => 0,
            _ => self.length - self.sent,
        };
        SizeHint::with_exact(left)
    }
}

/// Moves exactly `length` bytes from `upstream` to `client` through a pipe.
async fn splice_exact(
    upstream: Arc<TcpStream>,
    client: Arc<TcpStream>,
    length: u64,
    counter: prometheus_client::metrics::counter::Counter,
) -> io::Result<u64> {
    use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};
    let (pipe_out, pipe_in) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    let capacity = fcntl_setpipe_size(&pipe_in, PIPE_CAPACITY).unwrap_or(64 * 1024);
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    let mut left = length;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(capacity);
        let filled = idle_bounded(async {
            loop {
                upstream.readable().await?;
                match upstream.try_io(Interest::READABLE, || {
                    splice(upstream.as_ref(), None, &pipe_in, None, want, flags).map_err(io::Error::from)
                }) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    result => return result,
                }
            }
        })
        .await?;
        if filled == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the upstream closed the connection {left} bytes before the end of the blob"),
            ));
        }
        let mut in_pipe = filled;
        while in_pipe > 0 {
            let moved = idle_bounded(async {
                loop {
                    client.writable().await?;
                    match client.try_io(Interest::WRITABLE, || {
                        splice(&pipe_out, None, client.as_ref(), None, in_pipe, flags).map_err(io::Error::from)
                    }) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        result => return result,
                    }
                }
            })
            .await?;
            if moved == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the client stopped accepting bytes",
                ));
            }
            in_pipe -= moved;
            counter.inc_by(moved as u64);
        }
        left -= filled as u64;
    }
    Ok(length)
}

async fn idle_bounded<T>(step: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(IDLE_TIMEOUT, step).await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no progress for {}s", IDLE_TIMEOUT.as_secs()),
        ))
    })
}
