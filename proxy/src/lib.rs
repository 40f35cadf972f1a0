//! The credential-injecting registry proxy. Reverse mode serves
//! `/v2/namespaces/<ns>/connectors/<name>/<repository>/...` and relays it to
//! the connector's registry with the connector's credential; the caller
//! proves who it is with its own token and never sees the credential.

pub mod caller;
pub mod challenge;
pub mod cluster;
pub mod credential;
pub mod forward;
pub mod metrics;
pub mod realm;
pub mod resolve;
pub mod reverse;
pub mod route;
pub mod server;
pub mod splice;
pub mod token;
pub mod upstream;
