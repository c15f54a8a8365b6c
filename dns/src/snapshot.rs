//! The immutable view of names that netd answers for, and the handle that swaps it.
//!
//! A [`Snapshot`] is built once from plain data ([`ContainerRecord`], [`ServiceRecord`]) by a
//! [`SnapshotBuilder`] and never changes: every name form is precomputed into a map keyed by the
//! lowercased name, holding the ready-made answer records (sorted by type) and the SRV
//! additionals, so a lookup is one hash probe and a slice, with no allocation. A new registry
//! state means a new snapshot published through [`SnapshotHandle::store`]; readers load it
//! without locking.
//!
//! Name forms (the cluster domain `D` defaults to `netd.local`):
//! - containers: every name and alias, bare (`web.`) and in the domain (`web.D.`);
//! - services: `svc.ns.svc.D.` (canonical), `svc.ns.` and `svc.ns.D.`, and the short `svc.` and
//!   `svc.D.`; SRV records at `_port._proto.svc.ns.svc.D.` (unnamed ports use the protocol as the
//!   port label: `_http._tcp`, `_tcp._tcp`, `_udp._udp`) and at the canonical name (all ports);
//! - PTR for container addresses (→ the container's first name in the domain) and for VIPs
//!   (→ the canonical service name);
//! - an SOA at the domain apex and at each configured reverse zone, used for negative answers.
//!
//! When two owners claim one name the more specific claim wins, in this order: canonical
//! service name; `svc.ns` forms; short `svc` in the default namespace; short `svc` in another
//! namespace (lexicographically first namespace); container names. Containers sharing a name
//! (a shared alias) are merged, like Docker's network aliases. Every other overlap is recorded
//! in [`Snapshot::shadowed`] so the caller can report it.
//!
//! This module does not answer queries (see [`answer`](mod@crate::answer)) and knows nothing
//! about the registry that feeds it.

// hashbrown's default hasher (foldhash, randomly seeded per process) rather than SipHash: a
// name is hashed on every query and tens of thousands of times per rebuild. The keys come from
// the registry; a query name only probes the table, so it cannot build collision chains.
use hashbrown::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::ops::Deref;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::rr::{LowerName, Name, Record, RecordType};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

mod builder;
pub use builder::SnapshotBuilder;

/// Cluster domain used when none is configured.
pub const DEFAULT_DOMAIN: &str = "netd.local";
/// Namespace whose services own the short (`svc`) names when several namespaces share a name.
pub const DEFAULT_NAMESPACE: &str = "default";
/// TTL of netd's own records: short, because the registry changes under them.
pub const DEFAULT_TTL: u32 = 5;

/// A container as DNS sees it: its names (container name, aliases, pod name) and addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerRecord {
    /// Names and aliases, relative (`web`) or already in the cluster domain (`web.netd.local`).
    pub names: Vec<String>,
    /// Addresses of the container (IPv4 and/or IPv6).
    pub addresses: Vec<IpAddr>,
}

/// A service as DNS sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRecord {
    /// Service name: one DNS label.
    pub name: String,
    /// Namespace: one DNS label.
    pub namespace: String,
    /// Virtual IPs (at most one per family in practice, any number accepted).
    pub vips: Vec<IpAddr>,
    /// Ports, published as SRV records.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
}

/// One port of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    /// Port name (one DNS label, without the leading `_`); unnamed ports use the protocol.
    #[serde(default)]
    pub name: Option<String>,
    /// Protocol; `http` and `grpc` are carried over TCP (`_tcp` in SRV names).
    #[serde(default)]
    pub protocol: PortProtocol,
    /// Port on the VIP.
    pub port: u16,
}

/// Protocol of a service port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    /// Opaque TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
    /// HTTP over TCP.
    Http,
    /// gRPC over TCP.
    Grpc,
}

impl PortProtocol {
    /// The SRV transport label: `_udp` for UDP, `_tcp` for everything carried over TCP.
    pub fn transport_label(self) -> &'static str {
        match self {
            PortProtocol::Udp => "_udp",
            PortProtocol::Tcp | PortProtocol::Http | PortProtocol::Grpc => "_tcp",
        }
    }

    /// The SRV port label of an unnamed port: the protocol itself.
    pub fn port_label(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "_tcp",
            PortProtocol::Udp => "_udp",
            PortProtocol::Http => "_http",
            PortProtocol::Grpc => "_grpc",
        }
    }
}

/// Why a builder input was rejected. Each names the offending input; the rest of the snapshot
/// is unaffected, so a caller can log the error and go on.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The cluster domain does not parse as a DNS name.
    #[error("DNS domain {domain:?} is not a valid DNS name: {reason}")]
    InvalidDomain {
        /// The domain as given.
        domain: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A container name or alias does not make a valid DNS name (with or without the domain).
    #[error("container name {name:?} is not a valid DNS name: {reason}")]
    InvalidContainerName {
        /// The name as given.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A service name, namespace or port name is not a single valid DNS label.
    #[error("service {namespace}/{service}: {field} {value:?} is not a valid DNS label: {reason}")]
    InvalidServiceLabel {
        /// Namespace as given.
        namespace: String,
        /// Service name as given.
        service: String,
        /// Which field: `name`, `namespace` or `port name`.
        field: &'static str,
        /// The value as given.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
}

/// Who claimed a name, for [`ShadowedName`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameOwner {
    /// A container, by its first name.
    Container {
        /// First name of the container as given.
        name: String,
    },
    /// A service.
    Service {
        /// Namespace.
        namespace: String,
        /// Service name.
        name: String,
    },
}

impl fmt::Display for NameOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameOwner::Container { name } => write!(f, "container {name}"),
            NameOwner::Service { namespace, name } => write!(f, "service {namespace}/{name}"),
        }
    }
}

/// A name claimed by two owners; `kept` answers for it, `dropped` does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowedName {
    /// The DNS name (lowercase, fully qualified).
    pub name: String,
    /// The owner that answers for the name.
    pub kept: NameOwner,
    /// The owner whose claim was ignored.
    pub dropped: NameOwner,
}

/// A zone netd is authoritative for: NXDOMAIN below its apex carries its SOA.
#[derive(Debug, Clone)]
pub(crate) struct Zone {
    pub(crate) apex: LowerName,
    /// For reverse zones, the configured network: only misses inside it are NXDOMAIN, the rest
    /// of the (octet/nibble aligned) apex is forwarded.
    pub(crate) net: Option<IpNet>,
    pub(crate) soa: Record,
}

/// Everything known about one name.
#[derive(Debug, Clone, Default)]
pub(crate) struct NameEntry {
    /// Answer records, sorted by record type code.
    pub(crate) records: Box<[Record]>,
    /// Additional records for SRV answers (the A/AAAA of the targets).
    pub(crate) additionals: Box<[Record]>,
    /// Index into [`Snapshot::zones`] of the zone holding the name, if any.
    pub(crate) zone: Option<usize>,
}

impl NameEntry {
    /// The records of one type (a contiguous run, since `records` is sorted by type).
    pub(crate) fn of_type(&self, rtype: RecordType) -> &[Record] {
        let code = u16::from(rtype);
        let start = self
            .records
            .partition_point(|r| u16::from(r.record_type()) < code);
        let len = self.records[start..].partition_point(|r| u16::from(r.record_type()) == code);
        &self.records[start..start + len]
    }
}

/// An immutable, precomputed view of netd's names. See the module docs for the name forms.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub(crate) domain: LowerName,
    pub(crate) ttl: u32,
    pub(crate) serial: u32,
    /// `zones[0]` is the cluster domain; reverse zones follow.
    pub(crate) zones: Vec<Zone>,
    pub(crate) names: HashMap<LowerName, NameEntry>,
    pub(crate) shadowed: Vec<ShadowedName>,
}

impl Default for Snapshot {
    /// An empty snapshot for the default domain: everything below it is NXDOMAIN.
    fn default() -> Self {
        SnapshotBuilder::new().build()
    }
}

impl Snapshot {
    /// A builder for the default domain.
    pub fn builder() -> SnapshotBuilder {
        SnapshotBuilder::new()
    }

    /// The cluster domain (lowercase, fully qualified).
    pub fn domain(&self) -> &Name {
        &self.domain
    }

    /// TTL of every record netd answers with, and the SOA minimum (negative-answer TTL).
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// Serial of the SOA records.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Number of distinct names answered for (including empty non-terminals and zone apexes).
    pub fn name_count(&self) -> usize {
        self.names.len()
    }

    /// Names claimed by more than one owner, and who won.
    pub fn shadowed(&self) -> &[ShadowedName] {
        &self.shadowed
    }

    /// The zone netd is authoritative for that contains `name`, when `name` has no entry:
    /// `Some` means NXDOMAIN with that zone's SOA, `None` means "not ours, forward".
    pub(crate) fn authority_for_missing(&self, name: &LowerName) -> Option<&Zone> {
        if self.domain.zone_of(name) {
            return self.zones.first();
        }
        // Only names under a reverse apex pay for parsing the address.
        self.zones.iter().skip(1).find(|zone| {
            zone.apex.zone_of(name)
                && zone.net.is_some_and(|net| {
                    name.parse_arpa_name()
                        .is_ok_and(|asked| net.contains(&asked))
                })
        })
    }

    /// Whether `name` lies in a zone netd is authoritative for (known or not).
    pub(crate) fn is_authoritative_for(&self, name: &LowerName) -> bool {
        match self.names.get(name) {
            Some(entry) => entry.zone.is_some(),
            None => self.authority_for_missing(name).is_some(),
        }
    }
}

/// The published snapshot. Cloning the handle shares it; [`SnapshotHandle::store`] swaps in a
/// new snapshot atomically and [`SnapshotHandle::load`] never blocks or locks.
#[derive(Debug, Clone)]
pub struct SnapshotHandle {
    current: Arc<ArcSwap<Snapshot>>,
}

impl Default for SnapshotHandle {
    fn default() -> Self {
        Self::new(Snapshot::default())
    }
}

impl SnapshotHandle {
    /// Publishes `snapshot` as the first version.
    pub fn new(snapshot: Snapshot) -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(snapshot)),
        }
    }

    /// Replaces the snapshot; queries that already loaded the old one finish with it.
    pub fn store(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }

    /// The current snapshot, for a short read (one query). Hold it briefly: it pins the
    /// snapshot and uses one of the thread's fast slots.
    pub fn load(&self) -> impl Deref<Target = Arc<Snapshot>> + Send + '_ {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc`, for long-lived use.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }
}
