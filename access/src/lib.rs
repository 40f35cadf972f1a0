//! Who the caller is and what it may do with a connector: identities
//! ([`caller`]: static tokens and the traits; [`cluster`]: TokenReview and
//! SubjectAccessReview; [`peers`]: pod and node source addresses) and the decision
//! every credential-injecting request passes ([`decision`]); and kubelet's
//! credential provider protocol ([`credential_provider`]), which hands a
//! node pull the pod's own token. Used by the proxy and the CSI plugin.
//!
//! It must not depend on `proxy`, `webhook`, `csi`, `controller` or
//! `registry`: deciding who may use a connector needs no registry.

pub mod caller;
pub mod cluster;
pub mod credential_provider;
pub mod decision;
pub mod peers;

pub use caller::{Authenticator, Authorizer, CallerError, Decision, Identity, PeerIdentities};
pub use decision::{Access, Caller, Refusal};
