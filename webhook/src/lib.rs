//! The admission side of connectors: the pod mutation, AdmissionReview
//! handling, the HTTPS webhook server, and the offline `mutate` of
//! manifests. What a selected pod gets comes from `connector::injection`.
//!
//! Admission does no network I/O, so it must not depend on `proxy`,
//! `registry`, `access` or `csi`.

pub mod admission;
pub mod manifest;
pub mod metrics;
pub mod mutation;
pub mod server;

pub use mutation::{Mode, Outcome, mutate_pod};
