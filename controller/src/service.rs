//! The per-connector Service the connector docs show: `c-<name>` in the
//! connector's namespace, an `ExternalName` for the shared proxy's Service,
//! so that `http://c-<name>.<ns>.svc.<domain>` (the address in the
//! connector's status) reaches the proxy's reverse mode from any pod. An
//! `ExternalName` Service is a DNS alias: no endpoints to keep, nothing to
//! do when proxy pods come and go.
//!
//! The Service is owned by its Connector (garbage-collected with it). A
//! Service of that name that the connector does not own is never touched:
//! the condition says so and the status keeps the shared proxy address.

use connector::Connector;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};

/// Where the per-connector Services point.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// The proxy Service's DNS name, e.g.
    /// `connectors-proxy.connectors-system.svc.cluster.local`.
    pub proxy_host: String,
    /// The cluster's DNS domain, for the connectors' own names.
    pub cluster_domain: String,
}

/// How a connector's Service stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceState {
    /// It exists as it should; the connector's URL.
    Ready { url: String },
    /// A Service of that name exists that the connector does not own.
    Conflict { service: String },
    /// The connector's name makes no valid Service name.
    Unnamable { service: String },
    /// The API server did not answer as expected.
    Failed { why: String },
}

pub use connector::injection::{service_host, service_name};

/// The Service `connector` should have, or why it can have none.
pub fn desired(connector: &Connector, settings: &ServiceSettings) -> Result<Service, ServiceState> {
    let name = connector.name_any();
    let service = service_name(&name).map_err(|service| ServiceState::Unnamable { service })?;
    let owner = OwnerReference {
        api_version: Connector::api_version(&()).into_owned(),
        kind: Connector::kind(&()).into_owned(),
        name: name.clone(),
        uid: connector.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(false),
    };
    Ok(Service {
        metadata: ObjectMeta {
            name: Some(service),
            namespace: connector.namespace(),
            labels: Some(
                [
                    ("app.kubernetes.io/managed-by".to_owned(), "connectors".to_owned()),
                    (connector::keys::CONNECTOR_ANNOTATION.to_owned(), name),
                ]
                .into(),
            ),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ExternalName".to_owned()),
            external_name: Some(settings.proxy_host.clone()),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: 80,
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// Whether `existing` is owned by the connector with `uid`.
fn owned_by(existing: &Service, uid: &str) -> bool {
    existing
        .owner_references()
        .iter()
        .any(|owner| owner.uid == uid && owner.kind == Connector::kind(&()))
}

/// Whether `existing` already routes as `want` does.
fn routes_as(existing: &Service, want: &Service) -> bool {
    let spec = |s: &Service| {
        s.spec
            .as_ref()
            .map(|spec| (spec.type_.clone(), spec.external_name.clone()))
    };
    spec(existing) == spec(want)
}

/// The URL the connector's own Service gives it, when its name makes a
/// valid Service name.
pub fn url(connector_name: &str, namespace: &str, settings: &ServiceSettings) -> Option<String> {
    let service = service_name(connector_name).ok()?;
    Some(service_url(&service, namespace, settings))
}

fn service_url(service: &str, namespace: &str, settings: &ServiceSettings) -> String {
    format!("http://{}", service_host(service, namespace, &settings.cluster_domain))
}

/// Makes sure the connector's Service exists as it should; writes only
/// when it is missing or routes elsewhere.
pub async fn ensure(client: &kube::Client, connector: &Connector, settings: &ServiceSettings) -> ServiceState {
    let want = match desired(connector, settings) {
        Ok(want) => want,
        Err(state) => return state,
    };
    let namespace = connector.namespace().unwrap_or_default();
    let name = want.name_any();
    let url = service_url(&name, &namespace, settings);
    let api: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let failed = |error: kube::Error| ServiceState::Failed {
        why: format!("Service {namespace}/{name}: {error}"),
    };
    match api.get_opt(&name).await {
        Ok(Some(existing)) if !owned_by(&existing, &connector.uid().unwrap_or_default()) => {
            ServiceState::Conflict { service: name }
        }
        Ok(Some(existing)) if routes_as(&existing, &want) => ServiceState::Ready { url },
        Ok(Some(existing)) => {
            // NB: a Service's type and externalName are replaced whole; the
            // resourceVersion makes a concurrent change fail rather than be
            // lost.
            let mut replacement = want;
            replacement.metadata.resource_version = existing.resource_version();
            match api.replace(&name, &PostParams::default(), &replacement).await {
                Ok(_) => ServiceState::Ready { url },
                Err(error) => failed(error),
            }
        }
        Ok(None) => match api.create(&PostParams::default(), &want).await {
            Ok(_) => ServiceState::Ready { url },
            Err(kube::Error::Api(response)) if response.code == 409 => ServiceState::Failed {
                why: format!("Service {namespace}/{name} appeared meanwhile; checked again at the next probe"),
            },
            Err(error) => failed(error),
        },
        Err(error) => failed(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(name: &str) -> Connector {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "connectors.alauda.io/v1alpha1",
            "kind": "Connector",
            "metadata": {"name": name, "namespace": "team", "uid": "u-1"},
            "spec": {"connectorClassName": "harbor", "address": "https://harbor.example.com"},
        }))
        .unwrap()
    }

    fn settings() -> ServiceSettings {
        ServiceSettings {
            proxy_host: "connectors-proxy.connectors-system.svc.cluster.local".into(),
            cluster_domain: "cluster.local".into(),
        }
    }

    #[test]
    fn each_connector_gets_an_external_name_for_the_proxy_owned_by_it() {
        let service = desired(&connector("harbor-connector"), &settings()).unwrap();
        assert_eq!(service.name_any(), "c-harbor-connector");
        assert_eq!(service.namespace().as_deref(), Some("team"));
        let spec = service.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ExternalName"));
        assert_eq!(
            spec.external_name.as_deref(),
            Some("connectors-proxy.connectors-system.svc.cluster.local")
        );
        assert_eq!(spec.ports.as_ref().unwrap()[0].port, 80);
        let owner = &service.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Connector", "harbor-connector", "u-1")
        );
        assert_eq!(owner.api_version, "connectors.alauda.io/v1alpha1");
        assert!(owned_by(&service, "u-1") && !owned_by(&service, "u-2"));
        assert_eq!(
            service_host("c-harbor-connector", "team", "cluster.local."),
            "c-harbor-connector.team.svc.cluster.local"
        );
    }

    #[test]
    fn names_no_service_can_have_are_said_so() {
        assert_eq!(service_name("a.b"), Err("c-a.b".to_owned()));
        let long = "x".repeat(62);
        assert!(service_name(&long).is_err());
        assert_eq!(service_name(&"x".repeat(61)), Ok(format!("c-{}", "x".repeat(61))));
        assert!(matches!(
            desired(&connector("dotted.name"), &settings()),
            Err(ServiceState::Unnamable { .. })
        ));
    }
}
