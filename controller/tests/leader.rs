//! Leader election against the stand-in API server, which records who sent
//! each write: only the Lease holder writes. Takeover after a crash and at
//! once after a clean stop run against the real control plane in
//! `tests/e2e.rs`.

mod support;

use std::time::Duration;

use support::*;
use testing::apiserver::{FakeApiServer, SECRETS};

const TEAM: &str = "team-a";

/// Writes (anything but GET) that `identity` sent to status, events,
/// secrets or configmaps.
fn writes_by(api: &FakeApiServer, identity: &str) -> Vec<String> {
    let bearer = format!("Bearer {identity}");
    api.requests()
        .iter()
        .filter(|r| r.method != "GET" && r.authorization.as_deref() == Some(bearer.as_str()))
        .filter(|r| !r.path.contains("/leases"))
        .map(ToString::to_string)
        .collect()
}

#[tokio::test]
async fn only_the_leader_writes_and_a_follower_takes_over_after_the_lease_expires() {
    let (_registry, api) = registry_lab(TEAM, Some(PASSWORD)).await;
    let client = client_as(&api, "test").await;
    let leader = start(&api, settings("controller-a")).await;
    eventually("controller-a leads", WAIT, || async {
        (lease_holder(&client).await.as_deref() == Some("controller-a")).then_some(())
    })
    .await;
    let follower = start(&api, settings("controller-b")).await;
    wait_condition(&client, TEAM, "registry", "Ready", "True", "Ready").await;
    // The follower's cache syncs and it stays ready while following.
    eventually("the follower is ready", WAIT, || async {
        let url = format!("http://{}/readyz", follower.health);
        (http_status(&url).await == Some(200)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!writes_by(&api, "controller-a").is_empty(), "the leader wrote");
    assert_eq!(
        writes_by(&api, "controller-b"),
        Vec::<String>::new(),
        "the follower wrote nothing"
    );
    let metrics = http_text(&format!("http://{}/metrics", follower.health)).await;
    assert!(metrics.contains("connectors_controller_leader 0"), "{metrics}");

    // The leader crashes: the follower waits for the 2 s lease to expire.
    leader.crash();
    let crashed_at = tokio::time::Instant::now();
    eventually("controller-b takes over", Duration::from_secs(10), || async {
        (lease_holder(&client).await.as_deref() == Some("controller-b")).then_some(())
    })
    .await;
    assert!(
        crashed_at.elapsed() >= Duration::from_millis(1500),
        "took over after {:?}, before the lease could expire",
        crashed_at.elapsed()
    );
    // The new leader does the work: a broken Secret shows in the status.
    api.apply(
        SECRETS,
        stored_basic_auth_secret(TEAM, "robot", USER, "rotated-elsewhere"),
    );
    wait_condition(&client, TEAM, "registry", "AuthReady", "False", "Unauthorized").await;
    eventually("controller-b writes status", WAIT, || async {
        writes_by(&api, "controller-b")
            .iter()
            .any(|w| w.starts_with("PATCH") && w.contains("/connectors/registry/status"))
            .then_some(())
    })
    .await;
    let metrics = http_text(&format!("http://{}/metrics", follower.health)).await;
    assert!(metrics.contains("connectors_controller_leader 1"), "{metrics}");
    follower.stop().await;
    assert_eq!(lease_holder(&client).await, None, "released on shutdown");
}

async fn http_status(url: &str) -> Option<u16> {
    let (status, _) = http_get(url).await?;
    Some(status)
}
