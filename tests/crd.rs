//! The committed CRD in `manifests/` is the one generated from the types.

mod support;

#[test]
fn committed_crd_matches_the_types() {
    let committed = std::fs::read_to_string(support::root().join("manifests/crd.yaml")).unwrap();
    let generated = connector::crd::crd_yaml();
    assert!(
        committed == generated,
        "manifests/crd.yaml is stale: run `cargo run -- crd > manifests/crd.yaml`"
    );
    let chart = std::fs::read_to_string(support::root().join("charts/connectors/files/crd.yaml")).unwrap();
    assert!(
        chart == generated,
        "charts/connectors/files/crd.yaml is stale: run `cargo run -- crd > charts/connectors/files/crd.yaml`"
    );
    let (status, stdout, _) = support::run(&["crd"], None, support::root());
    assert!(status.success());
    assert_eq!(stdout, generated);
}

#[test]
fn the_crd_declares_the_documented_api() {
    let crd: serde_json::Value = connector::yaml::parse_documents(&connector::crd::crd_yaml())
        .unwrap()
        .remove(0);
    assert_eq!(crd["metadata"]["name"], "connectors.connectors.alauda.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Class", "Address", "Ready", "Reason", "Age"]);
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    for field in [
        "connectorClassName",
        "address",
        "auth",
        "caCertSecretRef",
        "addressExtensions",
    ] {
        assert!(spec["properties"][field].is_object(), "{field}");
    }
    let status = &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
    assert!(status["proxy"]["properties"]["httpAddress"]["properties"]["url"].is_object());
    assert!(status["conditions"].is_object() && status["observedGeneration"].is_object());

    // kubectl and server-side apply: `kubectl get conn`, `kubectl get
    // registry-connectors` (the category: both kinds; not `connectors`,
    // which would shadow the plural), conditions merged by type, extensions
    // by name, times validated as RFC 3339.
    assert_eq!(crd["spec"]["names"]["shortNames"], serde_json::json!(["conn"]));
    assert_eq!(
        crd["spec"]["names"]["categories"],
        serde_json::json!(["registry-connectors"])
    );
    let conditions = &status["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], serde_json::json!(["type"]));
    let condition = &conditions["items"]["properties"];
    for time in ["lastTransitionTime", "lastProbeTime"] {
        assert_eq!(condition[time]["format"], "date-time", "{time}");
    }
    let extensions = &spec["properties"]["addressExtensions"];
    assert_eq!(extensions["x-kubernetes-list-type"], "map");
    assert_eq!(extensions["x-kubernetes-list-map-keys"], serde_json::json!(["name"]));
    assert_eq!(
        spec["properties"]["auth"]["properties"]["name"]["enum"],
        serde_json::json!(["basicAuth", "tokenAuth"])
    );
    for field in ["address", "addressExtensions"] {
        assert!(
            spec["properties"][field]["x-kubernetes-validations"].is_array(),
            "{field} is checked as URLs"
        );
    }
}

#[test]
fn the_connector_class_crd_is_cluster_scoped_with_configurations_by_name() {
    let crd: serde_json::Value = connector::yaml::parse_documents(&connector::crd::crd_yaml())
        .unwrap()
        .remove(1);
    assert_eq!(crd["metadata"]["name"], "connectorclasses.connectors.alauda.io");
    assert_eq!(crd["spec"]["scope"], "Cluster");
    assert_eq!(crd["spec"]["names"]["shortNames"], serde_json::json!(["connclass"]));
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    for field in ["auth", "authProbes", "configurations", "params", "address"] {
        assert!(spec[field].is_object(), "{field}");
    }
    let configurations = &spec["configurations"];
    assert_eq!(configurations["x-kubernetes-list-type"], "map");
    assert!(configurations["items"]["properties"]["data"]["additionalProperties"].is_object());
    // The shipped classes are objects of this CRD.
    for class in connector::class::built_in() {
        assert_eq!(class.metadata.namespace, None);
    }
}
