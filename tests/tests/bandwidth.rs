//! The `bandwidth` capability: ADD shapes traffic to the container with a TBF on the host end
//! of its veth, and traffic from it through an ifb; DEL removes the ifb; a rate without a burst
//! is refused with code 7 before anything is created.

use netd_tests::Host;
use serde_json::{json, Value};

fn shaped(host: &Host) -> Value {
    host.conf_with(json!({
        "capabilities": {"bandwidth": true},
        "runtimeConfig": {"bandwidth": {
            "ingressRate": 1_000_000, "ingressBurst": 32_768,
            "egressRate": 2_000_000, "egressBurst": 65_536
        }}
    }))
}

fn qdisc_kinds(host: &Host, dev: &str) -> Vec<String> {
    let out = host.ns.exec(&["tc", "-j", "qdisc", "show", "dev", dev]);
    let list: Value = serde_json::from_str(&out).expect("tc -j output");
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|q| q["kind"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn add_shapes_both_directions_and_del_removes_the_ifb() {
    let host = Host::new();
    let conf = shaped(&host);
    let c = host.attach_with("bw1", &conf);
    let veth = c.host_veth(&host.net.bridge);
    let ifb = format!("bnd{}", &veth[3..]);
    assert!(
        qdisc_kinds(&host, &veth).contains(&"tbf".to_string()),
        "tbf on {veth}"
    );
    assert!(
        qdisc_kinds(&host, &veth).contains(&"ingress".to_string()),
        "ingress on {veth}"
    );
    assert!(
        qdisc_kinds(&host, &ifb).contains(&"tbf".to_string()),
        "tbf on {ifb}"
    );
    host.detach(&c);
    let links = host.ns.exec(&["ip", "-j", "link", "show"]);
    assert!(!links.contains(&ifb), "{ifb} left behind: {links}");
    host.assert_clean("after DEL of a shaped container");
}

#[test]
fn a_rate_without_a_burst_is_refused_and_leaves_nothing() {
    let host = Host::new();
    let conf = host.conf_with(json!({
        "capabilities": {"bandwidth": true},
        "runtimeConfig": {"bandwidth": {"ingressRate": 1_000_000}}
    }));
    let ns = netd_tests::Ns::new();
    let msg = host.add("bw2", &ns, &conf).err_code(7);
    assert!(msg.contains("ingressBurst"), "{msg}");
    host.assert_clean("after a refused ADD");
}
