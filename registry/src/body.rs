//! The body type of every proxied request and response, in either
//! direction, and the small bodies the product answers with itself.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// The error type of proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed body, in either direction.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A body with nothing in it.
pub fn empty() -> ProxyBody {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}

/// A body of known bytes.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// How long a request body is read on after its request was answered
/// early.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// How much of it is read (and dropped) at most.
const LINGER_BYTES: u64 = 256 * 1024 * 1024;

/// A client's request body as the proxy relays it. Dropped unfinished (the
/// upstream answered early: a quota or size refusal, an error), it is read
/// on to its end in the background, for up to 30 s and 256 MiB.
///
/// NB: a server that stops reading an upload and closes makes the client's
/// kernel reset the connection, and the client then sees a failed write
/// instead of the answer; reading on lets it finish sending and read the
/// upstream's status, as nginx's lingering close does.
pub fn from_client<B>(body: B) -> ProxyBody
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    Lingering {
        inner: Some(body.map_err(Into::into).boxed()),
        finished: false,
    }
    .boxed()
}

struct Lingering {
    inner: Option<ProxyBody>,
    finished: bool,
}

impl hyper::body::Body for Lingering {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        let polled = std::pin::Pin::new(inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None | Some(Err(_)))) {
            self.finished = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(hyper::body::Body::is_end_stream)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner
            .as_ref()
            .map(hyper::body::Body::size_hint)
            .unwrap_or_default()
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(mut body) = self.inner.take() else { return };
        if self.finished || hyper::body::Body::is_end_stream(&body) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let drain = async {
                let mut read = 0_u64;
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data() {
                        read = read.saturating_add(data.len() as u64);
                        if read > LINGER_BYTES {
                            return;
                        }
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER_TIME, drain).await;
        });
    }
}
