//! The registry's in-memory model: an immutable [`Snapshot`] of every record, the typed
//! [`Record`]s a transaction puts or deletes, and service VIP allocation.
//!
//! A snapshot is never mutated once published: a write builds the next one from the previous
//! (cloning only the maps it touches; the values are shared `Arc`s) and swaps it in atomically,
//! so readers never lock. The store's JSON encoding of records lives here too, so the store
//! stays a dumb key/value transaction log.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;
use netd_config::netd::{Attachment, Endpoint, Network, Object, Service};
use serde::{Deserialize, Serialize};

use super::store::{StoreOp, Table};

/// A lease as stored: its expiry is not persisted (on restart every lease gets a fresh TTL, as
/// etcd does after a leader change), so keepalives never touch the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Lease id (the revision that granted it, hence unique and increasing).
    pub id: u64,
    /// Time to live in seconds.
    pub ttl_seconds: u64,
}

/// One stored record of any kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A network.
    Network(Arc<Network>),
    /// A service.
    Service(Arc<Service>),
    /// An endpoint.
    Endpoint(Arc<Endpoint>),
    /// A lease.
    Lease(LeaseRecord),
    /// A container attachment.
    Attachment(Arc<Attachment>),
}

impl Record {
    /// Store table of the record.
    pub fn table(&self) -> Table {
        match self {
            Record::Network(_) => Table::Networks,
            Record::Service(_) => Table::Services,
            Record::Endpoint(_) => Table::Endpoints,
            Record::Lease(_) => Table::Leases,
            Record::Attachment(_) => Table::Attachments,
        }
    }

    /// Key within its table.
    pub fn key(&self) -> String {
        match self {
            Record::Network(n) => n.name.clone(),
            Record::Service(s) => s.key(),
            Record::Endpoint(e) => e.key(),
            Record::Lease(l) => l.id.to_string(),
            Record::Attachment(a) => a.key(),
        }
    }

    /// Stamps the revision of the change that stores it.
    pub fn with_revision(self, revision: u64) -> Self {
        fn stamp<T: Clone>(v: Arc<T>, f: impl FnOnce(&mut T)) -> Arc<T> {
            let mut v = Arc::unwrap_or_clone(v);
            f(&mut v);
            Arc::new(v)
        }
        match self {
            Record::Network(n) => Record::Network(stamp(n, |n| n.revision = revision)),
            Record::Service(s) => Record::Service(stamp(s, |s| s.revision = revision)),
            Record::Endpoint(e) => Record::Endpoint(stamp(e, |e| e.revision = revision)),
            Record::Attachment(a) => Record::Attachment(stamp(a, |a| a.revision = revision)),
            lease @ Record::Lease(_) => lease,
        }
    }

    /// The object as watchers see it (leases are not watched).
    pub fn to_object(&self) -> Option<Object> {
        match self {
            Record::Network(n) => Some(Object::Network((**n).clone())),
            Record::Service(s) => Some(Object::Service((**s).clone())),
            Record::Endpoint(e) => Some(Object::Endpoint((**e).clone())),
            Record::Attachment(a) => Some(Object::Attachment((**a).clone())),
            Record::Lease(_) => None,
        }
    }

    /// JSON encoding for the store.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these plain structs (string keys, no maps with non-string keys) cannot
        // fail; an empty value would be caught by `decode` at the next load.
        match self {
            Record::Network(n) => serde_json::to_vec(&**n),
            Record::Service(s) => serde_json::to_vec(&**s),
            Record::Endpoint(e) => serde_json::to_vec(&**e),
            Record::Lease(l) => serde_json::to_vec(l),
            Record::Attachment(a) => serde_json::to_vec(&**a),
        }
        .unwrap_or_default()
    }

    /// Decodes a stored record.
    pub fn decode(table: Table, value: &[u8]) -> Result<Self, serde_json::Error> {
        Ok(match table {
            Table::Networks => Record::Network(Arc::new(serde_json::from_slice(value)?)),
            Table::Services => Record::Service(Arc::new(serde_json::from_slice(value)?)),
            Table::Endpoints => Record::Endpoint(Arc::new(serde_json::from_slice(value)?)),
            Table::Leases => Record::Lease(serde_json::from_slice(value)?),
            Table::Attachments => Record::Attachment(Arc::new(serde_json::from_slice(value)?)),
        })
    }
}

/// One change of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create or replace.
    Put(Record),
    /// Delete; carries the record as it was (for the watch event).
    Delete(Record),
}

impl Op {
    /// The store operation. A lease record, and an endpoint registered with a lease, are
    /// attached to that lease, so a shared store deletes them when the lease ends.
    pub fn to_store_op(&self) -> StoreOp {
        match self {
            Op::Put(r) => StoreOp::Put {
                table: r.table(),
                key: r.key(),
                value: r.encode(),
                lease: match r {
                    Record::Lease(l) => Some(l.id),
                    Record::Endpoint(e) => e.lease,
                    _ => None,
                },
            },
            Op::Delete(r) => StoreOp::Delete {
                table: r.table(),
                key: r.key(),
            },
        }
    }
}

/// Endpoints of one service by id.
pub type EndpointMap = BTreeMap<String, Arc<Endpoint>>;

/// Everything the registry knows at one revision. Immutable once published.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Revision of the last change included.
    pub revision: u64,
    /// Networks by name.
    pub networks: Arc<BTreeMap<String, Arc<Network>>>,
    /// Services by `namespace/name`.
    pub services: Arc<BTreeMap<String, Arc<Service>>>,
    /// Endpoints by service key, then id.
    pub endpoints: Arc<BTreeMap<String, Arc<EndpointMap>>>,
    /// Leases by id.
    pub leases: Arc<BTreeMap<u64, LeaseRecord>>,
    /// Attachments by `container_id/ifname`.
    pub attachments: Arc<BTreeMap<String, Arc<Attachment>>>,
}

impl Snapshot {
    /// Applies one change; used for both loading and committing, so both agree.
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Put(r) => self.put(r.clone()),
            Op::Delete(r) => self.delete(r),
        }
    }

    fn put(&mut self, r: Record) {
        match r {
            Record::Network(n) => {
                Arc::make_mut(&mut self.networks).insert(n.name.clone(), n);
            }
            Record::Service(s) => {
                Arc::make_mut(&mut self.services).insert(s.key(), s);
            }
            Record::Endpoint(e) => {
                let eps = Arc::make_mut(&mut self.endpoints)
                    .entry(e.service_key())
                    .or_default();
                Arc::make_mut(eps).insert(e.id.clone(), e);
            }
            Record::Lease(l) => {
                Arc::make_mut(&mut self.leases).insert(l.id, l);
            }
            Record::Attachment(a) => {
                Arc::make_mut(&mut self.attachments).insert(a.key(), a);
            }
        }
    }

    fn delete(&mut self, r: &Record) {
        match r {
            Record::Network(n) => {
                Arc::make_mut(&mut self.networks).remove(&n.name);
            }
            Record::Service(s) => {
                Arc::make_mut(&mut self.services).remove(&s.key());
            }
            Record::Endpoint(e) => {
                let all = Arc::make_mut(&mut self.endpoints);
                let skey = e.service_key();
                if let Some(eps) = all.get_mut(&skey) {
                    Arc::make_mut(eps).remove(&e.id);
                    if eps.is_empty() {
                        all.remove(&skey);
                    }
                }
            }
            Record::Lease(l) => {
                Arc::make_mut(&mut self.leases).remove(&l.id);
            }
            Record::Attachment(a) => {
                Arc::make_mut(&mut self.attachments).remove(&a.key());
            }
        }
    }

    /// The record stored under `key` in `table`, if any.
    pub fn get(&self, table: Table, key: &str) -> Option<Record> {
        match table {
            Table::Networks => self.networks.get(key).cloned().map(Record::Network),
            Table::Services => self.services.get(key).cloned().map(Record::Service),
            Table::Endpoints => {
                let mut parts = key.splitn(3, '/');
                let (ns, svc, id) = (parts.next()?, parts.next()?, parts.next()?);
                let e = self.endpoints.get(&format!("{ns}/{svc}"))?.get(id)?;
                Some(Record::Endpoint(e.clone()))
            }
            Table::Leases => {
                let id = key.parse().ok()?;
                self.leases.get(&id).copied().map(Record::Lease)
            }
            Table::Attachments => self.attachments.get(key).cloned().map(Record::Attachment),
        }
    }

    /// Endpoints of a service (empty when none).
    pub fn endpoints_of(&self, service_key: &str) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.endpoints
            .get(service_key)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// Every endpoint.
    pub fn all_endpoints(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.endpoints.values().flat_map(|m| m.values())
    }

    /// Number of endpoints.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.values().map(|m| m.len()).sum()
    }

    /// Every record, in dependency order (networks, services, endpoints, leases, attachments).
    pub fn records(&self) -> impl Iterator<Item = Record> + '_ {
        let nets = self.networks.values().cloned().map(Record::Network);
        let svcs = self.services.values().cloned().map(Record::Service);
        let eps = self.all_endpoints().cloned().map(Record::Endpoint);
        let leases = self.leases.values().copied().map(Record::Lease);
        let atts = self.attachments.values().cloned().map(Record::Attachment);
        nets.chain(svcs).chain(eps).chain(leases).chain(atts)
    }

    /// Every object as a watch `put`, in dependency order (networks, services, endpoints,
    /// attachments).
    pub fn objects(&self) -> impl Iterator<Item = Object> + '_ {
        let nets = self
            .networks
            .values()
            .map(|n| Object::Network((**n).clone()));
        let svcs = self
            .services
            .values()
            .map(|s| Object::Service((**s).clone()));
        let eps = self
            .all_endpoints()
            .map(|e| Object::Endpoint((**e).clone()));
        let atts = self
            .attachments
            .values()
            .map(|a| Object::Attachment((**a).clone()));
        nets.chain(svcs).chain(eps).chain(atts)
    }
}

/// Picks a VIP for `namespace/name` in `range`: a hash of the name chooses the starting point
/// and the first free address from there is taken (wrapping), skipping the range's first and
/// last address. The same name therefore gets the same VIP again after a delete and re-create,
/// unless another service took it meanwhile. `None` when the range is full.
pub fn allocate_vip(range: &IpNet, key: &str, in_use: &dyn Fn(&IpAddr) -> bool) -> Option<IpAddr> {
    let host_bits = u32::from(range.max_prefix_len() - range.prefix_len());
    if host_bits < 2 {
        return None;
    }
    // Usable offsets are 1..=size-2; cap the probe count so a /64 stays cheap.
    let size: u128 = if host_bits >= 128 {
        u128::MAX
    } else {
        1u128 << host_bits
    };
    let usable = size - 2;
    let start = u128::from(fnv1a(key.as_bytes())) % usable;
    let probes = usable.min(1 << 20);
    (0..probes).find_map(|i| {
        let offset = 1 + (start + i) % usable;
        let ip = add_offset(range.network(), offset)?;
        (!in_use(&ip)).then_some(ip)
    })
}

fn add_offset(base: IpAddr, offset: u128) -> Option<IpAddr> {
    match base {
        IpAddr::V4(b) => {
            let v = u32::from(b).checked_add(u32::try_from(offset).ok()?)?;
            Some(IpAddr::V4(Ipv4Addr::from(v)))
        }
        IpAddr::V6(b) => {
            let v = u128::from(b).checked_add(offset)?;
            Some(IpAddr::V6(Ipv6Addr::from(v)))
        }
    }
}

/// FNV-1a: a fixed, portable hash (std's hasher is randomly seeded per process).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn vip_is_stable_and_skips_taken_addresses() {
        let range: IpNet = "10.96.0.0/16".parse().unwrap();
        let a = allocate_vip(&range, "default/web", &|_| false).unwrap();
        assert_eq!(a, allocate_vip(&range, "default/web", &|_| false).unwrap());
        assert!(range.contains(&a) && a != range.network() && a != range.broadcast());
        let b = allocate_vip(&range, "default/web", &|ip| *ip == a).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn vip_range_fills_up() {
        let range: IpNet = "10.0.0.0/29".parse().unwrap();
        let mut used = HashSet::new();
        for i in 0..6 {
            let ip =
                allocate_vip(&range, &format!("default/s{i}"), &|ip| used.contains(ip)).unwrap();
            assert!(used.insert(ip));
        }
        assert!(allocate_vip(&range, "default/s7", &|ip| used.contains(ip)).is_none());
        let v6: IpNet = "fd00:96::/64".parse().unwrap();
        assert!(v6.contains(&allocate_vip(&v6, "default/x", &|_| false).unwrap()));
    }
}
