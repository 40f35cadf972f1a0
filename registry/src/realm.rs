//! Token-realm validation: the check that runs before any credential is sent
//! to the token endpoint an upstream challenge names.
//!
//! A registry's `WWW-Authenticate` header decides where the proxy sends the
//! connector's credential, so a compromised or spoofed upstream could point
//! it anywhere (ggcr and Jib both leaked credentials this way). The realm must
//! therefore stay within the connector's trust boundary: its own host (any
//! port), its registrable domain, or a host the connector explicitly names.

use url::{Host, Url};

/// Why a token realm is refused. Messages name the realm host, never a URL
/// that could carry credentials.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RealmError {
    /// Relative, scheme-less or unparseable.
    #[error("the token realm is not an absolute URL")]
    NotAbsolute,
    /// Not http or https.
    #[error("the token realm on {host:?} uses scheme {scheme:?}; only http and https are allowed")]
    Scheme {
        /// The realm host (empty when it has none).
        host: String,
        /// The refused scheme.
        scheme: String,
    },
    /// `https://user:password@…`.
    #[error("the token realm on {host} carries userinfo")]
    Userinfo {
        /// The realm host.
        host: String,
    },
    /// A plain-http realm for an https registry.
    #[error("the token realm on {host} is plain http while the registry is https")]
    Downgrade {
        /// The realm host.
        host: String,
    },
    /// Outside the connector's trust boundary.
    #[error("the token realm host {host} is not trusted for registry {registry}: {why}")]
    Untrusted {
        /// The realm host.
        host: String,
        /// The connector's registry host.
        registry: String,
        /// Which rule refused it.
        why: &'static str,
    },
}

/// `Result` with [`RealmError`] as the default error.
pub type Result<T, E = RealmError> = std::result::Result<T, E>;

/// Checks a token realm against the connector's trust boundary and returns it
/// parsed.
///
/// Allowed: an absolute http(s) URL without userinfo whose host is the
/// connector's host (any port), shares its registrable domain (eTLD+1, e.g.
/// `auth.docker.io` for `registry-1.docker.io`), or is the host of one of
/// `address_extensions`. IP literals and `localhost` must be the exact host.
/// An https connector never accepts an http realm.
///
/// NB: the registrable domain counts only under a suffix the public suffix
/// list knows. Under unlisted suffixes (`svc.cluster.local`, `.internal`,
/// single labels) every name would share one "domain" with its neighbours, so
/// there only the exact host or an extension is trusted.
pub fn check_realm(realm: &str, connector_address: &Url, address_extensions: &[Url]) -> Result<Url> {
    let url = Url::parse(realm.trim()).map_err(|_| RealmError::NotAbsolute)?;
    let host_name = url.host_str().unwrap_or_default().to_owned();
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(RealmError::Scheme {
            host: host_name,
            scheme: url.scheme().to_owned(),
        });
    }
    let Some(host) = url.host() else {
        return Err(RealmError::NotAbsolute);
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(RealmError::Userinfo { host: host_name });
    }
    if connector_address.scheme() == "https" && url.scheme() != "https" {
        return Err(RealmError::Downgrade { host: host_name });
    }

    let registry = connector_address.host();
    let is_realm_host = |other: Option<Host<&str>>| other.is_some_and(|other| same_host(&host, &other));
    if is_realm_host(registry.clone())
        || address_extensions
            .iter()
            .any(|extension| is_realm_host(extension.host()))
    {
        return Ok(url);
    }
    let untrusted = |why| RealmError::Untrusted {
        host: host_name.clone(),
        registry: connector_address.host_str().unwrap_or_default().to_owned(),
        why,
    };
    let (Some(realm_domain), Some(registry)) = (domain_name(&host), registry.as_ref().and_then(domain_name)) else {
        return Err(untrusted(
            "an IP address or localhost realm must be the registry host itself",
        ));
    };
    match (registrable_domain(realm_domain), registrable_domain(registry)) {
        (Some(realm_domain), Some(registry_domain)) if realm_domain == registry_domain => Ok(url),
        (_, None) => Err(untrusted("the registry host has no registrable domain to share")),
        _ => Err(untrusted("it is in another registrable domain")),
    }
}

/// Host equality, ignoring a trailing dot on domain names.
fn same_host(a: &Host<&str>, b: &Host<&str>) -> bool {
    match (a, b) {
        (Host::Domain(a), Host::Domain(b)) => a.trim_end_matches('.').eq_ignore_ascii_case(b.trim_end_matches('.')),
        _ => a == b,
    }
}

/// The domain name of a host, without a trailing dot; None for IP literals
/// and `localhost` (and its subdomains), which never share a domain.
fn domain_name<'a>(host: &Host<&'a str>) -> Option<&'a str> {
    let Host::Domain(name) = host else { return None };
    let name = name.trim_end_matches('.');
    let lower = name.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return None;
    }
    Some(name)
}

/// eTLD+1 under a suffix the public suffix list knows, lowercased.
fn registrable_domain(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    let domain = psl::domain(lower.as_bytes())?;
    if !domain.suffix().is_known() {
        return None;
    }
    std::str::from_utf8(domain.as_bytes()).ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn realms_inside_the_trust_boundary_are_accepted() {
        let cases: &[(&str, &str, &[&str], &str)] = &[
            (
                "same host, other port",
                "https://harbor.example.com",
                &[],
                "https://harbor.example.com:8443/service/token",
            ),
            (
                "same eTLD+1",
                "https://harbor.example.com",
                &[],
                "https://auth.example.com/token",
            ),
            (
                "apex of the registry domain",
                "https://harbor.example.com",
                &[],
                "https://example.com/token",
            ),
            (
                "docker hub",
                "https://registry-1.docker.io",
                &[],
                "https://auth.docker.io/token",
            ),
            ("ghcr", "https://ghcr.io", &[], "https://ghcr.io/token"),
            (
                "ecr",
                "https://1234.dkr.ecr.eu-west-1.amazonaws.com",
                &[],
                "https://1234.dkr.ecr.eu-west-1.amazonaws.com/",
            ),
            (
                "loopback ip, other port",
                "http://127.0.0.1:5000",
                &[],
                "http://127.0.0.1:5100/token",
            ),
            (
                "ipv6, other port",
                "https://[::1]:5000",
                &[],
                "https://[::1]:5001/token",
            ),
            (
                "localhost, other port",
                "http://localhost:5000",
                &[],
                "http://localhost:5001/token",
            ),
            (
                "http registry upgrades to https",
                "http://registry.example.com",
                &[],
                "https://auth.example.com/token",
            ),
            (
                "address extension",
                "https://harbor.example.com",
                &["https://sso.corp.example.net"],
                "https://sso.corp.example.net/token",
            ),
            (
                "extension with a port",
                "https://h.example.com",
                &["https://10.0.0.9:8443"],
                "https://10.0.0.9:9443/token",
            ),
            (
                "cluster-local exact host",
                "http://harbor.harbor.svc.cluster.local",
                &[],
                "http://harbor.harbor.svc.cluster.local/service/token",
            ),
            (
                "trailing dot",
                "https://harbor.example.com",
                &[],
                "https://harbor.example.com./service/token",
            ),
            (
                "query kept",
                "https://harbor.example.com",
                &[],
                "https://harbor.example.com/token?x=1",
            ),
            ("surrounding space", "https://ghcr.io", &[], " https://ghcr.io/token "),
        ];
        for (scenario, address, extensions, realm) in cases {
            let extensions: Vec<Url> = extensions.iter().map(|e| url(e)).collect();
            let checked = check_realm(realm, &url(address), &extensions);
            assert_eq!(checked, Ok(url(realm.trim())), "{scenario}");
        }
    }

    #[test]
    fn realms_outside_the_trust_boundary_are_refused() {
        let untrusted = |host: &str, registry: &str, why| RealmError::Untrusted {
            host: host.into(),
            registry: registry.into(),
            why,
        };
        let other_domain = "it is in another registrable domain";
        let exact_only = "an IP address or localhost realm must be the registry host itself";
        let no_domain = "the registry host has no registrable domain to share";
        let cases: Vec<(&str, &str, &[&str], &str, RealmError)> = vec![
            (
                "other domain",
                "https://harbor.example.com",
                &[],
                "https://evil.com/token",
                untrusted("evil.com", "harbor.example.com", other_domain),
            ),
            (
                "public suffix is not a domain",
                "https://example.co.uk",
                &[],
                "https://other.co.uk/token",
                untrusted("other.co.uk", "example.co.uk", other_domain),
            ),
            (
                "lookalike suffix",
                "https://harbor.example.com",
                &[],
                "https://example.com.evil.net/t",
                untrusted("example.com.evil.net", "harbor.example.com", other_domain),
            ),
            (
                "other loopback ip",
                "http://127.0.0.1:5000",
                &[],
                "http://127.0.0.2:5000/token",
                untrusted("127.0.0.2", "127.0.0.1", exact_only),
            ),
            (
                "ip realm for a named registry",
                "https://harbor.example.com",
                &[],
                "https://169.254.169.254/latest",
                untrusted("169.254.169.254", "harbor.example.com", exact_only),
            ),
            (
                "named realm for an ip registry",
                "http://10.0.0.5:5000",
                &[],
                "http://auth.example.com/token",
                untrusted("auth.example.com", "10.0.0.5", exact_only),
            ),
            (
                "localhost for a named registry",
                "https://harbor.example.com",
                &[],
                "https://localhost/token",
                untrusted("localhost", "harbor.example.com", exact_only),
            ),
            (
                "sibling localhost names",
                "http://a.localhost:5000",
                &[],
                "http://b.localhost:5000/token",
                untrusted("b.localhost", "a.localhost", exact_only),
            ),
            (
                "localhost vs loopback ip",
                "http://localhost:5000",
                &[],
                "http://127.0.0.1:5000/token",
                untrusted("127.0.0.1", "localhost", exact_only),
            ),
            (
                "cluster-local neighbour",
                "http://harbor.harbor.svc.cluster.local",
                &[],
                "http://evil.tenant.svc.cluster.local/token",
                untrusted(
                    "evil.tenant.svc.cluster.local",
                    "harbor.harbor.svc.cluster.local",
                    no_domain,
                ),
            ),
            (
                "single-label neighbour",
                "http://registry:5000",
                &[],
                "http://auth:5000/token",
                untrusted("auth", "registry", no_domain),
            ),
            (
                "registry on a public suffix",
                "https://github.io",
                &[],
                "https://evil.github.io/token",
                untrusted("evil.github.io", "github.io", no_domain),
            ),
            (
                "private suffix siblings",
                "https://team.github.io",
                &[],
                "https://evil.github.io/token",
                untrusted("evil.github.io", "team.github.io", other_domain),
            ),
            (
                "extension does not widen to its domain",
                "https://h.example.com",
                &["https://sso.example.net"],
                "https://evil.example.net/t",
                untrusted("evil.example.net", "h.example.com", other_domain),
            ),
            (
                "downgrade",
                "https://harbor.example.com",
                &[],
                "http://harbor.example.com/service/token",
                RealmError::Downgrade {
                    host: "harbor.example.com".into(),
                },
            ),
            (
                "relative realm",
                "https://harbor.example.com",
                &[],
                "/token",
                RealmError::NotAbsolute,
            ),
            (
                "scheme-less realm",
                "https://ghcr.io",
                &[],
                "ghcr.io/token",
                RealmError::NotAbsolute,
            ),
            (
                "basic label realm",
                "https://harbor.example.com",
                &[],
                "harbor",
                RealmError::NotAbsolute,
            ),
            (
                "empty realm",
                "https://harbor.example.com",
                &[],
                "",
                RealmError::NotAbsolute,
            ),
            (
                "other scheme",
                "https://harbor.example.com",
                &[],
                "ftp://harbor.example.com/token",
                RealmError::Scheme {
                    host: "harbor.example.com".into(),
                    scheme: "ftp".into(),
                },
            ),
            (
                "file url",
                "https://harbor.example.com",
                &[],
                "file:///etc/passwd",
                RealmError::Scheme {
                    host: String::new(),
                    scheme: "file".into(),
                },
            ),
            (
                "userinfo",
                "https://harbor.example.com",
                &[],
                "https://user:hunter2@harbor.example.com/token",
                RealmError::Userinfo {
                    host: "harbor.example.com".into(),
                },
            ),
        ];
        for (scenario, address, extensions, realm, expected) in cases {
            let extensions: Vec<Url> = extensions.iter().map(|e| url(e)).collect();
            let checked = check_realm(realm, &url(address), &extensions);
            assert_eq!(checked, Err(expected), "{scenario}");
        }
    }

    #[test]
    fn refusals_never_echo_credentials_from_the_realm() {
        let err = check_realm(
            "https://robot$ci:s3cret@evil.com/token",
            &url("https://harbor.example.com"),
            &[],
        );
        let message = err.map(|_| ()).unwrap_err().to_string();
        assert!(!message.contains("s3cret") && !message.contains("robot"), "{message}");
    }
}
