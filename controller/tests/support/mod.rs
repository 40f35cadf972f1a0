//! Test support: a fake API server with the kinds the controller uses, a
//! controller started in-process with short timings, bounded waits, and the
//! log capture that proves no credential is ever logged.

#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use connector::Connector;
use connector::crd::Condition;
use controller::{BootstrapSettings, LeaseTiming, Settings, StatusSettings};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use testing::apiserver::{CONNECTORS, CONTROLLER_RESOURCES, FakeApiServer, SECRETS};

pub const NAMESPACE: &str = "connectors-system";
pub const CSI_NAMESPACE: &str = "connectors-csi";
pub const PROXY_URL: &str = "http://connectors-proxy.connectors-system.svc";
pub const USER: &str = "robot$team+ci";
pub const PASSWORD: &str = "s3cr3t-P4ss:w0rd";
pub const WAIT: Duration = Duration::from_secs(20);

/// Every log line of this test binary.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

/// Installs the ring provider and the debug-level log capture, once.
pub fn logs() -> LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let buffer = LogBuffer::default();
        let writer = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        buffer
    })
    .clone()
}

/// A fake API server serving everything the controller reads and writes.
pub async fn api_server() -> FakeApiServer {
    logs();
    FakeApiServer::start(&CONTROLLER_RESOURCES).await
}

/// A client of `api` that presents bearer `token`, so requests show who sent them.
pub async fn client_as(api: &FakeApiServer, token: &str) -> kube::Client {
    let kubeconfig = Kubeconfig::from_yaml(&api.kubeconfig(token)).expect("a valid kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a kube config");
    kube::Client::try_from(config).expect("a kube client")
}

/// Short timings for tests: a 2 s lease renewed every 300 ms.
pub fn settings(identity: &str) -> Settings {
    Settings {
        lease_namespace: NAMESPACE.to_owned(),
        lease_name: "connectors-controller".to_owned(),
        identity: identity.to_owned(),
        lease: LeaseTiming {
            duration: Duration::from_secs(2),
            renew_interval: Duration::from_millis(300),
        },
        status: StatusSettings {
            proxy_url: PROXY_URL.to_owned(),
            // NB: the stand-in API server serves no Services; the real one
            // does (tests/e2e.rs).
            services: None,
            probe_interval: Duration::from_secs(300),
            initial_backoff: Duration::from_secs(10),
            concurrency: 4,
            secret_watches: controller::status::DEFAULT_SECRET_WATCHES,
        },
        bootstrap: BootstrapSettings {
            namespace: NAMESPACE.to_owned(),
            csi_namespace: CSI_NAMESPACE.to_owned(),
            proxy_service: "connectors-proxy".to_owned(),
            addresses: vec!["10.96.0.5:30443".to_owned(), "127.0.0.1:7480".to_owned()],
            cluster_domain: "cluster.local".to_owned(),
            webhook_service: "connectors-webhook".to_owned(),
            webhook_extra_names: Vec::new(),
            webhook_configuration: "connectors".to_owned(),
            check_interval: Duration::from_secs(300),
            ca_overlap: Duration::from_secs(3600),
        },
        probe_timeout: Duration::from_secs(3),
        // NB: the tests' registries listen on loopback.
        egress: registry::egress::EgressPolicy::new(["127.0.0.0/8".parse().unwrap()]),
        health_limits: controller::health::limits(),
    }
}

/// A controller running in this process.
pub struct Running {
    pub health: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops gracefully (releasing the lease), within a bound.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("the controller stopped in time")
            .expect("the controller task did not panic")
            .expect("the health server ran");
    }

    /// Stops at once, as a crashed replica: the lease is not released.
    pub fn crash(self) {
        self.task.abort();
    }
}

pub async fn start(api: &FakeApiServer, settings: Settings) -> Running {
    let client = client_as(api, &settings.identity).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health = listener.local_addr().unwrap();
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(controller::run(client, settings, listener, async move {
        let _ = stopped.await;
    }));
    Running {
        health,
        shutdown: Some(shutdown),
        task,
    }
}

/// Polls `check` every 50 ms until it yields a value, at most `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// As the API server stores it: `stringData` folded into base64 `data`.
pub fn stored_basic_auth_secret(namespace: &str, name: &str, user: &str, password: &str) -> Value {
    use base64::Engine;
    let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    json!({
        "metadata": {"name": name, "namespace": namespace},
        "type": "kubernetes.io/basic-auth",
        "data": {"username": encode(user), "password": encode(password)},
    })
}

pub fn connector(namespace: &str, name: &str, class: &str, address: &str, secret: Option<&str>) -> Value {
    let mut spec = json!({"connectorClassName": class, "address": address});
    if let Some(secret) = secret {
        spec["auth"] = json!({"name": "basicAuth", "secretRef": {"name": secret}});
    }
    json!({"metadata": {"name": name, "namespace": namespace}, "spec": spec})
}

pub async fn get_connector(client: &kube::Client, namespace: &str, name: &str) -> Connector {
    Api::<Connector>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .expect("the connector exists")
}

pub fn condition<'a>(connector: &'a Connector, type_: &str) -> Option<&'a Condition> {
    connector.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

/// Waits until the connector's `type_` condition has `status` and `reason`.
pub async fn wait_condition(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> Connector {
    eventually(
        &format!("{namespace}/{name} {type_}={status} ({reason})"),
        WAIT,
        || async {
            let connector = get_connector(client, namespace, name).await;
            let found = condition(&connector, type_)?;
            (found.status == status && found.reason.as_deref() == Some(reason)).then_some(connector)
        },
    )
    .await
}

pub async fn events(client: &kube::Client, namespace: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), namespace)
        .list(&Default::default())
        .await
        .expect("events list")
        .items
}

pub async fn lease_holder(client: &kube::Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), NAMESPACE)
        .get_opt("connectors-controller")
        .await
        .expect("lease read")
        .and_then(|l| l.spec?.holder_identity)
}

/// A password-protected registry (`USER`/`PASSWORD`) and a fake API server
/// holding Connector `<team>/registry` for it, with its Secret `robot`
/// (holding `secret_password`) unless that is `None`.
pub async fn registry_lab(team: &str, secret_password: Option<&str>) -> (testing::Registry, FakeApiServer) {
    let registry = testing::Registry::start(testing::RegistryOptions::htpasswd(USER, PASSWORD))
        .await
        .unwrap();
    let api = api_server().await;
    if let Some(password) = secret_password {
        api.apply(SECRETS, stored_basic_auth_secret(team, "robot", USER, password));
    }
    api.apply(
        CONNECTORS,
        connector(team, "registry", "oci", &registry.url(), Some("robot")),
    );
    (registry, api)
}

pub async fn http_text(url: &str) -> String {
    http_get(url).await.map(|(_, body)| body).unwrap_or_default()
}

/// A plain HTTP/1.1 GET over a fresh connection, bounded in time.
pub async fn http_get(url: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}")))?;
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await.ok()?
}
