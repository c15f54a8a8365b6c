//! `netd up`: runs the node daemon in the foreground.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use netd_cni::nat::intercept::InterceptSpec;
use netd_config::netd::{DEFAULT_CNI_CONF_DIR, DEFAULT_DATA_DIR, DEFAULT_VIP_RANGE};

use super::CliError;
use crate::daemon::{self, DaemonOptions};
use crate::dns::DnsOptions;
use crate::health::DEFAULT_MAX_IN_FLIGHT;
use crate::liveness::DEFAULT_SWEEP_MS;
use crate::mesh::{self, MeshOptions};
use crate::registry::store::etcd::parse_url;

/// Arguments of `netd up`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Runs until SIGTERM or ctrl-c, then finishes in-flight requests and exits. Creates the network
`netd` (10.89.0.0/24 + fd00:89::/64, bridge netd0) on first start and writes
<cni-conf-dir>/netd.conflist, so `podman run --network netd ...` works right away.

DNS: containers get netd's DNS at their network's gateway (port 53): container names,
services (web, web.default, web.default.svc.netd.local), SRV and PTR; other names go to
--dns-upstream or the host's resolvers. Example: netd up --dns-listen 127.0.0.1:5353

Several machines share one registry through etcd (each with its own node name):
  netd up --node node-a --store etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379

Mesh: every container on a network created with --mesh gets a netd-sidecar (started in its
network namespace, restarted with backoff, stopped on DEL) and nf_tables rules in its namespace
that send its TCP and DNS through the sidecar. `netd sidecars` lists them.

Example systemd unit (/etc/systemd/system/netd.service):
  [Service]
  ExecStart=/usr/local/bin/netd up
  Restart=on-failure
  KillMode=process
  [Install]
  WantedBy=multi-user.target")]
pub struct Args {
    /// Directory of the embedded store.
    #[arg(long, default_value = DEFAULT_DATA_DIR, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Share the registry with other nodes through an etcd v3 cluster, e.g.
    /// etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379 (every member's client address; give
    /// each node its own --node). Default: the embedded store in --data-dir.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// Directory where network conflists are written.
    #[arg(long, default_value = DEFAULT_CNI_CONF_DIR, value_name = "DIR")]
    pub cni_conf_dir: PathBuf,
    /// Range that service virtual IPs are allocated from.
    #[arg(long, default_value = DEFAULT_VIP_RANGE, value_name = "CIDR")]
    pub vip_range: IpNet,
    /// Node name recorded on endpoints registered here (default: the host name).
    #[arg(long)]
    pub node: Option<String>,
    /// Seconds to let in-flight requests finish on shutdown.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub drain_timeout: u64,
    /// Health-check probes run at once (each endpoint has at most one in flight).
    #[arg(long, default_value_t = DEFAULT_MAX_IN_FLIGHT, value_name = "N")]
    pub health_concurrency: usize,
    /// Milliseconds between checks for containers whose network namespace is gone (their
    /// attachments and endpoints are then removed).
    #[arg(long, default_value_t = DEFAULT_SWEEP_MS, value_name = "MS")]
    pub netns_sweep_ms: u64,
    /// Also answer DNS (UDP and TCP) on ADDR, e.g. 127.0.0.1:5353. Repeatable.
    #[arg(long = "dns-listen", value_name = "ADDR")]
    pub dns_listen: Vec<SocketAddr>,
    /// Do not answer DNS on each network's gateway address (port 53).
    #[arg(long)]
    pub no_network_dns: bool,
    /// Forward names outside netd's zones to ADDR (IP or IP:PORT). Repeatable; default: the
    /// nameservers of /etc/resolv.conf at startup.
    #[arg(long = "dns-upstream", value_name = "ADDR", value_parser = parse_upstream)]
    pub dns_upstream: Vec<SocketAddr>,
    /// Do not program service VIPs (nf_tables table `inet netd-vip` in this network namespace).
    #[arg(long)]
    pub no_vip: bool,
    /// Do not start sidecars for containers on meshed networks (nor intercept their traffic).
    #[arg(long)]
    pub no_mesh: bool,
    /// The sidecar program (default: netd-sidecar next to netd, else on PATH).
    #[arg(long, value_name = "PATH")]
    pub sidecar_bin: Option<PathBuf>,
    /// Outbound destination port that meshed containers reach directly, not through their
    /// sidecar (e.g. 22). Repeatable.
    #[arg(long = "mesh-exclude-port", value_name = "PORT")]
    pub mesh_exclude_ports: Vec<u16>,
    /// Inbound port of meshed containers that bypasses their sidecar. Repeatable.
    #[arg(long = "mesh-exclude-inbound-port", value_name = "PORT")]
    pub mesh_exclude_inbound_ports: Vec<u16>,
    /// Destinations (CIDR) that meshed containers reach directly. Repeatable.
    #[arg(long = "mesh-exclude-cidr", value_name = "CIDR")]
    pub mesh_exclude_cidrs: Vec<IpNet>,
    /// Sidecars of one network on this node talk over TCP like remote ones, instead of over
    /// node-local unix streams (in `links/` next to the API socket).
    #[arg(long)]
    pub no_local_links: bool,
    /// On a normal stop, also stop every sidecar and remove its interception (by default they
    /// keep serving from their last snapshot, and the next netd adopts them).
    #[arg(long)]
    pub stop_sidecars_on_exit: bool,
    /// Seconds a sidecar may drain on stop (its --drain-timeout); SIGKILL 2 s after that.
    #[arg(long, default_value_t = mesh::DEFAULT_SIDECAR_DRAIN.as_secs(), value_name = "SECONDS")]
    pub sidecar_drain_timeout: u64,
}

/// An upstream resolver: `IP` (port 53) or `IP:PORT` / `[IPv6]:PORT`.
fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("{s:?} is not an address (e.g. 192.0.2.53 or 127.0.0.1:5353)"))
}

/// Runs the daemon.
pub async fn run(socket: &Path, args: Args) -> Result<(), CliError> {
    if args.vip_range.trunc() != args.vip_range {
        return Err(CliError::Usage(format!(
            "--vip-range {} has host bits set (did you mean {}?)",
            args.vip_range,
            args.vip_range.trunc()
        )));
    }
    if args.health_concurrency == 0 || args.netns_sweep_ms == 0 {
        return Err(CliError::Usage(
            "--health-concurrency and --netns-sweep-ms must be at least 1".into(),
        ));
    }
    if let Some(url) = &args.store {
        parse_url(url).map_err(|e| CliError::Usage(format!("--store: {e}")))?;
    }
    let sidecar_state = args.data_dir.join("sidecars");
    daemon::run(DaemonOptions {
        socket: socket.to_path_buf(),
        data_dir: args.data_dir,
        store: args.store,
        cni_conf_dir: args.cni_conf_dir,
        vip_range: args.vip_range,
        node: args.node,
        drain_timeout: Duration::from_secs(args.drain_timeout),
        health_max_in_flight: args.health_concurrency,
        netns_sweep_interval: Duration::from_millis(args.netns_sweep_ms),
        dns: DnsOptions {
            listen: args.dns_listen,
            network_dns: !args.no_network_dns,
            upstreams: (!args.dns_upstream.is_empty()).then_some(args.dns_upstream),
        },
        vip: !args.no_vip,
        mesh: (!args.no_mesh).then(|| MeshOptions {
            sidecar_bin: args.sidecar_bin.unwrap_or_else(mesh::default_sidecar_bin),
            api_socket: socket.to_path_buf(),
            state_dir: sidecar_state,
            sidecar_drain: Duration::from_secs(args.sidecar_drain_timeout),
            backoff_min: mesh::DEFAULT_BACKOFF_MIN,
            backoff_max: mesh::DEFAULT_BACKOFF_MAX,
            intercept: InterceptSpec {
                exclude_outbound_ports: args.mesh_exclude_ports,
                exclude_inbound_ports: args.mesh_exclude_inbound_ports,
                exclude_cidrs: args.mesh_exclude_cidrs,
                ..InterceptSpec::default()
            },
            network_dns: !args.no_network_dns,
            stop_sidecars_on_exit: args.stop_sidecars_on_exit,
            // Absolute: sidecars check it is, and need not share netd's working directory.
            local_links: (!args.no_local_links)
                .then(|| std::path::absolute(socket).ok())
                .flatten()
                .and_then(|s| s.parent().map(|d| d.join("links"))),
        }),
    })
    .await?;
    Ok(())
}
