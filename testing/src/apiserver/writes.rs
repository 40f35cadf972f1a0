//! The fake API server's write verbs, answered as the real API server
//! answers them: POST (create), PUT (replace), PATCH (merge, JSON and apply
//! patches) and DELETE, on objects and on the `status` subresource.
//!
//! - Create assigns a uid, a creationTimestamp, the next resourceVersion and
//!   (for custom resources) `metadata.generation` 1; an existing name gets
//!   `409 AlreadyExists`.
//! - Replace and patch refuse a stale `metadata.resourceVersion` with
//!   `409 Conflict`; a spec change bumps the generation of custom resources.
//! - For kinds with a `status` subresource, writes to the object keep the
//!   stored status and writes to `/status` change only `.status` (never the
//!   generation).
//! - Delete honours `preconditions` and answers with the last state.
//!
//! Every write is streamed to open watches like [`super::FakeApiServer::apply`].

use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::{
    ApiState, Change, ChangeType, ResourceType, Shared, Target, header_text, injected_failure, json_response,
    object_key, route, status_response,
};

/// The largest request body the fake reads.
const MAX_BODY: usize = 16 << 20;

/// Kinds whose `status` is a subresource (custom resources declare it in
/// their CRD; these built-in kinds have one).
fn has_status_subresource(resource: ResourceType) -> bool {
    matches!(
        resource.kind,
        "Connector"
            | "Namespace"
            | "Pod"
            | "Node"
            | "Service"
            | "PersistentVolumeClaim"
            | "Deployment"
            | "DaemonSet"
            | "StatefulSet"
            | "ReplicaSet"
            | "Job"
            | "CronJob"
            | "CustomResourceDefinition"
    )
}

/// Whether the kind counts spec changes in `metadata.generation`: custom
/// resources and the workload groups, not the `*.k8s.io` built-ins.
fn counts_generations(resource: ResourceType) -> bool {
    !resource.group.is_empty() && !resource.group.ends_with(".k8s.io")
}

impl ApiState {
    /// Stores `object` as the API server does (apiVersion, kind, uid,
    /// creationTimestamp, the next resourceVersion, generation) and streams
    /// the change; returns the stored object.
    pub(super) fn store(&mut self, resource: ResourceType, object: Value) -> Value {
        self.resource_version += 1;
        let resource_version = self.resource_version;
        let collection = self.collection(resource);
        let key = object_key(resource, &object);
        let previous = collection.objects.get(&key).cloned();
        let mut object = object;
        object["apiVersion"] = json!(resource.api_version());
        object["kind"] = json!(resource.kind);
        let metadata = &mut object["metadata"];
        metadata["resourceVersion"] = json!(resource_version.to_string());
        let previous_metadata = previous.as_ref().map(|p| &p["metadata"]);
        metadata["uid"] = previous_metadata
            .map(|m| m["uid"].clone())
            .unwrap_or_else(|| json!(super::assigned_uid(resource_version)));
        if metadata.get("creationTimestamp").is_none_or(Value::is_null) {
            metadata["creationTimestamp"] = previous_metadata
                .map(|m| m["creationTimestamp"].clone())
                .unwrap_or_else(|| json!("2025-01-01T00:00:00Z"));
        }
        if counts_generations(resource) {
            // NB: custom resources count spec changes in metadata.generation.
            let generation = match &previous {
                None => 1,
                Some(previous) => {
                    let generation = previous["metadata"]["generation"].as_i64().unwrap_or(1);
                    if previous.get("spec") == object.get("spec") {
                        generation
                    } else {
                        generation + 1
                    }
                }
            };
            object["metadata"]["generation"] = json!(generation);
        }
        collection.objects.insert(key, object.clone());
        let change_type = if previous.is_some() {
            ChangeType::Modified
        } else {
            ChangeType::Added
        };
        collection.record(Change {
            change_type,
            resource_version,
            object: object.clone(),
            previous,
        });
        object
    }

    /// Removes an object and streams `DELETED` with its last state at the
    /// delete's resourceVersion; returns that state.
    pub(super) fn remove(&mut self, resource: ResourceType, namespace: &str, name: &str) -> Option<Value> {
        let resource_version = self.resource_version + 1;
        let collection = self.collection(resource);
        let key = (namespace.to_owned(), name.to_owned());
        let mut object = collection.objects.remove(&key)?;
        object["metadata"]["resourceVersion"] = json!(resource_version.to_string());
        collection.record(Change {
            change_type: ChangeType::Deleted,
            resource_version,
            object: object.clone(),
            previous: None,
        });
        self.resource_version = resource_version;
        Some(object)
    }
}

/// What a write addresses: a collection, an object, or an object's status.
struct WriteTarget {
    resource: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn write_target(shared: &Shared, path: &str) -> Option<WriteTarget> {
    let state = shared.state();
    let resources = || state.collections.keys().copied();
    let (target, status) = match route(resources(), path) {
        Some(target) => (target, false),
        None => (route(resources(), path.strip_suffix("/status")?)?, true),
    };
    Some(match target {
        Target::Collection { .. } if status => return None,
        Target::Collection { resource, namespace } => WriteTarget {
            resource,
            namespace,
            name: None,
            status,
        },
        Target::Object {
            resource,
            namespace,
            name,
        } => WriteTarget {
            resource,
            namespace,
            name: Some(name),
            status,
        },
    })
}

/// Serves POST, PUT, PATCH and DELETE.
pub(super) async fn serve_write(shared: &Shared, request: Request) -> Response {
    let method = request.method().clone();
    let Some(target) = write_target(shared, request.uri().path()) else {
        return status_response(
            404,
            "NotFound",
            "the server could not find the requested resource".to_owned(),
            Some(json!({"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]})),
        );
    };
    let content_type = header_text(request.headers(), header::CONTENT_TYPE).unwrap_or_default();
    let body = match axum::body::to_bytes(request.into_body(), MAX_BODY).await {
        Ok(body) => body,
        Err(error) => return status_response(400, "BadRequest", format!("cannot read the body: {error}"), None),
    };
    if let Some(code) = shared.state().collection(target.resource).failures.pop_front() {
        return injected_failure(code);
    }
    if target.resource.namespaced && target.namespace.is_none() && method != Method::POST {
        return not_found_page();
    }
    let namespace = target.namespace.clone().unwrap_or_default();
    match (&method, target.name.as_deref()) {
        (&Method::POST, None) if target.resource.namespaced && target.namespace.is_none() => not_found_page(),
        (&Method::POST, None) => match parse_object(&body) {
            Ok(object) => create(shared, target.resource, &namespace, object),
            Err(message) => status_response(400, "BadRequest", message, None),
        },
        (&Method::PUT, Some(name)) => match parse_object(&body) {
            Ok(object) => replace(shared, &target, &namespace, name, object),
            Err(message) => status_response(400, "BadRequest", message, None),
        },
        (&Method::PATCH, Some(name)) => patch(shared, &target, &namespace, name, &content_type, &body),
        (&Method::DELETE, Some(name)) => delete(shared, target.resource, &namespace, name, &body),
        _ => status_response(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
            None,
        ),
    }
}

fn not_found_page() -> Response {
    status_response(
        404,
        "NotFound",
        "the server could not find the requested resource".to_owned(),
        None,
    )
}

/// The written object, or why it is not one (a 400).
fn parse_object(body: &[u8]) -> Result<Value, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(object) if object.is_object() => Ok(object),
        Ok(_) => Err("the body of the request is not a JSON object".to_owned()),
        Err(error) => Err(format!("couldn't get version/kind; json parse error: {error}")),
    }
}

fn details(resource: ResourceType, name: &str) -> Value {
    json!({"name": name, "group": resource.group, "kind": resource.plural})
}

fn not_found(resource: ResourceType, name: &str) -> Response {
    status_response(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", resource.qualified_plural()),
        Some(details(resource, name)),
    )
}

fn conflict(resource: ResourceType, name: &str, why: &str) -> Response {
    status_response(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": {why}",
            resource.qualified_plural()
        ),
        Some(details(resource, name)),
    )
}

const MODIFIED: &str = "the object has been modified; please apply your changes to the latest version and try again";

fn invalid(resource: ResourceType, name: &str, message: String) -> Response {
    status_response(422, "Invalid", message, Some(details(resource, name)))
}

fn create(shared: &Shared, resource: ResourceType, namespace: &str, mut object: Value) -> Response {
    let metadata = object
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
        .expect("a JSON object");
    if resource.namespaced {
        match metadata["namespace"].as_str() {
            Some(given) if given != namespace => {
                return status_response(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request".to_owned(),
                    None,
                );
            }
            _ => metadata["namespace"] = json!(namespace),
        }
    }
    let mut state = shared.state();
    if metadata["name"].as_str().is_none_or(str::is_empty) {
        let Some(prefix) = metadata["generateName"].as_str() else {
            return invalid(
                resource,
                "",
                format!(
                    "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                    resource.kind
                ),
            );
        };
        metadata["name"] = json!(format!("{prefix}{:05x}", state.resource_version + 1));
    }
    let name = metadata["name"].as_str().unwrap_or_default().to_owned();
    if let Some(fields) = metadata.as_object_mut() {
        for server_set in ["resourceVersion", "uid", "generation", "deletionTimestamp"] {
            fields.remove(server_set);
        }
        fields.insert("creationTimestamp".to_owned(), json!(now_rfc3339()));
    }
    if has_status_subresource(resource)
        && let Some(fields) = object.as_object_mut()
    {
        // NB: the status of a kind with a status subresource is ignored on create.
        fields.remove("status");
    }
    let key = object_key(resource, &object);
    if state.collection(resource).objects.contains_key(&key) {
        return status_response(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", resource.qualified_plural()),
            Some(details(resource, &name)),
        );
    }
    let stored = state.store(resource, object);
    json_response(StatusCode::CREATED, "application/json", &stored)
}

/// The object to store for a write of `written` over `current`: the
/// subresource rules applied, identity fields kept.
fn merged_write(resource: ResourceType, status: bool, current: &Value, written: Value) -> Value {
    let mut next = if !has_status_subresource(resource) {
        written
    } else if status {
        let mut next = current.clone();
        next["status"] = written.get("status").cloned().unwrap_or(Value::Null);
        next
    } else {
        let mut next = written;
        match current.get("status") {
            Some(status) => next["status"] = status.clone(),
            None => {
                if let Some(fields) = next.as_object_mut() {
                    fields.remove("status");
                }
            }
        }
        next
    };
    for kept in ["name", "namespace", "uid", "creationTimestamp", "generation"] {
        match current["metadata"].get(kept) {
            Some(value) => next["metadata"][kept] = value.clone(),
            None => {
                if let Some(fields) = next["metadata"].as_object_mut() {
                    fields.remove(kept);
                }
            }
        }
    }
    if next.get("status").is_some_and(Value::is_null)
        && let Some(fields) = next.as_object_mut()
    {
        fields.remove("status");
    }
    next
}

fn replace(shared: &Shared, target: &WriteTarget, namespace: &str, name: &str, object: Value) -> Response {
    let resource = target.resource;
    if let Some(given) = object["metadata"]["name"].as_str()
        && given != name
    {
        return status_response(
            400,
            "BadRequest",
            format!("the name of the object ({given}) does not match the name on the URL ({name})"),
            None,
        );
    }
    let mut state = shared.state();
    let key = (namespace.to_owned(), name.to_owned());
    let Some(current) = state.collection(resource).objects.get(&key).cloned() else {
        return not_found(resource, name);
    };
    // NB: an empty resourceVersion is an unconditional update.
    if let Some(given) = object["metadata"]["resourceVersion"].as_str().filter(|v| !v.is_empty())
        && Some(given) != current["metadata"]["resourceVersion"].as_str()
    {
        return conflict(resource, name, MODIFIED);
    }
    let next = merged_write(resource, target.status, &current, object);
    let stored = state.store(resource, next);
    json_response(StatusCode::OK, "application/json", &stored)
}

fn patch(
    shared: &Shared,
    target: &WriteTarget,
    namespace: &str,
    name: &str,
    content_type: &str,
    body: &[u8],
) -> Response {
    let resource = target.resource;
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    let unsupported = || {
        status_response(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml \
                 (not {media_type:?})"
            ),
            None,
        )
    };
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(parsed) => parsed,
        Err(error) => return status_response(400, "BadRequest", format!("error decoding patch: {error}"), None),
    };
    let mut state = shared.state();
    let key = (namespace.to_owned(), name.to_owned());
    let current = state.collection(resource).objects.get(&key).cloned();
    let is_apply = media_type == "application/apply-patch+yaml";
    let current = match current {
        Some(current) => current,
        None if is_apply => {
            // NB: server-side apply creates what does not exist.
            drop(state);
            let mut object = parsed;
            object["metadata"]["name"] = json!(name);
            return create(shared, resource, namespace, object);
        }
        None => return not_found(resource, name),
    };
    let mut patched = current.clone();
    match media_type {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" | "application/apply-patch+yaml" => {
            if media_type == "application/strategic-merge-patch+json" && counts_generations(resource) {
                // NB: custom resources have no strategic merge schema.
                return unsupported();
            }
            json_patch::merge(&mut patched, &parsed);
        }
        "application/json-patch+json" => {
            let operations: json_patch::Patch = match serde_json::from_value(parsed) {
                Ok(operations) => operations,
                Err(error) => {
                    return status_response(400, "BadRequest", format!("error decoding patch: {error}"), None);
                }
            };
            if let Err(error) = json_patch::patch(&mut patched, &operations) {
                return invalid(resource, name, error.to_string());
            }
        }
        _ => return unsupported(),
    }
    if let Some(given) = patched["metadata"]["resourceVersion"].as_str()
        && Some(given) != current["metadata"]["resourceVersion"].as_str()
    {
        return conflict(resource, name, MODIFIED);
    }
    let next = merged_write(resource, target.status, &current, patched);
    let stored = state.store(resource, next);
    json_response(StatusCode::OK, "application/json", &stored)
}

fn delete(shared: &Shared, resource: ResourceType, namespace: &str, name: &str, body: &[u8]) -> Response {
    let options: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut state = shared.state();
    let key = (namespace.to_owned(), name.to_owned());
    let Some(current) = state.collection(resource).objects.get(&key).cloned() else {
        return not_found(resource, name);
    };
    let preconditions = &options["preconditions"];
    for (field, label) in [("resourceVersion", "ResourceVersion"), ("uid", "UID")] {
        if let Some(wanted) = preconditions[field].as_str()
            && Some(wanted) != current["metadata"][field].as_str()
        {
            let why = format!(
                "Precondition failed: {label} in precondition: {wanted}, {label} in object meta: {}",
                current["metadata"][field].as_str().unwrap_or_default()
            );
            return conflict(resource, name, &why);
        }
    }
    match state.remove(resource, namespace, name) {
        Some(last) => json_response(StatusCode::OK, "application/json", &last),
        None => not_found(resource, name),
    }
}

/// Now as the API server writes timestamps: RFC 3339, whole seconds, UTC.
fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "2025-01-01T00:00:00Z".to_owned())
}
