//! Every way a proxied request can fail, as one typed value, and the one
//! place that turns it into an answer: status, body (an OCI error for
//! registry clients, a line of text for a forward-proxy client) and log
//! level. Messages never hold a credential or a token.

use access::Refusal;
use bytes::Bytes;
use connector::ConnectorKey;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use registry::auth::UpstreamError;
use registry::body::{self, ProxyBody};
use registry::challenge;
use registry::egress::EgressError;

use crate::route::RouteError;

/// The realm the proxy names in its own challenges (`WWW-Authenticate` in
/// reverse mode, `Proxy-Authenticate` in forward mode).
pub(crate) const PROXY_REALM: &str = "connectors";

/// The `target` of audit lines (each use of a credential, each refusal),
/// for filtering them out of the log.
pub const AUDIT_TARGET: &str = "connectors::audit";

/// Why a connector cannot be used right now (its object or Secrets).
#[derive(Debug, thiserror::Error)]
pub enum ConnectorFault {
    #[error(transparent)]
    Address(#[from] connector::address::AddressError),
    #[error("{what} secret {namespace}/{name} does not exist")]
    MissingSecret {
        what: &'static str,
        namespace: String,
        name: String,
    },
    #[error("{what} secret {namespace}/{name} could not be read from the Kubernetes API in time")]
    UnreadableSecret {
        what: &'static str,
        namespace: String,
        name: String,
    },
    #[error(transparent)]
    Credential(#[from] registry::credential::CredentialError),
    #[error(transparent)]
    Client(#[from] registry::upstream::ClientError),
}

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The path is not a route of the proxy.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The request is not one this door serves.
    #[error("{0}")]
    BadRequest(&'static str),
    /// The request names no upstream URL the proxy can form.
    #[error("the request does not map to an upstream URL")]
    Unmappable,
    /// The caller was turned away.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The forward proxy's username is not a connector list.
    #[error("the proxy username: {0}")]
    ProxyUsername(#[from] connector::selection::SelectionError),
    /// A forward-proxy target that is neither a connector the caller named
    /// nor an allowed tunnel host. A named connector the caller may not use
    /// is answered the same (`denied` holds why, for the log only).
    #[error("{host}:{port} is not the registry of a connector the caller named, nor an allowed tunnel host")]
    NotAConnectorHost {
        host: String,
        port: u16,
        denied: Option<Box<Refusal>>,
    },
    /// No connector of that name.
    #[error("connector {0} does not exist")]
    UnknownConnector(ConnectorKey),
    /// The connector exists but cannot be used.
    #[error("connector {key}: {fault}")]
    Connector { key: ConnectorKey, fault: ConnectorFault },
    /// The registry, its token service or its storage failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The registry refused the connector's credential for this request.
    #[error("the registry refused connector {0}'s credential for this request")]
    CredentialRefused(ConnectorKey),
    /// A blob redirect failed twice in a row.
    #[error(
        "the registry's blob redirect to {0} was refused (403) again after a fresh redirect; its presigned URLs are not usable"
    )]
    RedirectRefused(String),
    #[error("the registry redirected to an invalid URL")]
    InvalidRedirect,
    /// A plain-HTTP request to a host of no connector could not be relayed.
    #[error("{host}:{port} could not be reached: {reason}")]
    Unrelayable { host: String, port: u16, reason: String },
    #[error("unmappable Location")]
    UnmappableLocation,
    /// A tunnel target did not resolve, or only to addresses the egress
    /// policy refuses.
    #[error(transparent)]
    Egress(#[from] EgressError),
}

/// Whom an answer is for: a registry client (reverse mode, and requests
/// inside an intercepted tunnel) or a forward-proxy client (CONNECT and
/// absolute-form requests themselves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Registry,
    ForwardProxy,
}

/// The kinds of failure, as answers tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Route,
    Invalid,
    UnknownConnector,
    Unauthenticated,
    Unavailable,
    Denied,
    GatewayTimeout,
    BadGateway,
}

/// The `reason` label of `connectors_proxy_refusals_total`: why the proxy
/// turned a request away.
pub const REFUSAL_REASONS: [&str; 7] = [
    "no_route",
    "invalid_request",
    "unknown_connector",
    "unauthenticated",
    "denied",
    "not_a_connector_host",
    "egress_refused",
];

/// The `class` label of `connectors_proxy_upstream_errors_total`: what
/// failed between the proxy and a registry.
pub const UPSTREAM_ERROR_CLASSES: [&str; 12] = [
    "unreachable",
    "timeout",
    "egress_refused",
    "token_service",
    "credential_refused",
    "realm_refused",
    "redirect",
    "connector_unusable",
    "kubernetes_unavailable",
    "status_5xx",
    "rate_limited",
    "invalid_response",
];

/// How a failed request counts: a refusal by the proxy, or a failure
/// upstream (of the registry, or of what the proxy needs to reach it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Refused(&'static str),
    Failed(&'static str),
}

impl ProxyError {
    fn class(&self) -> Class {
        match self {
            Self::Route(_) => Class::Route,
            Self::BadRequest(_) | Self::Unmappable | Self::ProxyUsername(_) => Class::Invalid,
            Self::UnknownConnector(_) => Class::UnknownConnector,
            Self::Refused(refusal) if refusal.is_unauthenticated() => Class::Unauthenticated,
            Self::Refused(refusal) if refusal.is_unavailable() => Class::Unavailable,
            Self::Connector {
                fault: ConnectorFault::UnreadableSecret { .. },
                ..
            } => Class::Unavailable,
            // NB: a credential the registry's token service refuses is
            // answered as one the registry refuses (Basic): 403, not an
            // outage.
            Self::Refused(_)
            | Self::CredentialRefused(_)
            | Self::Upstream(UpstreamError::TokenRefused(_))
            | Self::NotAConnectorHost { .. }
            | Self::Egress(EgressError::Refused(_)) => Class::Denied,
            Self::Upstream(error) if error.is_timeout() => Class::GatewayTimeout,
            Self::Connector { .. }
            | Self::Upstream(_)
            | Self::RedirectRefused(_)
            | Self::InvalidRedirect
            | Self::UnmappableLocation
            | Self::Unrelayable { .. }
            | Self::Egress(_) => Class::BadGateway,
        }
    }

    /// How the failure counts in the metrics; every label is one of
    /// [`REFUSAL_REASONS`] or [`UPSTREAM_ERROR_CLASSES`].
    pub fn outcome(&self) -> Outcome {
        use Outcome::{Failed, Refused};
        match self {
            Self::Route(_) => Refused("no_route"),
            Self::BadRequest(_) | Self::Unmappable | Self::ProxyUsername(_) => Refused("invalid_request"),
            Self::UnknownConnector(_) => Refused("unknown_connector"),
            Self::Refused(refusal) if refusal.is_unauthenticated() => Refused("unauthenticated"),
            Self::Refused(refusal) if refusal.is_unavailable() => Failed("kubernetes_unavailable"),
            Self::Connector {
                fault: ConnectorFault::UnreadableSecret { .. },
                ..
            } => Failed("kubernetes_unavailable"),
            Self::Refused(_) => Refused("denied"),
            Self::NotAConnectorHost { .. } => Refused("not_a_connector_host"),
            Self::Egress(EgressError::Refused(_)) => Refused("egress_refused"),
            Self::Egress(_) | Self::Unrelayable { .. } => Failed("unreachable"),
            Self::CredentialRefused(_) => Failed("credential_refused"),
            Self::Connector { .. } => Failed("connector_unusable"),
            Self::RedirectRefused(_) | Self::InvalidRedirect | Self::UnmappableLocation => Failed("redirect"),
            Self::Upstream(error) => Failed(upstream_class(error)),
        }
    }

    /// The HTTP status of the answer.
    pub fn status(&self, dialect: Dialect) -> StatusCode {
        match self.class() {
            Class::Route | Class::UnknownConnector => StatusCode::NOT_FOUND,
            Class::Invalid => StatusCode::BAD_REQUEST,
            Class::Unauthenticated => match dialect {
                Dialect::Registry => StatusCode::UNAUTHORIZED,
                Dialect::ForwardProxy => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            },
            Class::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Class::Denied => StatusCode::FORBIDDEN,
            Class::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Class::BadGateway => StatusCode::BAD_GATEWAY,
        }
    }

    /// The OCI distribution error code of a registry answer.
    pub fn oci_code(&self) -> &'static str {
        match (self, self.class()) {
            (Self::Route(error), _) => error.oci_code(),
            (_, Class::Route | Class::Invalid) => "NAME_INVALID",
            (_, Class::UnknownConnector) => "NAME_UNKNOWN",
            (_, Class::Unauthenticated) => "UNAUTHORIZED",
            (_, Class::Denied) => "DENIED",
            (_, Class::Unavailable | Class::GatewayTimeout | Class::BadGateway) => "UNAVAILABLE",
        }
    }

    /// Logs the failure at its level: what the operator must look at
    /// (upstream and connector failures) as warnings, and every refusal at
    /// info with its reason, for the audit trail.
    pub fn log(&self, dialect: Dialect, connector: &str) {
        let status = self.status(dialect);
        let server_error = status.is_server_error();
        let status = status.as_u16();
        if server_error {
            tracing::warn!(connector = %connector, status, message = %self, "request failed");
        } else if dialect == Dialect::ForwardProxy {
            let reason = match self {
                Self::NotAConnectorHost {
                    denied: Some(refusal), ..
                } => refusal.to_string(),
                other => other.to_string(),
            };
            tracing::info!(target: AUDIT_TARGET, status, reason, "forward request refused");
        } else {
            tracing::info!(target: AUDIT_TARGET, connector = %connector, status, reason = %self, "request refused");
        }
    }

    /// The answer: an OCI error body for registry clients (a 401 carries
    /// the proxy's own challenge so every client learns to send its token),
    /// a line of text for forward-proxy clients (a 407 carries
    /// `Proxy-Authenticate`).
    pub fn response(&self, dialect: Dialect) -> Response<ProxyBody> {
        let status = self.status(dialect);
        let challenge = challenge::render("Basic", &[("realm", PROXY_REALM)]);
        let mut response = match dialect {
            Dialect::Registry => {
                let body = serde_json::json!({"errors": [{"code": self.oci_code(), "message": self.to_string(), "detail": null}]});
                json_response(status, Bytes::from(body.to_string()))
            }
            Dialect::ForwardProxy => {
                let mut response = Response::new(body::full(format!("{self}\n")));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                response
            }
        };
        *response.status_mut() = status;
        let challenge_header = match status {
            StatusCode::UNAUTHORIZED => Some(header::WWW_AUTHENTICATE),
            StatusCode::PROXY_AUTHENTICATION_REQUIRED => Some(header::PROXY_AUTHENTICATE),
            _ => None,
        };
        if let (Some(name), Ok(value)) = (challenge_header, HeaderValue::from_str(&challenge)) {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// The class of an upstream failure.
fn upstream_class(error: &UpstreamError) -> &'static str {
    if error.is_timeout() {
        return "timeout";
    }
    match error {
        UpstreamError::Unreachable { .. } => "unreachable",
        UpstreamError::Egress(_) => "egress_refused",
        UpstreamError::TokenRefused(_) => "credential_refused",
        UpstreamError::Realm { .. } => "realm_refused",
        UpstreamError::HeaderTimeout { .. } => "timeout",
        UpstreamError::TokenService(_)
        | UpstreamError::TokenServiceFailed(_)
        | UpstreamError::TokenTimeout
        | UpstreamError::TokenUnreadable
        | UpstreamError::Token(_) => "token_service",
        UpstreamError::InvalidUrl(_) => "invalid_response",
        UpstreamError::CredentialHeader => "connector_unusable",
    }
}

/// A JSON answer as a registry gives it.
pub fn json_response(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(
        HeaderName::from_static("docker-distribution-api-version"),
        HeaderValue::from_static("registry/2.0"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_callers_get_the_challenge_of_their_dialect() {
        let error = ProxyError::Refused(Refusal::Anonymous);
        let registry = error.response(Dialect::Registry);
        assert_eq!(registry.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            registry.headers()[header::WWW_AUTHENTICATE],
            r#"Basic realm="connectors""#
        );
        assert_eq!(registry.headers()[header::CONTENT_TYPE], "application/json");
        let forward = error.response(Dialect::ForwardProxy);
        assert_eq!(forward.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
        assert_eq!(
            forward.headers()[header::PROXY_AUTHENTICATE],
            r#"Basic realm="connectors""#
        );
        assert!(!forward.headers().contains_key(header::WWW_AUTHENTICATE));
    }

    #[test]
    fn statuses_and_codes_follow_the_kind_of_failure() {
        let key = ConnectorKey::new("team", "harbor");
        let cases: Vec<(ProxyError, u16, &str)> = vec![
            (RouteError::NotFound.into(), 404, "NAME_UNKNOWN"),
            (ProxyError::UnknownConnector(key.clone()), 404, "NAME_UNKNOWN"),
            (ProxyError::Unmappable, 400, "NAME_INVALID"),
            (
                Refusal::Denied {
                    username: "u".into(),
                    connector: key.to_string(),
                }
                .into(),
                403,
                "DENIED",
            ),
            (ProxyError::CredentialRefused(key.clone()), 403, "DENIED"),
            (
                UpstreamError::HeaderTimeout {
                    host: "h".into(),
                    after: std::time::Duration::from_secs(1),
                }
                .into(),
                504,
                "UNAVAILABLE",
            ),
            (UpstreamError::TokenTimeout.into(), 502, "UNAVAILABLE"),
            (
                UpstreamError::TokenRefused(StatusCode::UNAUTHORIZED).into(),
                403,
                "DENIED",
            ),
            (
                ProxyError::Connector {
                    key,
                    fault: ConnectorFault::MissingSecret {
                        what: "credential",
                        namespace: "team".into(),
                        name: "robot".into(),
                    },
                },
                502,
                "UNAVAILABLE",
            ),
            (
                ProxyError::Connector {
                    key: ConnectorKey::new("team", "harbor"),
                    fault: ConnectorFault::UnreadableSecret {
                        what: "credential",
                        namespace: "team".into(),
                        name: "robot".into(),
                    },
                },
                503,
                "UNAVAILABLE",
            ),
        ];
        for (error, status, code) in cases {
            assert_eq!(error.status(Dialect::Registry).as_u16(), status, "{error}");
            assert_eq!(error.oci_code(), code, "{error}");
        }
    }
}
