//! Connector status under an egress policy that the real control plane's
//! install does not have (it allows loopback, where the e2e registries
//! listen): a registry on 127.0.0.2 that only 127.0.0.1 may reach must never
//! be dialed. Every other status scenario (healthy, token auth, wrong or
//! missing Secret, unreachable, a new generation) runs against the real API
//! server in `tests/e2e.rs`.

mod support;

use support::*;
use testing::apiserver::{CONNECTORS, SECRETS};

const TEAM: &str = "team-a";

#[tokio::test]
async fn a_registry_at_a_refused_address_is_never_dialed_and_its_status_says_only_why() {
    // A registry on 127.0.0.2 that the policy (127.0.0.1 only) refuses; it
    // counts the connections it gets.
    let refused = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let addr = refused.local_addr().unwrap();
    let dialed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn({
        let dialed = dialed.clone();
        async move {
            while refused.accept().await.is_ok() {
                dialed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let api = api_server().await;
    api.apply(SECRETS, stored_basic_auth_secret(TEAM, "robot", USER, PASSWORD));
    api.apply(
        CONNECTORS,
        connector(TEAM, "inside", "oci", &format!("http://{addr}"), Some("robot")),
    );
    api.apply(
        CONNECTORS,
        connector(TEAM, "metadata", "oci", "http://169.254.169.254", Some("robot")),
    );
    let mut settings = settings("controller-a");
    settings.egress = registry::egress::EgressPolicy::new(["127.0.0.1/32".parse().unwrap()]);
    let running = start(&api, settings).await;
    let client = client_as(&api, "test").await;

    for name in ["inside", "metadata"] {
        let connector = wait_condition(&client, TEAM, name, "LivenessReady", "False", "EgressRefused").await;
        let ready = condition(&connector, "Ready").unwrap();
        assert_eq!(ready.reason.as_deref(), Some("EgressRefused"), "{name}");
        let message = condition(&connector, "LivenessReady")
            .unwrap()
            .message
            .clone()
            .unwrap_or_default();
        assert!(message.contains("egress"), "{name}: {message}");
    }
    assert_eq!(
        dialed.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the controller dialed a refused address"
    );

    // The readiness gauge says both are not Ready; a deleted Connector's
    // series goes with it.
    let metrics_url = format!("http://{}/metrics", running.health);
    let metrics = http_text(&metrics_url).await;
    for name in ["inside", "metadata"] {
        let series = format!(r#"connectors_controller_connector_ready{{namespace="{TEAM}",name="{name}"}} 0"#);
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
    api.delete(CONNECTORS, Some(TEAM), "metadata");
    eventually(
        "the deleted connector's series to go",
        std::time::Duration::from_secs(30),
        || {
            let url = metrics_url.clone();
            async move {
                let metrics = http_text(&url).await;
                (!metrics.contains(r#"name="metadata""#) && metrics.contains(r#"name="inside""#)).then_some(())
            }
        },
    )
    .await;
    running.stop().await;
}

/// A stand-in Harbor: `/v2/` takes the robot's Basic credential; its API
/// (`/api/v2.0/users/current`) takes it only while `api_allows` holds.
async fn stand_in_harbor(api_allows: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::net::SocketAddr {
    use axum::http::{HeaderMap, StatusCode, header};
    use base64::Engine;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    let authorized = move |headers: &HeaderMap| {
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(expected.as_str())
    };
    let challenge = [(header::WWW_AUTHENTICATE, "Basic realm=\"harbor\"")];
    let v2 = {
        let authorized = authorized.clone();
        move |headers: HeaderMap| async move {
            if authorized(&headers) {
                (StatusCode::OK, challenge, "{}")
            } else {
                (StatusCode::UNAUTHORIZED, challenge, "{}")
            }
        }
    };
    let current = move |headers: HeaderMap| async move {
        if authorized(&headers) && api_allows.load(std::sync::atomic::Ordering::SeqCst) {
            (StatusCode::OK, r#"{"username": "robot$team+ci"}"#)
        } else {
            (StatusCode::UNAUTHORIZED, r#"{"errors": [{"code": "UNAUTHORIZED"}]}"#)
        }
    };
    let app = axum::Router::new()
        .route("/v2/", axum::routing::get(v2))
        .route("/api/v2.0/users/current", axum::routing::get(current));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// The class decides: Harbor's class proves the credential on its API as
/// well as on `/v2/`, OCI's does not; a Connector naming a class that does
/// not exist (or an auth type its class lacks) says so, and recovers once
/// the class appears. The shipped classes are created by the controller.
#[tokio::test]
async fn the_connectors_class_decides_its_probes_and_a_missing_class_is_named() {
    let api_allows = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let harbor = format!("http://{}", stand_in_harbor(api_allows.clone()).await);
    let api = api_server().await;
    api.apply(SECRETS, stored_basic_auth_secret(TEAM, "robot", USER, PASSWORD));
    api.apply(CONNECTORS, connector(TEAM, "harbor", "harbor", &harbor, Some("robot")));
    api.apply(CONNECTORS, connector(TEAM, "as-oci", "oci", &harbor, Some("robot")));
    api.apply(CONNECTORS, connector(TEAM, "quay", "quay", &harbor, Some("robot")));
    let mut token_auth = connector(TEAM, "token", "harbor", &harbor, Some("robot"));
    token_auth["spec"]["auth"]["name"] = serde_json::json!("tokenAuth");
    api.apply(CONNECTORS, token_auth);
    let running = start(&api, settings("controller-a")).await;
    let client = client_as(&api, "test").await;

    // Harbor's API refuses the robot: /v2/ alone would have said Ready.
    let refused = wait_condition(&client, TEAM, "harbor", "AuthReady", "False", "Unauthorized").await;
    let message = condition(&refused, "AuthReady")
        .unwrap()
        .message
        .clone()
        .unwrap_or_default();
    assert!(message.contains("/api/v2.0/users/current"), "{message}");
    assert_eq!(condition(&refused, "ConnectorClassReady").unwrap().status, "True");
    wait_condition(&client, TEAM, "as-oci", "Ready", "True", "Ready").await;
    let missing = wait_condition(
        &client,
        TEAM,
        "quay",
        "ConnectorClassReady",
        "False",
        "ConnectorClassNotFound",
    )
    .await;
    let ready = condition(&missing, "Ready").unwrap();
    assert_eq!(ready.reason.as_deref(), Some("ConnectorClassNotFound"));
    assert!(
        ready.message.as_deref().unwrap_or_default().contains("quay"),
        "{ready:?}"
    );
    let unsupported = wait_condition(
        &client,
        TEAM,
        "token",
        "ConnectorClassReady",
        "False",
        "AuthTypeNotSupported",
    )
    .await;
    let message = condition(&unsupported, "ConnectorClassReady")
        .unwrap()
        .message
        .clone()
        .unwrap_or_default();
    assert!(
        message.contains("tokenAuth") && message.contains("basicAuth"),
        "{message}"
    );

    // The shipped classes exist (the controller created them); a new class
    // is data: a copy of oci under another name.
    let classes: kube::Api<connector::ConnectorClass> = kube::Api::all(client.clone());
    let mut quay = classes
        .get("oci")
        .await
        .expect("the controller created the shipped oci class");
    quay.metadata = kube::core::ObjectMeta {
        name: Some("quay".into()),
        ..Default::default()
    };
    classes.create(&Default::default(), &quay).await.unwrap();
    wait_condition(&client, TEAM, "quay", "Ready", "True", "Ready").await;

    // Harbor's API accepts the robot now: the next probe (a Secret change
    // re-probes at once) says Ready.
    api_allows.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut secret = stored_basic_auth_secret(TEAM, "robot", USER, PASSWORD);
    secret["metadata"]["labels"] = serde_json::json!({"touched": "yes"});
    api.apply(SECRETS, secret);
    wait_condition(&client, TEAM, "harbor", "Ready", "True", "Ready").await;
    running.stop().await;
    testing::credentials::assert_no_credential(&logs().text(), "the controller's logs", USER, PASSWORD);
}

#[tokio::test]
async fn beyond_the_secret_watch_limit_the_secrets_of_connectors_not_ready_are_followed_first() {
    let (registry, api) = registry_lab(TEAM, Some(PASSWORD)).await;
    api.apply(
        SECRETS,
        stored_basic_auth_secret(TEAM, "wrong", USER, "not-the-password"),
    );
    api.apply(
        CONNECTORS,
        connector(TEAM, "broken", "oci", &registry.url(), Some("wrong")),
    );
    let mut settings = settings("controller-a");
    settings.status.secret_watches = 1;
    let running = start(&api, settings).await;
    let client = client_as(&api, "test").await;
    wait_condition(&client, TEAM, "registry", "Ready", "True", "Ready").await;
    wait_condition(&client, TEAM, "broken", "Ready", "False", "Unauthorized").await;

    // One watch in the team's namespace, on the Secret of the connector
    // that is not Ready (before: one on every referenced Secret).
    let in_team = |api: &testing::apiserver::FakeApiServer| {
        api.open_watches_asking(SECRETS)
            .into_iter()
            .filter(|asked| asked.starts_with(&format!("{TEAM}/")))
            .collect::<Vec<_>>()
    };
    eventually("only the broken connector's Secret is watched", WAIT, || async {
        (in_team(&api) == [format!("{TEAM}/metadata.name=wrong")]).then_some(())
    })
    .await;

    // The admin's fix is seen at once, not at the next probe (300 s away).
    api.apply(SECRETS, stored_basic_auth_secret(TEAM, "wrong", USER, PASSWORD));
    wait_condition(&client, TEAM, "broken", "Ready", "True", "Ready").await;
    // Both Ready now: one of their Secrets is followed, still one watch.
    eventually("one Secret watch in the team's namespace", WAIT, || async {
        (in_team(&api).len() == 1).then_some(())
    })
    .await;
    running.stop().await;
}
