//! Delegated `dhcp` IPAM, end to end: netd-cni runs the reference `dhcp` plugin from
//! `CNI_PATH`, which asks the reference `dhcp` daemon, which gets a lease from a real DHCP
//! server (dnsmasq) on the network's bridge.
//!
//! Each test builds its own world inside one throwaway host namespace:
//!
//! - the network's bridge, created by the test with the first address of the network's /24 (a
//!   bridge that already exists, with a DHCP server behind it, is how `dhcp` IPAM is used; the
//!   configuration sets neither `isGateway` nor `isDefaultGateway`, the server hands out the
//!   gateway);
//! - dnsmasq on that bridge, DHCP only (`--port=0`), with its configuration on the command line,
//!   its lease file in the test's temp dir, and `--log-facility=-` so its log lands in the
//!   process's log file;
//! - `/usr/lib/cni/dhcp daemon -socketpath <temp dir>/dhcp.sock`, and `ipam.daemonSocketPath`
//!   pointing the plugin at that socket (containernetworking-plugins 1.1.1 supports both), so
//!   parallel tests never share a daemon and the system's `/run/cni/dhcp.sock` is untouched.
//!   The daemon does not need to run in the host namespace — it opens `CNI_NETNS` by path and
//!   enters it for each client, and its RPC socket is a filesystem path — but it is started
//!   there anyway, so nothing it does can land in the root namespace.
//!
//! Both processes are killed by PID when the world is dropped (panics included), before the
//! namespace and the temp dir go.
//!
//! Findings, as of containernetworking-plugins 1.1.1:
//!
//! - The daemon sends its requests from `CNI_IFNAME` inside `CNI_NETNS`, so the interface must
//!   exist when the IPAM plugin runs; netd-cni used to run it before creating the veth (fixed:
//!   ADD now runs a delegated plugin after the veth, as the reference `bridge` does).
//! - DEL: netd-cni runs a delegated IPAM plugin's DEL before removing the veth, so the daemon
//!   sends its DHCPRELEASE from the interface and the server frees the lease at once (the
//!   reference `bridge` 1.1.1 removes the veth first, containernetworking/plugins#791, and the
//!   server keeps the lease until it expires). [`dhcp_del_releases_the_lease`] asserts it.
//! - The daemon opens its packet socket on the interface before it brings a down interface up,
//!   and a socket opened on a down link fails its first request ("network is down"), retried
//!   2-3 s later. netd-cni now brings the container's interface up (IPv6 off until the result
//!   has IPv6) before running a delegated plugin, so a dhcp ADD takes a fraction of a second.
//! - The plugin's CHECK asks the daemon for a new lease (`DHCP.Allocate`); the server renews
//!   the same address for the same client ID, so CHECK passes and the address does not change
//!   (the daemon keeps maintaining the replaced lease object until it exits: its own quirk).
//!
//! Needs `dnsmasq` (Debian's `dnsmasq-base`) and `containernetworking-plugins` (see
//! `scripts/test`).

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use netd_tests::net::ping;
use netd_tests::plugin::REFERENCE_PLUGINS;
use netd_tests::process::Background;
use netd_tests::{poll, Container, Host, Ns};
use serde_json::{json, Value};

/// The server's pool: host numbers in the network's /24.
const POOL: (u8, u8) = (50, 59);

/// A host namespace whose network is served by dnsmasq, with a private `dhcp` daemon. Fields
/// drop in order: the server and the daemon are killed (by PID) before the namespaces and the
/// temp dir go.
struct DhcpNet {
    /// dnsmasq on the bridge (`None`: no server at all).
    server: Option<Background>,
    /// The reference `dhcp` daemon.
    daemon: Background,
    /// The host namespace, the network and the temp dir.
    host: Host,
    /// The daemon's RPC socket.
    socket: PathBuf,
    /// dnsmasq's lease file.
    leases: PathBuf,
}

impl DhcpNet {
    /// The bridge with the network's first address, dnsmasq serving `pool` on it, and a
    /// daemon with its default timeouts.
    fn new(pool: (u8, u8)) -> DhcpNet {
        let host = Host::new();
        add_bridge(&host);
        let leases = host.tmp.join("dnsmasq.leases");
        let server = start_server(&host, pool, &leases);
        let (daemon, socket) = start_daemon(&host, &[]);
        DhcpNet {
            server: Some(server),
            daemon,
            host,
            socket,
            leases,
        }
    }

    /// No bridge and no DHCP server; the daemon gives up after one short attempt.
    fn without_server() -> DhcpNet {
        let host = Host::new();
        let (daemon, socket) = start_daemon(&host, &["-timeout", "1s", "-resendmax", "1s"]);
        DhcpNet {
            server: None,
            daemon,
            leases: host.tmp.join("dnsmasq.leases"),
            host,
            socket,
        }
    }

    /// The server's (and bridge's) address, the gateway it hands out.
    fn gateway(&self) -> Ipv4Addr {
        self.host.net.host4(1)
    }

    /// The network with `dhcp` IPAM through the private daemon, in `version`.
    fn conf(&self, version: &str) -> Value {
        let mut conf = self.host.conf_with(json!({
            "isGateway": false,
            "isDefaultGateway": false,
            "ipam": {
                "type": "dhcp",
                "daemonSocketPath": self.socket,
                "ranges": null,
                "dataDir": null,
            },
        }));
        conf["cniVersion"] = json!(version);
        conf
    }

    /// The server's leases as (MAC, address). dnsmasq rewrites its lease file on every change,
    /// one lease a line: `<expiry> <mac> <address> <hostname> <client-id>`.
    fn leases(&self) -> Vec<(String, Ipv4Addr)> {
        let text = std::fs::read_to_string(&self.leases).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace().skip(1);
                Some((f.next()?.to_ascii_lowercase(), f.next()?.parse().ok()?))
            })
            .collect()
    }

    /// Asserts that the server's lease file lists `ip` for `mac` (within a bounded wait: the
    /// file is written right after the server answers).
    #[track_caller]
    fn assert_leased(&self, mac: &str, ip: Ipv4Addr) {
        let want = (mac.to_ascii_lowercase(), ip);
        assert!(
            poll::eventually_true(|| self.leases().contains(&want)),
            "the server's leases {:?} lack {ip} for {mac}",
            self.leases()
        );
    }
}

/// The network's bridge, up, with the network's first address (where the server listens).
fn add_bridge(host: &Host) {
    let bridge = host.net.bridge.as_str();
    let addr = format!("{}/24", host.net.host4(1));
    host.ns
        .exec(&["ip", "link", "add", bridge, "type", "bridge"]);
    host.ns.exec(&["ip", "addr", "add", &addr, "dev", bridge]);
    host.ns.exec(&["ip", "link", "set", bridge, "up"]);
}

/// dnsmasq serving `pool` on the bridge (DHCP only, gateway = the bridge's address), once it
/// listens on port 67.
fn start_server(host: &Host, pool: (u8, u8), leases: &std::path::Path) -> Background {
    let net = &host.net;
    let arg = |k: &str, v: String| format!("--{k}={v}");
    let args = [
        "dnsmasq".to_string(),
        "--conf-file=/dev/null".into(),
        "--keep-in-foreground".into(),
        "--port=0".into(),
        "--user=root".into(),
        "--group=root".into(),
        "--log-facility=-".into(),
        "--log-dhcp".into(),
        "--no-ping".into(),
        "--bind-interfaces".into(),
        arg("interface", net.bridge.clone()),
        arg(
            "dhcp-range",
            format!(
                "{},{},255.255.255.0,1h",
                net.host4(pool.0),
                net.host4(pool.1)
            ),
        ),
        arg("dhcp-option", format!("option:router,{}", net.host4(1))),
        arg("dhcp-leasefile", leases.display().to_string()),
        arg(
            "pid-file",
            host.tmp.join("dnsmasq.pid").display().to_string(),
        ),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Background::spawn(&host.ns, &args, &host.tmp.join("dnsmasq.log"));
    let listening = poll::eventually_true(|| {
        server.assert_running();
        let out = host.ns.exec(&["ss", "-Hlun", "sport", "=", ":67"]);
        !out.trim().is_empty()
    });
    assert!(
        listening,
        "dnsmasq does not listen on port 67; its log:\n{}",
        server.log()
    );
    server
}

/// The reference `dhcp` daemon on a socket in the test's temp dir (with `extra` flags), once
/// the socket accepts connections.
fn start_daemon(host: &Host, extra: &[&str]) -> (Background, PathBuf) {
    let socket = host.tmp.join("dhcp.sock");
    let path = socket.to_str().expect("temp dir path is UTF-8");
    assert!(
        path.len() < 100,
        "socket path {path} is too long for a unix socket; set TMPDIR to a shorter directory"
    );
    let binary = format!("{REFERENCE_PLUGINS}/dhcp");
    let mut args = vec![binary.as_str(), "daemon", "-socketpath", path];
    args.extend_from_slice(extra);
    let mut daemon = Background::spawn(&host.ns, &args, &host.tmp.join("dhcp-daemon.log"));
    let ready = poll::eventually_true(|| {
        daemon.assert_running();
        UnixStream::connect(&socket).is_ok()
    });
    assert!(
        ready,
        "the dhcp daemon does not accept on {path}; its log:\n{}",
        daemon.log()
    );
    (daemon, socket)
}

/// The container's MAC on `eth0`.
fn mac(c: &Container) -> String {
    c.ns.link("eth0").expect("eth0 in the container")["address"]
        .as_str()
        .expect("eth0 has a MAC")
        .to_string()
}

/// Whether `ip` is in the server's pool.
fn in_pool(net: &DhcpNet, ip: Ipv4Addr, pool: (u8, u8)) -> bool {
    let [a, b, c, d] = ip.octets();
    [a, b, c] == net.host.net.v4 && (pool.0..=pool.1).contains(&d)
}

#[test]
fn dhcp_leases_from_a_real_server() {
    let mut net = DhcpNet::new(POOL);
    let gw = net.gateway();
    // One container per result shape: CNI 1.0.0 and 0.4.0 (`ips[].version`).
    let a = net.host.attach_with("a", &net.conf("1.0.0"));
    let b = net.host.attach_with("b", &net.conf("0.4.0"));
    assert_eq!(b.result["cniVersion"], "0.4.0", "{}", b.result);
    assert_ne!(a.ip4(), b.ip4(), "two containers, two leases");
    for c in [&a, &b] {
        let ip = c.ip4();
        assert!(in_pool(&net, ip, POOL), "{ip} is not from the pool");
        assert_eq!(c.ips(), vec![(IpAddr::V4(ip), 24)], "{}", c.result);
        assert_eq!(c.ns.addrs("eth0"), vec![format!("{ip}/24")]);
        assert_eq!(
            c.ns.sysctl("net/ipv6/conf/eth0/disable_ipv6"),
            "1",
            "an IPv4 lease leaves IPv6 off"
        );
        net.assert_leased(&mac(c), ip);
        // The gateway and default route come from the server's router option.
        assert_eq!(
            c.result["ips"][0]["gateway"],
            gw.to_string(),
            "{}",
            c.result
        );
        let routes = c.result["routes"].as_array().cloned().unwrap_or_default();
        assert!(
            routes.contains(&json!({ "dst": "0.0.0.0/0", "gw": gw.to_string() })),
            "no default route via {gw} in {}",
            c.result
        );
        assert!(
            c.ns.routes("-4").iter().any(|r| r["dst"] == "default"
                && r["gateway"] == gw.to_string()
                && r["dev"] == "eth0"),
            "no default route via {gw} in the container: {:?}",
            c.ns.routes("-4")
        );
    }
    assert!(ping(&a.ns, gw.into()), "the container reaches the bridge");
    assert!(ping(&b.ns, a.ip4().into()), "containers reach each other");

    for c in [&a, &b] {
        net.host.check(c).ok();
        // The plugin's CHECK takes a lease again; the server keeps the address.
        assert_eq!(c.ns.addrs("eth0"), vec![format!("{}/24", c.ip4())]);
        net.assert_leased(&mac(c), c.ip4());
    }

    for c in [&a, &b] {
        net.host.detach(c);
        assert!(c.ns.link("eth0").is_none(), "DEL removed {}'s eth0", c.id);
        net.host.detach(c); // idempotent
    }
    net.host.assert_clean("after DEL");
    // The bridge was the test's, not the plugin's: it stays, with the server on it.
    assert_eq!(
        net.host.ns.addrs(&net.host.net.bridge),
        vec![format!("{gw}/24")]
    );
    net.daemon.assert_running();
    if let Some(server) = net.server.as_mut() {
        server.assert_running();
    }
}

#[test]
fn dhcp_del_releases_the_lease() {
    // One address in the pool: a second container can only get it once the first let it go.
    let only = (60, 60);
    let net = DhcpNet::new(only);
    let want = net.host.net.host4(only.0);
    let a = net.host.attach_with("a", &net.conf("1.0.0"));
    assert_eq!(a.ip4(), want);
    net.assert_leased(&mac(&a), want);
    net.host.detach(&a);
    assert!(
        poll::eventually_true(|| net.leases().iter().all(|(_, ip)| *ip != want)),
        "DEL did not release {want}: the server's leases are {:?}",
        net.leases()
    );
    let b = net.host.attach_with("b", &net.conf("1.0.0"));
    assert_eq!(
        b.ip4(),
        want,
        "the released address goes to the next container"
    );
    net.host.detach(&b);
    net.host.assert_clean("after DEL");
}

#[test]
fn dhcp_add_without_a_server_fails_and_leaves_nothing() {
    let mut net = DhcpNet::without_server();
    let c = Ns::new();
    let (_, msg) = net.host.add("a", &c, &net.conf("1.0.0")).err();
    assert!(
        msg.contains("dhcp"),
        "the error names the IPAM plugin: {msg}"
    );
    assert!(c.link("eth0").is_none(), "the container's eth0 is removed");
    net.host.assert_clean("after a failed ADD");
    assert!(
        net.host.ns.link(&net.host.net.bridge).is_none(),
        "the bridge the ADD created is removed"
    );
    net.daemon.assert_running();
}
