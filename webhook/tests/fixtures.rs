//! The mutation over real-world manifests written by others
//! (`tests/fixtures/manifests`, sources in its SOURCES.md): every pod and pod
//! template, patched, is still a valid Pod; exactly the images on a
//! connector's registry are rewritten; nothing is duplicated; and a second
//! pass changes nothing.

use std::collections::HashSet;
use std::path::PathBuf;

use connector::injection::InjectionConfig;
use connector::reference::{Reference, canonical_registry_host};
use connector::store::FileStore;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use webhook::manifest::pod_template_path;
use webhook::mutation::{CONTAINER_FIELDS, Mode, Outcome, mutate_pod};

/// Connectors for Docker Hub, GHCR and Quay in the opted-in `default`.
const STORE: &str = include_str!("../../tests/fixtures/fixture-store.yaml");

const PULL: &str = "10.96.0.50:443";

fn connector_for(host: &str) -> Option<&'static str> {
    match host {
        "docker.io" => Some("hub"),
        "ghcr.io" => Some("ghcr"),
        "quay.io" => Some("quay"),
        _ => None,
    }
}

fn fixtures() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/manifests");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

fn pods_of(yaml: &str) -> Vec<(String, Value)> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(yaml).unwrap();
    documents
        .into_iter()
        .filter_map(|doc| {
            let kind = doc.get("kind")?.as_str()?.to_owned();
            let path = pod_template_path(&kind)?;
            let mut pod = path.iter().try_fold(&doc, |v, t| v.get(*t))?.clone();
            if pod.get("metadata").is_none() {
                pod["metadata"] = json!({});
            }
            let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?");
            Some((format!("{kind}/{name}"), pod))
        })
        .collect()
}

#[test]
fn every_fixture_pod_mutates_into_a_valid_pod_with_exactly_the_right_images() {
    let store = FileStore::from_yaml(STORE).unwrap();
    let config = InjectionConfig::new(PULL, "connectors-proxy.connectors-system.svc:3128");
    let (mut pods, mut rewritten, mut untouched) = (0, 0, 0);
    for (file, yaml) in fixtures() {
        for (what, pod) in pods_of(&yaml) {
            let context = format!("{file}: {what}");
            pods += 1;
            let outcome =
                mutate_pod(&pod, "default", Mode::Create, &store, &config).unwrap_or_else(|e| panic!("{context}: {e}"));
            let Outcome::Patched { patch, .. } = outcome else {
                panic!("{context}: {outcome:?}")
            };
            let mut patched = pod.clone();
            json_patch::patch(&mut patched, &patch).unwrap_or_else(|e| panic!("{context}: {e}"));
            serde_json::from_value::<Pod>(
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": patched["metadata"], "spec": patched["spec"]}),
            )
            .unwrap_or_else(|e| panic!("{context}: not a valid Pod: {e}"));

            for field in CONTAINER_FIELDS {
                let (Some(before), Some(after)) = (pod["spec"][field].as_array(), patched["spec"][field].as_array())
                else {
                    continue;
                };
                assert_eq!(before.len(), after.len(), "{context}");
                for (b, a) in before.iter().zip(after) {
                    let original = b["image"].as_str().unwrap();
                    let now = a["image"].as_str().unwrap();
                    let reference = Reference::parse(original).unwrap();
                    match connector_for(&canonical_registry_host(reference.domain())) {
                        Some(name) => {
                            rewritten += 1;
                            let mut want = format!("{PULL}/namespaces/default/connectors/{name}/{}", reference.path());
                            if let Some(tag) = reference.tag() {
                                want = format!("{want}:{tag}");
                            }
                            if let Some(digest) = reference.digest() {
                                want = format!("{want}@{digest}");
                            }
                            assert_eq!(now, want, "{context}");
                            // The tag and digest are kept byte for byte.
                            let suffix = original.rsplit('/').next().unwrap();
                            let kept = suffix.split_once([':', '@']).map(|(_, rest)| rest).unwrap_or("");
                            assert!(now.ends_with(kept), "{context}: {now} keeps {kept}");
                        }
                        None => {
                            untouched += 1;
                            assert_eq!(now, original, "{context}: other registries are untouched");
                        }
                    }
                    assert_unique(&context, a, "env", "name");
                    assert_unique(&context, a, "volumeMounts", "name");
                    assert_unique(&context, a, "volumeMounts", "mountPath");
                }
            }
            assert_unique(&context, &patched["spec"], "volumes", "name");

            let again = mutate_pod(&patched, "default", Mode::Create, &store, &config).unwrap();
            assert!(
                matches!(again, Outcome::Unchanged { .. }),
                "{context}: second pass changed {again:?}"
            );
        }
    }
    eprintln!("{pods} pods, {rewritten} images rewritten, {untouched} untouched");
    assert_eq!(pods, 24, "every fixture workload is found");
    assert!(
        rewritten >= 20 && untouched >= 8,
        "rewritten {rewritten}, untouched {untouched}"
    );
}

#[test]
fn host_network_fixture_pods_get_no_proxy_environment() {
    let store = FileStore::from_yaml(STORE).unwrap();
    let config = InjectionConfig::new(PULL, "proxy:3128");
    let (_, yaml) = fixtures()
        .into_iter()
        .find(|(f, _)| f.contains("sysdig-daemonset"))
        .unwrap();
    let (_, pod) = pods_of(&yaml).remove(0);
    assert_eq!(pod["spec"]["hostNetwork"], true);
    let Outcome::Patched { patch, .. } = mutate_pod(&pod, "default", Mode::Create, &store, &config).unwrap() else {
        panic!()
    };
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    let container = &patched["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        format!("{PULL}/namespaces/default/connectors/hub/sysdig/agent")
    );
    let names: Vec<&str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.iter().any(|n| n.eq_ignore_ascii_case("https_proxy")),
        "{names:?}"
    );
}

fn assert_unique(context: &str, object: &Value, field: &str, key: &str) {
    let Some(items) = object[field].as_array() else { return };
    let mut seen = HashSet::new();
    for item in items {
        let value = item[key].to_string();
        assert!(seen.insert(value.clone()), "{context}: {field} has {key} {value} twice");
    }
}
