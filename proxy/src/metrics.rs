//! Prometheus metrics of the proxy. Labels are bounded: the connector label is
//! set only once the connector is found (never from an arbitrary path), plus
//! mode and status class; never repositories, images, callers or pods.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

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

/// The proxy's metrics and the registry that encodes them.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub bytes: Family<ByteLabels, Counter>,
    pub token_fetches: Family<ConnectorLabels, Counter>,
    pub token_cache_hits: Family<ConnectorLabels, Counter>,
    /// Blob bodies relayed socket to socket by the kernel.
    pub zero_copy_relays: Family<ConnectorLabels, Counter>,
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
        Self {
            registry: Mutex::new(registry),
            requests,
            bytes,
            token_fetches,
            token_cache_hits,
            zero_copy_relays,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
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
