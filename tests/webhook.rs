//! `connectors webhook` as a process on 127.0.0.1 with a generated
//! certificate: AdmissionReviews over verified HTTPS, bad input, probes,
//! metrics, certificate reload and graceful shutdown.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use certs::CertificateAuthority;
use serde_json::{Value, json};
use support::Process;
use testing::StoreYaml;

/// One namespace with a Harbor connector and its robot's Secret.
fn store() -> String {
    StoreYaml::new("team")
        .namespace_object(&[], &[])
        .basic_auth("robot", "robot$team", "never-in-a-response-7f3a")
        .connector_of_class("harbor", "harbor", "https://harbor.example.com", Some("robot"))
        .build()
}

const DAY: Duration = Duration::from_secs(24 * 3600);

struct Webhook {
    process: Process,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    ca: CertificateAuthority,
}

fn write_certs(dir: &Path, ca: &CertificateAuthority) {
    let issued = ca
        .issue_serving(&["webhook.test".to_owned()], &["127.0.0.1".parse().unwrap()], DAY)
        .unwrap();
    certs::write_serving_bundle(dir, ca, &issued).unwrap();
}

fn start() -> Webhook {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let ca = CertificateAuthority::generate("webhook test CA", DAY).unwrap();
    write_certs(&path, &ca);
    std::fs::write(path.join("store.yaml"), store()).unwrap();
    let (process, addr) = Process::start(
        &[
            "webhook",
            "--store",
            path.join("store.yaml").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            path.join("tls.crt").to_str().unwrap(),
            "--tls-key",
            path.join("tls.key").to_str().unwrap(),
            "--tls-reload-seconds",
            "1",
            "--pull-address",
            "proxy.example.com",
        ],
        "webhook listening",
    );
    Webhook {
        process,
        addr,
        _dir: dir,
        dir: path,
        ca,
    }
}

fn review(uid: &str, operation: &str, sub_resource: Option<&str>, annotations: Value, dry_run: bool) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "subResource": sub_resource,
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "app",
            "namespace": "team",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:team:deployer", "groups": ["system:authenticated"]},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "app", "namespace": "team", "annotations": annotations},
                "spec": {
                    "containers": [{"name": "app", "image": "harbor.example.com/team/app:v1", "futureField": {"kept": true}}],
                    "futureSpecField": "kept",
                },
            },
            "oldObject": null,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    })
}

async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> (u16, String) {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_mutates_pods_over_verified_https_and_rejects_bad_input() {
    let webhook = start();
    let client = support::webhook_client(webhook.ca.cert_pem(), webhook.addr);
    let url = format!("https://webhook.test:{}/mutate", webhook.addr.port());
    let annotated = json!({"connectors.cpaas.io/connector": "harbor"});

    // A selected pod: allowed, with a base64 JSONPatch that applies and keeps unknown fields.
    let body = serde_json::to_vec(&review("u-1", "CREATE", None, annotated.clone(), false)).unwrap();
    let (status, text) = post(&client, &url, body).await;
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], "u-1");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch_b64 = response["patch"]
        .as_str()
        .expect("the patch is a base64 string, not an array");
    let patch: json_patch::Patch =
        serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(patch_b64).unwrap()).unwrap();
    let mut pod = review("u-1", "CREATE", None, annotated.clone(), false)["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    assert_eq!(
        pod["spec"]["containers"][0]["image"],
        "proxy.example.com/namespaces/team/connectors/harbor/team/app:v1"
    );
    assert_eq!(pod["spec"]["containers"][0]["futureField"]["kept"], true);
    assert_eq!(pod["spec"]["futureSpecField"], "kept");

    // dryRun gets the same answer (the mutation has no side effects).
    let body = serde_json::to_vec(&review("u-dry", "CREATE", None, annotated.clone(), true)).unwrap();
    let (_, text) = post(&client, &url, body).await;
    let dry: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dry["response"]["patch"], response["patch"]);

    // An unselected pod: allowed, no patch.
    let body = serde_json::to_vec(&review("u-2", "CREATE", None, json!({}), false)).unwrap();
    let (_, text) = post(&client, &url, body).await;
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());

    // An ordinary pod UPDATE is allowed untouched; the ephemeralcontainers subresource is mutated.
    let body = serde_json::to_vec(&review("u-3", "UPDATE", None, annotated.clone(), false)).unwrap();
    let (_, text) = post(&client, &url, body).await;
    assert!(
        serde_json::from_str::<Value>(&text).unwrap()["response"]
            .get("patch")
            .is_none()
    );
    let mut ephemeral = review("u-4", "UPDATE", Some("ephemeralcontainers"), annotated.clone(), false);
    ephemeral["request"]["object"]["spec"]["ephemeralContainers"] =
        json!([{"name": "dbg", "image": "harbor.example.com/t/dbg"}]);
    let (_, text) = post(&client, &url, serde_json::to_vec(&ephemeral).unwrap()).await;
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["response"]["patchType"],
        "JSONPatch"
    );

    // An unknown connector: denied with a message naming it; never a partial patch.
    let body = serde_json::to_vec(&review(
        "u-5",
        "CREATE",
        None,
        json!({"connectors.cpaas.io/connector": "harbor,ghost"}),
        false,
    ))
    .unwrap();
    let (status, text) = post(&client, &url, body).await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["response"]["uid"], "u-5");
    assert_eq!(answer["response"]["allowed"], false);
    assert_eq!(answer["response"]["status"]["code"], 404);
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("connector team/ghost does not exist"), "{message}");
    assert!(answer["response"].get("patch").is_none());

    // An oversized review (tens of MiB) gets an HTTP answer, not a reset.
    let mut huge = serde_json::to_vec(&review("u-big", "CREATE", None, annotated.clone(), false)).unwrap();
    huge.resize(24 * 1024 * 1024, b' ');
    let (status, text) = post(&client, &url, huge).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("larger than"), "{text}");

    // A non-Pod kind: denied with a reason.
    let mut deployment = review("u-6", "CREATE", None, json!({}), false);
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let (_, text) = post(&client, &url, serde_json::to_vec(&deployment).unwrap()).await;
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    assert!(
        answer["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("only core/v1 Pods")
    );

    // Malformed bodies: a clean 400 with a reason.
    for bad in [
        &b"{not json"[..],
        b"[]",
        b"{}",
        br#"{"apiVersion":"admission.k8s.io/v1beta1","request":{}}"#,
        br#"{"request":{"uid":"","kind":{},"operation":"CREATE"}}"#,
    ] {
        let (status, text) = post(&client, &url, bad.to_vec()).await;
        assert_eq!(status, 400, "{}: {text}", String::from_utf8_lossy(bad));
        assert!(!text.is_empty());
    }
    // An oversized body: 413, and the server still answers afterwards.
    let (status, _) = post(&client, &url, vec![b' '; 9 * 1024 * 1024]).await;
    assert_eq!(status, 413);

    // Probes and metrics.
    let base = format!("https://webhook.test:{}", webhook.addr.port());
    assert_eq!(
        client.get(format!("{base}/healthz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(client.get(format!("{base}/readyz")).send().await.unwrap().status(), 200);
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"connectors_webhook_admission_reviews_total{verdict="mutated",reason=""} 3"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"verdict="denied""#), "{metrics}");
    assert!(metrics.contains(r#"verdict="invalid""#), "{metrics}");
    assert!(
        metrics.contains("connectors_webhook_admission_review_duration_seconds_count"),
        "{metrics}"
    );

    // Nothing the webhook said, to clients or in its logs, holds the credential.
    assert!(!webhook.process.log_text().contains("never-in-a-response-7f3a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_chain_is_verified_and_a_rotated_certificate_is_served_without_restart() {
    let webhook = start();
    let url = format!("https://webhook.test:{}/healthz", webhook.addr.port());

    // The chain verifies by DNS name and by IP SAN; another CA and another name do not.
    assert!(
        support::webhook_client(webhook.ca.cert_pem(), webhook.addr)
            .get(&url)
            .send()
            .await
            .is_ok()
    );
    let by_ip = format!("https://127.0.0.1:{}/healthz", webhook.addr.port());
    assert!(
        support::webhook_client(webhook.ca.cert_pem(), webhook.addr)
            .get(&by_ip)
            .send()
            .await
            .is_ok()
    );
    let other_ca = CertificateAuthority::generate("another CA", DAY).unwrap();
    assert!(
        support::webhook_client(other_ca.cert_pem(), webhook.addr)
            .get(&url)
            .send()
            .await
            .is_err()
    );
    let wrong_name = reqwest::Client::builder()
        .use_preconfigured_tls(
            certs::client_config(certs::root_store_from_pem(webhook.ca.cert_pem()).unwrap(), &[]).unwrap(),
        )
        .resolve("not-the-webhook.test", webhook.addr)
        .build()
        .unwrap();
    let wrong = format!("https://not-the-webhook.test:{}/healthz", webhook.addr.port());
    assert!(wrong_name.get(&wrong).send().await.is_err());

    // Rotate to a certificate from a new CA: served within a few reload intervals.
    write_certs(&webhook.dir, &other_ca);
    let rotated = support::webhook_client(other_ca.cert_pem(), webhook.addr);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if rotated.get(&url).send().await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was not served: {}",
            webhook.process.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A broken file keeps the current certificate.
    std::fs::write(webhook.dir.join("tls.crt"), "garbage").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(rotated.get(&url).send().await.is_ok());
}

#[test]
fn sigterm_shuts_the_webhook_down_cleanly() {
    let mut webhook = start();
    webhook.process.terminate();
    let status = webhook
        .process
        .wait_exit(Duration::from_secs(20))
        .expect("the webhook exits after SIGTERM");
    assert!(status.success(), "{status:?}: {}", webhook.process.log_text());
    let _ = (&webhook.addr, &webhook.dir);
}

#[test]
fn a_missing_certificate_or_store_fails_at_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("store.yaml"), store()).unwrap();
    let (status, _, stderr) = support::run(
        &[
            "webhook",
            "--store",
            "store.yaml",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "nope.crt",
            "--tls-key",
            "nope.key",
        ],
        None,
        dir.path(),
    );
    assert!(!status.success());
    assert!(stderr.contains("failed to load the serving certificate"), "{stderr}");

    std::fs::write(
        dir.path().join("bad.yaml"),
        "kind: Connector\nmetadata: {name: x}\nspec: {connectorClassName: oci}\n",
    )
    .unwrap();
    let (status, _, stderr) = support::run(
        &[
            "webhook",
            "--store",
            "bad.yaml",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "a",
            "--tls-key",
            "b",
        ],
        None,
        dir.path(),
    );
    assert!(!status.success());
    assert!(stderr.contains("missing field `address`"), "{stderr}");
}
