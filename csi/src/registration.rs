//! Registration with kubelet: the plugin's own answer to kubelet's plugin
//! watcher, which node-driver-registrar gives other CSI drivers. kubelet
//! finds a socket in its `plugins_registry` directory, asks it
//! `GetInfo` (a CSI plugin: its name, the CSI endpoint as the node sees it,
//! the CSI versions), registers the driver (which lists it in the node's
//! `CSINode`) and reports with `NotifyRegistrationStatus`.

use std::future::Future;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::server::{ServeError, bind_socket};

/// kubelet's plugin registration messages and service, generated from
/// `proto/pluginregistration.proto`.
#[allow(clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("pluginregistration");
}

use proto::registration_server::{Registration, RegistrationServer};
use proto::{InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse};

/// kubelet's plugin type for CSI drivers.
pub const CSI_PLUGIN: &str = "CSIPlugin";
/// The CSI versions the plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0"];

/// Why registration ended.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("kubelet refused to register the plugin: {0}")]
    Refused(String),
}

/// What kubelet is told: the driver `name` and its CSI socket at `endpoint`,
/// a path on the node (not in the plugin's container).
#[derive(Debug, Clone)]
pub struct PluginEndpoint {
    pub name: String,
    pub endpoint: PathBuf,
}

struct RegistrationService {
    info: PluginEndpoint,
    status: mpsc::Sender<RegistrationStatus>,
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn get_info(&self, _: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(PluginInfo {
            r#type: CSI_PLUGIN.to_owned(),
            name: self.info.name.clone(),
            endpoint: self.info.endpoint.display().to_string(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        // NB: a full channel means a status is already waiting; the first
        // refusal is what ends registration.
        let _ = self.status.try_send(request.into_inner());
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

/// Serves the registration service on the unix socket `socket` (in
/// kubelet's `plugins_registry` directory) until `shutdown` completes, and
/// fails as soon as kubelet reports that it refused the plugin, so that the
/// container restarts and registers again, as node-driver-registrar does.
/// `on_status` sees every status kubelet reports. The socket is removed on
/// the way out (kubelet then deregisters the driver).
pub async fn serve_registration(
    socket: &Path,
    info: PluginEndpoint,
    shutdown: impl Future<Output = ()> + Send,
    on_status: impl Fn(&RegistrationStatus) + Send,
) -> Result<(), RegistrationError> {
    let listener = bind_socket(socket)?;
    let (status, mut statuses) = mpsc::channel(4);
    let server = tonic::transport::Server::builder()
        .add_service(RegistrationServer::new(RegistrationService { info, status }))
        .serve_with_incoming_shutdown(crate::authority::incoming(listener), shutdown);
    let refused = async {
        while let Some(status) = statuses.recv().await {
            on_status(&status);
            if !status.plugin_registered {
                return status.error;
            }
        }
        std::future::pending().await
    };
    let outcome = tokio::select! {
        served = server => served.map_err(|e| RegistrationError::Serve(e.into())),
        error = refused => Err(RegistrationError::Refused(error)),
    };
    let _ = std::fs::remove_file(socket);
    outcome
}
