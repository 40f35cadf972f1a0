//! Certificate bootstrap in the install namespace, shared by all replicas:
//! the proxy's interception CA and serving certificate, the webhook's CA and
//! serving certificate, ConfigMaps with the proxy CA for components that
//! trust it, and the MutatingWebhookConfiguration's `caBundle`.
//!
//! Objects are created only when absent (on 409 the other replica's are
//! re-read and used), and replaced with a resourceVersion-checked update
//! when unusable or when less than a third of their validity is left. CAs
//! rotate with an overlap (`rotation`): a new CA is trusted everywhere
//! before it signs, and the old one is trusted until what it signed is
//! gone. Only the leader writes.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certs::{CertificateAuthority, CertificateSummary};
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use tokio::sync::{Notify, watch};

use crate::metrics::{Metrics, ObjectLabels};
use crate::rotation::{
    self, BUNDLE_CHANGED_ANNOTATION, CA_CERT_KEY, Plan, ROTATE_ANNOTATION, TLS_CERT_KEY, TLS_KEY_KEY, secret_text,
};

/// The proxy's interception CA (type `kubernetes.io/tls`: `tls.crt`,
/// `tls.key`, `ca.crt`).
pub(crate) const PROXY_CA_SECRET: &str = "connectors-proxy-ca";
/// The proxy CA certificate only (`ca.crt`), in the install and CSI namespaces.
pub(crate) const PROXY_CA_CONFIG_MAP: &str = "connectors-proxy-ca";
/// The proxy's HTTPS serving certificate (`tls.crt`, `tls.key`, `ca.crt`).
pub(crate) const PROXY_TLS_SECRET: &str = "connectors-proxy-tls";
/// The webhook's own CA (`tls.crt`, `tls.key`, `ca.crt`).
pub(crate) const WEBHOOK_CA_SECRET: &str = "connectors-webhook-ca";
/// The webhook's serving certificate (`tls.crt`, `tls.key`, `ca.crt`).
pub(crate) const WEBHOOK_TLS_SECRET: &str = "connectors-webhook-tls";

/// CA validity: five years.
pub const CA_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// Serving certificate validity: one year.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A certificate this close to expiry gets a Warning Event each pass: its
/// renewal (at a third of its validity) has not happened.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "connectors-controller");
const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "connectors");

/// Why a bootstrap pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not the leader any more")]
    NotLeader,
    #[error("failed to {action} {kind} {namespace}/{name}: {source}")]
    Api {
        action: &'static str,
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("failed to create a certificate for {name}: {source}")]
    Certificate {
        name: String,
        #[source]
        source: certs::authority::Error,
    },
    #[error("{kind} {namespace}/{name} kept changing while being written")]
    Contended {
        kind: &'static str,
        namespace: String,
        name: String,
    },
}

/// Where the certificates go and which names they carry.
#[derive(Debug, Clone)]
pub struct BootstrapSettings {
    pub namespace: String,
    pub csi_namespace: String,
    pub proxy_service: String,
    /// `host[:port]` addresses clients reach the reverse proxy's HTTPS at
    /// (the pods' proxy address, a pull address nodes reach): their hosts
    /// are SANs, but for loopback ones (the node pull endpoint, plain HTTP).
    pub addresses: Vec<String>,
    pub cluster_domain: String,
    pub webhook_service: String,
    /// Names and addresses besides the Service's under which the API server
    /// reaches the webhook (a `url:` client configuration); SANs of its
    /// certificate.
    pub webhook_extra_names: Vec<String>,
    pub webhook_configuration: String,
    /// How often everything is re-checked (rotation).
    pub check_interval: Duration,
    /// How long each phase of a CA rotation lasts: every holder of the
    /// bundle must have the new one within it.
    pub ca_overlap: Duration,
}

impl BootstrapSettings {
    /// The proxy certificate's DNS and IP SANs.
    pub(crate) fn proxy_names(&self) -> (Vec<String>, Vec<IpAddr>) {
        let (mut dns, mut ips) = (
            service_names(&self.proxy_service, &self.namespace, &self.cluster_domain),
            Vec::new(),
        );
        for host in self.addresses.iter().filter_map(|address| address_host(address)) {
            match host.parse::<IpAddr>() {
                Ok(ip) if ip.is_loopback() => {}
                Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                Ok(_) => {}
                Err(_) if host.eq_ignore_ascii_case("localhost") => {}
                Err(_) if !dns.contains(&host) => dns.push(host),
                Err(_) => {}
            }
        }
        (dns, ips)
    }

    /// The webhook certificate's DNS and IP SANs.
    pub(crate) fn webhook_names(&self) -> (Vec<String>, Vec<IpAddr>) {
        let mut dns = service_names(&self.webhook_service, &self.namespace, &self.cluster_domain);
        let mut ips = Vec::new();
        for name in &self.webhook_extra_names {
            match name.parse::<IpAddr>() {
                Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                Ok(_) => {}
                Err(_) if !dns.contains(name) => dns.push(name.clone()),
                Err(_) => {}
            }
        }
        (dns, ips)
    }
}

/// `svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.<domain>`.
fn service_names(service: &str, namespace: &str, cluster_domain: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.{}", cluster_domain.trim_matches('.')),
    ]
}

/// The host of `host[:port]`, `[v6]:port` or a bare IPv6 address.
fn address_host(address: &str) -> Option<String> {
    let address = address.trim();
    let address = address.split_once("://").map_or(address, |(_, rest)| rest);
    let address = address.split('/').next().unwrap_or_default();
    let host = if let Some(rest) = address.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else if address.parse::<IpAddr>().is_ok() {
        address
    } else {
        address.rsplit_once(':').map_or(address, |(host, _)| host)
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Keeps the certificates while this replica leads.
pub struct Bootstrap {
    client: kube::Client,
    settings: BootstrapSettings,
    leader: watch::Receiver<bool>,
    proxy_ca: watch::Sender<Option<String>>,
    metrics: Arc<Metrics>,
    recorder: Recorder,
}

/// A CA as the certificates use it: the one that signs and the bundle that
/// is trusted (it and, during a rotation, the other).
struct Trust {
    signing: CertificateAuthority,
    bundle: String,
    /// When a rotation phase ends.
    recheck: Option<SystemTime>,
}

impl Bootstrap {
    pub fn new(
        client: kube::Client,
        settings: BootstrapSettings,
        leader: watch::Receiver<bool>,
        proxy_ca: watch::Sender<Option<String>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "connectors-controller".to_owned(),
                instance: None,
            },
        );
        Self {
            client,
            settings,
            leader,
            proxy_ca,
            metrics,
            recorder,
        }
    }

    /// Checks everything when leadership is gained, every check interval,
    /// and when the MutatingWebhookConfiguration changes; until `shutdown`.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let changed = Arc::new(Notify::new());
        let watch_configuration = watch_webhook_configuration(
            Api::all(self.client.clone()),
            self.settings.webhook_configuration.clone(),
            changed.clone(),
        );
        // NB: an admin's rotation request (an annotation on a CA Secret) is
        // acted on at once, not at the next check.
        let watch_secrets =
            watch_managed_secrets(self.client.clone(), self.settings.namespace.clone(), changed.clone());
        let mut leader = self.leader.clone();
        let work = async {
            let mut failures = 0u32;
            loop {
                let mut wait = self.settings.check_interval;
                if *leader.borrow_and_update() {
                    match self.reconcile().await {
                        Ok(recheck) => {
                            failures = 0;
                            if let Some(at) = recheck {
                                // NB: a rotation phase ends before the next check.
                                let until = at.duration_since(SystemTime::now()).unwrap_or_default();
                                wait = wait.min(until + Duration::from_millis(100));
                            }
                        }
                        Err(Error::NotLeader) => {}
                        Err(error) => {
                            failures += 1;
                            wait = (Duration::from_secs(1) * 2u32.saturating_pow(failures.min(10))).min(wait);
                            tracing::warn!(%error, retry_in = ?wait, "certificate bootstrap failed");
                        }
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = changed.notified() => {}
                    result = leader.changed() => if result.is_err() { return; },
                }
            }
        };
        tokio::select! {
            () = shutdown => {}
            () = work => {}
            () = watch_configuration => {}
            () = watch_secrets => {}
        }
    }

    fn ensure_leader(&self) -> Result<(), Error> {
        if *self.leader.borrow() {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    /// One pass over every object; when a CA rotation phase ends, if one
    /// is under way.
    pub async fn reconcile(&self) -> Result<Option<SystemTime>, Error> {
        let proxy_ca = self.ensure_ca(PROXY_CA_SECRET, "connectors proxy CA").await?;
        self.proxy_ca
            .send_if_modified(|current| replace_if_different(current, &proxy_ca.bundle));
        self.ensure_ca_config_map(&self.settings.namespace, &proxy_ca.bundle)
            .await?;
        if self.settings.csi_namespace != self.settings.namespace
            && let Err(error) = self
                .ensure_ca_config_map(&self.settings.csi_namespace, &proxy_ca.bundle)
                .await
        {
            // NB: the CSI namespace may not exist yet; the next pass retries.
            tracing::warn!(%error, "failed to publish the proxy CA to the CSI namespace");
        }
        let (dns, ips) = self.settings.proxy_names();
        self.ensure_leaf(PROXY_TLS_SECRET, &proxy_ca, &dns, &ips).await?;
        let webhook_ca = self.ensure_ca(WEBHOOK_CA_SECRET, "connectors webhook CA").await?;
        let (dns, ips) = self.settings.webhook_names();
        self.ensure_leaf(WEBHOOK_TLS_SECRET, &webhook_ca, &dns, &ips).await?;
        self.sync_ca_bundle(&webhook_ca.bundle).await?;
        if let Err(error) = self.ensure_classes().await {
            // NB: an install without the ConnectorClass CRD still gets its
            // certificates.
            tracing::warn!(%error, "failed to create the shipped ConnectorClasses");
        }
        Ok([proxy_ca.recheck, webhook_ca.recheck].into_iter().flatten().min())
    }

    /// Records when the certificate in Secret `name` expires, and warns
    /// (an Event on the Secret) when that is near.
    async fn watch_expiry(&self, secret: Option<&Secret>, name: &str, not_after: SystemTime) {
        let seconds = not_after
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.metrics
            .certificate_expiry
            .get_or_create(&ObjectLabels { name: name.to_owned() })
            .set(i64::try_from(seconds).unwrap_or(i64::MAX));
        let left = not_after.duration_since(SystemTime::now()).unwrap_or_default();
        if left < EXPIRY_WARNING
            && let Some(secret) = secret
        {
            let days = left.as_secs() / 86_400;
            self.event(
                secret,
                EventType::Warning,
                "CertificateExpiresSoon",
                format!("the certificate in {name} expires in {days} days and has not been renewed: see the controller's log"),
            )
            .await;
        }
    }

    async fn event(&self, secret: &Secret, type_: EventType, reason: &str, note: String) {
        let mut reference = secret.object_ref(&());
        reference.namespace = Some(self.settings.namespace.clone());
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Rotate".to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(%error, "failed to publish an event");
        }
    }

    /// Creates each shipped ConnectorClass (`manifests/classes.yaml`) that
    /// does not exist. A class that exists is the admin's: never changed.
    /// (They are not in the kustomization: a custom resource cannot be
    /// applied with its CRD in one `kubectl apply`.)
    async fn ensure_classes(&self) -> Result<(), Error> {
        let api: Api<connector::ConnectorClass> = Api::all(self.client.clone());
        for mut class in connector::class::built_in() {
            let name = class.metadata.name.clone().unwrap_or_default();
            let error = self.api_error("create", "ConnectorClass", "", &name);
            if api
                .get_opt(&name)
                .await
                .map_err(self.api_error("read", "ConnectorClass", "", &name))?
                .is_some()
            {
                continue;
            }
            self.ensure_leader()?;
            class.metadata.resource_version = None;
            match api.create(&PostParams::default(), &class).await {
                Ok(_) => tracing::info!(class = %name, "created the shipped ConnectorClass"),
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(source) => return Err(error(source)),
            }
        }
        Ok(())
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    fn api_error(
        &self,
        action: &'static str,
        kind: &'static str,
        namespace: &str,
        name: &str,
    ) -> impl FnOnce(kube::Error) -> Error {
        let (namespace, name) = (namespace.to_owned(), name.to_owned());
        move |source| Error::Api {
            action,
            kind,
            namespace,
            name,
            source: Box::new(source),
        }
    }

    /// Writes `data` as Secret `name`: created when `existing` is None, else
    /// replaced at its resourceVersion. Ok(false) on a 409 (re-read and retry).
    /// `changed_at`: when a CA's bundle changed (the rotation overlap
    /// counts from it). A rotation request on the Secret is cleared.
    async fn write_secret(
        &self,
        name: &str,
        existing: Option<Secret>,
        data: BTreeMap<String, String>,
        changed_at: Option<SystemTime>,
    ) -> Result<bool, Error> {
        self.ensure_leader()?;
        let api = self.secrets();
        let data = data.into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect();
        let mut secret = existing.clone().unwrap_or_else(|| Secret {
            metadata: managed_metadata(name),
            type_: Some("kubernetes.io/tls".to_owned()),
            ..Secret::default()
        });
        secret.data = Some(data);
        secret.string_data = None;
        let annotations = secret.metadata.annotations.get_or_insert_with(BTreeMap::new);
        annotations.remove(ROTATE_ANNOTATION);
        match changed_at {
            Some(at) => {
                annotations.insert(BUNDLE_CHANGED_ANNOTATION.to_owned(), rotation::unix_seconds(at));
            }
            None => {
                annotations.remove(BUNDLE_CHANGED_ANNOTATION);
            }
        }
        let result = match existing {
            None => api.create(&PostParams::default(), &secret).await,
            Some(_) => api.replace(name, &PostParams::default(), &secret).await,
        };
        match result {
            Ok(_) => {
                self.metrics
                    .certificate_writes
                    .get_or_create(&ObjectLabels { name: name.to_owned() })
                    .inc();
                tracing::info!(secret = %name, namespace = %self.settings.namespace, "wrote certificate Secret");
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(source) => Err(self.api_error("write", "Secret", &self.settings.namespace, name)(
                source,
            )),
        }
    }

    /// The CA in Secret `name`: generated when missing or unusable, rotated
    /// with an overlap when due or asked to (`rotation`).
    async fn ensure_ca(&self, name: &str, common_name: &str) -> Result<Trust, Error> {
        let generate = || {
            CertificateAuthority::generate(common_name, CA_VALIDITY).map_err(|source| Error::Certificate {
                name: name.to_owned(),
                source,
            })
        };
        for _ in 0..3 {
            let existing = self.secrets().get_opt(name).await.map_err(self.api_error(
                "read",
                "Secret",
                &self.settings.namespace,
                name,
            ))?;
            let now = SystemTime::now();
            let plan = match &existing {
                None => Plan::Replace {
                    why: "it does not exist".to_owned(),
                },
                Some(secret) => rotation::plan(secret, now, self.settings.ca_overlap, || {
                    CertificateAuthority::generate(common_name, CA_VALIDITY)
                })
                .map_err(|source| Error::Certificate {
                    name: name.to_owned(),
                    source,
                })?,
            };
            let trust = match plan {
                Plan::Keep {
                    signing,
                    bundle,
                    recheck,
                } => Trust {
                    signing,
                    bundle,
                    recheck,
                },
                Plan::Write {
                    signing,
                    bundle,
                    data,
                    changed_at,
                    recheck,
                    step,
                } => {
                    if !self
                        .write_secret(name, existing.clone(), data, Some(changed_at))
                        .await?
                    {
                        continue;
                    }
                    let note = step.describe(self.settings.ca_overlap);
                    tracing::info!(secret = %name, step = step.reason(), "{note}");
                    if step != rotation::Step::Record
                        && let Some(secret) = &existing
                    {
                        self.event(secret, EventType::Normal, step.reason(), format!("{name}: {note}"))
                            .await;
                    }
                    Trust {
                        signing,
                        bundle,
                        recheck,
                    }
                }
                Plan::Replace { why } => {
                    tracing::info!(secret = %name, %why, "replacing the CA");
                    let ca = generate()?;
                    let bundle = ca.cert_pem().to_owned();
                    let data = rotation::secret_data(&ca, &bundle, None);
                    if !self.write_secret(name, existing.clone(), data, None).await? {
                        continue;
                    }
                    Trust {
                        signing: ca,
                        bundle,
                        recheck: None,
                    }
                }
            };
            self.watch_expiry(existing.as_ref(), name, trust.signing.not_after())
                .await;
            return Ok(trust);
        }
        Err(Error::Contended {
            kind: "Secret",
            namespace: self.settings.namespace.clone(),
            name: name.to_owned(),
        })
    }

    /// A serving certificate from `ca` for the names, in Secret `name`.
    async fn ensure_leaf(&self, name: &str, trust: &Trust, dns: &[String], ips: &[IpAddr]) -> Result<(), Error> {
        let ca = &trust.signing;
        for _ in 0..3 {
            let existing = self.secrets().get_opt(name).await.map_err(self.api_error(
                "read",
                "Secret",
                &self.settings.namespace,
                name,
            ))?;
            if let Some(secret) = &existing {
                match check_leaf(secret, ca, &trust.bundle, dns, ips) {
                    Ok(not_after) => {
                        self.watch_expiry(Some(secret), name, not_after).await;
                        return Ok(());
                    }
                    Err(why) => tracing::info!(secret = %name, %why, "issuing a new serving certificate"),
                }
            }
            let issued = ca
                .issue_serving(dns, ips, LEAF_VALIDITY)
                .map_err(|source| Error::Certificate {
                    name: name.to_owned(),
                    source,
                })?;
            let not_after = issued.not_after;
            let data = BTreeMap::from([
                (TLS_CERT_KEY.to_owned(), issued.cert_pem),
                (TLS_KEY_KEY.to_owned(), issued.key_pem),
                (CA_CERT_KEY.to_owned(), trust.bundle.clone()),
            ]);
            if self.write_secret(name, existing.clone(), data, None).await? {
                self.watch_expiry(existing.as_ref(), name, not_after).await;
                return Ok(());
            }
        }
        Err(Error::Contended {
            kind: "Secret",
            namespace: self.settings.namespace.clone(),
            name: name.to_owned(),
        })
    }

    async fn ensure_ca_config_map(&self, namespace: &str, ca_pem: &str) -> Result<(), Error> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let name = PROXY_CA_CONFIG_MAP;
        for _ in 0..3 {
            let existing = api
                .get_opt(name)
                .await
                .map_err(self.api_error("read", "ConfigMap", namespace, name))?;
            let data = BTreeMap::from([(CA_CERT_KEY.to_owned(), ca_pem.to_owned())]);
            if existing.as_ref().and_then(|c| c.data.as_ref()) == Some(&data) {
                return Ok(());
            }
            self.ensure_leader()?;
            let result = match existing {
                None => {
                    let mut metadata = managed_metadata(name);
                    metadata.namespace = Some(namespace.to_owned());
                    let config_map = ConfigMap {
                        metadata,
                        data: Some(data),
                        ..ConfigMap::default()
                    };
                    api.create(&PostParams::default(), &config_map).await
                }
                Some(mut config_map) => {
                    config_map.data = Some(data);
                    api.replace(name, &PostParams::default(), &config_map).await
                }
            };
            match result {
                Ok(_) => {
                    self.metrics
                        .certificate_writes
                        .get_or_create(&ObjectLabels { name: name.to_owned() })
                        .inc();
                    tracing::info!(configmap = %name, %namespace, "wrote the proxy CA ConfigMap");
                    return Ok(());
                }
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(source) => return Err(self.api_error("write", "ConfigMap", namespace, name)(source)),
            }
        }
        Err(Error::Contended {
            kind: "ConfigMap",
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Sets every webhook's `clientConfig.caBundle` to the webhook CA, with
    /// a JSON patch guarded by the resourceVersion, only where it differs.
    async fn sync_ca_bundle(&self, ca_pem: &str) -> Result<(), Error> {
        let name = &self.settings.webhook_configuration;
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let Some(configuration) =
            api.get_opt(name)
                .await
                .map_err(self.api_error("read", "MutatingWebhookConfiguration", "", name))?
        else {
            tracing::debug!(configuration = %name, "no MutatingWebhookConfiguration to patch yet");
            return Ok(());
        };
        let Some(patch) = ca_bundle_patch(&configuration, ca_pem) else {
            return Ok(());
        };
        self.ensure_leader()?;
        match api
            .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
        {
            Ok(_) => {
                tracing::info!(configuration = %name, "patched the webhook caBundle");
                Ok(())
            }
            // NB: the resourceVersion test failed: the next pass re-reads it.
            Err(kube::Error::Api(status)) if matches!(status.code, 409 | 422) => Ok(()),
            Err(source) => Err(self.api_error("patch", "MutatingWebhookConfiguration", "", name)(
                source,
            )),
        }
    }
}

fn replace_if_different(current: &mut Option<String>, pem: &str) -> bool {
    if current.as_deref() == Some(pem) {
        return false;
    }
    *current = Some(pem.to_owned());
    true
}

fn managed_metadata(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(
            [MANAGED_BY, PART_OF]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        ),
        ..ObjectMeta::default()
    }
}

/// When it expires, if `secret` holds a serving certificate from `ca` for
/// exactly these names with more than a third of its validity left, and
/// `bundle` as its `ca.crt`.
fn check_leaf(
    secret: &Secret,
    ca: &CertificateAuthority,
    bundle: &str,
    dns: &[String],
    ips: &[IpAddr],
) -> Result<SystemTime, String> {
    let cert = secret_text(secret, TLS_CERT_KEY).ok_or("it has no tls.crt")?;
    let key = secret_text(secret, TLS_KEY_KEY).ok_or("it has no tls.key")?;
    certs::load_private_key_pem(&key).map_err(|e| e.to_string())?;
    if secret_text(secret, CA_CERT_KEY).as_deref() != Some(bundle) {
        return Err("its ca.crt is not the current CA bundle".to_owned());
    }
    let summary = CertificateSummary::from_pem(&cert).map_err(|e| e.to_string())?;
    if summary.due_for_renewal(SystemTime::now()) {
        return Err("less than a third of its validity is left".to_owned());
    }
    if summary.dns_names != dns || summary.ip_addresses != ips {
        return Err(format!(
            "its names {:?} {:?} are not {dns:?} {ips:?}",
            summary.dns_names, summary.ip_addresses
        ));
    }
    let first = dns
        .first()
        .cloned()
        .or_else(|| ips.first().map(IpAddr::to_string))
        .unwrap_or_default();
    certs::verify_serving_chain(&cert, ca.cert_pem(), &first).map_err(|e| e.to_string())?;
    Ok(summary.not_after)
}

/// The JSON patch that sets every webhook's caBundle to `ca_pem`, guarded by
/// the resourceVersion; None when all already match.
pub(crate) fn ca_bundle_patch(configuration: &MutatingWebhookConfiguration, ca_pem: &str) -> Option<json_patch::Patch> {
    let webhooks = configuration.webhooks.as_deref().unwrap_or_default();
    let mut operations = Vec::new();
    for (index, webhook) in webhooks.iter().enumerate() {
        if webhook.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) == Some(ca_pem.as_bytes()) {
            continue;
        }
        operations.push(serde_json::json!({
            "op": "add",
            "path": format!("/webhooks/{index}/clientConfig/caBundle"),
            "value": ByteString(ca_pem.as_bytes().to_vec()),
        }));
    }
    if operations.is_empty() {
        return None;
    }
    let guard = serde_json::json!({
        "op": "test",
        "path": "/metadata/resourceVersion",
        "value": configuration.metadata.resource_version,
    });
    operations.insert(0, guard);
    serde_json::from_value(serde_json::Value::Array(operations)).ok()
}

/// Notifies `changed` whenever one of the certificate Secrets changes (by
/// metadata-only watches of each by name: no Secret list).
async fn watch_managed_secrets(client: kube::Client, namespace: String, changed: Arc<Notify>) {
    let names = [PROXY_CA_SECRET, PROXY_TLS_SECRET, WEBHOOK_CA_SECRET, WEBHOOK_TLS_SECRET];
    let wanted = move || {
        names
            .iter()
            .map(|name| (namespace.clone(), (*name).to_owned()))
            .collect()
    };
    let watches = connector::store::SecretWatches::spawn(client, connector::store::Content::Metadata, wanted, None);
    let mut changes = watches.subscribe();
    loop {
        match changes.recv().await {
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => changed.notify_one(),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Notifies `changed` whenever the named configuration changes.
async fn watch_webhook_configuration(api: Api<MutatingWebhookConfiguration>, name: String, changed: Arc<Notify>) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher::watcher(api, config));
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => changed.notify_one(),
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%error, "watching the MutatingWebhookConfiguration failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_address_hosts_lose_their_port() {
        let cases = [
            ("registry.example.com:443", Some("registry.example.com")),
            ("10.0.0.5:30500", Some("10.0.0.5")),
            ("[fd00::5]:30500", Some("fd00::5")),
            ("fd00::5", Some("fd00::5")),
            ("Proxy.Example.com", Some("proxy.example.com")),
            ("", None),
        ];
        for (address, host) in cases {
            assert_eq!(address_host(address).as_deref(), host, "{address}");
        }
    }

    #[test]
    fn proxy_names_cover_the_service_and_the_addresses_clients_reach_over_tls() {
        let settings = BootstrapSettings {
            namespace: "connectors-system".into(),
            csi_namespace: "connectors-csi".into(),
            proxy_service: "connectors-proxy".into(),
            addresses: vec![
                "10.1.2.3:30443".into(),
                "127.0.0.1:7480".into(),
                "localhost:7480".into(),
                "proxy.example.com".into(),
            ],
            cluster_domain: "cluster.local".into(),
            webhook_service: "connectors-webhook".into(),
            webhook_extra_names: Vec::new(),
            webhook_configuration: "connectors".into(),
            check_interval: Duration::from_secs(600),
            ca_overlap: Duration::from_secs(3600),
        };
        let (dns, ips) = settings.proxy_names();
        assert_eq!(
            dns,
            [
                "connectors-proxy",
                "connectors-proxy.connectors-system",
                "connectors-proxy.connectors-system.svc",
                "connectors-proxy.connectors-system.svc.cluster.local",
                "proxy.example.com",
            ]
        );
        // The node pull endpoint's loopback address speaks plain HTTP.
        assert_eq!(ips, ["10.1.2.3".parse::<IpAddr>().unwrap()]);
    }
}
