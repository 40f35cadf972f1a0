//! `connectors certs`: a CA and a serving certificate for local use.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use certs::CertificateAuthority;

#[derive(clap::Args)]
pub struct Args {
    /// Directory to write ca.crt, tls.crt and tls.key into.
    #[arg(long)]
    out: PathBuf,
    /// DNS names of the serving certificate (comma-separated or repeated).
    #[arg(long = "dns", value_delimiter = ',', default_value = "localhost")]
    dns_names: Vec<String>,
    /// IP addresses of the serving certificate.
    #[arg(long = "ip", value_delimiter = ',', default_value = "127.0.0.1")]
    ips: Vec<IpAddr>,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    days: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let valid_for = Duration::from_secs(args.days * 24 * 3600);
    let ca = CertificateAuthority::generate("connectors local CA", valid_for)?;
    let issued = ca.issue_serving(&args.dns_names, &args.ips, valid_for)?;
    let files = certs::write_serving_bundle(&args.out, &ca, &issued)?;
    println!("CA:          {}", files.ca_cert.display());
    println!("certificate: {}", files.cert.display());
    println!("key:         {}", files.key.display());
    Ok(())
}
