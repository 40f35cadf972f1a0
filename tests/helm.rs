//! The Helm chart (`charts/connectors`): Helm's own lint passes, its defaults
//! render exactly the objects of the kustomize base (`manifests/`), every
//! setting has one place in its values, and values that cannot work are
//! refused with what to change. Helm and kustomize are the real programs
//! (Helm from `e2e/helm/go.mod`, kustomize inside the harness's kubectl).
//! The chart's install and upgrade on a cluster: `tests/node.rs`.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// Labels and annotations only Helm adds, and why each is there.
const HELM_ONLY_LABELS: &[&str] = &[
    // Which chart and which tool manage the object: Helm's convention.
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
];
const HELM_ONLY_ANNOTATIONS: &[&str] = &[
    // `helm uninstall` leaves the CRDs (and every Connector) in place.
    "helm.sh/resource-policy",
];

fn chart() -> PathBuf {
    support::root().join("charts/connectors")
}

/// Runs `program args`, returning stdout; panics with stderr on failure.
fn run(program: &std::path::Path, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(support::root())
        .output()
        .unwrap_or_else(|e| panic!("{} runs: {e}", program.display()));
    assert!(
        output.status.success(),
        "{} {args:?} failed: {}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// `helm template connectors charts/connectors ARGS`, as a result.
fn template(args: &[&str]) -> Result<String, String> {
    let helm = testing::program::helm();
    let chart = chart();
    let output = Command::new(&helm)
        .args(["template", "connectors"])
        .arg(&chart)
        .args(args)
        .output()
        .expect("helm runs");
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).expect("UTF-8 output"))
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// The rendered objects by (kind, namespace, name).
fn rendered_objects(text: &str) -> BTreeMap<(String, String, String), Value> {
    let mut objects = BTreeMap::new();
    for object in connector::yaml::parse_documents(text).expect("the rendering is YAML") {
        let key = |field: &str| object["metadata"][field].as_str().unwrap_or_default().to_owned();
        let id = (
            object["kind"].as_str().expect("a kind").to_owned(),
            key("namespace"),
            key("name"),
        );
        assert!(objects.insert(id.clone(), object).is_none(), "{id:?} is rendered twice");
    }
    objects
}

/// The object without what only Helm adds.
fn without_helm_metadata(mut object: Value) -> Value {
    let metadata = object["metadata"].as_object_mut().expect("metadata");
    for (field, keys) in [("labels", HELM_ONLY_LABELS), ("annotations", HELM_ONLY_ANNOTATIONS)] {
        if let Some(map) = metadata.get_mut(field).and_then(Value::as_object_mut) {
            for key in keys {
                map.remove(*key);
            }
            if map.is_empty() {
                metadata.remove(field);
            }
        }
    }
    object
}

/// Every string in `value`, with the path of keys that leads to it.
fn strings<'a>(value: &'a Value, path: &mut Vec<String>, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::String(text) => out.push((path.join("."), text)),
        Value::Array(items) => items.iter().for_each(|item| strings(item, path, out)),
        Value::Object(map) => {
            for (key, item) in map {
                path.push(key.clone());
                strings(item, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

#[test]
fn helm_lints_the_chart() {
    let helm = testing::program::helm();
    let chart = chart();
    let output = run(&helm, &["lint", "--strict", chart.to_str().unwrap()]);
    assert!(output.contains("1 chart(s) linted, 0 chart(s) failed"), "{output}");
}

#[test]
fn the_charts_defaults_render_the_kustomize_base_object_for_object() {
    let rendered = rendered_objects(&template(&[]).expect("the defaults render"));
    // Helm's hooks (the uninstall's drain) have no kustomize counterpart:
    // kustomize users run `connectors drain-volumes` themselves.
    let (hooks, helm): (BTreeMap<_, _>, BTreeMap<_, _>) = rendered
        .into_iter()
        .partition(|(_, object)| object["metadata"]["annotations"]["helm.sh/hook"].is_string());
    let hook_kinds: Vec<&str> = hooks.keys().map(|(kind, _, _)| kind.as_str()).collect();
    assert_eq!(
        hook_kinds,
        ["ClusterRole", "ClusterRoleBinding", "Job", "ServiceAccount"],
        "{hooks:?}"
    );
    for ((_, _, name), hook) in &hooks {
        assert_eq!(name, "connectors-uninstall");
        assert_eq!(hook["metadata"]["annotations"]["helm.sh/hook"], "pre-delete");
    }
    let build = std::env::temp_dir().join(format!("connectors-helm-{}", std::process::id()));
    let status = Command::new("bash")
        .arg(support::root().join("e2e/cluster"))
        .arg("build")
        .arg(&build)
        .status()
        .expect("bash runs e2e/cluster");
    assert!(
        status.success(),
        "building the harness failed (logs in {})",
        build.display()
    );
    let _ = std::fs::remove_dir_all(&build);
    let harness = std::env::var_os("E2E_HARNESS")
        .map(PathBuf::from)
        .unwrap_or_else(|| support::root().join("target/e2e/harness"));
    let kustomize = rendered_objects(&run(&harness, &["kubectl", "kustomize", "manifests"]));

    let helm_ids: Vec<_> = helm.keys().collect();
    let kustomize_ids: Vec<_> = kustomize.keys().collect();
    assert_eq!(
        helm_ids, kustomize_ids,
        "the chart and manifests/ render different objects"
    );
    assert!(helm.len() >= 40, "{} objects", helm.len());
    for (id, object) in helm {
        // Helm's own labels are on every object, and only those differ.
        for label in HELM_ONLY_LABELS {
            assert!(object["metadata"]["labels"][label].is_string(), "{id:?} lacks {label}");
        }
        let object = without_helm_metadata(object);
        assert!(
            object == kustomize[&id],
            "{id:?} differs:\nhelm: {}\nkustomize: {}",
            serde_json::to_string_pretty(&object).unwrap(),
            serde_json::to_string_pretty(&kustomize[&id]).unwrap()
        );
    }
}

#[test]
fn each_setting_has_one_place_in_the_values() {
    let rendered = template(&[
        "--set",
        "namespace=registry-access",
        "--set",
        "csiNamespace=registry-access-node",
        "--set",
        "csi.kubeletDir=/var/lib/k0s/kubelet",
        "--set",
        "clusterDomain=corp.internal",
        "--set",
        "image.repository=registry.example/mirror/connectors",
        "--set",
        "image.tag=v9.9.9",
        "--set",
        "pullAddress=127.0.0.1:7999",
    ])
    .expect("the values render");
    let objects = rendered_objects(&rendered);
    let mut found = Vec::new();
    for object in objects.values() {
        strings(object, &mut Vec::new(), &mut found);
    }
    for (path, text) in &found {
        // The namespaces, the kubelet directory, the image and the pull
        // port changed everywhere: no default is left.
        for default in ["connectors-system", "/var/lib/kubelet", "ghcr.io/connectors", "7480"] {
            assert!(!text.contains(default), "{path} still says {default}: {text}");
        }
        if path.ends_with("namespace") {
            assert!(
                *text == "registry-access" || *text == "registry-access-node",
                "{path} names namespace {text}"
            );
        }
    }
    let config = &objects[&("ConfigMap".into(), "registry-access".into(), "connectors-config".into())]["data"];
    assert_eq!(config["CONNECTORS_INSTALL_NAMESPACE"], "registry-access");
    assert_eq!(config["CONNECTORS_CSI_NAMESPACE"], "registry-access-node");
    assert_eq!(config["CONNECTORS_CLUSTER_DOMAIN"], "corp.internal");
    assert_eq!(
        config["CONNECTORS_PROXY_ADDRESS"],
        "connectors-proxy.registry-access.svc"
    );
    assert_eq!(
        config["CONNECTORS_NODE_PULLER"],
        "registry-access-node/connectors-node-pull"
    );
    assert_eq!(
        config,
        &objects[&(
            "ConfigMap".into(),
            "registry-access-node".into(),
            "connectors-config".into()
        )]["data"],
        "both namespaces get the same settings"
    );
    let webhook = &objects[&(
        "MutatingWebhookConfiguration".into(),
        String::new(),
        "connectors".into(),
    )];
    for entry in webhook["webhooks"].as_array().unwrap() {
        let excluded = &entry["namespaceSelector"]["matchExpressions"][1]["values"];
        assert_eq!(
            excluded,
            &serde_json::json!(["kube-system", "registry-access", "registry-access-node"])
        );
    }
    let csi = &objects[&(
        "DaemonSet".into(),
        "registry-access-node".into(),
        "connectors-csi".into(),
    )];
    let paths: Vec<&str> = csi["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "/var/lib/k0s/kubelet/plugins/connectors-csi",
            "/var/lib/k0s/kubelet/plugins_registry",
            "/var/lib/k0s/kubelet/pods"
        ]
    );
    let node_pull = &objects[&(
        "DaemonSet".into(),
        "registry-access-node".into(),
        "connectors-node-pull".into(),
    )];
    let probe = &node_pull["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"];
    assert_eq!(
        (&probe["host"], &probe["port"]),
        (&Value::from("127.0.0.1"), &Value::from(7999))
    );
    // The components take those settings from the ConfigMap alone: no
    // container argument repeats (and so silently overrides) one of them.
    for object in objects.values() {
        let Some(containers) = object["spec"]["template"]["spec"]["containers"].as_array() else {
            continue;
        };
        for argument in containers.iter().flat_map(|c| c["args"].as_array().unwrap()) {
            let argument = argument.as_str().unwrap();
            for flag in [
                "--namespace",
                "--csi-namespace",
                "--proxy-url",
                "--pull-address",
                "--cluster-domain",
            ] {
                assert!(!argument.starts_with(flag), "{argument} overrides connectors-config");
            }
        }
    }
}

#[test]
fn the_operational_values_reach_their_objects() {
    let rendered = template(&[
        "--set",
        "proxy.replicas=4",
        "--set",
        "proxy.priorityClassName=registry-path-critical",
        "--set",
        "webhook.failurePolicy=Ignore",
        "--set",
        "nodePull.podCredentials=require",
        "--set",
        "proxy.forwardTunnels=off",
        "--set",
        "webhook.tolerations[0].operator=Exists",
        "--set",
        "crds.keep=false",
        "--set",
        "podAnnotations.example\\.com/team=platform",
    ])
    .expect("the values render");
    let objects = rendered_objects(&rendered);
    let proxy = &objects[&(
        "Deployment".into(),
        "connectors-system".into(),
        "connectors-proxy".into(),
    )];
    assert_eq!(proxy["spec"]["replicas"], 4);
    assert_eq!(
        proxy["spec"]["template"]["spec"]["priorityClassName"],
        "registry-path-critical"
    );
    assert_eq!(
        proxy["spec"]["template"]["metadata"]["annotations"]["example.com/team"],
        "platform"
    );
    let webhook = &objects[&(
        "Deployment".into(),
        "connectors-system".into(),
        "connectors-webhook".into(),
    )];
    assert_eq!(
        webhook["spec"]["template"]["spec"]["tolerations"][0]["operator"],
        "Exists"
    );
    let configuration = &objects[&(
        "MutatingWebhookConfiguration".into(),
        String::new(),
        "connectors".into(),
    )];
    for entry in configuration["webhooks"].as_array().unwrap() {
        assert_eq!(entry["failurePolicy"], "Ignore");
    }
    let config = &objects[&(
        "ConfigMap".into(),
        "connectors-system".into(),
        "connectors-config".into(),
    )]["data"];
    assert_eq!(config["CONNECTORS_NODE_PULL_POD_CREDENTIALS"], "require");
    assert_eq!(config["CONNECTORS_FORWARD_TUNNELS"], "off");
    let crd = &objects[&(
        "CustomResourceDefinition".into(),
        String::new(),
        "connectors.connectors.alauda.io".into(),
    )];
    assert!(crd["metadata"]["annotations"]["helm.sh/resource-policy"].is_null());

    // Without the node pull endpoint: no DaemonSet, no node puller, and the
    // pull address is the proxy's pinned ClusterIP.
    let rendered = template(&[
        "--set",
        "nodePull.enabled=false",
        "--set",
        "pullAddress=10.96.100.100",
        "--set",
        "proxy.clusterIP=10.96.100.100",
    ])
    .expect("the values render");
    let objects = rendered_objects(&rendered);
    assert!(!objects.keys().any(|(_, _, name)| name == "connectors-node-pull"));
    let config = &objects[&(
        "ConfigMap".into(),
        "connectors-system".into(),
        "connectors-config".into(),
    )]["data"];
    assert_eq!(config["CONNECTORS_NODE_PULLER"], "");
    assert_eq!(config["CONNECTORS_PULL_ADDRESS"], "10.96.100.100");
    let service = &objects[&("Service".into(), "connectors-system".into(), "connectors-proxy".into())];
    assert_eq!(service["spec"]["clusterIP"], "10.96.100.100");
}

#[test]
fn values_that_cannot_work_are_refused_with_what_to_change() {
    for (values, says) in [
        (
            &["--set", "pullAddress=10.96.100.100:443"][..],
            "pullAddress 10.96.100.100:443: with nodePull.enabled images are pulled from the node pull endpoint",
        ),
        (
            &["--set", "nodePull.podCredentials=always"][..],
            "nodePull.podCredentials must be forward, require or ignore",
        ),
        (
            &["--set", "webhook.failurePolicy=fail"][..],
            "webhook.failurePolicy must be Fail or Ignore",
        ),
        (
            &["--set", "csiNamespace=connectors-system"][..],
            "namespace and csiNamespace must differ",
        ),
    ] {
        let error = template(values).expect_err("refused");
        assert!(error.contains(says), "{values:?}: {error}");
    }
}

#[test]
fn the_pod_monitors_scrape_named_metrics_ports_and_the_dashboard_ships_as_is() {
    let defaults = rendered_objects(&template(&[]).expect("the defaults render"));
    assert!(!defaults.keys().any(|(kind, _, _)| kind == "PodMonitor"));
    let rendered = template(&[
        "--set",
        "metrics.podMonitor.enabled=true",
        "--set",
        "metrics.podMonitor.labels.release=prometheus",
        "--set",
        "metrics.dashboard.enabled=true",
        "--set",
        "metrics.dashboard.namespace=monitoring",
    ])
    .expect("the values render");
    let objects = rendered_objects(&rendered);
    // Each named port a monitor scrapes, and the pods whose container has it.
    let mut ports: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ((kind, namespace, name), object) in &objects {
        if !matches!(kind.as_str(), "Deployment" | "DaemonSet") {
            continue;
        }
        for container in object["spec"]["template"]["spec"]["containers"].as_array().unwrap() {
            for port in container["ports"].as_array().into_iter().flatten() {
                ports
                    .entry(format!("{namespace}/{}", port["name"].as_str().unwrap()))
                    .or_default()
                    .push(name.clone());
            }
        }
    }
    let mut scraped = Vec::new();
    for ((kind, namespace, name), monitor) in &objects {
        if kind != "PodMonitor" {
            continue;
        }
        assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus", "{name}");
        // NB: a PodMonitor scrapes its port on every pod it selects: each
        // selects one component, whose workload must have the port.
        let component = monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} selects no single component"));
        let workload = format!("connectors-{component}");
        for endpoint in monitor["spec"]["podMetricsEndpoints"].as_array().unwrap() {
            let port = format!("{namespace}/{}", endpoint["port"].as_str().unwrap());
            let pods = ports
                .get(&port)
                .unwrap_or_else(|| panic!("{name} scrapes {port}, which no pod names"));
            assert!(
                pods.contains(&workload),
                "{name} scrapes {port}, which {workload} lacks"
            );
            assert_eq!(endpoint["path"], "/metrics");
            scraped.push(workload.clone());
        }
    }
    scraped.sort();
    scraped.dedup();
    assert_eq!(
        scraped,
        [
            "connectors-controller",
            "connectors-csi",
            "connectors-proxy",
            "connectors-webhook"
        ]
    );
    let dashboard = &objects[&("ConfigMap".into(), "monitoring".into(), "connectors-dashboard".into())];
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped = std::fs::read_to_string(chart().join("dashboards/connectors.json")).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(dashboard["data"]["connectors.json"].as_str().unwrap()).unwrap(),
        serde_json::from_str::<serde_json::Value>(&shipped).unwrap()
    );
}

/// The `major.minor` of the Kubernetes release a harness module builds.
fn release_of(module: &str) -> String {
    let go_mod = std::fs::read_to_string(support::root().join(module).join("go.mod")).unwrap();
    let version = go_mod
        .lines()
        .find_map(|line| line.trim().strip_prefix("k8s.io/kubernetes v"))
        .unwrap_or_else(|| panic!("{module}/go.mod requires no k8s.io/kubernetes"));
    version.splitn(3, '.').take(2).collect::<Vec<_>>().join(".")
}

#[test]
fn the_supported_kubernetes_range_is_the_one_the_tests_run() {
    let (oldest, newest) = (release_of("e2e/min"), release_of("e2e"));
    let chart = std::fs::read_to_string(chart().join("Chart.yaml")).unwrap();
    assert!(
        chart.contains(&format!("kubeVersion: \">={oldest}.0-0\"")),
        "Chart.yaml's kubeVersion is not the oldest tested release {oldest}"
    );
    let readme = std::fs::read_to_string(support::root().join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("Supported Kubernetes: **{oldest} to {newest}**")),
        "README does not state the tested range {oldest} to {newest}"
    );
}
