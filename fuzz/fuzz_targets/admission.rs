//! The webhook's AdmissionReview handler (`webhook::admission::review`), fed
//! either raw bytes as the request body or a review built from fuzz bytes
//! around a generated pod (containers, init and ephemeral containers,
//! images on and off the connectors' registries, env, mounts, volumes,
//! annotations, labels, odd shapes), so the mutation path runs.
//!
//! Properties: never panics; the answer is a valid AdmissionReview for the
//! same uid; a patch is base64 of a JSON Patch that applies (json-patch 4)
//! to the pod; and reviewing the patched pod again changes nothing.

#![no_main]

use std::sync::LazyLock;

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine;
use connector::store::FileStore;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use webhook::admission::{AdmissionReview, AdmissionReviewResponse, review};
use connector::injection::{InjectionConfig, default_no_proxy};

/// The store of webhook/tests/mutation.rs.
const STORE: &str = include_str!("../../webhook/tests/mutation-store.yaml");

static STORE_AND_CONFIG: LazyLock<(FileStore, InjectionConfig)> = LazyLock::new(|| {
    let store = FileStore::from_yaml(STORE).expect("the fuzz store parses");
    let mut config = InjectionConfig::new("proxy.example.com:8443", "connectors-proxy.connectors-system.svc:3128");
    config.no_proxy = default_no_proxy("cluster.local", Some("10.96.0.1"), &["10.244.0.0/16".into()]);
    config.proxy_ca_pem = Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into());
    (store, config)
});

const NAMESPACES: &[&str] = &[
    "team",
    "opted",
    "defaults",
    "shared",
    "other",
    "kube-system",
    "connectors-system",
];
const CONNECTOR_LISTS: &[&str] = &[
    "harbor",
    "team/harbor",
    "harbor,local",
    "shared/hub",
    "ghcr",
    "nope",
    " , ",
    "team/harbor,opted/ghcr",
];
const REGISTRIES: &[&str] = &[
    "harbor.example.com",
    "HARBOR.example.com:443",
    "127.0.0.1:5000",
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "ghcr.io",
    "quay.io",
    "proxy.example.com:8443",
    "localhost:5000",
    "",
];
const IMAGE_PATHS: &[&str] = &[
    "nginx",
    "library/nginx",
    "a/b/c",
    "app",
    "namespaces/team/connectors/harbor/app",
];
const TAGS: &[&str] = &["1.25", "latest", "v1_rc-2"];
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const ENV_NAMES: &[&str] = &[
    "HTTP_PROXY",
    "https_proxy",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "DOCKER_CONFIG",
    "FOO",
];
const VOLUME_NAMES: &[&str] = &["connectors-csi", "connectors-ca", "data"];
const MOUNT_PATHS: &[&str] = &["/var/run/connectors", "/var/run/connectors-ca", "/data"];
const ANNOTATION_KEYS: &[&str] = &[
    "connectors.cpaas.io/injected",
    "connectors.cpaas.io/original-images",
    "connectors.cpaas.io/proxy-ca",
    "connectors.cpaas.io/proxy-inject",
    "kubernetes.io/config.mirror",
    "a~b/c",
];

/// Picks from a list, or (rarely) takes arbitrary text.
fn pick(u: &mut Unstructured<'_>, list: &[&str]) -> arbitrary::Result<String> {
    if u.ratio(1, 8)? {
        String::arbitrary(u)
    } else {
        Ok((*u.choose(list)?).to_owned())
    }
}

/// A JSON field that is absent, null, a scalar of the wrong type or the
/// real thing.
fn shaped(
    u: &mut Unstructured<'_>,
    real: impl FnOnce(&mut Unstructured<'_>) -> arbitrary::Result<Value>,
) -> arbitrary::Result<Option<Value>> {
    Ok(match u.int_in_range(0..=9)? {
        0 => None,
        1 => Some(Value::Null),
        2 => Some(json!("x")),
        _ => Some(real(u)?),
    })
}

fn image(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    if u.ratio(1, 10)? {
        return String::arbitrary(u);
    }
    let registry = pick(u, REGISTRIES)?;
    let path = if u.ratio(1, 4)? {
        "x".repeat(u.int_in_range(1..=250)?)
    } else {
        pick(u, IMAGE_PATHS)?
    };
    let mut image = if registry.is_empty() {
        path
    } else {
        format!("{registry}/{path}")
    };
    if u.arbitrary()? {
        image.push(':');
        image.push_str(&pick(u, TAGS)?);
    }
    if u.ratio(1, 3)? {
        image.push('@');
        image.push_str(DIGEST);
    }
    Ok(image)
}

fn container(u: &mut Unstructured<'_>) -> arbitrary::Result<Value> {
    if u.ratio(1, 20)? {
        return Ok(json!(7));
    }
    let mut c = Map::new();
    if u.ratio(7, 8)? {
        c.insert("name".into(), json!(format!("c{}", u.int_in_range(0..=3)?)));
    }
    if u.ratio(7, 8)? {
        c.insert("image".into(), json!(image(u)?));
    }
    if let Some(env) = shaped(u, |u| {
        let n = u.int_in_range(0..=3)?;
        let mut env = Vec::new();
        for _ in 0..n {
            env.push(json!({"name": pick(u, ENV_NAMES)?, "value": "v"}));
        }
        Ok(Value::Array(env))
    })? {
        c.insert("env".into(), env);
    }
    if let Some(mounts) = shaped(u, |u| {
        let n = u.int_in_range(0..=2)?;
        let mut mounts = Vec::new();
        for _ in 0..n {
            mounts.push(json!({"name": pick(u, VOLUME_NAMES)?, "mountPath": pick(u, MOUNT_PATHS)?}));
        }
        Ok(Value::Array(mounts))
    })? {
        c.insert("volumeMounts".into(), mounts);
    }
    Ok(Value::Object(c))
}

fn containers(u: &mut Unstructured<'_>, max: usize) -> arbitrary::Result<Value> {
    let n = u.int_in_range(0..=max)?;
    let mut list = Vec::new();
    for _ in 0..n {
        list.push(container(u)?);
    }
    Ok(Value::Array(list))
}

fn string_map(u: &mut Unstructured<'_>, keys: &[&str], values: &[&str]) -> arbitrary::Result<Value> {
    let mut map = Map::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let key = pick(u, keys)?;
        let value = if u.ratio(1, 10)? {
            json!(3)
        } else {
            json!(pick(u, values)?)
        };
        map.insert(key, value);
    }
    Ok(Value::Object(map))
}

/// A review around a generated pod; returns the body and the namespace.
fn structured(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let mut metadata = Map::new();
    metadata.insert("name".into(), json!("p"));
    let mut annotations = string_map(
        u,
        ANNOTATION_KEYS,
        &["true", "false", "{\"containers/c0\":\"x\"}", "team/harbor", "x"],
    )?;
    if u.ratio(3, 4)? {
        annotations
            .as_object_mut()
            .unwrap()
            .insert("connectors.cpaas.io/connector".into(), json!(pick(u, CONNECTOR_LISTS)?));
    }
    if let Some(annotations) = shaped(u, |_| Ok(annotations))? {
        metadata.insert("annotations".into(), annotations);
    }
    if let Some(labels) = shaped(u, |u| {
        string_map(u, &["connectors.cpaas.io/injected", "app"], &["true", "false"])
    })? {
        metadata.insert("labels".into(), labels);
    }

    let mut spec = Map::new();
    spec.insert("containers".into(), containers(u, 3)?);
    if let Some(init) = shaped(u, |u| containers(u, 2))? {
        spec.insert("initContainers".into(), init);
    }
    if let Some(ephemeral) = shaped(u, |u| containers(u, 2))? {
        spec.insert("ephemeralContainers".into(), ephemeral);
    }
    if let Some(volumes) = shaped(u, |u| {
        let n = u.int_in_range(0..=2)?;
        let mut volumes = Vec::new();
        for _ in 0..n {
            volumes.push(json!({"name": pick(u, VOLUME_NAMES)?, "emptyDir": {}}));
        }
        Ok(Value::Array(volumes))
    })? {
        spec.insert("volumes".into(), volumes);
    }
    if u.ratio(1, 5)? {
        spec.insert("hostNetwork".into(), json!(true));
    }

    let mut pod = Map::new();
    pod.insert("apiVersion".into(), json!("v1"));
    pod.insert("kind".into(), json!("Pod"));
    match u.int_in_range(0..=15)? {
        0 => {}
        1 => {
            pod.insert("metadata".into(), json!(null));
        }
        2 => {
            pod.insert("metadata".into(), json!("x"));
        }
        _ => {
            pod.insert("metadata".into(), Value::Object(metadata));
        }
    }
    pod.insert("spec".into(), Value::Object(spec));

    let (operation, sub_resource) = *u.choose(&[
        ("CREATE", None),
        ("CREATE", None),
        ("CREATE", None),
        ("UPDATE", Some("ephemeralcontainers")),
        ("UPDATE", None),
        ("DELETE", None),
    ])?;
    let namespace = pick(u, NAMESPACES)?;
    let mut request = json!({
        "uid": "u-1",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "operation": operation,
        "object": Value::Object(pod),
    });
    if u.ratio(7, 8)? {
        request["namespace"] = json!(namespace);
    }
    if let Some(sub_resource) = sub_resource {
        request["subResource"] = json!(sub_resource);
    }
    let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request});
    Ok(serde_json::to_vec(&body).unwrap())
}

/// Reviews `body` and checks the answer; returns the patched object when a
/// patch was returned.
fn check(body: &[u8]) -> Option<(Value, Value)> {
    let (store, config) = &*STORE_AND_CONFIG;
    let reviewed = review(body, store, config).ok()?;
    // NB: read the body as the webhook does: unknown fields are skipped
    // without full validation, so it need not be a valid `Value` as a whole.
    let request: AdmissionReview = serde_json::from_slice(body).expect("review accepted a body it cannot read");
    let request = request.request.expect("a reviewed body has a request");
    let uid = request.uid.as_str();

    let encoded = serde_json::to_vec(&reviewed.response).expect("the response serialises");
    let decoded: AdmissionReviewResponse = serde_json::from_slice(&encoded).expect("the response reads back");
    assert_eq!(decoded, reviewed.response);
    let response = &reviewed.response.response;
    assert_eq!(reviewed.response.api_version, "admission.k8s.io/v1");
    assert_eq!(reviewed.response.kind, "AdmissionReview");
    assert_eq!(response.uid, uid);
    if !response.allowed {
        let status = response.status.as_ref().expect("a denial has a status");
        assert!(status.code >= 400 && !status.message.is_empty());
        assert!(response.patch.is_none());
    }
    let patch = response.patch.as_ref()?;
    assert!(response.allowed);
    assert_eq!(response.patch_type.as_deref(), Some("JSONPatch"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .expect("the patch is base64");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("the patch is a JSON Patch");
    assert!(!patch.0.is_empty(), "an empty patch is returned as none");
    let object = request.object.as_ref().expect("a patch for a review without object");
    let mut patched = object.clone();
    if let Err(error) = json_patch::patch(&mut patched, &patch) {
        panic!("the patch does not apply: {error}\nobject: {object}\npatch: {patch:?}");
    }
    let again = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": request.uid,
            "kind": {"group": request.kind.group, "version": request.kind.version, "kind": request.kind.kind},
            "operation": request.operation,
            "subResource": request.sub_resource,
            "name": request.name,
            "namespace": request.namespace,
            "object": patched,
        },
    });
    Some((again, patched))
}

fn run(body: &[u8]) {
    let Some((request, patched)) = check(body) else { return };
    // The webhook promises that a second pass (reinvocation, re-admission)
    // changes nothing.
    let again = serde_json::to_vec(&request).unwrap();
    let (store, config) = &*STORE_AND_CONFIG;
    let second = review(&again, store, config).expect("the patched pod is still a valid review");
    let response = &second.response.response;
    assert!(
        response.allowed && response.patch.is_none(),
        "second pass on {patched} answers {response:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(raw) = u.arbitrary::<bool>() else { return };
    if raw {
        run(u.take_rest());
    } else if let Ok(body) = structured(&mut u) {
        run(&body);
    }
});
