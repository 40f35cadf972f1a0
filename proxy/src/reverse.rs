//! Reverse mode: `/v2/namespaces/<ns>/connectors/<name>/<repository>/...`
//! relayed to the connector's registry with the connector's credential.
//!
//! Each request: the caller is authenticated and authorized before anything
//! goes upstream; the credential (Basic, or a cached Bearer token from the
//! registry's token service, whose realm is checked first) is attached;
//! bodies stream both ways; `Location` and `Link` are mapped back into the
//! proxy's URL space; blob redirects are followed here without credentials;
//! upstream challenges, tokens and cookies never reach the caller.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use connector::address::RegistryAddress;
use connector::store::{ConnectorStore, SecretStore};
use connector::{Connector, ConnectorKey};
use http_body_util::{BodyExt, Empty, Full};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use url::Url;

use crate::caller::{Authenticator, Authorizer, Decision, Identity, PeerIdentities, token_from_authorization};
use crate::challenge::{self, Challenge, Scheme, Scope};
use crate::credential::{self, UpstreamCredential};
use crate::metrics::{ByteLabels, ConnectorLabels, Metrics, RequestLabels, status_class};
use crate::realm::check_realm;
use crate::resolve::Pins;
use crate::route::{self, ConnectorRoute, Endpoint, Route};
use crate::splice::{self, ClientSocket};
use crate::token::{self, Source, Token, TokenCache, TokenKey};
use crate::upstream::{BoxError, ProxyBody, RESPONSE_HEADER_TIMEOUT, UpstreamClient, UpstreamClients};

/// The client's socket address, set by the server as a request extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Who a request comes from.
enum Caller {
    /// A caller that sent a token.
    Token(Identity),
    /// An injected pod, by its source address.
    Pod(Identity),
    /// A node (kubelet pulling for its pods), by its source address.
    Node(String),
}

/// The realm the proxy names in its own challenge.
pub const PROXY_REALM: &str = "connectors";

/// How many redirects a blob fetch follows.
const MAX_REDIRECTS: usize = 5;

/// A token must outlive a request with a body by this much: a 401 after
/// streaming the body cannot be replayed.
const TOKEN_MARGIN_WITH_BODY: Duration = Duration::from_secs(30);
const TOKEN_MARGIN: Duration = Duration::from_secs(5);

/// Options of reverse mode.
#[derive(Debug, Clone)]
pub struct ReverseOptions {
    /// Skip upstream TLS verification for every connector. Off by default;
    /// only for registries with certificates nobody can verify.
    pub insecure_upstream_tls: bool,
    /// Hosts dialed at fixed addresses (`--resolve`).
    pub pins: Pins,
    /// How long an upstream (registry, token service, object storage) may
    /// take to send response headers; bodies have no deadline.
    pub upstream_header_timeout: Duration,
}

impl Default for ReverseOptions {
    fn default() -> Self {
        Self {
            insecure_upstream_tls: false,
            pins: Pins::default(),
            upstream_header_timeout: RESPONSE_HEADER_TIMEOUT,
        }
    }
}

/// How an upstream wants to be authenticated, learned from its `/v2/`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UpstreamAuth {
    Anonymous,
    Basic,
    Bearer { realm: String, service: String },
}

/// How a client reached the pipeline: through the `/v2/namespaces/...`
/// prefix, or through the forward proxy at the registry's own address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Reverse,
    Forward,
}

impl Mode {
    /// The `mode` metric label.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Reverse => "reverse",
            Mode::Forward => "forward",
        }
    }
}

/// The reverse proxy.
pub struct ReverseProxy {
    connectors: Arc<dyn ConnectorStore>,
    secrets: Arc<dyn SecretStore>,
    authenticator: Arc<dyn Authenticator>,
    authorizer: Arc<dyn Authorizer>,
    peers: Option<Arc<dyn PeerIdentities>>,
    tokens: TokenCache,
    clients: UpstreamClients,
    upstream_auth: Mutex<HashMap<String, UpstreamAuth>>,
    options: ReverseOptions,
    pub metrics: Arc<Metrics>,
}

/// A failure answered to the caller with an OCI error body. Messages never
/// contain a credential or token.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "UNAVAILABLE", message)
    }
}

/// Everything about the connector a request goes to.
struct Target {
    key: ConnectorKey,
    connector: Arc<Connector>,
    base: Url,
    registry_host: String,
    credential: Option<UpstreamCredential>,
    client: UpstreamClient,
    /// How the client addresses the registry.
    mode: Mode,
}

impl ReverseProxy {
    pub fn new(
        connectors: Arc<dyn ConnectorStore>,
        secrets: Arc<dyn SecretStore>,
        authenticator: Arc<dyn Authenticator>,
        authorizer: Arc<dyn Authorizer>,
        options: ReverseOptions,
    ) -> Self {
        Self {
            connectors,
            secrets,
            authenticator,
            authorizer,
            peers: None,
            tokens: TokenCache::default(),
            clients: UpstreamClients::new(options.pins.clone()),
            upstream_auth: Mutex::new(HashMap::new()),
            options,
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// Also accepts callers without a token by their source address: pods
    /// the webhook injected, and nodes pulling for their pods (cluster mode).
    pub fn with_peer_identities(mut self, peers: Arc<dyn PeerIdentities>) -> Self {
        self.peers = Some(peers);
        self
    }

    /// The identities proven by source addresses, when configured.
    pub fn peer_identities(&self) -> Option<&Arc<dyn PeerIdentities>> {
        self.peers.as_ref()
    }

    /// Answers one request under `/v2`. A [`PeerAddr`] extension, when the
    /// server sets one, lets callers without a token be identified by their
    /// source address.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<ProxyBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let request = request.map(|b| b.map_err(Into::into).boxed());
        let mut connector_label = String::new();
        let result = self.route(request, &mut connector_label).await;
        self.answer(result, connector_label, Mode::Reverse)
    }

    /// Answers one request that reached the forward proxy for `key`'s
    /// registry, from a caller authenticated on the tunnel. The path is the
    /// registry's own (`/v2/<repository>/...`), and so are the URLs in the
    /// response.
    pub async fn handle_forwarded<B>(
        &self,
        identity: &Identity,
        key: &ConnectorKey,
        request: Request<B>,
    ) -> Response<ProxyBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let request = request.map(|b| b.map_err(Into::into).boxed());
        let result = self.route_forwarded(identity, key, request).await;
        self.answer(result, key.to_string(), Mode::Forward)
    }

    async fn route_forwarded(
        &self,
        identity: &Identity,
        key: &ConnectorKey,
        request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, Failure> {
        let route = route::parse_origin_route(request.uri().path(), key)
            .map_err(|e| Failure::new(StatusCode::NOT_FOUND, e.oci_code(), e.to_string()))?;
        match route {
            // NB: the tunnel is authenticated; a challenge here would only
            // make clients look for credentials they do not have.
            Route::Base => Ok(json_response(StatusCode::OK, Bytes::from_static(b"{}"))),
            Route::Catalog => Ok(json_response(
                StatusCode::OK,
                Bytes::from_static(br#"{"repositories":[]}"#),
            )),
            Route::Connector(route) => {
                // Authorized per request, so a revocation ends a long tunnel's use.
                self.authorize(identity, key).await?;
                let target = self.target(key, Mode::Forward)?;
                tracing::debug!(connector = %key, caller = %identity.username, method = %request.method(), "proxying (forward)");
                self.forward(&target, &route, request).await
            }
        }
    }

    fn answer(
        &self,
        result: Result<Response<ProxyBody>, Failure>,
        connector_label: String,
        mode: Mode,
    ) -> Response<ProxyBody> {
        let response = match result {
            Ok(response) => response,
            Err(failure) => {
                if failure.status.is_server_error() {
                    tracing::warn!(connector = %connector_label, status = failure.status.as_u16(), message = %failure.message, "request failed");
                }
                error_response(&failure)
            }
        };
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                connector: connector_label,
                mode: mode.label(),
                status: status_class(response.status().as_u16()),
            })
            .inc();
        response
    }

    async fn route(&self, request: Request<ProxyBody>, label: &mut String) -> Result<Response<ProxyBody>, Failure> {
        let route = route::parse_route(request.uri().path())
            .map_err(|e| Failure::new(StatusCode::NOT_FOUND, e.oci_code(), e.to_string()))?;
        match route {
            Route::Base => {
                self.caller(&request).await?;
                Ok(json_response(StatusCode::OK, Bytes::from_static(b"{}")))
            }
            Route::Catalog => {
                self.caller(&request).await?;
                // NB: a catalog across connectors would disclose repositories
                // of registries the caller may not use; each connector's
                // repositories are reached through its own prefix.
                Ok(json_response(
                    StatusCode::OK,
                    Bytes::from_static(br#"{"repositories":[]}"#),
                ))
            }
            Route::Connector(route) => {
                let caller = match self.caller(&request).await? {
                    Caller::Token(identity) | Caller::Pod(identity) => {
                        self.authorize(&identity, &route.key).await?;
                        identity.username
                    }
                    Caller::Node(node) => {
                        self.authorize_node(&node, &route, request.method()).await?;
                        format!("system:node:{node}")
                    }
                };
                let target = self.target(&route.key, Mode::Reverse)?;
                *label = route.key.to_string();
                tracing::debug!(connector = %route.key, %caller, method = %request.method(), "proxying");
                self.forward(&target, &route, request).await
            }
        }
    }

    /// Who is asking: the token's identity when the request carries one
    /// (a token that fails is never overridden by the address); otherwise,
    /// in cluster mode, the injected pod or the node at the source address.
    async fn caller(&self, request: &Request<ProxyBody>) -> Result<Caller, Failure> {
        let unauthorized = |message: &str| Failure::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message);
        if let Some(value) = request.headers().get(header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(token_from_authorization)
                .ok_or_else(|| unauthorized("the Authorization header carries no usable token"))?;
            return self.authenticate(&token).await.map(Caller::Token);
        }
        if let (Some(peers), Some(PeerAddr(peer))) = (&self.peers, request.extensions().get::<PeerAddr>()) {
            let ip = peer.ip().to_canonical();
            if let Some(identity) = peers.pod(ip) {
                return Ok(Caller::Pod(identity));
            }
            if let Some(node) = peers.node(ip) {
                return Ok(Caller::Node(node));
            }
        }
        Err(unauthorized(
            "authentication required: send a ServiceAccount token as the password",
        ))
    }

    /// The node rule: a node may read a connector's repository only while
    /// a pod bound to it references that repository and the pod's
    /// ServiceAccount may use the connector.
    async fn authorize_node(&self, node: &str, route: &ConnectorRoute, method: &Method) -> Result<(), Failure> {
        let denied = |why: String| Failure::new(StatusCode::FORBIDDEN, "DENIED", format!("node {node}: {why}"));
        let pull = matches!(method, &Method::GET | &Method::HEAD)
            && matches!(route.endpoint, Endpoint::Manifest(_) | Endpoint::Blob(_));
        if !pull {
            return Err(denied("nodes may only pull manifests and blobs".to_owned()));
        }
        let Some(peers) = &self.peers else {
            return Err(denied("node pulls are not enabled".to_owned()));
        };
        let pods = peers.pods_pulling(node, &route.key, &route.repository).await;
        for identity in &pods {
            if self.authorize(identity, &route.key).await.is_ok() {
                return Ok(());
            }
        }
        Err(denied(if pods.is_empty() {
            format!("no pod bound to the node references {}/{}", route.key, route.repository)
        } else {
            format!(
                "no pod referencing {}/{} on the node may use the connector",
                route.key, route.repository
            )
        }))
    }

    async fn authenticate(&self, token: &str) -> Result<Identity, Failure> {
        let unauthorized = |message: &str| Failure::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message);
        match self.authenticator.authenticate(token).await {
            Ok(Some(identity)) => Ok(identity),
            Ok(None) => Err(unauthorized("the token is not valid")),
            Err(error) => Err(Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                format!("cannot authenticate the caller now: {error}"),
            )),
        }
    }

    async fn authorize(&self, identity: &Identity, key: &ConnectorKey) -> Result<(), Failure> {
        match self.authorizer.authorize(identity, key).await {
            Ok(Decision::Allow) => Ok(()),
            Ok(Decision::Deny) => Err(Failure::new(
                StatusCode::FORBIDDEN,
                "DENIED",
                format!("{} may not use connector {key}", identity.username),
            )),
            Err(error) => Err(Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                format!("cannot authorize the caller now: {error}"),
            )),
        }
    }

    fn target(&self, key: &ConnectorKey, mode: Mode) -> Result<Target, Failure> {
        let connector = self.connectors.connector(key).ok_or_else(|| {
            Failure::new(
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                format!("connector {key} does not exist"),
            )
        })?;
        let address = RegistryAddress::parse(&connector.spec.address)
            .map_err(|e| Failure::bad_gateway(format!("connector {key}: {e}")))?;
        let secret = |name: &str, what: &str| {
            self.secrets.secret(&key.namespace, name).ok_or_else(|| {
                Failure::bad_gateway(format!(
                    "connector {key}: {what} secret {}/{name} does not exist",
                    key.namespace
                ))
            })
        };
        let credential = match connector.spec.auth.as_ref().and_then(|a| a.secret_ref.as_ref()) {
            None => None,
            Some(reference) => Some(
                credential::from_secret(&*secret(&reference.name, "credential")?, address.registry_host())
                    .map_err(|e| Failure::bad_gateway(format!("connector {key}: {e}")))?,
            ),
        };
        let ca = match &connector.spec.ca_cert_secret_ref {
            None => None,
            Some(reference) => Some(credential::ca_bundle(&*secret(&reference.name, "CA")?)),
        };
        let client = self
            .clients
            .client(ca.as_deref(), self.options.insecure_upstream_tls)
            .map_err(|e| Failure::bad_gateway(format!("connector {key}: {e}")))?;
        let mut base = address.url().clone();
        let trimmed = base.path().trim_end_matches('/').to_owned();
        base.set_path(&trimmed);
        Ok(Target {
            key: key.clone(),
            registry_host: address.registry_host().to_owned(),
            base,
            connector,
            credential,
            client,
            mode,
        })
    }

    async fn forward(
        &self,
        target: &Target,
        route: &ConnectorRoute,
        request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, Failure> {
        let (parts, body) = request.into_parts();
        let repository = route::upstream_repository(&target.registry_host, &route.repository);
        let (query, mount_from) = map_query(parts.uri.query(), &route.endpoint, &route.key, &target.registry_host);
        let url = format!(
            "{}/v2/{}/{}{}",
            target.base.as_str().trim_end_matches('/'),
            repository,
            route.endpoint.path(),
            query.map(|q| format!("?{q}")).unwrap_or_default()
        );
        let uri: Uri = url.parse().map_err(|_| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                "NAME_INVALID",
                "the request does not map to an upstream URL",
            )
        })?;
        let request_url = Url::parse(&url).map_err(|_| Failure::bad_gateway("invalid upstream URL"))?;
        let has_body = carries_body(&parts.method, &parts.headers);
        let mut scopes: BTreeSet<String> = [Scope::repository(&repository, actions(&parts.method)).to_string()].into();
        if let Some(from) = &mount_from {
            scopes.insert(Scope::repository(from, &["pull"]).to_string());
        }
        let headers = upstream_request_headers(&parts.headers);
        let upload_counter = self
            .metrics
            .bytes
            .get_or_create(&ByteLabels {
                connector: target.key.to_string(),
                direction: "upload",
            })
            .clone();
        let mut body = Some(count_bytes(body, upload_counter));
        let margin = if has_body { TOKEN_MARGIN_WITH_BODY } else { TOKEN_MARGIN };

        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            let auth = self.upstream_auth(target).await?;
            let authorization = self.authorization(target, &auth, &scopes, margin).await?;
            let mut upstream = Request::builder().method(parts.method.clone()).uri(uri.clone());
            if let Some(h) = upstream.headers_mut() {
                *h = headers.clone();
                if let Some((value, _)) = &authorization {
                    h.insert(header::AUTHORIZATION, sensitive(value)?);
                }
            }
            let outgoing = if has_body {
                body.take().unwrap_or_else(empty_body)
            } else {
                empty_body()
            };
            let upstream = upstream
                .body(outgoing)
                .map_err(|_| Failure::bad_gateway("invalid upstream request"))?;
            let response = send(&target.client, upstream, self.options.upstream_header_timeout).await?;
            if response.status() != StatusCode::UNAUTHORIZED || attempt > 1 {
                break response;
            }
            // A 401: learn what the registry wants now, drop a rejected
            // token, and retry once when the request can be replayed.
            let challenges = challenges_of(response.headers());
            if let Some((_, Some((key, token)))) = &authorization {
                self.tokens.invalidate(key, token).await;
            }
            if let Some(preferred) = challenge::preferred(&challenges) {
                if let Some(auth) = auth_from_challenge(preferred) {
                    self.remember_auth(target, auth);
                }
                scopes.extend(preferred.scopes());
            }
            if has_body {
                break response;
            }
        };
        self.respond(target, route, &request_url, &parts, response, &scopes)
            .await
    }

    /// Follows blob redirects, maps headers and streams the body back.
    async fn respond(
        &self,
        target: &Target,
        route: &ConnectorRoute,
        request_url: &Url,
        parts: &hyper::http::request::Parts,
        mut response: Response<hyper::body::Incoming>,
        scopes: &BTreeSet<String>,
    ) -> Result<Response<ProxyBody>, Failure> {
        let mode = target.mode;
        let mut response_url = request_url.clone();
        let follow = matches!(parts.method, Method::GET | Method::HEAD) && matches!(route.endpoint, Endpoint::Blob(_));
        let mut hops = 0;
        let mut refreshed = false;
        while follow && response.status().is_redirection() && hops < MAX_REDIRECTS {
            let Some(next) = response
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| response_url.join(l).ok())
            else {
                break;
            };
            hops += 1;
            let same_origin = next.origin() == target.base.origin();
            let mut headers = HeaderMap::new();
            for name in [
                header::RANGE,
                header::ACCEPT,
                header::USER_AGENT,
                header::IF_MATCH,
                header::IF_NONE_MATCH,
            ] {
                if let Some(v) = parts.headers.get(&name) {
                    headers.insert(name, v.clone());
                }
            }
            // NB: credentials go only to the registry's own origin; object
            // storage gets a presigned URL and nothing else.
            if same_origin {
                let auth = self.upstream_auth(target).await?;
                if let Some((value, _)) = self.authorization(target, &auth, scopes, TOKEN_MARGIN).await? {
                    headers.insert(header::AUTHORIZATION, sensitive(&value)?);
                }
            }
            let uri: Uri = next
                .as_str()
                .parse()
                .map_err(|_| Failure::bad_gateway("the registry redirected to an invalid URL"))?;
            let mut redirected = Request::builder().method(parts.method.clone()).uri(uri);
            if let Some(h) = redirected.headers_mut() {
                *h = headers;
            }
            let redirected = redirected
                .body(empty_body())
                .map_err(|_| Failure::bad_gateway("invalid redirect request"))?;
            let answer = send(&target.client, redirected, self.options.upstream_header_timeout).await?;
            if !same_origin && answer.status() == StatusCode::FORBIDDEN {
                if refreshed {
                    // NB: a 403 would read as "the caller is denied"; the
                    // caller was allowed, the registry's storage failed.
                    return Err(Failure::bad_gateway(format!(
                        "the registry's blob redirect to {} was refused (403) again after a fresh redirect; its presigned URLs are not usable",
                        next.host_str().unwrap_or_default()
                    )));
                }
                // A presigned URL expired between redirect and fetch: ask
                // the registry for a fresh one, once.
                refreshed = true;
                let again = self.refetch(target, parts, request_url, scopes).await?;
                response = again;
                response_url = request_url.clone();
                continue;
            }
            response = answer;
            response_url = next;
        }

        let status = response.status();
        if status == StatusCode::UNAUTHORIZED {
            return Err(Failure::new(
                StatusCode::FORBIDDEN,
                "DENIED",
                format!(
                    "the registry refused connector {}'s credential for this request",
                    target.key
                ),
            ));
        }
        let mut headers = downstream_headers(response.headers());
        // NB: a forward-mode client talks to the registry's origin itself,
        // so its URLs stay as they are.
        if mode == Mode::Reverse
            && let Some(location) = response.headers().get(header::LOCATION).and_then(|v| v.to_str().ok())
        {
            match route::rewrite_location(location, &response_url, &target.base, &target.key) {
                Some(mapped) => {
                    headers.insert(
                        header::LOCATION,
                        HeaderValue::from_str(&mapped).map_err(|_| Failure::bad_gateway("unmappable Location"))?,
                    );
                }
                None => {
                    headers.remove(header::LOCATION);
                    if let Ok(v) = HeaderValue::from_str(location) {
                        // Another origin: it carries no credential of ours.
                        headers.insert(header::LOCATION, v);
                    }
                }
            }
        }
        if mode == Mode::Reverse {
            self.rewrite_links(&mut headers, response.headers(), &response_url, target);
        }
        if let Endpoint::Blob(digest) = &route.endpoint
            && status.is_success()
            && !headers.contains_key("docker-content-digest")
            && let Ok(v) = HeaderValue::from_str(digest)
        {
            headers.insert(HeaderName::from_static("docker-content-digest"), v);
        }
        let download_counter = self
            .metrics
            .bytes
            .get_or_create(&ByteLabels {
                connector: target.key.to_string(),
                direction: "download",
            })
            .clone();
        let (response, incoming) = response.into_parts();
        let body = if parts.method == Method::GET {
            splice::relay_body(
                &response,
                incoming,
                parts.extensions.get::<ClientSocket>(),
                parts.version,
                download_counter.clone(),
            )
        } else {
            Err(incoming)
        };
        if body.is_ok() {
            self.metrics
                .zero_copy_relays
                .get_or_create(&ConnectorLabels {
                    connector: target.key.to_string(),
                })
                .inc();
        }
        let body =
            body.unwrap_or_else(|incoming| count_bytes(incoming.map_err(BoxError::from).boxed(), download_counter));
        let mut out = Response::new(body);
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        Ok(out)
    }

    /// `Link` headers (pagination) mapped into the proxy's URL space; links
    /// that cannot be mapped are dropped.
    fn rewrite_links(&self, headers: &mut HeaderMap, upstream: &HeaderMap, response_url: &Url, target: &Target) {
        headers.remove(header::LINK);
        for link in upstream.get_all(header::LINK).iter().filter_map(|v| v.to_str().ok()) {
            if let Some(mapped) = route::rewrite_link(link, response_url, &target.base, &target.key)
                && let Ok(v) = HeaderValue::from_str(&mapped)
            {
                headers.append(header::LINK, v);
            }
        }
    }

    /// Re-sends a body-less request to the registry (for a fresh redirect).
    async fn refetch(
        &self,
        target: &Target,
        parts: &hyper::http::request::Parts,
        request_url: &Url,
        scopes: &BTreeSet<String>,
    ) -> Result<Response<hyper::body::Incoming>, Failure> {
        let auth = self.upstream_auth(target).await?;
        let authorization = self.authorization(target, &auth, scopes, TOKEN_MARGIN).await?;
        let mut request = Request::builder().method(parts.method.clone()).uri(
            request_url
                .as_str()
                .parse::<Uri>()
                .map_err(|_| Failure::bad_gateway("invalid upstream URL"))?,
        );
        if let Some(h) = request.headers_mut() {
            *h = upstream_request_headers(&parts.headers);
            if let Some((value, _)) = &authorization {
                h.insert(header::AUTHORIZATION, sensitive(value)?);
            }
        }
        send(
            &target.client,
            request
                .body(empty_body())
                .map_err(|_| Failure::bad_gateway("invalid request"))?,
            self.options.upstream_header_timeout,
        )
        .await
    }

    /// The upstream's auth scheme, from a cached or fresh anonymous `/v2/`.
    async fn upstream_auth(&self, target: &Target) -> Result<UpstreamAuth, Failure> {
        let cache_key = target.base.as_str().to_owned();
        if let Some(auth) = self
            .upstream_auth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cache_key)
        {
            return Ok(auth.clone());
        }
        let ping = Request::builder()
            .method(Method::GET)
            .uri(format!("{}/v2/", target.base.as_str().trim_end_matches('/')))
            .body(empty_body())
            .map_err(|_| Failure::bad_gateway("invalid upstream URL"))?;
        let response = send(&target.client, ping, self.options.upstream_header_timeout).await?;
        let status = response.status();
        let auth = if status == StatusCode::UNAUTHORIZED {
            let challenges = challenges_of(response.headers());
            challenge::preferred(&challenges)
                .and_then(auth_from_challenge)
                .unwrap_or(UpstreamAuth::Basic)
        } else {
            UpstreamAuth::Anonymous
        };
        // NB: only a real answer is remembered: a 5xx or 429 from a registry
        // that is struggling says nothing about its auth scheme, and a
        // remembered "anonymous" would cost the first request with a body
        // after recovery its token.
        if status == StatusCode::UNAUTHORIZED || status.is_success() {
            self.remember_auth(target, auth.clone());
        }
        Ok(auth)
    }

    fn remember_auth(&self, target: &Target, auth: UpstreamAuth) {
        self.upstream_auth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(target.base.as_str().to_owned(), auth);
    }

    /// The `Authorization` value for the upstream, and the cached token it
    /// came from (to evict it if the registry rejects it).
    async fn authorization(
        &self,
        target: &Target,
        auth: &UpstreamAuth,
        scopes: &BTreeSet<String>,
        margin: Duration,
    ) -> Result<Option<(String, Option<(TokenKey, Token)>)>, Failure> {
        match auth {
            UpstreamAuth::Anonymous => Ok(target.credential.as_ref().map(|c| (c.basic_header(), None))),
            UpstreamAuth::Basic => Ok(target.credential.as_ref().map(|c| (c.basic_header(), None))),
            UpstreamAuth::Bearer { realm, service } => {
                let key = TokenKey {
                    realm: realm.clone(),
                    service: service.clone(),
                    scopes: scopes.clone(),
                    credential: target
                        .credential
                        .as_ref()
                        .map(UpstreamCredential::fingerprint)
                        .unwrap_or(0),
                };
                let labels = ConnectorLabels {
                    connector: target.key.to_string(),
                };
                let (token, source) = self
                    .tokens
                    .get(&key, margin, || async {
                        // NB: checked only when a credential is about to be
                        // sent; a cached token came from a realm checked then.
                        let realm_url = checked_realm(target, realm)?;
                        fetch_token(
                            &target.client,
                            realm_url,
                            service,
                            scopes,
                            target.credential.as_ref(),
                            self.options.upstream_header_timeout,
                        )
                        .await
                    })
                    .await?;
                match source {
                    Source::Fetched => self.metrics.token_fetches.get_or_create(&labels).inc(),
                    Source::Cache => self.metrics.token_cache_hits.get_or_create(&labels).inc(),
                };
                Ok(Some((token.bearer_header(), Some((key, token)))))
            }
        }
    }
}

/// The realm as a URL, if it is on the connector's hosts.
fn checked_realm(target: &Target, realm: &str) -> Result<Url, Failure> {
    let extensions: Vec<Url> = target
        .connector
        .spec
        .address_extensions
        .iter()
        .filter_map(|e| Url::parse(&e.value).ok())
        .collect();
    check_realm(realm, &target.base, &extensions).map_err(|e| {
        tracing::warn!(connector = %target.key, realm = %realm, error = %e, "refusing a token realm outside the connector's hosts");
        Failure::bad_gateway(format!("connector {}: {e}", target.key))
    })
}

/// The challenges of an upstream 401.
fn challenges_of(headers: &HeaderMap) -> Vec<Challenge> {
    challenge::parse_challenges(
        headers
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

fn auth_from_challenge(challenge: &Challenge) -> Option<UpstreamAuth> {
    match challenge.scheme {
        Scheme::Bearer => Some(UpstreamAuth::Bearer {
            realm: challenge.realm()?.to_owned(),
            service: challenge.service().unwrap_or_default().to_owned(),
        }),
        Scheme::Basic => Some(UpstreamAuth::Basic),
        Scheme::Other(_) => None,
    }
}

/// `GET <realm>?service=…&scope=…` with the connector's credential as Basic.
async fn fetch_token(
    client: &UpstreamClient,
    mut realm: Url,
    service: &str,
    scopes: &BTreeSet<String>,
    credential: Option<&UpstreamCredential>,
    header_timeout: Duration,
) -> Result<Token, Failure> {
    {
        let mut query = realm.query_pairs_mut();
        if !service.is_empty() {
            query.append_pair("service", service);
        }
        for scope in scopes {
            query.append_pair("scope", scope);
        }
    }
    let uri: Uri = realm
        .as_str()
        .parse()
        .map_err(|_| Failure::bad_gateway("invalid token realm"))?;
    let mut request = Request::builder().method(Method::GET).uri(uri);
    if let (Some(h), Some(credential)) = (request.headers_mut(), credential) {
        h.insert(header::AUTHORIZATION, sensitive(&credential.basic_header())?);
    }
    let request = request
        .body(empty_body())
        .map_err(|_| Failure::bad_gateway("invalid token request"))?;
    let received = Instant::now();
    let response = send(client, request, header_timeout)
        .await
        .map_err(|f| Failure::new(f.status, f.code, format!("token service: {}", f.message)))?;
    let status = response.status();
    let body = tokio::time::timeout(
        header_timeout,
        http_body_util::Limited::new(response.into_body(), 1 << 20).collect(),
    )
    .await
    .map_err(|_| Failure::bad_gateway("the token service did not answer in time"))?
    .map_err(|_| Failure::bad_gateway("the token service's answer could not be read"))?
    .to_bytes();
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return Err(Failure::bad_gateway(format!(
            "the registry's token service refused the connector's credential ({status})"
        )));
    }
    if !status.is_success() {
        // NB: a 5xx or 429 says nothing about the credential.
        return Err(Failure::bad_gateway(format!(
            "the registry's token service failed ({status})"
        )));
    }
    token::parse_token_response(&body, received).map_err(|e| Failure::bad_gateway(e.to_string()))
}

async fn send(
    client: &UpstreamClient,
    request: Request<ProxyBody>,
    header_timeout: Duration,
) -> Result<Response<hyper::body::Incoming>, Failure> {
    let host = request.uri().host().unwrap_or_default().to_owned();
    match tokio::time::timeout(header_timeout, client.request(request)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error)) => Err(Failure::bad_gateway(format!(
            "upstream {host} failed: {}",
            error_chain(&error)
        ))),
        Err(_) => Err(Failure::new(
            StatusCode::GATEWAY_TIMEOUT,
            "UNAVAILABLE",
            format!(
                "upstream {host} sent no response headers within {}s",
                header_timeout.as_secs()
            ),
        )),
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The actions a method needs on the repository.
fn actions(method: &Method) -> &'static [&'static str] {
    match *method {
        Method::GET | Method::HEAD => &["pull"],
        Method::DELETE => &["delete"],
        _ => &["pull", "push"],
    }
}

/// Whether a request streams a body upstream (and so cannot be replayed).
fn carries_body(method: &Method, headers: &HeaderMap) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS) {
        return false;
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// The upstream query: kept byte-exact, except a cross-repository mount's
/// `from`, which names a repository as the caller sees it
/// (`namespaces/<ns>/connectors/<name>/<repo>`). Within the same connector
/// it becomes the upstream repository; from another connector (or anything
/// else) `mount` and `from` are dropped so the registry starts a plain
/// upload. Returns the query and the mapped `from`.
fn map_query(
    query: Option<&str>,
    endpoint: &Endpoint,
    key: &ConnectorKey,
    registry_host: &str,
) -> (Option<String>, Option<String>) {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return (None, None);
    };
    if !matches!(endpoint, Endpoint::UploadStart) || !query.split('&').any(|p| p.starts_with("from=")) {
        return (Some(query.to_owned()), None);
    }
    let prefix = format!("{}/", route::connector_prefix(key).trim_start_matches("/v2/"));
    let mut mapped_from = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let Some(value) = pair.strip_prefix("from=") else {
            kept.push(pair.to_owned());
            continue;
        };
        let decoded = percent_encoding::percent_decode_str(value)
            .decode_utf8_lossy()
            .into_owned();
        if let Some(repository) = decoded.strip_prefix(&prefix).filter(|r| route::is_repository(r)) {
            let upstream = route::upstream_repository(registry_host, repository);
            kept.push(format!(
                "from={}",
                percent_encoding::utf8_percent_encode(&upstream, percent_encoding::NON_ALPHANUMERIC)
            ));
            mapped_from = Some(upstream);
        }
    }
    if mapped_from.is_none() {
        kept.retain(|p| !p.starts_with("mount="));
    }
    let query = kept.join("&");
    ((!query.is_empty()).then_some(query), mapped_from)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus those named in `Connection`.
fn hop_by_hop(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ]
    .into_iter()
    .map(HeaderName::from_static)
    .collect();
    for value in headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        names.extend(
            value
                .split(',')
                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()),
        );
    }
    names
}

/// What of the caller's request goes upstream: everything end-to-end except
/// its credentials, cookies and forwarding headers; `Host` is set from the
/// upstream URL.
fn upstream_request_headers(incoming: &HeaderMap) -> HeaderMap {
    let mut headers = incoming.clone();
    for name in hop_by_hop(incoming) {
        headers.remove(name);
    }
    for name in [
        header::AUTHORIZATION,
        header::COOKIE,
        header::HOST,
        HeaderName::from_static("forwarded"),
    ] {
        headers.remove(name);
    }
    let forwarded: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-forwarded-") || n.as_str() == "x-real-ip")
        .cloned()
        .collect();
    for name in forwarded {
        headers.remove(name);
    }
    headers
}

/// What of the registry's answer goes back: everything end-to-end except its
/// challenges, cookies and anything credential-like.
fn downstream_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut headers = upstream.clone();
    for name in hop_by_hop(upstream) {
        headers.remove(name);
    }
    for name in [header::WWW_AUTHENTICATE, header::SET_COOKIE, header::AUTHORIZATION] {
        headers.remove(name);
    }
    headers
}

/// A header value marked sensitive (kept out of hyper's debug output).
fn sensitive(value: &str) -> Result<HeaderValue, Failure> {
    let mut v =
        HeaderValue::from_str(value).map_err(|_| Failure::bad_gateway("the credential cannot be sent in a header"))?;
    v.set_sensitive(true);
    Ok(v)
}

fn empty_body() -> ProxyBody {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}

fn count_bytes(body: ProxyBody, counter: prometheus_client::metrics::counter::Counter) -> ProxyBody {
    body.map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            counter.inc_by(data.len() as u64);
        }
        frame
    })
    .boxed()
}

fn json_response(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(
        HeaderName::from_static("docker-distribution-api-version"),
        HeaderValue::from_static("registry/2.0"),
    );
    response
}

/// An OCI error response; a 401 carries the proxy's own challenge so every
/// client learns to send its token.
fn error_response(failure: &Failure) -> Response<ProxyBody> {
    let body = serde_json::json!({"errors": [{"code": failure.code, "message": failure.message, "detail": null}]});
    let mut response = json_response(failure.status, Bytes::from(body.to_string()));
    if failure.status == StatusCode::UNAUTHORIZED {
        let value = challenge::render("Basic", &[("realm", PROXY_REALM)]);
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_sources_map_within_a_connector_and_drop_across_connectors() {
        let key = ConnectorKey::new("team", "harbor");
        let cases = [
            (
                "mount=sha256:abc&from=namespaces%2Fteam%2Fconnectors%2Fharbor%2Flab%2Fbase",
                Some("mount=sha256:abc&from=lab%2Fbase"),
                Some("lab/base"),
            ),
            (
                "mount=sha256:abc&from=namespaces/other/connectors/x/lab/base",
                None,
                None,
            ),
            ("mount=sha256:abc&from=lab/base", None, None),
            ("digest=sha256:abc", Some("digest=sha256:abc"), None),
        ];
        for (query, want_query, want_from) in cases {
            let (q, from) = map_query(Some(query), &Endpoint::UploadStart, &key, "harbor.example.com");
            assert_eq!(q.as_deref(), want_query, "{query}");
            assert_eq!(from.as_deref(), want_from, "{query}");
        }
        let (q, _) = map_query(
            Some("_state=a%2Bb%3D&digest=x"),
            &Endpoint::Upload("u".into()),
            &key,
            "h",
        );
        assert_eq!(
            q.as_deref(),
            Some("_state=a%2Bb%3D&digest=x"),
            "upload state stays byte-exact"
        );
    }

    #[test]
    fn client_credentials_and_forwarding_headers_never_go_upstream() {
        let mut incoming = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Basic abc"),
            ("cookie", "sid=1"),
            ("x-forwarded-for", "10.0.0.1"),
            ("forwarded", "for=1"),
            ("connection", "keep-alive, x-custom"),
            ("x-custom", "1"),
            ("proxy-authorization", "Basic x"),
            ("accept", "application/vnd.oci.image.manifest.v1+json"),
            ("range", "bytes=10-"),
            ("host", "proxy"),
        ] {
            incoming.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        incoming.append(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.docker.distribution.manifest.v2+json"),
        );
        let out = upstream_request_headers(&incoming);
        let names: BTreeSet<&str> = out.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["accept", "range"].into());
        assert_eq!(
            out.get_all(header::ACCEPT).iter().count(),
            2,
            "every Accept value is forwarded"
        );

        let mut upstream = HeaderMap::new();
        for (name, value) in [
            ("www-authenticate", "Bearer realm=\"x\""),
            ("set-cookie", "sid=2"),
            ("docker-content-digest", "sha256:1"),
            ("content-length", "10"),
            ("transfer-encoding", "chunked"),
        ] {
            upstream.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        let out = downstream_headers(&upstream);
        let names: BTreeSet<&str> = out.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-length", "docker-content-digest"].into());
    }

    #[test]
    fn only_requests_with_a_body_are_unreplayable() {
        let mut with_length = HeaderMap::new();
        with_length.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        let mut empty = HeaderMap::new();
        empty.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert!(!carries_body(&Method::GET, &with_length));
        assert!(carries_body(&Method::PATCH, &with_length));
        assert!(!carries_body(&Method::PUT, &empty));
        assert!(!carries_body(&Method::POST, &HeaderMap::new()));
    }
}
