//! The Prometheus text exposition every component serves on `/metrics`.

use prometheus_client::registry::Registry;

/// `registry` in the text exposition format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // NB: encoding into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}
