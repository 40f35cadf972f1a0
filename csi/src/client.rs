//! Dialling a CSI plugin on its unix socket, and the requests, as kubelet
//! makes them: for tests and health checks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Uri};

use crate::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use crate::proto::{NodePublishVolumeRequest, VolumeCapability};

/// What kubelet sends to publish an inline ephemeral volume `volume_id` at
/// `target_path` with volume context `context` (the pod's attributes and
/// tokens): a read-only, single-node-writer mount.
pub fn inline_volume_request(
    volume_id: &str,
    target_path: &str,
    context: HashMap<String, String>,
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: volume_id.to_owned(),
        target_path: target_path.to_owned(),
        volume_capability: Some(VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode { mode: 2 }),
        }),
        readonly: true,
        volume_context: context,
        ..Default::default()
    }
}

/// A gRPC channel to the plugin listening on `socket`. Each call is bounded
/// by `timeout`.
pub async fn connect_unix(socket: PathBuf, timeout: Duration) -> Result<Channel, tonic::transport::Error> {
    // NB: tonic wants a URI, but it is never dialled: every connection goes
    // through the socket.
    Endpoint::from_static("http://localhost")
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}
