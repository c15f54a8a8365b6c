//! [`SnapshotBuilder`]: validates plain inputs as they are added, then resolves competing
//! claims on names and precomputes every answer record of a [`Snapshot`].
//!
//! Validation happens in [`SnapshotBuilder::container`] and [`SnapshotBuilder::service`], so a
//! bad input is reported with its context and the rest still builds; [`SnapshotBuilder::build`]
//! cannot fail. The name forms and claim priorities are described in the parent module.

use hashbrown::hash_map::Entry as MapEntry;
use hashbrown::{HashMap, HashSet};
use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA, SRV};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use ipnet::IpNet;

use super::{
    ContainerRecord, NameEntry, NameOwner, ServiceRecord, ShadowedName, Snapshot, SnapshotError,
    Zone, DEFAULT_DOMAIN, DEFAULT_NAMESPACE, DEFAULT_TTL,
};

/// SRV priority and weight of service ports: one target (the VIP), no selection to do, so
/// weight 0 as RFC 2782 recommends.
const SRV_PRIORITY: u16 = 0;
const SRV_WEIGHT: u16 = 0;

/// Builds a [`Snapshot`] from plain data. Each input is validated when added; a rejected one
/// leaves the builder as it was.
#[derive(Debug, Clone)]
pub struct SnapshotBuilder {
    domain: Name,
    ttl: u32,
    serial: u32,
    default_namespace: String,
    reverse_zones: Vec<IpNet>,
    containers: Vec<ValidContainer>,
    services: Vec<ValidService>,
}

#[derive(Debug, Clone)]
struct ValidContainer {
    owner: NameOwner,
    /// Every name form (bare and in the domain), lowercase, fully qualified.
    forms: Vec<Name>,
    /// Target of PTR records for the container's addresses.
    primary: Option<Name>,
    addresses: Vec<IpAddr>,
}

#[derive(Debug, Clone)]
struct ValidService {
    owner: NameOwner,
    namespace: String,
    canonical: Name,
    /// `svc.ns.` and `svc.ns.D.`
    namespaced: [Name; 2],
    /// `svc.` and `svc.D.`
    short: [Name; 2],
    vips: Vec<IpAddr>,
    /// SRV owner name and port.
    ports: Vec<(Name, u16)>,
}

impl Default for SnapshotBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotBuilder {
    /// A builder for the default domain ([`DEFAULT_DOMAIN`]), TTL [`DEFAULT_TTL`], serial 1.
    pub fn new() -> Self {
        // A constant that parses; the fallback (root) is unreachable but keeps this panic-free.
        let domain = Name::from_ascii(DEFAULT_DOMAIN)
            .map(|mut d| {
                d.set_fqdn(true);
                d
            })
            .unwrap_or_else(|_| Name::root());
        Self::with_domain_name(domain)
    }

    /// A builder for another cluster domain (`cluster.example`; a trailing dot is optional).
    pub fn with_domain(domain: &str) -> Result<Self, SnapshotError> {
        let invalid = |reason: String| SnapshotError::InvalidDomain {
            domain: domain.to_string(),
            reason,
        };
        let mut name = Name::from_ascii(domain).map_err(|e| invalid(e.to_string()))?;
        if name.is_root() || name.num_labels() == 0 {
            return Err(invalid("the root cannot be the cluster domain".into()));
        }
        name.set_fqdn(true);
        Ok(Self::with_domain_name(name.to_lowercase()))
    }

    fn with_domain_name(domain: Name) -> Self {
        Self {
            domain,
            ttl: DEFAULT_TTL,
            serial: 1,
            default_namespace: DEFAULT_NAMESPACE.to_string(),
            reverse_zones: Vec::new(),
            containers: Vec::new(),
            services: Vec::new(),
        }
    }

    /// TTL of every answer and the SOA minimum (how long resolvers cache a negative answer).
    pub fn ttl(&mut self, seconds: u32) -> &mut Self {
        self.ttl = seconds;
        self
    }

    /// SOA serial, e.g. the registry revision (truncated).
    pub fn serial(&mut self, serial: u32) -> &mut Self {
        self.serial = serial;
        self
    }

    /// Namespace whose services own the short `svc` names (default [`DEFAULT_NAMESPACE`]).
    pub fn default_namespace(&mut self, namespace: &str) -> &mut Self {
        self.default_namespace = namespace.to_ascii_lowercase();
        self
    }

    /// Declares a network whose reverse names netd owns: a PTR query for an unknown address
    /// inside it is NXDOMAIN instead of being forwarded. Pass each network's subnet and the VIP
    /// range.
    pub fn reverse_zone(&mut self, net: IpNet) -> &mut Self {
        let net = net.trunc();
        if !self.reverse_zones.contains(&net) {
            self.reverse_zones.push(net);
        }
        self
    }

    /// Adds a container. One without addresses answers NODATA for its names; one without names
    /// adds nothing (PTR records point at its first name).
    pub fn container(&mut self, record: &ContainerRecord) -> Result<&mut Self, SnapshotError> {
        let mut forms = Vec::with_capacity(record.names.len() * 2);
        let mut primary = None;
        for given in &record.names {
            let invalid = |reason: String| SnapshotError::InvalidContainerName {
                name: given.clone(),
                reason,
            };
            let mut name = Name::from_ascii(given)
                .map_err(|e| invalid(e.to_string()))?
                .to_lowercase();
            if name.is_root() || name.num_labels() == 0 {
                return Err(invalid("empty name".into()));
            }
            name.set_fqdn(true);
            let in_domain = if self.domain.zone_of(&name) {
                name
            } else {
                let mut relative = name.clone();
                relative.set_fqdn(false);
                let in_domain = relative
                    .append_domain(&self.domain)
                    .map_err(|e| invalid(e.to_string()))?;
                forms.push(name);
                in_domain
            };
            primary.get_or_insert_with(|| in_domain.clone());
            forms.push(in_domain);
        }
        let owner = NameOwner::Container {
            name: record.names.first().cloned().unwrap_or_default(),
        };
        self.containers.push(ValidContainer {
            owner,
            forms,
            primary,
            addresses: dedup(&record.addresses),
        });
        Ok(self)
    }

    /// Adds a service.
    pub fn service(&mut self, record: &ServiceRecord) -> Result<&mut Self, SnapshotError> {
        let invalid =
            |field: &'static str, value: &str, reason: String| SnapshotError::InvalidServiceLabel {
                namespace: record.namespace.clone(),
                service: record.name.clone(),
                field,
                value: value.to_string(),
                reason,
            };
        let name = single_label(&record.name).map_err(|r| invalid("name", &record.name, r))?;
        let namespace = single_label(&record.namespace)
            .map_err(|r| invalid("namespace", &record.namespace, r))?;
        let too_long = |e: hickory_proto::ProtoError| invalid("name", &record.name, e.to_string());

        let fqdn = |mut n: Name| {
            n.set_fqdn(true);
            n
        };
        let svc_ns = name.clone().append_name(&namespace).map_err(too_long)?;
        let canonical = svc_ns
            .clone()
            .append_name(&Name::from_labels(["svc"]).map_err(too_long)?)
            .and_then(|n| n.append_domain(&self.domain))
            .map_err(too_long)?;
        let namespaced = [
            fqdn(svc_ns.clone()),
            svc_ns.append_domain(&self.domain).map_err(too_long)?,
        ];
        let short = [
            fqdn(name.clone()),
            name.append_domain(&self.domain).map_err(too_long)?,
        ];

        let mut ports = Vec::with_capacity(record.ports.len());
        for port in &record.ports {
            let port_label = match &port.name {
                Some(given) => {
                    let label = single_label(given)
                        .map_err(|r| invalid("port name", given, r))?
                        .to_ascii();
                    format!("_{label}")
                }
                None => port.protocol.port_label().to_string(),
            };
            let owner = canonical
                .prepend_label(port.protocol.transport_label())
                .and_then(|n| n.prepend_label(port_label.as_str()))
                .map_err(|e| invalid("port name", &port_label, e.to_string()))?;
            ports.push((owner.to_lowercase(), port.port));
        }

        self.services.push(ValidService {
            owner: NameOwner::Service {
                namespace: record.namespace.clone(),
                name: record.name.clone(),
            },
            namespace: record.namespace.to_ascii_lowercase(),
            canonical,
            namespaced,
            short,
            vips: dedup(&record.vips),
            ports,
        });
        Ok(self)
    }

    /// Precomputes every name's answer. Infallible: inputs were checked when added.
    pub fn build(&self) -> Snapshot {
        let mut claims = Claims::default();

        // Most specific claims first, so reports name the right winner; priorities decide
        // regardless of order.
        let mut services: Vec<&ValidService> = self.services.iter().collect();
        services.sort_by(|a, b| {
            (a.namespace.as_str(), &a.canonical).cmp(&(b.namespace.as_str(), &b.canonical))
        });
        for svc in &services {
            claims.claim(&svc.canonical, Priority::Canonical, svc, &svc.vips);
            for (owner, port) in &svc.ports {
                let srv = SRV::new(SRV_PRIORITY, SRV_WEIGHT, *port, svc.canonical.clone());
                claims.claim_srv(owner, svc, srv.clone());
                claims.claim_srv(&svc.canonical, svc, srv);
            }
            for name in &svc.namespaced {
                claims.claim(name, Priority::Namespaced, svc, &svc.vips);
            }
            let priority = if svc.namespace == self.default_namespace {
                Priority::ShortDefault
            } else {
                Priority::ShortOther
            };
            for name in &svc.short {
                claims.claim(name, priority, svc, &svc.vips);
            }
        }
        for container in &self.containers {
            for name in &container.forms {
                claims.claim_container(name, container);
            }
        }

        // Addresses of each SRV target, for the additional section.
        let targets: HashMap<&Name, &[IpAddr]> = services
            .iter()
            .map(|s| (&s.canonical, s.vips.as_slice()))
            .collect();

        let zones = self.zones();
        let mut records: HashMap<LowerName, (Vec<Record>, Vec<Record>)> = HashMap::new();
        for (name, claim) in claims.names {
            let (answers, additionals) = records.entry(LowerName::new(&name)).or_default();
            answers.extend(
                claim
                    .addresses
                    .iter()
                    .map(|ip| address_record(&name, *ip, self.ttl)),
            );
            for srv in claim.srv {
                if let Some(ips) = targets.get(&srv.target) {
                    for ip in *ips {
                        push_unique(additionals, address_record(&srv.target, *ip, self.ttl));
                    }
                }
                answers.push(Record::from_rdata(name.clone(), self.ttl, RData::SRV(srv)));
            }
        }
        for (ip, target) in self.ptr_targets() {
            let owner = Name::from(ip);
            let rdata = RData::PTR(PTR(target.clone()));
            let (answers, _) = records.entry(LowerName::new(&owner)).or_default();
            answers.push(Record::from_rdata(owner, self.ttl, rdata));
        }
        for zone in &zones {
            let (answers, _) = records.entry(zone.apex.clone()).or_default();
            if !answers.iter().any(|r| r.record_type() == RecordType::SOA) {
                answers.push(zone.soa.clone());
            }
        }

        let mut names = HashMap::with_capacity(records.len() * 5 / 4);
        for (name, (mut answers, additionals)) in records {
            answers.sort_by_key(|r| u16::from(r.record_type()));
            answers = answers.into_iter().fold(Vec::new(), |mut unique, r| {
                push_unique(&mut unique, r);
                unique
            });
            let zone = zone_index(&zones, &name);
            names.insert(
                name,
                NameEntry {
                    records: answers.into_boxed_slice(),
                    additionals: additionals.into_boxed_slice(),
                    zone,
                },
            );
        }
        add_empty_non_terminals(&mut names, &zones);

        Snapshot {
            domain: LowerName::new(&self.domain),
            ttl: self.ttl,
            serial: self.serial,
            zones,
            names,
            shadowed: claims.shadowed,
        }
    }

    /// The cluster domain zone followed by one zone per reverse network.
    fn zones(&self) -> Vec<Zone> {
        let mut zones = Vec::with_capacity(1 + self.reverse_zones.len());
        zones.push(Zone {
            apex: LowerName::new(&self.domain),
            net: None,
            soa: self.soa(&self.domain),
        });
        for net in &self.reverse_zones {
            let apex = reverse_apex(*net);
            zones.push(Zone {
                soa: self.soa(&apex),
                apex: LowerName::new(&apex),
                net: Some(*net),
            });
        }
        zones
    }

    fn soa(&self, apex: &Name) -> Record {
        let server = |label: &'static str| {
            self.domain
                .prepend_label(label)
                .unwrap_or_else(|_| self.domain.clone())
        };
        let soa = SOA::new(
            server("ns"),
            server("hostmaster"),
            self.serial,
            3600,
            600,
            86400,
            self.ttl,
        );
        Record::from_rdata(apex.clone(), self.ttl, RData::SOA(soa))
    }

    /// PTR targets: container addresses → first name in the domain; VIPs → canonical name.
    fn ptr_targets(&self) -> Vec<(IpAddr, &Name)> {
        let containers = self.containers.iter().flat_map(|c| {
            c.primary
                .iter()
                .flat_map(|p| c.addresses.iter().map(move |ip| (*ip, p)))
        });
        let services = self
            .services
            .iter()
            .flat_map(|s| s.vips.iter().map(move |ip| (*ip, &s.canonical)));
        containers.chain(services).collect()
    }
}

/// How specific a claim on a name is; higher wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Priority {
    Container,
    ShortOther,
    ShortDefault,
    Namespaced,
    Canonical,
}

#[derive(Debug)]
struct Claim {
    priority: Priority,
    owner: NameOwner,
    addresses: Vec<IpAddr>,
    srv: Vec<SRV>,
}

#[derive(Debug, Default)]
struct Claims {
    names: HashMap<Name, Claim>,
    shadowed: Vec<ShadowedName>,
}

impl Claims {
    fn claim(&mut self, name: &Name, priority: Priority, svc: &ValidService, addrs: &[IpAddr]) {
        self.insert(name, priority, &svc.owner, addrs, None);
    }

    fn claim_srv(&mut self, name: &Name, svc: &ValidService, srv: SRV) {
        self.insert(name, Priority::Canonical, &svc.owner, &[], Some(srv));
    }

    fn claim_container(&mut self, name: &Name, container: &ValidContainer) {
        self.insert(
            name,
            Priority::Container,
            &container.owner,
            &container.addresses,
            None,
        );
    }

    fn insert(
        &mut self,
        name: &Name,
        priority: Priority,
        owner: &NameOwner,
        addrs: &[IpAddr],
        srv: Option<SRV>,
    ) {
        match self.names.entry(name.clone()) {
            MapEntry::Vacant(slot) => {
                slot.insert(Claim {
                    priority,
                    owner: owner.clone(),
                    addresses: addrs.to_vec(),
                    srv: srv.into_iter().collect(),
                });
            }
            MapEntry::Occupied(mut slot) => {
                let claim = slot.get_mut();
                let same_owner = claim.owner == *owner;
                let shared_alias =
                    priority == Priority::Container && claim.priority == Priority::Container;
                if same_owner || shared_alias {
                    // The same service adding SRV records to its own name, or containers
                    // sharing an alias: merge.
                    for ip in addrs {
                        if !claim.addresses.contains(ip) {
                            claim.addresses.push(*ip);
                        }
                    }
                    claim.srv.extend(srv);
                } else if priority > claim.priority {
                    self.shadowed.push(ShadowedName {
                        name: name.to_ascii(),
                        kept: owner.clone(),
                        dropped: claim.owner.clone(),
                    });
                    *claim = Claim {
                        priority,
                        owner: owner.clone(),
                        addresses: addrs.to_vec(),
                        srv: srv.into_iter().collect(),
                    };
                } else {
                    self.shadowed.push(ShadowedName {
                        name: name.to_ascii(),
                        kept: claim.owner.clone(),
                        dropped: owner.clone(),
                    });
                }
            }
        }
    }
}

/// Parses one DNS label (no dots), lowercased, as a relative name.
fn single_label(value: &str) -> Result<Name, String> {
    let name = Name::from_ascii(value).map_err(|e| e.to_string())?;
    if name.num_labels() != 1 || name.is_fqdn() {
        return Err("expected exactly one label (no dots)".into());
    }
    Ok(name.to_lowercase())
}

fn dedup(addresses: &[IpAddr]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::with_capacity(addresses.len());
    for ip in addresses {
        if !out.contains(ip) {
            out.push(*ip);
        }
    }
    out
}

fn push_unique(records: &mut Vec<Record>, record: Record) {
    if !records.contains(&record) {
        records.push(record);
    }
}

fn address_record(name: &Name, ip: IpAddr, ttl: u32) -> Record {
    let rdata = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), ttl, rdata)
}

/// The reverse zone apex of a network: its prefix rounded down to a whole octet (IPv4) or
/// nibble (IPv6), e.g. `10.88.0.0/20` → `88.10.in-addr.arpa.`.
fn reverse_apex(net: IpNet) -> Name {
    let full = Name::from(net.network());
    let (bits_per_label, address_labels) = match net {
        IpNet::V4(_) => (8, 4),
        IpNet::V6(_) => (4, 32),
    };
    let kept = usize::from(net.prefix_len()) / bits_per_label;
    // `arpa` and `in-addr`/`ip6` plus the leading address labels.
    full.trim_to(2 + kept.min(address_labels))
}

/// The most specific zone holding `name`.
fn zone_index(zones: &[Zone], name: &LowerName) -> Option<usize> {
    zones
        .iter()
        .enumerate()
        .filter(|(_, zone)| zone.apex.zone_of(name))
        .max_by_key(|(_, zone)| zone.apex.num_labels())
        .map(|(index, _)| index)
}

/// Inserts an empty entry for every ancestor, up to its zone apex, of each name in a zone, so
/// such names (`svc.D.`, `ns.svc.D.`) answer NODATA rather than NXDOMAIN (RFC 8020).
fn add_empty_non_terminals(names: &mut HashMap<LowerName, NameEntry>, zones: &[Zone]) {
    let mut missing = Vec::new();
    // Ancestors already walked: their own ancestors were handled then, so a walk stops at the
    // first one seen (most names share `svc.D.` and `ns.svc.D.`).
    let mut walked: HashSet<LowerName> = HashSet::new();
    for (name, entry) in names.iter() {
        let Some(zone_index) = entry.zone else {
            continue;
        };
        let Some(zone) = zones.get(zone_index) else {
            continue;
        };
        let mut ancestor = name.base_name();
        while ancestor != zone.apex && zone.apex.zone_of(&ancestor) {
            if walked.contains(&ancestor) {
                break;
            }
            if !names.contains_key(&ancestor) {
                missing.push((ancestor.clone(), zone_index));
            }
            let next = ancestor.base_name();
            walked.insert(ancestor);
            ancestor = next;
        }
    }
    for (name, zone) in missing {
        names.entry(name).or_insert_with(|| NameEntry {
            zone: Some(zone),
            ..NameEntry::default()
        });
    }
}
