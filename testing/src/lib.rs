//! Test support that runs REAL third-party components: CNCF distribution
//! (`docker-registry`) in htpasswd, token or no-auth mode, over HTTP or
//! HTTPS; a token service that signs the JWTs distribution verifies; OCI
//! images generated on disk; skopeo as the client. Everything listens on
//! 127.0.0.0/8, every wait is bounded, and every process dies with the value
//! that started it.
//!
//! The programs come from `bash .ci/install`; a test that needs a missing one
//! fails with that hint rather than being skipped.
//!
//! ```no_run
//! # async fn scenario() {
//! use testing::{CopyOptions, OciLayout, Registry, RegistryAccess, RegistryOptions, Skopeo};
//! let registry = Registry::start(RegistryOptions::htpasswd("user", "pass")).await.unwrap();
//! let dir = tempfile::tempdir().unwrap();
//! let layout = OciLayout::new(dir.path()).unwrap();
//! let image = layout.add_image("v1", &[4096], 1).unwrap();
//! let push = CopyOptions::default().dest(RegistryAccess::plain_http().creds("user", "pass"));
//! Skopeo::new().unwrap().copy(&layout.reference("v1"), &registry.docker_reference("lab/hello:v1"), &push).await.unwrap();
//! assert_eq!(registry.manifest_digest("lab/hello", "v1").await.unwrap(), image.manifest.digest);
//! # }
//! ```

pub mod apiserver;
pub mod client;
pub mod cluster;
pub mod credentials;
pub mod digest;
pub mod faults;
pub mod image;
pub mod openings;
pub mod process;
pub mod program;
pub mod registry;
pub mod skopeo;
pub mod store;
pub mod tls;
pub mod token_server;

pub use client::RegistryClient;
pub use digest::{Digest, sha256_bytes, sha256_file};
pub use faults::{FaultyUpstream, UpstreamFault};
pub use image::{Blob, ImageDigests, IndexDigests, OciLayout};
pub use registry::{Registry, RegistryAuth, RegistryOptions, TokenAuth};
pub use skopeo::{CopyOptions, InspectOptions, RegistryAccess, Skopeo};
pub use store::StoreYaml;
pub use tls::TestTls;
pub use token_server::{Fault, Grant, GrantRule, TokenServer, TokenServerOptions};
