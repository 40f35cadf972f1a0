//! Connector stores: the in-memory view of Connectors and Namespaces that
//! admission reads. Reads never wait on the network; a store is filled from
//! a file (standalone mode) or by watching the API server (in a cluster).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use crate::address::{AddressError, RegistryAddress};
use crate::{Connector, ConnectorKey};

pub mod file;
pub mod kube;
pub mod named;

pub use file::FileStore;
pub use kube::{
    KubeClassStore, KubeConnectorFollower, KubeSecretStore, KubeStore, drop_bookkeeping, referenced_secrets,
};
pub use named::{Content, Following, Named, NamedWatches, SecretWatches, UsedWatches};

/// The labels and annotations of a namespace: all that selection needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceMeta {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// A connector with its `spec.address` parsed: what the webhook, the CSI
/// plugin and the proxy work from. The store parses an address once per
/// value of `spec.address`, not once per request.
#[derive(Debug, Clone)]
pub struct ResolvedConnector {
    pub key: ConnectorKey,
    pub connector: Arc<Connector>,
    pub address: Arc<RegistryAddress>,
}

impl ResolvedConnector {
    /// Parses `connector`'s address.
    pub fn resolve(key: ConnectorKey, connector: Arc<Connector>) -> Result<Self, AddressError> {
        let address = Arc::new(RegistryAddress::parse(&connector.spec.address)?);
        Ok(Self {
            key,
            connector,
            address,
        })
    }

    /// The canonical `host[:port]` image references name.
    pub fn registry_host(&self) -> &str {
        self.address.registry_host()
    }
}

/// A `spec.address` and what parsing it gave.
type Parsed = (String, Result<Arc<RegistryAddress>, AddressError>);

/// Parsed addresses by connector, reused while `spec.address` stays the
/// same; entries of deleted connectors are dropped as the map grows.
#[derive(Debug, Default)]
pub(crate) struct AddressCache {
    parsed: Mutex<HashMap<ConnectorKey, Parsed>>,
}

impl AddressCache {
    /// `connector` resolved, its address parsed at most once per value.
    pub(crate) fn resolve(
        &self,
        key: &ConnectorKey,
        connector: Arc<Connector>,
        live: usize,
    ) -> Result<ResolvedConnector, AddressError> {
        let mut parsed = self.parsed.lock().unwrap_or_else(PoisonError::into_inner);
        let address = match parsed.get(key) {
            Some((text, address)) if *text == connector.spec.address => address.clone(),
            _ => {
                if parsed.len() > 2 * live + 64 {
                    parsed.clear();
                }
                let address = RegistryAddress::parse(&connector.spec.address).map(Arc::new);
                parsed.insert(key.clone(), (connector.spec.address.clone(), address.clone()));
                address
            }
        }?;
        Ok(ResolvedConnector {
            key: key.clone(),
            connector,
            address,
        })
    }
}

/// Read access to connectors and namespaces, answered from memory.
pub trait ConnectorStore: Send + Sync + 'static {
    /// The connector `key`, if it exists.
    fn connector(&self, key: &ConnectorKey) -> Option<Arc<Connector>>;

    /// The connector `key` with its address parsed; `None` when it does not
    /// exist, an error when its address is not usable.
    fn resolve(&self, key: &ConnectorKey) -> Option<Result<ResolvedConnector, AddressError>> {
        let connector = self.connector(key)?;
        Some(ResolvedConnector::resolve(key.clone(), connector))
    }

    /// Every connector in `namespace`, sorted by name.
    fn connectors_in(&self, namespace: &str) -> Vec<Arc<Connector>>;

    /// The namespace's labels and annotations; `None` when it is unknown.
    fn namespace(&self, name: &str) -> Option<NamespaceMeta>;

    /// True once the store holds a complete view (the initial list of every
    /// watched kind has arrived). Readiness probes report this.
    fn has_synced(&self) -> bool;
}

/// Read access to the ConnectorClasses (cluster-scoped), answered from memory.
pub trait ClassStore: Send + Sync + 'static {
    /// The class `name`, if it exists.
    fn connector_class(&self, name: &str) -> Option<Arc<crate::ConnectorClass>>;
}

impl<T: ClassStore + ?Sized> ClassStore for Arc<T> {
    fn connector_class(&self, name: &str) -> Option<Arc<crate::ConnectorClass>> {
        (**self).connector_class(name)
    }
}

/// The shipped classes (`manifests/classes.yaml`, [`crate::class::built_in`])
/// as a [`ClassStore`].
#[derive(Debug, Clone, Copy, Default)]
pub struct BuiltInClasses;

impl ClassStore for BuiltInClasses {
    fn connector_class(&self, name: &str) -> Option<Arc<crate::ConnectorClass>> {
        static BUILT_IN: std::sync::OnceLock<Vec<Arc<crate::ConnectorClass>>> = std::sync::OnceLock::new();
        BUILT_IN
            .get_or_init(|| crate::class::built_in().into_iter().map(Arc::new).collect())
            .iter()
            .find(|class| class.metadata.name.as_deref() == Some(name))
            .cloned()
    }
}

/// Read access to the Secrets connectors reference (the proxy's view; the
/// webhook never reads Secrets).
pub trait SecretStore: Send + Sync + 'static {
    /// The Secret `namespace/name` as the store holds it now, if it exists.
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<k8s_openapi::api::core::v1::Secret>>;

    /// The Secret `namespace/name` for a request about to use it (`None`:
    /// it does not exist). A store that follows Secrets only while they are
    /// used reads it first when it is not followed yet; a store that holds
    /// every referenced Secret answers at once.
    fn secret_for_use<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<Arc<k8s_openapi::api::core::v1::Secret>>, Unreadable>> {
        Box::pin(std::future::ready(Ok(self.secret(namespace, name))))
    }
}

/// An object a request needs could not be read in time (the API server
/// did not answer; for a Secret, also: no connector references it any
/// more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("it could not be read from the Kubernetes API in time")]
pub struct Unreadable;

/// The connectors a request names, resolved: from a [`ConnectorStore`]
/// that holds them all, or from a follower that reads a connector when a
/// request first names it ([`KubeConnectorFollower`], the CSI plugin's).
pub trait ConnectorLookup: Send + Sync + 'static {
    /// The connector `key` with its address parsed, for a request about to
    /// use it: `Ok(None)` when it does not exist.
    fn resolve_for_use<'a>(
        &'a self,
        key: &'a ConnectorKey,
    ) -> futures::future::BoxFuture<'a, Result<Option<Result<ResolvedConnector, AddressError>>, Unreadable>>;

    /// True once lookups can be answered (a store: its first lists have
    /// arrived).
    fn is_ready(&self) -> bool;
}

impl<T: ConnectorStore + ?Sized> ConnectorLookup for T {
    fn resolve_for_use<'a>(
        &'a self,
        key: &'a ConnectorKey,
    ) -> futures::future::BoxFuture<'a, Result<Option<Result<ResolvedConnector, AddressError>>, Unreadable>> {
        Box::pin(std::future::ready(Ok(self.resolve(key))))
    }

    fn is_ready(&self) -> bool {
        self.has_synced()
    }
}

impl<T: ConnectorStore + ?Sized> ConnectorStore for Arc<T> {
    fn connector(&self, key: &ConnectorKey) -> Option<Arc<Connector>> {
        (**self).connector(key)
    }
    fn resolve(&self, key: &ConnectorKey) -> Option<Result<ResolvedConnector, AddressError>> {
        (**self).resolve(key)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(address: &str) -> Arc<Connector> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "connectors.alauda.io/v1alpha1",
                "kind": "Connector",
                "metadata": {"name": "harbor", "namespace": "team"},
                "spec": {"connectorClassName": "harbor", "address": address},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn addresses_are_parsed_once_per_value_of_spec_address() {
        let cache = AddressCache::default();
        let key = ConnectorKey::new("team", "harbor");
        let first = cache.resolve(&key, connector("https://harbor.example.com"), 1).unwrap();
        assert_eq!(first.registry_host(), "harbor.example.com");
        let again = cache.resolve(&key, connector("https://harbor.example.com"), 1).unwrap();
        assert!(Arc::ptr_eq(&first.address, &again.address), "parsed again");
        let moved = cache
            .resolve(&key, connector("https://harbor.example.org:8443"), 1)
            .unwrap();
        assert_eq!(moved.registry_host(), "harbor.example.org:8443");
        let broken = cache
            .resolve(&key, connector("ftp://harbor.example.com"), 1)
            .unwrap_err();
        assert!(matches!(broken, AddressError::Scheme(_)), "{broken}");
    }
}
