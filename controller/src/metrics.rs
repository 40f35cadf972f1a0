//! Prometheus metrics of the controller. Labels are bounded: probe results,
//! certificate names, and the namespace and name of each Connector in the
//! readiness gauge, whose series go when the Connector does.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
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

/// Labels of a Connector.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ConnectorLabels {
    pub namespace: String,
    pub name: String,
}

fn probe_histogram() -> Histogram {
    Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
}

/// The controller's metrics and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    pub probes: Family<ProbeLabels, Counter>,
    probe_seconds: Family<ProbeLabels, Histogram>,
    /// 1 while a Connector is Ready, 0 while it is not.
    ready: Family<ConnectorLabels, Gauge>,
    /// The Connectors `ready` has a series of.
    connectors: Mutex<BTreeSet<ConnectorLabels>>,
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
        let probe_seconds =
            Family::<ProbeLabels, Histogram>::new_with_constructor(probe_histogram as fn() -> Histogram);
        registry.register(
            "probe_duration_seconds",
            "How long probing a Connector's registry took (token and credential check included), by result",
            probe_seconds.clone(),
        );
        let ready = Family::<ConnectorLabels, Gauge>::default();
        registry.register(
            "connector_ready",
            "1 while the Connector is Ready, 0 while it is not (reported by the leader)",
            ready.clone(),
        );
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
            registry,
            probes,
            probe_seconds,
            ready,
            connectors: Mutex::default(),
            status_writes,
            certificate_writes,
            certificate_expiry,
            leader,
        }
    }
}

impl Metrics {
    /// Counts one probe of a Connector and how long it took.
    pub fn probed(&self, result: &'static str, took: Duration) {
        let labels = ProbeLabels { result };
        self.probes.get_or_create(&labels).inc();
        self.probe_seconds.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// Sets whether the Connector `namespace/name` is Ready.
    pub fn set_ready(&self, namespace: &str, name: &str, ready: bool) {
        let labels = ConnectorLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.ready.get_or_create(&labels).set(i64::from(ready));
        self.connectors.lock().unwrap_or_else(|e| e.into_inner()).insert(labels);
    }

    /// Drops the readiness series of every Connector `exists` says is gone
    /// (all of them, when this replica stops leading).
    pub fn forget_absent(&self, exists: impl Fn(&str, &str) -> bool) {
        let mut connectors = self.connectors.lock().unwrap_or_else(|e| e.into_inner());
        connectors.retain(|labels| {
            let keep = exists(&labels.namespace, &labels.name);
            if !keep {
                self.ready.remove(labels);
            }
            keep
        });
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        serving::metrics::encode(&self.registry)
    }
}
