//! Scale-out benchmark: N replicas of the release `connectors proxy` (one
//! store file, one config, each its own process on its own loopback port)
//! behind a round-robin TCP balancer written here, in front of a token-auth
//! registry (CNCF distribution behind `testing::TokenServer`).
//!
//! 1. **Token traffic vs replicas**: for 1, 2 and 3 fresh replicas the same
//!    fixed workload of pulls (manifest and every blob, digests checked);
//!    half the clients open a connection per pull, half one per request, so
//!    many pulls fetch their manifest through one replica and their blobs
//!    through others. Counts token service requests (at the token server and
//!    in each replica's metrics), connections per backend and pulls/s: each
//!    replica fetches and caches its own token, and nothing else has to be
//!    shared between them. Then (not with `--quick`) 3 replicas under light
//!    traffic for a bit over two 60 s token lifetimes: when each renews.
//! 2. **Replica death**: 3 replicas, clients looping pulls for a while; one
//!    replica is SIGKILLed in the middle. Only the requests it was serving
//!    may fail; the balancer marks it dead on the next connect that fails,
//!    as a Service drops an endpoint.
//!
//! Everything listens on loopback, every request has a timeout and every
//! phase a deadline. Writes `bench/results/scaleout.md`. Run with `cargo
//! bench --bench scaleout` (`-- --quick`: fewer pulls, no renewal run, a
//! shorter death phase). Needs `bash .ci/install` (docker-registry, skopeo).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{ACCEPT, AUTHORIZATION, HOST, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use testing::client::MANIFEST_ACCEPT;
use testing::digest::Sha256;
use testing::{
    Blob, CopyOptions, ImageDigests, OciLayout, Registry, RegistryAccess, RegistryOptions, Skopeo, StoreYaml,
    TokenServer, TokenServerOptions,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::timeout;

#[allow(dead_code)]
mod common;
use common::*;

const USER: &str = "robot$scaleout";
const PASSWORD: &str = "scaleout-Pa55-41c7";
const CALLER_TOKEN: &str = "scaleout-caller-token-5b0e";
const NAMESPACE: &str = "team";
const CONNECTOR: &str = "lab";
const REPOSITORY: &str = "lab/scaleout";
const TAG: &str = "v1";
/// The image's layers: one relayed with splice(2) (1 MiB and over), two not.
const LAYER_SIZES: [u64; 3] = [2 << 20, 512 << 10, 64 << 10];
/// The replica counts of the token traffic phase.
const REPLICA_COUNTS: [usize; 3] = [1, 2, 3];
/// Replicas in the death phase.
const DEATH_REPLICAS: usize = 3;
/// Concurrent clients in both phases.
const CLIENTS: usize = 8;
/// Replicas and clients of the token renewal run.
const RENEWAL_REPLICAS: usize = 3;
const RENEWAL_CLIENTS: usize = 2;
/// The token lifetime of the renewal run: the shortest the proxy honours
/// (it never takes a token for less than 60 s).
const RENEWAL_LIFETIME: Duration = Duration::from_secs(60);
/// How long the renewal run lasts: a bit over two lifetimes.
const RENEWAL_RUN: Duration = Duration::from_secs(130);
/// A renewal client's pause between pulls.
const RENEWAL_PAUSE: Duration = Duration::from_millis(500);
/// How long before expiry the proxy renews a token used for a GET
/// (`TOKEN_MARGIN` in proxy/src/pipeline.rs).
const RENEWAL_MARGIN: Duration = Duration::from_secs(5);
const MIB: f64 = (1u64 << 20) as f64;

/// Time for a client's TCP connect to the balancer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for the balancer to route a client's connection to a backend.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for the balancer's connect to one backend.
const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest the balancer relays one connection.
const RELAY_LIMIT: Duration = Duration::from_secs(300);
/// Time for one request, its whole answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for every client of a token traffic run to finish its pulls.
const PULLS_DEADLINE: Duration = Duration::from_secs(300);
/// Time for looping clients to finish their last pull after the run's end:
/// a pull of five requests that each time out (connect, route, answer).
const STOP_DEADLINE: Duration = Duration::from_secs(120);
/// Time for a SIGKILLed replica to be gone (its sockets closed).
const DEATH_DEADLINE: Duration = Duration::from_secs(5);
/// Time to read a replica's `/metrics`.
const METRICS_TIMEOUT: Duration = Duration::from_secs(10);

struct Settings {
    quick: bool,
    /// Pulls per client in each token traffic run.
    pulls_per_client: usize,
    /// How long the death phase's clients loop over pulls.
    death_run: Duration,
    /// When in the death phase the replica is killed.
    kill_at: Duration,
    /// Whether the token renewal run (over two minutes) runs.
    renewal: bool,
}

impl Settings {
    fn from_args() -> Self {
        let quick = std::env::args().any(|a| a == "--quick");
        if quick {
            Self {
                quick,
                pulls_per_client: 6,
                death_run: Duration::from_secs(6),
                kill_at: Duration::from_millis(2500),
                renewal: false,
            }
        } else {
            Self {
                quick,
                pulls_per_client: 40,
                death_run: Duration::from_secs(10),
                kill_at: Duration::from_secs(4),
                renewal: true,
            }
        }
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = Settings::from_args();
    // NB: the clients and the balancer get both cores, like the replicas
    // and the registry.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(&settings)) {
        Ok((report, clean)) => {
            let path = write_results("scaleout.md", &report);
            println!("{report}\nwritten to {}", path.display());
            if !clean {
                eprintln!("scale-out benchmark: a check failed; see the report");
                std::process::exit(1);
            }
        }
        Err(error) => {
            eprintln!("scale-out benchmark failed: {error:#}");
            std::process::exit(1);
        }
    }
}

/// Returns the report and whether every check passed.
async fn run(settings: &Settings) -> anyhow::Result<(String, bool)> {
    // NB: read before the run: cargo built the binary just before it started.
    let revision = revision();
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let binary = connectors_binary();
    let lab = tempfile::tempdir()?;

    let token_server = TokenServer::start(TokenServerOptions::with_user(USER, PASSWORD))?;
    let registry = Registry::start(RegistryOptions::token(&token_server)).await?;
    let layout = OciLayout::new(&lab.path().join("layout"))?;
    let image = layout.add_image(TAG, &LAYER_SIZES, 73)?;
    Skopeo::new()?
        .copy(
            &layout.reference(TAG),
            &registry.docker_reference(&format!("{REPOSITORY}:{TAG}")),
            &CopyOptions::default().dest(RegistryAccess::plain_http().creds(USER, PASSWORD)),
        )
        .await
        .context("push the image")?;
    let config = ReplicaConfig::write(&binary, lab.path(), &registry)?;
    let image = Arc::new(image);

    let mut spreads = Vec::new();
    for replicas in REPLICA_COUNTS {
        let spread = token_traffic(settings, &config, &image, &token_server, registry.pid(), replicas).await?;
        eprintln!(
            "token traffic, {replicas} replica(s): {} pulls ok ({} across replicas), {} failed, {} token requests \
             (per replica {:?}), connections per backend {:?}, {:.1} pulls/s",
            spread.pulls_ok,
            spread.cross_replica_pulls,
            spread.pulls_failed,
            spread.token_requests,
            spread.token_fetches,
            spread.connections,
            spread.pulls_per_second(),
        );
        spreads.push(spread);
    }

    let renewal = if settings.renewal {
        let renewal = token_renewal(&config, &image, &token_server).await?;
        eprintln!(
            "token renewal, {RENEWAL_REPLICAS} replicas, tokens valid {} s, {:.0} s: {} token requests (per replica \
             {:?}, at most {} each expected), {} pulls ok, {} requests failed",
            RENEWAL_LIFETIME.as_secs(),
            renewal.seconds,
            renewal.token_requests,
            renewal.token_fetches,
            renewal.expected_per_replica(),
            renewal.pulls_ok,
            renewal.requests_failed,
        );
        Some(renewal)
    } else {
        None
    };

    let death = replica_death(settings, &config, &image, &token_server).await?;
    eprintln!(
        "replica death: killed backend {} at {:.1} s with {} connections open ({} requests in flight); {} requests \
         failed ({} on it, {} elsewhere), {} completed after the kill: {}",
        death.victim,
        death.killed_at,
        death.open_at_death,
        death.in_flight_at_death,
        death.failed_total(),
        death.failed_on_victim(),
        death.failed_elsewhere(),
        death.completed_after_kill,
        if death.passed() { "ok" } else { "FAILED" },
    );

    let clean = spreads.iter().all(Spread::passed) && renewal.as_ref().is_none_or(Renewal::passed) && death.passed();
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let report = render(&Rendered {
        settings,
        revision: &revision,
        binary: &binary,
        image: &image,
        lifetime: TokenServerOptions::default().expires_in,
        spreads: &spreads,
        renewal: renewal.as_ref(),
        death: &death,
        load: (load_before.trim(), load_after.trim()),
    });
    Ok((report, clean))
}

// ---- Replicas ----

/// What every replica shares: the binary, the store, the caller tokens and
/// the state directory, as replicas of one Deployment share their config.
struct ReplicaConfig {
    binary: PathBuf,
    store: PathBuf,
    tokens: PathBuf,
    state: PathBuf,
}

impl ReplicaConfig {
    fn write(binary: &Path, dir: &Path, registry: &Registry) -> anyhow::Result<Self> {
        let store = StoreYaml::new(NAMESPACE)
            .basic_auth("robot", USER, PASSWORD)
            .connector(CONNECTOR, &registry.url(), "robot", None)
            .build();
        let config = Self {
            binary: binary.to_owned(),
            store: dir.join("store.yaml"),
            tokens: dir.join("tokens.csv"),
            state: dir.join("state"),
        };
        std::fs::write(&config.store, store)?;
        std::fs::write(
            &config.tokens,
            format!("{CALLER_TOKEN},system:serviceaccount:{NAMESPACE}:scaleout,uid-1\n"),
        )?;
        Ok(config)
    }

    /// `count` fresh replicas, started one after the other, each listening
    /// (reverse mode only) on a port of its own.
    fn start(&self, count: usize) -> anyhow::Result<Vec<Connectors>> {
        let args = [
            "proxy".as_ref(),
            // NB: the registry and the token service listen on loopback.
            "--egress-allow".as_ref(),
            "127.0.0.0/8".as_ref(),
            "--store".as_ref(),
            self.store.as_os_str(),
            "--token-auth-file".as_ref(),
            self.tokens.as_os_str(),
            "--state-dir".as_ref(),
            self.state.as_os_str(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
        ];
        (0..count)
            .map(|index| {
                Connectors::start(&self.binary, &args, "proxy listening")
                    .with_context(|| format!("start replica {index}"))
            })
            .collect()
    }
}

/// Tokens fetched and reused, from a replica's `/metrics`.
#[derive(Clone, Copy, Default)]
struct TokenCounts {
    fetched: u64,
    reused: u64,
}

impl TokenCounts {
    /// Reads `replica`'s metrics directly, not through the balancer.
    async fn fetch(replica: SocketAddr) -> anyhow::Result<Self> {
        let text = timeout(METRICS_TIMEOUT, async {
            let stream = TcpStream::connect(replica).await?;
            let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            let request = Request::get("/metrics")
                .header(HOST, replica.to_string())
                .body(Full::new(Bytes::new()))?;
            let response = sender.send_request(request).await?;
            ensure!(response.status() == StatusCode::OK, "/metrics: {}", response.status());
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok(String::from_utf8_lossy(&body).into_owned())
        })
        .await
        .with_context(|| format!("{replica}/metrics: no answer within {METRICS_TIMEOUT:?}"))??;
        let sum = |name: &str| -> u64 {
            text.lines()
                .filter(|line| line.starts_with(name))
                .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        Ok(Self {
            fetched: sum("connectors_proxy_upstream_token_fetches"),
            reused: sum("connectors_proxy_upstream_token_cache_hits"),
        })
    }

    /// Every replica's counts; a replica that does not answer counts as none.
    async fn of_all(replicas: &[Connectors]) -> Vec<Self> {
        let mut counts = Vec::new();
        for replica in replicas {
            counts.push(Self::fetch(replica.addr).await.unwrap_or_else(|error| {
                eprintln!("warning: {error:#}");
                Self::default()
            }));
        }
        counts
    }
}

/// SIGKILLs `pid` (a replica this bench started) and waits until the kernel
/// has closed its sockets: the process is a zombie or gone.
async fn kill_replica(pid: u32) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .await
        .context("run kill")?;
    ensure!(status.success(), "kill -KILL {pid}: {status}");
    let deadline = Instant::now() + DEATH_DEADLINE;
    while Instant::now() < deadline {
        if is_dead(pid) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    bail!("replica {pid} still alive {DEATH_DEADLINE:?} after SIGKILL")
}

/// True once the process has exited: its stat says zombie (it is our child,
/// reaped only when dropped) or it is gone.
fn is_dead(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next());
    matches!(state, Some("Z" | "X"))
}

// ---- The balancer ----

/// A round-robin TCP balancer: each client connection goes to the next live
/// backend; a backend whose connect fails is marked dead and the next one
/// tried, as a Service's endpoint goes away. Stops on drop.
struct Balancer {
    addr: SocketAddr,
    table: Arc<Table>,
    accept: tokio::task::JoinHandle<()>,
}

/// The balancer's backends and what it counted, shared with the clients so
/// they learn which replica serves each of their connections.
struct Table {
    backends: Vec<SocketAddr>,
    dead: Vec<AtomicBool>,
    next: AtomicUsize,
    /// Connections being relayed, by backend.
    open: Vec<AtomicU64>,
    /// Connections relayed so far, by backend.
    connections: Vec<AtomicU64>,
    /// Client connections closed because no backend was reachable.
    unrouted: AtomicU64,
    /// Where each client connection (by its address) went, until the client
    /// asks; `None`: nowhere.
    routes: Mutex<HashMap<SocketAddr, Option<usize>>>,
    routed: Notify,
}

impl Balancer {
    async fn start(backends: Vec<SocketAddr>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let count = backends.len();
        let table = Arc::new(Table {
            backends,
            dead: (0..count).map(|_| AtomicBool::new(false)).collect(),
            next: AtomicUsize::new(0),
            open: (0..count).map(|_| AtomicU64::new(0)).collect(),
            connections: (0..count).map(|_| AtomicU64::new(0)).collect(),
            unrouted: AtomicU64::new(0),
            routes: Mutex::new(HashMap::new()),
            routed: Notify::new(),
        });
        let accept = tokio::spawn(accept_loop(listener, table.clone()));
        Ok(Self { addr, table, accept })
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        // NB: the relays live in the accept loop's JoinSet and stop with it.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, table: Arc<Table>) {
    let mut relays = tokio::task::JoinSet::new();
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("balancer: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while relays.try_join_next().is_some() {}
        relays.spawn(relay(table.clone(), client, peer));
    }
}

/// Connects `client` to the next live backend and copies both ways until
/// either side closes.
async fn relay(table: Arc<Table>, mut client: TcpStream, peer: SocketAddr) {
    let Some((backend, mut upstream)) = table.connect().await else {
        table.unrouted.fetch_add(1, Ordering::Relaxed);
        table.route(peer, None);
        return;
    };
    let _ = client.set_nodelay(true);
    table.open[backend].fetch_add(1, Ordering::Relaxed);
    table.connections[backend].fetch_add(1, Ordering::Relaxed);
    let _open = Decrement(&table.open[backend]);
    table.route(peer, Some(backend));
    let _ = timeout(RELAY_LIMIT, tokio::io::copy_bidirectional(&mut client, &mut upstream)).await;
}

impl Table {
    /// The next live backend that accepts a connection, round robin.
    async fn connect(&self) -> Option<(usize, TcpStream)> {
        for _ in 0..self.backends.len() {
            let backend = self.next.fetch_add(1, Ordering::Relaxed) % self.backends.len();
            if self.dead[backend].load(Ordering::Relaxed) {
                continue;
            }
            match timeout(BACKEND_CONNECT_TIMEOUT, TcpStream::connect(self.backends[backend])).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((backend, stream));
                }
                _ => self.dead[backend].store(true, Ordering::Relaxed),
            }
        }
        None
    }

    fn route(&self, client: SocketAddr, backend: Option<usize>) {
        lock(&self.routes).insert(client, backend);
        self.routed.notify_waiters();
    }

    /// The backend the connection from `client` was relayed to, once the
    /// balancer decided (bounded wait); `None` when no backend took it.
    async fn backend_of(&self, client: SocketAddr) -> Option<usize> {
        timeout(ROUTE_TIMEOUT, async {
            loop {
                let routed = self.routed.notified();
                tokio::pin!(routed);
                routed.as_mut().enable();
                // NB: taken, so a later connection from a reused port is
                // never mistaken for this one.
                if let Some(backend) = lock(&self.routes).remove(&client) {
                    return backend;
                }
                routed.await;
            }
        })
        .await
        .ok()
        .flatten()
    }

    fn open(&self) -> Vec<u64> {
        self.open.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    }

    fn connections(&self) -> Vec<u64> {
        self.connections.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    }

    fn dead(&self) -> Vec<bool> {
        self.dead.iter().map(|d| d.load(Ordering::Relaxed)).collect()
    }
}

/// Decrements a counter when dropped, however the task ends.
struct Decrement<'a>(&'a AtomicU64);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---- Clients ----

type Body = Full<Bytes>;

/// How long a client keeps a connection to the balancer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ConnectionUse {
    /// One connection for a whole pull: one replica serves it.
    PerPull,
    /// A new connection for every request: a pull's manifest and blobs go
    /// through different replicas.
    PerRequest,
}

/// A client connection through the balancer and the backend it reached.
struct Link {
    sender: SendRequest<Body>,
    backend: usize,
}

/// What the clients of one run did, shared by them.
struct Traffic {
    requests_ok: AtomicU64,
    bytes: AtomicU64,
    pulls_ok: AtomicU64,
    pulls_failed: AtomicU64,
    /// Pulls that succeeded with requests answered by more than one replica.
    cross_replica_pulls: AtomicU64,
    /// Requests sent and not yet answered in full, by backend.
    in_flight: Vec<AtomicU64>,
    /// Requests sent so far, by backend.
    sent: Vec<AtomicU64>,
    /// Failed requests by backend; the last slot: no backend reached.
    failed: Vec<AtomicU64>,
    /// Failed requests that were sent after the killed replica had died.
    failed_sent_after_death: AtomicU64,
    /// When the killed replica was dead.
    death: OnceLock<Instant>,
    errors: ErrorLog,
}

impl Traffic {
    fn new(backends: usize) -> Self {
        Self {
            requests_ok: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            pulls_ok: AtomicU64::new(0),
            pulls_failed: AtomicU64::new(0),
            cross_replica_pulls: AtomicU64::new(0),
            in_flight: (0..backends).map(|_| AtomicU64::new(0)).collect(),
            sent: (0..backends).map(|_| AtomicU64::new(0)).collect(),
            failed: (0..=backends).map(|_| AtomicU64::new(0)).collect(),
            failed_sent_after_death: AtomicU64::new(0),
            death: OnceLock::new(),
            errors: ErrorLog::default(),
        }
    }

    fn fail(&self, backend: Option<usize>, sent: Instant, message: String) {
        let slot = backend.unwrap_or(self.failed.len() - 1);
        self.failed[slot].fetch_add(1, Ordering::Relaxed);
        if self.death.get().is_some_and(|death| sent > *death) {
            self.failed_sent_after_death.fetch_add(1, Ordering::Relaxed);
        }
        self.errors.record(message);
    }

    fn in_flight(&self) -> Vec<u64> {
        self.in_flight.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    }

    fn sent(&self) -> Vec<u64> {
        self.sent.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    }

    fn failed(&self) -> Vec<u64> {
        self.failed.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    }
}

/// One client: pulls the image through the balancer, reusing its connection
/// as `reuse` says, and tallies into `traffic`.
struct Client {
    balancer: SocketAddr,
    table: Arc<Table>,
    image: Arc<ImageDigests>,
    traffic: Arc<Traffic>,
    reuse: ConnectionUse,
    link: Option<Link>,
}

impl Client {
    fn new(index: usize, balancer: &Balancer, image: &Arc<ImageDigests>, traffic: &Arc<Traffic>) -> Self {
        Self {
            balancer: balancer.addr,
            table: balancer.table.clone(),
            image: image.clone(),
            traffic: traffic.clone(),
            reuse: if index.is_multiple_of(2) {
                ConnectionUse::PerPull
            } else {
                ConnectionUse::PerRequest
            },
            link: None,
        }
    }

    /// The manifest, then every blob it names. A failed request is counted
    /// and not retried; the pull carries on with the next.
    async fn pull(&mut self) {
        let image = self.image.clone();
        // The backend that answered each request; `None`: it failed.
        let mut answered = vec![self.get(&format!("manifests/{TAG}"), &image.manifest, true).await];
        for blob in std::iter::once(&image.config).chain(&image.layers) {
            answered.push(self.get(&format!("blobs/{}", blob.digest), blob, false).await);
        }
        let failed = answered.iter().any(Option::is_none);
        let backends: BTreeSet<usize> = answered.into_iter().flatten().collect();
        if self.reuse == ConnectionUse::PerPull {
            self.link = None;
        }
        if failed {
            self.traffic.pulls_failed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.traffic.pulls_ok.fetch_add(1, Ordering::Relaxed);
            if backends.len() > 1 {
                self.traffic.cross_replica_pulls.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// GETs `rest` of the repository and checks the answer is `expected`;
    /// the backend that answered, or `None` (counted) on failure.
    async fn get(&mut self, rest: &str, expected: &Blob, manifest: bool) -> Option<usize> {
        let target = format!("/v2/namespaces/{NAMESPACE}/connectors/{CONNECTOR}/{REPOSITORY}/{rest}");
        let sent = Instant::now();
        let reusable =
            self.reuse == ConnectionUse::PerPull && self.link.as_ref().is_some_and(|link| !link.sender.is_closed());
        if !reusable {
            self.link = None;
            match self.connect().await {
                Ok(link) => self.link = Some(link),
                Err(error) => {
                    self.traffic.fail(None, sent, format!("GET {target}: {error:#}"));
                    return None;
                }
            }
        }
        let link = self.link.as_mut()?;
        let backend = link.backend;
        let answered = {
            self.traffic.sent[backend].fetch_add(1, Ordering::Relaxed);
            self.traffic.in_flight[backend].fetch_add(1, Ordering::Relaxed);
            let _in_flight = Decrement(&self.traffic.in_flight[backend]);
            let mut request = Request::get(&target)
                .header(HOST, self.balancer.to_string())
                .header(AUTHORIZATION, basic("scaleout", CALLER_TOKEN));
            if manifest {
                request = request.header(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
            }
            match request.body(Full::new(Bytes::new())) {
                Ok(request) => timeout(REQUEST_TIMEOUT, exchange(&mut link.sender, request))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("no complete answer within {REQUEST_TIMEOUT:?}"))),
                Err(error) => Err(error.into()),
            }
        };
        let checked = answered.and_then(|(status, digest)| {
            ensure!(status == StatusCode::OK, "{status}");
            ensure!(
                digest.digest == expected.digest && digest.size == expected.size,
                "{} bytes digesting to {}, not {}",
                digest.size,
                digest.digest,
                expected.digest
            );
            Ok(digest.size)
        });
        match checked {
            Ok(size) => {
                self.traffic.requests_ok.fetch_add(1, Ordering::Relaxed);
                self.traffic.bytes.fetch_add(size, Ordering::Relaxed);
                Some(backend)
            }
            Err(error) => {
                // NB: a connection fails at most one request: the next one
                // opens a new connection.
                self.link = None;
                self.traffic.fail(
                    Some(backend),
                    sent,
                    format!("GET {target} via backend {backend}: {error:#}"),
                );
                None
            }
        }
    }

    /// A new connection through the balancer, and the backend it reached.
    async fn connect(&self) -> anyhow::Result<Link> {
        let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(self.balancer))
            .await
            .with_context(|| format!("connect to the balancer: no connection within {CONNECT_TIMEOUT:?}"))?
            .context("connect to the balancer")?;
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let backend = self
            .table
            .backend_of(local)
            .await
            .context("the balancer reached no backend")?;
        Ok(Link { sender, backend })
    }
}

/// Sends `request` and reads the whole answer: its status and the body's
/// digest.
async fn exchange(
    sender: &mut SendRequest<Body>,
    request: Request<Body>,
) -> anyhow::Result<(StatusCode, testing::Digest)> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let mut body = response.into_body();
    let mut hasher = Sha256::default();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            hasher.update(&data);
        }
    }
    Ok((status, hasher.finish()))
}

/// Waits (bounded) for the clients; those still busy at the deadline are
/// aborted and counted as a failure.
async fn join_clients(clients: &mut tokio::task::JoinSet<()>, deadline: Duration, traffic: &Traffic) {
    let joined = timeout(deadline, async {
        while let Some(done) = clients.join_next().await {
            if let Err(error) = done {
                traffic.fail(None, Instant::now(), format!("a client task failed: {error}"));
            }
        }
    })
    .await;
    if joined.is_err() {
        clients.abort_all();
        traffic.fail(
            None,
            Instant::now(),
            format!("clients still busy {deadline:?} after the phase's end"),
        );
    }
}

// ---- 1. Token traffic vs replicas ----

/// One token traffic run.
struct Spread {
    replicas: usize,
    pulls_ok: u64,
    pulls_failed: u64,
    cross_replica_pulls: u64,
    requests_ok: u64,
    requests_failed: u64,
    bytes: u64,
    /// Requests the token server answered during the run.
    token_requests: usize,
    /// Each replica's own count (metrics) of tokens fetched and reused.
    token_fetches: Vec<u64>,
    token_reuses: Vec<u64>,
    connections: Vec<u64>,
    seconds: f64,
    /// CPU seconds of all replicas together, the registry, this bench
    /// (clients, balancer and token service) and the whole machine (busy).
    replica_cpu: f64,
    registry_cpu: f64,
    bench_cpu: f64,
    machine_cpu: f64,
    errors: Failures,
}

impl Spread {
    fn pulls_per_second(&self) -> f64 {
        self.pulls_ok as f64 / self.seconds
    }

    /// Every pull succeeded, each replica fetched one token, and with more
    /// than one replica some pulls crossed replicas.
    fn passed(&self) -> bool {
        self.pulls_failed == 0
            && self.requests_failed == 0
            && self.token_requests == self.replicas
            && self.token_fetches.iter().all(|&fetched| fetched == 1)
            && (self.replicas == 1 || self.cross_replica_pulls > 0)
    }
}

async fn token_traffic(
    settings: &Settings,
    config: &ReplicaConfig,
    image: &Arc<ImageDigests>,
    token_server: &TokenServer,
    registry_pid: u32,
    count: usize,
) -> anyhow::Result<Spread> {
    let replicas = config.start(count)?;
    let pids: Vec<String> = replicas.iter().map(|r| r.pid().to_string()).collect();
    let balancer = Balancer::start(replicas.iter().map(|r| r.addr).collect()).await?;
    let traffic = Arc::new(Traffic::new(count));
    token_server.clear_log();
    let others = [registry_pid.to_string(), "self".to_owned()];
    let cpu = || {
        (
            cpu_seconds(&pids),
            cpu_seconds(&others[..1]),
            cpu_seconds(&others[1..]),
            machine_busy_seconds(),
        )
    };
    let cpu_before = cpu();
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for index in 0..CLIENTS {
        let mut client = Client::new(index, &balancer, image, &traffic);
        let pulls = settings.pulls_per_client;
        clients.spawn(async move {
            for _ in 0..pulls {
                client.pull().await;
            }
        });
    }
    join_clients(&mut clients, PULLS_DEADLINE, &traffic).await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = cpu();
    let token_requests = token_server.requests();
    let tokens = TokenCounts::of_all(&replicas).await;
    let connections = balancer.table.connections();
    drop(balancer);
    drop(replicas);
    Ok(Spread {
        replicas: count,
        pulls_ok: traffic.pulls_ok.load(Ordering::Relaxed),
        pulls_failed: traffic.pulls_failed.load(Ordering::Relaxed),
        cross_replica_pulls: traffic.cross_replica_pulls.load(Ordering::Relaxed),
        requests_ok: traffic.requests_ok.load(Ordering::Relaxed),
        requests_failed: traffic.failed().iter().sum(),
        bytes: traffic.bytes.load(Ordering::Relaxed),
        token_requests,
        token_fetches: tokens.iter().map(|t| t.fetched).collect(),
        token_reuses: tokens.iter().map(|t| t.reused).collect(),
        connections,
        seconds,
        replica_cpu: cpu_after.0 - cpu_before.0,
        registry_cpu: cpu_after.1 - cpu_before.1,
        bench_cpu: cpu_after.2 - cpu_before.2,
        machine_cpu: cpu_after.3 - cpu_before.3,
        errors: traffic.errors.snapshot(),
    })
}

// ---- 1b. Token renewal over several lifetimes ----

/// The token renewal run.
struct Renewal {
    seconds: f64,
    pulls_ok: u64,
    requests_failed: u64,
    token_requests: usize,
    token_fetches: Vec<u64>,
    /// Seconds into the run at which the token server answered, each.
    fetch_times: Vec<f64>,
    errors: Failures,
}

impl Renewal {
    /// The most fetches a replica in steady use needs: one when its token
    /// has less than the renewal margin left.
    fn expected_per_replica(&self) -> u64 {
        (self.seconds / (RENEWAL_LIFETIME - RENEWAL_MARGIN).as_secs_f64()).ceil() as u64
    }

    fn passed(&self) -> bool {
        let expected = self.expected_per_replica();
        self.requests_failed == 0
            && self
                .token_fetches
                .iter()
                .all(|&fetched| (1..=expected).contains(&fetched))
            && self.token_requests as u64 == self.token_fetches.iter().sum::<u64>()
    }
}

/// Fresh replicas under light steady traffic for a bit over two token
/// lifetimes: each renews its own token, once per lifetime.
async fn token_renewal(
    config: &ReplicaConfig,
    image: &Arc<ImageDigests>,
    token_server: &TokenServer,
) -> anyhow::Result<Renewal> {
    let replicas = config.start(RENEWAL_REPLICAS)?;
    let balancer = Balancer::start(replicas.iter().map(|r| r.addr).collect()).await?;
    let traffic = Arc::new(Traffic::new(RENEWAL_REPLICAS));
    token_server.set_expires_in(RENEWAL_LIFETIME);
    token_server.clear_log();
    let started = Instant::now();
    let end = started + RENEWAL_RUN;
    let mut clients = tokio::task::JoinSet::new();
    for index in 0..RENEWAL_CLIENTS {
        let mut client = Client::new(index, &balancer, image, &traffic);
        clients.spawn(async move {
            while Instant::now() < end {
                client.pull().await;
                tokio::time::sleep(RENEWAL_PAUSE).await;
            }
        });
    }
    let mut fetch_times = Vec::new();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let at = started.elapsed().as_secs_f64();
        fetch_times.resize(token_server.requests().max(fetch_times.len()), at);
    }
    join_clients(&mut clients, STOP_DEADLINE, &traffic).await;
    let seconds = started.elapsed().as_secs_f64();
    let token_requests = token_server.requests();
    token_server.set_expires_in(TokenServerOptions::default().expires_in);
    let tokens = TokenCounts::of_all(&replicas).await;
    drop(balancer);
    drop(replicas);
    Ok(Renewal {
        seconds,
        pulls_ok: traffic.pulls_ok.load(Ordering::Relaxed),
        requests_failed: traffic.failed().iter().sum(),
        token_requests,
        token_fetches: tokens.iter().map(|t| t.fetched).collect(),
        fetch_times,
        errors: traffic.errors.snapshot(),
    })
}

// ---- 2. Replica death ----

/// The death run: what was exposed on the killed replica and what failed.
struct Death {
    run: Duration,
    victim: usize,
    victim_pid: u32,
    /// Seconds from the start of the run to the SIGKILL.
    killed_at: f64,
    /// From running `kill -KILL` to the process gone, in ms.
    dying_ms: f64,
    /// Connections to the killed replica open at the SIGKILL plus those
    /// opened before it was gone: every connection it could have failed.
    open_at_death: u64,
    /// Requests to it in flight at the SIGKILL plus those sent to it before
    /// it was gone.
    in_flight_at_death: u64,
    /// Open connections per backend at the SIGKILL.
    open_at_signal: Vec<u64>,
    requests_ok: u64,
    completed_after_kill: u64,
    /// Failed requests by backend; the last slot: no backend reached.
    failed: Vec<u64>,
    /// Failed requests sent after the replica was gone (on a connection to
    /// it the client had not yet seen closed).
    failed_sent_after_death: u64,
    pulls_ok: u64,
    pulls_failed: u64,
    cross_replica_pulls: u64,
    connections_at_signal: Vec<u64>,
    connections: Vec<u64>,
    marked_dead: Vec<bool>,
    token_requests_before_kill: usize,
    token_requests_after_kill: usize,
    /// WARN and ERROR log lines of the surviving replicas.
    survivor_warnings: Vec<String>,
    errors: Failures,
}

impl Death {
    fn failed_total(&self) -> u64 {
        self.failed.iter().sum()
    }

    fn failed_on_victim(&self) -> u64 {
        self.failed[self.victim]
    }

    fn failed_elsewhere(&self) -> u64 {
        self.failed_total() - self.failed_on_victim()
    }

    /// Only what the killed replica was serving failed, and requests went on
    /// succeeding after it died.
    fn passed(&self) -> bool {
        self.failed_total() <= self.open_at_death && self.failed_elsewhere() == 0 && self.completed_after_kill > 0
    }
}

async fn replica_death(
    settings: &Settings,
    config: &ReplicaConfig,
    image: &Arc<ImageDigests>,
    token_server: &TokenServer,
) -> anyhow::Result<Death> {
    let replicas = config.start(DEATH_REPLICAS)?;
    let balancer = Balancer::start(replicas.iter().map(|r| r.addr).collect()).await?;
    let table = balancer.table.clone();
    let traffic = Arc::new(Traffic::new(DEATH_REPLICAS));
    token_server.clear_log();
    let started = Instant::now();
    let end = started + settings.death_run;
    let mut clients = tokio::task::JoinSet::new();
    for index in 0..CLIENTS {
        let mut client = Client::new(index, &balancer, image, &traffic);
        clients.spawn(async move {
            while Instant::now() < end {
                client.pull().await;
            }
        });
    }

    tokio::time::sleep_until((started + settings.kill_at).into()).await;
    let open_at_signal = table.open();
    let in_flight_at_signal = traffic.in_flight();
    let connections_at_signal = table.connections();
    let sent_at_signal = traffic.sent();
    // NB: the replica serving the most connections, so the kill hits work.
    let victim = (0..DEATH_REPLICAS)
        .max_by_key(|&backend| (open_at_signal[backend], std::cmp::Reverse(backend)))
        .unwrap_or(0);
    let victim_pid = replicas[victim].pid();
    let token_requests_before_kill = token_server.requests();
    let signalled = Instant::now();
    let killed = kill_replica(victim_pid).await;
    let dead_at = Instant::now();
    let _ = traffic.death.set(dead_at);
    let sent_at_death = traffic.sent()[victim];
    let ok_at_death = traffic.requests_ok.load(Ordering::Relaxed);
    if let Err(error) = killed {
        clients.abort_all();
        return Err(error);
    }

    join_clients(
        &mut clients,
        end.saturating_duration_since(Instant::now()) + STOP_DEADLINE,
        &traffic,
    )
    .await;
    // NB: connections are counted once the balancer's connect succeeded;
    // none to the killed replica can succeed after it was gone, so this is
    // every connection it had.
    let connections = table.connections();
    let survivor_warnings = replicas
        .iter()
        .enumerate()
        .filter(|(backend, _)| *backend != victim)
        .flat_map(|(_, replica)| replica.logs())
        .filter(|line| line.contains("\"level\":\"WARN\"") || line.contains("\"level\":\"ERROR\""))
        .collect();
    let token_requests = token_server.requests();
    drop(balancer);
    drop(replicas);
    let requests_ok = traffic.requests_ok.load(Ordering::Relaxed);
    Ok(Death {
        run: settings.death_run,
        victim,
        victim_pid,
        killed_at: signalled.duration_since(started).as_secs_f64(),
        dying_ms: dead_at.duration_since(signalled).as_secs_f64() * 1000.0,
        open_at_death: open_at_signal[victim] + (connections[victim] - connections_at_signal[victim]),
        in_flight_at_death: in_flight_at_signal[victim] + (sent_at_death - sent_at_signal[victim]),
        open_at_signal,
        requests_ok,
        completed_after_kill: requests_ok - ok_at_death,
        failed: traffic.failed(),
        failed_sent_after_death: traffic.failed_sent_after_death.load(Ordering::Relaxed),
        pulls_ok: traffic.pulls_ok.load(Ordering::Relaxed),
        pulls_failed: traffic.pulls_failed.load(Ordering::Relaxed),
        cross_replica_pulls: traffic.cross_replica_pulls.load(Ordering::Relaxed),
        connections_at_signal,
        connections,
        marked_dead: table.dead(),
        token_requests_before_kill,
        token_requests_after_kill: token_requests - token_requests_before_kill,
        survivor_warnings,
        errors: traffic.errors.snapshot(),
    })
}

// ---- Report ----

struct Rendered<'a> {
    settings: &'a Settings,
    revision: &'a str,
    binary: &'a Path,
    image: &'a ImageDigests,
    /// The token server's `expires_in`.
    lifetime: Duration,
    spreads: &'a [Spread],
    renewal: Option<&'a Renewal>,
    death: &'a Death,
    /// /proc/loadavg before and after the run.
    load: (&'a str, &'a str),
}

/// Cores, CPU model, memory and kernel of this machine.
fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// `a / b / c`.
fn slashed<T: std::fmt::Display>(values: &[T]) -> String {
    values.iter().map(T::to_string).collect::<Vec<_>>().join(" / ")
}

fn verdict(passed: bool) -> &'static str {
    if passed { "ok" } else { "**FAILED**" }
}

fn quote_errors(out: &mut String, title: &str, errors: &Failures) {
    if errors.first.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n{title} ({} in all, the first {}):\n",
        errors.count,
        errors.first.len()
    );
    for error in &errors.first {
        let _ = writeln!(out, "- `{error}`");
    }
}

fn render(r: &Rendered) -> String {
    let mut out = String::new();
    let pull_bytes: u64 =
        r.image.manifest.size + r.image.config.size + r.image.layers.iter().map(|l| l.size).sum::<u64>();
    let _ = writeln!(out, "# Scale-out benchmark\n");
    let _ = writeln!(
        out,
        "`cargo bench --bench scaleout`{} on {}, at {}, {}. `connectors proxy` replicas (`{}`, standalone: one \
         store file, one static token file and one state directory shared by all, reverse mode only, each its own \
         process on its own `127.0.0.1` port) behind a round-robin TCP balancer in the bench (tokio; per client \
         connection the next live backend; a backend whose connect fails is marked dead and the next one tried). \
         Upstream: `{}` with token authentication behind `testing::TokenServer` (robot user/password, tokens \
         valid {} s), holding `{REPOSITORY}:{TAG}` pushed with skopeo: a manifest, a config and layers of {} bytes \
         ({:.2} MiB a pull). A pull is a manifest GET and a GET of every blob, each checked against its digest and \
         size, through `/v2/namespaces/{NAMESPACE}/connectors/{CONNECTOR}/…` with the caller's token as the Basic \
         password. {CLIENTS} clients: the even ones open one connection per pull (one replica serves the pull), \
         the odd ones one connection per request (a pull's manifest and blobs go through different replicas). \
         Every request has a {} s timeout; a failed one is counted, not retried, and the pull carries on. Clients, \
         balancer, replicas, registry and token service share the machine. Load average before: `{}`, after: \
         `{}`.\n",
        if r.settings.quick { " (`-- --quick`)" } else { "" },
        machine(),
        now_utc(),
        r.revision,
        r.binary.display(),
        program_version("docker-registry", &["--version"]),
        r.lifetime.as_secs(),
        r.image
            .layers
            .iter()
            .map(|l| l.size.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        pull_bytes as f64 / MIB,
        REQUEST_TIMEOUT.as_secs(),
        r.load.0,
        r.load.1,
    );

    let _ = writeln!(
        out,
        "## 1. Token traffic vs replicas\n\nFor each replica count, fresh replicas and the token server's log \
         cleared; {CLIENTS} clients × {} pulls. Token requests: answered by the token server during the run; per \
         replica: each replica's own `connectors_proxy_upstream_token_fetches` (and `…_cache_hits`), read from its \
         `/metrics` directly. Pulls across replicas: pulls that succeeded with their requests answered by more \
         than one replica. CPU seconds over the run: all replicas together, the registry, this bench (clients, \
         balancer, token service), and the machine's busy time as a share of its cores' capacity.\n",
        r.settings.pulls_per_client,
    );
    out.push_str(
        "| replicas | pulls ok | pulls failed | requests ok / failed | pulls across replicas | token requests | token fetches per replica | token reuses per replica | connections per backend | s | pulls/s | MiB/s | CPU s: replicas / registry / bench | machine busy % | check |\n\
         |---:|---:|---:|---|---:|---:|---|---|---|---:|---:|---:|---|---:|---|\n",
    );
    for s in r.spreads {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.0} | {:.1} / {:.1} / {:.1} | {:.0} | {} |",
            s.replicas,
            s.pulls_ok,
            s.pulls_failed,
            s.requests_ok,
            s.requests_failed,
            s.cross_replica_pulls,
            s.token_requests,
            slashed(&s.token_fetches),
            slashed(&s.token_reuses),
            slashed(&s.connections),
            s.seconds,
            s.pulls_per_second(),
            s.bytes as f64 / MIB / s.seconds,
            s.replica_cpu,
            s.registry_cpu,
            s.bench_cpu,
            100.0 * s.machine_cpu / s.seconds / cores() as f64,
            verdict(s.passed()),
        );
    }
    let _ = writeln!(
        out,
        "\nCheck: no request failed, the token server answered exactly one request per replica, each replica \
         fetched one token, and with two or more replicas some pulls crossed replicas. Every process shares the \
         machine's {} cores, so pulls/s says whether more replicas add capacity here, where the registry and the \
         clients compete with them, not on a cluster.",
        cores()
    );
    for s in r.spreads {
        quote_errors(&mut out, &format!("Errors with {} replica(s)", s.replicas), &s.errors);
    }

    let _ = writeln!(
        out,
        "\n### Over several token lifetimes\n\nEach run above lasts far less than a token lifetime. Here \
         {RENEWAL_REPLICAS} fresh replicas get light steady traffic ({RENEWAL_CLIENTS} clients, one per connection \
         use, a pull then {} ms of pause) for {} s while the token server issues tokens valid {} s (the shortest \
         the proxy honours); a replica renews a token used for a GET when less than {} s of it is left, so each \
         needs at most one fetch per {} s.\n",
        RENEWAL_PAUSE.as_millis(),
        RENEWAL_RUN.as_secs(),
        RENEWAL_LIFETIME.as_secs(),
        RENEWAL_MARGIN.as_secs(),
        (RENEWAL_LIFETIME - RENEWAL_MARGIN).as_secs(),
    );
    match r.renewal {
        None => out.push_str("Skipped with `-- --quick`.\n"),
        Some(n) => {
            out.push_str(
                "| replicas | s | pulls ok | requests failed | token requests | token fetches per replica | at most, per replica | token requests at (s into the run) | check |\n\
                 |---:|---:|---:|---:|---:|---|---:|---|---|\n",
            );
            let _ = writeln!(
                out,
                "| {RENEWAL_REPLICAS} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
                n.seconds,
                n.pulls_ok,
                n.requests_failed,
                n.token_requests,
                slashed(&n.token_fetches),
                n.expected_per_replica(),
                n.fetch_times
                    .iter()
                    .map(|t| format!("{t:.1}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                verdict(n.passed()),
            );
            quote_errors(&mut out, "Errors", &n.errors);
        }
    }

    let d = r.death;
    let _ = writeln!(
        out,
        "\n## 2. Replica death\n\n{DEATH_REPLICAS} fresh replicas; the {CLIENTS} clients loop over pulls for {} s. \
         At {:.1} s the replica with the most open connections is SIGKILLed; the balancer learns of it only when a \
         connect to it fails. Connections open on it: those the balancer was relaying to it at the SIGKILL plus \
         those it connected before the process was gone (every connection it could fail). Requests in flight on it: \
         sent and not yet fully answered at the SIGKILL, plus those sent to it before it was gone (counted by the \
         clients, which learn each connection's backend from the balancer).\n",
        d.run.as_secs_f64(),
        d.killed_at,
    );
    out.push_str("| | |\n|---|---|\n");
    let rows: Vec<(&str, String)> = vec![
        (
            "killed",
            format!(
                "backend {} (pid {}) at {:.2} s; gone {:.1} ms after `kill -KILL` was run",
                d.victim, d.victim_pid, d.killed_at, d.dying_ms
            ),
        ),
        (
            "open connections per backend at the SIGKILL",
            slashed(&d.open_at_signal),
        ),
        ("connections open on the killed replica", d.open_at_death.to_string()),
        (
            "requests in flight on the killed replica",
            d.in_flight_at_death.to_string(),
        ),
        (
            "requests failed",
            format!(
                "{} in all: {} on the killed replica ({} of them sent after it was gone, on a connection the client \
                 had not yet seen closed), {} on the survivors or with no backend",
                d.failed_total(),
                d.failed_on_victim(),
                d.failed_sent_after_death,
                d.failed_elsewhere()
            ),
        ),
        (
            "requests ok",
            format!(
                "{} ({} completed after the kill)",
                d.requests_ok, d.completed_after_kill
            ),
        ),
        (
            "pulls ok / failed / across replicas",
            format!("{} / {} / {}", d.pulls_ok, d.pulls_failed, d.cross_replica_pulls),
        ),
        (
            "connections per backend until the kill",
            slashed(&d.connections_at_signal),
        ),
        ("connections per backend in all", slashed(&d.connections)),
        ("marked dead by the balancer", slashed(&d.marked_dead)),
        (
            "token requests before / after the kill",
            format!("{} / {}", d.token_requests_before_kill, d.token_requests_after_kill),
        ),
        (
            "WARN or ERROR lines of the survivors",
            d.survivor_warnings.len().to_string(),
        ),
        (
            "check: failed ≤ open on the killed replica, none failed elsewhere, requests completed after the kill",
            format!(
                "{} ({} ≤ {}, {} elsewhere, {} after)",
                verdict(d.passed()),
                d.failed_total(),
                d.open_at_death,
                d.failed_elsewhere(),
                d.completed_after_kill
            ),
        ),
    ];
    for (name, value) in rows {
        let _ = writeln!(out, "| {name} | {value} |");
    }
    quote_errors(&mut out, "Failed requests", &d.errors);
    for line in d.survivor_warnings.iter().take(QUOTED_ERRORS) {
        let _ = writeln!(out, "\n    {line}");
    }

    let _ = writeln!(out, "\n## Per unit\n");
    if let Some(n) = r.renewal {
        let per_replica = n.token_requests as f64 / RENEWAL_REPLICAS as f64;
        let first = n.fetch_times.first().copied().unwrap_or(0.0);
        let last = n.fetch_times.last().copied().unwrap_or(0.0);
        // NB: the replicas renew together, so the fetches come in rounds.
        let period = (last - first) / (per_replica - 1.0);
        let _ = writeln!(
            out,
            "- Token renewal: each replica fetched a token every {period:.1} s (a {} s lifetime less the {} s \
             margin): {:.2} token requests per replica per token lifetime in steady state, {per_replica:.0} per \
             replica over the {:.0} s run ({:.2} lifetimes) with the first fetch.",
            RENEWAL_LIFETIME.as_secs(),
            RENEWAL_MARGIN.as_secs(),
            RENEWAL_LIFETIME.as_secs_f64() / period,
            n.seconds,
            n.seconds / RENEWAL_LIFETIME.as_secs_f64(),
        );
    }
    for s in r.spreads {
        let _ = writeln!(
            out,
            "- {} replica(s): {:.2} token requests per replica in {:.1} s (one token lifetime is {} s), {:.1} \
             pulls/s ({:.1} per replica), {:.2} replica CPU ms per pull.",
            s.replicas,
            s.token_requests as f64 / s.replicas as f64,
            s.seconds,
            r.lifetime.as_secs(),
            s.pulls_per_second(),
            s.pulls_per_second() / s.replicas as f64,
            1000.0 * s.replica_cpu / s.pulls_ok.max(1) as f64,
        );
    }
    let _ = writeln!(
        out,
        "- Replica death: {} failed requests against {} connections open ({} requests in flight) on the killed \
         replica.",
        d.failed_total(),
        d.open_at_death,
        d.in_flight_at_death
    );
    out
}
