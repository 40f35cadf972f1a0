//! What kubelet asks for: the NodePublishVolume and NodeUnpublishVolume
//! requests validated into plain values (the pod, its token, the connectors
//! and files it wants, where to put them). Pure; no I/O.
//!
//! NB: the service account token arrives inside `volume_context`. No error
//! here carries any value read from the tokens attribute, and [`ProxyToken`]
//! prints as `<redacted>`, so neither logs nor gRPC errors can leak it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use connector::ConnectorKey;
use connector::keys;
use connector::selection::{SelectionError, parse_connector_list};

use crate::files::FileName;
use crate::proto::{NodePublishVolumeRequest, NodeUnpublishVolumeRequest, volume_capability};

/// `volume_context` key kubelet sets to `"true"` for inline ephemeral volumes.
pub const EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";
/// Pod information kubelet adds when the CSIDriver has `podInfoOnMount: true`.
pub const POD_NAME: &str = "csi.storage.k8s.io/pod.name";
pub const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
pub const POD_UID: &str = "csi.storage.k8s.io/pod.uid";
pub const SERVICE_ACCOUNT_NAME: &str = "csi.storage.k8s.io/serviceAccount.name";
/// The tokens kubelet requested for the CSIDriver's `tokenRequests`, as JSON
/// `{"<audience>": {"token": "...", "expirationTimestamp": "..."}}`.
pub const SERVICE_ACCOUNT_TOKENS: &str = "csi.storage.k8s.io/serviceAccount.tokens";

/// Why a request cannot be served. Each message names what to fix; none
/// carries a token.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("volume_id is required")]
    MissingVolumeId,
    #[error("target_path is required")]
    MissingTargetPath,
    #[error("target_path {0:?} must be an absolute path without `..` components")]
    InvalidTargetPath(String),
    #[error("volume_capability is required")]
    MissingCapability,
    #[error("volume_capability must request a mount (filesystem) volume; block volumes are not supported")]
    NotAMountVolume,
    #[error(
        "only inline ephemeral volumes are supported ({EPHEMERAL} must be \"true\"; the CSIDriver needs volumeLifecycleModes: [Ephemeral])"
    )]
    NotEphemeral,
    #[error("{0} is missing from the volume context; the CSIDriver needs podInfoOnMount: true")]
    MissingPodInfo(&'static str),
    #[error(
        "no service account token for audience {audience} in the volume context; the CSIDriver needs tokenRequests: [{{audience: {audience}}}]"
    )]
    MissingToken { audience: &'static str },
    #[error("{SERVICE_ACCOUNT_TOKENS} is not a JSON object of {{audience: {{token, expirationTimestamp}}}}")]
    MalformedTokens,
    #[error("no connector named: set the volume attribute {connectors} or {name}", connectors = keys::CSI_ATTRIBUTE_CONNECTORS, name = keys::CSI_ATTRIBUTE_CONNECTOR_NAME)]
    NoConnector,
    #[error("set either the volume attribute {connectors} or {name}, not both", connectors = keys::CSI_ATTRIBUTE_CONNECTORS, name = keys::CSI_ATTRIBUTE_CONNECTOR_NAME)]
    ConflictingConnectors,
    #[error("volume attribute {attribute} names an invalid connector {item:?}: {why}")]
    InvalidConnector {
        attribute: &'static str,
        item: String,
        why: &'static str,
    },
    #[error("volume attribute {attribute} item {0:?} is not a configuration or file name (letters, digits, '.', '_', '-'; '!' before a file leaves it out)", attribute = keys::CSI_ATTRIBUTE_CONFIGURATION_NAMES)]
    UnknownFile(String),
    #[error("volume attribute {attribute} must be a JSON object of {{\"<configuration>\": {{\"<param>\": \"<value>\"}}}}", attribute = keys::CSI_ATTRIBUTE_CONFIGURATION_PARAMS)]
    InvalidParams,
    #[error("volume attribute {attribute} {0:?} is not a duration such as 30m or 1h", attribute = keys::CSI_ATTRIBUTE_TOKEN_EXPIRATION)]
    InvalidExpiration(String),
}

pub type Result<T, E = RequestError> = std::result::Result<T, E>;

/// A ServiceAccount token for the proxy. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyToken(String);

impl ProxyToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token itself, for the files that must carry it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ProxyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProxyToken(<redacted>)")
    }
}

/// The pod the volume is for, as kubelet describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub service_account: String,
}

/// A validated NodePublishVolume request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    pub volume_id: String,
    pub target_path: PathBuf,
    pub pod: PodInfo,
    pub token: ProxyToken,
    /// When kubelet says the token expires (RFC 3339), for logs.
    pub token_expiration: Option<String>,
    /// The connectors, in the order named, without duplicates.
    pub connectors: Vec<ConnectorKey>,
    /// The built-in files to write, in a fixed order.
    pub files: Vec<FileName>,
    /// The class configurations (or files of one) asked for, in order,
    /// without duplicates; resolved against the connectors' classes.
    pub configurations: Vec<String>,
    /// File names left out after the merge (`!<file>`).
    pub exclusions: Vec<String>,
    /// `configuration.params`: per configuration, parameter values.
    pub params: BTreeMap<String, BTreeMap<String, String>>,
}

/// What a volume without `configuration.names` mounts besides the built-in
/// files: what the injected environment points at (`DOCKER_CONFIG`,
/// buildkitd's configuration).
pub const DEFAULT_CONFIGURATIONS: [&str; 2] = ["registry-config", "buildkitd"];

impl PublishRequest {
    /// Validates `request`; names relative to the pod's namespace are made
    /// absolute.
    pub fn parse(request: &NodePublishVolumeRequest) -> Result<Self> {
        let volume_id = volume_id(&request.volume_id)?;
        let target_path = target_path(&request.target_path)?;
        let capability = request
            .volume_capability
            .as_ref()
            .ok_or(RequestError::MissingCapability)?;
        if !matches!(capability.access_type, Some(volume_capability::AccessType::Mount(_))) {
            return Err(RequestError::NotAMountVolume);
        }
        let context = &request.volume_context;
        if context.get(EPHEMERAL).map(String::as_str) != Some("true") {
            return Err(RequestError::NotEphemeral);
        }
        let pod = pod_info(context)?;
        let (token, token_expiration) = proxy_token(context)?;
        let connectors = connectors(context, &pod.namespace)?;
        let names = match context.get(keys::CSI_ATTRIBUTE_CONFIGURATION_NAMES) {
            Some(names) => configuration_names(names)?,
            None => Names {
                files: FileName::BUILT_IN.to_vec(),
                configurations: DEFAULT_CONFIGURATIONS.map(str::to_owned).to_vec(),
                exclusions: Vec::new(),
            },
        };
        let params = match context.get(keys::CSI_ATTRIBUTE_CONFIGURATION_PARAMS) {
            Some(params) => configuration_params(params)?,
            None => BTreeMap::new(),
        };
        if let Some(expiration) = context.get(keys::CSI_ATTRIBUTE_TOKEN_EXPIRATION) {
            duration_seconds(expiration).ok_or_else(|| RequestError::InvalidExpiration(expiration.clone()))?;
        }
        Ok(Self {
            volume_id,
            target_path,
            pod,
            token,
            token_expiration,
            connectors,
            files: names.files,
            configurations: names.configurations,
            exclusions: names.exclusions,
            params,
        })
    }
}

/// A validated NodeUnpublishVolume request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpublishRequest {
    pub volume_id: String,
    pub target_path: PathBuf,
}

impl UnpublishRequest {
    pub fn parse(request: &NodeUnpublishVolumeRequest) -> Result<Self> {
        Ok(Self {
            volume_id: volume_id(&request.volume_id)?,
            target_path: target_path(&request.target_path)?,
        })
    }
}

fn volume_id(value: &str) -> Result<String> {
    if value.trim().is_empty() {
        return Err(RequestError::MissingVolumeId);
    }
    Ok(value.to_owned())
}

/// An absolute path with no `..` (and not `/` itself): the volume is written
/// there as root, so it must not climb out of kubelet's pod directory.
fn target_path(value: &str) -> Result<PathBuf> {
    if value.is_empty() {
        return Err(RequestError::MissingTargetPath);
    }
    let path = Path::new(value);
    let invalid = || RequestError::InvalidTargetPath(value.to_owned());
    if !path.is_absolute() || value.contains('\0') {
        return Err(invalid());
    }
    let mut normal = 0;
    for component in path.components() {
        match component {
            Component::ParentDir => return Err(invalid()),
            Component::Normal(_) => normal += 1,
            _ => {}
        }
    }
    if normal == 0 {
        return Err(invalid());
    }
    Ok(path.to_path_buf())
}

fn pod_info(context: &HashMap<String, String>) -> Result<PodInfo> {
    let required = |key: &'static str| {
        context
            .get(key)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or(RequestError::MissingPodInfo(key))
    };
    Ok(PodInfo {
        namespace: required(POD_NAMESPACE)?,
        name: required(POD_NAME)?,
        uid: context.get(POD_UID).filter(|v| !v.is_empty()).cloned(),
        service_account: required(SERVICE_ACCOUNT_NAME)?,
    })
}

fn proxy_token(context: &HashMap<String, String>) -> Result<(ProxyToken, Option<String>)> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct TokenRequestStatus {
        token: String,
        #[serde(default)]
        expiration_timestamp: Option<String>,
    }
    let audience = keys::PROXY_TOKEN_AUDIENCE;
    let missing = RequestError::MissingToken { audience };
    let raw = context.get(SERVICE_ACCOUNT_TOKENS).ok_or(missing.clone())?;
    // NB: serde's messages quote the offending input, which may be the
    // token; they are dropped, never shown.
    let tokens: HashMap<String, TokenRequestStatus> =
        serde_json::from_str(raw).map_err(|_| RequestError::MalformedTokens)?;
    let status = tokens.get(audience).ok_or(missing.clone())?;
    let token = status.token.trim();
    if token.is_empty() {
        return Err(missing);
    }
    if token.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(RequestError::MalformedTokens);
    }
    Ok((ProxyToken::new(token), status.expiration_timestamp.clone()))
}

fn connectors(context: &HashMap<String, String>, pod_namespace: &str) -> Result<Vec<ConnectorKey>> {
    let list = context.get(keys::CSI_ATTRIBUTE_CONNECTORS);
    let name = context.get(keys::CSI_ATTRIBUTE_CONNECTOR_NAME);
    let (attribute, value) = match (list, name) {
        (Some(_), Some(_)) => return Err(RequestError::ConflictingConnectors),
        (None, None) => return Err(RequestError::NoConnector),
        (Some(list), None) => (keys::CSI_ATTRIBUTE_CONNECTORS, list.clone()),
        (None, Some(name)) => {
            let name = name.trim();
            if name.contains('/') || name.contains(',') || name.is_empty() {
                return Err(RequestError::InvalidConnector {
                    attribute: keys::CSI_ATTRIBUTE_CONNECTOR_NAME,
                    item: name.to_owned(),
                    why: "it must be one connector name (set its namespace in connector.namespace)",
                });
            }
            let value = match context.get(keys::CSI_ATTRIBUTE_CONNECTOR_NAMESPACE).map(|n| n.trim()) {
                Some(namespace) if !namespace.is_empty() => format!("{namespace}/{name}"),
                _ => name.to_owned(),
            };
            (keys::CSI_ATTRIBUTE_CONNECTOR_NAME, value)
        }
    };
    // NB: the selection errors name the pod annotation; say which volume
    // attribute was wrong instead.
    parse_connector_list(&value, pod_namespace).map_err(|error| match error {
        SelectionError::InvalidItem { item, why, .. } => RequestError::InvalidConnector { attribute, item, why },
        SelectionError::Empty { .. } => RequestError::NoConnector,
        SelectionError::TooLong { .. } => RequestError::InvalidConnector {
            attribute,
            item: String::new(),
            why: "the list names more than 64 connectors or is longer than 16 KiB",
        },
    })
}

/// What `configuration.names` asks for.
struct Names {
    files: Vec<FileName>,
    configurations: Vec<String>,
    exclusions: Vec<String>,
}

/// A name of a configuration or of a file (`registry-config`,
/// `config.json`, `settings.xml`): letters, digits, `.`, `_` and `-`, not
/// `.` or `..`, at most 253 bytes.
pub fn is_file_or_configuration_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `configuration.names`: the built-in files (always, unless left out),
/// every named configuration or file of one, less each `!<file>`.
fn configuration_names(value: &str) -> Result<Names> {
    let mut names = Names {
        files: Vec::new(),
        configurations: Vec::new(),
        exclusions: Vec::new(),
    };
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (excluded, name) = match item.strip_prefix('!') {
            Some(name) => (true, name.trim()),
            None => (false, item),
        };
        if !is_file_or_configuration_name(name) {
            return Err(RequestError::UnknownFile(item.to_owned()));
        }
        if excluded {
            names.exclusions.push(name.to_owned());
        } else if FileName::parse(name).is_none() && !names.configurations.iter().any(|c| c == name) {
            names.configurations.push(name.to_owned());
        }
    }
    names.files = FileName::BUILT_IN
        .into_iter()
        .filter(|f| !names.exclusions.iter().any(|e| e == f.as_str()))
        .collect();
    Ok(names)
}

/// `configuration.params`: an object of configurations, each an object of
/// string values (which configurations and parameters exist is the
/// classes' to say, at publish).
fn configuration_params(value: &str) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    let parsed: BTreeMap<String, BTreeMap<String, String>> =
        serde_json::from_str(value).map_err(|_| RequestError::InvalidParams)?;
    if parsed.keys().all(|name| is_file_or_configuration_name(name)) {
        Ok(parsed)
    } else {
        Err(RequestError::InvalidParams)
    }
}

/// A Go-style duration of hours, minutes and seconds (`30m`, `1h30m`,
/// `90s`) in seconds; `None` when it is not one or is zero.
fn duration_seconds(value: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut digits = String::new();
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    for c in value.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        let amount: u64 = digits.parse().ok()?;
        total = total.checked_add(amount.checked_mul(unit)?)?;
        digits.clear();
    }
    (digits.is_empty() && total > 0).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::volume_capability::{AccessType, BlockVolume};

    const TOKEN: &str = "eyJhbGciOi.secret-token.sig";

    /// Volume attributes to set (an empty value removes the key).
    type Attributes<'a> = &'a [(&'a str, &'a str)];

    fn request(attributes: Attributes) -> NodePublishVolumeRequest {
        let mut context: HashMap<String, String> = [
            (EPHEMERAL, "true"),
            (POD_NAME, "app-0"),
            (POD_NAMESPACE, "team"),
            (POD_UID, "c0ffee"),
            (SERVICE_ACCOUNT_NAME, "builder"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        context.insert(
            SERVICE_ACCOUNT_TOKENS.into(),
            format!(r#"{{"connectors-proxy":{{"token":"{TOKEN}","expirationTimestamp":"2030-01-01T00:00:00Z"}}}}"#),
        );
        for (k, v) in attributes {
            if v.is_empty() {
                context.remove(*k);
            } else {
                context.insert(k.to_string(), v.to_string());
            }
        }
        crate::client::inline_volume_request(
            "csi-123",
            "/var/lib/kubelet/pods/c0ffee/volumes/kubernetes.io~csi/connectors-csi/mount",
            context,
        )
    }

    #[test]
    fn connector_attributes_resolve_relative_names_in_the_pod_namespace() {
        let cases: &[(Attributes, &[&str])] = &[
            (&[("connectors", "harbor")], &["team/harbor"]),
            (&[("connectors", "harbor, ops/hub,harbor")], &["team/harbor", "ops/hub"]),
            (&[("connector.name", "harbor")], &["team/harbor"]),
            (
                &[("connector.name", "harbor"), ("connector.namespace", "ops")],
                &["ops/harbor"],
            ),
        ];
        for (attributes, want) in cases {
            let parsed = PublishRequest::parse(&request(attributes)).unwrap();
            let got: Vec<String> = parsed.connectors.iter().map(ToString::to_string).collect();
            assert_eq!(&got, want, "{attributes:?}");
            assert_eq!(parsed.token.expose(), TOKEN);
            assert_eq!(parsed.pod.service_account, "builder");
            assert_eq!(parsed.files, FileName::BUILT_IN.to_vec());
        }
    }

    #[test]
    fn invalid_requests_name_what_to_fix_and_never_the_token() {
        let cases: &[(Attributes, &str)] = &[
            (&[], "no connector named"),
            (&[("connectors", "a"), ("connector.name", "b")], "not both"),
            (
                &[("connectors", "Bad_Name")],
                "volume attribute connectors names an invalid connector",
            ),
            (&[("connector.name", "ns/x")], "one connector name"),
            (&[("connectors", "a"), (EPHEMERAL, "")], "inline ephemeral"),
            (&[("connectors", "a"), (POD_NAMESPACE, "")], "podInfoOnMount"),
            (&[("connectors", "a"), (SERVICE_ACCOUNT_TOKENS, "")], "tokenRequests"),
            (
                &[
                    ("connectors", "a"),
                    (SERVICE_ACCOUNT_TOKENS, r#"{"other":{"token":"x"}}"#),
                ],
                "audience connectors-proxy",
            ),
            (
                &[
                    ("connectors", "a"),
                    (SERVICE_ACCOUNT_TOKENS, &format!("{{\"connectors-proxy\":\"{TOKEN}\"}}")),
                ],
                "is not a JSON object",
            ),
            (
                &[("connectors", "a"), ("configuration.names", "config.json,../etc")],
                "item \"../etc\" is not a configuration or file name",
            ),
            (
                &[("connectors", "a"), ("configuration.names", "!a/b")],
                "item \"!a/b\" is not a configuration or file name",
            ),
            (
                &[("connectors", "a"), ("configuration.params", r#"{"a/b": {"a": "b"}}"#)],
                "configuration.params must be a JSON object",
            ),
            (
                &[("connectors", "a"), ("configuration.params", r#"{"buildkitd": "b"}"#)],
                "configuration.params must be a JSON object",
            ),
            (
                &[("connectors", "a"), ("token.expiration", "soon")],
                "token.expiration \"soon\" is not a duration",
            ),
        ];
        for (attributes, want) in cases {
            let error = PublishRequest::parse(&request(attributes)).unwrap_err().to_string();
            assert!(error.contains(want), "{attributes:?}: {error}");
            assert!(!error.contains("secret-token"), "{error}");
        }
    }

    #[test]
    fn target_paths_must_be_absolute_and_stay_put() {
        for bad in ["", "relative/path", "/a/../b", "/", "/a/..", "/a\0b"] {
            let mut r = request(&[("connectors", "a")]);
            r.target_path = bad.into();
            assert!(PublishRequest::parse(&r).is_err(), "{bad:?}");
        }
        for good in [
            "/a",
            "/var/lib/kubelet/pods/x/volumes/kubernetes.io~csi/v/mount",
            "/a/./b/",
        ] {
            let mut r = request(&[("connectors", "a")]);
            r.target_path = good.into();
            assert!(PublishRequest::parse(&r).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn block_volumes_and_missing_capabilities_are_refused() {
        let mut r = request(&[("connectors", "a")]);
        r.volume_capability.as_mut().unwrap().access_type = Some(AccessType::Block(BlockVolume {}));
        assert_eq!(PublishRequest::parse(&r).unwrap_err(), RequestError::NotAMountVolume);
        r.volume_capability = None;
        assert_eq!(PublishRequest::parse(&r).unwrap_err(), RequestError::MissingCapability);
        let mut r = request(&[("connectors", "a")]);
        r.volume_id = String::new();
        assert_eq!(PublishRequest::parse(&r).unwrap_err(), RequestError::MissingVolumeId);
    }

    fn names_of(names: &str) -> (Vec<&'static str>, Vec<String>, Vec<String>) {
        let parsed = PublishRequest::parse(&request(&[("connectors", "a"), ("configuration.names", names)])).unwrap();
        (
            parsed.files.iter().map(|f| f.as_str()).collect(),
            parsed.configurations,
            parsed.exclusions,
        )
    }

    const BUILT_IN: [&str; 6] = [
        ".env",
        "http.proxy",
        "https.proxy",
        "ca.crt",
        "ca-bundle.crt",
        "context.token",
    ];

    #[test]
    fn configuration_names_add_configurations_to_the_built_in_files() {
        assert_eq!(names_of(" , "), (BUILT_IN.to_vec(), vec![], vec![]));
        // The connector docs' names (current and legacy) and file names of a
        // class's configurations are resolved against the classes, in order.
        let (files, configurations, _) = names_of("buildkitd, registry-config,buildkitd, config.json, .env");
        assert_eq!(files, BUILT_IN);
        assert_eq!(configurations, ["buildkitd", "registry-config", "config.json"]);
        // Without the attribute: what the injected environment points at.
        let parsed = PublishRequest::parse(&request(&[("connectors", "a")])).unwrap();
        assert_eq!(parsed.configurations, DEFAULT_CONFIGURATIONS);
    }

    #[test]
    fn exclusions_leave_files_out_after_the_merge() {
        let (files, configurations, exclusions) =
            names_of("registry-config,!context.token,!http.proxy, !https.proxy, !buildkitd.toml");
        assert_eq!(files, [".env", "ca.crt", "ca-bundle.crt"]);
        assert_eq!(configurations, ["registry-config"]);
        assert_eq!(
            exclusions,
            ["context.token", "http.proxy", "https.proxy", "buildkitd.toml"]
        );
    }

    #[test]
    fn params_and_token_expiration_are_accepted() {
        for (attribute, value) in [
            (
                "configuration.params",
                r#"{"registry-config": {"mirrorRepository": "x"}}"#,
            ),
            ("configuration.params", "{}"),
            ("token.expiration", "30m"),
            ("token.expiration", "1h30m"),
            ("token.expiration", "600s"),
        ] {
            PublishRequest::parse(&request(&[("connectors", "a"), (attribute, value)]))
                .unwrap_or_else(|e| panic!("{attribute}={value}: {e}"));
        }
        for bad in ["", "0m", "30", "m", "1d", "-5m", "99999999999999999999h"] {
            assert_eq!(duration_seconds(bad), None, "{bad:?}");
        }
        assert_eq!(duration_seconds("1h30m15s"), Some(5415));
    }

    #[test]
    fn tokens_never_print() {
        let parsed = PublishRequest::parse(&request(&[("connectors", "a")])).unwrap();
        assert!(!format!("{parsed:?}").contains("secret-token"));
    }
}
