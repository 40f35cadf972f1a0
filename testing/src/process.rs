//! The `connectors` binary as a child process: started with JSON logs and
//! no inherited `CONNECTORS_*` variables, ready once it logs a given
//! message (bounded wait), its log lines kept for assertions, killed and
//! reaped on drop. The one launcher of the whole-system tests and the
//! benchmarks.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long the binary may take to become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the binary did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connectors did not log {message:?} within {START_TIMEOUT:?}; its logs: {logs:?}")]
    NotReady { message: String, logs: Vec<String> },
}

/// A running `connectors` process.
pub struct Connectors {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    ready: serde_json::Value,
}

impl Connectors {
    /// Runs `binary args --log-format json` with `env` added and waits for
    /// the log line whose message is `ready_message`.
    pub fn start<A: AsRef<OsStr>>(
        binary: &Path,
        args: &[A],
        env: &[(&str, &str)],
        ready_message: &str,
    ) -> Result<Self, StartError> {
        let mut command = Command::new(binary);
        command
            .args(args)
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // NB: every flag has a CONNECTORS_* variable; the caller sets its own.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CONNECTORS_") {
                command.env_remove(name);
            }
        }
        command.envs(env.iter().copied());
        let mut child = command.spawn().map_err(|source| StartError::Spawn {
            binary: binary.display().to_string(),
            source,
        })?;
        let stderr = child.stderr.take().expect("stderr is piped");
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
                    logs.lock().unwrap_or_else(PoisonError::into_inner).push(line);
                }
            });
        }
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(ready) => Ok(Self { child, logs, ready }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(StartError::NotReady {
                    message: ready_message.to_owned(),
                    logs: logs.lock().unwrap_or_else(PoisonError::into_inner).clone(),
                })
            }
        }
    }

    /// The `addr` field of the ready line, if it has one.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.ready["fields"]["addr"].as_str()?.parse().ok()
    }

    /// The process id, for reading `/proc/<pid>/…`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every log line (JSON) the process wrote so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// All log lines so far, joined.
    pub fn log_text(&self) -> String {
        self.logs().join("\n")
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
}

impl Drop for Connectors {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
