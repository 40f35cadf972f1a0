//! The connectors domain: the `Connector` resource, image references, which
//! connectors a pod selects, and the stores that hold connectors in memory.
//!
//! Nothing here serves traffic; the webhook and proxy crates build on it.

pub mod address;
pub mod crd;
pub mod keys;
pub mod reference;
pub mod selection;
pub mod store;
pub mod yaml;

pub use crd::{Connector, ConnectorSpec, ConnectorStatus};
pub use selection::ConnectorKey;
