//! Prometheus metrics of the controller. Labels are bounded: probe results
//! and certificate names, never connector names.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of a probe.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    /// `success` or `failure`.
    pub result: &'static str,
}

/// Labels of a certificate write.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    /// The Secret or ConfigMap name.
    pub name: String,
}

/// The controller's metrics and the registry that encodes them.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub probes: Family<ProbeLabels, Counter>,
    pub status_writes: Counter,
    pub certificate_writes: Family<ObjectLabels, Counter>,
    /// When each certificate Secret's certificate expires (Unix seconds).
    pub certificate_expiry: Family<ObjectLabels, Gauge>,
    /// 1 while this replica holds the lease.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("connectors_controller");
        let probes = Family::<ProbeLabels, Counter>::default();
        registry.register("probes", "Connector probes by result", probes.clone());
        let status_writes = Counter::default();
        registry.register("status_writes", "Connector status patches", status_writes.clone());
        let certificate_writes = Family::<ObjectLabels, Counter>::default();
        registry.register(
            "certificate_writes",
            "Certificate Secrets and ConfigMaps created or replaced",
            certificate_writes.clone(),
        );
        let certificate_expiry = Family::<ObjectLabels, Gauge>::default();
        registry.register(
            "certificate_expiration_timestamp_seconds",
            "When the certificate in each certificate Secret expires (Unix seconds); renewed at a third of its validity",
            certificate_expiry.clone(),
        );
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica is the leader", leader.clone());
        Self {
            registry: Mutex::new(registry),
            probes,
            status_writes,
            certificate_writes,
            certificate_expiry,
            leader,
        }
    }
}

impl Metrics {
    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String cannot fail");
        text
    }
}
