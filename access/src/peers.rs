//! Source-address identities from informers: the running pods the webhook
//! injected (only pods carrying [`INJECTED_LABEL`] are watched) and the
//! nodes, kept as an index that each watch event updates in place.
//!
//! Cost as the cluster grows (`cargo bench --bench scale`):
//!
//! - Only what the identities use is read of each object ([`PodView`],
//!   [`NodeView`]): managed fields, statuses, env, volumes and a node's image
//!   list are skipped while parsing, never allocated, and no object is kept.
//! - One event is O(1) work on the index (the pod's few addresses and image
//!   paths); a lookup is one or two hash lookups. Only a relist (after a
//!   watch expired) builds a whole index, beside the one in use, and swaps
//!   it in.
//! - Pods sharing a ServiceAccount share one [`Identity`].

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use connector::ConnectorKey;
use connector::keys::INJECTED_LABEL;
use connector::reference::Reference;
use connector::store::kube::{EventIndex, Indexed};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde::{Deserialize, Deserializer};

use crate::caller::{BoxFuture, Identity, PeerIdentities};

// ---- What is read of a Pod and a Node ----

/// The fields of a Pod the identities use.
#[derive(Clone, Debug, Deserialize)]
struct PodView {
    #[serde(deserialize_with = "slim_metadata")]
    metadata: ObjectMeta,
    spec: Option<PodSpecView>,
    status: Option<PodStatusView>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpecView {
    node_name: Option<String>,
    service_account_name: Option<String>,
    host_network: Option<bool>,
    containers: Option<Vec<ContainerView>>,
    init_containers: Option<Vec<ContainerView>>,
    ephemeral_containers: Option<Vec<ContainerView>>,
}

#[derive(Clone, Debug, Deserialize)]
struct ContainerView {
    image: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodStatusView {
    phase: Option<String>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pod_ips: Option<Vec<PodIpView>>,
}

#[derive(Clone, Debug, Deserialize)]
struct PodIpView {
    ip: Option<String>,
}

/// The fields of a Node the identities use.
#[derive(Clone, Debug, Deserialize)]
struct NodeView {
    #[serde(deserialize_with = "slim_metadata")]
    metadata: ObjectMeta,
    status: Option<NodeStatusView>,
}

#[derive(Clone, Debug, Deserialize)]
struct NodeStatusView {
    addresses: Option<Vec<NodeAddressView>>,
}

#[derive(Clone, Debug, Deserialize)]
struct NodeAddressView {
    #[serde(rename = "type")]
    type_: String,
    address: String,
}

/// The metadata a watch needs (name, namespace, resourceVersion); labels,
/// annotations and managed fields are skipped.
fn slim_metadata<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Slim {
        name: Option<String>,
        namespace: Option<String>,
        resource_version: Option<String>,
    }
    let slim = Slim::deserialize(deserializer)?;
    Ok(ObjectMeta {
        name: slim.name,
        namespace: slim.namespace,
        resource_version: slim.resource_version,
        ..ObjectMeta::default()
    })
}

macro_rules! view_of {
    ($view:ty, $kind:literal, $plural:literal, $scope:ty) => {
        impl k8s_openapi::Resource for $view {
            const API_VERSION: &'static str = "v1";
            const GROUP: &'static str = "";
            const KIND: &'static str = $kind;
            const VERSION: &'static str = "v1";
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = $scope;
        }

        impl k8s_openapi::Metadata for $view {
            type Ty = ObjectMeta;

            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }

            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

view_of!(PodView, "Pod", "pods", k8s_openapi::NamespaceResourceScope);
view_of!(NodeView, "Node", "nodes", k8s_openapi::ClusterResourceScope);

// ---- The index ----

/// One pod, as the index keeps it.
#[derive(Debug, PartialEq, Eq)]
struct PodRecord {
    identity: Arc<Identity>,
    node: Option<Arc<str>>,
    /// The image paths (without registry, tag or digest) its containers
    /// reference, without repeats.
    pulls: Vec<Box<str>>,
    /// The addresses it claims: while Running and not on the host network.
    ips: Vec<IpAddr>,
}

/// A pod's key in the index: `namespace/name`.
fn pod_key(pod: &PodView) -> Option<Arc<str>> {
    let (namespace, name) = (pod.metadata.namespace.as_deref()?, pod.metadata.name.as_deref()?);
    Some(Arc::from(format!("{namespace}/{name}")))
}

impl PodRecord {
    fn of(pod: &PodView) -> Option<(Arc<str>, Self)> {
        let key = pod_key(pod)?;
        let namespace = pod.metadata.namespace.as_deref()?;
        let spec = pod.spec.as_ref()?;
        let service_account = spec.service_account_name.as_deref().unwrap_or("default");
        let identity = Arc::new(Identity::of_service_account(namespace, service_account));
        let mut pulls: Vec<Box<str>> = Vec::new();
        if spec.node_name.is_some() {
            let containers = [&spec.containers, &spec.init_containers, &spec.ephemeral_containers];
            let images = containers
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|c| c.image.as_deref());
            for reference in images.filter_map(|image| Reference::parse(image).ok()) {
                if !pulls.iter().any(|p| **p == *reference.path()) {
                    pulls.push(reference.path().into());
                }
            }
        }
        let mut ips: Vec<IpAddr> = Vec::new();
        let running = pod.status.as_ref().filter(|s| s.phase.as_deref() == Some("Running"));
        if let Some(status) = running.filter(|_| spec.host_network != Some(true)) {
            let listed = status.pod_ips.iter().flatten().filter_map(|p| p.ip.as_deref());
            for ip in listed.chain(status.pod_ip.as_deref()).filter_map(|ip| ip.parse().ok()) {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
        let record = Self {
            identity,
            node: spec.node_name.as_deref().map(Arc::from),
            pulls,
            ips,
        };
        Some((key, record))
    }
}

/// A node's image paths, each with the ServiceAccounts of the pods
/// referencing it and how many pods each.
type PullsOnNode = HashMap<Box<str>, Vec<(Arc<Identity>, u32)>>;

/// The injected pods, with lookups by address and by node.
#[derive(Default)]
struct PodIndex {
    pods: HashMap<Arc<str>, PodRecord>,
    /// The pods claiming each address; more than one: nobody's.
    claims: HashMap<IpAddr, Vec<Arc<str>>>,
    /// By node, by image path: the ServiceAccounts of its pods referencing
    /// the path, each with how many pods.
    pulls: HashMap<Arc<str>, PullsOnNode>,
    /// One identity per ServiceAccount username, shared by its pods.
    identities: HashMap<String, Arc<Identity>>,
}

impl PodIndex {
    fn insert(&mut self, key: Arc<str>, mut record: PodRecord) {
        if self.pods.get(&key) == Some(&record) {
            // NB: most pod events (status heartbeats, annotations) change
            // nothing the index holds.
            return;
        }
        self.remove(&key);
        record.identity = self
            .identities
            .entry(record.identity.username.clone())
            .or_insert_with(|| record.identity.clone())
            .clone();
        for ip in &record.ips {
            self.claims.entry(*ip).or_default().push(key.clone());
        }
        if let Some(node) = &record.node {
            let by_path = self.pulls.entry(node.clone()).or_default();
            for path in &record.pulls {
                let holders = by_path.entry(path.clone()).or_default();
                match holders
                    .iter_mut()
                    .find(|(identity, _)| Arc::ptr_eq(identity, &record.identity))
                {
                    Some((_, pods)) => *pods += 1,
                    None => holders.push((record.identity.clone(), 1)),
                }
            }
        }
        self.pods.insert(key, record);
    }

    fn remove(&mut self, key: &str) {
        let Some(record) = self.pods.remove(key) else {
            return;
        };
        for ip in &record.ips {
            if let Entry::Occupied(mut claim) = self.claims.entry(*ip) {
                claim.get_mut().retain(|claimant| **claimant != *key);
                if claim.get().is_empty() {
                    claim.remove();
                }
            }
        }
        if let Some(node) = &record.node
            && let Some(by_path) = self.pulls.get_mut(node)
        {
            for path in &record.pulls {
                let Some(holders) = by_path.get_mut(path) else { continue };
                if let Some(at) = holders
                    .iter()
                    .position(|(identity, _)| Arc::ptr_eq(identity, &record.identity))
                {
                    holders[at].1 -= 1;
                    if holders[at].1 == 0 {
                        holders.swap_remove(at);
                    }
                }
                if holders.is_empty() {
                    by_path.remove(path);
                }
            }
            if by_path.is_empty() {
                self.pulls.remove(node);
            }
        }
        // NB: the interned copy and this record's are the last two.
        if Arc::strong_count(&record.identity) == 2 {
            self.identities.remove(&record.identity.username);
        }
    }

    /// `None`: nobody claims `ip`; `Some(None)`: more than one pod does.
    fn claim(&self, ip: IpAddr) -> Option<Option<&Identity>> {
        let claimants = self.claims.get(&ip)?;
        Some(match claimants.as_slice() {
            [only] => self.pods.get(only).map(|pod| &*pod.identity),
            _ => None,
        })
    }
}

/// The nodes' addresses.
#[derive(Default)]
struct NodeIndex {
    by_ip: HashMap<IpAddr, Arc<str>>,
    ips: HashMap<Arc<str>, Vec<IpAddr>>,
}

impl NodeIndex {
    fn record(node: &NodeView) -> Option<(Arc<str>, Vec<IpAddr>)> {
        let name = node.metadata.name.as_deref()?;
        let addresses = node.status.iter().flat_map(|s| s.addresses.iter().flatten());
        let ips = addresses
            .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect();
        Some((Arc::from(name), ips))
    }

    fn insert(&mut self, name: Arc<str>, ips: Vec<IpAddr>) {
        if self.ips.get(&name) == Some(&ips) {
            return;
        }
        self.remove(&name);
        for ip in &ips {
            self.by_ip.insert(*ip, name.clone());
        }
        self.ips.insert(name, ips);
    }

    fn remove(&mut self, name: &str) {
        for ip in self.ips.remove(name).into_iter().flatten() {
            if self.by_ip.get(&ip).is_some_and(|owner| **owner == *name) {
                self.by_ip.remove(&ip);
            }
        }
    }
}

impl EventIndex for PodIndex {
    type Object = PodView;

    fn apply(&mut self, view: &PodView) {
        match PodRecord::of(view) {
            Some((key, record)) => self.insert(key, record),
            // NB: a pod that lost its spec is nobody's any more.
            None => self.delete(view),
        }
    }

    fn delete(&mut self, view: &PodView) {
        if let Some(key) = pod_key(view) {
            self.remove(&key);
        }
    }
}

impl EventIndex for NodeIndex {
    type Object = NodeView;

    fn apply(&mut self, view: &NodeView) {
        if let Some((name, ips)) = NodeIndex::record(view) {
            self.insert(name, ips);
        }
    }

    fn delete(&mut self, view: &NodeView) {
        if let Some(name) = view.metadata.name.as_deref() {
            self.remove(name);
        }
    }
}

/// Keeps `index` as the watch of `api` says, until the stream ends. Sets
/// `synced` once the first list is in, logging when `other` (the other
/// informer's flag) already is.
async fn follow<I>(
    what: &'static str,
    api: Api<I::Object>,
    config: watcher::Config,
    index: Arc<Indexed<I>>,
    (synced, other): (Arc<AtomicBool>, Arc<AtomicBool>),
    changed: tokio::sync::watch::Sender<u64>,
) where
    I: EventIndex,
    I::Object:
        kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let stream = watcher(api, config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                index.follow(&event);
                if matches!(event, watcher::Event::InitDone)
                    && !synced.swap(true, Ordering::SeqCst)
                    && other.load(Ordering::SeqCst)
                {
                    tracing::info!("pod and node caches synced");
                }
                changed.send_modify(|n| *n = n.wrapping_add(1));
            }
            Err(error) => tracing::warn!(%error, watched = what, "watch failed; retrying with backoff"),
        }
    }
}

/// Source-address identities from informers: pods carrying the webhook's
/// [`INJECTED_LABEL`] (only those are watched) and nodes.
#[derive(Clone)]
pub struct PodIdentities {
    pods: Arc<Indexed<PodIndex>>,
    nodes: Arc<Indexed<NodeIndex>>,
    pods_synced: Arc<AtomicBool>,
    nodes_synced: Arc<AtomicBool>,
    /// How long a node pull waits for its pod to reach the informer.
    lag: Duration,
    /// Bumped on every pod event: a waiting lookup looks again only when
    /// something changed.
    pod_changes: tokio::sync::watch::Receiver<u64>,
}

impl PodIdentities {
    /// Starts the informers on the current tokio runtime.
    pub fn spawn(client: Client, lag: Duration) -> Self {
        let (pod_changed, pod_changes) = tokio::sync::watch::channel(0_u64);
        let identities = Self {
            pods: Arc::default(),
            nodes: Arc::default(),
            pods_synced: Arc::default(),
            nodes_synced: Arc::default(),
            lag,
            pod_changes,
        };
        let pod_config = watcher::Config::default().labels(&format!("{INJECTED_LABEL}=true"));
        tokio::spawn(follow(
            "pods",
            Api::<PodView>::all(client.clone()),
            pod_config,
            identities.pods.clone(),
            (identities.pods_synced.clone(), identities.nodes_synced.clone()),
            pod_changed,
        ));
        tokio::spawn(follow(
            "nodes",
            Api::<NodeView>::all(client),
            watcher::Config::default(),
            identities.nodes.clone(),
            (identities.nodes_synced.clone(), identities.pods_synced.clone()),
            tokio::sync::watch::channel(0).0,
        ));
        identities
    }

    /// True once the first lists of pods and nodes have arrived.
    pub fn has_synced(&self) -> bool {
        self.pods_synced.load(Ordering::Acquire) && self.nodes_synced.load(Ordering::Acquire)
    }

    /// `None`: nobody is known at `ip` yet; `Some(None)`: a node's address
    /// or one two pods claim, never a pod's identity.
    fn claim(&self, ip: IpAddr) -> Option<Option<Identity>> {
        // NB: an address that is a node's is never a pod's identity
        // (hostNetwork pods share it).
        if self.nodes.read().by_ip.contains_key(&ip) {
            return Some(None);
        }
        self.pods.read().claim(ip).map(|claim| claim.cloned())
    }

    /// The ServiceAccounts of the injected pods on `node` referencing the
    /// repository, right now.
    fn referencing(&self, node: &str, key: &ConnectorKey, repository: &str) -> Vec<Identity> {
        let wanted = format!("{}/{repository}", key.proxy_path());
        let pods = self.pods.read();
        let holders = pods.pulls.get(node).and_then(|by_path| by_path.get(wanted.as_str()));
        holders
            .into_iter()
            .flatten()
            .map(|(identity, _)| (**identity).clone())
            .collect()
    }

    /// Waits until `look` finds something or the lag has passed, looking
    /// again only when a pod event arrived, never on a timer: a flood of
    /// requests for what no pod has costs one lookup each.
    async fn soon<T>(&self, look: impl Fn() -> Option<T>) -> Option<T> {
        let deadline = tokio::time::Instant::now() + self.lag;
        let mut changes = self.pod_changes.clone();
        changes.mark_unchanged();
        loop {
            if let Some(found) = look() {
                return Some(found);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }
}

impl PeerIdentities for PodIdentities {
    fn pod(&self, ip: IpAddr) -> Option<Identity> {
        self.claim(ip).flatten()
    }

    fn pod_soon(&self, ip: IpAddr) -> BoxFuture<'_, Option<Identity>> {
        // NB: an address two pods claim is known and stays refused.
        Box::pin(async move { self.soon(|| self.claim(ip)).await.flatten() })
    }

    fn node(&self, ip: IpAddr) -> Option<String> {
        self.nodes.read().by_ip.get(&ip).map(|name| name.to_string())
    }

    fn pods_pulling<'a>(
        &'a self,
        node: &'a str,
        key: &'a ConnectorKey,
        repository: &'a str,
    ) -> BoxFuture<'a, Vec<Identity>> {
        Box::pin(async move {
            let found = self.soon(|| Some(self.referencing(node, key, repository)).filter(|f| !f.is_empty()));
            found.await.unwrap_or_default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, account: &str, node: Option<&str>, ip: Option<&str>, images: &[&str]) -> PodView {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "team", "resourceVersion": "1",
                         "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}]},
            "spec": {
                "nodeName": node,
                "serviceAccountName": account,
                "containers": images.iter().map(|i| serde_json::json!({"name": "c", "image": i})).collect::<Vec<_>>(),
            },
            "status": {"phase": if ip.is_some() { "Running" } else { "Pending" }, "podIP": ip, "podIPs": ip.map(|ip| vec![serde_json::json!({"ip": ip})])},
        }))
        .expect("a pod view")
    }

    fn insert(index: &mut PodIndex, view: &PodView) {
        let (key, record) = PodRecord::of(view).expect("a record");
        index.insert(key, record);
    }

    const IMAGE: &str = "127.0.0.1:7480/namespaces/team/connectors/harbor/library/app:1";

    #[test]
    fn a_view_reads_only_what_the_index_uses() {
        let view = pod("a", "builder", Some("n1"), Some("10.0.0.1"), &[IMAGE, IMAGE]);
        assert_eq!(view.metadata.managed_fields, None, "managed fields are skipped");
        let (key, record) = PodRecord::of(&view).expect("a record");
        assert_eq!(&*key, "team/a");
        assert_eq!(record.identity.username, "system:serviceaccount:team:builder");
        assert_eq!(
            record.pulls,
            vec![Box::from("namespaces/team/connectors/harbor/library/app")]
        );
        assert_eq!(record.ips, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn an_address_two_pods_claim_is_nobodys_until_one_goes() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut index = PodIndex::default();
        insert(&mut index, &pod("a", "builder", Some("n1"), Some("10.0.0.1"), &[]));
        assert_eq!(
            index.claim(ip).flatten().map(|i| i.username.clone()).as_deref(),
            Some("system:serviceaccount:team:builder")
        );
        insert(&mut index, &pod("b", "other", Some("n1"), Some("10.0.0.1"), &[]));
        assert_eq!(index.claim(ip), Some(None), "two claimants: refused");
        index.remove("team/a");
        assert_eq!(
            index.claim(ip).flatten().map(|i| i.username.clone()).as_deref(),
            Some("system:serviceaccount:team:other")
        );
        index.remove("team/b");
        assert_eq!(index.claim(ip), None);
        assert!(index.claims.is_empty() && index.identities.is_empty() && index.pods.is_empty());
    }

    #[test]
    fn pulls_by_node_count_pods_and_forget_the_last_one() {
        let mut index = PodIndex::default();
        insert(&mut index, &pod("a", "builder", Some("n1"), None, &[IMAGE]));
        insert(&mut index, &pod("b", "builder", Some("n1"), None, &[IMAGE]));
        insert(&mut index, &pod("c", "tester", Some("n1"), None, &[IMAGE]));
        let path = "namespaces/team/connectors/harbor/library/app";
        let holders = |index: &PodIndex| -> Vec<(String, u32)> {
            let by_path = index.pulls.get("n1").and_then(|p| p.get(path));
            by_path
                .into_iter()
                .flatten()
                .map(|(i, n)| (i.username.clone(), *n))
                .collect()
        };
        assert_eq!(
            holders(&index),
            vec![
                ("system:serviceaccount:team:builder".into(), 2),
                ("system:serviceaccount:team:tester".into(), 1)
            ]
        );
        assert!(
            Arc::ptr_eq(&index.pods["team/a"].identity, &index.pods["team/b"].identity),
            "one identity per account"
        );
        // Moving a pod's image away and deleting the others leaves nothing.
        insert(&mut index, &pod("a", "builder", Some("n1"), None, &[]));
        index.remove("team/b");
        index.remove("team/c");
        assert!(holders(&index).is_empty());
        assert!(index.pulls.is_empty(), "{:?}", index.pulls.keys().collect::<Vec<_>>());
        index.remove("team/a");
        assert!(index.identities.is_empty());
    }

    #[test]
    fn a_pod_leaving_running_or_moving_to_the_host_network_gives_up_its_address() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut index = PodIndex::default();
        insert(&mut index, &pod("a", "builder", Some("n1"), Some("10.0.0.1"), &[]));
        assert!(index.claim(ip).flatten().is_some());
        insert(&mut index, &pod("a", "builder", Some("n1"), None, &[]));
        assert_eq!(index.claim(ip), None);
        let mut host: PodView = pod("a", "builder", Some("n1"), Some("10.0.0.1"), &[]);
        host.spec.as_mut().unwrap().host_network = Some(true);
        insert(&mut index, &host);
        assert_eq!(index.claim(ip), None);
    }

    #[test]
    fn a_node_keeps_only_its_current_addresses() {
        let node = |ips: &[&str]| -> NodeView {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "n1"},
                "status": {"addresses": ips.iter().map(|ip| serde_json::json!({"type": "InternalIP", "address": ip}))
                    .chain([serde_json::json!({"type": "Hostname", "address": "n1"})]).collect::<Vec<_>>(),
                    "images": [{"names": ["x"], "sizeBytes": 1}]},
            }))
            .expect("a node view")
        };
        let mut index = NodeIndex::default();
        let (name, ips) = NodeIndex::record(&node(&["192.0.2.1"])).unwrap();
        index.insert(name, ips);
        let (name, ips) = NodeIndex::record(&node(&["192.0.2.2"])).unwrap();
        index.insert(name, ips);
        assert_eq!(
            index.by_ip.keys().collect::<Vec<_>>(),
            vec![&"192.0.2.2".parse::<IpAddr>().unwrap()]
        );
        index.remove("n1");
        assert!(index.by_ip.is_empty() && index.ips.is_empty());
    }
}
