//! Forward-mode (TLS interception) benchmark. In one run, against the same
//! real TLS registry (CNCF distribution, htpasswd) and the same 1 GiB blob,
//! three paths side by side: direct TLS with the real credential, squid with
//! `ssl_bump` injecting the credential (the reference intercepting proxy),
//! and `connectors proxy --forward-listen` (the release binary). Each client
//! opens its own connection (a CONNECT for the proxies, then TLS to the
//! registry's address through it). Measures blob throughput with 1 and 4
//! clients and each proxy's CPU per GiB, warm handshake latency (TCP,
//! CONNECT and TLS, leaf cache warm) and CONNECTs per second. Writes
//! `bench/results/forward.md`.
//!
//! Run with `cargo bench --bench forward` (`-- --quick` for a short run).
//! Needs `bash .ci/install` plus `apt-get install squid-openssl`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use base64::Engine as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, HOST, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use testing::{CopyOptions, OciLayout, Registry, RegistryAccess, RegistryOptions, Skopeo, StoreYaml, TestTls};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

#[allow(dead_code)]
mod common;
use common::*;

const USER: &str = "robot$bench";
const PASSWORD: &str = "bench-Pa55-77c1";
const CALLER_TOKEN: &str = "bench-forward-token-1e4b";
const REPOSITORY: &str = "lab/big";
/// The registry's name (its certificate covers it), known only to the proxies.
const REGISTRY_NAME: &str = "registry.test";
const GIB: f64 = (1u64 << 30) as f64;
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);
const START_TIMEOUT: Duration = Duration::from_secs(20);

struct Settings {
    quick: bool,
    blob_size: u64,
    handshakes: usize,
    connect_window: Duration,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let settings = Settings {
        quick,
        blob_size: if quick { 128 << 20 } else { 1 << 30 },
        handshakes: if quick { 100 } else { 400 },
        connect_window: Duration::from_secs(if quick { 2 } else { 5 }),
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(&settings)) {
        Ok(report) => {
            let path = write_results("forward.md", &report);
            println!("{report}\nwritten to {}", path.display());
        }
        Err(error) => {
            eprintln!("forward benchmark failed: {error:#}");
            std::process::exit(1);
        }
    }
}

/// Handshake latencies per path: full ones, and resuming ones with how many
/// did resume.
struct Handshakes {
    full: Vec<(&'static str, Histogram<u64>)>,
    resumed: Vec<(&'static str, Histogram<u64>, usize)>,
}

/// How a client reaches the registry.
#[derive(Clone)]
struct Path3 {
    name: &'static str,
    /// The proxy to CONNECT through, and its Proxy-Authorization.
    proxy: Option<(SocketAddr, Option<String>)>,
    /// Authorization the client itself sends (direct only).
    authorization: Option<String>,
    pids: Vec<u32>,
}

async fn run(settings: &Settings) -> anyhow::Result<String> {
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let revision = revision();
    let lab = tempfile::tempdir()?;
    let tls = TestTls::for_loopback()?;
    let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD).tls(&tls)).await?;

    // The blob, pushed directly as the layer of an image.
    let layout = OciLayout::new(&lab.path().join("layout"))?;
    let image = layout.add_image("v1", &[settings.blob_size], 42)?;
    let blob = image.layers[0].clone();
    let push = CopyOptions::default().dest(RegistryAccess::https(&tls.cert_dir).creds(USER, PASSWORD));
    Skopeo::new()?
        .with_timeout(Duration::from_secs(900))
        .copy(
            &layout.reference("v1"),
            &format!("docker://{}/{REPOSITORY}:v1", registry.addr()),
            &push,
        )
        .await
        .context("push the blob")?;
    std::fs::remove_dir_all(lab.path().join("layout"))?;

    let (connectors, connectors_state) = start_connectors(lab.path(), &registry, &tls)?;
    let squid = Squid::start(&lab.path().join("squid"), &registry, &tls)?;
    let basic = |user: &str, password: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    };
    let paths = [
        Path3 {
            name: "direct TLS",
            proxy: None,
            authorization: Some(basic(USER, PASSWORD)),
            pids: Vec::new(),
        },
        Path3 {
            name: "squid ssl_bump",
            proxy: Some((squid.addr, None)),
            authorization: None,
            pids: squid.pids(),
        },
        Path3 {
            name: "connectors",
            proxy: Some((connectors.addr, Some(basic("team%2Flab", CALLER_TOKEN)))),
            authorization: None,
            pids: vec![connectors.pid()],
        },
    ];
    let mut roots = rustls::RootCertStore::empty();
    for pem in [
        tls.ca_pem().to_owned(),
        std::fs::read_to_string(connectors_state.join("proxy-ca.crt"))?,
        squid.ca_pem.clone(),
    ] {
        roots.add_parsable_certificates(certs::load_certs_pem(&pem)?);
    }
    let client_tls = Arc::new(certs::client_config(roots, &[b"http/1.1"])?);
    let registry_addr = registry.addr();
    let blob_path = format!("/v2/{REPOSITORY}/blobs/{}", blob.digest);

    // Every path serves the same bytes (and the page cache is warm).
    for path in &paths {
        let size = fetch(path, registry_addr, &client_tls, &blob_path, None)
            .await
            .with_context(|| format!("squid's cache.log ends: {}", squid.log_tail()))?;
        ensure!(
            size == blob.size,
            "{} served {size} bytes, not {}",
            path.name,
            blob.size
        );
    }

    // 1. Throughput, the paths interleaved so drift hits all alike.
    let mut transfers = Vec::new();
    for clients in [1usize, 4] {
        for _ in 0..if clients == 1 { 3 } else { 2 } {
            for path in &paths {
                let t = transfer(
                    path,
                    registry_addr,
                    &client_tls,
                    &blob_path,
                    clients,
                    blob.size,
                    registry.pid(),
                )
                .await
                .with_context(|| format!("{} with {clients} clients", path.name))?;
                transfers.push(t);
            }
        }
    }

    // 2. Handshake latency, sequential, warm.
    let mut handshakes = Vec::new();
    for path in &paths {
        for _ in 0..10 {
            drop(open(path, registry_addr, &client_tls).await?);
        }
        let mut histogram = Histogram::<u64>::new(3)?;
        for _ in 0..settings.handshakes {
            let started = Instant::now();
            let stream = open(path, registry_addr, &client_tls).await?;
            histogram.record(started.elapsed().as_micros() as u64)?;
            drop(stream);
        }
        handshakes.push((path.name, histogram));
    }

    // 2b. The same, resuming: each connection reads one answer, which takes
    // in the session tickets, so the next one can resume.
    let mut resumed = Vec::new();
    for path in &paths {
        take_tickets(&mut open(path, registry_addr, &client_tls).await?, registry_addr).await?;
        let mut histogram = Histogram::<u64>::new(3)?;
        let mut resumptions = 0;
        for _ in 0..settings.handshakes {
            let started = Instant::now();
            let mut stream = open(path, registry_addr, &client_tls).await?;
            histogram.record(started.elapsed().as_micros() as u64)?;
            if stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                resumptions += 1;
            }
            take_tickets(&mut stream, registry_addr).await?;
        }
        resumed.push((path.name, histogram, resumptions));
    }

    // 3. CONNECT (or handshake) rate: 4 loops, closed.
    let mut rates = Vec::new();
    for path in &paths {
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + settings.connect_window;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (path, done, config) = (path.clone(), done.clone(), client_tls.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    if open(&path, registry_addr, &config).await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for task in tasks {
            task.await?;
        }
        rates.push((
            path.name,
            done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
        ));
    }

    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let squid_version = program_version("squid", &["-v"]);
    drop(squid);
    drop(connectors);
    Ok(render(
        settings,
        &revision,
        &squid_version,
        &transfers,
        &Handshakes {
            full: handshakes,
            resumed,
        },
        &rates,
        (load_before.trim(), load_after.trim()),
    ))
}

/// TCP to the registry or the proxy, a CONNECT through the proxy, then TLS
/// for the registry's address.
async fn open(
    path: &Path3,
    registry: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    // NB: the registry by name, as clients address it; the proxies learn
    // its address from `--resolve` (connectors) and a hosts file (squid).
    let server_name = ServerName::try_from(REGISTRY_NAME)?;
    let target = path.proxy.as_ref().map_or(registry, |(proxy, _)| *proxy);
    let authority = format!("{REGISTRY_NAME}:{}", registry.port());
    let mut stream = timeout(STEP_TIMEOUT, TcpStream::connect(target)).await??;
    stream.set_nodelay(true)?;
    if let Some((_, authorization)) = &path.proxy {
        let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
        if let Some(value) = authorization {
            let _ = write!(request, "Proxy-Authorization: {value}\r\n");
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        let head = timeout(STEP_TIMEOUT, read_head(&mut stream)).await??;
        ensure!(
            head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
            "{}: {head}",
            path.name
        );
    }
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    Ok(timeout(STEP_TIMEOUT, connector.connect(server_name, stream)).await??)
}

/// Sends one request and reads its answer's head. The server's session
/// tickets come before it, so the client config holds them afterwards.
async fn take_tickets(
    stream: &mut tokio_rustls::client::TlsStream<TcpStream>,
    registry: SocketAddr,
) -> anyhow::Result<()> {
    let request = format!(
        "GET /v2/ HTTP/1.1\r\nHost: {REGISTRY_NAME}:{}\r\nConnection: close\r\n\r\n",
        registry.port()
    );
    stream.write_all(request.as_bytes()).await?;
    timeout(STEP_TIMEOUT, read_head(stream)).await??;
    Ok(())
}

/// Reads a response head byte by byte, so nothing after it is consumed.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> anyhow::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ensure!(head.len() < 16 * 1024, "the proxy's response head is too long");
        if stream.read(&mut byte).await? == 0 {
            bail!("the proxy closed the connection");
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

async fn http<S>(stream: S) -> anyhow::Result<SendRequest<Empty<Bytes>>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// GETs the blob over a fresh connection, discarding the body; returns the
/// byte count.
async fn fetch(
    path: &Path3,
    registry: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    blob_path: &str,
    progress: Option<&AtomicU64>,
) -> anyhow::Result<u64> {
    let mut sender = http(open(path, registry, config).await?).await?;
    let mut request = Request::get(blob_path).header(HOST, format!("{REGISTRY_NAME}:{}", registry.port()));
    if let Some(value) = &path.authorization {
        request = request.header(AUTHORIZATION, HeaderValue::from_str(value)?);
    }
    let response = timeout(STEP_TIMEOUT, sender.send_request(request.body(Empty::new())?)).await??;
    if response.status() != StatusCode::OK {
        let status = response.status();
        let error = response.headers().get("x-squid-error").cloned();
        bail!("{}: status {status} ({error:?})", path.name);
    }
    let mut body = response.into_body();
    let mut size = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            size += data.len() as u64;
            if let Some(progress) = progress {
                progress.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
    }
    Ok(size)
}

struct Transfer {
    path: &'static str,
    clients: usize,
    gib_per_second: f64,
    proxy_cpu_per_gib: Option<(f64, f64)>,
    registry_cpu_per_gib: f64,
}

async fn transfer(
    path: &Path3,
    registry: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    blob_path: &str,
    clients: usize,
    size: u64,
    registry_pid: u32,
) -> anyhow::Result<Transfer> {
    let pids: Vec<String> = path.pids.iter().map(u32::to_string).collect();
    let registry_pids = vec![registry_pid.to_string()];
    let (user_before, system_before) = cpu_split(&pids);
    let registry_before = cpu_seconds(&registry_pids);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (path, config, blob_path) = (path.clone(), config.clone(), blob_path.to_owned());
        tasks.push(tokio::spawn(async move {
            timeout(TRANSFER_TIMEOUT, fetch(&path, registry, &config, &blob_path, None)).await?
        }));
    }
    let mut moved = 0u64;
    for task in tasks {
        let got = task.await??;
        ensure!(got == size, "a client got {got} bytes, not {size}");
        moved += got;
    }
    let seconds = started.elapsed().as_secs_f64();
    let gib = moved as f64 / GIB;
    let (user_after, system_after) = cpu_split(&pids);
    let proxy_cpu_per_gib = (!pids.is_empty()).then(|| {
        let (user, system) = (user_after - user_before, system_after - system_before);
        (
            (user + system) / gib,
            if user + system > 0.0 {
                system / (user + system)
            } else {
                0.0
            },
        )
    });
    Ok(Transfer {
        path: path.name,
        clients,
        gib_per_second: gib / seconds,
        proxy_cpu_per_gib,
        registry_cpu_per_gib: (cpu_seconds(&registry_pids) - registry_before) / gib,
    })
}

/// `connectors proxy --forward-listen` for the registry, and where it keeps
/// its generated CA.
fn start_connectors(dir: &Path, registry: &Registry, tls: &TestTls) -> anyhow::Result<(Connectors, PathBuf)> {
    let store = StoreYaml::new("team")
        .basic_auth("robot", USER, PASSWORD)
        .ca("registry-ca", tls.ca_pem())
        .connector(
            "lab",
            &format!("https://{REGISTRY_NAME}:{}", registry.port()),
            "robot",
            Some("registry-ca"),
        )
        .build();
    let (store_path, tokens, state) = (
        dir.join("store.yaml"),
        dir.join("tokens.csv"),
        dir.join("connectors-state"),
    );
    std::fs::write(&store_path, store)?;
    std::fs::write(
        &tokens,
        format!("{CALLER_TOKEN},system:serviceaccount:team:bench,uid-1\n"),
    )?;
    let resolve = format!("{REGISTRY_NAME}:{}:{}", registry.port(), registry.addr().ip());
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
        "127.0.0.1:0".as_ref(),
        "--forward-listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--resolve".as_ref(),
        resolve.as_ref(),
    ];
    let connectors = Connectors::start(&connectors_binary(), &args, "forward proxy listening")?;
    Ok((connectors, state))
}

/// squid-openssl with ssl_bump, injecting the credential, killed on drop.
struct Squid {
    child: Child,
    addr: SocketAddr,
    ca_pem: String,
    dir: PathBuf,
}

impl Squid {
    fn start(dir: &Path, registry: &Registry, tls: &TestTls) -> anyhow::Result<Self> {
        let squid = find_program("squid").context("apt-get install squid-openssl")?;
        std::fs::create_dir_all(dir)?;
        let ca = certs::CertificateAuthority::generate("squid bench MITM CA", Duration::from_secs(86400))?;
        std::fs::write(dir.join("mitm.pem"), format!("{}{}", ca.cert_pem(), ca.key_pem()))?;
        std::fs::write(dir.join("upstream-ca.crt"), tls.ca_pem())?;
        std::fs::write(dir.join("hosts"), format!("{} {REGISTRY_NAME}\n", registry.addr().ip()))?;
        let ssl_db = dir.join("ssl_db");
        let status = Command::new("/usr/lib/squid/security_file_certgen")
            .arg("-c")
            .arg("-s")
            .arg(&ssl_db)
            .args(["-M", "4MB"])
            .stdout(Stdio::null())
            .status()?;
        ensure!(status.success(), "security_file_certgen -c failed");
        let addr = free_port()?;
        let credential = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
        let d = dir.display();
        let config = format!(
            "http_port {addr} ssl-bump tls-cert={d}/mitm.pem generate-host-certificates=on dynamic_cert_mem_cache_size=4MB\n\
             sslcrtd_program /usr/lib/squid/security_file_certgen -s {d}/ssl_db -M 4MB\n\
             sslcrtd_children 2 startup=1 idle=1\n\
             acl step1 at_step SslBump1\n\
             ssl_bump peek step1\n\
             ssl_bump bump all\n\
             tls_outgoing_options cafile={d}/upstream-ca.crt\n\
             acl localnet src 127.0.0.0/8\n\
             http_access allow localnet\n\
             http_access deny all\n\
             cache deny all\n\
             pid_filename {d}/squid.pid\n\
             access_log none\n\
             cache_log {d}/cache.log\n\
             cache_effective_user proxy\n\
             shutdown_lifetime 1 seconds\n\
             pinger_enable off\n\
             dns_nameservers 127.0.0.1\n\
             hosts_file {d}/hosts\n\
             acl registry dstdomain {REGISTRY_NAME}\n\
             request_header_add Authorization \"Basic {credential}\" registry\n"
        );
        std::fs::write(dir.join("bump.conf"), config)?;
        let _ = Command::new("chown").args(["-R", "proxy:proxy"]).arg(dir).status();
        let child = Command::new(squid)
            .arg("-N")
            .arg("-f")
            .arg(dir.join("bump.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start squid")?;
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            ensure!(
                started.elapsed() < START_TIMEOUT,
                "squid did not listen; see {d}/cache.log"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self {
            child,
            addr,
            ca_pem: ca.cert_pem().to_owned(),
            dir: dir.to_owned(),
        })
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("cache.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    /// squid and its helpers.
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.child.id()];
        pids.extend(children_of(self.child.id()));
        pids
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn render(
    settings: &Settings,
    revision: &str,
    squid_version: &str,
    transfers: &[Transfer],
    handshakes: &Handshakes,
    rates: &[(&str, f64)],
    load: (&str, &str),
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Forward proxy (TLS interception) benchmark\n");
    let _ = writeln!(
        out,
        "`cargo bench --bench forward`{} on this machine (2 cores), at {revision}. One run, three paths to the same TLS registry \
         (`docker-registry`, htpasswd) and the same blob of {} MiB: **direct TLS** with the real credential; **squid ssl_bump** \
         (`{squid_version}`, `ssl_bump peek` then `bump`, `request_header_add Authorization`, `cache deny all`, one worker); \
         **connectors** = `target/release/connectors proxy --forward-listen`. Every client opens its own connection: for the \
         proxies a CONNECT to the registry's address and TLS through it (the proxy decrypts and re-encrypts), verified against \
         the proxy's CA. Clients, proxies and registry share the 2 cores. Load average before: `{}`, after: `{}`.\n",
        if settings.quick { " -- --quick" } else { "" },
        settings.blob_size >> 20,
        load.0,
        load.1
    );
    let _ = writeln!(out, "## Blob GET throughput\n");
    let _ = writeln!(
        out,
        "GiB/s = all bytes / wall time, the median of the runs. CPU = utime + stime from `/proc/<pid>/stat`, per GiB moved (squid: main process and helpers).\n"
    );
    let _ = writeln!(
        out,
        "| path | clients | GiB/s | vs direct TLS | proxy CPU s/GiB | registry CPU s/GiB | runs (GiB/s) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
    let median_of = |path: &str, clients: usize| {
        let runs: Vec<&Transfer> = transfers
            .iter()
            .filter(|t| t.path == path && t.clients == clients)
            .collect();
        let rates: Vec<f64> = runs.iter().map(|t| t.gib_per_second).collect();
        (median(&rates), runs)
    };
    let mut ratios = Vec::new();
    for clients in [1usize, 4] {
        let (direct, _) = median_of("direct TLS", clients);
        for path in ["direct TLS", "squid ssl_bump", "connectors"] {
            let (rate, runs) = median_of(path, clients);
            let cpu: Vec<f64> = runs.iter().filter_map(|t| t.proxy_cpu_per_gib.map(|c| c.0)).collect();
            let kernel: Vec<f64> = runs.iter().filter_map(|t| t.proxy_cpu_per_gib.map(|c| c.1)).collect();
            let registry: Vec<f64> = runs.iter().map(|t| t.registry_cpu_per_gib).collect();
            let cpu_text = if cpu.is_empty() {
                "—".to_owned()
            } else {
                format!("{:.2} ({:.0}% kernel)", median(&cpu), median(&kernel) * 100.0)
            };
            let runs_text = runs
                .iter()
                .map(|t| format!("{:.2}", t.gib_per_second))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                out,
                "| {path} | {clients} | {rate:.2} | {:.2} | {cpu_text} | {:.2} | {runs_text} |",
                rate / direct,
                median(&registry)
            );
            ratios.push((
                path,
                clients,
                rate / direct,
                if cpu.is_empty() { 0.0 } else { median(&cpu) },
            ));
        }
    }
    let _ = writeln!(out, "\n## Handshake latency (warm)\n");
    let _ = writeln!(
        out,
        "{} sequential connections per path after 10 warm-ups: TCP connect, the CONNECT and its answer (proxies), and the TLS \
         handshake; the leaf certificate is cached after the first.\n",
        settings.handshakes
    );
    let _ = writeln!(out, "| path | p50 (ms) | p99 (ms) | max (ms) |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    let mut connectors_p99 = 0.0;
    for (path, histogram) in &handshakes.full {
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        if *path == "connectors" {
            connectors_p99 = ms(0.99);
        }
        let _ = writeln!(
            out,
            "| {path} | {:.2} | {:.2} | {:.2} |",
            ms(0.5),
            ms(0.99),
            histogram.max() as f64 / 1000.0
        );
    }
    let _ = writeln!(out, "\n## Handshake latency (resuming)\n");
    let _ = writeln!(
        out,
        "{} sequential connections per path, each reading one answer (which takes in the TLS session tickets) before the \
         next; timed as above. Resumed = handshakes the server let the client resume.\n",
        settings.handshakes
    );
    let _ = writeln!(out, "| path | p50 (ms) | p99 (ms) | max (ms) | resumed |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for (path, histogram, resumptions) in &handshakes.resumed {
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        let _ = writeln!(
            out,
            "| {path} | {:.2} | {:.2} | {:.2} | {resumptions} of {} |",
            ms(0.5),
            ms(0.99),
            histogram.max() as f64 / 1000.0,
            settings.handshakes
        );
    }
    let _ = writeln!(out, "\n## Connections per second\n");
    let _ = writeln!(
        out,
        "4 concurrent loops for {} s, each a new connection: CONNECT (proxies) and TLS handshake, then closed.\n",
        settings.connect_window.as_secs()
    );
    let _ = writeln!(out, "| path | per second |");
    let _ = writeln!(out, "|---|---:|");
    for (path, rate) in rates {
        let _ = writeln!(out, "| {path} | {rate:.0} |");
    }
    let _ = writeln!(out, "\n## Targets\n");
    let _ = writeln!(out, "| target | measured | result |");
    let _ = writeln!(out, "|---|---|---|");
    for clients in [1usize, 4] {
        if let Some((_, _, ratio, _)) = ratios.iter().find(|r| r.0 == "connectors" && r.1 == clients) {
            let _ = writeln!(
                out,
                "| connectors ≥ 0.45 of direct TLS, {clients} client(s) | {ratio:.2} | {} |",
                if *ratio >= 0.45 { "PASS" } else { "MISS" }
            );
        }
    }
    let _ = writeln!(
        out,
        "| warm handshake p99 < 2 ms | {connectors_p99:.2} ms | {} |",
        if connectors_p99 < 2.0 { "PASS" } else { "MISS" }
    );
    for clients in [1usize, 4] {
        let cpu = |path: &str| {
            ratios
                .iter()
                .find(|r| r.0 == path && r.1 == clients)
                .map(|r| r.3)
                .unwrap_or(0.0)
        };
        let _ = writeln!(
            out,
            "| proxy CPU per GiB beside squid's, {clients} client(s) | connectors {:.2} s, squid {:.2} s | reported |",
            cpu("connectors"),
            cpu("squid ssl_bump")
        );
    }
    out
}
