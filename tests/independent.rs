//! Independent checks of the mutation over the real-world fixtures: Python's
//! `jsonpatch` (strict RFC 6902) applies the patches `connectors mutate`
//! prints, the result must equal the manifest it prints, and every patched
//! pod must pass kubernetes-validate in strict mode. The tools come from
//! `.ci/install`; without them this test fails and says so.

mod support;

use std::path::PathBuf;
use std::process::Command;

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

#[test]
fn the_install_renders_with_kustomize_and_validates_strictly() {
    let python = venv_python();
    let output = Command::new("kubectl")
        .args(["kustomize", "manifests"])
        .current_dir(support::root())
        .output()
        .expect("kubectl is installed (bash .ci/install)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rendered = String::from_utf8(output.stdout).unwrap();
    let kinds: Vec<String> = connector::yaml::parse_documents(&rendered)
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_owned())
        .collect();
    for kind in [
        "CustomResourceDefinition",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "MutatingWebhookConfiguration",
        "ClusterRole",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
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
