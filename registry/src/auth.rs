//! Sending a request to a connector's registry with the connector's
//! authorization: the one path that the proxy's pipeline (first try, retry
//! after a 401, redirect hops on the registry's origin, refetches) and the
//! controller's probes share.
//!
//! How an upstream wants to be authenticated is learned once from an
//! anonymous `GET /v2/` ([`UpstreamAuth`]) and remembered per base URL;
//! Bearer tokens come from the token service the challenge names, after
//! [`crate::realm::check_realm`] has accepted it, and are cached per
//! (realm, service, scopes, credential) with single-flight fetches.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use connector::address::RegistryAddress;
use connector::crd::NamedValue;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use url::Url;

use crate::body::{self, ProxyBody};
use crate::challenge::{self, Challenge, Scheme};
use crate::credential::UpstreamCredential;
use crate::realm::{RealmError, check_realm};
use crate::token::{self, Source, Token, TokenCache, TokenError, TokenKey};
use crate::upstream::UpstreamClient;

/// The largest token-service answer read.
const MAX_TOKEN_ANSWER: usize = 1 << 20;

/// Why an upstream exchange failed. Messages name hosts and statuses,
/// never a credential or a token.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The connection or the exchange failed before response headers.
    #[error("upstream {host} failed: {}", Chain(error))]
    Unreachable {
        host: String,
        error: hyper_util::client::legacy::Error,
    },
    /// The egress policy refused every address of the host.
    #[error(transparent)]
    Egress(#[from] crate::egress::EgressRefused),
    /// No response headers within the limit.
    #[error("upstream {host} sent no response headers within {}s", after.as_secs())]
    HeaderTimeout { host: String, after: Duration },
    /// The token service could not be reached.
    #[error("token service: {0}")]
    TokenService(Box<UpstreamError>),
    /// The token service refused the connector's credential (401/403).
    #[error("the registry's token service refused the connector's credential ({0})")]
    TokenRefused(StatusCode),
    /// The token service failed otherwise (5xx, 429, …): nothing is said
    /// about the credential.
    #[error("the registry's token service failed ({0})")]
    TokenServiceFailed(StatusCode),
    #[error("the token service did not answer in time")]
    TokenTimeout,
    #[error("the token service's answer could not be read")]
    TokenUnreadable,
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The challenge named a realm outside the connector's hosts.
    #[error("connector {connector}: {error}")]
    Realm { connector: String, error: RealmError },
    /// A URL the exchange needs could not be formed.
    #[error("{0}")]
    InvalidUrl(&'static str),
    #[error("the credential cannot be sent in a header")]
    CredentialHeader,
}

impl UpstreamError {
    /// True when the upstream did not answer in time (a gateway timeout
    /// rather than a bad gateway).
    pub fn is_timeout(&self) -> bool {
        match self {
            Self::HeaderTimeout { .. } => true,
            Self::TokenService(inner) => inner.is_timeout(),
            _ => false,
        }
    }
}

/// An error and its sources, joined with `: `, each distinct text once.
pub struct Chain<'a>(pub &'a dyn std::error::Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            let text = s.to_string();
            if !last.contains(&text) {
                write!(f, ": {text}")?;
            }
            last = text;
            source = s.source();
        }
        Ok(())
    }
}

/// How an upstream wants to be authenticated, learned from its `/v2/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAuth {
    Anonymous,
    Basic,
    Bearer { realm: String, service: String },
}

impl UpstreamAuth {
    /// The scheme a challenge asks for; None for schemes the product does
    /// not speak (or a Bearer challenge without a realm).
    pub(crate) fn from_challenge(challenge: &Challenge) -> Option<Self> {
        match challenge.scheme {
            Scheme::Bearer => Some(Self::Bearer {
                realm: challenge.realm()?.to_owned(),
                service: challenge.service().unwrap_or_default().to_owned(),
            }),
            Scheme::Basic => Some(Self::Basic),
            Scheme::Other(_) => None,
        }
    }
}

/// The challenges of an upstream answer (its `WWW-Authenticate` headers).
pub fn challenges_of(headers: &HeaderMap) -> Vec<Challenge> {
    challenge::parse_challenges(
        headers
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

/// One connector's registry as a request sees it: where it is, which hosts
/// may receive its credential, the credential, and the client to use.
pub struct Upstream {
    /// The connector's name, for messages (`namespace/name`).
    pub name: String,
    /// The registry's URL, without a trailing slash on its path.
    pub base: Url,
    /// The canonical `host[:port]` image references name.
    pub registry_host: String,
    /// `spec.addressExtensions`: more hosts a token realm may be on. Parsed
    /// only when a realm is checked, never on a request that needs none.
    pub extensions: Vec<String>,
    pub credential: Option<UpstreamCredential>,
    pub client: UpstreamClient,
}

impl Upstream {
    pub fn new(
        name: impl Into<String>,
        address: &RegistryAddress,
        extensions: &[NamedValue],
        credential: Option<UpstreamCredential>,
        client: UpstreamClient,
    ) -> Self {
        let mut base = address.url().clone();
        let trimmed = base.path().trim_end_matches('/').to_owned();
        base.set_path(&trimmed);
        Self {
            name: name.into(),
            base,
            registry_host: address.registry_host().to_owned(),
            extensions: extensions.iter().map(|e| e.value.clone()).collect(),
            credential,
            client,
        }
    }

    /// `<base>/<path>` (path without a leading slash).
    pub fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base.as_str().trim_end_matches('/'))
    }

    /// The realm as a URL, if it is on the connector's hosts.
    pub fn checked_realm(&self, realm: &str) -> Result<Url, UpstreamError> {
        let extensions: Vec<Url> = self.extensions.iter().filter_map(|e| Url::parse(e).ok()).collect();
        check_realm(realm, &self.base, &extensions).map_err(|error| {
            tracing::warn!(connector = %self.name, realm = %realm, %error, "refusing a token realm outside the connector's hosts");
            UpstreamError::Realm {
                connector: self.name.clone(),
                error,
            }
        })
    }
}

/// The `Authorization` value sent upstream, and the cached token it came
/// from (to evict it if the registry rejects it).
pub struct Authorization {
    value: HeaderValue,
    token: Option<(TokenKey, Token)>,
    /// For Bearer tokens: fetched now, or reused from the cache.
    pub source: Option<Source>,
}

impl fmt::Debug for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorization")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The head of a request to send upstream.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
}

/// Sends requests to upstream registries with their connector's
/// authorization; keeps the learned schemes and the token cache of a
/// process.
pub struct UpstreamSender {
    tokens: TokenCache,
    schemes: Mutex<HashMap<String, UpstreamAuth>>,
    header_timeout: Duration,
}

impl UpstreamSender {
    /// `header_timeout`: how long an upstream (registry, token service,
    /// object storage) may take to send response headers; bodies have no
    /// deadline.
    pub fn new(header_timeout: Duration) -> Self {
        Self {
            tokens: TokenCache::default(),
            schemes: Mutex::new(HashMap::new()),
            header_timeout,
        }
    }

    /// One request, no credential added, with the response-header deadline.
    pub async fn send(
        &self,
        client: &UpstreamClient,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        send(client, request, self.header_timeout).await
    }

    /// `head` and `body` sent with the connector's authorization for
    /// `scopes`; a Bearer token must stay valid for `margin` more. Returns
    /// the answer and the authorization used (for [`Self::rejected`]).
    pub async fn send_authorized(
        &self,
        upstream: &Upstream,
        head: &RequestHead,
        body: ProxyBody,
        scopes: &BTreeSet<String>,
        margin: Duration,
    ) -> Result<(Response<Incoming>, Option<Authorization>), UpstreamError> {
        let authorization = self.authorization(upstream, scopes, margin).await?;
        let mut request = Request::builder().method(head.method.clone()).uri(head.uri.clone());
        if let Some(headers) = request.headers_mut() {
            *headers = head.headers.clone();
            if let Some(authorization) = &authorization {
                headers.insert(header::AUTHORIZATION, authorization.value.clone());
            }
        }
        let request = request
            .body(body)
            .map_err(|_| UpstreamError::InvalidUrl("invalid upstream request"))?;
        let response = self.send(&upstream.client, request).await?;
        Ok((response, authorization))
    }

    /// After a 401: drops the token the registry rejected, learns what the
    /// registry asks for now, and adds the scopes its challenge names.
    pub async fn rejected(
        &self,
        upstream: &Upstream,
        answer: &HeaderMap,
        authorization: Option<&Authorization>,
        scopes: &mut BTreeSet<String>,
    ) {
        if let Some((key, token)) = authorization.and_then(|a| a.token.as_ref()) {
            self.tokens.invalidate(key, token).await;
        }
        let challenges = challenges_of(answer);
        if let Some(preferred) = challenge::preferred(&challenges) {
            if let Some(auth) = UpstreamAuth::from_challenge(preferred) {
                self.remember(upstream, auth);
            }
            scopes.extend(preferred.scopes());
        }
    }

    /// The `Authorization` for `upstream` and `scopes`: none, the
    /// credential as Basic, or a Bearer token (cached or fetched).
    pub async fn authorization(
        &self,
        upstream: &Upstream,
        scopes: &BTreeSet<String>,
        margin: Duration,
    ) -> Result<Option<Authorization>, UpstreamError> {
        let basic = || -> Result<Option<Authorization>, UpstreamError> {
            upstream
                .credential
                .as_ref()
                .map(|c| {
                    Ok(Authorization {
                        value: sensitive(&c.basic_header())?,
                        token: None,
                        source: None,
                    })
                })
                .transpose()
        };
        let (realm, service) = match self.scheme(upstream).await? {
            UpstreamAuth::Anonymous | UpstreamAuth::Basic => return basic(),
            UpstreamAuth::Bearer { realm, service } => (realm, service),
        };
        let key = TokenKey {
            realm: realm.clone(),
            service: service.clone(),
            scopes: scopes.clone(),
            credential: upstream
                .credential
                .as_ref()
                .map(UpstreamCredential::fingerprint)
                .unwrap_or(0),
        };
        let (token, source) = self
            .tokens
            .get(&key, margin, || async {
                // NB: checked only when a credential is about to be sent; a
                // cached token came from a realm checked then.
                let realm_url = upstream.checked_realm(&realm)?;
                fetch_token(
                    &upstream.client,
                    realm_url,
                    &service,
                    scopes,
                    upstream.credential.as_ref(),
                    self.header_timeout,
                )
                .await
            })
            .await?;
        Ok(Some(Authorization {
            value: sensitive(&token.bearer_header())?,
            token: Some((key, token)),
            source: Some(source),
        }))
    }

    /// The upstream's scheme, from a remembered or fresh anonymous `/v2/`.
    pub async fn scheme(&self, upstream: &Upstream) -> Result<UpstreamAuth, UpstreamError> {
        if let Some(auth) = self
            .schemes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(upstream.base.as_str())
        {
            return Ok(auth.clone());
        }
        let ping = Request::builder()
            .method(Method::GET)
            .uri(upstream.url("v2/"))
            .body(body::empty())
            .map_err(|_| UpstreamError::InvalidUrl("invalid upstream URL"))?;
        let response = self.send(&upstream.client, ping).await?;
        let status = response.status();
        let auth = if status == StatusCode::UNAUTHORIZED {
            let challenges = challenges_of(response.headers());
            challenge::preferred(&challenges)
                .and_then(UpstreamAuth::from_challenge)
                .unwrap_or(UpstreamAuth::Basic)
        } else {
            UpstreamAuth::Anonymous
        };
        // NB: only a real answer is remembered: a 5xx or 429 from a registry
        // that is struggling says nothing about its auth scheme, and a
        // remembered "anonymous" would cost the first request with a body
        // after recovery its token.
        if status == StatusCode::UNAUTHORIZED || status.is_success() {
            self.remember(upstream, auth.clone());
        }
        Ok(auth)
    }

    fn remember(&self, upstream: &Upstream, auth: UpstreamAuth) {
        self.schemes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(upstream.base.as_str().to_owned(), auth);
    }
}

/// `GET <realm>?service=…&scope=…` with the connector's credential as
/// Basic: the token exchange. `realm` must have passed
/// [`Upstream::checked_realm`].
pub async fn fetch_token(
    client: &UpstreamClient,
    mut realm: Url,
    service: &str,
    scopes: &BTreeSet<String>,
    credential: Option<&UpstreamCredential>,
    header_timeout: Duration,
) -> Result<Token, UpstreamError> {
    {
        let mut query = realm.query_pairs_mut();
        if !service.is_empty() {
            query.append_pair("service", service);
        }
        for scope in scopes {
            query.append_pair("scope", scope);
        }
    }
    let uri: Uri = realm
        .as_str()
        .parse()
        .map_err(|_| UpstreamError::InvalidUrl("invalid token realm"))?;
    let mut request = Request::builder().method(Method::GET).uri(uri);
    if let (Some(h), Some(credential)) = (request.headers_mut(), credential) {
        h.insert(header::AUTHORIZATION, sensitive(&credential.basic_header())?);
    }
    let request = request
        .body(body::empty())
        .map_err(|_| UpstreamError::InvalidUrl("invalid token request"))?;
    let received = Instant::now();
    let response = send(client, request, header_timeout)
        .await
        .map_err(|e| UpstreamError::TokenService(Box::new(e)))?;
    let status = response.status();
    let answer = tokio::time::timeout(
        header_timeout,
        http_body_util::Limited::new(response.into_body(), MAX_TOKEN_ANSWER).collect(),
    )
    .await
    .map_err(|_| UpstreamError::TokenTimeout)?
    .map_err(|_| UpstreamError::TokenUnreadable)?
    .to_bytes();
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return Err(UpstreamError::TokenRefused(status));
    }
    if !status.is_success() {
        // NB: a 5xx or 429 says nothing about the credential.
        return Err(UpstreamError::TokenServiceFailed(status));
    }
    Ok(token::parse_token_response(&answer, received)?)
}

/// One request with a deadline on the response headers.
pub async fn send(
    client: &UpstreamClient,
    request: Request<ProxyBody>,
    header_timeout: Duration,
) -> Result<Response<Incoming>, UpstreamError> {
    let host = request.uri().host().unwrap_or_default().to_owned();
    match tokio::time::timeout(header_timeout, client.request(request)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error)) => Err(match egress_refusal(&error) {
            Some(refused) => UpstreamError::Egress(refused),
            None => UpstreamError::Unreachable { host, error },
        }),
        Err(_) => Err(UpstreamError::HeaderTimeout {
            host,
            after: header_timeout,
        }),
    }
}

/// The egress refusal behind a failed dial, if that is what it was.
fn egress_refusal(error: &(dyn std::error::Error + 'static)) -> Option<crate::egress::EgressRefused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = source {
        if let Some(refused) = error.downcast_ref::<crate::egress::EgressRefused>() {
            return Some(refused.clone());
        }
        if let Some(crate::egress::EgressError::Refused(refused)) = error.downcast_ref::<crate::egress::EgressError>() {
            return Some(refused.clone());
        }
        source = error.source();
    }
    None
}

/// A header value marked sensitive (kept out of hyper's debug output).
pub fn sensitive(value: &str) -> Result<HeaderValue, UpstreamError> {
    let mut v = HeaderValue::from_str(value).map_err(|_| UpstreamError::CredentialHeader)?;
    v.set_sensitive(true);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: inner")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("wrapper")]
    struct Wrapper(#[source] Inner);

    #[test]
    fn error_chains_name_each_distinct_cause_once() {
        assert_eq!(Chain(&Outer(Inner)).to_string(), "outer: inner");
        assert_eq!(Chain(&Wrapper(Inner)).to_string(), "wrapper: inner");
    }

    #[test]
    fn timeouts_are_told_apart_through_the_token_service() {
        let late = UpstreamError::HeaderTimeout {
            host: "h".into(),
            after: Duration::from_secs(2),
        };
        assert!(late.is_timeout());
        assert_eq!(late.to_string(), "upstream h sent no response headers within 2s");
        let wrapped = UpstreamError::TokenService(Box::new(late));
        assert!(wrapped.is_timeout());
        assert_eq!(
            wrapped.to_string(),
            "token service: upstream h sent no response headers within 2s"
        );
        assert!(!UpstreamError::TokenTimeout.is_timeout());
    }
}
