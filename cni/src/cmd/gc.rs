//! GC: release every attachment of this network that is not in `cni.dev/valid-attachments` —
//! records, interfaces, allocations and NAT elements — including what a killed ADD left behind
//! (ADD writes its record before it creates anything, so the record always leads to it), and
//! interfaces whose record was lost (found by the alias ADD gives each host veth).

use std::collections::HashSet;

use super::{valid_attachments, Ctx};
use crate::error::Error;
use crate::ipam::Owner;
use crate::link::Netlink;
use crate::nat::{AttachmentSpec, NatError, Nft};
use crate::state::{parse_veth_alias, Attachment};

/// Runs GC.
pub fn run(ctx: &Ctx) -> Result<(), Error> {
    let valid = valid_attachments(&ctx.raw)?;
    let valid_set: HashSet<&Owner> = valid.iter().collect();
    let _lock = ctx.dir.lock()?;

    // Recorded attachments (complete or killed mid-ADD): the valid ones are kept, the rest
    // torn down. The records read here are the only ones under the lock.
    let (kept, stale): (Vec<_>, Vec<_>) = ctx
        .dir
        .all()?
        .into_iter()
        .partition(|att| valid_set.contains(&att.owner()));
    for att in stale {
        super::del::teardown(ctx, &att, super::del::Scope::Everything)?;
        crate::report::detached(
            &crate::report::socket_path(),
            &att.container_id,
            &att.ifname,
        );
    }

    remove_unrecorded_veths(ctx, &valid_set, &kept)?;

    // Allocations without a record.
    if let Some(alloc) = ctx.builtin_ipam()? {
        alloc.gc(&valid)?;
    }

    // Port mappings into this network's subnets for addresses no valid attachment holds.
    if !ctx.needs_nat() {
        return Ok(());
    }
    let mut nft = match Nft::open() {
        Ok(nft) => nft,
        Err(NatError::Unavailable { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let live: HashSet<std::net::IpAddr> = kept.iter().flat_map(|a| a.addrs()).collect();
    let net = ctx.network_spec(&[]);
    let stale: Vec<_> = nft
        .port_mappings()?
        .into_iter()
        .filter(|p| net.subnets.iter().any(|s| s.contains(&p.container_ip)))
        .filter(|p| !live.contains(&p.container_ip))
        .collect();
    if !stale.is_empty() {
        nft.del_attachment(&AttachmentSpec {
            ports: stale,
            ..AttachmentSpec::default()
        })?;
    }
    if live.is_empty() && valid.is_empty() {
        nft.del_network(&net)?;
    }
    Ok(())
}

/// Deletes the host veths on this network's bridge that have no record and whose alias names
/// this network and an attachment outside `valid` (their state was lost, e.g. a wiped
/// `dataDir`). Ports without our alias, or naming another network that shares the bridge, are
/// not ours to judge.
fn remove_unrecorded_veths(
    ctx: &Ctx,
    valid: &HashSet<&Owner>,
    kept: &[Attachment],
) -> Result<(), Error> {
    let mut host = Netlink::open()?;
    let bridge = host
        .link_by_name(ctx.conf.bridge_name())?
        .filter(|l| l.kind.as_deref() == Some("bridge"));
    let Some(bridge) = bridge else {
        return Ok(());
    };
    let recorded: HashSet<&str> = kept.iter().map(|a| a.host_veth.as_str()).collect();
    for port in host.ports(bridge.index)? {
        if port.kind.as_deref() != Some("veth") || recorded.contains(port.name.as_str()) {
            continue;
        }
        let Some((network, container_id, ifname)) =
            port.alias.as_deref().and_then(parse_veth_alias)
        else {
            continue;
        };
        let owner = Owner {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        };
        if network == ctx.conf.name && !valid.contains(&owner) {
            host.delete_link_by_name(&port.name)?;
            host.clear_bandwidth(&port.name)?;
        }
    }
    Ok(())
}
