//! The gRPC shell: the CSI Identity and Node services on a unix socket.
//! Handlers only translate between gRPC and [`request`](crate::request),
//! [`authorize`](crate::authorize), [`render`](crate::render) and
//! [`target`](crate::target); every other RPC answers `Unimplemented`.

use std::collections::HashMap;
use std::future::Future;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use access::caller::Authorizer;
use connector::keys;
use connector::selection::format_connector_list;
use connector::store::{ClassStore, ConnectorLookup};
use tonic::{Code, Request, Response, Status};

use crate::authorize::{self, AccessError};
use crate::metrics::Metrics;
use crate::pod::{NoPods, PodLookup};
use crate::proto::identity_server::{Identity, IdentityServer};
use crate::proto::node_server::{Node, NodeServer};
use crate::proto::*;
use crate::render::{self, RenderConfig};
use crate::request::{PublishRequest, RequestError, UnpublishRequest};
use crate::target::{self, TargetError};

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("endpoint {0:?} is not unix:///absolute/path")]
    Endpoint(String),
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("failed to prepare the socket {}: {source}", path.display())]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The socket path of a CSI endpoint: `unix:///csi/csi.sock`, `unix:/csi/csi.sock`
/// or a bare absolute path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ServeError> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    let path = Path::new(path);
    if path.is_absolute() && path.file_name().is_some() {
        Ok(path.to_path_buf())
    } else {
        Err(ServeError::Endpoint(endpoint.to_owned()))
    }
}

/// Everything the services need; cheap to clone.
#[derive(Clone)]
pub struct Plugin {
    store: Arc<dyn ConnectorLookup>,
    authorizer: Arc<dyn Authorizer>,
    /// Replaced when the proxy CA bundle changes (a rotation): volumes
    /// published or republished from then on carry the new bundle.
    config: Arc<certs::Reloading<RenderConfig>>,
    pods: Arc<dyn PodLookup>,
    classes: Arc<dyn ClassStore>,
    node_id: String,
    // NB: publications of one target must not interleave (kubelet may
    // republish while an unpublish is pending); different targets (a full
    // node's pods starting at once) are written side by side.
    filesystem: Arc<TargetLocks>,
    backing: target::Backing,
    metrics: Arc<Metrics>,
}

impl Plugin {
    pub fn new(
        store: Arc<dyn ConnectorLookup>,
        authorizer: Arc<dyn Authorizer>,
        config: RenderConfig,
        node_id: impl Into<String>,
    ) -> Self {
        Self {
            store,
            authorizer,
            config: certs::Reloading::new(config),
            pods: Arc::new(NoPods),
            classes: Arc::new(connector::store::BuiltInClasses),
            node_id: node_id.into(),
            filesystem: Arc::default(),
            backing: target::Backing::Directory,
            metrics: Arc::default(),
        }
    }

    /// Where volumes' files live: a tmpfs per volume (what nodes run), or
    /// kubelet's directory as it is (the default here, for runs without
    /// the right to mount).
    pub fn with_backing(mut self, backing: target::Backing) -> Self {
        self.backing = backing;
        self
    }

    /// The plugin's metrics, for the health listener's `/metrics`.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Volumes carry `pem` as the proxy CA from now on.
    pub fn replace_proxy_ca(&self, pem: String) {
        let mut next = (*self.config.current()).clone();
        next.proxy_ca_pem = pem;
        self.config.replace(next);
    }

    /// Reads how each pod uses its volume through `pods` (where it is
    /// mounted, as whom the containers run); without, the defaults hold.
    pub fn with_pods(mut self, pods: Arc<dyn PodLookup>) -> Self {
        self.pods = pods;
        self
    }

    /// Takes the connectors' classes (their configurations) from `classes`;
    /// without, the shipped classes.
    pub fn with_classes(mut self, classes: Arc<dyn ClassStore>) -> Self {
        self.classes = classes;
        self
    }

    /// Runs a change of the volume at `target` off the async threads, one
    /// at a time per target.
    async fn with_filesystem<T: Send + 'static>(
        &self,
        target: &Path,
        change: impl FnOnce() -> Result<T, TargetError> + Send + 'static,
    ) -> Result<T, Status> {
        let locks = self.filesystem.clone();
        let target = target.to_owned();
        tokio::task::spawn_blocking(move || locks.holding(&target, change))
            .await
            .map_err(|e| Status::internal(format!("the volume writer failed: {e}")))?
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// One lock per volume target, kept while someone holds or waits for it.
#[derive(Default)]
struct TargetLocks {
    held: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
}

impl TargetLocks {
    /// Runs `change` holding `target`'s lock (blocking).
    fn holding<T>(&self, target: &Path, change: impl FnOnce() -> T) -> T {
        let lock = {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            held.entry(target.to_owned()).or_default().clone()
        };
        let result = {
            let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            change()
        };
        drop(lock);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.get(target).is_some_and(|lock| Arc::strong_count(lock) == 1) {
            held.remove(target);
        }
        result
    }
}

/// Listens on the unix socket at `socket`: a socket left by an earlier run
/// is replaced, anything else there is refused, missing directories are
/// created.
pub(crate) fn bind_socket(socket: &Path) -> Result<tokio::net::UnixListener, ServeError> {
    let socket_error = |source| ServeError::Socket {
        path: socket.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(socket).map_err(socket_error)?,
        Ok(_) => {
            return Err(ServeError::NotASocket {
                path: socket.to_owned(),
            });
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(socket_error(error)),
    }
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent).map_err(socket_error)?;
    }
    tokio::net::UnixListener::bind(socket).map_err(socket_error)
}

/// Serves both services on the unix socket at `socket` until `shutdown`
/// completes. A socket left by an earlier run is replaced; the socket is
/// removed on the way out. `on_listening` is called once it accepts.
pub async fn serve_unix(
    socket: &Path,
    plugin: Plugin,
    shutdown: impl Future<Output = ()> + Send,
    on_listening: impl FnOnce(&Path),
) -> Result<(), ServeError> {
    let listener = bind_socket(socket)?;
    on_listening(socket);
    let served = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(IdentityService {
            store: plugin.store.clone(),
        }))
        .add_service(NodeServer::new(NodeService { plugin }))
        .serve_with_incoming_shutdown(crate::authority::incoming(listener), shutdown)
        .await;
    let _ = std::fs::remove_file(socket);
    Ok(served?)
}

/// The Identity service: who the plugin is and whether it is ready.
pub struct IdentityService {
    store: Arc<dyn ConnectorLookup>,
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: keys::CSI_DRIVER.to_owned(),
            vendor_version: env!("CARGO_PKG_VERSION").to_owned(),
            manifest: Default::default(),
        }))
    }

    /// None: a node-only plugin for inline ephemeral volumes has no
    /// controller service and no topology.
    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(GetPluginCapabilitiesResponse { capabilities: vec![] }))
    }

    /// Ready once connectors can be looked up (a store: its first lists
    /// have arrived).
    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse {
            ready: Some(self.store.is_ready()),
        }))
    }
}

/// The Node service: publishing and unpublishing volumes.
pub struct NodeService {
    plugin: Plugin,
}

impl NodeService {
    /// Authorizes, renders and writes a volume; `Ok(true)` when its files
    /// changed.
    async fn publish(&self, request: &NodePublishVolumeRequest) -> Result<bool, Status> {
        let request = PublishRequest::parse(request).map_err(invalid)?;
        let plugin = &self.plugin;
        let routes = authorize::authorize_connectors(
            plugin.store.as_ref(),
            plugin.authorizer.as_ref(),
            &request.pod,
            &request.connectors,
        )
        .await
        .map_err(|error| {
            tracing::warn!(
                volume_id = %request.volume_id,
                pod = %format_args!("{}/{}", request.pod.namespace, request.pod.name),
                %error,
                "volume refused"
            );
            denied(error)
        })?;
        let volume = plugin.pods.volume_use(&request.pod, &request.volume_id).await;
        let config = plugin.config.current();
        let mut files = render::render(&config, &routes, &request.token, &request.files, volume.as_ref());
        let configurations = render::ConfigurationRequest {
            names: &request.configurations,
            params: &request.params,
        };
        let rendered = render::render_configurations(
            &config,
            &request.pod,
            &routes,
            plugin.classes.as_ref(),
            &request.token,
            &configurations,
            volume.as_ref(),
        )
        .map_err(|error| {
            tracing::warn!(
                volume_id = %request.volume_id,
                pod = %format_args!("{}/{}", request.pod.namespace, request.pod.name),
                %error,
                "volume configuration refused"
            );
            Status::invalid_argument(error.to_string())
        })?;
        files.extend(rendered);
        files.retain(|file| !request.exclusions.contains(&file.name));
        let (target, backing) = (request.target_path.clone(), plugin.backing);
        let changed = plugin
            .with_filesystem(&request.target_path, move || {
                target::write_volume(&target, &files, backing)
            })
            .await?;
        let pod = format!("{}/{}", request.pod.namespace, request.pod.name);
        let connectors = format_connector_list(&request.connectors);
        let expires = request.token_expiration.as_deref().unwrap_or("unknown");
        if changed {
            tracing::info!(
                volume_id = %request.volume_id,
                %pod,
                %connectors,
                target = %request.target_path.display(),
                token_expires = expires,
                "volume published"
            );
        } else {
            tracing::debug!(volume_id = %request.volume_id, %pod, "volume unchanged");
        }
        Ok(changed)
    }

    /// Removes a volume; `Ok(true)` when there was one.
    async fn unpublish(&self, request: &NodeUnpublishVolumeRequest) -> Result<bool, Status> {
        let request = UnpublishRequest::parse(request).map_err(invalid)?;
        let target = request.target_path.clone();
        let removed = self
            .plugin
            .with_filesystem(&request.target_path, move || target::remove_volume(&target))
            .await?;
        self.plugin.pods.forget(&request.volume_id);
        tracing::info!(
            volume_id = %request.volume_id,
            target = %request.target_path.display(),
            removed,
            "volume unpublished"
        );
        Ok(removed)
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let started = Instant::now();
        let result = self.publish(request.get_ref()).await;
        self.plugin.metrics.published(&result, started.elapsed());
        result.map(|_| Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let result = self.unpublish(request.get_ref()).await;
        self.plugin.metrics.unpublished(&result);
        result.map(|_| Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(NodeGetCapabilitiesResponse { capabilities: vec![] }))
    }

    async fn node_get_info(&self, _: Request<NodeGetInfoRequest>) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.plugin.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }

    async fn node_stage_volume(
        &self,
        _: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        Err(unimplemented("NodeStageVolume"))
    }

    async fn node_unstage_volume(
        &self,
        _: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        Err(unimplemented("NodeUnstageVolume"))
    }

    async fn node_get_volume_stats(
        &self,
        _: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        Err(unimplemented("NodeGetVolumeStats"))
    }

    async fn node_expand_volume(
        &self,
        _: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        Err(unimplemented("NodeExpandVolume"))
    }
}

fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not supported by {}", keys::CSI_DRIVER))
}

fn invalid(error: RequestError) -> Status {
    // NB: no RequestError carries the token, so it can be logged and returned.
    tracing::warn!(%error, "invalid request");
    Status::invalid_argument(error.to_string())
}

fn denied(error: AccessError) -> Status {
    let code = match &error {
        AccessError::Denied { .. } => Code::PermissionDenied,
        AccessError::NotFound(_) => Code::NotFound,
        AccessError::Address { .. } => Code::FailedPrecondition,
        AccessError::Undecided { .. } | AccessError::Unreadable(_) => Code::Unavailable,
    };
    Status::new(code, error.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// The most changes that ran at once, `threads` of them on `targets`.
    fn most_at_once(targets: &[&str], threads: usize) -> usize {
        let locks = Arc::new(TargetLocks::default());
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let target = PathBuf::from(targets[i % targets.len()]);
                let (locks, running, most, barrier) = (locks.clone(), running.clone(), most.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    locks.holding(&target, || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(50));
                        running.fetch_sub(1, Ordering::SeqCst);
                    });
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert!(locks.held.lock().unwrap().is_empty(), "no lock outlives its holders");
        most.load(Ordering::SeqCst)
    }

    #[test]
    fn changes_of_one_volume_never_interleave_and_different_volumes_are_written_side_by_side() {
        assert_eq!(most_at_once(&["/pods/a/mount"], 4), 1);
        assert!(most_at_once(&["/pods/a/mount", "/pods/b/mount", "/pods/c/mount", "/pods/d/mount"], 4) > 1);
    }
}
