//! The Grafana dashboard shipped with the chart
//! (`charts/connectors/dashboards/connectors.json`) queries only metrics the
//! components export, and shows every metric an operator acts on.

use std::collections::BTreeSet;

const DASHBOARD: &str = include_str!("../charts/connectors/dashboards/connectors.json");

/// Metrics on purpose left off the dashboard.
const NOT_SHOWN: &[&str] = &[];

/// Every sample name each component's registry exposes once each of its
/// families has a series: a counter `x` as `x_total`, a histogram as
/// `x_bucket`, `x_sum` and `x_count`, a gauge as itself.
fn exported() -> BTreeSet<String> {
    use std::time::Duration;
    let proxy = proxy::metrics::Metrics::default();
    proxy.answered("team/hub".into(), "reverse", 200, Duration::from_millis(1));
    proxy.refused("reverse", "denied");
    proxy.upstream_failed("team/hub", "timeout");
    proxy.byte_counter("team/hub", "download").inc();
    proxy.token("team/hub", true);
    proxy.token("team/hub", false);
    proxy.zero_copy_counter("team/hub").inc();
    let webhook = webhook::metrics::Metrics::default();
    webhook
        .reviews
        .get_or_create(&webhook::metrics::ReviewLabels {
            verdict: "mutated",
            reason: "",
        })
        .inc();
    let controller = controller::metrics::Metrics::default();
    controller.probed("success", Duration::from_millis(5));
    controller.set_ready("team", "hub", true);
    let name = controller::metrics::ObjectLabels {
        name: "connectors-proxy-ca".into(),
    };
    controller.certificate_writes.get_or_create(&name).inc();
    controller.certificate_expiry.get_or_create(&name).set(1);
    let csi = csi::metrics::Metrics::default();
    csi.published(&Ok(true), Duration::from_millis(1));
    csi.unpublished(&Ok(true));
    let texts = [proxy.encode(), webhook.encode(), controller.encode(), csi.encode()];
    let mut names = BTreeSet::new();
    for text in &texts {
        for line in text.lines() {
            let Some(declaration) = line.strip_prefix("# TYPE ") else {
                continue;
            };
            let (name, kind) = declaration.split_once(' ').expect("a TYPE line names a type");
            match kind {
                "counter" => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["bucket", "sum", "count"] {
                        names.insert(format!("{name}_{suffix}"));
                    }
                }
                _ => {
                    names.insert(name.to_owned());
                }
            }
        }
    }
    names
}

/// Every query of every panel, with its panel's title.
fn queries(value: &serde_json::Value, title: &str, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(object) => {
            let title = object.get("title").and_then(|t| t.as_str()).unwrap_or(title);
            if let Some(expr) = object.get("expr").and_then(|e| e.as_str()) {
                out.push((title.to_owned(), expr.to_owned()));
            }
            for child in object.values() {
                queries(child, title, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| queries(item, title, out)),
        _ => {}
    }
}

/// The metric names a PromQL expression mentions (ours all start with
/// `connectors_`).
fn metric_names(expr: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("connectors_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(&tail[..end]);
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_dashboard_query_names_an_exported_metric_and_every_metric_is_shown() {
    let exported = exported();
    assert!(exported.len() > 20, "{exported:?}");
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let mut all = Vec::new();
    queries(&dashboard["panels"], "", &mut all);
    assert!(all.len() > 20, "{all:?}");
    let mut shown = BTreeSet::new();
    for (title, expr) in &all {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "panel {title:?} queries no metric of ours: {expr}");
        for name in names {
            assert!(
                exported.contains(name),
                "panel {title:?} queries {name}, which no component exports: {expr}"
            );
            shown.insert(name.to_owned());
        }
    }
    // A metric family counts as shown when any of its samples is.
    let family = |sample: &str| {
        ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| sample.strip_suffix(suffix))
            .unwrap_or(sample)
            .to_owned()
    };
    let shown: BTreeSet<String> = shown.iter().map(|s| family(s)).collect();
    let missing: Vec<String> = exported
        .iter()
        .map(|s| family(s))
        .filter(|f| !shown.contains(f) && !NOT_SHOWN.contains(&f.as_str()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(missing.is_empty(), "metrics no panel shows: {missing:?}");
}

#[test]
fn every_panel_reads_the_chosen_data_source_and_ids_are_unique() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "duplicate id: {panel}");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{}", panel["title"]);
        assert!(panel["gridPos"]["w"].as_u64().unwrap() <= 24);
    }
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource")
    );
}
