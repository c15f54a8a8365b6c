//! `netd services`: lists services with their VIPs, ports, DNS names, endpoint counts, health
//! checks and HTTP routes (`-o json` shows each route in full).

use netd_config::netd::{Health, HealthCheck};

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
    let mut t = Table::new(&[
        "NAMESPACE",
        "NAME",
        "VIP",
        "PORTS",
        "ENDPOINTS",
        "CHECK",
        "ROUTES",
        "DNS",
    ]);
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
            match &s.health_check {
                Some(_) => {
                    let healthy = eps.iter().filter(|e| e.health == Health::Healthy).count();
                    format!("{}/{} healthy", healthy, eps.len())
                }
                None => eps.len().to_string(),
            },
            s.health_check
                .as_ref()
                .map_or_else(|| "-".to_string(), describe_check),
            if s.routes.is_empty() {
                "-".to_string()
            } else {
                let names: Vec<&str> = s.routes.iter().map(|r| r.name.as_str()).collect();
                names.join(",")
            },
            s.dns_name(&status.domain),
        ]);
    }
    Ok(t.print()?)
}

/// One-line description of a health check: `http:/healthz every 2s`.
pub fn describe_check(hc: &HealthCheck) -> String {
    let every = if hc.interval_ms.is_multiple_of(1000) {
        format!("{}s", hc.interval_ms / 1000)
    } else {
        format!("{}ms", hc.interval_ms)
    };
    format!("{hc} every {every}")
}
