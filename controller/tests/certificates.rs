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

/// The certificates of a PEM bundle.
fn bundle(pem: &str) -> Vec<Vec<u8>> {
    certs::load_certs_pem(pem).unwrap().iter().map(|c| c.to_vec()).collect()
}

fn der(pem: &str) -> Vec<u8> {
    certs::load_certs_pem(pem).unwrap()[0].to_vec()
}

#[tokio::test]
async fn a_requested_ca_rotation_is_trusted_everywhere_before_it_signs_and_the_old_ca_after() {
    let api = api_server().await;
    api.apply(MUTATING_WEBHOOK_CONFIGURATIONS, webhook_configuration("stale"));
    let mut settings = settings("controller-a");
    let overlap = Duration::from_secs(3);
    settings.bootstrap.ca_overlap = overlap;
    let running = start(&api, settings).await;
    let client = client_as(&api, "test").await;
    let secrets = Api::<Secret>::namespaced(client.clone(), NAMESPACE);
    let config_map = |namespace: &'static str| {
        let client = client.clone();
        async move {
            let config_map = Api::<ConfigMap>::namespaced(client, namespace)
                .get_opt("connectors-proxy-ca")
                .await
                .unwrap()?;
            config_map.data?.remove("ca.crt")
        }
    };
    let old_proxy = text(&wait_secret(&client, "connectors-proxy-ca").await, "tls.crt");
    let old_webhook = text(&wait_secret(&client, "connectors-webhook-ca").await, "tls.crt");
    eventually("the caBundles patched", WAIT, || async {
        (ca_bundles(&client).await == [old_webhook.clone(), old_webhook.clone()]).then_some(())
    })
    .await;

    // An admin asks for both rotations.
    for name in ["connectors-proxy-ca", "connectors-webhook-ca"] {
        let patch = json!({"metadata": {"annotations": {controller::rotation::ROTATE_ANNOTATION: "now"}}});
        secrets
            .patch(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .unwrap();
    }
    // 1. Both CAs are trusted, the old ones still sign.
    let introduced = eventually("the new proxy CA introduced", WAIT, || async {
        let secret = secret(&client, "connectors-proxy-ca").await?;
        let trusted = bundle(&text(&secret, "ca.crt"));
        (trusted.len() == 2).then_some(secret)
    })
    .await;
    assert_eq!(text(&introduced, "tls.crt"), old_proxy, "the old CA still signs");
    let new_proxy = text(&introduced, "next.crt");
    let annotations = introduced.metadata.annotations.clone().unwrap_or_default();
    assert!(
        !annotations.contains_key(controller::rotation::ROTATE_ANNOTATION),
        "the request is cleared"
    );
    assert!(annotations.contains_key(controller::rotation::BUNDLE_CHANGED_ANNOTATION));
    let both = bundle(&text(&introduced, "ca.crt"));
    assert_eq!(both, [der(&old_proxy), der(&new_proxy)]);
    for namespace in [NAMESPACE, CSI_NAMESPACE] {
        eventually("the ConfigMap with both CAs", WAIT, || async {
            (bundle(&config_map(namespace).await?) == both).then_some(())
        })
        .await;
    }
    let new_webhook = eventually("the new webhook CA introduced", WAIT, || async {
        let secret = secret(&client, "connectors-webhook-ca").await?;
        Some(String::from_utf8(secret.data?.remove("next.crt")?.0).unwrap())
    })
    .await;
    eventually("the caBundles with both webhook CAs", WAIT, || async {
        let bundles = ca_bundles(&client).await;
        bundles
            .iter()
            .all(|b| bundle(b) == [der(&old_webhook), der(&new_webhook)])
            .then_some(())
    })
    .await;
    let proxy_tls = secret(&client, "connectors-proxy-tls").await.unwrap();
    verify_serving_chain(&text(&proxy_tls, "tls.crt"), &old_proxy, "connectors-proxy").unwrap();
    assert_eq!(
        bundle(&text(&proxy_tls, "ca.crt")),
        both,
        "the leaf's ca.crt is the bundle"
    );

    // 2. One overlap later the new CAs sign; both are still trusted.
    let promoted = eventually("the new proxy CA signing", WAIT, || async {
        let secret = secret(&client, "connectors-proxy-ca").await?;
        (text(&secret, "tls.crt") == new_proxy).then_some(secret)
    })
    .await;
    assert!(!promoted.data.as_ref().unwrap().contains_key("next.crt"));
    assert_eq!(bundle(&text(&promoted, "ca.crt")), [der(&new_proxy), der(&old_proxy)]);
    eventually("the proxy serving certificate from the new CA", WAIT, || async {
        let leaf = secret(&client, "connectors-proxy-tls").await?;
        verify_serving_chain(&text(&leaf, "tls.crt"), &new_proxy, "connectors-proxy")
            .is_ok()
            .then_some(())
    })
    .await;
    eventually("the webhook serving certificate from the new CA", WAIT, || async {
        let leaf = secret(&client, "connectors-webhook-tls").await?;
        verify_serving_chain(&text(&leaf, "tls.crt"), &new_webhook, "connectors-webhook")
            .is_ok()
            .then_some(())
    })
    .await;

    // 3. One more overlap later only the new CAs are trusted.
    for namespace in [NAMESPACE, CSI_NAMESPACE] {
        eventually("the ConfigMap with the new CA alone", WAIT, || async {
            (bundle(&config_map(namespace).await?) == [der(&new_proxy)]).then_some(())
        })
        .await;
    }
    eventually("the caBundles with the new webhook CA alone", WAIT, || async {
        let bundles = ca_bundles(&client).await;
        bundles.iter().all(|b| bundle(b) == [der(&new_webhook)]).then_some(())
    })
    .await;
    let leaf = secret(&client, "connectors-proxy-tls").await.unwrap();
    assert_eq!(bundle(&text(&leaf, "ca.crt")), [der(&new_proxy)]);
    let expiry = http_text(&format!("http://{}/metrics", running.health)).await;
    assert!(
        expiry.contains("connectors_controller_certificate_expiration_timestamp_seconds{name=\"connectors-proxy-ca\"}"),
        "{expiry}"
    );
    running.stop().await;
}
