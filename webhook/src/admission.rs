//! `admission.k8s.io/v1` AdmissionReview in and out: decoding the request,
//! running the mutation, and encoding the response the API server expects.
//!
//! NB: these types are our own rather than kube-core's: kube-core encodes
//! `response.patch` as an array of numbers where the API server needs a base64
//! string (kube-rs#1781), and its typed object would drop pod fields newer
//! than the k8s-openapi version we build with.

use base64::Engine;
use connector::store::ConnectorStore;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use connector::injection::InjectionConfig;

use crate::mutation::{self, Mode, MutationError, Outcome};

/// The API version of the reviews we accept and answer.
pub(crate) const ADMISSION_API_VERSION: &str = "admission.k8s.io/v1";

/// The incoming review. Only the fields we use are decoded; the rest are
/// ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub request: Option<AdmissionRequest>,
}

/// The `request` of a review.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    pub uid: String,
    pub kind: GroupVersionKind,
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    pub operation: String,
    #[serde(default)]
    pub object: Option<Value>,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

/// `kind` of a review request.
#[derive(Debug, Deserialize)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub kind: String,
}

/// The review we answer with.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReviewResponse {
    pub api_version: String,
    pub kind: String,
    pub response: AdmissionResponse,
}

/// The `response` of a review.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    pub uid: String,
    pub allowed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// The JSON patch, base64-encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A `metav1.Status` with the fields the API server shows to users.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub code: u16,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A review that cannot be answered at all: the HTTP handler turns it into a
/// 400 with this message.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the body is not an AdmissionReview: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("the AdmissionReview has apiVersion {0:?}; only admission.k8s.io/v1 is served")]
    ApiVersion(String),
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("the AdmissionReview request has an empty uid")]
    NoUid,
    #[error("the review was interrupted")]
    Interrupted,
}

/// What happened to one review, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Mutated,
    Unchanged,
    Skipped(&'static str),
    Denied,
}

impl Verdict {
    /// A short stable label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Mutated => "mutated",
            Verdict::Unchanged => "unchanged",
            Verdict::Skipped(_) => "skipped",
            Verdict::Denied => "denied",
        }
    }
}

/// The answer to one review, with what it means.
#[derive(Debug)]
pub struct Reviewed {
    pub response: AdmissionReviewResponse,
    pub verdict: Verdict,
    pub namespace: String,
    pub dry_run: bool,
}

/// Decodes a review body, runs the mutation and builds the response.
pub fn review(body: &[u8], store: &dyn ConnectorStore, config: &InjectionConfig) -> Result<Reviewed, ReviewError> {
    let review: AdmissionReview = serde_json::from_slice(body).map_err(ReviewError::Malformed)?;
    match review.api_version.as_deref() {
        Some(ADMISSION_API_VERSION) | None => {}
        Some(other) => return Err(ReviewError::ApiVersion(other.to_owned())),
    }
    let request = review.request.ok_or(ReviewError::NoRequest)?;
    if request.uid.is_empty() {
        return Err(ReviewError::NoUid);
    }
    let namespace = request
        .namespace
        .clone()
        .or_else(|| {
            request
                .object
                .as_ref()?
                .pointer("/metadata/namespace")?
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "default".to_owned());
    let dry_run = request.dry_run.unwrap_or(false);
    let (response, verdict) = answer(&request, &namespace, store, config);
    Ok(Reviewed {
        response: AdmissionReviewResponse {
            api_version: ADMISSION_API_VERSION.to_owned(),
            kind: "AdmissionReview".to_owned(),
            response,
        },
        verdict,
        namespace,
        dry_run,
    })
}

fn answer(
    request: &AdmissionRequest,
    namespace: &str,
    store: &dyn ConnectorStore,
    config: &InjectionConfig,
) -> (AdmissionResponse, Verdict) {
    let uid = request.uid.clone();
    let is_pod = request.kind.group.is_empty() && request.kind.version == "v1" && request.kind.kind == "Pod";
    if !is_pod {
        let got = format!("{}/{} {}", request.kind.group, request.kind.version, request.kind.kind);
        return (
            deny(
                uid,
                400,
                format!(
                    "the connectors webhook mutates only core/v1 Pods, not {got}; check the webhook configuration's rules"
                ),
            ),
            Verdict::Denied,
        );
    }
    let mode = match (request.operation.as_str(), request.sub_resource.as_deref()) {
        ("CREATE", None | Some("")) => Mode::Create,
        ("UPDATE", Some("ephemeralcontainers")) => Mode::EphemeralContainers,
        _ => return (allow(uid), Verdict::Skipped("operation")),
    };
    let Some(object) = &request.object else {
        return (
            deny(uid, 400, "the review carries no object".to_owned()),
            Verdict::Denied,
        );
    };
    match mutation::mutate_pod(object, namespace, mode, store, config) {
        Ok(Outcome::Skipped(skip)) => (allow(uid), Verdict::Skipped(skip.as_str())),
        Ok(Outcome::Unchanged { .. }) => (allow(uid), Verdict::Unchanged),
        Ok(Outcome::Patched { patch, .. }) => match serde_json::to_vec(&patch) {
            Ok(bytes) => (
                AdmissionResponse {
                    patch: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
                    patch_type: Some("JSONPatch".to_owned()),
                    ..allow(uid)
                },
                Verdict::Mutated,
            ),
            Err(error) => (
                deny(uid, 500, format!("failed to encode the patch: {error}")),
                Verdict::Denied,
            ),
        },
        Err(error) => {
            let code = match error {
                MutationError::UnknownConnector { .. } => 404,
                _ => 400,
            };
            let pod = request.name.as_deref().unwrap_or("(generated name)");
            (
                deny(uid, code, format!("connectors: pod {namespace}/{pod}: {error}")),
                Verdict::Denied,
            )
        }
    }
}

fn allow(uid: String) -> AdmissionResponse {
    AdmissionResponse {
        uid,
        allowed: true,
        status: None,
        patch: None,
        patch_type: None,
        warnings: Vec::new(),
    }
}

fn deny(uid: String, code: u16, message: String) -> AdmissionResponse {
    let reason = match code {
        404 => "NotFound",
        500 => "InternalError",
        _ => "BadRequest",
    };
    AdmissionResponse {
        status: Some(Status {
            code,
            message,
            reason: Some(reason.to_owned()),
        }),
        allowed: false,
        ..allow(uid)
    }
}
