//! An in-process harness: the proxy's reverse listener over a [`Pipeline`]
//! built from a store and a token file's text, on `127.0.0.1:0`, in this
//! test's runtime. Pipeline scenarios run without the release binary.

// NB: each test file uses part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use access::Access;
use access::caller::{SameNamespace, StaticTokens};
use connector::store::FileStore;
use proxy::forward::{ForwardOptions, ForwardProxy};
use proxy::server::Role;
use proxy::{Pipeline, UpstreamOptions};
use registry::egress::EgressPolicy;
use serving::ServerLimits;
use tokio::task::JoinHandle;

/// A running in-process proxy; stopped (and drained) on [`Self::stop`] or
/// aborted on drop.
pub struct InProcessProxy {
    pub addr: SocketAddr,
    /// Forward mode's address, intercepting with a CA made for the test.
    pub forward: SocketAddr,
    pub pipeline: Arc<Pipeline>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    server: JoinHandle<std::io::Result<()>>,
    forward_server: JoinHandle<std::io::Result<()>>,
    metrics_server: Option<JoinHandle<std::io::Result<()>>>,
}

impl InProcessProxy {
    /// Standalone mode: connectors from `store` (store YAML), callers from
    /// `tokens` (static token file lines); a ServiceAccount may use its own
    /// namespace's connectors.
    pub async fn standalone(store: &str, tokens: &str) -> Self {
        Self::with_limits(store, tokens, ServerLimits::default()).await
    }

    /// As [`Self::standalone`], with the listeners' `limits`.
    pub async fn with_limits(store: &str, tokens: &str, limits: ServerLimits) -> Self {
        Self::start(store, tokens, limits, None).await
    }

    /// As [`Self::standalone`], with `/metrics` served on `metrics` only.
    pub async fn with_metrics_listener(store: &str, tokens: &str, metrics: tokio::net::TcpListener) -> Self {
        Self::start(store, tokens, ServerLimits::default(), Some(metrics)).await
    }

    async fn start(store: &str, tokens: &str, limits: ServerLimits, metrics: Option<tokio::net::TcpListener>) -> Self {
        let store = Arc::new(FileStore::from_yaml(store).expect("the store parses"));
        let tokens = StaticTokens::parse(tokens).expect("the token file parses");
        let access = Access::new(Arc::new(tokens), Arc::new(SameNamespace));
        // NB: the tests' registries listen on loopback.
        let options = UpstreamOptions {
            egress: EgressPolicy::new(["127.0.0.0/8".parse().expect("a network")]),
            ..UpstreamOptions::default()
        };
        let pipeline = Arc::new(Pipeline::new(store.clone(), store, access, options));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let until = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let server = tokio::spawn(proxy::server::serve(
            listener,
            pipeline.clone(),
            Arc::new(|| true),
            limits.clone(),
            None,
            Role::Registry {
                metrics: metrics.is_none(),
            },
            until(stopped.clone()),
        ));
        let metrics_server = metrics.map(|listener| {
            tokio::spawn(proxy::server::serve(
                listener,
                pipeline.clone(),
                Arc::new(|| true),
                limits.clone(),
                None,
                Role::Metrics,
                until(stopped.clone()),
            ))
        });
        let ca = certs::CertificateAuthority::generate("in-process proxy CA", std::time::Duration::from_secs(3600))
            .expect("a CA");
        let leaves = Arc::new(certs::LeafIssuer::new(Arc::new(ca)));
        let forward_proxy = Arc::new(ForwardProxy::new(pipeline.clone(), leaves, ForwardOptions::default()));
        let forward_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let forward = forward_listener.local_addr().expect("a bound address");
        let forward_server = tokio::spawn(proxy::forward::serve(
            forward_listener,
            forward_proxy,
            limits,
            until(stopped),
        ));
        Self {
            addr,
            forward,
            pipeline,
            stop: Some(stop),
            server,
            forward_server,
            metrics_server,
        }
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting and waits for the drain.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        let forward = &mut self.forward_server;
        forward
            .await
            .expect("the forward task ends")
            .expect("the forward server ends cleanly");
        let server = &mut self.server;
        server
            .await
            .expect("the server task ends")
            .expect("the server ends cleanly");
    }
}

impl Drop for InProcessProxy {
    fn drop(&mut self) {
        self.server.abort();
        self.forward_server.abort();
        if let Some(metrics) = &self.metrics_server {
            metrics.abort();
        }
    }
}
