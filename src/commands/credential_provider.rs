//! `connectors credential-provider`: kubelet's image credential provider
//! plugin (`credentialprovider.kubelet.k8s.io/v1`). kubelet runs it per
//! image pull with a CredentialProviderRequest on stdin carrying the pod's
//! ServiceAccount token (tokenAttributes in kubelet's configuration); it
//! answers on stdout with that token as the password for the pull address,
//! so the proxy decides the pull as the pod's ServiceAccount.

use std::io::Read;

use access::credential_provider::{MAX_REQUEST_BYTES, respond};
use anyhow::Context;

pub fn run() -> anyhow::Result<()> {
    let mut request = String::new();
    std::io::stdin()
        .take(MAX_REQUEST_BYTES as u64 + 1)
        .read_to_string(&mut request)
        .context("failed to read the CredentialProviderRequest from stdin")?;
    anyhow::ensure!(
        request.len() <= MAX_REQUEST_BYTES,
        "the CredentialProviderRequest is larger than {MAX_REQUEST_BYTES} bytes"
    );
    let response = respond(&request, std::time::SystemTime::now())?;
    super::write_stdout(&response)
}
