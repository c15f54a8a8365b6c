//! Many plugin processes at once, and plugins killed half-way.
//!
//! - 100 ADDs in parallel (separate processes) on one network get 100 distinct addresses and
//!   100 working attachments; 100 parallel DELs then leave nothing.
//! - An ADD killed with SIGKILL after a few milliseconds (at several delays, so the kill lands
//!   at different steps) is fully undone by GC with an empty valid list, or by a DEL of that
//!   container: no veth, no allocation, no record, no map element.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use netd_tests::plugin::{wait_bounded, DEADLINE};
use netd_tests::{net, Host, Ns, Outcome};
use serde_json::{json, Value};

const PARALLEL: u16 = 100;

/// Options that exercise every kind of state: an allocation, a veth, a published port,
/// masquerade and a MAC-check element.
fn busy_patch(port: u16) -> Value {
    json!({
        "ipMasq": true,
        "macspoofchk": true,
        "capabilities": { "portMappings": true },
        "runtimeConfig": {
            "portMappings": [{ "hostPort": port, "containerPort": 80, "protocol": "tcp" }],
        },
    })
}

/// The host's network configuration with [`busy_patch`].
fn busy_conf(host: &Host, port: u16) -> Value {
    host.conf_with(busy_patch(port))
}

#[test]
fn hundred_parallel_adds_then_hundred_parallel_dels() {
    let host = Host::new();
    let containers: Vec<(String, Ns, Value)> = (0..PARALLEL)
        .map(|i| (format!("par{i}"), Ns::new(), busy_conf(&host, 20000 + i)))
        .collect();

    let adds: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = containers
            .iter()
            .map(|(id, ns, conf)| s.spawn(|| host.add(id, ns, conf)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread"))
            .collect()
    });
    let mut addrs = HashSet::new();
    for ((id, ns, _), out) in containers.iter().zip(adds) {
        let r = out.ok();
        let addr = r["ips"][0]["address"]
            .as_str()
            .expect("address")
            .to_string();
        assert_eq!(
            ns.addrs("eth0"),
            vec![addr.clone()],
            "{id}: eth0 has its address"
        );
        assert_eq!(
            ns.link("eth0").expect("eth0")["operstate"],
            "UP",
            "{id}: eth0 up"
        );
        assert!(
            addrs.insert(addr.clone()),
            "{id}: address {addr} handed out twice"
        );
    }
    assert_eq!(addrs.len(), usize::from(PARALLEL), "distinct addresses");
    assert_eq!(
        host.ns.ports_of(&host.net.bridge).len(),
        usize::from(PARALLEL)
    );
    assert_eq!(host.allocations().len(), usize::from(PARALLEL));
    assert_eq!(host.records().len(), usize::from(PARALLEL));
    let rs = host.ruleset();
    assert_eq!(
        rs.port_elems(),
        usize::from(PARALLEL),
        "one map element per container"
    );
    assert_eq!(rs.elems("netd", "macs").len(), usize::from(PARALLEL));
    for (_, ns, _) in containers.iter().step_by(25) {
        assert!(
            net::ping(ns, host.net.gateway4()),
            "a sample container reaches the gateway"
        );
    }

    let dels: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = containers
            .iter()
            .map(|(id, ns, conf)| s.spawn(|| host.del(id, &ns.path(), conf)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("DEL thread"))
            .collect()
    });
    for out in dels {
        out.ok();
    }
    assert!(
        host.ns.ports_of(&host.net.bridge).is_empty(),
        "no port left on the bridge"
    );
    host.assert_clean("after 100 parallel DELs");
    for (id, ns, _) in &containers {
        assert!(ns.link("eth0").is_none(), "{id}: eth0 removed");
    }
}

/// How a killed ADD is cleaned up.
#[derive(Debug, Clone, Copy)]
enum Cleanup {
    Gc,
    Del,
}

/// Kill delays: a few fixed ones (on a fresh host the first kills land in the first-time
/// setup: bridge, tables), then eight spread over an ADD measured on another host, so kills
/// land at every step whatever the build profile and machine speed.
fn kill_delays() -> Vec<Duration> {
    let probe = Host::new();
    let ns = Ns::new();
    let conf = busy_conf(&probe, 29999);
    let start = std::time::Instant::now();
    probe.add("measure", &ns, &conf).ok();
    let add = start.elapsed();
    let mut delays: Vec<Duration> = [0, 1, 2, 5].map(Duration::from_millis).to_vec();
    delays.extend((1..=8).map(|k| add * k / 8));
    delays
}

fn kill_mid_add(cleanup: Cleanup) {
    let delays = kill_delays();
    let host = Host::new();
    let mut interrupted = 0;
    for (i, delay) in delays.iter().enumerate() {
        let c = Ns::new();
        let id = format!("killed{i}");
        let conf = busy_conf(&host, 30000 + i as u16);
        let mut child = host
            .call("ADD")
            .container(&id, &c.path(), "eth0")
            .conf(&conf)
            .spawn();
        std::thread::sleep(*delay);
        // SIGKILL to this child's PID only (it may have finished already).
        let _ = child.kill();
        let out = wait_bounded(child, DEADLINE);
        if out.status.code().is_none() {
            interrupted += 1;
        }
        match cleanup {
            Cleanup::Gc => host.gc(&[]).ok(),
            Cleanup::Del => host.del(&id, &c.path(), &conf).ok(),
        };
        let when = format!("{cleanup:?} after an ADD killed at {delay:?}");
        host.assert_clean(&when);
        assert!(c.link("eth0").is_none(), "{when}: container interface left");
        let temps: Vec<String> = std::fs::read_dir(host.net.ipam_store())
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| n.starts_with(".netd-tmp-"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(temps.is_empty(), "{when}: temp files left: {temps:?}");
    }
    eprintln!(
        "{cleanup:?}: {interrupted} of {} ADDs were killed mid-way (delays {delays:?})",
        delays.len()
    );
    assert!(
        interrupted > 0,
        "no kill landed before the ADD finished: delays too long"
    );

    // The network still works afterwards.
    let ok = host.attach("after");
    assert!(net::ping(&ok.ns, host.net.gateway4()));
    let allocated: Vec<IpAddr> = host.allocations();
    assert_eq!(allocated, vec![IpAddr::V4(ok.ip4())]);
}

#[test]
fn killed_add_is_undone_by_gc() {
    kill_mid_add(Cleanup::Gc);
}

#[test]
fn killed_add_is_undone_by_del() {
    kill_mid_add(Cleanup::Del);
}

/// Several networks in one host, all starting at once: their first ADDs race to create the
/// shared `netd` tables (and each its bridge), then keep adding in parallel.
#[test]
fn parallel_adds_on_several_networks_share_the_tables() {
    const NETWORKS: usize = 4;
    const PER_NETWORK: u16 = 10;
    let host = Host::new();
    let nets: Vec<netd_tests::Network> = (0..NETWORKS)
        .map(|_| netd_tests::Network::new(host.tmp.path()))
        .collect();
    let jobs: Vec<(String, Ns, Value)> = nets
        .iter()
        .enumerate()
        .flat_map(|(n, net)| {
            (0..PER_NETWORK).map(move |i| {
                let port = 40000 + (n as u16) * 100 + i;
                let conf = net.conf_with(
                    "1.0.0",
                    json!({
                        "ipMasq": true,
                        "capabilities": { "portMappings": true },
                        "runtimeConfig": {
                            "portMappings": [{ "hostPort": port, "containerPort": 80 }],
                        },
                    }),
                );
                (format!("n{n}c{i}"), Ns::new(), conf)
            })
        })
        .collect();
    let outs: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(id, ns, conf)| s.spawn(|| host.add(id, ns, conf)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread"))
            .collect()
    });
    for ((id, _, _), out) in jobs.iter().zip(outs) {
        assert!(out.success(), "{id}: {} {}", out.stdout, out.stderr);
    }
    let rs = host.ruleset();
    assert_eq!(rs.port_elems(), NETWORKS * usize::from(PER_NETWORK));
    for net in &nets {
        assert_eq!(
            host.ns.ports_of(&net.bridge).len(),
            usize::from(PER_NETWORK)
        );
    }
    let dels: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(id, ns, conf)| s.spawn(|| host.del(id, &ns.path(), conf)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("DEL thread"))
            .collect()
    });
    for out in dels {
        out.ok();
    }
    assert_eq!(host.ruleset().port_elems(), 0);
    assert!(host.veths().is_empty());
}

/// A DEL killed half-way is completed by the next DEL.
#[test]
fn killed_del_is_completed_by_the_next_del() {
    let host = Host::new();
    let mut interrupted = 0;
    for (i, delay) in [0u64, 1, 2, 4, 8, 16, 32].iter().enumerate() {
        let id = format!("deleted{i}");
        let conf = busy_conf(&host, 31000 + i as u16);
        let c = host.attach_with(&id, &conf);
        let mut child = host
            .call("DEL")
            .container(&id, &c.ns.path(), "eth0")
            .conf(&conf)
            .spawn();
        std::thread::sleep(Duration::from_millis(*delay));
        let _ = child.kill();
        if wait_bounded(child, DEADLINE).status.code().is_none() {
            interrupted += 1;
        }
        host.del(&id, &c.ns.path(), &conf).ok();
        host.assert_clean(&format!("DEL after a DEL killed at {delay} ms"));
        assert!(c.ns.link("eth0").is_none());
    }
    eprintln!("{interrupted} of 7 DELs were killed mid-way");
}
