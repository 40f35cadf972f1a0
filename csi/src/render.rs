//! The files of a volume: what each client needs to reach registries through
//! the connectors proxy with the pod's own token. Pure: the same inputs give
//! the same bytes, and nothing here touches the filesystem.
//!
//! The environment and the forward proxy URL come from the injection
//! contract the webhook uses too (`connector::injection`), so `.env` says
//! exactly what an injected container gets, plus the token.

use std::fmt::Write as _;

use connector::ConnectorKey;
use connector::injection::{InjectionConfig, container_env, forward_proxy_url_with_password};
use connector::keys;
use std::sync::Arc;

use connector::ConnectorClass;
use connector::class::ClassConfiguration;
use connector::store::{ClassStore, ResolvedConnector};
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

/// One rendered file.
#[derive(Clone, PartialEq, Eq)]
pub struct VolumeFile {
    /// A plain file name (no `/`).
    pub name: String,
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
            .field("name", &self.name)
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
                name: name.as_str().to_owned(),
                contents: contents.into_bytes(),
                mode,
                uid,
                gid,
            }
        })
        .collect()
}

/// Why a volume's class configurations could not be rendered: a mount
/// error kubelet reports on the pod. Never holds the token.
#[derive(Debug, thiserror::Error)]
pub enum ConfigurationError {
    #[error("ConnectorClass {class} (of connector {connector}) does not exist")]
    MissingClass { class: String, connector: String },
    #[error(
        "no class of this volume's connectors ({classes}) offers configuration or file {name:?}; they offer: {offered}"
    )]
    NotOffered {
        name: String,
        classes: String,
        offered: String,
    },
    #[error("configuration {configuration} of ConnectorClass {class} names file {file:?}: {why}")]
    InvalidFile {
        configuration: String,
        class: String,
        file: String,
        why: &'static str,
    },
    #[error("configuration.params names {name:?}, which this volume does not mount")]
    UnknownParamsConfiguration { name: String },
    #[error("configuration.params: configuration {configuration} has no parameter {param:?} (it has: {known})")]
    UnknownParam {
        configuration: String,
        param: String,
        known: String,
    },
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
}

/// The class configurations a volume asks for (`configuration.names`,
/// `configuration.params`).
pub struct ConfigurationRequest<'a> {
    pub names: &'a [String],
    pub params: &'a std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

/// Renders the configurations of the connectors' classes that `request`
/// names: a configuration's name (or alias) renders all its files, a file
/// name the one file of the configuration that has it. Where several
/// classes offer a name, the last connector's class wins (as in the
/// connector docs). Files that hold the token belong to the pod's user or
/// group, as the built-in token files do.
pub fn render_configurations(
    config: &RenderConfig,
    pod: &PodInfo,
    connectors: &[ResolvedConnector],
    classes: &dyn ClassStore,
    token: &ProxyToken,
    request: &ConfigurationRequest<'_>,
    volume: Option<&VolumeUse>,
) -> Result<Vec<VolumeFile>, ConfigurationError> {
    if request.names.is_empty() {
        return Ok(Vec::new());
    }
    let mut found: Vec<Arc<ConnectorClass>> = Vec::new();
    for connector in connectors.iter().rev() {
        let name = &connector.connector.spec.connector_class_name;
        let class = classes
            .connector_class(name)
            .ok_or_else(|| ConfigurationError::MissingClass {
                class: name.clone(),
                connector: connector.key.to_string(),
            })?;
        if !found.iter().any(|c| c.metadata.name == class.metadata.name) {
            found.push(class);
        }
    }
    let mut chosen: Vec<(&ConnectorClass, &ClassConfiguration, Option<&str>)> = Vec::new();
    for name in request.names {
        let by_name = found
            .iter()
            .find_map(|class| class.configuration(name).map(|c| (class.as_ref(), c, None)));
        let by_file = || {
            found.iter().find_map(|class| {
                class
                    .spec
                    .configurations
                    .iter()
                    .find(|c| c.data.contains_key(name))
                    .map(|c| (class.as_ref(), c, Some(name.as_str())))
            })
        };
        let choice = by_name.or_else(by_file).ok_or_else(|| ConfigurationError::NotOffered {
            name: name.clone(),
            classes: found
                .iter()
                .filter_map(|c| c.metadata.name.as_deref())
                .collect::<Vec<_>>()
                .join(", "),
            offered: offered(&found),
        })?;
        chosen.push(choice);
    }
    for configuration in request.params.keys() {
        if !chosen.iter().any(|(_, c, _)| &c.name == configuration) {
            return Err(ConfigurationError::UnknownParamsConfiguration {
                name: configuration.clone(),
            });
        }
    }
    let mount_path = volume
        .and_then(|v| v.mount_paths.first())
        .cloned()
        .unwrap_or_else(|| config.injection.config_mount_path.clone());
    let values = template_values(config, pod, connectors, token, &mount_path);
    let owner = TokenOwner::of(volume);
    let mut files: Vec<VolumeFile> = Vec::new();
    for (class, configuration, only) in chosen {
        let class_name = class.metadata.name.clone().unwrap_or_default();
        let mut values = values.clone();
        values["configurations"] = params_of(configuration, request.params.get(&configuration.name))?;
        for (file, template) in &configuration.data {
            if only.is_some_and(|only| only != file) {
                continue;
            }
            let invalid = |why| ConfigurationError::InvalidFile {
                configuration: configuration.name.clone(),
                class: class_name.clone(),
                file: file.clone(),
                why,
            };
            if !crate::request::is_file_or_configuration_name(file) {
                return Err(invalid("a file name of letters, digits, '.', '_' and '-' only"));
            }
            if FileName::parse(file).is_some() {
                return Err(invalid("the name of a built-in file"));
            }
            let contents = crate::template::render(file, template, &values)?;
            // NB: a template that reads the token (or the proxy URL holding
            // it) may encode it (config.json's base64): such a file is the
            // pod's alone, as the built-in token files are.
            let reads_token = ["context.token", "proxy.url"]
                .iter()
                .any(|value| template.contains(value));
            let (mode, uid, gid) = if reads_token || contents.contains(token.expose()) {
                (owner.mode, owner.uid, owner.gid)
            } else {
                (PUBLIC_FILE_MODE, 0, 0)
            };
            // NB: a later configuration's file of the same name wins.
            files.retain(|f| &f.name != file);
            files.push(VolumeFile {
                name: file.clone(),
                contents: contents.into_bytes(),
                mode,
                uid,
                gid,
            });
        }
    }
    Ok(files)
}

/// `configuration (files), …` of `classes`, for messages.
fn offered(classes: &[Arc<ConnectorClass>]) -> String {
    let mut names: Vec<String> = Vec::new();
    for configuration in classes.iter().flat_map(|c| c.spec.configurations.iter()) {
        let files: Vec<&str> = configuration.data.keys().map(String::as_str).collect();
        let entry = format!("{} ({})", configuration.name, files.join(", "));
        if !names.contains(&entry) {
            names.push(entry);
        }
    }
    names.join(", ")
}

/// `.configurations`: the configuration's parameters, defaults overridden
/// by the volume's `configuration.params`.
fn params_of(
    configuration: &ClassConfiguration,
    given: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<serde_json::Value, ConfigurationError> {
    let mut params = serde_json::Map::new();
    for param in &configuration.params {
        params.insert(param.name.clone(), json!(param.default.clone().unwrap_or_default()));
    }
    for (name, value) in given.into_iter().flatten() {
        if !params.contains_key(name) {
            return Err(ConfigurationError::UnknownParam {
                configuration: configuration.name.clone(),
                param: name.clone(),
                known: configuration
                    .params
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        params.insert(name.clone(), json!(value));
    }
    Ok(serde_json::Value::Object(params))
}

/// What templates see (README, "Connector classes"): the connectors
/// (`.connectors`, the last as `.connector`), the pod and its token and
/// where the proxy is (`.context`), the class's proxy address
/// (`.connectorclass.proxyAddress`, as the connector docs name it).
fn template_values(
    config: &RenderConfig,
    pod: &PodInfo,
    connectors: &[ResolvedConnector],
    token: &ProxyToken,
    mount_path: &str,
) -> serde_json::Value {
    let proxy_address = &config.injection.proxy_address;
    let keys: Vec<ConnectorKey> = connectors.iter().map(|c| c.key.clone()).collect();
    let mut mirrored: Vec<&str> = Vec::new();
    let list: Vec<serde_json::Value> = connectors
        .iter()
        .map(|c| {
            let registry_host = c.registry_host();
            // NB: the first connector for a registry host wins, as in the
            // webhook; the proxy itself is never mirrored.
            let mirror = registry_host != proxy_address.as_str() && !mirrored.contains(&registry_host);
            if mirror {
                mirrored.push(registry_host);
            }
            let proxy_host = connector::injection::service_name(&c.key.name)
                .map(|service| connector::injection::service_host(&service, &c.key.namespace, &config.cluster_domain))
                .unwrap_or_default();
            let proxy_address = c
                .connector
                .status
                .as_ref()
                .and_then(|s| s.proxy.as_ref())
                .and_then(|p| p.http_address.as_ref())
                .map(|a| a.url.clone())
                .unwrap_or_else(|| {
                    if proxy_host.is_empty() {
                        String::new()
                    } else {
                        format!("http://{proxy_host}")
                    }
                });
            json!({
                "name": c.key.name,
                "namespace": c.key.namespace,
                "key": c.key.to_string(),
                "className": c.connector.spec.connector_class_name,
                "address": c.connector.spec.address,
                "registryHost": registry_host,
                "mirror": mirror,
                "proxyPath": c.key.proxy_path(),
                "proxyHost": proxy_host,
                "proxyAddress": proxy_address,
                "metadata": {"name": c.key.name, "namespace": c.key.namespace},
                "spec": serde_json::to_value(&c.connector.spec).unwrap_or_default(),
                "status": {"proxyAddress": proxy_address},
            })
        })
        .collect();
    let mount = mount_path.trim_end_matches('/');
    json!({
        "connector": list.last().cloned().unwrap_or_default(),
        "connectors": list,
        "context": {
            "token": token.expose(),
            "serviceAccount": pod.service_account,
            "namespace": pod.namespace,
            "podName": pod.name,
            "mountPath": mount,
            "proxy": {
                "address": proxy_address,
                "plainHttp": config.pull_plain_http,
                "caCert": config.proxy_ca_pem,
                "caFile": format!("{mount}/{}", keys::CSI_FILE_CA),
                "forward": config.injection.forward_proxy,
                "url": forward_proxy_url_with_password(&config.injection.forward_proxy, &keys, token.expose()),
            },
        },
        "connectorclass": {"proxyAddress": proxy_address},
    })
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
    use base64::Engine;

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

    fn file(files: &[VolumeFile], name: &str) -> String {
        let f = files.iter().find(|f| f.name == name).unwrap();
        String::from_utf8(f.contents.clone()).unwrap()
    }

    /// The shipped classes' configurations `names`.
    fn configured(names: &[&str], token: &ProxyToken, volume: Option<&VolumeUse>) -> Vec<VolumeFile> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = Default::default();
        let request = ConfigurationRequest {
            names: &names,
            params: &params,
        };
        let classes = connector::store::BuiltInClasses;
        render_configurations(&config(), &pod(), &routes(), &classes, token, &request, volume).unwrap()
    }

    /// Whether a file holds the token (config.json base64-encoded, as the
    /// Basic auth of docker's format).
    fn carries_token(file: &VolumeFile, token: &ProxyToken) -> bool {
        FileName::parse(&file.name).map_or_else(
            || {
                let text = String::from_utf8_lossy(&file.contents);
                let basic = base64::engine::general_purpose::STANDARD.encode(format!("builder:{}", token.expose()));
                text.contains(token.expose()) || text.contains(&basic)
            },
            FileName::carries_token,
        )
    }

    #[test]
    fn every_file_is_rendered_with_its_mode() {
        let token = ProxyToken::new("tok:en/1");
        let mut files = render(&config(), &routes(), &token, &FileName::BUILT_IN, None);
        assert_eq!(files.len(), 6);
        files.extend(configured(&["registry-config", "buildkitd"], &token, None));
        assert_eq!(files.len(), 8);
        let url = "http://team%2Fharbor,team%2Fharbor2,ops%2Fhub:tok%3Aen%2F1@proxy.example:3128";
        assert_eq!(file(&files, "http.proxy"), url);
        assert_eq!(file(&files, "https.proxy"), url);
        assert_eq!(file(&files, "context.token"), "tok:en/1");
        let env = file(&files, ".env");
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
        let docker: serde_json::Value = serde_json::from_str(&file(&files, "config.json")).unwrap();
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
        let bundle = file(&files, "ca-bundle.crt");
        assert!(bundle.contains("ROOT\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nPROXY"));
        // Without the pod's spec: readable by whichever user the image
        // chooses, as kubelet's projected tokens.
        for f in &files {
            let want = if carries_token(f, &token) { 0o444 } else { 0o644 };
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
            let mut files = render(&config(), &routes(), &token, &FileName::BUILT_IN, Some(&volume));
            files.extend(configured(&["registry-config", "buildkitd"], &token, Some(&volume)));
            assert!(
                files
                    .iter()
                    .any(|f| f.name == "config.json" && carries_token(f, &token))
            );
            for f in &files {
                let got = (f.mode, f.uid, f.gid);
                if carries_token(f, &token) {
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
        let volume = used(&["/root/.docker"], None, None);
        let mut files = render(&config(), &routes(), &token, &FileName::BUILT_IN, Some(&volume));
        files.extend(configured(&["buildkitd"], &token, Some(&volume)));
        let env = file(&files, ".env");
        assert!(
            env.contains("\nexport SSL_CERT_FILE=/root/.docker/ca-bundle.crt\n"),
            "{env}"
        );
        assert!(env.contains("\nexport DOCKER_CONFIG=/root/.docker\n"), "{env}");
        assert!(!env.contains("/var/run/connectors"), "{env}");
        let toml = file(&files, "buildkitd.toml");
        assert!(toml.contains("ca = [\"/root/.docker/ca.crt\"]"), "{toml}");

        // Different paths in different containers: .env finds its own.
        let files = render(
            &config(),
            &routes(),
            &token,
            &[FileName::Env],
            Some(&used(&["/opt/connectors", "/a b"], None, None)),
        );
        let env = file(&files, ".env");
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
            let files = render(&config(), &routes(), &token, &[FileName::Env], Some(&volume));
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
        let files = configured(&["buildkitd"], &ProxyToken::new("t"), None);
        let toml = file(&files, "buildkitd.toml");
        let want = "\n[registry.\"proxy.example:8080\"]\n  http = true\n  ca = [\"/var/run/connectors/ca.crt\"]\n\n[registry.\"c-harbor.team.svc.cluster.local\"]\n  http = true\n\n[registry.\"c-harbor2.team.svc.cluster.local\"]\n  http = true\n\n[registry.\"c-hub.ops.svc.cluster.local\"]\n  http = true\n\n[registry.\"harbor.example.com\"]\n  mirrors = [\"proxy.example:8080/namespaces/team/connectors/harbor\"]\n\n[registry.\"docker.io\"]\n  mirrors = [\"proxy.example:8080/namespaces/ops/connectors/hub\"]\n";
        assert!(toml.ends_with(want), "{toml}");
    }

    /// A registry that needs other client files gets a class of its own:
    /// YAML, no code.
    struct Classes(Vec<Arc<ConnectorClass>>);

    impl ClassStore for Classes {
        fn connector_class(&self, name: &str) -> Option<Arc<ConnectorClass>> {
            self.0
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(name))
                .cloned()
        }
    }

    #[test]
    fn a_new_class_is_yaml_its_templates_read_the_documented_values_and_params() {
        let npm: ConnectorClass = serde_json::from_value(
            connector::yaml::parse_documents(
                r#"
apiVersion: connectors.alauda.io/v1alpha1
kind: ConnectorClass
metadata: {name: oci}
spec:
  configurations:
    - name: npmrc
      params: [{name: registry, default: "https://registry.npmjs.org/"}, {name: strict}]
      data:
        .npmrc: |
          registry={{ .configurations.registry }}
          https-proxy={{ .context.proxy.url }}
          strict-ssl={{ default "true" .configurations.strict }}
          cafile={{ .context.proxy.caFile }}
          {{- range .connectors }}
          ; {{ .key }} at {{ .proxyHost }} ({{ .className }}, {{ .spec.address }})
          {{- end }}
        settings.txt: "{{ .connector.name }} {{ .connectorclass.proxyAddress }} {{ .context.serviceAccount }}"
"#,
            )
            .unwrap()
            .remove(0),
        )
        .unwrap();
        let classes = Classes(vec![Arc::new(npm)]);
        let token = ProxyToken::new("t0k");
        let names = vec!["npmrc".to_owned()];
        let mut params = std::collections::BTreeMap::new();
        params.insert(
            "npmrc".to_owned(),
            std::collections::BTreeMap::from([("strict".to_owned(), "false".to_owned())]),
        );
        let request = ConfigurationRequest {
            names: &names,
            params: &params,
        };
        let volume = used(&["/home/node"], Some(1000), Some(2000));
        let files =
            render_configurations(&config(), &pod(), &routes(), &classes, &token, &request, Some(&volume)).unwrap();
        let npmrc = file(&files, ".npmrc");
        assert!(npmrc.starts_with("registry=https://registry.npmjs.org/\nhttps-proxy=http://team%2Fharbor,team%2Fharbor2,ops%2Fhub:t0k@proxy.example:3128\nstrict-ssl=false\ncafile=/home/node/ca.crt\n"), "{npmrc}");
        assert!(
            npmrc.contains("; ops/hub at c-hub.ops.svc.cluster.local (oci, https://registry-1.docker.io)"),
            "{npmrc}"
        );
        assert_eq!(file(&files, "settings.txt"), "hub proxy.example:8080 builder");
        let npmrc_file = files.iter().find(|f| f.name == ".npmrc").unwrap();
        assert_eq!(
            (npmrc_file.mode, npmrc_file.uid, npmrc_file.gid),
            (0o440, 1000, 2000),
            "it holds the token"
        );
        let settings = files.iter().find(|f| f.name == "settings.txt").unwrap();
        assert_eq!(settings.mode, 0o644);
        // One file of a configuration, by its name.
        let one = vec!["settings.txt".to_owned()];
        let empty = Default::default();
        let request = ConfigurationRequest {
            names: &one,
            params: &empty,
        };
        let files = render_configurations(&config(), &pod(), &routes(), &classes, &token, &request, None).unwrap();
        assert_eq!(
            files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            ["settings.txt"]
        );

        // What is not offered, and parameters that do not exist, are named.
        let missing = vec!["registry-config".to_owned()];
        let request = ConfigurationRequest {
            names: &missing,
            params: &empty,
        };
        let error = render_configurations(&config(), &pod(), &routes(), &classes, &token, &request, None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "no class of this volume's connectors (oci) offers configuration or file \"registry-config\"; they offer: npmrc (.npmrc, settings.txt)"
        );
        params.insert(
            "npmrc".to_owned(),
            std::collections::BTreeMap::from([("nope".to_owned(), "x".to_owned())]),
        );
        let request = ConfigurationRequest {
            names: &names,
            params: &params,
        };
        let error = render_configurations(&config(), &pod(), &routes(), &classes, &token, &request, None).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("has no parameter \"nope\" (it has: registry, strict)"),
            "{error}"
        );
        let none = Classes(Vec::new());
        let request = ConfigurationRequest {
            names: &names,
            params: &empty,
        };
        let error = render_configurations(&config(), &pod(), &routes(), &none, &token, &request, None).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("ConnectorClass oci (of connector ops/hub) does not exist"),
            "{error}"
        );
        assert!(!format!("{error:?}").contains("t0k"));
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
