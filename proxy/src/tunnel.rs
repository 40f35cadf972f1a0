//! Blind tunnels of forward mode: which non-connector hosts may get one
//! (`--forward-tunnel-host`), which addresses a tunnel may never reach
//! (loopback, link-local and metadata services, unless allowed), and the
//! byte relay itself. A tunnel never carries a credential.

use std::net::SocketAddr;

use hyper_util::rt::TokioIo;
use registry::egress::EgressPolicy;
use registry::resolve::Pins;
use registry::upstream::CONNECT_TIMEOUT;
use tokio::net::TcpStream;

use crate::error::ProxyError;
use registry::body::ProxyBody;

/// Which non-connector HTTPS destinations forward mode tunnels blindly
/// (no interception, no credential).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tunnels {
    /// Any destination the egress policy allows (public addresses, and what
    /// `--egress-allow` lists), so that unchanged workloads keep their
    /// egress once `HTTPS_PROXY` is injected.
    Allowed,
    /// Only the `--forward-tunnel-host` hosts (their addresses still
    /// checked by the egress policy).
    #[default]
    Listed,
    /// None: forward mode serves connector hosts only.
    Off,
}

/// Why a `--forward-tunnels` value was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid tunnel setting {0:?}: expected allowed, listed or off")]
pub struct TunnelsError(String);

impl std::str::FromStr for Tunnels {
    type Err = TunnelsError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "allowed" => Ok(Tunnels::Allowed),
            "listed" => Ok(Tunnels::Listed),
            "off" => Ok(Tunnels::Off),
            other => Err(TunnelsError(other.to_owned())),
        }
    }
}

impl Tunnels {
    /// Whether a CONNECT to a non-connector `host`:`port` gets a tunnel
    /// (before the egress policy checks its addresses).
    pub fn admits(self, listed: &[TunnelHost], host: &str, port: u16) -> bool {
        match self {
            Tunnels::Allowed => true,
            Tunnels::Listed => listed.iter().any(|t| t.matches(host, port)),
            Tunnels::Off => false,
        }
    }
}

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

/// Resolves `host` once; only the answers the egress policy allows are
/// dialed (every answer, when `ignore_policy`: the deprecated
/// `--forward-tunnel-to-private-addresses`).
pub async fn checked_addresses(
    pins: &Pins,
    egress: &EgressPolicy,
    host: &str,
    port: u16,
    ignore_policy: bool,
) -> Result<Vec<SocketAddr>, ProxyError> {
    let policy = if ignore_policy {
        &EgressPolicy::new([
            "0.0.0.0/0".parse().expect("a network"),
            "::/0".parse().expect("a network"),
        ])
    } else {
        egress
    };
    policy.resolve(pins, host, port).await.map_err(ProxyError::from)
}

/// Relays bytes both ways between the client and the first address that
/// answers.
pub async fn tunnel(mut client: TokioIo<hyper::upgrade::Upgraded>, addresses: &[SocketAddr], peer: SocketAddr) {
    match connect_first(addresses).await {
        Ok((mut upstream, address)) => {
            if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(%peer, %address, %error, "tunnel ended with an error");
            }
        }
        Err(error) => tracing::info!(%peer, %error, "tunnel could not connect"),
    }
}

/// A connection to the first of `addresses` that answers (each within
/// [`CONNECT_TIMEOUT`]), with `TCP_NODELAY`; else the last error.
async fn connect_first(addresses: &[SocketAddr]) -> Result<(TcpStream, SocketAddr), String> {
    let mut last_error = String::from("no address");
    for &address in addresses {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok((stream, address));
            }
            Ok(Err(error)) => last_error = error.to_string(),
            Err(_) => last_error = "connect timed out".to_owned(),
        }
    }
    Err(last_error)
}

/// How long a relayed plain-HTTP host may take to answer with headers.
const PLAIN_RESPONSE_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Relays one absolute-form `http://` request to a host of no connector at
/// one of its checked `addresses`, as the client sent it but for the
/// proxy's own headers: origin-form target, `Host` kept, hop-by-hop and
/// `Proxy-Authorization` dropped. No credential of ours is added; both
/// bodies stream.
pub async fn relay_plain(
    request: hyper::Request<hyper::body::Incoming>,
    host: &str,
    port: u16,
    addresses: &[SocketAddr],
) -> Result<hyper::Response<ProxyBody>, ProxyError> {
    use http_body_util::BodyExt as _;
    let unrelayable = |reason: String| ProxyError::Unrelayable {
        host: host.to_owned(),
        port,
        reason,
    };
    let (mut parts, body) = request.into_parts();
    let authority = parts.uri.authority().map(|a| a.as_str().to_owned());
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|_| ProxyError::BadRequest("the URL has no usable path"))?;
    // NB: Proxy-Authorization is one of them.
    drop_hop_by_hop(&mut parts.headers);
    if !parts.headers.contains_key(hyper::header::HOST)
        && let Some(value) = authority.and_then(|a| hyper::header::HeaderValue::from_str(&a).ok())
    {
        parts.headers.insert(hyper::header::HOST, value);
    }
    let (stream, _) = connect_first(addresses).await.map_err(unrelayable)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unrelayable(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "relayed plain-HTTP connection ended with an error");
        }
    });
    let sent = tokio::time::timeout(
        PLAIN_RESPONSE_HEADER_TIMEOUT,
        sender.send_request(hyper::Request::from_parts(parts, body)),
    )
    .await
    .map_err(|_| unrelayable("no response headers in time".to_owned()))?
    .map_err(|e| unrelayable(e.to_string()))?;
    let (mut parts, body) = sent.into_parts();
    drop_hop_by_hop(&mut parts.headers);
    Ok(hyper::Response::from_parts(parts, body.map_err(Into::into).boxed()))
}

/// Removes the hop-by-hop headers (RFC 9110 §7.6.1) and those `Connection`
/// names.
fn drop_hop_by_hop(headers: &mut hyper::HeaderMap) {
    for name in crate::headers::hop_by_hop(headers) {
        headers.remove(name);
    }
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
    fn the_tunnel_switch_admits_all_listed_or_none() {
        let listed: Vec<TunnelHost> = vec!["*.cdn.example.com".parse().unwrap()];
        for (tunnels, host, admitted) in [
            (Tunnels::Allowed, "api.github.com", true),
            (Tunnels::Allowed, "a.cdn.example.com", true),
            (Tunnels::Listed, "api.github.com", false),
            (Tunnels::Listed, "a.cdn.example.com", true),
            (Tunnels::Off, "a.cdn.example.com", false),
        ] {
            assert_eq!(tunnels.admits(&listed, host, 443), admitted, "{tunnels:?} {host}");
        }
    }

    #[tokio::test]
    async fn tunnels_dial_only_what_the_egress_policy_allows() {
        let pins = Pins::new(["metadata.test:443:169.254.169.254".parse().unwrap()]);
        let default = EgressPolicy::default();
        for (host, port) in [
            ("metadata.test", 443),
            ("127.0.0.1", 443),
            ("[fd00:ec2::254]", 443),
            ("10.0.0.5", 443),
        ] {
            let refused = checked_addresses(&pins, &default, host, port, false).await.unwrap_err();
            assert!(matches!(refused, ProxyError::Egress(_)), "{host}: {refused}");
        }
        let public = checked_addresses(&pins, &default, "140.82.112.3", 443, false)
            .await
            .unwrap();
        assert_eq!(public, vec!["140.82.112.3:443".parse::<SocketAddr>().unwrap()]);
        let ignored = checked_addresses(&pins, &default, "metadata.test", 443, true)
            .await
            .unwrap();
        assert_eq!(ignored, vec!["169.254.169.254:443".parse::<SocketAddr>().unwrap()]);
    }
}
