//! The connectors domain: the `Connector` and `ConnectorClass` resources, image references, which
//! connectors a pod selects, the stores that hold connectors in memory, and
//! the injection contract (what a selected pod gets).
//!
//! Nothing here serves traffic, and it depends on no other workspace crate:
//! every other crate builds on it.

pub mod address;
pub mod class;
pub mod crd;
pub mod injection;
pub mod keys;
pub mod reference;
pub mod selection;
pub mod store;
pub mod yaml;

pub use class::ConnectorClass;
pub use crd::{Connector, ConnectorKey, ConnectorSpec, ConnectorStatus};
