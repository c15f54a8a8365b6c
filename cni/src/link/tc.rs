//! Traffic shaping for the CNI `bandwidth` capability, over rtnetlink (no `tc` subprocess).
//!
//! Directions are the container's. *Ingress* (traffic to the container) leaves the host
//! through the host veth, so a TBF qdisc at the veth's root shapes it. *Egress* (traffic from
//! the container) enters the host on the veth's receive side, where no qdisc can queue, so an
//! ingress qdisc there redirects every packet (a match-all `u32` filter with a `mirred`
//! egress-redirect action) to an `ifb` device; a TBF at the ifb's root shapes it, and the ifb
//! hands it back to the veth's receive path. This is the reference `bandwidth` plugin's layout,
//! and each request is what `tc` sends for the same command, minus the rate table the kernel
//! does not need once the link layer is given (see the encoding tests).
//!
//! The filter is `u32` with one zero-mask key, as in the reference plugin, rather than
//! `matchall`: both match everything, but `matchall` is a kernel option of its own
//! (`CONFIG_NET_CLS_MATCHALL`) that some kernels lack, while `u32` is everywhere.
//!
//! It owns the qdiscs, the filter and the ifb; whether to shape, and undoing it on rollback or
//! DEL, is decided by the commands (`cmd/`).

use netlink_packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirror, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcHeader, TcMessage,
    TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{validate_name, LinkError, Netlink};

/// The `bandwidth` capability's runtime config: rates in bits per second, bursts in bits;
/// 0 (or absent) for both halves of a direction means that direction is not shaped.
///
/// A rate needs a burst and a burst needs a rate ([`Bandwidth::validate`]). A burst smaller
/// than one frame (MTU plus Ethernet header: 1514 bytes, 12 112 bits, at MTU 1500) is
/// accepted, as by the reference plugin and the kernel (which only logs a warning), but TBF
/// then drops every packet larger than the burst: full-size frames never get through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct Bandwidth {
    /// Rate of traffic to the container, bits/s.
    pub ingress_rate: u64,
    /// Burst of traffic to the container, bits.
    pub ingress_burst: u64,
    /// Rate of traffic from the container, bits/s.
    pub egress_rate: u64,
    /// Burst of traffic from the container, bits.
    pub egress_burst: u64,
}

impl Bandwidth {
    /// Checks the limits without touching the kernel, so a bad config fails before anything is
    /// created: each direction has both a rate and a burst or neither, each at least 8 bits
    /// (the kernel counts bytes), and a burst of at most 4 GiB (the kernel's 32-bit field).
    pub fn validate(&self) -> Result<(), LinkError> {
        self.ingress()?;
        self.egress()?;
        Ok(())
    }

    /// Whether neither direction is shaped.
    pub fn is_unlimited(&self) -> bool {
        *self == Bandwidth::default()
    }

    fn ingress(&self) -> Result<Option<Tbf>, LinkError> {
        Tbf::from_bits(self.ingress_rate, self.ingress_burst, "ingress")
    }

    fn egress(&self) -> Result<Option<Tbf>, LinkError> {
        Tbf::from_bits(self.egress_rate, self.egress_burst, "egress")
    }
}

/// The ifb that shapes `host_veth`'s egress: netd's `vnd` prefix becomes `bnd` (so the pair is
/// recognisable and the name as short); any other name gets `bnd` and a hash of it, 15 bytes.
pub fn ifb_name(host_veth: &str) -> String {
    match host_veth.strip_prefix("vnd") {
        Some(rest) if !rest.is_empty() => format!("bnd{rest}"),
        _ => {
            // FNV-1a, as for the veth names: stable across releases.
            let hash = host_veth.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            format!("bnd{:012x}", hash & 0xffff_ffff_ffff)
        }
    }
}

/// Queue length in time on top of the burst: the reference plugin's `latency`.
const LATENCY_MS: u64 = 25;
/// The kernel's packet-scheduler tick, `PSCHED_TICKS2NS(1)` (`1 << PSCHED_SHIFT`), which
/// `/proc/net/psched` reports as its second field.
const NS_PER_TICK: u128 = 64;
/// `TC_LINKLAYER_ETHERNET`: rates count bytes as sent, so no rate table is needed.
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// The cell size `tc` derives for its rate table with its default 2047-byte MTU. Without a
/// table the kernel ignores it; sent anyway so requests match `tc`'s.
const TC_DEFAULT_CELL_LOG: u8 = 3;
/// `struct tc_tbf_qopt`: two `tc_ratespec` (12 bytes each), then limit, buffer, mtu.
const TBF_QOPT_LEN: usize = 36;
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;

/// `1:`, the TBF's handle (as the reference plugin uses).
const TBF_HANDLE: TcHandle = TcHandle { major: 1, minor: 0 };
/// `ffff:`, the handle every ingress qdisc has.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// The redirect filter's priority (`pref`); with a fixed handle it makes a second ADD a
/// replacement, not a second filter.
const FILTER_PRIO: u16 = 1;
/// `800::800`: the first node of the root hash table `u32` creates by itself.
const FILTER_HANDLE: u32 = 0x8000_0800;
/// `ETH_P_ALL`: the filter sees every protocol.
const ETH_P_ALL: u16 = 0x0003;

/// One direction's token bucket, in the kernel's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tbf {
    /// Bytes per second.
    pub(super) rate: u64,
    /// Bytes the bucket holds.
    pub(super) burst: u32,
}

impl Tbf {
    /// The bucket for `rate` bits/s and `burst` bits, `None` when both are 0. `direction`
    /// (`ingress`/`egress`) names the config fields in errors.
    pub(super) fn from_bits(
        rate: u64,
        burst: u64,
        direction: &str,
    ) -> Result<Option<Tbf>, LinkError> {
        let invalid = |what: String| LinkError::Invalid {
            what: format!("bandwidth: {what}"),
        };
        match (rate, burst) {
            (0, 0) => return Ok(None),
            (_, 0) => {
                return Err(invalid(format!(
                    "{direction}Rate is {rate} bit/s but {direction}Burst is not set; \
                     set both or neither"
                )))
            }
            (0, _) => {
                return Err(invalid(format!(
                    "{direction}Burst is {burst} bits but {direction}Rate is not set; \
                     set both or neither"
                )))
            }
            _ => {}
        }
        if rate < 8 {
            return Err(invalid(format!(
                "{direction}Rate {rate} bit/s is below 8 bit/s, the kernel's unit (a byte)"
            )));
        }
        if burst < 8 {
            return Err(invalid(format!(
                "{direction}Burst {burst} bits is below 8 bits, the kernel's unit (a byte)"
            )));
        }
        let burst = u32::try_from(burst / 8).map_err(|_| {
            invalid(format!(
                "{direction}Burst {burst} bits is over 4 GiB, the kernel's limit"
            ))
        })?;
        Ok(Some(Tbf {
            rate: rate / 8,
            burst,
        }))
    }

    /// Bytes the queue may hold: what the rate drains in [`LATENCY_MS`], plus the burst.
    pub(super) fn limit(&self) -> u32 {
        let drained = self.rate.saturating_mul(LATENCY_MS) / 1000;
        u32::try_from(drained.saturating_add(u64::from(self.burst))).unwrap_or(u32::MAX)
    }

    /// The burst as the time it takes at the rate, in scheduler ticks (`tc`'s `buffer`). The
    /// kernel prefers `TCA_TBF_BURST`, sent as well; this keeps the two consistent.
    pub(super) fn buffer_ticks(&self) -> u32 {
        let ns = u128::from(self.burst) * 1_000_000_000 / u128::from(self.rate.max(1));
        u32::try_from(ns / NS_PER_TICK).unwrap_or(u32::MAX)
    }

    /// `struct tc_tbf_qopt`: the rate (capped at `u32::MAX`, the full value going in
    /// `TCA_TBF_RATE64`), no peak rate, limit and buffer; `mtu` only matters with a peak rate.
    fn qopt(&self) -> [u8; TBF_QOPT_LEN] {
        let mut qopt = [0u8; TBF_QOPT_LEN];
        qopt[0] = TC_DEFAULT_CELL_LOG;
        qopt[1] = TC_LINKLAYER_ETHERNET;
        // overhead (2..4) 0; cell_align -1 as `tc` sets it; mpu (6..8) 0.
        qopt[4..6].copy_from_slice(&(-1i16).to_ne_bytes());
        let rate32 = u32::try_from(self.rate).unwrap_or(u32::MAX);
        qopt[8..12].copy_from_slice(&rate32.to_ne_bytes());
        // peakrate (12..24) all zero: no peak rate.
        qopt[24..28].copy_from_slice(&self.limit().to_ne_bytes());
        qopt[28..32].copy_from_slice(&self.buffer_ticks().to_ne_bytes());
        // mtu (32..36) 0.
        qopt
    }

    /// `TCA_OPTIONS` of a TBF qdisc, in `tc`'s order.
    fn options(&self) -> Vec<TcOption> {
        let nla = |kind, value: Vec<u8>| TcOption::Other(DefaultNla::new(kind, value));
        let mut options = vec![
            nla(TCA_TBF_PARMS, self.qopt().to_vec()),
            nla(TCA_TBF_BURST, self.burst.to_ne_bytes().to_vec()),
        ];
        if self.rate > u64::from(u32::MAX) {
            options.push(nla(TCA_TBF_RATE64, self.rate.to_ne_bytes().to_vec()));
        }
        options
    }

    /// For messages: `tbf rate 1000000 bit/s burst 4096 bytes`.
    fn describe(&self) -> String {
        format!(
            "tbf rate {} bit/s burst {} bytes",
            u128::from(self.rate) * 8,
            self.burst
        )
    }
}

/// The kernel's `int` interface index. An index no link can have becomes 0, which the kernel
/// answers with `ENODEV` (a plain cast of `u32::MAX` would be `TCM_IFINDEX_MAGIC_BLOCK`).
fn tc_ifindex(index: u32) -> i32 {
    i32::try_from(index).unwrap_or(0)
}

fn tc_message(index: u32, parent: TcHandle, handle: TcHandle, info: u32) -> TcMessage {
    let header = TcHeader {
        family: AddressFamily::Unspec,
        index: tc_ifindex(index),
        handle,
        parent,
        info,
    };
    TcMessage::from_parts(header, Vec::new())
}

/// `tc qdisc replace dev <index> root handle 1: tbf …`.
pub(super) fn tbf_request(index: u32, tbf: &Tbf) -> TcMessage {
    let mut msg = tc_message(index, TcHandle::ROOT, TBF_HANDLE, 0);
    msg.attributes = vec![
        TcAttribute::Kind("tbf".into()),
        TcAttribute::Options(tbf.options()),
    ];
    msg
}

/// `tc qdisc replace dev <index> handle ffff: ingress`.
pub(super) fn ingress_qdisc_request(index: u32) -> TcMessage {
    let mut msg = tc_message(index, TcHandle::INGRESS, INGRESS_HANDLE, 0);
    msg.attributes = vec![TcAttribute::Kind("ingress".into())];
    msg
}

/// `tc filter replace dev <index> parent ffff: protocol all prio 1 handle 800::800 u32 match
/// u32 0 0 action mirred egress redirect dev <ifb>`.
pub(super) fn redirect_request(index: u32, ifb: u32) -> TcMessage {
    let info = (u32::from(FILTER_PRIO) << 16) | u32::from(ETH_P_ALL.to_be());
    let mut msg = tc_message(index, INGRESS_HANDLE, FILTER_HANDLE.into(), info);

    let mut mirred = TcMirror::default();
    mirred.generic.action = TcActionType::Stolen; // what `tc` sets for a redirect
    mirred.eaction = TcMirrorActionType::EgressRedir;
    mirred.ifindex = ifb;
    let mut action = TcAction::default(); // the first action of the list
    action.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirred,
        ))]),
    ];

    // One key with a zero mask matches every packet; terminal: stop at this node.
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];

    msg.attributes = vec![
        TcAttribute::Kind(TcFilterU32::KIND.into()),
        TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
            TcOption::U32(TcFilterU32Option::Selector(selector)),
        ]),
    ];
    msg
}

/// Where a qdisc of ours sits on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// The root TBF (`1:`).
    Root,
    /// The ingress qdisc (`ffff:`).
    Ingress,
}

/// The `RTM_DELQDISC` for our qdisc in `slot`: handle and kind are given, so the kernel
/// refuses (`EINVAL`/`ENOENT`) rather than remove a qdisc someone else put there.
fn qdisc_delete_request(index: u32, slot: Slot) -> TcMessage {
    let (parent, handle, kind) = match slot {
        Slot::Root => (TcHandle::ROOT, TBF_HANDLE, "tbf"),
        Slot::Ingress => (TcHandle::INGRESS, INGRESS_HANDLE, "ingress"),
    };
    let mut msg = tc_message(index, parent, handle, 0);
    msg.attributes = vec![TcAttribute::Kind(kind.into())];
    msg
}

/// `ip link add <name> mtu <mtu> up type ifb`.
pub(super) fn ifb_request(name: &str, mtu: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    msg.attributes = vec![
        LinkAttribute::IfName(name.to_string()),
        LinkAttribute::Mtu(mtu),
        LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Ifb)]),
    ];
    msg
}

impl Netlink {
    /// Shapes the traffic of the container behind host veth `index` (named `host_veth`) as
    /// `bw` says, and returns the ifb's name when egress is shaped.
    ///
    /// Idempotent and converging: the qdiscs and the filter are replaced, not added again; an
    /// existing ifb of the right name is reused; a direction now unlimited loses the shaping an
    /// earlier call gave it (for egress, the redirect and the ifb). The limits are checked
    /// before anything is changed. If the egress part fails after creating the ifb, the ifb
    /// and the redirect are removed again; other partial state goes with the veth, or with
    /// [`Netlink::clear_bandwidth`].
    pub fn set_bandwidth(
        &mut self,
        index: u32,
        host_veth: &str,
        bw: &Bandwidth,
    ) -> Result<Option<String>, LinkError> {
        let (ingress, egress) = (bw.ingress()?, bw.egress()?);
        validate_name(host_veth)?;
        let ifb = ifb_name(host_veth);
        validate_name(&ifb)?;

        match ingress {
            Some(tbf) => self.replace_tbf(index, &tbf, "traffic to the container")?,
            None => {
                self.remove_qdisc(index, Slot::Root)?;
            }
        }
        match egress {
            Some(tbf) => {
                self.shape_egress(index, &ifb, &tbf)?;
                Ok(Some(ifb))
            }
            None => {
                if self.link_by_name(&ifb)?.is_some() {
                    self.remove_qdisc(index, Slot::Ingress)?;
                    self.delete_ifb(&ifb)?;
                }
                Ok(None)
            }
        }
    }

    /// Removes the shaping of `host_veth`: the redirect and the TBF on the veth when it still
    /// exists, then its ifb. Returns whether there was an ifb to delete. Safe to repeat, and
    /// before or after the veth is deleted (the veth's qdiscs go with it). A link with the
    /// ifb's name that is not an ifb is left alone.
    pub fn clear_bandwidth(&mut self, host_veth: &str) -> Result<bool, LinkError> {
        if let Some(veth) = self.link_by_name(host_veth)? {
            // The redirect first: mirred to a vanished ifb would drop the container's traffic.
            self.remove_qdisc(veth.index, Slot::Ingress)?;
            self.remove_qdisc(veth.index, Slot::Root)?;
        }
        self.delete_ifb(&ifb_name(host_veth))
    }

    /// Egress: the ifb (created up, with the veth's MTU), its TBF, then the redirect to it.
    fn shape_egress(&mut self, veth: u32, ifb: &str, tbf: &Tbf) -> Result<(), LinkError> {
        let mtu = match self.link_by_index(veth)? {
            Some(link) => link.mtu,
            None => {
                return Err(LinkError::NotFound {
                    what: self.place(format!("host veth index {veth}")),
                })
            }
        };
        let (ifb_index, created) = self.ensure_ifb(ifb, mtu)?;
        let result = self.redirect_to_ifb(veth, ifb_index, tbf);
        if result.is_err() && created {
            // Best effort: the error being returned is the one that matters.
            let _ = self.remove_qdisc(veth, Slot::Ingress);
            let _ = self.delete_ifb(ifb);
        }
        result
    }

    fn redirect_to_ifb(&mut self, veth: u32, ifb: u32, tbf: &Tbf) -> Result<(), LinkError> {
        self.replace_tbf(ifb, tbf, "traffic from the container")?;
        let msg = RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc_request(veth));
        self.exec_on(veth, msg, NLM_F_CREATE | NLM_F_REPLACE, |link| {
            format!("add an ingress qdisc to {link}")
        })?;
        let msg = RouteNetlinkMessage::NewTrafficFilter(redirect_request(veth, ifb));
        let ifb_link = self.describe(ifb);
        // NLM_F_CREATE alone, as `tc filter replace`: an existing 800::800 is replaced.
        self.exec_on(veth, msg, NLM_F_CREATE, |link| {
            format!("redirect the traffic from the container arriving on {link} to {ifb_link}")
        })
    }

    /// `tc qdisc replace dev <index> root handle 1: tbf …`; `what` says whose traffic.
    fn replace_tbf(&mut self, index: u32, tbf: &Tbf, what: &str) -> Result<(), LinkError> {
        let msg = RouteNetlinkMessage::NewQueueDiscipline(tbf_request(index, tbf));
        self.exec_on(index, msg, NLM_F_CREATE | NLM_F_REPLACE, |link| {
            format!("shape {what} with a {} on {link}", tbf.describe())
        })
    }

    /// Deletes our qdisc in `slot`; `Ok(false)` when it is not there (or the link is gone).
    fn remove_qdisc(&mut self, index: u32, slot: Slot) -> Result<bool, LinkError> {
        let msg = RouteNetlinkMessage::DelQueueDiscipline(qdisc_delete_request(index, slot));
        match self.exec(msg, 0) {
            Ok(()) => Ok(true),
            // ENOENT: no such qdisc; EINVAL: another handle or kind there (not ours).
            Err(f) if matches!(f.errno(), Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)) => {
                Ok(false)
            }
            Err(f) => {
                let link = self.describe(index);
                let which = match slot {
                    Slot::Root => "the root tbf",
                    Slot::Ingress => "the ingress qdisc",
                };
                Err(self.error(f, format!("remove {which} of {link}")))
            }
        }
    }

    /// Creates the ifb (up), or adopts an existing one and sets it up. Returns its index and
    /// whether it was created now. A non-ifb of that name is [`LinkError::WrongKind`].
    fn ensure_ifb(&mut self, name: &str, mtu: u32) -> Result<(u32, bool), LinkError> {
        let msg = RouteNetlinkMessage::NewLink(ifb_request(name, mtu));
        let created = match self.exec(msg, NLM_F_CREATE | NLM_F_EXCL) {
            Ok(()) => true,
            Err(f) if f.errno() == Some(libc::EEXIST) => false,
            Err(f) => {
                let op = format!("create ifb {name} to shape traffic from the container");
                return Err(self.error(f, op));
            }
        };
        let Some(link) = self.link_by_name(name)? else {
            return Err(LinkError::NotFound {
                what: self.place(format!("ifb {name} (deleted while being set up)")),
            });
        };
        if link.kind.as_deref() != Some("ifb") {
            return Err(LinkError::WrongKind {
                name: self.place(link.name),
                kind: link.kind,
                expected: "ifb",
            });
        }
        if !link.up {
            self.set_up(link.index)?;
        }
        Ok((link.index, created))
    }

    /// Deletes the ifb named `name`; `Ok(false)` if there is none, or if the link of that name
    /// is not an ifb (then it is not ours, and stays).
    fn delete_ifb(&mut self, name: &str) -> Result<bool, LinkError> {
        match self.link_by_name(name)? {
            Some(link) if link.kind.as_deref() == Some("ifb") => {
                let mut msg = LinkMessage::default();
                msg.header.index = link.index;
                match self.exec(RouteNetlinkMessage::DelLink(msg), 0) {
                    Ok(()) => Ok(true),
                    Err(f) if f.errno() == Some(libc::ENODEV) => Ok(false),
                    Err(f) => Err(self.error(f, format!("delete ifb {name}"))),
                }
            }
            _ => Ok(false),
        }
    }

    /// `what`, plus the namespace when it is not the caller's.
    fn place(&self, what: String) -> String {
        match &self.ns {
            Some(ns) => format!("{what} in netns {}", ns.display()),
            None => what,
        }
    }
}
