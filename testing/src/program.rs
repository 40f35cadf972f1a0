//! Finds the third-party programs the harness runs, and says how to install
//! them when one is missing: tests fail loudly instead of skipping.

use std::env;
use std::path::PathBuf;

/// The one command that installs every program the harness runs.
pub const INSTALL_HINT: &str = "run `bash .ci/install` (it installs docker-registry, skopeo and apache2-utils)";

/// A program the harness needs is not on `PATH`.
#[derive(Debug, thiserror::Error)]
#[error("{name} is not installed or not on PATH: {INSTALL_HINT}")]
pub struct MissingProgram {
    /// The program's file name, e.g. `docker-registry`.
    pub name: String,
}

/// The full path of `name` on `PATH`, or in the sbin directories a
/// non-root `PATH` may lack.
pub fn find(name: &str) -> Result<PathBuf, MissingProgram> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| MissingProgram { name: name.to_owned() })
}

/// A Go tool pinned in `e2e/tools/go.mod` (`package`, e.g.
/// `github.com/google/go-containerregistry/cmd/crane`), built statically
/// into `target/e2e/<name>` when missing or older than the module's
/// `go.sum`. Panics with the build's output when it fails.
pub fn go_tool(package: &str) -> PathBuf {
    go_tool_in("e2e/tools", package)
}

/// Helm, pinned in `e2e/helm/go.mod` (a module of its own: its Kubernetes
/// modules are not the other tools'), built into `target/e2e/helm`.
pub fn helm() -> PathBuf {
    go_tool_in("e2e/helm", "helm.sh/helm/v4/cmd/helm")
}

/// A Go tool pinned in the module at `module` (relative to the workspace),
/// built as [`go_tool`] does.
pub fn go_tool_in(module: &str, package: &str) -> PathBuf {
    let root = crate::cluster::workspace_root();
    let module = root.join(module);
    let name = package.rsplit('/').next().expect("a package path");
    let binary = root.join("target/e2e").join(name);
    let modified = |path: &std::path::Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    // NB: tests running side by side may want the same tool; one builds it.
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _building = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    if modified(&binary) < modified(&module.join("go.sum")) {
        let output = std::process::Command::new("go")
            .args(["build", "-trimpath", "-o"])
            .arg(&binary)
            .arg(package)
            .current_dir(&module)
            .env("CGO_ENABLED", "0")
            .output()
            .expect("go runs (the e2e tools are built with Go 1.26 or newer)");
        assert!(
            output.status.success(),
            "building {package} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    binary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_error_names_the_install_script() {
        let error = find("definitely-not-an-installed-program").unwrap_err();
        assert!(error.to_string().contains("bash .ci/install"), "{error}");
    }
}
