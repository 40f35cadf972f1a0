//! The HTTPS server: `POST /mutate` for AdmissionReviews, `/healthz`,
//! `/readyz` and `/metrics`. Handlers only translate between HTTP and
//! [`crate::admission::review`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use connector::store::ConnectorStore;
use serving::ServerLimits;

use crate::admission::{self, Verdict};
use crate::metrics::{Metrics, ReviewLabels};
use connector::injection::InjectionConfig;

/// The largest review body accepted. A pod is at most ~1.5 MiB in etcd and a
/// review carries the object and, on UPDATE, the old object.
pub(crate) const MAX_REVIEW_BYTES: usize = 8 * 1024 * 1024;

/// How much of a larger body is read (and dropped) so that its sender gets
/// the 413 instead of a connection reset while it is still writing.
const MAX_DRAINED_BYTES: usize = 64 * 1024 * 1024;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct WebhookState {
    pub store: Arc<dyn ConnectorStore>,
    /// Reloaded when the proxy CA bundle changes (a rotation).
    pub config: Arc<certs::Reloading<InjectionConfig>>,
    pub metrics: Arc<Metrics>,
}

/// The router with every endpoint.
pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        // NB: `mutate` reads the body itself, with its own limit.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// Set when the process starts shutting down. From then on every answer
/// closes its HTTP/1.1 connection (`Connection: close`; h2 gets GOAWAY
/// from the drain), so the API server drops a pooled connection after the
/// answer instead of reusing it while the server closes it: that race is an
/// `EOF` the API server does not retry, a failed admission.
#[derive(Clone, Default)]
pub struct Draining(Arc<std::sync::atomic::AtomicBool>);

impl Draining {
    pub fn start(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    fn is_draining(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// `router` with every answer closing its connection once `draining`
/// starts.
pub fn closing_when_draining(router: Router, draining: Draining) -> Router {
    router.layer(axum::middleware::map_response_with_state(draining, close_when_draining))
}

async fn close_when_draining(State(draining): State<Draining>, mut response: Response) -> Response {
    if draining.is_draining() {
        response
            .headers_mut()
            .insert(header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    response
}

/// The review body, at most [`MAX_REVIEW_BYTES`]. A larger one is read on
/// (and dropped) up to [`MAX_DRAINED_BYTES`], then refused with 413: the API
/// server then gets an answer, not a reset connection, and reports it.
async fn read_review(body: axum::body::Body) -> Result<Bytes, Response> {
    use http_body_util::BodyExt;
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the AdmissionReview is larger than {MAX_REVIEW_BYTES} bytes"),
        )
            .into_response()
    };
    let mut body = body;
    let mut kept = Vec::new();
    let mut total = 0_usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|_| (StatusCode::BAD_REQUEST, "the review body could not be read").into_response())?;
        let Ok(data) = frame.into_data() else { continue };
        total = total.saturating_add(data.len());
        if total <= MAX_REVIEW_BYTES {
            kept.extend_from_slice(&data);
        } else if total > MAX_DRAINED_BYTES {
            return Err(too_large());
        }
    }
    if total > MAX_REVIEW_BYTES {
        return Err(too_large());
    }
    Ok(Bytes::from(kept))
}

async fn mutate(State(state): State<WebhookState>, body: axum::body::Body) -> Response {
    let started = Instant::now();
    let body = match read_review(body).await {
        Ok(body) => body,
        Err(refused) => {
            tracing::warn!(limit = MAX_REVIEW_BYTES, "refused an AdmissionReview too large to read");
            return refused;
        }
    };
    let result = review_isolated(body, state.store.clone(), state.config.current()).await;
    let response = match result {
        Ok(reviewed) => {
            let (verdict, reason) = match reviewed.verdict {
                Verdict::Skipped(reason) => ("skipped", reason),
                other => (other.as_str(), ""),
            };
            state
                .metrics
                .reviews
                .get_or_create(&ReviewLabels { verdict, reason })
                .inc();
            let response = &reviewed.response.response;
            tracing::info!(
                uid = %response.uid,
                namespace = %reviewed.namespace,
                verdict,
                reason,
                dry_run = reviewed.dry_run,
                denied = response.status.as_ref().map(|s| s.message.as_str()).unwrap_or(""),
                "admission review"
            );
            Json(reviewed.response).into_response()
        }
        Err(error) => {
            state
                .metrics
                .reviews
                .get_or_create(&ReviewLabels {
                    verdict: "invalid",
                    reason: "",
                })
                .inc();
            tracing::warn!(%error, "rejected a request that is not a valid AdmissionReview");
            (StatusCode::BAD_REQUEST, error.to_string()).into_response()
        }
    };
    state.metrics.review_seconds.observe(started.elapsed().as_secs_f64());
    response
}

/// Reviews up to this size are answered on the request's own task: their
/// parse and mutation take microseconds.
const INLINE_REVIEW_BYTES: usize = 64 * 1024;

/// How many larger reviews are parsed at once, each on the blocking pool.
const LARGE_REVIEWS_AT_ONCE: usize = 2;

/// The slots of the larger reviews.
static LARGE_REVIEWS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(LARGE_REVIEWS_AT_ONCE);

/// Reviews `body`. A large review (up to 8 MiB of JSON) takes milliseconds
/// to parse; it runs on the blocking pool, at most
/// [`LARGE_REVIEWS_AT_ONCE`] at a time, so a burst of them never holds the
/// runtime's workers from small reviews, health probes and reading other
/// bodies.
pub async fn review_isolated(
    body: Bytes,
    store: Arc<dyn ConnectorStore>,
    config: Arc<InjectionConfig>,
) -> Result<admission::Reviewed, admission::ReviewError> {
    if body.len() <= INLINE_REVIEW_BYTES {
        return admission::review(&body, store.as_ref(), &config);
    }
    let Ok(_slot) = LARGE_REVIEWS.acquire().await else {
        return Err(admission::ReviewError::Interrupted);
    };
    tokio::task::spawn_blocking(move || admission::review(&body, store.as_ref(), &config))
        .await
        .unwrap_or(Err(admission::ReviewError::Interrupted))
}

async fn ready(State(state): State<WebhookState>) -> Response {
    if state.store.has_synced() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "connector store not synced yet").into_response()
    }
}

async fn metrics(State(state): State<WebhookState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// The webhook listener's limits: the API server sends small heads, so
/// the head timeout is 10 s; `grace` is how long shutdown waits for
/// reviews in flight.
pub fn limits(grace: Duration) -> ServerLimits {
    ServerLimits {
        header_read_timeout: Duration::from_secs(10),
        max_header_bytes: 64 * 1024,
        shutdown_grace: grace,
        max_connections: 4_096,
    }
}

/// Serves `router` over TLS on `listener` under `limits` until `shutdown`
/// resolves, then finishes in-flight reviews for up to the limits' grace.
/// Every connection must open within the head timeout and finish its TLS
/// handshake within 10 s.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: rustls::ServerConfig,
    limits: ServerLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let service = hyper_util::service::TowerToHyperService::new(router);
    serving::http::serve(listener, limits, Some(Arc::new(tls)), service, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn answers_close_their_connection_once_draining_starts() {
        let draining = Draining::default();
        let router = closing_when_draining(
            Router::new().route("/healthz", get(|| async { "ok" })),
            draining.clone(),
        );
        let get = || {
            axum::http::Request::get("/healthz")
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let before = router.clone().oneshot(get()).await.unwrap();
        assert_eq!(before.status(), StatusCode::OK);
        assert!(before.headers().get(header::CONNECTION).is_none());
        draining.start();
        let after = router.oneshot(get()).await.unwrap();
        assert_eq!(after.status(), StatusCode::OK);
        assert_eq!(after.headers()[header::CONNECTION], "close");
    }
}
