//! Blind tunnels of forward mode: which non-connector hosts may get one
//! (`--forward-tunnel-host`), which addresses a tunnel may never reach
//! (loopback, link-local and metadata services, unless allowed), and the
//! byte relay itself. A tunnel never carries a credential.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hyper_util::rt::TokioIo;
use registry::resolve::Pins;
use registry::upstream::CONNECT_TIMEOUT;
use tokio::net::TcpStream;

use crate::error::ProxyError;

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

/// Resolves `host` once; every answer must be an address tunnels may
/// reach (unless `private_allowed`). The tunnel then dials only these.
pub async fn checked_addresses(
    pins: &Pins,
    host: &str,
    port: u16,
    private_allowed: bool,
) -> Result<Vec<SocketAddr>, ProxyError> {
    let addresses = pins.resolve(host, port).await.map_err(|error| ProxyError::Resolve {
        host: host.to_owned(),
        error,
    })?;
    if addresses.is_empty() {
        return Err(ProxyError::NoAddress(host.to_owned()));
    }
    if !private_allowed && let Some(forbidden) = addresses.iter().find(|a| is_forbidden_tunnel_address(a.ip())) {
        return Err(ProxyError::ForbiddenAddress {
            host: host.to_owned(),
            ip: forbidden.ip(),
        });
    }
    Ok(addresses)
}

/// Relays bytes both ways between the client and the first address that
/// answers.
pub async fn tunnel(mut client: TokioIo<hyper::upgrade::Upgraded>, addresses: &[SocketAddr], peer: SocketAddr) {
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
}
