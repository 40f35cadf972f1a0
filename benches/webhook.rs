//! Webhook benchmark: the pure mutation of a 5-container pod on one core,
//! the whole review (decode, mutate, encode) on one core, and the HTTPS
//! endpoint (server on one core) under an open-loop 1,000 reviews/s and at
//! its closed-loop maximum. Writes `bench/results/webhook.md`.
//!
//! Run with `cargo bench --bench webhook` (`-- --quick` for a short run).

#[allow(dead_code)]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use connector::store::FileStore;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use testing::StoreYaml;
use webhook::metrics::Metrics;
use webhook::mutation::{Mode, Outcome, mutate_pod};
use webhook::server::{WebhookState, limits, router, serve_tls};

/// The same allocator as the shipped binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A namespace that opts in with two default connectors.
fn store() -> String {
    StoreYaml::new("team")
        .namespace_object(
            &[("connectors.cpaas.io/proxy-inject", "true")],
            &[("connectors.cpaas.io/connector", "harbor,hub")],
        )
        .connector_of_class("harbor", "harbor", "https://harbor.example.com", None)
        .connector_of_class("hub", "oci", "https://registry-1.docker.io", None)
        .build()
}

fn review_body(pod: &Value, uid: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("bench-{uid}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "dryRun": false,
        }
    }))
    .unwrap()
}

struct Row {
    what: String,
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    note: String,
}

fn row(what: &str, rate: f64, h: &Histogram<u64>, note: &str) -> Row {
    Row {
        what: what.to_owned(),
        rate,
        p50_us: h.value_at_quantile(0.50) as f64 / 1000.0,
        p99_us: h.value_at_quantile(0.99) as f64 / 1000.0,
        max_us: h.max() as f64 / 1000.0,
        note: note.to_owned(),
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let quick = std::env::args().any(|a| a == "--quick");
    let duration = if quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(10)
    };
    let store = Arc::new(FileStore::from_yaml(&store()).unwrap());
    let config = Arc::new(common::injection_config());
    let pod = common::five_container_pod();
    let mut rows = Vec::new();

    // 1. The pure mutation on one core.
    let Outcome::Patched { patch, .. } = mutate_pod(&pod, "team", Mode::Create, store.as_ref(), &config).unwrap()
    else {
        panic!("the bench pod is selected")
    };
    let ops = patch.0.len();
    let (rate, h) = common::single_core(duration, || {
        std::hint::black_box(
            mutate_pod(
                std::hint::black_box(&pod),
                "team",
                Mode::Create,
                store.as_ref(),
                &config,
            )
            .unwrap(),
        );
    });
    rows.push(row(
        "pure mutation, 5-container pod (1 core)",
        rate,
        &h,
        &format!("{ops} patch operations"),
    ));
    if std::env::args().any(|a| a == "--mutation-only") {
        println!("{rate:.0} mutations/s");
        return;
    }

    // 2. The whole review: JSON decode, mutate, patch encode, base64, response encode.
    let body = review_body(&pod, 0);
    let (rate, h) = common::single_core(duration, || {
        let reviewed = webhook::admission::review(std::hint::black_box(&body), store.as_ref(), &config).unwrap();
        std::hint::black_box(serde_json::to_vec(&reviewed.response).unwrap());
    });
    rows.push(row(
        "whole review, decode to encode (1 core)",
        rate,
        &h,
        &format!("{} byte request", body.len()),
    ));

    // 3. HTTPS: the server on a one-thread runtime, the client on another.
    let dir = tempfile::tempdir().unwrap();
    let ca = certs::CertificateAuthority::generate("bench CA", Duration::from_secs(3600)).unwrap();
    let issued = ca
        .issue_serving(
            &["webhook.bench".into()],
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(3600),
        )
        .unwrap();
    let files = certs::write_serving_bundle(dir.path(), &ca, &issued).unwrap();
    let resolver = certs::ReloadingCertResolver::load(files.cert.clone(), files.key.clone()).unwrap();
    let tls = certs::server_config(resolver, &[b"h2", b"http/1.1"]).unwrap();
    let state = WebhookState {
        store: store.clone(),
        config: certs::Reloading::new((*config).clone()),
        metrics: Arc::new(Metrics::default()),
    };
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let shutdown = async move {
                let _ = stop_rx.await;
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            serve_tls(listener, router(state), tls, limits(Duration::from_secs(1)), shutdown)
                .await
                .unwrap();
        });
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let client_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let roots = certs::root_store_from_pem(ca.cert_pem()).unwrap();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(certs::client_config(roots, &[b"http/1.1"]).unwrap())
        .resolve("webhook.bench", addr)
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("https://webhook.bench:{}/mutate", addr.port());
    let body = Arc::new(review_body(&pod, 1));

    for target in [1000u64, 0] {
        let (rate, h, errors) = client_runtime.block_on(load(&client, &url, &body, target, duration));
        let what = if target > 0 {
            format!("HTTPS, open loop at {target} reviews/s (server on 1 core)")
        } else {
            "HTTPS, closed loop, 32 in flight (server on 1 core)".to_owned()
        };
        rows.push(row(
            &what,
            rate,
            &h,
            &format!("{errors} errors; latency = send to full response"),
        ));
    }
    let _ = stop_tx.send(());
    server.join().unwrap();

    let mut table = String::from(
        "| benchmark | rate (/s) | p50 (µs) | p99 (µs) | max (µs) | note |\n|---|---:|---:|---:|---:|---|\n",
    );
    for r in &rows {
        table.push_str(&format!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {} |\n",
            r.what, r.rate, r.p50_us, r.p99_us, r.max_us, r.note
        ));
    }
    println!("{table}");
    let results = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results");
    std::fs::create_dir_all(&results).unwrap();
    let header = format!(
        "# Webhook benchmark\n\n`cargo bench --bench webhook` on this machine ({} cores), {} s per row{}.\n\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        duration.as_secs(),
        if quick { " (quick run)" } else { "" }
    );
    std::fs::write(results.join("webhook.md"), header + &table).unwrap();
}

/// Sends reviews for `duration`: at `per_second` on a fixed schedule (open
/// loop: requests go out on time whether or not earlier ones finished), or
/// as fast as 32 concurrent requests allow when `per_second` is 0.
async fn load(
    client: &reqwest::Client,
    url: &str,
    body: &Arc<Vec<u8>>,
    per_second: u64,
    duration: Duration,
) -> (f64, Histogram<u64>, u64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let histogram = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let errors = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let send = {
        let (client, url, body) = (client.clone(), url.to_owned(), body.clone());
        let (histogram, errors, done) = (histogram.clone(), errors.clone(), done.clone());
        move || {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            let (histogram, errors, done) = (histogram.clone(), errors.clone(), done.clone());
            async move {
                // NB: tokio's timer has 1 ms granularity, so latency is taken
                // from the actual send, not the (coarse) schedule; the server
                // keeps up, so queueing would show up here anyway.
                let sent = Instant::now();
                let ok = match client.post(&url).body(body.as_ref().clone()).send().await {
                    Ok(response) if response.status().is_success() => response.bytes().await.is_ok(),
                    _ => false,
                };
                if ok {
                    histogram
                        .lock()
                        .unwrap()
                        .record(sent.elapsed().as_nanos() as u64)
                        .unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    };
    // Warm up connections.
    for _ in 0..32 {
        send().await;
    }
    histogram.lock().unwrap().reset();
    done.store(0, Ordering::Relaxed);
    let started_load = Instant::now();
    if let Some(nanos) = 1_000_000_000u64.checked_div(per_second) {
        let interval = Duration::from_nanos(nanos);
        let total = per_second * duration.as_secs();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..total {
            let scheduled = started_load + interval * i as u32;
            tokio::time::sleep_until(scheduled.into()).await;
            tasks.spawn(send());
        }
        while tasks.join_next().await.is_some() {}
    } else {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..32 {
            let send = send.clone();
            tasks.spawn(async move {
                while started_load.elapsed() < duration {
                    send().await;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
    let elapsed = started_load.elapsed().as_secs_f64();
    let histogram = histogram.lock().unwrap().clone();
    (
        done.load(Ordering::Relaxed) as f64 / elapsed,
        histogram,
        errors.load(Ordering::Relaxed),
    )
}
