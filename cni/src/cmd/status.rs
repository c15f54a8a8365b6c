//! STATUS: report whether ADD can succeed now — the state directory is usable, the bridge name
//! is free or a bridge, the address pool has room (or the delegated IPAM plugin says it is
//! ready), and nf_tables is there when the network needs it.
//!
//! Failing, it answers code 50 when only new containers are affected, and 51 when the same
//! cause also cuts the containers already attached (a bridge replaced by another kind of
//! interface, NAT without nf_tables).

use serde_json::Value;

use super::Ctx;
use crate::delegate;
use crate::error::Error;
use crate::link::Netlink;
use crate::nat::Nft;
use crate::spec::{code, Version};

/// Runs STATUS.
pub fn run(ctx: &Ctx) -> Result<(), Error> {
    let unavailable = |msg: String| Err(Error::Unavailable(msg));
    if let Err(e) = ctx.dir.lock() {
        return unavailable(format!("state directory unusable: {e}"));
    }
    // Whether a failure below also affects the containers already on this network.
    let attached = match ctx.dir.all() {
        Ok(all) => all.iter().filter(|a| a.complete).count(),
        Err(e) => return unavailable(format!("state directory unreadable: {e}")),
    };
    let damaged = |msg: String| {
        if attached == 0 {
            Err(Error::Unavailable(msg))
        } else {
            Err(Error::Damaged(format!(
                "{msg}; the {attached} container(s) attached to network {} are affected too",
                ctx.conf.name
            )))
        }
    };

    let bridge = ctx.conf.bridge_name();
    let link = Netlink::open().and_then(|mut nl| nl.link_by_name(bridge));
    match link {
        Ok(Some(link)) if link.kind.as_deref() != Some("bridge") => {
            return damaged(format!(
            "interface {bridge} is a {}, not a bridge: remove it or set \"bridge\" to another name",
            link.kind.as_deref().unwrap_or("device of unknown kind")
        ))
        }
        Ok(_) => {}
        Err(e) => return unavailable(format!("rtnetlink is not usable: {e}")),
    }

    match ctx.builtin_ipam() {
        Ok(Some(alloc)) => match alloc.exhausted() {
            Ok(Some(range)) => {
                return unavailable(format!(
                    "address pool {range} of network {} is exhausted: remove containers or widen ipam.ranges",
                    ctx.conf.name
                ))
            }
            Ok(None) => {}
            Err(e) => return unavailable(format!("IPAM store unusable: {e}")),
        },
        Ok(None) => delegated_status(ctx)?,
        Err(e) => return unavailable(format!("IPAM store unusable: {e}")),
    }

    if ctx.needs_nat() {
        if let Err(e) = Nft::open() {
            return damaged(format!(
                "nf_tables is not usable ({e}): masquerade and port mappings cannot work"
            ));
        }
    }
    Ok(())
}

/// Asks a delegated IPAM plugin for its STATUS, as the spec wants, when it speaks CNI 1.1
/// (older plugins do not know the command: they are taken as ready). Its failure is ours, code
/// and message passed on.
fn delegated_status(ctx: &Ctx) -> Result<(), Error> {
    let plugin = &ctx.ipam_conf()?.ipam_type;
    let probe = serde_json::json!({ "cniVersion": "1.1.0" });
    let speaks_status = match delegate::exec(plugin, "VERSION", &ctx.env, &probe) {
        Ok(info) => info
            .get("supportedVersions")
            .and_then(Value::as_array)
            .is_some_and(|v| v.iter().any(|v| v.as_str() == Some("1.1.0"))),
        Err(Error::Delegate { msg, .. }) => {
            return Err(Error::Unavailable(format!(
                "IPAM plugin {plugin:?} does not answer VERSION: {msg}"
            )))
        }
        Err(e) => return Err(Error::Unavailable(e.to_string())),
    };
    if !speaks_status || ctx.version < Version(1, 1, 0) {
        return Ok(());
    }
    match delegate::exec(plugin, "STATUS", &ctx.env, &ctx.raw) {
        Ok(_) => Ok(()),
        Err(
            e @ Error::Delegate {
                code: code::PLUGIN_NOT_AVAILABLE | code::PLUGIN_NOT_AVAILABLE_LIMITED,
                ..
            },
        ) => Err(e),
        Err(e) => Err(Error::Unavailable(e.to_string())),
    }
}
