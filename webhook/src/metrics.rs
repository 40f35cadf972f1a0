//! Prometheus metrics of the webhook, with bounded label sets (verdict,
//! operation, skip reason: never pod, image or namespace names).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a reviewed request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    /// mutated, unchanged, skipped, denied, or invalid (HTTP 400).
    pub verdict: &'static str,
    /// Why a pod was skipped, or empty.
    pub reason: &'static str,
}

/// The webhook's metrics and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    pub reviews: Family<ReviewLabels, Counter>,
    pub review_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("connectors_webhook");
        let reviews = Family::<ReviewLabels, Counter>::default();
        registry.register(
            "admission_reviews",
            "AdmissionReviews answered, by verdict",
            reviews.clone(),
        );
        let buckets = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0];
        let review_seconds = Histogram::new(buckets);
        registry.register(
            "admission_review_duration_seconds",
            "Time to decode, mutate and encode one AdmissionReview",
            review_seconds.clone(),
        );
        Self {
            registry,
            reviews,
            review_seconds,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn encode(&self) -> String {
        serving::metrics::encode(&self.registry)
    }
}
