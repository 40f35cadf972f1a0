//! Leader election over a `coordination.k8s.io/v1` Lease, as client-go's
//! leaderelection does it: the holder renews `renewTime` every renew
//! interval with a resourceVersion-checked replace; another candidate takes
//! the lease over only after it has seen the same record unchanged for a
//! whole lease duration (judged on its own clock, never by comparing clocks
//! across nodes), or at once when the holder released it.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a lease lasts and how often its holder renews it.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTiming {
    /// `leaseDurationSeconds`: how long others wait before taking over.
    pub duration: Duration,
    /// How often the holder renews (and candidates retry).
    pub renew_interval: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
        }
    }
}

impl LeaseTiming {
    /// The holder stops working when it could not renew for this long, so
    /// it stops before anyone else may take over.
    fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs_f64().ceil() as u64)
            .unwrap_or(i32::MAX)
            .max(1)
    }
}

/// One candidate for the lease.
pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaseTiming,
    leader: watch::Sender<bool>,
    /// The other holder's record as last seen, and when it last changed.
    observed: Option<(String, Instant)>,
    last_renewed: Option<Instant>,
}

/// The outcome of one attempt to acquire or renew.
enum Attempt {
    Leading,
    Following,
    /// The API server could not be asked; keep the current state until the
    /// renew deadline passes.
    Unknown,
}

impl LeaderElection {
    /// A candidate for Lease `namespace/name` under `identity`.
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: &str, timing: LeaseTiming) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
            leader: watch::channel(false).0,
            observed: None,
            last_renewed: None,
        }
    }

    /// Whether this candidate leads, now and as it changes.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leader.subscribe()
    }

    /// Campaigns and renews until `stop` resolves, then releases the lease
    /// if it holds it, so a successor need not wait for it to expire.
    pub async fn run(mut self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let leading = match self.attempt().await {
                Attempt::Leading => true,
                Attempt::Following => false,
                Attempt::Unknown => {
                    let renewed_recently = self
                        .last_renewed
                        .is_some_and(|at| at.elapsed() < self.timing.renew_deadline());
                    *self.leader.borrow() && renewed_recently
                }
            };
            self.set_leading(leading);
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(self.timing.renew_interval) => {}
            }
        }
        self.release().await;
    }

    fn set_leading(&self, leading: bool) {
        let changed = self.leader.send_if_modified(|current| {
            let changed = *current != leading;
            *current = leading;
            changed
        });
        if changed {
            if leading {
                tracing::info!(lease = %self.name, identity = %self.identity, "became the leader");
            } else {
                tracing::warn!(lease = %self.name, identity = %self.identity, "no longer the leader");
            }
        }
    }

    async fn attempt(&mut self) -> Attempt {
        let current = match self.api.get_opt(&self.name).await {
            Ok(current) => current,
            Err(error) => {
                tracing::warn!(lease = %self.name, %error, "failed to read the lease");
                return Attempt::Unknown;
            }
        };
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.timing.duration_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return self.write(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        if holder.as_deref() == Some(self.identity.as_str()) {
            spec.renew_time = Some(now);
            spec.lease_duration_seconds = Some(self.timing.duration_seconds());
            return self.write(self.api.replace(&self.name, &PostParams::default(), &lease).await);
        }
        // NB: expiry is judged by how long this candidate has seen the same
        // record, not by comparing renewTime with the local clock.
        let record = format!(
            "{}/{:?}/{:?}",
            lease.metadata.resource_version.as_deref().unwrap_or_default(),
            holder,
            spec.renew_time
        );
        let observed_at = match &self.observed {
            Some((seen, at)) if *seen == record => *at,
            _ => {
                self.observed = Some((record, Instant::now()));
                Instant::now()
            }
        };
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(self.timing.duration);
        if holder.is_some() && observed_at.elapsed() < duration {
            return Attempt::Following;
        }
        tracing::info!(lease = %self.name, previous = ?holder, "taking over the lease");
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(self.timing.duration_seconds());
        spec.acquire_time = Some(now.clone());
        spec.renew_time = Some(now);
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        self.write(self.api.replace(&self.name, &PostParams::default(), &lease).await)
    }

    fn write(&mut self, result: kube::Result<Lease>) -> Attempt {
        match result {
            Ok(_) => {
                self.last_renewed = Some(Instant::now());
                self.observed = None;
                Attempt::Leading
            }
            // NB: 409 means another candidate wrote first: it leads.
            Err(kube::Error::Api(status)) if status.code == 409 => Attempt::Following,
            Err(error) => {
                tracing::warn!(lease = %self.name, %error, "failed to write the lease");
                Attempt::Unknown
            }
        }
    }

    /// Gives the lease up: no holder and a one-second duration, as client-go
    /// releases it.
    async fn release(&mut self) {
        let was_leading = *self.leader.borrow();
        self.set_leading(false);
        if !was_leading {
            return;
        }
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => tracing::info!(lease = %self.name, "released the lease"),
            Err(error) => tracing::warn!(lease = %self.name, %error, "failed to release the lease"),
        }
    }
}
