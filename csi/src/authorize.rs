//! Which connectors a volume may carry: each one named must exist and the
//! pod's ServiceAccount must be allowed to use it.
//!
//! The decision is the proxy's [`Authorizer`]: standalone mode allows a
//! ServiceAccount its own namespace's connectors ([`SameNamespace`]), and the
//! in-cluster SubjectAccessReview authorizer slots in unchanged. Deciding
//! before looking the connector up means a pod cannot probe which connectors
//! exist in namespaces it may not use.
//!
//! [`SameNamespace`]: access::caller::SameNamespace

use access::caller::{Authorizer, CallerError, Decision, Identity};
use connector::ConnectorKey;
use connector::store::ConnectorLookup;

use crate::request::PodInfo;
use connector::store::ResolvedConnector;

/// Why a connector cannot go into the volume.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(
        "service account {namespace}/{service_account} may not use connector {connector}: bind it to the ClusterRole connectors-user where the connector is (kubectl -n {connector_namespace} create rolebinding {service_account}-uses-connectors --clusterrole=connectors-user --serviceaccount={namespace}:{service_account})",
        connector_namespace = connector.namespace
    )]
    Denied {
        namespace: String,
        service_account: String,
        connector: ConnectorKey,
    },
    #[error("connector {0} does not exist")]
    NotFound(ConnectorKey),
    #[error("connector {0} could not be read from the Kubernetes API in time")]
    Unreadable(ConnectorKey),
    #[error("connector {connector} has an unusable address: {source}")]
    Address {
        connector: ConnectorKey,
        #[source]
        source: connector::address::AddressError,
    },
    #[error("could not decide whether the pod may use connector {connector}: {source}")]
    Undecided {
        connector: ConnectorKey,
        #[source]
        source: CallerError,
    },
}

pub type Result<T, E = AccessError> = std::result::Result<T, E>;

/// The identity Kubernetes gives the pod's ServiceAccount, as a
/// SubjectAccessReview would name it.
pub(crate) fn service_account_identity(pod: &PodInfo) -> Identity {
    Identity::of_service_account(&pod.namespace, &pod.service_account)
}

/// Checks every connector in order and returns their routes; the first one
/// that is denied or missing fails the whole volume.
pub async fn authorize_connectors(
    store: &dyn ConnectorLookup,
    authorizer: &dyn Authorizer,
    pod: &PodInfo,
    connectors: &[ConnectorKey],
) -> Result<Vec<ResolvedConnector>> {
    let identity = service_account_identity(pod);
    let mut routes = Vec::with_capacity(connectors.len());
    for key in connectors {
        let decision = authorizer
            .authorize(&identity, key)
            .await
            .map_err(|source| AccessError::Undecided {
                connector: key.clone(),
                source,
            })?;
        if decision != Decision::Allow {
            return Err(AccessError::Denied {
                namespace: pod.namespace.clone(),
                service_account: pod.service_account.clone(),
                connector: key.clone(),
            });
        }
        let route = store
            .resolve_for_use(key)
            .await
            .map_err(|_| AccessError::Unreadable(key.clone()))?
            .ok_or_else(|| AccessError::NotFound(key.clone()))?
            .map_err(|source| AccessError::Address {
                connector: key.clone(),
                source,
            })?;
        routes.push(route);
    }
    Ok(routes)
}
