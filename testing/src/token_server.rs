//! A registry token service in the mould of Harbor's `/service/token` and
//! distribution's token authentication: GET `/token?service=…&scope=…` with
//! HTTP Basic credentials answers `{"token","access_token","expires_in",
//! "issued_at"}` holding an ES256 JWT that the real registry verifies.
//!
//! It runs on its own thread and Tokio runtime, so a test may block (run a
//! client synchronously, hold a lock) without starving it. Faults, grants and
//! lifetimes can be changed while it runs, and every request is logged.
//!
//! POST `/token` (containerd's OAuth2 password grant) answers 404 unless
//! [`TokenServerOptions::oauth2_post`] is set: containerd then falls back to
//! GET, as it does with Harbor. With the option set, the form is honoured.

pub mod jwt;
pub mod scope;

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use std::{fs, io};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tempfile::TempDir;
use tokio::sync::oneshot;

pub use jwt::KeyId;
pub use scope::{Access, Grant, GrantRule, grant, parse_scopes};

use crate::registry::{RegistryAuth, TokenAuth};

/// How long a dropped server may take to stop before its thread is left
/// to die with the test process.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest POST form accepted.
const MAX_FORM: usize = 64 * 1024;
/// How far in the past [`Fault::Expired`] tokens expire: beyond the 60 s
/// leeway distribution 2.8 allows on `exp` and `nbf`.
const EXPIRED_BY: Duration = Duration::from_secs(300);

/// Why the token server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The signing key or certificate could not be generated.
    #[error(transparent)]
    SigningKey(#[from] jwt::Error),
    /// A socket, file or thread could not be created.
    #[error("failed to {action}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
}

/// Result of starting the server.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to run a [`TokenServer`].
#[derive(Debug, Clone)]
pub struct TokenServerOptions {
    /// Accepted `(user, password)` pairs; anyone else gets 401.
    pub users: Vec<(String, String)>,
    /// The `service` clients must ask for (and the registry's `service`,
    /// which becomes the token's `aud`); another one gets 400.
    pub service: String,
    /// The token's `iss` (the registry's `issuer`).
    pub issuer: String,
    /// The advertised `expires_in`, and how long after `iat` the token's
    /// `exp` is. NB: clients (containers/image, containerd, docker) treat
    /// anything under 60 s as 60 s, and the registry allows 60 s of leeway
    /// past `exp`; use [`Fault::Expired`] for tokens the registry refuses.
    pub expires_in: Duration,
    /// What the tokens grant.
    pub grant: Grant,
    /// How token headers identify the signing key.
    pub key_id: KeyId,
    /// Whether POST `/token` (an OAuth2 password grant) is answered; when
    /// false it gets 404, as from a server that only speaks GET.
    pub oauth2_post: bool,
    /// The loopback address to listen on.
    pub ip: IpAddr,
    /// Serve HTTPS with this configuration, naming this host in the realm
    /// (`https://<host>:<port>/token`), as Harbor serves its token service
    /// on the registry's own host.
    pub tls: Option<(Arc<rustls::ServerConfig>, String)>,
}

impl Default for TokenServerOptions {
    fn default() -> Self {
        Self {
            users: vec![("user".to_owned(), "pass".to_owned())],
            service: "testing-registry".to_owned(),
            issuer: "testing-issuer".to_owned(),
            expires_in: Duration::from_secs(300),
            grant: Grant::AllRequested,
            key_id: KeyId::X5c,
            oauth2_post: false,
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            tls: None,
        }
    }
}

impl TokenServerOptions {
    /// Serves HTTPS with `tls`'s serving certificate, the realm naming
    /// `host` (which the certificate must cover).
    pub fn https(mut self, tls: &crate::TestTls, host: &str) -> Result<Self> {
        let resolver =
            certs::ReloadingCertResolver::load(tls.files.cert.clone(), tls.files.key.clone()).map_err(|e| {
                Error::Io {
                    action: "load the token server's certificate",
                    source: std::io::Error::other(e.to_string()),
                }
            })?;
        let config = certs::server_config(resolver, &[b"http/1.1"]).map_err(|e| Error::Io {
            action: "configure the token server's TLS",
            source: std::io::Error::other(e.to_string()),
        })?;
        self.tls = Some((Arc::new(config), host.to_owned()));
        Ok(self)
    }

    /// The defaults with a single account `user`/`password`.
    pub fn with_user(user: &str, password: &str) -> Self {
        Self {
            users: vec![(user.to_owned(), password.to_owned())],
            ..Self::default()
        }
    }
}

/// A misbehaviour to switch on with [`TokenServer::set_fault`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Every request gets `500 Internal Server Error`.
    ServerError,
    /// Every request gets `200` with a body that is not JSON.
    GarbageJson,
    /// Every request gets `401`, whatever its credentials.
    Unauthorized,
    /// Tokens are signed by a key outside the registry's bundle.
    ForeignKey,
    /// Tokens expired five minutes ago: the registry refuses them.
    Expired,
    /// Every answer comes after this delay (dropped with the server).
    Slow(Duration),
}

/// One request the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// `GET` or `POST`.
    pub method: String,
    /// The path, e.g. `/token`.
    pub path: String,
    /// The `service` parameter, if any.
    pub service: Option<String>,
    /// The `scope` parameters as sent (one may hold several scopes).
    pub scopes: Vec<String>,
    /// The authenticated or claimed user name, if any.
    pub user: Option<String>,
    /// The answer's status code.
    pub status: u16,
    /// What the issued token granted (empty without a token).
    pub granted: Vec<Access>,
}

/// The settings a test may change while the server runs.
struct Control {
    fault: Option<Fault>,
    grant: Grant,
    expires_in: Duration,
}

struct Shared {
    users: Vec<(String, String)>,
    service: String,
    issuer: String,
    key_id: KeyId,
    oauth2_post: bool,
    signing_key: jwt::SigningKey,
    /// Signs [`Fault::ForeignKey`] tokens.
    foreign_key: jwt::SigningKey,
    control: Mutex<Control>,
    log: Mutex<Vec<TokenRequest>>,
}

/// A running token server; stops on drop.
pub struct TokenServer {
    addr: SocketAddr,
    realm: String,
    bundle_path: PathBuf,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    _dir: TempDir,
}

impl TokenServer {
    /// Generates a signing key, writes its certificate as the bundle and
    /// starts serving on `options.ip`, port chosen by the OS.
    pub fn start(options: TokenServerOptions) -> Result<Self> {
        assert!(
            options.ip.is_loopback(),
            "tests listen on 127.0.0.0/8 only, not {}",
            options.ip
        );
        let io_error = |action| move |source| Error::Io { action, source };
        let dir = tempfile::tempdir().map_err(io_error("create a directory for the token server"))?;
        let signing_key = jwt::SigningKey::generate("testing token signer")?;
        let bundle_path = dir.path().join("token-signing-bundle.pem");
        fs::write(&bundle_path, signing_key.cert_pem()).map_err(io_error("write the token signing bundle"))?;

        let listener = std::net::TcpListener::bind((options.ip, 0)).map_err(io_error("bind the token server"))?;
        listener
            .set_nonblocking(true)
            .map_err(io_error("make the token server's socket non-blocking"))?;
        let addr = listener
            .local_addr()
            .map_err(io_error("read the token server's address"))?;

        let shared = Arc::new(Shared {
            users: options.users,
            service: options.service,
            issuer: options.issuer,
            key_id: options.key_id,
            oauth2_post: options.oauth2_post,
            signing_key,
            foreign_key: jwt::SigningKey::generate("foreign signer")?,
            control: Mutex::new(Control {
                fault: None,
                grant: options.grant,
                expires_in: options.expires_in,
            }),
            log: Mutex::new(Vec::new()),
        });
        let (shutdown, stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_error("build the token server's runtime"))?;
        let serving = Arc::clone(&shared);
        let realm = match &options.tls {
            Some((_, host)) => format!("https://{host}:{}/token", addr.port()),
            None => format!("http://{addr}/token"),
        };
        let tls = options.tls.map(|(config, _)| config);
        let thread = std::thread::Builder::new()
            .name(format!("token-server-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(serve(listener, serving, tls, stopped));
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(io_error("spawn the token server thread"))?;
        Ok(Self {
            addr,
            realm,
            bundle_path,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
            _dir: dir,
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/token` (or the HTTPS realm), the registry's `realm`.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// The `service` the server expects.
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// The `iss` of its tokens.
    pub fn issuer(&self) -> &str {
        &self.shared.issuer
    }

    /// The PEM certificate file for the registry's `rootcertbundle`.
    pub fn bundle_path(&self) -> &Path {
        &self.bundle_path
    }

    /// The registry `auth` that trusts this server; the harness's own
    /// client logs in as the first user.
    pub fn registry_auth(&self) -> RegistryAuth {
        RegistryAuth::Token(TokenAuth {
            realm: self.realm.clone(),
            service: self.shared.service.clone(),
            issuer: self.shared.issuer.clone(),
            rootcertbundle: self.bundle_path.clone(),
            credentials: self.shared.users.first().cloned(),
        })
    }

    /// How many requests were answered so far.
    pub fn requests(&self) -> usize {
        lock(&self.shared.log).len()
    }

    /// Every request answered so far, oldest first.
    pub fn requests_log(&self) -> Vec<TokenRequest> {
        lock(&self.shared.log).clone()
    }

    /// Forgets the requests answered so far.
    pub fn clear_log(&self) {
        lock(&self.shared.log).clear();
    }

    /// Switches a misbehaviour on, or off with `None`.
    pub fn set_fault(&self, fault: Option<Fault>) {
        lock(&self.shared.control).fault = fault;
    }

    /// Changes what new tokens grant.
    pub fn set_grant(&self, grant: Grant) {
        lock(&self.shared.control).grant = grant;
    }

    /// Changes the lifetime of new tokens.
    pub fn set_expires_in(&self, expires_in: Duration) {
        lock(&self.shared.control).expires_in = expires_in;
    }

    /// A token for `user` granting exactly `access`, signed like the
    /// served ones: for tests that talk to the registry directly.
    pub fn mint(&self, user: &str, access: &[Access]) -> String {
        let expires_in = lock(&self.shared.control).expires_in;
        self.shared.token(user, access.to_vec(), expires_in, None).0
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let deadline = Instant::now() + STOP_TIMEOUT;
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("token server: cannot register its socket: {error}");
            return;
        }
    };
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    eprintln!("token server: accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = Arc::clone(&shared);
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(shared.answer(request).await) }
            });
            match tls {
                None => {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                Some(config) => {
                    let accepted = tokio::time::timeout(
                        Duration::from_secs(10),
                        tokio_rustls::TlsAcceptor::from(config).accept(stream),
                    )
                    .await;
                    if let Ok(Ok(stream)) = accepted {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            }
        });
    }
}

/// A request reduced to what the token endpoint reads.
struct TokenQuery {
    service: Option<String>,
    scopes: Vec<String>,
    /// `(user, password)` from Basic auth or the OAuth2 form.
    credentials: Option<(String, String)>,
}

impl Shared {
    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let fault = lock(&self.control).fault.clone();
        if let Some(Fault::Slow(delay)) = &fault {
            tokio::time::sleep(*delay).await;
        }
        let query = match (&method, path.as_str()) {
            (&Method::GET, "/token") => Some(get_query(&request)),
            (&Method::POST, "/token") if self.oauth2_post => read_form(request).await,
            _ => None,
        };
        let Some(query) = query else {
            let status = if path == "/token" && method != Method::POST {
                StatusCode::METHOD_NOT_ALLOWED
            } else {
                StatusCode::NOT_FOUND
            };
            self.record(&method, &path, None, status, Vec::new());
            return error_response(status, "NOT_FOUND", "no such endpoint");
        };

        let (response, granted) = self.token_response(&method, &query, fault.as_ref());
        self.record(&method, &path, Some(&query), response.status(), granted);
        response
    }

    fn token_response(
        &self,
        method: &Method,
        query: &TokenQuery,
        fault: Option<&Fault>,
    ) -> (Response<Full<Bytes>>, Vec<Access>) {
        match fault {
            Some(Fault::ServerError) => {
                return (
                    error_response(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", "injected fault"),
                    Vec::new(),
                );
            }
            Some(Fault::GarbageJson) => {
                return (body_response(StatusCode::OK, "{\"token\": not json".into()), Vec::new());
            }
            Some(Fault::Unauthorized) => return (unauthorized(), Vec::new()),
            _ => {}
        }
        let Some((user, password)) = &query.credentials else {
            return (unauthorized(), Vec::new());
        };
        if !self.users.iter().any(|(u, p)| u == user && p == password) {
            return (unauthorized(), Vec::new());
        }
        if query.service.as_deref() != Some(self.service.as_str()) {
            let message = format!("invalid service {:?}", query.service.as_deref().unwrap_or(""));
            return (
                error_response(StatusCode::BAD_REQUEST, "INVALID_REQUEST", &message),
                Vec::new(),
            );
        }
        let (policy, expires_in) = {
            let control = lock(&self.control);
            (control.grant.clone(), control.expires_in)
        };
        let granted = grant(&policy, user, &parse_scopes(query.scopes.iter().map(String::as_str)));
        let (token, issued_at) = self.token(user, granted.clone(), expires_in, fault);
        let mut body = json!({
            "access_token": token,
            "expires_in": expires_in.as_secs(),
            "issued_at": rfc3339(issued_at),
        });
        if method == Method::GET {
            body["token"] = json!(token);
        } else {
            body["scope"] = json!(query.scopes.join(" "));
        }
        (body_response(StatusCode::OK, body.to_string()), granted)
    }

    /// A signed token and its `iat` in seconds since the epoch.
    fn token(&self, user: &str, access: Vec<Access>, expires_in: Duration, fault: Option<&Fault>) -> (String, u64) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let (issued_at, key) = match fault {
            Some(Fault::Expired) => (now - EXPIRED_BY.as_secs() - expires_in.as_secs(), &self.signing_key),
            Some(Fault::ForeignKey) => (now, &self.foreign_key),
            _ => (now, &self.signing_key),
        };
        let mut jti = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut jti).expect("the OS has randomness");
        let claims = json!({
            "iss": self.issuer,
            "sub": user,
            // NB: distribution 2.8 reads `aud` as a string; a list fails to parse.
            "aud": self.service,
            "exp": issued_at + expires_in.as_secs(),
            "nbf": issued_at,
            "iat": issued_at,
            "jti": crate::digest::hex(&jti),
            "access": access,
        });
        (key.sign(self.key_id, &claims), issued_at)
    }

    fn record(
        &self,
        method: &Method,
        path: &str,
        query: Option<&TokenQuery>,
        status: StatusCode,
        granted: Vec<Access>,
    ) {
        lock(&self.log).push(TokenRequest {
            method: method.to_string(),
            path: path.to_owned(),
            service: query.and_then(|query| query.service.clone()),
            scopes: query.map(|query| query.scopes.clone()).unwrap_or_default(),
            user: query.and_then(|query| query.credentials.as_ref().map(|(user, _)| user.clone())),
            status: status.as_u16(),
            granted,
        });
    }
}

fn get_query(request: &Request<Incoming>) -> TokenQuery {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    TokenQuery {
        service: pairs
            .iter()
            .find(|(key, _)| key == "service")
            .map(|(_, value)| value.clone()),
        scopes: pairs
            .iter()
            .filter(|(key, _)| key == "scope")
            .map(|(_, value)| value.clone())
            .collect(),
        credentials: request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(basic_credentials),
    }
}

/// The OAuth2 password grant form containerd posts; `None` for anything else.
async fn read_form(request: Request<Incoming>) -> Option<TokenQuery> {
    let body = Limited::new(request.into_body(), MAX_FORM)
        .collect()
        .await
        .ok()?
        .to_bytes();
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    if field("grant_type").as_deref() != Some("password") {
        return Some(TokenQuery {
            service: field("service"),
            scopes: Vec::new(),
            credentials: None,
        });
    }
    Some(TokenQuery {
        service: field("service"),
        scopes: field("scope").into_iter().collect(),
        credentials: field("username").zip(field("password")),
    })
}

/// `(user, password)` from a `Basic` Authorization value.
fn basic_credentials(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut response = error_response(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "authentication required");
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"testing token service\""),
    );
    response
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({"errors": [{"code": code, "message": message}]});
    body_response(status, body.to_string())
}

fn body_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Seconds since the epoch as an RFC 3339 UTC timestamp.
fn rfc3339(seconds: u64) -> String {
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_as_rfc_3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn basic_credentials_split_at_the_first_colon() {
        let value = format!("Basic {}", STANDARD.encode("u:p:q"));
        assert_eq!(basic_credentials(&value), Some(("u".to_owned(), "p:q".to_owned())));
        assert_eq!(basic_credentials("Bearer abc"), None);
    }
}
