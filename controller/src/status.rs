//! The Connector status reconciler: kube-runtime's `Controller` over
//! Connectors, re-triggered by the Secrets they reference. Each reconcile
//! probes only when due (the probe interval, or a backoff after failure) or
//! when the connector's generation, its Secrets or its class changed, and
//! patches `status` only when something other than the probe time changed.
//! A new leader finds statuses a previous one wrote: a connector Ready at
//! its current generation is first probed at a point of one interval fixed
//! by its name, so a restart spreads the probes instead of making them all
//! at once. A new proxy CA is written into the addresses without probing.
//! Only the leader probes and writes.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connector::crd::HttpAddress;
use connector::store::{ClassStore, Content, KubeClassStore, SecretWatches, drop_bookkeeping, referenced_secrets};
use connector::{Connector, ConnectorClass};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::conditions;
use crate::metrics::Metrics;
use crate::probe::{Check, ProbeReport, Prober, SecretLookup, Verdict};
use crate::service::{self, ServiceSettings, ServiceState};

/// The field manager and event reporter name.
pub(crate) const CONTROLLER_NAME: &str = "connectors-controller";

/// Why a reconcile failed (it is retried after the initial backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read Secret {namespace}/{name}: {source}")]
    ReadSecret {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to patch the status of connector {namespace}/{name}: {source}")]
    PatchStatus {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// How the status reconciler behaves.
#[derive(Debug, Clone)]
pub struct StatusSettings {
    /// The proxy's base URL; addresses are `<proxy_url>/namespaces/<ns>/connectors/<name>`
    /// unless the connector has a Service of its own.
    pub proxy_url: String,
    /// Gives each connector a Service of its own (`c-<name>`) and its
    /// address; `None`: the shared proxy address only.
    pub services: Option<ServiceSettings>,
    /// Re-probe healthy connectors this often.
    pub probe_interval: Duration,
    /// The first retry after a failed probe; doubled up to the interval.
    pub initial_backoff: Duration,
    /// Concurrent reconciles.
    pub concurrency: u16,
    /// At most this many referenced Secrets followed for changes (each
    /// watch a connection and about 40 KiB): all of them up to it; beyond
    /// it those of connectors not Ready first, so a fix an admin makes is
    /// seen at once; a Secret not followed is read at its connector's next
    /// probe.
    pub secret_watches: usize,
}

/// [`StatusSettings::secret_watches`] by default: every referenced Secret
/// of up to 1,000 connectors.
pub const DEFAULT_SECRET_WATCHES: usize = 1_000;

/// What decides whether a connector must be probed again before it is due.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    generation: Option<i64>,
    credential_version: Option<String>,
    ca_version: Option<String>,
    class_version: Option<String>,
}

struct Schedule {
    fingerprint: Fingerprint,
    due: Instant,
    failures: u32,
}

struct Context {
    client: kube::Client,
    settings: StatusSettings,
    prober: Prober,
    leader: watch::Receiver<bool>,
    proxy_ca: watch::Receiver<Option<String>>,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    schedules: Mutex<HashMap<String, Schedule>>,
    classes: KubeClassStore,
    connectors: Store<Connector>,
    pacer: ProbePacer,
}

/// The fewest probes a second the pacer lets start.
const MIN_PROBES_PER_SECOND: f64 = 20.0;

/// Paces the probes that are merely due (nothing changed): at most three
/// times the even rate (connectors per probe interval), at least
/// [`MIN_PROBES_PER_SECOND`], start in a second. Probes due while the
/// reconciler was busy (a new leader's first pass over thousands of
/// connectors, a slow API server) would otherwise all start together once
/// it catches up, against the registries. A new or changed connector's
/// probe is not paced.
struct ProbePacer {
    /// Probes that may start now, and when that was counted.
    state: tokio::sync::Mutex<(f64, tokio::time::Instant)>,
}

impl Default for ProbePacer {
    fn default() -> Self {
        Self {
            // NB: full, whatever the rate: capped at it when first used.
            state: tokio::sync::Mutex::new((f64::INFINITY, tokio::time::Instant::now())),
        }
    }
}

impl ProbePacer {
    /// The rate for `connectors` probed every `interval`.
    fn rate(connectors: usize, interval: Duration) -> f64 {
        (3.0 * connectors as f64 / interval.as_secs_f64().max(1.0)).max(MIN_PROBES_PER_SECOND)
    }

    /// Waits for a probe's turn at `per_second`.
    async fn turn(&self, per_second: f64) {
        // NB: the lock is held while waiting: turns are handed out in order.
        let mut state = self.state.lock().await;
        let (tokens, since) = *state;
        let now = tokio::time::Instant::now();
        let tokens = (tokens + now.duration_since(since).as_secs_f64() * per_second).min(per_second);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            return;
        }
        let wait = Duration::from_secs_f64((1.0 - tokens) / per_second);
        tokio::time::sleep(wait).await;
        *state = (0.0, now + wait);
    }
}

/// Runs the reconciler until `shutdown` resolves.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: kube::Client,
    settings: StatusSettings,
    prober: Prober,
    identity: &str,
    leader: watch::Receiver<bool>,
    proxy_ca: watch::Receiver<Option<String>>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let connectors: Api<Connector> = Api::all(client.clone());
    let class_api: Api<ConnectorClass> = Api::all(client.clone());
    let classes = KubeClassStore::spawn(client.clone());
    // The cache keeps each Connector without the API server's bookkeeping:
    // with its managed fields, 10,000 connectors held 223 MiB, without 150.
    let (store, writer) = reflector::store();
    let trigger = reflector::reflector(
        writer,
        watcher::watcher(connectors, watcher::Config::default()).modify(|c| drop_bookkeeping(&mut c.metadata)),
    )
    .applied_objects();
    let controller = Controller::for_stream(trigger, store.clone())
        .with_config(ControllerConfig::default().concurrency(settings.concurrency.max(1)));
    let readiness = {
        let store = store.clone();
        async move {
            if store.wait_until_ready().await.is_ok() {
                ready.store(true, Ordering::Release);
                tracing::info!("the connector cache has synced");
            }
        }
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: CONTROLLER_NAME.to_owned(),
            instance: Some(identity.to_owned()),
        },
    );
    let context = Arc::new(Context {
        client,
        settings,
        prober,
        leader: leader.clone(),
        proxy_ca: proxy_ca.clone(),
        recorder,
        metrics,
        schedules: Mutex::new(HashMap::new()),
        classes,
        connectors: store.clone(),
        pacer: ProbePacer::default(),
    });
    // The Secrets Connectors reference, one metadata-only watch each (no
    // Secret list, no credential in this process's memory but while a probe
    // uses it): a change re-triggers the Connectors that name it. Only
    // while leading: a follower's reconciles do nothing, and each watch is
    // a connection and about 40 KiB (a new leader reads each Secret as it
    // reconciles, so no change is missed in between).
    let (leadership_notices, notices) = watch::channel(0_u64);
    tokio::spawn({
        let mut leader = leader.clone();
        async move {
            while leader.changed().await.is_ok() {
                leadership_notices.send_modify(|n| *n += 1);
            }
        }
    });
    let secret_watches = {
        let (store, leader, settings) = (store.clone(), leader.clone(), context.settings.clone());
        SecretWatches::spawn(
            context.client.clone(),
            Content::Metadata,
            move || {
                if !*leader.borrow() {
                    return std::collections::BTreeSet::new();
                }
                followed_secrets(&store.state(), &settings)
            },
            Some(notices),
        )
    };
    let secret_changes = {
        let store = store.clone();
        // NB: a lagging receiver skips what it missed: a later change
        // re-triggers the same connectors.
        tokio_stream::wrappers::BroadcastStream::new(secret_watches.subscribe())
            .filter_map(|change| std::future::ready(change.ok()))
            .flat_map(move |(namespace, name)| futures::stream::iter(connectors_referencing(&store, &namespace, &name)))
    };
    // A deleted Connector's readiness series and probe schedule go with it;
    // a replica that stops leading stops reporting.
    let forget = {
        let (store, context, leader) = (store.clone(), context.clone(), leader.clone());
        async move {
            loop {
                tokio::time::sleep(METRICS_PRUNE_INTERVAL).await;
                let leading = *leader.borrow();
                let exists = |namespace: &str, name: &str| store.get(&ObjectRef::new(name).within(namespace)).is_some();
                context
                    .metrics
                    .forget_absent(|namespace, name| leading && exists(namespace, name));
                let mut schedules = context.schedules.lock().unwrap_or_else(|e| e.into_inner());
                schedules.retain(|key, _| {
                    key.split_once('/')
                        .is_some_and(|(namespace, name)| exists(namespace, name))
                });
            }
        }
    };
    let class_store = store.clone();
    let run = controller
        .reconcile_on(secret_changes)
        // A class created, changed or deleted: its connectors again.
        .watches(class_api, watcher::Config::default(), move |class: ConnectorClass| {
            connectors_of_class(&class_store, &class.name_any())
        })
        .reconcile_all_on(everything_again(leader, proxy_ca, context.clone()))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "connector reconcile did not complete");
            }
        });
    // NB: `forget` never ends; the controller's end ends it.
    futures::join!(readiness, async {
        futures::pin_mut!(forget);
        futures::future::select(Box::pin(run), forget).await;
    });
}

/// Connectors in the Secret's namespace that name it.
fn connectors_referencing(store: &Store<Connector>, namespace: &str, name: &str) -> Vec<ObjectRef<Connector>> {
    store
        .state()
        .iter()
        .filter(|c| c.namespace().as_deref() == Some(namespace))
        .filter(|c| {
            let credential = c.spec.auth.as_ref().and_then(|a| a.secret_ref.as_ref());
            let ca = c.spec.ca_cert_secret_ref.as_ref();
            credential.is_some_and(|r| r.name == name) || ca.is_some_and(|r| r.name == name)
        })
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// How soon a connector whose class is missing (or lacks its auth type)
/// is looked at again; from memory, so cheap.
const UNUSABLE_CLASS_RECHECK: Duration = Duration::from_secs(2);

/// How often the readiness series of deleted Connectors are dropped.
const METRICS_PRUNE_INTERVAL: Duration = Duration::from_secs(10);

/// Connectors of class `name`.
fn connectors_of_class(store: &Store<Connector>, name: &str) -> Vec<ObjectRef<Connector>> {
    store
        .state()
        .iter()
        .filter(|c| c.spec.connector_class_name == name)
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// `ConnectorClassReady`: the class the connector names exists and offers
/// its auth type.
fn class_check(connector: &Connector, class: Option<&ConnectorClass>) -> Check {
    let name = &connector.spec.connector_class_name;
    let Some(class) = class else {
        return Check {
            verdict: Verdict::False,
            reason: "ConnectorClassNotFound",
            message: format!("ConnectorClass {name} does not exist (kubectl get connectorclasses lists those that do)"),
        };
    };
    if let Some(auth) = connector
        .spec
        .auth
        .as_ref()
        .filter(|auth| !class.has_auth_type(&auth.name))
    {
        return Check {
            verdict: Verdict::False,
            reason: "AuthTypeNotSupported",
            message: format!(
                "ConnectorClass {name} has no auth type {} (it has: {})",
                auth.name,
                class.auth_type_list()
            ),
        };
    }
    Check {
        verdict: Verdict::True,
        reason: "ConnectorClassReady",
        message: format!("ConnectorClass {name} offers what the connector names"),
    }
}

/// A trigger each time this replica becomes the leader (every schedule is
/// forgotten) or the proxy CA changes (the addresses are rewritten).
fn everything_again(
    leader: watch::Receiver<bool>,
    proxy_ca: watch::Receiver<Option<String>>,
    context: Arc<Context>,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(
        (leader, proxy_ca, context),
        |(mut leader, mut proxy_ca, context)| async move {
            loop {
                tokio::select! {
                    changed = leader.changed() => {
                        changed.ok()?;
                        if !*leader.borrow_and_update() {
                            continue;
                        }
                        // NB: what a past term scheduled is stale; the first
                        // visit decides anew (spread when already probed).
                        context.schedules.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    }
                    changed = proxy_ca.changed() => {
                        changed.ok()?;
                        proxy_ca.borrow_and_update();
                    }
                }
                return Some(((), (leader, proxy_ca, context)));
            }
        },
    )
}

/// `ProxyServiceReady` for a Service state; `shared` is the address the
/// status keeps when the Service is not there.
fn service_check(state: &ServiceState, shared: &str) -> Check {
    match state {
        ServiceState::Ready { url } => Check {
            verdict: Verdict::True,
            reason: "ServiceReady",
            message: format!("{url} reaches the proxy"),
        },
        ServiceState::Conflict { service } => Check {
            verdict: Verdict::False,
            reason: "ServiceConflict",
            message: format!(
                "a Service {service} exists that this connector does not own; it is left alone and the address is {shared}"
            ),
        },
        ServiceState::Unnamable { service } => Check {
            verdict: Verdict::False,
            reason: "InvalidServiceName",
            message: format!(
                "{service} is not a valid Service name (at most 63 lowercase letters, digits and '-'); the address is {shared}"
            ),
        },
        ServiceState::Failed { why } => Check {
            verdict: Verdict::Unknown,
            reason: "ServiceError",
            message: format!("{why}; the address is {shared} meanwhile"),
        },
    }
}

fn error_policy(_connector: Arc<Connector>, error: &Error, context: Arc<Context>) -> Action {
    tracing::warn!(%error, "connector reconcile failed");
    Action::requeue(context.settings.initial_backoff)
}

async fn read_secret(client: &kube::Client, namespace: &str, name: Option<&str>) -> Result<SecretLookup, Error> {
    let Some(name) = name else {
        return Ok(SecretLookup::NotReferenced);
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(secret)) => Ok(SecretLookup::Found(Box::new(secret))),
        Ok(None) => Ok(SecretLookup::Missing(name.to_owned())),
        Err(source) => Err(Error::ReadSecret {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        }),
    }
}

fn version(lookup: &SecretLookup) -> Option<String> {
    match lookup {
        SecretLookup::NotReferenced => None,
        SecretLookup::Missing(_) => Some("missing".to_owned()),
        SecretLookup::Found(secret) => secret.metadata.resource_version.clone(),
    }
}

async fn reconcile(connector: Arc<Connector>, context: Arc<Context>) -> Result<Action, Error> {
    if !*context.leader.borrow() {
        return Ok(Action::await_change());
    }
    let namespace = connector.namespace().unwrap_or_default();
    let name = connector.name_any();
    let key = format!("{namespace}/{name}");
    let credential_name = connector
        .spec
        .auth
        .as_ref()
        .and_then(|a| a.secret_ref.as_ref())
        .map(|r| r.name.as_str());
    let ca_name = connector.spec.ca_cert_secret_ref.as_ref().map(|r| r.name.as_str());
    if !context.classes.has_synced() {
        // NB: a class not listed yet is not a missing class.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let class = context.classes.connector_class(&connector.spec.connector_class_name);
    let class_check = class_check(&connector, class.as_deref());
    // NB: a connector whose class is unusable is checked again soon from
    // memory alone (no Secret read, no probe): the class may be created a
    // moment after its watch event reached the reconciler.
    let usable = class_check.verdict == Verdict::True;
    let (credential, ca) = if usable {
        (
            read_secret(&context.client, &namespace, credential_name).await?,
            read_secret(&context.client, &namespace, ca_name).await?,
        )
    } else {
        (SecretLookup::NotReferenced, SecretLookup::NotReferenced)
    };
    let proxy_ca = context.proxy_ca.borrow().clone();
    if proxy_ca.is_none() {
        // NB: the address in the status carries the proxy CA; a status
        // written before bootstrap has read it would drop the CA until the
        // next write.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let fingerprint = Fingerprint {
        generation: connector.metadata.generation,
        credential_version: version(&credential),
        ca_version: version(&ca),
        class_version: class.as_ref().and_then(|c| c.metadata.resource_version.clone()),
    };
    // NB: a probe that is due (nothing changed) is paced; one of a new or
    // changed connector is not.
    let (not_due, previous_failures, paced) = {
        let mut schedules = context.schedules.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match schedules.get(&key) {
            Some(schedule) if usable && schedule.fingerprint == fingerprint && now < schedule.due => {
                (Some(schedule.due), 0, false)
            }
            Some(schedule) => (None, schedule.failures, schedule.fingerprint == fingerprint),
            None if usable && probed_before(&connector, &context.settings) => {
                // A previous leader probed it and nothing it depends on has
                // changed since: its first probe here falls somewhere in one
                // interval, so a new leader does not probe everything at once.
                let due = now + first_probe_offset(&key, context.settings.probe_interval);
                schedules.insert(
                    key.clone(),
                    Schedule {
                        fingerprint: fingerprint.clone(),
                        due,
                        failures: 0,
                    },
                );
                (Some(due), 0, false)
            }
            None => (None, 0, false),
        }
    };
    if let Some(due) = not_due {
        refresh_proxy_ca(&context, &connector, proxy_ca).await?;
        return Ok(Action::requeue(due.saturating_duration_since(Instant::now())));
    }

    let report = match &class {
        Some(class) if class_check.verdict == Verdict::True => {
            let auth_probe = connector
                .spec
                .auth
                .as_ref()
                .and_then(|auth| class.auth_probe(&auth.name));
            if paced {
                let rate = ProbePacer::rate(context.connectors.len(), context.settings.probe_interval);
                context.pacer.turn(rate).await;
            }
            let started = Instant::now();
            let report = context.prober.probe(&connector, auth_probe, &credential, &ca).await;
            let result = if report.healthy() { "success" } else { "failure" };
            context.metrics.probed(result, started.elapsed());
            report
        }
        _ => ProbeReport::not_probed("ConnectorClassNotReady", "the connector's class is not usable"),
    };
    let healthy = report.healthy() && class_check.verdict == Verdict::True;
    let shared = conditions::proxy_address(&context.settings.proxy_url, &namespace, &name);
    let service = match &context.settings.services {
        Some(settings) => Some(service::ensure(&context.client, &connector, settings).await),
        None => None,
    };
    let url = match &service {
        Some(ServiceState::Ready { url }) => url.clone(),
        _ => shared.clone(),
    };
    let address = HttpAddress {
        url,
        ca_certs: proxy_ca,
        audience: Some(connector::keys::PROXY_TOKEN_AUDIENCE.to_owned()),
    };
    let now = conditions::now_timestamp();
    let current = connector.status.as_ref();
    let mut next = conditions::next_status(
        current,
        &class_check,
        &report,
        connector.metadata.generation,
        address,
        &now,
    );
    if let Some(state) = &service {
        let check = service_check(state, &shared);
        next = conditions::with_proxy_service(current, next, &check, connector.metadata.generation, &now);
    }

    // NB: leadership may have been lost while probing.
    if !*context.leader.borrow() {
        return Ok(Action::await_change());
    }
    if conditions::needs_write(current, &next) {
        let api: Api<Connector> = Api::namespaced(context.client.clone(), &namespace);
        let patch = serde_json::json!({ "status": next });
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::PatchStatus {
                namespace: namespace.clone(),
                name: name.clone(),
                source,
            })?;
        context.metrics.status_writes.inc();
        publish_transitions(&context, &connector, current, &next).await;
    }
    context
        .metrics
        .set_ready(&namespace, &name, conditions::is_ready(&next));

    if !usable {
        return Ok(Action::requeue(UNUSABLE_CLASS_RECHECK));
    }
    let failures = if healthy {
        0
    } else {
        previous_failures.saturating_add(1)
    };
    let delay = next_probe_delay(&context.settings, failures);
    if !healthy {
        tracing::info!(connector = %key, reason = ?next.conditions.last().and_then(|c| c.reason.as_deref()), retry_in = ?delay, "connector is not ready");
    }
    context.schedules.lock().unwrap_or_else(|e| e.into_inner()).insert(
        key,
        Schedule {
            fingerprint,
            due: Instant::now() + delay,
            failures,
        },
    );
    Ok(Action::requeue(delay))
}

/// Whether the connector's status is one this controller wrote for its
/// current generation and found Ready, at the address it would write now
/// (the proxy CA aside: [`refresh_proxy_ca`] keeps that without a probe).
fn probed_before(connector: &Connector, settings: &StatusSettings) -> bool {
    let Some(status) = &connector.status else {
        return false;
    };
    let namespace = connector.namespace().unwrap_or_default();
    let name = connector.name_any();
    let shared = conditions::proxy_address(&settings.proxy_url, &namespace, &name);
    let url = settings
        .services
        .as_ref()
        .and_then(|services| service::url(&name, &namespace, services))
        .unwrap_or(shared);
    let address = status.proxy.as_ref().and_then(|p| p.http_address.as_ref());
    status.observed_generation == connector.metadata.generation
        && conditions::is_ready(status)
        && address.is_some_and(|a| a.url == url)
}

/// The Secrets to follow for changes: every one the connectors reference,
/// or when they are more than [`StatusSettings::secret_watches`], as many,
/// those of connectors not Ready at their generation first.
fn followed_secrets(connectors: &[Arc<Connector>], settings: &StatusSettings) -> BTreeSet<(String, String)> {
    let (mut unsettled, mut settled) = (BTreeSet::new(), BTreeSet::new());
    for connector in connectors {
        let ready = connector.status.as_ref().is_some_and(|status| {
            status.observed_generation == connector.metadata.generation && conditions::is_ready(status)
        });
        let into = if ready { &mut settled } else { &mut unsettled };
        into.extend(referenced_secrets(connector));
    }
    let limit = settings.secret_watches;
    let mut followed: BTreeSet<(String, String)> = unsettled.into_iter().take(limit).collect();
    for key in settled {
        if followed.len() >= limit {
            break;
        }
        followed.insert(key);
    }
    followed
}

/// Where in one probe interval a connector's first probe after a change of
/// leader falls: spread evenly by its name, the same on every replica.
fn first_probe_offset(key: &str, interval: Duration) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    let millis = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(hasher.finish() % millis)
}

/// Writes the proxy CA into the connector's address when it differs (a CA
/// rotation): the address changes, the registry's answer does not, so no
/// probe is made for it.
async fn refresh_proxy_ca(context: &Context, connector: &Connector, proxy_ca: Option<String>) -> Result<(), Error> {
    let address = connector
        .status
        .as_ref()
        .and_then(|s| s.proxy.as_ref())
        .and_then(|p| p.http_address.as_ref());
    if address.is_none_or(|a| a.ca_certs == proxy_ca) {
        return Ok(());
    }
    let namespace = connector.namespace().unwrap_or_default();
    let name = connector.name_any();
    let api: Api<Connector> = Api::namespaced(context.client.clone(), &namespace);
    let patch = serde_json::json!({ "status": { "proxy": { "httpAddress": { "CACerts": proxy_ca } } } });
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| Error::PatchStatus {
            namespace,
            name,
            source,
        })?;
    context.metrics.status_writes.inc();
    Ok(())
}

/// The interval when healthy; after `failures` failed probes in a row,
/// `initial_backoff * 2^(failures-1)`, capped at the interval.
fn next_probe_delay(settings: &StatusSettings, failures: u32) -> Duration {
    if failures == 0 {
        return settings.probe_interval;
    }
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
    settings
        .initial_backoff
        .saturating_mul(factor)
        .min(settings.probe_interval)
}

async fn publish_transitions(
    context: &Context,
    connector: &Connector,
    previous: Option<&connector::crd::ConnectorStatus>,
    next: &connector::crd::ConnectorStatus,
) {
    let reference = connector.object_ref(&());
    for condition in conditions::transitions(previous, next) {
        let event = Event {
            type_: if condition.status == "True" {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: condition.reason.clone().unwrap_or_else(|| condition.type_.clone()),
            note: Some(format!(
                "{} is {}: {}",
                condition.type_,
                condition.status,
                condition.message.as_deref().unwrap_or_default()
            )),
            action: "Probe".to_owned(),
            secondary: None,
        };
        if let Err(error) = context.recorder.publish(&event, &reference).await {
            tracing::warn!(%error, "failed to publish an event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pacer_lets_a_burst_of_its_rate_through_then_spreads_the_rest() {
        let pacer = ProbePacer::default();
        assert_eq!(ProbePacer::rate(100, Duration::from_secs(300)), MIN_PROBES_PER_SECOND);
        assert_eq!(ProbePacer::rate(10_000, Duration::from_secs(300)), 100.0);
        for _ in 0..1_000 {
            // NB: a full bucket's burst: never waits.
            tokio::time::timeout(Duration::from_secs(5), pacer.turn(1_000.0))
                .await
                .expect("a turn at once");
        }
        let started = tokio::time::Instant::now();
        for _ in 0..300 {
            pacer.turn(1_000.0).await;
        }
        // NB: a lower bound (the pace); the upper one only bounds the test.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_secs(30),
            "300 more at 1,000 a second took {took:?}"
        );
    }

    #[test]
    fn failed_probes_back_off_exponentially_up_to_the_interval() {
        let settings = StatusSettings {
            proxy_url: String::new(),
            services: None,
            probe_interval: Duration::from_secs(300),
            initial_backoff: Duration::from_secs(10),
            concurrency: 1,
            secret_watches: DEFAULT_SECRET_WATCHES,
        };
        let delays: Vec<u64> = (0..8).map(|f| next_probe_delay(&settings, f).as_secs()).collect();
        assert_eq!(delays, [300, 10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn first_probes_after_a_new_leader_spread_over_the_interval() {
        let interval = Duration::from_secs(300);
        let offsets: Vec<Duration> = (0..10_000)
            .map(|i| first_probe_offset(&format!("tenant-{i}/registry"), interval))
            .collect();
        assert!(offsets.iter().all(|o| *o < interval));
        // Each tenth of the interval gets a tenth of the connectors, give or take.
        let mut tenths = [0_u32; 10];
        for offset in &offsets {
            tenths[(offset.as_secs() / 30) as usize] += 1;
        }
        assert!(tenths.iter().all(|n| (800..1200).contains(n)), "{tenths:?}");
        assert_eq!(
            first_probe_offset("team/harbor", interval),
            first_probe_offset("team/harbor", interval),
            "the same on every replica"
        );
    }

    fn settings(services: Option<ServiceSettings>) -> StatusSettings {
        StatusSettings {
            proxy_url: "http://connectors-proxy.connectors-system.svc".to_owned(),
            services,
            probe_interval: Duration::from_secs(300),
            initial_backoff: Duration::from_secs(10),
            concurrency: 1,
            secret_watches: DEFAULT_SECRET_WATCHES,
        }
    }

    fn probed(generation: i64, observed: i64, ready: &str, url: &str) -> Connector {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "connectors.alauda.io/v1alpha1",
            "kind": "Connector",
            "metadata": {"name": "harbor", "namespace": "team", "generation": generation},
            "spec": {"connectorClassName": "harbor", "address": "https://harbor.example.com"},
            "status": {
                "observedGeneration": observed,
                "conditions": [{"type": "Ready", "status": ready, "reason": "Ready", "message": "", "lastTransitionTime": "2026-12-01T10:00:00Z"}],
                "proxy": {"httpAddress": {"url": url, "CACerts": "old"}},
            },
        }))
        .expect("a connector")
    }

    #[test]
    fn only_a_ready_status_of_the_current_generation_at_the_current_address_waits_its_turn() {
        let shared = "http://connectors-proxy.connectors-system.svc/namespaces/team/connectors/harbor";
        let own = "http://c-harbor.team.svc.cluster.local";
        let services = Some(ServiceSettings {
            proxy_host: "connectors-proxy.connectors-system.svc.cluster.local".to_owned(),
            cluster_domain: "cluster.local".to_owned(),
        });
        assert!(probed_before(&probed(1, 1, "True", shared), &settings(None)));
        assert!(probed_before(&probed(1, 1, "True", own), &settings(services.clone())));
        // The spec changed, the registry failed, the address moved, no status yet.
        assert!(!probed_before(&probed(2, 1, "True", shared), &settings(None)));
        assert!(!probed_before(&probed(1, 1, "False", shared), &settings(None)));
        assert!(!probed_before(&probed(1, 1, "True", shared), &settings(services)));
        let mut fresh = probed(1, 1, "True", shared);
        fresh.status = None;
        assert!(!probed_before(&fresh, &settings(None)));
    }
}
