//! The caller decision every credential-injecting request passes, in both
//! proxy modes: who is asking ([`Access::identify`]) and whether they may
//! use this connector ([`Access::authorize`], [`Access::authorize_node`]).
//!
//! Identity, in order: the token the request carries (a token that fails is
//! never overridden by the address); otherwise, in cluster mode, the
//! injected pod at the source address, then the node at it. Refusals are
//! typed so that each front door answers them in its own dialect (401 with
//! a challenge in reverse mode, 407 in forward mode).

use std::net::IpAddr;
use std::sync::Arc;

use connector::ConnectorKey;

use crate::caller::{Authenticator, Authorizer, CallerError, Decision, Identity, PeerIdentities};

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A caller that sent a token.
    Token(Identity),
    /// An injected pod, by its source address.
    Pod(Identity),
    /// A node (kubelet pulling for its pods), by its source address.
    Node(String),
}

impl Caller {
    /// The name logs give the caller.
    pub fn username(&self) -> String {
        match self {
            Self::Token(identity) | Self::Pod(identity) => identity.username.clone(),
            Self::Node(node) => format!("system:node:{node}"),
        }
    }
}

/// Why a caller was turned away. Messages never hold a token.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Nothing identifies the caller.
    #[error(
        "authentication required: send a ServiceAccount token as the password (to the forward proxy, with the connector list as the username)"
    )]
    Anonymous,
    /// The credential header is there but holds no token.
    #[error("the credential header carries no usable token")]
    Unreadable,
    /// The token is unknown, expired or for another audience.
    #[error("the token is not valid")]
    InvalidToken,
    /// The identity service could not answer.
    #[error("cannot authenticate the caller now: {0}")]
    AuthenticationUnavailable(#[source] CallerError),
    /// The identity may not use the connector.
    #[error("{username} may not use connector {connector}")]
    Denied { username: String, connector: String },
    /// The authorization service could not answer.
    #[error("cannot authorize the caller now: {0}")]
    AuthorizationUnavailable(#[source] CallerError),
    /// The node pull endpoint's token is bound to no node.
    #[error("{username} pulls for a node, but its token is bound to no node (use the pod's projected token)")]
    UnboundNodePuller { username: String },
    /// A node asked for something the node rule does not allow.
    #[error("node {node}: {why}")]
    NodeDenied { node: String, why: String },
}

impl Refusal {
    /// The caller must (re)authenticate: answer with a challenge.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, Self::Anonymous | Self::Unreadable | Self::InvalidToken)
    }

    /// Nobody decided: the identity or authorization service is down.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::AuthenticationUnavailable(_) | Self::AuthorizationUnavailable(_)
        )
    }
}

/// The identities and the authorizer of a process.
#[derive(Clone)]
pub struct Access {
    authenticator: Arc<dyn Authenticator>,
    authorizer: Arc<dyn Authorizer>,
    peers: Option<Arc<dyn PeerIdentities>>,
    nodes_by_address: bool,
    node_puller: Option<String>,
}

impl Access {
    pub fn new(authenticator: Arc<dyn Authenticator>, authorizer: Arc<dyn Authorizer>) -> Self {
        Self {
            authenticator,
            authorizer,
            peers: None,
            nodes_by_address: false,
            node_puller: None,
        }
    }

    /// Takes a token of `username` (the node pull endpoint's ServiceAccount)
    /// as the node its pod-bound token names: the endpoint on each node
    /// relays kubelet's pulls with its own token, and the API server, not
    /// the endpoint, says which node that is.
    pub fn with_node_puller(mut self, username: Option<String>) -> Self {
        self.node_puller = username.filter(|u| !u.is_empty());
        self
    }

    /// Also takes a request from a node's address as that node (off by
    /// default). NB: more than kubelet sends from a node's address:
    /// hostNetwork pods of every namespace, every process on the node, and
    /// pods whose traffic is masqueraded to the node's address on its way
    /// to the proxy (SNAT by some CNIs and kube-proxy modes).
    pub fn with_node_identities_by_address(mut self, enabled: bool) -> Self {
        self.nodes_by_address = enabled;
        self
    }

    /// Also accepts callers without a token by their source address: pods
    /// the webhook injected, and nodes pulling for their pods (cluster mode).
    pub fn with_peer_identities(mut self, peers: Arc<dyn PeerIdentities>) -> Self {
        self.peers = Some(peers);
        self
    }

    /// Who is asking: `token` is what the request's credential header
    /// carried (`Some(None)` for a header without a usable token), `peer`
    /// the source address.
    pub async fn identify(&self, token: Option<Option<&str>>, peer: Option<IpAddr>) -> Result<Caller, Refusal> {
        match token {
            Some(Some(token)) => {
                let identity = self.authenticate(token).await?;
                if self.node_puller.as_ref() == Some(&identity.username) {
                    return match identity.node {
                        Some(node) => Ok(Caller::Node(node)),
                        None => Err(Refusal::UnboundNodePuller {
                            username: identity.username,
                        }),
                    };
                }
                return Ok(Caller::Token(identity));
            }
            Some(None) => return Err(Refusal::Unreadable),
            None => {}
        }
        if let (Some(peers), Some(ip)) = (&self.peers, peer) {
            let ip = ip.to_canonical();
            if let Some(identity) = peers.pod(ip) {
                return Ok(Caller::Pod(identity));
            }
            if self.nodes_by_address
                && let Some(node) = peers.node(ip)
            {
                return Ok(Caller::Node(node));
            }
        }
        Err(Refusal::Anonymous)
    }

    /// The injected pod at `peer`, if any (forward mode's only address
    /// identity: nodes never use the forward proxy).
    pub fn pod_at(&self, peer: IpAddr) -> Option<Identity> {
        self.peers.as_ref()?.pod(peer.to_canonical())
    }

    /// As [`pod_at`](Self::pod_at) for a caller's first request: waits
    /// briefly for an address the informer has not seen yet.
    pub async fn pod_soon_at(&self, peer: IpAddr) -> Option<Identity> {
        self.peers.as_ref()?.pod_soon(peer.to_canonical()).await
    }

    /// The identity a token proves.
    pub async fn authenticate(&self, token: &str) -> Result<Identity, Refusal> {
        match self.authenticator.authenticate(token).await {
            Ok(Some(identity)) => Ok(identity),
            Ok(None) => Err(Refusal::InvalidToken),
            Err(error) => Err(Refusal::AuthenticationUnavailable(error)),
        }
    }

    /// Whether `identity` may use connector `key`.
    pub async fn authorize(&self, identity: &Identity, key: &ConnectorKey) -> Result<(), Refusal> {
        match self.authorizer.authorize(identity, key).await {
            Ok(Decision::Allow) => Ok(()),
            Ok(Decision::Deny) => Err(Refusal::Denied {
                username: identity.username.clone(),
                connector: key.to_string(),
            }),
            Err(error) => Err(Refusal::AuthorizationUnavailable(error)),
        }
    }

    /// Whether `caller` may use connector `key` for `repository`; `pull`
    /// says whether the request only reads a manifest or a blob.
    pub async fn authorize_caller(
        &self,
        caller: &Caller,
        key: &ConnectorKey,
        repository: &str,
        pull: bool,
    ) -> Result<(), Refusal> {
        match caller {
            Caller::Token(identity) | Caller::Pod(identity) => self.authorize(identity, key).await,
            Caller::Node(node) => self.authorize_node(node, key, repository, pull).await,
        }
    }

    /// The node rule: a node may read a connector's repository only while
    /// a pod bound to it references that repository and the pod's
    /// ServiceAccount may use the connector.
    pub(crate) async fn authorize_node(
        &self,
        node: &str,
        key: &ConnectorKey,
        repository: &str,
        pull: bool,
    ) -> Result<(), Refusal> {
        let denied = |why: String| Refusal::NodeDenied {
            node: node.to_owned(),
            why,
        };
        if !pull {
            return Err(denied("nodes may only pull manifests and blobs".to_owned()));
        }
        let Some(peers) = &self.peers else {
            return Err(denied("node pulls are not enabled".to_owned()));
        };
        let pods = peers.pods_pulling(node, key, repository).await;
        for identity in &pods {
            if self.authorize(identity, key).await.is_ok() {
                return Ok(());
            }
        }
        Err(denied(if pods.is_empty() {
            format!("no pod bound to the node references {key}/{repository}")
        } else {
            format!("no pod referencing {key}/{repository} on the node may use the connector")
        }))
    }
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;

    use super::*;
    use crate::caller::{Authenticator, BoxFuture, SameNamespace, StaticTokens};

    struct Peers;

    impl PeerIdentities for Peers {
        fn pod(&self, ip: IpAddr) -> Option<Identity> {
            (ip == IpAddr::from([10, 0, 0, 1])).then(|| Identity::of_service_account("lab", "job"))
        }

        fn node(&self, ip: IpAddr) -> Option<String> {
            (ip == IpAddr::from([10, 1, 0, 1])).then(|| "node-a".to_owned())
        }

        fn pods_pulling<'a>(
            &'a self,
            node: &'a str,
            _key: &'a ConnectorKey,
            repository: &'a str,
        ) -> BoxFuture<'a, Vec<Identity>> {
            let found = node == "node-a" && repository == "app";
            Box::pin(async move {
                if found {
                    vec![Identity::of_service_account("lab", "job")]
                } else {
                    Vec::new()
                }
            })
        }
    }

    fn access() -> Access {
        let tokens = StaticTokens::parse("secret-token,system:serviceaccount:lab:builder,uid-1\n").unwrap();
        Access::new(Arc::new(tokens), Arc::new(SameNamespace))
            .with_peer_identities(Arc::new(Peers))
            .with_node_identities_by_address(true)
    }

    #[test]
    fn a_node_address_identifies_nobody_unless_the_admin_turns_it_on() {
        let tokens = StaticTokens::parse("").unwrap();
        let default = Access::new(Arc::new(tokens), Arc::new(SameNamespace)).with_peer_identities(Arc::new(Peers));
        let node_ip = Some(IpAddr::from([10, 1, 0, 1]));
        let refused = block_on(default.identify(None, node_ip)).unwrap_err();
        assert!(matches!(refused, Refusal::Anonymous), "{refused}");
        let pod = block_on(default.identify(None, Some(IpAddr::from([10, 0, 0, 1])))).unwrap();
        assert!(matches!(pod, Caller::Pod(_)), "pod addresses still identify");
    }

    #[test]
    fn a_token_decides_before_the_source_address() {
        let access = access();
        let pod_ip = Some(IpAddr::from([10, 0, 0, 1]));
        let by_token = block_on(access.identify(Some(Some("secret-token")), pod_ip)).unwrap();
        assert_eq!(by_token.username(), "system:serviceaccount:lab:builder");
        let bad = block_on(access.identify(Some(Some("wrong")), pod_ip)).unwrap_err();
        assert!(matches!(bad, Refusal::InvalidToken), "{bad}");
        let unreadable = block_on(access.identify(Some(None), pod_ip)).unwrap_err();
        assert!(unreadable.is_unauthenticated());
        let by_address = block_on(access.identify(None, pod_ip)).unwrap();
        assert_eq!(by_address, Caller::Pod(Identity::of_service_account("lab", "job")));
        let node = block_on(access.identify(None, Some(IpAddr::from([10, 1, 0, 1])))).unwrap();
        assert_eq!(node.username(), "system:node:node-a");
        let nobody = block_on(access.identify(None, Some(IpAddr::from([10, 9, 9, 9])))).unwrap_err();
        assert!(matches!(nobody, Refusal::Anonymous));
    }

    #[test]
    fn nodes_pull_only_what_their_pods_reference_and_may_use() {
        let access = access();
        let node = Caller::Node("node-a".into());
        let lab = ConnectorKey::new("lab", "harbor");
        assert!(block_on(access.authorize_caller(&node, &lab, "app", true)).is_ok());
        let push = block_on(access.authorize_caller(&node, &lab, "app", false)).unwrap_err();
        assert!(push.to_string().contains("may only pull"), "{push}");
        let other_repo = block_on(access.authorize_caller(&node, &lab, "other", true)).unwrap_err();
        assert!(other_repo.to_string().contains("no pod bound"), "{other_repo}");
        let other_ns = ConnectorKey::new("prod", "harbor");
        let denied = block_on(access.authorize_caller(&node, &other_ns, "app", true)).unwrap_err();
        assert!(denied.to_string().contains("may use the connector"), "{denied}");
    }

    /// Tokens as TokenReview answers for pod-bound tokens: the node puller's
    /// bound to node-a, and one of it bound to no pod.
    struct BoundTokens;

    impl Authenticator for BoundTokens {
        fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, crate::caller::Result<Option<Identity>>> {
            let puller = |node: Option<&str>| Identity {
                node: node.map(str::to_owned),
                ..Identity::of_service_account("connectors-csi", "connectors-node-pull")
            };
            let identity = match token {
                "bound" => Some(puller(Some("node-a"))),
                "unbound" => Some(puller(None)),
                "job" => Some(Identity {
                    node: Some("node-a".into()),
                    ..Identity::of_service_account("lab", "job")
                }),
                _ => None,
            };
            Box::pin(std::future::ready(Ok(identity)))
        }
    }

    #[test]
    fn the_node_pull_endpoints_token_is_the_node_its_pod_runs_on_and_nothing_more() {
        let access = Access::new(Arc::new(BoundTokens), Arc::new(SameNamespace))
            .with_peer_identities(Arc::new(Peers))
            .with_node_puller(Some("system:serviceaccount:connectors-csi:connectors-node-pull".into()));
        let node = block_on(access.identify(Some(Some("bound")), None)).unwrap();
        assert_eq!(node, Caller::Node("node-a".into()));
        let lab = ConnectorKey::new("lab", "harbor");
        assert!(block_on(access.authorize_caller(&node, &lab, "app", true)).is_ok());
        let other = block_on(access.authorize_caller(&node, &lab, "other", true)).unwrap_err();
        assert!(other.to_string().contains("no pod bound"), "{other}");
        let push = block_on(access.authorize_caller(&node, &lab, "app", false)).unwrap_err();
        assert!(push.to_string().contains("may only pull"), "{push}");
        let unbound = block_on(access.identify(Some(Some("unbound")), None)).unwrap_err();
        assert!(matches!(unbound, Refusal::UnboundNodePuller { .. }), "{unbound}");
        assert!(!unbound.is_unauthenticated() && !unbound.is_unavailable());
        // Any other pod's token stays that pod's ServiceAccount, whatever
        // node it is bound to.
        let job = block_on(access.identify(Some(Some("job")), None)).unwrap();
        assert!(matches!(job, Caller::Token(ref identity) if identity.username == "system:serviceaccount:lab:job"));
        // Without the setting, the puller's token is an ordinary identity.
        let off = Access::new(Arc::new(BoundTokens), Arc::new(SameNamespace)).with_node_puller(Some(String::new()));
        let plain = block_on(off.identify(Some(Some("bound")), None)).unwrap();
        assert!(matches!(plain, Caller::Token(_)), "{plain:?}");
    }

    #[test]
    fn service_accounts_are_authorized_per_connector() {
        let access = access();
        let builder = Identity::of_service_account("lab", "builder");
        assert!(block_on(access.authorize(&builder, &ConnectorKey::new("lab", "harbor"))).is_ok());
        let denied = block_on(access.authorize(&builder, &ConnectorKey::new("prod", "harbor"))).unwrap_err();
        assert_eq!(
            denied.to_string(),
            "system:serviceaccount:lab:builder may not use connector prod/harbor"
        );
    }
}
