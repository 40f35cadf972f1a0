//! The registry credential of a connector, read from its Secret:
//! `kubernetes.io/basic-auth` (`username`, `password`) or
//! `kubernetes.io/dockerconfigjson` (the entry for the connector's host).
//!
//! NB: a credential is kept byte-exact (Harbor robot names contain `$`) and
//! never appears in `Debug`, `Display` or an error message.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::OnceLock;

use base64::Engine;
use connector::reference::canonical_registry_host;
use k8s_openapi::api::core::v1::Secret;

/// Why a connector's Secret cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error("secret {0} has no {1:?} key")]
    MissingKey(String, &'static str),
    #[error("secret {0}: key {1:?} is not UTF-8")]
    NotUtf8(String, &'static str),
    #[error("secret {0}: .dockerconfigjson is not valid JSON")]
    DockerConfigJson(String),
    #[error("secret {0}: .dockerconfigjson has no entry for registry {1}")]
    NoDockerConfigEntry(String, String),
    #[error("secret {0} has type {1:?}; use kubernetes.io/basic-auth or kubernetes.io/dockerconfigjson")]
    UnsupportedType(String, String),
}

/// A username and password for the upstream registry.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamCredential {
    username: String,
    password: String,
}

impl fmt::Debug for UpstreamCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamCredential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl UpstreamCredential {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    /// The password, for the few places that must send it.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The `Authorization: Basic …` header value.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }

    /// A process-local fingerprint that tells credentials apart in cache
    /// keys without keeping the password there.
    pub fn fingerprint(&self) -> u64 {
        static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
        let mut hasher = KEYS.get_or_init(Default::default).build_hasher();
        self.username.hash(&mut hasher);
        self.password.hash(&mut hasher);
        hasher.finish()
    }
}

/// Reads the credential for `registry_host` from `secret`.
pub fn from_secret(secret: &Secret, registry_host: &str) -> Result<UpstreamCredential, CredentialError> {
    let name = format!(
        "{}/{}",
        secret.metadata.namespace.as_deref().unwrap_or("default"),
        secret.metadata.name.as_deref().unwrap_or_default()
    );
    let value = |key: &'static str| -> Result<Option<String>, CredentialError> {
        if let Some(text) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
            return Ok(Some(text.clone()));
        }
        match secret.data.as_ref().and_then(|d| d.get(key)) {
            Some(bytes) => String::from_utf8(bytes.0.clone())
                .map(Some)
                .map_err(|_| CredentialError::NotUtf8(name.clone(), key)),
            None => Ok(None),
        }
    };
    let kind = secret.type_.as_deref().unwrap_or("Opaque");
    match kind {
        "kubernetes.io/dockerconfigjson" => {
            let json =
                value(".dockerconfigjson")?.ok_or(CredentialError::MissingKey(name.clone(), ".dockerconfigjson"))?;
            docker_config_entry(&json, registry_host).map_err(|e| match e {
                DockerConfigError::Json => CredentialError::DockerConfigJson(name.clone()),
                DockerConfigError::NoEntry => {
                    CredentialError::NoDockerConfigEntry(name.clone(), registry_host.to_owned())
                }
            })
        }
        // NB: an Opaque Secret with username/password is accepted as
        // basic-auth: older installs created them that way.
        "kubernetes.io/basic-auth" | "Opaque" => {
            let username = value("username")?.ok_or(CredentialError::MissingKey(name.clone(), "username"))?;
            let password = value("password")?.ok_or(CredentialError::MissingKey(name.clone(), "password"))?;
            Ok(UpstreamCredential::new(username, password))
        }
        other => Err(CredentialError::UnsupportedType(name, other.to_owned())),
    }
}

enum DockerConfigError {
    Json,
    NoEntry,
}

#[derive(serde::Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(serde::Deserialize)]
struct DockerAuth {
    username: Option<String>,
    password: Option<String>,
    auth: Option<String>,
}

/// The entry of a docker `config.json` whose key (a host, `host:port` or a
/// URL such as `https://index.docker.io/v1/`) is `registry_host`.
fn docker_config_entry(json: &str, registry_host: &str) -> Result<UpstreamCredential, DockerConfigError> {
    let config: DockerConfig = serde_json::from_str(json).map_err(|_| DockerConfigError::Json)?;
    let wanted = canonical_registry_host(registry_host);
    for (key, auth) in &config.auths {
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default();
        if canonical_registry_host(host) != wanted {
            continue;
        }
        if let (Some(username), Some(password)) = (&auth.username, &auth.password) {
            return Ok(UpstreamCredential::new(username.clone(), password.clone()));
        }
        if let Some(encoded) = &auth.auth {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| DockerConfigError::Json)?;
            let text = String::from_utf8(decoded).map_err(|_| DockerConfigError::Json)?;
            let (username, password) = text.split_once(':').ok_or(DockerConfigError::Json)?;
            return Ok(UpstreamCredential::new(username, password));
        }
    }
    Err(DockerConfigError::NoEntry)
}

/// The PEM certificates in a CA Secret: keys ending in `.crt` or `.pem`, or
/// values with a PEM header.
pub fn ca_bundle(secret: &Secret) -> String {
    let mut pem = String::new();
    let mut add = |key: &str, value: &str| {
        if key.ends_with(".crt") || key.ends_with(".pem") || value.contains("-----BEGIN CERTIFICATE-----") {
            pem.push_str(value.trim());
            pem.push('\n');
        }
    };
    for (key, value) in secret.string_data.iter().flatten() {
        add(key, value);
    }
    for (key, value) in secret.data.iter().flatten() {
        add(key, &String::from_utf8_lossy(&value.0));
    }
    pem
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(type_: &str, data: &[(&str, &str)]) -> Secret {
        let mut secret = Secret {
            type_: Some(type_.to_owned()),
            ..Default::default()
        };
        secret.metadata.name = Some("s".into());
        secret.metadata.namespace = Some("team".into());
        secret.data = Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        );
        secret
    }

    #[test]
    fn basic_auth_secrets_keep_robot_names_byte_exact() {
        let s = secret(
            "kubernetes.io/basic-auth",
            &[("username", "robot$team+ci"), ("password", "p:w$1")],
        );
        let credential = from_secret(&s, "harbor.example.com").unwrap();
        assert_eq!(credential.username(), "robot$team+ci");
        assert_eq!(credential.password(), "p:w$1");
        assert_eq!(credential.basic_header(), "Basic cm9ib3QkdGVhbStjaTpwOnckMQ==");
        assert!(!format!("{credential:?}").contains("p:w$1"));
    }

    #[test]
    fn dockerconfigjson_entries_are_matched_by_canonical_host() {
        let json = r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"},"harbor.example.com:443":{"username":"a","password":"b"}}}"#;
        let s = secret("kubernetes.io/dockerconfigjson", &[(".dockerconfigjson", json)]);
        assert_eq!(from_secret(&s, "docker.io").unwrap(), UpstreamCredential::new("u", "p"));
        assert_eq!(
            from_secret(&s, "harbor.example.com").unwrap(),
            UpstreamCredential::new("a", "b")
        );
        assert_eq!(
            from_secret(&s, "ghcr.io").unwrap_err(),
            CredentialError::NoDockerConfigEntry("team/s".into(), "ghcr.io".into())
        );
    }

    #[test]
    fn unusable_secrets_are_clear_errors_without_the_password() {
        let cases = [
            (
                secret("kubernetes.io/basic-auth", &[("username", "u")]),
                "no \"password\" key",
            ),
            (
                secret("kubernetes.io/tls", &[("tls.crt", "x")]),
                "has type \"kubernetes.io/tls\"",
            ),
            (
                secret("kubernetes.io/dockerconfigjson", &[(".dockerconfigjson", "{")]),
                "not valid JSON",
            ),
        ];
        for (s, want) in cases {
            let error = from_secret(&s, "h").unwrap_err().to_string();
            assert!(error.contains(want), "{error}");
        }
    }

    #[test]
    fn fingerprints_tell_credentials_apart() {
        let a = UpstreamCredential::new("u", "p1");
        assert_eq!(a.fingerprint(), UpstreamCredential::new("u", "p1").fingerprint());
        assert_ne!(a.fingerprint(), UpstreamCredential::new("u", "p2").fingerprint());
    }
}
