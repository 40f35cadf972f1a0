//! Test support for whole-system tests: starting the `connectors` binary as a
//! process on loopback and reading the address it bound from its JSON logs.

#![allow(dead_code)]

pub mod scripted;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_connectors")
}

/// A running `connectors` process, killed on drop; its stderr (JSON logs) is
/// collected for assertions.
pub struct Process {
    child: Child,
    pub logs: Arc<Mutex<Vec<String>>>,
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
        let (mut process, ready) = Self::spawn(args, env, ready_message);
        let addr = ready["fields"]["addr"]
            .as_str()
            .and_then(|a| a.parse::<SocketAddr>().ok());
        match addr {
            Some(addr) => (process, addr),
            None => {
                let _ = process.child.kill();
                panic!("the ready line has no address: {ready}");
            }
        }
    }

    /// Starts `connectors <args>` with JSON logs and waits (bounded) until a
    /// log line with message `ready_message` appears, for servers with no
    /// TCP address (the CSI plugin's unix socket).
    pub fn start_until(args: &[&str], ready_message: &str) -> Self {
        Self::spawn(args, &[], ready_message).0
    }

    /// As [`Process::start_until`], with extra environment variables.
    pub fn start_until_with_env(args: &[&str], env: &[(&str, &str)], ready_message: &str) -> Self {
        Self::spawn(args, env, ready_message).0
    }

    /// Starts the process and returns it with the first log line whose
    /// message is `ready_message` (waiting at most 20 s).
    fn spawn(args: &[&str], env: &[(&str, &str)], ready_message: &str) -> (Self, serde_json::Value) {
        let mut child = Command::new(binary())
            .args(args)
            .envs(env.iter().copied())
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the connectors binary starts");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let logs = logs.clone();
            let ready_message = ready_message.to_owned();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line)
                        && entry["fields"]["message"] == ready_message.as_str()
                    {
                        let _ = tx.send(entry);
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(ready) => (Self { child, logs }, ready),
            Err(_) => {
                let _ = child.kill();
                panic!("connectors did not become ready: {:?}", logs.lock().unwrap());
            }
        }
    }

    /// Waits (bounded) for the process to exit and returns its status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// The process id, for reading `/proc/<pid>/…`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// All log lines so far, joined.
    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// Fails if `text` holds the registry password or its Basic credential.
pub fn assert_no_credential(text: &str, what: &str, user: &str, password: &str) {
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    assert!(!text.contains(password), "the registry password appears in {what}");
    assert!(!text.contains(&basic), "the Basic credential appears in {what}");
}
