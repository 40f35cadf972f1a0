//! Certificate bootstrap and reuse by a second replica, and caBundle repair,
//! against the stand-in API server: a caBundle broken on purpose in the
//! shared real cluster would fail every other test's admissions meanwhile.
//! Renewal of a near-expiry certificate and rotation under load run against
//! the real control plane in `tests/e2e.rs`.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use certs::{CertificateAuthority, CertificateSummary, verify_serving_chain};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use serde_json::{Value, json};
use support::*;
use testing::apiserver::{FakeApiServer, MUTATING_WEBHOOK_CONFIGURATIONS};

fn text(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

async fn secret(client: &kube::Client, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(client.clone(), NAMESPACE)
        .get_opt(name)
        .await
        .unwrap()
}

async fn wait_secret(client: &kube::Client, name: &str) -> Secret {
    eventually(&format!("Secret {name}"), WAIT, || secret(client, name)).await
}

fn webhook_configuration(ca_bundle: &str) -> Value {
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_bundle);
    let webhook = |name: &str| {
        json!({
            "name": name,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "clientConfig": {
                "service": {"name": "connectors-webhook", "namespace": NAMESPACE, "path": "/mutate"},
                "caBundle": bundle,
            },
        })
    };
    json!({
        "metadata": {"name": "connectors"},
        "webhooks": [webhook("pods.connectors.alauda.io"), webhook("more.connectors.alauda.io")],
    })
}

async fn ca_bundles(client: &kube::Client) -> Vec<String> {
    let configuration = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get("connectors")
        .await
        .unwrap();
    configuration
        .webhooks
        .unwrap_or_default()
        .iter()
        .map(|w| String::from_utf8(w.client_config.ca_bundle.clone().unwrap_or_default().0).unwrap())
        .collect()
}

fn service_names(service: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{NAMESPACE}"),
        format!("{service}.{NAMESPACE}.svc"),
        format!("{service}.{NAMESPACE}.svc.cluster.local"),
    ]
}

async fn secret_versions(api: &FakeApiServer) -> Vec<Option<String>> {
    let client = client_as(api, "test").await;
    let mut versions = Vec::new();
    for name in [
        "connectors-proxy-ca",
        "connectors-proxy-tls",
        "connectors-webhook-ca",
        "connectors-webhook-tls",
    ] {
        versions.push(secret(&client, name).await.and_then(|s| s.metadata.resource_version));
    }
    versions
}

#[tokio::test]
async fn bootstrap_creates_certificates_that_chain_to_their_cas_and_a_second_replica_reuses_them() {
    let api = api_server().await;
    api.apply(MUTATING_WEBHOOK_CONFIGURATIONS, webhook_configuration("stale"));
    let first = start(&api, settings("controller-a")).await;
    let client = client_as(&api, "test").await;

    let proxy_ca = wait_secret(&client, "connectors-proxy-ca").await;
    assert_eq!(proxy_ca.type_.as_deref(), Some("kubernetes.io/tls"));
    let ca = CertificateAuthority::from_pem(&text(&proxy_ca, "tls.crt"), &text(&proxy_ca, "tls.key")).unwrap();
    assert_eq!(text(&proxy_ca, "ca.crt"), ca.cert_pem());
    let ca_summary = CertificateSummary::from_pem(ca.cert_pem()).unwrap();
    assert!(ca_summary.is_ca);
    assert!(ca_summary.lifetime() > Duration::from_secs(4 * 365 * 24 * 3600));

    let proxy_tls = wait_secret(&client, "connectors-proxy-tls").await;
    let leaf = CertificateSummary::from_pem(&text(&proxy_tls, "tls.crt")).unwrap();
    assert_eq!(leaf.dns_names, service_names("connectors-proxy"));
    assert_eq!(leaf.ip_addresses, ["10.96.0.5".parse::<IpAddr>().unwrap()]);
    assert!(!leaf.is_ca);
    assert_eq!(text(&proxy_tls, "ca.crt"), ca.cert_pem());
    certs::load_private_key_pem(&text(&proxy_tls, "tls.key")).unwrap();
    for name in service_names("connectors-proxy")
        .iter()
        .map(String::as_str)
        .chain(["10.96.0.5"])
    {
        verify_serving_chain(&text(&proxy_tls, "tls.crt"), ca.cert_pem(), name).unwrap();
    }

    for namespace in [NAMESPACE, CSI_NAMESPACE] {
        let config_map = eventually("the proxy CA ConfigMap", WAIT, || async {
            Api::<ConfigMap>::namespaced(client.clone(), namespace)
                .get_opt("connectors-proxy-ca")
                .await
                .unwrap()
        })
        .await;
        let data = config_map.data.unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["ca.crt"], "only the public part");
        assert_eq!(data["ca.crt"], ca.cert_pem());
    }

    let webhook_ca = wait_secret(&client, "connectors-webhook-ca").await;
    let webhook_ca_pem = text(&webhook_ca, "tls.crt");
    CertificateAuthority::from_pem(&webhook_ca_pem, &text(&webhook_ca, "tls.key")).unwrap();
    assert_ne!(webhook_ca_pem, ca.cert_pem(), "the webhook has its own CA");
    let webhook_tls = wait_secret(&client, "connectors-webhook-tls").await;
    let webhook_leaf = CertificateSummary::from_pem(&text(&webhook_tls, "tls.crt")).unwrap();
    assert_eq!(webhook_leaf.dns_names, service_names("connectors-webhook"));
    verify_serving_chain(
        &text(&webhook_tls, "tls.crt"),
        &webhook_ca_pem,
        "connectors-webhook.connectors-system.svc",
    )
    .unwrap();
    assert!(verify_serving_chain(&text(&webhook_tls, "tls.crt"), ca.cert_pem(), "connectors-webhook").is_err());

    eventually("the caBundles patched", WAIT, || async {
        (ca_bundles(&client).await == [webhook_ca_pem.clone(), webhook_ca_pem.clone()]).then_some(())
    })
    .await;

    // A second replica after the first stops reuses everything.
    let before = secret_versions(&api).await;
    first.stop().await;
    let reads_before = api.requests().len();
    let second = start(&api, settings("controller-b")).await;
    eventually("the second replica leads", WAIT, || async {
        (lease_holder(&client).await.as_deref() == Some("controller-b")).then_some(())
    })
    .await;
    eventually("the second replica checked the webhook certificate", WAIT, || async {
        api.requests()[reads_before..]
            .iter()
            .any(|r| {
                r.method == "GET"
                    && r.path.ends_with("/mutatingwebhookconfigurations/connectors")
                    && r.authorization.as_deref() == Some("Bearer controller-b")
            })
            .then_some(())
    })
    .await;
    assert_eq!(secret_versions(&api).await, before, "nothing was recreated");
    let writes: Vec<_> = api.requests()[reads_before..]
        .iter()
        .filter(|r| r.path.contains("/secrets") || r.path.contains("/configmaps"))
        .filter(|r| r.method != "GET")
        .map(ToString::to_string)
        .collect();
    assert!(writes.is_empty(), "the second replica wrote {writes:?}");
    second.stop().await;
}

#[tokio::test]
async fn ca_bundle_is_patched_again_after_someone_changes_it() {
    let api = api_server().await;
    api.apply(MUTATING_WEBHOOK_CONFIGURATIONS, webhook_configuration("stale"));
    let running = start(&api, settings("controller-a")).await;
    let client = client_as(&api, "test").await;
    let webhook_ca = text(&wait_secret(&client, "connectors-webhook-ca").await, "tls.crt");
    let want = vec![webhook_ca.clone(), webhook_ca.clone()];
    eventually("the caBundles patched", WAIT, || async {
        (ca_bundles(&client).await == want).then_some(())
    })
    .await;
    let patches = |api: &FakeApiServer| {
        api.requests()
            .iter()
            .filter(|r| r.method == "PATCH" && r.path.ends_with("/mutatingwebhookconfigurations/connectors"))
            .count()
    };
    assert_eq!(patches(&api), 1, "one patch for both webhooks");

    // Someone (an install tool re-applying the manifest) resets it; the
    // watch notices long before the 300 s re-check.
    api.apply(MUTATING_WEBHOOK_CONFIGURATIONS, webhook_configuration("reset"));
    eventually("the caBundles patched again", Duration::from_secs(10), || async {
        (ca_bundles(&client).await == want).then_some(())
    })
    .await;
    assert_eq!(patches(&api), 2);
    running.stop().await;
}
