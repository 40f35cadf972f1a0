//! A store loaded from a multi-document YAML file of `Namespace`, `Secret`
//! and `Connector` objects: the same file a user would `kubectl apply`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use serde_json::Value;

use super::{ConnectorStore, NamespaceMeta, ResolvedConnector};
use crate::address::{AddressError, RegistryAddress};
use crate::{Connector, ConnectorKey};

/// The namespace of objects that name none, as with kubectl.
pub(crate) const DEFAULT_NAMESPACE: &str = "default";

/// Why a store file cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read store file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store file is not valid YAML: {0}")]
    Yaml(#[source] crate::yaml::YamlError),
    #[error("document {index} ({kind} {name:?}) is invalid: {why}")]
    Invalid {
        index: usize,
        kind: String,
        name: String,
        why: String,
    },
    #[error("connector {key}: {source}")]
    Address {
        key: ConnectorKey,
        #[source]
        source: AddressError,
    },
    #[error("connector {0} is defined twice")]
    Duplicate(ConnectorKey),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The parsed content of a store file.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    connectors: BTreeMap<ConnectorKey, Arc<Connector>>,
    /// Every connector's address, parsed when the file was read.
    addresses: BTreeMap<ConnectorKey, Arc<RegistryAddress>>,
    namespaces: BTreeMap<String, NamespaceMeta>,
    secrets: BTreeMap<(String, String), Arc<Secret>>,
    classes: BTreeMap<String, Arc<crate::ConnectorClass>>,
}

impl Snapshot {
    /// Parses multi-document YAML (also `kind: List`). Objects of other
    /// kinds are ignored, so a whole install manifest can be read.
    pub fn parse(yaml: &str) -> Result<Self> {
        let documents = crate::yaml::parse_documents(yaml).map_err(Error::Yaml)?;
        let mut snapshot = Snapshot::default();
        let mut index = 0;
        for document in documents {
            let items = match document.get("kind").and_then(Value::as_str) {
                Some("List") => document
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
                _ => vec![document],
            };
            for item in items {
                index += 1;
                snapshot.add(index, item)?;
            }
        }
        Ok(snapshot)
    }

    fn add(&mut self, index: usize, object: Value) -> Result<()> {
        if object.is_null() {
            return Ok(());
        }
        let kind = object
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let invalid = |why: String| Error::Invalid {
            index,
            kind: kind.clone(),
            name: name.clone(),
            why,
        };
        if name.is_empty() && matches!(kind.as_str(), "Connector" | "Namespace" | "Secret" | "ConnectorClass") {
            return Err(invalid("metadata.name is required".into()));
        }
        match kind.as_str() {
            "Connector" => {
                let connector: Connector = serde_json::from_value(object).map_err(|e| invalid(e.to_string()))?;
                let key = connector.key(DEFAULT_NAMESPACE);
                let address = RegistryAddress::parse(&connector.spec.address).map_err(|source| Error::Address {
                    key: key.clone(),
                    source,
                })?;
                self.addresses.insert(key.clone(), Arc::new(address));
                let mut connector = connector;
                connector.metadata.namespace = Some(key.namespace.clone());
                if self.connectors.insert(key.clone(), Arc::new(connector)).is_some() {
                    return Err(Error::Duplicate(key));
                }
            }
            "Namespace" => {
                let namespace: Namespace = serde_json::from_value(object).map_err(|e| invalid(e.to_string()))?;
                self.namespaces.insert(
                    name,
                    NamespaceMeta {
                        labels: namespace.metadata.labels.unwrap_or_default(),
                        annotations: namespace.metadata.annotations.unwrap_or_default(),
                    },
                );
            }
            "ConnectorClass" => {
                let class: crate::ConnectorClass =
                    serde_json::from_value(object).map_err(|e| invalid(e.to_string()))?;
                self.classes.insert(name, Arc::new(class));
            }
            "Secret" => {
                let secret: Secret = serde_json::from_value(object).map_err(|e| invalid(e.to_string()))?;
                let namespace = secret
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
                self.secrets.insert((namespace, name), Arc::new(secret));
            }
            _ => {}
        }
        Ok(())
    }

    /// The Secret `namespace/name`, if the file defines it.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.secrets.get(&(namespace.to_owned(), name.to_owned())).cloned()
    }

    /// Every connector, in key order.
    pub fn connectors(&self) -> impl Iterator<Item = &Arc<Connector>> {
        self.connectors.values()
    }
}

/// A [`ConnectorStore`] read from a file, reloadable when the file changes.
#[derive(Debug)]
pub struct FileStore {
    path: Option<PathBuf>,
    state: RwLock<(Arc<Snapshot>, Option<SystemTime>)>,
}

impl FileStore {
    /// Loads the store from `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let (snapshot, modified) = read_snapshot(&path)?;
        Ok(Self {
            path: Some(path),
            state: RwLock::new((Arc::new(snapshot), modified)),
        })
    }

    /// A store over YAML text (tests, stdin).
    pub fn from_yaml(yaml: &str) -> Result<Self> {
        Ok(Self {
            path: None,
            state: RwLock::new((Arc::new(Snapshot::parse(yaml)?), None)),
        })
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// Reloads the file if its modification time changed. A file that no
    /// longer parses is reported and the previous content is kept.
    pub fn reload_if_changed(&self) -> Result<bool> {
        let Some(path) = &self.path else { return Ok(false) };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified == self.state.read().unwrap_or_else(|e| e.into_inner()).1 {
            return Ok(false);
        }
        let (snapshot, modified) = read_snapshot(path)?;
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = (Arc::new(snapshot), modified);
        Ok(true)
    }

    /// Polls the file every `interval` and reloads it on change, logging
    /// (never failing) when the new content is invalid.
    pub fn spawn_watch(self: &Arc<Self>, interval: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let store = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                match store.reload_if_changed() {
                    Ok(true) => tracing::info!(path = ?store.path, "store file reloaded"),
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(%error, "store file changed but is invalid; keeping the previous content")
                    }
                }
            }
        })
    }
}

fn read_snapshot(path: &Path) -> Result<(Snapshot, Option<SystemTime>)> {
    let read = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).map_err(read)?;
    let text = std::fs::read_to_string(path).map_err(read)?;
    Ok((Snapshot::parse(&text)?, Some(modified)))
}

/// The file's classes; a class the file does not define is the shipped one
/// of that name (`manifests/classes.yaml`), so a store file needs none.
impl super::ClassStore for FileStore {
    fn connector_class(&self, name: &str) -> Option<Arc<crate::ConnectorClass>> {
        if let Some(class) = self.snapshot().classes.get(name) {
            return Some(class.clone());
        }
        super::ClassStore::connector_class(&super::BuiltInClasses, name)
    }
}

impl super::SecretStore for FileStore {
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.snapshot().secret(namespace, name)
    }
}

impl ConnectorStore for FileStore {
    fn connector(&self, key: &ConnectorKey) -> Option<Arc<Connector>> {
        self.snapshot().connectors.get(key).cloned()
    }

    fn resolve(&self, key: &ConnectorKey) -> Option<Result<ResolvedConnector, AddressError>> {
        let snapshot = self.snapshot();
        let connector = snapshot.connectors.get(key)?.clone();
        // NB: every connector's address was parsed (and checked) on load.
        let address = snapshot.addresses.get(key)?.clone();
        Some(Ok(ResolvedConnector {
            key: key.clone(),
            connector,
            address,
        }))
    }

    fn connectors_in(&self, namespace: &str) -> Vec<Arc<Connector>> {
        self.snapshot()
            .connectors
            .iter()
            .filter(|(key, _)| key.namespace == namespace)
            .map(|(_, c)| c.clone())
            .collect()
    }

    fn namespace(&self, name: &str) -> Option<NamespaceMeta> {
        self.snapshot().namespaces.get(name).cloned()
    }

    fn has_synced(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORE: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: team
  labels: {connectors.cpaas.io/proxy-inject: "true"}
  annotations: {connectors.cpaas.io/connector: harbor}
---
apiVersion: v1
kind: Secret
metadata: {name: harbor-robot, namespace: team}
type: kubernetes.io/basic-auth
stringData: {username: "robot$team+ci", password: "s3cret"}
---
apiVersion: connectors.alauda.io/v1alpha1
kind: Connector
metadata:
  name: harbor
  namespace: team
  annotations: {cpaas.io/description: "team registry"}
spec:
  connectorClassName: harbor
  address: https://harbor.example.com
  auth: {name: basicAuth, secretRef: {name: harbor-robot}}
---
apiVersion: connectors.alauda.io/v1alpha1
kind: Connector
metadata: {name: hub}
spec: {connectorClassName: oci, address: "https://registry-1.docker.io"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
"#;

    #[test]
    fn a_store_file_loads_connectors_namespaces_and_secrets() {
        let store = FileStore::from_yaml(STORE).unwrap();
        let harbor = store.connector(&ConnectorKey::new("team", "harbor")).unwrap();
        assert_eq!(harbor.spec.address, "https://harbor.example.com");
        assert_eq!(harbor.description(), Some("team registry"));
        assert!(store.connector(&ConnectorKey::new("default", "hub")).is_some());
        assert_eq!(store.connectors_in("team").len(), 1);
        let team = store.namespace("team").unwrap();
        assert_eq!(team.labels["connectors.cpaas.io/proxy-inject"], "true");
        let secret = store.snapshot().secret("team", "harbor-robot").unwrap();
        assert_eq!(secret.string_data.as_ref().unwrap()["username"], "robot$team+ci");
        assert!(store.has_synced());
    }

    #[test]
    fn bad_store_files_give_clear_errors() {
        let cases = [
            (
                "kind: Connector\nmetadata: {name: x}\nspec: {connectorClassName: oci}\n",
                "missing field `address`",
            ),
            (
                "kind: Connector\nmetadata: {name: x}\nspec: {connectorClassName: oci, address: 'ftp://x'}\n",
                "must use http or https",
            ),
            (
                "kind: Connector\nspec: {connectorClassName: oci, address: x.io}\n",
                "metadata.name is required",
            ),
            ("kind: [unclosed\n", "not valid YAML"),
            (
                "kind: Connector\nmetadata: {name: x}\nspec: {connectorClassName: oci, address: x.io}\n---\nkind: Connector\nmetadata: {name: x, namespace: default}\nspec: {connectorClassName: oci, address: y.io}\n",
                "defined twice",
            ),
        ];
        for (yaml, want) in cases {
            let err = FileStore::from_yaml(yaml).unwrap_err().to_string();
            assert!(err.contains(want), "{yaml:?}: {err}");
        }
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_broken_one_keeps_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.yaml");
        std::fs::write(&path, STORE).unwrap();
        let store = FileStore::load(&path).unwrap();
        assert_eq!(store.connectors_in("team").len(), 1);

        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, "kind: Connector\nmetadata: {name: other, namespace: team}\nspec: {connectorClassName: oci, address: other.io}\n").unwrap();
        set_mtime_forward(&path, 1);
        assert!(store.reload_if_changed().unwrap());
        assert!(store.connector(&ConnectorKey::new("team", "other")).is_some());
        assert!(store.connector(&ConnectorKey::new("team", "harbor")).is_none());

        std::fs::write(&path, "kind: [broken\n").unwrap();
        set_mtime_forward(&path, 2);
        assert!(store.reload_if_changed().is_err());
        assert!(store.connector(&ConnectorKey::new("team", "other")).is_some());
    }

    fn set_mtime_forward(path: &Path, seconds: u64) {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        let when = SystemTime::now() + std::time::Duration::from_secs(seconds);
        file.set_modified(when).unwrap();
    }
}
