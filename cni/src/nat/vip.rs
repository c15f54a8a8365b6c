//! Service VIPs: L4 load balancing of `VIP:port` across endpoints with nf_tables, over netlink.
//!
//! Layout of `table inet netd-vip` (separate from the CNI plugin's `table inet netd`):
//!
//! ```text
//! map services4 { ipv4_addr . inet_proto . inet_service : verdict }   # VIP . proto . port
//! map services6 { ipv6_addr . inet_proto . inet_service : verdict }
//! chain prerouting { type nat hook prerouting priority -110;
//!     meta nfproto ipv4 ip daddr . meta l4proto . th dport vmap @services4
//!     meta nfproto ipv6 ip6 daddr . meta l4proto . th dport vmap @services6 }
//! chain output { type nat hook output priority -110; (the same two rules) }
//! map hostports4 { inet_proto . inet_service : verdict }            # published host ports
//! map hostports6 { inet_proto . inet_service : verdict }
//! chain prerouting { type nat hook prerouting priority -110;
//!     meta nfproto ipv4 ip daddr . meta l4proto . th dport vmap @services4
//!     meta nfproto ipv6 ip6 daddr . meta l4proto . th dport vmap @services6
//!     meta nfproto ipv4 fib daddr type local meta l4proto . th dport vmap @hostports4
//!     meta nfproto ipv6 fib daddr type local meta l4proto . th dport vmap @hostports6 }
//! chain output { type nat hook output priority -110; (the same four rules) }
//! set empty4 { ipv4_addr . inet_proto . inet_service }                # ports without endpoints
//! set empty6 { ipv6_addr . inet_proto . inet_service }
//! chain reject-output  { type filter hook output priority 0;
//!     meta nfproto ipv4 ip daddr . meta l4proto . th dport @empty4 reject (icmpx port-unreachable)
//!     meta nfproto ipv6 ... @empty6 reject }
//! chain reject-forward { type filter hook forward priority 0; (the same two rules) }
//! # per service port n:
//! map eps-<n> { integer : ipv4_addr . inet_service }                  # slot -> endpoint
//! chain svc-<n> { dnat ip to numgen random mod S map @eps-<n> }       # empty: no endpoint
//! ```
//!
//! **Weights**: an endpoint of weight w holds w of the S slots of its map (weights divided by
//! their greatest common divisor, and scaled down so that S stays at most [`MAX_SLOTS`]; every
//! endpoint with a weight above 0 keeps at least one slot), so it receives w/S of the new
//! connections. Weight 0 drains an endpoint: no new connections, established ones continue.
//!
//! **Host ports**: a service port with a host port is also reached on that port of every local
//! address of the host (`fib daddr type local`), through the same per-service chain, so the
//! published port balances exactly like the VIP. Connections from the host's own `127.0.0.1`
//! to a container endpoint need the CNI plugin's `route_localnet` and localhost masquerade
//! (present once a netd network exists); an endpoint on `127.0.0.1` (a host process) is
//! reachable through the host port from the host itself, not from other machines (the kernel
//! drops packets from outside translated to a loopback address).
//!
//! Per packet (the first of each connection: nat chains see only those) the cost is one hash
//! lookup and, for a VIP, one random number and one more lookup: it does not grow with the
//! number of services, endpoints or weights. Priority -110 runs before the CNI plugin's port-map DNAT
//! (-100). A service port without endpoints is refused, so clients fail fast instead of hanging:
//! its key goes into `empty4`/`empty6`, which filter chains on the output and forward hooks
//! reject with an ICMP port unreachable (a TCP client sees "connection refused"). The reject
//! cannot live in the nat chain: the kernel never delivers a reset generated there to a local
//! client.
//!
//! [`VipNat::sync`] takes the whole desired state and applies the difference with the last
//! applied one as a single nf_tables transaction: new service ports get their map and chain,
//! changed ones get their map flushed and refilled and their rule replaced, removed ones are
//! taken out of the verdict map and their chain and map deleted. The first sync of a
//! [`VipNat`] (and any sync after a failure) rebuilds the table from scratch in one batch:
//! delete the table if present, create it (`NLM_F_EXCL`) and everything in it, so a daemon
//! restart never leaves stale chains and there is no instant without VIPs.
//!
//! Assumptions (not done here): packets to a VIP must be routable (a route covering the VIP
//! range, e.g. the default route), since routing happens before the nat output hook; no
//! masquerade is added: endpoints reached from the host itself answer the host's source
//! address, and containers on a netd bridge that reach an endpoint on the same bridge are
//! masqueraded by the `netd` table's hairpin rule (`ct status dnat`). Endpoints whose family
//! differs from the VIP's are ignored. Session affinity is not implemented.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL};

use super::expr::{
    Expr, BASE_NETWORK, BASE_TRANSPORT, CMP_EQ, META_L4PROTO, META_NFPROTO, REG32_00, REG_1,
    REG_VERDICT,
};
use super::nfnl::{msg, Attrs, Batch, Socket};

/// Name of the VIP table (family inet).
pub const TABLE: &str = "netd-vip";
/// Priority of the nat base chains: before the CNI plugin's port-map DNAT (-100).
pub const PRIORITY: i32 = -110;

const INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// Message types not in `nfnl::msg`.
const DELTABLE: u8 = 0x02;
const DELCHAIN: u8 = 0x05;
const DELRULE: u8 = 0x08;
const DELSET: u8 = 0x0b;
/// Set flags.
const SET_MAP: u32 = 0x8;
/// `NFT_DATA_VERDICT`: the data type of a verdict map.
const DATA_VERDICT: u32 = 0xffff_ff00;
/// `NFT_GOTO`.
const GOTO: i32 = -4;
/// nft's datatype ids (display only): integer, ipv4_addr, ipv6_addr, inet_proto, inet_service.
const T_INTEGER: u32 = 4;
const T_IPV4: u32 = 7;
const T_IPV6: u32 = 8;
const T_PROTO: u32 = 12;
const T_PORT: u32 = 13;
/// Elements per `NEWSETELEM` message.
const ELEMS_PER_MSG: usize = 128;
/// At most this many slots in a service port's endpoint map (see the module docs on weights).
pub const MAX_SLOTS: u32 = 256;
/// `RTN_LOCAL`, as `fib daddr type` reports it.
const RTN_LOCAL: u32 = 2;

/// Transport protocol of a VIP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4 {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
}

impl L4 {
    fn number(self) -> u8 {
        match self {
            L4::Tcp => 6,
            L4::Udp => 17,
        }
    }
}

impl std::fmt::Display for L4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
        })
    }
}

/// One balanced port of a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipPort {
    /// The virtual IP.
    pub vip: IpAddr,
    /// Protocol.
    pub proto: L4,
    /// Port on the VIP.
    pub port: u16,
}

impl std::fmt::Display for VipPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", SocketAddr::new(self.vip, self.port), self.proto)
    }
}

/// Where a VIP port sends new connections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// Endpoints and their weights; an empty list (or only weight 0) rejects.
    pub endpoints: Vec<(SocketAddr, u32)>,
    /// Also publish the port on this port of every local address of the host.
    pub host_port: Option<u16>,
}

impl Target {
    /// Endpoints of equal weight 1 and no host port.
    pub fn even(endpoints: impl IntoIterator<Item = SocketAddr>) -> Self {
        Target {
            endpoints: endpoints.into_iter().map(|e| (e, 1)).collect(),
            host_port: None,
        }
    }
}

/// The whole desired state: every VIP port and where it sends connections.
pub type Desired = BTreeMap<VipPort, Target>;

/// What the kernel holds for one service port: the endpoint map slots and the host port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Applied {
    slots: Vec<SocketAddr>,
    host_port: Option<u16>,
}

/// Errors of VIP programming.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    /// The netlink socket failed.
    #[error("nf_tables socket: {0}")]
    Io(#[from] io::Error),
    /// The kernel refused the transaction.
    #[error("nf_tables: {op} failed: {}", io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// The refused operation (or "batch").
        op: String,
        /// errno.
        errno: i32,
    },
}

/// What a sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// The table was (re)built from scratch.
    pub rebuilt: bool,
    /// Service ports created, changed, removed.
    pub added: usize,
    /// Service ports whose endpoints changed.
    pub changed: usize,
    /// Service ports removed.
    pub removed: usize,
    /// Messages in the batch (0: nothing to do, nothing sent).
    pub messages: usize,
}

/// The VIP table of the network namespace the socket was opened in.
pub struct VipNat {
    sock: Socket,
    /// What the kernel holds: service port -> (chain/map id, state). `None` when unknown
    /// (never synced, or the last sync failed): the next sync rebuilds.
    applied: Option<BTreeMap<VipPort, (u32, Applied)>>,
    next_id: u32,
}

impl VipNat {
    /// Opens a netfilter socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, VipError> {
        Ok(Self {
            sock: Socket::open()?,
            applied: None,
            next_id: 0,
        })
    }

    /// Makes the kernel's VIP table match `desired`, in one transaction.
    pub fn sync(&mut self, desired: &Desired) -> Result<SyncReport, VipError> {
        let desired = normalize(desired);
        let result = match self.applied.take() {
            Some(applied) => self.sync_diff(applied, &desired),
            None => self.rebuild(&desired),
        };
        if result.is_err() {
            self.applied = None;
        }
        result
    }

    /// Deletes the VIP table (if present).
    pub fn remove(&mut self) -> Result<(), VipError> {
        self.applied = None;
        if !self.table_exists()? {
            return Ok(());
        }
        let mut batch = Batch::default();
        del_table(&mut batch);
        self.send(&batch)
    }

    fn rebuild(&mut self, desired: &BTreeMap<VipPort, Applied>) -> Result<SyncReport, VipError> {
        let mut attempt = 0;
        loop {
            let exists = self.table_exists()?;
            let mut batch = Batch::default();
            if exists {
                del_table(&mut batch);
            }
            bootstrap(&mut batch);
            let mut applied = BTreeMap::new();
            for (id, (vp, want)) in desired.iter().enumerate() {
                let id = id as u32;
                add_service(&mut batch, id, vp, want);
                applied.insert(*vp, (id, want.clone()));
            }
            match self.send(&batch) {
                // Someone created the table between the check and the batch: look again.
                Err(VipError::Kernel { errno, .. }) if errno == libc::EEXIST && attempt < 3 => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
                Ok(()) => {
                    self.next_id = applied.len() as u32;
                    self.applied = Some(applied);
                    return Ok(SyncReport {
                        rebuilt: true,
                        added: desired.len(),
                        messages: batch.len(),
                        ..SyncReport::default()
                    });
                }
            }
        }
    }

    fn sync_diff(
        &mut self,
        mut applied: BTreeMap<VipPort, (u32, Applied)>,
        desired: &BTreeMap<VipPort, Applied>,
    ) -> Result<SyncReport, VipError> {
        let mut batch = Batch::default();
        let mut report = SyncReport::default();
        let removed: Vec<VipPort> = applied
            .keys()
            .filter(|k| !desired.contains_key(k))
            .copied()
            .collect();
        for vp in removed {
            if let Some((id, old)) = applied.remove(&vp) {
                del_service(&mut batch, id, &vp, &old);
                report.removed += 1;
            }
        }
        // Host ports released by changed service ports go first, so another service port can
        // take one over in the same batch.
        for (vp, want) in desired {
            if let Some((_, old)) = applied.get_mut(vp) {
                if old.host_port != want.host_port {
                    if let Some(hp) = old.host_port.take() {
                        del_host_port(&mut batch, vp, hp);
                    }
                }
            }
        }
        for (vp, want) in desired {
            match applied.get_mut(vp) {
                Some((_, old)) if old == want => {}
                Some((id, old)) => {
                    if old.slots != want.slots {
                        update_service(&mut batch, *id, vp, &old.slots, &want.slots);
                    }
                    if let (None, Some(hp)) = (old.host_port, want.host_port) {
                        add_host_port(&mut batch, *id, vp, hp);
                    }
                    *old = want.clone();
                    report.changed += 1;
                }
                None => {
                    let id = self.next_id;
                    self.next_id = self.next_id.wrapping_add(1);
                    add_service(&mut batch, id, vp, want);
                    applied.insert(*vp, (id, want.clone()));
                    report.added += 1;
                }
            }
        }
        report.messages = batch.len();
        if batch.len() > 0 {
            self.send(&batch)?;
        }
        self.applied = Some(applied);
        Ok(report)
    }

    fn table_exists(&mut self) -> Result<bool, VipError> {
        match self.sock.query(msg::GETTABLE, INET, false, |a| {
            a.str(1, TABLE);
        }) {
            Ok(_) => Ok(true),
            Err(e) if e == libc::ENOENT => Ok(false),
            Err(errno) => Err(VipError::Kernel {
                op: format!("get table inet {TABLE}"),
                errno,
            }),
        }
    }

    fn send(&mut self, batch: &Batch) -> Result<(), VipError> {
        let outcome = self.sock.send_batch(batch)?;
        match outcome.first_error() {
            None => Ok(()),
            Some((i, errno)) => Err(VipError::Kernel {
                op: i.map_or_else(|| "batch".to_string(), |i| batch.op(i).to_string()),
                errno,
            }),
        }
    }
}

/// Turns each target into its slots (see [`slots`]) and drops host ports taken by an
/// earlier service port of the same family and protocol (the registry refuses such
/// duplicates; this keeps one bad state from failing the whole transaction).
fn normalize(desired: &Desired) -> BTreeMap<VipPort, Applied> {
    let mut taken = std::collections::BTreeSet::new();
    desired
        .iter()
        .map(|(vp, t)| {
            let host_port = t
                .host_port
                .filter(|hp| taken.insert((vp.vip.is_ipv6(), vp.proto, *hp)));
            let slots = slots(vp, &t.endpoints);
            (*vp, Applied { slots, host_port })
        })
        .collect()
}

/// The endpoint map of a service port: every endpoint of the VIP's family with a weight above
/// 0 (the first occurrence of a repeated address counts), repeated in proportion to its
/// weight, at most [`MAX_SLOTS`] slots in all, sorted so equal inputs give equal maps.
pub fn slots(vp: &VipPort, endpoints: &[(SocketAddr, u32)]) -> Vec<SocketAddr> {
    let mut eps: Vec<(SocketAddr, u64)> = Vec::new();
    for (e, w) in endpoints {
        if *w > 0 && e.is_ipv4() == vp.vip.is_ipv4() && !eps.iter().any(|(x, _)| x == e) {
            eps.push((*e, u64::from(*w)));
        }
    }
    eps.sort();
    let gcd = eps.iter().fold(0, |g, (_, w)| gcd(g, *w)).max(1);
    let total: u64 = eps.iter().map(|(_, w)| w / gcd).sum();
    let max = u64::from(MAX_SLOTS).max(eps.len() as u64);
    let mut out = Vec::new();
    for (e, w) in eps {
        let w = w / gcd;
        let n = if total <= max {
            w
        } else {
            (w * max / total).max(1)
        };
        out.extend(std::iter::repeat_n(e, n as usize));
    }
    out
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn svc_chain(id: u32) -> String {
    format!("svc-{id}")
}

fn eps_map(id: u32) -> String {
    format!("eps-{id}")
}

fn services_map(v6: bool) -> &'static str {
    if v6 {
        "services6"
    } else {
        "services4"
    }
}

fn empty_set(v6: bool) -> &'static str {
    if v6 {
        "empty6"
    } else {
        "empty4"
    }
}

fn host_ports_map(v6: bool) -> &'static str {
    if v6 {
        "hostports6"
    } else {
        "hostports4"
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Concatenates fields, each padded to 4 bytes (the register layout).
fn concat(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p);
        v.resize(v.len().next_multiple_of(4), 0);
    }
    v
}

/// Key of a VIP port in `services4`/`services6`: `vip . proto . port`.
fn service_key(vp: &VipPort) -> Vec<u8> {
    concat(&[
        &ip_bytes(vp.vip),
        &[vp.proto.number()],
        &vp.port.to_be_bytes(),
    ])
}

/// Key of a published host port in `hostports4`/`hostports6`: `proto . port`.
fn host_port_key(proto: L4, port: u16) -> Vec<u8> {
    concat(&[&[proto.number()], &port.to_be_bytes()])
}

/// Element `i` of an `eps-<n>` map: key `i` as numgen writes it (a host-order u32), value
/// `addr . port`.
fn endpoint_elem(i: usize, ep: &SocketAddr) -> (Vec<u8>, Vec<u8>) {
    let key = (i as u32).to_ne_bytes().to_vec();
    let data = concat(&[&ip_bytes(ep.ip()), &ep.port().to_be_bytes()]);
    (key, data)
}

/// One `NFTA_LIST_ELEM` expression: `name` with data written by `f`.
fn expr(list: &mut Attrs<'_>, name: &str, f: impl FnOnce(&mut Attrs<'_>)) {
    list.nest(1, |e| {
        e.str(1, name); // NFTA_EXPR_NAME
        e.nest(2, f); // NFTA_EXPR_DATA
    });
}

fn del_table(batch: &mut Batch) {
    batch.push(
        DELTABLE,
        INET,
        0,
        format!("delete table inet {TABLE}"),
        |a| {
            a.str(1, TABLE);
        },
    );
}

/// Creates the table, the two verdict maps, the nat base chains and their lookup rules.
fn bootstrap(batch: &mut Batch) {
    batch.push(
        msg::NEWTABLE,
        INET,
        NLM_F_CREATE | NLM_F_EXCL,
        format!("create table inet {TABLE}"),
        |a| {
            a.str(1, TABLE).be32(2, 0);
        },
    );
    for v6 in [false, true] {
        let (ty, len) = if v6 {
            ((T_IPV6 << 12) | (T_PROTO << 6) | T_PORT, 24)
        } else {
            ((T_IPV4 << 12) | (T_PROTO << 6) | T_PORT, 12)
        };
        let name = services_map(v6);
        batch.push(
            msg::NEWSET,
            INET,
            NLM_F_CREATE,
            format!("create map inet {TABLE} {name}"),
            |a| {
                // NFTA_SET_TABLE, _NAME, _FLAGS, _KEY_TYPE, _KEY_LEN, _DATA_TYPE, _ID
                a.str(1, TABLE).str(2, name).be32(3, SET_MAP);
                a.be32(4, ty).be32(5, len).be32(6, DATA_VERDICT);
                a.be32(10, u32::from(v6) + 1);
            },
        );
        let name = host_ports_map(v6);
        batch.push(
            msg::NEWSET,
            INET,
            NLM_F_CREATE,
            format!("create map inet {TABLE} {name}"),
            |a| {
                a.str(1, TABLE).str(2, name).be32(3, SET_MAP);
                a.be32(4, (T_PROTO << 6) | T_PORT).be32(5, 8);
                a.be32(6, DATA_VERDICT);
                a.be32(10, u32::from(v6) + 3);
            },
        );
    }
    for v6 in [false, true] {
        let (ty, len) = if v6 {
            ((T_IPV6 << 12) | (T_PROTO << 6) | T_PORT, 24)
        } else {
            ((T_IPV4 << 12) | (T_PROTO << 6) | T_PORT, 12)
        };
        let name = empty_set(v6);
        batch.push(
            msg::NEWSET,
            INET,
            NLM_F_CREATE,
            format!("create set inet {TABLE} {name}"),
            |a| {
                a.str(1, TABLE).str(2, name).be32(3, 0);
                a.be32(4, ty).be32(5, len);
                a.be32(10, u32::from(v6) + 5);
            },
        );
    }
    for (chain, hook) in [("reject-output", 3u32), ("reject-forward", 2)] {
        batch.push(
            msg::NEWCHAIN,
            INET,
            NLM_F_CREATE,
            format!("create chain inet {TABLE} {chain}"),
            |a| {
                a.str(1, TABLE).str(3, chain);
                a.nest(4, |h| {
                    h.be32(1, hook).be32(2, 0);
                });
                a.str(7, "filter");
            },
        );
        for v6 in [false, true] {
            let exprs = dispatch_rule(v6);
            batch.push(
                msg::NEWRULE,
                INET,
                NLM_F_CREATE | NLM_F_APPEND,
                format!("add rule to chain inet {TABLE} {chain}"),
                |a| {
                    a.str(1, TABLE).str(2, chain);
                    a.nest(4, |list| {
                        exprs.iter().for_each(|e| e.encode(list));
                        expr(list, "lookup", |d| {
                            d.str(1, empty_set(v6)).be32(2, REG32_00);
                        });
                        reject(list);
                    });
                },
            );
        }
    }
    for (chain, hook) in [("prerouting", 0u32), ("output", 3)] {
        batch.push(
            msg::NEWCHAIN,
            INET,
            NLM_F_CREATE,
            format!("create chain inet {TABLE} {chain}"),
            |a| {
                a.str(1, TABLE).str(3, chain);
                a.nest(4, |h| {
                    h.be32(1, hook).be32(2, PRIORITY as u32);
                });
                a.str(7, "nat");
            },
        );
        for v6 in [false, true] {
            let exprs = dispatch_rule(v6);
            batch.push(
                msg::NEWRULE,
                INET,
                NLM_F_CREATE | NLM_F_APPEND,
                format!("add rule to chain inet {TABLE} {chain}"),
                |a| {
                    a.str(1, TABLE).str(2, chain);
                    a.nest(4, |list| {
                        exprs.iter().for_each(|e| e.encode(list));
                        expr(list, "lookup", |d| {
                            // NFTA_LOOKUP_SET, _SREG, _DREG (the verdict register: a vmap)
                            d.str(1, services_map(v6))
                                .be32(2, REG32_00)
                                .be32(3, REG_VERDICT);
                        });
                    });
                },
            );
        }
        for v6 in [false, true] {
            let exprs = host_port_rule(v6);
            batch.push(
                msg::NEWRULE,
                INET,
                NLM_F_CREATE | NLM_F_APPEND,
                format!("add host port rule to chain inet {TABLE} {chain}"),
                |a| {
                    a.str(1, TABLE).str(2, chain);
                    a.nest(4, |list| {
                        exprs.iter().for_each(|e| e.encode(list));
                        expr(list, "lookup", |d| {
                            d.str(1, host_ports_map(v6))
                                .be32(2, REG32_00)
                                .be32(3, REG_VERDICT);
                        });
                    });
                },
            );
        }
    }
}

/// `meta nfproto <fam> fib daddr type local` and the key `meta l4proto . th dport` into
/// `REG32_00..`; the vmap lookup follows.
fn host_port_rule(v6: bool) -> Vec<Expr> {
    vec![
        Expr::Meta {
            key: META_NFPROTO,
            dreg: REG_1,
        },
        Expr::Cmp {
            op: CMP_EQ,
            data: vec![if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }],
        },
        Expr::FibDaddrType,
        Expr::Cmp {
            op: CMP_EQ,
            data: RTN_LOCAL.to_ne_bytes().to_vec(),
        },
        Expr::Meta {
            key: META_L4PROTO,
            dreg: REG32_00,
        },
        Expr::Payload {
            base: BASE_TRANSPORT,
            offset: 2,
            len: 2,
            dreg: REG32_00 + 1,
        },
    ]
}

/// `meta nfproto <fam>` and the key `daddr . meta l4proto . th dport` into `REG32_00..`; the
/// vmap lookup follows.
fn dispatch_rule(v6: bool) -> Vec<Expr> {
    let (fam, offset, alen) = if v6 {
        (NFPROTO_IPV6, 24, 16)
    } else {
        (NFPROTO_IPV4, 16, 4)
    };
    vec![
        Expr::Meta {
            key: META_NFPROTO,
            dreg: REG_1,
        },
        Expr::Cmp {
            op: CMP_EQ,
            data: vec![fam],
        },
        Expr::Payload {
            base: BASE_NETWORK,
            offset,
            len: alen,
            dreg: REG32_00,
        },
        Expr::Meta {
            key: META_L4PROTO,
            dreg: REG32_00 + alen / 4,
        },
        Expr::Payload {
            base: BASE_TRANSPORT,
            offset: 2,
            len: 2,
            dreg: REG32_00 + alen / 4 + 1,
        },
    ]
}

/// Creates the endpoint map and chain of a service port and points the verdict map (and the
/// host port map, with a host port) at it.
fn add_service(batch: &mut Batch, id: u32, vp: &VipPort, want: &Applied) {
    let eps = &want.slots;
    let v6 = vp.vip.is_ipv6();
    let map = eps_map(id);
    let chain = svc_chain(id);
    let (ty, len) = if v6 {
        ((T_IPV6 << 6) | T_PORT, 20)
    } else {
        ((T_IPV4 << 6) | T_PORT, 8)
    };
    batch.push(
        msg::NEWSET,
        INET,
        NLM_F_CREATE,
        format!("create map inet {TABLE} {map} ({vp})"),
        |a| {
            a.str(1, TABLE).str(2, &map).be32(3, SET_MAP);
            a.be32(4, T_INTEGER).be32(5, 4).be32(6, ty).be32(7, len);
            a.be32(10, 100 + id);
        },
    );
    add_endpoints(batch, &map, vp, eps);
    batch.push(
        msg::NEWCHAIN,
        INET,
        NLM_F_CREATE,
        format!("create chain inet {TABLE} {chain} ({vp})"),
        |a| {
            a.str(1, TABLE).str(3, &chain);
        },
    );
    add_rule(batch, &chain, &map, vp, eps.len());
    batch.push(
        msg::NEWSETELEM,
        INET,
        NLM_F_CREATE | NLM_F_EXCL,
        format!("add {vp} to map {}", services_map(v6)),
        |a| {
            a.str(1, TABLE).str(2, services_map(v6));
            a.nest(3, |list| {
                list.nest(1, |e| {
                    e.nest(1, |k| {
                        k.bytes(1, &service_key(vp));
                    });
                    // NFTA_SET_ELEM_DATA { NFTA_DATA_VERDICT { CODE, CHAIN } }
                    e.nest(2, |d| {
                        d.nest(2, |v| {
                            v.be32(1, GOTO as u32).str(2, &chain);
                        });
                    });
                });
            });
        },
    );
    if eps.is_empty() {
        set_empty(batch, vp, true);
    }
    if let Some(hp) = want.host_port {
        add_host_port(batch, id, vp, hp);
    }
}

/// Adds `vp` to (or removes it from) the set of service ports refused for lack of endpoints.
fn set_empty(batch: &mut Batch, vp: &VipPort, empty: bool) {
    let set = empty_set(vp.vip.is_ipv6());
    let (ty, flags, verb) = if empty {
        (msg::NEWSETELEM, NLM_F_CREATE, "add")
    } else {
        (msg::DELSETELEM, 0, "delete")
    };
    batch.push(ty, INET, flags, format!("{verb} {vp} in set {set}"), |a| {
        a.str(1, TABLE).str(2, set);
        a.nest(3, |list| {
            list.nest(1, |e| {
                e.nest(1, |k| {
                    k.bytes(1, &service_key(vp));
                });
            });
        });
    });
}

/// Points host port `hp` (the service port's protocol) at the service port's chain.
fn add_host_port(batch: &mut Batch, id: u32, vp: &VipPort, hp: u16) {
    let map = host_ports_map(vp.vip.is_ipv6());
    let chain = svc_chain(id);
    batch.push(
        msg::NEWSETELEM,
        INET,
        NLM_F_CREATE | NLM_F_EXCL,
        format!("add host port {hp}/{} of {vp} to map {map}", vp.proto),
        |a| {
            a.str(1, TABLE).str(2, map);
            a.nest(3, |list| {
                list.nest(1, |e| {
                    e.nest(1, |k| {
                        k.bytes(1, &host_port_key(vp.proto, hp));
                    });
                    e.nest(2, |d| {
                        d.nest(2, |v| {
                            v.be32(1, GOTO as u32).str(2, &chain);
                        });
                    });
                });
            });
        },
    );
}

/// Removes host port `hp` of a service port from the host port map.
fn del_host_port(batch: &mut Batch, vp: &VipPort, hp: u16) {
    let map = host_ports_map(vp.vip.is_ipv6());
    batch.push(
        msg::DELSETELEM,
        INET,
        0,
        format!("delete host port {hp}/{} of {vp} from map {map}", vp.proto),
        |a| {
            a.str(1, TABLE).str(2, map);
            a.nest(3, |list| {
                list.nest(1, |e| {
                    e.nest(1, |k| {
                        k.bytes(1, &host_port_key(vp.proto, hp));
                    });
                });
            });
        },
    );
}

/// Replaces the endpoints and the rule of an existing service port.
fn update_service(
    batch: &mut Batch,
    id: u32,
    vp: &VipPort,
    old: &[SocketAddr],
    eps: &[SocketAddr],
) {
    if old.is_empty() != eps.is_empty() {
        set_empty(batch, vp, eps.is_empty());
    }
    let map = eps_map(id);
    let chain = svc_chain(id);
    flush_chain(batch, &chain, vp);
    batch.push(
        msg::DELSETELEM,
        INET,
        0,
        format!("flush map inet {TABLE} {map} ({vp})"),
        |a| {
            a.str(1, TABLE).str(2, &map);
        },
    );
    add_endpoints(batch, &map, vp, eps);
    add_rule(batch, &chain, &map, vp, eps.len());
}

/// Removes a service port: its verdict map elements, then its chain and endpoint map.
fn del_service(batch: &mut Batch, id: u32, vp: &VipPort, old: &Applied) {
    let map = eps_map(id);
    let chain = svc_chain(id);
    let services = services_map(vp.vip.is_ipv6());
    if let Some(hp) = old.host_port {
        del_host_port(batch, vp, hp);
    }
    if old.slots.is_empty() {
        set_empty(batch, vp, false);
    }
    batch.push(
        msg::DELSETELEM,
        INET,
        0,
        format!("delete {vp} from map {services}"),
        |a| {
            a.str(1, TABLE).str(2, services);
            a.nest(3, |list| {
                list.nest(1, |e| {
                    e.nest(1, |k| {
                        k.bytes(1, &service_key(vp));
                    });
                });
            });
        },
    );
    flush_chain(batch, &chain, vp);
    batch.push(
        DELCHAIN,
        INET,
        0,
        format!("delete chain inet {TABLE} {chain} ({vp})"),
        |a| {
            a.str(1, TABLE).str(3, &chain);
        },
    );
    batch.push(
        DELSET,
        INET,
        0,
        format!("delete map inet {TABLE} {map} ({vp})"),
        |a| {
            a.str(1, TABLE).str(2, &map);
        },
    );
}

fn flush_chain(batch: &mut Batch, chain: &str, vp: &VipPort) {
    batch.push(
        DELRULE,
        INET,
        0,
        format!("flush chain inet {TABLE} {chain} ({vp})"),
        |a| {
            a.str(1, TABLE).str(2, chain);
        },
    );
}

fn add_endpoints(batch: &mut Batch, map: &str, vp: &VipPort, eps: &[SocketAddr]) {
    let elems: Vec<_> = eps
        .iter()
        .enumerate()
        .map(|(i, ep)| endpoint_elem(i, ep))
        .collect();
    for chunk in elems.chunks(ELEMS_PER_MSG) {
        batch.push(
            msg::NEWSETELEM,
            INET,
            NLM_F_CREATE,
            format!("add endpoints of {vp} to map {map}"),
            |a| {
                a.str(1, TABLE).str(2, map);
                a.nest(3, |list| {
                    for (key, data) in chunk {
                        list.nest(1, |e| {
                            e.nest(1, |k| {
                                k.bytes(1, key);
                            });
                            e.nest(2, |d| {
                                d.bytes(1, data);
                            });
                        });
                    }
                });
            },
        );
    }
}

/// The rule of `svc-<n>`: `dnat to numgen random mod N map @eps-<n>`; none when there is no
/// endpoint (the port is in the `empty` set instead, see [`set_empty`]).
fn add_rule(batch: &mut Batch, chain: &str, map: &str, vp: &VipPort, n: usize) {
    if n == 0 {
        return;
    }
    let v6 = vp.vip.is_ipv6();
    batch.push(
        msg::NEWRULE,
        INET,
        NLM_F_CREATE | NLM_F_APPEND,
        format!("add rule to chain inet {TABLE} {chain} ({vp})"),
        |a| {
            a.str(1, TABLE).str(2, chain);
            a.nest(4, |list| encode_rule(list, map, v6, n));
        },
    );
}

/// `reject with icmpx port-unreachable`.
fn reject(list: &mut Attrs<'_>) {
    expr(list, "reject", |d| {
        // NFTA_REJECT_TYPE: NFT_REJECT_ICMPX_UNREACH, NFTA_REJECT_ICMP_CODE:
        // NFT_REJECT_ICMPX_PORT_UNREACH
        d.be32(1, 2).bytes(2, &[1]);
    });
}

fn encode_rule(list: &mut Attrs<'_>, map: &str, v6: bool, n: usize) {
    expr(list, "numgen", |d| {
        // NFTA_NG_DREG, _MODULUS, _TYPE (NFT_NG_RANDOM), _OFFSET
        d.be32(1, REG32_00).be32(2, n as u32).be32(3, 1).be32(4, 0);
    });
    expr(list, "lookup", |d| {
        d.str(1, map).be32(2, REG32_00).be32(3, REG_1);
    });
    Expr::Dnat {
        family: if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 },
        proto_reg: REG32_00 + if v6 { 4 } else { 1 },
    }
    .encode(list);
}

#[cfg(test)]
mod tests {
    use super::super::nfnl::{attr, attr_be32, attrs};
    use super::*;

    fn vp(s: &str) -> VipPort {
        let a: SocketAddr = s.parse().unwrap();
        VipPort {
            vip: a.ip(),
            proto: L4::Tcp,
            port: a.port(),
        }
    }

    #[test]
    fn keys_and_elements_follow_the_register_layout() {
        assert_eq!(
            service_key(&vp("10.96.0.5:80")),
            vec![10, 96, 0, 5, 6, 0, 0, 0, 0, 80, 0, 0]
        );
        assert_eq!(service_key(&vp("[fd00::1]:443")).len(), 24);
        let (k, d) = endpoint_elem(2, &"10.77.1.2:8080".parse().unwrap());
        assert_eq!(k, 2u32.to_ne_bytes());
        assert_eq!(d, vec![10, 77, 1, 2, 0x1f, 0x90, 0, 0]);
    }

    fn names(buf: &[u8]) -> Vec<String> {
        attrs(buf)
            .filter_map(|(_, e)| attr(e, 1))
            .map(|n| String::from_utf8_lossy(&n[..n.len() - 1]).into_owned())
            .collect()
    }

    #[test]
    fn service_rule_is_numgen_lookup_dnat() {
        let mut buf = Vec::new();
        encode_rule(&mut Attrs::new(&mut buf), "eps-3", false, 3);
        assert_eq!(names(&buf), ["numgen", "lookup", "nat"]);
        let ng = attrs(&buf).next().and_then(|(_, e)| attr(e, 2)).unwrap();
        assert_eq!(attr_be32(ng, 2), Some(3)); // modulus
        assert_eq!(attr_be32(ng, 3), Some(1)); // random
        let nat = attrs(&buf).nth(2).and_then(|(_, e)| attr(e, 2)).unwrap();
        assert_eq!(attr_be32(nat, 5), Some(REG32_00 + 1));
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn slots_sort_dedup_and_drop_other_family() {
        let eps = [
            (sa("10.0.0.2:1"), 1),
            (sa("[fd00::2]:1"), 1),
            (sa("10.0.0.1:1"), 1),
            (sa("10.0.0.2:1"), 1),
        ];
        assert_eq!(
            slots(&vp("10.96.0.5:80"), &eps),
            [sa("10.0.0.1:1"), sa("10.0.0.2:1")]
        );
    }

    #[test]
    fn slots_follow_weights() {
        let v = vp("10.96.0.5:80");
        // Divided by the gcd: 20/40 -> 1/2.
        let s = slots(&v, &[(sa("10.0.0.1:1"), 20), (sa("10.0.0.2:1"), 40)]);
        assert_eq!(s, [sa("10.0.0.1:1"), sa("10.0.0.2:1"), sa("10.0.0.2:1")]);
        // Weight 0 drains; all weights 0 means no slot (reject).
        let s = slots(&v, &[(sa("10.0.0.1:1"), 0), (sa("10.0.0.2:1"), 3)]);
        assert_eq!(s, [sa("10.0.0.2:1")]);
        assert!(slots(&v, &[(sa("10.0.0.1:1"), 0)]).is_empty());
        // Scaled down to at most MAX_SLOTS, every endpoint keeps a slot.
        let s = slots(&v, &[(sa("10.0.0.1:1"), 1), (sa("10.0.0.2:1"), 100_000)]);
        assert!(s.len() <= MAX_SLOTS as usize, "{}", s.len());
        assert_eq!(s.iter().filter(|e| **e == sa("10.0.0.1:1")).count(), 1);
        assert!(s.iter().filter(|e| **e == sa("10.0.0.2:1")).count() >= 250);
    }

    #[test]
    fn a_host_port_is_kept_by_the_first_service_port_claiming_it() {
        let mut d = Desired::new();
        let t = |hp| Target {
            endpoints: vec![(sa("10.0.0.1:1"), 1)],
            host_port: Some(hp),
        };
        d.insert(vp("10.96.0.5:80"), t(8080));
        d.insert(vp("10.96.0.6:80"), t(8080));
        d.insert(vp("[fd00::6]:80"), t(8080));
        let n = normalize(&d);
        assert_eq!(n[&vp("10.96.0.5:80")].host_port, Some(8080));
        assert_eq!(n[&vp("10.96.0.6:80")].host_port, None);
        // The other family has its own host port map.
        assert_eq!(n[&vp("[fd00::6]:80")].host_port, Some(8080));
        assert_eq!(
            host_port_key(L4::Udp, 8080),
            [17, 0, 0, 0, 0x1f, 0x90, 0, 0]
        );
    }

    #[test]
    fn batches_create_update_and_delete_in_dependency_order() {
        let v = vp("10.96.0.5:80");
        let want = Applied {
            slots: vec![sa("10.0.0.1:1")],
            host_port: Some(8080),
        };
        let mut b = Batch::default();
        add_service(&mut b, 7, &v, &want);
        let ops: Vec<_> = (0..b.len()).map(|i| b.op(i).to_string()).collect();
        assert!(ops[0].starts_with("create map inet netd-vip eps-7"));
        assert!(ops[1].starts_with("add endpoints"));
        assert!(ops[2].starts_with("create chain inet netd-vip svc-7"));
        assert!(ops[3].starts_with("add rule to chain inet netd-vip svc-7"));
        assert!(ops[4].starts_with("add 10.96.0.5:80/tcp to map services4"));
        assert!(ops[5].starts_with("add host port 8080/tcp of 10.96.0.5:80/tcp to map hostports4"));

        let mut b = Batch::default();
        del_service(&mut b, 7, &v, &want);
        let ops: Vec<_> = (0..b.len()).map(|i| b.op(i).to_string()).collect();
        assert!(ops[0].starts_with("delete host port 8080/tcp"));
        assert!(ops[1].starts_with("delete 10.96.0.5:80/tcp from map services4"));
        assert!(ops[2].starts_with("flush chain"));
        assert!(ops[3].starts_with("delete chain"));
        assert!(ops[4].starts_with("delete map"));

        // No endpoints: no element message, no rule; the port goes into the empty set,
        // and leaves it when endpoints come (and when the service port goes).
        let mut b = Batch::default();
        let none = Applied {
            slots: vec![],
            host_port: None,
        };
        add_service(&mut b, 8, &v, &none);
        let ops: Vec<_> = (0..b.len()).map(|i| b.op(i).to_string()).collect();
        assert_eq!(ops.len(), 4, "{ops:?}");
        assert!(
            ops[3].starts_with("add 10.96.0.5:80/tcp in set empty4"),
            "{ops:?}"
        );
        let mut b = Batch::default();
        update_service(&mut b, 8, &v, &none.slots, &want.slots);
        assert!(b
            .op(0)
            .to_string()
            .starts_with("delete 10.96.0.5:80/tcp in set empty4"));
        let mut b = Batch::default();
        del_service(&mut b, 8, &v, &none);
        assert!(b
            .op(0)
            .to_string()
            .starts_with("delete 10.96.0.5:80/tcp in set empty4"));
    }
}
