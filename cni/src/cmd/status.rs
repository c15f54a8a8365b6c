//! STATUS: report whether ADD can succeed now — the state directory is writable, the address
//! pool has room, and nf_tables is there when the network needs it.

use super::Ctx;
use crate::error::Error;
use crate::nat::Nft;

/// Runs STATUS.
pub fn run(ctx: &Ctx) -> Result<(), Error> {
    let unavailable = |msg: String| Err(Error::Unavailable(msg));
    if let Err(e) = ctx.dir.lock() {
        return unavailable(format!("state directory unusable: {e}"));
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
        Ok(None) => {}
        Err(e) => return unavailable(format!("IPAM store unusable: {e}")),
    }
    if ctx.needs_nat() {
        if let Err(e) = Nft::open() {
            return unavailable(format!("nf_tables is not usable: {e}"));
        }
    }
    Ok(())
}
