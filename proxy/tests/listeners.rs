//! Both listeners against clients that hold connections without sending a
//! request: nothing, part of the HTTP/2 preface, or the preface alone. Each
//! is closed within the head timeout, and real requests are served meanwhile.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serving::ServerLimits;
use support::InProcessProxy;
use testing::openings::{IDLE_OPENINGS, get_on, held_for};
use tokio::net::TcpStream;

/// The head timeout of these listeners.
const HEAD_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a closed connection may take to be noticed beyond the timeout.
const SLACK: Duration = Duration::from_secs(3);

/// `GET path` on a connection of its own; the whole answer, or a panic if
/// none comes within the head timeout and its slack.
async fn get(addr: SocketAddr, path: &str) -> String {
    get_on(TcpStream::connect(addr).await.unwrap(), path, HEAD_TIMEOUT + SLACK).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_send_no_request_are_closed_within_the_head_timeout() {
    let limits = ServerLimits {
        header_read_timeout: HEAD_TIMEOUT,
        ..ServerLimits::default()
    };
    let proxy = InProcessProxy::with_limits("", "", limits).await;
    for (door, addr) in [("reverse", proxy.addr), ("forward", proxy.forward)] {
        let held: Vec<_> = IDLE_OPENINGS
            .iter()
            .map(|opening| {
                tokio::spawn(async move {
                    let stream = TcpStream::connect(addr).await.expect("the listener accepts");
                    held_for(stream, opening, HEAD_TIMEOUT + SLACK).await
                })
            })
            .collect();
        for (opening, held) in IDLE_OPENINGS.iter().zip(held) {
            assert!(held.await.unwrap().is_some(), "{door}: {opening:?} is still open");
        }
    }
    // A real request after the idle ones is answered.
    let answer = get(proxy.addr, "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let limits = ServerLimits {
        header_read_timeout: HEAD_TIMEOUT,
        max_connections: 1,
        ..ServerLimits::default()
    };
    let proxy = InProcessProxy::with_limits("", "", limits).await;
    // The one slot: a connection that says nothing until it is closed.
    let idle = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let answer = get(proxy.addr, "/healthz").await;
    let waited = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        waited >= HEAD_TIMEOUT / 2,
        "served at once ({waited:?}) although the only slot was taken"
    );
    drop(idle);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_their_own_listener_are_not_served_to_pods() {
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    let proxy = InProcessProxy::with_metrics_listener("", "", metrics).await;
    let pods = get(proxy.addr, "/metrics").await;
    assert!(
        pods.starts_with("HTTP/1.1 404"),
        "the pod-facing listener serves metrics: {pods}"
    );
    let scrape = get(metrics_addr, "/metrics").await;
    assert!(scrape.starts_with("HTTP/1.1 200"), "{scrape}");
    assert!(
        scrape.contains("application/openmetrics-text") && scrape.contains("# EOF"),
        "{scrape}"
    );
    let registry = get(metrics_addr, "/v2/").await;
    assert!(
        registry.starts_with("HTTP/1.1 404"),
        "the metrics listener serves the registry API: {registry}"
    );
    assert!(get(proxy.addr, "/healthz").await.starts_with("HTTP/1.1 200"));
    proxy.stop().await;
}
