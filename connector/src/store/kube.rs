//! Stores filled by watching the API server: reflectors over Connectors (all
//! namespaces) and Namespace metadata, and (for the proxy) one watch per
//! Secret a Connector references while requests use it. Reads answer from memory and never wait
//! on the network.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use super::named::{Following, UsedWatches};
use super::{AddressCache, ConnectorStore, NamespaceMeta, ResolvedConnector, SecretStore, Unreadable};
use crate::address::AddressError;
use crate::{Connector, ConnectorKey};

/// A [`ConnectorStore`] backed by reflectors.
#[derive(Clone)]
pub struct KubeStore {
    connectors: Store<Connector>,
    /// Connector names by namespace: a namespace's connectors without a
    /// scan of every connector.
    by_namespace: Arc<Indexed<ByNamespace>>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    synced: Arc<AtomicBool>,
    /// Bumped on every Connector event, for [`KubeSecretStore`].
    connector_changes: tokio::sync::watch::Receiver<u64>,
    addresses: Arc<AddressCache>,
}

impl KubeStore {
    /// Starts the reflectors on the current tokio runtime. The store answers
    /// at once (empty until the first lists arrive; see
    /// [`ConnectorStore::has_synced`]); watch errors are retried with backoff
    /// and logged.
    pub fn spawn(client: Client) -> Self {
        let (connectors, connector_writer) = reflector::store();
        let (namespaces, namespace_writer) = reflector::store();

        let connector_api: Api<Connector> = Api::all(client.clone());
        let (changed, connector_changes) = tokio::sync::watch::channel(0_u64);
        let by_namespace = Arc::new(Indexed::<ByNamespace>::default());
        let connector_stream = reflector::reflector(
            connector_writer,
            watcher(connector_api, watcher::Config::default())
                .default_backoff()
                .modify(slim_connector),
        )
        .inspect({
            let by_namespace = by_namespace.clone();
            move |event| {
                if let Ok(event) = event {
                    by_namespace.follow(event);
                }
                changed.send_modify(|n| *n += 1);
            }
        });
        tokio::spawn(drain("connectors", connector_stream));

        // NB: an Api over PartialObjectMeta makes metadata-only requests.
        let namespace_api: Api<PartialObjectMeta<Namespace>> = Api::all(client);
        let namespace_stream = reflector::reflector(
            namespace_writer,
            watcher(namespace_api, watcher::Config::default())
                .default_backoff()
                .modify(|ns| drop_bookkeeping(&mut ns.metadata)),
        );
        tokio::spawn(drain("namespaces", namespace_stream));

        let synced = synced_flag(&connectors, &namespaces, "connector and namespace caches synced");
        Self {
            connectors,
            by_namespace,
            namespaces,
            synced,
            connector_changes,
            addresses: Arc::default(),
        }
    }
}

/// The Secrets `connector` references, as (namespace, name).
pub fn referenced_secrets(connector: &Connector) -> Vec<(String, String)> {
    let namespace = connector.metadata.namespace.clone().unwrap_or_default();
    let auth = connector.spec.auth.as_ref().and_then(|a| a.secret_ref.as_ref());
    auth.into_iter()
        .chain(connector.spec.ca_cert_secret_ref.as_ref())
        .map(|r| (namespace.clone(), r.name.clone()))
        .collect()
}

/// Drops the API server's bookkeeping from an object before a cache keeps
/// it: managed fields (half of a small object's bytes, and parsed into
/// nested JSON maps about 7 KiB of memory per Connector) and kubectl's
/// copy of the last applied object. No component reads either.
pub fn drop_bookkeeping(metadata: &mut ObjectMeta) {
    metadata.managed_fields = None;
    if let Some(annotations) = metadata.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Drops what no reader of the store uses from a Connector before it is
/// kept: the bookkeeping ([`drop_bookkeeping`]) and the status conditions
/// (only the status's proxy address is read).
pub(super) fn slim_connector(connector: &mut Connector) {
    drop_bookkeeping(&mut connector.metadata);
    if let Some(status) = connector.status.as_mut() {
        status.conditions = Vec::new();
    }
}

/// A [`SecretStore`] that follows a referenced Secret while requests use
/// it ([`UsedWatches`]: `get` and a `watch` by `metadata.name` per Secret,
/// never `list`). The first use reads it (the request waits for that one
/// read); the watch then keeps it current, so a changed credential takes
/// effect with the watch event, without a restart; after
/// [`Following::idle`] without a use, or when no Connector references it
/// any more, the watch stops and the Secret leaves memory. A replica thus
/// holds the credentials it serves, not every credential of the cluster,
/// and opens one watch per Secret in use, not per Connector.
#[derive(Clone)]
pub struct KubeSecretStore {
    watches: UsedWatches<Secret>,
    connectors: KubeStore,
}

impl KubeSecretStore {
    /// Starts following the Secrets `connectors` reference as they are
    /// used, on the current tokio runtime.
    pub fn spawn(client: Client, connectors: &KubeStore) -> Self {
        Self::spawn_with(client, connectors, Following::default())
    }

    /// [`KubeSecretStore::spawn`] with other durations.
    pub fn spawn_with(client: Client, connectors: &KubeStore, following: Following) -> Self {
        // NB: a Connector change may drop a reference; the follower looks
        // again at once.
        let referenced = {
            let connectors = connectors.clone();
            move |key: &(String, String)| connectors.references(key)
        };
        let changes = Some(connectors.connector_changes.clone());
        Self {
            watches: UsedWatches::spawn(client, following, referenced, changes),
            connectors: connectors.clone(),
        }
    }
}

/// A [`ConnectorLookup`] that follows a Connector while requests name it
/// (the CSI plugin's: kubelet publishes a pod's volume when it starts and
/// again about every minute while it runs). The first publish that names
/// a connector reads it (`get`) and starts a watch by `metadata.name`;
/// after [`Following::idle`] without a publish the watch stops. A plugin
/// thus holds and follows the connectors of its node's pods, not every
/// Connector of the cluster, so a DaemonSet rollout on thousands of nodes
/// does not read every Connector on each.
#[derive(Clone)]
pub struct KubeConnectorFollower {
    watches: UsedWatches<Connector>,
    addresses: Arc<AddressCache>,
}

impl KubeConnectorFollower {
    /// Starts following connectors as they are named, on the current tokio
    /// runtime.
    pub fn spawn(client: Client, following: Following) -> Self {
        Self {
            watches: UsedWatches::spawn(client, following, |_| true, None),
            addresses: Arc::default(),
        }
    }

    /// How many connectors are followed now.
    pub fn followed(&self) -> usize {
        self.watches.len()
    }
}

impl super::ConnectorLookup for KubeConnectorFollower {
    fn resolve_for_use<'a>(
        &'a self,
        key: &'a ConnectorKey,
    ) -> futures::future::BoxFuture<'a, Result<Option<Result<super::ResolvedConnector, AddressError>>, Unreadable>>
    {
        Box::pin(async move {
            let connector = self.watches.for_use(&key.namespace, &key.name).await?;
            Ok(connector.map(|connector| self.addresses.resolve(key, connector, self.watches.len())))
        })
    }

    fn is_ready(&self) -> bool {
        true
    }
}

impl KubeStore {
    /// True when a Connector references the Secret `key` (namespace, name).
    fn references(&self, key: &(String, String)) -> bool {
        self.connectors_in(&key.0)
            .iter()
            .any(|connector| referenced_secrets(connector).contains(key))
    }
}

impl SecretStore for KubeSecretStore {
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.watches.get(namespace, name)
    }

    fn secret_for_use<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<Arc<Secret>>, Unreadable>> {
        Box::pin(async move {
            // NB: only a Secret not followed yet is checked against the
            // Connectors (once followed, the follower drops it when no
            // Connector references it any more): not on every request.
            let followed = self.watches.is_read(namespace, name);
            if !followed && !self.connectors.references(&(namespace.to_owned(), name.to_owned())) {
                return Err(Unreadable);
            }
            self.watches.for_use(namespace, name).await
        })
    }
}

/// A [`ClassStore`](super::ClassStore) backed by a reflector over the
/// cluster's ConnectorClasses.
#[derive(Clone)]
pub struct KubeClassStore {
    classes: Store<crate::ConnectorClass>,
}

impl KubeClassStore {
    /// Starts the reflector on the current tokio runtime.
    pub fn spawn(client: Client) -> Self {
        let (classes, writer) = reflector::store();
        let api: Api<crate::ConnectorClass> = Api::all(client);
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
        tokio::spawn(drain("connectorclasses", stream));
        Self { classes }
    }

    /// True once the first list has arrived.
    pub fn has_synced(&self) -> bool {
        // NB: a store that has seen its first list answers `ready` at once.
        futures::FutureExt::now_or_never(self.classes.wait_until_ready()).is_some_and(|r| r.is_ok())
    }
}

impl super::ClassStore for KubeClassStore {
    fn connector_class(&self, name: &str) -> Option<Arc<crate::ConnectorClass>> {
        self.classes.get(&ObjectRef::new(name))
    }
}

/// An index kept from a watch's events, by whoever watches: the
/// Connector names by namespace here, the proxy's pod and node addresses in
/// `access::peers`.
pub trait EventIndex: Default + Send + Sync + 'static {
    /// What the watch delivers.
    type Object;
    /// `object` was added or changed.
    fn apply(&mut self, object: &Self::Object);
    /// `object` was deleted.
    fn delete(&mut self, object: &Self::Object);
}

/// An [`EventIndex`] that follows a watch: each event updates the live
/// index in place (O(the object)); a relist fills a new index beside the
/// live one and swaps it in when complete, so objects deleted meanwhile go
/// and readers never see a half-filled index.
pub struct Indexed<I> {
    live: RwLock<I>,
    relist: Mutex<Option<I>>,
}

impl<I: EventIndex> Default for Indexed<I> {
    fn default() -> Self {
        Self {
            live: RwLock::default(),
            relist: Mutex::new(None),
        }
    }
}

impl<I: EventIndex> Indexed<I> {
    /// Applies one watch event.
    pub fn follow(&self, event: &watcher::Event<I::Object>) {
        let mut relist = self.relist.lock().unwrap_or_else(PoisonError::into_inner);
        match event {
            watcher::Event::Init => *relist = Some(I::default()),
            watcher::Event::InitApply(object) => {
                if let Some(fresh) = relist.as_mut() {
                    fresh.apply(object);
                }
            }
            watcher::Event::InitDone => {
                if let Some(fresh) = relist.take() {
                    let old = std::mem::replace(&mut *self.write(), fresh);
                    // NB: the old index is freed outside the lock.
                    drop(old);
                }
            }
            watcher::Event::Apply(object) => self.write().apply(object),
            watcher::Event::Delete(object) => self.write().delete(object),
        }
    }

    /// The live index, for lookups.
    pub fn read(&self) -> RwLockReadGuard<'_, I> {
        self.live.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, I> {
        self.live.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Connector names by namespace.
#[derive(Default)]
struct ByNamespace(HashMap<String, BTreeSet<String>>);

fn namespace_and_name(connector: &Connector) -> Option<(String, String)> {
    Some((connector.metadata.namespace.clone()?, connector.metadata.name.clone()?))
}

impl EventIndex for ByNamespace {
    type Object = Connector;

    fn apply(&mut self, connector: &Connector) {
        if let Some((namespace, name)) = namespace_and_name(connector) {
            self.0.entry(namespace).or_default().insert(name);
        }
    }

    fn delete(&mut self, connector: &Connector) {
        let Some((namespace, name)) = namespace_and_name(connector) else {
            return;
        };
        if let Some(in_namespace) = self.0.get_mut(&namespace) {
            in_namespace.remove(&name);
            if in_namespace.is_empty() {
                self.0.remove(&namespace);
            }
        }
    }
}

/// A flag set (and `message` logged) once both reflector stores have
/// received their first complete list.
pub fn synced_flag<A, B>(a: &Store<A>, b: &Store<B>, message: &'static str) -> Arc<AtomicBool>
where
    A: kube::Resource + Clone + Send + Sync + 'static,
    A::DynamicType: std::hash::Hash + Eq + Clone + Send + Sync,
    B: kube::Resource + Clone + Send + Sync + 'static,
    B::DynamicType: std::hash::Hash + Eq + Clone + Send + Sync,
{
    let synced = Arc::new(AtomicBool::new(false));
    let (a, b, flag) = (a.clone(), b.clone(), synced.clone());
    tokio::spawn(async move {
        if a.wait_until_ready().await.is_ok() && b.wait_until_ready().await.is_ok() {
            flag.store(true, Ordering::Release);
            tracing::info!("{message}");
        }
    });
    synced
}

async fn drain<S, T>(what: &'static str, stream: S)
where
    S: futures::Stream<Item = Result<T, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        if let Err(error) = event {
            tracing::warn!(%error, watched = what, "watch failed; retrying with backoff");
        }
    }
}

impl ConnectorStore for KubeStore {
    fn connector(&self, key: &ConnectorKey) -> Option<Arc<Connector>> {
        self.connectors.get(&ObjectRef::new(&key.name).within(&key.namespace))
    }

    fn resolve(&self, key: &ConnectorKey) -> Option<Result<ResolvedConnector, AddressError>> {
        let connector = self.connector(key)?;
        Some(self.addresses.resolve(key, connector, self.connectors.len()))
    }

    fn connectors_in(&self, namespace: &str) -> Vec<Arc<Connector>> {
        let names = self.by_namespace.read();
        let in_namespace = names.0.get(namespace).into_iter().flatten();
        // NB: sorted by name (a BTreeSet), as the other stores answer.
        in_namespace
            .filter_map(|name| self.connectors.get(&ObjectRef::new(name).within(namespace)))
            .collect()
    }

    fn namespace(&self, name: &str) -> Option<NamespaceMeta> {
        self.namespaces.get(&ObjectRef::new(name)).map(|ns| NamespaceMeta {
            labels: ns.metadata.labels.clone().unwrap_or_default(),
            annotations: ns.metadata.annotations.clone().unwrap_or_default(),
        })
    }

    fn has_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_connector_loses_only_what_no_reader_uses() {
        let mut connector: Connector = serde_json::from_value(serde_json::json!({
            "apiVersion": "connectors.alauda.io/v1alpha1",
            "kind": "Connector",
            "metadata": {
                "name": "harbor",
                "namespace": "team",
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"spec\":{}}",
                    "connectors.cpaas.io/shared": "true",
                },
                "managedFields": [{"manager": "kubectl", "operation": "Update"}],
            },
            "spec": {"connectorClassName": "harbor", "address": "https://harbor.example.com"},
            "status": {
                "observedGeneration": 1,
                "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "", "lastTransitionTime": "2026-12-01T10:00:00Z"}],
                "proxy": {"httpAddress": {"url": "http://c-harbor.team.svc.cluster.local"}},
            },
        }))
        .unwrap();
        slim_connector(&mut connector);
        assert!(connector.metadata.managed_fields.is_none());
        let annotations = connector.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), ["connectors.cpaas.io/shared"]);
        let status = connector.status.as_ref().unwrap();
        assert!(status.conditions.is_empty());
        assert_eq!(
            status
                .proxy
                .as_ref()
                .and_then(|p| p.http_address.as_ref())
                .map(|a| a.url.as_str()),
            Some("http://c-harbor.team.svc.cluster.local")
        );
        assert_eq!(connector.spec.address, "https://harbor.example.com");
    }
}
