//! Annotation, label and object names that the webhook, proxy and CSI driver
//! agree on. Every key lives here once and is imported everywhere else.

/// Pod annotation (and namespace annotation, for defaults) naming the
/// connectors a pod uses: `name`, `ns/name`, comma-separated.
pub const CONNECTOR_ANNOTATION: &str = "connectors.cpaas.io/connector";

/// Namespace label opting every pod of the namespace in (`"true"`), and pod
/// annotation opting one pod out (`"false"`).
pub const PROXY_INJECT: &str = "connectors.cpaas.io/proxy-inject";

/// Pod annotation the webhook writes once it has mutated a pod: the
/// connectors it injected. Its presence makes a second pass a no-op.
pub const INJECTED_ANNOTATION: &str = "connectors.cpaas.io/injected";

/// Pod label the webhook sets (`"true"`) beside [`INJECTED_ANNOTATION`],
/// so the proxy can watch injected pods only (a label selector; annotations
/// cannot be selected).
pub const INJECTED_LABEL: &str = "connectors.cpaas.io/injected";

/// Pod annotation recording the images the webhook rewrote, as a JSON object
/// keyed by `<field>/<container name>` (e.g. `containers/app`).
pub const ORIGINAL_IMAGES_ANNOTATION: &str = "connectors.cpaas.io/original-images";

/// Pod annotation carrying the proxy CA (PEM); a downwardAPI volume projects
/// it into every container, so trust never depends on an object in the
/// pod's namespace.
pub const PROXY_CA_ANNOTATION: &str = "connectors.cpaas.io/proxy-ca";

/// Annotation present on mirror (static) pods; those are never mutated.
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Connector annotation kept for users' descriptions.
pub const DESCRIPTION_ANNOTATION: &str = "cpaas.io/description";

/// Connector annotation: `"true"` lets forward mode intercept the hosts of
/// `spec.addressExtensions` too. Without it extensions only receive the
/// credential (a token realm, storage) and never make forward mode serve
/// another host (say `ghcr.io`) for every pod naming the connector.
pub const INTERCEPT_EXTENSIONS_ANNOTATION: &str = "connectors.cpaas.io/intercept-address-extensions";

/// Connector annotation: `"true"` lets admission in every namespace see the
/// connector (that it exists, and its registry host), so images of its
/// registry in pods of other namespaces are rewritten to the proxy. Without
/// it, a pod naming a connector of another namespace is admitted the same
/// whether that connector exists or not (admission cannot check RBAC, so it
/// must not be an oracle): the connector is listed in the pod's proxy
/// settings and CSI volume, where the proxy and the CSI plugin authorize it,
/// and no image is rewritten for it.
pub const SHARED_ANNOTATION: &str = "connectors.cpaas.io/shared";

/// The CSI driver that renders per-pod client configuration.
pub const CSI_DRIVER: &str = "connectors-csi";

/// Names of the volumes the webhook adds to a pod.
pub const CSI_VOLUME: &str = "connectors-csi";
pub const CA_VOLUME: &str = "connectors-ca";

/// CSI volume attribute listing the pod's connectors as `ns/name,...`.
pub const CSI_ATTRIBUTE_CONNECTORS: &str = "connectors";

/// CSI volume attribute naming one connector (instead of
/// [`CSI_ATTRIBUTE_CONNECTORS`]), in the pod's namespace unless
/// [`CSI_ATTRIBUTE_CONNECTOR_NAMESPACE`] says otherwise.
pub const CSI_ATTRIBUTE_CONNECTOR_NAME: &str = "connector.name";
pub const CSI_ATTRIBUTE_CONNECTOR_NAMESPACE: &str = "connector.namespace";

/// CSI volume attribute choosing which files the volume holds beyond the
/// built-in ones: comma-separated configuration names (`registry-config`,
/// its legacy names `docker-config` and `config`, `buildkitd`) or file
/// names, and `!<file>` to leave a file out; every file when absent.
pub const CSI_ATTRIBUTE_CONFIGURATION_NAMES: &str = "configuration.names";
/// CSI volume attribute with parameters per configuration, as JSON
/// `{"<configuration>": {"<param>": "<value>"}}`.
pub const CSI_ATTRIBUTE_CONFIGURATION_PARAMS: &str = "configuration.params";
/// CSI volume attribute asking for a token lifetime (`30m`, `1h`). Accepted
/// for the connector docs' volumes; kubelet renews the token before it
/// expires, so files never go stale whatever it says.
pub const CSI_ATTRIBUTE_TOKEN_EXPIRATION: &str = "token.expiration";

/// The audience of the ServiceAccount tokens the proxy accepts, and the key
/// of the token kubelet hands the CSI driver (CSIDriver `tokenRequests`).
pub const PROXY_TOKEN_AUDIENCE: &str = "connectors-proxy";

/// The files of the CSI volume, as the webhook's environment names them.
pub const CSI_FILE_ENV: &str = ".env";
pub const CSI_FILE_HTTP_PROXY: &str = "http.proxy";
pub const CSI_FILE_HTTPS_PROXY: &str = "https.proxy";
pub const CSI_FILE_DOCKER_CONFIG: &str = "config.json";
pub const CSI_FILE_BUILDKITD: &str = "buildkitd.toml";
pub const CSI_FILE_CA: &str = "ca.crt";
pub const CSI_FILE_CA_BUNDLE: &str = "ca-bundle.crt";
pub const CSI_FILE_TOKEN: &str = "context.token";

/// Namespaces that are never selected, whatever their labels say.
pub const KUBE_SYSTEM_NAMESPACE: &str = "kube-system";

/// The namespace the product installs into by default.
pub const DEFAULT_INSTALL_NAMESPACE: &str = "connectors-system";
