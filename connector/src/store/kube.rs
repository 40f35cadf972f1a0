//! A store filled by watching the API server: reflectors over Connectors (all
//! namespaces) and Namespace metadata. Admission reads the reflector caches
//! and never waits on the network.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use super::{ConnectorStore, NamespaceMeta};
use crate::{Connector, ConnectorKey};

/// A [`ConnectorStore`] backed by reflectors.
#[derive(Clone)]
pub struct KubeStore {
    connectors: Store<Connector>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    synced: Arc<AtomicBool>,
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
        let connector_stream = reflector::reflector(
            connector_writer,
            watcher(connector_api, watcher::Config::default()).default_backoff(),
        );
        tokio::spawn(drain("connectors", connector_stream));

        // NB: an Api over PartialObjectMeta makes metadata-only requests.
        let namespace_api: Api<PartialObjectMeta<Namespace>> = Api::all(client);
        let namespace_stream = reflector::reflector(
            namespace_writer,
            watcher(namespace_api, watcher::Config::default()).default_backoff(),
        );
        tokio::spawn(drain("namespaces", namespace_stream));

        let synced = Arc::new(AtomicBool::new(false));
        {
            let (connectors, namespaces, synced) = (connectors.clone(), namespaces.clone(), synced.clone());
            tokio::spawn(async move {
                if connectors.wait_until_ready().await.is_ok() && namespaces.wait_until_ready().await.is_ok() {
                    synced.store(true, Ordering::Release);
                    tracing::info!("connector and namespace caches synced");
                }
            });
        }
        Self {
            connectors,
            namespaces,
            synced,
        }
    }
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

    fn connectors_in(&self, namespace: &str) -> Vec<Arc<Connector>> {
        let mut found = self
            .connectors
            .state_filter(|c| c.metadata.namespace.as_deref() == Some(namespace));
        found.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        found
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
