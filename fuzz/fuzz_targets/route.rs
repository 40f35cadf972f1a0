//! Reverse- and forward-mode route parsing on arbitrary request paths: never
//! panics; an accepted route's `proxy_path()` parses back to the same route;
//! no dot segment, empty segment, `%`, `\` or encoded separator survives into
//! a repository name, and the upstream path is one that `url` does not
//! normalise (what is checked here is what goes upstream).
//!
//! Input: `path[\nnamespace/name]`.

#![no_main]

use connector::ConnectorKey;
use libfuzzer_sys::fuzz_target;
use proxy::route::{ConnectorRoute, Route, is_repository, parse_origin_route, parse_route};
use url::Url;

fn check_repository(route: &ConnectorRoute, input: &str) {
    let repository = &route.repository;
    assert!(is_repository(repository), "{repository:?} from {input:?}");
    for component in repository.split('/') {
        assert!(
            !component.is_empty(),
            "empty component in {repository:?} from {input:?}"
        );
        assert!(
            component != "." && component != "..",
            "dot segment in {repository:?} from {input:?}"
        );
    }
    assert!(
        !repository.contains(['%', '\\', '?', '#', ':', '@']) && repository.is_ascii(),
        "{repository:?} from {input:?}"
    );
    let base = Url::parse("https://registry.example.com/prefix/").unwrap();
    for host in ["registry.example.com", "docker.io"] {
        let upstream = route.upstream_path(&base, host);
        assert!(upstream.starts_with("/prefix/v2/"), "{upstream:?}");
        let joined = base.join(&upstream).unwrap();
        assert_eq!(joined.path(), upstream, "url normalises the upstream path of {input:?}");
        assert!(joined.query().is_none() && joined.fragment().is_none(), "{upstream:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let (path, key) = match input.split_once('\n') {
        Some((path, key)) => (path, key),
        None => (input, "team/harbor"),
    };

    if let Ok(route) = parse_route(path) {
        if let Route::Connector(route) = &route {
            check_repository(route, path);
            let again = route.proxy_path();
            assert_eq!(
                parse_route(&again),
                Ok(Route::Connector(route.clone())),
                "{path:?} became {again:?}"
            );
        }
    }

    let (namespace, name) = key.split_once('/').unwrap_or(("team", key));
    let key = ConnectorKey::new(namespace, name);
    if let Ok(Route::Connector(route)) = parse_origin_route(path, &key) {
        assert_eq!(route.key, key);
        check_repository(&route, path);
        let again = format!("/v2/{}/{}", route.repository, route.endpoint.path());
        assert_eq!(
            parse_origin_route(&again, &key),
            Ok(Route::Connector(route.clone())),
            "{path:?} became {again:?}"
        );
    }
});
