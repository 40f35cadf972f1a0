//! Prometheus metrics of the proxy. Labels are bounded: the connector label is
//! set only once the connector is found (never from an arbitrary path), plus
//! mode, status class, refusal reason and upstream error class; never
//! repositories, images, callers or pods. A connector's series go when the
//! connector does ([`Metrics::forget_absent`]).

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The modes a request comes in by (the `mode` label).
pub const MODES: [&str; 2] = ["reverse", "forward"];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const DIRECTIONS: [&str; 2] = ["upload", "download"];

/// Time to first byte, from a request's head to the answer's head: 1 ms to
/// 60 s (a cold token fetch plus a slow registry sits near the top).
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0,
];

/// Labels of a proxied request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `ns/name`, or empty when no connector was resolved.
    pub connector: String,
    /// `reverse` or `forward`.
    pub mode: &'static str,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub status: &'static str,
}

/// Labels of transferred bytes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ByteLabels {
    pub connector: String,
    /// `upload` (client to registry) or `download`.
    pub direction: &'static str,
}

/// Labels of per-connector activity.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectorLabels {
    pub connector: String,
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: &'static str,
}

/// Labels of a refused request: why the proxy turned it away.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub mode: &'static str,
    /// One of [`crate::error::REFUSAL_REASONS`].
    pub reason: &'static str,
}

/// Labels of an upstream failure: what failed between the proxy and the
/// registry (its token service, its storage).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub connector: String,
    /// One of [`crate::error::UPSTREAM_ERROR_CLASSES`].
    pub class: &'static str,
}

/// The proxy's metrics and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    /// Every connector label a series was made for, to forget them.
    connectors: Mutex<BTreeSet<String>>,
    requests: Family<RequestLabels, Counter>,
    bytes: Family<ByteLabels, Counter>,
    token_fetches: Family<ConnectorLabels, Counter>,
    token_cache_hits: Family<ConnectorLabels, Counter>,
    /// Blob bodies relayed socket to socket by the kernel.
    zero_copy_relays: Family<ConnectorLabels, Counter>,
    first_byte_seconds: Family<ModeLabels, Histogram>,
    refusals: Family<RefusalLabels, Counter>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("connectors_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Proxied requests by connector, mode and status class",
            requests.clone(),
        );
        let bytes = Family::<ByteLabels, Counter>::default();
        registry.register("bytes", "Body bytes relayed, by connector and direction", bytes.clone());
        let token_fetches = Family::<ConnectorLabels, Counter>::default();
        registry.register(
            "upstream_token_fetches",
            "Tokens fetched from upstream token services",
            token_fetches.clone(),
        );
        let token_cache_hits = Family::<ConnectorLabels, Counter>::default();
        registry.register(
            "upstream_token_cache_hits",
            "Upstream tokens reused from the cache",
            token_cache_hits.clone(),
        );
        let zero_copy_relays = Family::<ConnectorLabels, Counter>::default();
        registry.register(
            "zero_copy_relays",
            "Blob bodies relayed with splice(2), never copied through the proxy",
            zero_copy_relays.clone(),
        );
        let first_byte_seconds =
            Family::<ModeLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "time_to_first_byte_seconds",
            "From a request's head to its answer's head (credential, token, upstream and redirects included), by mode",
            first_byte_seconds.clone(),
        );
        let refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "refusals",
            "Requests the proxy turned away, by mode and reason",
            refusals.clone(),
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failures between the proxy and a connector's registry, by connector and class",
            upstream_errors.clone(),
        );
        Self {
            registry,
            connectors: Mutex::default(),
            requests,
            bytes,
            token_fetches,
            token_cache_hits,
            zero_copy_relays,
            first_byte_seconds,
            refusals,
            upstream_errors,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn encode(&self) -> String {
        serving::metrics::encode(&self.registry)
    }

    /// Remembers that series exist for `connector`.
    fn seen(&self, connector: &str) {
        if connector.is_empty() {
            return;
        }
        let mut connectors = self.connectors.lock().unwrap_or_else(|e| e.into_inner());
        if !connectors.contains(connector) {
            connectors.insert(connector.to_owned());
        }
    }

    /// Counts one answered request and how long its head took.
    pub fn answered(&self, connector: String, mode: &'static str, status: u16, first_byte: Duration) {
        self.seen(&connector);
        self.first_byte_seconds
            .get_or_create(&ModeLabels { mode })
            .observe(first_byte.as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels {
                connector,
                mode,
                status: status_class(status),
            })
            .inc();
    }

    pub fn refused(&self, mode: &'static str, reason: &'static str) {
        self.refusals.get_or_create(&RefusalLabels { mode, reason }).inc();
    }

    pub fn upstream_failed(&self, connector: &str, class: &'static str) {
        self.seen(connector);
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                connector: connector.to_owned(),
                class,
            })
            .inc();
    }

    /// The counter of `connector`'s body bytes in `direction`.
    pub fn byte_counter(&self, connector: &str, direction: &'static str) -> Counter {
        self.seen(connector);
        self.bytes
            .get_or_create(&ByteLabels {
                connector: connector.to_owned(),
                direction,
            })
            .clone()
    }

    /// Counts where an upstream token came from: `fetched` or the cache.
    pub fn token(&self, connector: &str, fetched: bool) {
        self.seen(connector);
        let labels = ConnectorLabels {
            connector: connector.to_owned(),
        };
        let family = if fetched {
            &self.token_fetches
        } else {
            &self.token_cache_hits
        };
        family.get_or_create(&labels).inc();
    }

    /// The counter of `connector`'s zero-copy relays.
    pub fn zero_copy_counter(&self, connector: &str) -> Counter {
        self.seen(connector);
        self.zero_copy_relays
            .get_or_create(&ConnectorLabels {
                connector: connector.to_owned(),
            })
            .clone()
    }

    /// Drops every series of each connector `exists` says is gone, so a
    /// deleted Connector leaves no series behind.
    pub fn forget_absent(&self, exists: impl Fn(&str) -> bool) {
        let gone: Vec<String> = {
            let mut connectors = self.connectors.lock().unwrap_or_else(|e| e.into_inner());
            let gone: Vec<String> = connectors.iter().filter(|c| !exists(c)).cloned().collect();
            for connector in &gone {
                connectors.remove(connector);
            }
            gone
        };
        for connector in gone {
            self.forget(&connector);
        }
    }

    fn forget(&self, connector: &str) {
        let labels = ConnectorLabels {
            connector: connector.to_owned(),
        };
        self.token_fetches.remove(&labels);
        self.token_cache_hits.remove(&labels);
        self.zero_copy_relays.remove(&labels);
        for mode in MODES {
            for status in STATUS_CLASSES {
                self.requests.remove(&RequestLabels {
                    connector: connector.to_owned(),
                    mode,
                    status,
                });
            }
        }
        for direction in DIRECTIONS {
            self.bytes.remove(&ByteLabels {
                connector: connector.to_owned(),
                direction,
            });
        }
        for class in crate::error::UPSTREAM_ERROR_CLASSES {
            self.upstream_errors.remove(&UpstreamErrorLabels {
                connector: connector.to_owned(),
                class,
            });
        }
    }
}

/// The status class label of a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connector_that_is_gone_leaves_no_series_and_the_others_stay() {
        let metrics = Metrics::default();
        for connector in ["team/harbor", "team/hub"] {
            metrics.answered(connector.into(), "reverse", 200, Duration::from_millis(3));
            metrics.answered(connector.into(), "forward", 502, Duration::from_millis(3));
            metrics.byte_counter(connector, "download").inc_by(10);
            metrics.token(connector, true);
            metrics.token(connector, false);
            metrics.zero_copy_counter(connector).inc();
            metrics.upstream_failed(connector, "timeout");
        }
        metrics.refused("reverse", "denied");
        let before = metrics.encode();
        assert!(before.contains(r#"connector="team/hub""#), "{before}");

        metrics.forget_absent(|c| c == "team/harbor");

        let after = metrics.encode();
        assert!(!after.contains("team/hub"), "{after}");
        assert_eq!(
            after.matches(r#"connector="team/harbor""#).count(),
            before.matches(r#"connector="team/harbor""#).count()
        );
        assert!(
            after.contains(r#"connectors_proxy_refusals_total{mode="reverse",reason="denied"} 1"#),
            "{after}"
        );
        assert!(
            after.contains(r#"connectors_proxy_time_to_first_byte_seconds_count{mode="reverse"} 2"#),
            "{after}"
        );
    }
}
