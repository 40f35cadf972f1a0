//! CA rotation with an overlap, so that nothing that trusts the old CA
//! breaks: a CA Secret (`tls.crt`/`tls.key`, the CA that signs; `ca.crt`,
//! the bundle everything trusts) moves through three phases.
//!
//! 1. **Introduce**: a new CA is generated into `next.crt`/`next.key` and
//!    added to the bundle. The old CA still signs. Every holder of the
//!    bundle (the proxy CA ConfigMaps and so the CSI volumes, the node pull
//!    endpoint and the webhook's pod annotation; the webhook's `caBundle`)
//!    gets both.
//! 2. **Promote**, one overlap later: the new CA signs (serving certificates
//!    are re-issued from it, the proxy mints from it); the old one stays in
//!    the bundle, for certificates it issued that are still being served.
//! 3. **Retire**, one more overlap later: the bundle is the new CA alone.
//!
//! A rotation starts when the signing CA has less than a third of its
//! validity left, or when an admin annotates the Secret with
//! [`ROTATE_ANNOTATION`]. The overlap counts from
//! [`BUNDLE_CHANGED_ANNOTATION`] (Unix seconds), so a restarted or new
//! leader carries on where the last one was. A Secret whose signing CA is
//! unusable or expired is replaced at once: there is nothing to overlap with.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use certs::{CertificateAuthority, CertificateSummary};
use k8s_openapi::api::core::v1::Secret;

/// The keys of a `kubernetes.io/tls` Secret, and of the CA bundle in it.
pub(crate) const CA_CERT_KEY: &str = "ca.crt";
pub(crate) const TLS_CERT_KEY: &str = "tls.crt";
pub(crate) const TLS_KEY_KEY: &str = "tls.key";

/// Set (to any value) on a CA Secret to start a rotation now; removed when
/// the rotation starts.
pub const ROTATE_ANNOTATION: &str = "connectors.cpaas.io/rotate";
/// When the Secret's bundle last changed, in Unix seconds.
pub const BUNDLE_CHANGED_ANNOTATION: &str = "connectors.cpaas.io/bundle-changed-at";
/// The CA being introduced (phase 1).
pub(crate) const NEXT_CERT_KEY: &str = "next.crt";
pub(crate) const NEXT_KEY_KEY: &str = "next.key";

/// What to do with a CA Secret.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Use it as it is; look again at `recheck` (a phase ends then).
    Keep {
        signing: CertificateAuthority,
        bundle: String,
        recheck: Option<SystemTime>,
    },
    /// Write `data` (and the bundle's change time) first, then use it.
    Write {
        signing: CertificateAuthority,
        bundle: String,
        data: BTreeMap<String, String>,
        changed_at: SystemTime,
        recheck: Option<SystemTime>,
        step: Step,
    },
    /// Unusable: replace it with a new CA, no overlap.
    Replace { why: String },
}

/// A rotation step, for logs, Events and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Introduce,
    Promote,
    Retire,
    /// The bundle's change time was missing: recorded, nothing else changed.
    Record,
}

impl Step {
    /// The Event reason.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Step::Introduce => "CARotationStarted",
            Step::Promote => "CAPromoted",
            Step::Retire => "CARetired",
            Step::Record => "CABundleRecorded",
        }
    }

    pub(crate) fn describe(self, overlap: Duration) -> String {
        let overlap = humantime(overlap);
        match self {
            Step::Introduce => {
                format!("a new CA is trusted beside the current one; it signs in {overlap}, once every bundle holds it")
            }
            Step::Promote => format!("the new CA signs now; the old one stays trusted for {overlap} more"),
            Step::Retire => "the old CA is no longer trusted; the rotation is complete".to_owned(),
            Step::Record => "recorded when the bundle last changed".to_owned(),
        }
    }
}

fn humantime(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s >= 3_600 && s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The text of `key` in the Secret's data, if it is there and UTF-8.
pub(crate) fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
}

fn annotation<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret.metadata.annotations.as_ref()?.get(key).map(String::as_str)
}

/// Unix seconds, as the annotation holds them.
pub(crate) fn unix_seconds(time: SystemTime) -> String {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        .to_string()
}

fn from_unix_seconds(text: &str) -> Option<SystemTime> {
    text.trim()
        .parse::<u64>()
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// The certificates of a PEM bundle, each as its own PEM block.
fn bundle_certificates(bundle: &str) -> Vec<String> {
    certs::load_certs_pem(bundle)
        .map(|certs| {
            certs
                .iter()
                .map(|der| certs::pem::encode_pem("CERTIFICATE", der))
                .collect()
        })
        .unwrap_or_default()
}

/// Joins PEM blocks into one bundle, signing CA first.
fn join(blocks: &[&str]) -> String {
    let mut bundle = String::new();
    for block in blocks {
        bundle.push_str(block.trim_end());
        bundle.push('\n');
    }
    bundle
}

/// A CA Secret's data: the signing CA, the bundle, and the CA being
/// introduced, if any.
pub(crate) fn secret_data(
    signing: &CertificateAuthority,
    bundle: &str,
    next: Option<&CertificateAuthority>,
) -> BTreeMap<String, String> {
    let mut data = BTreeMap::from([
        (TLS_CERT_KEY.to_owned(), signing.cert_pem().to_owned()),
        (TLS_KEY_KEY.to_owned(), signing.key_pem()),
        (CA_CERT_KEY.to_owned(), bundle.to_owned()),
    ]);
    if let Some(next) = next {
        data.insert(NEXT_CERT_KEY.to_owned(), next.cert_pem().to_owned());
        data.insert(NEXT_KEY_KEY.to_owned(), next.key_pem());
    }
    data
}

/// What to do with CA Secret `secret` at `now`; `generate` makes a new CA
/// when a rotation starts.
pub(crate) fn plan(
    secret: &Secret,
    now: SystemTime,
    overlap: Duration,
    generate: impl FnOnce() -> Result<CertificateAuthority, certs::authority::Error>,
) -> Result<Plan, certs::authority::Error> {
    let (Some(cert), Some(key)) = (secret_text(secret, TLS_CERT_KEY), secret_text(secret, TLS_KEY_KEY)) else {
        return Ok(Plan::Replace {
            why: "it has no tls.crt or tls.key".to_owned(),
        });
    };
    let signing = match CertificateAuthority::from_pem(&cert, &key) {
        Ok(ca) => ca,
        Err(error) => return Ok(Plan::Replace { why: error.to_string() }),
    };
    let summary = match CertificateSummary::from_pem(&cert) {
        Ok(summary) => summary,
        Err(error) => return Ok(Plan::Replace { why: error.to_string() }),
    };
    let next = match (secret_text(secret, NEXT_CERT_KEY), secret_text(secret, NEXT_KEY_KEY)) {
        (Some(cert), Some(key)) => CertificateAuthority::from_pem(&cert, &key).ok(),
        _ => None,
    };
    let expired = summary.remaining(now).is_zero();
    if expired && next.is_none() {
        return Ok(Plan::Replace {
            why: "it has expired".to_owned(),
        });
    }
    let bundle = secret_text(secret, CA_CERT_KEY).unwrap_or_else(|| signing.cert_pem().to_owned());
    let trusted = bundle_certificates(&bundle);
    let changed_at = annotation(secret, BUNDLE_CHANGED_ANNOTATION).and_then(from_unix_seconds);
    let phase_ends = changed_at.map(|at| at + overlap);
    let rotating = next.is_some() || trusted.len() > 1;
    if rotating && changed_at.is_none() {
        // NB: a bundle of several CAs without its change time (an older
        // controller, a hand edit): the overlap starts now.
        return Ok(Plan::Write {
            data: secret_data(&signing, &bundle, next.as_ref()),
            signing,
            bundle,
            changed_at: now,
            recheck: Some(now + overlap),
            step: Step::Record,
        });
    }
    if let Some(next) = next {
        if expired || phase_ends.is_some_and(|end| now >= end) {
            let bundle = join(&[next.cert_pem(), signing.cert_pem()]);
            return Ok(Plan::Write {
                data: secret_data(&next, &bundle, None),
                signing: next,
                bundle,
                changed_at: now,
                recheck: Some(now + overlap),
                step: Step::Promote,
            });
        }
        return Ok(Plan::Keep {
            signing,
            bundle,
            recheck: phase_ends,
        });
    }
    if trusted.len() > 1 {
        if phase_ends.is_some_and(|end| now >= end) {
            let bundle = join(&[signing.cert_pem()]);
            return Ok(Plan::Write {
                data: secret_data(&signing, &bundle, None),
                signing,
                bundle,
                changed_at: now,
                recheck: None,
                step: Step::Retire,
            });
        }
        return Ok(Plan::Keep {
            signing,
            bundle,
            recheck: phase_ends,
        });
    }
    let requested = annotation(secret, ROTATE_ANNOTATION).is_some();
    if requested || summary.due_for_renewal(now) {
        let next = generate()?;
        let bundle = join(&[signing.cert_pem(), next.cert_pem()]);
        return Ok(Plan::Write {
            data: secret_data(&signing, &bundle, Some(&next)),
            signing,
            bundle,
            changed_at: now,
            recheck: Some(now + overlap),
            step: Step::Introduce,
        });
    }
    // NB: a bundle that is not exactly the signing CA (e.g. no ca.crt) is
    // rewritten without any overlap: it trusted nothing else.
    let exact = join(&[signing.cert_pem()]);
    if trusted.len() == 1 && bundle != exact {
        return Ok(Plan::Write {
            data: secret_data(&signing, &exact, None),
            signing,
            bundle: exact,
            changed_at: changed_at.unwrap_or(now),
            recheck: None,
            step: Step::Record,
        });
    }
    Ok(Plan::Keep {
        signing,
        bundle,
        recheck: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    const OVERLAP: Duration = Duration::from_secs(3600);

    fn ca(name: &str, validity: Duration) -> CertificateAuthority {
        CertificateAuthority::generate(name, validity).unwrap()
    }

    fn secret(data: &BTreeMap<String, String>, annotations: &[(&str, String)]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            metadata: kube::api::ObjectMeta {
                annotations: Some(annotations.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()),
                ..Default::default()
            },
            ..Secret::default()
        }
    }

    fn written(plan: Plan) -> (BTreeMap<String, String>, SystemTime, Step, String) {
        match plan {
            Plan::Write {
                data,
                changed_at,
                step,
                bundle,
                ..
            } => (data, changed_at, step, bundle),
            other => panic!("expected a write, got {other:?}"),
        }
    }

    fn never() -> Result<CertificateAuthority, certs::authority::Error> {
        panic!("no CA should be generated")
    }

    #[test]
    fn a_requested_rotation_trusts_both_then_signs_with_the_new_then_trusts_only_it() {
        let year = Duration::from_secs(365 * 24 * 3600);
        let old = ca("old", 5 * year);
        let now = SystemTime::now();
        let stable = secret(&secret_data(&old, &join(&[old.cert_pem()]), None), &[]);
        assert!(matches!(
            plan(&stable, now, OVERLAP, never).unwrap(),
            Plan::Keep { recheck: None, .. }
        ));

        // 1. Introduce: the old one signs, both are trusted.
        let requested = secret(&stable.data_text(), &[(ROTATE_ANNOTATION, "now".into())]);
        let new = ca("new", 5 * year);
        let new_cert = new.cert_pem().to_owned();
        let (data, at, step, bundle) = written(plan(&requested, now, OVERLAP, || Ok(new)).unwrap());
        assert_eq!(step, Step::Introduce);
        assert_eq!(data[TLS_CERT_KEY], old.cert_pem());
        assert_eq!(bundle_certificates(&bundle).len(), 2);
        assert!(bundle.starts_with(old.cert_pem().trim_end()) && bundle.contains(new_cert.trim_end()));
        assert_eq!(data[NEXT_CERT_KEY], new_cert);
        let introducing = secret(&data, &[(BUNDLE_CHANGED_ANNOTATION, unix_seconds(at))]);

        // Within the overlap nothing moves; the recheck is when it ends.
        match plan(&introducing, now + OVERLAP / 2, OVERLAP, never).unwrap() {
            Plan::Keep { signing, recheck, .. } => {
                assert_eq!(signing.cert_pem(), old.cert_pem());
                let recheck = recheck.unwrap();
                assert!(recheck > now + OVERLAP - Duration::from_secs(2) && recheck <= now + OVERLAP);
            }
            other => panic!("{other:?}"),
        }

        // 2. Promote: the new one signs, the old one is still trusted.
        let later = now + OVERLAP + Duration::from_secs(1);
        let (data, at, step, bundle) = written(plan(&introducing, later, OVERLAP, never).unwrap());
        assert_eq!(step, Step::Promote);
        assert_eq!(data[TLS_CERT_KEY], new_cert);
        assert!(!data.contains_key(NEXT_CERT_KEY) && !data.contains_key(NEXT_KEY_KEY));
        assert_eq!(bundle_certificates(&bundle).len(), 2);
        assert!(bundle.starts_with(new_cert.trim_end()));
        let promoted = secret(&data, &[(BUNDLE_CHANGED_ANNOTATION, unix_seconds(at))]);
        assert!(matches!(
            plan(&promoted, later + OVERLAP / 2, OVERLAP, never).unwrap(),
            Plan::Keep { .. }
        ));

        // 3. Retire: only the new one is trusted.
        let (data, _, step, bundle) =
            written(plan(&promoted, later + OVERLAP + Duration::from_secs(1), OVERLAP, never).unwrap());
        assert_eq!(step, Step::Retire);
        assert_eq!(bundle, new_cert);
        assert_eq!(data[CA_CERT_KEY], new_cert);
    }

    #[test]
    fn a_ca_due_for_renewal_starts_a_rotation_by_itself() {
        // Ten seconds of validity, older than two thirds of it by now.
        let old = ca("short", Duration::from_secs(9));
        let stable = secret(&secret_data(&old, old.cert_pem(), None), &[]);
        let later = SystemTime::now() + Duration::from_secs(7);
        let (_, _, step, _) = written(plan(&stable, later, OVERLAP, || Ok(ca("new", OVERLAP * 100))).unwrap());
        assert_eq!(step, Step::Introduce);
    }

    #[test]
    fn unusable_or_expired_cas_are_replaced_at_once_but_an_expired_one_with_a_successor_promotes_it() {
        let empty = Secret::default();
        assert!(matches!(
            plan(&empty, SystemTime::now(), OVERLAP, never).unwrap(),
            Plan::Replace { .. }
        ));
        let old = ca("short", Duration::from_secs(5));
        let after = SystemTime::now() + Duration::from_secs(60);
        let stable = secret(&secret_data(&old, old.cert_pem(), None), &[]);
        match plan(&stable, after, OVERLAP, never).unwrap() {
            Plan::Replace { why } => assert_eq!(why, "it has expired"),
            other => panic!("{other:?}"),
        }
        let new = ca("new", OVERLAP * 100);
        let bundle = join(&[old.cert_pem(), new.cert_pem()]);
        let introducing = secret(
            &secret_data(&old, &bundle, Some(&new)),
            &[(BUNDLE_CHANGED_ANNOTATION, unix_seconds(SystemTime::now()))],
        );
        let (data, _, step, _) = written(plan(&introducing, after, OVERLAP, never).unwrap());
        assert_eq!((step, data[TLS_CERT_KEY].as_str()), (Step::Promote, new.cert_pem()));
    }

    #[test]
    fn a_rotation_without_its_change_time_starts_the_overlap_now() {
        let old = ca("old", OVERLAP * 100);
        let new = ca("new", OVERLAP * 100);
        let introducing = secret(
            &secret_data(&old, &join(&[old.cert_pem(), new.cert_pem()]), Some(&new)),
            &[],
        );
        let now = SystemTime::now();
        let (data, at, step, _) = written(plan(&introducing, now, OVERLAP, never).unwrap());
        assert_eq!((step, at), (Step::Record, now));
        assert_eq!(data[NEXT_CERT_KEY], new.cert_pem(), "nothing else changes");
    }

    trait DataText {
        fn data_text(&self) -> BTreeMap<String, String>;
    }

    impl DataText for Secret {
        fn data_text(&self) -> BTreeMap<String, String> {
            self.data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), String::from_utf8(v.0.clone()).unwrap()))
                .collect()
        }
    }
}
