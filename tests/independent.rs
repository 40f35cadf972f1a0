//! Independent checks of the mutation over the real-world fixtures: Python's
//! `jsonpatch` (strict RFC 6902) applies the patches `connectors mutate`
//! prints, the result must equal the manifest it prints, and every patched
//! pod must pass kubernetes-validate in strict mode. The same validator and
//! `kubectl kustomize` check the install in `manifests/`, whose flags must
//! be ones the binary accepts. The tools come from `.ci/install`; without
//! them these tests fail and say so.

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

const STORE: &str = include_str!("fixtures/fixture-store.yaml");

fn venv_python() -> PathBuf {
    let python = support::root().join("target/ci-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash .ci/install` to install the independent validators",
        python.display()
    );
    python
}

#[test]
fn python_jsonpatch_and_kubernetes_validate_accept_every_mutated_fixture() {
    let python = venv_python();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.yaml");
    std::fs::write(&store, STORE).unwrap();
    let proxy_ca = certs::CertificateAuthority::generate("fixture CA", std::time::Duration::from_secs(3600)).unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, proxy_ca.cert_pem()).unwrap();
    let fixtures = support::root().join("tests/fixtures/manifests");
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for manifest in entries
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let common = [
            "mutate",
            "--store",
            store.to_str().unwrap(),
            "-n",
            "default",
            "--proxy-ca",
            ca_file.to_str().unwrap(),
            "--api-server",
            "10.96.0.1",
            "--no-proxy-cidr",
            "10.96.0.0/12,10.244.0.0/16",
            "-f",
            manifest.to_str().unwrap(),
        ];
        let (status, mutated, stderr) = support::run(&common, None, support::root());
        assert!(status.success(), "{}: {stderr}", manifest.display());
        let mut with_patch = common.to_vec();
        with_patch.push("--patch");
        let (status, patches, stderr) = support::run(&with_patch, None, support::root());
        assert!(status.success(), "{}: {stderr}", manifest.display());
        let mutated_file = dir.path().join("mutated.yaml");
        let patches_file = dir.path().join("patches.json");
        std::fs::write(&mutated_file, mutated).unwrap();
        std::fs::write(&patches_file, patches).unwrap();
        let output = Command::new(&python)
            .arg(support::root().join("tests/tools/check_patches.py"))
            .args([&manifest, &patches_file, &mutated_file])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}:\n{stdout}\n{}",
            manifest.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        checked += stdout.lines().filter(|l| l.starts_with("ok ")).count();
    }
    assert_eq!(checked, 24, "every workload of the fixtures was checked");
}

/// `kubectl kustomize manifests`: the install as it is applied, as text.
fn render_install_text() -> String {
    let output = Command::new("kubectl")
        .args(["kustomize", "manifests"])
        .current_dir(support::root())
        .output()
        .expect("kubectl is installed (bash .ci/install)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// The rendered install, one JSON value per object.
fn render_install() -> Vec<Value> {
    connector::yaml::parse_documents(&render_install_text()).unwrap()
}

/// `Kind/namespace/name`, for messages.
fn object_name(object: &Value) -> String {
    format!(
        "{}/{}/{}",
        object["kind"].as_str().unwrap_or("?"),
        object["metadata"]["namespace"].as_str().unwrap_or(""),
        object["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The containers of a workload's pod template (init containers included).
fn containers(workload: &Value) -> impl Iterator<Item = &Value> {
    let spec = &workload["spec"]["template"]["spec"];
    ["initContainers", "containers"]
        .into_iter()
        .filter_map(|field| spec[field].as_array())
        .flatten()
}

/// Whether `image` is the connectors image, as the `images:` entry of the
/// kustomization renders it (or as written before it is rendered).
fn is_connectors_image(image: &str) -> bool {
    let without_digest = image.split('@').next().unwrap();
    let last = without_digest.rsplit('/').next().unwrap();
    last.split(':').next().unwrap() == "connectors"
}

#[test]
fn the_install_renders_with_kustomize_and_validates_strictly() {
    let python = venv_python();
    let rendered = render_install_text();
    let objects = connector::yaml::parse_documents(&rendered).unwrap();
    let kinds: Vec<String> = objects.iter().map(|d| d["kind"].as_str().unwrap().to_owned()).collect();
    for kind in [
        "Namespace",
        "CustomResourceDefinition",
        "ConfigMap",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "DaemonSet",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "CSIDriver",
        "MutatingWebhookConfiguration",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
    for (kind, name) in [
        ("Deployment", "connectors-controller"),
        ("Deployment", "connectors-proxy"),
        ("Deployment", "connectors-webhook"),
        ("DaemonSet", "connectors-csi"),
        ("CSIDriver", "connectors-csi"),
        ("Service", "connectors-proxy"),
        ("Service", "connectors-webhook"),
        ("ServiceAccount", "connectors-controller"),
        ("ServiceAccount", "connectors-proxy"),
        ("ServiceAccount", "connectors-webhook"),
        ("ServiceAccount", "connectors-csi"),
        ("ClusterRole", "connectors-user"),
        ("ClusterRole", "connectors-admin"),
        ("ClusterRole", "connectors-view"),
    ] {
        assert!(
            objects
                .iter()
                .any(|o| o["kind"] == kind && o["metadata"]["name"] == name),
            "{kind} {name} is in the install"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &rendered).unwrap();
    let validate = python.with_file_name("kubernetes-validate");
    let output = Command::new(validate)
        .args(["-k", "1.33.0", "--strict"])
        .arg(&file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    assert_eq!(text.matches("passed").count(), kinds.len(), "{text}");
}

/// A container of the install that runs the connectors binary.
struct ConnectorsContainer {
    /// `Kind/namespace/name container "name"`, for messages.
    location: String,
    subcommand: String,
    /// Every `--flag` of its args, without values.
    flags: Vec<String>,
    /// The environment variables it gets: `env` and the keys of the
    /// ConfigMaps in `envFrom`.
    env: Vec<String>,
}

/// Every container of the install whose image is the connectors image; the
/// first arg is the subcommand.
fn connectors_containers(objects: &[Value]) -> Vec<ConnectorsContainer> {
    let mut found = Vec::new();
    for object in objects {
        for container in containers(object) {
            if !container["image"].as_str().is_some_and(is_connectors_image) {
                continue;
            }
            let location = format!("{} container {}", object_name(object), container["name"]);
            let args: Vec<&str> = container["args"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let (subcommand, rest) = args
                .split_first()
                .unwrap_or_else(|| panic!("{location}: no subcommand in args"));
            assert!(
                !subcommand.starts_with('-'),
                "{location}: args start with the subcommand, not {subcommand}"
            );
            let flags = rest
                .iter()
                .filter(|a| a.starts_with("--"))
                .map(|a| a.split('=').next().unwrap().to_owned())
                .collect();
            let mut env: Vec<String> = container["env"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["name"].as_str().map(str::to_owned))
                .collect();
            for source in container["envFrom"].as_array().into_iter().flatten() {
                let Some(name) = source["configMapRef"]["name"].as_str() else {
                    continue;
                };
                let config_map = objects.iter().find(|o| {
                    o["kind"] == "ConfigMap"
                        && o["metadata"]["name"] == name
                        && o["metadata"]["namespace"] == object["metadata"]["namespace"]
                });
                let config_map =
                    config_map.unwrap_or_else(|| panic!("{location}: envFrom names {name}, not installed"));
                env.extend(
                    config_map["data"]
                        .as_object()
                        .into_iter()
                        .flat_map(|m| m.keys().cloned()),
                );
            }
            found.push(ConnectorsContainer {
                location,
                subcommand: (*subcommand).to_owned(),
                flags,
                env,
            });
        }
    }
    found
}

/// `connectors <subcommand> --help`, or why there is none.
fn subcommand_help(subcommand: &str) -> Result<String, String> {
    let (status, help, stderr) = support::run(&[subcommand, "--help"], None, support::root());
    if status.success() {
        Ok(help)
    } else {
        Err(format!("`connectors {subcommand}` does not exist: {}", stderr.trim()))
    }
}

/// Whether `flag` (`--name`) is a whole word of `help`: `--tls-cert` is not
/// satisfied by `--tls-cert-file`.
fn help_lists(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(at, _)| {
        let next = help[at + flag.len()..].chars().next();
        !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

#[test]
fn every_flag_in_the_manifests_is_one_the_binary_accepts() {
    let containers = connectors_containers(&render_install());
    for subcommand in ["controller", "proxy", "webhook", "csi"] {
        assert!(
            containers.iter().any(|c| c.subcommand == subcommand),
            "the install runs `connectors {subcommand}`"
        );
    }
    let mut unknown = Vec::new();
    for container in &containers {
        match subcommand_help(&container.subcommand) {
            Err(missing) => unknown.push(format!("{}: {missing}", container.location)),
            Ok(help) => unknown.extend(
                container
                    .flags
                    .iter()
                    .filter(|flag| !help_lists(&help, flag))
                    .map(|flag| {
                        format!(
                            "{}: `connectors {}` has no {flag}",
                            container.location, container.subcommand
                        )
                    }),
            ),
        }
    }
    assert!(
        unknown.is_empty(),
        "flags the binary does not accept:\n{}",
        unknown.join("\n")
    );
}

#[test]
fn every_required_flag_of_a_component_is_given_by_the_manifests() {
    // A flag clap requires (listed in the usage line) must be in the args or
    // in the environment as its `CONNECTORS_…` variable, or the pod exits
    // at start. Cluster mode needs no --store.
    let mut missing = Vec::new();
    for container in connectors_containers(&render_install()) {
        let Ok(help) = subcommand_help(&container.subcommand) else {
            continue; // reported by every_flag_in_the_manifests_is_one_the_binary_accepts
        };
        let usage = help.lines().find(|l| l.starts_with("Usage:")).unwrap_or_default();
        for required in usage.split_whitespace().filter(|w| w.starts_with("--")) {
            let variable = format!("CONNECTORS_{}", required[2..].replace('-', "_").to_uppercase());
            if !container.flags.iter().any(|f| f == required) && !container.env.contains(&variable) {
                missing.push(format!(
                    "{}: `connectors {}` requires {required} ({variable})",
                    container.location, container.subcommand
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "required flags the manifests do not give:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_deployment_is_redundant_probed_bounded_and_restricted() {
    let objects = render_install();
    let restricted: Vec<&str> = objects
        .iter()
        .filter(|o| o["kind"] == "Namespace")
        .filter(|o| o["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted")
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    assert!(
        restricted.contains(&"connectors-system"),
        "connectors-system is restricted"
    );
    let pdbs: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "PodDisruptionBudget").collect();
    let deployments: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "Deployment").collect();
    assert_eq!(deployments.len(), 3, "controller, proxy and webhook");
    let mut problems = Vec::new();
    for deployment in &deployments {
        let name = object_name(deployment);
        let namespace = deployment["metadata"]["namespace"].as_str().unwrap_or("");
        if deployment["spec"]["replicas"].as_u64().unwrap_or(1) < 2 {
            problems.push(format!("{name}: fewer than 2 replicas"));
        }
        let labels = &deployment["spec"]["template"]["metadata"]["labels"];
        let covered = pdbs.iter().any(|pdb| {
            pdb["metadata"]["namespace"] == namespace
                && pdb["spec"]["selector"]["matchLabels"]
                    .as_object()
                    .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &labels[k] == v))
        });
        if !covered {
            problems.push(format!("{name}: no PodDisruptionBudget selects its pods"));
        }
        let pod = &deployment["spec"]["template"]["spec"];
        if pod["topologySpreadConstraints"].as_array().is_none_or(Vec::is_empty) {
            problems.push(format!("{name}: no topology spread"));
        }
        for container in containers(deployment) {
            let where_ = format!("{name} container {}", container["name"]);
            for probe in ["readinessProbe", "livenessProbe"] {
                if !container[probe].is_object() {
                    problems.push(format!("{where_}: no {probe}"));
                }
            }
            for resource in ["cpu", "memory"] {
                if container["resources"]["requests"][resource].is_null() {
                    problems.push(format!("{where_}: no {resource} request"));
                }
            }
            if container["resources"]["limits"]["memory"].is_null() {
                problems.push(format!("{where_}: no memory limit"));
            }
            if restricted.contains(&namespace) {
                let security = &container["securityContext"];
                let non_root = security["runAsNonRoot"] == true
                    || (pod["securityContext"]["runAsNonRoot"] == true && security["runAsNonRoot"] != false);
                if !non_root {
                    problems.push(format!("{where_}: not runAsNonRoot in restricted {namespace}"));
                }
                if security["allowPrivilegeEscalation"] != false {
                    problems.push(format!("{where_}: allowPrivilegeEscalation is not false"));
                }
                if !security["capabilities"]["drop"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|c| c == "ALL"))
                {
                    problems.push(format!("{where_}: capabilities do not drop ALL"));
                }
                let seccomp = if security["seccompProfile"].is_object() {
                    &security["seccompProfile"]["type"]
                } else {
                    &pod["securityContext"]["seccompProfile"]["type"]
                };
                if seccomp != "RuntimeDefault" && seccomp != "Localhost" {
                    problems.push(format!("{where_}: no RuntimeDefault seccomp profile"));
                }
            }
        }
    }
    // Only the CSI plugin may be privileged, and only in its own namespace.
    for object in &objects {
        for container in containers(object) {
            if container["securityContext"]["privileged"] == true
                && !(object["kind"] == "DaemonSet" && object["metadata"]["namespace"] == "connectors-csi")
            {
                problems.push(format!(
                    "{} container {}: privileged",
                    object_name(object),
                    container["name"]
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_namespaced_object_names_one_of_the_install_namespaces() {
    // NB: the kustomization has no `namespace:` (it would move the CSI
    // plugin out of its privileged namespace), so each object names its own.
    let objects = render_install();
    let mut namespaces: Vec<&str> = objects
        .iter()
        .filter(|o| o["kind"] == "Namespace")
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    namespaces.sort_unstable();
    assert_eq!(namespaces, ["connectors-csi", "connectors-system"]);
    let cluster_scoped = [
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
        "CSIDriver",
    ];
    for object in &objects {
        let kind = object["kind"].as_str().unwrap();
        let namespace = object["metadata"]["namespace"].as_str();
        if cluster_scoped.contains(&kind) {
            assert_eq!(namespace, None, "{} is cluster-scoped", object_name(object));
        } else {
            assert!(
                namespace.is_some_and(|n| namespaces.contains(&n)),
                "{} names one of {namespaces:?}",
                object_name(object)
            );
        }
        for subject in object["subjects"].as_array().into_iter().flatten() {
            assert!(
                subject["namespace"].as_str().is_some_and(|n| namespaces.contains(&n)),
                "{}: subject {subject} is in the install",
                object_name(object)
            );
        }
    }
    // Only the CSI plugin's objects live in the privileged namespace.
    for object in objects
        .iter()
        .filter(|o| o["metadata"]["namespace"] == "connectors-csi")
    {
        let kind = object["kind"].as_str().unwrap();
        assert!(
            ["DaemonSet", "ServiceAccount", "ConfigMap", "Role", "RoleBinding"].contains(&kind),
            "{} does not belong in connectors-csi",
            object_name(object)
        );
    }
}
