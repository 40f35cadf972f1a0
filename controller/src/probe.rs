//! Probes of a connector's registry: is its Secret usable, is the registry
//! alive (`GET /v2/` answers 200 or 401), and does the credential really
//! authenticate (the `/v2/` challenge followed through a token exchange or a
//! Basic retry, plus the request the connector's class names for its auth
//! type, e.g. Harbor's `/api/v2.0/users/current`).
//!
//! NB: results carry reasons and messages for status conditions and events,
//! which anyone who may read the Connector sees: they never hold the
//! password, a Basic header or a token. Upstream bodies are never quoted.

use std::collections::BTreeSet;
use std::time::Duration;

use connector::Connector;
use connector::address::RegistryAddress;
use connector::class::HttpProbe;
use http_body_util::BodyExt;
use hyper::header::{self, HeaderMap};
use hyper::{Method, Request, StatusCode};
use k8s_openapi::api::core::v1::Secret;
use registry::auth::{Upstream, UpstreamError, challenges_of, fetch_token, sensitive};
use registry::body;
use registry::challenge::{self, Scheme};
use registry::credential::{self, UpstreamCredential};
use registry::egress::EgressPolicy;
use registry::resolve::Pins;
use registry::upstream::{UpstreamClient, UpstreamClients};

/// The largest upstream body a probe reads (token answers are small).
const MAX_BODY: usize = 64 * 1024;

/// A condition's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    True,
    False,
    Unknown,
}

impl Verdict {
    /// `True`, `False` or `Unknown`, as conditions spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// The outcome of one check: a verdict, a CamelCase reason and a message
/// without secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub verdict: Verdict,
    pub reason: &'static str,
    pub message: String,
}

impl Check {
    fn new(verdict: Verdict, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            verdict,
            reason,
            message: message.into(),
        }
    }

    fn ok(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Verdict::True, reason, message)
    }

    fn failed(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Verdict::False, reason, message)
    }

    fn unknown(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Verdict::Unknown, reason, message)
    }
}

/// What the three probes found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    pub secret: Check,
    pub liveness: Check,
    pub auth: Check,
}

impl ProbeReport {
    /// Nothing probed, for `why` (every check `Unknown`).
    pub fn not_probed(reason: &'static str, why: &str) -> Self {
        let check = || Check::unknown(reason, why);
        Self {
            secret: check(),
            liveness: check(),
            auth: check(),
        }
    }

    /// True when every check passed.
    pub fn healthy(&self) -> bool {
        [&self.secret, &self.liveness, &self.auth]
            .iter()
            .all(|check| check.verdict == Verdict::True)
    }
}

/// A Secret the connector names, as read from the API server.
#[derive(Debug, Clone)]
pub enum SecretLookup {
    /// The connector names none.
    NotReferenced,
    /// It names this Secret, which does not exist.
    Missing(String),
    Found(Box<Secret>),
}

/// Runs probes with shared upstream clients and one timeout per request.
pub struct Prober {
    clients: UpstreamClients,
    timeout: Duration,
}

/// An upstream answer: status and headers (its bounded body is read and
/// dropped, so the connection can be reused).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
}

impl Prober {
    pub fn new(timeout: Duration, egress: EgressPolicy) -> Self {
        Self {
            clients: UpstreamClients::new(Pins::default(), egress),
            timeout,
        }
    }

    /// Probes `connector` with its credential and CA Secrets.
    /// `auth_probe` is the connector's class's request for its auth type
    /// (Harbor's `/api/v2.0/users/current`), made once `/v2/` accepted the
    /// credential.
    pub async fn probe(
        &self,
        connector: &Connector,
        auth_probe: Option<&HttpProbe>,
        credential: &SecretLookup,
        ca: &SecretLookup,
    ) -> ProbeReport {
        let address = match RegistryAddress::parse(&connector.spec.address) {
            Ok(address) => address,
            Err(error) => {
                let secret = check_secret(credential, ca, None).0;
                return ProbeReport {
                    secret,
                    liveness: Check::failed("InvalidAddress", error.to_string()),
                    auth: Check::unknown("RegistryNotReady", "the registry address is not usable"),
                };
            }
        };
        let (secret, credential, ca_pem) = check_secret(credential, ca, Some(&address));
        let client = match self.clients.client(ca_pem.as_deref(), false) {
            Ok(client) => client,
            Err(error) => {
                return ProbeReport {
                    secret: Check::failed("CACertInvalid", error.to_string()),
                    liveness: Check::unknown("SecretNotReady", "the connector's CA certificates are not usable"),
                    auth: Check::unknown("SecretNotReady", "the connector's CA certificates are not usable"),
                };
            }
        };
        let upstream = Upstream::new(
            connector.metadata.name.clone().unwrap_or_default(),
            &address,
            &connector.spec.address_extensions,
            credential,
            client,
        );
        let ping = upstream.url("v2/");
        let anonymous = match self.get(&upstream.client, &ping, None).await {
            Ok(answer) => answer,
            Err(GetError::Egress(refused)) => {
                return ProbeReport {
                    secret,
                    liveness: Check::failed("EgressRefused", refused.to_string()),
                    auth: Check::unknown("RegistryNotReady", "the registry may not be dialed"),
                };
            }
            Err(error) => {
                return ProbeReport {
                    secret,
                    liveness: Check::failed("Unreachable", format!("GET {ping} failed: {error}")),
                    auth: Check::unknown("RegistryNotReady", "the registry is not reachable"),
                };
            }
        };
        let liveness = match anonymous.status {
            StatusCode::OK | StatusCode::UNAUTHORIZED => {
                Check::ok("Alive", format!("GET {ping} answered {}", anonymous.status))
            }
            other => {
                return ProbeReport {
                    secret,
                    liveness: Check::failed("UnexpectedStatus", format!("GET {ping} answered {other}")),
                    auth: Check::unknown("RegistryNotReady", "the registry is not answering as a registry"),
                };
            }
        };
        let auth = if secret.verdict != Verdict::True {
            Check::unknown("SecretNotReady", "the credential Secret is not usable")
        } else {
            let context = AuthContext {
                upstream: &upstream,
                auth_probe,
                ping: &ping,
            };
            self.check_auth(&context, &anonymous).await
        };
        ProbeReport { secret, liveness, auth }
    }

    async fn check_auth(&self, cx: &AuthContext<'_>, anonymous: &Answer) -> Check {
        let Some(credential) = cx.upstream.credential.as_ref() else {
            return if anonymous.status == StatusCode::OK {
                Check::ok("Anonymous", "the registry allows anonymous access")
            } else {
                Check::failed(
                    "CredentialRequired",
                    "the registry asks for credentials and the connector has none",
                )
            };
        };
        let registry_check = if anonymous.status == StatusCode::OK {
            // NB: an open registry ignores credentials; nothing to exchange.
            Check::ok(
                "Authenticated",
                "the registry allows access; the credential was not challenged",
            )
        } else {
            let challenges = challenges_of(&anonymous.headers);
            match challenge::preferred(&challenges) {
                Some(c) if c.scheme == Scheme::Bearer => match c.realm() {
                    Some(realm) => self.bearer_exchange(cx, credential, realm, c.service()).await,
                    None => Check::failed("TokenExchangeFailed", "the registry's Bearer challenge names no realm"),
                },
                Some(c) if c.scheme == Scheme::Basic => self.basic_retry(cx, credential).await,
                Some(c) => Check::failed(
                    "UnsupportedChallenge",
                    format!(
                        "the registry asks for the {} scheme; Basic and Bearer are supported",
                        c.scheme
                    ),
                ),
                None => Check::failed("UnsupportedChallenge", "the registry answered 401 without a challenge"),
            }
        };
        match cx.auth_probe {
            Some(probe) if registry_check.verdict == Verdict::True => self.class_probe(cx, credential, probe).await,
            _ => registry_check,
        }
    }

    /// The token exchange the proxy makes (realm checked, then `GET` the
    /// realm with Basic), then `/v2/` with the token.
    async fn bearer_exchange(
        &self,
        cx: &AuthContext<'_>,
        credential: &UpstreamCredential,
        realm: &str,
        service: Option<&str>,
    ) -> Check {
        // NB: the credential only goes to a realm the proxy would use too.
        let realm_url = match cx.upstream.checked_realm(realm) {
            Ok(url) => url,
            Err(UpstreamError::Realm { error, .. }) => return Check::failed("RealmRefused", error.to_string()),
            Err(error) => return Check::failed("RealmRefused", error.to_string()),
        };
        let realm_host = realm_url.host_str().unwrap_or_default().to_owned();
        let no_scopes = BTreeSet::new();
        let exchange = fetch_token(
            &cx.upstream.client,
            realm_url,
            service.unwrap_or_default(),
            &no_scopes,
            Some(credential),
            self.timeout,
        );
        let token = match exchange.await {
            Ok(token) => token,
            Err(UpstreamError::TokenRefused(status)) => {
                return Check::failed(
                    "Unauthorized",
                    format!("the token service on {realm_host} refused the connector's credential ({status})"),
                );
            }
            Err(UpstreamError::TokenServiceFailed(status)) => {
                return Check::failed(
                    "TokenExchangeFailed",
                    format!("the token service on {realm_host} answered {status}"),
                );
            }
            Err(UpstreamError::Token(error)) => {
                return Check::failed(
                    "TokenExchangeFailed",
                    format!("the token service on {realm_host}: {error}"),
                );
            }
            Err(error) => {
                return Check::failed(
                    "TokenExchangeFailed",
                    format!("the token service on {realm_host} failed: {error}"),
                );
            }
        };
        match self
            .get(&cx.upstream.client, cx.ping, Some(&token.bearer_header()))
            .await
        {
            Ok(answer) if answer.status == StatusCode::OK => Check::ok(
                "Authenticated",
                format!("the credential got a token from {realm_host} that the registry accepts"),
            ),
            Ok(answer) => Check::failed(
                "TokenRejected",
                format!("the registry answered {} to the token from {realm_host}", answer.status),
            ),
            Err(error) => Check::failed("Unreachable", format!("GET {} failed: {error}", cx.ping)),
        }
    }

    /// `/v2/` again with Basic credentials, expecting 200.
    async fn basic_retry(&self, cx: &AuthContext<'_>, credential: &UpstreamCredential) -> Check {
        match self
            .get(&cx.upstream.client, cx.ping, Some(&credential.basic_header()))
            .await
        {
            Ok(answer) if answer.status == StatusCode::OK => {
                Check::ok("Authenticated", "the registry accepts the connector's credential")
            }
            Ok(answer) if matches!(answer.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => Check::failed(
                "Unauthorized",
                format!("the registry refused the connector's credential ({})", answer.status),
            ),
            Ok(answer) => Check::failed(
                "UnexpectedStatus",
                format!("GET {} with the credential answered {}", cx.ping, answer.status),
            ),
            Err(error) => Check::failed("Unreachable", format!("GET {} failed: {error}", cx.ping)),
        }
    }

    /// Harbor: `GET /api/v2.0/users/current` with Basic must answer 200.
    /// The class's request with the credential (Basic): 200 proves it.
    async fn class_probe(&self, cx: &AuthContext<'_>, credential: &UpstreamCredential, probe: &HttpProbe) -> Check {
        let url = cx.upstream.url(probe.path.trim_start_matches('/'));
        let method = if probe.method.as_deref() == Some("HEAD") {
            Method::HEAD
        } else {
            Method::GET
        };
        match self
            .send(&cx.upstream.client, method, &url, Some(&credential.basic_header()))
            .await
        {
            Ok(answer) if answer.status == StatusCode::OK => Check::ok(
                "Authenticated",
                format!(
                    "the registry accepts the connector's credential, and so does {}",
                    probe.path
                ),
            ),
            Ok(answer) if matches!(answer.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => Check::failed(
                "Unauthorized",
                format!("{} refused the connector's credential ({})", probe.path, answer.status),
            ),
            Ok(answer) => Check::failed("UnexpectedStatus", format!("GET {url} answered {}", answer.status)),
            Err(error) => Check::failed("Unreachable", format!("GET {url} failed: {error}")),
        }
    }

    /// One GET with a deadline over the headers and the (bounded) body.
    /// Redirects are not followed.
    async fn get(&self, client: &UpstreamClient, url: &str, authorization: Option<&str>) -> Result<Answer, GetError> {
        self.send(client, Method::GET, url, authorization).await
    }

    async fn send(
        &self,
        client: &UpstreamClient,
        method: Method,
        url: &str,
        authorization: Option<&str>,
    ) -> Result<Answer, GetError> {
        let mut request = Request::builder().method(method).uri(url);
        if let (Some(headers), Some(value)) = (request.headers_mut(), authorization) {
            headers.insert(
                header::AUTHORIZATION,
                sensitive(value).map_err(|e| GetError::Failed(e.to_string()))?,
            );
        }
        let request = request
            .body(body::empty())
            .map_err(|_| GetError::Failed(format!("{url} is not a valid URL")))?;
        let exchange = async {
            let response = registry::auth::send(client, request, self.timeout)
                .await
                .map_err(|e| match e {
                    UpstreamError::Egress(refused) => GetError::Egress(refused),
                    UpstreamError::Unreachable { error, .. } => {
                        GetError::Failed(registry::auth::Chain(&error).to_string())
                    }
                    other => GetError::Failed(other.to_string()),
                })?;
            let (parts, body) = response.into_parts();
            http_body_util::Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| GetError::Failed(format!("reading the answer failed: {e}")))?;
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| GetError::Failed(format!("no answer within {}s", self.timeout.as_secs_f64())))?
    }
}

/// Why a probe's GET got no answer.
#[derive(Debug, thiserror::Error)]
enum GetError {
    /// The egress policy refused the address.
    #[error(transparent)]
    Egress(registry::egress::EgressRefused),
    #[error("{0}")]
    Failed(String),
}

struct AuthContext<'a> {
    upstream: &'a Upstream,
    auth_probe: Option<&'a HttpProbe>,
    ping: &'a str,
}

/// The `SecretReady` check, the credential and the CA bundle.
fn check_secret(
    credential: &SecretLookup,
    ca: &SecretLookup,
    address: Option<&RegistryAddress>,
) -> (Check, Option<UpstreamCredential>, Option<String>) {
    let ca_pem = match ca {
        SecretLookup::NotReferenced => None,
        SecretLookup::Missing(name) => {
            return (
                Check::failed("CACertSecretNotFound", format!("the CA Secret {name:?} does not exist")),
                None,
                None,
            );
        }
        SecretLookup::Found(secret) => {
            let pem = credential::ca_bundle(secret);
            if certs::load_certs_pem(&pem).is_err() {
                return (
                    Check::failed(
                        "CACertInvalid",
                        format!(
                            "the CA Secret {:?} holds no PEM certificate",
                            secret.metadata.name.as_deref().unwrap_or_default()
                        ),
                    ),
                    None,
                    None,
                );
            }
            Some(pem)
        }
    };
    match credential {
        SecretLookup::NotReferenced => (
            Check::ok("SecretOptional", "the connector names no credential Secret"),
            None,
            ca_pem,
        ),
        SecretLookup::Missing(name) => (
            Check::failed("SecretNotFound", format!("the Secret {name:?} does not exist")),
            None,
            ca_pem,
        ),
        SecretLookup::Found(secret) => {
            let host = address.map(RegistryAddress::registry_host).unwrap_or_default();
            match credential::from_secret(secret, host) {
                Ok(credential) => (
                    Check::ok(
                        "SecretValid",
                        format!(
                            "the Secret {:?} holds a credential",
                            secret.metadata.name.as_deref().unwrap_or_default()
                        ),
                    ),
                    Some(credential),
                    ca_pem,
                ),
                Err(error) => (Check::failed("SecretInvalid", error.to_string()), None, ca_pem),
            }
        }
    }
}
