//! A fault-injecting front for a real upstream (a [`crate::Registry`], a
//! [`crate::TokenServer`], any plain-HTTP server): an HTTP/1 proxy on
//! 127.0.0.1 whose behaviour a test switches while it runs. It passes
//! requests through (keeping `Host`, so the registry's `Location`s name the
//! front), or it refuses connections, delays response headers, resets the
//! connection partway through a body, answers 5xx or 429 with `Retry-After`,
//! answers garbage, or redirects blob reads to its own object store whose
//! presigned URLs may have expired.
//!
//! It runs on its own thread and Tokio runtime, like the token server, so a
//! test that blocks does not starve it; every wait it makes is bounded.
//!
//! ```no_run
//! # async fn scenario() {
//! use std::time::Duration;
//! use testing::faults::{FaultyUpstream, UpstreamFault};
//! use testing::{Registry, RegistryOptions};
//! let registry = Registry::start(RegistryOptions::anonymous()).await.unwrap();
//! let front = FaultyUpstream::start(&registry.url()).unwrap();
//! // Point the connector at front.url(); then, mid-test:
//! front.set(UpstreamFault::DelayHeaders(Duration::from_secs(20)));
//! front.set_for("/blobs/", UpstreamFault::ResetBody { after: 64 * 1024 });
//! front.clear();
//! # }
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future as _;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// How long a dropped front may take to stop before its thread is left to
/// die with the test process.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the front waits for the real upstream's response headers.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a truncated body lingers after its last byte before the reset,
/// so those bytes reach the peer first.
const RESET_LINGER: Duration = Duration::from_millis(200);
/// How long re-binding the listener after [`UpstreamFault::Refuse`] may take.
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the front could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The upstream base URL is not an absolute `http://` URL.
    #[error("the upstream {0:?} is not an absolute http:// URL")]
    Upstream(String),
    /// A socket, runtime or thread could not be created.
    #[error("failed to {action}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
}

/// Result of starting the front.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A misbehaviour, switched on with [`FaultyUpstream::set`] or
/// [`FaultyUpstream::set_for`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamFault {
    /// The upstream is down: the listener closes (connections are refused)
    /// and open connections are reset. Applies to every path.
    Refuse,
    /// Response headers come this long after the request.
    DelayHeaders(Duration),
    /// The connection is reset (RST) after this many bytes of a response
    /// body; the headers, `Content-Length` included, pass unchanged.
    ResetBody {
        /// Body bytes sent before the reset.
        after: u64,
    },
    /// An OCI error body with this status (500, 502, 503, 429, ...), and
    /// `Retry-After: <seconds>` when given.
    Status {
        /// The status code.
        status: u16,
        /// The `Retry-After` value in seconds.
        retry_after: Option<u64>,
    },
    /// This status, content type and body, whatever was asked: garbage
    /// from a broken token service or a captive portal.
    Respond {
        /// The status code.
        status: u16,
        /// The `Content-Type`.
        content_type: String,
        /// The body.
        body: String,
    },
    /// Blob GETs and HEADs are answered `307` to a presigned URL on the
    /// front's object store (another origin). The first `expired` URLs it
    /// is asked for answer `403` (expired); later ones serve the blob.
    RedirectBlobs {
        /// How many presigned URLs answer 403 before one works.
        expired: usize,
    },
}

/// One request the front (or its object store) answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    /// The method.
    pub method: String,
    /// The path and query.
    pub target: String,
    /// Whether it carried `Authorization`.
    pub authorization: bool,
    /// The status answered (0 when the upstream could not be reached).
    pub status: u16,
}

struct Rule {
    path_contains: Option<String>,
    fault: UpstreamFault,
}

/// What a presigned URL stands for: the upstream request it replays.
struct Presigned {
    target: String,
    authorization: Option<HeaderValue>,
}

type ProxyBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The front's side of a switch: the newest generation whose listener state
/// it has put into effect, and how many connections are still open.
#[derive(Default)]
struct FrontState {
    applied: u64,
    open: usize,
}

struct Shared {
    upstream: Uri,
    rules: Mutex<Vec<Rule>>,
    /// Bumped on every change, so connections and the listener react.
    generation: watch::Sender<u64>,
    /// What the front has put into effect, so a switch returns only once it
    /// holds.
    front: Mutex<FrontState>,
    front_changed: Condvar,
    expired_left: AtomicUsize,
    presigned: Mutex<HashMap<u64, Presigned>>,
    next_signature: AtomicUsize,
    object_store: SocketAddr,
    client: Client<HttpConnector, ProxyBody>,
    log: Mutex<Vec<SeenRequest>>,
    object_log: Mutex<Vec<SeenRequest>>,
}

/// A running fault-injecting front; stops on drop.
pub struct FaultyUpstream {
    addr: SocketAddr,
    object_store: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FaultyUpstream {
    /// Starts a front for `upstream` (`http://127.0.0.1:PORT`) on
    /// 127.0.0.1, port chosen by the OS, passing everything through, with
    /// its object store on another port (another origin).
    pub fn start(upstream: &str) -> Result<Self> {
        let upstream_uri: Uri = upstream
            .trim_end_matches('/')
            .parse()
            .map_err(|_| Error::Upstream(upstream.to_owned()))?;
        if upstream_uri.scheme_str() != Some("http") || upstream_uri.authority().is_none() {
            return Err(Error::Upstream(upstream.to_owned()));
        }
        let io_error = |action| move |source| Error::Io { action, source };
        let bind = |action| {
            let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_error(action))?;
            listener.set_nonblocking(true).map_err(io_error(action))?;
            Ok::<_, Error>(listener)
        };
        let listener = bind("bind the faulty upstream")?;
        let store_listener = bind("bind the faulty upstream's object store")?;
        let addr = listener.local_addr().map_err(io_error("read the front's address"))?;
        let object_store = store_listener
            .local_addr()
            .map_err(io_error("read the object store's address"))?;
        let shared = Arc::new(Shared {
            upstream: upstream_uri,
            rules: Mutex::new(Vec::new()),
            generation: watch::Sender::new(0),
            front: Mutex::new(FrontState::default()),
            front_changed: Condvar::new(),
            expired_left: AtomicUsize::new(0),
            presigned: Mutex::new(HashMap::new()),
            next_signature: AtomicUsize::new(1),
            object_store,
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(HttpConnector::new()),
            log: Mutex::new(Vec::new()),
            object_log: Mutex::new(Vec::new()),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_error("build the front's runtime"))?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        let serving = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("faulty-upstream-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let front = serve_front(listener, addr, Arc::clone(&serving));
                    let store = serve_object_store(store_listener, serving);
                    tokio::select! {
                        _ = stopped => {}
                        _ = front => {}
                        _ = store => {}
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(io_error("spawn the front's thread"))?;
        Ok(Self {
            addr,
            object_store,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: what a connector (or a realm) points at.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The object store's address (blob redirects point there).
    pub fn object_store_addr(&self) -> SocketAddr {
        self.object_store
    }

    /// Every request gets `fault` (replacing all rules).
    pub fn set(&self, fault: UpstreamFault) {
        self.replace(None, fault);
    }

    /// Requests whose path and query contain `path_contains` get `fault`,
    /// replacing an earlier rule for the same text; other rules stay.
    pub fn set_for(&self, path_contains: &str, fault: UpstreamFault) {
        self.replace(Some(path_contains.to_owned()), fault);
    }

    /// Back to passing everything through.
    pub fn clear(&self) {
        lock(&self.shared.rules).clear();
        self.switched();
    }

    /// Requests the front answered, oldest first.
    pub fn requests(&self) -> Vec<SeenRequest> {
        lock(&self.shared.log).clone()
    }

    /// Requests the object store answered, oldest first.
    pub fn object_store_requests(&self) -> Vec<SeenRequest> {
        lock(&self.shared.object_log).clone()
    }

    fn replace(&self, path_contains: Option<String>, fault: UpstreamFault) {
        if let UpstreamFault::RedirectBlobs { expired } = &fault {
            self.shared.expired_left.store(*expired, Ordering::SeqCst);
        }
        {
            let mut rules = lock(&self.shared.rules);
            if path_contains.is_none() {
                rules.clear();
            }
            rules.retain(|r| r.path_contains != path_contains);
            rules.push(Rule { path_contains, fault });
        }
        self.switched();
    }

    /// Tells the front the rules changed and waits (bounded) until it acts
    /// on them: when refusing, the listener is closed and every connection
    /// reset; otherwise it listens again. A request sent after `set` or
    /// `clear` returns therefore meets the new behaviour, however loaded the
    /// machine is.
    fn switched(&self) {
        let mut generation = 0;
        self.shared.generation.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        let refusing = self.shared.refusing();
        let deadline = Instant::now() + REBIND_TIMEOUT + STOP_TIMEOUT;
        let mut state = lock(&self.shared.front);
        while state.applied < generation || (refusing && state.open > 0) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "faulty upstream {}: the switch to generation {generation} did not take effect in time \
                 (applied {}, {} connections open)",
                self.addr,
                state.applied,
                state.open
            );
            state = self
                .shared
                .front_changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for FaultyUpstream {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let deadline = Instant::now() + STOP_TIMEOUT;
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

impl Shared {
    fn update_front(&self, change: impl FnOnce(&mut FrontState)) {
        change(&mut lock(&self.front));
        self.front_changed.notify_all();
    }

    fn refusing(&self) -> bool {
        lock(&self.rules).iter().any(|r| r.fault == UpstreamFault::Refuse)
    }

    fn fault_for(&self, target: &str) -> Option<UpstreamFault> {
        lock(&self.rules)
            .iter()
            .find(|r| r.path_contains.as_deref().is_none_or(|p| target.contains(p)))
            .map(|r| r.fault.clone())
    }

    fn record(&self, log: &Mutex<Vec<SeenRequest>>, request: &Request<Incoming>, status: u16) {
        lock(log).push(SeenRequest {
            method: request.method().to_string(),
            target: target_of(request),
            authorization: request.headers().contains_key(header::AUTHORIZATION),
            status,
        });
    }

    /// Answers one request to the front.
    async fn answer(self: Arc<Self>, request: Request<Incoming>, reset: Arc<AtomicBool>) -> Response<ProxyBody> {
        let target = target_of(&request);
        match self.fault_for(&target) {
            None | Some(UpstreamFault::Refuse) => self.pass(request, None).await,
            Some(UpstreamFault::DelayHeaders(delay)) => {
                tokio::time::sleep(delay).await;
                self.pass(request, None).await
            }
            Some(UpstreamFault::ResetBody { after }) => self.pass(request, Some((after, reset))).await,
            Some(UpstreamFault::Status { status, retry_after }) => {
                self.record(&self.log, &request, status);
                drain(request).await;
                let body = format!(
                    r#"{{"errors":[{{"code":"UNAVAILABLE","message":"injected fault: the registry answers {status}"}}]}}"#
                );
                let mut response = fixed(status, "application/json", body);
                if let Some(seconds) = retry_after {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                }
                response
            }
            Some(UpstreamFault::Respond {
                status,
                content_type,
                body,
            }) => {
                self.record(&self.log, &request, status);
                drain(request).await;
                fixed(status, &content_type, body)
            }
            Some(UpstreamFault::RedirectBlobs { .. })
                if matches!(*request.method(), Method::GET | Method::HEAD) && is_blob_read(request.uri().path()) =>
            {
                let signature = self.next_signature.fetch_add(1, Ordering::SeqCst) as u64;
                lock(&self.presigned).insert(
                    signature,
                    Presigned {
                        target: request.uri().path().to_owned(),
                        authorization: request.headers().get(header::AUTHORIZATION).cloned(),
                    },
                );
                self.record(&self.log, &request, 307);
                let location = format!(
                    "http://{}/bucket/object-{signature}?X-Amz-Signature={signature:016x}&X-Amz-Expires=60",
                    self.object_store
                );
                let mut response = fixed(307, "text/plain", String::new());
                if let Ok(value) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert(header::LOCATION, value);
                }
                response
            }
            Some(UpstreamFault::RedirectBlobs { .. }) => self.pass(request, None).await,
        }
    }

    /// Relays `request` to the upstream, truncating the body when asked.
    async fn pass(&self, request: Request<Incoming>, truncate: Option<(u64, Arc<AtomicBool>)>) -> Response<ProxyBody> {
        let target = target_of(&request);
        let method = request.method().to_string();
        let authorization = request.headers().contains_key(header::AUTHORIZATION);
        let (mut parts, body) = request.into_parts();
        let uri = match upstream_uri(&self.upstream, &target) {
            Some(uri) => uri,
            None => return fixed(400, "text/plain", "bad target".into()),
        };
        parts.uri = uri;
        strip_hop_by_hop(&mut parts.headers);
        let outgoing = Request::from_parts(parts, body.map_err(Into::into).boxed());
        let answer = tokio::time::timeout(UPSTREAM_TIMEOUT, self.client.request(outgoing)).await;
        let response = match answer {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                self.push_log(&method, &target, authorization, 0);
                return fixed(502, "text/plain", format!("faulty upstream: {error}"));
            }
            Err(_) => {
                self.push_log(&method, &target, authorization, 0);
                return fixed(504, "text/plain", "faulty upstream: no answer".into());
            }
        };
        let status = response.status().as_u16();
        self.push_log(&method, &target, authorization, status);
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body: ProxyBody = match truncate {
            Some((after, reset)) => Truncated {
                inner: body.map_err(Into::into).boxed(),
                left: after,
                stage: TruncatedStage::Passing,
                reset,
            }
            .boxed(),
            None => body.map_err(Into::into).boxed(),
        };
        Response::from_parts(parts, body)
    }

    fn push_log(&self, method: &str, target: &str, authorization: bool, status: u16) {
        lock(&self.log).push(SeenRequest {
            method: method.to_owned(),
            target: target.to_owned(),
            authorization,
            status,
        });
    }

    /// Answers one request to the object store: 403 while presigned URLs
    /// are "expired", else the blob, fetched from the upstream with the
    /// authority captured when the URL was signed.
    async fn answer_object(self: Arc<Self>, request: Request<Incoming>) -> Response<ProxyBody> {
        if self
            .expired_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            self.record(&self.object_log, &request, 403);
            return fixed(
                403,
                "application/xml",
                "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
                    .into(),
            );
        }
        let signature = request
            .uri()
            .path()
            .strip_prefix("/bucket/object-")
            .and_then(|s| s.parse::<u64>().ok());
        let presigned = signature.and_then(|s| {
            lock(&self.presigned)
                .get(&s)
                .map(|p| (p.target.clone(), p.authorization.clone()))
        });
        let Some((target, authorization)) = presigned else {
            self.record(&self.object_log, &request, 404);
            return fixed(404, "application/xml", "<Error><Code>NoSuchKey</Code></Error>".into());
        };
        let Some(uri) = upstream_uri(&self.upstream, &target) else {
            return fixed(400, "text/plain", "bad target".into());
        };
        let mut outgoing = Request::builder().method(request.method().clone()).uri(uri);
        if let Some(headers) = outgoing.headers_mut() {
            if let Some(value) = authorization {
                headers.insert(header::AUTHORIZATION, value);
            }
            if let Some(range) = request.headers().get(header::RANGE) {
                headers.insert(header::RANGE, range.clone());
            }
        }
        let Ok(outgoing) = outgoing.body(empty()) else {
            return fixed(400, "text/plain", "bad request".into());
        };
        match tokio::time::timeout(UPSTREAM_TIMEOUT, self.client.request(outgoing)).await {
            Ok(Ok(response)) => {
                self.record(&self.object_log, &request, response.status().as_u16());
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                // NB: object storage knows nothing of registry headers.
                parts.headers.remove("docker-content-digest");
                parts.headers.remove("docker-distribution-api-version");
                Response::from_parts(parts, body.map_err(Into::into).boxed())
            }
            _ => {
                self.record(&self.object_log, &request, 502);
                fixed(502, "text/plain", "object store backend failed".into())
            }
        }
    }
}

/// Accepts front connections until a [`UpstreamFault::Refuse`] closes the
/// listener; binds the same address again once it is lifted.
async fn serve_front(listener: std::net::TcpListener, addr: SocketAddr, shared: Arc<Shared>) {
    let mut listener = TcpListener::from_std(listener).ok();
    let mut changes = shared.generation.subscribe();
    let mut applied = 0;
    loop {
        let generation = *changes.borrow_and_update();
        let refusing = shared.refusing();
        if refusing {
            listener = None;
        } else if listener.is_none() {
            listener = rebind(addr).await;
            if listener.is_none() {
                eprintln!("faulty upstream: cannot listen on {addr} again");
                return;
            }
        }
        if generation != applied {
            applied = generation;
            shared.update_front(|front| front.applied = generation);
        }
        if refusing {
            if changes.changed().await.is_err() {
                return;
            }
            continue;
        }
        let Some(bound) = &listener else { return };
        let stream = tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            accepted = bound.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let shared = Arc::clone(&shared);
        shared.update_front(|front| front.open += 1);
        tokio::spawn(async move {
            let _open = OpenConnection(Arc::clone(&shared));
            let reset = Arc::new(AtomicBool::new(false));
            let io = FaultIo {
                stream,
                reset: Arc::clone(&reset),
            };
            let service = {
                let (shared, reset) = (Arc::clone(&shared), Arc::clone(&reset));
                service_fn(move |request| {
                    let (shared, reset) = (Arc::clone(&shared), Arc::clone(&reset));
                    async move { Ok::<_, Infallible>(shared.answer(request, reset).await) }
                })
            };
            let connection = http1::Builder::new().serve_connection(TokioIo::new(io), service);
            let mut changes = shared.generation.subscribe();
            let refused = async {
                loop {
                    if shared.refusing() {
                        return;
                    }
                    if changes.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                _ = connection => {}
                _ = refused => reset.store(true, Ordering::SeqCst),
            }
        });
    }
}

/// Counts a front connection as open until its task ends (its stream is
/// dropped by then, so a refused connection has been reset).
struct OpenConnection(Arc<Shared>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.update_front(|front| front.open = front.open.saturating_sub(1));
    }
}

async fn rebind(addr: SocketAddr) -> Option<TcpListener> {
    let deadline = Instant::now() + REBIND_TIMEOUT;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Some(listener),
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_) => return None,
        }
    }
}

async fn serve_object_store(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(shared.answer_object(request).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A front connection: closed with `SO_LINGER` 0 (an RST) once `reset` is
/// set, as a crashed or rebooted upstream does.
struct FaultIo {
    stream: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for FaultIo {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            // NB: a zero linger never blocks; it makes close() send an RST.
            #[allow(deprecated)]
            let _ = self.stream.set_linger(Some(Duration::ZERO));
        }
    }
}

impl AsyncRead for FaultIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for FaultIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

enum TruncatedStage {
    Passing,
    Lingering(Pin<Box<tokio::time::Sleep>>),
    Failed,
}

/// A body cut after `left` bytes: it lingers briefly so they are written,
/// then fails, and the connection is reset.
struct Truncated {
    inner: ProxyBody,
    left: u64,
    stage: TruncatedStage,
    reset: Arc<AtomicBool>,
}

impl Body for Truncated {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        loop {
            match &mut this.stage {
                TruncatedStage::Passing => {
                    if this.left == 0 {
                        this.stage = TruncatedStage::Lingering(Box::pin(tokio::time::sleep(RESET_LINGER)));
                        continue;
                    }
                    let frame = match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                        Some(Ok(frame)) => frame,
                        other => return Poll::Ready(other),
                    };
                    let Ok(mut data) = frame.into_data() else { continue };
                    if data.len() as u64 >= this.left {
                        data.truncate(this.left as usize);
                    }
                    this.left -= data.len() as u64;
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                TruncatedStage::Lingering(sleep) => {
                    std::task::ready!(sleep.as_mut().poll(cx));
                    this.reset.store(true, Ordering::SeqCst);
                    this.stage = TruncatedStage::Failed;
                    return Poll::Ready(Some(Err("injected fault: connection reset mid-body".into())));
                }
                TruncatedStage::Failed => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.stage, TruncatedStage::Failed)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn target_of<B>(request: &Request<B>) -> String {
    request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned())
}

fn upstream_uri(base: &Uri, target: &str) -> Option<Uri> {
    let authority = base.authority()?;
    let prefix = base.path().trim_end_matches('/');
    format!("http://{authority}{prefix}{target}").parse().ok()
}

/// `/v2/<name>/blobs/<digest>`, not an upload.
fn is_blob_read(path: &str) -> bool {
    path.rsplit_once("/blobs/")
        .is_some_and(|(name, digest)| !name.is_empty() && digest.starts_with("sha256:") && !digest.contains('/'))
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(HeaderName::from_static(name));
    }
}

/// How long an injected answer waits for the request body it discards.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads and discards the request body before an injected answer, as real
/// front ends do (nginx's lingering close): answering first and closing
/// would make the client's kernel drop the answer on the reset that its
/// next body write provokes, a race no client can win.
async fn drain(request: Request<Incoming>) {
    let mut body = request.into_body();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async { while let Some(Ok(_)) = body.frame().await {} }).await;
}

fn fixed(status: u16, content_type: &str, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(value) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

fn empty() -> ProxyBody {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TokenServer, TokenServerOptions};

    /// One GET through a fresh connection: status, headers and the body (or
    /// why it could not be read).
    async fn get(front: &FaultyUpstream, path: &str) -> Result<(u16, HeaderMap, Result<Bytes, String>), String> {
        let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(HttpConnector::new());
        let uri: Uri = format!("{}{path}", front.url()).parse().unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), client.get(uri))
            .await
            .map_err(|_| "no answer".to_owned())?
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(Duration::from_secs(10), body.collect())
            .await
            .map_err(|_| "no body".to_owned())?
            .map(|b| b.to_bytes())
            .map_err(|e| format!("{e:?}"));
        Ok((parts.status.as_u16(), parts.headers, body))
    }

    #[test]
    fn blob_reads_are_told_from_uploads() {
        assert!(is_blob_read("/v2/lab/x/blobs/sha256:abc"));
        assert!(!is_blob_read("/v2/lab/x/blobs/uploads/"));
        assert!(!is_blob_read("/v2/lab/x/blobs/uploads/123"));
        assert!(!is_blob_read("/v2/lab/x/manifests/v1"));
    }

    #[test]
    fn upstream_targets_keep_the_base_path() {
        let base: Uri = "http://127.0.0.1:5000/prefix".parse().unwrap();
        assert_eq!(
            upstream_uri(&base, "/v2/x?n=1").unwrap().to_string(),
            "http://127.0.0.1:5000/prefix/v2/x?n=1"
        );
    }

    #[tokio::test]
    async fn faults_switch_while_running_and_passing_through_resumes() {
        let tokens = TokenServer::start(TokenServerOptions::default()).unwrap();
        let front = FaultyUpstream::start(&format!("http://{}", tokens.addr())).unwrap();
        let status = |answer: Result<(u16, HeaderMap, Result<Bytes, String>), String>| answer.map(|a| a.0);

        // Passed through: the token server wants credentials.
        assert_eq!(status(get(&front, "/token").await), Ok(401));

        front.set(UpstreamFault::Status {
            status: 429,
            retry_after: Some(7),
        });
        let (code, headers, body) = get(&front, "/token").await.unwrap();
        assert_eq!((code, headers[header::RETRY_AFTER].to_str().unwrap()), (429, "7"));
        assert!(String::from_utf8_lossy(&body.unwrap()).contains("injected fault"));

        // A rule for other paths leaves this one alone.
        front.clear();
        front.set_for(
            "/elsewhere",
            UpstreamFault::Status {
                status: 500,
                retry_after: None,
            },
        );
        assert_eq!(status(get(&front, "/token").await), Ok(401));
        assert_eq!(status(get(&front, "/elsewhere").await), Ok(500));

        front.set(UpstreamFault::Refuse);
        let refused = get(&front, "/token").await.unwrap_err();
        assert!(
            refused.contains("ConnectionRefused") || refused.contains("Connect"),
            "{refused}"
        );
        front.clear();
        let deadline = Instant::now() + Duration::from_secs(5);
        while status(get(&front, "/token").await) != Ok(401) {
            assert!(Instant::now() < deadline, "the front did not listen again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        front.set(UpstreamFault::Respond {
            status: 200,
            content_type: "text/html".into(),
            body: "<html>portal</html>".into(),
        });
        let (code, _, body) = get(&front, "/token").await.unwrap();
        assert_eq!((code, &body.unwrap()[..]), (200, &b"<html>portal</html>"[..]));

        front.set(UpstreamFault::DelayHeaders(Duration::from_millis(300)));
        let started = Instant::now();
        assert_eq!(status(get(&front, "/token").await), Ok(401));
        assert!(started.elapsed() >= Duration::from_millis(300));

        front.set(UpstreamFault::ResetBody { after: 5 });
        let (code, _, body) = get(&front, "/token").await.unwrap();
        assert_eq!(code, 401, "the head passes unchanged");
        assert!(body.is_err(), "the body is cut: {body:?}");

        let log = front.requests();
        assert!(
            log.iter().any(|r| r.status == 429) && log.iter().all(|r| r.target == "/token" || r.target == "/elsewhere")
        );
    }
}
