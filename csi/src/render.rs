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
use crate::pod::VolumeUse;
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
    /// True when the reverse proxy (the proxy address) speaks plain HTTP.
    pub pull_plain_http: bool,
    /// The cluster's DNS domain: each connector is also reached at its own
    /// Service, `http://c-<name>.<ns>.svc.<domain>` (the address in its
    /// status).
    pub cluster_domain: String,
}

/// The hosts of the connectors' own Services (plain HTTP, port 80).
fn connector_hosts(config: &RenderConfig, connectors: &[ResolvedConnector]) -> Vec<String> {
    connectors
        .iter()
        .filter_map(|c| {
            let service = connector::injection::service_name(&c.key.name).ok()?;
            Some(connector::injection::service_host(
                &service,
                &c.key.namespace,
                &config.cluster_domain,
            ))
        })
        .collect()
}

/// One rendered file.
#[derive(Clone, PartialEq, Eq)]
pub struct VolumeFile {
    pub name: FileName,
    pub contents: Vec<u8>,
    pub mode: u32,
    /// The owner and group the file is given.
    pub uid: u32,
    pub gid: u32,
}

impl std::fmt::Debug for VolumeFile {
    // NB: contents may hold the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeFile")
            .field("name", &self.name.as_str())
            .field("bytes", &self.contents.len())
            .field("mode", &format_args!("{:o}", self.mode))
            .field("owner", &format_args!("{}:{}", self.uid, self.gid))
            .finish()
    }
}

/// Renders `files` for a pod using `connectors` with `token`. `volume`
/// says where the pod's containers mount the volume and as whom they run
/// (from the pod's spec; `None`: the injected mount path, and token files
/// readable by any user of the pod).
pub fn render(
    config: &RenderConfig,
    pod: &PodInfo,
    connectors: &[ResolvedConnector],
    token: &ProxyToken,
    files: &[FileName],
    volume: Option<&VolumeUse>,
) -> Vec<VolumeFile> {
    let keys: Vec<ConnectorKey> = connectors.iter().map(|c| c.key.clone()).collect();
    let proxy_url = forward_proxy_url_with_password(&config.injection.forward_proxy, &keys, token.expose());
    let default_path = [config.injection.config_mount_path.clone()];
    let mount_paths = match volume {
        Some(volume) if !volume.mount_paths.is_empty() => volume.mount_paths.as_slice(),
        _ => &default_path,
    };
    let owner = TokenOwner::of(volume);
    files
        .iter()
        .map(|&name| {
            let contents = match name {
                FileName::Env => env_file(config, &proxy_url, mount_paths, connectors),
                FileName::HttpProxy | FileName::HttpsProxy => proxy_url.clone(),
                FileName::DockerConfig => docker_config(config, pod, token, connectors),
                FileName::Buildkitd => buildkitd_toml(config, connectors, &mount_paths[0]),
                FileName::Ca => with_final_newline(&config.proxy_ca_pem),
                FileName::CaBundle => ca_bundle(config),
                FileName::Token => token.expose().to_owned(),
            };
            let (mode, uid, gid) = if name.carries_token() {
                (owner.mode, owner.uid, owner.gid)
            } else {
                (PUBLIC_FILE_MODE, 0, 0)
            };
            VolumeFile {
                name,
                contents: contents.into_bytes(),
                mode,
                uid,
                gid,
            }
        })
        .collect()
}

/// Who may read the token-bearing files. kubelet applies no fsGroup to a
/// `readOnly: true` inline volume, so the driver sets owner and mode
/// itself: the pod's group (`fsGroup`, or the one group its containers run
/// as) 0440; else the one user they run as, 0400; else, when the image
/// chooses the user, 0444 as kubelet writes projected ServiceAccount tokens.
/// On the node, kubelet's pod directories (0750, root) keep other users out
/// in every case.
struct TokenOwner {
    mode: u32,
    uid: u32,
    gid: u32,
}

impl TokenOwner {
    fn of(volume: Option<&VolumeUse>) -> Self {
        match volume.map(|v| (v.user, v.group)) {
            Some((user, Some(group))) => TokenOwner {
                mode: 0o440,
                uid: user.unwrap_or(0),
                gid: group,
            },
            Some((Some(user), None)) => TokenOwner {
                mode: 0o400,
                uid: user,
                gid: 0,
            },
            _ => TokenOwner {
                mode: 0o444,
                uid: 0,
                gid: 0,
            },
        }
    }
}

/// Mode of the files without the token.
const PUBLIC_FILE_MODE: u32 = 0o644;

/// Where the volume is, as the shell that sources `.env` sees it: the one
/// mount path, or a loop that finds which of several this container has.
const DIR_VARIABLE: &str = "connectors_dir";

/// The webhook's container environment, with the proxy URL carrying the
/// token and the paths pointing where the pod mounts this volume; each line
/// exported, so `source .env` (or `. ./.env`) hands it to child processes.
fn env_file(
    config: &RenderConfig,
    proxy_url: &str,
    mount_paths: &[String],
    connectors: &[ResolvedConnector],
) -> String {
    let mut injection = config.injection.clone();
    // NB: the webhook points NODE_EXTRA_CA_CERTS at its downwardAPI volume
    // when it has the CA; this volume has its own copy.
    injection.proxy_ca_pem = None;
    let mut out = String::from(
        "# Written by the connectors CSI driver: `source` it (or `. ./.env`) to reach registries through the connectors proxy.\n",
    );
    let placeholder = format!("${{{DIR_VARIABLE}}}");
    if let [single] = mount_paths {
        injection.config_mount_path = single.clone();
    } else {
        // The containers of this pod mount the volume at different paths.
        let candidates: Vec<String> = mount_paths.iter().map(|path| shell_value(path)).collect();
        let _ = writeln!(out, "{DIR_VARIABLE}={}", candidates[0]);
        let _ = writeln!(
            out,
            "for d in {}; do if [ -f \"$d/{}\" ]; then {DIR_VARIABLE}=$d; break; fi; done",
            candidates.join(" "),
            keys::CSI_FILE_ENV
        );
        injection.config_mount_path = placeholder.clone();
    }
    let hosts: Vec<&str> = connectors.iter().map(ResolvedConnector::registry_host).collect();
    for (name, value) in container_env(&injection, Some(proxy_url), &hosts) {
        let value = match value.strip_prefix(&placeholder) {
            Some(rest) => format!("\"${DIR_VARIABLE}\"{}", shell_value(rest)),
            None => shell_value(&value),
        };
        let _ = writeln!(out, "export {name}={value}");
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
fn docker_config(config: &RenderConfig, pod: &PodInfo, token: &ProxyToken, connectors: &[ResolvedConnector]) -> String {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", pod.service_account, token.expose()));
    let mut auths = serde_json::Map::new();
    auths.insert(config.injection.proxy_address.clone(), json!({"auth": auth}));
    for host in connector_hosts(config, connectors) {
        auths.insert(host, json!({"auth": auth}));
    }
    let document = json!({"auths": auths});
    let mut text = serde_json::to_string_pretty(&document).unwrap_or_default();
    text.push('\n');
    text
}

/// buildkitd's registry configuration: each connector's registry mirrored
/// through its reverse proxy path, and the proxy host trusted with the CA.
fn buildkitd_toml(config: &RenderConfig, connectors: &[ResolvedConnector], mount_path: &str) -> String {
    let pull = &config.injection.proxy_address;
    let ca = format!("{}/{}", mount_path.trim_end_matches('/'), keys::CSI_FILE_CA);
    let mut out = String::from("# Written by the connectors CSI driver: pulls go through the connectors proxy.\n");
    let _ = writeln!(out, "\n[registry.{}]", toml_string(pull));
    if config.pull_plain_http {
        out.push_str("  http = true\n");
    }
    let _ = writeln!(out, "  ca = [{}]", toml_string(&ca));
    // Each connector's own Service speaks plain HTTP (the connector docs'
    // reverse-proxy address).
    for host in connector_hosts(config, connectors) {
        let _ = writeln!(out, "\n[registry.{}]\n  http = true", toml_string(&host));
    }
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
            cluster_domain: "cluster.local".into(),
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
        let files = render(&config(), &pod(), &routes(), &token, &FileName::ALL, None);
        assert_eq!(files.len(), 8);
        let url = "http://team%2Fharbor,team%2Fharbor2,ops%2Fhub:tok%3Aen%2F1@proxy.example:3128";
        assert_eq!(file(&files, FileName::HttpProxy), url);
        assert_eq!(file(&files, FileName::HttpsProxy), url);
        assert_eq!(file(&files, FileName::Token), "tok:en/1");
        let env = file(&files, FileName::Env);
        assert!(env.contains(&format!("\nexport HTTPS_PROXY={url}\n")), "{env}");
        assert!(
            env.contains("\nexport REGISTRY_AUTH_FILE=/var/run/connectors/config.json\n"),
            "{env}"
        );
        assert!(
            env.contains("\nexport NODE_EXTRA_CA_CERTS=/var/run/connectors/ca.crt\n"),
            "{env}"
        );
        assert!(env.contains("\nexport NO_PROXY=localhost,127.0.0.1,::1,"), "{env}");
        let docker: serde_json::Value = serde_json::from_str(&file(&files, FileName::DockerConfig)).unwrap();
        let auth = docker["auths"]["proxy.example:8080"]["auth"].as_str().unwrap();
        let decoded = base64::engine::general_purpose::STANDARD.decode(auth).unwrap();
        assert_eq!(decoded, b"builder:tok:en/1");
        // And for each connector's own Service, the address in its status.
        for host in [
            "c-harbor.team.svc.cluster.local",
            "c-harbor2.team.svc.cluster.local",
            "c-hub.ops.svc.cluster.local",
        ] {
            assert_eq!(docker["auths"][host]["auth"], auth, "{host}");
        }
        let bundle = file(&files, FileName::CaBundle);
        assert!(bundle.contains("ROOT\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nPROXY"));
        // Without the pod's spec: readable by whichever user the image
        // chooses, as kubelet's projected tokens.
        for f in &files {
            let want = if f.name.carries_token() { 0o444 } else { 0o644 };
            assert_eq!((f.mode, f.uid, f.gid), (want, 0, 0), "{:?}", f.name);
        }
        assert!(!format!("{files:?}").contains("tok:en"));
    }

    fn used(paths: &[&str], user: Option<u32>, group: Option<u32>) -> VolumeUse {
        VolumeUse {
            mount_paths: paths.iter().map(|p| p.to_string()).collect(),
            user,
            group,
        }
    }

    #[test]
    fn token_files_belong_to_the_pods_group_or_user() {
        let token = ProxyToken::new("t");
        let cases = [
            (used(&["/cfg"], Some(1000), Some(2000)), (0o440, 1000, 2000)),
            (used(&["/cfg"], None, Some(2000)), (0o440, 0, 2000)),
            (used(&["/cfg"], Some(1000), None), (0o400, 1000, 0)),
            (used(&["/cfg"], None, None), (0o444, 0, 0)),
        ];
        for (volume, want) in cases {
            let files = render(&config(), &pod(), &routes(), &token, &FileName::ALL, Some(&volume));
            for f in &files {
                let got = (f.mode, f.uid, f.gid);
                if f.name.carries_token() {
                    assert_eq!(got, want, "{volume:?} {:?}", f.name);
                } else {
                    assert_eq!(got, (0o644, 0, 0), "{volume:?} {:?}", f.name);
                }
            }
        }
    }

    #[test]
    fn paths_point_where_the_pod_mounts_the_volume() {
        let token = ProxyToken::new("t");
        let files = render(
            &config(),
            &pod(),
            &routes(),
            &token,
            &FileName::ALL,
            Some(&used(&["/root/.docker"], None, None)),
        );
        let env = file(&files, FileName::Env);
        assert!(
            env.contains("\nexport SSL_CERT_FILE=/root/.docker/ca-bundle.crt\n"),
            "{env}"
        );
        assert!(env.contains("\nexport DOCKER_CONFIG=/root/.docker\n"), "{env}");
        assert!(!env.contains("/var/run/connectors"), "{env}");
        let toml = file(&files, FileName::Buildkitd);
        assert!(toml.contains("ca = [\"/root/.docker/ca.crt\"]"), "{toml}");

        // Different paths in different containers: .env finds its own.
        let files = render(
            &config(),
            &pod(),
            &routes(),
            &token,
            &[FileName::Env],
            Some(&used(&["/opt/connectors", "/a b"], None, None)),
        );
        let env = file(&files, FileName::Env);
        assert!(
            env.contains("\nconnectors_dir=/opt/connectors\nfor d in /opt/connectors '/a b'; do"),
            "{env}"
        );
        assert!(
            env.contains("\nexport SSL_CERT_FILE=\"$connectors_dir\"/ca-bundle.crt\n"),
            "{env}"
        );
    }

    #[test]
    fn env_works_with_a_plain_source_wherever_it_is_mounted() {
        // sh sources the file from a directory of its own and child
        // processes see the variables, pointing into that directory.
        let token = ProxyToken::new("tok'en");
        for paths in [vec!["/MOUNT"], vec!["/elsewhere", "/MOUNT"]] {
            let dir = tempfile::tempdir().unwrap();
            let mount = dir.path().join("mount point");
            std::fs::create_dir(&mount).unwrap();
            let mount_str = mount.to_str().unwrap().to_owned();
            let paths: Vec<String> = paths.iter().map(|p| p.replace("/MOUNT", &mount_str)).collect();
            let volume = VolumeUse {
                mount_paths: paths,
                user: None,
                group: None,
            };
            let files = render(&config(), &pod(), &routes(), &token, &[FileName::Env], Some(&volume));
            std::fs::write(mount.join(".env"), &files[0].contents).unwrap();
            let output = std::process::Command::new("sh")
                .arg("-c")
                .arg(r#". "$1/.env" && sh -c 'printf "%s\n%s\n" "$SSL_CERT_FILE" "$HTTPS_PROXY"'"#)
                .arg("sh")
                .arg(&mount)
                .env_clear()
                .output()
                .unwrap();
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            let stdout = String::from_utf8(output.stdout).unwrap();
            let mut lines = stdout.lines();
            assert_eq!(lines.next(), Some(format!("{mount_str}/ca-bundle.crt").as_str()));
            assert!(
                lines.next().unwrap().contains(":tok%27en@proxy.example:3128"),
                "{stdout}"
            );
        }
    }

    #[test]
    fn buildkitd_mirrors_each_registry_once_through_its_connector() {
        let files = render(
            &config(),
            &pod(),
            &routes(),
            &ProxyToken::new("t"),
            &[FileName::Buildkitd],
            None,
        );
        let toml = file(&files, FileName::Buildkitd);
        let want = "\n[registry.\"proxy.example:8080\"]\n  http = true\n  ca = [\"/var/run/connectors/ca.crt\"]\n\n[registry.\"c-harbor.team.svc.cluster.local\"]\n  http = true\n\n[registry.\"c-harbor2.team.svc.cluster.local\"]\n  http = true\n\n[registry.\"c-hub.ops.svc.cluster.local\"]\n  http = true\n\n[registry.\"harbor.example.com\"]\n  mirrors = [\"proxy.example:8080/namespaces/team/connectors/harbor\"]\n\n[registry.\"docker.io\"]\n  mirrors = [\"proxy.example:8080/namespaces/ops/connectors/hub\"]\n";
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
