//! The injection contract: what a selected pod gets (proxy URLs, the
//! environment, where the configuration volume and the CA are mounted), for
//! the connectors the store resolved (`crate::store::ResolvedConnector`). The webhook writes it into
//! pod specs and the CSI driver into the volume's `.env`, from this one
//! place, so the two can never disagree.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::ConnectorKey;
use crate::keys;
use crate::selection::format_connector_list;

/// Everything the mutation needs besides the pod: where the proxy is and
/// what the cluster looks like. Built once at start-up.
#[derive(Debug, Clone)]
pub struct InjectionConfig {
    /// The namespace the product runs in; its pods are never mutated.
    pub install_namespace: String,
    /// `host[:port]` of the reverse proxy as nodes reach it; rewritten images
    /// start with it. The node pull endpoint's loopback address by default.
    pub pull_address: String,
    /// `host[:port]` of the reverse proxy's HTTPS as pods reach it: the
    /// volume's `config.json` and `buildkitd.toml` name it. The pull address
    /// unless set apart (a node's loopback is nothing inside a pod).
    pub proxy_address: String,
    /// `host:port` of the forward proxy (HTTP CONNECT) as pods reach it.
    pub forward_proxy: String,
    /// The `NO_PROXY` entries, in order.
    pub no_proxy: Vec<String>,
    /// Where the CSI volume with client configuration is mounted.
    pub config_mount_path: String,
    /// Where the proxy CA (downwardAPI volume) is mounted.
    pub ca_mount_path: String,
    /// The proxy CA certificate(s) in PEM; `None` leaves trust to the CSI
    /// volume alone.
    pub proxy_ca_pem: Option<String>,
}

impl InjectionConfig {
    /// The defaults of an install in `connectors-system` with cluster domain
    /// `cluster.local`.
    pub fn new(pull_address: impl Into<String>, forward_proxy: impl Into<String>) -> Self {
        let pull_address = pull_address.into();
        Self {
            install_namespace: keys::DEFAULT_INSTALL_NAMESPACE.to_owned(),
            proxy_address: pull_address.clone(),
            pull_address,
            forward_proxy: forward_proxy.into(),
            no_proxy: default_no_proxy("cluster.local", None, &[]),
            config_mount_path: "/var/run/connectors".to_owned(),
            ca_mount_path: "/var/run/connectors-ca".to_owned(),
            proxy_ca_pem: None,
        }
    }
}

/// The `NO_PROXY` list: loopback, the cluster's service and pod domains, the
/// API server and the given CIDRs. Both domain and CIDR forms are listed
/// because clients disagree on which they honour.
pub fn default_no_proxy(cluster_domain: &str, api_server: Option<&str>, cidrs: &[String]) -> Vec<String> {
    let domain = cluster_domain.trim_matches('.');
    let mut entries: Vec<String> = vec![
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
        "kubernetes.default.svc".into(),
        ".svc".into(),
        format!(".svc.{domain}"),
        format!(".{domain}"),
    ];
    entries.extend(api_server.map(str::to_owned));
    // NB: hosts on private addresses (company services, in-cluster IPs)
    // keep going direct as before injection; names always go through the
    // proxy, which is how a connector's registry is reached.
    entries.extend(PRIVATE_RANGES.iter().map(|range| (*range).to_owned()));
    entries.extend(cidrs.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    entries.retain(|e| !e.is_empty() && seen.insert(e.clone()));
    entries
}

/// Longest Service name (an RFC 1035 label).
const MAX_SERVICE_NAME: usize = 63;

/// The name of connector `name`'s own Service, `c-<name>`, when that is a
/// valid Service name (an RFC 1035 label: connector names may hold dots);
/// otherwise the invalid name, for messages.
pub fn service_name(name: &str) -> Result<String, String> {
    let service = format!("c-{name}");
    let valid = service.len() <= MAX_SERVICE_NAME
        && service
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !service.ends_with('-');
    if valid { Ok(service) } else { Err(service) }
}

/// The host pods reach a connector's Service at:
/// `c-<name>.<namespace>.svc.<domain>`.
pub fn service_host(service: &str, namespace: &str, cluster_domain: &str) -> String {
    format!("{service}.{namespace}.svc.{}", cluster_domain.trim_matches('.'))
}

/// The private address ranges (RFC 1918 and IPv6 unique local) every
/// default `NO_PROXY` lists.
pub const PRIVATE_RANGES: [&str; 4] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"];

/// The `NO_PROXY` value: the configured entries and, unless one of them
/// already covers it, the hosts of the proxy address and the pull address,
/// so that clients reach the reverse proxy directly rather than through the
/// forward proxy (an IP address, as in a cluster without DNS for Services,
/// matches no domain entry).
fn no_proxy_with_proxy_addresses(config: &InjectionConfig, connector_hosts: &[&str]) -> String {
    // A connector whose registry is an address in a listed range must still
    // be reached through the proxy: that range is left out.
    let connector_ips: Vec<std::net::IpAddr> = connector_hosts
        .iter()
        .filter_map(|host| address_host(host).parse().ok())
        .collect();
    let mut entries: Vec<String> = config
        .no_proxy
        .iter()
        .filter(|entry| !connector_ips.iter().any(|ip| cidr_contains(entry, *ip)))
        .cloned()
        .collect();
    for address in [&config.proxy_address, &config.pull_address] {
        let host = address_host(address);
        let covered = host.is_empty()
            || config.no_proxy.iter().chain(&entries).any(|entry| {
                entry.eq_ignore_ascii_case(host)
                    || (entry.starts_with('.') && host.to_ascii_lowercase().ends_with(&entry.to_ascii_lowercase()))
            });
        if !covered {
            entries.push(host.to_owned());
        }
    }
    entries.join(",")
}

/// Whether `entry`, when it is a CIDR or an address, covers `ip`.
fn cidr_contains(entry: &str, ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let (network, bits) = match entry.split_once('/') {
        Some((network, bits)) => (network, bits.parse::<u32>().ok()),
        None => (entry, None),
    };
    let Ok(network) = network.parse::<IpAddr>() else {
        return false;
    };
    match (network, ip) {
        (IpAddr::V4(network), IpAddr::V4(ip)) => {
            let bits = bits.unwrap_or(32).min(32);
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
            u32::from(network) & mask == u32::from(ip) & mask
        }
        (IpAddr::V6(network), IpAddr::V6(ip)) => {
            let bits = bits.unwrap_or(128).min(128);
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
            u128::from(network) & mask == u128::from(ip) & mask
        }
        _ => false,
    }
}

/// The host of `host[:port]` (IPv6 literals without their brackets).
fn address_host(address: &str) -> &str {
    let (host, _) = crate::reference::split_host_port(address);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Characters escaped in the user part of the proxy URL: all but the
/// unreserved set and the `,` separating connectors.
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b',');

/// The forward proxy URL carrying the connector list as its user name, e.g.
/// `http://team%2Fharbor@connectors-proxy.connectors-system.svc:3128`.
pub fn forward_proxy_url(forward_proxy: &str, connectors: &[ConnectorKey]) -> String {
    let user = utf8_percent_encode(&format_connector_list(connectors), USERINFO).to_string();
    format!("http://{user}@{forward_proxy}")
}

/// As [`forward_proxy_url`], with the caller's token as the password (both
/// percent-encoded), e.g. `http://team%2Fharbor:<token>@host:3128`: what the
/// CSI volume hands a pod that should authenticate by token.
pub fn forward_proxy_url_with_password(forward_proxy: &str, connectors: &[ConnectorKey], password: &str) -> String {
    let connectors = format_connector_list(connectors);
    let user = utf8_percent_encode(&connectors, USERINFO);
    let password = utf8_percent_encode(password, USERINFO);
    format!("http://{user}:{password}@{forward_proxy}")
}

/// The environment every selected container gets, in order: the proxy
/// variables (when `proxy_url` is given; hostNetwork pods get none), the
/// trust bundle variables and the registry auth file variables, all pointing
/// into the configuration volume. The CSI driver writes the same list into
/// the volume's `.env`.
pub fn container_env(
    config: &InjectionConfig,
    proxy_url: Option<&str>,
    connector_hosts: &[&str],
) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> = Vec::new();
    if let Some(proxy) = proxy_url {
        let no_proxy = no_proxy_with_proxy_addresses(config, connector_hosts);
        env.extend([
            ("HTTP_PROXY", proxy.to_owned()),
            ("http_proxy", proxy.to_owned()),
            ("HTTPS_PROXY", proxy.to_owned()),
            ("https_proxy", proxy.to_owned()),
            ("NO_PROXY", no_proxy.clone()),
            ("no_proxy", no_proxy),
        ]);
    }
    let bundle = format!("{}/{}", config.config_mount_path, keys::CSI_FILE_CA_BUNDLE);
    let extra_ca = if config.proxy_ca_pem.is_some() {
        format!("{}/{}", config.ca_mount_path, keys::CSI_FILE_CA)
    } else {
        format!("{}/{}", config.config_mount_path, keys::CSI_FILE_CA)
    };
    env.extend([
        ("SSL_CERT_FILE", bundle.clone()),
        ("REQUESTS_CA_BUNDLE", bundle),
        ("NODE_EXTRA_CA_CERTS", extra_ca),
        ("DOCKER_CONFIG", config.config_mount_path.clone()),
        (
            "REGISTRY_AUTH_FILE",
            format!("{}/{}", config.config_mount_path, keys::CSI_FILE_DOCKER_CONFIG),
        ),
    ]);
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_proxy_of(pull_address: &str) -> String {
        let config = InjectionConfig::new(pull_address, "proxy:3128");
        container_env(&config, Some("http://proxy:3128"), &[])
            .into_iter()
            .find(|(name, _)| *name == "NO_PROXY")
            .unwrap()
            .1
    }

    #[test]
    fn no_proxy_reaches_an_ip_pull_address_directly() {
        let domains = default_no_proxy("cluster.local", None, &[]).join(",");
        assert_eq!(no_proxy_of("10.96.100.100"), format!("{domains},10.96.100.100"));
        assert_eq!(no_proxy_of("10.96.100.100:8443"), format!("{domains},10.96.100.100"));
        assert_eq!(no_proxy_of("[fd00::10]:443"), format!("{domains},fd00::10"));
        assert_eq!(
            no_proxy_of("registry-proxy.example"),
            format!("{domains},registry-proxy.example")
        );
    }

    #[test]
    fn no_proxy_lists_a_service_pull_address_once() {
        let domains = default_no_proxy("cluster.local", None, &[]).join(",");
        assert_eq!(no_proxy_of("connectors-proxy.connectors-system.svc"), domains);
        assert_eq!(
            no_proxy_of("connectors-proxy.connectors-system.svc.cluster.local:443"),
            domains
        );
        assert_eq!(no_proxy_of("localhost:5000"), domains);
    }

    #[test]
    fn no_proxy_names_the_proxy_address_pods_use_beside_a_loopback_pull_address() {
        let domains = default_no_proxy("cluster.local", None, &[]).join(",");
        let mut config = InjectionConfig::new("127.0.0.1:7480", "proxy:3128");
        config.proxy_address = "10.96.100.100".into();
        let env = container_env(&config, Some("http://proxy:3128"), &[]);
        let no_proxy = &env.iter().find(|(name, _)| *name == "NO_PROXY").unwrap().1;
        assert_eq!(no_proxy, &format!("{domains},10.96.100.100"));
    }
}

#[cfg(test)]
mod private_range_tests {
    use super::*;

    fn no_proxy(connector_hosts: &[&str]) -> Vec<String> {
        let config = InjectionConfig::new("connectors-proxy.connectors-system.svc", "proxy:3128");
        let env = container_env(&config, Some("http://proxy:3128"), connector_hosts);
        let value = &env.iter().find(|(name, _)| *name == "NO_PROXY").unwrap().1;
        value.split(',').map(str::to_owned).collect()
    }

    #[test]
    fn private_ranges_go_direct_unless_a_connector_lives_there() {
        let all = no_proxy(&["harbor.example.com", "registry-1.docker.io"]);
        for range in PRIVATE_RANGES {
            assert!(all.iter().any(|e| e == range), "{range}: {all:?}");
        }
        let without = no_proxy(&["10.20.30.40:5000", "[fd12::1]:443", "harbor.example.com"]);
        assert!(!without.iter().any(|e| e == "10.0.0.0/8"), "{without:?}");
        assert!(!without.iter().any(|e| e == "fc00::/7"), "{without:?}");
        assert!(without.iter().any(|e| e == "192.168.0.0/16"), "{without:?}");
        assert!(cidr_contains("172.16.0.0/12", "172.31.255.1".parse().unwrap()));
        assert!(!cidr_contains("172.16.0.0/12", "172.32.0.1".parse().unwrap()));
        assert!(cidr_contains("10.1.2.3", "10.1.2.3".parse().unwrap()));
        assert!(!cidr_contains(".svc", "10.1.2.3".parse().unwrap()));
    }
}
