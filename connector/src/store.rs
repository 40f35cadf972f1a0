//! Connector stores: the in-memory view of Connectors and Namespaces that
//! admission reads. Reads never wait on the network; a store is filled from
//! a file (standalone mode) or by watching the API server (in a cluster).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{Connector, ConnectorKey};

pub mod file;
pub mod kube;

pub use file::FileStore;
pub use kube::{KubeSecretStore, KubeStore};

/// The labels and annotations of a namespace: all that selection needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceMeta {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// Read access to connectors and namespaces, answered from memory.
pub trait ConnectorStore: Send + Sync + 'static {
    /// The connector `key`, if it exists.
    fn connector(&self, key: &ConnectorKey) -> Option<Arc<Connector>>;

    /// Every connector in `namespace`, sorted by name.
    fn connectors_in(&self, namespace: &str) -> Vec<Arc<Connector>>;

    /// The namespace's labels and annotations; `None` when it is unknown.
    fn namespace(&self, name: &str) -> Option<NamespaceMeta>;

    /// True once the store holds a complete view (the initial list of every
    /// watched kind has arrived). Readiness probes report this.
    fn has_synced(&self) -> bool;
}

/// Read access to the Secrets connectors reference (the proxy's view; the
/// webhook never reads Secrets).
pub trait SecretStore: Send + Sync + 'static {
    /// The Secret `namespace/name`, if it exists.
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<k8s_openapi::api::core::v1::Secret>>;
}

impl<T: ConnectorStore + ?Sized> ConnectorStore for Arc<T> {
    fn connector(&self, key: &ConnectorKey) -> Option<Arc<Connector>> {
        (**self).connector(key)
    }
    fn connectors_in(&self, namespace: &str) -> Vec<Arc<Connector>> {
        (**self).connectors_in(namespace)
    }
    fn namespace(&self, name: &str) -> Option<NamespaceMeta> {
        (**self).namespace(name)
    }
    fn has_synced(&self) -> bool {
        (**self).has_synced()
    }
}
