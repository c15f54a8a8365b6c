//! ADD: attach a container to the network.
//!
//! Steps: allocate addresses (built-in IPAM) → record the intent → ensure the bridge → create
//! the veth pair with its peer directly in the container → wire the host end → run a delegated
//! IPAM plugin → put the gateway addresses on the bridge → address and route the container end
//! → one nf_tables batch for masquerade, port maps and MAC checks → complete the record. Any
//! failure undoes what this ADD did, leaving nothing half-configured (the record makes that true
//! even if the plugin is killed).
//!
//! A delegated IPAM plugin runs once the container's interface exists and is up, as a DHCP
//! client expects: `dhcp` sends its requests from that interface, so it cannot run earlier.

use std::net::IpAddr;

use ipnet::IpNet;
use netd_config::cni::{parse_mac, Route};
use serde_json::Value;

use super::{port_maps, requested_ips, Ctx, Trace};
use crate::delegate;
use crate::error::Error;
use crate::link::{self, Bandwidth, Link, LinkError, Netlink, RouteEntry};
use crate::nat::Nft;
use crate::netns::NetNs;
use crate::spec::{CniResult, Interface, IpConfig};
use crate::state::{attachment_hash, host_veth_name, veth_alias, Attachment};

/// Runs ADD and returns the result in the requested version's shape.
pub fn run(ctx: &Ctx) -> Result<Value, Error> {
    let container_id = ctx.env.container_id()?;
    let ifname = ctx.env.ifname()?;
    let netns_path = ctx.env.netns()?;
    let ipam = ctx.ipam_conf()?;
    let netns = NetNs::open(netns_path).map_err(|e| {
        Error::Env(format!(
            "CNI_NETNS {}: cannot open it: {e}",
            netns_path.display()
        ))
    })?;
    let prev = prev_result(ctx)?;
    let shaping = bandwidth(ctx)?;
    let mut trace = Trace::start();
    let _lock = ctx.dir.lock()?;
    trace.mark("lock");

    // An earlier ADD of the same attachment (retried, or killed half-way) is undone first.
    if let Some(old) = ctx.dir.load(container_id, ifname)? {
        super::del::teardown(ctx, &old, super::del::Scope::Everything)?;
    }
    let mut att = Attachment {
        container_id: container_id.to_string(),
        ifname: ifname.to_string(),
        netns: netns_path.display().to_string(),
        bridge: ctx.conf.bridge_name().to_string(),
        host_veth: host_veth_name(&ctx.conf.name, container_id, ifname),
        macspoofchk: ctx.conf.macspoofchk,
        ipam_type: ipam.ipam_type.clone(),
        names: names(ctx),
        ..Attachment::default()
    };

    let mut undo = Undo::default();
    match attach(ctx, &netns, &mut att, shaping.as_ref(), &mut undo) {
        Ok(mut result) => {
            crate::report::attached(
                &crate::report::socket_path(),
                &ctx.conf.name,
                &att,
                ctx.env.arg("NETD_SERVICE"),
            );
            if let Some(mut prev) = prev {
                prev.extend(result);
                result = prev;
            }
            Ok(result.to_json(ctx.version))
        }
        Err(e) => {
            rollback(ctx, &att, &undo);
            Err(e)
        }
    }
}

/// What this ADD created that DEL would not remove.
#[derive(Default)]
struct Undo {
    /// The bridge, when this ADD created it.
    bridge: Option<u32>,
}

fn attach(
    ctx: &Ctx,
    netns: &NetNs,
    att: &mut Attachment,
    shaping: Option<&Bandwidth>,
    undo: &mut Undo,
) -> Result<CniResult, Error> {
    let conf = &ctx.conf;
    let mut trace = Trace::start();
    // Built-in addresses first: a plugin killed before the record below leaves only a
    // reservation under this owner, which DEL and GC release by owner.
    let builtin = allocate_builtin(ctx, att)?;
    match &builtin {
        Some(result) => record_addresses(ctx, att, result),
        // A plugin missing from CNI_PATH fails the ADD before anything exists.
        None => {
            delegate::find(&ctx.ipam_conf()?.ipam_type, &ctx.env)?;
        }
    }
    let mac = attachment_mac(ctx, &att.container_id, &att.ifname)?;
    att.mac = Some(format_mac(mac));
    // The record of everything about to be created, written before any of it is (a delegated
    // plugin's addresses are added below; DEL runs its DEL whether or not they are recorded).
    ctx.dir.save(att)?;
    trace.mark("ipam+record");

    let mut host = Netlink::open()?;
    let bridge = setup_bridge(ctx, &mut host, undo)?;
    trace.mark("bridge");
    let veth = create_veth(&mut host, netns, att, mac, conf.mtu)?;
    let alias = veth_alias(&conf.name, &att.container_id, &att.ifname);
    setup_host_port(ctx, &mut host, &bridge, &veth, alias.as_deref())?;
    if let Some(bw) = shaping {
        host.set_bandwidth(veth.index, &veth.name, bw)?;
    }
    trace.mark("veth");
    let delegated = builtin.is_none();
    let mut result = match builtin {
        Some(result) => result,
        None => {
            let ipam = ctx.ipam_conf()?;
            up_for_delegated_ipam(netns, &att.ifname)?;
            // Delegated plugins read static addresses from runtimeConfig/args/CNI_ARGS
            // themselves.
            let result = delegate::add(&ipam.ipam_type, &ctx.env, &ctx.raw)?;
            record_addresses(ctx, att, &result);
            ctx.dir.save(att)?;
            trace.mark("delegated ipam");
            result
        }
    };
    setup_gateways(ctx, &mut host, &bridge, &result)?;
    trace.mark("gateways");
    let container = setup_container(ctx, netns, &att.ifname, &mut result, delegated)?;
    trace.mark("container");

    if ctx.needs_nat() {
        let net = ctx.network_spec(&att.ips);
        Nft::open()?.add_attachment(&net, &att.nat_spec())?;
        trace.mark("nat");
    }
    att.complete = true;
    ctx.dir.save(att)?;
    trace.mark("record");

    result.interfaces = vec![
        iface(&bridge, None),
        iface(&veth, None),
        iface(&container, Some(att.netns.clone())),
    ];
    for ip in &mut result.ips {
        ip.interface = Some(2);
    }
    if let Some(dns) = &conf.dns {
        result.dns = dns.clone();
    }
    Ok(result)
}

/// Undoes a failed ADD; a failure here is logged, the original error is what the runtime sees.
fn rollback(ctx: &Ctx, att: &Attachment, undo: &Undo) {
    if let Err(e) = super::del::teardown(ctx, att, super::del::Scope::OwnedOnly) {
        eprintln!("netd-cni: rollback of {}: {e}", att.container_id);
    }
    if let Some(index) = undo.bridge {
        let empty = Netlink::open()
            .and_then(|mut nl| nl.ports(index))
            .is_ok_and(|ports| ports.is_empty());
        if empty {
            if let Err(e) = Netlink::open().and_then(|mut nl| nl.delete_link(index)) {
                eprintln!("netd-cni: rollback: cannot remove bridge: {e}");
            }
        }
    }
}

/// Addresses and routes from the built-in allocator; `None` when IPAM is delegated.
fn allocate_builtin(ctx: &Ctx, att: &Attachment) -> Result<Option<CniResult>, Error> {
    let ipam = ctx.ipam_conf()?;
    let Some(alloc) = ctx.builtin_ipam()? else {
        return Ok(None);
    };
    let requested = requested_ips(ctx)?;
    let allocations = alloc.allocate(&att.owner(), &requested)?;
    let ips = allocations
        .into_iter()
        .map(|a| IpConfig {
            address: a.address,
            gateway: a.gateway,
            interface: None,
        })
        .collect();
    Ok(Some(CniResult {
        ips,
        routes: ipam.routes.clone(),
        ..CniResult::default()
    }))
}

/// Puts the IPAM result's addresses, and the port maps over them, into the record.
fn record_addresses(ctx: &Ctx, att: &mut Attachment, result: &CniResult) {
    att.ips = result.ips.iter().map(|ip| ip.address).collect();
    if ctx.needs_nat() {
        att.ports = port_maps(&ctx.conf, &att.addrs());
    }
}

/// Ensures the bridge exists, is up and has the network's VLAN and promiscuity settings.
fn setup_bridge(ctx: &Ctx, host: &mut Netlink, undo: &mut Undo) -> Result<Link, Error> {
    let conf = &ctx.conf;
    let (bridge, created) =
        host.ensure_bridge(conf.bridge_name(), conf.mtu, conf.vlan.is_some())?;
    if created {
        undo.bridge = Some(bridge.index);
        // Pin the bridge's MAC: left alone, Linux gives a bridge the lowest MAC among its
        // ports, so removing a container could change the gateway's MAC under the others'
        // ARP caches.
        host.set_mac(bridge.index, derived_mac("bridge", conf.bridge_name(), ""))?;
    }
    if conf.promisc_mode {
        host.set_promisc(bridge.index, true)?;
    }
    if !bridge.up {
        host.set_up(bridge.index)?;
    }
    if let Some(vid) = conf.vlan {
        if conf.gateway_on_bridge() {
            host.add_bridge_vlan(bridge.index, vid, true, true)?;
        }
    }
    if conf.has_capability("portMappings") {
        // Lets the host's own 127.0.0.1 reach published ports (DNAT to the bridge subnet).
        let key = format!("net/ipv4/conf/{}/route_localnet", bridge.name);
        link::set_sysctl(&key, "1").map_err(|e| Error::io(format!("cannot set {key}"), e))?;
    }
    Ok(bridge)
}

/// With `isGateway`, puts each range's gateway address on the bridge and enables forwarding.
fn setup_gateways(
    ctx: &Ctx,
    host: &mut Netlink,
    bridge: &Link,
    result: &CniResult,
) -> Result<(), Error> {
    let conf = &ctx.conf;
    if conf.gateway_on_bridge() {
        for ip in &result.ips {
            if let Some(gw) = ip.gateway {
                let gw_net = IpNet::new(gw, ip.address.prefix_len())
                    .map_err(|e| Error::Config(format!("gateway {gw}: {e}")))?;
                ensure_gateway_address(ctx, host, bridge, gw_net)?;
            }
        }
        if result.ips.iter().any(|ip| ip.address.addr().is_ipv4()) {
            link::set_sysctl("net/ipv4/ip_forward", "1")
                .map_err(|e| Error::io("cannot enable net.ipv4.ip_forward", e))?;
        }
        if result.ips.iter().any(|ip| ip.address.addr().is_ipv6()) {
            link::set_sysctl("net/ipv6/conf/all/forwarding", "1")
                .map_err(|e| Error::io("cannot enable net.ipv6.conf.all.forwarding", e))?;
        }
    }
    Ok(())
}

/// Puts the gateway address on the bridge. Another address of the same subnet is an error
/// unless `forceAddress` is set, in which case it is replaced (as the reference plugin does).
fn ensure_gateway_address(
    ctx: &Ctx,
    host: &mut Netlink,
    bridge: &Link,
    gw: IpNet,
) -> Result<(), Error> {
    for existing in host.addresses(bridge.index)? {
        if existing == gw || existing.addr().is_ipv4() != gw.addr().is_ipv4() {
            continue;
        }
        let overlaps = existing.contains(&gw.addr()) || gw.contains(&existing.addr());
        if !overlaps || existing.addr().is_ipv6() && is_link_local(existing.addr()) {
            continue;
        }
        if !ctx.conf.force_address {
            return Err(Error::Config(format!(
                "bridge {} already has address {existing}, not the gateway {gw}; \
                 set \"forceAddress\": true to replace it",
                bridge.name
            )));
        }
        host.del_address(bridge.index, existing)?;
    }
    host.add_address(bridge.index, gw, true)?;
    Ok(())
}

fn is_link_local(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

fn create_veth(
    host: &mut Netlink,
    netns: &NetNs,
    att: &Attachment,
    mac: [u8; 6],
    mtu: Option<u32>,
) -> Result<Link, Error> {
    let create =
        |host: &mut Netlink| host.create_veth(&att.host_veth, &att.ifname, netns, mtu, Some(mac));
    match create(host) {
        Err(LinkError::Exists { .. }) => {
            // A host end left by a crashed ADD of this same attachment (the name is ours).
            host.delete_link_by_name(&att.host_veth)?;
            create(host).map_err(|e| explain_veth_error(e, att))
        }
        other => other.map_err(|e| explain_veth_error(e, att)),
    }
}

fn explain_veth_error(e: LinkError, att: &Attachment) -> Error {
    if e.errno() == Some(libc::EEXIST) {
        return Error::Config(format!(
            "interface {:?} already exists in the container's network namespace {}",
            att.ifname, att.netns
        ));
    }
    e.into()
}

/// The `bandwidth` capability, checked before anything is created; `None` when unshaped.
fn bandwidth(ctx: &Ctx) -> Result<Option<Bandwidth>, Error> {
    let Some(limits) = ctx
        .conf
        .runtime_config
        .bandwidth
        .filter(|_| ctx.conf.has_capability("bandwidth"))
    else {
        return Ok(None);
    };
    let bw = Bandwidth {
        ingress_rate: limits.ingress_rate,
        ingress_burst: limits.ingress_burst,
        egress_rate: limits.egress_rate,
        egress_burst: limits.egress_burst,
    };
    bw.validate()
        .map_err(|e| Error::Config(format!("runtimeConfig.{e}")))?;
    Ok((!bw.is_unlimited()).then_some(bw))
}

/// The container interface's MAC: the one the runtime asked for, else a derived one.
pub fn attachment_mac(ctx: &Ctx, container_id: &str, ifname: &str) -> Result<[u8; 6], Error> {
    Ok(match mac_request(ctx)? {
        Some(mac) => mac,
        None => derived_mac(&ctx.conf.name, container_id, ifname),
    })
}

fn mac_request(ctx: &Ctx) -> Result<Option<[u8; 6]>, Error> {
    let raw = ctx
        .conf
        .runtime_config
        .mac
        .as_deref()
        .filter(|_| ctx.conf.has_capability("mac"))
        .or_else(|| ctx.env.arg("MAC"));
    raw.map(|m| {
        parse_mac(m).ok_or_else(|| Error::Config(format!("MAC {m:?} is not a MAC address")))
    })
    .transpose()
}

fn setup_host_port(
    ctx: &Ctx,
    host: &mut Netlink,
    bridge: &Link,
    veth: &Link,
    alias: Option<&str>,
) -> Result<(), Error> {
    let conf = &ctx.conf;
    // A bridge port needs no IPv6 of its own: no link-local address, no MLD or DAD traffic.
    let key = format!("net/ipv6/conf/{}/disable_ipv6", veth.name);
    link::set_sysctl(&key, "1")
        .or_else(ignore_missing_ipv6)
        .map_err(|e| Error::io(format!("cannot set {key}"), e))?;
    host.attach_port(veth.index, bridge.index, alias).map_err(|e| {
        if e.errno() == Some(libc::EXFULL) {
            Error::Capacity(format!(
                "bridge {} has reached the kernel's limit of 1023 ports: remove containers or spread them over more networks",
                bridge.name
            ))
        } else {
            e.into()
        }
    })?;
    if conf.hairpin_mode || conf.port_isolation {
        host.set_bridge_port(veth.index, conf.hairpin_mode, conf.port_isolation)?;
    }
    if let Some(vid) = conf.vlan {
        host.add_bridge_vlan(veth.index, vid, true, false)?;
        if !conf.preserve_default_vlan.unwrap_or(true) {
            host.del_bridge_vlan(veth.index, 1, false)?;
        }
    }
    host.set_up(veth.index)?;
    Ok(())
}

/// Brings the container end up before a delegated IPAM plugin runs, as a DHCP client expects:
/// dhcp's daemon opens its socket on the interface before anything else, and a socket opened
/// on a down link fails the first request, which the daemon retries only 2-3 s later. IPv6 is
/// off until the result shows whether the attachment has any (see [`setup_container`]), so an
/// IPv4-only attachment never sends IPv6 chatter.
fn up_for_delegated_ipam(netns: &NetNs, ifname: &str) -> Result<(), Error> {
    set_ipv6_sysctl(netns, ifname, "disable_ipv6", "1")?;
    let mut nl = Netlink::open_in(netns)?;
    let link = container_link(&mut nl, netns, ifname)?;
    nl.set_up(link.index)?;
    Ok(())
}

/// Addresses, link state and routes inside the container; fills in route gateways.
/// `delegated`: the link was brought up with IPv6 off for a delegated plugin.
fn setup_container(
    ctx: &Ctx,
    netns: &NetNs,
    ifname: &str,
    result: &mut CniResult,
    delegated: bool,
) -> Result<Link, Error> {
    let mut nl = Netlink::open_in(netns)?;
    let link = container_link(&mut nl, netns, ifname)?;
    let has_v6 = result.ips.iter().any(|ip| ip.address.addr().is_ipv6());
    if !has_v6 {
        // No IPv6 on an IPv4-only attachment (no link-local address, no multicast chatter
        // flooded to every port).
        set_ipv6_sysctl(netns, ifname, "disable_ipv6", "1")?;
    } else {
        // No DAD unless asked for.
        if !ctx.conf.enabledad {
            set_ipv6_sysctl(netns, ifname, "accept_dad", "0")?;
        }
        if delegated {
            set_ipv6_sysctl(netns, ifname, "disable_ipv6", "0")?;
        }
    }
    for ip in &result.ips {
        nl.add_address(link.index, ip.address, !ctx.conf.enabledad)?;
    }
    nl.set_up(link.index)?;
    if ctx.conf.is_default_gateway {
        for gw in result.ips.iter().filter_map(|ip| ip.gateway) {
            let dst: IpNet = if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" }
                .parse()
                .map_err(|_| Error::Config("default route".into()))?;
            if !result.routes.iter().any(|r| r.dst == dst) {
                result.routes.push(Route { dst, gw: Some(gw) });
            }
        }
    }
    for route in &result.routes {
        let family_gw = result
            .ips
            .iter()
            .filter(|ip| ip.address.addr().is_ipv4() == route.dst.addr().is_ipv4())
            .find_map(|ip| ip.gateway);
        let entry = RouteEntry {
            dst: route.dst,
            gateway: route.gw.or(family_gw),
            oif: Some(link.index),
        };
        nl.add_route(&entry)?;
    }
    Ok(nl.link_by_index(link.index)?.unwrap_or(link))
}

/// The container end of the veth, by name.
fn container_link(nl: &mut Netlink, netns: &NetNs, ifname: &str) -> Result<Link, Error> {
    nl.link_by_name(ifname)?.ok_or_else(|| {
        Error::Link(LinkError::NotFound {
            what: format!("{ifname} in {}", netns.path().display()),
        })
    })
}

/// Sets `net/ipv6/conf/<ifname>/<leaf>` inside the container (nothing to do without IPv6).
fn set_ipv6_sysctl(netns: &NetNs, ifname: &str, leaf: &str, value: &str) -> Result<(), Error> {
    let key = format!("net/ipv6/conf/{ifname}/{leaf}");
    netns
        .run(|| link::set_sysctl(&key, value))
        .and_then(|r| r)
        .or_else(ignore_missing_ipv6)
        .map_err(|e| Error::io(format!("cannot set {key} in the container"), e))
}

fn iface(link: &Link, sandbox: Option<String>) -> Interface {
    Interface {
        name: link.name.clone(),
        mac: link.mac.map(format_mac),
        mtu: Some(link.mtu),
        sandbox,
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Names the runtime gave the container on this network.
fn names(ctx: &Ctx) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    if ctx.conf.has_capability("aliases") {
        names.extend(ctx.conf.aliases().iter().cloned());
    }
    if let Some(pod) = ctx.env.arg("K8S_POD_NAME") {
        names.push(pod.to_string());
    }
    names.dedup();
    names
}

fn prev_result(ctx: &Ctx) -> Result<Option<CniResult>, Error> {
    ctx.conf
        .prev_result
        .as_ref()
        .map(|v| CniResult::from_json(v).map_err(|e| Error::Decode(format!("prevResult: {e}"))))
        .transpose()
}

/// A kernel without IPv6 has no `net/ipv6` sysctls, and nothing to turn off.
fn ignore_missing_ipv6(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// A stable, locally administered unicast MAC for an attachment: known before the veth exists
/// (so the record holds it), and the same again when the same container is re-attached.
fn derived_mac(network: &str, container_id: &str, ifname: &str) -> [u8; 6] {
    let h = attachment_hash("mac", network, container_id, ifname);
    let b = h.to_be_bytes();
    [(b[2] & 0xfe) | 0x02, b[3], b[4], b[5], b[6], b[7]]
}
