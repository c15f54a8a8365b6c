//! The built-in IPAM (`ipam.type = "netd"`): host-local's configuration schema, semantics and
//! on-disk format, crash-safe and safe across concurrent plugin processes.
//!
//! [`Ipam`] wires three concerns: `range` decides which addresses a range may hand out and in
//! which order (pure logic), `store` owns the directory (lock, atomic reservations, scans), and
//! `index` remembers each owner's addresses so an ADD retry is answered without a directory
//! scan. Delegation to other IPAM plugins is not here (see `crate::delegate`).
//!
//! Every operation takes the store's exclusive lock for its whole duration, so concurrent
//! processes (and host-local itself, which takes the same lock) see each other's changes
//! whole. A process killed at any point leaves either no reservation or a complete one;
//! [`Ipam::release`] and [`Ipam::gc`] clean those up by owner.

mod error;
mod index;
mod range;
mod store;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use netd_config::cni::IpamConfig;
use serde::{Deserialize, Serialize};

pub use error::IpamError;
use range::RangeSet;
use store::{Locked, Store};

/// Who holds an address: one interface of one container (CNI's attachment key).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

impl Owner {
    /// Whether this owner holds a reservation whose file names `record`. A legacy host-local
    /// record carries no interface name and belongs to every interface of its container.
    pub fn holds(&self, record: &Owner) -> bool {
        self.container_id == record.container_id
            && (self.ifname == record.ifname || record.ifname.is_empty())
    }

    /// Rejects owners that the record format cannot carry unambiguously.
    fn validate(&self) -> Result<()> {
        let reason = if self.container_id.is_empty() {
            "the container ID is empty"
        } else if self.ifname.is_empty() {
            "the interface name is empty"
        } else if [&self.container_id, &self.ifname]
            .iter()
            .any(|s| s.chars().any(char::is_control) || s.trim() != s.as_str())
        {
            "container ID and interface name may not contain control characters or surrounding spaces"
        } else {
            return Ok(());
        };
        Err(IpamError::BadOwner {
            owner: self.clone(),
            reason,
        })
    }
}

/// One allocated address, as the CNI result reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The address with its range's subnet prefix length.
    pub address: IpNet,
    /// The range's gateway (default: the subnet's first address).
    pub gateway: Option<IpAddr>,
    /// Index of the range set it came from.
    pub range_set: usize,
}

/// The allocator of one network. Cheap to open; holds no lock between calls, so any number
/// of instances (in any number of processes) may share a directory.
#[derive(Debug)]
pub struct Ipam {
    store: Store,
    sets: Vec<RangeSet>,
}

type Result<T> = std::result::Result<T, IpamError>;

fn check_network_name(network: &str) -> Result<()> {
    if network.is_empty() || network == "." || network == ".." || network.contains(['/', '\0']) {
        return Err(IpamError::BadNetwork {
            name: network.to_string(),
        });
    }
    Ok(())
}

impl Ipam {
    /// Opens the store of `network`: `<ipam.dataDir or default_root>/<network>`, as
    /// host-local lays it out. Creates the directory (mode 0700) and resolves the ranges.
    pub fn open(conf: &IpamConfig, network: &str, default_root: &Path) -> Result<Ipam> {
        check_network_name(network)?;
        let sets = conf
            .range_sets()
            .iter()
            .map(|set| RangeSet::new(set))
            .collect::<Result<Vec<_>>>()?;
        if sets.is_empty() {
            return Err(IpamError::NoRanges);
        }
        let root = conf.data_dir.as_deref().unwrap_or(default_root);
        let store = Store::create(root.join(network))?;
        Ok(Ipam { store, sets })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        self.store.dir()
    }

    /// Allocates one address per range set (dual stack: two sets).
    ///
    /// A `requested` address goes to the set whose ranges contain it (else
    /// [`IpamError::NotInRange`]); sets without one get the next free address after that
    /// set's last reservation, round-robin. An owner asking again gets what it holds back
    /// (an ADD retry), and a retry after a crash completes a partial allocation. All or
    /// nothing: on error, nothing this call reserved stays reserved.
    pub fn allocate(&self, owner: &Owner, requested: &[IpAddr]) -> Result<Vec<Allocation>> {
        owner.validate()?;
        let wanted = self.place(requested)?;
        let locked = self.store.lock()?;
        let mut held = self.held(&locked, owner)?;
        self.check_requests(&locked, owner, &wanted, &mut held)?;

        // Plan every missing address before touching the disk: exhaustion then costs nothing.
        let mut plan = Vec::new();
        for (set, slot) in held.iter().enumerate() {
            if slot.is_none() {
                let (addr, dynamic) = match wanted[set] {
                    Some(addr) => (addr, false),
                    None => (
                        self.probe_free(&locked, set, locked.last_reserved(set))?,
                        true,
                    ),
                };
                plan.push(Planned { set, addr, dynamic });
            }
        }
        if plan.is_empty() {
            return Ok(self.describe(&held));
        }

        let before: Vec<IpAddr> = held.iter().flatten().copied().collect();
        let mut hint = before.clone();
        hint.extend(plan.iter().map(|p| p.addr));
        let mut reserved = Vec::new();
        match self.reserve_plan(&locked, owner, &plan, &mut hint, &mut reserved) {
            Ok(()) => {}
            Err(e) => {
                Self::roll_back(&locked, owner, &reserved, &before);
                return Err(e);
            }
        }
        for &(set, addr) in &reserved {
            held[set] = Some(addr);
        }
        Ok(self.describe(&held))
    }

    /// Releases those of `addrs` that `owner` holds; others (missing, or held by someone
    /// else) are left alone. The DEL fast path: no directory scan.
    pub fn release_addrs(&self, owner: &Owner, addrs: &[IpAddr]) -> Result<()> {
        if addrs.is_empty() {
            return Ok(());
        }
        let locked = self.store.lock()?;
        for &addr in addrs {
            if locked.read_owner(addr)?.is_some_and(|o| owner.holds(&o)) {
                locked.remove(addr)?;
            }
        }
        // Whatever of `addrs` the owner still names is either gone or someone else's now.
        let hint = index::load(&locked, owner)?;
        let kept: Vec<IpAddr> = hint
            .iter()
            .copied()
            .filter(|a| !addrs.contains(a))
            .collect();
        if kept.len() != hint.len() {
            index::save(&locked, owner, &kept)?;
        }
        Ok(())
    }

    /// Releases everything `owner` holds (directory scan); idempotent. Returns the released
    /// addresses.
    pub fn release(&self, owner: &Owner) -> Result<Vec<IpAddr>> {
        let locked = self.store.lock()?;
        let mut released = Vec::new();
        for (addr, record) in locked.scan()? {
            if owner.holds(&record) {
                locked.remove(addr)?;
                released.push(addr);
            }
        }
        index::save(&locked, owner, &[])?;
        Ok(released)
    }

    /// The addresses `owner` holds, sorted (directory scan).
    pub fn owned_by(&self, owner: &Owner) -> Result<Vec<IpAddr>> {
        let locked = self.store.lock()?;
        Ok(locked
            .scan()?
            .into_iter()
            .filter(|(_, record)| owner.holds(record))
            .map(|(addr, _)| addr)
            .collect())
    }

    /// Every reservation with its owner, sorted by address.
    pub fn allocations(&self) -> Result<Vec<(IpAddr, Owner)>> {
        self.store.lock()?.scan()
    }

    /// Releases every reservation whose owner is not in `valid` (CNI GC); returns them.
    pub fn gc(&self, valid: &[Owner]) -> Result<Vec<(IpAddr, Owner)>> {
        let locked = self.store.lock()?;
        let mut released = Vec::new();
        for (addr, record) in locked.scan()? {
            if !valid.iter().any(|v| v.holds(&record)) {
                locked.remove(addr)?;
                released.push((addr, record));
            }
        }
        index::retain(&locked, |o| valid.contains(o))?;
        Ok(released)
    }

    /// The first range set with no free address left, described (for CNI STATUS).
    pub fn exhausted(&self) -> Result<Option<String>> {
        let locked = self.store.lock()?;
        for (set, ranges) in self.sets.iter().enumerate() {
            match self.probe_free(&locked, set, locked.last_reserved(set)) {
                Ok(_) => {}
                Err(IpamError::Exhausted { .. }) => return Ok(Some(ranges.describe())),
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Which set each requested address belongs to (at most one per set).
    fn place(&self, requested: &[IpAddr]) -> Result<Vec<Option<IpAddr>>> {
        let mut wanted: Vec<Option<IpAddr>> = vec![None; self.sets.len()];
        for &addr in requested {
            let set = self
                .sets
                .iter()
                .position(|s| s.covers(addr))
                .ok_or(IpamError::NotInRange { addr })?;
            self.sets[set].check_request(addr)?;
            match wanted[set] {
                Some(first) if first != addr => {
                    return Err(IpamError::SameSet {
                        first,
                        second: addr,
                    })
                }
                _ => wanted[set] = Some(addr),
            }
        }
        Ok(wanted)
    }

    /// The set an allocatable address belongs to.
    fn set_of(&self, addr: IpAddr) -> Option<usize> {
        self.sets.iter().position(|s| s.range_of(addr).is_some())
    }

    /// What `owner` already holds, per set, according to the index (each entry verified
    /// against its reservation file).
    fn held(&self, locked: &Locked<'_>, owner: &Owner) -> Result<Vec<Option<IpAddr>>> {
        let mut held = vec![None; self.sets.len()];
        for addr in index::load(locked, owner)? {
            let Some(set) = self.set_of(addr) else {
                continue;
            };
            if held[set].is_none() && locked.read_owner(addr)?.is_some_and(|o| owner.holds(&o)) {
                held[set] = Some(addr);
            }
        }
        Ok(held)
    }

    /// Checks static requests against what the owner holds and what others hold; a request
    /// the owner already holds (even unindexed, e.g. reserved by host-local) counts as held.
    fn check_requests(
        &self,
        locked: &Locked<'_>,
        owner: &Owner,
        wanted: &[Option<IpAddr>],
        held: &mut [Option<IpAddr>],
    ) -> Result<()> {
        for (slot, want) in held.iter_mut().zip(wanted) {
            let Some(addr) = *want else { continue };
            match *slot {
                Some(h) if h == addr => {}
                Some(h) => {
                    return Err(IpamError::AlreadyHolds {
                        owner: owner.clone(),
                        held: h,
                        requested: addr,
                    })
                }
                None => match locked.read_owner(addr)? {
                    Some(by) if owner.holds(&by) => *slot = Some(addr),
                    Some(by) => return Err(IpamError::Taken { addr, by }),
                    None => {}
                },
            }
        }
        Ok(())
    }

    /// The first free address of `set` after `after`, round-robin.
    fn probe_free(&self, locked: &Locked<'_>, set: usize, after: Option<IpAddr>) -> Result<IpAddr> {
        let ranges = &self.sets[set];
        for addr in ranges.probe_order(after) {
            if !locked.is_taken(addr)? {
                return Ok(addr);
            }
        }
        Err(IpamError::Exhausted {
            range: ranges.describe(),
        })
    }

    /// Reserves the plan: index first (so the index stays a superset of the reservations),
    /// then each address, then the cursors, then one directory sync.
    fn reserve_plan(
        &self,
        locked: &Locked<'_>,
        owner: &Owner,
        plan: &[Planned],
        hint: &mut Vec<IpAddr>,
        reserved: &mut Vec<(usize, IpAddr)>,
    ) -> Result<()> {
        index::save(locked, owner, hint)?;
        for p in plan {
            let mut addr = p.addr;
            while !locked.reserve(addr, owner)? {
                // Taken between probe and link: only a writer ignoring the lock can do that.
                if !p.dynamic {
                    let by = locked.read_owner(addr)?.unwrap_or_else(|| Owner {
                        container_id: "(unknown)".into(),
                        ifname: String::new(),
                    });
                    return Err(IpamError::Taken { addr, by });
                }
                addr = self.probe_free(locked, p.set, Some(addr))?;
                hint.push(addr);
                index::save(locked, owner, hint)?;
            }
            reserved.push((p.set, addr));
        }
        for &(set, addr) in reserved.iter() {
            // Only a hint: failing to move the cursor costs round-robin once, not the ADD.
            let _ = locked.set_last_reserved(set, addr);
        }
        Ok(())
    }

    /// Best-effort undo of a failed allocation: the caller reports the original error.
    fn roll_back(
        locked: &Locked<'_>,
        owner: &Owner,
        reserved: &[(usize, IpAddr)],
        before: &[IpAddr],
    ) {
        for &(_, addr) in reserved {
            let _ = locked.remove(addr);
        }
        let _ = index::save(locked, owner, before);
    }

    fn describe(&self, held: &[Option<IpAddr>]) -> Vec<Allocation> {
        held.iter()
            .enumerate()
            .filter_map(|(set, addr)| {
                let addr = (*addr)?;
                let range = self.sets[set].range_of(addr)?;
                Some(Allocation {
                    address: IpNet::new(addr, range.subnet.prefix_len()).ok()?,
                    gateway: Some(range.gateway),
                    range_set: set,
                })
            })
            .collect()
    }
}

/// One address `allocate` is about to reserve.
struct Planned {
    set: usize,
    addr: IpAddr,
    dynamic: bool,
}
