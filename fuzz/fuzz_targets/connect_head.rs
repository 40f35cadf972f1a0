//! The forward proxy's request head, piece by piece, on attacker input:
//! `Proxy-Authorization` (Basic credentials, the token, the connector list
//! in the username), the CONNECT and absolute-form targets, and
//! `--forward-tunnel-host` and `--egress-allow` entries. Never panics; Basic credentials
//! round-trip through base64; tokens are non-empty without control
//! characters; a parsed connector list is valid, deduplicated and
//! round-trips through its formatted form; targets are lowercase bare hosts.

#![no_main]

use std::net::IpAddr;

use base64::Engine;
use connector::selection::{format_connector_list, is_dns_label, is_dns_subdomain, parse_connector_list};
use hyper::Uri;
use libfuzzer_sys::fuzz_target;
use access::caller::{basic_credentials, token_from_authorization};
use proxy::forward::{absolute_target, connect_target};
use proxy::tunnel::TunnelHost;
use registry::egress::{EgressAllow, EgressPolicy, special_range};

fn check_target(target: Option<(String, u16)>, input: &str) {
    let Some((host, _port)) = target else { return };
    assert_eq!(host, host.to_ascii_lowercase(), "{input:?}");
    assert!(
        !host.starts_with('[') && !host.ends_with(']'),
        "{host:?} from {input:?}"
    );
    if let Ok(ip) = host.parse::<IpAddr>() {
        let _ = special_range(ip);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };

    if let Some((username, password)) = basic_credentials(input) {
        assert!(!username.contains(':'));
        let again = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
        );
        assert_eq!(basic_credentials(&again), Some((username.clone(), password.clone())));
        // What the forward proxy does with the username.
        let list = percent_encoding::percent_decode_str(&username).decode_utf8_lossy();
        let _ = parse_connector_list(&list, "team");
    }

    if let Some(token) = token_from_authorization(input) {
        assert!(!token.is_empty() && !token.chars().any(char::is_control), "{token:?}");
        let scheme = input
            .trim_matches([' ', '\t'])
            .split([' ', '\t'])
            .next()
            .unwrap_or_default();
        if scheme.eq_ignore_ascii_case("basic") {
            assert_eq!(basic_credentials(input).map(|(_, p)| p), Some(token));
        }
    }

    if let Ok(keys) = parse_connector_list(input, "team") {
        assert!(!keys.is_empty());
        for (i, key) in keys.iter().enumerate() {
            assert!(
                is_dns_label(&key.namespace) && is_dns_subdomain(&key.name),
                "{key} from {input:?}"
            );
            assert!(!keys[..i].contains(key), "{key} twice from {input:?}");
        }
        assert_eq!(
            parse_connector_list(&format_connector_list(&keys), "elsewhere").as_ref(),
            Ok(&keys)
        );
    }

    if let Ok(uri) = input.parse::<Uri>() {
        check_target(connect_target(&uri), input);
        check_target(absolute_target(&uri), input);
    }

    if let Ok(tunnel) = input.parse::<TunnelHost>() {
        let entry = input.to_ascii_lowercase();
        let (host, port) = match entry.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host.to_owned(), port.parse::<u16>().ok()),
            _ => (entry.clone(), None),
        };
        let port = port.unwrap_or(443);
        match host.strip_prefix("*.") {
            Some(suffix) => {
                assert!(tunnel.matches(&format!("a.{suffix}"), port), "{input:?}");
                assert!(!tunnel.matches(suffix, port), "{input:?} matches its bare suffix");
            }
            None => assert!(tunnel.matches(&host, port), "{input:?} does not match {host}:{port}"),
        }
    }

    // `--egress-allow` entries: whatever parses prints back to an entry
    // that parses to the same, and allows what it names.
    if let Ok(entry) = input.parse::<EgressAllow>() {
        let printed = entry.to_string();
        assert_eq!(printed.parse::<EgressAllow>().as_ref(), Ok(&entry), "{input:?}");
        let policy = EgressPolicy::new([entry.clone()]);
        match &entry {
            EgressAllow::Network { addr, .. } => assert!(policy.check("x", *addr).is_ok(), "{input:?}"),
            EgressAllow::Host(host) => assert!(policy.check(host, "10.0.0.1".parse().unwrap()).is_ok()),
            EgressAllow::Domain(domain) => {
                assert!(policy.check(&format!("a.{domain}"), "10.0.0.1".parse().unwrap()).is_ok());
                assert!(policy.check(domain, "10.0.0.1".parse().unwrap()).is_err());
            }
        }
    }
});
