//! Reverse mode against a scripted upstream, for registry behaviours the
//! Debian registry does not show: `tags/list` pagination with relative and
//! absolute `Link`s, blob redirects to object storage on another origin
//! (which must receive no credential), an expired presigned URL, a
//! relative same-origin redirect, and an upload answered before its body
//! was read.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::Value;
use support::Process;
use support::scripted::{Fake, answer, serve};

const USER: &str = "robot$scripted";
const PASSWORD: &str = "scripted-secret-5d2b";
const TOKEN: &str = "caller-token-scripted";

const BLOB: &[u8] = b"blob bytes that live in object storage";

fn blob_digest() -> String {
    testing::sha256_bytes(BLOB)
}

/// The object store on 127.0.0.2: serves the blob for any signed URL, with
/// Range support, but answers 403 (expired) to the first fetch of `?sig=old`.
async fn object_store() -> Fake {
    serve(
        "127.0.0.2",
        Arc::new(|target: &str, _, count| {
            if target.contains("sig=old") && count == 1 {
                return answer(StatusCode::FORBIDDEN, &[], b"<Error>Request has expired</Error>");
            }
            answer(
                StatusCode::OK,
                &[("content-type", "application/octet-stream".into())],
                BLOB,
            )
        }),
    )
    .await
}

/// The registry on 127.0.0.1: Basic auth, paginated tags, redirects.
async fn registry(store: SocketAddr) -> Fake {
    let digest = blob_digest();
    serve(
        "127.0.0.1",
        Arc::new(move |target: &str, me, count| {
            let store = format!("http://{store}");
            match target {
                "/v2/" => answer(
                    StatusCode::UNAUTHORIZED,
                    &[("www-authenticate", "Basic realm=\"scripted\"".into())],
                    b"",
                ),
                "/v2/lab/tags/tags/list?n=1" => answer(
                    StatusCode::OK,
                    &[("link", "</v2/lab/tags/tags/list?n=1&last=a>; rel=\"next\"".into())],
                    br#"{"name":"lab/tags","tags":["a"]}"#,
                ),
                "/v2/lab/tags/tags/list?n=1&last=a" => answer(
                    StatusCode::OK,
                    &[(
                        "link",
                        format!("<http://{me}/v2/lab/tags/tags/list?n=1&last=b>; rel=\"next\""),
                    )],
                    br#"{"name":"lab/tags","tags":["b"]}"#,
                ),
                "/v2/lab/tags/tags/list?n=1&last=b" => {
                    answer(StatusCode::OK, &[], br#"{"name":"lab/tags","tags":["c"]}"#)
                }
                t if t == format!("/v2/lab/cdn/blobs/{digest}") => answer(
                    StatusCode::TEMPORARY_REDIRECT,
                    &[(
                        "location",
                        format!("{store}/bucket/{digest}?sig=fresh&X-Amz-Expires=60"),
                    )],
                    b"",
                ),
                // The first redirect carries a presigned URL that has expired.
                t if t == format!("/v2/lab/expired/blobs/{digest}") => {
                    let sig = if count == 1 { "old" } else { "new" };
                    answer(
                        StatusCode::TEMPORARY_REDIRECT,
                        &[("location", format!("{store}/bucket/{digest}?sig={sig}"))],
                        b"",
                    )
                }
                t if t == format!("/v2/lab/relative/blobs/{digest}") => {
                    answer(StatusCode::FOUND, &[("location", format!("/storage/{digest}"))], b"")
                }
                t if t == format!("/storage/{digest}") => answer(StatusCode::OK, &[], BLOB),
                _ => answer(StatusCode::NOT_FOUND, &[], br#"{"errors":[{"code":"NOT_FOUND"}]}"#),
            }
        }),
    )
    .await
}

fn start_proxy(dir: &std::path::Path, registry: SocketAddr) -> (Process, SocketAddr) {
    std::fs::write(
        dir.join("store.yaml"),
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: robot, namespace: team}}\ntype: kubernetes.io/basic-auth\nstringData: {{username: \"{USER}\", password: \"{PASSWORD}\"}}\n---\napiVersion: connectors.alauda.io/v1alpha1\nkind: Connector\nmetadata: {{name: s, namespace: team}}\nspec: {{connectorClassName: oci, address: \"http://{registry}\", auth: {{name: basicAuth, secretRef: {{name: robot}}}}}}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("tokens.csv"),
        format!("{TOKEN},system:serviceaccount:team:ci,u1\n"),
    )
    .unwrap();
    Process::start(
        &[
            "proxy",
            // NB: the registries of these tests listen on loopback.
            "--egress-allow",
            "127.0.0.0/8",
            "--store",
            dir.join("store.yaml").to_str().unwrap(),
            "--token-auth-file",
            dir.join("tokens.csv").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--verbose",
        ],
        "proxy listening",
    )
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_pagination_follows_relative_and_absolute_links_rewritten_into_the_proxy() {
    let store = object_store().await;
    let registry = registry(store.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, addr) = start_proxy(dir.path(), registry.addr);
    let client = client();
    let mut next = Some("/v2/namespaces/team/connectors/s/lab/tags/tags/list?n=1".to_owned());
    let mut tags = Vec::new();
    let mut links = Vec::new();
    for _ in 0..10 {
        let Some(path) = next.take() else { break };
        let response = client
            .get(format!("http://{addr}{path}"))
            .basic_auth("x", Some(TOKEN))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        if let Some(link) = response.headers().get("link") {
            let link = link.to_str().unwrap().to_owned();
            next = Some(link[1..link.find('>').unwrap()].to_owned());
            links.push(link);
        }
        let page: Value = response.json().await.unwrap();
        tags.extend(
            page["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_owned()),
        );
    }
    assert_eq!(tags, ["a", "b", "c"]);
    assert_eq!(
        links,
        [
            "</v2/namespaces/team/connectors/s/lab/tags/tags/list?n=1&last=a>; rel=\"next\"",
            "</v2/namespaces/team/connectors/s/lab/tags/tags/list?n=1&last=b>; rel=\"next\"",
        ]
    );
    assert!(!proxy.log_text().contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_redirects_are_followed_without_credentials_and_expired_urls_refreshed() {
    let store = object_store().await;
    let registry = registry(store.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, addr) = start_proxy(dir.path(), registry.addr);
    let client = client();
    let digest = blob_digest();

    for repository in ["cdn", "expired", "relative"] {
        let url = format!("http://{addr}/v2/namespaces/team/connectors/s/lab/{repository}/blobs/{digest}");
        let response = client
            .get(&url)
            .basic_auth("x", Some(TOKEN))
            .header("cookie", "session=caller")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{repository}");
        assert_eq!(
            response.headers()["docker-content-digest"],
            digest.as_str(),
            "{repository}: digest added"
        );
        assert!(response.headers().get("location").is_none());
        assert_eq!(&response.bytes().await.unwrap()[..], BLOB, "{repository}");
    }
    // A Range read is propagated to the object store.
    let response = client
        .get(format!(
            "http://{addr}/v2/namespaces/team/connectors/s/lab/cdn/blobs/{digest}"
        ))
        .basic_auth("x", Some(TOKEN))
        .header("range", "bytes=5-")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());

    let store_seen = store.seen.lock().unwrap().clone();
    assert!(store_seen.len() >= 4, "{store_seen:?}");
    for (target, headers) in &store_seen {
        for name in ["authorization", "cookie", "proxy-authorization"] {
            assert!(
                !headers.contains_key(name),
                "object storage received {name} for {target}"
            );
        }
    }
    assert!(
        store_seen
            .iter()
            .any(|(t, h)| t.contains("sig=fresh") && h.get("range").map(String::as_str) == Some("bytes=5-"))
    );
    assert_eq!(
        store_seen.iter().filter(|(t, _)| t.contains("sig=old")).count(),
        1,
        "the expired URL is not retried"
    );
    assert!(
        store_seen.iter().any(|(t, _)| t.contains("sig=new")),
        "a fresh redirect was fetched"
    );

    // The registry itself always got the connector's credential, never the caller's.
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{USER}:{PASSWORD}"))
    );
    for (target, headers) in registry.seen.lock().unwrap().iter().filter(|(t, _)| t != "/v2/") {
        assert_eq!(headers.get("authorization"), Some(&basic), "{target}");
        assert!(!headers.contains_key("cookie"), "{target}");
    }
    assert!(!proxy.log_text().contains(PASSWORD));
}

/// A registry that answers an upload as soon as it has its head, without
/// reading the body, and closes the connection: what a registry over quota
/// or with a size limit does (Go's net/http closes on a large unread body,
/// after a short lingering read).
async fn early_answering_registry() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..64 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer: &[u8] = if head.starts_with(b"GET /v2/ ") {
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
                } else {
                    b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: 69\r\nConnection: close\r\n\r\n{\"errors\":[{\"code\":\"DENIED\",\"message\":\"quota exceeded\",\"detail\":{}}]}"
                };
                let _ = stream.write_all(answer).await;
                // Like Go's net/http: close the sending side, read on for
                // 500 ms so the answer is not lost to a reset, then close
                // with the rest of the upload unread.
                let _ = stream.shutdown().await;
                let _ = tokio::time::timeout(Duration::from_millis(500), async {
                    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                })
                .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_answers_an_upload_early_and_closes_reaches_the_client_with_its_status() {
    let registry = early_answering_registry().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, addr) = start_proxy(dir.path(), registry);
    let client = client();
    // NB: without a lingering read the client loses the race to read the
    // answer before its write fails in some tries, not all.
    for _ in 0..12 {
        // 32 MiB, streamed: far more than the socket buffers hold.
        let chunks = futures::stream::iter((0..512).map(|_| Ok::<_, std::io::Error>(vec![7u8; 64 * 1024])));
        let response = client
            .patch(format!(
                "http://{addr}/v2/namespaces/team/connectors/s/lab/app/blobs/uploads/session-1"
            ))
            .basic_auth("x", Some(TOKEN))
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap_or_else(|error| panic!("the client gets an answer, not {error}\n{}", proxy.log_text()));
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("quota exceeded"), "{body}");
    }
    assert!(!proxy.log_text().contains(PASSWORD));
}
