//! `connectors webhook` in cluster mode: no `--store`, a kubeconfig (via
//! `KUBECONFIG`) pointing at a fake API server that speaks the real list/watch
//! wire format. Readiness follows the initial lists, admission reads the
//! watched connectors, and a connector deleted by a watch event is gone from
//! the next review.
//!
//! The stand-in stays here because it can hold the initial lists back (to
//! show the webhook is not ready before them) and record what the webhook
//! asked for; the API server calling the webhook runs against the real
//! control plane in `tests/e2e.rs`.

mod support;

use std::time::{Duration, Instant};

use base64::Engine;
use certs::CertificateAuthority;
use serde_json::{Value, json};
use support::Process;
use testing::apiserver::{CONNECTORS, FakeApiServer, NAMESPACES};

const DAY: Duration = Duration::from_secs(24 * 3600);

/// The longest the test waits for one thing to happen.
const WAIT: Duration = Duration::from_secs(10);

const TOKEN: &str = "dummy-token-for-the-fake";

fn pod_review(uid: &str, image: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "app",
            "namespace": "team",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:team:deployer"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "app",
                    "namespace": "team",
                    "annotations": {"connectors.cpaas.io/connector": "harbor"},
                },
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    })
}

/// Posts `review` and returns the `response` of the answer.
async fn post_review(client: &reqwest::Client, url: &str, review: &Value) -> Value {
    let response = client.post(url).json(review).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    answer["response"].clone()
}

async fn readyz(client: &reqwest::Client, url: &str) -> u16 {
    client.get(url).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_webhook_is_ready_after_the_initial_lists_and_follows_watched_connectors() {
    let api = FakeApiServer::start(&[CONNECTORS, NAMESPACES]).await;
    api.apply(
        NAMESPACES,
        json!({
            "metadata": {"name": "team", "labels": {"kubernetes.io/metadata.name": "team"}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }),
    );
    api.apply(
        CONNECTORS,
        json!({
            "metadata": {"name": "harbor", "namespace": "team"},
            "spec": {
                "connectorClassName": "harbor",
                "address": "https://harbor.example.com",
                "auth": {"name": "basicAuth", "secretRef": {"name": "robot"}},
            },
        }),
    );
    api.hold_lists(CONNECTORS);
    api.hold_lists(NAMESPACES);

    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("webhook cluster test CA", DAY).unwrap();
    let issued = ca
        .issue_serving(&["webhook.test".to_owned()], &["127.0.0.1".parse().unwrap()], DAY)
        .unwrap();
    certs::write_serving_bundle(dir.path(), &ca, &issued).unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig(TOKEN)).unwrap();

    let path = dir.path().to_path_buf();
    let (webhook, addr) = tokio::task::spawn_blocking(move || {
        let cert = path.join("tls.crt");
        let key = path.join("tls.key");
        Process::start_with_env(
            &[
                "webhook",
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
                "--pull-address",
                "proxy.example.com",
            ],
            &[("KUBECONFIG", path.join("kubeconfig").to_str().unwrap())],
            "webhook listening",
        )
    })
    .await
    .unwrap();
    let client = support::webhook_client(ca.cert_pem(), addr);
    let base = format!("https://webhook.test:{}", addr.port());
    let readyz_url = format!("{base}/readyz");
    let mutate_url = format!("{base}/mutate");

    // Not ready while the API server holds the initial lists.
    let listed = |path: &'static str| move |r: &testing::apiserver::RecordedRequest| r.path == path && !r.is_watch();
    assert!(
        api.wait_for_request(WAIT, listed("/apis/connectors.alauda.io/v1alpha1/connectors"))
            .await,
        "{}",
        webhook.log_text()
    );
    assert!(api.wait_for_request(WAIT, listed("/api/v1/namespaces")).await);
    assert_eq!(readyz(&client, &readyz_url).await, 503);

    // Ready once both lists arrive.
    api.release_lists(CONNECTORS);
    api.release_lists(NAMESPACES);
    let deadline = Instant::now() + WAIT;
    while readyz(&client, &readyz_url).await != 200 {
        assert!(Instant::now() < deadline, "never ready: {}", webhook.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The client came from the kubeconfig: its token reached the API server.
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.authorization.as_deref() == Some(&*format!("Bearer {TOKEN}"))),
        "{requests:#?}"
    );

    // A pod using the listed connector is rewritten to pull through the proxy.
    let review = pod_review("u-1", "harbor.example.com/x/y:1");
    let response = post_review(&client, &mutate_url, &review).await;
    assert_eq!(response["uid"], "u-1");
    assert_eq!(response["allowed"], true, "{response}");
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("a base64 patch"))
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    assert_eq!(
        pod["spec"]["containers"][0]["image"],
        "proxy.example.com/namespaces/team/connectors/harbor/x/y:1"
    );

    // The connector is deleted: a watch event, not a restart, makes the next review deny.
    api.delete(CONNECTORS, Some("team"), "harbor").unwrap();
    let deadline = Instant::now() + WAIT;
    let denied = loop {
        let response = post_review(&client, &mutate_url, &pod_review("u-2", "harbor.example.com/x/y:1")).await;
        if response["allowed"] == false {
            break response;
        }
        assert!(
            Instant::now() < deadline,
            "the deleted connector is still used: {}",
            webhook.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let message = denied["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("connector team/harbor does not exist"), "{denied}");
    assert!(denied.get("patch").is_none());

    // The webhook listed and watched connectors and namespace metadata, nothing else.
    for request in api.requests() {
        match request.path.as_str() {
            "/apis/connectors.alauda.io/v1alpha1/connectors" => {}
            "/api/v1/namespaces" => assert!(request.wants_metadata_only(), "{request}"),
            _ => panic!("unexpected request {request}"),
        }
    }
}
