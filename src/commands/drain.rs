//! `connectors drain-volumes`: before an uninstall, stop admitting pods
//! (the MutatingWebhookConfiguration goes) and evict every pod that uses a
//! connectors CSI volume, so that none is left Terminating for ever once
//! the CSI plugin that must unmount its volume is gone. The chart runs it
//! as a pre-delete hook; a pod that keeps coming back with the volume (its
//! workload declares it) fails the uninstall, named with its owner.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, EvictParams, ListParams};
use kube::{Api, ResourceExt};

use super::KubeArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    kube: KubeArgs,
    /// The MutatingWebhookConfiguration to delete first.
    #[arg(long, default_value = "connectors")]
    webhook_configuration: String,
    /// How long pods may take to go (evictions a PodDisruptionBudget
    /// refuses are retried meanwhile).
    #[arg(long, default_value = "300s", value_parser = humantime_seconds)]
    timeout: Duration,
}

fn humantime_seconds(text: &str) -> Result<Duration, String> {
    let digits = text.strip_suffix('s').unwrap_or(text);
    digits
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{text:?} is not a number of seconds (e.g. 300s)"))
}

/// How often the pods are listed again.
const POLL: Duration = Duration::from_secs(2);

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = args.kube.client().await?;
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    match configurations
        .delete(&args.webhook_configuration, &DeleteParams::default())
        .await
    {
        Ok(_) => {
            tracing::info!(name = %args.webhook_configuration, "admission stopped: the webhook configuration is deleted")
        }
        Err(kube::Error::Api(status)) if status.code == 404 => {
            tracing::info!(name = %args.webhook_configuration, "no webhook configuration to delete")
        }
        Err(error) => return Err(error).context("failed to delete the webhook configuration"),
    }
    let pods: Api<Pod> = Api::all(client.clone());
    let deadline = Instant::now() + args.timeout;
    let mut evicted: BTreeMap<String, usize> = BTreeMap::new();
    loop {
        let using = pods_using_the_volume(&pods).await?;
        if using.is_empty() {
            tracing::info!(evicted = evicted.len(), "no pod uses a connectors volume");
            return Ok(());
        }
        if Instant::now() >= deadline {
            let names: Vec<String> = using
                .iter()
                .map(|pod| {
                    let owner = pod
                        .owner_references()
                        .first()
                        .map(|o| format!(" (owned by {} {})", o.kind, o.name))
                        .unwrap_or_default();
                    format!("{}/{}{owner}", pod.namespace().unwrap_or_default(), pod.name_any())
                })
                .collect();
            bail!(
                "{} pod(s) still use a connectors volume after {}s: {}. A workload whose pod template declares the volume recreates them: remove the volume from it (or delete the workload), then uninstall again",
                names.len(),
                args.timeout.as_secs(),
                names.join(", ")
            );
        }
        for pod in &using {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let (namespace, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
            let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            match api.evict(&name, &EvictParams::default()).await {
                Ok(_) => {
                    *evicted.entry(format!("{namespace}/{name}")).or_default() += 1;
                    tracing::info!(pod = %format_args!("{namespace}/{name}"), "evicted: it uses a connectors volume");
                }
                // NB: 429: a PodDisruptionBudget refuses for now; 404: gone.
                Err(kube::Error::Api(status)) if matches!(status.code, 404 | 429) => {}
                Err(error) => return Err(error).with_context(|| format!("failed to evict pod {namespace}/{name}")),
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The pods with a volume of the connectors CSI driver.
async fn pods_using_the_volume(pods: &Api<Pod>) -> anyhow::Result<Vec<Pod>> {
    let list = pods.list(&ListParams::default()).await.context("failed to list pods")?;
    Ok(list
        .items
        .into_iter()
        .filter(|pod| {
            pod.spec.as_ref().is_some_and(|spec| {
                spec.volumes.iter().flatten().any(|volume| {
                    volume
                        .csi
                        .as_ref()
                        .is_some_and(|csi| csi.driver == connector::keys::CSI_DRIVER)
                })
            })
        })
        .collect())
}
