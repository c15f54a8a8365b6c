//! `netd status`: the daemon's state at a glance.

use super::output::{print_json, Format};
use super::CliError;
use crate::client::Client;

/// Prints the daemon's status.
pub async fn run(client: &Client, out: Format) -> Result<(), CliError> {
    let s = client.status().await?;
    if out == Format::Json {
        return Ok(print_json(&s)?);
    }
    let up = s.uptime_seconds;
    println!(
        "netd {} on node {}, up {}h{:02}m{:02}s",
        s.version,
        s.node,
        up / 3600,
        up / 60 % 60,
        up % 60
    );
    println!("api:          {}", s.socket);
    println!(
        "store:        {} {} (revision {})",
        s.store.backend, s.store.location, s.revision
    );
    println!("networks:     {}", s.networks.join(", "));
    println!(
        "services:     {} ({} endpoints, {} leases)",
        s.services, s.endpoints, s.leases
    );
    println!("attachments:  {}", s.attachments);
    println!("watchers:     {}", s.watchers);
    println!("vip range:    {}", s.vip_range);
    println!("dns domain:   svc.{}", s.domain);
    let listeners = if s.dns.listeners.is_empty() {
        "none".to_string()
    } else {
        s.dns.listeners.join(", ")
    };
    println!(
        "dns:          {listeners} (udp, tcp; {} names)",
        s.dns.names
    );
    let upstreams = if s.dns.upstreams.is_empty() {
        "none".to_string()
    } else {
        s.dns.upstreams.join(", ")
    };
    println!("dns upstream: {upstreams}");
    Ok(())
}
