//! What of a request goes upstream and what of an answer comes back: the
//! proxy's header policy (no client credential, cookie or forwarding
//! header upstream; no challenge, token or cookie downstream), which
//! requests cannot be replayed, the token actions a method needs, and the
//! mapping of a cross-repository mount's `from`.

use connector::ConnectorKey;
use hyper::Method;
use hyper::header::{self, HeaderMap, HeaderName};

use crate::route::{self, Endpoint};

/// The actions a method needs on the repository.
pub fn actions(method: &Method) -> &'static [&'static str] {
    match *method {
        Method::GET | Method::HEAD => &["pull"],
        Method::DELETE => &["delete"],
        _ => &["pull", "push"],
    }
}

/// Whether a request streams a body upstream (and so cannot be replayed).
pub fn carries_body(method: &Method, headers: &HeaderMap) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS) {
        return false;
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// The upstream query: kept byte-exact, except a cross-repository mount's
/// `from`, which names a repository as the caller sees it
/// (`namespaces/<ns>/connectors/<name>/<repo>`). Within the same connector
/// it becomes the upstream repository; from another connector (or anything
/// else) `mount` and `from` are dropped so the registry starts a plain
/// upload. Returns the query and the mapped `from`.
pub fn map_query(
    query: Option<&str>,
    endpoint: &Endpoint,
    key: &ConnectorKey,
    registry_host: &str,
) -> (Option<String>, Option<String>) {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return (None, None);
    };
    if !matches!(endpoint, Endpoint::UploadStart) || !query.split('&').any(|p| p.starts_with("from=")) {
        return (Some(query.to_owned()), None);
    }
    let prefix = format!("{}/", route::connector_prefix(key).trim_start_matches("/v2/"));
    let mut mapped_from = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let Some(value) = pair.strip_prefix("from=") else {
            kept.push(pair.to_owned());
            continue;
        };
        let decoded = percent_encoding::percent_decode_str(value)
            .decode_utf8_lossy()
            .into_owned();
        if let Some(repository) = decoded.strip_prefix(&prefix).filter(|r| route::is_repository(r)) {
            let upstream = route::upstream_repository(registry_host, repository);
            kept.push(format!(
                "from={}",
                percent_encoding::utf8_percent_encode(&upstream, percent_encoding::NON_ALPHANUMERIC)
            ));
            mapped_from = Some(upstream);
        }
    }
    if mapped_from.is_none() {
        kept.retain(|p| !p.starts_with("mount="));
    }
    let query = kept.join("&");
    ((!query.is_empty()).then_some(query), mapped_from)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus those named in `Connection`.
pub(crate) fn hop_by_hop(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ]
    .into_iter()
    .map(HeaderName::from_static)
    .collect();
    for value in headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        names.extend(
            value
                .split(',')
                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()),
        );
    }
    names
}

/// What of the caller's request goes upstream: everything end-to-end except
/// its credentials, cookies and forwarding headers; `Host` is set from the
/// upstream URL.
pub fn upstream_request_headers(incoming: &HeaderMap) -> HeaderMap {
    let mut headers = incoming.clone();
    for name in hop_by_hop(incoming) {
        headers.remove(name);
    }
    for name in [
        header::AUTHORIZATION,
        header::COOKIE,
        header::HOST,
        HeaderName::from_static("forwarded"),
    ] {
        headers.remove(name);
    }
    let forwarded: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-forwarded-") || n.as_str() == "x-real-ip")
        .cloned()
        .collect();
    for name in forwarded {
        headers.remove(name);
    }
    headers
}

/// What of the registry's answer goes back: everything end-to-end except its
/// challenges, cookies and anything credential-like.
pub fn downstream_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut headers = upstream.clone();
    for name in hop_by_hop(upstream) {
        headers.remove(name);
    }
    for name in [header::WWW_AUTHENTICATE, header::SET_COOKIE, header::AUTHORIZATION] {
        headers.remove(name);
    }
    headers
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use hyper::header::HeaderValue;

    use super::*;

    #[test]
    fn mount_sources_map_within_a_connector_and_drop_across_connectors() {
        let key = ConnectorKey::new("team", "harbor");
        let cases = [
            (
                "mount=sha256:abc&from=namespaces%2Fteam%2Fconnectors%2Fharbor%2Flab%2Fbase",
                Some("mount=sha256:abc&from=lab%2Fbase"),
                Some("lab/base"),
            ),
            (
                "mount=sha256:abc&from=namespaces/other/connectors/x/lab/base",
                None,
                None,
            ),
            ("mount=sha256:abc&from=lab/base", None, None),
            ("digest=sha256:abc", Some("digest=sha256:abc"), None),
        ];
        for (query, want_query, want_from) in cases {
            let (q, from) = map_query(Some(query), &Endpoint::UploadStart, &key, "harbor.example.com");
            assert_eq!(q.as_deref(), want_query, "{query}");
            assert_eq!(from.as_deref(), want_from, "{query}");
        }
        let (q, _) = map_query(
            Some("_state=a%2Bb%3D&digest=x"),
            &Endpoint::Upload("u".into()),
            &key,
            "h",
        );
        assert_eq!(
            q.as_deref(),
            Some("_state=a%2Bb%3D&digest=x"),
            "upload state stays byte-exact"
        );
    }

    #[test]
    fn client_credentials_and_forwarding_headers_never_go_upstream() {
        let mut incoming = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Basic abc"),
            ("cookie", "sid=1"),
            ("x-forwarded-for", "10.0.0.1"),
            ("forwarded", "for=1"),
            ("connection", "keep-alive, x-custom"),
            ("x-custom", "1"),
            ("proxy-authorization", "Basic x"),
            ("accept", "application/vnd.oci.image.manifest.v1+json"),
            ("range", "bytes=10-"),
            ("host", "proxy"),
        ] {
            incoming.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        incoming.append(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.docker.distribution.manifest.v2+json"),
        );
        let out = upstream_request_headers(&incoming);
        let names: BTreeSet<&str> = out.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["accept", "range"].into());
        assert_eq!(
            out.get_all(header::ACCEPT).iter().count(),
            2,
            "every Accept value is forwarded"
        );

        let mut upstream = HeaderMap::new();
        for (name, value) in [
            ("www-authenticate", "Bearer realm=\"x\""),
            ("set-cookie", "sid=2"),
            ("docker-content-digest", "sha256:1"),
            ("content-length", "10"),
            ("transfer-encoding", "chunked"),
        ] {
            upstream.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        let out = downstream_headers(&upstream);
        let names: BTreeSet<&str> = out.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-length", "docker-content-digest"].into());
    }

    #[test]
    fn only_requests_with_a_body_are_unreplayable() {
        let mut with_length = HeaderMap::new();
        with_length.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        let mut empty = HeaderMap::new();
        empty.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert!(!carries_body(&Method::GET, &with_length));
        assert!(carries_body(&Method::PATCH, &with_length));
        assert!(!carries_body(&Method::PUT, &empty));
        assert!(!carries_body(&Method::POST, &HeaderMap::new()));
    }
}
