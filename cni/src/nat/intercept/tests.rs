//! Interception against the real kernel, in throwaway namespaces only: the table as `nft -j`
//! sees it, and real connections from unmodified clients redirected to a tokio stand-in for
//! the sidecar that recovers their original destinations.
//!
//! The lab: a "container" namespace (`eth0` 10.1.2.2/24, fd00:1::2/64, default routes via the
//! peer) joined by a veth pair to a "peer" namespace (10.1.2.3, 10.1.2.4, fd00:1::3) where
//! plain servers answer `direct`. In the container, the stand-in listens where the sidecar
//! would (outbound 127.0.0.1/::1:15001, inbound [::]:15006, DNS 127.0.0.1:15053) and answers
//! `outbound <original dst>` / `inbound <original dst>` / `dns`; an "app" answers `app` on
//! port 9001.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::*;
use crate::nat::tests::TempNs;

const MARK: u32 = DEFAULT_MARK;

fn spec() -> InterceptSpec {
    InterceptSpec {
        addresses: vec!["10.1.2.2".parse().unwrap(), "fd00:1::2".parse().unwrap()],
        exclude_outbound_ports: vec![8022, 8022],
        exclude_inbound_ports: vec![9001],
        exclude_cidrs: vec![
            "10.1.2.4/32".parse().unwrap(),
            "198.51.100.0/24".parse().unwrap(),
            "198.51.100.128/25".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ],
        ..InterceptSpec::default()
    }
}

fn netns(ns: &TempNs) -> NetNs {
    NetNs::open(format!("/run/netns/{}", ns.name())).expect("open netns")
}

/// `nft -j list ruleset` inside the namespace: the objects of `table inet netd-mesh`.
fn mesh_objects(ns: &TempNs, kind: &str) -> Vec<Value> {
    let v: Value =
        serde_json::from_str(&ns.exec(&["nft", "-j", "list", "ruleset"])).expect("nft json");
    v["nftables"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|o| o.get(kind).cloned())
        .filter(|o| o["family"] == "inet" && (o["table"] == TABLE || o["name"] == TABLE))
        .collect()
}

fn rules_of(ns: &TempNs, chain: &str) -> Vec<Value> {
    mesh_objects(ns, "rule")
        .into_iter()
        .filter(|r| r["chain"] == chain)
        .collect()
}

#[test]
fn spec_is_normalized_before_fingerprinting() {
    let a = spec();
    let mut b = spec();
    b.exclude_outbound_ports = vec![8022];
    b.exclude_cidrs.reverse();
    b.addresses.reverse();
    assert_eq!(
        Layout::of(&a).unwrap().fingerprint,
        Layout::of(&b).unwrap().fingerprint
    );
    b.outbound_port = 15002;
    assert_ne!(
        Layout::of(&a).unwrap().fingerprint,
        Layout::of(&b).unwrap().fingerprint
    );
    let n = normalize(&a).unwrap();
    assert_eq!(n.exclude_outbound_ports, [8022]);
    // The /25 lies inside the /24: one interval, no overlap for the kernel to refuse.
    assert_eq!(n.exclude_cidrs.len(), 3);
    let bad = InterceptSpec {
        inbound_port: 0,
        ..InterceptSpec::default()
    };
    assert!(matches!(
        Layout::of(&bad),
        Err(InterceptError::Invalid { .. })
    ));
}

#[test]
fn install_writes_one_table_idempotently_and_remove_deletes_it() {
    let ns = TempNs::new();
    let nns = netns(&ns);
    let s = spec();
    assert!(
        matches!(check(&nns, &s), Err(InterceptError::Mismatch { what }) if what.contains("missing"))
    );
    assert!(install(&nns, &s).expect("install"));

    let tables = mesh_objects(&ns, "table");
    assert_eq!(tables.len(), 1, "{tables:?}");
    let handle = tables[0]["handle"].clone();
    let chains = mesh_objects(&ns, "chain");
    for (name, hook) in [("output", "output"), ("prerouting", "prerouting")] {
        let c = chains
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("chain {name} missing: {chains:?}"));
        assert_eq!(
            (&c["type"], &c["hook"], &c["prio"]),
            (&Value::from("nat"), &Value::from(hook), &Value::from(-100))
        );
    }
    let output = rules_of(&ns, "output");
    assert_eq!(output.len(), 11, "{output:#?}");
    let text = serde_json::to_string(&output).unwrap();
    assert!(
        text.contains(r#"{"left":{"meta":{"key":"mark"}},"op":"==","right":20036}"#),
        "{text}"
    );
    assert!(text.contains(r#""redirect":{"port":15001}"#), "{text}");
    assert!(text.contains(r#""redirect":{"port":15053}"#), "{text}");
    assert!(text.contains(r#""right":"@out-nets4""#), "{text}");
    let pre = serde_json::to_string(&rules_of(&ns, "prerouting")).unwrap();
    assert!(pre.contains(r#""redirect":{"port":15006}"#), "{pre}");
    assert!(pre.contains(r#""right":"@addrs6""#), "{pre}");
    let sets = mesh_objects(&ns, "set");
    let elems = |name: &str| {
        sets.iter()
            .find(|s| s["name"] == name)
            .map(|s| s["elem"].to_string())
            .unwrap_or_else(|| panic!("set {name} missing"))
    };
    assert_eq!(elems("out-ports"), "[8022]");
    assert_eq!(elems("in-ports"), "[9001]");
    assert_eq!(elems("addrs4"), r#"["10.1.2.2"]"#);
    assert!(elems("out-nets4").contains(r#"{"prefix":{"addr":"198.51.100.0","len":24}}"#));
    assert!(elems("out-nets6").contains("2001:db8::"));
    check(&nns, &s).expect("check after install");

    // Again: nothing written, the same table.
    assert!(!install(&nns, &s).expect("second install"));
    assert_eq!(mesh_objects(&ns, "table")[0]["handle"], handle);

    // Damage is noticed and repaired.
    ns.exec(&["nft", "flush", "chain", "inet", TABLE, "output"]);
    let err = check(&nns, &s).expect_err("flushed chain");
    assert!(
        err.to_string()
            .contains("chain inet netd-mesh output has 0 rules"),
        "{err}"
    );
    assert!(install(&nns, &s).expect("repair"));
    check(&nns, &s).expect("check after repair");
    ns.exec(&[
        "nft",
        "delete",
        "element",
        "inet",
        TABLE,
        "out-ports",
        "{ 8022 }",
    ]);
    assert!(check(&nns, &s).is_err());

    // Other settings replace the table in one go; the old ones no longer check.
    let other = InterceptSpec {
        dns_port: None,
        addresses: Vec::new(),
        ..spec()
    };
    assert!(install(&nns, &other).expect("install other"));
    assert!(check(&nns, &s).is_err());
    check(&nns, &other).expect("check other");
    assert_eq!(rules_of(&ns, "output").len(), 9);
    assert_eq!(mesh_objects(&ns, "table").len(), 1);

    assert!(remove(&nns).expect("remove"));
    assert!(mesh_objects(&ns, "table").is_empty());
    assert!(!remove(&nns).expect("remove again"));
}

/// The container and peer namespaces, joined by a veth pair.
struct Lab {
    ctr: TempNs,
    peer: TempNs,
}

impl Lab {
    fn new() -> Self {
        let ctr = TempNs::new();
        let peer = TempNs::new();
        ctr.exec(&[
            "ip",
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            peer.name(),
        ]);
        for (ns, addrs) in [
            (&ctr, &["10.1.2.2/24", "fd00:1::2/64"][..]),
            (&peer, &["10.1.2.3/24", "10.1.2.4/24", "fd00:1::3/64"][..]),
        ] {
            for a in addrs {
                ns.exec(&["ip", "addr", "add", a, "dev", "eth0", "nodad"]);
            }
            ns.exec(&["ip", "link", "set", "eth0", "up"]);
        }
        ctr.exec(&["ip", "route", "add", "default", "via", "10.1.2.3"]);
        ctr.exec(&["ip", "-6", "route", "add", "default", "via", "fd00:1::3"]);
        // Plain servers on the peer: whatever reaches them was not intercepted.
        for port in [80, 8022] {
            let l = peer.run(move || TcpListener::bind(("::", port)).expect("bind peer"));
            serve_text(l, "direct");
        }
        Lab { ctr, peer }
    }
}

/// Answers every connection with `text` and closes it.
fn serve_text(listener: TcpListener, text: &'static str) {
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let _ = c.write_all(text.as_bytes());
        }
    });
}

/// The sidecar stand-in: tokio listeners inside the container namespace that answer with
/// what `original_dst` recovered. Runs until the runtime is dropped.
fn stand_in(ns: &TempNs) -> tokio::runtime::Runtime {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (out4, out6, inbound, dns_tcp, dns_udp) = ns.run(|| {
        let l = |a: &str| {
            let l = TcpListener::bind(a).expect("bind stand-in");
            l.set_nonblocking(true).expect("nonblocking");
            l
        };
        let udp = UdpSocket::bind("127.0.0.1:15053").expect("bind dns");
        udp.set_nonblocking(true).expect("nonblocking");
        (
            l("127.0.0.1:15001"),
            l("[::1]:15001"),
            // Dual-stack: IPv4 connections arrive as ::ffff:a.b.c.d.
            l("[::]:15006"),
            l("127.0.0.1:15053"),
            udp,
        )
    });
    let _guard = rt.enter();
    for (l, tag) in [
        (out4, "outbound"),
        (out6, "outbound"),
        (inbound, "inbound"),
        (dns_tcp, "dns-tcp"),
    ] {
        let l = tokio::net::TcpListener::from_std(l).expect("tokio listener");
        rt.spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let answer = match original_dst(&c) {
                    Ok(dst) => format!("{tag} {dst}"),
                    Err(e) => format!("{tag} error {e}"),
                };
                let _ = c.write_all(answer.as_bytes()).await;
            }
        });
    }
    let udp = tokio::net::UdpSocket::from_std(dns_udp).expect("tokio udp");
    rt.spawn(async move {
        let mut buf = [0; 512];
        while let Ok((_, from)) = udp.recv_from(&mut buf).await {
            let _ = udp.send_to(b"dns", from).await;
        }
    });
    rt
}

/// Reads what the server at the other end says (empty on failure).
fn read_answer(mut c: TcpStream) -> String {
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    let mut s = String::new();
    let _ = c.read_to_string(&mut s);
    s
}

/// Connects from inside `ns` (with `SO_MARK` when `mark` is set) and returns the answer.
fn ask(ns: &TempNs, to: &str, mark: Option<u32>) -> String {
    let addr: SocketAddr = to.parse().expect("address");
    ns.run(move || {
        let c = match mark {
            None => TcpStream::connect_timeout(&addr, Duration::from_secs(2)),
            Some(m) => connect_marked(addr, m),
        };
        match c {
            Ok(c) => read_answer(c),
            Err(e) => format!("connect failed: {e}"),
        }
    })
}

/// A TCP connection whose socket carries `SO_MARK` `mark`, as the sidecar's upstream sockets do.
fn connect_marked(addr: SocketAddr, mark: u32) -> std::io::Result<TcpStream> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a valid socket and a u32 option value of the stated length.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&raw const mark).cast(),
            4,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let stream = TcpStream::from(owned);
    // std has no connect on an existing socket: go through a raw sockaddr.
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes for the socket's family.
    let rc = unsafe { libc::connect(fd, (&raw const storage).cast(), len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: plain data, valid when zeroed.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            let sin = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[test]
fn outbound_connections_reach_the_sidecar_with_their_original_destination() {
    let lab = Lab::new();
    let ctr = &lab.ctr;
    let _rt = stand_in(ctr);
    let app = ctr.run(|| TcpListener::bind("[::]:9001").expect("bind app"));
    serve_text(app, "app");
    // Before interception, everything goes where it was sent.
    assert_eq!(ask(ctr, "10.1.2.3:80", None), "direct");
    install(&netns(ctr), &spec()).expect("install");

    // An unmodified client, IPv4 and IPv6: the stand-in answers with the original destination.
    assert_eq!(ask(ctr, "10.1.2.3:80", None), "outbound 10.1.2.3:80");
    assert_eq!(ask(ctr, "[fd00:1::3]:80", None), "outbound [fd00:1::3]:80");
    // A destination that does not even exist: the sidecar gets it all the same.
    assert_eq!(ask(ctr, "10.99.7.7:80", None), "outbound 10.99.7.7:80");
    // The sidecar's own (marked) sockets bypass the redirect.
    assert_eq!(ask(ctr, "10.1.2.3:80", Some(MARK)), "direct");
    assert_eq!(ask(ctr, "[fd00:1::3]:80", Some(MARK)), "direct");
    // ... and any other mark does not.
    assert_eq!(ask(ctr, "10.1.2.3:80", Some(7)), "outbound 10.1.2.3:80");
    // Excluded ports and CIDRs bypass it.
    assert_eq!(ask(ctr, "10.1.2.3:8022", None), "direct");
    assert_eq!(ask(ctr, "[fd00:1::3]:8022", None), "direct");
    assert_eq!(ask(ctr, "10.1.2.4:80", None), "direct");
    // Loopback and the container's own addresses are not intercepted.
    assert_eq!(ask(ctr, "127.0.0.1:9001", None), "app");
    assert_eq!(ask(ctr, "[::1]:9001", None), "app");
    assert_eq!(ask(ctr, "10.1.2.2:9001", None), "app");

    // DNS, UDP and TCP, goes to the sidecar's DNS port, and the answer comes back from the
    // server the client asked.
    let (answer, from) = ctr.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        s.send_to(b"query", "192.0.2.53:53").expect("send");
        let mut buf = [0; 16];
        let (n, from) = s.recv_from(&mut buf).expect("dns answer");
        (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
    });
    assert_eq!(
        (answer.as_str(), from),
        ("dns", "192.0.2.53:53".parse().unwrap())
    );
    assert_eq!(ask(ctr, "192.0.2.53:53", None), "dns-tcp 192.0.2.53:53");

    // Removed: connections go where they were sent again.
    remove(&netns(ctr)).expect("remove");
    assert_eq!(ask(ctr, "10.1.2.3:80", None), "direct");
}

#[test]
fn inbound_connections_from_a_peer_reach_the_sidecar() {
    let lab = Lab::new();
    let _rt = stand_in(&lab.ctr);
    let app = lab
        .ctr
        .run(|| TcpListener::bind("[::]:9001").expect("bind app"));
    serve_text(app, "app");
    install(&netns(&lab.ctr), &spec()).expect("install");

    assert_eq!(
        ask(&lab.peer, "10.1.2.2:9000", None),
        "inbound 10.1.2.2:9000"
    );
    assert_eq!(
        ask(&lab.peer, "[fd00:1::2]:9000", None),
        "inbound [fd00:1::2]:9000"
    );
    // An excluded inbound port reaches the application directly.
    assert_eq!(ask(&lab.peer, "10.1.2.2:9001", None), "app");
    assert_eq!(ask(&lab.peer, "[fd00:1::2]:9001", None), "app");
}

#[test]
fn original_dst_of_an_untranslated_connection_is_an_error() {
    let ns = TempNs::new();
    let err = ns.run(|| {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let _c = TcpStream::connect(addr).expect("connect");
        let (s, _) = l.accept().expect("accept");
        original_dst(&s)
    });
    // Without conntrack state for the socket (no nat table ever loaded in this namespace),
    // there is no original destination to report.
    assert!(err.is_err(), "{err:?}");
}
