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
    running.stop().await;
}
