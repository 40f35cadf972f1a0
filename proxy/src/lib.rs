//! The credential-injecting registry proxy: two front doors over one
//! request pipeline.
//!
//! - [`reverse`] (served by [`server`]): `/v2/namespaces/<ns>/connectors/<name>/...`.
//! - [`forward`]: `HTTP_PROXY`/`HTTPS_PROXY`, CONNECT with TLS interception
//!   of connector hosts, blind [`tunnel`]s for allow-listed hosts.
//! - [`node_pull`]: the node pull endpoint, a loopback relay on each node
//!   that container runtimes pull rewritten images from.
//! - [`pipeline`]: connector resolution and the relay to the registry with
//!   the connector's credential; [`headers`] is its header policy, [`route`]
//!   its URL mapping.
//! - [`error`]: every failure as one type, answered in one place.
//! - [`process`] assembles a proxy process from its settings; both doors
//!   accept and drain through `serving`.
//!
//! The registry protocol as a client lives in `registry`, caller identity
//! and authorization in `access`. It must not depend on `webhook`, `csi` or
//! `controller`.

pub mod error;
pub mod forward;
pub mod headers;
pub mod metrics;
pub mod node_pull;
pub mod pipeline;
pub mod process;
pub mod reverse;
pub mod route;
pub mod server;
pub mod tunnel;

pub use error::{Dialect, ProxyError};
pub use pipeline::{Mode, Pipeline, UpstreamOptions};
pub use process::{ClusterSettings, Proxy, StandaloneSettings, StartError};
