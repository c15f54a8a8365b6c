//! The pure answer function: one question and a [`Snapshot`] in, the response decision out.
//!
//! No sockets, no allocation: the returned records borrow the snapshot's precomputed slices,
//! and the caller (the server) serializes them. Names are compared lowercased (the snapshot's
//! keys are lowercase and hickory hands us a [`LowerName`]), so `WEB.Netd.Local` answers like
//! `web.netd.local`.
//!
//! Decisions, in order:
//! - a class other than IN/ANY: REFUSED inside netd's zones, forwarded elsewhere;
//! - a known name: its records of the asked type (all of them for ANY; zone transfers are
//!   REFUSED), else NODATA with the zone's SOA;
//! - an unknown name inside netd's domain, or an unknown address inside a configured reverse
//!   network: NXDOMAIN with the zone's SOA;
//! - anything else: [`Answer::Forward`].

use hickory_proto::rr::{DNSClass, LowerName, Record, RecordType};

use crate::snapshot::Snapshot;

/// What to answer for one question.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Answer<'a> {
    /// The name has records of the asked type: NOERROR, authoritative.
    Records {
        /// Answer section.
        answers: &'a [Record],
        /// Additional section (addresses of SRV targets).
        additionals: &'a [Record],
    },
    /// The name exists but has no record of the asked type: NOERROR with an empty answer and,
    /// inside netd's zones, the SOA in the authority section (for negative caching).
    NoData {
        /// SOA of the zone holding the name; `None` for bare names outside netd's zones.
        soa: Option<&'a Record>,
    },
    /// The name does not exist in a zone netd owns: NXDOMAIN with the zone's SOA.
    NxDomain {
        /// SOA of the zone.
        soa: &'a Record,
    },
    /// netd owns the name but will not answer this question (zone transfer, odd class).
    Refused,
    /// Not netd's name: ask the upstream servers.
    Forward,
}

/// Decides the answer to `name`/`qtype`/`qclass` from `snapshot`.
pub fn answer<'a>(
    snapshot: &'a Snapshot,
    name: &LowerName,
    qtype: RecordType,
    qclass: DNSClass,
) -> Answer<'a> {
    if qclass != DNSClass::IN && qclass != DNSClass::ANY {
        return if snapshot.is_authoritative_for(name) {
            Answer::Refused
        } else {
            Answer::Forward
        };
    }

    let Some(entry) = snapshot.names.get(name) else {
        return match snapshot.authority_for_missing(name) {
            Some(zone) => Answer::NxDomain { soa: &zone.soa },
            None => Answer::Forward,
        };
    };

    let (answers, additionals): (&[Record], &[Record]) = match qtype {
        RecordType::AXFR | RecordType::IXFR => return Answer::Refused,
        RecordType::ANY => (&entry.records, &entry.additionals),
        RecordType::SRV => (entry.of_type(RecordType::SRV), &entry.additionals),
        other => (entry.of_type(other), &[]),
    };
    if answers.is_empty() {
        let soa = entry
            .zone
            .and_then(|index| snapshot.zones.get(index))
            .map(|zone| &zone.soa);
        return Answer::NoData { soa };
    }
    Answer::Records {
        answers,
        additionals,
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use hickory_proto::rr::{Name, RData};

    use super::*;
    use crate::snapshot::{
        ContainerRecord, NameOwner, PortProtocol, ServicePort, ServiceRecord, SnapshotBuilder,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn name(s: &str) -> LowerName {
        LowerName::new(&Name::from_ascii(s).expect("test name"))
    }

    fn port(name: Option<&str>, protocol: PortProtocol, port: u16) -> ServicePort {
        ServicePort {
            name: name.map(str::to_string),
            protocol,
            port,
        }
    }

    fn snapshot() -> Snapshot {
        let mut b = SnapshotBuilder::new();
        b.ttl(7).serial(42);
        b.reverse_zone("10.88.0.0/16".parse().expect("net"));
        b.reverse_zone("fd00:88::/64".parse().expect("net"));
        b.container(&ContainerRecord {
            names: vec!["web".into(), "Frontend".into()],
            addresses: vec![ip("10.88.0.2"), ip("fd00:88::2")],
        })
        .expect("container");
        b.container(&ContainerRecord {
            names: vec!["db".into()],
            addresses: vec![ip("10.88.0.3")],
        })
        .expect("container");
        b.service(&ServiceRecord {
            name: "api".into(),
            namespace: "prod".into(),
            vips: vec![ip("10.96.0.10"), ip("fd00:96::10")],
            ports: vec![
                port(Some("http"), PortProtocol::Http, 80),
                port(None, PortProtocol::Grpc, 9090),
                port(None, PortProtocol::Udp, 53),
            ],
        })
        .expect("service");
        b.build()
    }

    fn addresses(answer: Answer<'_>) -> Vec<IpAddr> {
        match answer {
            Answer::Records { answers, .. } => answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })
                .collect(),
            other => panic!("expected records, got {other:?}"),
        }
    }

    fn ask<'a>(s: &'a Snapshot, n: &str, t: RecordType) -> Answer<'a> {
        answer(s, &name(n), t, DNSClass::IN)
    }

    #[test]
    fn container_bare_and_in_domain() {
        let s = snapshot();
        for n in [
            "web.",
            "web.netd.local.",
            "frontend.",
            "frontend.netd.local.",
        ] {
            assert_eq!(
                addresses(ask(&s, n, RecordType::A)),
                vec![ip("10.88.0.2")],
                "{n}"
            );
            assert_eq!(
                addresses(ask(&s, n, RecordType::AAAA)),
                vec![ip("fd00:88::2")],
                "{n}"
            );
        }
    }

    #[test]
    fn names_are_case_insensitive() {
        let s = snapshot();
        assert_eq!(
            addresses(ask(&s, "WEB.NeTd.LoCaL.", RecordType::A)),
            vec![ip("10.88.0.2")]
        );
        assert_eq!(
            addresses(ask(&s, "Api.PROD.Svc.Netd.Local.", RecordType::A)),
            vec![ip("10.96.0.10")]
        );
        // The record owner is the lowercase name.
        let Answer::Records { answers, .. } = ask(&s, "FRONTEND.", RecordType::A) else {
            panic!("expected records");
        };
        assert_eq!(answers[0].name.to_ascii(), "frontend.");
    }

    #[test]
    fn service_name_forms() {
        let s = snapshot();
        for n in [
            "api.",
            "api.netd.local.",
            "api.prod.",
            "api.prod.netd.local.",
            "api.prod.svc.netd.local.",
        ] {
            assert_eq!(
                addresses(ask(&s, n, RecordType::A)),
                vec![ip("10.96.0.10")],
                "{n}"
            );
            assert_eq!(
                addresses(ask(&s, n, RecordType::AAAA)),
                vec![ip("fd00:96::10")],
                "{n}"
            );
        }
    }

    #[test]
    fn srv_named_and_unnamed_ports() {
        let s = snapshot();
        let srv = |n: &str| match ask(&s, n, RecordType::SRV) {
            Answer::Records {
                answers,
                additionals,
            } => {
                let ports: Vec<(u16, String)> = answers
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::SRV(srv) => Some((srv.port, srv.target.to_ascii())),
                        _ => None,
                    })
                    .collect();
                (ports, additionals.len())
            }
            other => panic!("{n}: expected SRV records, got {other:?}"),
        };
        let target = "api.prod.svc.netd.local.".to_string();
        assert_eq!(
            srv("_http._tcp.api.prod.svc.netd.local."),
            (vec![(80, target.clone())], 2)
        );
        assert_eq!(
            srv("_grpc._tcp.api.prod.svc.netd.local."),
            (vec![(9090, target.clone())], 2)
        );
        assert_eq!(
            srv("_UDP._udp.api.prod.svc.netd.local."),
            (vec![(53, target.clone())], 2)
        );
        let (all, _) = srv("api.prod.svc.netd.local.");
        assert_eq!(all.len(), 3);
        // A port name under the wrong transport does not exist.
        assert!(matches!(
            ask(&s, "_http._udp.api.prod.svc.netd.local.", RecordType::SRV),
            Answer::NxDomain { .. }
        ));
    }

    #[test]
    fn ptr_for_containers_and_vips() {
        let s = snapshot();
        let ptr = |ip_s: &str| {
            let owner = Name::from(ip(ip_s)).to_ascii();
            match ask(&s, &owner, RecordType::PTR) {
                Answer::Records { answers, .. } => match &answers[0].data {
                    RData::PTR(p) => p.0.to_ascii(),
                    other => panic!("not a PTR: {other:?}"),
                },
                other => panic!("{ip_s}: expected PTR, got {other:?}"),
            }
        };
        assert_eq!(ptr("10.88.0.2"), "web.netd.local.");
        assert_eq!(ptr("fd00:88::2"), "web.netd.local.");
        assert_eq!(ptr("10.96.0.10"), "api.prod.svc.netd.local.");
        assert_eq!(ptr("fd00:96::10"), "api.prod.svc.netd.local.");
    }

    #[test]
    fn nxdomain_inside_the_domain_with_soa() {
        let s = snapshot();
        for n in [
            "nope.netd.local.",
            "x.api.prod.svc.netd.local.",
            "other.ns.svc.netd.local.",
        ] {
            match ask(&s, n, RecordType::A) {
                Answer::NxDomain { soa } => {
                    assert_eq!(soa.name.to_ascii(), "netd.local.", "{n}");
                    assert_eq!(soa.record_type(), RecordType::SOA);
                    assert_eq!(soa.ttl, 7);
                    let RData::SOA(data) = &soa.data else {
                        panic!("not an SOA")
                    };
                    assert_eq!((data.serial, data.minimum), (42, 7));
                }
                other => panic!("{n}: expected NXDOMAIN, got {other:?}"),
            }
        }
    }

    #[test]
    fn nodata_for_known_names_without_that_type() {
        let s = snapshot();
        // db has no IPv6 address.
        assert!(matches!(
            ask(&s, "db.netd.local.", RecordType::AAAA),
            Answer::NoData { soa: Some(_) }
        ));
        // Bare names are outside netd's zones: NODATA without an SOA.
        assert!(matches!(
            ask(&s, "db.", RecordType::MX),
            Answer::NoData { soa: None }
        ));
        // Empty non-terminals exist (RFC 8020): NODATA, not NXDOMAIN.
        for n in ["svc.netd.local.", "prod.svc.netd.local."] {
            assert!(
                matches!(ask(&s, n, RecordType::A), Answer::NoData { soa: Some(_) }),
                "{n}"
            );
        }
        // The apex answers its SOA and NODATA otherwise.
        assert!(matches!(
            ask(&s, "netd.local.", RecordType::SOA),
            Answer::Records { .. }
        ));
        assert!(matches!(
            ask(&s, "netd.local.", RecordType::A),
            Answer::NoData { soa: Some(_) }
        ));
    }

    #[test]
    fn reverse_zones_and_forwarding() {
        let s = snapshot();
        // Unknown address inside a configured network: NXDOMAIN with the reverse zone's SOA.
        match ask(&s, "9.9.88.10.in-addr.arpa.", RecordType::PTR) {
            Answer::NxDomain { soa } => assert_eq!(soa.name.to_ascii(), "88.10.in-addr.arpa."),
            other => panic!("expected NXDOMAIN, got {other:?}"),
        }
        let v6 = Name::from(ip("fd00:88::99")).to_ascii();
        assert!(matches!(
            ask(&s, &v6, RecordType::PTR),
            Answer::NxDomain { .. }
        ));
        // Known reverse name, other type: NODATA with the reverse SOA.
        assert!(matches!(
            ask(&s, "2.0.88.10.in-addr.arpa.", RecordType::A),
            Answer::NoData { soa: Some(_) }
        ));
        // Outside configured networks and outside the domain: forwarded.
        for n in [
            "1.1.168.192.in-addr.arpa.",
            "example.com.",
            "netd.local.example.",
            ".",
        ] {
            assert_eq!(ask(&s, n, RecordType::A), Answer::Forward, "{n}");
        }
        assert_eq!(
            ask(&s, "8.8.8.8.in-addr.arpa.", RecordType::PTR),
            Answer::Forward
        );
    }

    #[test]
    fn any_transfers_and_classes() {
        let s = snapshot();
        assert_eq!(
            addresses(ask(&s, "web.", RecordType::ANY)),
            vec![ip("10.88.0.2"), ip("fd00:88::2")]
        );
        assert_eq!(ask(&s, "netd.local.", RecordType::AXFR), Answer::Refused);
        assert_eq!(
            answer(&s, &name("web.netd.local."), RecordType::A, DNSClass::CH),
            Answer::Refused
        );
        assert_eq!(
            answer(&s, &name("version.bind."), RecordType::TXT, DNSClass::CH),
            Answer::Forward
        );
    }

    #[test]
    fn service_beats_container_and_default_namespace_wins_short_names() {
        let mut b = SnapshotBuilder::new();
        b.container(&ContainerRecord {
            names: vec!["api".into()],
            addresses: vec![ip("10.88.0.5")],
        })
        .expect("container");
        for (ns, vip) in [
            ("zeta", "10.96.0.3"),
            ("default", "10.96.0.1"),
            ("alpha", "10.96.0.2"),
        ] {
            b.service(&ServiceRecord {
                name: "api".into(),
                namespace: ns.into(),
                vips: vec![ip(vip)],
                ports: vec![],
            })
            .expect("service");
        }
        let s = b.build();
        assert_eq!(
            addresses(ask(&s, "api.", RecordType::A)),
            vec![ip("10.96.0.1")]
        );
        assert_eq!(
            addresses(ask(&s, "api.alpha.", RecordType::A)),
            vec![ip("10.96.0.2")]
        );
        assert_eq!(
            addresses(ask(&s, "api.zeta.svc.netd.local.", RecordType::A)),
            vec![ip("10.96.0.3")]
        );
        // The container is still reachable by PTR, and its loss of `api` is reported.
        assert!(s.shadowed().iter().any(
            |sh| sh.name == "api." && sh.dropped == NameOwner::Container { name: "api".into() }
        ));

        // Without a service in the default namespace the first namespace wins.
        let mut b = SnapshotBuilder::new();
        for (ns, vip) in [("zeta", "10.96.0.3"), ("alpha", "10.96.0.2")] {
            b.service(&ServiceRecord {
                name: "api".into(),
                namespace: ns.into(),
                vips: vec![ip(vip)],
                ports: vec![],
            })
            .expect("service");
        }
        let s = b.build();
        assert_eq!(
            addresses(ask(&s, "api.", RecordType::A)),
            vec![ip("10.96.0.2")]
        );
    }

    #[test]
    fn shared_aliases_merge() {
        let mut b = SnapshotBuilder::new();
        for (n, addr) in [("web-1", "10.88.0.2"), ("web-2", "10.88.0.3")] {
            b.container(&ContainerRecord {
                names: vec![n.into(), "web".into()],
                addresses: vec![ip(addr)],
            })
            .expect("container");
        }
        let s = b.build();
        assert_eq!(
            addresses(ask(&s, "web.netd.local.", RecordType::A)),
            vec![ip("10.88.0.2"), ip("10.88.0.3")]
        );
        assert!(s.shadowed().is_empty());
    }

    #[test]
    fn other_domain_and_names_already_in_it() {
        let mut b = SnapshotBuilder::with_domain("Cluster.Example.").expect("domain");
        b.container(&ContainerRecord {
            names: vec!["web.cluster.example".into()],
            addresses: vec![ip("10.0.0.2")],
        })
        .expect("container");
        let s = b.build();
        assert_eq!(s.domain().to_ascii(), "cluster.example.");
        assert_eq!(
            addresses(ask(&s, "web.cluster.example.", RecordType::A)),
            vec![ip("10.0.0.2")]
        );
        // No doubled domain, and no bare form for a name given inside the domain.
        assert!(matches!(
            ask(&s, "web.cluster.example.cluster.example.", RecordType::A),
            Answer::NxDomain { .. }
        ));
        assert_eq!(ask(&s, "netd.local.", RecordType::A), Answer::Forward);
    }

    #[test]
    fn invalid_inputs_are_rejected_with_context() {
        let mut b = SnapshotBuilder::new();
        let long = "a".repeat(64);
        let err = b
            .container(&ContainerRecord {
                names: vec![long],
                addresses: vec![],
            })
            .expect_err("label too long");
        assert!(err.to_string().contains("container name"), "{err}");
        let err = b
            .service(&ServiceRecord {
                name: "a.b".into(),
                namespace: "prod".into(),
                vips: vec![],
                ports: vec![],
            })
            .expect_err("dotted service name");
        assert!(err.to_string().contains("prod/a.b"), "{err}");
        let err = b
            .service(&ServiceRecord {
                name: "api".into(),
                namespace: "prod".into(),
                vips: vec![],
                ports: vec![port(Some("we.b"), PortProtocol::Tcp, 1)],
            })
            .expect_err("dotted port name");
        assert!(err.to_string().contains("port name"), "{err}");
        assert!(SnapshotBuilder::with_domain(".").is_err());
        // Nothing half-added.
        assert_eq!(b.build().name_count(), 1);
    }
}
