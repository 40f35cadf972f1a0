//! Forward mode: the `HTTP_PROXY`/`HTTPS_PROXY` that unchanged workloads
//! use. The caller authenticates on the CONNECT (or absolute-form request)
//! itself: `Proxy-Authorization: Basic`, the username being the connector
//! list (`ns/name[,ns/name]`, percent-encoded in the proxy URL) and the
//! password the caller's token. A CONNECT to a selected connector's host is
//! intercepted: TLS is terminated with a leaf minted for that host and every
//! request goes through the same credential-injecting pipeline as reverse
//! mode. Other hosts are refused, or blind-tunnelled when allow-listed, never
//! with a credential and never to loopback, link-local or metadata
//! addresses unless that is allowed explicitly.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use connector::address::RegistryAddress;
use connector::selection::{ConnectorKey, parse_connector_list};
use connector::store::ConnectorStore;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use url::Url;

use crate::caller::{Authenticator, Authorizer, Decision, Identity, basic_credentials};
use crate::resolve::Pins;
use crate::reverse::ReverseProxy;
use crate::server::ServerLimits;
use crate::upstream::{CONNECT_TIMEOUT, ProxyBody};

/// The realm of the proxy's `Proxy-Authenticate` challenge.
pub const PROXY_AUTH_REALM: &str = "connectors";

/// How long a client has to finish the TLS handshake inside a tunnel.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// A host allowed through a blind tunnel: `name`, or `*.suffix` for every
/// name under it; with an optional `:port` (any port when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelHost {
    host: String,
    port: Option<u16>,
}

/// Why a `--forward-tunnel-host` entry was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid tunnel host {0:?}: expected NAME, *.SUFFIX, or either with :PORT")]
pub struct TunnelHostError(String);

impl std::str::FromStr for TunnelHost {
    type Err = TunnelHostError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let error = || TunnelHostError(entry.to_owned());
        let (host, port) = match entry.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, Some(port.parse::<u16>().map_err(|_| error())?)),
            _ => (entry, None),
        };
        let bare = host.strip_prefix("*.").unwrap_or(host);
        if bare.is_empty() || bare.contains(['/', '@', ' ', '*']) {
            return Err(error());
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl TunnelHost {
    /// Whether a tunnel to `host` (lowercase, IPv6 without brackets) and
    /// `port` is allowed by this entry.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        match self.host.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
            None => host == self.host,
        }
    }
}

/// Options of forward mode.
#[derive(Debug, Clone, Default)]
pub struct ForwardOptions {
    /// Non-connector hosts that get a blind tunnel (no interception, no
    /// credential). Everything else is refused.
    pub tunnel_hosts: Vec<TunnelHost>,
    /// Allow tunnels to loopback, link-local and metadata addresses.
    pub tunnel_to_private_addresses: bool,
    /// Hosts dialed at fixed addresses (`--resolve`).
    pub pins: Pins,
}

/// The forward proxy.
pub struct ForwardProxy {
    pipeline: Arc<ReverseProxy>,
    connectors: Arc<dyn ConnectorStore>,
    authenticator: Arc<dyn Authenticator>,
    authorizer: Arc<dyn Authorizer>,
    leaves: Arc<certs::LeafIssuer>,
    /// One server configuration per intercepted host, so its TLS session
    /// cache lets a client resume instead of a full handshake per tunnel.
    tls_configs: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
    options: ForwardOptions,
}

/// How many hosts' server configurations are kept. Only connector hosts are
/// intercepted, so this is reached only by a store with more hosts than
/// this; the cache then starts over.
const MAX_TLS_CONFIGS: usize = 256;

/// What to do with a CONNECT.
#[derive(Debug)]
enum Plan {
    /// Terminate TLS and relay through the pipeline for this connector.
    Intercept(ConnectorKey),
    /// A blind tunnel to one of these checked addresses.
    Tunnel(Vec<SocketAddr>),
}

/// A refusal, answered with a short text.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl ForwardProxy {
    pub fn new(
        pipeline: Arc<ReverseProxy>,
        connectors: Arc<dyn ConnectorStore>,
        authenticator: Arc<dyn Authenticator>,
        authorizer: Arc<dyn Authorizer>,
        leaves: Arc<certs::LeafIssuer>,
        options: ForwardOptions,
    ) -> Self {
        Self {
            pipeline,
            connectors,
            authenticator,
            authorizer,
            leaves,
            tls_configs: Mutex::new(HashMap::new()),
            options,
        }
    }

    /// Answers one request on the forward listener: CONNECT, or an
    /// absolute-form request for a plain-HTTP registry.
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
            Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "this is a forward proxy: send CONNECT, or an absolute-form request for a plain-HTTP registry",
            ))
        };
        result.unwrap_or_else(|refusal| {
            tracing::info!(%peer, status = refusal.status.as_u16(), message = %refusal.message, "forward request refused");
            refusal_response(&refusal)
        })
    }

    async fn connect(
        self: &Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
        limits: ServerLimits,
    ) -> Result<Response<ProxyBody>, Refusal> {
        let (host, port) = connect_target(request.uri())
            .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "CONNECT needs host:port"))?;
        let (identity, keys) = self.caller(request.headers(), peer).await?;
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
                Plan::Intercept(key) => this.intercept(upgraded, host, identity, key, peer, limits).await,
                Plan::Tunnel(addresses) => tunnel(upgraded, &addresses, peer).await,
            }
        });
        Ok(Response::new(empty()))
    }

    /// Terminates TLS for `host` and serves HTTP/1.1 through the pipeline.
    async fn intercept(
        &self,
        upgraded: TokioIo<hyper::upgrade::Upgraded>,
        host: String,
        identity: Identity,
        key: ConnectorKey,
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
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(upgraded)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                tracing::info!(%peer, %host, %error, "TLS handshake inside the tunnel failed");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, %host, "TLS handshake inside the tunnel timed out");
                return;
            }
        };
        let (pipeline, identity, key) = (self.pipeline.clone(), Arc::new(identity), Arc::new(key));
        let service = service_fn(move |request: Request<Incoming>| {
            let (pipeline, identity, key) = (pipeline.clone(), identity.clone(), key.clone());
            async move { Ok::<_, std::convert::Infallible>(pipeline.handle_forwarded(&identity, &key, request).await) }
        });
        let served = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .serve_connection(TokioIo::new(tls), service)
            .await;
        if let Err(error) = served {
            tracing::debug!(%peer, %host, %error, "intercepted connection ended with an error");
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
        if configs.len() >= MAX_TLS_CONFIGS {
            configs.clear();
        }
        configs.insert(host.to_owned(), config.clone());
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

    /// An absolute-form request (`GET http://host/v2/...`) for a plain-HTTP
    /// connector registry.
    async fn absolute(&self, request: Request<Incoming>, peer: SocketAddr) -> Result<Response<ProxyBody>, Refusal> {
        let uri = request.uri().clone();
        if uri.scheme_str() != Some("http") {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "only http:// URLs are forwarded in absolute form; use CONNECT for https",
            ));
        }
        let (host, port) =
            absolute_target(&uri).ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "the URL has no host"))?;
        let (identity, keys) = self.caller(request.headers(), peer).await?;
        let Plan::Intercept(key) = self.plan(&host, port, "http", &identity, &keys).await? else {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{host}:{port} is not a plain-HTTP connector registry; nothing else is forwarded in absolute form"
                ),
            ));
        };
        let (mut parts, body) = request.into_parts();
        parts.uri = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .parse::<Uri>()
            .map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "the URL has no usable path"))?;
        Ok(self
            .pipeline
            .handle_forwarded(&identity, &key, Request::from_parts(parts, body))
            .await)
    }

    /// The caller and the connectors it names, from `Proxy-Authorization`;
    /// without one, in cluster mode, the injected pod at the source address
    /// with its namespace's connectors.
    async fn caller(
        &self,
        headers: &hyper::HeaderMap,
        peer: SocketAddr,
    ) -> Result<(Identity, Vec<ConnectorKey>), Refusal> {
        let required = |message: &str| Refusal::new(StatusCode::PROXY_AUTHENTICATION_REQUIRED, message);
        let missing = || {
            required(
                "proxy authentication required: the connector list as the username, a ServiceAccount token as the password",
            )
        };
        let Some(value) = headers.get(header::PROXY_AUTHORIZATION) else {
            let identity = self
                .pipeline
                .peer_identities()
                .and_then(|peers| peers.pod(peer.ip().to_canonical()))
                .ok_or_else(missing)?;
            let keys = self.namespace_connectors(identity.service_account().map(|(ns, _)| ns).unwrap_or_default());
            return Ok((identity, keys));
        };
        let (username, token) = value
            .to_str()
            .ok()
            .and_then(basic_credentials)
            .filter(|(_, token)| !token.is_empty())
            .ok_or_else(missing)?;
        let identity = match self.authenticator.authenticate(&token).await {
            Ok(Some(identity)) => identity,
            Ok(None) => return Err(required("the proxy token is not valid")),
            Err(error) => {
                return Err(Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot authenticate the caller now: {error}"),
                ));
            }
        };
        let namespace = identity.service_account().map(|(ns, _)| ns.to_owned());
        let list = percent_encoding::percent_decode_str(&username).decode_utf8_lossy();
        let keys = if list.trim().is_empty() {
            // No list: every connector of the caller's own namespace.
            self.namespace_connectors(namespace.as_deref().unwrap_or_default())
        } else {
            parse_connector_list(&list, namespace.as_deref().unwrap_or_default())
                .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("the proxy username: {e}")))?
        };
        Ok((identity, keys))
    }

    /// Every connector of `namespace`.
    fn namespace_connectors(&self, namespace: &str) -> Vec<ConnectorKey> {
        self.connectors
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
    ) -> Result<Plan, Refusal> {
        let mut denied = Vec::new();
        for key in keys {
            let Some(connector) = self.connectors.connector(key) else {
                continue;
            };
            if !serves_host(
                &connector.spec.address,
                &connector.spec.address_extensions,
                host,
                port,
                scheme,
            ) {
                continue;
            }
            match self.authorizer.authorize(identity, key).await {
                Ok(Decision::Allow) => return Ok(Plan::Intercept(key.clone())),
                Ok(Decision::Deny) => denied.push(key.to_string()),
                Err(error) => {
                    return Err(Refusal::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("cannot authorize the caller now: {error}"),
                    ));
                }
            }
        }
        if !denied.is_empty() {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!("{} may not use connector {}", identity.username, denied.join(", ")),
            ));
        }
        if scheme == "https" && self.options.tunnel_hosts.iter().any(|t| t.matches(host, port)) {
            return self.checked_addresses(host, port).await.map(Plan::Tunnel);
        }
        Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!("{host}:{port} is not the registry of a connector the caller named, nor an allowed tunnel host"),
        ))
    }

    /// Resolves once; every answer must be an address tunnels may reach.
    async fn checked_addresses(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refusal> {
        let addresses = self
            .options
            .pins
            .resolve(host, port)
            .await
            .map_err(|e| Refusal::new(StatusCode::BAD_GATEWAY, format!("cannot resolve {host}: {e}")))?;
        if addresses.is_empty() {
            return Err(Refusal::new(StatusCode::BAD_GATEWAY, format!("{host} has no address")));
        }
        if !self.options.tunnel_to_private_addresses
            && let Some(forbidden) = addresses.iter().find(|a| is_forbidden_tunnel_address(a.ip()))
        {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!("{host} resolves to {}, which tunnels may not reach", forbidden.ip()),
            ));
        }
        Ok(addresses)
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

/// Whether a connector at `address` (or one of its extensions) is the
/// registry at `host:port` over `scheme`.
fn serves_host(address: &str, extensions: &[connector::crd::NamedValue], host: &str, port: u16, scheme: &str) -> bool {
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
    RegistryAddress::parse(address).is_ok_and(|a| matches(a.url()))
        || extensions
            .iter()
            .filter_map(|e| RegistryAddress::parse(&e.value).ok())
            .any(|a| matches(a.url()))
}

/// Loopback, link-local (which holds most clouds' metadata services),
/// unspecified, multicast and the known metadata addresses outside those.
pub fn is_forbidden_tunnel_address(ip: IpAddr) -> bool {
    const ALIBABA_METADATA: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);
    const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4 == ALIBABA_METADATA
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_forbidden_tunnel_address(IpAddr::V4(v4));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == AWS_METADATA_V6
        }
    }
}

/// Relays bytes both ways between the client and the first address that
/// answers.
async fn tunnel(mut client: TokioIo<hyper::upgrade::Upgraded>, addresses: &[SocketAddr], peer: SocketAddr) {
    let mut last_error = None;
    for address in addresses {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
            Ok(Ok(mut upstream)) => {
                let _ = upstream.set_nodelay(true);
                if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    tracing::debug!(%peer, %address, %error, "tunnel ended with an error");
                }
                return;
            }
            Ok(Err(error)) => last_error = Some(error.to_string()),
            Err(_) => last_error = Some("connect timed out".to_owned()),
        }
    }
    tracing::info!(%peer, error = last_error.unwrap_or_default(), "tunnel could not connect");
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
    // NB: hyper-util's GracefulShutdown cannot watch connections with
    // upgrades; a watch channel tells each one to finish, a tracker counts them.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let tracker = tokio_util::task::TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    while let Some((stream, peer)) = crate::server::accept(&listener, shutdown.as_mut()).await {
        let (proxy, service_limits) = (proxy.clone(), limits.clone());
        let service = service_fn(move |request: Request<Incoming>| {
            let (proxy, limits) = (proxy.clone(), service_limits.clone());
            async move { Ok::<_, std::convert::Infallible>(proxy.handle(request, peer, limits).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut stopped = stopped.clone();
        tracker.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stopping(&mut stopped) => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, error = %error, "forward connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    tracker.close();
    if tokio::time::timeout(limits.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over; closing remaining forward connections");
    }
    Ok(())
}

async fn stopping(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

fn empty() -> ProxyBody {
    Full::new(Bytes::new()).map_err(|never| match never {}).boxed()
}

fn refusal_response(refusal: &Refusal) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(format!("{}\n", refusal.message)))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = refusal.status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if refusal.status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        response.headers_mut().insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="connectors""#),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_hosts_match_exact_names_and_suffixes() {
        let cdn: TunnelHost = "*.cdn.example.com".parse().unwrap();
        assert!(cdn.matches("blobs.cdn.example.com", 443));
        assert!(!cdn.matches("cdn.example.com", 443));
        assert!(!cdn.matches("evilcdn.example.com", 443));
        let one: TunnelHost = "Objects.Example.com:443".parse().unwrap();
        assert!(one.matches("objects.example.com", 443));
        assert!(!one.matches("objects.example.com", 8443));
        for bad in ["", "*.", "a/b", "h:port"] {
            assert!(bad.parse::<TunnelHost>().is_err(), "{bad}");
        }
    }

    #[test]
    fn metadata_loopback_and_link_local_addresses_are_forbidden() {
        for forbidden in [
            "127.0.0.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "224.0.0.1",
        ] {
            assert!(is_forbidden_tunnel_address(forbidden.parse().unwrap()), "{forbidden}");
        }
        for allowed in ["10.0.0.5", "140.82.112.3", "2606:4700::1111"] {
            assert!(!is_forbidden_tunnel_address(allowed.parse().unwrap()), "{allowed}");
        }
    }

    #[test]
    fn connector_hosts_match_by_scheme_host_and_port() {
        let extensions = vec![connector::crd::NamedValue {
            name: "realm".into(),
            value: "https://auth.example.com".into(),
        }];
        assert!(serves_host(
            "https://Registry.Test:5000",
            &[],
            "registry.test",
            5000,
            "https"
        ));
        assert!(!serves_host(
            "https://registry.test:5000",
            &[],
            "registry.test",
            443,
            "https"
        ));
        assert!(!serves_host(
            "http://registry.test:5000",
            &[],
            "registry.test",
            5000,
            "https"
        ));
        assert!(serves_host(
            "harbor.example.com",
            &[],
            "harbor.example.com",
            443,
            "https"
        ));
        assert!(serves_host(
            "harbor.example.com",
            &extensions,
            "auth.example.com",
            443,
            "https"
        ));
        assert!(serves_host("http://[::1]:5000", &[], "::1", 5000, "http"));
    }
}
