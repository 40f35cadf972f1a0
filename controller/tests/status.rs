//! Connector status against a fake API server and real registries
//! (distribution with htpasswd and with token auth).

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;
use testing::apiserver::{CONNECTORS, SECRETS};
use testing::credentials::assert_no_credential;
use testing::{Registry, RegistryOptions, TokenServer, TokenServerOptions};

const TEAM: &str = "team-a";

#[tokio::test]
async fn healthy_connector_gets_all_conditions_true_and_its_proxy_address() {
    let (_registry, api) = registry_lab(TEAM, Some(PASSWORD)).await;
    let running = start(&api, settings("controller-a")).await;
    let client = client_as(&api, "test").await;

    let connector = wait_condition(&client, TEAM, "registry", "Ready", "True", "Ready").await;
    for (type_, reason) in [
        ("SecretReady", "SecretValid"),
        ("LivenessReady", "Alive"),
        ("AuthReady", "Authenticated"),
    ] {
        let found = condition(&connector, type_).unwrap();
        assert_eq!(
            (found.status.as_str(), found.reason.as_deref()),
            ("True", Some(reason)),
            "{type_}"
        );
        assert!(found.last_transition_time.is_some() && found.last_probe_time.is_some());
    }
    let status = connector.status.as_ref().unwrap();
    assert_eq!(status.observed_generation, Some(1));
    let address = status.proxy.as_ref().unwrap().http_address.as_ref().unwrap();
    assert_eq!(
        address.url,
        format!("{PROXY_URL}/namespaces/{TEAM}/connectors/registry")
    );
    assert_eq!(address.audience.as_deref(), Some("connectors-proxy"));

    // The proxy CA from the bootstrap is published in the status.
    let connector = eventually("CACerts in the status", WAIT, || async {
        let connector = get_connector(&client, TEAM, "registry").await;
        let ca = connector
            .status
            .as_ref()?
            .proxy
            .as_ref()?
            .http_address
            .as_ref()?
            .ca_certs
            .clone()?;
        Some((connector, ca))
    })
    .await;
    certs::load_certs_pem(&connector.1).expect("CACerts is PEM");

    let ready_events = eventually("a Ready event", WAIT, || async {
        let events = events(&client, TEAM).await;
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("Ready") && e.type_.as_deref() == Some("Normal"))
            .then_some(events)
    })
    .await;
    let regarding = ready_events[0].regarding.as_ref().unwrap();
    assert_eq!(regarding.kind.as_deref(), Some("Connector"));
    assert_eq!(regarding.name.as_deref(), Some("registry"));

    let status_text = serde_json::to_string(&connector.0.status).unwrap();
    assert_no_credential(&status_text, "the status", USER, PASSWORD);
    // NB: anyone who may read the Connector reads its status: not even the
    // robot's name is there.
    assert!(!status_text.contains(USER), "the status names the robot: {status_text}");
    assert_no_credential(&serde_json::to_string(&ready_events).unwrap(), "events", USER, PASSWORD);
    assert_no_credential(&logs().text(), "the logs", USER, PASSWORD);
    running.stop().await;
}

#[tokio::test]
async fn token_auth_registry_is_probed_through_a_real_token_exchange() {
    let tokens = TokenServer::start(TokenServerOptions::with_user(USER, PASSWORD)).unwrap();
    let registry = Registry::start(RegistryOptions::token(&tokens)).await.unwrap();
    let api = api_server().await;
    api.apply(SECRETS, stored_basic_auth_secret(TEAM, "good", USER, PASSWORD));
    api.apply(SECRETS, stored_basic_auth_secret(TEAM, "bad", USER, "not-the-password"));
    api.apply(
        CONNECTORS,
        connector(TEAM, "good", "oci", &registry.url(), Some("good")),
    );
    api.apply(CONNECTORS, connector(TEAM, "bad", "oci", &registry.url(), Some("bad")));
    let running = start(&api, settings("controller-a")).await;
    let client = client_as(&api, "test").await;

    wait_condition(&client, TEAM, "good", "AuthReady", "True", "Authenticated").await;
    let bad = wait_condition(&client, TEAM, "bad", "AuthReady", "False", "Unauthorized").await;
    assert_eq!(condition(&bad, "LivenessReady").unwrap().status, "True");
    assert_eq!(
        condition(&bad, "Ready").unwrap().reason.as_deref(),
        Some("Unauthorized")
    );
    let log = tokens.requests_log();
    assert!(
        log.iter().any(|r| r.user.as_deref() == Some(USER) && r.status == 200),
        "the token service issued a token: {log:?}"
    );
    assert!(
        log.iter().any(|r| r.status == 401),
        "the wrong password was refused: {log:?}"
    );
    assert_no_credential(
        &serde_json::to_string(&bad.status).unwrap(),
        "the status",
        USER,
        "not-the-password",
    );
    assert_no_credential(&logs().text(), "the logs", USER, PASSWORD);
    running.stop().await;
}

#[tokio::test]
async fn unreachable_registry_is_not_live() {
    // A port that was just free: nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let api = api_server().await;
    api.apply(SECRETS, stored_basic_auth_secret(TEAM, "robot", USER, PASSWORD));
    api.apply(
        CONNECTORS,
        connector(TEAM, "gone", "oci", &format!("http://127.0.0.1:{port}"), Some("robot")),
    );
    let running = start(&api, settings("controller-a")).await;
    let client = client_as(&api, "test").await;

    let connector = wait_condition(&client, TEAM, "gone", "LivenessReady", "False", "Unreachable").await;
    assert_eq!(condition(&connector, "SecretReady").unwrap().status, "True");
    assert_eq!(condition(&connector, "AuthReady").unwrap().status, "Unknown");
    let ready = condition(&connector, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_deref()),
        ("False", Some("Unreachable"))
    );
    running.stop().await;
}

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
    running.stop().await;
}

#[tokio::test]
async fn wrong_password_is_unauthorized_until_the_secret_is_fixed() {
    let wrong = "wrong-Passw0rd";
    let (_registry, api) = registry_lab(TEAM, Some(wrong)).await;
    let running = start(&api, settings("controller-a")).await;
    let client = client_as(&api, "test").await;

    let refused = wait_condition(&client, TEAM, "registry", "AuthReady", "False", "Unauthorized").await;
    let refused_at = condition(&refused, "Ready").unwrap().last_transition_time.clone();
    eventually("a Warning event for the refusal", WAIT, || async {
        events(&client, TEAM)
            .await
            .iter()
            .any(|e| e.reason.as_deref() == Some("Unauthorized") && e.type_.as_deref() == Some("Warning"))
            .then_some(())
    })
    .await;

    // Fixing the Secret re-probes at once (the backoff is 10 s).
    let fixed_at = tokio::time::Instant::now();
    api.apply(SECRETS, stored_basic_auth_secret(TEAM, "robot", USER, PASSWORD));
    let ready = wait_condition(&client, TEAM, "registry", "Ready", "True", "Ready").await;
    assert!(
        fixed_at.elapsed() < Duration::from_secs(8),
        "re-probed on the Secret change"
    );
    // Whole-second timestamps: the transition is no earlier than the refusal.
    assert!(condition(&ready, "Ready").unwrap().last_transition_time >= refused_at);
    let events = eventually("a Normal event for the recovery", WAIT, || async {
        let events = events(&client, TEAM).await;
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("Ready") && e.type_.as_deref() == Some("Normal"))
            .then_some(events)
    })
    .await;
    let events_text = serde_json::to_string(&events).unwrap();
    for password in [wrong, PASSWORD] {
        assert_no_credential(&events_text, "events", USER, password);
        assert_no_credential(
            &serde_json::to_string(&refused.status).unwrap(),
            "status",
            USER,
            password,
        );
        assert_no_credential(&serde_json::to_string(&ready.status).unwrap(), "status", USER, password);
        assert_no_credential(&logs().text(), "the logs", USER, password);
    }
    running.stop().await;
}

#[tokio::test]
async fn missing_secret_is_reported_until_it_is_created() {
    let (_registry, api) = registry_lab(TEAM, None).await;
    let running = start(&api, settings("controller-a")).await;
    let client = client_as(&api, "test").await;

    let missing = wait_condition(&client, TEAM, "registry", "SecretReady", "False", "SecretNotFound").await;
    assert_eq!(condition(&missing, "LivenessReady").unwrap().status, "True");
    assert_eq!(condition(&missing, "AuthReady").unwrap().status, "Unknown");
    assert_eq!(
        condition(&missing, "Ready").unwrap().reason.as_deref(),
        Some("SecretNotFound")
    );

    api.apply(SECRETS, stored_basic_auth_secret(TEAM, "robot", USER, PASSWORD));
    wait_condition(&client, TEAM, "registry", "Ready", "True", "Ready").await;
    running.stop().await;
}

#[tokio::test]
async fn a_new_generation_is_probed_at_once_and_observed() {
    let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD))
        .await
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let api = api_server().await;
    api.apply(SECRETS, stored_basic_auth_secret(TEAM, "robot", USER, PASSWORD));
    api.apply(
        CONNECTORS,
        connector(
            TEAM,
            "registry",
            "oci",
            &format!("http://127.0.0.1:{port}"),
            Some("robot"),
        ),
    );
    let running = start(&api, settings("controller-a")).await;
    let client = client_as(&api, "test").await;
    let first = wait_condition(&client, TEAM, "registry", "LivenessReady", "False", "Unreachable").await;
    assert_eq!(first.status.as_ref().unwrap().observed_generation, Some(1));

    let mut moved = connector(TEAM, "registry", "oci", &registry.url(), Some("robot"));
    moved["status"] = json!(first.status);
    api.apply(CONNECTORS, moved);
    let ready = wait_condition(&client, TEAM, "registry", "Ready", "True", "Ready").await;
    assert_eq!(ready.metadata.generation, Some(2));
    assert_eq!(ready.status.as_ref().unwrap().observed_generation, Some(2));
    running.stop().await;
}
