//! The node pull endpoint (`connectors node-pull`): a relay on each node's
//! loopback that container runtimes pull rewritten images from with no
//! configuration (containerd, CRI-O and Docker speak plain HTTP to a
//! loopback registry by default), and that goes on to the shared proxy over
//! TLS with its own pod-bound ServiceAccount token. The proxy takes that
//! token as the node the API server says the endpoint's pod runs on, and
//! applies the node rule: the node pulls exactly the images of the pods
//! bound to it.
//!
//! Only pulls pass (`GET` and `HEAD` under `/v2/`). A request that carries
//! its own credential (kubelet's credential provider handing over the
//! pod's token) goes on with that credential instead, so the proxy decides
//! as that pod's ServiceAccount. Runtimes send a credential only when
//! challenged, so a refusal of the node is answered with a Basic challenge;
//! [`PodCredentials::Require`] challenges every pull without one, which
//! closes the endpoint to the node's other processes.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use registry::body::{self, ProxyBody};

/// How often the token and CA files are read again (kubelet rewrites the
/// token at 80% of its lifetime; the CA ConfigMap changes on rotation).
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// How long the proxy may take to answer with headers, over all attempts.
/// Bodies have no deadline: a layer takes as long as it takes.
const RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(120);

/// How many times a pull is sent when the proxy's connection fails before
/// any answer (a replica that went away, its pooled connections with it).
/// GET and HEAD carry no body, so a second try repeats the first exactly.
const PULL_ATTEMPTS: usize = 3;

/// What the endpoint does with a credential a pull brings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodCredentials {
    /// Passes it on (the proxy decides as the pod's ServiceAccount);
    /// pulls without one go with the endpoint's own token (the node rule).
    #[default]
    Forward,
    /// Refuses pulls that carry none: only kubelet with the credential
    /// provider pulls, as its pod.
    Require,
    /// Drops it and always uses the endpoint's own token.
    Ignore,
}

impl std::str::FromStr for PodCredentials {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "forward" => Ok(Self::Forward),
            "require" => Ok(Self::Require),
            "ignore" => Ok(Self::Ignore),
            other => Err(format!("expected forward, require or ignore, got {other:?}")),
        }
    }
}

/// The endpoint's settings.
#[derive(Debug, Clone)]
pub struct NodePullSettings {
    /// The shared proxy's HTTPS reverse mode, e.g.
    /// `https://connectors-proxy.connectors-system.svc`; its certificate
    /// must name this host.
    pub proxy: String,
    /// The proxy CA (PEM), re-read every [`RELOAD_INTERVAL`].
    pub proxy_ca: PathBuf,
    /// The endpoint's projected ServiceAccount token (audience: the proxy's).
    pub token_file: PathBuf,
    /// What to do with a pull's own credential.
    pub pod_credentials: PodCredentials,
}

/// Why the endpoint cannot start or reload.
#[derive(Debug, thiserror::Error)]
pub enum NodePullError {
    #[error("the proxy URL {0} is not https://host[:port]")]
    ProxyUrl(String),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no usable certificate: {reason}", path.display())]
    Ca { path: PathBuf, reason: String },
    #[error("the token file {} is empty", path.display())]
    EmptyToken { path: PathBuf },
    #[error("failed to configure TLS: {0}")]
    Tls(String),
}

type ProxyClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// What the files said at the last reload.
struct Loaded {
    ca_pem: String,
    client: ProxyClient,
    /// `Bearer <token>`, marked sensitive.
    authorization: HeaderValue,
}

/// The relay: one per process, shared by its connections.
pub struct NodePull {
    settings: NodePullSettings,
    proxy: Uri,
    loaded: RwLock<Arc<Loaded>>,
}

impl NodePull {
    /// Reads the CA and the token once; fails when either is unusable.
    pub fn load(settings: NodePullSettings) -> Result<Arc<Self>, NodePullError> {
        let invalid = || NodePullError::ProxyUrl(settings.proxy.clone());
        let proxy: Uri = settings.proxy.parse().map_err(|_| invalid())?;
        let scheme_ok = proxy.scheme_str() == Some("https");
        let path_ok = proxy.path_and_query().is_none_or(|p| p.as_str() == "/");
        if !scheme_ok || proxy.host().is_none() || !path_ok {
            return Err(invalid());
        }
        let loaded = Arc::new(Self::read(&settings, None)?);
        Ok(Arc::new(Self {
            settings,
            proxy,
            loaded: RwLock::new(loaded),
        }))
    }

    /// Re-reads the files every [`RELOAD_INTERVAL`]; a file that cannot be
    /// used leaves the last good state in place.
    pub fn spawn_reload(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let relay = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(RELOAD_INTERVAL);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let current = relay.current();
                match Self::read(&relay.settings, Some(&current)) {
                    Ok(loaded) => *relay.loaded.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded),
                    Err(error) => tracing::warn!(%error, "keeping the last proxy CA and token"),
                }
            }
        })
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn read(settings: &NodePullSettings, previous: Option<&Loaded>) -> Result<Loaded, NodePullError> {
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path).map_err(|source| NodePullError::Read {
                path: path.clone(),
                source,
            })
        };
        let ca_pem = read(&settings.proxy_ca)?;
        let token = read(&settings.token_file)?;
        let token = token.trim();
        if token.is_empty() {
            return Err(NodePullError::EmptyToken {
                path: settings.token_file.clone(),
            });
        }
        let mut authorization = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| NodePullError::Read {
            path: settings.token_file.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "the token is not header-safe"),
        })?;
        authorization.set_sensitive(true);
        let client = match previous {
            Some(previous) if previous.ca_pem == ca_pem => previous.client.clone(),
            _ => {
                let client = client_for(&ca_pem, &settings.proxy_ca)?;
                if previous.is_some() {
                    tracing::info!("the proxy CA changed; new connections trust the new one");
                }
                client
            }
        };
        Ok(Loaded {
            ca_pem,
            client,
            authorization,
        })
    }

    /// Answers one request from the container runtime.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        let path = request.uri().path();
        if path == "/healthz" || path == "/readyz" {
            return text(StatusCode::OK, "ok");
        }
        if path != "/v2" && !path.starts_with("/v2/") {
            return oci_error(
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                "not found: the node pull endpoint serves the registry API under /v2/",
            );
        }
        if !matches!(request.method(), &Method::GET | &Method::HEAD) {
            return oci_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                "the node pull endpoint only pulls (GET and HEAD); push through the proxy",
            );
        }
        let brought = request.headers().get(header::AUTHORIZATION).cloned();
        let loaded = self.current();
        let (authorization, own) = match (brought, self.settings.pod_credentials) {
            (Some(value), PodCredentials::Forward | PodCredentials::Require) => (value, false),
            (None, PodCredentials::Require) => {
                return challenge(oci_error(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    "this node pull endpoint takes only pulls with the pod's credential (kubelet's credential provider)",
                ));
            }
            (_, _) => (loaded.authorization.clone(), true),
        };
        let uri = match self.upstream_uri(request.uri()) {
            Ok(uri) => uri,
            Err(()) => return oci_error(StatusCode::BAD_REQUEST, "NAME_INVALID", "the request path is not valid"),
        };
        let outgoing = || {
            let mut outgoing = Request::builder().method(request.method().clone()).uri(uri.clone());
            if let Some(headers) = outgoing.headers_mut() {
                for name in FORWARDED_REQUEST_HEADERS {
                    for value in request.headers().get_all(name) {
                        headers.append(name.clone(), value.clone());
                    }
                }
                headers.insert(header::AUTHORIZATION, authorization.clone());
            }
            outgoing.body(body::empty())
        };
        let deadline = tokio::time::Instant::now() + RESPONSE_HEADER_TIMEOUT;
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            let Ok(outgoing) = outgoing() else {
                return oci_error(StatusCode::BAD_REQUEST, "NAME_INVALID", "the request is not valid");
            };
            match tokio::time::timeout_at(deadline, loaded.client.request(outgoing)).await {
                Ok(Ok(response)) => break response,
                Ok(Err(error)) if attempt < PULL_ATTEMPTS => {
                    tracing::info!(error = %registry::auth::Chain(&error), attempt, "the proxy connection failed before an answer; sending the pull again");
                }
                Ok(Err(error)) => {
                    tracing::warn!(error = %registry::auth::Chain(&error), attempts = attempt, "the proxy cannot be reached");
                    return oci_error(
                        StatusCode::BAD_GATEWAY,
                        "UNAVAILABLE",
                        "the node pull endpoint cannot reach the connectors proxy",
                    );
                }
                Err(_) => {
                    tracing::warn!("the proxy did not answer in time");
                    return oci_error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "UNAVAILABLE",
                        "the connectors proxy did not answer in time",
                    );
                }
            }
        };
        let status = response.status();
        if own && status == StatusCode::UNAUTHORIZED {
            tracing::warn!(
                "the proxy refused the endpoint's own token; is the proxy's node puller this ServiceAccount?"
            );
        } else if status.is_client_error() {
            tracing::info!(status = status.as_u16(), path = %request.uri().path(), "pull refused");
        }
        let (parts, incoming) = response.into_parts();
        let mut answer = Response::new(incoming.map_err(Into::into).boxed());
        *answer.status_mut() = status;
        // NB: without the proxy's challenge (below) and hop-by-hop headers.
        *answer.headers_mut() = crate::headers::downstream_headers(&parts.headers);
        // NB: runtimes send a credential only after a challenge. A refusal
        // of the node becomes one, so a runtime holding the pod's credential
        // (kubelet's credential provider) presents it; one that holds none
        // reports the refusal's message. A refused pod credential is
        // challenged again in the same scheme (Basic: it goes on as it is),
        // never with the proxy's own realm, which the node cannot use.
        let refused = status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
        let challenge_it = match (own, self.settings.pod_credentials) {
            (true, PodCredentials::Forward) => refused,
            (false, _) => status == StatusCode::UNAUTHORIZED,
            (true, _) => false,
        };
        if challenge_it {
            *answer.status_mut() = StatusCode::UNAUTHORIZED;
            return challenge(answer);
        }
        answer
    }

    fn upstream_uri(&self, incoming: &Uri) -> Result<Uri, ()> {
        let path_and_query = incoming.path_and_query().ok_or(())?;
        let mut parts = self.proxy.clone().into_parts();
        parts.path_and_query = Some(path_and_query.clone());
        Uri::from_parts(parts).map_err(|_| ())
    }
}

/// Request headers a pull needs upstream; everything else (cookies,
/// forwarding headers, the runtime's other credentials) stays here.
const FORWARDED_REQUEST_HEADERS: &[HeaderName] = &[
    header::ACCEPT,
    header::RANGE,
    header::IF_NONE_MATCH,
    header::IF_MATCH,
    header::IF_MODIFIED_SINCE,
    header::USER_AGENT,
];

/// A pooled HTTP/1.1 client trusting only the proxy CA (`pem`, read from
/// `path`).
fn client_for(pem: &str, path: &std::path::Path) -> Result<ProxyClient, NodePullError> {
    let roots = certs::root_store_from_pem(pem).map_err(|e| NodePullError::Ca {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    // NB: no ALPN here: hyper-rustls sets it from the enabled protocols.
    let config = certs::client_config(roots, &[]).map_err(|e| NodePullError::Tls(e.to_string()))?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .build(connector))
}

fn text(status: StatusCode, message: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(Bytes::from_static(message.as_bytes())));
    *response.status_mut() = status;
    response
}

/// The endpoint's own challenge: Basic, since a pod's credential goes on
/// to the proxy as the runtime sends it.
fn challenge(mut response: Response<ProxyBody>) -> Response<ProxyBody> {
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"connectors node pull\""),
    );
    response
}

fn oci_error(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    let document = serde_json::json!({"errors": [{"code": code, "message": message}]});
    crate::error::json_response(status, Bytes::from(document.to_string()))
}

/// Serves the endpoint on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: tokio::net::TcpListener,
    relay: Arc<NodePull>,
    limits: serving::ServerLimits,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let accept_limits = limits.clone();
    serving::accept_and_drain(listener, &accept_limits, shutdown, move |stream, peer, mut stopping| {
        let (relay, limits) = (relay.clone(), limits.clone());
        async move {
            let Some(stream) = refuse_tls(stream, limits.header_read_timeout).await else {
                tracing::debug!(%peer, "closed: a TLS handshake, or nothing, before a request");
                return;
            };
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let relay = relay.clone();
                async move { Ok::<_, std::convert::Infallible>(relay.handle(request).await) }
            });
            let builder = serving::http::builder(&limits);
            let io = hyper_util::rt::TokioIo::new(serving::OpeningDeadline::new(stream, limits.header_read_timeout));
            let connection = builder.serve_connection(io, service);
            if let Err(error) = serving::drain_on_stop!(std::pin::pin!(connection), stopping) {
                tracing::debug!(%peer, error = ?error, "connection ended with an error");
            }
        }
    })
    .await
}

/// containerd (and Docker) try TLS first on a loopback registry and fall
/// back to plain HTTP when the answer to their ClientHello is an HTTP
/// response, as Go's servers give it. A connection that opens with a TLS
/// handshake record gets that answer at once and is closed (`None`), so
/// that the fallback costs one round trip rather than a handshake timeout.
async fn refuse_tls(mut stream: tokio::net::TcpStream, within: Duration) -> Option<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut first = [0_u8; 1];
    let peeked = tokio::time::timeout(within, stream.peek(&mut first)).await.ok()?.ok()?;
    if peeked == 0 || first[0] != TLS_HANDSHAKE_RECORD {
        return Some(stream);
    }
    let answer = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nthe node pull endpoint speaks plain HTTP\n";
    let _ = tokio::time::timeout(within, stream.write_all(answer)).await;
    let _ = stream.shutdown().await;
    // NB: as Go's server does: read what the client sent until it closes
    // (briefly), so that closing with unread bytes does not reset the
    // connection before the client has read the answer.
    let mut sink = [0_u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    None
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
