//! Scale: the proxy's source-address identities
//! (`access::peers::PodIdentities`, the informers and the IP index behind
//! cluster mode's pod and node callers) as the cluster grows: 1,000, 10,000
//! and 100,000 injected pods on 50, 500 and 5,000 nodes, served by the fake
//! API server in this process (on a runtime of its own, so its CPU is not
//! counted as the component's). The pods and nodes are shaped like real ones
//! (managed fields, conditions, container statuses, the annotations the
//! webhook adds, node images): what a real API server sends.
//!
//! For each size: the time from start to synced, the resident memory the
//! informers add, bytes read from the API server to sync, lookups by pod IP
//! at p50/p99 (steady, and while 100 pod events per second arrive), the CPU
//! the component spends per second of churn and the bytes that churn reads.
//! Writes `bench/results/scale.md`.
//!
//! Run with `cargo bench --bench scale` (`-- --quick`: 1,000 and 10,000).

#[allow(dead_code)]
mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use access::PeerIdentities;
use access::peers::PodIdentities;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use testing::apiserver::{FakeApiServer, NODES, PODS};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Pod events per second during the churn phase, and for how long.
const CHURN_PER_SECOND: u64 = 100;
const CHURN_SECONDS: u64 = 10;

/// The component's runtime threads are named so their CPU can be read.
const COMPONENT_THREAD: &str = "component";

/// The IP of pod `i` (10.x.y.z, unique below 16M).
fn pod_ip(i: u32) -> IpAddr {
    let i = i + 1;
    IpAddr::V4(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8))
}

/// A PEM-sized string: the proxy CA the webhook copies into each pod.
fn ca_pem() -> String {
    let body: String = (0..16)
        .map(|_| "MIIBszCCAVmgAwIBAgIUQm9ndXNDQVN0cmluZ0ZvckJlbmNo\n")
        .collect();
    format!("-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n")
}

/// Injected pod `i`, shaped as the API server returns a running one.
fn pod(i: u32, nodes: u32, generation: u64) -> Value {
    let namespace = format!("team-{}", i % 1000);
    let node = format!("node-{}", i % nodes);
    let ip = pod_ip(i).to_string();
    let image = format!(
        "127.0.0.1:7480/namespaces/{namespace}/connectors/harbor/team/app:{}",
        i % 10
    );
    let time = "2026-12-01T10:00:00Z";
    let condition =
        |kind: &str| json!({"type": kind, "status": "True", "lastProbeTime": null, "lastTransitionTime": time});
    let env: Vec<Value> = [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "SSL_CERT_FILE",
        "NODE_EXTRA_CA_CERTS",
        "REQUESTS_CA_BUNDLE",
    ]
    .iter()
    .map(|name| json!({"name": name, "value": format!("value-of-{name}-for-the-connectors-proxy")}))
    .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("app-{i}-7d9f8c6b5-x{:04}", i % 10_000),
            "generateName": "app-7d9f8c6b5-",
            "namespace": namespace,
            "uid": format!("0c5a2f0e-1b2c-4d3e-8f9a-{i:012}"),
            "labels": {
                "connectors.cpaas.io/injected": "true",
                "app": "app",
                "pod-template-hash": "7d9f8c6b5",
                "app.kubernetes.io/name": "app",
                "app.kubernetes.io/part-of": "shop",
            },
            "annotations": {
                "bench/generation": generation.to_string(),
                "connectors.cpaas.io/injected": "true",
                "connectors.cpaas.io/connector": "harbor",
                "connectors.cpaas.io/original-images": format!("{{\"app\":\"harbor.example.com/team/app:{}\"}}", i % 10),
                "connectors.cpaas.io/proxy-ca": ca_pem(),
            },
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "app-7d9f8c6b5", "uid": "6f0e3c1a-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": time, "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}}, "f:ownerReferences": {".": {}, "k:{\"uid\":\"6f0e3c1a\"}": {}}},
                              "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {}, "f:resources": {}, "f:terminationMessagePath": {}}}, "f:dnsPolicy": {}, "f:restartPolicy": {}, "f:schedulerName": {}, "f:securityContext": {}}}},
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": time, "fieldsType": "FieldsV1", "subresource": "status",
                 "fieldsV1": {"f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}}}, "f:containerStatuses": {}, "f:hostIP": {}, "f:phase": {}, "f:podIP": {}, "f:podIPs": {".": {}, "k:{\"ip\":\"x\"}": {".": {}, "f:ip": {}}}, "f:startTime": {}}}},
            ],
        },
        "spec": {
            "nodeName": node,
            "serviceAccountName": "builder",
            "serviceAccount": "builder",
            "containers": [{
                "name": "app",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "env": env,
                "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
                "volumeMounts": [
                    {"name": "kube-api-access-x7k2p", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
                    {"name": "connectors-csi", "readOnly": true, "mountPath": "/var/run/connectors"},
                ],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
            }],
            "volumes": [
                {"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                ]}},
                {"name": "connectors-csi", "csi": {"driver": "connectors-csi", "readOnly": true, "volumeAttributes": {"connector.name": "harbor", "connector.namespace": namespace}}},
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler",
            "securityContext": {},
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0,
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            ],
        },
        "status": {
            "phase": "Running",
            "conditions": [condition("PodReadyToStartContainers"), condition("Initialized"), condition("Ready"), condition("ContainersReady"), condition("PodScheduled")],
            "hostIP": format!("172.16.{}.{}", (i % nodes) >> 8, (i % nodes) & 255),
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": time,
            "containerStatuses": [{
                "name": "app", "ready": true, "restartCount": 0, "started": true,
                "state": {"running": {"startedAt": time}},
                "image": image,
                "imageID": format!("{image}@sha256:{:064x}", i % 10),
                "containerID": format!("containerd://{:064x}", u64::from(i) * 7919),
            }],
            "qosClass": "Burstable",
        },
    })
}

/// Node `i`, shaped as a real one (its images take most of the bytes).
fn node(i: u32) -> Value {
    let images: Vec<Value> = (0..40)
        .map(|n| json!({"names": [format!("registry.example.com/platform/image-{n}@sha256:{:064x}", n), format!("registry.example.com/platform/image-{n}:v1.{n}.0")], "sizeBytes": 10_000_000 + n}))
        .collect();
    let condition = |kind: &str, status: &str| json!({"type": kind, "status": status, "lastHeartbeatTime": "2026-12-01T10:00:00Z", "lastTransitionTime": "2026-12-01T10:00:00Z", "reason": format!("Kubelet{kind}"), "message": "kubelet is posting ready status"});
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": format!("node-{i}"),
            "uid": format!("9a1b2c3d-0000-4000-8000-{i:012}"),
            "labels": {
                "kubernetes.io/hostname": format!("node-{i}"), "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "m6i.2xlarge", "topology.kubernetes.io/zone": format!("zone-{}", i % 3),
                "topology.kubernetes.io/region": "region-1", "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64",
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
        },
        "spec": {"podCIDR": format!("10.{}.{}.0/24", i >> 8, i & 255), "providerID": format!("aws:///zone-a/i-{i:017x}")},
        "status": {
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"},
            "allocatable": {"cpu": "7910m", "memory": "31Gi", "pods": "110", "ephemeral-storage": "92Gi"},
            "conditions": [condition("MemoryPressure", "False"), condition("DiskPressure", "False"), condition("PIDPressure", "False"), condition("Ready", "True")],
            "addresses": [
                {"type": "InternalIP", "address": format!("172.16.{}.{}", i >> 8, i & 255)},
                {"type": "Hostname", "address": format!("node-{i}")},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"machineID": "m", "systemUUID": "s", "bootID": "b", "kernelVersion": "6.12.0", "osImage": "Debian GNU/Linux 13", "containerRuntimeVersion": "containerd://2.1.0", "kubeletVersion": "v1.36.3", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
            "images": images,
        },
    })
}

/// CPU seconds the component's runtime threads and the lookup thread
/// (this one) have used: what the proxy process would spend.
fn component_cpu() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mine = this_thread_id();
    let tids: Vec<String> = tasks
        .filter_map(|t| t.ok()?.file_name().into_string().ok())
        .filter(|tid| {
            *tid == mine
                || std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                    .is_ok_and(|name| name.trim().starts_with(COMPONENT_THREAD))
        })
        .map(|tid| format!("self/task/{tid}"))
        .collect();
    common::cpu_seconds(&tids)
}

/// This thread's id, from /proc/thread-self.
fn this_thread_id() -> String {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|link| link.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
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
    sync_mib: f64,
    steady: Histogram<u64>,
    churn: Histogram<u64>,
    churn_events: u64,
    churn_cpu_percent: f64,
    churn_kib_per_second: f64,
}

fn measure(apiserver: &tokio::runtime::Runtime, pods: u32, nodes: u32) -> Row {
    let api = Arc::new(apiserver.block_on(FakeApiServer::start(&[PODS, NODES])));
    for i in 0..nodes {
        api.apply(NODES, node(i));
    }
    for i in 0..pods {
        api.apply(PODS, pod(i, nodes, 0));
    }
    let (identities, component, synced) = start_component(
        &api,
        |client| PodIdentities::spawn(client, Duration::from_secs(1)),
        PodIdentities::has_synced,
    );
    let Synced {
        ready,
        rss_mib,
        sync_mib,
    } = synced;
    let first = Instant::now();
    assert!(identities.pod(pod_ip(0)).is_some());
    let first_lookup = first.elapsed();

    let mut seed = 7_u64;
    let mut steady = Histogram::<u64>::new(3).expect("a histogram");
    lookups(&identities, pods, 20_000, &mut seed, &mut steady);

    // Churn: CHURN_PER_SECOND pods change (a new annotation each), sent by
    // a task on the API server's runtime, while lookups run here, one every
    // millisecond, as requests would arrive.
    let churning = Arc::new(AtomicBool::new(true));
    let churn_task = {
        let (api, churning) = (api.clone(), churning.clone());
        apiserver.spawn(async move {
            let mut events = 0_u64;
            let mut tick = tokio::time::interval(Duration::from_secs(1) / CHURN_PER_SECOND as u32);
            while churning.load(Ordering::Relaxed) {
                tick.tick().await;
                let i = ((events * 7919) % u64::from(pods)) as u32;
                api.apply(PODS, pod(i, nodes, events + 1));
                events += 1;
            }
            events
        })
    };
    let mut churn = Histogram::<u64>::new(3).expect("a histogram");
    let cpu_before = component_cpu();
    let bytes_before = api.bytes_served();
    let churn_started = Instant::now();
    while churn_started.elapsed() < Duration::from_secs(CHURN_SECONDS) {
        lookups(&identities, pods, 1, &mut seed, &mut churn);
        std::thread::sleep(Duration::from_millis(1));
    }
    churning.store(false, Ordering::Relaxed);
    let elapsed = churn_started.elapsed().as_secs_f64();
    let churn_cpu_percent = (component_cpu() - cpu_before) / elapsed * 100.0;
    let churn_kib_per_second = api.bytes_served().saturating_sub(bytes_before) as f64 / 1024.0 / elapsed;
    let churn_events = apiserver.block_on(churn_task).expect("the churn task");
    drop(identities);
    component.shutdown_timeout(Duration::from_secs(5));
    Row {
        pods,
        nodes,
        ready,
        first_lookup,
        rss_mib,
        sync_mib,
        steady,
        churn,
        churn_events,
        churn_cpu_percent,
        churn_kib_per_second,
    }
}

fn micros(histogram: &Histogram<u64>, quantile: f64) -> String {
    format!("{:.1}", histogram.value_at_quantile(quantile) as f64 / 1000.0)
}

/// The pods, nodes pairs of the identities part.
fn identity_sizes(quick: bool) -> &'static [(u32, u32)] {
    if quick {
        &[(1_000, 50), (10_000, 500)]
    } else {
        &[(1_000, 50), (10_000, 500), (100_000, 5_000)]
    }
}

fn identities_part(apiserver: &tokio::runtime::Runtime, quick: bool) -> String {
    let mut rows = Vec::new();
    for &(pods, nodes) in identity_sizes(quick) {
        let row = measure(apiserver, pods, nodes);
        eprintln!(
            "{pods} pods: ready {:?}, +{:.1} MiB, synced from {:.1} MiB, steady p99 {} us, churn p99 {} us, churn CPU {:.1}%",
            row.ready,
            row.rss_mib,
            row.sync_mib,
            micros(&row.steady, 0.99),
            micros(&row.churn, 0.99),
            row.churn_cpu_percent,
        );
        rows.push(row);
    }
    let mut report = format!(
        "## Proxy: pod and node identities\n\n\
         `access::peers::PodIdentities` (the informers over injected pods and nodes,\n\
         and the index cluster mode identifies callers by) fed by the fake API\n\
         server. Pods and nodes are shaped as a real API server sends them (pod ≈ 7\n\
         KiB of JSON with managed fields, statuses and the webhook's annotations;\n\
         node ≈ 9 KiB, mostly its image list).\n\n\
         Ready: from start to both caches synced. Memory: the resident memory the\n\
         informers add. Synced from: bytes read from the API server to get there.\n\
         Lookups of random pod IPs, in µs: steady (20,000 back to back) and during\n\
         churn (one lookup per millisecond while {CHURN_PER_SECOND} pods change per\n\
         second for {CHURN_SECONDS} s, each change a watch event). Churn CPU: the\n\
         component's threads and the lookup thread, in % of one core. Churn read:\n\
         the watch events' bytes per second.\n\n\
         | pods | nodes | ready | first lookup | memory (MiB) | synced from (MiB) | steady p50 | steady p99 | churn p50 | churn p99 | churn max | churn CPU | churn read (KiB/s) | events |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in &rows {
        report.push_str(&format!(
            "| {} | {} | {:.2} s | {:.2} ms | {:.1} | {:.1} | {} | {} | {} | {} | {} | {:.1}% | {:.0} | {} |\n",
            row.pods,
            row.nodes,
            row.ready.as_secs_f64(),
            row.first_lookup.as_secs_f64() * 1000.0,
            row.rss_mib,
            row.sync_mib,
            micros(&row.steady, 0.5),
            micros(&row.steady, 0.99),
            micros(&row.churn, 0.5),
            micros(&row.churn, 0.99),
            micros(&row.churn, 1.0),
            row.churn_cpu_percent,
            row.churn_kib_per_second,
            row.churn_events,
        ));
    }
    report
}

// ---- Webhook: mutation with 10,000 connectors in 10,000 namespaces ----

/// Connector `name` in `namespace`, shaped as the API server returns one
/// the controller has probed (status conditions, managed fields).
fn connector_object(namespace: &str, name: &str, address: &str) -> Value {
    let time = "2026-12-01T10:00:00Z";
    let condition = |kind: &str| json!({"type": kind, "status": "True", "reason": kind, "message": format!("{kind} checked against {address}"), "lastTransitionTime": time, "observedGeneration": 1});
    let conditions: Vec<Value> = [
        "Ready",
        "SecretResolved",
        "AddressReachable",
        "CredentialValid",
        "EgressAllowed",
        "ClassResolved",
    ]
    .into_iter()
    .map(condition)
    .collect();
    json!({
        "apiVersion": "connectors.alauda.io/v1alpha1",
        "kind": "Connector",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "generation": 1,
            "managedFields": [
                {"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "connectors.alauda.io/v1alpha1", "time": time, "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {}}}, "f:spec": {".": {}, "f:address": {}, "f:auth": {".": {}, "f:name": {}, "f:secretRef": {".": {}, "f:name": {}}}, "f:connectorClassName": {}}}},
                {"manager": "connectors-controller", "operation": "Apply", "apiVersion": "connectors.alauda.io/v1alpha1", "time": time, "fieldsType": "FieldsV1", "subresource": "status",
                 "fieldsV1": {"f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {".": {}, "f:message": {}, "f:reason": {}, "f:status": {}, "f:type": {}}}, "f:observedGeneration": {}}}},
            ],
        },
        "spec": {
            "connectorClassName": "harbor",
            "address": address,
            "auth": {"name": "basicAuth", "secretRef": {"name": "robot"}},
        },
        "status": {
            "observedGeneration": 1,
            "conditions": conditions,
        },
    })
}

fn namespace_object(name: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/metadata.name": name, "connectors.cpaas.io/proxy-inject": "true", "team": name},
            "annotations": annotations,
            "managedFields": [{"manager": "kubectl-create", "operation": "Update", "apiVersion": "v1", "time": "2026-12-01T10:00:00Z", "fieldsType": "FieldsV1",
                               "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:kubernetes.io/metadata.name": {}, "f:team": {}}}}}],
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

/// The two namespaces the mutation is measured in, each with connectors
/// `harbor` and `hub`: `team` lists them in its annotation, `open` takes
/// every connector it has.
const LISTED: &str = "team";
const OPEN: &str = "open";

fn small_store() -> connector::store::FileStore {
    let inject = [("connectors.cpaas.io/proxy-inject", "true")];
    let yaml = testing::StoreYaml::new(LISTED)
        .namespace_object(&inject, &[("connectors.cpaas.io/connector", "harbor,hub")])
        .connector_of_class("harbor", "harbor", "https://harbor.example.com", None)
        .connector_of_class("hub", "oci", "https://registry-1.docker.io", None)
        .in_namespace(OPEN)
        .namespace_object(&inject, &[])
        .connector_of_class("harbor", "harbor", "https://harbor.example.com", None)
        .connector_of_class("hub", "oci", "https://registry-1.docker.io", None)
        .build();
    connector::store::FileStore::from_yaml(&yaml).expect("the small store")
}

struct WebhookRow {
    connectors: u32,
    ready: Option<Duration>,
    rss_mib: f64,
    sync_mib: f64,
    /// (rate, histogram) in the listed and the open namespace.
    listed: (f64, Histogram<u64>),
    open: (f64, Histogram<u64>),
}

fn mutation_rates(store: &dyn connector::store::ConnectorStore, duration: Duration) -> [(f64, Histogram<u64>); 2] {
    use webhook::mutation::{Mode, Outcome, mutate_pod};
    let config = common::injection_config();
    let pod = common::five_container_pod();
    [LISTED, OPEN].map(|namespace| {
        let outcome = mutate_pod(&pod, namespace, Mode::Create, store, &config).expect("a mutation");
        assert!(
            matches!(outcome, Outcome::Patched { .. }),
            "the pod is rewritten in {namespace}"
        );
        common::single_core(duration, || {
            std::hint::black_box(
                mutate_pod(std::hint::black_box(&pod), namespace, Mode::Create, store, &config).unwrap(),
            );
        })
    })
}

fn webhook_row(apiserver: &tokio::runtime::Runtime, connectors: u32, duration: Duration) -> WebhookRow {
    use connector::store::{ConnectorStore, KubeStore};
    use testing::apiserver::{CONNECTORS, NAMESPACES};
    let api = Arc::new(apiserver.block_on(FakeApiServer::start(&[CONNECTORS, NAMESPACES])));
    for namespace in [LISTED, OPEN] {
        let annotations = if namespace == LISTED {
            json!({"connectors.cpaas.io/connector": "harbor,hub"})
        } else {
            json!({})
        };
        api.apply(NAMESPACES, namespace_object(namespace, annotations));
        api.apply(
            CONNECTORS,
            connector_object(namespace, "harbor", "https://harbor.example.com"),
        );
        api.apply(
            CONNECTORS,
            connector_object(namespace, "hub", "https://registry-1.docker.io"),
        );
    }
    for i in 0..connectors.saturating_sub(4) {
        let namespace = format!("tenant-{i}");
        api.apply(NAMESPACES, namespace_object(&namespace, json!({})));
        api.apply(
            CONNECTORS,
            connector_object(&namespace, "harbor", &format!("https://harbor-{}.example.com", i % 100)),
        );
    }
    let (store, component, synced) = start_component(&api, KubeStore::spawn, |store| store.has_synced());
    let Synced {
        ready,
        rss_mib,
        sync_mib,
    } = synced;
    let [listed, open] = mutation_rates(&store, duration);
    drop(store);
    component.shutdown_timeout(Duration::from_secs(5));
    WebhookRow {
        connectors,
        ready: Some(ready),
        rss_mib,
        sync_mib,
        listed,
        open,
    }
}

fn webhook_part(apiserver: &tokio::runtime::Runtime, quick: bool) -> String {
    let duration = Duration::from_secs(if quick { 2 } else { 5 });
    let [listed, open] = mutation_rates(&small_store(), duration);
    let mut rows = vec![WebhookRow {
        connectors: 4,
        ready: None,
        rss_mib: 0.0,
        sync_mib: 0.0,
        listed,
        open,
    }];
    let sizes: &[u32] = if quick { &[1_000] } else { &[1_000, 10_000] };
    for &connectors in sizes {
        rows.push(webhook_row(apiserver, connectors, duration));
    }
    let small = (rows[0].listed.0, rows[0].open.0);
    let mut report = format!(
        "## Webhook: mutation as connectors and namespaces grow\n\n\
         The mutation of the 5-container pod of `cargo bench --bench webhook` on one\n\
         core, for {}s per row, in a namespace that lists its connectors (`{LISTED}`)\n\
         and in one that takes all it has (`{OPEN}`). First row: the small store (a\n\
         file, 4 connectors); then `KubeStore` (the webhook's informers) synced from\n\
         the fake API server holding that many connectors, one per namespace besides\n\
         those four (Connectors with status and managed fields, as the API server\n\
         sends them). Ratio: the rate over the small store's.\n\n\
         | connectors (namespaces) | ready | memory (MiB) | synced from (MiB) | listed /s | p99 (µs) | ratio | open /s | p99 (µs) | ratio |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        duration.as_secs(),
    );
    for row in &rows {
        let micros99 = |h: &Histogram<u64>| h.value_at_quantile(0.99) as f64 / 1000.0;
        report.push_str(&format!(
            "| {} ({}) | {} | {:.1} | {:.1} | {:.0} | {:.1} | {:.2} | {:.0} | {:.1} | {:.2} |\n",
            row.connectors,
            if row.ready.is_some() { row.connectors - 2 } else { 2 },
            row.ready
                .map_or("file".to_owned(), |r| format!("{:.2} s", r.as_secs_f64())),
            row.rss_mib,
            row.sync_mib,
            row.listed.0,
            micros99(&row.listed.1),
            row.listed.0 / small.0,
            row.open.0,
            micros99(&row.open.1),
            row.open.0 / small.1,
        ));
        eprintln!(
            "webhook, {} connectors: listed {:.0}/s, open {:.0}/s, +{:.1} MiB",
            row.connectors, row.listed.0, row.open.0, row.rss_mib
        );
    }
    report
}

/// What a component's start against the fake cost.
struct Synced {
    /// From start to synced.
    ready: Duration,
    /// The resident memory it added, a second after syncing.
    rss_mib: f64,
    /// What it read from the API server to sync.
    sync_mib: f64,
}

/// Starts a component with `spawn` on a runtime of its own (its threads
/// named [`COMPONENT_THREAD`]) against `api`, once the fake has settled, and
/// waits until `synced` says so.
fn start_component<T>(
    api: &FakeApiServer,
    spawn: impl FnOnce(kube::Client) -> T,
    synced: impl Fn(&T) -> bool,
) -> (T, tokio::runtime::Runtime, Synced) {
    std::thread::sleep(Duration::from_millis(500));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(COMPONENT_THREAD)
        .enable_all()
        .build()
        .expect("a runtime");
    let before = rss();
    let bytes_before = api.bytes_served();
    let started = Instant::now();
    let component = {
        let _entered = runtime.enter();
        spawn(api.client())
    };
    while !synced(&component) {
        assert!(started.elapsed() < Duration::from_secs(600), "never synced");
        std::thread::sleep(Duration::from_millis(5));
    }
    let ready = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let cost = Synced {
        ready,
        rss_mib: mib(rss().saturating_sub(before)),
        sync_mib: mib(api.bytes_served().saturating_sub(bytes_before)),
    };
    (component, runtime, cost)
}

/// The parts, by name, in the order they are written.
const PARTS: &[&str] = &["identities", "webhook"];

/// `bench/results/scale.md`: the parts run now, and the others as the file
/// had them.
fn write_report(new: &[(&str, String)]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results/scale.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let old_part = |name: &str| -> Option<String> {
        let start = old.find(&format!("<!-- part: {name} -->"))?;
        let rest = &old[start..];
        let end = rest[1..].find("<!-- part: ").map_or(rest.len(), |e| e + 1);
        Some(rest[..end].to_owned())
    };
    let mut report = format!(
        "# Scale: each component's cost as the cluster grows\n\n\
         `cargo bench --bench scale` (parts: {}; `-- PART` runs one, `-- --quick`\n\
         the smaller sizes). Each part's components run on a tokio runtime of their\n\
         own beside the fake API server's, in one process on this machine (2 cores).\n\n",
        PARTS.join(", ")
    );
    for name in PARTS {
        match new.iter().find(|(n, _)| n == name) {
            Some((_, text)) => report.push_str(&format!(
                "<!-- part: {name} -->\n{text}\nAt {}.\n\n",
                common::revision()
            )),
            None => report.push_str(&old_part(name).unwrap_or_default()),
        }
    }
    let path = common::write_results("scale.md", &report);
    eprintln!("wrote {}", path.display());
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| PARTS.contains(&a.as_str()))
        .collect();
    let apiserver = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("apiserver")
        .enable_all()
        .build()
        .expect("a runtime");
    let mut new = Vec::new();
    for name in PARTS {
        if !chosen.is_empty() && !chosen.iter().any(|c| c == name) {
            continue;
        }
        let text = match *name {
            "identities" => identities_part(&apiserver, quick),
            "webhook" => webhook_part(&apiserver, quick),
            _ => unreachable!("every part is matched"),
        };
        new.push((*name, text));
    }
    write_report(&new);
}
