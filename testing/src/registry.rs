//! A real CNCF distribution registry (Debian's `docker-registry`, 2.8) in a
//! private directory: no auth, htpasswd or token auth, HTTP or HTTPS. The
//! process is killed when the [`Registry`] is dropped.
//!
//! The config is written as JSON, which YAML parsers read as YAML, so paths
//! need no quoting rules of their own.

use std::fs::{self, File};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::client::{self, RegistryClient};
use crate::program::{self, MissingProgram};
use crate::tls::TestTls;

/// How long a registry may take to answer `/v2/` after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a port is re-picked when another process took it meanwhile.
const PORT_ATTEMPTS: usize = 5;
/// How long a killed registry may take to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a registry could not be started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `docker-registry` or `htpasswd` is missing.
    #[error(transparent)]
    MissingProgram(#[from] MissingProgram),
    /// A file, directory, socket or process could not be created.
    #[error("failed to {action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// `htpasswd` failed.
    #[error("htpasswd failed ({status}): {stderr}")]
    Htpasswd {
        /// Its exit status.
        status: ExitStatus,
        /// What it printed.
        stderr: String,
    },
    /// The registry exited while starting.
    #[error("docker-registry exited while starting ({status}); its log:\n{logs}")]
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// Its output.
        logs: String,
    },
    /// The registry did not answer `/v2/` in time.
    #[error("docker-registry did not answer GET /v2/ within {READY_TIMEOUT:?} (last: {last}); its log:\n{logs}")]
    NotReady {
        /// The last probe's outcome.
        last: String,
        /// Its output.
        logs: String,
    },
    /// The CA for the harness's own client is invalid.
    #[error(transparent)]
    Client(#[from] client::Error),
}

/// Result of starting a registry.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the registry authenticates clients.
#[derive(Debug, Clone, Default)]
pub enum RegistryAuth {
    /// Everyone may pull and push.
    #[default]
    None,
    /// HTTP Basic against one bcrypt htpasswd entry.
    Htpasswd {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
    /// Bearer tokens from a token server, e.g. [`crate::TokenServer`].
    Token(TokenAuth),
}

/// distribution's `auth.token` settings.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    /// The token endpoint clients are sent to.
    pub realm: String,
    /// The `service` (the tokens' `aud`).
    pub service: String,
    /// The tokens' `iss`.
    pub issuer: String,
    /// PEM certificates whose keys sign the tokens.
    pub rootcertbundle: PathBuf,
    /// What the harness's own client logs in to the token server with.
    pub credentials: Option<(String, String)>,
}

/// The serving certificate and key for HTTPS, and the CA the harness's
/// own client trusts.
#[derive(Debug, Clone)]
pub struct RegistryTls {
    /// The certificate chain PEM file.
    pub cert: PathBuf,
    /// The private key PEM file.
    pub key: PathBuf,
    /// The CA certificate as PEM.
    pub ca_pem: String,
}

impl From<&TestTls> for RegistryTls {
    fn from(tls: &TestTls) -> Self {
        Self {
            cert: tls.files.cert.clone(),
            key: tls.files.key.clone(),
            ca_pem: tls.ca_pem().to_owned(),
        }
    }
}

/// How to run a [`Registry`].
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// The authentication mode.
    pub auth: RegistryAuth,
    /// Serve HTTPS with these files; plain HTTP when `None`.
    pub tls: Option<RegistryTls>,
    /// `http.relativeurls`: upload `Location` headers without scheme and host.
    pub relative_urls: bool,
    /// The address to listen on: loopback, or with `netns` an address of
    /// that namespace.
    pub ip: IpAddr,
    /// Runs the registry in this network namespace (`/run/netns/<name>`, one
    /// the tests made: the e2e node's), where the node's pods reach it.
    pub netns: Option<String>,
    /// `log.level`: `error`, `warn`, `info` or `debug`. The access log
    /// (one combined-format line per request) is written at every level.
    pub log_level: String,
    /// Where blobs and manifests live; a private directory when `None`.
    /// Point a second registry at the first one's [`Registry::data_dir`] to
    /// "restart" it with its content.
    pub storage: Option<PathBuf>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            auth: RegistryAuth::None,
            tls: None,
            relative_urls: false,
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            netns: None,
            log_level: "warn".to_owned(),
            storage: None,
        }
    }
}

impl RegistryOptions {
    /// No authentication, plain HTTP on 127.0.0.1.
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// HTTP Basic for `user`/`password`, plain HTTP on 127.0.0.1.
    pub fn htpasswd(user: &str, password: &str) -> Self {
        Self {
            auth: RegistryAuth::Htpasswd {
                user: user.to_owned(),
                password: password.to_owned(),
            },
            ..Self::default()
        }
    }

    /// Token authentication against `server`, plain HTTP on 127.0.0.1.
    pub fn token(server: &crate::TokenServer) -> Self {
        Self {
            auth: server.registry_auth(),
            ..Self::default()
        }
    }

    /// Serves HTTPS with `tls`'s certificate.
    pub fn tls(mut self, tls: &TestTls) -> Self {
        self.tls = Some(tls.into());
        self
    }

    /// Listens on `ip` (which must be a loopback address).
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ip = ip;
        self
    }

    /// Runs in the network namespace `netns`, listening on `ip` there.
    pub fn in_netns(mut self, netns: &str, ip: IpAddr) -> Self {
        self.netns = Some(netns.to_owned());
        self.ip = ip;
        self
    }

    /// Makes upload `Location` headers relative.
    pub fn relative_urls(mut self) -> Self {
        self.relative_urls = true;
        self
    }

    /// Sets `log.level`.
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_owned();
        self
    }
}

/// A running registry; killed on drop.
pub struct Registry {
    addr: SocketAddr,
    scheme: &'static str,
    child: Child,
    data_dir: PathBuf,
    log_path: PathBuf,
    config_path: PathBuf,
    credentials: Option<(String, String)>,
    client: RegistryClient,
    _dir: TempDir,
}

impl Registry {
    /// Writes the config, starts `docker-registry serve` on a free port and
    /// waits until `GET /v2/` answers 200 or 401.
    pub async fn start(options: RegistryOptions) -> Result<Self> {
        assert!(
            options.ip.is_loopback() || options.netns.is_some(),
            "tests listen on 127.0.0.0/8 or in their own network namespaces only, not {}",
            options.ip
        );
        let program = program::find("docker-registry")?;
        let dir = tempfile::tempdir().map_err(io_error("create the registry directory"))?;
        let data_dir = options.storage.clone().unwrap_or_else(|| dir.path().join("data"));
        fs::create_dir_all(&data_dir).map_err(io_error("create the registry storage"))?;
        let auth = auth_config(&options.auth, dir.path())?;
        let credentials = match &options.auth {
            RegistryAuth::None => None,
            RegistryAuth::Htpasswd { user, password } => Some((user.clone(), password.clone())),
            RegistryAuth::Token(token) => token.credentials.clone(),
        };
        let scheme = if options.tls.is_some() { "https" } else { "http" };
        let config_path = dir.path().join("config.yml");
        let log_path = dir.path().join("registry.log");

        let mut last_error = None;
        for _attempt in 0..PORT_ATTEMPTS {
            let addr = match &options.netns {
                None => free_port(options.ip)?,
                Some(netns) => free_port_in(netns, options.ip)?,
            };
            let config = config(&options, addr, &data_dir, auth.clone());
            fs::write(
                &config_path,
                serde_json::to_vec_pretty(&config).expect("JSON serializes"),
            )
            .map_err(io_error("write the registry config"))?;
            let mut client = match &options.tls {
                Some(tls) => RegistryClient::with_ca_pem(&format!("{scheme}://{addr}"), &tls.ca_pem)?,
                None => RegistryClient::new(&format!("{scheme}://{addr}")),
            };
            if let Some((user, password)) = &credentials {
                client = client.credentials(user, password);
            }
            let mut child = spawn(&program, options.netns.as_deref(), &config_path, &log_path, dir.path())?;
            match wait_ready(&mut child, &client, &log_path).await {
                Ok(()) => {
                    return Ok(Self {
                        addr,
                        scheme,
                        child,
                        data_dir,
                        log_path,
                        config_path,
                        credentials,
                        client,
                        _dir: dir,
                    });
                }
                Err(error) => {
                    kill(&mut child);
                    match error {
                        Error::Exited { ref logs, .. } if logs.contains("address already in use") => {
                            last_error = Some(error);
                        }
                        error => return Err(error),
                    }
                }
            }
        }
        Err(last_error.expect("at least one attempt ran"))
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT` or `https://…`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// `docker://127.0.0.1:PORT/<repository_and_tag>` for skopeo.
    pub fn docker_reference(&self, repository_and_tag: &str) -> String {
        format!("docker://{}/{repository_and_tag}", self.addr)
    }

    /// The storage root directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The config file the registry runs with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The user and password clients log in with, if auth is on.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(user, password)| (user.as_str(), password.as_str()))
    }

    /// A client for this registry with its credentials (and CA).
    pub fn client(&self) -> &RegistryClient {
        &self.client
    }

    /// The digest of the manifest the registry holds for `reference`.
    pub async fn manifest_digest(&self, repository: &str, reference: &str) -> client::Result<String> {
        self.client.manifest_digest(repository, reference).await
    }

    /// Everything the registry printed so far (stdout and stderr).
    pub fn logs(&self) -> String {
        read_log(&self.log_path)
    }

    /// The access-log lines of requests whose line contains `needle`, e.g.
    /// `"GET /v2/lab/hello/manifests/"`.
    pub fn access_log_lines(&self, needle: &str) -> Vec<String> {
        self.logs()
            .lines()
            .filter(|line| line.contains("HTTP/1.1\"") && line.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// Polls until `/v2/` answers 200 or 401, the process exits, or
/// [`READY_TIMEOUT`] passes.
async fn wait_ready(child: &mut Child, client: &RegistryClient, log_path: &Path) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("no probe yet");
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().map_err(io_error("poll docker-registry"))? {
            return Err(Error::Exited {
                status,
                logs: read_log(log_path),
            });
        }
        match tokio::time::timeout(PROBE_TIMEOUT, client.ping()).await {
            Ok(Ok(status)) if status == 200 || status == 401 => return Ok(()),
            Ok(Ok(status)) => last = format!("status {status}"),
            Ok(Err(error)) => last = error.to_string(),
            Err(_) => last = format!("no answer within {PROBE_TIMEOUT:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(Error::NotReady {
        last,
        logs: read_log(log_path),
    })
}

/// SIGKILLs `child` and reaps it, waiting at most [`REAP_TIMEOUT`].
fn kill(child: &mut Child) {
    let _ = child.kill();
    let deadline = Instant::now() + REAP_TIMEOUT;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn read_log(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|error| format!("<cannot read {}: {error}>", path.display()))
}

fn config(options: &RegistryOptions, addr: SocketAddr, data_dir: &Path, auth: Option<Value>) -> Value {
    let mut http = json!({
        "addr": addr.to_string(),
        "secret": "testing-http-secret",
        "relativeurls": options.relative_urls,
    });
    if let Some(tls) = &options.tls {
        http["tls"] = json!({"certificate": tls.cert, "key": tls.key});
    }
    let mut config = json!({
        "version": "0.1",
        "log": {"level": options.log_level, "formatter": "text"},
        "storage": {
            "filesystem": {"rootdirectory": data_dir},
            "delete": {"enabled": true},
            "maintenance": {"uploadpurging": {"enabled": false}},
        },
        "http": http,
    });
    if let Some(auth) = auth {
        config["auth"] = auth;
    }
    config
}

fn auth_config(auth: &RegistryAuth, dir: &Path) -> Result<Option<Value>> {
    Ok(match auth {
        RegistryAuth::None => None,
        RegistryAuth::Htpasswd { user, password } => {
            let path = dir.join("htpasswd");
            fs::write(&path, htpasswd_entry(user, password)?).map_err(io_error("write the htpasswd file"))?;
            Some(json!({"htpasswd": {"realm": "testing-registry", "path": path}}))
        }
        RegistryAuth::Token(token) => Some(json!({"token": {
            "realm": token.realm,
            "service": token.service,
            "issuer": token.issuer,
            "rootcertbundle": token.rootcertbundle,
        }})),
    })
}

/// A bcrypt `user:hash` line from `htpasswd -nbB` at the lowest cost: the
/// registry checks it on every request.
fn htpasswd_entry(user: &str, password: &str) -> Result<String> {
    let output = Command::new(program::find("htpasswd")?)
        .args(["-nbB", "-C", "4", user, password])
        .stdin(Stdio::null())
        .output()
        .map_err(io_error("run htpasswd"))?;
    if !output.status.success() {
        return Err(Error::Htpasswd {
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned() + "\n")
}

/// A port nothing listens on right now. NB: another process may take it
/// before the registry binds it; [`Registry::start`] retries then.
fn free_port(ip: IpAddr) -> Result<SocketAddr> {
    let listener = TcpListener::bind((ip, 0)).map_err(io_error("find a free port"))?;
    listener.local_addr().map_err(io_error("find a free port"))
}

/// A free port on `ip` in the network namespace `netns`.
fn free_port_in(netns: &str, ip: IpAddr) -> Result<SocketAddr> {
    let output = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .args(["python3", "-c"])
        .arg("import socket, sys; s = socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])")
        .arg(ip.to_string())
        .output()
        .map_err(io_error("find a free port in the namespace"))?;
    let port = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse::<u16>()
        .map_err(|_| Error::Io {
            action: format!("find a free port in {netns}"),
            source: io::Error::other(String::from_utf8_lossy(&output.stderr).into_owned()),
        })?;
    Ok(SocketAddr::new(ip, port))
}

fn spawn(program: &Path, netns: Option<&str>, config: &Path, log_path: &Path, dir: &Path) -> Result<Child> {
    let log = File::create(log_path).map_err(io_error("create the registry log"))?;
    let stderr = log.try_clone().map_err(io_error("share the registry log"))?;
    let mut command = match netns {
        None => Command::new(program),
        Some(netns) => {
            let mut command = Command::new("nsenter");
            command.arg(format!("--net=/run/netns/{netns}")).arg(program);
            command
        }
    };
    command
        .arg("serve")
        .arg(config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr);
    // NB: REGISTRY_* variables override the config file.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("REGISTRY_") {
            command.env_remove(name);
        }
    }
    command.spawn().map_err(io_error("start docker-registry"))
}

fn io_error(action: &str) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        action: action.to_owned(),
        source,
    }
}
