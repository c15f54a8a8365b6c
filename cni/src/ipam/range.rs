//! Range arithmetic: which addresses of a configured range may be handed out, where a static
//! request belongs, and the round-robin probe order of dynamic allocation.
//!
//! Pure logic, no I/O. Addresses are handled as `u128` (IPv4 in the low 32 bits) so one code
//! path serves both families. Semantics are host-local's: a range allocates
//! `rangeStart..=rangeEnd` (default: network+1 ..= the last address before the IPv4 broadcast,
//! or the last IPv6 address), minus its gateway (default network+1); IPv4 network and broadcast
//! addresses are never allocatable, whatever the configuration says.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netd_config::cni::IpRange;

use super::IpamError;

/// One range with its bounds resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Range {
    /// The subnet; allocated addresses carry its prefix length.
    pub(crate) subnet: IpNet,
    /// The gateway, never allocated.
    pub(crate) gateway: IpAddr,
    start: u128,
    end: u128,
    gw: u128,
}

/// The ranges of one set, walked in configuration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RangeSet {
    ranges: Vec<Range>,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl Range {
    /// Resolves the defaults of `r` and checks that it leaves something to allocate.
    pub(crate) fn new(r: &IpRange) -> Result<Range, IpamError> {
        let subnet = r.subnet.trunc();
        let bad = |reason: String| IpamError::BadRange {
            range: subnet.to_string(),
            reason,
        };
        let v4 = subnet.addr().is_ipv4();
        let network = to_u128(subnet.network());
        let last = to_u128(subnet.broadcast());
        // IPv4 never hands out the network and broadcast addresses; IPv6 only skips the
        // network address by default (it can be configured as rangeStart, as in host-local).
        let (lowest, highest) = if v4 {
            (network.saturating_add(1), last.saturating_sub(1))
        } else {
            (network, last)
        };
        let inside = |name: &str, a: Option<IpAddr>| -> Result<Option<u128>, IpamError> {
            match a {
                Some(a) if !subnet.contains(&a) => Err(bad(format!("{name} {a} is not inside it"))),
                Some(a) => Ok(Some(to_u128(a))),
                None => Ok(None),
            }
        };
        let start = inside("rangeStart", r.range_start)?
            .unwrap_or(network.saturating_add(1))
            .max(lowest);
        let end = inside("rangeEnd", r.range_end)?
            .unwrap_or(last)
            .min(highest);
        let gw = inside("gateway", r.gateway)?.unwrap_or(network.saturating_add(1));
        if start > end {
            return Err(bad("leaves no address to allocate".to_string()));
        }
        Ok(Range {
            subnet,
            gateway: from_u128(gw, v4),
            start,
            end,
            gw,
        })
    }

    fn v4(&self) -> bool {
        self.subnet.addr().is_ipv4()
    }

    fn addr(&self, v: u128) -> IpAddr {
        from_u128(v, self.v4())
    }

    /// Whether `v` lies within the allocatable bounds (the gateway included).
    fn bounds_contain(&self, v: u128) -> bool {
        self.start <= v && v <= self.end
    }

    /// `first-last` of what is actually handed out (the gateway trimmed off either end).
    fn describe(&self) -> String {
        let first = if self.start == self.gw {
            self.start + 1
        } else {
            self.start
        };
        let last = if self.end == self.gw {
            self.end.saturating_sub(1)
        } else {
            self.end
        };
        if first > last {
            format!(
                "{} (no allocatable address besides the gateway)",
                self.subnet
            )
        } else {
            format!("{}-{}", self.addr(first), self.addr(last))
        }
    }

    /// Why `addr` (inside the subnet) cannot be requested, if it cannot.
    fn refuse(&self, addr: IpAddr) -> Option<IpamError> {
        let v = to_u128(addr);
        let what = if v == self.gw {
            "gateway"
        } else if self.v4() && addr == self.subnet.network() {
            "network address"
        } else if self.v4() && addr == self.subnet.broadcast() {
            "broadcast address"
        } else if !self.bounds_contain(v) {
            return Some(IpamError::NotInRange { addr });
        } else {
            return None;
        };
        Some(IpamError::Reserved { addr, what })
    }
}

fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        // The value came from an IPv4 address, so it fits; saturate rather than panic anyway.
        IpAddr::V4(Ipv4Addr::from(u32::try_from(v).unwrap_or(u32::MAX)))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

impl RangeSet {
    /// Resolves every range of a configured set.
    pub(crate) fn new(set: &[IpRange]) -> Result<RangeSet, IpamError> {
        if set.is_empty() {
            return Err(IpamError::NoRanges);
        }
        let ranges = set.iter().map(Range::new).collect::<Result<_, _>>()?;
        Ok(RangeSet { ranges })
    }

    /// The ranges, e.g. `10.88.0.2-10.88.0.254` (comma-separated when there are several).
    pub(crate) fn describe(&self) -> String {
        let parts: Vec<String> = self.ranges.iter().map(Range::describe).collect();
        parts.join(", ")
    }

    /// Whether some range's subnet contains `addr` (it then belongs to this set, allocatable
    /// or not).
    pub(crate) fn covers(&self, addr: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.subnet.contains(&addr))
    }

    /// The range that may hand out `addr`, or why it may not.
    pub(crate) fn check_request(&self, addr: IpAddr) -> Result<&Range, IpamError> {
        let mut refusal = IpamError::NotInRange { addr };
        for r in self.ranges.iter().filter(|r| r.subnet.contains(&addr)) {
            match r.refuse(addr) {
                None => return Ok(r),
                Some(e) => refusal = e,
            }
        }
        Err(refusal)
    }

    /// The range that hands out `addr`, when it is an allocatable address of this set.
    pub(crate) fn range_of(&self, addr: IpAddr) -> Option<&Range> {
        self.check_request(addr).ok()
    }

    /// Every allocatable address once, in round-robin order: starting right after `last`
    /// when it lies in one of the ranges (wrapping around), else at the first range's start.
    pub(crate) fn probe_order(&self, last: Option<IpAddr>) -> ProbeOrder<'_> {
        let at = last.and_then(|a| {
            let v = to_u128(a);
            let family_ok = a.is_ipv4() == self.ranges.first().is_some_and(Range::v4);
            let i = self
                .ranges
                .iter()
                .position(|r| family_ok && r.bounds_contain(v))?;
            Some(self.advance((i, v)))
        });
        let start = at.unwrap_or((0, self.ranges.first().map_or(0, |r| r.start)));
        ProbeOrder {
            set: self,
            pos: start,
            start,
            done: self.ranges.is_empty(),
        }
    }

    fn advance(&self, (i, v): (usize, u128)) -> (usize, u128) {
        match self.ranges.get(i) {
            Some(r) if v < r.end => (i, v + 1),
            _ => {
                let j = (i + 1) % self.ranges.len();
                (j, self.ranges[j].start)
            }
        }
    }
}

/// Iterator of [`RangeSet::probe_order`]: lazy, so a huge IPv6 range costs nothing beyond the
/// addresses actually probed.
pub(crate) struct ProbeOrder<'a> {
    set: &'a RangeSet,
    pos: (usize, u128),
    start: (usize, u128),
    done: bool,
}

impl Iterator for ProbeOrder<'_> {
    type Item = IpAddr;

    fn next(&mut self) -> Option<IpAddr> {
        while !self.done {
            let (i, v) = self.pos;
            self.pos = self.set.advance(self.pos);
            self.done = self.pos == self.start;
            let r = &self.set.ranges[i];
            if v != r.gw {
                return Some(r.addr(v));
            }
        }
        None
    }
}
