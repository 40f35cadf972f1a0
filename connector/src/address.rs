//! Connector addresses: the registry URL in `spec.address` and the host that
//! image references are matched against.

use url::Url;

use crate::reference::canonical_registry_host;

/// Why a connector address cannot be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("address {0:?} is not a URL: {1}")]
    NotAUrl(String, String),
    #[error("address {0:?} must use http or https")]
    Scheme(String),
    #[error("address {0:?} has no host")]
    NoHost(String),
    #[error("address {0:?} must not carry credentials, a query or a fragment")]
    Extra(String),
}

/// A parsed `spec.address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryAddress {
    url: Url,
    registry_host: String,
}

impl RegistryAddress {
    /// Parses an address such as `https://harbor.example.com`,
    /// `http://127.0.0.1:5000/prefix` or a bare `harbor.example.com` (taken
    /// as https).
    pub fn parse(address: &str) -> Result<Self, AddressError> {
        let trimmed = address.trim();
        let with_scheme = if trimmed.contains("://") {
            trimmed.to_owned()
        } else {
            format!("https://{trimmed}")
        };
        let url = Url::parse(&with_scheme).map_err(|e| AddressError::NotAUrl(address.to_owned(), e.to_string()))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(AddressError::Scheme(address.to_owned()));
        }
        if !url.username().is_empty() || url.password().is_some() || url.query().is_some() || url.fragment().is_some() {
            return Err(AddressError::Extra(address.to_owned()));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| AddressError::NoHost(address.to_owned()))?;
        // NB: the url crate drops a port equal to the scheme's default, so
        // `https://h:443` and `https://h` compare equal, as registries do.
        let host_port = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        Ok(Self {
            registry_host: canonical_registry_host(&host_port),
            url,
        })
    }

    /// The canonical `host[:port]` that image references name, e.g.
    /// `docker.io` for `https://registry-1.docker.io`.
    pub fn registry_host(&self) -> &str {
        &self.registry_host
    }

    /// The upstream URL, without a trailing slash on its path.
    pub fn url(&self) -> &Url {
        &self.url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_hosts_are_canonical() {
        let cases = [
            ("https://harbor.example.com", "harbor.example.com"),
            ("https://Harbor.Example.com/", "harbor.example.com"),
            ("harbor.example.com", "harbor.example.com"),
            ("https://harbor.example.com:443", "harbor.example.com"),
            ("http://127.0.0.1:5000", "127.0.0.1:5000"),
            ("https://registry-1.docker.io", "docker.io"),
            ("https://index.docker.io/v1/", "docker.io"),
            ("https://[::1]:5443", "[::1]:5443"),
            ("https://ghcr.io/prefix", "ghcr.io"),
        ];
        for (address, host) in cases {
            let parsed = RegistryAddress::parse(address).unwrap();
            assert_eq!(parsed.registry_host(), host, "{address}");
        }
    }

    #[test]
    fn unusable_addresses_are_refused() {
        for address in [
            "ftp://x.example.com",
            "https://user:pw@x.example.com",
            "https://x.example.com/?a=b",
            "https://",
            "",
            "https://exa mple.com",
        ] {
            assert!(RegistryAddress::parse(address).is_err(), "{address}");
        }
    }
}
