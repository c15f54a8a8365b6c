//! The one error type of the built-in allocator.
//!
//! Variants say what failed and with which input, so the CNI error message is actionable on
//! its own; [`IpamError::is_invalid_request`] tells the caller which ones are the runtime's or
//! the configuration's fault (CNI code 7) rather than the host's.

use std::net::IpAddr;
use std::path::PathBuf;

use super::Owner;

/// Why an allocator operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every allocatable address of a range set is taken.
    #[error("no free address in {range}")]
    Exhausted {
        /// The set's ranges, e.g. `10.88.0.2-10.88.0.254`.
        range: String,
    },
    /// A requested static address lies outside every range of the network.
    #[error("requested address {addr} is outside every range of this network")]
    NotInRange {
        /// The requested address.
        addr: IpAddr,
    },
    /// A requested static address is inside a subnet but is never handed out.
    #[error("requested address {addr} is the {what} of its subnet and is never handed out")]
    Reserved {
        /// The requested address.
        addr: IpAddr,
        /// `gateway`, `network address` or `broadcast address`.
        what: &'static str,
    },
    /// A requested static address is allocated to someone else.
    #[error(
        "requested address {addr} is already allocated to container {} (interface {})",
        by.container_id,
        by.ifname
    )]
    Taken {
        /// The requested address.
        addr: IpAddr,
        /// Who holds it.
        by: Owner,
    },
    /// Two requested addresses fall in the same range set; each set yields one address.
    #[error(
        "requested addresses {first} and {second} are in the same range set (one address per set)"
    )]
    SameSet {
        /// The first requested address of the set.
        first: IpAddr,
        /// The second one.
        second: IpAddr,
    },
    /// The owner already holds a different address in the set a static request falls in.
    #[error(
        "container {} (interface {}) already holds {held}; it cannot also take {requested} from the same range set",
        owner.container_id,
        owner.ifname
    )]
    AlreadyHolds {
        /// The requesting owner.
        owner: Owner,
        /// What it holds.
        held: IpAddr,
        /// What it asked for.
        requested: IpAddr,
    },
    /// The owner cannot be written in host-local's record format.
    #[error("invalid owner {owner:?}: {reason}")]
    BadOwner {
        /// The rejected owner.
        owner: Owner,
        /// Why.
        reason: &'static str,
    },
    /// A configured range cannot be used (normally caught by config validation first).
    #[error("ipam range {range}: {reason}")]
    BadRange {
        /// The range's subnet.
        range: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration has no range set.
    #[error("ipam: no ranges configured (set ipam.ranges or ipam.subnet)")]
    NoRanges,
    /// The network name cannot name a directory below the data directory.
    #[error("network name {name:?} cannot be used as a directory name")]
    BadNetwork {
        /// The rejected name.
        name: String,
    },
    /// A file of the store could not be read or written.
    #[error("ipam store {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl IpamError {
    /// Whether the request or the configuration is at fault (CNI code 7, "invalid network
    /// configuration"), as opposed to the pool being full or the host failing.
    pub fn is_invalid_request(&self) -> bool {
        matches!(
            self,
            IpamError::NotInRange { .. }
                | IpamError::Reserved { .. }
                | IpamError::Taken { .. }
                | IpamError::SameSet { .. }
                | IpamError::AlreadyHolds { .. }
                | IpamError::BadOwner { .. }
                | IpamError::BadRange { .. }
                | IpamError::NoRanges
                | IpamError::BadNetwork { .. }
        )
    }

    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> IpamError {
        IpamError::Io {
            path: path.into(),
            source,
        }
    }
}
