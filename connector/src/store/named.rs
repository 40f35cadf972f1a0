//! One watch per object that something wants, by namespace and name, and
//! nothing else: the Secrets a Connector references (the proxy, the
//! controller), the Connectors a node's volumes name (the CSI plugin).
//! Objects of other namespaces, and those nobody wants, never reach the
//! process. (kubelet follows the Secrets and ConfigMaps of its pods the
//! same way.)
//!
//! Each object is read with `get` and followed with a `watch` selected by
//! `metadata.name` from the version read (from "now" when it is missing),
//! so the ServiceAccount needs `get` and `watch` on the kind and never
//! `list`. A watch that ends (its timeout, a 410 for a version too old, an
//! error) is re-read and resumed, with backoff after failures.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, WatchEvent, WatchParams};
use kube::core::PartialObjectMeta;
use serde::de::DeserializeOwned;

/// What of each Secret is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// The whole Secret (the proxy injects its credential).
    Data,
    /// Metadata alone (a change trigger); the data never reaches the process.
    Metadata,
}

/// An object's identity: (namespace, name).
pub type ObjectKey = (String, String);

/// A namespaced kind that can be followed by name.
pub trait Named:
    kube::Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    /// The kind as log lines name it.
    const NOUN: &'static str;

    /// Drops what no reader uses before the object is kept.
    fn slim(&mut self);
}

impl Named for Secret {
    const NOUN: &'static str = "secret";

    fn slim(&mut self) {
        super::drop_bookkeeping(&mut self.metadata);
    }
}

impl Named for crate::Connector {
    const NOUN: &'static str = "connector";

    fn slim(&mut self) {
        super::kube::slim_connector(self);
    }
}

/// How objects are read: whole, or metadata alone made into an object.
enum Reading<K> {
    Whole,
    Metadata(fn(PartialObjectMeta<K>) -> K),
}

impl<K> Clone for Reading<K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for Reading<K> {}

/// How often the wanted set is re-read when no change notice comes.
const RESCAN: Duration = Duration::from_secs(5);
/// Backoff bounds after a failed read or watch.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The server ends each watch after this long; it is then resumed.
const WATCH_TIMEOUT_SECONDS: u32 = 290;
/// Objects read at once: a process that starts with thousands of
/// wanted objects reads them a few at a time instead of all together
/// (each read in flight holds a connection and its buffers).
const CONCURRENT_STARTS: usize = 16;

/// The followed Secrets and their changes.
pub type SecretWatches = NamedWatches<Secret>;

/// The followed objects of kind `K` and their changes.
pub struct NamedWatches<K> {
    /// Every followed object read at least once: `None` when it does not
    /// exist.
    objects: Arc<RwLock<HashMap<ObjectKey, Option<Arc<K>>>>>,
    changes: tokio::sync::broadcast::Sender<ObjectKey>,
    /// Bumped each time a followed object is read for the first time.
    first_reads: Arc<tokio::sync::watch::Sender<u64>>,
    starts: Arc<tokio::sync::Semaphore>,
}

impl<K> Clone for NamedWatches<K> {
    fn clone(&self) -> Self {
        Self {
            objects: self.objects.clone(),
            changes: self.changes.clone(),
            first_reads: self.first_reads.clone(),
            starts: self.starts.clone(),
        }
    }
}

impl NamedWatches<Secret> {
    /// Follows the Secrets `wanted` names (re-read when `notices` changes,
    /// and every few seconds), on the current tokio runtime.
    pub fn spawn(
        client: Client,
        content: Content,
        wanted: impl Fn() -> BTreeSet<ObjectKey> + Send + Sync + 'static,
        notices: Option<tokio::sync::watch::Receiver<u64>>,
    ) -> Self {
        let reading = match content {
            Content::Data => Reading::Whole,
            Content::Metadata => Reading::Metadata(metadata_only),
        };
        Self::start(client, reading, wanted, notices)
    }
}

impl<K: Named> NamedWatches<K> {
    fn start(
        client: Client,
        reading: Reading<K>,
        wanted: impl Fn() -> BTreeSet<ObjectKey> + Send + Sync + 'static,
        notices: Option<tokio::sync::watch::Receiver<u64>>,
    ) -> Self {
        let (changes, _) = tokio::sync::broadcast::channel(1024);
        let watches = Self {
            objects: Arc::default(),
            changes,
            first_reads: Arc::new(tokio::sync::watch::channel(0).0),
            starts: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_STARTS)),
        };
        tokio::spawn(watches.clone().follow(client, reading, wanted, notices));
        watches
    }

    /// The object, if it is followed and exists.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.known(namespace, name).flatten()
    }

    /// How many objects are followed and read.
    pub fn len(&self) -> usize {
        self.objects
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    /// True when no object is followed and read.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The object once it has been read (`None` inside: it does not exist);
    /// `None` when it is not followed or not read yet.
    fn known(&self, namespace: &str, name: &str) -> Option<Option<Arc<K>>> {
        let objects = self.objects.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        objects.get(&(namespace.to_owned(), name.to_owned())).cloned()
    }

    /// The object as soon as it has been read (`None` inside: it does not
    /// exist), waiting at most `wait` for one about to be followed.
    pub async fn when_read(
        &self,
        namespace: &str,
        name: &str,
        wait: Duration,
    ) -> Result<Option<Arc<K>>, super::Unreadable> {
        // NB: subscribed before the first look, so a read in between is seen.
        let mut first_reads = self.first_reads.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(object) = self.known(namespace, name) {
                return Ok(object);
            }
            match tokio::time::timeout_at(deadline, first_reads.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(super::Unreadable),
            }
        }
    }

    /// Every change (created, changed, deleted) of a followed Secret from
    /// now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ObjectKey> {
        self.changes.subscribe()
    }

    async fn follow(
        self,
        client: Client,
        reading: Reading<K>,
        wanted: impl Fn() -> BTreeSet<ObjectKey>,
        mut notices: Option<tokio::sync::watch::Receiver<u64>>,
    ) {
        let mut watches: HashMap<ObjectKey, tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            let wanted = wanted();
            watches.retain(|key, task| {
                let keep = wanted.contains(key);
                if !keep {
                    task.abort();
                    self.forget(key);
                    tracing::debug!(namespace = %key.0, name = %key.1, "no longer wanted; watch stopped");
                }
                keep
            });
            for key in wanted {
                if let std::collections::hash_map::Entry::Vacant(entry) = watches.entry(key) {
                    let key = entry.key().clone();
                    let api = Api::namespaced(client.clone(), &key.0);
                    entry.insert(tokio::spawn(self.clone().watch_one(api, reading, key)));
                }
            }
            let notice = async {
                match notices.as_mut() {
                    Some(notices) => notices.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                open = notice => if !open { notices = None },
                () = tokio::time::sleep(RESCAN) => {}
            }
        }
    }

    /// Stores `secret` (None: it does not exist) and announces a change.
    fn set(&self, key: &ObjectKey, mut secret: Option<K>) {
        if let Some(secret) = secret.as_mut() {
            secret.slim();
        }
        let mut secrets = self.objects.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let version = |s: Option<&K>| s.and_then(|s| s.meta().resource_version.clone());
        let previous = secrets.insert(key.clone(), secret.map(Arc::new));
        let first_read = previous.is_none();
        let (previous, now) = (previous.flatten(), secrets.get(key).cloned().flatten());
        let changed = version(previous.as_deref()) != version(now.as_deref()) || previous.is_some() != now.is_some();
        drop(secrets);
        if first_read {
            self.first_reads.send_modify(|n| *n = n.wrapping_add(1));
        }
        if changed {
            let _ = self.changes.send(key.clone());
        }
    }

    /// Drops a Secret no longer followed (a change when it existed).
    fn forget(&self, key: &ObjectKey) {
        let mut secrets = self.objects.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let existed = secrets.remove(key).flatten().is_some();
        drop(secrets);
        if existed {
            let _ = self.changes.send(key.clone());
        }
    }

    async fn watch_one(self, api: Api<K>, reading: Reading<K>, key: ObjectKey) {
        let name = key.1.as_str();
        let mut backoff = BACKOFF_MIN;
        loop {
            let start = self.starts.clone().acquire_owned().await.ok();
            let read = read(&api, reading, name).await;
            drop(start);
            let version = match read {
                Ok(secret) => {
                    let version = secret
                        .as_ref()
                        .and_then(|s| s.meta().resource_version.clone())
                        .unwrap_or_default();
                    self.set(&key, secret);
                    version
                }
                Err(error) => {
                    tracing::warn!(%error, namespace = %key.0, name, retry_in = ?backoff, "reading the {} failed", K::NOUN);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            let params = WatchParams::default()
                .fields(&format!("metadata.name={name}"))
                .timeout(WATCH_TIMEOUT_SECONDS);
            match self.follow_watch(&api, reading, &key, &params, &version).await {
                Ok(()) => backoff = BACKOFF_MIN,
                Err(error) => {
                    tracing::warn!(%error, namespace = %key.0, name, retry_in = ?backoff, "watching the {} failed", K::NOUN);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Applies the events of one watch until it ends; Ok when it ended as
    /// watches do (timeout, a version too old).
    async fn follow_watch(
        &self,
        api: &Api<K>,
        reading: Reading<K>,
        key: &ObjectKey,
        params: &WatchParams,
        version: &str,
    ) -> Result<(), String> {
        let apply = |event: WatchEvent<K>| -> Result<bool, String> {
            match event {
                WatchEvent::Added(secret) | WatchEvent::Modified(secret) => self.set(key, Some(secret)),
                WatchEvent::Deleted(_) => self.set(key, None),
                WatchEvent::Bookmark(_) => {}
                WatchEvent::Error(status) if status.code == 410 => return Ok(false),
                WatchEvent::Error(status) => return Err(status.message),
            }
            Ok(true)
        };
        match reading {
            Reading::Whole => {
                let mut events = std::pin::pin!(api.watch(params, version).await.map_err(|e| e.to_string())?);
                while let Some(event) = events.next().await {
                    if !apply(event.map_err(|e| e.to_string())?)? {
                        break;
                    }
                }
            }
            Reading::Metadata(of_metadata) => {
                let mut events = std::pin::pin!(api.watch_metadata(params, version).await.map_err(|e| e.to_string())?);
                while let Some(event) = events.next().await {
                    let event = match event.map_err(|e| e.to_string())? {
                        WatchEvent::Added(meta) => WatchEvent::Added(of_metadata(meta)),
                        WatchEvent::Modified(meta) => WatchEvent::Modified(of_metadata(meta)),
                        WatchEvent::Deleted(meta) => WatchEvent::Deleted(of_metadata(meta)),
                        WatchEvent::Bookmark(bookmark) => WatchEvent::Bookmark(bookmark),
                        WatchEvent::Error(status) => WatchEvent::Error(status),
                    };
                    if !apply(event)? {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A Secret of metadata alone. Its annotations are dropped too: one that
/// `kubectl apply` wrote holds the whole Secret, data included.
fn metadata_only(meta: kube::core::PartialObjectMeta<Secret>) -> Secret {
    let mut metadata = meta.metadata;
    metadata.annotations = None;
    Secret {
        metadata,
        ..Secret::default()
    }
}

/// The object now (None: it does not exist), whole or its metadata.
async fn read<K: Named>(api: &Api<K>, reading: Reading<K>, name: &str) -> Result<Option<K>, kube::Error> {
    match reading {
        Reading::Whole => api.get_opt(name).await,
        Reading::Metadata(of_metadata) => Ok(api.get_metadata_opt(name).await?.map(of_metadata)),
    }
}

/// How long an object is followed after its last use ([`UsedWatches`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Following {
    /// An object unused this long is no longer followed.
    pub idle: Duration,
    /// How long a request waits for an object's first read.
    pub first_read: Duration,
}

impl Default for Following {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(600),
            first_read: Duration::from_secs(10),
        }
    }
}

/// Objects followed while requests use them: the first use reads one (the
/// request waits for that one read), its watch then keeps it current, and
/// [`Following::idle`] without a use, or `still_wanted` saying no, end the
/// watch and drop it from memory.
pub struct UsedWatches<K> {
    watches: NamedWatches<K>,
    uses: Arc<Uses>,
    following: Following,
}

impl<K> Clone for UsedWatches<K> {
    fn clone(&self) -> Self {
        Self {
            watches: self.watches.clone(),
            uses: self.uses.clone(),
            following: self.following,
        }
    }
}

impl<K: Named> UsedWatches<K> {
    /// Follows whole objects as they are used, on the current tokio
    /// runtime; `still_wanted` is asked again when `changes` (if any)
    /// changes, and every few seconds.
    pub fn spawn(
        client: Client,
        following: Following,
        still_wanted: impl Fn(&ObjectKey) -> bool + Send + Sync + 'static,
        changes: Option<tokio::sync::watch::Receiver<u64>>,
    ) -> Self {
        let (notice, notices) = tokio::sync::watch::channel(0_u64);
        let uses = Arc::new(Uses {
            last: RwLock::default(),
            notice,
        });
        if let Some(mut changes) = changes {
            let uses = Arc::downgrade(&uses);
            tokio::spawn(async move {
                while changes.changed().await.is_ok() {
                    let Some(uses) = uses.upgrade() else { break };
                    uses.notice.send_modify(|n| *n = n.wrapping_add(1));
                }
            });
        }
        let wanted = {
            let uses = Arc::downgrade(&uses);
            move || {
                let Some(uses) = uses.upgrade() else {
                    return BTreeSet::new();
                };
                uses.recent(following.idle)
                    .into_iter()
                    .filter(|key| still_wanted(key))
                    .collect()
            }
        };
        Self {
            watches: NamedWatches::start(client, Reading::Whole, wanted, Some(notices)),
            uses,
            following,
        }
    }

    /// The object for a request about to use it (`None` inside: it does not
    /// exist): read first when it is not followed yet.
    pub async fn for_use(&self, namespace: &str, name: &str) -> Result<Option<Arc<K>>, super::Unreadable> {
        self.uses.record(namespace, name);
        self.watches.when_read(namespace, name, self.following.first_read).await
    }

    /// The object as it is held now, if it is followed and exists.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.watches.get(namespace, name)
    }

    /// True when the object is followed and has been read.
    pub fn is_read(&self, namespace: &str, name: &str) -> bool {
        self.watches.known(namespace, name).is_some()
    }

    /// How many objects are followed and read.
    pub fn len(&self) -> usize {
        self.watches.len()
    }

    /// True when no object is followed and read.
    pub fn is_empty(&self) -> bool {
        self.watches.is_empty()
    }
}

/// When each object was last used, by namespace and name.
struct Uses {
    last: RwLock<HashMap<String, HashMap<String, std::time::Instant>>>,
    /// Wakes the follower when an object is used for the first time.
    notice: tokio::sync::watch::Sender<u64>,
}

impl Uses {
    /// Records a use now.
    fn record(&self, namespace: &str, name: &str) {
        let now = std::time::Instant::now();
        {
            let last = self.last.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(at) = last.get(namespace).and_then(|names| names.get(name)) {
                // NB: refreshed at most once a second, under the write lock.
                if now.duration_since(*at) < Duration::from_secs(1) {
                    return;
                }
            }
        }
        let mut last = self.last.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let first = last
            .entry(namespace.to_owned())
            .or_default()
            .insert(name.to_owned(), now)
            .is_none();
        drop(last);
        if first {
            self.notice.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// The objects used within `idle`; older uses are forgotten.
    fn recent(&self, idle: Duration) -> Vec<ObjectKey> {
        let mut last = self.last.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = std::time::Instant::now();
        last.retain(|_, names| {
            names.retain(|_, at| now.duration_since(*at) < idle);
            !names.is_empty()
        });
        last.iter()
            .flat_map(|(namespace, names)| names.keys().map(|name| (namespace.clone(), name.clone())))
            .collect()
    }
}
