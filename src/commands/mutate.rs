//! `connectors mutate`: the webhook's mutation, offline, over manifests,
//! with the Connectors and Namespaces of a store file or of the live
//! cluster (as `istioctl kube-inject` reads its injector's configuration).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::parser::ValueSource;
use connector::store::FileStore;
use connector::{Connector, ConnectorClass};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};

use super::{InjectionArgs, KubeArgs};

#[derive(clap::Args)]
pub struct Args {
    /// The store: YAML with the Namespaces, Secrets and Connectors. Without
    /// it they are read from the cluster (`--kubeconfig`, `--context`),
    /// with the install's settings and proxy CA.
    #[arg(long, env = "CONNECTORS_STORE", conflicts_with_all = ["kubeconfig", "context"])]
    store: Option<PathBuf>,
    #[command(flatten)]
    kube: KubeArgs,
    /// The manifest to mutate; `-` reads standard input.
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// The namespace of every object (as kubectl's -n). Objects without one
    /// are in the context's namespace (live), else `default`.
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Print the JSON patches instead of the mutated manifest.
    #[arg(long)]
    patch: bool,
    #[command(flatten)]
    injection: InjectionArgs,
}

pub fn run(mut args: Args, matches: Option<&clap::ArgMatches>) -> anyhow::Result<()> {
    let manifest = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("failed to read standard input")?;
        text
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("failed to read {}", args.file.display()))?
    };
    let (store, default_namespace, proxy_ca) = match &args.store {
        Some(path) => (FileStore::load(path)?, "default".to_owned(), None),
        None => {
            let given = |id: &str| {
                matches.is_some_and(|m| {
                    matches!(
                        m.value_source(id),
                        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                    )
                })
            };
            let live = super::block_on(read_cluster(&args.kube, &args.injection.install_namespace))?;
            args.injection.apply_install_config(&live.config, given);
            let proxy_ca = live.proxy_ca.filter(|_| !given("proxy_ca"));
            (live.store, live.default_namespace, proxy_ca)
        }
    };
    let mut config = args.injection.config()?;
    if let Some(pem) = proxy_ca {
        config.proxy_ca_pem = Some(pem);
    }
    let mutated = webhook::manifest::mutate_manifest(
        &manifest,
        &store,
        &config,
        &default_namespace,
        args.namespace.as_deref(),
    )?;
    let output = if args.patch {
        serde_json::to_string_pretty(&mutated.patches)? + "\n"
    } else {
        webhook::manifest::mutated_to_yaml(&mutated.documents, &mutated.unchanged)?
    };
    super::write_stdout(&output)
}

/// What a mutation needs of the live cluster.
struct Live {
    store: FileStore,
    default_namespace: String,
    /// `connectors-config`'s data.
    config: BTreeMap<String, String>,
    /// The proxy CA bundle the webhook hands to pods.
    proxy_ca: Option<String>,
}

async fn read_cluster(kube: &KubeArgs, install_namespace: &str) -> anyhow::Result<Live> {
    let client = kube.client().await?;
    let default_namespace = client.default_namespace().to_owned();
    let params = ListParams::default();
    let connectors = Api::<Connector>::all(client.clone())
        .list(&params)
        .await
        .context("failed to list Connectors (is the CRD installed, and may you list them?)")?;
    // NB: a class list the caller may not read leaves the shipped classes.
    let classes = Api::<ConnectorClass>::all(client.clone()).list(&params).await.ok();
    let namespaces = Api::<Namespace>::all(client.clone())
        .list_metadata(&params)
        .await
        .context("failed to list Namespaces")?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client, install_namespace);
    let data = |name: &'static str| {
        let config_maps = config_maps.clone();
        async move {
            config_maps
                .get_opt(name)
                .await
                .with_context(|| format!("failed to read ConfigMap {install_namespace}/{name}"))
                .map(|map| map.and_then(|m| m.data).unwrap_or_default())
        }
    };
    let config = data("connectors-config").await?;
    let proxy_ca = data("connectors-proxy-ca").await?.remove("ca.crt");

    let mut items: Vec<Value> = Vec::new();
    for namespace in namespaces.items {
        items.push(json!({
            "kind": "Namespace",
            "metadata": {
                "name": namespace.metadata.name,
                "labels": namespace.metadata.labels,
                "annotations": namespace.metadata.annotations,
            },
        }));
    }
    for connector in connectors.items {
        // NB: a Connector whose address does not parse is refused at
        // admission as unknown; it must not hide the others.
        if let Err(error) = connector::address::RegistryAddress::parse(&connector.spec.address) {
            tracing::warn!(connector = %connector.key("default"), %error, "skipped: its address is not usable");
            continue;
        }
        let mut value = serde_json::to_value(&connector)?;
        value["kind"] = json!("Connector");
        items.push(value);
    }
    for class in classes.map(|list| list.items).unwrap_or_default() {
        let mut value = serde_json::to_value(&class)?;
        value["kind"] = json!("ConnectorClass");
        items.push(value);
    }
    let list = serde_json::to_string(&json!({"kind": "List", "items": items}))?;
    Ok(Live {
        store: FileStore::from_yaml(&list).context("the cluster's Connectors")?,
        default_namespace,
        config,
        proxy_ca,
    })
}
