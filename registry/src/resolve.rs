//! Name pinning as curl's `--resolve HOST:PORT:ADDR`: a host and port dialed
//! by the proxy go to a fixed address, for local use and tests. Everything
//! else resolves through the system.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// One `HOST:PORT:ADDR` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub host: String,
    pub port: u16,
    pub addr: IpAddr,
}

/// Why a `--resolve` entry was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid --resolve entry {entry:?}: expected HOST:PORT:ADDR, {reason}")]
pub struct PinError {
    entry: String,
    reason: &'static str,
}

impl FromStr for Pin {
    type Err = PinError;

    fn from_str(entry: &str) -> Result<Self, PinError> {
        let error = |reason| PinError {
            entry: entry.to_owned(),
            reason,
        };
        let (host, rest) = entry.split_once(':').ok_or_else(|| error("no port"))?;
        let (port, addr) = rest.split_once(':').ok_or_else(|| error("no address"))?;
        if host.is_empty() || host.contains(['/', '@', ' ']) {
            return Err(error("the host is not a name"));
        }
        let port = port.parse::<u16>().map_err(|_| error("the port is not a number"))?;
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        let addr = addr
            .parse::<IpAddr>()
            .map_err(|_| error("the address is not an IP address"))?;
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
            addr,
        })
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.host, self.port, self.addr)
    }
}

/// All pins, looked up by host and port.
#[derive(Debug, Clone, Default)]
pub struct Pins {
    by_host_port: HashMap<(String, u16), IpAddr>,
}

impl Pins {
    pub fn new(pins: impl IntoIterator<Item = Pin>) -> Self {
        Self {
            by_host_port: pins.into_iter().map(|p| ((p.host, p.port), p.addr)).collect(),
        }
    }

    /// The pinned address of `host:port`, if any.
    pub fn lookup(&self, host: &str, port: u16) -> Option<SocketAddr> {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        self.by_host_port
            .get(&(host, port))
            .map(|addr| SocketAddr::new(*addr, port))
    }

    /// Every address `host:port` resolves to: the pin, an IP literal, or the
    /// system resolver's answers.
    pub async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        if let Some(pinned) = self.lookup(host, port) {
            return Ok(vec![pinned]);
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        Ok(tokio::net::lookup_host((bare, port)).await?.collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_as_curl_writes_them() {
        let pin: Pin = "Registry.Test:5000:127.0.0.2".parse().unwrap();
        assert_eq!(pin.host, "registry.test");
        assert_eq!(pin.port, 5000);
        let v6: Pin = "lab.test:443:[::1]".parse().unwrap();
        assert_eq!(v6.addr, "::1".parse::<IpAddr>().unwrap());
        for bad in [
            "registry.test",
            "registry.test:5000",
            ":1:127.0.0.1",
            "h:x:127.0.0.1",
            "h:1:nowhere",
        ] {
            assert!(bad.parse::<Pin>().is_err(), "{bad}");
        }
        let pins = Pins::new([pin]);
        assert_eq!(
            pins.lookup("REGISTRY.test", 5000),
            Some("127.0.0.2:5000".parse().unwrap())
        );
        assert_eq!(pins.lookup("registry.test", 443), None);
    }
}
