//! Offline mutation of manifests: every Pod, and the pod template of every
//! workload kind, mutated exactly as the webhook would at admission. This is
//! how a user checks what the webhook will do before applying.

use connector::store::ConnectorStore;
use json_patch::{Patch, PatchOperation};
use jsonptr::PointerBuf;
use serde::Serialize;
use serde_json::{Value, json};

use connector::injection::InjectionConfig;

use crate::mutation::{self, Mode, MutationError, Outcome};

/// Why a manifest cannot be mutated.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the manifest is not valid YAML: {0}")]
    Yaml(#[source] connector::yaml::YamlError),
    #[error("{object}: {source}")]
    Denied {
        /// `Kind namespace/name`.
        object: String,
        #[source]
        source: Box<MutationError>,
    },
    #[error("{kind} {namespace}/{name}: the patch does not apply: {why}")]
    Apply {
        kind: String,
        namespace: String,
        name: String,
        why: String,
    },
    #[error("failed to write YAML: {0}")]
    Encode(#[source] connector::yaml::YamlError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a kind keeps its pod (template), as JSON pointer tokens.
pub fn pod_template_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &[],
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController" | "Job" => {
            &["spec", "template"]
        }
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return None,
    })
}

/// One object's patch, as `--patch` prints it.
#[derive(Debug, Serialize)]
pub struct ObjectPatch {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub patch: Patch,
}

/// The mutated documents and the patches that made them.
#[derive(Debug, Default)]
pub struct Mutated {
    pub documents: Vec<Value>,
    pub patches: Vec<ObjectPatch>,
    /// Per document, its text as read when nothing in it was selected:
    /// written back byte for byte.
    pub unchanged: Vec<Option<String>>,
}

/// Parses multi-document YAML (also `kind: List`) and mutates every selected
/// pod or pod template. Objects without a namespace are in
/// `default_namespace`; `force_namespace` overrides every object's.
pub fn mutate_manifest(
    yaml: &str,
    store: &dyn ConnectorStore,
    config: &InjectionConfig,
    default_namespace: &str,
    force_namespace: Option<&str>,
) -> Result<Mutated> {
    // NB: each document's text is parsed on its own, so that one left
    // unchanged can be written back as it was read.
    let mut documents = Vec::new();
    for text in connector::yaml::split_documents(yaml) {
        let parsed = connector::yaml::parse_documents(text).map_err(Error::Yaml)?;
        let single = parsed.len() == 1;
        documents.extend(parsed.into_iter().map(|document| (document, single.then_some(text))));
    }
    let mut out = Mutated::default();
    for (mut document, text) in documents {
        let before = out.patches.len();
        if document.get("kind").and_then(Value::as_str) == Some("List") {
            if let Some(items) = document.get_mut("items").and_then(Value::as_array_mut) {
                for item in items {
                    mutate_object(
                        item,
                        store,
                        config,
                        default_namespace,
                        force_namespace,
                        &mut out.patches,
                    )?;
                }
            }
        } else {
            mutate_object(
                &mut document,
                store,
                config,
                default_namespace,
                force_namespace,
                &mut out.patches,
            )?;
        }
        let unchanged = out.patches.len() == before;
        out.unchanged.push(text.filter(|_| unchanged).map(str::to_owned));
        out.documents.push(document);
    }
    Ok(out)
}

fn mutate_object(
    object: &mut Value,
    store: &dyn ConnectorStore,
    config: &InjectionConfig,
    default_namespace: &str,
    force_namespace: Option<&str>,
    patches: &mut Vec<ObjectPatch>,
) -> Result<()> {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let Some(path) = pod_template_path(&kind) else {
        return Ok(());
    };
    let name = object
        .pointer("/metadata/name")
        .or_else(|| object.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let namespace = force_namespace
        .map(str::to_owned)
        .or_else(|| {
            object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| default_namespace.to_owned());
    let prefix = PointerBuf::from_tokens(path.iter().copied());
    let Some(pod) = object.pointer(prefix.as_str()) else {
        return Ok(());
    };
    // A template without metadata is still a pod for the mutation.
    let pod = if pod.get("metadata").is_some() {
        pod.clone()
    } else {
        json!({"metadata": {}, "spec": pod.get("spec").cloned().unwrap_or(Value::Null)})
    };
    let outcome =
        mutation::mutate_pod(&pod, &namespace, Mode::Create, store, config).map_err(|source| Error::Denied {
            object: format!("{kind} {namespace}/{name}"),
            source: Box::new(source),
        })?;
    let Outcome::Patched { patch, .. } = outcome else {
        return Ok(());
    };
    let mut ops = Vec::with_capacity(patch.0.len() + 1);
    if object
        .pointer(prefix.as_str())
        .and_then(|p| p.get("metadata"))
        .is_none()
    {
        ops.push(PatchOperation::Add(json_patch::AddOperation {
            path: prefixed(&prefix, &PointerBuf::from_tokens(["metadata"])),
            value: json!({}),
        }));
    }
    ops.extend(patch.0.into_iter().map(|op| prefix_op(&prefix, op)));
    let patch = Patch(ops);
    json_patch::patch(object, &patch).map_err(|e| Error::Apply {
        kind: kind.clone(),
        namespace: namespace.clone(),
        name: name.clone(),
        why: e.to_string(),
    })?;
    patches.push(ObjectPatch {
        kind,
        namespace,
        name,
        patch,
    });
    Ok(())
}

fn prefixed(prefix: &PointerBuf, path: &jsonptr::Pointer) -> PointerBuf {
    let mut out = prefix.clone();
    out.append(path);
    out
}

fn prefix_op(prefix: &PointerBuf, op: PatchOperation) -> PatchOperation {
    match op {
        PatchOperation::Add(mut o) => {
            o.path = prefixed(prefix, &o.path);
            PatchOperation::Add(o)
        }
        PatchOperation::Replace(mut o) => {
            o.path = prefixed(prefix, &o.path);
            PatchOperation::Replace(o)
        }
        other => other,
    }
}

/// The documents as multi-document YAML.
pub fn to_yaml(documents: &[Value]) -> Result<String> {
    let unchanged = vec![None; documents.len()];
    mutated_to_yaml(documents, &unchanged)
}

/// The documents as multi-document YAML: those in `unchanged` as they were
/// read, the others serialised.
pub fn mutated_to_yaml(documents: &[Value], unchanged: &[Option<String>]) -> Result<String> {
    let mut out = String::new();
    for (i, document) in documents.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        match unchanged.get(i).and_then(Option::as_deref) {
            Some(text) => {
                out.push_str(text);
                if !text.ends_with('\n') {
                    out.push('\n');
                }
            }
            None => out.push_str(&connector::yaml::to_string(document).map_err(Error::Encode)?),
        }
    }
    Ok(out)
}
