//! `KubeStore` against a fake API server that speaks the real list/watch
//! wire format: it syncs only once both initial lists arrive, follows watch
//! events without relisting, reads namespaces as metadata only, never asks
//! for Secrets, and recovers from failures and expired watches.

use std::time::{Duration, Instant};

use connector::ConnectorKey;
use connector::keys::{CONNECTOR_ANNOTATION, PROXY_INJECT};
use connector::store::{ConnectorStore, Following, KubeSecretStore, KubeStore, SecretStore};
use serde_json::{Value, json};
use testing::apiserver::{CONNECTORS, FakeApiServer, NAMESPACES, RecordedRequest, SECRETS};

/// The longest any test waits for one thing to happen.
const WAIT: Duration = Duration::from_secs(10);

const CONNECTORS_PATH: &str = "/apis/connectors.alauda.io/v1alpha1/connectors";
const NAMESPACES_PATH: &str = "/api/v1/namespaces";

fn connector(namespace: &str, name: &str, address: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "connectorClassName": "harbor",
            "address": address,
            "auth": {"name": "basicAuth", "secretRef": {"name": "robot"}},
        },
    })
}

fn namespace(name: &str, labels: Value, annotations: Value) -> Value {
    let mut labels = labels;
    labels["kubernetes.io/metadata.name"] = json!(name);
    json!({
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

/// Polls `condition` every 20 ms for at most [`WAIT`].
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_list_of(path: &'static str) -> impl Fn(&RecordedRequest) -> bool {
    move |request| request.path == path && !request.is_watch()
}

fn is_watch_of(path: &'static str) -> impl Fn(&RecordedRequest) -> bool {
    move |request| request.path == path && request.is_watch()
}

fn count(api: &FakeApiServer, wanted: impl Fn(&RecordedRequest) -> bool) -> usize {
    api.requests().iter().filter(|request| wanted(request)).count()
}

fn address(store: &KubeStore, namespace: &str, name: &str) -> Option<String> {
    store
        .connector(&ConnectorKey::new(namespace, name))
        .map(|connector| connector.spec.address.clone())
}

fn names_in(store: &KubeStore, namespace: &str) -> Vec<String> {
    store
        .connectors_in(namespace)
        .iter()
        .map(|connector| connector.metadata.name.clone().unwrap_or_default())
        .collect()
}

/// A fake with namespace `team` holding connector `harbor`, and a store
/// that has synced against it.
async fn synced_store() -> (FakeApiServer, KubeStore) {
    let api = FakeApiServer::start(&[CONNECTORS, NAMESPACES]).await;
    api.apply(NAMESPACES, namespace("team", json!({}), json!({})));
    api.apply(CONNECTORS, connector("team", "harbor", "https://harbor.example.com"));
    let store = KubeStore::spawn(api.client());
    eventually("the store has synced", || store.has_synced()).await;
    eventually("both watches are open", || {
        api.open_watches(CONNECTORS) == 1 && api.open_watches(NAMESPACES) == 1
    })
    .await;
    (api, store)
}

#[tokio::test]
async fn store_is_not_synced_until_both_initial_lists_arrive_then_answers_from_memory() {
    let api = FakeApiServer::start(&[CONNECTORS, NAMESPACES]).await;
    for (namespace, name, address) in [
        ("team", "zot", "https://zot.example.com"),
        ("team", "harbor", "https://harbor.example.com"),
        ("team", "docker-hub", "https://registry-1.docker.io"),
        ("team", "quay", "https://quay.io"),
        ("other", "harbor", "https://harbor.other.example.com"),
    ] {
        api.apply(CONNECTORS, connector(namespace, name, address));
    }
    api.apply(
        NAMESPACES,
        namespace(
            "team",
            json!({PROXY_INJECT: "true"}),
            json!({CONNECTOR_ANNOTATION: "harbor"}),
        ),
    );
    api.hold_lists(NAMESPACES);

    let store = KubeStore::spawn(api.client());
    assert!(api.wait_for_request(WAIT, is_list_of(NAMESPACES_PATH)).await);
    assert!(api.wait_for_request(WAIT, is_watch_of(CONNECTORS_PATH)).await);
    eventually("the connectors are listed", || {
        address(&store, "team", "harbor").is_some()
    })
    .await;
    // NB: the namespace list is held by the fake; a complete view needs it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!store.has_synced(), "synced without the namespace list");
    assert_eq!(store.namespace("team"), None);

    api.release_lists(NAMESPACES);
    eventually("the store has synced", || store.has_synced()).await;

    assert_eq!(
        address(&store, "team", "harbor").as_deref(),
        Some("https://harbor.example.com")
    );
    assert_eq!(
        address(&store, "other", "harbor").as_deref(),
        Some("https://harbor.other.example.com")
    );
    assert_eq!(address(&store, "team", "ghost"), None);
    assert_eq!(names_in(&store, "team"), ["docker-hub", "harbor", "quay", "zot"]);
    assert_eq!(names_in(&store, "other"), ["harbor"]);
    assert!(names_in(&store, "nowhere").is_empty());
    let team = store.namespace("team").expect("namespace team is known");
    assert_eq!(team.labels.get(PROXY_INJECT).map(String::as_str), Some("true"));
    assert_eq!(
        team.labels.get("kubernetes.io/metadata.name").map(String::as_str),
        Some("team")
    );
    assert_eq!(
        team.annotations.get(CONNECTOR_ANNOTATION).map(String::as_str),
        Some("harbor")
    );
    assert_eq!(store.namespace("unknown"), None);

    // Reads are answered from memory: they make no requests.
    let requests_before = api.requests().len();
    for _ in 0..100 {
        assert!(store.connector(&ConnectorKey::new("team", "zot")).is_some());
        assert_eq!(store.connectors_in("team").len(), 4);
        assert!(store.namespace("team").is_some());
    }
    assert_eq!(api.requests().len(), requests_before);
}

#[tokio::test]
async fn watch_events_add_change_and_remove_connectors_without_restart() {
    let (api, store) = synced_store().await;

    api.apply(CONNECTORS, connector("team", "quay", "https://quay.io"));
    eventually("the added connector is visible", || {
        address(&store, "team", "quay").is_some()
    })
    .await;

    api.apply(CONNECTORS, connector("team", "harbor", "https://harbor2.example.com"));
    eventually("the changed address is visible", || {
        address(&store, "team", "harbor").as_deref() == Some("https://harbor2.example.com")
    })
    .await;

    api.delete(CONNECTORS, Some("team"), "harbor").expect("harbor existed");
    eventually("the deleted connector is gone", || {
        address(&store, "team", "harbor").is_none()
    })
    .await;
    assert_eq!(names_in(&store, "team"), ["quay"]);

    assert!(store.has_synced());
    assert_eq!(count(&api, is_list_of(CONNECTORS_PATH)), 1, "{:#?}", api.requests());
    assert_eq!(count(&api, is_watch_of(CONNECTORS_PATH)), 1, "{:#?}", api.requests());
}

#[tokio::test]
async fn namespace_labels_from_metadata_only_watch_are_visible() {
    let (api, store) = synced_store().await;
    assert_eq!(store.namespace("team").unwrap().labels.get(PROXY_INJECT), None);

    api.apply(NAMESPACES, namespace("team", json!({PROXY_INJECT: "true"}), json!({})));
    eventually("the proxy-inject label is visible", || {
        store
            .namespace("team")
            .is_some_and(|team| team.labels.get(PROXY_INJECT).map(String::as_str) == Some("true"))
    })
    .await;

    api.apply(
        NAMESPACES,
        namespace("fresh", json!({}), json!({CONNECTOR_ANNOTATION: "team/harbor"})),
    );
    eventually("the new namespace is visible", || {
        store
            .namespace("fresh")
            .is_some_and(|fresh| fresh.annotations.get(CONNECTOR_ANNOTATION).map(String::as_str) == Some("team/harbor"))
    })
    .await;

    api.delete(NAMESPACES, None, "fresh").expect("fresh existed");
    eventually("the deleted namespace is gone", || store.namespace("fresh").is_none()).await;
    assert_eq!(count(&api, is_list_of(NAMESPACES_PATH)), 1, "{:#?}", api.requests());
}

#[tokio::test]
async fn namespaces_are_read_as_metadata_only_and_secrets_are_never_requested() {
    let (api, store) = synced_store().await;
    api.apply(NAMESPACES, namespace("team", json!({PROXY_INJECT: "true"}), json!({})));
    eventually("the namespace change is visible", || {
        store
            .namespace("team")
            .is_some_and(|team| team.labels.contains_key(PROXY_INJECT))
    })
    .await;

    let requests = api.requests();
    let namespace_requests: Vec<_> = requests.iter().filter(|r| r.path == NAMESPACES_PATH).collect();
    assert!(namespace_requests.iter().any(|r| !r.is_watch()), "{requests:#?}");
    assert!(namespace_requests.iter().any(|r| r.is_watch()), "{requests:#?}");
    for request in &namespace_requests {
        let accept = request.accept.as_deref().unwrap_or_default();
        let wanted = if request.is_watch() {
            "as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
        } else {
            "as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
        };
        assert!(accept.contains(wanted), "{request} downloads whole Namespace objects");
    }
    // Connectors are read whole; nothing else is read at all.
    for request in &requests {
        assert!(
            request.path == NAMESPACES_PATH || request.path == CONNECTORS_PATH,
            "unexpected request {request}"
        );
        assert!(!request.path.contains("secrets"), "{request}");
        assert_eq!(request.method, "GET", "{request}");
    }
}

#[tokio::test]
async fn a_failing_api_server_is_retried_with_backoff_until_the_store_syncs() {
    let api = FakeApiServer::start(&[CONNECTORS, NAMESPACES]).await;
    api.apply(NAMESPACES, namespace("team", json!({}), json!({})));
    api.apply(CONNECTORS, connector("team", "harbor", "https://harbor.example.com"));
    api.fail_next(CONNECTORS, 2, 500);
    api.fail_next(NAMESPACES, 1, 500);

    let store = KubeStore::spawn(api.client());
    assert!(api.wait_for_request(WAIT, is_list_of(CONNECTORS_PATH)).await);
    assert!(!store.has_synced());
    eventually("the store has synced after the failures", || store.has_synced()).await;
    assert_eq!(
        address(&store, "team", "harbor").as_deref(),
        Some("https://harbor.example.com")
    );
    assert_eq!(count(&api, is_list_of(CONNECTORS_PATH)), 3, "{:#?}", api.requests());
    assert_eq!(count(&api, is_list_of(NAMESPACES_PATH)), 2, "{:#?}", api.requests());
    eventually("the connector watch is open", || api.open_watches(CONNECTORS) == 1).await;

    // A watch that cannot restart is retried too; the store keeps answering meanwhile.
    api.fail_next(CONNECTORS, 1, 500);
    api.close_watches(CONNECTORS);
    api.apply(CONNECTORS, connector("team", "quay", "https://quay.io"));
    assert_eq!(
        address(&store, "team", "harbor").as_deref(),
        Some("https://harbor.example.com")
    );
    eventually("the change made during the outage is visible", || {
        address(&store, "team", "quay").is_some()
    })
    .await;
    assert!(store.has_synced());
}

#[tokio::test]
async fn a_closed_watch_resumes_from_the_last_bookmark_without_relisting() {
    let (api, store) = synced_store().await;
    // Namespace changes move the resourceVersion on; the connector watch
    // learns the new one only from a bookmark.
    let mut latest = 0;
    for n in 0..3 {
        latest = api.apply(NAMESPACES, namespace(&format!("ns-{n}"), json!({}), json!({})));
    }
    api.bookmark();
    api.close_watches(CONNECTORS);

    let resumed = |request: &RecordedRequest| {
        is_watch_of(CONNECTORS_PATH)(request) && request.param("resourceVersion") == Some(latest.to_string())
    };
    assert!(api.wait_for_request(WAIT, resumed).await, "{:#?}", api.requests());
    api.apply(CONNECTORS, connector("team", "quay", "https://quay.io"));
    eventually("the resumed watch delivers changes", || {
        address(&store, "team", "quay").is_some()
    })
    .await;
    assert_eq!(count(&api, is_list_of(CONNECTORS_PATH)), 1, "{:#?}", api.requests());
}

#[tokio::test]
async fn a_watch_from_an_expired_resource_version_relists_and_forgets_deleted_connectors() {
    let (api, store) = synced_store().await;
    api.apply(CONNECTORS, connector("team", "quay", "https://quay.io"));
    eventually("quay is visible", || address(&store, "team", "quay").is_some()).await;

    // The watch drops; while it is away, connectors change and the history
    // is compacted, so resuming gets 410 Expired.
    let watches = count(&api, is_watch_of(CONNECTORS_PATH));
    api.hold_watches(CONNECTORS);
    api.close_watches(CONNECTORS);
    eventually("the client re-watches", || {
        count(&api, is_watch_of(CONNECTORS_PATH)) > watches
    })
    .await;
    api.delete(CONNECTORS, Some("team"), "harbor").expect("harbor existed");
    api.apply(CONNECTORS, connector("team", "ghcr", "https://ghcr.io"));
    api.compact(CONNECTORS);
    api.release_watches(CONNECTORS);

    eventually("the relisted view replaces the old one", || {
        names_in(&store, "team") == ["ghcr", "quay"]
    })
    .await;
    assert_eq!(count(&api, is_list_of(CONNECTORS_PATH)), 2, "{:#?}", api.requests());
    assert!(store.has_synced());
}

fn basic_auth_secret(namespace: &str, name: &str, password: &str) -> Value {
    use base64::Engine;
    let encode = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
    json!({
        "metadata": {"name": name, "namespace": namespace},
        "type": "kubernetes.io/basic-auth",
        "data": {"username": encode("robot$ci"), "password": encode(password)},
    })
}

fn password(secrets: &KubeSecretStore, namespace: &str, name: &str) -> Option<String> {
    let secret = secrets.secret(namespace, name)?;
    let bytes = secret.data.as_ref()?.get("password")?.0.clone();
    Some(String::from_utf8(bytes).unwrap())
}

/// The password of the Secret for a request about to use it.
async fn password_for_use(secrets: &KubeSecretStore, namespace: &str, name: &str) -> Option<String> {
    let secret = secrets
        .secret_for_use(namespace, name)
        .await
        .expect("the secret is read")?;
    let bytes = secret.data.as_ref()?.get("password")?.0.clone();
    Some(String::from_utf8(bytes).unwrap())
}

fn secret_requests(api: &FakeApiServer) -> Vec<RecordedRequest> {
    api.requests()
        .into_iter()
        .filter(|r| r.path.contains("/secrets"))
        .collect()
}

#[tokio::test]
async fn the_secret_store_follows_exactly_the_referenced_secrets_in_use_and_their_changes() {
    let api = FakeApiServer::start(&[CONNECTORS, NAMESPACES, SECRETS]).await;
    api.apply(NAMESPACES, namespace("team", json!({}), json!({})));
    api.apply(SECRETS, basic_auth_secret("team", "robot", "first"));
    api.apply(SECRETS, basic_auth_secret("team", "other", "unrelated"));
    api.apply(CONNECTORS, connector("team", "harbor", "https://harbor.test"));
    let store = KubeStore::spawn(api.client());
    let secrets = KubeSecretStore::spawn(api.client(), &store);
    eventually("the store has synced", || store.has_synced()).await;

    // Nothing is read before a request uses it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(secret_requests(&api).is_empty(), "{:#?}", secret_requests(&api));
    assert_eq!(password(&secrets, "team", "robot"), None);

    // The first use reads it; the watch then follows it.
    assert_eq!(
        password_for_use(&secrets, "team", "robot").await.as_deref(),
        Some("first")
    );
    assert_eq!(password(&secrets, "team", "robot").as_deref(), Some("first"));
    eventually("the used secret is watched", || api.open_watches(SECRETS) == 1).await;
    // A changed credential takes effect from the watch event.
    api.apply(SECRETS, basic_auth_secret("team", "robot", "second"));
    eventually("the new password arrives", || {
        password(&secrets, "team", "robot").as_deref() == Some("second")
    })
    .await;
    assert_eq!(
        password_for_use(&secrets, "team", "robot").await.as_deref(),
        Some("second")
    );

    // A Secret no Connector references is never read, even when asked for.
    assert_eq!(
        secrets.secret_for_use("team", "other").await,
        Err(connector::store::Unreadable)
    );
    assert_eq!(password(&secrets, "team", "other"), None);

    // A new reference, used, starts a watch; dropping the reference stops
    // the watch and forgets the secret.
    let mut second = connector("team", "second", "https://second.test");
    second["spec"]["auth"]["secretRef"]["name"] = json!("other");
    api.apply(CONNECTORS, second);
    eventually("the new connector is stored", || {
        store.connector(&ConnectorKey::new("team", "second")).is_some()
    })
    .await;
    assert_eq!(
        password_for_use(&secrets, "team", "other").await.as_deref(),
        Some("unrelated")
    );
    eventually("both used secrets are watched", || api.open_watches(SECRETS) == 2).await;
    api.delete(CONNECTORS, Some("team"), "second");
    eventually("the unreferenced secret is forgotten", || {
        password(&secrets, "team", "other").is_none() && api.open_watches(SECRETS) == 1
    })
    .await;

    // A deleted secret is gone, and a request learns it does not exist.
    api.delete(SECRETS, Some("team"), "robot");
    eventually("the deleted secret is gone", || {
        password(&secrets, "team", "robot").is_none()
    })
    .await;
    assert_eq!(secrets.secret_for_use("team", "robot").await, Ok(None));

    let secret_requests = secret_requests(&api);
    // Each Secret in use is read by name and watched by name: nothing lists
    // Secrets (the RBAC grants `get` and `watch` only).
    for request in &secret_requests {
        let read = matches!(
            request.path.as_str(),
            "/api/v1/namespaces/team/secrets/robot" | "/api/v1/namespaces/team/secrets/other"
        );
        let watch = request.path == "/api/v1/namespaces/team/secrets"
            && request.param("watch").as_deref() == Some("true")
            && matches!(
                request.param("fieldSelector").as_deref(),
                Some("metadata.name=robot" | "metadata.name=other")
            );
        assert!(
            request.method == "GET" && (read || watch),
            "every secret request reads or watches one referenced secret: {request}"
        );
    }
}

/// A fake holding namespace `team`, Secret `team/robot` (password "first")
/// and connector `team/harbor` naming it; a store synced against it and a
/// Secret store following with `following`.
async fn secret_lab(following: Following) -> (FakeApiServer, KubeStore, KubeSecretStore) {
    let api = FakeApiServer::start(&[CONNECTORS, NAMESPACES, SECRETS]).await;
    api.apply(NAMESPACES, namespace("team", json!({}), json!({})));
    api.apply(SECRETS, basic_auth_secret("team", "robot", "first"));
    api.apply(CONNECTORS, connector("team", "harbor", "https://harbor.test"));
    let store = KubeStore::spawn(api.client());
    let secrets = KubeSecretStore::spawn_with(api.client(), &store, following);
    eventually("the store has synced", || store.has_synced()).await;
    (api, store, secrets)
}

#[tokio::test]
async fn a_secret_unused_for_the_idle_time_leaves_memory_and_is_read_again_on_its_next_use() {
    let following = Following {
        idle: Duration::from_secs(1),
        ..Following::default()
    };
    let (api, _store, secrets) = secret_lab(following).await;

    assert_eq!(
        password_for_use(&secrets, "team", "robot").await.as_deref(),
        Some("first")
    );
    eventually("the used secret is watched", || api.open_watches(SECRETS) == 1).await;
    eventually("the idle secret is forgotten and its watch closed", || {
        password(&secrets, "team", "robot").is_none() && api.open_watches(SECRETS) == 0
    })
    .await;
    let reads = |api: &FakeApiServer| {
        count(api, |r| {
            r.path == "/api/v1/namespaces/team/secrets/robot" && r.method == "GET"
        })
    };
    assert_eq!(reads(&api), 1);

    // Changed while nobody used it: the next use reads the Secret as it is now.
    api.apply(SECRETS, basic_auth_secret("team", "robot", "rotated"));
    assert_eq!(
        password_for_use(&secrets, "team", "robot").await.as_deref(),
        Some("rotated")
    );
    assert_eq!(reads(&api), 2);
}

#[tokio::test]
async fn a_first_use_the_api_server_cannot_answer_fails_after_the_wait_and_the_next_succeeds() {
    let following = Following {
        first_read: Duration::from_millis(300),
        ..Following::default()
    };
    let (api, _store, secrets) = secret_lab(following).await;

    // NB: the reads fail (and are retried with backoff) past the wait.
    api.fail_next(SECRETS, 3, 500);
    let started = Instant::now();
    assert_eq!(
        secrets.secret_for_use("team", "robot").await,
        Err(connector::store::Unreadable)
    );
    assert!(started.elapsed() < WAIT, "the wait is bounded: {:?}", started.elapsed());
    eventually("the retried read arrives", || {
        password(&secrets, "team", "robot").is_some()
    })
    .await;
    assert_eq!(
        password_for_use(&secrets, "team", "robot").await.as_deref(),
        Some("first")
    );
}

#[tokio::test]
async fn the_connector_follower_reads_and_watches_by_name_only_the_connectors_named_and_never_lists() {
    use connector::store::{ConnectorLookup, KubeConnectorFollower};
    async fn host(follower: &KubeConnectorFollower) -> Option<String> {
        let resolved = follower.resolve_for_use(&ConnectorKey::new("team", "harbor")).await;
        resolved.unwrap().map(|r| r.unwrap().registry_host().to_owned())
    }
    let api = FakeApiServer::start(&[CONNECTORS, NAMESPACES]).await;
    api.apply(CONNECTORS, connector("team", "harbor", "https://harbor.example.com"));
    api.apply(CONNECTORS, connector("team", "unused", "https://unused.example.com"));
    let following = Following {
        idle: Duration::from_secs(1),
        ..Following::default()
    };
    let follower = KubeConnectorFollower::spawn(api.client(), following);
    assert!(follower.is_ready(), "ready without reading anything");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        api.requests().is_empty(),
        "nothing is read before a request names a connector"
    );

    assert_eq!(host(&follower).await.as_deref(), Some("harbor.example.com"));
    eventually("the named connector is watched", || api.open_watches(CONNECTORS) == 1).await;
    // A change arrives with the watch, without another read.
    api.apply(CONNECTORS, connector("team", "harbor", "https://harbor.example.org"));
    let deadline = Instant::now() + WAIT;
    while host(&follower).await.as_deref() != Some("harbor.example.org") {
        assert!(Instant::now() < deadline, "the changed address never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A connector that does not exist is answered as such.
    let missing = follower.resolve_for_use(&ConnectorKey::new("team", "missing")).await;
    assert!(matches!(missing, Ok(None)), "{missing:?}");
    assert_eq!(follower.followed(), 2, "harbor and the missing one");

    // Unnamed for the idle time: no longer followed.
    eventually("idle connectors are dropped and their watches closed", || {
        follower.followed() == 0 && api.open_watches(CONNECTORS) == 0
    })
    .await;

    let requests = api.requests();
    for request in &requests {
        let read = matches!(
            request.path.as_str(),
            "/apis/connectors.alauda.io/v1alpha1/namespaces/team/connectors/harbor"
                | "/apis/connectors.alauda.io/v1alpha1/namespaces/team/connectors/missing"
        );
        let watch = request.path == "/apis/connectors.alauda.io/v1alpha1/namespaces/team/connectors"
            && request.is_watch()
            && matches!(
                request.param("fieldSelector").as_deref(),
                Some("metadata.name=harbor" | "metadata.name=missing")
            );
        assert!(
            request.method == "GET" && (read || watch),
            "every request reads or watches one named connector: {request}"
        );
    }
}
