//! `netd sidecars`: the sidecars netd supervises, one per container on a meshed network.

use super::output::{print_json, Format, Table};
use super::CliError;
use crate::client::Client;

/// Lists sidecars.
pub async fn run(client: &Client, out: Format) -> Result<(), CliError> {
    let sidecars = client.sidecars().await?;
    if out == Format::Json {
        return Ok(print_json(&sidecars)?);
    }
    let mut t = Table::new(&[
        "CONTAINER",
        "IFNAME",
        "NETWORK",
        "STATE",
        "PID",
        "RESTARTS",
        "INTERCEPT",
        "LAST ERROR",
    ]);
    for s in &sidecars {
        t.row(vec![
            s.container_id
                .get(..12)
                .unwrap_or(&s.container_id)
                .to_string(),
            s.ifname.clone(),
            s.network.clone(),
            if s.adopted {
                format!("{} (adopted)", s.state)
            } else {
                s.state.to_string()
            },
            s.pid.map_or_else(|| "-".to_string(), |p| p.to_string()),
            s.restarts.to_string(),
            if s.intercepting { "yes" } else { "no" }.to_string(),
            s.last_error.clone().unwrap_or_else(|| "-".to_string()),
        ]);
    }
    Ok(t.print()?)
}
