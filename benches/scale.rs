//! Scale: each component's cost as the cluster it serves grows, fed a
//! synthetic cluster through the fake API server (pods, nodes and
//! Connectors shaped as a real API server sends them). Parts:
//!
//! - `identities`: the proxy's source-address identities
//!   (`access::peers::PodIdentities`) at 1,000 / 10,000 / 100,000 injected
//!   pods on 50 / 500 / 5,000 nodes, in this process on a runtime of its own
//!   beside the fake's: time to synced, memory, bytes read, lookups by pod
//!   IP at p50/p99 (steady and while 100 pod events a second arrive), CPU
//!   and bytes per second of churn.
//! - `real`: the 10,000-pod point again on the real kube-apiserver of
//!   `e2e/cluster`, next to the fake's.
//! - `proxy`: the release `connectors proxy` as a process with 10,000 pods
//!   and 1,000 connectors, and 100,000 pods, 5,000 nodes and 10,000
//!   connectors (each with its Secret): ready, memory, descriptors.
//! - `webhook`: the mutation rate with 1,000 and 10,000 connectors in as
//!   many namespaces, against the small file store's.
//! - `controller`: the release `connectors controller` as a process with
//!   1,000 and 10,000 connectors: probes, status writes and Events until
//!   all are probed, then what a restart (a new leader) costs in its first
//!   minute.
//! - `csi`: the release `connectors csi` as a process, 110 publishes at
//!   once (a full node's pods), p50/p99.
//!
//! Writes `bench/results/scale.md`. Run with `cargo bench --bench scale`
//! (`-- PART` runs one part, `-- --quick` the smaller sizes).

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
use testing::apiserver::{CONNECTORS, FakeApiServer, NODES, PODS};

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
    let served = || api.bytes_served();
    let (identities, component, synced) = start_component(
        || api.client(),
        served,
        |client| PodIdentities::spawn(client, Duration::from_secs(1)),
        PodIdentities::has_synced,
    );
    // Churn: a new annotation on a pod, straight into the fake.
    let churned = api.clone();
    let churn = move |event: u64| {
        let i = ((event * 7919) % u64::from(pods)) as u32;
        churned.apply(PODS, pod(i, nodes, event + 1));
        std::future::ready(true)
    };
    identity_row((identities, component, synced), (pods, nodes), apiserver, served, churn)
}

/// The identities' row once they synced: the first lookup, lookups of
/// random pod IPs back to back, then one a millisecond (as requests would
/// arrive) while a task on `runtime` makes CHURN_PER_SECOND pod events a
/// second with `churn(event)` (false: that event failed). `served` counts
/// the bytes the API server has sent.
fn identity_row<F, Fut>(
    (identities, component, synced): (PodIdentities, tokio::runtime::Runtime, Synced),
    (pods, nodes): (u32, u32),
    runtime: &tokio::runtime::Runtime,
    served: impl Fn() -> u64,
    churn: F,
) -> Row
where
    F: Fn(u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let Synced {
        ready,
        rss_mib,
        sync_mib,
    } = synced;
    let first = Instant::now();
    assert!(identities.pod(pod_ip(0)).is_some(), "pod 0 has an identity");
    let first_lookup = first.elapsed();

    let mut seed = 7_u64;
    let mut steady = Histogram::<u64>::new(3).expect("a histogram");
    lookups(&identities, pods, 20_000, &mut seed, &mut steady);

    let churning = Arc::new(AtomicBool::new(true));
    let churn_task = {
        let churning = churning.clone();
        runtime.spawn(async move {
            let (mut events, mut made) = (0_u64, 0_u64);
            let mut tick = tokio::time::interval(Duration::from_secs(1) / CHURN_PER_SECOND as u32);
            while churning.load(Ordering::Relaxed) {
                tick.tick().await;
                if churn(events).await {
                    made += 1;
                }
                events += 1;
            }
            made
        })
    };
    let mut churned = Histogram::<u64>::new(3).expect("a histogram");
    let cpu_before = component_cpu();
    let bytes_before = served();
    let churn_started = Instant::now();
    while churn_started.elapsed() < Duration::from_secs(CHURN_SECONDS) {
        lookups(&identities, pods, 1, &mut seed, &mut churned);
        std::thread::sleep(Duration::from_millis(1));
    }
    churning.store(false, Ordering::Relaxed);
    let elapsed = churn_started.elapsed().as_secs_f64();
    let churn_cpu_percent = (component_cpu() - cpu_before) / elapsed * 100.0;
    let churn_kib_per_second = served().saturating_sub(bytes_before) as f64 / 1024.0 / elapsed;
    let churn_events = runtime.block_on(churn_task).expect("the churn task");
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
        churn: churned,
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
        report.push_str(&identity_line(row));
    }
    report
}

/// A row of the identities table, from its pods column on.
fn identity_line(row: &Row) -> String {
    format!(
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
    )
}

/// The 10,000-pod point on the fake and on the real API server.
fn real_part(apiserver: &tokio::runtime::Runtime) -> String {
    let fake = measure(apiserver, REAL_PODS, REAL_NODES);
    let real = real_identities_row(apiserver);
    eprintln!(
        "real API server, {REAL_PODS} pods: ready {:?} (fake {:?}), +{:.1} MiB (fake +{:.1}), synced from {:.1} MiB (fake {:.1}), churn p99 {} us (fake {})",
        real.ready,
        fake.ready,
        real.rss_mib,
        fake.rss_mib,
        real.sync_mib,
        fake.sync_mib,
        micros(&real.churn, 0.99),
        micros(&fake.churn, 0.99),
    );
    let mut report = format!(
        "## Proxy identities: the fake against the real API server\n\n\
         The {REAL_PODS}-pod point of the identities table measured twice in one run:\n\
         against the fake, and against the real kube-apiserver and etcd of\n\
         `e2e/cluster` (no node; kube-controller-manager stopped, as no kubelet\n\
         heartbeats the nodes) holding the same pods and nodes, created through\n\
         the API with their status written as a kubelet would. Real: bytes are\n\
         counted by a relay in front of the API server (TLS records); churn is\n\
         {CHURN_PER_SECOND} pod patches a second through the API server. Columns as above.\n\n\
         | API server | pods | nodes | ready | first lookup | memory (MiB) | synced from (MiB) | steady p50 | steady p99 | churn p50 | churn p99 | churn max | churn CPU | churn read (KiB/s) | events |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    report.push_str(&format!("| fake | {}", identity_line(&fake).trim_start_matches("| ")));
    report.push_str(&format!(
        "| real (kube-apiserver {}) | {}",
        real_version(),
        identity_line(&real).trim_start_matches("| ")
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let fake_csi = csi_cluster_row(apiserver, &runtime, 0);
    let real_csi = real_csi_line(&runtime);
    report.push_str(&format!(
        "\nThe CSI plugin in cluster mode ({PODS_PER_NODE} publishes at once, as in the CSI\n\
         part) against the fake and against the real API server (the plugin with\n\
         the `connectors-csi` ServiceAccount's token, as its DaemonSet runs it; the\n\
         pods' ServiceAccount bound to `connectors-user`, so RBAC decides each\n\
         SubjectAccessReview). Columns as in the CSI part; `—`: not counted.\n\n\
         | API server | connectors | ready | memory at ready (MiB) | read to ready (MiB) | first round p50 / p99 (ms) | again p50 / p99 (ms) | failed | Connector watches | memory after (MiB) | read in all (MiB) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n\
         | fake {fake_csi}\
         | real (kube-apiserver {}) {real_csi}",
        real_version(),
    ));
    report
}

/// The CSI plugin in cluster mode against the real API server, as its
/// DaemonSet runs it (the `connectors-csi` ServiceAccount's token): the
/// volumes name two Connectors of a namespace whose `builder` is bound to
/// `connectors-user`, so each publish is a real SubjectAccessReview (RBAC
/// deciding) and a Pod read.
fn real_csi_line(runtime: &tokio::runtime::Runtime) -> String {
    let cluster = testing::cluster::RealCluster::shared(&common::connectors_binary());
    let namespace = "csi-bench";
    cluster.kubectl_ok(&["create", "namespace", namespace], None);
    for (name, class) in [("harbor", "harbor"), ("hub", "oci")] {
        let connector = format!(
            "apiVersion: connectors.alauda.io/v1alpha1\nkind: Connector\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {{connectorClassName: {class}, address: \"https://{name}.example.com\"}}\n"
        );
        cluster.kubectl_ok(&["apply", "-f", "-"], Some(&connector));
    }
    cluster.service_accounts(namespace, &[("builder", true)]);
    let token = cluster.kubectl_ok(
        &[
            "create",
            "token",
            "builder",
            "-n",
            namespace,
            "--audience",
            "connectors-proxy",
        ],
        None,
    );
    let token = token.trim().to_owned();
    let uids: Vec<String> = runtime.block_on(async {
        use k8s_openapi::api::core::v1::Pod;
        let pods: kube::Api<Pod> = kube::Api::namespaced(cluster.admin().await, namespace);
        let mut uids = Vec::new();
        for i in 0..PODS_PER_NODE {
            let pod = serde_json::from_value(csi_pod(namespace, i)).expect("a pod");
            let created = pods
                .create(&Default::default(), &pod)
                .await
                .expect("the pod is created");
            uids.push(created.metadata.uid.expect("the API server gives a UID"));
        }
        uids
    });
    let kubeconfig = cluster.service_account_kubeconfig("connectors-csi", "connectors-csi");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let request = |target: &std::path::Path, i: usize| {
        csi_publish_request(target, i, namespace, Some(&token), Some(uids[i].as_str()))
    };
    let run = csi_cluster_run(runtime, dir.path(), &kubeconfig, &request, &|| None, &|| None);
    csi_cluster_line("2", &run)
}

/// The real API server's version, as its go.mod pins it.
fn real_version() -> String {
    let go_mod = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/go.mod"))
        .unwrap_or_default();
    go_mod
        .lines()
        .find_map(|line| line.trim().strip_prefix("k8s.io/kubernetes "))
        .map_or("?".to_owned(), |v| v.trim().to_owned())
}

// ---- The 10,000-pod point on the real API server ----

/// The real point's size: the fake's middle row.
const REAL_PODS: u32 = 10_000;
const REAL_NODES: u32 = 500;

/// A loopback relay in front of `upstream` that counts the bytes the
/// server sends (TLS records: bodies plus a little framing).
async fn counting_relay(upstream: std::net::SocketAddr) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("an address");
    let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let total = counted.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let total = total.clone();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.split();
                let (mut server_read, mut server_write) = server.split();
                let up = tokio::io::copy(&mut client_read, &mut server_write);
                let down = async {
                    let mut buffer = vec![0_u8; 64 * 1024];
                    loop {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let n = match server_read.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        total.fetch_add(n as u64, Ordering::Relaxed);
                        if client_write.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                tokio::select! {
                    _ = up => {}
                    () = down => {}
                }
            });
        }
    });
    (addr, counted)
}

/// Pod `i` as a user creates it (no status, uid or owner; the status is
/// written after, as the kubelet would).
fn pod_to_create(i: u32, nodes: u32) -> (Value, Value) {
    let mut pod = pod(i, nodes, 0);
    let status = pod
        .as_object_mut()
        .expect("an object")
        .remove("status")
        .expect("a status");
    let metadata = pod["metadata"].as_object_mut().expect("metadata");
    for field in ["uid", "ownerReferences", "managedFields"] {
        metadata.remove(field);
    }
    // NB: the webhook refuses a pod naming a connector its namespace lacks;
    // the pods stand for ones injected already (their label stays).
    metadata["annotations"]
        .as_object_mut()
        .expect("annotations")
        .remove("connectors.cpaas.io/connector");
    let mut status = status;
    status.as_object_mut().expect("a status").remove("qosClass");
    (pod, json!({"status": status}))
}

/// Panics unless the object was created or was there already.
fn created<T>(result: Result<T, kube::Error>) {
    match result {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => panic!("creating the cluster's objects failed: {error}"),
    }
}

/// Runs `count` futures made by `make`, `width` at a time.
async fn in_parallel<F, Fut>(count: u32, width: usize, make: F)
where
    F: Fn(u32) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::StreamExt;
    futures::stream::iter(0..count)
        .map(make)
        .buffer_unordered(width)
        .collect::<Vec<()>>()
        .await;
}

/// The real API server (e2e/cluster, no node) holding `REAL_PODS` injected
/// running pods on `REAL_NODES` nodes.
fn real_cluster_with_pods(runtime: &tokio::runtime::Runtime) -> (&'static testing::cluster::RealCluster, kube::Client) {
    use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
    use kube::api::{Api, Patch, PatchParams, PostParams};
    let cluster = testing::cluster::RealCluster::shared(&common::connectors_binary());
    // NB: no kubelet heartbeats these nodes: the node lifecycle controller
    // would taint them and evict their pods, and the pod garbage collector
    // delete them. Nothing measured here needs kube-controller-manager.
    let pid = std::fs::read_to_string(cluster.dir.join("pids/kube-controller-manager.pid")).unwrap_or_default();
    let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    let admin = runtime.block_on(cluster.admin());
    runtime.block_on(async {
        let post = PostParams::default();
        let nodes: Api<Node> = Api::all(admin.clone());
        in_parallel(REAL_NODES, 16, |i| {
            let nodes = nodes.clone();
            let post = post.clone();
            async move {
                let mut node = node(i);
                let status = node.as_object_mut().expect("an object").remove("status");
                created(
                    nodes
                        .create(&post, &serde_json::from_value(node).expect("a node"))
                        .await,
                );
                let patch = json!({"status": status});
                created(
                    nodes
                        .patch_status(&format!("node-{i}"), &PatchParams::default(), &Patch::Merge(&patch))
                        .await,
                );
            }
        })
        .await;
        let namespaces: Api<Namespace> = Api::all(admin.clone());
        in_parallel(1000, 16, |i| {
            let (namespaces, admin, post) = (namespaces.clone(), admin.clone(), post.clone());
            async move {
                let name = format!("team-{i}");
                let namespace = json!({"metadata": {"name": name}});
                created(
                    namespaces
                        .create(&post, &serde_json::from_value(namespace).expect("a namespace"))
                        .await,
                );
                let accounts: Api<ServiceAccount> = Api::namespaced(admin, &name);
                let account = json!({"metadata": {"name": "builder"}});
                created(
                    accounts
                        .create(&post, &serde_json::from_value(account).expect("an account"))
                        .await,
                );
            }
        })
        .await;
        in_parallel(REAL_PODS, 32, |i| {
            let (admin, post) = (admin.clone(), post.clone());
            async move {
                let (pod, status) = pod_to_create(i, REAL_NODES);
                let namespace = pod["metadata"]["namespace"].as_str().expect("a namespace").to_owned();
                let name = pod["metadata"]["name"].as_str().expect("a name").to_owned();
                let pods: Api<Pod> = Api::namespaced(admin, &namespace);
                created(pods.create(&post, &serde_json::from_value(pod).expect("a pod")).await);
                created(
                    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                        .await,
                );
            }
        })
        .await;
    });
    (cluster, admin)
}

/// The identities row on the real API server: the same measurements as
/// [`measure`], bytes counted by a relay in front of it.
fn real_identities_row(runtime: &tokio::runtime::Runtime) -> Row {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, Patch, PatchParams};
    let (cluster, admin) = real_cluster_with_pods(runtime);
    let server = std::fs::read_to_string(cluster.dir.join("ports")).expect("the cluster's ports");
    let port: u16 = server
        .lines()
        .find_map(|line| line.strip_prefix("apiserver="))
        .and_then(|p| p.parse().ok())
        .expect("the API server's port");
    let (relay, counted) = runtime.block_on(counting_relay(std::net::SocketAddr::from(([127, 0, 0, 1], port))));
    let config = runtime.block_on(async {
        let file = kube::config::Kubeconfig::read_from(&cluster.kubeconfig).expect("the kubeconfig reads");
        let mut config = kube::Config::from_custom_kubeconfig(file, &Default::default())
            .await
            .expect("the kubeconfig is usable");
        config.cluster_url = format!("https://{relay}").parse().expect("a URL");
        config
    });
    let served = || counted.load(Ordering::Relaxed);
    let started = start_component(
        move || kube::Client::try_from(config).expect("a client"),
        served,
        |client| PodIdentities::spawn(client, Duration::from_secs(1)),
        PodIdentities::has_synced,
    );
    // Churn: an annotation patched through the API server.
    let churn = move |event: u64| {
        let i = ((event * 7919) % u64::from(REAL_PODS)) as u32;
        let (pod, _) = pod_to_create(i, REAL_NODES);
        let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
        let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let pods: Api<Pod> = Api::namespaced(admin.clone(), &namespace);
        async move {
            let patch = json!({"metadata": {"annotations": {"bench/generation": (event + 1).to_string()}}});
            let (params, patch) = (PatchParams::default(), Patch::Merge(&patch));
            tokio::time::timeout(Duration::from_secs(5), pods.patch(&name, &params, &patch))
                .await
                .is_ok_and(|r| r.is_ok())
        }
    };
    identity_row(started, (REAL_PODS, REAL_NODES), runtime, served, churn)
}

// ---- The proxy process: pods, nodes, connectors and their Secrets ----

struct ProxyRow {
    pods: u32,
    nodes: u32,
    connectors: u32,
    ready: Duration,
    ready_rss_mib: f64,
    /// The proxy's own CPU seconds until ready (the rest of the wait is the
    /// fake's, on the same two cores).
    ready_cpu: f64,
    settled: Duration,
    rss_mib: f64,
    peak_mib: f64,
    fds: usize,
    read_mib: f64,
    used: UsedRow,
}

/// The proxy after requests for `connectors` distinct connectors, each
/// with its own caller.
struct UsedRow {
    connectors: u32,
    /// Each connector's first request (caller reviewed, Secret read).
    first: Histogram<u64>,
    /// The proxy's CPU milliseconds per first request.
    first_cpu_ms: f64,
    /// The same requests again.
    again: Histogram<u64>,
    /// Answers that were not the registry's own (a 404 for the tag).
    failed: usize,
    secret_watches: usize,
    secret_reads: usize,
    rss_mib: f64,
    fds: usize,
}

/// The registry user and password of every bench Secret.
const BENCH_USER: &str = "robot";
const BENCH_PASSWORD: &str = "password";

/// `connectors proxy` (the release binary, cluster mode) against the fake
/// holding `pods` injected pods on `nodes` nodes and `connectors`
/// Connectors, one per namespace, each with its Secret: until `/readyz`,
/// then until its open descriptors stop changing, bounded; then one
/// request for each of `used` connectors (pointing at a real registry),
/// and each again.
fn proxy_row(apiserver: &tokio::runtime::Runtime, pods: u32, nodes: u32, connectors: u32, used: u32) -> ProxyRow {
    use testing::apiserver::{CONNECTOR_CLASSES, NAMESPACES, SECRETS};
    let registry = apiserver
        .block_on(testing::registry::Registry::start(
            testing::registry::RegistryOptions::htpasswd(BENCH_USER, BENCH_PASSWORD),
        ))
        .expect("the registry starts");
    let api = apiserver.block_on(FakeApiServer::start(&[
        PODS,
        NODES,
        CONNECTORS,
        CONNECTOR_CLASSES,
        NAMESPACES,
        SECRETS,
    ]));
    for class in connector::class::built_in() {
        api.apply(
            CONNECTOR_CLASSES,
            serde_json::to_value(class).expect("a class serialises"),
        );
    }
    for i in 0..nodes {
        api.apply(NODES, node(i));
    }
    for i in 0..pods {
        api.apply(PODS, pod(i, nodes, 0));
    }
    for i in 0..connectors {
        let namespace = format!("team-{i}");
        api.apply(NAMESPACES, namespace_object(&namespace, json!({})));
        let connector = if i < used {
            let mut connector = connector_object(&namespace, "harbor", &registry.url());
            connector["spec"]["connectorClassName"] = json!("oci");
            connector
        } else {
            connector_object(&namespace, "harbor", &format!("https://harbor-{}.example.com", i % 100))
        };
        api.apply(CONNECTORS, connector);
        let encode = |v: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, v);
        api.apply(
            SECRETS,
            json!({
                "metadata": {"name": "robot", "namespace": namespace},
                "type": "kubernetes.io/basic-auth",
                "data": {"username": encode(BENCH_USER), "password": encode(BENCH_PASSWORD)},
            }),
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let dir = tempfile::tempdir().expect("a temporary directory");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig("proxy-token")).expect("the kubeconfig is written");
    let state = dir.path().join("state");
    let bytes_before = api.bytes_served();
    let started = Instant::now();
    let proxy = testing::process::Connectors::start(
        &common::connectors_binary(),
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--egress-allow",
            "127.0.0.0/8",
            "--state-dir",
            state.to_str().expect("a UTF-8 path"),
            // NB: the bench measures Secrets and stores, not the limit on
            // reviews of new callers (50 a second by default).
            "--reviews-per-second",
            "100000",
        ],
        &[("KUBECONFIG", kubeconfig.to_str().expect("a UTF-8 path"))],
        "proxy listening",
    )
    .expect("the proxy starts");
    let readyz = format!("http://{}/readyz", proxy.addr().expect("the proxy's address"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    while runtime.block_on(scrape(&readyz)) != "ok" {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the proxy never became ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ready = started.elapsed();
    let ready_cpu = common::cpu_seconds(&[proxy.pid().to_string()]);
    let ready_rss_mib = mib(common::memory(proxy.pid()).1);
    // Settled: the descriptors (a connection per Secret watch) unchanged
    // for 10 s.
    let (mut fds, mut steady_since) = (common::open_fds(proxy.pid()), Instant::now());
    while steady_since.elapsed() < Duration::from_secs(10) && started.elapsed() < Duration::from_secs(900) {
        std::thread::sleep(Duration::from_millis(500));
        let now = common::open_fds(proxy.pid());
        if now != fds {
            (fds, steady_since) = (now, Instant::now());
        }
    }
    let settled = started.elapsed() - steady_since.elapsed();
    let (peak, rss) = common::memory(proxy.pid());
    let read_mib = mib(api.bytes_served().saturating_sub(bytes_before));
    let used = used_row(&runtime, &api, &proxy, used);
    drop(registry);
    ProxyRow {
        pods,
        nodes,
        connectors,
        ready,
        ready_rss_mib,
        ready_cpu,
        settled,
        rss_mib: mib(rss),
        peak_mib: mib(peak),
        fds,
        read_mib,
        used,
    }
}

/// One request (a manifest HEAD) for each of connectors `team-0/harbor` …
/// `team-<used - 1>/harbor`, each by a caller of that namespace, then the
/// same again.
fn used_row(
    runtime: &tokio::runtime::Runtime,
    api: &FakeApiServer,
    proxy: &testing::process::Connectors,
    used: u32,
) -> UsedRow {
    use testing::apiserver::{Review, SECRETS};
    api.set_reviewer(Review::Token, |review| {
        let namespace = review["spec"]["token"].as_str().unwrap_or_default();
        json!({
            "authenticated": true,
            "user": {
                "username": format!("system:serviceaccount:{namespace}:default"),
                "uid": format!("uid-{namespace}"),
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}"), "system:authenticated"],
            },
            "audiences": ["connectors-proxy"],
        })
    });
    api.set_reviewer(Review::SubjectAccess, |_| json!({"allowed": true}));
    let reads_before = api
        .requests()
        .iter()
        .filter(|r| r.path.contains("/secrets/") && r.method == "GET")
        .count();
    let addr = proxy.addr().expect("the proxy's address");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let mut failed = 0;
    let mut round = |histogram: &mut Histogram<u64>| {
        for i in 0..used {
            let request = hyper::Request::head(format!(
                "http://{addr}/v2/namespaces/team-{i}/connectors/harbor/bench/app/manifests/latest"
            ))
            .header("authorization", format!("Bearer team-{i}"))
            .body(http_body_util::Empty::new())
            .expect("a request");
            let sent = Instant::now();
            let status = runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(30), client.request(request))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|response| response.status().as_u16())
            });
            histogram
                .record(sent.elapsed().as_micros() as u64)
                .expect("a latency in range");
            if status != Some(404) {
                failed += 1;
                if failed <= 3 {
                    eprintln!("connector team-{i}/harbor answered {status:?}");
                }
            }
        }
    };
    let mut first = Histogram::<u64>::new(3).expect("a histogram");
    let cpu = || common::cpu_seconds(&[proxy.pid().to_string()]);
    let cpu_before = cpu();
    round(&mut first);
    let first_cpu_ms = (cpu() - cpu_before) * 1000.0 / f64::from(used.max(1));
    let mut again = Histogram::<u64>::new(3).expect("a histogram");
    round(&mut again);
    let (_, rss) = common::memory(proxy.pid());
    UsedRow {
        connectors: used,
        first,
        first_cpu_ms,
        again,
        failed,
        secret_watches: api.open_watches(SECRETS),
        secret_reads: api
            .requests()
            .iter()
            .filter(|r| r.path.contains("/secrets/") && r.method == "GET")
            .count()
            - reads_before,
        rss_mib: mib(rss),
        fds: common::open_fds(proxy.pid()),
    }
}

fn proxy_part(apiserver: &tokio::runtime::Runtime, quick: bool) -> String {
    let sizes: &[(u32, u32, u32, u32)] = if quick {
        &[(10_000, 500, 1_000, 100)]
    } else {
        &[(10_000, 500, 1_000, 100), (100_000, 5_000, 10_000, 1_000)]
    };
    let mut report = String::from(
        "## The proxy process: pods, nodes, connectors and their Secrets\n\n\
         The release `connectors proxy` in cluster mode (its own process) against\n\
         the fake holding that many injected pods, nodes and Connectors (one per\n\
         namespace, each with its basic-auth Secret). Ready: until `/readyz`\n\
         answers (connectors, namespaces, pods and nodes synced). Settled: until\n\
         its open descriptors stop changing for 10 s (one connection per Secret\n\
         watch; Secrets are followed only while used, so none yet). Memory is the\n\
         process's resident memory (peak: VmHWM).\n\n\
         | pods | nodes | connectors | ready | its CPU to ready | memory at ready (MiB) | settled | memory (MiB) | peak (MiB) | fds | read (MiB) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut used_report = String::from(
        "Then one request (a manifest HEAD through reverse mode, answered 404 by a\n\
         real registry) for each of that many connectors, each by a caller of its\n\
         own namespace, and the same requests again. A first request reviews its\n\
         caller (TokenReview, SubjectAccessReview) and reads the connector's\n\
         Secret, which the proxy then follows while it is used (idle 10 minutes).\n\n\
         | pods | connectors | connectors used | first request p50 / p99 (ms) | proxy CPU per first request (ms) | again p50 / p99 (ms) | failed | Secret reads | Secret watches | memory after (MiB) | fds after |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let ms = |histogram: &Histogram<u64>, quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
    for &(pods, nodes, connectors, used) in sizes {
        let row = proxy_row(apiserver, pods, nodes, connectors, used);
        let u = &row.used;
        eprintln!(
            "proxy, {pods} pods, {connectors} connectors, {used} used: first p50 {:.2} ms p99 {:.2} ms, again p50 {:.2} ms p99 {:.2} ms, {} failed, {} watches, {:.1} MiB, {} fds",
            ms(&u.first, 0.5),
            ms(&u.first, 0.99),
            ms(&u.again, 0.5),
            ms(&u.again, 0.99),
            u.failed,
            u.secret_watches,
            u.rss_mib,
            u.fds
        );
        used_report.push_str(&format!(
            "| {} | {} | {} | {:.2} / {:.2} | {:.2} | {:.2} / {:.2} | {} | {} | {} | {:.1} | {} |\n",
            row.pods,
            row.connectors,
            u.connectors,
            ms(&u.first, 0.5),
            ms(&u.first, 0.99),
            u.first_cpu_ms,
            ms(&u.again, 0.5),
            ms(&u.again, 0.99),
            u.failed,
            u.secret_reads,
            u.secret_watches,
            u.rss_mib,
            u.fds,
        ));
        eprintln!(
            "proxy, {pods} pods, {connectors} connectors: ready {:?} ({:.1} MiB), settled {:?}: {:.1} MiB, peak {:.1} MiB, {} fds",
            row.ready, row.ready_rss_mib, row.settled, row.rss_mib, row.peak_mib, row.fds
        );
        report.push_str(&format!(
            "| {} | {} | {} | {:.2} s | {:.1} s | {:.1} | {:.1} s | {:.1} | {:.1} | {} | {:.1} |\n",
            row.pods,
            row.nodes,
            row.connectors,
            row.ready.as_secs_f64(),
            row.ready_cpu,
            row.ready_rss_mib,
            row.settled.as_secs_f64(),
            row.rss_mib,
            row.peak_mib,
            row.fds,
            row.read_mib,
        ));
    }
    report.push('\n');
    report.push_str(&used_report);
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

/// The small store's YAML: `harbor` and `hub` in the listed and the open
/// namespace.
fn small_store_yaml() -> String {
    let inject = [("connectors.cpaas.io/proxy-inject", "true")];
    testing::StoreYaml::new(LISTED)
        .namespace_object(&inject, &[("connectors.cpaas.io/connector", "harbor,hub")])
        .connector_of_class("harbor", "harbor", "https://harbor.example.com", None)
        .connector_of_class("hub", "oci", "https://registry-1.docker.io", None)
        .in_namespace(OPEN)
        .namespace_object(&inject, &[])
        .connector_of_class("harbor", "harbor", "https://harbor.example.com", None)
        .connector_of_class("hub", "oci", "https://registry-1.docker.io", None)
        .build()
}

fn small_store() -> connector::store::FileStore {
    connector::store::FileStore::from_yaml(&small_store_yaml()).expect("the small store")
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
    use testing::apiserver::NAMESPACES;
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
    let (store, component, synced) = start_component(
        || api.client(),
        || api.bytes_served(),
        KubeStore::spawn,
        |store| store.has_synced(),
    );
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

// ---- Controller: probes and status writes with 10,000 connectors ----

/// How often the benchmarked controller re-probes healthy connectors (the
/// shipped default).
const PROBE_INTERVAL_SECONDS: u64 = 300;
/// How long after a restart the probes are counted.
const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// A registry's `/v2/` that accepts any Basic credential (or, `anonymous`,
/// anyone): the probes' target. Records when each probe's authenticated
/// request (anonymous: each request) arrived.
struct ProbeTarget {
    addr: std::net::SocketAddr,
    probes: Arc<std::sync::Mutex<Vec<Instant>>>,
}

impl ProbeTarget {
    fn start(runtime: &tokio::runtime::Runtime, anonymous: bool) -> Self {
        use axum::http::{HeaderMap, StatusCode, header};
        let probes: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
        let recorded = probes.clone();
        let app = axum::Router::new().route(
            "/v2/",
            axum::routing::get(move |headers: HeaderMap| {
                let recorded = recorded.clone();
                async move {
                    if anonymous || headers.contains_key(header::AUTHORIZATION) {
                        recorded.lock().unwrap().push(Instant::now());
                        (StatusCode::OK, [(header::WWW_AUTHENTICATE, "")], "{}")
                    } else {
                        (
                            StatusCode::UNAUTHORIZED,
                            [(header::WWW_AUTHENTICATE, "Basic realm=\"bench\"")],
                            "{}",
                        )
                    }
                }
            }),
        );
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("a loopback port");
        let addr = listener.local_addr().expect("an address");
        runtime.spawn(async move { axum::serve(listener, app).await });
        Self { addr, probes }
    }

    /// Probes that arrived at or after `since`.
    fn since(&self, since: Instant) -> Vec<Instant> {
        self.probes
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|t| *t >= since)
            .collect()
    }
}

/// The install's objects the controller reads and writes besides the
/// Connectors: the classes, the webhook configuration it keeps a caBundle
/// in, and the install namespace's Secrets and ConfigMaps it creates.
fn controller_cluster(api: &FakeApiServer, connectors: u32, secrets: bool, target: &ProbeTarget) {
    use testing::apiserver::{CONNECTOR_CLASSES, MUTATING_WEBHOOK_CONFIGURATIONS, SECRETS};
    for class in connector::class::built_in() {
        api.apply(
            CONNECTOR_CLASSES,
            serde_json::to_value(class).expect("a class serialises"),
        );
    }
    api.apply(
        MUTATING_WEBHOOK_CONFIGURATIONS,
        json!({"metadata": {"name": "connectors"}, "webhooks": []}),
    );
    let address = format!("http://{}", target.addr);
    for i in 0..connectors {
        let namespace = format!("tenant-{i}");
        let mut connector = connector_object(&namespace, "registry", &address);
        connector["spec"]["connectorClassName"] = json!("oci");
        connector.as_object_mut().expect("an object").remove("status");
        if !secrets {
            connector["spec"].as_object_mut().expect("a spec").remove("auth");
            api.apply(CONNECTORS, connector);
            continue;
        }
        api.apply(CONNECTORS, connector);
        api.apply(
            SECRETS,
            json!({
                "metadata": {"name": "robot", "namespace": namespace},
                "type": "kubernetes.io/basic-auth",
                "data": {"username": "cm9ib3Q=", "password": "cGFzc3dvcmQ="},
            }),
        );
    }
}

/// `connectors controller` (the release binary) against `api`.
fn start_controller(api: &FakeApiServer, identity: &str, dir: &std::path::Path) -> testing::process::Connectors {
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig("controller-token")).expect("the kubeconfig is written");
    let interval = PROBE_INTERVAL_SECONDS.to_string();
    let args = [
        "controller",
        "--health-listen",
        "127.0.0.1:0",
        "--egress-allow",
        "127.0.0.0/8",
        "--probe-interval-seconds",
        &interval,
    ];
    testing::process::Connectors::start(
        &common::connectors_binary(),
        &args,
        &[
            ("KUBECONFIG", kubeconfig.to_str().expect("a UTF-8 path")),
            ("CONNECTORS_POD_NAME", identity),
        ],
        "controller health endpoints listening",
    )
    .expect("the controller starts")
}

/// Status writes of Connectors the API server has answered so far.
fn status_writes(api: &FakeApiServer) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.contains("/connectors/") && r.path.ends_with("/status"))
        .count()
}

/// Events posted so far.
fn events_posted(api: &FakeApiServer) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/events"))
        .count()
}

/// The connectors whose status says Ready, read through the API.
fn ready_connectors(apiserver: &tokio::runtime::Runtime, api: &FakeApiServer) -> usize {
    apiserver.block_on(async {
        let connectors: kube::Api<connector::Connector> = kube::Api::all(api.client());
        connectors.list(&Default::default()).await.map_or(0, |list| {
            list.items
                .iter()
                .filter(|c| {
                    c.status
                        .as_ref()
                        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .count()
        })
    })
}

struct ControllerRow {
    connectors: u32,
    /// Whether each connector references a Secret (one watch each).
    secrets: bool,
    /// First start: until every connector is Ready.
    converged: Duration,
    first_probes: usize,
    first_writes: usize,
    first_events: usize,
    first_peak_probes: usize,
    /// A restart: what the next `RESTART_WINDOW` costs.
    restart_probes: usize,
    restart_peak_probes: usize,
    restart_writes: usize,
    restart_cpu_percent: f64,
    rss_mib: f64,
    peak_rss_mib: f64,
    fds: usize,
    sync_mib: f64,
}

/// The busiest second's count of `times`.
fn peak_per_second(times: &[Instant], since: Instant) -> usize {
    let mut buckets = std::collections::HashMap::<u64, usize>::new();
    for time in times {
        *buckets.entry(time.duration_since(since).as_secs()).or_default() += 1;
    }
    buckets.into_values().max().unwrap_or(0)
}

fn controller_row(apiserver: &tokio::runtime::Runtime, connectors: u32, secrets: bool) -> ControllerRow {
    use testing::apiserver::CONTROLLER_RESOURCES;
    let api = apiserver.block_on(FakeApiServer::start(&CONTROLLER_RESOURCES));
    let target = ProbeTarget::start(apiserver, !secrets);
    controller_cluster(&api, connectors, secrets, &target);
    let dir = tempfile::tempdir().expect("a temporary directory");

    // First start: nothing has a status yet; every connector is probed.
    let started = Instant::now();
    let bytes_before = api.bytes_served();
    let first = start_controller(&api, "controller-a", dir.path());
    let deadline = Duration::from_secs(900);
    // NB: each connector's first status is one write; the list that checks
    // they say Ready comes after, so its bytes are not counted as read.
    while status_writes(&api) < connectors as usize {
        assert!(started.elapsed() < deadline, "the connectors were never probed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let converged = started.elapsed();
    let sync_mib = mib(api.bytes_served().saturating_sub(bytes_before));
    assert_eq!(
        ready_connectors(apiserver, &api),
        connectors as usize,
        "every connector is Ready"
    );
    let first_probes = target.since(started);
    let first_writes = status_writes(&api);
    let first_events = events_posted(&api);
    let (_, rss) = common::memory(first.pid());
    first.terminate();
    let mut first = first;
    let _ = first.wait_exit(Duration::from_secs(30));

    // A restart (a new leader): the statuses are current.
    let writes_before = status_writes(&api);
    let restarted = Instant::now();
    let second = start_controller(&api, "controller-b", dir.path());
    let cpu_before = common::cpu_seconds(&[second.pid().to_string()]);
    let mut peak_rss = 0;
    while restarted.elapsed() < RESTART_WINDOW {
        std::thread::sleep(Duration::from_millis(500));
        peak_rss = peak_rss.max(common::memory(second.pid()).0);
    }
    let restart_cpu_percent =
        (common::cpu_seconds(&[second.pid().to_string()]) - cpu_before) / restarted.elapsed().as_secs_f64() * 100.0;
    let restart_probes = target.since(restarted);
    let row = ControllerRow {
        connectors,
        secrets,
        converged,
        first_probes: first_probes.len(),
        first_writes,
        first_events,
        first_peak_probes: peak_per_second(&first_probes, started),
        restart_probes: restart_probes.len(),
        restart_peak_probes: peak_per_second(&restart_probes, restarted),
        restart_writes: status_writes(&api) - writes_before,
        restart_cpu_percent,
        rss_mib: mib(rss),
        peak_rss_mib: mib(peak_rss),
        fds: common::open_fds(second.pid()),
        sync_mib,
    };
    drop(second);
    row
}

fn controller_part(apiserver: &tokio::runtime::Runtime, quick: bool) -> String {
    let sizes: &[(u32, bool)] = if quick {
        &[(1_000, true)]
    } else {
        &[(1_000, true), (10_000, true), (10_000, false)]
    };
    let mut report = format!(
        "## Controller: probes and status writes as connectors grow\n\n\
         The release `connectors controller` (its own process; probe interval\n\
         {PROBE_INTERVAL_SECONDS} s, the default) against the fake API server holding that many\n\
         Connectors, one per namespace, each with its basic-auth Secret (the last\n\
         row: anonymous connectors, no Secret, to show what the Secrets cost), all\n\
         pointing at one loopback `/v2/` that accepts the credential (the probe's\n\
         target, which records each authenticated probe).\n\n\
         First start: no connector has a status; until all are Ready (probes,\n\
         the busiest second's probes, status writes, Events, memory once converged, bytes\n\
         read from the API). Restart: the controller stops gracefully and a new\n\
         replica takes the Lease; for the next {} s: probes, the busiest\n\
         second, status writes, CPU (% of one core), peak memory and open file\n\
         descriptors (its API connections).\n\n\
         | connectors | Secrets | converged | probes | peak /s | writes | events | memory (MiB) | read (MiB) | restart: probes | peak /s | writes | CPU | peak memory (MiB) | fds |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        RESTART_WINDOW.as_secs(),
    );
    for &(connectors, secrets) in sizes {
        let row = controller_row(apiserver, connectors, secrets);
        eprintln!(
            "controller, {connectors} connectors: converged in {:?}, {} probes, {} writes; restart: {} probes (peak {}/s), {} writes, {:.1} MiB peak, {} fds",
            row.converged,
            row.first_probes,
            row.first_writes,
            row.restart_probes,
            row.restart_peak_probes,
            row.restart_writes,
            row.peak_rss_mib,
            row.fds
        );
        report.push_str(&format!(
            "| {} | {} | {:.1} s | {} | {} | {} | {} | {:.1} | {:.1} | {} | {} | {} | {:.1}% | {:.1} | {} |\n",
            row.connectors,
            if row.secrets { "yes" } else { "none" },
            row.converged.as_secs_f64(),
            row.first_probes,
            row.first_peak_probes,
            row.first_writes,
            row.first_events,
            row.rss_mib,
            row.sync_mib,
            row.restart_probes,
            row.restart_peak_probes,
            row.restart_writes,
            row.restart_cpu_percent,
            row.peak_rss_mib,
            row.fds,
        ));
    }
    report
}

// ---- CSI plugin: every pod of a full node publishing at once ----

/// Pods on a full node (the kubelet's default `maxPods`).
const PODS_PER_NODE: usize = 110;

/// The inline volume request the kubelet sends for pod `i`.
/// The publish kubelet sends for pod `app-{i}` of ServiceAccount `builder`
/// in `namespace`, whose volume names `harbor` and `hub`; the pod's token
/// is `token` and its UID `uid` (made up when not given).
fn csi_publish_request(
    target: &std::path::Path,
    i: usize,
    namespace: &str,
    token: Option<&str>,
    uid: Option<&str>,
) -> csi::proto::NodePublishVolumeRequest {
    let token = token.map_or_else(|| format!("pod-token-{i}"), str::to_owned);
    let uid = uid.map_or_else(|| format!("2b0c7f9e-0000-4000-8000-{i:012}"), str::to_owned);
    let context: std::collections::HashMap<String, String> = [
        ("csi.storage.k8s.io/ephemeral", "true".to_owned()),
        ("csi.storage.k8s.io/pod.name", format!("app-{i}")),
        ("csi.storage.k8s.io/pod.namespace", namespace.to_owned()),
        ("csi.storage.k8s.io/pod.uid", uid),
        ("csi.storage.k8s.io/serviceAccount.name", "builder".to_owned()),
        (
            "csi.storage.k8s.io/serviceAccount.tokens",
            json!({"connectors-proxy": {"token": token, "expirationTimestamp": "2030-01-01T00:00:00Z"}}).to_string(),
        ),
        ("connectors", "harbor,hub".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    csi::client::inline_volume_request(&format!("csi-{i:08x}"), &target.to_string_lossy(), context)
}

struct CsiRound {
    publish: Histogram<u64>,
    unpublish: Histogram<u64>,
    wall: Duration,
    failures: usize,
}

/// `PODS_PER_NODE` publishes at once (each on a connection of its own, as
/// kubelet's pod workers call), then as many unpublishes.
fn csi_round(
    runtime: &tokio::runtime::Runtime,
    socket: &std::path::Path,
    dir: &std::path::Path,
    round: usize,
    at_once: bool,
    request: &dyn Fn(&std::path::Path, usize) -> csi::proto::NodePublishVolumeRequest,
) -> CsiRound {
    use csi::proto::NodeUnpublishVolumeRequest;
    use csi::proto::node_client::NodeClient;
    runtime.block_on(async {
        let targets: Vec<std::path::PathBuf> = (0..PODS_PER_NODE)
            .map(|i| {
                dir.join(format!(
                    "round-{round}/pod-{i}/volumes/kubernetes.io~csi/connectors/mount"
                ))
            })
            .collect();
        for target in &targets {
            std::fs::create_dir_all(target.parent().expect("a parent")).expect("the pod directory");
        }
        let mut clients = Vec::new();
        for _ in 0..PODS_PER_NODE {
            let channel = csi::client::connect_unix(socket.to_owned(), Duration::from_secs(20))
                .await
                .expect("the plugin's socket");
            clients.push(NodeClient::new(channel));
        }
        let started = Instant::now();
        let publishes = clients.iter().zip(&targets).enumerate().map(|(i, (client, target))| {
            let mut client = client.clone();
            let request = request(target, i);
            async move {
                let started = Instant::now();
                let result = tokio::time::timeout(Duration::from_secs(30), client.node_publish_volume(request)).await;
                (started.elapsed(), matches!(result, Ok(Ok(_))))
            }
        });
        let published = if at_once {
            futures::future::join_all(publishes).await
        } else {
            let mut results = Vec::new();
            for publish in publishes {
                results.push(publish.await);
            }
            results
        };
        let wall = started.elapsed();
        let unpublishes = clients.iter().zip(&targets).enumerate().map(|(i, (client, target))| {
            let mut client = client.clone();
            let request = NodeUnpublishVolumeRequest {
                volume_id: format!("csi-{i:08x}"),
                target_path: target.to_string_lossy().into_owned(),
            };
            async move {
                let started = Instant::now();
                let result = tokio::time::timeout(Duration::from_secs(30), client.node_unpublish_volume(request)).await;
                (started.elapsed(), matches!(result, Ok(Ok(_))))
            }
        });
        let unpublished = futures::future::join_all(unpublishes).await;
        let mut publish = Histogram::<u64>::new(3).expect("a histogram");
        let mut unpublish = Histogram::<u64>::new(3).expect("a histogram");
        let mut failures = 0;
        for (histogram, results) in [(&mut publish, &published), (&mut unpublish, &unpublished)] {
            for (took, ok) in results {
                let _ = histogram.record(took.as_micros().max(1) as u64);
                failures += usize::from(!ok);
            }
        }
        CsiRound {
            publish,
            unpublish,
            wall,
            failures,
        }
    })
}

/// Starts the release `connectors csi` with its files in `dir` (a proxy CA,
/// its socket), with the store file `store` or, without one, cluster mode
/// through `kubeconfig`; returns it and its socket.
fn start_csi_plugin(
    dir: &std::path::Path,
    store: Option<&std::path::Path>,
    kubeconfig: Option<&std::path::Path>,
) -> (testing::process::Connectors, std::path::PathBuf) {
    let ca =
        certs::CertificateAuthority::generate("connectors scale bench CA", Duration::from_secs(3600)).expect("a CA");
    let ca_path = dir.join("proxy-ca.crt");
    std::fs::write(&ca_path, ca.cert_pem()).expect("the CA is written");
    let socket = dir.join("plugins/connectors-csi/csi.sock");
    let endpoint = format!("unix://{}", socket.display());
    let utf8 = |path: &std::path::Path| path.to_str().expect("a UTF-8 path").to_owned();
    let mut args: Vec<String> = [
        "csi",
        "--endpoint",
        &endpoint,
        "--node-id",
        "node-a",
        "--proxy-ca",
        &utf8(&ca_path),
        "--proxy-address",
        "10.96.0.5:443",
        "--forward-proxy",
        "10.96.0.5:3128",
        "--health-listen",
        "127.0.0.1:0",
    ]
    .map(str::to_owned)
    .to_vec();
    if let Some(store) = store {
        args.extend(["--store".to_owned(), utf8(store)]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, String)> = kubeconfig.map(|k| ("KUBECONFIG", utf8(k))).into_iter().collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let plugin = testing::process::Connectors::start(
        &common::connectors_binary(),
        &args,
        &env,
        "csi health and metrics endpoint listening",
    )
    .expect("the plugin starts");
    (plugin, socket)
}

/// The plugin in cluster mode against the fake holding `connectors`
/// Connectors (one per namespace) besides the two the volumes name: until
/// its Identity probe says ready, then a round of publishes at once and
/// the same round again.
fn csi_cluster_row(apiserver: &tokio::runtime::Runtime, runtime: &tokio::runtime::Runtime, connectors: u32) -> String {
    use testing::apiserver::{CONNECTOR_CLASSES, NAMESPACES, Review};
    let api = apiserver.block_on(FakeApiServer::start(&[CONNECTORS, CONNECTOR_CLASSES, NAMESPACES, PODS]));
    for class in connector::class::built_in() {
        api.apply(
            CONNECTOR_CLASSES,
            serde_json::to_value(class).expect("a class serialises"),
        );
    }
    for i in 0..connectors {
        let namespace = format!("team-{i}");
        api.apply(NAMESPACES, namespace_object(&namespace, json!({})));
        api.apply(
            CONNECTORS,
            connector_object(&namespace, "harbor", &format!("https://harbor-{}.example.com", i % 100)),
        );
    }
    api.apply(NAMESPACES, namespace_object(LISTED, json!({})));
    api.apply(
        CONNECTORS,
        connector_object(LISTED, "harbor", "https://harbor.example.com"),
    );
    let mut hub = connector_object(LISTED, "hub", "https://registry-1.docker.io");
    hub["spec"]["connectorClassName"] = json!("oci");
    api.apply(CONNECTORS, hub);
    api.set_reviewer(Review::SubjectAccess, |_| json!({"allowed": true}));
    std::thread::sleep(Duration::from_millis(500));

    let dir = tempfile::tempdir().expect("a temporary directory");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig("csi-token")).expect("the kubeconfig is written");
    // The publishing pods exist, as they do when kubelet publishes.
    let uids: Vec<String> = (0..PODS_PER_NODE)
        .map(|i| testing::apiserver::assigned_uid(api.apply(PODS, csi_pod(LISTED, i))))
        .collect();
    let bytes_before = api.bytes_served();
    let request =
        |target: &std::path::Path, i: usize| csi_publish_request(target, i, LISTED, None, Some(uids[i].as_str()));
    let run = csi_cluster_run(
        runtime,
        dir.path(),
        &kubeconfig,
        &request,
        &|| Some(api.bytes_served().saturating_sub(bytes_before)),
        &|| Some(api.open_watches(CONNECTORS)),
    );
    csi_cluster_line(&connectors.saturating_add(2).to_string(), &run)
}

/// Pod `app-{i}` of `namespace`, run by ServiceAccount `builder`, with
/// the inline volume it publishes.
fn csi_pod(namespace: &str, i: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": format!("app-{i}"), "namespace": namespace},
        "spec": {
            "serviceAccountName": "builder",
            "containers": [{"name": "app", "image": "registry.example/app:1",
                            "volumeMounts": [{"name": "proxyconfig", "mountPath": "/opt/connectors"}]}],
            "volumes": [{"name": "proxyconfig", "csi": {"driver": "connectors-csi", "readOnly": true,
                                                        "volumeAttributes": {"connectors": "harbor,hub"}}}],
        },
    })
}

/// One plugin in cluster mode, measured: until ready, then two rounds of
/// publishes at once.
struct CsiClusterRun {
    ready: Duration,
    ready_mib: f64,
    /// Bytes the API server sent it, to ready plus 2 s, where counted.
    read_to_ready: Option<u64>,
    first: CsiRound,
    again: CsiRound,
    /// Its Connector watches at the end, where counted.
    watches: Option<usize>,
    after_mib: f64,
    read_in_all: Option<u64>,
}

/// Starts the release plugin in cluster mode through `kubeconfig`; waits
/// until its Identity probe says ready; then a round of `request`s at once
/// and the same round again. `read` and `watches` count what the API
/// server can tell.
fn csi_cluster_run(
    runtime: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    kubeconfig: &std::path::Path,
    request: &dyn Fn(&std::path::Path, usize) -> csi::proto::NodePublishVolumeRequest,
    read: &dyn Fn() -> Option<u64>,
    watches: &dyn Fn() -> Option<usize>,
) -> CsiClusterRun {
    let started = Instant::now();
    let (plugin, socket) = start_csi_plugin(dir, None, Some(kubeconfig));
    let ready = runtime.block_on(async {
        use csi::proto::identity_client::IdentityClient;
        loop {
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "the plugin never became ready"
            );
            if let Ok(channel) = csi::client::connect_unix(socket.clone(), Duration::from_secs(5)).await {
                let probe = IdentityClient::new(channel).probe(csi::proto::ProbeRequest {}).await;
                if probe.is_ok_and(|answer| answer.into_inner().ready == Some(true)) {
                    return started.elapsed();
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // NB: what it reads once ready, as the lists a store makes arrive.
    std::thread::sleep(Duration::from_secs(2));
    let ready_mib = mib(common::memory(plugin.pid()).1);
    let read_to_ready = read();
    let first = csi_round(runtime, &socket, dir, 0, true, request);
    let again = csi_round(runtime, &socket, dir, 1, true, request);
    let run = CsiClusterRun {
        ready,
        ready_mib,
        read_to_ready,
        first,
        again,
        watches: watches(),
        after_mib: mib(common::memory(plugin.pid()).1),
        read_in_all: read(),
    };
    drop(plugin);
    eprintln!(
        "csi, cluster mode: ready {:?}, {:.1} MiB; first round p99 {} ms, again p99 {} ms, {} failed",
        run.ready,
        run.ready_mib,
        csi_millis(&run.first.publish, 0.99),
        csi_millis(&run.again.publish, 0.99),
        run.first.failures + run.again.failures,
    );
    run
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn csi_millis(histogram: &Histogram<u64>, quantile: f64) -> String {
    format!("{:.1}", histogram.value_at_quantile(quantile) as f64 / 1000.0)
}

/// A row of the CSI cluster-mode tables; what was not counted is `—`.
fn csi_cluster_line(connectors: &str, run: &CsiClusterRun) -> String {
    let counted = |value: Option<String>| value.unwrap_or_else(|| "—".to_owned());
    format!(
        "| {connectors} | {:.2} s | {:.1} | {} | {} / {} | {} / {} | {} | {} | {:.1} | {} |\n",
        run.ready.as_secs_f64(),
        run.ready_mib,
        counted(run.read_to_ready.map(|b| format!("{:.2}", mib(b)))),
        csi_millis(&run.first.publish, 0.5),
        csi_millis(&run.first.publish, 0.99),
        csi_millis(&run.again.publish, 0.5),
        csi_millis(&run.again.publish, 0.99),
        run.first.failures + run.again.failures,
        counted(run.watches.map(|w| w.to_string())),
        run.after_mib,
        counted(run.read_in_all.map(|b| format!("{:.2}", mib(b)))),
    )
}

fn csi_part(apiserver: &tokio::runtime::Runtime, quick: bool) -> String {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = dir.path().join("store.yaml");
    std::fs::write(&store, small_store_yaml()).expect("the store is written");
    let (plugin, socket) = start_csi_plugin(dir.path(), Some(&store), None);
    let rounds = if quick { 3 } else { 10 };
    let mut publish = Histogram::<u64>::new(3).expect("a histogram");
    let mut unpublish = Histogram::<u64>::new(3).expect("a histogram");
    let mut walls = Vec::new();
    let mut failures = 0;
    let request = |target: &std::path::Path, i: usize| csi_publish_request(target, i, LISTED, None, None);
    let alone = csi_round(&runtime, &socket, dir.path(), rounds, false, &request);
    for round in 0..rounds {
        let result = csi_round(&runtime, &socket, dir.path(), round, true, &request);
        publish.add(&result.publish).expect("histograms add");
        unpublish.add(&result.unpublish).expect("histograms add");
        walls.push(result.wall.as_secs_f64() * 1000.0);
        failures += result.failures;
    }
    let (peak, _) = common::memory(plugin.pid());
    // The plugin's own time per publish (authorize, render, write), from
    // its metrics: what is not queueing for the machine's two cores.
    let metrics = plugin
        .addr()
        .map(|health| runtime.block_on(scrape(&format!("http://{health}/metrics"))))
        .unwrap_or_default();
    let metric = |name: &str| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let own_ms = metric("connectors_csi_publish_duration_seconds_sum") * 1000.0
        / metric("connectors_csi_publish_duration_seconds_count").max(1.0);
    drop(plugin);
    let millis = csi_millis;
    eprintln!(
        "csi: {rounds} rounds of {PODS_PER_NODE}: publish p50 {} ms p99 {} ms max {} ms, {failures} failed",
        millis(&publish, 0.5),
        millis(&publish, 0.99),
        millis(&publish, 1.0)
    );
    format!(
        "## CSI plugin: a full node's pods publishing at once\n\n\
         The release `connectors csi` (its own process, store from a file: in\n\
         cluster mode each publish adds one SubjectAccessReview) gets\n\
         {PODS_PER_NODE} `NodePublishVolume` calls at once, one per pod (each its own\n\
         connection and target, two connectors each; the volume a tmpfs of its\n\
         own with the client configuration rendered into it), then as many\n\
         `NodeUnpublishVolume`; {rounds} rounds. Latency per call in ms, as the\n\
         kubelet sees it (a gRPC connection per call, as it makes); wall: from the\n\
         first call to the last answer of a round (median). First row: the same\n\
         {PODS_PER_NODE} calls one after another. Own time: the plugin's mean time per\n\
         publish from its `connectors_csi_publish_duration_seconds` (authorize,\n\
         render, write), over all rows.\n\n\
         | calls | publish p50 | p99 | max | unpublish p50 | p99 | max | wall (ms) | failed | own time (ms) | peak memory (MiB) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n\
         | {} one at a time | {} | {} | {} | {} | {} | {} | {:.0} | {} | — | — |\n\
         | {} at once | {} | {} | {} | {} | {} | {} | {:.0} | {failures} | {own_ms:.2} | {:.1} |\n",
        alone.publish.len(),
        millis(&alone.publish, 0.5),
        millis(&alone.publish, 0.99),
        millis(&alone.publish, 1.0),
        millis(&alone.unpublish, 0.5),
        millis(&alone.unpublish, 0.99),
        millis(&alone.unpublish, 1.0),
        alone.wall.as_secs_f64() * 1000.0,
        alone.failures,
        publish.len(),
        millis(&publish, 0.5),
        millis(&publish, 0.99),
        millis(&publish, 1.0),
        millis(&unpublish, 0.5),
        millis(&unpublish, 0.99),
        millis(&unpublish, 1.0),
        common::median(&walls),
        peak as f64 / (1024.0 * 1024.0),
    ) + &csi_cluster_part(apiserver, &runtime, quick)
}

fn csi_cluster_part(apiserver: &tokio::runtime::Runtime, runtime: &tokio::runtime::Runtime, quick: bool) -> String {
    let sizes: &[u32] = if quick { &[1_000] } else { &[1_000, 10_000] };
    let mut report = format!(
        "\nIn cluster mode against the fake holding that many Connectors (one per\n\
         namespace; the volumes name two of them): ready is the plugin's Identity\n\
         probe answering ready; then {PODS_PER_NODE} publishes at once (each a\n\
         SubjectAccessReview and a Pod read, answered by the fake), and the same\n\
         again. Read: bytes the fake sent the plugin, to ready plus 2 s, and in\n\
         all. Watches: the plugin's Connector watches open at the end.\n\n\
         | connectors | ready | memory at ready (MiB) | read to ready (MiB) | first round p50 / p99 (ms) | again p50 / p99 (ms) | failed | Connector watches | memory after (MiB) | read in all (MiB) |\n\
         |---|---|---|---|---|---|---|---|---|---|\n"
    );
    for &connectors in sizes {
        report.push_str(&csi_cluster_row(apiserver, runtime, connectors));
    }
    report
}

/// The body of a plain HTTP GET of `url` (empty when it fails).
async fn scrape(url: &str) -> String {
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return String::new();
    };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let answer = async {
        let response = client.get(uri).await.ok()?;
        let body = http_body_util::BodyExt::collect(response.into_body()).await.ok()?;
        Some(String::from_utf8_lossy(&body.to_bytes()).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
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
/// named [`COMPONENT_THREAD`]) with the client `client` makes (on that
/// runtime), once the API server has settled, and waits until `synced` says
/// so; `served` counts the bytes the API server has sent.
fn start_component<T>(
    client: impl FnOnce() -> kube::Client,
    served: impl Fn() -> u64,
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
    let bytes_before = served();
    let started = Instant::now();
    let component = {
        let _entered = runtime.enter();
        spawn(client())
    };
    while !synced(&component) {
        assert!(started.elapsed() < Duration::from_secs(600), "never synced");
        std::thread::sleep(Duration::from_millis(5));
    }
    let ready = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let cost = Synced {
        ready,
        rss_mib: mib(rss().saturating_sub(before)),
        sync_mib: mib(served().saturating_sub(bytes_before)),
    };
    (component, runtime, cost)
}

/// The parts, by name, in the order they are written.
const PARTS: &[&str] = &["identities", "real", "proxy", "webhook", "controller", "csi"];

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
         the smaller sizes). The identities and the webhook's store run on a tokio\n\
         runtime of their own beside the fake API server's, in the benchmark's\n\
         process; the proxy, the controller and the CSI plugin run as the release\n\
         binary, each a process of its own. On this machine (2 cores).\n\n",
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
            "real" => real_part(&apiserver),
            "proxy" => proxy_part(&apiserver, quick),
            "webhook" => webhook_part(&apiserver, quick),
            "controller" => controller_part(&apiserver, quick),
            "csi" => csi_part(&apiserver, quick),
            _ => unreachable!("every part is matched"),
        };
        new.push((*name, text));
    }
    write_report(&new);
}
