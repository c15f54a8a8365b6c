//! The CNI contract as a runtime sees it: VERSION, the ADD result's shape in every supported
//! version, error codes and error JSON, and `prevResult` handling in a configuration list.
//!
//! Behaviour of the attachment itself (addresses, routes, traffic) is in `lifecycle.rs`.

use netd_tests::conf::plugin_conf;
use netd_tests::ns::as_vec;
use netd_tests::{Host, Ns, Plugin};
use serde_json::json;

/// Versions whose results differ in shape.
const VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

#[test]
fn version_lists_supported_versions() {
    let host = Host::new();
    for asked in ["0.4.0", "1.0.0"] {
        let out = host
            .call("VERSION")
            .stdin(json!({ "cniVersion": asked }).to_string().as_bytes())
            .run()
            .ok();
        assert_eq!(
            out["cniVersion"], asked,
            "VERSION echoes the asked version: {out}"
        );
        let supported = as_vec(out["supportedVersions"].clone());
        for v in VERSIONS {
            assert!(
                supported.contains(&json!(v)),
                "{v} missing from supportedVersions {out}"
            );
        }
    }
    // Without a configuration VERSION still answers.
    let out = host.call("VERSION").stdin(b"").run().ok();
    assert!(out["supportedVersions"].is_array(), "{out}");
}

#[test]
fn add_result_has_the_shape_of_each_version() {
    for version in VERSIONS {
        let mut host = Host::new();
        host.version = version.into();
        let c = host.attach("shape");
        let r = &c.result;
        assert_eq!(r["cniVersion"], version, "result version: {r}");

        let ifaces = as_vec(r["interfaces"].clone());
        assert_eq!(
            ifaces.len(),
            3,
            "{version}: bridge, host veth, container: {r}"
        );
        assert_eq!(
            ifaces[0]["name"],
            host.net.bridge.as_str(),
            "{version}: bridge first: {r}"
        );
        assert!(
            ifaces[0].get("sandbox").is_none(),
            "{version}: bridge has no sandbox"
        );
        let host_veth = ifaces[1]["name"].as_str().expect("host veth name");
        assert!(
            ifaces[1].get("sandbox").is_none(),
            "{version}: host veth has no sandbox"
        );
        assert!(
            host.ns.link(host_veth).is_some(),
            "{version}: {host_veth} exists in the host"
        );
        assert_eq!(ifaces[2]["name"], "eth0");
        assert_eq!(
            ifaces[2]["sandbox"],
            c.ns.path().display().to_string(),
            "{version}: the container interface names its netns"
        );
        for i in &ifaces {
            let mac = i["mac"]
                .as_str()
                .unwrap_or_else(|| panic!("{version}: no mac in {i}"));
            assert_eq!(mac.len(), 17, "{version}: mac {mac}");
            if version != "1.1.0" {
                assert!(
                    i.get("mtu").is_none(),
                    "{version}: mtu is a 1.1.0 field: {i}"
                );
            }
        }
        let actual_mac = c.ns.link("eth0").expect("eth0")["address"].clone();
        assert_eq!(
            ifaces[2]["mac"], actual_mac,
            "{version}: reported mac is the real one"
        );
        let host_mac = host.ns.link(host_veth).expect("host veth")["address"].clone();
        assert_eq!(
            ifaces[1]["mac"], host_mac,
            "{version}: host veth mac is the real one"
        );

        let ips = as_vec(r["ips"].clone());
        assert_eq!(ips.len(), 1, "{version}: one address: {r}");
        let ip = &ips[0];
        assert_eq!(
            ip["interface"], 2,
            "{version}: ips[0].interface points at eth0: {r}"
        );
        assert_eq!(
            ip["gateway"],
            host.net.gateway4().to_string(),
            "{version}: gateway"
        );
        let addr = ip["address"].as_str().expect("address");
        let prefix = format!("{}.{}.{}.", host.net.v4[0], host.net.v4[1], host.net.v4[2]);
        assert!(
            addr.starts_with(&prefix) && addr.ends_with("/24"),
            "{version}: {addr}"
        );
        if version.starts_with("0.") {
            assert_eq!(ip["version"], "4", "{version}: ips carry version: {r}");
        } else {
            assert!(
                ip.get("version").is_none(),
                "{version}: no ips[].version in 1.x: {r}"
            );
        }
        let routes = as_vec(r["routes"].clone());
        assert!(
            routes.iter().any(|rt| rt["dst"] == "0.0.0.0/0"),
            "{version}: isDefaultGateway reports the default route: {r}"
        );
        assert!(r.get("dns").is_some(), "{version}: dns is present: {r}");
    }
}

#[test]
fn unsupported_version_fails_with_code_1() {
    let host = Host::new();
    let c = Ns::new();
    for v in ["0.2.0", "9.9.9", "1.0"] {
        let conf = host.conf_with(json!({ "cniVersion": v }));
        let msg = host.add("v", &c, &conf).err_code(1);
        assert!(msg.contains(v), "the message names the version {v}: {msg}");
    }
    assert!(host.veths().is_empty(), "nothing was attached");
    assert!(c.link("eth0").is_none());
}

#[test]
fn undecodable_stdin_fails_with_code_6() {
    let host = Host::new();
    let c = Ns::new();
    for garbage in [&b"not json {"[..], b"[1, 2, 3]", b"", b"\xff\xfe"] {
        host.call("ADD")
            .container("g", &c.path(), "eth0")
            .stdin(garbage)
            .run()
            .err_code(6);
    }
}

#[test]
fn missing_environment_fails_with_code_4() {
    let host = Host::new();
    let c = Ns::new();
    let conf = host.conf();
    let base = || {
        host.call("ADD")
            .container("env", &c.path(), "eth0")
            .conf(&conf)
    };
    for var in ["CNI_NETNS", "CNI_CONTAINERID", "CNI_IFNAME"] {
        let msg = base().env(var, None).run().err_code(4);
        assert!(msg.contains(var), "the message names {var}: {msg}");
    }
    host.call("DEL")
        .env("CNI_IFNAME", Some("eth0"))
        .conf(&conf)
        .run()
        .err_code(4);
    let msg = base()
        .env("CNI_NETNS", Some("/run/netns/does-not-exist-netd"))
        .run()
        .err_code(4);
    assert!(msg.contains("does-not-exist-netd"), "{msg}");
    assert!(host.veths().is_empty(), "nothing was attached");
    assert!(host.allocations().is_empty(), "nothing was allocated");
}

#[test]
fn unknown_command_fails_with_code_4() {
    let host = Host::new();
    let c = Ns::new();
    let msg = host
        .call("FROBNICATE")
        .container("x", &c.path(), "eth0")
        .conf(&host.conf())
        .run()
        .err_code(4);
    assert!(
        msg.contains("FROBNICATE"),
        "the message names the command: {msg}"
    );
    host.call("ADD")
        .env("CNI_COMMAND", None)
        .container("x", &c.path(), "eth0")
        .conf(&host.conf())
        .run()
        .err_code(4);
}

#[test]
fn invalid_config_fails_with_code_7_naming_the_field() {
    let host = Host::new();
    let c = Ns::new();
    let sub = host.net.subnet4();
    let cases = [
        (
            json!({ "ipam": { "ranges": [[{ "subnet": sub.replace(".0/", ".5/") }]] } }),
            "ipam.ranges[0][0].subnet",
        ),
        (
            json!({ "ipam": { "ranges": [[{ "subnet": sub, "rangeStart": "192.0.2.1" }]] } }),
            "ipam.ranges[0][0].rangeStart",
        ),
        (json!({ "mtu": 20 }), "mtu"),
        (json!({ "mtu": 70000 }), "mtu"),
        (json!({ "vlan": 5000 }), "vlan"),
        (json!({ "bridge": "a-bridge-name-too-long" }), "bridge"),
        (json!({ "ipam": null }), "ipam"),
    ];
    for (patch, field) in cases {
        let conf = host.conf_with(patch.clone());
        let msg = host.add("bad", &c, &conf).err_code(7);
        assert!(
            msg.contains(field),
            "{patch}: the message names {field}: {msg}"
        );
    }
    assert!(host.veths().is_empty(), "nothing was attached");
    assert!(host.allocations().is_empty(), "nothing was allocated");
}

/// A value that does not even parse (not a CIDR, a wrong type) is still an invalid
/// *configuration* (code 7), and the message names the field, like every other config error.
#[test]
fn unparsable_values_fail_with_code_7_naming_the_field() {
    let host = Host::new();
    let c = Ns::new();
    let sub = host.net.subnet4();
    let cases = [
        (
            json!({ "ipam": { "ranges": [[{ "subnet": "10.300.0.0/33" }]] } }),
            "ipam.ranges[0][0].subnet",
        ),
        (
            json!({ "ipam": { "ranges": [[{ "subnet": sub, "gateway": "not-an-ip" }]] } }),
            "ipam.ranges[0][0].gateway",
        ),
        (json!({ "mtu": "big" }), "mtu"),
    ];
    for (patch, field) in cases {
        let conf = host.conf_with(patch.clone());
        let msg = host.add("bad", &c, &conf).err_code(7);
        assert!(
            msg.contains(field),
            "{patch}: the message names {field}: {msg}"
        );
    }
    assert!(host.veths().is_empty(), "nothing was attached");
}

#[test]
fn every_error_is_json_on_stdout_with_nonzero_exit() {
    let host = Host::new();
    let c = Ns::new();
    // CHECK without prevResult, GC without a valid list, STATUS with a broken config.
    let check = host
        .call("CHECK")
        .container("e", &c.path(), "eth0")
        .conf(&host.conf())
        .run();
    check.err();
    let gc = host.call("GC").conf(&host.conf()).run();
    gc.err();
    let status = host
        .call("STATUS")
        .conf(&host.conf_with(json!({ "mtu": 1 })))
        .run();
    status.err_code(7);
    for o in [&check, &gc] {
        assert_eq!(
            o.json["cniVersion"], "1.0.0",
            "the error speaks the config's version"
        );
    }
}

/// A real two-plugin list: the reference `bridge` plugin first (interface `net1`), netd-cni
/// second (`eth0`) with the first one's result as `prevResult`.
#[test]
fn prev_result_is_extended_in_a_conflist() {
    for version in ["0.4.0", "1.0.0"] {
        let mut host = Host::new();
        host.version = version.into();
        let other = netd_tests::Network::new(host.tmp.path());
        let mut first = other.reference_bridge(version);
        first["isDefaultGateway"] = json!(false);
        first["ipam"]["dataDir"] = json!(host.tmp.join("host-local"));
        let list = host.net.conflist(version, vec![first, host.conf()]);
        let c = Ns::new();
        let bridge = Plugin::reference("bridge");

        let prev = bridge
            .call(&host.ns, "ADD")
            .container("chain", &c.path(), "net1")
            .conf(&plugin_conf(&list, 0, None))
            .run()
            .ok();
        let prev_ifaces = as_vec(prev["interfaces"].clone()).len();
        assert!(
            prev_ifaces >= 2,
            "the reference bridge reported interfaces: {prev}"
        );
        let conf = plugin_conf(&list, 1, Some(&prev));
        let r = host.add("chain", &c, &conf).ok();

        let ifaces = as_vec(r["interfaces"].clone());
        assert_eq!(
            ifaces.len(),
            prev_ifaces + 3,
            "{version}: ours appended: {r}"
        );
        for (i, p) in as_vec(prev["interfaces"].clone()).iter().enumerate() {
            assert_eq!(
                ifaces[i]["name"], p["name"],
                "{version}: previous interfaces kept first"
            );
        }
        assert_eq!(ifaces[prev_ifaces]["name"], host.net.bridge.as_str());
        assert_eq!(ifaces[prev_ifaces + 2]["name"], "eth0");
        let ips = as_vec(r["ips"].clone());
        assert_eq!(ips.len(), 2, "{version}: previous and our address: {r}");
        assert_eq!(
            ips[0]["address"], prev["ips"][0]["address"],
            "previous address first"
        );
        assert_eq!(
            ips[0]["interface"], prev["ips"][0]["interface"],
            "its index unchanged"
        );
        assert_eq!(
            ips[1]["interface"],
            json!(prev_ifaces + 2),
            "{version}: our address points at our eth0: {r}"
        );
        if version == "0.4.0" {
            assert!(
                ips.iter().all(|ip| ip["version"] == "4"),
                "0.4.0 keeps version: {r}"
            );
        }
        assert!(c.link("net1").is_some() && c.link("eth0").is_some());

        // CHECK with the whole chain's result, then DEL in reverse order.
        let mut check = conf.clone();
        check["prevResult"] = r.clone();
        host.call("CHECK")
            .container("chain", &c.path(), "eth0")
            .conf(&check)
            .run()
            .ok();
        host.del("chain", &c.path(), &plugin_conf(&list, 1, Some(&r)))
            .ok();
        assert!(c.link("eth0").is_none(), "our interface removed");
        assert!(
            c.link("net1").is_some(),
            "the other plugin's interface untouched"
        );
        bridge
            .call(&host.ns, "DEL")
            .container("chain", &c.path(), "net1")
            .conf(&plugin_conf(&list, 0, None))
            .run()
            .ok();
        host.assert_clean(version);
    }
}

/// DEL with the conflist's `prevResult` (as libcni sends it) is accepted.
#[test]
fn del_accepts_prev_result() {
    let host = Host::new();
    let c = host.attach("delprev");
    let mut conf = host.conf();
    conf["prevResult"] = c.result.clone();
    host.del("delprev", &c.ns.path(), &conf).ok();
    host.assert_clean("after DEL with prevResult");
}
