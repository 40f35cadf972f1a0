//! Store files for the binary under test: the multi-document YAML of
//! Secrets and Connectors that `--store` reads, written the way an admin
//! would, one namespace at a time.

use std::fmt::Write as _;

/// A store being written for one namespace.
#[derive(Debug, Clone)]
pub struct StoreYaml {
    namespace: String,
    documents: Vec<String>,
}

impl StoreYaml {
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            documents: Vec::new(),
        }
    }

    /// Later documents go into `namespace`.
    pub fn in_namespace(mut self, namespace: &str) -> Self {
        namespace.clone_into(&mut self.namespace);
        self
    }

    /// The Namespace object itself, with labels and annotations (e.g. the
    /// opt-in label and the default connector list).
    pub fn namespace_object(mut self, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Self {
        let map = |pairs: &[(&str, &str)]| {
            let items: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}: \"{v}\"")).collect();
            format!("{{{}}}", items.join(", "))
        };
        self.documents.push(format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {}, labels: {}, annotations: {}}}\n",
            self.namespace,
            map(labels),
            map(annotations)
        ));
        self
    }

    /// A Connector of `class` at `address`, with the basic-auth Secret
    /// `auth_secret` when given.
    pub fn connector_of_class(self, name: &str, class: &str, address: &str, auth_secret: Option<&str>) -> Self {
        self.connector_document(name, class, address, auth_secret, None)
    }

    /// A `kubernetes.io/basic-auth` Secret.
    pub fn basic_auth(mut self, secret: &str, username: &str, password: &str) -> Self {
        self.documents.push(format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {secret}, namespace: {}}}\ntype: kubernetes.io/basic-auth\nstringData: {{username: \"{username}\", password: \"{password}\"}}\n",
            self.namespace
        ));
        self
    }

    /// A Secret holding a CA bundle as `ca.crt`.
    pub fn ca(mut self, secret: &str, ca_pem: &str) -> Self {
        let mut document = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {secret}, namespace: {}}}\nstringData:\n  ca.crt: |\n",
            self.namespace
        );
        for line in ca_pem.lines() {
            let _ = writeln!(document, "    {line}");
        }
        self.documents.push(document);
        self
    }

    /// A Connector at `address` with the basic-auth Secret `auth_secret`,
    /// trusting the CA Secret `ca_secret` when given.
    pub fn connector(self, name: &str, address: &str, auth_secret: &str, ca_secret: Option<&str>) -> Self {
        self.connector_document(name, "oci", address, Some(auth_secret), ca_secret)
    }

    fn connector_document(
        mut self,
        name: &str,
        class: &str,
        address: &str,
        auth_secret: Option<&str>,
        ca_secret: Option<&str>,
    ) -> Self {
        let mut document = format!(
            "apiVersion: connectors.alauda.io/v1alpha1\nkind: Connector\nmetadata: {{name: {name}, namespace: {}}}\nspec:\n  connectorClassName: {class}\n  address: \"{address}\"\n",
            self.namespace
        );
        if let Some(secret) = auth_secret {
            let _ = writeln!(document, "  auth: {{name: basicAuth, secretRef: {{name: {secret}}}}}");
        }
        if let Some(ca_secret) = ca_secret {
            let _ = writeln!(document, "  caCertSecretRef: {{name: {ca_secret}}}");
        }
        self.documents.push(document);
        self
    }

    /// The YAML, documents separated by `---`.
    pub fn build(&self) -> String {
        self.documents.join("---\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_parses_as_the_documents_it_names() {
        let yaml = StoreYaml::new("team")
            .basic_auth("robot", "robot$ci", "pw")
            .ca(
                "registry-ca",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            )
            .connector("lab", "https://registry.test:5000", "robot", Some("registry-ca"))
            .build();
        let documents: Vec<&str> = yaml.split("\n---\n").collect();
        assert_eq!(documents.len(), 3);
        assert!(documents[0].contains("username: \"robot$ci\""));
        assert!(documents[1].contains("  ca.crt: |\n    -----BEGIN CERTIFICATE-----\n    AAAA\n"));
        assert!(documents[2].contains("caCertSecretRef: {name: registry-ca}"));
        assert!(documents[2].contains("namespace: team"));
    }

    #[test]
    fn namespaces_and_anonymous_connectors_are_written_as_admins_write_them() {
        let yaml = StoreYaml::new("team")
            .namespace_object(&[("connectors.cpaas.io/proxy-inject", "true")], &[])
            .connector_of_class("hub", "oci", "https://registry-1.docker.io", None)
            .in_namespace("other")
            .connector_of_class("harbor", "harbor", "https://harbor.example.com", Some("robot"))
            .build();
        let documents: Vec<&str> = yaml.split("---\n").collect();
        assert_eq!(
            documents[0],
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: team, labels: {connectors.cpaas.io/proxy-inject: \"true\"}, annotations: {}}\n"
        );
        assert!(!documents[1].contains("auth"), "{}", documents[1]);
        assert!(documents[2].contains("namespace: other") && documents[2].contains("connectorClassName: harbor"));
        assert!(documents[2].contains("secretRef: {name: robot}"));
    }
}
