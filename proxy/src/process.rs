//! A proxy process assembled from its settings: where connectors and
//! callers come from (a store file and a static token file in standalone
//! mode; the API server in cluster mode), the [`Pipeline`] over them, and
//! the listeners of both front doors. The binary only parses flags into
//! these settings.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use access::Access;
use access::caller::{Authenticator, Authorizer, CallerError, SameNamespace, StaticTokens};
use access::cluster::{AccessCheck, SubjectAccessReviews, TokenReviewOptions, TokenReviews};
use access::peers::PodIdentities;
use connector::store::{ConnectorStore, FileStore, KubeSecretStore, KubeStore};
use tokio::net::TcpListener;

use crate::forward::{self, ForwardOptions, ForwardProxy};
use crate::pipeline::{Pipeline, UpstreamOptions};
use crate::server::{self, Readiness, Role};
use serving::ServerLimits;

/// Why a proxy process cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("failed to load the store {}: {source}", path.display())]
    Store {
        path: PathBuf,
        #[source]
        source: Box<connector::store::file::Error>,
    },
    #[error("failed to load the token file: {0}")]
    Tokens(#[source] CallerError),
    #[error("no --store given and no Kubernetes configuration found: {0}")]
    Kubernetes(#[source] kube::Error),
}

/// Standalone mode: connectors from a store file, callers from a static
/// token file (a ServiceAccount may use its namespace's connectors).
#[derive(Debug, Clone)]
pub struct StandaloneSettings {
    /// YAML with the Namespaces, Secrets and Connectors; reloaded when it
    /// changes.
    pub store: PathBuf,
    /// kube-apiserver's static token file format (`token,user,uid,"groups"`).
    pub token_auth_file: PathBuf,
}

/// Cluster mode's identity and authorization settings.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// What SubjectAccessReview checks.
    pub authorization: AccessCheck,
    /// How long an authorization decision is reused.
    pub authorization_cache: Duration,
    /// The audience callers' ServiceAccount tokens must carry.
    pub token_audience: String,
    /// The longest a valid token's review is reused.
    pub token_cache: Duration,
    /// How long a node's pull waits for its pod to reach the cache.
    pub node_pull_wait: Duration,
    /// Accept callers without a token by source address.
    pub peer_identities: bool,
    /// Take a request from a node's address as that node (see
    /// [`Access::with_node_identities_by_address`] for who else sends from
    /// it). Off unless the admin turns it on.
    pub node_identity_by_address: bool,
    /// The node pull endpoint's user name
    /// (`system:serviceaccount:<ns>:<name>`), see [`Access::with_node_puller`].
    pub node_puller: Option<String>,
    /// The most TokenReviews, and SubjectAccessReviews, sent per second.
    pub reviews_per_second: u32,
}

/// The running parts of a proxy process.
pub struct Proxy {
    pub pipeline: Arc<Pipeline>,
    /// The caches hold a complete view.
    pub ready: Readiness,
    /// Standalone mode's store (the webhook of `connectors up` shares it).
    pub store: Option<Arc<FileStore>>,
}

impl Proxy {
    /// Standalone mode; the store file is watched for changes.
    pub fn standalone(settings: &StandaloneSettings, options: UpstreamOptions) -> Result<Self, StartError> {
        let store = Arc::new(FileStore::load(&settings.store).map_err(|source| StartError::Store {
            path: settings.store.clone(),
            source: Box::new(source),
        })?);
        store.spawn_watch(Duration::from_secs(2));
        let tokens = StaticTokens::load(&settings.token_auth_file).map_err(StartError::Tokens)?;
        let access = Access::new(Arc::new(tokens), Arc::new(SameNamespace));
        let pipeline = Pipeline::new(store.clone(), store.clone(), access, options);
        Ok(Self {
            pipeline: Arc::new(pipeline),
            ready: Arc::new(|| true),
            store: Some(store),
        })
    }

    /// Cluster mode: connectors, their Secrets, namespaces, injected pods
    /// and nodes watched through the API server; callers proven by
    /// TokenReview, by the source address of an injected pod, or as a node
    /// pulling for its pods; access decided by SubjectAccessReview.
    pub async fn cluster(settings: &ClusterSettings, options: UpstreamOptions) -> Result<Self, StartError> {
        let client = kube::Client::try_default().await.map_err(StartError::Kubernetes)?;
        let store = KubeStore::spawn(client.clone());
        let secrets = Arc::new(KubeSecretStore::spawn(client.clone(), &store));
        let store = Arc::new(store);
        let authenticator: Arc<dyn Authenticator> = Arc::new(TokenReviews::new(
            client.clone(),
            TokenReviewOptions {
                audience: settings.token_audience.clone(),
                max_ttl: settings.token_cache,
                reviews_per_second: settings.reviews_per_second,
                ..TokenReviewOptions::default()
            },
        ));
        let authorizer: Arc<dyn Authorizer> = Arc::new(
            SubjectAccessReviews::new(client.clone(), settings.authorization, settings.authorization_cache)
                .with_reviews_per_second(settings.reviews_per_second),
        );
        let mut access = Access::new(authenticator, authorizer).with_node_puller(settings.node_puller.clone());
        let synced = store.clone();
        let ready: Readiness = if settings.peer_identities {
            let peers = PodIdentities::spawn(client, settings.node_pull_wait);
            access = access
                .with_peer_identities(Arc::new(peers.clone()))
                .with_node_identities_by_address(settings.node_identity_by_address);
            Arc::new(move || synced.has_synced() && peers.has_synced())
        } else {
            Arc::new(move || synced.has_synced())
        };
        tracing::info!(authorization = ?settings.authorization, peer_identities = settings.peer_identities, "cluster mode");
        let pipeline = Pipeline::new(store, secrets, access, options);
        Ok(Self {
            pipeline: Arc::new(pipeline),
            ready,
            store: None,
        })
    }

    /// Serves reverse mode on `listener` (over TLS when `tls` is given)
    /// until `shutdown` resolves, then drains.
    pub async fn serve_reverse(
        &self,
        listener: TcpListener,
        limits: ServerLimits,
        tls: Option<Arc<rustls::ServerConfig>>,
        role: Role,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        server::serve(
            listener,
            self.pipeline.clone(),
            self.ready.clone(),
            limits,
            tls,
            role,
            shutdown,
        )
        .await
    }

    /// Serves forward mode on `listener`, intercepting with leaves from
    /// `leaves`, until `shutdown` resolves, then drains.
    pub async fn serve_forward(
        &self,
        listener: TcpListener,
        leaves: Arc<certs::LeafIssuer>,
        options: ForwardOptions,
        limits: ServerLimits,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let forward = Arc::new(ForwardProxy::new(self.pipeline.clone(), leaves, options));
        forward::serve(listener, forward, limits, shutdown).await
    }
}
