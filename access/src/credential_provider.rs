//! kubelet's image credential provider protocol
//! (`credentialprovider.kubelet.k8s.io/v1`, with the service account tokens
//! of KEP-4412): `connectors credential-provider` answers kubelet's request
//! for an image with the pod's own projected token as the password, so a
//! node pull reaches the proxy as that pod's ServiceAccount and is decided
//! by SubjectAccessReview exactly as the pod's own pulls are.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

/// The protocol version spoken, in and out.
pub const API_VERSION: &str = "credentialprovider.kubelet.k8s.io/v1";

/// The user name given with the token; the proxy reads only the password.
pub const USERNAME: &str = "connectors";

/// How long before the token's expiry kubelet stops reusing the answer.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// The largest request read from kubelet.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Why no credential can be given. Never holds the token.
#[derive(Debug, thiserror::Error)]
pub enum CredentialProviderError {
    #[error("the request is not JSON: {0}")]
    NotJson(String),
    #[error("expected a CredentialProviderRequest of {API_VERSION}, got kind {kind:?} of {api_version:?}")]
    Kind { kind: String, api_version: String },
    #[error("the request names no image")]
    NoImage,
    #[error("the image {0:?} names no registry host")]
    NoRegistry(String),
    #[error(
        "kubelet sent no service account token: set tokenAttributes (serviceAccountTokenAudience: connectors-proxy, requireServiceAccount: true) for this provider in kubelet's credential provider configuration"
    )]
    NoToken,
}

/// The response to one request: the pod's token for the image's registry
/// host, cached by kubelet until shortly before the token expires.
pub fn respond(request: &str, now: SystemTime) -> Result<String, CredentialProviderError> {
    let request: Value = serde_json::from_str(request).map_err(|e| CredentialProviderError::NotJson(e.to_string()))?;
    let field = |name: &str| request.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
    let (kind, api_version) = (field("kind"), field("apiVersion"));
    if kind != "CredentialProviderRequest" || api_version != API_VERSION {
        return Err(CredentialProviderError::Kind { kind, api_version });
    }
    let image = field("image");
    if image.is_empty() {
        return Err(CredentialProviderError::NoImage);
    }
    let registry = registry_host(&image).ok_or_else(|| CredentialProviderError::NoRegistry(image.clone()))?;
    let token = field("serviceAccountToken");
    if token.is_empty() {
        return Err(CredentialProviderError::NoToken);
    }
    let remaining = crate::cluster::jwt_expiry(&token)
        .and_then(|expiry| expiry.checked_sub(now.duration_since(SystemTime::UNIX_EPOCH).ok()?))
        .and_then(|left| left.checked_sub(EXPIRY_MARGIN))
        .unwrap_or_default();
    let response = json!({
        "apiVersion": API_VERSION,
        "kind": "CredentialProviderResponse",
        "cacheKeyType": "Registry",
        "cacheDuration": format!("{}s", remaining.as_secs()),
        "auth": {registry: {"username": USERNAME, "password": token}},
    });
    Ok(response.to_string())
}

/// `host[:port]` of an image reference, when it names one (a first
/// component with a dot or a port, or `localhost`).
fn registry_host(image: &str) -> Option<&str> {
    let (first, _) = image.split_once('/')?;
    (first.contains(['.', ':']) || first == "localhost").then_some(first)
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;

    fn jwt(exp: u64) -> String {
        let encode = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.sig",
            encode(r#"{"alg":"RS256"}"#),
            encode(&format!(r#"{{"exp":{exp},"sub":"system:serviceaccount:lab:builder"}}"#))
        )
    }

    fn request(image: &str, token: Option<&str>) -> String {
        let mut request = json!({"apiVersion": API_VERSION, "kind": "CredentialProviderRequest", "image": image});
        if let Some(token) = token {
            request["serviceAccountToken"] = json!(token);
        }
        request.to_string()
    }

    #[test]
    fn the_pods_token_is_the_password_for_the_images_registry_until_it_nearly_expires() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let token = jwt(1_900_000_000 + 3600);
        let image = "127.0.0.1:7480/namespaces/lab/connectors/harbor/app:v1";
        let response: Value = serde_json::from_str(&respond(&request(image, Some(&token)), now).unwrap()).unwrap();
        assert_eq!(response["kind"], "CredentialProviderResponse");
        assert_eq!(response["apiVersion"], API_VERSION);
        assert_eq!(response["cacheKeyType"], "Registry");
        assert_eq!(response["cacheDuration"], "3540s");
        assert_eq!(
            response["auth"],
            json!({"127.0.0.1:7480": {"username": USERNAME, "password": token}})
        );
        // An expired or opaque token is given but not cached.
        let stale: Value = serde_json::from_str(&respond(&request(image, Some(&jwt(5))), now).unwrap()).unwrap();
        assert_eq!(stale["cacheDuration"], "0s");
        let opaque: Value = serde_json::from_str(&respond(&request(image, Some("opaque")), now).unwrap()).unwrap();
        assert_eq!(opaque["cacheDuration"], "0s");
    }

    #[test]
    fn requests_without_a_token_or_of_another_kind_are_refused_without_echoing_the_token() {
        let now = SystemTime::now();
        let image = "proxy.example:8443/namespaces/lab/connectors/harbor/app";
        let error = respond(&request(image, None), now).unwrap_err();
        assert!(error.to_string().contains("serviceAccountTokenAudience"), "{error}");
        assert!(matches!(
            respond(&request("library/nginx", Some("secret-token")), now),
            Err(CredentialProviderError::NoRegistry(_))
        ));
        let old = json!({"apiVersion": "credentialprovider.kubelet.k8s.io/v1alpha1", "kind": "CredentialProviderRequest", "image": image, "serviceAccountToken": "secret-token"});
        let error = respond(&old.to_string(), now).unwrap_err();
        assert!(matches!(error, CredentialProviderError::Kind { .. }));
        assert!(!error.to_string().contains("secret-token"));
        assert!(matches!(respond("{", now), Err(CredentialProviderError::NotJson(_))));
        assert!(matches!(
            respond(&request("", Some("t")), now),
            Err(CredentialProviderError::NoImage)
        ));
    }
}
