//! Dual stack: one IPv4 and one IPv6 range give every container two addresses, IPv6 default
//! routes via the IPv6 gateway, and IPv6 traffic between containers and to the gateway.

use std::net::{IpAddr, Ipv6Addr};

use netd_tests::net::{self, ping, sa, Server};
use netd_tests::ns::as_vec;
use netd_tests::Host;

#[test]
fn two_ranges_give_two_addresses() {
    let host = Host::with(|n| n.dual_stack());
    let c = host.attach("ds");
    let ips = c.ips();
    assert_eq!(ips.len(), 2, "one address per range set: {}", c.result);
    let v6 = c.ip6();
    assert!(
        v6.segments()[..4] == host.net.host6(0).segments()[..4],
        "{v6} is in {}",
        host.net.subnet6()
    );
    for ip in as_vec(c.result["ips"].clone()) {
        assert_eq!(ip["interface"], 2, "both point at eth0: {ip}");
    }
    let gw6 = c.result["ips"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|ip| ip["address"].as_str().is_some_and(|s| s.contains(':')))
        })
        .map(|ip| ip["gateway"].clone());
    assert_eq!(
        gw6,
        Some(host.net.gateway6().to_string().into()),
        "IPv6 gateway reported"
    );

    let mut addrs = c.ns.addrs("eth0");
    addrs.sort();
    let mut want = vec![format!("{}/24", c.ip4()), format!("{v6}/64")];
    want.sort();
    assert_eq!(addrs, want, "both addresses on eth0");
    let default6 =
        c.ns.routes("-6")
            .into_iter()
            .find(|r| r["dst"] == "default")
            .unwrap_or_else(|| panic!("no IPv6 default route: {:?}", c.ns.routes("-6")));
    assert_eq!(default6["gateway"], host.net.gateway6().to_string());
    assert!(
        host.ns
            .addrs(&host.net.bridge)
            .contains(&format!("{}/64", host.net.gateway6())),
        "the bridge holds the IPv6 gateway: {:?}",
        host.ns.addrs(&host.net.bridge)
    );
    assert_eq!(host.ns.sysctl("net/ipv6/conf/all/forwarding"), "1");
    assert_eq!(host.allocations().len(), 2, "two reservations");

    host.detach(&c);
    host.assert_clean("after DEL of a dual-stack container");
}

#[test]
fn ipv6_traffic_between_containers() {
    let host = Host::with(|n| n.dual_stack());
    let a = host.attach("a");
    let b = host.attach("b");
    assert_ne!(a.ip6(), b.ip6());
    assert!(ping(&a.ns, host.net.gateway6()), "container → IPv6 gateway");
    assert!(
        ping(&a.ns, b.ip6().into()),
        "container → container over IPv6"
    );
    assert!(ping(&host.ns, b.ip6().into()), "host → container over IPv6");

    let server = Server::tcp(&b.ns, sa(Ipv6Addr::UNSPECIFIED, 8000), "b6");
    let reply = net::tcp(&a.ns, sa(b.ip6(), server.local().port()));
    assert_eq!(reply.banner, "b6");
    assert_eq!(
        reply.peer.ip(),
        IpAddr::V6(a.ip6()),
        "no NAT between containers"
    );
    // IPv4 still works alongside.
    let reply = net::tcp(&a.ns, sa(b.ip4(), server.local().port()));
    assert_eq!(
        reply.banner, "b6",
        "the dual-stack listener answers IPv4 too"
    );
}

#[test]
fn ipv6_only_network() {
    let host = Host::new();
    let conf = host.conf_with(serde_json::json!({
        "ipam": { "ranges": [[{ "subnet": host.net.subnet6() }]] },
    }));
    let a = host.attach_with("a", &conf);
    let b = host.attach_with("b", &conf);
    assert_eq!(a.ips().len(), 1);
    assert!(ping(&a.ns, b.ip6().into()));
    host.detach(&a);
    host.detach(&b);
    host.assert_clean("after DEL on an IPv6-only network");
}

#[test]
fn delegated_host_local_dual_stack() {
    // A delegated plugin runs with the container's interface up and IPv6 off; an IPv6 address
    // in its result turns IPv6 back on, and the address carries traffic.
    let host = Host::with(|n| n.dual_stack());
    let dir = host.tmp.join("host-local");
    let conf = host.conf_with(serde_json::json!({
        "ipam": { "type": "host-local", "ranges": host.net.ranges(), "dataDir": dir },
    }));
    let a = host.attach_with("a", &conf);
    let b = host.attach_with("b", &conf);
    assert_eq!(a.ips().len(), 2, "{}", a.result);
    assert_eq!(a.ns.sysctl("net/ipv6/conf/eth0/disable_ipv6"), "0");
    assert!(a.ns.addrs("eth0").contains(&format!("{}/64", a.ip6())));
    assert!(ping(&a.ns, host.net.gateway6()), "container → IPv6 gateway");
    assert!(ping(&a.ns, b.ip6().into()), "container → container");
    host.detach(&a);
    host.detach(&b);
    host.assert_clean("after DEL of delegated dual-stack containers");
}
