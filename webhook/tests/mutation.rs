//! Scenario tests of the pod mutation: selection, rewriting, injection,
//! idempotence and denials, each applied with json-patch and checked as a
//! typed Pod afterwards.

use connector::ConnectorKey;
use connector::injection::{InjectionConfig, default_no_proxy, forward_proxy_url};
use connector::store::FileStore;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use webhook::mutation::{Mode, MutationError, Outcome, Skip, mutate_pod};

/// The store of these tests and of the `admission` fuzz target.
const STORE: &str = include_str!("mutation-store.yaml");

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn store() -> FileStore {
    FileStore::from_yaml(STORE).unwrap()
}

fn config() -> InjectionConfig {
    let mut config = InjectionConfig::new("proxy.example.com:8443", "connectors-proxy.connectors-system.svc:3128");
    config.no_proxy = default_no_proxy("cluster.local", Some("10.96.0.1"), &["10.244.0.0/16".into()]);
    config.proxy_ca_pem = Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into());
    config
}

fn pod(annotations: Value, spec: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "annotations": annotations},
        "spec": spec,
    })
}

/// Mutates and applies; returns the patched pod and the outcome.
fn apply(pod: &Value, namespace: &str, mode: Mode) -> (Value, Outcome) {
    let outcome = mutate_pod(pod, namespace, mode, &store(), &config()).unwrap();
    let mut patched = pod.clone();
    if let Outcome::Patched { patch, .. } = &outcome {
        json_patch::patch(&mut patched, patch).unwrap();
        serde_json::from_value::<Pod>(patched.clone()).expect("the patched pod is a valid Pod");
    }
    (patched, outcome)
}

fn env_of(container: &Value) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .map(|env| {
            env.iter()
                .map(|e| {
                    (
                        e["name"].as_str().unwrap().to_owned(),
                        e["value"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn env_value(container: &Value, name: &str) -> Option<String> {
    env_of(container).into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

#[test]
fn annotated_pod_gets_images_rewritten_and_everything_injected() {
    let input = pod(
        json!({"connectors.cpaas.io/connector": "harbor"}),
        json!({
            "initContainers": [{"name": "init", "image": "harbor.example.com/lib/init:1"}],
            "containers": [
                {"name": "app", "image": format!("harbor.example.com/proj/app:v1@{DIGEST}")},
                {"name": "side", "image": "nginx:1.25"},
            ],
        }),
    );
    let (patched, outcome) = apply(&input, "team", Mode::Create);
    let Outcome::Patched {
        images_rewritten,
        connectors,
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(images_rewritten, 2);
    assert_eq!(connectors, vec![ConnectorKey::new("team", "harbor")]);
    let spec = &patched["spec"];
    assert_eq!(
        spec["initContainers"][0]["image"],
        "proxy.example.com:8443/namespaces/team/connectors/harbor/lib/init:1"
    );
    assert_eq!(
        spec["containers"][0]["image"],
        format!("proxy.example.com:8443/namespaces/team/connectors/harbor/proj/app:v1@{DIGEST}")
    );
    assert_eq!(
        spec["containers"][1]["image"], "nginx:1.25",
        "other registries are untouched"
    );

    for container in spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(spec["containers"].as_array().unwrap())
    {
        let proxy = "http://team%2Fharbor@connectors-proxy.connectors-system.svc:3128";
        for name in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"] {
            assert_eq!(env_value(container, name).as_deref(), Some(proxy), "{name}");
        }
        let no_proxy = env_value(container, "NO_PROXY").unwrap();
        for entry in [
            ".svc",
            ".svc.cluster.local",
            ".cluster.local",
            "10.96.0.1",
            "10.244.0.0/16",
            "localhost",
        ] {
            assert!(no_proxy.split(',').any(|e| e == entry), "{entry} in {no_proxy}");
        }
        assert_eq!(env_value(container, "no_proxy").unwrap(), no_proxy);
        assert_eq!(
            env_value(container, "SSL_CERT_FILE").unwrap(),
            "/var/run/connectors/ca-bundle.crt"
        );
        assert_eq!(
            env_value(container, "REQUESTS_CA_BUNDLE").unwrap(),
            "/var/run/connectors/ca-bundle.crt"
        );
        assert_eq!(
            env_value(container, "NODE_EXTRA_CA_CERTS").unwrap(),
            "/var/run/connectors-ca/ca.crt"
        );
        assert_eq!(env_value(container, "DOCKER_CONFIG").unwrap(), "/var/run/connectors");
        assert_eq!(
            env_value(container, "REGISTRY_AUTH_FILE").unwrap(),
            "/var/run/connectors/config.json"
        );
        let mounts: Vec<&str> = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap())
            .collect();
        assert_eq!(mounts, ["/var/run/connectors", "/var/run/connectors-ca"]);
        let read_only: Vec<&Value> = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| &m["readOnly"])
            .collect();
        assert_eq!(read_only, [&Value::Bool(true), &Value::Bool(true)]);
    }

    let volumes = spec["volumes"].as_array().unwrap();
    assert_eq!(volumes[0]["csi"]["driver"], "connectors-csi");
    // Read-only, as the connector docs require: the CSI plugin gives the
    // token files to the pod's group or user itself.
    assert_eq!(volumes[0]["csi"]["readOnly"], true);
    assert_eq!(volumes[0]["csi"]["volumeAttributes"]["connectors"], "team/harbor");
    assert_eq!(
        volumes[1]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
        "metadata.annotations['connectors.cpaas.io/proxy-ca']"
    );

    let annotations = &patched["metadata"]["annotations"];
    assert_eq!(annotations["connectors.cpaas.io/injected"], "team/harbor");
    assert_eq!(
        patched["metadata"]["labels"]["connectors.cpaas.io/injected"], "true",
        "the label lets the proxy watch injected pods only"
    );
    assert_eq!(
        annotations["connectors.cpaas.io/proxy-ca"],
        config().proxy_ca_pem.unwrap()
    );
    let originals: Value =
        serde_json::from_str(annotations["connectors.cpaas.io/original-images"].as_str().unwrap()).unwrap();
    assert_eq!(
        originals["containers/app"],
        format!("harbor.example.com/proj/app:v1@{DIGEST}")
    );
    assert_eq!(originals["initContainers/init"], "harbor.example.com/lib/init:1");
    assert!(originals.get("containers/side").is_none());
}

#[test]
fn mutating_twice_equals_mutating_once() {
    let input = pod(
        json!({"connectors.cpaas.io/connector": "harbor,shared/hub"}),
        json!({"containers": [{"name": "a", "image": "busybox"}, {"name": "b", "image": "harbor.example.com/x/y"}]}),
    );
    let (once, _) = apply(&input, "team", Mode::Create);
    let second = mutate_pod(&once, "team", Mode::Create, &store(), &config()).unwrap();
    assert!(matches!(second, Outcome::Unchanged { .. }), "{second:?}");
}

#[test]
fn a_sidecar_added_after_the_first_pass_is_injected_on_reinvocation() {
    let input = pod(
        json!({"connectors.cpaas.io/connector": "harbor"}),
        json!({"containers": [{"name": "a", "image": "harbor.example.com/x/a"}]}),
    );
    let (mut once, _) = apply(&input, "team", Mode::Create);
    once["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "late", "image": "harbor.example.com/x/late:2"}));
    let (twice, outcome) = apply(&once, "team", Mode::Create);
    let Outcome::Patched { images_rewritten, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(images_rewritten, 1);
    let late = &twice["spec"]["containers"][1];
    assert_eq!(
        late["image"],
        "proxy.example.com:8443/namespaces/team/connectors/harbor/x/late:2"
    );
    assert!(env_value(late, "HTTPS_PROXY").is_some());
    assert_eq!(
        twice["spec"]["volumes"].as_array().unwrap().len(),
        2,
        "volumes are not duplicated"
    );
    let originals: Value = serde_json::from_str(
        twice["metadata"]["annotations"]["connectors.cpaas.io/original-images"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        originals.as_object().unwrap().len(),
        2,
        "originals are merged: {originals}"
    );
}

#[test]
fn docker_hub_short_names_and_every_docker_hub_alias_match_a_docker_hub_connector() {
    let images = [
        (
            "busybox",
            "proxy.example.com:8443/namespaces/shared/connectors/hub/library/busybox",
        ),
        (
            "library/busybox:1",
            "proxy.example.com:8443/namespaces/shared/connectors/hub/library/busybox:1",
        ),
        (
            "docker.io/bitnami/redis:7",
            "proxy.example.com:8443/namespaces/shared/connectors/hub/bitnami/redis:7",
        ),
        (
            "index.docker.io/library/nginx",
            "proxy.example.com:8443/namespaces/shared/connectors/hub/library/nginx",
        ),
        (
            "registry-1.docker.io/x/y",
            "proxy.example.com:8443/namespaces/shared/connectors/hub/x/y",
        ),
        (
            &format!("openpolicyagent/opa:0.9.2@{DIGEST}"),
            &format!("proxy.example.com:8443/namespaces/shared/connectors/hub/openpolicyagent/opa:0.9.2@{DIGEST}"),
        ),
        ("quay.io/x/y:1", "quay.io/x/y:1"),
        ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
        ("localhost:5000/x", "localhost:5000/x"),
    ];
    let containers: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, (image, _))| json!({"name": format!("c{i}"), "image": image}))
        .collect();
    let input = pod(json!({}), json!({"containers": containers}));
    let (patched, _) = apply(&input, "defaults", Mode::Create);
    for (i, (image, want)) in images.iter().enumerate() {
        assert_eq!(patched["spec"]["containers"][i]["image"], *want, "{image}");
    }
}

#[test]
fn host_port_registries_match_only_their_own_port() {
    let input = pod(
        json!({"connectors.cpaas.io/connector": "local"}),
        json!({"containers": [
            {"name": "a", "image": "127.0.0.1:5000/lab/hello:v1"},
            {"name": "b", "image": "127.0.0.1:5001/lab/hello:v1"},
        ]}),
    );
    let (patched, _) = apply(&input, "team", Mode::Create);
    assert_eq!(
        patched["spec"]["containers"][0]["image"],
        "proxy.example.com:8443/namespaces/team/connectors/local/lab/hello:v1"
    );
    assert_eq!(patched["spec"]["containers"][1]["image"], "127.0.0.1:5001/lab/hello:v1");
}

#[test]
fn an_opted_in_namespace_without_defaults_selects_all_its_connectors() {
    let input = pod(
        Value::Null,
        json!({"containers": [{"name": "a", "image": "ghcr.io/org/tool:1"}]}),
    );
    let (patched, outcome) = apply(&input, "opted", Mode::Create);
    assert!(matches!(outcome, Outcome::Patched { .. }));
    assert_eq!(
        patched["spec"]["containers"][0]["image"],
        "proxy.example.com:8443/namespaces/opted/connectors/ghcr/org/tool:1"
    );
    assert_eq!(
        patched["metadata"]["annotations"]["connectors.cpaas.io/injected"],
        "opted/ghcr"
    );
}

#[test]
fn user_set_variables_win_and_one_case_counts_for_both() {
    let input = pod(
        json!({"connectors.cpaas.io/connector": "harbor"}),
        json!({"containers": [{"name": "a", "image": "x", "env": [
            {"name": "https_proxy", "value": "http://mine:1"},
            {"name": "SSL_CERT_FILE", "value": "/etc/mine.pem"},
            {"name": "DOCKER_CONFIG", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ]}]}),
    );
    let (patched, _) = apply(&input, "team", Mode::Create);
    let container = &patched["spec"]["containers"][0];
    let env = env_of(container);
    assert_eq!(env_value(container, "https_proxy").unwrap(), "http://mine:1");
    assert!(
        env.iter().all(|(n, _)| n != "HTTPS_PROXY"),
        "the other case is not added"
    );
    assert_eq!(env_value(container, "SSL_CERT_FILE").unwrap(), "/etc/mine.pem");
    assert_eq!(env.iter().filter(|(n, _)| n == "DOCKER_CONFIG").count(), 1);
    assert!(
        env_value(container, "HTTP_PROXY").is_some(),
        "unset variables are still injected"
    );
}

#[test]
fn host_network_pods_get_images_and_trust_but_no_proxy_environment() {
    let input = pod(
        json!({"connectors.cpaas.io/connector": "harbor"}),
        json!({"hostNetwork": true, "containers": [{"name": "a", "image": "harbor.example.com/a/b"}]}),
    );
    let (patched, _) = apply(&input, "team", Mode::Create);
    let container = &patched["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        "proxy.example.com:8443/namespaces/team/connectors/harbor/a/b"
    );
    for name in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        assert!(env_value(container, name).is_none(), "{name}");
    }
    assert!(env_value(container, "SSL_CERT_FILE").is_some());
}

#[test]
fn unselected_opted_out_protected_and_mirror_pods_are_left_alone() {
    let spec = json!({"containers": [{"name": "a", "image": "harbor.example.com/a/b"}]});
    let cases = [
        (
            pod(json!({}), spec.clone()),
            "team",
            Skip::Selection(connector::selection::SkipReason::NotSelected),
        ),
        (
            pod(
                json!({"connectors.cpaas.io/connector": "harbor", "connectors.cpaas.io/proxy-inject": "false"}),
                spec.clone(),
            ),
            "team",
            Skip::Selection(connector::selection::SkipReason::OptedOut),
        ),
        (
            pod(json!({"connectors.cpaas.io/connector": "harbor"}), spec.clone()),
            "kube-system",
            Skip::Selection(connector::selection::SkipReason::ProtectedNamespace),
        ),
        (
            pod(json!({"connectors.cpaas.io/connector": "harbor"}), spec.clone()),
            "connectors-system",
            Skip::Selection(connector::selection::SkipReason::ProtectedNamespace),
        ),
        (
            pod(
                json!({"connectors.cpaas.io/connector": "harbor", "kubernetes.io/config.mirror": "abc"}),
                spec.clone(),
            ),
            "team",
            Skip::Selection(connector::selection::SkipReason::MirrorPod),
        ),
    ];
    for (input, namespace, want) in cases {
        let outcome = mutate_pod(&input, namespace, Mode::Create, &store(), &config()).unwrap();
        assert_eq!(outcome, Outcome::Skipped(want));
    }
}

#[test]
fn unknown_connectors_and_bad_input_are_denied_with_clear_messages() {
    let spec = json!({"containers": [{"name": "a", "image": "harbor.example.com/a/b"}]});
    let cases = [
        (
            pod(json!({"connectors.cpaas.io/connector": "nope"}), spec.clone()),
            "team",
            "connector team/nope does not exist",
        ),
        (
            pod(json!({"connectors.cpaas.io/connector": "harbor,x"}), spec.clone()),
            "team",
            "connector team/x does not exist",
        ),
        (
            pod(json!({"connectors.cpaas.io/connector": "a/b/c"}), spec.clone()),
            "team",
            "invalid connector \"a/b/c\"",
        ),
        (
            pod(json!({"connectors.cpaas.io/connector": " , "}), spec.clone()),
            "team",
            "names no connector",
        ),
        (
            pod(
                json!({"connectors.cpaas.io/connector": "harbor"}),
                json!({"containers": [{"name": "a", "image": "Harbor.example.com/UPPER/b"}]}),
            ),
            "team",
            "containers[a]: image \"Harbor.example.com/UPPER/b\" is not a valid reference",
        ),
        (
            json!({"metadata": {}}),
            "team",
            "the object is not a pod: spec is missing",
        ),
        (json!({"spec": {"volumes": []}}), "team", "spec.containers is missing"),
    ];
    for (input, namespace, want) in cases {
        let error = mutate_pod(&input, namespace, Mode::Create, &store(), &config()).unwrap_err();
        assert!(error.to_string().contains(want), "{error} should contain {want}");
    }
    let error = mutate_pod(
        &pod(json!({"connectors.cpaas.io/connector": "nope"}), spec),
        "team",
        Mode::Create,
        &store(),
        &config(),
    )
    .unwrap_err();
    assert!(matches!(error, MutationError::UnknownConnector { .. }));
}

#[test]
fn a_connector_of_another_namespace_is_admitted_alike_whether_it_exists_or_not() {
    // `other/private` exists (not shared); `other/absent` does not. A pod
    // naming either, with an image of private's registry, must get the same
    // answer but for the name itself.
    let spec = json!({"containers": [{"name": "a", "image": "private.example.com/team/app:1"}]});
    let answer = |name: &str| {
        let input = pod(
            json!({"connectors.cpaas.io/connector": format!("other/{name}")}),
            spec.clone(),
        );
        let (patched, _) = apply(&input, "team", Mode::Create);
        patched
            .to_string()
            .replace(&format!("other/{name}"), "other/NAME")
            .replace(&format!("other%2F{name}"), "other%2FNAME")
    };
    assert_eq!(answer("private"), answer("absent"));
    let patched: Value = serde_json::from_str(&answer("private")).unwrap();
    assert_eq!(
        patched["spec"]["containers"][0]["image"], "private.example.com/team/app:1",
        "an image is rewritten for a connector admission may not reveal"
    );
    assert_eq!(
        patched["spec"]["volumes"][0]["csi"]["volumeAttributes"]["connectors"], "other/NAME",
        "the CSI plugin must still get the connector to authorize"
    );
    // A shared connector of another namespace is seen, and its images
    // rewritten.
    let input = pod(
        json!({"connectors.cpaas.io/connector": "shared/hub"}),
        json!({"containers": [{"name": "a", "image": "nginx:1"}]}),
    );
    let (patched, _) = apply(&input, "team", Mode::Create);
    assert_eq!(
        patched["spec"]["containers"][0]["image"],
        "proxy.example.com:8443/namespaces/shared/connectors/hub/library/nginx:1"
    );
}

#[test]
fn ephemeral_containers_are_mutated_alone_and_mount_only_existing_volumes() {
    let input = pod(
        json!({"connectors.cpaas.io/connector": "harbor"}),
        json!({"containers": [{"name": "a", "image": "harbor.example.com/a/b"}]}),
    );
    let (mut created, _) = apply(&input, "team", Mode::Create);
    created["spec"]["ephemeralContainers"] =
        json!([{"name": "debug", "image": "harbor.example.com/tools/debug:1", "targetContainerName": "a"}]);
    let before = created.clone();
    let outcome = mutate_pod(&created, "team", Mode::EphemeralContainers, &store(), &config()).unwrap();
    let Outcome::Patched { patch, .. } = outcome else {
        panic!("{outcome:?}")
    };
    for op in &patch.0 {
        let path = serde_json::to_value(op).unwrap()["path"].as_str().unwrap().to_owned();
        assert!(path.starts_with("/spec/ephemeralContainers/"), "{path}");
    }
    json_patch::patch(&mut created, &patch).unwrap();
    let debug = &created["spec"]["ephemeralContainers"][0];
    assert_eq!(
        debug["image"],
        "proxy.example.com:8443/namespaces/team/connectors/harbor/tools/debug:1"
    );
    assert_eq!(debug["volumeMounts"].as_array().unwrap().len(), 2);
    assert_eq!(created["spec"]["containers"], before["spec"]["containers"]);

    // Without the volumes (a pod created before the webhook), no mount is added.
    let bare = pod(
        json!({"connectors.cpaas.io/connector": "harbor"}),
        json!({"containers": [{"name": "a", "image": "x"}], "ephemeralContainers": [{"name": "d", "image": "busybox"}]}),
    );
    let (patched, _) = apply(&bare, "team", Mode::EphemeralContainers);
    assert!(patched["spec"]["ephemeralContainers"][0].get("volumeMounts").is_none());
    assert!(patched["spec"].get("volumes").is_none());
}

#[test]
fn annotation_keys_are_escaped_and_missing_maps_are_created_whole() {
    let input = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "x", "env": null}]}});
    let mut store_pod = input.clone();
    store_pod["metadata"]["namespace"] = json!("opted");
    let outcome = mutate_pod(&input, "opted", Mode::Create, &store(), &config()).unwrap();
    let Outcome::Patched { patch, .. } = outcome else {
        panic!("{outcome:?}")
    };
    let ops = serde_json::to_value(&patch).unwrap();
    assert!(
        ops.as_array()
            .unwrap()
            .iter()
            .any(|op| op["path"] == "/metadata/annotations" && op["op"] == "add")
    );
    assert!(
        ops.as_array().unwrap().iter().any(|op| op["path"] == "/metadata/labels"
            && op["op"] == "add"
            && op["value"]["connectors.cpaas.io/injected"] == "true"),
        "{ops}"
    );
    assert!(
        ops.as_array()
            .unwrap()
            .iter()
            .any(|op| op["path"] == "/spec/containers/0/env" && op["op"] == "replace")
    );

    let with_map = json!({"metadata": {"name": "p", "annotations": {"a": "b"}}, "spec": {"containers": [{"name": "a", "image": "x"}]}});
    let outcome = mutate_pod(&with_map, "opted", Mode::Create, &store(), &config()).unwrap();
    let Outcome::Patched { patch, .. } = outcome else {
        panic!("{outcome:?}")
    };
    let ops = serde_json::to_value(&patch).unwrap();
    assert!(
        ops.as_array()
            .unwrap()
            .iter()
            .any(|op| op["path"] == "/metadata/annotations/connectors.cpaas.io~1injected"),
        "{ops}"
    );

    let with_labels = json!({"metadata": {"name": "p", "labels": {"app": "x"}}, "spec": {"containers": [{"name": "a", "image": "x"}]}});
    let outcome = mutate_pod(&with_labels, "opted", Mode::Create, &store(), &config()).unwrap();
    let Outcome::Patched { patch, .. } = outcome else {
        panic!("{outcome:?}")
    };
    let ops = serde_json::to_value(&patch).unwrap();
    assert!(
        ops.as_array()
            .unwrap()
            .iter()
            .any(|op| op["path"] == "/metadata/labels/connectors.cpaas.io~1injected"
                && op["op"] == "add"
                && op["value"] == "true"),
        "{ops}"
    );
}

#[test]
fn proxy_urls_percent_encode_the_connector_list() {
    let keys = [ConnectorKey::new("team", "harbor"), ConnectorKey::new("ops", "hub.v2")];
    assert_eq!(
        forward_proxy_url("proxy:3128", &keys),
        "http://team%2Fharbor,ops%2Fhub.v2@proxy:3128"
    );
}

#[test]
fn the_first_selected_connector_for_a_host_wins() {
    let yaml = format!(
        "{STORE}---\napiVersion: connectors.alauda.io/v1alpha1\nkind: Connector\nmetadata: {{name: harbor2, namespace: team}}\nspec: {{connectorClassName: harbor, address: 'https://harbor.example.com:443/'}}\n"
    );
    let store = FileStore::from_yaml(&yaml).unwrap();
    let input = pod(
        json!({"connectors.cpaas.io/connector": "harbor2,harbor"}),
        json!({"containers": [{"name": "a", "image": "harbor.example.com/a/b"}]}),
    );
    let Outcome::Patched { patch, .. } = mutate_pod(&input, "team", Mode::Create, &store, &config()).unwrap() else {
        panic!()
    };
    let mut patched = input.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    assert_eq!(
        patched["spec"]["containers"][0]["image"],
        "proxy.example.com:8443/namespaces/team/connectors/harbor2/a/b"
    );
}

/// Found by `fuzz/` (target `admission`): a 255-character image became longer
/// than the reference grammar allows once moved under the proxy path, so the
/// next pass (reinvocation, re-admission) denied the pod it had admitted.
#[test]
fn an_image_too_long_for_the_proxy_path_is_denied_on_the_first_pass() {
    let fits = format!("harbor.example.com/{}", "x".repeat(255 - 19 - 60));
    let too_long = format!("harbor.example.com/{}", "x".repeat(255 - 19));
    assert_eq!(too_long.len(), 255);
    let annotations = json!({"connectors.cpaas.io/connector": "harbor"});

    let (patched, outcome) = apply(
        &pod(
            annotations.clone(),
            json!({"containers": [{"name": "a", "image": fits}]}),
        ),
        "team",
        Mode::Create,
    );
    assert!(matches!(outcome, Outcome::Patched { .. }));
    let again = mutate_pod(&patched, "team", Mode::Create, &store(), &config()).unwrap();
    assert!(matches!(again, Outcome::Unchanged { .. }), "{again:?}");

    let input = pod(annotations, json!({"containers": [{"name": "a", "image": too_long}]}));
    let error = mutate_pod(&input, "team", Mode::Create, &store(), &config()).unwrap_err();
    let MutationError::UnrewritableImage {
        field, name, source, ..
    } = &error
    else {
        panic!("{error:?}");
    };
    assert_eq!((*field, name.as_str()), ("containers", "a"));
    assert_eq!(*source, connector::reference::ReferenceError::NameTooLong);
    assert!(
        error.to_string().contains("cannot be pulled through the proxy"),
        "{error}"
    );
}

#[test]
fn an_image_in_the_proxys_form_at_the_pods_address_is_pulled_from_the_pull_address() {
    // The node pull endpoint's loopback for images, the Service for pods: a
    // digest a pod pushed (ko's output) names the Service, which nodes
    // cannot pull from.
    let mut config = config();
    config.pull_address = "127.0.0.1:7480".into();
    config.proxy_address = "connectors-proxy.connectors-system.svc".into();
    let pushed = format!("connectors-proxy.connectors-system.svc/namespaces/team/connectors/harbor/proj/app@{DIGEST}");
    let input = pod(
        json!({"connectors.cpaas.io/connector": "harbor"}),
        json!({"containers": [
            {"name": "built", "image": pushed},
            {"name": "app", "image": "harbor.example.com/proj/app:v1"},
            {"name": "pulled", "image": "127.0.0.1:7480/namespaces/team/connectors/harbor/proj/app:v1"},
            {"name": "other", "image": "connectors-proxy.connectors-system.svc/lib/tool:1"},
        ]}),
    );
    let outcome = mutate_pod(&input, "team", Mode::Create, &store(), &config).unwrap();
    let Outcome::Patched { patch, .. } = &outcome else {
        panic!("not patched: {outcome:?}");
    };
    let mut patched = input.clone();
    json_patch::patch(&mut patched, patch).unwrap();
    let images: Vec<&str> = patched["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["image"].as_str().unwrap())
        .collect();
    assert_eq!(
        images,
        [
            format!("127.0.0.1:7480/namespaces/team/connectors/harbor/proj/app@{DIGEST}").as_str(),
            "127.0.0.1:7480/namespaces/team/connectors/harbor/proj/app:v1",
            "127.0.0.1:7480/namespaces/team/connectors/harbor/proj/app:v1",
            // Not the proxy's path form: no connector, left as written.
            "connectors-proxy.connectors-system.svc/lib/tool:1",
        ]
    );
}
