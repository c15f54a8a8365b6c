//! The nf_tables expressions netd's rules use, and their netlink encoding.
//!
//! Only what the `netd` tables need (meta, payload, cmp, bitwise, lookup, immediate verdicts
//! and values, nat, masq, redir, ct status, fib): rules are composed from these in `ruleset`
//! and `intercept`. Attribute numbers
//! are the `NFTA_*` enums of `linux/netfilter/nf_tables.h`.

use super::nfnl::Attrs;

/// Registers: `NFT_REG_VERDICT`, the 16-byte `NFT_REG_1`, and 32-bit `NFT_REG32_00` onwards.
/// `NFT_REG_1` and `NFT_REG32_00` name the same storage; concatenations fill consecutive
/// 32-bit registers, each field padded to 4 bytes.
pub(super) const REG_VERDICT: u32 = 0;
pub(super) const REG_1: u32 = 1;
pub(super) const REG32_00: u32 = 8;

/// `NFT_META_*` keys.
pub(super) const META_MARK: u32 = 3;
pub(super) const META_IIFNAME: u32 = 6;
pub(super) const META_OIFNAME: u32 = 7;
pub(super) const META_SKUID: u32 = 10;
pub(super) const META_NFPROTO: u32 = 15;
pub(super) const META_L4PROTO: u32 = 16;

/// `NFT_PAYLOAD_*` bases.
pub(super) const BASE_LL: u32 = 0;
pub(super) const BASE_NETWORK: u32 = 1;
pub(super) const BASE_TRANSPORT: u32 = 2;

/// `NFT_CMP_EQ` / `NFT_CMP_NEQ`.
pub(super) const CMP_EQ: u32 = 0;
pub(super) const CMP_NEQ: u32 = 1;

/// A verdict for an `immediate` expression.
#[derive(Debug, Clone, Copy)]
pub(super) enum Verdict {
    /// `NF_ACCEPT`.
    Accept,
    /// `NF_DROP`.
    Drop,
    /// `NFT_JUMP` to a chain of the same table.
    Jump(&'static str),
    /// `NFT_RETURN`: leave the chain (in a base chain: its policy applies).
    Return,
}

/// One expression of a rule.
#[derive(Debug, Clone)]
pub(super) enum Expr {
    /// `meta <key>` into `dreg`.
    Meta { key: u32, dreg: u32 },
    /// `len` bytes at `base + offset` into `dreg`.
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// Compares `NFT_REG_1` with `data`.
    Cmp { op: u32, data: Vec<u8> },
    /// `reg1 = reg1 & mask` (xor 0) over `mask.len()` bytes.
    Mask { mask: Vec<u8> },
    /// Set membership of the key at `sreg`; with `dreg`, a map lookup writing the data there.
    Lookup {
        set: &'static str,
        sreg: u32,
        dreg: Option<u32>,
        invert: bool,
    },
    /// An immediate verdict.
    Verdict(Verdict),
    /// An immediate value loaded into `dreg`.
    Value { dreg: u32, data: Vec<u8> },
    /// `redirect to :port`, the port (network order) in `port_reg`: DNAT to the local
    /// machine (`127.0.0.1`/`::1` from the output hook, the incoming interface's primary
    /// address from prerouting) keeping the original destination for `SO_ORIGINAL_DST`.
    Redirect { port_reg: u32 },
    /// DNAT to the address in `NFT_REG_1` and the port in `proto_reg`.
    Dnat { family: u8, proto_reg: u32 },
    /// `masquerade`.
    Masq,
    /// `ct status` into `NFT_REG_1` (host byte order).
    CtStatus,
    /// `fib daddr type` into `NFT_REG_1` (an `RTN_*` value, host byte order).
    FibDaddrType,
}

impl Expr {
    fn name(&self) -> &'static str {
        match self {
            Expr::Meta { .. } => "meta",
            Expr::Payload { .. } => "payload",
            Expr::Cmp { .. } => "cmp",
            Expr::Mask { .. } => "bitwise",
            Expr::Lookup { .. } => "lookup",
            Expr::Verdict(_) | Expr::Value { .. } => "immediate",
            Expr::Redirect { .. } => "redir",
            Expr::Dnat { .. } => "nat",
            Expr::Masq => "masq",
            Expr::CtStatus => "ct",
            Expr::FibDaddrType => "fib",
        }
    }

    /// Writes this expression as one `NFTA_LIST_ELEM` of `NFTA_RULE_EXPRESSIONS`.
    pub fn encode(&self, list: &mut Attrs<'_>) {
        const NFTA_LIST_ELEM: u16 = 1;
        const NFTA_EXPR_NAME: u16 = 1;
        const NFTA_EXPR_DATA: u16 = 2;
        list.nest(NFTA_LIST_ELEM, |e| {
            e.str(NFTA_EXPR_NAME, self.name());
            e.nest(NFTA_EXPR_DATA, |d| self.encode_data(d));
        });
    }

    fn encode_data(&self, d: &mut Attrs<'_>) {
        match self {
            Expr::Meta { key, dreg } => {
                // NFTA_META_DREG, NFTA_META_KEY
                d.be32(1, *dreg).be32(2, *key);
            }
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                // NFTA_PAYLOAD_DREG, _BASE, _OFFSET, _LEN
                d.be32(1, *dreg)
                    .be32(2, *base)
                    .be32(3, *offset)
                    .be32(4, *len);
            }
            Expr::Cmp { op, data } => {
                // NFTA_CMP_SREG, _OP, _DATA
                d.be32(1, REG_1).be32(2, *op);
                d.nest(3, |v| value(v, data));
            }
            Expr::Mask { mask } => {
                // NFTA_BITWISE_SREG, _DREG, _LEN, _MASK, _XOR
                d.be32(1, REG_1).be32(2, REG_1).be32(3, mask.len() as u32);
                d.nest(4, |v| value(v, mask));
                d.nest(5, |v| value(v, &vec![0; mask.len()]));
            }
            Expr::Lookup {
                set,
                sreg,
                dreg,
                invert,
            } => {
                // NFTA_LOOKUP_SET, _SREG, _DREG, _FLAGS (NFT_LOOKUP_F_INV)
                d.str(1, set).be32(2, *sreg);
                if let Some(dreg) = dreg {
                    d.be32(3, *dreg);
                }
                if *invert {
                    d.be32(5, 1);
                }
            }
            Expr::Verdict(v) => {
                // NFTA_IMMEDIATE_DREG, _DATA { NFTA_DATA_VERDICT { NFTA_VERDICT_CODE, _CHAIN } }
                d.be32(1, REG_VERDICT);
                d.nest(2, |data| {
                    data.nest(2, |verdict| {
                        let code: i32 = match v {
                            Verdict::Drop => 0,
                            Verdict::Accept => 1,
                            Verdict::Jump(_) => -3,
                            Verdict::Return => -5,
                        };
                        verdict.be32(1, code as u32);
                        if let Verdict::Jump(chain) = v {
                            verdict.str(2, chain);
                        }
                    });
                });
            }
            Expr::Value { dreg, data } => {
                // NFTA_IMMEDIATE_DREG, _DATA { NFTA_DATA_VALUE }
                d.be32(1, *dreg);
                d.nest(2, |v| value(v, data));
            }
            Expr::Redirect { port_reg } => {
                // NFTA_REDIR_REG_PROTO_MIN, _MAX, _FLAGS (NF_NAT_RANGE_PROTO_SPECIFIED)
                d.be32(1, *port_reg).be32(2, *port_reg).be32(3, 2);
            }
            Expr::Dnat { family, proto_reg } => {
                // NFTA_NAT_TYPE (NFT_NAT_DNAT), _FAMILY, _REG_ADDR_MIN, _REG_PROTO_MIN; the
                // kernel derives the range flags from the registers given.
                d.be32(1, 1).be32(2, u32::from(*family));
                d.be32(3, REG_1).be32(5, *proto_reg);
            }
            Expr::Masq => {}
            Expr::CtStatus => {
                // NFTA_CT_DREG, NFTA_CT_KEY (NFT_CT_STATUS)
                d.be32(1, REG_1).be32(2, 2);
            }
            Expr::FibDaddrType => {
                // NFTA_FIB_DREG, _RESULT (NFT_FIB_RESULT_ADDRTYPE), _FLAGS (NFTA_FIB_F_DADDR)
                d.be32(1, REG_1).be32(2, 3).be32(3, 2);
            }
        }
    }
}

/// `NFTA_DATA_VALUE` inside an `nft_data_attributes` nest.
fn value(v: &mut Attrs<'_>, data: &[u8]) {
    v.bytes(1, data);
}
