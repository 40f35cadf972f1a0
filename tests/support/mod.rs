//! Test support for whole-system tests: starting the `connectors` binary as a
//! process on loopback and reading the address it bound from its JSON logs.

#![allow(dead_code)]

pub mod csi;
pub mod scripted;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use testing::process::Connectors;

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_connectors")
}

/// A running `connectors` process, killed on drop; its stderr (JSON logs) is
/// collected for assertions. The launcher is `testing::process`, shared
/// with the benchmarks.
pub struct Process(Connectors);

impl std::ops::Deref for Process {
    type Target = Connectors;

    fn deref(&self) -> &Connectors {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Connectors {
        &mut self.0
    }
}

impl Process {
    /// Starts `connectors <args>` with JSON logs and waits (bounded) until a
    /// log line with message `ready_message` carries an `addr` field.
    pub fn start(args: &[&str], ready_message: &str) -> (Self, SocketAddr) {
        Self::start_with_env(args, &[], ready_message)
    }

    /// As [`Process::start`], with extra environment variables (such as
    /// `KUBECONFIG`) for the process.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)], ready_message: &str) -> (Self, SocketAddr) {
        let process = Self::start_until_with_env(args, env, ready_message);
        match process.addr() {
            Some(addr) => (process, addr),
            None => panic!("the line {ready_message:?} has no address: {}", process.log_text()),
        }
    }

    /// Starts `connectors <args>` with JSON logs and waits (bounded) until a
    /// log line with message `ready_message` appears, for servers with no
    /// TCP address (the CSI plugin's unix socket).
    pub fn start_until(args: &[&str], ready_message: &str) -> Self {
        Self::start_until_with_env(args, &[], ready_message)
    }

    /// As [`Process::start_until`], with extra environment variables.
    pub fn start_until_with_env(args: &[&str], env: &[(&str, &str)], ready_message: &str) -> Self {
        match Connectors::start(Path::new(binary()), args, env, ready_message) {
            Ok(process) => Self(process),
            Err(error) => panic!("{error}"),
        }
    }
}

/// Runs `connectors <args>` to completion with `stdin`, returning (status,
/// stdout, stderr).
pub fn run(args: &[&str], stdin: Option<&str>, cwd: &Path) -> (std::process::ExitStatus, String, String) {
    use std::io::Write;
    let mut child = Command::new(binary())
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let output = child.wait_with_output().unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// An HTTPS client that trusts only `ca_pem` and resolves `webhook.test` to
/// `addr`, for the webhook's end-to-end tests.
pub fn webhook_client(ca_pem: &str, addr: SocketAddr) -> reqwest::Client {
    let roots = certs::root_store_from_pem(ca_pem).unwrap();
    let tls = certs::client_config(roots, &[b"h2", b"http/1.1"]).unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .resolve("webhook.test", addr)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Runs podman with private storage (vfs, no systemd) and no proxy settings
/// but `env`'s, bounded in time.
pub async fn podman(root: &Path, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let binary = testing::program::find("podman").expect("podman is installed (bash .ci/install)");
    let mut command = tokio::process::Command::new(binary);
    command
        .arg("--root")
        .arg(root.join("storage"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ])
        .args(args)
        .env("HOME", root)
        .env("XDG_RUNTIME_DIR", root.join("xdg"))
        .env("REGISTRY_AUTH_FILE", root.join("auth.json"))
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .envs(env.iter().copied())
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(180), command.output())
        .await
        .expect("podman finished in time")
        .unwrap()
}

/// The text of a source file before its in-file test module.
pub fn production_text(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// The `.rs` files below `dir`, sorted.
pub fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// A Connector of `namespace` called `name` with `spec` (flow YAML).
pub fn connector_yaml(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: connectors.alauda.io/v1alpha1\nkind: Connector\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
    )
}

/// `cargo metadata --no-deps` of the workspace, as JSON.
pub fn workspace_metadata() -> serde_json::Value {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON")
}

/// Applies a Connector `bad` with `spec` in `namespace` and checks that the
/// API server refuses it with a message containing `reason`.
pub fn assert_connector_refused(cluster: &testing::cluster::RealCluster, namespace: &str, spec: &str, reason: &str) {
    let output = cluster.kubectl(&["apply", "-f", "-"], Some(&connector_yaml(namespace, "bad", spec)));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "accepted: {spec}");
    assert!(stderr.contains(reason), "{spec}: {stderr}");
}
