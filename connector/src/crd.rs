//! The `Connector` custom resource (`connectors.alauda.io/v1alpha1`): one
//! registry address and the credential the proxy injects for it.

use std::fmt;

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A registry that workloads reach through the proxy, with the credential the
/// proxy injects. Workloads never read the credential.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "connectors.alauda.io",
    version = "v1alpha1",
    kind = "Connector",
    plural = "connectors",
    singular = "connector",
    namespaced,
    status = "ConnectorStatus",
    shortname = "conn",
    category = "registry-connectors",
    doc = "A registry, and the credential the connectors proxy injects for it",
    printcolumn = r#"{"name":"Class","type":"string","jsonPath":".spec.connectorClassName"}"#,
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.address"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorSpec {
    /// The kind of registry: `harbor` or `oci`.
    pub connector_class_name: String,
    /// URL of the registry, e.g. `https://harbor.example.com`. A path, if
    /// any, is the prefix under which the registry serves `/v2/`.
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''",
        "message": "address must be an http or https URL with a host, e.g. https://harbor.example.com"
    }]))]
    #[schemars(length(min = 1, max = 2048))]
    pub address: String,
    /// The credential injected upstream. Omit for anonymous registries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ConnectorAuth>,
    /// A Secret in the connector's namespace holding extra CA certificates
    /// (keys ending in `.crt` or `.pem`) for a private upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_secret_ref: Option<SecretReference>,
    /// More URLs that belong to this registry and may receive its
    /// credential, such as a token realm on another host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(e, isURL(e.value) && url(e.value).getScheme() in ['http', 'https'] && url(e.value).getHostname() != '')",
        "message": "every addressExtensions value must be an http or https URL with a host"
    }, {
        "rule": "self.all(e, self.exists_one(f, f.name == e.name))",
        "message": "addressExtensions names must be unique"
    }]))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    #[schemars(length(max = 32))]
    pub address_extensions: Vec<NamedValue>,
    /// Class-specific parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<NamedValue>,
}

/// How the proxy authenticates to the registry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorAuth {
    /// The auth type: `basicAuth` (Harbor, and OCI registries with Basic or
    /// token auth) or `tokenAuth` (OCI registries with token auth).
    #[schemars(extend("enum" = ["basicAuth", "tokenAuth"]))]
    pub name: String,
    /// A Secret in the connector's namespace: `kubernetes.io/basic-auth`
    /// (`username`, `password`) or `kubernetes.io/dockerconfigjson`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,
    /// Values the auth probe needs, e.g. a repository to check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<NamedValue>,
}

/// A Secret in the same namespace as the connector.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretReference {
    pub name: String,
}

/// A name and a string value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct NamedValue {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// What the controller observed of the connector.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorStatus {
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `SecretReady`, `LivenessReady`, `AuthReady` and the aggregate `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Where workloads reach this connector through the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyStatus>,
}

/// Addresses of the proxy for this connector.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_address: Option<HttpAddress>,
}

/// An addressable URL (knative style) with the CA that signs it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpAddress {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "CACerts")]
    pub ca_certs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

/// A status condition in the shape of `metav1.Condition`, plus
/// `lastProbeTime` for probe conditions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub last_probe_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Connector {
    /// The connector's `namespace/name` key; a connector read from a
    /// manifest without a namespace is in `default_namespace`.
    pub fn key(&self, default_namespace: &str) -> crate::ConnectorKey {
        crate::ConnectorKey::new(
            self.metadata.namespace.as_deref().unwrap_or(default_namespace),
            self.metadata.name.as_deref().unwrap_or_default(),
        )
    }

    /// The description annotation, if set.
    pub fn description(&self) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a: &BTreeMap<String, String>| a.get(crate::keys::DESCRIPTION_ANNOTATION))
            .map(String::as_str)
    }

    /// Whether annotation `key` is set to `"true"`.
    pub fn opts_in(&self, key: &str) -> bool {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .is_some_and(|v| v == "true")
    }

    /// Whether admission in other namespaces may see this connector
    /// ([`crate::keys::SHARED_ANNOTATION`]).
    pub fn is_shared(&self) -> bool {
        self.opts_in(crate::keys::SHARED_ANNOTATION)
    }
}

/// The CRD manifests (`Connector`, `ConnectorClass`) as YAML, generated from the types above; `manifests/`
/// holds a committed copy that a test keeps in step.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let mut out = String::from("# Generated by `connectors crd`; do not edit.\n");
    out.push_str(&crate::yaml::to_string(&Connector::crd()).expect("a CRD always serialises"));
    out.push_str("---\n");
    out.push_str(&crate::yaml::to_string(&crate::ConnectorClass::crd()).expect("a CRD always serialises"));
    out
}

/// A connector's `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectorKey {
    pub namespace: String,
    pub name: String,
}

impl ConnectorKey {
    /// `namespaces/<ns>/connectors/<name>`: where the connector lives in the
    /// proxy's URL space (after `/v2/` in reverse mode, as a path prefix of
    /// rewritten images and mirrors).
    pub fn proxy_path(&self) -> String {
        format!("namespaces/{}/connectors/{}", self.namespace, self.name)
    }

    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ConnectorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
