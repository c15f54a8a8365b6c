//! NAT, port mapping, isolation and MAC spoofing checks with nf_tables, over netlink.
//!
//! netd writes two tables once per network namespace (`table inet netd`, `table bridge netd`,
//! see `ruleset`) and from then on only adds and removes set/map *elements*: a subnet, a
//! bridge, a published port. Every change is one nf_tables transaction (all or nothing), so an
//! ADD that fails half-way leaves nothing behind, and the cost of an ADD or of a packet does
//! not grow with the number of containers. Nothing here executes `nft`.
//!
//! **Published ports never overlap.** Per address family and protocol, a port published on
//! every host address (`any(P)`, map `ports4any`/`ports6any`, key `proto . port`) conflicts
//! with the same port published on any address, and with every `specific(X, P)` (map
//! `ports4`/`ports6`, key `addr . proto . port`); a `specific(X, P)` conflicts with the same
//! `specific(X, P)` and with `any(P)`. Same-map conflicts are the kernel's `NLM_F_EXCL`;
//! cross-map ones are checked by reading the maps, which is made race-free across processes
//! (which may hold different network locks) by optimistic concurrency: `add_attachment` reads
//! the ruleset generation (`NFT_MSG_GETGEN`), checks, and sends its batch with that
//! generation (`NFNL_BATCH_GENID`); if anything committed in between, the kernel refuses the
//! batch (`ERESTART`) and the whole read-check-write is retried, a bounded number of times.
//! The check for `specific(X, P)` is one targeted lookup in the `any` map; the check for
//! `any(P)` lists the family's `specific` map, which holds only host-IP-bound mappings (rare:
//! most ports are published on every address), so the common ADD stays flat.
//!
//! **Connection tracking follows the maps.** Removing a mapping deletes the conntrack entries
//! of the flows it translated, and adding a UDP mapping deletes the entries of flows already
//! sent to that host port, so long-lived UDP flows reach the current container (see
//! `conntrack`). This is best effort: without conntrack there is nothing to delete, and a
//! failure is logged on stderr, never failing the ADD or DEL.
//!
//! What this module does not do: sysctls (`net.ipv4.ip_forward`, `route_localnet` on the
//! bridge for published ports reached through `127.0.0.1`), links or addresses.

mod conntrack;
mod elements;
mod expr;
pub mod intercept;
mod nfnl;
mod ruleset;
#[cfg(test)]
mod tests;
pub mod vip;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use netd_config::cni::Protocol;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};

use conntrack::Stale;
use elements::{Elem, Item};
use nfnl::{msg, Batch, Outcome};
use ruleset::{Family, SetDef, TABLE};

/// How many times `add_attachment` re-reads and retries when another process commits to the
/// ruleset between its check and its batch. Each round, at least one of the contenders
/// commits, so this covers that many truly simultaneous ADDs of ports in one namespace.
const GENERATION_ATTEMPTS: u32 = 64;

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
    /// The host port overlaps a published one: the same port and protocol on the same host
    /// address, or on every address of the family on either side. The fields describe the
    /// conflicting (already published) mapping.
    #[error(
        "port {host_port}/{protocol} on {} is already published{}",
        host_label(host_ip, target),
        target.map(|t| format!(" (to {t})")).unwrap_or_default()
    )]
    PortInUse {
        /// Protocol of the port.
        protocol: Protocol,
        /// Host IP of the conflicting mapping (`None`: every address).
        host_ip: Option<IpAddr>,
        /// The host port.
        host_port: u16,
        /// Where the conflicting mapping sends the port (container address and port), when
        /// known; `None` when the request lists the port twice itself.
        target: Option<SocketAddr>,
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

fn host_label(ip: &Option<IpAddr>, target: &Option<SocketAddr>) -> String {
    match (ip, target) {
        (Some(ip), _) => ip.to_string(),
        (None, Some(t)) if t.is_ipv6() => "::".to_owned(),
        (None, _) => "0.0.0.0".to_owned(),
    }
}

impl PortMap {
    /// The conflict error naming this (published) mapping.
    fn in_use(&self) -> NatError {
        NatError::PortInUse {
            protocol: self.protocol,
            host_ip: self.host_ip.filter(|ip| !ip.is_unspecified()),
            host_port: self.host_port,
            target: Some(SocketAddr::new(self.container_ip, self.container_port)),
        }
    }

    /// Published on every host address of its family.
    fn is_any(&self) -> bool {
        self.host_ip.is_none_or(|ip| ip.is_unspecified())
    }

    /// Whether publishing both would overlap (see the module documentation).
    fn overlaps(&self, other: &PortMap) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && self.container_ip.is_ipv4() == other.container_ip.is_ipv4()
            && (self.is_any() || other.is_any() || self.host_ip == other.host_ip)
    }
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
    /// Tests: runs once between the overlap check and the batch of `add_attachment`.
    #[cfg(test)]
    before_commit: Option<Box<dyn FnOnce() + Send>>,
    /// Tests: how many batches the kernel refused for a moved generation.
    #[cfg(test)]
    restarts: u32,
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
            #[cfg(test)]
            before_commit: None,
            #[cfg(test)]
            restarts: 0,
        })
    }

    /// One atomic batch: creates the `netd` tables if missing (race-safe across processes),
    /// adds the network's elements (idempotent) and the attachment's. A host port that overlaps
    /// a published one (see the module documentation) fails the whole batch with `PortInUse`,
    /// naming the published mapping, and changes nothing. With ports, the check and the batch
    /// are tied to the ruleset generation and retried when another process commits in between;
    /// a ruleset that keeps changing fails with `EAGAIN` after `GENERATION_ATTEMPTS` rounds.
    /// Then, for UDP ports, the conntrack entries of flows already sent to them are deleted
    /// (best effort) so that those flows are translated afresh.
    pub fn add_attachment(
        &mut self,
        net: &NetworkSpec,
        att: &AttachmentSpec,
    ) -> Result<(), NatError> {
        let mut items = elements::network_items(net)?;
        let att_items = elements::attachment_items(att)?;
        reject_overlaps(&att_items)?;
        items.extend(att_items);
        let ports: Vec<PortMap> = items.iter().filter_map(|i| i.port.clone()).collect();
        let groups = elements::groups(&items);
        let mut batch = Batch::default();
        for g in &groups {
            let flags = NLM_F_CREATE | if g[0].set.exclusive { NLM_F_EXCL } else { 0 };
            elements::push_elems(&mut batch, msg::NEWSETELEM, flags, "add", g);
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.ensure_table(Family::Inet)?;
            if att.mac.is_some() {
                self.ensure_table(Family::Bridge)?;
            }
            if !ports.is_empty() {
                let genid = self.generation()?;
                self.check_overlaps(&ports)?;
                batch.require_generation(genid);
            }
            #[cfg(test)]
            if let Some(hook) = self.before_commit.take() {
                hook();
            }
            let out = self.send(&batch)?;
            match out.first_error() {
                None => break,
                Some((None, libc::ERESTART)) if attempt < GENERATION_ATTEMPTS => {
                    #[cfg(test)]
                    {
                        self.restarts += 1;
                    }
                    backoff(attempt);
                }
                Some((None, libc::ERESTART)) => {
                    return Err(NatError::Kernel {
                        op: format!(
                            "publish ports (the ruleset changed during each of {attempt} attempts)"
                        ),
                        errno: libc::EAGAIN,
                    })
                }
                Some((Some(i), libc::EEXIST)) if groups[i][0].set.exclusive => {
                    return Err(self.port_in_use(&groups[i]))
                }
                Some((i, errno)) => return Err(NatError::kernel(op_name(&batch, i), errno, false)),
            }
        }
        let fresh_udp: Vec<Stale> = ports
            .iter()
            .filter(|p| p.protocol == Protocol::Udp)
            .map(|p| Stale::ToHostPort {
                proto: p.protocol.number(),
                port: p.host_port,
                host: p.host_ip.filter(|ip| !ip.is_unspecified()),
                v6: p.container_ip.is_ipv6(),
            })
            .collect();
        self.forget_flows(&fresh_udp, "after publishing");
        Ok(())
    }

    /// Removes the attachment's elements. Succeeds when some or all are already gone, and
    /// when the tables do not exist. A host port now mapped to a different container address
    /// is left alone. Then the conntrack entries of flows answered by the attachment's mapped
    /// UDP ports are deleted (best effort), so the peers' next packets are translated afresh
    /// instead of following the removed mappings.
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
        self.delete_items(items)?;
        // UDP only, as the reference portmap plugin does: a TCP flow ends with its connection,
        // while a UDP "flow" lives on as long as the peer keeps sending; and a conntrack dump
        // walks the kernel's whole (global) table, tens of milliseconds on a large one.
        let answered: Vec<Stale> = att
            .ports
            .iter()
            .filter(|p| p.protocol == Protocol::Udp)
            .map(|p| Stale::FromContainer {
                proto: p.protocol.number(),
                addr: SocketAddr::new(p.container_ip, p.container_port),
            })
            .collect();
        self.forget_flows(&answered, "after unpublishing");
        Ok(())
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

    /// Test hook: `f` runs once, between the overlap check and the batch of the next
    /// `add_attachment` (to line up concurrent ADDs deterministically).
    #[cfg(test)]
    fn before_commit(&mut self, f: impl FnOnce() + Send + 'static) {
        self.before_commit = Some(Box::new(f));
    }

    /// Deletes the conntrack entries that `stale` describes. Best effort: no conntrack means
    /// nothing to delete, and a failure is reported on stderr only (the ports themselves are
    /// already right; a stale flow ends when its peer pauses).
    fn forget_flows(&mut self, stale: &[Stale], when: &str) {
        if stale.is_empty() || !conntrack::available() {
            return;
        }
        match conntrack::forget(&mut self.sock, stale) {
            Ok(_) => {}
            Err(libc::EOPNOTSUPP | libc::EPROTONOSUPPORT | libc::ENOENT) => {}
            Err(errno) => eprintln!(
                "netd-cni: cannot delete stale conntrack entries {when}: {}",
                std::io::Error::from_raw_os_error(errno)
            ),
        }
    }

    /// The ruleset generation (`NFTA_GEN_ID`), which every commit in the namespace moves.
    fn generation(&mut self) -> Result<u32, NatError> {
        let op = "read the ruleset generation";
        let replies = self
            .sock
            .query(msg::GETGEN, 0, false, |_| {})
            .map_err(|errno| NatError::kernel(op, errno, false))?;
        replies
            .iter()
            .find_map(|r| nfnl::attr_be32(r, 1)) // NFTA_GEN_ID
            .ok_or_else(|| NatError::Kernel {
                op: op.to_owned(),
                errno: libc::EIO,
            })
    }

    /// Fails with `PortInUse` if a port overlaps one of the other map of its family: an
    /// `any(P)` with a published `specific(X, P)` (listing the family's specific map once),
    /// a `specific(X, P)` with a published `any(P)` (one lookup). Same-map overlaps are left
    /// to `NLM_F_EXCL`.
    fn check_overlaps(&mut self, ports: &[PortMap]) -> Result<(), NatError> {
        let mut specific: [Option<Vec<PortMap>>; 2] = [None, None];
        for p in ports {
            let v6 = p.container_ip.is_ipv6();
            if p.is_any() {
                let set: &'static SetDef = if v6 {
                    &ruleset::PORTS6
                } else {
                    &ruleset::PORTS4
                };
                let published = match &mut specific[usize::from(v6)] {
                    Some(list) => list,
                    slot => slot.insert(
                        self.dump_set(set)?
                            .iter()
                            .filter_map(|e| elements::decode_port(set, e))
                            .collect(),
                    ),
                };
                if let Some(taken) = published.iter().find(|q| q.overlaps(p)) {
                    return Err(taken.in_use());
                }
            } else {
                let any = elements::port_item(&PortMap {
                    host_ip: None,
                    ..p.clone()
                })?;
                if let Some(taken) = self
                    .get_elem(&any)?
                    .and_then(|e| elements::decode_port(any.set, &e))
                {
                    return Err(taken.in_use());
                }
            }
        }
        Ok(())
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

    /// Names the published mapping that made an exclusive add fail: the first of `group`
    /// whose key is taken.
    fn port_in_use(&mut self, group: &[&Item]) -> NatError {
        for item in group {
            if let Ok(Some(e)) = self.get_elem(item) {
                if let Some(taken) = elements::decode_port(item.set, &e) {
                    return taken.in_use();
                }
            }
        }
        // Gone again in the meantime: name the requested port.
        let p = group.first().and_then(|i| i.port.as_ref());
        NatError::PortInUse {
            protocol: p.map_or(Protocol::Tcp, |p| p.protocol),
            host_ip: p.and_then(|p| p.host_ip),
            host_port: p.map_or(0, |p| p.host_port),
            target: None,
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

/// A request that overlaps itself (the same host port twice, or on every address and on a
/// specific one) would conflict with itself.
fn reject_overlaps(items: &[Item]) -> Result<(), NatError> {
    let ports: Vec<&PortMap> = items.iter().filter_map(|i| i.port.as_ref()).collect();
    for (n, a) in ports.iter().enumerate() {
        if let Some(b) = ports[..n].iter().find(|b| b.overlaps(a)) {
            return Err(NatError::PortInUse {
                protocol: b.protocol,
                host_ip: b.host_ip.filter(|ip| !ip.is_unspecified()),
                host_port: b.host_port,
                target: None,
            });
        }
    }
    Ok(())
}

/// Waits a little before retrying a batch refused for a moved generation: growing with the
/// attempt, jittered so that contenders spread out.
fn backoff(attempt: u32) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = (nanos ^ std::process::id().wrapping_mul(2_654_435_761)) % 1000;
    let micros = u64::from(attempt.min(10)) * u64::from(50 + jitter) / 2;
    std::thread::sleep(Duration::from_micros(micros));
}
