//! The `ConnectorClass` custom resource (`connectors.alauda.io/v1alpha1`,
//! cluster-scoped): what a kind of registry offers, as data. A Connector's
//! `spec.connectorClassName` names one. The class says which auth types its
//! Connectors may name, which extra request proves a credential (Harbor's
//! `/api/v2.0/users/current`), and which client files a CSI volume offers
//! by configuration name (`registry-config`, `buildkitd`, …) as templates.
//!
//! The classes the product ships (`oci`, `harbor`) are `manifests/classes.yaml`;
//! the same YAML is compiled in as [`built_in`] for standalone mode.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A kind of registry: its auth types, credential probes and the client
/// configurations CSI volumes offer.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "connectors.alauda.io",
    version = "v1alpha1",
    kind = "ConnectorClass",
    plural = "connectorclasses",
    singular = "connectorclass",
    shortname = "connclass",
    category = "registry-connectors",
    doc = "A kind of registry: the auth types its Connectors may use, how a credential is proved, and the client configurations CSI volumes offer",
    printcolumn = r#"{"name":"Configurations","type":"string","jsonPath":".spec.configurations[*].name"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorClassSpec {
    /// What a Connector's `spec.address` is, for people and UIs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<ClassAddress>,
    /// Parameters a Connector of this class may set in `spec.params`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub params: Vec<ClassParam>,
    /// The auth types a Connector of this class may name in `spec.auth.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ClassAuth>,
    /// Requests that prove a credential beyond the registry's `/v2/`, per
    /// auth type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub auth_probes: Vec<AuthProbe>,
    /// The configurations a CSI volume offers (`configuration.names`), each
    /// a set of files rendered from templates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    #[schemars(length(max = 32))]
    pub configurations: Vec<ClassConfiguration>,
}

/// What a Connector's address is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ClassAddress {
    /// `string` (a URL).
    #[serde(rename = "type")]
    pub type_: String,
}

/// A named parameter with an optional default.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClassParam {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub default: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The auth types of a class.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClassAuth {
    #[schemars(length(max = 16))]
    pub types: Vec<AuthType>,
}

/// One auth type: its name and the Secret type it reads.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthType {
    /// What `spec.auth.name` says, e.g. `basicAuth`.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The Secret type, e.g. `kubernetes.io/basic-auth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_type: Option<String>,
    /// Whether a Connector may omit the Secret.
    #[serde(default)]
    pub optional: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A probe of a credential for one auth type.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthProbe {
    /// The auth type it proves.
    pub auth_name: String,
    pub probe: Probe,
}

/// How a credential is proved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct Probe {
    pub http: HttpProbe,
}

/// An HTTP request with the credential that must answer 200.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpProbe {
    /// The path on the registry's origin (the address's own path prefix is
    /// not added), e.g. `/api/v2.0/users/current`.
    #[schemars(extend("pattern" = "^/"))]
    #[schemars(length(min = 1, max = 2048))]
    pub path: String,
    /// `GET` (the default) or `HEAD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["GET", "HEAD"]))]
    pub method: Option<String>,
}

/// A configuration a CSI volume offers: files rendered from templates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClassConfiguration {
    /// What `configuration.names` says, e.g. `registry-config`.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Other names that mean this configuration (legacy names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// File name to template (Go `text/template` syntax with the functions
    /// and values README documents).
    pub data: BTreeMap<String, String>,
    /// Parameters the templates read as `.configurations.<name>`, with
    /// defaults; `configuration.params` overrides them per volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<ClassParam>,
}

impl ConnectorClass {
    /// The configuration called `name` (or aliased so).
    pub fn configuration(&self, name: &str) -> Option<&ClassConfiguration> {
        self.spec.configurations.iter().find(|c| c.name == name).or_else(|| {
            self.spec
                .configurations
                .iter()
                .find(|c| c.aliases.iter().any(|a| a == name))
        })
    }

    /// Whether auth type `name` is one of the class's (a class that lists
    /// none takes any).
    pub fn has_auth_type(&self, name: &str) -> bool {
        self.spec
            .auth
            .as_ref()
            .is_none_or(|auth| auth.types.is_empty() || auth.types.iter().any(|t| t.name == name))
    }

    /// The auth type names, comma-separated, for messages.
    pub fn auth_type_list(&self) -> String {
        self.spec
            .auth
            .iter()
            .flat_map(|a| a.types.iter().map(|t| t.name.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The HTTP probe for auth type `name`, if the class has one.
    pub fn auth_probe(&self, name: &str) -> Option<&HttpProbe> {
        self.spec
            .auth_probes
            .iter()
            .find(|p| p.auth_name == name)
            .map(|p| &p.probe.http)
    }
}

/// The shipped classes (`manifests/classes.yaml`), for standalone mode and
/// for tests.
pub fn built_in() -> Vec<ConnectorClass> {
    crate::yaml::parse_documents(BUILT_IN_YAML)
        .expect("manifests/classes.yaml parses")
        .into_iter()
        .map(|document| serde_json::from_value(document).expect("manifests/classes.yaml holds ConnectorClasses"))
        .collect()
}

/// `manifests/classes.yaml`.
pub const BUILT_IN_YAML: &str = include_str!("../../manifests/classes.yaml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_classes_offer_registry_config_and_buildkitd_and_harbor_probes_users_current() {
        let classes = built_in();
        let names: Vec<_> = classes.iter().filter_map(|c| c.metadata.name.as_deref()).collect();
        assert_eq!(names, ["oci", "harbor"]);
        for class in &classes {
            for name in ["registry-config", "docker-config", "config", "buildkitd"] {
                assert!(class.configuration(name).is_some(), "{names:?} {name}");
            }
            assert!(class.has_auth_type("basicAuth"));
            assert!(!class.has_auth_type("oauth2"));
        }
        let harbor = &classes[1];
        assert_eq!(
            harbor.auth_probe("basicAuth").map(|p| p.path.as_str()),
            Some("/api/v2.0/users/current")
        );
        assert!(classes[0].auth_probe("basicAuth").is_none());
    }
}
