//! A small, independent OCI distribution client for assertions: "the digest
//! the registry holds", "the blob it serves". It answers Basic and Bearer
//! challenges by itself (fetching tokens with GET, like skopeo), so a test
//! can ask a registry in any auth mode what it stores.
//!
//! NB: deliberately separate from the proxy's own challenge handling, so a
//! bug there cannot hide in both the code under test and its oracle.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, WWW_AUTHENTICATE};
use hyper::{Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::digest::{Digest, Sha256, sha256_bytes};

/// Every manifest type distribution 2.8 serves; without the OCI ones it
/// answers 404 for OCI manifests.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// How long one request, body included, may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a registry request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request could not be sent or the answer not read.
    #[error("{url}: {source}")]
    Transport {
        /// The URL requested.
        url: String,
        /// The underlying failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The request did not finish within the time limit.
    #[error("{url}: no complete answer within {REQUEST_TIMEOUT:?}")]
    TimedOut {
        /// The URL requested.
        url: String,
    },
    /// The registry or token server answered with an unexpected status.
    #[error("{url}: status {status}: {body}")]
    Status {
        /// The URL requested.
        url: String,
        /// The status.
        status: StatusCode,
        /// The body, for the error message.
        body: String,
    },
    /// An answer could not be understood.
    #[error("{url}: {message}")]
    Invalid {
        /// The URL requested.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The CA certificate could not be loaded.
    #[error("invalid CA certificate: {0}")]
    Ca(String),
}

/// Result of a registry request.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An answer with its body read into memory.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// A manifest as the registry serves it.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// `Docker-Content-Digest`, checked against the bytes.
    pub digest: String,
    /// `Content-Type`.
    pub media_type: String,
    /// The manifest exactly as served.
    pub bytes: Bytes,
}

/// A registry client bound to one base URL.
#[derive(Clone)]
pub struct RegistryClient {
    base: String,
    credentials: Option<(String, String)>,
    http: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl RegistryClient {
    /// A client for `base` (`http://127.0.0.1:5000`) trusting no CA: use
    /// [`Self::with_ca_pem`] for HTTPS.
    pub fn new(base: &str) -> Self {
        Self::build(base, rustls::RootCertStore::empty())
    }

    /// A client for `base` that trusts only the CA in `ca_pem`.
    pub fn with_ca_pem(base: &str, ca_pem: &str) -> Result<Self> {
        let roots = certs::root_store_from_pem(ca_pem).map_err(|error| Error::Ca(error.to_string()))?;
        Ok(Self::build(base, roots))
    }

    fn build(base: &str, roots: rustls::RootCertStore) -> Self {
        let tls = certs::client_config(roots, &[]).expect("ring supports TLS 1.2 and 1.3");
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            credentials: None,
            http: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Answers Basic challenges, and logs in to token servers, as `user`.
    pub fn credentials(mut self, user: &str, password: &str) -> Self {
        self.credentials = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The status of one unauthenticated `GET /v2/`: 200 or 401 from a
    /// running registry.
    pub async fn ping(&self) -> Result<StatusCode> {
        let url = format!("{}/v2/", self.base);
        Ok(self.send(&url, None, None).await?.status)
    }

    /// GETs `path` (below the base URL), answering one auth challenge.
    pub async fn get(&self, path: &str, accept: Option<&str>) -> Result<Answer> {
        let url = format!("{}{path}", self.base);
        let first = self.send(&url, accept, None).await?;
        if first.status != StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        let Some(authorization) = self.authorization(&url, &first.headers).await? else {
            return Ok(first);
        };
        self.send(&url, accept, Some(&authorization)).await
    }

    /// The manifest `reference` (tag or digest) of `repository`; fails
    /// unless it is 200 and its digest header matches its bytes.
    pub async fn manifest(&self, repository: &str, reference: &str) -> Result<Manifest> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let answer = self.get(&path, Some(MANIFEST_ACCEPT)).await?;
        let url = format!("{}{path}", self.base);
        let answer = expect_ok(&url, answer)?;
        let computed = sha256_bytes(&answer.body);
        let header = header(&answer.headers, "docker-content-digest");
        if header.as_deref().is_some_and(|header| header != computed) {
            return Err(Error::Invalid {
                url,
                message: format!("Docker-Content-Digest {header:?} but the body hashes to {computed}"),
            });
        }
        Ok(Manifest {
            digest: computed,
            media_type: header_or_empty(&answer.headers, CONTENT_TYPE.as_str()),
            bytes: answer.body,
        })
    }

    /// The digest of the manifest `reference` of `repository`.
    pub async fn manifest_digest(&self, repository: &str, reference: &str) -> Result<String> {
        Ok(self.manifest(repository, reference).await?.digest)
    }

    /// The tags of `repository`.
    pub async fn tags(&self, repository: &str) -> Result<Vec<String>> {
        let path = format!("/v2/{repository}/tags/list");
        let url = format!("{}{path}", self.base);
        let answer = expect_ok(&url, self.get(&path, None).await?)?;
        let list: serde_json::Value = serde_json::from_slice(&answer.body).map_err(|error| Error::Invalid {
            url: url.clone(),
            message: error.to_string(),
        })?;
        Ok(list["tags"]
            .as_array()
            .map(|tags| tags.iter().filter_map(|tag| tag.as_str().map(str::to_owned)).collect())
            .unwrap_or_default())
    }

    /// The blob `digest` of `repository` in memory; for small blobs.
    pub async fn blob(&self, repository: &str, digest: &str) -> Result<Bytes> {
        let path = format!("/v2/{repository}/blobs/{digest}");
        let url = format!("{}{path}", self.base);
        Ok(expect_ok(&url, self.get(&path, None).await?)?.body)
    }

    /// Streams the blob `digest` of `repository` and returns the digest and
    /// size of what was served, without holding it in memory.
    pub async fn blob_digest(&self, repository: &str, digest: &str) -> Result<Digest> {
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.base);
        let authorization = {
            let probe = self.send_head(&url).await?;
            match probe.status {
                StatusCode::UNAUTHORIZED => self.authorization(&url, &probe.headers).await?,
                _ => None,
            }
        };
        let request = request(&url, None, authorization.as_deref());
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| Error::TimedOut { url: url.clone() })?
            .map_err(|error| transport(&url, error))?;
        if response.status() != StatusCode::OK {
            return Err(Error::Status {
                url,
                status: response.status(),
                body: String::new(),
            });
        }
        let mut body = response.into_body();
        let mut hasher = Sha256::default();
        let read = async {
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.map_err(|error| transport(&url, error))?.into_data() {
                    hasher.update(&data);
                }
            }
            Ok::<_, Error>(())
        };
        tokio::time::timeout(REQUEST_TIMEOUT, read)
            .await
            .map_err(|_| Error::TimedOut { url: url.clone() })??;
        Ok(hasher.finish())
    }

    /// The Authorization value answering `headers`' challenge, if this
    /// client has a way to answer it.
    async fn authorization(&self, url: &str, headers: &HeaderMap) -> Result<Option<String>> {
        let Some(challenge) = header(headers, WWW_AUTHENTICATE.as_str()) else {
            return Ok(None);
        };
        let Some(challenge) = Challenge::parse(&challenge) else {
            return Ok(None);
        };
        match challenge {
            Challenge::Basic => Ok(self.basic().map(|basic| format!("Basic {basic}"))),
            Challenge::Bearer { realm, service, scope } => {
                let mut token_url = url::Url::parse(&realm).map_err(|error| Error::Invalid {
                    url: url.to_owned(),
                    message: format!("bad realm {realm:?}: {error}"),
                })?;
                {
                    let mut query = token_url.query_pairs_mut();
                    if let Some(service) = &service {
                        query.append_pair("service", service);
                    }
                    if let Some(scope) = &scope {
                        query.append_pair("scope", scope);
                    }
                }
                let basic = self.basic().map(|basic| format!("Basic {basic}"));
                let answer = self.send(token_url.as_str(), None, basic.as_deref()).await?;
                let answer = expect_ok(token_url.as_str(), answer)?;
                let body: serde_json::Value = serde_json::from_slice(&answer.body).map_err(|error| Error::Invalid {
                    url: token_url.to_string(),
                    message: format!("token answer is not JSON: {error}"),
                })?;
                let token = body["token"]
                    .as_str()
                    .or_else(|| body["access_token"].as_str())
                    .ok_or_else(|| Error::Invalid {
                        url: token_url.to_string(),
                        message: "token answer has no token".to_owned(),
                    })?;
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    fn basic(&self) -> Option<String> {
        self.credentials
            .as_ref()
            .map(|(user, password)| STANDARD.encode(format!("{user}:{password}")))
    }

    async fn send(&self, url: &str, accept: Option<&str>, authorization: Option<&str>) -> Result<Answer> {
        let request = request(url, accept, authorization);
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|error| transport(url, error))?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|error| transport(url, error))?
                .to_bytes();
            Ok(Answer { status, headers, body })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| Error::TimedOut { url: url.to_owned() })?
    }

    async fn send_head(&self, url: &str) -> Result<Answer> {
        let mut request = request(url, None, None);
        *request.method_mut() = hyper::Method::HEAD;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| Error::TimedOut { url: url.to_owned() })?
            .map_err(|error| transport(url, error))?;
        Ok(Answer {
            status: response.status(),
            headers: response.headers().clone(),
            body: Bytes::new(),
        })
    }
}

/// A `WWW-Authenticate` challenge, reduced to what this client answers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    /// Parses `Basic realm="…"` or `Bearer realm="…",service="…",scope="…"`
    /// (quoted values may hold commas and escaped quotes).
    fn parse(value: &str) -> Option<Self> {
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Self::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let mut params = Vec::new();
        let mut rest = rest.trim_start();
        while !rest.is_empty() {
            let (key, after) = rest.split_once('=')?;
            let (value, after) = match after.strip_prefix('"') {
                Some(quoted) => {
                    let mut value = String::new();
                    let mut chars = quoted.char_indices();
                    let end = loop {
                        match chars.next()? {
                            (_, '\\') => value.push(chars.next()?.1),
                            (index, '"') => break index + 1,
                            (_, other) => value.push(other),
                        }
                    };
                    (value, &quoted[end..])
                }
                None => {
                    let end = after.find(',').unwrap_or(after.len());
                    (after[..end].trim().to_owned(), &after[end..])
                }
            };
            params.push((key.trim().to_ascii_lowercase(), value));
            rest = after.trim_start().trim_start_matches(',').trim_start();
        }
        let param = |name: &str| {
            params
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        Some(Self::Bearer {
            realm: param("realm")?,
            service: param("service"),
            scope: param("scope"),
        })
    }
}

fn request(url: &str, accept: Option<&str>, authorization: Option<&str>) -> Request<Empty<Bytes>> {
    let mut builder = Request::get(url);
    if let Some(accept) = accept {
        builder = builder.header(ACCEPT, accept);
    }
    if let Some(authorization) = authorization {
        builder = builder.header(AUTHORIZATION, authorization);
    }
    builder.body(Empty::new()).expect("a GET with valid headers builds")
}

fn expect_ok(url: &str, answer: Answer) -> Result<Answer> {
    if answer.status == StatusCode::OK {
        Ok(answer)
    } else {
        Err(Error::Status {
            url: url.to_owned(),
            status: answer.status,
            body: String::from_utf8_lossy(&answer.body).chars().take(2000).collect(),
        })
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

fn header_or_empty(headers: &HeaderMap, name: &str) -> String {
    header(headers, name).unwrap_or_default()
}

fn transport(url: &str, error: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Transport {
        url: url.to_owned(),
        source: Box::new(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_with_quoted_commas_and_escapes() {
        let cases = [
            ("Basic realm=\"lab\"", Some(Challenge::Basic)),
            (
                r#"Bearer realm="http://127.0.0.1:1/token",service="reg",scope="repository:a/b:pull,push""#,
                Some(Challenge::Bearer {
                    realm: "http://127.0.0.1:1/token".to_owned(),
                    service: Some("reg".to_owned()),
                    scope: Some("repository:a/b:pull,push".to_owned()),
                }),
            ),
            (
                r#"bearer realm="r\"q", service=s"#,
                Some(Challenge::Bearer {
                    realm: "r\"q".to_owned(),
                    service: Some("s".to_owned()),
                    scope: None,
                }),
            ),
            ("Bearer service=\"no-realm\"", None),
            ("Negotiate abc", None),
        ];
        for (value, expected) in cases {
            assert_eq!(Challenge::parse(value), expected, "{value}");
        }
    }
}
