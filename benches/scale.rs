//! Scale, first part: the proxy's source-address identities
//! (`access::cluster::PodIdentities`, the informers and the IP index behind
//! cluster mode's pod and node callers) as the cluster grows: 1,000, 10,000
//! and 100,000 injected pods on 50, 500 and 5,000 nodes, served by the fake
//! API server in this process. For each size: the time from start to
//! synced, the first lookup (which builds the index), the resident memory
//! the informers add, and lookups by pod IP at p50/p99, without churn and
//! while 100 pod events per second arrive. Writes `bench/results/scale.md`.
//!
//! Run with `cargo bench --bench scale` (`-- --quick`: 1,000 and 10,000).

#[allow(dead_code)]
mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use access::PeerIdentities;
use access::cluster::PodIdentities;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use testing::apiserver::{FakeApiServer, NODES, PODS};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Pod events per second during the churn phase.
const CHURN_PER_SECOND: u64 = 100;
const CHURN_SECONDS: u64 = 5;

/// The IP of pod `i` (10.x.y.z, unique below 16M).
fn pod_ip(i: u32) -> IpAddr {
    let i = i + 1;
    IpAddr::V4(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8))
}

fn pod(i: u32, nodes: u32, generation: u64) -> Value {
    let namespace = format!("team-{}", i % 1000);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("app-{i}"),
            "namespace": namespace,
            "labels": {"connectors.cpaas.io/injected": "true", "app": "app"},
            "annotations": {"bench/generation": generation.to_string()},
        },
        "spec": {
            "nodeName": format!("node-{}", i % nodes),
            "serviceAccountName": "builder",
            "containers": [{
                "name": "app",
                "image": format!("127.0.0.1:7480/namespaces/{namespace}/connectors/harbor/team/app:{}", i % 10),
            }],
        },
        "status": {"phase": "Running", "podIP": pod_ip(i).to_string(), "podIPs": [{"ip": pod_ip(i).to_string()}]},
    })
}

fn node(i: u32) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": format!("node-{i}")},
        "status": {"addresses": [{"type": "InternalIP", "address": format!("172.16.{}.{}", i >> 8, i & 255)}]},
    })
}

fn rss() -> u64 {
    common::memory(std::process::id()).1
}

/// Lookups of random pod IPs, `count` of them, into `histogram` (ns).
fn lookups(identities: &PodIdentities, pods: u32, count: u32, seed: &mut u64, histogram: &mut Histogram<u64>) {
    for _ in 0..count {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let ip = pod_ip(((*seed >> 33) % u64::from(pods)) as u32);
        let started = Instant::now();
        let found = identities.pod(ip);
        let took = started.elapsed().as_nanos() as u64;
        assert!(found.is_some(), "{ip} has an identity");
        let _ = histogram.record(took.max(1));
    }
}

struct Row {
    pods: u32,
    nodes: u32,
    ready: Duration,
    first_lookup: Duration,
    rss_mib: f64,
    steady: Histogram<u64>,
    churn: Histogram<u64>,
    churn_events: u64,
}

async fn measure(pods: u32, nodes: u32) -> Row {
    let api = FakeApiServer::start(&[PODS, NODES]).await;
    for i in 0..nodes {
        api.apply(NODES, node(i));
    }
    for i in 0..pods {
        api.apply(PODS, pod(i, nodes, 0));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss();
    let started = Instant::now();
    let identities = PodIdentities::spawn(api.client(), Duration::from_secs(1));
    while !identities.has_synced() {
        assert!(started.elapsed() < Duration::from_secs(600), "never synced");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready = started.elapsed();
    let first = Instant::now();
    assert!(identities.pod(pod_ip(0)).is_some());
    let first_lookup = first.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_mib = rss().saturating_sub(before) as f64 / (1024.0 * 1024.0);

    let mut seed = 7_u64;
    let mut steady = Histogram::<u64>::new(3).expect("a histogram");
    lookups(&identities, pods, 20_000, &mut seed, &mut steady);

    // Churn: CHURN_PER_SECOND pods change (a new annotation each) while
    // lookups run, one every millisecond, as requests would arrive.
    let mut churn = Histogram::<u64>::new(3).expect("a histogram");
    let deadline = Instant::now() + Duration::from_secs(CHURN_SECONDS);
    let interval = Duration::from_secs(1) / CHURN_PER_SECOND as u32;
    let mut next_event = Instant::now();
    let mut churn_events = 0_u64;
    while Instant::now() < deadline {
        if Instant::now() >= next_event {
            let i = ((churn_events * 7919) % u64::from(pods)) as u32;
            api.apply(PODS, pod(i, nodes, churn_events + 1));
            churn_events += 1;
            next_event += interval;
        }
        lookups(&identities, pods, 1, &mut seed, &mut churn);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Row {
        pods,
        nodes,
        ready,
        first_lookup,
        rss_mib,
        steady,
        churn,
        churn_events,
    }
}

fn micros(histogram: &Histogram<u64>, quantile: f64) -> String {
    format!("{:.1}", histogram.value_at_quantile(quantile) as f64 / 1000.0)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes: &[(u32, u32)] = if quick {
        &[(1_000, 50), (10_000, 500)]
    } else {
        &[(1_000, 50), (10_000, 500), (100_000, 5_000)]
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut rows = Vec::new();
    for &(pods, nodes) in sizes {
        let row = runtime.block_on(measure(pods, nodes));
        eprintln!(
            "{pods} pods: ready {:?}, first lookup {:?}, +{:.1} MiB, steady p99 {} us, churn p99 {} us",
            row.ready,
            row.first_lookup,
            row.rss_mib,
            micros(&row.steady, 0.99),
            micros(&row.churn, 0.99)
        );
        rows.push(row);
    }
    let mut report = String::from(
        "# Scale: the proxy's pod and node identities\n\n\
         `cargo bench --bench scale`: `access::cluster::PodIdentities` (the informers\n\
         over injected pods and nodes, and the IP index cluster mode identifies\n\
         callers by) fed by the fake API server in the same process. Ready: from\n\
         start to both caches synced. First lookup: builds the index. Memory: the\n\
         resident memory the informers add (the fake's objects excluded). Lookups\n\
         of random pod IPs, in µs: steady (20,000 back to back) and during churn\n\
         (one lookup per millisecond while 100 pods change per second, each change\n\
         a watch event).\n\n\
         | pods | nodes | ready | first lookup | memory (MiB) | steady p50 | steady p99 | churn p50 | churn p99 | churn max | events |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in &rows {
        report.push_str(&format!(
            "| {} | {} | {:.2} s | {:.1} ms | {:.1} | {} | {} | {} | {} | {} | {} |\n",
            row.pods,
            row.nodes,
            row.ready.as_secs_f64(),
            row.first_lookup.as_secs_f64() * 1000.0,
            row.rss_mib,
            micros(&row.steady, 0.5),
            micros(&row.steady, 0.99),
            micros(&row.churn, 0.5),
            micros(&row.churn, 0.99),
            micros(&row.churn, 1.0),
            row.churn_events,
        ));
    }
    let path = common::write_results("scale.md", &report);
    eprintln!("wrote {}", path.display());
}
