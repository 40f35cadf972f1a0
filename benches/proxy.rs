//! Registry proxy benchmark. In one run, against the same real registry
//! (CNCF distribution, htpasswd, filesystem storage) and the same blobs, three
//! paths side by side: direct with the real credential, nginx configured as
//! the reference credential-injecting reverse proxy, and `connectors proxy`
//! (the release binary). Measures blob GET throughput with 1, 4 and 16
//! clients and each proxy's CPU per GiB, manifest GET latency, proxy memory
//! while 64 clients stream, and upstream token requests per 1,000 pulls from
//! a token-mode registry. Writes `bench/results/proxy.md`.
//!
//! Run with `cargo bench --bench proxy` (`-- --quick` for a short run). Needs
//! `bash .ci/install` (docker-registry, skopeo, htpasswd, nginx).

use std::collections::BTreeSet;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, HOST, HeaderValue, LOCATION};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use testing::client::MANIFEST_ACCEPT;
use testing::digest::Sha256;
use testing::{
    CopyOptions, Digest, ImageDigests, OciLayout, Registry, RegistryAccess, RegistryOptions, Skopeo, StoreYaml,
    TestTls, TokenServer, TokenServerOptions,
};
use tokio::net::TcpStream;
use tokio::time::timeout;

#[allow(dead_code)]
mod common;
use common::*;

const USER: &str = "robot$bench";
const PASSWORD: &str = "bench-Pa55-3f9a";
const CALLER_TOKEN: &str = "bench-caller-token-5c2d";
const NAMESPACE: &str = "team";
/// The connector in front of the htpasswd registry.
const CONNECTOR: &str = "lab";
/// The connector in front of the token-mode registry.
const TOKEN_CONNECTOR: &str = "tokened";
const BLOB_REPOSITORY: &str = "lab/big";
const MANIFEST_REPOSITORY: &str = "lab/small";
const TOKEN_REPOSITORY: &str = "lab/tokened";
const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;

/// Time to connect to anything on loopback.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for one small request (manifest, HEAD, upload start).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for one whole blob download or upload.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);
/// Time for a started process to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Time for a stopped process to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Sizes and counts of one run.
struct Settings {
    quick: bool,
    blob_size: u64,
    client_counts: [usize; 3],
    manifest_requests: usize,
    manifest_in_flight: usize,
    pulls: usize,
    memory_streams: usize,
    memory_window: Duration,
}

impl Settings {
    fn from_args() -> Self {
        let quick = std::env::args().any(|a| a == "--quick");
        Self {
            quick,
            blob_size: if quick { 128 << 20 } else { 1 << 30 },
            client_counts: [1, 4, 16],
            manifest_requests: if quick { 200 } else { 2000 },
            manifest_in_flight: 8,
            pulls: if quick { 100 } else { 1000 },
            memory_streams: 64,
            memory_window: Duration::from_secs(if quick { 5 } else { 20 }),
        }
    }

    /// Short runs vary more, so they are repeated (the median is reported).
    fn repeats(&self, clients: usize) -> usize {
        match (self.quick, clients) {
            (true, _) => 1,
            (false, 1) => 3,
            (false, 4) => 2,
            (false, _) => 1,
        }
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = Settings::from_args();
    // NB: the client gets both cores, like the proxies and the registry: on
    // two cores every path competes for the same CPU, which is the point.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = runtime.block_on(run(&settings)).unwrap();
    println!("{report}");
    write_results("proxy.md", &report);
}

/// Where a client sends requests: the address, the path prefix before the
/// repository and the Authorization header it sends itself.
#[derive(Clone)]
struct Route {
    name: &'static str,
    addr: SocketAddr,
    prefix: String,
    authorization: Option<HeaderValue>,
}

impl Route {
    fn direct(addr: SocketAddr) -> Self {
        Self {
            name: "direct",
            addr,
            prefix: "/v2/".to_owned(),
            authorization: Some(basic(USER, PASSWORD)),
        }
    }

    /// nginx injects the credential: the client sends none.
    fn nginx(addr: SocketAddr) -> Self {
        Self {
            name: "nginx",
            addr,
            prefix: format!("/v2/namespaces/{NAMESPACE}/connectors/{CONNECTOR}/"),
            authorization: None,
        }
    }

    /// The caller's ServiceAccount token as the Basic password.
    fn connectors(addr: SocketAddr, connector: &str) -> Self {
        Self {
            name: "connectors",
            addr,
            prefix: format!("/v2/namespaces/{NAMESPACE}/connectors/{connector}/"),
            authorization: Some(basic("x", CALLER_TOKEN)),
        }
    }

    /// A node's pull (kubelet): plain HTTP to the node pull endpoint, which
    /// relays to the proxy's HTTPS with its own token.
    fn node_pull(addr: SocketAddr) -> Self {
        Self {
            name: "node-pull",
            addr,
            prefix: format!("/v2/namespaces/{NAMESPACE}/connectors/{CONNECTOR}/"),
            authorization: None,
        }
    }

    fn path(&self, repository: &str, rest: &str) -> String {
        format!("{}{repository}/{rest}", self.prefix)
    }

    fn request(&self, method: Method, path: &str, accept: Option<&str>) -> Request<Empty<Bytes>> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.addr.to_string());
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        if let Some(accept) = accept {
            request = request.header(ACCEPT, accept);
        }
        request.body(Empty::new()).expect("a valid request")
    }
}

async fn run(settings: &Settings) -> anyhow::Result<String> {
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    // NB: read before the run: cargo built the binary just before it started.
    let revision = revision();
    let binary = connectors_binary();
    let lab = tempfile::tempdir()?;

    // The registries and their content, pushed directly.
    let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD)).await?;
    let token_server = TokenServer::start(TokenServerOptions::with_user(USER, PASSWORD))?;
    let token_registry = Registry::start(RegistryOptions::token(&token_server)).await?;
    let blob_file = lab.path().join("blob.bin");
    let blob = testing::image::write_random_file(&blob_file, settings.blob_size, 42)?;
    push_blob(
        registry.addr(),
        &basic(USER, PASSWORD),
        BLOB_REPOSITORY,
        &blob_file,
        &blob,
    )
    .await?;
    std::fs::remove_file(&blob_file)?;
    let layout = OciLayout::new(&lab.path().join("layout"))?;
    let small = layout.add_image("v1", &[4096, 64 * 1024], 7)?;
    let skopeo = Skopeo::new()?;
    let push = CopyOptions::default().dest(RegistryAccess::plain_http().creds(USER, PASSWORD));
    for (target, repository) in [(&registry, MANIFEST_REPOSITORY), (&token_registry, TOKEN_REPOSITORY)] {
        skopeo
            .copy(
                &layout.reference("v1"),
                &target.docker_reference(&format!("{repository}:v1")),
                &push,
            )
            .await?;
    }

    // The proxies.
    let store = write_proxy_config(lab.path(), &registry, &token_registry)?;
    let nginx = Nginx::start(&lab.path().join("nginx"), registry.addr())?;
    let tls = TestTls::for_loopback()?;
    let tls_addr = free_port()?;
    let connectors = start_connectors(&binary, &store, Some((&tls, tls_addr)))?;
    let node_pull = start_node_pull(&binary, lab.path(), &tls, tls_addr)?;
    let routes = [
        Route::direct(registry.addr()),
        Route::nginx(nginx.addr),
        Route::connectors(connectors.addr, CONNECTOR),
        Route::node_pull(node_pull.addr),
    ];
    let proxy_pids = |route: &Route| -> Vec<u32> {
        match route.name {
            "nginx" => nginx.pids(),
            "connectors" => vec![connectors.pid()],
            "node-pull" => vec![node_pull.pid(), connectors.pid()],
            _ => Vec::new(),
        }
    };

    // Every path serves the same bytes (and the page cache is warm).
    let blob_path = |route: &Route| route.path(BLOB_REPOSITORY, &format!("blobs/{}", blob.digest));
    for route in &routes {
        let mut sender = open(route.addr).await?;
        let mut hasher = Sha256::default();
        let size = fetch_blob(&mut sender, route, &blob_path(route), None, Some(&mut hasher)).await?;
        let served = hasher.finish();
        ensure!(
            size == blob.size && served == blob,
            "{} served {served:?}, not {blob:?}",
            route.name
        );
    }

    // 1. Blob throughput, interleaving the paths so drift hits all alike.
    let mut transfers = Vec::new();
    for clients in settings.client_counts {
        for _ in 0..settings.repeats(clients) {
            for route in &routes {
                let transfer = measure_transfer(
                    route,
                    &blob_path(route),
                    clients,
                    blob.size,
                    &proxy_pids(route),
                    registry.pid(),
                )
                .await
                .with_context(|| format!("{} with {clients} clients", route.name))?;
                transfers.push(transfer);
            }
        }
    }

    // 2. Manifest latency: sequential, then several in flight.
    let mut latencies = Vec::new();
    for in_flight in [1, settings.manifest_in_flight] {
        for route in &routes {
            let path = route.path(MANIFEST_REPOSITORY, "manifests/v1");
            let latency = manifest_latency(route, &path, small.manifest.size, settings.manifest_requests, in_flight)
                .await
                .with_context(|| format!("manifests through {}", route.name))?;
            latencies.push(latency);
        }
    }

    // 3. Upstream token requests per pull, token mode behind connectors.
    let tokens = token_requests(
        &Route::connectors(connectors.addr, TOKEN_CONNECTOR),
        &small,
        settings.pulls,
        &token_server,
    )
    .await?;
    let main_connectors_memory = memory(connectors.pid());
    drop(node_pull);
    drop(connectors);
    drop(nginx);

    // 4. Memory while many clients stream, each proxy freshly started so its
    // high-water mark belongs to this phase.
    let mut memories = Vec::new();
    {
        let nginx = Nginx::start(&lab.path().join("nginx-memory"), registry.addr())?;
        let route = Route::nginx(nginx.addr);
        memories.push(memory_under_streams(&route, &blob_path(&route), settings, &nginx.pids()).await?);
    }
    {
        let connectors = start_connectors(&binary, &store, None)?;
        let route = Route::connectors(connectors.addr, CONNECTOR);
        memories.push(memory_under_streams(&route, &blob_path(&route), settings, &[connectors.pid()]).await?);
    }

    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    Ok(render(&Rendered {
        settings,
        revision: &revision,
        binary: &binary,
        blob: &blob,
        transfers: &transfers,
        latencies: &latencies,
        tokens: &tokens,
        memories: &memories,
        main_connectors_memory,
        load: (load_before.trim(), load_after.trim()),
    }))
}

/// The store (a Secret and two Connectors) and the static caller tokens.
fn write_proxy_config(dir: &Path, registry: &Registry, token_registry: &Registry) -> anyhow::Result<ProxyConfig> {
    let store = StoreYaml::new(NAMESPACE)
        .basic_auth("robot", USER, PASSWORD)
        .connector(CONNECTOR, &registry.url(), "robot", None)
        .connector(TOKEN_CONNECTOR, &token_registry.url(), "robot", None)
        .build();
    let config = ProxyConfig {
        store: dir.join("store.yaml"),
        tokens: dir.join("tokens.csv"),
    };
    std::fs::write(&config.store, store)?;
    std::fs::write(
        &config.tokens,
        format!("{CALLER_TOKEN},system:serviceaccount:{NAMESPACE}:bench,uid-1\n"),
    )?;
    Ok(config)
}

struct ProxyConfig {
    store: PathBuf,
    tokens: PathBuf,
}

/// `connectors proxy` in reverse mode on a free loopback port; with `tls`,
/// also over HTTPS at the given address.
fn start_connectors(
    binary: &Path,
    config: &ProxyConfig,
    tls: Option<(&TestTls, SocketAddr)>,
) -> anyhow::Result<Connectors> {
    let tls_listen = tls.map(|(_, addr)| addr.to_string()).unwrap_or_default();
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "proxy".as_ref(),
        // NB: the registry listens on loopback.
        "--egress-allow".as_ref(),
        "127.0.0.0/8".as_ref(),
        "--store".as_ref(),
        config.store.as_os_str(),
        "--token-auth-file".as_ref(),
        config.tokens.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
    ];
    if let Some((tls, _)) = tls {
        args.extend::<[&std::ffi::OsStr; 6]>([
            "--tls-listen".as_ref(),
            tls_listen.as_ref(),
            "--tls-cert".as_ref(),
            tls.files.cert.as_os_str(),
            "--tls-key".as_ref(),
            tls.files.key.as_os_str(),
        ]);
    }
    Connectors::start(binary, &args, "proxy listening")
}

/// `connectors node-pull` on a free loopback port, relaying to the proxy's
/// HTTPS at `proxy` with the caller token as its own.
fn start_node_pull(binary: &Path, dir: &Path, tls: &TestTls, proxy: SocketAddr) -> anyhow::Result<Connectors> {
    let ca = dir.join("proxy-ca.crt");
    let token = dir.join("node-pull.token");
    std::fs::write(&ca, tls.ca_pem())?;
    std::fs::write(&token, CALLER_TOKEN)?;
    let proxy = format!("https://{proxy}");
    let args: [&std::ffi::OsStr; 9] = [
        "node-pull".as_ref(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--proxy".as_ref(),
        proxy.as_ref(),
        "--proxy-ca".as_ref(),
        ca.as_os_str(),
        "--token-file".as_ref(),
        token.as_os_str(),
    ];
    Connectors::start(binary, &args, "node pull endpoint listening")
}

/// nginx as the reference credential-injecting reverse proxy: the config of
/// docs/real-components.md §4 on a free loopback port. The master and its
/// workers are stopped on drop.
struct Nginx {
    master: Child,
    workers: Vec<u32>,
    addr: SocketAddr,
}

impl Nginx {
    fn start(dir: &Path, upstream: SocketAddr) -> anyhow::Result<Self> {
        let program = find_program("nginx")?;
        std::fs::create_dir_all(dir)?;
        let credential = basic(USER, PASSWORD);
        let credential = credential.to_str().expect("ASCII");
        let mut last_error = String::new();
        for _attempt in 0..5 {
            let addr = free_port()?;
            let lab = dir.display();
            let config = format!(
                r#"worker_processes 1; daemon off; pid {lab}/nginx.pid; error_log {lab}/error.log;
events {{}}
http {{ access_log {lab}/access.log; client_max_body_size 0;
  server {{ listen {addr};
    location /v2/ {{
      rewrite ^/v2/namespaces/[^/]+/connectors/[^/]+/(.+)$ /v2/$1 break;
      proxy_pass http://{upstream};  proxy_set_header Host $http_host;
      proxy_set_header Authorization "{credential}";
      proxy_http_version 1.1; proxy_request_buffering off; proxy_buffering off; }} }} }}
"#
            );
            let config_path = dir.join("nginx.conf");
            std::fs::write(&config_path, config)?;
            let master = Command::new(&program)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("start nginx")?;
            let mut nginx = Self {
                master,
                workers: Vec::new(),
                addr,
            };
            let deadline = Instant::now() + START_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(status)) = nginx.master.try_wait() {
                    last_error = format!(
                        "nginx exited ({status}): {}",
                        std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                    );
                    break;
                }
                nginx.workers = children_of(nginx.master.id());
                if !nginx.workers.is_empty() && std::net::TcpStream::connect(addr).is_ok() {
                    return Ok(nginx);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !last_error.contains("Address already in use") {
                break;
            }
        }
        bail!("nginx did not start: {last_error}")
    }

    /// The master and worker process ids.
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.master.id()];
        pids.extend(&self.workers);
        pids
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM is nginx's fast shutdown: the master stops its workers.
        let _ = Command::new("kill")
            .args(["-TERM", &self.master.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline && !matches!(self.master.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.master.kill();
        let _ = self.master.wait();
        for worker in &self.workers {
            if process_name(*worker).as_deref() == Some("nginx") {
                let _ = Command::new("kill").args(["-KILL", &worker.to_string()]).status();
            }
        }
    }
}

// ---- HTTP client: one HTTP/1.1 connection per client, bodies discarded ----

async fn open<B>(addr: SocketAddr) -> anyhow::Result<SendRequest<B>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .with_context(|| format!("connect to {addr}: timed out"))??;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// GETs a blob, reading and discarding its body; returns the byte count.
/// `progress` counts bytes as they arrive; `hasher` digests them.
async fn fetch_blob(
    sender: &mut SendRequest<Empty<Bytes>>,
    route: &Route,
    path: &str,
    progress: Option<&AtomicU64>,
    mut hasher: Option<&mut Sha256>,
) -> anyhow::Result<u64> {
    let transfer = async {
        sender.ready().await?;
        let response = sender.send_request(route.request(Method::GET, path, None)).await?;
        ensure!(
            response.status() == StatusCode::OK,
            "{} answered {}",
            route.name,
            response.status()
        );
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let mut body = response.into_body();
        let mut size = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                size += data.len() as u64;
                if let Some(progress) = progress {
                    progress.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if let Some(hasher) = hasher.as_deref_mut() {
                    hasher.update(&data);
                }
            }
        }
        if let Some(declared) = declared {
            ensure!(declared == size, "Content-Length {declared} but {size} bytes came");
        }
        Ok(size)
    };
    timeout(TRANSFER_TIMEOUT, transfer).await.with_context(|| {
        format!(
            "{path} through {}: no complete body within {TRANSFER_TIMEOUT:?}",
            route.name
        )
    })?
}

/// Pushes `file` as a blob of `repository` straight to the registry: a POST
/// opens the upload, one monolithic PUT streams the file.
async fn push_blob(
    registry: SocketAddr,
    authorization: &HeaderValue,
    repository: &str,
    file: &Path,
    digest: &Digest,
) -> anyhow::Result<()> {
    let mut sender = open::<Empty<Bytes>>(registry).await?;
    let start = Request::post(format!("/v2/{repository}/blobs/uploads/"))
        .header(HOST, registry.to_string())
        .header(AUTHORIZATION, authorization.clone())
        .body(Empty::new())?;
    let response = timeout(REQUEST_TIMEOUT, sender.send_request(start)).await??;
    ensure!(
        response.status() == StatusCode::ACCEPTED,
        "upload start: {}",
        response.status()
    );
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .context("upload start: no Location")?;
    let upload = &location[location.find("/v2/").context("upload Location without /v2/")?..];
    let separator = if upload.contains('?') { '&' } else { '?' };
    let put_path = format!("{upload}{separator}digest={}", digest.digest);

    let file = std::fs::File::open(file)?;
    let chunks = futures::stream::unfold(file, |mut file| async move {
        let mut buffer = vec![0u8; 1 << 20];
        match file.read(&mut buffer) {
            Ok(0) => None,
            Ok(read) => {
                buffer.truncate(read);
                Some((Ok(Frame::data(Bytes::from(buffer))), file))
            }
            Err(error) => Some((Err(error), file)),
        }
    });
    let body: BoxBody<Bytes, std::io::Error> = StreamBody::new(chunks).boxed();
    let mut sender = open::<BoxBody<Bytes, std::io::Error>>(registry).await?;
    let put = Request::put(put_path)
        .header(HOST, registry.to_string())
        .header(AUTHORIZATION, authorization.clone())
        .header(CONTENT_LENGTH, digest.size)
        .body(body)?;
    let response = timeout(TRANSFER_TIMEOUT, sender.send_request(put)).await??;
    ensure!(
        response.status() == StatusCode::CREATED,
        "blob upload: {}",
        response.status()
    );
    Ok(())
}

// ---- 1. Blob throughput ----

/// One timed download of the blob by `clients` concurrent clients.
struct Transfer {
    route: &'static str,
    clients: usize,
    seconds: f64,
    bytes: u64,
    proxy_cpu: f64,
    /// The kernel's part of `proxy_cpu` (socket copies, TCP).
    proxy_system_cpu: f64,
    registry_cpu: f64,
    client_cpu: f64,
    /// CPU used by everything else on the machine meanwhile.
    other_cpu: f64,
}

impl Transfer {
    fn gib_per_second(&self) -> f64 {
        self.bytes as f64 / GIB / self.seconds
    }
}

async fn measure_transfer(
    route: &Route,
    path: &str,
    clients: usize,
    size: u64,
    proxy_pids: &[u32],
    registry_pid: u32,
) -> anyhow::Result<Transfer> {
    let proxy_pids: Vec<String> = proxy_pids.iter().map(u32::to_string).collect();
    let registry_pids = [registry_pid.to_string()];
    let own_pids = ["self".to_owned()];
    // Every client connects first, then all start together.
    let barrier = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (route, path, barrier) = (route.clone(), path.to_owned(), barrier.clone());
        tasks.spawn(async move {
            let sender = open(route.addr).await;
            barrier.wait().await;
            let size = fetch_blob(&mut sender?, &route, &path, None, None).await?;
            anyhow::Ok(size)
        });
    }
    let before = (
        cpu_split(&proxy_pids),
        cpu_seconds(&registry_pids),
        cpu_seconds(&own_pids),
        machine_busy_seconds(),
    );
    timeout(CONNECT_TIMEOUT, barrier.wait())
        .await
        .context("clients did not connect")?;
    let started = Instant::now();
    let mut bytes = 0;
    while let Some(done) = tasks.join_next().await {
        let received = done??;
        ensure!(received == size, "{} delivered {received} of {size} bytes", route.name);
        bytes += received;
    }
    let seconds = started.elapsed().as_secs_f64();
    let proxy_after = cpu_split(&proxy_pids);
    let proxy_system_cpu = proxy_after.1 - before.0.1;
    let proxy_cpu = proxy_after.0 + proxy_after.1 - before.0.0 - before.0.1;
    let registry_cpu = cpu_seconds(&registry_pids) - before.1;
    let client_cpu = cpu_seconds(&own_pids) - before.2;
    let busy = machine_busy_seconds() - before.3;
    let transfer = Transfer {
        route: route.name,
        clients,
        seconds,
        bytes,
        proxy_cpu,
        proxy_system_cpu,
        registry_cpu,
        client_cpu,
        other_cpu: (busy - proxy_cpu - registry_cpu - client_cpu).max(0.0),
    };
    eprintln!(
        "{:>10} {:>2} clients: {:.2} GiB/s",
        route.name,
        clients,
        transfer.gib_per_second()
    );
    Ok(transfer)
}

// ---- 2. Manifest latency ----

struct Latency {
    route: &'static str,
    in_flight: usize,
    requests: u64,
    rate: f64,
    histogram: Histogram<u64>,
    reopened: usize,
}

/// `requests` manifest GETs with the OCI Accept header, `in_flight` at a
/// time, each client on its own keep-alive connection; latency in µs.
async fn manifest_latency(
    route: &Route,
    path: &str,
    manifest_size: u64,
    requests: usize,
    in_flight: usize,
) -> anyhow::Result<Latency> {
    let per_client = requests.div_ceil(in_flight);
    let barrier = Arc::new(tokio::sync::Barrier::new(in_flight + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let (route, path, barrier) = (route.clone(), path.to_owned(), barrier.clone());
        tasks.spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).expect("3 significant digits");
            let mut connection = KeepAlive::new(route.addr);
            let mut get = async || {
                let response = connection
                    .send(|| route.request(Method::GET, &path, Some(MANIFEST_ACCEPT)))
                    .await?;
                ensure!(response.status() == StatusCode::OK, "{}", response.status());
                let body = response.into_body().collect().await?.to_bytes();
                ensure!(body.len() as u64 == manifest_size, "{} byte manifest", body.len());
                anyhow::Ok(())
            };
            // NB: a client that failed still meets the others at the barrier.
            let warm_up = async {
                for _ in 0..10 {
                    timeout(REQUEST_TIMEOUT, get()).await??;
                }
                anyhow::Ok(())
            }
            .await;
            barrier.wait().await;
            warm_up?;
            for _ in 0..per_client {
                let sent = Instant::now();
                timeout(REQUEST_TIMEOUT, get()).await??;
                histogram.record(sent.elapsed().as_micros() as u64)?;
            }
            anyhow::Ok((histogram, connection.reopened))
        });
    }
    timeout(REQUEST_TIMEOUT, barrier.wait())
        .await
        .context("clients did not warm up")?;
    let started = Instant::now();
    let mut histogram = Histogram::<u64>::new(3)?;
    let mut reopened = 0;
    while let Some(done) = tasks.join_next().await {
        let (client, client_reopened) = done??;
        histogram.add(client)?;
        reopened += client_reopened;
    }
    let rate = histogram.len() as f64 / started.elapsed().as_secs_f64();
    eprintln!(
        "{:>10} manifests, {in_flight} in flight: p50 {} µs",
        route.name,
        histogram.value_at_quantile(0.5)
    );
    Ok(Latency {
        route: route.name,
        in_flight,
        requests: histogram.len(),
        rate,
        histogram,
        reopened,
    })
}

/// A keep-alive HTTP/1.1 connection that is reopened when the server closes
/// it, as any registry client does (nginx closes a client connection after
/// `keepalive_requests`, 1,000 by default).
struct KeepAlive {
    addr: SocketAddr,
    sender: Option<SendRequest<Empty<Bytes>>>,
    /// How often the server closed the connection and it was reopened.
    reopened: usize,
}

impl KeepAlive {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            sender: None,
            reopened: 0,
        }
    }

    /// Sends a body-less (so replayable) request, retrying once on a fresh
    /// connection when the old one turns out to be closed.
    async fn send(
        &mut self,
        request: impl Fn() -> Request<Empty<Bytes>>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let mut last_error = None;
        for _attempt in 0..2 {
            let sender = match &mut self.sender {
                Some(sender) if !sender.is_closed() => sender,
                stale => {
                    if stale.is_some() {
                        self.reopened += 1;
                    }
                    stale.insert(open(self.addr).await?)
                }
            };
            let sent = async {
                sender.ready().await?;
                sender.send_request(request()).await
            };
            match sent.await {
                Ok(response) => return Ok(response),
                Err(error) if error.is_closed() || error.is_canceled() || error.is_incomplete_message() => {
                    last_error = Some(error);
                    if let Some(sender) = self.sender.take() {
                        drop(sender);
                        self.reopened += 1;
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(last_error
            .map(anyhow::Error::from)
            .unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
    }
}

// ---- 3. Upstream token requests ----

struct Tokens {
    pulls: usize,
    requests: usize,
    token_requests: usize,
    scopes: BTreeSet<String>,
    seconds: f64,
    lifetime: Duration,
    metrics: String,
}

/// `pulls` pulls of one image through connectors from a token-mode registry
/// (a manifest GET and a HEAD per blob each), counting what reached the
/// token service.
async fn token_requests(
    route: &Route,
    image: &ImageDigests,
    pulls: usize,
    server: &TokenServer,
) -> anyhow::Result<Tokens> {
    let lifetime = TokenServerOptions::default().expires_in;
    server.clear_log();
    let mut connection = KeepAlive::new(route.addr);
    let blobs: Vec<&str> = std::iter::once(&image.config)
        .chain(&image.layers)
        .map(|b| b.digest.as_str())
        .collect();
    let started = Instant::now();
    let mut requests = 0;
    for _ in 0..pulls {
        let mut calls = vec![(Method::GET, route.path(TOKEN_REPOSITORY, "manifests/v1"))];
        calls.extend(
            blobs
                .iter()
                .map(|d| (Method::HEAD, route.path(TOKEN_REPOSITORY, &format!("blobs/{d}")))),
        );
        for (method, path) in calls {
            let call = async {
                let accept = (method == Method::GET).then_some(MANIFEST_ACCEPT);
                let response = connection.send(|| route.request(method.clone(), &path, accept)).await?;
                let status = response.status();
                response.into_body().collect().await?;
                ensure!(status == StatusCode::OK, "{path}: {status}");
                anyhow::Ok(())
            };
            timeout(REQUEST_TIMEOUT, call).await??;
            requests += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let log = server.requests_log();
    let metrics = proxy_token_metrics(route.addr)
        .await
        .unwrap_or_else(|e| format!("n/a ({e})"));
    eprintln!("token service: {} requests for {pulls} pulls", log.len());
    Ok(Tokens {
        pulls,
        requests,
        token_requests: log.len(),
        scopes: log.iter().flat_map(|r| r.scopes.iter().cloned()).collect(),
        seconds,
        lifetime,
        metrics,
    })
}

/// The proxy's own count of token fetches and cache hits for the token
/// connector, from `/metrics`.
async fn proxy_token_metrics(addr: SocketAddr) -> anyhow::Result<String> {
    let mut sender = open::<Empty<Bytes>>(addr).await?;
    let request = Request::get("/metrics")
        .header(HOST, addr.to_string())
        .body(Empty::new())?;
    let response = timeout(REQUEST_TIMEOUT, sender.send_request(request)).await??;
    let text = timeout(REQUEST_TIMEOUT, response.into_body().collect())
        .await??
        .to_bytes();
    let text = String::from_utf8_lossy(&text);
    let count = |metric: &str| -> String {
        text.lines()
            .filter(|l| l.starts_with(metric) && l.contains(&format!("{NAMESPACE}/{TOKEN_CONNECTOR}")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
            .to_string()
    };
    Ok(format!(
        "{} fetched, {} from cache",
        count("connectors_proxy_upstream_token_fetches"),
        count("connectors_proxy_upstream_token_cache_hits")
    ))
}

// ---- 4. Memory under many streams ----

struct Memory {
    route: &'static str,
    streams: usize,
    receiving: usize,
    idle_rss: u64,
    peak_sampled_rss: u64,
    high_water: u64,
    gib_per_second: f64,
}

/// Starts `streams` concurrent downloads of the blob and samples the
/// proxy's resident memory every 100 ms for the window (or until all end),
/// then reads its high-water mark and cuts the streams off.
async fn memory_under_streams(route: &Route, path: &str, settings: &Settings, pids: &[u32]) -> anyhow::Result<Memory> {
    let resident = |pids: &[u32]| {
        pids.iter()
            .map(|p| memory(*p))
            .fold((0, 0), |a, m| (a.0 + m.0, a.1 + m.1))
    };
    let idle_rss = resident(pids).1;
    let progress = Arc::new(AtomicU64::new(0));
    let receiving = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..settings.memory_streams {
        let (route, path) = (route.clone(), path.to_owned());
        let (progress, receiving) = (progress.clone(), receiving.clone());
        tasks.spawn(async move {
            let mut sender = open(route.addr).await?;
            let counted = CountingProgress {
                progress: &progress,
                receiving: &receiving,
            };
            counted.fetch(&mut sender, &route, &path).await
        });
    }
    let started = Instant::now();
    let mut peak_sampled_rss = 0;
    let mut receiving_streams = 0;
    while started.elapsed() < settings.memory_window && !tasks.is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak_sampled_rss = peak_sampled_rss.max(resident(pids).1);
        receiving_streams = receiving_streams.max(receiving.load(Ordering::Relaxed));
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let moved = progress.load(Ordering::Relaxed);
    let high_water = resident(pids).0;
    tasks.abort_all();
    timeout(STOP_TIMEOUT, async { while tasks.join_next().await.is_some() {} })
        .await
        .context("streams did not stop")?;
    eprintln!(
        "{:>10} {} streams: peak RSS {:.1} MiB",
        route.name,
        settings.memory_streams,
        high_water as f64 / MIB
    );
    Ok(Memory {
        route: route.name,
        streams: settings.memory_streams,
        receiving: receiving_streams,
        idle_rss,
        peak_sampled_rss,
        high_water,
        gib_per_second: moved as f64 / GIB / elapsed,
    })
}

/// Counts bytes of one stream into shared totals, and streams that got
/// their first byte.
struct CountingProgress<'a> {
    progress: &'a AtomicU64,
    receiving: &'a AtomicUsize,
}

impl CountingProgress<'_> {
    async fn fetch(&self, sender: &mut SendRequest<Empty<Bytes>>, route: &Route, path: &str) -> anyhow::Result<()> {
        sender.ready().await?;
        let response = timeout(
            REQUEST_TIMEOUT,
            sender.send_request(route.request(Method::GET, path, None)),
        )
        .await??;
        ensure!(response.status() == StatusCode::OK, "{}", response.status());
        let mut body = response.into_body();
        let mut first = true;
        while let Some(frame) = timeout(REQUEST_TIMEOUT, body.frame()).await? {
            if let Ok(data) = frame?.into_data() {
                if first {
                    self.receiving.fetch_add(1, Ordering::Relaxed);
                    first = false;
                }
                self.progress.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

// ---- Report ----

struct Rendered<'a> {
    settings: &'a Settings,
    revision: &'a str,
    binary: &'a Path,
    blob: &'a Digest,
    transfers: &'a [Transfer],
    latencies: &'a [Latency],
    tokens: &'a Tokens,
    memories: &'a [Memory],
    main_connectors_memory: (u64, u64),
    load: (&'a str, &'a str),
}

/// Per path and client count: the median rate of the runs, every run's
/// rate, and CPU seconds per GiB summed over the runs.
struct Throughput {
    route: &'static str,
    clients: usize,
    median: f64,
    runs: Vec<f64>,
    proxy_cpu_per_gib: f64,
    proxy_system_share: f64,
    registry_cpu_per_gib: f64,
    client_cpu_per_gib: f64,
    other_cpu_per_gib: f64,
}

fn throughputs(transfers: &[Transfer]) -> Vec<Throughput> {
    let mut keys: Vec<(&'static str, usize)> = Vec::new();
    for t in transfers {
        if !keys.contains(&(t.route, t.clients)) {
            keys.push((t.route, t.clients));
        }
    }
    keys.sort_by_key(|(_, clients)| *clients);
    keys.into_iter()
        .map(|(route, clients)| {
            let runs: Vec<&Transfer> = transfers
                .iter()
                .filter(|t| t.route == route && t.clients == clients)
                .collect();
            let gib = runs.iter().map(|t| t.bytes as f64).sum::<f64>() / GIB;
            let per_gib = |f: fn(&Transfer) -> f64| runs.iter().map(|t| f(t)).sum::<f64>() / gib;
            let rates: Vec<f64> = runs.iter().map(|t| t.gib_per_second()).collect();
            Throughput {
                route,
                clients,
                median: median(&rates),
                runs: rates,
                proxy_cpu_per_gib: per_gib(|t| t.proxy_cpu),
                proxy_system_share: per_gib(|t| t.proxy_system_cpu) / per_gib(|t| t.proxy_cpu),
                registry_cpu_per_gib: per_gib(|t| t.registry_cpu),
                client_cpu_per_gib: per_gib(|t| t.client_cpu),
                other_cpu_per_gib: per_gib(|t| t.other_cpu),
            }
        })
        .collect()
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

fn render(r: &Rendered) -> String {
    use std::fmt::Write as _;
    let s = r.settings;
    let mut out = String::new();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let _ = writeln!(out, "# Registry proxy benchmark\n");
    let _ = writeln!(
        out,
        "`cargo bench --bench proxy` on this machine ({cores} cores){}, at {}. One run, four paths to the same \
         registry (`{}`, htpasswd, filesystem storage, `log: warn`) and the same blobs: \
         **direct** with the real Basic credential; **nginx** (`{}`) as the credential-injecting reverse proxy of \
         docs/real-components.md §4 (`worker_processes 1`, `proxy_buffering off`, `proxy_request_buffering off`, \
         `client_max_body_size 0`, `proxy_http_version 1.1`); **connectors** = `{}`; **node-pull** = a node's \
         pull: plain HTTP to `connectors node-pull`, which relays it to the same proxy over HTTPS with its own \
         token (CPU columns: both processes). Clients, proxies and \
         registry share the {cores} cores. Load average before: `{}`, after: `{}`.\n",
        if s.quick { " — **quick run**" } else { "" },
        r.revision,
        program_version("docker-registry", &["--version"]),
        program_version("nginx", &["-v"]),
        r.binary.display(),
        r.load.0,
        r.load.1,
    );

    let throughput = throughputs(r.transfers);
    let rate = |route: &str, clients: usize| {
        throughput
            .iter()
            .find(|t| t.route == route && t.clients == clients)
            .map(|t| t.median)
            .unwrap_or(f64::NAN)
    };
    let _ = writeln!(
        out,
        "## Blob GET throughput\n\nOne {:.0} MiB blob (`{}`), pushed once directly; every client opens its own \
         connection and downloads all of it, reading and discarding the body and checking the byte count (each \
         path's bytes were also digest-checked once, untimed, beforehand). GiB/s = all bytes / wall time; the \
         median of the runs. CPU = utime + stime from `/proc/<pid>/stat` before and after, per GiB moved \
         (nginx: master + worker; \"kernel\" = the stime share; \"other\" = the rest of the machine's busy time \
         meanwhile).\n",
        r.blob.size as f64 / MIB,
        r.blob.digest
    );
    out.push_str(
        "| path | clients | GiB/s | vs direct | proxy CPU s/GiB | registry CPU s/GiB | client CPU s/GiB | other CPU s/GiB | runs (GiB/s) |\n|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for t in &throughput {
        let proxy_cpu = if t.route == "direct" {
            "—".to_owned()
        } else {
            format!(
                "{:.2} ({:.0}% kernel)",
                t.proxy_cpu_per_gib,
                100.0 * t.proxy_system_share
            )
        };
        let runs: Vec<String> = t.runs.iter().map(|r| format!("{r:.2}")).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {:.0}% | {} | {:.2} | {:.2} | {:.2} | {} |",
            t.route,
            t.clients,
            t.median,
            100.0 * t.median / rate("direct", t.clients),
            proxy_cpu,
            t.registry_cpu_per_gib,
            t.client_cpu_per_gib,
            t.other_cpu_per_gib,
            runs.join(", ")
        );
    }

    let _ = writeln!(
        out,
        "\n## Manifest GET latency\n\nGET `…/{MANIFEST_REPOSITORY}/manifests/v1` with the OCI Accept header; each \
         client on one keep-alive connection, 10 warm-up requests each; {} requests per row. Latency = send to \
         full body, reconnecting included when the server closed the connection (nginx does after its default \
         `keepalive_requests 1000`).\n",
        s.manifest_requests
    );
    out.push_str(
        "| path | in flight | requests | req/s | p50 (ms) | p99 (ms) | max (ms) | connections reopened |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for l in r.latencies {
        let ms = |q: f64| l.histogram.value_at_quantile(q) as f64 / 1000.0;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            l.route,
            l.in_flight,
            l.requests,
            l.rate,
            ms(0.5),
            ms(0.99),
            l.histogram.max() as f64 / 1000.0,
            l.reopened
        );
    }

    let _ = writeln!(
        out,
        "\n## Proxy memory while {} clients stream\n\nEach proxy freshly started; {} concurrent downloads of the \
         blob, RSS sampled every 100 ms for {} s, then the streams are cut off. VmHWM/VmRSS from \
         `/proc/<pid>/status` (nginx: master + worker summed).\n",
        s.memory_streams,
        s.memory_streams,
        s.memory_window.as_secs()
    );
    out.push_str("| proxy | streams | receiving | RSS idle (MiB) | peak sampled VmRSS (MiB) | VmHWM (MiB) | GiB/s meanwhile |\n|---|---:|---:|---:|---:|---:|---:|\n");
    for m in r.memories {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2} |",
            m.route,
            m.streams,
            m.receiving,
            m.idle_rss as f64 / MIB,
            m.peak_sampled_rss as f64 / MIB,
            m.high_water as f64 / MIB,
            m.gib_per_second
        );
    }
    let _ = writeln!(
        out,
        "\nFor comparison, the connectors process of the throughput and latency phases (16 streams at most) ended \
         with VmHWM {:.1} MiB, VmRSS {:.1} MiB.",
        r.main_connectors_memory.0 as f64 / MIB,
        r.main_connectors_memory.1 as f64 / MIB
    );

    let t = r.tokens;
    let lifetimes = (t.seconds / t.lifetime.as_secs_f64()).ceil().max(1.0) as usize;
    let allowed = t.scopes.len().max(1) * lifetimes;
    let _ = writeln!(
        out,
        "\n## Upstream token requests\n\nA token-mode registry (testing::TokenServer, tokens valid {} s) behind \
         connectors; {} pulls of one image, each a manifest GET and a HEAD of its config and 2 layers ({} requests \
         through the proxy, {:.1} s).\n\n| pulls | proxied requests | token service requests | per 1,000 pulls | \
         scopes asked | proxy metrics |\n|---:|---:|---:|---:|---|---|\n| {} | {} | {} | {:.1} | {} | {} |",
        t.lifetime.as_secs(),
        t.pulls,
        t.requests,
        t.seconds,
        t.pulls,
        t.requests,
        t.token_requests,
        t.token_requests as f64 * 1000.0 / t.pulls as f64,
        t.scopes.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", "),
        t.metrics
    );

    let connectors_cpu = throughput
        .iter()
        .filter(|t| t.route == "connectors")
        .map(|t| t.proxy_cpu_per_gib)
        .fold(0.0, f64::max);
    let connectors_memory = r
        .memories
        .iter()
        .find(|m| m.route == "connectors")
        .map(|m| m.high_water as f64 / MIB)
        .unwrap_or(f64::NAN);
    let mut targets = vec![];
    for clients in [1, 4] {
        let ratio = rate("connectors", clients) / rate("direct", clients);
        targets.push((
            format!("connectors ≥ 80% of direct, {clients} client(s)"),
            format!("{:.0}%", 100.0 * ratio),
            ratio >= 0.8,
        ));
    }
    for clients in s.client_counts {
        let ratio = rate("connectors", clients) / rate("nginx", clients);
        targets.push((
            format!("connectors ≥ 2× nginx, {clients} client(s)"),
            format!("{ratio:.2}×"),
            ratio >= 2.0,
        ));
    }
    targets.push((
        "connectors CPU ≤ 0.5 s per GiB (worst client count)".to_owned(),
        format!("{connectors_cpu:.2} s/GiB"),
        connectors_cpu <= 0.5,
    ));
    targets.push((
        format!("connectors RSS < 100 MiB at {} streams (VmHWM)", s.memory_streams),
        format!("{connectors_memory:.1} MiB"),
        connectors_memory < 100.0,
    ));
    targets.push((
        "1 upstream token request per scope per token lifetime".to_owned(),
        format!(
            "{} request(s), {} scope(s), {} lifetime(s) elapsed",
            t.token_requests,
            t.scopes.len(),
            lifetimes
        ),
        t.token_requests <= allowed,
    ));
    out.push_str("\n## Targets\n\n| target | measured | result |\n|---|---|---|\n");
    for (target, measured, pass) in targets {
        let _ = writeln!(out, "| {target} | {measured} | {} |", verdict(pass));
    }
    out
}
