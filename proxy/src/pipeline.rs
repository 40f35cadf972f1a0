//! The one request pipeline behind both front doors: a request for one
//! connector, from a caller already identified and authorized, relayed to
//! the connector's registry with the connector's credential.
//!
//! Each request: the connector and its Secrets are resolved; the request
//! goes upstream with the connector's authorization (Basic, or a cached
//! Bearer token from a token service whose realm was checked first), once
//! more after a 401 when it can be replayed; blob redirects are followed
//! here without credentials; `Location` and `Link` are mapped back into the
//! proxy's URL space (reverse mode); bodies stream both ways; upstream
//! challenges, tokens and cookies never reach the caller.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use access::Access;

use connector::ConnectorKey;
use connector::store::{ConnectorStore, SecretStore};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use registry::auth::{Authorization, RequestHead, Upstream, UpstreamSender};
use registry::body::{self, BoxError, ProxyBody};
use registry::challenge::Scope;
use registry::credential;
use registry::egress::EgressPolicy;
use registry::resolve::Pins;
use registry::splice::{self, ClientSocket};
use registry::token::Source;
use registry::upstream::{RESPONSE_HEADER_TIMEOUT, UpstreamClients};
use url::Url;

use crate::error::{AUDIT_TARGET, ConnectorFault, Dialect, Outcome, ProxyError};
use crate::headers::{actions, carries_body, downstream_headers, map_query, upstream_request_headers};
use crate::metrics::Metrics;
use crate::route::{self, ConnectorRoute, Endpoint};

/// How many redirects a blob fetch follows.
const MAX_REDIRECTS: usize = 5;

/// A token must outlive a request with a body by this much: a 401 after
/// streaming the body cannot be replayed.
const TOKEN_MARGIN_WITH_BODY: Duration = Duration::from_secs(30);
const TOKEN_MARGIN: Duration = Duration::from_secs(5);

/// How the pipeline reaches upstream registries.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// Skip upstream TLS verification for every connector. Off by default;
    /// only for registries with certificates nobody can verify.
    pub insecure_upstream_tls: bool,
    /// Hosts dialed at fixed addresses (`--resolve`).
    pub pins: Pins,
    /// How long an upstream (registry, token service, object storage) may
    /// take to send response headers; bodies have no deadline.
    pub upstream_header_timeout: Duration,
    /// What may be dialed: registries, token realms, redirect targets.
    pub egress: EgressPolicy,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self {
            insecure_upstream_tls: false,
            pins: Pins::default(),
            upstream_header_timeout: RESPONSE_HEADER_TIMEOUT,
            egress: EgressPolicy::default(),
        }
    }
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

/// The request pipeline of a proxy process.
pub struct Pipeline {
    connectors: Arc<dyn ConnectorStore>,
    secrets: Arc<dyn SecretStore>,
    access: Access,
    sender: UpstreamSender,
    clients: UpstreamClients,
    insecure_upstream_tls: bool,
    pub metrics: Arc<Metrics>,
}

/// The connector a request goes to, resolved.
struct Target {
    key: ConnectorKey,
    upstream: Upstream,
    /// How the client addresses the registry.
    mode: Mode,
}

/// A request on its way upstream: what the pipeline needs of the caller's
/// request after its body has been handed on.
struct Outgoing<'a> {
    route: &'a ConnectorRoute,
    parts: &'a hyper::http::request::Parts,
    request_url: &'a Url,
    scopes: &'a BTreeSet<String>,
}

impl Pipeline {
    pub fn new(
        connectors: Arc<dyn ConnectorStore>,
        secrets: Arc<dyn SecretStore>,
        access: Access,
        options: UpstreamOptions,
    ) -> Self {
        Self {
            connectors,
            secrets,
            access,
            sender: UpstreamSender::new(options.upstream_header_timeout),
            clients: UpstreamClients::new(options.pins, options.egress),
            insecure_upstream_tls: options.insecure_upstream_tls,
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// Who callers are and what they may do.
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// The connectors the pipeline serves.
    pub fn connectors(&self) -> &Arc<dyn ConnectorStore> {
        &self.connectors
    }

    /// The answer to a registry client, counted by connector, mode and
    /// status class, with its time to first byte since `started`, and a
    /// failure by its reason or class; failures logged at their level.
    pub fn answer(
        &self,
        result: Result<Response<ProxyBody>, ProxyError>,
        connector: String,
        mode: Mode,
        started: Instant,
    ) -> Response<ProxyBody> {
        let response = result.unwrap_or_else(|error| {
            error.log(Dialect::Registry, &connector);
            self.count_failure(&error, &connector, mode);
            error.response(Dialect::Registry)
        });
        self.metrics
            .answered(connector, mode.label(), response.status().as_u16(), started.elapsed());
        response
    }

    /// Counts a failed request as a refusal or an upstream error.
    pub fn count_failure(&self, error: &ProxyError, connector: &str, mode: Mode) {
        match error.outcome() {
            Outcome::Refused(reason) => self.metrics.refused(mode.label(), reason),
            Outcome::Failed(class) => self.metrics.upstream_failed(connector, class),
        }
    }

    /// The metrics in the text exposition format, without the series of
    /// connectors that no longer exist.
    pub fn metrics_text(&self) -> String {
        self.metrics.forget_absent(|connector| {
            connector.split_once('/').is_some_and(|(namespace, name)| {
                self.connectors.connector(&ConnectorKey::new(namespace, name)).is_some()
            })
        });
        self.metrics.encode()
    }

    /// Relays `request` for `route` (of connector `route.key`, which
    /// `caller` may use) to the registry and streams its answer back. Each
    /// use of the credential leaves one audit line.
    pub async fn relay(
        &self,
        caller: &str,
        route: &ConnectorRoute,
        mode: Mode,
        request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let method = request.method().clone();
        let sent = content_length(request.headers());
        let result = self.relay_to_registry(route, mode, request).await;
        audit(caller, route, mode, &method, sent, &result);
        result
    }

    async fn relay_to_registry(
        &self,
        route: &ConnectorRoute,
        mode: Mode,
        request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let target = self.target(&route.key, mode).await?;
        let (parts, body) = request.into_parts();
        let upstream = &target.upstream;
        let repository = route::upstream_repository(&upstream.registry_host, &route.repository);
        let (query, mount_from) = map_query(parts.uri.query(), &route.endpoint, &route.key, &upstream.registry_host);
        let url = format!(
            "{}{}",
            upstream.url(&format!("v2/{repository}/{}", route.endpoint.path())),
            query.map(|q| format!("?{q}")).unwrap_or_default()
        );
        let uri: Uri = url.parse().map_err(|_| ProxyError::Unmappable)?;
        let request_url = Url::parse(&url).map_err(|_| ProxyError::Unmappable)?;
        let mut scopes: BTreeSet<String> = [Scope::repository(&repository, actions(&parts.method)).to_string()].into();
        if let Some(from) = &mount_from {
            scopes.insert(Scope::repository(from, &["pull"]).to_string());
        }
        let head = RequestHead {
            method: parts.method.clone(),
            uri,
            headers: upstream_request_headers(&parts.headers),
        };
        let has_body = carries_body(&parts.method, &parts.headers);
        let margin = if has_body { TOKEN_MARGIN_WITH_BODY } else { TOKEN_MARGIN };
        let mut body = Some(count_bytes(body, self.byte_counter(&target.key, "upload")));

        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            let outgoing = if has_body {
                body.take().unwrap_or_else(body::empty)
            } else {
                body::empty()
            };
            let (response, authorization) = self.send(&target, &head, outgoing, &scopes, margin).await?;
            if response.status() != StatusCode::UNAUTHORIZED || attempt > 1 {
                break response;
            }
            // A 401: learn what the registry wants now, drop a rejected
            // token, and retry once when the request can be replayed.
            self.sender
                .rejected(upstream, response.headers(), authorization.as_ref(), &mut scopes)
                .await;
            if has_body {
                break response;
            }
        };
        let outgoing = Outgoing {
            route,
            parts: &parts,
            request_url: &request_url,
            scopes: &scopes,
        };
        self.respond(&target, &outgoing, response).await
    }

    /// Sends with the connector's authorization and counts where a Bearer
    /// token came from.
    async fn send(
        &self,
        target: &Target,
        head: &RequestHead,
        body: ProxyBody,
        scopes: &BTreeSet<String>,
        margin: Duration,
    ) -> Result<(Response<Incoming>, Option<Authorization>), ProxyError> {
        let (response, authorization) = self
            .sender
            .send_authorized(&target.upstream, head, body, scopes, margin)
            .await?;
        if let Some(source) = authorization.as_ref().and_then(|a| a.source) {
            self.metrics
                .token(&target.key.to_string(), matches!(source, Source::Fetched));
        }
        Ok((response, authorization))
    }

    /// The connector `key`, its credential and the client for its trust.
    async fn target(&self, key: &ConnectorKey, mode: Mode) -> Result<Target, ProxyError> {
        let fault = |fault: ConnectorFault| ProxyError::Connector {
            key: key.clone(),
            fault,
        };
        let resolved = self
            .connectors
            .resolve(key)
            .ok_or_else(|| ProxyError::UnknownConnector(key.clone()))?
            .map_err(|e| fault(e.into()))?;
        let (connector, address) = (&resolved.connector, &*resolved.address);
        let secret = async |name: &str, what: &'static str| {
            let (namespace, name) = (key.namespace.clone(), name.to_owned());
            match self.secrets.secret_for_use(&namespace, &name).await {
                Ok(Some(secret)) => Ok(secret),
                Ok(None) => Err(fault(ConnectorFault::MissingSecret { what, namespace, name })),
                Err(_) => Err(fault(ConnectorFault::UnreadableSecret { what, namespace, name })),
            }
        };
        let credential = match connector.spec.auth.as_ref().and_then(|a| a.secret_ref.as_ref()) {
            None => None,
            Some(reference) => Some(
                credential::from_secret(&*secret(&reference.name, "credential").await?, address.registry_host())
                    .map_err(|e| fault(e.into()))?,
            ),
        };
        let ca = match &connector.spec.ca_cert_secret_ref {
            None => None,
            Some(reference) => Some(credential::ca_bundle(&*secret(&reference.name, "CA").await?)),
        };
        let client = self
            .clients
            .client(ca.as_deref(), self.insecure_upstream_tls)
            .map_err(|e| fault(e.into()))?;
        Ok(Target {
            key: key.clone(),
            upstream: Upstream::new(
                key.to_string(),
                address,
                &connector.spec.address_extensions,
                credential,
                client,
            ),
            mode,
        })
    }

    /// Follows blob redirects, maps headers and streams the body back.
    async fn respond(
        &self,
        target: &Target,
        outgoing: &Outgoing<'_>,
        response: Response<Incoming>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (route, parts) = (outgoing.route, outgoing.parts);
        let follow = matches!(parts.method, Method::GET | Method::HEAD) && matches!(route.endpoint, Endpoint::Blob(_));
        let (response, response_url) = if follow {
            self.follow_redirects(target, outgoing, response).await?
        } else {
            (response, outgoing.request_url.clone())
        };
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED {
            return Err(ProxyError::CredentialRefused(target.key.clone()));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            self.metrics.upstream_failed(&target.key.to_string(), "rate_limited");
        } else if status.is_server_error() {
            self.metrics.upstream_failed(&target.key.to_string(), "status_5xx");
        }
        let mut headers = downstream_headers(response.headers());
        // NB: a forward-mode client talks to the registry's origin itself,
        // so its URLs stay as they are.
        if target.mode == Mode::Reverse {
            rewrite_urls(&mut headers, response.headers(), &response_url, target)?;
        }
        if let Endpoint::Blob(digest) = &route.endpoint
            && status.is_success()
            && !headers.contains_key("docker-content-digest")
            && let Ok(v) = HeaderValue::from_str(digest)
        {
            headers.insert(HeaderName::from_static("docker-content-digest"), v);
        }
        let download_counter = self.byte_counter(&target.key, "download");
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
            self.metrics.zero_copy_counter(&target.key.to_string()).inc();
        }
        let body =
            body.unwrap_or_else(|incoming| count_bytes(incoming.map_err(BoxError::from).boxed(), download_counter));
        let mut out = Response::new(body);
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        Ok(out)
    }

    /// Follows a blob GET/HEAD's redirects (at most [`MAX_REDIRECTS`]):
    /// credentials go only to the registry's own origin, object storage
    /// gets its presigned URL and nothing else. A presigned URL refused
    /// with 403 is asked for again, once. Returns the last answer and the
    /// URL it came from.
    async fn follow_redirects(
        &self,
        target: &Target,
        outgoing: &Outgoing<'_>,
        mut response: Response<Incoming>,
    ) -> Result<(Response<Incoming>, Url), ProxyError> {
        let parts = outgoing.parts;
        let mut response_url = outgoing.request_url.clone();
        let mut hops = 0;
        let mut refreshed = false;
        while response.status().is_redirection() && hops < MAX_REDIRECTS {
            let Some(next) = response
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| response_url.join(l).ok())
            else {
                break;
            };
            hops += 1;
            let same_origin = next.origin() == target.upstream.base.origin();
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
            let head = RequestHead {
                method: parts.method.clone(),
                uri: next.as_str().parse().map_err(|_| ProxyError::InvalidRedirect)?,
                headers,
            };
            let answer = if same_origin {
                self.send(target, &head, body::empty(), outgoing.scopes, TOKEN_MARGIN)
                    .await?
                    .0
            } else {
                let mut request = Request::builder().method(head.method).uri(head.uri);
                if let Some(h) = request.headers_mut() {
                    *h = head.headers;
                }
                let request = request.body(body::empty()).map_err(|_| ProxyError::InvalidRedirect)?;
                self.sender.send(&target.upstream.client, request).await?
            };
            if !same_origin && answer.status() == StatusCode::FORBIDDEN {
                if refreshed {
                    // NB: a 403 would read as "the caller is denied"; the
                    // caller was allowed, the registry's storage failed.
                    return Err(ProxyError::RedirectRefused(
                        next.host_str().unwrap_or_default().to_owned(),
                    ));
                }
                // A presigned URL expired between redirect and fetch: ask
                // the registry for a fresh one, once.
                refreshed = true;
                response = self.refetch(target, outgoing).await?;
                response_url = outgoing.request_url.clone();
                continue;
            }
            response = answer;
            response_url = next;
        }
        Ok((response, response_url))
    }

    /// Re-sends a body-less request to the registry (for a fresh redirect).
    async fn refetch(&self, target: &Target, outgoing: &Outgoing<'_>) -> Result<Response<Incoming>, ProxyError> {
        let head = RequestHead {
            method: outgoing.parts.method.clone(),
            uri: outgoing
                .request_url
                .as_str()
                .parse()
                .map_err(|_| ProxyError::Unmappable)?,
            headers: upstream_request_headers(&outgoing.parts.headers),
        };
        Ok(self
            .send(target, &head, body::empty(), outgoing.scopes, TOKEN_MARGIN)
            .await?
            .0)
    }

    fn byte_counter(
        &self,
        key: &ConnectorKey,
        direction: &'static str,
    ) -> prometheus_client::metrics::counter::Counter {
        self.metrics.byte_counter(&key.to_string(), direction)
    }
}

/// The audit line of one use of a connector's credential: who, which
/// connector, repository and endpoint (tag or digest), the method, the
/// status and the bytes announced each way. Never a token or a password.
fn audit(
    caller: &str,
    route: &ConnectorRoute,
    mode: Mode,
    method: &Method,
    sent: u64,
    result: &Result<Response<ProxyBody>, ProxyError>,
) {
    let (status, received, failure) = match result {
        Ok(response) => (response.status().as_u16(), content_length(response.headers()), None),
        Err(error) => (
            error.status(crate::error::Dialect::Registry).as_u16(),
            0,
            Some(error.to_string()),
        ),
    };
    tracing::info!(
        target: AUDIT_TARGET,
        caller,
        connector = %route.key,
        repository = %route.repository,
        endpoint = %route.endpoint.path(),
        %method,
        mode = mode.label(),
        status,
        bytes_sent = sent,
        bytes_received = received,
        failure = failure.as_deref().unwrap_or_default(),
        "credential used"
    );
}

/// A message's `Content-Length`, or 0.
fn content_length(headers: &HeaderMap) -> u64 {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `Location` and `Link` (pagination) mapped into the proxy's URL space.
/// A `Location` on another origin carries no credential of ours and stays
/// as it is; links that cannot be mapped are dropped.
fn rewrite_urls(
    headers: &mut HeaderMap,
    upstream: &HeaderMap,
    response_url: &Url,
    target: &Target,
) -> Result<(), ProxyError> {
    let base = &target.upstream.base;
    if let Some(location) = upstream.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
        headers.remove(header::LOCATION);
        match route::rewrite_location(location, response_url, base, &target.key) {
            Some(mapped) => {
                headers.insert(
                    header::LOCATION,
                    HeaderValue::from_str(&mapped).map_err(|_| ProxyError::UnmappableLocation)?,
                );
            }
            None => {
                if let Ok(v) = HeaderValue::from_str(location) {
                    headers.insert(header::LOCATION, v);
                }
            }
        }
    }
    headers.remove(header::LINK);
    for link in upstream.get_all(header::LINK).iter().filter_map(|v| v.to_str().ok()) {
        if let Some(mapped) = route::rewrite_link(link, response_url, base, &target.key)
            && let Ok(v) = HeaderValue::from_str(&mapped)
        {
            headers.append(header::LINK, v);
        }
    }
    Ok(())
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
