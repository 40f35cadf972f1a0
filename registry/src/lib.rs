//! The product as a client of upstream registries: how an upstream asks to
//! be authenticated ([`challenge`]), where the connector's credential may be
//! sent ([`realm`]), the credential itself ([`credential`]), bearer tokens
//! and their cache ([`token`]), the one path that sends a request with the
//! connector's authorization ([`auth`]), the pooled upstream connector
//! ([`upstream`], [`resolve`]) that dials only what the [`egress`] policy
//! allows, and the zero-copy blob relay ([`splice`]).
//!
//! It must not depend on `proxy`, `webhook`, `csi` or `controller`: those
//! are its users.

pub mod auth;
pub mod body;
pub mod challenge;
pub mod credential;
pub mod egress;
pub mod realm;
pub mod resolve;
pub mod splice;
pub mod token;
pub mod upstream;
