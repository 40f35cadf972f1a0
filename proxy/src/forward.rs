//! Forward mode's front door: the `HTTP_PROXY`/`HTTPS_PROXY` that
//! unchanged workloads use. The caller authenticates on the CONNECT (or
//! absolute-form request) itself: `Proxy-Authorization: Basic`, the
//! username being the connector list (`ns/name[,ns/name]`, percent-encoded
//! in the proxy URL) and the password the caller's token; in cluster mode
//! an injected pod may also be known by its source address. A CONNECT to a
//! named connector's host is intercepted: TLS is terminated with a leaf
//! minted for that host and every request goes through the same
//! [`Pipeline`] as reverse mode. Other hosts are refused, or, as the tunnel
//! policy says ([`crate::tunnel`]), blind-tunnelled (CONNECT) or relayed as
//! they are (plain HTTP), never with a credential.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use access::Identity;
use access::caller::basic_credentials;
use bytes::Bytes;
use connector::ConnectorKey;
use connector::address::RegistryAddress;
use connector::keys;
use connector::selection::parse_connector_list;
use hyper::body::Incoming;
use hyper::header;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use lru::LruCache;
use registry::body::{self, ProxyBody};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use url::Url;

use crate::error::{Dialect, ProxyError, json_response};
use crate::pipeline::{Mode, Pipeline};
use crate::route::{self, Route};
use crate::tunnel::{self, TunnelHost, Tunnels};
use serving::{OpeningDeadline, ServerLimits, accept_and_drain, drain_on_stop};

/// Options of forward mode.
#[derive(Debug, Clone, Default)]
pub struct ForwardOptions {
    /// Which non-connector destinations get a blind tunnel (no
    /// interception, no credential). The library's default is `Listed`;
    /// the command's is `allowed`.
    pub tunnels: Tunnels,
    /// Non-connector hosts that get a blind tunnel under
    /// [`Tunnels::Listed`].
    pub tunnel_hosts: Vec<TunnelHost>,
    /// Let tunnels ignore the egress policy (deprecated: allow the
    /// networks with `--egress-allow` instead).
    pub tunnel_to_private_addresses: bool,
    /// What tunnels may dial (intercepted requests go through the
    /// pipeline's clients, which apply the same policy).
    pub egress: registry::egress::EgressPolicy,
    /// Hosts dialed at fixed addresses (`--resolve`).
    pub pins: registry::resolve::Pins,
}

/// The forward proxy.
pub struct ForwardProxy {
    pipeline: Arc<Pipeline>,
    leaves: Arc<certs::LeafIssuer>,
    /// One server configuration per intercepted host, so its TLS session
    /// cache lets a client resume instead of a full handshake per tunnel.
    tls_configs: Mutex<LruCache<String, Arc<rustls::ServerConfig>>>,
    options: ForwardOptions,
}

/// How many hosts' server configurations are kept. Only connector hosts are
/// intercepted, so this is reached only by a store with more hosts than
/// this; the least recently used host's configuration is then dropped.
const MAX_TLS_CONFIGS: NonZeroUsize = NonZeroUsize::new(256).expect("not zero");

/// How a forward caller proved who it is: kept for the tunnel's life so
/// that every request in it is proved again (a token may expire or be
/// revoked, a pod may go away while its tunnel stays open).
#[derive(Clone)]
enum Proof {
    /// The token in `Proxy-Authorization` (never logged).
    Token(String),
    /// The source address of an injected pod.
    PodAddress(std::net::IpAddr),
}

impl std::fmt::Debug for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token(..)"),
            Self::PodAddress(ip) => write!(f, "PodAddress({ip})"),
        }
    }
}

/// Who is behind an intercepted tunnel (or one absolute-form request), for
/// which connector.
struct TunnelCaller {
    identity: Identity,
    proof: Proof,
    key: ConnectorKey,
}

/// What to do with a CONNECT.
#[derive(Debug)]
enum Plan {
    /// Terminate TLS and relay through the pipeline for this connector.
    Intercept(ConnectorKey),
    /// A blind tunnel to one of these checked addresses.
    Tunnel(Vec<SocketAddr>),
}

impl ForwardProxy {
    pub fn new(pipeline: Arc<Pipeline>, leaves: Arc<certs::LeafIssuer>, options: ForwardOptions) -> Self {
        Self {
            pipeline,
            leaves,
            tls_configs: Mutex::new(LruCache::new(MAX_TLS_CONFIGS)),
            options,
        }
    }

    /// Answers one request on the forward listener: CONNECT, or an
    /// absolute-form `http://` request.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
        limits: ServerLimits,
    ) -> Response<ProxyBody> {
        let result = if request.method() == Method::CONNECT {
            self.connect(request, peer, limits).await
        } else if request.uri().scheme().is_some() {
            self.absolute(request, peer).await
        } else {
            Err(ProxyError::BadRequest(
                "this is a forward proxy: send CONNECT, or an absolute-form http:// request",
            ))
        };
        result.unwrap_or_else(|error| {
            let _peer = tracing::info_span!("forward", %peer).entered();
            error.log(Dialect::ForwardProxy, "");
            self.pipeline.count_failure(&error, "", Mode::Forward);
            error.response(Dialect::ForwardProxy)
        })
    }

    async fn connect(
        self: &Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
        limits: ServerLimits,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (host, port) = connect_target(request.uri()).ok_or(ProxyError::BadRequest("CONNECT needs host:port"))?;
        let (identity, keys, proof) = self.caller(request.headers(), peer).await?;
        let plan = self.plan(&host, port, "https", &identity, &keys).await?;
        tracing::debug!(%peer, caller = %identity.username, %host, port, ?plan, "CONNECT");
        let this = self.clone();
        tokio::spawn(async move {
            let upgraded = match hyper::upgrade::on(request).await {
                Ok(upgraded) => TokioIo::new(upgraded),
                Err(error) => {
                    tracing::debug!(%peer, %error, "CONNECT upgrade failed");
                    return;
                }
            };
            match plan {
                Plan::Intercept(key) => {
                    let caller = TunnelCaller { identity, proof, key };
                    this.intercept(upgraded, host, caller, peer, limits).await
                }
                Plan::Tunnel(addresses) => tunnel::tunnel(upgraded, &addresses, peer).await,
            }
        });
        Ok(Response::new(body::empty()))
    }

    /// Terminates TLS for `host` and serves HTTP/1.1 through the pipeline.
    async fn intercept(
        self: Arc<Self>,
        upgraded: TokioIo<hyper::upgrade::Upgraded>,
        host: String,
        caller: TunnelCaller,
        peer: SocketAddr,
        limits: ServerLimits,
    ) {
        let config = match self.tls_config(&host) {
            Ok(config) => config,
            Err(error) => {
                tracing::warn!(%peer, %host, %error, "cannot intercept");
                return;
            }
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = match serving::http::handshake(&acceptor, upgraded, limits.handshake_timeout()).await {
            Ok(tls) => tls,
            Err(error) => {
                tracing::info!(%peer, %host, %error, "TLS handshake inside the tunnel failed");
                return;
            }
        };
        let caller = Arc::new(caller);
        let service = service_fn(move |request: Request<Incoming>| {
            let (this, caller) = (self.clone(), caller.clone());
            async move { Ok::<_, std::convert::Infallible>(this.inside_tunnel(&caller, request).await) }
        });
        let served = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.read_buffer())
            .serve_connection(TokioIo::new(tls), service)
            .await;
        if let Err(error) = served {
            tracing::debug!(%peer, %host, %error, "intercepted connection ended with an error");
        }
    }

    /// Answers one request that reached the forward proxy for the caller's
    /// connector. The caller proves who it is again first: a token that
    /// expired or was revoked, or a pod that is gone, ends the tunnel. The
    /// path is the registry's own (`/v2/<repository>/...`), and so are the
    /// URLs in the response.
    async fn inside_tunnel<B>(&self, caller: &TunnelCaller, request: Request<B>) -> Response<ProxyBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<registry::body::BoxError>,
    {
        let started = Instant::now();
        match self.prove_again(caller).await {
            Ok(identity) => self.relay_for(&identity, &caller.key, request, started).await,
            Err(error) => {
                let mut response = self
                    .pipeline
                    .answer(Err(error), caller.key.to_string(), Mode::Forward, started);
                // NB: the client must CONNECT again, where it is refused.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
                response
            }
        }
    }

    /// Answers one request for `key`'s registry from `identity`, proved
    /// just now.
    async fn relay_for<B>(
        &self,
        identity: &Identity,
        key: &ConnectorKey,
        request: Request<B>,
        started: Instant,
    ) -> Response<ProxyBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<registry::body::BoxError>,
    {
        let request = request.map(registry::body::from_client);
        let result = async {
            match route::parse_origin_route(request.uri().path(), key)? {
                // NB: the tunnel is authenticated; a challenge here would
                // only make clients look for credentials they do not have.
                Route::Base => Ok(json_response(StatusCode::OK, Bytes::from_static(b"{}"))),
                Route::Catalog => Ok(json_response(
                    StatusCode::OK,
                    Bytes::from_static(br#"{"repositories":[]}"#),
                )),
                Route::Connector(route) => {
                    // Authorized per request, so a revocation ends a long tunnel's use.
                    self.pipeline.access().authorize(identity, key).await?;
                    self.pipeline
                        .relay(&identity.username, &route, Mode::Forward, request)
                        .await
                }
            }
        }
        .await;
        self.pipeline.answer(result, key.to_string(), Mode::Forward, started)
    }

    /// The caller's identity, proved again: its token reviewed (cached
    /// until shortly before it expires, at most the review cache's time),
    /// or its pod still running at its address.
    async fn prove_again(&self, caller: &TunnelCaller) -> Result<Identity, ProxyError> {
        let access = self.pipeline.access();
        match &caller.proof {
            Proof::Token(token) => Ok(access.authenticate(token).await?),
            Proof::PodAddress(ip) => match access.pod_at(*ip) {
                Some(identity) if identity == caller.identity => Ok(identity),
                _ => Err(access::Refusal::Anonymous.into()),
            },
        }
    }

    /// A server configuration that presents `host`'s leaf only to a client
    /// that names `host` (or names nothing, for IP hosts), and speaks only
    /// HTTP/1.1. Kept per host: a session resumed from it was made for the
    /// same host, and the caller is still authorized per CONNECT.
    fn tls_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let mut configs = self.tls_configs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(config) = configs.get(host) {
            return Ok(config.clone());
        }
        let config = self.new_tls_config(host)?;
        configs.push(host.to_owned(), config.clone());
        Ok(config)
    }

    fn new_tls_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(certs::tls_config::crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(TunnelCertResolver {
                host: host.to_owned(),
                is_ip: host.parse::<IpAddr>().is_ok(),
                leaves: self.leaves.clone(),
            }));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// An absolute-form request (`GET http://host/...`): for a plain-HTTP
    /// connector registry through the pipeline; for any other host the
    /// tunnel policy admits, relayed as it is.
    async fn absolute(&self, request: Request<Incoming>, peer: SocketAddr) -> Result<Response<ProxyBody>, ProxyError> {
        let started = Instant::now();
        let uri = request.uri().clone();
        if uri.scheme_str() != Some("http") {
            return Err(ProxyError::BadRequest(
                "only http:// URLs are forwarded in absolute form; use CONNECT for https",
            ));
        }
        let (host, port) = absolute_target(&uri).ok_or(ProxyError::BadRequest("the URL has no host"))?;
        // NB: one request, proved just now: nothing to prove again.
        let (identity, keys, _) = self.caller(request.headers(), peer).await?;
        let key = match self.plan(&host, port, "http", &identity, &keys).await? {
            Plan::Intercept(key) => key,
            // A host of no connector, as tunnels go: relayed as it is, with
            // no credential of ours (`apt-get` over `http://`).
            Plan::Tunnel(addresses) => {
                tracing::debug!(%peer, caller = %identity.username, %host, port, "plain HTTP relayed");
                return tunnel::relay_plain(request, &host, port, &addresses).await;
            }
        };
        let (mut parts, body) = request.into_parts();
        parts.uri = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .parse::<Uri>()
            .map_err(|_| ProxyError::BadRequest("the URL has no usable path"))?;
        Ok(self
            .relay_for(&identity, &key, Request::from_parts(parts, body), started)
            .await)
    }

    /// The caller and the connectors it names, from `Proxy-Authorization`;
    /// without one, in cluster mode, the injected pod at the source address
    /// with its namespace's connectors.
    async fn caller(
        &self,
        headers: &hyper::HeaderMap,
        peer: SocketAddr,
    ) -> Result<(Identity, Vec<ConnectorKey>, Proof), ProxyError> {
        let access = self.pipeline.access();
        let Some(value) = headers.get(header::PROXY_AUTHORIZATION) else {
            let identity = access.pod_soon_at(peer.ip()).await.ok_or(access::Refusal::Anonymous)?;
            let keys = self.namespace_connectors(identity.service_account().map(|(ns, _)| ns).unwrap_or_default());
            return Ok((identity, keys, Proof::PodAddress(peer.ip())));
        };
        let (username, token) = value
            .to_str()
            .ok()
            .and_then(basic_credentials)
            .ok_or(access::Refusal::Unreadable)?;
        if token.is_empty() {
            // The proxy URL the webhook injects names the connectors and
            // carries no password; unchanged clients send it as it is. Such
            // a caller is, as without the header, the injected pod at its
            // address, and the list only narrows its connectors.
            let identity = access.pod_soon_at(peer.ip()).await.ok_or(access::Refusal::Unreadable)?;
            let keys = self.named_connectors(&username, &identity)?;
            return Ok((identity, keys, Proof::PodAddress(peer.ip())));
        }
        let identity = access.authenticate(&token).await?;
        let keys = self.named_connectors(&username, &identity)?;
        Ok((identity, keys, Proof::Token(token)))
    }

    /// The connectors the proxy URL's user names (percent-encoded), in the
    /// caller's namespace unless qualified; no list: every connector of the
    /// caller's namespace.
    fn named_connectors(&self, username: &str, identity: &Identity) -> Result<Vec<ConnectorKey>, ProxyError> {
        let namespace = identity.service_account().map(|(ns, _)| ns).unwrap_or_default();
        let list = percent_encoding::percent_decode_str(username).decode_utf8_lossy();
        if list.trim().is_empty() {
            Ok(self.namespace_connectors(namespace))
        } else {
            Ok(parse_connector_list(&list, namespace)?)
        }
    }

    /// Every connector of `namespace`.
    fn namespace_connectors(&self, namespace: &str) -> Vec<ConnectorKey> {
        self.pipeline
            .connectors()
            .connectors_in(namespace)
            .iter()
            .filter_map(|c| c.metadata.name.clone().map(|name| ConnectorKey::new(namespace, name)))
            .collect()
    }

    /// Intercept for the first named connector at `host:port` that the
    /// caller may use; otherwise a checked tunnel or a refusal.
    async fn plan(
        &self,
        host: &str,
        port: u16,
        scheme: &str,
        identity: &Identity,
        keys: &[ConnectorKey],
    ) -> Result<Plan, ProxyError> {
        let mut denied = None;
        for key in keys {
            let Some(Ok(resolved)) = self.pipeline.connectors().resolve(key) else {
                continue;
            };
            if !serves_host(
                &resolved.address,
                intercepted_extensions(&resolved.connector),
                host,
                port,
                scheme,
            ) {
                continue;
            }
            match self.pipeline.access().authorize(identity, key).await {
                Ok(()) => return Ok(Plan::Intercept(key.clone())),
                Err(refusal) if refusal.is_unavailable() => return Err(refusal.into()),
                Err(refusal) => {
                    denied.get_or_insert(refusal);
                }
            }
        }
        // NB: a caller refused a connector is answered as if it had named
        // none (a blind tunnel where tunnels go, else a refusal), so naming
        // another namespace's connectors cannot probe which of them exist
        // and where; the audit line has why.
        if self.options.tunnels.admits(&self.options.tunnel_hosts, host, port) {
            if let Some(refusal) = &denied {
                tracing::info!(%host, port, %refusal, "connector refused; the host gets a blind tunnel as any other");
            }
            let addresses = tunnel::checked_addresses(
                &self.options.pins,
                &self.options.egress,
                host,
                port,
                self.options.tunnel_to_private_addresses,
            )
            .await?;
            return Ok(Plan::Tunnel(addresses));
        }
        Err(ProxyError::NotAConnectorHost {
            host: host.to_owned(),
            port,
            denied: denied.map(Box::new),
        })
    }
}

/// The lowercase host (IPv6 without brackets) and port a CONNECT names in
/// its authority-form target; None without a host or a port.
pub fn connect_target(uri: &Uri) -> Option<(String, u16)> {
    let authority = uri.authority()?;
    let port = authority.port_u16()?;
    Some((bare_host(authority.host()), port))
}

/// The lowercase host (IPv6 without brackets) and port, 80 by default, of an
/// absolute-form `http://` request target; None without a host.
pub fn absolute_target(uri: &Uri) -> Option<(String, u16)> {
    Some((bare_host(uri.host()?), uri.port_u16().unwrap_or(80)))
}

fn bare_host(host: &str) -> String {
    host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase()
}

/// The extensions forward mode intercepts: none, unless the connector opts
/// in with [`keys::INTERCEPT_EXTENSIONS_ANNOTATION`].
fn intercepted_extensions(connector: &connector::Connector) -> &[connector::crd::NamedValue] {
    if connector.opts_in(keys::INTERCEPT_EXTENSIONS_ANNOTATION) {
        &connector.spec.address_extensions
    } else {
        &[]
    }
}

/// Whether a connector at `address` (or one of its extensions) is the
/// registry at `host:port` over `scheme`.
fn serves_host(
    address: &RegistryAddress,
    extensions: &[connector::crd::NamedValue],
    host: &str,
    port: u16,
    scheme: &str,
) -> bool {
    let matches = |url: &Url| {
        url.scheme() == scheme
            && url.port_or_known_default() == Some(port)
            && url
                .host_str()
                .map(|h| {
                    h.trim_start_matches('[')
                        .trim_end_matches(']')
                        .eq_ignore_ascii_case(host)
                })
                .unwrap_or(false)
    };
    matches(address.url())
        || extensions
            .iter()
            .filter_map(|e| RegistryAddress::parse(&e.value).ok())
            .any(|a| matches(a.url()))
}

/// Presents the tunnel host's leaf, only to a client that asks for it.
struct TunnelCertResolver {
    host: String,
    is_ip: bool,
    leaves: Arc<certs::LeafIssuer>,
}

impl std::fmt::Debug for TunnelCertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelCertResolver")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for TunnelCertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let named = match hello.server_name() {
            Some(name) => name.eq_ignore_ascii_case(&self.host),
            // Clients send no SNI for IP addresses.
            None => self.is_ip,
        };
        if !named {
            tracing::info!(host = %self.host, sni = ?hello.server_name(), "TLS client named another host than its CONNECT");
            return None;
        }
        match self.leaves.certified_key(&self.host) {
            Ok(key) => Some(key),
            Err(error) => {
                tracing::warn!(%error, "cannot mint a leaf certificate");
                None
            }
        }
    }
}

/// Serves forward mode on `listener` until `shutdown` resolves, then stops
/// accepting and waits up to the grace period for open requests.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<ForwardProxy>,
    limits: ServerLimits,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let accept_limits = limits.clone();
    accept_and_drain(listener, &accept_limits, shutdown, move |stream, peer, mut stopping| {
        let (proxy, limits) = (proxy.clone(), limits.clone());
        async move {
            let service_limits = limits.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let (proxy, limits) = (proxy.clone(), service_limits.clone());
                async move { Ok::<_, std::convert::Infallible>(proxy.handle(request, peer, limits).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.read_buffer())
                .serve_connection(
                    TokioIo::new(OpeningDeadline::new(stream, limits.header_read_timeout)),
                    service,
                )
                .with_upgrades();
            let result = drain_on_stop!(std::pin::pin!(connection), stopping);
            if let Err(error) = result {
                tracing::debug!(%peer, error = %error, "forward connection ended with an error");
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> RegistryAddress {
        RegistryAddress::parse(text).unwrap()
    }

    #[test]
    fn connector_hosts_match_by_scheme_host_and_port() {
        let extensions = vec![connector::crd::NamedValue {
            name: "realm".into(),
            value: "https://auth.example.com".into(),
        }];
        assert!(serves_host(
            &address("https://Registry.Test:5000"),
            &[],
            "registry.test",
            5000,
            "https"
        ));
        assert!(!serves_host(
            &address("https://registry.test:5000"),
            &[],
            "registry.test",
            443,
            "https"
        ));
        assert!(!serves_host(
            &address("http://registry.test:5000"),
            &[],
            "registry.test",
            5000,
            "https"
        ));
        assert!(serves_host(
            &address("harbor.example.com"),
            &[],
            "harbor.example.com",
            443,
            "https"
        ));
        assert!(serves_host(
            &address("harbor.example.com"),
            &extensions,
            "auth.example.com",
            443,
            "https"
        ));
        assert!(serves_host(&address("http://[::1]:5000"), &[], "::1", 5000, "http"));
    }

    #[test]
    fn address_extensions_are_intercepted_only_when_the_connector_opts_in() {
        let connector = |annotations: serde_json::Value| -> connector::Connector {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "connectors.alauda.io/v1alpha1",
                "kind": "Connector",
                "metadata": {"name": "harbor", "namespace": "team", "annotations": annotations},
                "spec": {
                    "connectorClassName": "oci",
                    "address": "https://harbor.example.com",
                    "addressExtensions": [{"name": "mirror", "value": "https://ghcr.io"}],
                },
            }))
            .unwrap()
        };
        let plain = connector(serde_json::json!({}));
        let opted_in = connector(serde_json::json!({keys::INTERCEPT_EXTENSIONS_ANNOTATION: "true"}));
        let harbor = address("https://harbor.example.com");
        assert!(!serves_host(
            &harbor,
            intercepted_extensions(&plain),
            "ghcr.io",
            443,
            "https"
        ));
        assert!(serves_host(
            &harbor,
            intercepted_extensions(&plain),
            "harbor.example.com",
            443,
            "https"
        ));
        assert!(serves_host(
            &harbor,
            intercepted_extensions(&opted_in),
            "ghcr.io",
            443,
            "https"
        ));
    }

    mod revocation {
        use std::sync::atomic::{AtomicBool, Ordering};

        use access::caller::{Authenticator, BoxFuture, CallerError, SameNamespace};
        use access::{Access, PeerIdentities};
        use http_body_util::Empty;

        use super::*;
        use crate::{Pipeline, UpstreamOptions};

        /// A token that is valid until `revoked` is set.
        struct Revocable(Arc<AtomicBool>);

        impl Authenticator for Revocable {
            fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<Identity>, CallerError>> {
                let valid = token == "tunnel-token" && !self.0.load(Ordering::SeqCst);
                Box::pin(async move { Ok(valid.then(|| Identity::of_service_account("team", "builder"))) })
            }
        }

        /// An injected pod at 10.0.0.1 until `gone` is set.
        struct Pods(Arc<AtomicBool>);

        impl PeerIdentities for Pods {
            fn pod(&self, ip: std::net::IpAddr) -> Option<Identity> {
                (ip == std::net::IpAddr::from([10, 0, 0, 1]) && !self.0.load(Ordering::SeqCst))
                    .then(|| Identity::of_service_account("team", "builder"))
            }

            fn node(&self, _: std::net::IpAddr) -> Option<String> {
                None
            }

            fn pods_pulling<'a>(&'a self, _: &'a str, _: &'a ConnectorKey, _: &'a str) -> BoxFuture<'a, Vec<Identity>> {
                Box::pin(async { Vec::new() })
            }
        }

        fn forward(revoked: &Arc<AtomicBool>, gone: &Arc<AtomicBool>) -> ForwardProxy {
            let store = Arc::new(
                connector::store::FileStore::from_yaml(
                    "apiVersion: connectors.alauda.io/v1alpha1\nkind: Connector\nmetadata: {name: harbor, namespace: team}\nspec: {connectorClassName: oci, address: \"https://harbor.example.com\"}\n",
                )
                .unwrap(),
            );
            let access = Access::new(Arc::new(Revocable(revoked.clone())), Arc::new(SameNamespace))
                .with_peer_identities(Arc::new(Pods(gone.clone())));
            let pipeline = Arc::new(Pipeline::new(store.clone(), store, access, UpstreamOptions::default()));
            let ca = certs::CertificateAuthority::generate("test CA", std::time::Duration::from_secs(3600)).unwrap();
            let leaves = Arc::new(certs::LeafIssuer::new(Arc::new(ca)));
            ForwardProxy::new(pipeline, leaves, ForwardOptions::default())
        }

        fn ping() -> Request<Empty<Bytes>> {
            Request::get("/v2/").body(Empty::new()).unwrap()
        }

        #[tokio::test]
        async fn a_tunnel_ends_once_its_token_is_revoked_or_its_pod_is_gone() {
            let (revoked, gone) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
            let proxy = forward(&revoked, &gone);
            let key = ConnectorKey::new("team", "harbor");
            let builder = Identity::of_service_account("team", "builder");
            let by_token = TunnelCaller {
                identity: builder.clone(),
                proof: Proof::Token("tunnel-token".into()),
                key: key.clone(),
            };
            let by_pod = TunnelCaller {
                identity: builder,
                proof: Proof::PodAddress(std::net::IpAddr::from([10, 0, 0, 1])),
                key,
            };
            for caller in [&by_token, &by_pod] {
                assert_eq!(proxy.inside_tunnel(caller, ping()).await.status(), StatusCode::OK);
            }
            revoked.store(true, Ordering::SeqCst);
            gone.store(true, Ordering::SeqCst);
            for caller in [&by_token, &by_pod] {
                let answer = proxy.inside_tunnel(caller, ping()).await;
                assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "{:?}", caller.proof);
                assert_eq!(answer.headers()[header::CONNECTION], "close", "the tunnel ends");
            }
        }
    }
}
