//! `connectors crd`: prints the CRD generated from the Rust types.

pub fn run() -> anyhow::Result<()> {
    super::write_stdout(&connector::crd::crd_yaml())
}
