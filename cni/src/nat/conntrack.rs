//! Forgetting the connection-tracking entries of port mappings, over ctnetlink.
//!
//! NAT is decided on a flow's first packet and remembered in its conntrack entry: as long as a
//! peer keeps sending from the same source port (UDP clients, DNS resolvers, game and VoIP
//! traffic), its packets follow the entry, not the port maps. So an entry made while a mapping
//! pointed at a removed container keeps sending the flow there, and an entry made before a
//! mapping existed keeps the flow un-translated. Like the reference `portmap` plugin, netd
//! deletes such entries:
//!
//! - when mappings are removed: every entry whose reply comes from the container's address and
//!   port over the mapped protocol ([`Stale::FromContainer`]). These are exactly the flows the
//!   mapping translated (DNAT makes the reply source the container's address and port), and
//!   also the container's direct flows on that port, which are dead with it. Matching the
//!   original destination port instead would also cut the host's own, unrelated flows to that
//!   port number elsewhere;
//! - right after UDP mappings are added: every UDP entry whose original destination is the
//!   host port (on the mapping's host address, if it has one) ([`Stale::ToHostPort`]).
//!
//! How: one `IPCTNL_MSG_CT_GET` dump per address family (the kernel filters the dump by the
//! `nfgenmsg` family), matched here, then one `IPCTNL_MSG_CT_DELETE` per matching entry by its
//! original tuple, zone and id (so a new entry that reuses the tuple is left alone). Entries
//! that vanish in between (`ENOENT`) are fine. The kernel's own dump filter (`CTA_FILTER`)
//! is not used: its flag values are not part of the UAPI headers. Written from
//! `linux/netfilter/nfnetlink_conntrack.h` and the kernel's YNL spec `conntrack.yaml`.
//!
//! Cost: a dump walks the namespace's whole conntrack table (as the reference plugin does), so
//! it is done once per operation and family, never per port, and only when there are ports.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::elements::ip_from;
use super::nfnl::{attr, attr_be32, ct_type, Socket};

/// `IPCTNL_MSG_CT_GET` / `IPCTNL_MSG_CT_DELETE`.
const CT_GET: u8 = 1;
const CT_DELETE: u8 = 2;

/// `enum ctattr_type`.
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
/// `enum ctattr_tuple`.
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
/// `enum ctattr_ip`.
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
/// `enum ctattr_l4proto`.
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// `NFPROTO_IPV4` / `NFPROTO_IPV6` (the same numbers as `AF_INET` / `AF_INET6`).
const FAMILY_V4: u8 = 2;
const FAMILY_V6: u8 = 10;

/// One direction of a flow: addresses, protocol and ports (none for portless protocols).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
}

/// A conntrack entry as a dump reports it.
#[derive(Debug, Clone)]
pub(super) struct Flow {
    pub orig: Tuple,
    pub reply: Tuple,
    /// `CTA_STATUS` (`IPS_*` bits).
    #[cfg_attr(not(test), allow(dead_code))]
    pub status: u32,
    /// The encoded content of `CTA_TUPLE_ORIG`, sent back as is to delete the entry.
    orig_raw: Vec<u8>,
    id: Option<u32>,
    zone: Option<[u8; 2]>,
}

/// What makes an entry stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Stale {
    /// Sent to `port` over `proto` on the host: on `host` if given, else on any address of the
    /// family (`v6`).
    ToHostPort {
        proto: u8,
        port: u16,
        host: Option<IpAddr>,
        v6: bool,
    },
    /// Answered from `addr` over `proto`: a flow to (or translated to) a container's port.
    FromContainer { proto: u8, addr: SocketAddr },
}

impl Stale {
    fn v6(&self) -> bool {
        match self {
            Stale::ToHostPort { v6, .. } => *v6,
            Stale::FromContainer { addr, .. } => addr.is_ipv6(),
        }
    }

    fn matches(&self, f: &Flow) -> bool {
        match *self {
            Stale::ToHostPort {
                proto, port, host, ..
            } => {
                f.orig.proto == proto
                    && f.orig.dport == Some(port)
                    && host.is_none_or(|h| f.orig.dst == h)
            }
            Stale::FromContainer { proto, addr } => {
                f.reply.proto == proto
                    && f.reply.src == addr.ip()
                    && f.reply.sport == Some(addr.port())
            }
        }
    }
}

/// Whether connection tracking can have entries at all. Without the `nf_conntrack` module there
/// is nothing to forget, and asking ctnetlink would load it (and ctnetlink) for nothing. Where
/// `/sys/module` cannot be read, assume it may be there.
pub(super) fn available() -> bool {
    !Path::new("/sys/module").is_dir() || Path::new("/sys/module/nf_conntrack").exists()
}

/// Deletes every entry that one of `stale` matches; returns how many were deleted. `Err` is
/// the errno of a failed dump or delete (`EOPNOTSUPP` and the like: no ctnetlink).
pub(super) fn forget(sock: &mut Socket, stale: &[Stale]) -> Result<usize, i32> {
    let mut deleted = 0;
    for v6 in [false, true] {
        let of_family: Vec<&Stale> = stale.iter().filter(|s| s.v6() == v6).collect();
        if of_family.is_empty() {
            continue;
        }
        let family = if v6 { FAMILY_V6 } else { FAMILY_V4 };
        let mut doomed = Vec::new();
        dump_each(sock, family, &mut |f| {
            if of_family.iter().any(|s| s.matches(&f)) {
                doomed.push(f);
            }
        })?;
        for f in &doomed {
            match delete(sock, family, f) {
                Ok(()) => deleted += 1,
                Err(libc::ENOENT) => {} // gone in the meantime (expired, or deleted by another)
                Err(errno) => return Err(errno),
            }
        }
    }
    Ok(deleted)
}

/// Every entry of one address family.
#[cfg_attr(not(test), allow(dead_code))]
pub(super) fn dump(sock: &mut Socket, v6: bool) -> Result<Vec<Flow>, i32> {
    let mut out = Vec::new();
    dump_each(sock, if v6 { FAMILY_V6 } else { FAMILY_V4 }, &mut |f| {
        out.push(f)
    })?;
    Ok(out)
}

fn dump_each(sock: &mut Socket, family: u8, each: &mut dyn FnMut(Flow)) -> Result<(), i32> {
    sock.dump(ct_type(CT_GET), family, |_| {}, &mut |payload| {
        if let Some(f) = parse_flow(payload) {
            each(f);
        }
    })
}

/// Deletes one entry by its original tuple, zone and id.
fn delete(sock: &mut Socket, family: u8, f: &Flow) -> Result<(), i32> {
    sock.request(ct_type(CT_DELETE), family, |a| {
        a.nest(CTA_TUPLE_ORIG, |t| {
            t.raw(&f.orig_raw);
        });
        if let Some(zone) = f.zone {
            a.bytes(CTA_ZONE, &zone);
        }
        if let Some(id) = f.id {
            a.be32(CTA_ID, id);
        }
    })
}

/// Decodes the attributes of one `IPCTNL_MSG_CT_NEW` dump reply (`None` for what is not a
/// flow with both tuples).
pub(super) fn parse_flow(payload: &[u8]) -> Option<Flow> {
    let orig_raw = attr(payload, CTA_TUPLE_ORIG)?;
    Some(Flow {
        orig: parse_tuple(orig_raw)?,
        reply: parse_tuple(attr(payload, CTA_TUPLE_REPLY)?)?,
        status: attr_be32(payload, CTA_STATUS).unwrap_or(0),
        orig_raw: orig_raw.to_vec(),
        id: attr_be32(payload, CTA_ID),
        zone: attr(payload, CTA_ZONE).and_then(|z| z.try_into().ok()),
    })
}

fn parse_tuple(t: &[u8]) -> Option<Tuple> {
    let ip = attr(t, CTA_TUPLE_IP)?;
    let addr = |v4, v6| attr(ip, v4).or_else(|| attr(ip, v6)).and_then(ip_from);
    let src = addr(CTA_IP_V4_SRC, CTA_IP_V6_SRC)?;
    let dst = addr(CTA_IP_V4_DST, CTA_IP_V6_DST)?;
    let proto = attr(t, CTA_TUPLE_PROTO)?;
    let port = |ty| {
        attr(proto, ty)
            .and_then(|p| p.try_into().ok())
            .map(u16::from_be_bytes)
    };
    Some(Tuple {
        src,
        dst,
        proto: *attr(proto, CTA_PROTO_NUM)?.first()?,
        sport: port(CTA_PROTO_SRC_PORT),
        dport: port(CTA_PROTO_DST_PORT),
    })
}

#[cfg(test)]
mod tests {
    use super::super::nfnl::Attrs;
    use super::*;

    /// A dump reply as the kernel encodes it (nests flagged, ports big-endian).
    fn reply(orig: ([u8; 4], [u8; 4], u16, u16), reply: ([u8; 4], [u8; 4], u16, u16)) -> Vec<u8> {
        let mut buf = Vec::new();
        let tuple = |a: &mut Attrs<'_>, ty, (s, d, sp, dp): ([u8; 4], [u8; 4], u16, u16)| {
            a.nest(ty, |t| {
                t.nest(CTA_TUPLE_IP, |ip| {
                    ip.bytes(CTA_IP_V4_SRC, &s).bytes(CTA_IP_V4_DST, &d);
                });
                t.nest(CTA_TUPLE_PROTO, |p| {
                    p.bytes(CTA_PROTO_NUM, &[17])
                        .bytes(CTA_PROTO_SRC_PORT, &sp.to_be_bytes())
                        .bytes(CTA_PROTO_DST_PORT, &dp.to_be_bytes());
                });
            });
        };
        let mut a = Attrs::new(&mut buf);
        tuple(&mut a, CTA_TUPLE_ORIG, orig);
        tuple(&mut a, CTA_TUPLE_REPLY, reply);
        a.be32(CTA_STATUS, 1 << 5).be32(CTA_ID, 0xdead_beef);
        buf
    }

    #[test]
    fn flows_decode_and_match() {
        let peer = [192, 0, 2, 9];
        let host = [192, 0, 2, 1];
        let ctr = [10, 88, 0, 2];
        let f =
            parse_flow(&reply((peer, host, 40053, 8053), (ctr, peer, 5353, 40053))).expect("flow");
        assert_eq!(f.orig.dst, IpAddr::from(host));
        assert_eq!((f.orig.sport, f.orig.dport), (Some(40053), Some(8053)));
        assert_eq!(
            (f.reply.proto, f.status, f.id),
            (17, 1 << 5, Some(0xdead_beef))
        );

        let to = |host: Option<[u8; 4]>, port| Stale::ToHostPort {
            proto: 17,
            port,
            host: host.map(IpAddr::from),
            v6: false,
        };
        assert!(to(None, 8053).matches(&f));
        assert!(to(Some(host), 8053).matches(&f));
        assert!(!to(Some([192, 0, 2, 2]), 8053).matches(&f));
        assert!(!to(None, 8054).matches(&f));
        let from = |ip: [u8; 4], port| Stale::FromContainer {
            proto: 17,
            addr: SocketAddr::new(IpAddr::from(ip), port),
        };
        assert!(from(ctr, 5353).matches(&f));
        assert!(!from(ctr, 53).matches(&f));
        assert!(!from([10, 88, 0, 3], 5353).matches(&f));
        assert!(!Stale::FromContainer {
            proto: 6,
            addr: SocketAddr::new(IpAddr::from(ctr), 5353)
        }
        .matches(&f));
        assert!(parse_flow(&[]).is_none());
    }
}
