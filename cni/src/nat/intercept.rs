//! Transparent interception for the mesh sidecar: `table inet netd-mesh` inside a container's
//! network namespace, and [`original_dst`] for the sidecar to recover where a redirected
//! connection was going.
//!
//! Owns the table's layout, its installation (one atomic nf_tables batch, written through a
//! netlink socket opened by a thread that entered the namespace), its removal and its check.
//! It does not run the sidecar, choose its ports or know about the registry (netd's `mesh`
//! module does). Nothing here executes `nft`.
//!
//! ```text
//! table inet netd-mesh {                                   # comment: fingerprint of the spec
//!   set out-ports { type inet_service }                     # excluded outbound ports
//!   set in-ports  { type inet_service }                     # excluded inbound ports
//!   set out-nets4 { type ipv4_addr; flags interval }        # excluded destinations
//!   set out-nets6 { type ipv6_addr; flags interval }
//!   set addrs4 { type ipv4_addr }  set addrs6 { type ipv6_addr }   # the container's addresses
//!   chain output { type nat hook output priority -100;
//!     meta mark 0x4e44 return                               # the sidecar's own sockets
//!     meta skuid <uid> return                               # (optional)
//!     udp dport 53 redirect to :15053; tcp dport 53 redirect to :15053   # (optional)
//!     meta l4proto != tcp return
//!     ip daddr 127.0.0.0/8 return; ip6 daddr ::1 return
//!     fib daddr type local return                           # the container talking to itself
//!     ip daddr @out-nets4 return; ip6 daddr @out-nets6 return
//!     tcp dport @out-ports return
//!     redirect to :15001 }
//!   chain prerouting { type nat hook prerouting priority -100;
//!     meta l4proto != tcp return
//!     tcp dport @in-ports return
//!     ip daddr @addrs4 redirect to :15006; ip6 daddr @addrs6 redirect to :15006 }
//!     # (no addresses given: fib daddr type local redirect to :15006)
//! }
//! ```
//!
//! Consequences the sidecar must honour: an IPv4 connection is redirected to `127.0.0.1`, an
//! IPv6 one to `::1` (outbound) or to the incoming interface's first address (inbound), so
//! to intercept IPv6 the outbound listener must also listen on `[::1]:<port>` and the inbound
//! one on `[::]:<port>`. Every socket the sidecar opens towards an upstream (and its DNS
//! forwarder's) must carry `SO_MARK` [`DEFAULT_MARK`], else its traffic loops back into it.
//! Only the first packet of a connection sees nat chains: installing or removing the table
//! never disturbs established connections.

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd};

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL};

use super::elements::{interval, parse_elems, Elem};
use super::expr::*;
use super::nfnl::{msg, Batch, Socket};
use crate::netns::NetNs;

#[cfg(test)]
mod tests;

/// Name of the interception table (family inet), in the container's namespace.
pub const TABLE: &str = "netd-mesh";
/// The socket mark (`SO_MARK`) of the sidecar's own sockets, which are never intercepted.
pub const DEFAULT_MARK: u32 = 0x4e44;
/// The sidecar's outbound listener port (`--outbound 127.0.0.1:15001`).
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
/// The sidecar's inbound listener port (`--inbound 0.0.0.0:15006`).
pub const DEFAULT_INBOUND_PORT: u16 = 15006;
/// The sidecar's DNS port (`--dns 127.0.0.1:15053`).
pub const DEFAULT_DNS_PORT: u16 = 15053;
/// Priority of both nat base chains (`dstnat`).
pub const PRIORITY: i32 = -100;

const INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const TCP: u8 = 6;
const UDP: u8 = 17;
/// `RTN_LOCAL`, as `fib daddr type` reports it.
const RTN_LOCAL: u32 = 2;
/// `NFT_SET_INTERVAL`.
const SET_INTERVAL: u32 = 0x4;
/// `NFTA_TABLE_USERDATA`.
const TABLE_USERDATA: u16 = 6;
/// Sockopt of the pre-NAT destination (`SO_ORIGINAL_DST`, `IP6T_SO_ORIGINAL_DST`).
const SO_ORIGINAL_DST: libc::c_int = 80;

/// What to intercept and where to send it. [`Default`] is the sidecar contract's ports and
/// mark, no exclusions, and inbound redirection for any local address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterceptSpec {
    /// Outbound TCP goes to `127.0.0.1:<port>` / `[::1]:<port>`.
    pub outbound_port: u16,
    /// Inbound TCP to the container goes to this port (on the incoming address).
    pub inbound_port: u16,
    /// DNS (UDP and TCP to port 53) from the container goes to this port on loopback; `None`
    /// leaves DNS alone.
    pub dns_port: Option<u16>,
    /// Packets with this mark (`SO_MARK` of the sidecar's sockets) are never intercepted.
    pub mark: u32,
    /// Sockets of this user id are never intercepted either (optional second safety net when
    /// the sidecar runs as its own user).
    pub bypass_uid: Option<u32>,
    /// The container's addresses: inbound redirection applies to connections to these. Empty:
    /// to any local address (`fib daddr type local`).
    pub addresses: Vec<IpAddr>,
    /// Outbound destination ports left alone (e.g. 22).
    pub exclude_outbound_ports: Vec<u16>,
    /// Inbound destination ports left alone (e.g. a health-check port).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destinations left alone (both families; overlapping entries are merged).
    pub exclude_cidrs: Vec<IpNet>,
}

impl Default for InterceptSpec {
    fn default() -> Self {
        Self {
            outbound_port: DEFAULT_OUTBOUND_PORT,
            inbound_port: DEFAULT_INBOUND_PORT,
            dns_port: Some(DEFAULT_DNS_PORT),
            mark: DEFAULT_MARK,
            bypass_uid: None,
            addresses: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_inbound_ports: Vec::new(),
            exclude_cidrs: Vec::new(),
        }
    }
}

/// Errors of interception programming.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    /// The namespace could not be entered.
    #[error("cannot enter network namespace {path}: {source}")]
    Netns {
        /// The namespace's path.
        path: String,
        /// Cause.
        source: io::Error,
    },
    /// The netlink socket failed.
    #[error("nf_tables socket: {0}")]
    Io(#[from] io::Error),
    /// The kernel refused an operation.
    #[error("nf_tables: {op} failed: {}", io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// The operation (or "commit the transaction").
        op: String,
        /// errno.
        errno: i32,
    },
    /// The spec cannot be installed.
    #[error("{reason}")]
    Invalid {
        /// Why.
        reason: String,
    },
    /// [`check`]: the namespace's table differs from the spec.
    #[error("{what}")]
    Mismatch {
        /// The first difference found.
        what: String,
    },
}

/// Programs interception in `netns` as `spec` says: one atomic batch that replaces any earlier
/// `netd-mesh` table. Idempotent: when the table already matches the spec ([`check`]),
/// nothing is written and `Ok(false)` is returned; `Ok(true)` means the table was (re)written.
pub fn install(netns: &NetNs, spec: &InterceptSpec) -> Result<bool, InterceptError> {
    let layout = Layout::of(spec)?;
    let mut sock = open(netns)?;
    if verify(&mut sock, &layout).is_ok() {
        return Ok(false);
    }
    let mut attempt = 0;
    loop {
        let mut batch = Batch::default();
        if table_exists(&mut sock)? {
            del_table(&mut batch);
        }
        layout.bootstrap(&mut batch);
        match send(&mut sock, &batch) {
            // Another installer created the table between the look-up and the batch.
            Err(InterceptError::Kernel { errno, .. }) if errno == libc::EEXIST && attempt < 3 => {
                attempt += 1;
            }
            Err(e) => return Err(e),
            Ok(()) => return Ok(true),
        }
    }
}

/// Deletes the `netd-mesh` table of `netns`. `Ok(false)` when there was none.
pub fn remove(netns: &NetNs) -> Result<bool, InterceptError> {
    let mut sock = open(netns)?;
    if !table_exists(&mut sock)? {
        return Ok(false);
    }
    let mut batch = Batch::default();
    del_table(&mut batch);
    match send(&mut sock, &batch) {
        Err(InterceptError::Kernel { errno, .. }) if errno == libc::ENOENT => Ok(false),
        Err(e) => Err(e),
        Ok(()) => Ok(true),
    }
}

/// Fails with [`InterceptError::Mismatch`], naming the first difference, unless `netns` holds
/// the table that [`install`] writes for `spec`: the same settings (a fingerprint kept in the
/// table's comment), every rule in both chains, and exactly the spec's set elements.
pub fn check(netns: &NetNs, spec: &InterceptSpec) -> Result<(), InterceptError> {
    let layout = Layout::of(spec)?;
    let mut sock = open(netns)?;
    verify(&mut sock, &layout)
}

/// The destination a redirected (or DNATed) TCP connection had before nf_tables rewrote it:
/// `SO_ORIGINAL_DST` for IPv4 (also on an IPv6 socket that accepted an IPv4 connection as
/// `::ffff:a.b.c.d`), `IP6T_SO_ORIGINAL_DST` for IPv6. Works on any accepted socket (std or
/// tokio `TcpStream`); fails with `ENOENT` when the connection was not translated.
pub fn original_dst(sock: &impl AsFd) -> io::Result<SocketAddr> {
    let fd = sock.as_fd().as_raw_fd();
    // SAFETY: sockaddr_storage is plain data, valid when zeroed.
    let mut local: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket borrowed from `sock`; `local` and `len` describe a
    // buffer large enough for any address.
    let rc = unsafe { libc::getsockname(fd, (&raw mut local).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let native_v6 = i32::from(local.ss_family) == libc::AF_INET6 && {
        // SAFETY: the family says the storage holds a sockaddr_in6.
        let sin6 = unsafe { &*(&raw const local).cast::<libc::sockaddr_in6>() };
        Ipv6Addr::from(sin6.sin6_addr.s6_addr)
            .to_ipv4_mapped()
            .is_none()
    };
    if native_v6 {
        // SAFETY: sockaddr_in6 is plain data, valid when zeroed.
        let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        getsockopt(fd, libc::IPPROTO_IPV6, &mut sin6)?;
        Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(sin6.sin6_addr.s6_addr),
            u16::from_be(sin6.sin6_port),
            sin6.sin6_flowinfo,
            sin6.sin6_scope_id,
        )))
    } else {
        // SAFETY: sockaddr_in is plain data, valid when zeroed.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        getsockopt(fd, libc::SOL_IP, &mut sin)?;
        Ok(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
            u16::from_be(sin.sin_port),
        )))
    }
}

/// `getsockopt(fd, level, SO_ORIGINAL_DST)` into `out` (a sockaddr of the level's family).
fn getsockopt<T>(fd: libc::c_int, level: libc::c_int, out: &mut T) -> io::Result<()> {
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `out` is a valid, writable sockaddr of `len` bytes; the kernel writes at most
    // `len` bytes into it.
    let rc =
        unsafe { libc::getsockopt(fd, level, SO_ORIGINAL_DST, (out as *mut T).cast(), &mut len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens a netfilter socket bound to `netns` (from a thread inside it).
fn open(netns: &NetNs) -> Result<Socket, InterceptError> {
    let sock = netns
        .run(Socket::open)
        .map_err(|source| InterceptError::Netns {
            path: netns.path().display().to_string(),
            source,
        })?;
    Ok(sock?)
}

fn table_exists(sock: &mut Socket) -> Result<bool, InterceptError> {
    match table_userdata(sock) {
        Ok(_) => Ok(true),
        Err(libc::ENOENT) => Ok(false),
        Err(errno) => Err(InterceptError::Kernel {
            op: format!("look up table inet {TABLE}"),
            errno,
        }),
    }
}

/// The table's `NFTA_TABLE_USERDATA` (empty when it has none); `Err(ENOENT)` without a table.
fn table_userdata(sock: &mut Socket) -> Result<Vec<u8>, i32> {
    let replies = sock.query(msg::GETTABLE, INET, false, |a| {
        a.str(1, TABLE); // NFTA_TABLE_NAME
    })?;
    Ok(replies
        .iter()
        .find_map(|r| super::nfnl::attr(r, TABLE_USERDATA))
        .map(<[u8]>::to_vec)
        .unwrap_or_default())
}

fn send(sock: &mut Socket, batch: &Batch) -> Result<(), InterceptError> {
    let out = sock.send_batch(batch)?;
    match out.first_error() {
        None => Ok(()),
        Some((i, errno)) => Err(InterceptError::Kernel {
            op: i.map_or_else(
                || "commit the transaction".to_owned(),
                |i| batch.op(i).to_owned(),
            ),
            errno,
        }),
    }
}

fn del_table(batch: &mut Batch) {
    batch.push(
        msg::DELTABLE,
        INET,
        0,
        format!("delete table inet {TABLE}"),
        |a| {
            a.str(1, TABLE);
        },
    );
}

/// Compares the table in the socket's namespace with `layout`.
fn verify(sock: &mut Socket, layout: &Layout) -> Result<(), InterceptError> {
    let mismatch = |what: String| InterceptError::Mismatch { what };
    let kernel = |op: String| move |errno| InterceptError::Kernel { op, errno };
    let userdata = match table_userdata(sock) {
        Ok(u) => u,
        Err(libc::ENOENT) => return Err(mismatch(format!("table inet {TABLE} is missing"))),
        Err(errno) => return Err(kernel(format!("look up table inet {TABLE}"))(errno)),
    };
    if userdata != layout.userdata() {
        return Err(mismatch(format!(
            "table inet {TABLE} was installed for other settings"
        )));
    }
    let rules = sock
        .query(msg::GETRULE, INET, true, |a| {
            a.str(1, TABLE); // NFTA_RULE_TABLE
        })
        .map_err(kernel(format!("list the rules of table inet {TABLE}")))?;
    for chain in ["output", "prerouting"] {
        let have = rules
            .iter()
            .filter(|r| super::nfnl::attr(r, 2) == Some(cstr(chain).as_slice())) // NFTA_RULE_CHAIN
            .count();
        let want = layout.rules.iter().filter(|(c, _)| *c == chain).count();
        if have != want {
            return Err(mismatch(format!(
                "chain inet {TABLE} {chain} has {have} rules, expected {want}"
            )));
        }
    }
    for set in &layout.sets {
        let replies = sock
            .query(msg::GETSETELEM, INET, true, |a| {
                a.str(1, TABLE).str(2, set.name); // NFTA_SET_ELEM_LIST_TABLE, _SET
            })
            .map_err(kernel(format!("list set inet {TABLE} {}", set.name)))?;
        let mut have: Vec<(Vec<u8>, bool)> = replies
            .iter()
            .flat_map(|r| parse_elems(r))
            .map(|e| (e.key, e.end))
            .collect();
        let mut want: Vec<(Vec<u8>, bool)> =
            set.elems.iter().map(|e| (e.key.clone(), e.end)).collect();
        have.sort();
        want.sort();
        if have != want {
            return Err(mismatch(format!(
                "set inet {TABLE} {} holds {} elements, expected {}",
                set.name,
                have.len(),
                want.len()
            )));
        }
    }
    Ok(())
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// A named set of the table and its elements.
#[derive(Debug)]
struct SetSpec {
    name: &'static str,
    /// nft's datatype id (display only) and the key length.
    key_type: u32,
    key_len: u32,
    interval: bool,
    elems: Vec<Elem>,
}

/// Everything `install` writes for one spec.
#[derive(Debug)]
struct Layout {
    sets: Vec<SetSpec>,
    rules: Vec<(&'static str, Vec<Expr>)>,
    fingerprint: String,
}

impl Layout {
    fn of(spec: &InterceptSpec) -> Result<Self, InterceptError> {
        let spec = normalize(spec)?;
        let (nets4, nets6): (Vec<IpNet>, Vec<IpNet>) = spec
            .exclude_cidrs
            .iter()
            .partition(|n| matches!(n, IpNet::V4(_)));
        let ports = |ps: &[u16]| -> Vec<Elem> {
            ps.iter()
                .map(|p| Elem {
                    key: p.to_be_bytes().to_vec(),
                    data: None,
                    end: false,
                })
                .collect()
        };
        let addrs = |v6: bool| -> Vec<Elem> {
            spec.addresses
                .iter()
                .filter(|a| a.is_ipv6() == v6)
                .map(|a| Elem {
                    key: ip_bytes(*a),
                    data: None,
                    end: false,
                })
                .collect()
        };
        let sets = vec![
            SetSpec {
                name: "out-ports",
                key_type: 13,
                key_len: 2,
                interval: false,
                elems: ports(&spec.exclude_outbound_ports),
            },
            SetSpec {
                name: "in-ports",
                key_type: 13,
                key_len: 2,
                interval: false,
                elems: ports(&spec.exclude_inbound_ports),
            },
            SetSpec {
                name: "out-nets4",
                key_type: 7,
                key_len: 4,
                interval: true,
                elems: nets4.into_iter().flat_map(interval).collect(),
            },
            SetSpec {
                name: "out-nets6",
                key_type: 8,
                key_len: 16,
                interval: true,
                elems: nets6.into_iter().flat_map(interval).collect(),
            },
            SetSpec {
                name: "addrs4",
                key_type: 7,
                key_len: 4,
                interval: false,
                elems: addrs(false),
            },
            SetSpec {
                name: "addrs6",
                key_type: 8,
                key_len: 16,
                interval: false,
                elems: addrs(true),
            },
        ];
        Ok(Layout {
            sets,
            rules: rules(&spec),
            fingerprint: fingerprint(&spec),
        })
    }

    /// The table comment, in nft's userdata format (`NFTNL_UDATA_TABLE_COMMENT`, length,
    /// NUL-terminated text), so `nft list` shows it as `comment "..."`.
    fn userdata(&self) -> Vec<u8> {
        let text = cstr(&self.fingerprint);
        let mut v = vec![0, text.len() as u8];
        v.extend_from_slice(&text);
        v
    }

    /// Appends the creation of the whole table (`NLM_F_EXCL` on the table).
    fn bootstrap(&self, batch: &mut Batch) {
        let userdata = self.userdata();
        batch.push(
            msg::NEWTABLE,
            INET,
            NLM_F_CREATE | NLM_F_EXCL,
            format!("create table inet {TABLE}"),
            |a| {
                a.str(1, TABLE).be32(2, 0).bytes(TABLE_USERDATA, &userdata);
            },
        );
        for (id, s) in self.sets.iter().enumerate() {
            batch.push(
                msg::NEWSET,
                INET,
                NLM_F_CREATE,
                format!("create set inet {TABLE} {}", s.name),
                |a| {
                    // NFTA_SET_TABLE, _NAME, _FLAGS, _KEY_TYPE, _KEY_LEN, _ID
                    let flags = if s.interval { SET_INTERVAL } else { 0 };
                    a.str(1, TABLE).str(2, s.name).be32(3, flags);
                    a.be32(4, s.key_type).be32(5, s.key_len);
                    a.be32(10, id as u32 + 1);
                },
            );
            if s.elems.is_empty() {
                continue;
            }
            batch.push(
                msg::NEWSETELEM,
                INET,
                NLM_F_CREATE,
                format!("add elements to set inet {TABLE} {}", s.name),
                |a| {
                    a.str(1, TABLE).str(2, s.name);
                    a.nest(3, |list| {
                        for e in &s.elems {
                            list.nest(1, |el| {
                                el.nest(1, |k| {
                                    k.bytes(1, &e.key);
                                });
                                if e.end {
                                    el.be32(3, 1); // NFT_SET_ELEM_INTERVAL_END
                                }
                            });
                        }
                    });
                },
            );
        }
        for (chain, hook) in [("output", 3u32), ("prerouting", 0)] {
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
        }
        for (chain, exprs) in &self.rules {
            batch.push(
                msg::NEWRULE,
                INET,
                NLM_F_CREATE | NLM_F_APPEND,
                format!("add rule to chain inet {TABLE} {chain}"),
                |a| {
                    a.str(1, TABLE).str(2, chain);
                    a.nest(4, |list| exprs.iter().for_each(|e| e.encode(list)));
                },
            );
        }
    }
}

/// Sorted, deduplicated lists and merged CIDRs, so equal settings give equal tables (and
/// fingerprints), and overlapping intervals never reach the kernel.
fn normalize(spec: &InterceptSpec) -> Result<InterceptSpec, InterceptError> {
    let ports = [
        ("outbound", spec.outbound_port),
        ("inbound", spec.inbound_port),
        ("DNS", spec.dns_port.unwrap_or(1)),
    ];
    if let Some((what, _)) = ports.iter().find(|(_, p)| *p == 0) {
        return Err(InterceptError::Invalid {
            reason: format!("the sidecar's {what} port must not be 0"),
        });
    }
    let sorted = |v: &[u16]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v.dedup();
        v
    };
    let mut addresses: Vec<IpAddr> = spec
        .addresses
        .iter()
        .map(|a| match a {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(*a, IpAddr::V4),
            IpAddr::V4(_) => *a,
        })
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    let cidrs: Vec<IpNet> = spec.exclude_cidrs.iter().map(IpNet::trunc).collect();
    Ok(InterceptSpec {
        addresses,
        exclude_outbound_ports: sorted(&spec.exclude_outbound_ports),
        exclude_inbound_ports: sorted(&spec.exclude_inbound_ports),
        exclude_cidrs: IpNet::aggregate(&cidrs),
        ..spec.clone()
    })
}

/// A stable text naming the settings (FNV-1a of their canonical form).
fn fingerprint(spec: &InterceptSpec) -> String {
    let mut text = String::new();
    let _ = write!(
        text,
        "v1 out={} in={} dns={:?} mark={:#x} uid={:?} addrs={:?} xout={:?} xin={:?} xnets=",
        spec.outbound_port,
        spec.inbound_port,
        spec.dns_port,
        spec.mark,
        spec.bypass_uid,
        spec.addresses,
        spec.exclude_outbound_ports,
        spec.exclude_inbound_ports,
    );
    for n in &spec.exclude_cidrs {
        let _ = write!(text, "{n},");
    }
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("netd-mesh {hash:016x}")
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn nfproto(p: u8) -> [Expr; 2] {
    [
        Expr::Meta {
            key: META_NFPROTO,
            dreg: REG_1,
        },
        Expr::Cmp {
            op: CMP_EQ,
            data: vec![p],
        },
    ]
}

fn l4proto(op: u32, p: u8) -> [Expr; 2] {
    [
        Expr::Meta {
            key: META_L4PROTO,
            dreg: REG_1,
        },
        Expr::Cmp { op, data: vec![p] },
    ]
}

fn dport() -> Expr {
    Expr::Payload {
        base: BASE_TRANSPORT,
        offset: 2,
        len: 2,
        dreg: REG_1,
    }
}

fn redirect(port: u16) -> [Expr; 2] {
    [
        Expr::Value {
            dreg: REG_1,
            data: port.to_be_bytes().to_vec(),
        },
        Expr::Redirect { port_reg: REG_1 },
    ]
}

fn lookup(set: &'static str) -> Expr {
    Expr::Lookup {
        set,
        sreg: REG_1,
        dreg: None,
        invert: false,
    }
}

/// `ip daddr` (or `ip6 daddr`) into `NFT_REG_1`, after the family match.
fn daddr(v6: bool) -> Vec<Expr> {
    let (fam, offset, len) = if v6 {
        (NFPROTO_IPV6, 24, 16)
    } else {
        (NFPROTO_IPV4, 16, 4)
    };
    let mut e = nfproto(fam).to_vec();
    e.push(Expr::Payload {
        base: BASE_NETWORK,
        offset,
        len,
        dreg: REG_1,
    });
    e
}

fn fib_local() -> [Expr; 2] {
    [
        Expr::FibDaddrType,
        Expr::Cmp {
            op: CMP_EQ,
            data: RTN_LOCAL.to_ne_bytes().to_vec(),
        },
    ]
}

const RETURN: Expr = Expr::Verdict(Verdict::Return);

/// Both chains' rules, in order (see the module documentation).
fn rules(spec: &InterceptSpec) -> Vec<(&'static str, Vec<Expr>)> {
    let mut out: Vec<Vec<Expr>> = Vec::new();
    out.push(vec![
        Expr::Meta {
            key: META_MARK,
            dreg: REG_1,
        },
        Expr::Cmp {
            op: CMP_EQ,
            data: spec.mark.to_ne_bytes().to_vec(),
        },
        RETURN,
    ]);
    if let Some(uid) = spec.bypass_uid {
        out.push(vec![
            Expr::Meta {
                key: META_SKUID,
                dreg: REG_1,
            },
            Expr::Cmp {
                op: CMP_EQ,
                data: uid.to_ne_bytes().to_vec(),
            },
            RETURN,
        ]);
    }
    if let Some(dns) = spec.dns_port {
        for proto in [UDP, TCP] {
            let dst53 = Expr::Cmp {
                op: CMP_EQ,
                data: 53u16.to_be_bytes().to_vec(),
            };
            out.push(
                [
                    &l4proto(CMP_EQ, proto)[..],
                    &[dport(), dst53],
                    &redirect(dns),
                ]
                .concat(),
            );
        }
    }
    out.push([&l4proto(CMP_NEQ, TCP)[..], &[RETURN]].concat());
    let mut loop4 = daddr(false);
    loop4.pop();
    loop4.extend([
        Expr::Payload {
            base: BASE_NETWORK,
            offset: 16,
            len: 1,
            dreg: REG_1,
        },
        Expr::Cmp {
            op: CMP_EQ,
            data: vec![127],
        },
        RETURN,
    ]);
    out.push(loop4);
    let mut loop6 = daddr(true);
    loop6.extend([
        Expr::Cmp {
            op: CMP_EQ,
            data: Ipv6Addr::LOCALHOST.octets().to_vec(),
        },
        RETURN,
    ]);
    out.push(loop6);
    out.push([&fib_local()[..], &[RETURN]].concat());
    out.push([daddr(false), vec![lookup("out-nets4"), RETURN]].concat());
    out.push([daddr(true), vec![lookup("out-nets6"), RETURN]].concat());
    out.push(vec![dport(), lookup("out-ports"), RETURN]);
    out.push(redirect(spec.outbound_port).to_vec());
    let mut rules: Vec<(&'static str, Vec<Expr>)> =
        out.into_iter().map(|r| ("output", r)).collect();

    let mut pre: Vec<Vec<Expr>> = vec![
        [&l4proto(CMP_NEQ, TCP)[..], &[RETURN]].concat(),
        vec![dport(), lookup("in-ports"), RETURN],
    ];
    if spec.addresses.is_empty() {
        pre.push([&fib_local()[..], &redirect(spec.inbound_port)].concat());
    } else {
        for (v6, set) in [(false, "addrs4"), (true, "addrs6")] {
            if spec.addresses.iter().any(|a| a.is_ipv6() == v6) {
                pre.push(
                    [
                        daddr(v6),
                        vec![lookup(set)],
                        redirect(spec.inbound_port).to_vec(),
                    ]
                    .concat(),
                );
            }
        }
    }
    rules.extend(pre.into_iter().map(|r| ("prerouting", r)));
    rules
}
