//! An in-process harness: the proxy's reverse listener over a [`Pipeline`]
//! built from a store and a token file's text, on `127.0.0.1:0`, in this
//! test's runtime. Pipeline scenarios run without the release binary.

use std::net::SocketAddr;
use std::sync::Arc;

use access::Access;
use access::caller::{SameNamespace, StaticTokens};
use connector::store::FileStore;
use proxy::listener::ServerLimits;
use proxy::{Pipeline, UpstreamOptions};
use registry::egress::EgressPolicy;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running in-process proxy; stopped (and drained) on [`Self::stop`] or
/// aborted on drop.
pub struct InProcessProxy {
    pub addr: SocketAddr,
    pub pipeline: Arc<Pipeline>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<std::io::Result<()>>,
}

impl InProcessProxy {
    /// Standalone mode: connectors from `store` (store YAML), callers from
    /// `tokens` (static token file lines); a ServiceAccount may use its own
    /// namespace's connectors.
    pub async fn standalone(store: &str, tokens: &str) -> Self {
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
        let (stop, stopped) = oneshot::channel();
        let server = tokio::spawn(proxy::server::serve(
            listener,
            pipeline.clone(),
            Arc::new(|| true),
            ServerLimits::default(),
            None,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            pipeline,
            stop: Some(stop),
            server,
        }
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting and waits for the drain.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
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
    }
}
