//! The admission side of connectors: the pod mutation, AdmissionReview
//! handling, the HTTPS webhook server, and the offline `mutate` of
//! manifests.

pub mod admission;
pub mod manifest;
pub mod metrics;
pub mod mutation;
pub mod server;

pub use mutation::{InjectionConfig, Mode, Outcome, mutate_pod};
