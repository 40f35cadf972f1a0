//! A fake Kubernetes API server: a real HTTP server on loopback that answers
//! the list, watch and get requests of kube-rs clients with the API server's
//! own JSON, so code built on reflectors runs unchanged against it.
//!
//! The real cluster ([`crate::cluster`]: `tests/e2e.rs`, and `tests/node.rs`
//! with a real kubelet whose pulls the proxy authorizes by node) is what
//! proves the product against Kubernetes. This stand-in stays for what a
//! real API server cannot be made to do on demand: a watch answered `410
//! Expired`, injected 5xx answers and slow or refused requests, counting every
//! TokenReview and SubjectAccessReview a flood of forged tokens causes
//! (`access/tests/reviews.rs`), many pods and nodes with chosen IPs and
//! phases at once, and their revocation timing (`tests/proxy_cluster.rs`), an egress policy
//! other than the installed one (`controller/tests/status.rs`), and the
//! controller's lease and certificate edge cases (`controller/tests`: a
//! clean hand-over, a caBundle broken on purpose, which in the shared real
//! cluster would fail every other test's admissions), whose main paths
//! (status from real probes, failover, renewal, rotation) run against the
//! real control plane in `tests/e2e.rs`.
//!
//! What it serves, per registered [`ResourceType`], for all namespaces or one:
//!
//! - LIST: a `<Kind>List` (or, when the `Accept` header asks for
//!   `as=PartialObjectMetadataList;g=meta.k8s.io;v=v1`, a
//!   `PartialObjectMetadataList`) with `metadata.resourceVersion`, paginated
//!   by `limit`/`continue`.
//! - WATCH (`watch=true`): newline-delimited `{"type": ..., "object": ...}`
//!   events after `resourceVersion` (synthetic `ADDED`s for `0` or none, and
//!   for `sendInitialEvents=true` followed by the `k8s.io/initial-events-end`
//!   bookmark), then every change as it happens, until `timeoutSeconds`.
//!   Metadata-only watches (`as=PartialObjectMetadata`) carry
//!   `PartialObjectMetadata` objects. A watch from a resourceVersion older
//!   than the retained history gets an `ERROR` event with a `410 Expired`
//!   Status, as the watch cache answers.
//! - GET of one object, and `Status` objects for every error (404, 405, 406,
//!   injected 5xx).
//!
//! - POST, PUT, PATCH (merge, JSON and apply patches) and DELETE on
//!   objects and on the `status` subresource, with `409 AlreadyExists` and
//!   `409 Conflict` for stale resourceVersions (see `writes`).
//!
//! Tests change objects with [`FakeApiServer::apply`] and
//! [`FakeApiServer::delete`]: each change takes the next resourceVersion (one
//! counter for all kinds, as etcd's revision) and is streamed to open
//! watches. Every request is recorded (and its request line printed) so tests
//! can assert what a client asked for.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

mod writes;

/// A kind of object the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

/// `connectors.alauda.io/v1alpha1` Connectors.
pub const CONNECTORS: ResourceType = ResourceType {
    group: "connectors.alauda.io",
    version: "v1alpha1",
    kind: "Connector",
    plural: "connectors",
    namespaced: true,
};

/// `connectors.alauda.io/v1alpha1` ConnectorClasses (cluster-scoped).
pub const CONNECTOR_CLASSES: ResourceType = ResourceType {
    group: "connectors.alauda.io",
    version: "v1alpha1",
    kind: "ConnectorClass",
    plural: "connectorclasses",
    namespaced: false,
};

/// Core `v1` Namespaces.
pub const NAMESPACES: ResourceType = ResourceType {
    group: "",
    version: "v1",
    kind: "Namespace",
    plural: "namespaces",
    namespaced: false,
};

/// Core `v1` Secrets.
pub const SECRETS: ResourceType = ResourceType {
    group: "",
    version: "v1",
    kind: "Secret",
    plural: "secrets",
    namespaced: true,
};

/// Core `v1` Pods.
pub const PODS: ResourceType = ResourceType {
    group: "",
    version: "v1",
    kind: "Pod",
    plural: "pods",
    namespaced: true,
};

/// Core `v1` Nodes.
pub const NODES: ResourceType = ResourceType {
    group: "",
    version: "v1",
    kind: "Node",
    plural: "nodes",
    namespaced: false,
};

/// Core `v1` ConfigMaps.
pub const CONFIG_MAPS: ResourceType = ResourceType {
    group: "",
    version: "v1",
    kind: "ConfigMap",
    plural: "configmaps",
    namespaced: true,
};

/// `coordination.k8s.io/v1` Leases (leader election).
pub const LEASES: ResourceType = ResourceType {
    group: "coordination.k8s.io",
    version: "v1",
    kind: "Lease",
    plural: "leases",
    namespaced: true,
};

/// `events.k8s.io/v1` Events.
pub const EVENTS: ResourceType = ResourceType {
    group: "events.k8s.io",
    version: "v1",
    kind: "Event",
    plural: "events",
    namespaced: true,
};

/// Core `v1` Services (the controller's per-connector `c-<name>`).
pub const SERVICES: ResourceType = ResourceType {
    group: "",
    version: "v1",
    kind: "Service",
    plural: "services",
    namespaced: true,
};

/// `admissionregistration.k8s.io/v1` MutatingWebhookConfigurations.
pub const MUTATING_WEBHOOK_CONFIGURATIONS: ResourceType = ResourceType {
    group: "admissionregistration.k8s.io",
    version: "v1",
    kind: "MutatingWebhookConfiguration",
    plural: "mutatingwebhookconfigurations",
    namespaced: false,
};

/// Everything `connectors controller` reads and writes.
pub const CONTROLLER_RESOURCES: [ResourceType; 8] = [
    CONNECTORS,
    CONNECTOR_CLASSES,
    SECRETS,
    CONFIG_MAPS,
    LEASES,
    EVENTS,
    MUTATING_WEBHOOK_CONFIGURATIONS,
    SERVICES,
];

impl ResourceType {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn path_prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// `plural.group`, as Status messages name a resource.
    fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// The API server's metadata-only media types.
const METADATA_GROUP: &str = "meta.k8s.io";
const PARTIAL_OBJECT_METADATA: &str = "PartialObjectMetadata";
const PARTIAL_OBJECT_METADATA_LIST: &str = "PartialObjectMetadataList";

/// Watches end after this many seconds when a request does not say.
const DEFAULT_WATCH_TIMEOUT_SECONDS: u64 = 1800;

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string, empty when there is none.
    pub query: String,
    pub accept: Option<String>,
    pub authorization: Option<String>,
}

impl RecordedRequest {
    /// The decoded value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<String> {
        query_params(&self.query).remove(name)
    }

    pub fn is_watch(&self) -> bool {
        self.param("watch").as_deref() == Some("true")
    }

    /// True when the request asked for metadata only (`as=PartialObjectMetadata…`).
    pub fn wants_metadata_only(&self) -> bool {
        self.accept
            .as_deref()
            .is_some_and(|accept| accept.contains("as=PartialObjectMetadata"))
    }
}

impl fmt::Display for RecordedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)?;
        if !self.query.is_empty() {
            write!(f, "?{}", self.query)?;
        }
        if let Some(accept) = &self.accept {
            write!(f, " (Accept: {accept})")?;
        }
        Ok(())
    }
}

/// A running fake API server; it stops serving when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    state: Mutex<ApiState>,
    /// Bytes of every response body served so far.
    bytes_served: std::sync::atomic::AtomicU64,
    /// Open (`true`) or held (`false`) gates, per resource and verb.
    gates: HashMap<(ResourceType, Verb), watch::Sender<bool>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Verb {
    List,
    Watch,
}

struct ApiState {
    /// The last resourceVersion handed out.
    resource_version: u64,
    collections: HashMap<ResourceType, Collection>,
    requests: Vec<RecordedRequest>,
    /// Answers to review POSTs (TokenReview, SubjectAccessReview), by path.
    reviewers: HashMap<&'static str, Reviewer>,
}

/// Computes a review's `status` from the review the client posted.
pub type Reviewer = Arc<dyn Fn(&Value) -> Value + Send + Sync>;

/// The review APIs the fake answers through a [`Reviewer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Review {
    /// `authentication.k8s.io/v1` TokenReview.
    Token,
    /// `authorization.k8s.io/v1` SubjectAccessReview.
    SubjectAccess,
}

impl Review {
    fn path(self) -> &'static str {
        match self {
            Self::Token => "/apis/authentication.k8s.io/v1/tokenreviews",
            Self::SubjectAccess => "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        }
    }

    fn api_version_and_kind(self) -> (&'static str, &'static str) {
        match self {
            Self::Token => ("authentication.k8s.io/v1", "TokenReview"),
            Self::SubjectAccess => ("authorization.k8s.io/v1", "SubjectAccessReview"),
        }
    }

    fn from_path(path: &str) -> Option<Self> {
        [Self::Token, Self::SubjectAccess]
            .into_iter()
            .find(|r| r.path() == path)
    }
}

#[derive(Default)]
struct Collection {
    /// Objects by (namespace, name); the namespace is empty when cluster-scoped.
    objects: BTreeMap<(String, String), Value>,
    /// Every change after `history_starts_after`, oldest first.
    history: Vec<Change>,
    history_starts_after: u64,
    watchers: Vec<Watcher>,
    /// HTTP status codes for the next requests (lists, watches and gets).
    failures: VecDeque<u16>,
}

/// An open watch: where its events go, and what it asked for.
struct Watcher {
    sender: mpsc::UnboundedSender<Change>,
    /// `<namespace>/<fieldSelector>` (either part empty when not given).
    asked: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChangeType {
    Added,
    Modified,
    Deleted,
    Bookmark,
}

impl ChangeType {
    fn wire_name(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
            Self::Bookmark => "BOOKMARK",
        }
    }
}

#[derive(Clone, Debug)]
struct Change {
    change_type: ChangeType,
    resource_version: u64,
    /// The object after the change (for a delete: the last state, at the
    /// delete's resourceVersion); empty for bookmarks.
    object: Value,
    /// The object before a modification, so selector watches can tell an
    /// object that stopped or started matching.
    previous: Option<Value>,
}

impl FakeApiServer {
    /// Starts serving `resources` on `127.0.0.1:0`; the fake knows nothing else.
    pub async fn start(resources: &[ResourceType]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API server");
        let addr = listener.local_addr().expect("the fake API server's address");
        let mut gates = HashMap::new();
        for resource in resources {
            for verb in [Verb::List, Verb::Watch] {
                gates.insert((*resource, verb), watch::channel(true).0);
            }
        }
        let shared = Arc::new(Shared {
            bytes_served: std::sync::atomic::AtomicU64::new(0),
            state: Mutex::new(ApiState {
                resource_version: 1,
                collections: resources.iter().map(|r| (*r, Collection::default())).collect(),
                requests: Vec::new(),
                reviewers: HashMap::new(),
            }),
            gates,
        });
        let router = Router::new().fallback(serve_counted).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { addr, shared, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bytes of every response body this server sent (lists, watch
    /// events, gets, writes): what its clients read from the API.
    pub fn bytes_served(&self) -> u64 {
        self.shared.bytes_served.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A kube client talking to this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().expect("a valid URL"));
        kube::Client::try_from(config).expect("a kube client for the fake API server")
    }

    /// A kubeconfig file's text pointing at this server with bearer `token`.
    pub fn kubeconfig(&self, token: &str) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: tester\n  user:\n    token: {token}\n\
             contexts:\n\
             - name: fake\n  context:\n    cluster: fake\n    user: tester\n    namespace: default\n\
             current-context: fake\n",
            url = self.url()
        )
    }

    /// Creates or replaces an object (its `metadata.namespace` and
    /// `metadata.name` say which), as the API server stores it: with
    /// `apiVersion`, `kind`, a uid, a creation timestamp and the next
    /// resourceVersion. Open watches see `ADDED` or `MODIFIED`. Returns the
    /// new resourceVersion.
    pub fn apply(&self, resource: ResourceType, object: Value) -> u64 {
        let stored = self.state().store(resource, object);
        stored["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect("a stored object has a resourceVersion")
    }

    /// Deletes an object; open watches see `DELETED` with its last state at
    /// the delete's resourceVersion. Returns that resourceVersion, or `None`
    /// when there was no such object.
    pub fn delete(&self, resource: ResourceType, namespace: Option<&str>, name: &str) -> Option<u64> {
        let last = self.state().remove(resource, namespace.unwrap_or_default(), name)?;
        last["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
    }

    /// Answers `review` POSTs with the status `reviewer` computes from the
    /// posted object (its `spec`), as the API server's authenticator and
    /// authorizer do. Without a reviewer such POSTs get a 404 Status.
    pub fn set_reviewer(&self, review: Review, reviewer: impl Fn(&Value) -> Value + Send + Sync + 'static) {
        self.state().reviewers.insert(review.path(), Arc::new(reviewer));
    }

    /// How many `review` POSTs the fake received.
    pub fn review_count(&self, review: Review) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|r| r.method == "POST" && r.path == review.path())
            .count()
    }

    /// Sends a `BOOKMARK` at the current resourceVersion to every open watch.
    pub fn bookmark(&self) {
        let mut state = self.state();
        let resource_version = state.resource_version;
        for collection in state.collections.values_mut() {
            collection.broadcast(&Change {
                change_type: ChangeType::Bookmark,
                resource_version,
                object: Value::Null,
                previous: None,
            });
        }
    }

    /// Ends every open watch of `resource`, as an API server restart or a
    /// load balancer timeout does; clients re-watch from their last
    /// resourceVersion.
    pub fn close_watches(&self, resource: ResourceType) {
        self.state().collection(resource).watchers.clear();
    }

    /// How many watches of `resource` are open.
    pub fn open_watches(&self, resource: ResourceType) -> usize {
        let mut state = self.state();
        let collection = state.collection(resource);
        collection.watchers.retain(|watcher| !watcher.sender.is_closed());
        collection.watchers.len()
    }

    /// The open watches of `resource`, each as `<namespace>/<fieldSelector>`
    /// (an empty part when not given), sorted.
    pub fn open_watches_asking(&self, resource: ResourceType) -> Vec<String> {
        let mut state = self.state();
        let collection = state.collection(resource);
        collection.watchers.retain(|watcher| !watcher.sender.is_closed());
        let mut asked: Vec<String> = collection.watchers.iter().map(|w| w.asked.clone()).collect();
        asked.sort();
        asked
    }

    /// Forgets the history of `resource` up to now, as etcd compaction
    /// does: a watch from an older resourceVersion gets `410 Expired`.
    pub fn compact(&self, resource: ResourceType) {
        let mut state = self.state();
        let now = state.resource_version;
        let collection = state.collection(resource);
        collection.history.clear();
        collection.history_starts_after = now;
    }

    /// The next `count` requests for `resource` fail with `code` (a Status
    /// object) instead of being served.
    pub fn fail_next(&self, resource: ResourceType, count: usize, code: u16) {
        self.state()
            .collection(resource)
            .failures
            .extend(std::iter::repeat_n(code, count));
    }

    /// Lists of `resource` wait (after being recorded) until released.
    pub fn hold_lists(&self, resource: ResourceType) {
        self.gate(resource, Verb::List).send_replace(false);
    }

    pub fn release_lists(&self, resource: ResourceType) {
        self.gate(resource, Verb::List).send_replace(true);
    }

    /// Watches of `resource` wait (after being recorded) until released.
    pub fn hold_watches(&self, resource: ResourceType) {
        self.gate(resource, Verb::Watch).send_replace(false);
    }

    pub fn release_watches(&self, resource: ResourceType) {
        self.gate(resource, Verb::Watch).send_replace(true);
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().requests.clone()
    }

    /// Waits (polling, at most `within`) until a request matching `wanted`
    /// has arrived; returns whether one did.
    pub async fn wait_for_request(&self, within: Duration, wanted: impl Fn(&RecordedRequest) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.state().requests.iter().any(&wanted) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn state(&self) -> MutexGuard<'_, ApiState> {
        self.shared.state()
    }

    fn gate(&self, resource: ResourceType, verb: Verb) -> &watch::Sender<bool> {
        self.shared
            .gates
            .get(&(resource, verb))
            .unwrap_or_else(|| panic!("the fake API server does not serve {}", resource.plural))
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
        for collection in self.state().collections.values_mut() {
            collection.watchers.clear();
        }
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, ApiState> {
        // NB: a panicking test thread must not hide the state from the server.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn pass_gate(&self, resource: ResourceType, verb: Verb) {
        if let Some(gate) = self.gates.get(&(resource, verb)) {
            let mut open = gate.subscribe();
            let _ = open.wait_for(|open| *open).await;
        }
    }
}

impl ApiState {
    fn collection(&mut self, resource: ResourceType) -> &mut Collection {
        self.collections
            .get_mut(&resource)
            .unwrap_or_else(|| panic!("the fake API server does not serve {}", resource.plural))
    }
}

impl Collection {
    fn record(&mut self, change: Change) {
        self.broadcast(&change);
        self.history.push(change);
    }

    fn broadcast(&mut self, change: &Change) {
        self.watchers
            .retain(|watcher| watcher.sender.send(change.clone()).is_ok());
    }
}

fn object_key(resource: ResourceType, object: &Value) -> (String, String) {
    let metadata = &object["metadata"];
    let name = metadata["name"].as_str().expect("an object has metadata.name");
    let namespace = if resource.namespaced {
        metadata["namespace"]
            .as_str()
            .expect("a namespaced object has metadata.namespace")
    } else {
        ""
    };
    (namespace.to_owned(), name.to_owned())
}

/// What a request addresses.
#[derive(Debug)]
enum Target {
    Collection {
        resource: ResourceType,
        namespace: Option<String>,
    },
    Object {
        resource: ResourceType,
        namespace: Option<String>,
        name: String,
    },
}

fn route(resources: impl Iterator<Item = ResourceType>, path: &str) -> Option<Target> {
    for resource in resources {
        let Some(rest) = path.strip_prefix(&resource.path_prefix()) else {
            continue;
        };
        let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        let target = match segments.as_slice() {
            [plural] if *plural == resource.plural => Target::Collection {
                resource,
                namespace: None,
            },
            [plural, name] if *plural == resource.plural && !resource.namespaced => Target::Object {
                resource,
                namespace: None,
                name: (*name).to_owned(),
            },
            ["namespaces", namespace, plural] if *plural == resource.plural && resource.namespaced => {
                Target::Collection {
                    resource,
                    namespace: Some((*namespace).to_owned()),
                }
            }
            ["namespaces", namespace, plural, name] if *plural == resource.plural && resource.namespaced => {
                Target::Object {
                    resource,
                    namespace: Some((*namespace).to_owned()),
                    name: (*name).to_owned(),
                }
            }
            _ => continue,
        };
        return Some(target);
    }
    None
}

/// How the client asked to see objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Representation {
    Full,
    MetadataOnly,
}

/// Picks the first media range in `Accept` the API server can serve:
/// JSON, whole or as `as=<metadata_kind>;g=meta.k8s.io;v=v1`.
fn negotiate(headers: &HeaderMap, metadata_kind: &str) -> Option<Representation> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Some(Representation::Full);
    };
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media_type = parts.next().unwrap_or_default();
        if !matches!(media_type, "application/json" | "application/*" | "*/*") {
            continue;
        }
        let params: HashMap<&str, &str> = parts.filter_map(|p| p.split_once('=')).collect();
        match params.get("as") {
            None => return Some(Representation::Full),
            Some(kind)
                if *kind == metadata_kind
                    && params.get("g") == Some(&METADATA_GROUP)
                    && matches!(params.get("v"), Some(&"v1") | Some(&"v1beta1")) =>
            {
                return Some(Representation::MetadataOnly);
            }
            Some(_) => continue,
        }
    }
    None
}

fn content_type(representation: Representation, metadata_kind: &str) -> String {
    match representation {
        Representation::Full => "application/json".to_owned(),
        Representation::MetadataOnly => format!("application/json;as={metadata_kind};g={METADATA_GROUP};v=v1"),
    }
}

/// The object as a `PartialObjectMetadata`, or whole.
fn represent(object: &Value, representation: Representation) -> Value {
    match representation {
        Representation::Full => object.clone(),
        Representation::MetadataOnly => json!({
            "kind": PARTIAL_OBJECT_METADATA,
            "apiVersion": format!("{METADATA_GROUP}/v1"),
            "metadata": object["metadata"],
        }),
    }
}

/// A `Status` object with its HTTP status.
fn status_response(code: u16, reason: &str, message: String, details: Option<Value>) -> Response {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(details) = details {
        status["details"] = details;
    }
    json_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "application/json",
        &status,
    )
}

fn injected_failure(code: u16) -> Response {
    let reason = match code {
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    };
    status_response(
        code,
        reason,
        "Internal error occurred: the fake API server was told to fail this request".to_owned(),
        None,
    )
}

fn json_response(status: StatusCode, content_type: &str, body: &Value) -> Response {
    let mut response = (status, serde_json::to_vec(body).expect("JSON serialises")).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        content_type.parse().expect("a valid content type"),
    );
    response
}

/// [`serve`], counting the bytes of the body as they are sent.
async fn serve_counted(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    use futures::StreamExt;
    let response = serve(State(shared.clone()), request).await;
    response.map(|body| {
        Body::from_stream(body.into_data_stream().inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                shared
                    .bytes_served
                    .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }))
    })
}

async fn serve(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let recorded = RecordedRequest {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        query: request.uri().query().unwrap_or_default().to_owned(),
        accept: header_text(request.headers(), header::ACCEPT),
        authorization: header_text(request.headers(), header::AUTHORIZATION),
    };
    eprintln!("fake API server: {recorded}");
    let params = query_params(&recorded.query);
    if request.method() == Method::POST
        && let Some(review) = Review::from_path(request.uri().path())
    {
        shared.state().requests.push(recorded);
        return serve_review(&shared, review, request).await;
    }
    if request.method() != Method::GET {
        shared.state().requests.push(recorded);
        return writes::serve_write(&shared, request).await;
    }
    let target = {
        let mut state = shared.state();
        state.requests.push(recorded);
        route(state.collections.keys().copied(), request.uri().path())
    };
    let Some(target) = target else {
        return status_response(
            404,
            "NotFound",
            "the server could not find the requested resource".to_owned(),
            Some(json!({"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]})),
        );
    };
    let selector = match Selector::from_params(&params) {
        Ok(selector) => selector,
        Err(message) => return status_response(400, "BadRequest", message, None),
    };
    match target {
        Target::Collection { resource, namespace } if params.get("watch").map(String::as_str) == Some("true") => {
            serve_watch(&shared, resource, namespace, selector, &params, request.headers()).await
        }
        Target::Collection { resource, namespace } => {
            serve_list(&shared, resource, namespace, &selector, &params, request.headers()).await
        }
        Target::Object {
            resource,
            namespace,
            name,
        } => serve_get(&shared, resource, namespace, &name, request.headers()),
    }
}

fn not_acceptable() -> Response {
    status_response(
        406,
        "NotAcceptable",
        "only the following media types are accepted: application/json".to_owned(),
        None,
    )
}

fn in_namespace(key: &(String, String), namespace: Option<&str>) -> bool {
    namespace.is_none_or(|namespace| key.0 == namespace)
}

fn serve_get(
    shared: &Shared,
    resource: ResourceType,
    namespace: Option<String>,
    name: &str,
    headers: &HeaderMap,
) -> Response {
    let Some(representation) = negotiate(headers, PARTIAL_OBJECT_METADATA) else {
        return not_acceptable();
    };
    let mut state = shared.state();
    let collection = state.collection(resource);
    if let Some(code) = collection.failures.pop_front() {
        return injected_failure(code);
    }
    let key = (namespace.unwrap_or_default(), name.to_owned());
    match collection.objects.get(&key) {
        Some(object) => json_response(
            StatusCode::OK,
            &content_type(representation, PARTIAL_OBJECT_METADATA),
            &represent(object, representation),
        ),
        None => status_response(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", resource.qualified_plural()),
            Some(json!({"name": name, "group": resource.group, "kind": resource.plural})),
        ),
    }
}

async fn serve_list(
    shared: &Shared,
    resource: ResourceType,
    namespace: Option<String>,
    selector: &Selector,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    let Some(representation) = negotiate(headers, PARTIAL_OBJECT_METADATA_LIST) else {
        return not_acceptable();
    };
    shared.pass_gate(resource, Verb::List).await;
    let mut state = shared.state();
    let current = state.resource_version;
    let collection = state.collection(resource);
    if let Some(code) = collection.failures.pop_front() {
        return injected_failure(code);
    }
    // NB: a continue token pins the snapshot's resourceVersion and names
    // the last key listed; the fake pages over the current objects from
    // there, which is exact while nothing changes and costs a page, not the
    // collection, per request (as etcd's range reads do).
    let (resource_version, after) = match params.get("continue") {
        Some(token) => match parse_continue(token) {
            Some((resource_version, last)) => (resource_version, Some(last)),
            None => {
                return status_response(
                    400,
                    "BadRequest",
                    "continue key is not valid: incorrect encoded start resourceVersion".to_owned(),
                    None,
                );
            }
        },
        None => (current, None),
    };
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let start = match &after {
        Some(key) => Bound::Excluded(key),
        None => Bound::Unbounded,
    };
    let mut matching = collection
        .objects
        .range((start, Bound::Unbounded))
        .filter(|(key, object)| in_namespace(key, namespace.as_deref()) && selector.matches(object));
    let page: Vec<(&(String, String), &Value)> = matching.by_ref().take(limit).collect();
    let mut list_metadata = json!({"resourceVersion": resource_version.to_string()});
    if let Some(((last_namespace, last_name), _)) = page.last()
        && matching.next().is_some()
    {
        list_metadata["continue"] = json!(format!("fake-continue:{resource_version}:{last_namespace}/{last_name}"));
    }
    let page: Vec<Value> = page
        .into_iter()
        .map(|(_, object)| list_item(resource, object, representation))
        .collect();
    let (kind, api_version) = match representation {
        Representation::Full => (format!("{}List", resource.kind), resource.api_version()),
        Representation::MetadataOnly => (PARTIAL_OBJECT_METADATA_LIST.to_owned(), format!("{METADATA_GROUP}/v1")),
    };
    json_response(
        StatusCode::OK,
        &content_type(representation, PARTIAL_OBJECT_METADATA_LIST),
        &json!({"kind": kind, "apiVersion": api_version, "metadata": list_metadata, "items": page}),
    )
}

/// A continue token's resourceVersion and the key listed last.
fn parse_continue(token: &str) -> Option<(u64, (String, String))> {
    let (resource_version, last) = token.strip_prefix("fake-continue:")?.split_once(':')?;
    let (namespace, name) = last.split_once('/')?;
    Some((resource_version.parse().ok()?, (namespace.to_owned(), name.to_owned())))
}

/// The UID the fake gives an object created at `resource_version` (what
/// [`FakeApiServer::apply`] returns for a new object).
pub fn assigned_uid(resource_version: u64) -> String {
    format!("00000000-0000-4000-8000-{resource_version:012x}")
}

/// An item of a list: built-in kinds are listed without `apiVersion` and
/// `kind` (the list says them), custom resources and metadata with them.
fn list_item(resource: ResourceType, object: &Value, representation: Representation) -> Value {
    let mut item = represent(object, representation);
    if representation == Representation::Full
        && resource.group.is_empty()
        && let Some(fields) = item.as_object_mut()
    {
        fields.remove("apiVersion");
        fields.remove("kind");
    }
    item
}

async fn serve_watch(
    shared: &Shared,
    resource: ResourceType,
    namespace: Option<String>,
    selector: Selector,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    let Some(representation) = negotiate(headers, PARTIAL_OBJECT_METADATA) else {
        return not_acceptable();
    };
    shared.pass_gate(resource, Verb::Watch).await;
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(DEFAULT_WATCH_TIMEOUT_SECONDS);
    let send_initial_events = params.get("sendInitialEvents").map(String::as_str) == Some("true");
    let from = params.get("resourceVersion").map(String::as_str).unwrap_or_default();

    let mut state = shared.state();
    let current = state.resource_version;
    let collection = state.collection(resource);
    if let Some(code) = collection.failures.pop_front() {
        return injected_failure(code);
    }
    let mut initial = VecDeque::new();
    if from.is_empty() || from == "0" || send_initial_events {
        // "Start at most recent" (or "any"): synthetic ADDEDs for the current state.
        initial.extend(
            collection
                .objects
                .values()
                .filter(|o| selector.matches(o))
                .map(|object| Change {
                    change_type: ChangeType::Added,
                    resource_version: current,
                    object: object.clone(),
                    previous: None,
                }),
        );
        if send_initial_events {
            initial.push_back(Change {
                change_type: ChangeType::Bookmark,
                resource_version: current,
                object: json!({"metadata": {"annotations": {"k8s.io/initial-events-end": "true"}}}),
                previous: None,
            });
        }
    } else {
        let Ok(from) = from.parse::<u64>() else {
            return status_response(
                400,
                "BadRequest",
                format!("resourceVersion: Invalid value: \"{from}\": must be a number"),
                None,
            );
        };
        if from < collection.history_starts_after {
            // NB: the watch cache answers a too old resourceVersion with
            // 200 and an ERROR event, not with an HTTP 410.
            let expired = json!({
                "type": "ERROR",
                "object": {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": format!("too old resource version: {from} ({})", collection.history_starts_after + 1),
                    "reason": "Expired",
                    "code": 410,
                },
            });
            let mut line = serde_json::to_vec(&expired).expect("JSON serialises");
            line.push(b'\n');
            return watch_response(representation, Body::from(line));
        }
        initial.extend(
            collection
                .history
                .iter()
                .filter(|change| change.resource_version > from)
                .cloned(),
        );
    }
    let (sender, live) = mpsc::unbounded_channel();
    let asked = format!(
        "{}/{}",
        namespace.as_deref().unwrap_or_default(),
        params.get("fieldSelector").map(String::as_str).unwrap_or_default()
    );
    collection.watchers.push(Watcher { sender, asked });
    drop(state);

    let stream = WatchStream {
        resource,
        namespace,
        selector,
        representation,
        initial,
        live,
        deadline: tokio::time::Instant::now() + Duration::from_secs(timeout),
    };
    watch_response(representation, Body::from_stream(stream.into_lines()))
}

fn watch_response(representation: Representation, body: Body) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        content_type(representation, PARTIAL_OBJECT_METADATA)
            .parse()
            .expect("a valid content type"),
    );
    response
}

/// The events of one watch: the backlog, then live changes, until the
/// deadline or until the server drops the watch.
struct WatchStream {
    resource: ResourceType,
    namespace: Option<String>,
    selector: Selector,
    representation: Representation,
    initial: VecDeque<Change>,
    live: mpsc::UnboundedReceiver<Change>,
    deadline: tokio::time::Instant,
}

impl WatchStream {
    fn into_lines(self) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
        futures::stream::unfold(self, |mut watch| async move {
            loop {
                let change = match watch.initial.pop_front() {
                    Some(change) => change,
                    None => {
                        tokio::select! {
                            change = watch.live.recv() => change?,
                            () = tokio::time::sleep_until(watch.deadline) => return None,
                        }
                    }
                };
                if let Some(line) = watch.event_line(&change) {
                    return Some((Ok(line), watch));
                }
            }
        })
    }

    /// The wire form of `change`, or `None` when this watch does not see it.
    fn event_line(&self, change: &Change) -> Option<Bytes> {
        let object = if change.change_type == ChangeType::Bookmark {
            let (kind, api_version) = match self.representation {
                Representation::Full => (self.resource.kind.to_owned(), self.resource.api_version()),
                Representation::MetadataOnly => (PARTIAL_OBJECT_METADATA.to_owned(), format!("{METADATA_GROUP}/v1")),
            };
            let mut metadata = json!({
                "resourceVersion": change.resource_version.to_string(),
                "creationTimestamp": null,
            });
            if let Some(annotations) = change.object.pointer("/metadata/annotations") {
                metadata["annotations"] = annotations.clone();
            }
            json!({"kind": kind, "apiVersion": api_version, "metadata": metadata})
        } else {
            let key = object_key(self.resource, &change.object);
            if !in_namespace(&key, self.namespace.as_deref()) {
                return None;
            }
            // NB: as the watch cache does, an object that starts matching
            // the selector is ADDED and one that stops matching is DELETED
            // (in its last matching state, at the new resourceVersion).
            let now = self.selector.matches(&change.object);
            let before = change.previous.as_ref().map(|p| self.selector.matches(p));
            let (change_type, object) = match (change.change_type, before, now) {
                (ChangeType::Modified, Some(false), true) => (ChangeType::Added, change.object.clone()),
                (ChangeType::Modified, Some(true), false) => {
                    let mut last = change.previous.clone().unwrap_or_default();
                    last["metadata"]["resourceVersion"] = json!(change.resource_version.to_string());
                    (ChangeType::Deleted, last)
                }
                (_, _, true) => (change.change_type, change.object.clone()),
                (_, _, false) => return None,
            };
            let event = json!({"type": change_type.wire_name(), "object": represent(&object, self.representation)});
            let mut line = serde_json::to_vec(&event).expect("JSON serialises");
            line.push(b'\n');
            return Some(Bytes::from(line));
        };
        let event = json!({"type": change.change_type.wire_name(), "object": object});
        let mut line = serde_json::to_vec(&event).expect("JSON serialises");
        line.push(b'\n');
        Some(Bytes::from(line))
    }
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Decoded `application/x-www-form-urlencoded` query parameters.
fn query_params(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(name), form_decode(value))
        })
        .collect()
}

fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => decoded.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    Some(byte) => {
                        decoded.push(byte);
                        i += 2;
                    }
                    None => decoded.push(b'%'),
                }
            }
            other => decoded.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// A list or watch's `labelSelector` and `fieldSelector`, as the API server
/// parses them: label requirements `k=v`, `k==v`, `k!=v`, `k`, `!k`,
/// `k in (a,b)`, `k notin (a,b)`; field requirements `path=v`, `path==v`,
/// `path!=v` over the object's JSON (e.g. `metadata.name`, `spec.nodeName`,
/// `status.podIP`).
#[derive(Clone, Debug, Default)]
struct Selector {
    labels: Vec<LabelRequirement>,
    fields: Vec<(String, bool, String)>,
}

#[derive(Clone, Debug)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl Selector {
    fn from_params(params: &HashMap<String, String>) -> Result<Self, String> {
        let mut selector = Self::default();
        if let Some(text) = params.get("labelSelector") {
            for requirement in split_requirements(text) {
                selector.labels.push(LabelRequirement::parse(requirement)?);
            }
        }
        if let Some(text) = params.get("fieldSelector") {
            for requirement in split_requirements(text) {
                let (path, equal, value) = if let Some((path, value)) = requirement.split_once("!=") {
                    (path, false, value)
                } else if let Some((path, value)) = requirement.split_once("==") {
                    (path, true, value)
                } else if let Some((path, value)) = requirement.split_once('=') {
                    (path, true, value)
                } else {
                    return Err(format!("invalid field selector: '{requirement}'"));
                };
                selector
                    .fields
                    .push((path.trim().to_owned(), equal, value.trim().to_owned()));
            }
        }
        Ok(selector)
    }

    fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let label = |key: &str| labels.get(key).and_then(Value::as_str);
        let labels_match = self.labels.iter().all(|requirement| match requirement {
            LabelRequirement::Equals(k, v) => label(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            LabelRequirement::Exists(k) => label(k).is_some(),
            LabelRequirement::Absent(k) => label(k).is_none(),
            LabelRequirement::In(k, values) => label(k).is_some_and(|l| values.iter().any(|v| v == l)),
            LabelRequirement::NotIn(k, values) => label(k).is_none_or(|l| values.iter().all(|v| v != l)),
        });
        labels_match
            && self.fields.iter().all(|(path, equal, value)| {
                let pointer = format!("/{}", path.replace('.', "/"));
                let actual = object.pointer(&pointer).and_then(Value::as_str).unwrap_or_default();
                (actual == value) == *equal
            })
    }
}

impl LabelRequirement {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let invalid = || format!("unable to parse requirement: '{text}'");
        if let Some(key) = text.strip_prefix('!') {
            return Ok(Self::Absent(key.trim().to_owned()));
        }
        if let Some((key, value)) = text.split_once("!=") {
            return Ok(Self::NotEquals(key.trim().to_owned(), value.trim().to_owned()));
        }
        if let Some((key, value)) = text.split_once("==").or_else(|| text.split_once('=')) {
            return Ok(Self::Equals(key.trim().to_owned(), value.trim().to_owned()));
        }
        for (operator, negated) in [(" notin ", true), (" in ", false)] {
            if let Some((key, values)) = text.split_once(operator) {
                let values = values
                    .trim()
                    .strip_prefix('(')
                    .and_then(|v| v.strip_suffix(')'))
                    .ok_or_else(invalid)?;
                let values = values.split(',').map(|v| v.trim().to_owned()).collect();
                let key = key.trim().to_owned();
                return Ok(if negated {
                    Self::NotIn(key, values)
                } else {
                    Self::In(key, values)
                });
            }
        }
        if text.is_empty() || text.contains(char::is_whitespace) {
            return Err(invalid());
        }
        Ok(Self::Exists(text.to_owned()))
    }
}

/// Splits a selector at the commas outside parentheses.
fn split_requirements(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0_u32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// A review POST: 201 with the posted object and the reviewer's `status`.
async fn serve_review(shared: &Shared, review: Review, request: Request) -> Response {
    let reviewer = shared.state().reviewers.get(review.path()).cloned();
    let Some(reviewer) = reviewer else {
        return status_response(
            404,
            "NotFound",
            "the server could not find the requested resource".to_owned(),
            None,
        );
    };
    let body = match axum::body::to_bytes(request.into_body(), 1 << 20).await {
        Ok(body) => body,
        Err(error) => return status_response(400, "BadRequest", format!("cannot read the body: {error}"), None),
    };
    let mut object: Value = match serde_json::from_slice(&body) {
        Ok(object) => object,
        Err(error) => {
            return status_response(
                400,
                "BadRequest",
                format!("couldn't get version/kind; json parse error: {error}"),
                None,
            );
        }
    };
    let (api_version, kind) = review.api_version_and_kind();
    if object["kind"] != kind || object["apiVersion"] != api_version {
        return status_response(
            400,
            "BadRequest",
            format!("the body is not a {api_version} {kind}"),
            None,
        );
    }
    object["status"] = reviewer(&object);
    object["metadata"] = json!({"creationTimestamp": null});
    json_response(StatusCode::CREATED, "application/json", &object)
}
