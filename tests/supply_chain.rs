//! The supply chain, checked: every crate of the workspace's dependency graph
//! (normal, build and dev dependencies) passes deny.toml's license
//! allow-list, its bans (no wildcard requirements, no banned crate; a
//! duplicate deny.toml does not explain only warns) and its source policy
//! (crates.io only), as cargo-deny judges them. cargo-deny is pinned and
//! installed by `bash .ci/install`; a missing one fails the test. Advisories
//! need the RustSec database, which CI cannot fetch: deny.toml says how to
//! check them where it can be had.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where .ci/install pins the version, as `cargo_deny_version=X.Y.Z`.
const INSTALL_SCRIPT: &str = ".ci/install";

/// Where .ci/install builds its Rust tools, relative to the workspace root.
const TOOLS_BIN: &str = "target/ci-tools/bin";

/// Longer than any check takes (a second or two here, plus `cargo metadata`
/// fetching the manifests of other platforms' crates on a fresh machine).
const CHECK_TIMEOUT: Duration = Duration::from_secs(600);

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The cargo-deny version .ci/install installs.
fn pinned_version() -> String {
    let script = std::fs::read_to_string(workspace_root().join(INSTALL_SCRIPT)).expect("read .ci/install");
    script
        .lines()
        .find_map(|line| line.trim().strip_prefix("cargo_deny_version="))
        .unwrap_or_else(|| panic!("{INSTALL_SCRIPT} pins no cargo_deny_version="))
        .trim()
        .to_owned()
}

/// cargo-deny at the pinned version, looked for where .ci/install looks:
/// target/ci-tools/bin, then PATH.
fn cargo_deny(version: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let candidates = std::iter::once(workspace_root().join(TOOLS_BIN))
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join("cargo-deny"));
    let mut found = Vec::new();
    for candidate in candidates.filter(|candidate| candidate.is_file()) {
        let printed = Command::new(&candidate)
            .arg("--version")
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
            .unwrap_or_default();
        if printed == format!("cargo-deny {version}") {
            return candidate;
        }
        found.push(format!("{} ({printed})", candidate.display()));
    }
    panic!(
        "cargo-deny {version} is not installed (looked in {TOOLS_BIN} and on PATH{}); run `bash .ci/install`",
        if found.is_empty() {
            String::new()
        } else {
            format!(", found only {}", found.join(", "))
        }
    );
}

/// Runs `command` to its end, or kills it after `timeout`.
fn run_bounded(command: &mut Command, timeout: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cargo-deny starts");
    // NB: cargo-deny writes its report to stderr, which can outgrow a pipe's
    // buffer; both pipes are read while it runs.
    let stdout = drain(child.stdout.take().expect("stdout is piped"));
    let stderr = drain(child.stderr.take().expect("stderr is piped"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for cargo-deny") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cargo-deny did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

#[test]
fn dependencies_pass_the_license_ban_and_source_policy() {
    let cargo_deny = cargo_deny(&pinned_version());
    let output = run_bounded(
        Command::new(&cargo_deny)
            .args(["--locked", "--color", "never", "check", "licenses", "bans", "sources"])
            .current_dir(workspace_root()),
        CHECK_TIMEOUT,
    );
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "`cargo deny --locked check licenses bans sources` failed ({}); fix the graph or explain the finding in deny.toml:\n{report}",
        output.status
    );
    // Warnings (a new duplicate, a skip that no longer matches) do not fail
    // the check, but show with --nocapture.
    eprintln!("{report}");
}
