//! The command line as the ecosystem expects it: `RUST_LOG` beside
//! `CONNECTORS_LOG` (which wins), `-v` counts, and exit codes that tell a
//! usage error (2) from a failure (1) from a "no" (3, in tests/mutate.rs).

mod support;

use std::process::{Command, Stdio};

/// Runs `connectors mutate` over an empty manifest with `env`; (exit
/// code, stderr).
fn mutate_with(env: &[(&str, &str)], extra: &[&str]) -> (Option<i32>, String) {
    let mut command = Command::new(support::binary());
    command
        .args(["mutate", "--store", "examples/store.yaml", "-f", "examples/job.yaml"])
        .args(extra)
        .current_dir(support::root())
        .env_remove("RUST_LOG")
        .env_remove("CONNECTORS_LOG")
        .env_remove("CONNECTORS_VERBOSE")
        .stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_log_filter_comes_from_connectors_log_else_rust_log_and_a_bad_one_is_named() {
    let (code, stderr) = mutate_with(&[("RUST_LOG", "=[not a filter")], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(r#"RUST_LOG="=[not a filter" is not a log filter"#),
        "{stderr}"
    );

    // CONNECTORS_LOG is read first: a bad one is named and RUST_LOG used.
    let (code, stderr) = mutate_with(&[("CONNECTORS_LOG", "=[bad"), ("RUST_LOG", "warn")], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("CONNECTORS_LOG="), "{stderr}");
    assert!(!stderr.contains("RUST_LOG="), "{stderr}");

    let (code, stderr) = mutate_with(&[("RUST_LOG", "info")], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("not a log filter"), "{stderr}");
}

#[test]
fn verbosity_counts_and_old_boolean_settings_still_parse() {
    for (env, extra) in [
        (vec![], vec!["-v"]),
        (vec![], vec!["-vv"]),
        (vec![("CONNECTORS_VERBOSE", "true")], vec![]),
        (vec![("CONNECTORS_VERBOSE", "2")], vec![]),
    ] {
        let (code, stderr) = mutate_with(&env, &extra);
        assert_eq!(code, Some(0), "{env:?} {extra:?}: {stderr}");
    }
    let (code, stderr) = mutate_with(&[], &["--verbose=yes"]);
    assert_eq!(code, Some(2), "{stderr}");
}

#[test]
fn listeners_default_to_loopback_and_the_state_directory_is_the_users() {
    let help = |command: &str| {
        let output = Command::new(support::binary())
            .args([command, "--help"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert!(help("webhook").contains("[default: 127.0.0.1:8443]"));
    assert!(help("controller").contains("[default: 127.0.0.1:8081]"));
    assert!(help("proxy").contains("[default: 127.0.0.1:8080]"));
    assert!(help("node-pull").contains("[default: 127.0.0.1:7480]"));
    let proxy = help("proxy");
    assert!(
        !proxy.contains("target/"),
        "a development path in the proxy's defaults: {proxy}"
    );
    assert!(proxy.contains("$XDG_STATE_HOME/connectors"), "{proxy}");
}
