//! Prometheus metrics of the CSI plugin, served on its health listener:
//! publications and unpublications by result, and how long a publication
//! takes. Labels are bounded (results only: never pods, volumes or
//! connectors).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tonic::{Code, Status};

/// Labels of a publication or unpublication.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `published`, `unchanged`, `invalid`, `denied` or `failed`
    /// (publications); `removed`, `absent` or `failed` (unpublications).
    pub result: &'static str,
}

/// The plugin's metrics and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    publishes: Family<ResultLabels, Counter>,
    unpublishes: Family<ResultLabels, Counter>,
    publish_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("connectors_csi");
        let publishes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "publishes",
            "NodePublishVolume calls (kubelet republishes each volume periodically), by result",
            publishes.clone(),
        );
        let unpublishes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "unpublishes",
            "NodeUnpublishVolume calls, by result",
            unpublishes.clone(),
        );
        let publish_seconds = Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0]);
        registry.register(
            "publish_duration_seconds",
            "Time to authorize, render and write one volume (authorization reviews included)",
            publish_seconds.clone(),
        );
        Self {
            registry,
            publishes,
            unpublishes,
            publish_seconds,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn encode(&self) -> String {
        serving::metrics::encode(&self.registry)
    }

    /// Counts one publication: `Ok(changed)` or the refusal.
    pub fn published(&self, result: &Result<bool, Status>, took: Duration) {
        let result = match result {
            Ok(true) => "published",
            Ok(false) => "unchanged",
            Err(status) => match status.code() {
                Code::InvalidArgument => "invalid",
                Code::PermissionDenied | Code::NotFound | Code::FailedPrecondition => "denied",
                _ => "failed",
            },
        };
        self.publishes.get_or_create(&ResultLabels { result }).inc();
        self.publish_seconds.observe(took.as_secs_f64());
    }

    /// Counts one unpublication: `Ok(removed)` or the failure.
    pub fn unpublished(&self, result: &Result<bool, Status>) {
        let result = match result {
            Ok(true) => "removed",
            Ok(false) => "absent",
            Err(_) => "failed",
        };
        self.unpublishes.get_or_create(&ResultLabels { result }).inc();
    }
}
