//! A large AdmissionReview (megabytes of JSON) takes milliseconds to parse.
//! It must not hold the runtime meanwhile: health probes, small reviews and
//! other bodies keep being served.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use connector::injection::InjectionConfig;
use connector::store::{ConnectorStore, FileStore};
use serde_json::json;
use webhook::server::review_isolated;

/// A review of a pod carrying 150,000 annotations (about 5 MiB).
fn large_review() -> Bytes {
    let annotations: serde_json::Map<String, serde_json::Value> = (0..150_000)
        .map(|i| (format!("example.com/note-{i}"), json!("some value")))
        .collect();
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "large",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE",
            "namespace": "team",
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p", "annotations": annotations},
                "spec": {"containers": [{"name": "a", "image": "nginx"}]},
            },
        },
    });
    Bytes::from(serde_json::to_vec(&review).unwrap())
}

#[tokio::test(flavor = "current_thread")]
async fn a_large_review_does_not_hold_the_runtime() {
    let store: Arc<dyn ConnectorStore> = Arc::new(FileStore::from_yaml("").unwrap());
    let config = Arc::new(InjectionConfig::new("proxy.test:5000", "proxy.test:3128"));
    let body = large_review();
    // A task that should run every millisecond; its longest wait says how
    // long the runtime was held.
    let done = Arc::new(AtomicBool::new(false));
    let ticker = tokio::spawn({
        let done = done.clone();
        async move {
            let mut longest = Duration::ZERO;
            let mut last = Instant::now();
            while !done.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(1)).await;
                longest = longest.max(last.elapsed());
                last = Instant::now();
            }
            longest
        }
    });
    tokio::task::yield_now().await;
    let started = Instant::now();
    let reviewed = review_isolated(body, store, config).await.expect("a valid review");
    let took = started.elapsed();
    done.store(true, Ordering::Release);
    let longest = ticker.await.unwrap();
    assert_eq!(reviewed.response.response.uid, "large");
    assert!(
        longest < took / 2,
        "the runtime was held for {longest:?} of the review's {took:?}"
    );
}
