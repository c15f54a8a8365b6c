//! Set elements: all per-network and per-attachment state, their wire encoding (keys and
//! map values), element messages, and decoding of the kernel's replies.
//!
//! Encodings follow the kernel's register layout: concatenated fields are each padded to 4
//! bytes; addresses and ports are in network byte order, `inet_proto` is one byte, interface
//! names are 16 bytes NUL-padded; subnets are intervals (start, and one past the end flagged
//! `NFT_SET_ELEM_INTERVAL_END`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use netd_config::cni::Protocol;

use super::nfnl::{attr, attr_be32, attrs, Attrs, Batch};
use super::ruleset::*;
use super::{AttachmentSpec, NatError, NetworkSpec, PortMap};

/// Elements per message: keeps every attribute far below the u16 length limit.
const ELEMS_PER_MSG: usize = 128;

/// One set element as on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Elem {
    pub key: Vec<u8>,
    pub data: Option<Vec<u8>>,
    /// `NFT_SET_ELEM_INTERVAL_END`.
    pub end: bool,
}

/// A unit of state (a subnet, a bridge, a port mapping...) and the elements that encode it.
#[derive(Debug, Clone)]
pub(super) struct Item {
    pub set: &'static SetDef,
    pub elems: Vec<Elem>,
    /// What this is, for messages: "port mapping 8080/tcp -> 10.88.0.2:80".
    pub what: String,
    pub port: Option<PortMap>,
}

fn item(set: &'static SetDef, key: Vec<u8>, data: Option<Vec<u8>>, what: String) -> Item {
    Item {
        set,
        elems: vec![Elem {
            key,
            data,
            end: false,
        }],
        what,
        port: None,
    }
}

/// Concatenates fields, each padded to 4 bytes.
fn concat(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p);
        v.resize(v.len().next_multiple_of(4), 0);
    }
    v
}

fn ifname(name: &str, what: &str) -> Result<[u8; 16], NatError> {
    if name.is_empty()
        || name.len() > 15
        || name.contains(['\0', '/'])
        || name.contains(char::is_whitespace)
    {
        return Err(NatError::Invalid {
            reason: format!("{what} {name:?} is not a valid interface name"),
        });
    }
    let mut b = [0; 16];
    b[..name.len()].copy_from_slice(name.as_bytes());
    Ok(b)
}

/// A subnet as an interval: its first address, and one past its last (omitted at the top of
/// the address space, where a start alone runs to the end).
fn subnet_item(set: &'static SetDef, net: IpNet) -> Item {
    let net = net.trunc();
    Item {
        set,
        elems: interval(net),
        what: format!("subnet {net} in set {}", set.name),
        port: None,
    }
}

/// The elements of subnet `net` in an interval set: its first address, and one past its last
/// flagged `NFT_SET_ELEM_INTERVAL_END` (omitted at the top of the address space).
pub(super) fn interval(net: IpNet) -> Vec<Elem> {
    let (start, end) = match net.trunc() {
        IpNet::V4(n) => (
            n.network().octets().to_vec(),
            u32::from(n.broadcast())
                .checked_add(1)
                .map(|e| e.to_be_bytes().to_vec()),
        ),
        IpNet::V6(n) => (
            n.network().octets().to_vec(),
            u128::from(n.broadcast())
                .checked_add(1)
                .map(|e| e.to_be_bytes().to_vec()),
        ),
    };
    let mut elems = vec![Elem {
        key: start,
        data: None,
        end: false,
    }];
    elems.extend(end.map(|key| Elem {
        key,
        data: None,
        end: true,
    }));
    elems
}

/// The elements of a network: subnets (and masquerade), its bridge, and isolation.
pub(super) fn network_items(net: &NetworkSpec) -> Result<Vec<Item>, NatError> {
    let br = ifname(&net.bridge, "bridge")?;
    let mut items = Vec::new();
    for &subnet in &net.subnets {
        let v6 = matches!(subnet, IpNet::V6(_));
        items.push(subnet_item(if v6 { &NETS6 } else { &NETS4 }, subnet));
        if net.masquerade {
            items.push(subnet_item(if v6 { &MASQ6 } else { &MASQ4 }, subnet));
        }
    }
    let b = &net.bridge;
    items.push(item(
        &BRIDGES,
        br.to_vec(),
        None,
        format!("bridge {b} in set bridges"),
    ));
    items.push(item(
        &SAME,
        concat(&[&br, &br]),
        None,
        format!("bridge pair {b} . {b} in set same"),
    ));
    if net.isolate {
        items.push(item(
            &ISOLATED,
            br.to_vec(),
            None,
            format!("bridge {b} in set isolated"),
        ));
    }
    Ok(items)
}

/// The elements of an attachment: its port mappings and its MAC check.
pub(super) fn attachment_items(att: &AttachmentSpec) -> Result<Vec<Item>, NatError> {
    let mut items = att
        .ports
        .iter()
        .map(port_item)
        .collect::<Result<Vec<_>, _>>()?;
    items.extend(mac_items(att)?);
    Ok(items)
}

/// The MAC spoofing check of an attachment (none when `mac` is `None`).
pub(super) fn mac_items(att: &AttachmentSpec) -> Result<Vec<Item>, NatError> {
    let Some(mac) = att.mac else {
        return Ok(Vec::new());
    };
    let veth = ifname(&att.host_veth, "host veth")?;
    let v = &att.host_veth;
    let m = mac.map(|b| format!("{b:02x}")).join(":");
    Ok(vec![
        item(
            &CHECKED,
            veth.to_vec(),
            None,
            format!("veth {v} in set checked"),
        ),
        item(
            &MACS,
            concat(&[&veth, &mac]),
            None,
            format!("MAC {v} . {m} in set macs"),
        ),
    ])
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// A port mapping as a map element. An unset or unspecified host IP publishes on every host
/// address of the container address's family.
pub(super) fn port_item(p: &PortMap) -> Result<Item, NatError> {
    let host = p.host_ip.filter(|ip| !ip.is_unspecified());
    let set: &'static SetDef = match (host, p.container_ip) {
        (None, IpAddr::V4(_)) => &PORTS4ANY,
        (None, IpAddr::V6(_)) => &PORTS6ANY,
        (Some(IpAddr::V4(_)), IpAddr::V4(_)) => &PORTS4,
        (Some(IpAddr::V6(_)), IpAddr::V6(_)) => &PORTS6,
        (Some(h), c) => {
            let reason = format!("port mapping {p}: host IP {h} and container IP {c} are of different address families");
            return Err(NatError::Invalid { reason });
        }
    };
    let (proto, port) = ([p.protocol.number()], p.host_port.to_be_bytes());
    let key = match host {
        Some(h) => concat(&[&ip_bytes(h), &proto, &port]),
        None => concat(&[&proto, &port]),
    };
    let data = concat(&[&ip_bytes(p.container_ip), &p.container_port.to_be_bytes()]);
    Ok(Item {
        port: Some(p.clone()),
        ..item(set, key, Some(data), format!("port mapping {p}"))
    })
}

/// Splits a concatenation back into its fields.
fn split<'a>(fields: &[Field], mut bytes: &'a [u8]) -> Option<Vec<&'a [u8]>> {
    let mut out = Vec::with_capacity(fields.len());
    for f in fields {
        out.push(bytes.get(..f.len())?);
        bytes = bytes.get(f.len().next_multiple_of(4)..)?;
    }
    Some(out)
}

/// An address from its 4 or 16 network-order bytes.
pub(super) fn ip_from(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b)
            .ok()
            .map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        16 => <[u8; 16]>::try_from(b)
            .ok()
            .map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        _ => None,
    }
}

/// Decodes an element of one of the port maps (`None` for anything netd did not write).
pub(super) fn decode_port(set: &SetDef, e: &Elem) -> Option<PortMap> {
    let key = split(set.key, &e.key)?;
    let data = split(set.data, e.data.as_deref()?)?;
    let (host_ip, proto, port) = match key[..] {
        [h, proto, port] => (Some(ip_from(h)?), proto, port),
        [proto, port] => (None, proto, port),
        _ => return None,
    };
    let protocol = match proto {
        [6] => Protocol::Tcp,
        [17] => Protocol::Udp,
        _ => return None,
    };
    let be16 = |b: &[u8]| b.try_into().ok().map(u16::from_be_bytes);
    Some(PortMap {
        protocol,
        host_ip,
        host_port: be16(port)?,
        container_ip: ip_from(data.first()?)?,
        container_port: be16(data.get(1)?)?,
    })
}

/// Items grouped by set, in `SETS` order, at most `ELEMS_PER_MSG` per group.
pub(super) fn groups(items: &[Item]) -> Vec<Vec<&Item>> {
    let mut out = Vec::new();
    for s in SETS {
        let of_set: Vec<&Item> = items.iter().filter(|i| i.set == s).collect();
        out.extend(of_set.chunks(ELEMS_PER_MSG).map(<[&Item]>::to_vec));
    }
    out
}

/// Appends one set-element message (`m` is NEWSETELEM, DELSETELEM...) for a group of items of
/// the same set.
pub(super) fn push_elems(batch: &mut Batch, m: u8, flags: u16, verb: &str, group: &[&Item]) {
    let Some(first) = group.first() else { return };
    let set = first.set;
    let op = match group.len() {
        1 => format!("{verb} {}", first.what),
        n => format!(
            "{verb} {} and {} more in set {}",
            first.what,
            n - 1,
            set.name
        ),
    };
    batch.push(m, set.family.code(), flags, op, |a| {
        elem_list(a, set, group.iter().flat_map(|i| &i.elems));
    });
}

/// Appends a get request's attributes for the first element of `item`.
pub(super) fn get_elem_attrs(a: &mut Attrs<'_>, item: &Item) {
    elem_list(
        a,
        item.set,
        item.elems
            .first()
            .map(|e| Elem {
                data: None,
                ..e.clone()
            })
            .iter(),
    );
}

/// `NFTA_SET_ELEM_LIST_TABLE`, `_SET`, `_ELEMENTS { NFTA_LIST_ELEM { KEY, DATA, FLAGS } ... }`.
fn elem_list<'a>(a: &mut Attrs<'_>, set: &SetDef, elems: impl Iterator<Item = &'a Elem>) {
    a.str(1, TABLE).str(2, set.name);
    a.nest(3, |list| {
        for e in elems {
            list.nest(1, |el| {
                el.nest(1, |k| {
                    k.bytes(1, &e.key);
                });
                if let Some(data) = &e.data {
                    el.nest(2, |d| {
                        d.bytes(1, data);
                    });
                }
                if e.end {
                    el.be32(3, 1);
                }
            });
        }
    });
}

/// The elements carried by a NEWSETELEM reply (of a get or a dump).
pub(super) fn parse_elems(payload: &[u8]) -> Vec<Elem> {
    let Some(list) = attr(payload, 3) else {
        return Vec::new();
    };
    attrs(list)
        .filter(|&(ty, _)| ty == 1)
        .filter_map(|(_, el)| {
            let key = attr(attr(el, 1)?, 1)?.to_vec();
            let data = attr(el, 2).and_then(|d| attr(d, 1)).map(<[u8]>::to_vec);
            let end = attr_be32(el, 3).is_some_and(|f| f & 1 != 0);
            Some(Elem { key, data, end })
        })
        .collect()
}

impl std::fmt::Display for PortMap {
    /// `8080/tcp -> 10.88.0.2:80`, or `127.0.0.1:8080/tcp -> ...` with a host IP.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host_ip {
            Some(ip) => write!(
                f,
                "{}/{}",
                SocketAddr::new(ip, self.host_port),
                self.protocol
            )?,
            None => write!(f, "{}/{}", self.host_port, self.protocol)?,
        }
        write!(
            f,
            " -> {}",
            SocketAddr::new(self.container_ip, self.container_port)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(host: Option<&str>, container: &str) -> PortMap {
        PortMap {
            protocol: Protocol::Udp,
            host_ip: host.and_then(|h| h.parse().ok()),
            host_port: 8080,
            container_ip: container
                .parse()
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            container_port: 80,
        }
    }

    #[test]
    fn port_elements_are_padded_network_order_and_round_trip() {
        for (host, c) in [
            (None, "10.88.0.2"),
            (Some("192.0.2.1"), "10.88.0.2"),
            (None, "fd00::2"),
            (Some("2001:db8::1"), "fd00::2"),
        ] {
            let p = pm(host, c);
            let it = port_item(&p).expect("valid mapping");
            assert_eq!(decode_port(it.set, &it.elems[0]), Some(p));
        }
        let it = port_item(&pm(Some("192.0.2.1"), "10.88.0.2")).expect("valid");
        assert_eq!(
            it.elems[0].key,
            [192, 0, 2, 1, 17, 0, 0, 0, 0x1f, 0x90, 0, 0]
        );
        assert_eq!(
            it.elems[0].data.as_deref(),
            Some(&[10, 88, 0, 2, 0, 80, 0, 0][..])
        );
        assert_eq!(
            port_item(&pm(Some("0.0.0.0"), "10.88.0.2"))
                .map(|i| i.set.name)
                .ok(),
            Some("ports4any")
        );
        assert!(matches!(
            port_item(&pm(Some("192.0.2.1"), "fd00::2")),
            Err(NatError::Invalid { .. })
        ));
    }

    #[test]
    fn subnets_become_half_open_intervals() {
        let it = subnet_item(&NETS4, "10.88.0.7/16".parse().expect("cidr"));
        assert_eq!(it.elems[0].key, [10, 88, 0, 0]);
        assert_eq!(
            (it.elems[1].key.as_slice(), it.elems[1].end),
            (&[10, 89, 0, 0][..], true)
        );
        assert_eq!(
            subnet_item(&NETS4, "0.0.0.0/0".parse().expect("cidr"))
                .elems
                .len(),
            1
        );
    }

    #[test]
    fn interface_names_are_validated() {
        assert!(ifname("cni-podman0", "bridge").is_ok());
        assert!(ifname("", "bridge").is_err());
        assert!(ifname("a-name-that-is-too-long", "bridge").is_err());
    }
}
