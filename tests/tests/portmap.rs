//! Published ports and masquerade, seen from where users stand: another machine on the host's
//! network (a "peer" namespace wired to the host namespace), the host itself (its own
//! `127.0.0.1` and addresses), and containers reaching a published port through the host
//! (hairpin). Also: conflicts are refused cleanly, DEL unpublishes, and the nf_tables rule
//! count does not grow with the number of published ports (they are map elements).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netd_tests::host::Peer;
use netd_tests::net::{self, assert_no_tcp, sa, Server};
use netd_tests::{Container, Host};
use serde_json::{json, Value};

/// The default configuration publishing `maps`, with `extra` merged in.
fn publishing(host: &Host, maps: Value, extra: Value) -> Value {
    let mut conf = host.conf_with(json!({
        "capabilities": { "portMappings": true },
        "runtimeConfig": { "portMappings": maps },
    }));
    netd_tests::conf::merge(&mut conf, extra);
    conf
}

fn map(host_port: u16, container_port: u16, protocol: &str, host_ip: &str) -> Value {
    json!({
        "hostPort": host_port,
        "containerPort": container_port,
        "protocol": protocol,
        "hostIP": host_ip,
    })
}

/// TCP and UDP servers on port 80 and 5353 in `c`, answering with `banner`.
fn serve(c: &Container, banner: &str) -> [Server; 2] {
    [
        Server::tcp(&c.ns, sa(Ipv6Addr::UNSPECIFIED, 80), banner),
        Server::udp(&c.ns, sa(Ipv6Addr::UNSPECIFIED, 5353), banner),
    ]
}

#[test]
fn tcp_and_udp_reach_the_container_from_another_host() {
    let host = Host::new();
    let peer = host.peer();
    let conf = publishing(
        &host,
        json!([map(8080, 80, "tcp", ""), map(8053, 5353, "udp", "")]),
        json!({}),
    );
    let c = host.attach_with("web", &conf);
    let _servers = serve(&c, "web");

    let r = net::tcp(&peer.ns, sa(Peer::HOST4, 8080));
    assert_eq!(r.banner, "web");
    assert_eq!(
        r.peer.ip(),
        IpAddr::V4(Peer::PEER4),
        "the client's address is preserved"
    );
    let r = net::udp(&peer.ns, sa(Peer::HOST4, 8053));
    assert_eq!(r.banner, "web", "udp mapping");
    assert_eq!(r.peer.ip(), IpAddr::V4(Peer::PEER4));
    // An unpublished port is not forwarded.
    assert_no_tcp(&peer.ns, sa(Peer::HOST4, 8081));
}

#[test]
fn the_host_reaches_published_ports_on_its_own_addresses() {
    let host = Host::new();
    let _peer = host.peer();
    let conf = publishing(&host, json!([map(8080, 80, "tcp", "")]), json!({}));
    let c = host.attach_with("web", &conf);
    let _servers = serve(&c, "web");
    for addr in [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        host.net.gateway4(),
        Peer::HOST4.into(),
    ] {
        let r = net::tcp(&host.ns, sa(addr, 8080));
        assert_eq!(r.banner, "web", "host → {addr}:8080");
    }
}

#[test]
fn host_ip_publishes_on_that_address_only() {
    let host = Host::new();
    let peer = host.peer();
    let conf = publishing(
        &host,
        json!([map(9090, 80, "tcp", "172.31.0.1")]),
        json!({}),
    );
    let c = host.attach_with("web", &conf);
    let _servers = serve(&c, "web");
    assert_eq!(net::tcp(&peer.ns, sa(Peer::HOST4, 9090)).banner, "web");
    assert_eq!(net::tcp(&host.ns, sa(Peer::HOST4, 9090)).banner, "web");
    assert_no_tcp(&host.ns, sa(host.net.gateway4(), 9090));
    assert_no_tcp(&host.ns, sa(Ipv4Addr::LOCALHOST, 9090));
}

#[test]
fn ipv6_mappings() {
    let host = Host::with(|n| n.dual_stack());
    let peer = host.peer();
    let conf = publishing(
        &host,
        json!([
            map(8080, 80, "tcp", ""),
            map(8081, 80, "tcp", "fd00:beef::1"),
            map(8053, 5353, "udp", ""),
        ]),
        json!({}),
    );
    let c = host.attach_with("web6", &conf);
    let _servers = serve(&c, "web6");

    let r = net::tcp(&peer.ns, sa(Peer::HOST6, 8080));
    assert_eq!(r.banner, "web6", "unspecified hostIP publishes on IPv6 too");
    assert_eq!(
        r.peer.ip(),
        IpAddr::V6(Peer::PEER6),
        "the client's address is preserved"
    );
    assert_eq!(
        net::tcp(&peer.ns, sa(Peer::HOST4, 8080)).banner,
        "web6",
        "and on IPv4"
    );
    assert_eq!(
        net::tcp(&peer.ns, sa(Peer::HOST6, 8081)).banner,
        "web6",
        "IPv6 hostIP"
    );
    assert_no_tcp(&peer.ns, sa(Peer::HOST4, 8081));
    assert_eq!(
        net::udp(&peer.ns, sa(Peer::HOST6, 8053)).banner,
        "web6",
        "udp over IPv6"
    );
}

#[test]
fn hairpin_reaches_a_published_port_from_inside_the_network() {
    let host = Host::new();
    let _peer = host.peer();
    let conf = publishing(
        &host,
        json!([map(8080, 80, "tcp", "")]),
        json!({ "hairpinMode": true }),
    );
    let web = host.attach_with("web", &conf);
    let _servers = serve(&web, "web");
    let neighbour = host.attach("neighbour");
    for (who, from) in [("itself", &web), ("a neighbour", &neighbour)] {
        for addr in [host.net.gateway4(), Peer::HOST4.into()] {
            let r = net::tcp(&from.ns, sa(addr, 8080));
            assert_eq!(r.banner, "web", "{who} → {addr}:8080");
        }
    }
}

#[test]
fn ip_masq_shows_the_host_address_to_the_outside() {
    for masq in [true, false] {
        let host = Host::with(|n| n.dual_stack());
        let peer = host.peer();
        let server = Server::tcp(&peer.ns, sa(Ipv6Addr::UNSPECIFIED, 7000), "peer");
        let c = host.attach_with("out", &host.conf_with(json!({ "ipMasq": masq })));
        let r4 = net::tcp(&c.ns, sa(Peer::PEER4, server.local().port()));
        let r6 = net::tcp(&c.ns, sa(Peer::PEER6, server.local().port()));
        assert_eq!(r4.banner, "peer");
        if masq {
            assert_eq!(
                r4.peer.ip(),
                IpAddr::V4(Peer::HOST4),
                "ipMasq: IPv4 source is the host"
            );
            assert_eq!(
                r6.peer.ip(),
                IpAddr::V6(Peer::HOST6),
                "ipMasq: IPv6 source is the host"
            );
        } else {
            assert_eq!(
                r4.peer.ip(),
                IpAddr::V4(c.ip4()),
                "without ipMasq: the container"
            );
            assert_eq!(r6.peer.ip(), IpAddr::V6(c.ip6()));
        }
        // Traffic inside the network is never masqueraded.
        let other = host.attach_with("other", &host.conf_with(json!({ "ipMasq": masq })));
        let inner = Server::tcp(&other.ns, sa(Ipv4Addr::UNSPECIFIED, 7001), "other");
        let r = net::tcp(&c.ns, sa(other.ip4(), inner.local().port()));
        assert_eq!(
            r.peer.ip(),
            IpAddr::V4(c.ip4()),
            "masq={masq}: no NAT on the bridge"
        );
    }
}

#[test]
fn a_taken_host_port_is_refused_and_leaves_nothing() {
    let host = Host::new();
    let peer = host.peer();
    let conf = publishing(&host, json!([map(8080, 80, "tcp", "")]), json!({}));
    let first = host.attach_with("first", &conf);
    let _servers = serve(&first, "first");
    let before = host.ruleset();

    let c = netd_tests::Ns::new();
    let msg = host.add("second", &c, &conf).err_code(7);
    assert!(msg.contains("8080"), "the message names the port: {msg}");
    assert_eq!(
        host.veths(),
        vec![first.host_veth(&host.net.bridge)],
        "no second veth"
    );
    assert!(c.link("eth0").is_none(), "no container interface left");
    assert_eq!(
        host.allocations(),
        vec![IpAddr::V4(first.ip4())],
        "no second allocation"
    );
    assert_eq!(host.records().len(), 1, "no second record");
    let after = host.ruleset();
    assert_eq!(after.port_elems(), before.port_elems(), "map unchanged");
    assert_eq!(
        net::tcp(&peer.ns, sa(Peer::HOST4, 8080)).banner,
        "first",
        "still the first"
    );

    // Another protocol, or another host address, on the same port is fine.
    let udp = publishing(&host, json!([map(8080, 5353, "udp", "")]), json!({}));
    let u = host.attach_with("udp", &udp);
    let _udp_servers = serve(&u, "udp");
    assert_eq!(net::udp(&peer.ns, sa(Peer::HOST4, 8080)).banner, "udp");
}

#[test]
fn del_unpublishes_the_port() {
    let host = Host::new();
    let peer = host.peer();
    let conf = publishing(
        &host,
        json!([map(8080, 80, "tcp", ""), map(8053, 5353, "udp", "")]),
        json!({}),
    );
    let c = host.attach_with("web", &conf);
    let servers = serve(&c, "web");
    assert_eq!(net::tcp(&peer.ns, sa(Peer::HOST4, 8080)).banner, "web");
    assert_eq!(host.ruleset().port_elems(), 2);
    host.detach(&c);
    assert_no_tcp(&peer.ns, sa(Peer::HOST4, 8080));
    assert_no_tcp(&host.ns, sa(Ipv4Addr::LOCALHOST, 8080));
    host.assert_clean("after DEL of a publishing container");
    drop(servers);

    // The port is free for the next container.
    let again = host.attach_with("again", &conf);
    let _servers = serve(&again, "again");
    assert_eq!(net::tcp(&peer.ns, sa(Peer::HOST4, 8080)).banner, "again");
}

#[test]
fn port_maps_are_elements_so_rules_do_not_grow() {
    let host = Host::new();
    let conf = |port: u16| publishing(&host, json!([map(port, 80, "tcp", "")]), json!({}));
    let mut containers = vec![host.attach_with("c0", &conf(10000))];
    let one = host.ruleset();
    let rules_one = one.rules("netd");
    assert!(rules_one > 0, "netd's tables exist: {}", one.pretty());
    assert_eq!(
        one.port_elems(),
        1,
        "the port is a map element: {}",
        one.pretty()
    );
    for i in 1..20u16 {
        containers.push(host.attach_with(&format!("c{i}"), &conf(10000 + i)));
    }
    let twenty = host.ruleset();
    assert_eq!(twenty.port_elems(), 20, "one element per published port");
    assert_eq!(
        twenty.rules("netd"),
        rules_one,
        "rule count is flat: {} with 1 container, {} with 20",
        rules_one,
        twenty.rules("netd")
    );
    assert_eq!(
        twenty.all_rules(),
        one.all_rules(),
        "no rules elsewhere either"
    );

    // Spot-check that the elements work: the last container answers on its port.
    let _servers = serve(&containers[19], "c19");
    let r = net::tcp(&host.ns, sa(Ipv4Addr::LOCALHOST, 10019));
    assert_eq!(r.banner, "c19");
}

/// A port published on every address overlaps the same port on one address (and the other
/// way round): the second must be refused like an exact duplicate, or it silently steals the
/// traffic to that address (the specific map is looked up first).
#[test]
fn an_overlapping_host_ip_is_refused() {
    for (first_ip, second_ip) in [("", "172.31.0.1"), ("172.31.0.1", "")] {
        let host = Host::new();
        let peer = host.peer();
        let first = host.attach_with(
            "first",
            &publishing(&host, json!([map(8080, 80, "tcp", first_ip)]), json!({})),
        );
        let _servers = serve(&first, "first");
        let c = netd_tests::Ns::new();
        let second = publishing(&host, json!([map(8080, 80, "tcp", second_ip)]), json!({}));
        let out = host.add("second", &c, &second);
        if out.success() {
            let _s = Server::tcp(&c, sa(Ipv6Addr::UNSPECIFIED, 80), "second");
            let r = net::tcp(&peer.ns, sa(Peer::HOST4, 8080));
            panic!(
                "hostIP {second_ip:?} 8080 was accepted while {first_ip:?} 8080 is published; \
                 172.31.0.1:8080 now reaches {:?}",
                r.banner
            );
        }
        out.err_code(7);
        assert_eq!(host.veths().len(), 1, "nothing left of the refused ADD");
    }
}

/// GC of one network (even with an empty valid list) leaves another network's published
/// ports and masquerade alone: they share the `netd` tables.
#[test]
fn gc_of_one_network_keeps_another_networks_ports() {
    let host = Host::new();
    let peer = host.peer();
    let other = netd_tests::Network::new(host.tmp.path());
    let mine = host.attach_with(
        "mine",
        &publishing(
            &host,
            json!([map(8080, 80, "tcp", "")]),
            json!({ "ipMasq": true }),
        ),
    );
    let theirs_conf = other.conf_with(
        "1.0.0",
        json!({
            "ipMasq": true,
            "capabilities": { "portMappings": true },
            "runtimeConfig": { "portMappings": [map(9090, 80, "tcp", "")] },
        }),
    );
    let theirs = host.attach_with("theirs", &theirs_conf);
    let _s1 = serve(&mine, "mine");
    let _s2 = serve(&theirs, "theirs");
    let outside = Server::tcp(&peer.ns, sa(Ipv4Addr::UNSPECIFIED, 7000), "peer");

    host.gc(&[]).ok();
    assert_no_tcp(&peer.ns, sa(Peer::HOST4, 8080));
    assert_eq!(
        net::tcp(&peer.ns, sa(Peer::HOST4, 9090)).banner,
        "theirs",
        "other network's port"
    );
    let r = net::tcp(&theirs.ns, sa(Peer::PEER4, outside.local().port()));
    assert_eq!(
        r.peer.ip(),
        IpAddr::V4(Peer::HOST4),
        "other network still masqueraded"
    );
}

/// Someone flushes the ruleset (`nft flush ruleset`, a firewall reload): the next ADD
/// recreates netd's tables and its port works.
#[test]
fn tables_are_recreated_after_a_flush() {
    let host = Host::new();
    let peer = host.peer();
    let first = host.attach_with(
        "first",
        &publishing(&host, json!([map(8080, 80, "tcp", "")]), json!({})),
    );
    host.ns.exec(&["nft", "flush", "ruleset"]);
    assert!(!host.ruleset().has_table("inet", "netd"));
    let second = host.attach_with(
        "second",
        &publishing(&host, json!([map(8081, 80, "tcp", "")]), json!({})),
    );
    let _s = serve(&second, "second");
    assert_eq!(net::tcp(&peer.ns, sa(Peer::HOST4, 8081)).banner, "second");
    // DEL of the attachment whose elements were flushed still succeeds.
    host.detach(&first);
    host.detach(&second);
    host.assert_clean("after DEL following a flush");
}

/// `-p 127.0.0.1:8080:80`: published on the host's loopback only.
#[test]
fn host_ip_loopback_publishes_to_the_host_only() {
    let host = Host::new();
    let peer = host.peer();
    let conf = publishing(
        &host,
        json!([
            map(8080, 80, "tcp", "127.0.0.1"),
            map(8053, 5353, "udp", "127.0.0.1")
        ]),
        json!({}),
    );
    let c = host.attach_with("local", &conf);
    let _servers = serve(&c, "local");
    assert_eq!(
        net::tcp(&host.ns, sa(Ipv4Addr::LOCALHOST, 8080)).banner,
        "local"
    );
    assert_eq!(
        net::udp(&host.ns, sa(Ipv4Addr::LOCALHOST, 8053)).banner,
        "local"
    );
    assert_no_tcp(&peer.ns, sa(Peer::HOST4, 8080));
    assert_no_tcp(&host.ns, sa(host.net.gateway4(), 8080));
}

/// CHECK notices a published port whose map element disappeared.
#[test]
fn check_notices_a_missing_port_element() {
    let host = Host::new();
    let conf = publishing(&host, json!([map(8080, 80, "tcp", "")]), json!({}));
    let c = host.attach_with("web", &conf);
    host.check(&c).ok();
    host.ns.exec(&[
        "nft",
        "delete",
        "element",
        "inet",
        "netd",
        "ports4any",
        "{",
        "tcp",
        ".",
        "8080",
        "}",
    ]);
    assert_eq!(host.ruleset().port_elems(), 0, "the element is gone");
    let (_, msg) = host.check(&c).err();
    assert!(msg.contains("8080"), "the message names the port: {msg}");
    host.detach(&c);
    host.assert_clean("after DEL of a drifted attachment");
}

/// DEL removes the ports an attachment published even when the runtime sends a
/// configuration without `runtimeConfig`, or when the attachment's record was lost (found
/// through the allocator's reservations and the map's contents).
#[test]
fn del_unpublishes_without_runtime_config_or_record() {
    let host = Host::new();
    let a = host.attach_with(
        "a",
        &publishing(&host, json!([map(8080, 80, "tcp", "")]), json!({})),
    );
    let b = host.attach_with(
        "b",
        &publishing(&host, json!([map(8081, 80, "tcp", "")]), json!({})),
    );
    assert_eq!(host.ruleset().port_elems(), 2);

    host.del(&a.id, &a.ns.path(), &host.conf()).ok();
    assert_eq!(
        host.ruleset().port_elems(),
        1,
        "a's port removed with a bare config"
    );

    for record in host.records() {
        std::fs::remove_file(host.net.records_dir().join(record)).expect("remove record");
    }
    host.del(&b.id, &b.ns.path(), &b.conf).ok();
    host.assert_clean("after a DEL without a record");
}

/// A UDP client keeps its source port (DNS resolvers, game and VoIP clients do), so its
/// conntrack entry outlives the container it was NATed to. When the port is published again
/// by a new container (a restart gets a new address), the client's next datagrams must reach
/// the new container, not the old address (the reference portmap plugin deletes the stale
/// UDP conntrack entries for this reason).
#[test]
fn udp_flows_follow_a_republished_port() {
    let host = Host::new();
    let peer = host.peer();
    let conf = publishing(&host, json!([map(8053, 5353, "udp", "")]), json!({}));
    let client = sa(Peer::PEER4, 40053);
    let old = host.attach_with("old", &conf);
    let servers = serve(&old, "old");
    let r = net::udp_once(&peer.ns, sa(Peer::HOST4, 8053), Some(client)).expect("udp to old");
    assert_eq!(r.banner, "old");
    host.detach(&old);
    drop(servers);

    let new = host.attach_with("new", &conf);
    assert_ne!(
        new.ip4(),
        old.ip4(),
        "the new container has another address"
    );
    let _servers = serve(&new, "new");
    let got = net::udp_once(&peer.ns, sa(Peer::HOST4, 8053), Some(client));
    assert_eq!(
        got.as_ref().map(|r| r.banner.as_str()).ok(),
        Some("new"),
        "the same client flow reaches the new container: {got:?}"
    );
}
