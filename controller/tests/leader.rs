//! Leader election against the stand-in API server, which records who sent
//! each write: only the Lease holder writes. Takeover after a crash and at
//! once after a clean stop run against the real control plane in
//! `tests/e2e.rs`.

mod support;

use std::time::Duration;

use support::*;
use testing::apiserver::{CONNECTORS, FakeApiServer, SECRETS};

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

/// Secret watches `identity` opened.
fn secret_watches_by(api: &FakeApiServer, identity: &str) -> Vec<String> {
    let bearer = format!("Bearer {identity}");
    api.requests()
        .iter()
        .filter(|r| r.authorization.as_deref() == Some(bearer.as_str()))
        .filter(|r| r.path.contains("/secrets") && r.is_watch())
        .filter(|r| !r.path.contains("/namespaces/connectors-system/"))
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
    assert!(
        !secret_watches_by(&api, "controller-a").is_empty(),
        "the leader follows the Secret"
    );
    assert_eq!(
        secret_watches_by(&api, "controller-b"),
        Vec::<String>::new(),
        "the follower holds no Secret watch"
    );
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

/// A new leader finds the connectors Ready at their generation, as the last
/// one left them: it probes them over the probe interval (300 s here), not
/// all at once as it takes over; a change is still acted on at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_spreads_the_probes_of_connectors_already_ready() {
    const COUNT: usize = 10;
    let (registry, api) = registry_lab(TEAM, Some(PASSWORD)).await;
    let mut names = vec!["registry".to_owned()];
    for i in 1..COUNT {
        let name = format!("registry-{i}");
        api.apply(
            CONNECTORS,
            connector(TEAM, &name, "oci", &registry.url(), Some("robot")),
        );
        names.push(name);
    }
    let client = client_as(&api, "test").await;
    let first = start(&api, settings("controller-a")).await;
    for name in &names {
        wait_condition(&client, TEAM, name, "Ready", "True", "Ready").await;
    }
    // Each probe's authenticated `/v2/` is one 200 in the registry's log.
    let probes = || registry.access_log_lines("\"GET /v2/ HTTP/1.1\" 200").len();
    first.stop().await;
    let before = probes();

    let second = start(&api, settings("controller-b")).await;
    eventually("controller-b leads", WAIT, || async {
        (lease_holder(&client).await.as_deref() == Some("controller-b")).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let probed = probes() - before;
    assert!(
        probed <= COUNT / 2,
        "{probed} of {COUNT} Ready connectors were probed as the new leader took over"
    );

    api.apply(
        SECRETS,
        stored_basic_auth_secret(TEAM, "robot", USER, "rotated-elsewhere"),
    );
    for name in &names {
        wait_condition(&client, TEAM, name, "AuthReady", "False", "Unauthorized").await;
    }
    second.stop().await;
}
