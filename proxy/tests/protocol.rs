//! Registry-protocol scenarios across the pure modules: challenges, realms,
//! routes and URL rewriting, and caller identity, wired together the way the
//! reverse proxy uses them (no sockets).

use access::caller::{Authenticator, Authorizer, Decision, SameNamespace, StaticTokens, token_from_authorization};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use connector::ConnectorKey;
use futures::executor::block_on;
use proxy::route::{Endpoint, Route, parse_route, rewrite_link, rewrite_location};
use registry::challenge::{Scheme, Scope, parse_challenges, preferred, render};
use registry::realm::{RealmError, check_realm};
use url::Url;

fn connector_route(path: &str) -> proxy::route::ConnectorRoute {
    match parse_route(path) {
        Ok(Route::Connector(route)) => route,
        other => panic!("{path}: {other:?}"),
    }
}

#[test]
fn harbor_bearer_challenge_yields_a_trusted_realm_and_scopes() {
    let headers = [
        r#"Basic realm="harbor""#,
        concat!(
            r#"Bearer realm="https://harbor.example.com/service/token",service="harbor-registry","#,
            r#"scope="repository:lab/app:pull,push repository:lab/base:pull""#
        ),
    ];
    let challenges = parse_challenges(headers);
    let challenge = preferred(&challenges).expect("a challenge");
    assert_eq!(challenge.scheme, Scheme::Bearer);
    assert_eq!(challenge.service(), Some("harbor-registry"));

    let address = Url::parse("https://harbor.example.com").unwrap();
    let realm = check_realm(challenge.realm().unwrap(), &address, &[]).unwrap();
    assert_eq!(realm.as_str(), "https://harbor.example.com/service/token");

    let scopes: Vec<Scope> = challenge.scopes().iter().filter_map(|s| Scope::parse(s)).collect();
    assert_eq!(
        scopes,
        vec![
            Scope::repository("lab/app", &["pull", "push"]),
            Scope::repository("lab/base", &["pull"]),
        ]
    );
}

#[test]
fn spoofed_realm_is_refused_before_any_credential_is_sent() {
    let challenges = parse_challenges([r#"Bearer realm="https://collector.evil.example/token",service="x""#]);
    let address = Url::parse("https://harbor.example.com").unwrap();
    let err = check_realm(preferred(&challenges).unwrap().realm().unwrap(), &address, &[]).unwrap_err();
    assert!(matches!(err, RealmError::Untrusted { ref host, .. } if host == "collector.evil.example"));
}

#[test]
fn chunked_upload_location_round_trips_through_the_proxy_namespace() {
    let key = ConnectorKey::new("lab", "harbor");
    let base = Url::parse("https://harbor.example.com/prefix").unwrap();

    // POST /v2/namespaces/lab/connectors/harbor/team/app/blobs/uploads/
    let start = connector_route("/v2/namespaces/lab/connectors/harbor/team/app/blobs/uploads/");
    assert_eq!(start.endpoint, Endpoint::UploadStart);
    let upstream_path = start.upstream_path(&base, "harbor.example.com");
    assert_eq!(upstream_path, "/prefix/v2/team/app/blobs/uploads/");
    let request = base.join(&upstream_path).unwrap();

    // The upstream answers 202 with a relative Location carrying signed state.
    let state = "_state=Zm9v%2BYmFy%3D%3D+c=d&other=x";
    let location = format!("/prefix/v2/team/app/blobs/uploads/5a3c-11ef_9b.x?{state}");
    let rewritten = rewrite_location(&location, &request, &base, &key).unwrap();
    assert_eq!(
        rewritten,
        format!("/v2/namespaces/lab/connectors/harbor/team/app/blobs/uploads/5a3c-11ef_9b.x?{state}")
    );

    // The client PATCHes the rewritten location; it maps back to the same upstream path and query.
    let (path, query) = rewritten.split_once('?').unwrap();
    let patch = connector_route(path);
    assert_eq!(patch.key, key);
    assert_eq!(patch.endpoint, Endpoint::Upload("5a3c-11ef_9b.x".into()));
    assert_eq!(
        format!("{}?{query}", patch.upstream_path(&base, "harbor.example.com")),
        location
    );
}

#[test]
fn docker_hub_official_images_keep_library_across_redirects_and_pagination() {
    let key = ConnectorKey::new("lab", "hub");
    let base = Url::parse("https://registry-1.docker.io").unwrap();

    let tags = connector_route("/v2/namespaces/lab/connectors/hub/nginx/tags/list");
    let upstream_path = tags.upstream_path(&base, "docker.io");
    assert_eq!(upstream_path, "/v2/library/nginx/tags/list");
    let request = base.join(&upstream_path).unwrap();

    let link = rewrite_link(
        r#"</v2/library/nginx/tags/list?last=1.27&n=100>; rel="next""#,
        &request,
        &base,
        &key,
    );
    let link = link.unwrap();
    assert_eq!(
        link,
        r#"</v2/namespaces/lab/connectors/hub/library/nginx/tags/list?last=1.27&n=100>; rel="next""#
    );
    let next = link.trim_start_matches('<').split_once('?').unwrap().0;
    assert_eq!(
        connector_route(next).upstream_path(&base, "docker.io"),
        "/v2/library/nginx/tags/list"
    );

    // A blob redirect to the CDN is another origin: the caller decides.
    let cdn = "https://production.cloudflare.docker.com/registry-v2/docker/registry/v2/blobs/sha256/aa/x?verify=1";
    assert_eq!(rewrite_location(cdn, &request, &base, &key), None);
}

#[test]
fn proxy_ping_challenge_renders_and_parses_back() {
    let header = render(
        "Bearer",
        &[
            ("realm", "https://proxy.example.com:8443/token"),
            ("service", "connectors"),
        ],
    );
    let challenges = parse_challenges([header.as_str()]);
    assert_eq!(challenges.len(), 1);
    assert_eq!(challenges[0].realm(), Some("https://proxy.example.com:8443/token"));
    assert_eq!(challenges[0].service(), Some("connectors"));
}

#[test]
fn static_token_caller_may_use_only_its_namespace_connectors() {
    let tokens =
        StaticTokens::parse("sa-token-1,system:serviceaccount:lab:builder,uid-1\nuser-token,alice,uid-2\n").unwrap();
    let header = format!("Basic {}", STANDARD.encode("anything:sa-token-1"));
    let token = token_from_authorization(&header).unwrap();
    let identity = block_on(tokens.authenticate(&token)).unwrap().expect("known token");

    let own = ConnectorKey::new("lab", "harbor");
    let other = ConnectorKey::new("prod", "harbor");
    assert_eq!(
        block_on(SameNamespace.authorize(&identity, &own)).unwrap(),
        Decision::Allow
    );
    assert_eq!(
        block_on(SameNamespace.authorize(&identity, &other)).unwrap(),
        Decision::Deny
    );

    let alice = block_on(tokens.authenticate("user-token")).unwrap().unwrap();
    assert_eq!(block_on(SameNamespace.authorize(&alice, &own)).unwrap(), Decision::Deny);
    assert_eq!(block_on(tokens.authenticate("unknown")).unwrap(), None);
}
