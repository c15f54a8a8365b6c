//! rtnetlink operations for the plugin: links (bridge, veth), bridge ports and VLANs,
//! addresses, routes, sysctls, and traffic shaping (the `bandwidth` capability).
//!
//! The plugin is a short-lived process, so this layer is synchronous: one blocking
//! `NETLINK_ROUTE` socket per namespace, each call one request answered by the kernel's ack (or
//! one dump), no `ip` subprocess. A [`Netlink`] is bound to the namespace it was opened in and
//! may be used from any thread afterwards; it never moves a thread between namespaces.
//!
//! It owns the mechanics only: which links to create, in what order, and how to undo them is
//! decided by the commands (`cmd/`).
//!
//! Layout: `socket` (transport: acks, dumps, kernel error text), `links` (get, create, set,
//! delete), `bridge` (port flags and VLANs over `AF_BRIDGE`), `addr`, `route`, `sysctl`,
//! `tc` (TBF, ifb and redirect for `bandwidth`), `error`.

mod addr;
mod bridge;
mod error;
mod links;
mod route;
mod socket;
mod sysctl;
mod tc;
#[cfg(test)]
mod tc_tests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::PathBuf;

pub use error::LinkError;
pub use links::Link;
pub use route::RouteEntry;
pub use sysctl::{get_sysctl, set_sysctl};
pub use tc::{ifb_name, Bandwidth};

use crate::netns::NetNs;
use socket::{Failure, Transport};

/// An rtnetlink socket bound to one network namespace: the one of the thread that opened it,
/// or the one given to [`Netlink::open_in`]. Not thread-safe to share, cheap to open.
pub struct Netlink {
    io: Transport,
    /// The namespace's path when it is not the caller's own, for error messages.
    ns: Option<PathBuf>,
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink").field("ns", &self.ns).finish()
    }
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, LinkError> {
        let io = Transport::open().map_err(|source| LinkError::Io {
            op: "open a netlink socket".into(),
            source,
        })?;
        Ok(Self { io, ns: None })
    }

    /// Opens a socket inside `ns` (on a short-lived thread that enters it); the socket stays
    /// bound to `ns` and is used from the calling thread afterwards.
    pub fn open_in(ns: &NetNs) -> Result<Self, LinkError> {
        let op = || format!("open a netlink socket in netns {}", ns.path().display());
        let io = ns
            .run(Transport::open)
            .and_then(|opened| opened)
            .map_err(|source| LinkError::Io { op: op(), source })?;
        Ok(Self {
            io,
            ns: Some(ns.path().to_path_buf()),
        })
    }

    /// Sends a request and waits for its ack, ignoring any reply.
    fn exec(
        &mut self,
        msg: netlink_packet_route::RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), Failure> {
        self.io.request(msg, flags, &mut |_| {})
    }

    /// Like [`Netlink::exec`] for a request on link `index`; on failure, the error names the
    /// link (looked up only then) through `op`, which gets e.g. `eth0 (index 3)`.
    fn exec_on(
        &mut self,
        index: u32,
        msg: netlink_packet_route::RouteNetlinkMessage,
        flags: u16,
        op: impl FnOnce(&str) -> String,
    ) -> Result<(), LinkError> {
        match self.exec(msg, flags) {
            Ok(()) => Ok(()),
            Err(failure) => {
                let link = self.describe(index);
                Err(self.error(failure, op(&link)))
            }
        }
    }

    /// `eth0 (index 3)`, or `index 3` when the link cannot be found. For error paths only.
    fn describe(&mut self, index: u32) -> String {
        match self.link_by_index(index) {
            Ok(Some(link)) => format!("{} (index {index})", link.name),
            _ => format!("index {index}"),
        }
    }

    /// A transport failure as the [`LinkError`] of `op`, with this socket's namespace.
    fn error(&self, failure: Failure, op: String) -> LinkError {
        let op = match &self.ns {
            Some(ns) => format!("{op} in netns {}", ns.display()),
            None => op,
        };
        match failure {
            Failure::Kernel { errno, msg } => LinkError::Kernel {
                op,
                errno,
                source: io::Error::from_raw_os_error(errno),
                kernel_msg: msg,
            },
            Failure::Io(source) => LinkError::Io { op, source },
            Failure::Decode(reason) => LinkError::Decode { op, reason },
        }
    }
}

/// Refuses names the kernel's `dev_valid_name` would: empty, longer than 15 bytes, `.`, `..`,
/// or containing `/`, `:` or whitespace.
fn validate_name(name: &str) -> Result<(), LinkError> {
    netd_config::names::check_ifname(name).map_err(|what| LinkError::Invalid { what })
}

/// `aa:bb:cc:dd:ee:ff`, for messages.
fn format_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}
