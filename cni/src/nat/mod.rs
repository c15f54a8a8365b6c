//! NAT, port mapping, isolation and MAC spoofing checks with nf_tables, over netlink.
//!
//! netd writes two tables once per network namespace (`table inet netd`, `table bridge netd`,
//! see `ruleset`) and from then on only adds and removes set/map *elements*: a subnet, a
//! bridge, a published port. Every change is one nf_tables transaction (all or nothing), so an
//! ADD that fails half-way leaves nothing behind, and the cost of an ADD or of a packet does
//! not grow with the number of containers. Nothing here executes `nft`.
//!
//! What this module does not do: sysctls (`net.ipv4.ip_forward`, `route_localnet` on the
//! bridge for published ports reached through `127.0.0.1`), links or addresses.

mod elements;
mod expr;
mod nfnl;
mod ruleset;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::IpAddr;

use netd_config::cni::Protocol;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};

use elements::{Elem, Item};
use nfnl::{msg, Batch, Outcome};
use ruleset::{Family, TABLE};

/// A network as the firewall sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    /// The network's bridge interface.
    pub bridge: String,
    /// Every subnet of the network (host bits are ignored).
    pub subnets: Vec<ipnet::IpNet>,
    /// Masquerade traffic from these subnets that leaves them (`ipMasq`).
    pub masquerade: bool,
    /// Drop forwarding between this network's bridge and other netd bridges.
    pub isolate: bool,
}

/// One published port.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortMap {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Host address to publish on; `None` (or an unspecified address) means every host
    /// address of `container_ip`'s family. When set, it must be of the same family.
    pub host_ip: Option<IpAddr>,
    /// Port on the host.
    pub host_port: u16,
    /// The container's address.
    pub container_ip: IpAddr,
    /// Port in the container.
    pub container_port: u16,
}

/// The per-container state: published ports and the MAC spoofing check.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttachmentSpec {
    /// Host end of the container's veth (the bridge port).
    pub host_veth: String,
    /// The container interface's MAC; `Some` turns on the spoofing check on `host_veth`.
    pub mac: Option<[u8; 6]>,
    /// Ports to publish.
    pub ports: Vec<PortMap>,
}

/// Errors of nf_tables operations.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// The host port is already mapped (same protocol and host IP key) by another attachment.
    #[error(
        "port {host_port}/{protocol} on {} is already published",
        host_label(host_ip)
    )]
    PortInUse {
        /// Protocol of the port.
        protocol: Protocol,
        /// Host IP of the conflicting mapping (`None`: every address).
        host_ip: Option<IpAddr>,
        /// The host port.
        host_port: u16,
    },
    /// The kernel rejected an operation.
    #[error("nf_tables: {op} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// What was being done.
        op: String,
        /// The errno the kernel returned.
        errno: i32,
    },
    /// nf_tables (or the table family, chain type or expression needed) is missing.
    #[error("nf_tables is not available ({op}: {})", std::io::Error::from_raw_os_error(*errno))]
    Unavailable {
        /// What was being done.
        op: String,
        /// The errno the kernel returned.
        errno: i32,
    },
    /// The request itself is invalid (bad interface name, mixed address families...).
    #[error("{reason}")]
    Invalid {
        /// Why.
        reason: String,
    },
    /// `check_attachment` found an element missing (or pointing elsewhere).
    #[error("{what} is missing")]
    Missing {
        /// The missing element, e.g. "port mapping 8080/tcp -> 10.88.0.2:80".
        what: String,
    },
}

fn host_label(ip: &Option<IpAddr>) -> String {
    ip.map_or_else(|| "0.0.0.0".to_owned(), |ip| ip.to_string())
}

impl NatError {
    /// The kernel errno behind this error, if any (`EEXIST` for a port in use).
    pub fn errno(&self) -> Option<i32> {
        match self {
            NatError::Kernel { errno, .. } | NatError::Unavailable { errno, .. } => Some(*errno),
            NatError::PortInUse { .. } => Some(libc::EEXIST),
            NatError::Invalid { .. } | NatError::Missing { .. } => None,
        }
    }

    /// Classifies a kernel errno: missing protocol/family/module support is `Unavailable`.
    fn kernel(op: impl Into<String>, errno: i32, bootstrap: bool) -> Self {
        let op = op.into();
        match errno {
            libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT | libc::EOPNOTSUPP => {
                NatError::Unavailable { op, errno }
            }
            libc::ENOENT if bootstrap => NatError::Unavailable { op, errno },
            _ => NatError::Kernel { op, errno },
        }
    }
}

/// An nf_tables handle: a `NETLINK_NETFILTER` socket bound to the network namespace of the
/// thread that opened it (it may then be used from any thread).
pub struct Nft {
    sock: nfnl::Socket,
    /// The kernel accepts `NFT_MSG_DESTROYSETELEM` (>= 6.3); cleared on the first rejection.
    destroy_supported: bool,
}

impl Nft {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Nft, NatError> {
        let sock = nfnl::Socket::open().map_err(|e| {
            NatError::kernel(
                "open a NETLINK_NETFILTER socket",
                e.raw_os_error().unwrap_or(libc::EIO),
                true,
            )
        })?;
        Ok(Nft {
            sock,
            destroy_supported: true,
        })
    }

    /// One atomic batch: creates the `netd` tables if missing (race-safe across processes),
    /// adds the network's elements (idempotent) and the attachment's. A host port already
    /// mapped (same protocol and host IP key) fails the whole batch with `PortInUse` and
    /// changes nothing.
    pub fn add_attachment(
        &mut self,
        net: &NetworkSpec,
        att: &AttachmentSpec,
    ) -> Result<(), NatError> {
        let mut items = elements::network_items(net)?;
        let att_items = elements::attachment_items(att)?;
        reject_duplicate_ports(&att_items)?;
        items.extend(att_items);
        self.ensure_table(Family::Inet)?;
        if att.mac.is_some() {
            self.ensure_table(Family::Bridge)?;
        }
        let groups = elements::groups(&items);
        let mut batch = Batch::default();
        for g in &groups {
            let flags = NLM_F_CREATE | if g[0].set.exclusive { NLM_F_EXCL } else { 0 };
            elements::push_elems(&mut batch, msg::NEWSETELEM, flags, "add", g);
        }
        let out = self.send(&batch)?;
        match out.first_error() {
            None => Ok(()),
            Some((Some(i), libc::EEXIST)) if groups[i][0].set.exclusive => {
                Err(self.port_in_use(&groups[i]))
            }
            Some((i, errno)) => Err(NatError::kernel(op_name(&batch, i), errno, false)),
        }
    }

    /// Removes the attachment's elements. Succeeds when some or all are already gone, and
    /// when the tables do not exist. A host port now mapped to a different container address
    /// is left alone.
    pub fn del_attachment(&mut self, att: &AttachmentSpec) -> Result<(), NatError> {
        let mut items = Vec::new();
        // What cannot be encoded was never added: nothing of it to delete.
        for item in att.ports.iter().filter_map(|p| elements::port_item(p).ok()) {
            // The kernel deletes map elements by key alone: leave a port that maps to another
            // container (e.g. this attachment's ADD failed with PortInUse).
            if self
                .get_elem(&item)?
                .is_some_and(|e| e.data == item.elems[0].data)
            {
                items.push(item);
            }
        }
        items.extend(elements::mac_items(att).unwrap_or_default());
        self.delete_items(items)
    }

    /// Fails with `Missing`, naming the first element absent (or mapping elsewhere), unless
    /// all of the network's and the attachment's elements are present.
    pub fn check_attachment(
        &mut self,
        net: &NetworkSpec,
        att: &AttachmentSpec,
    ) -> Result<(), NatError> {
        let mut items = elements::network_items(net)?;
        items.extend(elements::attachment_items(att)?);
        let mut intervals: HashMap<&str, Vec<Elem>> = HashMap::new();
        for item in &items {
            let present = if item.set.interval {
                if !intervals.contains_key(item.set.name) {
                    intervals.insert(item.set.name, self.dump_set(item.set)?);
                }
                let have = &intervals[item.set.name];
                item.elems
                    .iter()
                    .all(|e| have.iter().any(|h| h.key == e.key && h.end == e.end))
            } else {
                self.get_elem(item)?
                    .is_some_and(|found| found.data == item.elems[0].data)
            };
            if !present {
                return Err(NatError::Missing {
                    what: item.what.clone(),
                });
            }
        }
        Ok(())
    }

    /// Removes the network's elements (when it has no attachments left). Idempotent.
    pub fn del_network(&mut self, net: &NetworkSpec) -> Result<(), NatError> {
        let items = elements::network_items(net)?;
        self.delete_items(items)
    }

    /// All port mappings currently in the maps.
    pub fn port_mappings(&mut self) -> Result<Vec<PortMap>, NatError> {
        let mut out = Vec::new();
        for set in ruleset::PORT_MAPS {
            out.extend(
                self.dump_set(set)?
                    .iter()
                    .filter_map(|e| elements::decode_port(set, e)),
            );
        }
        Ok(out)
    }

    /// Use per-element `DELSETELEM` even if the kernel knows `DESTROYSETELEM` (tests).
    #[cfg(test)]
    fn force_delsetelem(&mut self) {
        self.destroy_supported = false;
    }

    fn send(&mut self, batch: &Batch) -> Result<Outcome, NatError> {
        self.sock.send_batch(batch).map_err(|e| {
            NatError::kernel(
                "send a batch and read its acknowledgements",
                e.raw_os_error().unwrap_or(libc::EIO),
                false,
            )
        })
    }

    fn table_exists(&mut self, family: Family) -> Result<bool, NatError> {
        match self.sock.query(msg::GETTABLE, family.code(), false, |a| {
            a.str(1, TABLE); // NFTA_TABLE_NAME
        }) {
            Ok(_) => Ok(true),
            Err(libc::ENOENT) => Ok(false),
            Err(errno) => Err(NatError::kernel(
                format!("look up table {family} {TABLE}"),
                errno,
                true,
            )),
        }
    }

    /// Creates the table with its sets, chains and rules unless it exists. Losing the creation
    /// race to another process (`EEXIST` on the table) is success: its batch wrote the same.
    fn ensure_table(&mut self, family: Family) -> Result<(), NatError> {
        if self.table_exists(family)? {
            return Ok(());
        }
        let mut batch = Batch::default();
        ruleset::bootstrap(&mut batch, family);
        let out = self.send(&batch)?;
        match out.first_error() {
            None => Ok(()),
            Some(_) if out.errors.first() == Some(&libc::EEXIST) => Ok(()),
            Some((i, errno)) => Err(NatError::kernel(op_name(&batch, i), errno, true)),
        }
    }

    /// The element stored under `item`'s (first) key, if any.
    fn get_elem(&mut self, item: &Item) -> Result<Option<Elem>, NatError> {
        match self
            .sock
            .query(msg::GETSETELEM, item.set.family.code(), false, |a| {
                elements::get_elem_attrs(a, item)
            }) {
            Ok(replies) => Ok(replies.iter().flat_map(|r| elements::parse_elems(r)).next()),
            Err(libc::ENOENT) => Ok(None),
            Err(errno) => Err(NatError::kernel(
                format!("look up {}", item.what),
                errno,
                false,
            )),
        }
    }

    /// Every element of a set; empty when the table or set does not exist.
    fn dump_set(&mut self, set: &ruleset::SetDef) -> Result<Vec<Elem>, NatError> {
        match self
            .sock
            .query(msg::GETSETELEM, set.family.code(), true, |a| {
                a.str(1, TABLE).str(2, set.name); // NFTA_SET_ELEM_LIST_TABLE, _SET
            }) {
            Ok(replies) => Ok(replies
                .iter()
                .flat_map(|r| elements::parse_elems(r))
                .collect()),
            Err(libc::ENOENT) => Ok(Vec::new()),
            Err(errno) => Err(NatError::kernel(
                format!("list set {} {TABLE} {}", set.family, set.name),
                errno,
                false,
            )),
        }
    }

    /// Names the port that made an exclusive add fail: the first of `group` already mapped.
    fn port_in_use(&mut self, group: &[&Item]) -> NatError {
        let taken = group
            .iter()
            .find(|i| matches!(self.get_elem(i), Ok(Some(_))))
            .or(group.first());
        let p = taken.and_then(|i| i.port.as_ref());
        NatError::PortInUse {
            protocol: p.map_or(Protocol::Tcp, |p| p.protocol),
            host_ip: p.and_then(|p| p.host_ip),
            host_port: p.map_or(0, |p| p.host_port),
        }
    }

    /// Deletes items, ignoring those already gone: one `DESTROYSETELEM` batch, or on kernels
    /// without it, `DELSETELEM` per item, resending without the items reported `ENOENT`.
    fn delete_items(&mut self, mut items: Vec<Item>) -> Result<(), NatError> {
        for family in [Family::Inet, Family::Bridge] {
            if items.iter().any(|i| i.set.family == family) && !self.table_exists(family)? {
                items.retain(|i| i.set.family != family);
            }
        }
        if items.is_empty() {
            return Ok(());
        }
        if self.destroy_supported {
            let mut batch = Batch::default();
            for g in elements::groups(&items) {
                elements::push_elems(&mut batch, msg::DESTROYSETELEM, 0, "delete", &g);
            }
            match self.send(&batch)?.first_error() {
                None => return Ok(()),
                Some((Some(_), libc::EINVAL | libc::EOPNOTSUPP)) => self.destroy_supported = false,
                Some((i, errno)) => return Err(NatError::kernel(op_name(&batch, i), errno, false)),
            }
        }
        for chunk in items.chunks(64) {
            let mut pending: Vec<&Item> = chunk.iter().collect();
            while !pending.is_empty() {
                let mut batch = Batch::default();
                for item in &pending {
                    elements::push_elems(&mut batch, msg::DELSETELEM, 0, "delete", &[item]);
                }
                let out = self.send(&batch)?;
                match out.first_error() {
                    None => break,
                    Some((Some(_), libc::ENOENT)) => {}
                    Some((i, errno)) => {
                        return Err(NatError::kernel(op_name(&batch, i), errno, false))
                    }
                }
                // Every failure is ENOENT or a later one caught next round; keep the rest.
                pending = pending
                    .into_iter()
                    .zip(&out.errors)
                    .filter(|(_, &e)| e != libc::ENOENT)
                    .map(|(i, _)| i)
                    .collect();
            }
        }
        Ok(())
    }
}

fn op_name(batch: &Batch, i: Option<usize>) -> String {
    i.map_or_else(
        || "commit the transaction".to_owned(),
        |i| batch.op(i).to_owned(),
    )
}

/// The same host port listed twice in one attachment would conflict with itself.
fn reject_duplicate_ports(items: &[Item]) -> Result<(), NatError> {
    for (n, a) in items.iter().enumerate() {
        if let Some(p) = &a.port {
            if items[..n]
                .iter()
                .any(|b| b.set == a.set && b.elems[0].key == a.elems[0].key)
            {
                return Err(NatError::PortInUse {
                    protocol: p.protocol,
                    host_ip: p.host_ip,
                    host_port: p.host_port,
                });
            }
        }
    }
    Ok(())
}
