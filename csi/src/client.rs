//! Dialling a CSI plugin on its unix socket, as kubelet does: for tests and
//! health checks.

use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Uri};

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
