//! The command line: flags, their defaults, and their translation into an [`app::Config`],
//! with errors that name the flag.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::app::{self, Source};
use crate::balance::{DirectoryOptions, Policy};
use crate::http::HttpLimits;
use crate::local::LocalConfig;
use crate::sockopt::ConnectOptions;

/// netd-sidecar: the per-container data plane of the netd mesh.
#[derive(Debug, Clone, Parser)]
#[command(name = "netd-sidecar", version, about)]
pub struct Args {
    /// netd API socket the snapshot comes from (unless --snapshot is given).
    #[arg(long, env = "NETD_SOCKET", default_value = netd_config::netd::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The container (attachment) this sidecar serves.
    #[arg(long)]
    pub container_id: Option<String>,
    /// Network namespace to enter before anything else (path under /run/netns or /proc/PID/ns/net).
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// Static snapshot (JSON) instead of netd; reloaded on SIGHUP.
    #[arg(long)]
    pub snapshot: Option<PathBuf>,
    /// Transparent outbound listener; 127.0.0.1:PORT also listens on [::1]:PORT when the
    /// namespace has IPv6.
    #[arg(long, default_value = "127.0.0.1:15001")]
    pub outbound: SocketAddr,
    /// Transparent inbound listener (original port → application on 127.0.0.1:port, [::1]
    /// for IPv6); 0.0.0.0:PORT is bound dual-stack as [::]:PORT when the namespace has IPv6.
    #[arg(long, default_value = "0.0.0.0:15006")]
    pub inbound: SocketAddr,
    /// Admin listener: /metrics /ready /live /config.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Discovery DNS listener (UDP and TCP), plus [::1]:PORT for 127.0.0.1:PORT when the
    /// namespace has IPv6; off when not given.
    #[arg(long)]
    pub dns: Option<SocketAddr>,
    /// Upstream DNS servers for other names (ADDR:PORT; repeat or separate by spaces).
    #[arg(long, num_args = 1..)]
    pub upstream_dns: Vec<SocketAddr>,
    /// SO_MARK put on every upstream socket (decimal or 0x hex), so interception skips them.
    #[arg(long, value_parser = parse_mark)]
    pub mark: Option<u32>,
    /// JSON access log line per HTTP request (through tracing, on stderr).
    #[arg(long)]
    pub access_log: bool,
    /// Longest wait for in-flight requests on SIGTERM (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Longest wait for a client's first bytes before treating the connection as opaque TCP.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub detect_timeout: Duration,
    /// Opaque TCP (and TLS passthrough) connections with no byte either way for this long are
    /// closed (0: never).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub tcp_idle_timeout: Duration,
    /// Upstream connect timeout.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Outbound connections that were not redirected and whose requests name no service go
    /// here (a service VIP:port is balanced).
    #[arg(long)]
    pub default_target: Option<SocketAddr>,
    /// Inbound connections that were not redirected go here (e.g. 127.0.0.1:8080).
    #[arg(long)]
    pub inbound_target: Option<SocketAddr>,
    /// Node-local links: the directory this network's sidecars share on this node (absolute;
    /// it must exist). Upstream connections to a container whose
    /// sidecar listens there use a unix stream instead of TCP; off when not given.
    #[arg(long, value_parser = parse_local_dir)]
    pub local_links: Option<PathBuf>,
    /// This container's addresses: the inbound side of node-local links listens for each
    /// (repeatable).
    #[arg(long = "local-addr", requires = "local_links")]
    pub local_addrs: Vec<IpAddr>,
    /// Destination ports never sent over node-local links (ports excluded from inbound
    /// interception; repeatable).
    #[arg(long = "local-exclude-port", requires = "local_links")]
    pub local_exclude_ports: Vec<u16>,
    /// Default balancer: p2c, round-robin, random, hash:header:NAME, hash:cookie:NAME, hash:source.
    #[arg(long, default_value = "p2c")]
    pub balancer: Policy,
    /// Balancer of one service: NAMESPACE/NAME=POLICY (repeatable); wins over the snapshot.
    #[arg(long, value_parser = parse_service_policy)]
    pub service_balancer: Vec<(String, Policy)>,
    /// Largest HTTP request head / header list accepted, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    /// Runtime worker threads (1: a single-threaded runtime, the lightest).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    pub log_level: tracing::Level,
    /// All logs as JSON lines (access logs are JSON in any case).
    #[arg(long)]
    pub log_json: bool,
}

fn parse_mark(s: &str) -> Result<u32, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    match parsed {
        Ok(0) => Err("0 is not a usable mark (it means unmarked)".into()),
        Ok(m) => Ok(m),
        Err(_) => Err(format!(
            "{s:?} is not a mark: use a number like 0x4e44 or 20036"
        )),
    }
}

/// Parses `5s`, `500ms`, `2m`, `1h` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not a duration: use e.g. 5s, 500ms, 2m or 1h");
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

fn parse_local_dir(s: &str) -> Result<PathBuf, String> {
    let config = LocalConfig {
        dir: PathBuf::from(s),
        addrs: Vec::new(),
        exclude_ports: Vec::new(),
    };
    config.check().map(|()| config.dir)
}

fn parse_service_policy(s: &str) -> Result<(String, Policy), String> {
    let (service, policy) = s.split_once('=').ok_or_else(|| {
        format!("{s:?} is not NAMESPACE/NAME=POLICY (e.g. default/web=round-robin)")
    })?;
    if !service.contains('/') {
        return Err(format!(
            "{service:?} is not NAMESPACE/NAME (e.g. default/web)"
        ));
    }
    let policy = policy
        .parse()
        .map_err(|e: crate::balance::PolicyError| e.to_string())?;
    Ok((service.to_string(), policy))
}

impl Args {
    /// The configuration these flags describe.
    pub fn config(&self) -> app::Config {
        let source = match &self.snapshot {
            Some(path) => Source::File(path.clone()),
            None => Source::Netd(self.socket.clone()),
        };
        app::Config {
            source,
            container_id: self.container_id.clone(),
            outbound: self.outbound,
            inbound: Some(self.inbound),
            admin: Some(self.admin),
            dns: self.dns,
            upstream_dns: self.upstream_dns.clone(),
            balancers: DirectoryOptions {
                default_policy: self.balancer.clone(),
                overrides: self
                    .service_balancer
                    .iter()
                    .cloned()
                    .collect::<HashMap<_, _>>(),
                connect: ConnectOptions {
                    mark: self.mark,
                    timeout: self.connect_timeout,
                    local: None,
                },
            },
            connect: ConnectOptions {
                mark: self.mark,
                timeout: self.connect_timeout,
                local: None,
            },
            local: self.local_links.as_ref().map(|dir| LocalConfig {
                dir: dir.clone(),
                addrs: self.local_addrs.clone(),
                exclude_ports: self.local_exclude_ports.clone(),
            }),
            access_log: self.access_log,
            drain_timeout: self.drain_timeout,
            detect_timeout: self.detect_timeout,
            tcp_idle_timeout: self.tcp_idle_timeout,
            default_target: self.default_target,
            inbound_target: self.inbound_target,
            limits: HttpLimits {
                max_header_bytes: self.max_header_bytes,
                ..HttpLimits::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        Args::try_parse_from(std::iter::once("netd-sidecar").chain(args.iter().copied()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_the_contract() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.outbound.to_string(), "127.0.0.1:15001");
        assert_eq!(a.inbound.to_string(), "0.0.0.0:15006");
        assert_eq!(a.admin.to_string(), "127.0.0.1:15000");
        assert_eq!(a.drain_timeout, Duration::from_secs(5));
        assert_eq!(a.balancer, Policy::P2c);
        assert!(!a.access_log && a.dns.is_none() && a.mark.is_none());
        assert_eq!(a.tcp_idle_timeout, Duration::from_secs(3600));
        assert!(a.local_links.is_none());
        let a = parse(&[
            "--tcp-idle-timeout",
            "2m",
            "--local-links",
            "/run/netd/links/n",
            "--local-addr",
            "10.89.0.5",
            "--local-exclude-port",
            "9100",
        ])
        .unwrap();
        assert_eq!(a.tcp_idle_timeout, Duration::from_secs(120));
        let local = a.config().local.unwrap();
        assert_eq!(local.addrs, vec!["10.89.0.5".parse::<IpAddr>().unwrap()]);
        assert_eq!(local.exclude_ports, vec![9100]);
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        // Link options need the directory; the directory must be absolute.
        assert!(parse(&["--local-addr", "10.89.0.5"]).is_err());
        assert!(parse(&["--local-links", "links"])
            .unwrap_err()
            .contains("absolute"));
    }

    #[test]
    fn netd_supervisor_command_line_is_accepted() {
        // What netd's supervisor passes (netd/src/mesh/supervisor.rs, `sidecar_args`).
        let line = "--socket /run/netd/netd.sock --container-id abc --netns /run/netns/x \
                    --outbound 127.0.0.1:15001 --inbound 0.0.0.0:15006 --admin 127.0.0.1:15000 \
                    --dns 127.0.0.1:15053 --mark 0x4e44 --drain-timeout 5s \
                    --upstream-dns 10.89.0.1:53 [fd00:89::1]:53";
        let a = parse(&line.split_whitespace().collect::<Vec<_>>()).unwrap();
        let c = a.config();
        assert!(matches!(c.source, Source::Netd(ref p) if p.ends_with("netd.sock")));
        assert_eq!(c.connect.mark, Some(0x4e44));
        assert_eq!(c.dns.map(|d| d.port()), Some(15053));
        assert_eq!(c.upstream_dns.len(), 2);
        assert_eq!(
            a.netns.as_deref(),
            Some(std::path::Path::new("/run/netns/x"))
        );
    }

    #[test]
    fn flags_parse_and_bad_values_are_named() {
        let a = parse(&[
            "--mark",
            "0x4e44",
            "--drain-timeout",
            "250ms",
            "--upstream-dns",
            "127.0.0.1:53",
            "127.0.0.2:53",
            "--service-balancer",
            "default/web=hash:cookie:sid",
        ])
        .unwrap();
        assert_eq!(a.mark, Some(0x4e44));
        assert_eq!(a.drain_timeout, Duration::from_millis(250));
        assert_eq!(a.upstream_dns.len(), 2);
        assert_eq!(a.service_balancer[0].0, "default/web");
        for (args, needle) in [
            (&["--mark", "0"][..], "--mark"),
            (&["--mark", "zz"], "not a mark"),
            (&["--drain-timeout", "5 parsecs"], "not a duration"),
            (&["--balancer", "fastest"], "is not a balancer"),
            (&["--service-balancer", "web=p2c"], "NAMESPACE/NAME"),
            (&["--outbound", "localhost"], "--outbound"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }
}
