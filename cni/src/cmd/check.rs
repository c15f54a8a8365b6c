//! CHECK: verify that an attachment is still as its result describes — the container
//! interface with its addresses and routes, the host end on the bridge, the allocation, and the
//! NAT elements — and fail naming the first difference.

use ipnet::IpNet;

use super::Ctx;
use crate::delegate;
use crate::error::Error;
use crate::link::Netlink;
use crate::nat::Nft;
use crate::netns::NetNs;
use crate::spec::{CniResult, Version};

/// Runs CHECK.
pub fn run(ctx: &Ctx) -> Result<(), Error> {
    if !ctx.version.has_check() {
        return Err(Error::IncompatibleVersion {
            requested: ctx.version.to_string(),
            supported: "CHECK needs cniVersion 0.4.0 or later".into(),
        });
    }
    let container_id = ctx.env.container_id()?;
    let ifname = ctx.env.ifname()?;
    let netns_path = ctx.env.netns()?;
    let prev = ctx
        .conf
        .prev_result
        .as_ref()
        .ok_or_else(|| Error::Config("prevResult: is required for CHECK".into()))?;
    let prev = CniResult::from_json(prev).map_err(|e| Error::Decode(format!("prevResult: {e}")))?;
    let _lock = ctx.dir.lock()?;
    let att = ctx.dir.load(container_id, ifname)?.ok_or_else(|| {
        Error::UnknownContainer(format!(
            "no attachment of container {container_id} interface {ifname} on network {}",
            ctx.conf.name
        ))
    })?;
    if !att.complete {
        return Err(Error::CheckFailed(format!(
            "the ADD of container {container_id} did not finish"
        )));
    }
    let fail = |msg: String| Err(Error::CheckFailed(msg));

    // The container end, its addresses and routes.
    let netns = NetNs::open(netns_path).map_err(|e| {
        Error::Env(format!(
            "CNI_NETNS {}: cannot open it: {e}",
            netns_path.display()
        ))
    })?;
    let mut nl = Netlink::open_in(&netns)?;
    let Some(link) = nl.link_by_name(ifname)? else {
        return fail(format!(
            "interface {ifname} is missing from {}",
            netns_path.display()
        ));
    };
    let sandbox = prev
        .interfaces
        .iter()
        .position(|i| i.name == ifname && i.sandbox.is_some());
    if let Some(mac) = sandbox.and_then(|i| prev.interfaces[i].mac.as_deref()) {
        let actual = link.mac.map(super::add::format_mac).unwrap_or_default();
        if !actual.eq_ignore_ascii_case(mac) {
            return fail(format!("{ifname} has MAC {actual}, the result says {mac}"));
        }
    }
    let have = nl.addresses(link.index)?;
    let want: Vec<IpNet> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none() || ip.interface == sandbox)
        .map(|ip| ip.address)
        .collect();
    if let Some(missing) = want.iter().find(|a| !have.contains(a)) {
        return fail(format!("{ifname} lacks address {missing}"));
    }
    for v6 in [false, true] {
        let routes = nl.routes(v6)?;
        for r in prev.routes.iter().filter(|r| r.dst.addr().is_ipv6() == v6) {
            if !routes.iter().any(|have| have.dst == r.dst) {
                return fail(format!("route to {} is missing in the container", r.dst));
            }
        }
    }

    // The host end, on the bridge and up.
    let mut host = Netlink::open()?;
    let bridge = host.link_by_name(&att.bridge)?;
    let Some(veth) = host.link_by_name(&att.host_veth)? else {
        return fail(format!("host interface {} is missing", att.host_veth));
    };
    if bridge.as_ref().map(|b| b.index) != veth.master || veth.master.is_none() {
        return fail(format!(
            "{} is not attached to bridge {}",
            att.host_veth, att.bridge
        ));
    }
    if !veth.up {
        return fail(format!("host interface {} is down", att.host_veth));
    }

    // The allocation.
    if let Some(alloc) = ctx.builtin_ipam()? {
        let owned = alloc.owned_by(&att.owner())?;
        if let Some(lost) = att.addrs().into_iter().find(|a| !owned.contains(a)) {
            return fail(format!(
                "address {lost} is no longer allocated to this container"
            ));
        }
    } else if ctx.version >= Version(0, 4, 0) {
        delegate::exec(&att.ipam_type, "CHECK", &ctx.env, &ctx.raw)?;
    }

    // The NAT elements.
    if ctx.needs_nat() {
        let net = ctx.network_spec(&att.ips);
        Nft::open()?
            .check_attachment(&net, &att.nat_spec())
            .map_err(|e| Error::CheckFailed(e.to_string()))?;
    }
    Ok(())
}
