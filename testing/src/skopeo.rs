//! skopeo as a real registry client: copy (push and pull), inspect and
//! list-tags, each bounded by a timeout after which skopeo is killed.
//!
//! Every run is isolated from the machine: a private `HOME`,
//! `XDG_RUNTIME_DIR` and `TMPDIR` (so no user auth file is read), a private
//! accept-anything signature policy and an empty registries.conf, and no
//! proxy variables unless a test passes them in [`CopyOptions::env`].

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::process::Command;

use crate::program::{self, MissingProgram};

/// How long one skopeo run may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Variables removed from skopeo's environment unless a test sets them.
const SCRUBBED_ENV: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "REGISTRY_AUTH_FILE",
    "DOCKER_CONFIG",
    "CONTAINERS_REGISTRIES_CONF",
    "CONTAINERS_CONF",
    "XDG_CONFIG_HOME",
];

/// Why a skopeo run failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// skopeo is not installed.
    #[error(transparent)]
    MissingProgram(#[from] MissingProgram),
    /// The private directory or a file in it could not be written.
    #[error("failed to prepare skopeo's private directory: {0}")]
    Setup(#[source] std::io::Error),
    /// skopeo could not be started.
    #[error("failed to run {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// skopeo ran longer than its timeout and was killed.
    #[error("{command} did not finish within {after:?} and was killed")]
    TimedOut {
        /// The command line.
        command: String,
        /// The timeout.
        after: Duration,
    },
    /// skopeo exited unsuccessfully.
    #[error("{0}")]
    Failed(Box<Output>),
    /// skopeo succeeded but printed something unexpected.
    #[error("{command} printed unexpected output: {message}")]
    Unexpected {
        /// The command line.
        command: String,
        /// What is wrong.
        message: String,
    },
}

impl Error {
    /// What skopeo printed on stderr, when it ran and failed.
    pub fn stderr(&self) -> &str {
        match self {
            Error::Failed(output) => &output.stderr,
            _ => "",
        }
    }
}

/// Result of a skopeo run.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A finished skopeo run.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command line, for messages (credentials masked).
    pub command: String,
    /// The exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} exited with {} after {:?}",
            self.command, self.status, self.elapsed
        )?;
        if !self.stderr.is_empty() {
            write!(f, "; stderr:\n{}", self.stderr.trim_end())?;
        }
        Ok(())
    }
}

/// How skopeo reaches one registry (the source or the destination).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryAccess {
    /// `user:password` to log in with, if any.
    pub creds: Option<(String, String)>,
    /// Whether TLS is required and verified. `false` also allows plain HTTP,
    /// which skopeo needs even for 127.0.0.1.
    pub tls_verify: bool,
    /// A directory whose `*.crt` files are the trusted CAs (and `*.cert`
    /// with `*.key` a client certificate).
    pub cert_dir: Option<PathBuf>,
}

impl Default for RegistryAccess {
    fn default() -> Self {
        Self {
            creds: None,
            tls_verify: true,
            cert_dir: None,
        }
    }
}

impl RegistryAccess {
    /// Plain HTTP (or unverified HTTPS), no credentials.
    pub fn plain_http() -> Self {
        Self {
            tls_verify: false,
            ..Self::default()
        }
    }

    /// Verified HTTPS trusting the CAs in `cert_dir`, no credentials.
    pub fn https(cert_dir: &Path) -> Self {
        Self {
            cert_dir: Some(cert_dir.to_owned()),
            ..Self::default()
        }
    }

    /// Logs in as `user`.
    pub fn creds(mut self, user: &str, password: &str) -> Self {
        self.creds = Some((user.to_owned(), password.to_owned()));
        self
    }

    fn args(&self, prefix: &str, args: &mut Vec<OsString>) {
        if let Some((user, password)) = &self.creds {
            args.push(format!("--{prefix}creds").into());
            args.push(format!("{user}:{password}").into());
        }
        args.push(format!("--{prefix}tls-verify={}", self.tls_verify).into());
        if let Some(cert_dir) = &self.cert_dir {
            args.push(format!("--{prefix}cert-dir").into());
            args.push(cert_dir.into());
        }
    }
}

/// Options of `skopeo copy`.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// How to reach the source (ignored for `oci:` sources).
    pub src: RegistryAccess,
    /// How to reach the destination (ignored for `oci:` destinations).
    pub dest: RegistryAccess,
    /// `--all`: copy every image of an index, keeping the index digest.
    pub all: bool,
    /// `--preserve-digests`: fail rather than change a manifest.
    pub preserve_digests: bool,
    /// Extra environment, e.g. `HTTPS_PROXY` or `SSL_CERT_FILE`.
    pub env: Vec<(String, String)>,
    /// Extra arguments placed before the two references.
    pub extra_args: Vec<String>,
}

impl CopyOptions {
    /// Sets how to reach the source.
    pub fn src(mut self, access: RegistryAccess) -> Self {
        self.src = access;
        self
    }

    /// Sets how to reach the destination.
    pub fn dest(mut self, access: RegistryAccess) -> Self {
        self.dest = access;
        self
    }

    /// Copies all images of an index.
    pub fn all(mut self) -> Self {
        self.all = true;
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// Options of `skopeo inspect` and `skopeo list-tags`.
#[derive(Debug, Clone, Default)]
pub struct InspectOptions {
    /// How to reach the registry.
    pub access: RegistryAccess,
    /// Extra environment, e.g. `HTTPS_PROXY`.
    pub env: Vec<(String, String)>,
}

impl From<RegistryAccess> for InspectOptions {
    fn from(access: RegistryAccess) -> Self {
        Self {
            access,
            env: Vec::new(),
        }
    }
}

impl InspectOptions {
    /// Adds an environment variable.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// The skopeo program with a private, throwaway configuration.
pub struct Skopeo {
    program: PathBuf,
    dir: TempDir,
    timeout: Duration,
}

impl Skopeo {
    /// Finds skopeo (failing with the install hint if it is missing) and
    /// writes its private policy and registries.conf.
    pub fn new() -> Result<Self> {
        let program = program::find("skopeo")?;
        let dir = tempfile::tempdir().map_err(Error::Setup)?;
        for sub in ["home", "run", "tmp"] {
            std::fs::create_dir_all(dir.path().join(sub)).map_err(Error::Setup)?;
        }
        std::fs::write(
            dir.path().join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .map_err(Error::Setup)?;
        std::fs::write(dir.path().join("registries.conf"), "").map_err(Error::Setup)?;
        Ok(Self {
            program,
            dir,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Changes how long one run may take before it is killed.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `skopeo copy <src> <dst>`, e.g. from `oci:DIR:TAG` to
    /// `docker://HOST:PORT/REPO:TAG`.
    pub async fn copy(&self, src: &str, dst: &str, options: &CopyOptions) -> Result<Output> {
        let mut args: Vec<OsString> = vec!["copy".into()];
        options.src.args("src-", &mut args);
        options.dest.args("dest-", &mut args);
        if options.all {
            args.push("--all".into());
        }
        if options.preserve_digests {
            args.push("--preserve-digests".into());
        }
        args.extend(options.extra_args.iter().map(OsString::from));
        args.push(src.into());
        args.push(dst.into());
        self.run_ok(args, &options.env).await
    }

    /// `skopeo inspect <reference>` as JSON (the platform's image of an
    /// index, with its config).
    pub async fn inspect(&self, reference: &str, options: &InspectOptions) -> Result<serde_json::Value> {
        let output = self.inspect_args(reference, options, &[]).await?;
        serde_json::from_str(&output.stdout).map_err(|error| Error::Unexpected {
            command: output.command.clone(),
            message: format!("not JSON: {error}"),
        })
    }

    /// `skopeo inspect --raw <reference>`: the top-level manifest (or index)
    /// exactly as served, so its sha256 is the image digest.
    pub async fn inspect_raw(&self, reference: &str, options: &InspectOptions) -> Result<Vec<u8>> {
        Ok(self
            .inspect_args(reference, options, &["--raw"])
            .await?
            .stdout
            .into_bytes())
    }

    /// `skopeo list-tags <docker://HOST:PORT/REPO>`.
    pub async fn list_tags(&self, repository: &str, options: &InspectOptions) -> Result<Vec<String>> {
        let mut args: Vec<OsString> = vec!["list-tags".into()];
        options.access.args("", &mut args);
        args.push(repository.into());
        let output = self.run_ok(args, &options.env).await?;
        let listing: serde_json::Value = serde_json::from_str(&output.stdout).map_err(|error| Error::Unexpected {
            command: output.command.clone(),
            message: format!("not JSON: {error}"),
        })?;
        Ok(listing["Tags"]
            .as_array()
            .map(|tags| tags.iter().filter_map(|tag| tag.as_str().map(str::to_owned)).collect())
            .unwrap_or_default())
    }

    async fn inspect_args(&self, reference: &str, options: &InspectOptions, extra: &[&str]) -> Result<Output> {
        let mut args: Vec<OsString> = vec!["inspect".into()];
        options.access.args("", &mut args);
        args.extend(extra.iter().map(OsString::from));
        args.push(reference.into());
        self.run_ok(args, &options.env).await
    }

    async fn run_ok(&self, args: Vec<OsString>, env: &[(String, String)]) -> Result<Output> {
        let output = self.run(args, env).await?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(Error::Failed(Box::new(output)))
        }
    }

    /// Runs skopeo with `args` (after the private global options) and
    /// `env`; a non-zero exit is not an error here.
    pub async fn run(&self, args: Vec<OsString>, env: &[(String, String)]) -> Result<Output> {
        let dir = self.dir.path();
        let mut command = Command::new(&self.program);
        command
            .arg("--policy")
            .arg(dir.join("policy.json"))
            .arg("--registries-conf")
            .arg(dir.join("registries.conf"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for name in SCRUBBED_ENV {
            command.env_remove(name);
        }
        command
            .env("HOME", dir.join("home"))
            .env("XDG_RUNTIME_DIR", dir.join("run"))
            .env("TMPDIR", dir.join("tmp"));
        for (name, value) in env {
            command.env(name, value);
        }
        let printable = printable_command(&args);
        let started = Instant::now();
        let child = command.spawn().map_err(|source| Error::Spawn {
            command: printable.clone(),
            source,
        })?;
        // NB: on timeout the future, and with it the child, is dropped:
        // kill_on_drop SIGKILLs skopeo.
        let output = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| Error::TimedOut {
                command: printable.clone(),
                after: self.timeout,
            })?
            .map_err(|source| Error::Spawn {
                command: printable.clone(),
                source,
            })?;
        Ok(Output {
            command: printable,
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            elapsed: started.elapsed(),
        })
    }
}

/// `skopeo ARGS…` with the values of `--*creds` masked.
fn printable_command(args: &[OsString]) -> String {
    let mut words = vec!["skopeo".to_owned()];
    let mut mask_next = false;
    for arg in args {
        let arg = arg.to_string_lossy();
        if mask_next {
            let user = arg.split_once(':').map_or("", |(user, _)| user);
            words.push(format!("{user}:***"));
        } else {
            words.push(arg.clone().into_owned());
        }
        mask_next = arg.ends_with("creds");
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_commands_hide_passwords() {
        let mut args: Vec<OsString> = vec!["copy".into()];
        RegistryAccess::plain_http()
            .creds("u", "secret")
            .args("dest-", &mut args);
        let printed = printable_command(&args);
        assert_eq!(printed, "skopeo copy --dest-creds u:*** --dest-tls-verify=false");
    }
}
