//! `netd unexpose SVC`: removes a service and all its endpoints.

use netd_config::netd::DEFAULT_NAMESPACE;

use super::output::{print_json, Format};
use super::CliError;
use crate::client::Client;

/// Arguments of `netd unexpose`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Service name.
    pub service: String,
    /// Namespace of the service.
    #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
}

/// Deletes the service.
pub async fn run(client: &Client, out: Format, args: Args) -> Result<(), CliError> {
    let eps = client
        .endpoints(&args.namespace, &args.service)
        .await
        .map(|e| e.len())
        .unwrap_or(0);
    let d = client
        .delete_service(&args.namespace, &args.service)
        .await?;
    if out == Format::Json {
        return Ok(print_json(&d)?);
    }
    println!(
        "removed service {}.{} and its {eps} endpoint(s)",
        args.service, args.namespace
    );
    Ok(())
}
