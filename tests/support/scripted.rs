//! A scripted HTTP server on loopback for registry behaviours the real
//! registry does not show: every request is recorded, and a closure decides
//! each answer.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// How a fake server answers: (path and query, its own address, how many
/// times this target was asked) to a response.
pub type Respond = Arc<dyn Fn(&str, SocketAddr, usize) -> Response<Full<Bytes>> + Send + Sync>;

/// What one fake server received: (path and query, headers).
pub type Seen = Arc<Mutex<Vec<(String, HashMap<String, String>)>>>;

pub struct Fake {
    pub addr: SocketAddr,
    pub seen: Seen,
}

/// Serves `respond` on `ip`:0 until the test ends.
pub async fn serve(ip: &str, respond: Respond) -> Fake {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let seen_in = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (seen, respond) = (seen_in.clone(), respond.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let (seen, respond) = (seen.clone(), respond.clone());
                    async move {
                        let target = request
                            .uri()
                            .path_and_query()
                            .map(|p| p.as_str().to_owned())
                            .unwrap_or_default();
                        let headers = request
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
                            .collect();
                        let count = {
                            let mut seen = seen.lock().unwrap();
                            seen.push((target.clone(), headers));
                            seen.iter().filter(|(t, _)| *t == target).count()
                        };
                        Ok::<_, Infallible>(respond(&target, addr, count))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Fake { addr, seen }
}

pub fn answer(status: StatusCode, headers: &[(&str, String)], body: &[u8]) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(body)));
    *response.status_mut() = status;
    for (name, value) in headers {
        response.headers_mut().insert(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    response
}
