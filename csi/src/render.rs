//! The files of a volume: what each client needs to reach registries through
//! the connectors proxy with the pod's own token. Pure: the same inputs give
//! the same bytes, and nothing here touches the filesystem.
//!
//! The environment and the forward proxy URL come from the injection
//! contract the webhook uses too (`connector::injection`), so `.env` says
//! exactly what an injected container gets, plus the token.

use std::fmt::Write as _;

use base64::Engine;
use connector::ConnectorKey;
use connector::injection::{InjectionConfig, container_env, forward_proxy_url_with_password};
use connector::keys;
use connector::store::ResolvedConnector;
use serde_json::json;

pub use crate::files::FileName;
use crate::request::{PodInfo, ProxyToken};

/// What every volume on this node shares: where the proxy is and whom to
/// trust. Built once at start-up.
#[derive(Debug, Clone)]
pub struct RenderConfig {
    /// The proxy addresses, `NO_PROXY` and the mount path, as the webhook
    /// has them. Its `proxy_ca_pem` is ignored: the CA is in the volume.
    pub injection: InjectionConfig,
    /// The proxy CA certificate(s), PEM.
    pub proxy_ca_pem: String,
    /// The system's root certificates, PEM.
    pub system_roots_pem: String,
    /// True when the reverse proxy (the pull address) speaks plain HTTP.
    pub pull_plain_http: bool,
}

/// One rendered file.
#[derive(Clone, PartialEq, Eq)]
pub struct VolumeFile {
    pub name: FileName,
    pub contents: Vec<u8>,
    pub mode: u32,
}

impl std::fmt::Debug for VolumeFile {
    // NB: contents may hold the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeFile")
            .field("name", &self.name.as_str())
            .field("bytes", &self.contents.len())
            .field("mode", &format_args!("{:o}", self.mode))
            .finish()
    }
}

/// Renders `files` for a pod using `connectors` with `token`.
pub fn render(
    config: &RenderConfig,
    pod: &PodInfo,
    connectors: &[ResolvedConnector],
    token: &ProxyToken,
    files: &[FileName],
) -> Vec<VolumeFile> {
    let keys: Vec<ConnectorKey> = connectors.iter().map(|c| c.key.clone()).collect();
    let proxy_url = forward_proxy_url_with_password(&config.injection.forward_proxy, &keys, token.expose());
    files
        .iter()
        .map(|&name| {
            let contents = match name {
                FileName::Env => env_file(config, &proxy_url),
                FileName::HttpProxy | FileName::HttpsProxy => proxy_url.clone(),
                FileName::DockerConfig => docker_config(config, pod, token),
                FileName::Buildkitd => buildkitd_toml(config, connectors),
                FileName::Ca => with_final_newline(&config.proxy_ca_pem),
                FileName::CaBundle => ca_bundle(config),
                FileName::Token => token.expose().to_owned(),
            };
            VolumeFile {
                name,
                contents: contents.into_bytes(),
                mode: name.mode(),
            }
        })
        .collect()
}

/// The webhook's container environment, with the proxy URL carrying the token.
fn env_file(config: &RenderConfig, proxy_url: &str) -> String {
    let mut injection = config.injection.clone();
    // NB: the webhook points NODE_EXTRA_CA_CERTS at its downwardAPI volume
    // when it has the CA; this volume has its own copy.
    injection.proxy_ca_pem = None;
    let mut out = String::from("# Written by the connectors CSI driver; source it with `set -a; . ./.env; set +a`.\n");
    for (name, value) in container_env(&injection, Some(proxy_url)) {
        let _ = writeln!(out, "{name}={}", shell_value(&value));
    }
    out
}

/// `value` as a POSIX shell word: bare when every character is safe (so
/// `docker --env-file` and dotenv readers see the same value), otherwise in
/// single quotes.
pub(crate) fn shell_value(value: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "%+,-./:=@_".contains(c);
    if !value.is_empty() && value.chars().all(safe) {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

/// The docker/podman auth file: the token as the password for the reverse
/// proxy host. The user name is the pod's service account, for readability;
/// the proxy reads only the password.
fn docker_config(config: &RenderConfig, pod: &PodInfo, token: &ProxyToken) -> String {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", pod.service_account, token.expose()));
    let document = json!({
        "auths": {
            config.injection.pull_address.as_str(): {"auth": auth},
        },
    });
    let mut text = serde_json::to_string_pretty(&document).unwrap_or_default();
    text.push('\n');
    text
}

/// buildkitd's registry configuration: each connector's registry mirrored
/// through its reverse proxy path, and the proxy host trusted with the CA.
fn buildkitd_toml(config: &RenderConfig, connectors: &[ResolvedConnector]) -> String {
    let pull = &config.injection.pull_address;
    let ca = format!("{}/{}", config.injection.config_mount_path, keys::CSI_FILE_CA);
    let mut out = String::from("# Written by the connectors CSI driver: pulls go through the connectors proxy.\n");
    let _ = writeln!(out, "\n[registry.{}]", toml_string(pull));
    if config.pull_plain_http {
        out.push_str("  http = true\n");
    }
    let _ = writeln!(out, "  ca = [{}]", toml_string(&ca));
    let mut seen: Vec<&str> = Vec::new();
    for connector in connectors {
        // The first connector for a registry host wins, as in the webhook.
        let host = connector.registry_host();
        if seen.contains(&host) || host == pull.as_str() {
            continue;
        }
        seen.push(host);
        let mirror = format!("{pull}/{}", connector.key.proxy_path());
        let _ = writeln!(out, "\n[registry.{}]", toml_string(host));
        let _ = writeln!(out, "  mirrors = [{}]", toml_string(&mirror));
    }
    out
}

/// A TOML basic string.
fn toml_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn ca_bundle(config: &RenderConfig) -> String {
    certs::bundle::join_pem(&config.system_roots_pem, &config.proxy_ca_pem)
}

fn with_final_newline(text: &str) -> String {
    let mut out = text.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RenderConfig {
        RenderConfig {
            injection: InjectionConfig::new("proxy.example:8080", "proxy.example:3128"),
            proxy_ca_pem: "-----BEGIN CERTIFICATE-----\nPROXY\n-----END CERTIFICATE-----".into(),
            system_roots_pem: "-----BEGIN CERTIFICATE-----\nROOT\n-----END CERTIFICATE-----\n".into(),
            pull_plain_http: true,
        }
    }

    fn pod() -> PodInfo {
        PodInfo {
            namespace: "team".into(),
            name: "app".into(),
            uid: None,
            service_account: "builder".into(),
        }
    }

    fn routes() -> Vec<ResolvedConnector> {
        let resolved = |namespace: &str, name: &str, address: &str| {
            let connector: connector::Connector = serde_json::from_value(json!({
                "apiVersion": "connectors.alauda.io/v1alpha1",
                "kind": "Connector",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"connectorClassName": "oci", "address": address},
            }))
            .unwrap();
            ResolvedConnector::resolve(ConnectorKey::new(namespace, name), std::sync::Arc::new(connector)).unwrap()
        };
        vec![
            resolved("team", "harbor", "https://harbor.example.com"),
            resolved("team", "harbor2", "https://harbor.example.com"),
            resolved("ops", "hub", "https://registry-1.docker.io"),
        ]
    }

    fn file(files: &[VolumeFile], name: FileName) -> String {
        let f = files.iter().find(|f| f.name == name).unwrap();
        String::from_utf8(f.contents.clone()).unwrap()
    }

    #[test]
    fn every_file_is_rendered_with_its_mode() {
        let token = ProxyToken::new("tok:en/1");
        let files = render(&config(), &pod(), &routes(), &token, &FileName::ALL);
        assert_eq!(files.len(), 8);
        let url = "http://team%2Fharbor,team%2Fharbor2,ops%2Fhub:tok%3Aen%2F1@proxy.example:3128";
        assert_eq!(file(&files, FileName::HttpProxy), url);
        assert_eq!(file(&files, FileName::HttpsProxy), url);
        assert_eq!(file(&files, FileName::Token), "tok:en/1");
        let env = file(&files, FileName::Env);
        assert!(env.contains(&format!("\nHTTPS_PROXY={url}\n")), "{env}");
        assert!(
            env.contains("\nREGISTRY_AUTH_FILE=/var/run/connectors/config.json\n"),
            "{env}"
        );
        assert!(
            env.contains("\nNODE_EXTRA_CA_CERTS=/var/run/connectors/ca.crt\n"),
            "{env}"
        );
        assert!(env.contains("\nNO_PROXY=localhost,127.0.0.1,::1,"), "{env}");
        let docker: serde_json::Value = serde_json::from_str(&file(&files, FileName::DockerConfig)).unwrap();
        let auth = docker["auths"]["proxy.example:8080"]["auth"].as_str().unwrap();
        let decoded = base64::engine::general_purpose::STANDARD.decode(auth).unwrap();
        assert_eq!(decoded, b"builder:tok:en/1");
        let bundle = file(&files, FileName::CaBundle);
        assert!(bundle.contains("ROOT\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nPROXY"));
        for f in &files {
            let want = if f.name.carries_token() { 0o440 } else { 0o644 };
            assert_eq!(f.mode, want, "{:?}", f.name);
        }
        assert!(!format!("{files:?}").contains("tok:en"));
    }

    #[test]
    fn buildkitd_mirrors_each_registry_once_through_its_connector() {
        let files = render(
            &config(),
            &pod(),
            &routes(),
            &ProxyToken::new("t"),
            &[FileName::Buildkitd],
        );
        let toml = file(&files, FileName::Buildkitd);
        let want = "\n[registry.\"proxy.example:8080\"]\n  http = true\n  ca = [\"/var/run/connectors/ca.crt\"]\n\n[registry.\"harbor.example.com\"]\n  mirrors = [\"proxy.example:8080/namespaces/team/connectors/harbor\"]\n\n[registry.\"docker.io\"]\n  mirrors = [\"proxy.example:8080/namespaces/ops/connectors/hub\"]\n";
        assert!(toml.ends_with(want), "{toml}");
    }

    #[test]
    fn shell_values_are_quoted_only_when_needed() {
        let cases = [
            ("http://a%2Fb:t@h:3128", "http://a%2Fb:t@h:3128"),
            ("localhost,.svc,10.0.0.0/8", "localhost,.svc,10.0.0.0/8"),
            ("a b", "'a b'"),
            ("it's", r"'it'\''s'"),
            ("", "''"),
            ("$HOME", "'$HOME'"),
        ];
        for (value, want) in cases {
            assert_eq!(shell_value(value), want, "{value}");
        }
    }
}
