//! `netd endpoints SVC`: lists a service's endpoints.

use netd_config::netd::DEFAULT_NAMESPACE;

use super::output::{print_json, Format, Table};
use super::CliError;
use crate::client::Client;

/// Arguments of `netd endpoints`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Service name.
    pub service: String,
    /// Namespace of the service.
    #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
}

/// Lists endpoints.
pub async fn run(client: &Client, out: Format, args: Args) -> Result<(), CliError> {
    let eps = client.endpoints(&args.namespace, &args.service).await?;
    if out == Format::Json {
        return Ok(print_json(&eps)?);
    }
    let mut t = Table::new(&[
        "ID",
        "ADDRESS",
        "PORT",
        "NODE",
        "HEALTH",
        "WEIGHT",
        "LEASE",
        "CONTAINER",
    ]);
    for e in &eps {
        t.row(vec![
            e.id.clone(),
            e.address.to_string(),
            e.port.to_string(),
            e.node.clone(),
            e.health.to_string(),
            e.weight.to_string(),
            e.lease.map_or_else(|| "-".to_string(), |l| l.to_string()),
            e.container_id
                .as_deref()
                .map_or_else(|| "-".to_string(), |c| c.chars().take(12).collect()),
        ]);
    }
    Ok(t.print()?)
}
