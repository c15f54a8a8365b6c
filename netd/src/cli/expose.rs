//! `netd expose SVC PORT`: registers a service answering on this machine.
//!
//! Creates the service (or adds PORT to it), then registers an endpoint ADDRESS:PORT. Without
//! `--persist`, the endpoint hangs on a lease this process keeps alive (every TTL/3) until
//! ctrl-c or SIGTERM, then revokes it, so the endpoint disappears at once; if the process dies,
//! the lease expires within its TTL and takes the endpoint with it. If the daemon restarts or
//! forgets the lease, the registration is redone.

use std::net::IpAddr;
use std::time::Duration;

use netd_config::netd::{
    endpoint_id, validate_routes, EndpointSpec, HealthCheck, HttpRoute, Lease, Protocol,
    RoutesSpec, Service, ServicePort, ServiceSpec, DEFAULT_NAMESPACE,
};
use serde_json::json;
use tokio::signal::unix::{signal, SignalKind};

use super::output::{print_json, Format};
use super::CliError;
use crate::client::{Client, ClientError};

/// Arguments of `netd expose`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
The service gets a stable virtual IP and the DNS name SVC.NAMESPACE.svc.netd.local
(also SVC and SVC.NAMESPACE from containers on netd networks, once netd's DNS is enabled).

Examples:
  netd expose web 8080                      127.0.0.1:8080 as web, until ctrl-c
  netd expose api 9000 --protocol grpc --address 10.89.0.5
  netd expose web 8080 --persist            stays registered; `netd unexpose web` removes it
  netd expose web 8080 --health-check http:/healthz
                                            probe GET /healthz every 2s; failing endpoints
                                            turn unhealthy (see `netd endpoints web`)

  netd expose web 8080 --protocol http --route users=/users:GET,POST --route admin=/admin
                                            sidecars label web's requests route=\"users\",
                                            route=\"admin\" or route=\"default\" in /metrics

--health-check applies to the whole service (every endpoint is probed); without it, a check
the service already has is kept. --route likewise: the routes given replace the service's
routes, none keeps them, --no-routes removes them. A request takes the route with the
longest matching prefix (on '/' boundaries: /users matches /users/42, not /usersettings);
on equal prefixes the route listing its method wins.

--host-port N also publishes the service on port N of every address of this machine
(nf_tables, balanced like the VIP). A host port belongs to one service: it stays claimed
after this process stops until `netd unexpose SVC`. An endpoint on 127.0.0.1 is reached
through the host port from this machine only; use --address with a routable address to
serve other machines.")]
pub struct Args {
    /// Service name (a DNS label).
    pub service: String,
    /// Port the service listens on (also its port on the VIP).
    pub port: u16,
    /// Also publish the service on this port of every local address of this machine.
    #[arg(long, value_name = "N")]
    pub host_port: Option<u16>,
    /// Application protocol.
    #[arg(long, default_value = "tcp", value_parser = parse_protocol)]
    pub protocol: Protocol,
    /// Address the service answers on.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,
    /// Namespace of the service.
    #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Register without a lease and return at once.
    #[arg(long)]
    pub persist: bool,
    /// Probe the service's endpoints: `tcp` (connect) or `http[:PATH]` (GET, 2xx/3xx is
    /// healthy; default path /), every 2s, 1s timeout; 3 failures mark an endpoint unhealthy,
    /// 2 successes healthy again.
    #[arg(long, value_name = "tcp|http[:PATH]", value_parser = parse_health_check)]
    pub health_check: Option<HealthCheck>,
    /// HTTP route of the service, for the sidecars' metrics (repeatable): a name, a path
    /// prefix and optionally the methods it is for (default: any). Replaces the service's
    /// routes.
    #[arg(long = "route", value_name = "NAME=PREFIX[:METHOD,...]", value_parser = parse_route)]
    pub routes: Vec<HttpRoute>,
    /// Remove the service's routes.
    #[arg(long, conflicts_with = "routes")]
    pub no_routes: bool,
    /// Lease time to live in seconds: how long the endpoint outlives this process if killed.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub ttl: u64,
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    s.parse()
}

fn parse_health_check(s: &str) -> Result<HealthCheck, String> {
    s.parse().map_err(|e: netd_config::ConfigError| e.message)
}

fn parse_route(s: &str) -> Result<HttpRoute, String> {
    s.parse().map_err(|e: netd_config::ConfigError| e.message)
}

/// The routes to set: the `--route`s given, none with `--no-routes`, or `None` to keep the
/// service's own.
fn wanted_routes(args: &Args) -> Option<RoutesSpec> {
    (args.no_routes || !args.routes.is_empty()).then(|| RoutesSpec {
        routes: args.routes.clone(),
    })
}

/// Registers, then (without --persist) keeps the lease alive until a signal.
pub async fn run(client: &Client, out: Format, args: Args) -> Result<(), CliError> {
    if args.port == 0 || args.host_port == Some(0) {
        return Err(CliError::Usage("ports are 1-65535".into()));
    }
    validate_routes(&args.routes).map_err(|e| {
        // Fields are counted from 0 in the order the --route flags are given.
        CliError::Usage(format!("--route: {}: {}", e.field, e.message))
    })?;
    let svc = ensure_service(client, &args).await?;
    let domain = client.status().await?.domain;
    if args.persist {
        let ep = client
            .register_endpoint(&args.namespace, &args.service, &endpoint_spec(&args, None))
            .await?;
        report(out, &args, &svc, &domain, None, &ep)?;
        return Ok(());
    }
    // Signals are installed before registering, so a quick ctrl-c still unregisters.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (mut lease, ep) = register_with_lease(client, &args).await?;
    report(out, &args, &svc, &domain, Some(&lease), &ep)?;

    let period = Duration::from_millis((args.ttl * 1000 / 3).max(200));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {}
        }
        match client.keepalive(lease.id).await {
            Ok(_) => {}
            Err(e) if e.status() == Some(404) => {
                // The daemon lost the lease (it was down longer than the TTL): start over.
                match reregister(client, &args).await {
                    Ok(l) => {
                        lease = l;
                        eprintln!("netd: lease lost; {} registered again", args.service);
                    }
                    Err(e) => eprintln!("netd: registering again failed (will retry): {e}"),
                }
            }
            Err(e) => eprintln!("netd: keepalive failed (will retry): {e}"),
        }
    }
    match client.revoke_lease(lease.id).await {
        Ok(_) => {
            if out == Format::Table {
                println!("unregistered {} endpoint {}", args.service, ep.id);
            }
            Ok(())
        }
        Err(e) if e.status() == Some(404) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn reregister(client: &Client, args: &Args) -> Result<Lease, ClientError> {
    ensure_service(client, args).await?;
    register_with_lease(client, args).await.map(|(l, _)| l)
}

/// Creates the service, or adds/updates PORT on it (other ports are kept). The health check
/// and the routes are set when `--health-check` and `--route`/`--no-routes` are given, else
/// kept as they are.
async fn ensure_service(client: &Client, args: &Args) -> Result<Service, ClientError> {
    let port = ServicePort {
        name: None,
        port: args.port,
        protocol: args.protocol,
        host_port: args.host_port,
    };
    let (mut ports, existing_check) = match client.service(&args.namespace, &args.service).await? {
        Some(s) => (s.ports, s.health_check),
        None => (Vec::new(), None),
    };
    match ports.iter_mut().find(|p| p.port == args.port) {
        Some(p) => {
            p.protocol = args.protocol;
            if args.host_port.is_some() {
                p.host_port = args.host_port;
            }
        }
        None => ports.push(port),
    }
    let svc = client
        .put_service(&ServiceSpec {
            name: args.service.clone(),
            namespace: args.namespace.clone(),
            ports,
            health_check: args.health_check.clone().or(existing_check),
        })
        .await?;
    match wanted_routes(args) {
        Some(spec) if spec.routes != svc.routes => {
            client
                .put_routes(&args.namespace, &args.service, &spec)
                .await
        }
        _ => Ok(svc),
    }
}

async fn register_with_lease(
    client: &Client,
    args: &Args,
) -> Result<(Lease, netd_config::netd::Endpoint), ClientError> {
    let lease = client.grant_lease(args.ttl).await?;
    match client
        .register_endpoint(
            &args.namespace,
            &args.service,
            &endpoint_spec(args, Some(lease.id)),
        )
        .await
    {
        Ok(ep) => Ok((lease, ep)),
        Err(e) => {
            let _ = client.revoke_lease(lease.id).await;
            Err(e)
        }
    }
}

fn endpoint_spec(args: &Args, lease: Option<u64>) -> EndpointSpec {
    let mut labels = std::collections::BTreeMap::new();
    labels.insert(
        "netd.expose".to_string(),
        if lease.is_some() {
            format!("pid {}", std::process::id())
        } else {
            "persist".to_string()
        },
    );
    EndpointSpec {
        id: Some(endpoint_id(args.address, args.port)),
        address: args.address,
        port: args.port,
        node: None,
        container_id: None,
        health: Default::default(),
        weight: 1,
        labels,
        lease,
    }
}

fn report(
    out: Format,
    args: &Args,
    svc: &Service,
    domain: &str,
    lease: Option<&Lease>,
    ep: &netd_config::netd::Endpoint,
) -> Result<(), CliError> {
    let dns = svc.dns_name(domain);
    if out == Format::Json {
        print_json(&json!({
            "service": svc,
            "endpoint": ep,
            "lease": lease,
            "dns": dns,
        }))?;
        return Ok(());
    }
    println!(
        "exposed {}.{} -> {} ({})",
        svc.name,
        svc.namespace,
        std::net::SocketAddr::new(ep.address, ep.port),
        args.protocol
    );
    println!("  dns   {dns}:{}", args.port);
    println!("  vip   {}", std::net::SocketAddr::new(svc.vip, args.port));
    if let Some(h) = args.host_port {
        println!("  host  *:{h} (every address of this machine)");
    }
    if let Some(hc) = &svc.health_check {
        println!("  check {}", super::services::describe_check(hc));
    }
    for r in &svc.routes {
        println!("  route {r}");
    }
    match lease {
        Some(l) => println!(
            "registered while this runs (lease {}, ttl {}s); ctrl-c to unregister",
            l.id, l.ttl_seconds
        ),
        None => println!(
            "registered permanently; `netd unexpose {}{}` removes it",
            args.service,
            if args.namespace == DEFAULT_NAMESPACE {
                String::new()
            } else {
                format!(" -n {}", args.namespace)
            }
        ),
    }
    Ok(())
}
