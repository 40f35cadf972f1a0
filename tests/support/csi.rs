//! What kubelet sends the CSI plugin to publish an inline volume.

use std::collections::HashMap;
use std::path::Path;

use csi::proto::NodePublishVolumeRequest;

/// A pod's inline `connectors-csi` volume naming `connectors`, for pod
/// `pod` of ServiceAccount `account` in `namespace`, with `token` as its
/// `connectors-proxy` token, to be published at `target`.
pub fn publish_request(
    target: &Path,
    token: &str,
    (namespace, pod, account): (&str, &str, &str),
    connectors: &str,
) -> NodePublishVolumeRequest {
    let context: HashMap<String, String> = [
        ("csi.storage.k8s.io/ephemeral", "true".to_owned()),
        ("csi.storage.k8s.io/pod.name", pod.to_owned()),
        ("csi.storage.k8s.io/pod.namespace", namespace.to_owned()),
        (
            "csi.storage.k8s.io/pod.uid",
            "2b0c7f9e-0000-4000-8000-000000000002".to_owned(),
        ),
        ("csi.storage.k8s.io/serviceAccount.name", account.to_owned()),
        (
            "csi.storage.k8s.io/serviceAccount.tokens",
            serde_json::json!({"connectors-proxy": {"token": token, "expirationTimestamp": "2030-01-01T00:00:00Z"}})
                .to_string(),
        ),
        ("connectors", connectors.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    csi::client::inline_volume_request("csi-2b0c7f9e", &target.to_string_lossy(), context)
}
