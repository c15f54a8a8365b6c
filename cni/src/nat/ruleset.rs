//! The `netd` tables' layout: their sets, chains and rules, written once at bootstrap.
//!
//! `table inet netd` holds port maps (DNAT), masquerade and isolation; `table bridge netd`
//! holds the MAC spoofing check. Rules never change after bootstrap, so a packet's and an
//! ADD's cost do not grow with the number of containers: only elements (see `elements`) come
//! and go. This module does not encode elements.

use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL};

use super::expr::*;
use super::nfnl::{msg, Batch};

/// Name of both netd tables.
pub(super) const TABLE: &str = "netd";
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// `RTN_LOCAL`, as `fib ... type` reports it.
const RTN_LOCAL: u32 = 2;
/// `IPS_DST_NAT`: the connection was destination-NATed.
const IPS_DST_NAT: u32 = 1 << 5;

/// The table families netd uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    /// `NFPROTO_INET`: IPv4 and IPv6.
    Inet,
    /// `NFPROTO_BRIDGE`: frames crossing a bridge.
    Bridge,
}

impl Family {
    /// The `nfgen_family` value.
    pub fn code(self) -> u8 {
        match self {
            Family::Inet => 1,
            Family::Bridge => 7,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::Inet => "inet",
            Family::Bridge => "bridge",
        })
    }
}

/// A field of a set key or map value. The type ids are the ones `nft` uses to display a set
/// (`NFTA_SET_KEY_TYPE` is informational to the kernel); concatenations pack 6 bits per field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    Ipv4,
    Ipv6,
    Proto,
    Port,
    Ifname,
    Ether,
}

impl Field {
    fn type_id(self) -> u32 {
        match self {
            Field::Ipv4 => 7,
            Field::Ipv6 => 8,
            Field::Ether => 9,
            Field::Proto => 12,
            Field::Port => 13,
            Field::Ifname => 41,
        }
    }

    pub(super) fn len(self) -> usize {
        match self {
            Field::Ipv4 => 4,
            Field::Ipv6 | Field::Ifname => 16,
            Field::Proto => 1,
            Field::Port => 2,
            Field::Ether => 6,
        }
    }
}

fn concat_type(fields: &[Field]) -> u32 {
    fields.iter().fold(0, |t, f| (t << 6) | f.type_id())
}

fn concat_len(fields: &[Field]) -> usize {
    fields.iter().map(|f| f.len().next_multiple_of(4)).sum()
}

/// A named set or map of a netd table.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct SetDef {
    pub family: Family,
    pub name: &'static str,
    pub key: &'static [Field],
    pub data: &'static [Field],
    /// Elements are ranges (subnets): start plus an `INTERVAL_END` element.
    pub interval: bool,
    /// Elements are added with `NLM_F_EXCL`: a key already present is a conflict.
    pub exclusive: bool,
}

const fn set(family: Family, name: &'static str, key: &'static [Field]) -> SetDef {
    SetDef {
        family,
        name,
        key,
        data: &[],
        interval: false,
        exclusive: false,
    }
}
const fn subnets(name: &'static str, key: &'static [Field]) -> SetDef {
    SetDef {
        interval: true,
        ..set(Family::Inet, name, key)
    }
}
const fn ports(name: &'static str, key: &'static [Field], data: &'static [Field]) -> SetDef {
    SetDef {
        data,
        exclusive: true,
        ..set(Family::Inet, name, key)
    }
}

pub(super) use Field::*;
pub(super) static NETS4: SetDef = subnets("nets4", &[Ipv4]);
pub(super) static NETS6: SetDef = subnets("nets6", &[Ipv6]);
pub(super) static MASQ4: SetDef = subnets("masq4", &[Ipv4]);
pub(super) static MASQ6: SetDef = subnets("masq6", &[Ipv6]);
pub(super) static PORTS4: SetDef = ports("ports4", &[Ipv4, Proto, Port], &[Ipv4, Port]);
pub(super) static PORTS4ANY: SetDef = ports("ports4any", &[Proto, Port], &[Ipv4, Port]);
pub(super) static PORTS6: SetDef = ports("ports6", &[Ipv6, Proto, Port], &[Ipv6, Port]);
pub(super) static PORTS6ANY: SetDef = ports("ports6any", &[Proto, Port], &[Ipv6, Port]);
pub(super) static BRIDGES: SetDef = set(Family::Inet, "bridges", &[Ifname]);
pub(super) static ISOLATED: SetDef = set(Family::Inet, "isolated", &[Ifname]);
pub(super) static SAME: SetDef = set(Family::Inet, "same", &[Ifname, Ifname]);
pub(super) static CHECKED: SetDef = set(Family::Bridge, "checked", &[Ifname]);
pub(super) static MACS: SetDef = set(Family::Bridge, "macs", &[Ifname, Ether]);

/// Every set, in the order elements are written.
pub(super) static SETS: [&SetDef; 13] = [
    &NETS4, &NETS6, &MASQ4, &MASQ6, &BRIDGES, &SAME, &ISOLATED, &PORTS4, &PORTS4ANY, &PORTS6,
    &PORTS6ANY, &CHECKED, &MACS,
];
/// The port maps, for listing.
pub(super) static PORT_MAPS: [&SetDef; 4] = [&PORTS4, &PORTS4ANY, &PORTS6, &PORTS6ANY];

/// A chain: `hook` is `(hook number, priority, chain type)` for base chains.
struct ChainDef {
    name: &'static str,
    hook: Option<(u32, i32, &'static str)>,
}

/// Inet chains; `portmap` comes first because the base chains jump to it.
const INET_CHAINS: [ChainDef; 5] = [
    ChainDef {
        name: "portmap",
        hook: None,
    },
    ChainDef {
        name: "prerouting",
        hook: Some((0, -100, "nat")),
    },
    ChainDef {
        name: "output",
        hook: Some((3, -100, "nat")),
    },
    ChainDef {
        name: "postrouting",
        hook: Some((4, 100, "nat")),
    },
    ChainDef {
        name: "forward",
        hook: Some((2, 0, "filter")),
    },
];
const BRIDGE_CHAINS: [ChainDef; 1] = [ChainDef {
    name: "prerouting",
    hook: Some((0, -300, "filter")),
}];

/// `meta nfproto <p>` (the dependency `nft` adds before an `ip`/`ip6` match in inet tables).
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

/// `<ip|ip6> <saddr|daddr> [!=] @set`, loading `len` bytes at network-header `offset`.
fn addr_in(offset: u32, len: u32, set: &'static str, invert: bool) -> [Expr; 2] {
    [
        Expr::Payload {
            base: BASE_NETWORK,
            offset,
            len,
            dreg: REG_1,
        },
        Expr::Lookup {
            set,
            sreg: REG_1,
            dreg: None,
            invert,
        },
    ]
}

/// `ct status dnat`.
fn ct_dnat() -> [Expr; 3] {
    [
        Expr::CtStatus,
        Expr::Mask {
            mask: IPS_DST_NAT.to_ne_bytes().to_vec(),
        },
        Expr::Cmp {
            op: CMP_NEQ,
            data: vec![0; 4],
        },
    ]
}

/// `meta nfproto <fam> dnat to [daddr .] meta l4proto . th dport map @set`.
fn portmap_rule(v6: bool, specific: bool, set: &'static str) -> Vec<Expr> {
    let (fam, daddr, alen) = if v6 {
        (NFPROTO_IPV6, 24, 16)
    } else {
        (NFPROTO_IPV4, 16, 4)
    };
    let mut e = nfproto(fam).to_vec();
    let mut reg = REG32_00;
    if specific {
        e.push(Expr::Payload {
            base: BASE_NETWORK,
            offset: daddr,
            len: alen,
            dreg: reg,
        });
        reg += alen / 4;
    }
    e.push(Expr::Meta {
        key: META_L4PROTO,
        dreg: reg,
    });
    e.push(Expr::Payload {
        base: BASE_TRANSPORT,
        offset: 2,
        len: 2,
        dreg: reg + 1,
    });
    e.push(Expr::Lookup {
        set,
        sreg: REG32_00,
        dreg: Some(REG_1),
        invert: false,
    });
    // The map value `addr . port` lands in REG_1: the port in the 32-bit register after it.
    e.push(Expr::Dnat {
        family: fam,
        proto_reg: REG32_00 + alen / 4,
    });
    e
}

/// Masquerade for the hairpin and leaving-the-subnets cases of one address family.
fn masq_rules(v6: bool) -> [Vec<Expr>; 2] {
    let (fam, saddr, daddr, len, nets, masq) = if v6 {
        (NFPROTO_IPV6, 8, 24, 16, "nets6", "masq6")
    } else {
        (NFPROTO_IPV4, 12, 16, 4, "nets4", "masq4")
    };
    // Not multicast: 224.0.0.0/4 or ff00::/8.
    let not_multicast = if v6 {
        vec![
            Expr::Payload {
                base: BASE_NETWORK,
                offset: daddr,
                len: 1,
                dreg: REG_1,
            },
            Expr::Cmp {
                op: CMP_NEQ,
                data: vec![0xff],
            },
        ]
    } else {
        vec![
            Expr::Payload {
                base: BASE_NETWORK,
                offset: daddr,
                len: 4,
                dreg: REG_1,
            },
            Expr::Mask {
                mask: vec![0xf0, 0, 0, 0],
            },
            Expr::Cmp {
                op: CMP_NEQ,
                data: vec![0xe0, 0, 0, 0],
            },
        ]
    };
    let hairpin = [
        &ct_dnat()[..],
        &nfproto(fam),
        &addr_in(saddr, len, nets, false),
        &[Expr::Masq],
    ]
    .concat();
    let leaving = [
        &nfproto(fam)[..],
        &addr_in(saddr, len, masq, false),
        &addr_in(daddr, len, nets, true),
        &not_multicast,
        &[Expr::Masq],
    ]
    .concat();
    [hairpin, leaving]
}

fn inet_rules() -> Vec<(&'static str, Vec<Expr>)> {
    let to_portmap = || {
        vec![
            Expr::FibDaddrType,
            Expr::Cmp {
                op: CMP_EQ,
                data: RTN_LOCAL.to_ne_bytes().to_vec(),
            },
            Expr::Verdict(Verdict::Jump("portmap")),
        ]
    };
    let localhost = [
        &ct_dnat()[..],
        &nfproto(NFPROTO_IPV4),
        &[
            Expr::Payload {
                base: BASE_NETWORK,
                offset: 12,
                len: 1,
                dreg: REG_1,
            },
            Expr::Cmp {
                op: CMP_EQ,
                data: vec![127],
            },
        ],
        &[Expr::Masq],
    ]
    .concat();
    let [hairpin4, leaving4] = masq_rules(false);
    let [hairpin6, leaving6] = masq_rules(true);
    let iif_oif = |a: &'static str, b: &'static str| {
        vec![
            Expr::Meta {
                key: META_IIFNAME,
                dreg: REG_1,
            },
            Expr::Lookup {
                set: a,
                sreg: REG_1,
                dreg: None,
                invert: false,
            },
            Expr::Meta {
                key: META_OIFNAME,
                dreg: REG_1,
            },
            Expr::Lookup {
                set: b,
                sreg: REG_1,
                dreg: None,
                invert: false,
            },
            Expr::Verdict(Verdict::Drop),
        ]
    };
    vec![
        ("portmap", portmap_rule(false, true, "ports4")),
        ("portmap", portmap_rule(false, false, "ports4any")),
        ("portmap", portmap_rule(true, true, "ports6")),
        ("portmap", portmap_rule(true, false, "ports6any")),
        ("prerouting", to_portmap()),
        ("output", to_portmap()),
        ("postrouting", hairpin4),
        ("postrouting", localhost),
        ("postrouting", leaving4),
        ("postrouting", hairpin6),
        ("postrouting", leaving6),
        (
            "forward",
            vec![
                Expr::Meta {
                    key: META_IIFNAME,
                    dreg: REG32_00,
                },
                Expr::Meta {
                    key: META_OIFNAME,
                    dreg: REG32_00 + 4,
                },
                Expr::Lookup {
                    set: "same",
                    sreg: REG32_00,
                    dreg: None,
                    invert: false,
                },
                Expr::Verdict(Verdict::Accept),
            ],
        ),
        ("forward", iif_oif("isolated", "bridges")),
        ("forward", iif_oif("bridges", "isolated")),
    ]
}

fn bridge_rules() -> Vec<(&'static str, Vec<Expr>)> {
    // iifname @checked iifname . ether saddr != @macs drop
    vec![(
        "prerouting",
        vec![
            Expr::Meta {
                key: META_IIFNAME,
                dreg: REG_1,
            },
            Expr::Lookup {
                set: "checked",
                sreg: REG_1,
                dreg: None,
                invert: false,
            },
            Expr::Meta {
                key: META_IIFNAME,
                dreg: REG32_00,
            },
            Expr::Payload {
                base: BASE_LL,
                offset: 6,
                len: 6,
                dreg: REG32_00 + 4,
            },
            Expr::Lookup {
                set: "macs",
                sreg: REG32_00,
                dreg: None,
                invert: true,
            },
            Expr::Verdict(Verdict::Drop),
        ],
    )]
}

/// Appends the creation of a whole table (`NLM_F_EXCL` on the table, so a concurrent creator
/// makes this batch fail with `EEXIST` on its first message and change nothing).
pub(super) fn bootstrap(batch: &mut Batch, family: Family) {
    let fam = family.code();
    batch.push(
        msg::NEWTABLE,
        fam,
        NLM_F_CREATE | NLM_F_EXCL,
        format!("create table {family} {TABLE}"),
        |a| {
            a.str(1, TABLE).be32(2, 0); // NFTA_TABLE_NAME, _FLAGS
        },
    );
    for (id, s) in SETS.iter().filter(|s| s.family == family).enumerate() {
        batch.push(
            msg::NEWSET,
            fam,
            NLM_F_CREATE,
            format!("create set {family} {TABLE} {}", s.name),
            |a| {
                // NFTA_SET_TABLE, _NAME, _FLAGS (INTERVAL 0x4, MAP 0x8), _KEY_TYPE, _KEY_LEN
                let flags =
                    if s.interval { 0x4 } else { 0 } | if s.data.is_empty() { 0 } else { 0x8 };
                a.str(1, TABLE).str(2, s.name).be32(3, flags);
                a.be32(4, concat_type(s.key))
                    .be32(5, concat_len(s.key) as u32);
                if !s.data.is_empty() {
                    a.be32(6, concat_type(s.data))
                        .be32(7, concat_len(s.data) as u32); // _DATA_TYPE, _DATA_LEN
                }
                a.be32(10, id as u32 + 1); // NFTA_SET_ID
                if s.key == [Ifname] {
                    // NFTA_SET_USERDATA, for `nft list` only: a (type, len, value) record saying the
                    // key is in host byte order (a string), else nft prints the name reversed.
                    a.bytes(13, &[[0, 4].as_slice(), &1u32.to_ne_bytes()].concat());
                }
            },
        );
    }
    let (chains, rules): (&[ChainDef], _) = match family {
        Family::Inet => (&INET_CHAINS, inet_rules()),
        Family::Bridge => (&BRIDGE_CHAINS, bridge_rules()),
    };
    for c in chains {
        batch.push(
            msg::NEWCHAIN,
            fam,
            NLM_F_CREATE,
            format!("create chain {family} {TABLE} {}", c.name),
            |a| {
                a.str(1, TABLE).str(3, c.name); // NFTA_CHAIN_TABLE, _NAME
                if let Some((hooknum, prio, kind)) = c.hook {
                    // NFTA_CHAIN_HOOK { NFTA_HOOK_HOOKNUM, _PRIORITY }, NFTA_CHAIN_TYPE
                    a.nest(4, |h| {
                        h.be32(1, hooknum).be32(2, prio as u32);
                    });
                    a.str(7, kind);
                }
            },
        );
    }
    for (chain, exprs) in rules {
        let op = format!("add rule to chain {family} {TABLE} {chain}");
        batch.push(msg::NEWRULE, fam, NLM_F_CREATE | NLM_F_APPEND, op, |a| {
            a.str(1, TABLE).str(2, chain); // NFTA_RULE_TABLE, _CHAIN
            a.nest(4, |list| exprs.iter().for_each(|e| e.encode(list))); // NFTA_RULE_EXPRESSIONS
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_types_and_lengths_match_nft() {
        assert_eq!(concat_type(PORTS4.key), 0x730d);
        assert_eq!(concat_len(PORTS4.key), 12);
        assert_eq!(concat_type(PORTS4.data), 0x1cd);
        assert_eq!(concat_len(PORTS6.data), 20);
        assert_eq!(concat_len(MACS.key), 24);
        assert_eq!(concat_type(SAME.key), 0x0a69);
    }
}
