//! Connector status from probe results: the four conditions with their
//! transition times, the proxy address, and whether a write is due. Pure
//! functions of (previous status, probe report, time).

use connector::crd::{Condition, ConnectorStatus, HttpAddress, ProxyStatus};
use k8s_openapi::jiff::Timestamp;

use crate::probe::{Check, ProbeReport, Verdict};

pub(crate) const CONNECTOR_CLASS_READY: &str = "ConnectorClassReady";
pub(crate) const SECRET_READY: &str = "SecretReady";
pub(crate) const LIVENESS_READY: &str = "LivenessReady";
pub(crate) const AUTH_READY: &str = "AuthReady";
pub(crate) const READY: &str = "Ready";
pub(crate) const PROXY_SERVICE_READY: &str = "ProxyServiceReady";

/// The address workloads use for a connector: `<proxy_url>/namespaces/<ns>/connectors/<name>`.
pub fn proxy_address(proxy_url: &str, namespace: &str, name: &str) -> String {
    let key = connector::ConnectorKey::new(namespace, name);
    format!("{}/{}", proxy_url.trim_end_matches('/'), key.proxy_path())
}

/// Now as conditions record it: RFC 3339 in UTC, whole seconds.
pub fn now_timestamp() -> String {
    format_time(Timestamp::now())
}

fn format_time(time: Timestamp) -> String {
    let seconds = Timestamp::from_second(time.as_second()).unwrap_or(time);
    seconds.to_string()
}

/// The status after a probe: each condition keeps its
/// `lastTransitionTime` unless its status changed; every condition gets
/// `lastProbeTime = now`.
pub fn next_status(
    previous: Option<&ConnectorStatus>,
    class: &Check,
    report: &ProbeReport,
    generation: Option<i64>,
    http_address: HttpAddress,
    now: &str,
) -> ConnectorStatus {
    let ready = aggregate(class, report);
    let checks = [
        (CONNECTOR_CLASS_READY, class),
        (SECRET_READY, &report.secret),
        (LIVENESS_READY, &report.liveness),
        (AUTH_READY, &report.auth),
        (READY, &ready),
    ];
    let conditions = checks
        .into_iter()
        .map(|(type_, check)| condition(previous, type_, check, generation, now))
        .collect();
    ConnectorStatus {
        observed_generation: generation,
        conditions,
        proxy: Some(ProxyStatus {
            http_address: Some(http_address),
        }),
    }
}

/// Condition `type_` from `check`, keeping the previous
/// `lastTransitionTime` unless the status changed.
fn condition(
    previous: Option<&ConnectorStatus>,
    type_: &str,
    check: &Check,
    generation: Option<i64>,
    now: &str,
) -> Condition {
    let old = previous.and_then(|s| s.conditions.iter().find(|c| c.type_ == type_));
    let status = check.verdict.as_str();
    let last_transition_time = match old {
        Some(old) if old.status == status && old.last_transition_time.is_some() => old.last_transition_time.clone(),
        _ => Some(now.to_owned()),
    };
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: Some(check.reason.to_owned()),
        message: Some(check.message.clone()),
        last_transition_time,
        last_probe_time: Some(now.to_owned()),
        observed_generation: generation,
    }
}

/// Adds the informational `ProxyServiceReady` (the per-connector Service;
/// not part of `Ready`: the shared proxy address works without it).
pub fn with_proxy_service(
    previous: Option<&ConnectorStatus>,
    mut status: ConnectorStatus,
    check: &Check,
    generation: Option<i64>,
    now: &str,
) -> ConnectorStatus {
    let condition = condition(previous, PROXY_SERVICE_READY, check, generation, now);
    let at = status
        .conditions
        .iter()
        .position(|c| c.type_ == READY)
        .unwrap_or(status.conditions.len());
    status.conditions.insert(at, condition);
    status
}

/// `Ready`: True when the class and all three probes are; otherwise the
/// first failing (then the first unknown) check's reason and message.
fn aggregate(class: &Check, report: &ProbeReport) -> Check {
    let checks = [class, &report.secret, &report.liveness, &report.auth];
    let first = |verdict| checks.iter().find(|c| c.verdict == verdict);
    match first(Verdict::False).or_else(|| first(Verdict::Unknown)) {
        None => Check {
            verdict: Verdict::True,
            reason: "Ready",
            message: "the credential is valid and the registry accepts it".to_owned(),
        },
        Some(check) => Check {
            verdict: check.verdict,
            reason: check.reason,
            message: check.message.clone(),
        },
    }
}

/// Whether the status says Ready.
pub fn is_ready(status: &ConnectorStatus) -> bool {
    status.conditions.iter().any(|c| c.type_ == READY && c.status == "True")
}

/// Whether `next` must be written over `current`: something other than the
/// probe times changed. A probe that confirms the status writes nothing:
/// each write is a watch event for every process watching Connectors (the
/// proxy's replicas, the webhook's, one CSI plugin per node), so a
/// heartbeat of 10,000 connectors every interval would be thousands of
/// events a second across a large cluster for no news.
pub fn needs_write(current: Option<&ConnectorStatus>, next: &ConnectorStatus) -> bool {
    current.is_none_or(|current| without_probe_times(current) != without_probe_times(next))
}

fn without_probe_times(status: &ConnectorStatus) -> ConnectorStatus {
    let mut status = status.clone();
    for condition in &mut status.conditions {
        condition.last_probe_time = None;
    }
    status
}

/// The conditions of `next` whose status differs from `previous`, for
/// events. A connector's first status says `Ready` and what is not `True`:
/// a healthy new connector makes one event, not one per condition.
pub fn transitions<'a>(previous: Option<&ConnectorStatus>, next: &'a ConnectorStatus) -> Vec<&'a Condition> {
    let first = previous.is_none_or(|s| s.conditions.is_empty());
    next.conditions
        .iter()
        .filter(|condition| {
            let old = previous.and_then(|s| s.conditions.iter().find(|c| c.type_ == condition.type_));
            match old {
                Some(old) => old.status != condition.status,
                None => !first || condition.type_ == READY || condition.status != "True",
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(verdict: Verdict, reason: &'static str) -> Check {
        Check {
            verdict,
            reason,
            message: format!("{reason} message"),
        }
    }

    fn report(auth: Verdict) -> ProbeReport {
        ProbeReport {
            secret: check(Verdict::True, "SecretValid"),
            liveness: check(Verdict::True, "Alive"),
            auth: check(
                auth,
                if auth == Verdict::True {
                    "Authenticated"
                } else {
                    "Unauthorized"
                },
            ),
        }
    }

    fn class_ok() -> Check {
        check(Verdict::True, "ConnectorClassReady")
    }

    fn address() -> HttpAddress {
        HttpAddress {
            url: proxy_address("http://proxy/", "team", "harbor"),
            ca_certs: None,
            audience: Some("connectors-proxy".into()),
        }
    }

    #[test]
    fn transition_times_change_only_with_the_status() {
        let first = next_status(
            None,
            &class_ok(),
            &report(Verdict::True),
            Some(1),
            address(),
            "2025-01-01T00:00:00Z",
        );
        assert_eq!(first.conditions.len(), 5);
        assert_eq!(first.conditions[0].type_, CONNECTOR_CLASS_READY);
        assert_eq!(first.conditions[4].status, "True");
        let announced: Vec<_> = transitions(None, &first).iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(announced, [READY], "a healthy new connector makes one event");
        let second = next_status(
            Some(&first),
            &class_ok(),
            &report(Verdict::True),
            Some(1),
            address(),
            "2025-01-01T00:05:00Z",
        );
        assert!(
            second
                .conditions
                .iter()
                .all(|c| c.last_transition_time.as_deref() == Some("2025-01-01T00:00:00Z")
                    && c.last_probe_time.as_deref() == Some("2025-01-01T00:05:00Z"))
        );
        assert!(transitions(Some(&first), &second).is_empty());
        let third = next_status(
            Some(&second),
            &class_ok(),
            &report(Verdict::False),
            Some(1),
            address(),
            "2025-01-01T00:10:00Z",
        );
        let changed: Vec<_> = transitions(Some(&second), &third)
            .iter()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(changed, [AUTH_READY, READY]);
        let broken_at_first: Vec<_> = transitions(None, &third).iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(broken_at_first, [AUTH_READY, READY], "what failed, and Ready");
        let ready = &third.conditions[4];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("False", Some("Unauthorized"))
        );
        assert_eq!(ready.last_transition_time.as_deref(), Some("2025-01-01T00:10:00Z"));
        assert_eq!(
            third.conditions[0].last_transition_time.as_deref(),
            Some("2025-01-01T00:00:00Z")
        );
    }

    #[test]
    fn only_changes_are_written_not_newer_probe_times() {
        let now = now_timestamp();
        let current = next_status(None, &class_ok(), &report(Verdict::True), Some(1), address(), &now);
        let same = next_status(
            Some(&current),
            &class_ok(),
            &report(Verdict::True),
            Some(1),
            address(),
            &now,
        );
        let later = next_status(
            Some(&current),
            &class_ok(),
            &report(Verdict::True),
            Some(1),
            address(),
            "2099-01-01T00:00:00Z",
        );
        assert!(!needs_write(Some(&current), &same));
        assert!(
            !needs_write(Some(&current), &later),
            "a newer probe time alone is no change"
        );
        let newer_generation = next_status(
            Some(&current),
            &class_ok(),
            &report(Verdict::True),
            Some(2),
            address(),
            &now,
        );
        assert!(needs_write(Some(&current), &newer_generation));
        assert!(needs_write(None, &same));
    }

    #[test]
    fn addresses_use_the_path_form_of_the_reverse_proxy() {
        assert_eq!(
            proxy_address("http://connectors-proxy.connectors-system.svc/", "team-a", "harbor"),
            "http://connectors-proxy.connectors-system.svc/namespaces/team-a/connectors/harbor"
        );
    }
}
