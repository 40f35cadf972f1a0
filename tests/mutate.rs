//! `connectors mutate`: the README's first command, over files and stdin.

mod support;

use serde_json::Value;

#[test]
fn mutate_prints_the_example_job_with_its_images_rewritten() {
    let (status, stdout, stderr) = support::run(
        &["mutate", "--store", "examples/store.yaml", "-f", "examples/job.yaml"],
        None,
        support::root(),
    );
    assert!(status.success(), "{stderr}");
    let job = connector::yaml::parse_documents(&stdout).unwrap().remove(0);
    let spec = &job["spec"]["template"]["spec"];
    assert_eq!(
        spec["initContainers"][0]["image"],
        "127.0.0.1:7480/namespaces/team-a/connectors/dockerhub/library/busybox:1.36"
    );
    assert!(
        spec["containers"][0]["image"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:7480/namespaces/team-a/connectors/harbor/tools/skopeo:v1.16@sha256:")
    );
    assert_eq!(spec["containers"][1]["image"], "quay.io/prometheus/busybox:latest");
    assert_eq!(spec["volumes"][0]["csi"]["driver"], "connectors-csi");
    assert!(!stdout.contains("change-me"), "the credential never appears in output");
}

#[test]
fn mutate_reads_stdin_honours_namespace_and_prints_patches() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: a, image: harbor.example.com/x/y:1}]\n";
    let args = [
        "mutate",
        "--store",
        "examples/store.yaml",
        "-f",
        "-",
        "-n",
        "team-a",
        "--patch",
        "--pull-address",
        "10.96.0.9",
    ];
    let (status, stdout, stderr) = support::run(&args, Some(pod), support::root());
    assert!(status.success(), "{stderr}");
    let patches: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(patches[0]["kind"], "Pod");
    assert_eq!(patches[0]["namespace"], "team-a");
    let ops = patches[0]["patch"].as_array().unwrap();
    assert!(ops.iter().any(|op| op["path"] == "/spec/containers/0/image"
        && op["value"] == "10.96.0.9/namespaces/team-a/connectors/harbor/x/y:1"));

    // Without -n the pod is in `default`, which is not opted in: nothing changes.
    let (status, stdout, _) = support::run(&args[..5], Some(pod), support::root());
    assert!(status.success());
    assert!(stdout.contains("image: harbor.example.com/x/y:1"));
}

#[test]
fn mutate_fails_clearly_on_an_unknown_connector_or_bad_input() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: team-a, annotations: {connectors.cpaas.io/connector: ghost}}\nspec: {containers: [{name: a, image: x}]}\n";
    let (status, stdout, stderr) = support::run(
        &["mutate", "--store", "examples/store.yaml", "-f", "-"],
        Some(pod),
        support::root(),
    );
    assert_eq!(status.code(), Some(3), "a denied pod exits 3: {stderr}");
    assert!(stdout.is_empty(), "nothing half-mutated is printed");
    assert!(
        stderr.contains("Pod team-a/p: connector team-a/ghost does not exist"),
        "{stderr}"
    );

    let (status, _, stderr) = support::run(
        &["mutate", "--store", "examples/store.yaml", "-f", "-"],
        Some("kind: [broken"),
        support::root(),
    );
    assert_eq!(status.code(), Some(1), "bad input exits 1: {stderr}");
    assert!(stderr.contains("not valid YAML"), "{stderr}");

    let (status, _, stderr) = support::run(
        &["mutate", "--store", "missing.yaml", "-f", "-"],
        Some(""),
        support::root(),
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("missing.yaml"), "{stderr}");

    let (status, _, stderr) = support::run(&["mutate", "--no-such-flag"], None, support::root());
    assert_eq!(status.code(), Some(2), "a usage error exits 2: {stderr}");
}

#[test]
fn mutate_reads_yaml_as_kubectl_and_passes_what_it_does_not_select_through_byte_for_byte() {
    // A Helm-rendered shape: YAML 1.1 octal modes and booleans, comments,
    // flow style, a document that is not a pod.
    let untouched = "# Source: chart/templates/configmap.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}   # keep me\ndata:\n  enabled: \"yes\"\n";
    let unselected = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: other\n  namespace: default\nspec:\n  template:\n    spec:\n      automountServiceAccountToken: no\n      containers: [{name: a, image: harbor.example.com/x/y:1}]\n      volumes:\n        - name: scripts\n          configMap: {name: scripts, defaultMode: 0755}\n";
    let selected = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: team-a}\nspec:\n  enableServiceLinks: off\n  containers: [{name: a, image: harbor.example.com/x/y:1}]\n  volumes:\n    - name: scripts\n      configMap: {name: scripts, defaultMode: 0755}\n";
    let manifest = format!("{untouched}---\n{unselected}---\n{selected}");
    let (status, stdout, stderr) = support::run(
        &["mutate", "--store", "examples/store.yaml", "-f", "-"],
        Some(&manifest),
        support::root(),
    );
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.starts_with(&format!("{untouched}---\n{unselected}---\n")),
        "documents not selected come back as they were:\n{stdout}"
    );
    let documents = connector::yaml::parse_documents(&stdout).unwrap();
    let pod = &documents[2];
    assert!(
        pod["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .contains("/namespaces/team-a/connectors/harbor/x/y:1")
    );
    // Every value it had keeps its meaning: 0755 is octal, off is false.
    assert_eq!(pod["spec"]["volumes"][0]["configMap"]["defaultMode"], 493);
    assert_eq!(pod["spec"]["enableServiceLinks"], false);
    assert!(!stdout.contains("755.0"), "{stdout}");
}
