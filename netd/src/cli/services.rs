//! `netd services`: lists services with their VIPs, ports, DNS names and endpoint counts.

use super::output::{print_json, Format, Table};
use super::CliError;
use crate::client::Client;

/// Arguments of `netd services`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this namespace (default: all).
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// Lists services.
pub async fn run(client: &Client, out: Format, args: Args) -> Result<(), CliError> {
    let services = client.services(args.namespace.as_deref()).await?;
    if out == Format::Json {
        return Ok(print_json(&services)?);
    }
    let status = client.status().await?;
    let mut t = Table::new(&["NAMESPACE", "NAME", "VIP", "PORTS", "ENDPOINTS", "DNS"]);
    for s in &services {
        let eps = client.endpoints(&s.namespace, &s.name).await?;
        let ports: Vec<String> = s
            .ports
            .iter()
            .map(|p| {
                let mut p2 = format!("{}/{}", p.port, p.protocol);
                if let Some(h) = p.host_port {
                    p2.push_str(&format!(" (host {h})"));
                }
                p2
            })
            .collect();
        t.row(vec![
            s.namespace.clone(),
            s.name.clone(),
            s.vip.to_string(),
            ports.join(","),
            eps.len().to_string(),
            s.dns_name(&status.domain),
        ]);
    }
    Ok(t.print()?)
}
