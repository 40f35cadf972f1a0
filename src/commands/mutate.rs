//! `connectors mutate`: the webhook's mutation, offline, over manifests.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use connector::store::FileStore;

use super::InjectionArgs;

#[derive(clap::Args)]
pub struct Args {
    /// The store: YAML with the Namespaces, Secrets and Connectors.
    #[arg(long, env = "CONNECTORS_STORE")]
    store: PathBuf,
    /// The manifest to mutate; `-` reads standard input.
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// The namespace of every object (as kubectl's -n).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Print the JSON patches instead of the mutated manifest.
    #[arg(long)]
    patch: bool,
    #[command(flatten)]
    injection: InjectionArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let store = FileStore::load(&args.store)?;
    let config = args.injection.config()?;
    let manifest = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("failed to read standard input")?;
        text
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("failed to read {}", args.file.display()))?
    };
    let mutated = webhook::manifest::mutate_manifest(&manifest, &store, &config, "default", args.namespace.as_deref())?;
    let output = if args.patch {
        serde_json::to_string_pretty(&mutated.patches)? + "\n"
    } else {
        webhook::manifest::mutated_to_yaml(&mutated.documents, &mutated.unchanged)?
    };
    super::write_stdout(&output)
}
