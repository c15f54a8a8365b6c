//! Registry snapshot → DNS snapshot: which names netd answers for.
//!
//! Services give their VIP and ports, attachments give container names and addresses, and
//! every network subnet plus the VIP range becomes a reverse zone (PTR misses inside them are
//! NXDOMAIN, not forwarded). A record the DNS builder rejects (an invalid name) is skipped and
//! reported; the rest of the snapshot is unaffected. This module does no I/O.

use std::collections::HashSet;

use ipnet::IpNet;
use netd_config::netd::Protocol;
use netd_dns::{
    ContainerRecord, PortProtocol, ServicePort, ServiceRecord, ShadowedName, SnapshotBuilder,
    SnapshotError,
};

use crate::registry::model::Snapshot as RegistrySnapshot;

/// The DNS snapshot of `registry`, and the inputs it had to skip.
pub fn build(
    registry: &RegistrySnapshot,
    domain: &str,
    vip_range: IpNet,
) -> Result<(netd_dns::Snapshot, Vec<SnapshotError>), SnapshotError> {
    let mut builder = SnapshotBuilder::with_domain(domain)?;
    // The SOA serial only has to move forward; the low 32 bits of the revision do.
    builder.serial(registry.revision as u32);
    builder.reverse_zone(vip_range);
    for net in registry.networks.values() {
        for subnet in &net.subnets {
            builder.reverse_zone(*subnet);
        }
    }
    let mut skipped = Vec::new();
    for svc in registry.services.values() {
        let record = ServiceRecord {
            name: svc.name.clone(),
            namespace: svc.namespace.clone(),
            vips: vec![svc.vip],
            ports: svc
                .ports
                .iter()
                .map(|p| ServicePort {
                    name: p.name.clone(),
                    protocol: port_protocol(p.protocol),
                    port: p.port,
                })
                .collect(),
        };
        if let Err(e) = builder.service(&record) {
            skipped.push(e);
        }
    }
    for att in registry.attachments.values() {
        if att.names.is_empty() {
            continue;
        }
        let record = ContainerRecord {
            names: att.names.clone(),
            addresses: att.ips.clone(),
        };
        if let Err(e) = builder.container(&record) {
            skipped.push(e);
        }
    }
    Ok((builder.build(), skipped))
}

fn port_protocol(p: Protocol) -> PortProtocol {
    match p {
        Protocol::Http => PortProtocol::Http,
        Protocol::Tcp => PortProtocol::Tcp,
        Protocol::Grpc => PortProtocol::Grpc,
    }
}

/// Remembers which problems were already logged, so a name shadowed for hours is reported once
/// (and again only after it was resolved and came back).
#[derive(Debug, Default)]
pub struct Reported {
    seen: HashSet<String>,
}

impl Reported {
    /// The lines not reported in the previous round; forgets the ones that went away.
    pub fn fresh(&mut self, shadowed: &[ShadowedName], skipped: &[SnapshotError]) -> Vec<String> {
        let now: HashSet<String> = shadowed
            .iter()
            .map(|s| {
                format!(
                    "DNS name {} of {} is shadowed by {}",
                    s.name.trim_end_matches('.'),
                    s.dropped,
                    s.kept
                )
            })
            .chain(skipped.iter().map(|e| format!("DNS: skipped {e}")))
            .collect();
        let mut fresh: Vec<String> = now.difference(&self.seen).cloned().collect();
        fresh.sort();
        self.seen = now;
        fresh
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::Arc;

    use netd_config::netd::{Attachment, Network, Service, ServicePort as ApiPort};
    use netd_dns::proto::rr::{Name, RecordType};
    use netd_dns::{answer, Answer};

    use super::*;

    fn registry() -> RegistrySnapshot {
        let mut snap = RegistrySnapshot {
            revision: 7,
            ..RegistrySnapshot::default()
        };
        let net = Network {
            name: "netd".into(),
            subnets: vec!["10.89.0.0/24".parse().unwrap()],
            mesh: false,
            isolate: false,
            bridge: "netd0".into(),
            revision: 1,
        };
        Arc::make_mut(&mut snap.networks).insert("netd".into(), Arc::new(net));
        let svc = Service {
            name: "web".into(),
            namespace: "default".into(),
            ports: vec![ApiPort {
                name: None,
                port: 80,
                protocol: Protocol::Http,
                host_port: None,
            }],
            vip: "10.96.0.10".parse().unwrap(),
            health_check: None,
            routes: Vec::new(),
            revision: 2,
        };
        Arc::make_mut(&mut snap.services).insert(svc.key(), Arc::new(svc));
        let att = Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            network: "netd".into(),
            netns: String::new(),
            ips: vec!["10.89.0.5".parse().unwrap()],
            names: vec!["db".into(), "web".into()],
            services: vec![],
            endpoints: vec![],
            node: String::new(),
            revision: 3,
        };
        Arc::make_mut(&mut snap.attachments).insert(att.key(), Arc::new(att));
        snap
    }

    fn addresses(snap: &netd_dns::Snapshot, name: &str, rtype: RecordType) -> Vec<IpAddr> {
        let qname = Name::from_ascii(name).unwrap();
        match answer(
            snap,
            &qname.into(),
            rtype,
            netd_dns::proto::rr::DNSClass::IN,
        ) {
            Answer::Records { answers, .. } => {
                answers.iter().filter_map(|r| r.data.ip_addr()).collect()
            }
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn services_and_containers_become_names() {
        let (snap, skipped) = build(&registry(), "netd.local", "10.96.0.0/16".parse().unwrap())
            .expect("valid domain");
        assert!(skipped.is_empty(), "{skipped:?}");
        let vip: IpAddr = "10.96.0.10".parse().unwrap();
        assert_eq!(
            addresses(&snap, "web.default.svc.netd.local.", RecordType::A),
            [vip]
        );
        assert_eq!(
            addresses(&snap, "db.netd.local.", RecordType::A),
            ["10.89.0.5".parse::<IpAddr>().unwrap()]
        );
        // The service's short name wins over the container alias, and that is reported once.
        assert_eq!(addresses(&snap, "web.", RecordType::A), [vip]);
        let mut reported = Reported::default();
        let lines = reported.fresh(snap.shadowed(), &skipped);
        assert!(!lines.is_empty());
        assert!(lines.iter().all(|l| l.contains("shadowed")), "{lines:?}");
        assert!(reported.fresh(snap.shadowed(), &skipped).is_empty());
    }

    #[test]
    fn unknown_addresses_in_subnets_are_ours() {
        let (snap, _) = build(&registry(), "netd.local", "10.96.0.0/16".parse().unwrap()).unwrap();
        for ptr in ["9.0.89.10.in-addr.arpa.", "9.9.96.10.in-addr.arpa."] {
            let name = Name::from_ascii(ptr).unwrap();
            let got = answer(
                &snap,
                &name.into(),
                RecordType::PTR,
                netd_dns::proto::rr::DNSClass::IN,
            );
            assert!(matches!(got, Answer::NxDomain { .. }), "{ptr}: {got:?}");
        }
    }
}
