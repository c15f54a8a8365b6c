//! GC: release every attachment of this network that is not in `cni.dev/valid-attachments` —
//! records, interfaces, allocations and NAT elements — including what a killed ADD left behind
//! (ADD writes its record before it creates anything, so the record always leads to it).

use std::collections::HashSet;

use super::{valid_attachments, Ctx};
use crate::error::Error;
use crate::ipam::Owner;
use crate::nat::{AttachmentSpec, NatError, Nft};

/// Runs GC.
pub fn run(ctx: &Ctx) -> Result<(), Error> {
    let valid = valid_attachments(&ctx.raw)?;
    let valid_set: HashSet<&Owner> = valid.iter().collect();
    let _lock = ctx.dir.lock()?;

    // Recorded attachments (complete or killed mid-ADD).
    for att in ctx.dir.all()? {
        if !valid_set.contains(&att.owner()) {
            super::del::teardown(ctx, &att, super::del::Scope::Everything)?;
            crate::report::detached(
                &crate::report::socket_path(),
                &att.container_id,
                &att.ifname,
            );
        }
    }

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
    let live: HashSet<std::net::IpAddr> = ctx.dir.all()?.iter().flat_map(|a| a.addrs()).collect();
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
