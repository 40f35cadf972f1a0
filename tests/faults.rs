//! Fault injection: `connectors proxy` (the real binary, standalone mode) in
//! front of the real CNCF registry with token auth, where both the registry
//! and its token service sit behind a [`FaultyUpstream`] that a test
//! switches while it runs. Each fault ends either in a clear error (status,
//! an OCI error body naming the cause, no credential) or in a recovery
//! (digests equal); no client call may hang; and afterwards the proxy's open
//! file descriptors and RSS are back near what they were before.
//!
//! Covered elsewhere and not repeated here: a cached token the registry
//! rejects, and one that expired before an upload
//! (`tests/reverse_proxy.rs`); a redirect to object storage on another
//! origin with no credential (`tests/reverse_proxy_scripted.rs`).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use support::Process;
use testing::faults::{FaultyUpstream, UpstreamFault};
use testing::{Registry, RegistryAuth, RegistryOptions, StoreYaml, TokenServer, TokenServerOptions};

const USER: &str = "robot$lab+faults";
const PASSWORD: &str = "Fault-pa55-never-leaks-3e7d";
const TOKEN: &str = "faults-caller-token-8b21";
const PREFIX: &str = "/v2/namespaces/team/connectors/lab";

/// The longest any single client call may take before the test calls it a
/// hang.
const HANG: Duration = Duration::from_secs(45);
/// Allowed growth over the baseline once the faults are over.
const FD_MARGIN: usize = 8;
const RSS_MARGIN_KIB: u64 = 20 * 1024;
/// How long the proxy gets to give back what the faults took.
const SETTLE: Duration = Duration::from_secs(20);

/// The token service and the registry, each behind a fault-injecting front,
/// and the proxy pointed at the registry's front.
struct Lab {
    tokens: TokenServer,
    token_front: FaultyUpstream,
    _registry: Registry,
    front: FaultyUpstream,
    _dir: tempfile::TempDir,
    dir_path: std::path::PathBuf,
}

impl Lab {
    async fn start() -> Self {
        let tokens = TokenServer::start(TokenServerOptions::with_user(USER, PASSWORD)).unwrap();
        let token_front = FaultyUpstream::start(&format!("http://{}", tokens.addr())).unwrap();
        let RegistryAuth::Token(mut auth) = tokens.registry_auth() else {
            unreachable!("a token server configures token auth")
        };
        // NB: the registry names the token front as its realm, so every
        // token the proxy fetches goes through the faults.
        auth.realm = format!("{}/token", token_front.url());
        let registry = Registry::start(RegistryOptions {
            auth: RegistryAuth::Token(auth),
            ..RegistryOptions::default()
        })
        .await
        .unwrap();
        let front = FaultyUpstream::start(&registry.url()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = StoreYaml::new("team")
            .basic_auth("robot", USER, PASSWORD)
            .connector("lab", &front.url(), "robot", None)
            .build();
        std::fs::write(dir.path().join("store.yaml"), store).unwrap();
        std::fs::write(
            dir.path().join("tokens.csv"),
            format!("{TOKEN},system:serviceaccount:team:builder,uid-1\n"),
        )
        .unwrap();
        Lab {
            tokens,
            token_front,
            _registry: registry,
            front,
            dir_path: dir.path().to_owned(),
            _dir: dir,
        }
    }

    /// Starts a proxy for the lab's connector with `extra` flags.
    fn proxy(&self, extra: &[&str]) -> Proxy {
        let store = self.dir_path.join("store.yaml");
        let tokens = self.dir_path.join("tokens.csv");
        let mut args = vec![
            "proxy",
            // NB: the registries of these tests listen on loopback.
            "--egress-allow",
            "127.0.0.0/8",
            "--store",
            store.to_str().unwrap(),
            "--token-auth-file",
            tokens.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--verbose",
        ];
        args.extend_from_slice(extra);
        let (process, addr) = Process::start(&args, "proxy listening");
        Proxy { process, addr }
    }
}

struct Proxy {
    process: Process,
    addr: SocketAddr,
}

impl Proxy {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn blob_url(&self, repository: &str, digest: &str) -> String {
        self.url(&format!("{PREFIX}/{repository}/blobs/{digest}"))
    }

    /// Pushes `blob` to `repository` in one PUT; returns its digest.
    async fn push_blob(&self, repository: &str, blob: &[u8]) -> String {
        let digest = testing::sha256_bytes(blob);
        let started = call(
            client()
                .post(self.url(&format!("{PREFIX}/{repository}/blobs/uploads/")))
                .basic_auth("x", Some(TOKEN)),
        )
        .await;
        assert_eq!(started.status, 202, "{}", started.text());
        let location = started.location();
        let done = call(
            client()
                .put(self.url(&format!("{location}&digest={digest}")))
                .basic_auth("x", Some(TOKEN))
                .header("content-type", "application/octet-stream")
                .body(blob.to_vec()),
        )
        .await;
        assert_eq!(done.status, 201, "{}", done.text());
        digest
    }

    async fn get_blob(&self, repository: &str, digest: &str) -> Outcome {
        call(
            client()
                .get(self.blob_url(repository, digest))
                .basic_auth("x", Some(TOKEN)),
        )
        .await
    }

    /// Asserts the credential appears nowhere in the proxy's logs.
    fn assert_clean_logs(&self) {
        testing::credentials::assert_no_credential(&self.process.log_text(), "the proxy's logs", USER, PASSWORD);
    }

    fn resources(&self) -> Resources {
        Resources::of(self.process.pid())
    }

    /// Waits (bounded) for the proxy's fds and RSS to come back within the
    /// margins of `baseline`, then asserts they did.
    async fn assert_settles(&self, baseline: Resources, what: &str) {
        let deadline = Instant::now() + SETTLE;
        let mut now = self.resources();
        while !now.within(&baseline) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            now = self.resources();
        }
        println!(
            "{what}: fds {} -> {} (margin +{FD_MARGIN}), VmRSS {} KiB -> {} KiB (margin +{RSS_MARGIN_KIB} KiB)",
            baseline.fds, now.fds, baseline.rss_kib, now.rss_kib
        );
        assert!(
            now.fds <= baseline.fds + FD_MARGIN,
            "{what}: the proxy holds {} fds after the faults, {} before",
            now.fds,
            baseline.fds
        );
        assert!(
            now.rss_kib <= baseline.rss_kib + RSS_MARGIN_KIB,
            "{what}: the proxy's RSS is {} KiB after the faults, {} KiB before",
            now.rss_kib,
            baseline.rss_kib
        );
    }
}

/// Open file descriptors and resident memory of a process.
#[derive(Debug, Clone, Copy)]
struct Resources {
    fds: usize,
    rss_kib: u64,
}

impl Resources {
    fn of(pid: u32) -> Self {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("/proc/<pid>/status has VmRSS");
        Self { fds, rss_kib }
    }

    fn within(&self, baseline: &Resources) -> bool {
        self.fds <= baseline.fds + FD_MARGIN && self.rss_kib <= baseline.rss_kib + RSS_MARGIN_KIB
    }
}

/// What a client saw: the head, and the body or why it broke off.
struct Outcome {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Result<Bytes, String>,
    elapsed: Duration,
}

impl Outcome {
    fn text(&self) -> String {
        match &self.body {
            Ok(body) => String::from_utf8_lossy(body).into_owned(),
            Err(error) => format!("<body broke off: {error}>"),
        }
    }

    fn location(&self) -> String {
        self.headers["location"].to_str().unwrap().to_owned()
    }

    fn digest(&self) -> String {
        testing::sha256_bytes(self.body.as_ref().expect("a whole body"))
    }

    /// Asserts an OCI error with `status` and `code` whose message contains
    /// every one of `causes`, and no credential anywhere; returns the
    /// message.
    fn assert_error(&self, status: u16, code: &str, causes: &[&str]) -> String {
        let text = self.text();
        assert_eq!(self.status, status, "{text}");
        let error: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not an OCI error body: {text}"));
        assert_eq!(error["errors"][0]["code"], code, "{text}");
        let message = error["errors"][0]["message"].as_str().unwrap_or_default().to_owned();
        for cause in causes {
            assert!(message.contains(cause), "{message:?} does not name {cause:?}");
        }
        self.assert_clean();
        message
    }

    fn assert_clean(&self) {
        let seen = format!("{:?} {}", self.headers, self.text());
        testing::credentials::assert_no_credential(&seen, "a response", USER, PASSWORD);
        assert!(!seen.to_ascii_lowercase().contains("www-authenticate"), "{seen}");
    }
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // NB: no idle connections, so the proxy's fds count only its own.
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// Sends `request` and reads the whole answer, failing the test if that
/// takes longer than [`HANG`].
async fn call(request: reqwest::RequestBuilder) -> Outcome {
    let started = Instant::now();
    let exchange = async {
        let response = request.send().await.expect("the proxy answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| format!("{e:?}"));
        (status, headers, body)
    };
    let (status, headers, body) = tokio::time::timeout(HANG, exchange)
        .await
        .unwrap_or_else(|_| panic!("a client call hung for {HANG:?}"));
    Outcome {
        status,
        headers,
        body,
        elapsed: started.elapsed(),
    }
}

/// Prints one line of the fault table.
fn report(fault: &str, outcome: &Outcome) {
    let shown = match &outcome.body {
        Ok(body) if outcome.status < 300 => format!("{} body bytes, {}", body.len(), outcome.digest()),
        _ => outcome.text().chars().take(220).collect::<String>(),
    };
    println!(
        "FAULT {fault}: {} in {:.2}s: {shown}",
        outcome.status,
        outcome.elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_faults_end_in_clear_errors_or_recovery_and_the_proxy_gives_back_fds_and_memory() {
    let lab = Lab::start().await;
    let proxy = lab.proxy(&[]);
    let small = testing::image::random_bytes(256 * 1024, 1);
    let large = testing::image::random_bytes(3 * 1024 * 1024 + 5, 2);
    let small_digest = proxy.push_blob("lab/faults", &small).await;
    let large_digest = proxy.push_blob("lab/faults", &large).await;
    // Warm-up: the upstream scheme is known, a pull token cached, a pooled
    // connection open.
    for digest in [&small_digest, &large_digest] {
        assert_eq!(proxy.get_blob("lab/faults", digest).await.digest(), *digest);
    }
    let baseline = proxy.resources();

    // The registry is down: a 502 naming it, at once.
    lab.front.set(UpstreamFault::Refuse);
    let down = proxy.get_blob("lab/faults", &small_digest).await;
    report("registry down", &down);
    down.assert_error(502, "UNAVAILABLE", &["upstream 127.0.0.1", "refused"]);
    assert!(down.elapsed < Duration::from_secs(5), "{:?}", down.elapsed);
    lab.front.clear();
    let back = proxy.get_blob("lab/faults", &small_digest).await;
    assert_eq!((back.status, back.digest()), (200, small_digest.clone()), "recovered");

    // 5xx and 429 pass through with their body and Retry-After; nothing is
    // retried behind the caller's back.
    for (status, retry_after) in [(500, None), (502, None), (503, Some(30)), (429, Some(17))] {
        lab.front
            .set_for("/blobs/", UpstreamFault::Status { status, retry_after });
        let before = lab.front.requests().len();
        let answer = proxy.get_blob("lab/faults", &small_digest).await;
        report(&format!("registry answers {status}"), &answer);
        let message = answer.assert_error(status, "UNAVAILABLE", &[&status.to_string()]);
        assert!(
            message.contains("injected fault"),
            "the registry's own error: {message}"
        );
        assert_eq!(
            answer
                .headers
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned()),
            retry_after.map(|s| s.to_string()),
            "Retry-After of a {status}"
        );
        assert_eq!(lab.front.requests().len() - before, 1, "a {status} is not retried");
    }
    // A chunk PATCH refused with 503 is not replayed; the caller's retry of
    // it completes the upload.
    lab.front.clear();
    let upload = call(
        client()
            .post(proxy.url(&format!("{PREFIX}/lab/patched/blobs/uploads/")))
            .basic_auth("x", Some(TOKEN)),
    )
    .await;
    assert_eq!(upload.status, 202);
    let location = upload.location();
    lab.front.set_for(
        "/blobs/uploads/",
        UpstreamFault::Status {
            status: 503,
            retry_after: Some(5),
        },
    );
    let patch = |body: Vec<u8>| {
        client()
            .patch(proxy.url(&location))
            .basic_auth("x", Some(TOKEN))
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("0-{}", body.len() - 1))
            .body(body)
    };
    let refused = call(patch(small.clone())).await;
    report("PATCH answered 503", &refused);
    refused.assert_error(503, "UNAVAILABLE", &["503"]);
    assert_eq!(refused.headers["retry-after"], "5");
    let patches = |front: &FaultyUpstream| front.requests().iter().filter(|r| r.method == "PATCH").count();
    assert_eq!(patches(&lab.front), 1, "the PATCH was sent once");
    lab.front.clear();
    let patched = call(patch(small.clone())).await;
    assert_eq!(patched.status, 202, "{}", patched.text());
    let location = patched.location();
    let put = call(
        client()
            .put(proxy.url(&format!("{location}&digest={small_digest}")))
            .basic_auth("x", Some(TOKEN)),
    )
    .await;
    assert_eq!(put.status, 201, "{}", put.text());
    assert_eq!(
        proxy.get_blob("lab/patched", &small_digest).await.digest(),
        small_digest
    );

    // The connection resets mid-blob, copied (256 KiB) and spliced (3 MiB):
    // the caller's body breaks off short of Content-Length, promptly.
    for (name, digest, size, after) in [
        ("copied", &small_digest, small.len(), 100 * 1024),
        ("spliced", &large_digest, large.len(), 1536 * 1024),
    ] {
        lab.front.set_for("/blobs/", UpstreamFault::ResetBody { after });
        let cut = proxy.get_blob("lab/faults", digest).await;
        report(&format!("connection reset after {after} bytes of a {name} blob"), &cut);
        assert_eq!(cut.status, 200, "the head had passed");
        assert_eq!(cut.headers["content-length"], size.to_string().as_str());
        assert!(cut.body.is_err(), "a cut body must not look whole");
        assert!(cut.elapsed < Duration::from_secs(10), "{:?}", cut.elapsed);
        lab.front.clear();
        let whole = proxy.get_blob("lab/faults", digest).await;
        assert_eq!(whole.digest(), *digest, "{name}: the next read is whole");
    }

    // Blob reads redirect to object storage whose first presigned URL has
    // expired: the proxy fetches a fresh redirect and the caller gets the
    // blob. When the fresh one is refused too, a 502 says so.
    lab.front
        .set_for("/blobs/sha256:", UpstreamFault::RedirectBlobs { expired: 1 });
    let fetched = proxy.get_blob("lab/faults", &large_digest).await;
    report("presigned URL expired once", &fetched);
    assert_eq!((fetched.status, fetched.digest()), (200, large_digest.clone()));
    let store = lab.front.object_store_requests();
    assert_eq!(
        store.iter().map(|r| r.status).collect::<Vec<_>>(),
        [403, 200],
        "one expired URL, then a fresh one"
    );
    lab.front
        .set_for("/blobs/sha256:", UpstreamFault::RedirectBlobs { expired: 2 });
    let refused = proxy.get_blob("lab/faults", &large_digest).await;
    report("presigned URL expired twice", &refused);
    refused.assert_error(502, "UNAVAILABLE", &["redirect", "403", "presigned"]);
    let store = lab.front.object_store_requests();
    assert_eq!(store.len(), 4, "one refresh, never more: {store:?}");
    assert!(
        store.iter().all(|r| !r.authorization),
        "object storage got a credential"
    );
    lab.front.clear();

    // A proxy whose first sight of the registry is a 503 remembers no auth
    // scheme from it: its first request after recovery carries a body (which
    // cannot be replayed after a 401) and still gets a token.
    let fresh = lab.proxy(&[]);
    lab.front.set(UpstreamFault::Status {
        status: 503,
        retry_after: Some(9),
    });
    let storm = fresh.get_blob("lab/faults", &small_digest).await;
    storm.assert_error(503, "UNAVAILABLE", &["503"]);
    assert_eq!(storm.headers["retry-after"], "9");
    lab.front.clear();
    let with_body = call(
        client()
            .post(fresh.url(&format!("{PREFIX}/lab/fresh/blobs/uploads/")))
            .basic_auth("x", Some(TOKEN))
            .header("content-type", "application/octet-stream")
            .body(small.clone()),
    )
    .await;
    assert_eq!(with_body.status, 202, "{}", with_body.text());
    fresh.assert_clean_logs();

    // Afterwards: a normal pull, and the proxy gives back what it took.
    assert_eq!(proxy.get_blob("lab/faults", &large_digest).await.digest(), large_digest);
    proxy.assert_settles(baseline, "registry faults").await;
    proxy.assert_clean_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_service_faults_end_in_clear_errors_and_an_upload_survives_it_going_down_mid_way() {
    let lab = Lab::start().await;
    let proxy = lab.proxy(&[]);
    let blob = testing::image::random_bytes(300 * 1024, 3);
    let digest = proxy.push_blob("lab/tokens", &blob).await;
    assert_eq!(proxy.get_blob("lab/tokens", &digest).await.digest(), digest);
    let baseline = proxy.resources();

    // Each read below is of a repository whose pull token is not cached,
    // so it needs the token service.
    lab.token_front.set(UpstreamFault::Refuse);
    let down = proxy.get_blob("lab/other", &digest).await;
    report("token service down", &down);
    down.assert_error(502, "UNAVAILABLE", &["token service", "127.0.0.1", "refused"]);
    let garbage = [
        (
            "non-JSON",
            200,
            "application/json",
            "{\"token\": not json",
            "invalid JSON",
        ),
        (
            "JSON without a token",
            200,
            "application/json",
            "{\"expires_in\":300}",
            "without a token",
        ),
        (
            "an HTML page",
            200,
            "text/html",
            "<html><body>Sign in</body></html>",
            "invalid JSON",
        ),
        (
            "an HTML 500",
            500,
            "text/html",
            "<html>Internal Server Error</html>",
            "token service failed (500",
        ),
        ("429", 429, "text/plain", "slow down", "token service failed (429"),
    ];
    for (what, status, content_type, body, cause) in garbage {
        lab.token_front.set(UpstreamFault::Respond {
            status,
            content_type: content_type.into(),
            body: body.into(),
        });
        let answer = proxy.get_blob("lab/other", &digest).await;
        report(&format!("token service answers {what}"), &answer);
        answer.assert_error(502, "UNAVAILABLE", &[cause]);
    }
    lab.token_front.clear();
    let unknown = proxy.get_blob("lab/other", &digest).await;
    assert_eq!(unknown.status, 404, "recovered: the registry itself answers");

    // Mid-upload: the POST's token has 31 s to live, so the PATCH (a body
    // that cannot be replayed) needs a fresh one; the token service is down
    // then. The PATCH fails cleanly without reaching the registry, and the
    // caller's retry renews the token and completes the upload.
    lab.tokens.set_expires_in(Duration::from_secs(31));
    let upload = call(
        client()
            .post(proxy.url(&format!("{PREFIX}/lab/midway/blobs/uploads/")))
            .basic_auth("x", Some(TOKEN)),
    )
    .await;
    assert_eq!(upload.status, 202, "{}", upload.text());
    let location = upload.location();
    tokio::time::sleep(Duration::from_secs(2)).await;
    lab.token_front.set(UpstreamFault::Refuse);
    let patch = || {
        client()
            .patch(proxy.url(&location))
            .basic_auth("x", Some(TOKEN))
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("0-{}", blob.len() - 1))
            .body(blob.clone())
    };
    let failed = call(patch()).await;
    report("token service down mid-upload", &failed);
    failed.assert_error(502, "UNAVAILABLE", &["token service", "refused"]);
    assert!(
        lab.front.requests().iter().all(|r| r.method != "PATCH"),
        "no PATCH went upstream with a token about to expire"
    );
    lab.token_front.clear();
    let fetched_before = lab.tokens.requests();
    let patched = call(patch()).await;
    assert_eq!(patched.status, 202, "{}", patched.text());
    assert!(
        lab.tokens.requests() > fetched_before,
        "the token was renewed for the body"
    );
    let put = call(
        client()
            .put(proxy.url(&format!("{}&digest={digest}", patched.location())))
            .basic_auth("x", Some(TOKEN)),
    )
    .await;
    assert_eq!(put.status, 201, "{}", put.text());
    lab.tokens.set_expires_in(Duration::from_secs(300));
    assert_eq!(proxy.get_blob("lab/midway", &digest).await.digest(), digest);

    proxy.assert_settles(baseline, "token service faults").await;
    proxy.assert_clean_logs();
    assert!(
        lab.tokens
            .requests_log()
            .iter()
            .all(|r| r.user.as_deref() == Some(USER)),
        "the token service only ever saw the connector's robot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_headers_are_awaited_up_to_the_header_timeout_and_then_answered_504() {
    let lab = Lab::start().await;
    let patient = lab.proxy(&[]);
    let impatient = lab.proxy(&["--upstream-header-timeout-seconds", "2"]);
    let blob = testing::image::random_bytes(200 * 1024, 4);
    let digest = patient.push_blob("lab/slow", &blob).await;
    for proxy in [&patient, &impatient] {
        assert_eq!(proxy.get_blob("lab/slow", &digest).await.digest(), digest);
    }
    let baselines = [patient.resources(), impatient.resources()];

    // Headers 20 s late: within the default 60 s the read succeeds; with a
    // 2 s limit it ends in a 504 after 2 s. Both run at once.
    lab.front
        .set_for("/blobs/", UpstreamFault::DelayHeaders(Duration::from_secs(20)));
    let (slow, timed_out) = tokio::join!(
        patient.get_blob("lab/slow", &digest),
        impatient.get_blob("lab/slow", &digest)
    );
    report("registry headers after 20 s (60 s limit)", &slow);
    report("registry headers after 20 s (2 s limit)", &timed_out);
    assert_eq!((slow.status, slow.digest()), (200, digest.clone()));
    assert!(slow.elapsed >= Duration::from_secs(20), "{:?}", slow.elapsed);
    timed_out.assert_error(
        504,
        "UNAVAILABLE",
        &["upstream 127.0.0.1", "no response headers within 2s"],
    );
    assert!(
        timed_out.elapsed >= Duration::from_secs(2) && timed_out.elapsed < Duration::from_secs(10),
        "{:?}",
        timed_out.elapsed
    );
    lab.front.clear();

    // A token service that answers late is bounded by the same limit.
    lab.token_front.set(UpstreamFault::DelayHeaders(Duration::from_secs(8)));
    let token_late = impatient.get_blob("lab/slow-token", &digest).await;
    report("token service headers after 8 s (2 s limit)", &token_late);
    token_late.assert_error(504, "UNAVAILABLE", &["token service", "no response headers within 2s"]);
    assert!(token_late.elapsed < Duration::from_secs(8), "{:?}", token_late.elapsed);
    lab.token_front.clear();

    for (proxy, baseline, what) in [
        (&patient, baselines[0], "slow headers, 60 s limit"),
        (&impatient, baselines[1], "slow headers, 2 s limit"),
    ] {
        assert_eq!(proxy.get_blob("lab/slow", &digest).await.digest(), digest);
        proxy.assert_settles(baseline, what).await;
        proxy.assert_clean_logs();
    }
}
