//! DEL: detach a container. Idempotent: it succeeds when the namespace, the interface, the
//! allocation or the rules are already gone, and works without a record (deriving the host
//! interface name and finding the addresses in the allocator).
//!
//! The same teardown undoes a failed ADD and an attachment GC found stale.

use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::Value;

use super::{Ctx, Trace};
use crate::delegate;
use crate::env::Env;
use crate::error::Error;
use crate::link::Netlink;
use crate::nat::{NatError, Nft, PortMap};
use crate::netns::NetNs;
use crate::state::{host_veth_name, Attachment};

/// How far teardown may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// DEL and GC: also remove a container-side veth of that name when the host end is gone.
    Everything,
    /// Rollback of a failed ADD: only what is provably ours (the container may already have
    /// had an interface of that name, which is why the ADD failed).
    OwnedOnly,
}

/// Runs DEL.
pub fn run(ctx: &Ctx) -> Result<(), Error> {
    let container_id = ctx.env.container_id()?;
    let ifname = ctx.env.ifname()?;
    let ipam = ctx.ipam_conf()?;
    let _lock = ctx.dir.lock()?;
    let att = match ctx.dir.load(container_id, ifname)? {
        Some(att) => att,
        None => {
            let mut att = Attachment {
                container_id: container_id.to_string(),
                ifname: ifname.to_string(),
                netns: ctx
                    .env
                    .netns
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                bridge: ctx.conf.bridge_name().to_string(),
                host_veth: host_veth_name(&ctx.conf.name, container_id, ifname),
                ipam_type: ipam.ipam_type.clone(),
                ..Attachment::default()
            };
            if let Some(alloc) = ctx.builtin_ipam()? {
                att.ips = alloc
                    .owned_by(&att.owner())?
                    .into_iter()
                    .map(ipnet::IpNet::from)
                    .collect();
            }
            if ctx.needs_nat() {
                att.ports = find_port_maps(&att.addrs())?;
                att.macspoofchk = ctx.conf.macspoofchk;
                att.mac = Some(super::add::format_mac(super::add::attachment_mac(
                    ctx,
                    container_id,
                    ifname,
                )?));
            }
            att
        }
    };
    teardown(ctx, &att, Scope::Everything)?;
    crate::report::detached(&crate::report::socket_path(), container_id, ifname);
    Ok(())
}

/// Removes everything the attachment holds: NAT elements, links, addresses, the record.
///
/// Deleting the veth pair costs the kernel an `rcu_barrier()` after the link is unlisted
/// (~15 ms, most of a DEL), so it runs on its own thread while this one removes the NAT
/// elements and releases built-in addresses. A delegated IPAM plugin is called before, while
/// the interface still exists (dhcp releases its lease from it). The record goes last, once the links are
/// gone: a DEL killed half-way leaves the record for the next DEL or GC to finish from.
///
/// The NAT socket stays open until the end: the kernel finishes freeing the removed elements
/// (an RCU grace period) while the veth is being unregistered, so the two waits overlap
/// instead of adding up when the socket is closed.
pub fn teardown(ctx: &Ctx, att: &Attachment, scope: Scope) -> Result<(), Error> {
    let mut trace = Trace::start();
    // A delegated plugin's DEL runs while the container's interface still exists: dhcp sends
    // its DHCPRELEASE from it. The network lock keeps any ADD from taking the address meanwhile.
    let delegated = !ctx.ipam_conf()?.is_builtin();
    if delegated {
        release_addresses(ctx, att)?;
        trace.mark("ipam");
    }
    let (links, nft, released) = std::thread::scope(|s| {
        let links = s.spawn(|| remove_links(att, scope));
        let nft = remove_nat(att);
        trace.mark("nat");
        // Addresses are released only once NAT no longer points at them.
        let released = match &nft {
            Ok(_) if !delegated => release_addresses(ctx, att),
            _ => Ok(()),
        };
        trace.mark("ipam");
        let links = links
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        trace.mark("links");
        (links, nft, released)
    });
    let nft = nft?;
    links?;
    released?;
    ctx.dir.remove(&att.container_id, &att.ifname)?;
    drop(nft);
    trace.mark("record+close");
    Ok(())
}

fn remove_links(att: &Attachment, scope: Scope) -> Result<(), Error> {
    let mut host = Netlink::open()?;
    // Deleting the host end takes the container end with it; a shaping ifb stays on its own.
    let deleted = host.delete_link_by_name(&att.host_veth)?;
    host.clear_bandwidth(&att.host_veth)?;
    if deleted || scope == Scope::OwnedOnly {
        return Ok(());
    }
    if att.netns.is_empty() {
        return Ok(());
    }
    let Ok(netns) = NetNs::open(&att.netns) else {
        return Ok(()); // the namespace is gone, and its interfaces with it
    };
    let mut nl = Netlink::open_in(&netns)?;
    if let Some(link) = nl.link_by_name(&att.ifname)? {
        if link.kind.as_deref() == Some("veth") {
            nl.delete_link(link.index)?;
        }
    }
    Ok(())
}

fn remove_nat(att: &Attachment) -> Result<Option<Nft>, Error> {
    let spec = att.nat_spec();
    if spec.ports.is_empty() && spec.mac.is_none() {
        return Ok(None);
    }
    let mut nft = match Nft::open() {
        Ok(nft) => nft,
        // Without nf_tables there can be no rules of ours to remove.
        Err(NatError::Unavailable { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    nft.del_attachment(&spec)?;
    Ok(Some(nft))
}

/// The port mappings that point at `addrs` (for a DEL that has no record to read them from).
fn find_port_maps(addrs: &[IpAddr]) -> Result<Vec<PortMap>, Error> {
    if addrs.is_empty() {
        return Ok(Vec::new());
    }
    match Nft::open() {
        Ok(mut nft) => Ok(nft
            .port_mappings()?
            .into_iter()
            .filter(|p| addrs.contains(&p.container_ip))
            .collect()),
        Err(NatError::Unavailable { .. }) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

fn release_addresses(ctx: &Ctx, att: &Attachment) -> Result<(), Error> {
    if let Some(alloc) = ctx.builtin_ipam()? {
        alloc.release_addrs(&att.owner(), &att.addrs())?;
        if att.ips.is_empty() || !att.complete {
            // A killed ADD may have reserved without recording: release by owner.
            alloc.release(&att.owner())?;
        }
        return Ok(());
    }
    let env = Env {
        container_id: Some(att.container_id.clone()),
        ifname: Some(att.ifname.clone()),
        netns: (!att.netns.is_empty()).then(|| PathBuf::from(&att.netns)),
        ..ctx.env.clone()
    };
    let plugin = &ctx.ipam_conf()?.ipam_type;
    delegate::exec(plugin, "DEL", &env, &without_prev_result(&ctx.raw)).map(|_| ())
}

/// A delegated DEL gets the configuration without our `prevResult` (it is not the IPAM's).
fn without_prev_result(raw: &Value) -> Value {
    let mut v = raw.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("prevResult");
    }
    v
}
