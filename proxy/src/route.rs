//! Reverse-mode routes and URL rewriting: which connector, repository and
//! registry endpoint a proxy path names, and how upstream `Location` and
//! `Link` URLs map back into the proxy's own URL space.
//!
//! The proxy serves `/v2/` (the ping), `/v2/_catalog` and
//! `/v2/namespaces/<ns>/connectors/<name>/<repository>/<endpoint>`. Paths are
//! parsed from the raw (percent-encoded) form and refused rather than cleaned:
//! no dot segments, no empty segments, no encoded `/`, `.` or `\`, so a path
//! can never be read one way here and another way upstream.

use std::fmt;

use connector::ConnectorKey;
use connector::reference::{DOCKER_HUB_DOMAIN, NAME_TOTAL_LENGTH_MAX, Reference, canonical_registry_host};
use connector::selection::{is_dns_label, is_dns_subdomain};
use url::Url;

/// Why a path is not a route of the proxy.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    /// Not a path the proxy serves (outside `/v2/`, or no known endpoint).
    #[error("the path is not a registry API path served by this proxy")]
    NotFound,
    /// Refused before any routing: encoding tricks, dot or empty segments.
    #[error("the path is malformed: {why}")]
    Malformed {
        /// What is wrong, e.g. "it has an empty segment".
        why: &'static str,
    },
    /// The namespace segment is not a Kubernetes namespace name.
    #[error("namespace {0:?} is not a DNS label")]
    InvalidNamespace(String),
    /// The connector segment is not a Kubernetes object name.
    #[error("connector name {0:?} is not a DNS subdomain")]
    InvalidConnectorName(String),
    /// The repository does not match the distribution name grammar.
    #[error("repository name {0:?} is invalid")]
    InvalidRepository(String),
    /// A manifest reference that is neither a tag nor a digest.
    #[error("{0:?} is neither a valid tag nor a valid digest")]
    InvalidReference(String),
    /// A blob or referrers path that does not end in a digest.
    #[error("{0:?} is not a valid digest")]
    InvalidDigest(String),
    /// An upload session id outside `[A-Za-z0-9_.=-]+`.
    #[error("upload session id {0:?} is invalid")]
    InvalidUploadId(String),
}

impl RouteError {
    /// The OCI distribution error code for the answer. Distribution's own
    /// router answers every one of these with 404 (its patterns do not
    /// match), and so should the proxy: a 404 also lets clients fall back
    /// (e.g. from the referrers API to the referrers tag schema).
    pub fn oci_code(&self) -> &'static str {
        match self {
            RouteError::NotFound => "NAME_UNKNOWN",
            RouteError::Malformed { .. }
            | RouteError::InvalidNamespace(_)
            | RouteError::InvalidConnectorName(_)
            | RouteError::InvalidRepository(_) => "NAME_INVALID",
            RouteError::InvalidReference(_) => "MANIFEST_UNKNOWN",
            RouteError::InvalidDigest(_) => "DIGEST_INVALID",
            RouteError::InvalidUploadId(_) => "BLOB_UPLOAD_UNKNOWN",
        }
    }
}

/// `Result` with [`RouteError`] as the default error.
pub type Result<T, E = RouteError> = std::result::Result<T, E>;

/// What a proxy path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/` (or `/v2`): the ping the proxy answers itself.
    Base,
    /// `/v2/_catalog`: has no connector context.
    Catalog,
    /// A repository endpoint of one connector.
    Connector(ConnectorRoute),
}

/// A repository endpoint of one connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorRoute {
    /// The connector named by the path.
    pub key: ConnectorKey,
    /// The repository as the client names it (validated, decoded).
    pub repository: String,
    /// The registry endpoint under the repository.
    pub endpoint: Endpoint,
}

impl ConnectorRoute {
    /// The path in the proxy's URL space, e.g.
    /// `/v2/namespaces/lab/connectors/harbor/app/manifests/v1`.
    pub fn proxy_path(&self) -> String {
        format!(
            "{}/{}/{}",
            connector_prefix(&self.key),
            self.repository,
            self.endpoint.path()
        )
    }

    /// The path on the upstream: the address's path prefix, `/v2/`, the
    /// repository as the upstream names it ([`upstream_repository`]) and the
    /// endpoint, e.g. `/prefix/v2/library/nginx/manifests/1`.
    pub fn upstream_path(&self, upstream_base: &Url, registry_host: &str) -> String {
        format!(
            "{}/v2/{}/{}",
            upstream_base.path().trim_end_matches('/'),
            upstream_repository(registry_host, &self.repository),
            self.endpoint.path()
        )
    }
}

/// A registry endpoint under `/v2/<repository>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `manifests/<tag or digest>`.
    Manifest(String),
    /// `blobs/<digest>`.
    Blob(String),
    /// `blobs/uploads/`: starts an upload (or a mount).
    UploadStart,
    /// `blobs/uploads/<id>`: an upload session; the id is opaque.
    Upload(String),
    /// `tags/list`.
    TagsList,
    /// `referrers/<digest>`.
    Referrers(String),
}

impl Endpoint {
    /// The path after `<repository>/`, e.g. `manifests/v1`, `blobs/uploads/`, `tags/list`.
    pub fn path(&self) -> String {
        match self {
            Endpoint::Manifest(reference) => format!("manifests/{reference}"),
            Endpoint::Blob(digest) => format!("blobs/{digest}"),
            Endpoint::UploadStart => "blobs/uploads/".to_owned(),
            Endpoint::Upload(id) => format!("blobs/uploads/{id}"),
            Endpoint::TagsList => "tags/list".to_owned(),
            Endpoint::Referrers(digest) => format!("referrers/{digest}"),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

/// Parses a proxy path: `raw_path` is the percent-encoded path without the query.
///
/// The repository ends at the last endpoint marker (`/manifests/`, `/blobs/`,
/// `/tags/list`, `/referrers/`), so repositories may have components called
/// `manifests` or `blobs`. Percent-escapes of ordinary characters are decoded
/// (`sha256%3A…`); escapes of `/`, `.` and `\` are refused.
pub fn parse_route(raw_path: &str) -> Result<Route> {
    if raw_path == "/v2" || raw_path == "/v2/" {
        return Ok(Route::Base);
    }
    let Some(rest) = raw_path.strip_prefix("/v2/") else {
        return Err(RouteError::NotFound);
    };
    check_raw_path(raw_path)?;
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }

    let (rest, trailing_slash) = match rest.strip_suffix('/') {
        Some(without) => (without, true),
        None => (rest, false),
    };
    let segments = rest.split('/').map(decode_segment).collect::<Result<Vec<_>>>()?;
    let [namespaces, namespace, connectors, name, tail @ ..] = segments.as_slice() else {
        return Err(RouteError::NotFound);
    };
    if namespaces != "namespaces" || connectors != "connectors" {
        return Err(RouteError::NotFound);
    }
    if !is_dns_label(namespace) {
        return Err(RouteError::InvalidNamespace(namespace.clone()));
    }
    if !is_dns_subdomain(name) {
        return Err(RouteError::InvalidConnectorName(name.clone()));
    }

    connector_route(ConnectorKey::new(namespace.clone(), name.clone()), tail, trailing_slash)
}

/// Parses an origin-form path as a client of the registry itself sends it
/// (`/v2/<repository>/<endpoint>`), for the connector `key` that the forward
/// proxy chose by host. Same decoding and validation as [`parse_route`].
pub fn parse_origin_route(raw_path: &str, key: &ConnectorKey) -> Result<Route> {
    if raw_path == "/v2" || raw_path == "/v2/" {
        return Ok(Route::Base);
    }
    let Some(rest) = raw_path.strip_prefix("/v2/") else {
        return Err(RouteError::NotFound);
    };
    check_raw_path(raw_path)?;
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    let (rest, trailing_slash) = match rest.strip_suffix('/') {
        Some(without) => (without, true),
        None => (rest, false),
    };
    let segments = rest.split('/').map(decode_segment).collect::<Result<Vec<_>>>()?;
    connector_route(key.clone(), &segments, trailing_slash)
}

fn connector_route(key: ConnectorKey, tail: &[String], trailing_slash: bool) -> Result<Route> {
    let (repository, endpoint) = split_endpoint(tail, trailing_slash)?;
    if repository.is_empty() {
        return Err(RouteError::NotFound);
    }
    let repository = repository.join("/");
    if !is_repository(&repository) {
        return Err(RouteError::InvalidRepository(repository));
    }
    Ok(Route::Connector(ConnectorRoute {
        key,
        repository,
        endpoint,
    }))
}

/// `/v2/namespaces/<ns>/connectors/<name>`
pub fn connector_prefix(key: &ConnectorKey) -> String {
    format!("/v2/{}", key.proxy_path())
}

/// Maps a `Location` the upstream returned (absolute or relative, resolved
/// against `upstream_request_url`) into the proxy's own URL space: if it is on
/// the upstream's origin (scheme, host, port) and its path starts with
/// `<upstream base path>/v2/`, returns `<connector_prefix>/<rest>` with the
/// query kept byte-exact (the `_state` upload parameter must not be
/// re-encoded); otherwise None (another origin: caller decides).
///
/// The fragment is dropped. Locations with whitespace, control or non-ASCII
/// characters are refused, since they are not what a registry sends.
pub fn rewrite_location(
    location: &str,
    upstream_request_url: &Url,
    upstream_base: &Url,
    key: &ConnectorKey,
) -> Option<String> {
    let location = location.trim_matches([' ', '\t']);
    if location.is_empty() || !location.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let resolved = upstream_request_url.join(location).ok()?;
    if resolved.origin() != upstream_base.origin() {
        return None;
    }
    let rest = resolved
        .path()
        .strip_prefix(upstream_base.path().trim_end_matches('/'))?
        .strip_prefix("/v2/")?;
    // NB: the url crate re-encodes queries, and `_state` is an HMAC-signed
    // blob that must come back unchanged: take the query from the raw string.
    let without_fragment = location.split_once('#').map_or(location, |(before, _)| before);
    let query = without_fragment.split_once('?').map(|(_, query)| query);
    let mut rewritten = format!("{}/{rest}", connector_prefix(key));
    if let Some(query) = query {
        rewritten.push('?');
        rewritten.push_str(query);
    }
    Some(rewritten)
}

/// Rewrites the URI inside each `<...>` of a `Link` header value the same way
/// (pagination of tags/list and _catalog, `rel="next"`), keeping the rest.
///
/// None when the value has no `<...>`, an unclosed `<`, or a target that
/// [`rewrite_location`] refuses (e.g. another origin): the caller drops the header.
pub fn rewrite_link(
    value: &str,
    upstream_request_url: &Url,
    upstream_base: &Url,
    key: &ConnectorKey,
) -> Option<String> {
    let mut out = String::with_capacity(value.len() + 64);
    let mut rewrote = false;
    let mut rest = value;
    while let Some(i) = rest.find(['<', '"']) {
        out.push_str(&rest[..i]);
        let opening = &rest[i..i + 1];
        let after = &rest[i + 1..];
        if opening == "<" {
            let end = after.find('>')?;
            out.push('<');
            out.push_str(&rewrite_location(
                &after[..end],
                upstream_request_url,
                upstream_base,
                key,
            )?);
            out.push('>');
            rewrote = true;
            rest = &after[end + 1..];
        } else {
            // NB: a quoted parameter (`title="<x>"`) is copied, never rewritten.
            let len = quoted_len(after);
            out.push('"');
            out.push_str(&after[..len]);
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    rewrote.then_some(out)
}

/// The repository as the upstream names it: for Docker Hub
/// (`registry_host == "docker.io"`, or one of its aliases) a single-component
/// name gets `library/`.
pub fn upstream_repository(registry_host: &str, repository: &str) -> String {
    if canonical_registry_host(registry_host) == DOCKER_HUB_DOMAIN && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository.to_owned()
    }
}

/// After an opening `"`: the length of the quoted string through its closing
/// quote, or of the whole text when the quote is never closed.
fn quoted_len(text: &str) -> usize {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return i + 1,
            _ => {}
        }
    }
    text.len()
}

/// Checks that apply to the whole raw path before it is split.
fn check_raw_path(raw: &str) -> Result<()> {
    let malformed = |why| Err(RouteError::Malformed { why });
    if !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return malformed("it has non-ASCII, whitespace or control characters");
    }
    if raw.contains(['\\', '?', '#']) {
        return malformed("it has a backslash, `?` or `#`");
    }
    let lower = raw.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return malformed("it has a percent-encoded slash or backslash");
    }
    if lower.contains("%2e") {
        return malformed("it has a percent-encoded dot");
    }
    if raw.contains("//") {
        return malformed("it has an empty segment");
    }
    Ok(())
}

/// Decodes one path segment; refuses dot segments and escapes that would
/// smuggle separators, `%` itself or anything but visible ASCII.
fn decode_segment(raw: &str) -> Result<String> {
    let malformed = |why| RouteError::Malformed { why };
    if raw.is_empty() {
        return Err(malformed("it has an empty segment"));
    }
    let bytes = raw.as_bytes();
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            decoded.push(char::from(b));
            i += 1;
            continue;
        }
        let hex = |j: usize| bytes.get(j).and_then(|h| char::from(*h).to_digit(16));
        let (Some(high), Some(low)) = (hex(i + 1), hex(i + 2)) else {
            return Err(malformed("it has an invalid percent-escape"));
        };
        let byte = u8::try_from(high * 16 + low).map_err(|_| malformed("it has an invalid percent-escape"))?;
        if !byte.is_ascii_graphic() || matches!(byte, b'/' | b'\\' | b'.' | b'%') {
            return Err(malformed("it percent-encodes a character that must not be encoded"));
        }
        decoded.push(char::from(byte));
        i += 3;
    }
    if decoded == "." || decoded == ".." {
        return Err(malformed("it has a `.` or `..` segment"));
    }
    Ok(decoded)
}

/// Splits the segments after the connector into repository and endpoint,
/// taking the rightmost endpoint marker.
fn split_endpoint(tail: &[String], trailing_slash: bool) -> Result<(&[String], Endpoint)> {
    let n = tail.len();
    let at = |i: usize| n.checked_sub(i).and_then(|j| tail.get(j)).map(String::as_str);
    if trailing_slash {
        // NB: only the upload start takes a trailing slash (`blobs/uploads/`).
        return match (at(2), at(1)) {
            (Some("blobs"), Some("uploads")) => Ok((&tail[..n - 2], Endpoint::UploadStart)),
            _ => Err(RouteError::NotFound),
        };
    }
    match (at(3), at(2), at(1)) {
        (_, Some("tags"), Some("list")) => Ok((&tail[..n - 2], Endpoint::TagsList)),
        (Some("blobs"), Some("uploads"), Some(id)) if n >= 4 => {
            if is_upload_id(id) {
                Ok((&tail[..n - 3], Endpoint::Upload(id.to_owned())))
            } else {
                Err(RouteError::InvalidUploadId(id.to_owned()))
            }
        }
        (_, Some("manifests"), Some(reference)) => {
            if is_tag(reference) || is_digest(reference) {
                Ok((&tail[..n - 2], Endpoint::Manifest(reference.to_owned())))
            } else {
                Err(RouteError::InvalidReference(reference.to_owned()))
            }
        }
        // NB: distribution redirects `blobs/uploads` to `blobs/uploads/`.
        (_, Some("blobs"), Some("uploads")) => Ok((&tail[..n - 2], Endpoint::UploadStart)),
        (_, Some(marker @ ("blobs" | "referrers")), Some(digest)) => {
            if !is_digest(digest) {
                return Err(RouteError::InvalidDigest(digest.to_owned()));
            }
            let endpoint = if marker == "blobs" {
                Endpoint::Blob(digest.to_owned())
            } else {
                Endpoint::Referrers(digest.to_owned())
            };
            Ok((&tail[..n - 2], endpoint))
        }
        _ => Err(RouteError::NotFound),
    }
}

/// A registry domain that makes [`Reference::parse`] check a path, tag or
/// digest with the one grammar in `connector::reference`.
const PROBE_DOMAIN: &str = "p.q";

/// The distribution repository grammar: components
/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*` joined by `/`, at most
/// [`NAME_TOTAL_LENGTH_MAX`] characters. Also for names outside the path,
/// such as a mount's `from`.
pub fn is_repository(repository: &str) -> bool {
    // NB: checked per component so the probe domain does not count against
    // the length limit, which applies to the repository alone here.
    repository.len() <= NAME_TOTAL_LENGTH_MAX
        && repository.split('/').all(|component| {
            Reference::parse(&format!("{PROBE_DOMAIN}/{component}"))
                .is_ok_and(|r| r.path() == component && r.tag().is_none() && r.digest().is_none())
        })
}

/// `[\w][\w.-]{0,127}`
fn is_tag(tag: &str) -> bool {
    Reference::parse(&format!("{PROBE_DOMAIN}/x:{tag}")).is_ok_and(|r| r.tag() == Some(tag) && r.digest().is_none())
}

/// `algorithm:hex` as distribution checks it (fixed lengths for sha256/384/512).
pub(crate) fn is_digest(digest: &str) -> bool {
    Reference::parse(&format!("{PROBE_DOMAIN}/x@{digest}"))
        .is_ok_and(|r| r.digest() == Some(digest) && r.tag().is_none())
}

/// An opaque upload session id: `[A-Za-z0-9_.=-]+`.
fn is_upload_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'=' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const PREFIX: &str = "/v2/namespaces/lab/connectors/harbor";

    fn connector(repository: &str, endpoint: Endpoint) -> Route {
        Route::Connector(ConnectorRoute {
            key: ConnectorKey::new("lab", "harbor"),
            repository: repository.to_owned(),
            endpoint,
        })
    }

    fn malformed(why: &'static str) -> RouteError {
        RouteError::Malformed { why }
    }

    #[test]
    fn proxy_paths_route_to_connector_endpoints() {
        use Endpoint::*;
        let long_tag = "t".repeat(128);
        let cases: Vec<(String, Route)> = vec![
            ("/v2".into(), Route::Base),
            ("/v2/".into(), Route::Base),
            ("/v2/_catalog".into(), Route::Catalog),
            (
                format!("{PREFIX}/app/manifests/v1"),
                connector("app", Manifest("v1".into())),
            ),
            (
                format!("{PREFIX}/app/manifests/{DIGEST}"),
                connector("app", Manifest(DIGEST.into())),
            ),
            (
                format!("{PREFIX}/app/manifests/{long_tag}"),
                connector("app", Manifest(long_tag.clone())),
            ),
            (
                format!("{PREFIX}/a/b.c/d__e/f--g/manifests/v1.2_3-x"),
                connector("a/b.c/d__e/f--g", Manifest("v1.2_3-x".into())),
            ),
            (
                format!("{PREFIX}/app/blobs/{DIGEST}"),
                connector("app", Blob(DIGEST.into())),
            ),
            (format!("{PREFIX}/app/blobs/uploads/"), connector("app", UploadStart)),
            (format!("{PREFIX}/app/blobs/uploads"), connector("app", UploadStart)),
            (
                format!("{PREFIX}/app/blobs/uploads/9f1c-4b2a_x.y=="),
                connector("app", Upload("9f1c-4b2a_x.y==".into())),
            ),
            (format!("{PREFIX}/app/tags/list"), connector("app", TagsList)),
            (
                format!("{PREFIX}/app/referrers/{DIGEST}"),
                connector("app", Referrers(DIGEST.into())),
            ),
            // Repositories may have components named like endpoint markers: the last marker wins.
            (
                format!("{PREFIX}/x/manifests/blobs/manifests/v1"),
                connector("x/manifests/blobs", Manifest("v1".into())),
            ),
            (
                format!("{PREFIX}/blobs/blobs/uploads/"),
                connector("blobs", UploadStart),
            ),
            (
                format!("{PREFIX}/blobs/uploads/blobs/{DIGEST}"),
                connector("blobs/uploads", Blob(DIGEST.into())),
            ),
            (format!("{PREFIX}/tags/tags/list"), connector("tags", TagsList)),
            (
                format!("{PREFIX}/r/blobs/uploads/tags/list"),
                connector("r/blobs/uploads", TagsList),
            ),
            (
                format!("{PREFIX}/referrers/manifests/latest"),
                connector("referrers", Manifest("latest".into())),
            ),
            // Escapes of ordinary characters are decoded.
            (
                format!("{PREFIX}/app/blobs/{}", DIGEST.replace(':', "%3A")),
                connector("app", Blob(DIGEST.into())),
            ),
            (
                "/v2/namespaces/lab/connectors/harbor.prod-1/app/tags/list".into(),
                Route::Connector(ConnectorRoute {
                    key: ConnectorKey::new("lab", "harbor.prod-1"),
                    repository: "app".into(),
                    endpoint: TagsList,
                }),
            ),
        ];
        for (path, expected) in cases {
            assert_eq!(parse_route(&path), Ok(expected), "{path}");
        }
    }

    #[test]
    fn unusable_paths_are_refused_with_a_reason() {
        let long_repository = format!("{}/{}", "a".repeat(200), "b".repeat(55));
        let upper_hex = DIGEST.to_uppercase().replacen("SHA256", "sha256", 1);
        let cases: Vec<(String, RouteError)> = vec![
            ("/".into(), RouteError::NotFound),
            ("".into(), RouteError::NotFound),
            ("/v1/".into(), RouteError::NotFound),
            ("/v2x".into(), RouteError::NotFound),
            ("v2/".into(), RouteError::NotFound),
            ("/v2/foo".into(), RouteError::NotFound),
            ("/v2/_catalog/".into(), RouteError::NotFound),
            ("/v2/app/manifests/v1".into(), RouteError::NotFound),
            ("/v2/namespaces/lab/connectors/harbor".into(), RouteError::NotFound),
            ("/v2/namespaces/lab/connectors/harbor/".into(), RouteError::NotFound),
            ("/v2/namespaces/lab/connectors/harbor/app".into(), RouteError::NotFound),
            (
                "/v2/namespaces/lab/other/harbor/app/tags/list".into(),
                RouteError::NotFound,
            ),
            (format!("{PREFIX}/manifests/v1"), RouteError::NotFound),
            (format!("{PREFIX}/blobs/uploads/abc"), RouteError::NotFound),
            (format!("{PREFIX}/app/manifests/v1/"), RouteError::NotFound),
            (format!("{PREFIX}/app/tags/list/"), RouteError::NotFound),
            (format!("{PREFIX}/app/unknown/thing"), RouteError::NotFound),
            (
                format!("{PREFIX}/../x/manifests/v1"),
                malformed("it has a `.` or `..` segment"),
            ),
            (
                format!("{PREFIX}/app/./manifests/v1"),
                malformed("it has a `.` or `..` segment"),
            ),
            (
                format!("{PREFIX}/app/blobs/uploads/.."),
                malformed("it has a `.` or `..` segment"),
            ),
            (
                format!("{PREFIX}//app/manifests/v1"),
                malformed("it has an empty segment"),
            ),
            (
                format!("{PREFIX}/a%2Fb/manifests/v1"),
                malformed("it has a percent-encoded slash or backslash"),
            ),
            (
                format!("{PREFIX}/a%2fb/manifests/v1"),
                malformed("it has a percent-encoded slash or backslash"),
            ),
            (
                format!("{PREFIX}/a%5cb/manifests/v1"),
                malformed("it has a percent-encoded slash or backslash"),
            ),
            (
                format!("{PREFIX}/%2E%2E/manifests/v1"),
                malformed("it has a percent-encoded dot"),
            ),
            (
                format!("{PREFIX}/app/manifests/v1%2e0"),
                malformed("it has a percent-encoded dot"),
            ),
            (
                format!("{PREFIX}/a\\b/manifests/v1"),
                malformed("it has a backslash, `?` or `#`"),
            ),
            (
                format!("{PREFIX}/app/manifests/v1?x"),
                malformed("it has a backslash, `?` or `#`"),
            ),
            (
                format!("{PREFIX}/app/manifests/v\u{e9}"),
                malformed("it has non-ASCII, whitespace or control characters"),
            ),
            (
                format!("{PREFIX}/app/manifests/v 1"),
                malformed("it has non-ASCII, whitespace or control characters"),
            ),
            (
                format!("{PREFIX}/app/manifests/v%zz"),
                malformed("it has an invalid percent-escape"),
            ),
            (
                format!("{PREFIX}/app/manifests/v%4"),
                malformed("it has an invalid percent-escape"),
            ),
            (
                format!("{PREFIX}/app/manifests/v%"),
                malformed("it has an invalid percent-escape"),
            ),
            (
                format!("{PREFIX}/app/manifests/v%+1"),
                malformed("it has an invalid percent-escape"),
            ),
            (
                format!("{PREFIX}/app/manifests/v%252F"),
                malformed("it percent-encodes a character that must not be encoded"),
            ),
            (
                format!("{PREFIX}/app/manifests/v%00"),
                malformed("it percent-encodes a character that must not be encoded"),
            ),
            (
                format!("{PREFIX}/app/manifests/v%20"),
                malformed("it percent-encodes a character that must not be encoded"),
            ),
            (
                format!("{PREFIX}/app/manifests/v%C3%A9"),
                malformed("it percent-encodes a character that must not be encoded"),
            ),
            (
                "/v2/namespaces/Lab/connectors/harbor/app/tags/list".into(),
                RouteError::InvalidNamespace("Lab".into()),
            ),
            (
                "/v2/namespaces/a.b/connectors/harbor/app/tags/list".into(),
                RouteError::InvalidNamespace("a.b".into()),
            ),
            (
                "/v2/namespaces/lab/connectors/Harbor_1/app/tags/list".into(),
                RouteError::InvalidConnectorName("Harbor_1".into()),
            ),
            (
                format!("{PREFIX}/App/tags/list"),
                RouteError::InvalidRepository("App".into()),
            ),
            (
                format!("{PREFIX}/a___b/tags/list"),
                RouteError::InvalidRepository("a___b".into()),
            ),
            (
                format!("{PREFIX}/-a/tags/list"),
                RouteError::InvalidRepository("-a".into()),
            ),
            (
                format!("{PREFIX}/a:b/tags/list"),
                RouteError::InvalidRepository("a:b".into()),
            ),
            (
                format!("{PREFIX}/a@b/tags/list"),
                RouteError::InvalidRepository("a@b".into()),
            ),
            (
                format!("{PREFIX}/{long_repository}/tags/list"),
                RouteError::InvalidRepository(long_repository.clone()),
            ),
            (
                format!("{PREFIX}/app/manifests/-v1"),
                RouteError::InvalidReference("-v1".into()),
            ),
            (
                format!("{PREFIX}/app/manifests/v1@x"),
                RouteError::InvalidReference("v1@x".into()),
            ),
            (
                format!("{PREFIX}/app/manifests/{}", "t".repeat(129)),
                RouteError::InvalidReference("t".repeat(129)),
            ),
            (
                format!("{PREFIX}/app/manifests/sha256:abc"),
                RouteError::InvalidReference("sha256:abc".into()),
            ),
            (
                format!("{PREFIX}/app/manifests/v1:{DIGEST}"),
                RouteError::InvalidReference(format!("v1:{DIGEST}")),
            ),
            (format!("{PREFIX}/app/blobs/v1"), RouteError::InvalidDigest("v1".into())),
            (
                format!("{PREFIX}/app/blobs/{upper_hex}"),
                RouteError::InvalidDigest(upper_hex.clone()),
            ),
            (
                format!("{PREFIX}/app/referrers/latest"),
                RouteError::InvalidDigest("latest".into()),
            ),
            (
                format!("{PREFIX}/app/blobs/uploads/a+b"),
                RouteError::InvalidUploadId("a+b".into()),
            ),
            (
                format!("{PREFIX}/app/blobs/uploads/a:b"),
                RouteError::InvalidUploadId("a:b".into()),
            ),
        ];
        for (path, expected) in cases {
            assert_eq!(parse_route(&path), Err(expected), "{path}");
        }
    }

    #[test]
    fn parsed_routes_render_back_to_their_proxy_paths() {
        for endpoint in [
            format!("manifests/{DIGEST}"),
            "manifests/v1".into(),
            format!("blobs/{DIGEST}"),
            "blobs/uploads/".into(),
            "blobs/uploads/abc".into(),
            "tags/list".into(),
            format!("referrers/{DIGEST}"),
        ] {
            let path = format!("{PREFIX}/team/app/{endpoint}");
            let Ok(Route::Connector(route)) = parse_route(&path) else {
                panic!("{path} did not parse");
            };
            assert_eq!(route.proxy_path(), path);
            assert_eq!(route.endpoint.path(), endpoint);
            assert_eq!(route.endpoint.to_string(), endpoint);
        }
    }

    #[test]
    fn upstream_paths_keep_the_address_prefix_and_docker_hub_library() {
        let route = |repository: &str| ConnectorRoute {
            key: ConnectorKey::new("lab", "hub"),
            repository: repository.into(),
            endpoint: Endpoint::Manifest("1".into()),
        };
        let cases = [
            (
                "https://registry-1.docker.io",
                "docker.io",
                "nginx",
                "/v2/library/nginx/manifests/1",
            ),
            (
                "https://registry-1.docker.io",
                "docker.io",
                "bitnami/nginx",
                "/v2/bitnami/nginx/manifests/1",
            ),
            (
                "https://h.example.com/prefix",
                "h.example.com",
                "nginx",
                "/prefix/v2/nginx/manifests/1",
            ),
            (
                "https://h.example.com/prefix/",
                "h.example.com",
                "a/b",
                "/prefix/v2/a/b/manifests/1",
            ),
        ];
        for (base, host, repository, expected) in cases {
            let base = Url::parse(base).unwrap();
            assert_eq!(
                route(repository).upstream_path(&base, host),
                expected,
                "{base} {repository}"
            );
        }
    }

    #[test]
    fn docker_hub_single_component_repositories_get_library() {
        let cases = [
            ("docker.io", "nginx", "library/nginx"),
            ("docker.io", "library/nginx", "library/nginx"),
            ("docker.io", "bitnami/nginx", "bitnami/nginx"),
            ("registry-1.docker.io", "nginx", "library/nginx"),
            ("index.docker.io", "nginx", "library/nginx"),
            ("ghcr.io", "nginx", "nginx"),
            ("docker.io:5000", "nginx", "nginx"),
        ];
        for (host, repository, expected) in cases {
            assert_eq!(upstream_repository(host, repository), expected, "{host} {repository}");
        }
    }

    #[test]
    fn connector_prefix_names_namespace_and_connector() {
        assert_eq!(
            connector_prefix(&ConnectorKey::new("lab", "harbor")),
            "/v2/namespaces/lab/connectors/harbor"
        );
    }

    #[test]
    fn upstream_locations_map_into_the_connector_namespace() {
        let key = ConnectorKey::new("lab", "harbor");
        let state = "_state=AbC%2Bd%3D%3D+e=f&x=1%2f";
        let cases: Vec<(&str, &str, String, Option<String>)> = vec![
            (
                "https://h.example.com",
                "relative upload location keeps _state byte-exact",
                format!("/v2/lab/app/blobs/uploads/7c1e?{state}"),
                Some(format!("{PREFIX}/lab/app/blobs/uploads/7c1e?{state}")),
            ),
            (
                "https://h.example.com",
                "absolute location on the same origin",
                format!("https://h.example.com/v2/lab/app/blobs/uploads/7c1e?{state}"),
                Some(format!("{PREFIX}/lab/app/blobs/uploads/7c1e?{state}")),
            ),
            (
                "https://h.example.com",
                "explicit default port is the same origin",
                "https://H.Example.com:443/v2/lab/app/blobs/uploads/u".into(),
                Some(format!("{PREFIX}/lab/app/blobs/uploads/u")),
            ),
            (
                "https://h.example.com",
                "path relative to the request URL",
                "u1?_state=a%2Bb".into(),
                Some(format!("{PREFIX}/lab/app/blobs/uploads/u1?_state=a%2Bb")),
            ),
            (
                "https://h.example.com",
                "dot segments resolve before the check",
                "/v2/lab/../lab/app/tags/list?n=1".into(),
                Some(format!("{PREFIX}/lab/app/tags/list?n=1")),
            ),
            (
                "https://h.example.com",
                "fragment dropped",
                "/v2/lab/app/manifests/v1#frag?x".into(),
                Some(format!("{PREFIX}/lab/app/manifests/v1")),
            ),
            (
                "https://h.example.com",
                "surrounding spaces trimmed",
                " /v2/lab/app/manifests/v1 ".into(),
                Some(format!("{PREFIX}/lab/app/manifests/v1")),
            ),
            (
                "https://h.example.com",
                "userinfo is not carried over",
                "https://u:p@h.example.com/v2/lab/app/manifests/v1".into(),
                Some(format!("{PREFIX}/lab/app/manifests/v1")),
            ),
            (
                "https://h.example.com",
                "other port",
                "https://h.example.com:8443/v2/a/blobs/x".into(),
                None,
            ),
            (
                "https://h.example.com",
                "other scheme",
                "http://h.example.com/v2/a/blobs/x".into(),
                None,
            ),
            (
                "https://h.example.com",
                "object storage",
                "https://s3.amazonaws.com/bucket/blob?X-Amz-Signature=abc".into(),
                None,
            ),
            (
                "https://h.example.com",
                "scheme-relative other host",
                "//evil.example/v2/a".into(),
                None,
            ),
            (
                "https://h.example.com",
                "backslash trick",
                "/\\evil.example/v2/a".into(),
                None,
            ),
            (
                "https://h.example.com",
                "outside /v2/",
                "/artifacts-downloads/x".into(),
                None,
            ),
            ("https://h.example.com", "the v2 root without slash", "/v2".into(), None),
            ("https://h.example.com", "empty", "".into(), None),
            ("https://h.example.com", "inner space", "/v2/a b".into(), None),
            (
                "https://h.example.com",
                "control character",
                "/v2/a\r\nSet-Cookie: x".into(),
                None,
            ),
            ("https://h.example.com", "non-ascii", "/v2/\u{e9}".into(), None),
            ("https://h.example.com", "not a url", "https://[::1".into(), None),
            (
                "https://h.example.com/prefix",
                "address with a path prefix",
                format!("/prefix/v2/app/blobs/uploads/u?{state}"),
                Some(format!("{PREFIX}/app/blobs/uploads/u?{state}")),
            ),
            (
                "https://h.example.com/prefix/",
                "address prefix with a trailing slash",
                "https://h.example.com/prefix/v2/app/tags/list".into(),
                Some(format!("{PREFIX}/app/tags/list")),
            ),
            (
                "https://h.example.com/prefix",
                "outside the prefix",
                "/v2/app/tags/list".into(),
                None,
            ),
            (
                "https://h.example.com/prefix",
                "prefix as a longer word",
                "/prefixx/v2/app/tags/list".into(),
                None,
            ),
            (
                "http://127.0.0.1:5000",
                "plain http with a port",
                "http://127.0.0.1:5000/v2/app/blobs/uploads/u".into(),
                Some(format!("{PREFIX}/app/blobs/uploads/u")),
            ),
        ];
        for (base, scenario, location, expected) in cases {
            let base = Url::parse(base).unwrap();
            let request = Url::parse(&format!(
                "{}/v2/lab/app/blobs/uploads/",
                base.as_str().trim_end_matches('/')
            ));
            let request = request.unwrap();
            assert_eq!(
                rewrite_location(&location, &request, &base, &key),
                expected,
                "{scenario}: {location}"
            );
        }
    }

    #[test]
    fn pagination_links_map_into_the_connector_namespace() {
        let key = ConnectorKey::new("lab", "harbor");
        let base = Url::parse("https://h.example.com").unwrap();
        let request = Url::parse("https://h.example.com/v2/lab/app/tags/list?n=2").unwrap();
        let cases: Vec<(&str, String, Option<String>)> = vec![
            (
                "relative next link",
                r#"</v2/lab/app/tags/list?last=v2&n=2>; rel="next""#.into(),
                Some(format!(r#"<{PREFIX}/lab/app/tags/list?last=v2&n=2>; rel="next""#)),
            ),
            (
                "absolute next link",
                r#"<https://h.example.com/v2/lab/app/tags/list?last=a%2Bb&n=2>; rel=next"#.into(),
                Some(format!(r#"<{PREFIX}/lab/app/tags/list?last=a%2Bb&n=2>; rel=next"#)),
            ),
            (
                "two links",
                r#"</v2/_catalog?last=b>; rel="next", </v2/_catalog?last=a>; rel="prev""#.into(),
                Some(format!(
                    r#"<{PREFIX}/_catalog?last=b>; rel="next", <{PREFIX}/_catalog?last=a>; rel="prev""#
                )),
            ),
            (
                "angle brackets inside a quoted parameter are kept",
                r#"</v2/lab/app/tags/list?last=x>; title="<not \" a link>"; rel="next""#.into(),
                Some(format!(
                    r#"<{PREFIX}/lab/app/tags/list?last=x>; title="<not \" a link>"; rel="next""#
                )),
            ),
            (
                "foreign origin",
                r#"<https://evil.example/v2/x/tags/list>; rel="next""#.into(),
                None,
            ),
            (
                "one foreign link spoils the header",
                r#"</v2/a/tags/list>; rel="next", <https://evil.example/v2/a>; rel="prev""#.into(),
                None,
            ),
            ("no link target", r#"rel="next""#.into(), None),
            ("unclosed bracket", r#"</v2/a/tags/list; rel="next""#.into(), None),
            (
                "unterminated quote",
                r#"</v2/a/tags/list>; rel="next"#.into(),
                Some(format!(r#"<{PREFIX}/a/tags/list>; rel="next"#)),
            ),
            ("empty", "".into(), None),
        ];
        for (scenario, value, expected) in cases {
            assert_eq!(
                rewrite_link(&value, &request, &base, &key),
                expected,
                "{scenario}: {value}"
            );
        }
    }

    #[test]
    fn hostile_paths_never_panic() {
        let alphabet = [
            "/",
            "v2",
            "%",
            "2",
            "f",
            "E",
            ".",
            "\\",
            "a",
            ":",
            "é",
            "namespaces/x/connectors/y/",
        ];
        let base = Url::parse("https://h").unwrap();
        let key = ConnectorKey::new("a", "b");
        let mut level = vec![String::new()];
        for _ in 0..4 {
            level = level
                .iter()
                .flat_map(|prefix| alphabet.iter().map(move |piece| format!("{prefix}{piece}")))
                .collect();
            for path in &level {
                let _ = parse_route(path);
                let _ = parse_route(&format!("/v2/{path}"));
                let _ = rewrite_location(path, &base, &base, &key);
                let _ = rewrite_link(path, &base, &base, &key);
            }
        }
    }
}
