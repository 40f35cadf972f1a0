//! Container image references: the distribution/reference grammar with Docker Hub normalisation.
//!
//! This is the single place that knows how `nginx`, `ghcr.io/a/b:tag@sha256:…` or
//! `[::1]:5000/x` split into registry domain, repository path, tag and digest. It follows
//! `ParseNormalizedNamed` from github.com/distribution/reference (regexp.go, normalize.go,
//! plus go-digest's checks for registered algorithms) with three deliberate differences:
//!
//! - a missing tag stays missing (no implicit `:latest`), so a rewritten reference pulls
//!   exactly what the original would have pulled;
//! - a first component that looks like a domain (it has a `.`, a `:` or an uppercase letter)
//!   but is not a valid one is an error. distribution silently falls back to a reference
//!   with an *empty* domain there (e.g. `my_host.example/app`), which no runtime can pull;
//! - digests with algorithms go-digest does not register (anything but `sha256`, `sha384`
//!   and `sha512`) are accepted when they match the grammar, instead of "unsupported".
//!
//! The name length limit is the classic one: domain, `/` and path together at most 255
//! characters (distribution/reference ≥ 0.6 counts only the path; many clients still count
//! the whole name, see the OCI distribution spec's implementers note).

use std::fmt;
use std::str::FromStr;

/// The canonical domain of Docker Hub, used for references without a registry.
pub const DOCKER_HUB_DOMAIN: &str = "docker.io";

/// The longest repository name (domain, `/` and path) accepted.
pub const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// The longest tag accepted.
pub(crate) const TAG_LENGTH_MAX: usize = 128;

/// The legacy "Docker Index" domain, rewritten to [`DOCKER_HUB_DOMAIN`] when parsing.
const LEGACY_DOCKER_HUB_DOMAIN: &str = "index.docker.io";

/// Namespace of Docker Hub's official images (`nginx` is `library/nginx`).
const OFFICIAL_REPO_PREFIX: &str = "library/";

/// Always a domain when it is the first of several components, although it has no `.`.
const LOCALHOST: &str = "localhost";

/// Hosts that serve Docker Hub's registry API under another name.
const DOCKER_HUB_ALIASES: [&str; 3] = [
    LEGACY_DOCKER_HUB_DOMAIN,
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

/// Digest algorithms with a fixed encoding (go-digest's registered algorithms):
/// the encoded part must be exactly this many lowercase hex characters.
const REGISTERED_ALGORITHMS: [(&str, usize); 3] = [("sha256", 64), ("sha384", 96), ("sha512", 128)];

/// Why a string is not an image reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    /// The input was empty.
    #[error("invalid reference format: repository name must have at least one component")]
    Empty,
    /// A bare 64-character hex string, which runtimes read as an image ID.
    #[error("invalid reference format: cannot specify 64-byte hexadecimal strings")]
    AmbiguousIdentifier,
    /// The registry part (first component) is not `host[:port]`.
    #[error("invalid reference format: invalid registry domain")]
    InvalidDomain,
    /// The repository path has uppercase letters.
    #[error("invalid reference format: repository name must be lowercase")]
    NameContainsUppercase,
    /// The repository path is empty or has a malformed component.
    #[error("invalid reference format: invalid repository name")]
    InvalidPath,
    /// Domain, `/` and path together are too long.
    #[error("invalid reference format: repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters")]
    NameTooLong,
    /// The part after `:` is not a tag.
    #[error("invalid reference format: invalid tag")]
    InvalidTag,
    /// The part after `@` is not `algorithm:hex`.
    #[error("invalid reference format: invalid digest")]
    InvalidDigest,
    /// A digest of a registered algorithm has the wrong length or non-lowercase hex.
    #[error("invalid reference format: {algorithm} digest must be {hex_len} lowercase hexadecimal characters")]
    InvalidDigestEncoding {
        /// The algorithm, e.g. `sha256`.
        algorithm: &'static str,
        /// The required number of hex characters.
        hex_len: usize,
    },
}

/// `Result` with [`ReferenceError`] as the default error.
pub type Result<T, E = ReferenceError> = std::result::Result<T, E>;

/// A normalised image reference: registry domain, repository path, optional tag and digest.
///
/// Displays as `domain/path[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// Parses like distribution's `ParseNormalizedNamed` but keeps a missing tag missing:
    /// `nginx` gives domain `docker.io`, path `library/nginx` and no tag;
    /// `index.docker.io/x` gives `docker.io/library/x`; `foo/bar` gives `docker.io/foo/bar`;
    /// `localhost:5000/a` and `Registry.Example/a` keep their domain as written.
    pub fn parse(s: &str) -> Result<Reference> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if is_identifier(s) {
            return Err(ReferenceError::AmbiguousIdentifier);
        }

        let (domain, remainder) = split_docker_domain(s);
        let (path, tag, digest) = split_remainder(remainder);
        // NB: on Docker Hub a single component is an official image; elsewhere it is not.
        let official = domain == DOCKER_HUB_DOMAIN && !remainder.contains('/');

        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::NameContainsUppercase);
        }
        if !is_domain(domain) {
            return Err(domain_error(domain));
        }
        if !is_path(path) {
            return Err(ReferenceError::InvalidPath);
        }
        if let Some(tag) = tag {
            check_tag(tag)?;
        }
        if let Some(digest) = digest {
            check_digest_grammar(digest)?;
        }
        let prefix_len = if official { OFFICIAL_REPO_PREFIX.len() } else { 0 };
        if domain.len() + 1 + prefix_len + path.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(ReferenceError::NameTooLong);
        }
        if let Some(digest) = digest {
            check_registered_digest(digest)?;
        }

        let path = if official {
            format!("{OFFICIAL_REPO_PREFIX}{path}")
        } else {
            path.to_owned()
        };
        Ok(Reference {
            domain: domain.to_owned(),
            path,
            tag: tag.map(str::to_owned),
            digest: digest.map(str::to_owned),
        })
    }

    /// The registry host with optional `:port`, e.g. `docker.io`, `localhost:5000`, `[::1]:5000`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path without the domain, e.g. `library/nginx`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The repository name: `domain/path`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The tag as written, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest as written (`algorithm:hex`), if any.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The same image under another registry domain and a path prefix, tag and digest kept.
    ///
    /// `with_location("proxy:8443", "namespaces/ns/connectors/c")` on
    /// `docker.io/library/nginx:1@sha256:…` gives
    /// `proxy:8443/namespaces/ns/connectors/c/library/nginx:1@sha256:…`. Slashes around the
    /// prefix are ignored and an empty prefix keeps the path. The inputs are not validated and
    /// the result may exceed [`NAME_TOTAL_LENGTH_MAX`]; use
    /// [`try_with_location`](Self::try_with_location) for untrusted input.
    pub fn with_location(&self, domain: &str, path_prefix: &str) -> Reference {
        let prefix = path_prefix.trim_matches('/');
        let path = if prefix.is_empty() {
            self.path.clone()
        } else {
            format!("{prefix}/{}", self.path)
        };
        Reference {
            domain: domain.to_owned(),
            path,
            tag: self.tag.clone(),
            digest: self.digest.clone(),
        }
    }

    /// Like [`with_location`](Self::with_location), but checks that `domain` is a registry
    /// domain, `path_prefix` a valid (possibly empty) repository path, that the new name
    /// fits in [`NAME_TOTAL_LENGTH_MAX`] and that the result reads back as itself: a domain
    /// parsing would not split off (`proxy`, not `proxy:80` or `localhost`) or would
    /// normalise (`index.docker.io`; `docker.io` before a single component) is refused.
    pub fn try_with_location(&self, domain: &str, path_prefix: &str) -> Result<Reference> {
        if !is_domain(domain) {
            return Err(ReferenceError::InvalidDomain);
        }
        let prefix = path_prefix.trim_matches('/');
        if prefix.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::NameContainsUppercase);
        }
        if !prefix.is_empty() && !is_path(prefix) {
            return Err(ReferenceError::InvalidPath);
        }
        let relocated = self.with_location(domain, prefix);
        if relocated.domain.len() + 1 + relocated.path.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(ReferenceError::NameTooLong);
        }
        if Reference::parse(&relocated.to_string()).as_ref() != Ok(&relocated) {
            return Err(ReferenceError::InvalidDomain);
        }
        Ok(relocated)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self> {
        Reference::parse(s)
    }
}

impl serde::Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Reference {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Reference::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Canonical registry host for comparing a connector address with an image domain.
///
/// Lowercases the hostname, strips the default port 443 (`harbor.example.com:443` is
/// `harbor.example.com`) and maps Docker Hub's aliases (`index.docker.io`,
/// `registry-1.docker.io`, `registry.hub.docker.com`) to [`DOCKER_HUB_DOMAIN`].
/// The input is `host[:port]`, with IPv6 hosts in brackets (`[::1]:5000`).
pub fn canonical_registry_host(host: &str) -> String {
    let (hostname, port) = split_host_port(host);
    let hostname = hostname.to_ascii_lowercase();
    match port.filter(|port| *port != "443") {
        Some(port) => format!("{hostname}:{port}"),
        None if DOCKER_HUB_ALIASES.contains(&hostname.as_str()) => DOCKER_HUB_DOMAIN.to_owned(),
        None => hostname,
    }
}

/// Splits `host[:port]`; an unbracketed string with several colons is all host.
pub(crate) fn split_host_port(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        if let Some(end) = host.find(']') {
            let (hostname, rest) = host.split_at(end + 1);
            return (hostname, rest.strip_prefix(':'));
        }
        return (host, None);
    }
    match host.split_once(':') {
        Some((hostname, port)) if !port.contains(':') => (hostname, Some(port)),
        _ => (host, None),
    }
}

/// distribution's `splitDockerDomain`: the domain, and the rest (`path[:tag][@digest]`).
fn split_docker_domain(s: &str) -> (&str, &str) {
    let Some((first, rest)) = s.split_once('/') else {
        return (DOCKER_HUB_DOMAIN, s);
    };
    if first == LOCALHOST {
        (first, rest)
    } else if first == LEGACY_DOCKER_HUB_DOMAIN {
        (DOCKER_HUB_DOMAIN, rest)
    } else if first.contains(['.', ':']) || first.bytes().any(|b| b.is_ascii_uppercase()) {
        // NB: repository paths are lowercase, so an uppercase first component can only be a
        // domain ("Harbor.Example.com" and also "MyRegistry").
        (first, rest)
    } else {
        (DOCKER_HUB_DOMAIN, s)
    }
}

/// Splits `path[:tag][@digest]`. Paths hold neither `:` nor `@` and tags no `@`, so the
/// first `:` or `@` ends the path and the first `@` after it starts the digest.
fn split_remainder(remainder: &str) -> (&str, Option<&str>, Option<&str>) {
    let path_end = remainder.find([':', '@']).unwrap_or(remainder.len());
    let (path, rest) = remainder.split_at(path_end);
    if let Some(tag_and_digest) = rest.strip_prefix(':') {
        match tag_and_digest.split_once('@') {
            Some((tag, digest)) => (path, Some(tag), Some(digest)),
            None => (path, Some(tag_and_digest), None),
        }
    } else {
        (path, None, rest.strip_prefix('@'))
    }
}

/// The error for a first component taken as a domain that is not one: distribution reports
/// uppercase when the lowercased string would have parsed.
fn domain_error(domain: &str) -> ReferenceError {
    let has_uppercase = domain.bytes().any(|b| b.is_ascii_uppercase());
    if has_uppercase && is_path_component(&domain.to_ascii_lowercase()) {
        ReferenceError::NameContainsUppercase
    } else {
        ReferenceError::InvalidDomain
    }
}

/// `[a-f0-9]{64}`: an image ID, not a name.
fn is_identifier(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'a'..=b'f' | b'0'..=b'9'))
}

/// `host[:port]` where host is a domain name, an IPv4 address or `[ipv6]`.
fn is_domain(domain: &str) -> bool {
    let (host_ok, port) = if let Some(bracketed) = domain.strip_prefix('[') {
        let Some((address, rest)) = bracketed.split_once(']') else {
            return false;
        };
        // NB: distribution only admits hex digits and colons: no zone (`%eth0`), no
        // IPv4-mapped form, and no check of the group structure.
        let address_ok = !address.is_empty() && address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        match rest {
            "" => (address_ok, None),
            _ => match rest.strip_prefix(':') {
                Some(port) => (address_ok, Some(port)),
                None => return false,
            },
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (is_domain_name(host), Some(port)),
            None => (is_domain_name(domain), None),
        }
    };
    host_ok && port.is_none_or(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
}

/// `component(.component)*` with components `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?`.
fn is_domain_name(name: &str) -> bool {
    name.split('.').all(|component| {
        let bytes = component.as_bytes();
        match (bytes.first(), bytes.last()) {
            (Some(first), Some(last)) => {
                first.is_ascii_alphanumeric()
                    && last.is_ascii_alphanumeric()
                    && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            }
            _ => false,
        }
    })
}

/// One or more path components joined by single slashes.
fn is_path(path: &str) -> bool {
    path.split('/').all(is_path_component)
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let is_alphanumeric = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        let run = bytes[i..].iter().take_while(|b| is_alphanumeric(b)).count();
        if run == 0 {
            return false;
        }
        i += run;
        match bytes.get(i) {
            None => return true,
            Some(b'.') => i += 1,
            Some(b'_') => i += if bytes.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            Some(b'-') => i += bytes[i..].iter().take_while(|b| **b == b'-').count(),
            Some(_) => return false,
        }
    }
}

/// `[\w][\w.-]{0,127}`
fn check_tag(tag: &str) -> Result<()> {
    let is_word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    let bytes = tag.as_bytes();
    let valid = bytes.len() <= TAG_LENGTH_MAX
        && bytes.first().is_some_and(is_word)
        && bytes.iter().all(|b| is_word(b) || *b == b'.' || *b == b'-');
    if valid { Ok(()) } else { Err(ReferenceError::InvalidTag) }
}

/// `algorithm:encoded` with algorithm `[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*`
/// and encoded `[0-9a-fA-F]{32,}`.
fn check_digest_grammar(digest: &str) -> Result<()> {
    let Some((algorithm, encoded)) = digest.split_once(':') else {
        return Err(ReferenceError::InvalidDigest);
    };
    let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|component| {
        let bytes = component.as_bytes();
        bytes.first().is_some_and(u8::is_ascii_alphabetic) && bytes.iter().all(u8::is_ascii_alphanumeric)
    });
    let encoded_ok = encoded.len() >= 32 && encoded.bytes().all(|b| b.is_ascii_hexdigit());
    if algorithm_ok && encoded_ok {
        Ok(())
    } else {
        Err(ReferenceError::InvalidDigest)
    }
}

/// go-digest's check for registered algorithms: exact length, lowercase hex.
fn check_registered_digest(digest: &str) -> Result<()> {
    let Some((algorithm, encoded)) = digest.split_once(':') else {
        return Err(ReferenceError::InvalidDigest);
    };
    match REGISTERED_ALGORITHMS.iter().find(|(name, _)| *name == algorithm) {
        Some(&(algorithm, hex_len))
            if encoded.len() != hex_len || !encoded.bytes().all(|b| matches!(b, b'a'..=b'f' | b'0'..=b'9')) =>
        {
            Err(ReferenceError::InvalidDigestEncoding { algorithm, hex_len })
        }
        _ => Ok(()),
    }
}
