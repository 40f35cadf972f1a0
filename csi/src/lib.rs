//! The CSI node plugin `connectors-csi`: kubelet asks it to publish an inline
//! ephemeral volume for a pod, and it writes the registry client
//! configuration that pod needs to go through the connectors proxy with its
//! own ServiceAccount token (proxy URLs, docker auth, buildkitd config, the
//! proxy CA and a combined trust bundle).
//!
//! `request` validates what kubelet sends, `authorize` decides which connectors
//! the pod may use, `render` turns that into file contents, `target` writes
//! them atomically, and `server` is the gRPC shell around them (`client`
//! dials it). `registration` registers the plugin with kubelet and `health`
//! answers kubelet's liveness probe, so the plugin needs no sidecars.
//!
//! The files' environment comes from `connector::injection` and the
//! decision from `access`; it must not depend on `proxy`, `webhook` or
//! `registry`.

pub mod authority;
pub mod authorize;
pub mod client;
pub mod files;
pub mod health;
pub mod metrics;
pub mod pod;
pub mod registration;
pub mod render;
pub mod request;
pub mod server;
pub mod target;
pub mod template;
pub mod trust;

/// The CSI v1 messages and the Identity and Node services, generated from
/// `proto/csi.proto`.
#[allow(clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("csi.v1");
}

pub use render::{FileName, RenderConfig};
pub use server::{Plugin, serve_unix, socket_path};
