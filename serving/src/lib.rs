//! Accepting and serving HTTP connections with limits, shared by every
//! listener of the product (the proxy's two doors, the webhook, the
//! controller's and the proxy's health and metrics):
//!
//! - [`listener`]: the accept loop with a connection cap and graceful
//!   drain, and the [`ServerLimits`] every listener is configured with;
//! - [`opening`]: the deadline a connection must meet to say what it is
//!   (hyper has none before it knows the protocol);
//! - [`http`]: hyper's HTTP/1.1 + h2 builder with those limits, the TLS
//!   handshake deadline, and [`http::serve`] for listeners whose requests
//!   need nothing of their connection;
//! - [`metrics`]: the text exposition of a metrics registry.
//!
//! It knows nothing of registries or Kubernetes and depends on no other
//! crate of the workspace.

pub mod http;
pub mod listener;
pub mod metrics;
pub mod opening;

pub use listener::{PeerAddr, ServerLimits, Stopping, accept_and_drain};
pub use opening::OpeningDeadline;
