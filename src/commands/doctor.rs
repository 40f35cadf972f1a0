//! `connectors doctor`: checks a cluster install end to end (CRDs,
//! controller, webhook and its CA bundle, proxy, CSI driver on each node,
//! node pull endpoint, each Connector's conditions) and says what to fix,
//! as `cmctl check api` does for cert-manager. Read-only.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::storage::v1::{CSIDriver, CSINode};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::ListParams;
use kube::{Api, Client};

use super::KubeArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    kube: KubeArgs,
    /// The namespace the product is installed in.
    #[arg(long, env = "CONNECTORS_INSTALL_NAMESPACE", default_value = "connectors-system")]
    namespace: String,
    /// The namespace of the CSI driver and the node pull endpoint.
    #[arg(long, env = "CONNECTORS_CSI_NAMESPACE", default_value = "connectors-csi")]
    csi_namespace: String,
    /// Check only the Connectors of this namespace (repeatable); default:
    /// every namespace.
    #[arg(long = "connector-namespace", value_name = "NAMESPACE")]
    connector_namespaces: Vec<String>,
}

/// The problems `doctor` found (exit code 3: it ran, the install is not
/// healthy).
#[derive(Debug, thiserror::Error)]
#[error("{0} problem(s) found; each is listed above with its fix")]
pub struct Findings(pub usize);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Problem,
    /// Could not be checked (no permission, not installed on purpose).
    Skipped,
}

/// One line of the report.
struct Check {
    status: Status,
    subject: String,
    detail: String,
    fix: Option<String>,
}

impl Check {
    fn ok(subject: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            status: Status::Ok,
            subject: subject.into(),
            detail: detail.into(),
            fix: None,
        }
    }

    fn problem(subject: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Problem,
            subject: subject.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn skipped(subject: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            status: Status::Skipped,
            subject: subject.into(),
            detail: detail.into(),
            fix: None,
        }
    }

    /// The check of an object that could not be read: missing is a problem
    /// with `fix`, forbidden is skipped.
    fn unreadable(subject: &str, what: &str, error: &kube::Error, fix: &str) -> Self {
        match error {
            kube::Error::Api(status) if status.code == 403 => {
                Self::skipped(subject, format!("cannot read {what}: forbidden for this user"))
            }
            kube::Error::Api(status) if status.code == 404 => {
                Self::problem(subject, format!("{what} does not exist"), fix)
            }
            other => Self::problem(subject, format!("cannot read {what}: {other}"), fix),
        }
    }
}

/// What the checks read.
struct Install {
    client: Client,
    namespace: String,
    csi_namespace: String,
    /// Empty: every namespace's Connectors.
    connector_namespaces: Vec<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = args.kube.client().await?;
    let version = client
        .apiserver_version()
        .await
        .context("the API server does not answer (check --kubeconfig and --context)")?;
    let install = Install {
        client,
        namespace: args.namespace,
        csi_namespace: args.csi_namespace,
        connector_namespaces: args.connector_namespaces,
    };
    let mut checks = Vec::new();
    checks.extend(crds(&install).await);
    checks.push(deployment(&install, "connectors-controller", "controller").await);
    checks.push(lease(&install).await);
    checks.push(deployment(&install, "connectors-webhook", "webhook").await);
    checks.extend(webhook_configuration(&install).await);
    checks.push(service_health(&install, "webhook", "https:connectors-webhook:443").await);
    checks.push(deployment(&install, "connectors-proxy", "proxy").await);
    checks.push(service_health(&install, "proxy", "http:connectors-proxy:80").await);
    checks.extend(csi(&install).await);
    checks.extend(node_pull(&install).await);
    checks.extend(connectors(&install).await);

    let problems = checks.iter().filter(|c| c.status == Status::Problem).count();
    let mut out = format!(
        "connectors doctor: Kubernetes {}.{}, install namespace {}, CSI namespace {}\n\n",
        version.major, version.minor, install.namespace, install.csi_namespace
    );
    for check in &checks {
        let mark = match check.status {
            Status::Ok => "ok  ",
            Status::Problem => "FAIL",
            Status::Skipped => "skip",
        };
        let _ = writeln!(out, "{mark}  {}: {}", check.subject, check.detail);
        if let Some(fix) = &check.fix {
            for (i, line) in fix.lines().enumerate() {
                let _ = writeln!(out, "      {} {line}", if i == 0 { "fix:" } else { "    " });
            }
        }
    }
    let _ = writeln!(
        out,
        "\n{} checks: {} ok, {problems} failed, {} skipped",
        checks.len(),
        checks.iter().filter(|c| c.status == Status::Ok).count(),
        checks.iter().filter(|c| c.status == Status::Skipped).count()
    );
    super::write_stdout(&out)?;
    if problems > 0 {
        return Err(Findings(problems).into());
    }
    Ok(())
}

const INSTALL_FIX: &str =
    "install or upgrade the chart: helm upgrade --install connectors charts/connectors (or kubectl apply -k manifests)";

async fn crds(install: &Install) -> Vec<Check> {
    let api: Api<CustomResourceDefinition> = Api::all(install.client.clone());
    let mut checks = Vec::new();
    for name in [
        "connectors.connectors.alauda.io",
        "connectorclasses.connectors.alauda.io",
    ] {
        let subject = format!("CRD {name}");
        checks.push(match api.get(name).await {
            Ok(crd) => {
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if established {
                    Check::ok(subject, "established")
                } else {
                    Check::problem(
                        subject,
                        "not established",
                        format!("kubectl get crd {name} -o yaml (its conditions say why)"),
                    )
                }
            }
            Err(error) => Check::unreadable(&subject, "the CRD", &error, INSTALL_FIX),
        });
    }
    checks
}

/// `ready of wanted` with what to look at when they differ.
fn replicas_check(subject: String, ready: i32, wanted: i32, namespace: &str, kind: &str, name: &str) -> Check {
    let fix = format!(
        "kubectl -n {namespace} describe {kind} {name}; kubectl -n {namespace} get pods -l app.kubernetes.io/name=connectors -o wide; kubectl -n {namespace} logs {kind}/{name}"
    );
    match (kind, wanted) {
        ("deployment", 0) => Check::problem(
            subject,
            "scaled to 0 replicas",
            format!("kubectl -n {namespace} scale {kind} {name} --replicas=2 (or the chart's replicas value)"),
        ),
        (_, 0) => Check::problem(
            subject,
            "scheduled on no node (0 of 0)",
            format!(
                "{fix}\n(check the DaemonSet's nodeSelector, affinity and tolerations against the nodes' labels and taints)"
            ),
        ),
        _ if ready < wanted => Check::problem(subject, format!("{ready} of {wanted} ready"), fix),
        _ => Check::ok(subject, format!("{ready} of {wanted} ready")),
    }
}

async fn deployment(install: &Install, name: &str, what: &str) -> Check {
    let api: Api<Deployment> = Api::namespaced(install.client.clone(), &install.namespace);
    let subject = format!("{what} (deployment {name})");
    match api.get(name).await {
        Ok(deployment) => {
            let wanted = deployment.spec.and_then(|s| s.replicas).unwrap_or(1);
            let ready = deployment.status.and_then(|s| s.available_replicas).unwrap_or(0);
            replicas_check(subject, ready, wanted, &install.namespace, "deployment", name)
        }
        Err(error) => Check::unreadable(&subject, "the Deployment", &error, INSTALL_FIX),
    }
}

/// The controller's leader Lease: held, and renewed within its duration.
async fn lease(install: &Install) -> Check {
    let api: Api<Lease> = Api::namespaced(install.client.clone(), &install.namespace);
    let subject = "controller leader (lease connectors-controller)";
    let lease = match api.get("connectors-controller").await {
        Ok(lease) => lease,
        Err(error) => {
            return Check::unreadable(
                subject,
                "the Lease",
                &error,
                &format!(
                    "no controller replica ever led: kubectl -n {} logs deploy/connectors-controller",
                    install.namespace
                ),
            );
        }
    };
    let spec = lease.spec.unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
    let age = spec
        .renew_time
        .map(|t| (k8s_openapi::jiff::Timestamp::now() - t.0).get_seconds().max(0) as u64);
    match age {
        Some(age) if !holder.is_empty() && Duration::from_secs(age) <= duration * 2 => {
            Check::ok(subject, format!("held by {holder}, renewed {age}s ago"))
        }
        _ => Check::problem(
            subject,
            format!(
                "not renewed in time (holder {holder:?}, renewed {age:?}s ago): no replica leads, so no status or certificate is written"
            ),
            format!("kubectl -n {} logs deploy/connectors-controller", install.namespace),
        ),
    }
}

/// The MutatingWebhookConfiguration: present, and its caBundle verifies
/// the webhook's serving certificate for the Service's name.
async fn webhook_configuration(install: &Install) -> Vec<Check> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(install.client.clone());
    let subject = "webhook configuration (mutatingwebhookconfiguration connectors)";
    let configuration = match api.get("connectors").await {
        Ok(configuration) => configuration,
        Err(error) => return vec![Check::unreadable(subject, "the configuration", &error, INSTALL_FIX)],
    };
    let webhooks = configuration.webhooks.unwrap_or_default();
    let Some(bundle) = webhooks
        .iter()
        .find_map(|w| w.client_config.ca_bundle.as_ref())
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    else {
        return vec![Check::problem(
            subject,
            "no caBundle: the API server cannot trust the webhook, so every selected pod is refused or left unchanged",
            format!(
                "the controller writes it: kubectl -n {} logs deploy/connectors-controller",
                install.namespace
            ),
        )];
    };
    let policies: Vec<String> = webhooks
        .iter()
        .map(|w| w.failure_policy.clone().unwrap_or_else(|| "Fail".into()))
        .collect();
    let present = Check::ok(
        subject,
        format!("caBundle present, failurePolicy {}", policies.join(",")),
    );
    let secrets: Api<Secret> = Api::namespaced(install.client.clone(), &install.namespace);
    let tls_subject = "webhook certificate (secret connectors-webhook-tls)";
    let chain = match secrets.get("connectors-webhook-tls").await {
        Ok(secret) => secret
            .data
            .and_then(|mut d| d.remove("tls.crt"))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned()),
        Err(error) => {
            let fix = format!(
                "the controller creates it: kubectl -n {} logs deploy/connectors-controller",
                install.namespace
            );
            return vec![present, Check::unreadable(tls_subject, "the Secret", &error, &fix)];
        }
    };
    let name = format!("connectors-webhook.{}.svc", install.namespace);
    let verified = match &chain {
        None => Err("the Secret has no tls.crt".to_owned()),
        Some(chain) => certs::verify_serving_chain(chain, &bundle, &name).map_err(|e| e.to_string()),
    };
    let expires = chain
        .as_deref()
        .and_then(|pem| certs::CertificateSummary::from_pem(pem).ok())
        .map(|summary| summary.remaining(std::time::SystemTime::now()).as_secs() / 86400);
    let certificate = match verified {
        Ok(()) => Check::ok(
            tls_subject,
            format!(
                "verifies against the caBundle for {name}, expires in {} days",
                expires.map_or("?".into(), |d| d.to_string())
            ),
        ),
        Err(why) => Check::problem(
            tls_subject,
            format!("does not verify against the configuration's caBundle for {name}: {why}"),
            format!(
                "the controller rewrites both within seconds; if it does not, delete the Secret so it issues a new one:\nkubectl -n {ns} delete secret connectors-webhook-tls; kubectl -n {ns} logs deploy/connectors-controller",
                ns = install.namespace
            ),
        ),
    };
    vec![present, certificate]
}

/// `/healthz` of a Service, through the API server's service proxy: what
/// the API server (the webhook's caller) and pods reach. A Service with no
/// ready endpoint is not asked.
async fn service_health(install: &Install, what: &str, service: &str) -> Check {
    let name = service.split(':').nth(1).unwrap_or(service);
    let subject = format!("{what} reachable (service {name})");
    let slices: Api<EndpointSlice> = Api::namespaced(install.client.clone(), &install.namespace);
    let selector = ListParams::default().labels(&format!("kubernetes.io/service-name={name}"));
    let endpoints_fix = format!(
        "kubectl -n {ns} get endpointslices -l kubernetes.io/service-name={name}; kubectl -n {ns} get pods -l app.kubernetes.io/name=connectors -o wide",
        ns = install.namespace
    );
    match slices.list(&selector).await {
        Ok(list) => {
            let ready = list
                .items
                .iter()
                .flat_map(|slice| &slice.endpoints)
                .filter(|endpoint| endpoint.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
                .count();
            if ready == 0 {
                return Check::problem(subject, "the Service has no ready endpoint", endpoints_fix);
            }
        }
        Err(error) => return Check::unreadable(&subject, "the Service's endpoints", &error, &endpoints_fix),
    }
    let path = format!(
        "/api/v1/namespaces/{}/services/{service}/proxy/healthz",
        install.namespace
    );
    let request = match http::Request::get(&path).body(Vec::new()) {
        Ok(request) => request,
        Err(error) => return Check::skipped(subject, error.to_string()),
    };
    let network_fix = format!(
        "the pods are ready but the API server cannot reach them: kubectl -n {} get networkpolicies (the API server must reach the webhook on 8443)",
        install.namespace
    );
    match tokio::time::timeout(HEALTH_TIMEOUT, install.client.request_text(request)).await {
        Ok(Ok(_)) => Check::ok(subject, "/healthz answers through the Service"),
        Ok(Err(kube::Error::Api(status))) if status.code == 403 => {
            Check::skipped(subject, "cannot use the service proxy: forbidden for this user")
        }
        Ok(Err(error)) => Check::problem(
            subject,
            format!("/healthz through the Service failed: {error}"),
            network_fix,
        ),
        Err(_) => Check::problem(
            subject,
            format!(
                "/healthz through the Service did not answer within {}s",
                HEALTH_TIMEOUT.as_secs()
            ),
            network_fix,
        ),
    }
}

/// How long `/healthz` through the API server may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

/// The CSI driver object, its DaemonSet, and its registration on each node.
async fn csi(install: &Install) -> Vec<Check> {
    let client = &install.client;
    let driver = connector::keys::CSI_DRIVER;
    let mut checks = Vec::new();
    let subject = format!("CSI driver {driver}");
    checks.push(match Api::<CSIDriver>::all(client.clone()).get(driver).await {
        Ok(_) => Check::ok(subject, "registered with the API server"),
        Err(error) => Check::unreadable(&subject, "the CSIDriver", &error, INSTALL_FIX),
    });
    checks.push(daemon_set(install, "connectors-csi", "CSI plugin").await);
    let nodes = match Api::<Node>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await
    {
        Ok(nodes) => nodes.items,
        Err(error) => {
            checks.push(Check::unreadable("CSI on nodes", "the Nodes", &error, ""));
            return checks;
        }
    };
    let csi_nodes: Api<CSINode> = Api::all(client.clone());
    let mut missing = Vec::new();
    for node in &nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        let registered = csi_nodes
            .get_opt(&name)
            .await
            .ok()
            .flatten()
            .is_some_and(|n| n.spec.drivers.iter().any(|d| d.name == driver));
        if !registered {
            missing.push(name);
        }
    }
    let subject = "CSI on nodes (csinode)";
    checks.push(if missing.is_empty() {
        Check::ok(subject, format!("{driver} registered with kubelet on all {} node(s)", nodes.len()))
    } else {
        Check::problem(
            subject,
            format!(
                "{driver} not registered on {} of {} node(s): {}; pods there that use the volume stay ContainerCreating",
                missing.len(),
                nodes.len(),
                missing.join(", ")
            ),
            format!(
                "kubectl -n {ns} get pods -l app.kubernetes.io/component=csi -o wide; kubectl -n {ns} logs ds/connectors-csi\n(check the DaemonSet's tolerations and nodeSelector, and that csi.kubeletDir is the kubelet's root directory)",
                ns = install.csi_namespace
            ),
        )
    });
    checks
}

async fn daemon_set(install: &Install, name: &str, what: &str) -> Check {
    let api: Api<DaemonSet> = Api::namespaced(install.client.clone(), &install.csi_namespace);
    let subject = format!("{what} (daemonset {name})");
    match api.get(name).await {
        Ok(set) => {
            let status = set.status.unwrap_or_default();
            replicas_check(
                subject,
                status.number_ready,
                status.desired_number_scheduled,
                &install.csi_namespace,
                "daemonset",
                name,
            )
        }
        Err(error) => Check::unreadable(&subject, "the DaemonSet", &error, INSTALL_FIX),
    }
}

/// The node pull endpoint, when images are rewritten to a node's loopback.
async fn node_pull(install: &Install) -> Vec<Check> {
    let config: Api<ConfigMap> = Api::namespaced(install.client.clone(), &install.namespace);
    let pull_address = match config.get_opt("connectors-config").await {
        Ok(Some(map)) => map
            .data
            .and_then(|mut d| d.remove("CONNECTORS_PULL_ADDRESS"))
            .unwrap_or_default(),
        Ok(None) => {
            return vec![Check::problem(
                "settings (configmap connectors-config)",
                "does not exist",
                INSTALL_FIX,
            )];
        }
        Err(error) => {
            return vec![Check::unreadable(
                "settings (configmap connectors-config)",
                "the ConfigMap",
                &error,
                INSTALL_FIX,
            )];
        }
    };
    let host = pull_address
        .rsplit_once(':')
        .map_or(pull_address.as_str(), |(host, _)| host);
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return vec![Check::skipped(
            "node pull endpoint",
            format!("images are rewritten to {pull_address}, not to a node's loopback"),
        )];
    }
    // NB: and what the endpoint relays to: the proxy's HTTPS, as the API
    // server reaches it (the endpoint itself listens on each node's
    // loopback, which nothing off the node reaches).
    vec![
        daemon_set(
            install,
            "connectors-node-pull",
            &format!("node pull endpoint for {pull_address}"),
        )
        .await,
        service_health(install, "proxy HTTPS for node pulls", "https:connectors-proxy:443").await,
    ]
}

/// Each Connector's Ready condition, with what its reason asks for.
async fn connectors(install: &Install) -> Vec<Check> {
    let apis: Vec<Api<connector::Connector>> = if install.connector_namespaces.is_empty() {
        vec![Api::all(install.client.clone())]
    } else {
        install
            .connector_namespaces
            .iter()
            .map(|namespace| Api::namespaced(install.client.clone(), namespace))
            .collect()
    };
    let mut list = Vec::new();
    for api in apis {
        match api.list(&ListParams::default()).await {
            Ok(found) => list.extend(found.items),
            Err(error) => return vec![Check::unreadable("Connectors", "the Connectors", &error, INSTALL_FIX)],
        }
    }
    if list.is_empty() {
        let where_ = if install.connector_namespaces.is_empty() {
            "in the cluster".to_owned()
        } else {
            format!("in {}", install.connector_namespaces.join(", "))
        };
        return vec![Check::skipped("Connectors", format!("none {where_}"))];
    }
    list.iter()
        .map(|connector| {
            let namespace = connector.metadata.namespace.clone().unwrap_or_default();
            let name = connector.metadata.name.clone().unwrap_or_default();
            let subject = format!("Connector {namespace}/{name}");
            let conditions = connector
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default();
            let Some(ready) = conditions.iter().find(|c| c.type_ == "Ready") else {
                return Check::problem(
                    subject,
                    "no Ready condition yet: the controller has not reconciled it",
                    format!("kubectl -n {} logs deploy/connectors-controller", install.namespace),
                );
            };
            if ready.status == "True" {
                return Check::ok(subject, "Ready");
            }
            let reason = ready.reason.clone().unwrap_or_default();
            let message = ready.message.clone().unwrap_or_default();
            Check::problem(
                subject,
                format!("not Ready: {reason}: {message}"),
                connector_fix(&reason, &namespace, &name),
            )
        })
        .collect()
}

/// What to do about a Connector not Ready for `reason`.
fn connector_fix(reason: &str, namespace: &str, name: &str) -> String {
    let describe = format!("kubectl -n {namespace} describe connector {name}");
    match reason {
        "SecretNotReady" | "SecretNotFound" | "SecretInvalid" | "CredentialRequired" | "TokenRejected" => format!(
            "put a valid credential in the Secret spec.auth.secretRef names (kubernetes.io/basic-auth: username, password): kubectl -n {namespace} get connector {name} -o jsonpath='{{.spec.auth.secretRef.name}}'; then {describe}"
        ),
        "EgressRefused" => format!(
            "the registry's address is in a range the proxy does not dial: allow it (chart value egressAllow, CONNECTORS_EGRESS_ALLOW) if it is yours; {describe}"
        ),
        "InvalidAddress" => format!(
            "fix spec.address (a URL such as https://harbor.example.com): kubectl -n {namespace} edit connector {name}"
        ),
        "ConnectorClassNotFound" | "ConnectorClassNotReady" | "AuthTypeNotSupported" => {
            format!("kubectl get connectorclasses; fix spec.connectorClassName or spec.auth.name: {describe}")
        }
        "RealmRefused" => format!(
            "the registry's token service is on a host the connector does not name: add it to spec.addressExtensions; {describe}"
        ),
        _ => format!(
            "{describe} (its conditions and events say why); kubectl -n {namespace} get events --field-selector involvedObject.name={name}"
        ),
    }
}
