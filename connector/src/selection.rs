//! Which connectors a pod uses: parsing the connector lists of the pod and
//! namespace annotations, and deciding whether a pod is selected at all.

use std::collections::BTreeMap;

use crate::ConnectorKey;
use crate::keys;

/// Why a connector list cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectionError {
    #[error("{annotation} names an invalid connector {item:?}: {why}")]
    InvalidItem {
        annotation: &'static str,
        item: String,
        why: &'static str,
    },
    #[error("{annotation} is set but names no connector")]
    Empty { annotation: &'static str },
    /// A list longer than anyone writes: refused before it is parsed.
    #[error("{annotation} names more than {MAX_LIST_ITEMS} connectors or is longer than {MAX_LIST_BYTES} bytes")]
    TooLong { annotation: &'static str },
}

/// The most connectors one list may name.
pub const MAX_LIST_ITEMS: usize = 64;

/// The longest connector list read, in bytes (64 items of a namespace and
/// a long name fit).
pub const MAX_LIST_BYTES: usize = 16 * 1024;

/// Parses `name`, `ns/name` and comma-separated lists of both; items without
/// a namespace are in `default_namespace`. Duplicates are dropped, order is
/// kept (the first connector for a registry host wins).
///
/// NB: lists come from pod annotations, volume attributes and proxy user
/// names, all attacker-written: a list over [`MAX_LIST_BYTES`] is refused
/// unread, and parsing stops at item [`MAX_LIST_ITEMS`] + 1, so the work is
/// bounded whatever is sent.
pub fn parse_connector_list(value: &str, default_namespace: &str) -> Result<Vec<ConnectorKey>, SelectionError> {
    let annotation = keys::CONNECTOR_ANNOTATION;
    if value.len() > MAX_LIST_BYTES {
        return Err(SelectionError::TooLong { annotation });
    }
    let mut keys_out: Vec<ConnectorKey> = Vec::new();
    for raw in value.split(',') {
        let item = raw.trim();
        if item.is_empty() {
            continue;
        }
        let (namespace, name) = match item.split_once('/') {
            Some((ns, name)) => (ns, name),
            None => (default_namespace, item),
        };
        let invalid = |why| SelectionError::InvalidItem {
            annotation,
            item: item.to_owned(),
            why,
        };
        if !is_dns_label(namespace) {
            return Err(invalid("the namespace must be a DNS-1123 label"));
        }
        if !is_dns_subdomain(name) {
            return Err(invalid("the name must be a DNS-1123 subdomain"));
        }
        let key = ConnectorKey::new(namespace, name);
        if !keys_out.contains(&key) {
            if keys_out.len() == MAX_LIST_ITEMS {
                return Err(SelectionError::TooLong { annotation });
            }
            keys_out.push(key);
        }
    }
    if keys_out.is_empty() {
        return Err(SelectionError::Empty { annotation });
    }
    Ok(keys_out)
}

/// Formats keys as the comma-separated `ns/name` list used in annotations,
/// CSI attributes and proxy user names.
pub fn format_connector_list(keys: &[ConnectorKey]) -> String {
    keys.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// Where a pod's connectors come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// The pod is not selected; the reason is for logs and metrics.
    Skip(SkipReason),
    /// The pod annotation names these connectors.
    Annotated(Vec<ConnectorKey>),
    /// The namespace opted in; its annotation names these defaults, or
    /// `None` for every connector in the namespace.
    Namespace(Option<Vec<ConnectorKey>>),
}

/// Why a pod is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Neither the pod annotation nor the namespace label selects it.
    NotSelected,
    /// The pod annotation `proxy-inject: "false"` opts it out.
    OptedOut,
    /// kube-system or the install namespace.
    ProtectedNamespace,
    /// A mirror (static) pod, which the API server will not let us change.
    MirrorPod,
}

impl SkipReason {
    /// A short stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NotSelected => "not-selected",
            SkipReason::OptedOut => "opted-out",
            SkipReason::ProtectedNamespace => "protected-namespace",
            SkipReason::MirrorPod => "mirror-pod",
        }
    }
}

/// Decides whether and how a pod is selected from its annotations and its
/// namespace's labels and annotations.
pub fn select(
    pod_namespace: &str,
    pod_annotations: &BTreeMap<String, String>,
    namespace_labels: &BTreeMap<String, String>,
    namespace_annotations: &BTreeMap<String, String>,
    install_namespace: &str,
) -> Result<Selection, SelectionError> {
    if pod_namespace == keys::KUBE_SYSTEM_NAMESPACE || pod_namespace == install_namespace {
        return Ok(Selection::Skip(SkipReason::ProtectedNamespace));
    }
    if pod_annotations.contains_key(keys::MIRROR_POD_ANNOTATION) {
        return Ok(Selection::Skip(SkipReason::MirrorPod));
    }
    if pod_annotations
        .get(keys::PROXY_INJECT)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"))
    {
        return Ok(Selection::Skip(SkipReason::OptedOut));
    }
    if let Some(list) = pod_annotations.get(keys::CONNECTOR_ANNOTATION) {
        return parse_connector_list(list, pod_namespace).map(Selection::Annotated);
    }
    let opted_in = namespace_labels
        .get(keys::PROXY_INJECT)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if !opted_in {
        return Ok(Selection::Skip(SkipReason::NotSelected));
    }
    match namespace_annotations.get(keys::CONNECTOR_ANNOTATION) {
        Some(list) => parse_connector_list(list, pod_namespace).map(|k| Selection::Namespace(Some(k))),
        None => Ok(Selection::Namespace(None)),
    }
}

/// RFC 1123 label: what Kubernetes accepts as a namespace name.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: what Kubernetes accepts as most object names.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attacker_sized_lists_are_refused_without_being_parsed() {
        let many: Vec<String> = (0..50_000).map(|i| format!("team/c{i}")).collect();
        let started = std::time::Instant::now();
        let refused = parse_connector_list(&many.join(","), "team").unwrap_err();
        assert!(matches!(refused, SelectionError::TooLong { .. }), "{refused}");
        // Short items: under the byte limit, refused at item 65.
        let short: Vec<String> = (0..50_000)
            .map(|i| format!("{}", (b'a' + (i % 26) as u8) as char))
            .collect();
        let short: Vec<String> = short
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c}{i}"))
            .take(2_000)
            .collect();
        let refused = parse_connector_list(&short.join(","), "team").unwrap_err();
        assert!(matches!(refused, SelectionError::TooLong { .. }), "{refused}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
        let fine: Vec<String> = (0..MAX_LIST_ITEMS).map(|i| format!("c{i}")).collect();
        assert_eq!(
            parse_connector_list(&fine.join(","), "team").unwrap().len(),
            MAX_LIST_ITEMS
        );
        let duplicates = vec!["harbor"; 200].join(",");
        assert_eq!(parse_connector_list(&duplicates, "team").unwrap().len(), 1);
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn connector_lists_parse_names_and_qualified_names() {
        let cases: &[(&str, &[&str])] = &[
            ("harbor", &["team/harbor"]),
            ("ops/harbor", &["ops/harbor"]),
            ("a, ops/b ,c", &["team/a", "ops/b", "team/c"]),
            ("a,a,team/a", &["team/a"]),
            (" a ,, b ", &["team/a", "team/b"]),
            ("my.connector", &["team/my.connector"]),
        ];
        for (value, want) in cases {
            let got = parse_connector_list(value, "team").unwrap();
            let got: Vec<String> = got.iter().map(ToString::to_string).collect();
            assert_eq!(&got, want, "{value}");
        }
    }

    #[test]
    fn invalid_connector_lists_are_errors() {
        for value in ["", " , ", "a/b/c", "Upper", "ns/", "/name", "n_s/x", "-a", "a b"] {
            assert!(parse_connector_list(value, "team").is_err(), "{value:?}");
        }
    }

    #[test]
    fn selection_follows_annotation_label_and_opt_out() {
        let none = BTreeMap::new();
        let label = map(&[(keys::PROXY_INJECT, "true")]);
        let ns_default = map(&[(keys::CONNECTOR_ANNOTATION, "shared/harbor")]);
        let annotated = map(&[(keys::CONNECTOR_ANNOTATION, "harbor")]);
        let opted_out = map(&[(keys::CONNECTOR_ANNOTATION, "harbor"), (keys::PROXY_INJECT, "false")]);
        let mirror = map(&[(keys::MIRROR_POD_ANNOTATION, "x"), (keys::CONNECTOR_ANNOTATION, "h")]);
        let sys = "connectors-system";

        assert_eq!(
            select("team", &none, &none, &none, sys).unwrap(),
            Selection::Skip(SkipReason::NotSelected)
        );
        assert_eq!(
            select("team", &annotated, &none, &none, sys).unwrap(),
            Selection::Annotated(vec![ConnectorKey::new("team", "harbor")])
        );
        assert_eq!(
            select("team", &none, &label, &none, sys).unwrap(),
            Selection::Namespace(None)
        );
        assert_eq!(
            select("team", &none, &label, &ns_default, sys).unwrap(),
            Selection::Namespace(Some(vec![ConnectorKey::new("shared", "harbor")]))
        );
        assert_eq!(
            select("team", &annotated, &label, &ns_default, sys).unwrap(),
            Selection::Annotated(vec![ConnectorKey::new("team", "harbor")])
        );
        assert_eq!(
            select("team", &opted_out, &label, &none, sys).unwrap(),
            Selection::Skip(SkipReason::OptedOut)
        );
        assert_eq!(
            select("team", &mirror, &label, &none, sys).unwrap(),
            Selection::Skip(SkipReason::MirrorPod)
        );
        for protected in ["kube-system", sys] {
            assert_eq!(
                select(protected, &annotated, &label, &none, sys).unwrap(),
                Selection::Skip(SkipReason::ProtectedNamespace)
            );
        }
    }
}
