//! The egress policy: the one check every address the proxy and the
//! controller dial passes first (connector addresses and their extensions,
//! token realms, blob-redirect targets, forward-mode tunnels).
//!
//! A connector is written by anyone who may edit its namespace, and its
//! registry decides where redirects and token realms point. Without a
//! policy, a Connector (or a registry it names) could make the proxy fetch
//! from a cloud metadata service or an in-cluster Service and stream the
//! answer back, past the NetworkPolicies of the caller's namespace. So by
//! default the proxy never dials loopback, link-local (metadata services),
//! unspecified, multicast, private (RFC 1918, unique-local IPv6) or shared
//! (RFC 6598) addresses; an admin allows networks or hosts for private and
//! in-cluster registries (`--egress-allow`).
//!
//! Names are resolved once and only the addresses that passed are dialed,
//! so a name cannot answer differently between the check and the dial.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use crate::resolve::Pins;

/// One `--egress-allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressAllow {
    /// A network in CIDR form (`10.0.0.0/8`), or one address.
    Network { addr: IpAddr, prefix: u8 },
    /// A host name, exactly (lowercase).
    Host(String),
    /// Every name under a domain (`*.svc.cluster.local`).
    Domain(String),
}

/// Why an `--egress-allow` entry was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid egress allow entry {0:?}: expected CIDR (10.0.0.0/8), an address, a host name or *.domain")]
pub struct EgressAllowError(String);

impl FromStr for EgressAllow {
    type Err = EgressAllowError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let error = || EgressAllowError(entry.to_owned());
        let entry = entry.trim();
        if let Some((addr, prefix)) = entry.split_once('/') {
            let addr: IpAddr = addr.trim_matches(['[', ']']).parse().map_err(|_| error())?;
            let prefix: u8 = prefix.parse().map_err(|_| error())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if prefix > max {
                return Err(error());
            }
            return Ok(Self::Network { addr, prefix });
        }
        if let Ok(addr) = entry.trim_matches(['[', ']']).parse::<IpAddr>() {
            let prefix = if addr.is_ipv4() { 32 } else { 128 };
            return Ok(Self::Network { addr, prefix });
        }
        let (domain, name) = match entry.strip_prefix("*.") {
            Some(domain) => (true, domain),
            None => (false, entry),
        };
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .split('.')
                .all(|label| !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !valid {
            return Err(error());
        }
        let name = name.to_ascii_lowercase();
        Ok(if domain { Self::Domain(name) } else { Self::Host(name) })
    }
}

impl fmt::Display for EgressAllow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Network { addr, prefix } => write!(f, "{addr}/{prefix}"),
            Self::Host(host) => f.write_str(host),
            Self::Domain(domain) => write!(f, "*.{domain}"),
        }
    }
}

impl EgressAllow {
    fn allows_host(&self, host: &str) -> bool {
        match self {
            Self::Host(allowed) => host == allowed,
            Self::Domain(domain) => {
                host.len() > domain.len() + 1 && host.ends_with(domain.as_str()) && {
                    host.as_bytes()[host.len() - domain.len() - 1] == b'.'
                }
            }
            Self::Network { .. } => false,
        }
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        let Self::Network { addr, prefix } = self else {
            return false;
        };
        match (addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*prefix)).unwrap_or(0);
                u32::from(*net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*prefix)).unwrap_or(0);
                u128::from(*net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A dial the policy refused. Names the host, the address and its range,
/// never anything the host answered.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("egress to {host} ({ip}) is refused: {range} addresses are not dialed unless allowed with --egress-allow")]
pub struct EgressRefused {
    pub host: String,
    pub ip: IpAddr,
    pub range: &'static str,
}

/// Why a name could not be dialed.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error(transparent)]
    Refused(#[from] EgressRefused),
    #[error("cannot resolve {host}: {error}")]
    Resolve { host: String, error: std::io::Error },
    #[error("{0} has no address")]
    NoAddress(String),
}

/// The ranges dialed only when allowed, by name; None for an address on
/// the public internet.
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => special_v4(v4),
            None => special_v6(v6),
        },
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(if ip.is_loopback() {
        "loopback"
    } else if ip.is_link_local() {
        "link-local (metadata service)"
    } else if a == 0 {
        "unspecified"
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        "multicast or reserved"
    } else if ip.is_private() {
        "private (RFC 1918)"
    } else if a == 100 && (64..128).contains(&b) {
        // NB: 100.100.100.200 (Alibaba Cloud's metadata service) is here.
        "shared (RFC 6598)"
    } else {
        return None;
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() {
        "unspecified"
    } else if ip.is_multicast() {
        "multicast or reserved"
    } else if first & 0xffc0 == 0xfe80 {
        "link-local (metadata service)"
    } else if first & 0xfe00 == 0xfc00 {
        // NB: fd00:ec2::254 (AWS's IPv6 metadata service) is here.
        "unique local (RFC 4193)"
    } else {
        return None;
    })
}

/// The hosts and networks that may be dialed besides the public internet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allowed: Vec<EgressAllow>,
}

impl EgressPolicy {
    /// The default policy plus `allowed`.
    pub fn new(allowed: impl IntoIterator<Item = EgressAllow>) -> Self {
        Self {
            allowed: allowed.into_iter().collect(),
        }
    }

    /// The entries, as the flag would list them.
    pub fn allowed(&self) -> &[EgressAllow] {
        &self.allowed
    }

    /// Whether `ip`, an answer for `host`, may be dialed.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), EgressRefused> {
        let host = bare_host(host);
        let Some(range) = special_range(ip) else {
            return Ok(());
        };
        if self.allowed.iter().any(|a| a.allows_host(&host) || a.allows_ip(ip)) {
            return Ok(());
        }
        Err(EgressRefused { host, ip, range })
    }

    /// Resolves `host:port` once (pins first) and keeps the addresses that
    /// may be dialed; refused when none may.
    pub async fn resolve(&self, pins: &Pins, host: &str, port: u16) -> Result<Vec<SocketAddr>, EgressError> {
        let answers = pins.resolve(host, port).await.map_err(|error| EgressError::Resolve {
            host: bare_host(host),
            error,
        })?;
        let mut refused = None;
        let mut allowed = Vec::with_capacity(answers.len());
        for answer in answers {
            match self.check(host, answer.ip()) {
                Ok(()) => allowed.push(answer),
                Err(error) => {
                    refused.get_or_insert(error);
                }
            }
        }
        match (allowed.is_empty(), refused) {
            (false, _) => Ok(allowed),
            (true, Some(refused)) => Err(refused.into()),
            (true, None) => Err(EgressError::NoAddress(bare_host(host))),
        }
    }
}

fn bare_host(host: &str) -> String {
    host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> EgressPolicy {
        EgressPolicy::new(entries.iter().map(|e| e.parse::<EgressAllow>().unwrap()))
    }

    #[test]
    fn special_ranges_are_refused_by_default_and_the_internet_is_not() {
        let default = EgressPolicy::default();
        for refused in [
            "127.0.0.1",
            "169.254.169.254",
            "100.100.100.200",
            "100.64.0.1",
            "0.0.0.0",
            "10.96.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "ff02::1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = refused.parse().unwrap();
            let error = default.check("registry.example.com", ip).unwrap_err();
            assert!(error.to_string().contains("--egress-allow"), "{error}");
        }
        for allowed in [
            "140.82.112.3",
            "8.8.8.8",
            "100.128.0.1",
            "2606:4700::1111",
            "172.32.0.1",
        ] {
            assert!(default.check("h", allowed.parse().unwrap()).is_ok(), "{allowed}");
        }
    }

    #[test]
    fn admins_allow_networks_hosts_and_domains() {
        let policy = policy(&[
            "10.0.0.0/8",
            "127.0.0.1",
            "registry.internal",
            "*.svc.cluster.local",
            "fd00::/8",
        ]);
        assert!(policy.check("x", "10.1.2.3".parse().unwrap()).is_ok());
        assert!(policy.check("x", "127.0.0.1".parse().unwrap()).is_ok());
        assert!(policy.check("x", "127.0.0.2".parse().unwrap()).is_err());
        assert!(
            policy
                .check("Registry.Internal", "192.168.0.9".parse().unwrap())
                .is_ok()
        );
        assert!(
            policy
                .check("harbor.ns.svc.cluster.local", "172.20.0.1".parse().unwrap())
                .is_ok()
        );
        assert!(
            policy
                .check("svc.cluster.local", "172.20.0.1".parse().unwrap())
                .is_err()
        );
        assert!(
            policy
                .check("evilsvc.cluster.local", "172.20.0.1".parse().unwrap())
                .is_err()
        );
        assert!(policy.check("x", "fd12::1".parse().unwrap()).is_ok());
        assert!(policy.check("x", "169.254.169.254".parse().unwrap()).is_err());
    }

    #[test]
    fn allow_entries_parse_and_print_back() {
        for entry in [
            "10.0.0.0/8",
            "127.0.0.1/32",
            "::1/128",
            "fd00::/8",
            "registry.internal",
            "*.example.com",
        ] {
            let parsed: EgressAllow = entry.parse().unwrap();
            assert_eq!(parsed.to_string(), entry);
        }
        assert_eq!("127.0.0.1".parse::<EgressAllow>().unwrap().to_string(), "127.0.0.1/32");
        for bad in ["", "10.0.0.0/33", "::/129", "a b", "*.", "host:80", "a..b", "x/8"] {
            assert!(bad.parse::<EgressAllow>().is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn names_resolve_to_the_addresses_that_may_be_dialed() {
        let pins = Pins::new(["metadata.test:80:169.254.169.254".parse().unwrap()]);
        let default = EgressPolicy::default();
        let refused = default.resolve(&pins, "metadata.test", 80).await.unwrap_err();
        assert!(
            matches!(refused, EgressError::Refused(ref r) if r.range.starts_with("link-local")),
            "{refused}"
        );
        let literal = default.resolve(&pins, "[::1]", 5000).await.unwrap_err();
        assert!(matches!(literal, EgressError::Refused(_)), "{literal}");
        let allowed = policy(&["169.254.169.254"])
            .resolve(&pins, "metadata.test", 80)
            .await
            .unwrap();
        assert_eq!(allowed, vec!["169.254.169.254:80".parse::<SocketAddr>().unwrap()]);
    }
}
