//! Load benchmark: many connections at once and a long mixed soak, through
//! the release `connectors proxy` in both modes, against a real registry
//! (CNCF distribution, htpasswd) on loopback.
//!
//! 1. **Concurrency**: 1,000 client connections to reverse mode at once, each
//!    authenticating and GETting the manifest, all held open together, then
//!    each GETting a blob and checking its digest; then the same through
//!    forward mode with absolute-form requests. Proxy RSS and open fds are
//!    sampled every 100 ms.
//! 2. **Soak**: 16 workers loop over pulls and pushes of fresh 256 KiB
//!    blobs (a manifest now and then) through both modes for `LOAD_SOAK_SECONDS` (600; 60 with `-- --quick`); every 10 s a
//!    row of requests/s, MiB/s, errors, proxy RSS, fds and CPU.
//!
//! Every request has a timeout and every phase a deadline, so the run stops
//! itself. Writes `bench/results/load.md`. Run with `cargo bench --bench
//! load`. Needs `bash .ci/install` (docker-registry, skopeo, htpasswd).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderMap, HeaderValue, LOCATION, PROXY_AUTHORIZATION,
};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use testing::client::MANIFEST_ACCEPT;
use testing::digest::Sha256;
use testing::image::{OCI_LAYER_GZIP, OCI_MANIFEST};
use testing::{
    Blob, CopyOptions, ImageDigests, OciLayout, Registry, RegistryAccess, RegistryOptions, Skopeo, StoreYaml,
};
use tokio::net::TcpStream;
use tokio::time::timeout;

#[allow(dead_code)]
mod common;
use common::*;

const USER: &str = "robot$load";
const PASSWORD: &str = "load-Pa55-8d21";
const CALLER_TOKEN: &str = "load-caller-token-93fe";
const NAMESPACE: &str = "team";
const CONNECTOR: &str = "lab";
const REPOSITORY: &str = "lab/load";
const TAG: &str = "v1";
/// The image's layers: two relayed with splice(2) (1 MiB and over), one not.
const LAYER_SIZES: [u64; 3] = [4 << 20, 1 << 20, 64 << 10];
/// Client connections per mode in the concurrency phase.
const CONNECTIONS: usize = 1000;
/// Concurrent workers in the soak.
const SOAK_WORKERS: usize = 16;
/// The size of each blob a soak worker pushes.
const PUSH_SIZE: usize = 256 << 10;
/// A soak worker also PUTs a manifest after every this many blob pushes.
const MANIFEST_EVERY: u64 = 4;
/// The fd limit the proxy needs for 1,000 clients, their upstream
/// connections and splice pipes, with room to spare.
const WANTED_FD_LIMIT: u64 = 20_000;
const MIB: f64 = (1u64 << 20) as f64;

/// Time for a TCP connect and HTTP/1 handshake (1,000 at once included).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for one request, its whole answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for every connection of the concurrency phase to reach the barrier.
const SETUP_DEADLINE: Duration = Duration::from_secs(120);
/// Time for every blob GET of the concurrency phase after the barrier.
const TRANSFER_DEADLINE: Duration = Duration::from_secs(180);
/// How long the 1,000 connections stay open together, idle.
const HOLD: Duration = Duration::from_secs(2);
/// Time for soak workers to finish their last operation after the deadline.
const STOP_DEADLINE: Duration = Duration::from_secs(120);
/// How often the soak writes a row.
const ROW_INTERVAL: Duration = Duration::from_secs(10);
/// How often RSS and fds are sampled for peaks.
const PEAK_INTERVAL: Duration = Duration::from_millis(100);
/// How long the proxy may take to close idle connections after the soak:
/// its upstream pool keeps idle connections 90 s, and hyper-util's reaper
/// checks every 90 s, so one may live almost 180 s.
const DRAIN_DEADLINE: Duration = Duration::from_secs(200);

struct Settings {
    quick: bool,
    soak: Duration,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let quick = std::env::args().any(|a| a == "--quick");
        let seconds = match std::env::var("LOAD_SOAK_SECONDS") {
            Ok(value) => value
                .trim()
                .parse::<u64>()
                .with_context(|| format!("LOAD_SOAK_SECONDS={value:?} is not a number of seconds"))?,
            Err(_) if quick => 60,
            Err(_) => 600,
        };
        Ok(Self {
            quick,
            soak: Duration::from_secs(seconds.max(1)),
        })
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("load benchmark: {error:#}");
            std::process::exit(2);
        }
    };
    // NB: the clients get both cores, like the proxy and the registry.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(&settings)) {
        Ok((report, clean)) => {
            let path = write_results("load.md", &report);
            println!("{report}\nwritten to {}", path.display());
            if !clean {
                eprintln!("load benchmark: requests failed; see the errors above");
                std::process::exit(1);
            }
        }
        Err(error) => {
            eprintln!("load benchmark failed: {error:#}");
            std::process::exit(1);
        }
    }
}

/// Returns the report and whether every request succeeded.
async fn run(settings: &Settings) -> anyhow::Result<(String, bool)> {
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    // NB: read before the run: cargo built the binary just before it started.
    let revision = revision();
    let binary = connectors_binary();
    let own_fd_limit = fd_limit("self");
    if own_fd_limit.is_some_and(|limit| limit < WANTED_FD_LIMIT) {
        eprintln!("warning: the open-file limit is {own_fd_limit:?}, under {WANTED_FD_LIMIT}");
    }
    let lab = tempfile::tempdir()?;

    // The registry and the image, pushed directly with the real credential.
    let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD)).await?;
    let layout = OciLayout::new(&lab.path().join("layout"))?;
    let image = layout.add_image(TAG, &LAYER_SIZES, 61)?;
    Skopeo::new()?
        .copy(
            &layout.reference(TAG),
            &registry.docker_reference(&format!("{REPOSITORY}:{TAG}")),
            &CopyOptions::default().dest(RegistryAccess::plain_http().creds(USER, PASSWORD)),
        )
        .await
        .context("push the image")?;

    // The proxy, both modes, standalone.
    let (connectors, reverse_addr) = start_connectors(&binary, lab.path(), &registry)?;
    let pid = connectors.pid();
    let processes = Processes {
        proxy: pid,
        registry: registry.pid(),
    };
    let proxy_fd_limit = fd_limit(&pid.to_string());
    let reverse = Route::reverse(reverse_addr, registry.addr());
    let forward = Route::forward(connectors.addr, registry.addr());

    // Both modes serve the image (and the page cache is warm).
    let tally = Tally::default();
    for route in [&reverse, &forward] {
        let mut connection = Connection::new(route.proxy);
        pull(&mut connection, route, &image, &tally)
            .await
            .with_context(|| format!("a first pull through {} mode", route.mode.name()))?;
    }
    let idle = (memory(pid).1, open_fds(pid));

    // 1. Many connections at once.
    let mut bursts = Vec::new();
    for route in [&reverse, &forward] {
        let counted_before = Counted::fetch(reverse_addr).await.unwrap_or_default();
        let mut burst = burst(route, &image, processes).await?;
        burst.counted = Counted::since_fetched(reverse_addr, &counted_before).await;
        eprintln!(
            "{:>8}: {} of {} connected, {} requests ok, {} errors, {:.1} s, peak {:.1} MiB, {} fds",
            route.mode.name(),
            burst.established,
            burst.connections,
            burst.requests_ok,
            burst.errors.count,
            burst.wall_seconds,
            burst.peak.rss as f64 / MIB,
            burst.peak.fds
        );
        bursts.push(burst);
    }

    // 2. The soak.
    let counted_before = Counted::fetch(reverse_addr).await.unwrap_or_default();
    let mut soak = soak(settings, [&reverse, &forward], &image, processes, idle.1).await?;
    soak.counted = Counted::since_fetched(reverse_addr, &counted_before).await;

    let warnings: Vec<String> = connectors
        .logs()
        .into_iter()
        .filter(|line| line.contains("\"level\":\"WARN\"") || line.contains("\"level\":\"ERROR\""))
        .collect();
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let clean = bursts.iter().all(|b| b.errors.count == 0) && soak.errors.count == 0;
    let report = render(&Rendered {
        settings,
        revision: &revision,
        binary: &binary,
        image: &image,
        fd_limits: (own_fd_limit, proxy_fd_limit),
        idle,
        bursts: &bursts,
        soak: &soak,
        warnings: &warnings,
        load: (load_before.trim(), load_after.trim()),
    });
    Ok((report, clean))
}

/// `connectors proxy` standalone with reverse mode on a free loopback port
/// and forward mode on another; returns it (its `addr` is forward mode's)
/// and reverse mode's address.
fn start_connectors(binary: &Path, dir: &Path, registry: &Registry) -> anyhow::Result<(Connectors, SocketAddr)> {
    let store = StoreYaml::new(NAMESPACE)
        .basic_auth("robot", USER, PASSWORD)
        .connector(CONNECTOR, &registry.url(), "robot", None)
        .build();
    let (store_path, tokens, state) = (dir.join("store.yaml"), dir.join("tokens.csv"), dir.join("state"));
    std::fs::write(&store_path, store)?;
    std::fs::write(
        &tokens,
        format!("{CALLER_TOKEN},system:serviceaccount:{NAMESPACE}:load,uid-1\n"),
    )?;
    let mut last_error = None;
    for _attempt in 0..3 {
        let reverse = free_port()?;
        let listen = reverse.to_string();
        let args = [
            "proxy".as_ref(),
            // NB: the registry listens on loopback.
            "--egress-allow".as_ref(),
            "127.0.0.0/8".as_ref(),
            "--store".as_ref(),
            store_path.as_os_str(),
            "--token-auth-file".as_ref(),
            tokens.as_os_str(),
            "--state-dir".as_ref(),
            state.as_os_str(),
            "--listen".as_ref(),
            listen.as_ref(),
            "--forward-listen".as_ref(),
            "127.0.0.1:0".as_ref(),
        ];
        // NB: reverse mode binds before forward mode logs that it listens.
        match Connectors::start(binary, &args, "forward proxy listening") {
            Ok(connectors) => return Ok((connectors, reverse)),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.expect("an attempt ran"))
}

/// The processes whose CPU is measured.
#[derive(Clone, Copy)]
struct Processes {
    proxy: u32,
    registry: u32,
}

/// CPU seconds used so far: the proxy, the registry, this bench (the
/// clients) and the whole machine (busy time).
#[derive(Clone, Copy, Default)]
struct Cpu {
    proxy: f64,
    registry: f64,
    clients: f64,
    machine: f64,
}

impl Processes {
    fn cpu(&self) -> Cpu {
        Cpu {
            proxy: cpu_seconds(&[self.proxy.to_string()]),
            registry: cpu_seconds(&[self.registry.to_string()]),
            clients: cpu_seconds(&["self".to_owned()]),
            machine: machine_busy_seconds(),
        }
    }
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;

    fn sub(self, earlier: Cpu) -> Cpu {
        Cpu {
            proxy: self.proxy - earlier.proxy,
            registry: self.registry - earlier.registry,
            clients: self.clients - earlier.clients,
            machine: self.machine - earlier.machine,
        }
    }
}

/// What the proxy counted itself (`/metrics`): responses by mode and status
/// class, and blob bodies relayed with splice(2).
#[derive(Clone, Default)]
struct Counted {
    responses: std::collections::BTreeMap<(String, String), f64>,
    zero_copy_relays: f64,
}

impl Counted {
    async fn fetch(proxy: SocketAddr) -> anyhow::Result<Self> {
        let mut connection = Connection::new(proxy);
        let request = Request::get("/metrics")
            .header(HOST, proxy.to_string())
            .body(Full::new(Bytes::new()))?;
        let answer = connection.exchange(request).await?;
        ensure_status(&answer, StatusCode::OK, "/metrics")?;
        let text = String::from_utf8_lossy(&answer.body);
        let mut counted = Self::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let label = |name: &str| {
                let start = series.find(&format!("{name}=\""))? + name.len() + 2;
                Some(series[start..].split('"').next()?.to_owned())
            };
            if series.starts_with("connectors_proxy_requests") {
                let key = (label("mode").unwrap_or_default(), label("status").unwrap_or_default());
                *counted.responses.entry(key).or_default() += value;
            } else if series.starts_with("connectors_proxy_zero_copy_relays") {
                counted.zero_copy_relays += value;
            }
        }
        Ok(counted)
    }

    /// What the proxy counted since `earlier`, fetched now (`n/a` with the
    /// reason when /metrics cannot be read).
    async fn since_fetched(proxy: SocketAddr, earlier: &Counted) -> String {
        match Self::fetch(proxy).await {
            Ok(counted) => counted.since(earlier),
            Err(error) => format!("n/a ({error:#})"),
        }
    }

    /// What was counted since `earlier`, e.g. `reverse 2xx: 2000`.
    fn since(&self, earlier: &Counted) -> String {
        let mut parts: Vec<String> = self
            .responses
            .iter()
            .map(|(key, value)| (key, value - earlier.responses.get(key).copied().unwrap_or(0.0)))
            .filter(|(_, delta)| *delta > 0.0)
            .map(|((mode, status), delta)| format!("{mode} {status}: {delta:.0}"))
            .collect();
        parts.push(format!(
            "zero-copy: {:.0}",
            self.zero_copy_relays - earlier.zero_copy_relays
        ));
        parts.join(", ")
    }
}

/// The largest VmRSS and fd count seen.
#[derive(Clone, Copy, Default)]
struct Peak {
    rss: u64,
    fds: usize,
}

/// Samples a process's VmRSS and open fds every 100 ms on its own thread, so
/// a busy runtime does not skip samples.
struct PeakSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Peak>,
}

impl PeakSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut peak = Peak::default();
                while !stop.load(Ordering::Relaxed) {
                    peak.rss = peak.rss.max(memory(pid).1);
                    peak.fds = peak.fds.max(open_fds(pid));
                    std::thread::sleep(PEAK_INTERVAL);
                }
                peak
            })
        };
        Self { stop, thread }
    }

    fn finish(self) -> Peak {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

// ---- HTTP: one HTTP/1.1 keep-alive connection per client ----

type Body = Full<Bytes>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Reverse,
    Forward,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Reverse => "reverse",
            Mode::Forward => "forward",
        }
    }
}

/// How a client reaches the registry's repository through the proxy.
#[derive(Clone)]
struct Route {
    mode: Mode,
    proxy: SocketAddr,
    registry: SocketAddr,
    credential: HeaderValue,
}

impl Route {
    /// `/v2/namespaces/<ns>/connectors/<name>/…` with the caller's token as
    /// the Basic password.
    fn reverse(proxy: SocketAddr, registry: SocketAddr) -> Self {
        Self {
            mode: Mode::Reverse,
            proxy,
            registry,
            credential: basic("load", CALLER_TOKEN),
        }
    }

    /// Absolute-form `http://<registry>/v2/…` with the connector list and
    /// the caller's token in `Proxy-Authorization`.
    fn forward(proxy: SocketAddr, registry: SocketAddr) -> Self {
        Self {
            mode: Mode::Forward,
            proxy,
            registry,
            credential: basic(&format!("{NAMESPACE}/{CONNECTOR}"), CALLER_TOKEN),
        }
    }

    /// The request target for `rest` (`manifests/v1`, `blobs/<digest>`, …)
    /// of the repository.
    fn target(&self, rest: &str) -> String {
        match self.mode {
            Mode::Reverse => format!("/v2/namespaces/{NAMESPACE}/connectors/{CONNECTOR}/{REPOSITORY}/{rest}"),
            Mode::Forward => format!("http://{}/v2/{REPOSITORY}/{rest}", self.registry),
        }
    }

    fn request(&self, method: Method, target: &str, body: Bytes) -> Request<Body> {
        let (host, credential_header) = match self.mode {
            Mode::Reverse => (self.proxy, AUTHORIZATION),
            Mode::Forward => (self.registry, PROXY_AUTHORIZATION),
        };
        let mut request = Request::builder()
            .method(method.clone())
            .uri(target)
            .header(HOST, host.to_string())
            .header(credential_header, self.credential.clone());
        if method == Method::PUT || method == Method::POST {
            request = request.header(CONTENT_LENGTH, body.len());
        }
        request.body(Full::new(body)).expect("a valid request")
    }
}

/// A keep-alive connection to the proxy, opened on first use and reopened
/// (and counted) when the server closed it.
struct Connection {
    addr: SocketAddr,
    sender: Option<SendRequest<Body>>,
    opened: u64,
}

/// A whole answer: status, headers, the body's digest and its first 64 KiB.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    digest: testing::Digest,
    body: Vec<u8>,
}

impl Connection {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            sender: None,
            opened: 0,
        }
    }

    fn is_open(&self) -> bool {
        self.sender.as_ref().is_some_and(|sender| !sender.is_closed())
    }

    async fn open(&mut self) -> anyhow::Result<()> {
        if self.is_open() {
            return Ok(());
        }
        self.sender = None;
        let addr = self.addr;
        let sender = timeout(CONNECT_TIMEOUT, async {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            anyhow::Ok(sender)
        })
        .await
        .with_context(|| format!("connect to {addr}: no connection within {CONNECT_TIMEOUT:?}"))?
        .with_context(|| format!("connect to {addr}"))?;
        self.sender = Some(sender);
        self.opened += 1;
        Ok(())
    }

    /// Sends the request and reads the whole answer within REQUEST_TIMEOUT.
    /// A failed connection is dropped so the next request opens a new one.
    async fn exchange(&mut self, request: Request<Body>) -> anyhow::Result<Answer> {
        let what = format!("{} {}", request.method(), request.uri());
        self.open().await?;
        let sender = self.sender.as_mut().expect("just opened");
        let answer = timeout(REQUEST_TIMEOUT, async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let (parts, mut body) = response.into_parts();
            let mut hasher = Sha256::default();
            let mut kept = Vec::new();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    hasher.update(&data);
                    if kept.len() < 64 << 10 {
                        kept.extend_from_slice(&data[..data.len().min((64 << 10) - kept.len())]);
                    }
                }
            }
            anyhow::Ok(Answer {
                status,
                headers: parts.headers,
                digest: hasher.finish(),
                body: kept,
            })
        })
        .await;
        match answer {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => {
                self.sender = None;
                Err(error.context(what))
            }
            Err(_) => {
                self.sender = None;
                bail!("{what}: no complete answer within {REQUEST_TIMEOUT:?}")
            }
        }
    }
}

/// Requests that succeeded, bytes moved and failures, shared by clients.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    bytes: AtomicU64,
    errors: ErrorLog,
}

impl Tally {
    fn ok(&self, bytes: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

fn ensure_status(answer: &Answer, expected: StatusCode, what: &str) -> anyhow::Result<()> {
    ensure!(
        answer.status == expected,
        "{what}: {} (expected {expected}): {}",
        answer.status,
        String::from_utf8_lossy(&answer.body[..answer.body.len().min(300)])
    );
    Ok(())
}

/// GETs the image's manifest and checks its digest.
async fn get_manifest(
    connection: &mut Connection,
    route: &Route,
    image: &ImageDigests,
    tally: &Tally,
) -> anyhow::Result<()> {
    let target = route.target(&format!("manifests/{TAG}"));
    let mut request = route.request(Method::GET, &target, Bytes::new());
    request
        .headers_mut()
        .insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
    let answer = connection.exchange(request).await?;
    ensure_status(&answer, StatusCode::OK, &target)?;
    ensure!(
        answer.digest.digest == image.manifest.digest,
        "{target}: manifest {} is not {}",
        answer.digest.digest,
        image.manifest.digest
    );
    tally.ok(answer.digest.size);
    Ok(())
}

/// GETs a blob and checks its size and digest.
async fn get_blob(connection: &mut Connection, route: &Route, blob: &Blob, tally: &Tally) -> anyhow::Result<()> {
    let target = route.target(&format!("blobs/{}", blob.digest));
    let answer = connection
        .exchange(route.request(Method::GET, &target, Bytes::new()))
        .await?;
    ensure_status(&answer, StatusCode::OK, &target)?;
    ensure!(
        answer.digest.digest == blob.digest && answer.digest.size == blob.size,
        "{target}: {} bytes digesting to {}",
        answer.digest.size,
        answer.digest.digest
    );
    tally.ok(answer.digest.size);
    Ok(())
}

/// The manifest, then every blob it names (config and layers).
async fn pull(connection: &mut Connection, route: &Route, image: &ImageDigests, tally: &Tally) -> anyhow::Result<()> {
    get_manifest(connection, route, image, tally).await?;
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        get_blob(connection, route, blob, tally).await?;
    }
    Ok(())
}

/// Pushes `content` as a blob: POST opens an upload, then one PUT to the
/// `Location` the proxy answered, with `?digest=`.
async fn push_blob(
    connection: &mut Connection,
    route: &Route,
    content: Bytes,
    media_type: &str,
    tally: &Tally,
) -> anyhow::Result<Blob> {
    let digest = testing::sha256_bytes(&content);
    let target = route.target("blobs/uploads/");
    let answer = connection
        .exchange(route.request(Method::POST, &target, Bytes::new()))
        .await?;
    ensure_status(&answer, StatusCode::ACCEPTED, &target)?;
    let location = answer
        .headers
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .with_context(|| format!("{target}: 202 without a Location"))?;
    let upload = match route.mode {
        // NB: the proxy maps Location into its own namespace; it may be
        // absolute (http://proxy/v2/…) or a path.
        Mode::Reverse => &location[location.find("/v2/").context("an upload Location without /v2/")?..],
        Mode::Forward => location,
    };
    tally.ok(0);
    let separator = if upload.contains('?') { '&' } else { '?' };
    let put = format!("{upload}{separator}digest={digest}");
    let size = content.len() as u64;
    let answer = connection.exchange(route.request(Method::PUT, &put, content)).await?;
    ensure_status(&answer, StatusCode::CREATED, "blob upload PUT")?;
    let stored = answer
        .headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok());
    ensure!(
        stored == Some(digest.as_str()),
        "blob upload: Docker-Content-Digest {stored:?}, not {digest}"
    );
    tally.ok(size);
    Ok(Blob {
        media_type: media_type.to_owned(),
        digest,
        size,
    })
}

/// PUTs an OCI manifest of the image's config and `layer` as `tag`.
async fn put_manifest(
    connection: &mut Connection,
    route: &Route,
    config: &Blob,
    layer: &Blob,
    tag: &str,
    tally: &Tally,
) -> anyhow::Result<()> {
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
    }))?;
    let digest = testing::sha256_bytes(&manifest);
    let size = manifest.len() as u64;
    let target = route.target(&format!("manifests/{tag}"));
    let mut request = route.request(Method::PUT, &target, Bytes::from(manifest));
    request
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(OCI_MANIFEST));
    let answer = connection.exchange(request).await?;
    ensure_status(&answer, StatusCode::CREATED, &target)?;
    let stored = answer
        .headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok());
    ensure!(
        stored == Some(digest.as_str()),
        "{target}: Docker-Content-Digest {stored:?}, not {digest}"
    );
    tally.ok(size);
    Ok(())
}

// ---- 1. Many connections at once ----

struct Burst {
    mode: &'static str,
    connections: usize,
    established: usize,
    /// Connections still open when the barrier released them.
    held: usize,
    requests_ok: u64,
    errors: Failures,
    bytes: u64,
    /// Spawn to every connection past its manifest GET.
    setup_seconds: f64,
    wall_seconds: f64,
    peak: Peak,
    /// VmHWM: this phase's when it could be reset, else the process's.
    high_water: u64,
    high_water_reset: bool,
    fds_held: usize,
    /// RSS and fds 3 s after every client closed.
    after: (u64, usize),
    cpu: Cpu,
    /// What the proxy counted in its metrics meanwhile.
    counted: String,
}

/// What one client of the burst did.
#[derive(Default)]
struct Outcome {
    connected: bool,
    held: bool,
}

/// 1,000 connections at once through `route`: each connects and GETs the
/// manifest; all wait at a barrier and stay open together; then each GETs a
/// layer (round robin) and checks its digest.
async fn burst(route: &Route, image: &ImageDigests, processes: Processes) -> anyhow::Result<Burst> {
    let pid = processes.proxy;
    let cpu_before = processes.cpu();
    let high_water_reset = reset_high_water(pid);
    let sampler = PeakSampler::start(pid);
    let tally = Arc::new(Tally::default());
    let barrier = Arc::new(tokio::sync::Barrier::new(CONNECTIONS + 1));
    let (go, going) = tokio::sync::watch::channel(false);
    let image = Arc::new(image.clone());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..CONNECTIONS {
        let (route, image, tally, barrier) = (route.clone(), image.clone(), tally.clone(), barrier.clone());
        let mut going = going.clone();
        tasks.spawn(async move {
            let mut outcome = Outcome::default();
            let mut connection = Connection::new(route.proxy);
            let setup = async {
                connection.open().await?;
                outcome.connected = true;
                get_manifest(&mut connection, &route, &image, &tally).await
            }
            .await;
            // NB: a client that failed still meets the others at the barrier.
            barrier.wait().await;
            let _ = going.wait_for(|go| *go).await;
            if let Err(error) = setup {
                tally
                    .errors
                    .record(format!("{} #{index} setup: {error:#}", route.mode.name()));
                return outcome;
            }
            outcome.held = connection.is_open();
            if !outcome.held {
                tally.errors.record(format!(
                    "{} #{index}: the proxy closed the connection while it was held",
                    route.mode.name()
                ));
                return outcome;
            }
            let layer = &image.layers[index % image.layers.len()];
            if let Err(error) = get_blob(&mut connection, &route, layer, &tally).await {
                tally
                    .errors
                    .record(format!("{} #{index} blob: {error:#}", route.mode.name()));
            }
            outcome
        });
    }
    let collect = async {
        timeout(SETUP_DEADLINE, barrier.wait())
            .await
            .context("the connections did not all reach the barrier")?;
        let setup_seconds = started.elapsed().as_secs_f64();
        let mut fds_held = open_fds(pid);
        tokio::time::sleep(HOLD).await;
        fds_held = fds_held.max(open_fds(pid));
        let _ = go.send(true);
        let mut outcomes = Vec::new();
        timeout(TRANSFER_DEADLINE, async {
            while let Some(done) = tasks.join_next().await {
                outcomes.push(done?);
            }
            anyhow::Ok(())
        })
        .await
        .context("the blob GETs did not all finish")??;
        anyhow::Ok((setup_seconds, fds_held, outcomes))
    };
    let collected = collect.await;
    let wall_seconds = started.elapsed().as_secs_f64();
    let cpu = processes.cpu() - cpu_before;
    let peak = sampler.finish();
    let high_water = memory(pid).0;
    tasks.abort_all();
    let (setup_seconds, fds_held, outcomes) = collected?;
    // Every client's connection is closed now; let the proxy notice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(Burst {
        mode: route.mode.name(),
        connections: CONNECTIONS,
        established: outcomes.iter().filter(|o| o.connected).count(),
        held: outcomes.iter().filter(|o| o.held).count(),
        requests_ok: tally.requests.load(Ordering::Relaxed),
        errors: tally.errors.snapshot(),
        bytes: tally.bytes.load(Ordering::Relaxed),
        setup_seconds,
        wall_seconds,
        peak,
        high_water,
        high_water_reset,
        fds_held,
        after: (memory(pid).1, open_fds(pid)),
        cpu,
        counted: String::new(),
    })
}

// ---- 2. The soak ----

/// One 10-second row of the soak.
struct Row {
    at: f64,
    requests_per_second: f64,
    mib_per_second: f64,
    errors: u64,
    rss: u64,
    fds: usize,
    /// The proxy's, since the soak started.
    cpu_seconds: f64,
    /// Shares of one core over the interval.
    cpu_share: Cpu,
}

/// What a soak worker does next, in which mode.
#[derive(Clone, Copy)]
enum Operation {
    Pull(Mode),
    Push(Mode),
}

impl Operation {
    /// Two pulls per mode for every push, pushes alternating between modes.
    fn at(step: u64) -> Self {
        match step % 6 {
            0 | 3 => Operation::Pull(Mode::Reverse),
            1 | 4 => Operation::Pull(Mode::Forward),
            2 => Operation::Push(Mode::Reverse),
            _ => Operation::Push(Mode::Forward),
        }
    }

    fn name(self) -> String {
        match self {
            Operation::Pull(mode) => format!("{} pull", mode.name()),
            Operation::Push(mode) => format!("{} push", mode.name()),
        }
    }
}

/// Operations done, by kind and mode, shared by the workers.
#[derive(Default)]
struct Operations {
    reverse_pulls: AtomicU64,
    forward_pulls: AtomicU64,
    reverse_pushes: AtomicU64,
    forward_pushes: AtomicU64,
    manifests: AtomicU64,
    reopened: AtomicU64,
}

impl Operations {
    fn done(&self, operation: Operation) -> &AtomicU64 {
        match operation {
            Operation::Pull(Mode::Reverse) => &self.reverse_pulls,
            Operation::Pull(Mode::Forward) => &self.forward_pulls,
            Operation::Push(Mode::Reverse) => &self.reverse_pushes,
            Operation::Push(Mode::Forward) => &self.forward_pushes,
        }
    }
}

struct Soak {
    duration: Duration,
    /// Until the last worker stopped.
    elapsed: f64,
    requests: u64,
    bytes: u64,
    errors: Failures,
    reverse_pulls: u64,
    forward_pulls: u64,
    reverse_pushes: u64,
    forward_pushes: u64,
    manifests: u64,
    reopened: u64,
    rows: Vec<Row>,
    before: (u64, usize),
    peak: Peak,
    high_water: u64,
    cpu: Cpu,
    /// What the proxy counted in its metrics meanwhile.
    counted: String,
    /// RSS and fds once the proxy's idle connections drained, and how long
    /// that took (None: not back to the idle proxy's fds in time).
    drained: (u64, usize, Option<f64>),
    /// The idle proxy's fds at the start of the run.
    idle_fds: usize,
}

async fn soak(
    settings: &Settings,
    routes: [&Route; 2],
    image: &ImageDigests,
    processes: Processes,
    idle_fds: usize,
) -> anyhow::Result<Soak> {
    let pid = processes.proxy;
    let before = (memory(pid).1, open_fds(pid));
    reset_high_water(pid);
    let sampler = PeakSampler::start(pid);
    let tally = Arc::new(Tally::default());
    let operations = Arc::new(Operations::default());
    let image = Arc::new(image.clone());
    let started = Instant::now();
    let deadline = started + settings.soak;
    // NB: pushed content differs from run to run even with a kept registry.
    let salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..SOAK_WORKERS {
        let (reverse, forward) = (routes[0].clone(), routes[1].clone());
        let (image, tally, operations) = (image.clone(), tally.clone(), operations.clone());
        workers.spawn(async move {
            let mut reverse_connection = Connection::new(reverse.proxy);
            let mut forward_connection = Connection::new(forward.proxy);
            let mut pushed = 0u64;
            let mut step = worker as u64;
            while Instant::now() < deadline {
                let operation = Operation::at(step);
                step += 1;
                let (Operation::Pull(mode) | Operation::Push(mode)) = operation;
                let (connection, route) = match mode {
                    Mode::Reverse => (&mut reverse_connection, &reverse),
                    Mode::Forward => (&mut forward_connection, &forward),
                };
                let done = match operation {
                    Operation::Pull(_) => pull(connection, route, &image, &tally).await,
                    Operation::Push(_) => {
                        let seed = salt ^ ((worker as u64) << 40) ^ pushed;
                        let content = Bytes::from(testing::image::random_bytes(PUSH_SIZE, seed));
                        let pushed_blob = push_blob(connection, route, content, OCI_LAYER_GZIP, &tally).await;
                        pushed += 1;
                        match pushed_blob {
                            Ok(layer) if pushed.is_multiple_of(MANIFEST_EVERY) => {
                                let tag = format!("soak-{worker}");
                                let put = put_manifest(connection, route, &image.config, &layer, &tag, &tally).await;
                                if put.is_ok() {
                                    operations.manifests.fetch_add(1, Ordering::Relaxed);
                                }
                                put
                            }
                            pushed_blob => pushed_blob.map(|_| ()),
                        }
                    }
                };
                match done {
                    Ok(()) => {
                        operations.done(operation).fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => tally.errors.record(format!(
                        "{:.1} s, worker {worker}, {}: {error:#}",
                        started.elapsed().as_secs_f64(),
                        operation.name()
                    )),
                }
            }
            // NB: each connection's first open is not a reopen.
            let reopened = (reverse_connection.opened + forward_connection.opened).saturating_sub(2);
            operations.reopened.fetch_add(reopened, Ordering::Relaxed);
        });
    }

    let mut rows = Vec::new();
    let cpu_at_start = processes.cpu();
    let mut previous = (started, 0u64, 0u64, cpu_at_start);
    let mut next = started + ROW_INTERVAL;
    loop {
        let at = next.min(deadline);
        tokio::time::sleep_until(at.into()).await;
        let now = Instant::now();
        let (requests, bytes, cpu) = (
            tally.requests.load(Ordering::Relaxed),
            tally.bytes.load(Ordering::Relaxed),
            processes.cpu(),
        );
        let seconds = now.duration_since(previous.0).as_secs_f64();
        let row = Row {
            at: now.duration_since(started).as_secs_f64(),
            requests_per_second: (requests - previous.1) as f64 / seconds,
            mib_per_second: (bytes - previous.2) as f64 / MIB / seconds,
            errors: tally.errors.count(),
            rss: memory(pid).1,
            fds: open_fds(pid),
            cpu_seconds: cpu.proxy - cpu_at_start.proxy,
            cpu_share: share(cpu - previous.3, seconds),
        };
        eprintln!(
            "soak {:>5.0} s: {:>6.0} req/s {:>7.1} MiB/s, {} errors, RSS {:.1} MiB, {} fds, CPU {:.0}%",
            row.at,
            row.requests_per_second,
            row.mib_per_second,
            row.errors,
            row.rss as f64 / MIB,
            row.fds,
            100.0 * row.cpu_share.proxy
        );
        rows.push(row);
        previous = (now, requests, bytes, cpu);
        if at >= deadline {
            break;
        }
        next += ROW_INTERVAL;
    }
    let stopped = timeout(STOP_DEADLINE, async {
        while let Some(done) = workers.join_next().await {
            done?;
        }
        anyhow::Ok(())
    })
    .await;
    if stopped.is_err() {
        workers.abort_all();
        tally
            .errors
            .record(format!("workers still busy {STOP_DEADLINE:?} after the deadline"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let peak = sampler.finish();
    let high_water = memory(pid).0;
    let cpu = processes.cpu() - cpu_at_start;
    stopped.unwrap_or(Ok(()))?;

    // Leak check: with every client gone, the proxy's fds go back to those
    // of the idle proxy at the start once its pooled upstream connections
    // expire.
    let drain_started = Instant::now();
    let drained = loop {
        let fds = open_fds(pid);
        if fds <= idle_fds {
            break (memory(pid).1, fds, Some(drain_started.elapsed().as_secs_f64()));
        }
        if drain_started.elapsed() >= DRAIN_DEADLINE {
            break (memory(pid).1, fds, None);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    Ok(Soak {
        duration: settings.soak,
        elapsed,
        requests: tally.requests.load(Ordering::Relaxed),
        bytes: tally.bytes.load(Ordering::Relaxed),
        errors: tally.errors.snapshot(),
        reverse_pulls: operations.reverse_pulls.load(Ordering::Relaxed),
        forward_pulls: operations.forward_pulls.load(Ordering::Relaxed),
        reverse_pushes: operations.reverse_pushes.load(Ordering::Relaxed),
        forward_pushes: operations.forward_pushes.load(Ordering::Relaxed),
        manifests: operations.manifests.load(Ordering::Relaxed),
        reopened: operations.reopened.load(Ordering::Relaxed),
        rows,
        before,
        peak,
        high_water,
        cpu,
        counted: String::new(),
        drained,
        idle_fds,
    })
}

/// CPU seconds over `seconds` of wall time, as shares of one core.
fn share(cpu: Cpu, seconds: f64) -> Cpu {
    Cpu {
        proxy: cpu.proxy / seconds,
        registry: cpu.registry / seconds,
        clients: cpu.clients / seconds,
        machine: cpu.machine / seconds,
    }
}

// ---- Report ----

struct Rendered<'a> {
    settings: &'a Settings,
    revision: &'a str,
    binary: &'a Path,
    image: &'a ImageDigests,
    fd_limits: (Option<u64>, Option<u64>),
    idle: (u64, usize),
    bursts: &'a [Burst],
    soak: &'a Soak,
    warnings: &'a [String],
    load: (&'a str, &'a str),
}

/// Cores, CPU model, memory and kernel of this machine.
fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / MIB)
}

fn render(r: &Rendered) -> String {
    let s = r.soak;
    let mut out = String::new();
    let limit = |l: Option<u64>| l.map_or_else(|| "unknown".to_owned(), |l| l.to_string());
    let _ = writeln!(out, "# Load benchmark\n");
    let _ = writeln!(
        out,
        "`cargo bench --bench load`{} on {}, {}, at {}. One `connectors proxy` (`{}`, standalone: a store file \
         and a static token file, reverse `--listen` and `--forward-listen` on loopback) in front of one registry \
         (`{}`, htpasswd, filesystem storage, plain HTTP) holding `{REPOSITORY}:{TAG}`: a config and layers of \
         {} bytes, pushed with skopeo and the real credential. Clients, proxy and registry share the machine. \
         Open-file limit: {} for the bench, {} for the proxy. Load average before: `{}`, after: `{}`.\n",
        if r.settings.quick { " (`-- --quick`)" } else { "" },
        machine(),
        now_utc(),
        r.revision,
        r.binary.display(),
        program_version("docker-registry", &["--version"]),
        r.image
            .layers
            .iter()
            .map(|l| l.size.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        limit(r.fd_limits.0),
        limit(r.fd_limits.1),
        r.load.0,
        r.load.1,
    );

    let _ = writeln!(
        out,
        "## {CONNECTIONS} connections at once\n\nPer mode, {CONNECTIONS} clients start together, each on its own \
         HTTP/1.1 keep-alive connection: connect, authenticate and GET the manifest (reverse: \
         `/v2/namespaces/{NAMESPACE}/connectors/{CONNECTOR}/…` with the caller token as the Basic password; \
         forward: absolute-form `GET http://<registry>/v2/…` with `Proxy-Authorization: Basic \
         {NAMESPACE}/{CONNECTOR}:<token>`). All wait at a barrier and stay open together for {} s, then each GETs \
         a layer (round robin over the three) and checks its sha256. Wall = first connect to last digest checked; \
         setup = until all {CONNECTIONS} were past their manifest. Peak RSS (VmRSS) and fds (`/proc/<pid>/fd`) \
         sampled every 100 ms; VmHWM reset (`clear_refs` 5) at the start of each phase. Before the first phase \
         the idle proxy had RSS {} MiB and {} fds.\n",
        HOLD.as_secs(),
        mib(r.idle.0),
        r.idle.1,
    );
    out.push_str(
        "| mode | connections | established | held open | requests ok | errors | setup s | wall s | MiB moved | peak RSS MiB | VmHWM MiB | peak fds | fds while held | after: RSS MiB / fds | CPU s: proxy / registry / clients |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n",
    );
    for b in r.bursts {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.0} | {} | {}{} | {} | {} | {} / {} | {:.1} / {:.1} / {:.1} |",
            b.mode,
            b.connections,
            b.established,
            b.held,
            b.requests_ok,
            b.errors.count,
            b.setup_seconds,
            b.wall_seconds,
            b.bytes as f64 / MIB,
            mib(b.peak.rss),
            mib(b.high_water),
            if b.high_water_reset { "" } else { " (process lifetime)" },
            b.peak.fds,
            b.fds_held,
            mib(b.after.0),
            b.after.1,
            b.cpu.proxy,
            b.cpu.registry,
            b.cpu.clients,
        );
    }
    out.push('\n');
    for b in r.bursts {
        let _ = writeln!(out, "- {}: the proxy counted {}", b.mode, b.counted);
    }
    for b in r.bursts.iter().filter(|b| !b.errors.first.is_empty()) {
        let _ = writeln!(out, "\nFirst errors, {}:\n", b.mode);
        for error in &b.errors.first {
            let _ = writeln!(out, "- `{error}`");
        }
    }

    let first = s.rows.first();
    let last = s.rows.last();
    let max_rss = s.rows.iter().map(|r| r.rss).max().unwrap_or(0);
    let max_fds = s.rows.iter().map(|r| r.fds).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "\n## Soak\n\n{SOAK_WORKERS} workers, each with one reverse-mode and one forward-mode keep-alive \
         connection, loop until the deadline over: a reverse-mode pull (manifest, config and every layer, each \
         digest-checked), a forward-mode pull (the same in absolute form), then a push of a fresh pseudo-random {} \
         KiB blob (POST `blobs/uploads/`, PUT to the `Location` answered with `?digest=`, the stored digest \
         checked), the same three again with the push in the other mode, and an OCI manifest referencing the \
         pushed blob PUT as `soak-<worker>` after every {MANIFEST_EVERY}th push. Every request has a {} s timeout. A row every {} s; CPU is the \
         proxy's utime + stime (share of one core over the row's interval).\n",
        PUSH_SIZE >> 10,
        REQUEST_TIMEOUT.as_secs(),
        ROW_INTERVAL.as_secs(),
    );
    let drained = match s.drained.2 {
        Some(seconds) => format!(
            "{} fds and RSS {} MiB {seconds:.0} s after the last client closed (the idle proxy had {} fds at the \
             start)",
            s.drained.1,
            mib(s.drained.0),
            s.idle_fds
        ),
        None => format!(
            "still {} fds (RSS {} MiB) {} s after the last client closed; the idle proxy had {} at the start",
            s.drained.1,
            mib(s.drained.0),
            DRAIN_DEADLINE.as_secs(),
            s.idle_fds
        ),
    };
    out.push_str("| | |\n|---|---|\n");
    let rows: Vec<(&str, String)> = vec![
        (
            "duration",
            format!("{} s (workers stopped after {:.1} s)", s.duration.as_secs(), s.elapsed),
        ),
        (
            "operations",
            format!(
                "{} reverse pulls, {} forward pulls, {} reverse pushes, {} forward pushes ({} with a manifest)",
                s.reverse_pulls, s.forward_pulls, s.reverse_pushes, s.forward_pushes, s.manifests
            ),
        ),
        ("requests ok", s.requests.to_string()),
        ("errors", s.errors.count.to_string()),
        ("client connections reopened", s.reopened.to_string()),
        ("mean req/s", format!("{:.0}", s.requests as f64 / s.elapsed)),
        ("mean MiB/s", format!("{:.1}", s.bytes as f64 / MIB / s.elapsed)),
        (
            "CPU s (% of one core)",
            format!(
                "proxy {:.1} ({:.0}%), registry {:.1} ({:.0}%), clients {:.1} ({:.0}%), machine busy {:.1} ({:.0}%)",
                s.cpu.proxy,
                100.0 * s.cpu.proxy / s.elapsed,
                s.cpu.registry,
                100.0 * s.cpu.registry / s.elapsed,
                s.cpu.clients,
                100.0 * s.cpu.clients / s.elapsed,
                s.cpu.machine,
                100.0 * s.cpu.machine / s.elapsed
            ),
        ),
        ("the proxy counted", s.counted.clone()),
        (
            "RSS MiB first / last / max row",
            format!(
                "{} / {} / {} (before the soak {}; sampled peak {}; VmHWM {})",
                first.map_or_else(String::new, |r| mib(r.rss)),
                last.map_or_else(String::new, |r| mib(r.rss)),
                mib(max_rss),
                mib(s.before.0),
                mib(s.peak.rss),
                mib(s.high_water)
            ),
        ),
        (
            "fds first / last / max row",
            format!(
                "{} / {} / {} (before the soak {}; sampled peak {})",
                first.map_or(0, |r| r.fds),
                last.map_or(0, |r| r.fds),
                max_fds,
                s.before.1,
                s.peak.fds
            ),
        ),
        ("after the soak", drained),
    ];
    for (name, value) in rows {
        let _ = writeln!(out, "| {name} | {value} |");
    }
    if !s.errors.first.is_empty() {
        let _ = writeln!(out, "\nFirst errors:\n");
        for error in &s.errors.first {
            let _ = writeln!(out, "- `{error}`");
        }
    }

    out.push_str(
        "\n### Time series\n\n| t (s) | req/s | MiB/s | errors so far | RSS MiB | fds | proxy CPU s | proxy CPU % | registry CPU % | clients CPU % | machine busy % |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in &s.rows {
        let _ = writeln!(
            out,
            "| {:.0} | {:.0} | {:.1} | {} | {} | {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} |",
            row.at,
            row.requests_per_second,
            row.mib_per_second,
            row.errors,
            mib(row.rss),
            row.fds,
            row.cpu_seconds,
            100.0 * row.cpu_share.proxy,
            100.0 * row.cpu_share.registry,
            100.0 * row.cpu_share.clients,
            100.0 * row.cpu_share.machine
        );
    }

    let _ = writeln!(
        out,
        "\n## Proxy warnings\n\n{} WARN or ERROR log lines over the whole run.",
        r.warnings.len()
    );
    for line in r.warnings.iter().take(QUOTED_ERRORS) {
        let _ = writeln!(out, "\n    {line}");
    }
    out
}
