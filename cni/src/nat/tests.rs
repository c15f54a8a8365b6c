//! Tests against the real kernel. Each test works in throwaway network namespaces of its own
//! (removed on drop, even on panic), never in the root namespace, so they run in parallel.
//! State is checked with `nft -j list ruleset` and, end to end, with TCP connections.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;
use crate::netns::NetNs;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A network namespace created for one test (also used by `intercept`'s tests).
pub(super) struct TempNs {
    name: String,
}

impl TempNs {
    pub(super) fn new() -> Self {
        let name = format!(
            "netd-nat-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        cmd("ip", &["netns", "add", &name]);
        let ns = TempNs { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name (`ip netns` / `ip link ... netns <name>`).
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a thread inside the namespace.
    pub(super) fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let ns = NetNs::open(format!("/run/netns/{}", self.name)).expect("open netns");
        ns.run(f).expect("run in netns")
    }

    /// Runs a command inside the namespace; panics on failure.
    pub(super) fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        cmd("ip", &full)
    }

    fn ruleset(&self) -> Ruleset {
        Ruleset(
            serde_json::from_str(&self.exec(&["nft", "-j", "list", "ruleset"])).expect("nft json"),
        )
    }

    fn nft(&self) -> Nft {
        self.run(Nft::open).expect("open nft")
    }
}

impl Drop for TempNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn cmd(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `nft -j list ruleset` output.
struct Ruleset(Value);

impl Ruleset {
    fn objects(&self, kind: &str) -> Vec<&Value> {
        let items = self.0["nftables"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        items
            .iter()
            .filter_map(|o| o.get(kind))
            .filter(|o| o["table"] == "netd" || kind == "table")
            .collect()
    }

    fn set(&self, family: &str, name: &str) -> Option<&Value> {
        self.objects("set")
            .into_iter()
            .chain(self.objects("map"))
            .find(|s| s["family"] == family && s["name"] == name)
    }

    /// A set's elements as compact JSON strings.
    fn elems(&self, family: &str, name: &str) -> Vec<String> {
        let set = self
            .set(family, name)
            .unwrap_or_else(|| panic!("set {family} {name} missing"));
        set["elem"]
            .as_array()
            .map(|a| a.iter().map(Value::to_string).collect())
            .unwrap_or_default()
    }

    fn rules(&self, family: &str, chain: &str) -> usize {
        self.objects("rule")
            .iter()
            .filter(|r| r["family"] == family && r["chain"] == chain)
            .count()
    }
}

fn net() -> NetworkSpec {
    NetworkSpec {
        bridge: "netdbr0".into(),
        subnets: vec![
            "10.88.0.0/16".parse().expect("cidr"),
            "fd88::/64".parse().expect("cidr"),
        ],
        masquerade: true,
        isolate: true,
    }
}

fn port(host_ip: Option<&str>, host_port: u16, container: &str, container_port: u16) -> PortMap {
    PortMap {
        protocol: Protocol::Tcp,
        host_ip: host_ip.map(|h| h.parse().expect("ip")),
        host_port,
        container_ip: container.parse().expect("ip"),
        container_port,
    }
}

fn att(veth: &str, ports: Vec<PortMap>) -> AttachmentSpec {
    AttachmentSpec {
        host_veth: veth.into(),
        mac: Some([0x02, 0, 0, 0, 0, 0x42]),
        ports,
    }
}

#[test]
fn bootstrap_writes_the_layout_and_elements() {
    let ns = TempNs::new();
    let a = att("veth0", vec![port(None, 8080, "10.88.0.2", 80)]);
    let mut nft = ns.nft();
    nft.add_attachment(&net(), &a).expect("add");
    nft.check_attachment(&net(), &a).expect("check");

    let rs = ns.ruleset();
    assert_eq!(
        rs.objects("table")
            .iter()
            .filter(|t| t["name"] == "netd")
            .count(),
        2
    );
    for (chain, n) in [
        ("portmap", 4),
        ("prerouting", 1),
        ("output", 1),
        ("postrouting", 5),
        ("forward", 3),
    ] {
        assert_eq!(rs.rules("inet", chain), n, "rules in inet {chain}");
    }
    assert_eq!(rs.rules("bridge", "prerouting"), 1);
    let ports4 = rs.set("inet", "ports4").expect("ports4");
    assert_eq!(
        ports4["type"].to_string(),
        r#"["ipv4_addr","inet_proto","inet_service"]"#
    );
    assert_eq!(ports4["map"], "ipv4_addr . inet_service");
    assert_eq!(
        rs.set("inet", "nets6").expect("nets6")["flags"].to_string(),
        r#"["interval"]"#
    );

    assert_eq!(
        rs.elems("inet", "nets4"),
        [r#"{"prefix":{"addr":"10.88.0.0","len":16}}"#]
    );
    assert_eq!(
        rs.elems("inet", "masq6"),
        [r#"{"prefix":{"addr":"fd88::","len":64}}"#]
    );
    assert_eq!(rs.elems("inet", "bridges"), [r#""netdbr0""#]);
    assert_eq!(rs.elems("inet", "isolated"), [r#""netdbr0""#]);
    assert_eq!(
        rs.elems("inet", "same"),
        [r#"{"concat":["netdbr0","netdbr0"]}"#]
    );
    assert_eq!(
        rs.elems("inet", "ports4any"),
        [r#"[{"concat":["tcp",8080]},{"concat":["10.88.0.2",80]}]"#]
    );
    assert_eq!(rs.elems("bridge", "checked"), [r#""veth0""#]);
    assert_eq!(
        rs.elems("bridge", "macs"),
        [r#"{"concat":["veth0","02:00:00:00:00:42"]}"#]
    );

    // The rules, as nft reads them back from the kernel.
    let text = ns.exec(&["nft", "list", "ruleset"]);
    for rule in [
        "fib daddr type local jump portmap",
        "dnat ip to ip daddr . meta l4proto . th dport map @ports4",
        "dnat ip to meta l4proto . th dport map @ports4any",
        "dnat ip6 to ip6 daddr . meta l4proto . th dport map @ports6",
        "dnat ip6 to meta l4proto . th dport map @ports6any",
        "ct status dnat ip saddr @nets4 masquerade",
        "ct status dnat ip saddr 127.0.0.0/8 masquerade",
        "ip saddr @masq4 ip daddr != @nets4 ip daddr != 224.0.0.0/4 masquerade",
        "ct status dnat ip6 saddr @nets6 masquerade",
        "ip6 saddr @masq6 ip6 daddr != @nets6 ip6 daddr != ff00::/8 masquerade",
        "iifname . oifname @same accept",
        "iifname @isolated oifname @bridges drop",
        "iifname @bridges oifname @isolated drop",
        "iifname @checked iifname . ether saddr != @macs drop",
        "type nat hook prerouting priority dstnat",
        "type nat hook output priority -100",
        "type nat hook postrouting priority srcnat",
        "type filter hook forward priority filter",
    ] {
        assert!(text.contains(rule), "missing {rule:?} in\n{text}");
    }
}

#[test]
fn a_published_port_cannot_be_published_again() {
    let ns = TempNs::new();
    let mut nft = ns.nft();
    let first = att("veth1", vec![port(None, 8080, "10.88.0.2", 80)]);
    nft.add_attachment(&net(), &first).expect("add first");

    let second = att(
        "veth2",
        vec![
            port(None, 9090, "10.88.0.3", 90),
            port(None, 8080, "10.88.0.3", 80),
        ],
    );
    let err = nft
        .add_attachment(&net(), &second)
        .expect_err("8080 is taken");
    assert!(
        matches!(
            err,
            NatError::PortInUse {
                host_port: 8080,
                host_ip: None,
                protocol: Protocol::Tcp,
                target: Some(_),
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "port 8080/tcp on 0.0.0.0 is already published (to 10.88.0.2:80)"
    );
    assert_eq!(err.errno(), Some(libc::EEXIST));
    // Nothing of the failed batch was applied, and the runtime's cleanup DEL of the failed
    // attachment leaves the port's owner alone.
    assert_eq!(nft.port_mappings().expect("list"), first.ports);
    assert_eq!(ns.ruleset().elems("bridge", "checked"), [r#""veth1""#]);
    nft.del_attachment(&second).expect("cleanup del");
    assert_eq!(nft.port_mappings().expect("list"), first.ports);

    // The same port over UDP is another port; a host-specific port on a port free everywhere
    // is fine, and conflicts with itself.
    let udp = PortMap {
        protocol: Protocol::Udp,
        ..port(None, 8080, "10.88.0.5", 80)
    };
    nft.add_attachment(&net(), &att("veth4", vec![udp]))
        .expect("udp");
    let specific = att(
        "veth3",
        vec![port(Some("192.0.2.1"), 8081, "10.88.0.4", 80)],
    );
    nft.add_attachment(&net(), &specific)
        .expect("host-specific");
    let err = nft.add_attachment(
        &net(),
        &att(
            "veth5",
            vec![port(Some("192.0.2.1"), 8081, "10.88.0.6", 80)],
        ),
    );
    assert!(
        matches!(
            err,
            Err(NatError::PortInUse {
                host_ip: Some(_),
                ..
            })
        ),
        "{err:?}"
    );

    // Twice in one attachment.
    let twice = att(
        "veth6",
        vec![
            port(None, 7070, "10.88.0.7", 80),
            port(None, 7070, "10.88.0.7", 81),
        ],
    );
    assert!(matches!(
        nft.add_attachment(&net(), &twice),
        Err(NatError::PortInUse {
            host_port: 7070,
            ..
        })
    ));
}

/// `(host_ip, port, container address)` of a conflict, for short assertions.
fn conflict(r: Result<(), NatError>) -> (Option<IpAddr>, u16, Option<SocketAddr>) {
    match r {
        Err(NatError::PortInUse {
            host_ip,
            host_port,
            target,
            ..
        }) => (host_ip, host_port, target),
        other => panic!("expected PortInUse, got {other:?}"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn sock(s: &str) -> Option<SocketAddr> {
    Some(s.parse().expect("socket address"))
}

#[test]
fn a_port_on_every_address_and_on_one_address_overlap_in_both_orders() {
    for (host, ctr1, ctr2, ctr3) in [
        ("192.0.2.1", "10.88.0.2", "10.88.0.3", "10.88.0.4"),
        ("2001:db8::1", "fd88::2", "fd88::3", "fd88::4"),
    ] {
        let ns = TempNs::new();
        let mut nft = ns.nft();
        let target = |c: &str, p: u16| Some(SocketAddr::new(ip(c), p));

        // any(8080) first: specific(X, 8080) is refused, naming the published mapping.
        let any = att("veth1", vec![port(None, 8080, ctr1, 80)]);
        nft.add_attachment(&net(), &any).expect("any");
        let specific = att("veth2", vec![port(Some(host), 8080, ctr2, 80)]);
        assert_eq!(
            conflict(nft.add_attachment(&net(), &specific)),
            (None, 8080, target(ctr1, 80))
        );
        let err = nft
            .add_attachment(&net(), &specific)
            .expect_err("refused")
            .to_string();
        let everywhere = if host.contains(':') { "::" } else { "0.0.0.0" };
        assert_eq!(
            err,
            format!(
                "port 8080/tcp on {everywhere} is already published (to {})",
                SocketAddr::new(ip(ctr1), 80)
            )
        );
        assert_eq!(nft.port_mappings().expect("list"), any.ports, "unchanged");
        assert_eq!(ns.ruleset().elems("bridge", "checked"), [r#""veth1""#]);
        // The runtime's cleanup DEL of the refused attachment leaves the owner alone.
        nft.del_attachment(&specific).expect("cleanup del");
        assert_eq!(nft.port_mappings().expect("list"), any.ports);

        // specific(X, 9090) first: any(9090) is refused; specific(Y, 9090) is not.
        nft.add_attachment(
            &net(),
            &att("veth3", vec![port(Some(host), 9090, ctr2, 90)]),
        )
        .expect("specific");
        assert_eq!(
            conflict(nft.add_attachment(&net(), &att("veth4", vec![port(None, 9090, ctr3, 90)]))),
            (Some(ip(host)), 9090, target(ctr2, 90))
        );
        let other_host = if host.contains(':') {
            "2001:db8::2"
        } else {
            "192.0.2.2"
        };
        nft.add_attachment(
            &net(),
            &att("veth5", vec![port(Some(other_host), 9090, ctr3, 90)]),
        )
        .expect("another host address");
        // The same port over the other protocol does not overlap.
        let udp = PortMap {
            protocol: Protocol::Udp,
            ..port(None, 9090, ctr3, 90)
        };
        nft.add_attachment(&net(), &att("veth6", vec![udp]))
            .expect("udp");

        // Once the any(8080) owner is gone, specific(X, 8080) goes through.
        nft.del_attachment(&any).expect("del any");
        nft.add_attachment(&net(), &specific)
            .expect("specific after the any is gone");

        // Within one request.
        let both = att(
            "veth7",
            vec![port(Some(host), 7070, ctr3, 70), port(None, 7070, ctr3, 71)],
        );
        assert_eq!(
            conflict(nft.add_attachment(&net(), &both)),
            (Some(ip(host)), 7070, None)
        );
    }
}

#[test]
fn address_families_do_not_overlap() {
    let ns = TempNs::new();
    let mut nft = ns.nft();
    nft.add_attachment(
        &net(),
        &att(
            "veth1",
            vec![
                port(None, 8080, "10.88.0.2", 80),
                port(Some("2001:db8::1"), 9090, "fd88::2", 90),
            ],
        ),
    )
    .expect("v4 any, v6 specific");
    nft.add_attachment(
        &net(),
        &att(
            "veth2",
            vec![
                port(None, 8080, "fd88::3", 80),
                port(Some("192.0.2.1"), 8081, "10.88.0.3", 80),
                port(None, 9090, "10.88.0.3", 90),
            ],
        ),
    )
    .expect("v6 any beside v4 any, v4 any beside v6 specific");
    assert_eq!(
        conflict(nft.add_attachment(
            &net(),
            &att(
                "veth3",
                vec![port(Some("192.0.2.1"), 8080, "10.88.0.4", 80)]
            )
        )),
        (None, 8080, sock("10.88.0.2:80"))
    );
    assert_eq!(
        conflict(nft.add_attachment(&net(), &att("veth3", vec![port(None, 9090, "fd88::4", 90)]))),
        (Some(ip("2001:db8::1")), 9090, sock("[fd88::2]:90"))
    );
}

/// Two networks (so two processes would hold different locks) publish the same port, one on
/// every address and one on a specific address, at the same time: exactly one wins. The first
/// round lines both up after their checks and before their batches, which only the generation
/// check can resolve; the next rounds race freely.
#[test]
fn concurrent_overlapping_publications_let_exactly_one_win() {
    let ns = TempNs::new();
    let nets = [
        net(),
        NetworkSpec {
            bridge: "netdbr1".into(),
            subnets: vec![
                "10.89.0.0/16".parse().expect("cidr"),
                "fd89::/64".parse().expect("cidr"),
            ],
            ..net()
        },
    ];
    let mut nft = ns.nft();
    for n in &nets {
        nft.add_attachment(n, &AttachmentSpec::default())
            .expect("bootstrap");
    }
    let cases = [
        ("192.0.2.1", "10.88.0.2", "10.89.0.2"),
        ("2001:db8::1", "fd88::2", "fd89::2"),
    ];
    for round in 0..12u16 {
        let (host, c1, c2) = cases[usize::from(round % 2)];
        let p = 10000 + round;
        let specs = [
            att("veth1", vec![port(None, p, c1, 80)]),
            att("veth2", vec![port(Some(host), p, c2, 80)]),
        ];
        let mut handles = [ns.nft(), ns.nft()];
        if round < 2 {
            let lined_up = std::sync::Arc::new(Barrier::new(2));
            for h in &mut handles {
                let lined_up = lined_up.clone();
                h.before_commit(move || {
                    lined_up.wait();
                });
            }
        }
        let start = Barrier::new(2);
        let results: Vec<(Result<(), NatError>, u32)> = std::thread::scope(|s| {
            let threads: Vec<_> = handles
                .into_iter()
                .zip(nets.iter().zip(&specs))
                .map(|(mut h, (n, a))| {
                    let start = &start;
                    s.spawn(move || {
                        start.wait();
                        (h.add_attachment(n, a), h.restarts)
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("thread"))
                .collect()
        });
        let restarts: u32 = results.iter().map(|(_, n)| n).sum();
        let results: Vec<Result<(), NatError>> = results.into_iter().map(|(r, _)| r).collect();
        if round < 2 {
            assert!(
                restarts >= 1,
                "round {round}: the loser's batch was refused and retried"
            );
        }
        let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: {results:?}");
        assert!(
            results.iter().any(
                |r| matches!(r, Err(NatError::PortInUse { host_port, .. }) if *host_port == p)
            ),
            "round {round}: the loser is told the port is in use: {results:?}"
        );
        let published: Vec<_> = nft
            .port_mappings()
            .expect("list")
            .into_iter()
            .filter(|m| m.host_port == p)
            .collect();
        assert_eq!(published.len(), 1, "round {round}: {published:?}");
    }
}

#[test]
fn invalid_requests_are_rejected_before_the_kernel() {
    let ns = TempNs::new();
    let mut nft = ns.nft();
    let mixed = att("veth0", vec![port(Some("192.0.2.1"), 8080, "fd88::2", 80)]);
    assert!(matches!(
        nft.add_attachment(&net(), &mixed),
        Err(NatError::Invalid { .. })
    ));
    let bad_bridge = NetworkSpec {
        bridge: "a-bridge-name-too-long".into(),
        ..net()
    };
    assert!(matches!(
        nft.add_attachment(&bad_bridge, &att("veth0", vec![])),
        Err(NatError::Invalid { .. })
    ));
    assert!(ns.ruleset().objects("table").is_empty(), "nothing written");
}

#[test]
fn deletion_is_idempotent_with_and_without_destroy() {
    let ns = TempNs::new();
    let mut nft = ns.nft();
    let a = att(
        "veth0",
        vec![
            port(None, 8080, "10.88.0.2", 80),
            port(Some("fd88::1"), 8443, "fd88::2", 443),
        ],
    );
    // No table at all yet.
    nft.del_attachment(&a).expect("del without table");
    nft.del_network(&net()).expect("del network without table");

    for fallback in [false, true] {
        if fallback {
            nft.force_delsetelem();
        }
        nft.add_attachment(&net(), &a).expect("add");
        // Part of it already gone.
        nft.del_attachment(&AttachmentSpec {
            ports: a.ports[..1].to_vec(),
            mac: None,
            ..a.clone()
        })
        .expect("del one port");
        nft.del_attachment(&a).expect("del");
        nft.del_attachment(&a).expect("del again");
        assert_eq!(nft.port_mappings().expect("list"), []);
        let rs = ns.ruleset();
        assert!(rs.elems("bridge", "macs").is_empty() && rs.elems("bridge", "checked").is_empty());
        assert_eq!(
            rs.elems("inet", "bridges").len(),
            1,
            "network elements stay"
        );

        nft.del_network(&net()).expect("del network");
        nft.del_network(&net()).expect("del network again");
        let rs = ns.ruleset();
        for set in [
            "nets4", "nets6", "masq4", "masq6", "bridges", "same", "isolated",
        ] {
            assert!(
                rs.elems("inet", set).is_empty(),
                "{set} emptied (fallback: {fallback})"
            );
        }
    }
}

#[test]
fn check_names_the_first_missing_element() {
    let ns = TempNs::new();
    let mut nft = ns.nft();
    let a = att("veth0", vec![port(None, 8080, "10.88.0.2", 80)]);
    assert!(
        matches!(
            nft.check_attachment(&net(), &a),
            Err(NatError::Missing { .. })
        ),
        "no table"
    );
    nft.add_attachment(&net(), &a).expect("add");
    nft.check_attachment(&net(), &a).expect("check");

    nft.del_attachment(&AttachmentSpec {
        mac: None,
        ..a.clone()
    })
    .expect("del port");
    let err = nft.check_attachment(&net(), &a).expect_err("port gone");
    assert_eq!(
        err.to_string(),
        "port mapping 8080/tcp -> 10.88.0.2:80 is missing"
    );

    // The same key mapping elsewhere is not this attachment's mapping.
    nft.add_attachment(
        &net(),
        &att("veth0", vec![port(None, 8080, "10.88.0.9", 80)]),
    )
    .expect("other");
    assert!(nft.check_attachment(&net(), &a).is_err());

    nft.del_network(&net()).expect("del network");
    let err = nft.check_attachment(&net(), &a).expect_err("network gone");
    assert_eq!(
        err.to_string(),
        "subnet 10.88.0.0/16 in set nets4 is missing"
    );
}

#[test]
fn concurrent_first_adds_bootstrap_once() {
    let ns = TempNs::new();
    let handles: Vec<Nft> = (0..8).map(|_| ns.nft()).collect();
    let barrier = Barrier::new(handles.len());
    std::thread::scope(|s| {
        for (i, mut nft) in handles.into_iter().enumerate() {
            let barrier = &barrier;
            s.spawn(move || {
                let a = att(
                    &format!("veth{i}"),
                    vec![port(
                        None,
                        8000 + i as u16,
                        &format!("10.88.0.{}", i + 2),
                        80,
                    )],
                );
                barrier.wait();
                nft.add_attachment(&net(), &a).expect("concurrent add");
            });
        }
    });
    let rs = ns.ruleset();
    assert_eq!(
        rs.objects("table")
            .iter()
            .filter(|t| t["name"] == "netd")
            .count(),
        2
    );
    assert_eq!(rs.objects("chain").len(), 6);
    assert_eq!(rs.objects("rule").len(), 15, "each rule once");
    assert_eq!(rs.elems("inet", "ports4any").len(), 8);
    assert_eq!(rs.elems("bridge", "checked").len(), 8);
    assert_eq!(rs.elems("inet", "nets4").len(), 1);
}

#[test]
fn port_mappings_round_trip() {
    let ns = TempNs::new();
    let mut nft = ns.nft();
    let ports = vec![
        port(None, 8080, "10.88.0.2", 80),
        port(Some("192.0.2.1"), 8081, "10.88.0.2", 81),
        PortMap {
            protocol: Protocol::Udp,
            ..port(None, 5353, "fd88::2", 53)
        },
        port(Some("2001:db8::1"), 8443, "fd88::2", 443),
    ];
    nft.add_attachment(
        &net(),
        &AttachmentSpec {
            host_veth: "veth0".into(),
            mac: None,
            ports: ports.clone(),
        },
    )
    .expect("add");
    let mut got = nft.port_mappings().expect("list");
    let key = |p: &PortMap| (p.host_port, p.container_port);
    got.sort_by_key(key);
    let mut want = ports;
    want.sort_by_key(key);
    assert_eq!(got, want);
    assert!(
        ns.ruleset()
            .objects("table")
            .iter()
            .all(|t| t["family"] != "bridge"),
        "no MAC check, no bridge table"
    );
}

/// Accepts one connection within two seconds and greets it.
fn serve_once(listener: &TcpListener) {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match listener.accept() {
            Ok((mut conn, _)) => {
                conn.set_nonblocking(false).expect("blocking");
                conn.write_all(b"hello").expect("greet");
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("no connection reached the container: {e}"),
        }
    }
}

fn connect(to: &str) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = to.parse().expect("socket address");
    TcpStream::connect_timeout(&addr, Duration::from_secs(2))
}

fn read_greeting(mut conn: TcpStream) -> String {
    conn.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut s = String::new();
    conn.read_to_string(&mut s).expect("read");
    s
}

#[test]
fn published_port_reaches_the_container() {
    let host = TempNs::new();
    let ctr = TempNs::new();
    host.exec(&[
        "ip", "link", "add", "vh", "type", "veth", "peer", "name", "vc", "netns", &ctr.name,
    ]);
    host.exec(&["ip", "addr", "add", "10.99.0.1/24", "dev", "vh"]);
    host.exec(&["ip", "link", "set", "vh", "up"]);
    host.exec(&[
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.vh.route_localnet=1",
    ]);
    ctr.exec(&["ip", "addr", "add", "10.99.0.2/24", "dev", "vc"]);
    ctr.exec(&["ip", "link", "set", "vc", "up"]);
    ctr.exec(&["ip", "route", "add", "default", "via", "10.99.0.1"]);
    let listener = ctr
        .run(|| TcpListener::bind("0.0.0.0:80"))
        .expect("listen in container");

    let net = NetworkSpec {
        bridge: "vh".into(),
        subnets: vec!["10.99.0.0/24".parse().expect("cidr")],
        masquerade: true,
        isolate: false,
    };
    let a = AttachmentSpec {
        host_veth: "vh".into(),
        mac: None,
        ports: vec![port(None, 18080, "10.99.0.2", 80)],
    };
    let mut nft = host.nft();
    nft.add_attachment(&net, &a).expect("add");

    // Host to its own address (output hook), to localhost (route_localnet + masquerade), and
    // the container to its own published port through the host (hairpin masquerade).
    for (from, to) in [
        (&host, "10.99.0.1:18080"),
        (&host, "127.0.0.1:18080"),
        (&ctr, "10.99.0.1:18080"),
    ] {
        let conn = from
            .run(|| connect(to))
            .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
        serve_once(&listener);
        assert_eq!(read_greeting(conn), "hello", "via {to}");
    }

    nft.del_attachment(&a).expect("del");
    assert!(
        host.run(|| connect("10.99.0.1:18080")).is_err(),
        "unpublished port is closed"
    );
}

/// A host namespace and a container namespace joined by a veth pair (`vh` on the host,
/// 10.99.0.1/24 and fd99::1/64; `vc` in the container, 10.99.0.2 and fd99::2), with the
/// netd tables for that network.
fn host_and_container() -> (TempNs, TempNs, NetworkSpec) {
    let host = TempNs::new();
    let ctr = TempNs::new();
    host.exec(&[
        "ip", "link", "add", "vh", "type", "veth", "peer", "name", "vc", "netns", &ctr.name,
    ]);
    host.exec(&["ip", "addr", "add", "10.99.0.1/24", "dev", "vh"]);
    host.exec(&["ip", "addr", "add", "fd99::1/64", "dev", "vh", "nodad"]);
    host.exec(&["ip", "link", "set", "vh", "up"]);
    ctr.exec(&["ip", "addr", "add", "10.99.0.2/24", "dev", "vc"]);
    ctr.exec(&["ip", "addr", "add", "fd99::2/64", "dev", "vc", "nodad"]);
    ctr.exec(&["ip", "link", "set", "vc", "up"]);
    let net = NetworkSpec {
        bridge: "vh".into(),
        subnets: vec![
            "10.99.0.0/24".parse().expect("cidr"),
            "fd99::/64".parse().expect("cidr"),
        ],
        masquerade: true,
        isolate: false,
    };
    (host, ctr, net)
}

fn udp(host_port: u16, container: &str, container_port: u16) -> PortMap {
    PortMap {
        protocol: Protocol::Udp,
        ..port(None, host_port, container, container_port)
    }
}

/// Sends one datagram from `from` to `to` inside `ns` (a flow conntrack remembers).
fn send_udp(ns: &TempNs, from: &str, to: &str) {
    let to: SocketAddr = to.parse().expect("socket address");
    let socket = ns
        .run(|| UdpSocket::bind(from))
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    socket.send_to(b"ping", to).expect("send");
}

/// The conntrack entries of `v6` flows from source port `sport` to destination port `dport`.
fn flows(nft: &mut Nft, v6: bool, sport: u16, dport: u16) -> Vec<conntrack::Flow> {
    conntrack::dump(&mut nft.sock, v6)
        .expect("conntrack dump")
        .into_iter()
        .filter(|f| {
            f.orig.proto == 17 && f.orig.sport == Some(sport) && f.orig.dport == Some(dport)
        })
        .collect()
}

/// `IPS_DST_NAT`.
const DNATED: u32 = 1 << 5;

#[test]
fn removing_a_udp_mapping_forgets_its_flows() {
    let (host, _ctr, net) = host_and_container();
    let mut nft = host.nft();
    for (v6, me, ctr_ip) in [
        (false, "10.99.0.1", "10.99.0.2"),
        (true, "[fd99::1]", "fd99::2"),
    ] {
        let a = AttachmentSpec {
            host_veth: "vh".into(),
            mac: None,
            ports: vec![udp(18053, ctr_ip, 5353)],
        };
        nft.add_attachment(&net, &a).expect("add");
        // A flow through the mapping (host to its own address, DNATed in the output hook),
        // and one straight to the container that no mapping is involved in.
        send_udp(&host, &format!("{me}:40053"), &format!("{me}:18053"));
        let ctr_sock = if v6 {
            format!("[{ctr_ip}]")
        } else {
            ctr_ip.to_owned()
        };
        send_udp(&host, &format!("{me}:40054"), &format!("{ctr_sock}:7777"));
        let mapped = flows(&mut nft, v6, 40053, 18053);
        assert_eq!(mapped.len(), 1, "v6 {v6}: {mapped:?}");
        assert_eq!(
            (mapped[0].reply.src, mapped[0].reply.sport),
            (ip(ctr_ip), Some(5353)),
            "translated to the container"
        );
        assert_ne!(mapped[0].status & DNATED, 0);
        assert_eq!(flows(&mut nft, v6, 40054, 7777).len(), 1);

        nft.del_attachment(&a).expect("del");
        assert!(
            flows(&mut nft, v6, 40053, 18053).is_empty(),
            "v6 {v6}: the mapped flow is forgotten"
        );
        assert_eq!(
            flows(&mut nft, v6, 40054, 7777).len(),
            1,
            "v6 {v6}: the unrelated flow stays"
        );
        // Nothing left to forget: a second DEL is fine.
        nft.del_attachment(&a).expect("del again");
    }
}

#[test]
fn publishing_a_udp_port_forgets_flows_already_sent_to_it() {
    let (host, _ctr, net) = host_and_container();
    let mut nft = host.nft();
    // The tables (and so conntrack) exist before the flows.
    nft.add_attachment(&net, &AttachmentSpec::default())
        .expect("bootstrap");
    for (v6, me, ctr_ip) in [
        (false, "10.99.0.1", "10.99.0.2"),
        (true, "[fd99::1]", "fd99::2"),
    ] {
        // Sent before the port is published: tracked untranslated, and it would stay so.
        send_udp(&host, &format!("{me}:40055"), &format!("{me}:18054"));
        send_udp(&host, &format!("{me}:40056"), &format!("{me}:18055"));
        let before = flows(&mut nft, v6, 40055, 18054);
        assert_eq!(before.len(), 1, "v6 {v6}: {before:?}");
        assert_eq!(before[0].status & DNATED, 0);

        let a = AttachmentSpec {
            host_veth: "vh".into(),
            mac: None,
            ports: vec![udp(18054, ctr_ip, 5353)],
        };
        nft.add_attachment(&net, &a).expect("add");
        assert!(
            flows(&mut nft, v6, 40055, 18054).is_empty(),
            "v6 {v6}: the untranslated flow is forgotten"
        );
        assert_eq!(
            flows(&mut nft, v6, 40056, 18055).len(),
            1,
            "v6 {v6}: a flow to another port stays"
        );
        // The next datagram of the same flow is translated.
        send_udp(&host, &format!("{me}:40055"), &format!("{me}:18054"));
        let after = flows(&mut nft, v6, 40055, 18054);
        assert_eq!(after.len(), 1);
        assert_ne!(after[0].status & DNATED, 0, "v6 {v6}: {after:?}");
        nft.del_attachment(&a).expect("del");
    }
}

#[test]
fn forgetting_flows_in_a_namespace_without_any_is_a_no_op() {
    let ns = TempNs::new();
    let mut nft = ns.nft();
    let stale = [
        conntrack::Stale::FromContainer {
            proto: 17,
            addr: "10.88.0.2:53".parse().expect("socket address"),
        },
        conntrack::Stale::ToHostPort {
            proto: 17,
            port: 53,
            host: None,
            v6: true,
        },
    ];
    assert_eq!(conntrack::forget(&mut nft.sock, &stale), Ok(0));
}
