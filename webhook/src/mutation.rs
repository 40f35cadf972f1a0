//! The pod mutation: a pure function from a pod's raw JSON, its namespace and
//! the selected connectors to an RFC 6902 patch.
//!
//! NB: the pod is never deserialised into the typed `Pod`: a round trip
//! through k8s-openapi drops fields newer than its API version, so every
//! operation is built against the raw JSON the API server sent.

use std::collections::BTreeMap;

use connector::ConnectorKey;
use connector::address::AddressError;
use connector::injection::{InjectionConfig, container_env, forward_proxy_url};
use connector::keys;
use connector::reference::{Reference, ReferenceError, canonical_registry_host};
use connector::selection::{self, Selection, SelectionError, SkipReason, format_connector_list};
use connector::store::ConnectorStore;
use connector::store::ResolvedConnector;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use jsonptr::PointerBuf;
use serde_json::{Map, Value, json};

/// The container lists of a pod spec, in the order they are mutated.
pub const CONTAINER_FIELDS: [&str; 3] = ["initContainers", "containers", "ephemeralContainers"];

/// Which admission the pod arrives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pod creation: everything is injected.
    Create,
    /// An update of the `ephemeralcontainers` subresource: only ephemeral
    /// containers may change, and only volumes the pod already has can be
    /// mounted.
    EphemeralContainers,
}

/// What the mutation decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The pod is not selected.
    Skipped(Skip),
    /// The pod is selected and already carries everything (a second pass).
    Unchanged { connectors: Vec<ConnectorKey> },
    /// The patch to apply.
    Patched {
        patch: Patch,
        connectors: Vec<ConnectorKey>,
        images_rewritten: usize,
    },
}

/// Why a pod is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    Selection(SkipReason),
    /// The namespace opted in but has no connectors.
    NoConnectors,
}

impl Skip {
    /// A short stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Selection(reason) => reason.as_str(),
            Skip::NoConnectors => "no-connectors",
        }
    }
}

/// Why a pod is denied. Each message is shown to the user who created it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MutationError {
    #[error("the object is not a pod: {0}")]
    NotAPod(&'static str),
    #[error("{0}")]
    Selection(#[from] SelectionError),
    #[error("connector {key} does not exist (named by {source_of})")]
    UnknownConnector { key: ConnectorKey, source_of: &'static str },
    #[error("connector {key} has an unusable address: {source}")]
    ConnectorAddress {
        key: ConnectorKey,
        #[source]
        source: AddressError,
    },
    #[error("{field}[{name}]: image {image:?} is not a valid reference: {source}")]
    InvalidImage {
        field: &'static str,
        name: String,
        image: String,
        #[source]
        source: ReferenceError,
    },
    #[error("{field}[{name}]: image {image:?} cannot be pulled through the proxy as {rewritten:?}: {source}")]
    UnrewritableImage {
        field: &'static str,
        name: String,
        image: String,
        rewritten: String,
        #[source]
        source: ReferenceError,
    },
}

pub type Result<T, E = MutationError> = std::result::Result<T, E>;

/// Decides whether `pod` (raw JSON of a Pod in `namespace`) is selected and
/// returns the patch that injects the selected connectors. Reads only the
/// in-memory `store`; does no I/O.
pub fn mutate_pod(
    pod: &Value,
    namespace: &str,
    mode: Mode,
    store: &dyn ConnectorStore,
    config: &InjectionConfig,
) -> Result<Outcome> {
    let spec = pod
        .get("spec")
        .and_then(Value::as_object)
        .ok_or(MutationError::NotAPod("spec is missing"))?;
    if !spec.get("containers").is_some_and(Value::is_array) {
        return Err(MutationError::NotAPod("spec.containers is missing"));
    }
    let annotations = string_map(pod.pointer("/metadata/annotations"));
    let namespace_meta = store.namespace(namespace).unwrap_or_default();
    let selection = selection::select(
        namespace,
        &annotations,
        &namespace_meta.labels,
        &namespace_meta.annotations,
        &config.install_namespace,
    )?;
    let (keys, source_of) = match selection {
        Selection::Skip(reason) => return Ok(Outcome::Skipped(Skip::Selection(reason))),
        Selection::Annotated(keys) => (keys, "the pod annotation connectors.cpaas.io/connector"),
        Selection::Namespace(Some(keys)) => (keys, "the namespace annotation connectors.cpaas.io/connector"),
        Selection::Namespace(None) => {
            let all = store.connectors_in(namespace);
            (all.iter().map(|c| c.key(namespace)).collect(), "the namespace")
        }
    };
    if keys.is_empty() {
        return Ok(Outcome::Skipped(Skip::NoConnectors));
    }
    let routes = resolve(store, &keys, namespace, source_of)?;

    let mut builder = PodPatch::new(pod, spec, &annotations, (&keys, &routes), config, mode);
    builder.containers()?;
    if mode == Mode::Create {
        builder.volumes();
        builder.annotations();
        builder.label();
    }
    let images_rewritten = builder.images_rewritten;
    let patch = builder.finish();
    if patch.0.is_empty() {
        Ok(Outcome::Unchanged { connectors: keys })
    } else {
        Ok(Outcome::Patched {
            patch,
            connectors: keys,
            images_rewritten,
        })
    }
}

/// The connectors of `keys` whose images admission rewrites, resolved by
/// the store: every one in the pod's `namespace` (a missing one is denied
/// by name), and those of other namespaces that are shared. A connector of
/// another namespace that is not shared, or does not exist, is left out
/// alike: admission does no authorization, so its answer must not tell
/// the two apart; the proxy and the CSI plugin authorize it later.
fn resolve(
    store: &dyn ConnectorStore,
    keys: &[ConnectorKey],
    namespace: &str,
    source_of: &'static str,
) -> Result<Vec<ResolvedConnector>> {
    let mut routes = Vec::with_capacity(keys.len());
    for key in keys {
        let own = key.namespace == namespace;
        match store.resolve(key) {
            Some(Ok(resolved)) if own || resolved.connector.is_shared() => routes.push(resolved),
            Some(Err(source)) if own || store.connector(key).is_some_and(|c| c.is_shared()) => {
                return Err(MutationError::ConnectorAddress {
                    key: key.clone(),
                    source,
                });
            }
            None if own => {
                return Err(MutationError::UnknownConnector {
                    key: key.clone(),
                    source_of,
                });
            }
            _ => {}
        }
    }
    Ok(routes)
}

/// Builds the patch operations for one pod.
struct PodPatch<'a> {
    pod: &'a Value,
    spec: &'a Map<String, Value>,
    annotations: &'a BTreeMap<String, String>,
    /// Every connector the pod names.
    keys: &'a [ConnectorKey],
    /// Those whose images admission rewrites.
    routes: &'a [ResolvedConnector],
    config: &'a InjectionConfig,
    mode: Mode,
    pull_host: String,
    proxy_host: String,
    env: Vec<(&'static str, Value)>,
    original_images: BTreeMap<String, String>,
    images_rewritten: usize,
    ops: Vec<PatchOperation>,
}

impl<'a> PodPatch<'a> {
    fn new(
        pod: &'a Value,
        spec: &'a Map<String, Value>,
        annotations: &'a BTreeMap<String, String>,
        (keys, routes): (&'a [ConnectorKey], &'a [ResolvedConnector]),
        config: &'a InjectionConfig,
        mode: Mode,
    ) -> Self {
        let host_network = spec.get("hostNetwork").and_then(Value::as_bool).unwrap_or(false);
        // NB: hostNetwork pods share the node's address, so the proxy cannot
        // tell them apart by source IP; they get no proxy environment.
        let proxy = (!host_network).then(|| forward_proxy_url(&config.forward_proxy, keys));
        let hosts: Vec<&str> = routes.iter().map(ResolvedConnector::registry_host).collect();
        let env = container_env(config, proxy.as_deref(), &hosts);
        let env = env
            .into_iter()
            .map(|(name, value)| (name, json!({"name": name, "value": value})))
            .collect();
        Self {
            pod,
            spec,
            annotations,
            keys,
            routes,
            config,
            mode,
            pull_host: canonical_registry_host(&config.pull_address),
            proxy_host: canonical_registry_host(&config.proxy_address),
            env,
            original_images: BTreeMap::new(),
            images_rewritten: 0,
            ops: Vec::with_capacity(64),
        }
    }

    fn containers(&mut self) -> Result<()> {
        let fields: &[&'static str] = match self.mode {
            Mode::Create => &CONTAINER_FIELDS,
            Mode::EphemeralContainers => &["ephemeralContainers"],
        };
        let mounts = self.mounts();
        for &field in fields {
            let Some(list) = self.spec.get(field).and_then(Value::as_array) else {
                continue;
            };
            for (index, container) in list.iter().enumerate() {
                let Some(container) = container.as_object() else {
                    continue;
                };
                let base = ["spec", field, &index.to_string()].map(str::to_owned);
                self.image(field, &base, container)?;
                self.container_env(&base, container);
                self.container_mounts(&base, container, &mounts);
            }
        }
        Ok(())
    }

    /// Rewrites the image of one container if it is on a selected connector's
    /// registry and not already pointing at the proxy.
    fn image(&mut self, field: &'static str, base: &[String], container: &Map<String, Value>) -> Result<()> {
        let name = container.get("name").and_then(Value::as_str).unwrap_or_default();
        let Some(image) = container.get("image").and_then(Value::as_str) else {
            return Ok(());
        };
        let reference = Reference::parse(image).map_err(|source| MutationError::InvalidImage {
            field,
            name: name.to_owned(),
            image: image.to_owned(),
            source,
        })?;
        let host = canonical_registry_host(reference.domain());
        if host == self.pull_host {
            return Ok(());
        }
        // An image already in the proxy's form at the address pods use (a
        // digest pushed from a pod, ko's output) is pulled by the node from
        // the pull address, path unchanged.
        let at_proxy = host == self.proxy_host && reference.path().starts_with("namespaces/");
        let prefix = if at_proxy {
            String::new()
        } else {
            let Some(route) = self.routes.iter().find(|r| r.registry_host() == host) else {
                return Ok(());
            };
            route.key.proxy_path()
        };
        // NB: checked, so a name made too long by the prefix is denied now
        // rather than by the next pass, which could not parse it.
        let rewritten = reference
            .try_with_location(&self.config.pull_address, &prefix)
            .map_err(|source| MutationError::UnrewritableImage {
                field,
                name: name.to_owned(),
                image: image.to_owned(),
                rewritten: reference.with_location(&self.config.pull_address, &prefix).to_string(),
                source,
            })?
            .to_string();
        self.ops.push(replace(
            pointer(base.iter().map(String::as_str).chain(["image"])),
            json!(rewritten),
        ));
        self.original_images.insert(format!("{field}/{name}"), image.to_owned());
        self.images_rewritten += 1;
        Ok(())
    }

    fn container_env(&mut self, base: &[String], container: &Map<String, Value>) {
        let existing: Vec<&str> = container
            .get("env")
            .and_then(Value::as_array)
            .map(|env| env.iter().filter_map(|e| e.get("name")?.as_str()).collect())
            .unwrap_or_default();
        // NB: a value the user set wins, and setting one case of a proxy
        // variable counts for both: clients disagree on which case wins.
        let set = |name: &str| existing.iter().any(|e| e.eq_ignore_ascii_case(name));
        let additions: Vec<Value> = self
            .env
            .iter()
            .filter(|(name, _)| !set(name))
            .map(|(_, entry)| entry.clone())
            .collect();
        append_all(&mut self.ops, base, "env", container.get("env"), additions);
    }

    /// The mounts every container gets, given the volumes the pod has (or
    /// will have, on creation).
    fn mounts(&self) -> Vec<Value> {
        let has_volume = |name: &str| {
            self.spec
                .get("volumes")
                .and_then(Value::as_array)
                .is_some_and(|v| v.iter().any(|v| v.get("name").and_then(Value::as_str) == Some(name)))
        };
        let create = self.mode == Mode::Create;
        let mut mounts = Vec::new();
        if create || has_volume(keys::CSI_VOLUME) {
            mounts
                .push(json!({"name": keys::CSI_VOLUME, "mountPath": self.config.config_mount_path, "readOnly": true}));
        }
        if (create && self.config.proxy_ca_pem.is_some()) || (!create && has_volume(keys::CA_VOLUME)) {
            mounts.push(json!({"name": keys::CA_VOLUME, "mountPath": self.config.ca_mount_path, "readOnly": true}));
        }
        mounts
    }

    fn container_mounts(&mut self, base: &[String], container: &Map<String, Value>, mounts: &[Value]) {
        let existing = container.get("volumeMounts").and_then(Value::as_array);
        let taken = |mount: &Value| {
            existing.is_some_and(|list| {
                list.iter()
                    .any(|m| m.get("name") == mount.get("name") || m.get("mountPath") == mount.get("mountPath"))
            })
        };
        let additions: Vec<Value> = mounts.iter().filter(|m| !taken(m)).cloned().collect();
        append_all(
            &mut self.ops,
            base,
            "volumeMounts",
            container.get("volumeMounts"),
            additions,
        );
    }

    fn volumes(&mut self) {
        let existing = self.spec.get("volumes");
        let has = |name: &str| {
            existing
                .and_then(Value::as_array)
                .is_some_and(|v| v.iter().any(|v| v.get("name").and_then(Value::as_str) == Some(name)))
        };
        let keys = self.keys;
        let mut additions = Vec::new();
        if !has(keys::CSI_VOLUME) {
            // NB: the CSI plugin gives the token files to the pod's group or
            // user itself (from the pod's spec), so the volume is read-only
            // as the connector docs require.
            additions.push(json!({
                "name": keys::CSI_VOLUME,
                "csi": {
                    "driver": keys::CSI_DRIVER,
                    "readOnly": true,
                    "volumeAttributes": {keys::CSI_ATTRIBUTE_CONNECTORS: format_connector_list(keys)},
                },
            }));
        }
        if self.config.proxy_ca_pem.is_some() && !has(keys::CA_VOLUME) {
            additions.push(json!({
                "name": keys::CA_VOLUME,
                "downwardAPI": {
                    "defaultMode": 0o444,
                    "items": [{
                        "path": "ca.crt",
                        "fieldRef": {"fieldPath": format!("metadata.annotations['{}']", keys::PROXY_CA_ANNOTATION)},
                    }],
                },
            }));
        }
        let base = ["spec".to_owned()];
        append_all(&mut self.ops, &base, "volumes", existing, additions);
    }

    fn annotations(&mut self) {
        let mut wanted: Vec<(&str, String)> = vec![(keys::INJECTED_ANNOTATION, format_connector_list(self.keys))];
        if !self.original_images.is_empty() {
            let mut originals: BTreeMap<String, String> = self
                .annotations
                .get(keys::ORIGINAL_IMAGES_ANNOTATION)
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default();
            originals.extend(std::mem::take(&mut self.original_images));
            let encoded = serde_json::to_string(&originals).unwrap_or_default();
            wanted.push((keys::ORIGINAL_IMAGES_ANNOTATION, encoded));
        }
        if let Some(ca) = &self.config.proxy_ca_pem {
            wanted.push((keys::PROXY_CA_ANNOTATION, ca.clone()));
        }
        wanted.retain(|(key, value)| self.annotations.get(*key) != Some(value));
        if wanted.is_empty() {
            return;
        }
        let has_map = self.pod.pointer("/metadata/annotations").is_some_and(Value::is_object);
        if !has_map {
            let map: Map<String, Value> = wanted.into_iter().map(|(k, v)| (k.to_owned(), json!(v))).collect();
            if self.pod.get("metadata").is_some_and(Value::is_object) {
                self.ops
                    .push(add(pointer(["metadata", "annotations"]), Value::Object(map)));
            } else {
                self.ops.push(add(pointer(["metadata"]), json!({"annotations": map})));
            }
            return;
        }
        for (key, value) in wanted {
            let path = pointer(["metadata", "annotations", key]);
            if self.annotations.contains_key(key) {
                self.ops.push(replace(path, json!(value)));
            } else {
                self.ops.push(add(path, json!(value)));
            }
        }
    }

    /// The [`keys::INJECTED_LABEL`], which lets the proxy watch injected
    /// pods only.
    fn label(&mut self) {
        let labels = self.pod.pointer("/metadata/labels");
        if labels.and_then(|l| l.get(keys::INJECTED_LABEL)).and_then(Value::as_str) == Some("true") {
            return;
        }
        if labels.is_some_and(Value::is_object) {
            let path = pointer(["metadata", "labels", keys::INJECTED_LABEL]);
            let exists = labels.is_some_and(|l| l.get(keys::INJECTED_LABEL).is_some());
            self.ops.push(if exists {
                replace(path, json!("true"))
            } else {
                add(path, json!("true"))
            });
        } else {
            self.ops.push(add(
                pointer(["metadata", "labels"]),
                json!({keys::INJECTED_LABEL: "true"}),
            ));
        }
    }

    fn finish(self) -> Patch {
        Patch(self.ops)
    }
}

/// Appends `additions` to the array `field` under `base`, creating the array
/// when it is absent (or `null`).
fn append_all(
    ops: &mut Vec<PatchOperation>,
    base: &[String],
    field: &str,
    existing: Option<&Value>,
    additions: Vec<Value>,
) {
    if additions.is_empty() {
        return;
    }
    let tokens = || base.iter().map(String::as_str).chain([field]);
    match existing {
        Some(Value::Array(_)) => {
            let end = pointer(tokens().chain(["-"]));
            for value in additions {
                ops.push(add(end.clone(), value));
            }
        }
        Some(_) => ops.push(replace(pointer(tokens()), Value::Array(additions))),
        None => ops.push(add(pointer(tokens()), Value::Array(additions))),
    }
}

fn pointer<'t>(tokens: impl IntoIterator<Item = &'t str>) -> PointerBuf {
    PointerBuf::from_tokens(tokens)
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

fn replace(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Replace(ReplaceOperation { path, value })
}

/// Reads a `map[string]string` (labels, annotations) from raw JSON,
/// ignoring entries whose value is not a string.
pub fn string_map(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}
